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
