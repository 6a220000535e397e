//! Telemetry of real runs (ReAct in its sandbox over a scripted model, real
//! tool components): the span tree and metrics in the memory sink, a
//! delegation's sub-agent under its parent, and OTLP export over HTTP and
//! gRPC to collectors started by the test.
//!
//! Each test installs its subscriber for its own thread only
//! (`tracing::dispatcher::set_default`) on a current-thread runtime, so
//! every task of the run (spawned tool calls included) reports to it and
//! tests in one process never share a subscriber.

use loom_host::Host;
use loom_host::agent::{Agent, RunRequest, RunResult};
use loom_host::model::offline::{ScriptedModel, ScriptedTurn};
use loom_host::model::{Model, Usage};
use loom_host::telemetry::{self, OtlpConfig, OtlpProtocol, SpanRecord, TelemetryConfig};
use loom_tests::{TestEnv, components, scope};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
    metrics_service_server::{MetricsService, MetricsServiceServer},
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn turn(calls: &[(&str, serde_json::Value)], text: &str) -> ScriptedTurn {
    crate::support::scripted_turn(
        text,
        calls,
        Usage {
            input_tokens: 100,
            output_tokens: 10,
            cached_tokens: 0,
            cache_write_tokens: 0,
        },
    )
}

/// A host with ReAct and two tools; acme runs them freely, globex may not
/// call the calculator.
async fn host(env: &TestEnv) -> Arc<Host> {
    env.add_plugin(components::ARCH_REACT, "react", None);
    env.add_plugin(components::TOOL_CALCULATOR, "calculator", None);
    env.add_plugin(components::TOOL_RUN_CONTEXT, "run-context", None);
    Arc::new(
        env.host(
            "[tenants.acme.permissions]\nmode = \"bypass\"\n\
             [tenants.globex.permissions]\nmode = \"bypass\"\ndeny = [\"calculate\"]\n",
        )
        .await,
    )
}

/// ReAct over a model that calls both tools in one turn (so they run as
/// spawned tasks), then answers.
fn agent(host: &Arc<Host>) -> Agent {
    let model: Arc<dyn Model> = Arc::new(ScriptedModel::new(vec![
        turn(
            &[
                ("calculate", json!({"expression": "6*7"})),
                ("run_context", json!({})),
            ],
            "",
        ),
        turn(&[], "The answer is 42"),
    ]));
    Agent::builder("You are a calculator.")
        .host(host.clone())
        .model(model)
        .build()
        .unwrap()
}

async fn run(agent: &Agent, tenant: &str, user: &str) -> RunResult {
    let session = "s-telemetry".parse().unwrap();
    agent
        .run(RunRequest::new(
            scope(tenant, Some(user)).with_session(session),
            "what is 6*7?",
        ))
        .await
        .unwrap()
}

/// The one span named `name`.
fn one<'a>(spans: &'a [SpanRecord], name: &str) -> &'a SpanRecord {
    let found: Vec<&SpanRecord> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one `{name}` span in {:#?}", names(spans));
    found[0]
}

fn names(spans: &[SpanRecord]) -> Vec<&str> {
    spans.iter().map(|s| s.name.as_str()).collect()
}

fn children<'a>(spans: &'a [SpanRecord], parent: &SpanRecord) -> Vec<&'a SpanRecord> {
    spans
        .iter()
        .filter(|s| s.parent_span_id.as_deref() == Some(parent.span_id.as_str()))
        .collect()
}

fn memory_config() -> TelemetryConfig {
    TelemetryConfig {
        console: false,
        memory: true,
        ..TelemetryConfig::default()
    }
}

