//! The `loom` binary: exit codes, JSON output and error messages.

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

fn setup() -> TestEnv {
    let env = TestEnv::new();
    env.add_plugin(components::TOOL_CALCULATOR, "calculator", None);
    env.add_plugin(
        components::TOOL_FILES,
        "files",
        Some("version = \"0.1.0\"\n[capabilities]\nfiles = [{ path = \"/data\", write = true }]\n"),
    );
    env.mkdir("data");
    std::fs::write(env.path().join("data/hello.txt"), "hi there").unwrap();
    env.config("[tenants.acme.grants]\nfiles = [{ host = \"data\", guest = \"/data\" }]\n[tenants.globex]\n");
    env
}

#[test]
fn tool_call_prints_output_and_exits_zero() {
    let env = setup();
    let out = loom(
        &env,
        &[
            "tool",
            "call",
            "--tenant",
            "acme",
            "--user",
            "alice",
            "calculate",
            r#"{"expression":"1+2"}"#,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "3.0");
    let out = loom(
        &env,
        &[
            "tool",
            "call",
            "--tenant",
            "acme",
            "read_file",
            r#"{"path":"/data/hello.txt"}"#,
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["ok"], true);
    assert_eq!(json["output"]["content"], "hi there");
}

#[test]
fn denial_and_tool_errors_exit_one() {
    let env = setup();
    let out = loom(
        &env,
        &[
            "tool",
            "call",
            "--tenant",
            "acme",
            "write_file",
            r#"{"path":"/data/x","content":"y"}"#,
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("denied"),
        "{}",
        text(&out.stderr)
    );
    let out = loom(
        &env,
        &[
            "tool",
            "call",
            "--tenant",
            "globex",
            "read_file",
            r#"{"path":"/data/hello.txt"}"#,
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["ok"], false);
    assert_eq!(json["error"]["kind"], "tool");
}

#[test]
fn usage_errors_exit_two_with_a_reason() {
    let env = setup();
    let out = loom(
        &env,
        &["tool", "call", "--tenant", "nobody", "calculate", "{}"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("acme, globex"),
        "{}",
        text(&out.stderr)
    );
    let out = loom(
        &env,
        &["tool", "call", "--tenant", "acme", "calculate", "not json"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("not JSON"),
        "{}",
        text(&out.stderr)
    );
    std::fs::write(
        env.path().join("loom.toml"),
        "[tenants.acme.limits]\ncpu_msec = 5\n",
    )
    .unwrap();
    let out = loom(&env, &["plugins", "list"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("cpu_msec"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn plugins_list_shows_tools_and_grants() {
    let env = setup();
    let out = loom(&env, &["plugins", "list", "--tenant", "acme", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let files = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "files")
        .unwrap();
    assert_eq!(files["kind"], "tool");
    assert_eq!(files["version"], "0.1.0");
    assert_eq!(files["tools"].as_array().unwrap().len(), 3);
    assert_eq!(files["requested"]["files"][0]["path"], "/data");
    assert_eq!(files["granted"]["files"][0][1], "/data");
    assert_eq!(
        files["granted"]["files"][0][2], false,
        "read-only: the tenant did not grant write"
    );
    let human = loom(&env, &["plugins", "list"]);
    assert!(
        text(&human.stdout).contains("write_file (destructive)"),
        "{}",
        text(&human.stdout)
    );
}

#[test]
fn plugins_list_reports_load_errors_and_exits_one() {
    let env = setup();
    std::fs::write(
        env.plugins().join("broken.wasm"),
        b"\0asm\x0d\0\x01\0garbage",
    )
    .unwrap();
    let out = loom(&env, &["plugins", "list"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("broken [global] FAILED TO LOAD"),
        "{stdout}"
    );
    assert!(
        stdout.contains("calculate"),
        "other plugins still listed: {stdout}"
    );
}

#[test]
fn inspect_describes_and_explains_rejection() {
    let env = setup();
    let out = loom(
        &env,
        &["plugins", "inspect", components::TOOL_RUN_CONTEXT, "--json"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["accepted"], true);
    assert_eq!(report["world"], "loom:plugin/tool-plugin@0.1.3");
    assert!(
        report["exports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "loom:plugin/tool@0.1.3")
    );
    assert!(
        report["imports"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "loom:plugin/context@0.1.3")
    );
    assert_eq!(report["tools"][0]["name"], "run_context");

    let out = loom(
        &env,
        &["plugins", "inspect", components::FIXTURE_BAD_IMPORT],
    );
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("REJECTED") && stdout.contains("evil:backdoor/api"),
        "{stdout}"
    );

    let core = env.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let out = loom(
        &env,
        &["plugins", "inspect", core.to_str().unwrap(), "--json"],
    );
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        report["rejection"]
            .as_str()
            .unwrap()
            .contains("core WebAssembly module"),
        "{report}"
    );
}

#[test]
fn inspect_reports_the_contract_version_and_its_support() {
    let env = setup();
    // One component built against each release this host serves.
    for (component, version, adapter) in [
        (components::FIXTURE_LEGACY_TOOL, "0.1.0", "semver"),
        (components::FIXTURE_ARCHITECTURE_STUB, "0.1.0", "semver"),
        (components::FIXTURE_HOSTILE_ARCH, "0.1.1", "semver"),
        (components::FIXTURE_TOOL_0_1_2, "0.1.2", "semver"),
        (components::TOOL_RUN_CONTEXT, "0.1.3", "native"),
    ] {
        let out = loom(&env, &["plugins", "inspect", component, "--json"]);
        assert!(out.status.success(), "{component}: {}", text(&out.stdout));
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["host_contract"], "loom:plugin@0.1.3");
        assert_eq!(report["supported"], true, "{report}");
        let contract = report["contract"].as_array().unwrap();
        assert_eq!(contract.len(), 1, "{report}");
        assert_eq!(contract[0]["package"], format!("loom:plugin@{version}"));
        assert_eq!(contract[0]["status"], "supported");
        assert_eq!(contract[0]["adapter"], adapter);
        let human = text(&loom(&env, &["plugins", "inspect", component]).stdout);
        assert!(
            human.contains(&format!("contract:  loom:plugin@{version} — supported")),
            "{human}"
        );
    }

    // A component of a later, incompatible version: refused, saying which
    // version this host implements and how to fix it.
    let out = loom(
        &env,
        &[
            "plugins",
            "inspect",
            components::FIXTURE_FUTURE_VERSION,
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["supported"], false);
    assert_eq!(report["accepted"], false);
    let future = &report["contract"][0];
    assert_eq!(future["package"], "loom:plugin@0.2.0");
    assert_eq!(future["status"], "newer_than_host");
    assert_eq!(future["same_track"], false);
    let detail = future["detail"].as_str().unwrap();
    assert!(
        detail.contains("0.1.0 to 0.1.3") && detail.contains("upgrade Loom"),
        "{detail}"
    );
    assert!(
        report["rejection"]
            .as_str()
            .unwrap()
            .contains("rebuild it against wit/plugin@0.1.3"),
        "{report}"
    );
    let human = text(
        &loom(
            &env,
            &["plugins", "inspect", components::FIXTURE_FUTURE_VERSION],
        )
        .stdout,
    );
    assert!(
        human.contains("contract:  loom:plugin@0.2.0 — newer than this host")
            && human.contains("verdict:   REJECTED: built against loom:plugin/tool@0.2.0"),
        "{human}"
    );

    // A core module has no contract to report.
    let core = env.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let out = loom(
        &env,
        &["plugins", "inspect", core.to_str().unwrap(), "--json"],
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["contract"], serde_json::json!([]));
    assert_eq!(report["supported"], false);
}

#[test]
fn plugins_list_shows_the_contract_version_of_each_plugin() {
    let env = setup();
    env.add_plugin(components::FIXTURE_TOOL_0_1_2, "tool-0-1-2", None);
    let out = loom(&env, &["plugins", "list", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = |name: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("{name} listed"))
            .clone()
    };
    assert_eq!(
        row("tool-0-1-2")["contract"][0]["package"],
        "loom:plugin@0.1.2"
    );
    assert_eq!(row("tool-0-1-2")["contract"][0]["status"], "supported");
    assert_eq!(
        row("calculator")["contract"][0]["package"],
        "loom:plugin@0.1.3"
    );
    let human = text(&loom(&env, &["plugins", "list"]).stdout);
    assert!(
        human.contains("contract:  loom:plugin@0.1.2 (supported)"),
        "{human}"
    );
}

fn agent_setup() -> TestEnv {
    let env = TestEnv::new();
    env.add_plugin(components::ARCH_REACT, "react", None);
    env.add_plugin(components::TOOL_CALCULATOR, "calculator", None);
    std::fs::write(
        env.path().join("script.yaml"),
        "turns:\n  - text: \"\"\n    tool_calls:\n      - name: calculate\n        arguments: { expression: \"6*7\" }\n  - text: \"The answer is {last_tool_result}\"\n",
    )
    .unwrap();
    env.config("[agent]\nmodel = \"scripted:script.yaml\"\n[tenants.acme]\n");
    env
}

#[test]
fn run_streams_progress_and_prints_the_answer() {
    let env = agent_setup();
    let out = loom(
        &env,
        &["run", "--user", "alice", "--session", "s1", "what is 6*7?"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("The answer is 42.0"),
        "{}",
        text(&out.stdout)
    );
    let stderr = text(&out.stderr);
    assert!(stderr.contains("-> calculate"), "{stderr}");
    assert!(stderr.contains("<- calculate ok: 42.0"), "{stderr}");
    assert!(stderr.contains("2 turn(s)"), "{stderr}");
    // The session is stored and continued.
    let out = loom(
        &env,
        &[
            "run",
            "--user",
            "alice",
            "--session",
            "s1",
            "again",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let events: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.first().unwrap()["type"], "started");
    let last = events.last().unwrap();
    assert_eq!(last["type"], "completed");
    assert_eq!(last["result"]["output"], "The answer is 42.0");
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "tool_result" && e["ok"] == true)
    );
}

#[test]
fn run_without_a_model_explains_how_to_set_one() {
    let env = agent_setup();
    env.config("[tenants.acme]\n");
    let out = loom(&env, &["run", "hi"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("openai:gpt-4.1-mini"),
        "{}",
        text(&out.stderr)
    );
    let out = loom(&env, &["run", "--model", "nonsense:x", "hi"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("Valid examples"),
        "{}",
        text(&out.stderr)
    );
}

/// `loom` in `dir` with no configuration at all: no loom.toml, no
/// `--config`, data under `data` (standing in for the user's data directory).
fn loom_bare(dir: &std::path::Path, data: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_loom"))
        .args(args)
        .current_dir(dir)
        .env_remove("LOOM_CONFIG")
        .env_remove("RUST_LOG")
        .env("LOOM_DATA_DIR", data)
        .output()
        .expect("run loom")
}

#[test]
fn runs_out_of_the_box_with_no_config() {
    let empty = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let out = loom_bare(
        empty.path(),
        data.path(),
        &["run", "--model", "echo", "hello"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("hello"), "{}", text(&out.stdout));
    // The built-in tools answer for the built-in tenant.
    let out = loom_bare(
        empty.path(),
        data.path(),
        &["tool", "call", "calculate", r#"{"expression":"6*7"}"#],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "42.0");
    // Nothing was written into the current directory.
    assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0);
    let out = loom_bare(
        empty.path(),
        data.path(),
        &["plugins", "inspect", components::TOOL_RUN_CONTEXT],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0);
    let out = loom_bare(empty.path(), data.path(), &["plugins", "list"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed = text(&out.stdout);
    for name in [
        "react",
        "self-refine",
        "plan-and-execute",
        "rewoo",
        "tree-of-thoughts",
        "debate",
        "reflexion",
        "actor-critic",
        "router",
        "supervisor",
        "swarm",
        "blackboard",
        "calculator",
        "files",
        "http-fetch",
        "run-context",
        "deny-args",
        "kv-memory",
    ] {
        assert!(listed.contains(name), "{name} in {listed}");
    }
    // Every built-in architecture completes a run with the offline model.
    for arch in [
        "react",
        "self-refine",
        "plan-and-execute",
        "rewoo",
        "tree-of-thoughts",
        "debate",
        "reflexion",
        "actor-critic",
        "router",
        "supervisor",
        "swarm",
        "blackboard",
    ] {
        let out = loom_bare(
            empty.path(),
            data.path(),
            &["run", "--arch", arch, "--model", "echo", "hello"],
        );
        assert!(out.status.success(), "{arch}: {}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("hello"),
            "{arch}: {}",
            text(&out.stdout)
        );
    }
}

#[test]
fn init_writes_a_config_that_loads() {
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let out = loom_bare(dir.path(), data.path(), &["init"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let written = std::fs::read_to_string(dir.path().join("loom.toml")).unwrap();
    assert!(written.contains("[tenants.default.grants]"));
    let again = loom_bare(dir.path(), data.path(), &["init"]);
    assert_eq!(again.status.code(), Some(2));
    assert!(
        text(&again.stderr).contains("--force"),
        "{}",
        text(&again.stderr)
    );
    // The written file is the one `loom` now uses.
    let out = loom_bare(dir.path(), data.path(), &["run", "--model", "echo", "hi"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(dir.path().join(".loom").is_dir(), "data_dir from the file");
}

#[test]
fn a_closed_stdout_ends_quietly() {
    let env = setup();
    let mut child = Command::new(env!("CARGO_BIN_EXE_loom"))
        .args(["plugins", "inspect", components::TOOL_FILES])
        .arg("--config")
        .arg(env.path().join("loom.toml"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Close the read end before loom writes, as `| head -0` would.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// An agent setup with a per-user budget of one run a day and an audit log.
fn governed_setup() -> TestEnv {
    let env = agent_setup();
    std::fs::write(
        env.path().join("audit.key"),
        "cli-test-audit-key-0123456789",
    )
    .unwrap();
    env.config(
        "[agent]\nmodel = \"scripted:script.yaml\"\n\
         [audit]\npath = \"audit.jsonl\"\nkey_file = \"audit.key\"\n\
         [tenants.acme.user_budgets]\nruns_per_day = 1\n",
    );
    env
}

#[test]
fn a_budget_stops_the_offender_with_exit_one_and_show_reports_it() {
    let env = governed_setup();
    let out = loom(&env, &["run", "--user", "alice", "what is 6*7?"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = loom(&env, &["run", "--user", "alice", "again?"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("interrupted: budget:runs_per_day"),
        "{stderr}"
    );
    // Another user of the tenant still runs.
    let out = loom(&env, &["run", "--user", "bob", "what is 6*7?"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = loom(&env, &["budget", "show", "--user", "alice", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["caps"][0]["key"], "runs_per_day");
    assert_eq!(shown["caps"][0]["used"], 1.0);
    assert_eq!(shown["caps"][0]["limit"], 1.0);
}

#[test]
fn audit_verify_names_the_line_of_every_kind_of_tampering() {
    let env = governed_setup();
    for user in ["alice", "bob", "carol"] {
        let out = loom(&env, &["run", "--user", user, "what is 6*7?"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let log = env.path().join("audit.jsonl");
    let log_arg = log.display().to_string();
    let out = loom(&env, &["audit", "verify", &log_arg]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let count: usize = text(&out.stdout)
        .split("ok, ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    let original = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = original.lines().collect();
    assert_eq!(lines.len(), count);
    let head = std::fs::read(format!("{log_arg}.head")).unwrap();
    let tampered = |name: &str, lines: Vec<String>| {
        let path = env.path().join(format!("{name}.jsonl"));
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        std::fs::write(format!("{}.head", path.display()), &head).unwrap();
        let out = loom(&env, &["audit", "verify", &path.display().to_string()]);
        assert_eq!(out.status.code(), Some(1), "{name} was not detected");
        text(&out.stderr)
    };
    let owned = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // An edit: line 5 names another actor.
    let mut edited = owned(&lines);
    edited[4] = edited[4].replacen("\"actor\":\"", "\"actor\":\"x", 1);
    assert_ne!(edited[4], lines[4]);
    assert!(tampered("edited", edited).contains("line 5"));
    // A deletion of line 4: found at the line after it.
    let mut deleted = owned(&lines);
    deleted.remove(3);
    assert!(tampered("deleted", deleted).contains("line 4"));
    // An insertion: a copy of line 2 before line 6.
    let mut inserted = owned(&lines);
    inserted.insert(5, lines[1].to_owned());
    assert!(tampered("inserted", inserted).contains("line 6"));
    // A reordering of lines 7 and 8.
    let mut swapped = owned(&lines);
    swapped.swap(6, 7);
    assert!(tampered("swapped", swapped).contains("line 7"));
    // A truncation: the last three entries are gone.
    let truncated = owned(&lines[..lines.len() - 3]);
    let stderr = tampered("truncated", truncated);
    assert!(
        stderr.contains(&format!("line {}", lines.len() - 2)),
        "{stderr}"
    );
    // The untouched log still verifies, and `show` filters by user.
    let out = loom(&env, &["audit", "show", "--user", "bob", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!shown.is_empty() && shown.iter().all(|e| e["user"] == "bob"));
}

#[test]
fn audit_without_a_key_refuses_to_start() {
    let env = agent_setup();
    std::fs::write(
        env.path().join("loom.toml"),
        "[audit]\npath = \"audit.jsonl\"\n[agent]\nmodel = \"scripted:script.yaml\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_loom"))
        .args(["run", "hi", "--config"])
        .arg(env.path().join("loom.toml"))
        .env_remove("LOOM_AUDIT_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a configuration error");
    assert!(
        text(&out.stderr).contains("LOOM_AUDIT_KEY"),
        "{}",
        text(&out.stderr)
    );
}

/// `loom memory facts` as JSON: the objects listed.
fn fact_objects(env: &TestEnv, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["memory", "facts", "--tenant", "acme", "--json"];
    args.extend_from_slice(extra);
    let out = loom(env, &args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let facts: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    facts
        .iter()
        .map(|f| f["object"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn memory_facts_answer_on_both_time_axes_and_forget_empties_the_export() {
    let env = TestEnv::new();
    env.config("[tenants.acme]\n");
    memory_cli_flow(&env, "facts: 3");
}

#[test]
fn the_memory_cli_works_the_same_on_a_memory_component_tenant() {
    let env = TestEnv::new();
    env.add_plugin(components::MEMORY_KV_MEMORY, "kv-memory", None);
    env.config("[tenants.acme]\n[tenants.acme.memory]\nplugin = \"kv-memory\"\n");
    memory_cli_flow(&env, "memory component `kv-memory`: 3 items");
}

/// Tokyo → Paris on the CLI, a bad time, forget (whose report contains
/// `forgot`), and an empty export after it.
fn memory_cli_flow(env: &TestEnv, forgot: &str) {
    let add = |user: &str, object: &str, from: &str| {
        let out = loom(
            env,
            &[
                "memory",
                "facts",
                "add",
                "--tenant",
                "acme",
                "--user",
                user,
                "--subject",
                user,
                "--predicate",
                "livesIn",
                "--object",
                object,
                "--valid-from",
                from,
            ],
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    add("alice", "Tokyo", "2020-01-01");
    add("bob", "Tokyo", "2020-01-01");
    std::thread::sleep(std::time::Duration::from_millis(20));
    let before_move = loom_host::memory::Timestamp::now().to_string();
    std::thread::sleep(std::time::Duration::from_millis(20));
    let moved = add("alice", "Paris", "2025-06-01");
    assert!(moved.contains("closed alice lives_in Tokyo"), "{moved}");

    let alice = |extra: &[&str]| {
        let mut args = vec!["--user", "alice"];
        args.extend_from_slice(extra);
        fact_objects(env, &args)
    };
    assert_eq!(alice(&["--valid-at", "2024-01-01"]), ["Tokyo"]);
    assert_eq!(alice(&["--valid-at", "2026-01-01"]), ["Paris"]);
    assert_eq!(
        alice(&["--valid-at", "2026-01-01", "--known-at", &before_move]),
        ["Tokyo"],
        "before the move was recorded, Loom believed Tokyo"
    );
    // Bob's fact never changed.
    assert_eq!(
        fact_objects(env, &["--user", "bob", "--valid-at", "2026-01-01"]),
        ["Tokyo"]
    );

    // A bad time names the forms it takes.
    let out = loom(
        env,
        &[
            "memory",
            "facts",
            "--tenant",
            "acme",
            "--user",
            "alice",
            "--valid-at",
            "soon",
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("RFC 3339"),
        "{}",
        text(&out.stderr)
    );

    let out = loom(
        env,
        &["memory", "forget", "--tenant", "acme", "--user", "alice"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(forgot), "{}", text(&out.stdout));
    let out = loom(
        env,
        &["memory", "export", "--tenant", "acme", "--user", "alice"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let export: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for kind in ["episodes", "facts", "blocks", "sessions"] {
        assert_eq!(export[kind], serde_json::json!([]), "{kind}");
    }
    assert_eq!(fact_objects(env, &["--user", "bob"]), ["Tokyo"]);
}

#[test]
fn docs_ingest_search_list_and_delete() {
    let env = TestEnv::new();
    env.config("[tenants.acme]\n[tenants.globex]\n");
    std::fs::write(
        env.path().join("guide.md"),
        "# Guide\n\n## Install\nUse rustup to add the wasm32-wasip2 target.\n\n## Budgets\nCaps per user.\n",
    )
    .unwrap();
    let out = loom(
        &env,
        &[
            "docs",
            "ingest",
            "--tenant",
            "acme",
            env.path().join("guide.md").to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("guide.md: 2 chunks"),
        "{}",
        text(&out.stdout)
    );
    let out = loom(
        &env,
        &[
            "docs",
            "search",
            "--tenant",
            "acme",
            "--json",
            "rustup target",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let hits: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(hits[0]["heading"], "Guide > Install");
    let out = loom(&env, &["docs", "search", "--tenant", "globex", "rustup"]);
    assert!(
        text(&out.stdout).contains("(no matches)"),
        "{}",
        text(&out.stdout)
    );
    let out = loom(
        &env,
        &[
            "docs", "search", "--tenant", "acme", "--mode", "vector", "rustup",
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("[retrieval.embeddings]"),
        "{}",
        text(&out.stderr)
    );
    let out = loom(&env, &["docs", "list", "--tenant", "acme"]);
    assert!(
        text(&out.stdout).contains("guide.md  2 chunks"),
        "{}",
        text(&out.stdout)
    );
    let out = loom(&env, &["docs", "delete", "--tenant", "acme", "guide.md"]);
    assert!(out.status.success());
    let out = loom(&env, &["docs", "delete", "--tenant", "acme", "guide.md"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn a_composition_declared_in_config_runs_with_every_level_shown_and_one_user_charged() {
    let env = TestEnv::new();
    for (component, name) in [
        (components::ARCH_REFLEXION, "reflexion"),
        (components::ARCH_SUPERVISOR, "supervisor"),
        (components::ARCH_REACT, "react"),
    ] {
        env.add_plugin(component, name, None);
    }
    // The supervisor's script delegates to its one worker.
    std::fs::write(
        env.path().join("supervisor.json"),
        r#"{"turns": [{"text": "{\"delegate\": [{\"worker\": \"helper\", \"task\": \"say hi\"}]}"}]}"#,
    )
    .unwrap();
    env.config(
        "[tenants.acme.user_budgets]\ntokens_per_day = 1000000\n\
         [agents.helper]\ndescription = \"echoes\"\narchitecture = \"react\"\nmodel = \"echo\"\n\
         [agents.crew]\narchitecture = \"supervisor\"\nworkers = [\"helper\"]\n\
         architecture_config = { max_rounds = 1 }\n\
         [agents.crew.role_models]\nsupervisor = \"scripted:supervisor.json\"\n\
         [agents.team]\narchitecture = \"reflexion\"\nmodel = \"echo\"\n\
         architecture_config = { max_attempts = 1, base = \"agent:crew\" }\n",
    );
    let out = loom(
        &env,
        &[
            "run", "--tenant", "acme", "--user", "ann", "--agent", "team", "greet",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    for line in [
        "[attempt]",
        "  [crew] run ",
        "  [crew] [delegated]",
        "  [crew/helper] run ",
        "  [crew/helper] done in 1 turn(s): Echo: say hi",
        "  [crew] done in ",
    ] {
        assert!(stderr.contains(line), "{line:?} in {stderr}");
    }
    // Every level's tokens are the run's, and ann's.
    let tokens: u64 = stderr
        .split("tokens: ")
        .nth(1)
        .map(|rest| {
            let input: u64 = rest.split(' ').next().unwrap().parse().unwrap();
            let output: u64 = rest
                .split("), ")
                .nth(1)
                .and_then(|s| s.split(' ').next())
                .unwrap()
                .parse()
                .unwrap();
            input + output
        })
        .unwrap();
    let out = loom(
        &env,
        &[
            "budget", "show", "--tenant", "acme", "--user", "ann", "--json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["caps"][0]["key"], "tokens_per_day");
    assert_eq!(shown["caps"][0]["used"], tokens as f64, "{stderr}");
}

#[test]
fn run_agent_runs_a_named_agent_and_names_the_configured_ones_otherwise() {
    let env = TestEnv::new();
    env.add_plugin(components::ARCH_SELF_REFINE, "self-refine", None);
    env.config(
        "[tenants.acme]\n[agents.poet]\ninstructions = \"You write.\"\narchitecture = \"self-refine\"\nmodel = \"echo\"\n",
    );
    let out = loom(
        &env,
        &["run", "--tenant", "acme", "--agent", "poet", "a poem"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("a poem"),
        "{}",
        text(&out.stdout)
    );
    let out = loom(
        &env,
        &["run", "--tenant", "acme", "--agent", "novelist", "a book"],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("novelist") && text(&out.stderr).contains("poet"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_custom_architecture_in_a_tenant_directory_serves_that_tenant_only() {
    // The example of README's "Writing an architecture", with the manifest
    // it ships, dropped into acme's own plugin directory.
    let env = TestEnv::new();
    let own = env.mkdir("tenants/acme");
    env.install(
        &own,
        components::EXAMPLE_CUSTOM_ARCHITECTURE,
        "draft-check",
        Some(include_str!(
            "../../examples/custom-architecture/draft-check.toml"
        )),
    );
    env.add_plugin(components::ARCH_REACT, "react", None);
    env.config("[tenants.acme]\nplugin_dirs = [\"tenants/acme\"]\n[tenants.globex]\n");

    let listed = |tenant: &str| -> Vec<serde_json::Value> {
        let out = loom(&env, &["plugins", "list", "--tenant", tenant, "--json"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let acme = listed("acme");
    let row = acme
        .iter()
        .find(|row| row["name"] == "draft-check")
        .expect("acme lists its own architecture");
    assert_eq!(row["kind"], "architecture");
    assert_eq!(row["scope"], "tenant:acme");
    assert_eq!(row["version"], "0.1.0");
    // inspect shows the name agents choose it by, its roles and schema.
    let out = loom(
        &env,
        &[
            "plugins",
            "inspect",
            components::EXAMPLE_CUSTOM_ARCHITECTURE,
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["architecture"]["name"], "draft-check");
    assert_eq!(report["architecture"]["workers"][1][0], "checker");
    assert_eq!(
        report["architecture"]["config_schema"]["additionalProperties"],
        false
    );
    assert!(
        listed("globex")
            .iter()
            .all(|row| row["name"] != "draft-check"),
        "globex does not see acme's directory"
    );

    let run = |tenant: &str| {
        loom(
            &env,
            &[
                "run",
                "--tenant",
                tenant,
                "--arch",
                "draft-check",
                "--model",
                "echo",
                "--json",
                "What is 6*7?",
            ],
        )
    };
    let out = run("acme");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let events: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "custom")
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["draft", "verdict"]);
    let last = events.last().unwrap();
    assert_eq!(last["type"], "completed");
    assert_eq!(last["result"]["output"], "Echo: What is 6*7?");

    let out = run("globex");
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(
            "no architecture `draft-check` is available to tenant `globex`; available: react"
        ),
        "{stdout}"
    );
}

/// A react agent whose script calls `record_effect` (a tool that logs each
/// attempt and each idempotency key's first effect) in four turns, each
/// waiting `each_ms` and the third `slow_ms`, then answers; the user's
/// spend is capped so the ledger counts it.
fn crash_setup(each_ms: u64, slow_ms: u64) -> TestEnv {
    let env = TestEnv::new();
    env.add_plugin(components::ARCH_REACT, "react", None);
    env.add_plugin(
        components::FIXTURE_SLOW,
        "slow",
        Some("version = \"0.1.0\"\n[capabilities]\nfiles = [{ path = \"/fx\", write = true }]\n"),
    );
    env.mkdir("fx");
    let call = |label: &str, ms: u64| {
        format!(
            "  - text: \"\"\n    tool_calls:\n      - name: record_effect\n        arguments: {{ dir: \"/fx\", label: \"{label}\", ms: {ms} }}\n"
        )
    };
    std::fs::write(
        env.path().join("script.yaml"),
        format!(
            "turns:\n{}{}{}{}  - text: \"finished after {{last_tool_result}}\"\n",
            call("a", each_ms),
            call("b", each_ms),
            call("c", slow_ms),
            call("d", each_ms)
        ),
    )
    .unwrap();
    env.config(
        "[agent]\nmodel = \"scripted:script.yaml\"\n\
         [tenants.acme.grants]\nfiles = [{ host = \"fx\", guest = \"/fx\", write = true }]\n\
         [tenants.acme.permissions]\nmode = \"bypass\"\n\
         [tenants.acme.user_budgets]\ntokens_per_day = 1000000\nmodel_calls_per_day = 1000\n\
         tool_calls_per_day = 1000\nruns_per_day = 1000\n",
    );
    env
}

/// The labels of `fx/<name>`'s lines (`<key> <label>`), and their keys.
fn effect_log(env: &TestEnv, name: &str) -> (Vec<String>, Vec<String>) {
    std::fs::read_to_string(env.path().join("fx").join(name))
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let (key, label) = line.rsplit_once(' ').unwrap();
            (label.to_owned(), key.to_owned())
        })
        .unzip()
}

/// Start `loom run` for ann in `session`; kill it with SIGKILL `delay_ms`
/// after `record_effect` call `label` has started.
fn run_and_kill_at(env: &TestEnv, session: &str, label: &str, delay_ms: u64) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_loom"))
        .args(["run", "--user", "ann", "--session", session, "go"])
        .arg("--config")
        .arg(env.path().join("loom.toml"))
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start loom");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !effect_log(env, "attempts.log").0.iter().any(|l| l == label) {
        assert!(
            std::time::Instant::now() < deadline,
            "call {label} never started"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("loom ended before call {label} started: {status}");
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    std::thread::sleep(std::time::Duration::from_millis(delay_ms));
    // Child::kill sends SIGKILL: no destructor, no flush, no goodbye.
    child.kill().unwrap();
    child.wait().unwrap();
}

/// What `loom budget show --json` reports ann used, by cap key.
fn used(env: &TestEnv) -> Vec<(String, f64)> {
    let out = loom(
        env,
        &[
            "budget", "show", "--tenant", "acme", "--user", "ann", "--json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    shown["caps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|cap| {
            (
                format!("{} {}", cap["level"], cap["key"]),
                cap["used"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn a_run_killed_with_sigkill_resumes_to_the_same_answer_with_every_finished_call_run_once() {
    // The same run uninterrupted, for the answer and the spend to match.
    let clean = crash_setup(0, 0);
    let out = loom(&clean, &["run", "--user", "ann", "--session", "s1", "go"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let answer = text(&out.stdout);
    assert!(answer.contains("finished after \"d done\""), "{answer}");

    let env = crash_setup(0, 5000);
    run_and_kill_at(&env, "s1", "c", 200);
    let out = loom(&env, &["runs", "list", "--interrupted"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed = text(&out.stdout);
    assert!(
        listed.contains("interrupted  tenant acme  user ann  session s1"),
        "{listed}"
    );
    assert!(
        listed.contains("resume: loom resume --tenant acme --user ann --session s1 --run run_"),
        "{listed}"
    );

    let out = loom(&env, &["resume", "--user", "ann", "--session", "s1"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(text(&out.stdout), answer);
    assert!(stderr.contains("resuming run run_"), "{stderr}");
    assert!(
        stderr.contains("record_effect runs again after the interruption"),
        "{stderr}"
    );
    // The tool's own log: each effect once, each finished call run once,
    // the call in flight at the kill run again under the same key.
    let (effects, keys) = effect_log(&env, "effects.log");
    assert_eq!(effects, ["a", "b", "c", "d"]);
    let mut distinct = keys.clone();
    distinct.dedup();
    assert_eq!(distinct.len(), 4, "{keys:?}");
    let (attempts, attempt_keys) = effect_log(&env, "attempts.log");
    assert_eq!(attempts, ["a", "b", "c", "c", "d"]);
    assert_eq!(attempt_keys[2], attempt_keys[3]);
    // Charged once: the same spend as the uninterrupted run, one run.
    assert_eq!(used(&env), used(&clean));
    // Nothing is left to resume; the store reads cleanly.
    let out = loom(&env, &["runs", "list", "--interrupted"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "no interrupted runs");
    let out = loom(&env, &["resume", "--user", "ann"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("loom runs list --interrupted"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_run_killed_while_its_store_syncs_on_an_interval_resumes_with_every_finished_call_run_once() {
    // With `fsync = "interval"` the journal is written in place by the
    // run itself, one `write` per step: a SIGKILL must lose none of it.
    let env = crash_setup(0, 5000);
    let config = std::fs::read_to_string(env.path().join("loom.toml")).unwrap();
    std::fs::write(
        env.path().join("loom.toml"),
        format!("{config}[store]\nfsync = \"interval\"\nfsync_interval_ms = 60000\n"),
    )
    .unwrap();
    run_and_kill_at(&env, "s1", "c", 200);
    // On Linux the steps were staged in the shard's ring, and with no sync
    // due in the minute, copied to no segment: the resume's open copies
    // them.
    if cfg!(target_os = "linux") {
        assert!(
            files_named(env.path(), "appends.ring") > 0,
            "the journal staged its appends in a ring"
        );
    }
    let out = loom(&env, &["resume", "--user", "ann", "--session", "s1"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("finished after \"d done\""),
        "{}",
        text(&out.stdout)
    );
    let (effects, _) = effect_log(&env, "effects.log");
    assert_eq!(effects, ["a", "b", "c", "d"]);
    let (attempts, keys) = effect_log(&env, "attempts.log");
    assert_eq!(attempts, ["a", "b", "c", "c", "d"]);
    assert_eq!(keys[2], keys[3]);
}

/// How many files called `name` are under `dir`.
fn files_named(dir: &std::path::Path, name: &str) -> usize {
    std::fs::read_dir(dir)
        .map(|items| {
            items
                .flatten()
                .map(|item| {
                    let path = item.path();
                    if path.is_dir() {
                        files_named(&path, name)
                    } else {
                        usize::from(item.file_name() == name)
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn a_kill_in_the_middle_of_journal_writes_leaves_a_readable_store_and_a_resumable_run() {
    let env = crash_setup(150, 150);
    // Killed around the end of a call, while its result is journaled.
    for (round, label) in ["a", "b", "c", "d"].into_iter().enumerate() {
        std::fs::remove_file(env.path().join("fx/attempts.log")).ok();
        run_and_kill_at(&env, &format!("k{round}"), label, 140 + 5 * round as u64);
        let out = loom(&env, &["runs", "list", "--json"]);
        assert!(out.status.success(), "round {round}: {}", text(&out.stderr));
        for line in text(&out.stdout).lines() {
            serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
    }
    // Every interrupted run resumes to the answer.
    let out = loom(&env, &["runs", "list", "--interrupted", "--json"]);
    let interrupted: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!interrupted.is_empty());
    for run in &interrupted {
        let id = run["run"].as_str().unwrap();
        let out = loom(&env, &["resume", "--user", "ann", "--run", id]);
        assert!(out.status.success(), "{id}: {}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains("finished after \"d done\""),
            "{}",
            text(&out.stdout)
        );
    }
    let out = loom(&env, &["runs", "list", "--interrupted"]);
    assert_eq!(text(&out.stdout).trim(), "no interrupted runs");
}
