//! One run: the work behind the import gate (model calls, tool calls,
//! delegation), the structured-output loop around the architecture, sessions,
//! and streaming.

use super::events::{EventSink, RunEvent};
use super::gate::{Gate, GateLimits};
use super::governor::{Governor, Inherited};
use super::journal::{
    CallRecorder, JournalCloser, JournalError, RunJournal, ScopeJournal, Step, TurnJournal,
};
use super::{AgentError, AgentInner, OutputValidationError, RunRequest, RunResult};
use crate::config::Limits;
use crate::engine::bindings::architecture_export as arch;
use crate::engine::bindings::harness as wit;
use crate::engine::bindings::types as wt;
use crate::engine::{CallError, Harness, ToolFailure};
use crate::model::{
    BoxFuture, FinishReason, Message, ModelChunk, ModelRequest, Role, ToolCall, ToolDefinition,
    Usage,
};
use crate::plugins::ToolBinding;
use crate::store::journal::{EntryKind, JournalFormat, RunStart};
use crate::tenancy::ids::{RunId, Scope};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::sync::mpsc;

/// How deep `delegate` may nest sub-agents.
const MAX_DELEGATION_DEPTH: u32 = 4;

/// The host side of one architecture invocation.
pub(crate) struct RunState {
    agent: Arc<AgentInner>,
    scope: Arc<Scope>,
    tools: Vec<ToolBinding>,
    /// Tools of the tenant's MCP servers offered to the run.
    remote_tools: Vec<crate::mcp::RemoteTool>,
    /// The host's own tools offered to the run (working blocks, retrieval).
    host_tools: Vec<crate::engine::ToolSpec>,
    output_schema: Option<serde_json::Value>,
    events: Option<EventSink>,
    usage: Mutex<Usage>,
    cost: Mutex<f64>,
    turns: AtomicU32,
    /// Notes stored through the harness's `remember` in this run.
    notes: AtomicU32,
    /// The memory of the run's tenant (built-in or its component), when
    /// the agent has memory and the user is named.
    memory: Option<crate::memory::TenantMemory>,
    lineage: Lineage,
    pub(super) governor: Arc<Governor>,
    /// The run's tools as offered to the architecture, rendered and parsed
    /// once: a request that offers one back unchanged reuses both.
    offered: std::sync::OnceLock<Vec<OfferedTool>>,
}

/// One tool as the run offers it: the spec the architecture gets, and the
/// definition a model request carries.
struct OfferedTool {
    spec: wt::ToolSpec,
    definition: ToolDefinition,
}

/// Where a run sits in its tree of sub-agents.
#[derive(Clone)]
pub(crate) struct Lineage {
    /// Delegation levels above this run (0 for a top-level run).
    pub(crate) depth: u32,
    /// Sub-agents started by the whole tree so far.
    pub(crate) delegations: Arc<AtomicU32>,
    /// Events the architectures of the whole tree emitted so far.
    pub(crate) events: Arc<AtomicU32>,
    /// The budget and approvals a sub-agent shares with its parent.
    pub(crate) inherited: Option<Inherited>,
    /// A sub-agent's journal scope (a top-level run opens its own).
    pub(crate) journal: Option<Arc<ScopeJournal>>,
}

impl Lineage {
    /// A top-level run.
    pub(crate) fn root() -> Self {
        Lineage {
            depth: 0,
            delegations: Arc::new(AtomicU32::new(0)),
            events: Arc::new(AtomicU32::new(0)),
            inherited: None,
            journal: None,
        }
    }
}

impl RunState {
    /// Send `event` to the run's listener, if any.
    pub(super) fn send(&self, event: RunEvent) {
        if let Some(events) = &self.events {
            events.send(event);
        }
    }

    fn charge(&self, usage: Usage, cost: f64) {
        crate::sync::lock(&self.usage).add(usage);
        *crate::sync::lock(&self.cost) += cost;
    }

    fn totals(&self) -> (Usage, f64) {
        let usage = *crate::sync::lock(&self.usage);
        let cost = *crate::sync::lock(&self.cost);
        (usage, cost)
    }
}

fn to_model_message(message: wt::Message) -> Message {
    Message {
        role: match message.role {
            wt::Role::System => Role::System,
            wt::Role::User => Role::User,
            wt::Role::Assistant => Role::Assistant,
            wt::Role::Tool => Role::Tool,
        },
        content: message.content,
        name: message.name,
        tool_call_id: message.tool_call_id,
        tool_calls: message
            .tool_calls
            .into_iter()
            .map(|c| ToolCall {
                id: c.id,
                name: c.name,
                arguments: c.arguments,
            })
            .collect(),
    }
}

fn to_wit_message(message: &Message) -> wt::Message {
    wt::Message {
        role: match message.role {
            Role::System => wt::Role::System,
            Role::User => wt::Role::User,
            Role::Assistant => wt::Role::Assistant,
            Role::Tool => wt::Role::Tool,
        },
        content: message.content.clone(),
        name: message.name.clone(),
        tool_call_id: message.tool_call_id.clone(),
        tool_calls: message
            .tool_calls
            .iter()
            .map(|c| wt::ToolCall {
                id: c.id.clone(),
                name: c.name.clone(),
                arguments: c.arguments.clone(),
            })
            .collect(),
    }
}

fn usage_of(usage: &wt::Usage) -> Usage {
    Usage {
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
        cached_tokens: usage.cached_tokens,
        cache_write_tokens: 0,
    }
}

fn wit_usage(usage: Usage) -> wt::Usage {
    wt::Usage {
        input_tokens: usage.input_tokens,
        output_tokens: usage.output_tokens,
        cached_tokens: usage.cached_tokens,
    }
}

/// A tokio task that is aborted when this handle is dropped, so cancelling a
/// run cancels the tool calls it started.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The outcome of one tool call of a turn, with the call as it ran (the
/// approver may have edited its arguments).
type CallOutcome = (wt::ToolCall, Result<crate::engine::ToolOutput, CallError>);

/// The id and tool of a call, kept in call order for the results.
struct CallMeta {
    id: String,
    name: String,
}

/// What a tool call gives the architecture: the output JSON, or why not.
type CallResult = Result<String, ToolFailure>;

/// A tool call under way: its own task when it runs beside others, a
/// future polled by the run itself when it is the turn's only call, or the
/// result a resumed run's journal recorded for it.
enum PendingCall {
    /// Spawned; aborted if the run is dropped first.
    Spawned(AbortOnDrop<CallResult>),
    /// Awaited in place.
    Inline(std::pin::Pin<Box<dyn std::future::Future<Output = CallResult> + Send>>),
    /// Finished before the run stopped.
    Recorded(Result<String, wt::ToolError>),
}

impl PendingCall {
    /// Wait for the outcome; `Err` only when a spawned task was lost.
    async fn finish(self) -> Result<CallResult, tokio::task::JoinError> {
        match self {
            PendingCall::Spawned(mut task) => (&mut task.0).await,
            PendingCall::Inline(work) => Ok(work.await),
            PendingCall::Recorded(result) => Ok(result.map_err(ToolFailure::from)),
        }
    }
}

