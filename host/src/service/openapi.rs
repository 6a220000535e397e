//! The OpenAPI 3 document of the service, generated from the code: the
//! route table below is checked against the router by a test, and every
//! request and response schema comes from the Rust type the handler reads
//! or writes (schemars). `GET /v1/openapi.json` serves it; `docs/openapi.json`
//! is a copy that a test keeps equal to it.

use super::api::{
    AuditQueryParams, CallTool, Decide, EventsQuery, FactsQuery, Forget, ListRuns, SessionView,
    StartRun, ToolCallView, ToolView, UserQuery,
};
use super::approvals::PendingView;
use super::openai::ChatRequest;
use super::runs::RunView;
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Map, Value, json};

/// What a route reads or answers.
type SchemaOf = fn(&mut SchemaGenerator) -> Value;

fn schema<T: JsonSchema>(generator: &mut SchemaGenerator) -> Value {
    generator.subschema_for::<T>().to_value()
}

fn list_of<T: JsonSchema>(generator: &mut SchemaGenerator) -> Value {
    json!({
        "type": "object",
        "required": ["object", "data"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": generator.subschema_for::<T>().to_value()},
        },
    })
}

fn any_object(_: &mut SchemaGenerator) -> Value {
    json!({"type": "object"})
}

/// One route of the API.
pub(super) struct Route {
    /// `get`, `post` or `delete`.
    pub method: &'static str,
    /// The path, with `{id}` parameters.
    pub path: &'static str,
    /// What it does.
    pub summary: &'static str,
    /// Query parameters, as the type the handler reads.
    query: Option<SchemaOf>,
    /// The JSON body, as the type the handler reads.
    body: Option<SchemaOf>,
    /// The answer.
    response: SchemaOf,
    /// Whether the answer may be an event stream.
    stream: bool,
    /// Whether a key is needed.
    auth: bool,
}

/// Every route the router serves.
pub(super) const ROUTES: &[Route] = &[
    Route {
        method: "get",
        path: "/healthz",
        summary: "Whether the service is up (503 while it shuts down).",
        query: None,
        body: None,
        response: any_object,
        stream: false,
        auth: false,
    },
    Route {
        method: "get",
        path: "/metrics",
        summary: "Prometheus text: runs, tokens, cost, tool calls, denials and budget events per tenant (a tenant key: its own; an operator key: every tenant's).",
        query: None,
        body: None,
        response: any_object,
        stream: false,
        auth: true,
    },
    Route {
        method: "get",
        path: "/v1/openapi.json",
        summary: "This document.",
        query: None,
        body: None,
        response: any_object,
        stream: false,
        auth: false,
    },
    Route {
        method: "post",
        path: "/v1/runs",
        summary: "Start a run of [agent] or a named agent for a user: answer with the run when it ends, or with its events as Server-Sent Events (`stream: true`).",
        query: None,
        body: Some(schema::<StartRun>),
        response: schema::<RunView>,
        stream: true,
        auth: true,
    },
    Route {
        method: "get",
        path: "/v1/runs",
        summary: "The tenant's runs, newest first.",
        query: Some(schema::<ListRuns>),
        body: None,
        response: list_of::<RunView>,
        stream: false,
        auth: true,
    },
    Route {
        method: "get",
        path: "/v1/runs/{id}",
        summary: "One run: status, answer, usage, cost.",
        query: None,
        body: None,
        response: schema::<RunView>,
        stream: false,
        auth: true,
    },
    Route {
        method: "post",
        path: "/v1/runs/{id}/cancel",
        summary: "Cancel a run in flight; its journal keeps it resumable.",
        query: None,
        body: None,
        response: schema::<RunView>,
        stream: false,
        auth: true,
    },
    Route {
        method: "get",
        path: "/v1/runs/{id}/events",
        summary: "A run's events as Server-Sent Events, from the start or after Last-Event-ID.",
        query: Some(schema::<EventsQuery>),
        body: None,
        response: any_object,
        stream: true,
        auth: true,
    },
    Route {
        method: "get",
        path: "/v1/sessions",
        summary: "A user's sessions.",
        query: Some(schema::<UserQuery>),
        body: None,
        response: list_of::<SessionView>,
        stream: false,
        auth: true,
    },
    Route {
        method: "delete",
        path: "/v1/sessions/{id}",
        summary: "Delete a user's session.",
        query: Some(schema::<UserQuery>),
        body: None,
        response: any_object,
        stream: false,
        auth: true,
    },
    Route {
        method: "get",
        path: "/v1/tools",
        summary: "The tenant's tools with their argument schemas.",
        query: None,
        body: None,
        response: list_of::<ToolView>,
        stream: false,
        auth: true,
    },
    Route {
        method: "post",
        path: "/v1/tools/{name}/call",
        summary: "Call a tool outside a run, governed as a run's call (403 tool_denied when \
                  refused; an `ask` waits for /v1/approvals).",
        query: None,
        body: Some(schema::<CallTool>),
        response: schema::<ToolCallView>,
        stream: false,
        auth: true,
    },
    Route {
        method: "get",
        path: "/v1/approvals",
        summary: "Tool calls of the tenant's runs waiting for a decision.",
        query: None,
        body: None,
        response: list_of::<PendingView>,
        stream: false,
        auth: true,
    },
    Route {
        method: "post",
        path: "/v1/approvals/{id}",
        summary: "Allow, deny or edit a waiting call.",
        query: None,
        body: Some(schema::<Decide>),
        response: any_object,
        stream: false,
        auth: true,
    },
    Route {
        method: "get",
        path: "/v1/memory/facts",
        summary: "A user's facts, bi-temporal (valid_at, known_at).",
        query: Some(schema::<FactsQuery>),
        body: None,
        response: any_object,
        stream: false,
        auth: true,
    },
    Route {
        method: "get",
        path: "/v1/memory/export",
        summary: "Everything held of a user.",
        query: Some(schema::<UserQuery>),
        body: None,
        response: any_object,
        stream: false,
        auth: true,
    },
    Route {
        method: "post",
        path: "/v1/memory/forget",
        summary: "Delete everything held of a user (GDPR erasure); audited.",
        query: None,
        body: Some(schema::<Forget>),
        response: any_object,
        stream: false,
        auth: true,
    },
    Route {
        method: "get",
        path: "/v1/budget",
        summary: "Use against every cap of the tenant (and a user's, with `user`).",
        query: Some(schema::<UserQuery>),
        body: None,
        response: any_object,
        stream: false,
        auth: true,
    },
    Route {
        method: "get",
        path: "/v1/audit",
        summary: "The tenant's own audit entries, redacted as [audit] redact says.",
        query: Some(schema::<AuditQueryParams>),
        body: None,
        response: any_object,
        stream: false,
        auth: true,
    },
    Route {
        method: "get",
        path: "/v1/audit/verify",
        summary: "Whether the audit chain is intact, and how many entries are the tenant's.",
        query: None,
        body: None,
        response: any_object,
        stream: false,
        auth: true,
    },
    Route {
        method: "post",
        path: "/v1/chat/completions",
        summary: "OpenAI-compatible chat completions: `model` names the agent (`loom` is [agent]), `user` the end user; streaming as chat.completion.chunk events.",
        query: None,
        body: Some(schema::<ChatRequest>),
        response: any_object,
        stream: true,
        auth: true,
    },
];

