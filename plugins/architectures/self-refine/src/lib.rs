//! Self-refine: draft an answer (ReAct, with tools), then let a critic
//! review it and a refiner improve it, for a few rounds.
//!
//! 1. **Draft.** The session is seeded as in ReAct (instructions as a
//!    system message for a new session, then the prompt) and the model,
//!    with role `executor`, calls tools until it answers without calling
//!    one. Every tool call of a turn goes to the host in one `call-tools`;
//!    denials and tool errors become tool messages (`DENIED: ...`,
//!    `ERROR: ...`).
//! 2. **Critique.** A completion with role `critic` and no tools sees a
//!    critic system message and one user message holding the task (the
//!    prompt), the current answer and the request to list its concrete
//!    problems or to reply with exactly the stop phrase. A critique that
//!    contains the stop phrase (in any case) or is blank ends the loop.
//! 3. **Refine.** Otherwise a completion with role `refiner` and no tools
//!    sees the agent's instructions (as a system message, when there are
//!    any) and one user message holding the task, the current answer and
//!    the critique, and writes the improved answer. A non-blank reply
//!    becomes the current answer.
//!
//! Steps 2 and 3 repeat for at most `max_rounds` rounds. Every completion
//! counts as a turn against `max-turns`; when the turns run out the run
//! ends interrupted with reason `max_turns` and the best answer so far (the
//! draft, or the latest refinement) as its output.
//!
//! The run adds to the session the seed, the draft's turns (assistant and
//! tool messages) and, when the final answer differs from the draft, one
//! assistant message with the final answer. Critiques and refinements stay
//! out of the session.
//!
//! # Configuration
//!
//! * `max_rounds` (integer, 0 to 10, default 2): critique-and-refine rounds
//!   at most; 0 returns the draft.
//! * `stop_phrase` (string, default `NO_ISSUES`): what the critic replies
//!   when it finds nothing to improve.
//!
//! Unknown keys are refused (`invalid-config`).
//!
//! # Events
//!
//! * `draft` — `{"text": <draft>}` once the draft is done.
//! * `critique` — `{"round": <n>, "text": <critique>}` after each critique
//!   (rounds count from 1).
//! * `refined` — `{"round": <n>}` after each refinement.

use loom_sdk::arch::{
    self, Architecture, ArchitectureInfo, CompletionRequest, Message, Run, RunError, RunInput,
    RunOutput, WorkerRole,
};
use serde::Deserialize;

/// The largest `max_rounds` accepted.
const MAX_ROUNDS: u32 = 10;

/// The JSON Schema of the configuration.
const CONFIG_SCHEMA: &str = r#"{"type":"object","properties":{"max_rounds":{"type":"integer","minimum":0,"maximum":10,"default":2},"stop_phrase":{"type":"string","default":"NO_ISSUES"}},"additionalProperties":false}"#;

/// The critic's system message.
const CRITIC_SYSTEM: &str = "You are a critic. You review an answer to a task and point out its \
concrete problems: mistakes, omissions, unsupported or unclear claims. You do not rewrite the \
answer.";

/// The configuration object.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    /// Critique-and-refine rounds at most.
    max_rounds: u32,
    /// What the critic replies when it finds nothing to improve.
    stop_phrase: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_rounds: 2,
            stop_phrase: "NO_ISSUES".into(),
        }
    }
}

/// Parse and check the configuration text.
fn parse_config(text: &str) -> Result<Config, RunError> {
    let config: Config = arch::config_from_str(text)?;
    if config.max_rounds > MAX_ROUNDS {
        return Err(RunError::invalid_config(format!(
            "max_rounds must be at most {MAX_ROUNDS}, not {}",
            config.max_rounds
        )));
    }
    Ok(config)
}

/// True when `critique` ends the loop: it is blank or contains
/// `stop_phrase`, ignoring case.
fn is_done(critique: &str, stop_phrase: &str) -> bool {
    critique.trim().is_empty()
        || critique
            .to_lowercase()
            .contains(&stop_phrase.to_lowercase())
}

/// A request without tools for `role`.
fn request(role: &str, messages: Vec<Message>) -> CompletionRequest {
    CompletionRequest {
        messages,
        tools: Vec::new(),
        temperature: None,
        max_output_tokens: None,
        output_schema: None,
        role: Some(role.into()),
    }
}

/// The critic's messages: its system message, then the task, the answer
/// and what to reply in one user message.
fn critique_messages(task: &str, answer: &str, stop_phrase: &str) -> Vec<Message> {
    vec![
        Message::system(CRITIC_SYSTEM),
        Message::user(format!(
            "Task:\n{task}\n\nAnswer:\n{answer}\n\nList the concrete problems of this answer, one \
             per line, each with what to change. If it has none, reply with exactly \
             {stop_phrase} and nothing else."
        )),
    ]
}

/// The refiner's messages: the agent's instructions (when any), then the
/// task, the answer and the critique in one user message.
fn refine_messages(instructions: &str, task: &str, answer: &str, critique: &str) -> Vec<Message> {
    let mut messages = Vec::new();
    if !instructions.is_empty() {
        messages.push(Message::system(instructions));
    }
    messages.push(Message::user(format!(
        "Task:\n{task}\n\nAnswer:\n{answer}\n\nCritique:\n{critique}\n\nWrite the improved \
         answer to the task, fixing the problems the critique names. Reply with the improved \
         answer only."
    )));
    messages
}

