//! The `otlp` sink: spans through `tracing-opentelemetry` and metrics
//! through the OpenTelemetry metrics SDK, exported by `opentelemetry-otlp`
//! over gRPC (tonic) or HTTP (protobuf), resource `service.name = "loom"`.
//!
//! Exports run on the SDK's own threads. The gRPC client needs a Tokio
//! runtime, so the pipeline keeps a one-thread runtime of its own: it works
//! the same whether the caller has a runtime (an embedder) or not yet (the
//! CLI installs telemetry before it starts one).

use super::TelemetryError;
use super::config::{OtlpConfig, OtlpProtocol};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::collections::HashMap;
use tracing_subscriber::{Layer, Registry};

/// The service name every export carries.
pub const SERVICE_NAME: &str = "loom";

/// The providers of one OTLP export, and the runtime its gRPC client uses.
pub(crate) struct OtlpPipeline {
    tracer_provider: SdkTracerProvider,
    meter_provider: SdkMeterProvider,
    runtime: Option<tokio::runtime::Runtime>,
}

fn failed(what: &str, error: impl std::fmt::Display) -> TelemetryError {
    TelemetryError::Otlp(format!("{what}: {error}"))
}

/// `base` with `path` appended (OTLP/HTTP's per-signal URLs).
fn signal_url(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

impl OtlpPipeline {
    /// Build the exporters and providers `config` describes. Nothing is
    /// sent until spans close.
    pub(crate) fn build(config: &OtlpConfig) -> Result<Self, TelemetryError> {
        let resource = Resource::builder().with_service_name(SERVICE_NAME).build();
        let (spans, metrics, runtime) = match config.protocol {
            OtlpProtocol::Grpc => {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("loom-otlp")
                    .enable_all()
                    .build()
                    .map_err(|e| failed("cannot start the OTLP/gRPC runtime", e))?;
                let _entered = runtime.enter();
                let mut headers = http::HeaderMap::new();
                for (name, value) in &config.headers {
                    let name = http::HeaderName::from_bytes(name.as_bytes())
                        .map_err(|e| failed(&format!("header `{name}`"), e))?;
                    let value = http::HeaderValue::from_str(value.expose())
                        .map_err(|e| failed(&format!("header `{name}`"), e))?;
                    headers.insert(name, value);
                }
                let metadata =
                    opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(headers);
                let spans = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(config.endpoint.clone())
                    .with_timeout(config.timeout)
                    .with_metadata(metadata.clone())
                    .build()
                    .map_err(|e| failed("the OTLP span exporter", e))?;
                let metrics = opentelemetry_otlp::MetricExporter::builder()
                    .with_tonic()
                    .with_endpoint(config.endpoint.clone())
                    .with_timeout(config.timeout)
                    .with_metadata(metadata)
                    .build()
                    .map_err(|e| failed("the OTLP metric exporter", e))?;
                drop(_entered);
                (spans, metrics, Some(runtime))
            }
            OtlpProtocol::Http => {
                let headers: HashMap<String, String> = config
                    .headers
                    .iter()
                    .map(|(name, value)| (name.clone(), value.expose().to_owned()))
                    .collect();
                let spans = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(Protocol::HttpBinary)
                    .with_http_client(http_client(config)?)
                    .with_endpoint(signal_url(&config.endpoint, "/v1/traces"))
                    .with_timeout(config.timeout)
                    .with_headers(headers.clone())
                    .build()
                    .map_err(|e| failed("the OTLP span exporter", e))?;
                let metrics = opentelemetry_otlp::MetricExporter::builder()
                    .with_http()
                    .with_protocol(Protocol::HttpBinary)
                    .with_http_client(http_client(config)?)
                    .with_endpoint(signal_url(&config.endpoint, "/v1/metrics"))
                    .with_timeout(config.timeout)
                    .with_headers(headers)
                    .build()
                    .map_err(|e| failed("the OTLP metric exporter", e))?;
                (spans, metrics, None)
            }
        };
        let tracer_provider = SdkTracerProvider::builder()
            .with_batch_exporter(spans)
            .with_resource(resource.clone())
            .build();
        let meter_provider = SdkMeterProvider::builder()
            .with_periodic_exporter(metrics)
            .with_resource(resource)
            .build();
        Ok(OtlpPipeline {
            tracer_provider,
            meter_provider,
            runtime,
        })
    }

    /// The layer turning `tracing` spans into OpenTelemetry spans.
    pub(crate) fn trace_layer(&self) -> impl Layer<Registry> + Send + Sync + 'static {
        tracing_opentelemetry::layer()
            .with_tracer(self.tracer_provider.tracer("loom"))
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_location(false)
    }

    /// The layer turning metric events into OpenTelemetry measurements.
    pub(crate) fn metrics_layer(&self) -> impl Layer<Registry> + Send + Sync + 'static {
        tracing_opentelemetry::MetricsLayer::new(self.meter_provider.clone())
    }

    /// Export what has ended so far; failures are reported on stderr.
    pub(crate) fn flush(&self) {
        if let Err(error) = self.tracer_provider.force_flush() {
            eprintln!("loom: OTLP span export: {error}");
        }
        if let Err(error) = self.meter_provider.force_flush() {
            eprintln!("loom: OTLP metric export: {error}");
        }
    }

    /// Export the rest and stop (also done on drop).
    pub(crate) fn shutdown(self) {
        drop(self);
    }
}

impl Drop for OtlpPipeline {
    fn drop(&mut self) {
        if let Err(error) = self.tracer_provider.shutdown() {
            eprintln!("loom: OTLP span export at shutdown: {error}");
        }
        if let Err(error) = self.meter_provider.shutdown() {
            eprintln!("loom: OTLP metric export at shutdown: {error}");
        }
        if let Some(runtime) = self.runtime.take() {
            // Never blocks, so the guard may be dropped inside async code.
            runtime.shutdown_background();
        }
    }
}

/// The blocking HTTP client of the OTLP/HTTP exporters, with Loom's TLS
/// settings (built on a thread of its own: building it inside an async
/// context is not allowed).
fn http_client(config: &OtlpConfig) -> Result<reqwest::blocking::Client, TelemetryError> {
    let timeout = config.timeout;
    std::thread::spawn(move || {
        reqwest::blocking::Client::builder()
            .timeout(timeout)
            .tls_backend_preconfigured(crate::tls::client_config_h2())
            .build()
    })
    .join()
    .map_err(|_| failed("the OTLP/HTTP client", "its builder panicked"))?
    .map_err(|e| failed("the OTLP/HTTP client", e))
}
