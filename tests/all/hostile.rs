//! Every hostile fixture is contained with a clear error, and afterwards the
//! host serves the next call and other tenants normally.

use crate::support::{TWO_TENANTS, assert_still_healthy, install_good_tools, tcp_sink};
use loom_host::engine::CallError;
use loom_tests::{TestEnv, components, scope};
use std::sync::atomic::Ordering;

/// Fixtures whose containment is tested here. A new fixture without an entry
/// fails `every_fixture_has_a_test`.
const TESTED: &[&str] = &[
    "FIXTURE_SPIN",
    "FIXTURE_HOG",
    "FIXTURE_RECURSE",
    "FIXTURE_ESCAPE",
    "FIXTURE_ENV_READER",
    "FIXTURE_NETPEEK",
    "FIXTURE_BIG_OUTPUT",
    "FIXTURE_PANIC",
    "FIXTURE_BAD_IMPORT",
    // Host-side resource floods; tested in floods.rs.
    "FIXTURE_FLOOD",
    // Tested in hostile_arch.rs and plugins.rs.
    "FIXTURE_HOSTILE_ARCH",
    "FIXTURE_SLOW_LIST",
    // Trapping, looping, hogging and oversized-answer policies; tested in
    // governance.rs.
    "FIXTURE_POLICY_VERDICT",
    // Not hostile; tested in plugins.rs.
    "FIXTURE_FUTURE_VERSION",
    "FIXTURE_ARCHITECTURE_STUB",
    "FIXTURE_SLOW",
    // Built against loom:plugin@0.1.0 and @0.1.2; tested in
    // memory_conformance.rs.
    "FIXTURE_LEGACY_TOOL",
    "FIXTURE_TOOL_0_1_2",
    // Not hostile; delegation to named agents, tested in architectures.rs.
    "FIXTURE_DELEGATE_ONCE",
];

