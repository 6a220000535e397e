//! Calling into components: a tool's `invoke` and an architecture's `run`,
//! each in a fresh sandbox, and the checks on what they hand back.

use super::SandboxEngine;
use super::bindings::{
    architecture_export, facts_export, memory_export, policy_export, types as wit_types,
};
use super::boundary::{self, check_json, check_json_bounds};
use super::error::{CallError, ToolFailure};
use super::load::{ArchitectureComponent, MemoryComponent, PolicyComponent, ToolComponent};
use super::sandbox::{CallRequest, conclude, under_limits};
use super::state::LogLevel;
use super::types::ToolOutput;
use std::time::Instant;

/// Longest error message a tool may return; the rest is cut with a marker.
pub const MAX_TOOL_ERROR_BYTES: usize = 16 << 10;

impl SandboxEngine {
    /// Call tool `name` of `component` with JSON `arguments` in a fresh sandbox.
    ///
    /// # Errors
    ///
    /// [`CallError`]: the tool's own error, or the limit it broke, or its crash.
    pub async fn call_tool(
        &self,
        component: &ToolComponent,
        request: &CallRequest<'_>,
        name: &str,
        arguments: &str,
    ) -> Result<ToolOutput, CallError> {
        let mut cpu = std::time::Duration::ZERO;
        self.call_tool_metered(component, request, name, arguments, &mut cpu)
            .await
    }

    /// [`Self::call_tool`], setting `cpu` to the CPU time the call used
    /// whatever its outcome (a failed call is charged too).
    ///
    /// # Errors
    ///
    /// As [`Self::call_tool`].
    pub async fn call_tool_metered(
        &self,
        component: &ToolComponent,
        request: &CallRequest<'_>,
        name: &str,
        arguments: &str,
        cpu: &mut std::time::Duration,
    ) -> Result<ToolOutput, CallError> {
        let started = Instant::now();
        let limits = request.limits;
        check_json_bounds(arguments, limits.max_output_bytes).map_err(|refusal| {
            CallError::Tool {
                tool: name.to_owned(),
                failure: ToolFailure::InvalidArguments(format!(
                    "the arguments were refused: {refusal}"
                )),
            }
        })?;
        let mut store = self.store(request)?;
        let meter = store.data().meter.clone();
        let arguments = arguments.to_owned();
        let ended = under_limits(&meter, limits.wall, async {
            let instance = tracing::Instrument::instrument(
                component.pre.instantiate_async(&mut store),
                crate::telemetry::spans::instantiate(&request.scope, &request.plugin, "tool"),
            )
            .await?;
            let guest = component.indices.load(&mut store, &instance)?;
            guest.call_invoke(&mut store, name, &arguments).await
        })
        .await;
        let state = store.data_mut();
        let plugin = state.plugin.clone();
        let scope = state.scope.clone();
        let (mut out_text, cut) = state.stdio[0].take();
        if cut {
            out_text.push_str(&format!(
                "\n[stdout truncated by Loom at {} bytes]",
                limits.max_log_bytes
            ));
        }
        if !out_text.is_empty() {
            state.logs.push(&plugin, &scope, LogLevel::Stdout, out_text);
        }
        let refusals = state.fs.take_refusals();
        for refusal in &refusals {
            state.logs.push(
                &plugin,
                &scope,
                LogLevel::Warn,
                format!("loom refused: {refusal}"),
            );
        }
        let result = match conclude(ended, state, limits) {
            Err(error) => Err(error),
            Ok(Err(failure)) => Err(CallError::Tool {
                tool: name.to_owned(),
                failure: with_refusals(cap_failure(failure.into()), &refusals),
            }),
            Ok(Ok(output)) => finish_output(output, limits.max_output_bytes, &plugin),
        };
        let (mut err_text, cut) = state.stdio[1].take();
        if cut {
            err_text.push_str(&format!(
                "\n[stderr truncated by Loom at {} bytes]",
                limits.max_log_bytes
            ));
        }
        if !err_text.is_empty() {
            state.logs.push(&plugin, &scope, LogLevel::Stderr, err_text);
        }
        let logs = std::mem::take(&mut state.logs.lines);
        let denials = state.hooks.denials.take();
        *cpu = std::time::Duration::from_nanos(meter.cpu_ns());
        let cpu = *cpu;
        crate::telemetry::metrics::component_cpu(&request.scope, &request.plugin, "tool", cpu);
        result.map(|(output, truncated_from)| ToolOutput {
            output,
            truncated_from,
            logs,
            denials,
            elapsed: started.elapsed(),
            cpu,
        })
    }

