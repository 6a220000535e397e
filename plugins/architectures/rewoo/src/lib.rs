//! ReWOO (reasoning without observation): a planner writes every tool call
//! up front, the tools run level by level, and a solver answers from the
//! evidence: two completions and one `call-tools` per level.
//!
//! 1. **Plan.** A completion with role `planner` and no tools sees the
//!    agent's instructions (as a system message, when there are any), the
//!    session history (without its system messages) and one user message
//!    holding the tools (name, description and parameter schema of each),
//!    the task (the prompt) and the request for a JSON array of at most
//!    `max_steps` steps `{"id": "E1", "tool": "<name>", "args": {...}}`.
//!    A string inside `args` may hold a placeholder `{{E<n>}}` for the
//!    output of an earlier step. The reply is parsed leniently: the first
//!    JSON array in it (code fences and prose around it are skipped) whose
//!    items are objects with a `tool` string; a missing `id` becomes
//!    `E<position>` (a leading `#` is dropped), missing `args` become `{}`.
//!    Steps after `max_steps` are dropped. A reply without such an array
//!    (or `[]`) is an empty plan: the solver answers without evidence.
//! 2. **Order.** A step depends on the steps its placeholders name; the
//!    steps are grouped in levels (a step runs in the first level after
//!    all its dependencies), each level in id order (`E2` before `E10`). A
//!    plan whose placeholders form a cycle, that names a step not in the
//!    (cut) plan, or that uses an id twice ends the run, without running
//!    any tool, with an output naming the problem: `cyclic_plan: ...`,
//!    `unknown_reference: ...` or `duplicate_step: ...`.
//! 3. **Work.** Each level is one `call-tools` with all its calls (call id
//!    `rewoo_<id>`, so permissions, budgets and the journal apply to every
//!    call), after every placeholder inside the string values of the
//!    arguments is replaced by that step's output. A step's output is the
//!    tool's output (a JSON string is unquoted), or for a failed or denied
//!    call its error text (`ERROR: ...`, `DENIED: ...`); failures never
//!    end the run.
//! 4. **Solve.** A completion with role `solver` and no tools sees the
//!    instructions (system, when there are any), the session history
//!    (without system messages) and one user message holding the task, the
//!    plan and the evidence (`E1 = <output>`), and writes the final answer.
//!
//! Both completions count as turns against `max-turns`. When no turn is
//! left for the planner, or for the solver after planning, the run ends
//! interrupted with reason `max_turns` and an empty output, before any tool
//! runs.
//!
//! The run adds to the session the seed (instructions as a system message
//! for a new session, then the prompt) and one assistant message with the
//! output (when it is not empty). The plan and the evidence stay out of the
//! session.
//!
//! # Configuration
//!
//! * `max_steps` (integer, 1 to 32, default 8): tool calls of the plan at
//!   most; later steps are dropped.
//!
//! Unknown keys are refused (`invalid-config`).
//!
//! # Events
//!
//! * `plan` — `{"steps": [{"id": .., "tool": .., "args": {..}}, ...]}`
//!   once the plan is parsed (`[]` for an empty or unparseable plan).
//! * `level` — `{"index": <i>, "ids": ["E1", ...]}` before a level's
//!   `call-tools` (levels count from 1).
//! * `evidence` — `{"id": "E1", "ok": <bool>}` for each step's result
//!   (`ok` is false for a failed or denied call).
//! * `solved` — `{}` after the solver's answer.

use std::collections::{HashMap, HashSet};

use loom_sdk::arch::{
    self, Architecture, ArchitectureInfo, CompletionRequest, Message, Run, RunError, RunInput,
    RunOutput, ToolCall, ToolResult, ToolSpec,
};
use serde::Deserialize;
use serde_json::{Value, json};

/// The largest `max_steps` accepted.
const MAX_STEPS: u32 = 32;

/// The JSON Schema of the configuration.
const CONFIG_SCHEMA: &str = r#"{"type":"object","properties":{"max_steps":{"type":"integer","minimum":1,"maximum":32,"default":8}},"additionalProperties":false}"#;

