//! Hostile architectures: each attack on the harness is contained with a
//! clear error, and the next run is served.

use loom_host::agent::{Agent, AgentError, RunEvent, RunRequest};
use loom_host::engine::CallError;
use loom_host::model::offline::EchoModel;
use loom_tests::{TestEnv, components, scope};
use std::sync::Arc;
use std::time::Duration;

/// A host with the hostile architecture, the stub and the calculator; the
/// agent may use only `run_context`.
async fn agent(env: &TestEnv, limits: &str) -> Agent {
    env.add_plugin(components::FIXTURE_HOSTILE_ARCH, "hostile", None);
    env.add_plugin(components::FIXTURE_ARCHITECTURE_STUB, "stub", None);
    env.add_plugin(components::TOOL_CALCULATOR, "calculator", None);
    env.add_plugin(components::TOOL_RUN_CONTEXT, "run-context", None);
    let host = Arc::new(
        env.host(&format!(
            "[tenants.acme]\n[tenants.acme.limits]\n{limits}\n[tenants.globex]\n"
        ))
        .await,
    );
    Agent::builder("attack")
        .host(host)
        .model(Arc::new(EchoModel))
        .architecture("hostile")
        .tools(["run_context"])
        .run_timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// The next run (the stub architecture) is served normally.
async fn next_run_is_served(agent: &Agent) {
    let result = agent
        .run(RunRequest::new(scope("acme", Some("next")), "still here?").architecture("stub"))
        .await
        .expect("the next run is served");
    assert_eq!(result.output, "still here?");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_architecture_that_loops_forever_hits_its_cpu_limit() {
    let env = TestEnv::new();
    let agent = agent(&env, "cpu_ms = 200").await;
    let err = agent
        .run(RunRequest::new(scope("acme", None), "loop"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            AgentError::Sandbox(CallError::CpuLimit { limit_ms: 200, .. })
        ),
        "{err:?}"
    );
    next_run_is_served(&agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_delegation_is_cut_off_by_depth_and_count() {
    let env = TestEnv::new();
    let agent = agent(&env, "cpu_ms = 10000").await;
    let result = agent
        .run(RunRequest::new(scope("acme", None), "delegate"))
        .await;
    // Either the refusals end the loop with an answer, or its CPU budget
    // does; both within the run, never an unbounded tree of sub-agents.
    match result {
        Ok(result) => assert!(result.output.starts_with("refused"), "{}", result.output),
        Err(AgentError::Sandbox(CallError::CpuLimit { .. })) => {}
        Err(other) => panic!("unexpected {other:?}"),
    }
    next_run_is_served(&agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_flood_stops_the_architecture_with_the_reason() {
    let env = TestEnv::new();
    let agent = agent(&env, "cpu_ms = 20000").await;
    let mut stream = agent.stream(RunRequest::new(scope("acme", None), "emit"));
    let mut custom = 0;
    let mut error = None;
    while let Some(event) = stream.next().await {
        match event {
            RunEvent::Custom { .. } => custom += 1,
            RunEvent::Error { message } => error = Some(message),
            _ => {}
        }
    }
    assert_eq!(custom, 10_000, "events up to the cap reach the stream");
    let error = error.expect("the run fails");
    assert!(error.contains("emitted more than 10000 events"), "{error}");
    next_run_is_served(&agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_sub_agents_counts_against_one_cap_for_the_whole_tree() {
    let env = TestEnv::new();
    let agent = agent(&env, "cpu_ms = 20000").await;
    let mut stream = agent.stream(RunRequest::new(scope("acme", None), "emit-tree"));
    let mut floods = 0;
    let mut error = None;
    while let Some(event) = stream.next().await {
        match event {
            RunEvent::Custom { .. } => floods += 1,
            RunEvent::SubAgent { event, .. } if matches!(*event, RunEvent::Custom { .. }) => {
                floods += 1
            }
            RunEvent::Error { message } => error = Some(message),
            _ => {}
        }
    }
    // Eight sub-agents and their parent share 10,000 events, not 90,000.
    assert_eq!(floods, 10_000);
    let error = error.expect("the run fails");
    assert!(error.contains("emitted more than 10000 events"), "{error}");
    next_run_is_served(&agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_giant_answer_is_refused_with_the_limit_named() {
    let env = TestEnv::new();
    let agent = agent(&env, "memory_mib = 256\ncpu_ms = 20000").await;
    let err = agent
        .run(RunRequest::new(scope("acme", None), "giant"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("67108864 bytes") && text.contains("max_output_bytes"),
        "{text}"
    );
    next_run_is_served(&agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_the_agent_was_not_given_is_denied() {
    let env = TestEnv::new();
    let agent = agent(&env, "").await;
    let result = agent
        .run(RunRequest::new(scope("acme", None), "ungranted calculate"))
        .await
        .unwrap();
    assert!(
        result.output.contains("Denied") && result.output.contains("not available to this agent"),
        "{}",
        result.output
    );
    next_run_is_served(&agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn architecture_clocks_come_through_the_host() {
    let env = TestEnv::new();
    let agent = agent(&env, "").await;
    let result = agent
        .run(RunRequest::new(scope("acme", None), "clock"))
        .await
        .unwrap();
    let seen: u64 = result.output.parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now.abs_diff(seen) < 60, "guest saw {seen}, host {now}");
}