/// `work`'s result as the architecture gets it, journaled as the
/// `index`th call of its turn by `recorder`, under the call's fingerprint
/// (when the turn has several).
async fn journaled_call(
    work: impl std::future::Future<Output = CallOutcome>,
    recorder: Option<(CallRecorder, [u8; 32])>,
    index: usize,
) -> CallResult {
    let result = match work.await {
        (_, Ok(output)) => Ok(output.output),
        (_, Err(CallError::Tool { failure, .. })) => Err(failure),
        (_, Err(other)) => Err(ToolFailure::Failed(other.to_string())),
    };
    if let Some((recorder, call)) = recorder {
        let recorded: Result<&str, wt::ToolError> = match &result {
            Ok(output) => Ok(output),
            Err(failure) => Err(failure.clone().into()),
        };
        recorder.record(index, call, &recorded).await;
    }
    result
}

pub(super) fn failure_text(failure: &ToolFailure) -> String {
    match failure {
        ToolFailure::Denied(m) => format!("DENIED: {m}"),
        ToolFailure::UnknownTool(m) => format!("ERROR: unknown tool {m}"),
        ToolFailure::InvalidArguments(m) => format!("ERROR: invalid arguments: {m}"),
        ToolFailure::Failed(m) => format!("ERROR: {m}"),
    }
}

