//! `loom tool call`.

use anyhow::Context;
use loom_host::tenancy::ids::{Scope, SessionId, TenantId, UserId};
use loom_host::{Host, LoomConfig};
use std::process::ExitCode;

/// What `loom tool call` was asked.
pub struct CallArgs {
    pub tenant: String,
    pub user: Option<String>,
    pub session: Option<String>,
    pub tool: String,
    pub arguments: String,
    pub json: bool,
}

/// Invoke one tool and print the outcome.
pub async fn call(config: LoomConfig, args: CallArgs) -> anyhow::Result<ExitCode> {
    let tenant = TenantId::new(args.tenant).context("--tenant")?;
    let user = match args.user {
        Some(name) => UserId::named(name).context("--user")?,
        None => UserId::Anonymous,
    };
    let mut scope = Scope::new(tenant, user);
    if let Some(session) = args.session {
        scope = scope.with_session(SessionId::new(session).context("--session")?);
    }
    if serde_json::from_str::<serde_json::Value>(&args.arguments).is_err() {
        anyhow::bail!(
            "the arguments `{}` are not JSON; pass an object such as '{{\"expression\": \"1+2\"}}'",
            args.arguments
        );
    }
    config.tenant(&scope.tenant)?;
    let host = Host::start(config).await?;
    let result = host.call_tool(scope, &args.tool, &args.arguments).await;
    match result {
        Ok(output) => {
            let failed = !output.denials.is_empty();
            if args.json {
                let value = serde_json::json!({
                    "ok": true,
                    "output": serde_json::from_str::<serde_json::Value>(&output.output).unwrap_or(serde_json::Value::Null),
                    "truncated_from": output.truncated_from,
                    "logs": output.logs,
                    "denials": output.denials,
                    "elapsed_ms": output.elapsed.as_secs_f64() * 1000.0,
                });
                println!("{value}");
            } else {
                for line in &output.logs {
                    eprintln!("[{:?}] {}", line.level, line.message.trim_end());
                }
                for denial in &output.denials {
                    eprintln!("denied: {denial}");
                }
                let pretty = serde_json::from_str::<serde_json::Value>(&output.output)
                    .ok()
                    .and_then(|v| serde_json::to_string_pretty(&v).ok())
                    .unwrap_or(output.output);
                println!("{pretty}");
            }
            Ok(if failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
        Err(error) => {
            if args.json {
                println!(
                    "{}",
                    serde_json::json!({ "ok": false, "error": error, "message": error.to_string() })
                );
            } else {
                eprintln!("loom: {error}");
            }
            Ok(ExitCode::from(1))
        }
    }
}
