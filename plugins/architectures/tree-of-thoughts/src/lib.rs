//! Tree of thoughts: a breadth-first beam search over reasoning steps
//! ("thoughts"), each proposed and scored by the model, then one
//! completion that turns the best chain of thoughts into the answer.
//!
//! The search starts from the task (the prompt) as its root. For each
//! depth `1..=max_depth`:
//!
//! 1. **Propose.** For each node of the frontier (at depth 1 only the
//!    root), one completion with role `proposer` and no tools asks for
//!    `branch_factor` different next thoughts, numbered, given the task and
//!    the chain of thoughts from the root to that node. The reply's
//!    numbered lines (`1.`, `2)`, `3:`, `(4)`) are the thoughts; without
//!    any, its bulleted lines (`-`, `*`, `•`); lines that follow an item
//!    belong to it. A reply with neither is one thought as a whole; a blank
//!    reply is none. At most `branch_factor` thoughts are kept per node.
//! 2. **Evaluate.** Each candidate gets one completion with role
//!    `evaluator` and no tools that sees the task, the chain and the
//!    candidate and rates the candidate from 0 to 1. The score is read
//!    from `Score: 0.7` (also `score = 7/10`, `Score: 70%`), else from a
//!    line that is only a number, else a percentage, else `x/10`, else a
//!    decimal number anywhere; a bare number above 1 counts as out of 10
//!    (up to 10) or out of 100 (up to 100). A reply without a score scores
//!    0.
//! 3. **Select.** Candidates scoring below `min_score` are dropped; the
//!    best `beam_width` of the rest (ties keep the earlier candidate)
//!    become the next frontier. A candidate scoring at least
//!    `solved_threshold` ends the search at once with its chain; an empty
//!    beam ends it with the best chain so far.
//!
//! The best chain is the solved candidate's, else the top of the last
//! non-empty beam. Finally one completion with role `synthesizer` and no
//! tools sees the task and that chain (or the task alone when no thought
//! survived) and writes the final answer, which is the run's output. The
//! output is always an answer, never a bare thought.
//!
//! The proposer and synthesizer see the agent's instructions (as a system
//! message, when there are any) and the session's history (its non-system
//! messages) before their request; the evaluator sees its own system
//! message and the request only. Every completion is a harness completion,
//! so it counts as a turn against `max-turns` and is charged to the run's
//! user. The turn cap is checked before each completion: when it is
//! reached, the run ends interrupted with reason `max_turns` and the last
//! thought of the best chain so far (empty when there is none) as output.
//!
//! The run adds to the session the seed (instructions for a new session,
//! then the prompt) and one assistant message with the output (when it is
//! not empty). Proposals and evaluations stay out of the session.
//!
//! # Configuration
//!
//! * `branch_factor` (integer, 1 to 8, default 3): thoughts asked for per
//!   frontier node.
//! * `max_depth` (integer, 1 to 6, default 3): depths searched at most.
//! * `beam_width` (integer, 1 to 8, default 2): frontier nodes kept per
//!   depth.
//! * `solved_threshold` (number, 0 to 1, default 1.0): a candidate scoring
//!   at least this ends the search.
//! * `min_score` (number, 0 to 1, default 0.0): candidates scoring below
//!   this are dropped.
//!
//! Unknown keys are refused (`invalid-config`).
//!
//! # Events
//!
//! * `level` — `{"depth": <d>, "frontier": <nodes>}` as each depth starts.
//! * `proposed` — `{"depth": <d>, "count": <candidates>}` once the depth's
//!   proposals are in.
//! * `evaluated` — `{"depth": <d>, "best": <score or null>, "kept": <n>}`
//!   once the depth's candidates are scored and the beam selected.
//! * `solved` — `{"depth": <d>, "score": <s>}` when a candidate reaches
//!   `solved_threshold`.
//! * `synthesized` — `{"chain": <thoughts in the chain>}` once the final
//!   answer is written.

use loom_sdk::arch::{
    self, Architecture, ArchitectureInfo, CompletionRequest, Message, Run, RunError, RunInput,
    RunOutput,
};
use serde::Deserialize;

