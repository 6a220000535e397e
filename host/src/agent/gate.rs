//! The import gate: the one door through which an architecture component
//! reaches the host during a run.
//!
//! Every `harness` import — model calls, tool calls, delegation, events,
//! memory, and the clocks and randomness the architecture's WASI imports read
//! — arrives at [`Gate`], which checks what the guest asks for against the
//! run's caps, then hands the work to the run ([`super::run::RunState`]).
//! The architecture's answer leaves through [`Gate::check_output`]. Behind
//! the gate, the run's governor (`governor.rs`) checks budgets, rate limits
//! and the permission chain and writes the audit log for every model call,
//! tool call and delegation.

use super::events::RunEvent;
use super::journal::{JournalError, LiveStep, ScopeJournal, Step, TurnJournal};
use super::run::{Lineage, RunState};
use crate::engine::bindings::architecture_export as arch;
use crate::engine::bindings::harness as wit;
use crate::engine::bindings::types as wt;
use crate::engine::boundary::{check_json, check_json_bounds, escape_text};
use crate::engine::{Harness, HarnessStop};
use crate::store::journal::EntryKind;
use futures_util::future::BoxFuture;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// What one run may ask of the host. The defaults are generous for real
/// loops and small against a flood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateLimits {
    /// Messages in one model request.
    pub max_request_messages: usize,
    /// Bytes of message text, tool specs and schema in one model request.
    pub max_request_bytes: usize,
    /// Tool calls in one `call-tools`.
    pub max_calls_per_turn: usize,
    /// Bytes of one tool call's arguments.
    pub max_argument_bytes: usize,
    /// Sub-agents one top-level run may start, its sub-agents' included.
    pub max_delegations: u32,
    /// Sub-agents one `delegate-all` may run at once.
    pub max_fan_out: usize,
    /// Events one top-level run may emit, its sub-agents' included.
    pub max_events: u32,
    /// Bytes of one event's data.
    pub max_event_bytes: usize,
    /// Bytes of the final output.
    pub max_output_bytes: usize,
    /// Messages an architecture may add to the session in one run.
    pub max_new_messages: usize,
    /// Bytes of those messages together.
    pub max_new_message_bytes: usize,
    /// Bytes of one memory text or recall query.
    pub max_memory_bytes: usize,
}

impl Default for GateLimits {
    fn default() -> Self {
        GateLimits {
            max_request_messages: 4096,
            max_request_bytes: 8 << 20,
            max_calls_per_turn: 64,
            max_argument_bytes: 1 << 20,
            max_delegations: 32,
            max_fan_out: 16,
            max_events: 10_000,
            max_event_bytes: 64 << 10,
            max_output_bytes: 1 << 20,
            max_new_messages: 4096,
            max_new_message_bytes: 8 << 20,
            max_memory_bytes: 64 << 10,
        }
    }
}

/// Why an architecture's answer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutputRefusal {
    /// The output is larger than allowed.
    #[error(
        "the architecture's output is {size} bytes; at most {max} are accepted \
         (the tenant's limits.max_output_bytes)"
    )]
    OutputTooLarge {
        /// Its size.
        size: usize,
        /// The cap.
        max: usize,
    },
    /// It added too many messages, or too many bytes of them, to the session.
    #[error(
        "the architecture returned {count} new messages of {bytes} bytes; at most {max_count} \
         messages and {max_bytes} bytes are accepted per run"
    )]
    TooManyMessages {
        /// Messages returned.
        count: usize,
        /// Their bytes.
        bytes: usize,
        /// The message cap.
        max_count: usize,
        /// The byte cap.
        max_bytes: usize,
    },
}

/// The gate of one run.
pub(crate) struct Gate {
    run: Arc<RunState>,
    limits: GateLimits,
    /// Events emitted by the run's whole tree.
    events: Arc<AtomicU32>,
    /// Sub-agents started by the run's whole tree.
    delegations: Arc<AtomicU32>,
    monotonic: MonotonicClock,
    random: std::sync::Mutex<Box<dyn wasmtime_wasi::Rng + Send>>,
    /// This invocation's journal: every result above is recorded (or, in a
    /// resumed run, replayed) through it.
    journal: Arc<ScopeJournal>,
}

impl Gate {
    /// A gate in front of `run`.
    pub(crate) fn new(
        run: Arc<RunState>,
        lineage: &Lineage,
        limits: GateLimits,
        journal: Arc<ScopeJournal>,
    ) -> Self {
        Gate {
            run,
            limits,
            events: lineage.events.clone(),
            delegations: lineage.delegations.clone(),
            monotonic: MonotonicClock::new(),
            random: std::sync::Mutex::new(wasmtime_wasi::thread_rng()),
            journal,
        }
    }

