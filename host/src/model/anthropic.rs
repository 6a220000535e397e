//! Anthropic Messages: `tool_use` / `tool_result` blocks, the streaming
//! event protocol (`message_start`, `content_block_*`, `message_delta`,
//! `message_stop`, `error`), usage with prompt-cache tokens, and structured
//! output through a forced `respond` tool.

use super::http::{self, ClientError, Connection, ErrorBody};
use super::sse::SseEvent;
use super::structured::{object_schema, unwrap_answer};
use super::{
    BoxFuture, ChunkSink, FinishReason, Message, Model, ModelChunk, ModelError, ModelRequest,
    ModelResponse, Role, ToolCall, Usage,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// The API version sent in `anthropic-version`.
pub const API_VERSION: &str = "2023-06-01";

/// The tool a structured answer is returned through.
pub const RESPOND_TOOL: &str = "respond";

/// How to reach the Messages API.
#[derive(Debug, Clone)]
pub struct AnthropicConfig {
    /// Where and as what to connect; the base URL is without the version
    /// path, such as `https://api.anthropic.com`. The key goes in `x-api-key`.
    pub connection: Connection,
    /// `max_tokens` when the request sets no cap (the API requires one).
    pub default_max_tokens: u32,
    /// Mark the tools, the system prompt and the conversation so far as
    /// cacheable (`cache_control: ephemeral`), so an agent loop pays the
    /// cache-read price for the prefix it resends every turn. Prompts below
    /// the model's minimum cacheable length are simply not cached.
    pub prompt_caching: bool,
}

impl Default for AnthropicConfig {
    fn default() -> Self {
        AnthropicConfig {
            connection: Connection::new("anthropic", "", "https://api.anthropic.com"),
            default_max_tokens: 4096,
            prompt_caching: true,
        }
    }
}

/// A Messages API model.
pub struct AnthropicModel {
    config: AnthropicConfig,
    endpoint: String,
    client: reqwest::Client,
}

impl AnthropicModel {
    /// A model talking to `config.connection.base_url`.
    ///
    /// # Errors
    ///
    /// [`ClientError`] when the base URL or an extra header is invalid.
    pub fn new(config: AnthropicConfig) -> Result<Self, ClientError> {
        let (endpoint, client) = config.connection.open("/v1/messages")?;
        Ok(AnthropicModel {
            config,
            endpoint,
            client,
        })
    }

    /// The JSON body for `request`.
    pub fn request_body(&self, request: &ModelRequest) -> Value {
        let system: Vec<&str> = request
            .messages
            .iter()
            .filter(|m| m.role == Role::System)
            .map(|m| m.content.as_str())
            .collect();
        let mut body = json!({
            "model": self.config.connection.model,
            "max_tokens": request.max_output_tokens.unwrap_or(self.config.default_max_tokens),
            "messages": wire_messages(&request.messages),
            "stream": true,
        });
        if !system.is_empty() {
            let mut block = json!({ "type": "text", "text": system.join("\n\n") });
            if self.config.prompt_caching {
                block["cache_control"] = json!({ "type": "ephemeral" });
            }
            body["system"] = json!([block]);
        }
        if self.config.prompt_caching
            && let Some(last) = body["messages"]
                .as_array_mut()
                .and_then(|turns| turns.last_mut())
                .and_then(|turn| turn["content"].as_array_mut())
                .and_then(|blocks| blocks.last_mut())
        {
            last["cache_control"] = json!({ "type": "ephemeral" });
        }
        if let Some(temperature) = request.temperature {
            body["temperature"] = json!(temperature);
        }
        let mut tools: Vec<Value> = request
            .tools
            .iter()
            .map(|tool| {
                json!({
                    "name": tool.name,
                    "description": tool.description,
                    "input_schema": tool.parameters,
                })
            })
            .collect();
        if let Some(schema) = &request.output_schema {
            tools.push(json!({
                "name": RESPOND_TOOL,
                "description": "Give the final answer. Call this exactly once, when you are done, with the answer as its input.",
                "input_schema": object_schema(schema),
            }));
            // With other tools the model may still use them; it must end
            // by calling `respond`. Alone, `respond` is forced.
            body["tool_choice"] = if request.tools.is_empty() {
                json!({ "type": "tool", "name": RESPOND_TOOL })
            } else {
                json!({ "type": "any" })
            };
        }
        if self.config.prompt_caching
            && let Some(last) = tools.last_mut()
        {
            last["cache_control"] = json!({ "type": "ephemeral" });
        }
        if !tools.is_empty() {
            body["tools"] = Value::Array(tools);
        }
        body
    }
}

/// Messages in the API's shape: system messages left out (they go in
/// `system`), tool results as `tool_result` blocks in a user turn, and
/// consecutive turns of the same role merged, since roles must alternate.
fn wire_messages(messages: &[Message]) -> Vec<Value> {
    let mut turns: Vec<(&str, Vec<Value>)> = Vec::new();
    for message in messages {
        let (role, blocks) = match message.role {
            Role::System => continue,
            Role::User => ("user", text_block(&message.content)),
            Role::Tool => {
                let is_error =
                    message.content.starts_with("ERROR:") || message.content.starts_with("DENIED:");
                (
                    "user",
                    vec![json!({
                        "type": "tool_result",
                        "tool_use_id": message.tool_call_id.clone().unwrap_or_default(),
                        "content": message.content,
                        "is_error": is_error,
                    })],
                )
            }
            Role::Assistant => {
                let mut blocks = text_block(&message.content);
                for call in &message.tool_calls {
                    let input: Value = serde_json::from_str(&call.arguments)
                        .ok()
                        .filter(Value::is_object)
                        .unwrap_or_else(|| json!({}));
                    blocks.push(json!({
                        "type": "tool_use", "id": call.id, "name": call.name, "input": input,
                    }));
                }
                ("assistant", blocks)
            }
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((last, content)) if *last == role => {
                content.extend(blocks);
                // A user turn must open with its tool results.
                content.sort_by_key(|block| block["type"] != "tool_result");
            }
            _ => turns.push((role, blocks)),
        }
    }
    turns
        .into_iter()
        .map(|(role, content)| json!({ "role": role, "content": content }))
        .collect()
}

/// A text block, or none for blank text (the API refuses text blocks that
/// are empty or only whitespace).
fn text_block(text: &str) -> Vec<Value> {
    if text.trim().is_empty() {
        Vec::new()
    } else {
        vec![json!({ "type": "text", "text": text })]
    }
}

/// A content block being streamed.
enum Block {
    Text,
    Tool {
        /// Position among the response's tool calls.
        position: usize,
    },
    Respond,
    Other,
}

/// A response being assembled from stream events.
#[derive(Default)]
struct Assembly {
    text: String,
    calls: Vec<ToolCall>,
    respond: Option<String>,
    blocks: BTreeMap<u64, Block>,
    usage: Usage,
    stop_reason: Option<String>,
    stopped: bool,
    wants_structure: bool,
}

fn number(value: &Value, key: &str) -> u64 {
    value.get(key).and_then(Value::as_u64).unwrap_or(0)
}

impl Assembly {
    fn event(&mut self, event: &SseEvent, sink: Option<ChunkSink<'_>>) -> Result<(), ModelError> {
        let data: Value = serde_json::from_str(&event.data).map_err(|e| ModelError::Transient {
            message: format!("anthropic: unreadable stream event ({e}): {}", event.data),
        })?;
        let kind = data
            .get("type")
            .and_then(Value::as_str)
            .or(event.event.as_deref())
            .unwrap_or("");
        match kind {
            "message_start" => {
                let usage = data.pointer("/message/usage").cloned().unwrap_or_default();
                let cache_read = number(&usage, "cache_read_input_tokens");
                let cache_write = number(&usage, "cache_creation_input_tokens");
                self.usage = Usage {
                    input_tokens: number(&usage, "input_tokens") + cache_read + cache_write,
                    output_tokens: number(&usage, "output_tokens"),
                    cached_tokens: cache_read,
                    cache_write_tokens: cache_write,
                };
            }
            "content_block_start" => {
                let index = number(&data, "index");
                let block = data.get("content_block").cloned().unwrap_or_default();
                let entry = match block.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        if let Some(text) = block.get("text").and_then(Value::as_str) {
                            self.text(text, sink);
                        }
                        Block::Text
                    }
                    Some("tool_use") => {
                        let id = block.get("id").and_then(Value::as_str).unwrap_or("");
                        let name = block.get("name").and_then(Value::as_str).unwrap_or("");
                        if self.wants_structure && name == RESPOND_TOOL {
                            self.respond = Some(String::new());
                            Block::Respond
                        } else {
                            let position = self.calls.len();
                            self.calls.push(ToolCall {
                                id: id.to_owned(),
                                name: name.to_owned(),
                                arguments: String::new(),
                            });
                            if let Some(sink) = sink {
                                sink(ModelChunk::ToolCall {
                                    index: position as u32,
                                    id: Some(id.to_owned()),
                                    name: Some(name.to_owned()),
                                    arguments_delta: String::new(),
                                });
                            }
                            Block::Tool { position }
                        }
                    }
                    _ => Block::Other,
                };
                self.blocks.insert(index, entry);
            }
            "content_block_delta" => {
                let index = number(&data, "index");
                let delta = data.get("delta").cloned().unwrap_or_default();
                let text = delta.get("text").and_then(Value::as_str);
                let json = delta.get("partial_json").and_then(Value::as_str);
                match (self.blocks.get(&index), text, json) {
                    (Some(Block::Text), Some(text), _) => self.text(text, sink),
                    (Some(Block::Tool { position }), _, Some(json)) => {
                        let position = *position;
                        if let Some(call) = self.calls.get_mut(position) {
                            call.arguments.push_str(json);
                        }
                        if let Some(sink) = sink {
                            sink(ModelChunk::ToolCall {
                                index: position as u32,
                                id: None,
                                name: None,
                                arguments_delta: json.to_owned(),
                            });
                        }
                    }
                    (Some(Block::Respond), _, Some(json)) => {
                        if let Some(respond) = &mut self.respond {
                            respond.push_str(json);
                        }
                        if let Some(sink) = sink {
                            sink(ModelChunk::Text {
                                delta: json.to_owned(),
                            });
                        }
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(reason) = data.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    self.stop_reason = Some(reason.to_owned());
                }
                if let Some(output) = data.pointer("/usage/output_tokens").and_then(Value::as_u64) {
                    self.usage.output_tokens = output;
                }
            }
            "message_stop" => self.stopped = true,
            "error" => {
                let kind = data
                    .pointer("/error/type")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let message = format!(
                    "anthropic: {}",
                    data.pointer("/error/message")
                        .and_then(Value::as_str)
                        .unwrap_or("error in stream")
                );
                return Err(match kind {
                    "rate_limit_error" => ModelError::RateLimited {
                        retry_after: None,
                        message,
                    },
                    "authentication_error" | "permission_error" => {
                        ModelError::Authentication { message }
                    }
                    "invalid_request_error" => ModelError::InvalidRequest { message },
                    _ => ModelError::Transient { message },
                });
            }
            // `ping`, `content_block_stop`, and kinds added later.
            _ => {}
        }
        Ok(())
    }

    fn text(&mut self, text: &str, sink: Option<ChunkSink<'_>>) {
        if text.is_empty() {
            return;
        }
        self.text.push_str(text);
        if let Some(sink) = sink {
            sink(ModelChunk::Text {
                delta: text.to_owned(),
            });
        }
    }

    fn finish(self, schema: Option<&Value>) -> Result<ModelResponse, ModelError> {
        if !self.stopped && self.stop_reason.is_none() {
            return Err(ModelError::Transient {
                message: "anthropic: the stream ended before message_stop".into(),
            });
        }
        let mut finish_reason = match self.stop_reason.as_deref() {
            Some("refusal") => {
                return Err(ModelError::ContentFilter {
                    message: "anthropic refused to answer (stop_reason refusal)".into(),
                });
            }
            Some("max_tokens" | "model_context_window_exceeded") => FinishReason::Length,
            Some("tool_use") => FinishReason::ToolCalls,
            _ => FinishReason::Stop,
        };
        let mut calls = self.calls;
        for call in &mut calls {
            if call.arguments.trim().is_empty() {
                call.arguments = "{}".into();
            }
        }
        let mut text = self.text;
        if let Some(answer) = self.respond
            && calls.is_empty()
        {
            // The structured answer is the `respond` input; a wrapped
            // non-object schema is unwrapped.
            text = match schema {
                Some(schema) => unwrap_answer(schema, answer),
                None => answer,
            };
            if finish_reason != FinishReason::Length {
                finish_reason = FinishReason::Stop;
            }
        }
        // A cut-off answer stays `Length`, even with (possibly truncated)
        // tool calls in it.
        if !calls.is_empty() && finish_reason != FinishReason::Length {
            finish_reason = FinishReason::ToolCalls;
        }
        Ok(ModelResponse {
            message: Message {
                tool_calls: calls,
                ..Message::assistant(text)
            },
            usage: self.usage,
            finish_reason,
        })
    }
}

