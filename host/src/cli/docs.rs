//! `loom docs …`: a tenant's document store for retrieval.

use anyhow::Context;
/// Print model- or user-written text without terminal control sequences.
fn escape_text(text: &str) -> String {
    loom_host::engine::boundary::escape_text(text, usize::MAX)
}
use clap::Subcommand;
use loom_host::retrieval::{DocStore, DocumentKind, SearchMode};
use std::path::PathBuf;
use std::process::ExitCode;

/// `loom docs` subcommands.
#[derive(Debug, Subcommand)]
pub(super) enum DocsCommand {
    /// Index text or markdown files (markdown by .md/.markdown); a file
    /// already indexed under the same name is replaced.
    Ingest {
        #[command(flatten)]
        config: super::ConfigArg,
        /// The tenant; may be omitted when only one is configured.
        #[arg(long)]
        tenant: Option<String>,
        /// The files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// The name to store a single file under (default: its file name).
        #[arg(long)]
        name: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Search the tenant's documents.
    Search {
        #[command(flatten)]
        config: super::ConfigArg,
        /// The tenant; may be omitted when only one is configured.
        #[arg(long)]
        tenant: Option<String>,
        /// What to look for.
        query: String,
        /// How many passages.
        #[arg(short, long, default_value_t = 5)]
        k: usize,
        /// bm25, vector or hybrid (default: hybrid with embeddings configured, else bm25).
        #[arg(long)]
        mode: Option<SearchMode>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// List the tenant's documents.
    List {
        #[command(flatten)]
        config: super::ConfigArg,
        /// The tenant; may be omitted when only one is configured.
        #[arg(long)]
        tenant: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete a document by name.
    Delete {
        #[command(flatten)]
        config: super::ConfigArg,
        /// The tenant; may be omitted when only one is configured.
        #[arg(long)]
        tenant: Option<String>,
        /// The document's name.
        name: String,
    },
}

fn open(
    config: &super::ConfigArg,
    tenant: Option<String>,
) -> anyhow::Result<(DocStore, loom_host::TenantId)> {
    let config = config.load()?;
    let scope = super::scope::ScopeArgs {
        tenant,
        user: None,
        session: None,
    }
    .scope(&config)?;
    let docs = DocStore::new(config.data_dir.join("docs"), config.retrieval.clone())?;
    Ok((docs, scope.tenant))
}

/// Run a `loom docs` command.
pub(super) async fn run(command: DocsCommand) -> anyhow::Result<ExitCode> {
    match command {
        DocsCommand::Ingest {
            config,
            tenant,
            files,
            name,
            json,
        } => {
            if name.is_some() && files.len() > 1 {
                anyhow::bail!("--name names one file; give one file, or drop --name");
            }
            let (docs, tenant) = open(&config, tenant)?;
            let mut reports = Vec::new();
            for file in &files {
                let text = std::fs::read_to_string(file)
                    .with_context(|| format!("cannot read {} as UTF-8 text", file.display()))?;
                let document = name.clone().unwrap_or_else(|| {
                    file.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| file.display().to_string())
                });
                let report = docs
                    .ingest(&tenant, &document, &text, DocumentKind::of_path(file))
                    .await
                    .with_context(|| format!("cannot ingest {}", file.display()))?;
                if !json {
                    println!(
                        "{}: {} chunks{}{}",
                        report.document,
                        report.chunks,
                        if report.embedded { ", embedded" } else { "" },
                        if report.replaced { " (replaced)" } else { "" }
                    );
                }
                reports.push(report);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&reports)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        DocsCommand::Search {
            config,
            tenant,
            query,
            k,
            mode,
            json,
        } => {
            let (docs, tenant) = open(&config, tenant)?;
            let mode = mode.unwrap_or_else(|| docs.default_mode());
            let hits = docs.search(&tenant, &query, k, mode).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&hits)?);
            } else if hits.is_empty() {
                println!("(no matches)");
            } else {
                for hit in hits {
                    let place = if hit.heading.is_empty() {
                        format!("{} #{}", hit.document, hit.chunk)
                    } else {
                        format!("{} #{} ({})", hit.document, hit.chunk, hit.heading)
                    };
                    // Documents are anyone's text: no terminal control sequences.
                    println!("{:.3}  {}", hit.score, escape_text(&place));
                    for line in hit.text.lines().take(6) {
                        println!("        {}", escape_text(line));
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DocsCommand::List {
            config,
            tenant,
            json,
        } => {
            let (docs, tenant) = open(&config, tenant)?;
            let list = docs.list(&tenant)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!("(no documents)");
            } else {
                for doc in list {
                    println!("{}  {} chunks", doc.document, doc.chunks);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        DocsCommand::Delete {
            config,
            tenant,
            name,
        } => {
            let (docs, tenant) = open(&config, tenant)?;
            if docs.delete(&tenant, &name).await? {
                println!("deleted {name}");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("loom: tenant {tenant} has no document `{name}`");
                Ok(ExitCode::from(1))
            }
        }
    }
}
