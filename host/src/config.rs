//! `loom.toml`: data directory, plugin directories, engine sizing, default
//! limits, and tenants with their grants and limits.
//!
//! Parsing happens in two stages: the file is read into `Raw*` structs that
//! reject unknown keys, then resolved (paths made absolute, environment values
//! read, patterns parsed) into [`LoomConfig`]. Every error names the key and
//! how to fix it. See the README's "loom.toml reference" for every key.

use crate::governance::audit::{AuditKey, AuditSettings, FsyncPolicy};
use crate::governance::budget::{BudgetCaps, TenantBudgets};
use crate::governance::permissions::{PermissionRules, ToolPattern};
use crate::governance::ratelimit::Rates;
use crate::governance::{PolicyRef, TenantGovernance, default_policy_limits};
use crate::tenancy::grants::{EnvValue, Grants, HostPattern, ResolvedGrants};
use crate::tenancy::ids::TenantId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's explanation, with line and column.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid config key `{key}`: {message}")]
    Invalid {
        /// The dotted key, such as `tenants.acme.grants.http`.
        key: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// Resource limits of one call into a component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// CPU time a call may spend executing guest code.
    pub cpu: Duration,
    /// Wall-clock time a call may take, host I/O included.
    pub wall: Duration,
    /// Bytes of linear memory and tables an instance may use, all memories together.
    pub memory_bytes: usize,
    /// Bytes of tool output kept; the rest is cut with a marker.
    pub max_output_bytes: usize,
    /// Bytes of log lines (and stdout/stderr) kept per call.
    pub max_log_bytes: usize,
    /// Host resources (open files, streams, sockets, HTTP fields, ...) a
    /// call may hold at once.
    pub max_resources: usize,
    /// Host descriptors a call may hold at once: open files and directories,
    /// file streams, TCP sockets.
    pub max_open_files: usize,
    /// Bytes the tenant's read-write grants may hold together.
    pub disk_bytes: u64,
    /// Largest file a guest may write, in bytes.
    pub max_file_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            cpu: Duration::from_millis(1000),
            wall: Duration::from_millis(10_000),
            memory_bytes: 64 << 20,
            max_output_bytes: 1 << 20,
            max_log_bytes: 64 << 10,
            max_resources: 1024,
            max_open_files: 256,
            disk_bytes: 256 << 20,
            max_file_bytes: 64 << 20,
        }
    }
}

/// `[limits]` as written: every key optional, merged over the defaults.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    cpu_ms: Option<u64>,
    wall_ms: Option<u64>,
    memory_mib: Option<u64>,
    max_output_bytes: Option<usize>,
    max_log_bytes: Option<usize>,
    max_resources: Option<usize>,
    max_open_files: Option<usize>,
    disk_mib: Option<u64>,
    max_file_mib: Option<u64>,
}

impl RawLimits {
    fn apply(&self, base: Limits, key: &str) -> Result<Limits, ConfigError> {
        let positive = |name: &str, v: u64| {
            if v == 0 {
                Err(ConfigError::Invalid {
                    key: format!("{key}.{name}"),
                    message: "must be greater than 0".into(),
                })
            } else {
                Ok(v)
            }
        };
        let mut limits = base;
        if let Some(v) = self.cpu_ms {
            limits.cpu = Duration::from_millis(positive("cpu_ms", v)?);
        }
        if let Some(v) = self.wall_ms {
            limits.wall = Duration::from_millis(positive("wall_ms", v)?);
        }
        if let Some(v) = self.memory_mib {
            let v = positive("memory_mib", v)?;
            if v > 4096 {
                return Err(ConfigError::Invalid {
                    key: format!("{key}.memory_mib"),
                    message: "must be at most 4096 (4 GiB, the 32-bit address space)".into(),
                });
            }
            limits.memory_bytes = (v as usize) << 20;
        }
        if let Some(v) = self.max_output_bytes {
            limits.max_output_bytes = positive("max_output_bytes", v as u64)? as usize;
        }
        if let Some(v) = self.max_log_bytes {
            limits.max_log_bytes = v;
        }
        if let Some(v) = self.max_resources {
            // Below 16 a guest cannot even open its preopens and stdio.
            if !(16..=1_000_000).contains(&v) {
                return Err(ConfigError::Invalid {
                    key: format!("{key}.max_resources"),
                    message: "must be between 16 and 1000000".into(),
                });
            }
            limits.max_resources = v;
        }
        if let Some(v) = self.max_open_files {
            limits.max_open_files = positive("max_open_files", v as u64)? as usize;
        }
        if let Some(v) = self.disk_mib {
            limits.disk_bytes = v.saturating_mul(1 << 20);
        }
        if let Some(v) = self.max_file_mib {
            limits.max_file_bytes = positive("max_file_mib", v)?.saturating_mul(1 << 20);
        }
        Ok(limits)
    }
}

/// Whether the pooling instance allocator is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolingMode {
    /// Use pooling when the address space allows it, else on-demand allocation.
    #[default]
    Auto,
    /// Require pooling; fail to start without it.
    On,
    /// Always allocate on demand.
    Off,
}

