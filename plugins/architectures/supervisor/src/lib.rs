//! Supervisor: a supervisor completion delegates subtasks to configured
//! workers (sub-agents) over rounds, reads their results, and writes the
//! final answer.
//!
//! 1. **Round.** One completion with role `supervisor` and no tools sees a
//!    supervisor system message (then the agent's instructions), the
//!    session's history (its non-system messages) and one user message
//!    holding the task, the workers (`name: description`, in name order),
//!    the round (`Round r of n`) and every result so far, each as
//!    `[worker] task -> output` with the output cut to its first 4,000
//!    characters. It replies with JSON `{"delegate": [{"worker": "name",
//!    "task": "..."}, ...]}` or `{"final": "answer"}`, read leniently (also
//!    inside a code fence or prose); a reply that is neither is the final
//!    answer as it stands.
//! 2. **Delegations.** The delegations of a round run in parallel, through
//!    one `delegate-all` with each worker's agent-ref and the delegation's
//!    task as input (the host runs up to 16 at once); their results are
//!    read in the order given. An unknown worker
//!    gives the result `ERROR: no worker named X (workers: a, b)` (an entry
//!    without a `worker` or `task` string an `ERROR: ...` too), a failed
//!    delegation `ERROR: <reason>`, and neither fails the run — except a
//!    cancelled run or an exceeded budget, which fail it (`harness`). An
//!    interrupted worker's result is its output after `(interrupted:
//!    <reason>)`. A `delegate` list with no entries runs nothing that round.
//! 3. **Final.** `{"final": ...}` (or an unreadable reply) ends the run
//!    with that answer. After `max_rounds` rounds without one, a last
//!    supervisor completion sees every result in full (never cut) and is
//!    asked for the final answer; its `final`, else its whole reply, is the
//!    output.
//!
//! Every supervisor completion counts as a turn against `max-turns`, and
//! so do the workers' turns (their usage and cost are added to the run's).
//! The turn cap is checked before each completion and each round's
//! delegations:
//! when it is reached, the run ends interrupted with reason `max_turns`
//! and the latest worker result's full output (empty before the first) as
//! output.
//!
//! The run adds to the session the seed (instructions for a new session,
//! then the prompt) and one assistant message with the output (when it is
//! not empty). The supervisor's replies and the results stay out of it.
//!
//! # Configuration
//!
//! * `workers` (object, 1 to 16 entries; default: one inline ReAct worker named `assistant` with all of the run's tools): worker name (1 to 64
//!   characters of `A-Z a-z 0-9 _ -`) to worker. A worker is
//!   `{"description": "...", "agent": "NAME"}` (the named agent
//!   `agent:NAME` of `loom.toml`) or `{"description": "...",
//!   "architecture": "react", "instructions": "...", "tools": [...],
//!   "config": {...}}` (an inline agent; every key but `description`
//!   optional, `architecture` defaulting to `react`). Giving `agent` with
//!   any of the inline keys is refused.
//!   The schema marks it `"x-loom-members": true`, so an agent's
//!   `workers` (named agents) fill it.
//! * `max_rounds` (integer, 1 to 10, default 4): delegation rounds at most.
//!
//! Unknown keys are refused (`invalid-config`).
//!
//! # Events
//!
//! * `round` — `{"round": <r>}` as each round starts (from 1).
//! * `delegated` — `{"round": <r>, "worker": <name>, "task": <excerpt>}`
//!   before each delegation (the task's first 200 characters).
//! * `worker_result` — `{"round": <r>, "worker": <name>, "ok": <bool>}`
//!   after it (`ok` false for an unknown worker, a failed delegation or an
//!   interrupted worker).
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
const CONFIG_SCHEMA: &str = r#"{"type":"object","properties":{"workers":{"type":"object","x-loom-members":true,"minProperties":1,"maxProperties":16,"propertyNames":{"pattern":"^[A-Za-z0-9_-]{1,64}$"},"additionalProperties":{"type":"object","properties":{"description":{"type":"string","minLength":1},"agent":{"type":"string","pattern":"^[A-Za-z0-9_-]{1,64}$"},"architecture":{"type":"string","pattern":"^[A-Za-z0-9_-]{1,64}$","default":"react"},"instructions":{"type":"string","default":""},"tools":{"type":"array","items":{"type":"string"},"default":[]},"config":{"type":["object","null"],"default":null}},"required":["description"],"additionalProperties":false}},"max_rounds":{"type":"integer","minimum":1,"maximum":10,"default":4}},"additionalProperties":false}"#;

