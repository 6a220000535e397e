//! Memory: bi-temporal facts, supersession, episodes and blocks through a
//! real host and its redb file; agents that remember; forget and export.

use loom_host::Host;
use loom_host::agent::{Agent, MemoryOptions, RunRequest};
use loom_host::memory::{BlockEdit, FactQuery, Memory, NewFact, Timestamp};
use loom_host::model::{
    BoxFuture, ChunkSink, FinishReason, Message, Model, ModelError, ModelRequest, ModelResponse,
    Usage,
};
use loom_host::tenancy::ids::{SessionId, TenantId, UserId};
use loom_tests::{TestEnv, components, scope};
use std::sync::{Arc, Mutex};

fn acme() -> TenantId {
    "acme".parse().unwrap()
}

fn user(name: &str) -> UserId {
    UserId::named(name).unwrap()
}

fn at(text: &str) -> Timestamp {
    Timestamp::parse(text).unwrap()
}

fn lives_in(object: &str, from: &str) -> NewFact {
    NewFact {
        valid_from: Some(at(from)),
        ..NewFact::new("alice", "livesIn", object)
    }
}

async fn host(env: &TestEnv, extra: &str) -> Arc<Host> {
    Arc::new(
        env.host(&format!("[tenants.acme]\n{extra}[tenants.globex]\n"))
            .await,
    )
}

