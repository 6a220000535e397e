//! Telemetry: spans and metrics through `tracing`, to the sinks `[telemetry]`
//! of `loom.toml` turns on.
//!
//! * `console` — human-readable logs on stderr, the level from `-v` or
//!   `RUST_LOG` (on by default);
//! * `file` — JSON lines, one per closed span and per metric ([`FileSink`]);
//! * `memory` — the same records in memory, for embedders and tests
//!   ([`MemorySink`], from [`TelemetryGuard::memory`]);
//! * `otlp` — OpenTelemetry's OTLP over gRPC or HTTP to a collector.
//!
//! Loom's spans ([`spans`]) follow the OpenTelemetry GenAI semantic
//! conventions; its metrics ([`metrics`]) are `tracing` events in
//! `tracing-opentelemetry`'s `histogram.` / `monotonic_counter.` field
//! convention, which every sink understands.
//!
//! ```no_run
//! # fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use loom_host::telemetry::{self, TelemetryConfig};
//!
//! let config = TelemetryConfig { memory: true, ..TelemetryConfig::default() };
//! let guard = telemetry::install(&config, 0)?;
//! // ... run agents ...
//! let spans = guard.memory().map(|m| m.spans()).unwrap_or_default();
//! println!("{} spans", spans.len());
//! drop(guard); // flushes the file and OTLP exporters
//! # Ok(()) }
//! ```

mod config;
mod file;
mod memory;
pub mod metrics;
mod otlp;
mod record;
pub mod spans;

pub(crate) use config::RawTelemetry;
pub use config::{
    DEFAULT_GRPC_ENDPOINT, DEFAULT_HTTP_ENDPOINT, DEFAULT_OTLP_TIMEOUT, OtlpConfig, OtlpProtocol,
    TelemetryConfig,
};
pub use file::FileSink;
pub use memory::{DEFAULT_MEMORY_RECORDS, MemorySink};
pub use otlp::SERVICE_NAME;
pub use record::{MetricKind, MetricRecord, Record, SpanRecord};

use record::{RecordLayer, RecordSink};
use std::path::PathBuf;
use std::sync::Arc;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A setting is out of range.
    #[error("invalid config key `{key}`: {message}")]
    Invalid {
        /// The dotted key, such as `telemetry.level`.
        key: String,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The JSONL file cannot be opened.
    #[error(
        "cannot open the telemetry file {path}: {source}; fix telemetry.file or make its \
         directory writable"
    )]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The OTLP exporters cannot be built.
    #[error("cannot set up OTLP export ([telemetry.otlp]): {0}")]
    Otlp(String),
    /// Another global `tracing` subscriber was installed first.
    #[error(
        "a global tracing subscriber is already installed; call telemetry::install once, \
         before anything else sets one (or use telemetry::build and install it yourself)"
    )]
    AlreadyInstalled,
}

/// Keeps the sinks alive; dropping it writes out the file's buffer and
/// flushes and stops the OTLP exporters (so a short CLI run still exports
/// everything). Keep it until the work being observed is done.
pub struct TelemetryGuard {
    file: Option<FileSink>,
    memory: Option<MemorySink>,
    otlp: Option<otlp::OtlpPipeline>,
}

impl std::fmt::Debug for TelemetryGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryGuard")
            .field("file", &self.file)
            .field("memory", &self.memory)
            .field("otlp", &self.otlp.is_some())
            .finish()
    }
}

impl TelemetryGuard {
    /// The memory sink, when `memory = true`.
    pub fn memory(&self) -> Option<&MemorySink> {
        self.memory.as_ref()
    }

    /// The file sink, when `file` is set.
    pub fn file(&self) -> Option<&FileSink> {
        self.file.as_ref()
    }

    /// Write out the file's buffer and export what OTLP holds (blocks until
    /// the collector answers or the export times out).
    pub fn flush(&self) {
        if let Some(file) = &self.file {
            file.flush();
        }
        if let Some(otlp) = &self.otlp {
            otlp.flush();
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(file) = &self.file {
            file.flush();
        }
        if let Some(otlp) = self.otlp.take() {
            otlp.shutdown();
        }
    }
}

/// The console's filter: `RUST_LOG` if set, else by `verbose` (0: warn,
/// 1: debug, more: trace).
pub fn console_filter(verbose: u8) -> EnvFilter {
    let default = match verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default))
}

/// A subscriber with the console sink only, at `verbose`.
pub fn console_only(verbose: u8) -> tracing::Dispatch {
    tracing::Dispatch::new(tracing_subscriber::registry().with(console_layer(verbose)))
}

fn console_layer<S>(verbose: u8) -> impl Layer<S> + Send + Sync + 'static
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(console_filter(verbose))
}

/// Targets whose spans are never exported: the exporters' own HTTP and
/// gRPC machinery (exporting its spans would feed itself).
const NEVER_EXPORTED: [&str; 7] = [
    "h2",
    "hyper",
    "tonic",
    "tower",
    "reqwest",
    "opentelemetry",
    "rustls",
];

/// The filter of the exporting sinks: `level`, metrics always in, the
/// exporters' internals always out.
///
/// Metrics are let in at `INFO`, the level they are emitted at, not at
/// `TRACE`: the subscriber's most verbose level is the greatest any of its
/// filters lets in, and it sets how much of the `log` crate's output is
/// forwarded to it. At `TRACE` every `log::trace!` of the engine's crates
/// went through the subscriber's filters on every call (some 4 µs of a
/// governed turn); at `INFO` they stop at one comparison.
fn export_filter(level: &str) -> Result<Targets, TelemetryError> {
    let targets = config::parse_level(level).map_err(|message| TelemetryError::Invalid {
        key: "telemetry.level".to_owned(),
        message,
    })?;
    Ok(NEVER_EXPORTED
        .iter()
        .fold(targets, |t, target| {
            t.with_target(*target, LevelFilter::OFF)
        })
        .with_target(metrics::TARGET, METRICS_LEVEL))
}

