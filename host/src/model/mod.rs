//! Model providers: the provider-neutral [`Model`] trait, its request and
//! response types, the error taxonomy that retry decisions rest on, and the
//! implementations (OpenAI Chat Completions and compatible servers,
//! Anthropic Messages, and the offline `echo` and `scripted` models).

pub mod types;

pub use types::{
    FinishReason, Message, ModelChunk, ModelRequest, ModelResponse, Role, ToolCall, ToolDefinition,
    Usage,
};

use std::time::Duration;

/// A boxed future, for object-safe async trait methods.
pub use futures_util::future::BoxFuture;

/// Where streamed chunks go as they arrive.
pub type ChunkSink<'a> = &'a (dyn Fn(ModelChunk) + Send + Sync);

/// Why a model call failed. The variant decides whether it is retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModelError {
    /// A network error, timeout or 5xx: worth retrying.
    #[error("transient model error: {message}")]
    Transient {
        /// What happened.
        message: String,
    },
    /// HTTP 429: retry after the given delay at the earliest.
    #[error("rate limited{}: {message}", retry_after.map(|d| format!(" (retry after {} ms)", d.as_millis())).unwrap_or_default())]
    RateLimited {
        /// The provider's `Retry-After`, when given.
        retry_after: Option<Duration>,
        /// What the provider said.
        message: String,
    },
    /// HTTP 401/403: the key is missing or wrong. Never retried.
    #[error("authentication failed: {message}")]
    Authentication {
        /// What the provider said.
        message: String,
    },
    /// HTTP 400 and similar: the request is wrong. Never retried.
    #[error("invalid request: {message}")]
    InvalidRequest {
        /// What the provider said.
        message: String,
    },
    /// The provider's content filter refused. Never retried.
    #[error("blocked by the content filter: {message}")]
    ContentFilter {
        /// What the provider said.
        message: String,
    },
}

impl ModelError {
    /// Whether a retry may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ModelError::Transient { .. } | ModelError::RateLimited { .. }
        )
    }
}

/// A chat model.
pub trait Model: Send + Sync {
    /// The model string it was made from, such as `openai:gpt-4.1-mini`.
    fn id(&self) -> &str;

    /// Whether the provider enforces `output_schema` itself (OpenAI
    /// `json_schema`, Anthropic forced tool); otherwise the caller adds a
    /// directive to the prompt.
    fn native_structured_output(&self) -> bool {
        false
    }

    /// Run one completion, sending chunks to `sink` as they arrive.
    fn complete<'a>(
        &'a self,
        request: &'a ModelRequest,
        sink: Option<ChunkSink<'a>>,
    ) -> BoxFuture<'a, Result<ModelResponse, ModelError>>;
}

pub mod anthropic;
pub mod http;
pub mod offline;
pub mod openai;
pub mod pricing;
pub mod retry;
pub mod settings;
pub mod spec;
pub mod sse;
pub mod structured;
