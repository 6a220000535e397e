//! `draft-check`: a custom Loom architecture, the worked example of the
//! README's "Writing an architecture".
//!
//! An architecture is the agent loop. This crate compiles to a WebAssembly
//! component (`cargo build --target wasm32-wasip2 --release`) that Loom
//! loads from a plugin directory and runs whenever an agent names it
//! (`loom run --arch draft-check`, `architecture = "draft-check"`). Like
//! every architecture it reaches the world only through the host's harness,
//! so the tenant's budgets, permissions and limits hold for everything it
//! does.
//!
//! # The loop
//!
//! 1. **Draft.** The session is seeded (for a new session the agent's
//!    instructions as a system message; then the prompt) and the model
//!    answers in role `drafter`, offered the run's tools. The tool calls of
//!    one turn run together in one `call-tools`; the model reads their
//!    results and answers or calls more. At most `max_tool_steps` turns of
//!    a draft run tools: later tool calls are not run but answered with an
//!    error telling the model to answer with what it has.
//! 2. **Check.** A checker reviews the draft against the question: a
//!    completion in role `checker` without tools or, with `checker_agent`,
//!    a sub-agent started through `delegate`. The first line of its reply
//!    is the verdict: `APPROVED`, or `REVISE: <what is wrong>` (see
//!    `Verdict::parse` for what else is understood).
//! 3. **Revise.** On `REVISE` the feedback goes into the drafter's
//!    conversation as a user message and step 1 runs again, tools
//!    included. Steps 2 and 3 repeat for at most `max_revisions`
//!    revisions.
//!
//! # How it ends
//!
//! * `APPROVED`: the approved answer.
//! * A reply with no verdict (`unclear`): the answer as it stands, since
//!   the checker named nothing to fix. The offline `echo` model, which
//!   answers `Echo: <the last user message>`, ends here: one draft, one
//!   check, two turns.
//! * `REVISE` with no revision left: the last answer (not interrupted).
//! * `max_turns` spent (every completion counts, and so do a delegated
//!   checker's turns): interrupted, reason `max_turns`, with the best
//!   answer so far.
//! * A budget or rate limit stops a harness call: interrupted with the
//!   best answer so far (the host names the cap). Any other harness error
//!   fails the run.
//!
//! The run adds to the session the seed, the drafter's turns (assistant and
//! tool messages) and the checker's feedback (user messages), so the last
//! assistant message is the answer. The checker's own completions stay out
//! of the session.
//!
//! # Configuration
//!
//! A JSON object, checked by the host against `config_schema` before the
//! run starts:
//!
//! * `max_revisions` (integer, 0 to 5, default 2): revisions at most; 0
//!   checks the draft once and returns it whatever the verdict.
//! * `max_tool_steps` (integer, 0 to 20, default 4): turns per draft that
//!   may run tools.
//! * `checker_agent` (string or null, default null): who checks. Null: a
//!   `checker` completion. `agent:NAME`: the named agent `[agents.NAME]` of
//!   `loom.toml` (its own model and architecture; the checker's
//!   instructions are added to its own). Any other
//!   string: an architecture name, run as a sub-agent with the checker's
//!   instructions and the run's tools (`react` may verify with tools).
//!
//! # Events
//!
//! * `draft`: `{"revision": n, "text": <the first 200 characters>}` after
//!   each draft (revision 0 is the first draft).
//! * `verdict`: `{"revision": n, "verdict": "approved" | "revise" |
//!   "unclear", "feedback": <the first 200 characters, or null>}` after
//!   each check.

use loom_sdk::arch::{
    self, AgentRef, Architecture, ArchitectureInfo, CompletionRequest, DelegateOutput,
    HarnessError, Message, Run, RunError, RunInput, RunOutput, ToolCall, ToolError, ToolResult,
    Usage, WorkerRole,
};
use serde::Deserialize;
use serde_json::json;

/// The name agents choose this architecture by.
const NAME: &str = "draft-check";

