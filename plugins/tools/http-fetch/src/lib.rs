//! The `http_get` tool: an HTTP GET to a host the tenant granted.
//!
//! Requests go through `wasi:http`; the host checks the destination against
//! the tenant's grants (host and port, then the resolved address) and answers
//! an ungranted one with `HTTP-request-denied`, which this tool reports as a
//! denial.

use loom_sdk::{ToolError, tool};
use serde::Serialize;
use wasi::http::outgoing_handler;
use wasi::http::types::{ErrorCode, Fields, Method, OutgoingRequest, Scheme};
use wasi::io::streams::StreamError;

/// Most body bytes returned; the rest is cut and `truncated` is set.
const MAX_BODY_BYTES: usize = 256 * 1024;

/// What `http_get` returns.
#[derive(Serialize)]
struct Response {
    status: u16,
    content_type: Option<String>,
    body: String,
    truncated: bool,
}

/// Fetch a URL.
#[tool(
    description = "HTTP GET a URL on a host granted to this tenant and return status and body",
    read_only,
    idempotent
)]
fn http_get(
    #[arg(description = "Absolute http:// or https:// URL")] url: String,
) -> Result<Response, ToolError> {
    let (scheme, authority, path) = split_url(&url)?;
    let request = OutgoingRequest::new(Fields::new());
    let set = |ok: Result<(), ()>, what: &str| {
        ok.map_err(|()| ToolError::invalid_arguments(format!("{url}: invalid {what}")))
    };
    set(request.set_method(&Method::Get), "method")?;
    set(request.set_scheme(Some(&scheme)), "scheme")?;
    set(request.set_authority(Some(authority)), "host")?;
    set(request.set_path_with_query(Some(path)), "path")?;

    let pending = outgoing_handler::handle(request, None).map_err(|e| http_error(&url, e))?;
    pending.subscribe().block();
    let response = match pending.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(code))) => return Err(http_error(&url, code)),
        Some(Err(())) | None => return Err(ToolError::failed(format!("{url}: no response"))),
    };
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .first()
        .map(|v| String::from_utf8_lossy(v).into_owned());
    let body = response
        .consume()
        .map_err(|()| ToolError::failed(format!("{url}: body unavailable")))?;
    let stream = body
        .stream()
        .map_err(|()| ToolError::failed(format!("{url}: body unavailable")))?;
    let mut bytes = Vec::new();
    let mut truncated = false;
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => {
                let room = MAX_BODY_BYTES - bytes.len();
                if chunk.len() > room {
                    bytes.extend_from_slice(&chunk[..room]);
                    truncated = true;
                    break;
                }
                bytes.extend_from_slice(&chunk);
            }
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                return Err(ToolError::failed(format!("{url}: {}", e.to_debug_string())));
            }
        }
    }
    drop(stream);
    Ok(Response {
        status,
        content_type,
        body: String::from_utf8_lossy(&bytes).into_owned(),
        truncated,
    })
}

/// Split `url` into scheme, authority and path-with-query.
fn split_url(url: &str) -> Result<(Scheme, &str, &str), ToolError> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else {
        return Err(ToolError::invalid_arguments(format!(
            "{url}: only http:// and https:// URLs are supported"
        )));
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(ToolError::invalid_arguments(format!("{url}: no host")));
    }
    Ok((scheme, authority, path))
}

/// Turn a `wasi:http` error into a tool error.
fn http_error(url: &str, code: ErrorCode) -> ToolError {
    match code {
        ErrorCode::HttpRequestDenied | ErrorCode::DestinationIpProhibited => ToolError::denied(
            format!("{url}: this tenant is not granted access to that host"),
        ),
        other => ToolError::failed(format!("{url}: {other:?}")),
    }
}

loom_sdk::export_tools!(http_get);
