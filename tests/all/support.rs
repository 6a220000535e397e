//! Helpers shared by the test modules.

use loom_host::Host;
use loom_tests::components;
use loom_tests::scope;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Two tenants and the calculator + run-context tools, plus `extra` plugins
/// installed by the caller before this is called.
pub const TWO_TENANTS: &str = "[tenants.acme]\n[tenants.globex]\n";

/// Install the well-behaved tools every test uses to prove the host still works.
pub fn install_good_tools(env: &loom_tests::TestEnv) {
    env.add_plugin(components::TOOL_CALCULATOR, "calculator", None);
    env.add_plugin(components::TOOL_RUN_CONTEXT, "run-context", None);
}

/// Assert the host still serves `tenant` and a different tenant normally.
pub async fn assert_still_healthy(host: &Host, tenant: &str, other: &str) {
    let (a, b) = tokio::join!(
        host.call_tool(
            scope(tenant, Some("after")),
            "calculate",
            r#"{"expression":"6*7"}"#
        ),
        host.call_tool(scope(other, Some("bystander")), "run_context", "{}"),
    );
    assert_eq!(a.expect("same tenant still served").output, "42.0");
    let b: serde_json::Value =
        serde_json::from_str(&b.expect("other tenant still served").output).unwrap();
    assert_eq!(b["tenant"], other);
    assert_eq!(b["user_id"], "bystander");
}

/// A loopback HTTP server answering 200 "pong"; counts connections.
pub async fn http_server() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = socket.read(&mut buf).await;
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 4\r\nconnection: close\r\n\r\npong")
                    .await;
            });
        }
    });
    (port, hits)
}

/// A loopback TCP listener that counts connections and bytes received.
pub async fn tcp_sink() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut buf = vec![0u8; 1024];
            let _ = socket.read(&mut buf).await;
        }
    });
    (port, seen)
}

/// A scripted model reply: `text`, then `calls` (tool name, arguments),
/// reporting `usage`.
pub fn scripted_turn(
    text: &str,
    calls: &[(&str, serde_json::Value)],
    usage: loom_host::model::Usage,
) -> loom_host::model::offline::ScriptedTurn {
    loom_host::model::offline::ScriptedTurn {
        text: text.into(),
        tool_calls: calls
            .iter()
            .map(
                |(name, arguments)| loom_host::model::offline::ScriptedToolCall {
                    id: None,
                    name: (*name).into(),
                    arguments: arguments.clone(),
                },
            )
            .collect(),
        usage: Some(usage),
    }
}
