//! The `/v1` handlers: runs, sessions, tools, approvals, memory, budget
//! and audit. Each takes the caller's tenant from [`Caller`] and reads
//! nothing of any other tenant.

use super::error::{ApiError, Json, Query};
use super::runs::{NewRun, RunView};
use super::{Caller, Service};
use crate::agent::RunRequest;
use crate::agent::configured::{AgentChoice, ConfiguredAgentError};
use crate::governance::approval::ApprovalDecision;
use crate::tenancy::ids::{Scope, SessionId, UserId};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json as JsonOut};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The user a request names: `None` or empty is the anonymous user.
pub(super) fn user_of(name: Option<&str>) -> Result<UserId, ApiError> {
    match name {
        None | Some("") => Ok(UserId::Anonymous),
        Some(name) => {
            UserId::named(name.to_owned()).map_err(|e| ApiError::bad_request(format!("user: {e}")))
        }
    }
}

/// The user a request must name.
fn named_user(name: Option<&str>, what: &str) -> Result<UserId, ApiError> {
    match name {
        None | Some("") => Err(ApiError::bad_request(format!(
            "{what} belongs to a user: name them with `user` (the id your application uses \
             for its end user)"
        ))),
        some => user_of(some),
    }
}

/// `POST /v1/runs`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct StartRun {
    /// The prompt.
    input: String,
    /// The end user, as the tenant's application names them.
    #[serde(default)]
    user: Option<String>,
    /// A session to continue (created when new).
    #[serde(default)]
    session: Option<String>,
    /// A named agent of `[agents.NAME]`; `[agent]` when absent.
    #[serde(default)]
    agent: Option<String>,
    /// Answer with a stream of Server-Sent Events instead of the run.
    #[serde(default)]
    stream: bool,
    /// A JSON Schema the answer must match.
    #[serde(default)]
    output_schema: Option<serde_json::Value>,
}

/// What went wrong building an agent, as an API error.
pub(super) fn agent_error(error: ConfiguredAgentError) -> ApiError {
    match error {
        ConfiguredAgentError::UnknownAgent { .. } => {
            ApiError::new(StatusCode::NOT_FOUND, "unknown_agent", error.to_string())
        }
        other => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "agent_misconfigured",
            format!("the agent cannot be built from loom.toml: {other}"),
        ),
    }
}

/// Start a run of `agent` for `scope`; the registered entry.
pub(super) fn start_run(
    service: &Arc<Service>,
    caller: &Caller,
    scope: Scope,
    agent: Option<String>,
    input: String,
    output_schema: Option<serde_json::Value>,
) -> Result<Arc<super::runs::RunEntry>, ApiError> {
    if service.shutdown.is_cancelled() {
        return Err(ApiError::shutting_down());
    }
    let built = caller
        .generation
        .agent(agent.as_deref(), &service.approver)
        .map_err(agent_error)?;
    let permit = service.run_slot(&caller.tenant).ok_or_else(|| {
        ApiError::too_many(
            "too_many_runs",
            format!(
                "tenant `{}` already has {} runs in flight ([server] \
                 max_concurrent_runs_per_tenant); wait for one to finish",
                caller.tenant, service.settings.max_concurrent_runs_per_tenant
            ),
        )
    })?;
    let new_run = NewRun {
        id: scope.run.to_string(),
        tenant: scope.tenant.clone(),
        user: scope.user.clone(),
        session: scope.session.clone(),
        agent: agent.clone(),
    };
    let origin = serde_json::to_value(AgentChoice::named(agent)).unwrap_or_default();
    let mut request = RunRequest::new(scope, input).origin(origin);
    if let Some(schema) = output_schema {
        request = request.output_schema(schema);
    }
    let metrics = service.metrics.tenant(&caller.tenant);
    metrics.run_started();
    let stream = built.stream(request);
    Ok(service
        .runs
        .start(new_run, stream, Some(permit), move |event| {
            metrics.observe(event)
        }))
}

