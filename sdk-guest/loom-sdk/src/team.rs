//! Pieces the team architectures share: the configuration of one member
//! (a worker, route, peer or expert) and the agent-ref it delegates to, and
//! lenient reading of a JSON object out of a model's reply.

use crate::arch::AgentRef;
use serde::Deserialize;

/// One team member as configured: a named agent (`agent`), or an inline
/// agent-ref (`architecture`, default `react`; `instructions`; `tools`;
/// `config`), never both.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberSpec {
    /// What the member does, shown to the model that picks members.
    pub description: String,
    /// A named agent of `[agents]`, delegated to as `agent:NAME`.
    pub agent: Option<String>,
    /// The inline member's architecture (default `react`).
    pub architecture: Option<String>,
    /// The inline member's instructions.
    pub instructions: Option<String>,
    /// The inline member's tools (empty or absent: all of the run's).
    pub tools: Option<Vec<String>>,
    /// The inline member's architecture configuration (a JSON object).
    pub config: Option<serde_json::Value>,
}

/// The name of the member a team gets when its configuration names none.
pub const DEFAULT_MEMBER: &str = "assistant";

/// The team a team architecture runs when its configuration names no
/// members: one inline ReAct agent, [`DEFAULT_MEMBER`], with the run's
/// instructions-free defaults and all of the run's tools. It lets
/// `loom run --arch NAME` work with no configuration at all (a degenerate
/// team, but a valid one).
pub fn default_members() -> std::collections::BTreeMap<String, MemberSpec> {
    std::collections::BTreeMap::from([(
        DEFAULT_MEMBER.to_owned(),
        MemberSpec {
            description: "a general-purpose agent that can use all of the run's tools".into(),
            agent: None,
            architecture: None,
            instructions: None,
            tools: None,
            config: None,
        },
    )])
}

/// True for 1 to 64 characters of `A-Z a-z 0-9 _ -`.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The agent-ref of member `name` as configured in `spec`; `kind` names
/// the member in errors (`route`, `worker`, `agent`, `expert`).
///
/// # Errors
///
/// The text of what is wrong with the name or the spec.
pub fn agent_ref(kind: &str, name: &str, spec: MemberSpec) -> Result<AgentRef, String> {
    if !valid_name(name) {
        return Err(format!(
            "{kind} name {name:?} must be 1 to 64 characters of A-Z, a-z, 0-9, _ and -"
        ));
    }
    if spec.description.trim().is_empty() {
        return Err(format!("{kind} {name}: description must not be empty"));
    }
    if let Some(agent) = spec.agent {
        if spec.architecture.is_some()
            || spec.instructions.is_some()
            || spec.tools.is_some()
            || spec.config.is_some()
        {
            return Err(format!(
                "{kind} {name}: give either agent or architecture/instructions/tools/config, \
                 not both"
            ));
        }
        if !valid_name(&agent) {
            return Err(format!(
                "{kind} {name}: agent {agent:?} must be 1 to 64 characters of A-Z, a-z, 0-9, _ \
                 and -"
            ));
        }
        return Ok(AgentRef {
            architecture: format!("agent:{agent}"),
            instructions: String::new(),
            tools: Vec::new(),
            config: None,
        });
    }
    let architecture = spec.architecture.unwrap_or_else(|| "react".into());
    if !valid_name(&architecture) {
        return Err(format!(
            "{kind} {name}: architecture {architecture:?} must be 1 to 64 characters of A-Z, \
             a-z, 0-9, _ and -"
        ));
    }
    let tools = spec.tools.unwrap_or_default();
    if tools.iter().any(|t| t.trim().is_empty()) {
        return Err(format!("{kind} {name}: tool names must not be empty"));
    }
    let config = match spec.config {
        None | Some(serde_json::Value::Null) => None,
        Some(value @ serde_json::Value::Object(_)) => Some(value.to_string()),
        Some(_) => return Err(format!("{kind} {name}: config must be a JSON object")),
    };
    Ok(AgentRef {
        architecture,
        instructions: spec.instructions.unwrap_or_default(),
        tools,
        config,
    })
}

/// The JSON object in a model's reply: the whole reply, the body of a
/// code fence, or the text from the first `{` to the last `}`.
pub fn json_object(text: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    let text = text.trim();
    let mut candidates = vec![text];
    if let Some(start) = text.find("```") {
        let body = &text[start + 3..];
        let body = body.strip_prefix("json").unwrap_or(body);
        if let Some(end) = body.find("```") {
            candidates.push(body[..end].trim());
        }
    }
    if let (Some(start), Some(end)) = (text.find('{'), text.rfind('}'))
        && start < end
    {
        candidates.push(&text[start..=end]);
    }
    candidates.into_iter().find_map(|candidate| {
        match serde_json::from_str::<serde_json::Value>(candidate) {
            Ok(serde_json::Value::Object(map)) => Some(map),
            _ => None,
        }
    })
}
