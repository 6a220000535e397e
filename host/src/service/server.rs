//! The listener: the router with its authentication layer and limits,
//! connections served with header and idle timeouts, configuration
//! reloads (on change and on SIGHUP), and a graceful shutdown that stops
//! taking work, lets runs in flight finish within a deadline, cancels the
//! rest (their journals keep them resumable) and makes budgets and audit
//! entries durable.

use super::auth::{Principal, bearer};
use super::error::ApiError;
use super::{Caller, Service, api, openai};
use crate::LoomConfig;
use crate::tenancy::ids::{Scope, TenantId, UserId};
use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// Why `loom serve` could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The address could not be bound.
    #[error(
        "cannot listen on {addr}: {source} (is another process using the port? pass --listen or set [server] listen)"
    )]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No tenant has a key and the address is reachable from elsewhere.
    #[error(
        "no API keys are configured and {addr} is not a loopback address: every request would \
         be refused. Make a key with `loom keys new --tenant <tenant>` and add its hash to \
         [tenants.<tenant>] api_keys in loom.toml"
    )]
    NoKeys {
        /// The address.
        addr: String,
    },
    /// The system's random generator failed.
    #[error("cannot make a key: {0}")]
    Random(String),
}

/// When no key is configured and Loom listens on loopback only: a key for
/// each tenant that exists for this process alone, to print at startup.
/// None when keys are configured.
///
/// # Errors
///
/// [`ServeError::NoKeys`] for a non-loopback address without keys.
pub fn ephemeral_keys(
    config: &LoomConfig,
    addr: SocketAddr,
) -> Result<Vec<(String, TenantId)>, ServeError> {
    let configured = config.tenants.values().any(|t| !t.api_keys.is_empty());
    if configured {
        return Ok(Vec::new());
    }
    if !addr.ip().is_loopback() {
        return Err(ServeError::NoKeys {
            addr: addr.to_string(),
        });
    }
    let mut keys = Vec::new();
    for tenant in config.tenants.keys() {
        let (key, _) =
            crate::tenancy::keys::new_key().map_err(|e| ServeError::Random(e.to_string()))?;
        keys.push((key, tenant.clone()));
    }
    Ok(keys)
}

/// Bind `addr`.
///
/// # Errors
///
/// [`ServeError::Bind`].
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: addr.to_string(),
            source,
        })
}

/// The service's routes: `/healthz`, `/metrics`, and `/v1/*` and the MCP
/// server at `/mcp` behind the authentication layer; `extra` is mounted
/// behind it too.
pub fn router(service: Arc<Service>, extra: Option<Router<Arc<Service>>>) -> Router {
    let mut authenticated = Router::new()
        .route("/v1/runs", post(api::create_run).get(api::list_runs))
        .route("/v1/runs/{id}", get(api::get_run))
        .route("/v1/runs/{id}/cancel", post(api::cancel_run))
        .route("/v1/runs/{id}/events", get(api::run_events))
        .route("/v1/sessions", get(api::list_sessions))
        .route("/v1/sessions/{id}", delete(api::delete_session))
        .route("/v1/tools", get(api::list_tools))
        .route("/v1/tools/{name}/call", post(api::call_tool))
        .route("/v1/approvals", get(api::list_approvals))
        .route("/v1/approvals/{id}", post(api::decide_approval))
        .route("/v1/memory/facts", get(api::memory_facts))
        .route("/v1/memory/export", get(api::memory_export))
        .route("/v1/memory/forget", post(api::memory_forget))
        .route("/v1/budget", get(api::budget))
        .route("/v1/audit", get(api::audit_show))
        .route("/v1/audit/verify", get(api::audit_verify))
        .route("/v1/chat/completions", post(openai::chat_completions));
    authenticated = authenticated.nest_service("/mcp", mcp_service(&service));
    if let Some(extra) = extra {
        authenticated = authenticated.merge(extra);
    }
    let authenticated = authenticated.layer(from_fn_with_state(service.clone(), authenticate));
    let body_limit = service.settings.max_body_kib.saturating_mul(1024);
    let body_timeout = Duration::from_millis(service.settings.body_timeout_ms);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(super::openapi::serve_document))
        .merge(authenticated)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(tower_http::limit::RequestBodyLimitLayer::new(body_limit))
        .layer(from_fn_with_state(body_limit as u64, refuse_oversized))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            body_timeout,
        ))
        .with_state(service)
}

