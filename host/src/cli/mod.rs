//! Argument parsing and the `loom` subcommands.

mod plugins;
mod run;
mod tool;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use loom_host::LoomConfig;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Loom: a multi-tenant harness for LLM agents whose tools, architectures,
/// memory backends and policies are sandboxed WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "loom", version, about, long_about = None)]
pub struct Cli {
    /// Log more (-v: debug, -vv: trace). Logs go to stderr; RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent configured in [agent] for one prompt, showing model
    /// output and tool calls live, then the answer, usage and cost.
    Run {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        args: run::RunArgs,
    },
    /// List and inspect plugins.
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// Call tools directly, through the full sandbox.
    #[command(subcommand)]
    Tool(ToolCommand),
}

#[derive(Debug, Subcommand)]
enum PluginsCommand {
    /// List the plugins in the configured plugin directories: name, kind,
    /// tools, version, requested and granted capabilities, load errors.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// Show what this tenant sees (its own plugins too) and what it grants.
        #[arg(long)]
        tenant: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Describe a component file: world, exports, imports, requested
    /// capabilities, tools, and why Loom would reject it.
    Inspect {
        /// The .wasm file.
        file: PathBuf,
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ToolCommand {
    /// Invoke a tool as a tenant's user would, with the tenant's grants and
    /// limits. Exits 1 if the tool fails, is denied, or breaks a limit.
    Call {
        /// The tenant the call runs for.
        #[arg(long)]
        tenant: String,
        /// The user the call runs for; anonymous when omitted.
        #[arg(long)]
        user: Option<String>,
        /// The session the call belongs to.
        #[arg(long)]
        session: Option<String>,
        /// The tool's name.
        tool: String,
        /// The arguments as a JSON object.
        #[arg(default_value = "{}")]
        arguments: String,
        #[command(flatten)]
        config: ConfigArg,
        /// Print a JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// `--config`, shared by subcommands.
#[derive(Debug, Args)]
struct ConfigArg {
    /// Path of loom.toml.
    #[arg(long, short = 'c', default_value = "loom.toml", env = "LOOM_CONFIG")]
    config: PathBuf,
}

impl ConfigArg {
    /// Load the configuration, with hot reload off (one-shot commands).
    fn load(&self) -> anyhow::Result<LoomConfig> {
        let mut config = LoomConfig::load(&self.config).with_context(|| {
            if self.config.exists() {
                String::from("the configuration is invalid")
            } else {
                format!(
                    "no config at {}; pass --config PATH or create one (see the README's loom.toml reference)",
                    self.config.display()
                )
            }
        })?;
        config.reload_interval = None;
        Ok(config)
    }

    /// The configuration if the file exists, else a minimal one with its data
    /// in `./.loom`.
    fn load_or_default(&self) -> anyhow::Result<LoomConfig> {
        if self.config.exists() {
            self.load()
        } else {
            Ok(LoomConfig::minimal(Path::new(".loom")))
        }
    }
}

/// Send logs to stderr at the level `-v` asks for.
pub fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Run the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config, args } => run::run(config.load()?, args).await,
        Command::Plugins(PluginsCommand::List {
            config,
            tenant,
            json,
        }) => plugins::list(config.load()?, tenant.as_deref(), json).await,
        Command::Plugins(PluginsCommand::Inspect { file, config, json }) => {
            plugins::inspect(config.load_or_default()?, &file, json).await
        }
        Command::Tool(ToolCommand::Call {
            tenant,
            user,
            session,
            tool,
            arguments,
            config,
            json,
        }) => {
            let request = tool::CallArgs {
                tenant,
                user,
                session,
                tool,
                arguments,
                json,
            };
            tool::call(config.load()?, request).await
        }
    }
}
