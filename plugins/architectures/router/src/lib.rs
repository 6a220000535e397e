//! Router: one classifier completion picks a route for the task, and the
//! route's agent answers it as a sub-agent.
//!
//! 1. **Classify.** One completion with role `router` and no tools sees a
//!    router system message (then the agent's instructions), the session's
//!    history (its non-system messages) and one user message holding the
//!    routes (`name: description`, in name order) and the task, and replies
//!    with a route name. The reply is read leniently: JSON `{"route":
//!    "..."}` (also inside a code fence or prose), else its first non-empty
//!    line with a `route:` label, quotes, backticks, asterisks and
//!    surrounding punctuation stripped; route names match case-insensitively.
//! 2. **Fallback.** A reply that names no route goes to `fallback` when it
//!    is set; otherwise the run finishes (not interrupted) with the output
//!    `unrouted: the router chose "<reply>", which is not one of: a, b`.
//! 3. **Delegate.** The route's agent runs through `delegate` with the
//!    original prompt as its input: `agent:NAME` for a route with `agent`,
//!    else the route's inline architecture (default `react`), instructions,
//!    tools (empty for all of this run's) and configuration. Its output is
//!    the run's output; when it was interrupted, the run ends interrupted
//!    with its reason and its output. A failed delegation fails the run
//!    (`harness`).
//!
//! The classifier's completion counts as a turn against `max-turns`, and
//! the sub-agent's turns, usage and cost are added to the run's. The turn
//! cap is checked before the classifier and before the delegation: when it
//! is reached, the run ends interrupted with reason `max_turns` and an
//! empty output.
//!
//! The run adds to the session the seed (instructions for a new session,
//! then the prompt) and one assistant message with the output (when it is
//! not empty). The classifier's reply stays out of the session.
//!
//! # Configuration
//!
//! * `routes` (object, 1 to 16 entries; default: one inline ReAct route named `assistant` with all of the run's tools): route name (1 to 64
//!   characters of `A-Z a-z 0-9 _ -`) to route. A route is
//!   `{"description": "...", "agent": "NAME"}` (the named agent
//!   `agent:NAME` of `loom.toml`) or `{"description": "...",
//!   "architecture": "react", "instructions": "...", "tools": [...],
//!   "config": {...}}` (an inline agent; every key but `description`
//!   optional, `architecture` defaulting to `react`). Giving `agent` with
//!   any of the inline keys is refused.
//!   The schema marks it `"x-loom-members": true`, so an agent's
//!   `workers` (named agents) fill it.
//! * `fallback` (string or null; default the only route when there is
//!   one, else null): the route taken when the reply names none; it must be
//!   one of `routes`.
//!
//! Unknown keys are refused (`invalid-config`).
//!
//! # Events
//!
//! * `classified` — `{"route": <name or null>, "reply": <excerpt>}` after
//!   the classifier answers (`route` null when the reply names no route;
//!   the reply's first 200 characters).
//! * `fallback` — `{"route": <fallback>, "chosen": <what the reply named>}`
//!   when the fallback route is taken.
//! * `delegated` — `{"route": <name>}` as the route's agent starts.

use std::collections::BTreeMap;

use loom_sdk::arch::{
    self, AgentRef, Architecture, ArchitectureInfo, CompletionRequest, Message, Run, RunError,
    RunInput, RunOutput,
};
use loom_sdk::team::{self, MemberSpec};
use serde::Deserialize;

/// The JSON Schema of the configuration.
const CONFIG_SCHEMA: &str = r#"{"type":"object","properties":{"routes":{"type":"object","x-loom-members":true,"minProperties":1,"maxProperties":16,"propertyNames":{"pattern":"^[A-Za-z0-9_-]{1,64}$"},"additionalProperties":{"type":"object","properties":{"description":{"type":"string","minLength":1},"agent":{"type":"string","pattern":"^[A-Za-z0-9_-]{1,64}$"},"architecture":{"type":"string","pattern":"^[A-Za-z0-9_-]{1,64}$","default":"react"},"instructions":{"type":"string","default":""},"tools":{"type":"array","items":{"type":"string"},"default":[]},"config":{"type":["object","null"],"default":null}},"required":["description"],"additionalProperties":false}},"fallback":{"type":["string","null"],"default":null}},"additionalProperties":false}"#;

/// The longest excerpt in an event or message, in characters.
const EXCERPT_CHARS: usize = 200;

/// Routes at most.
const MAX_ROUTES: usize = 16;

/// The classifier's system message, before the agent's instructions.
const ROUTER_SYSTEM: &str = "You are a router. You do not answer the task yourself: you pick \
the one route whose specialist is best suited to answer it. Reply with the route's name only, \
exactly as listed, and nothing else.";

