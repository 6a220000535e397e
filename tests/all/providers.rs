//! Model providers against loopback servers that speak their real wire
//! formats: HTTP/1.1 with chunked transfer encoding, server-sent events cut
//! at arbitrary byte boundaries, 429 with `Retry-After`, 5xx, 401, and a
//! stream that breaks after its first chunk.

use loom_host::agent::{Agent, RunRequest};
use loom_host::model::anthropic::{AnthropicConfig, AnthropicModel};
use loom_host::model::http::Connection;
use loom_host::model::openai::{OpenAiConfig, OpenAiModel};
use loom_host::model::pricing::{Price, PriceTable};
use loom_host::model::retry::{RetryPolicy, RetryingModel};
use loom_host::model::spec::{ModelSettings, from_spec};
use loom_host::model::{
    FinishReason, Message, Model, ModelChunk, ModelError, ModelRequest, ToolCall, ToolDefinition,
};
use loom_tests::{TestEnv, components, scope};
use serde_json::{Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One canned HTTP response.
#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    /// Body pieces, each written and flushed as its own HTTP chunk.
    pieces: Vec<Vec<u8>>,
    /// Close the connection after this many pieces, without the final
    /// chunk: a stream broken mid-way.
    break_after: Option<usize>,
}

impl Reply {
    /// A `text/event-stream` body cut every `cut` bytes.
    fn sse(body: &str, cut: usize) -> Reply {
        Reply {
            status: 200,
            headers: vec![("content-type", "text/event-stream".into())],
            pieces: body.as_bytes().chunks(cut).map(<[u8]>::to_vec).collect(),
            break_after: None,
        }
    }

    /// A `text/event-stream` body sent one event per HTTP chunk.
    fn events(body: &str) -> Reply {
        Reply {
            pieces: body
                .split_inclusive("\n\n")
                .map(|event| event.as_bytes().to_vec())
                .collect(),
            ..Reply::sse("", 1)
        }
    }

    /// A JSON error.
    fn error(status: u16, body: Value) -> Reply {
        Reply {
            status,
            headers: vec![("content-type", "application/json".into())],
            pieces: vec![body.to_string().into_bytes()],
            break_after: None,
        }
    }

    fn header(mut self, name: &'static str, value: &str) -> Reply {
        self.headers.push((name, value.into()));
        self
    }
}

/// A request as the server received it.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: Vec<(String, String)>,
    body: Value,
    at: Instant,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A loopback HTTP/1.1 server playing `replies` in order, one per request.
struct WireServer {
    base: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl WireServer {
    async fn start(replies: Vec<Reply>) -> WireServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let queue = Arc::new(Mutex::new(VecDeque::from(replies)));
        let log = received.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let log = log.clone();
                let queue = queue.clone();
                tokio::spawn(async move { serve(socket, log, queue).await });
            }
        });
        WireServer { base, received }
    }

    fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

async fn serve(
    mut socket: TcpStream,
    log: Arc<Mutex<Vec<Received>>>,
    queue: Arc<Mutex<VecDeque<Reply>>>,
) {
    loop {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            match socket.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let head = String::from_utf8_lossy(&head).to_string();
        let mut lines = head.split("\r\n");
        let path = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .unwrap_or("")
            .to_owned();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_lowercase(), v.trim().to_owned()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        if socket.read_exact(&mut body).await.is_err() {
            return;
        }
        log.lock().unwrap().push(Received {
            path,
            headers,
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            at: Instant::now(),
        });
        let Some(reply) = queue.lock().unwrap().pop_front() else {
            let _ = socket
                .write_all(b"HTTP/1.1 599 No More Replies\r\ncontent-length: 0\r\n\r\n")
                .await;
            return;
        };
        let mut out = format!(
            "HTTP/1.1 {} Reply\r\ntransfer-encoding: chunked\r\n",
            reply.status
        );
        for (name, value) in &reply.headers {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str("\r\n");
        if socket.write_all(out.as_bytes()).await.is_err() {
            return;
        }
        for (n, piece) in reply.pieces.iter().enumerate() {
            if reply.break_after == Some(n) {
                // Drop the connection mid-body.
                let _ = socket.shutdown().await;
                return;
            }
            let mut chunk = format!("{:x}\r\n", piece.len()).into_bytes();
            chunk.extend_from_slice(piece);
            chunk.extend_from_slice(b"\r\n");
            if socket.write_all(&chunk).await.is_err() || socket.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if reply.break_after.is_some() {
            let _ = socket.shutdown().await;
            return;
        }
        if socket.write_all(b"0\r\n\r\n").await.is_err() {
            return;
        }
    }
}

/// A request with one user message.
fn ask(prompt: &str) -> ModelRequest {
    ModelRequest {
        messages: vec![Message::user(prompt)],
        ..ModelRequest::default()
    }
}

/// Fast retries, no jitter, so tests measure the policy and not luck.
fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(20),
        jitter: 0.0,
        ..RetryPolicy::default()
    }
}

