//! The `harness` import: what an architecture component may ask of the host
//! during an agent run. The engine only routes calls; the agent layer
//! implements [`Harness`] (model calls, permission-gated tool calls, events).
//! Outside a run (for example a tool component importing `harness`) every
//! function answers with a refusal.

use super::bindings::harness::{
    self as wit, AgentRef, Completion, CompletionRequest, Event, HarnessError, Recollection,
    RunOutput,
};
use super::bindings::types::{ToolCall, ToolError, ToolResult, ToolSpec};
use super::state::HostState;
use crate::model::BoxFuture;

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
    /// A progress event.
    fn emit(&self, event: Event);
    /// Memories of the current user.
    fn recall(&self, query: String, limit: u32) -> BoxFuture<'_, Vec<Recollection>>;
    /// Store a memory of the current user.
    fn remember(&self, text: String) -> BoxFuture<'_, Result<(), HarnessError>>;
}

const OUTSIDE_RUN: &str =
    "the harness is only available to architecture components during an agent run";

impl wit::Host for HostState {
    async fn complete(&mut self, request: CompletionRequest) -> Result<Completion, HarnessError> {
        match self.harness.clone() {
            Some(h) => h.complete(request).await,
            None => Err(HarnessError::InvalidRequest(OUTSIDE_RUN.into())),
        }
    }

    async fn call_tools(&mut self, calls: Vec<ToolCall>) -> Vec<ToolResult> {
        match self.harness.clone() {
            Some(h) => h.call_tools(calls).await,
            None => calls
                .into_iter()
                .map(|call| ToolResult {
                    call_id: call.id,
                    name: call.name,
                    outcome: Err(ToolError::Denied(OUTSIDE_RUN.into())),
                })
                .collect(),
        }
    }

    async fn tools(&mut self) -> Vec<ToolSpec> {
        self.harness.as_ref().map(|h| h.tools()).unwrap_or_default()
    }

    async fn delegate(
        &mut self,
        agent: AgentRef,
        input: String,
    ) -> Result<RunOutput, HarnessError> {
        match self.harness.clone() {
            Some(h) => h.delegate(agent, input).await,
            None => Err(HarnessError::InvalidRequest(OUTSIDE_RUN.into())),
        }
    }

    async fn emit(&mut self, event: Event) {
        if let Some(h) = &self.harness {
            h.emit(event);
        }
    }

    async fn recall(&mut self, query: String, limit: u32) -> Vec<Recollection> {
        match self.harness.clone() {
            Some(h) => h.recall(query, limit).await,
            None => Vec::new(),
        }
    }

    async fn remember(&mut self, text: String) -> Result<(), HarnessError> {
        match self.harness.clone() {
            Some(h) => h.remember(text).await,
            None => Err(HarnessError::InvalidRequest(OUTSIDE_RUN.into())),
        }
    }
}
