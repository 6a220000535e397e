//! Plan-and-execute: a planner breaks the task into steps, an executor
//! carries out each step with tools, and a synthesizer writes the answer
//! from the steps' results.
//!
//! 1. **Plan.** A completion with role `planner` and no tools sees the
//!    agent's instructions (as a system message, when there are any), the
//!    session history (without its system messages) and one user message
//!    holding the task (the prompt), the names of the tools the executor
//!    may call and the request for a JSON array of at most `max_steps`
//!    step descriptions. The reply is parsed leniently: the first JSON
//!    array in it (code fences and surrounding prose are skipped) of
//!    strings or of objects with a `description` (or `step`) string;
//!    failing that, its numbered (`1.`, `2)`) or bulleted (`-`, `*`) lines;
//!    failing that, the whole reply as one step. The plan is cut to
//!    `max_steps` steps. An empty plan ends the run with the output
//!    `The planner produced no steps.`
//! 2. **Execute.** Each step in order is a ReAct loop with role `executor`
//!    that is offered the run's tools, in a fresh conversation: the agent's
//!    instructions (system, when there are any), then one user message
//!    holding the task, the whole numbered plan, the results of the
//!    previous steps and `Now do step <i>: <description>`. Every tool call
//!    of a turn goes to the host in one `call-tools` (permissions, budgets
//!    and the journal apply); denials and tool errors become tool messages
//!    (`DENIED: ...`, `ERROR: ...`). The executor's answer without tool
//!    calls is the step's result.
//! 3. **Synthesize.** A completion with role `synthesizer` and no tools
//!    sees the instructions (system, when there are any), the session
//!    history (without system messages) and one user message holding the
//!    task, the plan and every step's result, and writes the final answer.
//!    A blank reply falls back to the step results joined.
//!
//! Every completion counts as a turn against `max-turns`. When the turns
//! run out before a completion, the run ends interrupted with reason
//! `max_turns` and, as its output, the results of the steps completed so
//! far joined (`Step <i>: <description>` then the result, blank lines
//! between steps; empty when no step completed).
//!
//! The run adds to the session the seed (instructions as a system message
//! for a new session, then the prompt) and one assistant message with the
//! output (when it is not empty). Plans, executor turns and step results
//! stay out of the session.
//!
//! # Configuration
//!
//! * `max_steps` (integer, 1 to 32, default 8): steps of the plan at most;
//!   later steps are dropped.
//!
//! Unknown keys are refused (`invalid-config`).
//!
//! # Events
//!
//! * `plan` — `{"steps": [<description>, ...]}` once the plan is parsed
//!   (also for an empty plan).
//! * `step_started` — `{"index": <i>, "description": <text>}` before a
//!   step (steps count from 1).
//! * `step_completed` — `{"index": <i>}` after a step's result.
//! * `synthesized` — `{}` after the synthesizer's answer.

use loom_sdk::arch::{
    self, Architecture, ArchitectureInfo, CompletionRequest, Message, Run, RunError, RunInput,
    RunOutput, ToolSpec,
};
use serde::Deserialize;
use serde_json::{Value, json};

/// The largest `max_steps` accepted.
const MAX_STEPS: u32 = 32;

/// The JSON Schema of the configuration.
const CONFIG_SCHEMA: &str = r#"{"type":"object","properties":{"max_steps":{"type":"integer","minimum":1,"maximum":32,"default":8}},"additionalProperties":false}"#;

/// The output when the plan has no steps.
const EMPTY_PLAN: &str = "The planner produced no steps.";

/// The configuration object.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    /// Steps of the plan at most.
    max_steps: u32,
}

impl Default for Config {
    fn default() -> Self {
        Config { max_steps: 8 }
    }
}

/// Parse and check the configuration text.
fn parse_config(text: &str) -> Result<Config, RunError> {
    let config: Config = arch::config_from_str(text)?;
    if !(1..=MAX_STEPS).contains(&config.max_steps) {
        return Err(RunError::invalid_config(format!(
            "max_steps must be from 1 to {MAX_STEPS}, not {}",
            config.max_steps
        )));
    }
    Ok(config)
}

