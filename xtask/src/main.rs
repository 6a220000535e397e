//! Loom's task runner. Installs what it needs (the `wasm32-wasip2` target),
//! then:
//!
//! * `cargo xtask demo` — builds the host and the first-party components and
//!   runs the offline demo: tools called through the sandbox for two tenants
//!   with different grants, showing allowed and denied capabilities.
//! * `cargo xtask test` — formatting, clippy, the JavaScript and Python
//!   example components (`build-polyglot`), and the whole test suite
//!   (nextest when installed, else `cargo test`), plus doc tests.
//! * `cargo xtask build-polyglot` — installs componentize-js and
//!   componentize-py (cached) and builds `examples/js-*` and `examples/py-*`
//!   (see `polyglot.rs`).
//! * `cargo xtask py-clients` — installs the official MCP and OpenAI Python
//!   SDKs (cached) into a venv the tests drive Loom with (see `clients.rs`);
//!   prints its interpreter, the value `cargo xtask test` gives the tests
//!   as `LOOM_PY_CLIENTS`.

mod clients;
mod polyglot;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

const WASM_TARGET: &str = "wasm32-wasip2";
const PLUGINS: &[&str] = &["calculator", "files", "http-fetch", "run-context"];

fn main() -> ExitCode {
    let task = std::env::args().nth(1).unwrap_or_default();
    let result = match task.as_str() {
        "demo" => demo(),
        "test" => test(),
        "build-polyglot" => polyglot::build(&root(), &target_dir()).map(|dir| {
            println!("{}", dir.display());
        }),
        "py-clients" => clients::install(&root(), &target_dir()).map(|python| {
            println!("{}", python.display());
        }),
        _ => {
            eprintln!(
                "usage: cargo xtask <demo|test|build-polyglot|py-clients>\n  demo            build everything and run the offline demo\n  test            fmt, clippy and every test\n  build-polyglot  build the JavaScript and Python example components\n  py-clients      install the MCP and OpenAI Python SDKs the tests use"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root. `cargo run` sets `CARGO_MANIFEST_DIR` for the
/// process it starts, which is the clone being worked on; the path baked in
/// at compile time is only a fallback, because cargo does not rebuild this
/// binary when another clone shares the target directory (it hashes
/// workspace paths relative to the workspace), and the baked path would then
/// name that other clone.
fn root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(root());
    command
}

fn run(command: &mut Command) -> Result<(), String> {
    let shown = format!("{command:?}");
    eprintln!("+ {shown}");
    let status = command
        .status()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{shown} failed ({status})"))
    }
}

/// Make sure the wasm target is installed, installing it with rustup if not.
fn ensure_wasm_target() -> Result<(), String> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(root())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == WASM_TARGET)
        })
        .unwrap_or(false);
    if !installed {
        run(Command::new("rustup")
            .args(["target", "add", WASM_TARGET])
            .current_dir(root()))
        .map_err(|e| format!("{e}; install the target with `rustup target add {WASM_TARGET}`"))?;
    }
    Ok(())
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