/// `POST /v1/runs`: start a run; answer with it when it ends, or stream
/// its events.
pub(super) async fn create_run(
    State(service): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Json(body): Json<StartRun>,
) -> Result<Response, ApiError> {
    let user = user_of(body.user.as_deref())?;
    let mut scope = Scope::new(caller.tenant.clone(), user);
    if let Some(session) = body.session.as_deref() {
        let session = SessionId::new(session.to_owned())
            .map_err(|e| ApiError::bad_request(format!("session: {e}")))?;
        scope = scope.with_session(session);
    }
    let slot = if body.stream {
        Some(stream_slot(&service, &caller)?)
    } else {
        None
    };
    let entry = start_run(
        &service,
        &caller,
        scope,
        body.agent,
        body.input,
        body.output_schema,
    )?;
    if let Some(slot) = slot {
        return Ok(super::sse::run_stream(entry, 0, slot));
    }
    entry.wait().await;
    Ok(JsonOut(entry.view()).into_response())
}

fn stream_slot(service: &Service, caller: &Caller) -> Result<super::StreamSlot, ApiError> {
    service.stream_slot(&caller.tenant).ok_or_else(|| {
        ApiError::too_many(
            "too_many_streams",
            format!(
                "tenant `{}` already holds {} open streams ([server] max_streams_per_tenant); \
                 close one first",
                caller.tenant, service.settings.max_streams_per_tenant
            ),
        )
    })
}

/// `GET /v1/runs` query.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ListRuns {
    /// Only this user's runs.
    #[serde(default)]
    user: Option<String>,
    /// At most this many (default 100, at most 1000).
    #[serde(default)]
    limit: Option<usize>,
}

/// A list answer.
#[derive(Debug, Serialize)]
pub(super) struct List<T> {
    object: &'static str,
    data: Vec<T>,
}

impl<T> List<T> {
    pub(super) fn of(data: Vec<T>) -> JsonOut<Self> {
        JsonOut(List {
            object: "list",
            data,
        })
    }
}

/// `GET /v1/runs`: the tenant's runs, newest first.
pub(super) async fn list_runs(
    State(service): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<ListRuns>,
) -> Result<JsonOut<List<RunView>>, ApiError> {
    let user = query
        .user
        .as_deref()
        .map(|u| user_of(Some(u)))
        .transpose()?;
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    Ok(List::of(service.runs.list(
        &caller.tenant,
        user.as_ref(),
        limit,
    )))
}

fn find_run(
    service: &Service,
    caller: &Caller,
    id: &str,
) -> Result<Arc<super::runs::RunEntry>, ApiError> {
    service.runs.get(&caller.tenant, id).ok_or_else(|| {
        ApiError::not_found(format!(
            "no run `{id}` for this tenant (GET /v1/runs lists them; finished runs are kept \
             up to [server] finished_runs_kept)"
        ))
    })
}

/// `GET /v1/runs/{id}`.
pub(super) async fn get_run(
    State(service): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<JsonOut<RunView>, ApiError> {
    Ok(JsonOut(find_run(&service, &caller, &id)?.view()))
}

/// `POST /v1/runs/{id}/cancel`: stop a run; it stays resumable from its
/// journal.
pub(super) async fn cancel_run(
    State(service): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<JsonOut<RunView>, ApiError> {
    let entry = find_run(&service, &caller, &id)?;
    if entry.finished() {
        return Err(ApiError::conflict(format!(
            "run `{id}` has already ended ({:?}); only a run in flight can be cancelled",
            entry.view().status
        )));
    }
    entry.cancel();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), entry.wait()).await;
    service.metrics.tenant(&caller.tenant).run_cancelled();
    Ok(JsonOut(entry.view()))
}

/// `GET /v1/runs/{id}/events` query.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct EventsQuery {
    /// Start after this event id (as `Last-Event-ID` does).
    #[serde(default)]
    after: Option<usize>,
}

