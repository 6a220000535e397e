//! `loom serve` as the README starts it, driven by clients the project did
//! not write: `curl` (a run for tenant A answers, blocking and as an SSE
//! stream, tenant B's key cannot read it, SIGTERM stops the service
//! cleanly), the official `openai` Python package against
//! `/v1/chat/completions`, and the official MCP Python SDK against `/mcp`.

use loom_tests::{TestEnv, components};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const SCRIPT: &str = r#"{"turns": [
  {"text": "", "tool_calls": [{"name": "calculate", "arguments": {"expression": "6*7"}}]},
  {"text": "The answer is {last_tool_result}."}
]}"#;

/// A `loom serve` child and the address it listens on.
struct Server {
    child: Child,
    base: String,
    stderr: mpsc::Receiver<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(env: &TestEnv) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_loom"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(env.path().join("loom.toml"))
        .current_dir(env.path())
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn loom serve");
    let stderr = child.stderr.take().expect("stderr");
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let base = loop {
        let line = received
            .recv_timeout(Duration::from_secs(120))
            .expect("loom serve prints its address");
        if let Some(rest) = line.strip_prefix("loom serve: listening on ") {
            break rest.trim().to_owned();
        }
    };
    Server {
        child,
        base,
        stderr: received,
    }
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60"])
        .args(args)
        .output()
        .expect("curl is installed");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn curl_runs_for_tenant_a_and_tenant_b_cannot_read_the_run() {
    let env = TestEnv::new();
    env.add_plugin(components::ARCH_REACT, "react", None);
    env.add_plugin(components::TOOL_CALCULATOR, "calculator", None);
    std::fs::write(env.path().join("script.json"), SCRIPT).expect("script");
    let (a_key, a_hash) = loom_host::tenancy::keys::new_key().expect("key");
    let (b_key, b_hash) = loom_host::tenancy::keys::new_key().expect("key");
    env.config(&format!(
        "[agent]\ninstructions = \"Answer.\"\nmodel = \"scripted:script.json\"\n\
         architecture = \"react\"\n[tenants.a]\napi_keys = [\"{a_hash}\"]\n\
         [tenants.b]\napi_keys = [\"{b_hash}\"]\n"
    ));
    let mut server = start(&env);
    let runs = format!("{}/v1/runs", server.base);
    let a_auth = format!("Authorization: Bearer {a_key}");
    let b_auth = format!("Authorization: Bearer {b_key}");

    // A streamed run, as the README shows it.
    let stream = curl(&[
        "-N",
        "-H",
        &a_auth,
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"input": "What is 6 times 7?", "user": "alice", "stream": true}"#,
        &runs,
    ]);
    assert!(stream.contains("event: started"), "{stream}");
    assert!(stream.contains("event: tool_call"), "{stream}");
    assert!(stream.contains("event: completed"), "{stream}");
    assert!(stream.contains("The answer is 42.0."), "{stream}");

    // A blocking run answers with the run.
    let run: serde_json::Value = serde_json::from_str(&curl(&[
        "-H",
        &a_auth,
        "-H",
        "Content-Type: application/json",
        "-d",
        r#"{"input": "6*7?", "user": "alice"}"#,
        &runs,
    ]))
    .expect("json");
    assert_eq!(run["output"], "The answer is 42.0.", "{run}");
    let id = run["id"].as_str().expect("id");
    let url = format!("{runs}/{id}");

    // Tenant A reads it; tenant B's key is refused, as if it did not exist.
    let mine: serde_json::Value =
        serde_json::from_str(&curl(&["-H", &a_auth, &url])).expect("json");
    assert_eq!(mine["status"], "completed");
    let status = curl(&["-o", "/dev/null", "-w", "%{http_code}", "-H", &b_auth, &url]);
    assert_eq!(status, "404");
    let status = curl(&["-o", "/dev/null", "-w", "%{http_code}", &url]);
    assert_eq!(status, "401");