fn openai(server: &WireServer, policy: RetryPolicy) -> Arc<dyn Model> {
    let model = OpenAiModel::new(OpenAiConfig {
        connection: Connection {
            api_key: Some("sk-test".into()),
            timeout: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(5),
            extra_headers: vec![("x-team".into(), "loom".into())],
            ..Connection::new("openai:gpt-test", "gpt-test", format!("{}/v1", server.base))
        },
        native_structured_output: true,
        max_tokens_field: "max_completion_tokens".into(),
    })
    .unwrap();
    Arc::new(RetryingModel::new(Arc::new(model), policy))
}

fn anthropic(server: &WireServer, policy: RetryPolicy) -> Arc<dyn Model> {
    let model = AnthropicModel::new(AnthropicConfig {
        connection: Connection {
            api_key: Some("ak-test".into()),
            ..Connection::new("anthropic:claude-test", "claude-test", server.base.clone())
        },
        ..AnthropicConfig::default()
    })
    .unwrap();
    Arc::new(RetryingModel::new(Arc::new(model), policy))
}

/// `data:` lines of an OpenAI stream, ending in `[DONE]`.
fn openai_stream(chunks: &[Value]) -> String {
    let mut body: String = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
    body.push_str("data: [DONE]\n\n");
    body
}

fn openai_delta(delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-test",
        "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
    })
}

fn openai_usage(prompt: u64, completion: u64, cached: u64) -> Value {
    json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "choices": [],
        "usage": {
            "prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": { "cached_tokens": cached },
        },
    })
}

fn openai_text_reply(text: &str) -> Reply {
    let body = openai_stream(&[
        openai_delta(json!({"role": "assistant", "content": ""}), None),
        openai_delta(json!({"content": text}), None),
        openai_delta(json!({}), Some("stop")),
        openai_usage(12, 3, 0),
    ]);
    Reply::sse(&body, 64)
}

/// Named events of an Anthropic stream.
fn anthropic_stream(events: &[Value]) -> String {
    events
        .iter()
        .map(|e| format!("event: {}\ndata: {e}\n\n", e["type"].as_str().unwrap_or("")))
        .collect()
}

fn anthropic_text_reply(text: &str) -> Reply {
    Reply::sse(
        &anthropic_stream(&[
            json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": [], "usage": {"input_tokens": 9, "output_tokens": 1}}}),
            json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
            json!({"type": "content_block_stop", "index": 0}),
            json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 4}}),
            json!({"type": "message_stop"}),
        ]),
        50,
    )
}

fn calculator_tool() -> ToolDefinition {
    ToolDefinition {
        name: "calculate".into(),
        description: "Evaluate arithmetic".into(),
        parameters: json!({"type": "object", "properties": {"expression": {"type": "string"}}}),
    }
}

/// A conversation that has been through one tool round.
fn history() -> Vec<Message> {
    vec![
        Message::system("Be brief."),
        Message::user("what is 6*7 and 2+2?"),
        Message {
            tool_calls: vec![
                ToolCall {
                    id: "call_a".into(),
                    name: "calculate".into(),
                    arguments: r#"{"expression":"6*7"}"#.into(),
                },
                ToolCall {
                    id: "call_b".into(),
                    name: "calculate".into(),
                    arguments: r#"{"expression":"2+2"}"#.into(),
                },
            ],
            ..Message::assistant("")
        },
        Message::tool_result("call_a", "calculate", "42.0"),
        Message::tool_result("call_b", "calculate", "ERROR: boom"),
    ]
}

type Collected = Arc<Mutex<Vec<ModelChunk>>>;

