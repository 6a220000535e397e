//! What the HTTP layer of `loom serve` adds to a run.
//!
//! The same run (ReAct over a scripted model: one turn calling the
//! calculator component, one answering) is timed three ways on one host:
//!
//! 1. in process: `Agent::run`, no HTTP;
//! 2. over HTTP on loopback: `POST /v1/runs` (blocking), one client at a
//!    time, so the difference to 1 is the latency the HTTP layer adds
//!    (authentication, JSON, the run registry, the connection);
//! 3. 1,000 concurrent streamed runs (`"stream": true`, Server-Sent
//!    Events) across 10 tenants: requests per second, p50/p99 time to the
//!    last event, and the process's peak RSS.
//!
//! Run: `cargo bench -p loom-tests --bench service` (`SERVICE_BENCH_RUNS`
//! sets the sequential runs per way, default 500; `SERVICE_BENCH_STREAMS`
//! the concurrent streams, default 1000).

use loom_host::Host;
use loom_host::agent::RunRequest;
use loom_host::agent::configured::{self, AgentChoice};
use loom_host::service::{Service, server};
use loom_host::tenancy::ids::{Scope, TenantId, UserId};
use loom_tests::{TestEnv, components};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[global_allocator]
static ALLOCATOR: loom_host::allocator::Allocator = loom_host::allocator::Allocator;

const SCRIPT: &str = r#"{"turns": [
  {"text": "", "tool_calls": [{"name": "calculate", "arguments": {"expression": "6*7"}}]},
  {"text": "The answer is {last_tool_result}."}
]}"#;

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(bench());
}

async fn bench() {
    let runs = env_number("SERVICE_BENCH_RUNS", 500);
    let streams = env_number("SERVICE_BENCH_STREAMS", 1000);
    let env = TestEnv::new();
    env.add_plugin(components::ARCH_REACT, "react", None);
    env.add_plugin(components::TOOL_CALCULATOR, "calculator", None);
    std::fs::write(env.path().join("script.json"), SCRIPT).expect("script");
    let mut text = String::from(
        "[journal]\nenabled = false\n[store]\nfsync = \"interval\"\n\
         [server]\nmax_concurrent_runs_per_tenant = 1000\nmax_streams_per_tenant = 1000\n\
         [engine]\nmax_instances = 2000\n\
         [agent]\ninstructions = \"Answer.\"\nmodel = \"scripted:script.json\"\n\
         architecture = \"react\"\n",
    );
    let mut keys = Vec::new();
    for i in 0..10 {
        let (key, hash) = loom_host::tenancy::keys::new_key().expect("key");
        text.push_str(&format!("[tenants.t{i}]\napi_keys = [\"{hash}\"]\n"));
        keys.push(key);
    }
    let config = env.config(&text);
    let settings = config.server.clone();
    let host = Arc::new(Host::start(config).await.expect("host"));
    let agent = configured::build(&host, &AgentChoice::default(), None).expect("agent");
    let service = Service::new(host.clone(), None, settings, Vec::new());
    let listener = server::bind("127.0.0.1:0".parse().expect("addr"))
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let router = server::router(service.clone(), None);
    tokio::spawn(server::serve(service.clone(), listener, router));
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(loom_host::tls::client_config_h2())
        .pool_max_idle_per_host(2000)
        .build()
        .expect("client");
    let tenant = TenantId::new("t0").expect("tenant");

    // Warm up both paths.
    for _ in 0..20 {
        let scope = Scope::new(tenant.clone(), UserId::Anonymous);
        agent
            .run(RunRequest::new(scope, "warm"))
            .await
            .expect("run");
        post_run(&http, &base, &keys[0], false).await;
    }

    let mut in_process = Vec::with_capacity(runs);
    let mut over_http = Vec::with_capacity(runs);
    for _ in 0..runs {
        let scope = Scope::new(tenant.clone(), UserId::Anonymous);
        let start = Instant::now();
        let result = agent
            .run(RunRequest::new(scope, "6*7?"))
            .await
            .expect("run");
        in_process.push(start.elapsed());
        assert_eq!(result.output, "The answer is 42.0.");
        let start = Instant::now();
        post_run(&http, &base, &keys[0], false).await;
        over_http.push(start.elapsed());
    }
    in_process.sort();
    over_http.sort();
    let added = |p: f64| {
        percentile(&over_http, p).as_secs_f64() * 1e6
            - percentile(&in_process, p).as_secs_f64() * 1e6
    };
    println!(
        "sequential runs ({runs} each): in process p50 {:.0} µs p99 {:.0} µs; over HTTP p50 {:.0} µs \
         p99 {:.0} µs; HTTP adds p50 {:+.0} µs, p99 {:+.0} µs; {:.0} HTTP runs/s one at a time",
        percentile(&in_process, 0.5).as_secs_f64() * 1e6,
        percentile(&in_process, 0.99).as_secs_f64() * 1e6,
        percentile(&over_http, 0.5).as_secs_f64() * 1e6,
        percentile(&over_http, 0.99).as_secs_f64() * 1e6,
        added(0.5),
        added(0.99),
        runs as f64 / over_http.iter().sum::<Duration>().as_secs_f64(),
    );

    // Many streams at once.
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(streams);
    for i in 0..streams {
        let http = http.clone();
        let base = base.clone();
        let key = keys[i % keys.len()].clone();
        tasks.push(tokio::spawn(async move {
            let begun = Instant::now();
            post_run(&http, &base, &key, true).await;
            begun.elapsed()
        }));
    }
    let mut latencies = Vec::with_capacity(streams);
    for task in tasks {
        latencies.push(task.await.expect("task"));
    }
    let wall = start.elapsed();
    latencies.sort();
    println!(
        "{streams} concurrent SSE runs over 10 tenants: {:.0} runs/s, time to the last event p50 \
         {:.1} ms p99 {:.1} ms; peak RSS {} MiB",
        streams as f64 / wall.as_secs_f64(),
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        peak_rss_kib() / 1024,
    );
    service.shutdown_token().cancel();
}

/// One run over HTTP; panics unless it completes with the answer.
async fn post_run(http: &reqwest::Client, base: &str, key: &str, stream: bool) {
    let body = http
        .post(format!("{base}/v1/runs"))
        .bearer_auth(key)
        .json(&serde_json::json!({"input": "6*7?", "stream": stream}))
        .send()
        .await
        .expect("request")
        .text()
        .await
        .expect("body");
    assert!(body.contains("The answer is 42.0."), "{body}");
}
