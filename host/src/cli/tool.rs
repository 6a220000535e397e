//! `loom tool call`.

use loom_host::engine::boundary::{escape_text, terminal_safe};
use loom_host::{Host, LoomConfig};
use std::process::ExitCode;

/// What `loom tool call` was asked.
#[derive(Debug, clap::Args)]
pub struct CallArgs {
    #[command(flatten)]
    pub scope: super::scope::ScopeArgs,
    /// The tool's name.
    pub tool: String,
    /// The arguments as a JSON object.
    #[arg(default_value = "{}")]
    pub arguments: String,
    /// Print a JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Invoke one tool and print the outcome.
pub async fn call(config: LoomConfig, args: CallArgs) -> anyhow::Result<ExitCode> {
    let scope = args.scope.scope(&config)?;
    if serde_json::from_str::<serde_json::Value>(&args.arguments).is_err() {
        anyhow::bail!(
            "the arguments `{}` are not JSON; pass an object such as '{{\"expression\": \"1+2\"}}'",
            args.arguments
        );
    }
    let host = Host::start(config).await?;
    let result = host.call_tool(scope, &args.tool, &args.arguments).await;
    match result {
        Ok(output) => {
            let failed = !output.denials.is_empty();
            if args.json {
                let value = serde_json::json!({
                    "ok": true,
                    // Output is checked JSON; should it ever not parse, it is
                    // shown as text rather than dropped.
                    "output": serde_json::from_str::<serde_json::Value>(&output.output)
                        .unwrap_or_else(|_| serde_json::Value::String(output.output.clone())),
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
                    eprintln!("denied: {}", escape_text(denial, usize::MAX));
                }
                let pretty = serde_json::from_str::<serde_json::Value>(&output.output)
                    .ok()
                    .and_then(|v| serde_json::to_string_pretty(&v).ok())
                    .unwrap_or(output.output);
                println!("{}", terminal_safe(&pretty));
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
                eprintln!("loom: {}", escape_text(&error.to_string(), usize::MAX));
            }
            Ok(ExitCode::from(1))
        }
    }
}