    // SIGTERM drains and stops.
    let pid = server.child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let status = server.child.wait().expect("wait");
    assert!(status.success(), "loom serve exits 0 on SIGTERM");
    let said: Vec<String> = server.stderr.try_iter().collect();
    assert!(
        said.iter().any(|l| l.contains("loom serve: stopped")),
        "{said:?}"
    );
}

#[test]
fn serve_without_keys_on_loopback_prints_a_key_for_this_process() {
    let env = TestEnv::new();
    env.config("[tenants.solo]\n");
    let server = start(&env);
    let key_line = loop {
        let line = server
            .stderr
            .recv_timeout(Duration::from_secs(30))
            .expect("a key is printed");
        if let Some(rest) = line
            .trim()
            .strip_prefix("tenant solo: Authorization: Bearer ")
        {
            break rest.to_owned();
        }
    };
    let health = curl(&[&format!("{}/healthz", server.base)]);
    assert!(health.contains("ok"), "{health}");
    let auth = format!("Authorization: Bearer {key_line}");
    let listed = curl(&["-H", &auth, &format!("{}/v1/runs", server.base)]);
    assert!(listed.contains("\"object\":\"list\""), "{listed}");
}

#[test]
fn keys_new_prints_a_key_and_the_hash_to_configure() {
    let out = Command::new(env!("CARGO_BIN_EXE_loom"))
        .args(["keys", "new", "--tenant", "acme"])
        .output()
        .expect("run loom");
    assert!(out.status.success());
    let key = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let said = String::from_utf8_lossy(&out.stderr);
    let hash = loom_host::tenancy::keys::ApiKeyHash::of(&key).to_string();
    assert!(
        said.contains(&format!("[tenants.acme]\napi_keys = [\"{hash}\"]")),
        "{said}"
    );
    assert!(!said.contains(&key), "the key is printed once, on stdout");
}

/// The official `openai` Python package, talking to `loom serve` as it
/// would to OpenAI: only the base URL and the key change.
const OPENAI_CLIENT: &str = r#"
import sys
from openai import OpenAI
client = OpenAI(base_url=sys.argv[1] + "/v1", api_key=sys.argv[2], max_retries=0)
reply = client.chat.completions.create(
    model="loom", user="alice",
    messages=[{"role": "user", "content": "What is 6 times 7?"}])
print("PLAIN", reply.choices[0].message.content, reply.choices[0].finish_reason,
      reply.usage.total_tokens > 0)
text = ""
for chunk in client.chat.completions.create(
        model="loom", user="alice", stream=True,
        messages=[{"role": "user", "content": "What is 6 times 7?"}]):
    if chunk.choices and chunk.choices[0].delta.content:
        text += chunk.choices[0].delta.content
print("STREAM", text)
try:
    client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "hi"}])
except Exception as error:
    print("ERROR", type(error).__name__, getattr(error, "status_code", None))
"#;

#[test]
fn the_openai_python_package_gets_answers_from_a_loom_agent() {
    let python = loom_tests::py_clients();
    let env = TestEnv::new();
    env.add_plugin(components::ARCH_REACT, "react", None);
    env.add_plugin(components::TOOL_CALCULATOR, "calculator", None);
    std::fs::write(env.path().join("script.json"), SCRIPT).expect("script");
    let (key, hash) = loom_host::tenancy::keys::new_key().expect("key");
    env.config(&format!(
        "[agent]\ninstructions = \"Answer.\"\nmodel = \"scripted:script.json\"\n\
         architecture = \"react\"\n[tenants.a]\napi_keys = [\"{hash}\"]\n"
    ));
    let server = start(&env);
    let out = Command::new(&python)
        .args(["-c", OPENAI_CLIENT, &server.base, &key])
        .output()
        .expect("run python");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("PLAIN The answer is 42.0. stop True"),
        "{said}"
    );
    assert!(said.contains("STREAM The answer is 42.0."), "{said}");
    assert!(said.contains("ERROR NotFoundError 404"), "{said}");
}

