//! Architectures composed: reflexion over a supervisor over two named
//! workers (a react `researcher` and a self-refine `writer`), declared in
//! the configuration (`[agents.NAME]` with `workers`), every level a real
//! component in its own sandbox.
//! Proves that the user, the budget, the events and cancellation flow
//! through every level, that a round's delegations run in parallel, and
//! that the fan-out limit holds.

use loom_host::Host;
use loom_host::agent::{Agent, RunEvent, RunRequest};
use loom_host::model::{
    BoxFuture, ChunkSink, FinishReason, Message, Model, ModelError, ModelRequest, ModelResponse,
    ToolCall, Usage,
};
use loom_tests::{TestEnv, components, scope};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What a [`Playbook`] answers: text, or one tool call.
enum Reply {
    Text(String),
    Call(&'static str),
}

/// How a [`Playbook`] picks its answer from the request.
type Rule = dyn Fn(&ModelRequest, usize) -> Reply + Send + Sync;

/// A model that answers by rule (from the request and how many requests it
/// saw before), records every request, and can make its first calls wait
/// for a partner model to be in flight at the same time.
struct Playbook {
    name: &'static str,
    rule: Box<Rule>,
    seen: Mutex<Vec<ModelRequest>>,
    /// Met by this model's first call of each pair with its partner's.
    rendezvous: Option<Arc<tokio::sync::Barrier>>,
    /// Calls that waited for the partner in vain.
    alone: AtomicUsize,
    /// Never answers: for cancellation.
    hang: Option<Arc<HangProbe>>,
}

/// Tells the test that a hanging call started, and that it was dropped.
#[derive(Default)]
struct HangProbe {
    started: tokio::sync::Notify,
    dropped: AtomicUsize,
}

/// Counts a drop of the hanging call's future.
struct DropCounter(Arc<HangProbe>);

impl Drop for DropCounter {
    fn drop(&mut self) {
        self.0.dropped.fetch_add(1, Ordering::SeqCst);
    }
}

impl Playbook {
    fn new(
        name: &'static str,
        rule: impl Fn(&ModelRequest, usize) -> Reply + Send + Sync + 'static,
    ) -> Self {
        Playbook {
            name,
            rule: Box::new(rule),
            seen: Mutex::new(Vec::new()),
            rendezvous: None,
            alone: AtomicUsize::new(0),
            hang: None,
        }
    }

    fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// The text of the `n`th request's messages, joined.
    fn request_text(&self, n: usize) -> String {
        text_of(&self.seen.lock().unwrap()[n])
    }
}

fn text_of(request: &ModelRequest) -> String {
    request
        .messages
        .iter()
        .map(|m| m.content.clone())
        .collect::<Vec<_>>()
        .join("\n")
}

impl Model for Playbook {
    fn id(&self) -> &str {
        self.name
    }

    fn complete<'a>(
        &'a self,
        request: &'a ModelRequest,
        _sink: Option<ChunkSink<'a>>,
    ) -> BoxFuture<'a, Result<ModelResponse, ModelError>> {
        let seen = {
            let mut seen = self.seen.lock().unwrap();
            seen.push(request.clone());
            seen.len() - 1
        };
        Box::pin(async move {
            if let Some(probe) = &self.hang {
                let _counter = DropCounter(probe.clone());
                probe.started.notify_one();
                std::future::pending::<()>().await;
            }
            let first_call = !request.messages.iter().any(|m| m.tool_call_id.is_some());
            if let (Some(barrier), true) = (&self.rendezvous, first_call)
                && tokio::time::timeout(Duration::from_secs(20), barrier.wait())
                    .await
                    .is_err()
            {
                self.alone.fetch_add(1, Ordering::SeqCst);
            }
            let message = match (self.rule)(request, seen) {
                Reply::Text(text) => Message::assistant(text),
                Reply::Call(tool) => {
                    let mut message = Message::assistant("");
                    message.tool_calls.push(ToolCall {
                        id: format!("call-{seen}"),
                        name: tool.into(),
                        arguments: "{}".into(),
                    });
                    message
                }
            };
            let finish_reason = if message.tool_calls.is_empty() {
                FinishReason::Stop
            } else {
                FinishReason::ToolCalls
            };
            Ok(ModelResponse {
                message,
                usage: Usage {
                    input_tokens: 10,
                    output_tokens: 5,
                    ..Usage::default()
                },
                finish_reason,
            })
        })
    }
}