/// The longest excerpt in an event, in characters.
const EXCERPT_CHARS: usize = 200;

/// The longest worker output in a round's prompt, in characters.
const RESULT_CHARS: usize = 4_000;

/// Workers at most.
const MAX_WORKERS: usize = 16;

/// The supervisor's system message, before the agent's instructions.
const SUPERVISOR_SYSTEM: &str = "You are a supervisor. You do not do the work yourself: you \
split the task into subtasks, delegate each to the best-suited worker, read their results, \
and write the final answer once the results are enough.";

/// The configuration object as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawConfig {
    workers: BTreeMap<String, MemberSpec>,
    max_rounds: u32,
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            workers: BTreeMap::new(),
            max_rounds: 4,
        }
    }
}

/// A checked worker: its name, description and agent-ref.
#[derive(Debug, Clone)]
struct Worker {
    name: String,
    description: String,
    agent: AgentRef,
}

/// The checked configuration.
#[derive(Debug, Clone)]
struct Config {
    /// The workers, in name order.
    workers: Vec<Worker>,
    /// Delegation rounds at most.
    max_rounds: u32,
}

/// Parse and check the configuration text.
fn parse_config(text: &str) -> Result<Config, RunError> {
    let mut raw: RawConfig = arch::config_from_str(text)?;
    if raw.workers.is_empty() {
        raw.workers = team::default_members();
    }
    if raw.workers.len() > MAX_WORKERS {
        return Err(RunError::invalid_config(format!(
            "workers must hold 1 to {MAX_WORKERS} workers, not {}",
            raw.workers.len()
        )));
    }
    if !(1..=10).contains(&raw.max_rounds) {
        return Err(RunError::invalid_config(format!(
            "max_rounds must be from 1 to 10, not {}",
            raw.max_rounds
        )));
    }
    let mut workers = Vec::with_capacity(raw.workers.len());
    for (name, spec) in raw.workers {
        let description = spec.description.trim().to_owned();
        let agent = team::agent_ref("worker", &name, spec).map_err(RunError::invalid_config)?;
        workers.push(Worker {
            name,
            description,
            agent,
        });
    }
    Ok(Config {
        workers,
        max_rounds: raw.max_rounds,
    })
}

