//! Plugins in other languages, loaded from a plugin directory and called
//! through the real host: the JavaScript (`examples/js-*`, componentize-js)
//! and Python (`examples/py-*`, componentize-py) tools and architectures,
//! and the Rust tool written with wit-bindgen alone
//! (`examples/raw-wit-tool`).
//!
//! The JavaScript and Python components are built by `cargo xtask
//! build-polyglot` (part of `cargo xtask test`); see
//! [`loom_tests::polyglot_component`]. A missing component fails its test:
//! it is never skipped.

use crate::support::http_server;
use loom_host::Host;
use loom_host::agent::{Agent, RunEvent, RunRequest, RunResult};
use loom_host::engine::{CallError, ToolFailure, ToolOutput};
use loom_host::model::offline::{ScriptedModel, ScriptedToolCall, ScriptedTurn};
use loom_host::tenancy::ids::SessionId;
use loom_tests::{TestEnv, components, polyglot_component, scope};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Tenants `acme` and `globex`, both running tool calls without asking;
/// `acme` is granted `acme_grants`, `globex` nothing.
fn tenants(acme_grants: &str) -> String {
    format!(
        "[tenants.acme.permissions]\nmode = \"bypass\"\n[tenants.acme.grants]\n{acme_grants}\n\
         [tenants.globex.permissions]\nmode = \"bypass\"\n"
    )
}

/// A host with `plugins` ((component, file stem, manifest)) in its global
/// plugin directory, every one of them loaded.
async fn host(env: &TestEnv, plugins: &[(&str, &str, Option<&str>)], config: &str) -> Arc<Host> {
    for (component, name, manifest) in plugins {
        env.add_plugin(component, name, *manifest);
    }
    let host = env.host(config).await;
    for entry in &host.catalog().await.entries {
        if let Err(error) = &entry.status {
            panic!("{} did not load: {error}", entry.path.display());
        }
    }
    Arc::new(host)
}

/// A tool error's failure, or a panic naming what came instead.
fn failure(result: Result<ToolOutput, CallError>) -> ToolFailure {
    match result {
        Err(CallError::Tool { failure, .. }) => failure,
        other => panic!("expected the tool's own error, got {other:?}"),
    }
}