/// The role of the completions that draft and revise the answer (route it
/// to a model with `[agent.role_models] drafter = "..."`).
const DRAFTER: &str = "drafter";

/// The role of the checker's completions.
const CHECKER: &str = "checker";

/// The largest `max_revisions` accepted.
const MAX_REVISIONS: u32 = 5;

/// The largest `max_tool_steps` accepted.
const MAX_TOOL_STEPS: u32 = 20;

/// Characters of a text kept in an event.
const EXCERPT_CHARS: usize = 200;

/// The checker's instructions.
const CHECKER_SYSTEM: &str = "You are a checker. You review a draft answer to a question: is it \
correct, complete and does it answer what was asked? You do not rewrite it.";

/// The architecture. [`loom_sdk::export_architecture!`] at the end of this
/// file exports it as the component's `loom:plugin/architecture`.
struct DraftCheck;

impl Architecture for DraftCheck {
    /// What Loom shows in `loom plugins list` and checks configurations
    /// against.
    fn describe() -> ArchitectureInfo {
        let role = |name: &str, description: &str| WorkerRole {
            name: name.into(),
            description: description.into(),
        };
        ArchitectureInfo {
            name: NAME.into(),
            description: "Draft an answer with tools, let a checker review it against the \
                          question, and revise until it is approved"
                .into(),
            workers: vec![
                role(DRAFTER, "Drafts and revises the answer, calling tools"),
                role(CHECKER, "Approves the draft or says what to revise"),
            ],
            config_schema: config_schema().to_string(),
        }
    }

    /// The loop described in the crate documentation.
    fn run(input: RunInput) -> Result<RunOutput, RunError> {
        let config = parse_config(&input.config)?;
        let mut state = State::new(&input);
        let mut answer: Option<String> = None;
        let mut revision = 0;
        loop {
            // 1. Draft (or revise).
            let drafted = match draft(&mut state, &config) {
                Ok(drafted) => drafted,
                Err(error) => return state.stopped(answer, error),
            };
            let Some(text) = drafted else {
                return Ok(state.interrupt(answer, "max_turns"));
            };
            arch::emit(
                "draft",
                json!({ "revision": revision, "text": excerpt(&text) }),
            );
            answer = Some(text.clone());

            // 2. Check.
            if state.out_of_turns() {
                return Ok(state.interrupt(answer, "max_turns"));
            }
            let reply = match check(&mut state, &config, &input, &text) {
                Ok(reply) => reply,
                Err(error) => return state.stopped(answer, error),
            };
            let verdict = Verdict::parse(&reply);
            arch::emit(
                "verdict",
                json!({
                    "revision": revision,
                    "verdict": verdict.name(),
                    "feedback": verdict.feedback().map(excerpt),
                }),
            );

            // 3. Revise, or finish.
            match verdict {
                Verdict::Revise(feedback) if revision < config.max_revisions => {
                    state.run.push(Message::user(revision_prompt(&feedback)));
                    revision += 1;
                }
                _ => return Ok(state.finish(text)),
            }
        }
    }
}

loom_sdk::export_architecture!(DraftCheck);

/// The configuration object (`[agent.architecture_config]` in `loom.toml`,
/// `AgentBuilder::architecture_config` in Rust).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    /// Revisions at most.
    max_revisions: u32,
    /// Turns per draft that may run tools.
    max_tool_steps: u32,
    /// Who checks: `None` for a `checker` completion, else the
    /// architecture of an agent-ref (`agent:NAME` for a named agent).
    checker_agent: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_revisions: 2,
            max_tool_steps: 4,
            checker_agent: None,
        }
    }
}