/// What the objects of `facts` are, in order.
fn objects(facts: &[loom_host::memory::Fact]) -> Vec<&str> {
    facts.iter().map(|f| f.object.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokyo_to_paris_on_both_time_axes() {
    let env = TestEnv::new();
    let host = host(&env, "").await;
    let memory = host.memory();
    let alice = user("alice");
    let tokyo = memory
        .add_fact(&acme(), &alice, lives_in("Tokyo", "2020-01-01"))
        .await
        .unwrap();
    assert!(tokyo.created && tokyo.closed.is_empty());
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let before_move_was_recorded = Timestamp::now();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let paris = memory
        .add_fact(
            &acme(),
            &alice,
            NewFact {
                valid_from: Some(at("2025-06-01")),
                ..NewFact::new("Alice", "lives-in", "Paris")
            },
        )
        .await
        .unwrap();
    assert_eq!(paris.closed.len(), 1, "Paris closes Tokyo");
    assert_eq!(paris.closed[0].valid_until, Some(at("2025-06-01")));

    let query = |valid_at: Option<&str>, known_at: Option<Timestamp>| FactQuery {
        valid_at: valid_at.map(at),
        known_at,
        ..FactQuery::default()
    };
    let facts = |q: FactQuery| memory.facts(&acme(), &alice, &q).unwrap();
    // World time, as known now.
    assert_eq!(objects(&facts(query(Some("2024-01-01"), None))), ["Tokyo"]);
    assert_eq!(objects(&facts(query(Some("2026-01-01"), None))), ["Paris"]);
    assert_eq!(
        objects(&facts(query(Some("2019-01-01"), None))),
        Vec::<&str>::new()
    );
    // Knowledge time: before the move was recorded, Loom believed Tokyo,
    // open-ended, so also in 2026.
    let then = facts(query(Some("2026-01-01"), Some(before_move_was_recorded)));
    assert_eq!(objects(&then), ["Tokyo"]);
    assert_eq!(then[0].valid_until, None);
    assert_eq!(then[0].id, tokyo.fact.id, "the original row, as it stood");
    // Both axes unset: every current belief (Tokyo closed, Paris open).
    let now = facts(query(None, None));
    assert_eq!(now.len(), 2);
    assert!(
        now.iter()
            .any(|f| f.object == "Tokyo" && f.valid_until == Some(at("2025-06-01")))
    );
    assert!(
        now.iter()
            .any(|f| f.object == "Paris" && f.valid_until.is_none())
    );
    // Before anything was recorded, nothing was known.
    assert!(facts(query(None, Some(at("2000-01-01")))).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supersession_is_scoped_to_the_user_and_the_same_object_closes_nothing() {
    let env = TestEnv::new();
    let host = host(&env, "").await;
    let memory = host.memory();
    let (alice, bob) = (user("alice"), user("bob"));
    for who in [&alice, &bob, &UserId::Anonymous] {
        memory
            .add_fact(&acme(), who, lives_in("Tokyo", "2020-01-01"))
            .await
            .unwrap();
    }
    memory
        .add_fact(
            &"globex".parse().unwrap(),
            &alice,
            lives_in("Tokyo", "2020-01-01"),
        )
        .await
        .unwrap();
    let moved = memory
        .add_fact(&acme(), &alice, lives_in("Paris", "2025-01-01"))
        .await
        .unwrap();
    assert_eq!(moved.closed.len(), 1);
    // Bob, the anonymous user and globex's alice still live in Tokyo.
    for (tenant, who) in [
        (acme(), bob.clone()),
        (acme(), UserId::Anonymous),
        ("globex".parse().unwrap(), alice.clone()),
    ] {
        let facts = memory.facts(&tenant, &who, &FactQuery::default()).unwrap();
        assert_eq!(objects(&facts), ["Tokyo"], "{tenant} {who}");
        assert_eq!(facts[0].valid_until, None);
    }
    // The same object again (another spelling of it and of the predicate)
    // closes nothing and records nothing.
    let again = memory
        .add_fact(
            &acme(),
            &alice,
            NewFact {
                valid_from: Some(at("2025-03-01")),
                ..NewFact::new("ALICE", "lives_in", "  paris ")
            },
        )
        .await
        .unwrap();
    assert!(!again.created && again.closed.is_empty());
    let all = memory
        .facts(
            &acme(),
            &alice,
            &FactQuery {
                known_at: Some(Timestamp::from_millis(i64::MAX)),
                ..FactQuery::default()
            },
        )
        .unwrap();
    assert_eq!(all.len(), 2, "Tokyo closed and Paris: {all:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predicates_are_canonical() {
    let env = TestEnv::new();
    let host = host(&env, "").await;
    let memory = host.memory();
    let alice = user("alice");
    for (spelling, object) in [
        ("Name_Is", "Al"),
        ("name-is", "Alice"),
        ("nameIs", "Alicia"),
    ] {
        let recorded = memory
            .add_fact(&acme(), &alice, NewFact::new("alice", spelling, object))
            .await
            .unwrap();
        assert_eq!(recorded.fact.predicate, "name_is");
    }
    let open: Vec<_> = memory
        .facts(&acme(), &alice, &FactQuery::default())
        .unwrap()
        .into_iter()
        .filter(|f| f.valid_until.is_none())
        .collect();
    assert_eq!(
        objects(&open),
        ["Alicia"],
        "one predicate: each closed the last"
    );
    let by_any_spelling = FactQuery {
        predicate: Some("NAME IS".into()),
        ..FactQuery::default()
    };
    assert_eq!(
        memory
            .facts(&acme(), &alice, &by_any_spelling)
            .unwrap()
            .len(),
        3
    );
    let empty = memory
        .add_fact(&acme(), &alice, NewFact::new("alice", "--", "x"))
        .await
        .unwrap_err();
    assert!(empty.to_string().contains("predicate is empty"), "{empty}");
}

/// A model that answers `answer` and records every request it gets.
struct Recording {
    answer: String,
    seen: Mutex<Vec<ModelRequest>>,
}

impl Model for Recording {
    fn id(&self) -> &str {
        "recording"
    }

    fn complete<'a>(
        &'a self,
        request: &'a ModelRequest,
        _sink: Option<ChunkSink<'a>>,
    ) -> BoxFuture<'a, Result<ModelResponse, ModelError>> {
        self.seen.lock().unwrap().push(request.clone());
        Box::pin(async move {
            Ok(ModelResponse {
                message: Message::assistant(self.answer.clone()),
                usage: Usage {
                    input_tokens: 10,
                    output_tokens: 5,
                    ..Usage::default()
                },
                finish_reason: FinishReason::Stop,
            })
        })
    }
}

fn system_text(request: &ModelRequest) -> String {
    request
        .messages
        .iter()
        .filter(|m| m.role == loom_host::model::Role::System)
        .map(|m| m.content.clone())
        .collect::<Vec<_>>()
        .join("\n")
}

async fn memory_agent(env: &TestEnv, answer: &str) -> (Agent, Arc<Recording>, Memory, Arc<Host>) {
    env.add_plugin(components::ARCH_REACT, "react", None);
    let host = host(env, "[tenants.acme.permissions]\nmode = \"bypass\"\n").await;
    let model = Arc::new(Recording {
        answer: answer.into(),
        seen: Mutex::new(Vec::new()),
    });
    let agent = Agent::builder("You are helpful.")
        .host(host.clone())
        .model(model.clone())
        .sessions(host.sessions())
        .memory(host.memory(), MemoryOptions::default())
        .build()
        .unwrap();
    (agent, model, host.memory(), host)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_are_remembered_and_recalled_into_the_prompt_of_the_same_user_only() {
    let env = TestEnv::new();
    let (agent, model, memory, _host) = memory_agent(&env, "Noted: you like green tea.").await;
    let alice = user("alice");
    memory
        .add_fact(&acme(), &alice, NewFact::new("alice", "lives_in", "Tokyo"))
        .await
        .unwrap();
    memory
        .edit_block(
            &acme(),
            &alice,
            "persona",
            BlockEdit::Set("Prefers short answers.".into()),
        )
        .await
        .unwrap();
    let first = agent
        .run(RunRequest::new(
            scope("acme", Some("alice")).with_session("s1".parse::<SessionId>().unwrap()),
            "I like green tea",
        ))
        .await
        .unwrap();
    let episodes = memory.episodes(&acme(), &alice).unwrap();
    assert_eq!(episodes.len(), 1);
    assert_eq!(episodes[0].input, "I like green tea");
    assert_eq!(episodes[0].output, first.output);
    assert_eq!(episodes[0].run.as_deref(), Some(first.run_id.as_str()));
    let prompt = system_text(&model.seen.lock().unwrap()[0]);
    assert!(
        prompt.contains("<persona>\nPrefers short answers.\n</persona>"),
        "{prompt}"
    );
    assert!(prompt.contains("alice lives_in Tokyo"), "{prompt}");

    // Another session of alice recalls the tea episode; bob sees none of it.
    agent
        .run(RunRequest::new(
            scope("acme", Some("alice")).with_session("s2".parse::<SessionId>().unwrap()),
            "Which tea do I like?",
        ))
        .await
        .unwrap();
    let prompt = system_text(&model.seen.lock().unwrap()[1]);
    assert!(prompt.contains("I like green tea"), "{prompt}");
    agent
        .run(RunRequest::new(
            scope("acme", Some("bob")),
            "Which tea do I like?",
        ))
        .await
        .unwrap();
    let prompt = system_text(&model.seen.lock().unwrap()[2]);
    assert!(
        !prompt.contains("tea") && !prompt.contains("Tokyo") && !prompt.contains("persona"),
        "{prompt}"
    );
    assert_eq!(memory.episodes(&acme(), &user("bob")).unwrap().len(), 1);

    let recalled = memory.recall(&acme(), &alice, "tea", 5).unwrap();
    assert_eq!(recalled[0].kind, "episode");
    assert!(recalled[0].text.contains("green tea"));
    assert!((recalled[0].score - 1.0).abs() < f32::EPSILON);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_removes_every_row_of_the_user_and_nothing_else() {
    let env = TestEnv::new();
    env.add_plugin(components::ARCH_REACT, "react", None);
    std::fs::write(env.path().join("audit.key"), "memory-test-audit-key-0123").unwrap();
    let host = Arc::new(
        env.host(
            "[audit]\npath = \"audit.jsonl\"\nkey_file = \"audit.key\"\n\
             [tenants.acme]\nforget_budgets = true\n[tenants.acme.user_budgets]\ntokens_per_day = 1000000\n\
             [tenants.acme.permissions]\nmode = \"bypass\"\n[tenants.globex]\n",
        )
        .await,
    );
    let memory = host.memory();
    let agent = Agent::builder("You are helpful.")
        .host(host.clone())
        .model(Arc::new(Recording {
            answer: "ok".into(),
            seen: Mutex::new(Vec::new()),
        }))
        .sessions(host.sessions())
        .memory(memory.clone(), MemoryOptions::default())
        .build()
        .unwrap();
    for name in ["alice", "bob"] {
        let who = user(name);
        agent
            .run(RunRequest::new(
                scope("acme", Some(name)).with_session("chat".parse::<SessionId>().unwrap()),
                "hello",
            ))
            .await
            .unwrap();
        memory
            .add_fact(&acme(), &who, lives_in("Tokyo", "2020-01-01"))
            .await
            .unwrap();
        memory
            .add_fact(&acme(), &who, lives_in("Paris", "2024-01-01"))
            .await
            .unwrap();
        memory
            .edit_block(
                &acme(),
                &who,
                "notes",
                BlockEdit::Append("likes tea".into()),
            )
            .await
            .unwrap();
    }
    host.flush().await.unwrap();
    let (alice, bob) = (user("alice"), user("bob"));
    let before_bob = memory.remaining(&acme(), &bob).unwrap();
    let before_alice = memory.remaining(&acme(), &alice).unwrap();
    assert_eq!(before_alice.len(), before_bob.len());
    for table in [
        "sessions",
        "memory_facts",
        "memory_fact_index",
        "memory_episodes",
        "memory_blocks",
        "budget_usage",
    ] {
        assert!(
            before_alice.iter().any(|row| row.starts_with(table)),
            "{table}: {before_alice:#?}"
        );
    }

    let report = host.forget_user(&acme(), &alice, "test").await.unwrap();
    assert_eq!(report.episodes, 1);
    assert_eq!(report.facts, 3, "Tokyo, its closed version, Paris");
    assert_eq!(report.blocks, 1);
    assert_eq!(report.sessions, 1);
    assert!(report.budget_rows >= 1);
    host.flush().await.unwrap();
    assert_eq!(
        memory.remaining(&acme(), &alice).unwrap(),
        Vec::<String>::new()
    );
    assert_eq!(
        memory.remaining(&acme(), &bob).unwrap(),
        before_bob,
        "bob untouched"
    );
    assert!(memory.export(&acme(), &alice).unwrap().is_empty());
    // The session cache forgot too: a new run in the same session starts empty.
    let sessions = host.sessions();
    assert!(
        sessions
            .load(&acme(), &alice, &"chat".parse().unwrap())
            .unwrap()
            .is_empty()
    );
    assert!(
        !sessions
            .load(&acme(), &bob, &"chat".parse().unwrap())
            .unwrap()
            .is_empty(),
        "bob's session is kept"
    );
    // The forget is in the audit log.
    let entries = loom_host::governance::audit::read_entries(
        &env.path().join("audit.jsonl"),
        &loom_host::governance::audit::AuditQuery::default(),
        &[],
    )
    .unwrap();
    let forgot = entries
        .iter()
        .find(|e| e.action == "memory_forgotten")
        .expect("a memory_forgotten entry");
    assert_eq!(forgot.user.as_deref(), Some("alice"));
    assert_eq!(forgot.data["facts"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_started_before_a_forget_cannot_land_after_it() {
    let env = TestEnv::new();
    let host = host(&env, "").await;
    let memory = host.memory();
    let alice = user("alice");
    // An extraction captures the generation when it starts...
    let generation = memory.forget_generation(&acme(), &alice);
    memory.forget(&acme(), &alice).await.unwrap();
    // ...and its facts, arriving after the forget, are dropped.
    let late = memory
        .add_facts(
            &acme(),
            &alice,
            vec![NewFact::new("alice", "likes", "tea")],
            Some(generation),
        )
        .await
        .unwrap();
    assert!(late.is_empty());
    assert!(memory.export(&acme(), &alice).unwrap().is_empty());
    // A write that started after the forget lands.
    let fresh = memory.forget_generation(&acme(), &alice);
    let landed = memory
        .add_facts(
            &acme(),
            &alice,
            vec![NewFact::new("alice", "likes", "coffee")],
            Some(fresh),
        )
        .await
        .unwrap();
    assert_eq!(landed.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_stay_isolated_under_concurrent_writes() {
    let env = TestEnv::new();
    let host = host(&env, "").await;
    let memory = host.memory();
    let mut tasks = Vec::new();
    for u in 0..16 {
        let memory = memory.clone();
        tasks.push(tokio::spawn(async move {
            let who = user(&format!("user{u}"));
            for step in 0..10 {
                memory
                    .add_fact(
                        &acme(),
                        &who,
                        NewFact {
                            valid_from: Some(Timestamp::from_millis(1_000 * step)),
                            ..NewFact::new("me", "counter", format!("u{u}-{step}"))
                        },
                    )
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    for u in 0..16 {
        let facts = memory
            .facts(&acme(), &user(&format!("user{u}")), &FactQuery::default())
            .unwrap();
        assert_eq!(facts.len(), 10, "user{u}: nine closed windows and one open");
        assert!(
            facts
                .iter()
                .all(|f| f.object.starts_with(&format!("u{u}-")))
        );
        assert_eq!(facts.iter().filter(|f| f.valid_until.is_none()).count(), 1);
    }
}

/// A model that waits for `open` (when given) and then answers `answer`.
struct Gated {
    answer: String,
    open: Option<Arc<tokio::sync::Notify>>,
    calls: Mutex<usize>,
}

impl Model for Gated {
    fn id(&self) -> &str {
        "gated"
    }

    fn complete<'a>(
        &'a self,
        _request: &'a ModelRequest,
        _sink: Option<ChunkSink<'a>>,
    ) -> BoxFuture<'a, Result<ModelResponse, ModelError>> {
        *self.calls.lock().unwrap() += 1;
        Box::pin(async move {
            if let Some(open) = &self.open {
                open.notified().await;
            }
            Ok(ModelResponse {
                message: Message::assistant(self.answer.clone()),
                usage: Usage {
                    input_tokens: 10,
                    output_tokens: 5,
                    ..Usage::default()
                },
                finish_reason: FinishReason::Stop,
            })
        })
    }
}

const EXTRACTED: &str = "Here you go:\n```json\n[{\"subject\":\"user\",\"predicate\":\"prefersTea\",\"object\":\"green\",\"confidence\":0.9},\n{\"subject\":\"user\",\"predicate\":\"lives_in\"";

async fn extracting_agent(
    env: &TestEnv,
    budgets: &str,
    extractor: Arc<Gated>,
) -> (Agent, Arc<Host>) {
    env.add_plugin(components::ARCH_REACT, "react", None);
    let host = Arc::new(
        env.host(&format!(
            "[tenants.acme]\n[tenants.acme.permissions]\nmode = \"bypass\"\n[tenants.acme.user_budgets]\n{budgets}\n"
        ))
        .await,
    );
    let agent = Agent::builder("You are helpful.")
        .host(host.clone())
        .model(Arc::new(Recording {
            answer: "Noted.".into(),
            seen: Mutex::new(Vec::new()),
        }))
        .memory(
            host.memory(),
            MemoryOptions {
                extract: true,
                ..MemoryOptions::default()
            },
        )
        .extraction_model(extractor)
        .build()
        .unwrap();
    (agent, host)
}

async fn next_event(
    events: &mut tokio::sync::broadcast::Receiver<loom_host::memory::MemoryEvent>,
) -> loom_host::memory::MemoryEventKind {
    tokio::time::timeout(std::time::Duration::from_secs(20), events.recv())
        .await
        .expect("a memory event within 20 s")
        .expect("the event channel is open")
        .kind
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extraction_stores_facts_in_the_background_and_charges_the_user() {
    let env = TestEnv::new();
    let extractor = Arc::new(Gated {
        answer: EXTRACTED.into(),
        open: None,
        calls: Mutex::new(0),
    });
    let (agent, host) = extracting_agent(&env, "tokens_per_day = 100000", extractor).await;
    let memory = host.memory();
    let mut events = memory.subscribe();
    agent
        .run(RunRequest::new(
            scope("acme", Some("alice")),
            "I drink green tea every day",
        ))
        .await
        .unwrap();
    match next_event(&mut events).await {
        loom_host::memory::MemoryEventKind::Extracted {
            facts,
            input_tokens,
            ..
        } => {
            assert_eq!(facts, 1, "the cut-off second item is dropped");
            assert_eq!(input_tokens, 10);
        }
        other => panic!("expected an extraction, got {other:?}"),
    }
    let alice = user("alice");
    let facts = memory
        .facts(&acme(), &alice, &FactQuery::default())
        .unwrap();
    assert_eq!(facts.len(), 1);
    assert_eq!(facts[0].predicate, "prefers_tea");
    let episode = &memory.episodes(&acme(), &alice).unwrap()[0];
    assert_eq!(facts[0].sources, vec![episode.id.clone()]);
    assert_eq!(facts[0].valid_from, episode.at);
    // The run's call and the extraction's are both charged to alice.
    let settings = host.config().tenant(&acme()).unwrap().governance.clone();
    let usage = host
        .governance()
        .ledger()
        .usage(&acme(), Some(&alice), &settings.budgets)
        .unwrap();
    let tokens = usage
        .iter()
        .find(|u| u.key == "tokens_per_day")
        .expect("the tokens cap");
    assert_eq!(tokens.used, 30.0, "{usage:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_at_their_cap_gets_no_extraction_and_the_run_still_succeeds() {
    let env = TestEnv::new();
    let extractor = Arc::new(Gated {
        answer: EXTRACTED.into(),
        open: None,
        calls: Mutex::new(0),
    });
    let (agent, host) = extracting_agent(&env, "tokens_per_day = 15", extractor.clone()).await;
    let mut events = host.memory().subscribe();
    let result = agent
        .run(RunRequest::new(
            scope("acme", Some("alice")),
            "I drink green tea",
        ))
        .await
        .unwrap();
    assert!(!result.interrupted);
    match next_event(&mut events).await {
        loom_host::memory::MemoryEventKind::ExtractionSkipped { reason } => {
            assert_eq!(reason, "budget:tokens_per_day");
        }
        other => panic!("expected a skip, got {other:?}"),
    }
    assert_eq!(*extractor.calls.lock().unwrap(), 0, "no call was made");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forget_cancels_a_running_extraction_and_nothing_comes_back() {
    let env = TestEnv::new();
    let open = Arc::new(tokio::sync::Notify::new());
    let extractor = Arc::new(Gated {
        answer: EXTRACTED.into(),
        open: Some(open.clone()),
        calls: Mutex::new(0),
    });
    let (agent, host) = extracting_agent(&env, "tokens_per_day = 100000", extractor.clone()).await;
    let memory = host.memory();
    let mut events = memory.subscribe();
    agent
        .run(RunRequest::new(
            scope("acme", Some("alice")),
            "I drink green tea",
        ))
        .await
        .unwrap();
    // Wait until the extraction is inside its model call.
    for _ in 0..200 {
        if *extractor.calls.lock().unwrap() > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(*extractor.calls.lock().unwrap(), 1);
    let alice = user("alice");
    host.forget_user(&acme(), &alice, "test").await.unwrap();
    open.notify_waiters();
    match next_event(&mut events).await {
        loom_host::memory::MemoryEventKind::Forgotten { report } => {
            assert_eq!(report.episodes, 1);
        }
        other => panic!("expected the forget, got {other:?}"),
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(memory.export(&acme(), &alice).unwrap().is_empty());
    assert_eq!(
        memory.remaining(&acme(), &alice).unwrap(),
        Vec::<String>::new()
    );
    assert!(
        events.try_recv().is_err(),
        "no extraction event after the forget"
    );
}

fn scripted(turns: Vec<loom_host::model::offline::ScriptedTurn>) -> Arc<dyn Model> {
    Arc::new(loom_host::model::offline::ScriptedModel::new(turns))
}

fn call_turn(name: &str, arguments: serde_json::Value) -> loom_host::model::offline::ScriptedTurn {
    crate::support::scripted_turn("", &[(name, arguments)], Usage::default())
}

fn answer_turn(text: &str) -> loom_host::model::offline::ScriptedTurn {
    crate::support::scripted_turn(text, &[], Usage::default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_tools_edit_the_run_users_blocks_and_are_governed() {
    let env = TestEnv::new();
    env.add_plugin(components::ARCH_REACT, "react", None);
    let host = Arc::new(
        env.host(
            "[tenants.acme]\n[tenants.acme.permissions]\nmode = \"default\"\nallow = [\"memory_block_*\"]\n\
             [tenants.globex]\n[tenants.globex.permissions]\nmode = \"plan\"\n",
        )
        .await,
    );
    let options = MemoryOptions {
        block_tools: true,
        ..MemoryOptions::default()
    };
    let agent = |model| {
        Agent::builder("You keep notes.")
            .host(host.clone())
            .model(model)
            .memory(host.memory(), options.clone())
            .build()
            .unwrap()
    };
    let result = agent(scripted(vec![
        call_turn(
            "memory_block_append",
            serde_json::json!({"name": "notes", "line": "likes tea"}),
        ),
        call_turn(
            "memory_block_append",
            serde_json::json!({"name": "notes", "line": "lives in Oslo"}),
        ),
        call_turn("memory_blocks", serde_json::json!({})),
        answer_turn("{last_tool_result}"),
    ]))
    .run(RunRequest::new(
        scope("acme", Some("alice")),
        "remember this",
    ))
    .await
    .unwrap();
    let seen: serde_json::Value = serde_json::from_str(&result.output).unwrap();
    assert_eq!(seen[0]["name"], "notes");
    assert_eq!(seen[0]["content"], "likes tea\nlives in Oslo");
    let memory = host.memory();
    assert_eq!(
        memory.blocks(&acme(), &user("alice")).unwrap()[0].content,
        "likes tea\nlives in Oslo"
    );
    assert!(memory.blocks(&acme(), &user("bob")).unwrap().is_empty());

    // A bad name is the model's error to fix, not a crash.
    let result = agent(scripted(vec![
        call_turn(
            "memory_block_set",
            serde_json::json!({"name": "Bad Name", "content": "x"}),
        ),
        answer_turn("{last_tool_result}"),
    ]))
    .run(RunRequest::new(scope("acme", Some("alice")), "set it"))
    .await
    .unwrap();
    assert!(result.output.contains("block name"), "{}", result.output);

    // Plan mode changes nothing: both edit tools are denied.
    let result = agent(scripted(vec![
        call_turn(
            "memory_block_append",
            serde_json::json!({"name": "notes", "line": "x"}),
        ),
        answer_turn("{last_tool_result}"),
    ]))
    .run(RunRequest::new(scope("globex", Some("alice")), "note it"))
    .await
    .unwrap();
    assert!(
        result.output.contains("DENIED") || result.output.contains("denied"),
        "{}",
        result.output
    );
    assert!(
        memory
            .blocks(&"globex".parse().unwrap(), &user("alice"))
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrections_and_older_news_keep_one_fact_per_moment() {
    let env = TestEnv::new();
    let host = host(&env, "").await;
    let memory = host.memory();
    let alice = user("alice");
    let valid_at = |day: &str| FactQuery {
        valid_at: Some(at(day)),
        ..FactQuery::default()
    };
    // The same start twice: the second corrects the first.
    memory
        .add_fact(&acme(), &alice, lives_in("Paris", "2024-01-01"))
        .await
        .unwrap();
    let london = memory
        .add_fact(&acme(), &alice, lives_in("London", "2024-01-01"))
        .await
        .unwrap();
    assert!(london.created && london.closed.is_empty());
    assert_eq!(london.fact.valid_until, None);
    assert_eq!(
        objects(
            &memory
                .facts(&acme(), &alice, &valid_at("2025-01-01"))
                .unwrap()
        ),
        ["London"]
    );

    // Older news inside a closed window trims it and ends where the next
    // fact begins: never two facts for one moment.
    let bob = user("bob");
    for (city, from) in [
        ("Tokyo", "2020-01-01"),
        ("Paris", "2022-01-01"),
        ("Berlin", "2021-01-01"),
    ] {
        memory
            .add_fact(&acme(), &bob, lives_in(city, from))
            .await
            .unwrap();
    }
    for (day, city) in [
        ("2020-06-01", "Tokyo"),
        ("2021-06-01", "Berlin"),
        ("2022-06-01", "Paris"),
        ("2030-01-01", "Paris"),
    ] {
        assert_eq!(
            objects(&memory.facts(&acme(), &bob, &valid_at(day)).unwrap()),
            [city],
            "{day}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forget_during_a_run_leaves_nothing_for_the_run_to_bring_back() {
    let env = TestEnv::new();
    env.add_plugin(components::ARCH_REACT, "react", None);
    let host = Arc::new(env.host("[tenants.acme]\n").await);
    let open = Arc::new(tokio::sync::Notify::new());
    let model = Arc::new(Gated {
        answer: "Noted.".into(),
        open: Some(open.clone()),
        calls: Mutex::new(0),
    });
    let agent = Agent::builder("You are helpful.")
        .host(host.clone())
        .model(model.clone())
        .sessions(host.sessions())
        .memory(host.memory(), MemoryOptions::default())
        .build()
        .unwrap();
    let alice = user("alice");
    host.sessions()
        .save(
            &acme(),
            &alice,
            &"chat".parse().unwrap(),
            &[Message::user("my secret")],
        )
        .await
        .unwrap();
    let run = {
        let agent = agent.clone();
        tokio::spawn(async move {
            agent
                .run(RunRequest::new(
                    scope("acme", Some("alice")).with_session("chat".parse::<SessionId>().unwrap()),
                    "remember my secret",
                ))
                .await
        })
    };
    for _ in 0..200 {
        if *model.calls.lock().unwrap() > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    host.forget_user(&acme(), &alice, "test").await.unwrap();
    open.notify_waiters();
    run.await.unwrap().unwrap();
    host.flush().await.unwrap();
    assert_eq!(
        host.memory().remaining(&acme(), &alice).unwrap(),
        Vec::<String>::new()
    );
    assert!(
        host.sessions()
            .load(&acme(), &alice, &"chat".parse().unwrap())
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_callers_share_no_memory() {
    let env = TestEnv::new();
    let (agent, model, memory, _host) = memory_agent(&env, "ok").await;
    memory
        .remember(
            &acme(),
            &UserId::Anonymous,
            loom_host::memory::EpisodeKind::Note,
            loom_host::memory::NewEpisode {
                input: "an anonymous secret about tea".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    agent
        .run(RunRequest::new(scope("acme", None), "tea?"))
        .await
        .unwrap();
    let prompt = system_text(&model.seen.lock().unwrap()[0]);
    assert!(!prompt.contains("secret"), "{prompt}");
    assert_eq!(
        memory.episodes(&acme(), &UserId::Anonymous).unwrap().len(),
        1,
        "no episode added"
    );
}