/// The configuration object.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    /// Tool calls of the plan at most.
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

/// One planned tool call.
#[derive(Debug, Clone, PartialEq)]
struct Step {
    /// Its id, such as `E1`.
    id: String,
    /// The tool to call.
    tool: String,
    /// The arguments, placeholders included.
    args: Value,
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

/// The steps of the planner's `reply`, at most `max_steps`; `None` when it
/// holds no JSON array of objects with a `tool` string.
fn parse_plan(reply: &str, max_steps: usize) -> Option<Vec<Step>> {
    let is_step = |item: &Value| item.get("tool").and_then(Value::as_str).is_some();
    let items = find_json_array(reply, is_step)?;
    let steps = items
        .iter()
        .take(max_steps)
        .enumerate()
        .map(|(i, item)| {
            let id = item
                .get("id")
                .and_then(Value::as_str)
                .map(|id| id.trim().trim_start_matches('#').trim())
                .filter(|id| !id.is_empty())
                .map_or_else(|| format!("E{}", i + 1), str::to_owned);
            let args = match item.get("args").or_else(|| item.get("arguments")) {
                None | Some(Value::Null) => json!({}),
                Some(args) => args.clone(),
            };
            Step {
                id,
                tool: item["tool"].as_str().unwrap_or_default().trim().to_owned(),
                args,
            }
        })
        .collect();
    Some(steps)
}

/// True for a step reference: `E` then one or more digits.
fn is_reference(text: &str) -> bool {
    text.strip_prefix('E')
        .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
}

/// The placeholders `{{E<n>}}` of `text` (spaces inside the braces
/// allowed): each one's byte range and the id it names, in order.
fn scan(text: &str) -> Vec<(std::ops::Range<usize>, &str)> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(open) = text[from..].find("{{").map(|at| from + at) {
        let Some(close) = text[open + 2..].find("}}").map(|at| open + 2 + at) else {
            break;
        };
        let inner = text[open + 2..close].trim();
        if is_reference(inner) {
            found.push((open..close + 2, inner));
            from = close + 2;
        } else {
            from = open + 1;
        }
    }
    found
}

