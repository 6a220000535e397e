//! Debate: several debaters answer the task independently, then revise
//! their answers over rounds after reading each other's; a judge (or a
//! majority vote) settles the final answer.
//!
//! 1. **Round 0.** Each of the `debaters` debaters, in order, answers the
//!    task in one completion with role `debater` and no tools. Its system
//!    message is `You are debater <i> of <n>.` (numbered from 1) followed
//!    by the agent's instructions; then come the session's history (its
//!    non-system messages) and one user message holding the task.
//! 2. **Rounds 1..=`rounds`.** Each debater, in order, sees the same
//!    context and one user message holding the task, its own previous
//!    answer and the other debaters' answers of the previous round, and
//!    gives its revised answer. A blank revision keeps the previous
//!    answer.
//! 3. **Convergence.** After every round (round 0 included), when every
//!    pair of answers has a token-set Jaccard similarity of at least
//!    `convergence` (answers lowercased and split on whitespace; two empty
//!    answers are identical), the debate ends early.
//! 4. **Decision.** With `judge`, one completion with role `judge` and no
//!    tools sees a judge system message (then the agent's instructions),
//!    the history, and one user message holding the task and every
//!    debater's final answer, and writes the final answer. Without
//!    `judge`, a majority vote over the final answers (lowercased, runs of
//!    whitespace collapsed, trimmed) picks the answer; a tie goes to the
//!    answer that appears first, and the output keeps that debater's
//!    original text.
//!
//! Every completion is a harness completion, so it counts as a turn
//! against `max-turns` and is charged to the run's user. The turn cap is
//! checked before each completion: when it is reached, the run ends
//! interrupted with reason `max_turns` and the first debater's latest
//! answer (empty before it has one) as output.
//!
//! The run adds to the session the seed (instructions for a new session,
//! then the prompt) and one assistant message with the output (when it is
//! not empty). The debaters' answers stay out of the session.
//!
//! # Configuration
//!
//! * `debaters` (integer, 2 to 6, default 3): debaters.
//! * `rounds` (integer, 0 to 5, default 2): revision rounds after round 0
//!   at most.
//! * `convergence` (number, 0 to 1, default 0.85): the pairwise Jaccard
//!   similarity that ends the debate early (1 means identical token sets).
//! * `judge` (boolean, default true): a judge writes the final answer;
//!   `false` takes a majority vote instead.
//!
//! Unknown keys are refused (`invalid-config`).
//!
//! # Events
//!
//! * `round` — `{"round": <r>}` as each round starts (round 0 first).
//! * `response` — `{"round": <r>, "debater": <i>, "text": <excerpt>}` after
//!   each answer (debaters numbered from 1; the first 200 characters).
//! * `converged` — `{"round": <r>}` when the answers converge.
//! * `judged` — `{"debaters": <n>}` once the judge has answered.
//! * `voted` — `{"winner": <i>, "votes": <n>}` once the vote is counted
//!   (the winner numbered from 1).

use std::collections::HashSet;

use loom_sdk::arch::{
    self, Architecture, ArchitectureInfo, CompletionRequest, Message, Run, RunError, RunInput,
    RunOutput,
};
use serde::Deserialize;

/// The JSON Schema of the configuration.
const CONFIG_SCHEMA: &str = r#"{"type":"object","properties":{"debaters":{"type":"integer","minimum":2,"maximum":6,"default":3},"rounds":{"type":"integer","minimum":0,"maximum":5,"default":2},"convergence":{"type":"number","minimum":0,"maximum":1,"default":0.85},"judge":{"type":"boolean","default":true}},"additionalProperties":false}"#;

/// The longest excerpt of a `response` event, in characters.
const EXCERPT_CHARS: usize = 200;

/// The judge's system message, before the agent's instructions.
const JUDGE_SYSTEM: &str = "You are the judge of a debate. Several debaters answered the same \
task and revised their answers after reading each other's. Weigh their final answers, settle \
their disagreements on the merits, and write the single best final answer to the task.";

/// The configuration object.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    /// Debaters.
    debaters: u32,
    /// Revision rounds after round 0 at most.
    rounds: u32,
    /// Pairwise similarity that ends the debate early.
    convergence: f64,
    /// Whether a judge (else a vote) decides.
    judge: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            debaters: 3,
            rounds: 2,
            convergence: 0.85,
            judge: true,
        }
    }
}

