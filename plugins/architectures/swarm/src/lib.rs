//! Swarm: peer agents answer the task in turn, each free to hand it off to
//! another by ending its answer with a `HANDOFF:` line.
//!
//! 1. **Turn.** The current agent (first `entry`) runs through `delegate`
//!    with its agent-ref and an input made of the task (for the entry
//!    agent, the prompt) followed by handoff instructions: it may hand the
//!    task off by ending its answer with a final line `HANDOFF: <name>:
//!    <message for that agent>` naming one of the other agents, which are
//!    listed as `name: description` (in name order). With a single agent
//!    there is no one to hand off to, and the input is the prompt alone.
//! 2. **Handoff.** The answer's last non-empty line is read leniently
//!    (`HANDOFF:` in any case, the name with quotes, backticks and
//!    asterisks stripped, matched case-insensitively, the message after
//!    the next `:`, possibly empty). A handoff to another configured agent
//!    makes it the current agent, and its input is the prompt, then
//!    `Handed off from <from>: <message>`, then `Previous answer:` with the
//!    answer without its handoff line. A line naming no other agent (an
//!    unknown name, or the agent itself) is no handoff: the answer stands
//!    as it is, nothing stripped.
//! 3. **End.** An answer without a handoff is the output. A handoff whose
//!    `(from, to)` pair already happened in this run (such as the third
//!    handoff of `A→B→A→B`) is a cycle, and a handoff beyond
//!    `max_handoffs` is refused: either ends the run with that answer
//!    without its handoff line. An interrupted agent ends the run
//!    interrupted with its reason and output. A failed delegation fails
//!    the run (`harness`).
//!
//! The swarm makes no completions of its own; the agents' turns, usage and
//! cost are added to the run's. The turn cap is checked before each
//! delegation: when it is reached, the run ends interrupted with reason
//! `max_turns` and the latest answer without its handoff line (empty
//! before the first) as output.
//!
//! The run adds to the session the seed (instructions for a new session,
//! then the prompt) and one assistant message with the output (when it is
//! not empty). The agents' intermediate answers stay out of it.
//!
//! # Configuration
//!
//! * `agents` (object, 1 to 16 entries; default: one inline ReAct agent named `assistant` with all of the run's tools): agent name (1 to 64
//!   characters of `A-Z a-z 0-9 _ -`) to agent. An agent is
//!   `{"description": "...", "agent": "NAME"}` (the named agent
//!   `agent:NAME` of `loom.toml`) or `{"description": "...",
//!   "architecture": "react", "instructions": "...", "tools": [...],
//!   "config": {...}}` (an inline agent; every key but `description`
//!   optional, `architecture` defaulting to `react`). Giving `agent` with
//!   any of the inline keys is refused.
//!   The schema marks it `"x-loom-members": true`, so an agent's
//!   `workers` (named agents) fill it.
//! * `entry` (string; required with more than one agent, else that one):
//!   the agent that takes the task first; one of `agents`.
//! * `max_handoffs` (integer, 0 to 20, default 5): handoffs at most.
//!
//! Unknown keys are refused (`invalid-config`).
//!
//! # Events
//!
//! * `turn` — `{"turn": <n>, "agent": <name>}` as each agent starts (from
//!   1).
//! * `handoff` — `{"from": <name>, "to": <name>, "message": <excerpt>}`
//!   for each handoff taken (the message's first 200 characters).
//! * `cycle` — `{"path": [<name>, ...]}` when a handoff repeats a pair: the
//!   agents in turn order, then the refused target.
//! * `max_handoffs` — `{"max_handoffs": <n>, "from": <name>, "to": <name>}`
//!   when a handoff is refused for the cap.
//! * `final` — `{"agent": <name>}` when the run ends with an agent's answer
//!   (after a cycle or the cap too; not when interrupted).

use std::collections::BTreeMap;

use loom_sdk::arch::{
    self, AgentRef, Architecture, ArchitectureInfo, Message, Run, RunError, RunInput, RunOutput,
};
use loom_sdk::team::{self, MemberSpec};
use serde::Deserialize;