/// The work behind each import; [`Gate`] checks every request first.
impl RunState {
    /// One model completion, charged to the run.
    pub(super) fn complete(
        &self,
        request: wit::CompletionRequest,
    ) -> BoxFuture<'_, Result<wit::Completion, wit::HarnessError>> {
        Box::pin(async move {
            let mut request = request;
            let reservation = self.governor.before_model(&mut request).await?;
            let model = self.agent.model_for(request.role.as_deref());
            let role = request.role.clone();
            let mut messages: Vec<Message> =
                request.messages.into_iter().map(to_model_message).collect();
            let mut tools = Vec::with_capacity(request.tools.len());
            for spec in request.tools {
                if let Some(definition) = self.offered_unchanged(&spec) {
                    tools.push(definition.clone());
                    continue;
                }
                let parameters = serde_json::from_str(&spec.parameters).map_err(|e| {
                    wit::HarnessError::InvalidRequest(format!(
                        "tool `{}` has parameters that are not JSON: {e}",
                        spec.name
                    ))
                })?;
                tools.push(ToolDefinition {
                    name: spec.name,
                    description: spec.description,
                    parameters,
                });
            }
            let explicit = match request.output_schema {
                Some(text) => Some(serde_json::from_str(&text).map_err(|e| {
                    wit::HarnessError::InvalidRequest(format!("output schema is not JSON: {e}"))
                })?),
                None => None,
            };
            let output_schema = explicit.or_else(|| self.output_schema.clone());
            let native = model.native_structured_output();
            if let (Some(schema), false) = (&output_schema, native) {
                messages.push(Message::system(format!(
                    "When you give your final answer, reply with only a JSON value (no prose, no code fence) \
                     that matches this JSON Schema:\n{schema}"
                )));
            }
            let model_request = ModelRequest {
                messages,
                tools,
                temperature: request.temperature,
                max_output_tokens: request.max_output_tokens,
                output_schema: if native { output_schema } else { None },
            };
            let sink = |chunk: ModelChunk| {
                if let ModelChunk::Text { delta } = chunk {
                    self.send(RunEvent::ModelChunk {
                        delta,
                        role: role.clone(),
                    });
                }
            };
            let streaming = self.events.is_some();
            let span =
                crate::telemetry::spans::model_call(&self.scope, model.id(), role.as_deref());
            let started = std::time::Instant::now();
            let response = match tracing::Instrument::instrument(
                model.complete(&model_request, if streaming { Some(&sink) } else { None }),
                span.clone(),
            )
            .await
            {
                Ok(response) => response,
                Err(error) => {
                    let message = error.to_string();
                    crate::telemetry::spans::record_error(&span, "model_failed");
                    crate::telemetry::metrics::model_duration(
                        &self.scope,
                        model.id(),
                        started.elapsed(),
                        Some("model_failed"),
                    );
                    self.governor.model_failed(reservation, &message);
                    return Err(wit::HarnessError::ModelFailed(message));
                }
            };
            let cost = self.agent.prices.cost(model.id(), &response.usage);
            crate::telemetry::spans::record_usage(&span, &response.usage, cost);
            crate::telemetry::spans::record_finish_reason(&span, &response.finish_reason);
            crate::telemetry::metrics::model_call(
                &self.scope,
                model.id(),
                &response.usage,
                cost,
                started.elapsed(),
            );
            self.governor
                .after_model(reservation, &response.usage, cost);
            self.charge(response.usage, cost);
            self.turns.fetch_add(1, Ordering::Relaxed);
            Ok(wit::Completion {
                message: to_wit_message(&response.message),
                usage: wit_usage(response.usage),
                cost_usd: cost,
                finish_reason: match response.finish_reason {
                    FinishReason::Stop => wit::FinishReason::Stop,
                    FinishReason::ToolCalls => wit::FinishReason::ToolCalls,
                    FinishReason::Length => wit::FinishReason::Length,
                    FinishReason::ContentFilter => wit::FinishReason::ContentFilter,
                },
            })
        })
    }

    /// Run the turn's tool calls, in parallel, results in call order. Tools
    /// are the ones bound when the run started: a reload mid-run changes
    /// nothing. Each call runs with its idempotency key from `turn`; in a
    /// turn of several calls each result is journaled as it comes, and a
    /// resumed run takes the recorded ones instead of running them again.
    pub(super) fn call_tools(
        &self,
        calls: Vec<wt::ToolCall>,
        turn: TurnJournal,
    ) -> BoxFuture<'_, Vec<wt::ToolResult>> {
        Box::pin(async move {
            // Several calls run as tasks, in parallel on every worker; a lone
            // call runs inline. Either way dropping the run drops the call.
            let parallel = calls.len() > 1;
            let recorder = if parallel { turn.recorder() } else { None };
            let mut pending = Vec::with_capacity(calls.len());
            for (index, call) in calls.into_iter().enumerate() {
                let call_meta = CallMeta {
                    id: call.id.clone(),
                    name: call.name.clone(),
                };
                // Only a journaled turn of several calls records (and
                // replays) each call on its own.
                let call_print = recorder.as_ref().map(|_| turn.call_fingerprint(&call));
                if let Some(print) = &call_print
                    && let Some(recorded) =
                        turn.recorded::<Result<String, wt::ToolError>>(index, print)
                {
                    pending.push((call_meta, PendingCall::Recorded(recorded)));
                    continue;
                }
                let key = turn.key(index);
                if self.events.is_some() {
                    self.send(RunEvent::ToolCall {
                        call_id: call.id.clone(),
                        name: call.name.clone(),
                        arguments: call.arguments.clone(),
                    });
                }
                let idempotent = self
                    .tools
                    .iter()
                    .map(|b| &b.spec)
                    .chain(self.remote_tools.iter().map(|r| &r.spec))
                    .chain(&self.host_tools)
                    .find(|spec| spec.name == call.name)
                    .is_some_and(|spec| spec.idempotent);
                if turn.maybe_repeated && !idempotent {
                    self.send(RunEvent::ToolRerun {
                        call_id: call.id.clone(),
                        name: call.name.clone(),
                        idempotency_key: key.clone(),
                    });
                }
                let work: std::pin::Pin<Box<dyn std::future::Future<Output = CallOutcome> + Send>> =
                    if let Some(spec) = self.host_tools.iter().find(|s| s.name == call.name) {
                        Box::pin(self.host_tool(call, spec.clone()))
                    } else if let Some(binding) =
                        self.tools.iter().find(|b| b.spec.name == call.name)
                    {
                        Box::pin(self.component_tool(call, binding.clone(), key))
                    } else if let Some(remote) =
                        self.remote_tools.iter().find(|r| r.spec.name == call.name)
                    {
                        Box::pin(self.remote_tool(call, remote.clone()))
                    } else {
                        self.governor
                            .refused_tool(&call, "the tool is not available to this agent");
                        let failure = ToolFailure::Denied(format!(
                            "tool `{}` is not available to this agent",
                            call.name
                        ));
                        let tool = call.name.clone();
                        Box::pin(async move { (call, Err(CallError::Tool { tool, failure })) })
                    };
                // Instrumented here, so a spawned call keeps the run as its parent.
                let work = tracing::Instrument::instrument(
                    work,
                    crate::telemetry::spans::tool_call(&self.scope, &call_meta.name, &call_meta.id),
                );
                let work = journaled_call(work, recorder.clone().zip(call_print), index);
                let task = if parallel {
                    PendingCall::Spawned(AbortOnDrop(tokio::spawn(work)))
                } else {
                    PendingCall::Inline(Box::pin(work))
                };
                pending.push((call_meta, task));
            }
            let mut results = Vec::with_capacity(pending.len());
            for (call, task) in pending {
                let outcome: Result<String, ToolFailure> = match task.finish().await {
                    Err(join) => Err(ToolFailure::Failed(format!(
                        "the tool call was lost: {join}"
                    ))),
                    Ok(outcome) => outcome,
                };
                if self.events.is_some() {
                    let (ok, output) = match &outcome {
                        Ok(text) => (true, text.clone()),
                        Err(failure) => (false, failure_text(failure)),
                    };
                    self.send(RunEvent::ToolResult {
                        call_id: call.id.clone(),
                        name: call.name.clone(),
                        ok,
                        output,
                    });
                }
                results.push(wt::ToolResult {
                    call_id: call.id,
                    name: call.name,
                    outcome: outcome.map_err(wt::ToolError::from),
                });
            }
            results
        })
    }

    /// A call of a component tool: the permission chain and the budget,
    /// then the call in its sandbox, with `key` as its idempotency key.
    fn component_tool(
        &self,
        call: wt::ToolCall,
        binding: ToolBinding,
        key: String,
    ) -> impl std::future::Future<Output = CallOutcome> + Send + 'static {
        let host = self.agent.host.clone();
        let scope = (*self.scope).clone().with_idempotency_key(key);
        let governor = self.governor.clone();
        async move {
            let admitted = match governor.admit_tool(call, (&binding).into()).await {
                Ok(admitted) => admitted,
                Err((call, refusal)) => {
                    return (
                        call,
                        Err(CallError::Tool {
                            tool: binding.spec.name.clone(),
                            failure: ToolFailure::from(refusal),
                        }),
                    );
                }
            };
            let ran = host
                .call_bound_tool_metered(scope, &binding, &admitted.call.arguments)
                .await;
            let summary = match &ran.outcome {
                Ok(output) => Ok(output.output.as_str()),
                Err(CallError::Tool { failure, .. }) => Err(failure_text(failure)),
                Err(other) => Err(other.to_string()),
            };
            let call = governor.after_tool(admitted, &summary, ran.cpu);
            (call, ran.outcome)
        }
    }

    /// A call of a tool of one of the tenant's MCP servers: the permission
    /// chain and the budget, then the call to the server.
    fn remote_tool(
        &self,
        call: wt::ToolCall,
        remote: crate::mcp::RemoteTool,
    ) -> impl std::future::Future<Output = CallOutcome> + Send + 'static {
        let governor = self.governor.clone();
        async move {
            let tool = super::governor::GovernedTool {
                spec: &remote.spec,
                file_edit: false,
            };
            let admitted = match governor.admit_tool(call, tool).await {
                Ok(admitted) => admitted,
                Err((call, refusal)) => {
                    return (
                        call,
                        Err(CallError::Tool {
                            tool: remote.spec.name.clone(),
                            failure: ToolFailure::from(refusal),
                        }),
                    );
                }
            };
            let outcome = remote.call(&admitted.call.arguments).await;
            let summary = match &outcome {
                Ok(output) => Ok(output.output.as_str()),
                Err(CallError::Tool { failure, .. }) => Err(failure_text(failure)),
                Err(other) => Err(other.to_string()),
            };
            let call = governor.after_tool(admitted, &summary, std::time::Duration::ZERO);
            (call, outcome)
        }
    }

    /// A call of one of the host's own tools, governed like any other.
    fn host_tool(
        &self,
        call: wt::ToolCall,
        spec: crate::engine::ToolSpec,
    ) -> impl std::future::Future<Output = CallOutcome> + Send + 'static {
        let governor = self.governor.clone();
        let scope = self.scope.clone();
        let memory = self.agent.memory.as_ref().map(|(memory, _)| memory.clone());
        let docs = self.agent.host.docs();
        async move {
            // Block edits are edits of the agent's own notes: `accept-edits`
            // allows them, `default` asks (or an allow list such as
            // `memory_block_*` lets them run), `plan` denies them.
            let tool = super::governor::GovernedTool {
                spec: &spec,
                file_edit: spec.destructive,
            };
            let admitted = match governor.admit_tool(call, tool).await {
                Ok(admitted) => admitted,
                Err((call, refusal)) => {
                    return (
                        call,
                        Err(CallError::Tool {
                            tool: spec.name.clone(),
                            failure: ToolFailure::from(refusal),
                        }),
                    );
                }
            };
            let outcome = match (&memory, spec.name.as_str()) {
                (_, super::retrieve_tool::NAME) => {
                    super::retrieve_tool::call(&docs, &scope, &admitted.call.arguments).await
                }
                (Some(memory), _) => {
                    super::block_tools::call(memory, &scope, &spec.name, &admitted.call.arguments)
                        .await
                }
                (None, _) => Err(ToolFailure::Denied("this agent has no memory".into())),
            };
            let summary = match &outcome {
                Ok(output) => Ok(output.output.as_str()),
                Err(failure) => Err(failure_text(failure)),
            };
            let call = governor.after_tool(admitted, &summary, std::time::Duration::ZERO);
            let outcome = outcome.map_err(|failure| CallError::Tool {
                tool: spec.name.clone(),
                failure,
            });
            (call, outcome)
        }
    }

    /// The tools bound to the run, the host's own last.
    pub(super) fn tools(&self) -> Vec<wt::ToolSpec> {
        self.offered().iter().map(|t| t.spec.clone()).collect()
    }

    /// The run's tools, rendered once.
    fn offered(&self) -> &[OfferedTool] {
        self.offered.get_or_init(|| {
            self.tools
                .iter()
                .map(|b| &b.spec)
                .chain(self.remote_tools.iter().map(|r| &r.spec))
                .chain(&self.host_tools)
                .map(|spec| OfferedTool {
                    spec: wt::ToolSpec {
                        name: spec.name.clone(),
                        description: spec.description.clone(),
                        parameters: spec.parameters.to_string(),
                        destructive: spec.destructive,
                        idempotent: spec.idempotent,
                    },
                    definition: ToolDefinition {
                        name: spec.name.clone(),
                        description: spec.description.clone(),
                        parameters: spec.parameters.clone(),
                    },
                })
                .collect()
        })
    }

    /// The run's own definition of `spec` when a request offers it back
    /// exactly as the run rendered it (already checked and parsed).
    pub(super) fn offered_unchanged(&self, spec: &wt::ToolSpec) -> Option<&ToolDefinition> {
        self.offered()
            .iter()
            .find(|t| {
                t.spec.name == spec.name
                    && t.spec.parameters == spec.parameters
                    && t.spec.description == spec.description
            })
            .map(|t| &t.definition)
    }

    /// A completion replayed from the journal: its usage and cost count in
    /// the run's totals (the ledger was charged when it was recorded).
    pub(super) fn replayed_completion(&self, completion: &wit::Completion) {
        self.charge(usage_of(&completion.usage), completion.cost_usd);
        self.turns.fetch_add(1, Ordering::Relaxed);
    }

    /// A sub-agent's output replayed from the journal: its spend counts in
    /// the run's totals.
    pub(super) fn replayed_delegation(&self, output: &wit::RunOutput) {
        self.charge(usage_of(&output.usage), output.cost_usd);
    }

    /// Run a sub-agent for the same user; its spend is charged here, and
    /// it is journaled in `journal`'s scope.
    pub(super) fn delegate(
        &self,
        agent: wit::AgentRef,
        input: String,
        journal: ScopeJournal,
    ) -> BoxFuture<'_, Result<wit::RunOutput, wit::HarnessError>> {
        Box::pin(async move {
            self.governor.before_delegate()?;
            if self.lineage.depth + 1 > MAX_DELEGATION_DEPTH {
                return Err(wit::HarnessError::InvalidRequest(format!(
                    "sub-agents may nest at most {MAX_DELEGATION_DEPTH} deep"
                )));
            }
            let allowed: Vec<String> = self.tools.iter().map(|b| b.spec.name.clone()).collect();
            // `agent:NAME` names an agent of `[agents.NAME]`: its own
            // settings, within what this run may use.
            let named = match agent.architecture.strip_prefix("agent:") {
                Some(name) => Some(self.named_agent(name, &agent, &allowed)?),
                None => None,
            };
            // The sub-agent's place in the event stream's paths.
            let segment = agent
                .architecture
                .strip_prefix("agent:")
                .unwrap_or(&agent.architecture)
                .to_owned();
            let tools = if agent.tools.is_empty() {
                allowed
            } else {
                agent
                    .tools
                    .into_iter()
                    .filter(|t| allowed.contains(t))
                    .collect()
            };
            let child = Arc::new(match named {
                Some(child) => child,
                None => AgentInner {
                    // The agent-ref's configuration (a JSON object), else none.
                    architecture_config: ref_config(agent.config.as_deref())?
                        .unwrap_or_else(empty_object),
                    ..self.sub_agent(agent.architecture, agent.instructions, tools)
                },
            });
            let mut scope = (*self.scope).clone();
            scope.run = RunId::generate();
            scope.session = scope
                .session
                .as_ref()
                .and_then(|parent| derived_session(parent, &segment));
            let request = RunRequest::new(scope, input);
            let lineage = Lineage {
                depth: self.lineage.depth + 1,
                delegations: self.lineage.delegations.clone(),
                events: self.lineage.events.clone(),
                inherited: Some(self.governor.inherit()),
                journal: Some(Arc::new(journal)),
            };
            let events = self.events.as_ref().map(|sink| sink.child(&segment));
            let result = match Box::pin(execute(child, request, events.clone(), lineage)).await {
                Ok(result) => {
                    if let Some(events) = &events {
                        events.send(RunEvent::Completed {
                            result: Box::new(result.clone()),
                        });
                    }
                    result
                }
                Err(error) => {
                    if let Some(events) = &events {
                        events.send(RunEvent::Error {
                            message: error.to_string(),
                        });
                    }
                    return Err(match error {
                        AgentError::NotFound(m) => wit::HarnessError::UnknownAgent(m),
                        other => wit::HarnessError::ModelFailed(other.to_string()),
                    });
                }
            };
            // The sub-agent's spend is charged to this run.
            self.charge(result.usage, result.cost_usd);
            Ok(wit::RunOutput {
                output: result.output,
                turns: result.turns,
                usage: wit_usage(result.usage),
                cost_usd: result.cost_usd,
                interrupted: result.interruption_reason,
            })
        })
    }

    /// The sub-agent `[agents.NAME]` describes, for a delegation from this
    /// run: its instructions (and the agent-ref's, when given), model,
    /// per-role models, architecture and configuration; its tools are the
    /// ones it names that this run may use (`allowed`), narrowed further by
    /// the agent-ref's list.
    fn named_agent(
        &self,
        name: &str,
        agent: &wit::AgentRef,
        allowed: &[String],
    ) -> Result<AgentInner, wit::HarnessError> {
        let config = self.agent.host.config();
        let settings = config.agents.get(name).ok_or_else(|| {
            let known: Vec<&str> = config.agents.keys().map(String::as_str).collect();
            wit::HarnessError::UnknownAgent(format!(
                "no agent `{name}` in [agents] (configured: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ))
        })?;
        let retry = crate::model::spec::retry_policy(&config.retry);
        let model_of = |spec: &str, key: String| {
            crate::model::spec::from_spec(spec, &config.models, &retry, &config.base_dir)
                .map_err(|e| wit::HarnessError::InvalidRequest(format!("{key}: {e}")))
        };
        let model = match &settings.model {
            Some(spec) => model_of(spec, format!("[agents.{name}] model"))?,
            None => self.agent.model.clone(),
        };
        let mut role_models = self.agent.role_models.clone();
        for (role, spec) in &settings.role_models {
            role_models.insert(
                role.clone(),
                model_of(spec, format!("[agents.{name}.role_models] {role}"))?,
            );
        }
        let mut tools: Vec<String> = match &settings.tools {
            Some(named) => named
                .iter()
                .filter(|t| allowed.contains(t))
                .cloned()
                .collect(),
            None => allowed.to_vec(),
        };
        if !agent.tools.is_empty() {
            tools.retain(|t| agent.tools.contains(t));
        }
        let mut instructions = settings.instructions.clone();
        if !agent.instructions.is_empty() {
            if !instructions.is_empty() {
                instructions.push_str("\n\n");
            }
            instructions.push_str(&agent.instructions);
        }
        let architecture_config = match &settings.architecture_config {
            Some(config) => config.clone(),
            None => ref_config(agent.config.as_deref())?.unwrap_or_else(empty_object),
        };
        Ok(AgentInner {
            model,
            architecture_config,
            role_models,
            workers: settings.workers.clone(),
            max_turns: settings.max_turns.max(1),
            name: Some(name.to_owned()),
            ..self.sub_agent(settings.architecture.clone(), instructions, tools)
        })
    }

    /// A sub-agent of this run running `architecture` with `instructions`
    /// and `tools`: this run's model, role models, turn cap, limits, prices
    /// and approver, no session, no output retries, no extraction, and the
    /// same user's memory to recall (the parent's episode records the run,
    /// so the sub-agent stores none); an empty configuration.
    fn sub_agent(
        &self,
        architecture: String,
        instructions: String,
        tools: Vec<String>,
    ) -> AgentInner {
        AgentInner {
            host: self.agent.host.clone(),
            model: self.agent.model.clone(),
            instructions,
            tools: Some(tools),
            architecture,
            architecture_config: empty_object(),
            role_models: self.agent.role_models.clone(),
            workers: Vec::new(),
            max_turns: self.agent.max_turns,
            output_retries: 0,
            run_timeout: self.agent.run_timeout,
            prices: self.agent.prices.clone(),
            sessions: None,
            approver: self.agent.approver.clone(),
            extraction_model: None,
            // A sub-agent is journaled in its parent's journal.
            journal: None,
            name: None,
            retrieval: self.agent.retrieval,
            memory: self.agent.memory.clone().map(|(memory, options)| {
                (
                    memory,
                    super::MemoryOptions {
                        episodes: false,
                        ..options
                    },
                )
            }),
        }
    }

    /// Memories of the run's user.
    pub(super) fn recall(
        &self,
        query: String,
        limit: u32,
    ) -> BoxFuture<'_, Vec<wit::Recollection>> {
        Box::pin(async move {
            // Anonymous runs have no memory (see `execute`).
            let Some(memory) = &self.memory else {
                return Vec::new();
            };
            match memory
                .recall(&self.scope.tenant, &self.scope.user, &query, limit as usize)
                .await
            {
                Ok(items) => items
                    .into_iter()
                    .map(|item| wit::Recollection {
                        text: item.text,
                        score: item.score,
                    })
                    .collect(),
                Err(error) => {
                    tracing::warn!(%error, "recall failed");
                    Vec::new()
                }
            }
        })
    }

    /// Store a note for the run's user.
    pub(super) fn remember(&self, text: String) -> BoxFuture<'_, Result<(), wit::HarnessError>> {
        Box::pin(async move {
            if self.agent.memory.is_none() {
                return Err(wit::HarnessError::InvalidRequest(
                    "no memory is configured for this agent".into(),
                ));
            }
            if matches!(self.scope.user, crate::tenancy::ids::UserId::Anonymous) {
                return Err(wit::HarnessError::InvalidRequest(
                    "memory is kept for named users only; this run is anonymous".into(),
                ));
            }
            let Some(memory) = &self.memory else {
                return Err(wit::HarnessError::InvalidRequest(
                    "the tenant's memory is unavailable (see the host log)".into(),
                ));
            };
            if self.notes.fetch_add(1, Ordering::Relaxed) >= MAX_NOTES_PER_RUN {
                return Err(wit::HarnessError::InvalidRequest(format!(
                    "this run already stored {MAX_NOTES_PER_RUN} notes, the most one run may"
                )));
            }
            let note = crate::memory::NewEpisode {
                session: self.scope.session.as_ref().map(|s| s.to_string()),
                run: Some(self.scope.run.to_string()),
                input: text,
                output: String::new(),
                transcript: None,
            };
            memory
                .remember(
                    &self.scope.tenant,
                    &self.scope.user,
                    crate::memory::EpisodeKind::Note,
                    note,
                )
                .await
                .map(|_| ())
                .map_err(|error| wit::HarnessError::InvalidRequest(format!("remember: {error}")))
        })
    }
}