#[tokio::test]
async fn telemetry_memory_sink_sees_a_real_run_as_a_tree() {
    let env = TestEnv::new();
    let host = host(&env).await;
    let (dispatch, guard) = telemetry::build(&memory_config(), 0).unwrap();
    let _default = tracing::dispatcher::set_default(&dispatch);
    let result = run(&agent(&host), "acme", "alice").await;
    assert_eq!(result.output, "The answer is 42");
    let memory = guard.memory().unwrap();
    let spans = memory.spans();

    let root = one(&spans, "invoke_agent react");
    assert_eq!(root.parent_span_id, None, "a top-level run is a root");
    assert_eq!(root.str_attr("gen_ai.operation.name"), Some("invoke_agent"));
    assert_eq!(root.str_attr("gen_ai.agent.name"), Some("react"));
    assert_eq!(root.str_attr("loom.tenant"), Some("acme"));
    assert_eq!(root.str_attr("loom.user"), Some("alice"));
    assert_eq!(root.str_attr("gen_ai.conversation.id"), Some("s-telemetry"));
    let run_id = result.run_id.to_string();
    assert_eq!(root.str_attr("loom.run_id"), Some(run_id.as_str()));
    // Recorded when the run ended.
    assert_eq!(root.u64_attr("gen_ai.usage.input_tokens"), Some(200));
    assert_eq!(root.u64_attr("gen_ai.usage.output_tokens"), Some(20));
    assert_eq!(root.u64_attr("loom.turns"), Some(2));

    let under_root = children(&spans, root);
    let chats: Vec<_> = under_root
        .iter()
        .filter(|s| s.name == "chat scripted")
        .collect();
    assert_eq!(chats.len(), 2, "{:#?}", names(&spans));
    for chat in &chats {
        assert_eq!(chat.trace_id, root.trace_id);
        assert_eq!(chat.str_attr("gen_ai.operation.name"), Some("chat"));
        assert_eq!(chat.str_attr("gen_ai.request.model"), Some("scripted"));
        assert_eq!(chat.u64_attr("gen_ai.usage.input_tokens"), Some(100));
        assert_eq!(chat.u64_attr("gen_ai.usage.output_tokens"), Some(10));
        assert_eq!(chat.str_attr("loom.user"), Some("alice"));
    }
    // Both calls ran as spawned tasks and still belong to the run.
    for (tool, call_id) in [("calculate", "call_1_0"), ("run_context", "call_1_1")] {
        let span = one(&spans, &format!("execute_tool {tool}"));
        assert_eq!(span.parent_span_id.as_ref(), Some(&root.span_id), "{tool}");
        assert_eq!(span.trace_id, root.trace_id);
        assert_eq!(span.str_attr("gen_ai.operation.name"), Some("execute_tool"));
        assert_eq!(span.str_attr("gen_ai.tool.name"), Some(tool));
        assert_eq!(span.str_attr("gen_ai.tool.call.id"), Some(call_id));
        assert_eq!(span.str_attr("loom.tenant"), Some("acme"));
        assert_eq!(span.attr("error.type"), None, "{tool} succeeded");
        // The permission chain and the instantiation, inside the call.
        let inside = children(&spans, span);
        let permission = inside
            .iter()
            .find(|s| s.name == format!("permission {tool}"))
            .unwrap_or_else(|| panic!("permission span under {tool}: {inside:#?}"));
        assert_eq!(
            permission.str_attr("loom.permission.decision"),
            Some("allow")
        );
        assert_eq!(
            permission.str_attr("loom.permission.decided_by"),
            Some("permission mode")
        );
        let plugin = if tool == "calculate" {
            "calculator"
        } else {
            "run-context"
        };
        let instantiate = inside
            .iter()
            .find(|s| s.name == format!("instantiate {plugin}"))
            .unwrap_or_else(|| panic!("instantiate span under {tool}: {inside:#?}"));
        assert_eq!(instantiate.str_attr("loom.component.kind"), Some("tool"));
    }
    let arch = one(&spans, "instantiate react");
    assert_eq!(arch.parent_span_id.as_ref(), Some(&root.span_id));
    assert_eq!(arch.str_attr("loom.component.kind"), Some("architecture"));

    let metrics = memory.metrics();
    let tokens: f64 = metrics
        .iter()
        .filter(|m| {
            m.name == "gen_ai.client.token.usage"
                && m.str_attr("gen_ai.token.type") == Some("input")
        })
        .map(|m| m.value_f64())
        .sum();
    assert_eq!(tokens, 200.0);
    let count = |name: &str| metrics.iter().filter(|m| m.name == name).count();
    assert_eq!(count("loom.tool.duration"), 2);
    assert_eq!(count("gen_ai.client.operation.duration"), 2);
    assert_eq!(count("loom.cost.usd"), 2);
    let cpu: Vec<Option<&str>> = metrics
        .iter()
        .filter(|m| m.name == "loom.component.cpu_time")
        .map(|m| m.str_attr("loom.component.kind"))
        .collect();
    assert_eq!(
        cpu.iter().filter(|k| **k == Some("tool")).count(),
        2,
        "{cpu:?}"
    );
    assert_eq!(
        cpu.iter().filter(|k| **k == Some("architecture")).count(),
        1,
        "{cpu:?}"
    );
    assert!(
        metrics
            .iter()
            .all(|m| m.str_attr("loom.tenant") == Some("acme"))
    );
    assert_eq!(count("loom.permission.denials"), 0);
}

