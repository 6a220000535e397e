//! OpenAI Chat Completions, and any server that speaks it (vLLM, Ollama,
//! llama.cpp server, OpenRouter): tools with parallel calls, SSE streaming
//! with usage, and `response_format: json_schema` for structured output.

use super::http::{self, ClientError, Connection, ErrorBody};
use super::sse::SseEvent;
use super::structured::{object_schema, unwrap_answer};
use super::{
    BoxFuture, ChunkSink, FinishReason, Message, Model, ModelChunk, ModelError, ModelRequest,
    ModelResponse, Role, ToolCall, Usage,
};
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// How to reach an OpenAI-style server.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// Where and as what to connect; the base URL includes the version
    /// path, such as `https://api.openai.com/v1`.
    pub connection: Connection,
    /// Whether the server honours `response_format: json_schema`.
    pub native_structured_output: bool,
    /// The field the output-token cap goes in: `max_completion_tokens`
    /// (OpenAI) or `max_tokens` (most compatible servers).
    pub max_tokens_field: String,
}

/// A Chat Completions model.
pub struct OpenAiModel {
    config: OpenAiConfig,
    endpoint: String,
    client: reqwest::Client,
}

impl OpenAiModel {
    /// A model talking to `config.connection.base_url`.
    ///
    /// # Errors
    ///
    /// [`ClientError`] when the base URL or an extra header is invalid.
    pub fn new(config: OpenAiConfig) -> Result<Self, ClientError> {
        let (endpoint, client) = config.connection.open("/chat/completions")?;
        Ok(OpenAiModel {
            config,
            endpoint,
            client,
        })
    }

    /// The JSON body for `request`.
    pub fn request_body(&self, request: &ModelRequest) -> Value {
        let messages: Vec<Value> = request.messages.iter().map(wire_message).collect();
        let mut body = json!({
            "model": self.config.connection.model,
            "messages": messages,
            "stream": true,
            "stream_options": { "include_usage": true },
        });
        if !request.tools.is_empty() {
            body["tools"] = request
                .tools
                .iter()
                .map(|tool| {
                    json!({
                        "type": "function",
                        "function": {
                            "name": tool.name,
                            "description": tool.description,
                            "parameters": tool.parameters,
                        }
                    })
                })
                .collect();
        }
        if let Some(temperature) = request.temperature {
            body["temperature"] = json!(temperature);
        }
        if let Some(cap) = request.max_output_tokens {
            body[self.config.max_tokens_field.as_str()] = json!(cap);
        }
        if let (Some(schema), true) = (&request.output_schema, self.config.native_structured_output)
        {
            body["response_format"] = json!({
                "type": "json_schema",
                "json_schema": { "name": "output", "schema": object_schema(schema), "strict": false },
            });
        }
        body
    }
}

fn wire_message(message: &Message) -> Value {
    match message.role {
        Role::System => json!({ "role": "system", "content": message.content }),
        Role::User => json!({ "role": "user", "content": message.content }),
        Role::Tool => json!({
            "role": "tool",
            "tool_call_id": message.tool_call_id.clone().unwrap_or_default(),
            "content": message.content,
        }),
        Role::Assistant => {
            let mut wire = json!({
                "role": "assistant",
                "content": if message.content.is_empty() && !message.tool_calls.is_empty() {
                    Value::Null
                } else {
                    Value::String(message.content.clone())
                },
            });
            if !message.tool_calls.is_empty() {
                wire["tool_calls"] = message
                    .tool_calls
                    .iter()
                    .map(|call| {
                        json!({
                            "id": call.id,
                            "type": "function",
                            "function": { "name": call.name, "arguments": call.arguments },
                        })
                    })
                    .collect();
            }
            wire
        }
    }
}

/// A response being assembled from stream chunks.
#[derive(Default)]
struct Assembly {
    text: String,
    refusal: String,
    /// Tool calls in arrival order.
    calls: Vec<ToolCall>,
    /// Which call each server `index` currently feeds.
    slots: BTreeMap<u64, usize>,
    usage: Usage,
    finish: Option<String>,
}

