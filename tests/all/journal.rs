//! Crash-resumable runs in process: a run stopped in the middle (its
//! stream dropped, as a crash leaves it) resumes from its journal without
//! billing a model call twice or running a finished tool call again, and a
//! resume that would diverge is refused with a typed error.
//! (`host/tests/cli.rs` kills a real `loom` process with SIGKILL.)

use crate::support::scripted_turn;
use loom_host::Host;
use loom_host::agent::{
    Agent, AgentError, JournalError, JournalSettings, ResumeRequest, RunEvent, RunRequest,
};
use loom_host::model::Usage;
use loom_host::model::offline::ScriptedModel;
use loom_host::model::{BoxFuture, ChunkSink, Model, ModelError, ModelRequest, ModelResponse};
use loom_host::tenancy::ids::UserId;
use loom_tests::{TestEnv, components, scope};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A model that counts the calls it answers.
struct Counting {
    inner: ScriptedModel,
    calls: AtomicUsize,
}

impl Model for Counting {
    fn id(&self) -> &str {
        "counting"
    }

    fn complete<'a>(
        &'a self,
        request: &'a ModelRequest,
        sink: Option<ChunkSink<'a>>,
    ) -> BoxFuture<'a, Result<ModelResponse, ModelError>> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.inner.complete(request, sink)
    }
}

const CONFIG: &str = "[tenants.acme.grants]\nfiles = [{ host = \"fx\", guest = \"/fx\", write = true }]\n\
                      [tenants.acme.permissions]\nmode = \"bypass\"\n";

fn usage() -> Usage {
    Usage {
        input_tokens: 10,
        output_tokens: 5,
        ..Usage::default()
    }
}

/// Four turns each calling `record_effect` (the third waits `slow_ms`, so
/// the run can be stopped while it is in flight), then the answer.
fn script(slow_ms: u64) -> Arc<Counting> {
    let call = |label: &str, ms: u64| {
        scripted_turn(
            "",
            &[(
                "record_effect",
                serde_json::json!({ "dir": "/fx", "label": label, "ms": ms }),
            )],
            usage(),
        )
    };
    Arc::new(Counting {
        inner: ScriptedModel::new(vec![
            call("a", 0),
            call("b", 0),
            call("c", slow_ms),
            call("d", 0),
            scripted_turn("finished after {last_tool_result}", &[], usage()),
        ]),
        calls: AtomicUsize::new(0),
    })
}

fn setup() -> TestEnv {
    let env = TestEnv::new();
    env.add_plugin(components::ARCH_REACT, "react", None);
    env.add_plugin(
        components::FIXTURE_SLOW,
        "slow",
        Some("version = \"0.1.0\"\n[capabilities]\nfiles = [{ path = \"/fx\", write = true }]\n"),
    );
    env.mkdir("fx");
    env
}

fn agent(host: &Arc<Host>, model: Arc<Counting>, max_turns: u32) -> Agent {
    Agent::builder("Record the effects.")
        .host(host.clone())
        .model(model)
        .architecture("react")
        .max_turns(max_turns)
        .journal(JournalSettings {
            journal: host.journal().clone(),
            keep_finished: false,
        })
        .build()
        .unwrap()
}

/// Lines of `fx/<name>` as (key, label).
fn log(env: &TestEnv, name: &str) -> Vec<(String, String)> {
    std::fs::read_to_string(env.path().join("fx").join(name))
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let (key, label) = line.rsplit_once(' ').unwrap();
            (key.to_owned(), label.to_owned())
        })
        .collect()
}

