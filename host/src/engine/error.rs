//! Everything the engine can refuse: starting, loading a file, and calls.

use super::bindings::names;
use super::cache;
use super::contract;
use super::types::MAX_COMPONENT_BYTES;

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
    /// The thread that drives CPU limits could not be started.
    #[error("cannot start the epoch ticker thread, without which CPU limits never fire: {0}")]
    Ticker(String),
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
    /// It exports a `loom:plugin` interface of a version this host does not
    /// serve (the export's name is the field; [`contract`] says why).
    #[error("built against {0}, {reason}", reason = unsupported(.0))]
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

/// Why the version of `export` (`loom:plugin/<interface>@<version>`) is
/// not served, and what to do.
fn unsupported(export: &str) -> String {
    match contract::split(export) {
        Some((_, version)) => contract::explain(version),
        None => contract::explain(""),
    }
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
    #[error(
        "plugin `{plugin}` was stopped: it used more than its CPU limit of {limit_ms} ms \
         (its own code and the host work it asked for)"
    )]
    CpuLimit {
        /// The plugin.
        plugin: String,
        /// The limit.
        limit_ms: u64,
    },
    /// The guest tried to grow past its memory budget.
    #[error(
        "plugin `{plugin}` was stopped: it needed {requested} bytes of memory{}, over its limit of {limit} bytes",
        if *host_bytes > 0 { format!(" ({host_bytes} of them held by the host on its behalf)") } else { String::new() }
    )]
    MemoryLimit {
        /// The plugin.
        plugin: String,
        /// The limit.
        limit: usize,
        /// What it asked for in total: linear memory, tables and host memory.
        requested: usize,
        /// The part of `requested` the host held for it (buffers, HTTP
        /// fields, resource-table entries).
        host_bytes: usize,
    },
    /// The guest asked the host for more of a capped resource than a call
    /// may have (open resources, random bytes in one request, ...).
    #[error("plugin `{plugin}` was stopped: it asked for more than {limit} {resource}")]
    ResourceLimit {
        /// The plugin.
        plugin: String,
        /// What it asked for too much of, such as `live host resources`.
        resource: String,
        /// The cap.
        limit: u64,
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