    /// Run an agent loop: instantiate `component` in a fresh sandbox whose
    /// `harness` import is `request.harness`, and call its `run`. `cpu` is
    /// set to the CPU time the architecture used, whatever the outcome.
    ///
    /// # Errors
    ///
    /// [`CallError`] when the architecture breaks a limit or crashes; its own
    /// `run-error` is the inner `Err`.
    pub async fn run_architecture(
        &self,
        component: &ArchitectureComponent,
        request: &CallRequest<'_>,
        input: architecture_export::RunInput,
        cpu: &mut std::time::Duration,
    ) -> Result<Result<architecture_export::RunOutput, architecture_export::RunError>, CallError>
    {
        let mut store = self.store(request)?;
        let meter = store.data().meter.clone();
        let ended = under_limits(&meter, request.limits.wall, async {
            let instance = tracing::Instrument::instrument(
                component.pre.instantiate_async(&mut store),
                crate::telemetry::spans::instantiate(
                    &request.scope,
                    &request.plugin,
                    "architecture",
                ),
            )
            .await?;
            let guest = component.indices.load(&mut store, &instance)?;
            guest.call_run(&mut store, &input).await
        })
        .await;
        *cpu = std::time::Duration::from_nanos(meter.cpu_ns());
        crate::telemetry::metrics::component_cpu(
            &request.scope,
            &request.plugin,
            "architecture",
            *cpu,
        );
        conclude(ended, store.data(), request.limits)
    }
}

/// Longest reason a policy may give; the rest is cut with a marker.
pub const MAX_POLICY_REASON_BYTES: usize = 4 << 10;

/// A policy component's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyAnswer {
    /// No objection.
    Allow,
    /// Do not run the call.
    Deny(String),
    /// Ask the approver.
    Ask(String),
}

impl SandboxEngine {
    /// Ask policy `component` about `call` to the tool `spec` describes, in a
    /// fresh sandbox with no grants.
    ///
    /// # Errors
    ///
    /// [`CallError`] when the policy breaks a limit or crashes; the caller
    /// treats that as a denial.
    pub async fn check_policy(
        &self,
        component: &PolicyComponent,
        request: &CallRequest<'_>,
        call: &wit_types::ToolCall,
        spec: &wit_types::ToolSpec,
    ) -> Result<PolicyAnswer, CallError> {
        let mut store = self.store(request)?;
        let meter = store.data().meter.clone();
        let ended = under_limits(&meter, request.limits.wall, async {
            let instance = tracing::Instrument::instrument(
                component.pre.instantiate_async(&mut store),
                crate::telemetry::spans::instantiate(&request.scope, &request.plugin, "policy"),
            )
            .await?;
            let guest = component.indices.load(&mut store, &instance)?;
            guest.call_check(&mut store, call, spec).await
        })
        .await;
        crate::telemetry::metrics::component_cpu(
            &request.scope,
            &request.plugin,
            "policy",
            std::time::Duration::from_nanos(meter.cpu_ns()),
        );
        let cap = |mut reason: String| {
            if let Some(original) = boundary::cut_to(&mut reason, MAX_POLICY_REASON_BYTES) {
                reason.push_str(&format!(" [cut by Loom from {original} bytes]"));
            }
            boundary::escape_text(&reason, usize::MAX)
        };
        Ok(match conclude(ended, store.data(), request.limits)? {
            policy_export::Decision::Allow => PolicyAnswer::Allow,
            policy_export::Decision::Deny(reason) => PolicyAnswer::Deny(cap(reason)),
            policy_export::Decision::Ask(reason) => PolicyAnswer::Ask(cap(reason)),
        })
    }
}

/// One call into a memory component (`memory` or `facts`), acting on the
/// user of the call's scope.
#[derive(Debug, Clone)]
pub enum MemoryCall {
    /// `memory.remember`.
    Remember {
        /// The text.
        text: String,
        /// A JSON object.
        metadata: String,
    },
    /// `memory.recall`.
    Recall {
        /// What to look for.
        query: String,
        /// Most items.
        limit: u32,
    },
    /// `memory.forget-current-user`.
    Forget,
    /// `memory.export`.
    Export,
    /// `facts.add-facts`.
    AddFacts {
        /// The facts, validated and canonical.
        facts: Vec<facts_export::NewFact>,
        /// Knowledge time (unix ms).
        now: i64,
    },
    /// `facts.retract`.
    Retract {
        /// The fact.
        id: String,
        /// Knowledge time (unix ms).
        now: i64,
    },
    /// `facts.query`.
    Query(facts_export::FactQuery),
}

/// What a memory component answered, by call.
#[derive(Debug, Clone)]
pub enum MemoryReply {
    /// The new item's id.
    Remembered(String),
    /// Items, best first.
    Recalled(Vec<memory_export::ScoredItem>),
    /// Items removed.
    Forgot(u64),
    /// Every item.
    Exported(Vec<memory_export::MemoryItem>),
    /// What each fact did.
    Added(Vec<facts_export::Recorded>),
    /// The expired version.
    Retracted(Option<Box<facts_export::Fact>>),
    /// Matching versions.
    Facts(Vec<facts_export::Fact>),
}

