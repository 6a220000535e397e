//! MCP client: the tools of the MCP servers a tenant's entry in the
//! operator's `loom.toml` lists join that tenant's tool set.
//!
//! Each server ([`super::config::McpServerConfig`]) is connected lazily,
//! the first time the tenant's tools are needed, within its connect
//! timeout; its tools are listed once per connection and named
//! `<server>__<tool>` (the characters every model provider accepts in a
//! function name). A tool is destructive unless the server annotates it
//! `readOnlyHint: true` or `destructiveHint: false`; it is idempotent only
//! when annotated so. Calls go through the same permission chain, budgets
//! and audit log as component tools (the caller governs them; this module
//! only talks to the server), with a per-call timeout and a cap on the
//! result's size.
//!
//! A server that cannot be reached, or whose connection breaks, is
//! reported with a clear error and connected again on a later use, after
//! a back-off that doubles up to a minute. A call that fails because the
//! connection broke is never sent again by the host: the server may have
//! acted on it. A stdio server's process is killed when its connection is
//! dropped — when it breaks, or when the host is dropped.

use super::config::{McpServerConfig, McpTransport};
use crate::config::LoomConfig;
use crate::engine::{CallError, ToolFailure, ToolOutput, ToolSpec};
use crate::tenancy::ids::TenantId;
use rmcp::model::{CallToolRequestParams, ContentBlock, JsonObject};
use rmcp::service::{RoleClient, RunningService, ServiceError, ServiceExt};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes of a remote tool's description kept.
const MAX_DESCRIPTION_BYTES: usize = 4096;
/// Bytes of a remote tool's input schema accepted.
const MAX_SCHEMA_BYTES: usize = 64 << 10;
/// Bytes of a stdio server's stderr kept for error messages.
const STDERR_TAIL_BYTES: usize = 2048;
/// Longest wait before a failed server is tried again.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Every tenant's MCP servers.
#[derive(Default)]
pub struct McpClients {
    servers: HashMap<TenantId, Vec<Arc<ServerClient>>>,
}

impl std::fmt::Debug for McpClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpClients")
            .field("tenants", &self.servers.len())
            .finish()
    }
}

impl McpClients {
    /// The servers `config`'s tenants list; nothing is connected yet.
    pub fn new(config: &LoomConfig) -> Self {
        let servers = config
            .tenants
            .iter()
            .filter(|(_, tenant)| !tenant.mcp_servers.is_empty())
            .map(|(id, tenant)| {
                let clients = tenant
                    .mcp_servers
                    .iter()
                    .map(|server| {
                        Arc::new(ServerClient {
                            config: server.clone(),
                            tenant: id.clone(),
                            state: tokio::sync::Mutex::new(State::Idle),
                        })
                    })
                    .collect();
                (id.clone(), clients)
            })
            .collect();
        McpClients { servers }
    }

    /// Whether `tenant` lists any MCP server.
    pub fn has_servers(&self, tenant: &TenantId) -> bool {
        self.servers.get(tenant).is_some_and(|s| !s.is_empty())
    }

    /// The tools of `tenant`'s MCP servers, connecting those not connected
    /// (in parallel, each within its connect timeout). A server that fails
    /// is left out, with a warning naming it and why.
    pub async fn tools(&self, tenant: &TenantId) -> Vec<RemoteTool> {
        let Some(servers) = self.servers.get(tenant) else {
            return Vec::new();
        };
        let listed = futures_util::future::join_all(servers.iter().map(|server| async move {
            match server.connection().await {
                Ok(connection) => connection
                    .tools
                    .iter()
                    .map(|(spec, remote)| RemoteTool {
                        spec: spec.clone(),
                        remote_name: remote.clone(),
                        server: server.clone(),
                    })
                    .collect(),
                Err(error) => {
                    tracing::warn!(tenant = %tenant, server = %server.config.name, %error,
                        "an MCP server's tools are unavailable");
                    Vec::new()
                }
            }
        }))
        .await;
        listed.into_iter().flatten().collect()
    }

    /// The tool `name` (`<server>__<tool>`) of `tenant`, connecting only its
    /// server.
    ///
    /// # Errors
    ///
    /// `Ok(None)` when no server of the tenant has that prefix or the server
    /// has no such tool; [`CallError::Tool`] when the server cannot be
    /// reached.
    pub async fn tool(
        &self,
        tenant: &TenantId,
        name: &str,
    ) -> Result<Option<RemoteTool>, CallError> {
        let Some((prefix, _)) = name.split_once("__") else {
            return Ok(None);
        };
        let Some(server) = self
            .servers
            .get(tenant)
            .and_then(|servers| servers.iter().find(|s| s.config.name == prefix))
        else {
            return Ok(None);
        };
        let connection = server.connection().await.map_err(|error| CallError::Tool {
            tool: name.to_owned(),
            failure: ToolFailure::Failed(error),
        })?;
        Ok(connection
            .tools
            .iter()
            .find(|(spec, _)| spec.name == name)
            .map(|(spec, remote)| RemoteTool {
                spec: spec.clone(),
                remote_name: remote.clone(),
                server: server.clone(),
            }))
    }
}

