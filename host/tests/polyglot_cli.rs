//! `loom tool call` runs the JavaScript, Python and wit-bindgen-only
//! example tools from a plugin directory, through the sandbox, with the
//! caller's grants. The JavaScript and Python components come from `cargo
//! xtask build-polyglot` (see `loom_tests::polyglot_component`); without
//! them this test fails, naming the command.

use loom_tests::{TestEnv, components, polyglot_component};
use std::process::{Command, Output};

fn loom(env: &TestEnv, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loom"))
        .args(args)
        .arg("--config")
        .arg(env.path().join("loom.toml"))
        .env_remove("RUST_LOG")
        .output()
        .expect("run loom")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The JSON `loom tool call` printed, after checking it exited 0.
fn ok_json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "exit {:?}: {}{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    serde_json::from_str(text(&out.stdout).trim()).expect("the tool printed JSON")
}

#[test]
fn loom_tool_call_runs_the_js_py_and_raw_tools_with_the_callers_grants() {
    let env = TestEnv::new();
    env.add_plugin(
        &polyglot_component("js-tool"),
        "js-tool",
        Some("[capabilities]\nhttp = [\"127.0.0.1:9\"]\n"),
    );
    env.add_plugin(
        &polyglot_component("py-tool"),
        "py-tool",
        Some("[capabilities]\nfiles = [\"/data\"]\n"),
    );
    env.add_plugin(components::EXAMPLE_RAW_WIT_TOOL, "raw", None);
    env.mkdir("data");
    std::fs::write(env.path().join("data/hello.txt"), "hi from acme").unwrap();
    env.config("[tenants.acme.grants]\nfiles = [{ host = \"data\", guest = \"/data\" }]\n[tenants.globex]\n");

    for (tool, language) in [
        ("js_run_context", "javascript"),
        ("py_run_context", "python"),
        ("raw_run_context", "rust-wit-bindgen"),
    ] {
        let out = loom(
            &env,
            &[
                "tool",
                "call",
                "--tenant",
                "acme",
                "--user",
                "alice",
                "--session",
                "chat-1",
                tool,
            ],
        );
        let context = ok_json(&out);
        assert_eq!(context["language"], language, "{context}");
        assert_eq!(context["tenant"], "acme", "{context}");
        assert_eq!(context["user_id"], "alice", "{context}");
        assert_eq!(context["session_id"], "chat-1", "{context}");
    }

    // acme's grant: the Python tool reads the file; globex has no grant.
    let args = ["py_read_file", r#"{"path":"/data/hello.txt"}"#];
    let out = loom(
        &env,
        &[&["tool", "call", "--tenant", "acme"], &args[..]].concat(),
    );
    assert_eq!(ok_json(&out)["content"], "hi from acme");
    let out = loom(
        &env,
        &[&["tool", "call", "--tenant", "globex"], &args[..]].concat(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let shown = text(&out.stdout) + &text(&out.stderr);
    assert!(shown.contains("denied"), "{shown}");

    // Neither tenant is granted HTTP: the JavaScript tool's request is refused.
    let out = loom(
        &env,
        &[
            "tool",
            "call",
            "--tenant",
            "acme",
            "js_http_get",
            r#"{"url":"http://127.0.0.1:9/"}"#,
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let shown = text(&out.stdout) + &text(&out.stderr);
    assert!(shown.contains("denied"), "{shown}");

    let out = loom(
        &env,
        &[
            "tool",
            "call",
            "--tenant",
            "globex",
            "raw_add",
            r#"{"a":1,"b":2}"#,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "3.0");
}
