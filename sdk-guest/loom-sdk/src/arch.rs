//! Architectures: the [`Architecture`] trait behind
//! [`export_architecture!`](crate::export_architecture), the types of the
//! `loom:plugin/architecture@0.1.3` export and the `loom:plugin/harness@0.1.3`
//! import, and helpers that keep an agent loop short ([`Run`],
//! [`config`], [`emit`], ...).
//!
//! Everything an architecture does outside its own memory goes through the
//! host's harness: model completions, tool calls, sub-agents, events and
//! user memory. The host budgets, checks and journals every such call.

use std::ops::AddAssign;

use serde::de::DeserializeOwned;

use crate::arch_bindings::loom::plugin::harness;

pub use crate::arch_bindings::exports::loom::plugin::architecture::{
    ArchitectureInfo, RunError, RunInput, RunOutput, WorkerRole,
};
pub use crate::arch_bindings::loom::plugin::harness::{
    AgentRef, Completion, CompletionRequest, Delegation, Event, FinishReason, HarnessError,
    Recollection, RunOutput as DelegateOutput,
};
pub use crate::bindings::loom::plugin::types::{
    Message, Role, ToolCall, ToolError, ToolResult, ToolSpec, Usage,
};

/// An architecture: what [`export_architecture!`](crate::export_architecture)
/// exports as `loom:plugin/architecture@0.1.3`.
pub trait Architecture {
    /// What this architecture is: its name, description, worker roles and
    /// the JSON Schema of its configuration.
    fn describe() -> ArchitectureInfo;

    /// Run the loop for `input` to completion. Running out of turns is an
    /// interrupted [`RunOutput`], not an error; an error fails the run.
    fn run(input: RunInput) -> Result<RunOutput, RunError>;
}

impl Message {
    /// A message of `role` with `content` and nothing else.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
            name: None,
            tool_call_id: None,
            tool_calls: Vec::new(),
        }
    }

    /// A system message (instructions).
    pub fn system(content: impl Into<String>) -> Self {
        Message::new(Role::System, content)
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Message::new(Role::User, content)
    }

    /// An assistant message without tool calls.
    pub fn assistant(content: impl Into<String>) -> Self {
        Message::new(Role::Assistant, content)
    }

    /// The tool message the model reads for one tool result: the tool's
    /// output on success, `DENIED: <reason>` for a denial, and
    /// `ERROR: ...` for an unknown tool, invalid arguments or a failure.
    pub fn observation(result: ToolResult) -> Self {
        let content = match result.outcome {
            Ok(output) => output,
            Err(ToolError::Denied(reason)) => format!("DENIED: {reason}"),
            Err(ToolError::UnknownTool(name)) => format!("ERROR: unknown tool {name}"),
            Err(ToolError::InvalidArguments(reason)) => {
                format!("ERROR: invalid arguments: {reason}")
            }
            Err(ToolError::Failed(reason)) => format!("ERROR: {reason}"),
        };
        Message {
            role: Role::Tool,
            content,
            name: Some(result.name),
            tool_call_id: Some(result.call_id),
            tool_calls: Vec::new(),
        }
    }
}

impl Usage {
    /// No tokens.
    pub const ZERO: Usage = Usage {
        input_tokens: 0,
        output_tokens: 0,
        cached_tokens: 0,
    };
}

impl AddAssign<&Usage> for Usage {
    /// Adds every count of `other`.
    fn add_assign(&mut self, other: &Usage) {
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cached_tokens += other.cached_tokens;
    }
}

impl RunError {
    /// The configuration is invalid, for the reason given.
    pub fn invalid_config(reason: impl Into<String>) -> Self {
        RunError::InvalidConfig(reason.into())
    }

    /// The run failed, for the reason given.
    pub fn failed(reason: impl Into<String>) -> Self {
        RunError::Failed(reason.into())
    }
}

