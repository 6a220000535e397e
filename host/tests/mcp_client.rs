//! Loom as an MCP client: a real MCP server written with the official MCP
//! Python SDK (`tests/mcp/server.py`, run by the venv `cargo xtask test`
//! installs; see `loom_tests::py_clients`) configured in
//! `[[tenants.T.mcp_servers]]`. Its tools join that tenant's tool set as
//! `notes__<tool>` behind the same governance as component tools; its
//! unannotated tool counts as destructive; another tenant does not see it;
//! a server that answers too much, never answers, hangs at connect or dies
//! is reported clearly; a malformed entry is refused naming the key.

use loom_host::LoomConfig;
use loom_host::agent::{GovernedCallError, call_tool_governed};
use loom_host::engine::CallError;
use loom_host::governance::approval::{ApprovalDecision, FnApprover};
use loom_tests::{TestEnv, py_clients, scope};
use std::sync::Arc;

/// The Python MCP server script.
const SERVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp/server.py");

/// `[[tenants.acme.mcp_servers]]` running the fixture server over stdio,
/// with `extra` keys; tenant `globex` has none.
fn config(extra: &str) -> String {
    format!(
        "[[tenants.acme.mcp_servers]]\nname = \"notes\"\ncommand = {:?}\nargs = [{:?}]\n{extra}\n\
         [tenants.globex]\n",
        py_clients().display().to_string(),
        SERVER,
    )
}