/// The workers' names, comma-separated.
fn names(workers: &[Worker]) -> String {
    workers
        .iter()
        .map(|w| w.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The first `chars` characters of `text`.
fn cut(text: &str, chars: usize) -> String {
    text.chars().take(chars).collect()
}

/// One delegation the supervisor asked for; `None` for an entry without a
/// string `worker` or `task`.
#[derive(Debug, Clone, PartialEq)]
struct Delegation {
    worker: Option<String>,
    task: Option<String>,
}

/// One delegation of a round, in the order the supervisor gave: its
/// worker and task, and the error it got without running (an unknown
/// worker, a missing task).
#[derive(Debug, Clone)]
struct Slot {
    worker: String,
    task: String,
    refused: Option<String>,
}

/// What the supervisor replied.
#[derive(Debug, Clone, PartialEq)]
enum Decision {
    /// Run these delegations, in order.
    Delegate(Vec<Delegation>),
    /// The final answer.
    Final(String),
}

/// Read the supervisor's `reply`: a JSON object with `final` (a string, or
/// any other value as JSON text) or `delegate` (a list of `{"worker",
/// "task"}` objects, or one such object); anything else is the final
/// answer as it stands.
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
    let entries = match map.get("delegate") {
        Some(serde_json::Value::Array(entries)) => entries.clone(),
        Some(entry @ serde_json::Value::Object(_)) => vec![entry.clone()],
        _ => return Decision::Final(reply.trim().to_owned()),
    };
    let text = |entry: &serde_json::Value, key: &str| {
        entry
            .get(key)
            .and_then(|v| v.as_str())
            .map(|s| s.trim().to_owned())
    };
    Decision::Delegate(
        entries
            .iter()
            .map(|entry| Delegation {
                worker: text(entry, "worker"),
                task: text(entry, "task"),
            })
            .collect(),
    )
}

/// The result of one delegation.
#[derive(Debug, Clone, PartialEq)]
struct Outcome {
    worker: String,
    task: String,
    /// The worker's full output, or `ERROR: ...`.
    output: String,
    /// The worker ran and finished (not interrupted).
    ok: bool,
}

impl Outcome {
    /// `[worker] task -> output`, the output cut to `limit` characters
    /// when given.
    fn render(&self, limit: Option<usize>) -> String {
        let output = match limit {
            Some(limit) if self.output.chars().count() > limit => {
                format!("{} [... cut]", cut(&self.output, limit))
            }
            _ => self.output.clone(),
        };
        format!("[{}] {} -> {}", self.worker, self.task, output)
    }
}

/// The result text for a delegation to an unknown worker.
fn unknown_worker(name: &str, workers: &[Worker]) -> String {
    format!(
        "ERROR: no worker named {name} (workers: {})",
        names(workers)
    )
}

/// The results block of a prompt (outputs cut to `limit` when given).
fn results_text(results: &[Outcome], limit: Option<usize>) -> String {
    if results.is_empty() {
        return "Results so far: none yet.".into();
    }
    let lines = results
        .iter()
        .map(|r| r.render(limit))
        .collect::<Vec<_>>()
        .join("\n\n");
    format!("Results so far:\n\n{lines}")
}

/// The workers block of a prompt.
fn workers_text(workers: &[Worker]) -> String {
    let lines = workers
        .iter()
        .map(|w| format!("- {}: {}", w.name, w.description))
        .collect::<Vec<_>>()
        .join("\n");
    format!("Workers:\n{lines}")
}

/// The request text of round `round` of `rounds`.
fn round_text(
    task: &str,
    workers: &[Worker],
    results: &[Outcome],
    round: u32,
    rounds: u32,
) -> String {
    format!(
        "Task:\n{task}\n\n{}\n\nRound {round} of {rounds}.\n\n{}\n\nReply with JSON only: \
         either {{\"delegate\": [{{\"worker\": \"<name>\", \"task\": \"<subtask>\"}}, ...]}} \
         to give workers subtasks (each task must be self-contained: the worker sees nothing \
         else), or {{\"final\": \"<answer>\"}} when the results are enough to answer the task.",
        workers_text(workers),
        results_text(results, Some(RESULT_CHARS)),
    )
}

/// The request text of the last completion after `max_rounds`: every
/// result in full.
fn final_text(task: &str, workers: &[Worker], results: &[Outcome]) -> String {
    format!(
        "Task:\n{task}\n\n{}\n\n{}\n\nNo more delegation is possible. Write the final answer \
         to the task from the results above: reply with {{\"final\": \"<answer>\"}} or with \
         the answer as plain text.",
        workers_text(workers),
        results_text(results, None),
    )
}

/// The supervisor's messages: the system message, the history without its
/// system messages, then the request.
fn messages(instructions: &str, history: &[Message], text: String) -> Vec<Message> {
    let system = if instructions.is_empty() {
        SUPERVISOR_SYSTEM.to_owned()
    } else {
        format!("{SUPERVISOR_SYSTEM}\n\n{instructions}")
    };
    let mut messages = arch::context(&system, history);
    messages.push(Message::user(text));
    messages
}

/// The run ended with `output` (interrupted for `max_turns` when
/// `interrupted`), adding it to the session when it is not empty (the
/// workers' spend is already the run's: `Run::add_delegated`).
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

/// The latest result's full output, or empty.
fn latest(results: &[Outcome]) -> String {
    results.last().map(|r| r.output.clone()).unwrap_or_default()
}

struct Supervisor;

impl Architecture for Supervisor {
    fn describe() -> ArchitectureInfo {
        ArchitectureInfo {
            name: "supervisor".into(),
            description: "A supervisor completion delegates subtasks to configured workers \
                          (named agents or inline architectures, run as sub-agents in \
                          parallel) over rounds, reads their results, and writes the final \
                          answer (no tools of its own)"
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
                role: Some("supervisor".into()),
            })
            .map(|completion| completion.message.content)
        };
        let mut results: Vec<Outcome> = Vec::new();

        for round in 1..=config.max_rounds {
            if run.out_of_turns() {
                return Ok(end(run, latest(&results), true));
            }
            arch::emit("round", serde_json::json!({ "round": round }));
            let text = round_text(task, &config.workers, &results, round, config.max_rounds);
            let reply = ask(&mut run, text)?;
            let delegations = match decide(&reply) {
                Decision::Final(answer) => {
                    arch::emit(
                        "final",
                        serde_json::json!({ "round": round, "forced": false }),
                    );
                    return Ok(end(run, answer, false));
                }
                Decision::Delegate(delegations) => delegations,
            };
            if run.out_of_turns() {
                return Ok(end(run, latest(&results), true));
            }
            // Entries that name no worker or task get their error now; the
            // rest run together through one `delegate-all`.
            let mut slots: Vec<Slot> = Vec::new();
            let mut tasks: Vec<(AgentRef, String)> = Vec::new();
            for delegation in delegations {
                let named = delegation.worker.is_some();
                let worker_name = delegation.worker.unwrap_or_default();
                let subtask = delegation.task.unwrap_or_default();
                arch::emit(
                    "delegated",
                    serde_json::json!({
                        "round": round,
                        "worker": worker_name,
                        "task": cut(&subtask, EXCERPT_CHARS),
                    }),
                );
                let worker = config.workers.iter().find(|w| w.name == worker_name);
                let refused = match worker {
                    None if !named => Some(format!(
                        "ERROR: a delegation needs a \"worker\" string (workers: {})",
                        names(&config.workers)
                    )),
                    None => Some(unknown_worker(&worker_name, &config.workers)),
                    Some(_) if subtask.is_empty() => {
                        Some("ERROR: a delegation needs a non-empty \"task\" string".to_owned())
                    }
                    Some(worker) => {
                        tasks.push((worker.agent.clone(), subtask.clone()));
                        None
                    }
                };
                slots.push(Slot {
                    worker: worker_name,
                    task: subtask,
                    refused,
                });
            }
            let mut ran = arch::delegate_all(&tasks).into_iter();
            for Slot {
                worker: worker_name,
                task: subtask,
                refused,
            } in slots
            {
                let (output, ok) = match refused {
                    Some(error) => (error, false),
                    None => match ran.next() {
                        Some(Ok(sub)) => {
                            run.add_delegated(&sub);
                            match sub.interrupted {
                                Some(reason) => {
                                    (format!("(interrupted: {reason}) {}", sub.output), false)
                                }
                                None => (sub.output, true),
                            }
                        }
                        Some(Err(
                            error @ (HarnessError::Cancelled | HarnessError::BudgetExceeded(_)),
                        )) => {
                            return Err(arch::harness_error(error));
                        }
                        Some(Err(error)) => {
                            (format!("ERROR: {}", arch::harness_error_text(error)), false)
                        }
                        None => (
                            "ERROR: the host returned fewer results than delegations".to_owned(),
                            false,
                        ),
                    },
                };
                arch::emit(
                    "worker_result",
                    serde_json::json!({ "round": round, "worker": worker_name, "ok": ok }),
                );
                results.push(Outcome {
                    worker: worker_name,
                    task: subtask,
                    output,
                    ok,
                });
            }
        }

        if run.out_of_turns() {
            return Ok(end(run, latest(&results), true));
        }
        let reply = ask(&mut run, final_text(task, &config.workers, &results))?;
        let answer = match decide(&reply) {
            Decision::Final(answer) => answer,
            Decision::Delegate(_) => reply.trim().to_owned(),
        };
        arch::emit(
            "final",
            serde_json::json!({ "round": config.max_rounds, "forced": true }),
        );
        Ok(end(run, answer, false))
    }
}

