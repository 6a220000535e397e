//! Reflexion: attempt the task, let an evaluator score the attempt, and
//! when the score is too low let a reflector write a one-sentence lesson
//! that is stored in the user's memory and handed to the next attempt.
//!
//! For each attempt `a` (counting from 1, at most `max_attempts`):
//!
//! 1. **Recall.** Unless `lessons` is 0, `recall("reflexion lesson: " +
//!    task, 2 × lessons)` asks the host for the run's user's memories; the
//!    ones that are lesson notes (text starting with `reflexion lesson:`,
//!    after the host's `[<time>] note: ` prefix, if any) are kept. The
//!    lessons of this run's earlier attempts come first, then the recalled
//!    ones not among them, at most `lessons` in all.
//! 2. **Attempt.** The task (the prompt) with, when there are lessons,
//!    `\n\nLessons from earlier attempts:\n- <lesson>` lines appended, is
//!    run by the base:
//!    * `base` null (the default): in process, a fresh conversation (the
//!      agent's instructions as a system message when there are any, then
//!      that text as the user message) runs a ReAct loop with tools in
//!      role `actor`, every tool call of a turn in one `call-tools`;
//!    * `base` an architecture name: a sub-agent run through the host's
//!      `delegate` with that architecture, the agent's instructions, all
//!      the run's tools and `base_config` as its configuration (this is
//!      how reflexion composes over, say, `supervisor`). The host charges
//!      its spend to this run; its turns count among this run's turns.
//!
//!    A delegated attempt that ends interrupted ends the run, interrupted
//!    with the same reason.
//! 3. **Evaluate.** A completion in role `evaluator` (no tools) sees the
//!    task and the attempt's answer and replies `Score: <0 to 1>` on its
//!    first line, then a reason. The score is read tolerantly (`Score:
//!    0.7`, `score = 70%`, `Score: 7/10`, or a first line that is just a
//!    number; values above 1 are read as out of 10 or 100); anything else
//!    is 0. A score at or above `threshold` ends the run with this answer;
//!    after the last attempt the run ends with the best-scoring answer (the
//!    earliest on a tie).
//! 4. **Reflect.** Otherwise a completion in role `reflector` (no tools)
//!    sees the task, the answer and the evaluation and writes one sentence,
//!    the lesson, which is stored for the run's user with `remember(
//!    "reflexion lesson: " + lesson)`. A failed `remember` (an anonymous
//!    run, no memory) is reported in the `lesson` event and does not fail
//!    the run; the lesson still goes to this run's later attempts.
//!
//! # Turns
//!
//! Every completion (the actor's, the evaluator's, the reflector's, and a
//! delegated attempt's turns) counts against the run's `max-turns`. An
//! in-process attempt's loop may use at most its share: the turns left,
//! less one evaluator turn for it and every later attempt and one reflector
//! turn for every attempt but the last, divided among the attempts left
//! (rounded up, at least 1); what an attempt does not use goes to later
//! ones. An attempt cut off at its share is evaluated as it stands (its
//! last text), so a runaway attempt cannot starve the next; the last
//! attempt cut off, or the run's turns spent before a completion it needs,
//! ends the run interrupted with reason `max_turns` and the best answer so
//! far (the best evaluated one, else the latest attempt's).
//!
//! The run adds to the session its seed (the instructions for a new
//! session, then the prompt) and one assistant message with the final
//! answer; attempts, evaluations and reflections stay out of it.
//!
//! # Configuration
//!
//! * `max_attempts` (integer, 1 to 5, default 3): attempts at most.
//! * `threshold` (number, 0 to 1, default 0.8): the evaluator score that
//!   accepts an attempt.
//! * `base` (string or null, default null): null runs each attempt as an
//!   in-process ReAct loop; a name runs it as a sub-agent of that
//!   architecture.
//! * `base_config` (object, default `{}`): the delegated architecture's
//!   configuration; only with `base`.
//! * `lessons` (integer, 0 to 20, default 5): lessons at most in an
//!   attempt's prompt; 0 recalls none (lessons are still stored).
//!
//! Unknown keys are refused (`invalid-config`).
//!
//! # Events
//!
//! * `attempt` — `{"attempt": <a>}` when an attempt starts.
//! * `lessons_recalled` — `{"attempt": <a>, "count": <recalled lessons
//!   kept>, "in_prompt": <lessons in the attempt's prompt>}`.
//! * `evaluated` — `{"attempt": <a>, "score": <0 to 1>}`.
//! * `lesson` — `{"attempt": <a>, "text": <lesson>, "stored": <bool>}`,
//!   with `"error": <text>` when `remember` failed.
//! * `threshold_met` — `{"attempt": <a>, "score": <score>}`.
//! * `max_attempts` — `{"attempts": <n>, "best_attempt": <a>, "score":
//!   <score>}` when the last attempt fell short.