/// `[engine]`: sizing of the shared wasmtime engine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Component instances alive at once, across all tenants (pool size).
    pub max_instances: u32,
    /// Largest linear memory any instance may have, in MiB (pool slot size).
    /// Per-tenant `limits.memory_mib` must not exceed it.
    pub max_memory_mib: u64,
    /// Epoch tick in milliseconds: the granularity of CPU limits.
    pub epoch_tick_ms: u64,
    /// Pooling allocator: `auto`, `on` or `off`.
    pub pooling: PoolingMode,
    /// Per pooled memory slot, how many KiB of the pages an instance dirtied
    /// are reset in place and kept resident for the next instance instead
    /// of being returned to the kernel (Linux 6.7+; elsewhere the first
    /// KiB are reset with `memset`). 0 returns everything.
    pub memory_keep_resident_kib: u64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_instances: 1000,
            max_memory_mib: 256,
            epoch_tick_ms: 1,
            pooling: PoolingMode::Auto,
            memory_keep_resident_kib: 1024,
        }
    }
}

/// `[agent]`: the agent `loom run` builds.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSettings {
    /// The system prompt.
    pub instructions: String,
    /// The model string, such as `openai:gpt-4.1-mini` or `scripted:script.json`.
    pub model: Option<String>,
    /// The architecture, by the name its component declares.
    pub architecture: String,
    /// The tools the agent may use; every tool of the tenant when absent.
    pub tools: Option<Vec<String>>,
    /// Cap on model turns per run.
    pub max_turns: u32,
    /// Retries with feedback when an answer fails the output schema.
    pub output_retries: u32,
    /// Wall-clock limit of a whole run, in milliseconds.
    pub run_timeout_ms: u64,
    /// `[agent.memory]`: what the agent remembers of each user.
    pub memory: AgentMemorySettings,
    /// Offer the `retrieve` tool over the tenant's documents.
    pub retrieval: bool,
    /// `[agent.architecture_config]`: the architecture's configuration
    /// (checked against the schema it declares when a run starts).
    pub architecture_config: Option<serde_json::Value>,
    /// `[agent.role_models]`: a model string per role the architecture asks
    /// for (`critic = "openai:gpt-4.1-mini"`); other roles use `model`.
    pub role_models: BTreeMap<String, String>,
    /// What the agent does, shown to a team that has it as a worker.
    pub description: String,
    /// Named agents (`[agents.NAME]`) that form this agent's team: the host
    /// puts them into the architecture's configuration, under the property
    /// its schema marks `"x-loom-members": true` (`workers`, `routes`,
    /// `agents`, `experts` of the team architectures).
    pub workers: Vec<String>,
}

/// `[agent.memory]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentMemorySettings {
    /// Remember runs and recall into the prompt at all.
    pub enabled: bool,
    /// Tokens of facts and episodes recalled into each prompt.
    pub recall_tokens: usize,
    /// Keep each run's tool calls on its episode.
    pub transcripts: bool,
    /// Extract facts after each run with a model call (costs a call per run).
    pub extract: bool,
    /// The model that extracts (default: the agent's).
    pub extraction_model: Option<String>,
    /// Offer the working-block tools.
    pub block_tools: bool,
}

impl Default for AgentMemorySettings {
    fn default() -> Self {
        AgentMemorySettings {
            enabled: true,
            recall_tokens: 800,
            transcripts: false,
            extract: false,
            extraction_model: None,
            block_tools: false,
        }
    }
}

impl Default for AgentSettings {
    fn default() -> Self {
        AgentSettings {
            instructions: "You are a helpful assistant. Use the tools when they help.".into(),
            model: None,
            architecture: "react".into(),
            tools: None,
            max_turns: 10,
            output_retries: 2,
            run_timeout_ms: 300_000,
            memory: AgentMemorySettings::default(),
            retrieval: false,
            architecture_config: None,
            role_models: BTreeMap::new(),
            description: String::new(),
            workers: Vec::new(),
        }
    }
}

/// One tenant as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantConfig {
    /// Plugin directories only this tenant sees (absolute).
    pub plugin_dirs: Vec<PathBuf>,
    /// Limits of each call (the defaults with this tenant's overrides).
    pub limits: Limits,
    /// Capabilities granted to this tenant's plugins.
    pub grants: ResolvedGrants,
    /// Budgets, rate limits, permissions, policies and approvals (shared
    /// with every run of the tenant).
    pub governance: std::sync::Arc<TenantGovernance>,
    /// `[tenants.T.memory]`: which memory serves the tenant.
    pub memory: TenantMemorySettings,
    /// `[[tenants.T.mcp_servers]]`: MCP servers whose tools join the
    /// tenant's (only ever from the operator's file).
    pub mcp_servers: Vec<crate::mcp::McpServerConfig>,
    /// `api_keys`: hashes of the keys that select this tenant over HTTP.
    pub api_keys: Vec<crate::tenancy::keys::ApiKeyHash>,
}

/// Default quota of component data per tenant (`kv_quota_mib`).
pub const DEFAULT_KV_QUOTA_BYTES: u64 = 256 << 20;

/// `[tenants.T.memory]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantMemorySettings {
    /// A memory component (by plugin name) that holds the tenant's
    /// episodes, notes and facts instead of the built-in memory. Working
    /// blocks and sessions stay in the host.
    #[serde(default)]
    pub plugin: Option<String>,
    /// Most bytes of component data (keys and values) the tenant stores.
    #[serde(default = "default_kv_quota_mib")]
    pub kv_quota_mib: u64,
}

