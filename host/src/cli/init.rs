//! `loom init`: write a commented `loom.toml` that names every section.

use anyhow::Context;
use std::path::Path;
use std::process::ExitCode;

/// The configuration `loom init` writes: every section, with the built-in
/// defaults spelled out. It parses as is (a test keeps it so).
pub const TEMPLATE: &str = r#"# loom.toml — Loom's configuration. Every key is optional; the values shown
# are the built-in defaults. Relative paths are relative to this file.

# Where Loom keeps its data (sessions, the compile cache).
data_dir = ".loom"
# Where compiled components are cached (default: <data_dir>/cache).
# cache_dir = ".loom/cache"
# Plugin directories every tenant sees. Components here override the
# first-party ones built into `loom` (react, calculator, files, http-fetch,
# run-context) by tool or architecture name.
plugin_dirs = ["plugins"]
# How often plugin directories are rescanned, in milliseconds; 0 turns hot
# reload off.
reload_interval_ms = 500
# Serve the first-party components built into `loom` (below every plugin
# directory, which overrides them by name).
builtin_plugins = true

# <data_dir>/loom.redb holds sessions and budget counters. "always" makes
# each group commit durable before its writers hear back; "interval" commits
# at once and fsyncs every fsync_interval_ms (a crash may lose that much).
[store]
fsync = "always"
# fsync_interval_ms = 100
cache_mib = 256               # the database's page cache

# The shared WebAssembly engine.
[engine]
max_instances = 1000          # instances alive at once, all tenants together
max_memory_mib = 256          # largest linear memory of any instance
epoch_tick_ms = 1             # granularity of CPU limits
pooling = "auto"              # "auto", "on" or "off"
memory_keep_resident_kib = 1024

# Limits of every call into a component; a tenant may override any of them
# under [tenants.<id>.limits].
[limits]
cpu_ms = 1000                 # CPU time: guest code and the host work it asks for
wall_ms = 10000               # wall-clock time of one call
memory_mib = 64               # linear memory, tables and host memory held for the guest
max_output_bytes = 1048576    # tool output kept (the rest is cut with a marker)
max_log_bytes = 65536         # log lines and stdout/stderr kept per call
max_resources = 1024          # host resources (files, streams, sockets, HTTP fields) at once
max_open_files = 256          # open files, directories and sockets at once
disk_mib = 256                # bytes the tenant's writable grants may hold together
max_file_mib = 64             # largest file a guest may write

# One table per tenant. Without any, Loom serves one tenant named `default`.
[tenants.default]
# Plugin directories only this tenant sees; its plugins shadow global tools
# of the same name for it alone.
plugin_dirs = []
# Where approvals are posted when no terminal answers (`loom run` asks on
# the terminal when stdin is one). No approver denies.
# approval_url = "https://approvals.example.com/loom"
# approval_timeout_ms = 60000
# `loom memory forget` keeps a user's budget counters unless this is true.
# forget_budgets = false

# What this tenant's plugins may touch, intersected with what each plugin's
# manifest (<plugin>.toml) requests. Nothing is granted unless listed.
[tenants.default.grants]
# files = [{ host = "data/default", guest = "/data", write = false }]
# env = { GREETING = "hello", TOKEN = { from_host = "MY_TOKEN" } }
# http = ["api.example.com", "*.example.org:8443"]
# sockets = ["127.0.0.1:6379"]

# [tenants.default.limits]
# cpu_ms = 500

# Budgets: <metric>_per_run, _per_day (rolling 24 h), _per_month (calendar,
# UTC) or _lifetime, with <metric> one of input_tokens, output_tokens,
# tokens, cost_usd, model_calls, tool_calls, runs, cpu_ms, wall_ms.
# [tenants.default.budgets] caps the sum of all the tenant's users.
[tenants.default.budgets]
# cost_usd_per_month = 50.0
# warn_fraction = 0.8         # emit budget_warning at this share of a cap
# [tenants.default.user_budgets] caps each user.
[tenants.default.user_budgets]
# tokens_per_day = 200000
# tool_calls_per_run = 20
# One user's overrides of user_budgets, permissions and rate limits:
# [tenants.default.users.alice.budgets]
# tokens_per_day = 500000
# [tenants.default.users.alice.permissions]
# mode = "accept-edits"

# Token buckets per minute, for the tenant as a whole and for each user.
[tenants.default.rate_limits]
# runs_per_minute = 600
# model_calls_per_minute = 3000
# on_limit = "wait"           # or "reject" (the caller gets retry-after)
[tenants.default.user_rate_limits]
# runs_per_minute = 20

# Destructive tool calls (tools say whether they are; unsaid is destructive):
# mode "default" asks the approver, "accept-edits" runs file edits and asks
# for the rest, "plan" denies them, "bypass" runs everything. Deny lists
# always apply; allow lists pre-approve (except in plan mode).
[tenants.default.permissions]
mode = "default"
# allow = ["write_file"]
# deny = ["shell_*"]
# file_edits = ["write_note"]  # count these as file edits too

# Policy components (the `policy` world), asked in order after the mode.
# [[tenants.default.policies]]
# plugin = "deny-args"
# config = { paths = ["/etc/**", "**/.ssh/**"], hosts = ["*.internal"] }
# limits = { cpu_ms = 100 }

