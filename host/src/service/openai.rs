//! `POST /v1/chat/completions`: a Loom agent behind the OpenAI chat API.
//! `model` names the agent (`[agents.NAME]`, or `loom`/`default` for
//! `[agent]`); `user` names the end user. The agent runs with its tools,
//! budgets, permissions and audit, as any run of the tenant.
//!
//! The conversation in `messages` becomes the run's input: the last user
//! message, preceded by the earlier turns (and any system messages) as
//! context. Streaming answers `chat.completion.chunk` events carrying the
//! agent's text as it is written, then `data: [DONE]`.

use super::api::{start_run, user_of};
use super::error::{ApiError, Json};
use super::runs::{Read, RunEntry, RunStatus};
use super::{Caller, Service};
use crate::tenancy::ids::Scope;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json as JsonOut};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

/// The request, as the OpenAI SDKs send it. Sampling fields are accepted
/// and left to the agent's configuration.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
pub(super) struct ChatRequest {
    model: String,
    messages: Vec<ChatMessage>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    response_format: Option<Value>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

/// Text, or the array of parts newer clients send.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

impl Content {
    fn text(&self) -> Result<String, ApiError> {
        match self {
            Content::Text(text) => Ok(text.clone()),
            Content::Parts(parts) => {
                let mut out = String::new();
                for part in parts {
                    match (part.kind.as_str(), &part.text) {
                        ("text", Some(text)) => out.push_str(text),
                        (kind, _) => {
                            return Err(ApiError::bad_request(format!(
                                "message content of type `{kind}` is not supported; send text"
                            )));
                        }
                    }
                }
                Ok(out)
            }
        }
    }
}

/// The run's input: the last user message, with what came before as
/// context.
fn input_of(messages: &[ChatMessage]) -> Result<String, ApiError> {
    let last_user = messages
        .iter()
        .rposition(|m| m.role == "user")
        .ok_or_else(|| {
            ApiError::bad_request("`messages` needs at least one message with role `user`")
        })?;
    let text = |m: &ChatMessage| m.content.as_ref().map(Content::text).transpose();
    let question = text(&messages[last_user])?.unwrap_or_default();
    let mut context = String::new();
    for message in &messages[..last_user] {
        let Some(content) = text(message)? else {
            continue;
        };
        let role = match message.role.as_str() {
            "system" | "developer" => "instructions",
            "assistant" => "assistant",
            "user" => "user",
            "tool" => "tool result",
            other => {
                return Err(ApiError::bad_request(format!(
                    "message role `{other}` is not supported (system, developer, user, \
                     assistant, tool)"
                )));
            }
        };
        context.push_str(&format!("[{role}]\n{content}\n\n"));
    }
    if context.is_empty() {
        return Ok(question);
    }
    Ok(format!(
        "The conversation so far:\n\n{context}Reply to this last message of the user:\n{question}"
    ))
}

/// The agent `model` names.
fn agent_of(model: &str) -> Option<String> {
    match model {
        "loom" | "default" | "" => None,
        name => Some(name.to_owned()),
    }
}

/// `POST /v1/chat/completions`.
pub(super) async fn chat_completions(
    State(service): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Json(request): Json<ChatRequest>,
) -> Result<Response, ApiError> {
    let input = input_of(&request.messages)?;
    let user = user_of(request.user.as_deref())?;
    let agent = agent_of(&request.model);
    if let Some(name) = &agent
        && !caller.host().config().agents.contains_key(name)
    {
        let known: Vec<String> = std::iter::once("loom".to_owned())
            .chain(caller.host().config().agents.keys().cloned())
            .collect();
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "model_not_found",
            format!(
                "model `{name}` is not an agent of this Loom: use one of {} (`loom` is [agent])",
                known.join(", ")
            ),
        ));
    }
    let schema = match &request.response_format {
        Some(format) if format.get("type").and_then(Value::as_str) == Some("json_schema") => format
            .get("json_schema")
            .and_then(|s| s.get("schema"))
            .cloned(),
        _ => None,
    };
    service.metrics.tenant(&caller.tenant).chat_completion();
    let slot = if request.stream {
        Some(service.stream_slot(&caller.tenant).ok_or_else(|| {
            ApiError::too_many("too_many_streams", "too many open streams for this tenant")
        })?)
    } else {
        None
    };
    let scope = Scope::new(caller.tenant.clone(), user);
    let entry = start_run(&service, &caller, scope, agent, input, schema)?;
    let id = format!("chatcmpl-{}", entry.id());
    let created = super::runs::now_ms() / 1000;
    if let Some(slot) = slot {
        let include_usage = request
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage);
        return Ok(stream(
            entry,
            id,
            request.model,
            created,
            include_usage,
            slot,
        ));
    }
    entry.wait().await;
    let view = entry.view();
    match view.status {
        RunStatus::Completed | RunStatus::Interrupted => {
            let usage = view.usage.unwrap_or_default();
            Ok(JsonOut(json!({
                "id": id,
                "object": "chat.completion",
                "created": created,
                "model": request.model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": view.output.unwrap_or_default()},
                    "finish_reason": if view.status == RunStatus::Completed { "stop" } else { "length" },
                }],
                "usage": usage_json(&usage),
                "system_fingerprint": null,
            }))
            .into_response())
        }
        _ => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "run_failed",
            format!(
                "the agent's run {} failed: {}",
                view.id,
                view.error.unwrap_or_default()
            ),
        )),
    }
}