/// `GET /v1/runs/{id}/events`: the run's events as Server-Sent Events,
/// from the start, or after `Last-Event-ID` / `?after=`.
pub(super) async fn run_events(
    State(service): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let entry = find_run(&service, &caller, &id)?;
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    let from = last.or(query.after).map(|n| n + 1).unwrap_or(0);
    let slot = stream_slot(&service, &caller)?;
    Ok(super::sse::run_stream(entry, from, slot))
}

/// A query naming a user.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct UserQuery {
    /// The end user, as the tenant's application names them.
    #[serde(default)]
    user: Option<String>,
}

/// A session as listed.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub(super) struct SessionView {
    id: String,
    object: &'static str,
    messages: usize,
}

/// `GET /v1/sessions?user=U`: the user's sessions.
pub(super) async fn list_sessions(
    Extension(caller): Extension<Caller>,
    Query(query): Query<UserQuery>,
) -> Result<JsonOut<List<SessionView>>, ApiError> {
    let user = named_user(query.user.as_deref(), "a session")?;
    let sessions = caller
        .host()
        .sessions()
        .user_sessions(&caller.tenant, &user)
        .map_err(|e| ApiError::internal(format!("the sessions could not be read: {e}")))?;
    Ok(List::of(
        sessions
            .into_iter()
            .map(|(id, messages)| SessionView {
                id,
                object: "session",
                messages: messages.len(),
            })
            .collect(),
    ))
}

/// `DELETE /v1/sessions/{id}?user=U`.
pub(super) async fn delete_session(
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(query): Query<UserQuery>,
) -> Result<JsonOut<serde_json::Value>, ApiError> {
    let user = named_user(query.user.as_deref(), "a session")?;
    let session = SessionId::new(id.clone())
        .map_err(|e| ApiError::bad_request(format!("session id: {e}")))?;
    let existed = caller
        .host()
        .sessions()
        .delete(&caller.tenant, &user, &session)
        .await
        .map_err(|e| ApiError::internal(format!("the session could not be deleted: {e}")))?;
    if !existed {
        return Err(ApiError::not_found(format!(
            "user has no session `{id}` (GET /v1/sessions?user=... lists them)"
        )));
    }
    Ok(JsonOut(
        serde_json::json!({"id": id, "object": "session", "deleted": true}),
    ))
}

/// A tool as listed.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub(super) struct ToolView {
    name: String,
    object: &'static str,
    description: String,
    parameters: serde_json::Value,
    destructive: bool,
    idempotent: bool,
    plugin: String,
}

/// `GET /v1/tools`: the tenant's tools: its components' and those of its
/// MCP servers (`plugin` is `mcp:<server>` for those).
pub(super) async fn list_tools(
    Extension(caller): Extension<Caller>,
) -> Result<JsonOut<List<ToolView>>, ApiError> {
    let host = caller.host();
    let catalog = host.catalog_for(&caller.tenant).await;
    let mut tools: Vec<ToolView> = catalog
        .tools(&caller.tenant)
        .into_iter()
        .map(|binding| ToolView::of(&binding.spec, binding.plugin.name.to_string()))
        .collect();
    drop(catalog);
    for remote in host.mcp_clients().tools(&caller.tenant).await {
        if !tools.iter().any(|t| t.name == remote.spec.name) {
            let plugin = format!("mcp:{}", remote.server());
            tools.push(ToolView::of(&remote.spec, plugin));
        }
    }
    tools.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(List::of(tools))
}

impl ToolView {
    fn of(spec: &crate::engine::ToolSpec, plugin: String) -> Self {
        ToolView {
            name: spec.name.clone(),
            object: "tool",
            description: spec.description.clone(),
            parameters: spec.parameters.clone(),
            destructive: spec.destructive,
            idempotent: spec.idempotent,
            plugin,
        }
    }
}

/// `POST /v1/tools/{name}/call`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CallTool {
    /// The tool's arguments: a JSON object matching its `parameters`
    /// (`{}` when absent).
    #[serde(default)]
    arguments: Option<serde_json::Value>,
    /// The end user the call is made for, as the tenant's application
    /// names them.
    #[serde(default)]
    user: Option<String>,
}

