//! `loom serve` in process over real HTTP on loopback: every endpoint
//! refuses another tenant's key, runs block or stream, approvals are
//! decided over the API, the OpenAI-compatible endpoint answers, and many
//! concurrent streams across tenants never cross.

use loom_host::Host;
use loom_host::service::{Service, server};
use loom_tests::{TestEnv, components};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// A running service and what tests need to reach it.
struct Served {
    base: String,
    service: Arc<Service>,
    keys: Vec<(String, String)>,
    env: TestEnv,
    http: reqwest::Client,
    task: tokio::task::JoinHandle<()>,
}

impl Served {
    fn key(&self, tenant: &str) -> &str {
        &self
            .keys
            .iter()
            .find(|(t, _)| t == tenant)
            .expect("tenant has a key")
            .1
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get(&self, tenant: &str, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(self.url(path))
            .bearer_auth(self.key(tenant))
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// The first call of `tenant` waiting for approval, once there is one.
    async fn first_pending(&self, tenant: &str) -> Value {
        loop {
            let (_, list) = self.get(tenant, "/v1/approvals").await;
            if let Some(first) = list["data"].as_array().and_then(|a| a.first()) {
                return first.clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn send(&self, tenant: &str, method: &str, path: &str, body: Value) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let response = self
            .http
            .request(method, self.url(path))
            .bearer_auth(self.key(tenant))
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

const SCRIPT: &str = r#"{"turns": [
  {"text": "", "tool_calls": [{"name": "calculate", "arguments": {"expression": "6*7"}}]},
  {"text": "The answer is {last_tool_result}."}
]}"#;

const WRITER: &str = r#"{"turns": [
  {"text": "", "tool_calls": [{"name": "write_file", "arguments": {"path": "/out/note.txt", "content": "approved"}}]},
  {"text": "Wrote it: {last_tool_result}"}
]}"#;

/// A service for `tenants` (each with one key), ReAct, the calculator and
/// the files tool; `[agent]` runs SCRIPT, `[agents.writer]` WRITER.
async fn serve(tenants: &[&str], extra: &str) -> Served {
    let env = TestEnv::new();
    env.add_plugin(components::ARCH_REACT, "react", None);
    env.add_plugin(components::TOOL_CALCULATOR, "calculator", None);
    env.add_plugin(
        components::TOOL_FILES,
        "files",
        Some("version = \"0.1.0\"\n[capabilities]\nfiles = [{ path = \"/out\", write = true }]\n"),
    );
    std::fs::write(env.path().join("script.json"), SCRIPT).expect("script");
    std::fs::write(env.path().join("writer.json"), WRITER).expect("script");
    // An answer larger than any socket buffer, for a reader that stalls.
    let big = json!({"turns": [{"text": "x".repeat(6 << 20)}]});
    std::fs::write(env.path().join("big.json"), big.to_string()).expect("script");
    std::fs::write(env.path().join("audit.key"), "k".repeat(32)).expect("key");
    let mut text = String::from(
        "[limits]\nmax_output_bytes = 16777216\nmemory_mib = 128\ncpu_ms = 30000\nwall_ms = 120000\n[audit]\npath = \"audit.jsonl\"\nkey_file = \"audit.key\"\nfsync = \"never\"\n\
         [agent]\ninstructions = \"Answer.\"\nmodel = \"scripted:script.json\"\n\
         architecture = \"react\"\n\
         [agents.writer]\ninstructions = \"Write.\"\nmodel = \"scripted:writer.json\"\n\
         architecture = \"react\"\n\
         [agents.big]\ninstructions = \"Say a lot.\"\nmodel = \"scripted:big.json\"\n\
         architecture = \"react\"\n",
    );
    let mut keys = Vec::new();
    for tenant in tenants {
        let (key, hash) = loom_host::tenancy::keys::new_key().expect("key");
        let dir = env.mkdir(&format!("out-{tenant}"));
        text.push_str(&format!(
            "[tenants.{tenant}]\napi_keys = [\"{hash}\"]\n[tenants.{tenant}.grants]\n\
             files = [{{ host = {:?}, guest = \"/out\", write = true }}]\n",
            dir.display().to_string()
        ));
        keys.push((tenant.to_string(), key));
    }
    text.push_str(extra);
    let config = env.config(&text);
    let settings = config.server.clone();
    let host = Arc::new(Host::start(config).await.expect("host"));
    let service = Service::new(
        host,
        Some(env.path().join("loom.toml")),
        settings,
        Vec::new(),
    );
    let listener = server::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let router = server::router(service.clone(), None);
    let task = tokio::spawn(server::serve(service.clone(), listener, router));
    Served {
        base,
        service,
        keys,
        env,
        http: reqwest::Client::builder()
            .tls_backend_preconfigured(loom_host::tls::client_config_h2())
            .build()
            .expect("client"),
        task,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_run_answers_and_no_endpoint_lets_another_tenant_reach_it() {
    let s = serve(&["acme", "globex"], "").await;
    let (status, run) = s
        .send(
            "acme",
            "POST",
            "/v1/runs",
            json!({"input": "6 times 7?", "user": "alice", "session": "s1"}),
        )
        .await;
    assert_eq!(status, 200, "{run}");
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["output"], "The answer is 42.0.", "{run}");
    let id = run["id"].as_str().expect("id").to_owned();
    assert!(run["usage"]["input_tokens"].as_u64().is_some());

    // acme sees its run; globex sees nothing of it, whichever way it asks.
    assert_eq!(s.get("acme", &format!("/v1/runs/{id}")).await.0, 200);
    for path in [format!("/v1/runs/{id}"), format!("/v1/runs/{id}/events")] {
        let (status, body) = s.get("globex", &path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["error"]["code"], "not_found");
    }
    let (status, _) = s
        .send(
            "globex",
            "POST",
            &format!("/v1/runs/{id}/cancel"),
            json!({}),
        )
        .await;
    assert_eq!(status, 404);
    let (_, listed) = s.get("globex", "/v1/runs").await;
    assert_eq!(listed["data"], json!([]));
    let (_, listed) = s.get("acme", "/v1/runs?user=alice").await;
    assert_eq!(listed["data"][0]["id"], id.as_str());

    // Sessions: acme's user has s1; globex cannot see or delete it.
    let (_, sessions) = s.get("acme", "/v1/sessions?user=alice").await;
    assert_eq!(sessions["data"][0]["id"], "s1", "{sessions}");
    let (_, sessions) = s.get("globex", "/v1/sessions?user=alice").await;
    assert_eq!(sessions["data"], json!([]));
    let (status, _) = s
        .send("globex", "DELETE", "/v1/sessions/s1?user=alice", json!({}))
        .await;
    assert_eq!(status, 404);
    // globex forgetting its own alice leaves acme's alice untouched.
    let (status, report) = s
        .send(
            "globex",
            "POST",
            "/v1/memory/forget",
            json!({"user": "alice"}),
        )
        .await;
    assert_eq!(status, 200, "{report}");
    let (_, sessions) = s.get("acme", "/v1/sessions?user=alice").await;
    assert_eq!(sessions["data"][0]["id"], "s1", "{sessions}");
    let (status, facts) = s.get("globex", "/v1/memory/facts?user=alice").await;
    assert_eq!(status, 200, "{facts}");
    assert_eq!(facts["data"], json!([]));
    // A chat completion runs under the key's tenant: globex's run is not
    // acme's.
    let (status, completion) = s
        .send(
            "globex",
            "POST",
            "/v1/chat/completions",
            json!({"model": "loom", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(status, 200, "{completion}");
    let run_of_globex = completion["id"]
        .as_str()
        .and_then(|id| id.strip_prefix("chatcmpl-"))
        .expect("id")
        .to_owned();
    assert_eq!(
        s.get("globex", &format!("/v1/runs/{run_of_globex}"))
            .await
            .0,
        200
    );
    assert_eq!(
        s.get("acme", &format!("/v1/runs/{run_of_globex}")).await.0,
        404
    );
    let (status, _) = s
        .send("acme", "DELETE", "/v1/sessions/s1?user=alice", json!({}))
        .await;
    assert_eq!(status, 200);
    let (_, sessions) = s.get("acme", "/v1/sessions?user=alice").await;
    assert_eq!(sessions["data"], json!([]));

    // Memory, budget and audit answer for the key's own tenant only.
    let (status, export) = s.get("globex", "/v1/memory/export?user=alice").await;
    assert_eq!(status, 200, "{export}");
    assert!(
        !export.to_string().contains("6 times 7"),
        "globex must not see acme's memory: {export}"
    );
    let (status, budget) = s.get("globex", "/v1/budget").await;
    assert_eq!(status, 200);
    assert_eq!(budget["tenant"], "globex");
    let (status, audit) = s.get("acme", "/v1/audit").await;
    assert_eq!(status, 200, "{audit}");
    let entries = audit["data"].as_array().expect("entries");
    assert!(!entries.is_empty());
    assert!(entries.iter().all(|e| e["tenant"] == "acme"), "{audit}");
    let (_, audit) = s.get("globex", "/v1/audit").await;
    assert!(
        audit["data"]
            .as_array()
            .expect("entries")
            .iter()
            .all(|e| e["tenant"] == "globex"),
        "{audit}"
    );
    let (status, verified) = s.get("acme", "/v1/audit/verify").await;
    assert_eq!(status, 200);
    assert_eq!(verified["ok"], true, "{verified}");

    // Tools: each tenant lists its own.
    let (_, tools) = s.get("acme", "/v1/tools").await;
    let names: Vec<&str> = tools["data"]
        .as_array()
        .expect("tools")
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert!(names.contains(&"calculate"), "{tools}");
    s.service.shutdown_token().cancel();
    tokio::time::timeout(Duration::from_secs(30), s.task)
        .await
        .expect("shuts down")
        .expect("serve task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_checked_failures_are_limited_and_errors_have_one_shape() {
    let s = serve(&["acme"], "[server]\nauth_failures_per_minute = 3\n").await;
    let response = s.http.get(s.url("/v1/runs")).send().await.expect("request");
    assert_eq!(response.status().as_u16(), 401);
    assert!(response.headers().contains_key("www-authenticate"));
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "unauthorized");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("loom keys new"),
        "{body}"
    );
    for _ in 0..2 {
        let status = s
            .http
            .get(s.url("/v1/runs"))
            .bearer_auth("loom_sk_wrong")
            .send()
            .await
            .expect("request")
            .status();
        assert_eq!(status.as_u16(), 401);
    }
    // Past the limit even the right key is not checked from this address.
    let response = s
        .http
        .get(s.url("/v1/runs"))
        .bearer_auth(s.key("acme"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 429);
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "too_many_failed_authentications");
    // Failures were audited.
    s.service.host().flush().await.expect("flush");
    let audit = std::fs::read_to_string(s.env.path().join("audit.jsonl")).expect("audit");
    assert!(audit.contains("auth_failed"), "{audit}");
    // Health needs no key.
    let health: Value = s
        .http
        .get(s.url("/healthz"))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(health["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_name_what_is_wrong() {
    let s = serve(&["acme"], "").await;
    let (status, body) = s
        .send("acme", "POST", "/v1/runs", json!({"prompt": "hi"}))
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("input"),
        "{body}"
    );
    let (status, body) = s
        .send(
            "acme",
            "POST",
            "/v1/runs",
            json!({"input": "hi", "agent": "nope"}),
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "unknown_agent", "{body}");
    let (status, body) = s.get("acme", "/v1/sessions").await;
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("user")
    );
    let (status, body) = s.get("acme", "/v2/nothing").await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("/v1")
    );
    // Over the limit: read off the connection, then refused, so the
    // client hears the answer instead of a broken pipe.
    let big = "x".repeat(2 << 20);
    let (status, body) = s
        .send("acme", "POST", "/v1/runs", json!({"input": big}))
        .await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "body_too_large", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("max_body_kib"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_is_refused_before_it_is_sent() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = serve(&["acme"], "").await;
    let address = s.base.trim_start_matches("http://").to_owned();
    // Declared over the limit; with or without `Expect: 100-continue`, the
    // 413 comes at once, not after the body (never sent here) or the
    // 30-second body timeout.
    for expect in ["", "Expect: 100-continue\r\n"] {
        let mut stream = tokio::net::TcpStream::connect(&address)
            .await
            .expect("connect");
        let head = format!(
            "POST /v1/runs HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n{expect}\r\n",
            s.key("acme"),
            3 << 20
        );
        stream.write_all(head.as_bytes()).await.expect("write");
        let mut answer = vec![0u8; 4096];
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer))
            .await
            .expect("the 413 came before the body")
            .expect("read");
        let answer = String::from_utf8_lossy(&answer[..read]);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert!(answer.contains("body_too_large"), "{answer}");
    }
}

/// The `data:` payloads of an SSE body, with their `event:` names.
fn sse_events(body: &str) -> Vec<(String, Value)> {
    body.split("\n\n")
        .filter_map(|frame| {
            let mut kind = String::new();
            let mut data = None;
            for line in frame.lines() {
                if let Some(rest) = line.strip_prefix("event: ") {
                    kind = rest.to_owned();
                } else if let Some(rest) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(rest).ok();
                }
            }
            data.map(|d| (kind, d))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_is_decided_over_the_api_by_the_runs_tenant_only() {
    let s = serve(&["acme", "globex"], "").await;
    let http = s.http.clone();
    let url = s.url("/v1/runs");
    let key = s.key("acme").to_owned();
    let streamed = tokio::spawn(async move {
        http.post(url)
            .bearer_auth(key)
            .json(&json!({"input": "write a note", "user": "alice", "agent": "writer", "stream": true}))
            .send()
            .await
            .expect("request")
            .text()
            .await
            .expect("body")
    });
    let pending = s.first_pending("acme").await;
    assert_eq!(pending["tool"], "write_file", "{pending}");
    let id = pending["id"].as_str().expect("id");
    let (_, theirs) = s.get("globex", "/v1/approvals").await;
    assert_eq!(theirs["data"], json!([]));
    let (status, _) = s
        .send(
            "globex",
            "POST",
            &format!("/v1/approvals/{id}"),
            json!({"decision": "allow"}),
        )
        .await;
    assert_eq!(status, 404, "globex cannot decide acme's approval");
    let (status, body) = s
        .send(
            "acme",
            "POST",
            &format!("/v1/approvals/{id}"),
            json!({"decision": "allow"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let body = tokio::time::timeout(Duration::from_secs(60), streamed)
        .await
        .expect("run ends")
        .expect("task");
    let events = sse_events(&body);
    assert_eq!(
        events.first().map(|e| e.0.as_str()),
        Some("started"),
        "{body}"
    );
    let (kind, last) = events.last().expect("events");
    assert_eq!(kind, "completed", "{body}");
    assert!(
        last["result"]["output"]
            .as_str()
            .expect("output")
            .starts_with("Wrote it"),
        "{last}"
    );
    let written = std::fs::read_to_string(s.env.path().join("out-acme/note.txt")).expect("file");
    assert_eq!(written, "approved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_is_called_over_the_api_governed_as_in_a_run_and_only_for_its_tenant() {
    let s = serve(&["acme", "globex"], "").await;
    let (status, called) = s
        .send(
            "acme",
            "POST",
            "/v1/tools/calculate/call",
            json!({"arguments": {"expression": "6*7"}, "user": "alice"}),
        )
        .await;
    assert_eq!(status, 200, "{called}");
    assert_eq!(called["object"], "tool_call");
    assert!(
        called["output"].as_str().expect("output").contains("42"),
        "{called}"
    );
    let call_run = called["run"].as_str().expect("run").to_owned();

    // Wrong input names what is wrong.
    let (status, error) = s
        .send("acme", "POST", "/v1/tools/nope/call", json!({}))
        .await;
    assert_eq!(status, 404, "{error}");
    assert_eq!(error["error"]["code"], "unknown_tool");
    assert!(
        error["error"]["message"]
            .as_str()
            .expect("message")
            .contains("calculate"),
        "{error}"
    );
    let (status, error) = s
        .send(
            "acme",
            "POST",
            "/v1/tools/calculate/call",
            json!({"arguments": [1, 2]}),
        )
        .await;
    assert_eq!(status, 400, "{error}");
    assert_eq!(error["error"]["code"], "invalid_request");

    // A destructive call asks; the approval is acme's alone; a denial is a 403.
    let http = s.http.clone();
    let url = s.url("/v1/tools/write_file/call");
    let key = s.key("acme").to_owned();
    let waiting = tokio::spawn(async move {
        let response = http
            .post(url)
            .bearer_auth(key)
            .json(&json!({"arguments": {"path": "/out/x.txt", "content": "no"}, "user": "alice"}))
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.expect("json"))
    });
    let pending = s.first_pending("acme").await;
    assert_eq!(pending["tool"], "write_file", "{pending}");
    let id = pending["id"].as_str().expect("id");
    let (_, theirs) = s.get("globex", "/v1/approvals").await;
    assert_eq!(theirs["data"], json!([]));
    let (status, _) = s
        .send(
            "globex",
            "POST",
            &format!("/v1/approvals/{id}"),
            json!({"decision": "allow"}),
        )
        .await;
    assert_eq!(status, 404, "globex cannot decide acme's call");
    let (status, _) = s
        .send(
            "acme",
            "POST",
            &format!("/v1/approvals/{id}"),
            json!({"decision": "deny", "reason": "not today"}),
        )
        .await;
    assert_eq!(status, 200);
    let (status, denied) = tokio::time::timeout(Duration::from_secs(60), waiting)
        .await
        .expect("the call ends")
        .expect("task");
    assert_eq!(status, 403, "{denied}");
    assert_eq!(denied["error"]["code"], "tool_denied");
    assert!(
        denied["error"]["message"]
            .as_str()
            .expect("message")
            .contains("not today"),
        "{denied}"
    );
    assert!(!s.env.path().join("out-acme/x.txt").exists());

    // Audited for acme only; counted in acme's metrics.
    s.service.host().flush().await.expect("flush");
    let (_, audit) = s.get("acme", "/v1/audit").await;
    assert!(audit.to_string().contains(&call_run), "{audit}");
    let (_, audit) = s.get("globex", "/v1/audit").await;
    assert!(!audit.to_string().contains(&call_run), "{audit}");
    let metrics = s
        .http
        .get(s.url("/metrics"))
        .bearer_auth(s.key("acme"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("loom_tool_calls_total{tenant=\"acme\"} 2"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_is_served_at_slash_mcp_behind_the_tenants_keys_with_agents_as_tools() {
    let s = serve(
        &["acme", "globex"],
        "[server]\nmcp_agents = true\nmax_concurrent_runs_per_tenant = 1\n",
    )
    .await;
    let post = |key: Option<&str>, session: Option<&str>, body: Value| {
        let mut request = s
            .http
            .post(s.url("/mcp"))
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .header("mcp-protocol-version", "2025-06-18")
            .header("x-loom-user", "alice")
            .body(body.to_string());
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        if let Some(session) = session {
            request = request.header("mcp-session-id", session);
        }
        request.send()
    };
    // The body of a response that must have come back.
    let text_of = |response: reqwest::Result<reqwest::Response>| async move {
        response.expect("send").text().await.expect("body")
    };
    let initialize = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "test", "version": "0"}}
    });
    let refused = post(None, None, initialize.clone()).await.expect("send");
    assert_eq!(refused.status(), 401);
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["error"]["code"], "unauthorized", "{body}");

    let opened = post(Some(s.key("acme")), None, initialize)
        .await
        .expect("send");
    assert_eq!(opened.status(), 200);
    let session = opened
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .expect("a session id")
        .to_owned();
    let _ = opened.text().await;
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let accepted = post(Some(s.key("acme")), Some(&session), initialized)
        .await
        .expect("send");
    assert!(accepted.status().is_success(), "{}", accepted.status());
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                      "params": {"name": "calculate", "arguments": {"expression": "6*7"}}});
    let stolen = post(Some(s.key("globex")), Some(&session), call.clone())
        .await
        .expect("send");
    assert_eq!(stolen.status(), 404, "globex cannot use acme's MCP session");
    let own = post(Some(s.key("acme")), Some(&session), call)
        .await
        .expect("send");
    assert_eq!(own.status(), 200);
    let body = own.text().await.expect("body");
    assert!(body.contains("42"), "{body}");

    // The configured agents are tools too: a call is a whole run.
    let list = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": {}});
    let listed = text_of(post(Some(s.key("acme")), Some(&session), list).await).await;
    assert!(listed.contains("agent__default"), "{listed}");
    assert!(listed.contains("agent__writer"), "{listed}");
    let ask = json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
                     "params": {"name": "agent__default", "arguments": {"input": "6*7?"}}});
    let answered = text_of(post(Some(s.key("acme")), Some(&session), ask).await).await;
    assert!(answered.contains("The answer is 42.0."), "{answered}");
    // An agent tool's run takes one of the tenant's run slots: with the
    // only one held by a run waiting for approval, the call is refused.
    let http = s.http.clone();
    let url = s.url("/v1/runs");
    let key = s.key("acme").to_owned();
    let waiting = tokio::spawn(async move {
        http.post(url)
            .bearer_auth(key)
            .json(&json!({"input": "write", "user": "alice", "agent": "writer"}))
            .send()
            .await
            .expect("request")
            .text()
            .await
            .expect("body")
    });
    let pending = s.first_pending("acme").await;
    let ask = json!({"jsonrpc": "2.0", "id": 6, "method": "tools/call",
                     "params": {"name": "agent__default", "arguments": {"input": "6*7?"}}});
    let full = text_of(post(Some(s.key("acme")), Some(&session), ask).await).await;
    assert!(full.contains("max_concurrent_runs_per_tenant"), "{full}");
    let id = pending["id"].as_str().expect("id");
    let (status, _) = s
        .send(
            "acme",
            "POST",
            &format!("/v1/approvals/{id}"),
            json!({"decision": "deny"}),
        )
        .await;
    assert_eq!(status, 200);
    tokio::time::timeout(Duration::from_secs(60), waiting)
        .await
        .expect("the run ends")
        .expect("task");
    let bad = json!({"jsonrpc": "2.0", "id": 5, "method": "tools/call",
                     "params": {"name": "agent__default", "arguments": {"question": "?"}}});
    let refused = text_of(post(Some(s.key("acme")), Some(&session), bad).await).await;
    assert!(
        refused.contains("isError") && refused.contains("invalid arguments"),
        "{refused}"
    );
    // The call was audited as alice's, in acme's log.
    s.service.host().flush().await.expect("flush");
    let (_, audit) = s.get("acme", "/v1/audit").await;
    assert!(
        audit["data"]
            .as_array()
            .expect("entries")
            .iter()
            .any(|e| e["user"] == "alice" && e.to_string().contains("calculate")),
        "{audit}"
    );
    s.service.shutdown_token().cancel();
    tokio::time::timeout(Duration::from_secs(30), s.task)
        .await
        .expect("MCP sessions do not hold up shutdown")
        .expect("serve task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completions_answer_as_the_openai_api_does() {
    let s = serve(&["acme"], "").await;
    let (status, body) = s
        .send(
            "acme",
            "POST",
            "/v1/chat/completions",
            json!({"model": "loom", "messages": [{"role": "user", "content": "6*7?"}], "user": "alice"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "The answer is 42.0."
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let (status, body) = s
        .send(
            "acme",
            "POST",
            "/v1/chat/completions",
            json!({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "model_not_found");
    assert_eq!(body["error"]["type"], "not_found_error");
    let text = s
        .http
        .post(s.url("/v1/chat/completions"))
        .bearer_auth(s.key("acme"))
        .json(
            &json!({"model": "loom", "stream": true, "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "6*7?"}]}),
        )
        .send()
        .await
        .expect("request")
        .text()
        .await
        .expect("body");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let chunks = sse_events(&text);
    let content: String = chunks
        .iter()
        .filter_map(|(_, c)| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "The answer is 42.0.", "{text}");
    assert!(
        chunks
            .iter()
            .any(|(_, c)| c["usage"]["total_tokens"].as_u64().is_some())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_a_tenant_its_own_series_and_the_operator_all() {
    let (operator, hash) = loom_host::tenancy::keys::new_key().expect("key");
    let s = serve(
        &["acme", "globex"],
        &format!("[server]\noperator_keys = [\"{hash}\"]\n"),
    )
    .await;
    let (status, _) = s
        .send("acme", "POST", "/v1/runs", json!({"input": "go"}))
        .await;
    assert_eq!(status, 200);
    let text = |key: String| {
        let http = s.http.clone();
        let url = s.url("/metrics");
        async move {
            http.get(url)
                .bearer_auth(key)
                .send()
                .await
                .expect("request")
                .text()
                .await
                .expect("body")
        }
    };
    let mine = text(s.key("globex").to_owned()).await;
    assert!(
        mine.contains("loom_runs_started_total{tenant=\"globex\"} 0"),
        "{mine}"
    );
    assert!(!mine.contains("acme"), "{mine}");
    let all = text(operator.clone()).await;
    assert!(
        all.contains("loom_runs_started_total{tenant=\"acme\"} 1"),
        "{all}"
    );
    assert!(
        all.contains("loom_tool_calls_total{tenant=\"acme\"} 1"),
        "{all}"
    );
    // An operator key reads metrics and nothing else.
    let status = s
        .http
        .get(s.url("/v1/runs"))
        .bearer_auth(&operator)
        .send()
        .await
        .expect("request")
        .status();
    assert_eq!(status.as_u16(), 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_a_key_and_a_plugin_without_a_restart() {
    let s = serve(&["acme"], "").await;
    let plugins_of = |tools: &Value| -> Vec<String> {
        tools["data"]
            .as_array()
            .expect("tools")
            .iter()
            .filter_map(|t| t["plugin"].as_str().map(str::to_owned))
            .collect()
    };
    let (_, before) = s.get("acme", "/v1/tools").await;
    assert!(!plugins_of(&before).contains(&"context".to_owned()));
    s.env
        .add_plugin(components::TOOL_RUN_CONTEXT, "context", None);
    let (key, hash) = loom_host::tenancy::keys::new_key().expect("key");
    let path = s.env.path().join("loom.toml");
    let text = std::fs::read_to_string(&path).expect("config");
    std::fs::write(
        &path,
        format!("{text}[tenants.initech]\napi_keys = [\"{hash}\"]\n"),
    )
    .expect("write");
    let generation = s.service.reload().await.expect("reloads");
    assert_eq!(generation, 1);
    let status = s
        .http
        .get(s.url("/v1/runs"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("request")
        .status();
    assert_eq!(status.as_u16(), 200);
    // The plugin dropped into the directory serves the next request.
    let (_, after) = s.get("acme", "/v1/tools").await;
    assert!(
        plugins_of(&after).contains(&"context".to_owned()),
        "{after}"
    );
    // A change that needs a restart is refused and the old config stays.
    std::fs::write(&path, format!("{text}[engine]\nmax_instances = 7\n")).expect("write");
    let error = s
        .service
        .reload()
        .await
        .expect_err("engine needs a restart");
    assert!(error.contains("[engine]"), "{error}");
    std::fs::write(&path, format!("{text}[server]\nmax_body_kib = 7\n")).expect("write");
    let error = s
        .service
        .reload()
        .await
        .expect_err("[server] needs a restart");
    assert!(error.contains("[server] changed"), "{error}");
    assert_eq!(s.service.generation().number(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_streamed_runs_across_ten_tenants_never_cross_and_a_stalled_reader_stalls_no_one()
 {
    let tenants: Vec<String> = (0..10).map(|i| format!("t{i}")).collect();
    let names: Vec<&str> = tenants.iter().map(String::as_str).collect();
    let s = serve(&names, "").await;
    // A reader that never reads: a stream of several MiB left unread on an
    // open connection, so the server's writes to it block.
    let stalled = s
        .http
        .post(s.url("/v1/runs"))
        .bearer_auth(s.key("t0"))
        .json(&json!({"input": "stall", "user": "staller", "agent": "big", "stream": true}))
        .send()
        .await
        .expect("request");
    let mut runs = Vec::new();
    for i in 0..200 {
        let tenant = tenants[i % tenants.len()].clone();
        let http = s.http.clone();
        let url = s.url("/v1/runs");
        let key = s.key(&tenant).to_owned();
        runs.push(tokio::spawn(async move {
            let body = http
                .post(url)
                .bearer_auth(key)
                .json(
                    &json!({"input": format!("run {i}"), "user": format!("u{i}"), "stream": true}),
                )
                .send()
                .await
                .expect("request")
                .text()
                .await
                .expect("body");
            (tenant, body)
        }));
    }
    let mut seen = std::collections::HashSet::new();
    for run in runs {
        let (tenant, body) = tokio::time::timeout(Duration::from_secs(300), run)
            .await
            .expect("no run is lost or stalled")
            .expect("task");
        let events = sse_events(&body);
        let run_id = events
            .first()
            .and_then(|(_, e)| e["run_id"].as_str())
            .expect("started event")
            .to_owned();
        assert!(seen.insert(run_id.clone()), "one stream per run");
        assert_eq!(
            events.last().map(|e| e.0.as_str()),
            Some("completed"),
            "{body}"
        );
        // Every event of the stream is of this run: the run is the
        // tenant's own.
        let (status, run) = s.get(&tenant, &format!("/v1/runs/{run_id}")).await;
        assert_eq!(status, 200, "{run}");
        assert_eq!(run["status"], "completed");
        assert_eq!(run["events"].as_u64(), Some(events.len() as u64));
        for other in tenants.iter().filter(|t| **t != tenant).take(2) {
            assert_eq!(s.get(other, &format!("/v1/runs/{run_id}")).await.0, 404);
        }
    }
    assert_eq!(seen.len(), 200);
    // The stalled reader held up only its own connection: its run ended.
    let (_, listed) = s.get("t0", "/v1/runs?user=staller").await;
    assert_eq!(listed["data"][0]["status"], "completed", "{listed}");
    assert_eq!(listed["data"][0]["agent"], "big");
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_names_every_route_the_router_serves() {
    let s = serve(&["acme"], "").await;
    for (method, path) in loom_host::service::openapi::routes() {
        let path = path.replace("{id}", "x").replace("{name}", "x");
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
        let response = s
            .http
            .request(method.clone(), s.url(&path))
            .bearer_auth(s.key("acme"))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        assert!(
            !(status == 404 && body.contains("no route")) && status != 405,
            "{method} {path} is documented but not routed: {status} {body}"
        );
    }
    let served: Value = s
        .http
        .get(s.url("/v1/openapi.json"))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(served, loom_host::service::openapi::document());
    assert!(served["components"]["schemas"]["StartRun"]["properties"]["input"].is_object());
    // docs/openapi.json is the document as generated (LOOM_BLESS=1 rewrites it).
    let committed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
    let generated = serde_json::to_string_pretty(&served).expect("json") + "\n";
    if std::env::var_os("LOOM_BLESS").is_some() {
        std::fs::write(&committed, &generated).expect("write docs/openapi.json");
    }
    let on_disk = std::fs::read_to_string(&committed).unwrap_or_default();
    assert!(
        on_disk == generated,
        "docs/openapi.json is not the document the code generates: run `LOOM_BLESS=1 cargo nextest \
         run -p loom-tests -E 'test(openapi)'` and commit it"
    );
}