#[tokio::test]
async fn telemetry_records_a_denial_on_the_call_and_as_a_metric() {
    let env = TestEnv::new();
    let host = host(&env).await;
    let (dispatch, guard) = telemetry::build(&memory_config(), 0).unwrap();
    let _default = tracing::dispatcher::set_default(&dispatch);
    run(&agent(&host), "globex", "bob").await;
    let memory = guard.memory().unwrap();
    let spans = memory.spans();
    let denied = one(&spans, "execute_tool calculate");
    assert_eq!(denied.str_attr("error.type"), Some("denied"));
    let permission = children(&spans, denied)
        .into_iter()
        .find(|s| s.name == "permission calculate")
        .expect("a permission span");
    assert_eq!(
        permission.str_attr("loom.permission.decision"),
        Some("deny")
    );
    assert_eq!(
        permission.str_attr("loom.permission.decided_by"),
        Some("deny list")
    );
    assert_eq!(
        one(&spans, "execute_tool run_context").attr("error.type"),
        None,
        "the other call ran"
    );
    let denials: Vec<_> = memory
        .metrics()
        .into_iter()
        .filter(|m| m.name == "loom.permission.denials")
        .collect();
    assert_eq!(denials.len(), 1);
    assert_eq!(denials[0].str_attr("gen_ai.tool.name"), Some("calculate"));
    assert_eq!(denials[0].str_attr("loom.tenant"), Some("globex"));
}

#[tokio::test]
async fn telemetry_puts_a_sub_agent_run_under_its_parent() {
    let env = TestEnv::new();
    env.add_plugin(components::ARCH_ROUTER, "router", None);
    env.add_plugin(components::ARCH_REACT, "react", None);
    let host = Arc::new(
        env.host(
            "[tenants.acme.permissions]\nmode = \"bypass\"\n\
             [agents.helper]\ninstructions = \"You help.\"\narchitecture = \"react\"\nmodel = \"echo\"\n",
        )
        .await,
    );
    let routes = json!({
        "routes": {"math": {"description": "arithmetic", "agent": "helper"}},
        "fallback": "math"
    });
    let router: Arc<dyn Model> = Arc::new(ScriptedModel::new(vec![turn(&[], "`math`")]));
    let agent = Agent::builder("")
        .host(host)
        .model(Arc::new(loom_host::model::offline::EchoModel))
        .role_model("router", router)
        .architecture("router")
        .architecture_config(routes)
        .build()
        .unwrap();
    let (dispatch, guard) = telemetry::build(&memory_config(), 0).unwrap();
    let _default = tracing::dispatcher::set_default(&dispatch);
    let result = agent
        .run(RunRequest::new(scope("acme", Some("carol")), "what is 2+2"))
        .await
        .unwrap();
    assert_eq!(result.output, "Echo: what is 2+2");
    let spans = guard.memory().unwrap().spans();
    let parent = one(&spans, "invoke_agent router");
    assert_eq!(parent.parent_span_id, None);
    // The named agent `helper` is traced by its name.
    let delegation = one(&spans, "delegate helper");
    assert_eq!(delegation.parent_span_id.as_ref(), Some(&parent.span_id));
    assert_eq!(delegation.u64_attr("loom.delegation.depth"), Some(1));
    let child = one(&spans, "invoke_agent helper");
    assert_eq!(child.str_attr("gen_ai.agent.name"), Some("helper"));
    assert_eq!(child.parent_span_id.as_ref(), Some(&delegation.span_id));
    assert_eq!(
        child.trace_id, parent.trace_id,
        "one trace for the whole tree"
    );
    assert_eq!(child.str_attr("loom.user"), Some("carol"));
    assert_ne!(
        child.str_attr("loom.run_id"),
        parent.str_attr("loom.run_id")
    );
    let echo = one(&spans, "chat echo");
    assert_eq!(echo.parent_span_id.as_ref(), Some(&child.span_id));
    let routing = one(&spans, "chat scripted");
    assert_eq!(routing.parent_span_id.as_ref(), Some(&parent.span_id));
    assert_eq!(routing.str_attr("loom.role"), Some("router"));
}

// ---- OTLP -----------------------------------------------------------------

