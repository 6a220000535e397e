//! Agents: the ReAct component running in its sandbox over a scripted model
//! and real tool components.

use loom_host::agent::{Agent, AgentError, RunEvent, RunRequest};
use loom_host::model::offline::{ScriptedModel, ScriptedTurn};
use loom_host::model::{Model, Usage};
use loom_host::store::SessionStore;
use loom_host::tenancy::ids::SessionId;
use loom_host::{Host, LoomConfig};
use loom_tests::{TestEnv, components, scope};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

fn turn(text: &str, calls: &[(&str, serde_json::Value)]) -> ScriptedTurn {
    crate::support::scripted_turn(
        text,
        calls,
        Usage {
            input_tokens: 100,
            output_tokens: 10,
            cached_tokens: 0,
            cache_write_tokens: 0,
        },
    )
}

/// What `store` holds for user `user` of tenant acme in `session`.
fn stored(store: &SessionStore, user: &str, session: &SessionId) -> Vec<loom_host::model::Message> {
    store
        .load(
            &"acme".parse().unwrap(),
            &loom_host::tenancy::ids::UserId::named(user).unwrap(),
            session,
        )
        .unwrap()
}

fn model(turns: Vec<ScriptedTurn>) -> Arc<dyn Model> {
    Arc::new(ScriptedModel::new(turns))
}

