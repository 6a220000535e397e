//! The multi-tenant load bench: N users × M turns through one shared agent
//! (the real ReAct component in its sandbox, a real tool component, a
//! scripted model), all users starting together. Each turn is one agent run:
//! the model calls `run_context`, sees the result, and answers with it.
//!
//! Reports p50/p99 turn latency, throughput, CPU per turn (the process's,
//! every thread included), peak RSS, and isolation violations (an answer
//! carrying another user's or tenant's identity).
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
//! `compose` measures composition instead: the same load through five
//! kinds of turn on one host, their passes interleaved (each pass runs
//! every kind, starting from a different one), so that they share the
//! process's conditions:
//!
//! * `react-1-tool`: the turn above (two model calls, one tool call);
//! * `react-2-tools-1-turn`: the model asks for `run_context` twice in one
//!   turn (two model calls, two tool calls, run as two tasks);
//! * `react-2-tool-turns`: the model asks for `run_context`, then again,
//!   then answers (three model calls, two tool calls);
//! * `router>react`: the `router` architecture (one `router` completion)
//!   hands the prompt to the named agent `worker` (`[agents.worker]`: ReAct
//!   with `run_context`) as a sub-agent, whose answer is the output;
//! * `supervisor>react`: the `supervisor` architecture delegates the task
//!   to `worker` in round 1 and, in round 2, answers `{"final": <the
//!   worker's result>}` (two `supervisor` completions, then the sub-agent's
//!   two and its tool call).
//!
//! The worker runs in a sandbox of its own with its own run id and no
//! session: a composed turn's answer must carry the caller's tenant and
//! user, a run id other than the top-level run's, and the session derived
//! from the turn's (`<session>:worker`), and every
//! run id of a pass (top-level and sub-agent) must be distinct.
//!
//! `journal` adds the run journal to any variant: every result the
//! architecture receives (the input, each completion, each tool turn) is
//! written to the journal's log before the guest sees it, as
//! crash-resumable runs need.
//!
//! `journal-ab` measures what the journal costs: the same load through
//! one agent without the journal and one with it, on one host, their
//! passes interleaved (A then B, then B then A, ...), so that both see the
//! same machine; it reports both and the median over passes of B's cost
//! against the A pass next to it. On a shared, noisy machine this is the
//! number to trust; separate runs of `all` and `all journal` drift apart by
//! more than the journal costs. Next to the median it prints the middle
//! half of the pairs (from the first to the third quartile), which shows
//! how far a single run's median can be trusted.
//!
//! `journal-aa` is `journal-ab` with no journal in B either: the pairing's
//! own noise, which a difference `journal-ab` reports must clear.
//!
//! `telemetry` installs the `[telemetry]` file sink (every span and metric
//! of every run as a JSON line, at level `info`) before the load starts.
//!
//! `ladder` measures what each feature costs: one host per variant
//! (`bare`, `sessions`, `budgets`, `all`), their passes interleaved in
//! rounds (each round runs every variant once, starting from a different
//! one), and for each variant the median over rounds of its CPU per turn
//! minus `bare`'s and minus the variant before it in the same round. As
//! with `journal-ab`, these are the numbers to trust on a noisy machine.
//!
//! `provider` puts the real OpenAI provider in the scripted model's place
//! (the `react-1-tool` turn only): each completion is a streamed Chat
//! Completions request over loopback HTTP to a server in a process of its
//! own (this binary, started as `model-server`), which plays the same
//! script (a `run_context` call, then the tool's result as the answer).
//! The turn then does what a deployed one does on the client side
//! (encoding the request, HTTP, parsing the event stream, pricing the
//! usage); the server's CPU is its own process's and is not counted.
//!
//! `store-fsync-ms=N` makes the store fsync every N ms instead of 100
//! (commits are visible at once either way; see `[store] fsync`).
//!
//! `passes=N` measures N steady passes (or pairs, or rounds) per shape
//! instead of 15: more passes, a steadier median on a noisy machine.
//!
//! Run: `cargo bench -p loom-tests --bench multi_tenant -- 100x3 500x3 [bare|sessions|budgets|all] [journal|journal-ab|journal-aa] [telemetry] [provider] [compose] [ladder] [store-fsync-ms=N] [passes=N]`

use loom_host::agent::{Agent, AgentBuilder, JournalSettings, RunRequest};
use loom_host::model::http::Connection;
use loom_host::model::offline::{ScriptedModel, ScriptedToolCall, ScriptedTurn};
use loom_host::model::openai::{OpenAiConfig, OpenAiModel};
use loom_host::model::{
    BoxFuture, ChunkSink, FinishReason, Message, Model, ModelError, ModelRequest, ModelResponse,
    Role, Usage,
};
use loom_tests::{TestEnv, components, scope};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

