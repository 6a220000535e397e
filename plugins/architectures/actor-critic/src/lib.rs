//! Actor-critic: an actor answers with tools, a critic scores the answer
//! and lists its issues, and the actor revises until the critic approves
//! or the rounds run out.
//!
//! For each round `r` (counting from 1, at most `max_rounds`):
//!
//! 1. **Act.** Round 1 is a ReAct loop with tools in role `actor` on the
//!    session seeded as in ReAct (the instructions as a system message for
//!    a new session, then the prompt). A later round first adds, in the
//!    same conversation, a user message asking the actor to revise its
//!    answer, with the critic's issues as `- ` bullets (and its summary),
//!    then runs the same ReAct loop again. Every tool call of a turn goes
//!    to the host in one `call-tools`; denials and tool errors become tool
//!    messages (`DENIED: ...`, `ERROR: ...`).
//! 2. **Critique.** A completion in role `critic`, no tools, in a side
//!    conversation of its own (a critic system message and one user
//!    message holding the task, the answer and the reply format), asked for
//!    the JSON object `{"issues": [...], "score": <0 to 1>, "summary":
//!    "..."}`. The reply is read tolerantly and never fails the run: JSON,
//!    also inside a markdown fence or surrounding prose; else a `score:` (or
//!    `"score":`) label with the whole reply as the one issue; else score 0
//!    with the whole reply as the one issue. Scores above 1 are read as out
//!    of 10 or 100, `70%` and `7/10` as 0.7.
//! 3. A score at or above `approval_threshold` approves the answer and ends
//!    the run with it. After round `max_rounds` the run ends with the last
//!    answer, not interrupted.
//!
//! Every completion (the actor's turns and each critique) counts against
//! `max-turns`; when they run out the run ends interrupted with reason
//! `max_turns`, its output the last complete answer (the previous round's
//! when a revision was cut off; the cut-off loop's last text when round 1
//! was).
//!
//! The run adds to the session the seed, the actor's turns (assistant and
//! tool messages), and each revision request with the turns answering it.
//! Critiques stay out of the session.
//!
//! # Configuration
//!
//! * `max_rounds` (integer, 1 to 10, default 3): act-and-critique rounds at
//!   most.
//! * `approval_threshold` (number, 0 to 1, default 0.9): the critic score
//!   that approves the answer.
//!
//! Unknown keys are refused (`invalid-config`).
//!
//! # Events
//!
//! * `actor` — `{"round": <r>}` when the actor starts a round.
//! * `critique` — `{"round": <r>, "score": <0 to 1>, "issues": <count>,
//!   "summary": <text>}` after each critique.
//! * `approved` — `{"round": <r>, "score": <score>}` when the critic
//!   approves.
//! * `max_rounds` — `{"rounds": <n>, "score": <last score>}` when the last
//!   round ends without approval.

use loom_sdk::arch::{
    self, Architecture, ArchitectureInfo, CompletionRequest, Message, Run, RunError, RunInput,
    RunOutput, WorkerRole,
};
use serde::Deserialize;

/// The largest `max_rounds` accepted.
const MAX_ROUNDS: u32 = 10;

/// The JSON Schema of the configuration.
const CONFIG_SCHEMA: &str = r#"{"type":"object","properties":{"max_rounds":{"type":"integer","minimum":1,"maximum":10,"default":3},"approval_threshold":{"type":"number","minimum":0,"maximum":1,"default":0.9}},"additionalProperties":false}"#;

/// The critic's system message.
const CRITIC_SYSTEM: &str = "You are a critic. You review an answer to a task, list its \
concrete problems (mistakes, omissions, unsupported or unclear claims) and score how ready it \
is to approve. You do not rewrite the answer. You reply with JSON only.";

/// The configuration object.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    /// Act-and-critique rounds at most.
    max_rounds: u32,
    /// The critic score that approves the answer.
    approval_threshold: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_rounds: 3,
            approval_threshold: 0.9,
        }
    }
}

