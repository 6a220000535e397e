//! Loom's MCP server, driven by a client the project did not write: the
//! official MCP Python SDK (`mcp` on PyPI, from the venv `cargo xtask test`
//! installs; see `loom_tests::py_clients`). Over stdio against `loom mcp
//! serve`, and over streamable HTTP against the service `loom serve`
//! mounts at `/mcp`: the tools are listed with their annotations, a call
//! runs, a destructive call without an approver is denied with the reason,
//! and an HTTP session stays with the tenant that opened it.

use loom_host::Host;
use loom_host::mcp::{McpServerOptions, streamable_http_service};
use loom_host::tenancy::ids::Scope;
use loom_tests::{TestEnv, components, py_clients, scope};
use serde_json::{Value, json};
use std::process::Command;
use std::sync::Arc;

/// The Python MCP client script.
const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp/client.py");

/// Run the Python client with `spec`; its JSON report.
fn python_client(spec: &Value) -> Value {
    let out = Command::new(py_clients())
        .arg(CLIENT)
        .arg(spec.to_string())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run the Python MCP client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the Python MCP client failed ({:?}):\n{stdout}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// Calculator and files for tenant `acme` (files under `data/`, writable),
/// an audit log, and a second tenant `globex`. With `notes`, acme also
/// lists the Python MCP server `tests/mcp/server.py` as `notes`.
fn setup(notes: bool) -> TestEnv {
    let env = TestEnv::new();
    env.add_plugin(components::TOOL_CALCULATOR, "calculator", None);
    env.add_plugin(
        components::TOOL_FILES,
        "files",
        Some("version = \"0.1.0\"\n[capabilities]\nfiles = [{ path = \"/data\", write = true }]\n"),
    );
    env.mkdir("data");
    let notes = if notes {
        format!(
            "[[tenants.acme.mcp_servers]]\nname = \"notes\"\ncommand = {:?}\nargs = [{:?}]\n",
            py_clients().display().to_string(),
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp/server.py"),
        )
    } else {
        String::new()
    };
    env.config(&format!(
        "[audit]\npath = \"audit.jsonl\"\ninsecure_no_key = true\n\
         [tenants.acme.grants]\nfiles = [{{ host = \"data\", guest = \"/data\", write = true }}]\n\
         {notes}[tenants.globex]\n",
    ));
    env
}

/// The calls every test makes: one that runs, one the permission mode
/// sends to an approver there is not, one of a tool that does not exist.
fn calls() -> Value {
    json!([
        {"name": "calculate", "arguments": {"expression": "6*7"}},
        {"name": "write_file", "arguments": {"path": "/data/out.txt", "content": "x"}},
        {"name": "no_such_tool", "arguments": {}},
    ])
}

/// What every transport must answer to [`calls`].
fn check_report(env: &TestEnv, report: &Value) {
    let tools = report["tools"].as_array().expect("tools");
    let tool = |name: &str| {
        tools
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("`{name}` is not listed: {report}"))
    };
    let calculate = tool("calculate");
    assert_eq!(
        calculate["annotations"]["readOnlyHint"], true,
        "{calculate}"
    );
    assert_eq!(
        calculate["annotations"]["destructiveHint"], false,
        "{calculate}"
    );
    assert_eq!(calculate["inputSchema"]["type"], "object", "{calculate}");
    assert!(
        calculate["inputSchema"]["properties"]["expression"].is_object(),
        "the schema comes from the tool: {calculate}"
    );
    let write = tool("write_file");
    assert_eq!(write["annotations"]["destructiveHint"], true, "{write}");
    assert_eq!(write["annotations"]["readOnlyHint"], false, "{write}");

    let calls = report["calls"].as_array().expect("calls");
    assert_eq!(calls[0]["isError"], false, "{report}");
    assert_eq!(calls[0]["text"], "42.0", "{report}");
    assert_eq!(calls[1]["isError"], true, "{report}");
    let denied = calls[1]["text"].as_str().unwrap_or_default();
    assert!(
        denied.starts_with("DENIED: ") && denied.contains("no approver is configured"),
        "{denied}"
    );
    assert!(
        !env.path().join("data/out.txt").exists(),
        "the denied call did not run"
    );
    let unknown = calls[2]["protocol_error"].as_str().unwrap_or_default();
    assert!(unknown.contains("no tool `no_such_tool`"), "{report}");
}