use loom_sdk::arch::{
    self, AgentRef, Architecture, ArchitectureInfo, CompletionRequest, HarnessError, Message, Run,
    RunError, RunInput, RunOutput, Usage, WorkerRole,
};
use serde::Deserialize;

/// The largest `max_attempts` accepted.
const MAX_ATTEMPTS: u32 = 5;

/// The largest `lessons` accepted.
const MAX_LESSONS: u32 = 20;

/// What every stored lesson starts with.
const LESSON_MARKER: &str = "reflexion lesson:";

/// The longest lesson kept, in characters.
const MAX_LESSON_CHARS: usize = 400;

/// The JSON Schema of the configuration.
const CONFIG_SCHEMA: &str = r#"{"type":"object","properties":{"max_attempts":{"type":"integer","minimum":1,"maximum":5,"default":3},"threshold":{"type":"number","minimum":0,"maximum":1,"default":0.8},"base":{"type":["string","null"],"minLength":1,"default":null},"base_config":{"type":"object","default":{}},"lessons":{"type":"integer","minimum":0,"maximum":20,"default":5}},"additionalProperties":false}"#;

/// The evaluator's system message.
const EVALUATOR_SYSTEM: &str = "You are an evaluator. You judge how well an answer accomplishes \
a task: whether it is correct, complete and responsive. You do not rewrite the answer.";

/// The reflector's system message.
const REFLECTOR_SYSTEM: &str = "You are a reflector. You study a failed attempt at a task and \
its evaluation, and state the single most useful lesson for the next attempt.";

/// The configuration object.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    /// Attempts at most.
    max_attempts: u32,
    /// The score that accepts an attempt.
    threshold: f64,
    /// The architecture an attempt runs as a sub-agent; `None` in process.
    base: Option<String>,
    /// The delegated architecture's configuration.
    base_config: serde_json::Map<String, serde_json::Value>,
    /// Lessons at most in an attempt's prompt.
    lessons: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_attempts: 3,
            threshold: 0.8,
            base: None,
            base_config: serde_json::Map::new(),
            lessons: 5,
        }
    }
}

/// Parse and check the configuration text.
fn parse_config(text: &str) -> Result<Config, RunError> {
    let config: Config = arch::config_from_str(text)?;
    if !(1..=MAX_ATTEMPTS).contains(&config.max_attempts) {
        return Err(RunError::invalid_config(format!(
            "max_attempts must be 1 to {MAX_ATTEMPTS}, not {}",
            config.max_attempts
        )));
    }
    if !(0.0..=1.0).contains(&config.threshold) {
        return Err(RunError::invalid_config(format!(
            "threshold must be 0 to 1, not {}",
            config.threshold
        )));
    }
    if config.lessons > MAX_LESSONS {
        return Err(RunError::invalid_config(format!(
            "lessons must be at most {MAX_LESSONS}, not {}",
            config.lessons
        )));
    }
    match &config.base {
        Some(base) if base.trim().is_empty() => {
            return Err(RunError::invalid_config(
                "base must name an architecture (or be null)",
            ));
        }
        None if !config.base_config.is_empty() => {
            return Err(RunError::invalid_config(
                "base_config needs base (the in-process loop takes no configuration)",
            ));
        }
        _ => {}
    }
    Ok(config)
}

