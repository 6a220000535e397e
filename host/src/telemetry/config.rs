//! `[telemetry]` of `loom.toml`: which sinks are on, the level of what they
//! export, and where OTLP goes.

use crate::secret::Secret;
use crate::tenancy::grants::EnvValue;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// The default OTLP/gRPC endpoint (a collector on this machine).
pub const DEFAULT_GRPC_ENDPOINT: &str = "http://127.0.0.1:4317";
/// The default OTLP/HTTP endpoint (a collector on this machine).
pub const DEFAULT_HTTP_ENDPOINT: &str = "http://127.0.0.1:4318";
/// How long one OTLP export may take by default.
pub const DEFAULT_OTLP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where spans and metrics go: `[telemetry]` of `loom.toml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// Human-readable logs on stderr (`console`, default on). Its level
    /// comes from `-v` or `RUST_LOG`, not from [`Self::level`].
    pub console: bool,
    /// A JSONL file receiving one line per closed span and per metric
    /// (`file`, resolved against the config file's directory).
    pub file: Option<PathBuf>,
    /// Keep spans and metrics in memory for the embedder to read
    /// (`memory`); see [`super::TelemetryGuard::memory`].
    pub memory: bool,
    /// What the file, memory and OTLP sinks receive: a level (`info`) or
    /// `tracing` target directives (`info,loom_host::engine=debug`).
    /// Metrics are always exported.
    pub level: String,
    /// Export through OpenTelemetry's OTLP (`[telemetry.otlp]`).
    pub otlp: Option<OtlpConfig>,
}

impl Default for TelemetryConfig {
    /// Console only, at the level `-v` asks for.
    fn default() -> Self {
        TelemetryConfig {
            console: true,
            file: None,
            memory: false,
            level: "info".to_owned(),
            otlp: None,
        }
    }
}

/// `[telemetry.otlp]`: an OpenTelemetry collector to export to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    /// The collector: for gRPC its address (`http://127.0.0.1:4317`), for
    /// HTTP its base URL (`http://127.0.0.1:4318`; Loom appends
    /// `/v1/traces` and `/v1/metrics`).
    pub endpoint: String,
    /// gRPC or HTTP (protobuf).
    pub protocol: OtlpProtocol,
    /// Headers (gRPC metadata) sent with every export, such as an API key.
    pub headers: Vec<(String, Secret)>,
    /// How long one export may take.
    pub timeout: Duration,
}

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP/gRPC (port 4317 by convention).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318 by convention).
    Http,
}

/// `[telemetry]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTelemetry {
    console: Option<bool>,
    file: Option<PathBuf>,
    memory: Option<bool>,
    level: Option<String>,
    otlp: Option<RawOtlp>,
}

/// `[telemetry.otlp]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOtlp {
    endpoint: Option<String>,
    protocol: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, EnvValue>,
    timeout_ms: Option<u64>,
}

/// A value of `[telemetry]` that is wrong: the dotted key and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invalid {
    pub(crate) key: String,
    pub(crate) message: String,
}

