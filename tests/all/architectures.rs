//! Architectures other than ReAct, each a real component built from
//! source with the guest SDK, driven by models that play a script and
//! record what they were asked: the exact sequence of calls per role, the
//! stop conditions, configuration checking, and per-role model routing.

use loom_host::Host;
use loom_host::agent::{Agent, AgentError, RunRequest};
use loom_host::model::offline::{EchoModel, ScriptedModel, ScriptedToolCall, ScriptedTurn};
use loom_host::model::{
    BoxFuture, ChunkSink, FinishReason, Message, Model, ModelError, ModelRequest, ModelResponse,
    Usage,
};
use loom_tests::{TestEnv, components, scope};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// A model that answers from a list, in order, and records every request.
struct Sequence {
    name: String,
    answers: Mutex<VecDeque<String>>,
    seen: Mutex<Vec<ModelRequest>>,
}

impl Sequence {
    fn new(name: &str, answers: &[&str]) -> Arc<Self> {
        Arc::new(Sequence {
            name: name.into(),
            answers: Mutex::new(answers.iter().map(|a| (*a).to_owned()).collect()),
            seen: Mutex::new(Vec::new()),
        })
    }

    fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// The text of the `n`th request's messages, joined.
    fn request_text(&self, n: usize) -> String {
        self.seen.lock().unwrap()[n]
            .messages
            .iter()
            .map(|m| m.content.clone())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Model for Sequence {
    fn id(&self) -> &str {
        &self.name
    }

    fn complete<'a>(
        &'a self,
        request: &'a ModelRequest,
        _sink: Option<ChunkSink<'a>>,
    ) -> BoxFuture<'a, Result<ModelResponse, ModelError>> {
        self.seen.lock().unwrap().push(request.clone());
        let answer = self.answers.lock().unwrap().pop_front();
        Box::pin(async move {
            let answer = answer.ok_or_else(|| ModelError::InvalidRequest {
                message: format!("{}: the script has no more answers", self.name),
            })?;
            Ok(ModelResponse {
                message: Message::assistant(answer),
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

async fn host(env: &TestEnv) -> Arc<Host> {
    env.add_plugin(components::ARCH_SELF_REFINE, "self-refine", None);
    env.add_plugin(components::ARCH_REACT, "react", None);
    Arc::new(
        env.host("[tenants.acme.permissions]\nmode = \"bypass\"\n")
            .await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_refine_drafts_critiques_refines_and_stops_at_the_stop_phrase() {
    let env = TestEnv::new();
    let host = host(&env).await;
    let executor = Sequence::new("executor", &["A haiku about rust"]);
    let critic = Sequence::new("critic", &["It is not a haiku: no 5-7-5.", "no_issues"]);
    let refiner = Sequence::new(
        "refiner",
        &["Iron wakes slowly / red bloom on the quiet gate / time eats the metal"],
    );
    let agent = Agent::builder("You write poems.")
        .host(host.clone())
        .model(executor.clone())
        .role_model("critic", critic.clone())
        .role_model("refiner", refiner.clone())
        .architecture("self-refine")
        .build()
        .unwrap();
    let result = agent
        .run(RunRequest::new(
            scope("acme", Some("ann")),
            "Write a haiku about rust",
        ))
        .await
        .unwrap();
    // executor (draft), critic, refiner, critic (stop phrase, any case).
    assert_eq!(
        (executor.calls(), critic.calls(), refiner.calls()),
        (1, 2, 1)
    );
    assert_eq!(result.turns, 4);
    assert!(!result.interrupted, "{:?}", result.interruption_reason);
    assert_eq!(
        result.output,
        "Iron wakes slowly / red bloom on the quiet gate / time eats the metal"
    );
    // The critic sees the task and the current answer; the refiner sees
    // the critique too; the second critique sees the refined answer.
    assert!(critic.request_text(0).contains("Write a haiku about rust"));
    assert!(critic.request_text(0).contains("A haiku about rust"));
    assert!(
        refiner
            .request_text(0)
            .contains("It is not a haiku: no 5-7-5.")
    );
    assert!(critic.request_text(1).contains("Iron wakes slowly"));
    // Every completion, whatever its model, is charged to the run.
    assert_eq!(result.usage.input_tokens, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_refine_stops_after_max_rounds_and_reads_its_config() {
    let env = TestEnv::new();
    let host = host(&env).await;
    let executor = Sequence::new("executor", &["draft"]);
    let critic = Sequence::new("critic", &["worse", "still bad", "never happy"]);
    let refiner = Sequence::new("refiner", &["second", "third"]);
    let agent = Agent::builder("")
        .host(host.clone())
        .model(executor.clone())
        .role_model("critic", critic.clone())
        .role_model("refiner", refiner.clone())
        .architecture("self-refine")
        .architecture_config(serde_json::json!({"max_rounds": 1, "stop_phrase": "LGTM"}))
        .build()
        .unwrap();
    let result = agent
        .run(RunRequest::new(scope("acme", Some("bo")), "task"))
        .await
        .unwrap();
    assert_eq!(
        (executor.calls(), critic.calls(), refiner.calls()),
        (1, 1, 1)
    );
    assert_eq!(result.output, "second");

    // A key the architecture does not declare is refused before any model
    // call, naming the architecture.
    let bad = Agent::builder("")
        .host(host.clone())
        .model(executor.clone())
        .architecture("self-refine")
        .architecture_config(serde_json::json!({"rounds": 3}))
        .build()
        .unwrap();
    let error = bad
        .run(RunRequest::new(scope("acme", Some("bo")), "task"))
        .await
        .unwrap_err();
    assert!(matches!(error, AgentError::Architecture(_)), "{error}");
    assert!(error.to_string().contains("self-refine"), "{error}");
    assert_eq!(executor.calls(), 1, "no model call for a bad config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn self_refine_respects_max_turns_and_completes_with_the_echo_model() {
    let env = TestEnv::new();
    let host = host(&env).await;
    let executor = Sequence::new("executor", &["draft"]);
    let critic = Sequence::new("critic", &["fix it", "fix it again"]);
    let refiner = Sequence::new("refiner", &["better"]);
    let agent = Agent::builder("")
        .host(host.clone())
        .model(executor.clone())
        .role_model("critic", critic.clone())
        .role_model("refiner", refiner.clone())
        .architecture("self-refine")
        .max_turns(2)
        .build()
        .unwrap();
    let result = agent
        .run(RunRequest::new(scope("acme", Some("cy")), "task"))
        .await
        .unwrap();
    // Two turns: the draft and one critique; the best answer so far.
    assert_eq!(result.turns, 2);
    assert!(result.interrupted);
    assert_eq!(result.interruption_reason.as_deref(), Some("max_turns"));
    assert_eq!(result.output, "draft");

    // The offline echo model: a degenerate but valid run.
    let echo = Agent::builder("")
        .host(host.clone())
        .model(Arc::new(EchoModel))
        .architecture("self-refine")
        .build()
        .unwrap();
    let result = echo
        .run(RunRequest::new(scope("acme", Some("cy")), "hello"))
        .await
        .unwrap();
    assert!(!result.output.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_architecture_delegates_to_a_named_agent_of_the_configuration() {
    let env = TestEnv::new();
    env.add_plugin(components::FIXTURE_DELEGATE_ONCE, "delegate-once", None);
    env.add_plugin(components::ARCH_SELF_REFINE, "self-refine", None);
    env.add_plugin(components::ARCH_REACT, "react", None);
    let host = Arc::new(
        env.host(
            "[tenants.acme.permissions]\nmode = \"bypass\"\n\
             [agents.helper]\ninstructions = \"You help.\"\narchitecture = \"self-refine\"\nmodel = \"echo\"\n\
             [agents.helper.architecture_config]\nmax_rounds = 1\n",
        )
        .await,
    );
    let parent = Sequence::new("parent", &[]);
    let agent = Agent::builder("You delegate.")
        .host(host.clone())
        .model(parent.clone())
        .architecture("delegate-once")
        .build()
        .unwrap();
    let result = agent
        .run(RunRequest::new(
            scope("acme", Some("dee")),
            "helper summarise this",
        ))
        .await
        .unwrap();
    // The named agent ran with its own architecture and model (echo): a
    // draft and one critique, and the parent's model was never asked.
    assert!(result.output.contains("Echo:"), "{}", result.output);
    assert!(
        result.output.contains("summarise this"),
        "{}",
        result.output
    );
    assert!(result.output.ends_with("(2 turns)"), "{}", result.output);
    assert_eq!(parent.calls(), 0);

    let missing = agent
        .run(RunRequest::new(scope("acme", Some("dee")), "nobody hello"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        missing.contains("nobody") && missing.contains("helper"),
        "the error names the agent and the configured ones: {missing}"
    );
}

/// A model that calls `run_context` once, then answers with its result.
fn tool_then_answer() -> Arc<ScriptedModel> {
    Arc::new(ScriptedModel::new(vec![
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
            text: "step result: {last_tool_result}".into(),
            tool_calls: Vec::new(),
            usage: None,
        },
    ]))
}

async fn host_with_tools(env: &TestEnv, arch: (&str, &str)) -> Arc<Host> {
    env.add_plugin(arch.1, arch.0, None);
    env.add_plugin(components::TOOL_RUN_CONTEXT, "run-context", None);
    env.add_plugin(components::TOOL_CALCULATOR, "calculator", None);
    Arc::new(
        env.host("[tenants.acme.permissions]\nmode = \"bypass\"\n")
            .await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_and_execute_plans_runs_each_step_with_tools_and_synthesizes() {
    let env = TestEnv::new();
    let host = host_with_tools(
        &env,
        ("plan-and-execute", components::ARCH_PLAN_AND_EXECUTE),
    )
    .await;
    let planner = Sequence::new(
        "planner",
        &["Here is the plan:\n```json\n[\"find out who I serve\", \"say it again\"]\n```"],
    );
    let synthesizer = Sequence::new("synthesizer", &["final answer"]);
    let agent = Agent::builder("")
        .host(host.clone())
        .model(tool_then_answer())
        .role_model("planner", planner.clone())
        .role_model("synthesizer", synthesizer.clone())
        .architecture("plan-and-execute")
        .build()
        .unwrap();
    let result = agent
        .run(RunRequest::new(
            scope("acme", Some("pat")),
            "Who do you serve?",
        ))
        .await
        .unwrap();
    // planner, then per step: executor (tool call), executor (answer);
    // then the synthesizer.
    assert_eq!(result.turns, 6, "{result:?}");
    assert_eq!(result.output, "final answer");
    assert_eq!((planner.calls(), synthesizer.calls()), (1, 1));
    assert!(
        planner.request_text(0).contains("run_context"),
        "the planner sees the tools"
    );
    let synthesis = synthesizer.request_text(0);
    assert!(synthesis.contains("find out who I serve"), "{synthesis}");
    assert_eq!(
        synthesis.matches("step result:").count(),
        2,
        "both steps called the tool: {synthesis}"
    );
    assert!(
        synthesis.contains("pat"),
        "the tool ran for the run's user: {synthesis}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewoo_plans_runs_levels_with_placeholders_and_solves() {
    let env = TestEnv::new();
    let host = host_with_tools(&env, ("rewoo", components::ARCH_REWOO)).await;
    let planner = Sequence::new(
        "planner",
        &[
            r#"[{"id":"E1","tool":"calculate","args":{"expression":"6*7"}},
              {"id":"E2","tool":"calculate","args":{"expression":"{{E1}}+1"}}]"#,
        ],
    );
    let solver = Sequence::new("solver", &["43"]);
    let agent = Agent::builder("")
        .host(host.clone())
        .model(Sequence::new("unused", &[]))
        .role_model("planner", planner.clone())
        .role_model("solver", solver.clone())
        .architecture("rewoo")
        .build()
        .unwrap();
    let result = agent
        .run(RunRequest::new(
            scope("acme", Some("rey")),
            "What is 6*7+1?",
        ))
        .await
        .unwrap();
    // Two completions; the tools ran between them, E2 after E1.
    assert_eq!(result.turns, 2, "{result:?}");
    assert_eq!(result.output, "43");
    let evidence = solver.request_text(0);
    assert!(evidence.contains("E1 = 42"), "{evidence}");
    assert!(evidence.contains("E2 = 43"), "{evidence}");

    // A plan whose steps wait on each other runs no tool.
    let cyclic = Sequence::new(
        "planner",
        &[
            r#"[{"id":"E1","tool":"calculate","args":{"expression":"{{E2}}"}},
              {"id":"E2","tool":"calculate","args":{"expression":"{{E1}}"}}]"#,
        ],
    );
    let agent = Agent::builder("")
        .host(host.clone())
        .model(Sequence::new("unused", &[]))
        .role_model("planner", cyclic)
        .architecture("rewoo")
        .build()
        .unwrap();
    let result = agent
        .run(RunRequest::new(scope("acme", Some("rey")), "loop"))
        .await
        .unwrap();
    assert!(
        result.output.starts_with("cyclic_plan"),
        "{}",
        result.output
    );
    assert_eq!(result.turns, 1);
}

/// A host with the architecture `(name, component)` and react installed.
async fn host_with(env: &TestEnv, arch: (&str, &str)) -> Arc<Host> {
    env.add_plugin(arch.1, arch.0, None);
    env.add_plugin(components::ARCH_REACT, "react", None);
    Arc::new(
        env.host("[tenants.acme.permissions]\nmode = \"bypass\"\n")
            .await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tree_of_thoughts_searches_a_beam_and_synthesizes_the_best_chain() {
    let env = TestEnv::new();
    let host = host_with(
        &env,
        ("tree-of-thoughts", components::ARCH_TREE_OF_THOUGHTS),
    )
    .await;
    let proposer = Sequence::new(
        "proposer",
        &["1. idea A\n2. idea B", "1. idea B1\n2. idea B2"],
    );
    let evaluator = Sequence::new(
        "evaluator",
        &["Score: 0.4", "Score: 0.6", "Score: 0.3", "I would say 0.5"],
    );
    let synthesizer = Sequence::new("synthesizer", &["the answer"]);
    let agent = Agent::builder("")
        .host(host.clone())
        .model(Sequence::new("unused", &[]))
        .role_model("proposer", proposer.clone())
        .role_model("evaluator", evaluator.clone())
        .role_model("synthesizer", synthesizer.clone())
        .architecture("tree-of-thoughts")
        .architecture_config(
            serde_json::json!({"branch_factor": 2, "max_depth": 2, "beam_width": 1}),
        )
        .build()
        .unwrap();
    let result = agent
        .run(RunRequest::new(scope("acme", Some("tom")), "Solve it"))
        .await
        .unwrap();
    // Depth 1: one proposal, two evaluations (B wins); depth 2: one
    // proposal from B, two evaluations (B2 wins); then the synthesizer.
    assert_eq!(
        (proposer.calls(), evaluator.calls(), synthesizer.calls()),
        (2, 4, 1)
    );
    assert_eq!(result.turns, 7);
    assert_eq!(result.output, "the answer");
    assert!(
        proposer.request_text(1).contains("idea B"),
        "depth 2 grows the best node"
    );
    let chain = synthesizer.request_text(0);
    assert!(
        chain.contains("idea B") && chain.contains("idea B2"),
        "{chain}"
    );
    assert!(!chain.contains("idea A"), "{chain}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debate_revises_until_the_debaters_converge_and_a_judge_decides() {
    let env = TestEnv::new();
    let host = host_with(&env, ("debate", components::ARCH_DEBATE)).await;
    let debaters = Sequence::new(
        "debater",
        &[
            "cats are best",
            "dogs are best",
            "dogs are best",
            "dogs are best",
        ],
    );
    let judge = Sequence::new("judge", &["Dogs."]);
    let agent = Agent::builder("")
        .host(host.clone())
        .model(Sequence::new("unused", &[]))
        .role_model("debater", debaters.clone())
        .role_model("judge", judge.clone())
        .architecture("debate")
        .architecture_config(serde_json::json!({"debaters": 2, "rounds": 3, "convergence": 0.9}))
        .build()
        .unwrap();
    let result = agent
        .run(RunRequest::new(
            scope("acme", Some("dan")),
            "Which pet is best?",
        ))
        .await
        .unwrap();
    // Round 0 disagrees, round 1 converges, so rounds 2 and 3 never run.
    assert_eq!((debaters.calls(), judge.calls()), (4, 1));
    assert_eq!(result.turns, 5);
    assert_eq!(result.output, "Dogs.");
    assert!(debaters.request_text(0).contains("debater 1 of 2"));
    assert!(
        debaters.request_text(2).contains("dogs are best"),
        "round 1 shows each debater the other's answer"
    );
    assert!(judge.request_text(0).contains("Debater 2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflexion_stores_lessons_for_the_user_and_uses_them_in_the_next_attempt_and_run() {
    use loom_host::agent::MemoryOptions;
    let env = TestEnv::new();
    let host = host_with(&env, ("reflexion", components::ARCH_REFLEXION)).await;
    let agent_for =
        |actor: &Arc<Sequence>, evaluator: &Arc<Sequence>, reflector: &Arc<Sequence>| {
            Agent::builder("")
                .host(host.clone())
                .model(Sequence::new("unused", &[]))
                .role_model("actor", actor.clone())
                .role_model("evaluator", evaluator.clone())
                .role_model("reflector", reflector.clone())
                .architecture("reflexion")
                .architecture_config(serde_json::json!({"max_attempts": 2}))
                .memory(host.memory(), MemoryOptions::default())
                .build()
                .unwrap()
        };
    let actor = Sequence::new("actor", &["first try", "second try"]);
    let evaluator = Sequence::new("evaluator", &["Score: 0.2\nwrong units", "Score: 0.9"]);
    let reflector = Sequence::new("reflector", &["Check the units before answering."]);
    let result = agent_for(&actor, &evaluator, &reflector)
        .run(RunRequest::new(
            scope("acme", Some("rita")),
            "Convert 3 km to miles",
        ))
        .await
        .unwrap();
    // actor, evaluator, reflector, actor (with the lesson), evaluator.
    assert_eq!(
        (actor.calls(), evaluator.calls(), reflector.calls()),
        (2, 2, 1)
    );
    assert_eq!(result.turns, 5);
    assert_eq!(result.output, "second try");
    assert!(
        actor
            .request_text(1)
            .contains("Check the units before answering.")
    );

    // The lesson is in rita's memory: her next run starts with it; ron's
    // does not.
    for (user, sees) in [("rita", true), ("ron", false)] {
        let actor = Sequence::new("actor", &["answer"]);
        let evaluator = Sequence::new("evaluator", &["Score: 1"]);
        let reflector = Sequence::new("reflector", &[]);
        agent_for(&actor, &evaluator, &reflector)
            .run(RunRequest::new(
                scope("acme", Some(user)),
                "Convert 5 km to miles",
            ))
            .await
            .unwrap();
        assert_eq!(
            actor.request_text(0).contains("Check the units"),
            sees,
            "{user}: {}",
            actor.request_text(0)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actor_critic_revises_until_the_critic_approves() {
    let env = TestEnv::new();
    let host = host_with(&env, ("actor-critic", components::ARCH_ACTOR_CRITIC)).await;
    let actor = Sequence::new("actor", &["draft", "better"]);
    let critic = Sequence::new(
        "critic",
        &[
            r#"{"issues": ["too short"], "score": 0.3, "summary": "meh"}"#,
            "```json\n{\"issues\": [], \"score\": 0.95, \"summary\": \"good\"}\n```",
        ],
    );
    let agent = Agent::builder("")
        .host(host.clone())
        .model(Sequence::new("unused", &[]))
        .role_model("actor", actor.clone())
        .role_model("critic", critic.clone())
        .architecture("actor-critic")
        .build()
        .unwrap();
    let result = agent
        .run(RunRequest::new(scope("acme", Some("ace")), "Describe Loom"))
        .await
        .unwrap();
    assert_eq!((actor.calls(), critic.calls()), (2, 2));
    assert_eq!(result.turns, 4);
    assert_eq!(result.output, "better");
    assert!(
        actor.request_text(1).contains("too short"),
        "the actor revises given the issues"
    );
    assert!(critic.request_text(1).contains("better"));
}

/// A host with router and supervisor, react, and the named agent `helper`
/// (react on the echo model).
async fn team_host(env: &TestEnv) -> Arc<Host> {
    env.add_plugin(components::ARCH_ROUTER, "router", None);
    env.add_plugin(components::ARCH_SUPERVISOR, "supervisor", None);
    env.add_plugin(components::ARCH_SWARM, "swarm", None);
    env.add_plugin(components::ARCH_BLACKBOARD, "blackboard", None);
    env.add_plugin(components::ARCH_REACT, "react", None);
    Arc::new(
        env.host(
            "[tenants.acme.permissions]\nmode = \"bypass\"\n\
             [agents.helper]\ninstructions = \"You help.\"\narchitecture = \"react\"\nmodel = \"echo\"\n",
        )
        .await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_classifies_hands_off_and_falls_back() {
    let env = TestEnv::new();
    let host = team_host(&env).await;
    let routes = serde_json::json!({
        "routes": {
            "math": {"description": "arithmetic", "agent": "helper"},
            "general": {"description": "anything else", "instructions": "Answer briefly."}
        },
        "fallback": "general"
    });
    let router = Sequence::new("router", &["`Math`.", "no idea"]);
    // The inline `general` route runs react on the agent's own model.
    let own = Sequence::new("own", &["general answer"]);
    let agent = Agent::builder("")
        .host(host.clone())
        .model(own.clone())
        .role_model("router", router.clone())
        .architecture("router")
        .architecture_config(routes)
        .build()
        .unwrap();
    let math = agent
        .run(RunRequest::new(scope("acme", Some("ro")), "what is 2+2"))
        .await
        .unwrap();
    assert_eq!(math.output, "Echo: what is 2+2", "the named agent answered");
    assert!(router.request_text(0).contains("arithmetic"));
    assert_eq!(own.calls(), 0);
    let general = agent
        .run(RunRequest::new(scope("acme", Some("ro")), "tell me a joke"))
        .await
        .unwrap();
    assert_eq!(
        general.output, "general answer",
        "the fallback route answered"
    );
    assert_eq!((router.calls(), own.calls()), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_delegates_reads_results_and_answers() {
    let env = TestEnv::new();
    let host = team_host(&env).await;
    let supervisor = Sequence::new(
        "supervisor",
        &[
            r#"{"delegate": [{"worker": "helper", "task": "compute 2+2"}, {"worker": "coder", "task": "x"}]}"#,
            r#"{"final": "done: 4"}"#,
        ],
    );
    let agent = Agent::builder("")
        .host(host.clone())
        .model(Sequence::new("unused", &[]))
        .role_model("supervisor", supervisor.clone())
        .architecture("supervisor")
        .architecture_config(serde_json::json!({
            "workers": {"helper": {"description": "does the work", "agent": "helper"}}
        }))
        .build()
        .unwrap();
    let result = agent
        .run(RunRequest::new(scope("acme", Some("sue")), "What is 2+2?"))
        .await
        .unwrap();
    assert_eq!(result.output, "done: 4");
    assert_eq!(supervisor.calls(), 2);
    let second = supervisor.request_text(1);
    assert!(
        second.contains("[helper] compute 2+2 -> Echo: compute 2+2"),
        "{second}"
    );
    assert!(second.contains("no worker named coder"), "{second}");
    // An empty team is refused; no team at all is one ReAct `assistant`.
    let empty = Agent::builder("")
        .host(host.clone())
        .model(Sequence::new("unused", &[]))
        .architecture("supervisor")
        .architecture_config(serde_json::json!({"workers": {}}))
        .build()
        .unwrap();
    let error = empty
        .run(RunRequest::new(scope("acme", Some("sue")), "x"))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("supervisor"), "{error}");
    let supervisor = Sequence::new(
        "supervisor",
        &[
            r#"{"delegate": [{"worker": "assistant", "task": "say hi"}]}"#,
            r#"{"final": "hi"}"#,
        ],
    );
    let default_team = Agent::builder("")
        .host(host.clone())
        .model(Arc::new(EchoModel))
        .role_model("supervisor", supervisor.clone())
        .architecture("supervisor")
        .build()
        .unwrap();
    let result = default_team
        .run(RunRequest::new(scope("acme", Some("sue")), "greet"))
        .await
        .unwrap();
    assert_eq!(result.output, "hi");
    assert!(supervisor.request_text(0).contains("- assistant: "));
    assert!(
        supervisor
            .request_text(1)
            .contains("[assistant] say hi -> Echo: say hi")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swarm_hands_off_between_peers_and_stops_a_cycle() {
    let env = TestEnv::new();
    let host = team_host(&env).await;
    let peers = serde_json::json!({
        "agents": {
            "a": {"description": "first look", "instructions": "You look first."},
            "b": {"description": "second look", "instructions": "You check."}
        },
        "entry": "a"
    });
    // Both inline peers run react on the agent's own model, in turn.
    let own = Sequence::new("own", &["A looked\nHANDOFF: b: please check", "B is sure"]);
    let agent = Agent::builder("")
        .host(host.clone())
        .model(own.clone())
        .architecture("swarm")
        .architecture_config(peers.clone())
        .build()
        .unwrap();
    let result = agent
        .run(RunRequest::new(scope("acme", Some("swa")), "Look at this"))
        .await
        .unwrap();
    assert_eq!(result.output, "B is sure");
    assert_eq!(own.calls(), 2);
    let handed = own.request_text(1);
    assert!(
        handed.contains("Handed off from a: please check"),
        "{handed}"
    );
    assert!(
        handed.contains("A looked") && !handed.contains("HANDOFF: b: please"),
        "{handed}"
    );

    let looping = Sequence::new(
        "own",
        &[
            "A1\nHANDOFF: b: x",
            "B1\nHANDOFF: a: y",
            "A2\nHANDOFF: b: z",
            "never asked",
        ],
    );
    let agent = Agent::builder("")
        .host(host.clone())
        .model(looping.clone())
        .architecture("swarm")
        .architecture_config(peers)
        .build()
        .unwrap();
    let result = agent
        .run(RunRequest::new(scope("acme", Some("swa")), "Look again"))
        .await
        .unwrap();
    // a→b, b→a, then a→b again: a cycle, so the last answer stands.
    assert_eq!(result.output, "A2");
    assert_eq!(looping.calls(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackboard_lets_the_controller_pick_experts_and_answer_from_the_board() {
    let env = TestEnv::new();
    let host = team_host(&env).await;
    let controller = Sequence::new(
        "controller",
        &[
            r#"{"expert": "calc", "focus": "add the numbers"}"#,
            r#"{"final": "4"}"#,
        ],
    );
    let agent = Agent::builder("")
        .host(host.clone())
        .model(Sequence::new("unused", &[]))
        .role_model("controller", controller.clone())
        .architecture("blackboard")
        .architecture_config(serde_json::json!({
            "experts": {
                "calc": {"description": "arithmetic", "agent": "helper"},
                "writer": {"description": "prose", "instructions": "Write well."}
            }
        }))
        .build()
        .unwrap();
    let result = agent
        .run(RunRequest::new(scope("acme", Some("bla")), "What is 2+2?"))
        .await
        .unwrap();
    assert_eq!(result.output, "4");
    assert_eq!(controller.calls(), 2);
    let board = controller.request_text(1);
    assert!(
        board.contains("[calc] Echo:"),
        "the expert's contribution is on the board: {board}"
    );
    assert!(board.contains("Your focus: add the numbers"), "{board}");
}