fn default_kv_quota_mib() -> u64 {
    DEFAULT_KV_QUOTA_BYTES >> 20
}

impl Default for TenantMemorySettings {
    fn default() -> Self {
        TenantMemorySettings {
            plugin: None,
            kv_quota_mib: default_kv_quota_mib(),
        }
    }
}

impl TenantMemorySettings {
    /// The quota in bytes.
    pub fn kv_quota_bytes(&self) -> u64 {
        self.kv_quota_mib.saturating_mul(1 << 20)
    }
}

impl TenantConfig {
    /// A tenant with `limits`, nothing granted and no governance settings.
    pub fn new(limits: Limits) -> Self {
        TenantConfig {
            plugin_dirs: Vec::new(),
            limits,
            grants: ResolvedGrants::default(),
            governance: std::sync::Arc::new(TenantGovernance::default()),
            memory: TenantMemorySettings::default(),
            mcp_servers: Vec::new(),
            api_keys: Vec::new(),
        }
    }
}

/// `[tenants.T.permissions]` / `[tenants.T.users.U.permissions]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPermissions {
    mode: Option<crate::governance::permissions::Mode>,
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
    #[serde(default)]
    file_edits: Vec<String>,
}

impl RawPermissions {
    fn resolve(&self, key: &str) -> Result<PermissionRules, ConfigError> {
        let patterns = |list: &[String], name: &str| {
            list.iter()
                .map(|p| ToolPattern::parse(p).map_err(|e| invalid(&format!("{key}.{name}"), &e)))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(PermissionRules {
            mode: self.mode,
            allow: patterns(&self.allow, "allow")?,
            deny: patterns(&self.deny, "deny")?,
            file_edits: patterns(&self.file_edits, "file_edits")?,
        })
    }
}

/// `[tenants.T.users.U]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    #[serde(default)]
    budgets: BTreeMap<String, toml::Value>,
    #[serde(default)]
    permissions: Option<RawPermissions>,
    #[serde(default)]
    rate_limits: Option<Rates>,
}

/// `[[tenants.T.policies]]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    plugin: String,
    #[serde(default)]
    config: Option<toml::Value>,
    #[serde(default)]
    limits: RawLimits,
}

/// `[audit]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    path: PathBuf,
    key_file: Option<PathBuf>,
    #[serde(default)]
    insecure_no_key: bool,
    #[serde(default)]
    fsync: RawFsync,
    fsync_interval_ms: Option<u64>,
    #[serde(default)]
    redact: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawFsync {
    #[default]
    Always,
    Interval,
    Never,
}

/// The environment variable holding the audit key.
pub const AUDIT_KEY_ENV: &str = "LOOM_AUDIT_KEY";

/// Read an audit key file: its bytes, surrounding whitespace trimmed.
///
/// # Errors
///
/// A message naming the file when it cannot be read or holds fewer than
/// 16 bytes.
pub fn read_audit_key(path: &Path) -> Result<AuditKey, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let trimmed = text.trim_ascii().to_vec();
    if trimmed.len() < 16 {
        return Err(format!(
            "{} holds {} bytes; an audit key needs at least 16",
            path.display(),
            trimmed.len()
        ));
    }
    Ok(AuditKey::new(trimmed))
}

impl RawAudit {
    fn resolve(&self, resolve: &dyn Fn(&Path) -> PathBuf) -> Result<AuditSettings, ConfigError> {
        let key = if let Some(file) = &self.key_file {
            read_audit_key(&resolve(file)).map_err(|e| invalid("audit.key_file", &e))?
        } else if let Some(value) = std::env::var_os(AUDIT_KEY_ENV) {
            let bytes = value.into_encoded_bytes();
            if bytes.len() < 16 {
                return Err(invalid(
                    "audit",
                    &format!(
                        "{AUDIT_KEY_ENV} holds {} bytes; an audit key needs at least 16",
                        bytes.len()
                    ),
                ));
            }
            AuditKey::new(bytes)
        } else if self.insecure_no_key {
            tracing::warn!(
                "the audit log is signed with an empty key (audit.insecure_no_key):                  it shows accidental damage, not tampering"
            );
            AuditKey::insecure_empty()
        } else {
            return Err(invalid(
                "audit",
                &format!(
                    "the audit log is on but has no key: set {AUDIT_KEY_ENV}, or audit.key_file,                      or (for tests only) audit.insecure_no_key = true"
                ),
            ));
        };
        let fsync = match self.fsync {
            RawFsync::Always => FsyncPolicy::Always,
            RawFsync::Never => FsyncPolicy::Never,
            RawFsync::Interval => FsyncPolicy::Interval(Duration::from_millis(
                self.fsync_interval_ms.unwrap_or(1000).max(1),
            )),
        };
        Ok(AuditSettings {
            path: resolve(&self.path),
            key,
            fsync,
            redact: self.redact.clone(),
        })
    }
}

