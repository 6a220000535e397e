//! Blackboard: a controller completion picks, round by round, which
//! configured expert (a sub-agent) contributes next to a shared board, and
//! gives the final answer once the board is enough.
//!
//! 1. **Round.** One completion with role `controller` and no tools sees a
//!    controller system message (then the agent's instructions), the
//!    session's history (its non-system messages) and one user message
//!    holding the task, the experts (`name: description`, in name order),
//!    the round (`Round r of n`) and the board, each entry as `[expert]
//!    contribution` with the contribution cut to its first 4,000
//!    characters. It replies with JSON `{"expert": "name", "focus": "..."}`
//!    or `{"final": "answer"}`, read leniently (also inside a code fence or
//!    prose); a reply that is neither is the final answer as it stands.
//! 2. **Contribution.** The chosen expert runs through `delegate` with its
//!    agent-ref and the input: the task, then `Board so far:` and the
//!    board (cut as above, or `(empty)`), then `Your focus: <focus>` (left
//!    out when the focus is missing or empty). Its output is appended to
//!    the board as `[expert] output`. An unknown expert gives the entry
//!    `ERROR: no expert named X (experts: a, b)` (a reply without an
//!    `expert` string an `ERROR: ...` too), a failed delegation `ERROR:
//!    <reason>`, and neither fails the run — except a cancelled run or an
//!    exceeded budget, which fail it (`harness`). An interrupted expert's
//!    entry is its output after `(interrupted: <reason>)`.
//! 3. **Final.** `{"final": ...}` (or an unreadable reply) ends the run
//!    with that answer. After `max_rounds` rounds without one, a last
//!    controller completion sees the whole board (never cut) and is asked
//!    for the final answer; its `final`, else its whole reply, is the
//!    output.
//!
//! Every controller completion counts as a turn against `max-turns`, and
//! so do the experts' turns (their usage and cost are added to the run's).
//! The turn cap is checked before each completion and each delegation:
//! when it is reached, the run ends interrupted with reason `max_turns`
//! and the latest board entry's full text (empty before the first) as
//! output.
//!
//! The run adds to the session the seed (instructions for a new session,
//! then the prompt) and one assistant message with the output (when it is
//! not empty). The controller's replies and the board stay out of it.
//!
//! # Configuration
//!
//! * `experts` (object, 1 to 16 entries; default: one inline ReAct expert named `assistant` with all of the run's tools): expert name (1 to 64
//!   characters of `A-Z a-z 0-9 _ -`) to expert. An expert is
//!   `{"description": "...", "agent": "NAME"}` (the named agent
//!   `agent:NAME` of `loom.toml`) or `{"description": "...",
//!   "architecture": "react", "instructions": "...", "tools": [...],
//!   "config": {...}}` (an inline agent; every key but `description`
//!   optional, `architecture` defaulting to `react`). Giving `agent` with
//!   any of the inline keys is refused.
//!   The schema marks it `"x-loom-members": true`, so an agent's
//!   `workers` (named agents) fill it.
//! * `max_rounds` (integer, 1 to 10, default 3): contribution rounds at
//!   most.
//!
//! Unknown keys are refused (`invalid-config`).
//!
//! # Events
//!
//! * `round` — `{"round": <r>}` as each round starts (from 1).
//! * `chosen` — `{"round": <r>, "expert": <name>, "focus": <excerpt>}`
//!   when the controller picks an expert (the focus's first 200
//!   characters).
//! * `contribution` — `{"round": <r>, "expert": <name>, "ok": <bool>}`
//!   after the entry is on the board (`ok` false for an unknown expert, a
//!   failed delegation or an interrupted expert).
//! * `final` — `{"round": <r>, "forced": <bool>}` when the final answer is
//!   given (`forced` true for the last completion after `max_rounds`, with
//!   `round` then `max_rounds`).

use std::collections::BTreeMap;

use loom_sdk::arch::{
    self, AgentRef, Architecture, ArchitectureInfo, CompletionRequest, HarnessError, Message, Run,
    RunError, RunInput, RunOutput,
};
use loom_sdk::team::{self, MemberSpec};
use serde::Deserialize;