impl Assembly {
    /// Take in one `data:` payload; `true` at `[DONE]`.
    fn chunk(&mut self, data: &str, sink: Option<ChunkSink<'_>>) -> Result<bool, ModelError> {
        let data = data.trim();
        if data == "[DONE]" {
            return Ok(true);
        }
        if data.is_empty() {
            return Ok(false);
        }
        let chunk: Value = serde_json::from_str(data).map_err(|e| ModelError::Transient {
            message: format!("openai: unreadable stream chunk ({e}): {data}"),
        })?;
        if let Some(error) = chunk.get("error") {
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("error in stream")
                .to_owned();
            return Err(ModelError::Transient {
                message: format!("openai: {message}"),
            });
        }
        if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
            let count = |path: &[&str]| {
                path.iter()
                    .try_fold(usage, |v, key| v.get(key))
                    .and_then(Value::as_u64)
                    .unwrap_or(0)
            };
            self.usage = Usage {
                input_tokens: count(&["prompt_tokens"]),
                output_tokens: count(&["completion_tokens"]),
                cached_tokens: count(&["prompt_tokens_details", "cached_tokens"]),
                cache_write_tokens: 0,
            };
        }
        let Some(choice) = chunk
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|choices| choices.first())
        else {
            return Ok(false);
        };
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish = Some(reason.to_owned());
        }
        let Some(delta) = choice.get("delta") else {
            return Ok(false);
        };
        if let Some(text) = delta.get("content").and_then(Value::as_str)
            && !text.is_empty()
        {
            self.text.push_str(text);
            if let Some(sink) = sink {
                sink(ModelChunk::Text {
                    delta: text.to_owned(),
                });
            }
        }
        if let Some(refusal) = delta.get("refusal").and_then(Value::as_str) {
            self.refusal.push_str(refusal);
        }
        for piece in delta
            .get("tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let index = piece.get("index").and_then(Value::as_u64);
            let id = piece
                .get("id")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty());
            let position = self.slot(index, id);
            let call = &mut self.calls[position];
            let function = piece.get("function");
            let name = function
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty());
            // Some proxies send the arguments as an object, not as text.
            let arguments = match function.and_then(|f| f.get("arguments")) {
                Some(Value::String(text)) => text.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            let arguments = arguments.as_str();
            if let Some(id) = id {
                call.id = id.to_owned();
            }
            if let Some(name) = name {
                call.name = name.to_owned();
            }
            call.arguments.push_str(arguments);
            if let Some(sink) = sink {
                sink(ModelChunk::ToolCall {
                    index: position as u32,
                    id: id.map(str::to_owned),
                    name: name.map(str::to_owned),
                    arguments_delta: arguments.to_owned(),
                });
            }
        }
        Ok(false)
    }

    /// The call a tool-call piece belongs to. Pieces are keyed by `index`,
    /// but some servers (Ollama) send every call with index 0 or none: a
    /// piece carrying a new id starts a new call.
    fn slot(&mut self, index: Option<u64>, id: Option<&str>) -> usize {
        let current = match index {
            Some(index) => self.slots.get(&index).copied(),
            None => self.calls.len().checked_sub(1),
        };
        let continues = |slot: usize| match (id, self.calls.get(slot)) {
            (Some(id), Some(call)) => call.id.is_empty() || call.id == id,
            _ => true,
        };
        if let Some(slot) = current.filter(|slot| continues(*slot)) {
            return slot;
        }
        self.calls.push(ToolCall {
            id: String::new(),
            name: String::new(),
            arguments: String::new(),
        });
        let slot = self.calls.len() - 1;
        if let Some(index) = index {
            self.slots.insert(index, slot);
        }
        slot
    }

    fn finish(self, schema: Option<&Value>) -> Result<ModelResponse, ModelError> {
        if !self.refusal.is_empty() {
            return Err(ModelError::ContentFilter {
                message: format!("openai refused: {}", self.refusal),
            });
        }
        let finish_reason = match self.finish.as_deref() {
            Some("content_filter") => {
                return Err(ModelError::ContentFilter {
                    message: "openai stopped the answer with finish_reason content_filter".into(),
                });
            }
            Some("length") => FinishReason::Length,
            Some("tool_calls" | "function_call") => FinishReason::ToolCalls,
            Some(_) if !self.calls.is_empty() => FinishReason::ToolCalls,
            Some(_) => FinishReason::Stop,
            None => {
                return Err(ModelError::Transient {
                    message: "openai: the stream ended before a finish_reason".into(),
                });
            }
        };
        let mut tool_calls = self.calls;
        for (position, call) in tool_calls.iter_mut().enumerate() {
            if call.id.is_empty() {
                call.id = format!("call_{position}");
            }
            if call.arguments.trim().is_empty() {
                call.arguments = "{}".into();
            }
        }
        let text = match schema {
            Some(schema) if tool_calls.is_empty() => unwrap_answer(schema, self.text),
            _ => self.text,
        };
        Ok(ModelResponse {
            message: Message {
                tool_calls,
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
    let filtered = body.code == "content_filter"
        || body.code == "content_policy_violation"
        || body.kind == "content_filter";
    http::status_error("openai", status, headers, &body, filtered)
}

impl Model for OpenAiModel {
    fn id(&self) -> &str {
        &self.config.connection.id
    }

    fn native_structured_output(&self) -> bool {
        self.config.native_structured_output
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
                .json(&self.request_body(request));
            if let Some(key) = &self.config.connection.api_key {
                builder = builder.bearer_auth(key.expose());
            }
            let mut assembly = Assembly::default();
            let mut done = false;
            http::send_streaming("openai", builder, classify, |event: SseEvent| {
                if !done {
                    done = assembly.chunk(&event.data, sink)?;
                }
                Ok(())
            })
            .await?;
            let native_schema = request
                .output_schema
                .as_ref()
                .filter(|_| self.config.native_structured_output);
            assembly.finish(native_schema)
        })
    }
}
