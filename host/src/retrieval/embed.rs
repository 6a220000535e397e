//! Embeddings from an OpenAI-compatible `POST {base_url}/embeddings`
//! endpoint (OpenAI, vLLM, Ollama, llama.cpp server, ...).

use super::RetrievalError;
use crate::secret::Secret;
use serde::Deserialize;
use std::time::Duration;

/// `[retrieval.embeddings]`: where embeddings come from.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingSettings {
    /// Base URL including the version path, such as `https://api.openai.com/v1`.
    pub base_url: String,
    /// The embedding model, such as `text-embedding-3-small`.
    pub model: String,
    /// The API key itself (taken before `api_key_env`).
    pub api_key: Option<Secret>,
    /// Environment variable holding the API key, if the server needs one.
    pub api_key_env: Option<String>,
    /// Longest wait for a response, in milliseconds (default 60000).
    pub timeout_ms: Option<u64>,
}

/// Texts sent in one request.
const BATCH: usize = 64;

/// An embedding client.
#[derive(Debug, Clone)]
pub struct Embedder {
    url: String,
    model: String,
    key: Option<Secret>,
    client: reqwest::Client,
}

#[derive(Deserialize)]
struct Response {
    data: Vec<Item>,
}

#[derive(Deserialize)]
struct Item {
    index: usize,
    embedding: Vec<f32>,
}

impl Embedder {
    /// A client for `settings`.
    ///
    /// # Errors
    ///
    /// [`RetrievalError::Config`] for a bad base URL, or a key variable
    /// that is not set.
    pub fn new(settings: &EmbeddingSettings) -> Result<Self, RetrievalError> {
        let base = crate::model::http::base_url(&settings.base_url)
            .map_err(|e| RetrievalError::Config(format!("[retrieval.embeddings] {e}")))?;
        let key = match (&settings.api_key, &settings.api_key_env) {
            (Some(key), _) => Some(key.clone()),
            (None, Some(var)) => Some(Secret::new(std::env::var(var).map_err(|_| {
                RetrievalError::Config(format!(
                    "[retrieval.embeddings] api_key_env names `{var}`, which is not set"
                ))
            })?)),
            (None, None) => None,
        };
        let timeout = Duration::from_millis(settings.timeout_ms.unwrap_or(60_000));
        let client = crate::model::http::client(timeout, Duration::from_secs(10), &[])
            .map_err(|e| RetrievalError::Config(format!("[retrieval.embeddings] {e}")))?;
        Ok(Embedder {
            url: format!("{base}/embeddings"),
            model: settings.model.clone(),
            key,
            client,
        })
    }

    /// One vector per text, in order.
    ///
    /// # Errors
    ///
    /// [`RetrievalError::Embeddings`] naming the status and the server's
    /// message, or a malformed answer.
    pub async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, RetrievalError> {
        let mut out = Vec::with_capacity(texts.len());
        for batch in texts.chunks(BATCH) {
            let mut request = self.client.post(&self.url).json(&serde_json::json!({
                "model": self.model,
                "input": batch,
            }));
            if let Some(key) = &self.key {
                request = request.bearer_auth(key.expose());
            }
            let failed = |m: String| RetrievalError::Embeddings(format!("{}: {m}", self.url));
            let response = request.send().await.map_err(|e| failed(e.to_string()))?;
            let status = response.status();
            let body = response.text().await.map_err(|e| failed(e.to_string()))?;
            if !status.is_success() {
                let mut shown = body.clone();
                crate::memory::cut(&mut shown, 300);
                return Err(failed(format!("HTTP {status}: {shown}")));
            }
            let mut parsed: Response = serde_json::from_str(&body)
                .map_err(|e| failed(format!("the answer is not an embeddings response: {e}")))?;
            if parsed.data.len() != batch.len() {
                return Err(failed(format!(
                    "{} embeddings for {} texts",
                    parsed.data.len(),
                    batch.len()
                )));
            }
            parsed.data.sort_by_key(|item| item.index);
            out.extend(parsed.data.into_iter().map(|item| item.embedding));
        }
        Ok(out)
    }
}

/// Cosine similarity; 0 for mismatched or zero vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() || a.is_empty() {
        return 0.0;
    }
    let (mut dot, mut na, mut nb) = (0.0f32, 0.0f32, 0.0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}