/// The JSON Schema of the configuration.
const CONFIG_SCHEMA: &str = r#"{"type":"object","properties":{"agents":{"type":"object","x-loom-members":true,"minProperties":1,"maxProperties":16,"propertyNames":{"pattern":"^[A-Za-z0-9_-]{1,64}$"},"additionalProperties":{"type":"object","properties":{"description":{"type":"string","minLength":1},"agent":{"type":"string","pattern":"^[A-Za-z0-9_-]{1,64}$"},"architecture":{"type":"string","pattern":"^[A-Za-z0-9_-]{1,64}$","default":"react"},"instructions":{"type":"string","default":""},"tools":{"type":"array","items":{"type":"string"},"default":[]},"config":{"type":["object","null"],"default":null}},"required":["description"],"additionalProperties":false}},"entry":{"type":"string","pattern":"^[A-Za-z0-9_-]{1,64}$"},"max_handoffs":{"type":"integer","minimum":0,"maximum":20,"default":5}},"additionalProperties":false}"#;

/// The longest excerpt in an event, in characters.
const EXCERPT_CHARS: usize = 200;

/// Agents at most.
const MAX_AGENTS: usize = 16;

/// The most `max_handoffs` may be.
const MAX_HANDOFFS: u32 = 20;

/// The configuration object as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawConfig {
    agents: BTreeMap<String, MemberSpec>,
    entry: Option<String>,
    max_handoffs: u32,
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            agents: BTreeMap::new(),
            entry: None,
            max_handoffs: 5,
        }
    }
}

/// A checked agent: its name, description and agent-ref.
#[derive(Debug, Clone)]
struct Peer {
    name: String,
    description: String,
    agent: AgentRef,
}

/// The checked configuration.
#[derive(Debug, Clone)]
struct Config {
    /// The agents, in name order.
    agents: Vec<Peer>,
    /// The index of the entry agent.
    entry: usize,
    /// Handoffs at most.
    max_handoffs: u32,
}

/// Parse and check the configuration text.
fn parse_config(text: &str) -> Result<Config, RunError> {
    let mut raw: RawConfig = arch::config_from_str(text)?;
    if raw.agents.is_empty() {
        raw.agents = team::default_members();
    }
    if raw.agents.len() > MAX_AGENTS {
        return Err(RunError::invalid_config(format!(
            "agents must hold 1 to {MAX_AGENTS} agents, not {}",
            raw.agents.len()
        )));
    }
    if raw.max_handoffs > MAX_HANDOFFS {
        return Err(RunError::invalid_config(format!(
            "max_handoffs must be from 0 to {MAX_HANDOFFS}, not {}",
            raw.max_handoffs
        )));
    }
    let mut agents = Vec::with_capacity(raw.agents.len());
    for (name, spec) in raw.agents {
        let description = spec.description.trim().to_owned();
        let agent = team::agent_ref("agent", &name, spec).map_err(RunError::invalid_config)?;
        agents.push(Peer {
            name,
            description,
            agent,
        });
    }
    // With one agent, it is the entry; with more, the entry must be named.
    let entry_name = match (raw.entry, agents.as_slice()) {
        (Some(entry), _) => entry,
        (None, [only]) => only.name.clone(),
        (None, _) => {
            return Err(RunError::invalid_config(format!(
                "entry is required with more than one agent: one of the agents ({})",
                names(&agents)
            )));
        }
    };
    let Some(entry) = agents.iter().position(|a| a.name == entry_name) else {
        return Err(RunError::invalid_config(format!(
            "entry {entry_name:?} is not one of the agents: {}",
            names(&agents)
        )));
    };
    Ok(Config {
        agents,
        entry,
        max_handoffs: raw.max_handoffs,
    })
}