impl From<HarnessError> for RunError {
    /// See [`harness_error`].
    fn from(error: HarnessError) -> Self {
        harness_error(error)
    }
}

/// The context of a side completion: `system` as a system message (when
/// not empty), then the session `history` without its system messages (the
/// run's own instructions are replaced, never sent twice).
pub fn context(system: &str, history: &[Message]) -> Vec<Message> {
    let mut messages = Vec::with_capacity(history.len() + 2);
    if !system.is_empty() {
        messages.push(Message::system(system));
    }
    messages.extend(history.iter().filter(|m| m.role != Role::System).cloned());
    messages
}

/// The text of a harness error, for a result the loop shows a model
/// (`ERROR: <text>`) rather than ending the run.
pub fn harness_error_text(error: HarnessError) -> String {
    match harness_error(error) {
        RunError::Harness(text) | RunError::Failed(text) | RunError::InvalidConfig(text) => text,
    }
}

/// The run error for a harness call that failed in a way the architecture
/// does not recover from: [`RunError::Harness`] with text such as
/// `budget exceeded: ...`, `model failed: ...`, `invalid request: ...`,
/// `cancelled` or `unknown agent: ...`.
pub fn harness_error(error: HarnessError) -> RunError {
    RunError::Harness(match error {
        HarnessError::BudgetExceeded(m) => format!("budget exceeded: {m}"),
        HarnessError::ModelFailed(m) => format!("model failed: {m}"),
        HarnessError::InvalidRequest(m) => format!("invalid request: {m}"),
        HarnessError::Cancelled => "cancelled".into(),
        HarnessError::UnknownAgent(m) => format!("unknown agent: {m}"),
    })
}

/// The run's configuration object (`input.config`) parsed as `T`.
///
/// Empty text, `null` and `{}` give `T::default()`; anything else must be
/// a JSON object that deserializes as `T`. Bad JSON, a value that is not an
/// object, or a wrong shape (with
/// `#[serde(deny_unknown_fields)]`, an unknown key too) is
/// [`RunError::InvalidConfig`] carrying serde's message.
pub fn config<T: DeserializeOwned + Default>(input: &RunInput) -> Result<T, RunError> {
    config_from_str(&input.config)
}

/// [`config`] for configuration text on its own.
pub fn config_from_str<T: DeserializeOwned + Default>(text: &str) -> Result<T, RunError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(T::default());
    }
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| RunError::InvalidConfig(e.to_string()))?;
    match &value {
        serde_json::Value::Null => Ok(T::default()),
        serde_json::Value::Object(map) if map.is_empty() => Ok(T::default()),
        serde_json::Value::Object(_) => {
            serde_json::from_str(text).map_err(|e| RunError::InvalidConfig(e.to_string()))
        }
        _ => Err(RunError::InvalidConfig(
            "the configuration must be a JSON object".into(),
        )),
    }
}

/// Emit a progress event of `kind` (such as `plan` or `critique`) with
/// `data` (a JSON object) to the run's stream.
pub fn emit(kind: &str, data: serde_json::Value) {
    harness::emit(&Event {
        kind: kind.to_owned(),
        data: data.to_string(),
    });
}

/// The tools the run may offer the model.
pub fn tools() -> Vec<ToolSpec> {
    harness::tools()
}

/// Ask the model for one completion, outside any [`Run`] (nothing is
/// counted). Prefer [`Run::complete`] or [`Run::complete_request`].
pub fn complete(request: &CompletionRequest) -> Result<Completion, HarnessError> {
    harness::complete(request)
}

/// Run tool calls: the host checks permissions, runs them in parallel and
/// returns one result per call, in the order given. A denied call is a
/// result, never an error.
pub fn call_tools(calls: &[ToolCall]) -> Vec<ToolResult> {
    harness::call_tools(calls)
}

/// Run another agent as a sub-agent with `input` as its prompt; its spend
/// is charged to this run.
pub fn delegate(agent: &AgentRef, input: &str) -> Result<DelegateOutput, HarnessError> {
    harness::delegate(agent, input)
}

