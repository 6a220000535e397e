//! `loom budget show`, `loom audit verify`, `loom audit show`, and the
//! terminal approver `loom run` uses when stdin is a terminal.

use anyhow::{Context, bail};
use loom_host::LoomConfig;
use loom_host::config::{AUDIT_KEY_ENV, read_audit_key};
use loom_host::engine::boundary::escape_text;
use loom_host::governance::approval::{ApprovalDecision, ApprovalError, ApprovalRequest, Approver};
use loom_host::governance::audit::{self, AuditKey, AuditQuery};
use loom_host::governance::budget::BudgetLedger;
use loom_host::model::BoxFuture;
use loom_host::store::Store;
use loom_host::tenancy::ids::{TenantId, UserId};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `loom budget show`: use against every cap of the tenant (and the user).
pub fn budget_show(
    config: &LoomConfig,
    tenant: Option<&str>,
    user: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let scope = super::scope::ScopeArgs {
        tenant: tenant.map(str::to_owned),
        user: None,
        session: None,
    }
    .scope(config)?;
    let tenant_id: TenantId = scope.tenant;
    let settings = &config.tenant(&tenant_id)?.governance;
    let user = user
        .map(|u| UserId::named(u.to_owned()).context("--user"))
        .transpose()?;
    let store = Store::open(&config.data_dir.join("loom.redb"))?;
    let ledger = BudgetLedger::new(Some(store));
    let usage = ledger.usage(&tenant_id, user.as_ref(), &settings.budgets)?;
    let per_run: Vec<String> = settings
        .budgets
        .tenant
        .caps
        .iter()
        .chain(
            user.as_ref()
                .map(|u| settings.budgets.for_user(u).caps)
                .unwrap_or_default()
                .iter(),
        )
        .filter(|c| c.window == loom_host::governance::budget::Window::Run)
        .map(|c| format!("{} = {}", c.key(), c.limit))
        .collect();
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "tenant": tenant_id.as_str(),
                "user": user.as_ref().and_then(|u| u.name()),
                "caps": usage,
                "per_run": per_run,
            }))?
        );
        return Ok(ExitCode::SUCCESS);
    }
    if usage.is_empty() && per_run.is_empty() {
        println!(
            "tenant {tenant_id}: no budgets configured (add [tenants.{tenant_id}.budgets] or \
             [tenants.{tenant_id}.user_budgets] to loom.toml)"
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<8} {:<28} {:>16} {:>16} {:>7}",
        "LEVEL", "BUDGET", "USED", "CAP", "USE"
    );
    for cap in &usage {
        let share = if cap.limit > 0.0 {
            format!("{:.0}%", cap.used / cap.limit * 100.0)
        } else {
            "-".into()
        };
        println!(
            "{:<8} {:<28} {:>16} {:>16} {:>7}",
            cap.level.to_string(),
            cap.key,
            trim_number(cap.used),
            trim_number(cap.limit),
            share
        );
    }
    for cap in per_run {
        println!("per run  {cap}");
    }
    Ok(ExitCode::SUCCESS)
}

fn trim_number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else {
        format!("{value:.4}")
    }
}

/// The audit key: `--key-file`, else `LOOM_AUDIT_KEY`, else the
/// configuration's `[audit]` key.
fn audit_key(key_file: Option<&Path>, config: &LoomConfig) -> anyhow::Result<AuditKey> {
    if let Some(path) = key_file {
        return read_audit_key(path).map_err(|e| anyhow::anyhow!("--key-file: {e}"));
    }
    if let Some(value) = std::env::var_os(AUDIT_KEY_ENV) {
        return Ok(AuditKey::new(value.into_encoded_bytes()));
    }
    if let Some(settings) = &config.audit {
        return Ok(settings.key.clone());
    }
    bail!("no audit key: set {AUDIT_KEY_ENV}, pass --key-file, or configure [audit] in loom.toml")
}

/// `loom audit verify <file>`.
pub fn audit_verify(
    config: &LoomConfig,
    file: &Path,
    key_file: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let key = audit_key(key_file, config)?;
    match audit::verify(file, &key) {
        Ok(entries) => {
            println!("{}: ok, {entries} entries", file.display());
            Ok(ExitCode::SUCCESS)
        }
        Err(failure) => {
            eprintln!("{}: {failure}", file.display());
            Ok(ExitCode::from(1))
        }
    }
}