/// A loaded, validated `loom.toml`.
#[derive(Debug, Clone)]
pub struct LoomConfig {
    /// The directory relative paths are resolved against (the file's directory).
    pub base_dir: PathBuf,
    /// Where Loom keeps its data.
    pub data_dir: PathBuf,
    /// Where compiled components are cached; host-only. Default `<data_dir>/cache`.
    pub cache_dir: PathBuf,
    /// Plugin directories every tenant sees.
    pub plugin_dirs: Vec<PathBuf>,
    /// How often plugin directories are rescanned; `None` disables hot reload.
    pub reload_interval: Option<Duration>,
    /// Engine sizing.
    pub engine: EngineConfig,
    /// Default limits.
    pub limits: Limits,
    /// Tenants by id.
    pub tenants: BTreeMap<TenantId, TenantConfig>,
    /// The agent `loom run` builds.
    pub agent: AgentSettings,
    /// `[agents.NAME]`: named agents, for `loom run --agent NAME` and for
    /// architectures that delegate to `agent:NAME`.
    pub agents: BTreeMap<String, AgentSettings>,
    /// Model provider settings.
    pub models: crate::model::settings::ModelSettings,
    /// Retry policy of hosted models.
    pub retry: crate::model::settings::RetrySettings,
    /// Price overrides by model string.
    pub pricing: BTreeMap<String, crate::model::pricing::Price>,
    /// Whether the first-party components embedded in the host are served
    /// (below every plugin directory, which overrides them by name).
    pub builtin_plugins: bool,
    /// The audit log, when `[audit]` is configured.
    pub audit: Option<AuditSettings>,
    /// When the database's commits reach stable storage.
    pub store_sync: crate::store::StoreSync,
    /// `[retrieval]`: the document stores.
    pub retrieval: crate::retrieval::RetrievalSettings,
    /// The database's page cache in bytes (`[store] cache_mib`).
    pub store_cache_bytes: usize,
    /// `[telemetry]`: where spans and metrics go.
    pub telemetry: crate::telemetry::TelemetryConfig,
    /// `[journal]`: crash-resumable runs.
    pub journal: JournalConfig,
    /// `[server]`: `loom serve`'s listener and limits.
    pub server: ServerSettings,
}

/// `[journal]`: whether runs are journaled so a crash can be resumed, and
/// how long journals are kept.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JournalConfig {
    /// Journal every run of the CLI's agents (default true).
    pub enabled: bool,
    /// Keep a run's recorded results after it finished (default false:
    /// they are dropped and only the run's record stays).
    pub keep_finished: bool,
    /// `loom runtime prune` (and each start of `loom run`) deletes journals
    /// whose run last changed more than this many hours ago, finished or
    /// not (default 168, a week; 0 keeps them until pruned by hand).
    pub max_age_hours: u64,
}

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            enabled: true,
            keep_finished: false,
            max_age_hours: 168,
        }
    }
}

/// `[server]`: how `loom serve` listens and what it allows each request
/// and tenant. Every field has a default, so the section is optional.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSettings {
    /// Address to listen on (`--listen` overrides).
    pub listen: String,
    /// Largest request body, in KiB.
    pub max_body_kib: usize,
    /// Runs one tenant may have in flight; more are refused with 429.
    pub max_concurrent_runs_per_tenant: usize,
    /// Streams (SSE) one tenant may hold open; more are refused with 429.
    pub max_streams_per_tenant: usize,
    /// Time a client has to send a request's headers, also the longest a
    /// kept-alive connection may sit idle between requests (ms).
    pub header_timeout_ms: u64,
    /// Time a client has to send a request's body (ms).
    pub body_timeout_ms: u64,
    /// How long a shutdown waits for runs in flight before cancelling them
    /// (they stay resumable from their journals) (ms).
    pub drain_timeout_ms: u64,
    /// Failed authentications one client address may make per minute;
    /// more are answered 429 without checking the key.
    pub auth_failures_per_minute: u32,
    /// Finished runs kept per tenant for `GET /v1/runs` (the oldest go).
    pub finished_runs_kept: usize,
    /// Most MiB of events and answers the finished runs kept per tenant
    /// hold (the oldest go first).
    pub finished_runs_mib: usize,
    /// Bytes of events kept per run for late and reconnecting readers, in
    /// KiB; past it, streamed model text is no longer kept (the answer
    /// still is, in the run's result).
    pub run_events_kib: usize,
    /// How often `loom serve` checks `loom.toml` for changes (ms); 0 turns
    /// reloading off (SIGHUP still reloads).
    pub config_reload_ms: u64,
    /// Hashes of the operator's keys (`loom keys new --operator`): they
    /// read `/metrics` for every tenant, and nothing else.
    pub operator_keys: Vec<crate::tenancy::keys::ApiKeyHash>,
    /// Also offer the configured agents as tools over MCP at `/mcp`
    /// (`agent__<name>`): a call is a whole run of that agent.
    pub mcp_agents: bool,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: "127.0.0.1:7700".into(),
            max_body_kib: 1024,
            max_concurrent_runs_per_tenant: 64,
            max_streams_per_tenant: 2048,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            drain_timeout_ms: 30_000,
            auth_failures_per_minute: 30,
            finished_runs_kept: 1000,
            finished_runs_mib: 64,
            run_events_kib: 4096,
            config_reload_ms: 2000,
            operator_keys: Vec::new(),
            mcp_agents: false,
        }
    }
}

