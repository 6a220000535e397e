//! A tenant's tools as an MCP server.
//!
//! [`LoomMcpServer`] is an `rmcp` [`ServerHandler`]: `tools/list` lists the
//! tools the tenant's catalog holds, with their JSON Schemas and annotations
//! (`readOnlyHint`, `destructiveHint`, `idempotentHint` from the tool specs);
//! `tools/call` runs one through [`crate::agent::call_tool_governed`], so an
//! MCP call meets the permission mode, the deny lists, the tenant's policy
//! components, the approver, the tool-call budgets and the audit log a
//! run's call meets. A denial or a failing tool is a tool result with
//! `isError: true` whose text says why (`DENIED: ...`, `ERROR: ...`), never
//! a protocol error; an unknown tool is a protocol error (invalid params),
//! as the MCP specification asks.
//!
//! With [`McpServerOptions::agents`], the configured agents are tools too
//! ([`super::agents`]): a call is a whole governed run.
//!
//! Over stdio ([`serve_stdio`], `loom mcp serve`) the server acts for one
//! fixed scope. Over streamable HTTP ([`super::http`]) it acts for the
//! [`Scope`] the host's authentication put into each HTTP request's
//! extensions, and an MCP session stays with the tenant and user that
//! opened it.

use crate::agent::{GovernedCallError, MAX_ARGUMENT_BYTES, call_tool_governed};
use crate::engine::ToolSpec;
use crate::governance::approval::Approver;
use crate::host::Host;
use crate::tenancy::ids::{RunId, Scope, TenantId, UserId};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Extensions,
    Implementation, InitializeRequestParams, InitializeResult, JsonObject, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, Tool, ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler, ServiceExt};
use std::sync::{Arc, OnceLock};

/// How the MCP server behaves, whatever its transport.
#[derive(Clone)]
pub struct McpServerOptions {
    /// Who answers when the permission chain says `ask`. `None`: the
    /// tenant's webhook (`approval_url`) if it has one, else the call is
    /// denied — exactly as in runs.
    pub approver: Option<Arc<dyn Approver>>,
    /// Largest arguments of one call, in bytes (at most
    /// [`MAX_ARGUMENT_BYTES`], the cap of a run's tool call).
    pub max_argument_bytes: usize,
    /// Also offer the configured agents as tools (`agent__<name>`; see
    /// [`super::agents`]).
    pub agents: bool,
    /// Admits the run behind an agent tool call for a tenant: a permit
    /// held while the run lasts, or `None` to refuse the call (`loom
    /// serve`: the tenant's `[server] max_concurrent_runs_per_tenant`).
    /// Without it, only the tenant's rate limits and budgets apply.
    pub run_admission: Option<RunAdmission>,
}

/// See [`McpServerOptions::run_admission`].
pub type RunAdmission =
    Arc<dyn Fn(&TenantId) -> Option<Box<dyn std::any::Any + Send>> + Send + Sync>;

impl Default for McpServerOptions {
    fn default() -> Self {
        McpServerOptions {
            approver: None,
            max_argument_bytes: MAX_ARGUMENT_BYTES,
            agents: false,
            run_admission: None,
        }
    }
}

impl std::fmt::Debug for McpServerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpServerOptions")
            .field(
                "approver",
                &self.approver.as_ref().map(|a| a.name().to_owned()),
            )
            .field("max_argument_bytes", &self.max_argument_bytes)
            .field("agents", &self.agents)
            .field("run_admission", &self.run_admission.is_some())
            .finish()
    }
}

/// Why the stdio server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum McpServeError {
    /// The client's `initialize` failed or the transport broke before it.
    #[error("the MCP session could not start: {0}")]
    Initialize(String),
    /// The session's task ended abnormally.
    #[error("the MCP session ended abnormally: {0}")]
    Session(String),
}

/// Who the server acts for.
#[derive(Clone)]
enum Principal {
    /// One scope for the whole connection (stdio).
    Fixed(Scope),
    /// The scope each HTTP request carries; the first one binds the
    /// handler (one MCP session, or one stateless request).
    PerRequest(Arc<OnceLock<(TenantId, UserId)>>),
}

/// A tenant's tools as an MCP server (an `rmcp` [`ServerHandler`]).
#[derive(Clone)]
pub struct LoomMcpServer {
    host: Arc<Host>,
    options: Arc<McpServerOptions>,
    principal: Principal,
}