/// The number at the start of `s` (digits with at most one decimal point,
/// such as `7`, `0.75` or `.5`) and its length in bytes.
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

/// The score written at the start of `s`, from 0 to 1, and its length:
/// `0.7`, `70%` or `70 %`, `7/10`; a bare number above 1 is out of 10 (up
/// to 10) or out of 100 (up to 100); a bare number above 100 is none.
fn score_token(s: &str) -> Option<(f64, usize)> {
    let (value, len) = leading_number(s)?;
    let rest = &s[len..];
    let after_space = rest.trim_start_matches([' ', '\t']);
    let space = rest.len() - after_space.len();
    if after_space.starts_with('%') {
        return Some(((value / 100.0).clamp(0.0, 1.0), len + space + 1));
    }
    if let Some(denominator) = after_space.strip_prefix('/') {
        let trimmed = denominator.trim_start_matches([' ', '\t']);
        if let Some((d, d_len)) = leading_number(trimmed)
            && d > 0.0
        {
            let used = len + space + 1 + (denominator.len() - trimmed.len()) + d_len;
            return Some(((value / d).clamp(0.0, 1.0), used));
        }
    }
    let score = if value <= 1.0 {
        value
    } else if value <= 10.0 {
        value / 10.0
    } else if value <= 100.0 {
        value / 100.0
    } else {
        return None;
    };
    Some((score, len))
}

/// The score after a `score:` or `score =` label anywhere in `text` (any
/// case, with quotes or `**` around the label allowed).
fn labelled_score(text: &str) -> Option<f64> {
    // ASCII lowering keeps byte offsets, so they index `text` too.
    let lower = text.to_ascii_lowercase();
    let mut from = 0;
    while let Some(found) = lower[from..].find("score") {
        let after = from + found + "score".len();
        let rest = text[after..].trim_start_matches(['"', '\'', '*', ' ', '\t']);
        if let Some(value) = rest.strip_prefix([':', '=']) {
            let value = value.trim_start_matches([' ', '\t', '"', '\'', '*']);
            if let Some((score, _)) = score_token(value) {
                return Some(score);
            }
        }
        from = after;
    }
    None
}

/// The score of a first non-blank line that starts with a number (after
/// any markdown emphasis or heading marks) followed by nothing, a space or
/// punctuation.
fn bare_score(text: &str) -> Option<f64> {
    let line = text.lines().map(str::trim).find(|line| !line.is_empty())?;
    let line = line.trim_start_matches(['*', '#', '`', ' ']);
    let (score, len) = score_token(line)?;
    match line[len..].chars().next() {
        None => Some(score),
        Some(c) if c.is_whitespace() || c.is_ascii_punctuation() => Some(score),
        Some(_) => None,
    }
}

/// The evaluator's score in `text`, from 0 to 1: a labelled score, else a
/// bare number on the first line, else 0.
fn parse_score(text: &str) -> f64 {
    labelled_score(text)
        .or_else(|| bare_score(text))
        .unwrap_or(0.0)
}

/// `s` without `prefix` at its start, ignoring ASCII case.
fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// The lesson a recollection holds, when it is a lesson note: its text,
/// after an optional `[<time>] ` and `note: ` (how the host's memory shows
/// a note), starts with `reflexion lesson:` (any case).
fn lesson_of(recollection: &str) -> Option<String> {
    let mut text = recollection.trim_start();
    if text.starts_with('[')
        && let Some(end) = text.find("] ")
    {
        text = &text[end + 2..];
    }
    if let Some(rest) = strip_prefix_ignore_case(text, "note:") {
        text = rest.trim_start();
    }
    let lesson = strip_prefix_ignore_case(text, LESSON_MARKER)?.trim();
    (!lesson.is_empty()).then(|| lesson.to_owned())
}

