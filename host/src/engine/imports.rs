//! The host side of Loom's own imports: `loom:plugin/context` (run context,
//! logging, and the idempotency key of a run's tool call) and
//! `loom:plugin/harness` (routed to the run's [`Harness`]).
//! Outside a run (for example a tool component importing `harness`) every
//! harness function answers with a refusal.

use super::bindings::harness::{
    self as wit, AgentRef, Completion, CompletionRequest, Delegation, Event, HarnessError,
    Recollection, RunOutput,
};
use super::bindings::types::{ToolCall, ToolError, ToolResult, ToolSpec};
use super::bindings::{context, types};
use super::state::{HostState, LogLevel};

impl types::Host for HostState {}

impl context::Host for HostState {
    async fn current(&mut self) -> types::RunContext {
        let scope = &self.scope;
        types::RunContext {
            tenant: scope.tenant.to_string(),
            user_id: scope.user.name().map(str::to_owned),
            session_id: scope.session.as_ref().map(|s| s.to_string()),
            run_id: Some(scope.run.to_string()),
            metadata: scope.metadata.clone(),
        }
    }

    async fn log(&mut self, level: context::LogLevel, message: String) {
        let level = match level {
            context::LogLevel::Trace => LogLevel::Trace,
            context::LogLevel::Debug => LogLevel::Debug,
            context::LogLevel::Info => LogLevel::Info,
            context::LogLevel::Warn => LogLevel::Warn,
            context::LogLevel::Error => LogLevel::Error,
        };
        self.logs.push(&self.plugin, &self.scope, level, message);
    }

    async fn idempotency_key(&mut self) -> Option<String> {
        self.scope.idempotency_key.clone()
    }
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

    async fn delegate_all(
        &mut self,
        tasks: Vec<Delegation>,
    ) -> Vec<Result<RunOutput, HarnessError>> {
        match self.harness.clone() {
            Some(h) => h.delegate_all(tasks).await,
            None => tasks
                .iter()
                .map(|_| Err(HarnessError::InvalidRequest(OUTSIDE_RUN.into())))
                .collect(),
        }
    }

    async fn emit(&mut self, event: Event) -> wasmtime::Result<()> {
        if let Some(h) = &self.harness {
            h.emit(event)?;
        }
        Ok(())
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