    /// Check the architecture's answer before the host uses it.
    ///
    /// # Errors
    ///
    /// [`OutputRefusal`] naming the cap it breaks.
    pub(crate) fn check_output(&self, output: &arch::RunOutput) -> Result<(), OutputRefusal> {
        let size = output.output.len() + output.interrupted.as_ref().map_or(0, String::len);
        if size > self.limits.max_output_bytes {
            return Err(OutputRefusal::OutputTooLarge {
                size,
                max: self.limits.max_output_bytes,
            });
        }
        let bytes: usize = output.new_messages.iter().map(message_bytes).sum();
        if output.new_messages.len() > self.limits.max_new_messages
            || bytes > self.limits.max_new_message_bytes
        {
            return Err(OutputRefusal::TooManyMessages {
                count: output.new_messages.len(),
                bytes,
                max_count: self.limits.max_new_messages,
                max_bytes: self.limits.max_new_message_bytes,
            });
        }
        Ok(())
    }

    fn check_request(&self, request: &wit::CompletionRequest) -> Result<(), String> {
        if request.messages.len() > self.limits.max_request_messages {
            return Err(format!(
                "the request has {} messages; at most {} are accepted",
                request.messages.len(),
                self.limits.max_request_messages
            ));
        }
        let bytes: usize = request.messages.iter().map(message_bytes).sum::<usize>()
            + request
                .tools
                .iter()
                .map(|t| t.name.len() + t.description.len() + t.parameters.len())
                .sum::<usize>()
            + request.output_schema.as_ref().map_or(0, String::len);
        if bytes > self.limits.max_request_bytes {
            return Err(format!(
                "the request is {bytes} bytes; at most {} are accepted",
                self.limits.max_request_bytes
            ));
        }
        // A tool offered back as the run rendered it was checked then.
        for spec in request
            .tools
            .iter()
            .filter(|spec| self.run.offered_unchanged(spec).is_none())
        {
            check_json(&spec.parameters, self.limits.max_request_bytes)
                .map_err(|r| format!("tool `{}` parameters were refused: {r}", spec.name))?;
        }
        if let Some(schema) = &request.output_schema {
            check_json(schema, self.limits.max_request_bytes)
                .map_err(|r| format!("the output schema was refused: {r}"))?;
        }
        for message in &request.messages {
            for call in &message.tool_calls {
                check_json_bounds(&call.arguments, self.limits.max_argument_bytes).map_err(
                    |r| format!("the arguments of tool call `{}` were refused: {r}", call.id),
                )?;
            }
        }
        Ok(())
    }

    /// Count a sub-agent against the tree's limit and check its request's
    /// size; `Err` refuses it.
    fn admit_delegation(
        &self,
        agent: &wit::AgentRef,
        input: &str,
    ) -> Result<(), wit::HarnessError> {
        let started = self.delegations.fetch_add(1, Ordering::Relaxed);
        if started >= self.limits.max_delegations {
            return Err(wit::HarnessError::InvalidRequest(format!(
                "a run and its sub-agents may start at most {} sub-agents",
                self.limits.max_delegations
            )));
        }
        let size = input.len()
            + agent.instructions.len()
            + agent.architecture.len()
            + agent.tools.iter().map(String::len).sum::<usize>()
            + agent.config.as_ref().map_or(0, String::len);
        if size > self.limits.max_request_bytes || agent.tools.len() > 1024 {
            return Err(wit::HarnessError::InvalidRequest(format!(
                "the sub-agent request is {size} bytes with {} tools; at most {} bytes and \
                 1024 tools are accepted",
                agent.tools.len(),
                self.limits.max_request_bytes
            )));
        }
        if let Some(config) = &agent.config {
            check_json(config, self.limits.max_request_bytes).map_err(|r| {
                wit::HarnessError::InvalidRequest(format!(
                    "the sub-agent's config was refused: {r}"
                ))
            })?;
        }
        Ok(())
    }
}

fn message_bytes(message: &wt::Message) -> usize {
    message.content.len()
        + message.name.as_ref().map_or(0, String::len)
        + message.tool_call_id.as_ref().map_or(0, String::len)
        + message
            .tool_calls
            .iter()
            .map(|c| c.id.len() + c.name.len() + c.arguments.len())
            .sum::<usize>()
}