/// One tool of an MCP server, as the tenant sees it.
#[derive(Clone)]
pub struct RemoteTool {
    /// Its spec: `<server>__<tool>`, the server's description and input
    /// schema, destructive unless annotated otherwise.
    pub spec: ToolSpec,
    remote_name: String,
    server: Arc<ServerClient>,
}

impl std::fmt::Debug for RemoteTool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteTool")
            .field("spec", &self.spec)
            .field("server", &self.server.config.name)
            .finish()
    }
}

impl RemoteTool {
    /// The server's name.
    pub fn server(&self) -> &str {
        &self.server.config.name
    }

    /// Call the tool with JSON `arguments` (an object) within the server's
    /// call timeout. This does not govern the call: callers run the
    /// permission chain first.
    ///
    /// # Errors
    ///
    /// [`CallError::Tool`]: invalid arguments, the server's own error
    /// (`isError`), a result over the size cap, no answer in time, or a
    /// broken connection (the call is not sent again).
    pub async fn call(&self, arguments: &str) -> Result<ToolOutput, CallError> {
        let started = Instant::now();
        let fail = |failure| CallError::Tool {
            tool: self.spec.name.clone(),
            failure,
        };
        let arguments: JsonObject = serde_json::from_str(arguments).map_err(|e| {
            fail(ToolFailure::InvalidArguments(format!(
                "the arguments must be a JSON object: {e}"
            )))
        })?;
        let connection = self
            .server
            .connection()
            .await
            .map_err(|e| fail(ToolFailure::Failed(e)))?;
        let config = &self.server.config;
        let request =
            CallToolRequestParams::new(self.remote_name.clone()).with_arguments(arguments);
        let answered = tokio::time::timeout(
            config.call_timeout,
            connection.service.peer().call_tool(request),
        )
        .await;
        let result = match answered {
            Err(_) => {
                return Err(fail(ToolFailure::Failed(format!(
                    "MCP server `{}` did not answer within {} ms (call_timeout_ms); a result \
                     over 16 MiB is dropped unread and ends here too",
                    config.name,
                    config.call_timeout.as_millis()
                ))));
            }
            Ok(Err(error)) => {
                let broken = matches!(
                    error,
                    ServiceError::TransportClosed | ServiceError::TransportSend(_)
                );
                if broken {
                    self.server.broke(&connection).await;
                }
                let mut message = format!("MCP server `{}` failed: {error}", config.name);
                if broken {
                    message.push_str(&connection.died_because());
                    message.push_str(
                        "; the call was not retried, and the server is connected again on \
                         the next use",
                    );
                }
                return Err(fail(ToolFailure::Failed(message)));
            }
            Ok(Ok(result)) => result,
        };
        let mut text = String::new();
        for block in &result.content {
            match block {
                ContentBlock::Text(content) => text.push_str(&content.text),
                _ => text.push_str("[non-text content omitted]"),
            }
            if text.len() > config.max_response_bytes {
                break;
            }
        }
        let structured = match &result.structured_content {
            Some(value) => serde_json::to_string(value).ok(),
            None => None,
        };
        let size = text.len().max(structured.as_ref().map_or(0, String::len));
        if size > config.max_response_bytes {
            return Err(fail(ToolFailure::Failed(format!(
                "MCP server `{}` answered with over {} bytes; at most {} are accepted \
                 (max_response_bytes)",
                config.name, size, config.max_response_bytes
            ))));
        }
        if result.is_error == Some(true) {
            return Err(fail(ToolFailure::Failed(text)));
        }
        // Tool output is JSON: structured content, else text that is JSON,
        // else the text as a JSON string.
        let output = match structured {
            Some(json) => json,
            None if serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok() => text,
            None => serde_json::Value::String(text).to_string(),
        };
        Ok(ToolOutput::from_host(output, started))
    }
}

/// One MCP server of one tenant.
struct ServerClient {
    config: McpServerConfig,
    tenant: TenantId,
    state: tokio::sync::Mutex<State>,
}

enum State {
    /// Not connected (yet, or since the connection broke).
    Idle,
    Ready(Arc<Connection>),
    /// The last attempt failed; the next waits until `retry_at`.
    Failed {
        error: String,
        retry_at: Instant,
        failures: u32,
    },
}