/// How much of a body declared larger than the limit is read off the
/// connection, and dropped, after the 413 goes out: with nothing reading
/// it, the connection closes under a client still sending the body, which
/// then sees a broken pipe instead of the answer. Past this much, the
/// connection closes. The body timeout bounds the reading too.
const DRAIN_OVERSIZED_BYTES: u64 = 8 << 20;

/// Refuse a request whose declared body is over `limit` bytes at once,
/// with a 413 that names the setting; the body (up to
/// [`DRAIN_OVERSIZED_BYTES`]) is read off the connection meanwhile, unless
/// the client asked to hear first (`Expect: 100-continue`).
async fn refuse_oversized(State(limit): State<u64>, request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok())
        .filter(|&declared| declared > limit);
    let Some(declared) = declared else {
        return next.run(request).await;
    };
    let waits_to_send = request
        .headers()
        .get(header::EXPECT)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if declared <= DRAIN_OVERSIZED_BYTES && !waits_to_send {
        let mut body = request.into_body();
        tokio::spawn(async move {
            while let Some(Ok(_)) = http_body_util::BodyExt::frame(&mut body).await {}
        });
    }
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!(
            "the request body is {declared} bytes; at most {limit} are accepted \
             (raise [server] max_body_kib to allow larger bodies)"
        ),
    )
    .into_response()
}

/// The tenant's tools over MCP (streamable HTTP): each new session is served
/// by the current configuration's host, answers `ask` through the API's
/// approvals, runs agent tools in the tenant's run slots, and closes when
/// the service shuts down.
fn mcp_service(service: &Arc<Service>) -> crate::mcp::McpHttpService {
    let hosts = service.clone();
    let slots = service.clone();
    let approver: Arc<dyn crate::governance::approval::Approver> = service.approver.clone();
    crate::mcp::http::streamable_http_service_from(
        Arc::new(move || hosts.host()),
        crate::mcp::McpServerOptions {
            approver: Some(approver),
            agents: service.settings.mcp_agents,
            // An agent tool's run takes one of the tenant's run slots.
            run_admission: Some(Arc::new(move |tenant: &crate::tenancy::ids::TenantId| {
                slots
                    .run_slot(tenant)
                    .map(|permit| Box::new(permit) as Box<dyn std::any::Any + Send>)
            })),
            ..crate::mcp::McpServerOptions::default()
        },
        service.shutdown.child_token(),
    )
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(format!(
        "no route {} {} (the API is under /v1; see docs/api.md)",
        request.method(),
        request.uri().path()
    ))
}

async fn healthz(State(service): State<Arc<Service>>) -> Response {
    if service.shutdown.is_cancelled() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"status": "shutting_down"})),
        )
            .into_response();
    }
    axum::Json(serde_json::json!({"status": "ok"})).into_response()
}

/// The client's address, as the accept loop recorded it.
fn client_of(request: &Request) -> std::net::IpAddr {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}

/// Who `request` is from, counting and auditing a failure.
fn principal_of(
    service: &Service,
    request: &Request,
) -> Result<(Principal, Arc<super::Generation>), ApiError> {
    let client = client_of(request);
    if service.failures.blocked(client) {
        return Err(ApiError::too_many(
            "too_many_failed_authentications",
            "too many failed authentications from this address; wait a minute and send a \
             valid key",
        ));
    }
    let generation = service.generation();
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let key = bearer(header);
    match key.and_then(|k| generation.keys.principal(k)) {
        Some(principal) => Ok((principal, generation)),
        None => {
            let reason = if key.is_some() {
                "unknown key"
            } else {
                "no bearer key"
            };
            service.metrics.auth_failed();
            if service.failures.fail(client) {
                generation.host.governance().record_event(
                    "*",
                    "auth_failed",
                    &format!("client:{client}"),
                    serde_json::json!({
                        "reason": reason,
                        "method": request.method().as_str(),
                        "path": request.uri().path(),
                    }),
                );
            }
            Err(ApiError::unauthorized(format!(
                "{reason}: send `Authorization: Bearer <key>` with a key of your tenant (the \
                 operator makes one with `loom keys new --tenant <tenant>`)"
            )))
        }
    }
}

