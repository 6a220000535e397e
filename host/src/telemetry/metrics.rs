//! Metrics, emitted as `tracing` events under the target `loom::metrics`.
//!
//! The convention is `tracing-opentelemetry`'s: a field named
//! `monotonic_counter.NAME` adds to counter NAME, `histogram.NAME` records
//! into histogram NAME, and the event's other fields are the measurement's
//! attributes. The OTLP sink turns them into OpenTelemetry instruments; the
//! file and memory sinks keep one record per measurement.
//!
//! | metric | instrument | unit | attributes |
//! |---|---|---|---|
//! | `gen_ai.client.token.usage` | histogram | token | `gen_ai.token.type` (input, output), `gen_ai.operation.name`, `gen_ai.provider.name`, `gen_ai.request.model`, `loom.tenant` |
//! | `gen_ai.client.operation.duration` | histogram | s | as above without the token type, `error.type` on failure |
//! | `loom.cost.usd` | counter | USD | `gen_ai.request.model`, `loom.tenant` |
//! | `loom.tool.duration` | histogram | s | `gen_ai.tool.name`, `loom.tenant`, `loom.outcome` (ok, error) |
//! | `loom.component.cpu_time` | histogram | s | `loom.plugin`, `loom.component.kind`, `loom.tenant` |
//! | `loom.permission.denials` | counter | call | `gen_ai.tool.name`, `loom.permission.decided_by`, `loom.tenant` |
//! | `loom.budget.events` | counter | event | `loom.budget.event` (warning, exceeded), `loom.budget.key`, `loom.budget.level`, `loom.tenant` |
//!
//! Attributes name the tenant, not the user: users can be many, and every
//! attribute value multiplies a metric's series. Spans carry the user.

use super::spans::provider_and_model;
use crate::model::Usage;
use crate::tenancy::ids::Scope;
use std::time::Duration;

/// The `tracing` target of metric events.
pub const TARGET: &str = "loom::metrics";

/// Everything measured of one finished model call: [`tokens`], [`cost`]
/// and [`model_duration`].
pub fn model_call(scope: &Scope, model_id: &str, usage: &Usage, cost_usd: f64, duration: Duration) {
    tokens(scope, model_id, usage);
    cost(scope, model_id, cost_usd);
    model_duration(scope, model_id, duration, None);
}

/// Tokens of one model call: `gen_ai.client.token.usage`, once for input
/// and once for output.
pub fn tokens(scope: &Scope, model_id: &str, usage: &Usage) {
    let (provider, model) = provider_and_model(model_id);
    for (kind, count) in [
        ("input", usage.input_tokens),
        ("output", usage.output_tokens),
    ] {
        tracing::event!(
            target: TARGET,
            tracing::Level::INFO,
            histogram.gen_ai.client.token.usage = count,
            "gen_ai.token.type" = kind,
            gen_ai.operation.name = "chat",
            gen_ai.provider.name = provider,
            gen_ai.request.model = model,
            loom.tenant = scope.tenant.as_str(),
        );
    }
}

/// How long one model call took: `gen_ai.client.operation.duration`;
/// `error_type` when it failed.
pub fn model_duration(scope: &Scope, model_id: &str, duration: Duration, error_type: Option<&str>) {
    let (provider, model) = provider_and_model(model_id);
    let seconds = duration.as_secs_f64();
    let tenant = scope.tenant.as_str();
    match error_type {
        None => tracing::event!(
            target: TARGET,
            tracing::Level::INFO,
            histogram.gen_ai.client.operation.duration = seconds,
            gen_ai.operation.name = "chat",
            gen_ai.provider.name = provider,
            gen_ai.request.model = model,
            loom.tenant = tenant,
        ),
        Some(error_type) => tracing::event!(
            target: TARGET,
            tracing::Level::INFO,
            histogram.gen_ai.client.operation.duration = seconds,
            gen_ai.operation.name = "chat",
            gen_ai.provider.name = provider,
            gen_ai.request.model = model,
            "error.type" = error_type,
            loom.tenant = tenant,
        ),
    }
}

/// What one model call cost: `loom.cost.usd`.
pub fn cost(scope: &Scope, model_id: &str, cost_usd: f64) {
    let (_, model) = provider_and_model(model_id);
    tracing::event!(
        target: TARGET,
        tracing::Level::INFO,
        monotonic_counter.loom.cost.usd = cost_usd,
        gen_ai.request.model = model,
        loom.tenant = scope.tenant.as_str(),
    );
}

/// How long one admitted tool call ran: `loom.tool.duration`.
pub fn tool_duration(scope: &Scope, tool: &str, duration: Duration, ok: bool) {
    tracing::event!(
        target: TARGET,
        tracing::Level::INFO,
        histogram.loom.tool.duration = duration.as_secs_f64(),
        gen_ai.tool.name = tool,
        loom.outcome = if ok { "ok" } else { "error" },
        loom.tenant = scope.tenant.as_str(),
    );
}

/// CPU time one call into a component used (guest code and the host work
/// it asked for): `loom.component.cpu_time`; `kind` is `tool`,
/// `architecture`, `policy` or `memory`.
pub fn component_cpu(scope: &Scope, plugin: &str, kind: &str, cpu: Duration) {
    tracing::event!(
        target: TARGET,
        tracing::Level::INFO,
        histogram.loom.component.cpu_time = cpu.as_secs_f64(),
        loom.plugin = plugin,
        loom.component.kind = kind,
        loom.tenant = scope.tenant.as_str(),
    );
}

/// A tool call refused (by the mode, a policy, the approver, the budget or
/// the catalog): `loom.permission.denials`.
pub fn denial(scope: &Scope, tool: &str, decided_by: &str) {
    tracing::event!(
        target: TARGET,
        tracing::Level::INFO,
        monotonic_counter.loom.permission.denials = 1u64,
        gen_ai.tool.name = tool,
        loom.permission.decided_by = decided_by,
        loom.tenant = scope.tenant.as_str(),
    );
}

/// A budget warning (a cap nearly reached) or a stop (a cap or rate limit
/// reached): `loom.budget.events`.
pub fn budget_event(scope: &Scope, event: &str, key: &str, level: &str) {
    tracing::event!(
        target: TARGET,
        tracing::Level::INFO,
        monotonic_counter.loom.budget.events = 1u64,
        loom.budget.event = event,
        loom.budget.key = key,
        loom.budget.level = level,
        loom.tenant = scope.tenant.as_str(),
    );
}