/// The JSON Schema of the configuration.
const CONFIG_SCHEMA: &str = r#"{"type":"object","properties":{"experts":{"type":"object","x-loom-members":true,"minProperties":1,"maxProperties":16,"propertyNames":{"pattern":"^[A-Za-z0-9_-]{1,64}$"},"additionalProperties":{"type":"object","properties":{"description":{"type":"string","minLength":1},"agent":{"type":"string","pattern":"^[A-Za-z0-9_-]{1,64}$"},"architecture":{"type":"string","pattern":"^[A-Za-z0-9_-]{1,64}$","default":"react"},"instructions":{"type":"string","default":""},"tools":{"type":"array","items":{"type":"string"},"default":[]},"config":{"type":["object","null"],"default":null}},"required":["description"],"additionalProperties":false}},"max_rounds":{"type":"integer","minimum":1,"maximum":10,"default":3}},"additionalProperties":false}"#;

/// The longest excerpt in an event, in characters.
const EXCERPT_CHARS: usize = 200;

/// The longest board entry in a round's prompt or an expert's input, in
/// characters.
const ENTRY_CHARS: usize = 4_000;

/// Experts at most.
const MAX_EXPERTS: usize = 16;

/// The controller's system message, before the agent's instructions.
const CONTROLLER_SYSTEM: &str = "You are the controller of a blackboard. You do not do the \
work yourself: experts contribute to a shared board one at a time, and you pick who \
contributes next and on what, until the board is enough to write the final answer.";

/// The configuration object as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawConfig {
    experts: BTreeMap<String, MemberSpec>,
    max_rounds: u32,
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            experts: BTreeMap::new(),
            max_rounds: 3,
        }
    }
}

/// A checked expert: its name, description and agent-ref.
#[derive(Debug, Clone)]
struct Expert {
    name: String,
    description: String,
    agent: AgentRef,
}

/// The checked configuration.
#[derive(Debug, Clone)]
struct Config {
    /// The experts, in name order.
    experts: Vec<Expert>,
    /// Contribution rounds at most.
    max_rounds: u32,
}

/// Parse and check the configuration text.
fn parse_config(text: &str) -> Result<Config, RunError> {
    let mut raw: RawConfig = arch::config_from_str(text)?;
    if raw.experts.is_empty() {
        raw.experts = team::default_members();
    }
    if raw.experts.len() > MAX_EXPERTS {
        return Err(RunError::invalid_config(format!(
            "experts must hold 1 to {MAX_EXPERTS} experts, not {}",
            raw.experts.len()
        )));
    }
    if !(1..=10).contains(&raw.max_rounds) {
        return Err(RunError::invalid_config(format!(
            "max_rounds must be from 1 to 10, not {}",
            raw.max_rounds
        )));
    }
    let mut experts = Vec::with_capacity(raw.experts.len());
    for (name, spec) in raw.experts {
        let description = spec.description.trim().to_owned();
        let agent = team::agent_ref("expert", &name, spec).map_err(RunError::invalid_config)?;
        experts.push(Expert {
            name,
            description,
            agent,
        });
    }
    Ok(Config {
        experts,
        max_rounds: raw.max_rounds,
    })
}

