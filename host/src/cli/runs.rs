//! `loom runs list` and `loom runtime prune`: the run journal's records —
//! which runs a crash left unfinished — and deleting old journals.

use anyhow::Context;
use loom_host::LoomConfig;
use loom_host::engine::boundary::escape_text;
use loom_host::store::Store;
use loom_host::store::journal::{Journal, JournalRun, JournalStatus};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What `loom runs list` was asked.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only the runs a crash (or a cancellation) left unfinished: the ones
    /// `loom resume` can finish.
    #[arg(long)]
    pub interrupted: bool,
    /// Only this tenant's runs.
    #[arg(long)]
    pub tenant: Option<String>,
    /// Only this user's runs.
    #[arg(long)]
    pub user: Option<String>,
    /// Print JSON lines.
    #[arg(long)]
    pub json: bool,
}

/// The journal of the store under `config`'s data directory. The store
/// file is open in one process at a time, so no run of it is live now.
fn journal(config: &LoomConfig) -> anyhow::Result<Journal> {
    let path = config.data_dir.join("loom.redb");
    let store = Store::open(&path).with_context(|| {
        format!(
            "cannot open {} (is a `loom run` or `loom serve` using it now?)",
            path.display()
        )
    })?;
    // Listing and pruning write no runs: one shard to write (every shard
    // on disk is still read), not one per core made ready.
    Ok(Journal::open_with_shards(store, Some(1))?)
}

/// List journaled runs, newest first.
pub fn list(config: &LoomConfig, args: &ListArgs) -> anyhow::Result<ExitCode> {
    let journal = journal(config)?;
    let runs: Vec<JournalRun> = if args.interrupted {
        journal.interrupted()?
    } else {
        journal.runs(false)?
    }
    .into_iter()
    .filter(|run| args.tenant.as_ref().is_none_or(|t| &run.tenant == t))
    .filter(|run| {
        args.user
            .as_ref()
            .is_none_or(|u| run.user.as_ref() == Some(u))
    })
    .collect();
    if args.json {
        for run in &runs {
            println!("{}", serde_json::to_string(run)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    if runs.is_empty() {
        println!(
            "{}",
            if args.interrupted {
                "no interrupted runs"
            } else {
                "no journaled runs"
            }
        );
        return Ok(ExitCode::SUCCESS);
    }
    for run in &runs {
        let status = match run.status {
            JournalStatus::Running => "interrupted",
            JournalStatus::Finished => "finished",
        };
        println!(
            "{}  {status}  tenant {}  user {}{}  {}  started {} ago: {}",
            run.run,
            run.tenant,
            run.user.as_deref().unwrap_or("(anonymous)"),
            run.session
                .as_ref()
                .map(|s| format!("  session {s}"))
                .unwrap_or_default(),
            run.architecture,
            age(run.started_ms),
            escape_text(&run.prompt, 80),
        );
        if run.status == JournalStatus::Running {
            println!(
                "    resume: loom resume --tenant {}{}{} --run {}",
                run.tenant,
                run.user
                    .as_ref()
                    .map(|u| format!(" --user {u}"))
                    .unwrap_or_default(),
                run.session
                    .as_ref()
                    .map(|s| format!(" --session {s}"))
                    .unwrap_or_default(),
                run.run
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Delete the journals of runs older than `older_than` (an age such as
/// 12h or 7d; default `[journal] max_age_hours`), and the staging rings
/// set aside before then.
pub async fn prune(config: &LoomConfig, older_than: Option<&str>) -> anyhow::Result<ExitCode> {
    let age = match older_than {
        Some(text) => {
            let since = loom_host::governance::audit::parse_since(text)
                .map_err(|e| anyhow::anyhow!("--older-than: {e}"))?;
            SystemTime::now().duration_since(since).unwrap_or_default()
        }
        None => Duration::from_secs(config.journal.max_age_hours.saturating_mul(3600)),
    };
    let journal = journal(config)?;
    let pruned = journal.prune(age).await?;
    println!(
        "pruned {pruned} run journal(s) not changed for {}",
        human(age.as_secs())
    );
    Ok(ExitCode::SUCCESS)
}

/// How long ago `ms` (milliseconds since the epoch) was.
fn age(ms: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    human(now.saturating_sub(ms) / 1000)
}

/// `seconds` as the largest whole unit.
fn human(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}