# The audit log: append-only JSONL, every entry HMAC-SHA256-signed with the
# key in $LOOM_AUDIT_KEY (or key_file) and chained to the one before.
# Loom refuses to start with an audit log and no key.
# [audit]
# path = "audit.jsonl"
# key_file = "audit.key"
# fsync = "always"            # "always", "interval" (fsync_interval_ms) or "never"
# redact = ["arguments", "prompt"]   # hidden by `loom audit show`

# Where spans and metrics go. The console is stderr (its level from -v or
# RUST_LOG); file appends JSON lines, one per closed span and per metric;
# level filters what file, memory and OTLP receive (metrics always go).
[telemetry]
console = true
# file = "telemetry.jsonl"
level = "info"
# [telemetry.otlp]              # an OpenTelemetry collector
# endpoint = "http://127.0.0.1:4317"
# protocol = "grpc"             # or "http" (OTLP/HTTP protobuf; endpoint port 4318)
# headers = { "x-api-key" = { from_host = "OTLP_KEY" } }
# timeout_ms = 10000

# Crash-resumable runs: every result an architecture receives is committed
# before it sees it, so `loom resume` can finish a run a crash cut short.
[journal]
enabled = true
keep_finished = false    # keep a finished run's entries (default: dropped)
max_age_hours = 168      # `loom runtime prune` deletes journals older than this

# Documents for retrieval (`loom docs ingest|search`), one index per tenant
# under <data_dir>/docs. Without [retrieval.embeddings], search is BM25 only.
[retrieval]
max_document_bytes = 10485760
max_index_bytes = 1073741824   # per tenant
chunk_chars = 1200
chunk_overlap = 150
# [retrieval.embeddings]       # any OpenAI-compatible /embeddings endpoint
# base_url = "https://api.openai.com/v1"
# model = "text-embedding-3-small"
# api_key_env = "OPENAI_API_KEY"

# The agent `loom run` builds.
[agent]
instructions = "You are a helpful assistant. Use the tools when they help."
# model = "openai:gpt-4.1-mini"   # or "anthropic:claude-sonnet-4-5", "compat:<name>",
                                  # "echo", "scripted:path/to/script.json"
architecture = "react"
# tools = ["calculate", "read_file"]   # default: every tool of the tenant
max_turns = 10
output_retries = 2
run_timeout_ms = 300000
retrieval = false             # offer the `retrieve` tool over the tenant's documents (`loom docs`)

# What the agent remembers of each user (`loom memory` reads and forgets it).
[agent.memory]
enabled = true                # an episode per run; blocks, facts and episodes recalled into the prompt
recall_tokens = 800           # room for recalled facts and episodes (blocks always go in)
transcripts = false           # keep each run's tool calls on its episode
extract = false               # a model call after each run turns it into facts (costs a call)
# extraction_model = "openai:gpt-4.1-mini"   # default: the agent's model
block_tools = false           # memory_blocks / memory_block_set / memory_block_append

# Hosted model providers. Keys come from the environment by default
# (OPENAI_API_KEY, ANTHROPIC_API_KEY); `api_key` in this file also works.
[models.openai]
# api_key_env = "OPENAI_API_KEY"
# base_url = "https://api.openai.com/v1"
# timeout_ms = 120000
# connect_timeout_ms = 10000
# headers = { "OpenAI-Organization" = "org-..." }

[models.anthropic]
# api_key_env = "ANTHROPIC_API_KEY"
# base_url = "https://api.anthropic.com"
# prompt_caching = true

# Any OpenAI-compatible server, used as model "compat:<name>".
# [models.compat.local]
# base_url = "http://localhost:11434/v1"
# model = "llama3.1"
# native_structured_output = false

# Retries of model calls (backoff with jitter; Retry-After honoured).
[retry]
max_attempts = 4
initial_backoff_ms = 500
max_backoff_ms = 30000

# Price overrides in USD per million tokens, by model string.
[pricing]
# "openai:gpt-4.1-mini" = { input = 0.4, cached_input = 0.1, output = 1.6 }
"#;

/// Write [`TEMPLATE`] to `path`, refusing to overwrite unless `force`.
pub fn init(path: &Path, force: bool) -> anyhow::Result<ExitCode> {
    if path.exists() && !force {
        anyhow::bail!(
            "{} already exists; pass --force to overwrite it",
            path.display()
        );
    }
    std::fs::write(path, TEMPLATE).with_context(|| format!("cannot write {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_template_parses_and_names_every_section() {
        let config = loom_host::LoomConfig::parse(TEMPLATE, Path::new("/base"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.limits, loom_host::config::Limits::default());
        assert!(config.tenants.keys().any(|t| t.as_str() == "default"));
        for section in [
            "[store]",
            "[engine]",
            "[limits]",
            "[tenants.default]",
            "[tenants.default.grants]",
            "[tenants.default.budgets]",
            "[tenants.default.user_budgets]",
            "[tenants.default.rate_limits]",
            "[tenants.default.permissions]",
            "[[tenants.default.policies]]",
            "[audit]",
            "[retrieval]",
            "[journal]",
            "[telemetry]",
            "[telemetry.otlp]",
            "[agent]",
            "[agent.memory]",
            "[models.openai]",
            "[models.anthropic]",
            "[models.compat.",
            "[retry]",
            "[pricing]",
        ] {
            assert!(TEMPLATE.contains(section), "{section}");
        }
    }
}