/// The run context a `*_run_context` tool returned, checked to be the
/// caller's.
fn assert_context_of(output: &str, tenant: &str, user: Option<&str>, language: &str) -> Value {
    let value: Value = serde_json::from_str(output).expect("the tool returns JSON");
    assert_eq!(value["language"], language, "{value}");
    assert_eq!(value["tenant"], tenant, "{value}");
    match user {
        Some(user) => assert_eq!(value["user_id"], user, "{value}"),
        None => assert!(value["user_id"].is_null(), "anonymous is null: {value}"),
    }
    value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_tool_reads_its_run_context_and_reaches_only_granted_http() {
    let (port, hits) = http_server().await;
    let env = TestEnv::new();
    let manifest = format!("name = \"js-tool\"\n[capabilities]\nhttp = [\"127.0.0.1:{port}\"]\n");
    let host = host(
        &env,
        &[(&polyglot_component("js-tool"), "js-tool", Some(&manifest))],
        &tenants(&format!("http = [\"127.0.0.1:{port}\"]")),
    )
    .await;

    let mut alice = scope("acme", Some("alice")).with_session(SessionId::new("s-1").unwrap());
    alice.metadata.push(("channel".into(), "web".into()));
    let run = alice.run.to_string();
    let out = host
        .call_tool(alice, "js_run_context", "{}")
        .await
        .expect("js_run_context answers");
    let context = assert_context_of(&out.output, "acme", Some("alice"), "javascript");
    assert_eq!(context["session_id"], "s-1");
    assert_eq!(context["run_id"], run.as_str());
    assert_eq!(context["metadata"]["channel"], "web");
    assert!(
        context["idempotency_key"].is_null(),
        "no key outside a run's tool call: {context}"
    );
    let out = host
        .call_tool(scope("globex", None), "js_run_context", "")
        .await
        .expect("js_run_context answers");
    assert_context_of(&out.output, "globex", None, "javascript");

    // globex is granted no HTTP: the host refuses the request.
    let url = format!("http://127.0.0.1:{port}/ping");
    let denied = failure(
        host.call_tool(
            scope("globex", None),
            "js_http_get",
            &json!({ "url": url }).to_string(),
        )
        .await,
    );
    assert!(
        matches!(&denied, ToolFailure::Denied(reason) if reason.contains("refused")),
        "{denied:?}"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 0, "nothing reached the server");
    // Nor is an address acme was not granted.
    let denied = failure(
        host.call_tool(
            scope("acme", None),
            "js_http_get",
            r#"{"url":"http://127.0.0.1:9/"}"#,
        )
        .await,
    );
    assert!(matches!(denied, ToolFailure::Denied(_)), "{denied:?}");
    // acme is granted the server and the manifest requests it: it works.
    let out = host
        .call_tool(
            scope("acme", None),
            "js_http_get",
            &json!({ "url": url }).to_string(),
        )
        .await
        .expect("a granted request goes through");
    let response: Value = serde_json::from_str(&out.output).unwrap();
    assert_eq!(response, json!({ "status": 200, "body": "pong" }));
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // Bad input is the tool's own typed error, not a trap.
    for bad in [r#"{"url":7}"#, "[1]", "{"] {
        let invalid = failure(
            host.call_tool(scope("acme", None), "js_http_get", bad)
                .await,
        );
        assert!(
            matches!(invalid, ToolFailure::InvalidArguments(_)),
            "{bad}: {invalid:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_tool_without_a_manifest_is_granted_nothing() {
    let (port, hits) = http_server().await;
    let env = TestEnv::new();
    let host = host(
        &env,
        &[(&polyglot_component("js-tool"), "js-tool", None)],
        &tenants(&format!("http = [\"127.0.0.1:{port}\"]")),
    )
    .await;
    let denied = failure(
        host.call_tool(
            scope("acme", None),
            "js_http_get",
            &json!({ "url": format!("http://127.0.0.1:{port}/") }).to_string(),
        )
        .await,
    );
    assert!(matches!(denied, ToolFailure::Denied(_)), "{denied:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_tool_reads_its_run_context_and_only_granted_files() {
    let env = TestEnv::new();
    let data = env.mkdir("data/acme");
    std::fs::write(data.join("note.txt"), "acme's note").unwrap();
    std::fs::write(env.path().join("outside.txt"), "not granted").unwrap();
    let manifest = "name = \"py-tool\"\n[capabilities]\nfiles = [\"/data\"]\n";
    let host = host(
        &env,
        &[(&polyglot_component("py-tool"), "py-tool", Some(manifest))],
        &tenants("files = [{ host = \"data/acme\", guest = \"/data\" }]"),
    )
    .await;

    let mut bob = scope("acme", Some("bob")).with_session(SessionId::new("s-2").unwrap());
    bob.metadata.push(("channel".into(), "cli".into()));
    let out = host
        .call_tool(bob, "py_run_context", "{}")
        .await
        .expect("py_run_context answers");
    let context = assert_context_of(&out.output, "acme", Some("bob"), "python");
    assert_eq!(context["session_id"], "s-2");
    assert_eq!(context["metadata"]["channel"], "cli");
    let out = host
        .call_tool(scope("globex", Some("carol")), "py_run_context", "")
        .await
        .expect("py_run_context answers");
    assert_context_of(&out.output, "globex", Some("carol"), "python");

    // acme is granted /data: the file reads.
    let out = host
        .call_tool(
            scope("acme", None),
            "py_read_file",
            r#"{"path":"/data/note.txt"}"#,
        )
        .await
        .expect("a granted file reads");
    let read: Value = serde_json::from_str(&out.output).unwrap();
    assert_eq!(read["content"], "acme's note");
    // globex is granted no files: the same path does not exist for it.
    let denied = failure(
        host.call_tool(
            scope("globex", None),
            "py_read_file",
            r#"{"path":"/data/note.txt"}"#,
        )
        .await,
    );
    assert!(matches!(denied, ToolFailure::Denied(_)), "{denied:?}");
    // Nor can acme leave its grant, by `..` or by the host's own path.
    let outside = env.path().join("outside.txt").display().to_string();
    for path in ["/data/../outside.txt", outside.as_str()] {
        let denied = failure(
            host.call_tool(
                scope("acme", None),
                "py_read_file",
                &json!({ "path": path }).to_string(),
            )
            .await,
        );
        assert!(
            matches!(denied, ToolFailure::Denied(_)),
            "{path}: {denied:?}"
        );
    }
    for bad in [r#"{"path":1}"#, "[1]", "{"] {
        let invalid = failure(
            host.call_tool(scope("acme", None), "py_read_file", bad)
                .await,
        );
        assert!(
            matches!(invalid, ToolFailure::InvalidArguments(_)),
            "{bad}: {invalid:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_wit_tool_reads_its_run_context_and_checks_its_arguments() {
    let env = TestEnv::new();
    let host = host(
        &env,
        &[(components::EXAMPLE_RAW_WIT_TOOL, "raw", None)],
        &tenants(""),
    )
    .await;
    let alice = scope("acme", Some("alice")).with_session(SessionId::new("s-1").unwrap());
    let out = host
        .call_tool(alice, "raw_run_context", "")
        .await
        .expect("raw_run_context answers");
    let context = assert_context_of(&out.output, "acme", Some("alice"), "rust-wit-bindgen");
    assert_eq!(context["session_id"], "s-1");
    let out = host
        .call_tool(scope("globex", None), "raw_add", r#"{"a":2.5,"b":4}"#)
        .await
        .expect("raw_add answers");
    assert_eq!(out.output, "6.5");
    for bad in [r#"{"a":1}"#, r#"{"a":"1","b":2}"#, "[]", "{"] {
        let invalid = failure(host.call_tool(scope("acme", None), "raw_add", bad).await);
        assert!(
            matches!(&invalid, ToolFailure::InvalidArguments(reason) if reason.contains("raw_add")),
            "{bad}: {invalid:?}"
        );
    }
    let acme = loom_host::TenantId::new("acme").unwrap();
    let catalog = host.catalog_for(&acme).await;
    let add = &catalog
        .tool(&acme, "raw_add")
        .expect("raw_add is listed")
        .spec;
    assert!(!add.destructive && add.idempotent, "{add:?}");
}

/// A scripted model: one turn calling `calls` in parallel, then the answer
/// `answer` (`{last_tool_result}` is replaced by the last tool output).
fn calls_then_answer(calls: &[(&str, Value)], answer: &str) -> Arc<ScriptedModel> {
    Arc::new(ScriptedModel::new(vec![
        ScriptedTurn {
            text: String::new(),
            tool_calls: calls
                .iter()
                .map(|(name, arguments)| ScriptedToolCall {
                    id: None,
                    name: (*name).into(),
                    arguments: arguments.clone(),
                })
                .collect(),
            usage: None,
        },
        ScriptedTurn {
            text: answer.into(),
            tool_calls: Vec::new(),
            usage: None,
        },
    ]))
}

/// A model that calls `tool` on every turn and never answers.
fn never_answers(tool: &str) -> Arc<ScriptedModel> {
    let turn = ScriptedTurn {
        text: "still working".into(),
        tool_calls: vec![ScriptedToolCall {
            id: None,
            name: tool.into(),
            arguments: json!({}),
        }],
        usage: None,
    };
    Arc::new(ScriptedModel::new(vec![turn; 8]))
}

/// What a streamed run showed: tool results (name, ok, output), custom
/// events (kind, data) and the result.
#[derive(Default)]
struct Streamed {
    tool_results: Vec<(String, bool, String)>,
    custom: Vec<(String, Value)>,
    result: Option<RunResult>,
}

/// Stream `prompt` through `agent` for alice of acme in session `s-1`.
async fn stream(agent: &Agent, prompt: &str) -> Streamed {
    let request = RunRequest::new(
        scope("acme", Some("alice")).with_session(SessionId::new("s-1").expect("session id")),
        prompt,
    );
    let mut stream = agent.stream(request);
    let mut seen = Streamed::default();
    while let Some(event) = stream.next().await {
        match event {
            RunEvent::ToolResult {
                name, ok, output, ..
            } => seen.tool_results.push((name, ok, output)),
            RunEvent::Custom { kind, data } => {
                let data = serde_json::from_str(&data).expect("event data is JSON");
                seen.custom.push((kind, data));
            }
            RunEvent::Completed { result } => seen.result = Some(*result),
            RunEvent::Error { message } => panic!("the run failed: {message}"),
            _ => {}
        }
    }
    seen
}

/// Run an architecture written in another language over its language's
/// tool and the Rust one, called in parallel in one turn; then a run that
/// never answers stops at the turn cap.
async fn architecture_loops_over_complete_and_call_tools(
    arch: &str,
    arch_component: &str,
    tool_component: &str,
    tool: &str,
    language: &str,
) {
    let env = TestEnv::new();
    let host = host(
        &env,
        &[
            (arch_component, "arch", None),
            (tool_component, "tool", None),
            (components::EXAMPLE_RAW_WIT_TOOL, "raw", None),
        ],
        &tenants(""),
    )
    .await;
    let model = calls_then_answer(
        &[(tool, json!({})), ("raw_add", json!({ "a": 40, "b": 2 }))],
        "done: {last_tool_result}",
    );
    let agent = Agent::builder("Be brief.")
        .host(host.clone())
        .model(model)
        .architecture(arch)
        .build()
        .expect("agent");
    let seen = stream(&agent, "Who am I, and what is 40+2?").await;
    let result = seen.result.expect("the run completed");
    assert_eq!(result.output, "done: 42.0");
    assert_eq!(result.turns, 2);
    assert!(!result.interrupted, "{result:?}");
    assert!(result.usage.input_tokens > 0, "usage is summed: {result:?}");
    assert_eq!(seen.tool_results.len(), 2, "{:?}", seen.tool_results);
    let (name, ok, output) = &seen.tool_results[0];
    assert!(*ok && name == tool, "{:?}", seen.tool_results);
    let context = assert_context_of(output, "acme", Some("alice"), language);
    assert_eq!(context["session_id"], "s-1");
    assert!(
        context["idempotency_key"].is_string(),
        "a run's tool call has a key: {context}"
    );
    assert_eq!(
        seen.tool_results[1],
        ("raw_add".to_owned(), true, "42.0".to_owned())
    );
    assert_eq!(
        seen.custom,
        vec![(
            "answered".to_owned(),
            json!({ "language": language, "turns": 2 })
        )]
    );

    // The turn cap ends a run that never answers, interrupted.
    let agent = Agent::builder("")
        .host(host)
        .model(never_answers("raw_run_context"))
        .architecture(arch)
        .max_turns(3)
        .build()
        .expect("agent");
    let seen = stream(&agent, "Loop.").await;
    let result = seen.result.expect("the run completed");
    assert_eq!(result.turns, 3);
    assert!(result.interrupted);
    assert_eq!(result.interruption_reason.as_deref(), Some("max_turns"));
    assert_eq!(result.output, "still working");
    assert_eq!(seen.tool_results.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_architecture_loops_over_complete_and_call_tools() {
    architecture_loops_over_complete_and_call_tools(
        "js-react",
        &polyglot_component("js-architecture"),
        &polyglot_component("js-tool"),
        "js_run_context",
        "javascript",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn py_architecture_loops_over_complete_and_call_tools() {
    architecture_loops_over_complete_and_call_tools(
        "py-react",
        &polyglot_component("py-architecture"),
        &polyglot_component("py-tool"),
        "py_run_context",
        "python",
    )
    .await;
}