/// The first JSON array in `text` (after any `[`, so code fences and prose
/// around it are skipped) whose items all pass `item_ok`. A non-empty one
/// wins over an empty one; `None` when there is neither.
fn find_json_array(text: &str, item_ok: impl Fn(&Value) -> bool) -> Option<Vec<Value>> {
    let mut empty = false;
    for (start, _) in text.match_indices('[') {
        let mut values = serde_json::Deserializer::from_str(&text[start..]).into_iter::<Value>();
        if let Some(Ok(Value::Array(items))) = values.next()
            && items.iter().all(&item_ok)
        {
            if !items.is_empty() {
                return Some(items);
            }
            empty = true;
        }
    }
    empty.then(Vec::new)
}

/// The description of one plan item: a string, or an object's
/// `description` (or `step`, or `name`) string.
fn item_text(item: &Value) -> Option<&str> {
    match item {
        Value::String(text) => Some(text),
        Value::Object(map) => ["description", "step", "name"]
            .iter()
            .find_map(|key| map.get(*key).and_then(Value::as_str)),
        _ => None,
    }
}

/// The text of a numbered (`1.`, `2)`, `Step 3:`) or bulleted (`-`, `*`,
/// `+`, `•`) line, without its marker; `None` for any other line.
fn list_item(line: &str) -> Option<&str> {
    let line = line.trim();
    for bullet in ['-', '*', '+', '•'] {
        if let Some(rest) = line.strip_prefix(bullet)
            && rest.starts_with(char::is_whitespace)
        {
            return Some(rest.trim());
        }
    }
    let lower = line.to_ascii_lowercase();
    let (line, step_prefix) = match lower.strip_prefix("step ") {
        Some(_) => (&line[5..], true),
        None => (line, false),
    };
    let digits = line.len() - line.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    if digits == 0 {
        return None;
    }
    let rest = &line[digits..];
    let markers: &[char] = if step_prefix {
        &['.', ')', ':']
    } else {
        &['.', ')']
    };
    let rest = rest.strip_prefix(markers)?;
    (rest.is_empty() || rest.starts_with(char::is_whitespace)).then(|| rest.trim())
}

/// The steps of the planner's `reply`, at most `max_steps`: a JSON array
/// of strings or of objects with `description`/`step`; else its numbered
/// or bulleted lines; else the whole reply (without code-fence lines) as
/// one step. Blank steps are dropped; a blank reply has none.
fn parse_plan(reply: &str, max_steps: usize) -> Vec<String> {
    let mut steps: Vec<String> = match find_json_array(reply, |item| item_text(item).is_some()) {
        Some(items) => items
            .iter()
            .filter_map(item_text)
            .map(|text| text.trim().to_owned())
            .collect(),
        None => {
            let listed: Vec<String> = reply
                .lines()
                .filter_map(list_item)
                .map(str::to_owned)
                .collect();
            if listed.iter().any(|step| !step.is_empty()) {
                listed
            } else {
                let text: Vec<&str> = reply
                    .lines()
                    .filter(|line| !line.trim_start().starts_with("```"))
                    .collect();
                vec![text.join("\n").trim().to_owned()]
            }
        }
    };
    steps.retain(|step| !step.is_empty());
    steps.truncate(max_steps);
    steps
}