/// The MCP Python client of the MCP tests.
const MCP_CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mcp/client.py");

#[test]
fn the_mcp_python_sdk_lists_and_calls_tools_at_slash_mcp_with_a_tenants_key() {
    let python = loom_tests::py_clients();
    let env = TestEnv::new();
    env.add_plugin(components::TOOL_CALCULATOR, "calculator", None);
    env.add_plugin(
        components::TOOL_FILES,
        "files",
        Some("version = \"0.1.0\"\n[capabilities]\nfiles = [{ path = \"/data\", write = true }]\n"),
    );
    env.mkdir("data");
    let (key, hash) = loom_host::tenancy::keys::new_key().expect("key");
    let (b_key, b_hash) = loom_host::tenancy::keys::new_key().expect("key");
    env.config(&format!(
        "[audit]\npath = \"audit.jsonl\"\ninsecure_no_key = true\n\
         [tenants.a]\napi_keys = [\"{hash}\"]\n\
         [tenants.a.grants]\nfiles = [{{ host = \"data\", guest = \"/data\", write = true }}]\n\
         [tenants.a.permissions]\ndeny = [\"write_file\"]\n\
         [tenants.b]\napi_keys = [\"{b_hash}\"]\n"
    ));
    let server = start(&env);
    let run = |key: &str| {
        let spec = serde_json::json!({
            "transport": "http",
            "url": format!("{}/mcp", server.base),
            "headers": {"Authorization": format!("Bearer {key}"), "X-Loom-User": "alice"},
            "mode": "legacy",
            "calls": [
                {"name": "calculate", "arguments": {"expression": "6*7"}},
                {"name": "write_file", "arguments": {"path": "/data/out.txt", "content": "x"}},
            ],
        });
        let out = Command::new(&python)
            .arg(MCP_CLIENT)
            .arg(spec.to_string())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .output()
            .expect("run the Python MCP client");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "the MCP client failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str::<serde_json::Value>(stdout.trim()).expect("a JSON report")
    };
    let report = run(&key);
    let tools = report["tools"].as_array().expect("tools");
    assert!(tools.iter().any(|t| t["name"] == "calculate"), "{report}");
    let write = tools
        .iter()
        .find(|t| t["name"] == "write_file")
        .expect("write_file is listed");
    assert_eq!(write["annotations"]["destructiveHint"], true, "{write}");
    assert_eq!(report["calls"][0]["isError"], false, "{report}");
    assert_eq!(report["calls"][0]["text"], "42.0", "{report}");
    assert_eq!(report["calls"][1]["isError"], true, "{report}");
    let denied = report["calls"][1]["text"].as_str().unwrap_or_default();
    assert!(
        denied.starts_with("DENIED: ") && denied.contains("deny list"),
        "{denied}"
    );
    assert!(!env.path().join("data/out.txt").exists());

    // Without a key the SDK gets nothing.
    let spec = serde_json::json!({
        "transport": "http",
        "url": format!("{}/mcp", server.base),
        "mode": "legacy",
    });
    let out = Command::new(&python)
        .arg(MCP_CLIENT)
        .arg(spec.to_string())
        .output()
        .expect("run the Python MCP client");
    assert!(
        !out.status.success(),
        "an MCP client without a key is refused"
    );

    // The calls are in tenant a's audit log as alice's, none in b's.
    let a_auth = format!("Authorization: Bearer {key}");
    let audit = curl(&["-H", &a_auth, &format!("{}/v1/audit", server.base)]);
    assert!(audit.contains("\"user\":\"alice\""), "{audit}");
    assert!(audit.contains("calculate"), "{audit}");
    let b_auth = format!("Authorization: Bearer {b_key}");
    let theirs = curl(&["-H", &b_auth, &format!("{}/v1/audit", server.base)]);
    assert!(!theirs.contains("calculate"), "{theirs}");
}
