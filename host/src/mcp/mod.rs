//! The Model Context Protocol (MCP), both ways, with the official Rust SDK
//! (`rmcp`).
//!
//! * [`server`] — a tenant's tools as an MCP server: over stdio
//!   (`loom mcp serve`) or over streamable HTTP ([`http`], mounted at
//!   `/mcp` by `loom serve`). Every call passes the permission chain,
//!   approvals, budgets and audit log exactly as a run's tool call does.
//! * [`agents`] — the configured agents as tools (`agent__<name>`), when
//!   the operator exposes them.
//! * [`http`] — the streamable HTTP service: each MCP session is bound to
//!   the authenticated [`crate::tenancy::ids::Scope`] that opened it.
//! * [`config`] and [`client`] — MCP servers a tenant's `loom.toml` entry
//!   lists (`[[tenants.T.mcp_servers]]`): their tools join the tenant's
//!   tool set as `<server>__<tool>`, behind the same governance, and count
//!   as destructive unless the server says otherwise.

pub mod agents;
pub mod client;
pub mod config;
pub mod http;
pub mod server;

pub use client::{McpClients, RemoteTool};
pub use config::{McpServerConfig, McpTransport};
pub use http::{HostSource, McpHttpService, streamable_http_service, streamable_http_service_from};
pub use server::{LoomMcpServer, McpServerOptions, RunAdmission, serve_stdio};