/// Run several sub-agents at once, each as [`delegate`] runs one: one
/// result per `(agent, input)` task, in the order given. The host runs at
/// most 16 at once; a task beyond that, or over the run's delegation
/// limit, gets its error in its place while the others run.
pub fn delegate_all(tasks: &[(AgentRef, String)]) -> Vec<Result<DelegateOutput, HarnessError>> {
    let tasks: Vec<Delegation> = tasks
        .iter()
        .map(|(agent, input)| Delegation {
            agent: agent.clone(),
            input: input.clone(),
        })
        .collect();
    harness::delegate_all(&tasks)
}

/// Memories of the current user relevant to `query`, best first, at most
/// `limit`.
pub fn recall(query: &str, limit: u32) -> Vec<Recollection> {
    harness::recall(query, limit)
}

/// Store `text` as a memory of the current user.
pub fn remember(text: &str) -> Result<(), HarnessError> {
    harness::remember(text)
}

/// One run in progress: the conversation the model sees, the messages the
/// run adds to the session, the turns used against the run's cap, and the
/// summed usage and cost. [`Run::finish`] or [`Run::interrupted`] turns it
/// into the [`RunOutput`].
#[derive(Debug, Clone)]
pub struct Run {
    /// The history, then the messages this run added: the new messages are
    /// `conversation[history_len..]`, so each is held once.
    conversation: Vec<Message>,
    history_len: usize,
    turns: u32,
    max_turns: u32,
    usage: Usage,
    cost_usd: f64,
    /// Where in `conversation` the last completion's message sits.
    last_completion: Option<usize>,
    tools: Option<Vec<ToolSpec>>,
}

impl Run {
    /// A run with `history` as its conversation, no new messages yet, and a
    /// cap of `max_turns` model turns.
    pub fn new(history: Vec<Message>, max_turns: u32) -> Self {
        Run {
            history_len: history.len(),
            conversation: history,
            turns: 0,
            max_turns,
            usage: Usage::ZERO,
            cost_usd: 0.0,
            last_completion: None,
            tools: None,
        }
    }

    /// A run started from `input`: the session history, then the seed. A
    /// new session (empty history) with non-empty instructions gets them as
    /// a system message first; then the prompt comes as a user message. A
    /// session with history never gets a second system message. The seed
    /// counts among the new messages.
    pub fn seed(input: &RunInput) -> Self {
        let mut run = Run::new(input.history.clone(), input.max_turns);
        if input.history.is_empty() && !input.instructions.is_empty() {
            run.push(Message::system(input.instructions.clone()));
        }
        run.push(Message::user(input.prompt.clone()));
        run
    }

    /// [`Run::seed`], taking the input: the history, instructions and
    /// prompt are moved into the run instead of copied. For an architecture
    /// that needs nothing else of its input (use [`Run::seed`] to keep it).
    pub fn seed_owned(input: RunInput) -> Self {
        let RunInput {
            instructions,
            history,
            prompt,
            max_turns,
            ..
        } = input;
        let fresh = history.is_empty();
        let mut run = Run::new(history, max_turns);
        if fresh && !instructions.is_empty() {
            run.push(Message::system(instructions));
        }
        run.push(Message::user(prompt));
        run
    }

    /// Add `message` to the conversation and to the run's new messages.
    pub fn push(&mut self, message: Message) {
        self.conversation.push(message);
    }