/// The JSON Schema of [`Config`], which `describe` declares. The host
/// checks every configuration against it before the run starts, so an
/// unknown key or a value out of range is refused with an error naming
/// this architecture and no model is called.
fn config_schema() -> serde_json::Value {
    let defaults = Config::default();
    json!({
        "type": "object",
        "properties": {
            "max_revisions": {
                "type": "integer",
                "minimum": 0,
                "maximum": MAX_REVISIONS,
                "default": defaults.max_revisions,
                "description": "Revisions at most after the first draft",
            },
            "max_tool_steps": {
                "type": "integer",
                "minimum": 0,
                "maximum": MAX_TOOL_STEPS,
                "default": defaults.max_tool_steps,
                "description": "Turns per draft that may run tools",
            },
            "checker_agent": {
                "type": ["string", "null"],
                "minLength": 1,
                "default": null,
                "description": "null: a `checker` completion; `agent:NAME` or an architecture \
                                name: a sub-agent through delegate",
            },
        },
        "additionalProperties": false,
    })
}

/// Parse the configuration text and check what the schema checks too (a
/// component can also be run by a host that did not check it).
fn parse_config(text: &str) -> Result<Config, RunError> {
    let config: Config = arch::config_from_str(text)?;
    if config.max_revisions > MAX_REVISIONS {
        return Err(RunError::invalid_config(format!(
            "max_revisions must be at most {MAX_REVISIONS}, not {}",
            config.max_revisions
        )));
    }
    if config.max_tool_steps > MAX_TOOL_STEPS {
        return Err(RunError::invalid_config(format!(
            "max_tool_steps must be at most {MAX_TOOL_STEPS}, not {}",
            config.max_tool_steps
        )));
    }
    if config
        .checker_agent
        .as_deref()
        .is_some_and(|name| name.trim().is_empty())
    {
        return Err(RunError::invalid_config(
            "checker_agent must name an agent or an architecture (or be null)",
        ));
    }
    Ok(config)
}

/// A run in progress: the SDK's [`Run`] (conversation, new messages, turns,
/// usage and cost of its own completions) plus what delegated checkers
/// spent, which counts against `max_turns` and is reported with the run's.
struct State {
    /// The drafter's conversation and the run's own completions.
    run: Run,
    /// The run's cap on turns.
    max_turns: u32,
    /// Turns of delegated checkers.
    delegated_turns: u32,
    /// Tokens of delegated checkers.
    delegated_usage: Usage,
    /// Cost of delegated checkers in US dollars.
    delegated_cost_usd: f64,
}

impl State {
    /// The state at the start of a run: the session seeded with the
    /// instructions (new sessions only) and the prompt.
    fn new(input: &RunInput) -> Self {
        State {
            run: Run::seed(input),
            max_turns: input.max_turns,
            delegated_turns: 0,
            delegated_usage: Usage::ZERO,
            delegated_cost_usd: 0.0,
        }
    }

    /// True when the run's completions and the delegated turns together
    /// reach `max_turns`.
    fn out_of_turns(&self) -> bool {
        self.run.turns().saturating_add(self.delegated_turns) >= self.max_turns
    }

    /// Count a delegated checker's spend.
    fn add_delegated(&mut self, output: &DelegateOutput) {
        self.delegated_turns = self.delegated_turns.saturating_add(output.turns);
        self.delegated_usage += &output.usage;
        self.delegated_cost_usd += output.cost_usd;
    }

    /// The finished run, with `answer` as its output.
    fn finish(self, answer: String) -> RunOutput {
        let delegated = self.delegated();
        with_delegated(self.run.finish(answer), delegated)
    }

    /// The run stopped early for `reason`, with the best answer so far (or,
    /// before the first draft, the drafter's last text).
    fn interrupt(self, answer: Option<String>, reason: &str) -> RunOutput {
        let delegated = self.delegated();
        let output = match answer {
            Some(answer) => self.run.interrupted_with(answer, reason),
            None => self.run.interrupted(reason),
        };
        with_delegated(output, delegated)
    }