/// Check `output` against `schema`; `Ok(parsed)` or the validation errors.
fn validate(schema: &serde_json::Value, output: &str) -> Result<serde_json::Value, String> {
    let trimmed = output.trim();
    let text = trimmed
        .strip_prefix("```json")
        .or_else(|| trimmed.strip_prefix("```"))
        .and_then(|t| t.strip_suffix("```"))
        .map(str::trim)
        .unwrap_or(trimmed);
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    let validator =
        jsonschema::validator_for(schema).map_err(|e| format!("the schema is invalid: {e}"))?;
    let errors: Vec<String> = validator
        .iter_errors(&value)
        .take(8)
        .map(|e| format!("{} at `{}`", e, e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(value)
    } else {
        Err(errors.join("; "))
    }
}

/// The session id a sub-agent named `segment` runs under, derived from
/// its parent's: `<parent>:<segment>` (`<parent>:sub-agent` when the name
/// does not fit a session id). It names the sub-agent's place in the
/// conversation for its tools, the audit log and telemetry; nothing is
/// stored under it (a sub-agent starts with no history and saves none).
fn derived_session(
    parent: &crate::tenancy::ids::SessionId,
    segment: &str,
) -> Option<crate::tenancy::ids::SessionId> {
    format!("{parent}:{segment}")
        .parse()
        .or_else(|_| format!("{parent}:sub-agent").parse())
        .ok()
}

/// An empty JSON object, the configuration of an architecture given none.
fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

/// An agent-ref's configuration text, parsed, when it carries one.
fn ref_config(config: Option<&str>) -> Result<Option<serde_json::Value>, wit::HarnessError> {
    config
        .map(|text| {
            serde_json::from_str::<serde_json::Value>(text)
                .ok()
                .filter(serde_json::Value::is_object)
                .ok_or_else(|| {
                    wit::HarnessError::InvalidRequest(
                        "the agent-ref's config is not a JSON object".into(),
                    )
                })
        })
        .transpose()
}

/// Check an architecture's configuration against the schema it declares
/// (compiled when the component loaded).
fn check_config(
    validator: &jsonschema::Validator,
    config: &serde_json::Value,
) -> Result<(), String> {
    let errors: Vec<String> = validator
        .iter_errors(config)
        .take(8)
        .map(|e| format!("{} at `{}`", e, e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// How the architecture's attempts ended: (output, parsed output, why it
/// was interrupted), or why the run failed.
type Attempt = Result<(String, Option<serde_json::Value>, Option<String>), AgentError>;

/// Run `request` on the agent; `lineage` places it in its tree of
/// sub-agents. Traced: an `invoke_agent` span (inside a `delegate` span for
/// a sub-agent, a child of its parent's run) around [`execute_inner`].
pub(crate) async fn execute(
    agent: Arc<AgentInner>,
    request: RunRequest,
    events: Option<EventSink>,
    lineage: Lineage,
) -> Result<RunResult, AgentError> {
    use crate::telemetry::spans;
    let architecture = request
        .architecture
        .clone()
        .unwrap_or_else(|| agent.architecture.clone());
    // A named agent (`agent:NAME`, `[agents.NAME]`) is traced by its name.
    let name = agent.name.as_deref().unwrap_or(&architecture);
    let delegation =
        (lineage.depth > 0).then(|| spans::delegation(&request.scope, name, lineage.depth));
    let span = match &delegation {
        Some(delegation) => delegation.in_scope(|| spans::run(&request.scope, name, &architecture)),
        None => spans::run(&request.scope, name, &architecture),
    };
    let outcome = tracing::Instrument::instrument(
        execute_inner(agent, request, events, lineage),
        span.clone(),
    )
    .await;
    spans::record_run_outcome(&span, &outcome);
    outcome
}

/// [`execute`] without its span.
async fn execute_inner(
    agent: Arc<AgentInner>,
    request: RunRequest,
    events: Option<EventSink>,
    lineage: Lineage,
) -> Result<RunResult, AgentError> {
    let started_at = SystemTime::now();
    let host = agent.host.clone();
    let scope = Arc::new(request.scope);
    // One lookup serves the limits and the governance settings.
    let (tenant_limits, settings) = host
        .config()
        .tenant(&scope.tenant)
        .map(|t| (t.limits, t.governance.clone()))
        .map_err(|e| AgentError::NotFound(e.to_string()))?;
    let catalog = host.catalog_for(&scope.tenant).await;
    let arch_name = request
        .architecture
        .clone()
        .unwrap_or_else(|| agent.architecture.clone());
    let plugin = catalog
        .architecture(&scope.tenant, &arch_name)
        .cloned()
        .ok_or_else(|| {
            let known = catalog.architecture_names(&scope.tenant);
            AgentError::NotFound(format!(
                "no architecture `{arch_name}` is available to tenant `{}`; available: {}",
                scope.tenant,
                if known.is_empty() {
                    "(none: add an architecture component to a plugin directory)".to_owned()
                } else {
                    known.join(", ")
                }
            ))
        })?;
    let tools: Vec<ToolBinding> = match &agent.tools {
        None => catalog.tools(&scope.tenant).into_iter().cloned().collect(),
        Some(names) => names
            .iter()
            .filter_map(|name| catalog.tool(&scope.tenant, name).cloned())
            .collect(),
    };
    drop(catalog);
    // The tenant's MCP servers' tools (connected on first use), unless a
    // component offers a tool so named.
    let remote_tools: Vec<crate::mcp::RemoteTool> = if host.mcp_clients().has_servers(&scope.tenant)
    {
        host.mcp_clients()
            .tools(&scope.tenant)
            .await
            .into_iter()
            .filter(|remote| !tools.iter().any(|b| b.spec.name == remote.spec.name))
            .filter(|remote| {
                agent
                    .tools
                    .as_ref()
                    .is_none_or(|names| names.contains(&remote.spec.name))
            })
            .collect()
    } else {
        Vec::new()
    };
    if let Some(schema) = &request.output_schema {
        jsonschema::validator_for(schema).map_err(|e| AgentError::InvalidSchema(e.to_string()))?;
    }
    let session_key = match (&agent.sessions, &scope.session) {
        (Some(store), Some(session)) => Some((store.clone(), session.clone())),
        _ => None,
    };
    let root = lineage.inherited.is_none();
    // A sub-agent's scope, or a resumed run's, comes with the lineage.
    let resumed = lineage
        .journal
        .as_ref()
        .and_then(|journal| journal.tree())
        .is_some_and(|tree| root && tree.resumed());
    if resumed
        && let Some(tree) = lineage.journal.as_ref().and_then(|j| j.tree())
        && let Some(recorded) = tree.component()
        && recorded != plugin.sha256
    {
        return Err(JournalError::ComponentChanged {
            run: scope.run.to_string(),
            architecture: arch_name,
            recorded: recorded.to_owned(),
            now: plugin.sha256.clone(),
        }
        .into());
    }
    let governor = Arc::new(Governor::new(
        &agent,
        scope.clone(),
        settings,
        events.clone(),
        lineage.inherited.clone(),
    ));
    governor.audit_started(&request.prompt, &arch_name);
    // A resumed run was admitted when it started.
    if root && !resumed {
        let refused = match governor.start_run().await {
            Err(limited) => {
                governor.audit_refused(&limited.to_string());
                return Err(AgentError::RateLimited(limited));
            }
            Ok(refused) => refused,
        };
        if let Some(reason) = refused {
            let result = RunResult {
                output: String::new(),
                parsed: None,
                turns: 0,
                usage: Usage::default(),
                cost_usd: 0.0,
                run_id: scope.run.clone(),
                session_id: scope.session.clone(),
                interrupted: true,
                interruption_reason: Some(reason),
                started_at,
                finished_at: SystemTime::now(),
            };
            governor.audit_completed(&result);
            return Ok(result);
        }
    }
    // Taken before anything of the user is read: if the user is forgotten
    // while the run goes on, its session save, episode and extraction write
    // nothing.
    let forget_guard = host.memory().forget_guard(&scope.tenant, &scope.user);
    let mut history = match &session_key {
        Some((store, session)) => store.load(&scope.tenant, &scope.user, session)?,
        None => Vec::new(),
    };
    let prior_messages = history.len();
    // Anonymous callers share one key per tenant: memory is for named
    // users only, so one anonymous caller never sees another's.
    let memory = agent
        .memory
        .as_ref()
        .filter(|_| !matches!(scope.user, crate::tenancy::ids::UserId::Anonymous));
    // The tenant's memory component, when it has one, holds episodes,
    // notes and facts; memory failing never fails the run.
    let tenant_memory = match memory {
        None => None,
        Some((builtin, _)) => match host.config().tenant(&scope.tenant) {
            Ok(tenant) if tenant.memory.plugin.is_some() => {
                match host.memory_for(&scope.tenant).await {
                    Ok(memory) => Some(memory),
                    Err(error) => {
                        tracing::warn!(%error, "the tenant's memory is unavailable for this run");
                        None
                    }
                }
            }
            _ => Some(crate::memory::TenantMemory::builtin_only(builtin.clone())),
        },
    };
    if let Some(events) = &events {
        events.send(RunEvent::Started {
            run_id: scope.run.to_string(),
            session_id: scope.session.as_ref().map(|s| s.to_string()),
            architecture: arch_name.clone(),
            history_messages: history.len(),
        });
        if let Some(tree) = lineage.journal.as_ref().and_then(|j| j.tree())
            && resumed
        {
            events.send(RunEvent::Resumed {
                run_id: scope.run.to_string(),
                recorded: tree.recorded(),
            });
        }
    }
    // The host's own tools (working blocks, retrieval), unless a component
    // already offers a tool so named.
    let mut host_tools = match memory {
        Some((_, options)) if options.block_tools => super::block_tools::specs(),
        _ => Vec::new(),
    };
    if agent.retrieval {
        host_tools.push(super::retrieve_tool::spec());
    }
    host_tools.retain(|spec| {
        !tools.iter().any(|b| b.spec.name == spec.name)
            && !remote_tools.iter().any(|r| r.spec.name == spec.name)
    });
    let state = Arc::new(RunState {
        agent: agent.clone(),
        scope: scope.clone(),
        tools,
        remote_tools,
        host_tools,
        output_schema: request.output_schema.clone(),
        events: events.clone(),
        usage: Mutex::new(Usage::default()),
        cost: Mutex::new(0.0),
        turns: AtomicU32::new(0),
        notes: AtomicU32::new(0),
        memory: tenant_memory.clone(),
        lineage: lineage.clone(),
        governor: governor.clone(),
        offered: std::sync::OnceLock::new(),
    });
    let Some(component) = plugin.architecture() else {
        return Err(AgentError::NotFound(format!(
            "plugin `{}` is not an architecture",
            plugin.name
        )));
    };
    let limits = Limits {
        wall: agent.run_timeout,
        ..tenant_limits
    };
    let instructions = match (memory, &tenant_memory) {
        (Some((_, options)), Some(tenant_memory)) => {
            let context = tenant_memory
                .prompt_context(
                    &scope.tenant,
                    &scope.user,
                    &request.prompt,
                    options.recall_tokens,
                    scope.session.as_ref().map(|s| s.as_str()),
                )
                .await;
            match context {
                Ok(Some(context)) => format!("{}\n\n{context}", agent.instructions),
                Ok(None) => agent.instructions.clone(),
                Err(error) => {
                    // Memory failing never fails the run.
                    tracing::warn!(%error, "memory could not be recalled into the prompt");
                    agent.instructions.clone()
                }
            }
        }
        _ => agent.instructions.clone(),
    };
    // The architecture's configuration, its team added from the agent's
    // workers, checked against the schema it declares (an empty one is
    // the architecture's own defaults).
    let architecture_config = super::workers::with_team(
        &agent.architecture_config,
        &agent.workers,
        &component.info.config_schema,
        &host.config().agents,
    )
    .map_err(|message| {
        AgentError::Architecture(format!("architecture `{arch_name}`: {message}"))
    })?;
    let config = match architecture_config.as_object() {
        Some(fields) if !fields.is_empty() => {
            check_config(&component.config_validator, &architecture_config).map_err(|message| {
                AgentError::Architecture(format!(
                    "invalid config for architecture `{arch_name}`: {message}"
                ))
            })?;
            architecture_config.to_string()
        }
        _ => "{}".to_owned(),
    };
    // The journal: a sub-agent's scope or a resumed run's comes with the
    // lineage; a top-level run of a journaling agent opens its own.
    let journal: Arc<ScopeJournal> = match lineage.journal.clone() {
        Some(journal) => journal,
        None => match (&agent.journal, root) {
            (Some(settings), true) => {
                let start = RunStart {
                    run: scope.run.as_str(),
                    tenant: scope.tenant.as_str(),
                    user: scope.user.name(),
                    session: scope.session.as_ref().map(|s| s.as_str()),
                    agent: None,
                    architecture: &arch_name,
                    prompt: &request.prompt,
                    output_schema: request.output_schema.as_ref(),
                    metadata: &scope.metadata,
                    component: &plugin.sha256,
                    origin: &request.origin,
                    format: JournalFormat::Compact2,
                };
                let tree = RunJournal::start(&settings.journal, &start, settings.keep_finished)?;
                Arc::new(tree.root())
            }
            _ => Arc::new(ScopeJournal::unjournaled(scope.run.as_str())),
        },
    };
    if root && let Some(tree) = journal.tree() {
        tree.guard_spend(governor.spend_barrier());
    }
    // A top-level run closes its journal however it ends.
    let closer = JournalCloser::new(if root { journal.tree().cloned() } else { None });
    let gate = Arc::new(Gate::new(
        state.clone(),
        &lineage,
        GateLimits {
            max_output_bytes: tenant_limits.max_output_bytes,
            ..GateLimits::default()
        },
        journal.clone(),
    ));
    let mut prompt = request.prompt.clone();
    let mut attempts = 0;
    let mut cpu = std::time::Duration::ZERO;
    // Every way out of the loop passes the accounting below: a failed run
    // still pays for its CPU and wall time and is audited.
    let attempt: Attempt = async {
        loop {
            attempts += 1;
            let input = arch::RunInput {
                instructions: instructions.clone(),
                history: history.iter().map(to_wit_message).collect(),
                prompt: prompt.clone(),
                config: config.clone(),
                max_turns: agent.max_turns,
            };
            // What the invocation starts with is journaled too: a resumed
            // run starts from the same instructions and history, whatever
            // memory and the session hold now.
            let asked = (&input.prompt, &input.config, input.max_turns);
            let input = match journal.step::<arch::RunInput, _>(EntryKind::Input, &asked)? {
                Step::Replayed(recorded) => {
                    history = recorded
                        .history
                        .iter()
                        .cloned()
                        .map(to_model_message)
                        .collect();
                    recorded
                }
                Step::Live(step) => {
                    // Committed with the invocation's first awaited step.
                    journal.record_queued(&step, &input);
                    input
                }
            };
            let ran = host
                .run_architecture(
                    component,
                    plugin.name.clone(),
                    scope.clone(),
                    &limits,
                    gate.clone() as Arc<dyn Harness>,
                    input,
                )
                .await;
            cpu += ran.cpu;
            // A journal that failed or diverged ends the run with its error.
            if let Some(error) = journal.tree().and_then(|tree| tree.failure()) {
                return Err(error.into());
            }
            let output = match ran.outcome? {
                Ok(output) => output,
                Err(arch::RunError::InvalidConfig(m)) => {
                    return Err(AgentError::Architecture(format!("invalid config: {m}")));
                }
                Err(arch::RunError::Harness(m)) | Err(arch::RunError::Failed(m)) => {
                    // A budget or rate limit stopped the run: the architecture
                    // giving up on it is the expected end, an interruption.
                    if governor.stopped().is_some() {
                        break Ok((String::new(), None, None));
                    }
                    return Err(AgentError::Architecture(m));
                }
            };
            gate.check_output(&output)
                .map_err(|refusal| AgentError::Architecture(refusal.to_string()))?;
            history.extend(output.new_messages.into_iter().map(to_model_message));
            let Some(schema) = &request.output_schema else {
                break Ok((output.output, None, output.interrupted));
            };
            if output.interrupted.is_some() || governor.stopped().is_some() {
                break Ok((output.output, None, output.interrupted));
            }
            match validate(schema, &output.output) {
                Ok(value) => break Ok((output.output, Some(value), None)),
                Err(errors) if attempts > agent.output_retries => {
                    return Err(OutputValidationError {
                        raw: output.output,
                        errors,
                        attempts,
                    }
                    .into());
                }
                Err(errors) => {
                    tracing::debug!(%errors, attempt = attempts, "answer failed the output schema; retrying with feedback");
                    prompt = format!(
                        "Your previous answer does not match the required JSON Schema: {errors}. \
                         Reply again with only a JSON value matching the schema."
                    );
                }
            }
        }
    }
    .await;
    governor.finish(cpu, root.then(|| started_at.elapsed().unwrap_or_default()));
    let (output, parsed, interrupted) = match attempt {
        Ok(outcome) => outcome,
        // A stopped run that then failed (the architecture trapped on the
        // budget error, say) ends interrupted like any stopped run.
        Err(_) if governor.stopped().is_some() => (String::new(), None, None),
        Err(error) => {
            governor.audit_failed(&error.to_string());
            // A run that diverged from its journal stays resumable: with
            // the component and request it ran with, it resumes.
            if !matches!(error, AgentError::Journal(JournalError::Diverged { .. })) {
                closer.close().await;
            }
            return Err(error);
        }
    };
    // A stopped run is interrupted, whatever the architecture made of it.
    let interrupted = governor.stopped().or(interrupted);
    // Shared with the session cache from here on, not copied.
    let history = std::sync::Arc::new(history);
    if let Some((store, session)) = &session_key {
        let guard = forget_guard.clone();
        let saved = store
            .save_shared(
                &scope.tenant,
                &scope.user,
                session,
                history.clone(),
                move || !guard.holds(),
            )
            .await;
        if let Err(error) = saved {
            closer.close().await;
            return Err(error.into());
        }
    }
    let (usage, cost_usd) = state.totals();
    if let Some((_, options)) = memory
        && let Some(memory) = &tenant_memory
        && options.episodes
        && interrupted.is_none()
    {
        // This run's tool calls and results only, not the session's.
        let transcript = options.transcripts.then(|| {
            history
                .get(prior_messages..)
                .unwrap_or_default()
                .iter()
                .filter(|m| !m.tool_calls.is_empty() || m.tool_call_id.is_some())
                .cloned()
                .collect::<Vec<_>>()
        });
        let episode = crate::memory::NewEpisode {
            session: scope.session.as_ref().map(|s| s.to_string()),
            run: Some(scope.run.to_string()),
            input: request.prompt.clone(),
            output: output.clone(),
            transcript,
        };
        match memory
            .remember_guarded(
                &scope.tenant,
                &scope.user,
                crate::memory::EpisodeKind::Run,
                episode,
                forget_guard.clone(),
            )
            .await
        {
            Ok(Some(episode)) if options.extract => {
                super::extraction::start(
                    &agent,
                    memory,
                    &scope,
                    episode,
                    forget_guard.generation(),
                );
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "the run's episode could not be stored"),
        }
    }
    let result = RunResult {
        output,
        parsed,
        turns: state.turns.load(Ordering::Relaxed),
        usage,
        cost_usd,
        run_id: scope.run.clone(),
        session_id: scope.session.clone(),
        interrupted: interrupted.is_some(),
        interruption_reason: interrupted,
        started_at,
        finished_at: SystemTime::now(),
    };
    governor.audit_completed(&result);
    closer.close().await;
    Ok(result)
}

/// The request and lineage that resume the run `request` names: its
/// journal loaded for replay.
pub(crate) async fn prepare_resume(
    agent: &AgentInner,
    request: &super::ResumeRequest,
) -> Result<(RunRequest, Lineage), AgentError> {
    let Some(settings) = &agent.journal else {
        return Err(JournalError::NotFound(
            "this agent does not journal its runs (AgentBuilder::journal), so it cannot resume one"
                .into(),
        )
        .into());
    };
    let record = request.find(&settings.journal)?;
    let corrupt = |what: &str| {
        JournalError::NotFound(format!(
            "the journal record of run {} names an invalid {what}",
            record.run
        ))
    };
    let mut scope = Scope::new(request.tenant.clone(), request.user.clone());
    scope.run = record.run.parse().map_err(|_| corrupt("run id"))?;
    scope.session = record
        .session
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|_| corrupt("session"))?;
    scope.metadata = record.metadata.clone();
    let mut run = RunRequest::new(scope, record.prompt.clone())
        .architecture(record.architecture.clone())
        .origin(record.origin.clone());
    run.output_schema = record.output_schema.clone();
    let tree = RunJournal::resume(&settings.journal, record, settings.keep_finished).await?;
    let lineage = Lineage {
        journal: Some(Arc::new(tree.root())),
        ..Lineage::root()
    };
    Ok((run, lineage))
}

/// Notes one run may store through the harness's `remember`.
const MAX_NOTES_PER_RUN: u32 = 100;

/// A run in progress, as a stream of [`RunEvent`]s ending with `Completed`
/// or `Error`. Dropping it cancels the run and its in-flight tool calls.
pub struct RunStream {
    events: mpsc::UnboundedReceiver<RunEvent>,
    task: Option<AbortOnDrop<()>>,
}

impl RunStream {
    pub(crate) fn start(agent: Arc<AgentInner>, request: RunRequest) -> Self {
        Self::spawn(agent, async move { Ok((request, Lineage::root())) })
    }

    /// The stream of a resumed run.
    pub(crate) fn resume(agent: Arc<AgentInner>, request: super::ResumeRequest) -> Self {
        let prepared = agent.clone();
        Self::spawn(
            agent,
            async move { prepare_resume(&prepared, &request).await },
        )
    }

    fn spawn(
        agent: Arc<AgentInner>,
        prepare: impl std::future::Future<Output = Result<(RunRequest, Lineage), AgentError>>
        + Send
        + 'static,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            let sink = EventSink::root(tx.clone());
            let ran = match prepare.await {
                Ok((request, lineage)) => execute(agent, request, Some(sink), lineage).await,
                Err(error) => Err(error),
            };
            let end = match ran {
                Ok(result) => RunEvent::Completed {
                    result: Box::new(result),
                },
                Err(error) => RunEvent::Error {
                    message: error.to_string(),
                },
            };
            let _ = tx.send(end);
        });
        RunStream {
            events: rx,
            task: Some(AbortOnDrop(task)),
        }
    }

    /// The next event, or `None` after the last one.
    pub async fn next(&mut self) -> Option<RunEvent> {
        let event = self.events.recv().await;
        if event.is_none() {
            self.task = None;
        }
        event
    }
}

impl futures_util::Stream for RunStream {
    type Item = RunEvent;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<RunEvent>> {
        self.events.poll_recv(cx)
    }
}