impl ServerSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        let positive = [
            ("server.max_body_kib", self.max_body_kib as u64),
            (
                "server.max_concurrent_runs_per_tenant",
                self.max_concurrent_runs_per_tenant as u64,
            ),
            (
                "server.max_streams_per_tenant",
                self.max_streams_per_tenant as u64,
            ),
            ("server.header_timeout_ms", self.header_timeout_ms),
            ("server.body_timeout_ms", self.body_timeout_ms),
            (
                "server.auth_failures_per_minute",
                u64::from(self.auth_failures_per_minute),
            ),
            ("server.run_events_kib", self.run_events_kib as u64),
            ("server.finished_runs_mib", self.finished_runs_mib as u64),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(invalid(key, "must be greater than 0"));
            }
        }
        if self.max_body_kib > 1 << 20 {
            return Err(invalid(
                "server.max_body_kib",
                "must be at most 1048576 (1 GiB)",
            ));
        }
        if self.run_events_kib > 1 << 20 {
            return Err(invalid(
                "server.run_events_kib",
                "must be at most 1048576 (1 GiB)",
            ));
        }
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(invalid(
                "server.listen",
                "must be an address and port such as 127.0.0.1:7700 or [::]:7700",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "default_data_dir")]
    data_dir: PathBuf,
    #[serde(default)]
    cache_dir: Option<PathBuf>,
    #[serde(default)]
    plugin_dirs: Vec<PathBuf>,
    #[serde(default = "default_reload_ms")]
    reload_interval_ms: u64,
    #[serde(default)]
    engine: EngineConfig,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    tenants: BTreeMap<String, RawTenant>,
    #[serde(default)]
    agent: AgentSettings,
    #[serde(default)]
    agents: BTreeMap<String, AgentSettings>,
    #[serde(default)]
    models: crate::model::settings::ModelSettings,
    #[serde(default)]
    retry: crate::model::settings::RetrySettings,
    #[serde(default)]
    pricing: BTreeMap<String, crate::model::pricing::Price>,
    #[serde(default = "default_true")]
    builtin_plugins: bool,
    #[serde(default)]
    audit: Option<RawAudit>,
    #[serde(default)]
    store: RawStore,
    #[serde(default)]
    retrieval: crate::retrieval::RetrievalSettings,
    #[serde(default)]
    telemetry: crate::telemetry::RawTelemetry,
    #[serde(default)]
    journal: JournalConfig,
    #[serde(default)]
    server: ServerSettings,
}

/// `[store]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    #[serde(default)]
    fsync: RawFsync,
    fsync_interval_ms: Option<u64>,
    cache_mib: Option<usize>,
}

fn default_true() -> bool {
    true
}

fn default_data_dir() -> PathBuf {
    PathBuf::from(".loom")
}

fn default_reload_ms() -> u64 {
    500
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    #[serde(default)]
    plugin_dirs: Vec<PathBuf>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    grants: Grants,
    #[serde(default)]
    budgets: BTreeMap<String, toml::Value>,
    #[serde(default)]
    user_budgets: BTreeMap<String, toml::Value>,
    #[serde(default)]
    users: BTreeMap<String, RawUser>,
    #[serde(default)]
    permissions: RawPermissions,
    #[serde(default)]
    rate_limits: Rates,
    #[serde(default)]
    user_rate_limits: Rates,
    #[serde(default)]
    policies: Vec<RawPolicy>,
    approval_url: Option<String>,
    approval_timeout_ms: Option<u64>,
    #[serde(default)]
    forget_budgets: bool,
    #[serde(default)]
    memory: TenantMemorySettings,
    #[serde(default)]
    mcp_servers: Vec<crate::mcp::config::RawMcpServer>,
    #[serde(default)]
    api_keys: Vec<String>,
}