    /// A harness call failed. A budget or rate limit is an expected end:
    /// the run ends interrupted with the best answer so far, and the host
    /// reports which cap stopped it (`budget:<key>`). Anything else (the
    /// model failed, the run was cancelled, an unknown checker agent) fails
    /// the run with the SDK's text for the error.
    fn stopped(self, answer: Option<String>, error: HarnessError) -> Result<RunOutput, RunError> {
        match error {
            HarnessError::BudgetExceeded(_) => Ok(self.interrupt(answer, "budget_exceeded")),
            other => Err(arch::harness_error(other)),
        }
    }

    /// What delegated checkers spent: (turns, usage, cost).
    fn delegated(&self) -> (u32, Usage, f64) {
        (
            self.delegated_turns,
            self.delegated_usage,
            self.delegated_cost_usd,
        )
    }
}

/// `output` with the delegated checkers' `(turns, usage, cost)` added.
fn with_delegated(mut output: RunOutput, (turns, usage, cost_usd): (u32, Usage, f64)) -> RunOutput {
    output.turns = output.turns.saturating_add(turns);
    output.usage += &usage;
    output.cost_usd += cost_usd;
    output
}

/// Step 1: the drafter answers, running the tools it asks for, as in
/// ReAct. Returns the answer, or `None` when the turns ran out first.
fn draft(state: &mut State, config: &Config) -> Result<Option<String>, HarnessError> {
    let mut tool_steps = 0;
    loop {
        if state.out_of_turns() {
            return Ok(None);
        }
        // Counts the turn, adds usage and cost, pushes the assistant
        // message (with its tool calls) to the conversation.
        let completion = state.run.complete(Some(DRAFTER), true)?;
        let calls = completion.message.tool_calls;
        if calls.is_empty() {
            return Ok(Some(completion.message.content));
        }
        if tool_steps < config.max_tool_steps {
            tool_steps += 1;
            // One harness call: the host checks permissions and runs the
            // calls in parallel; a denial or a tool error is a result the
            // model reads, never the end of the run.
            state.run.call_tools(&calls);
        } else {
            // Every call must be answered before the next completion.
            for call in calls {
                state
                    .run
                    .push(Message::observation(not_run(call, config.max_tool_steps)));
            }
        }
    }
}

/// The result for a tool call beyond `max_tool_steps`, which is not run.
fn not_run(call: ToolCall, max_tool_steps: u32) -> ToolResult {
    ToolResult {
        call_id: call.id,
        name: call.name,
        outcome: Err(ToolError::Failed(format!(
            "not run: this draft may run tools in {max_tool_steps} turn(s) only; answer with \
             what you have"
        ))),
    }
}

/// Step 2: the checker's reply on `draft`.
fn check(
    state: &mut State,
    config: &Config,
    input: &RunInput,
    draft: &str,
) -> Result<String, HarnessError> {
    let request = check_prompt(&input.prompt, draft);
    match &config.checker_agent {
        None => {
            // A side conversation: the checker's instructions, the session
            // history (for context), then the request. It is not part of the
            // drafter's conversation nor of the session.
            let mut messages = arch::context(CHECKER_SYSTEM, &input.history);
            messages.push(Message::user(request));
            let completion = state.run.complete_request(&CompletionRequest {
                messages,
                tools: Vec::new(),
                temperature: None,
                max_output_tokens: None,
                output_schema: None,
                role: Some(CHECKER.into()),
            })?;
            Ok(completion.message.content)
        }
        Some(agent) => {
            let checker = AgentRef {
                architecture: agent.clone(),
                instructions: CHECKER_SYSTEM.into(),
                tools: Vec::new(),
                config: None,
            };
            // A sub-agent of the same user in a sandbox of its own; its
            // spend is charged to this run's budgets by the host.
            let output = arch::delegate(&checker, &request)?;
            state.add_delegated(&output);
            Ok(output.output)
        }
    }
}

/// The checker's request: the question, the draft and the verdict format.
fn check_prompt(question: &str, draft: &str) -> String {
    format!(
        "Question:\n{question}\n\nDraft answer:\n{draft}\n\nDoes the draft answer the question \
         correctly and completely? Reply with APPROVED on the first line if it does. Otherwise \
         reply with REVISE: on the first line, followed by what is wrong and what to change."
    )
}