/// Parse and check the configuration text.
fn parse_config(text: &str) -> Result<Config, RunError> {
    let config: Config = arch::config_from_str(text)?;
    if !(1..=MAX_ROUNDS).contains(&config.max_rounds) {
        return Err(RunError::invalid_config(format!(
            "max_rounds must be 1 to {MAX_ROUNDS}, not {}",
            config.max_rounds
        )));
    }
    if !(0.0..=1.0).contains(&config.approval_threshold) {
        return Err(RunError::invalid_config(format!(
            "approval_threshold must be 0 to 1, not {}",
            config.approval_threshold
        )));
    }
    Ok(config)
}

/// A critique as read from the critic's reply.
#[derive(Debug, Clone, PartialEq)]
struct Critique {
    /// The problems named, in order.
    issues: Vec<String>,
    /// How ready the answer is, 0 to 1.
    score: f64,
    /// The critic's one-line summary; empty when it gave none.
    summary: String,
}

/// A raw score from 0 to 1: at most 1 as is, above 1 out of 10 (up to
/// 10) or out of 100 (up to 100), negative as 0; above 100 none.
fn normalize(value: f64) -> Option<f64> {
    if value <= 1.0 {
        Some(value.max(0.0))
    } else if value <= 10.0 {
        Some(value / 10.0)
    } else if value <= 100.0 {
        Some(value / 100.0)
    } else {
        None
    }
}

/// The number at the start of `s` (digits with at most one decimal point)
/// and its length in bytes.
fn leading_number(s: &str) -> Option<(f64, usize)> {
    let bytes = s.as_bytes();
    let mut end = 0;
    let mut digits = 0;
    let mut dot = false;
    while end < bytes.len() {
        match bytes[end] {
            b'0'..=b'9' => digits += 1,
            b'.' if !dot && bytes.get(end + 1).is_some_and(u8::is_ascii_digit) => dot = true,
            _ => break,
        }
        end += 1;
    }
    if digits == 0 {
        return None;
    }
    s[..end].parse().ok().map(|value| (value, end))
}

/// The score written at the start of `s`, from 0 to 1: `0.7`, `70%`,
/// `7/10`, or a bare number as [`normalize`] reads it.
fn score_token(s: &str) -> Option<f64> {
    let (value, len) = leading_number(s)?;
    let rest = s[len..].trim_start_matches([' ', '\t']);
    if rest.starts_with('%') {
        return Some((value / 100.0).clamp(0.0, 1.0));
    }
    if let Some(denominator) = rest.strip_prefix('/')
        && let Some((d, _)) = leading_number(denominator.trim_start_matches([' ', '\t']))
        && d > 0.0
    {
        return Some((value / d).clamp(0.0, 1.0));
    }
    normalize(value)
}

/// The score after a `score:` / `score =` label (quotes and `**` around
/// the label allowed, any case) anywhere in `text`.
fn labelled_score(text: &str) -> Option<f64> {
    // ASCII lowering keeps byte offsets, so they index `text` too.
    let lower = text.to_ascii_lowercase();
    let mut from = 0;
    while let Some(found) = lower[from..].find("score") {
        let after = from + found + "score".len();
        let rest = text[after..].trim_start_matches(['"', '\'', '*', ' ', '\t']);
        if let Some(value) = rest.strip_prefix([':', '='])
            && let Some(score) = score_token(value.trim_start_matches([' ', '\t', '"', '\'', '*']))
        {
            return Some(score);
        }
        from = after;
    }
    None
}

/// `text` without a surrounding markdown code fence (```` ```json ````).
fn strip_fence(text: &str) -> &str {
    let text = text.trim();
    let Some(inner) = text.strip_prefix("```") else {
        return text;
    };
    // Drop the info string (`json`) up to the first line break.
    let inner = inner.split_once('\n').map_or("", |(_, body)| body);
    inner.trim_end().strip_suffix("```").unwrap_or(inner).trim()
}