impl RawTenant {
    fn governance(&self, key: &str, limits: &Limits) -> Result<TenantGovernance, ConfigError> {
        let caps = |table: &BTreeMap<String, toml::Value>, name: &str| {
            BudgetCaps::parse(table).map_err(|e| invalid(&format!("{key}.{name}"), &e.0))
        };
        let mut governance = TenantGovernance {
            budgets: TenantBudgets {
                tenant: caps(&self.budgets, "budgets")?,
                each_user: caps(&self.user_budgets, "user_budgets")?,
                users: BTreeMap::new(),
            },
            permissions: self.permissions.resolve(&format!("{key}.permissions"))?,
            rates: self.rate_limits,
            user_rates: self.user_rate_limits,
            approval_url: self.approval_url.clone(),
            forget_budgets: self.forget_budgets,
            ..TenantGovernance::default()
        };
        self.rate_limits
            .validate()
            .map_err(|e| invalid(&format!("{key}.rate_limits"), &e))?;
        self.user_rate_limits
            .validate()
            .map_err(|e| invalid(&format!("{key}.user_rate_limits"), &e))?;
        if let Some(ms) = self.approval_timeout_ms {
            if ms == 0 {
                return Err(invalid(
                    &format!("{key}.approval_timeout_ms"),
                    "must be greater than 0",
                ));
            }
            governance.approval_timeout = Duration::from_millis(ms);
        }
        if let Some(url) = &self.approval_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(invalid(
                &format!("{key}.approval_url"),
                &format!("`{url}` must be an http:// or https:// URL"),
            ));
        }
        for (name, user) in &self.users {
            let ukey = format!("{key}.users.{name}");
            crate::tenancy::ids::UserId::named(name.clone())
                .map_err(|e| invalid(&ukey, &e.to_string()))?;
            if !user.budgets.is_empty() {
                governance.budgets.users.insert(
                    name.clone(),
                    caps(&user.budgets, &format!("users.{name}.budgets"))?,
                );
            }
            if let Some(permissions) = &user.permissions {
                governance.user_permissions.insert(
                    name.clone(),
                    permissions.resolve(&format!("{ukey}.permissions"))?,
                );
            }
            if let Some(rates) = &user.rate_limits {
                rates
                    .validate()
                    .map_err(|e| invalid(&format!("{ukey}.rate_limits"), &e))?;
                governance.user_rate_overrides.insert(name.clone(), *rates);
            }
        }
        let base = default_policy_limits(limits);
        for (i, policy) in self.policies.iter().enumerate() {
            let pkey = format!("{key}.policies[{i}]");
            if policy.plugin.is_empty() {
                return Err(invalid(
                    &format!("{pkey}.plugin"),
                    "must name a policy plugin",
                ));
            }
            let config = match &policy.config {
                None => "{}".to_owned(),
                Some(value @ toml::Value::Table(_)) => serde_json::to_string(value)
                    .map_err(|e| invalid(&format!("{pkey}.config"), &e.to_string()))?,
                Some(_) => {
                    return Err(invalid(&format!("{pkey}.config"), "must be a table"));
                }
            };
            governance.policies.push(PolicyRef {
                plugin: policy.plugin.clone(),
                config,
                limits: policy.limits.apply(base, &format!("{pkey}.limits"))?,
            });
        }
        Ok(governance)
    }
}

