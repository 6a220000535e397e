//! ReAct: the model reasons, calls tools, sees their results, and repeats
//! until it answers without calling a tool or runs out of turns.
//!
//! * A new session is seeded with the instructions (system) and the prompt;
//!   a session with history gets the prompt appended, never a second seed.
//! * Every tool call of a turn goes to the host in one `call-tools`, which
//!   runs them in parallel and returns results in the model's call order.
//! * Denials and tool errors become tool messages the model reads
//!   (`DENIED: ...`, `ERROR: ...`); they never end the run.
//! * After `max-turns` model turns without a final answer the run ends
//!   interrupted with reason `max_turns`.

wit_bindgen::generate!({
    world: "architecture-plugin",
    path: "../../../wit/plugin@0.1.1",
});

use exports::loom::plugin::architecture::{ArchitectureInfo, Guest, RunError, RunInput, RunOutput};
use loom::plugin::harness::{self, CompletionRequest, HarnessError};
use loom::plugin::types::{Message, Role, ToolError, ToolResult, Usage};

struct React;

fn message(role: Role, content: String) -> Message {
    Message {
        role,
        content,
        name: None,
        tool_call_id: None,
        tool_calls: Vec::new(),
    }
}

/// The tool message the model reads for one result.
fn observation(result: ToolResult) -> Message {
    let content = match result.outcome {
        Ok(output) => output,
        Err(ToolError::Denied(reason)) => format!("DENIED: {reason}"),
        Err(ToolError::UnknownTool(name)) => format!("ERROR: unknown tool {name}"),
        Err(ToolError::InvalidArguments(reason)) => format!("ERROR: invalid arguments: {reason}"),
        Err(ToolError::Failed(reason)) => format!("ERROR: {reason}"),
    };
    Message {
        role: Role::Tool,
        content,
        name: Some(result.name),
        tool_call_id: Some(result.call_id),
        tool_calls: Vec::new(),
    }
}

fn harness_error(error: HarnessError) -> RunError {
    RunError::Harness(match error {
        HarnessError::BudgetExceeded(m) => format!("budget exceeded: {m}"),
        HarnessError::ModelFailed(m) => format!("model failed: {m}"),
        HarnessError::InvalidRequest(m) => format!("invalid request: {m}"),
        HarnessError::Cancelled => "cancelled".into(),
        HarnessError::UnknownAgent(m) => format!("unknown agent: {m}"),
    })
}

impl Guest for React {
    fn describe() -> ArchitectureInfo {
        ArchitectureInfo {
            name: "react".into(),
            description:
                "Reason and act: call tools (in parallel within a turn) until the model answers"
                    .into(),
            workers: Vec::new(),
            config_schema: r#"{"type":"object","properties":{}}"#.into(),
        }
    }

    fn run(input: RunInput) -> Result<RunOutput, RunError> {
        let mut new_messages = Vec::new();
        if input.history.is_empty() && !input.instructions.is_empty() {
            new_messages.push(message(Role::System, input.instructions.clone()));
        }
        new_messages.push(message(Role::User, input.prompt.clone()));
        let mut conversation = input.history;
        conversation.extend(new_messages.iter().cloned());

        let tools = harness::tools();
        let mut usage = Usage {
            input_tokens: 0,
            output_tokens: 0,
            cached_tokens: 0,
        };
        let mut cost = 0.0;
        let mut turns = 0;
        let mut last_text = String::new();
        while turns < input.max_turns {
            let completion = harness::complete(&CompletionRequest {
                messages: conversation.clone(),
                tools: tools.clone(),
                temperature: None,
                max_output_tokens: None,
                output_schema: None,
                role: None,
            })
            .map_err(harness_error)?;
            turns += 1;
            usage.input_tokens += completion.usage.input_tokens;
            usage.output_tokens += completion.usage.output_tokens;
            usage.cached_tokens += completion.usage.cached_tokens;
            cost += completion.cost_usd;
            let reply = completion.message;
            last_text = reply.content.clone();
            let calls = reply.tool_calls.clone();
            conversation.push(reply.clone());
            new_messages.push(reply);
            if calls.is_empty() {
                return Ok(RunOutput {
                    output: last_text,
                    new_messages,
                    turns,
                    usage,
                    cost_usd: cost,
                    interrupted: None,
                });
            }
            for result in harness::call_tools(&calls) {
                let observed = observation(result);
                conversation.push(observed.clone());
                new_messages.push(observed);
            }
        }
        Ok(RunOutput {
            output: last_text,
            new_messages,
            turns,
            usage,
            cost_usd: cost,
            interrupted: Some("max_turns".into()),
        })
    }
}

export!(React);