    /// Ask the model for the next turn of the conversation. `role` names
    /// the caller inside the architecture (for model routing), and `tools`
    /// offers the run's tools ([`tools`], fetched once per run).
    ///
    /// Counts the turn, adds the usage and cost, and pushes the assistant
    /// message; the returned completion carries it too, with any tool
    /// calls. Does not check the turn cap: see [`Run::out_of_turns`].
    pub fn complete(
        &mut self,
        role: Option<&str>,
        tools: bool,
    ) -> Result<Completion, HarnessError> {
        // The request borrows the conversation and the tools by taking
        // them for the call (the binding wants them owned), never by copy.
        let offered = if tools {
            std::mem::take(self.tools.get_or_insert_with(harness::tools))
        } else {
            Vec::new()
        };
        let request = CompletionRequest {
            messages: std::mem::take(&mut self.conversation),
            tools: offered,
            temperature: None,
            max_output_tokens: None,
            output_schema: None,
            role: role.map(str::to_owned),
        };
        let completion = self.complete_request(&request);
        self.conversation = request.messages;
        if tools {
            self.tools = Some(request.tools);
        }
        let completion = completion?;
        self.last_completion = Some(self.conversation.len());
        self.push(completion.message.clone());
        Ok(completion)
    }

    /// Ask the model for one completion of a request of your own (a side
    /// conversation, such as a critic's). Counts the turn and adds the
    /// usage and cost, but leaves the conversation and the new messages
    /// alone.
    pub fn complete_request(
        &mut self,
        request: &CompletionRequest,
    ) -> Result<Completion, HarnessError> {
        let completion = harness::complete(request)?;
        self.turns += 1;
        self.usage += &completion.usage;
        self.cost_usd += completion.cost_usd;
        Ok(completion)
    }

    /// Run `calls` in one harness call (the host runs them in parallel) and
    /// push one observation ([`Message::observation`]) per result, in call
    /// order. Returns the results.
    pub fn call_tools(&mut self, calls: &[ToolCall]) -> Vec<ToolResult> {
        let results = harness::call_tools(calls);
        for result in &results {
            self.push(Message::observation(result.clone()));
        }
        results
    }

    /// ReAct: ask the model (offering tools) and run the tool calls it asks
    /// for, all of a turn in one [`Run::call_tools`], until it answers
    /// without calling a tool. Returns the answer, or `None` when the turn
    /// cap was reached first.
    pub fn react(&mut self, role: Option<&str>) -> Result<Option<String>, HarnessError> {
        while !self.out_of_turns() {
            let completion = self.complete(role, true)?;
            let calls = completion.message.tool_calls;
            if calls.is_empty() {
                return Ok(Some(completion.message.content));
            }
            self.call_tools(&calls);
        }
        Ok(None)
    }

    /// The conversation so far, oldest first (history included).
    pub fn conversation(&self) -> &[Message] {
        &self.conversation
    }

    /// The messages this run has added to the session, in order.
    pub fn new_messages(&self) -> &[Message] {
        &self.conversation[self.history_len..]
    }

    /// Model turns used (every completion counts).
    pub fn turns(&self) -> u32 {
        self.turns
    }

    /// The run's cap on model turns.
    pub fn max_turns(&self) -> u32 {
        self.max_turns
    }

    /// Turns left before the cap.
    pub fn turns_left(&self) -> u32 {
        self.max_turns.saturating_sub(self.turns)
    }

    /// Count a sub-agent's spend (what [`delegate`] returned) as this
    /// run's: its turns count against the cap ([`Run::out_of_turns`]) and,
    /// with its usage and cost, end up in the run's output.
    pub fn add_delegated(&mut self, sub: &DelegateOutput) {
        self.turns = self.turns.saturating_add(sub.turns);
        self.usage += &sub.usage;
        self.cost_usd += sub.cost_usd;
    }

    /// True when the turn cap is reached.
    pub fn out_of_turns(&self) -> bool {
        self.turns >= self.max_turns
    }

    /// Tokens used so far.
    pub fn usage(&self) -> &Usage {
        &self.usage
    }

    /// Cost so far in US dollars.
    pub fn cost_usd(&self) -> f64 {
        self.cost_usd
    }

