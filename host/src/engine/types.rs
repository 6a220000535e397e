//! The engine's plain data: plugin kinds, tool specs, component shapes and
//! call results.

use super::state::LogLine;
use std::time::Duration;

/// Largest component file Loom loads.
pub const MAX_COMPONENT_BYTES: usize = 64 << 20;

/// What kind of plugin a component is, from its exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginKind {
    /// Exports `tool`.
    Tool,
    /// Exports `architecture`.
    Architecture,
    /// Exports `memory`.
    Memory,
    /// Exports `policy`.
    Policy,
}

impl std::fmt::Display for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PluginKind::Tool => "tool",
            PluginKind::Architecture => "architecture",
            PluginKind::Memory => "memory",
            PluginKind::Policy => "policy",
        })
    }
}

/// A tool as a component describes it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ToolSpec {
    /// Unique name.
    pub name: String,
    /// Description for the model.
    pub description: String,
    /// JSON Schema of the arguments.
    pub parameters: serde_json::Value,
    /// Whether it changes the world.
    pub destructive: bool,
    /// Whether repeating it is harmless.
    pub idempotent: bool,
}

/// What a component's type says about it, without running it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ComponentShape {
    /// Kind, if it exports a supported Loom interface.
    pub kind: Option<PluginKind>,
    /// The Loom world it targets, such as `loom:plugin/tool-plugin@0.1.2`.
    pub world: Option<String>,
    /// Every `loom:plugin` version among its imports and exports, in the
    /// order first seen (see [`super::contract`] for what each means here).
    pub versions: Vec<String>,
    /// Names of its exports.
    pub exports: Vec<String>,
    /// Names of its imports.
    pub imports: Vec<String>,
}

/// What an architecture component says about itself.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ArchitectureInfo {
    /// Unique name, such as `react`.
    pub name: String,
    /// What the strategy does.
    pub description: String,
    /// Worker roles it declares: (name, description).
    pub workers: Vec<(String, String)>,
    /// JSON Schema of its configuration.
    pub config_schema: serde_json::Value,
}

/// A successful tool call.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ToolOutput {
    /// The output, JSON text (a JSON string with a marker when truncated).
    pub output: String,
    /// The original size in bytes when the output was cut to the limit.
    pub truncated_from: Option<usize>,
    /// Log lines and stdout/stderr of the call.
    pub logs: Vec<LogLine>,
    /// Network attempts the sandbox refused.
    pub denials: Vec<String>,
    /// Wall time of the call, instantiation included.
    pub elapsed: Duration,
    /// CPU time the call used, host work on its behalf included.
    pub cpu: Duration,
}

impl ToolOutput {
    /// The output of a tool the host runs itself (no component, no
    /// sandbox): no logs, no denials, no guest CPU; `elapsed` since `started`.
    pub(crate) fn from_host(output: String, started: std::time::Instant) -> Self {
        ToolOutput {
            output,
            truncated_from: None,
            logs: Vec::new(),
            denials: Vec::new(),
            elapsed: started.elapsed(),
            cpu: Duration::ZERO,
        }
    }
}
