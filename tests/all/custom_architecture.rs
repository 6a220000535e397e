//! The example architecture of `examples/custom-architecture`
//! (`draft-check`), built from source like any plugin: dropped into a plugin
//! directory under a file name of its own and chosen by the name it
//! declares; its exact sequence of model calls and events with scripted
//! models; its configuration, tool-step cap, turn cap and budget stop; the
//! check delegated to a named agent; and a tenant's own plugin directory,
//! visible to that tenant only.

use loom_host::agent::{Agent, AgentError, RunEvent, RunRequest, RunResult};
use loom_host::model::offline::EchoModel;
use loom_host::model::{
    BoxFuture, ChunkSink, FinishReason, Message, Model, ModelError, ModelRequest, ModelResponse,
    Role, ToolCall, Usage,
};
use loom_host::plugins::Visibility;
use loom_host::{Host, TenantId};
use loom_tests::{TestEnv, components, scope};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// The name the example declares in `describe`.
const ARCH: &str = "draft-check";

/// Every model request of a run, in order, with the role of the model
/// that served it.
type Log = Arc<Mutex<Vec<(String, ModelRequest)>>>;

/// One scripted reply: text, and at most one tool call (name, JSON
/// arguments).
struct Reply {
    text: &'static str,
    call: Option<(&'static str, &'static str)>,
}

/// A reply with `text` and no tool call.
fn say(text: &'static str) -> Reply {
    Reply { text, call: None }
}

/// A reply that calls `tool` with `arguments`.
fn call(tool: &'static str, arguments: &'static str) -> Reply {
    Reply {
        text: "",
        call: Some((tool, arguments)),
    }
}

/// The model of one role: plays its replies in order and records every
/// request in the log the roles share, so the log holds the exact
/// interleaving of the run's model calls.
struct RoleModel {
    role: String,
    replies: Mutex<VecDeque<Reply>>,
    log: Log,
}

impl RoleModel {
    fn new(role: &str, replies: Vec<Reply>, log: &Log) -> Arc<Self> {
        Arc::new(RoleModel {
            role: role.into(),
            replies: Mutex::new(replies.into()),
            log: log.clone(),
        })
    }
}

impl Model for RoleModel {
    fn id(&self) -> &str {
        &self.role
    }

