//! The memory conformance suite: one set of checks, run against the
//! built-in memory and against the first-party memory component
//! (`kv-memory`, built from `plugins/memory/kv-memory`) through the same
//! API ([`TenantMemory`]), with real wasmtime and a real redb file.
//!
//! Also: an agent on a tenant whose memory is the component, the `kv`
//! scope and quota as a component sees them, and components built against
//! `loom:plugin@0.1.0`, `@0.1.1` and `@0.1.2` loading on the 0.1.3 host.

use loom_host::Host;
use loom_host::agent::{Agent, MemoryOptions, RunRequest};
use loom_host::memory::{
    EpisodeKind, Fact, FactQuery, NewEpisode, NewFact, TenantMemory, Timestamp,
};
use loom_host::model::{
    BoxFuture, ChunkSink, FinishReason, Message, Model, ModelError, ModelRequest, ModelResponse,
    Usage,
};
use loom_host::tenancy::ids::{TenantId, UserId};
use loom_tests::{TestEnv, components, scope};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn acme() -> TenantId {
    "acme".parse().unwrap()
}

fn user(name: &str) -> UserId {
    UserId::named(name).unwrap()
}

fn at(text: &str) -> Timestamp {
    Timestamp::parse(text).unwrap()
}

fn fact(subject: &str, predicate: &str, object: &str, from: &str) -> NewFact {
    NewFact {
        valid_from: Some(at(from)),
        ..NewFact::new(subject, predicate, object)
    }
}

fn objects(facts: &[Fact]) -> Vec<&str> {
    facts.iter().map(|f| f.object.as_str()).collect()
}

/// Which memory a suite run uses.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Backend {
    Builtin,
    Component,
}

/// A host whose tenant `acme` uses `backend`, and that memory.
async fn setup(env: &TestEnv, backend: Backend, extra: &str) -> (Arc<Host>, TenantMemory) {
    let memory_section = match backend {
        Backend::Builtin => String::new(),
        Backend::Component => {
            env.add_plugin(components::MEMORY_KV_MEMORY, "kv-memory", None);
            "[tenants.acme.memory]\nplugin = \"kv-memory\"\n".to_owned()
        }
    };
    let host = Arc::new(
        env.host(&format!(
            "[tenants.acme]\n{extra}{memory_section}[tenants.globex]\n"
        ))
        .await,
    );
    let memory = host.memory_for(&acme()).await.unwrap();
    assert_eq!(
        memory.component().is_some(),
        backend == Backend::Component,
        "{backend:?}"
    );
    (host, memory)
}

async fn believed(memory: &TenantMemory, who: &UserId, query: FactQuery) -> Vec<Fact> {
    memory.facts(&acme(), who, &query).await.unwrap()
}

/// Tokyo → Paris: world time and knowledge time answer independently.
async fn tokyo_to_paris(memory: &TenantMemory) {
    let alice = user("alice");
    let tokyo = memory
        .add_fact(
            &acme(),
            &alice,
            fact("alice", "livesIn", "Tokyo", "2020-01-01"),
        )
        .await
        .unwrap();
    assert!(tokyo.created && tokyo.closed.is_empty());
    assert_eq!(tokyo.fact.predicate, "lives_in");
    tokio::time::sleep(Duration::from_millis(5)).await;
    let before_the_move_was_recorded = Timestamp::now();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let paris = memory
        .add_fact(
            &acme(),
            &alice,
            fact("alice", "lives_in", "Paris", "2024-06-01"),
        )
        .await
        .unwrap();
    assert!(paris.created);
    assert_eq!(paris.closed.len(), 1, "Tokyo is closed where Paris starts");
    assert_eq!(paris.closed[0].valid_until, Some(at("2024-06-01")));

    let valid_at = |t: &str| FactQuery {
        valid_at: Some(at(t)),
        ..FactQuery::default()
    };
    assert_eq!(
        objects(&believed(memory, &alice, valid_at("2022-01-01")).await),
        ["Tokyo"]
    );
    assert_eq!(
        objects(&believed(memory, &alice, valid_at("2025-01-01")).await),
        ["Paris"]
    );
    // Before the move was recorded, Loom believed Tokyo, open-ended.
    let then = believed(
        memory,
        &alice,
        FactQuery {
            valid_at: Some(at("2025-01-01")),
            known_at: Some(before_the_move_was_recorded),
            ..FactQuery::default()
        },
    )
    .await;
    assert_eq!(objects(&then), ["Tokyo"]);
    assert_eq!(then[0].valid_until, None);
    // Now: the closed Tokyo and the open Paris.
    let now = believed(memory, &alice, FactQuery::default()).await;
    let mut now = objects(&now);
    now.sort_unstable();
    assert_eq!(now, ["Paris", "Tokyo"]);
}