fn denied(outcome: Result<loom_host::ToolOutput, GovernedCallError>) -> String {
    match outcome {
        Err(GovernedCallError::Denied { reason, .. }) => reason,
        other => panic!("expected a denial, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stdio_servers_tools_join_the_tenant_behind_its_governance() {
    let env = TestEnv::new();
    // Small caps, so the hostile tools meet them fast.
    let host = Arc::new(
        env.host(&config(
            "call_timeout_ms = 1500\nmax_response_bytes = 1000\nconnect_timeout_ms = 20000",
        ))
        .await,
    );
    let acme = || scope("acme", Some("alice"));

    let tools = host.mcp_clients().tools(&acme().tenant).await;
    let spec = |name: &str| {
        tools
            .iter()
            .find(|t| t.spec.name == name)
            .unwrap_or_else(|| panic!("no `{name}` among {tools:?}"))
            .spec
            .clone()
    };
    assert!(!spec("notes__lookup").destructive, "annotated read-only");
    assert!(
        spec("notes__add_note").destructive,
        "not annotated: destructive"
    );
    assert!(
        spec("notes__lookup").parameters["properties"]["key"].is_object(),
        "the server's input schema"
    );

    // Ungoverned (`loom tool call`'s path) and governed: a read-only tool runs.
    let looked = host
        .call_tool(acme(), "notes__lookup", r#"{"key":"k1"}"#)
        .await
        .expect("lookup");
    assert!(
        looked.output.contains("note k1: remember the milk"),
        "{}",
        looked.output
    );
    let governed = call_tool_governed(&host, acme(), "notes__lookup", r#"{"key":"k2"}"#, None)
        .await
        .expect("governed lookup");
    assert!(governed.output.contains("note k2"), "{}", governed.output);

    // The unannotated tool asks in the default mode; no approver denies.
    let reason =
        denied(call_tool_governed(&host, acme(), "notes__add_note", r#"{"text":"t"}"#, None).await);
    assert!(reason.contains("no approver is configured"), "{reason}");
    let approver = FnApprover::new(|_| async { Ok(ApprovalDecision::Allow) });
    let added = call_tool_governed(
        &host,
        acme(),
        "notes__add_note",
        r#"{"text":"t"}"#,
        Some(approver),
    )
    .await
    .expect("approved");
    assert!(added.output.contains("added: t"), "{}", added.output);

    // Another tenant does not see the server's tools.
    assert!(
        host.mcp_clients()
            .tools(&scope("globex", None).tenant)
            .await
            .is_empty()
    );
    match call_tool_governed(&host, scope("globex", None), "notes__lookup", "{}", None).await {
        Err(GovernedCallError::Call(CallError::UnknownTool { .. })) => {}
        other => panic!("globex must not reach acme's server: {other:?}"),
    }

    // Hostile answers: too large, never, and a process that dies mid-call.
    let error = host
        .call_tool(acme(), "notes__huge", r#"{"size":5000}"#)
        .await
        .expect_err("too large");
    assert!(error.to_string().contains("at most 1000"), "{error}");
    let error = host
        .call_tool(acme(), "notes__hang", "{}")
        .await
        .expect_err("timeout");
    assert!(
        error.to_string().contains("did not answer within 1500 ms"),
        "{error}"
    );
    let error = host
        .call_tool(acme(), "notes__die", "{}")
        .await
        .expect_err("died");
    let text = error.to_string();
    assert!(
        text.contains("dying on purpose") && text.contains("not retried"),
        "the death is reported with the server's last words: {text}"
    );
    // Connected again, lazily, on the next use.
    let again = host
        .call_tool(acme(), "notes__lookup", r#"{"key":"k3"}"#)
        .await
        .expect("reconnected");
    assert!(again.output.contains("note k3"), "{}", again.output);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_the_handshake_times_out_clearly() {
    let env = TestEnv::new();
    let host = env
        .host(
            "[[tenants.acme.mcp_servers]]\nname = \"mute\"\ncommand = \"sleep\"\nargs = [\"30\"]\n\
             connect_timeout_ms = 300\n",
        )
        .await;
    let started = std::time::Instant::now();
    let error = host
        .call_tool(scope("acme", None), "mute__anything", "{}")
        .await
        .expect_err("unavailable");
    assert!(
        error.to_string().contains(
            "MCP server `mute` is unavailable: it did not connect and list its tools within 300 ms"
        ),
        "{error}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // The failure is remembered for a back-off, not retried on every call.
    let error = host
        .call_tool(scope("acme", None), "mute__anything", "{}")
        .await
        .expect_err("still unavailable");
    assert!(error.to_string().contains("tried again in"), "{error}");
}

#[test]
fn loom_tool_call_reaches_a_configured_mcp_server() {
    let env = TestEnv::new();
    env.config(&config(""));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loom"))
        .args([
            "tool",
            "call",
            "--tenant",
            "acme",
            "notes__lookup",
            r#"{"key":"cli"}"#,
        ])
        .arg("--config")
        .arg(env.path().join("loom.toml"))
        .env_remove("RUST_LOG")
        .output()
        .expect("run loom");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("note cli: remember the milk"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn malformed_mcp_server_entries_are_refused_naming_the_key() {
    let cases = [
        (
            "[[tenants.a.mcp_servers]]\nname = \"x\"\ncommand = \"c\"\nurl = \"http://h/mcp\"\n",
            "tenants.a.mcp_servers[0]",
            "both `command` and `url`",
        ),
        (
            "[[tenants.a.mcp_servers]]\nname = \"x\"\n",
            "tenants.a.mcp_servers[0]",
            "needs `command`",
        ),
        (
            "[[tenants.a.mcp_servers]]\nname = \"a__b\"\ncommand = \"c\"\n",
            "tenants.a.mcp_servers[0].name",
            "without `__`",
        ),
        (
            "[[tenants.a.mcp_servers]]\nname = \"x\"\nurl = \"ftp://h/mcp\"\n",
            "tenants.a.mcp_servers[0].url",
            "http:// or https://",
        ),
        (
            "[[tenants.a.mcp_servers]]\nname = \"x\"\ncommand = \"c\"\n\
             [[tenants.a.mcp_servers]]\nname = \"x\"\ncommand = \"d\"\n",
            "tenants.a.mcp_servers[1].name",
            "listed twice",
        ),
        (
            "[[tenants.a.mcp_servers]]\nname = \"x\"\ncommand = \"c\"\ncall_timeout_ms = 0\n",
            "tenants.a.mcp_servers[0].call_timeout_ms",
            "greater than 0",
        ),
        (
            "[[tenants.a.mcp_servers]]\nname = \"x\"\nurl = \"http://h/mcp\"\n\
             headers = { authorization = { from_host = \"LOOM_TEST_SURELY_UNSET_VAR\" } }\n",
            "tenants.a.mcp_servers[0].headers.authorization",
            "LOOM_TEST_SURELY_UNSET_VAR",
        ),
    ];
    for (text, key, message) in cases {
        let error = LoomConfig::parse(text, std::path::Path::new("."))
            .expect_err("invalid")
            .to_string();
        assert!(
            error.contains(&format!("`{key}`")) && error.contains(message),
            "{text}\n=> {error}"
        );
    }
    let error = LoomConfig::parse(
        "[[tenants.a.mcp_servers]]\nname = \"x\"\ncommand = \"c\"\nshell = true\n",
        std::path::Path::new("."),
    )
    .expect_err("unknown key")
    .to_string();
    assert!(error.contains("shell"), "{error}");
}

/// Loom as the client of another Loom's `/mcp` (streamable HTTP): tenant
/// `globex` of a `loom serve` offers the calculator and the files tool;
/// tenant `acme` of a second host lists that URL with globex's key in
/// `headers`. acme's governed calls reach the remote tools as
/// `remote__<tool>`: the read-only one runs, the destructive one is denied
/// by acme's own chain before anything is sent, and the remote service
/// audits the call under globex.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_servers_tools_join_the_tenant_with_the_configured_headers() {
    use loom_host::service::{Service, server};
    let remote_env = TestEnv::new();
    remote_env.add_plugin(loom_tests::components::TOOL_CALCULATOR, "calculator", None);
    remote_env.add_plugin(
        loom_tests::components::TOOL_FILES,
        "files",
        Some("version = \"0.1.0\"\n[capabilities]\nfiles = [{ path = \"/data\", write = true }]\n"),
    );
    remote_env.mkdir("data");
    let (key, hash) = loom_host::tenancy::keys::new_key().expect("key");
    let remote_config = remote_env.config(&format!(
        "[audit]\npath = \"audit.jsonl\"\ninsecure_no_key = true\n\
         [tenants.globex]\napi_keys = [\"{hash}\"]\n\
         [tenants.globex.grants]\nfiles = [{{ host = \"data\", guest = \"/data\", write = true }}]\n\
         [tenants.globex.permissions]\nmode = \"bypass\"\n"
    ));
    let settings = remote_config.server.clone();
    let remote_host = Arc::new(loom_host::Host::start(remote_config).await.expect("host"));
    let service = Service::new(remote_host.clone(), None, settings, Vec::new());
    let listener = server::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let url = format!("http://{}/mcp", listener.local_addr().expect("addr"));
    let router = server::router(service.clone(), None);
    let serving = tokio::spawn(server::serve(service.clone(), listener, router));

    let env = TestEnv::new();
    let host = Arc::new(
        env.host(&format!(
            "[[tenants.acme.mcp_servers]]\nname = \"remote\"\nurl = {url:?}\n\
             headers = {{ authorization = \"Bearer {key}\", x-loom-user = \"acme-bot\" }}\n\
             [tenants.globex]\n"
        ))
        .await,
    );
    let acme = || scope("acme", Some("alice"));
    let tools = host.mcp_clients().tools(&acme().tenant).await;
    let names: Vec<&str> = tools.iter().map(|t| t.spec.name.as_str()).collect();
    assert!(names.contains(&"remote__calculate"), "{names:?}");
    let write = tools
        .iter()
        .find(|t| t.spec.name == "remote__write_file")
        .expect("remote__write_file");
    assert!(write.spec.destructive, "the remote server says so");
    assert!(
        host.mcp_clients()
            .tools(&scope("globex", None).tenant)
            .await
            .is_empty(),
        "globex of this host lists no servers"
    );

    let answer = call_tool_governed(
        &host,
        acme(),
        "remote__calculate",
        r#"{"expression":"6*7"}"#,
        None,
    )
    .await
    .expect("the remote calculator answers");
    assert_eq!(answer.output, "42.0");
    let reason = denied(
        call_tool_governed(
            &host,
            acme(),
            "remote__write_file",
            r#"{"path":"/data/x.txt","content":"x"}"#,
            None,
        )
        .await,
    );
    assert!(reason.contains("no approver"), "{reason}");
    assert!(
        !remote_env.path().join("data/x.txt").exists(),
        "acme's chain denied it before the remote bypass mode could run it"
    );

    // The remote service recorded the call under its own tenant, as the
    // user the headers named.
    remote_host.flush().await.expect("flush");
    let audit = std::fs::read_to_string(remote_env.path().join("audit.jsonl")).expect("audit");
    assert!(
        audit.lines().any(|l| l.contains("\"tenant\":\"globex\"")
            && l.contains("\"user\":\"acme-bot\"")
            && l.contains("calculate")),
        "{audit}"
    );
    service.shutdown_token().cancel();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), serving).await;
}