/// A span as a collector received it.
#[derive(Debug, Clone)]
struct Exported {
    name: String,
    trace_id: Vec<u8>,
    span_id: Vec<u8>,
    parent_span_id: Vec<u8>,
    attributes: Vec<KeyValue>,
    service: Option<String>,
}

impl Exported {
    fn attr(&self, key: &str) -> Option<&AnyValue> {
        find(&self.attributes, key)
    }
    fn str_attr(&self, key: &str) -> Option<&str> {
        match self.attr(key) {
            Some(AnyValue::StringValue(s)) => Some(s),
            _ => None,
        }
    }
    fn int_attr(&self, key: &str) -> Option<i64> {
        match self.attr(key) {
            Some(AnyValue::IntValue(i)) => Some(*i),
            _ => None,
        }
    }
}

fn find<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

/// What a test collector received.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Exported>>>,
    metrics: Arc<Mutex<Vec<String>>>,
    /// The `x-key` header (gRPC metadata) of each export.
    keys: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    fn traces(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.spans.lock().unwrap();
        for resource in request.resource_spans {
            let service = resource.resource.as_ref().and_then(|r| {
                match find(&r.attributes, "service.name") {
                    Some(AnyValue::StringValue(s)) => Some(s.clone()),
                    _ => None,
                }
            });
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push(Exported {
                        name: span.name,
                        trace_id: span.trace_id,
                        span_id: span.span_id,
                        parent_span_id: span.parent_span_id,
                        attributes: span.attributes,
                        service: service.clone(),
                    });
                }
            }
        }
    }

    fn metrics(&self, request: ExportMetricsServiceRequest) {
        let mut names = self.metrics.lock().unwrap();
        for resource in request.resource_metrics {
            for scope in resource.scope_metrics {
                names.extend(scope.metrics.into_iter().map(|m| m.name));
            }
        }
    }

    fn key(&self, value: Option<&str>) {
        self.keys
            .lock()
            .unwrap()
            .push(value.unwrap_or_default().to_owned());
    }

    fn exported(&self) -> Vec<Exported> {
        self.spans.lock().unwrap().clone()
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.key(
            request
                .metadata()
                .get("x-key")
                .and_then(|v| v.to_str().ok()),
        );
        self.traces(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        self.metrics(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// An OTLP/HTTP collector on 127.0.0.1: `POST /v1/traces` and
/// `/v1/metrics` with protobuf bodies. Returns its base URL.
async fn http_collector(collector: Collector) -> String {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let collector = collector.clone();
            let service =
                hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let collector = collector.clone();
                    async move {
                        let path = request.uri().path().to_owned();
                        let key = request
                            .headers()
                            .get("x-key")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        let body = request.into_body().collect().await?.to_bytes();
                        let status = match path.as_str() {
                            "/v1/traces" => {
                                collector.key(key.as_deref());
                                collector.traces(ExportTraceServiceRequest::decode(body).unwrap());
                                200
                            }
                            "/v1/metrics" => {
                                collector
                                    .metrics(ExportMetricsServiceRequest::decode(body).unwrap());
                                200
                            }
                            _ => 404,
                        };
                        Ok::<_, hyper::Error>(
                            http::Response::builder()
                                .status(status)
                                .header("content-type", "application/x-protobuf")
                                .body(http_body_util::Full::new(bytes_of(&path)))
                                .unwrap(),
                        )
                    }
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    format!("http://{address}")
}

/// An empty export response of the signal at `path`.
fn bytes_of(path: &str) -> hyper::body::Bytes {
    let body = if path == "/v1/metrics" {
        ExportMetricsServiceResponse::default().encode_to_vec()
    } else {
        ExportTraceServiceResponse::default().encode_to_vec()
    };
    body.into()
}

/// An OTLP/gRPC collector on 127.0.0.1 (the generated tonic services over
/// hyper's HTTP/2). Returns its address as a URL.
async fn grpc_collector(collector: Collector) -> String {
    use tower_service::Service as _;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let traces = TraceServiceServer::new(collector.clone());
    let metrics = MetricsServiceServer::new(collector);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (traces, metrics) = (traces.clone(), metrics.clone());
            let service =
                hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let (mut traces, mut metrics) = (traces.clone(), metrics.clone());
                    async move {
                        if request
                            .uri()
                            .path()
                            .starts_with("/opentelemetry.proto.collector.trace.")
                        {
                            traces.call(request).await
                        } else {
                            metrics.call(request).await
                        }
                    }
                });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    format!("http://{address}")
}

/// Run the agent for acme's alice with OTLP export to `endpoint`, flush
/// through the guard, and return the run.
async fn exported_run(env: &TestEnv, protocol: OtlpProtocol, endpoint: String) -> RunResult {
    let host = host(env).await;
    let config = TelemetryConfig {
        console: false,
        otlp: Some(OtlpConfig {
            endpoint,
            protocol,
            headers: vec![("x-key".to_owned(), "sesame".into())],
            timeout: Duration::from_secs(10),
        }),
        ..TelemetryConfig::default()
    };
    let (dispatch, guard) = telemetry::build(&config, 0).unwrap();
    let result = {
        let _default = tracing::dispatcher::set_default(&dispatch);
        run(&agent(&host), "acme", "alice").await
    };
    // Dropping the guard exports everything; it blocks, and the collector
    // runs on this thread's runtime.
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .unwrap();
    result
}

fn assert_exported_tree(spans: &[Exported], result: &RunResult) {
    let named =
        |name: &str| -> Vec<&Exported> { spans.iter().filter(|s| s.name == name).collect() };
    let all: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    let roots = named("invoke_agent react");
    assert_eq!(roots.len(), 1, "{all:?}");
    let root = roots[0];
    assert!(
        root.parent_span_id.is_empty(),
        "the run is the trace's root"
    );
    assert_eq!(root.trace_id.len(), 16);
    assert_eq!(root.service.as_deref(), Some("loom"));
    assert_eq!(root.str_attr("loom.tenant"), Some("acme"));
    assert_eq!(root.str_attr("loom.user"), Some("alice"));
    assert_eq!(
        root.str_attr("loom.run_id"),
        Some(result.run_id.to_string().as_str())
    );
    assert_eq!(
        root.int_attr("gen_ai.usage.input_tokens"),
        Some(200),
        "{:?}",
        root.attributes
    );
    let chats = named("chat scripted");
    assert_eq!(chats.len(), 2, "{all:?}");
    for chat in chats {
        assert_eq!(
            chat.parent_span_id, root.span_id,
            "the model call is the run's child"
        );
        assert_eq!(chat.trace_id, root.trace_id);
        assert_eq!(chat.int_attr("gen_ai.usage.input_tokens"), Some(100));
        assert_eq!(chat.str_attr("gen_ai.operation.name"), Some("chat"));
        assert_eq!(chat.str_attr("loom.tenant"), Some("acme"));
        assert_eq!(chat.str_attr("loom.user"), Some("alice"));
    }
    for tool in ["calculate", "run_context"] {
        let calls = named(&format!("execute_tool {tool}"));
        assert_eq!(calls.len(), 1, "{all:?}");
        assert_eq!(calls[0].parent_span_id, root.span_id);
        assert_eq!(calls[0].str_attr("gen_ai.tool.name"), Some(tool));
    }
}

#[tokio::test]
async fn telemetry_exports_otlp_http_with_parentage_and_attributes() {
    let env = TestEnv::new();
    let collector = Collector::default();
    let endpoint = http_collector(collector.clone()).await;
    let result = exported_run(&env, OtlpProtocol::Http, endpoint).await;
    assert_exported_tree(&collector.exported(), &result);
    let keys = collector.keys.lock().unwrap().clone();
    assert!(
        !keys.is_empty() && keys.iter().all(|k| k == "sesame"),
        "{keys:?}"
    );
    let metrics = collector.metrics.lock().unwrap().clone();
    for name in [
        "gen_ai.client.token.usage",
        "loom.cost.usd",
        "loom.tool.duration",
        "loom.component.cpu_time",
    ] {
        assert!(metrics.iter().any(|m| m == name), "{name} in {metrics:?}");
    }
}

#[tokio::test]
async fn telemetry_exports_otlp_grpc_with_parentage_and_attributes() {
    let env = TestEnv::new();
    let collector = Collector::default();
    let endpoint = grpc_collector(collector.clone()).await;
    let result = exported_run(&env, OtlpProtocol::Grpc, endpoint).await;
    assert_exported_tree(&collector.exported(), &result);
    let keys = collector.keys.lock().unwrap().clone();
    assert!(
        !keys.is_empty() && keys.iter().all(|k| k == "sesame"),
        "{keys:?}"
    );
    let metrics = collector.metrics.lock().unwrap().clone();
    assert!(
        metrics.iter().any(|m| m == "gen_ai.client.token.usage"),
        "{metrics:?}"
    );
}