const TENANTS: usize = 10;

/// The prompt of every turn, and the task the supervisor delegates.
const PROMPT: &str = "who am I?";

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

/// CPU time of the whole process so far: every thread, exited ones too
/// (the scheduler's own accounting, in nanoseconds).
#[allow(
    unsafe_code,
    reason = "reading the process CPU clock is a single libc call"
)]
fn process_cpu() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write to, and
    // CLOCK_PROCESS_CPUTIME_ID is supported on every Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// A model turn asking for `run_context` `calls` times.
fn tool_turn(calls: usize) -> ScriptedTurn {
    ScriptedTurn {
        text: String::new(),
        tool_calls: (0..calls)
            .map(|_| ScriptedToolCall {
                id: None,
                name: "run_context".into(),
                arguments: serde_json::json!({}),
            })
            .collect(),
        usage: None,
    }
}

/// A model turn answering with the latest tool result.
fn answer_turn() -> ScriptedTurn {
    ScriptedTurn {
        text: "{last_tool_result}".into(),
        tool_calls: Vec::new(),
        usage: None,
    }
}

/// Rough token count of a request (characters / 4), as the scripted model
/// reports it.
fn estimate_tokens(request: &ModelRequest) -> u64 {
    let chars: usize = request.messages.iter().map(|m| m.content.len() + 4).sum();
    (chars as u64).div_ceil(4)
}

/// The supervisor's scripted model: while its request shows no result of
/// `worker`, it delegates [`PROMPT`] to `worker`; once it shows one, it
/// answers `{"final": <that result>}` (the worker's JSON answer, as JSON).
struct SupervisorScript;

impl SupervisorScript {
    /// The reply to a request whose last user message is `text`.
    fn reply(text: &str) -> Result<String, ModelError> {
        let marker = format!("[worker] {PROMPT} -> ");
        let Some(at) = text.find(&marker) else {
            return Ok(serde_json::json!({
                "delegate": [{"worker": "worker", "task": PROMPT}]
            })
            .to_string());
        };
        let rest = &text[at + marker.len()..];
        let result = serde_json::Deserializer::from_str(rest)
            .into_iter::<serde_json::Value>()
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| ModelError::InvalidRequest {
                message: format!("the worker's result is not JSON: {rest:.200}"),
            })?;
        Ok(serde_json::json!({ "final": result }).to_string())
    }
}

impl Model for SupervisorScript {
    fn id(&self) -> &str {
        "scripted:supervisor"
    }

    fn complete<'a>(
        &'a self,
        request: &'a ModelRequest,
        _sink: Option<ChunkSink<'a>>,
    ) -> BoxFuture<'a, Result<ModelResponse, ModelError>> {
        Box::pin(async move {
            let text = request
                .messages
                .iter()
                .rev()
                .find(|m| m.role == Role::User)
                .map(|m| m.content.as_str())
                .unwrap_or("");
            let reply = Self::reply(text)?;
            Ok(ModelResponse {
                usage: Usage {
                    input_tokens: estimate_tokens(request),
                    output_tokens: (reply.len() as u64).div_ceil(4),
                    cached_tokens: 0,
                    cache_write_tokens: 0,
                },
                message: Message::assistant(reply),
                finish_reason: FinishReason::Stop,
            })
        })
    }
}

/// One kind of turn of the `compose` mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    React1,
    React2Parallel,
    React2Turns,
    Router,
    Supervisor,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::React1,
        Kind::React2Parallel,
        Kind::React2Turns,
        Kind::Router,
        Kind::Supervisor,
    ];

    fn label(self) -> &'static str {
        match self {
            Kind::React1 => "react-1-tool",
            Kind::React2Parallel => "react-2-tools-1-turn",
            Kind::React2Turns => "react-2-tool-turns",
            Kind::Router => "router>react",
            Kind::Supervisor => "supervisor>react",
        }
    }

    /// What one turn runs: (model calls, architecture sandboxes, tool sandboxes).
    fn shape(self) -> (usize, usize, usize) {
        match self {
            Kind::React1 => (2, 1, 1),
            Kind::React2Parallel => (2, 1, 2),
            Kind::React2Turns => (3, 1, 2),
            Kind::Router => (3, 2, 1),
            Kind::Supervisor => (4, 2, 1),
        }
    }

    /// The answer comes from a sub-agent.
    fn composed(self) -> bool {
        matches!(self, Kind::Router | Kind::Supervisor)
    }

    /// This kind's agent on `base` (host, instructions, sessions set).
    fn agent(self, base: AgentBuilder) -> Agent {
        let react =
            |turns: Vec<ScriptedTurn>| -> Arc<dyn Model> { Arc::new(ScriptedModel::new(turns)) };
        let one = || react(vec![tool_turn(1), answer_turn()]);
        let worker = serde_json::json!({
            "worker": {"description": "reports who it serves", "agent": "worker"}
        });
        let builder = match self {
            Kind::React1 => base.model(one()),
            Kind::React2Parallel => base.model(react(vec![tool_turn(2), answer_turn()])),
            Kind::React2Turns => base.model(react(vec![tool_turn(1), tool_turn(1), answer_turn()])),
            // The named agent `worker` has no model of its own: it runs on
            // the delegating agent's, the one-tool ReAct script.
            Kind::Router => base
                .model(one())
                .architecture("router")
                .architecture_config(serde_json::json!({ "routes": worker }))
                .role_model(
                    "router",
                    Arc::new(ScriptedModel::new(vec![ScriptedTurn {
                        text: "worker".into(),
                        tool_calls: Vec::new(),
                        usage: None,
                    }])),
                ),
            Kind::Supervisor => base
                .model(one())
                .architecture("supervisor")
                .architecture_config(serde_json::json!({ "workers": worker }))
                .role_model("supervisor", Arc::new(SupervisorScript)),
        };
        builder.build().expect("agent")
    }
}