/// A live connection and what the server listed on it.
struct Connection {
    service: RunningService<RoleClient, ()>,
    /// (spec as the tenant sees it, the server's own name).
    tools: Vec<(ToolSpec, String)>,
    /// A stdio server's process, killed when this is dropped.
    child: Option<tokio::sync::Mutex<tokio::process::Child>>,
    /// The end of a stdio server's stderr.
    stderr: Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Connection {
    /// Why a stdio server's connection ended, when its process did.
    fn died_because(&self) -> String {
        died_because(self.child.as_ref(), &self.stderr)
    }
}

/// A stdio server's exit status (when it exited) and the end of its
/// stderr, for an error message; empty for an HTTP server.
fn died_because(
    child: Option<&tokio::sync::Mutex<tokio::process::Child>>,
    stderr: &std::sync::Mutex<Vec<u8>>,
) -> String {
    let Some(child) = child else {
        return String::new();
    };
    let status = child
        .try_lock()
        .ok()
        .and_then(|mut child| child.try_wait().ok().flatten());
    let tail = String::from_utf8_lossy(&crate::sync::lock(stderr))
        .trim()
        .to_owned();
    let mut text = String::new();
    if let Some(status) = status {
        text.push_str(&format!(" (the server process exited: {status})"));
    }
    if !tail.is_empty() {
        text.push_str(&format!(
            "; its stderr ended with: {}",
            crate::engine::boundary::escape_text(&tail, STDERR_TAIL_BYTES)
        ));
    }
    text
}

impl ServerClient {
    /// The live connection, connecting if there is none (and the back-off
    /// after a failure has passed).
    async fn connection(&self) -> Result<Arc<Connection>, String> {
        let mut state = self.state.lock().await;
        match &*state {
            State::Ready(connection) if !connection.service.is_closed() => {
                return Ok(connection.clone());
            }
            State::Failed {
                error, retry_at, ..
            } if Instant::now() < *retry_at => {
                return Err(format!(
                    "{error} (tried again in {} s)",
                    retry_at.saturating_duration_since(Instant::now()).as_secs() + 1
                ));
            }
            _ => {}
        }
        let failures = match &*state {
            State::Failed { failures, .. } => *failures,
            _ => 0,
        };
        let connected =
            match tokio::time::timeout(self.config.connect_timeout, self.connect()).await {
                Ok(result) => result,
                Err(_) => Err(format!(
                    "it did not connect and list its tools within {} ms (connect_timeout_ms)",
                    self.config.connect_timeout.as_millis()
                )),
            };
        match connected {
            Ok(connection) => {
                let connection = Arc::new(connection);
                tracing::info!(tenant = %self.tenant, server = %self.config.name,
                    tools = connection.tools.len(), "connected to an MCP server");
                *state = State::Ready(connection.clone());
                Ok(connection)
            }
            Err(error) => {
                let error = format!("MCP server `{}` is unavailable: {error}", self.config.name);
                let backoff = Duration::from_secs(1u64 << failures.min(6)).min(MAX_BACKOFF);
                *state = State::Failed {
                    error: error.clone(),
                    retry_at: Instant::now() + backoff,
                    failures: failures.saturating_add(1),
                };
                Err(error)
            }
        }
    }

    /// Forget `connection` if it is still the current one: it broke.
    async fn broke(&self, connection: &Arc<Connection>) {
        let mut state = self.state.lock().await;
        if let State::Ready(current) = &*state
            && Arc::ptr_eq(current, connection)
        {
            *state = State::Idle;
        }
    }