/// The configuration object as written.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawConfig {
    routes: BTreeMap<String, MemberSpec>,
    fallback: Option<String>,
}

/// A checked route: its name, description and the agent it delegates to.
#[derive(Debug, Clone)]
struct Route {
    name: String,
    description: String,
    agent: AgentRef,
}

/// The checked configuration.
#[derive(Debug, Clone)]
struct Config {
    /// The routes, in name order.
    routes: Vec<Route>,
    /// The fallback route's name.
    fallback: Option<String>,
}

/// Parse and check the configuration text.
fn parse_config(text: &str) -> Result<Config, RunError> {
    let mut raw: RawConfig = arch::config_from_str(text)?;
    if raw.routes.is_empty() {
        raw.routes = team::default_members();
    }
    if raw.routes.len() > MAX_ROUTES {
        return Err(RunError::invalid_config(format!(
            "routes must hold 1 to {MAX_ROUTES} routes, not {}",
            raw.routes.len()
        )));
    }
    let mut routes = Vec::with_capacity(raw.routes.len());
    for (name, spec) in raw.routes {
        let description = spec.description.trim().to_owned();
        let agent = team::agent_ref("route", &name, spec).map_err(RunError::invalid_config)?;
        routes.push(Route {
            name,
            description,
            agent,
        });
    }
    if let Some(fallback) = &raw.fallback
        && !routes.iter().any(|r| &r.name == fallback)
    {
        return Err(RunError::invalid_config(format!(
            "fallback {fallback:?} is not one of the routes: {}",
            names(&routes)
        )));
    }
    // With a single route there is nothing to choose: a reply naming none
    // still goes there.
    let fallback = match (raw.fallback, routes.as_slice()) {
        (None, [only]) => Some(only.name.clone()),
        (fallback, _) => fallback,
    };
    Ok(Config { routes, fallback })
}

/// The routes' names, comma-separated.
fn names(routes: &[Route]) -> String {
    routes
        .iter()
        .map(|r| r.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The first `EXCERPT_CHARS` characters of `text`.
fn excerpt(text: &str) -> String {
    text.chars().take(EXCERPT_CHARS).collect()
}

/// What the classifier's `reply` names, cleaned: the `route` of a JSON
/// object, else the first non-empty line without a `route:` label,
/// quotes, backticks, asterisks or surrounding punctuation.
fn chosen(reply: &str) -> String {
    if let Some(route) = team::json_object(reply)
        .as_ref()
        .and_then(|map| map.get("route"))
        .and_then(|route| route.as_str())
    {
        return route.trim().to_owned();
    }
    let line = reply
        .lines()
        .map(|line| line.trim().trim_matches('`').trim())
        .find(|line| !line.is_empty())
        .unwrap_or("");
    let strip = |c: char| {
        c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '*' | '.' | ',' | ';' | ':' | '!')
    };
    let line = line.trim_matches(strip);
    let line = match line.get(..6) {
        Some(label) if label.eq_ignore_ascii_case("route:") => &line[6..],
        _ => line,
    };
    line.trim_matches(strip).to_owned()
}

/// The route `choice` names, compared case-insensitively.
fn find<'a>(routes: &'a [Route], choice: &str) -> Option<&'a Route> {
    routes.iter().find(|r| r.name.eq_ignore_ascii_case(choice))
}

/// The classifier's request text.
fn classify_text(task: &str, routes: &[Route]) -> String {
    let listing = routes
        .iter()
        .map(|r| format!("- {}: {}", r.name, r.description))
        .collect::<Vec<_>>()
        .join("\n");
    format!(
        "Routes:\n{listing}\n\nTask:\n{task}\n\nWhich route should handle the task? Reply with \
         the route name only (one of: {}).",
        names(routes)
    )
}

/// The output when the reply names no route and there is no fallback.
fn unrouted(choice: &str, routes: &[Route]) -> String {
    format!(
        "unrouted: the router chose \"{}\", which is not one of: {}",
        excerpt(choice),
        names(routes)
    )
}

/// The classifier's messages: the system message, the history without its
/// system messages, then the request.
fn messages(instructions: &str, history: &[Message], text: String) -> Vec<Message> {
    let system = if instructions.is_empty() {
        ROUTER_SYSTEM.to_owned()
    } else {
        format!("{ROUTER_SYSTEM}\n\n{instructions}")
    };
    let mut messages = arch::context(&system, history);
    messages.push(Message::user(text));
    messages
}

/// The run ended with `output` (interrupted for `reason`), adding it to the
/// session when it is not empty, with the sub-agent's spend added.
fn end(
    mut run: Run,
    output: String,
    reason: Option<String>,
    sub: Option<&arch::DelegateOutput>,
) -> RunOutput {
    if !output.is_empty() {
        run.push(Message::assistant(output.clone()));
    }
    let mut result = match reason {
        Some(reason) => run.interrupted_with(output, reason),
        None => run.finish(output),
    };
    if let Some(sub) = sub {
        result.turns = result.turns.saturating_add(sub.turns);
        result.usage += &sub.usage;
        result.cost_usd += sub.cost_usd;
    }
    result
}