async fn complete_streaming(
    model: &Arc<dyn Model>,
    request: &ModelRequest,
) -> (
    Result<loom_host::model::ModelResponse, ModelError>,
    Collected,
) {
    let chunks: Collected = Arc::default();
    let sink_chunks = chunks.clone();
    let sink = move |chunk: ModelChunk| sink_chunks.lock().unwrap().push(chunk);
    let result = model.complete(request, Some(&sink)).await;
    (result, chunks)
}

fn streamed_text(chunks: &Collected) -> String {
    chunks
        .lock()
        .unwrap()
        .iter()
        .filter_map(|c| match c {
            ModelChunk::Text { delta } => Some(delta.as_str()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn openai_streams_text_and_usage_across_split_chunks() {
    let body = openai_stream(&[
        openai_delta(json!({"role": "assistant", "content": ""}), None),
        openai_delta(json!({"content": "Héllo, "}), None),
        openai_delta(json!({"content": "wörld"}), None),
        openai_delta(json!({}), Some("stop")),
        openai_usage(120, 7, 100),
    ]);
    // Cut every 5 bytes: lines, JSON and UTF-8 characters all split.
    let server = WireServer::start(vec![Reply::sse(&body, 5)]).await;
    let model = openai(&server, RetryPolicy::disabled());
    let request = ModelRequest {
        messages: vec![Message::system("Be brief."), Message::user("hi")],
        temperature: Some(0.2),
        max_output_tokens: Some(50),
        ..ModelRequest::default()
    };
    let (result, chunks) = complete_streaming(&model, &request).await;
    let response = result.unwrap();
    assert_eq!(response.message.content, "Héllo, wörld");
    assert_eq!(response.finish_reason, FinishReason::Stop);
    assert_eq!(response.usage.input_tokens, 120);
    assert_eq!(response.usage.output_tokens, 7);
    assert_eq!(response.usage.cached_tokens, 100);
    assert_eq!(streamed_text(&chunks), "Héllo, wörld");
    assert!(chunks.lock().unwrap().len() >= 2, "text arrived in pieces");

    let sent = &server.requests()[0];
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(sent.header("authorization"), Some("Bearer sk-test"));
    assert_eq!(sent.header("x-team"), Some("loom"));
    assert_eq!(sent.body["model"], "gpt-test");
    assert_eq!(sent.body["stream"], true);
    assert_eq!(sent.body["stream_options"]["include_usage"], true);
    assert_eq!(sent.body["max_completion_tokens"], 50);
    assert_eq!(
        sent.body["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );
    assert!(sent.body.get("tools").is_none());
}

#[tokio::test]
async fn openai_assembles_parallel_tool_calls_split_across_chunks() {
    let call = |index: u64, id: Option<&str>, name: Option<&str>, args: &str| {
        let mut function = json!({"arguments": args});
        if let Some(name) = name {
            function["name"] = json!(name);
        }
        let mut piece = json!({"index": index, "function": function});
        if let Some(id) = id {
            piece["id"] = json!(id);
            piece["type"] = json!("function");
        }
        openai_delta(json!({"tool_calls": [piece]}), None)
    };
    let body = openai_stream(&[
        openai_delta(json!({"role": "assistant", "content": null}), None),
        call(0, Some("call_x"), Some("calculate"), ""),
        call(0, None, None, "{\"expre"),
        call(1, Some("call_y"), Some("calculate"), "{\"expression\""),
        call(0, None, None, "ssion\":\"6*7\"}"),
        call(1, None, None, ":\"2+2\"}"),
        openai_delta(json!({}), Some("tool_calls")),
        openai_usage(50, 20, 0),
    ]);
    let server = WireServer::start(vec![Reply::sse(&body, 17)]).await;
    let model = openai(&server, RetryPolicy::disabled());
    let request = ModelRequest {
        messages: history(),
        tools: vec![calculator_tool()],
        ..ModelRequest::default()
    };
    let (result, chunks) = complete_streaming(&model, &request).await;
    let response = result.unwrap();
    assert_eq!(response.finish_reason, FinishReason::ToolCalls);
    let calls = &response.message.tool_calls;
    assert_eq!(calls.len(), 2);
    assert_eq!(
        (calls[0].id.as_str(), calls[0].arguments.as_str()),
        ("call_x", r#"{"expression":"6*7"}"#)
    );
    assert_eq!(
        (calls[1].id.as_str(), calls[1].arguments.as_str()),
        ("call_y", r#"{"expression":"2+2"}"#)
    );
    let streamed: Vec<u32> = chunks
        .lock()
        .unwrap()
        .iter()
        .filter_map(|c| match c {
            ModelChunk::ToolCall { index, .. } => Some(*index),
            _ => None,
        })
        .collect();
    assert_eq!(streamed, [0, 0, 1, 0, 1]);

    // The history went out in Chat Completions shape.
    let sent = &server.requests()[0].body;
    assert_eq!(sent["tools"][0]["type"], "function");
    assert_eq!(sent["tools"][0]["function"]["name"], "calculate");
    let messages = sent["messages"].as_array().unwrap();
    assert_eq!(messages[2]["role"], "assistant");
    assert_eq!(messages[2]["content"], Value::Null);
    assert_eq!(messages[2]["tool_calls"][1]["id"], "call_b");
    assert_eq!(
        messages[2]["tool_calls"][1]["function"]["arguments"],
        r#"{"expression":"2+2"}"#
    );
    assert_eq!(
        messages[3],
        json!({"role": "tool", "tool_call_id": "call_a", "content": "42.0"})
    );
    assert_eq!(messages[4]["tool_call_id"], "call_b");
}

#[tokio::test]
async fn tool_calls_that_all_claim_index_zero_stay_separate() {
    // Ollama sends every parallel call with index 0 (or none): a new id
    // starts a new call.
    let piece = |index: Option<u64>, id: &str, name: &str, args: &str| {
        let mut piece =
            json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}});
        if let Some(index) = index {
            piece["index"] = json!(index);
        }
        openai_delta(json!({"tool_calls": [piece]}), None)
    };
    let body = openai_stream(&[
        piece(Some(0), "call_1", "read_file", r#"{"path":"a"}"#),
        piece(Some(0), "call_2", "read_file", r#"{"path":"b"}"#),
        piece(None, "call_3", "calculate", r#"{"expression":"1"}"#),
        openai_delta(json!({}), Some("tool_calls")),
    ]);
    let server = WireServer::start(vec![Reply::sse(&body, 50)]).await;
    let model = openai(&server, RetryPolicy::disabled());
    let response = model.complete(&ask("go"), None).await.unwrap();
    let calls: Vec<(&str, &str, &str)> = response
        .message
        .tool_calls
        .iter()
        .map(|c| (c.id.as_str(), c.name.as_str(), c.arguments.as_str()))
        .collect();
    assert_eq!(
        calls,
        [
            ("call_1", "read_file", r#"{"path":"a"}"#),
            ("call_2", "read_file", r#"{"path":"b"}"#),
            ("call_3", "calculate", r#"{"expression":"1"}"#),
        ]
    );
}

#[tokio::test]
async fn openai_wraps_non_object_schemas_and_unwraps_the_answer() {
    let server = WireServer::start(vec![openai_text_reply(r#"{"value":[1,2,3]}"#)]).await;
    let model = openai(&server, RetryPolicy::disabled());
    let schema = json!({"type": "array", "items": {"type": "integer"}});
    let response = model
        .complete(
            &ModelRequest {
                output_schema: Some(schema.clone()),
                ..ask("three numbers")
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(response.message.content, "[1,2,3]");
    let sent = &server.requests()[0].body;
    let wire_schema = &sent["response_format"]["json_schema"]["schema"];
    assert_eq!(
        wire_schema["type"], "object",
        "OpenAI only takes object schemas"
    );
    assert_eq!(wire_schema["properties"]["value"], schema);
}

#[tokio::test]
async fn anthropic_request_obeys_the_messages_rules() {
    let server = WireServer::start(vec![anthropic_text_reply("ok")]).await;
    let model = anthropic(&server, RetryPolicy::disabled());
    let mut messages = history();
    // A blank assistant text (stored from an earlier turn) and a user
    // prompt right after the tool results.
    messages[2].content = "\n ".into();
    messages.push(Message::user("and now?"));
    model
        .complete(
            &ModelRequest {
                messages,
                ..ModelRequest::default()
            },
            None,
        )
        .await
        .unwrap();
    let sent = &server.requests()[0].body;
    let turns = sent["messages"].as_array().unwrap();
    let assistant = turns[1]["content"].as_array().unwrap();
    assert!(
        assistant.iter().all(|b| b["type"] != "text"),
        "blank text blocks are refused by the API: {assistant:?}"
    );
    let last = turns[2]["content"].as_array().unwrap();
    let kinds: Vec<&str> = last.iter().map(|b| b["type"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["tool_result", "tool_result", "text"],
        "tool results open the turn"
    );
}

#[tokio::test]
async fn a_truncated_tool_call_is_reported_as_length() {
    let body = anthropic_stream(&[
        json!({"type": "message_start", "message": {"usage": {"input_tokens": 5, "output_tokens": 1}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "calculate", "input": {}}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{\"expre"}}),
        json!({"type": "message_delta", "delta": {"stop_reason": "max_tokens"}, "usage": {"output_tokens": 16}}),
        json!({"type": "message_stop"}),
    ]);
    let server = WireServer::start(vec![Reply::sse(&body, 64)]).await;
    let model = anthropic(&server, RetryPolicy::disabled());
    let response = model
        .complete(
            &ModelRequest {
                tools: vec![calculator_tool()],
                ..ask("go")
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(response.finish_reason, FinishReason::Length);
}

#[tokio::test]
async fn openai_sends_json_schema_for_structured_output() {
    let server = WireServer::start(vec![openai_text_reply(r#"{"answer":42}"#)]).await;
    let model = openai(&server, RetryPolicy::disabled());
    assert!(model.native_structured_output());
    let schema = json!({"type": "object", "properties": {"answer": {"type": "integer"}}});
    let request = ModelRequest {
        output_schema: Some(schema.clone()),
        ..ask("answer")
    };
    let response = model.complete(&request, None).await.unwrap();
    assert_eq!(response.message.content, r#"{"answer":42}"#);
    let sent = &server.requests()[0].body;
    assert_eq!(sent["response_format"]["type"], "json_schema");
    assert_eq!(sent["response_format"]["json_schema"]["schema"], schema);
}

#[tokio::test]
async fn rate_limit_waits_at_least_retry_after_then_succeeds() {
    let server = WireServer::start(vec![
        Reply::error(
            429,
            json!({"error": {"message": "Rate limit reached", "type": "requests", "code": "rate_limit_exceeded"}}),
        )
        .header("retry-after", "1"),
        openai_text_reply("after the wait"),
    ])
    .await;
    let model = openai(&server, fast_retries());
    let response = model.complete(&ask("hi"), None).await.unwrap();
    assert_eq!(response.message.content, "after the wait");
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    let waited = requests[1].at - requests[0].at;
    assert!(
        waited >= Duration::from_millis(990),
        "Retry-After: 1 is a floor over the 20 ms backoff, waited {waited:?}"
    );
}

#[tokio::test]
async fn server_error_is_retried_then_succeeds() {
    let server = WireServer::start(vec![
        Reply::error(
            500,
            json!({"error": {"message": "The server had an error", "type": "server_error"}}),
        ),
        Reply::error(
            503,
            json!({"error": {"message": "Unavailable", "type": "server_error"}}),
        ),
        openai_text_reply("third time"),
    ])
    .await;
    let model = openai(&server, fast_retries());
    let response = model.complete(&ask("hi"), None).await.unwrap();
    assert_eq!(response.message.content, "third time");
    assert_eq!(server.requests().len(), 3);
}

#[tokio::test]
async fn retries_give_up_after_max_attempts() {
    let failure = Reply::error(502, json!({"error": {"message": "bad gateway"}}));
    let server = WireServer::start(vec![
        failure.clone(),
        failure.clone(),
        failure.clone(),
        failure,
    ])
    .await;
    let model = openai(&server, fast_retries());
    let error = model.complete(&ask("hi"), None).await.unwrap_err();
    assert!(matches!(error, ModelError::Transient { .. }), "{error:?}");
    assert!(error.to_string().contains("502"), "{error}");
    assert_eq!(server.requests().len(), 3, "max_attempts = 3");
}

#[tokio::test]
async fn authentication_and_bad_requests_are_never_retried() {
    let server = WireServer::start(vec![
        Reply::error(
            401,
            json!({"error": {"message": "Incorrect API key provided", "type": "invalid_request_error", "code": "invalid_api_key"}}),
        ),
        Reply::error(
            400,
            json!({"error": {"message": "Invalid 'messages'", "type": "invalid_request_error"}}),
        ),
        Reply::error(
            400,
            json!({"error": {"message": "flagged", "type": "invalid_request_error", "code": "content_filter"}}),
        ),
    ])
    .await;
    let model = openai(&server, fast_retries());
    let request = ask("hi");
    let first = model.complete(&request, None).await.unwrap_err();
    assert!(
        matches!(first, ModelError::Authentication { .. }),
        "{first:?}"
    );
    assert!(first.to_string().contains("Incorrect API key"), "{first}");
    let second = model.complete(&request, None).await.unwrap_err();
    assert!(
        matches!(second, ModelError::InvalidRequest { .. }),
        "{second:?}"
    );
    let third = model.complete(&request, None).await.unwrap_err();
    assert!(
        matches!(third, ModelError::ContentFilter { .. }),
        "{third:?}"
    );
    assert_eq!(server.requests().len(), 3, "one request each, no retries");
}

/// A server whose stream breaks after its first chunk, then would answer
/// a retry (which must never come).
async fn broken_stream_server() -> WireServer {
    let body = openai_stream(&[
        openai_delta(json!({"content": "partial "}), None),
        openai_delta(json!({"content": "answer"}), None),
        openai_delta(json!({}), Some("stop")),
    ]);
    let mut broken = Reply::events(&body);
    broken.break_after = Some(1);
    WireServer::start(vec![broken, openai_text_reply("must not be fetched")]).await
}

#[tokio::test]
async fn a_stream_broken_after_its_first_chunk_is_not_retried() {
    let server = broken_stream_server().await;
    let model = openai(&server, fast_retries());
    let request = ask("hi");
    let (result, chunks) = complete_streaming(&model, &request).await;
    let error = result.unwrap_err();
    assert!(matches!(error, ModelError::Transient { .. }), "{error:?}");
    assert_eq!(streamed_text(&chunks), "partial ");
    assert_eq!(server.requests().len(), 1, "shown text is never repeated");
}

#[tokio::test]
async fn without_a_listener_a_stream_broken_after_its_first_chunk_is_not_retried_either() {
    let server = broken_stream_server().await;
    let model = openai(&server, fast_retries());
    // `Agent::run` calls the model with no sink: the answer was still
    // streamed (and billed) up to the break, so it must not run again.
    let error = model.complete(&ask("hi"), None).await.unwrap_err();
    assert!(matches!(error, ModelError::Transient { .. }), "{error:?}");
    assert_eq!(server.requests().len(), 1, "no second request");
}

#[tokio::test]
async fn a_stream_broken_before_its_first_chunk_is_retried() {
    let mut broken = openai_text_reply("lost");
    broken.break_after = Some(0);
    let server = WireServer::start(vec![broken, openai_text_reply("recovered")]).await;
    let model = openai(&server, fast_retries());
    let request = ask("hi");
    let (result, chunks) = complete_streaming(&model, &request).await;
    assert_eq!(result.unwrap().message.content, "recovered");
    assert_eq!(streamed_text(&chunks), "recovered");
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn anthropic_streams_text_tool_use_and_cache_usage() {
    let body = anthropic_stream(&[
        json!({"type": "message_start", "message": {"id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": "claude-test",
            "usage": {"input_tokens": 10, "cache_creation_input_tokens": 5, "cache_read_input_tokens": 90, "output_tokens": 1}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        json!({"type": "ping"}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me "}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "compute."}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "calculate", "input": {}}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"expression\": \"6"}}),
        json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "*7\"}"}}),
        json!({"type": "content_block_stop", "index": 1}),
        json!({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_2", "name": "calculate", "input": {}}}),
        json!({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{\"expression\": \"2+2\"}"}}),
        json!({"type": "content_block_stop", "index": 2}),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"output_tokens": 42}}),
        json!({"type": "message_stop"}),
    ]);
    let server = WireServer::start(vec![Reply::sse(&body, 7)]).await;
    let model = anthropic(&server, RetryPolicy::disabled());
    let request = ModelRequest {
        messages: history(),
        tools: vec![calculator_tool()],
        ..ModelRequest::default()
    };
    let (result, chunks) = complete_streaming(&model, &request).await;
    let response = result.unwrap();
    assert_eq!(response.message.content, "Let me compute.");
    assert_eq!(response.finish_reason, FinishReason::ToolCalls);
    let calls = &response.message.tool_calls;
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].id, "toolu_1");
    assert_eq!(calls[0].arguments, r#"{"expression": "6*7"}"#);
    assert_eq!(calls[1].arguments, r#"{"expression": "2+2"}"#);
    assert_eq!(
        response.usage.input_tokens, 105,
        "cache reads and writes are input"
    );
    assert_eq!(response.usage.cached_tokens, 90);
    assert_eq!(response.usage.cache_write_tokens, 5);
    assert_eq!(response.usage.output_tokens, 42);
    assert_eq!(streamed_text(&chunks), "Let me compute.");

    let sent = &server.requests()[0];
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.header("x-api-key"), Some("ak-test"));
    assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(sent.body["system"][0]["text"], "Be brief.");
    // Prompt caching: breakpoints after the tools, the system prompt and
    // the conversation so far.
    let ephemeral = json!({"type": "ephemeral"});
    assert_eq!(sent.body["system"][0]["cache_control"], ephemeral);
    assert_eq!(sent.body["tools"][0]["cache_control"], ephemeral);
    assert_eq!(sent.body["max_tokens"], 4096);
    assert_eq!(sent.body["tools"][0]["input_schema"]["type"], "object");
    let messages = sent.body["messages"].as_array().unwrap();
    assert_eq!(
        messages.len(),
        3,
        "user, assistant, user(tool results): {messages:?}"
    );
    assert_eq!(messages[1]["content"][0]["type"], "tool_use");
    assert_eq!(
        messages[1]["content"][0]["input"],
        json!({"expression": "6*7"})
    );
    assert_eq!(messages[2]["role"], "user");
    assert_eq!(messages[2]["content"][0]["type"], "tool_result");
    assert_eq!(messages[2]["content"][0]["tool_use_id"], "call_a");
    assert_eq!(messages[2]["content"][1]["is_error"], true);
    assert_eq!(messages[2]["content"][1]["cache_control"], ephemeral);
    assert!(messages[1]["content"][0].get("cache_control").is_none());
}

#[tokio::test]
async fn anthropic_structured_output_uses_a_forced_respond_tool() {
    let body = anthropic_stream(&[
        json!({"type": "message_start", "message": {"usage": {"input_tokens": 30, "output_tokens": 1}}}),
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": "toolu_9", "name": "respond", "input": {}}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{\"answer\""}}),
        json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": ": 42}"}}),
        json!({"type": "content_block_stop", "index": 0}),
        json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 12}}),
        json!({"type": "message_stop"}),
    ]);
    let server = WireServer::start(vec![Reply::sse(&body, 33)]).await;
    let model = anthropic(&server, RetryPolicy::disabled());
    assert!(model.native_structured_output());
    let schema = json!({"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]});
    let request = ModelRequest {
        output_schema: Some(schema.clone()),
        ..ask("answer")
    };
    let response = model.complete(&request, None).await.unwrap();
    assert_eq!(response.finish_reason, FinishReason::Stop);
    assert!(response.message.tool_calls.is_empty());
    let answer: Value = serde_json::from_str(&response.message.content).unwrap();
    assert_eq!(answer, json!({"answer": 42}));
    let sent = &server.requests()[0].body;
    assert_eq!(
        sent["tool_choice"],
        json!({"type": "tool", "name": "respond"})
    );
    assert_eq!(sent["tools"][0]["name"], "respond");
    assert_eq!(sent["tools"][0]["input_schema"], schema);
}

#[tokio::test]
async fn anthropic_overload_and_rate_limits_are_retried() {
    let overloaded_in_stream = Reply::sse(
        &anthropic_stream(&[
            json!({"type": "message_start", "message": {"usage": {"input_tokens": 3, "output_tokens": 0}}}),
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
        ]),
        1000,
    );
    let server = WireServer::start(vec![
        Reply::error(529, json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})),
        Reply::error(429, json!({"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}))
            .header("retry-after", "0"),
        overloaded_in_stream,
        anthropic_text_reply("fine now"),
    ])
    .await;
    let model = anthropic(
        &server,
        RetryPolicy {
            max_attempts: 4,
            ..fast_retries()
        },
    );
    let response = model.complete(&ask("hi"), None).await.unwrap();
    assert_eq!(response.message.content, "fine now");
    assert_eq!(response.usage.output_tokens, 4);
    assert_eq!(server.requests().len(), 4);
}

#[tokio::test]
async fn anthropic_bad_key_is_an_authentication_error() {
    let server = WireServer::start(vec![Reply::error(
        401,
        json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}),
    )])
    .await;
    let model = anthropic(&server, fast_retries());
    let error = model.complete(&ask("hi"), None).await.unwrap_err();
    assert!(
        matches!(error, ModelError::Authentication { .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("invalid x-api-key"), "{error}");
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn compat_models_come_from_config_and_use_max_tokens() {
    let server = WireServer::start(vec![openai_text_reply("local model says hi")]).await;
    let settings: ModelSettings = toml::from_str(&format!(
        "[compat.local]\nbase_url = \"{}/v1\"\nmodel = \"llama-3.1-8b\"\nheaders = {{ x-route = \"gpu-1\" }}\n",
        server.base
    ))
    .unwrap();
    let model = from_spec(
        "compat:local",
        &settings,
        &RetryPolicy::disabled(),
        std::path::Path::new("."),
    )
    .unwrap();
    assert_eq!(model.id(), "compat:local");
    assert!(!model.native_structured_output());
    let response = model
        .complete(
            &ModelRequest {
                max_output_tokens: Some(64),
                ..ask("hi")
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!(response.message.content, "local model says hi");
    let sent = &server.requests()[0];
    assert_eq!(sent.body["model"], "llama-3.1-8b");
    assert_eq!(sent.body["max_tokens"], 64);
    assert_eq!(sent.header("x-route"), Some("gpu-1"));
    assert_eq!(
        sent.header("authorization"),
        None,
        "no key configured, none sent"
    );

    let unknown = from_spec(
        "compat:nope",
        &settings,
        &RetryPolicy::disabled(),
        std::path::Path::new("."),
    );
    let message = unknown.err().unwrap().to_string();
    assert!(
        message.contains("[models.compat.nope]") && message.contains("local"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn react_runs_over_the_openai_wire_format() {
    let env = TestEnv::new();
    env.add_plugin(components::ARCH_REACT, "react", None);
    env.add_plugin(components::TOOL_CALCULATOR, "calculator", None);
    let host = Arc::new(env.host("[tenants.acme]\n").await);
    let tool_turn = openai_stream(&[
        openai_delta(
            json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "calculate", "arguments": "{\"expression\":"}}]}),
            None,
        ),
        openai_delta(
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"6*7\"}"}}]}),
            None,
        ),
        openai_delta(json!({}), Some("tool_calls")),
        openai_usage(100, 10, 0),
    ]);
    let server = WireServer::start(vec![
        Reply::sse(&tool_turn, 23),
        openai_text_reply("It is 42."),
    ])
    .await;
    let agent = Agent::builder("You are a calculator.")
        .host(host)
        .model(openai(&server, RetryPolicy::disabled()))
        .prices(PriceTable::new(BTreeMap::from([(
            "openai:gpt-test".to_owned(),
            Price {
                input: 2.0,
                cached_input: None,
                cache_write: None,
                output: 8.0,
            },
        )])))
        .build()
        .unwrap();
    let result = agent
        .run(RunRequest::new(
            scope("acme", Some("alice")),
            "what is 6*7?",
        ))
        .await
        .unwrap();
    assert_eq!(result.output, "It is 42.");
    assert_eq!(result.turns, 2);
    assert_eq!(result.usage.input_tokens, 112);
    assert_eq!(result.usage.output_tokens, 13);
    let expected_cost = (112.0 * 2.0 + 13.0 * 8.0) / 1_000_000.0;
    assert!(
        (result.cost_usd - expected_cost).abs() < 1e-12,
        "cost of every call summed: {} vs {expected_cost}",
        result.cost_usd
    );
    let second = &server.requests()[1].body;
    let messages = second["messages"].as_array().unwrap();
    let tool_message = messages.iter().find(|m| m["role"] == "tool").unwrap();
    assert_eq!(tool_message["tool_call_id"], "call_1");
    assert_eq!(tool_message["content"], "42.0");
    assert_eq!(second["tools"][0]["function"]["name"], "calculate");
}
