//! The sandbox: one wasmtime engine shared by all tenants, the compile cache,
//! and calls into components under limits.
//!
//! * Components are compiled once (or loaded from the [`cache`]) and
//!   pre-linked into an `InstancePre` at load time. Every tool component gets
//!   the same imports (WASI, `wasi:http`, `loom:plugin/context`), so one
//!   `InstancePre` per component serves every tenant: what differs per
//!   tenant — preopens, environment, network grants, limits — lives in the
//!   call's `Store`.
//! * Every call gets a fresh `Store` (no state survives between calls), a
//!   memory budget across all memories and tables, a CPU budget counted in
//!   epoch ticks by a dedicated ticker thread, and a wall-clock timeout.
//! * The pooling allocator is used when the address space allows it, else
//!   instances are allocated on demand.

pub mod bindings;
pub mod cache;
pub mod egress;
pub mod harness;
pub mod state;

use crate::config::{EngineConfig, Limits, PoolingMode};
use crate::tenancy::grants::EffectiveGrants;
use crate::tenancy::ids::{Scope, TenantId, UserId};
use bindings::names;
use bindings::{architecture_export, tool_export};
use cache::{CacheOutcome, CompileCache};
pub use harness::Harness;
use state::{
    CappedPipe, CpuLimitExceeded, CpuMeter, HostState, LogCapture, LogLevel, LogLine, MemoryBudget,
};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Store, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

/// Largest component file Loom loads.
pub const MAX_COMPONENT_BYTES: usize = 64 << 20;

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// wasmtime rejected the configuration.
    #[error("cannot create the WebAssembly engine: {0}")]
    Create(String),
    /// Pooling was required (`engine.pooling = "on"`) but is unavailable.
    #[error(
        "engine.pooling = \"on\" but the pooling allocator cannot reserve its address space \
         ({0}); lower engine.max_instances or engine.max_memory_mib, or set pooling = \"auto\""
    )]
    PoolingUnavailable(String),
    /// The compile cache is unusable.
    #[error(transparent)]
    Cache(#[from] cache::CacheError),
    /// The host's own bindings could not be linked.
    #[error("cannot link host interfaces: {0}")]
    Link(String),
}

/// Why a file could not be loaded as a plugin. Each message says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[serde(tag = "kind", content = "detail", rename_all = "snake_case")]
pub enum LoadError {
    /// Not WebAssembly at all.
    #[error("not a WebAssembly file (bad magic number); is it truncated or another format?")]
    NotWasm,
    /// A core module rather than a component.
    #[error(
        "this is a core WebAssembly module, not a component; build it with \
         `cargo build --target wasm32-wasip2` (or wrap it with `wasm-tools component new`)"
    )]
    CoreModule,
    /// Larger than [`MAX_COMPONENT_BYTES`].
    #[error("component is {0} bytes; the limit is {MAX_COMPONENT_BYTES}")]
    TooLarge(usize),
    /// The compiler rejected it.
    #[error("invalid component: {0}")]
    Invalid(String),
    /// It exports a `loom:plugin` interface of a version this host does not support.
    #[error(
        "built against {0}; this host supports loom:plugin@0.1.x. Rebuild it with a \
         loom-sdk for loom:plugin 0.1"
    )]
    UnsupportedVersion(String),
    /// It exports no `loom:plugin` interface.
    #[error(
        "exports none of {tool}, {arch}, {mem}, {pol}; is it a Loom plugin? (exports: {0})",
        tool = names::TOOL, arch = names::ARCHITECTURE, mem = names::MEMORY, pol = names::POLICY
    )]
    NotAPlugin(String),
    /// It imports something the host does not provide.
    #[error("cannot link: {0}. Loom provides WASI 0.2, wasi:http and loom:plugin/context")]
    Link(String),
    /// Its `list` call failed or returned bad specs.
    #[error("tool list is unusable: {0}")]
    BadTools(String),
}

/// What kind of plugin a component is, from its exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PluginKind {
    /// Exports `tool`.
    Tool,
    /// Exports `architecture`.
    Architecture,
    /// Exports `memory`.
    Memory,
    /// Exports `policy`.
    Policy,
}