struct Router;

impl Architecture for Router {
    fn describe() -> ArchitectureInfo {
        ArchitectureInfo {
            name: "router".into(),
            description: "One classifier completion picks a configured route for the task, then \
                          the route's agent (a named agent or an inline architecture) answers \
                          the original prompt as a sub-agent; an unknown route goes to the \
                          fallback route, if any"
                .into(),
            workers: Vec::new(),
            config_schema: CONFIG_SCHEMA.into(),
        }
    }

    fn run(input: RunInput) -> Result<RunOutput, RunError> {
        let config = parse_config(&input.config)?;
        let mut run = Run::seed(&input);
        if run.out_of_turns() {
            return Ok(end(run, String::new(), Some("max_turns".into()), None));
        }
        let reply = run
            .complete_request(&CompletionRequest {
                messages: messages(
                    &input.instructions,
                    &input.history,
                    classify_text(&input.prompt, &config.routes),
                ),
                tools: Vec::new(),
                temperature: None,
                max_output_tokens: None,
                output_schema: None,
                role: Some("router".into()),
            })?
            .message
            .content;
        let choice = chosen(&reply);
        let found = find(&config.routes, &choice);
        arch::emit(
            "classified",
            serde_json::json!({
                "route": found.map(|r| r.name.as_str()),
                "reply": excerpt(&reply),
            }),
        );
        let route = match (found, &config.fallback) {
            (Some(route), _) => route,
            (None, Some(fallback)) => {
                arch::emit(
                    "fallback",
                    serde_json::json!({ "route": fallback, "chosen": excerpt(&choice) }),
                );
                find(&config.routes, fallback).expect("the fallback is a route")
            }
            (None, None) => {
                let output = unrouted(&choice, &config.routes);
                return Ok(end(run, output, None, None));
            }
        };
        if run.out_of_turns() {
            return Ok(end(run, String::new(), Some("max_turns".into()), None));
        }
        arch::emit("delegated", serde_json::json!({ "route": route.name }));
        let sub = arch::delegate(&route.agent, &input.prompt)?;
        let output = sub.output.clone();
        Ok(end(run, output, sub.interrupted.clone(), Some(&sub)))
    }
}

loom_sdk::export_architecture!(Router);

#[cfg(test)]
mod tests {
    use super::*;