/// The ids the placeholders inside the string values of `args` name, in
/// order of first appearance.
fn placeholders(args: &Value) -> Vec<String> {
    fn walk(value: &Value, ids: &mut Vec<String>) {
        match value {
            Value::String(text) => {
                for (_, id) in scan(text) {
                    if !ids.iter().any(|known| known == id) {
                        ids.push(id.to_owned());
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|item| walk(item, ids)),
            Value::Object(map) => map.values().for_each(|item| walk(item, ids)),
            _ => {}
        }
    }
    let mut ids = Vec::new();
    walk(args, &mut ids);
    ids
}

/// `args` with every placeholder inside its string values replaced by the
/// output of the step it names; placeholders without an output stay.
fn substitute(args: &Value, outputs: &HashMap<String, String>) -> Value {
    match args {
        Value::String(text) => {
            let mut result = String::with_capacity(text.len());
            let mut last = 0;
            for (range, id) in scan(text) {
                if let Some(output) = outputs.get(id) {
                    result.push_str(&text[last..range.start]);
                    result.push_str(output);
                    last = range.end;
                }
            }
            result.push_str(&text[last..]);
            Value::String(result)
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| substitute(v, outputs)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, value)| (key.clone(), substitute(value, outputs)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The sort key of an id: `E<n>` by `n`, any other id after those.
fn id_key(id: &str) -> u64 {
    match id.strip_prefix('E') {
        Some(digits) if is_reference(id) => digits.parse().unwrap_or(u64::MAX - 1),
        _ => u64::MAX,
    }
}

/// The steps grouped in levels (indices into `steps`): a step goes in the
/// first level after all the steps its placeholders name; each level is in
/// id order (then plan order). The error names what makes the plan
/// impossible to run: a duplicate id, a reference to no step, or a cycle.
fn levels(steps: &[Step]) -> Result<Vec<Vec<usize>>, String> {
    let mut index_of = HashMap::new();
    for (i, step) in steps.iter().enumerate() {
        if index_of.insert(step.id.as_str(), i).is_some() {
            return Err(format!(
                "duplicate_step: the plan uses the id {} for more than one step",
                step.id
            ));
        }
    }
    let mut dependencies = Vec::new();
    for step in steps {
        let mut needs = Vec::new();
        for id in placeholders(&step.args) {
            match index_of.get(id.as_str()) {
                Some(&index) => needs.push(index),
                None => {
                    return Err(format!(
                        "unknown_reference: step {} refers to {{{{{id}}}}}, which is not a step of \
                         the plan",
                        step.id
                    ));
                }
            }
        }
        dependencies.push(needs);
    }
    let mut remaining: Vec<usize> = (0..steps.len()).collect();
    remaining.sort_by_key(|&i| (id_key(&steps[i].id), i));
    let mut done = vec![false; steps.len()];
    let mut levels = Vec::new();
    while !remaining.is_empty() {
        let (ready, waiting): (Vec<usize>, Vec<usize>) = remaining
            .iter()
            .partition(|&&i| dependencies[i].iter().all(|&d| done[d]));
        if ready.is_empty() {
            let ids: Vec<&str> = waiting.iter().map(|&i| steps[i].id.as_str()).collect();
            return Err(format!(
                "cyclic_plan: the steps {} wait on each other's output through their \
                 placeholders, so none of them can run",
                ids.join(", ")
            ));
        }
        for &i in &ready {
            done[i] = true;
        }
        levels.push(ready);
        remaining = waiting;
    }
    Ok(levels)
}

/// A step's evidence and whether the call succeeded: the tool's output (a
/// JSON string unquoted), or the error text of a failed or denied call.
fn evidence(result: ToolResult) -> (String, bool) {
    match &result.outcome {
        Ok(output) => {
            let text = match serde_json::from_str::<Value>(output) {
                Ok(Value::String(text)) => text,
                _ => output.clone(),
            };
            (text, true)
        }
        Err(_) => (Message::observation(result).content, false),
    }
}

/// The planner's user message.
fn planner_prompt(task: &str, tools: &[ToolSpec], max_steps: u32) -> String {
    let tools = if tools.is_empty() {
        "(none)".to_owned()
    } else {
        tools
            .iter()
            .map(|tool| {
                format!(
                    "- {}: {}\n  parameters: {}",
                    tool.name,
                    tool.description,
                    tool.parameters.trim()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    format!(
        "You are the planner. Plan the tool calls that gather the evidence needed for the task; \
         they will run without you, and a solver will answer the task from their outputs. Plan \
         at most {max_steps} tool calls.\n\nTools:\n{tools}\n\nTask:\n{task}\n\nReply with a \
         JSON array and nothing else. Each item is an object with \"id\" (E1, E2, ... in order), \
         \"tool\" (the name of a tool above) and \"args\" (the arguments object, matching the \
         tool's parameters). A string argument may contain {{{{En}}}}, which is replaced by the \
         output of the earlier step En. Reply with an empty array when no tool call is needed."
    )
}

/// The plan as lines `E1 = tool(args)`; `(none)` when empty.
fn plan_lines(steps: &[Step]) -> String {
    if steps.is_empty() {
        return "(none)".into();
    }
    steps
        .iter()
        .map(|step| format!("{} = {}({})", step.id, step.tool, step.args))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The solver's user message; `evidence` holds `(id, output)` in plan
/// order.
fn solver_prompt(task: &str, steps: &[Step], evidence: &[(String, String)]) -> String {
    let evidence = if evidence.is_empty() {
        "(none)".to_owned()
    } else {
        evidence
            .iter()
            .map(|(id, output)| format!("{id} = {output}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    format!(
        "Task:\n{task}\n\nPlan:\n{}\n\nEvidence:\n{evidence}\n\nUsing the evidence, write the \
         final answer to the task. Evidence that starts with ERROR: or DENIED: comes from a tool \
         call that failed or was refused. Reply with the answer only.",
        plan_lines(steps)
    )
}

/// The instructions (as a system message, when there are any) and the
/// session history without its system messages.
fn context(input: &RunInput) -> Vec<Message> {
    arch::context(&input.instructions, &input.history)
}

/// A request without tools for `role`: the context, then `prompt`.
fn request(role: &str, input: &RunInput, prompt: String) -> CompletionRequest {
    let mut messages = context(input);
    messages.push(Message::user(prompt));
    CompletionRequest {
        messages,
        tools: Vec::new(),
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

struct Rewoo;

impl Architecture for Rewoo {
    fn describe() -> ArchitectureInfo {
        ArchitectureInfo {
            name: "rewoo".into(),
            description: "Plan every tool call up front (role planner), run them level by level \
                          with {{E<n>}} outputs filled in (one call-tools per level), then answer \
                          from the evidence (role solver): two completions plus the tool calls"
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
        let prompt = planner_prompt(task, &tools, config.max_steps);
        let reply = run
            .complete_request(&request("planner", &input, prompt))?
            .message
            .content;
        let steps = parse_plan(&reply, config.max_steps as usize).unwrap_or_default();
        let planned: Vec<Value> = steps
            .iter()
            .map(|step| json!({ "id": step.id, "tool": step.tool, "args": step.args }))
            .collect();
        arch::emit("plan", json!({ "steps": planned }));
        let levels = match levels(&steps) {
            Ok(levels) => levels,
            Err(problem) => return Ok(end(run, problem, None)),
        };
        if run.out_of_turns() {
            return Ok(end(run, String::new(), Some("max_turns")));
        }

        let mut outputs: HashMap<String, String> = HashMap::new();
        for (number, level) in levels.iter().enumerate() {
            let ids: Vec<&str> = level.iter().map(|&i| steps[i].id.as_str()).collect();
            arch::emit("level", json!({ "index": number + 1, "ids": ids }));
            let calls: Vec<ToolCall> = level
                .iter()
                .map(|&i| ToolCall {
                    id: format!("rewoo_{}", steps[i].id),
                    name: steps[i].tool.clone(),
                    arguments: substitute(&steps[i].args, &outputs).to_string(),
                })
                .collect();
            let results = arch::call_tools(&calls);
            let mut unanswered: HashSet<usize> = level.iter().copied().collect();
            for (&i, result) in level.iter().zip(results) {
                let (text, ok) = evidence(result);
                arch::emit("evidence", json!({ "id": steps[i].id, "ok": ok }));
                outputs.insert(steps[i].id.clone(), text);
                unanswered.remove(&i);
            }
            for i in unanswered {
                outputs.insert(
                    steps[i].id.clone(),
                    "ERROR: the host returned no result for this call".into(),
                );
            }
        }

        let gathered: Vec<(String, String)> = steps
            .iter()
            .map(|step| (step.id.clone(), outputs[&step.id].clone()))
            .collect();
        let prompt = solver_prompt(task, &steps, &gathered);
        let answer = run
            .complete_request(&request("solver", &input, prompt))?
            .message
            .content;
        arch::emit("solved", json!({}));
        Ok(end(run, answer, None))
    }
}

loom_sdk::export_architecture!(Rewoo);

#[cfg(test)]
mod tests {
    use super::*;
    use loom_sdk::arch::Role;
    use loom_sdk::arch::ToolError;

    fn step(id: &str, tool: &str, args: Value) -> Step {
        Step {
            id: id.into(),
            tool: tool.into(),
            args,
        }
    }

    fn ids(steps: &[Step], levels: &[Vec<usize>]) -> Vec<Vec<String>> {
        levels
            .iter()
            .map(|level| level.iter().map(|&i| steps[i].id.clone()).collect())
            .collect()
    }

    #[test]
    fn config_defaults_and_checks() {
        assert_eq!(parse_config("").unwrap(), Config::default());
        assert_eq!(parse_config("{}").unwrap(), Config { max_steps: 8 });
        assert_eq!(
            parse_config(r#"{"max_steps": 32}"#).unwrap(),
            Config { max_steps: 32 }
        );
        for bad in [
            r#"{"max_steps": 0}"#,
            r#"{"max_steps": 33}"#,
            r#"{"max_steps": "2"}"#,
            r#"{"parallel_levels": true}"#,
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
    fn plans_are_parsed_leniently() {
        let reply = "Plan:\n```json\n[{\"id\": \"E1\", \"tool\": \"search\", \"args\": {\"q\": \
                     \"x\"}}, {\"id\": \"#E2\", \"tool\": \"calc\", \"args\": {\"expr\": \
                     \"{{E1}} + 1\"}}, {\"tool\": \"noop\"}]\n```\nDone [1].";
        assert_eq!(
            parse_plan(reply, 8).unwrap(),
            [
                step("E1", "search", json!({"q": "x"})),
                step("E2", "calc", json!({"expr": "{{E1}} + 1"})),
                step("E3", "noop", json!({})),
            ]
        );
        assert_eq!(parse_plan(reply, 1).unwrap().len(), 1);
        assert_eq!(parse_plan("[]", 8), Some(Vec::new()));
        // Schema arrays and other arrays are not plans.
        assert_eq!(
            parse_plan(r#"{"required": ["q"]} then [{"tool": "t"}]"#, 8).unwrap(),
            [step("E1", "t", json!({}))]
        );
        assert_eq!(parse_plan("Echo: no plan here", 8), None);
        assert_eq!(parse_plan(r#"["a", "b"]"#, 8), None);
        assert_eq!(parse_plan("[{\"tool\": ", 8), None);
    }

    #[test]
    fn placeholders_are_found_and_substituted() {
        let args = json!({
            "q": "{{E1}} and {{ E2 }} and {{E1}}",
            "list": ["{{E3}}", 4, {"deep": "x{{E10}}y"}],
            "not": "{{name}} {E4} {{E}} {{e5}}",
        });
        let mut found = placeholders(&args);
        found.sort();
        assert_eq!(found, ["E1", "E10", "E2", "E3"]);
        let outputs: HashMap<String, String> = [("E1", "one"), ("E2", "two"), ("E10", "ten")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(
            substitute(&args, &outputs),
            json!({
                "q": "one and two and one",
                "list": ["{{E3}}", 4, {"deep": "xteny"}],
                "not": "{{name}} {E4} {{E}} {{e5}}",
            })
        );
        assert_eq!(scan("{{{E1}}}").len(), 1);
        assert_eq!(substitute(&json!("{{{E1}}}"), &outputs), json!("{one}"));
    }

    #[test]
    fn levels_follow_dependencies_in_id_order() {
        let steps = vec![
            step("E10", "t", json!({"a": "{{E2}}"})),
            step("E2", "t", json!({})),
            step("E1", "t", json!({})),
            step("E3", "t", json!({"a": "{{E1}} {{E10}}"})),
            step("E4", "t", json!({"a": "{{E2}}"})),
        ];
        let levels = levels(&steps).unwrap();
        assert_eq!(
            ids(&steps, &levels),
            [vec!["E1", "E2"], vec!["E4", "E10"], vec!["E3"]]
        );
        assert_eq!(super::levels(&[]).unwrap(), Vec::<Vec<usize>>::new());
    }

    #[test]
    fn bad_plans_name_the_problem() {
        let cyclic = vec![
            step("E1", "t", json!({"a": "{{E2}}"})),
            step("E2", "t", json!({"a": "{{E1}}"})),
            step("E3", "t", json!({})),
        ];
        let problem = levels(&cyclic).unwrap_err();
        assert!(problem.starts_with("cyclic_plan: "), "{problem}");
        assert!(problem.contains("E1, E2"), "{problem}");
        let own = levels(&[step("E1", "t", json!({"a": "{{E1}}"}))]).unwrap_err();
        assert!(own.starts_with("cyclic_plan: "), "{own}");

        let unknown = levels(&[step("E1", "t", json!({"a": "{{E9}}"}))]).unwrap_err();
        assert!(unknown.starts_with("unknown_reference: "), "{unknown}");
        assert!(unknown.contains("{{E9}}"), "{unknown}");

        let twice = levels(&[step("E1", "t", json!({})), step("E1", "u", json!({}))]).unwrap_err();
        assert!(twice.starts_with("duplicate_step: "), "{twice}");
    }

    #[test]
    fn evidence_unquotes_strings_and_keeps_errors() {
        let result = |outcome| ToolResult {
            call_id: "rewoo_E1".into(),
            name: "calc".into(),
            outcome,
        };
        assert_eq!(evidence(result(Ok("\"4\"".into()))), ("4".into(), true));
        assert_eq!(
            evidence(result(Ok(r#"{"a":1}"#.into()))),
            (r#"{"a":1}"#.into(), true)
        );
        assert_eq!(evidence(result(Ok("plain".into()))), ("plain".into(), true));
        assert_eq!(
            evidence(result(Err(ToolError::Denied("no".into())))),
            ("DENIED: no".into(), false)
        );
        assert_eq!(
            evidence(result(Err(ToolError::Failed("boom".into())))),
            ("ERROR: boom".into(), false)
        );
    }

    #[test]
    fn prompts_hold_tools_plan_and_evidence() {
        let tools = vec![ToolSpec {
            name: "calc".into(),
            description: "Evaluate arithmetic".into(),
            parameters: r#"{"type":"object","required":["expr"]}"#.into(),
            destructive: false,
            idempotent: true,
        }];
        let planner = planner_prompt("add 2 and 2", &tools, 4);
        assert!(planner.contains("Tools:\n- calc: Evaluate arithmetic\n  parameters: {\"type\":\"object\",\"required\":[\"expr\"]}"), "{planner}");
        assert!(planner.contains("Task:\nadd 2 and 2"), "{planner}");
        assert!(planner.contains("at most 4 tool calls"), "{planner}");
        assert!(planner.contains("{{En}}"), "{planner}");
        assert!(planner_prompt("t", &[], 8).contains("Tools:\n(none)"));
        // An echo of the planner prompt is an empty plan.
        assert_eq!(
            parse_plan(&format!("Echo: {planner}"), 8).unwrap_or_default(),
            Vec::new()
        );

        let steps = vec![step("E1", "calc", json!({"expr": "2+2"}))];
        let solver = solver_prompt("add", &steps, &[("E1".into(), "4".into())]);
        assert!(solver.contains("Task:\nadd"), "{solver}");
        assert!(
            solver.contains("Plan:\nE1 = calc({\"expr\":\"2+2\"})"),
            "{solver}"
        );
        assert!(solver.contains("Evidence:\nE1 = 4"), "{solver}");
        let empty = solver_prompt("add", &[], &[]);
        assert!(
            empty.contains("Plan:\n(none)\n\nEvidence:\n(none)"),
            "{empty}"
        );
    }

    #[test]
    fn requests_offer_no_tools_and_skip_old_system_messages() {
        let input = RunInput {
            instructions: "be brief".into(),
            history: vec![Message::system("old"), Message::user("hi")],
            prompt: "next".into(),
            config: "{}".into(),
            max_turns: 5,
        };
        let request = request("solver", &input, "go".into());
        assert!(request.tools.is_empty());
        assert_eq!(request.role.as_deref(), Some("solver"));
        let seen: Vec<_> = request
            .messages
            .iter()
            .map(|m| (m.role, m.content.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                (Role::System, "be brief"),
                (Role::User, "hi"),
                (Role::User, "go")
            ]
        );
    }
}