/// The user message that asks the drafter for a revision.
fn revision_prompt(feedback: &str) -> String {
    format!(
        "A checker reviewed your answer and asks for a revision:\n\n{feedback}\n\nWrite the \
         complete corrected answer to the original question."
    )
}

/// What the checker decided.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    /// The draft is approved.
    Approved,
    /// The draft needs a revision, for the feedback given.
    Revise(String),
    /// The reply holds no verdict (the answer stands).
    Unclear,
}

impl Verdict {
    /// Read a checker's reply leniently, from its first non-empty line:
    ///
    /// * Markdown a model may wrap it in (`**`, `` ` ``, `#`, `>`, quotes)
    ///   and a `Verdict:` label are skipped, and case is ignored.
    /// * `APPROVE...` (`APPROVED`, `Approve.`) approves.
    /// * `REVISE`, `REJECT` or `NOT APPROVED` asks for a revision; the
    ///   feedback is the rest of the line after a `:` or `-`, and the
    ///   following lines.
    /// * Anything else is [`Verdict::Unclear`].
    fn parse(reply: &str) -> Verdict {
        let mut lines = reply.lines().map(str::trim).skip_while(|l| l.is_empty());
        let Some(first) = lines.next() else {
            return Verdict::Unclear;
        };
        let decoration = |c: char| matches!(c, '*' | '_' | '`' | '#' | '>' | '"' | '\'');
        let head = first.trim_start_matches(|c: char| decoration(c) || c.is_whitespace());
        let head = strip_prefix_ignore_case(head, "verdict")
            .map(|rest| {
                rest.trim_start_matches(|c: char| c == ':' || decoration(c) || c.is_whitespace())
            })
            .unwrap_or(head);
        if strip_prefix_ignore_case(head, "approve").is_some() {
            return Verdict::Approved;
        }
        let Some(rest) = ["revise", "reject", "not approved"]
            .iter()
            .find_map(|word| strip_prefix_ignore_case(head, word))
        else {
            return Verdict::Unclear;
        };
        // `REVISE: x`, `Revise - x`, `REJECTED: x`, `**REVISE**: x`.
        let rest = rest.trim_start_matches(|c: char| c.is_alphabetic());
        let rest = rest.trim_start_matches(|c: char| {
            matches!(c, ':' | '-' | '.') || decoration(c) || c.is_whitespace()
        });
        let mut feedback = rest.to_owned();
        for line in lines {
            feedback.push('\n');
            feedback.push_str(line);
        }
        let feedback = feedback.trim();
        Verdict::Revise(if feedback.is_empty() {
            "The checker asked for a revision without saying what to change.".to_owned()
        } else {
            feedback.to_owned()
        })
    }

    /// The verdict's name in the `verdict` event.
    fn name(&self) -> &'static str {
        match self {
            Verdict::Approved => "approved",
            Verdict::Revise(_) => "revise",
            Verdict::Unclear => "unclear",
        }
    }

    /// The feedback of a revision.
    fn feedback(&self) -> Option<&str> {
        match self {
            Verdict::Revise(feedback) => Some(feedback),
            _ => None,
        }
    }
}

/// `text` without `prefix` when it starts with it, ignoring ASCII case.
fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        text.get(prefix.len()..)
    } else {
        None
    }
}