/// The audit log's `tool_call` entries: (tool, decision, user).
fn audited_calls(env: &TestEnv) -> Vec<(String, String, Option<String>)> {
    let text = std::fs::read_to_string(env.path().join("audit.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|entry| entry["action"] == "tool_call")
        .map(|entry| {
            (
                entry["data"]["tool"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                entry["data"]["decision"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                entry["user"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

#[test]
fn python_sdk_lists_calls_and_is_denied_over_stdio() {
    let env = setup(true);
    let config = env.path().join("loom.toml");
    let mut calls = calls();
    if let Some(list) = calls.as_array_mut() {
        list.push(json!({"name": "notes__lookup", "arguments": {"key": "k"}}));
        list.push(json!({"name": "notes__add_note", "arguments": {"text": "t"}}));
    }
    let report = python_client(&json!({
        "transport": "stdio",
        "command": env!("CARGO_BIN_EXE_loom"),
        "args": ["mcp", "serve", "--tenant", "acme", "--user", "alice",
                 "--config", config.display().to_string()],
        "calls": calls,
    }));
    check_report(&env, &report);
    // The tools of acme's own MCP server, served on: Python client, Loom,
    // Python server. Its unannotated tool is destructive, so denied here.
    let notes_add = report["tools"]
        .as_array()
        .and_then(|tools| tools.iter().find(|t| t["name"] == "notes__add_note"))
        .unwrap_or_else(|| panic!("notes__add_note is not listed: {report}"));
    assert_eq!(
        notes_add["annotations"]["destructiveHint"], true,
        "{notes_add}"
    );
    assert_eq!(report["calls"][3]["isError"], false, "{report}");
    assert!(
        report["calls"][3]["text"]
            .as_str()
            .is_some_and(|t| t.contains("note k: remember the milk")),
        "{report}"
    );
    assert_eq!(report["calls"][4]["isError"], true, "{report}");
    assert!(
        report["calls"][4]["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("DENIED: ")),
        "{report}"
    );
    let audited = audited_calls(&env);
    let alice = Some("alice".to_owned());
    assert!(
        audited.contains(&("calculate".into(), "allow".into(), alice.clone()))
            && audited.contains(&("write_file".into(), "deny".into(), alice)),
        "each MCP call leaves the audit entry a run's call leaves: {audited:?}"
    );
}

/// `/mcp` behind a test layer standing in for `loom serve`'s
/// authentication: the `x-test-tenant` and `x-test-user` headers become
/// the request's [`Scope`]; no header, no scope.
async fn serve_http(host: Arc<Host>) -> (String, tokio_util::sync::CancellationToken) {
    let cancel = tokio_util::sync::CancellationToken::new();
    let service = streamable_http_service(host, McpServerOptions::default(), cancel.clone());
    let app = axum::Router::new()
        .nest_service("/mcp", service)
        .layer(axum::middleware::from_fn(
            |mut request: axum::extract::Request, next: axum::middleware::Next| async move {
                let (tenant, user) = {
                    let header = |name: &str| {
                        request
                            .headers()
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned)
                    };
                    (header("x-test-tenant"), header("x-test-user"))
                };
                if let Some(tenant) = tenant {
                    let scope: Scope = scope(&tenant, user.as_deref());
                    request.extensions_mut().insert(scope);
                }
                next.run(request).await
            },
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let shutdown = cancel.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    });
    (format!("http://{address}/mcp"), cancel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_lists_calls_and_is_denied_over_streamable_http() {
    let env = setup(false);
    let host = Arc::new(
        Host::start(loom_host::LoomConfig::load(&env.path().join("loom.toml")).expect("config"))
            .await
            .expect("host"),
    );
    let (url, cancel) = serve_http(host.clone()).await;
    // Both ways a client connects: the 2026 per-request protocol ("auto"
    // probes for it) and the initialize handshake with an MCP session.
    for mode in ["auto", "legacy"] {
        let spec = json!({
            "transport": "http",
            "url": url,
            "headers": {"x-test-tenant": "acme", "x-test-user": "bob"},
            "mode": mode,
            "calls": calls(),
        });
        let report = tokio::task::spawn_blocking(move || python_client(&spec))
            .await
            .expect("client");
        check_report(&env, &report);
    }
    host.flush().await.expect("flush");
    let audited = audited_calls(&env);
    assert!(
        audited.contains(&("calculate".into(), "allow".into(), Some("bob".into()))),
        "{audited:?}"
    );
    cancel.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_session_stays_with_the_tenant_that_opened_it() {
    let env = setup(false);
    let host = Arc::new(
        Host::start(loom_host::LoomConfig::load(&env.path().join("loom.toml")).expect("config"))
            .await
            .expect("host"),
    );
    let (url, cancel) = serve_http(host).await;
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(loom_host::tls::client_config_h2())
        .build()
        .expect("client");
    let post = |tenant: Option<&str>, session: Option<&str>, body: Value| {
        let mut request = client
            .post(&url)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .header("mcp-protocol-version", "2025-06-18")
            .body(body.to_string());
        if let Some(tenant) = tenant {
            request = request.header("x-test-tenant", tenant);
        }
        if let Some(session) = session {
            request = request.header("mcp-session-id", session);
        }
        request.send()
    };
    let initialize = json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "test", "version": "0"}}
    });
    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}});

    // No authenticated scope: refused before MCP.
    let refused = post(None, None, initialize.clone()).await.expect("send");
    assert_eq!(refused.status(), 401);

    let opened = post(Some("acme"), None, initialize).await.expect("send");
    assert_eq!(opened.status(), 200);
    let session = opened
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .expect("a session id")
        .to_owned();
    let _ = opened.text().await;
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let accepted = post(Some("acme"), Some(&session), initialized)
        .await
        .expect("send");
    assert!(accepted.status().is_success(), "{}", accepted.status());

    // Another tenant's key on acme's session: as if it did not exist.
    let stolen = post(Some("globex"), Some(&session), list.clone())
        .await
        .expect("send");
    assert_eq!(stolen.status(), 404);
    let deleted = client
        .delete(&url)
        .header("x-test-tenant", "globex")
        .header("mcp-session-id", &session)
        .send()
        .await
        .expect("send");
    assert_eq!(deleted.status(), 404, "globex cannot close acme's session");

    // The owner still can use it.
    let own = post(Some("acme"), Some(&session), list)
        .await
        .expect("send");
    assert_eq!(own.status(), 200);
    let body = own.text().await.expect("body");
    assert!(body.contains("calculate"), "{body}");
    cancel.cancel();
}