/// The result of a tool call.
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub(super) struct ToolCallView {
    /// Always `tool_call`.
    object: &'static str,
    /// The tool.
    tool: String,
    /// The call's own run id, as the audit log records it.
    run: String,
    /// What the tool returned.
    output: String,
    /// `output` parsed, when it is a JSON object.
    structured: Option<serde_json::Value>,
}

/// `POST /v1/tools/{name}/call`: call one of the tenant's tools outside a
/// run, governed as a run's call is: the permission chain (an `ask` waits
/// for `POST /v1/approvals/{id}`), the tool-call budgets, the sandbox and
/// one audit entry.
pub(super) async fn call_tool(
    State(service): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Json(body): Json<CallTool>,
) -> Result<Response, ApiError> {
    use crate::agent::{GovernedCallError, call_tool_governed};
    use crate::engine::CallError;
    if service.shutdown.is_cancelled() {
        return Err(ApiError::shutting_down());
    }
    let user = user_of(body.user.as_deref())?;
    let arguments = match body.arguments {
        None => "{}".to_owned(),
        Some(value @ serde_json::Value::Object(_)) => value.to_string(),
        Some(_) => {
            return Err(ApiError::bad_request(
                "arguments must be a JSON object matching the tool's parameters \
                 (GET /v1/tools lists them)",
            ));
        }
    };
    let scope = Scope::new(caller.tenant.clone(), user);
    let run = scope.run.to_string();
    let approver: Arc<dyn crate::governance::approval::Approver> = service.approver.clone();
    let metrics = service.metrics.tenant(&caller.tenant);
    let outcome = call_tool_governed(caller.host(), scope, &name, &arguments, Some(approver)).await;
    // A call of a tool the tenant has counts, whatever became of it.
    if !matches!(
        outcome,
        Err(GovernedCallError::InvalidArguments { .. }
            | GovernedCallError::Call(CallError::UnknownTool { .. }))
    ) {
        metrics.tool_called(matches!(outcome, Err(GovernedCallError::Denied { .. })));
    }
    match outcome {
        Ok(output) => {
            let structured = serde_json::from_str::<serde_json::Value>(&output.output)
                .ok()
                .filter(serde_json::Value::is_object);
            Ok(JsonOut(ToolCallView {
                object: "tool_call",
                tool: name,
                run,
                output: output.output,
                structured,
            })
            .into_response())
        }
        Err(error @ GovernedCallError::Denied { .. }) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "tool_denied",
            error.text(),
        )),
        Err(error @ GovernedCallError::InvalidArguments { .. }) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_arguments",
            error.text(),
        )),
        Err(GovernedCallError::Call(error @ CallError::UnknownTool { .. })) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_tool",
            format!("{error} (GET /v1/tools lists them)"),
        )),
        Err(error) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "tool_failed",
            error.text(),
        )),
    }
}

/// `POST /v1/approvals/{id}`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub(super) struct Decide {
    /// `allow`, `deny` or `edit`.
    decision: DecisionKind,
    /// For `edit`: the arguments to run the call with (an object).
    #[serde(default)]
    arguments: Option<serde_json::Value>,
    /// For `deny`: shown to the model.
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
enum DecisionKind {
    Allow,
    Deny,
    Edit,
}

/// `GET /v1/approvals`: calls of the tenant's runs waiting for a decision.
pub(super) async fn list_approvals(
    State(service): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
) -> JsonOut<List<super::approvals::PendingView>> {
    List::of(service.approvals.list(&caller.tenant))
}