/// Raise the soft limit on open files to the hard one: 500 users over two
/// agents keep a thousand connections to the model server open.
#[allow(
    unsafe_code,
    reason = "reading and setting a resource limit are single libc calls"
)]
fn raise_open_files_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit to write to and to read from.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("model-server") {
        model_server::serve();
        return;
    }
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
    let compose = std::env::args().skip(1).any(|a| a == "compose");
    let journal = std::env::args().skip(1).any(|a| a == "journal");
    let journal_ab = std::env::args().skip(1).any(|a| a == "journal-ab");
    let journal_aa = std::env::args().skip(1).any(|a| a == "journal-aa");
    let telemetry = std::env::args().skip(1).any(|a| a == "telemetry");
    let ladder = std::env::args().skip(1).any(|a| a == "ladder");
    let provider = std::env::args().skip(1).any(|a| a == "provider");
    let store_fsync_ms = std::env::args()
        .skip(1)
        .find_map(|a| a.strip_prefix("store-fsync-ms=").map(str::to_owned))
        .map_or(100, |n| n.parse::<u64>().expect("store-fsync-ms=N"));
    let sessions = variant != "bare";
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    if ladder {
        println!(
            "governance ladder: 2 worker threads, {TENANTS} tenants, ReAct in its sandbox, scripted model, run_context tool; \
             one host per variant (bare, sessions, budgets, all), store fsync every {store_fsync_ms} ms, passes interleaved"
        );
        let hosts: Vec<(&str, TestEnv, Agent)> = VARIANTS
            .iter()
            .map(|&variant| {
                let (env, host) = governed_host(&rt, variant, false, store_fsync_ms);
                let mut builder = Agent::builder("Report who you serve.").host(host.clone());
                if variant != "bare" {
                    builder = builder.sessions(host.sessions());
                }
                (variant, env, Kind::React1.agent(builder))
            })
            .collect();
        for (users, turns) in shapes {
            ladder_shape(&rt, &hosts, users, turns);
        }
        return;
    }
    let budgets = variant == "budgets" || variant == "all";
    let audit = variant == "all";
    let telemetry_dir = TestEnv::new();
    // Kept for the whole bench: dropping it flushes the file.
    let _telemetry = telemetry.then(|| {
        loom_host::telemetry::install(
            &loom_host::telemetry::TelemetryConfig {
                console: false,
                file: Some(telemetry_dir.path().join("telemetry.jsonl")),
                ..Default::default()
            },
            0,
        )
        .expect("telemetry")
    });
    let (_env, host) = governed_host(&rt, &variant, compose, store_fsync_ms);
    // Kept for the whole bench: dropping it stops the server.
    if provider {
        raise_open_files_limit();
    }
    let server = provider.then(model_server::ModelServer::start);
    let react1 = |base: AgentBuilder| match &server {
        Some(server) => base.model(server.model()).build().expect("agent"),
        None => Kind::React1.agent(base),
    };
    let model_label = if provider {
        "OpenAI provider over loopback HTTP (server in another process)"
    } else {
        "scripted model"
    };
    let base_with = |journal: bool| {
        let mut builder = Agent::builder("Report who you serve.").host(host.clone());
        if sessions {
            builder = builder.sessions(host.sessions());
        }
        if journal {
            builder = builder.journal(JournalSettings {
                journal: host.journal().clone(),
                keep_finished: false,
            });
        }
        builder
    };
    let base = || base_with(journal);
    let features = format!(
        "governance `{variant}` (sessions {sessions}, budgets+permissions+rate limits {budgets}, audit {audit}), journal {journal}, telemetry file {telemetry}"
    );
    if compose {
        assert!(
            !provider,
            "`provider` measures the react-1-tool turn; it does not go with `compose`"
        );
        println!(
            "composition under load: 2 worker threads, {TENANTS} tenants, scripted models, run_context tool; {features}; \
             kinds of turn interleaved pass by pass"
        );
        let agents: Vec<(Kind, Agent)> = Kind::ALL.iter().map(|&k| (k, k.agent(base()))).collect();
        for (users, turns) in shapes {
            compose_shape(&rt, &agents, users, turns);
        }
        return;
    }
    if journal_ab || journal_aa {
        let b_label = if journal_aa {
            "no journal either (A/A: the pairing's own noise)"
        } else {
            "journal"
        };
        println!(
            "journal A/B: 2 worker threads, {TENANTS} tenants, ReAct in its sandbox, {model_label}, run_context tool; {features}; \
             A = no journal, B = {b_label}, passes interleaved"
        );
        let a = react1(base_with(false));
        let b = react1(base_with(!journal_aa));
        for (users, turns) in shapes {
            journal_ab_shape(&rt, &a, &b, users, turns);
        }
        return;
    }
    let agent = react1(base());
    println!(
        "multi-tenant load: 2 worker threads, {TENANTS} tenants, ReAct in its sandbox, {model_label}, run_context tool; {features}"
    );
    for (users, turns) in shapes {
        // The first pass also fills the instance pool, the allocator's
        // heaps and the page tables; the second is the steady state of a
        // server that has been up for a while. Both are reported.
        let first = rt.block_on(load(&agent, Kind::React1, users, turns, "", 0));
        println!("{users} users x {turns} turns (first pass): {first}");
        let mut steady: Vec<Report> = (0..steady_passes())
            .map(|pass| rt.block_on(load(&agent, Kind::React1, users, turns, "", pass + 1)))
            .collect();
        steady.sort_by(|a, b| a.throughput().total_cmp(&b.throughput()));
        let median = &steady[steady.len() / 2];
        println!(
            "{users} users x {turns} turns (steady, median of {} passes; range {:.0}-{:.0} turns/s): {median}",
            steady_passes(),
            steady[0].throughput(),
            steady[steady.len() - 1].throughput(),
        );
    }
}