/// The experts' names, comma-separated.
fn names(experts: &[Expert]) -> String {
    experts
        .iter()
        .map(|e| e.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The first `chars` characters of `text`.
fn cut(text: &str, chars: usize) -> String {
    text.chars().take(chars).collect()
}

/// What the controller replied.
#[derive(Debug, Clone, PartialEq)]
enum Decision {
    /// Let this expert (`None` when the reply has no `expert` string)
    /// contribute with this focus (possibly empty).
    Choose {
        expert: Option<String>,
        focus: String,
    },
    /// The final answer.
    Final(String),
}

/// Read the controller's `reply`: a JSON object with `final` (a string, or
/// any other value as JSON text) or `expert` (with an optional string
/// `focus`); anything else is the final answer as it stands.
fn decide(reply: &str) -> Decision {
    let Some(map) = team::json_object(reply) else {
        return Decision::Final(reply.trim().to_owned());
    };
    if let Some(answer) = map.get("final") {
        return Decision::Final(match answer {
            serde_json::Value::String(text) => text.clone(),
            other => other.to_string(),
        });
    }
    let Some(expert) = map.get("expert") else {
        return Decision::Final(reply.trim().to_owned());
    };
    Decision::Choose {
        expert: expert.as_str().map(|s| s.trim().to_owned()),
        focus: map
            .get("focus")
            .and_then(|f| f.as_str())
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
    }
}

/// One board entry.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    expert: String,
    /// The expert's full output, or `ERROR: ...`.
    text: String,
}

impl Entry {
    /// `[expert] text`, the text cut to `limit` characters when given.
    fn render(&self, limit: Option<usize>) -> String {
        let text = match limit {
            Some(limit) if self.text.chars().count() > limit => {
                format!("{} [... cut]", cut(&self.text, limit))
            }
            _ => self.text.clone(),
        };
        format!("[{}] {}", self.expert, text)
    }
}

/// The board's entries, one after another (cut to `limit` when given), or
/// `(empty)`.
fn board_text(board: &[Entry], limit: Option<usize>) -> String {
    if board.is_empty() {
        return "(empty)".into();
    }
    board
        .iter()
        .map(|e| e.render(limit))
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// The entry text for an unknown expert.
fn unknown_expert(name: &str, experts: &[Expert]) -> String {
    format!(
        "ERROR: no expert named {name} (experts: {})",
        names(experts)
    )
}

/// The experts block of a prompt.
fn experts_text(experts: &[Expert]) -> String {
    let lines = experts
        .iter()
        .map(|e| format!("- {}: {}", e.name, e.description))
        .collect::<Vec<_>>()
        .join("\n");
    format!("Experts:\n{lines}")
}

/// The controller's request text of round `round` of `rounds`.
fn round_text(task: &str, experts: &[Expert], board: &[Entry], round: u32, rounds: u32) -> String {
    format!(
        "Task:\n{task}\n\n{}\n\nRound {round} of {rounds}.\n\nBoard:\n{}\n\nReply with JSON \
         only: either {{\"expert\": \"<name>\", \"focus\": \"<what to work on>\"}} to let one \
         expert contribute to the board next, or {{\"final\": \"<answer>\"}} when the board is \
         enough to answer the task.",
        experts_text(experts),
        board_text(board, Some(ENTRY_CHARS)),
    )
}

/// The controller's request text after `max_rounds`: the whole board.
fn final_text(task: &str, experts: &[Expert], board: &[Entry]) -> String {
    format!(
        "Task:\n{task}\n\n{}\n\nBoard:\n{}\n\nNo more contributions are possible. Write the \
         final answer to the task from the board above: reply with {{\"final\": \"<answer>\"}} \
         or with the answer as plain text.",
        experts_text(experts),
        board_text(board, None),
    )
}

/// The input of an expert.
fn expert_text(task: &str, board: &[Entry], focus: &str) -> String {
    let mut text = format!(
        "{task}\n\nBoard so far:\n{}",
        board_text(board, Some(ENTRY_CHARS))
    );
    if !focus.is_empty() {
        text.push_str("\n\nYour focus: ");
        text.push_str(focus);
    }
    text
}

/// The controller's messages: the system message, the history without its
/// system messages, then the request.
fn messages(instructions: &str, history: &[Message], text: String) -> Vec<Message> {
    let system = if instructions.is_empty() {
        CONTROLLER_SYSTEM.to_owned()
    } else {
        format!("{CONTROLLER_SYSTEM}\n\n{instructions}")
    };
    let mut messages = arch::context(&system, history);
    messages.push(Message::user(text));
    messages
}

/// The run ended with `output` (interrupted for `max_turns` when
/// `interrupted`), adding it to the session when it is not empty (the
/// experts' spend is already the run's: `Run::add_delegated`).
fn end(mut run: Run, output: String, interrupted: bool) -> RunOutput {
    if !output.is_empty() {
        run.push(Message::assistant(output.clone()));
    }
    if interrupted {
        run.interrupted_with(output, "max_turns")
    } else {
        run.finish(output)
    }
}

/// The latest board entry's full text, or empty.
fn latest(board: &[Entry]) -> String {
    board.last().map(|e| e.text.clone()).unwrap_or_default()
}

struct Blackboard;

impl Architecture for Blackboard {
    fn describe() -> ArchitectureInfo {
        ArchitectureInfo {
            name: "blackboard".into(),
            description: "A controller completion picks, round by round, which configured \
                          expert (a named agent or an inline architecture, run as a \
                          sub-agent) contributes next to a shared board and on what, then \
                          writes the final answer from the board (no tools of its own)"
                .into(),
            workers: Vec::new(),
            config_schema: CONFIG_SCHEMA.into(),
        }
    }

    fn run(input: RunInput) -> Result<RunOutput, RunError> {
        let config = parse_config(&input.config)?;
        let mut run = Run::seed(&input);
        let task = input.prompt.as_str();
        let ask = |run: &mut Run, text: String| {
            run.complete_request(&CompletionRequest {
                messages: messages(&input.instructions, &input.history, text),
                tools: Vec::new(),
                temperature: None,
                max_output_tokens: None,
                output_schema: None,
                role: Some("controller".into()),
            })
            .map(|completion| completion.message.content)
        };
        let mut board: Vec<Entry> = Vec::new();

        for round in 1..=config.max_rounds {
            if run.out_of_turns() {
                return Ok(end(run, latest(&board), true));
            }
            arch::emit("round", serde_json::json!({ "round": round }));
            let text = round_text(task, &config.experts, &board, round, config.max_rounds);
            let reply = ask(&mut run, text)?;
            let (expert, focus) = match decide(&reply) {
                Decision::Final(answer) => {
                    arch::emit(
                        "final",
                        serde_json::json!({ "round": round, "forced": false }),
                    );
                    return Ok(end(run, answer, false));
                }
                Decision::Choose { expert, focus } => (expert, focus),
            };
            let named = expert.is_some();
            let expert_name = expert.unwrap_or_default();
            arch::emit(
                "chosen",
                serde_json::json!({
                    "round": round,
                    "expert": expert_name,
                    "focus": cut(&focus, EXCERPT_CHARS),
                }),
            );
            let found = config.experts.iter().find(|e| e.name == expert_name);
            let (text, ok) = match found {
                None if !named => (
                    format!(
                        "ERROR: a choice needs an \"expert\" string (experts: {})",
                        names(&config.experts)
                    ),
                    false,
                ),
                None => (unknown_expert(&expert_name, &config.experts), false),
                Some(expert) => {
                    if run.out_of_turns() {
                        return Ok(end(run, latest(&board), true));
                    }
                    match arch::delegate(&expert.agent, &expert_text(task, &board, &focus)) {
                        Ok(sub) => {
                            run.add_delegated(&sub);
                            match sub.interrupted {
                                Some(reason) => {
                                    (format!("(interrupted: {reason}) {}", sub.output), false)
                                }
                                None => (sub.output, true),
                            }
                        }
                        Err(
                            error @ (HarnessError::Cancelled | HarnessError::BudgetExceeded(_)),
                        ) => {
                            return Err(arch::harness_error(error));
                        }
                        Err(error) => {
                            (format!("ERROR: {}", arch::harness_error_text(error)), false)
                        }
                    }
                }
            };
            board.push(Entry {
                expert: expert_name.clone(),
                text,
            });
            arch::emit(
                "contribution",
                serde_json::json!({ "round": round, "expert": expert_name, "ok": ok }),
            );
        }

        if run.out_of_turns() {
            return Ok(end(run, latest(&board), true));
        }
        let reply = ask(&mut run, final_text(task, &config.experts, &board))?;
        let answer = match decide(&reply) {
            Decision::Final(answer) => answer,
            Decision::Choose { .. } => reply.trim().to_owned(),
        };
        arch::emit(
            "final",
            serde_json::json!({ "round": config.max_rounds, "forced": true }),
        );
        Ok(end(run, answer, false))
    }
}

loom_sdk::export_architecture!(Blackboard);

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = r#"{"experts": {
        "calc": {"description": "arithmetic", "agent": "calculator"},
        "writer": {"description": "prose", "architecture": "self-refine",
                   "instructions": "be brief", "tools": ["fetch"], "config": {"max_rounds": 2}}
    }, "max_rounds": 2}"#;

    fn entry(expert: &str, text: &str) -> Entry {
        Entry {
            expert: expert.into(),
            text: text.into(),
        }
    }

    #[test]
    fn config_builds_agent_refs() {
        let config = parse_config(TWO).unwrap();
        assert_eq!(config.max_rounds, 2);
        assert_eq!(names(&config.experts), "calc, writer");
        let calc = &config.experts[0];
        assert_eq!(calc.description, "arithmetic");
        assert_eq!(calc.agent.architecture, "agent:calculator");
        assert!(calc.agent.instructions.is_empty() && calc.agent.tools.is_empty());
        assert_eq!(calc.agent.config, None);
        let writer = &config.experts[1];
        assert_eq!(writer.agent.architecture, "self-refine");
        assert_eq!(writer.agent.instructions, "be brief");
        assert_eq!(writer.agent.tools, vec!["fetch".to_owned()]);
        assert_eq!(writer.agent.config.as_deref(), Some(r#"{"max_rounds":2}"#));

        let bare = parse_config(r#"{"experts": {"a": {"description": "d"}}}"#).unwrap();
        assert_eq!(bare.max_rounds, 3);
        assert_eq!(bare.experts[0].agent.architecture, "react");
    }

    #[test]
    fn bad_configs_are_refused() {
        let many = |n: usize| {
            let entries = (0..n)
                .map(|i| format!(r#""e{i}": {{"description": "d"}}"#))
                .collect::<Vec<_>>()
                .join(",");
            format!(r#"{{"experts": {{{entries}}}}}"#)
        };
        assert!(parse_config(&many(16)).is_ok());
        let seventeen = many(17);
        let long = format!(
            r#"{{"experts": {{"{}": {{"description": "d"}}}}}}"#,
            "a".repeat(65)
        );
        for bad in [
            seventeen.as_str(),
            long.as_str(),
            r#"{"experts": {"a.b": {"description": "d"}}}"#,
            r#"{"experts": {"a": {"description": ""}}}"#,
            r#"{"experts": {"a": {"agent": "x"}}}"#,
            r#"{"experts": {"a": {"description": "d", "agent": "x", "instructions": "i"}}}"#,
            r#"{"experts": {"a": {"description": "d", "agent": ""}}}"#,
            r#"{"experts": {"a": {"description": "d", "architecture": "agent:x"}}}"#,
            r#"{"experts": {"a": {"description": "d", "config": "x"}}}"#,
            r#"{"experts": {"a": {"description": "d", "tools": [" "]}}}"#,
            r#"{"experts": {"a": {"description": "d", "extra": 1}}}"#,
            r#"{"experts": {"a": {"description": "d"}}, "max_rounds": 0}"#,
            r#"{"experts": {"a": {"description": "d"}}, "max_rounds": 11}"#,
            r#"{"experts": {"a": {"description": "d"}}, "rounds": 2}"#,
            r#"{"workers": {"a": {"description": "d"}}}"#,
            "[]",
        ] {
            assert!(
                matches!(parse_config(bad), Err(RunError::InvalidConfig(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn schema_is_json_and_matches_the_defaults() {
        let schema: serde_json::Value = serde_json::from_str(CONFIG_SCHEMA).unwrap();
        let p = &schema["properties"];
        assert_eq!(p.as_object().unwrap().len(), 2);
        assert_eq!(
            p["max_rounds"]["default"],
            serde_json::json!(RawConfig::default().max_rounds)
        );
        assert_eq!(p["max_rounds"]["minimum"], serde_json::json!(1));
        assert_eq!(p["max_rounds"]["maximum"], serde_json::json!(10));
        assert_eq!(
            p["experts"]["maxProperties"],
            serde_json::json!(MAX_EXPERTS)
        );
        let expert = &p["experts"]["additionalProperties"];
        assert_eq!(expert["properties"]["architecture"]["default"], "react");
        assert_eq!(expert["additionalProperties"], serde_json::json!(false));
        assert_eq!(schema["additionalProperties"], serde_json::json!(false));
        assert!(schema.get("required").is_none(), "every key has a default");
    }

    #[test]
    fn replies_are_read_leniently() {
        let choose = |e: &str, f: &str| Decision::Choose {
            expert: Some(e.into()),
            focus: f.into(),
        };
        assert_eq!(
            decide(r#"{"expert": "calc", "focus": "add 2 and 2"}"#),
            choose("calc", "add 2 and 2")
        );
        assert_eq!(
            decide("Next:\n```json\n{\"expert\": \" writer \"}\n```"),
            choose("writer", "")
        );
        assert_eq!(
            decide(r#"{"expert": 3, "focus": "x"}"#),
            Decision::Choose {
                expert: None,
                focus: "x".into()
            }
        );
        assert_eq!(
            decide("Done. {\"final\": \"4\"}"),
            Decision::Final("4".into())
        );
        assert_eq!(decide(r#"{"final": 4}"#), Decision::Final("4".into()));
        assert_eq!(
            decide("  Echo: Task:\nadd  "),
            Decision::Final("Echo: Task:\nadd".into())
        );
        assert_eq!(
            decide(r#"{"answer": "x"}"#),
            Decision::Final(r#"{"answer": "x"}"#.into())
        );
        // An echoed round prompt holds two examples and reads as a final.
        let config = parse_config(TWO).unwrap();
        let echo = format!("Echo: {}", round_text("t", &config.experts, &[], 1, 3));
        assert_eq!(decide(&echo), Decision::Final(echo.trim().to_owned()));
    }

    #[test]
    fn board_is_cut_in_rounds_but_never_in_the_final_prompt() {
        let config = parse_config(TWO).unwrap();
        let long = "x".repeat(ENTRY_CHARS + 10);
        let board = vec![entry("calc", "4"), entry("writer", &long)];
        let round = round_text("t", &config.experts, &board, 2, 2);
        assert!(round.starts_with("Task:\nt\n\nExperts:\n- calc: arithmetic\n- writer: prose"));
        assert!(round.contains("Round 2 of 2."), "{round}");
        assert!(round.contains("Board:\n[calc] 4\n\n[writer] "));
        assert!(round.contains(&format!("{} [... cut]", "x".repeat(ENTRY_CHARS))));
        assert!(!round.contains(&long));
        assert!(round.contains(r#"{"final": "<answer>"}"#), "{round}");
        let last = final_text("t", &config.experts, &board);
        assert!(last.contains(&format!("[writer] {long}")));
        assert!(!last.contains("[... cut]"));
        assert!(last.contains("No more contributions are possible"));
        let first = round_text("t", &config.experts, &[], 1, 3);
        assert!(first.contains("Board:\n(empty)"), "{first}");
        assert_eq!(
            expert_text("t", &board[..1], "check"),
            "t\n\nBoard so far:\n[calc] 4\n\nYour focus: check"
        );
        assert_eq!(expert_text("t", &[], ""), "t\n\nBoard so far:\n(empty)");
    }

    #[test]
    fn errors_and_fallback_outputs() {
        let config = parse_config(TWO).unwrap();
        assert_eq!(
            unknown_expert("coder", &config.experts),
            "ERROR: no expert named coder (experts: calc, writer)"
        );
        assert_eq!(
            arch::harness_error_text(HarnessError::UnknownAgent("x".into())),
            "unknown agent: x"
        );
        assert_eq!(latest(&[]), "");
        assert_eq!(latest(&[entry("a", "1"), entry("b", "2")]), "2");
        let history = vec![Message::system("old"), Message::user("before")];
        let messages = messages("be brief", &history, "req".into());
        assert_eq!(
            messages[0].content,
            format!("{CONTROLLER_SYSTEM}\n\nbe brief")
        );
        assert_eq!(messages.len(), 3);
        assert_eq!(messages[1].content, "before");
    }

    #[test]
    fn no_team_is_one_react_assistant() {
        for text in ["", "{}"] {
            let config = parse_config(text).unwrap();
            assert_eq!(config.experts.len(), 1, "{text:?}");
            assert_eq!(config.experts[0].name, "assistant");
            assert_eq!(config.experts[0].agent.architecture, "react");
        }
    }
}