/// The JSON Schema of the configuration.
const CONFIG_SCHEMA: &str = r#"{"type":"object","properties":{"branch_factor":{"type":"integer","minimum":1,"maximum":8,"default":3},"max_depth":{"type":"integer","minimum":1,"maximum":6,"default":3},"beam_width":{"type":"integer","minimum":1,"maximum":8,"default":2},"solved_threshold":{"type":"number","minimum":0,"maximum":1,"default":1.0},"min_score":{"type":"number","minimum":0,"maximum":1,"default":0.0}},"additionalProperties":false}"#;

/// The evaluator's system message.
const EVALUATOR_SYSTEM: &str = "You are an evaluator. You judge how promising one proposed \
reasoning step is for solving a task: whether it is correct and whether it makes progress \
toward the answer. You do not solve the task yourself.";

/// The configuration object.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    /// Thoughts asked for per frontier node.
    branch_factor: u32,
    /// Depths searched at most.
    max_depth: u32,
    /// Frontier nodes kept per depth.
    beam_width: u32,
    /// A candidate scoring at least this ends the search.
    solved_threshold: f64,
    /// Candidates scoring below this are dropped.
    min_score: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            branch_factor: 3,
            max_depth: 3,
            beam_width: 2,
            solved_threshold: 1.0,
            min_score: 0.0,
        }
    }
}

/// Parse and check the configuration text.
fn parse_config(text: &str) -> Result<Config, RunError> {
    let config: Config = arch::config_from_str(text)?;
    let check_int = |name: &str, value: u32, max: u32| {
        if (1..=max).contains(&value) {
            Ok(())
        } else {
            Err(RunError::invalid_config(format!(
                "{name} must be from 1 to {max}, not {value}"
            )))
        }
    };
    check_int("branch_factor", config.branch_factor, 8)?;
    check_int("max_depth", config.max_depth, 6)?;
    check_int("beam_width", config.beam_width, 8)?;
    for (name, value) in [
        ("solved_threshold", config.solved_threshold),
        ("min_score", config.min_score),
    ] {
        if !(0.0..=1.0).contains(&value) {
            return Err(RunError::invalid_config(format!(
                "{name} must be from 0 to 1, not {value}"
            )));
        }
    }
    Ok(config)
}

/// The item text of `line` when it starts with a numbered marker (`1.`,
/// `2)`, `3:`, `(4)`) followed by text.
fn numbered_item(line: &str) -> Option<&str> {
    let line = line.trim_start();
    let (rest, needs_close) = match line.strip_prefix('(') {
        Some(rest) => (rest, true),
        None => (line, false),
    };
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    if digits == 0 || digits > 3 {
        return None;
    }
    let rest = &rest[digits..];
    let rest = if needs_close {
        rest.strip_prefix(')')?
    } else {
        rest.strip_prefix(['.', ')', ':'])?
    };
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let text = rest.trim();
    (!text.is_empty()).then_some(text)
}

/// The item text of `line` when it starts with a bullet (`-`, `*`, `•`)
/// followed by text.
fn bulleted_item(line: &str) -> Option<&str> {
    let rest = line.trim_start().strip_prefix(['-', '*', '•'])?;
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let text = rest.trim();
    (!text.is_empty()).then_some(text)
}

/// The thoughts of a proposer's `reply`, at most `limit`: its numbered
/// items, else its bulleted items (a non-blank line after an item
/// continues it; lines before the first item are dropped), else the whole
/// reply as one thought (none when it is blank).
fn parse_thoughts(reply: &str, limit: usize) -> Vec<String> {
    let marker: fn(&str) -> Option<&str> = if reply.lines().any(|l| numbered_item(l).is_some()) {
        numbered_item
    } else {
        bulleted_item
    };
    let mut thoughts: Vec<String> = Vec::new();
    let mut in_item = false;
    for line in reply.lines() {
        if let Some(text) = marker(line) {
            thoughts.push(text.to_owned());
            in_item = true;
        } else if line.trim().is_empty() {
            in_item = false;
        } else if in_item && let Some(last) = thoughts.last_mut() {
            last.push('\n');
            last.push_str(line.trim());
        }
    }
    if thoughts.is_empty() {
        let whole = reply.trim();
        if !whole.is_empty() {
            thoughts.push(whole.to_owned());
        }
    }
    thoughts.truncate(limit);
    thoughts
}

/// What follows a number read from text.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Scale {
    /// Nothing: 0..1, else out of 10, else out of 100.
    Plain,
    /// `%`.
    Percent,
    /// `/d`.
    OutOf(f64),
}

