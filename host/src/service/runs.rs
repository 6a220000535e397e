//! Runs the service started: each one's status, its events (kept for late
//! and reconnecting readers, within a byte budget), its result, and the
//! handle that cancels it. Every lookup is by (tenant, run id), so a
//! tenant can never reach another tenant's run, even by guessing its id.
//!
//! A run's events go into its own log; readers follow the log at their own
//! pace, each from its own position, woken by a watch channel. A reader
//! that stops reading never holds up the run, other readers or other
//! tenants: the writer never waits for anyone.

use crate::agent::{RunEvent, RunResult, RunStream};
use crate::tenancy::ids::{SessionId, TenantId, UserId};
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// In flight.
    Running,
    /// Finished with an answer.
    Completed,
    /// Finished early (turn limit, budget, timeout); the answer so far is
    /// in `output`.
    Interrupted,
    /// Failed; `error` says why.
    Failed,
    /// Cancelled by a client or a shutdown; resumable from its journal.
    Cancelled,
}

/// A run as the API shows it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct RunView {
    /// The run's id.
    pub id: String,
    /// `run`, as in the OpenAPI document.
    pub object: &'static str,
    /// The user it runs for.
    pub user: Option<String>,
    /// Its session, if any.
    pub session: Option<String>,
    /// The named agent, or `None` for `[agent]`.
    pub agent: Option<String>,
    /// Where it is.
    pub status: RunStatus,
    /// The answer (when finished).
    pub output: Option<String>,
    /// The answer parsed as JSON, when the run had an output schema.
    pub parsed: Option<serde_json::Value>,
    /// Model turns taken.
    pub turns: Option<u32>,
    /// Tokens used.
    pub usage: Option<crate::model::Usage>,
    /// Cost in USD.
    pub cost_usd: Option<f64>,
    /// Why it was interrupted, failed or cancelled.
    pub error: Option<String>,
    /// Events recorded so far.
    pub events: usize,
    /// Start, milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// End, milliseconds since the Unix epoch.
    pub finished_ms: Option<u64>,
}

/// One run the service started.
pub struct RunEntry {
    id: String,
    tenant: TenantId,
    user: UserId,
    session: Option<SessionId>,
    agent: Option<String>,
    created_ms: u64,
    cancel: CancellationToken,
    state: Mutex<RunState>,
    /// The number of events in the log; readers wait on it.
    published: watch::Sender<usize>,
}

/// One event in a run's log.
#[derive(Clone)]
pub struct LoggedEvent {
    /// Its type (`started`, `model_chunk`, `tool_call`, ...).
    pub kind: &'static str,
    /// The event as JSON, as `loom run --json` prints it.
    pub json: Arc<str>,
}

/// The `type` of `event`, as it is serialized.
pub fn event_kind(event: &RunEvent) -> &'static str {
    match event {
        RunEvent::Started { .. } => "started",
        RunEvent::Resumed { .. } => "resumed",
        RunEvent::ToolRerun { .. } => "tool_rerun",
        RunEvent::ModelChunk { .. } => "model_chunk",
        RunEvent::ToolCall { .. } => "tool_call",
        RunEvent::ToolResult { .. } => "tool_result",
        RunEvent::BudgetWarning { .. } => "budget_warning",
        RunEvent::BudgetExceeded { .. } => "budget_exceeded",
        RunEvent::Permission { .. } => "permission",
        RunEvent::Custom { .. } => "custom",
        RunEvent::Completed { .. } => "completed",
        RunEvent::Error { .. } => "error",
        RunEvent::SubAgent { .. } => "sub_agent",
    }
}

struct RunState {
    status: RunStatus,
    events: Vec<LoggedEvent>,
    bytes: usize,
    /// Streamed text left out of the log once it was full.
    dropped_chunks: u64,
    result: Option<RunResult>,
    error: Option<String>,
    finished_ms: Option<u64>,
}

/// What a reader gets from [`RunEntry::read_from`].
pub enum Read {
    /// Events from the asked position on, in order, and the next position.
    Events(Vec<LoggedEvent>, usize),
    /// Nothing new yet; wait on the watch and ask again.
    Pending,
    /// The run is over and every event was read.
    Done,
}