impl LoomConfig {
    /// Read and validate a `loom.toml`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the file, or the key and the fix.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        Self::parse(&text, &base).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parse configuration text; relative paths resolve against `base_dir`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the key and the fix.
    pub fn parse(text: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<text>"),
            message: e.to_string(),
        })?;
        let base_dir = std::path::absolute(base_dir).unwrap_or_else(|_| base_dir.to_owned());
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_owned()
            } else {
                base_dir.join(p)
            }
        };

        let engine = raw.engine;
        if engine.max_instances == 0 {
            return Err(invalid("engine.max_instances", "must be greater than 0"));
        }
        if engine.epoch_tick_ms == 0 || engine.epoch_tick_ms > 1000 {
            return Err(invalid(
                "engine.epoch_tick_ms",
                "must be between 1 and 1000",
            ));
        }
        if engine.memory_keep_resident_kib > engine.max_memory_mib.saturating_mul(1024) {
            return Err(invalid(
                "engine.memory_keep_resident_kib",
                "must not exceed engine.max_memory_mib (in KiB)",
            ));
        }
        if engine.max_memory_mib == 0 || engine.max_memory_mib > 4096 {
            return Err(invalid(
                "engine.max_memory_mib",
                "must be between 1 and 4096",
            ));
        }
        let limits = raw.limits.apply(Limits::default(), "limits")?;
        check_memory(&limits, &engine, "limits.memory_mib")?;

        let mut tenants = BTreeMap::new();
        let mut key_owners = std::collections::HashMap::new();
        for (name, tenant) in raw.tenants {
            let key = format!("tenants.{name}");
            let id = TenantId::new(name.clone()).map_err(|e| invalid(&key, &e.to_string()))?;
            let tenant_limits = tenant.limits.apply(limits, &format!("{key}.limits"))?;
            check_memory(&tenant_limits, &engine, &format!("{key}.limits.memory_mib"))?;
            let grants = resolve_grants(&tenant.grants, &key, &resolve)?;
            let governance = tenant.governance(&key, &tenant_limits)?;
            let mcp_servers = crate::mcp::config::resolve(&key, &tenant.mcp_servers)
                .map_err(|e| invalid(&e.key, &e.message))?;
            let mut api_keys = Vec::with_capacity(tenant.api_keys.len());
            for text in &tenant.api_keys {
                let hash: crate::tenancy::keys::ApiKeyHash =
                    text.parse()
                        .map_err(|e: crate::tenancy::keys::KeyHashError| {
                            invalid(&format!("{key}.api_keys"), &e.to_string())
                        })?;
                if let Some(owner) = key_owners.insert(hash.to_string(), name.clone()) {
                    return Err(invalid(
                        &format!("{key}.api_keys"),
                        &format!(
                            "{hash} is also a key of tenant `{owner}`: a key selects exactly one \
                             tenant, so make a new one with `loom keys new --tenant {name}`"
                        ),
                    ));
                }
                api_keys.push(hash);
            }
            tenants.insert(
                id,
                TenantConfig {
                    plugin_dirs: tenant.plugin_dirs.iter().map(|p| resolve(p)).collect(),
                    limits: tenant_limits,
                    grants,
                    governance: std::sync::Arc::new(governance),
                    memory: tenant.memory.clone(),
                    mcp_servers,
                    api_keys,
                },
            );
        }
        if tenants.is_empty() {
            // A configuration without tenants serves one, `default`.
            tenants.insert(TenantId::default_tenant(), TenantConfig::new(limits));
        }
        let audit = raw
            .audit
            .as_ref()
            .map(|a| a.resolve(&resolve))
            .transpose()?;
        for name in raw.agents.keys() {
            if name.is_empty()
                || name.len() > 64
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(invalid(
                    &format!("agents.{name}"),
                    "agent names are 1-64 characters of [a-zA-Z0-9_-]",
                ));
            }
        }
        for (key, settings) in std::iter::once(("agent".to_owned(), &raw.agent)).chain(
            raw.agents
                .iter()
                .map(|(name, settings)| (format!("agents.{name}"), settings)),
        ) {
            for worker in &settings.workers {
                if !raw.agents.contains_key(worker) {
                    return Err(invalid(
                        &format!("{key}.workers"),
                        &format!(
                            "`{worker}` is not an agent: add [agents.{worker}] or remove it \
                             from workers"
                        ),
                    ));
                }
                if key == format!("agents.{worker}") {
                    return Err(invalid(
                        &format!("{key}.workers"),
                        "an agent cannot be its own worker",
                    ));
                }
            }
        }
        let telemetry = raw
            .telemetry
            .resolve(&resolve)
            .map_err(|e| invalid(&e.key, &e.message))?;
        let data_dir = resolve(&raw.data_dir);
        Ok(LoomConfig {
            cache_dir: raw
                .cache_dir
                .as_deref()
                .map(&resolve)
                .unwrap_or_else(|| data_dir.join("cache")),
            data_dir,
            plugin_dirs: raw.plugin_dirs.iter().map(|p| resolve(p)).collect(),
            reload_interval: (raw.reload_interval_ms > 0)
                .then(|| Duration::from_millis(raw.reload_interval_ms)),
            engine,
            limits,
            tenants,
            base_dir,
            agent: raw.agent,
            agents: raw.agents,
            models: raw.models,
            retry: raw.retry,
            pricing: raw.pricing,
            builtin_plugins: raw.builtin_plugins,
            audit,
            store_sync: match raw.store.fsync {
                RawFsync::Always => crate::store::StoreSync::Always,
                RawFsync::Interval => crate::store::StoreSync::Interval(
                    raw.store.fsync_interval_ms.unwrap_or(100).max(1),
                ),
                RawFsync::Never => {
                    return Err(invalid(
                        "store.fsync",
                        "must be \"always\" or \"interval\" (the database is always made durable eventually)",
                    ));
                }
            },
            retrieval: raw.retrieval,
            telemetry,
            journal: raw.journal,
            server: {
                raw.server.validate()?;
                raw.server
            },
            store_cache_bytes: match raw.store.cache_mib {
                None => crate::store::DEFAULT_CACHE_BYTES,
                Some(mib @ 1..=65_536) => mib << 20,
                Some(_) => {
                    return Err(invalid(
                        "store.cache_mib",
                        "must be between 1 and 65536 (MiB)",
                    ));
                }
            },
        })
    }

    /// Loom's configuration when there is no `loom.toml`: one tenant,
    /// `default`, with nothing granted; data under the user's data directory
    /// (`$LOOM_DATA_DIR`, else for example `~/.local/share/loom`) and one
    /// global plugin directory in it, `<data_dir>/plugins`; the first-party
    /// components are built in.
    pub fn builtin() -> Self {
        let data_dir = std::env::var_os("LOOM_DATA_DIR")
            .map(PathBuf::from)
            .or_else(|| dirs::data_dir().map(|d| d.join("loom")))
            .unwrap_or_else(|| std::env::temp_dir().join("loom"));
        let mut config = Self::minimal(&data_dir);
        config.plugin_dirs = vec![data_dir.join("plugins")];
        config.reload_interval = Some(Duration::from_millis(default_reload_ms()));
        config.tenants.insert(
            TenantId::default_tenant(),
            TenantConfig::new(Limits::default()),
        );
        config
    }

    /// A configuration with no tenants and no plugin directories, data under
    /// `data_dir`; for embedding and tests.
    pub fn minimal(data_dir: impl Into<PathBuf>) -> Self {
        let data_dir = data_dir.into();
        LoomConfig {
            base_dir: PathBuf::from("."),
            cache_dir: data_dir.join("cache"),
            data_dir,
            plugin_dirs: Vec::new(),
            reload_interval: None,
            engine: EngineConfig::default(),
            limits: Limits::default(),
            tenants: BTreeMap::new(),
            agent: AgentSettings::default(),
            agents: BTreeMap::new(),
            models: Default::default(),
            retry: Default::default(),
            pricing: BTreeMap::new(),
            builtin_plugins: true,
            audit: None,
            store_sync: crate::store::StoreSync::Always,
            retrieval: crate::retrieval::RetrievalSettings::default(),
            store_cache_bytes: crate::store::DEFAULT_CACHE_BYTES,
            telemetry: crate::telemetry::TelemetryConfig::default(),
            journal: JournalConfig::default(),
            server: ServerSettings::default(),
        }
    }

    /// The tenant's configuration.
    ///
    /// # Errors
    ///
    /// [`ConfigError::Invalid`] listing the configured tenants when `tenant` is unknown.
    pub fn tenant(&self, tenant: &TenantId) -> Result<&TenantConfig, ConfigError> {
        self.tenants.get(tenant).ok_or_else(|| {
            let known: Vec<&str> = self.tenants.keys().map(TenantId::as_str).collect();
            invalid(
                &format!("tenants.{tenant}"),
                &format!(
                    "no such tenant; configured tenants: {}",
                    if known.is_empty() {
                        "(none)".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            )
        })
    }
}

fn invalid(key: &str, message: &str) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.to_owned(),
    }
}

