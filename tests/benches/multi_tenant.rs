//! The multi-tenant load bench: N users × M turns through one shared agent
//! (the real ReAct component in its sandbox, a real tool component, a
//! scripted model), all users starting together. Each turn is one agent run:
//! the model calls `run_context`, sees the result, and answers with it.
//!
//! Reports p50/p99 turn latency, throughput, peak RSS, and isolation
//! violations (an answer carrying another user's or tenant's identity).
//!
//! Governance is on by default (`all`): each user's session is persisted in
//! redb, budgets are checked and charged at every model and tool call
//! (per-user daily tokens, per-run tool calls, a tenant monthly cost cap),
//! the permission chain runs (mode and deny list), rate limits are checked,
//! and every run writes its audit entries (run started/completed, two model
//! calls, the tool call and its result) to a signed, chained log. Name a
//! variant to measure what each feature costs: `bare` (none of it),
//! `sessions`, `budgets` (sessions + budgets + permissions + rate limits),
//! `all` (everything, the audit log included).
//!
//! Run: `cargo bench -p loom-tests --bench multi_tenant -- 100x3 500x3 [bare|sessions|budgets|all]`

use loom_host::agent::{Agent, RunRequest};
use loom_host::model::offline::{ScriptedModel, ScriptedToolCall, ScriptedTurn};
use loom_tests::{TestEnv, components, scope};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TENANTS: usize = 10;

#[global_allocator]
static ALLOCATOR: loom_host::allocator::Allocator = loom_host::allocator::Allocator;

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn main() {
    loom_host::allocator::tune();
    let shapes: Vec<(usize, usize)> = std::env::args()
        .skip(1)
        .filter_map(|a| {
            let (n, m) = a.split_once('x')?;
            Some((n.parse().ok()?, m.parse().ok()?))
        })
        .collect();
    let shapes = if shapes.is_empty() {
        vec![(100, 3), (500, 3)]
    } else {
        shapes
    };
    let variant = std::env::args()
        .skip(1)
        .find(|a| ["bare", "sessions", "budgets", "all"].contains(&a.as_str()))
        .unwrap_or_else(|| "all".into());
    let sessions = variant != "bare";
    let budgets = variant == "budgets" || variant == "all";
    let audit = variant == "all";
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let env = TestEnv::new();
    env.add_plugin(components::ARCH_REACT, "react", None);
    env.add_plugin(components::TOOL_RUN_CONTEXT, "run-context", None);
    let governance = |t: usize| {
        if !budgets {
            return String::new();
        }
        format!(
            "[tenants.t{t}.budgets]\ncost_usd_per_month = 1000000.0\n\
             [tenants.t{t}.user_budgets]\ntokens_per_day = 100000000\ntool_calls_per_run = 20\n\
             [tenants.t{t}.permissions]\nmode = \"default\"\ndeny = [\"shell_*\"]\n\
             [tenants.t{t}.user_rate_limits]\nruns_per_minute = 100000\nmodel_calls_per_minute = 100000\n"
        )
    };
    let tenants: String = (0..TENANTS)
        .map(|t| format!("[tenants.t{t}]\n{}", governance(t)))
        .collect();
    let audit_section = if audit {
        std::fs::write(env.path().join("audit.key"), "bench-audit-key-0123456789").expect("key");
        "[audit]\npath = \"audit.jsonl\"\nkey_file = \"audit.key\"\nfsync = \"interval\"\nfsync_interval_ms = 1000\n"
    } else {
        ""
    };
    // Sessions and counters are committed at once and fsynced every 100 ms
    // (a crash may lose that much; `fsync = "always"` is the default).
    let store_section = "[store]\nfsync = \"interval\"\nfsync_interval_ms = 100\n";
    let host = Arc::new(rt.block_on(env.host(&format!(
        "{audit_section}{store_section}[engine]\nmax_instances = 2000\n{tenants}"
    ))));
    let model = Arc::new(ScriptedModel::new(vec![
        ScriptedTurn {
            text: String::new(),
            tool_calls: vec![ScriptedToolCall {
                id: None,
                name: "run_context".into(),
                arguments: serde_json::json!({}),
            }],
            usage: None,
        },
        ScriptedTurn {
            text: "{last_tool_result}".into(),
            tool_calls: Vec::new(),
            usage: None,
        },
    ]));
    let mut builder = Agent::builder("Report who you serve.")
        .host(host.clone())
        .model(model);
    if sessions {
        builder = builder.sessions(host.sessions());
    }
    let agent = builder.build().expect("agent");
    println!(
        "multi-tenant load: 2 worker threads, {TENANTS} tenants, ReAct in its sandbox, scripted model, run_context tool; \
         governance `{variant}` (sessions {sessions}, budgets+permissions+rate limits {budgets}, audit {audit})"
    );
    for (users, turns) in shapes {
        // The first pass also fills the instance pool, the allocator's
        // heaps and the page tables; the second is the steady state of a
        // server that has been up for a while. Both are reported.
        let first = rt.block_on(load(&agent, users, turns, 0));
        println!("{users} users x {turns} turns (first pass): {first}");
        let mut steady: Vec<Report> = (0..STEADY_PASSES)
            .map(|pass| rt.block_on(load(&agent, users, turns, pass + 1)))
            .collect();
        steady.sort_by(|a, b| a.throughput().total_cmp(&b.throughput()));
        let median = &steady[steady.len() / 2];
        println!(
            "{users} users x {turns} turns (steady, median of {STEADY_PASSES} passes; range {:.0}-{:.0} turns/s): {median}",
            steady[0].throughput(),
            steady[steady.len() - 1].throughput(),
        );
    }
}