/// The composition in `loom.toml`: `team` is reflexion (two attempts)
/// over `crew`, a supervisor whose workers are the named agents
/// `researcher` (react) and `writer` (self-refine).
const TEAM: &str = r#"
[tenants.acme.permissions]
mode = "bypass"

[agents.researcher]
description = "finds facts"
instructions = "You research facts."
architecture = "react"

[agents.writer]
description = "writes prose"
instructions = "You write prose."
architecture = "self-refine"

[agents.crew]
architecture = "supervisor"
workers = ["researcher", "writer"]

[agents.helper]
instructions = "You help."
architecture = "react"
model = "echo"

[agents.team]
architecture = "reflexion"
[agents.team.architecture_config]
max_attempts = 2
base = "agent:crew"
"#;

async fn team_host(env: &TestEnv, extra: &str) -> Arc<Host> {
    for (component, name) in [
        (components::ARCH_REFLEXION, "reflexion"),
        (components::ARCH_SUPERVISOR, "supervisor"),
        (components::ARCH_REACT, "react"),
        (components::ARCH_SELF_REFINE, "self-refine"),
        (components::TOOL_RUN_CONTEXT, "run-context"),
    ] {
        env.add_plugin(component, name, None);
    }
    Arc::new(env.host(&format!("{TEAM}{extra}")).await)
}

/// Every model of the composition, one per role.
struct Cast {
    supervisor: Arc<Playbook>,
    researcher: Arc<Playbook>,
    executor: Arc<Playbook>,
    critic: Arc<Playbook>,
    evaluator: Arc<Playbook>,
    reflector: Arc<Playbook>,
}

impl Cast {
    /// The cast whose two workers' first calls wait for each other.
    fn new() -> Self {
        Self::with_rendezvous(true)
    }

    /// The cast; with `rendezvous`, each worker's first call of an attempt
    /// waits (up to 20 s) for the other's to be in flight too.
    fn with_rendezvous(rendezvous: bool) -> Self {
        let pair = rendezvous.then(|| Arc::new(tokio::sync::Barrier::new(2)));
        let mut researcher = Playbook::new("researcher", |request, _| {
            // Call run_context, then report what it said.
            match request
                .messages
                .iter()
                .rev()
                .find(|m| m.tool_call_id.is_some())
            {
                None => Reply::Call("run_context"),
                Some(result) => Reply::Text(format!("facts from {}", result.content)),
            }
        });
        researcher.rendezvous = pair.clone();
        let mut executor = Playbook::new("executor", |_, _| {
            Reply::Text("Rust is fast and memory-safe.".into())
        });
        executor.rendezvous = pair;
        Cast {
            supervisor: Arc::new(Playbook::new("supervisor", |request, _| {
                Reply::Text(if text_of(request).contains("Results so far: none yet") {
                    r#"{"delegate": [{"worker": "researcher", "task": "find facts about Rust"},
                                     {"worker": "writer", "task": "write a line about Rust"}]}"#
                        .into()
                } else {
                    r#"{"final": "Rust: fast, safe, and researched."}"#.into()
                })
            })),
            researcher: Arc::new(researcher),
            executor: Arc::new(executor),
            critic: Arc::new(Playbook::new("critic", |_, _| {
                Reply::Text("no_issues".into())
            })),
            evaluator: Arc::new(Playbook::new("evaluator", |_, n| {
                Reply::Text(if n == 0 { "Score: 0.2" } else { "Score: 0.9" }.into())
            })),
            reflector: Arc::new(Playbook::new("reflector", |_, _| {
                Reply::Text("Cite the sources.".into())
            })),
        }
    }

    /// The agent `[agents.team]` describes, on this cast's models.
    fn team(&self, host: &Arc<Host>) -> Agent {
        let settings = host.config().agents["team"].clone();
        Agent::builder(settings.instructions)
            .host(host.clone())
            .model(self.researcher.clone())
            .architecture(settings.architecture)
            .architecture_config(settings.architecture_config.unwrap())
            .role_model("supervisor", self.supervisor.clone())
            .role_model("executor", self.executor.clone())
            .role_model("critic", self.critic.clone())
            .role_model("evaluator", self.evaluator.clone())
            .role_model("reflector", self.reflector.clone())
            .build()
            .unwrap()
    }

    fn calls(&self) -> usize {
        [
            &self.supervisor,
            &self.researcher,
            &self.executor,
            &self.critic,
            &self.evaluator,
            &self.reflector,
        ]
        .iter()
        .map(|m| m.calls())
        .sum()
    }
}