/// `POST /v1/approvals/{id}`: allow, deny or edit a waiting call.
pub(super) async fn decide_approval(
    State(service): State<Arc<Service>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Json(body): Json<Decide>,
) -> Result<JsonOut<serde_json::Value>, ApiError> {
    let decision = match body.decision {
        DecisionKind::Allow => ApprovalDecision::Allow,
        DecisionKind::Deny => ApprovalDecision::Deny {
            reason: body.reason,
        },
        DecisionKind::Edit => match body.arguments {
            Some(arguments @ serde_json::Value::Object(_)) => ApprovalDecision::Edit { arguments },
            _ => {
                return Err(ApiError::bad_request(
                    "an `edit` decision needs `arguments`: the JSON object to run the call with",
                ));
            }
        },
    };
    let view = service
        .approvals
        .decide(&caller.tenant, &id, decision)
        .map_err(|e| ApiError::not_found(e.to_string()))?;
    Ok(JsonOut(serde_json::json!({
        "id": view.id,
        "object": "approval",
        "decided": true,
        "tool": view.request.tool,
        "run_id": view.request.run_id,
    })))
}

/// `GET /v1/memory/facts` query.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct FactsQuery {
    /// The end user.
    #[serde(default)]
    user: Option<String>,
    /// Only facts that hold at this world time (RFC 3339).
    #[serde(default)]
    valid_at: Option<String>,
    /// What Loom believed at this time (RFC 3339; default now).
    #[serde(default)]
    known_at: Option<String>,
    /// Only this subject.
    #[serde(default)]
    subject: Option<String>,
    /// Only this predicate.
    #[serde(default)]
    predicate: Option<String>,
}

fn memory_error(error: impl std::fmt::Display) -> ApiError {
    ApiError::internal(format!("memory failed: {error}"))
}

/// `GET /v1/memory/facts?user=U`: the user's facts (bi-temporal: as of
/// `valid_at`, as known at `known_at`).
pub(super) async fn memory_facts(
    Extension(caller): Extension<Caller>,
    Query(query): Query<FactsQuery>,
) -> Result<Response, ApiError> {
    use crate::memory::FactQuery;
    use crate::memory::timestamp::Timestamp;
    let user = named_user(query.user.as_deref(), "memory")?;
    let time = |field: &str, value: Option<&str>| {
        value
            .map(|v| {
                Timestamp::parse(v).map_err(|e| ApiError::bad_request(format!("{field}: {e}")))
            })
            .transpose()
    };
    let facts_query = FactQuery {
        valid_at: time("valid_at", query.valid_at.as_deref())?,
        known_at: time("known_at", query.known_at.as_deref())?,
        subject: query.subject,
        predicate: query.predicate,
    };
    let memory = caller
        .host()
        .memory_for(&caller.tenant)
        .await
        .map_err(memory_error)?;
    let facts = memory
        .facts(&caller.tenant, &user, &facts_query)
        .await
        .map_err(memory_error)?;
    Ok(JsonOut(serde_json::json!({"object": "list", "data": facts})).into_response())
}

/// `GET /v1/memory/export?user=U`: everything held of the user.
pub(super) async fn memory_export(
    Extension(caller): Extension<Caller>,
    Query(query): Query<UserQuery>,
) -> Result<Response, ApiError> {
    let user = named_user(query.user.as_deref(), "memory")?;
    let memory = caller
        .host()
        .memory_for(&caller.tenant)
        .await
        .map_err(memory_error)?;
    let export = memory
        .export(&caller.tenant, &user)
        .await
        .map_err(memory_error)?;
    Ok(JsonOut(export).into_response())
}

/// `POST /v1/memory/forget`.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct Forget {
    /// The end user to forget.
    user: String,
}

/// `POST /v1/memory/forget`: delete everything held of the user (GDPR
/// erasure); audited.
pub(super) async fn memory_forget(
    Extension(caller): Extension<Caller>,
    Json(body): Json<Forget>,
) -> Result<Response, ApiError> {
    let user = named_user(Some(&body.user), "memory")?;
    let report = caller
        .host()
        .forget_user(&caller.tenant, &user, "api")
        .await
        .map_err(memory_error)?;
    Ok(JsonOut(report).into_response())
}

