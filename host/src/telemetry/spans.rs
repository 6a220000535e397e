//! One-line spans for the places Loom instruments, named and attributed
//! after the OpenTelemetry GenAI semantic conventions: `invoke_agent
//! {agent}` for a run, `chat {model}` for a model call, `execute_tool
//! {tool}` for a tool call (`gen_ai.operation.name` says which), with
//! `gen_ai.*` attributes plus `loom.tenant`, `loom.user` and `loom.run_id`.
//!
//! A span's parent is the span current where it is created, so a model call
//! made while a run's future is polled is a child of that run; a spawned
//! task keeps its parent only through `tracing::Instrument`.

use crate::model::Usage;
use crate::tenancy::ids::Scope;
use tracing::Span;
use tracing::field::Empty;

/// An integer attribute as OpenTelemetry stores it (`tracing-opentelemetry`
/// turns a `u64` into a string, an `i64` into an integer).
fn int(value: impl TryInto<i64>) -> i64 {
    value.try_into().unwrap_or(i64::MAX)
}

/// The `tracing` target of every span here.
pub const TARGET: &str = "loom";

/// `(provider, model)` of a Loom model string: `openai:gpt-4o` is
/// (`openai`, `gpt-4o`); one without a prefix (`echo`) is both.
pub fn provider_and_model(model_id: &str) -> (&str, &str) {
    model_id.split_once(':').unwrap_or((model_id, model_id))
}

/// A run of an agent (`invoke_agent {agent_name}`), for `scope`; usage,
/// cost, turns and the outcome are recorded at the end by [`record_run`].
pub fn run(scope: &Scope, agent_name: &str, architecture: &str) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        "invoke_agent",
        otel.name = %format_args!("invoke_agent {agent_name}"),
        otel.kind = "internal",
        otel.status_code = Empty,
        gen_ai.operation.name = "invoke_agent",
        gen_ai.agent.name = agent_name,
        gen_ai.conversation.id = Empty,
        loom.architecture = architecture,
        loom.tenant = scope.tenant.as_str(),
        loom.user = %scope.user,
        loom.run_id = %scope.run,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        loom.cost_usd = Empty,
        loom.turns = Empty,
        loom.interrupted = Empty,
        "error.type" = Empty,
    );
    if let Some(session) = &scope.session {
        span.record("gen_ai.conversation.id", session.as_str());
    }
    span
}

/// Record how a run ended on its [`run`] span.
pub fn record_run(
    span: &Span,
    usage: &Usage,
    cost_usd: f64,
    turns: u32,
    interrupted: Option<&str>,
) {
    span.record("gen_ai.usage.input_tokens", int(usage.input_tokens));
    span.record("gen_ai.usage.output_tokens", int(usage.output_tokens));
    span.record("loom.cost_usd", cost_usd);
    span.record("loom.turns", int(turns));
    if let Some(reason) = interrupted {
        span.record("loom.interrupted", reason);
    }
}

/// Record a run's outcome on its [`run`] span: [`record_run`] for a
/// result, [`record_error`] (the error's variant, such as `Architecture`)
/// for a failure.
pub fn record_run_outcome(
    span: &Span,
    outcome: &Result<crate::agent::RunResult, crate::agent::AgentError>,
) {
    match outcome {
        Ok(result) => record_run(
            span,
            &result.usage,
            result.cost_usd,
            result.turns,
            result.interruption_reason.as_deref(),
        ),
        Err(error) => record_error(span, &variant(&format!("{error:?}"))),
    }
}

/// The leading identifier of a `Debug` rendering: an enum's variant.
fn variant(debug: &str) -> String {
    let name: String = debug
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    if name.is_empty() {
        "_OTHER".to_owned()
    } else {
        name
    }
}

/// Mark `span` failed: `error.type` (a short, low-cardinality kind such as
/// `model_failed` or `denied`) and the OpenTelemetry status `error`.
pub fn record_error(span: &Span, error_type: &str) {
    span.record("error.type", error_type);
    span.record("otel.status_code", "error");
}

/// A sub-agent started by a delegation (`delegate {agent}`), around the
/// sub-agent's own [`run`] span; `depth` counts the levels above it.
pub fn delegation(scope: &Scope, sub_agent: &str, depth: u32) -> Span {
    tracing::info_span!(
        target: TARGET,
        "delegate",
        otel.name = %format_args!("delegate {sub_agent}"),
        otel.kind = "internal",
        gen_ai.agent.name = sub_agent,
        loom.delegation.depth = int(depth),
        loom.tenant = scope.tenant.as_str(),
        loom.user = %scope.user,
        loom.run_id = %scope.run,
    )
}