fn invalid(key: &str, message: impl Into<String>) -> Invalid {
    Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

/// Check a `level` value: a level or target directives.
pub(crate) fn parse_level(level: &str) -> Result<tracing_subscriber::filter::Targets, String> {
    let trimmed = level.trim();
    if trimmed.is_empty() {
        return Err("is empty; write a level such as \"info\"".to_owned());
    }
    let bad = || {
        format!(
            "`{level}` is not a level (trace, debug, info, warn, error, off) nor a list of \
             directives such as \"info,loom_host::engine=debug\""
        )
    };
    // `Targets` takes a bare word for a target; here each directive must
    // say a level.
    for directive in trimmed.split(',') {
        let level = match directive.split_once('=') {
            Some((target, level)) if !target.trim().is_empty() => level,
            Some(_) => return Err(bad()),
            None => directive,
        };
        tracing_subscriber::filter::LevelFilter::from_str(level.trim()).map_err(|_| bad())?;
    }
    tracing_subscriber::filter::Targets::from_str(trimmed).map_err(|e| format!("{}: {e}", bad()))
}

impl RawTelemetry {
    /// Validate and resolve: `file` against `resolve`, header values read
    /// from the environment.
    pub(crate) fn resolve(
        &self,
        resolve: &dyn Fn(&Path) -> PathBuf,
    ) -> Result<TelemetryConfig, Invalid> {
        let defaults = TelemetryConfig::default();
        let level = self.level.clone().unwrap_or(defaults.level);
        parse_level(&level).map_err(|m| invalid("telemetry.level", m))?;
        let file = match &self.file {
            Some(path) if path.as_os_str().is_empty() => {
                return Err(invalid(
                    "telemetry.file",
                    "is empty; name a file such as \"telemetry.jsonl\", or remove the key",
                ));
            }
            Some(path) => Some(resolve(path)),
            None => None,
        };
        Ok(TelemetryConfig {
            console: self.console.unwrap_or(defaults.console),
            file,
            memory: self.memory.unwrap_or(defaults.memory),
            level,
            otlp: self.otlp.as_ref().map(RawOtlp::resolve).transpose()?,
        })
    }
}

impl RawOtlp {
    fn resolve(&self) -> Result<OtlpConfig, Invalid> {
        let protocol = match self.protocol.as_deref() {
            None | Some("grpc") => OtlpProtocol::Grpc,
            Some("http") | Some("http/protobuf") => OtlpProtocol::Http,
            Some(other) => {
                return Err(invalid(
                    "telemetry.otlp.protocol",
                    format!(
                        "`{other}` is not a protocol; write \"grpc\" (OTLP/gRPC, port 4317) or \
                         \"http\" (OTLP/HTTP with protobuf, port 4318)"
                    ),
                ));
            }
        };
        let endpoint = match &self.endpoint {
            Some(endpoint) => endpoint.trim().trim_end_matches('/').to_owned(),
            None => match protocol {
                OtlpProtocol::Grpc => DEFAULT_GRPC_ENDPOINT.to_owned(),
                OtlpProtocol::Http => DEFAULT_HTTP_ENDPOINT.to_owned(),
            },
        };
        check_endpoint(&endpoint, protocol).map_err(|m| invalid("telemetry.otlp.endpoint", m))?;
        let mut headers = Vec::with_capacity(self.headers.len());
        for (name, value) in &self.headers {
            let key = format!("telemetry.otlp.headers.{name}");
            let lower = name.to_ascii_lowercase();
            if http::HeaderName::from_bytes(lower.as_bytes()).is_err() {
                return Err(invalid(
                    &key,
                    "is not a valid header name (letters, digits and `-`)",
                ));
            }
            let value = match value {
                EnvValue::Literal(value) => value.clone(),
                EnvValue::FromHost { from_host } => std::env::var(from_host).map_err(|_| {
                    invalid(
                        &key,
                        format!(
                            "host variable `{from_host}` is not set (or not UTF-8); set it or \
                             write the value"
                        ),
                    )
                })?,
            };
            if http::HeaderValue::from_str(&value).is_err() {
                return Err(invalid(
                    &key,
                    "holds characters a header value cannot carry (control characters or \
                     non-ASCII)",
                ));
            }
            headers.push((lower, Secret::from(value)));
        }
        let timeout = match self.timeout_ms {
            None => DEFAULT_OTLP_TIMEOUT,
            Some(ms @ 1..=300_000) => Duration::from_millis(ms),
            Some(_) => {
                return Err(invalid(
                    "telemetry.otlp.timeout_ms",
                    "must be between 1 and 300000 (milliseconds)",
                ));
            }
        };
        Ok(OtlpConfig {
            endpoint,
            protocol,
            headers,
            timeout,
        })
    }
}

/// An endpoint must be an `http://` URL with a host; `https://` only for
/// OTLP/HTTP (the gRPC exporter is built without TLS).
fn check_endpoint(endpoint: &str, protocol: OtlpProtocol) -> Result<(), String> {
    let uri: http::Uri = endpoint.parse().map_err(|e| {
        format!("`{endpoint}` is not a URL ({e}); write one such as \"http://127.0.0.1:4317\"")
    })?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!(
            "`{endpoint}` names no host; write one such as \"http://127.0.0.1:4317\""
        ));
    }
    match (uri.scheme_str(), protocol) {
        (Some("http"), _) | (Some("https"), OtlpProtocol::Http) => Ok(()),
        (Some("https"), OtlpProtocol::Grpc) => Err(format!(
            "`{endpoint}`: OTLP/gRPC is exported without TLS; use an http:// endpoint (a local \
             collector), or protocol = \"http\" for an https:// one"
        )),
        _ => Err(format!(
            "`{endpoint}` must start with http:// (or https:// with protocol = \"http\")"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TelemetryConfig, Invalid> {
        let raw: RawTelemetry = toml::from_str(text).map_err(|e| invalid("toml", e.to_string()))?;
        raw.resolve(&|p: &Path| Path::new("/base").join(p))
    }

    #[test]
    fn telemetry_defaults_are_console_only() {
        let config = parse("").unwrap();
        assert_eq!(config, TelemetryConfig::default());
        assert!(config.console && !config.memory && config.file.is_none());
    }

    #[test]
    fn telemetry_keys_resolve() {
        let config = parse(
            "console = false\nfile = \"t.jsonl\"\nmemory = true\nlevel = \"debug\"\n\
             [otlp]\nprotocol = \"http\"\nendpoint = \"http://collector:4318/\"\n\
             headers = { \"X-Key\" = \"v\" }\ntimeout_ms = 500\n",
        )
        .unwrap();
        assert!(!config.console && config.memory);
        assert_eq!(config.file.as_deref(), Some(Path::new("/base/t.jsonl")));
        assert_eq!(config.level, "debug");
        let otlp = config.otlp.unwrap();
        assert_eq!(otlp.protocol, OtlpProtocol::Http);
        assert_eq!(otlp.endpoint, "http://collector:4318");
        assert_eq!(otlp.headers[0].0, "x-key");
        assert_eq!(otlp.headers[0].1.expose(), "v");
        assert_eq!(otlp.timeout, Duration::from_millis(500));
        let directives = parse("level = \"warn,loom_host::engine=debug\"").unwrap();
        assert_eq!(directives.level, "warn,loom_host::engine=debug");
        let grpc = parse("[otlp]\n").unwrap().otlp.unwrap();
        assert_eq!(grpc.protocol, OtlpProtocol::Grpc);
        assert_eq!(grpc.endpoint, DEFAULT_GRPC_ENDPOINT);
    }

    #[test]
    fn telemetry_bad_values_name_the_key() {
        for (text, key) in [
            ("level = \"loud\"", "telemetry.level"),
            ("level = \"info,loom_host=loud\"", "telemetry.level"),
            ("level = \"=debug\"", "telemetry.level"),
            ("file = \"\"", "telemetry.file"),
            ("[otlp]\nprotocol = \"udp\"", "telemetry.otlp.protocol"),
            (
                "[otlp]\nendpoint = \"localhost\"",
                "telemetry.otlp.endpoint",
            ),
            (
                "[otlp]\nendpoint = \"https://x:4317\"",
                "telemetry.otlp.endpoint",
            ),
            ("[otlp]\ntimeout_ms = 0", "telemetry.otlp.timeout_ms"),
            (
                "[otlp]\nheaders = { \"a b\" = \"v\" }",
                "telemetry.otlp.headers.a b",
            ),
            (
                "[otlp]\nheaders = { k = { from_host = \"LOOM_TEST_SURELY_UNSET_VAR\" } }",
                "telemetry.otlp.headers.k",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert_eq!(err.key, key, "{text}: {}", err.message);
        }
        let err = parse("colour = true").unwrap_err();
        assert!(err.message.contains("colour"), "{}", err.message);
    }
}
