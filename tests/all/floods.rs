//! Floods of host-side resources: each is refused inside its own call with a
//! clear, typed error, and another tenant's concurrent calls succeed.

use crate::support::{TWO_TENANTS, assert_still_healthy, install_good_tools};
use loom_host::engine::{CallError, ToolFailure};
use loom_tests::{TestEnv, components, scope};
use std::time::{Duration, Instant};

const FLOOD_MANIFEST: &str =
    "name = \"flood\"\n[capabilities]\nfiles = [{ path = \"/data\", write = true }]\n";

/// A host with the flood fixture; acme has a read-write `/data` grant and
/// `acme_limits` (TOML lines of `[tenants.acme.limits]`).
async fn flood_host(env: &TestEnv, acme_limits: &str) -> loom_host::Host {
    install_good_tools(env);
    env.add_plugin(components::FIXTURE_FLOOD, "flood", Some(FLOOD_MANIFEST));
    env.add_plugin(
        components::TOOL_FILES,
        "files",
        Some("name = \"files\"\n[capabilities]\nfiles = [{ path = \"/data\" }]\n"),
    );
    env.mkdir("data/acme");
    let globex = env.mkdir("data/globex");
    std::fs::write(globex.join("g.txt"), "globex data").unwrap();
    env.host(&format!(
        "{TWO_TENANTS}[tenants.acme.grants]\nfiles = [{{ host = \"data/acme\", guest = \"/data\", write = true }}]\n\
         [tenants.acme.limits]\n{acme_limits}\n\
         [tenants.globex.grants]\nfiles = [{{ host = \"data/globex\", guest = \"/data\" }}]\n"
    ))
    .await
}