/// The agents' names, comma-separated.
fn names(agents: &[Peer]) -> String {
    agents
        .iter()
        .map(|a| a.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The first `EXCERPT_CHARS` characters of `text`.
fn excerpt(text: &str) -> String {
    text.chars().take(EXCERPT_CHARS).collect()
}

/// A `HANDOFF:` line ending an answer.
#[derive(Debug, Clone, PartialEq)]
struct Handoff {
    /// The named target, cleaned (not yet checked against the agents).
    target: String,
    /// The message for the target (possibly empty).
    message: String,
    /// The answer without the handoff line, trimmed.
    answer: String,
}

/// The handoff that ends `answer`: its last non-empty line, when that is
/// `HANDOFF: <name>: <message>` (`HANDOFF:` in any case; the name without
/// quotes, backticks or asterisks; the message possibly empty).
fn handoff(answer: &str) -> Option<Handoff> {
    let body = answer.trim_end();
    let (before, line) = match body.rfind('\n') {
        Some(at) => (&body[..at], &body[at + 1..]),
        None => ("", body),
    };
    let strip = |c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '*');
    let line = line.trim_matches(strip);
    let label = line.get(..8)?;
    if !label.eq_ignore_ascii_case("handoff:") {
        return None;
    }
    let rest = &line[8..];
    let (target, message) = rest.split_once(':').unwrap_or((rest, ""));
    let target = target.trim_matches(strip);
    if target.is_empty() {
        return None;
    }
    Some(Handoff {
        target: target.to_owned(),
        message: message.trim_matches(strip).to_owned(),
        answer: before.trim().to_owned(),
    })
}

/// The index of the agent other than `current` that `target` names,
/// compared case-insensitively.
fn find(agents: &[Peer], current: usize, target: &str) -> Option<usize> {
    agents
        .iter()
        .position(|a| a.name.eq_ignore_ascii_case(target))
        .filter(|&i| i != current)
}

/// True when the handoff `(from, to)` already happened in `pairs`.
fn is_cycle(pairs: &[(usize, usize)], from: usize, to: usize) -> bool {
    pairs.contains(&(from, to))
}

/// The handoff instructions for agent `current` (empty when it is alone).
fn handoff_text(agents: &[Peer], current: usize) -> String {
    let others = agents
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != current)
        .map(|(_, a)| format!("- {}: {}", a.name, a.description))
        .collect::<Vec<_>>();
    if others.is_empty() {
        return String::new();
    }
    format!(
        "\n\nYou are {}, one agent of a team. If another agent of the team is better suited \
         to carry the task on, you may hand it off: end your answer with a final line of the \
         form\nHANDOFF: <name>: <message for that agent>\nnaming one of these agents:\n{}\n\
         Otherwise answer the task yourself, without a HANDOFF line.",
        agents[current].name,
        others.join("\n")
    )
}

/// The task an agent receives after a handoff.
fn handed_off_text(task: &str, from: &str, message: &str, answer: &str) -> String {
    format!("{task}\n\nHanded off from {from}: {message}\n\nPrevious answer:\n{answer}")
}

/// The run ended with `output` (interrupted for `reason`), adding it to the
/// session when it is not empty (the sub-agents' spend is
/// already the run's).
fn end(mut run: Run, output: String, reason: Option<String>) -> RunOutput {
    if !output.is_empty() {
        run.push(Message::assistant(output.clone()));
    }
    match reason {
        Some(reason) => run.interrupted_with(output, reason),
        None => run.finish(output),
    }
}

struct Swarm;

impl Architecture for Swarm {
    fn describe() -> ArchitectureInfo {
        ArchitectureInfo {
            name: "swarm".into(),
            description: "Peer agents (named agents or inline architectures, run as \
                          sub-agents) take the task in turn starting from the entry agent; \
                          each answers it or hands it off to another peer with a final \
                          `HANDOFF: <name>: <message>` line, until an answer without a \
                          handoff, a repeated handoff (cycle) or max_handoffs"
                .into(),
            workers: Vec::new(),
            config_schema: CONFIG_SCHEMA.into(),
        }
    }

    fn run(input: RunInput) -> Result<RunOutput, RunError> {
        let config = parse_config(&input.config)?;
        let agents = &config.agents;
        let mut run = Run::seed(&input);
        let task = input.prompt.as_str();
        let mut current = config.entry;
        let mut text = task.to_owned();
        let mut path = vec![current];
        let mut pairs: Vec<(usize, usize)> = Vec::new();
        let mut latest = String::new();

        for turn in 1u32.. {
            if run.out_of_turns() {
                return Ok(end(run, latest, Some("max_turns".into())));
            }
            let name = agents[current].name.as_str();
            arch::emit("turn", serde_json::json!({ "turn": turn, "agent": name }));
            let request = format!("{text}{}", handoff_text(agents, current));
            let sub = arch::delegate(&agents[current].agent, &request)?;
            run.add_delegated(&sub);
            if let Some(reason) = sub.interrupted {
                return Ok(end(run, sub.output, Some(reason)));
            }
            let found = handoff(&sub.output)
                .and_then(|h| find(agents, current, &h.target).map(|to| (h, to)));
            let Some((hand, to)) = found else {
                arch::emit("final", serde_json::json!({ "agent": name }));
                return Ok(end(run, sub.output, None));
            };
            if is_cycle(&pairs, current, to) {
                let mut names: Vec<&str> = path.iter().map(|&i| agents[i].name.as_str()).collect();
                names.push(agents[to].name.as_str());
                arch::emit("cycle", serde_json::json!({ "path": names }));
                arch::emit("final", serde_json::json!({ "agent": name }));
                return Ok(end(run, hand.answer, None));
            }
            if pairs.len() as u32 >= config.max_handoffs {
                arch::emit(
                    "max_handoffs",
                    serde_json::json!({
                        "max_handoffs": config.max_handoffs,
                        "from": name,
                        "to": agents[to].name,
                    }),
                );
                arch::emit("final", serde_json::json!({ "agent": name }));
                return Ok(end(run, hand.answer, None));
            }
            arch::emit(
                "handoff",
                serde_json::json!({
                    "from": name,
                    "to": agents[to].name,
                    "message": excerpt(&hand.message),
                }),
            );
            text = handed_off_text(task, name, &hand.message, &hand.answer);
            latest = hand.answer;
            pairs.push((current, to));
            path.push(to);
            current = to;
        }
        unreachable!("the turn loop only ends by returning")
    }
}

