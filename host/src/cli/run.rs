//! `loom run`: run the configured agent for one prompt, showing progress live.

use anyhow::Context;
use loom_host::agent::configured::{self, AgentChoice};
use loom_host::agent::{Agent, ResumeRequest, RunEvent, RunRequest};
use loom_host::engine::boundary::{escape_text, terminal_safe};
use loom_host::{Host, LoomConfig};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// What `loom run` was asked.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The prompt.
    pub prompt: String,
    #[command(flatten)]
    pub scope: super::scope::ScopeArgs,
    /// Architecture to use instead of the agent's.
    #[arg(long)]
    pub arch: Option<String>,
    /// Run the named agent of [agents.NAME] instead of [agent].
    #[arg(long)]
    pub agent: Option<String>,
    /// Model string instead of [agent] model (openai:<model>,
    /// anthropic:<model>, compat:<name>, echo, scripted:<file>).
    #[arg(long)]
    pub model: Option<String>,
    /// JSON Schema file the answer must match.
    #[arg(long)]
    pub schema: Option<PathBuf>,
    /// Print events as JSON lines.
    #[arg(long)]
    pub json: bool,
}

/// Run the agent and print its progress and answer.
pub async fn run(config: LoomConfig, args: RunArgs) -> anyhow::Result<ExitCode> {
    let scope = args.scope.scope(&config)?;
    let schema = match &args.schema {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --schema {}", path.display()))?;
            Some(
                serde_json::from_str::<serde_json::Value>(&text)
                    .with_context(|| format!("--schema {} is not JSON", path.display()))?,
            )
        }
        None => None,
    };
    let origin = AgentChoice {
        agent: args.agent,
        model: args.model,
        arch: args.arch,
    };
    // Checked before the host starts: a wrong name fails fast.
    configured::settings_of(&config, &origin).context("--agent")?;
    let host = Arc::new(Host::start(config).await?);
    prune_old_journals(&host).await;
    let agent = build_agent(&host, &origin, args.json)?;
    let mut request = RunRequest::new(scope, args.prompt).origin(serde_json::to_value(&origin)?);
    if let Some(schema) = schema {
        request = request.output_schema(schema);
    }
    let mut stream = agent.stream(request);
    let code = show(&mut stream, args.json).await;
    // Budget counters and audit entries are durable before loom exits.
    if let Err(error) = host.flush().await {
        eprintln!("loom: {error}");
    }
    code
}

/// What `loom resume` was asked.
#[derive(Debug, clap::Args)]
pub struct ResumeArgs {
    #[command(flatten)]
    pub scope: super::scope::ScopeArgs,
    /// The run to resume (default: the user's newest interrupted run, in
    /// --session when given).
    #[arg(long)]
    pub run: Option<String>,
    /// Print events as JSON lines.
    #[arg(long)]
    pub json: bool,
}

/// Resume an interrupted run with the agent it ran, and print the rest of
/// its progress and its answer.
pub async fn resume(config: LoomConfig, args: ResumeArgs) -> anyhow::Result<ExitCode> {
    let scope = args.scope.scope(&config)?;
    let mut request = ResumeRequest::new(scope.tenant, scope.user);
    if let Some(session) = scope.session {
        request = request.session(session);
    }
    if let Some(run) = &args.run {
        request = request.run(run.parse().context("--run")?);
    }
    let host = Arc::new(Host::start(config).await?);
    let record = request.find(host.journal())?;
    let origin: AgentChoice = serde_json::from_value(record.origin.clone()).unwrap_or_default();
    let agent = build_agent(&host, &origin, args.json).with_context(|| {
        format!(
            "run {} cannot be resumed with the current configuration",
            record.run
        )
    })?;
    let mut stream = agent.resume_stream(request.run(record.run.parse().context("run id")?));
    let code = show(&mut stream, args.json).await;
    if let Err(error) = host.flush().await {
        eprintln!("loom: {error}");
    }
    code
}

/// Delete journals older than `[journal] max_age_hours`; a failure is
/// only reported.
async fn prune_old_journals(host: &Host) {
    let hours = host.config().journal.max_age_hours;
    if hours == 0 {
        return;
    }
    let age = std::time::Duration::from_secs(hours.saturating_mul(3600));
    if let Err(error) = host.journal().prune(age).await {
        eprintln!("loom: old run journals could not be pruned: {error}");
    }
}

/// The agent `origin` names, on `host`, with an interactive approver when
/// stdin is a terminal and the output is not JSON.
fn build_agent(host: &Arc<Host>, origin: &AgentChoice, json: bool) -> anyhow::Result<Agent> {
    let approver: Option<Arc<dyn loom_host::governance::approval::Approver>> =
        if std::io::stdin().is_terminal() && !json {
            Some(Arc::new(super::govern::TerminalApprover::new()))
        } else {
            None
        };
    Ok(configured::build(host, origin, approver)?)
}