/// A host with ReAct, calculator, run-context and the slow fixture.
async fn host(env: &TestEnv, extra: &str) -> Arc<Host> {
    env.add_plugin(components::ARCH_REACT, "react", None);
    env.add_plugin(components::TOOL_CALCULATOR, "calculator", None);
    env.add_plugin(components::TOOL_RUN_CONTEXT, "run-context", None);
    env.add_plugin(
        components::FIXTURE_SLOW,
        "slow",
        Some("[capabilities]\nfiles = [{ path = \"/out\", write = true }]\n"),
    );
    env.mkdir("out");
    Arc::new(
        env.host(&format!(
            "[tenants.acme.grants]\nfiles = [{{ host = \"out\", guest = \"/out\", write = true }}]\n[tenants.acme.permissions]\nmode = \"bypass\"\n[tenants.globex]\n{extra}"
        ))
        .await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn react_runs_tools_and_answers() {
    let env = TestEnv::new();
    let host = host(&env, "").await;
    let agent = Agent::builder("You are a calculator.")
        .host(host)
        .model(model(vec![
            turn(
                "",
                &[
                    ("calculate", json!({"expression": "6*7"})),
                    ("run_context", json!({})),
                ],
            ),
            turn("The answer is {last_tool_result}", &[]),
        ]))
        .build()
        .unwrap();
    let result = agent
        .run(RunRequest::new(
            scope("acme", Some("alice")),
            "what is 6*7?",
        ))
        .await
        .unwrap();
    assert_eq!(result.turns, 2);
    assert!(!result.interrupted);
    assert!(
        result.output.starts_with("The answer is {"),
        "{}",
        result.output
    );
    // The last tool result is run_context's: the tool saw the caller.
    assert!(
        result.output.contains("\"user_id\":\"alice\""),
        "{}",
        result.output
    );
    assert!(
        result.output.contains(&result.run_id.to_string()),
        "tools run inside this run"
    );
    assert_eq!(result.usage.input_tokens, 200);
    assert_eq!(result.cost_usd, 0.0, "scripted models cost nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_calls_of_one_turn_run_in_parallel_and_return_in_call_order() {
    let env = TestEnv::new();
    let host = host(&env, "[tenants.acme.limits]\nwall_ms = 20000\n").await;
    // `a` waits for `b` and `b` for `a`: run one after the other, the
    // first would give up alone. The slower call comes first, so results in
    // completion order would differ from call order.
    let meet = |me: &str, peer: &str, timeout_ms: u64| json!({"dir": "/out", "me": me, "peer": peer, "timeout_ms": timeout_ms});
    let agent = Agent::builder("")
        .host(host)
        .model(model(vec![
            turn(
                "",
                &[
                    ("sleep_ms", json!({"ms": 300})),
                    ("rendezvous", meet("a", "b", 8000)),
                    ("rendezvous", meet("b", "a", 8000)),
                    ("calculate", json!({"expression": "1+1"})),
                ],
            ),
            turn("done", &[]),
        ]))
        .build()
        .unwrap();
    let mut stream = agent.stream(RunRequest::new(scope("acme", None), "go"));
    let mut results = Vec::new();
    let mut completed = None;
    while let Some(event) = stream.next().await {
        match event {
            RunEvent::ToolResult {
                call_id, output, ..
            } => results.push((call_id, output)),
            RunEvent::Completed { result } => completed = Some(result),
            RunEvent::Error { message } => panic!("{message}"),
            _ => {}
        }
    }
    assert!(completed.is_some());
    let outputs: Vec<&str> = results.iter().map(|(_, output)| output.as_str()).collect();
    assert_eq!(
        outputs[1..],
        [r#""met a""#, r#""met b""#, "2.0"],
        "both rendezvous calls ran at once"
    );
    let ids: Vec<&str> = results.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        ids,
        ["call_1_0", "call_1_1", "call_1_2", "call_1_3"],
        "results in the model's call order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denials_and_errors_are_results_the_model_sees() {
    let env = TestEnv::new();
    let host = host(&env, "").await;
    let agent = Agent::builder("")
        .host(host)
        .model(model(vec![
            turn(
                "",
                &[
                    ("run_context", json!({})),
                    ("calculate", json!({"expression": "1/"})),
                ],
            ),
            turn("saw: {last_tool_result}", &[]),
        ]))
        .tools(["calculate"])
        .build()
        .unwrap();
    let mut stream = agent.stream(RunRequest::new(scope("acme", None), "go"));
    let mut outputs = Vec::new();
    let mut answer = String::new();
    while let Some(event) = stream.next().await {
        match event {
            RunEvent::ToolResult { output, ok, .. } => outputs.push((ok, output)),
            RunEvent::Completed { result } => answer = result.output,
            RunEvent::Error { message } => panic!("{message}"),
            _ => {}
        }
    }
    assert!(
        !outputs[0].0 && outputs[0].1.starts_with("DENIED:"),
        "{outputs:?}"
    );
    assert!(
        !outputs[1].0 && outputs[1].1.starts_with("ERROR:"),
        "{outputs:?}"
    );
    assert!(answer.starts_with("saw: ERROR:"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_turns_interrupts_the_run() {
    let env = TestEnv::new();
    let host = host(&env, "").await;
    let looping: Vec<ScriptedTurn> = (0..5)
        .map(|_| turn("thinking", &[("calculate", json!({"expression": "1"}))]))
        .collect();
    let agent = Agent::builder("")
        .host(host)
        .model(model(looping))
        .max_turns(3)
        .build()
        .unwrap();
    let result = agent
        .run(RunRequest::new(scope("acme", None), "go"))
        .await
        .unwrap();
    assert!(result.interrupted);
    assert_eq!(result.interruption_reason.as_deref(), Some("max_turns"));
    assert_eq!(result.turns, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_continue_per_user_and_survive_a_restart() {
    let env = TestEnv::new();
    let script = vec![turn("reply to {prompt}", &[])];
    let session = SessionId::new("chat-1").unwrap();
    {
        let host = host(&env, "").await;
        let store = host.sessions();
        let agent = Agent::builder("Be brief.")
            .host(host)
            .model(model(script.clone()))
            .sessions(store.clone())
            .build()
            .unwrap();
        agent
            .run(RunRequest::new(
                scope("acme", Some("alice")).with_session(session.clone()),
                "first",
            ))
            .await
            .unwrap();
        agent
            .run(RunRequest::new(
                scope("acme", Some("alice")).with_session(session.clone()),
                "second",
            ))
            .await
            .unwrap();
        let alice = stored(&store, "alice", &session);
        let texts: Vec<&str> = alice.iter().map(|m| m.content.as_str()).collect();
        assert_eq!(
            texts,
            [
                "Be brief.",
                "first",
                "reply to first",
                "second",
                "reply to second"
            ],
            "seeded once, then appended"
        );
        agent
            .run(RunRequest::new(
                scope("acme", Some("bob")).with_session(session.clone()),
                "hello",
            ))
            .await
            .unwrap();
        let bob = stored(&store, "bob", &session);
        assert_eq!(
            bob.len(),
            3,
            "bob's session shares nothing with alice's: {bob:?}"
        );
    }
    // Restart: a new host and a reopened store see alice's history.
    let host = Arc::new(
        Host::start(LoomConfig::load(&env.path().join("loom.toml")).unwrap())
            .await
            .unwrap(),
    );
    let store = host.sessions();
    let agent = Agent::builder("Be brief.")
        .host(host)
        .model(model(script))
        .sessions(store.clone())
        .build()
        .unwrap();
    agent
        .run(RunRequest::new(
            scope("acme", Some("alice")).with_session(session.clone()),
            "third",
        ))
        .await
        .unwrap();
    let alice = stored(&store, "alice", &session);
    assert_eq!(alice.len(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_output_retries_with_feedback_then_fails_typed() {
    #[derive(serde::Deserialize, schemars::JsonSchema)]
    #[allow(dead_code, reason = "deserialized in the test")]
    struct Answer {
        value: i64,
        unit: String,
    }
    let env = TestEnv::new();
    let host = host(&env, "").await;
    let agent = Agent::builder("")
        .host(host.clone())
        .model(model(vec![turn("not json at all", &[])]))
        .build()
        .unwrap();
    // The scripted model answers turn 1 of each attempt; first attempt prose,
    // then (new prompt = feedback) the same script again: still prose.
    let err = agent
        .run(RunRequest::new(scope("acme", None), "give me json").output_type::<Answer>())
        .await
        .unwrap_err();
    match err {
        AgentError::OutputValidation(e) => {
            assert_eq!(e.raw, "not json at all");
            assert_eq!(e.attempts, 3, "one try and two retries");
        }
        other => panic!("expected an output validation error, got {other}"),
    }
    // A model that fixes its answer after feedback.
    let fixing = Agent::builder("")
        .host(host)
        .model(Arc::new(FixAfterFeedback))
        .build()
        .unwrap();
    let result = fixing
        .run(RunRequest::new(scope("acme", None), "give me json").output_type::<Answer>())
        .await
        .unwrap();
    assert_eq!(result.parsed.as_ref().unwrap()["value"], 42);
    assert_eq!(result.turns, 2);
}

/// Answers prose until the prompt is the schema feedback, then valid JSON.
struct FixAfterFeedback;

impl Model for FixAfterFeedback {
    fn id(&self) -> &str {
        "scripted:fix-after-feedback"
    }

    fn complete<'a>(
        &'a self,
        request: &'a loom_host::model::ModelRequest,
        _sink: Option<loom_host::model::ChunkSink<'a>>,
    ) -> loom_host::model::BoxFuture<
        'a,
        Result<loom_host::model::ModelResponse, loom_host::model::ModelError>,
    > {
        Box::pin(async move {
            let last_user = request
                .messages
                .iter()
                .rev()
                .find(|m| m.role == loom_host::model::Role::User)
                .map(|m| m.content.clone())
                .unwrap_or_default();
            let schema_directive = request
                .messages
                .iter()
                .any(|m| m.content.contains("JSON Schema"));
            assert!(
                schema_directive,
                "a model without native structured output gets a directive"
            );
            let text = if last_user.contains("does not match") {
                r#"{"value": 42, "unit": "m"}"#
            } else {
                "forty-two metres"
            };
            Ok(loom_host::model::ModelResponse {
                message: loom_host::model::Message::assistant(text),
                usage: Usage::default(),
                finish_reason: loom_host::model::FinishReason::Stop,
            })
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_stream_cancels_in_flight_tool_calls() {
    let env = TestEnv::new();
    let host = host(&env, "[tenants.acme.limits]\nwall_ms = 10000\n").await;
    let agent = Agent::builder("")
        .host(host)
        .model(model(vec![
            turn(
                "",
                &[(
                    "sleep_then_write",
                    json!({"ms": 400, "path": "/out/late.txt", "content": "too late"}),
                )],
            ),
            turn("done", &[]),
        ]))
        .build()
        .unwrap();
    let mut stream = agent.stream(RunRequest::new(scope("acme", None), "go"));
    loop {
        match stream.next().await {
            Some(RunEvent::ToolCall { .. }) => break,
            Some(_) => continue,
            None => panic!("the stream ended before the tool call"),
        }
    }
    drop(stream);
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(
        !env.path().join("out/late.txt").exists(),
        "the cancelled tool call still wrote its file"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_model_and_unknown_architecture_are_clear() {
    let env = TestEnv::new();
    let host = host(&env, "").await;
    let err = Agent::builder("x")
        .host(host.clone())
        .build()
        .err()
        .unwrap();
    assert!(err.to_string().contains("openai:gpt-4.1-mini"), "{err}");
    let agent = Agent::builder("x")
        .host(host)
        .model(model(vec![turn("hi", &[])]))
        .architecture("nope")
        .build()
        .unwrap();
    let err = agent
        .run(RunRequest::new(scope("acme", None), "go"))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("react"),
        "lists what exists: {err}"
    );
}
