//! Offline models for demos and tests: `echo` repeats the prompt, and
//! `scripted` plays a script of turns (text, tool calls, usage).
//!
//! These exist so the harness can run without a network; they are not a
//! stand-in for the real providers, which are tested against local servers
//! speaking the providers' wire formats.

use super::{
    BoxFuture, ChunkSink, FinishReason, Message, Model, ModelChunk, ModelError, ModelRequest,
    ModelResponse, Role, ToolCall, Usage,
};
use serde::Deserialize;
use std::path::Path;

/// Replies `Echo: <last user message>`.
#[derive(Debug, Default, Clone)]
pub struct EchoModel;

impl Model for EchoModel {
    fn id(&self) -> &str {
        "echo"
    }

    fn complete<'a>(
        &'a self,
        request: &'a ModelRequest,
        sink: Option<ChunkSink<'a>>,
    ) -> BoxFuture<'a, Result<ModelResponse, ModelError>> {
        Box::pin(async move {
            let prompt = request
                .messages
                .iter()
                .rev()
                .find(|m| m.role == Role::User)
                .map(|m| m.content.as_str())
                .unwrap_or("");
            let text = format!("Echo: {prompt}");
            if let Some(sink) = sink {
                sink(ModelChunk::Text {
                    delta: text.clone(),
                });
            }
            Ok(ModelResponse {
                usage: Usage {
                    input_tokens: estimate_tokens(request),
                    output_tokens: (text.len() as u64).div_ceil(4),
                    cached_tokens: 0,
                    cache_write_tokens: 0,
                },
                message: Message::assistant(text),
                finish_reason: FinishReason::Stop,
            })
        })
    }
}

/// Rough token count of a request (characters / 4), for offline usage numbers.
fn estimate_tokens(request: &ModelRequest) -> u64 {
    let chars: usize = request.messages.iter().map(|m| m.content.len() + 4).sum();
    (chars as u64).div_ceil(4)
}

/// One scripted model reply.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedTurn {
    /// Answer text; `{prompt}` is replaced by the run's prompt and
    /// `{last_tool_result}` by the content of the latest tool message.
    #[serde(default)]
    pub text: String,
    /// Tool calls to request.
    #[serde(default)]
    pub tool_calls: Vec<ScriptedToolCall>,
    /// Usage to report; estimated from the text when absent.
    #[serde(default)]
    pub usage: Option<Usage>,
}

/// A scripted tool call.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedToolCall {
    /// Call id; generated when absent.
    #[serde(default)]
    pub id: Option<String>,
    /// Tool name.
    pub name: String,
    /// Arguments object.
    #[serde(default = "empty_object")]
    pub arguments: serde_json::Value,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScriptFile {
    turns: Vec<ScriptedTurn>,
}

/// Plays a script. Each run starts at the first turn: the turn played is the
/// number of assistant messages since the run's prompt, so many users can
/// share one scripted model concurrently and each sees the whole script.
#[derive(Debug, Clone)]
pub struct ScriptedModel {
    id: String,
    turns: Vec<ScriptedTurn>,
}

/// Why a script could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("model script {path}: {message}")]
pub struct ScriptError {
    /// The file.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl ScriptedModel {
    /// A model playing `turns`.
    pub fn new(turns: Vec<ScriptedTurn>) -> Self {
        ScriptedModel {
            id: "scripted".into(),
            turns,
        }
    }

    /// Load a script from a `.json`, `.yaml` or `.yml` file:
    /// `{ "turns": [ { "text": "...", "tool_calls": [ { "name": "...", "arguments": {...} } ], "usage": {...} } ] }`.
    ///
    /// # Errors
    ///
    /// [`ScriptError`] naming the file and the problem.
    pub fn load(path: &Path) -> Result<Self, ScriptError> {
        let err = |message: String| ScriptError {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let yaml = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml")
        );
        let file: ScriptFile = if yaml {
            serde_norway::from_str(&text).map_err(|e| err(e.to_string()))?
        } else {
            serde_json::from_str(&text).map_err(|e| err(e.to_string()))?
        };
        if file.turns.is_empty() {
            return Err(err("the script has no turns".into()));
        }
        Ok(ScriptedModel {
            id: format!("scripted:{}", path.display()),
            turns: file.turns,
        })
    }
}

impl Model for ScriptedModel {
    fn id(&self) -> &str {
        &self.id
    }

    fn complete<'a>(
        &'a self,
        request: &'a ModelRequest,
        sink: Option<ChunkSink<'a>>,
    ) -> BoxFuture<'a, Result<ModelResponse, ModelError>> {
        Box::pin(async move {
            let last_user = request
                .messages
                .iter()
                .rposition(|m| m.role == Role::User)
                .unwrap_or(0);
            let index = request.messages[last_user..]
                .iter()
                .filter(|m| m.role == Role::Assistant)
                .count();
            let Some(turn) = self.turns.get(index) else {
                return Err(ModelError::InvalidRequest {
                    message: format!(
                        "the script has {} turns and this run asked for turn {}",
                        self.turns.len(),
                        index + 1
                    ),
                });
            };
            let prompt = request
                .messages
                .get(last_user)
                .map(|m| m.content.as_str())
                .unwrap_or("");
            let last_tool = request
                .messages
                .iter()
                .rev()
                .find(|m| m.role == Role::Tool)
                .map(|m| m.content.as_str())
                .unwrap_or("");
            let text = turn
                .text
                .replace("{prompt}", prompt)
                .replace("{last_tool_result}", last_tool);
            let tool_calls: Vec<ToolCall> = turn
                .tool_calls
                .iter()
                .enumerate()
                .map(|(i, call)| ToolCall {
                    id: call
                        .id
                        .clone()
                        .unwrap_or_else(|| format!("call_{}_{i}", index + 1)),
                    name: call.name.clone(),
                    arguments: call.arguments.to_string(),
                })
                .collect();
            if let Some(sink) = sink {
                if !text.is_empty() {
                    sink(ModelChunk::Text {
                        delta: text.clone(),
                    });
                }
                for (i, call) in tool_calls.iter().enumerate() {
                    sink(ModelChunk::ToolCall {
                        index: i as u32,
                        id: Some(call.id.clone()),
                        name: Some(call.name.clone()),
                        arguments_delta: call.arguments.clone(),
                    });
                }
            }
            let usage = turn.usage.unwrap_or(Usage {
                input_tokens: estimate_tokens(request),
                output_tokens: (text.len() as u64).div_ceil(4) + 8 * tool_calls.len() as u64,
                cached_tokens: 0,
                cache_write_tokens: 0,
            });
            let finish_reason = if tool_calls.is_empty() {
                FinishReason::Stop
            } else {
                FinishReason::ToolCalls
            };
            Ok(ModelResponse {
                message: Message {
                    role: Role::Assistant,
                    content: text,
                    name: None,
                    tool_call_id: None,
                    tool_calls,
                },
                usage,
                finish_reason,
            })
        })
    }
}