/// The first [`EXCERPT_CHARS`] characters of `text`, for an event.
fn excerpt(text: &str) -> String {
    text.chars().take(EXCERPT_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_checks() {
        assert_eq!(parse_config("").unwrap(), Config::default());
        assert_eq!(parse_config("{}").unwrap(), Config::default());
        assert_eq!(
            parse_config(r#"{"max_revisions": 0, "checker_agent": "agent:reviewer"}"#).unwrap(),
            Config {
                max_revisions: 0,
                max_tool_steps: 4,
                checker_agent: Some("agent:reviewer".into()),
            }
        );
        for bad in [
            r#"{"max_revisions": 6}"#,
            r#"{"max_tool_steps": 21}"#,
            r#"{"max_revisions": -1}"#,
            r#"{"max_revisions": "2"}"#,
            r#"{"checker_agent": " "}"#,
            r#"{"revisions": 2}"#,
            "{",
            "[]",
        ] {
            assert!(
                matches!(parse_config(bad), Err(RunError::InvalidConfig(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn schema_matches_the_defaults_and_limits() {
        let schema = config_schema();
        let properties = &schema["properties"];
        let defaults = Config::default();
        assert_eq!(
            properties["max_revisions"]["default"],
            json!(defaults.max_revisions)
        );
        assert_eq!(properties["max_revisions"]["maximum"], json!(MAX_REVISIONS));
        assert_eq!(
            properties["max_tool_steps"]["default"],
            json!(defaults.max_tool_steps)
        );
        assert_eq!(
            properties["max_tool_steps"]["maximum"],
            json!(MAX_TOOL_STEPS)
        );
        assert_eq!(properties["checker_agent"]["default"], json!(null));
        assert_eq!(schema["additionalProperties"], json!(false));
    }

    #[test]
    fn verdicts_are_read_leniently() {
        assert_eq!(Verdict::parse("APPROVED"), Verdict::Approved);
        assert_eq!(
            Verdict::parse("\n  **Approved.**\nLooks good."),
            Verdict::Approved
        );
        assert_eq!(Verdict::parse("Verdict: approve"), Verdict::Approved);
        assert_eq!(
            Verdict::parse("REVISE: 6*7 is 42, not 43."),
            Verdict::Revise("6*7 is 42, not 43.".into())
        );
        assert_eq!(
            Verdict::parse("**REVISE**\n- the sum is wrong\n- say the unit"),
            Verdict::Revise("- the sum is wrong\n- say the unit".into())
        );
        assert_eq!(
            Verdict::parse("Not approved - missing the unit"),
            Verdict::Revise("missing the unit".into())
        );
        assert_eq!(
            Verdict::parse("Rejected: wrong"),
            Verdict::Revise("wrong".into())
        );
        assert!(matches!(Verdict::parse("REVISE"), Verdict::Revise(f) if !f.is_empty()));
        for none in [
            "",
            "  \n",
            "Echo: Question:\nWhat is 6*7?",
            "Looks fine",
            "é",
        ] {
            assert_eq!(Verdict::parse(none), Verdict::Unclear, "{none:?}");
        }
    }

    #[test]
    fn prompts_hold_what_the_model_needs() {
        let check = check_prompt("What is 6*7?", "43");
        assert!(check.starts_with("Question:\nWhat is 6*7?"), "{check}");
        assert!(check.contains("Draft answer:\n43"), "{check}");
        assert!(
            check.contains("APPROVED") && check.contains("REVISE:"),
            "{check}"
        );
        // An echo of the request is no verdict: the echo model completes.
        assert_eq!(Verdict::parse(&format!("Echo: {check}")), Verdict::Unclear);
        assert!(revision_prompt("the sum is wrong").contains("the sum is wrong"));
    }

    #[test]
    fn tool_calls_beyond_the_cap_are_answered_not_run() {
        let result = not_run(
            ToolCall {
                id: "c1".into(),
                name: "calculate".into(),
                arguments: "{}".into(),
            },
            2,
        );
        let message = Message::observation(result);
        assert_eq!(message.tool_call_id.as_deref(), Some("c1"));
        assert!(
            message.content.starts_with("ERROR: not run"),
            "{}",
            message.content
        );
    }

    #[test]
    fn excerpts_cut_on_characters() {
        assert_eq!(excerpt("short"), "short");
        assert_eq!(excerpt(&"é".repeat(500)).chars().count(), EXCERPT_CHARS);
    }
}
