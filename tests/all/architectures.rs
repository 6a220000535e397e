//! Architectures other than ReAct, each a real component built from
//! source with the guest SDK, driven by models that play a script and
//! record what they were asked: the exact sequence of calls per role, the
//! stop conditions, configuration checking, and per-role model routing.

use loom_host::Host;
use loom_host::agent::{Agent, AgentError, RunRequest};
use loom_host::model::offline::EchoModel;
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