/// The JSON object in `text`: all of it (fence stripped), else the span
/// from its first `{` to its last `}`.
fn json_object(text: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let parse = |s: &str| match serde_json::from_str(s) {
        Ok(serde_json::Value::Object(map)) => Some(map),
        _ => None,
    };
    let body = strip_fence(text);
    parse(body).or_else(|| {
        let start = body.find('{')?;
        let end = body.rfind('}')?;
        (start < end).then(|| parse(&body[start..=end])).flatten()
    })
}

/// A JSON score: a number or a numeric string, from 0 to 1.
fn json_score(value: &serde_json::Value) -> Option<f64> {
    match value {
        serde_json::Value::Number(n) => n.as_f64().and_then(normalize),
        serde_json::Value::String(s) => score_token(s.trim()),
        _ => None,
    }
}

/// The issues of a JSON `issues` value: the non-blank strings of a list
/// (other items as JSON text), or one non-blank string.
fn json_issues(value: Option<&serde_json::Value>) -> Vec<String> {
    let text = |item: &serde_json::Value| match item {
        serde_json::Value::String(s) => s.trim().to_owned(),
        other => other.to_string(),
    };
    match value {
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(text)
            .filter(|issue| !issue.is_empty())
            .collect(),
        Some(serde_json::Value::String(s)) if !s.trim().is_empty() => vec![s.trim().to_owned()],
        _ => Vec::new(),
    }
}

