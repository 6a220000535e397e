//! `loom mcp serve`: a tenant's tools as an MCP server over stdio.

use loom_host::Host;
use loom_host::LoomConfig;
use loom_host::mcp::{McpServerOptions, serve_stdio};
use std::process::ExitCode;
use std::sync::Arc;

/// What `loom mcp serve` was asked.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub scope: super::scope::ScopeArgs,
    /// Also offer the configured agents as tools (`agent__<name>`, and
    /// `agent__default` for [agent]): a call is a whole governed run.
    #[arg(long)]
    pub agents: bool,
}

/// Serve the tenant's tools over stdin/stdout until the client hangs up.
/// Stdout carries only the protocol; logs go to stderr.
pub async fn serve(config: LoomConfig, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let scope = args.scope.scope(&config)?;
    let host = Arc::new(Host::start(config).await?);
    tracing::info!(tenant = %scope.tenant, "serving MCP over stdio");
    let options = McpServerOptions {
        agents: args.agents,
        ..McpServerOptions::default()
    };
    let served = serve_stdio(host.clone(), scope, options).await;
    if let Err(error) = host.flush().await {
        tracing::error!(%error, "budget counters or audit entries could not be written");
    }
    served?;
    Ok(ExitCode::SUCCESS)
}