/// The lessons for an attempt: this run's own lessons (newest first), then
/// the recalled lesson notes not among them, at most `limit`; and how many
/// recalled lessons were kept (before the limit).
fn select_lessons<'a>(
    own: &[String],
    recalled: impl IntoIterator<Item = &'a str>,
    limit: usize,
) -> (Vec<String>, usize) {
    let mut lessons: Vec<String> = own.iter().rev().cloned().collect();
    let mut kept = 0;
    for lesson in recalled.into_iter().filter_map(lesson_of) {
        if !lessons.contains(&lesson) {
            lessons.push(lesson);
            kept += 1;
        }
    }
    lessons.truncate(limit);
    (lessons, kept)
}

/// The attempt's prompt: the task, then the lessons as bullets.
fn attempt_text(task: &str, lessons: &[String]) -> String {
    if lessons.is_empty() {
        return task.to_owned();
    }
    let mut text = format!("{task}\n\nLessons from earlier attempts:");
    for lesson in lessons {
        text.push_str("\n- ");
        text.push_str(lesson);
    }
    text
}

/// The reflector's reply as one lesson: on one line, without a `Lesson:`
/// label, bullet or surrounding quotes, at most [`MAX_LESSON_CHARS`].
fn clean_lesson(reply: &str) -> String {
    let joined = reply.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut text = joined.trim_start_matches(['-', '*', ' ']);
    if let Some(rest) = strip_prefix_ignore_case(text, "lesson:") {
        text = rest.trim_start();
    }
    let text = text.trim_matches(['"', '\'', '`', ' ']);
    text.chars().take(MAX_LESSON_CHARS).collect()
}

