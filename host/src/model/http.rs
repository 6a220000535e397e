//! What the hosted providers share: the HTTP client, turning an HTTP
//! failure into a [`ModelError`], and reading a response as server-sent
//! events.

use super::ModelError;
use super::sse::{SseEvent, SseParser};
use futures_util::StreamExt;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use std::time::{Duration, SystemTime};

/// Why a provider client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// An extra header's name or value is not valid HTTP.
    #[error("header `{name}` is not a valid HTTP header: {reason}")]
    InvalidHeader {
        /// The header's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The base URL does not parse.
    #[error("base URL `{url}` is not a valid http(s) URL: {reason}")]
    InvalidBaseUrl {
        /// The URL as configured.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// reqwest refused the configuration.
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
}

/// How to reach a hosted provider; shared by every provider's config.
#[derive(Debug, Clone)]
pub struct Connection {
    /// The model string this was made from (reported by `Model::id`).
    pub id: String,
    /// The model name sent to the server.
    pub model: String,
    /// Base URL, such as `https://api.openai.com/v1` or `https://api.anthropic.com`.
    pub base_url: String,
    /// The API key; `None` sends none.
    pub api_key: Option<crate::secret::Secret>,
    /// Longest wait for the next bytes of a response.
    pub timeout: Duration,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Headers added to every request.
    pub extra_headers: Vec<(String, String)>,
}

impl Connection {
    /// A connection to `base_url` for `model` (reported as `id`), with no
    /// key, a 120 s idle timeout and a 10 s connect timeout.
    pub fn new(
        id: impl Into<String>,
        model: impl Into<String>,
        base_url: impl Into<String>,
    ) -> Self {
        Connection {
            id: id.into(),
            model: model.into(),
            base_url: base_url.into(),
            api_key: None,
            timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
            extra_headers: Vec::new(),
        }
    }

    /// The endpoint `path` under the base URL, and a client for it.
    pub(crate) fn open(&self, path: &str) -> Result<(String, reqwest::Client), ClientError> {
        let endpoint = format!("{}{path}", base_url(&self.base_url)?);
        let client = client(self.timeout, self.connect_timeout, &self.extra_headers)?;
        Ok((endpoint, client))
    }
}

/// Check `base_url` and strip its trailing slash.
pub(crate) fn base_url(url: &str) -> Result<String, ClientError> {
    let invalid = |reason: &str| ClientError::InvalidBaseUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let parsed = reqwest::Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid("the scheme must be http or https"));
    }
    Ok(url.trim_end_matches('/').to_owned())
}