/// Supersession stays within the user; the same object closes nothing.
async fn supersession_is_per_user(memory: &TenantMemory) {
    let (alice, bob) = (user("alice"), user("bob"));
    for who in [&alice, &bob] {
        memory
            .add_fact(&acme(), who, fact("home", "city", "Tokyo", "2020-01-01"))
            .await
            .unwrap();
    }
    let again = memory
        .add_fact(&acme(), &alice, fact("Home", "city", "Tokyo", "2021-01-01"))
        .await
        .unwrap();
    assert!(!again.created && again.closed.is_empty(), "{again:?}");
    memory
        .add_fact(&acme(), &alice, fact("home", "city", "Paris", "2024-01-01"))
        .await
        .unwrap();
    let bobs = believed(memory, &bob, FactQuery::default()).await;
    assert_eq!(objects(&bobs), ["Tokyo"]);
    assert_eq!(bobs[0].valid_until, None, "bob's fact is untouched");
    let later = FactQuery {
        valid_at: Some(at("2025-01-01")),
        subject: Some("HOME".into()),
        ..FactQuery::default()
    };
    assert_eq!(objects(&believed(memory, &alice, later).await), ["Paris"]);
}

/// `Name_Is`, `name-is` and `nameIs` are one predicate.
async fn predicates_are_canonical(memory: &TenantMemory) {
    let carol = user("carol");
    memory
        .add_fact(
            &acme(),
            &carol,
            fact("carol", "Name_Is", "Caroline", "2020-01-01"),
        )
        .await
        .unwrap();
    let renamed = memory
        .add_fact(
            &acme(),
            &carol,
            fact("carol", "name-is", "Carol", "2022-01-01"),
        )
        .await
        .unwrap();
    assert_eq!(renamed.closed.len(), 1);
    let query = FactQuery {
        predicate: Some("nameIs".into()),
        valid_at: Some(at("2023-01-01")),
        ..FactQuery::default()
    };
    let found = believed(memory, &carol, query).await;
    assert_eq!(objects(&found), ["Carol"]);
    assert_eq!(found[0].predicate, "name_is");
    let bad = memory
        .add_fact(&acme(), &carol, NewFact::new("carol", "--", "x"))
        .await
        .unwrap_err();
    assert!(bad.to_string().contains("predicate is empty"), "{bad}");
}

/// A correction at the same start records no closed version; older news
/// ends where the next believed fact begins; a retraction is remembered.
async fn corrections_older_news_and_retraction(memory: &TenantMemory) {
    let dave = user("dave");
    memory
        .add_fact(
            &acme(),
            &dave,
            fact("dave", "employer", "Acme", "2021-01-01"),
        )
        .await
        .unwrap();
    let corrected = memory
        .add_fact(
            &acme(),
            &dave,
            fact("dave", "employer", "Globex", "2021-01-01"),
        )
        .await
        .unwrap();
    assert!(corrected.created && corrected.closed.is_empty());
    let older = memory
        .add_fact(
            &acme(),
            &dave,
            fact("dave", "employer", "Initech", "2019-01-01"),
        )
        .await
        .unwrap();
    assert_eq!(older.fact.valid_until, Some(at("2021-01-01")));
    let now = believed(memory, &dave, FactQuery::default()).await;
    let mut now = objects(&now);
    now.sort_unstable();
    assert_eq!(now, ["Globex", "Initech"]);

    let before = Timestamp::now();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let retracted = memory
        .retract_fact(&acme(), &dave, &corrected.fact.id)
        .await
        .unwrap()
        .expect("a believed fact is retracted");
    assert!(retracted.expired_at.is_some());
    assert_eq!(
        objects(&believed(memory, &dave, FactQuery::default()).await),
        ["Initech"]
    );
    let then = believed(
        memory,
        &dave,
        FactQuery {
            known_at: Some(before),
            ..FactQuery::default()
        },
    )
    .await;
    assert!(objects(&then).contains(&"Globex"), "{then:?}");
    assert!(
        memory
            .retract_fact(&acme(), &dave, &corrected.fact.id)
            .await
            .unwrap()
            .is_none(),
        "a retracted fact is not retracted twice"
    );
}