/// Total size of the files directly in `dir`.
fn bytes_in(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// Call `tool` as an anonymous user of acme, expecting an error.
async fn acme_fails(host: &loom_host::Host, tool: &str, arguments: &str) -> CallError {
    host.call_tool(scope("acme", None), tool, arguments)
        .await
        .expect_err("the call should fail")
}

fn failed_message(error: &CallError) -> &str {
    match error {
        CallError::Tool {
            failure: ToolFailure::Failed(message),
            ..
        } => message,
        other => panic!("expected the tool's own failure, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_synchronous_request_is_refused_before_the_host_does_it() {
    let env = TestEnv::new();
    let host = flood_host(&env, "wall_ms = 5000").await;
    let started = Instant::now();
    let err = acme_fails(&host, "random_request", r#"{"mib":1024}"#).await;
    assert!(
        matches!(&err, CallError::ResourceLimit { resource, limit: 1048576, .. } if resource.contains("random bytes")),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("asked for more than 1048576 random bytes"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused, not timed out"
    );
    assert_still_healthy(&host, "acme", "globex").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_work_a_guest_asks_for_is_charged_to_its_cpu_budget() {
    let env = TestEnv::new();
    let host = flood_host(&env, "cpu_ms = 300\nwall_ms = 60000").await;
    let started = Instant::now();
    let err = acme_fails(&host, "random_burn", "{}").await;
    assert!(
        matches!(err, CallError::CpuLimit { limit_ms: 300, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("host work"), "{err}");
    // Stopped by the CPU budget, long before the wall clock.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert_still_healthy(&host, "acme", "globex").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_memory_held_for_a_guest_counts_against_its_budget() {
    let env = TestEnv::new();
    let host = flood_host(&env, "memory_mib = 32\ncpu_ms = 20000\nwall_ms = 60000").await;
    let err = acme_fails(&host, "fields_flood", "{}").await;
    match &err {
        CallError::MemoryLimit {
            limit, host_bytes, ..
        } => {
            assert_eq!(*limit, 32 << 20);
            assert!(*host_bytes > 0, "host memory was counted: {err}");
            assert!(err.to_string().contains("held by the host"), "{err}");
        }
        CallError::ResourceLimit { resource, .. } => {
            assert!(resource.contains("live host resources"), "{err}");
        }
        other => panic!("expected a memory or resource limit, got {other:?}"),
    }
    assert_still_healthy(&host, "acme", "globex").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_descriptors_are_capped_per_call_with_a_clear_error() {
    let env = TestEnv::new();
    let host = flood_host(&env, "max_open_files = 64").await;
    std::fs::write(env.path().join("data/acme/f"), "x").unwrap();
    let err = acme_fails(&host, "open_files", r#"{"path":"/data/f"}"#).await;
    let message = failed_message(&err);
    assert!(message.starts_with("open number 65 failed"), "{message}");
    assert!(!message.contains("I/O error"), "not EIO: {message}");
    assert!(
        message.contains("[loom refused: a call may hold at most 64 open files"),
        "{message}"
    );
    // The next call starts with a fresh allowance.
    let again = acme_fails(&host, "open_files", r#"{"path":"/data/f"}"#).await;
    assert!(failed_message(&again).starts_with("open number 65 failed"));
    assert_still_healthy(&host, "acme", "globex").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_count_as_open_descriptors() {
    let env = TestEnv::new();
    install_good_tools(&env);
    env.add_plugin(
        components::FIXTURE_FLOOD,
        "flood",
        Some("name = \"flood\"\n[capabilities]\nsockets = [\"127.0.0.1:9\"]\n"),
    );
    let host = env
        .host(&format!(
            "{TWO_TENANTS}[tenants.acme.grants]\nsockets = [\"127.0.0.1:9\"]\n\
             [tenants.acme.limits]\nmax_open_files = 32\n"
        ))
        .await;
    let err = acme_fails(&host, "socket_flood", "{}").await;
    let message = failed_message(&err);
    assert!(
        message.starts_with("socket number 33 failed") && message.contains("new-socket-limit"),
        "{message}"
    );
    assert!(
        message.contains("at most 32 open files and sockets"),
        "{message}"
    );
    assert_still_healthy(&host, "acme", "globex").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_connections_count_as_open_descriptors() {
    // A server that accepts and never answers: connections stay open.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let env = TestEnv::new();
    install_good_tools(&env);
    env.add_plugin(
        components::FIXTURE_FLOOD,
        "flood",
        Some(&format!(
            "name = \"flood\"\n[capabilities]\nhttp = [\"127.0.0.1:{port}\"]\n"
        )),
    );
    let host = env
        .host(&format!(
            "{TWO_TENANTS}[tenants.acme.grants]\nhttp = [\"127.0.0.1:{port}\"]\n\
             [tenants.acme.limits]\nmax_open_files = 8\n"
        ))
        .await;
    let out = host
        .call_tool(
            scope("acme", None),
            "http_flood",
            &format!(r#"{{"port":{port},"count":12}}"#),
        )
        .await
        .unwrap();
    let outcomes: Vec<String> = serde_json::from_str(&out.output).unwrap();
    let refused = outcomes
        .iter()
        .filter(|o| o.contains("ConnectionLimitReached"))
        .count();
    assert_eq!(refused, 4, "{outcomes:?}");
    assert_eq!(outcomes.iter().filter(|o| *o == "pending").count(), 8);
    assert!(
        out.denials
            .iter()
            .any(|d| d.contains("limits.max_open_files")),
        "{:?}",
        out.denials
    );
    assert_still_healthy(&host, "acme", "globex").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_cannot_pass_the_maximum_size_even_sparse() {
    let env = TestEnv::new();
    let host = flood_host(&env, "max_file_mib = 4\ndisk_mib = 64\nwall_ms = 60000").await;
    let err = acme_fails(&host, "fill_disk", r#"{"dir":"/data","files":1}"#).await;
    let message = failed_message(&err);
    assert!(
        message.starts_with("refused after 4194304 bytes"),
        "{message}"
    );
    assert!(
        message.contains("[loom refused: files may be at most 4194304 bytes"),
        "{message}"
    );
    let size = std::fs::metadata(env.path().join("data/acme/fill-0"))
        .unwrap()
        .len();
    assert_eq!(size, 4 << 20);
    let err = acme_fails(&host, "sparse_file", r#"{"dir":"/data","gib":1024}"#).await;
    assert!(failed_message(&err).contains("set_len refused"), "{err}");
    let sparse = std::fs::metadata(env.path().join("data/acme/sparse")).unwrap();
    assert_eq!(sparse.len(), 0, "the 1 TiB size was never set");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_pass_its_disk_quota_and_deleting_frees_it() {
    let env = TestEnv::new();
    let host = flood_host(&env, "max_file_mib = 64\ndisk_mib = 8\nwall_ms = 60000").await;
    let err = acme_fails(&host, "fill_disk", r#"{"dir":"/data","files":4}"#).await;
    let message = failed_message(&err);
    assert!(
        message.starts_with("refused after 7340032 bytes"),
        "{message}"
    );
    assert!(
        message.contains("[loom refused: the tenant's disk quota of 8388608 bytes is used up"),
        "{message}"
    );
    let on_disk = bytes_in(&env.path().join("data/acme"));
    assert!(on_disk <= 8 << 20, "{on_disk} bytes on disk");
    // Free the space outside the sandbox: after the re-measure interval the
    // ledger sees it and writes succeed again.
    for entry in std::fs::read_dir(env.path().join("data/acme")).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    tokio::time::sleep(loom_host::engine::disk::REMEASURE_INTERVAL).await;
    let err = acme_fails(&host, "fill_disk", r#"{"dir":"/data","files":4}"#).await;
    assert!(failed_message(&err).starts_with("refused after 7340032 bytes"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positioned_writes_are_charged_too() {
    let env = TestEnv::new();
    let host = flood_host(&env, "max_file_mib = 64\ndisk_mib = 8\nwall_ms = 60000").await;
    let err = acme_fails(&host, "pwrite_fill", r#"{"name":"p"}"#).await;
    let message = failed_message(&err);
    assert!(
        message.starts_with("refused after 7340032 bytes"),
        "{message}"
    );
    assert!(message.contains("insufficient-space"), "{message}");
    // A second call, right after, is refused as well: no window opens.
    let err = acme_fails(&host, "pwrite_fill", r#"{"name":"q"}"#).await;
    assert!(
        failed_message(&err).starts_with("refused after 0 bytes"),
        "{err}"
    );
    let on_disk = bytes_in(&env.path().join("data/acme"));
    assert!(on_disk <= 8 << 20, "{on_disk} bytes on disk");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_file_still_open_frees_nothing_until_the_call_ends() {
    let env = TestEnv::new();
    let host = flood_host(&env, "max_file_mib = 64\ndisk_mib = 8\nwall_ms = 60000").await;
    let out = host
        .call_tool(
            scope("acme", None),
            "unlink_while_open",
            r#"{"dir":"/data","rounds":4}"#,
        )
        .await
        .unwrap();
    let rounds: Vec<u64> = serde_json::from_str(&out.output).unwrap();
    let total: u64 = rounds.iter().sum();
    assert!(total <= 8 << 20, "{rounds:?}: {total} bytes held at once");
    // Once the call is over its files are closed and the space is back.
    let err = acme_fails(&host, "pwrite_fill", r#"{"name":"after"}"#).await;
    assert!(
        failed_message(&err).starts_with("refused after 7340032 bytes"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_errors_are_capped_like_output() {
    let env = TestEnv::new();
    let host = flood_host(&env, "").await;
    let err = acme_fails(&host, "huge_error", r#"{"mib":16}"#).await;
    let message = failed_message(&err);
    assert!(message.len() < 20 << 10, "{} bytes", message.len());
    assert!(message.contains("[error truncated by Loom: kept 16384 of 16777216 bytes]"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_output_is_refused_with_the_reason() {
    let env = TestEnv::new();
    let host = flood_host(&env, "").await;
    let err = acme_fails(&host, "deep_json", r#"{"depth":100000}"#).await;
    assert!(matches!(err, CallError::InvalidOutput { .. }), "{err:?}");
    assert!(err.to_string().contains("deeper than 64 levels"), "{err}");
    let ok = host
        .call_tool(scope("acme", None), "deep_json", r#"{"depth":10}"#)
        .await
        .unwrap();
    assert_eq!(ok.output, format!("{}{}", "[".repeat(10), "]".repeat(10)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_log_text_cannot_forge_lines_or_drive_the_terminal() {
    let env = TestEnv::new();
    let host = flood_host(&env, "").await;
    let out = host
        .call_tool(scope("acme", None), "forge_log", "{}")
        .await
        .unwrap();
    assert!(!out.logs.is_empty());
    for line in &out.logs {
        assert!(
            !line.message.chars().any(char::is_control),
            "control characters reached the log: {:?}",
            line.message
        );
    }
    let text: Vec<&str> = out.logs.iter().map(|l| l.message.as_str()).collect();
    assert!(
        text.iter()
            .any(|m| m.contains("done\\n2026") && m.contains("\\u{1b}[2J")),
        "{text:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_floods_do_not_disturb_another_tenants_calls() {
    let env = TestEnv::new();
    let host = std::sync::Arc::new(
        flood_host(
            &env,
            "cpu_ms = 2000\nwall_ms = 20000\nmemory_mib = 32\nmax_open_files = 128",
        )
        .await,
    );
    std::fs::write(env.path().join("data/acme/f"), "x").unwrap();
    let floods = ["random_burn", "fields_flood", "open_files"].map(|tool| {
        let host = host.clone();
        tokio::spawn(async move {
            host.call_tool(
                scope("acme", Some("mallory")),
                tool,
                r#"{"path":"/data/f"}"#,
            )
            .await
        })
    });
    // While the floods run, globex reads its files and computes, many times.
    for i in 0..40 {
        let expression = format!(r#"{{"expression":"{i}+1"}}"#);
        let (read, calc) = tokio::join!(
            host.call_tool(
                scope("globex", Some("bystander")),
                "read_file",
                r#"{"path":"/data/g.txt"}"#
            ),
            host.call_tool(scope("globex", Some("bystander")), "calculate", &expression),
        );
        assert!(read.expect("globex read").output.contains("globex data"));
        assert_eq!(calc.expect("globex calc").output, format!("{}.0", i + 1));
    }
    for flood in floods {
        assert!(flood.await.unwrap().is_err(), "every flood is refused");
    }
    assert_still_healthy(&host, "acme", "globex").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_busy_in_host_functions_do_not_hold_the_workers_others_need() {
    let env = TestEnv::new();
    install_good_tools(&env);
    env.add_plugin(components::FIXTURE_FLOOD, "flood", Some(FLOOD_MANIFEST));
    env.add_plugin(components::FIXTURE_SPIN, "spin", None);
    let host = std::sync::Arc::new(
        env.host(&format!(
            "{TWO_TENANTS}[tenants.acme.limits]\ncpu_ms = 3000\nwall_ms = 30000\n\
             [tenants.globex.limits]\ncpu_ms = 60000\nwall_ms = 300\n"
        ))
        .await,
    );
    // Two acme calls, one per worker thread, spend their time asking the
    // host for random bytes...
    let floods = [0, 1].map(|_| {
        let host = host.clone();
        tokio::spawn(async move {
            host.call_tool(scope("acme", None), "random_burn", "{}")
                .await
        })
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...while a globex call must still be stopped at its own wall limit.
    let started = Instant::now();
    let err = host
        .call_tool(scope("globex", None), "spin", "{}")
        .await
        .unwrap_err();
    assert!(
        matches!(err, CallError::Timeout { limit_ms: 300, .. }),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the sibling's wall limit held: {:?}",
        started.elapsed()
    );
    for flood in floods {
        assert!(matches!(
            flood.await.unwrap(),
            Err(CallError::CpuLimit { .. })
        ));
    }
}