    const TWO: &str = r#"{"routes": {
        "math": {"description": "arithmetic", "agent": "calc"},
        "Write": {"description": "prose", "architecture": "self-refine",
                  "instructions": "be brief", "tools": ["fetch"], "config": {"max_rounds": 2}}
    }, "fallback": "math"}"#;

    #[test]
    fn config_builds_agent_refs() {
        let config = parse_config(TWO).unwrap();
        assert_eq!(names(&config.routes), "Write, math");
        assert_eq!(config.fallback.as_deref(), Some("math"));
        let write = &config.routes[0];
        assert_eq!(write.description, "prose");
        assert_eq!(write.agent.architecture, "self-refine");
        assert_eq!(write.agent.instructions, "be brief");
        assert_eq!(write.agent.tools, vec!["fetch".to_owned()]);
        assert_eq!(write.agent.config.as_deref(), Some(r#"{"max_rounds":2}"#));
        let math = &config.routes[1];
        assert_eq!(math.agent.architecture, "agent:calc");
        assert!(math.agent.instructions.is_empty() && math.agent.tools.is_empty());
        assert_eq!(math.agent.config, None);

        let bare = parse_config(r#"{"routes": {"a": {"description": "d"}}}"#).unwrap();
        assert_eq!(bare.routes[0].agent.architecture, "react");
        assert_eq!(bare.routes[0].agent.config, None);
        assert_eq!(bare.fallback.as_deref(), Some("a"), "the only route");
        let two =
            parse_config(r#"{"routes": {"a": {"description": "d"}, "b": {"description": "e"}}}"#)
                .unwrap();
        assert_eq!(two.fallback, None);
    }

    #[test]
    fn bad_configs_are_refused() {
        let seventeen = (0..17)
            .map(|i| format!(r#""r{i}": {{"description": "d"}}"#))
            .collect::<Vec<_>>()
            .join(",");
        let seventeen = format!(r#"{{"routes": {{{seventeen}}}}}"#);
        let long = format!(
            r#"{{"routes": {{"{}": {{"description": "d"}}}}}}"#,
            "a".repeat(65)
        );
        for bad in [
            seventeen.as_str(),
            long.as_str(),
            r#"{"routes": {"a b": {"description": "d"}}}"#,
            r#"{"routes": {"a": {"description": " "}}}"#,
            r#"{"routes": {"a": {"agent": "x"}}}"#,
            r#"{"routes": {"a": {"description": "d", "agent": "x", "architecture": "react"}}}"#,
            r#"{"routes": {"a": {"description": "d", "agent": "x", "tools": []}}}"#,
            r#"{"routes": {"a": {"description": "d", "agent": "agent:x"}}}"#,
            r#"{"routes": {"a": {"description": "d", "architecture": ""}}}"#,
            r#"{"routes": {"a": {"description": "d", "config": [1]}}}"#,
            r#"{"routes": {"a": {"description": "d", "tools": [""]}}}"#,
            r#"{"routes": {"a": {"description": "d", "model": "x"}}}"#,
            r#"{"routes": {"a": {"description": "d"}}, "fallback": "b"}"#,
            r#"{"routes": {"a": {"description": "d"}}, "other": 1}"#,
            "[]",
        ] {
            assert!(
                matches!(parse_config(bad), Err(RunError::InvalidConfig(_))),
                "{bad}"
            );
        }
        let seventeen_ok = (0..16)
            .map(|i| format!(r#""r{i}": {{"description": "d"}}"#))
            .collect::<Vec<_>>()
            .join(",");
        assert!(parse_config(&format!(r#"{{"routes": {{{seventeen_ok}}}}}"#)).is_ok());
    }

    #[test]
    fn schema_is_json_and_matches_the_defaults() {
        let schema: serde_json::Value = serde_json::from_str(CONFIG_SCHEMA).unwrap();
        let p = &schema["properties"];
        assert_eq!(p.as_object().unwrap().len(), 2);
        assert_eq!(p["fallback"]["default"], serde_json::Value::Null);
        assert_eq!(p["routes"]["maxProperties"], serde_json::json!(MAX_ROUTES));
        let route = &p["routes"]["additionalProperties"];
        assert_eq!(route["properties"]["architecture"]["default"], "react");
        assert_eq!(route["additionalProperties"], serde_json::json!(false));
        assert_eq!(schema["additionalProperties"], serde_json::json!(false));
        assert!(schema.get("required").is_none(), "every key has a default");
    }

    #[test]
    fn replies_are_read_leniently() {
        assert_eq!(chosen("math"), "math");
        assert_eq!(chosen("  `Math`.\nbecause it adds"), "Math");
        assert_eq!(chosen("\"write\""), "write");
        assert_eq!(chosen("**math**"), "math");
        assert_eq!(chosen("Route: math"), "math");
        assert_eq!(chosen("```\nmath\n```"), "math");
        assert_eq!(chosen(r#"{"route": "write"}"#), "write");
        assert_eq!(chosen("Sure:\n```json\n{\"route\": \"math\"}\n```"), "math");
        assert_eq!(chosen(""), "");
        assert_eq!(chosen("Echo: Routes:"), "Echo: Routes");

        let config = parse_config(TWO).unwrap();
        assert_eq!(find(&config.routes, "MATH").unwrap().name, "math");
        assert_eq!(find(&config.routes, "write").unwrap().name, "Write");
        assert!(find(&config.routes, "Echo: Routes").is_none());
        assert!(find(&config.routes, "").is_none());
    }

    #[test]
    fn prompts_hold_the_routes_and_the_task() {
        let config = parse_config(TWO).unwrap();
        let text = classify_text("add 2 and 2", &config.routes);
        assert!(
            text.starts_with("Routes:\n- Write: prose\n- math: arithmetic\n\nTask:\nadd 2 and 2"),
            "{text}"
        );
        assert!(text.ends_with("(one of: Write, math)."), "{text}");
        assert_eq!(
            unrouted("poetry", &config.routes),
            "unrouted: the router chose \"poetry\", which is not one of: Write, math"
        );
        let history = vec![Message::system("old"), Message::user("before")];
        let messages = messages("be brief", &history, "req".into());
        assert_eq!(messages.len(), 3);
        assert_eq!(messages[0].content, format!("{ROUTER_SYSTEM}\n\nbe brief"));
        assert_eq!(messages[1].content, "before");
        assert_eq!(messages[2].content, "req");
    }

    #[test]
    fn excerpts_stop_at_200_chars() {
        assert_eq!(excerpt(&"é".repeat(300)).chars().count(), 200);
    }

    #[test]
    fn no_team_is_one_react_assistant() {
        for text in ["", "{}"] {
            let config = parse_config(text).unwrap();
            assert_eq!(config.routes.len(), 1, "{text:?}");
            assert_eq!(config.routes[0].name, "assistant");
            assert_eq!(config.routes[0].agent.architecture, "react");
        }
    }
}
