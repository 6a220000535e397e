//! The MCP server over streamable HTTP, for `loom serve` to mount at `/mcp`.
//!
//! [`streamable_http_service`] returns a tower service (`rmcp`'s streamable
//! HTTP server behind a guard). It trusts one thing from the layers in
//! front of it: the authenticated [`Scope`] (tenant and user) that the
//! host's authentication puts into each request's extensions. The guard
//!
//! * refuses a request without one (401), before `rmcp` sees it;
//! * records which tenant and user opened each MCP session (from the
//!   `Mcp-Session-Id` header of the `initialize` response), and answers a
//!   later request on that session from anyone else — a key of another
//!   tenant, or another user's — as if the session did not exist (404),
//!   whatever its method (POST, GET of the event stream, DELETE);
//! * forgets a session when it is deleted or `rmcp` has dropped it.
//!
//! Inside, each handler checks the scope again ([`super::server`]), and
//! stateless requests (protocol `2026-07-28`) act for the scope they carry.

use super::server::{LoomMcpServer, McpServerOptions};
use crate::host::Host;
use crate::sync::lock;
use crate::tenancy::ids::{Scope, TenantId, UserId};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use http_body_util::BodyExt;
use http_body_util::combinators::BoxBody;
use rmcp::transport::StreamableHttpServerConfig;
use rmcp::transport::StreamableHttpService;
use rmcp::transport::streamable_http_server::SessionManager;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// The header carrying the MCP session id.
const SESSION_HEADER: &str = "mcp-session-id";

/// Sessions remembered before the guard drops those `rmcp` has closed.
const PRUNE_AT: usize = 4096;

/// The response type of [`McpHttpService`].
pub type McpResponse = http::Response<BoxBody<Bytes, Infallible>>;

/// Who opened each live session.
type Owners = Arc<Mutex<HashMap<String, (TenantId, UserId)>>>;

/// The MCP server over streamable HTTP: a tower service of
/// `http::Request<B>` to [`McpResponse`], cheap to clone. Mount it with
/// `axum::Router::nest_service("/mcp", service)` behind the layer that puts
/// the caller's [`Scope`] into the request's extensions.
#[derive(Clone)]
pub struct McpHttpService {
    inner: StreamableHttpService<LoomMcpServer, LocalSessionManager>,
    sessions: Arc<LocalSessionManager>,
    owners: Owners,
}

impl std::fmt::Debug for McpHttpService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpHttpService").finish_non_exhaustive()
    }
}

/// Where each new MCP session gets its host: `loom serve` answers with the
/// host of the current configuration, so a session opened after a reload
/// uses the reloaded tenants, and one already open keeps its host.
pub type HostSource = Arc<dyn Fn() -> Arc<Host> + Send + Sync>;

/// The MCP server of `host` over streamable HTTP. Each request must carry
/// the caller's [`Scope`] in its extensions (`http::Request::extensions`);
/// the session that request opens stays bound to that scope's tenant and
/// user. Every session closes when `cancel` is cancelled.
///
/// Any `Host` header is accepted: the bearer key, not the address, is what
/// protects the service (a browser page cannot attach the key).
pub fn streamable_http_service(
    host: Arc<Host>,
    options: McpServerOptions,
    cancel: CancellationToken,
) -> McpHttpService {
    streamable_http_service_from(Arc::new(move || host.clone()), options, cancel)
}

/// As [`streamable_http_service`], with each new session (or stateless
/// request) served by the host `hosts` returns at that moment.
pub fn streamable_http_service_from(
    hosts: HostSource,
    options: McpServerOptions,
    cancel: CancellationToken,
) -> McpHttpService {
    let body_cap = options.max_argument_bytes.saturating_add(64 << 10);
    let options = Arc::new(options);
    let sessions = Arc::new(LocalSessionManager::default());
    let config = StreamableHttpServerConfig::default()
        .disable_allowed_hosts()
        .with_cancellation_token(cancel)
        .with_max_request_body_bytes(body_cap);
    let inner = StreamableHttpService::new(
        move || Ok(LoomMcpServer::for_requests(hosts(), options.clone())),
        sessions.clone(),
        config,
    );
    McpHttpService {
        inner,
        sessions,
        owners: Arc::new(Mutex::new(HashMap::new())),
    }
}

fn plain(status: http::StatusCode, text: &'static str) -> McpResponse {
    let mut response = http::Response::new(
        http_body_util::Full::new(Bytes::from_static(text.as_bytes()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

impl McpHttpService {
    /// Drop the owners of sessions `rmcp` no longer has.
    async fn prune(sessions: Arc<LocalSessionManager>, owners: Owners) {
        let ids: Vec<String> = lock(&owners).keys().cloned().collect();
        for id in ids {
            let live = sessions
                .has_session(&Arc::from(id.as_str()))
                .await
                .unwrap_or(false);
            if !live {
                lock(&owners).remove(&id);
            }
        }
    }
}

impl<B> tower_service::Service<http::Request<B>> for McpHttpService
where
    B: http_body::Body + Send + 'static,
    B::Error: std::fmt::Display,
    B::Data: Send + 'static,
{
    type Response = McpResponse;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<McpResponse, Infallible>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let Some(scope) = request.extensions().get::<Scope>() else {
            return Box::pin(async {
                Ok(plain(
                    http::StatusCode::UNAUTHORIZED,
                    "the request carries no authenticated tenant",
                ))
            });
        };
        let caller = (scope.tenant.clone(), scope.user.clone());
        let session = request
            .headers()
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if let Some(id) = &session
            && lock(&self.owners).get(id) != Some(&caller)
        {
            // Another caller's session, or none at all: the same answer, so
            // a session id reveals nothing to whoever guessed it.
            return Box::pin(async {
                Ok(plain(
                    http::StatusCode::NOT_FOUND,
                    "Not Found: Session not found",
                ))
            });
        }
        let deleting = request.method() == http::Method::DELETE;
        let mut inner = self.inner.clone();
        let owners = self.owners.clone();
        let sessions = self.sessions.clone();
        Box::pin(async move {
            let response = match inner.call(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            match &session {
                None => {
                    if let Some(id) = response
                        .headers()
                        .get(SESSION_HEADER)
                        .and_then(|v| v.to_str().ok())
                    {
                        let full = {
                            let mut owners = lock(&owners);
                            owners.insert(id.to_owned(), caller);
                            owners.len() >= PRUNE_AT
                        };
                        if full {
                            tokio::spawn(Self::prune(sessions, owners));
                        }
                    }
                }
                Some(id) if deleting && response.status().is_success() => {
                    lock(&owners).remove(id);
                }
                Some(_) => {}
            }
            Ok(response)
        })
    }
}
