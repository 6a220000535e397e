//! `[[tenants.T.mcp_servers]]`: the MCP servers whose tools join a tenant's
//! tool set.
//!
//! ```toml
//! [[tenants.acme.mcp_servers]]
//! name = "notes"                        # tools appear as notes__<tool>
//! command = "python3"                   # stdio: the operator's command
//! args = ["notes_server.py"]
//! env = { TOKEN = { from_host = "NOTES_TOKEN" } }
//!
//! [[tenants.acme.mcp_servers]]
//! name = "search"
//! url = "https://mcp.example.com/mcp"   # streamable HTTP
//! headers = { authorization = { from_host = "SEARCH_AUTH" } }
//! call_timeout_ms = 30000
//! ```
//!
//! These entries are read from the operator's `loom.toml` only: nothing a
//! tenant supplies (its plugin directories, manifests, requests) can add
//! one, so spawning a process is always the operator's grant.

use crate::tenancy::grants::EnvValue;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Most servers one tenant may list.
pub const MAX_SERVERS_PER_TENANT: usize = 32;

/// How a server is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum McpTransport {
    /// A child process speaking MCP over its stdin and stdout.
    Stdio {
        /// The program (a path, or a name looked up in `PATH`).
        command: String,
        /// Its arguments.
        args: Vec<String>,
        /// Its whole environment besides `PATH` (nothing else is inherited).
        env: BTreeMap<String, String>,
    },
    /// A streamable HTTP endpoint.
    Http {
        /// The endpoint's URL (http or https).
        url: String,
        /// Headers sent with every request (for example an API key).
        headers: BTreeMap<String, String>,
    },
}

/// One MCP server of a tenant, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpServerConfig {
    /// The server's name: its tools are `<name>__<tool>`.
    pub name: String,
    /// How it is reached.
    pub transport: McpTransport,
    /// How long connecting, the handshake and listing the tools may take.
    pub connect_timeout: Duration,
    /// How long one tool call may take.
    pub call_timeout: Duration,
    /// Most tools taken from the server; a server listing more is refused.
    pub max_tools: usize,
    /// Most bytes of one call's result; a larger result is an error.
    pub max_response_bytes: usize,
}

/// `[[tenants.T.mcp_servers]]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMcpServer {
    name: String,
    command: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, EnvValue>,
    url: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, EnvValue>,
    connect_timeout_ms: Option<u64>,
    call_timeout_ms: Option<u64>,
    max_tools: Option<usize>,
    max_response_bytes: Option<usize>,
}

/// Why an entry is invalid: the key and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Invalid {
    pub(crate) key: String,
    pub(crate) message: String,
}

fn invalid(key: String, message: impl Into<String>) -> Invalid {
    Invalid {
        key,
        message: message.into(),
    }
}

fn resolve_value(key: &str, value: &EnvValue) -> Result<String, Invalid> {
    match value {
        EnvValue::Literal(text) => Ok(text.clone()),
        EnvValue::FromHost { from_host } => std::env::var(from_host).map_err(|_| {
            invalid(
                key.to_owned(),
                format!(
                    "host variable `{from_host}` is not set (or not UTF-8); set it or \
                     give the value directly"
                ),
            )
        }),
    }
}

