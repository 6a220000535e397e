//! Plugins in other languages next to Rust: the same `*_run_context` tool
//! (read the run context, return it as JSON) written with loom-sdk, with
//! wit-bindgen alone, in JavaScript (componentize-js) and in Python
//! (componentize-py), called through the real host.
//!
//! For each it prints the component's size, its cold compile time, the
//! latency of one instantiate-and-call in a fresh `Store` (p50, p99), the
//! CPU the call was charged, the smallest `limits.memory_mib` under which
//! the call succeeds (the memory a tenant must grant it: linear memory,
//! tables and the host memory held for it). Then the same latencies under
//! other engine settings: on-demand allocation instead of the pooling
//! allocator, and the pooling allocator keeping 0 or 64 MiB of each slot's
//! dirtied pages resident instead of the default 1 MiB.
//!
//! Run: `cargo xtask build-polyglot && cargo bench -p loom-tests --bench
//! polyglot` (`POLYGLOT_BENCH_CALLS` sets the measured calls per row,
//! default 300).

use loom_host::Host;
use loom_host::engine::SandboxEngine;
use loom_tests::{TestEnv, components, polyglot_component, scope};
use std::time::{Duration, Instant};

// Loom's allocator, so the host memory a guest makes the host hold is
// counted in its memory budget (as in the `loom` binary).
#[global_allocator]
static ALLOCATOR: loom_host::allocator::Allocator = loom_host::allocator::Allocator;

/// One tool under test.
struct Subject {
    label: &'static str,
    path: String,
    tool: &'static str,
}

fn subjects() -> Vec<Subject> {
    vec![
        Subject {
            label: "Rust (loom-sdk)",
            path: components::TOOL_RUN_CONTEXT.to_owned(),
            tool: "run_context",
        },
        Subject {
            label: "Rust (wit-bindgen only)",
            path: components::EXAMPLE_RAW_WIT_TOOL.to_owned(),
            tool: "raw_run_context",
        },
        Subject {
            label: "JavaScript (componentize-js)",
            path: polyglot_component("js-tool"),
            tool: "js_run_context",
        },
        Subject {
            label: "Python (componentize-py)",
            path: polyglot_component("py-tool"),
            tool: "py_run_context",
        },
    ]
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A host serving `subject` alone to tenant `t`, with `config` appended
/// to `loom.toml`.
fn host(rt: &tokio::runtime::Runtime, env: &TestEnv, subject: &Subject, config: &str) -> Host {
    env.add_plugin(&subject.path, "subject", None);
    rt.block_on(env.host(&format!("{config}[tenants.t]\n")))
}

/// Sorted latencies of fresh-store calls and the mean CPU charged per call.
struct Latency {
    samples: Vec<Duration>,
    cpu: Duration,
}

impl Latency {
    fn percentile(&self, p: f64) -> Duration {
        let index = ((self.samples.len() as f64 * p) as usize).min(self.samples.len() - 1);
        self.samples[index]
    }
}

/// `calls` measured calls of `tool` after a warm-up of a tenth as many.
fn measure(rt: &tokio::runtime::Runtime, host: &Host, tool: &str, calls: usize) -> Latency {
    rt.block_on(async {
        for _ in 0..calls.div_ceil(10).max(5) {
            host.call_tool(scope("t", Some("u")), tool, "{}")
                .await
                .expect("warm-up call");
        }
        let mut samples = Vec::with_capacity(calls);
        let mut cpu = Duration::ZERO;
        for _ in 0..calls {
            let started = Instant::now();
            let out = host
                .call_tool(scope("t", Some("u")), tool, "{}")
                .await
                .expect("call");
            samples.push(started.elapsed());
            cpu += out.cpu;
        }
        samples.sort();
        Latency {
            samples,
            cpu: cpu / calls.max(1) as u32,
        }
    })
}

/// The smallest `limits.memory_mib` (1..=256) under which one call
/// succeeds, by bisection; `None` when even 256 MiB is not enough.
fn memory_needed(rt: &tokio::runtime::Runtime, subject: &Subject) -> Option<u64> {
    let works = |mib: u64| {
        let env = TestEnv::new();
        let host = host(
            rt,
            &env,
            subject,
            &format!("[limits]\nmemory_mib = {mib}\n"),
        );
        rt.block_on(host.call_tool(scope("t", None), subject.tool, "{}"))
            .is_ok()
    };
    let (mut low, mut high) = (0u64, 256u64);
    if !works(high) {
        return None;
    }
    while high - low > 1 {
        let mid = (low + high) / 2;
        if works(mid) {
            high = mid;
        } else {
            low = mid;
        }
    }
    Some(high)
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return;
    }
    let calls: usize = std::env::var("POLYGLOT_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let rt = runtime();
    let subjects = subjects();
    let engine_env = TestEnv::new();
    let engine =
        SandboxEngine::new(&Default::default(), &engine_env.mkdir("cache")).expect("engine");

    println!(
        "\n| component | size | cold compile | call p50 | call p99 | CPU / call | memory_mib needed |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for subject in &subjects {
        let bytes = std::fs::read(&subject.path).expect("component");
        let started = Instant::now();
        engine
            .wasmtime()
            .precompile_component(&bytes)
            .expect("compiles");
        let compile = started.elapsed();
        let env = TestEnv::new();
        let host = host(&rt, &env, subject, "");
        let latency = measure(&rt, &host, subject.tool, calls);
        drop(host);
        let memory = memory_needed(&rt, subject)
            .map(|mib| format!("{mib} MiB"))
            .unwrap_or_else(|| "> 256 MiB".into());
        println!(
            "| {} | {:.2} MiB | {:.2} s | {} ms | {} ms | {} ms | {} |",
            subject.label,
            bytes.len() as f64 / (1 << 20) as f64,
            compile.as_secs_f64(),
            ms(latency.percentile(0.50)),
            ms(latency.percentile(0.99)),
            ms(latency.cpu),
            memory,
        );
    }

    let variants: [(&str, &str); 4] = [
        ("pooling, keep 1 MiB resident (default)", ""),
        (
            "pooling, keep nothing resident",
            "[engine]\nmemory_keep_resident_kib = 0\n",
        ),
        (
            "pooling, keep 64 MiB resident",
            "[engine]\nmemory_keep_resident_kib = 65536\n",
        ),
        ("on-demand allocation", "[engine]\npooling = \"off\"\n"),
    ];
    println!("\ncall p50 / p99 in ms by engine setting ({calls} calls each):\n");
    print!("| setting |");
    for subject in &subjects {
        print!(" {} |", subject.label);
    }
    println!();
    println!("|---|{}", "---:|".repeat(subjects.len()));
    for (label, config) in variants {
        print!("| {label} |");
        for subject in &subjects {
            let env = TestEnv::new();
            let host = host(&rt, &env, subject, config);
            let latency = measure(&rt, &host, subject.tool, calls);
            print!(
                " {} / {} |",
                ms(latency.percentile(0.50)),
                ms(latency.percentile(0.99))
            );
        }
        println!();
    }
}
