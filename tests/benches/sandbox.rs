//! Sandbox benchmarks: cold compile, cache-hit load, a trivial tool call in a
//! fresh `Store` (WASI context included), and throughput with many tenants
//! calling in parallel. After criterion's runs, prints p50/p99 latencies of
//! the fresh-store call measured directly.
//!
//! Run: `cargo bench -p loom-tests --bench sandbox`

use criterion::{Criterion, Throughput};
use loom_host::Host;
use loom_host::engine::SandboxEngine;
use loom_tests::{TestEnv, components, scope};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TENANTS: usize = 64;

fn tenants_toml() -> String {
    (0..TENANTS).map(|i| format!("[tenants.t{i}]\n")).collect()
}

fn runtime(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("runtime")
}

fn compile(c: &mut Criterion) {
    let bytes = std::fs::read(components::TOOL_CALCULATOR).expect("calculator component");
    let env = TestEnv::new();
    let engine = SandboxEngine::new(&Default::default(), &env.mkdir("cache")).expect("engine");
    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    group.bench_function("cold_calculator", |b| {
        b.iter(|| {
            engine
                .wasmtime()
                .precompile_component(&bytes)
                .expect("compiles")
        })
    });
    group.finish();
    engine.compile(&bytes).expect("warm the cache");
    c.bench_function("load/cache_hit_calculator", |b| {
        b.iter(|| engine.compile(&bytes).expect("cache hit"))
    });
}

/// What the per-call accounting costs: one poll of a ready future, bare and
/// metered (two thread-CPU clock reads and the allocator counter per poll).
fn accounting(c: &mut Criterion) {
    use loom_host::engine::accounting::{CallMeter, Metered};
    use std::future::Future;
    use std::task::{Context, Poll, Waker};
    let mut cx = Context::from_waker(Waker::noop());
    let meter = CallMeter::new(Duration::from_secs(1), 64 << 20);
    c.bench_function("accounting/bare_poll", |b| {
        b.iter(|| {
            let mut ready = std::pin::pin!(std::future::ready(1u8));
            matches!(ready.as_mut().poll(&mut cx), Poll::Ready(1))
        })
    });
    c.bench_function("accounting/metered_poll", |b| {
        b.iter(|| {
            let mut ready = std::pin::pin!(Metered::new(std::future::ready(1u8), &meter));
            matches!(ready.as_mut().poll(&mut cx), Poll::Ready(Ok(1)))
        })
    });
}

fn host(rt: &tokio::runtime::Runtime, env: &TestEnv) -> Arc<Host> {
    env.add_plugin(components::TOOL_CALCULATOR, "calculator", None);
    env.add_plugin(components::TOOL_RUN_CONTEXT, "run-context", None);
    Arc::new(rt.block_on(env.host(&tenants_toml())))
}

fn calls(c: &mut Criterion) {
    let rt = runtime(2);
    let env = TestEnv::new();
    let host = host(&rt, &env);
    c.bench_function("call/fresh_store_run_context", |b| {
        b.to_async(&rt).iter(|| async {
            host.call_tool(scope("t0", Some("u")), "run_context", "{}")
                .await
                .expect("call")
        })
    });
    c.bench_function("call/fresh_store_calculate", |b| {
        b.to_async(&rt).iter(|| async {
            host.call_tool(
                scope("t0", Some("u")),
                "calculate",
                r#"{"expression":"6*7"}"#,
            )
            .await
            .expect("call")
        })
    });
    let mut group = c.benchmark_group("throughput");
    group.throughput(Throughput::Elements(TENANTS as u64 * 8));
    group.bench_function("64_tenants_x8_parallel", |b| {
        b.to_async(&rt).iter(|| {
            let host = host.clone();
            async move {
                let mut tasks = Vec::with_capacity(TENANTS * 8);
                for i in 0..TENANTS * 8 {
                    let host = host.clone();
                    tasks.push(tokio::spawn(async move {
                        host.call_tool(
                            scope(&format!("t{}", i % TENANTS), Some("u")),
                            "run_context",
                            "{}",
                        )
                        .await
                        .expect("call")
                    }));
                }
                for task in tasks {
                    task.await.expect("join");
                }
            }
        })
    });
    group.finish();
}

/// p50/p99 of single calls, measured one by one.
fn latency_report() {
    let rt = runtime(2);
    let env = TestEnv::new();
    let host = host(&rt, &env);
    let mut samples: Vec<Duration> = Vec::with_capacity(20_000);
    rt.block_on(async {
        for _ in 0..2_000 {
            host.call_tool(scope("t1", None), "run_context", "{}")
                .await
                .expect("warm-up");
        }
        for _ in 0..20_000 {
            let started = Instant::now();
            host.call_tool(scope("t1", None), "run_context", "{}")
                .await
                .expect("call");
            samples.push(started.elapsed());
        }
    });
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    println!(
        "\nlatency of a fresh-store run_context call over {} calls: p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs (pooling: {})",
        samples.len(),
        pct(0.50).as_secs_f64() * 1e6,
        pct(0.99).as_secs_f64() * 1e6,
        samples[samples.len() - 1].as_secs_f64() * 1e6,
        host.pooling()
    );
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    compile(&mut criterion);
    accounting(&mut criterion);
    calls(&mut criterion);
    criterion.final_summary();
    if !std::env::args().any(|a| a == "--list" || a == "--test") {
        latency_report();
    }
}
