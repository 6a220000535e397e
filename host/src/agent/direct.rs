//! One tool call outside any run, governed as a run's tool call is.
//!
//! The MCP server (and anything else that calls a tenant's tool on a
//! user's behalf without an agent) goes through [`call_tool_governed`]: the
//! same permission chain (deny lists, mode, the tenant's policy
//! components, approval), the same tool-call budget and the same audit
//! entry as a tool call of a run, with the run's governor doing the work.
//! Each call is its own run for the per-run caps, and `allow_always` or
//! `deny_always` answers last for that call only.

use super::governor::{GovernedTool, Governor};
use crate::engine::bindings::types as wt;
use crate::engine::boundary::check_json_bounds;
use crate::engine::{CallError, ToolFailure, ToolOutput};
use crate::governance::approval::Approver;
use crate::host::Host;
use crate::tenancy::ids::Scope;
use std::sync::Arc;

/// Largest arguments a governed call accepts, in bytes (as a run's gate).
pub const MAX_ARGUMENT_BYTES: usize = 1 << 20;

/// Why a governed tool call produced no output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GovernedCallError {
    /// The permission chain, an approver or a budget refused the call; it
    /// did not run.
    #[error("DENIED: {reason}")]
    Denied {
        /// The tool.
        tool: String,
        /// Why, as a run's model would read it.
        reason: String,
    },
    /// The arguments were refused before anything else (size, JSON).
    #[error("ERROR: invalid arguments for `{tool}`: {reason}")]
    InvalidArguments {
        /// The tool.
        tool: String,
        /// What is wrong with them.
        reason: String,
    },
    /// The call ran (or could not be started) and failed: unknown tenant or
    /// tool, the tool's own error, a broken limit, a crash.
    #[error(transparent)]
    Call(#[from] CallError),
}

impl GovernedCallError {
    /// The error as a run's model reads a failed call: `DENIED: ...` for a
    /// refusal, `ERROR: ...` for anything else.
    pub fn text(&self) -> String {
        match self {
            GovernedCallError::Denied { reason, .. } => format!("DENIED: {reason}"),
            GovernedCallError::InvalidArguments { .. } => self.to_string(),
            GovernedCallError::Call(CallError::Tool { failure, .. }) => {
                super::run::failure_text(failure)
            }
            GovernedCallError::Call(other) => format!("ERROR: {other}"),
        }
    }
}

/// Call `tool` of `scope`'s tenant with JSON `arguments`, governed like a
/// run's tool call: the deny lists and permission mode, the tenant's policy
/// components, `approver` for an `ask` (else the tenant's webhook; with
/// neither, `ask` denies), the tool-call budget, then the call in its
/// sandbox and one audit entry recording the decision and the outcome.
///
/// # Errors
///
/// [`GovernedCallError::Denied`] when the chain or a budget refuses it,
/// [`GovernedCallError::InvalidArguments`] for arguments that are not a
/// JSON object of at most [`MAX_ARGUMENT_BYTES`], else
/// [`GovernedCallError::Call`] with the call's own error.
pub async fn call_tool_governed(
    host: &Arc<Host>,
    scope: Scope,
    tool: &str,
    arguments: &str,
    approver: Option<Arc<dyn Approver>>,
) -> Result<ToolOutput, GovernedCallError> {
    if let Err(refusal) = check_json_bounds(arguments, MAX_ARGUMENT_BYTES) {
        return Err(GovernedCallError::InvalidArguments {
            tool: tool.to_owned(),
            reason: refusal.to_string(),
        });
    }
    if !matches!(
        serde_json::from_str::<serde_json::Value>(arguments),
        Ok(serde_json::Value::Object(_))
    ) {
        return Err(GovernedCallError::InvalidArguments {
            tool: tool.to_owned(),
            reason: "the arguments must be a JSON object".into(),
        });
    }
    let settings = host
        .config()
        .tenant(&scope.tenant)
        .map(|t| t.governance.clone())
        .map_err(|e| CallError::UnknownTenant {
            tenant: scope.tenant.to_string(),
            reason: e.to_string(),
        })?;
    let catalog = host.catalog_for(&scope.tenant).await;
    let found = catalog.tool(&scope.tenant, tool).cloned();
    drop(catalog);
    let target = match found {
        Some(binding) => Target::Component(binding),
        None => match host.mcp_clients().tool(&scope.tenant, tool).await? {
            Some(remote) => Target::Remote(remote),
            None => return Err(unknown(host, &scope, tool).await.into()),
        },
    };
    let call_id = format!("call-{}", scope.run);
    let scope = Arc::new(scope);
    let span = crate::telemetry::spans::tool_call(&scope, tool, &call_id);
    let governor = Governor::standalone(host.clone(), scope.clone(), settings, approver);
    let call = wt::ToolCall {
        id: call_id.clone(),
        name: tool.to_owned(),
        arguments: arguments.to_owned(),
    };
    tracing::Instrument::instrument(
        async move {
            let governed = match &target {
                Target::Component(binding) => GovernedTool::from(binding),
                Target::Remote(remote) => GovernedTool {
                    spec: &remote.spec,
                    file_edit: false,
                },
            };
            let admitted = match governor.admit_tool(call, governed).await {
                Ok(admitted) => admitted,
                Err((call, refusal)) => {
                    let reason = match ToolFailure::from(refusal) {
                        ToolFailure::Denied(reason) => reason,
                        other => other.to_string(),
                    };
                    return Err(GovernedCallError::Denied {
                        tool: call.name,
                        reason,
                    });
                }
            };
            let (outcome, cpu) = match &target {
                Target::Component(binding) => {
                    let call_scope = (*scope).clone().with_idempotency_key(call_id);
                    let ran = host
                        .call_bound_tool_metered(call_scope, binding, &admitted.call.arguments)
                        .await;
                    (ran.outcome, ran.cpu)
                }
                Target::Remote(remote) => (
                    remote.call(&admitted.call.arguments).await,
                    std::time::Duration::ZERO,
                ),
            };
            let summary = match &outcome {
                Ok(output) => Ok(output.output.as_str()),
                Err(CallError::Tool { failure, .. }) => Err(super::run::failure_text(failure)),
                Err(other) => Err(other.to_string()),
            };
            governor.after_tool(admitted, &summary, cpu);
            Ok(outcome?)
        },
        span,
    )
    .await
}

/// What a governed call runs.
enum Target {
    /// A component's tool.
    Component(crate::plugins::ToolBinding),
    /// A tool of one of the tenant's MCP servers.
    Remote(crate::mcp::RemoteTool),
}

/// The error for a tool `scope`'s tenant does not have, naming those it has.
async fn unknown(host: &Host, scope: &Scope, tool: &str) -> CallError {
    let catalog = host.catalog_for(&scope.tenant).await;
    let available: Vec<String> = catalog
        .tools(&scope.tenant)
        .iter()
        .map(|b| b.spec.name.clone())
        .chain(
            host.mcp_clients()
                .tools(&scope.tenant)
                .await
                .into_iter()
                .map(|r| r.spec.name),
        )
        .collect();
    CallError::UnknownTool {
        tool: tool.to_owned(),
        tenant: scope.tenant.to_string(),
        available: if available.is_empty() {
            "(none)".into()
        } else {
            available.join(", ")
        },
    }
}
