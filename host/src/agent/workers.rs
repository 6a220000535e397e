//! An agent's `workers` (named agents of `[agents]`) turned into its
//! architecture's team: members `{"description", "agent": NAME}` under the
//! configuration property the architecture's schema marks
//! `"x-loom-members": true`.

use crate::config::AgentSettings;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// The schema keyword that marks the configuration property holding an
/// architecture's team (a map of member name to member).
pub(crate) const MEMBERS_KEYWORD: &str = "x-loom-members";

/// The longest member description taken from an agent's instructions.
const DESCRIPTION_CHARS: usize = 200;

/// `config` with `workers` added as the architecture's team.
///
/// # Errors
///
/// The text of what is wrong: the architecture marks no team property,
/// the configuration fills it already, or a worker is not an agent.
pub(crate) fn with_team(
    config: &Value,
    workers: &[String],
    schema: &Value,
    agents: &BTreeMap<String, AgentSettings>,
) -> Result<Value, String> {
    if workers.is_empty() {
        return Ok(config.clone());
    }
    let key = members_property(schema).ok_or_else(|| {
        format!(
            "it takes no workers (its config schema marks no property `\"{MEMBERS_KEYWORD}\": \
             true`); remove `workers` from the agent, or choose a team architecture \
             (supervisor, router, swarm, blackboard)"
        )
    })?;
    let mut object = config.as_object().cloned().unwrap_or_default();
    if object.contains_key(&key) {
        return Err(format!(
            "the team is given twice: by `workers` and by the configuration's `{key}`; keep one"
        ));
    }
    let mut team = Map::new();
    for name in workers {
        let settings = agents.get(name).ok_or_else(|| {
            format!("worker `{name}` is not an agent: add [agents.{name}] or remove it")
        })?;
        let member = serde_json::json!({
            "description": description(name, settings),
            "agent": name,
        });
        team.insert(name.clone(), member);
    }
    object.insert(key, Value::Object(team));
    Ok(Value::Object(object))
}

/// The top-level configuration property the schema marks as the team.
fn members_property(schema: &Value) -> Option<String> {
    schema
        .get("properties")?
        .as_object()?
        .iter()
        .find(|(_, property)| property.get(MEMBERS_KEYWORD) == Some(&Value::Bool(true)))
        .map(|(key, _)| key.clone())
}

/// What a team is told about member `name`: its description, else the
/// first line of its instructions, else its name.
fn description(name: &str, settings: &AgentSettings) -> String {
    let own = settings.description.trim();
    if !own.is_empty() {
        return own.to_owned();
    }
    let first_line = settings
        .instructions
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .unwrap_or_default();
    if first_line.is_empty() {
        format!("the agent {name}")
    } else {
        first_line.chars().take(DESCRIPTION_CHARS).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn agents() -> BTreeMap<String, AgentSettings> {
        let mut agents = BTreeMap::new();
        agents.insert(
            "researcher".to_owned(),
            AgentSettings {
                description: "finds facts".into(),
                ..AgentSettings::default()
            },
        );
        agents.insert(
            "writer".to_owned(),
            AgentSettings {
                instructions: "\n  You write prose.\nShort.".into(),
                ..AgentSettings::default()
            },
        );
        agents.insert(
            "silent".to_owned(),
            AgentSettings {
                instructions: String::new(),
                ..AgentSettings::default()
            },
        );
        agents
    }

    fn team_schema() -> Value {
        json!({"type": "object", "properties": {
            "max_rounds": {"type": "integer"},
            "workers": {"type": "object", "x-loom-members": true}
        }})
    }

    #[test]
    fn workers_become_the_marked_property() {
        let names = ["researcher", "writer", "silent"].map(String::from);
        let config =
            with_team(&json!({"max_rounds": 2}), &names, &team_schema(), &agents()).unwrap();
        assert_eq!(
            config,
            json!({"max_rounds": 2, "workers": {
                "researcher": {"description": "finds facts", "agent": "researcher"},
                "writer": {"description": "You write prose.", "agent": "writer"},
                "silent": {"description": "the agent silent", "agent": "silent"}
            }})
        );
    }

    #[test]
    fn no_workers_leaves_the_config_alone() {
        let config = json!({"x": 1});
        assert_eq!(
            with_team(&config, &[], &json!({}), &agents()).unwrap(),
            config
        );
    }

    #[test]
    fn mistakes_are_named() {
        let names = ["researcher".to_owned()];
        let error =
            with_team(&json!({}), &names, &json!({"type": "object"}), &agents()).unwrap_err();
        assert!(error.contains("takes no workers"), "{error}");
        let error =
            with_team(&json!({"workers": {}}), &names, &team_schema(), &agents()).unwrap_err();
        assert!(error.contains("given twice"), "{error}");
        let error =
            with_team(&json!({}), &["ghost".to_owned()], &team_schema(), &agents()).unwrap_err();
        assert!(error.contains("[agents.ghost]"), "{error}");
    }
}
