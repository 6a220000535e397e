//! Argument parsing and the `loom` subcommands.

mod docs;
mod govern;
mod init;
mod mcp;
mod memory;
mod plugins;
mod run;
mod runs;
mod scaffold;
mod scope;
mod serve;
mod tool;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use loom_host::LoomConfig;
use std::path::PathBuf;
use std::process::ExitCode;

/// Loom: a multi-tenant harness for LLM agents whose tools, architectures,
/// memory backends and policies are sandboxed WebAssembly components.
#[derive(Debug, Parser)]
#[command(name = "loom", version, about, long_about = None)]
pub struct Cli {
    /// Log more (-v: debug, -vv: trace). Logs go to stderr; RUST_LOG
    /// overrides; [telemetry] in loom.toml adds a JSONL file or OTLP export.
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
    /// Resume a run that a crash (or a cancellation) left unfinished: its
    /// journal replays (no model call billed twice, no finished tool call
    /// run again), then it goes on live to its answer.
    Resume {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        args: run::ResumeArgs,
    },
    /// Journaled runs: which ones a crash left unfinished.
    #[command(subcommand)]
    Runs(RunsCommand),
    /// Maintenance of the host's stored state.
    #[command(subcommand)]
    Runtime(RuntimeCommand),
    /// List and inspect plugins; scaffold a new one.
    #[command(subcommand)]
    Plugins(PluginsCommand),
    /// Call tools directly, through the full sandbox.
    #[command(subcommand)]
    Tool(ToolCommand),
    /// Serve a tenant's tools over the Model Context Protocol.
    #[command(subcommand)]
    Mcp(McpCommand),
    /// Show budget use against every cap.
    #[command(subcommand)]
    Budget(BudgetCommand),
    /// Verify and read the audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// A user's memory: facts (bi-temporal), episodes, working blocks;
    /// forget and export.
    #[command(subcommand)]
    Memory(memory::MemoryCommand),
    /// A tenant's documents for retrieval: ingest, search, list, delete.
    #[command(subcommand)]
    Docs(docs::DocsCommand),
    /// Serve Loom over HTTP to many tenants: the /v1 API (runs, streamed
    /// as Server-Sent Events; sessions; tools; approvals; memory; budget;
    /// audit), an OpenAI-compatible /v1/chat/completions, /healthz and
    /// /metrics. A bearer API key selects the tenant. loom.toml and the
    /// plugin directories reload without a restart; SIGINT or SIGTERM
    /// drains runs in flight, then stops.
    Serve {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        args: serve::ServeArgs,
    },
    /// API keys for `loom serve`.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Write a commented loom.toml that names every section.
    Init {
        /// Where to write it.
        #[arg(default_value = "loom.toml")]
        path: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Make a random API key: print it once, and the `sha256:` hash to add
    /// to the tenant's api_keys in loom.toml (Loom never stores the key).
    New(serve::NewKeyArgs),
}

#[derive(Debug, Subcommand)]
enum RunsCommand {
    /// List journaled runs, newest first, with the `loom resume` command
    /// of each interrupted one.
    List {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        args: runs::ListArgs,
    },
}

#[derive(Debug, Subcommand)]
enum RuntimeCommand {
    /// Delete the journals of runs not changed for longer than
    /// --older-than (default: [journal] max_age_hours), finished or not,
    /// and staging rings a crash left set aside (appends.ring-unrecovered-*)
    /// that are older.
    Prune {
        #[command(flatten)]
        config: ConfigArg,
        /// An age: 90s, 15m, 12h, 7d, 2w.
        #[arg(long)]
        older_than: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum PluginsCommand {
    /// List the plugins in the configured plugin directories: name, kind,
    /// version, the loom:plugin version each was built against, tools,
    /// requested and granted capabilities, load errors. Exits 1 if any
    /// plugin failed to load.
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
    /// Describe a component file: world, the loom:plugin version(s) it was
    /// built against and whether this host supports them, exports, imports,
    /// requested capabilities, tools, and why Loom would reject it. Exits 1
    /// when rejected.
    Inspect {
        /// The .wasm file.
        file: PathBuf,
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Create a plugin project (a tool or an architecture in Rust,
    /// JavaScript or Python) from the templates built into loom, and print
    /// the commands that build, inspect and try it.
    New(scaffold::NewArgs),
}

#[derive(Debug, Subcommand)]
enum BudgetCommand {
    /// Print what the tenant (and with --user, the user) has used against
    /// each configured cap: rolling day, calendar month, lifetime.
    Show {
        #[command(flatten)]
        config: ConfigArg,
        /// The tenant; may be omitted when only one is configured.
        #[arg(long)]
        tenant: Option<String>,
        /// Also the caps of this user.
        #[arg(long)]
        user: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check every entry's signature, numbering and chain. Exits 0 with
    /// the entry count, or 1 naming the first bad line (an edit, deletion,
    /// insertion, reordering or truncation).
    Verify {
        /// The audit log (JSONL).
        file: PathBuf,
        #[command(flatten)]
        config: ConfigArg,
        /// File holding the key (default: LOOM_AUDIT_KEY, else [audit] key_file).
        #[arg(long)]
        key_file: Option<PathBuf>,
    },
    /// Print audit entries, oldest first, with the fields [audit] redact
    /// names hidden.
    Show {
        #[command(flatten)]
        config: ConfigArg,
        /// The audit log (default: [audit] path).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Only this user.
        #[arg(long)]
        user: Option<String>,
        /// Only entries since this time: RFC 3339 (2026-11-28T18:00:00Z) or
        /// an age (90s, 15m, 2h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ToolCommand {
    /// Invoke a tool as a tenant's user would, with the tenant's grants and
    /// limits. Exits 1 if the tool fails, is denied, or breaks a limit.
    Call {
        #[command(flatten)]
        args: tool::CallArgs,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Debug, Subcommand)]
enum McpCommand {
    /// Serve the tenant's tools to an MCP client (Claude Desktop, an IDE,
    /// any MCP host) over stdin/stdout. Every call passes the tenant's
    /// permission mode and policies, budgets and audit log as a run's tool
    /// call does; with no approver, calls that need approval are denied.
    /// Stdout carries only the protocol; logs go to stderr.
    Serve {
        #[command(flatten)]
        args: mcp::ServeArgs,
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// `--config`, shared by subcommands.
#[derive(Debug, Args)]
struct ConfigArg {
    /// Path of loom.toml. Default: ./loom.toml when it exists, else Loom's
    /// built-in configuration (one tenant `default`, data and plugins under
    /// the user's data directory, the first-party components built in).
    #[arg(long, short = 'c', env = "LOOM_CONFIG")]
    config: Option<PathBuf>,
    /// The configuration once loaded (telemetry is set up from it before
    /// the command runs, and the command gets the same one).
    #[arg(skip)]
    loaded: std::sync::OnceLock<LoomConfig>,
}

impl ConfigArg {
    /// The configuration, with hot reload off (one-shot commands): the file
    /// named by `--config` (which must exist), else `./loom.toml` if there
    /// is one, else the built-in defaults.
    fn load(&self) -> anyhow::Result<LoomConfig> {
        if let Some(config) = self.loaded.get() {
            return Ok(config.clone());
        }
        let config = self.load_uncached()?;
        let _ = self.loaded.set(config.clone());
        Ok(config)
    }

    /// The configuration for a long-running service, with plugin hot
    /// reload as configured, and the file it came from (`None` for the
    /// built-in defaults), to reload it from.
    fn load_for_service(&self) -> anyhow::Result<(LoomConfig, Option<PathBuf>)> {
        let path = match &self.config {
            Some(path) => path.clone(),
            None => {
                let local = PathBuf::from("loom.toml");
                if !local.exists() {
                    return Ok((LoomConfig::builtin(), None));
                }
                local
            }
        };
        let config = LoomConfig::load(&path).with_context(|| {
            if path.exists() {
                String::from("the configuration is invalid")
            } else {
                format!(
                    "no config at {}; fix the path, or run `loom init` to write one",
                    path.display()
                )
            }
        })?;
        Ok((config, Some(path)))
    }

    fn load_uncached(&self) -> anyhow::Result<LoomConfig> {
        let path = match &self.config {
            Some(path) => path.clone(),
            None => {
                let local = PathBuf::from("loom.toml");
                if !local.exists() {
                    let mut config = LoomConfig::builtin();
                    config.reload_interval = None;
                    return Ok(config);
                }
                local
            }
        };
        let mut config = LoomConfig::load(&path).with_context(|| {
            if path.exists() {
                String::from("the configuration is invalid")
            } else {
                format!(
                    "no config at {}; fix the path, or run `loom init` to write one",
                    path.display()
                )
            }
        })?;
        config.reload_interval = None;
        Ok(config)
    }
}

impl Cli {
    /// The `--config` of the command, for commands that read loom.toml
    /// directly (`memory` and `docs` log to the console only).
    fn config_arg(&self) -> Option<&ConfigArg> {
        match &self.command {
            Command::Run { config, .. }
            | Command::Serve { config, .. }
            | Command::Resume { config, .. }
            | Command::Runs(RunsCommand::List { config, .. })
            | Command::Runtime(RuntimeCommand::Prune { config, .. })
            | Command::Plugins(PluginsCommand::List { config, .. })
            | Command::Plugins(PluginsCommand::Inspect { config, .. })
            | Command::Tool(ToolCommand::Call { config, .. })
            | Command::Mcp(McpCommand::Serve { config, .. })
            | Command::Budget(BudgetCommand::Show { config, .. })
            | Command::Audit(AuditCommand::Verify { config, .. })
            | Command::Audit(AuditCommand::Show { config, .. }) => Some(config),
            _ => None,
        }
    }
}

/// Set up telemetry from the command's `[telemetry]` (console only for a
/// command without a config, or one that does not load): logs to stderr at
/// the level `-v` asks for, and the file, memory and OTLP sinks it names.
/// Keep the guard until the command is done: dropping it flushes them.
///
/// # Errors
///
/// A sink that cannot be set up (the file cannot be opened, the OTLP
/// exporter cannot be built).
pub fn install_telemetry(cli: &Cli) -> anyhow::Result<loom_host::telemetry::TelemetryGuard> {
    use loom_host::telemetry;
    let config = {
        // Warnings while the config loads go to the console, as before.
        let _console = tracing::dispatcher::set_default(&telemetry::console_only(cli.verbose));
        // A config that does not load is reported by the command itself.
        cli.config_arg().and_then(|config| config.load().ok())
    };
    let settings = config.map(|c| c.telemetry).unwrap_or_default();
    telemetry::install(&settings, cli.verbose).context("[telemetry] cannot be set up")
}

/// Run the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config, args } => run::run(config.load()?, args).await,
        Command::Resume { config, args } => run::resume(config.load()?, args).await,
        Command::Runs(RunsCommand::List { config, args }) => runs::list(&config.load()?, &args),
        Command::Runtime(RuntimeCommand::Prune { config, older_than }) => {
            runs::prune(&config.load()?, older_than.as_deref()).await
        }
        Command::Plugins(PluginsCommand::List {
            config,
            tenant,
            json,
        }) => plugins::list(config.load()?, tenant.as_deref(), json).await,
        Command::Plugins(PluginsCommand::Inspect { file, config, json }) => {
            plugins::inspect(config.load()?, &file, json).await
        }
        Command::Plugins(PluginsCommand::New(args)) => scaffold::new(&args),
        Command::Tool(ToolCommand::Call { args, config }) => tool::call(config.load()?, args).await,
        Command::Mcp(McpCommand::Serve { args, config }) => mcp::serve(config.load()?, args).await,
        Command::Memory(command) => memory::run(command).await,
        Command::Docs(command) => docs::run(command).await,
        Command::Budget(BudgetCommand::Show {
            config,
            tenant,
            user,
            json,
        }) => govern::budget_show(&config.load()?, tenant.as_deref(), user.as_deref(), json),
        Command::Audit(AuditCommand::Verify {
            file,
            config,
            key_file,
        }) => govern::audit_verify(&config.load()?, &file, key_file.as_deref()),
        Command::Audit(AuditCommand::Show {
            config,
            file,
            tenant,
            user,
            since,
            json,
        }) => govern::audit_show(
            &config.load()?,
            govern::ShowArgs {
                file: file.as_deref(),
                tenant: tenant.as_deref(),
                user: user.as_deref(),
                since: since.as_deref(),
                json,
            },
        ),
        Command::Serve { config, args } => {
            let (loaded, path) = config.load_for_service()?;
            serve::serve(loaded, path, args).await
        }
        Command::Keys(KeysCommand::New(args)) => serve::new_key(&args),
        Command::Init { path, force } => init::init(&path, force),
    }
}