/// Parse and check the configuration text.
fn parse_config(text: &str) -> Result<Config, RunError> {
    let config: Config = arch::config_from_str(text)?;
    if !(2..=6).contains(&config.debaters) {
        return Err(RunError::invalid_config(format!(
            "debaters must be from 2 to 6, not {}",
            config.debaters
        )));
    }
    if config.rounds > 5 {
        return Err(RunError::invalid_config(format!(
            "rounds must be from 0 to 5, not {}",
            config.rounds
        )));
    }
    if !(0.0..=1.0).contains(&config.convergence) {
        return Err(RunError::invalid_config(format!(
            "convergence must be from 0 to 1, not {}",
            config.convergence
        )));
    }
    Ok(config)
}

/// `text` lowercased with runs of whitespace collapsed to one space and
/// trimmed.
fn normalise(text: &str) -> String {
    text.split_whitespace()
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The token-set Jaccard similarity of `a` and `b` (lowercased, split on
/// whitespace): shared tokens over all tokens; 1 for two empty texts.
fn jaccard(a: &str, b: &str) -> f64 {
    let a: HashSet<String> = a.split_whitespace().map(str::to_lowercase).collect();
    let b: HashSet<String> = b.split_whitespace().map(str::to_lowercase).collect();
    let union = a.union(&b).count();
    if union == 0 {
        return 1.0;
    }
    a.intersection(&b).count() as f64 / union as f64
}

/// True when every pair of `answers` is at least `threshold` similar.
fn converged(answers: &[String], threshold: f64) -> bool {
    answers
        .iter()
        .enumerate()
        .all(|(i, a)| answers[i + 1..].iter().all(|b| jaccard(a, b) >= threshold))
}

/// The index of the majority answer (compared normalised) and its votes;
/// a tie goes to the answer that appears first. `None` for no answers.
fn majority(answers: &[String]) -> Option<(usize, usize)> {
    let normalised: Vec<String> = answers.iter().map(|a| normalise(a)).collect();
    let mut best: Option<(usize, usize)> = None;
    for (i, answer) in normalised.iter().enumerate() {
        if normalised[..i].contains(answer) {
            continue;
        }
        let votes = normalised.iter().filter(|a| *a == answer).count();
        if best.is_none_or(|(_, most)| votes > most) {
            best = Some((i, votes));
        }
    }
    best
}

/// The first `EXCERPT_CHARS` characters of `text`.
fn excerpt(text: &str) -> String {
    text.chars().take(EXCERPT_CHARS).collect()
}

/// The system message of debater `index` (from 0) of `count`.
fn debater_system(index: usize, count: usize, instructions: &str) -> String {
    let header = format!("You are debater {} of {count}.", index + 1);
    if instructions.is_empty() {
        header
    } else {
        format!("{header}\n\n{instructions}")
    }
}

/// The round-0 request text.
fn opening_text(task: &str) -> String {
    format!(
        "Task:\n{task}\n\nAnswer the task on your own: the other debaters will read your \
         answer. Reply with your answer only."
    )
}

/// The request text of debater `index` in a later round: the task, its
/// previous answer and the others' (`previous` holds every debater's
/// answer of the previous round).
fn revision_text(task: &str, index: usize, previous: &[String]) -> String {
    let others = previous
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != index)
        .map(|(i, answer)| format!("Debater {}:\n{answer}", i + 1))
        .collect::<Vec<_>>()
        .join("\n\n");
    format!(
        "Task:\n{task}\n\nYour previous answer:\n{}\n\nThe other debaters' answers:\n\n{others}\n\n\
         Consider their arguments: keep what you still find right, fix what they showed wrong. \
         Give your revised answer to the task. Reply with your answer only.",
        previous[index]
    )
}

/// The judge's request text.
fn judge_text(task: &str, answers: &[String]) -> String {
    let answers = answers
        .iter()
        .enumerate()
        .map(|(i, answer)| format!("Debater {}:\n{answer}", i + 1))
        .collect::<Vec<_>>()
        .join("\n\n");
    format!(
        "Task:\n{task}\n\nThe debaters' final answers:\n\n{answers}\n\nWrite the final answer \
         to the task. Reply with the answer only."
    )
}

/// `system`, the session's history without its system messages, then one
/// user message of `text`.
fn messages(system: String, history: &[Message], text: String) -> Vec<Message> {
    let mut messages = arch::context(&system, history);
    messages.push(Message::user(text));
    messages
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

/// The run ended with `output` (interrupted for `max_turns` when
/// `interrupted`), adding it to the session when it is not empty.
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

/// The first debater's latest answer, or empty.
fn best_available(answers: &[String]) -> String {
    answers.first().cloned().unwrap_or_default()
}

struct Debate;

impl Architecture for Debate {
    fn describe() -> ArchitectureInfo {
        ArchitectureInfo {
            name: "debate".into(),
            description: "Several debaters answer the task independently, then revise their \
                          answers over rounds after reading each other's until they converge; \
                          a judge writes the final answer, or a majority vote picks it (no \
                          tools)"
                .into(),
            workers: Vec::new(),
            config_schema: CONFIG_SCHEMA.into(),
        }
    }

    fn run(input: RunInput) -> Result<RunOutput, RunError> {
        let config = parse_config(&input.config)?;
        let mut run = Run::seed(&input);
        let count = config.debaters as usize;
        let task = input.prompt.as_str();
        let ask = |run: &mut Run, role: &str, system: String, text: String| {
            run.complete_request(&request(role, messages(system, &input.history, text)))
                .map(|completion| completion.message.content)
        };

        arch::emit("round", serde_json::json!({ "round": 0 }));
        let mut answers: Vec<String> = Vec::with_capacity(count);
        for index in 0..count {
            if run.out_of_turns() {
                return Ok(end(run, best_available(&answers), true));
            }
            let system = debater_system(index, count, &input.instructions);
            let answer = ask(&mut run, "debater", system, opening_text(task))?;
            arch::emit(
                "response",
                serde_json::json!({ "round": 0, "debater": index + 1, "text": excerpt(&answer) }),
            );
            answers.push(answer);
        }

        let mut round = 0;
        while !converged(&answers, config.convergence) && round < config.rounds {
            round += 1;
            arch::emit("round", serde_json::json!({ "round": round }));
            let previous = answers.clone();
            for index in 0..count {
                if run.out_of_turns() {
                    return Ok(end(run, best_available(&answers), true));
                }
                let system = debater_system(index, count, &input.instructions);
                let answer = ask(
                    &mut run,
                    "debater",
                    system,
                    revision_text(task, index, &previous),
                )?;
                arch::emit(
                    "response",
                    serde_json::json!({
                        "round": round,
                        "debater": index + 1,
                        "text": excerpt(&answer),
                    }),
                );
                if !answer.trim().is_empty() {
                    answers[index] = answer;
                }
            }
        }
        if converged(&answers, config.convergence) {
            arch::emit("converged", serde_json::json!({ "round": round }));
        }

        if config.judge {
            if run.out_of_turns() {
                return Ok(end(run, best_available(&answers), true));
            }
            let system = if input.instructions.is_empty() {
                JUDGE_SYSTEM.to_owned()
            } else {
                format!("{JUDGE_SYSTEM}\n\n{}", input.instructions)
            };
            let answer = ask(&mut run, "judge", system, judge_text(task, &answers))?;
            arch::emit("judged", serde_json::json!({ "debaters": count }));
            Ok(end(run, answer, false))
        } else {
            let (winner, votes) = majority(&answers).unwrap_or((0, 0));
            arch::emit(
                "voted",
                serde_json::json!({ "winner": winner + 1, "votes": votes }),
            );
            let answer = answers.get(winner).cloned().unwrap_or_default();
            Ok(end(run, answer, false))
        }
    }
}

loom_sdk::export_architecture!(Debate);

#[cfg(test)]
mod tests {
    use super::*;
    use loom_sdk::arch::Role;

    fn strings(texts: &[&str]) -> Vec<String> {
        texts.iter().map(|t| (*t).to_owned()).collect()
    }

    #[test]
    fn config_defaults_and_checks() {
        assert_eq!(parse_config("").unwrap(), Config::default());
        assert_eq!(parse_config("{}").unwrap(), Config::default());
        assert_eq!(
            parse_config(r#"{"debaters": 6, "rounds": 0, "convergence": 1, "judge": false}"#)
                .unwrap(),
            Config {
                debaters: 6,
                rounds: 0,
                convergence: 1.0,
                judge: false,
            }
        );
        for bad in [
            r#"{"debaters": 1}"#,
            r#"{"debaters": 7}"#,
            r#"{"rounds": 6}"#,
            r#"{"rounds": -1}"#,
            r#"{"convergence": 1.1}"#,
            r#"{"convergence": -0.5}"#,
            r#"{"judge": "yes"}"#,
            r#"{"judges": true}"#,
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
        let p = &schema["properties"];
        let d = Config::default();
        assert_eq!(p["debaters"]["default"], serde_json::json!(d.debaters));
        assert_eq!(p["rounds"]["default"], serde_json::json!(d.rounds));
        assert_eq!(
            p["convergence"]["default"],
            serde_json::json!(d.convergence)
        );
        assert_eq!(p["judge"]["default"], serde_json::json!(d.judge));
        assert_eq!(p["debaters"]["minimum"], serde_json::json!(2));
        assert_eq!(p["debaters"]["maximum"], serde_json::json!(6));
        assert_eq!(p["rounds"]["maximum"], serde_json::json!(5));
        assert_eq!(schema["additionalProperties"], serde_json::json!(false));
        assert_eq!(p.as_object().unwrap().len(), 4);
    }

    #[test]
    fn jaccard_compares_token_sets_ignoring_case_and_spacing() {
        assert_eq!(jaccard("The answer is 4", "the  answer\nIS 4"), 1.0);
        assert_eq!(jaccard("a b", "b c"), 1.0 / 3.0);
        assert_eq!(jaccard("a a b", "a b b"), 1.0);
        assert_eq!(jaccard("a", "b"), 0.0);
        assert_eq!(jaccard("", "  "), 1.0);
        assert_eq!(jaccard("a", ""), 0.0);
    }

    #[test]
    fn convergence_needs_every_pair() {
        let same = strings(&["It is 4", "it is 4", "IT IS 4"]);
        assert!(converged(&same, 1.0));
        let one_off = strings(&["a b c d", "a b c d", "a b c e"]);
        assert!(!converged(&one_off, 0.85));
        assert!(converged(&one_off, 0.6));
        assert!(converged(&strings(&["x", "y"]), 0.0));
        assert!(!converged(&strings(&["x", "y"]), 0.01));
    }

    #[test]
    fn majority_vote_normalises_and_ties_go_first() {
        let answers = strings(&["Paris", "London", " paris ", "LONDON"]);
        assert_eq!(majority(&answers), Some((0, 2)));
        let answers = strings(&["Rome", "Paris", "paris"]);
        assert_eq!(majority(&answers), Some((1, 2)));
        let answers = strings(&["a", "b", "c"]);
        assert_eq!(majority(&answers), Some((0, 1)));
        assert_eq!(majority(&[]), None);
        assert_eq!(normalise("  The\n Answer  IS "), "the answer is");
    }

    #[test]
    fn excerpts_stop_at_200_chars() {
        assert_eq!(excerpt("short"), "short");
        let long = "é".repeat(300);
        assert_eq!(excerpt(&long).chars().count(), 200);
    }

    #[test]
    fn prompts_hold_what_each_step_needs() {
        assert_eq!(debater_system(0, 3, ""), "You are debater 1 of 3.");
        assert_eq!(
            debater_system(2, 3, "be brief"),
            "You are debater 3 of 3.\n\nbe brief"
        );
        let opening = opening_text("add 2 and 2");
        assert!(opening.starts_with("Task:\nadd 2 and 2\n\nAnswer the task on your own"));

        let previous = strings(&["4", "5", "four"]);
        let text = revision_text("add 2 and 2", 1, &previous);
        assert!(text.contains("Task:\nadd 2 and 2"), "{text}");
        assert!(text.contains("Your previous answer:\n5"), "{text}");
        assert!(
            text.contains("The other debaters' answers:\n\nDebater 1:\n4\n\nDebater 3:\nfour"),
            "{text}"
        );
        assert!(!text.contains("Debater 2:"), "{text}");

        let judge = judge_text("t", &strings(&["a", "b"]));
        assert!(judge.contains("Task:\nt"), "{judge}");
        assert!(
            judge.contains("The debaters' final answers:\n\nDebater 1:\na\n\nDebater 2:\nb"),
            "{judge}"
        );
    }

    #[test]
    fn messages_are_system_history_then_request() {
        let history = vec![
            Message::system("old"),
            Message::user("before"),
            Message::assistant("reply"),
        ];
        let messages = messages("sys".into(), &history, "req".into());
        let shape: Vec<_> = messages
            .iter()
            .map(|m| (m.role, m.content.as_str()))
            .collect();
        assert_eq!(
            shape,
            vec![
                (Role::System, "sys"),
                (Role::User, "before"),
                (Role::Assistant, "reply"),
                (Role::User, "req"),
            ]
        );
        let request = request("judge", messages);
        assert!(request.tools.is_empty());
        assert_eq!(request.role.as_deref(), Some("judge"));
    }

    #[test]
    fn the_best_available_answer_is_the_first_debaters() {
        assert_eq!(best_available(&strings(&["a", "b"])), "a");
        assert_eq!(best_available(&[]), "");
    }
}
