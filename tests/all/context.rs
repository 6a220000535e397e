//! The run context a tool sees comes from the host, per call.

use crate::support::{TWO_TENANTS, install_good_tools};
use loom_host::tenancy::ids::SessionId;
use loom_tests::{TestEnv, scope};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_see_the_callers_scope_and_nothing_else() {
    let env = TestEnv::new();
    install_good_tools(&env);
    let host = env.host(TWO_TENANTS).await;
    let mut alice = scope("acme", Some("alice")).with_session(SessionId::new("s-1").unwrap());
    alice.metadata.push(("channel".into(), "web".into()));
    let run = alice.run.to_string();
    let (a, b) = tokio::join!(
        host.call_tool(alice, "run_context", "{}"),
        host.call_tool(scope("globex", None), "run_context", "{}"),
    );
    let a: serde_json::Value = serde_json::from_str(&a.unwrap().output).unwrap();
    let b: serde_json::Value = serde_json::from_str(&b.unwrap().output).unwrap();
    assert_eq!(a["tenant"], "acme");
    assert_eq!(a["user_id"], "alice");
    assert_eq!(a["session_id"], "s-1");
    assert_eq!(a["run_id"], run.as_str());
    assert_eq!(a["metadata"]["channel"], "web");
    assert_eq!(b["tenant"], "globex");
    assert!(
        b["user_id"].is_null(),
        "anonymous is none, not a magic string"
    );
    assert!(b["session_id"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tenant_and_tool_are_clear_errors() {
    let env = TestEnv::new();
    install_good_tools(&env);
    let host = env.host(TWO_TENANTS).await;
    let err = host
        .call_tool(scope("nobody", None), "calculate", "{}")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("acme, globex"), "{err}");
    let err = host
        .call_tool(scope("acme", None), "nope", "{}")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("calculate"), "{err}");
    let err = host
        .call_tool(scope("acme", None), "calculate", r#"{"expr":"1"}"#)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("invalid arguments"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_sees_the_idempotency_key_of_its_call_and_none_without_one() {
    let env = TestEnv::new();
    install_good_tools(&env);
    let host = env.host(TWO_TENANTS).await;
    // As a run gives a tool call its key: the same key on every execution of
    // that call, and each call its own.
    let first = scope("acme", Some("alice")).with_idempotency_key("run-1/step-3/call_a");
    let second = first.clone().with_idempotency_key("run-1/step-3/call_b");
    let (a, again, b, plain) = tokio::join!(
        host.call_tool(first.clone(), "run_context", "{}"),
        host.call_tool(first, "run_context", "{}"),
        host.call_tool(second, "run_context", "{}"),
        // `loom tool call`: a scope of its own, outside any run.
        host.call_tool(scope("acme", Some("alice")), "run_context", "{}"),
    );
    let key = |output: loom_host::engine::ToolOutput| {
        let value: serde_json::Value = serde_json::from_str(&output.output).unwrap();
        value["idempotency_key"].clone()
    };
    assert_eq!(key(a.unwrap()), "run-1/step-3/call_a");
    assert_eq!(key(again.unwrap()), "run-1/step-3/call_a");
    assert_eq!(key(b.unwrap()), "run-1/step-3/call_b");
    assert!(
        key(plain.unwrap()).is_null(),
        "no key outside a run's tool call"
    );
}