/// A number read from text.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Number {
    /// Its value.
    value: f64,
    /// What followed it.
    scale: Scale,
    /// Whether it was written with a decimal point.
    decimal: bool,
    /// Bytes read, suffix included.
    len: usize,
}

impl Number {
    /// The number as a score in 0..=1.
    fn score(&self) -> f64 {
        let score = match self.scale {
            Scale::Percent => self.value / 100.0,
            Scale::OutOf(denominator) => self.value / denominator,
            Scale::Plain if self.value <= 1.0 => self.value,
            Scale::Plain if self.value <= 10.0 => self.value / 10.0,
            Scale::Plain => self.value / 100.0,
        };
        score.clamp(0.0, 1.0)
    }
}

/// The number at the start of `text` (digits with at most one decimal
/// point; the first char a digit) and its scale suffix (`%`, `/d`).
fn number_at(text: &str) -> Option<Number> {
    let bytes = text.as_bytes();
    if !bytes.first()?.is_ascii_digit() {
        return None;
    }
    let mut end = 0;
    let mut decimal = false;
    while end < bytes.len() {
        let b = bytes[end];
        if b.is_ascii_digit() {
            end += 1;
        } else if b == b'.' && !decimal && bytes.get(end + 1).is_some_and(u8::is_ascii_digit) {
            decimal = true;
            end += 1;
        } else {
            break;
        }
    }
    let value: f64 = text[..end].parse().ok()?;
    let number = |scale, len| Number {
        value,
        scale,
        decimal,
        len,
    };
    let trimmed = text[end..].trim_start();
    if let Some(after) = trimmed.strip_prefix('%') {
        return Some(number(Scale::Percent, text.len() - after.len()));
    }
    if let Some(after) = trimmed.strip_prefix('/') {
        let after = after.trim_start();
        if let Some(denominator) = number_at(after)
            && denominator.scale == Scale::Plain
            && denominator.value > 0.0
        {
            let len = text.len() - after.len() + denominator.len;
            return Some(number(Scale::OutOf(denominator.value), len));
        }
    }
    Some(number(Scale::Plain, end))
}

/// Every number in `text` that starts a word (not right after a letter,
/// digit or point).
fn numbers(text: &str) -> Vec<Number> {
    let mut found = Vec::new();
    let mut previous: Option<char> = None;
    let mut index = 0;
    while index < text.len() {
        let rest = &text[index..];
        let starts_word = !previous.is_some_and(|c| c.is_alphanumeric() || c == '.');
        if starts_word && let Some(number) = number_at(rest) {
            found.push(number);
            index += number.len;
            previous = text[..index].chars().next_back();
            continue;
        }
        let c = rest.chars().next().unwrap_or(' ');
        previous = Some(c);
        index += c.len_utf8();
    }
    found
}

/// The score in an evaluator's `reply`, in 0..=1: after `score:` or
/// `score =` (any case), else a line that is only a number (markdown
/// emphasis and a final point allowed), else the first percentage, else
/// the first `x/d`, else the first decimal number (bare integers in prose
/// are not scores); 0 when there is none. See [`Number::score`] for the
/// scale.
fn parse_score(reply: &str) -> f64 {
    let lower = reply.to_lowercase();
    let mut from = 0;
    while let Some(at) = lower[from..].find("score") {
        from += at + "score".len();
        let after = lower[from..].trim_start();
        if let Some(after) = after.strip_prefix([':', '=']) {
            let after = after.trim_start().trim_start_matches(['*', '_']);
            if let Some(number) = number_at(after) {
                return number.score();
            }
        }
    }
    for line in lower.lines() {
        let line = line
            .trim()
            .trim_matches(['*', '_', '`'])
            .trim_end_matches('.')
            .trim();
        if let Some(number) = number_at(line)
            && number.len == line.len()
        {
            return number.score();
        }
    }
    let all = numbers(&lower);
    all.iter()
        .find(|n| n.scale == Scale::Percent)
        .or_else(|| all.iter().find(|n| matches!(n.scale, Scale::OutOf(_))))
        .or_else(|| all.iter().find(|n| n.decimal))
        .map_or(0.0, Number::score)
}