/// Print the run's events as they come; the exit code.
async fn show(stream: &mut loom_host::agent::RunStream, json: bool) -> anyhow::Result<ExitCode> {
    let mut stdout = std::io::stdout();
    let mut streamed_text = false;
    // The text streamed since the last tool call: the answer, if the
    // architecture returns what the model said.
    let mut latest_text = String::new();
    // The role of the completion streaming now: a new role starts a line.
    let mut streaming_role: Option<String> = None;
    while let Some(event) = stream.next().await {
        if json {
            println!("{}", serde_json::to_string(&event)?);
            if let RunEvent::Error { .. } = event {
                return Ok(ExitCode::from(1));
            }
            continue;
        }
        // Any other line ends the text streamed so far.
        if streamed_text
            && !matches!(
                event,
                RunEvent::ModelChunk { .. } | RunEvent::Completed { .. }
            )
        {
            println!();
            streamed_text = false;
        }
        match event {
            RunEvent::Started {
                run_id,
                session_id,
                architecture,
                history_messages,
            } => {
                let session = match (session_id, history_messages) {
                    (None, _) => String::new(),
                    (Some(s), 0) => format!(", new session {s}"),
                    (Some(s), n) => format!(", session {s} continued: {n} earlier messages"),
                };
                eprintln!("run {run_id} ({architecture}{session})");
            }
            RunEvent::Resumed { run_id, recorded } => {
                eprintln!("resuming run {run_id}: replaying {recorded} recorded result(s)");
            }
            RunEvent::ToolRerun {
                name,
                idempotency_key,
                ..
            } => eprintln!(
                "! {name} runs again after the interruption and is not marked idempotent: it may \
                 have acted once already (idempotency key {})",
                escape_text(&idempotency_key, 200)
            ),
            RunEvent::ModelChunk { delta, role } => {
                if streamed_text && role != streaming_role {
                    println!();
                    latest_text.clear();
                    streamed_text = false;
                }
                if !streamed_text && let Some(role) = &role {
                    eprint!("({}) ", escape_text(role, 64));
                }
                streaming_role = role;
                streamed_text = true;
                latest_text.push_str(&delta);
                let _ = write!(stdout, "{}", terminal_safe(&delta));
                let _ = stdout.flush();
            }
            RunEvent::ToolCall {
                name, arguments, ..
            } => {
                latest_text.clear();
                eprintln!("-> {name} {}", escape_text(&arguments, 2000));
            }
            RunEvent::ToolResult {
                name, ok, output, ..
            } => {
                eprintln!(
                    "<- {name} {}: {}",
                    if ok { "ok" } else { "failed" },
                    escape_text(&output, 200)
                );
            }
            RunEvent::BudgetWarning {
                key,
                level,
                used,
                limit,
            } => eprintln!("! budget warning: {level} has used {used} of {key} = {limit}"),
            RunEvent::BudgetExceeded { reason, detail } => {
                eprintln!("! {reason}: {}", escape_text(&detail, 500))
            }
            RunEvent::Permission {
                name,
                decision,
                by,
                reason,
                ..
            } => {
                if decision == "deny" {
                    eprintln!("x {name} denied by {by}: {}", escape_text(&reason, 500));
                }
            }
            RunEvent::Custom { kind, data } => {
                eprintln!("[{}] {}", escape_text(&kind, 64), escape_text(&data, 2000))
            }
            RunEvent::Completed { result } => {
                if streamed_text {
                    println!();
                }
                if result.output.trim() != latest_text.trim() {
                    println!("\n{}", terminal_safe(&result.output));
                }
                eprintln!(
                    "\n{} turn(s); tokens: {} in ({} cached), {} out; cost ${:.6}{}",
                    result.turns,
                    result.usage.input_tokens,
                    result.usage.cached_tokens,
                    result.usage.output_tokens,
                    result.cost_usd,
                    result
                        .interruption_reason
                        .as_ref()
                        .map(|r| format!("; interrupted: {r}"))
                        .unwrap_or_default()
                );
                return Ok(if result.interrupted {
                    ExitCode::from(1)
                } else {
                    ExitCode::SUCCESS
                });
            }
            RunEvent::Error { message } => {
                eprintln!(
                    "loom: the run failed: {}",
                    escape_text(&message, usize::MAX)
                );
                return Ok(ExitCode::from(1));
            }
            RunEvent::SubAgent { path, event } => {
                if let Some(line) = sub_agent_line(&event) {
                    eprintln!("  [{}] {line}", escape_text(&path, 200));
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One line for a sub-agent's event, shown indented under its path; none
/// for its streamed text (its answer is shown when it completes).
fn sub_agent_line(event: &RunEvent) -> Option<String> {
    Some(match event {
        RunEvent::Started {
            run_id,
            architecture,
            ..
        } => format!("run {run_id} ({architecture})"),
        RunEvent::Resumed { .. } => return None,
        RunEvent::ToolRerun {
            name,
            idempotency_key,
            ..
        } => format!(
            "! {name} runs again after the interruption and is not marked idempotent \
             (idempotency key {})",
            escape_text(idempotency_key, 200)
        ),
        RunEvent::ModelChunk { .. } | RunEvent::SubAgent { .. } => return None,
        RunEvent::ToolCall {
            name, arguments, ..
        } => format!("-> {name} {}", escape_text(arguments, 500)),
        RunEvent::ToolResult {
            name, ok, output, ..
        } => format!(
            "<- {name} {}: {}",
            if *ok { "ok" } else { "failed" },
            escape_text(output, 200)
        ),
        RunEvent::BudgetWarning {
            key,
            level,
            used,
            limit,
        } => format!("! budget warning: {level} has used {used} of {key} = {limit}"),
        RunEvent::BudgetExceeded { reason, detail } => {
            format!("! {reason}: {}", escape_text(detail, 500))
        }
        RunEvent::Permission {
            name,
            decision,
            by,
            reason,
            ..
        } => format!("x {name} {decision} by {by}: {}", escape_text(reason, 500)),
        RunEvent::Custom { kind, data } => {
            format!("[{}] {}", escape_text(kind, 64), escape_text(data, 500))
        }
        RunEvent::Completed { result } => format!(
            "done in {} turn(s){}: {}",
            result.turns,
            result
                .interruption_reason
                .as_ref()
                .map(|r| format!(", interrupted: {r}"))
                .unwrap_or_default(),
            escape_text(&result.output, 500)
        ),
        RunEvent::Error { message } => format!("failed: {}", escape_text(message, 2000)),
    })
}
