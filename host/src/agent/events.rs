//! A run's event stream: what happened, in order, and the sink that carries
//! it to whoever listens, tagging a sub-agent's events with its path.

use super::RunResult;
use serde::Serialize;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Something that happened during a run, in order.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RunEvent {
    /// The run began.
    Started {
        /// The run.
        run_id: String,
        /// The session, if any.
        session_id: Option<String>,
        /// The architecture running it.
        architecture: String,
        /// Messages of earlier runs rehydrated from the session.
        history_messages: usize,
    },
    /// The run was resumed from its journal: the recorded results replay
    /// first (no model call billed again, no finished tool call run
    /// again), then it goes on live.
    Resumed {
        /// The run.
        run_id: String,
        /// Results the journal recorded before the run stopped.
        recorded: u32,
    },
    /// A tool call that may have been under way when the run stopped runs
    /// again after a resume, and its tool does not declare itself
    /// idempotent: it may have acted once already. The tool sees the same
    /// idempotency key as the first time.
    ToolRerun {
        /// The call's id.
        call_id: String,
        /// The tool.
        name: String,
        /// The key the tool reads from its run context.
        idempotency_key: String,
    },
    /// Streamed model output.
    ModelChunk {
        /// New text.
        delta: String,
        /// The role the architecture asked the completion in (`critic`,
        /// `planner`, ...); none for its main loop.
        #[serde(skip_serializing_if = "Option::is_none")]
        role: Option<String>,
    },
    /// A tool call is starting.
    ToolCall {
        /// The call's id.
        call_id: String,
        /// The tool.
        name: String,
        /// Its arguments (JSON text).
        arguments: String,
    },
    /// A tool call finished.
    ToolResult {
        /// The call's id.
        call_id: String,
        /// The tool.
        name: String,
        /// Whether it succeeded.
        ok: bool,
        /// Output JSON, or `DENIED: ...` / `ERROR: ...`.
        output: String,
    },
    /// A budget crossed its warning fraction.
    BudgetWarning {
        /// The budget's key, such as `tokens_per_day`.
        key: String,
        /// `tenant` or `user`.
        level: String,
        /// Used so far.
        used: f64,
        /// The cap.
        limit: f64,
    },
    /// A budget or rate limit stopped the run; `Completed` follows.
    BudgetExceeded {
        /// `budget:<key>` or `rate_limit:<key>`.
        reason: String,
        /// Level, use and limit (JSON text).
        detail: String,
    },
    /// A tool call was denied, or needs approval.
    Permission {
        /// The call's id.
        call_id: String,
        /// The tool.
        name: String,
        /// `deny` or `ask`.
        decision: String,
        /// Who decided (deny list, permission mode, policy, approver).
        by: String,
        /// Why.
        reason: String,
    },
    /// An event the architecture emitted.
    Custom {
        /// Its kind.
        kind: String,
        /// Its data (JSON text).
        data: String,
    },
    /// The run finished.
    Completed {
        /// The result.
        result: Box<RunResult>,
    },
    /// The run failed.
    Error {
        /// Why.
        message: String,
    },
    /// An event of a sub-agent started by `delegate`: its own `Started`,
    /// everything it does, then its `Completed` or `Error`.
    SubAgent {
        /// Where the sub-agent sits below the top-level run: the names of
        /// the delegated agents (`agent:NAME` gives `NAME`, an inline
        /// agent-ref its architecture), joined by `/`, such as
        /// `supervisor/researcher`.
        path: String,
        /// The sub-agent's event (never itself a `SubAgent`).
        event: Box<RunEvent>,
    },
}

/// Where a run's events go: the listener's channel, and the run's path
/// below the top-level run (none for the top-level run itself).
#[derive(Clone)]
pub(crate) struct EventSink {
    listener: mpsc::UnboundedSender<RunEvent>,
    path: Option<Arc<str>>,
}

impl EventSink {
    /// The sink of a top-level run.
    pub(crate) fn root(listener: mpsc::UnboundedSender<RunEvent>) -> Self {
        EventSink {
            listener,
            path: None,
        }
    }

    /// The sink of a sub-agent named `segment` started by this run.
    pub(crate) fn child(&self, segment: &str) -> Self {
        let path = match &self.path {
            Some(parent) => format!("{parent}/{segment}"),
            None => segment.to_owned(),
        };
        EventSink {
            listener: self.listener.clone(),
            path: Some(path.into()),
        }
    }

    /// Send `event`, tagged with this run's path when it is a sub-agent.
    /// A listener that went away is not an error: the run goes on.
    pub(crate) fn send(&self, event: RunEvent) {
        let event = match &self.path {
            None => event,
            Some(path) => RunEvent::SubAgent {
                path: path.to_string(),
                event: Box::new(event),
            },
        };
        let _ = self.listener.send(event);
    }
}