fn usage_json(usage: &crate::model::Usage) -> Value {
    json!({
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.input_tokens + usage.output_tokens,
    })
}

/// What a streamed completion still has to say.
struct Streaming {
    run: Arc<RunEntry>,
    next: usize,
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    /// Text streamed since the last tool call: when nothing was, the
    /// answer is sent whole at the end.
    streamed_since_tool: bool,
    done: bool,
    _slot: super::StreamSlot,
}

impl Streaming {
    fn chunk(&self, delta: Value, finish: Option<&str>) -> Bytes {
        let body = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        Bytes::from(format!("data: {body}\n\n"))
    }

    /// The frames for one run event.
    fn frames(&mut self, json: &str) -> Vec<Bytes> {
        let Ok(event) = serde_json::from_str::<Value>(json) else {
            return Vec::new();
        };
        let kind = event.get("type").and_then(Value::as_str).unwrap_or("");
        match kind {
            "model_chunk" if event.get("role").is_none_or(Value::is_null) => {
                let delta = event.get("delta").and_then(Value::as_str).unwrap_or("");
                if delta.is_empty() {
                    return Vec::new();
                }
                self.streamed_since_tool = true;
                vec![self.chunk(json!({"content": delta}), None)]
            }
            "tool_call" => {
                self.streamed_since_tool = false;
                Vec::new()
            }
            "completed" => {
                self.done = true;
                let result = event.get("result").cloned().unwrap_or(Value::Null);
                let mut frames = Vec::new();
                if !self.streamed_since_tool
                    && let Some(output) = result.get("output").and_then(Value::as_str)
                {
                    frames.push(self.chunk(json!({"content": output}), None));
                }
                let interrupted = result
                    .get("interrupted")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                frames
                    .push(self.chunk(json!({}), Some(if interrupted { "length" } else { "stop" })));
                if self.include_usage {
                    let usage: crate::model::Usage = result
                        .get("usage")
                        .cloned()
                        .and_then(|u| serde_json::from_value(u).ok())
                        .unwrap_or_default();
                    let body = json!({
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "choices": [],
                        "usage": usage_json(&usage),
                    });
                    frames.push(Bytes::from(format!("data: {body}\n\n")));
                }
                frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
                frames
            }
            "error" => {
                self.done = true;
                let message = event.get("message").and_then(Value::as_str).unwrap_or("");
                let error = ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "run_failed",
                    format!("the agent's run failed: {message}"),
                );
                vec![
                    Bytes::from(format!("data: {}\n\n", error.body())),
                    Bytes::from_static(b"data: [DONE]\n\n"),
                ]
            }
            _ => Vec::new(),
        }
    }
}

fn stream(
    run: Arc<RunEntry>,
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    slot: super::StreamSlot,
) -> Response {
    let state = Streaming {
        run,
        next: 0,
        id,
        model,
        created,
        include_usage,
        streamed_since_tool: false,
        done: false,
        _slot: slot,
    };
    let first = state.chunk(json!({"role": "assistant", "content": ""}), None);
    let frames = futures_util::stream::unfold(
        (state, vec![first].into_iter()),
        |(mut state, mut queued)| async move {
            loop {
                if let Some(bytes) = queued.next() {
                    return Some((Ok::<_, std::convert::Infallible>(bytes), (state, queued)));
                }
                if state.done {
                    return None;
                }
                let mut watch = state.run.subscribe();
                match state.run.read_from(state.next) {
                    Read::Events(events, upto) => {
                        state.next = upto;
                        let frames: Vec<Bytes> =
                            events.iter().flat_map(|e| state.frames(&e.json)).collect();
                        queued = frames.into_iter();
                    }
                    Read::Done => {
                        // Ended without a final event: cancelled.
                        state.done = true;
                        let error = ApiError::new(
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "run_cancelled",
                            "the agent's run was cancelled",
                        );
                        queued = vec![
                            Bytes::from(format!("data: {}\n\n", error.body())),
                            Bytes::from_static(b"data: [DONE]\n\n"),
                        ]
                        .into_iter();
                    }
                    Read::Pending => {
                        if watch.changed().await.is_err() {
                            return None;
                        }
                    }
                }
            }
        },
    );
    super::sse::sse_response(Body::from_stream(frames))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: Some(Content::Text(content.into())),
        }
    }

    #[test]
    fn one_user_message_is_the_input_and_earlier_turns_are_context() {
        assert_eq!(input_of(&[message("user", "hi")]).expect("input"), "hi");
        let input = input_of(&[
            message("system", "be brief"),
            message("user", "2+2?"),
            message("assistant", "4"),
            message("user", "and times 3?"),
        ])
        .expect("input");
        assert!(input.starts_with("The conversation so far:"), "{input}");
        assert!(input.contains("[instructions]\nbe brief"));
        assert!(input.ends_with("Reply to this last message of the user:\nand times 3?"));
        assert!(input_of(&[message("system", "x")]).is_err());
    }
}