struct SelfRefine;

impl Architecture for SelfRefine {
    fn describe() -> ArchitectureInfo {
        let worker = |name: &str, description: &str| WorkerRole {
            name: name.into(),
            description: description.into(),
        };
        ArchitectureInfo {
            name: "self-refine".into(),
            description: "Draft an answer with tools, then critique and refine it for a few rounds"
                .into(),
            workers: vec![
                worker("executor", "Drafts the answer, calling tools"),
                worker("critic", "Points out concrete problems of the answer"),
                worker("refiner", "Rewrites the answer to fix the critique"),
            ],
            config_schema: CONFIG_SCHEMA.into(),
        }
    }

    fn run(input: RunInput) -> Result<RunOutput, RunError> {
        let config = parse_config(&input.config)?;
        let mut run = Run::seed(&input);
        let Some(draft) = run.react(Some("executor"))? else {
            return Ok(run.interrupted("max_turns"));
        };
        arch::emit("draft", serde_json::json!({ "text": draft }));

        let mut answer = draft.clone();
        let mut interrupted = false;
        for round in 1..=config.max_rounds {
            if run.out_of_turns() {
                interrupted = true;
                break;
            }
            let critique = run
                .complete_request(&request(
                    "critic",
                    critique_messages(&input.prompt, &answer, &config.stop_phrase),
                ))?
                .message
                .content;
            arch::emit(
                "critique",
                serde_json::json!({ "round": round, "text": critique }),
            );
            if is_done(&critique, &config.stop_phrase) {
                break;
            }
            if run.out_of_turns() {
                interrupted = true;
                break;
            }
            let refined = run
                .complete_request(&request(
                    "refiner",
                    refine_messages(&input.instructions, &input.prompt, &answer, &critique),
                ))?
                .message
                .content;
            arch::emit("refined", serde_json::json!({ "round": round }));
            if !refined.trim().is_empty() {
                answer = refined;
            }
        }

        if answer != draft {
            run.push(Message::assistant(answer.clone()));
        }
        Ok(if interrupted {
            run.interrupted_with(answer, "max_turns")
        } else {
            run.finish(answer)
        })
    }
}

loom_sdk::export_architecture!(SelfRefine);

#[cfg(test)]
mod tests {
    use super::*;
    use loom_sdk::arch::Role;

    #[test]
    fn config_defaults_and_checks() {
        assert_eq!(parse_config("").unwrap(), Config::default());
        assert_eq!(parse_config("{}").unwrap(), Config::default());
        assert_eq!(
            parse_config(r#"{"max_rounds": 0, "stop_phrase": "DONE"}"#).unwrap(),
            Config {
                max_rounds: 0,
                stop_phrase: "DONE".into()
            }
        );
        for bad in [
            r#"{"max_rounds": 11}"#,
            r#"{"max_rounds": -1}"#,
            r#"{"max_rounds": "2"}"#,
            r#"{"rounds": 2}"#,
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
    fn schema_is_json_and_matches_the_defaults() {
        let schema: serde_json::Value = serde_json::from_str(CONFIG_SCHEMA).unwrap();
        let properties = &schema["properties"];
        let defaults = Config::default();
        assert_eq!(
            properties["max_rounds"]["default"],
            serde_json::json!(defaults.max_rounds)
        );
        assert_eq!(
            properties["max_rounds"]["maximum"],
            serde_json::json!(MAX_ROUNDS)
        );
        assert_eq!(
            properties["stop_phrase"]["default"],
            serde_json::json!(defaults.stop_phrase)
        );
        assert_eq!(schema["additionalProperties"], serde_json::json!(false));
    }

    #[test]
    fn stop_phrase_ignores_case_and_blank_critiques_stop() {
        assert!(is_done("NO_ISSUES", "NO_ISSUES"));
        assert!(is_done("I found no_issues here.", "NO_ISSUES"));
        assert!(is_done("  \n", "NO_ISSUES"));
        assert!(!is_done("The sum is wrong.", "NO_ISSUES"));
        assert!(is_done("all done", "Done"));
    }

    #[test]
    fn critique_prompt_holds_task_answer_and_stop_phrase() {
        let messages = critique_messages("add 2 and 2", "5", "NO_ISSUES");
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].role, Role::System);
        assert!(messages[0].content.starts_with("You are a critic"));
        assert_eq!(messages[1].role, Role::User);
        let text = &messages[1].content;
        assert!(text.contains("Task:\nadd 2 and 2"), "{text}");
        assert!(text.contains("Answer:\n5"), "{text}");
        assert!(text.contains("reply with exactly NO_ISSUES"), "{text}");
    }

    #[test]
    fn refine_prompt_holds_task_answer_and_critique() {
        let messages = refine_messages("be brief", "add 2 and 2", "5", "The sum is wrong.");
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].role, Role::System);
        assert_eq!(messages[0].content, "be brief");
        let text = &messages[1].content;
        assert!(text.contains("Task:\nadd 2 and 2"), "{text}");
        assert!(text.contains("Answer:\n5"), "{text}");
        assert!(text.contains("Critique:\nThe sum is wrong."), "{text}");
        assert_eq!(refine_messages("", "t", "a", "c").len(), 1);
    }

    #[test]
    fn requests_offer_no_tools() {
        let request = request("critic", critique_messages("t", "a", "X"));
        assert!(request.tools.is_empty());
        assert_eq!(request.role.as_deref(), Some("critic"));
    }
}
