//! Capabilities: each is denied unless the tenant grants it and the
//! plugin's manifest requests it; granted ones work for real.

use crate::support::{TWO_TENANTS, http_server, install_good_tools, tcp_sink};
use loom_host::engine::{CallError, ToolFailure};
use loom_tests::{TestEnv, components, scope};
use std::sync::atomic::Ordering;

const FILES_MANIFEST: &str =
    "name = \"files\"\n[capabilities]\nfiles = [{ path = \"/data\", write = true }]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_read_only_unless_granted_read_write() {
    let env = TestEnv::new();
    install_good_tools(&env);
    env.add_plugin(components::TOOL_FILES, "files", Some(FILES_MANIFEST));
    let acme = env.mkdir("data/acme");
    let globex = env.mkdir("data/globex");
    std::fs::write(acme.join("a.txt"), "acme data").unwrap();
    std::fs::write(globex.join("g.txt"), "globex data").unwrap();
    let host = env
        .host(&format!(
            "{TWO_TENANTS}[tenants.acme.grants]\nfiles = [{{ host = \"data/acme\", guest = \"/data\" }}]\n\
             [tenants.globex.grants]\nfiles = [{{ host = \"data/globex\", guest = \"/data\", write = true }}]\n"
        ))
        .await;
    // Each tenant sees only its own directory under the same guest path.
    let out = host
        .call_tool(
            scope("acme", None),
            "read_file",
            r#"{"path":"/data/a.txt"}"#,
        )
        .await
        .unwrap();
    assert!(out.output.contains("acme data"));
    let err = host
        .call_tool(
            scope("acme", None),
            "read_file",
            r#"{"path":"/data/g.txt"}"#,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CallError::Tool {
                failure: ToolFailure::Failed(_),
                ..
            }
        ),
        "{err:?}"
    );
    // Read-only for acme.
    let err = host
        .call_tool(
            scope("acme", None),
            "write_file",
            r#"{"path":"/data/new.txt","content":"x"}"#,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CallError::Tool {
                failure: ToolFailure::Denied(_),
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!acme.join("new.txt").exists());
    // Read-write for globex.
    host.call_tool(
        scope("globex", None),
        "write_file",
        r#"{"path":"/data/new.txt","content":"written"}"#,
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(globex.join("new.txt")).unwrap(),
        "written"
    );
    let listing = host
        .call_tool(scope("globex", None), "list_dir", r#"{"path":"/data"}"#)
        .await
        .unwrap();
    assert!(
        listing.output.contains("g.txt") && listing.output.contains("new.txt"),
        "{}",
        listing.output
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_without_manifest_gets_no_capabilities() {
    let env = TestEnv::new();
    env.add_plugin(components::TOOL_FILES, "files", None);
    let data = env.mkdir("data/acme");
    std::fs::write(data.join("a.txt"), "acme data").unwrap();
    let host = env
        .host("[tenants.acme.grants]\nfiles = [{ host = \"data/acme\", guest = \"/data\", write = true }]\n")
        .await;
    let err = host
        .call_tool(
            scope("acme", None),
            "read_file",
            r#"{"path":"/data/a.txt"}"#,
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("outside the directories granted"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_reaches_only_granted_destinations() {
    let (port, hits) = http_server().await;
    let env = TestEnv::new();
    env.add_plugin(
        components::TOOL_HTTP_FETCH,
        "http-fetch",
        Some(&format!(
            "[capabilities]\nhttp = [\"127.0.0.1:{port}\", \"localhost:{port}\"]\n"
        )),
    );
    let host = env
        .host(&format!(
            "[tenants.acme.grants]\nhttp = [\"127.0.0.1:{port}\", \"localhost:{port}\"]\n[tenants.globex]\n"
        ))
        .await;
    // Granted by IP literal: an explicit grant of a loopback address works.
    let out = host
        .call_tool(
            scope("acme", None),
            "http_get",
            &format!(r#"{{"url":"http://127.0.0.1:{port}/ping"}}"#),
        )
        .await
        .unwrap();
    let response: serde_json::Value = serde_json::from_str(&out.output).unwrap();
    assert_eq!(response["status"], 200);
    assert_eq!(response["body"], "pong");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    // Granted by name, but the name resolves to loopback: blocked by the
    // resolved-address check unless allow_private is set.
    let err = host
        .call_tool(
            scope("acme", None),
            "http_get",
            &format!(r#"{{"url":"http://localhost:{port}/"}}"#),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CallError::Tool {
                failure: ToolFailure::Denied(_),
                ..
            }
        ),
        "{err:?}"
    );
    // Not granted at all for globex.
    let err = host
        .call_tool(
            scope("globex", None),
            "http_get",
            &format!(r#"{{"url":"http://127.0.0.1:{port}/"}}"#),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CallError::Tool {
                failure: ToolFailure::Denied(_),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "denied requests never reached the server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_private_lets_a_name_resolve_to_loopback() {
    let (port, hits) = http_server().await;
    let env = TestEnv::new();
    env.add_plugin(
        components::TOOL_HTTP_FETCH,
        "http-fetch",
        Some(&format!("[capabilities]\nhttp = [\"localhost:{port}\"]\n")),
    );
    let host = env
        .host(&format!("[tenants.acme.grants]\nhttp = [{{ host = \"localhost:{port}\", allow_private = true }}]\n"))
        .await;
    let out = host
        .call_tool(
            scope("acme", None),
            "http_get",
            &format!(r#"{{"url":"http://localhost:{port}/"}}"#),
        )
        .await
        .unwrap();
    assert!(out.output.contains("pong"), "{}", out.output);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn granted_socket_address_connects() {
    let (port, seen) = tcp_sink().await;
    let env = TestEnv::new();
    env.add_plugin(
        components::FIXTURE_NETPEEK,
        "netpeek",
        Some(&format!(
            "[capabilities]\nsockets = [\"127.0.0.1:{port}\"]\n"
        )),
    );
    let host = env
        .host(&format!(
            "[tenants.acme.grants]\nsockets = [\"127.0.0.1:{port}\"]\n"
        ))
        .await;
    let out = host
        .call_tool(
            scope("acme", None),
            "tcp",
            &format!(r#"{{"address":"127.0.0.1:{port}"}}"#),
        )
        .await
        .unwrap();
    assert!(out.output.contains("\"status\":0"), "{}", out.output);
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert_eq!(seen.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_goes_to_the_checked_address_and_speaks_tls() {
    // A plain-HTTP server behind an https:// URL: the connection must reach
    // the granted address and fail in the TLS handshake, not be denied.
    let (port, hits) = http_server().await;
    let env = TestEnv::new();
    env.add_plugin(
        components::TOOL_HTTP_FETCH,
        "http-fetch",
        Some(&format!("[capabilities]\nhttp = [\"127.0.0.1:{port}\"]\n")),
    );
    let host = env
        .host(&format!(
            "[tenants.acme.grants]\nhttp = [\"127.0.0.1:{port}\"]\n"
        ))
        .await;
    let err = host
        .call_tool(
            scope("acme", None),
            "http_get",
            &format!(r#"{{"url":"https://127.0.0.1:{port}/"}}"#),
        )
        .await
        .unwrap_err();
    match &err {
        CallError::Tool {
            failure: ToolFailure::Failed(message),
            ..
        } => {
            assert!(message.to_lowercase().contains("tls"), "{message}")
        }
        other => panic!("expected a TLS failure, got {other:?}"),
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "the TLS client connected to the granted address"
    );
}