/// The indices of the candidates kept in the beam: scores at least
/// `min_score`, best first, at most `beam_width`; ties keep the earlier
/// candidate first.
fn select_beam(scores: &[f64], min_score: f64, beam_width: usize) -> Vec<usize> {
    let mut kept: Vec<usize> = (0..scores.len())
        .filter(|&i| scores[i] >= min_score)
        .collect();
    kept.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    kept.truncate(beam_width);
    kept
}

/// The first candidate (in order) that scores at least `min_score` and
/// `solved_threshold`, preferring the highest score.
fn solved(scores: &[f64], min_score: f64, solved_threshold: f64) -> Option<usize> {
    select_beam(scores, min_score, 1)
        .into_iter()
        .find(|&i| scores[i] >= solved_threshold)
}

/// One thought of the tree.
#[derive(Debug, Clone)]
struct Node {
    /// The thought.
    thought: String,
    /// The node it extends; `None` for a child of the root (the task).
    parent: Option<usize>,
}

/// The thoughts from the root to `leaf`, in order.
fn chain(nodes: &[Node], leaf: Option<usize>) -> Vec<&str> {
    let mut thoughts = Vec::new();
    let mut at = leaf;
    while let Some(index) = at {
        thoughts.push(nodes[index].thought.as_str());
        at = nodes[index].parent;
    }
    thoughts.reverse();
    thoughts
}