/// The governance variants, cheapest first.
const VARIANTS: [&str; 4] = ["bare", "sessions", "budgets", "all"];

/// A host in a directory of its own with `variant`'s governance: `budgets`
/// and `all` configure budgets, permissions and rate limits for every
/// tenant, `all` the audit log too; `compose` adds the router, the
/// supervisor and the named agent `worker`. The store commits at once and
/// fsyncs every `store_fsync_ms`.
fn governed_host(
    rt: &tokio::runtime::Runtime,
    variant: &str,
    compose: bool,
    store_fsync_ms: u64,
) -> (TestEnv, Arc<loom_host::Host>) {
    let budgets = variant == "budgets" || variant == "all";
    let audit = variant == "all";
    let env = TestEnv::new();
    env.add_plugin(components::ARCH_REACT, "react", None);
    env.add_plugin(components::TOOL_RUN_CONTEXT, "run-context", None);
    if compose {
        env.add_plugin(components::ARCH_ROUTER, "router", None);
        env.add_plugin(components::ARCH_SUPERVISOR, "supervisor", None);
    }
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
    // Sessions and counters are committed at once and fsynced every
    // `store_fsync_ms` (a crash may lose that much; `fsync = "always"` is
    // the default).
    let store_section =
        format!("[store]\nfsync = \"interval\"\nfsync_interval_ms = {store_fsync_ms}\n");
    // The sub-agent of the composed turns: ReAct with `run_context`, on the
    // delegating agent's model.
    let agents_section = if compose {
        "[agents.worker]\ninstructions = \"Report who you serve.\"\narchitecture = \"react\"\ntools = [\"run_context\"]\n"
    } else {
        ""
    };
    let host = Arc::new(rt.block_on(env.host(&format!(
        "{audit_section}{store_section}{agents_section}[engine]\nmax_instances = 2000\n{tenants}"
    ))));
    (env, host)
}

