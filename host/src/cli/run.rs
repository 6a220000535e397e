//! `loom run`: run the configured agent for one prompt, showing progress live.

use anyhow::Context;
use loom_host::agent::{Agent, RunEvent, RunRequest};
use loom_host::engine::boundary::{escape_text, terminal_safe};
use loom_host::model::pricing::PriceTable;
use loom_host::model::spec::from_spec;
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
    let settings = match &args.agent {
        None => config.agent.clone(),
        Some(name) => config.agents.get(name).cloned().with_context(|| {
            let known: Vec<&str> = config.agents.keys().map(String::as_str).collect();
            format!(
                "--agent {name}: no [agents.{name}] in the configuration (configured: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            )
        })?,
    };
    let spec = args.model.or_else(|| settings.model.clone()).context(
        "no model: pass --model or set [agent] model in loom.toml (for example openai:gpt-4.1-mini, \
         anthropic:claude-sonnet-4-5, compat:<name>, echo, scripted:script.json)",
    )?;
    let model = from_spec(
        &spec,
        &config.models,
        &loom_host::model::spec::retry_policy(&config.retry),
        &config.base_dir,
    )?;
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
    let prices = PriceTable::new(config.pricing.clone());
    let host = Arc::new(Host::start(config).await?);
    let sessions = host.sessions();
    let mut builder = Agent::builder(settings.instructions)
        .host(host.clone())
        .model(model)
        .architecture(args.arch.unwrap_or(settings.architecture))
        .max_turns(settings.max_turns)
        .output_retries(settings.output_retries)
        .run_timeout(std::time::Duration::from_millis(settings.run_timeout_ms))
        .prices(prices)
        .sessions(sessions)
        .retrieval(settings.retrieval);
    if let Some(tools) = settings.tools {
        builder = builder.tools(tools);
    }
    if let Some(config) = settings.architecture_config {
        builder = builder.architecture_config(config);
    }
    builder = builder.workers(settings.workers);
    for (role, spec) in &settings.role_models {
        let model = from_spec(
            spec,
            &host.config().models,
            &loom_host::model::spec::retry_policy(&host.config().retry),
            &host.config().base_dir,
        )
        .with_context(|| format!("[agent.role_models] {role}"))?;
        builder = builder.role_model(role.clone(), model);
    }
    let memory = &settings.memory;
    if memory.enabled {
        builder = builder.memory(
            host.memory(),
            loom_host::MemoryOptions {
                recall_tokens: memory.recall_tokens,
                episodes: true,
                transcripts: memory.transcripts,
                extract: memory.extract,
                block_tools: memory.block_tools,
            },
        );
        if let Some(spec) = &memory.extraction_model {
            let model = from_spec(
                spec,
                &host.config().models,
                &loom_host::model::spec::retry_policy(&host.config().retry),
                &host.config().base_dir,
            )
            .context("[agent.memory] extraction_model")?;
            builder = builder.extraction_model(model);
        }
    }
    if std::io::stdin().is_terminal() && !args.json {
        builder = builder.approver(Arc::new(super::govern::TerminalApprover::new()));
    }
    let agent = builder.build()?;
    let mut request = RunRequest::new(scope, args.prompt);
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