    /// The text of the last assistant message [`Run::complete`] pushed;
    /// empty before the first.
    pub fn last_text(&self) -> &str {
        self.last_completion
            .and_then(|at| self.conversation.get(at))
            .map_or("", |message| message.content.as_str())
    }

    /// The finished run, with `output` as its answer.
    pub fn finish(self, output: impl Into<String>) -> RunOutput {
        self.output(output.into(), None)
    }

    /// The run stopped early for `reason` (such as `max_turns`); its output
    /// is [`Run::last_text`].
    pub fn interrupted(self, reason: impl Into<String>) -> RunOutput {
        let output = self.last_text().to_owned();
        self.output(output, Some(reason.into()))
    }

    /// The run stopped early for `reason`, with `output` as its best answer.
    pub fn interrupted_with(
        self,
        output: impl Into<String>,
        reason: impl Into<String>,
    ) -> RunOutput {
        self.output(output.into(), Some(reason.into()))
    }

    fn output(mut self, output: String, interrupted: Option<String>) -> RunOutput {
        RunOutput {
            output,
            new_messages: self.conversation.split_off(self.history_len),
            turns: self.turns,
            usage: self.usage,
            cost_usd: self.cost_usd,
            interrupted,
        }
    }
}

/// Exports a type implementing [`Architecture`] as this component's
/// `loom:plugin/architecture@0.1.3`.
///
/// The argument is the type (usually a unit struct). Call it once per
/// component, at the crate root.
///
/// ```no_run
/// use loom_sdk::arch::{Architecture, ArchitectureInfo, Run, RunError, RunInput, RunOutput};
///
/// /// One completion, no tools.
/// struct OneShot;
///
/// impl Architecture for OneShot {
///     fn describe() -> ArchitectureInfo {
///         ArchitectureInfo {
///             name: "one-shot".into(),
///             description: "Answer in one completion".into(),
///             workers: Vec::new(),
///             config_schema: r#"{"type":"object","properties":{}}"#.into(),
///         }
///     }
///
///     fn run(input: RunInput) -> Result<RunOutput, RunError> {
///         let mut run = Run::seed(&input);
///         if run.out_of_turns() {
///             return Ok(run.interrupted("max_turns"));
///         }
///         let answer = run.complete(None, false)?.message.content;
///         Ok(run.finish(answer))
///     }
/// }
///
/// loom_sdk::export_architecture!(OneShot);
/// ```
#[macro_export]
macro_rules! export_architecture {
    ($architecture:ty $(,)?) => {
        impl $crate::arch_bindings::exports::loom::plugin::architecture::Guest for $architecture {
            fn describe() -> $crate::arch::ArchitectureInfo {
                <$architecture as $crate::arch::Architecture>::describe()
            }

            fn run(
                input: $crate::arch::RunInput,
            ) -> ::std::result::Result<$crate::arch::RunOutput, $crate::arch::RunError> {
                <$architecture as $crate::arch::Architecture>::run(input)
            }
        }

        #[doc(hidden)]
        type __LoomExportedArchitecture = $architecture;

        $crate::arch_bindings::__export_architecture_plugin!(
            __LoomExportedArchitecture with_types_in $crate::arch_bindings
        );
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Config {
        rounds: u32,
        phrase: String,
    }

    impl Default for Config {
        fn default() -> Self {
            Config {
                rounds: 2,
                phrase: "DONE".into(),
            }
        }
    }

    #[test]
    fn empty_config_gives_defaults() {
        for text in ["", "  ", "{}", " { } ", "null"] {
            assert_eq!(
                config_from_str::<Config>(text).unwrap(),
                Config::default(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn config_is_parsed_and_errors_are_invalid_config() {
        let config: Config = config_from_str(r#"{"rounds": 5}"#).unwrap();
        assert_eq!(
            config,
            Config {
                rounds: 5,
                phrase: "DONE".into()
            }
        );
        for text in [r#"{"rounds": "x"}"#, r#"{"other": 1}"#, "{nope", "[1]"] {
            match config_from_str::<Config>(text) {
                Err(RunError::InvalidConfig(message)) => assert!(!message.is_empty(), "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        match config_from_str::<Config>(r#"{"other": 1}"#) {
            Err(RunError::InvalidConfig(message)) => {
                assert!(message.contains("unknown field `other`"), "{message}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn observations_render_outcomes() {
        let result = |outcome| ToolResult {
            call_id: "c1".into(),
            name: "calc".into(),
            outcome,
        };
        let ok = Message::observation(result(Ok("42".into())));
        assert!(matches!(ok.role, Role::Tool));
        assert_eq!(ok.content, "42");
        assert_eq!(ok.name.as_deref(), Some("calc"));
        assert_eq!(ok.tool_call_id.as_deref(), Some("c1"));
        let text = |error| Message::observation(result(Err(error))).content;
        assert_eq!(text(ToolError::Denied("no".into())), "DENIED: no");
        assert_eq!(
            text(ToolError::UnknownTool("x".into())),
            "ERROR: unknown tool x"
        );
        assert_eq!(
            text(ToolError::InvalidArguments("bad".into())),
            "ERROR: invalid arguments: bad"
        );
        assert_eq!(text(ToolError::Failed("boom".into())), "ERROR: boom");
    }

    #[test]
    fn seeding_follows_the_history() {
        let input = |history: Vec<Message>, instructions: &str| RunInput {
            instructions: instructions.into(),
            history,
            prompt: "hi".into(),
            config: "{}".into(),
            max_turns: 3,
        };
        let fresh = Run::seed(&input(Vec::new(), "be brief"));
        let roles: Vec<_> = fresh
            .new_messages()
            .iter()
            .map(|m| (m.role, m.content.as_str()))
            .collect();
        assert!(matches!(
            roles.as_slice(),
            [(Role::System, "be brief"), (Role::User, "hi")]
        ));
        assert_eq!(fresh.conversation().len(), 2);
        assert_eq!(fresh.turns_left(), 3);

        let bare = Run::seed(&input(Vec::new(), ""));
        assert_eq!(bare.new_messages().len(), 1);

        let continued = Run::seed(&input(
            vec![Message::system("old"), Message::user("before")],
            "be brief",
        ));
        assert_eq!(continued.new_messages().len(), 1);
        assert_eq!(continued.conversation().len(), 3);
        let output = continued.interrupted("max_turns");
        assert_eq!(output.interrupted.as_deref(), Some("max_turns"));
        assert_eq!(output.output, "");
        assert_eq!(output.turns, 0);
        assert_eq!(output.new_messages.len(), 1);
        assert_eq!(output.new_messages[0].content, "hi");

        // Taking the input seeds the same conversation as borrowing it.
        for (history, instructions) in [
            (Vec::new(), "be brief"),
            (Vec::new(), ""),
            (
                vec![Message::system("old"), Message::user("before")],
                "be brief",
            ),
        ] {
            let borrowed = Run::seed(&input(history.clone(), instructions));
            let owned = Run::seed_owned(input(history, instructions));
            let contents = |run: &Run| -> Vec<(Role, String)> {
                run.conversation()
                    .iter()
                    .map(|m| (m.role, m.content.clone()))
                    .collect()
            };
            assert_eq!(contents(&borrowed), contents(&owned));
            assert_eq!(borrowed.new_messages().len(), owned.new_messages().len());
        }
    }

    #[test]
    fn usage_adds_up() {
        let mut usage = Usage::ZERO;
        usage += &Usage {
            input_tokens: 1,
            output_tokens: 2,
            cached_tokens: 3,
        };
        usage += &Usage {
            input_tokens: 10,
            output_tokens: 20,
            cached_tokens: 30,
        };
        assert_eq!(
            (usage.input_tokens, usage.output_tokens, usage.cached_tokens),
            (11, 22, 33)
        );
    }
}
