//! [`Harness`]: what an architecture component may ask of the host during an
//! agent run. The engine only routes the `harness` import to it
//! (`imports.rs`); the agent layer implements it, behind its one import gate.

use super::bindings::harness::{
    AgentRef, Completion, CompletionRequest, Delegation, Event, HarnessError, Recollection,
    RunOutput,
};
use super::bindings::types::{ToolCall, ToolResult, ToolSpec};
use futures_util::future::BoxFuture;

/// The host side of one agent run, as the architecture sees it.
pub trait Harness: Send + Sync {
    /// One model completion.
    fn complete(
        &self,
        request: CompletionRequest,
    ) -> BoxFuture<'_, Result<Completion, HarnessError>>;
    /// Run tool calls in parallel; one result per call, in call order.
    fn call_tools(&self, calls: Vec<ToolCall>) -> BoxFuture<'_, Vec<ToolResult>>;
    /// The tools the run may offer the model.
    fn tools(&self) -> Vec<ToolSpec>;
    /// Run a sub-agent.
    fn delegate(
        &self,
        agent: AgentRef,
        input: String,
    ) -> BoxFuture<'_, Result<RunOutput, HarnessError>>;
    /// Run several sub-agents at once; one result per task, in order.
    fn delegate_all(
        &self,
        tasks: Vec<Delegation>,
    ) -> BoxFuture<'_, Vec<Result<RunOutput, HarnessError>>>;
    /// A progress event. `Err` stops the architecture (it trapped at the
    /// import): it broke a limit of the run, such as the event budget.
    fn emit(&self, event: Event) -> Result<(), HarnessStop>;
    /// Memories of the current user.
    fn recall(&self, query: String, limit: u32) -> BoxFuture<'_, Vec<Recollection>>;
    /// Store a memory of the current user.
    fn remember(&self, text: String) -> BoxFuture<'_, Result<(), HarnessError>>;
    /// The wall-clock time the architecture's `wasi:clocks/wall-clock` reads,
    /// as time since the Unix epoch.
    fn wall_clock(&self) -> std::time::Duration;
    /// The nanoseconds the architecture's `wasi:clocks/monotonic-clock` reads.
    fn monotonic_clock(&self) -> u64;
    /// Fill `bytes` for the architecture's `wasi:random` imports.
    fn random_bytes(&self, bytes: &mut [u8]);
}

/// Why the host stopped an architecture at one of its imports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HarnessStop(pub String);

/// The architecture's wall clock, read through its run's [`Harness`].
pub(crate) struct HarnessWallClock(pub(crate) std::sync::Arc<dyn Harness>);

impl wasmtime_wasi::HostWallClock for HarnessWallClock {
    fn resolution(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(1)
    }

    fn now(&self) -> std::time::Duration {
        self.0.wall_clock()
    }
}

/// The architecture's monotonic clock, read through its run's [`Harness`].
pub(crate) struct HarnessMonotonicClock(pub(crate) std::sync::Arc<dyn Harness>);

impl wasmtime_wasi::HostMonotonicClock for HarnessMonotonicClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        self.0.monotonic_clock()
    }
}
