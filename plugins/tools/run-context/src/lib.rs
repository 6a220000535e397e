//! The `run_context` tool: returns the run context the host gave this call
//! (tenant, user, session, run, metadata) and the call's idempotency key.
//! Used by tests and demos to show that a tool learns who it serves from the
//! host, never from its arguments.

use loom_sdk::tool;
use serde::Serialize;
use std::collections::BTreeMap;

/// The run context as JSON.
#[derive(Serialize)]
struct ContextView {
    tenant: String,
    user_id: Option<String>,
    session_id: Option<String>,
    run_id: Option<String>,
    metadata: BTreeMap<String, String>,
    /// The key of this call within its agent run; `null` outside a run.
    idempotency_key: Option<String>,
}

/// Return the run context.
#[tool(
    description = "Return the tenant, user, session and run this call serves",
    read_only,
    idempotent
)]
fn run_context() -> ContextView {
    let ctx = loom_sdk::context();
    loom_sdk::log(loom_sdk::LogLevel::Info, "run_context called");
    ContextView {
        tenant: ctx.tenant,
        user_id: ctx.user_id,
        session_id: ctx.session_id,
        run_id: ctx.run_id,
        metadata: ctx.metadata.into_iter().collect(),
        idempotency_key: loom_sdk::idempotency_key(),
    }
}

loom_sdk::export_tools!(run_context);