/// Read the critic's reply; never fails. A JSON object with `score` or
/// `issues` gives its issues, score (else a labelled score in the text,
/// else 0) and summary; otherwise the score is a labelled score in the
/// text, else 0, and the whole (trimmed) reply is the one issue.
fn parse_critique(text: &str) -> Critique {
    if let Some(object) = json_object(text)
        && (object.contains_key("score") || object.contains_key("issues"))
    {
        return Critique {
            issues: json_issues(object.get("issues")),
            score: object
                .get("score")
                .and_then(json_score)
                .or_else(|| labelled_score(text))
                .unwrap_or(0.0),
            summary: match object.get("summary") {
                Some(serde_json::Value::String(s)) => s.trim().to_owned(),
                _ => String::new(),
            },
        };
    }
    let whole = text.trim();
    Critique {
        issues: if whole.is_empty() {
            Vec::new()
        } else {
            vec![whole.to_owned()]
        },
        score: labelled_score(text).unwrap_or(0.0),
        summary: String::new(),
    }
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
/// and the reply format in one user message.
fn critic_messages(task: &str, answer: &str) -> Vec<Message> {
    vec![
        Message::system(CRITIC_SYSTEM),
        Message::user(format!(
            "Task:\n{task}\n\nAnswer:\n{answer}\n\nReview the answer. Reply with only a JSON \
             object of this shape:\n{{\"issues\": [\"<a concrete problem and what to change>\"], \
             \"score\": <a number from 0 to 1, where 1 means ready to approve>, \"summary\": \
             \"<one sentence>\"}}\nUse an empty issues list when there is nothing to fix."
        )),
    ]
}

/// The user message asking the actor to revise: the critic's issues as
/// bullets (its summary when it named none), then its summary.
fn revise_prompt(critique: &Critique) -> String {
    let mut text = String::from("A reviewer did not approve your answer. Issues:");
    if critique.issues.is_empty() {
        let fallback = if critique.summary.is_empty() {
            "The answer is not yet correct and complete enough."
        } else {
            critique.summary.as_str()
        };
        text.push_str("\n- ");
        text.push_str(fallback);
    } else {
        for issue in &critique.issues {
            text.push_str("\n- ");
            text.push_str(issue);
        }
        if !critique.summary.is_empty() {
            text.push_str("\n\nReviewer's summary: ");
            text.push_str(&critique.summary);
        }
    }
    text.push_str(
        "\n\nRevise your answer to fix these issues, calling tools if you need to. Reply with \
         the complete revised answer.",
    );
    text
}

struct ActorCritic;

impl Architecture for ActorCritic {
    fn describe() -> ArchitectureInfo {
        let worker = |name: &str, description: &str| WorkerRole {
            name: name.into(),
            description: description.into(),
        };
        ArchitectureInfo {
            name: "actor-critic".into(),
            description: "An actor answers with tools; a critic scores the answer and lists its \
                          issues as JSON; the actor revises in the same conversation until the \
                          score reaches the approval threshold or the rounds run out"
                .into(),
            workers: vec![
                worker("actor", "Answers and revises the answer, calling tools"),
                worker(
                    "critic",
                    "Scores the answer from 0 to 1 and lists its issues",
                ),
            ],
            config_schema: CONFIG_SCHEMA.into(),
        }
    }

    fn run(input: RunInput) -> Result<RunOutput, RunError> {
        let config = parse_config(&input.config)?;
        let mut run = Run::seed(&input);
        // The last complete answer, and the critique of it to revise against.
        let mut answer: Option<String> = None;
        let mut pending: Option<Critique> = None;
        for round in 1..=config.max_rounds {
            if let Some(critique) = pending.take() {
                run.push(Message::user(revise_prompt(&critique)));
            }
            arch::emit("actor", serde_json::json!({ "round": round }));
            let Some(current) = run.react(Some("actor"))? else {
                let output = answer.unwrap_or_else(|| run.last_text().to_owned());
                return Ok(run.interrupted_with(output, "max_turns"));
            };
            if run.out_of_turns() {
                return Ok(run.interrupted_with(current, "max_turns"));
            }
            let reply = run
                .complete_request(&request("critic", critic_messages(&input.prompt, &current)))?
                .message
                .content;
            let critique = parse_critique(&reply);
            arch::emit(
                "critique",
                serde_json::json!({
                    "round": round,
                    "score": critique.score,
                    "issues": critique.issues.len(),
                    "summary": critique.summary,
                }),
            );
            if critique.score >= config.approval_threshold {
                arch::emit(
                    "approved",
                    serde_json::json!({ "round": round, "score": critique.score }),
                );
                return Ok(run.finish(current));
            }
            if round == config.max_rounds {
                arch::emit(
                    "max_rounds",
                    serde_json::json!({ "rounds": round, "score": critique.score }),
                );
                return Ok(run.finish(current));
            }
            pending = Some(critique);
            answer = Some(current);
        }
        // Not reached: the last round always returns.
        let output = answer.unwrap_or_default();
        Ok(run.finish(output))
    }
}

loom_sdk::export_architecture!(ActorCritic);

#[cfg(test)]
mod tests {
    use super::*;
    use loom_sdk::arch::Role;

    #[test]
    fn config_defaults_and_checks() {
        assert_eq!(parse_config("").unwrap(), Config::default());
        assert_eq!(parse_config("{}").unwrap(), Config::default());
        assert_eq!(
            parse_config(r#"{"max_rounds": 10, "approval_threshold": 0}"#).unwrap(),
            Config {
                max_rounds: 10,
                approval_threshold: 0.0
            }
        );
        for bad in [
            r#"{"max_rounds": 0}"#,
            r#"{"max_rounds": 11}"#,
            r#"{"max_rounds": "2"}"#,
            r#"{"approval_threshold": 1.1}"#,
            r#"{"approval_threshold": -1}"#,
            r#"{"threshold": 0.5}"#,
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
            properties["approval_threshold"]["default"],
            serde_json::json!(defaults.approval_threshold)
        );
        assert_eq!(schema["additionalProperties"], serde_json::json!(false));
    }

    #[test]
    fn json_critiques_are_read() {
        let critique = parse_critique(
            r#"{"issues": ["wrong sum", " ", 3], "score": 0.4, "summary": "Close."}"#,
        );
        assert_eq!(
            critique,
            Critique {
                issues: vec!["wrong sum".into(), "3".into()],
                score: 0.4,
                summary: "Close.".into(),
            }
        );
        let fenced = parse_critique("```json\n{\"issues\": [], \"score\": 0.95}\n```");
        assert_eq!(fenced.issues, Vec::<String>::new());
        assert_eq!(fenced.score, 0.95);
        assert_eq!(fenced.summary, "");
        let prose = parse_critique(
            "Here is my review:\n{\"issues\": \"no units\", \"score\": \"8/10\"}\nThanks.",
        );
        assert_eq!(prose.issues, ["no units"]);
        assert!((prose.score - 0.8).abs() < 1e-9);
        assert_eq!(parse_critique(r#"{"issues": [], "score": 9}"#).score, 0.9);
        assert_eq!(parse_critique(r#"{"issues": [], "score": 85}"#).score, 0.85);
        assert_eq!(parse_critique(r#"{"issues": [], "score": -2}"#).score, 0.0);
        assert_eq!(parse_critique(r#"{"issues": ["x"]}"#).score, 0.0);
    }

    #[test]
    fn other_replies_fall_back_to_a_labelled_score_or_zero() {
        let labelled = parse_critique("The sum is wrong.\nScore: 0.3");
        assert_eq!(labelled.issues, ["The sum is wrong.\nScore: 0.3"]);
        assert!((labelled.score - 0.3).abs() < 1e-9);
        assert_eq!(parse_critique("score = 70%").score, 0.7);
        let broken = parse_critique("{\"issues\": [\"x\", \"score\": 0.6");
        assert_eq!(broken.score, 0.6);
        assert_eq!(broken.issues.len(), 1);
        let nothing = parse_critique("looks fine to me");
        assert_eq!(nothing.score, 0.0);
        assert_eq!(nothing.issues, ["looks fine to me"]);
        let blank = parse_critique("   ");
        assert_eq!(blank.score, 0.0);
        assert!(blank.issues.is_empty());
        // The reply format, echoed back, is no approval.
        let echoed = format!("Echo: {}", critic_messages("add 2 and 2", "4")[1].content);
        let critique = parse_critique(&echoed);
        assert_eq!(critique.score, 0.0);
        assert_eq!(critique.issues, [echoed.trim()]);
    }

    #[test]
    fn fences_are_stripped() {
        assert_eq!(strip_fence("```json\n{}\n```"), "{}");
        assert_eq!(strip_fence("```\n{\"a\": 1}```"), "{\"a\": 1}");
        assert_eq!(strip_fence("  {} "), "{}");
        assert_eq!(strip_fence("```"), "");
    }

    #[test]
    fn critic_prompt_holds_task_answer_and_format() {
        let messages = critic_messages("add 2 and 2", "5");
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].role, Role::System);
        assert!(messages[0].content.starts_with("You are a critic"));
        assert_eq!(messages[1].role, Role::User);
        let text = &messages[1].content;
        assert!(text.contains("Task:\nadd 2 and 2"), "{text}");
        assert!(text.contains("Answer:\n5"), "{text}");
        assert!(text.contains("{\"issues\": ["), "{text}");
        assert!(text.contains("\"score\": <a number from 0 to 1"), "{text}");
        let request = request("critic", messages);
        assert!(request.tools.is_empty());
        assert_eq!(request.role.as_deref(), Some("critic"));
    }

    #[test]
    fn revise_prompt_lists_issues_as_bullets() {
        let text = revise_prompt(&Critique {
            issues: vec!["wrong sum".into(), "no units".into()],
            score: 0.2,
            summary: "Redo it.".into(),
        });
        assert!(
            text.starts_with("A reviewer did not approve your answer. Issues:\n- wrong sum\n- no units\n\nReviewer's summary: Redo it.\n\nRevise"),
            "{text}"
        );
        let text = revise_prompt(&Critique {
            issues: Vec::new(),
            score: 0.5,
            summary: "Too vague.".into(),
        });
        assert!(text.contains("Issues:\n- Too vague.\n\nRevise"), "{text}");
        let text = revise_prompt(&Critique {
            issues: Vec::new(),
            score: 0.5,
            summary: String::new(),
        });
        assert!(text.contains("Issues:\n- The answer is not yet"), "{text}");
        // A revision request, echoed back to the critic, is no score.
        assert_eq!(parse_critique(&format!("Echo: {text}")).score, 0.0);
    }
}
