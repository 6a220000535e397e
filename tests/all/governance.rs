//! Governance end to end: budgets at three levels in the store, permission
//! modes and lists per user, approvals, policy components, and the audit
//! log, through the real ReAct component and real tool components.

use loom_host::agent::{Agent, AgentError, RunEvent, RunRequest};
use loom_host::governance::approval::{ApprovalDecision, ApprovalError, FnApprover};
use loom_host::governance::audit::{self, AuditKey, AuditQuery};
use loom_host::model::offline::{ScriptedModel, ScriptedTurn};
use loom_host::model::{Model, Usage};
use loom_host::{Host, LoomConfig};
use loom_tests::{TestEnv, components, scope};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const KEY: &str = "0123456789abcdef-test-audit-key";

fn turn(text: &str, calls: &[(&str, serde_json::Value)], tokens: u64) -> ScriptedTurn {
    crate::support::scripted_turn(
        text,
        calls,
        Usage {
            input_tokens: tokens,
            output_tokens: 0,
            cached_tokens: 0,
            cache_write_tokens: 0,
        },
    )
}

fn model(turns: Vec<ScriptedTurn>) -> Arc<dyn Model> {
    Arc::new(ScriptedModel::new(turns))
}

/// A model that calls `tool` with `arguments`, then answers with its result.
fn calls(tool: &str, arguments: serde_json::Value) -> Arc<dyn Model> {
    model(vec![
        turn("", &[(tool, arguments)], 100),
        turn("{last_tool_result}", &[], 100),
    ])
}

/// ReAct, calculator, and the files tool (tagged as a file edit) writing to
/// `data-acme`; `extra` is appended to the config, which has an audit log.
fn install(env: &TestEnv) {
    env.add_plugin(components::ARCH_REACT, "react", None);
    env.add_plugin(components::TOOL_CALCULATOR, "calculator", None);
    env.add_plugin(
        components::TOOL_FILES,
        "files",
        Some(
            "file_edit_tools = [\"write_file\"]\n[capabilities]\nfiles = [{ path = \"/data\", write = true }]\n",
        ),
    );
    env.mkdir("data-acme");
}

fn config_text(extra: &str) -> String {
    format!(
        "[audit]\npath = \"audit.jsonl\"\nkey_file = \"audit.key\"\nfsync = \"never\"\nredact = [\"arguments\"]\n\
         [tenants.acme.grants]\nfiles = [{{ host = \"data-acme\", guest = \"/data\", write = true }}]\n\
         [tenants.globex]\n{extra}"
    )
}

async fn governed(env: &TestEnv, extra: &str) -> Arc<Host> {
    install(env);
    std::fs::write(env.path().join("audit.key"), KEY).unwrap();
    Arc::new(env.host(&config_text(extra)).await)
}

fn agent(host: &Arc<Host>, model: Arc<dyn Model>) -> Agent {
    Agent::builder("Be brief.")
        .host(host.clone())
        .model(model)
        .build()
        .unwrap()
}