/// The chain rendered for a prompt: `Step n:` and the thought, per step.
fn render_chain(chain: &[&str]) -> String {
    chain
        .iter()
        .enumerate()
        .map(|(i, thought)| format!("Step {}:\n{thought}", i + 1))
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// The proposer's request text.
fn propose_text(task: &str, chain: &[&str], branch_factor: u32) -> String {
    let steps = if chain.is_empty() {
        "Reasoning so far: none yet.".to_owned()
    } else {
        format!("Reasoning so far:\n{}", render_chain(chain))
    };
    format!(
        "Task:\n{task}\n\n{steps}\n\nPropose {branch_factor} different possible next steps of \
         reasoning toward solving the task, each continuing the reasoning so far. Reply with \
         exactly {branch_factor} numbered lines, one step per line, and nothing else."
    )
}

/// The evaluator's messages: its system message, then the task, the chain
/// and the candidate in one user message.
fn evaluate_messages(task: &str, chain: &[&str], candidate: &str) -> Vec<Message> {
    let steps = if chain.is_empty() {
        "Reasoning so far: none yet.".to_owned()
    } else {
        format!("Reasoning so far:\n{}", render_chain(chain))
    };
    vec![
        Message::system(EVALUATOR_SYSTEM),
        Message::user(format!(
            "Task:\n{task}\n\n{steps}\n\nProposed next step:\n{candidate}\n\nRate how \
             promising the proposed next step is for solving the task, as a number between \
             zero and one, where one means it solves the task. Explain briefly, then end with \
             a line of the form \"Score: <number>\"."
        )),
    ]
}

/// The synthesizer's request text.
fn synthesize_text(task: &str, chain: &[&str]) -> String {
    if chain.is_empty() {
        format!("Task:\n{task}\n\nWrite the final answer to the task. Reply with the answer only.")
    } else {
        format!(
            "Task:\n{task}\n\nBest reasoning found:\n{}\n\nUsing this reasoning, write the \
             final answer to the task. Reply with the answer only.",
            render_chain(chain)
        )
    }
}

/// The context before a proposer's or synthesizer's request: the agent's
/// instructions (when any) as a system message, then the session's
/// history without its system messages.
fn context(input: &RunInput) -> Vec<Message> {
    arch::context(&input.instructions, &input.history)
}

/// `context` followed by one user message of `text`.
fn with_request(context: &[Message], text: String) -> Vec<Message> {
    let mut messages = context.to_vec();
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

/// The run's interrupted output: the last thought of the best chain.
fn out_of_turns(mut run: Run, nodes: &[Node], best: Option<usize>) -> RunOutput {
    let output = best.map(|i| nodes[i].thought.clone()).unwrap_or_default();
    if !output.is_empty() {
        run.push(Message::assistant(output.clone()));
    }
    run.interrupted_with(output, "max_turns")
}

struct TreeOfThoughts;

impl Architecture for TreeOfThoughts {
    fn describe() -> ArchitectureInfo {
        ArchitectureInfo {
            name: "tree-of-thoughts".into(),
            description: "Breadth-first beam search over reasoning steps: per depth a proposer \
                          suggests next thoughts for each kept chain, an evaluator scores each \
                          from 0 to 1 and the best are kept, then a synthesizer writes the \
                          final answer from the best chain (no tools)"
                .into(),
            workers: Vec::new(),
            config_schema: CONFIG_SCHEMA.into(),
        }
    }

    fn run(input: RunInput) -> Result<RunOutput, RunError> {
        let config = parse_config(&input.config)?;
        let mut run = Run::seed(&input);
        let context = context(&input);
        let task = input.prompt.as_str();

        let mut nodes: Vec<Node> = Vec::new();
        let mut frontier: Vec<Option<usize>> = vec![None];
        let mut best: Option<usize> = None;

        for depth in 1..=config.max_depth {
            arch::emit(
                "level",
                serde_json::json!({ "depth": depth, "frontier": frontier.len() }),
            );
            let mut candidates: Vec<Node> = Vec::new();
            for &parent in &frontier {
                if run.out_of_turns() {
                    return Ok(out_of_turns(run, &nodes, best));
                }
                let text = propose_text(task, &chain(&nodes, parent), config.branch_factor);
                let reply = run
                    .complete_request(&request("proposer", with_request(&context, text)))?
                    .message
                    .content;
                candidates.extend(
                    parse_thoughts(&reply, config.branch_factor as usize)
                        .into_iter()
                        .map(|thought| Node { thought, parent }),
                );
            }
            arch::emit(
                "proposed",
                serde_json::json!({ "depth": depth, "count": candidates.len() }),
            );

            let mut scores = Vec::with_capacity(candidates.len());
            for candidate in &candidates {
                if run.out_of_turns() {
                    return Ok(out_of_turns(run, &nodes, best));
                }
                let messages =
                    evaluate_messages(task, &chain(&nodes, candidate.parent), &candidate.thought);
                let reply = run
                    .complete_request(&request("evaluator", messages))?
                    .message
                    .content;
                scores.push(parse_score(&reply));
            }

            let beam = select_beam(&scores, config.min_score, config.beam_width as usize);
            let top = scores.iter().copied().reduce(f64::max);
            arch::emit(
                "evaluated",
                serde_json::json!({ "depth": depth, "best": top, "kept": beam.len() }),
            );
            if let Some(winner) = solved(&scores, config.min_score, config.solved_threshold) {
                arch::emit(
                    "solved",
                    serde_json::json!({ "depth": depth, "score": scores[winner] }),
                );
                nodes.push(candidates[winner].clone());
                best = Some(nodes.len() - 1);
                break;
            }
            if beam.is_empty() {
                break;
            }
            frontier = beam
                .iter()
                .map(|&i| {
                    nodes.push(candidates[i].clone());
                    Some(nodes.len() - 1)
                })
                .collect();
            best = frontier[0];
        }

        if run.out_of_turns() {
            return Ok(out_of_turns(run, &nodes, best));
        }
        let best_chain = chain(&nodes, best);
        let text = synthesize_text(task, &best_chain);
        let answer = run
            .complete_request(&request("synthesizer", with_request(&context, text)))?
            .message
            .content;
        arch::emit(
            "synthesized",
            serde_json::json!({ "chain": best_chain.len() }),
        );
        if !answer.is_empty() {
            run.push(Message::assistant(answer.clone()));
        }
        Ok(run.finish(answer))
    }
}

loom_sdk::export_architecture!(TreeOfThoughts);

#[cfg(test)]
mod tests {
    use super::*;
    use loom_sdk::arch::Role;

    #[test]
    fn config_defaults_and_checks() {
        assert_eq!(parse_config("").unwrap(), Config::default());
        assert_eq!(parse_config("{}").unwrap(), Config::default());
        assert_eq!(
            parse_config(r#"{"branch_factor": 8, "max_depth": 1, "beam_width": 1, "solved_threshold": 0.5, "min_score": 0.2}"#)
                .unwrap(),
            Config {
                branch_factor: 8,
                max_depth: 1,
                beam_width: 1,
                solved_threshold: 0.5,
                min_score: 0.2,
            }
        );
        for bad in [
            r#"{"branch_factor": 0}"#,
            r#"{"branch_factor": 9}"#,
            r#"{"max_depth": 0}"#,
            r#"{"max_depth": 7}"#,
            r#"{"beam_width": 0}"#,
            r#"{"beam_width": 9}"#,
            r#"{"solved_threshold": 1.5}"#,
            r#"{"solved_threshold": -0.1}"#,
            r#"{"min_score": 2}"#,
            r#"{"branch_factor": "3"}"#,
            r#"{"depth": 2}"#,
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
        assert_eq!(
            p["branch_factor"]["default"],
            serde_json::json!(d.branch_factor)
        );
        assert_eq!(p["max_depth"]["default"], serde_json::json!(d.max_depth));
        assert_eq!(p["beam_width"]["default"], serde_json::json!(d.beam_width));
        assert_eq!(
            p["solved_threshold"]["default"],
            serde_json::json!(d.solved_threshold)
        );
        assert_eq!(p["min_score"]["default"], serde_json::json!(d.min_score));
        assert_eq!(p["branch_factor"]["maximum"], serde_json::json!(8));
        assert_eq!(p["max_depth"]["maximum"], serde_json::json!(6));
        assert_eq!(p["beam_width"]["maximum"], serde_json::json!(8));
        assert_eq!(schema["additionalProperties"], serde_json::json!(false));
        assert_eq!(p.as_object().unwrap().len(), 5);
    }

    #[test]
    fn numbered_thoughts_are_parsed_with_continuations() {
        let reply = "Here are some steps:\n1. Add the tens.\n2) Add the units\n   then carry.\n\
                     3: Check the sum.\n(4) Extra one.\n";
        assert_eq!(
            parse_thoughts(reply, 3),
            vec![
                "Add the tens.",
                "Add the units\nthen carry.",
                "Check the sum."
            ]
        );
        assert_eq!(parse_thoughts(reply, 8).len(), 4);
        assert_eq!(parse_thoughts(reply, 8)[3], "Extra one.");
    }

    #[test]
    fn bullets_count_only_without_numbers() {
        assert_eq!(
            parse_thoughts("- first\n* second\n• third", 3),
            vec!["first", "second", "third"]
        );
        assert_eq!(
            parse_thoughts("1. first\n - detail\n2. second", 3),
            vec!["first\n- detail", "second"]
        );
    }

    #[test]
    fn unmarked_replies_are_one_thought_and_blank_ones_none() {
        assert_eq!(
            parse_thoughts("  Just add them.\nThen stop.  ", 3),
            vec!["Just add them.\nThen stop."]
        );
        assert!(parse_thoughts("  \n ", 3).is_empty());
        // Not markers: a year, a decimal, a dash without a space.
        assert_eq!(parse_thoughts("2024.5 was -odd", 3).len(), 1);
        assert_eq!(
            parse_thoughts("1.5 is the answer", 3),
            vec!["1.5 is the answer"]
        );
    }

    #[test]
    fn scores_parse_in_every_form() {
        let cases = [
            ("Score: 0.7", 0.7),
            ("The step is fine.\nscore = 0.4", 0.4),
            ("SCORE: 7/10", 0.7),
            ("Score: **0.9**", 0.9),
            ("Score: 85%", 0.85),
            ("Score: 8", 0.8),
            ("0.6", 0.6),
            ("Looks right.\n**0.3**\n", 0.3),
            ("1", 1.0),
            ("7", 0.7),
            ("I'd say 75% likely.", 0.75),
            ("I rate it 6/10 overall", 0.6),
            ("I rate it 6 / 10 overall", 0.6),
            ("About 0.25 here, 3 steps", 0.25),
            ("There are 0 errors", 0.0),
            ("No idea.", 0.0),
            ("", 0.0),
            ("Score: <number>", 0.0),
            ("Score: 1.5", 0.15),
            ("Score: 250", 1.0),
        ];
        for (text, want) in cases {
            let got = parse_score(text);
            assert!((got - want).abs() < 1e-9, "{text:?}: {got} != {want}");
        }
    }

    #[test]
    fn score_keyword_beats_other_numbers() {
        assert!((parse_score("Step 2 uses 0.5 of it. Score: 0.9") - 0.9).abs() < 1e-9);
        assert!((parse_score("score 3, Score: 0.2") - 0.2).abs() < 1e-9);
    }

    #[test]
    fn beam_keeps_the_best_above_the_minimum_ties_in_order() {
        assert_eq!(select_beam(&[0.2, 0.9, 0.5, 0.9], 0.0, 2), vec![1, 3]);
        assert_eq!(select_beam(&[0.2, 0.9, 0.5, 0.9], 0.0, 8), vec![1, 3, 2, 0]);
        assert_eq!(select_beam(&[0.2, 0.3], 0.25, 2), vec![1]);
        assert!(select_beam(&[0.2, 0.3], 0.5, 2).is_empty());
        assert!(select_beam(&[], 0.0, 2).is_empty());
        assert_eq!(select_beam(&[0.0, 0.0, 0.0], 0.0, 2), vec![0, 1]);
    }

    #[test]
    fn solved_needs_the_threshold_and_the_minimum() {
        assert_eq!(solved(&[0.5, 1.0, 1.0], 0.0, 1.0), Some(1));
        assert_eq!(solved(&[0.5, 0.8], 0.0, 0.7), Some(1));
        assert_eq!(solved(&[0.5, 0.6], 0.0, 1.0), None);
        assert_eq!(solved(&[0.5, 0.6], 0.7, 0.5), None);
        assert_eq!(solved(&[], 0.0, 0.0), None);
    }

    #[test]
    fn chains_run_from_the_root() {
        let nodes = vec![
            Node {
                thought: "a".into(),
                parent: None,
            },
            Node {
                thought: "b".into(),
                parent: Some(0),
            },
            Node {
                thought: "c".into(),
                parent: Some(1),
            },
        ];
        assert_eq!(chain(&nodes, Some(2)), vec!["a", "b", "c"]);
        assert!(chain(&nodes, None).is_empty());
        assert_eq!(render_chain(&["a", "b"]), "Step 1:\na\n\nStep 2:\nb");
    }

    #[test]
    fn prompts_hold_task_chain_and_request() {
        let first = propose_text("add 2 and 2", &[], 3);
        assert!(first.starts_with("Task:\nadd 2 and 2\n\nReasoning so far: none yet."));
        assert!(first.contains("Propose 3 different possible next steps"));
        assert!(first.contains("exactly 3 numbered lines"));
        // The echo model's reply to it is one thought: no line is an item.
        assert_eq!(parse_thoughts(&format!("Echo: {first}"), 3).len(), 1);

        let later = propose_text("t", &["x", "y"], 2);
        assert!(later.contains("Reasoning so far:\nStep 1:\nx\n\nStep 2:\ny"));

        let eval = evaluate_messages("t", &["x"], "y");
        assert_eq!(eval.len(), 2);
        assert_eq!(eval[0].role, Role::System);
        assert!(eval[0].content.starts_with("You are an evaluator"));
        let text = &eval[1].content;
        assert!(text.contains("Task:\nt"), "{text}");
        assert!(text.contains("Reasoning so far:\nStep 1:\nx"), "{text}");
        assert!(text.contains("Proposed next step:\ny"), "{text}");
        assert!(text.contains("Score: <number>"), "{text}");
        // The echo model's reply to it scores 0.
        assert_eq!(parse_score(&format!("Echo: {text}")), 0.0);

        let synth = synthesize_text("t", &["x"]);
        assert!(synth.contains("Task:\nt\n\nBest reasoning found:\nStep 1:\nx"));
        assert!(synth.contains("write the final answer"));
        let alone = synthesize_text("t", &[]);
        assert!(alone.starts_with("Task:\nt\n\nWrite the final answer"));
    }

    #[test]
    fn context_has_instructions_and_history_without_system() {
        let input = RunInput {
            instructions: "be brief".into(),
            history: vec![
                Message::system("old"),
                Message::user("before"),
                Message::assistant("reply"),
            ],
            prompt: "now".into(),
            config: "{}".into(),
            max_turns: 5,
        };
        let messages = with_request(&context(&input), "req".into());
        let shape: Vec<_> = messages
            .iter()
            .map(|m| (m.role, m.content.as_str()))
            .collect();
        assert_eq!(
            shape,
            vec![
                (Role::System, "be brief"),
                (Role::User, "before"),
                (Role::Assistant, "reply"),
                (Role::User, "req"),
            ]
        );
        let bare = RunInput {
            instructions: String::new(),
            history: Vec::new(),
            ..input
        };
        assert!(context(&bare).is_empty());
        let request = request("proposer", Vec::new());
        assert!(request.tools.is_empty());
        assert_eq!(request.role.as_deref(), Some("proposer"));
    }
}