impl std::fmt::Debug for LoomMcpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoomMcpServer")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl LoomMcpServer {
    /// A server acting for `scope` on every request (stdio: the operator
    /// chose the tenant and user on the command line). Each tool call gets
    /// a run id of its own.
    pub fn for_scope(host: Arc<Host>, scope: Scope, options: McpServerOptions) -> Self {
        LoomMcpServer {
            host,
            options: Arc::new(options),
            principal: Principal::Fixed(scope),
        }
    }

    /// A server acting for the [`Scope`] in each HTTP request's extensions,
    /// bound to the first one it sees.
    pub(crate) fn for_requests(host: Arc<Host>, options: Arc<McpServerOptions>) -> Self {
        LoomMcpServer {
            host,
            options,
            principal: Principal::PerRequest(Arc::new(OnceLock::new())),
        }
    }

    /// The scope of one request, with a fresh run id.
    ///
    /// # Errors
    ///
    /// Over HTTP: an invalid-request error when the request carries no
    /// authenticated scope, or one of another tenant or user than the
    /// request that opened the session.
    fn scope(&self, extensions: &Extensions) -> Result<Scope, McpError> {
        let mut scope = match &self.principal {
            Principal::Fixed(scope) => scope.clone(),
            Principal::PerRequest(bound) => {
                let scope = extensions
                    .get::<http::request::Parts>()
                    .and_then(|parts| parts.extensions.get::<Scope>())
                    .cloned()
                    .ok_or_else(|| {
                        McpError::invalid_request(
                            "the request carries no authenticated tenant; \
                             send the tenant's API key as a bearer token",
                            None,
                        )
                    })?;
                let (tenant, user) =
                    bound.get_or_init(|| (scope.tenant.clone(), scope.user.clone()));
                if *tenant != scope.tenant || *user != scope.user {
                    return Err(McpError::invalid_request(
                        "this MCP session belongs to another tenant or user; \
                         open a session of your own",
                        None,
                    ));
                }
                scope
            }
        };
        scope.run = RunId::generate();
        scope.idempotency_key = None;
        Ok(scope)
    }

    /// The tools `tenant` sees, as MCP tools: its components' tools, then
    /// those of its own MCP servers.
    async fn tools(&self, tenant: &TenantId) -> Vec<Tool> {
        let catalog = self.host.catalog_for(tenant).await;
        let mut tools: Vec<Tool> = catalog
            .tools(tenant)
            .into_iter()
            .map(|binding| mcp_tool(&binding.spec))
            .collect();
        drop(catalog);
        for remote in self.host.mcp_clients().tools(tenant).await {
            if !tools.iter().any(|t| t.name == remote.spec.name) {
                tools.push(mcp_tool(&remote.spec));
            }
        }
        if self.options.agents {
            for spec in super::agents::agent_tools(self.host.config()) {
                if !tools.iter().any(|t| t.name == spec.name) {
                    tools.push(mcp_tool(&spec));
                }
            }
        }
        tools
    }

    /// Run the agent behind the agent tool `tool`, for `scope`.
    async fn call_agent(
        &self,
        scope: Scope,
        tool: &str,
        agent: Option<String>,
        arguments: &str,
    ) -> CallToolResponse {
        let _permit = match &self.options.run_admission {
            Some(admit) => match admit(&scope.tenant) {
                Some(permit) => Some(permit),
                None => {
                    return error_result(format!(
                        "ERROR: tenant `{}` already has as many runs in flight as it may \
                         ([server] max_concurrent_runs_per_tenant); call `{tool}` again when \
                         one has finished",
                        scope.tenant
                    ));
                }
            },
            None => None,
        };
        let ran = super::agents::run_agent_tool(
            &self.host,
            scope,
            tool,
            agent,
            arguments,
            self.options.approver.clone(),
        )
        .await;
        match ran {
            Ok(result) if result.interrupted => error_result(format!(
                "INTERRUPTED: {}\n{}",
                result.interruption_reason.unwrap_or_default(),
                result.output
            )),
            Ok(result) => {
                let structured = result.parsed.filter(serde_json::Value::is_object);
                let mut answer = CallToolResult::success(vec![ContentBlock::text(result.output)]);
                answer.structured_content = structured;
                answer.into()
            }
            Err(error) => error_result(format!("ERROR: {error}")),
        }
    }
}