/// The authentication layer: a tenant key puts the [`Caller`] (and, for
/// MCP, a [`Scope`] whose user is the `X-Loom-User` header) into the
/// request.
async fn authenticate(
    State(service): State<Arc<Service>>,
    mut request: Request,
    next: Next,
) -> Response {
    let (principal, generation) = match principal_of(&service, &request) {
        Ok(found) => found,
        Err(error) => return error.into_response(),
    };
    let Principal::Tenant(tenant) = principal else {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "operator_key",
            "an operator key reads /metrics only; use a tenant's key for the API",
        )
        .into_response();
    };
    let user = match request
        .headers()
        .get("x-loom-user")
        .map(|v| v.to_str().map(str::to_owned))
    {
        None => UserId::Anonymous,
        Some(Ok(name)) => match api::user_of(Some(&name)) {
            Ok(user) => user,
            Err(error) => return error.into_response(),
        },
        Some(Err(_)) => {
            return ApiError::bad_request("X-Loom-User is not text").into_response();
        }
    };
    request
        .extensions_mut()
        .insert(Scope::new(tenant.clone(), user));
    request
        .extensions_mut()
        .insert(Caller { tenant, generation });
    next.run(request).await
}

/// `GET /metrics`: a tenant key sees its own tenant's series, an operator
/// key every tenant's.
async fn metrics(State(service): State<Arc<Service>>, request: Request) -> Response {
    let (principal, _) = match principal_of(&service, &request) {
        Ok(found) => found,
        Err(error) => return error.into_response(),
    };
    let mut in_flight: BTreeMap<TenantId, u64> = BTreeMap::new();
    for run in service.runs.in_flight() {
        *in_flight.entry(run.tenant().clone()).or_default() += 1;
    }
    let only = match &principal {
        Principal::Tenant(tenant) => {
            // A tenant with no activity yet still sees its zeros.
            service.metrics.tenant(tenant);
            Some(tenant)
        }
        Principal::Operator => None,
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        service.metrics.render(only, &in_flight),
    )
        .into_response()
}

/// Serve `router` on `listener` until `service` shuts down: stop
/// accepting, give runs in flight `[server] drain_timeout_ms` to finish,
/// cancel the rest, close connections, and flush budgets and audit.
pub async fn serve(service: Arc<Service>, listener: TcpListener, router: Router) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    use tower::ServiceExt;

    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(service.settings.header_timeout_ms));
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = service.shutdown.cancelled() => break,
        };
        let (stream, addr) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors, or a connection reset before accept:
                // back off a moment instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = router.clone().map_request(
            move |mut request: axum::http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(addr));
                request
            },
        );
        let connection = builder
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "connection ended with an error");
            }
        });
    }
    drop(listener);
    drain(&service).await;
    if tokio::time::timeout(Duration::from_secs(5), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after 5 s; closing them");
    }
    if let Err(error) = service.host().flush().await {
        tracing::error!(%error, "budget counters or audit entries could not be flushed");
    }
}

/// Wait for runs in flight up to the drain deadline, then cancel the rest.
async fn drain(service: &Service) {
    let deadline = Instant::now() + Duration::from_millis(service.settings.drain_timeout_ms);
    loop {
        let flying = service.runs.in_flight();
        if flying.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                runs = flying.len(),
                "runs still in flight at the drain deadline are cancelled; resume them from their journals"
            );
            for run in &flying {
                run.cancel();
            }
            for run in &flying {
                let _ = tokio::time::timeout(Duration::from_secs(5), run.wait()).await;
            }
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reload the configuration when its file changes (checked every
/// `[server] config_reload_ms`) and on SIGHUP, until shutdown.
pub async fn watch_config(service: Arc<Service>) {
    let Some(path) = service.config_path.clone() else {
        return;
    };
    let modified = |path: &std::path::Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let mut last = modified(&path);
    let every = service.settings.config_reload_ms;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        let poll = async {
            if every == 0 {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_millis(every)).await;
        };
        let hup = async {
            match hangup.as_mut() {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        let forced = tokio::select! {
            () = service.shutdown.cancelled() => return,
            () = poll => false,
            () = hup => true,
        };
        let now = modified(&path);
        if !forced && now == last {
            continue;
        }
        last = now;
        match service.reload().await {
            Ok(generation) => {
                tracing::info!(generation, path = %path.display(), "loom.toml reloaded");
                eprintln!("loom serve: reloaded {}", path.display());
            }
            Err(error) => {
                tracing::error!(%error, "loom.toml not reloaded; the running configuration stays");
                eprintln!("loom serve: not reloaded, the running configuration stays: {error}");
            }
        }
    }
}