/// Passes measured after the first, per shape.
const STEADY_PASSES: usize = 15;

/// The outcome of one pass.
struct Report {
    turns: usize,
    wall: Duration,
    p50: Duration,
    p99: Duration,
    violations: usize,
    peak_rss_mib: u64,
}

impl Report {
    fn throughput(&self) -> f64 {
        self.turns as f64 / self.wall.as_secs_f64()
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} turns in {:.3} s = {:.0} turns/s; turn latency p50 {:.2} ms, p99 {:.2} ms; peak RSS {} MiB; isolation violations {}",
            self.turns,
            self.wall.as_secs_f64(),
            self.throughput(),
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3,
            self.peak_rss_mib,
            self.violations,
        )
    }
}

/// Run `users` × `turns` through `agent`, all users starting together;
/// each user's turns share a session of this pass.
async fn load(agent: &Agent, users: usize, turns: usize, pass: usize) -> Report {
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(users);
    for u in 0..users {
        let agent = agent.clone();
        tasks.push(tokio::spawn(async move {
            let tenant = format!("t{}", u % TENANTS);
            let user = format!("user_{u}");
            let mut out = Vec::with_capacity(turns);
            for _ in 0..turns {
                let t0 = Instant::now();
                let session = format!("{user}-p{pass}").parse().expect("session id");
                let result = agent
                    .run(RunRequest::new(
                        scope(&tenant, Some(&user)).with_session(session),
                        "who am I?",
                    ))
                    .await
                    .expect("run");
                let seen: serde_json::Value =
                    serde_json::from_str(&result.output).expect("json answer");
                let isolated = seen["user_id"] == user.as_str()
                    && seen["tenant"] == tenant.as_str()
                    && seen["run_id"] == result.run_id.as_str();
                out.push((t0.elapsed(), isolated));
            }
            out
        }));
    }
    let mut latencies = Vec::with_capacity(users * turns);
    for task in tasks {
        latencies.extend(task.await.expect("join"));
    }
    let wall = started.elapsed();
    let violations = latencies.iter().filter(|(_, ok)| !ok).count();
    let mut sorted: Vec<Duration> = latencies.iter().map(|(d, _)| *d).collect();
    sorted.sort();
    let pct = |p: f64| sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)];
    Report {
        turns: sorted.len(),
        wall,
        p50: pct(0.50),
        p99: pct(0.99),
        violations,
        peak_rss_mib: peak_rss_kib() / 1024,
    }
}
