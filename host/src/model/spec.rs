//! Model strings and provider settings: `openai:<model>`,
//! `anthropic:<model>`, `compat:<name>` (an OpenAI-compatible server from
//! `[models.compat.<name>]`), `echo`, and `scripted:<file>`.

use super::Model;
use super::anthropic::{AnthropicConfig, AnthropicModel};
use super::http::Connection;
use super::offline::{EchoModel, ScriptedModel};
use super::openai::{OpenAiConfig, OpenAiModel};
use super::retry::{RetryPolicy, RetryingModel};
pub use super::settings::{CompatSettings, ModelSettings, ProviderSettings, RetrySettings};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The retry policy `settings` describe.
pub fn retry_policy(settings: &RetrySettings) -> RetryPolicy {
    let mut policy = RetryPolicy::default();
    if let Some(n) = settings.max_attempts {
        policy.max_attempts = n.max(1);
    }
    if let Some(ms) = settings.initial_backoff_ms {
        policy.initial_backoff = Duration::from_millis(ms);
    }
    if let Some(ms) = settings.max_backoff_ms {
        policy.max_backoff = Duration::from_millis(ms);
    }
    policy
}

/// Why a model string could not be turned into a model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "model `{spec}`: {message}. Valid examples: openai:gpt-4.1-mini, anthropic:claude-sonnet-4-5, compat:<name> (from [models.compat.<name>]), echo, scripted:path/to/script.json"
)]
pub struct SpecError {
    /// The model string.
    pub spec: String,
    /// What is wrong.
    pub message: String,
}

fn api_key(env: Option<&str>, default: &str) -> Option<crate::secret::Secret> {
    std::env::var(env.unwrap_or(default))
        .ok()
        .filter(|k| !k.is_empty())
        .map(crate::secret::Secret::from)
}

/// The connection of a hosted provider (`[models.openai]`,
/// `[models.anthropic]`) from its settings and defaults.
fn hosted(
    spec: &str,
    model: &str,
    settings: &super::settings::ProviderSettings,
    default_base_url: &str,
    default_key_env: &str,
) -> Connection {
    Connection {
        id: spec.to_owned(),
        model: model.to_owned(),
        base_url: settings
            .base_url
            .clone()
            .unwrap_or_else(|| default_base_url.to_owned()),
        api_key: settings
            .api_key
            .clone()
            .or_else(|| api_key(settings.api_key_env.as_deref(), default_key_env)),
        timeout: millis(settings.timeout_ms, 120_000),
        connect_timeout: millis(settings.connect_timeout_ms, 10_000),
        extra_headers: settings.headers.clone().into_iter().collect(),
    }
}

fn millis(ms: Option<u64>, default: u64) -> Duration {
    Duration::from_millis(ms.unwrap_or(default))
}

/// Build the model `spec` names, wrapped in the retry policy (offline models
/// are not wrapped). Relative script paths resolve against `base_dir`.
///
/// # Errors
///
/// [`SpecError`] naming the string, what is wrong, and valid examples.
pub fn from_spec(
    spec: &str,
    settings: &ModelSettings,
    retry: &RetryPolicy,
    base_dir: &Path,
) -> Result<Arc<dyn Model>, SpecError> {
    let err = |message: String| SpecError {
        spec: spec.to_owned(),
        message,
    };
    let (provider, name) = spec.split_once(':').unwrap_or((spec, ""));
    let hosted: Arc<dyn Model> = match provider {
        "echo" if name.is_empty() => return Ok(Arc::new(EchoModel)),
        "scripted" => {
            if name.is_empty() {
                return Err(err(
                    "give the script's path, as in scripted:script.json".into()
                ));
            }
            let path = Path::new(name);
            let path = if path.is_absolute() {
                path.to_owned()
            } else {
                base_dir.join(path)
            };
            return ScriptedModel::load(&path)
                .map(|m| Arc::new(m) as Arc<dyn Model>)
                .map_err(|e| err(e.to_string()));
        }
        "openai" if !name.is_empty() => {
            let s = &settings.openai;
            Arc::new(
                OpenAiModel::new(OpenAiConfig {
                    connection: hosted(
                        spec,
                        name,
                        s,
                        "https://api.openai.com/v1",
                        "OPENAI_API_KEY",
                    ),
                    native_structured_output: true,
                    max_tokens_field: "max_completion_tokens".into(),
                })
                .map_err(|e| err(e.to_string()))?,
            )
        }
        "anthropic" if !name.is_empty() => {
            let s = &settings.anthropic;
            Arc::new(
                AnthropicModel::new(AnthropicConfig {
                    connection: hosted(
                        spec,
                        name,
                        s,
                        "https://api.anthropic.com",
                        "ANTHROPIC_API_KEY",
                    ),
                    prompt_caching: s.prompt_caching.unwrap_or(true),
                    ..AnthropicConfig::default()
                })
                .map_err(|e| err(e.to_string()))?,
            )
        }
        "compat" if !name.is_empty() => {
            let s = settings.compat.get(name).ok_or_else(|| {
                let known: Vec<&str> = settings.compat.keys().map(String::as_str).collect();
                err(format!(
                    "no [models.compat.{name}] in loom.toml (configured: {})",
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ))
            })?;
            Arc::new(
                OpenAiModel::new(OpenAiConfig {
                    connection: Connection {
                        id: spec.to_owned(),
                        model: s.model.clone(),
                        base_url: s.base_url.clone(),
                        api_key: s.api_key.clone().or_else(|| {
                            s.api_key_env
                                .as_deref()
                                .and_then(|env| api_key(Some(env), env))
                        }),
                        timeout: millis(s.timeout_ms, 120_000),
                        connect_timeout: Duration::from_secs(10),
                        extra_headers: s.headers.clone().into_iter().collect(),
                    },
                    native_structured_output: s.native_structured_output,
                    max_tokens_field: "max_tokens".into(),
                })
                .map_err(|e| err(e.to_string()))?,
            )
        }
        _ => return Err(err("unknown provider or missing model name".into())),
    };
    Ok(Arc::new(RetryingModel::new(hosted, retry.clone())))
}