fn check_memory(limits: &Limits, engine: &EngineConfig, key: &str) -> Result<(), ConfigError> {
    if limits.memory_bytes as u64 > engine.max_memory_mib << 20 {
        return Err(invalid(
            key,
            &format!(
                "{} MiB exceeds engine.max_memory_mib = {}; raise engine.max_memory_mib or lower this",
                limits.memory_bytes >> 20,
                engine.max_memory_mib
            ),
        ));
    }
    Ok(())
}

fn resolve_grants(
    grants: &Grants,
    key: &str,
    resolve: &dyn Fn(&Path) -> PathBuf,
) -> Result<ResolvedGrants, ConfigError> {
    let mut files = Vec::new();
    for (i, file) in grants.files.iter().enumerate() {
        let fkey = format!("{key}.grants.files[{i}]");
        if !file.guest.starts_with('/') {
            return Err(invalid(
                &format!("{fkey}.guest"),
                &format!(
                    "`{}` must be an absolute guest path such as `/data`",
                    file.guest
                ),
            ));
        }
        if files
            .iter()
            .any(|(_, g, _): &(PathBuf, String, bool)| *g == file.guest)
        {
            return Err(invalid(
                &format!("{fkey}.guest"),
                &format!("`{}` is granted twice", file.guest),
            ));
        }
        let host = resolve(&file.host);
        if !host.is_dir() {
            return Err(invalid(
                &format!("{fkey}.host"),
                &format!(
                    "{} is not a directory; create it or fix the path",
                    host.display()
                ),
            ));
        }
        files.push((host, file.guest.clone(), file.write));
    }
    let mut env = Vec::new();
    for (name, value) in &grants.env {
        if name.is_empty() || name.contains('=') || name.contains('\0') {
            return Err(invalid(
                &format!("{key}.grants.env"),
                &format!("bad variable name `{name}`"),
            ));
        }
        let value = match value {
            EnvValue::Literal(v) => v.clone(),
            EnvValue::FromHost { from_host } => std::env::var(from_host).map_err(|_| {
                invalid(
                    &format!("{key}.grants.env.{name}"),
                    &format!("host variable `{from_host}` is not set (or not UTF-8); set it or grant a literal value"),
                )
            })?,
        };
        env.push((name.clone(), crate::secret::Secret::from(value)));
    }
    let mut http = Vec::new();
    for grant in &grants.http {
        let pattern = HostPattern::parse(grant.pattern(), grant.allow_private())
            .map_err(|e| invalid(&format!("{key}.grants.http"), &e.to_string()))?;
        http.push(pattern);
    }
    Ok(ResolvedGrants {
        files,
        env,
        http,
        sockets: grants.sockets.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named() {
        let err = LoomConfig::parse("data_dri = 'x'", Path::new(".")).unwrap_err();
        assert!(err.to_string().contains("data_dri"), "{err}");
        let err = LoomConfig::parse("[tenants.a.grants]\nhttp = ['http://x']", Path::new("."))
            .unwrap_err();
        assert!(err.to_string().contains("tenants.a.grants.http"), "{err}");
    }

    #[test]
    fn limits_merge_over_defaults() {
        let text = "[limits]\ncpu_ms = 50\n[tenants.acme.limits]\nmemory_mib = 16\n";
        let cfg = LoomConfig::parse(text, Path::new("/base")).unwrap();
        let acme = cfg.tenant(&TenantId::new("acme").unwrap()).unwrap();
        assert_eq!(acme.limits.cpu, Duration::from_millis(50));
        assert_eq!(acme.limits.memory_bytes, 16 << 20);
        assert_eq!(cfg.data_dir, Path::new("/base/.loom"));
        let err = cfg.tenant(&TenantId::new("nope").unwrap()).unwrap_err();
        assert!(err.to_string().contains("acme"), "{err}");
    }

    #[test]
    fn telemetry_table_parses_and_names_bad_keys() {
        let cfg = LoomConfig::parse(
            "[telemetry]\nfile = \"t.jsonl\"\n[telemetry.otlp]\nprotocol = \"http\"\n",
            Path::new("/base"),
        )
        .unwrap();
        assert_eq!(
            cfg.telemetry.file.as_deref(),
            Some(Path::new("/base/t.jsonl"))
        );
        assert!(cfg.telemetry.console);
        let err = LoomConfig::parse("[telemetry]\nfiel = \"t\"", Path::new(".")).unwrap_err();
        assert!(err.to_string().contains("fiel"), "{err}");
        let err =
            LoomConfig::parse("[telemetry.otlp]\nprotocol = \"tcp\"", Path::new(".")).unwrap_err();
        assert!(err.to_string().contains("telemetry.otlp.protocol"), "{err}");
    }

    #[test]
    fn memory_limit_cannot_exceed_pool_slot() {
        let err = LoomConfig::parse("[limits]\nmemory_mib = 512", Path::new(".")).unwrap_err();
        assert!(err.to_string().contains("engine.max_memory_mib"), "{err}");
    }
}
