//! `loom run` with `[telemetry] file = "t.jsonl"`: the run's spans and
//! metrics reach the file, with the usage, the tenant and the user.

use loom_tests::{TestEnv, components};
use std::process::{Command, Output};

fn loom(env: &TestEnv, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loom"))
        .args(args)
        .arg("--config")
        .arg(env.path().join("loom.toml"))
        .env_remove("RUST_LOG")
        .env_remove("LOOM_AUDIT_KEY")
        .output()
        .expect("run loom")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// ReAct over a scripted model that calls the calculator, then answers.
fn setup(telemetry: &str) -> TestEnv {
    let env = TestEnv::new();
    env.add_plugin(components::ARCH_REACT, "react", None);
    env.add_plugin(components::TOOL_CALCULATOR, "calculator", None);
    std::fs::write(
        env.path().join("script.yaml"),
        "turns:\n  - text: \"\"\n    tool_calls:\n      - name: calculate\n        arguments: { expression: \"6*7\" }\n  - text: \"The answer is {last_tool_result}\"\n",
    )
    .unwrap();
    env.config("[agent]\nmodel = \"scripted:script.yaml\"\n[tenants.acme]\n");
    // Appended as written: a bad value must reach `loom`, not this setup.
    let path = env.path().join("loom.toml");
    let config = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{config}{telemetry}")).unwrap();
    env
}

#[test]
fn telemetry_file_of_loom_run_holds_spans_with_usage_tenant_and_user() {
    let env = setup("[telemetry]\nfile = \"t.jsonl\"\n");
    let out = loom(&env, &["run", "--user", "alice", "what is 6*7?"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("The answer is 42.0"));
    // Relative to the config file's directory.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(env.path().join("t.jsonl"))
        .expect("the telemetry file")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let spans: Vec<&serde_json::Value> = lines.iter().filter(|l| l["type"] == "span").collect();
    let named = |name: &str| {
        spans
            .iter()
            .copied()
            .filter(|s| s["name"] == name)
            .collect::<Vec<_>>()
    };
    let runs = named("invoke_agent react");
    assert_eq!(runs.len(), 1, "{lines:#?}");
    let run = runs[0];
    assert_eq!(run["attributes"]["loom.tenant"], "acme");
    assert_eq!(run["attributes"]["loom.user"], "alice");
    assert!(
        run["attributes"]["gen_ai.usage.input_tokens"]
            .as_u64()
            .unwrap()
            > 0
    );
    let chats = spans
        .iter()
        .filter(|s| s["attributes"]["gen_ai.operation.name"] == "chat")
        .collect::<Vec<_>>();
    assert_eq!(chats.len(), 2, "{lines:#?}");
    for chat in chats {
        assert!(
            chat["attributes"]["gen_ai.usage.input_tokens"]
                .as_u64()
                .unwrap()
                > 0
        );
        assert_eq!(chat["attributes"]["loom.tenant"], "acme");
        assert_eq!(chat["attributes"]["loom.user"], "alice");
        assert_eq!(chat["parent_span_id"], run["span_id"]);
        assert_eq!(chat["trace_id"], run["trace_id"]);
    }
    let tool = named("execute_tool calculate");
    assert_eq!(tool.len(), 1);
    assert_eq!(tool[0]["attributes"]["gen_ai.tool.name"], "calculate");
    assert!(
        lines
            .iter()
            .any(|l| l["type"] == "metric" && l["name"] == "gen_ai.client.token.usage"),
        "{lines:#?}"
    );
    // A second run appends.
    let out = loom(&env, &["run", "--user", "bob", "again"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let after = std::fs::read_to_string(env.path().join("t.jsonl")).unwrap();
    assert!(after.lines().count() > lines.len());
    assert!(after.contains("\"loom.user\":\"bob\""));
}

#[test]
fn telemetry_settings_that_cannot_work_stop_loom_with_exit_two() {
    let env = setup("[telemetry]\nlevel = \"loud\"\n");
    let out = loom(&env, &["run", "--user", "alice", "hi"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("telemetry.level"),
        "{}",
        text(&out.stderr)
    );
    // The file cannot be created where a directory stands.
    let env = setup("[telemetry]\nfile = \"plugins\"\n");
    let out = loom(&env, &["run", "--user", "alice", "hi"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cannot open the telemetry file"),
        "{}",
        text(&out.stderr)
    );
}