impl std::fmt::Display for PluginKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PluginKind::Tool => "tool",
            PluginKind::Architecture => "architecture",
            PluginKind::Memory => "memory",
            PluginKind::Policy => "policy",
        })
    }
}

/// A tool as a component describes it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ToolSpec {
    /// Unique name.
    pub name: String,
    /// Description for the model.
    pub description: String,
    /// JSON Schema of the arguments.
    pub parameters: serde_json::Value,
    /// Whether it changes the world.
    pub destructive: bool,
    /// Whether repeating it is harmless.
    pub idempotent: bool,
}

/// What a component's type says about it, without running it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ComponentShape {
    /// Kind, if it exports a supported Loom interface.
    pub kind: Option<PluginKind>,
    /// The Loom world it targets, such as `tool-plugin`.
    pub world: Option<String>,
    /// Names of its exports.
    pub exports: Vec<String>,
    /// Names of its imports.
    pub imports: Vec<String>,
}

/// A compiled, pre-linked tool component with its tool list.
pub struct ToolComponent {
    pre: wasmtime::component::InstancePre<HostState>,
    indices: tool_export::GuestIndices,
    /// The tools it offers.
    pub tools: Vec<ToolSpec>,
}

/// What an architecture component says about itself.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ArchitectureInfo {
    /// Unique name, such as `react`.
    pub name: String,
    /// What the strategy does.
    pub description: String,
    /// Worker roles it declares: (name, description).
    pub workers: Vec<(String, String)>,
    /// JSON Schema of its configuration.
    pub config_schema: serde_json::Value,
}

/// A compiled, pre-linked architecture component.
pub struct ArchitectureComponent {
    pre: wasmtime::component::InstancePre<HostState>,
    indices: architecture_export::GuestIndices,
    /// What it says about itself.
    pub info: ArchitectureInfo,
}

/// A compiled component, ready to call.
pub struct LoadedComponent {
    /// Hex sha256 of the component's bytes.
    pub sha256: String,
    /// Its type.
    pub shape: ComponentShape,
    /// Whether compilation was served from the cache.
    pub cache: CacheOutcome,
    /// The callable tool component, for tool plugins.
    pub tool: Option<ToolComponent>,
    /// The runnable architecture, for architecture plugins.
    pub architecture: Option<ArchitectureComponent>,
}

/// The error a tool returned (not a sandbox fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
pub enum ToolFailure {
    /// The component has no tool of that name.
    #[error("unknown tool: {0}")]
    UnknownTool(String),
    /// The arguments did not fit the schema.
    #[error("invalid arguments: {0}")]
    InvalidArguments(String),
    /// The tool was refused something it needed.
    #[error("denied: {0}")]
    Denied(String),
    /// The tool failed.
    #[error("failed: {0}")]
    Failed(String),
}

impl From<bindings::types::ToolError> for ToolFailure {
    fn from(error: bindings::types::ToolError) -> Self {
        use bindings::types::ToolError as Wit;
        match error {
            Wit::UnknownTool(m) => ToolFailure::UnknownTool(m),
            Wit::InvalidArguments(m) => ToolFailure::InvalidArguments(m),
            Wit::Denied(m) => ToolFailure::Denied(m),
            Wit::Failed(m) => ToolFailure::Failed(m),
        }
    }
}

impl From<ToolFailure> for bindings::types::ToolError {
    fn from(failure: ToolFailure) -> Self {
        use bindings::types::ToolError as Wit;
        match failure {
            ToolFailure::UnknownTool(m) => Wit::UnknownTool(m),
            ToolFailure::InvalidArguments(m) => Wit::InvalidArguments(m),
            ToolFailure::Denied(m) => Wit::Denied(m),
            ToolFailure::Failed(m) => Wit::Failed(m),
        }
    }
}

