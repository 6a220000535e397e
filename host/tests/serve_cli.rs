//! `loom serve` as the README starts it, driven with `curl`: a run for
//! tenant A answers (blocking and as an SSE stream), tenant B's key cannot
//! read it, and SIGTERM stops the service cleanly.

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