/// Every audit entry so far: the writer is flushed first (it lets entries
/// gather for a few milliseconds before writing them).
async fn audit_entries(host: &Host, env: &TestEnv) -> Vec<audit::AuditEntry> {
    host.flush().await.unwrap();
    audit::read_entries(&env.path().join("audit.jsonl"), &AuditQuery::default(), &[]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_stop_only_the_offender_sit_under_the_tenant_and_survive_a_restart() {
    let env = TestEnv::new();
    let budgets = "[tenants.acme.budgets]\ntokens_per_day = 1000\n\
                   [tenants.acme.user_budgets]\ntokens_per_day = 400\n\
                   [tenants.acme.users.carol.budgets]\ntokens_per_day = 900\n";
    {
        let host = governed(&env, budgets).await;
        // Each run uses 200 tokens (two model calls of 100).
        let agent = agent(&host, calls("calculate", json!({"expression": "1+1"})));
        let run = |user: &'static str| agent.run(RunRequest::new(scope("acme", Some(user)), "go"));
        assert!(!run("alice").await.unwrap().interrupted);
        assert!(!run("alice").await.unwrap().interrupted);
        // alice has used her 400: her next run is stopped with the reason.
        let stopped = run("alice").await.unwrap();
        assert!(stopped.interrupted);
        assert_eq!(
            stopped.interruption_reason.as_deref(),
            Some("budget:tokens_per_day")
        );
        assert_eq!(stopped.turns, 0);
        // bob still runs.
        assert!(!run("bob").await.unwrap().interrupted);
        // carol's override (900) lets her go past 400, but the tenant's 1000
        // (alice 400 + bob 200 + carol) stops her at 400 of her own.
        assert!(!run("carol").await.unwrap().interrupted);
        assert!(!run("carol").await.unwrap().interrupted);
        let carol = run("carol").await.unwrap();
        assert_eq!(
            carol.interruption_reason.as_deref(),
            Some("budget:tokens_per_day"),
            "the tenant cap sits over carol's own"
        );
        // Another tenant is untouched.
        let other = agent
            .run(RunRequest::new(scope("globex", Some("alice")), "go"))
            .await
            .unwrap();
        assert!(!other.interrupted);
        host.flush().await.unwrap();
    }
    // Restart: the counters come back from the store.
    let host = Arc::new(
        Host::start(LoomConfig::load(&env.path().join("loom.toml")).unwrap())
            .await
            .unwrap(),
    );
    let agent = agent(&host, calls("calculate", json!({"expression": "1+1"})));
    let again = agent
        .run(RunRequest::new(scope("acme", Some("alice")), "go"))
        .await
        .unwrap();
    assert_eq!(
        again.interruption_reason.as_deref(),
        Some("budget:tokens_per_day")
    );
    let usage = host
        .governance()
        .ledger()
        .usage(
            &"acme".parse().unwrap(),
            Some(&loom_host::UserId::named("alice").unwrap()),
            &host.config().tenants["acme"].governance.budgets,
        )
        .unwrap();
    let alice = usage
        .iter()
        .find(|u| u.level == loom_host::governance::budget::Level::User)
        .unwrap();
    assert_eq!(alice.used, 400.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_racing_runs_of_one_user_spend_at_most_the_cap() {
    let env = TestEnv::new();
    let host = governed(
        &env,
        "[tenants.acme.user_budgets]\ntool_calls_lifetime = 10\n",
    )
    .await;
    let agent = agent(&host, calls("calculate", json!({"expression": "2+2"})));
    let mut runs = Vec::new();
    for _ in 0..50 {
        let agent = agent.clone();
        runs.push(tokio::spawn(async move {
            agent
                .run(RunRequest::new(scope("acme", Some("alice")), "go"))
                .await
                .unwrap()
        }));
    }
    let mut completed = 0;
    for run in runs {
        let result = run.await.unwrap();
        if !result.interrupted {
            completed += 1;
            assert_eq!(result.output, "4.0");
        } else {
            assert_eq!(
                result.interruption_reason.as_deref(),
                Some("budget:tool_calls_lifetime")
            );
        }
    }
    let ran = audit_entries(&host, &env)
        .await
        .iter()
        .filter(|e| e.action == "tool_call" && e.data["ok"] == true)
        .count();
    // Exactly the cap: no race overspent it, and reservations released by
    // refused runs did not leave it short.
    assert_eq!(ran, 10, "{ran} tool calls ran against a cap of 10");
    assert_eq!(completed, 10, "every run whose call ran completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modes_and_lists_route_per_user() {
    let env = TestEnv::new();
    let host = governed(
        &env,
        "[tenants.acme.permissions]\nmode = \"plan\"\ndeny = [\"calc*\"]\n\
         [tenants.acme.users.editor.permissions]\nmode = \"accept-edits\"\n\
         [tenants.acme.users.admin.permissions]\nmode = \"bypass\"\n\
         [tenants.acme.users.asker.permissions]\nmode = \"default\"\n\
         [tenants.acme.users.trusted.permissions]\nmode = \"default\"\nallow = [\"write_file\"]\n",
    )
    .await;
    let write = |name: &str| {
        calls(
            "write_file",
            json!({"path": format!("/data/{name}.txt"), "content": "x"}),
        )
    };
    let written = |name: &str| env.path().join(format!("data-acme/{name}.txt")).exists();
    let run = |user: &'static str, model: Arc<dyn Model>| {
        let agent = agent(&host, model);
        async move {
            let mut stream = agent.stream(RunRequest::new(scope("acme", Some(user)), "go"));
            let mut events = Vec::new();
            while let Some(event) = stream.next().await {
                events.push(event);
            }
            events
        }
    };
    let denied_by = |events: &[RunEvent]| {
        events.iter().find_map(|e| match e {
            RunEvent::Permission { decision, by, .. } if decision == "deny" => Some(by.clone()),
            _ => None,
        })
    };
    // Plan (the tenant's mode): denied, nothing written.
    let events = run("planner", write("planner")).await;
    assert_eq!(denied_by(&events).as_deref(), Some("permission mode"));
    assert!(!written("planner"), "plan mode wrote a file");
    // accept-edits runs a file edit.
    let events = run("editor", write("editor")).await;
    assert_eq!(denied_by(&events), None);
    assert!(written("editor"));
    // bypass runs it too.
    run("admin", write("admin")).await;
    assert!(written("admin"));
    // default asks; no approver, so it is denied.
    let events = run("asker", write("asker")).await;
    assert!(
        events
            .iter()
            .any(|e| matches!(e, RunEvent::Permission { decision, .. } if decision == "ask"))
    );
    assert_eq!(denied_by(&events).as_deref(), Some("approver none"));
    assert!(!written("asker"));
    // The user's allow list pre-approves it.
    run("trusted", write("trusted")).await;
    assert!(written("trusted"));
    // The tenant's deny list holds for every user, bypass included.
    let events = run("admin", calls("calculate", json!({"expression": "1"}))).await;
    assert_eq!(denied_by(&events).as_deref(), Some("deny list"));
    // The audit log says who decided.
    let entries = audit_entries(&host, &env).await;
    assert!(entries.iter().any(|e| e.action == "tool_call"
        && e.user.as_deref() == Some("planner")
        && e.data["decision"] == "deny"
        && e.data["decided_by"] == "permission mode"));
    // A tool call's entry carries its outcome's members and only those.
    for entry in entries.iter().filter(|e| e.action == "tool_call") {
        let data = entry.data.as_object().expect("an object");
        assert!(data["destructive"].is_boolean(), "{data:?}");
        if data["ok"] == true {
            let sha = data["output_sha256"].as_str().expect("a digest");
            assert_eq!(sha.len(), 32, "{data:?}");
            assert!(sha.bytes().all(|b| b.is_ascii_hexdigit()), "{data:?}");
            assert!(data["output_bytes"].is_u64(), "{data:?}");
            assert!(!data.contains_key("error"), "{data:?}");
        } else {
            assert!(data["error"].is_string(), "{data:?}");
            assert!(!data.contains_key("output_sha256"), "{data:?}");
            assert!(!data.contains_key("output_bytes"), "{data:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_allow_deny_edit_remember_and_fail_closed() {
    let env = TestEnv::new();
    let host = governed(&env, "[tenants.acme]\napproval_timeout_ms = 300\n").await;
    let asked = Arc::new(AtomicUsize::new(0));
    let write_twice = || {
        model(vec![
            turn(
                "",
                &[(
                    "write_file",
                    json!({"path": "/data/a.txt", "content": "model"}),
                )],
                1,
            ),
            turn(
                "",
                &[(
                    "write_file",
                    json!({"path": "/data/b.txt", "content": "model"}),
                )],
                1,
            ),
            turn("done", &[], 1),
        ])
    };
    let run_with =
        |decide: Arc<dyn Fn() -> Result<ApprovalDecision, ApprovalError> + Send + Sync>,
         delay: Duration| {
            let asked = asked.clone();
            let approver = FnApprover::new(move |_request| {
                asked.fetch_add(1, Ordering::SeqCst);
                let decide = decide.clone();
                async move {
                    tokio::time::sleep(delay).await;
                    decide()
                }
            });
            let agent = Agent::builder("Be brief.")
                .host(host.clone())
                .model(write_twice())
                .approver(approver)
                .build()
                .unwrap();
            async move {
                agent
                    .run(RunRequest::new(scope("acme", Some("alice")), "go"))
                    .await
                    .unwrap()
            }
        };
    let read = |name: &str| std::fs::read_to_string(env.path().join("data-acme").join(name)).ok();
    let reset = || {
        let _ = std::fs::remove_file(env.path().join("data-acme/a.txt"));
        let _ = std::fs::remove_file(env.path().join("data-acme/b.txt"));
        asked.store(0, Ordering::SeqCst);
    };
    // Allow: both run, both asked.
    run_with(Arc::new(|| Ok(ApprovalDecision::Allow)), Duration::ZERO).await;
    assert_eq!(read("a.txt").as_deref(), Some("model"));
    assert_eq!(asked.load(Ordering::SeqCst), 2);
    reset();
    // Deny: nothing written.
    run_with(
        Arc::new(|| Ok(ApprovalDecision::Deny { reason: None })),
        Duration::ZERO,
    )
    .await;
    assert_eq!(read("a.txt"), None);
    reset();
    // Edit: the approver's arguments run instead.
    run_with(
        Arc::new(|| {
            Ok(ApprovalDecision::Edit {
                arguments: json!({"path": "/data/a.txt", "content": "edited"}),
            })
        }),
        Duration::ZERO,
    )
    .await;
    assert_eq!(read("a.txt").as_deref(), Some("edited"));
    reset();
    // Remember: asked once, both run.
    run_with(
        Arc::new(|| Ok(ApprovalDecision::AllowAlways)),
        Duration::ZERO,
    )
    .await;
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    assert!(read("b.txt").is_some());
    reset();
    // A failing approver denies.
    run_with(
        Arc::new(|| Err(ApprovalError("boom".into()))),
        Duration::ZERO,
    )
    .await;
    assert_eq!(read("a.txt"), None);
    reset();
    // An approver slower than approval_timeout_ms denies.
    run_with(
        Arc::new(|| Ok(ApprovalDecision::Allow)),
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(read("a.txt"), None);
    let entries = audit_entries(&host, &env).await;
    assert!(entries.iter().any(|e| e.action == "approval"
        && e.data["decision"]["decision"] == "deny"
        && e.actor == "approver:callback"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// Policies that must answer get a generous CPU limit: under a loaded test
// run, CPU accounting charges preemption to the call holding the thread, and
// the 100 ms default can be spent before a policy runs a line.
async fn policies_run_in_order_and_a_broken_policy_denies() {
    let env = TestEnv::new();
    env.add_plugin(components::FIXTURE_POLICY_VERDICT, "verdict", None);
    env.add_plugin(components::POLICY_DENY_ARGS, "deny-args", None);
    let host = governed(
        &env,
        "[tenants.acme.permissions]\nmode = \"bypass\"\n\
         [[tenants.acme.policies]]\nplugin = \"deny-args\"\nconfig = { paths = [\"/etc/**\"] }\nlimits = { cpu_ms = 2000 }\n\
         [[tenants.acme.policies]]\nplugin = \"verdict\"\nconfig = { verdict = \"deny-if-arg\", key = \"expression\", value = \"6*6\", reason = \"second\" }\nlimits = { cpu_ms = 2000 }\n\
         [[tenants.acme.policies]]\nplugin = \"verdict\"\nconfig = { verdict = \"deny-if-arg\", key = \"expression\", value = \"6*6\", reason = \"third\" }\nlimits = { cpu_ms = 2000 }\n\
         [[tenants.globex.policies]]\nplugin = \"verdict\"\nconfig = { verdict = \"trap\" }\n\
         [tenants.globex.permissions]\nmode = \"bypass\"\n",
    )
    .await;
    let output = |user: &'static str, tenant: &'static str, model: Arc<dyn Model>| {
        let agent = agent(&host, model);
        async move {
            agent
                .run(RunRequest::new(scope(tenant, Some(user)), "go"))
                .await
                .unwrap()
                .output
        }
    };
    // Passes every policy.
    assert_eq!(
        output(
            "a",
            "acme",
            calls("calculate", json!({"expression": "6*7"}))
        )
        .await,
        "42.0"
    );
    // The first policy that denies answers: the second, not the third.
    let denied = output(
        "a",
        "acme",
        calls("calculate", json!({"expression": "6*6"})),
    )
    .await;
    assert!(
        denied.contains("second") && !denied.contains("third"),
        "{denied}"
    );
    // deny-args sees through `..`.
    let denied = output(
        "a",
        "acme",
        calls(
            "write_file",
            json!({"path": "/data/../etc/passwd", "content": "x"}),
        ),
    )
    .await;
    assert!(
        denied.contains("deny-args") && denied.contains("/etc/**"),
        "{denied}"
    );
    // A trapping policy denies, and the host still serves.
    let denied = output(
        "a",
        "globex",
        calls("calculate", json!({"expression": "1+1"})),
    )
    .await;
    assert!(
        denied.starts_with("DENIED") && denied.contains("policy failed"),
        "{denied}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn looping_and_hogging_policies_deny_and_ask_still_reaches_the_approver() {
    let env = TestEnv::new();
    env.add_plugin(components::FIXTURE_POLICY_VERDICT, "verdict", None);
    let host = governed(
        &env,
        "[[tenants.acme.policies]]\nplugin = \"verdict\"\nconfig = { verdict = \"allow\" }\nlimits = { cpu_ms = 2000 }\n\
         [[tenants.globex.policies]]\nplugin = \"verdict\"\nconfig = { verdict = \"loop\" }\nlimits = { cpu_ms = 50 }\n\
         [[tenants.initech.policies]]\nplugin = \"verdict\"\nconfig = { verdict = \"hog\" }\nlimits = { memory_mib = 16 }\n",
    )
    .await;
    // A policy that allows never turns the mode's ask into an allow.
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = asked.clone();
    let asking = Agent::builder("Be brief.")
        .host(host.clone())
        .model(calls(
            "write_file",
            json!({"path": "/data/x.txt", "content": "x"}),
        ))
        .approver(FnApprover::new(move |_| {
            counter.fetch_add(1, Ordering::SeqCst);
            async {
                Ok(ApprovalDecision::Deny {
                    reason: Some("no".into()),
                })
            }
        }))
        .build()
        .unwrap();
    let out = asking
        .run(RunRequest::new(scope("acme", Some("u")), "go"))
        .await
        .unwrap();
    assert_eq!(asked.load(Ordering::SeqCst), 1, "the approver was asked");
    assert!(out.output.contains("no"), "{}", out.output);
    // Looping and memory-hogging policies deny within their limits.
    for tenant in ["globex", "initech"] {
        let out = agent(&host, calls("calculate", json!({"expression": "1"})))
            .run(RunRequest::new(scope(tenant, Some("u")), "go"))
            .await
            .unwrap()
            .output;
        assert!(
            out.starts_with("DENIED") && out.contains("policy failed"),
            "{tenant}: {out}"
        );
    }
    support_still_healthy(&host).await;
}

async fn support_still_healthy(host: &Host) {
    let out = host
        .call_tool(scope("acme", None), "calculate", r#"{"expression":"6*7"}"#)
        .await
        .unwrap();
    assert_eq!(out.output, "42.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_users_three_turns_never_cross_in_sessions_budgets_or_audit() {
    let env = TestEnv::new();
    let host = governed(
        &env,
        "[tenants.acme.user_budgets]\ntool_calls_per_day = 1000\n",
    )
    .await;
    let agent = Agent::builder("Be brief.")
        .host(host.clone())
        .model(calls("calculate", json!({"expression": "1+1"})))
        .sessions(host.sessions())
        .build()
        .unwrap();
    let mut tasks = Vec::new();
    for u in 0..50 {
        let agent = agent.clone();
        tasks.push(tokio::spawn(async move {
            let user = format!("user{u}");
            for t in 0..3 {
                let scope = loom_tests::scope("acme", Some(&user))
                    .with_session(format!("s-{user}").parse().unwrap());
                let result = agent
                    .run(RunRequest::new(scope, format!("turn {t} of {user}")))
                    .await
                    .unwrap();
                assert!(!result.interrupted);
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    host.flush().await.unwrap();
    let sessions = host.sessions();
    let budgets = &host.config().tenants["acme"].governance.budgets;
    for u in 0..50 {
        let user = loom_host::UserId::named(format!("user{u}")).unwrap();
        let messages = sessions
            .load(
                &"acme".parse().unwrap(),
                &user,
                &format!("s-user{u}").parse().unwrap(),
            )
            .unwrap();
        let prompts: Vec<&str> = messages
            .iter()
            .filter(|m| m.role == loom_host::model::Role::User)
            .map(|m| m.content.as_str())
            .collect();
        assert_eq!(
            prompts,
            [0, 1, 2].map(|t| format!("turn {t} of user{u}")),
            "user{u}'s session holds exactly its own turns"
        );
        let usage = host
            .governance()
            .ledger()
            .usage(&"acme".parse().unwrap(), Some(&user), budgets)
            .unwrap();
        assert_eq!(
            usage[0].used, 3.0,
            "user{u} is charged its own 3 tool calls"
        );
    }
    let entries = audit_entries(&host, &env).await;
    for u in 0..50 {
        let user = format!("user{u}");
        let started: Vec<_> = entries
            .iter()
            .filter(|e| e.action == "run_started" && e.user.as_deref() == Some(user.as_str()))
            .collect();
        assert_eq!(started.len(), 3);
        for entry in started {
            assert!(entry.data["prompt"].as_str().unwrap().ends_with(&user));
        }
    }
    assert_eq!(
        audit::verify(&env.path().join("audit.jsonl"), &AuditKey::new(KEY.into())).unwrap(),
        entries.len() as u64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_reject_with_retry_after() {
    let env = TestEnv::new();
    let host = governed(
        &env,
        "[tenants.acme.user_rate_limits]\nruns_per_minute = 2\non_limit = \"reject\"\n",
    )
    .await;
    let agent = agent(&host, calls("calculate", json!({"expression": "1"})));
    let run = |user: &'static str| agent.run(RunRequest::new(scope("acme", Some(user)), "go"));
    run("alice").await.unwrap();
    run("alice").await.unwrap();
    match run("alice").await {
        Err(AgentError::RateLimited(limited)) => assert!(limited.retry_after_ms > 0),
        other => panic!("expected a rate limit, got {other:?}"),
    }
    run("bob").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_needs_a_key_unless_told_otherwise() {
    let env = TestEnv::new();
    let path = env.path().join("loom.toml");
    std::fs::write(&path, "[audit]\npath = \"a.jsonl\"\n").unwrap();
    // SAFETY-free: the variable is not set in this test process.
    if std::env::var_os("LOOM_AUDIT_KEY").is_none() {
        let err = LoomConfig::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("LOOM_AUDIT_KEY") && err.contains("insecure_no_key"),
            "{err}"
        );
    }
    std::fs::write(
        &path,
        "[audit]\npath = \"a.jsonl\"\ninsecure_no_key = true\n",
    )
    .unwrap();
    assert!(LoomConfig::load(&path).is_ok());
}

/// A loopback approval webhook: records each request body and answers
/// `status` with `body`, or never answers when `hang`.
async fn webhook(
    status: u16,
    body: &'static str,
    hang: bool,
) -> (String, Arc<std::sync::Mutex<Vec<serde_json::Value>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/approve", listener.local_addr().unwrap());
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let request = loop {
                    let n = socket.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let length: usize = text
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + length {
                            break buf[end + 4..end + 4 + length].to_vec();
                        }
                    }
                };
                record
                    .lock()
                    .unwrap()
                    .push(serde_json::from_slice(&request).unwrap());
                if hang {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    return;
                }
                let response = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
            });
        }
    });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_approver_decides_and_fails_closed() {
    for (status, body, hang, written) in [
        (200, r#"{"decision": "allow"}"#, false, true),
        (
            200,
            r#"{"decision": "deny", "reason": "not today"}"#,
            false,
            false,
        ),
        (500, r#"{"decision": "allow"}"#, false, false),
        (200, r#"{"decision": "maybe"}"#, false, false),
        (200, r#"{"decision": "allow"}"#, true, false),
    ] {
        let env = TestEnv::new();
        let (url, seen) = webhook(status, body, hang).await;
        let host = governed(
            &env,
            &format!("[tenants.acme]\napproval_url = \"{url}\"\napproval_timeout_ms = 500\n"),
        )
        .await;
        let result = agent(
            &host,
            calls("write_file", json!({"path": "/data/w.txt", "content": "x"})),
        )
        .run(RunRequest::new(scope("acme", Some("alice")), "go"))
        .await
        .unwrap();
        assert_eq!(
            env.path().join("data-acme/w.txt").exists(),
            written,
            "{status} {body} hang={hang}: {}",
            result.output
        );
        let requests = seen.lock().unwrap().clone();
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0]["tool"], "write_file");
        assert_eq!(requests[0]["user"], "alice");
        assert_eq!(requests[0]["arguments"]["path"], "/data/w.txt");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edited_arguments_pass_the_policies_again_and_remembered_denials_hold() {
    let env = TestEnv::new();
    env.add_plugin(components::POLICY_DENY_ARGS, "deny-args", None);
    let host = governed(
        &env,
        "[[tenants.acme.policies]]\nplugin = \"deny-args\"\nconfig = { paths = [\"/data/secret*\"] }\nlimits = { cpu_ms = 2000 }\n",
    )
    .await;
    let asked = Arc::new(AtomicUsize::new(0));
    let with = |decision: ApprovalDecision| {
        let asked = asked.clone();
        Agent::builder("Be brief.")
            .host(host.clone())
            .model(model(vec![
                turn(
                    "",
                    &[("write_file", json!({"path": "/data/a.txt", "content": "x"}))],
                    1,
                ),
                turn(
                    "",
                    &[("write_file", json!({"path": "/data/b.txt", "content": "x"}))],
                    1,
                ),
                turn("done", &[], 1),
            ]))
            .approver(FnApprover::new(move |_| {
                asked.fetch_add(1, Ordering::SeqCst);
                let decision = decision.clone();
                async move { Ok(decision) }
            }))
            .build()
            .unwrap()
    };
    // The approver's edit points at a path the policy denies: refused.
    with(ApprovalDecision::Edit {
        arguments: json!({"path": "/data/secret.txt", "content": "x"}),
    })
    .run(RunRequest::new(scope("acme", Some("alice")), "go"))
    .await
    .unwrap();
    assert!(!env.path().join("data-acme/secret.txt").exists());
    let entries = audit_entries(&host, &env).await;
    assert!(entries.iter().any(|e| e.action == "tool_call"
        && e.data["decision"] == "deny"
        && e.data["decided_by"] == "policy deny-args"));
    // deny_always: asked once, neither call runs.
    asked.store(0, Ordering::SeqCst);
    with(ApprovalDecision::DenyAlways { reason: None })
        .run(RunRequest::new(scope("acme", Some("alice")), "go"))
        .await
        .unwrap();
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    assert!(!env.path().join("data-acme/a.txt").exists());
    assert!(!env.path().join("data-acme/b.txt").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_directory_cannot_replace_a_configured_policy() {
    let env = TestEnv::new();
    env.add_plugin(components::POLICY_DENY_ARGS, "deny-args", None);
    // acme's own directory offers its own "deny-args".
    let own = env.mkdir("tenants/acme");
    env.install(&own, components::FIXTURE_POLICY_VERDICT, "deny-args", None);
    let host = governed(
        &env,
        "[tenants.acme.permissions]\nmode = \"accept-edits\"\n\
         [[tenants.acme.policies]]\nplugin = \"deny-args\"\nconfig = { paths = [\"/data/x*\"] }\nlimits = { cpu_ms = 2000 }\n",
    )
    .await;
    let config = std::fs::read_to_string(env.path().join("loom.toml")).unwrap();
    std::fs::write(
        env.path().join("loom.toml"),
        config.replace(
            "[tenants.acme.grants]",
            "[tenants.acme]\nplugin_dirs = [\"tenants/acme\"]\n[tenants.acme.grants]",
        ),
    )
    .unwrap();
    drop(host);
    let host = Arc::new(
        Host::start(LoomConfig::load(&env.path().join("loom.toml")).unwrap())
            .await
            .unwrap(),
    );
    let out = agent(
        &host,
        calls("write_file", json!({"path": "/data/x.txt", "content": "x"})),
    )
    .run(RunRequest::new(scope("acme", Some("alice")), "go"))
    .await
    .unwrap()
    .output;
    assert!(
        out.contains("deny-args"),
        "the operator's policy answered: {out}"
    );
    assert!(!env.path().join("data-acme/x.txt").exists());
}