/// Why a call produced no output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CallError {
    /// The tool ran and returned an error.
    #[error("tool `{tool}` {failure}")]
    Tool {
        /// The tool.
        tool: String,
        /// Its error.
        failure: ToolFailure,
    },
    /// The tenant is not configured.
    #[error("unknown tenant `{tenant}`: {reason}")]
    UnknownTenant {
        /// The tenant.
        tenant: String,
        /// Which tenants exist.
        reason: String,
    },
    /// No tool of that name is available to the tenant.
    #[error("no tool `{tool}` is available to tenant `{tenant}`; available: {available}")]
    UnknownTool {
        /// The requested name.
        tool: String,
        /// The tenant.
        tenant: String,
        /// Comma-separated names that exist.
        available: String,
    },
    /// The guest spent its CPU budget.
    #[error("plugin `{plugin}` was stopped: it used more than its CPU limit of {limit_ms} ms")]
    CpuLimit {
        /// The plugin.
        plugin: String,
        /// The limit.
        limit_ms: u64,
    },
    /// The guest tried to grow past its memory budget.
    #[error(
        "plugin `{plugin}` was stopped: it needed {requested} bytes of memory, over its limit of {limit} bytes"
    )]
    MemoryLimit {
        /// The plugin.
        plugin: String,
        /// The limit.
        limit: usize,
        /// What it asked for in total.
        requested: usize,
    },
    /// The call took longer than its wall-clock limit.
    #[error(
        "plugin `{plugin}` was stopped: the call took longer than its time limit of {limit_ms} ms"
    )]
    Timeout {
        /// The plugin.
        plugin: String,
        /// The limit.
        limit_ms: u64,
    },
    /// The guest trapped (panic, stack overflow, invalid operation).
    #[error("plugin `{plugin}` crashed: {reason}{}", if stderr.is_empty() { String::new() } else { format!("; its stderr: {stderr}") })]
    Trap {
        /// The plugin.
        plugin: String,
        /// What happened.
        reason: String,
        /// The start of what the guest printed to stderr (a panic message).
        stderr: String,
    },
    /// The guest returned output that is not JSON.
    #[error("plugin `{plugin}` returned output that is not valid JSON: {reason}")]
    InvalidOutput {
        /// The plugin.
        plugin: String,
        /// The parser's complaint.
        reason: String,
    },
    /// The sandbox could not be prepared (for example a granted directory is gone).
    #[error("cannot prepare the sandbox for plugin `{plugin}`: {reason}")]
    Sandbox {
        /// The plugin.
        plugin: String,
        /// What failed.
        reason: String,
    },
}

/// A successful tool call.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ToolOutput {
    /// The output, JSON text (a JSON string with a marker when truncated).
    pub output: String,
    /// The original size in bytes when the output was cut to the limit.
    pub truncated_from: Option<usize>,
    /// Log lines and stdout/stderr of the call.
    pub logs: Vec<LogLine>,
    /// Network attempts the sandbox refused.
    pub denials: Vec<String>,
    /// Wall time of the call, instantiation included.
    pub elapsed: Duration,
}

/// Everything one call needs besides the component.
pub struct CallRequest<'a> {
    /// Who the call runs for.
    pub scope: Arc<Scope>,
    /// The plugin's name, for messages and logs.
    pub plugin: Arc<str>,
    /// What the plugin may touch.
    pub grants: &'a EffectiveGrants,
    /// Limits of the call.
    pub limits: &'a Limits,
    /// The agent run the call serves, for architecture components.
    pub harness: Option<Arc<dyn Harness>>,
}

/// The shared engine: compiles, caches and runs components for every tenant.
pub struct SandboxEngine {
    engine: wasmtime::Engine,
    linker: Linker<HostState>,
    cache: CompileCache,
    pooling: bool,
    tick: Duration,
    _ticker: EpochTicker,
}

