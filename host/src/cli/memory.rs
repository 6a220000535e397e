//! `loom memory …`: a user's facts, episodes and working blocks; forget
//! and export (GDPR).

use anyhow::Context;
/// Print model- or user-written text without terminal control sequences.
fn escape_text(text: &str) -> String {
    loom_host::engine::boundary::escape_text(text, usize::MAX)
}
use clap::{Args, Subcommand};
use loom_host::LoomConfig;
use loom_host::governance::audit::{AuditLog, AuditRecord};
use loom_host::memory::{
    Fact, FactQuery, ForgetOptions, Memory, MemoryLimits, NewFact, TenantMemory, Timestamp,
};
use loom_host::store::{SessionStore, Store};
use loom_host::tenancy::ids::{TenantId, UserId};
use std::process::ExitCode;
use std::sync::Arc;

/// Whose memory.
#[derive(Debug, Args)]
pub(super) struct Whose {
    #[command(flatten)]
    config: super::ConfigArg,
    /// The tenant; may be omitted when only one is configured.
    #[arg(long)]
    tenant: Option<String>,
    /// The user.
    #[arg(long)]
    user: String,
}

/// `loom memory` subcommands.
#[derive(Debug, Subcommand)]
pub(super) enum MemoryCommand {
    /// List a user's facts (what Loom believes now, or at --known-at), or
    /// add one with `facts add`.
    Facts(Box<FactsCommand>),
    /// Counts, the newest episode and the working blocks of a user.
    Show {
        #[command(flatten)]
        whose: Whose,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete everything memory holds of a user: episodes, every fact
    /// version, working blocks and sessions. Prints the counts per kind and
    /// records the forget in the audit log.
    Forget {
        #[command(flatten)]
        whose: Whose,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print everything memory holds of a user as JSON.
    Export {
        #[command(flatten)]
        whose: Whose,
    },
}

/// `loom memory facts [add]`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(super) struct FactsCommand {
    #[command(subcommand)]
    add: Option<FactsAction>,
    #[command(flatten)]
    config: super::ConfigArg,
    /// The tenant; may be omitted when only one is configured.
    #[arg(long)]
    tenant: Option<String>,
    /// The user whose facts to list.
    #[arg(long)]
    user: Option<String>,
    /// Only facts true at this time in the world (RFC 3339 or a date).
    #[arg(long)]
    valid_at: Option<String>,
    /// What Loom believed at this time (default: now).
    #[arg(long)]
    known_at: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// `facts add`.
#[derive(Debug, Subcommand)]
pub(super) enum FactsAction {
    /// Record a fact; an open fact of the user with the same subject and
    /// predicate and another object is closed where this one starts.
    Add {
        #[command(flatten)]
        whose: Whose,
        /// What the fact is about.
        #[arg(long)]
        subject: String,
        /// The relation, in any spelling (`lives_in`, `livesIn`, `lives-in`).
        #[arg(long)]
        predicate: String,
        /// The value.
        #[arg(long)]
        object: String,
        /// From when it holds (RFC 3339 or a date; default now).
        #[arg(long)]
        valid_from: Option<String>,
        /// Until when it holds (default: open).
        #[arg(long)]
        valid_until: Option<String>,
        /// How sure, 0 to 1.
        #[arg(long, default_value_t = 1.0)]
        confidence: f32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn time_arg(flag: &str, value: Option<&str>) -> anyhow::Result<Option<Timestamp>> {
    value
        .map(|v| Timestamp::parse(v).map_err(|e| anyhow::anyhow!("{flag}: {e}")))
        .transpose()
}

/// What a memory command works on.
struct Opened {
    memory: TenantMemory,
    tenant: TenantId,
    user: UserId,
    config: LoomConfig,
    /// A running host, when the tenant's memory is a component (which
    /// needs the engine and the plugin catalog).
    host: Option<loom_host::host::Host>,
}

async fn open(whose: &Whose) -> anyhow::Result<Opened> {
    let config = whose.config.load()?;
    let scope = super::scope::ScopeArgs {
        tenant: whose.tenant.clone(),
        user: None,
        session: None,
    }
    .scope(&config)?;
    let user = UserId::named(whose.user.clone()).context("--user")?;
    if config.tenant(&scope.tenant)?.memory.plugin.is_some() {
        let host = loom_host::host::Host::start(config.clone()).await?;
        let memory = host.memory_for(&scope.tenant).await?;
        return Ok(Opened {
            memory,
            tenant: scope.tenant,
            user,
            config,
            host: Some(host),
        });
    }
    let store = Store::open_with(&config.data_dir.join("loom.redb"), config.store_sync)?;
    let sessions = Arc::new(SessionStore::new(store.clone()));
    Ok(Opened {
        memory: TenantMemory::builtin_only(Memory::new(store, sessions, MemoryLimits::default())),
        tenant: scope.tenant,
        user,
        config,
        host: None,
    })
}

fn print_facts(facts: &[Fact]) {
    if facts.is_empty() {
        println!("(no facts)");
        return;
    }
    for fact in facts {
        let window = match fact.valid_until {
            Some(until) => format!("valid {} .. {}", fact.valid_from, until),
            None => format!("valid {} ..", fact.valid_from),
        };
        let belief = match fact.expired_at {
            Some(at) => format!(
                "recorded {}, no longer believed since {at}",
                fact.recorded_at
            ),
            None => format!("recorded {}", fact.recorded_at),
        };
        // Facts may be model-written: no terminal control sequences.
        println!(
            "{}  {} {} {}  ({window}; {belief})",
            fact.id,
            escape_text(&fact.subject),
            escape_text(&fact.predicate),
            escape_text(&fact.object)
        );
    }
}

/// `loom memory facts [add]`.
async fn facts_command(command: FactsCommand) -> anyhow::Result<ExitCode> {
    match command {
        FactsCommand {
            add:
                Some(FactsAction::Add {
                    whose,
                    subject,
                    predicate,
                    object,
                    valid_from,
                    valid_until,
                    confidence,
                    json,
                }),
            ..
        } => {
            let Opened {
                memory,
                tenant,
                user,
                ..
            } = open(&whose).await?;
            let fact = NewFact {
                subject,
                predicate,
                object,
                confidence,
                sources: vec!["cli".into()],
                valid_from: time_arg("--valid-from", valid_from.as_deref())?,
                valid_until: time_arg("--valid-until", valid_until.as_deref())?,
            };
            let recorded = memory.add_fact(&tenant, &user, fact).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&recorded)?);
            } else if recorded.created {
                println!("recorded {}", escape_text(&recorded.fact.text()));
                print_facts(std::slice::from_ref(&recorded.fact));
                for closed in &recorded.closed {
                    println!("closed {}", escape_text(&closed.text()));
                }
            } else {
                println!(
                    "already believed (nothing recorded): {}",
                    escape_text(&recorded.fact.text())
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        FactsCommand {
            add: None,
            config,
            tenant,
            user,
            valid_at,
            known_at,
            json,
        } => {
            let Some(user) = user else {
                anyhow::bail!(
                    "`loom memory facts` lists a user's facts: give --user U (and --tenant T), or use `loom memory facts add`"
                );
            };
            let whose = Whose {
                config,
                tenant,
                user,
            };
            let Opened {
                memory,
                tenant,
                user,
                ..
            } = open(&whose).await?;
            let query = FactQuery {
                valid_at: time_arg("--valid-at", valid_at.as_deref())?,
                known_at: time_arg("--known-at", known_at.as_deref())?,
                ..FactQuery::default()
            };
            let facts = memory.facts(&tenant, &user, &query).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&facts)?);
            } else {
                print_facts(&facts);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Run a `loom memory` command.
pub(super) async fn run(command: MemoryCommand) -> anyhow::Result<ExitCode> {
    match command {
        MemoryCommand::Facts(facts) => facts_command(*facts).await,
        MemoryCommand::Show { whose, json } => {
            let Opened {
                memory,
                tenant,
                user,
                ..
            } = open(&whose).await?;
            let summary = memory.summary(&tenant, &user).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                println!("tenant {tenant}, user {user}");
                println!("episodes: {}", summary.episodes);
                println!(
                    "facts believed now: {} ({} versions stored)",
                    summary.facts_believed, summary.fact_versions
                );
                println!("sessions: {}", summary.sessions);
                if let Some(at) = summary.last_seen {
                    println!("last episode: {at}");
                }
                println!("working blocks: {}", summary.blocks.len());
                for block in &summary.blocks {
                    for line in block.render().lines() {
                        println!("{}", escape_text(line));
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        MemoryCommand::Forget { whose, json } => {
            let Opened {
                memory,
                tenant,
                user,
                config,
                host,
            } = open(&whose).await?;
            let report = match &host {
                // The host asks the component to forget, deletes the rest
                // and records the audit entry.
                Some(host) => {
                    let report = host.forget_user(&tenant, &user, "cli").await?;
                    host.flush()
                        .await
                        .context("the forget was done but its audit entry could not be written")?;
                    report
                }
                None => {
                    // Open the audit log first: a forget that cannot be
                    // recorded is not carried out.
                    let audit = config
                        .audit
                        .as_ref()
                        .map(AuditLog::open)
                        .transpose()
                        .context("cannot open the audit log to record the forget")?;
                    let budgets = config.tenant(&tenant)?.governance.forget_budgets;
                    let report = memory
                        .builtin()
                        .forget_with(&tenant, &user, ForgetOptions { budgets })
                        .await?;
                    if let Some(audit) = &audit {
                        audit.record(AuditRecord {
                            tenant: tenant.as_str().to_owned(),
                            user: user.name().map(str::to_owned),
                            run: None,
                            action: "memory_forgotten",
                            actor: "cli".to_owned(),
                            data: serde_json::to_value(report)?,
                        });
                        audit.flush().await.context(
                            "the forget was done but its audit entry could not be written",
                        )?;
                    }
                    report
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("forgot user {user} of tenant {tenant}:");
                println!("  episodes: {}", report.episodes);
                println!("  facts: {}", report.facts);
                println!("  blocks: {}", report.blocks);
                println!("  sessions: {}", report.sessions);
                println!("  budget rows: {}", report.budget_rows);
                if let Some(host) = &host
                    && let Ok(memory) = host.memory_for(&tenant).await
                    && let Some(component) = memory.component()
                {
                    println!(
                        "  memory component `{}`: {} items erased by it, {} leftover keys deleted by the host",
                        component.name(),
                        report.component_items,
                        report.plugin_kv
                    );
                } else if report.plugin_kv > 0 {
                    println!("  memory component keys: {}", report.plugin_kv);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        MemoryCommand::Export { whose } => {
            let Opened {
                memory,
                tenant,
                user,
                ..
            } = open(&whose).await?;
            let export = memory.export(&tenant, &user).await?;
            println!("{}", serde_json::to_string_pretty(&export)?);
            Ok(ExitCode::SUCCESS)
        }
    }
}