/// Every event of a run, and its end.
async fn collect(agent: &Agent, request: RunRequest) -> Vec<RunEvent> {
    let mut stream = agent.stream(request);
    let mut events = Vec::new();
    while let Some(event) = stream.next().await {
        events.push(event);
    }
    events
}

/// The `(path, event type)` of every sub-agent event.
fn sub_agent_events(events: &[RunEvent]) -> Vec<(String, String)> {
    events
        .iter()
        .filter_map(|e| match e {
            RunEvent::SubAgent { path, event } => {
                let kind = serde_json::to_value(event.as_ref()).unwrap()["type"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                Some((path.clone(), kind))
            }
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflexion_over_a_supervisor_over_two_workers_carries_the_user_budget_and_events() {
    let env = TestEnv::new();
    let host = team_host(
        &env,
        "[tenants.acme.user_budgets]\ntokens_per_day = 100000\n",
    )
    .await;
    let cast = Cast::new();
    let events = collect(
        &cast.team(&host),
        RunRequest::new(
            scope("acme", Some("ann")).with_session("chat-1".parse().unwrap()),
            "Tell me about Rust",
        ),
    )
    .await;
    let Some(RunEvent::Completed { result }) = events.last() else {
        panic!("the run completes: {events:?}");
    };
    assert!(!result.interrupted, "{:?}", result.interruption_reason);
    assert_eq!(result.output, "Rust: fast, safe, and researched.");

    // Two attempts: each a supervisor that delegates to both workers at
    // once, then answers; the first scores low and teaches a lesson.
    assert_eq!(
        (
            cast.supervisor.calls(),
            cast.researcher.calls(),
            cast.executor.calls(),
            cast.critic.calls(),
            cast.evaluator.calls(),
            cast.reflector.calls(),
        ),
        (4, 4, 2, 2, 2, 1)
    );
    assert!(
        cast.supervisor
            .request_text(2)
            .contains("Cite the sources."),
        "the second attempt's supervisor sees the lesson"
    );
    // The workers ran in parallel: each one's first call met the other's.
    assert_eq!(cast.researcher.alone.load(Ordering::SeqCst), 0);
    assert_eq!(cast.executor.alone.load(Ordering::SeqCst), 0);

    // The user reached the tool two levels down, and its answer came back
    // up through the supervisor.
    let answer = cast.supervisor.request_text(1);
    assert!(answer.contains(r#""user_id":"ann""#), "{answer}");
    assert!(answer.contains(r#""tenant":"acme""#), "{answer}");
    // Each level runs in a session derived from its parent's.
    assert!(
        answer.contains(r#""session_id":"chat-1:crew:researcher""#),
        "{answer}"
    );

    // Every level's events, tagged with its path, in a started → completed
    // bracket per sub-agent.
    let tagged = sub_agent_events(&events);
    for path in ["crew", "crew/researcher", "crew/writer"] {
        let kinds: Vec<&str> = tagged
            .iter()
            .filter(|(p, _)| p == path)
            .map(|(_, k)| k.as_str())
            .collect();
        assert_eq!(kinds.first(), Some(&"started"), "{path}: {kinds:?}");
        assert_eq!(kinds.last(), Some(&"completed"), "{path}: {kinds:?}");
        assert_eq!(
            kinds.iter().filter(|k| **k == "started").count(),
            2,
            "{path} ran once per attempt: {kinds:?}"
        );
    }
    assert!(
        tagged.contains(&("crew/researcher".into(), "tool_call".into())),
        "{tagged:?}"
    );
    assert!(tagged.contains(&("crew".into(), "custom".into())));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, RunEvent::Custom { kind, .. } if kind == "attempt")),
        "the top level's own events are not tagged"
    );

    // Every completion at every level is charged to the run and to ann.
    let calls = cast.calls() as u64;
    assert_eq!(calls, 15);
    assert_eq!(result.usage.input_tokens, 10 * calls);
    assert_eq!(result.usage.output_tokens, 5 * calls);
    host.flush().await.unwrap();
    let budgets = &host.config().tenants["acme"].governance.budgets;
    let ann = loom_host::UserId::named("ann").unwrap();
    let usage = host
        .governance()
        .ledger()
        .usage(&"acme".parse().unwrap(), Some(&ann), budgets)
        .unwrap();
    let tokens = usage
        .iter()
        .find(|u| u.key == "tokens_per_day")
        .expect("ann's daily tokens are counted");
    assert_eq!(tokens.used, (15 * calls) as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_reached_two_levels_down_stops_the_whole_composition() {
    let env = TestEnv::new();
    // 15 tokens a call: the cap falls inside the first attempt's workers.
    let host = team_host(&env, "[tenants.acme.user_budgets]\ntokens_per_day = 50\n").await;
    // Whichever worker the cap stops never reaches its model: no rendezvous.
    let cast = Cast::with_rendezvous(false);
    let events = collect(
        &cast.team(&host),
        RunRequest::new(scope("acme", Some("bo")), "Tell me about Rust"),
    )
    .await;
    let Some(RunEvent::Completed { result }) = events.last() else {
        panic!("the run completes, interrupted: {events:?}");
    };
    assert!(result.interrupted);
    assert_eq!(
        result.interruption_reason.as_deref(),
        Some("budget:tokens_per_day")
    );
    let exceeded = events.iter().position(|e| match e {
        RunEvent::BudgetExceeded { .. } => true,
        RunEvent::SubAgent { event, .. } => matches!(**event, RunEvent::BudgetExceeded { .. }),
        _ => false,
    });
    assert!(
        exceeded.is_some_and(|at| at < events.len() - 1),
        "budget_exceeded comes before completed: {events:?}"
    );
    // No second attempt, and nothing ran past the cap by more than the
    // calls already in flight when it was reached.
    assert_eq!(cast.evaluator.calls(), 0);
    assert!(cast.calls() <= 6, "{} calls", cast.calls());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_run_cancels_the_sub_agents_it_started() {
    let env = TestEnv::new();
    let host = team_host(&env, "").await;
    let mut cast = Cast::new();
    // The writer's model never answers.
    let probe = Arc::new(HangProbe::default());
    let mut executor = Playbook::new("executor", |_, _| Reply::Text(String::new()));
    executor.hang = Some(probe.clone());
    cast.executor = Arc::new(executor);
    cast.researcher = Arc::new(Playbook::new("researcher", |_, _| {
        Reply::Text("facts".into())
    }));
    let agent = cast.team(&host);
    let mut stream = agent.stream(RunRequest::new(scope("acme", Some("cy")), "go"));
    let drive = async {
        while let Some(event) = stream.next().await {
            if let RunEvent::Completed { .. } | RunEvent::Error { .. } = event {
                panic!("the run cannot end while its writer hangs: {event:?}");
            }
        }
    };
    // The grandchild's model call is in flight...
    tokio::select! {
        _ = drive => panic!("the stream ended"),
        _ = probe.started.notified() => {}
    }
    assert_eq!(probe.dropped.load(Ordering::SeqCst), 0);
    // ...and dropping the top-level stream drops it.
    drop(stream);
    for _ in 0..100 {
        if probe.dropped.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(probe.dropped.load(Ordering::SeqCst), 1);
    // The host serves the next run.
    let cast = Cast::new();
    let result = cast
        .team(&host)
        .run(RunRequest::new(scope("acme", Some("cy")), "again"))
        .await
        .unwrap();
    assert!(!result.interrupted, "{:?}", result.interruption_reason);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_round_runs_at_most_sixteen_sub_agents_at_once() {
    let env = TestEnv::new();
    let host = team_host(&env, "").await;
    let tasks: Vec<String> = (0..20)
        .map(|n| format!(r#"{{"worker": "helper", "task": "task {n}"}}"#))
        .collect();
    let first = format!(r#"{{"delegate": [{}]}}"#, tasks.join(","));
    let supervisor = Arc::new(Playbook::new("supervisor", move |_, n| {
        Reply::Text(if n == 0 {
            first.clone()
        } else {
            r#"{"final": "done"}"#.into()
        })
    }));
    let agent = Agent::builder("")
        .host(host.clone())
        .model(supervisor.clone())
        .role_model("supervisor", supervisor.clone())
        .architecture("supervisor")
        .architecture_config(serde_json::json!({
            "workers": {"helper": {"description": "echoes", "agent": "helper"}}
        }))
        // Every worker's turn counts against the supervisor's cap.
        .max_turns(40)
        .build()
        .unwrap();
    let result = agent
        .run(RunRequest::new(scope("acme", Some("di")), "fan out"))
        .await
        .unwrap();
    assert_eq!(result.output, "done");
    let results = supervisor.request_text(1);
    assert_eq!(results.matches("-> Echo: task").count(), 16, "{results}");
    assert_eq!(
        results.matches("at most 16 sub-agents run at once").count(),
        4,
        "{results}"
    );
}