/// `spec` as an MCP tool: its name, description, input schema and what
/// Loom knows of its effects.
fn mcp_tool(spec: &ToolSpec) -> Tool {
    let schema: JsonObject = match &spec.parameters {
        serde_json::Value::Object(map) if map.get("type").is_none_or(|t| t == "object") => {
            map.clone()
        }
        // MCP needs an object schema; a tool whose parameters say
        // nothing useful takes any object.
        _ => {
            let mut map = JsonObject::new();
            map.insert("type".into(), "object".into());
            map
        }
    };
    let annotations = ToolAnnotations::new()
        .read_only(!spec.destructive)
        .destructive(spec.destructive)
        .idempotent(spec.idempotent);
    Tool::new(
        spec.name.clone(),
        spec.description.clone(),
        Arc::new(schema),
    )
    .with_annotations(annotations)
}

/// The error result of a call, as a run's model would read it.
fn error_result(text: String) -> CallToolResponse {
    CallToolResult::error(vec![ContentBlock::text(text)]).into()
}

impl ServerHandler for LoomMcpServer {
    fn get_info(&self) -> InitializeResult {
        InitializeResult::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("loom", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Loom's tools for one tenant. Each call passes the tenant's permission \
                 chain, budgets and audit log; a refused call returns `DENIED: <reason>`.",
            )
    }

    async fn initialize(
        &self,
        request: InitializeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<InitializeResult, McpError> {
        // Over HTTP, the request that opens the session binds it.
        self.scope(&context.extensions)?;
        context.peer.set_peer_info(request.clone());
        self.negotiate_initialize(&request)
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let scope = self.scope(&context.extensions)?;
        Ok(ListToolsResult::with_all_items(
            self.tools(&scope.tenant).await,
        ))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let scope = self.scope(&context.extensions)?;
        let arguments = match &request.arguments {
            Some(map) => serde_json::to_string(map)
                .map_err(|e| McpError::invalid_params(e.to_string(), None))?,
            None => "{}".to_owned(),
        };
        let max = self.options.max_argument_bytes.min(MAX_ARGUMENT_BYTES);
        if arguments.len() > max {
            return Ok(error_result(format!(
                "ERROR: the arguments are {} bytes; at most {max} are accepted",
                arguments.len()
            )));
        }
        let tool = request.name.as_ref();
        if self.options.agents
            && let Some(agent) = super::agents::agent_of(self.host.config(), tool)
        {
            let ran = self.call_agent(scope, tool, agent, &arguments);
            return Ok(tokio::select! {
                answer = ran => answer,
                () = context.ct.cancelled() => {
                    error_result("ERROR: the client cancelled the call".into())
                }
            });
        }
        let called = call_tool_governed(
            &self.host,
            scope,
            tool,
            &arguments,
            self.options.approver.clone(),
        );
        let outcome = tokio::select! {
            outcome = called => outcome,
            () = context.ct.cancelled() => {
                return Ok(error_result("ERROR: the client cancelled the call".into()));
            }
        };
        match outcome {
            Ok(output) => {
                let structured = serde_json::from_str::<serde_json::Value>(&output.output)
                    .ok()
                    .filter(serde_json::Value::is_object);
                let mut result = CallToolResult::success(vec![ContentBlock::text(output.output)]);
                result.structured_content = structured;
                Ok(result.into())
            }
            Err(GovernedCallError::Call(crate::engine::CallError::UnknownTool {
                tool,
                tenant,
                available,
            })) => Err(McpError::invalid_params(
                format!(
                    "no tool `{tool}` is available to tenant `{tenant}`; available: {available}"
                ),
                None,
            )),
            Err(error) => Ok(error_result(error.text())),
        }
    }
}

/// Serve `scope`'s tools over stdin and stdout until the client closes the
/// connection. Nothing else may write to stdout meanwhile: logs go to stderr.
///
/// # Errors
///
/// [`McpServeError`] when the session cannot start or ends abnormally.
pub async fn serve_stdio(
    host: Arc<Host>,
    scope: Scope,
    options: McpServerOptions,
) -> Result<(), McpServeError> {
    let server = LoomMcpServer::for_scope(host, scope, options);
    let running = server
        .serve(rmcp::transport::stdio())
        .await
        .map_err(|e| McpServeError::Initialize(e.to_string()))?;
    running
        .waiting()
        .await
        .map_err(|e| McpServeError::Session(e.to_string()))?;
    Ok(())
}