#[test]
fn every_fixture_has_a_test() {
    for (name, _) in components::ALL
        .iter()
        .filter(|(n, _)| n.starts_with("FIXTURE_"))
    {
        assert!(
            TESTED.contains(name),
            "fixture {name} has no containment test in hostile.rs"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_loop_hits_the_cpu_limit() {
    let env = TestEnv::new();
    install_good_tools(&env);
    env.add_plugin(components::FIXTURE_SPIN, "spin", None);
    let host = env
        .host(&format!(
            "{TWO_TENANTS}[tenants.acme.limits]\ncpu_ms = 100\nwall_ms = 5000\n"
        ))
        .await;
    let started = std::time::Instant::now();
    let err = host
        .call_tool(scope("acme", Some("mallory")), "spin", "{}")
        .await
        .unwrap_err();
    assert!(
        matches!(err, CallError::CpuLimit { limit_ms: 100, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("CPU limit of 100 ms"), "{err}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(4),
        "stopped by CPU limit, not wall clock"
    );
    assert_still_healthy(&host, "acme", "globex").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_loop_hits_the_wall_clock_when_cpu_allows_more() {
    let env = TestEnv::new();
    install_good_tools(&env);
    env.add_plugin(components::FIXTURE_SPIN, "spin", None);
    let host = env
        .host(&format!(
            "{TWO_TENANTS}[tenants.acme.limits]\ncpu_ms = 60000\nwall_ms = 200\n"
        ))
        .await;
    let err = host
        .call_tool(scope("acme", None), "spin", "{}")
        .await
        .unwrap_err();
    assert!(
        matches!(err, CallError::Timeout { limit_ms: 200, .. }),
        "{err:?}"
    );
    assert_still_healthy(&host, "acme", "globex").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_memory_hits_the_memory_limit() {
    let env = TestEnv::new();
    install_good_tools(&env);
    env.add_plugin(components::FIXTURE_HOG, "hog", None);
    let host = env
        .host(&format!(
            "{TWO_TENANTS}[tenants.acme.limits]\nmemory_mib = 32\n"
        ))
        .await;
    let err = host
        .call_tool(scope("acme", None), "hog", "{}")
        .await
        .unwrap_err();
    match &err {
        CallError::MemoryLimit {
            limit, requested, ..
        } => {
            assert_eq!(*limit, 32 << 20);
            assert!(*requested > *limit);
        }
        other => panic!("expected a memory limit error, got {other:?}"),
    }
    assert!(err.to_string().contains("over its limit"), "{err}");
    assert_still_healthy(&host, "acme", "globex").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_recursion_is_a_stack_overflow() {
    let env = TestEnv::new();
    install_good_tools(&env);
    env.add_plugin(components::FIXTURE_RECURSE, "recurse", None);
    let host = env.host(TWO_TENANTS).await;
    let err = host
        .call_tool(scope("acme", None), "recurse", "{}")
        .await
        .unwrap_err();
    match &err {
        CallError::Trap { reason, .. } => assert!(reason.contains("stack overflow"), "{reason}"),
        other => panic!("expected a stack overflow trap, got {other:?}"),
    }
    assert_still_healthy(&host, "acme", "globex").await;
    let err = host
        .call_tool(scope("acme", None), "recurse_shadow", "{}")
        .await
        .unwrap_err();
    match &err {
        CallError::Trap { reason, .. } => {
            assert!(reason.contains("out of bounds memory access"), "{reason}");
            assert!(
                reason.contains("stack"),
                "the message suggests the likely cause: {reason}"
            );
        }
        other => panic!("expected an out-of-bounds trap, got {other:?}"),
    }
    assert_still_healthy(&host, "acme", "globex").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_outside_preopens_fail() {
    let env = TestEnv::new();
    install_good_tools(&env);
    let secret = env.path().join("secret.txt");
    std::fs::write(&secret, "TOP-SECRET").unwrap();
    let data = env.mkdir("data/acme");
    std::fs::write(data.join("ok.txt"), "fine").unwrap();
    std::os::unix::fs::symlink(&secret, data.join("link-out")).unwrap();
    std::os::unix::fs::symlink("../../secret.txt", data.join("relative-link-out")).unwrap();
    env.add_plugin(
        components::FIXTURE_ESCAPE,
        "escape",
        Some("[capabilities]\nfiles = [{ path = \"/data\", write = true }]\n"),
    );
    let host = env
        .host(&format!(
            "{TWO_TENANTS}[tenants.acme.grants]\nfiles = [{{ host = \"data/acme\", guest = \"/data\", write = true }}]\n"
        ))
        .await;
    let paths = serde_json::json!({"paths": [
        "/data/ok.txt",
        "/data/../secret.txt",
        "/data/../../secret.txt",
        "/secret.txt",
        secret.display().to_string(),
        "/data/link-out",
        "/data/relative-link-out",
        "../secret.txt",
        "/etc/passwd",
    ]});
    let out = host
        .call_tool(scope("acme", None), "probe", &paths.to_string())
        .await
        .unwrap();
    assert!(
        !out.output.contains("TOP-SECRET"),
        "a read escaped the preopen: {}",
        out.output
    );
    assert!(
        !out.output.contains("root:"),
        "read /etc/passwd: {}",
        out.output
    );
    let attempts: serde_json::Value = serde_json::from_str(&out.output).unwrap();
    assert_eq!(attempts[0]["read"], "fine", "the granted file is readable");
    for attempt in attempts.as_array().unwrap().iter().skip(1) {
        assert!(attempt["read"].is_null(), "escaped: {attempt}");
        assert!(attempt["error"].is_string());
    }
    let planted = host
        .call_tool(
            scope("acme", None),
            "plant_symlink",
            &serde_json::json!({"name": "planted", "target": secret.display().to_string()})
                .to_string(),
        )
        .await
        .unwrap();
    assert!(!planted.output.contains("TOP-SECRET"), "{}", planted.output);
    assert!(
        planted.output.contains("not-permitted"),
        "{}",
        planted.output
    );
    // Nothing was left behind for a host-side reader to follow.
    assert!(std::fs::symlink_metadata(data.join("planted")).is_err());
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "TOP-SECRET");
    assert_still_healthy(&host, "acme", "globex").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(
    unsafe_code,
    reason = "setting a host variable the grant reads; nextest runs each test in its own process"
)]
async fn ungranted_env_is_invisible() {
    // SAFETY of the test: the variable is unique to this test process.
    unsafe { std::env::set_var("LOOM_TEST_HOST_SECRET", "host-secret-value") };
    let env = TestEnv::new();
    install_good_tools(&env);
    env.add_plugin(
        components::FIXTURE_ENV_READER,
        "env-reader",
        Some("[capabilities]\nenv = [\"GREETING\", \"TOKEN\"]\n"),
    );
    let host = env
        .host(&format!(
            "{TWO_TENANTS}[tenants.acme.grants.env]\nGREETING = \"hello\"\nTOKEN = {{ from_host = \"LOOM_TEST_HOST_SECRET\" }}\nNOT_REQUESTED = \"x\"\n"
        ))
        .await;
    let out = host
        .call_tool(scope("acme", None), "read_env", r#"{"name":"PATH"}"#)
        .await
        .unwrap();
    let seen: serde_json::Value = serde_json::from_str(&out.output).unwrap();
    assert_eq!(seen["GREETING"], "hello");
    assert_eq!(
        seen["TOKEN"], "host-secret-value",
        "from_host grants the named value"
    );
    assert!(
        seen["requested:PATH"].is_null(),
        "PATH is not inherited: {seen}"
    );
    assert!(
        seen.get("NOT_REQUESTED").is_none(),
        "granted but not requested: {seen}"
    );
    assert!(
        seen.get("HOME").is_none() && seen.get("PATH").is_none(),
        "{seen}"
    );
    // The other tenant granted nothing: sees nothing at all.
    let out = host
        .call_tool(scope("globex", None), "read_env", r#"{"name":"GREETING"}"#)
        .await
        .unwrap();
    let seen: serde_json::Value = serde_json::from_str(&out.output).unwrap();
    assert_eq!(seen.as_object().unwrap().len(), 1, "{seen}");
    assert!(seen["requested:GREETING"].is_null());
    assert_still_healthy(&host, "acme", "globex").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_to_ungranted_loopback_port_sends_nothing() {
    let (port, seen) = tcp_sink().await;
    let env = TestEnv::new();
    install_good_tools(&env);
    env.add_plugin(
        components::FIXTURE_NETPEEK,
        "netpeek",
        Some(&format!(
            "[capabilities]\nhttp = [\"127.0.0.1:{port}\"]\nsockets = [\"127.0.0.1:{port}\"]\n"
        )),
    );
    // acme grants a different port; globex grants nothing.
    let other = port.wrapping_add(1);
    let host = env
        .host(&format!(
            "{TWO_TENANTS}[tenants.acme.grants]\nhttp = [\"127.0.0.1:{other}\"]\nsockets = [\"127.0.0.1:{other}\"]\n"
        ))
        .await;
    for tenant in ["acme", "globex"] {
        let out = host
            .call_tool(
                scope(tenant, None),
                "http",
                &format!(r#"{{"authority":"127.0.0.1:{port}","path":"/"}}"#),
            )
            .await
            .unwrap();
        assert!(out.output.contains("HttpRequestDenied"), "{}", out.output);
        assert!(!out.denials.is_empty(), "the denial is reported");
        let out = host
            .call_tool(
                scope(tenant, None),
                "tcp",
                &format!(r#"{{"address":"127.0.0.1:{port}"}}"#),
            )
            .await
            .unwrap();
        assert!(out.output.contains("\"status\":null"), "{}", out.output);
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(
        seen.load(Ordering::SeqCst),
        0,
        "the listener received a connection"
    );
    assert_still_healthy(&host, "acme", "globex").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_output_and_logs_are_capped() {
    let env = TestEnv::new();
    install_good_tools(&env);
    env.add_plugin(components::FIXTURE_BIG_OUTPUT, "big-output", None);
    let host = env
        .host(&format!("{TWO_TENANTS}[tenants.acme.limits]\nmax_output_bytes = 65536\nmax_log_bytes = 8192\nmemory_mib = 64\ncpu_ms = 20000\nwall_ms = 30000\n"))
        .await;
    let out = host
        .call_tool(scope("acme", None), "flood", r#"{"megabytes":8}"#)
        .await
        .unwrap();
    assert_eq!(
        out.truncated_from,
        Some(8 * 1024 * 1024 + 2),
        "original JSON string length"
    );
    assert!(
        out.output.len() < 65536 + 200,
        "kept {} bytes",
        out.output.len()
    );
    assert!(out.output.contains("output truncated by Loom"));
    serde_json::from_str::<String>(&out.output).expect("truncated output is still JSON");
    let log_bytes: usize = out.logs.iter().map(|l| l.message.len()).sum();
    assert!(
        log_bytes <= 8192 * 2,
        "logs and stdout capped, got {log_bytes}"
    );
    assert_still_healthy(&host, "acme", "globex").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_is_a_crash_report_with_the_message() {
    let env = TestEnv::new();
    install_good_tools(&env);
    env.add_plugin(components::FIXTURE_PANIC, "panic", None);
    let host = env.host(TWO_TENANTS).await;
    let err = host
        .call_tool(scope("acme", None), "explode", "{}")
        .await
        .unwrap_err();
    match &err {
        CallError::Trap { reason, stderr, .. } => {
            assert!(reason.contains("panicked"), "{reason}");
            assert!(stderr.contains("fixture exploded on purpose"), "{stderr}");
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    assert_still_healthy(&host, "acme", "globex").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_import_is_rejected_at_load_with_its_name() {
    let env = TestEnv::new();
    install_good_tools(&env);
    env.add_plugin(components::FIXTURE_BAD_IMPORT, "bad-import", None);
    let host = env.host(TWO_TENANTS).await;
    let catalog = host.catalog().await;
    let entry = catalog
        .entries
        .iter()
        .find(|e| e.name() == "bad-import")
        .expect("listed");
    let error = entry.status.as_ref().err().expect("rejected").to_string();
    assert!(error.contains("evil:backdoor/api"), "{error}");
    let err = host
        .call_tool(scope("acme", None), "steal", "{}")
        .await
        .unwrap_err();
    assert!(matches!(err, CallError::UnknownTool { .. }), "{err:?}");
    assert_still_healthy(&host, "acme", "globex").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_and_core_module_files_are_skipped_with_reasons() {
    let env = TestEnv::new();
    install_good_tools(&env);
    let mut truncated = std::fs::read(components::TOOL_CALCULATOR).unwrap();
    truncated.truncate(truncated.len() / 2);
    std::fs::write(env.plugins().join("truncated.wasm"), &truncated).unwrap();
    std::fs::write(
        env.plugins().join("garbage.wasm"),
        b"this is not wasm at all",
    )
    .unwrap();
    let core = wat_core_module();
    std::fs::write(env.plugins().join("core.wasm"), core).unwrap();
    let host = env.host(TWO_TENANTS).await;
    let catalog = host.catalog().await;
    let reason = |name: &str| {
        catalog
            .entries
            .iter()
            .find(|e| e.name() == name)
            .unwrap_or_else(|| panic!("{name} listed"))
            .status
            .as_ref()
            .err()
            .map(ToString::to_string)
            .unwrap_or_else(|| panic!("{name} should be rejected"))
    };
    assert!(
        reason("truncated").contains("invalid component"),
        "{}",
        reason("truncated")
    );
    assert!(
        reason("garbage").contains("not a WebAssembly file"),
        "{}",
        reason("garbage")
    );
    assert!(
        reason("core").contains("core WebAssembly module"),
        "{}",
        reason("core")
    );
    assert_still_healthy(&host, "acme", "globex").await;
}

/// A minimal core module (not a component), encoded by hand.
fn wat_core_module() -> Vec<u8> {
    // (module (func (export "f") (result i32) i32.const 42))
    vec![
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x01, 0x05, 0x01, 0x60, 0x00, 0x01, 0x7f,
        0x03, 0x02, 0x01, 0x00, 0x07, 0x05, 0x01, 0x01, 0x66, 0x00, 0x00, 0x0a, 0x06, 0x01, 0x04,
        0x00, 0x41, 0x2a, 0x0b,
    ]
}