/// Notes and episodes are recalled by relevance, for their user only, and
/// the prompt section holds the facts valid now and the relevant episodes.
async fn remember_and_recall(memory: &TenantMemory) {
    let erin = user("erin");
    for text in [
        "Erin likes green tea in the morning",
        "Erin has a dog named Rex",
        "Erin works on compilers",
    ] {
        memory
            .remember(
                &acme(),
                &erin,
                EpisodeKind::Note,
                NewEpisode {
                    input: text.into(),
                    ..NewEpisode::default()
                },
            )
            .await
            .unwrap();
    }
    memory
        .remember(
            &acme(),
            &erin,
            EpisodeKind::Run,
            NewEpisode {
                session: Some("s1".into()),
                run: Some("run-1".into()),
                input: "What should I name my cat?".into(),
                output: "How about Miso?".into(),
                transcript: None,
            },
        )
        .await
        .unwrap();
    memory
        .add_fact(&acme(), &erin, NewFact::new("erin", "lives_in", "Lisbon"))
        .await
        .unwrap();
    let recalled = memory.recall(&acme(), &erin, "dog", 3).await.unwrap();
    assert!(!recalled.is_empty());
    assert!(recalled[0].text.contains("Rex"), "{recalled:?}");
    assert!((recalled[0].score - 1.0).abs() < f32::EPSILON);
    assert!(recalled.len() <= 3);
    let cat = memory.recall(&acme(), &erin, "cat name", 1).await.unwrap();
    assert!(cat[0].text.contains("Miso"), "{cat:?}");
    assert!(
        memory
            .recall(&acme(), &user("frank"), "dog", 5)
            .await
            .unwrap()
            .is_empty()
    );

    let prompt = memory
        .prompt_context(&acme(), &erin, "tell me about my dog", 500, None)
        .await
        .unwrap()
        .expect("something to say");
    assert!(prompt.contains("erin lives_in Lisbon"), "{prompt}");
    assert!(prompt.contains("Rex"), "{prompt}");
    assert!(
        !prompt.contains("compilers"),
        "irrelevant episodes stay out: {prompt}"
    );
    // The session's own episodes are left out of its prompt.
    let in_session = memory
        .prompt_context(&acme(), &erin, "cat name", 500, Some("s1"))
        .await
        .unwrap()
        .unwrap_or_default();
    assert!(!in_session.contains("Miso"), "{in_session}");

    let export = memory.export(&acme(), &erin).await.unwrap();
    assert_eq!(export.episodes.len(), 4);
    let run = export
        .episodes
        .iter()
        .find(|e| e.kind == EpisodeKind::Run)
        .expect("the run episode comes back whole");
    assert_eq!(run.output, "How about Miso?");
    assert_eq!(run.session.as_deref(), Some("s1"));
    assert_eq!(objects(&export.facts), ["Lisbon"]);
    let summary = memory.summary(&acme(), &erin).await.unwrap();
    assert_eq!((summary.episodes, summary.facts_believed), (4, 1));
}