/// One shape of the `ladder` mode: a first pass of each variant, then
/// [`steady_passes`] rounds, each running every variant once, starting
/// from a different one each round.
fn ladder_shape(
    rt: &tokio::runtime::Runtime,
    hosts: &[(&str, TestEnv, Agent)],
    users: usize,
    turns: usize,
) {
    for (variant, _, agent) in hosts {
        let first = rt.block_on(load(agent, Kind::React1, users, turns, "", 0));
        println!("{users} users x {turns} turns, {variant} (first pass): {first}");
    }
    let mut rounds: Vec<Vec<Report>> = Vec::new();
    for pass in 0..steady_passes() {
        let mut round: Vec<Option<Report>> = hosts.iter().map(|_| None).collect();
        for step in 0..hosts.len() {
            let i = (pass + step) % hosts.len();
            round[i] =
                Some(rt.block_on(load(&hosts[i].2, Kind::React1, users, turns, "", pass + 1)));
        }
        rounds.push(round.into_iter().flatten().collect());
    }
    let cpu = |r: &Report| r.cpu_per_turn().as_secs_f64() * 1e6;
    for (i, (variant, _, _)) in hosts.iter().enumerate() {
        let mut throughput: Vec<f64> = rounds.iter().map(|r| r[i].throughput()).collect();
        let mut cpus: Vec<f64> = rounds.iter().map(|r| cpu(&r[i])).collect();
        let mut p50: Vec<f64> = rounds
            .iter()
            .map(|r| r[i].p50.as_secs_f64() * 1e3)
            .collect();
        let mut over_bare: Vec<f64> = rounds.iter().map(|r| cpu(&r[i]) - cpu(&r[0])).collect();
        let mut over_previous: Vec<f64> = rounds
            .iter()
            .map(|r| cpu(&r[i]) - cpu(&r[i.saturating_sub(1)]))
            .collect();
        let violations: usize = rounds.iter().map(|r| r[i].violations).sum();
        println!(
            "{users} users x {turns} turns, {variant:>8}, steady, median of {} rounds: {:.0} turns/s, \
             {:.0} µs CPU per turn ({:+.0} µs over bare, {:+.0} µs over the step before), p50 {:.2} ms; violations {violations}",
            steady_passes(),
            median(&mut throughput),
            median(&mut cpus),
            median(&mut over_bare),
            median(&mut over_previous),
            median(&mut p50),
        );
    }
}

/// One shape of the `journal-ab` mode: a first pass of each, then
/// [`steady_passes`] pairs, alternating which goes first.
fn journal_ab_shape(
    rt: &tokio::runtime::Runtime,
    a: &Agent,
    b: &Agent,
    users: usize,
    turns: usize,
) {
    for (label, agent) in [("A", a), ("B", b)] {
        let first = rt.block_on(load(agent, Kind::React1, users, turns, label, 0));
        println!("{users} users x {turns} turns, {label} (first pass): {first}");
    }
    let mut pairs = Vec::new();
    for pass in 0..steady_passes() {
        let (ra, rb) = if pass % 2 == 0 {
            let ra = rt.block_on(load(a, Kind::React1, users, turns, "A", pass + 1));
            let rb = rt.block_on(load(b, Kind::React1, users, turns, "B", pass + 1));
            (ra, rb)
        } else {
            let rb = rt.block_on(load(b, Kind::React1, users, turns, "B", pass + 1));
            let ra = rt.block_on(load(a, Kind::React1, users, turns, "A", pass + 1));
            (ra, rb)
        };
        pairs.push((ra, rb));
    }
    let cpu = |r: &Report| r.cpu_per_turn().as_secs_f64() * 1e6;
    let mut ta: Vec<f64> = pairs.iter().map(|(a, _)| a.throughput()).collect();
    let mut tb: Vec<f64> = pairs.iter().map(|(_, b)| b.throughput()).collect();
    let mut ca: Vec<f64> = pairs.iter().map(|(a, _)| cpu(a)).collect();
    let mut cb: Vec<f64> = pairs.iter().map(|(_, b)| cpu(b)).collect();
    let mut throughput_cost: Vec<f64> = pairs
        .iter()
        .map(|(a, b)| (1.0 - b.throughput() / a.throughput()) * 100.0)
        .collect();
    let mut cpu_cost: Vec<f64> = pairs
        .iter()
        .map(|(a, b)| (cpu(b) / cpu(a) - 1.0) * 100.0)
        .collect();
    let mut cpu_added: Vec<f64> = pairs.iter().map(|(a, b)| cpu(b) - cpu(a)).collect();
    let mut pa: Vec<f64> = pairs
        .iter()
        .map(|(a, _)| a.p50.as_secs_f64() * 1e3)
        .collect();
    let mut pb: Vec<f64> = pairs
        .iter()
        .map(|(_, b)| b.p50.as_secs_f64() * 1e3)
        .collect();
    let violations: usize = pairs.iter().map(|(a, b)| a.violations + b.violations).sum();
    let (added_low, added_high) = middle_half(&mut cpu_added);
    println!(
        "{users} users x {turns} turns, steady state, median of {} interleaved pairs: \
         A {:.0} turns/s, {:.0} µs CPU per turn, p50 {:.2} ms; \
         B (journal) {:.0} turns/s, {:.0} µs CPU per turn, p50 {:.2} ms; \
         journal effect per pair (median): throughput {:+.1} %, CPU per turn {:+.1} % ({:+.1} µs), \
         middle half of pairs {added_low:+.1}..{added_high:+.1} µs; violations {violations}",
        steady_passes(),
        median(&mut ta),
        median(&mut ca),
        median(&mut pa),
        median(&mut tb),
        median(&mut cb),
        median(&mut pb),
        -median(&mut throughput_cost),
        median(&mut cpu_cost),
        median(&mut cpu_added),
    );
}