impl RunEntry {
    fn lock(&self) -> MutexGuard<'_, RunState> {
        crate::sync::lock(&self.state)
    }

    /// The run's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The user it runs for.
    pub fn user(&self) -> &UserId {
        &self.user
    }

    /// The tenant it runs for.
    pub fn tenant(&self) -> &TenantId {
        &self.tenant
    }

    /// Wait until it is over.
    pub async fn wait(&self) {
        let mut watch = self.subscribe();
        while !self.finished() {
            if watch.changed().await.is_err() {
                return;
            }
        }
    }

    /// The bytes it holds: its events and its answer.
    fn kept_bytes(&self) -> usize {
        let state = self.lock();
        state.bytes + state.result.as_ref().map_or(0, |r| r.output.len())
    }

    /// Whether it is over.
    pub fn finished(&self) -> bool {
        self.lock().status != RunStatus::Running
    }

    /// Its result, once it completed or was interrupted.
    pub fn result(&self) -> Option<RunResult> {
        self.lock().result.clone()
    }

    /// Why it failed or was cancelled.
    pub fn error(&self) -> Option<String> {
        self.lock().error.clone()
    }

    /// Ask it to stop; its in-flight tool calls are cancelled and its
    /// journal keeps it resumable.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// A receiver that changes whenever an event is added or the run ends.
    pub fn subscribe(&self) -> watch::Receiver<usize> {
        self.published.subscribe()
    }

    /// Events from position `from` on.
    pub fn read_from(&self, from: usize) -> Read {
        let state = self.lock();
        if from < state.events.len() {
            return Read::Events(state.events[from..].to_vec(), state.events.len());
        }
        if state.status == RunStatus::Running {
            Read::Pending
        } else {
            Read::Done
        }
    }

    /// The run as the API shows it.
    pub fn view(&self) -> RunView {
        let state = self.lock();
        let result = state.result.as_ref();
        RunView {
            id: self.id.clone(),
            object: "run",
            user: self.user.name().map(str::to_owned),
            session: self.session.as_ref().map(|s| s.to_string()),
            agent: self.agent.clone(),
            status: state.status,
            output: result.map(|r| r.output.clone()),
            parsed: result.and_then(|r| r.parsed.clone()),
            turns: result.map(|r| r.turns),
            usage: result.map(|r| r.usage),
            cost_usd: result.map(|r| r.cost_usd),
            error: state.error.clone(),
            events: state.events.len(),
            created_ms: self.created_ms,
            finished_ms: state.finished_ms,
        }
    }

    /// Record `event` in the log (within `budget` bytes; past it, streamed
    /// text is left out) and wake the readers.
    fn publish(&self, event: &RunEvent, budget: usize) {
        let Ok(json) = serde_json::to_string(event) else {
            return;
        };
        let mut state = self.lock();
        let is_chunk = matches!(event, RunEvent::ModelChunk { .. })
            || matches!(event, RunEvent::SubAgent { event, .. } if matches!(**event, RunEvent::ModelChunk { .. }));
        if state.bytes + json.len() > budget && is_chunk {
            state.dropped_chunks += 1;
            return;
        }
        state.bytes += json.len();
        state.events.push(LoggedEvent {
            kind: event_kind(event),
            json: Arc::from(json),
        });
        let count = state.events.len();
        drop(state);
        self.published.send_replace(count);
    }

    fn finish(&self, status: RunStatus, result: Option<RunResult>, error: Option<String>) {
        let mut state = self.lock();
        if state.status != RunStatus::Running {
            return;
        }
        state.status = status;
        state.result = result;
        state.error = error;
        state.finished_ms = Some(now_ms());
        let count = state.events.len();
        drop(state);
        self.published.send_replace(count);
    }
}

/// What starts a run.
pub struct NewRun {
    /// Its id (the scope's run id).
    pub id: String,
    /// The tenant.
    pub tenant: TenantId,
    /// The user.
    pub user: UserId,
    /// The session, if any.
    pub session: Option<SessionId>,
    /// The named agent, or `None` for `[agent]`.
    pub agent: Option<String>,
}

/// Every tenant's runs: in flight, and the newest finished ones.
pub struct RunRegistry {
    tenants: Mutex<HashMap<TenantId, TenantRuns>>,
    keep_finished: usize,
    event_budget: usize,
    finished_bytes: usize,
}

#[derive(Default)]
struct TenantRuns {
    by_id: HashMap<String, Arc<RunEntry>>,
    /// Ids in start order, for listing and for dropping the oldest
    /// finished runs.
    order: VecDeque<String>,
}