/// Forget removes every row of the user, in every table, and nothing of
/// anyone else; export is then empty.
async fn forget_is_complete(host: &Host, memory: &TenantMemory) {
    let (gina, hank) = (user("gina"), user("hank"));
    for who in [&gina, &hank] {
        memory
            .add_fact(&acme(), who, fact("me", "pet", "cat", "2020-01-01"))
            .await
            .unwrap();
        memory
            .add_fact(&acme(), who, fact("me", "pet", "dog", "2022-01-01"))
            .await
            .unwrap();
        memory
            .remember(
                &acme(),
                who,
                EpisodeKind::Note,
                NewEpisode {
                    input: "a note".into(),
                    ..NewEpisode::default()
                },
            )
            .await
            .unwrap();
    }
    let hank_before = memory.export(&acme(), &hank).await.unwrap();
    let hank_rows = host.memory().remaining(&acme(), &hank).unwrap();
    assert!(!host.memory().remaining(&acme(), &gina).unwrap().is_empty());
    let report = host.forget_user(&acme(), &gina, "test").await.unwrap();
    if memory.component().is_some() {
        // The component erased its own keys (three fact versions and a
        // note); the host then found none left to delete.
        assert_eq!(report.component_items, 4, "{report:?}");
    } else {
        assert_eq!((report.facts, report.episodes), (3, 1), "{report:?}");
    }
    assert!(memory.export(&acme(), &gina).await.unwrap().is_empty());
    assert_eq!(
        host.memory().remaining(&acme(), &gina).unwrap(),
        Vec::<String>::new()
    );
    let mut hank_after = memory.export(&acme(), &hank).await.unwrap();
    hank_after.exported_at = hank_before.exported_at;
    assert_eq!(hank_after, hank_before);
    assert_eq!(host.memory().remaining(&acme(), &hank).unwrap(), hank_rows);
}

/// A write that started before a forget never lands after it.
async fn no_write_lands_after_a_forget(host: &Host, memory: &TenantMemory) {
    let ivy = user("ivy");
    let generation = host.memory().forget_generation(&acme(), &ivy);
    host.forget_user(&acme(), &ivy, "test").await.unwrap();
    let late = memory
        .add_facts(
            &acme(),
            &ivy,
            vec![NewFact::new("ivy", "likes", "jazz")],
            Some(generation),
        )
        .await
        .unwrap();
    assert!(late.is_empty());
    assert!(memory.export(&acme(), &ivy).await.unwrap().is_empty());
}