/// The query parameters of a query type's schema.
fn parameters(schema: &Value, definitions: &Map<String, Value>) -> Vec<Value> {
    let resolved = schema
        .get("$ref")
        .and_then(Value::as_str)
        .and_then(|r| r.rsplit('/').next())
        .and_then(|name| definitions.get(name))
        .unwrap_or(schema);
    let required: Vec<&str> = resolved
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    resolved
        .get("properties")
        .and_then(Value::as_object)
        .map(|properties| {
            properties
                .iter()
                .map(|(name, property)| {
                    let mut parameter = json!({
                        "name": name,
                        "in": "query",
                        "required": required.contains(&name.as_str()),
                        "schema": property,
                    });
                    if let Some(description) = property.get("description") {
                        parameter["description"] = description.clone();
                    }
                    parameter
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Every route as (method, path), for checking the router serves each.
pub fn routes() -> Vec<(&'static str, &'static str)> {
    ROUTES.iter().map(|r| (r.method, r.path)).collect()
}

/// The document.
pub fn document() -> Value {
    let mut generator = SchemaGenerator::new(SchemaSettings::openapi3());
    let mut paths = Map::new();
    let mut pending = Vec::new();
    for route in ROUTES {
        let query = route.query.map(|f| f(&mut generator));
        let body = route.body.map(|f| f(&mut generator));
        let response = (route.response)(&mut generator);
        pending.push((route, query, body, response));
    }
    let definitions = generator.take_definitions(true);
    let error = json!({"$ref": "#/components/schemas/Error"});
    for (route, query, body, response) in pending {
        let mut content = Map::new();
        content.insert("application/json".into(), json!({"schema": response}));
        if route.stream {
            content.insert(
                "text/event-stream".into(),
                json!({"schema": {"type": "string", "description": "Server-Sent Events: `event:` names the run event's type, `data:` is the event as JSON (chat completions: `chat.completion.chunk` objects, then `[DONE]`)."}}),
            );
        }
        let mut operation = json!({
            "summary": route.summary,
            "responses": {
                "200": {"description": "Success.", "content": content},
                "default": {"description": "An error in Loom's one shape.", "content": {"application/json": {"schema": error}}},
            },
        });
        let mut parameters_of_route: Vec<Value> = route
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        if let Some(query) = &query {
            parameters_of_route.extend(parameters(query, &definitions));
        }
        if !parameters_of_route.is_empty() {
            operation["parameters"] = Value::Array(parameters_of_route);
        }
        if let Some(body) = body {
            operation["requestBody"] = json!({
                "required": true,
                "content": {"application/json": {"schema": body}},
            });
        }
        if !route.auth {
            operation["security"] = json!([]);
        }
        paths
            .entry(route.path.to_owned())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .map(|item| item.insert(route.method.to_owned(), operation));
    }
    let mut schemas = definitions;
    schemas.insert(
        "Error".into(),
        json!({
            "type": "object",
            "required": ["error"],
            "properties": {"error": {
                "type": "object",
                "required": ["code", "message", "type"],
                "properties": {
                    "code": {"type": "string", "description": "Stable and machine-readable: unauthorized, not_found, invalid_request, too_many_runs, ..."},
                    "message": {"type": "string", "description": "What went wrong and how to fix it."},
                    "type": {"type": "string", "description": "The OpenAI SDKs' error class."},
                },
            }},
        }),
    );
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Loom",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Loom as a multi-tenant service: a bearer API key selects the tenant; everything is looked up under it. See docs/api.md.",
        },
        "servers": [{"url": "http://127.0.0.1:7700"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    })
}

/// `GET /v1/openapi.json`.
pub(super) async fn serve_document() -> axum::Json<Value> {
    axum::Json(document())
}