/// `GET /v1/budget?user=U`: use against every cap of the tenant (and the
/// user's, with `user`).
pub(super) async fn budget(
    Extension(caller): Extension<Caller>,
    Query(query): Query<UserQuery>,
) -> Result<Response, ApiError> {
    let user = query
        .user
        .as_deref()
        .map(|u| user_of(Some(u)))
        .transpose()?;
    let host = caller.host();
    let settings = host
        .config()
        .tenant(&caller.tenant)
        .map_err(|e| ApiError::internal(e.to_string()))?
        .governance
        .clone();
    let usage = host
        .governance()
        .ledger()
        .usage(&caller.tenant, user.as_ref(), &settings.budgets)
        .map_err(|e| ApiError::internal(format!("the budget counters could not be read: {e}")))?;
    Ok(JsonOut(serde_json::json!({
        "object": "budget",
        "tenant": caller.tenant.as_str(),
        "user": user.as_ref().and_then(|u| u.name()),
        "caps": usage,
    }))
    .into_response())
}

/// `GET /v1/audit` query.
#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct AuditQueryParams {
    /// Only this user's entries.
    #[serde(default)]
    user: Option<String>,
    /// Only entries since this time: RFC 3339, or an age (90s, 15m, 2h, 7d).
    #[serde(default)]
    since: Option<String>,
    /// The newest this many (default 1000, at most 10000).
    #[serde(default)]
    limit: Option<usize>,
}

fn audit_settings(caller: &Caller) -> Result<crate::governance::audit::AuditSettings, ApiError> {
    caller.host().config().audit.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "audit_disabled",
            "this Loom keeps no audit log: the operator configures one with [audit] in loom.toml",
        )
    })
}

/// `GET /v1/audit`: the tenant's own audit entries, oldest first (the
/// newest `limit`), with the fields `[audit] redact` names hidden.
pub(super) async fn audit_show(
    Extension(caller): Extension<Caller>,
    Query(query): Query<AuditQueryParams>,
) -> Result<Response, ApiError> {
    use crate::governance::audit;
    let settings = audit_settings(&caller)?;
    let since = query
        .since
        .as_deref()
        .map(audit::parse_since)
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("since: {e}")))?;
    let user = query
        .user
        .as_deref()
        .map(|u| user_of(Some(u)))
        .transpose()?;
    let filter = audit::AuditQuery {
        tenant: Some(caller.tenant.to_string()),
        user: user.and_then(|u| u.name().map(str::to_owned)),
        since,
    };
    let limit = query.limit.unwrap_or(1000).clamp(1, 10_000);
    // Entries written a moment ago are on disk before they are read.
    if let Some(log) = caller.host().governance().audit() {
        let _ = log.flush().await;
    }
    let entries = tokio::task::spawn_blocking(move || {
        audit::read_entries(&settings.path, &filter, &settings.redact)
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(|e| ApiError::internal(format!("the audit log could not be read: {e}")))?;
    let skip = entries.len().saturating_sub(limit);
    let data: Vec<_> = entries.into_iter().skip(skip).collect();
    Ok(JsonOut(serde_json::json!({"object": "list", "data": data})).into_response())
}

/// `GET /v1/audit/verify`: check the whole chain's signatures, numbering
/// and links; answers whether it is intact and how many entries are the
/// tenant's (the count of other tenants' entries is not shown).
pub(super) async fn audit_verify(
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    use crate::governance::audit;
    let settings = audit_settings(&caller)?;
    if let Some(log) = caller.host().governance().audit() {
        let _ = log.flush().await;
    }
    let tenant = caller.tenant.to_string();
    let answer = tokio::task::spawn_blocking(move || {
        let verdict = audit::verify(&settings.path, &settings.key);
        let own = audit::read_entries(
            &settings.path,
            &audit::AuditQuery {
                tenant: Some(tenant),
                user: None,
                since: None,
            },
            &settings.redact,
        )
        .map(|e| e.len())
        .unwrap_or(0);
        match verdict {
            Ok(_) => serde_json::json!({"object": "audit_verification", "ok": true, "tenant_entries": own}),
            Err(failure) => serde_json::json!({
                "object": "audit_verification",
                "ok": false,
                "tenant_entries": own,
                "failure": failure.to_string(),
            }),
        }
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(JsonOut(answer).into_response())
}