/// The turns an in-process attempt's loop may use: `remaining` turns left,
/// less one evaluator turn per attempt left and one reflector turn per
/// attempt left but the last, shared among the `attempts_left` (this one
/// included), rounded up; at least 1 and at most `remaining`.
fn attempt_allowance(remaining: u32, attempts_left: u32) -> u32 {
    let attempts_left = attempts_left.max(1);
    let overhead = 2 * attempts_left - 1;
    remaining
        .saturating_sub(overhead)
        .div_ceil(attempts_left)
        .max(1)
        .min(remaining)
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

/// The evaluator's messages: its system message, then the task, the answer
/// and the reply format in one user message.
fn evaluator_messages(task: &str, answer: &str) -> Vec<Message> {
    vec![
        Message::system(EVALUATOR_SYSTEM),
        Message::user(format!(
            "Task:\n{task}\n\nAnswer:\n{answer}\n\nHow well does the answer accomplish the \
             task? Reply with \"Score: <a number from 0 to 1>\" on the first line (1 means \
             fully correct and complete), then one line with the reason."
        )),
    ]
}

/// The reflector's messages: its system message, then the task, the
/// answer, the evaluation and the request for one sentence.
fn reflector_messages(task: &str, answer: &str, evaluation: &str) -> Vec<Message> {
    vec![
        Message::system(REFLECTOR_SYSTEM),
        Message::user(format!(
            "Task:\n{task}\n\nAnswer:\n{answer}\n\nEvaluation:\n{evaluation}\n\nThe answer fell \
             short. Write ONE sentence: the lesson that would most improve the next attempt at \
             this task. Reply with that sentence only."
        )),
    ]
}

/// The text of a harness error, for an event.
fn error_text(error: HarnessError) -> String {
    match arch::harness_error(error) {
        RunError::Harness(text) => text,
        other => format!("{other:?}"),
    }
}

/// The attempts' spend outside the main [`Run`] (in-process loops and
/// delegated sub-agents).
#[derive(Debug, Clone)]
struct Spend {
    turns: u32,
    usage: Usage,
    cost_usd: f64,
}

impl Spend {
    fn add(&mut self, turns: u32, usage: &Usage, cost_usd: f64) {
        self.turns = self.turns.saturating_add(turns);
        self.usage += usage;
        self.cost_usd += cost_usd;
    }
}

/// The run's output: the main run's with the attempts' spend added, and
/// the answer (when there is one) as the last new message.
fn close(mut run: Run, spend: &Spend, answer: String, interrupted: Option<&str>) -> RunOutput {
    if !answer.is_empty() {
        run.push(Message::assistant(answer.clone()));
    }
    let mut output = match interrupted {
        Some(reason) => run.interrupted_with(answer, reason),
        None => run.finish(answer),
    };
    output.turns = output.turns.saturating_add(spend.turns);
    output.usage += &spend.usage;
    output.cost_usd += spend.cost_usd;
    output
}

/// How an attempt ended.
enum Attempt {
    /// With an answer to evaluate.
    Answer(String),
    /// Cut off at its share of turns, with its last text.
    CutOff(String),
    /// A delegated attempt that was interrupted, with its output and why.
    Interrupted(String, String),
}

/// Run one attempt on `text` with at most `allowance` turns in process, or
/// as a sub-agent of `config.base`.
fn attempt(
    input: &RunInput,
    config: &Config,
    text: &str,
    allowance: u32,
    spend: &mut Spend,
) -> Result<Attempt, RunError> {
    if let Some(base) = &config.base {
        let agent = AgentRef {
            architecture: base.clone(),
            instructions: input.instructions.clone(),
            tools: Vec::new(),
            config: Some(serde_json::Value::Object(config.base_config.clone()).to_string()),
        };
        let output = arch::delegate(&agent, text)?;
        spend.add(output.turns, &output.usage, output.cost_usd);
        return Ok(match output.interrupted {
            Some(reason) => Attempt::Interrupted(output.output, reason),
            None => Attempt::Answer(output.output),
        });
    }
    let mut seed = Vec::new();
    if !input.instructions.is_empty() {
        seed.push(Message::system(input.instructions.clone()));
    }
    seed.push(Message::user(text));
    let mut inner = Run::new(seed, allowance);
    let answer = inner.react(Some("actor"));
    spend.add(inner.turns(), inner.usage(), inner.cost_usd());
    Ok(match answer? {
        Some(answer) => Attempt::Answer(answer),
        None => Attempt::CutOff(inner.last_text().to_owned()),
    })
}

struct Reflexion;

impl Architecture for Reflexion {
    fn describe() -> ArchitectureInfo {
        let worker = |name: &str, description: &str| WorkerRole {
            name: name.into(),
            description: description.into(),
        };
        ArchitectureInfo {
            name: "reflexion".into(),
            description: "Attempt the task (ReAct with tools, or a delegated architecture), score \
                          the attempt with an evaluator, and below the threshold store a \
                          one-sentence lesson in the user's memory and retry with the lessons"
                .into(),
            workers: vec![
                worker(
                    "actor",
                    "Attempts the task, calling tools (in-process base only)",
                ),
                worker("evaluator", "Scores an attempt from 0 to 1"),
                worker(
                    "reflector",
                    "Writes a one-sentence lesson from a failed attempt",
                ),
            ],
            config_schema: CONFIG_SCHEMA.into(),
        }
    }

    fn run(input: RunInput) -> Result<RunOutput, RunError> {
        let config = parse_config(&input.config)?;
        let task = input.prompt.clone();
        let mut run = Run::seed(&input);
        let mut spend = Spend {
            turns: 0,
            usage: Usage::ZERO,
            cost_usd: 0.0,
        };
        let used = |run: &Run, spend: &Spend| run.turns().saturating_add(spend.turns);
        // The best evaluated answer: (score, attempt, answer).
        let mut best: Option<(f64, u32, String)> = None;
        let mut own_lessons: Vec<String> = Vec::new();
        let mut latest = String::new();

        for a in 1..=config.max_attempts {
            let best_or = |best: &Option<(f64, u32, String)>, fallback: &str| {
                best.as_ref()
                    .map_or_else(|| fallback.to_owned(), |(_, _, answer)| answer.clone())
            };
            let remaining = input.max_turns.saturating_sub(used(&run, &spend));
            if remaining == 0 {
                let answer = best_or(&best, &latest);
                return Ok(close(run, &spend, answer, Some("max_turns")));
            }
            arch::emit("attempt", serde_json::json!({ "attempt": a }));

            let (lessons, recalled) = if config.lessons == 0 {
                (Vec::new(), 0)
            } else {
                let query = format!("{LESSON_MARKER} {task}");
                let found = arch::recall(&query, config.lessons.saturating_mul(2));
                select_lessons(
                    &own_lessons,
                    found.iter().map(|r| r.text.as_str()),
                    config.lessons as usize,
                )
            };
            arch::emit(
                "lessons_recalled",
                serde_json::json!({ "attempt": a, "count": recalled, "in_prompt": lessons.len() }),
            );

            let text = attempt_text(&task, &lessons);
            let allowance = attempt_allowance(remaining, config.max_attempts - a + 1);
            let answer = match attempt(&input, &config, &text, allowance, &mut spend)? {
                Attempt::Answer(answer) => answer,
                Attempt::Interrupted(output, reason) => {
                    let answer = best_or(&best, &output);
                    return Ok(close(run, &spend, answer, Some(reason.as_str())));
                }
                Attempt::CutOff(text) if a == config.max_attempts => {
                    let answer = best_or(&best, &text);
                    return Ok(close(run, &spend, answer, Some("max_turns")));
                }
                Attempt::CutOff(text) => text,
            };
            latest = answer.clone();

            if used(&run, &spend) >= input.max_turns {
                let answer = best_or(&best, &answer);
                return Ok(close(run, &spend, answer, Some("max_turns")));
            }
            let evaluation = run
                .complete_request(&request("evaluator", evaluator_messages(&task, &answer)))?
                .message
                .content;
            let score = parse_score(&evaluation);
            arch::emit(
                "evaluated",
                serde_json::json!({ "attempt": a, "score": score }),
            );
            if best.as_ref().is_none_or(|(top, _, _)| score > *top) {
                best = Some((score, a, answer.clone()));
            }
            if score >= config.threshold {
                arch::emit(
                    "threshold_met",
                    serde_json::json!({ "attempt": a, "score": score }),
                );
                return Ok(close(run, &spend, answer, None));
            }
            if a == config.max_attempts {
                let (top, top_attempt, top_answer) = best.unwrap_or((score, a, answer));
                arch::emit(
                    "max_attempts",
                    serde_json::json!({
                        "attempts": a,
                        "best_attempt": top_attempt,
                        "score": top,
                    }),
                );
                return Ok(close(run, &spend, top_answer, None));
            }

            if used(&run, &spend) >= input.max_turns {
                let answer = best_or(&best, &answer);
                return Ok(close(run, &spend, answer, Some("max_turns")));
            }
            let reply = run
                .complete_request(&request(
                    "reflector",
                    reflector_messages(&task, &answer, &evaluation),
                ))?
                .message
                .content;
            let lesson = clean_lesson(&reply);
            if lesson.is_empty() {
                arch::emit(
                    "lesson",
                    serde_json::json!({ "attempt": a, "text": "", "stored": false }),
                );
                continue;
            }
            match arch::remember(&format!("{LESSON_MARKER} {lesson}")) {
                Ok(()) => arch::emit(
                    "lesson",
                    serde_json::json!({ "attempt": a, "text": lesson, "stored": true }),
                ),
                Err(error) => arch::emit(
                    "lesson",
                    serde_json::json!({
                        "attempt": a,
                        "text": lesson,
                        "stored": false,
                        "error": error_text(error),
                    }),
                ),
            }
            own_lessons.push(lesson);
        }
        // Not reached: the last attempt always returns.
        let answer = best.map_or(latest, |(_, _, answer)| answer);
        Ok(close(run, &spend, answer, None))
    }
}

loom_sdk::export_architecture!(Reflexion);

#[cfg(test)]
mod tests {
    use super::*;
    use loom_sdk::arch::Role;

    #[test]
    fn config_defaults_and_checks() {
        assert_eq!(parse_config("").unwrap(), Config::default());
        assert_eq!(parse_config("{}").unwrap(), Config::default());
        let config = parse_config(
            r#"{"max_attempts": 5, "threshold": 1, "base": "supervisor",
                "base_config": {"x": 1}, "lessons": 0}"#,
        )
        .unwrap();
        assert_eq!(config.max_attempts, 5);
        assert_eq!(config.threshold, 1.0);
        assert_eq!(config.base.as_deref(), Some("supervisor"));
        assert_eq!(config.base_config["x"], serde_json::json!(1));
        assert_eq!(config.lessons, 0);
        assert_eq!(
            parse_config(r#"{"base": null}"#).unwrap(),
            Config::default()
        );
        for bad in [
            r#"{"max_attempts": 0}"#,
            r#"{"max_attempts": 6}"#,
            r#"{"threshold": 1.5}"#,
            r#"{"threshold": -0.1}"#,
            r#"{"lessons": 21}"#,
            r#"{"base": ""}"#,
            r#"{"base": 3}"#,
            r#"{"base_config": {"x": 1}}"#,
            r#"{"base": "react", "base_config": []}"#,
            r#"{"attempts": 2}"#,
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
            properties["max_attempts"]["default"],
            serde_json::json!(defaults.max_attempts)
        );
        assert_eq!(
            properties["max_attempts"]["maximum"],
            serde_json::json!(MAX_ATTEMPTS)
        );
        assert_eq!(
            properties["threshold"]["default"],
            serde_json::json!(defaults.threshold)
        );
        assert_eq!(properties["base"]["default"], serde_json::Value::Null);
        assert_eq!(properties["base_config"]["default"], serde_json::json!({}));
        assert_eq!(
            properties["lessons"]["default"],
            serde_json::json!(defaults.lessons)
        );
        assert_eq!(
            properties["lessons"]["maximum"],
            serde_json::json!(MAX_LESSONS)
        );
        assert_eq!(schema["additionalProperties"], serde_json::json!(false));
    }

    #[test]
    fn scores_are_read_tolerantly() {
        let cases = [
            ("Score: 0.85\nGood.", 0.85),
            ("score=0.5", 0.5),
            ("**Score:** 0.9 because", 0.9),
            ("{\"score\": 0.4}", 0.4),
            ("Score: 80%", 0.8),
            ("Score: 7/10", 0.7),
            ("Score: 7 / 10", 0.7),
            ("Score: 8", 0.8),
            ("Score: 85", 0.85),
            ("Score: 1", 1.0),
            ("0.6\nthe reason", 0.6),
            ("  \n**0.3**", 0.3),
            ("75%", 0.75),
            ("9/10 nearly", 0.9),
            (".5", 0.5),
            ("The reason first.\nScore: 0.2", 0.2),
        ];
        for (text, expected) in cases {
            let score = parse_score(text);
            assert!((score - expected).abs() < 1e-9, "{text:?}: {score}");
        }
        for text in [
            "",
            "great answer",
            "Score: <a number from 0 to 1>",
            "Echo: Task:\nadd 2 and 2\n\nScore: <a number from 0 to 1>",
            "2024-01-01 was the date",
            "Score: 250",
            "3x faster",
            "scored well: 0.9",
        ] {
            assert_eq!(parse_score(text), 0.0, "{text:?}");
        }
    }

    #[test]
    fn lesson_notes_are_recognised() {
        assert_eq!(
            lesson_of("reflexion lesson: check units").as_deref(),
            Some("check units")
        );
        assert_eq!(
            lesson_of("[2025-01-01T00:00:00Z] note: reflexion lesson: check units").as_deref(),
            Some("check units")
        );
        assert_eq!(
            lesson_of("Reflexion Lesson:  cite sources ").as_deref(),
            Some("cite sources")
        );
        for other in [
            "",
            "reflexion lesson:   ",
            "[2025-01-01] note: buy milk",
            "[2025-01-01] \"reflexion lesson: x\" -> \"y\"",
            "the user likes tea",
            "a reflexion lesson: x",
        ] {
            assert_eq!(lesson_of(other), None, "{other:?}");
        }
    }

    #[test]
    fn lessons_are_selected_own_first_deduplicated_and_capped() {
        let own = vec!["first".to_owned(), "second".to_owned()];
        let recalled = [
            "[t] note: reflexion lesson: second",
            "the user likes tea",
            "reflexion lesson: old one",
            "reflexion lesson: old two",
            "reflexion lesson: old one",
        ];
        let (lessons, kept) = select_lessons(&own, recalled, 10);
        assert_eq!(lessons, ["second", "first", "old one", "old two"]);
        assert_eq!(kept, 2);
        let (lessons, _) = select_lessons(&own, recalled, 3);
        assert_eq!(lessons, ["second", "first", "old one"]);
        let (lessons, kept) = select_lessons(&[], ["reflexion lesson: a"], 0);
        assert!(lessons.is_empty());
        assert_eq!(kept, 1);
    }

    #[test]
    fn attempt_text_appends_lessons_as_bullets() {
        assert_eq!(attempt_text("add 2 and 2", &[]), "add 2 and 2");
        assert_eq!(
            attempt_text("add 2 and 2", &["check units".into(), "show work".into()]),
            "add 2 and 2\n\nLessons from earlier attempts:\n- check units\n- show work"
        );
    }

    #[test]
    fn lessons_are_cleaned_to_one_line() {
        assert_eq!(
            clean_lesson("Lesson: Check the units\n before answering."),
            "Check the units before answering."
        );
        assert_eq!(clean_lesson("- \"Use the tool.\""), "Use the tool.");
        assert_eq!(clean_lesson("  \n "), "");
        assert_eq!(
            clean_lesson(&"x".repeat(1000)).chars().count(),
            MAX_LESSON_CHARS
        );
    }

    #[test]
    fn allowance_leaves_room_for_later_attempts() {
        // 10 turns, 3 attempts: 5 reserved (3 evaluations, 2 reflections).
        assert_eq!(attempt_allowance(10, 3), 2);
        assert_eq!(attempt_allowance(7, 2), 2);
        assert_eq!(attempt_allowance(4, 1), 3);
        assert_eq!(attempt_allowance(30, 3), 9);
        // Never 0, never more than what is left.
        assert_eq!(attempt_allowance(3, 3), 1);
        assert_eq!(attempt_allowance(1, 1), 1);
        assert_eq!(attempt_allowance(1, 5), 1);
        assert_eq!(attempt_allowance(0, 2), 0);
    }

    #[test]
    fn prompts_hold_task_answer_and_format() {
        let messages = evaluator_messages("add 2 and 2", "5");
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].role, Role::System);
        assert!(messages[0].content.starts_with("You are an evaluator"));
        let text = &messages[1].content;
        assert!(text.contains("Task:\nadd 2 and 2"), "{text}");
        assert!(text.contains("Answer:\n5"), "{text}");
        assert!(text.contains("\"Score: <a number from 0 to 1>\""), "{text}");
        // The format itself (echoed back) is no score.
        assert_eq!(parse_score(&format!("Echo: {text}")), 0.0);

        let messages = reflector_messages("add 2 and 2", "5", "Score: 0\nwrong sum");
        assert_eq!(messages[0].role, Role::System);
        assert!(messages[0].content.starts_with("You are a reflector"));
        let text = &messages[1].content;
        assert!(text.contains("Task:\nadd 2 and 2"), "{text}");
        assert!(text.contains("Answer:\n5"), "{text}");
        assert!(text.contains("Evaluation:\nScore: 0\nwrong sum"), "{text}");
        assert!(text.contains("ONE sentence"), "{text}");

        let request = request("evaluator", evaluator_messages("t", "a"));
        assert!(request.tools.is_empty());
        assert_eq!(request.role.as_deref(), Some("evaluator"));
    }
}