    fn complete<'a>(
        &'a self,
        request: &'a ModelRequest,
        _sink: Option<ChunkSink<'a>>,
    ) -> BoxFuture<'a, Result<ModelResponse, ModelError>> {
        let index = {
            let mut log = self.log.lock().unwrap();
            log.push((self.role.clone(), request.clone()));
            log.len()
        };
        let reply = self.replies.lock().unwrap().pop_front();
        Box::pin(async move {
            let reply = reply.ok_or_else(|| ModelError::InvalidRequest {
                message: format!("{}: the script has no more replies", self.role),
            })?;
            let mut message = Message::assistant(reply.text);
            let mut finish_reason = FinishReason::Stop;
            if let Some((name, arguments)) = reply.call {
                message.tool_calls.push(ToolCall {
                    id: format!("call_{index}"),
                    name: name.into(),
                    arguments: arguments.into(),
                });
                finish_reason = FinishReason::ToolCalls;
            }
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

/// The roles of the logged requests, in order.
fn roles(log: &Log) -> Vec<String> {
    log.lock().unwrap().iter().map(|(r, _)| r.clone()).collect()
}

/// The `n`th logged request.
fn request(log: &Log, n: usize) -> ModelRequest {
    log.lock().unwrap()[n].1.clone()
}

/// A tenant id.
fn tenant(name: &str) -> TenantId {
    TenantId::new(name).expect("tenant id")
}

/// A host whose global plugin directory holds the example, under a file
/// name of its own (`custom.wasm`: agents choose an architecture by the
/// name it declares, not by its file), the calculator tool and ReAct (for
/// delegated checkers). Tenant `acme` runs tool calls without asking;
/// `extra` is appended to `loom.toml`.
async fn host(env: &TestEnv, extra: &str) -> Arc<Host> {
    env.add_plugin(components::EXAMPLE_CUSTOM_ARCHITECTURE, "custom", None);
    env.add_plugin(components::TOOL_CALCULATOR, "calculator", None);
    env.add_plugin(components::ARCH_REACT, "react", None);
    Arc::new(
        env.host(&format!(
            "[tenants.acme.permissions]\nmode = \"bypass\"\n{extra}"
        ))
        .await,
    )
}

/// An agent running the example with `drafter` as its model and `checker`
/// serving the `checker` role, configured with `config`.
fn agent(
    host: &Arc<Host>,
    drafter: Arc<RoleModel>,
    checker: Arc<RoleModel>,
    config: Value,
) -> Agent {
    Agent::builder("You check your sums.")
        .host(host.clone())
        .model(drafter)
        .role_model("checker", checker)
        .architecture(ARCH)
        .architecture_config(config)
        .build()
        .expect("agent")
}

/// What a streamed run gave: its result (or error text), the
/// architecture's own events as (kind, data), and the tool results (tool,
/// output) the host reported.
struct Streamed {
    result: Result<RunResult, String>,
    events: Vec<(String, Value)>,
    tool_results: Vec<(String, String)>,
}

/// Run `agent` for user `user` of `tenant_name` on `prompt`, streaming.
async fn stream(agent: &Agent, tenant_name: &str, user: &str, prompt: &str) -> Streamed {
    let mut stream = agent.stream(RunRequest::new(scope(tenant_name, Some(user)), prompt));
    let mut streamed = Streamed {
        result: Err("the stream ended without a result".into()),
        events: Vec::new(),
        tool_results: Vec::new(),
    };
    while let Some(event) = stream.next().await {
        match event {
            RunEvent::Custom { kind, data } => {
                let data = serde_json::from_str(&data).expect("event data is JSON");
                streamed.events.push((kind, data));
            }
            RunEvent::ToolResult { name, output, .. } => {
                streamed.tool_results.push((name, output));
            }
            RunEvent::Completed { result } => streamed.result = Ok(*result),
            RunEvent::Error { message } => streamed.result = Err(message),
            _ => {}
        }
    }
    streamed
}

/// An event of the example.
fn event(kind: &str, data: Value) -> (String, Value) {
    (kind.to_owned(), data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_architecture_is_chosen_by_name_and_completes_with_the_echo_model() {
    let env = TestEnv::new();
    let host = host(&env, "").await;
    assert_eq!(
        host.catalog_for(&tenant("acme"))
            .await
            .architecture_names(&tenant("acme")),
        [ARCH, "react"]
    );
    let agent = Agent::builder("Be brief.")
        .host(host.clone())
        .model(Arc::new(EchoModel))
        .architecture(ARCH)
        .build()
        .unwrap();
    let run = stream(&agent, "acme", "ann", "What is 6*7?").await;
    let result = run.result.unwrap();
    // The echo of the checker's request is no verdict, so the draft
    // stands: one draft, one check.
    assert_eq!(result.output, "Echo: What is 6*7?");
    assert_eq!(result.turns, 2);
    assert!(!result.interrupted, "{:?}", result.interruption_reason);
    assert_eq!(
        run.events,
        [
            event(
                "draft",
                json!({"revision": 0, "text": "Echo: What is 6*7?"})
            ),
            event(
                "verdict",
                json!({"revision": 0, "verdict": "unclear", "feedback": null})
            ),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_architecture_drafts_with_tools_checks_and_revises_in_order() {
    let env = TestEnv::new();
    let host = host(&env, "").await;
    let log = Log::default();
    let drafter = RoleModel::new(
        "drafter",
        vec![
            call("calculate", r#"{"expression": "6*7"}"#),
            say("6*7 = 43"),
            say("6*7 = 42"),
        ],
        &log,
    );
    let checker = RoleModel::new(
        "checker",
        vec![say("REVISE: 6*7 is 42, not 43."), say("**APPROVED**")],
        &log,
    );
    let agent = agent(&host, drafter, checker, json!({}));
    let run = stream(&agent, "acme", "ann", "What is 6*7?").await;
    let result = run.result.unwrap();

    // The exact sequence: draft (a tool turn, then the answer), check,
    // revision, check.
    assert_eq!(
        roles(&log),
        ["drafter", "drafter", "checker", "drafter", "checker"]
    );
    assert_eq!(result.output, "6*7 = 42");
    assert_eq!(result.turns, 5);
    assert!(!result.interrupted, "{:?}", result.interruption_reason);
    assert_eq!(result.usage.input_tokens, 50, "every completion is charged");
    assert_eq!(
        run.tool_results,
        [("calculate".to_owned(), "42.0".to_owned())]
    );
    assert_eq!(
        run.events,
        [
            event("draft", json!({"revision": 0, "text": "6*7 = 43"})),
            event(
                "verdict",
                json!({"revision": 0, "verdict": "revise", "feedback": "6*7 is 42, not 43."})
            ),
            event("draft", json!({"revision": 1, "text": "6*7 = 42"})),
            event(
                "verdict",
                json!({"revision": 1, "verdict": "approved", "feedback": null})
            ),
        ]
    );

    // The drafter is offered the tools and seeded with the instructions
    // and the prompt; it reads the tool's result.
    let first = request(&log, 0);
    assert!(first.tools.iter().any(|t| t.name == "calculate"));
    assert_eq!(first.messages[0].role, Role::System);
    assert_eq!(first.messages[0].content, "You check your sums.");
    assert_eq!(first.messages[1].content, "What is 6*7?");
    let second = request(&log, 1);
    let observation = second.messages.last().unwrap();
    assert_eq!(
        (observation.role, observation.content.as_str()),
        (Role::Tool, "42.0")
    );
    // The checker gets no tools, its own instructions, and the question
    // with the draft; not the drafter's conversation.
    let check = request(&log, 2);
    assert!(check.tools.is_empty());
    assert!(check.messages[0].content.starts_with("You are a checker"));
    let asked = &check.messages.last().unwrap().content;
    assert!(asked.starts_with("Question:\nWhat is 6*7?"), "{asked}");
    assert!(asked.contains("Draft answer:\n6*7 = 43"), "{asked}");
    assert!(!check.messages.iter().any(|m| m.role == Role::Tool));
    // The revision continues the drafter's conversation with the feedback.
    let revise = request(&log, 3);
    let feedback = revise.messages.last().unwrap();
    assert_eq!(feedback.role, Role::User);
    assert!(
        feedback.content.contains("6*7 is 42, not 43."),
        "{}",
        feedback.content
    );
    assert!(revise.messages.iter().any(|m| m.content == "6*7 = 43"));
    assert!(
        request(&log, 4)
            .messages
            .last()
            .unwrap()
            .content
            .contains("Draft answer:\n6*7 = 42")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_architecture_reads_its_config_and_caps_tool_steps() {
    let env = TestEnv::new();
    let host = host(&env, "").await;

    // max_revisions 0: the draft is checked once and returned whatever the
    // verdict.
    let log = Log::default();
    let drafter = RoleModel::new("drafter", vec![say("draft")], &log);
    let checker = RoleModel::new("checker", vec![say("REVISE: no")], &log);
    let run = stream(
        &agent(&host, drafter, checker, json!({"max_revisions": 0})),
        "acme",
        "bo",
        "task",
    )
    .await;
    let result = run.result.unwrap();
    assert_eq!(roles(&log), ["drafter", "checker"]);
    assert_eq!(result.output, "draft");
    assert!(!result.interrupted);

    // A key the schema does not declare, or a value out of its range, is
    // refused before any model call, naming the architecture.
    for bad in [json!({"rounds": 1}), json!({"max_revisions": 9})] {
        let log = Log::default();
        let drafter = RoleModel::new("drafter", vec![say("draft")], &log);
        let checker = RoleModel::new("checker", vec![], &log);
        let error = agent(&host, drafter, checker, bad.clone())
            .run(RunRequest::new(scope("acme", Some("bo")), "task"))
            .await
            .unwrap_err();
        assert!(
            matches!(error, AgentError::Architecture(_)),
            "{bad}: {error}"
        );
        assert!(error.to_string().contains(ARCH), "{bad}: {error}");
        assert!(roles(&log).is_empty(), "{bad}: no model call");
    }

    // max_tool_steps 1: the second tool turn is answered, not run, and the
    // model is told to answer.
    let log = Log::default();
    let drafter = RoleModel::new(
        "drafter",
        vec![
            call("calculate", r#"{"expression": "1+1"}"#),
            call("calculate", r#"{"expression": "2+2"}"#),
            say("2 and 4"),
        ],
        &log,
    );
    let checker = RoleModel::new("checker", vec![say("APPROVED")], &log);
    let run = stream(
        &agent(&host, drafter, checker, json!({"max_tool_steps": 1})),
        "acme",
        "bo",
        "add",
    )
    .await;
    let result = run.result.unwrap();
    assert_eq!(result.output, "2 and 4");
    assert_eq!(roles(&log), ["drafter", "drafter", "drafter", "checker"]);
    assert_eq!(
        run.tool_results,
        [("calculate".to_owned(), "2.0".to_owned())],
        "only the first tool turn ran"
    );
    let refused = request(&log, 2);
    let refused = refused.messages.last().unwrap();
    assert_eq!(refused.role, Role::Tool);
    assert!(
        refused.content.starts_with("ERROR: not run"),
        "{}",
        refused.content
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_architecture_keeps_its_best_answer_when_turns_or_a_budget_run_out() {
    // max_turns 3: draft, check, revision; no turn is left for the second
    // check, so the run is interrupted with the revision.
    let env = TestEnv::new();
    let host = host(&env, "").await;
    let log = Log::default();
    let drafter = RoleModel::new("drafter", vec![say("first"), say("second")], &log);
    let checker = RoleModel::new("checker", vec![say("REVISE: more")], &log);
    let agent = Agent::builder("")
        .host(host.clone())
        .model(drafter)
        .role_model("checker", checker)
        .architecture(ARCH)
        .max_turns(3)
        .build()
        .unwrap();
    let result = agent
        .run(RunRequest::new(scope("acme", Some("cy")), "task"))
        .await
        .unwrap();
    assert_eq!(roles(&log), ["drafter", "checker", "drafter"]);
    assert!(result.interrupted);
    assert_eq!(result.interruption_reason.as_deref(), Some("max_turns"));
    assert_eq!(result.output, "second");

    // A budget of three model calls a run: the fourth (the second check)
    // is refused by the host; the architecture ends with the revision and
    // the host names the cap.
    let env = TestEnv::new();
    let host = self::host(
        &env,
        "[tenants.acme.user_budgets]\nmodel_calls_per_run = 3\n",
    )
    .await;
    let log = Log::default();
    let drafter = RoleModel::new("drafter", vec![say("first"), say("second")], &log);
    let checker = RoleModel::new(
        "checker",
        vec![say("REVISE: more"), say("REVISE: again")],
        &log,
    );
    let result = self::agent(&host, drafter, checker, json!({}))
        .run(RunRequest::new(scope("acme", Some("cy")), "task"))
        .await
        .unwrap();
    assert_eq!(roles(&log), ["drafter", "checker", "drafter"]);
    assert!(result.interrupted);
    assert_eq!(
        result.interruption_reason.as_deref(),
        Some("budget:model_calls_per_run")
    );
    assert_eq!(result.output, "second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_architecture_delegates_the_check_to_a_named_agent() {
    let env = TestEnv::new();
    std::fs::write(
        env.path().join("reviewer.yaml"),
        "turns:\n  - text: \"APPROVED\"\n",
    )
    .unwrap();
    let host = host(
        &env,
        "[agents.reviewer]\ninstructions = \"You review.\"\narchitecture = \"react\"\n\
         model = \"scripted:reviewer.yaml\"\n",
    )
    .await;
    let log = Log::default();
    let drafter = RoleModel::new("drafter", vec![say("draft")], &log);
    let checker = RoleModel::new("checker", vec![], &log);
    let run = stream(
        &agent(
            &host,
            drafter,
            checker,
            json!({"checker_agent": "agent:reviewer"}),
        ),
        "acme",
        "dee",
        "task",
    )
    .await;
    let result = run.result.unwrap();
    // The reviewer (its own model) checked: the checker role was never
    // asked.
    assert_eq!(roles(&log), ["drafter"]);
    assert_eq!(result.output, "draft");
    assert!(!result.interrupted);
    assert_eq!(
        run.events.last(),
        Some(&event(
            "verdict",
            json!({"revision": 0, "verdict": "approved", "feedback": null})
        ))
    );

    // An unknown agent fails the run with the host's reason, naming it.
    let log = Log::default();
    let drafter = RoleModel::new("drafter", vec![say("draft")], &log);
    let checker = RoleModel::new("checker", vec![], &log);
    let error = agent(
        &host,
        drafter,
        checker,
        json!({"checker_agent": "agent:nobody"}),
    )
    .run(RunRequest::new(scope("acme", Some("dee")), "task"))
    .await
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("unknown agent") && error.contains("nobody") && error.contains("reviewer"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_architecture_in_a_tenant_directory_is_visible_to_that_tenant_only() {
    let env = TestEnv::new();
    let own = env.mkdir("tenants/acme");
    env.install(&own, components::EXAMPLE_CUSTOM_ARCHITECTURE, ARCH, None);
    env.add_plugin(components::ARCH_REACT, "react", None);
    let host = Arc::new(
        env.host("[tenants.acme]\nplugin_dirs = [\"tenants/acme\"]\n[tenants.globex]\n")
            .await,
    );

    // What `loom plugins list --tenant T` shows: acme sees its own
    // directory's architecture, globex does not.
    let catalog = host.catalog().await;
    let listed = |name: &str| -> Vec<(String, Visibility)> {
        catalog
            .visible(Some(&tenant(name)))
            .into_iter()
            .filter(|e| {
                e.status
                    .as_ref()
                    .is_ok_and(|p| p.architecture().is_some_and(|a| a.info.name == ARCH))
            })
            .map(|e| (e.name(), e.visibility.clone()))
            .collect()
    };
    assert_eq!(
        listed("acme"),
        [(ARCH.to_owned(), Visibility::Tenant(tenant("acme")))]
    );
    assert!(listed("globex").is_empty());
    assert_eq!(catalog.architecture_names(&tenant("acme")), [ARCH, "react"]);
    assert_eq!(catalog.architecture_names(&tenant("globex")), ["react"]);

    let agent = Agent::builder("")
        .host(host.clone())
        .model(Arc::new(EchoModel))
        .architecture(ARCH)
        .build()
        .unwrap();
    let ok = agent
        .run(RunRequest::new(scope("acme", Some("ann")), "hello"))
        .await
        .unwrap();
    assert_eq!(ok.output, "Echo: hello");

    let error = agent
        .run(RunRequest::new(scope("globex", Some("ann")), "hello"))
        .await
        .unwrap_err();
    assert!(matches!(error, AgentError::NotFound(_)), "{error}");
    assert_eq!(
        error.to_string(),
        "no architecture `draft-check` is available to tenant `globex`; available: react"
    );
}