impl Gate {
    /// Take the journal's next step for `kind`, or refuse the guest with
    /// the journal's failure (the run then ends with it).
    fn step<T: serde::de::DeserializeOwned, R: serde::Serialize + ?Sized>(
        &self,
        kind: EntryKind,
        request: &R,
    ) -> Result<Step<T>, wit::HarnessError> {
        self.journal
            .step(kind, request)
            .map_err(|error| wit::HarnessError::InvalidRequest(error.to_string()))
    }

    /// A step of a synchronous import, which cannot refuse the guest: on a
    /// journal failure it answers live and the run stops at the next step.
    fn sync_step<T: serde::de::DeserializeOwned>(
        &self,
        kind: EntryKind,
        request: &[u8],
    ) -> Option<Step<T>> {
        self.journal.step_bytes(kind, request).ok()
    }

    /// Record a live step's result; on failure the guest gets the journal's
    /// error instead (and the run ends with it).
    async fn record<T: serde::Serialize>(
        &self,
        step: &LiveStep,
        value: &T,
    ) -> Result<(), wit::HarnessError> {
        self.journal
            .record(step, value)
            .await
            .map_err(|error| wit::HarnessError::InvalidRequest(error.to_string()))
    }
}

impl Harness for Gate {
    fn complete(
        &self,
        request: wit::CompletionRequest,
    ) -> BoxFuture<'_, Result<wit::Completion, wit::HarnessError>> {
        Box::pin(async move {
            self.check_request(&request)
                .map_err(wit::HarnessError::InvalidRequest)?;
            let step = match self.step(EntryKind::Completion, &request)? {
                Step::Replayed(recorded) => {
                    let recorded: Result<wit::Completion, wit::HarnessError> = recorded;
                    if let Ok(completion) = &recorded {
                        self.run.replayed_completion(completion);
                    }
                    return recorded;
                }
                Step::Live(step) => step,
            };
            let completion = self.run.complete(request).await.and_then(|completion| {
                // What the model produced goes to the guest: the same caps apply.
                for call in &completion.message.tool_calls {
                    check_json_bounds(&call.arguments, self.limits.max_argument_bytes).map_err(
                        |r| {
                            wit::HarnessError::ModelFailed(format!(
                                "the model's arguments for tool call `{}` were refused: {r}",
                                escape_text(&call.id, 64)
                            ))
                        },
                    )?;
                }
                Ok(completion)
            });
            self.record(&step, &completion).await?;
            completion
        })
    }

    fn call_tools(&self, calls: Vec<wt::ToolCall>) -> BoxFuture<'_, Vec<wt::ToolResult>> {
        Box::pin(async move {
            let step = match self.step::<Vec<wt::ToolResult>, _>(EntryKind::ToolResults, &calls) {
                Ok(Step::Replayed(results)) => return results,
                Ok(Step::Live(step)) => step,
                Err(error) => return refuse_all(calls, &error),
            };
            // Refused calls get their result here; the rest run together,
            // and every result goes back in call order.
            let mut results: Vec<Option<wt::ToolResult>> = Vec::with_capacity(calls.len());
            let mut admitted = Vec::new();
            for (index, call) in calls.into_iter().enumerate() {
                let refusal = if index >= self.limits.max_calls_per_turn {
                    Some(wt::ToolError::Denied(format!(
                        "at most {} tool calls run per turn",
                        self.limits.max_calls_per_turn
                    )))
                } else {
                    check_json_bounds(&call.arguments, self.limits.max_argument_bytes)
                        .err()
                        .map(|r| {
                            wt::ToolError::InvalidArguments(format!(
                                "the arguments were refused: {r}"
                            ))
                        })
                };
                match refusal {
                    Some(error) => results.push(Some(wt::ToolResult {
                        call_id: call.id,
                        name: call.name,
                        outcome: Err(error),
                    })),
                    None => {
                        results.push(None);
                        admitted.push(call);
                    }
                }
            }
            let mut ran = self
                .run
                .call_tools(admitted, TurnJournal::new(&self.journal, &step))
                .await
                .into_iter();
            let results: Vec<wt::ToolResult> = results
                .into_iter()
                .filter_map(|slot| slot.or_else(|| ran.next()))
                .collect();
            if let Err(error) = self.record(&step, &results).await {
                return refuse_all_results(results, &error);
            }
            results
        })
    }

    fn tools(&self) -> Vec<wt::ToolSpec> {
        match self.sync_step::<Vec<wt::ToolSpec>>(EntryKind::Tools, b"") {
            Some(Step::Replayed(tools)) => tools,
            Some(Step::Live(step)) => {
                let tools = self.run.tools();
                self.journal.record_queued(&step, &tools);
                tools
            }
            None => self.run.tools(),
        }
    }

    fn delegate(
        &self,
        agent: wit::AgentRef,
        input: String,
    ) -> BoxFuture<'_, Result<wit::RunOutput, wit::HarnessError>> {
        Box::pin(async move {
            self.admit_delegation(&agent, &input)?;
            let step = match self.step(EntryKind::Delegation, &(&agent, &input))? {
                Step::Replayed(recorded) => {
                    let recorded: Result<wit::RunOutput, wit::HarnessError> = recorded;
                    if let Ok(output) = &recorded {
                        self.run.replayed_delegation(output);
                    }
                    return recorded;
                }
                Step::Live(step) => step,
            };
            let child = self.journal.child(step.seq(), 0);
            let output = self.run.delegate(agent, input, child).await;
            self.record(&step, &output).await?;
            output
        })
    }

    fn delegate_all(
        &self,
        tasks: Vec<wit::Delegation>,
    ) -> BoxFuture<'_, Vec<Result<wit::RunOutput, wit::HarnessError>>> {
        Box::pin(async move {
            let step = match self.step::<Vec<Result<wit::RunOutput, wit::HarnessError>>, _>(
                EntryKind::Delegation,
                &tasks,
            ) {
                Ok(Step::Replayed(outputs)) => {
                    for output in outputs.iter().flatten() {
                        self.run.replayed_delegation(output);
                    }
                    return outputs;
                }
                Ok(Step::Live(step)) => step,
                Err(error) => return tasks.iter().map(|_| Err(error.clone())).collect(),
            };
            // Refused tasks get their error in place; the admitted ones run
            // together in this run's task, so cancelling the run drops them.
            let runs = tasks.into_iter().enumerate().map(|(index, task)| {
                let admitted = if index >= self.limits.max_fan_out {
                    Err(wit::HarnessError::InvalidRequest(format!(
                        "at most {} sub-agents run at once in one delegate-all",
                        self.limits.max_fan_out
                    )))
                } else {
                    self.admit_delegation(&task.agent, &task.input)
                };
                let child = self.journal.child(step.seq(), index);
                async move {
                    admitted?;
                    self.run.delegate(task.agent, task.input, child).await
                }
            });
            let outputs = futures_util::future::join_all(runs).await;
            if let Err(error) = self.record(&step, &outputs).await {
                return outputs.iter().map(|_| Err(error.clone())).collect();
            }
            outputs
        })
    }

    fn emit(&self, event: wit::Event) -> Result<(), HarnessStop> {
        let emitted = self.events.fetch_add(1, Ordering::Relaxed);
        if emitted >= self.limits.max_events {
            return Err(HarnessStop(format!(
                "it emitted more than {} events in one run (its sub-agents' included)",
                self.limits.max_events
            )));
        }
        if event.kind.is_empty() || event.kind.len() > 64 {
            return Err(HarnessStop(format!(
                "it emitted an event whose kind `{}` is not 1-64 bytes",
                escape_text(&event.kind, 80)
            )));
        }
        if let Err(refusal) = check_json(&event.data, self.limits.max_event_bytes) {
            return Err(HarnessStop(format!(
                "it emitted a `{}` event whose data was refused: {refusal}",
                escape_text(&event.kind, 64)
            )));
        }
        self.run.send(RunEvent::Custom {
            kind: escape_text(&event.kind, 64),
            data: event.data,
        });
        Ok(())
    }

    fn recall(&self, query: String, limit: u32) -> BoxFuture<'_, Vec<wit::Recollection>> {
        Box::pin(async move {
            if query.len() > self.limits.max_memory_bytes {
                return Vec::new();
            }
            let step = match self.step(EntryKind::Recall, &(&query, limit)) {
                Ok(Step::Replayed(recorded)) => return recorded,
                Ok(Step::Live(step)) => step,
                Err(_) => return Vec::new(),
            };
            let recollections = self.run.recall(query, limit.min(100)).await;
            if self.record(&step, &recollections).await.is_err() {
                return Vec::new();
            }
            recollections
        })
    }

    fn remember(&self, text: String) -> BoxFuture<'_, Result<(), wit::HarnessError>> {
        Box::pin(async move {
            if text.len() > self.limits.max_memory_bytes {
                return Err(wit::HarnessError::InvalidRequest(format!(
                    "a memory may be at most {} bytes",
                    self.limits.max_memory_bytes
                )));
            }
            let step = match self.step(EntryKind::Remember, &text)? {
                Step::Replayed(recorded) => return recorded,
                Step::Live(step) => step,
            };
            let stored = self.run.remember(text).await;
            self.record(&step, &stored).await?;
            stored
        })
    }

    fn wall_clock(&self) -> std::time::Duration {
        let live = || {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
        };
        match self.sync_step::<std::time::Duration>(EntryKind::WallClock, b"") {
            Some(Step::Replayed(recorded)) => recorded,
            Some(Step::Live(step)) => {
                let now = live();
                self.journal.record_queued(&step, &now);
                now
            }
            None => live(),
        }
    }

    fn monotonic_clock(&self) -> u64 {
        match self.sync_step::<u64>(EntryKind::MonotonicClock, b"") {
            Some(Step::Replayed(recorded)) => {
                self.monotonic.replayed(recorded);
                recorded
            }
            Some(Step::Live(step)) => {
                let now = self.monotonic.now();
                self.journal.record_queued(&step, &now);
                now
            }
            None => self.monotonic.now(),
        }
    }

    fn random_bytes(&self, bytes: &mut [u8]) {
        let request = (bytes.len() as u64).to_le_bytes();
        match self.sync_step::<Vec<u8>>(EntryKind::Random, &request) {
            Some(Step::Replayed(recorded)) if recorded.len() == bytes.len() => {
                bytes.copy_from_slice(&recorded);
            }
            Some(Step::Replayed(_)) => {
                self.journal.fail(JournalError::Corrupt {
                    scope: "random".into(),
                    seq: 0,
                    message: "recorded random bytes of another length".into(),
                });
                self.fill_random(bytes);
            }
            Some(Step::Live(step)) => {
                self.fill_random(bytes);
                self.journal.record_queued(&step, &bytes.to_vec());
            }
            None => self.fill_random(bytes),
        }
    }
}

