//! A tenant's configured agents as MCP tools, when the operator exposes
//! them (`loom mcp serve --agents`, `[server] mcp_agents = true`).
//!
//! `[agents.NAME]` becomes the tool `agent__NAME`, and `[agent]` (when it
//! names a model) `agent__default`. A call `{"input": "...", "session"?:
//! "..."}` is a whole run of that agent for the caller's tenant and user:
//! its tool calls meet the permission chain, budgets and audit of any
//! run, and it counts against the tenant's run rate and budgets. The tool
//! itself is marked destructive and not idempotent, since the agent may
//! use tools that are.

use crate::LoomConfig;
use crate::agent::RunRequest;
use crate::agent::configured::{self, AgentChoice, ConfiguredAgentError};
use crate::engine::ToolSpec;
use crate::governance::approval::Approver;
use crate::host::Host;
use crate::tenancy::ids::{Scope, SessionId};
use std::sync::Arc;

/// The prefix of agent tools' names (the MCP client reserves the server
/// name `agent`, so no remote tool can take one).
pub const AGENT_TOOL_PREFIX: &str = "agent__";

/// The tool name of `[agent]`.
const DEFAULT_AGENT_TOOL: &str = "agent__default";

/// Largest `input` an agent tool accepts, in bytes.
pub const MAX_AGENT_INPUT_BYTES: usize = 256 << 10;

/// Why an agent tool call produced no answer.
#[derive(Debug, thiserror::Error)]
pub enum AgentToolError {
    /// The arguments are not `{"input": string, "session"?: string}`.
    #[error("invalid arguments for `{tool}`: {reason}")]
    InvalidArguments {
        /// The tool.
        tool: String,
        /// What is wrong.
        reason: String,
    },
    /// The agent could not be built from the configuration.
    #[error("agent tool `{tool}`: {source}")]
    Agent {
        /// The tool.
        tool: String,
        /// Why.
        #[source]
        source: ConfiguredAgentError,
    },
    /// The run failed.
    #[error("agent tool `{tool}`: the run failed: {reason}")]
    Run {
        /// The tool.
        tool: String,
        /// Why.
        reason: String,
    },
}

/// The agents `config` offers as tools, as tool specs.
pub fn agent_tools(config: &LoomConfig) -> Vec<ToolSpec> {
    let mut tools = Vec::new();
    if config.agent.model.is_some() && !config.agents.contains_key("default") {
        tools.push(spec(DEFAULT_AGENT_TOOL.to_owned(), &config.agent));
    }
    for (name, settings) in &config.agents {
        tools.push(spec(format!("{AGENT_TOOL_PREFIX}{name}"), settings));
    }
    tools
}

/// Which configured agent the tool `tool` runs: `Some(None)` for
/// `[agent]`, `Some(Some(name))` for `[agents.name]`, `None` when `tool`
/// is not an agent tool of `config`.
pub fn agent_of(config: &LoomConfig, tool: &str) -> Option<Option<String>> {
    let name = tool.strip_prefix(AGENT_TOOL_PREFIX)?;
    if config.agents.contains_key(name) {
        Some(Some(name.to_owned()))
    } else if tool == DEFAULT_AGENT_TOOL && config.agent.model.is_some() {
        Some(None)
    } else {
        None
    }
}

fn spec(name: String, settings: &crate::config::AgentSettings) -> ToolSpec {
    let about = if settings.description.trim().is_empty() {
        settings
            .instructions
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned()
    } else {
        settings.description.trim().to_owned()
    };
    ToolSpec {
        description: format!(
            "Ask the Loom agent `{}` (a whole run with its own tools): {about}",
            name.trim_start_matches(AGENT_TOOL_PREFIX)
        ),
        name,
        parameters: serde_json::json!({
            "type": "object",
            "properties": {
                "input": {"type": "string", "description": "What to ask the agent."},
                "session": {
                    "type": "string",
                    "description": "A session to continue (created when new); omit for a one-off run."
                },
            },
            "required": ["input"],
            "additionalProperties": false,
        }),
        destructive: true,
        idempotent: false,
    }
}

/// The arguments of an agent tool.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentArguments {
    input: String,
    #[serde(default)]
    session: Option<String>,
}

/// Run `agent` (`None`: `[agent]`) for `scope` with the tool call's JSON
/// `arguments`; its answer. `ask` decisions of the run's tool calls go to
/// `approver` (else the tenant's webhook, else they deny).
///
/// # Errors
///
/// [`AgentToolError`]: bad arguments, an agent the configuration cannot
/// build, or a run that failed (an interrupted run is an answer).
pub async fn run_agent_tool(
    host: &Arc<Host>,
    scope: Scope,
    tool: &str,
    agent: Option<String>,
    arguments: &str,
    approver: Option<Arc<dyn Approver>>,
) -> Result<crate::agent::RunResult, AgentToolError> {
    let invalid = |reason: String| AgentToolError::InvalidArguments {
        tool: tool.to_owned(),
        reason,
    };
    let parsed: AgentArguments = serde_json::from_str(arguments).map_err(|e| {
        invalid(format!(
            "{e}; expected {{\"input\": \"...\", \"session\": \"...\" (optional)}}"
        ))
    })?;
    if parsed.input.len() > MAX_AGENT_INPUT_BYTES {
        return Err(invalid(format!(
            "input is {} bytes; at most {MAX_AGENT_INPUT_BYTES} are accepted",
            parsed.input.len()
        )));
    }
    let mut scope = scope;
    if let Some(session) = parsed.session {
        let session = SessionId::new(session).map_err(|e| invalid(format!("session: {e}")))?;
        scope = scope.with_session(session);
    }
    let built = configured::build(host, &AgentChoice::named(agent.clone()), approver).map_err(
        |source| AgentToolError::Agent {
            tool: tool.to_owned(),
            source,
        },
    )?;
    let origin = serde_json::to_value(AgentChoice::named(agent)).unwrap_or_default();
    let request = RunRequest::new(scope, parsed.input).origin(origin);
    built.run(request).await.map_err(|e| AgentToolError::Run {
        tool: tool.to_owned(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> LoomConfig {
        let dir = std::env::temp_dir();
        LoomConfig::parse(text, &dir).expect("config")
    }

    #[test]
    fn named_agents_and_a_runnable_default_are_tools() {
        let config = config(
            "[agent]\nmodel = \"echo\"\ninstructions = \"Help.\\nMore.\"\n\
             [agents.research]\nmodel = \"echo\"\ndescription = \"Finds sources.\"\n",
        );
        let tools = agent_tools(&config);
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["agent__default", "agent__research"]);
        assert!(
            tools[0].description.ends_with(": Help."),
            "{}",
            tools[0].description
        );
        assert!(tools[1].description.contains("Finds sources."));
        assert!(tools.iter().all(|t| t.destructive && !t.idempotent));
        assert_eq!(agent_of(&config, "agent__default"), Some(None));
        assert_eq!(
            agent_of(&config, "agent__research"),
            Some(Some("research".into()))
        );
        assert_eq!(agent_of(&config, "agent__nope"), None);
        assert_eq!(agent_of(&config, "calculate"), None);
    }

    #[test]
    fn a_default_agent_without_a_model_is_not_offered() {
        let config = config("[agents.only]\nmodel = \"echo\"\n");
        let names: Vec<String> = agent_tools(&config).into_iter().map(|t| t.name).collect();
        assert_eq!(names, ["agent__only"]);
        assert_eq!(agent_of(&config, "agent__default"), None);
    }
}