loom_sdk::export_architecture!(Swarm);

#[cfg(test)]
mod tests {
    use super::*;

    const THREE: &str = r#"{"agents": {
        "triage": {"description": "sorts requests", "agent": "front"},
        "billing": {"description": "invoices", "architecture": "self-refine",
                    "instructions": "be brief", "tools": ["fetch"], "config": {"max_rounds": 2}},
        "tech": {"description": "technical help"}
    }, "entry": "triage", "max_handoffs": 3}"#;

    #[test]
    fn config_builds_agent_refs() {
        let config = parse_config(THREE).unwrap();
        assert_eq!(names(&config.agents), "billing, tech, triage");
        assert_eq!(config.entry, 2);
        assert_eq!(config.max_handoffs, 3);
        let billing = &config.agents[0];
        assert_eq!(billing.description, "invoices");
        assert_eq!(billing.agent.architecture, "self-refine");
        assert_eq!(billing.agent.instructions, "be brief");
        assert_eq!(billing.agent.tools, vec!["fetch".to_owned()]);
        assert_eq!(billing.agent.config.as_deref(), Some(r#"{"max_rounds":2}"#));
        assert_eq!(config.agents[1].agent.architecture, "react");
        let triage = &config.agents[2];
        assert_eq!(triage.agent.architecture, "agent:front");
        assert!(triage.agent.instructions.is_empty() && triage.agent.tools.is_empty());

        let bare =
            parse_config(r#"{"agents": {"a": {"description": "d"}}, "entry": "a"}"#).unwrap();
        assert_eq!(bare.max_handoffs, 5);
        assert_eq!(bare.entry, 0);
        let zero = r#"{"agents": {"a": {"description": "d"}}, "entry": "a", "max_handoffs": 0}"#;
        assert_eq!(parse_config(zero).unwrap().max_handoffs, 0);
    }

    #[test]
    fn bad_configs_are_refused() {
        let many = |n: usize| {
            let entries = (0..n)
                .map(|i| format!(r#""a{i}": {{"description": "d"}}"#))
                .collect::<Vec<_>>()
                .join(",");
            format!(r#"{{"agents": {{{entries}}}, "entry": "a0"}}"#)
        };
        assert!(parse_config(&many(16)).is_ok());
        let seventeen = many(17);
        for bad in [
            r#"{"agents": {}, "entry": "a"}"#,
            seventeen.as_str(),
            r#"{"agents": {"a": {"description": "d"}}, "entry": "b"}"#,
            r#"{"agents": {"a": {"description": "d"}}, "entry": "A"}"#,
            r#"{"agents": {"a b": {"description": "d"}}, "entry": "a b"}"#,
            r#"{"agents": {"a": {"description": " "}}, "entry": "a"}"#,
            r#"{"agents": {"a": {"agent": "x"}}, "entry": "a"}"#,
            r#"{"agents": {"a": {"description": "d", "agent": "x", "tools": []}}, "entry": "a"}"#,
            r#"{"agents": {"a": {"description": "d", "agent": "agent:x"}}, "entry": "a"}"#,
            r#"{"agents": {"a": {"description": "d", "config": 1}}, "entry": "a"}"#,
            r#"{"agents": {"a": {"description": "d", "tools": [""]}}, "entry": "a"}"#,
            r#"{"agents": {"a": {"description": "d", "x": 1}}, "entry": "a"}"#,
            r#"{"agents": {"a": {"description": "d"}}, "entry": "a", "max_handoffs": 21}"#,
            r#"{"agents": {"a": {"description": "d"}}, "entry": "a", "max_handoffs": -1}"#,
            r#"{"agents": {"a": {"description": "d"}}, "entry": "a", "other": 1}"#,
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
        assert_eq!(p.as_object().unwrap().len(), 3);
        assert_eq!(
            p["max_handoffs"]["default"],
            serde_json::json!(RawConfig::default().max_handoffs)
        );
        assert_eq!(p["max_handoffs"]["minimum"], serde_json::json!(0));
        assert_eq!(
            p["max_handoffs"]["maximum"],
            serde_json::json!(MAX_HANDOFFS)
        );
        assert_eq!(p["agents"]["maxProperties"], serde_json::json!(MAX_AGENTS));
        let agent = &p["agents"]["additionalProperties"];
        assert_eq!(agent["properties"]["architecture"]["default"], "react");
        assert_eq!(agent["additionalProperties"], serde_json::json!(false));
        assert_eq!(schema["additionalProperties"], serde_json::json!(false));
        assert!(schema.get("required").is_none(), "every key has a default");
    }

    #[test]
    fn handoff_lines_are_read_leniently() {
        assert_eq!(
            handoff("I looked.\nIt is a bill.\nHANDOFF: billing: check invoice 7\n"),
            Some(Handoff {
                target: "billing".into(),
                message: "check invoice 7".into(),
                answer: "I looked.\nIt is a bill.".into(),
            })
        );
        assert_eq!(
            handoff("**handoff: `Tech`: see: logs**"),
            Some(Handoff {
                target: "Tech".into(),
                message: "see: logs".into(),
                answer: String::new(),
            })
        );
        assert_eq!(
            handoff("x\nHandoff: tech").map(|h| (h.target, h.message)),
            Some(("tech".into(), String::new()))
        );
        assert_eq!(handoff("HANDOFF: tech: a\nthen more"), None);
        assert_eq!(handoff("HANDOFF: : msg"), None);
        assert_eq!(handoff("Echo: hello"), None);
        assert_eq!(handoff(""), None);
        assert_eq!(handoff("é"), None);

        let config = parse_config(THREE).unwrap();
        assert_eq!(find(&config.agents, 2, "TECH"), Some(1));
        assert_eq!(find(&config.agents, 2, "triage"), None);
        assert_eq!(find(&config.agents, 2, "<name>"), None);
    }

    #[test]
    fn repeated_pairs_are_cycles() {
        // A→B, B→A, then A→B again.
        let mut pairs = Vec::new();
        assert!(!is_cycle(&pairs, 0, 1));
        pairs.push((0, 1));
        assert!(!is_cycle(&pairs, 1, 0));
        pairs.push((1, 0));
        assert!(is_cycle(&pairs, 0, 1));
        // A→B→C→A is no cycle yet; A→C is new too.
        let chain = [(0, 1), (1, 2), (2, 0)];
        assert!(!is_cycle(&chain, 0, 2));
        assert!(is_cycle(&chain, 1, 2));
    }

    #[test]
    fn inputs_hold_the_task_and_the_other_agents() {
        let config = parse_config(THREE).unwrap();
        let text = handoff_text(&config.agents, 2);
        assert!(
            text.starts_with("\n\nYou are triage, one agent of a team."),
            "{text}"
        );
        assert!(text.contains("HANDOFF: <name>: <message for that agent>\n"));
        assert!(text.contains("- billing: invoices\n- tech: technical help\n"));
        assert!(!text.contains("- triage"));
        // Echoed instructions never read as a handoff.
        assert_eq!(handoff(&format!("Echo: task{text}")), None);
        let alone =
            parse_config(r#"{"agents": {"a": {"description": "d"}}, "entry": "a"}"#).unwrap();
        assert_eq!(handoff_text(&alone.agents, 0), "");
        assert_eq!(
            handed_off_text("t", "triage", "check it", "a bill"),
            "t\n\nHanded off from triage: check it\n\nPrevious answer:\na bill"
        );
        assert_eq!(excerpt(&"é".repeat(300)).chars().count(), 200);
    }

    #[test]
    fn no_team_is_one_react_assistant() {
        for text in ["", "{}"] {
            let config = parse_config(text).unwrap();
            assert_eq!(config.agents.len(), 1, "{text:?}");
            assert_eq!(config.agents[0].name, "assistant");
            assert_eq!(config.agents[0].agent.architecture, "react");
        }
    }
}