impl Gate {
    fn fill_random(&self, bytes: &mut [u8]) {
        let mut rng = crate::sync::lock(&self.random);
        rng.fill_bytes(bytes);
    }
}

/// Every call of a turn refused with `error` (the journal failed).
fn refuse_all(calls: Vec<wt::ToolCall>, error: &wit::HarnessError) -> Vec<wt::ToolResult> {
    calls
        .into_iter()
        .map(|call| wt::ToolResult {
            call_id: call.id,
            name: call.name,
            outcome: Err(wt::ToolError::Denied(harness_error_text(error))),
        })
        .collect()
}

/// A turn's results replaced by `error` (they could not be journaled).
fn refuse_all_results(
    results: Vec<wt::ToolResult>,
    error: &wit::HarnessError,
) -> Vec<wt::ToolResult> {
    results
        .into_iter()
        .map(|result| wt::ToolResult {
            outcome: Err(wt::ToolError::Failed(harness_error_text(error))),
            ..result
        })
        .collect()
}

fn harness_error_text(error: &wit::HarnessError) -> String {
    match error {
        wit::HarnessError::InvalidRequest(m)
        | wit::HarnessError::ModelFailed(m)
        | wit::HarnessError::UnknownAgent(m)
        | wit::HarnessError::BudgetExceeded(m) => m.clone(),
        wit::HarnessError::Cancelled => "the run was cancelled".into(),
    }
}

/// The monotonic clock an architecture reads: nanoseconds since its run
/// started, never going backwards, and continuing from the last recorded
/// reading when a resumed run goes live.
struct MonotonicClock {
    origin: std::sync::Mutex<(Instant, u64)>,
    last: AtomicU64,
}

impl MonotonicClock {
    fn new() -> Self {
        MonotonicClock {
            origin: std::sync::Mutex::new((Instant::now(), 0)),
            last: AtomicU64::new(0),
        }
    }

    /// A recorded reading replayed: live readings continue from it.
    fn replayed(&self, value: u64) {
        *crate::sync::lock(&self.origin) = (Instant::now(), value);
        self.last.fetch_max(value, Ordering::Relaxed);
    }

    fn now(&self) -> u64 {
        let (instant, base) = *crate::sync::lock(&self.origin);
        let elapsed = u64::try_from(instant.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let now = base.saturating_add(elapsed);
        self.last.fetch_max(now, Ordering::Relaxed).max(now)
    }
}