/// Increments the engine's epoch on a dedicated OS thread, so a busy guest
/// cannot starve it (a tokio task could be).
struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochTicker {
    fn start(engine: wasmtime::Engine, tick: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("loom-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                }
            })
            .ok();
        EpochTicker { stop, thread }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn base_config() -> wasmtime::Config {
    let mut config = wasmtime::Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .concurrency_support(false)
        .max_wasm_stack(512 << 10)
        .memory_init_cow(true)
        .cranelift_opt_level(wasmtime::OptLevel::Speed);
    config
}

fn pooling_config(engine: &EngineConfig) -> wasmtime::PoolingAllocationConfig {
    let n = engine.max_instances;
    let mut pool = wasmtime::PoolingAllocationConfig::default();
    pool.total_component_instances(n)
        .total_core_instances(n.saturating_mul(8))
        .total_memories(n.saturating_mul(2))
        .total_tables(n.saturating_mul(4))
        .total_stacks(n)
        .max_memory_size((engine.max_memory_mib as usize) << 20)
        .max_core_instances_per_component(16)
        .max_memories_per_component(4)
        .max_tables_per_component(16)
        .max_unused_warm_slots(n.min(100))
        // Reset small tables with memset rather than madvise: cheaper than a
        // syscall and the TLB shootdown it causes on every other core.
        .table_keep_resident(64 << 10)
        // Decommit freed memories in batches to amortise the madvise calls.
        .decommit_batch_size(16)
        // Reset only the pages an instance dirtied (PAGEMAP_SCAN, Linux
        // 6.7+; ignored elsewhere) and keep them resident and writable, so
        // the next instance in the slot takes no copy-on-write faults —
        // each of which costs a TLB shootdown on every other core.
        .pagemap_scan(wasmtime::Enabled::Auto)
        .linear_memory_keep_resident((engine.memory_keep_resident_kib as usize) << 10);
    pool
}

impl SandboxEngine {
    /// Create the engine, its epoch ticker and its compile cache in `cache_dir`.
    ///
    /// # Errors
    ///
    /// [`EngineError`] when wasmtime rejects the configuration, pooling is
    /// required but unavailable, or the cache directory is unusable.
    pub fn new(config: &EngineConfig, cache_dir: &Path) -> Result<Self, EngineError> {
        let tick = Duration::from_millis(config.epoch_tick_ms);
        let (engine, pooling) = match config.pooling {
            PoolingMode::Off => (Self::on_demand()?, false),
            mode => {
                let mut wasm = base_config();
                wasm.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(
                    pooling_config(config),
                ));
                match wasmtime::Engine::new(&wasm) {
                    Ok(engine) => (engine, true),
                    Err(error) if mode == PoolingMode::Auto => {
                        tracing::warn!(%error, "pooling allocator unavailable; allocating instances on demand");
                        (Self::on_demand()?, false)
                    }
                    Err(error) => return Err(EngineError::PoolingUnavailable(error.to_string())),
                }
            }
        };
        let mut linker = Linker::<HostState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| EngineError::Link(e.to_string()))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| EngineError::Link(e.to_string()))?;
        bindings::host_world::Host_::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |state| {
            state
        })
        .map_err(|e| EngineError::Link(e.to_string()))?;
        let cache = CompileCache::open(cache_dir, &engine)?;
        let ticker = EpochTicker::start(engine.clone(), tick);
        Ok(SandboxEngine {
            engine,
            linker,
            cache,
            pooling,
            tick,
            _ticker: ticker,
        })
    }

    fn on_demand() -> Result<wasmtime::Engine, EngineError> {
        wasmtime::Engine::new(&base_config()).map_err(|e| EngineError::Create(e.to_string()))
    }

    /// Whether the pooling allocator is in use.
    pub fn pooling(&self) -> bool {
        self.pooling
    }

    /// The compile cache.
    pub fn cache(&self) -> &CompileCache {
        &self.cache
    }

    /// The underlying wasmtime engine.
    pub fn wasmtime(&self) -> &wasmtime::Engine {
        &self.engine
    }

    /// Check the file's header and size before handing it to the compiler.
    fn precheck(bytes: &[u8]) -> Result<(), LoadError> {
        if bytes.len() > MAX_COMPONENT_BYTES {
            return Err(LoadError::TooLarge(bytes.len()));
        }
        if wasmparser::Parser::is_core_wasm(bytes) {
            return Err(LoadError::CoreModule);
        }
        if !wasmparser::Parser::is_component(bytes) {
            return Err(LoadError::NotWasm);
        }
        Ok(())
    }

    /// Compile (or fetch from cache) a component and describe its type.
    ///
    /// # Errors
    ///
    /// [`LoadError`] when the bytes are not a valid component.
    pub fn compile(
        &self,
        bytes: &[u8],
    ) -> Result<(Component, ComponentShape, String, CacheOutcome), LoadError> {
        Self::precheck(bytes)?;
        let sha256 = cache::sha256_hex(bytes);
        let (component, outcome) = self
            .cache
            .load_or_compile(&self.engine, bytes, &sha256)
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        let shape = self.shape(&component);
        Ok((component, shape, sha256, outcome))
    }

    /// Describe a compiled component's imports and exports.
    pub fn shape(&self, component: &Component) -> ComponentShape {
        let ty = component.component_type();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let imports: Vec<String> = ty
            .imports(&self.engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        let kind = exports.iter().find_map(|name| match name.as_str() {
            names::TOOL => Some(PluginKind::Tool),
            names::ARCHITECTURE => Some(PluginKind::Architecture),
            names::MEMORY => Some(PluginKind::Memory),
            names::POLICY => Some(PluginKind::Policy),
            _ => None,
        });
        let world = kind.map(|k| format!("loom:plugin/{k}-plugin@{}", names::PACKAGE_VERSION));
        ComponentShape {
            kind,
            world,
            exports,
            imports,
        }
    }

    /// Classify a shape: its kind, or why it is not a usable plugin.
    pub fn classify(shape: &ComponentShape) -> Result<PluginKind, LoadError> {
        if let Some(kind) = shape.kind {
            return Ok(kind);
        }
        if let Some(other) = shape
            .exports
            .iter()
            .find(|name| name.starts_with("loom:plugin/"))
        {
            return Err(LoadError::UnsupportedVersion(other.clone()));
        }
        Err(LoadError::NotAPlugin(if shape.exports.is_empty() {
            "none".into()
        } else {
            shape.exports.join(", ")
        }))
    }

    /// Load a component: compile, classify, link, and for tools ask for their list.
    ///
    /// # Errors
    ///
    /// [`LoadError`] saying why the file cannot be served.
    pub async fn load(
        &self,
        bytes: &[u8],
        name: &str,
        limits: &Limits,
    ) -> Result<LoadedComponent, LoadError> {
        let (component, shape, sha256, cache) = self.compile(bytes)?;
        let kind = Self::classify(&shape)?;
        // Memory and policy components are detected and listed; their
        // worlds get host implementations in later work.
        let (tool, architecture) = match kind {
            PluginKind::Tool => (
                Some(self.prepare_tool(&component, name, limits).await?),
                None,
            ),
            PluginKind::Architecture => (
                None,
                Some(self.prepare_architecture(&component, name, limits).await?),
            ),
            PluginKind::Memory | PluginKind::Policy => (None, None),
        };
        Ok(LoadedComponent {
            sha256,
            shape,
            cache,
            tool,
            architecture,
        })
    }

    /// Pre-link `component`, failing with the import the host lacks.
    fn pre_link(
        &self,
        component: &Component,
    ) -> Result<wasmtime::component::InstancePre<HostState>, LoadError> {
        self.linker
            .instantiate_pre(component)
            .map_err(|e| LoadError::Link(format!("{e:#}")))
    }

    /// A scope for calls made while loading (`list`, `describe`).
    fn loader_request<'a>(
        name: &str,
        grants: &'a EffectiveGrants,
        limits: &'a Limits,
    ) -> Result<CallRequest<'a>, LoadError> {
        let scope = Arc::new(Scope::new(
            TenantId::new("loom-loader").map_err(|e| LoadError::BadTools(e.to_string()))?,
            UserId::Anonymous,
        ));
        Ok(CallRequest {
            scope,
            plugin: Arc::from(name),
            grants,
            limits,
            harness: None,
        })
    }

    async fn prepare_architecture(
        &self,
        component: &Component,
        name: &str,
        limits: &Limits,
    ) -> Result<ArchitectureComponent, LoadError> {
        let pre = self.pre_link(component)?;
        let indices = architecture_export::GuestIndices::new(&pre)
            .map_err(|e| LoadError::Link(format!("{e:#}")))?;
        let grants = EffectiveGrants::default();
        let request = Self::loader_request(name, &grants, limits)?;
        let (mut store, _pipes) = self
            .store(&request)
            .map_err(|e| LoadError::BadTools(e.to_string()))?;
        let info = tokio::time::timeout(limits.wall, async {
            let instance = pre.instantiate_async(&mut store).await?;
            let guest = indices.load(&mut store, &instance)?;
            guest.call_describe(&mut store).await
        })
        .await
        .map_err(|_| {
            LoadError::BadTools(format!(
                "`describe` took longer than {} ms",
                limits.wall.as_millis()
            ))
        })?
        .map_err(|e| LoadError::BadTools(format!("`describe` failed: {e:#}")))?;
        let config_schema = serde_json::from_str(&info.config_schema).map_err(|e| {
            LoadError::BadTools(format!("architecture config schema is not JSON: {e}"))
        })?;
        if info.name.is_empty() || info.name.len() > 64 {
            return Err(LoadError::BadTools(format!(
                "architecture name `{}` must be 1-64 characters",
                info.name
            )));
        }
        Ok(ArchitectureComponent {
            pre,
            indices,
            info: ArchitectureInfo {
                name: info.name,
                description: info.description,
                workers: info
                    .workers
                    .into_iter()
                    .map(|w| (w.name, w.description))
                    .collect(),
                config_schema,
            },
        })
    }

    async fn prepare_tool(
        &self,
        component: &Component,
        name: &str,
        limits: &Limits,
    ) -> Result<ToolComponent, LoadError> {
        let pre = self.pre_link(component)?;
        let indices =
            tool_export::GuestIndices::new(&pre).map_err(|e| LoadError::Link(format!("{e:#}")))?;
        let grants = EffectiveGrants::default();
        let request = Self::loader_request(name, &grants, limits)?;
        let (mut store, _pipes) = self
            .store(&request)
            .map_err(|e| LoadError::BadTools(e.to_string()))?;
        let listed = tokio::time::timeout(limits.wall, async {
            let instance = pre.instantiate_async(&mut store).await?;
            let guest = indices.load(&mut store, &instance)?;
            guest.call_list(&mut store).await
        })
        .await
        .map_err(|_| {
            LoadError::BadTools(format!(
                "`list` took longer than {} ms",
                limits.wall.as_millis()
            ))
        })?
        .map_err(|e| LoadError::BadTools(format!("`list` failed: {e:#}")))?;
        let mut tools = Vec::with_capacity(listed.len());
        for spec in listed {
            if spec.name.is_empty()
                || spec.name.len() > 64
                || !spec
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(LoadError::BadTools(format!(
                    "tool name `{}` must be 1-64 characters of [a-zA-Z0-9_-]",
                    spec.name.chars().take(80).collect::<String>()
                )));
            }
            if tools.iter().any(|t: &ToolSpec| t.name == spec.name) {
                return Err(LoadError::BadTools(format!(
                    "tool `{}` is listed twice",
                    spec.name
                )));
            }
            let parameters: serde_json::Value =
                serde_json::from_str(&spec.parameters).map_err(|e| {
                    LoadError::BadTools(format!(
                        "tool `{}` has a parameter schema that is not JSON: {e}",
                        spec.name
                    ))
                })?;
            if !parameters.is_object() {
                return Err(LoadError::BadTools(format!(
                    "tool `{}` has a parameter schema that is not a JSON object",
                    spec.name
                )));
            }
            tools.push(ToolSpec {
                name: spec.name,
                description: spec.description,
                parameters,
                destructive: spec.destructive,
                idempotent: spec.idempotent,
            });
        }
        Ok(ToolComponent {
            pre,
            indices,
            tools,
        })
    }

    /// A fresh store for one call, with its WASI context built from the grants.
    fn store(
        &self,
        request: &CallRequest<'_>,
    ) -> Result<(Store<HostState>, [CappedPipe; 2]), CallError> {
        let grants = request.grants;
        let limits = request.limits;
        let mut wasi = WasiCtxBuilder::new();
        for (host, guest, write) in &grants.files {
            let perms = if *write {
                FsPerms::ReadWrite
            } else {
                FsPerms::ReadOnly
            };
            wasi.preopened_dir(host, guest, perms)
                .map_err(|e| CallError::Sandbox {
                    plugin: request.plugin.to_string(),
                    reason: format!("granted directory {} cannot be opened: {e}", host.display()),
                })?;
        }
        if !grants.env.is_empty() {
            wasi.envs(&grants.env);
        }
        let stdout = CappedPipe::new(limits.max_log_bytes);
        let stderr = CappedPipe::new(limits.max_log_bytes);
        wasi.stdout(stdout.clone()).stderr(stderr.clone());
        let denials = egress::DenialLog::default();
        if grants.sockets.is_empty() {
            wasi.allow_tcp(false).allow_udp(false);
        } else {
            wasi.allow_tcp(true)
                .allow_udp(false)
                .socket_addr_check(egress::socket_check(
                    grants.sockets.iter().copied().collect(),
                    denials.clone(),
                ));
        }
        wasi.allow_ip_name_lookup(false);
        let tick_ms = self.tick.as_millis().max(1) as u64;
        let state = HostState {
            wasi: wasi.build(),
            table: wasmtime::component::ResourceTable::new(),
            http: wasmtime_wasi_http::WasiHttpCtx::new(),
            hooks: egress::EgressHooks {
                allowed: grants.http.iter().cloned().collect(),
                denials,
            },
            memory: MemoryBudget {
                limit: limits.memory_bytes,
                used: 0,
                exceeded: None,
            },
            cpu: CpuMeter {
                ticks: 0,
                max_ticks: (limits.cpu.as_millis() as u64).div_ceil(tick_ms).max(1),
            },
            scope: request.scope.clone(),
            plugin: request.plugin.clone(),
            logs: LogCapture::new(limits.max_log_bytes),
            harness: request.harness.clone(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| &mut state.memory);
        store.epoch_deadline_callback(|mut ctx| {
            let cpu = &mut ctx.data_mut().cpu;
            cpu.ticks += 1;
            if cpu.ticks >= cpu.max_ticks {
                Err(CpuLimitExceeded.into())
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        store.set_epoch_deadline(1);
        Ok((store, [stdout, stderr]))
    }

    /// Call tool `name` of `component` with JSON `arguments` in a fresh sandbox.
    ///
    /// # Errors
    ///
    /// [`CallError`]: the tool's own error, or the limit it broke, or its crash.
    pub async fn call_tool(
        &self,
        component: &ToolComponent,
        request: &CallRequest<'_>,
        name: &str,
        arguments: &str,
    ) -> Result<ToolOutput, CallError> {
        let started = Instant::now();
        let (mut store, [stdout, stderr]) = self.store(request)?;
        let limits = request.limits;
        let arguments = arguments.to_owned();
        let outcome = tokio::time::timeout(limits.wall, async {
            let instance = component.pre.instantiate_async(&mut store).await?;
            let guest = component.indices.load(&mut store, &instance)?;
            guest.call_invoke(&mut store, name, &arguments).await
        })
        .await;
        let plugin = request.plugin.to_string();
        let state = store.data_mut();
        let (out_text, _) = stdout.take();
        let (err_text, _) = stderr.take();
        let scope = state.scope.clone();
        if !out_text.is_empty() {
            state.logs.push(&plugin, &scope, LogLevel::Stdout, out_text);
        }
        let stderr_head: String = err_text.chars().take(2000).collect();
        if !err_text.is_empty() {
            state.logs.push(&plugin, &scope, LogLevel::Stderr, err_text);
        }
        let result = match outcome {
            Err(_elapsed) => Err(CallError::Timeout {
                plugin,
                limit_ms: limits.wall.as_millis() as u64,
            }),
            Ok(Err(error)) => Err(classify_trap(error, state, &plugin, limits, stderr_head)),
            Ok(Ok(Err(failure))) => Err(CallError::Tool {
                tool: name.to_owned(),
                failure: failure.into(),
            }),
            Ok(Ok(Ok(output))) => finish_output(output, limits.max_output_bytes, &plugin).map(
                |(output, truncated_from)| ToolOutput {
                    output,
                    truncated_from,
                    logs: Vec::new(),
                    denials: Vec::new(),
                    elapsed: Duration::ZERO,
                },
            ),
        };
        let logs = std::mem::take(&mut state.logs.lines);
        let denials = state
            .hooks
            .denials
            .lock()
            .map(|mut d| std::mem::take(&mut *d))
            .unwrap_or_default();
        result.map(|mut output| {
            output.logs = logs;
            output.denials = denials;
            output.elapsed = started.elapsed();
            output
        })
    }
}

impl SandboxEngine {
    /// Run an agent loop: instantiate `component` in a fresh sandbox whose
    /// `harness` import is `request.harness`, and call its `run`.
    ///
    /// # Errors
    ///
    /// [`CallError`] when the architecture breaks a limit or crashes; its own
    /// `run-error` is the inner `Err`.
    pub async fn run_architecture(
        &self,
        component: &ArchitectureComponent,
        request: &CallRequest<'_>,
        input: architecture_export::RunInput,
    ) -> Result<Result<architecture_export::RunOutput, architecture_export::RunError>, CallError>
    {
        let (mut store, [_stdout, stderr]) = self.store(request)?;
        let limits = request.limits;
        let outcome = tokio::time::timeout(limits.wall, async {
            let instance = component.pre.instantiate_async(&mut store).await?;
            let guest = component.indices.load(&mut store, &instance)?;
            guest.call_run(&mut store, &input).await
        })
        .await;
        let plugin = request.plugin.to_string();
        match outcome {
            Err(_elapsed) => Err(CallError::Timeout {
                plugin,
                limit_ms: limits.wall.as_millis() as u64,
            }),
            Ok(Err(error)) => {
                let (err_text, _) = stderr.take();
                let head: String = err_text.chars().take(2000).collect();
                Err(classify_trap(error, store.data(), &plugin, limits, head))
            }
            Ok(Ok(result)) => Ok(result),
        }
    }
}

/// Turn a guest failure into the limit it broke or a clear crash report.
fn classify_trap(
    error: wasmtime::Error,
    state: &HostState,
    plugin: &str,
    limits: &Limits,
    stderr: String,
) -> CallError {
    if error.downcast_ref::<CpuLimitExceeded>().is_some() {
        return CallError::CpuLimit {
            plugin: plugin.to_owned(),
            limit_ms: limits.cpu.as_millis() as u64,
        };
    }
    if let Some(requested) = state.memory.exceeded {
        return CallError::MemoryLimit {
            plugin: plugin.to_owned(),
            limit: state.memory.limit,
            requested,
        };
    }
    let reason = match error.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::StackOverflow) => "stack overflow (unbounded recursion?)".to_owned(),
        Some(wasmtime::Trap::UnreachableCodeReached) => {
            "it panicked or aborted (wasm `unreachable`)".to_owned()
        }
        Some(wasmtime::Trap::OutOfFuel) | Some(wasmtime::Trap::Interrupt) => {
            "it was interrupted".to_owned()
        }
        Some(wasmtime::Trap::MemoryOutOfBounds) => {
            "out of bounds memory access (often the guest's own \
             stack in linear memory overflowing: unbounded recursion?)"
                .to_owned()
        }
        Some(trap) => format!("trap: {trap}"),
        None => format!("{error:#}"),
    };
    CallError::Trap {
        plugin: plugin.to_owned(),
        reason,
        stderr,
    }
}

/// Validate the guest's JSON output and cut it to `max` bytes.
fn finish_output(
    output: String,
    max: usize,
    plugin: &str,
) -> Result<(String, Option<usize>), CallError> {
    if output.len() <= max {
        serde_json::from_str::<serde::de::IgnoredAny>(&output).map_err(|e| {
            CallError::InvalidOutput {
                plugin: plugin.to_owned(),
                reason: e.to_string(),
            }
        })?;
        return Ok((output, None));
    }
    let original = output.len();
    let mut cut = max;
    while !output.is_char_boundary(cut) {
        cut -= 1;
    }
    let marker = format!(
        "{}\n[output truncated by Loom: kept {cut} of {original} bytes]",
        &output[..cut]
    );
    let json = serde_json::to_string(&marker).map_err(|e| CallError::InvalidOutput {
        plugin: plugin.to_owned(),
        reason: e.to_string(),
    })?;
    Ok((json, Some(original)))
}