/// Passes measured after the first, per shape: `passes=N` on the command
/// line, else 15.
fn steady_passes() -> usize {
    static PASSES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *PASSES.get_or_init(|| {
        std::env::args()
            .skip(1)
            .find_map(|a| a.strip_prefix("passes=").and_then(|n| n.parse().ok()))
            .filter(|&n: &usize| n > 0)
            .unwrap_or(15)
    })
}

/// The first and third quartiles of `values` (sorted here): the range of
/// the middle half.
fn middle_half(values: &mut [f64]) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    let last = values.len().saturating_sub(1);
    (values[last / 4], values[(3 * last).div_ceil(4)])
}

/// The median of `values` (sorted here).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// One shape of the `compose` mode: a first pass of every kind, then
/// [`steady_passes`] rounds, each running every kind once (round `r`
/// starting from kind `r`), then a table of the steady passes.
fn compose_shape(
    rt: &tokio::runtime::Runtime,
    agents: &[(Kind, Agent)],
    users: usize,
    turns: usize,
) {
    for (kind, agent) in agents {
        let first = rt.block_on(load(agent, *kind, users, turns, "", 0));
        println!(
            "{users} users x {turns} turns, {} (first pass): {first}",
            kind.label()
        );
    }
    let mut steady: Vec<Vec<Report>> = agents.iter().map(|_| Vec::new()).collect();
    for pass in 0..steady_passes() {
        for i in 0..agents.len() {
            let k = (pass + i) % agents.len();
            let (kind, agent) = &agents[k];
            steady[k].push(rt.block_on(load(agent, *kind, users, turns, "", pass + 1)));
        }
    }
    println!(
        "\n{users} users x {turns} turns, steady state: median of {} interleaved passes (range); \
         Δ = median over passes of (this kind's CPU per turn - react-1-tool's in the same round)\n",
        steady_passes()
    );
    println!(
        "| turn | model calls | arch + tool sandboxes | turns/s | CPU per turn | Δ CPU vs react-1-tool | p50 | p99 | violations |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let cpu = |r: &Report| r.cpu_per_turn().as_secs_f64() * 1e6;
    let mut deltas = Vec::new();
    for (k, (kind, _)) in agents.iter().enumerate() {
        let reports = &steady[k];
        let mut throughput: Vec<f64> = reports.iter().map(Report::throughput).collect();
        let mut cpus: Vec<f64> = reports.iter().map(cpu).collect();
        let mut p50: Vec<f64> = reports.iter().map(|r| r.p50.as_secs_f64() * 1e3).collect();
        let mut p99: Vec<f64> = reports.iter().map(|r| r.p99.as_secs_f64() * 1e3).collect();
        let mut delta: Vec<f64> = reports
            .iter()
            .zip(&steady[0])
            .map(|(r, base)| cpu(r) - cpu(base))
            .collect();
        let violations: usize = reports.iter().map(|r| r.violations).sum();
        let (model_calls, archs, tools) = kind.shape();
        let (t_med, c_med, d_med) = (
            median(&mut throughput),
            median(&mut cpus),
            median(&mut delta),
        );
        deltas.push(d_med);
        println!(
            "| {} | {model_calls} | {archs} + {tools} | {t_med:.0} ({:.0}-{:.0}) | {c_med:.0} µs ({:.0}-{:.0}) | {} | {:.2} ms | {:.2} ms | {violations} |",
            kind.label(),
            throughput[0],
            throughput[throughput.len() - 1],
            cpus[0],
            cpus[cpus.len() - 1],
            if k == 0 {
                "-".to_owned()
            } else {
                format!("{d_med:+.0} µs")
            },
            median(&mut p50),
            median(&mut p99),
        );
    }
    println!(
        "\nmarginal CPU per turn: one tool call (2 tools in 1 turn - 1 tool) {:+.0} µs; \
         one tool-calling step, a tool call and a model call (2 tool turns - 1) {:+.0} µs; \
         one sub-agent, its sandbox, delegation and a model call (router>react - react) {:+.0} µs; \
         supervisor>react - react {:+.0} µs; peak RSS {} MiB\n",
        deltas[1],
        deltas[2],
        deltas[3],
        deltas[4],
        peak_rss_kib() / 1024,
    );
}

/// The outcome of one pass.
struct Report {
    turns: usize,
    wall: Duration,
    /// CPU time of the whole process during the pass.
    cpu: Duration,
    p50: Duration,
    p99: Duration,
    violations: usize,
    peak_rss_mib: u64,
}

impl Report {
    fn throughput(&self) -> f64 {
        self.turns as f64 / self.wall.as_secs_f64()
    }

    fn cpu_per_turn(&self) -> Duration {
        self.cpu / self.turns.max(1) as u32
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} turns in {:.3} s = {:.0} turns/s; CPU per turn {:.0} µs; turn latency p50 {:.2} ms, p99 {:.2} ms; peak RSS {} MiB; isolation violations {}",
            self.turns,
            self.wall.as_secs_f64(),
            self.throughput(),
            self.cpu_per_turn().as_secs_f64() * 1e6,
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3,
            self.peak_rss_mib,
            self.violations,
        )
    }
}