/// Start the run and drop it once the call `c` is in flight; its run id.
async fn run_until_c_is_in_flight(host: &Host, agent: &Agent) -> String {
    let mut stream = agent.stream(RunRequest::new(
        scope("acme", Some("ann")).with_session("s1".parse().unwrap()),
        "go",
    ));
    let mut run_id = String::new();
    while let Some(event) = stream.next().await {
        match event {
            RunEvent::Started { run_id: id, .. } => run_id = id,
            RunEvent::ToolCall { arguments, .. } if arguments.contains("\"c\"") => break,
            RunEvent::Completed { .. } | RunEvent::Error { .. } => {
                panic!("the run ended before it could be stopped: {event:?}")
            }
            _ => {}
        }
    }
    // Give the call time to start in its sandbox, then stop the run.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    drop(stream);
    // The run's task ends at its next await point.
    for _ in 0..100 {
        let interrupted = host.journal().interrupted().unwrap();
        if interrupted.iter().any(|run| run.run == run_id) {
            return run_id;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("run {run_id} is not listed as interrupted after it was dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_run_resumes_without_billing_a_model_call_twice_or_repeating_a_finished_tool() {
    let env = setup();
    let host = Arc::new(env.host(CONFIG).await);
    let model = script(1500);
    let agent = agent(&host, model.clone(), 10);
    let run_id = run_until_c_is_in_flight(&host, &agent).await;
    assert_eq!(model.calls.load(Ordering::SeqCst), 3);
    let interrupted = host.journal().interrupted().unwrap();
    assert_eq!(interrupted.len(), 1, "{interrupted:?}");
    assert_eq!(interrupted[0].run, run_id);
    assert_eq!(interrupted[0].user.as_deref(), Some("ann"));

    let request = ResumeRequest::new("acme".parse().unwrap(), UserId::named("ann").unwrap())
        .session("s1".parse().unwrap());
    let mut stream = agent.resume_stream(request);
    let mut events = Vec::new();
    while let Some(event) = stream.next().await {
        events.push(event);
    }
    let Some(RunEvent::Completed { result }) = events.last() else {
        panic!("the resumed run did not complete: {events:?}");
    };
    assert_eq!(result.output, "finished after \"d done\"");
    assert_eq!(result.run_id.to_string(), run_id);
    // Every model call once: three before the stop, two after.
    assert_eq!(model.calls.load(Ordering::SeqCst), 5);
    assert_eq!(result.turns, 5, "replayed turns count in the result");
    assert_eq!(result.usage.input_tokens, 50);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, RunEvent::Resumed { recorded, .. } if *recorded >= 6)),
        "{events:?}"
    );
    // `c` was in flight: it runs again with its key, and says so.
    let reruns: Vec<&RunEvent> = events
        .iter()
        .filter(|e| matches!(e, RunEvent::ToolRerun { .. }))
        .collect();
    assert_eq!(reruns.len(), 1, "{events:?}");
    // Each effect happened once; finished calls ran once.
    let effects = log(&env, "effects.log");
    let labels: Vec<&str> = effects.iter().map(|(_, l)| l.as_str()).collect();
    assert_eq!(labels, ["a", "b", "c", "d"]);
    let mut keys: Vec<&str> = effects.iter().map(|(k, _)| k.as_str()).collect();
    keys.dedup();
    assert_eq!(keys.len(), 4, "every call has its own key: {effects:?}");
    assert!(keys.iter().all(|k| k.starts_with(&run_id)), "{keys:?}");
    let attempts = log(&env, "attempts.log");
    let count = |label: &str| attempts.iter().filter(|(_, l)| l == label).count();
    assert_eq!(
        (count("a"), count("b"), count("d")),
        (1, 1, 1),
        "{attempts:?}"
    );
    assert_eq!(count("c"), 2, "the in-flight call ran again: {attempts:?}");
    let c_keys: Vec<&String> = attempts
        .iter()
        .filter(|(_, l)| l == "c")
        .map(|(k, _)| k)
        .collect();
    assert_eq!(c_keys[0], c_keys[1], "with the same idempotency key");
    // Nothing is left to resume, and the finished run's entries are gone
    // (the run's close is committed with the store's next batch).
    host.store().sync().await.unwrap();
    assert!(host.journal().interrupted().unwrap().is_empty());
    assert!(host.journal().all_entries(&run_id).unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_that_would_diverge_is_refused_with_a_typed_error() {
    let env = setup();
    let host = Arc::new(env.host(CONFIG).await);
    let model = script(1500);
    let run_id = run_until_c_is_in_flight(&host, &agent(&host, model.clone(), 10)).await;
    let request = ResumeRequest::new("acme".parse().unwrap(), UserId::named("ann").unwrap());
    // The same component asked differently (another turn cap).
    let error = agent(&host, model.clone(), 9)
        .resume(request.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            AgentError::Journal(JournalError::Diverged { seq: 0, .. })
        ),
        "{error:?}"
    );
    assert!(error.to_string().contains("cannot be resumed"), "{error}");
    // The refused resume changed nothing: the agent it ran with resumes it.
    let result = agent(&host, model.clone(), 10)
        .resume(request.clone())
        .await
        .unwrap();
    assert_eq!(result.output, "finished after \"d done\"");
    assert_eq!(result.run_id.to_string(), run_id);
    let error = agent(&host, model.clone(), 10)
        .resume(request.clone())
        .await
        .unwrap_err();
    assert!(
        matches!(error, AgentError::Journal(JournalError::NotFound(_))),
        "{error:?}"
    );
    assert!(error.to_string().contains("loom runs list --interrupted"));

    // A run recorded on another build of the component: the record names
    // that build's digest.
    let run_id_2 = run_until_c_is_in_flight(&host, &agent(&host, model.clone(), 10)).await;
    assert_ne!(run_id, run_id_2);
    let mut record = host.journal().run(&run_id_2).unwrap().unwrap();
    let digest = std::mem::replace(&mut record.component, "0".repeat(64));
    host.journal().start(record.clone()).await.unwrap();
    let request = request.run(run_id_2.parse().unwrap());
    let error = agent(&host, model.clone(), 10)
        .resume(request.clone())
        .await
        .unwrap_err();
    let AgentError::Journal(JournalError::ComponentChanged { recorded, now, .. }) = &error else {
        panic!("{error:?}");
    };
    assert_eq!(
        (recorded.as_str(), now.as_str()),
        ("0".repeat(64).as_str(), digest.as_str())
    );
    assert!(
        error.to_string().contains("Put the earlier component back"),
        "{error}"
    );
    // The run stays resumable once the component is back.
    record.component = digest;
    host.journal().start(record).await.unwrap();
    let result = agent(&host, model, 10).resume(request).await.unwrap();
    assert_eq!(result.run_id.to_string(), run_id_2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_stopped_inside_a_sub_agent_replays_both_levels_and_goes_on() {
    let env = setup();
    env.add_plugin(components::FIXTURE_DELEGATE_ONCE, "delegate-once", None);
    let host = Arc::new(
        env.host(&format!(
            "{CONFIG}[agents.worker]\narchitecture = \"react\"\ninstructions = \"Record the effects.\"\n"
        ))
        .await,
    );
    let model = script(1500);
    let agent = Agent::builder("Delegate.")
        .host(host.clone())
        .model(model.clone())
        .architecture("delegate-once")
        .journal(JournalSettings {
            journal: host.journal().clone(),
            keep_finished: true,
        })
        .build()
        .unwrap();
    let mut stream = agent.stream(RunRequest::new(scope("acme", Some("ann")), "worker go"));
    let mut run_id = String::new();
    while let Some(event) = stream.next().await {
        match event {
            RunEvent::Started { run_id: id, .. } => run_id = id,
            RunEvent::SubAgent { event, .. } if matches!(&*event, RunEvent::ToolCall { arguments, .. } if arguments.contains("\"c\"")) =>
            {
                break;
            }
            RunEvent::Completed { .. } | RunEvent::Error { .. } => panic!("{event:?}"),
            _ => {}
        }
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    drop(stream);
    for _ in 0..100 {
        if !host.journal().interrupted().unwrap().is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(model.calls.load(Ordering::SeqCst), 3);
    let result = agent
        .resume(ResumeRequest::new(
            "acme".parse().unwrap(),
            UserId::named("ann").unwrap(),
        ))
        .await
        .unwrap();
    assert_eq!(result.output, "finished after \"d done\" (5 turns)");
    assert_eq!(result.run_id.to_string(), run_id);
    assert_eq!(model.calls.load(Ordering::SeqCst), 5);
    assert_eq!(
        result.usage.input_tokens, 50,
        "the sub-agent's spend, replayed and live"
    );
    let labels: Vec<String> = log(&env, "effects.log")
        .into_iter()
        .map(|(_, l)| l)
        .collect();
    assert_eq!(labels, ["a", "b", "c", "d"]);
    // The sub-agent's steps sit under the delegation's child scope, and
    // `keep_finished` kept them.
    host.store().sync().await.unwrap();
    let entries = host.journal().all_entries(&run_id).unwrap();
    assert!(
        entries.iter().any(|(scope, _, _)| scope == "0.1:0"),
        "{:?}",
        entries.iter().map(|e| &e.0).collect::<Vec<_>>()
    );
    assert!(host.journal().interrupted().unwrap().is_empty());
}