loom_sdk::export_architecture!(Supervisor);

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = r#"{"workers": {
        "calc": {"description": "arithmetic", "agent": "calculator"},
        "writer": {"description": "prose", "architecture": "self-refine",
                   "instructions": "be brief", "tools": ["fetch"], "config": {"max_rounds": 2}}
    }, "max_rounds": 2}"#;

    fn outcome(worker: &str, task: &str, output: &str) -> Outcome {
        Outcome {
            worker: worker.into(),
            task: task.into(),
            output: output.into(),
            ok: true,
        }
    }

    #[test]
    fn config_builds_agent_refs() {
        let config = parse_config(TWO).unwrap();
        assert_eq!(config.max_rounds, 2);
        assert_eq!(names(&config.workers), "calc, writer");
        let calc = &config.workers[0];
        assert_eq!(calc.description, "arithmetic");
        assert_eq!(calc.agent.architecture, "agent:calculator");
        assert!(calc.agent.instructions.is_empty() && calc.agent.tools.is_empty());
        assert_eq!(calc.agent.config, None);
        let writer = &config.workers[1];
        assert_eq!(writer.agent.architecture, "self-refine");
        assert_eq!(writer.agent.instructions, "be brief");
        assert_eq!(writer.agent.tools, vec!["fetch".to_owned()]);
        assert_eq!(writer.agent.config.as_deref(), Some(r#"{"max_rounds":2}"#));

        let bare = parse_config(r#"{"workers": {"a": {"description": "d"}}}"#).unwrap();
        assert_eq!(bare.max_rounds, 4);
        assert_eq!(bare.workers[0].agent.architecture, "react");
    }

    #[test]
    fn bad_configs_are_refused() {
        let many = |n: usize| {
            let entries = (0..n)
                .map(|i| format!(r#""w{i}": {{"description": "d"}}"#))
                .collect::<Vec<_>>()
                .join(",");
            format!(r#"{{"workers": {{{entries}}}}}"#)
        };
        assert!(parse_config(&many(16)).is_ok());
        let seventeen = many(17);
        let long = format!(
            r#"{{"workers": {{"{}": {{"description": "d"}}}}}}"#,
            "a".repeat(65)
        );
        for bad in [
            seventeen.as_str(),
            long.as_str(),
            r#"{"workers": {"a.b": {"description": "d"}}}"#,
            r#"{"workers": {"a": {"description": ""}}}"#,
            r#"{"workers": {"a": {"agent": "x"}}}"#,
            r#"{"workers": {"a": {"description": "d", "agent": "x", "instructions": "i"}}}"#,
            r#"{"workers": {"a": {"description": "d", "agent": "x", "config": {}}}}"#,
            r#"{"workers": {"a": {"description": "d", "agent": ""}}}"#,
            r#"{"workers": {"a": {"description": "d", "architecture": "agent:x"}}}"#,
            r#"{"workers": {"a": {"description": "d", "config": "x"}}}"#,
            r#"{"workers": {"a": {"description": "d", "extra": 1}}}"#,
            r#"{"workers": {"a": {"description": "d"}}, "max_rounds": 0}"#,
            r#"{"workers": {"a": {"description": "d"}}, "max_rounds": 11}"#,
            r#"{"workers": {"a": {"description": "d"}}, "rounds": 2}"#,
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
            p["workers"]["maxProperties"],
            serde_json::json!(MAX_WORKERS)
        );
        let worker = &p["workers"]["additionalProperties"];
        assert_eq!(worker["properties"]["architecture"]["default"], "react");
        assert_eq!(worker["additionalProperties"], serde_json::json!(false));
        assert_eq!(schema["additionalProperties"], serde_json::json!(false));
        assert!(schema.get("required").is_none(), "every key has a default");
    }

    #[test]
    fn replies_are_read_leniently() {
        let delegation = |w: &str, t: &str| Delegation {
            worker: Some(w.into()),
            task: Some(t.into()),
        };
        assert_eq!(
            decide(
                r#"{"delegate": [{"worker": "calc", "task": "2+2"}, {"worker": "writer", "task": "poem"}]}"#
            ),
            Decision::Delegate(vec![
                delegation("calc", "2+2"),
                delegation("writer", "poem")
            ])
        );
        assert_eq!(
            decide(
                "Plan:\n```json\n{\"delegate\": {\"worker\": \"calc\", \"task\": \"2+2\"}}\n```"
            ),
            Decision::Delegate(vec![delegation("calc", "2+2")])
        );
        assert_eq!(
            decide(r#"{"delegate": [{"worker": 3}]}"#),
            Decision::Delegate(vec![Delegation {
                worker: None,
                task: None
            }])
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
        assert_eq!(
            decide(r#"{"delegate": []}"#),
            Decision::Delegate(Vec::new())
        );
    }

    #[test]
    fn results_are_cut_in_rounds_but_never_in_the_final_prompt() {
        let config = parse_config(TWO).unwrap();
        let long = "x".repeat(RESULT_CHARS + 10);
        let results = vec![
            outcome("calc", "2+2", "4"),
            outcome("writer", "poem", &long),
        ];
        let round = round_text("t", &config.workers, &results, 2, 2);
        assert!(round.starts_with("Task:\nt\n\nWorkers:\n- calc: arithmetic\n- writer: prose"));
        assert!(round.contains("Round 2 of 2."), "{round}");
        assert!(round.contains("Results so far:\n\n[calc] 2+2 -> 4\n\n[writer] poem -> "));
        assert!(round.contains(&format!("{} [... cut]", "x".repeat(RESULT_CHARS))));
        assert!(!round.contains(&long));
        assert!(round.contains(r#"{"final": "<answer>"}"#), "{round}");
        let last = final_text("t", &config.workers, &results);
        assert!(last.contains(&format!("[writer] poem -> {long}")));
        assert!(!last.contains("[... cut]"));
        assert!(last.contains("No more delegation is possible"));
        let first = round_text("t", &config.workers, &[], 1, 4);
        assert!(first.contains("Results so far: none yet."), "{first}");
    }

    #[test]
    fn errors_and_fallback_outputs() {
        let config = parse_config(TWO).unwrap();
        assert_eq!(
            unknown_worker("coder", &config.workers),
            "ERROR: no worker named coder (workers: calc, writer)"
        );
        assert_eq!(
            arch::harness_error_text(HarnessError::UnknownAgent("x".into())),
            "unknown agent: x"
        );
        assert_eq!(latest(&[]), "");
        assert_eq!(
            latest(&[outcome("a", "t", "1"), outcome("b", "t", "2")]),
            "2"
        );
        let history = vec![Message::system("old"), Message::user("before")];
        let messages = messages("", &history, "req".into());
        assert_eq!(messages[0].content, SUPERVISOR_SYSTEM);
        assert_eq!(messages.len(), 3);
    }

    #[test]
    fn no_team_is_one_react_assistant() {
        for text in ["", "{}"] {
            let config = parse_config(text).unwrap();
            assert_eq!(config.workers.len(), 1, "{text:?}");
            assert_eq!(config.workers[0].name, "assistant");
            assert_eq!(config.workers[0].agent.architecture, "react");
        }
    }
}