/// Validate the servers of tenant `key` (`tenants.<name>`).
pub(crate) fn resolve(key: &str, raw: &[RawMcpServer]) -> Result<Vec<McpServerConfig>, Invalid> {
    let list_key = format!("{key}.mcp_servers");
    if raw.len() > MAX_SERVERS_PER_TENANT {
        return Err(invalid(
            list_key,
            format!("at most {MAX_SERVERS_PER_TENANT} MCP servers per tenant"),
        ));
    }
    let mut servers: Vec<McpServerConfig> = Vec::with_capacity(raw.len());
    for (index, server) in raw.iter().enumerate() {
        let at = format!("{list_key}[{index}]");
        let name = &server.name;
        if name.is_empty()
            || name.len() > 32
            || name.contains("__")
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(invalid(
                format!("{at}.name"),
                format!(
                    "`{name}` is not a server name: use 1-32 characters of [a-zA-Z0-9_-] \
                     without `__` (its tools are named <name>__<tool>)"
                ),
            ));
        }
        if name == "agent" {
            return Err(invalid(
                format!("{at}.name"),
                "`agent` is reserved (the MCP server offers configured agents as agent__<name>); \
                 choose another name",
            ));
        }
        if servers.iter().any(|s| &s.name == name) {
            return Err(invalid(
                format!("{at}.name"),
                format!("`{name}` is listed twice; give each server its own name"),
            ));
        }
        let transport = match (&server.command, &server.url) {
            (Some(command), None) => {
                if command.trim().is_empty() {
                    return Err(invalid(
                        format!("{at}.command"),
                        "is empty; name the program that runs the server",
                    ));
                }
                if !server.headers.is_empty() {
                    return Err(invalid(
                        format!("{at}.headers"),
                        "headers are for `url` servers; pass a stdio server what it needs in `env`",
                    ));
                }
                let mut env = BTreeMap::new();
                for (var, value) in &server.env {
                    env.insert(
                        var.clone(),
                        resolve_value(&format!("{at}.env.{var}"), value)?,
                    );
                }
                McpTransport::Stdio {
                    command: command.clone(),
                    args: server.args.clone(),
                    env,
                }
            }
            (None, Some(url)) => {
                let parsed = reqwest::Url::parse(url).map_err(|e| {
                    invalid(format!("{at}.url"), format!("`{url}` is not a URL: {e}"))
                })?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(invalid(
                        format!("{at}.url"),
                        format!("`{url}` must be http:// or https://"),
                    ));
                }
                if !server.args.is_empty() || !server.env.is_empty() {
                    return Err(invalid(
                        format!("{at}.args"),
                        "`args` and `env` are for `command` servers; remove them or use `command`",
                    ));
                }
                let mut headers = BTreeMap::new();
                for (header, value) in &server.headers {
                    let header_key = format!("{at}.headers.{header}");
                    let value = resolve_value(&header_key, value)?;
                    if http::HeaderName::from_bytes(header.as_bytes()).is_err()
                        || http::HeaderValue::from_str(&value).is_err()
                    {
                        return Err(invalid(
                            header_key,
                            "is not a valid HTTP header name and value",
                        ));
                    }
                    headers.insert(header.clone(), value);
                }
                McpTransport::Http {
                    url: url.clone(),
                    headers,
                }
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    at,
                    "has both `command` and `url`; a server is either a local command (stdio) \
                     or a URL (streamable HTTP)",
                ));
            }
            (None, None) => {
                return Err(invalid(
                    at,
                    "needs `command` (a stdio server the host starts) or `url` (a streamable \
                     HTTP server)",
                ));
            }
        };
        let millis = |value: Option<u64>, field: &str, default: u64| match value {
            Some(0) => Err(invalid(format!("{at}.{field}"), "must be greater than 0")),
            Some(ms) if ms > 600_000 => Err(invalid(
                format!("{at}.{field}"),
                "must be at most 600000 (10 minutes)",
            )),
            Some(ms) => Ok(Duration::from_millis(ms)),
            None => Ok(Duration::from_millis(default)),
        };
        let max_tools = server.max_tools.unwrap_or(128);
        if max_tools == 0 || max_tools > 1024 {
            return Err(invalid(
                format!("{at}.max_tools"),
                "must be between 1 and 1024",
            ));
        }
        let max_response_bytes = server.max_response_bytes.unwrap_or(1 << 20);
        if max_response_bytes == 0 || max_response_bytes > 16 << 20 {
            return Err(invalid(
                format!("{at}.max_response_bytes"),
                "must be between 1 and 16777216 (16 MiB)",
            ));
        }
        servers.push(McpServerConfig {
            name: name.clone(),
            transport,
            connect_timeout: millis(server.connect_timeout_ms, "connect_timeout_ms", 10_000)?,
            call_timeout: millis(server.call_timeout_ms, "call_timeout_ms", 60_000)?,
            max_tools,
            max_response_bytes,
        });
    }
    Ok(servers)
}