fn demo() -> Result<(), String> {
    ensure_wasm_target()?;
    let mut build = cargo();
    build.args(["build", "--release", "--target", WASM_TARGET]);
    for plugin in PLUGINS {
        build.args(["-p", &format!("loom-tool-{plugin}")]);
    }
    build.args(["-p", "loom-arch-react"]);
    run(&mut build)?;
    run(cargo().args(["build", "-p", "loom-host", "--bin", "loom"]))?;

    let target = target_dir();
    let demo = target.join("loom-demo");
    let _ = std::fs::remove_dir_all(&demo);
    let plugins = demo.join("plugins");
    for dir in [&plugins, &demo.join("data/acme"), &demo.join("data/globex")] {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let example = root().join("examples/demo");
    for plugin in PLUGINS {
        let wasm = target
            .join(WASM_TARGET)
            .join("release")
            .join(format!("loom_tool_{}.wasm", plugin.replace('-', "_")));
        copy(&wasm, &plugins.join(format!("{plugin}.wasm")))?;
        let manifest = example.join("plugins").join(format!("{plugin}.toml"));
        if manifest.is_file() {
            copy(&manifest, &plugins.join(format!("{plugin}.toml")))?;
        }
    }
    copy(
        &target
            .join(WASM_TARGET)
            .join("release")
            .join("loom_arch_react.wasm"),
        &plugins.join("react.wasm"),
    )?;
    copy(&example.join("loom.toml"), &demo.join("loom.toml"))?;
    copy(&example.join("script.json"), &demo.join("script.json"))?;
    copy(&example.join("write.json"), &demo.join("write.json"))?;
    std::fs::write(
        demo.join("data/acme/welcome.txt"),
        "Hello from acme's granted directory.\n",
    )
    .map_err(|e| e.to_string())?;
    std::fs::write(demo.join("data/globex/secret.txt"), "globex only\n")
        .map_err(|e| e.to_string())?;

    let loom = target.join("debug").join("loom");
    let config = demo.join("loom.toml");
    let step = |title: &str, args: &[&str], expect_ok: bool| -> Result<(), String> {
        println!("\n== {title}\n$ loom {}", args.join(" "));
        let status = Command::new(&loom)
            .args(args)
            .arg("--config")
            .arg(&config)
            .env("LOOM_DEMO_TOKEN", "token-from-the-host-env")
            .env("LOOM_AUDIT_KEY", DEMO_AUDIT_KEY)
            .status()
            .map_err(|e| format!("cannot run {}: {e}", loom.display()))?;
        match (status.success(), expect_ok) {
            (true, true) => println!("-> allowed, as expected"),
            (false, false) => println!(
                "-> refused, as expected (exit {})",
                status.code().unwrap_or(-1)
            ),
            (ok, _) => {
                return Err(format!(
                    "`loom {}` {} unexpectedly",
                    args.join(" "),
                    if ok { "succeeded" } else { "failed" }
                ));
            }
        }
        Ok(())
    };
    println!("Loom demo: two tenants, same plugins, different grants.");
    step(
        "Plugins as tenant acme sees them",
        &["plugins", "list", "--tenant", "acme"],
        true,
    )?;
    step(
        "Pure computation works for everyone",
        &[
            "tool",
            "call",
            "--tenant",
            "globex",
            "calculate",
            r#"{"expression":"(2+3)*4^2/sqrt(16)"}"#,
        ],
        true,
    )?;
    step(
        "The tool learns the caller from the host, not its arguments",
        &[
            "tool",
            "call",
            "--tenant",
            "acme",
            "--user",
            "alice",
            "--session",
            "chat-1",
            "run_context",
        ],
        true,
    )?;
    step(
        "acme is granted /data (read-only): reading works",
        &[
            "tool",
            "call",
            "--tenant",
            "acme",
            "read_file",
            r#"{"path":"/data/welcome.txt"}"#,
        ],
        true,
    )?;
    step(
        "acme's /data is read-only: writing is denied",
        &[
            "tool",
            "call",
            "--tenant",
            "acme",
            "write_file",
            r#"{"path":"/data/new.txt","content":"hi"}"#,
        ],
        false,
    )?;
    step(
        "globex is granted its own /data read-write: writing works",
        &[
            "tool",
            "call",
            "--tenant",
            "globex",
            "write_file",
            r#"{"path":"/data/notes.txt","content":"written by globex"}"#,
        ],
        true,
    )?;
    step(
        "globex cannot see acme's files, even by path",
        &[
            "tool",
            "call",
            "--tenant",
            "globex",
            "read_file",
            r#"{"path":"/data/welcome.txt"}"#,
        ],
        false,
    )?;
    step(
        "Escaping the preopen with .. fails",
        &[
            "tool",
            "call",
            "--tenant",
            "acme",
            "read_file",
            r#"{"path":"/data/../globex/secret.txt"}"#,
        ],
        false,
    )?;
    step(
        "No tenant is granted the network to this host: denied",
        &[
            "tool",
            "call",
            "--tenant",
            "acme",
            "http_get",
            r#"{"url":"http://127.0.0.1:9/"}"#,
        ],
        false,
    )?;
    println!(
        "\nAn agent run: the ReAct architecture runs as a sandboxed component over a scripted model;"
    );
    println!(
        "the tool calls of a turn run in parallel, each in its own sandbox with the caller's grants."
    );
    let question = "What is (2+3)*4^2/sqrt(16)? And what does the welcome note say?";
    // `loom run` for `user` of `tenant` in the session named "demo".
    let agent_run = |tenant: &'static str, user: &'static str, prompt: &'static str| {
        [
            "run",
            "--tenant",
            tenant,
            "--user",
            user,
            "--session",
            "demo",
            prompt,
        ]
    };
    step(
        "alice of acme asks (acme is granted its data directory)",
        &agent_run("acme", "alice", question),
        true,
    )?;
    step(
        "bob of globex asks the same in a session also named demo (his own: nothing of alice's is visible; globex has no welcome.txt, and the tool error is a result the model sees)",
        &agent_run("globex", "bob", question),
        true,
    )?;
    step(
        "alice continues her session (its turns are rehydrated from redb)",
        &agent_run("acme", "alice", "Thanks! Once more?"),
        true,
    )?;
    step(
        "dave of acme asks `team`: reflexion over a router over the ReAct researcher, declared in loom.toml; every level's events are shown under its path, and dave's budgets pay for all of them",
        &[
            "run", "--tenant", "acme", "--user", "dave", "--agent", "team", question,
        ],
        true,
    )?;
    println!("\nGovernance: budgets, permission modes and the audit log.");
    step(
        "alice's third run today: acme's user budget (runs_per_day = 2) stops it with budget:runs_per_day",
        &agent_run("acme", "alice", "One more?"),
        false,
    )?;
    step(
        "bob of acme has his own budget and still runs",
        &agent_run("acme", "bob", question),
        true,
    )?;
    step(
        "alice's use against every cap",
        &["budget", "show", "--tenant", "acme", "--user", "alice"],
        true,
    )?;
    step(
        "globex is in plan mode: its agent's write_file call is denied and nothing is written",
        &[
            "run",
            "--tenant",
            "globex",
            "--user",
            "bob",
            "--model",
            "scripted:write.json",
            "Save a note.",
        ],
        true,
    )?;
    if demo.join("data/globex/plan.txt").exists() {
        return Err("plan mode let the agent write data/globex/plan.txt".into());
    }
    let audit_log = demo.join("audit.jsonl");
    let audit_path = audit_log.display().to_string();
    step(
        "The audit log verifies: every entry signed and chained",
        &["audit", "verify", &audit_path],
        true,
    )?;
    step(
        "The last entries, redacted as configured",
        &["audit", "show", "--tenant", "globex"],
        true,
    )?;
    let text = std::fs::read_to_string(&audit_log).map_err(|e| e.to_string())?;
    let tampered = demo.join("audit-tampered.jsonl");
    std::fs::write(&tampered, text.replacen("\"acme\"", "\"evil\"", 1))
        .map_err(|e| e.to_string())?;
    let head = format!("{audit_path}.head");
    copy(
        Path::new(&head),
        Path::new(&format!("{}.head", tampered.display())),
    )?;
    step(
        "One edited byte in a copy of the log: verify names the line",
        &["audit", "verify", &tampered.display().to_string()],
        false,
    )?;
    println!("\nMemory: facts that know when, and a complete forget.");
    let fact_of = |tenant: &str, user: &str, object: &str, from: &str| {
        vec![
            "memory".to_owned(),
            "facts".to_owned(),
            "add".to_owned(),
            "--tenant".to_owned(),
            tenant.to_owned(),
            "--user".to_owned(),
            user.to_owned(),
            "--subject".to_owned(),
            user.to_owned(),
            "--predicate".to_owned(),
            "livesIn".to_owned(),
            "--object".to_owned(),
            object.to_owned(),
            "--valid-from".to_owned(),
            from.to_owned(),
        ]
    };
    let fact = |user: &str, object: &str, from: &str| fact_of("acme", user, object, from);
    let tokyo = fact("carol", "Tokyo", "2020-01-01");
    let tokyo: Vec<&str> = tokyo.iter().map(String::as_str).collect();
    step("carol lives in Tokyo since 2020", &tokyo, true)?;
    // The moment between the two writes, for --known-at.
    let before_move = {
        let out = Command::new(&loom)
            .args([
                "memory", "facts", "--tenant", "acme", "--user", "carol", "--json",
            ])
            .arg("--config")
            .arg(&config)
            .env("LOOM_DEMO_TOKEN", "token-from-the-host-env")
            .env("LOOM_AUDIT_KEY", DEMO_AUDIT_KEY)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", loom.display()))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let start = text.find("\"recorded_at\": \"").ok_or_else(|| {
            format!(
                "memory facts --json printed no recorded_at: {}{}",
                text,
                String::from_utf8_lossy(&out.stderr)
            )
        })? + "\"recorded_at\": \"".len();
        text[start..]
            .split('"')
            .next()
            .ok_or("memory facts --json printed no recorded_at")?
            .to_owned()
    };
    std::thread::sleep(std::time::Duration::from_millis(20));
    let paris = fact("carol", "Paris", "2025-06-01");
    let paris: Vec<&str> = paris.iter().map(String::as_str).collect();
    step(
        "carol moves to Paris in June 2025: the Tokyo fact is closed where Paris starts",
        &paris,
        true,
    )?;
    let dave = fact("dave", "Tokyo", "2021-01-01");
    let dave: Vec<&str> = dave.iter().map(String::as_str).collect();
    step("dave lives in Tokyo too", &dave, true)?;
    for (title, extra) in [
        (
            "Where carol lived in 2024",
            vec!["--valid-at", "2024-01-01"],
        ),
        (
            "Where carol lives in 2026",
            vec!["--valid-at", "2026-01-01"],
        ),
        (
            "What Loom believed about 2026 before the move was recorded",
            vec![
                "--valid-at",
                "2026-01-01",
                "--known-at",
                before_move.as_str(),
            ],
        ),
    ] {
        let mut args = vec!["memory", "facts", "--tenant", "acme", "--user", "carol"];
        args.extend(extra);
        step(title, &args, true)?;
    }
    step(
        "dave's fact never changed",
        &["memory", "facts", "--tenant", "acme", "--user", "dave"],
        true,
    )?;
    step(
        "Forget carol: counts per kind, and an audit entry",
        &["memory", "forget", "--tenant", "acme", "--user", "carol"],
        true,
    )?;
    step(
        "Nothing of carol is left",
        &["memory", "export", "--tenant", "acme", "--user", "carol"],
        true,
    )?;
    println!(
        "\nMemory components: globex keeps its memory in `kv-memory`, a sandboxed component \
         on the host's scoped key-value store. Same commands, same answers."
    );
    for (title, user, object, from) in [
        (
            "erin (globex) lives in Lisbon since 2019",
            "erin",
            "Lisbon",
            "2019-01-01",
        ),
        ("erin moves to Porto in 2024", "erin", "Porto", "2024-03-01"),
    ] {
        let args = fact_of("globex", user, object, from);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        step(title, &args, true)?;
    }
    step(
        "Where erin lived in 2023, answered by the component",
        &[
            "memory",
            "facts",
            "--tenant",
            "globex",
            "--user",
            "erin",
            "--valid-at",
            "2023-01-01",
        ],
        true,
    )?;
    step(
        "Forget erin: the component forgets, then the host deletes every key it held",
        &["memory", "forget", "--tenant", "globex", "--user", "erin"],
        true,
    )?;
    println!("\nRetrieval: each tenant's own document store.");
    let guide = demo.join("guide.md");
    std::fs::write(
        &guide,
        "# Loom guide\n\n## Budgets\nA budget caps tokens, cost and tool calls per user per day.\n\n\
         ## Forget\nloom memory forget deletes a user's episodes, facts, blocks and sessions.\n",
    )
    .map_err(|e| e.to_string())?;
    let guide_path = guide.display().to_string();
    step(
        "Ingest a markdown guide for acme",
        &["docs", "ingest", "--tenant", "acme", &guide_path],
        true,
    )?;
    step(
        "acme searches it (BM25; hybrid with embeddings configured)",
        &[
            "docs",
            "search",
            "--tenant",
            "acme",
            "how do I delete a user's data?",
        ],
        true,
    )?;
    step(
        "globex has no such document",
        &[
            "docs",
            "search",
            "--tenant",
            "globex",
            "delete a user's data",
        ],
        true,
    )?;
    println!(
        "\nDemo finished: every allowed call ran and every denied one was refused inside the sandbox."
    );
    Ok(())
}

/// The audit key of the demo (a real deployment keeps its key secret).
const DEMO_AUDIT_KEY: &str = "loom-demo-audit-key-not-secret";

fn copy(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| format!("copy {} -> {}: {e}", from.display(), to.display()))
}

fn test() -> Result<(), String> {
    ensure_wasm_target()?;
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The tests of the JavaScript and Python examples load them from here.
    let polyglot = polyglot::build(&root(), &target_dir())?;
    // The MCP and OpenAI Python SDKs the client tests drive Loom with.
    let py_clients = clients::install(&root(), &target_dir())?;
    let nextest = Command::new("cargo")
        .args(["nextest", "--version"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if nextest {
        run(cargo()
            .args(["nextest", "run", "--workspace", "--no-fail-fast"])
            .env("LOOM_POLYGLOT_DIR", &polyglot)
            .env("LOOM_PY_CLIENTS", &py_clients))?;
    } else {
        run(cargo()
            .args(["test", "--workspace", "--no-fail-fast"])
            .env("LOOM_POLYGLOT_DIR", &polyglot)
            .env("LOOM_PY_CLIENTS", &py_clients))?;
    }
    run(cargo().args(["test", "--workspace", "--doc"]))
}