/// How long a pass waits after its last turn before reading the CPU clock,
/// so that the writer threads' work for it (session commits, audit
/// entries) is counted in it rather than in the next pass.
const SETTLE: Duration = Duration::from_millis(30);

/// Run `users` × `turns` turns of `kind` through `agent`, all users
/// starting together; each user's turns share a session of this pass and
/// `series`. Loads through different agents of one host (the two of
/// `journal-ab`) name different series, so that neither continues the
/// other's sessions (a turn's cost grows with its session's history).
///
/// A turn is isolated when its answer names the caller's tenant and user
/// and: for ReAct, the turn's own run id; for a composed turn, a run id
/// other than the turn's (the sub-agent's own) and the session derived
/// from the turn's (`<session>:worker`). Every run
/// id a pass sees (the turns' and the sub-agents') must be distinct; each
/// repeat counts as a violation.
async fn load(
    agent: &Agent,
    kind: Kind,
    users: usize,
    turns: usize,
    series: &str,
    pass: usize,
) -> Report {
    let label = format!("{}{series}", kind.label().replace('>', "-"));
    let cpu_start = process_cpu();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(users);
    for u in 0..users {
        let agent = agent.clone();
        let label = label.clone();
        tasks.push(tokio::spawn(async move {
            let tenant = format!("t{}", u % TENANTS);
            let user = format!("user_{u}");
            let mut out = Vec::with_capacity(turns);
            for _ in 0..turns {
                let t0 = Instant::now();
                let session = format!("{user}-{label}-p{pass}");
                let result = agent
                    .run(RunRequest::new(
                        scope(&tenant, Some(&user))
                            .with_session(session.parse().expect("session id")),
                        PROMPT,
                    ))
                    .await
                    .expect("run");
                let elapsed = t0.elapsed();
                let seen: serde_json::Value =
                    serde_json::from_str(&result.output).expect("json answer");
                let run_id = result.run_id.to_string();
                let seen_run = seen["run_id"].as_str().unwrap_or_default().to_owned();
                let caller = seen["user_id"] == user.as_str() && seen["tenant"] == tenant.as_str();
                let isolated = caller
                    && if kind.composed() {
                        !seen_run.is_empty()
                            && seen_run != run_id
                            && seen["session_id"] == format!("{session}:worker").as_str()
                    } else {
                        seen_run == run_id
                    };
                out.push((elapsed, isolated, run_id, seen_run));
            }
            out
        }));
    }
    let mut latencies = Vec::with_capacity(users * turns);
    for task in tasks {
        latencies.extend(task.await.expect("join"));
    }
    let wall = started.elapsed();
    tokio::time::sleep(SETTLE).await;
    let cpu = process_cpu().saturating_sub(cpu_start);
    let mut violations = latencies.iter().filter(|(_, ok, _, _)| !ok).count();
    if kind.composed() {
        let mut ids = HashSet::with_capacity(2 * latencies.len());
        for (_, _, run, seen) in &latencies {
            violations += usize::from(!ids.insert(run.as_str()));
            violations += usize::from(!ids.insert(seen.as_str()));
        }
    }
    let mut sorted: Vec<Duration> = latencies.iter().map(|(d, ..)| *d).collect();
    sorted.sort();
    let pct = |p: f64| sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)];
    Report {
        turns: sorted.len(),
        wall,
        cpu,
        p50: pct(0.50),
        p99: pct(0.99),
        violations,
        peak_rss_mib: peak_rss_kib() / 1024,
    }
}

/// The `provider` mode's model server: a process of its own speaking the
/// OpenAI Chat Completions wire format (HTTP/1.1 with keep-alive, the
/// response streamed as server-sent events), playing the react-1-tool
/// script statelessly from each request: a `run_context` call, or, once
/// the conversation's last message is a tool result, that result as the
/// answer.
mod model_server {
    use super::{Arc, Connection, Model, OpenAiConfig, OpenAiModel};
    use serde_json::{Value, json};
    use std::io::{BufRead, BufReader, Read, Write};
    use std::process::{Child, Command, Stdio};

