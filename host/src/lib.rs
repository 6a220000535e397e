//! Loom's host: a multi-tenant harness for LLM agents whose tools,
//! architectures, memory backends and policies are sandboxed WebAssembly
//! components.
//!
//! The crate is layered, dependencies pointing one way:
//!
//! * [`tenancy`] — typed ids ([`tenancy::ids::TenantId`], [`tenancy::ids::UserId`], ...)
//!   and the capabilities tenants grant.
//! * [`config`] — `loom.toml`.
//! * [`engine`] — the wasmtime engine, compile cache, and calls into components
//!   under CPU, memory, time and output limits.
//! * [`plugins`] — plugin directories, manifests, kind detection and hot reload.
//! * [`host`] — [`Host`], the facade: load a config, list plugins, call tools.
//! * [`service`] — `loom serve`: the multi-tenant HTTP API, the
//!   OpenAI-compatible endpoint, metrics.
//! * [`telemetry`] — spans and metrics to the console, a JSONL file, memory
//!   or OpenTelemetry (OTLP).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use loom_host::{Host, LoomConfig, tenancy::ids::{Scope, TenantId, UserId}};
//!
//! let config = LoomConfig::load("loom.toml".as_ref())?;
//! let host = Host::start(config).await?;
//! let scope = Scope::new(TenantId::new("acme")?, UserId::named("alice")?);
//! let output = host.call_tool(scope, "calculate", r#"{"expression":"6*7"}"#).await?;
//! println!("{}", output.output);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod agent;
pub mod allocator;
pub mod config;
pub mod engine;
pub mod governance;
pub mod host;
pub mod mcp;
pub mod memory;
pub mod model;
pub mod plugins;
pub mod retrieval;
pub mod secret;
pub mod service;
pub mod store;
mod sync;
pub mod telemetry;
pub mod tenancy;
pub mod tls;

pub use agent::{
    Agent, AgentBuilder, AgentError, GateLimits, MemoryOptions, RunEvent, RunRequest, RunResult,
    RunStream,
};
pub use config::{Limits, LoomConfig};
pub use engine::{CallError, ToolFailure, ToolOutput};
pub use host::{ArchitectureRun, Host, HostError, Inspection, ToolRun};
pub use secret::Secret;
pub use tenancy::ids::{RunId, Scope, SessionId, TenantId, UserId};