impl RunRegistry {
    /// A registry that keeps `event_budget` bytes of events per run, and
    /// per tenant at most `keep_finished` finished runs holding at most
    /// `finished_bytes` of events and answers (the oldest go first).
    pub fn new(keep_finished: usize, event_budget: usize, finished_bytes: usize) -> Self {
        RunRegistry {
            tenants: Mutex::new(HashMap::new()),
            keep_finished,
            event_budget,
            finished_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<TenantId, TenantRuns>> {
        crate::sync::lock(&self.tenants)
    }

    /// Register a run and drive `stream` to its end on a task of its own,
    /// recording its events; `on_event` sees each event first (metrics).
    /// The returned entry is what clients read.
    pub fn start(
        self: &Arc<Self>,
        run: NewRun,
        mut stream: RunStream,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
        on_event: impl Fn(&RunEvent) + Send + 'static,
    ) -> Arc<RunEntry> {
        let (published, _) = watch::channel(0);
        let entry = Arc::new(RunEntry {
            id: run.id,
            tenant: run.tenant,
            user: run.user,
            session: run.session,
            agent: run.agent,
            created_ms: now_ms(),
            cancel: CancellationToken::new(),
            state: Mutex::new(RunState {
                status: RunStatus::Running,
                events: Vec::new(),
                bytes: 0,
                dropped_chunks: 0,
                result: None,
                error: None,
                finished_ms: None,
            }),
            published,
        });
        self.insert(entry.clone());
        let budget = self.event_budget;
        let task_entry = entry.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let entry = task_entry;
            loop {
                let event = tokio::select! {
                    event = stream.next() => event,
                    () = entry.cancel.cancelled() => {
                        // Dropping the stream cancels the run and its calls.
                        drop(stream);
                        entry.finish(
                            RunStatus::Cancelled,
                            None,
                            Some("cancelled; the run can be resumed from its journal".into()),
                        );
                        return;
                    }
                };
                let Some(event) = event else {
                    entry.finish(
                        RunStatus::Failed,
                        None,
                        Some("the run ended without an answer".into()),
                    );
                    return;
                };
                on_event(&event);
                entry.publish(&event, budget);
                match event {
                    RunEvent::Completed { result } => {
                        let status = if result.interrupted {
                            RunStatus::Interrupted
                        } else {
                            RunStatus::Completed
                        };
                        let reason = result.interruption_reason.clone();
                        entry.finish(status, Some(*result), reason);
                        return;
                    }
                    RunEvent::Error { message } => {
                        entry.finish(RunStatus::Failed, None, Some(message));
                        return;
                    }
                    _ => {}
                }
            }
        });
        entry
    }

    fn insert(&self, entry: Arc<RunEntry>) {
        let mut tenants = self.lock();
        let runs = tenants.entry(entry.tenant.clone()).or_default();
        runs.order.push_back(entry.id.clone());
        runs.by_id.insert(entry.id.clone(), entry);
        // Drop the oldest finished runs past the count or the bytes kept.
        let (mut finished, mut bytes) = (0usize, 0usize);
        for run in runs.by_id.values().filter(|r| r.finished()) {
            finished += 1;
            bytes += run.kept_bytes();
        }
        if finished <= self.keep_finished && bytes <= self.finished_bytes {
            return;
        }
        let mut kept = VecDeque::with_capacity(runs.order.len());
        while let Some(id) = runs.order.pop_front() {
            let over = finished > self.keep_finished || bytes > self.finished_bytes;
            match runs.by_id.get(&id) {
                Some(run) if over && run.finished() => {
                    finished -= 1;
                    bytes = bytes.saturating_sub(run.kept_bytes());
                    runs.by_id.remove(&id);
                }
                Some(_) => kept.push_back(id),
                None => {}
            }
        }
        runs.order = kept;
    }

    /// The run `id` of `tenant`, if it has one of that id.
    pub fn get(&self, tenant: &TenantId, id: &str) -> Option<Arc<RunEntry>> {
        self.lock()
            .get(tenant)
            .and_then(|runs| runs.by_id.get(id).cloned())
    }

    /// The tenant's runs, newest first, optionally only `user`'s, at most
    /// `limit`.
    pub fn list(&self, tenant: &TenantId, user: Option<&UserId>, limit: usize) -> Vec<RunView> {
        let entries: Vec<Arc<RunEntry>> = match self.lock().get(tenant) {
            None => return Vec::new(),
            Some(runs) => runs
                .order
                .iter()
                .rev()
                .filter_map(|id| runs.by_id.get(id))
                .filter(|r| user.is_none_or(|u| &r.user == u))
                .take(limit)
                .cloned()
                .collect(),
        };
        entries.iter().map(|r| r.view()).collect()
    }

    /// Runs in flight, over every tenant.
    pub fn in_flight(&self) -> Vec<Arc<RunEntry>> {
        self.lock()
            .values()
            .flat_map(|runs| runs.by_id.values())
            .filter(|r| !r.finished())
            .cloned()
            .collect()
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
