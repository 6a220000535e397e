//! Model settings as written in `loom.toml`: `[models.openai]`,
//! `[models.anthropic]`, `[models.compat.<name>]` and `[retry]`.

use serde::Deserialize;
use std::collections::BTreeMap;

/// Settings of one hosted provider (`[models.openai]`, `[models.anthropic]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSettings {
    /// The API key itself. Taken before `api_key_env`; prefer the
    /// environment, which keeps keys out of files.
    pub api_key: Option<crate::secret::Secret>,
    /// Environment variable holding the API key (default `OPENAI_API_KEY` /
    /// `ANTHROPIC_API_KEY`).
    pub api_key_env: Option<String>,
    /// Base URL, for proxies and gateways.
    pub base_url: Option<String>,
    /// Longest wait for the next bytes of a response, in milliseconds
    /// (default 120000); a long answer may stream for longer.
    pub timeout_ms: Option<u64>,
    /// Connect timeout in milliseconds (default 10000).
    pub connect_timeout_ms: Option<u64>,
    /// Extra headers sent with every request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Anthropic only: mark tools, system prompt and conversation as
    /// cacheable (default true). OpenAI caches prompts without being asked.
    pub prompt_caching: Option<bool>,
}

/// An OpenAI-compatible server (`[models.compat.<name>]`): vLLM, Ollama,
/// llama.cpp server, OpenRouter, ...
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompatSettings {
    /// Base URL including the version path, such as `http://localhost:11434/v1`.
    pub base_url: String,
    /// The model name the server expects.
    pub model: String,
    /// The API key itself, if the server needs one (taken before
    /// `api_key_env`).
    pub api_key: Option<crate::secret::Secret>,
    /// Environment variable holding the API key, if the server needs one.
    pub api_key_env: Option<String>,
    /// Whether the server honours `response_format: json_schema` (default false).
    #[serde(default)]
    pub native_structured_output: bool,
    /// Longest wait for the next bytes of a response, in milliseconds
    /// (default 120000); a long answer may stream for longer.
    pub timeout_ms: Option<u64>,
    /// Extra headers sent with every request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// The retry policy as configured (`[retry]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    /// Attempts in all, the first included (default 4; 1 disables retries).
    pub max_attempts: Option<u32>,
    /// First backoff in milliseconds (default 500).
    pub initial_backoff_ms: Option<u64>,
    /// Longest backoff in milliseconds (default 30000).
    pub max_backoff_ms: Option<u64>,
}

/// Every model setting of a configuration (`[models]` and `[retry]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSettings {
    /// OpenAI.
    #[serde(default)]
    pub openai: ProviderSettings,
    /// Anthropic.
    #[serde(default)]
    pub anthropic: ProviderSettings,
    /// OpenAI-compatible servers by name.
    #[serde(default)]
    pub compat: BTreeMap<String, CompatSettings>,
}
