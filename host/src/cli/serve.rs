//! `loom serve` and `loom keys new`.

use anyhow::Context;
use loom_host::service::{Service, server};
use loom_host::tenancy::ids::TenantId;
use loom_host::{Host, LoomConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// What `loom serve` was asked.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on [default: [server] listen, else 127.0.0.1:7700].
    #[arg(long)]
    pub listen: Option<SocketAddr>,
}

/// Run the service until SIGINT or SIGTERM, then shut down gracefully.
pub async fn serve(
    config: LoomConfig,
    path: Option<PathBuf>,
    args: ServeArgs,
) -> anyhow::Result<ExitCode> {
    let addr: SocketAddr = match args.listen {
        Some(addr) => addr,
        None => config
            .server
            .listen
            .parse()
            .context("[server] listen is not an address")?,
    };
    let ephemeral = server::ephemeral_keys(&config, addr)?;
    let listener = server::bind(addr).await?;
    let local = listener.local_addr().context("the bound address")?;
    let settings = config.server.clone();
    let host = Arc::new(Host::start(config).await?);
    let service = Service::new(host, path, settings, ephemeral.clone());
    let router = server::router(service.clone(), None);
    eprintln!("loom serve: listening on http://{local}");
    if !ephemeral.is_empty() {
        eprintln!(
            "loom serve: no API keys are configured; for this process only, each tenant \
             accepts a key (make lasting ones with `loom keys new --tenant <tenant>`):"
        );
        for (key, tenant) in &ephemeral {
            eprintln!("  tenant {tenant}: Authorization: Bearer {key}");
        }
    }
    tokio::spawn(server::watch_config(service.clone()));
    let shutdown = service.shutdown_token().clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        eprintln!("loom serve: shutting down: finishing runs in flight");
        shutdown.cancel();
    });
    server::serve(service, listener, router).await;
    eprintln!("loom serve: stopped");
    Ok(ExitCode::SUCCESS)
}

/// SIGINT or SIGTERM.
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

/// What `loom keys new` was asked.
#[derive(Debug, clap::Args)]
pub struct NewKeyArgs {
    /// The tenant the key selects.
    #[arg(
        long,
        required_unless_present = "operator",
        conflicts_with = "operator"
    )]
    pub tenant: Option<String>,
    /// An operator key instead: it reads /metrics for every tenant.
    #[arg(long)]
    pub operator: bool,
}

/// Print a new key once, and the hash to put in loom.toml.
pub fn new_key(args: &NewKeyArgs) -> anyhow::Result<ExitCode> {
    let (key, hash) = loom_host::tenancy::keys::new_key()
        .map_err(|e| anyhow::anyhow!("the system's random generator failed: {e}"))?;
    let setting = match &args.tenant {
        Some(tenant) => {
            let tenant = TenantId::new(tenant.clone()).context("--tenant")?;
            format!("[tenants.{tenant}]\napi_keys = [\"{hash}\"]")
        }
        None => format!("[server]\noperator_keys = [\"{hash}\"]"),
    };
    println!("{key}");
    eprintln!(
        "\nThe key is printed once, above; Loom keeps only its hash. Give the key to the \
         application, and add the hash to loom.toml (append to the list if it has one):\n\n\
         {setting}\n"
    );
    Ok(ExitCode::SUCCESS)
}