/// What `loom audit show` was asked.
pub struct ShowArgs<'a> {
    /// The log; default `[audit] path`.
    pub file: Option<&'a Path>,
    /// Only this tenant.
    pub tenant: Option<&'a str>,
    /// Only this user.
    pub user: Option<&'a str>,
    /// Only entries at or after this (RFC 3339, or an age like `2h`).
    pub since: Option<&'a str>,
    /// Print JSON lines.
    pub json: bool,
}

/// `loom audit show`.
pub fn audit_show(config: &LoomConfig, args: ShowArgs<'_>) -> anyhow::Result<ExitCode> {
    let file: PathBuf = match (args.file, &config.audit) {
        (Some(file), _) => file.to_owned(),
        (None, Some(settings)) => settings.path.clone(),
        (None, None) => bail!("no audit log: pass --file or configure [audit] path in loom.toml"),
    };
    let since = args
        .since
        .map(audit::parse_since)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--since: {e}"))?;
    let query = AuditQuery {
        tenant: args.tenant.map(str::to_owned),
        user: args.user.map(str::to_owned),
        since,
    };
    let redact = config
        .audit
        .as_ref()
        .map(|a| a.redact.clone())
        .unwrap_or_default();
    let entries = audit::read_entries(&file, &query, &redact)?;
    let mut out = std::io::stdout().lock();
    for entry in entries {
        if args.json {
            writeln!(out, "{}", serde_json::to_string(&entry)?)?;
        } else {
            writeln!(
                out,
                "{:>6} {} {:<10} {:<12} {:<20} {:<18} {}",
                entry.seq,
                entry.ts,
                escape_text(&entry.tenant, 32),
                escape_text(entry.user.as_deref().unwrap_or("-"), 32),
                entry.action,
                escape_text(&entry.actor, 32),
                escape_text(&entry.data.to_string(), 400)
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks on the terminal; one question at a time.
pub struct TerminalApprover {
    turn: tokio::sync::Mutex<()>,
}

impl TerminalApprover {
    /// A terminal approver.
    pub fn new() -> Self {
        TerminalApprover {
            turn: tokio::sync::Mutex::new(()),
        }
    }
}

fn read_answer() -> std::io::Result<String> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim().to_owned())
}

impl Approver for TerminalApprover {
    fn name(&self) -> &str {
        "terminal"
    }

    fn decide(
        &self,
        request: &ApprovalRequest,
    ) -> BoxFuture<'_, Result<ApprovalDecision, ApprovalError>> {
        let request = request.clone();
        Box::pin(async move {
            let _turn = self.turn.lock().await;
            eprintln!(
                "\n? {} {}\n  {}\n  [y] allow  [n] deny  [a] allow for the rest of the run  \
                 [d] deny for the rest of the run  [e] edit the arguments",
                escape_text(&request.tool, 64),
                escape_text(&request.arguments.to_string(), 2000),
                escape_text(&request.reason, 500),
            );
            loop {
                eprint!("  > ");
                let answer = tokio::task::spawn_blocking(read_answer)
                    .await
                    .map_err(|e| ApprovalError(e.to_string()))?
                    .map_err(|e| ApprovalError(format!("cannot read the answer: {e}")))?;
                match answer.as_str() {
                    "y" | "yes" => return Ok(ApprovalDecision::Allow),
                    "n" | "no" | "" => return Ok(ApprovalDecision::Deny { reason: None }),
                    "a" => return Ok(ApprovalDecision::AllowAlways),
                    "d" => return Ok(ApprovalDecision::DenyAlways { reason: None }),
                    "e" => {
                        eprint!("  arguments (one line of JSON) > ");
                        let text = tokio::task::spawn_blocking(read_answer)
                            .await
                            .map_err(|e| ApprovalError(e.to_string()))?
                            .map_err(|e| ApprovalError(format!("cannot read the answer: {e}")))?;
                        match serde_json::from_str::<serde_json::Value>(&text) {
                            Ok(arguments) if arguments.is_object() => {
                                return Ok(ApprovalDecision::Edit { arguments });
                            }
                            _ => eprintln!("  that is not a JSON object; answer again"),
                        }
                    }
                    _ => eprintln!("  answer y, n, a, d or e"),
                }
            }
        })
    }
}