    /// The server process, stopped when dropped (and, should the bench
    /// die first, when its stdin closes).
    pub struct ModelServer {
        child: Child,
        base_url: String,
    }

    impl ModelServer {
        /// Start this binary as `model-server` and read the address it
        /// listens on.
        pub fn start() -> ModelServer {
            let exe = std::env::current_exe().expect("the bench's own path");
            let mut child = Command::new(exe)
                .arg("model-server")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("start the model server");
            let mut line = String::new();
            BufReader::new(child.stdout.take().expect("its stdout"))
                .read_line(&mut line)
                .expect("the model server's address");
            let base_url = format!("http://{}/v1", line.trim());
            ModelServer { child, base_url }
        }

        /// The OpenAI provider, talking to this server.
        pub fn model(&self) -> Arc<dyn Model> {
            let connection = Connection::new("openai:gpt-4.1-mini", "gpt-4.1-mini", &self.base_url);
            Arc::new(
                OpenAiModel::new(OpenAiConfig {
                    connection,
                    native_structured_output: true,
                    max_tokens_field: "max_completion_tokens".into(),
                })
                .expect("provider"),
            )
        }
    }

    impl Drop for ModelServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Serve on a loopback port (printed on stdout) until killed or until
    /// stdin closes (the bench is gone): a thread per connection.
    pub fn serve() {
        super::raise_open_files_limit();
        std::thread::spawn(|| {
            let mut rest = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut rest);
            std::process::exit(0);
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        println!("{}", listener.local_addr().expect("address"));
        std::io::stdout().flush().expect("stdout");
        for socket in listener.incoming() {
            match socket {
                Ok(socket) => {
                    std::thread::spawn(move || connection(&socket));
                }
                // Out of descriptors or threads for a moment: let the
                // client wait rather than spin.
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
    }

    /// Answer requests on one connection until the client closes it.
    fn connection(socket: &std::net::TcpStream) {
        let _ = socket.set_nodelay(true);
        let mut writer = socket;
        let mut reader = BufReader::new(socket);
        let mut calls = 0u64;
        loop {
            let mut length = 0usize;
            let mut line = String::new();
            // The request line, then headers up to the blank line.
            let mut first = true;
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if line == "\r\n" {
                    if first {
                        continue;
                    }
                    break;
                }
                first = false;
                if let Some((name, value)) = line.split_once(':')
                    && name.eq_ignore_ascii_case("content-length")
                {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; length];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
            calls += 1;
            let events = reply(&body, calls);
            let head = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: {}\r\n\r\n",
                events.len()
            );
            if writer.write_all(head.as_bytes()).is_err()
                || writer.write_all(events.as_bytes()).is_err()
            {
                return;
            }
        }
    }

    /// The event stream answering the request `body` (`call`: a number
    /// for the tool call's id).
    fn reply(body: &[u8], call: u64) -> String {
        let request: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let last = request["messages"]
            .as_array()
            .and_then(|messages| messages.last())
            .cloned()
            .unwrap_or(Value::Null);
        let chunk = |delta: Value, finish: Option<&str>| {
            json!({
                "id": "chatcmpl-bench", "object": "chat.completion.chunk", "model": "gpt-4.1-mini",
                "choices": [{ "index": 0, "delta": delta, "finish_reason": finish }],
            })
        };
        let (deltas, output_chars) = if last["role"] == "tool" {
            let answer = last["content"].as_str().unwrap_or_default().to_owned();
            let chars = answer.len();
            (
                vec![
                    chunk(json!({"role": "assistant", "content": ""}), None),
                    chunk(json!({"content": answer}), None),
                    chunk(json!({}), Some("stop")),
                ],
                chars,
            )
        } else {
            (
                vec![
                    chunk(
                        json!({"role": "assistant", "content": null, "tool_calls": [{
                            "index": 0, "id": format!("call_{call}"), "type": "function",
                            "function": {"name": "run_context", "arguments": "{}"},
                        }]}),
                        None,
                    ),
                    chunk(json!({}), Some("tool_calls")),
                ],
                16,
            )
        };
        let prompt_tokens = body.len().div_ceil(4);
        let completion_tokens = output_chars.div_ceil(4);
        let usage = json!({
            "id": "chatcmpl-bench", "object": "chat.completion.chunk", "choices": [],
            "usage": {
                "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        });
        let mut events: String = deltas.iter().map(|c| format!("data: {c}\n\n")).collect();
        events.push_str(&format!("data: {usage}\n\ndata: [DONE]\n\n"));
        events
    }
}