fn classify(
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &str,
) -> ModelError {
    let body = ErrorBody::parse(body);
    let overloaded = body.kind == "overloaded_error" || status.as_u16() == 529;
    // Overloaded and saying when to come back: a rate limit (below).
    if overloaded && http::retry_after(headers).is_none() {
        return ModelError::Transient {
            message: format!(
                "anthropic is overloaded (HTTP {}): {}",
                status.as_u16(),
                body.message
            ),
        };
    }
    http::status_error("anthropic", status, headers, &body, false)
}

impl Model for AnthropicModel {
    fn id(&self) -> &str {
        &self.config.connection.id
    }

    fn native_structured_output(&self) -> bool {
        true
    }

    fn complete<'a>(
        &'a self,
        request: &'a ModelRequest,
        sink: Option<ChunkSink<'a>>,
    ) -> BoxFuture<'a, Result<ModelResponse, ModelError>> {
        Box::pin(async move {
            let mut builder = self
                .client
                .post(&self.endpoint)
                .header("anthropic-version", API_VERSION)
                .json(&self.request_body(request));
            if let Some(key) = &self.config.connection.api_key {
                builder = builder.header("x-api-key", key.expose());
            }
            let mut assembly = Assembly {
                wants_structure: request.output_schema.is_some(),
                ..Assembly::default()
            };
            http::send_streaming("anthropic", builder, classify, |event| {
                assembly.event(&event, sink)
            })
            .await?;
            assembly.finish(request.output_schema.as_ref())
        })
    }
}