/// The plan as numbered lines (`1. ...`).
fn numbered(steps: &[String]) -> String {
    steps
        .iter()
        .enumerate()
        .map(|(i, step)| format!("{}. {step}", i + 1))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The results of the steps done so far: `Step <i>: <description>` then
/// the result, a blank line between steps.
fn joined_results(steps: &[String], results: &[String]) -> String {
    results
        .iter()
        .zip(steps)
        .enumerate()
        .map(|(i, (result, step))| format!("Step {}: {step}\n{}", i + 1, result.trim()))
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// The planner's user message.
fn planner_prompt(task: &str, tool_names: &[String], max_steps: u32) -> String {
    let tools = if tool_names.is_empty() {
        "(none)".to_owned()
    } else {
        tool_names.join(", ")
    };
    format!(
        "You are the planner. Break the task into at most {max_steps} short, concrete steps that \
         an executor can carry out one after another. The executor can call these tools: \
         {tools}.\n\nTask:\n{task}\n\nReply with a JSON array of strings, one string per step, \
         in order, and nothing else."
    )
}

/// The executor's user message for step `index` (from 0).
fn executor_prompt(task: &str, steps: &[String], results: &[String], index: usize) -> String {
    let previous = if results.is_empty() {
        "(none yet)".to_owned()
    } else {
        joined_results(steps, results)
    };
    format!(
        "Task:\n{task}\n\nPlan:\n{}\n\nResults of the previous steps:\n{previous}\n\nNow do step \
         {}: {}\nUse the tools when they help. Reply with the result of this step only.",
        numbered(steps),
        index + 1,
        steps[index]
    )
}

/// The synthesizer's user message.
fn synthesizer_prompt(task: &str, steps: &[String], results: &[String]) -> String {
    format!(
        "Task:\n{task}\n\nPlan:\n{}\n\nStep results:\n{}\n\nUsing the step results, write the \
         final answer to the task. Reply with the answer only.",
        numbered(steps),
        joined_results(steps, results)
    )
}

/// The instructions (as a system message, when there are any) and the
/// session history without its system messages.
fn context(input: &RunInput) -> Vec<Message> {
    arch::context(&input.instructions, &input.history)
}

/// A request for `role` with `messages`, offering `tools`.
fn request(role: &str, messages: Vec<Message>, tools: Vec<ToolSpec>) -> CompletionRequest {
    CompletionRequest {
        messages,
        tools,
        temperature: None,
        max_output_tokens: None,
        output_schema: None,
        role: Some(role.into()),
    }
}

/// End the run with `output` pushed as the final assistant message (when
/// not empty), interrupted for `reason` when given.
fn end(mut run: Run, output: String, interrupted: Option<&str>) -> RunOutput {
    if !output.is_empty() {
        run.push(Message::assistant(output.clone()));
    }
    match interrupted {
        Some(reason) => run.interrupted_with(output, reason),
        None => run.finish(output),
    }
}

struct PlanAndExecute;

impl Architecture for PlanAndExecute {
    fn describe() -> ArchitectureInfo {
        ArchitectureInfo {
            name: "plan-and-execute".into(),
            description: "Plan the task as a list of steps (role planner), carry out each step in \
                          order with a ReAct loop that calls tools (role executor), then write \
                          the answer from the step results (role synthesizer)"
                .into(),
            workers: Vec::new(),
            config_schema: CONFIG_SCHEMA.into(),
        }
    }

    fn run(input: RunInput) -> Result<RunOutput, RunError> {
        let config = parse_config(&input.config)?;
        let mut run = Run::seed(&input);
        let task = input.prompt.as_str();
        if run.out_of_turns() {
            return Ok(end(run, String::new(), Some("max_turns")));
        }

        let tools = arch::tools();
        let tool_names: Vec<String> = tools.iter().map(|tool| tool.name.clone()).collect();
        let mut planner_messages = context(&input);
        planner_messages.push(Message::user(planner_prompt(
            task,
            &tool_names,
            config.max_steps,
        )));
        let reply = run
            .complete_request(&request("planner", planner_messages, Vec::new()))?
            .message
            .content;
        let steps = parse_plan(&reply, config.max_steps as usize);
        arch::emit("plan", json!({ "steps": steps }));
        if steps.is_empty() {
            return Ok(end(run, EMPTY_PLAN.into(), None));
        }

        let mut results: Vec<String> = Vec::new();
        for index in 0..steps.len() {
            arch::emit(
                "step_started",
                json!({ "index": index + 1, "description": steps[index] }),
            );
            let mut conversation = Vec::new();
            if !input.instructions.is_empty() {
                conversation.push(Message::system(input.instructions.clone()));
            }
            conversation.push(Message::user(executor_prompt(
                task, &steps, &results, index,
            )));
            let result = loop {
                if run.out_of_turns() {
                    let output = joined_results(&steps, &results);
                    return Ok(end(run, output, Some("max_turns")));
                }
                let message = run
                    .complete_request(&request("executor", conversation.clone(), tools.clone()))?
                    .message;
                conversation.push(message.clone());
                if message.tool_calls.is_empty() {
                    break message.content;
                }
                for result in arch::call_tools(&message.tool_calls) {
                    conversation.push(Message::observation(result));
                }
            };
            results.push(result);
            arch::emit("step_completed", json!({ "index": index + 1 }));
        }

        if run.out_of_turns() {
            let output = joined_results(&steps, &results);
            return Ok(end(run, output, Some("max_turns")));
        }
        let mut synthesizer_messages = context(&input);
        synthesizer_messages.push(Message::user(synthesizer_prompt(task, &steps, &results)));
        let answer = run
            .complete_request(&request("synthesizer", synthesizer_messages, Vec::new()))?
            .message
            .content;
        arch::emit("synthesized", json!({}));
        let output = if answer.trim().is_empty() {
            joined_results(&steps, &results)
        } else {
            answer
        };
        Ok(end(run, output, None))
    }
}

loom_sdk::export_architecture!(PlanAndExecute);

#[cfg(test)]
mod tests {
    use super::*;
    use loom_sdk::arch::Role;

    fn plan(reply: &str) -> Vec<String> {
        parse_plan(reply, 8)
    }

    #[test]
    fn config_defaults_and_checks() {
        assert_eq!(parse_config("").unwrap(), Config::default());
        assert_eq!(parse_config("{}").unwrap(), Config { max_steps: 8 });
        assert_eq!(
            parse_config(r#"{"max_steps": 32}"#).unwrap(),
            Config { max_steps: 32 }
        );
        assert_eq!(
            parse_config(r#"{"max_steps": 1}"#).unwrap(),
            Config { max_steps: 1 }
        );
        for bad in [
            r#"{"max_steps": 0}"#,
            r#"{"max_steps": 33}"#,
            r#"{"max_steps": -1}"#,
            r#"{"max_steps": "2"}"#,
            r#"{"steps": 2}"#,
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
        let schema: Value = serde_json::from_str(CONFIG_SCHEMA).unwrap();
        let max_steps = &schema["properties"]["max_steps"];
        assert_eq!(max_steps["default"], json!(Config::default().max_steps));
        assert_eq!(max_steps["minimum"], json!(1));
        assert_eq!(max_steps["maximum"], json!(MAX_STEPS));
        assert_eq!(schema["additionalProperties"], json!(false));
    }

    #[test]
    fn plans_are_json_arrays_of_strings_or_objects() {
        assert_eq!(plan(r#"["find x", " add y "]"#), ["find x", "add y"]);
        assert_eq!(
            plan(r#"[{"id": "s1", "description": "find x"}, {"step": "add y"}]"#),
            ["find x", "add y"]
        );
        assert_eq!(
            plan("Here is the plan:\n```json\n[\"a\", \"b\"]\n```\nGood luck [really]."),
            ["a", "b"]
        );
        // Arrays of other things are skipped for a later plan array.
        assert_eq!(plan(r#"Use [1, 2] then ["a"]"#), ["a"]);
        // An empty array is an empty plan.
        assert!(plan("[]").is_empty());
        assert!(plan("```json\n[ ]\n```").is_empty());
        // Blank steps are dropped.
        assert_eq!(plan(r#"["a", "  ", ""]"#), ["a"]);
    }

    #[test]
    fn plans_fall_back_to_lists_then_to_the_whole_reply() {
        assert_eq!(
            plan("Plan:\n1. find x\n2) add y\nStep 3: check\nthanks"),
            ["find x", "add y", "check"]
        );
        assert_eq!(plan("- one\n* two\n• three"), ["one", "two", "three"]);
        assert_eq!(plan("1.5 is not a step"), ["1.5 is not a step"]);
        assert_eq!(plan("Echo: do the thing"), ["Echo: do the thing"]);
        assert_eq!(plan("```\njust this\n```"), ["just this"]);
        assert!(plan("  \n").is_empty());
        // A broken JSON array falls back too.
        assert_eq!(plan("[\"a\", \n- b"), ["b"]);
    }

    #[test]
    fn plans_are_cut_to_max_steps() {
        assert_eq!(parse_plan(r#"["a", "b", "c"]"#, 2), ["a", "b"]);
        assert_eq!(parse_plan("1. a\n2. b\n3. c", 1), ["a"]);
    }

    #[test]
    fn list_items() {
        assert_eq!(list_item("  12. twelve "), Some("twelve"));
        assert_eq!(list_item("-x"), None);
        assert_eq!(list_item("- x"), Some("x"));
        assert_eq!(list_item("step 2. go"), Some("go"));
        assert_eq!(list_item("Step 2: go"), Some("go"));
        assert_eq!(list_item("2: go"), None);
        assert_eq!(list_item("plain"), None);
    }

    #[test]
    fn prompts_hold_what_each_role_needs() {
        let planner = planner_prompt("add 2 and 2", &["calc".into(), "search".into()], 5);
        assert!(planner.contains("Task:\nadd 2 and 2"), "{planner}");
        assert!(planner.contains("tools: calc, search."), "{planner}");
        assert!(planner.contains("at most 5"), "{planner}");
        assert!(planner.contains("JSON array of strings"), "{planner}");
        assert!(planner_prompt("t", &[], 8).contains("tools: (none)."));
        // An echo of the planner prompt is not a JSON plan or a list.
        assert_eq!(plan(&format!("Echo: {planner}")).len(), 1);

        let steps = vec!["find x".to_owned(), "add y".to_owned()];
        let first = executor_prompt("task", &steps, &[], 0);
        assert!(first.contains("Plan:\n1. find x\n2. add y"), "{first}");
        assert!(first.contains("previous steps:\n(none yet)"), "{first}");
        assert!(first.contains("Now do step 1: find x"), "{first}");
        let second = executor_prompt("task", &steps, &["x is 3".into()], 1);
        assert!(second.contains("Step 1: find x\nx is 3"), "{second}");
        assert!(second.contains("Now do step 2: add y"), "{second}");

        let synth = synthesizer_prompt("task", &steps, &["x is 3".into(), "5".into()]);
        assert!(synth.contains("Task:\ntask"), "{synth}");
        assert!(
            synth.contains("Step results:\nStep 1: find x\nx is 3\n\nStep 2: add y\n5"),
            "{synth}"
        );
    }

    #[test]
    fn context_keeps_instructions_and_history_without_system_messages() {
        let input = RunInput {
            instructions: "be brief".into(),
            history: vec![
                Message::system("old"),
                Message::user("hi"),
                Message::assistant("hello"),
            ],
            prompt: "next".into(),
            config: "{}".into(),
            max_turns: 5,
        };
        let messages = context(&input);
        let seen: Vec<_> = messages
            .iter()
            .map(|m| (m.role, m.content.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                (Role::System, "be brief"),
                (Role::User, "hi"),
                (Role::Assistant, "hello")
            ]
        );
    }

    #[test]
    fn requests_name_their_role() {
        let planner = request("planner", vec![Message::user("x")], Vec::new());
        assert!(planner.tools.is_empty());
        assert_eq!(planner.role.as_deref(), Some("planner"));
    }
}