/// Users written concurrently each see exactly their own facts.
async fn users_stay_isolated_under_concurrent_writes(memory: &TenantMemory) {
    let mut writers = Vec::new();
    for n in 0..12 {
        let memory = memory.clone();
        writers.push(tokio::spawn(async move {
            let who = user(&format!("w{n}"));
            for round in 0..3 {
                memory
                    .add_fact(
                        &acme(),
                        &who,
                        NewFact::new("me", "counter", format!("{n}-{round}")),
                    )
                    .await
                    .unwrap();
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    for n in 0..12 {
        let facts = believed(memory, &user(&format!("w{n}")), FactQuery::default()).await;
        assert!(!facts.is_empty());
        assert!(
            facts.iter().all(|f| f.object.starts_with(&format!("{n}-"))),
            "{facts:?}"
        );
        let open: Vec<_> = facts.iter().filter(|f| f.valid_until.is_none()).collect();
        assert_eq!(open.len(), 1, "{facts:?}");
        assert_eq!(open[0].object, format!("{n}-2"));
    }
}

async fn conformance(backend: Backend) {
    let env = TestEnv::new();
    let (host, memory) = setup(&env, backend, "").await;
    tokyo_to_paris(&memory).await;
    supersession_is_per_user(&memory).await;
    predicates_are_canonical(&memory).await;
    corrections_older_news_and_retraction(&memory).await;
    remember_and_recall(&memory).await;
    forget_is_complete(&host, &memory).await;
    no_write_lands_after_a_forget(&host, &memory).await;
    users_stay_isolated_under_concurrent_writes(&memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builtin_memory_passes_the_conformance_suite() {
    conformance(Backend::Builtin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_component_passes_the_conformance_suite() {
    conformance(Backend::Component).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_on_a_component_tenant_remembers_through_the_component() {
    let env = TestEnv::new();
    env.add_plugin(components::ARCH_REACT, "react", None);
    let (host, memory) = setup(
        &env,
        Backend::Component,
        "[tenants.acme.permissions]\nmode = \"bypass\"\n",
    )
    .await;
    let model = Arc::new(Recording {
        answer: "Noted: you like green tea.".into(),
        seen: Mutex::new(Vec::new()),
    });
    let agent = Agent::builder("You are helpful.")
        .host(host.clone())
        .model(model.clone())
        .sessions(host.sessions())
        .memory(host.memory(), MemoryOptions::default())
        .build()
        .unwrap();
    let alice = user("alice");
    memory
        .add_fact(&acme(), &alice, NewFact::new("alice", "lives_in", "Tokyo"))
        .await
        .unwrap();
    agent
        .run(RunRequest::new(
            scope("acme", Some("alice")),
            "I like green tea",
        ))
        .await
        .unwrap();
    // The episode went to the component, not to the built-in tables.
    assert!(host.memory().episodes(&acme(), &alice).unwrap().is_empty());
    let export = memory.export(&acme(), &alice).await.unwrap();
    assert_eq!(export.episodes.len(), 1);
    assert_eq!(export.episodes[0].input, "I like green tea");
    agent
        .run(RunRequest::new(
            scope("acme", Some("alice")),
            "Which tea do I like?",
        ))
        .await
        .unwrap();
    let seen = model.seen.lock().unwrap();
    let system = |n: usize| {
        seen[n]
            .messages
            .iter()
            .filter(|m| m.role == loom_host::model::Role::System)
            .map(|m| m.content.clone())
            .collect::<String>()
    };
    assert!(system(0).contains("alice lives_in Tokyo"), "{}", system(0));
    assert!(system(1).contains("I like green tea"), "{}", system(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_naming_a_missing_memory_component_gets_a_clear_error() {
    let env = TestEnv::new();
    let host = env
        .host("[tenants.acme.memory]\nplugin = \"nowhere\"\n")
        .await;
    let error = host.memory_for(&acme()).await.unwrap_err().to_string();
    assert!(
        error.contains("nowhere") && error.contains("[tenants.acme.memory]"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_component_quota_is_enforced_and_nothing_partial_is_stored() {
    let env = TestEnv::new();
    env.add_plugin(components::MEMORY_KV_MEMORY, "kv-memory", None);
    let host = env
        .host("[tenants.acme.memory]\nplugin = \"kv-memory\"\nkv_quota_mib = 1\n")
        .await;
    let memory = host.memory_for(&acme()).await.unwrap();
    let jo = user("jo");
    let big = "x".repeat(60 * 1024);
    let mut refused = None;
    for n in 0..40 {
        let note = NewEpisode {
            input: format!("{n} {big}"),
            ..NewEpisode::default()
        };
        if let Err(error) = memory.remember(&acme(), &jo, EpisodeKind::Note, note).await {
            refused = Some((n, error.to_string()));
            break;
        }
    }
    let (stored, error) = refused.expect("a 1 MiB quota refuses 40 notes of 60 KiB");
    assert!(
        error.contains("quota") || error.contains("may store"),
        "{error}"
    );
    // Every note stored before the refusal is whole; the refused one is absent.
    let export = memory.export(&acme(), &jo).await.unwrap();
    assert_eq!(export.episodes.len(), stored);
    let usage = loom_host::store::kv::tenant_usage(host.store(), "acme").unwrap();
    assert!(usage <= 1 << 20, "{usage}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_built_against_every_earlier_version_load_and_run_on_this_host() {
    let env = TestEnv::new();
    // Two fixtures are built from wit/plugin@0.1.0, the frozen first
    // version, one from wit/plugin@0.1.1, one from wit/plugin@0.1.2;
    // kv-memory and run-context (with the SDK) from the current one.
    env.add_plugin(components::FIXTURE_LEGACY_TOOL, "legacy-tool", None);
    env.add_plugin(components::FIXTURE_ARCHITECTURE_STUB, "legacy-arch", None);
    env.add_plugin(components::FIXTURE_HOSTILE_ARCH, "hostile", None);
    env.add_plugin(components::FIXTURE_TOOL_0_1_2, "tool-0-1-2", None);
    env.add_plugin(components::MEMORY_KV_MEMORY, "kv-memory", None);
    env.add_plugin(components::TOOL_RUN_CONTEXT, "run-context", None);
    let host = env.host("").await;
    let catalog = host.catalog().await;
    let world = |name: &str| {
        let entry = catalog
            .entries
            .iter()
            .find(|e| e.name() == name)
            .unwrap_or_else(|| panic!("{name} listed"));
        let plugin = entry
            .status
            .as_ref()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        plugin.shape.world.clone().unwrap_or_default()
    };
    assert_eq!(world("legacy-tool"), "loom:plugin/tool-plugin@0.1.0");
    assert_eq!(
        world("legacy-arch"),
        "loom:plugin/architecture-plugin@0.1.0"
    );
    assert_eq!(world("hostile"), "loom:plugin/architecture-plugin@0.1.1");
    assert_eq!(world("tool-0-1-2"), "loom:plugin/tool-plugin@0.1.2");
    assert_eq!(world("kv-memory"), "loom:plugin/memory-plugin@0.1.3");
    assert_eq!(world("run-context"), "loom:plugin/tool-plugin@0.1.3");
    let tenant = TenantId::default_tenant();
    assert!(!catalog.architecture_names(&tenant).is_empty());
    let output = host
        .call_tool(scope("default", Some("ann")), "legacy_echo", r#"{"x":1}"#)
        .await
        .unwrap();
    let value: serde_json::Value = serde_json::from_str(&output.output).unwrap();
    assert_eq!(value["tenant"], "default");
    assert_eq!(value["arguments"]["x"], 1);
    // A 0.1.2 tool runs beside a 0.1.3 one in a scope that carries an
    // idempotency key: it cannot ask for the key and need not.
    let keyed = scope("default", Some("ann")).with_idempotency_key("k-1");
    let run = keyed.run.to_string();
    let output = host
        .call_tool(keyed.clone(), "echo_0_1_2", r#"{"y":2}"#)
        .await
        .unwrap();
    let value: serde_json::Value = serde_json::from_str(&output.output).unwrap();
    assert_eq!(value["tenant"], "default");
    assert_eq!(value["run"], run.as_str());
    assert_eq!(value["arguments"]["y"], 2);
    let output = host.call_tool(keyed, "run_context", "{}").await.unwrap();
    let value: serde_json::Value = serde_json::from_str(&output.output).unwrap();
    assert_eq!(value["idempotency_key"], "k-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forget_deletes_component_data_the_component_left_behind() {
    use loom_host::store::kv::{KvScope, KvTransaction};
    let env = TestEnv::new();
    env.add_plugin(components::MEMORY_KV_MEMORY, "kv-memory", None);
    let host = env
        .host("[tenants.acme.memory]\nplugin = \"kv-memory\"\n")
        .await;
    // Keys no component call will clean up: another component's, and
    // stray keys of this one, for two users.
    for (user_name, component) in [("kim", "other"), ("kim", "kv-memory"), ("lee", "other")] {
        let mut txn = KvTransaction::new(
            host.store().clone(),
            KvScope {
                tenant: "acme".into(),
                user: user_name.into(),
                component: component.into(),
            },
            1 << 20,
        );
        txn.set("zz/stray", b"left behind".to_vec()).unwrap();
        assert!(txn.commit(|| true).await.unwrap());
    }
    let before = host.memory().remaining(&acme(), &user("kim")).unwrap();
    assert_eq!(before.len(), 2, "{before:?}");
    let report = host
        .forget_user(&acme(), &user("kim"), "test")
        .await
        .unwrap();
    // kv-memory erased its own stray key when asked to forget; the host
    // deleted the other component's.
    assert_eq!(report.plugin_kv, 1, "{report:?}");
    assert!(
        host.memory()
            .remaining(&acme(), &user("kim"))
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        host.memory()
            .remaining(&acme(), &user("lee"))
            .unwrap()
            .len(),
        1
    );
}