/// One model call (`chat {model}`) in `role` (`None` for the default
/// model); usage and cost come later through [`record_usage`].
pub fn model_call(scope: &Scope, model_id: &str, role: Option<&str>) -> Span {
    let (provider, model) = provider_and_model(model_id);
    let span = tracing::info_span!(
        target: TARGET,
        "chat",
        otel.name = %format_args!("chat {model}"),
        otel.kind = "client",
        otel.status_code = Empty,
        gen_ai.operation.name = "chat",
        gen_ai.provider.name = provider,
        gen_ai.request.model = model,
        loom.model = model_id,
        loom.role = Empty,
        loom.tenant = scope.tenant.as_str(),
        loom.user = %scope.user,
        loom.run_id = %scope.run,
        gen_ai.usage.input_tokens = Empty,
        gen_ai.usage.output_tokens = Empty,
        gen_ai.usage.cache_read.input_tokens = Empty,
        loom.cost_usd = Empty,
        gen_ai.response.finish_reasons = Empty,
        "error.type" = Empty,
    );
    if let Some(role) = role {
        span.record("loom.role", role);
    }
    span
}

/// Record a model call's usage and cost (USD) on its [`model_call`] span.
pub fn record_usage(span: &Span, usage: &Usage, cost_usd: f64) {
    span.record("gen_ai.usage.input_tokens", int(usage.input_tokens));
    span.record("gen_ai.usage.output_tokens", int(usage.output_tokens));
    span.record(
        "gen_ai.usage.cache_read.input_tokens",
        int(usage.cached_tokens),
    );
    span.record("loom.cost_usd", cost_usd);
}

/// Record why the model stopped on a [`model_call`] span, in the
/// semantic conventions' words (`stop`, `tool_calls`, `length`,
/// `content_filter`).
pub fn record_finish_reason(span: &Span, reason: &crate::model::FinishReason) {
    use crate::model::FinishReason;
    let reason = match reason {
        FinishReason::Stop => "stop",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::Length => "length",
        FinishReason::ContentFilter => "content_filter",
    };
    span.record("gen_ai.response.finish_reasons", reason);
}

/// One tool call (`execute_tool {tool}`): the permission chain, then the
/// tool in its sandbox.
pub fn tool_call(scope: &Scope, tool: &str, call_id: &str) -> Span {
    tracing::info_span!(
        target: TARGET,
        "execute_tool",
        otel.name = %format_args!("execute_tool {tool}"),
        otel.kind = "internal",
        otel.status_code = Empty,
        gen_ai.operation.name = "execute_tool",
        gen_ai.tool.name = tool,
        gen_ai.tool.call.id = call_id,
        gen_ai.tool.type = "function",
        loom.tenant = scope.tenant.as_str(),
        loom.user = %scope.user,
        loom.run_id = %scope.run,
        "error.type" = Empty,
    )
}

/// A component instantiated in a fresh sandbox for one call
/// (`instantiate {plugin}`); `kind` is `tool`, `architecture`, `policy` or
/// `memory`.
pub fn instantiate(scope: &Scope, plugin: &str, kind: &str) -> Span {
    tracing::info_span!(
        target: TARGET,
        "instantiate",
        otel.name = %format_args!("instantiate {plugin}"),
        otel.kind = "internal",
        loom.plugin = plugin,
        loom.component.kind = kind,
        loom.tenant = scope.tenant.as_str(),
        loom.user = %scope.user,
        loom.run_id = %scope.run,
    )
}

/// The permission chain deciding one tool call (`permission {tool}`): deny
/// lists, mode, policies, approval. The outcome comes through
/// [`record_decision`].
pub fn permission(scope: &Scope, tool: &str, call_id: &str) -> Span {
    tracing::info_span!(
        target: TARGET,
        "permission",
        otel.name = %format_args!("permission {tool}"),
        otel.kind = "internal",
        gen_ai.tool.name = tool,
        gen_ai.tool.call.id = call_id,
        loom.tenant = scope.tenant.as_str(),
        loom.user = %scope.user,
        loom.run_id = %scope.run,
        loom.permission.decision = Empty,
        loom.permission.decided_by = Empty,
    )
}

/// Record a permission decision (`allow` or `deny`) and who made it (the
/// mode, a policy, the approver, the budget) on a [`permission`] span.
pub fn record_decision(span: &Span, decision: &str, decided_by: &str) {
    span.record("loom.permission.decision", decision);
    span.record("loom.permission.decided_by", decided_by);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telemetry_span_helpers_name_providers_and_variants() {
        assert_eq!(provider_and_model("openai:gpt-4o"), ("openai", "gpt-4o"));
        assert_eq!(provider_and_model("echo"), ("echo", "echo"));
        assert_eq!(variant("Architecture(\"boom\")"), "Architecture");
        assert_eq!(variant("(x)"), "_OTHER");
    }
}
