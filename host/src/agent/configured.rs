//! Agents as `loom.toml` describes them: `[agent]` or a named
//! `[agents.NAME]`, with the model and architecture overridable. `loom run`,
//! `loom resume`, `loom serve` and `loom mcp serve` all build their agents
//! here, so one configuration means one agent everywhere.

use super::{Agent, ConfigError, JournalSettings, MemoryOptions};
use crate::Host;
use crate::config::{AgentSettings, LoomConfig};
use crate::governance::approval::Approver;
use crate::model::pricing::PriceTable;
use crate::model::spec::{SpecError, from_spec, retry_policy};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Which configured agent to build, and what to override. Kept with a
/// run's journal so a resume builds the same agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentChoice {
    /// The named agent of `[agents.NAME]`; `None` for `[agent]`.
    pub agent: Option<String>,
    /// A model string instead of the agent's model.
    pub model: Option<String>,
    /// An architecture instead of the agent's.
    pub arch: Option<String>,
}

impl AgentChoice {
    /// The named agent `[agents.NAME]`, or `[agent]` for `None`, unchanged.
    pub fn named(agent: Option<String>) -> Self {
        AgentChoice {
            agent,
            ..AgentChoice::default()
        }
    }
}

/// Why a configured agent could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ConfiguredAgentError {
    /// The choice names an agent the configuration does not have.
    #[error("no [agents.{name}] in the configuration (configured: {known})")]
    UnknownAgent {
        /// The name asked for.
        name: String,
        /// The configured names, comma-separated, or `none`.
        known: String,
    },
    /// Neither the choice nor the agent names a model.
    #[error(
        "no model: pass a model or set [agent] model in loom.toml (for example \
         openai:gpt-4.1-mini, anthropic:claude-sonnet-4-5, compat:<name>, echo, \
         scripted:script.json)"
    )]
    NoModel,
    /// A model string is wrong.
    #[error("{setting}: {source}")]
    Model {
        /// Which setting held the model string.
        setting: String,
        /// What is wrong with it.
        #[source]
        source: SpecError,
    },
    /// The agent's settings are out of range.
    #[error(transparent)]
    Build(#[from] ConfigError),
}

/// The agent settings `choice` names in `config`.
pub fn settings_of(
    config: &LoomConfig,
    choice: &AgentChoice,
) -> Result<AgentSettings, ConfiguredAgentError> {
    match &choice.agent {
        None => Ok(config.agent.clone()),
        Some(name) => config.agents.get(name).cloned().ok_or_else(|| {
            let known: Vec<&str> = config.agents.keys().map(String::as_str).collect();
            ConfiguredAgentError::UnknownAgent {
                name: name.clone(),
                known: if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                },
            }
        }),
    }
}

/// The agent `choice` names, on `host`: its model, architecture, tools,
/// workers, role models, memory and retrieval as configured; its runs
/// journaled unless `[journal] enabled = false`; `approver` answering its
/// `ask` decisions (else the tenant's `approval_url`, else a denial).
pub fn build(
    host: &Arc<Host>,
    choice: &AgentChoice,
    approver: Option<Arc<dyn Approver>>,
) -> Result<Agent, ConfiguredAgentError> {
    let config = host.config();
    let settings = settings_of(config, choice)?;
    let (spec, setting) = match (&choice.model, &settings.model) {
        (Some(model), _) => (model.clone(), "model".to_owned()),
        (None, Some(model)) => (model.clone(), agent_key(choice, "model")),
        (None, None) => return Err(ConfiguredAgentError::NoModel),
    };
    let retry = retry_policy(&config.retry);
    let model_of = |spec: &str, setting: String| {
        from_spec(spec, &config.models, &retry, &config.base_dir)
            .map_err(|source| ConfiguredAgentError::Model { setting, source })
    };
    let model = model_of(&spec, setting)?;
    let mut builder = Agent::builder(settings.instructions)
        .host(host.clone())
        .model(model)
        .architecture(choice.arch.clone().unwrap_or(settings.architecture))
        .max_turns(settings.max_turns)
        .output_retries(settings.output_retries)
        .run_timeout(std::time::Duration::from_millis(settings.run_timeout_ms))
        .prices(PriceTable::new(config.pricing.clone()))
        .sessions(host.sessions())
        .retrieval(settings.retrieval)
        .workers(settings.workers);
    // A named agent of [agents.NAME] is traced under its name.
    if let Some(name) = &choice.agent {
        builder = builder.name(name.clone());
    }
    if config.journal.enabled {
        builder = builder.journal(JournalSettings {
            journal: host.journal().clone(),
            keep_finished: config.journal.keep_finished,
        });
    }
    if let Some(tools) = settings.tools {
        builder = builder.tools(tools);
    }
    if let Some(config) = settings.architecture_config {
        builder = builder.architecture_config(config);
    }
    for (role, spec) in &settings.role_models {
        let setting = format!("{} {role}", agent_key(choice, "role_models"));
        builder = builder.role_model(role.clone(), model_of(spec, setting)?);
    }
    let memory = &settings.memory;
    if memory.enabled {
        builder = builder.memory(
            host.memory(),
            MemoryOptions {
                recall_tokens: memory.recall_tokens,
                episodes: true,
                transcripts: memory.transcripts,
                extract: memory.extract,
                block_tools: memory.block_tools,
            },
        );
        if let Some(spec) = &memory.extraction_model {
            let setting = agent_key(choice, "memory.extraction_model");
            builder = builder.extraction_model(model_of(spec, setting)?);
        }
    }
    if let Some(approver) = approver {
        builder = builder.approver(approver);
    }
    Ok(builder.build()?)
}

/// `[agent] key` or `[agents.NAME] key`, for error messages.
fn agent_key(choice: &AgentChoice, key: &str) -> String {
    match &choice.agent {
        None => format!("[agent] {key}"),
        Some(name) => format!("[agents.{name}] {key}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_agent_names_the_configured_ones() {
        let config = LoomConfig::parse(
            "[agents.helper]\ninstructions = \"help\"\nmodel = \"echo\"\n",
            std::path::Path::new("."),
        )
        .expect("config");
        let error = settings_of(&config, &AgentChoice::named(Some("nope".into())))
            .expect_err("unknown agent");
        assert_eq!(
            error.to_string(),
            "no [agents.nope] in the configuration (configured: helper)"
        );
        assert!(settings_of(&config, &AgentChoice::default()).is_ok());
    }
}