/// The level metrics are emitted at (see [`export_filter`]).
const METRICS_LEVEL: LevelFilter = LevelFilter::INFO;

/// Build the subscriber `config` describes without installing it, and the
/// guard of its sinks: for embedders with their own subscriber plans and
/// for tests (`tracing::dispatcher::set_default`).
///
/// # Errors
///
/// [`TelemetryError`] when the level is invalid, the file cannot be opened
/// or the OTLP exporters cannot be built.
pub fn build(
    config: &TelemetryConfig,
    verbose: u8,
) -> Result<(tracing::Dispatch, TelemetryGuard), TelemetryError> {
    let (subscriber, guard) = subscriber(config, verbose)?;
    Ok((tracing::Dispatch::new(subscriber), guard))
}

/// A layer of the subscriber [`build`] makes.
type Boxed = Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync + 'static>;

/// The subscriber [`build`] dispatches to.
fn subscriber(
    config: &TelemetryConfig,
    verbose: u8,
) -> Result<
    (
        tracing_subscriber::layer::Layered<Vec<Boxed>, tracing_subscriber::Registry>,
        TelemetryGuard,
    ),
    TelemetryError,
> {
    let filter = export_filter(&config.level)?;
    let mut layers: Vec<Boxed> = Vec::new();
    if config.console {
        layers.push(console_layer(verbose).boxed());
    }
    let file = config.file.as_deref().map(FileSink::open).transpose()?;
    let memory = config.memory.then(MemorySink::new);
    let mut sinks: Vec<Arc<dyn RecordSink>> = Vec::new();
    if let Some(file) = &file {
        sinks.push(Arc::new(file.clone()));
    }
    if let Some(memory) = &memory {
        sinks.push(Arc::new(memory.clone()));
    }
    if !sinks.is_empty() {
        layers.push(RecordLayer::new(sinks).with_filter(filter.clone()).boxed());
    }
    let otlp = config
        .otlp
        .as_ref()
        .map(otlp::OtlpPipeline::build)
        .transpose()?;
    if let Some(otlp) = &otlp {
        // Metric events are measurements, not span events.
        let spans = filter.with_target(metrics::TARGET, LevelFilter::OFF);
        layers.push(otlp.trace_layer().with_filter(spans).boxed());
        // Only metric events are measurements; unfiltered, the layer
        // would also raise the subscriber's most verbose level to `TRACE`.
        let measurements = Targets::new().with_target(metrics::TARGET, METRICS_LEVEL);
        layers.push(otlp.metrics_layer().with_filter(measurements).boxed());
    }
    Ok((
        tracing_subscriber::registry().with(layers),
        TelemetryGuard { file, memory, otlp },
    ))
}

/// Build the subscriber `config` describes and make it the process's global
/// one (events of the `log` crate included). `verbose` sets the console's
/// level when `RUST_LOG` does not.
///
/// # Errors
///
/// As [`build`], and [`TelemetryError::AlreadyInstalled`] when a global
/// subscriber exists already.
pub fn install(config: &TelemetryConfig, verbose: u8) -> Result<TelemetryGuard, TelemetryError> {
    let (dispatch, guard) = build(config, verbose)?;
    dispatch
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    Ok(guard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telemetry_build_routes_spans_by_level_and_metrics_always() {
        let config = TelemetryConfig {
            console: false,
            memory: true,
            level: "warn".to_owned(),
            ..TelemetryConfig::default()
        };
        let (dispatch, guard) = build(&config, 0).unwrap();
        tracing::dispatcher::with_default(&dispatch, || {
            tracing::info_span!("quiet").in_scope(|| {
                tracing::warn_span!("loud").in_scope(|| {
                    tracing::event!(target: metrics::TARGET,tracing::Level::INFO, monotonic_counter.x = 1u64);
                });
            });
            tracing::warn_span!(target: "h2", "internal").in_scope(|| {});
        });
        let memory = guard.memory().unwrap();
        let names: Vec<String> = memory.spans().into_iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            ["loud"],
            "info and exporter-internal spans are filtered"
        );
        assert_eq!(memory.metrics().len(), 1, "metrics pass any level");
        assert!(guard.file().is_none());
    }

    #[test]
    fn telemetry_asks_for_no_more_than_its_level_and_metrics() {
        for (level, most) in [
            ("info", LevelFilter::INFO),
            ("error", LevelFilter::INFO),
            ("debug", LevelFilter::DEBUG),
            ("warn,loom_host=trace", LevelFilter::TRACE),
        ] {
            let config = TelemetryConfig {
                console: false,
                memory: true,
                level: level.to_owned(),
                ..TelemetryConfig::default()
            };
            // Nothing more verbose is asked for: the `log` crate's more
            // verbose output is not forwarded at all.
            let (subscriber, _guard) = subscriber(&config, 0).unwrap();
            assert_eq!(
                tracing::Subscriber::max_level_hint(&subscriber),
                Some(most),
                "level {level}"
            );
        }
    }

    #[test]
    fn telemetry_build_reports_bad_settings() {
        let bad_level = TelemetryConfig {
            level: "very".to_owned(),
            ..TelemetryConfig::default()
        };
        let err = build(&bad_level, 0).unwrap_err();
        assert!(err.to_string().contains("telemetry.level"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let bad_file = TelemetryConfig {
            file: Some(dir.path().to_owned()),
            ..TelemetryConfig::default()
        };
        let err = build(&bad_file, 0).unwrap_err();
        assert!(matches!(err, TelemetryError::File { .. }), "{err}");
    }
}