impl SandboxEngine {
    /// Call memory `component` in a fresh sandbox whose `kv` import works
    /// in `kv`. Returns the outcome and, when the component answered `ok`,
    /// the transaction to commit (its writes are dropped otherwise).
    pub async fn call_memory(
        &self,
        component: &MemoryComponent,
        request: &CallRequest<'_>,
        kv: crate::store::kv::KvTransaction,
        call: MemoryCall,
    ) -> (
        Result<Result<MemoryReply, memory_export::MemoryError>, CallError>,
        Option<crate::store::kv::KvTransaction>,
    ) {
        let mut store = match self.store(request) {
            Ok(store) => store,
            Err(error) => return (Err(error), None),
        };
        store.data_mut().kv = Some(kv);
        let meter = store.data().meter.clone();
        let ended = under_limits(&meter, request.limits.wall, async {
            let instance = tracing::Instrument::instrument(
                component.pre.instantiate_async(&mut store),
                crate::telemetry::spans::instantiate(&request.scope, &request.plugin, "memory"),
            )
            .await?;
            let memory = component.memory.load(&mut store, &instance)?;
            let facts = component.facts.load(&mut store, &instance)?;
            Ok::<_, wasmtime::Error>(match call {
                MemoryCall::Remember { text, metadata } => memory
                    .call_remember(&mut store, &text, &metadata)
                    .await?
                    .map(MemoryReply::Remembered),
                MemoryCall::Recall { query, limit } => memory
                    .call_recall(&mut store, &query, limit)
                    .await?
                    .map(MemoryReply::Recalled),
                MemoryCall::Forget => memory
                    .call_forget_current_user(&mut store)
                    .await?
                    .map(MemoryReply::Forgot),
                MemoryCall::Export => memory
                    .call_export(&mut store)
                    .await?
                    .map(MemoryReply::Exported),
                MemoryCall::AddFacts { facts: new, now } => facts
                    .call_add_facts(&mut store, &new, now)
                    .await?
                    .map(MemoryReply::Added),
                MemoryCall::Retract { id, now } => facts
                    .call_retract(&mut store, &id, now)
                    .await?
                    .map(|fact| MemoryReply::Retracted(fact.map(Box::new))),
                MemoryCall::Query(query) => facts
                    .call_query(&mut store, &query)
                    .await?
                    .map(MemoryReply::Facts),
            })
        })
        .await;
        crate::telemetry::metrics::component_cpu(
            &request.scope,
            &request.plugin,
            "memory",
            std::time::Duration::from_nanos(meter.cpu_ns()),
        );
        let outcome = conclude(ended, store.data(), request.limits);
        let kv = store.data_mut().kv.take();
        let commit = matches!(outcome, Ok(Ok(_))).then_some(kv).flatten();
        (outcome, commit)
    }
}

/// A tool's error with the host's refusals of the call appended: the guest
/// may have reported a refused write as a bare I/O error.
fn with_refusals(failure: ToolFailure, refusals: &[String]) -> ToolFailure {
    if refusals.is_empty() {
        return failure;
    }
    let note = format!(" [loom refused: {}]", refusals.join("; "));
    match failure {
        ToolFailure::UnknownTool(m) => ToolFailure::UnknownTool(m + &note),
        ToolFailure::InvalidArguments(m) => ToolFailure::InvalidArguments(m + &note),
        ToolFailure::Denied(m) => ToolFailure::Denied(m + &note),
        ToolFailure::Failed(m) => ToolFailure::Failed(m + &note),
    }
}

/// A tool's error with its message cut to [`MAX_TOOL_ERROR_BYTES`].
fn cap_failure(failure: ToolFailure) -> ToolFailure {
    let cap = |mut message: String| {
        if let Some(original) = boundary::cut_to(&mut message, MAX_TOOL_ERROR_BYTES) {
            message.push_str(&format!(
                "\n[error truncated by Loom: kept {} of {original} bytes]",
                message.len()
            ));
        }
        message
    };
    match failure {
        ToolFailure::UnknownTool(m) => ToolFailure::UnknownTool(cap(m)),
        ToolFailure::InvalidArguments(m) => ToolFailure::InvalidArguments(cap(m)),
        ToolFailure::Denied(m) => ToolFailure::Denied(cap(m)),
        ToolFailure::Failed(m) => ToolFailure::Failed(cap(m)),
    }
}

/// Check the guest's JSON output, or cut it to `max` bytes as a JSON string
/// with a marker.
fn finish_output(
    mut output: String,
    max: usize,
    plugin: &str,
) -> Result<(String, Option<usize>), CallError> {
    if output.len() <= max {
        check_json(&output, max).map_err(|refusal| CallError::InvalidOutput {
            plugin: plugin.to_owned(),
            reason: refusal.to_string(),
        })?;
        return Ok((output, None));
    }
    let original = boundary::cut_to(&mut output, max).unwrap_or(max);
    let kept = output.len();
    output.push_str(&format!(
        "\n[output truncated by Loom: kept {kept} of {original} bytes]"
    ));
    let json = serde_json::to_string(&output).map_err(|e| CallError::InvalidOutput {
        plugin: plugin.to_owned(),
        reason: e.to_string(),
    })?;
    Ok((json, Some(original)))
}