/// A client with the given timeouts (`timeout` is the longest wait for the
/// next bytes of a response) and default headers.
pub(crate) fn client(
    timeout: Duration,
    connect_timeout: Duration,
    headers: &[(String, String)],
) -> Result<reqwest::Client, ClientError> {
    let mut default_headers = HeaderMap::new();
    for (name, value) in headers {
        let invalid = |reason: String| ClientError::InvalidHeader {
            name: name.clone(),
            reason,
        };
        let header_name =
            HeaderName::from_bytes(name.as_bytes()).map_err(|e| invalid(e.to_string()))?;
        let header_value = HeaderValue::from_str(value).map_err(|e| invalid(e.to_string()))?;
        default_headers.insert(header_name, header_value);
    }
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(crate::tls::client_config_h2())
        // An idle timeout, not a total one: a long answer may stream for
        // minutes, as long as bytes keep coming.
        .read_timeout(timeout)
        .connect_timeout(connect_timeout)
        .default_headers(default_headers)
        .user_agent(concat!("loom/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// A transport failure (connect, TLS, timeout, broken body): transient.
pub(crate) fn transport_error(provider: &str, error: &reqwest::Error) -> ModelError {
    let what = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "transport error"
    };
    ModelError::Transient {
        message: format!("{provider}: {what}: {}", error_chain(error)),
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The delay a 429 or 503 asks for: `retry-after-ms` (OpenAI), else
/// `Retry-After` as seconds or an HTTP date.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.parse::<f64>().ok())
        && ms.is_finite()
        && ms >= 0.0
    {
        return Duration::try_from_secs_f64(ms / 1000.0).ok();
    }
    let value = text("retry-after")?;
    if let Ok(seconds) = value.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).ok();
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// What a provider's error body says: `{"error": {"message", "type", "code"}}`
/// (both providers use this shape), or the raw text.
pub(crate) struct ErrorBody {
    /// The human-readable message.
    pub message: String,
    /// The `type` field, such as `rate_limit_error`.
    pub kind: String,
    /// The `code` field, such as `insufficient_quota` (or Anthropic's
    /// `details.error_code`).
    pub code: String,
}

impl ErrorBody {
    /// Parse a body; falls back to its first 500 characters.
    pub fn parse(body: &str) -> ErrorBody {
        let value: Option<serde_json::Value> = serde_json::from_str(body).ok();
        let error = value.as_ref().and_then(|v| v.get("error"));
        let field = |name: &str| {
            error
                .and_then(|e| e.get(name))
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_owned()
        };
        let mut message = field("message");
        if message.len() > 2000 {
            message = message.chars().take(2000).collect();
            message.push('…');
        }
        ErrorBody {
            message: if message.is_empty() {
                body.chars().take(500).collect()
            } else {
                message
            },
            kind: field("type"),
            code: match field("code") {
                code if code.is_empty() => error
                    .and_then(|e| e.pointer("/details/error_code"))
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_owned(),
                code => code,
            },
        }
    }
}

/// Classify a non-success HTTP status. `content_filter` says whether the
/// body marks a content-policy refusal.
pub(crate) fn status_error(
    provider: &str,
    status: reqwest::StatusCode,
    headers: &HeaderMap,
    body: &ErrorBody,
    content_filter: bool,
) -> ModelError {
    let message = format!(
        "{provider} answered HTTP {}: {}",
        status.as_u16(),
        body.message
    );
    let wait = retry_after(headers);
    match status.as_u16() {
        401 | 403 => ModelError::Authentication { message },
        _ if content_filter => ModelError::ContentFilter { message },
        // A 429 for an exhausted quota or spend limit will not clear by
        // waiting.
        429 if matches!(
            body.code.as_str(),
            "insufficient_quota" | "enforced_spend_limit_reached"
        ) =>
        {
            ModelError::InvalidRequest { message }
        }
        429 => ModelError::RateLimited {
            retry_after: wait,
            message,
        },
        // An overloaded server that says when to come back is a rate limit.
        503 | 529 if wait.is_some() => ModelError::RateLimited {
            retry_after: wait,
            message,
        },
        408 | 409 | 425 | 500..=599 => ModelError::Transient { message },
        _ => ModelError::InvalidRequest { message },
    }
}

/// Most bytes of an error response that are read.
pub const MAX_ERROR_BODY_BYTES: usize = 64 << 10;

/// Most bytes of one streamed answer; a provider (or something posing as
/// one) that sends more is cut off with an error.
pub const MAX_RESPONSE_BYTES: usize = 32 << 20;

/// Read at most [`MAX_ERROR_BODY_BYTES`] of an error response.
async fn error_body(response: reqwest::Response) -> String {
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(Ok(piece)) = stream.next().await {
        let room = MAX_ERROR_BODY_BYTES - body.len();
        body.extend_from_slice(&piece[..piece.len().min(room)]);
        if body.len() >= MAX_ERROR_BODY_BYTES {
            break;
        }
    }
    String::from_utf8_lossy(&body).into_owned()
}

/// Send `request`; on success read the body as server-sent events, calling
/// `on_event` for each in order. `on_event` stops the stream by returning an
/// error. `classify` turns a non-success response into an error.
pub(crate) async fn send_streaming(
    provider: &str,
    request: reqwest::RequestBuilder,
    classify: impl Fn(reqwest::StatusCode, &HeaderMap, &str) -> ModelError,
    mut on_event: impl FnMut(SseEvent) -> Result<(), ModelError>,
) -> Result<(), ModelError> {
    let response = request
        .send()
        .await
        .map_err(|e| transport_error(provider, &e))?;
    let status = response.status();
    if !status.is_success() {
        let headers = response.headers().clone();
        let body = error_body(response).await;
        return Err(classify(status, &headers, &body));
    }
    let mut parser = SseParser::new();
    let mut body = response.bytes_stream();
    let mut received = 0usize;
    while let Some(piece) = body.next().await {
        let piece = piece.map_err(|e| transport_error(provider, &e))?;
        received += piece.len();
        if received > MAX_RESPONSE_BYTES {
            return Err(ModelError::InvalidRequest {
                message: format!(
                    "{provider}: the answer passed {MAX_RESPONSE_BYTES} bytes; the stream was cut off"
                ),
            });
        }
        for event in parser.push(&piece) {
            on_event(event)?;
        }
    }
    if let Some(event) = parser.finish() {
        on_event(event)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_milliseconds_and_dates() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert("retry-after-ms", HeaderValue::from_static("150"));
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(150)));
        let mut headers = HeaderMap::new();
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        headers.insert("retry-after", HeaderValue::from_str(&later).unwrap());
        let wait = retry_after(&headers).unwrap();
        assert!(wait > Duration::from_secs(27) && wait <= Duration::from_secs(30));
        headers.insert("retry-after", HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers), None);
        headers.insert("retry-after", HeaderValue::from_static("1e30"));
        assert_eq!(
            retry_after(&headers),
            None,
            "too large is ignored, not a panic"
        );
        headers.insert("retry-after", HeaderValue::from_static("-3"));
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn statuses_map_to_the_taxonomy() {
        let headers = HeaderMap::new();
        let body = ErrorBody::parse(r#"{"error":{"message":"nope","type":"x","code":"y"}}"#);
        let classify = |status: u16| {
            status_error(
                "p",
                reqwest::StatusCode::from_u16(status).unwrap(),
                &headers,
                &body,
                false,
            )
        };
        assert!(matches!(classify(401), ModelError::Authentication { .. }));
        assert!(matches!(classify(403), ModelError::Authentication { .. }));
        assert!(matches!(classify(429), ModelError::RateLimited { .. }));
        assert!(matches!(classify(503), ModelError::Transient { .. }));
        assert!(matches!(classify(529), ModelError::Transient { .. }));
        assert!(matches!(classify(400), ModelError::InvalidRequest { .. }));
        let quota = ErrorBody::parse(r#"{"error":{"message":"q","code":"insufficient_quota"}}"#);
        assert!(matches!(
            status_error(
                "p",
                reqwest::StatusCode::TOO_MANY_REQUESTS,
                &headers,
                &quota,
                false
            ),
            ModelError::InvalidRequest { .. }
        ));
        let spend = ErrorBody::parse(
            r#"{"type":"error","error":{"type":"rate_limit_error","message":"s","details":{"error_code":"enforced_spend_limit_reached"}}}"#,
        );
        assert!(matches!(
            status_error(
                "p",
                reqwest::StatusCode::TOO_MANY_REQUESTS,
                &headers,
                &spend,
                false
            ),
            ModelError::InvalidRequest { .. }
        ));
        let mut later = HeaderMap::new();
        later.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(
            status_error(
                "p",
                reqwest::StatusCode::SERVICE_UNAVAILABLE,
                &later,
                &body,
                false
            ),
            ModelError::RateLimited {
                retry_after: Some(Duration::from_secs(3)),
                message: "p answered HTTP 503: nope".into(),
            }
        );
    }
}