    /// Start the server (stdio) or reach it (HTTP), shake hands and list
    /// its tools.
    async fn connect(&self) -> Result<Connection, String> {
        let stderr = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (service, child) = match &self.config.transport {
            McpTransport::Stdio { command, args, env } => {
                let mut process = tokio::process::Command::new(command);
                process
                    .args(args)
                    .env_clear()
                    .envs(std::env::var_os("PATH").map(|path| ("PATH", path)))
                    .envs(env)
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .kill_on_drop(true);
                let mut child = process
                    .spawn()
                    .map_err(|e| format!("cannot start `{command}`: {e}"))?;
                let (Some(stdout), Some(stdin)) = (child.stdout.take(), child.stdin.take()) else {
                    return Err(format!("`{command}` started without pipes"));
                };
                if let Some(err) = child.stderr.take() {
                    tokio::spawn(keep_tail(err, stderr.clone()));
                }
                let child = tokio::sync::Mutex::new(child);
                let service = match ().serve((stdout, stdin)).await {
                    Ok(service) => service,
                    Err(error) => {
                        // Let a dying process finish and its stderr drain.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        return Err(format!(
                            "the MCP handshake failed: {error}{}",
                            died_because(Some(&child), &stderr)
                        ));
                    }
                };
                (service, Some(child))
            }
            McpTransport::Http { url, headers } => {
                let client = reqwest::Client::builder()
                    .tls_backend_preconfigured(crate::tls::client_config_h2())
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
                let headers = headers
                    .iter()
                    .filter_map(|(name, value)| {
                        Some((
                            http::HeaderName::from_bytes(name.as_bytes()).ok()?,
                            http::HeaderValue::from_str(value).ok()?,
                        ))
                    })
                    .collect();
                let cap = self.config.max_response_bytes.saturating_add(64 << 10);
                let transport = rmcp::transport::StreamableHttpClientTransport::with_client(
                    client,
                    rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig::with_uri(
                        url.as_str(),
                    )
                    .custom_headers(headers)
                    .max_sse_event_size(cap)
                    .max_json_response_size(cap),
                );
                let service =
                    ().serve(transport)
                        .await
                        .map_err(|e| format!("the MCP handshake failed: {e}"))?;
                (service, None)
            }
        };
        let listed = match service.peer().list_all_tools().await {
            Ok(listed) => listed,
            Err(error) => {
                let connection = Connection {
                    service,
                    tools: Vec::new(),
                    child,
                    stderr,
                };
                return Err(format!(
                    "listing its tools failed: {error}{}",
                    connection.died_because()
                ));
            }
        };
        if listed.len() > self.config.max_tools {
            return Err(format!(
                "it lists {} tools; at most {} are taken (max_tools)",
                listed.len(),
                self.config.max_tools
            ));
        }
        let mut tools: Vec<(ToolSpec, String)> = Vec::with_capacity(listed.len());
        for tool in listed {
            match self.spec(&tool) {
                Ok(spec) if !tools.iter().any(|(s, _)| s.name == spec.name) => {
                    tools.push((spec, tool.name.to_string()));
                }
                Ok(spec) => {
                    tracing::warn!(server = %self.config.name, tool = %spec.name,
                        "an MCP server listed a tool twice; keeping the first");
                }
                Err(reason) => {
                    tracing::warn!(server = %self.config.name, %reason,
                        "an MCP server's tool was left out");
                }
            }
        }
        Ok(Connection {
            service,
            tools,
            child,
            stderr,
        })
    }

    /// The spec of the server's `tool` as the tenant sees it.
    fn spec(&self, tool: &rmcp::model::Tool) -> Result<ToolSpec, String> {
        let remote = tool.name.as_ref();
        let name = format!("{}__{remote}", self.config.name);
        if remote.is_empty()
            || name.len() > 64
            || !remote
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!(
                "tool `{}`: Loom's tool names are 1-64 characters of [a-zA-Z0-9_-] \
                 (with the `{}__` prefix)",
                crate::engine::boundary::escape_text(remote, 80),
                self.config.name
            ));
        }
        let parameters = serde_json::Value::Object((*tool.input_schema).clone());
        if parameters.to_string().len() > MAX_SCHEMA_BYTES {
            return Err(format!(
                "tool `{remote}`: its input schema is over {MAX_SCHEMA_BYTES} bytes"
            ));
        }
        let mut description = tool.description.as_deref().unwrap_or_default().to_owned();
        crate::engine::boundary::cut_to(&mut description, MAX_DESCRIPTION_BYTES);
        let annotations = tool.annotations.as_ref();
        // Unknown effects count as destructive: only the server's own
        // word that the tool only reads, or does not destroy, lifts it.
        let destructive = !annotations
            .is_some_and(|a| a.read_only_hint == Some(true) || a.destructive_hint == Some(false));
        Ok(ToolSpec {
            name,
            description,
            parameters,
            destructive,
            idempotent: annotations.is_some_and(|a| a.idempotent_hint == Some(true)),
        })
    }
}

/// Keep the last [`STDERR_TAIL_BYTES`] of a stdio server's stderr.
async fn keep_tail(mut stderr: tokio::process::ChildStderr, tail: Arc<std::sync::Mutex<Vec<u8>>>) {
    use tokio::io::AsyncReadExt;
    let mut buffer = [0u8; 1024];
    loop {
        match stderr.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => {
                let mut tail = crate::sync::lock(&tail);
                tail.extend_from_slice(&buffer[..read]);
                let excess = tail.len().saturating_sub(STDERR_TAIL_BYTES);
                tail.drain(..excess);
            }
        }
    }
}
