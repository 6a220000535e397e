//! The host's `retrieve` tool: search the run's tenant's documents
//! ([`crate::retrieval`]). Read-only, governed like any tool, and scoped to
//! the run's tenant.

use crate::engine::{ToolFailure, ToolOutput, ToolSpec};
use crate::retrieval::{DocStore, MAX_RESULTS, RetrievalError, SearchMode};
use crate::tenancy::ids::Scope;
use serde_json::{Value, json};
use std::time::Instant;

/// The tool's name.
pub(crate) const NAME: &str = "retrieve";

/// Its spec.
pub(crate) fn spec() -> ToolSpec {
    ToolSpec {
        name: NAME.into(),
        description: "Search this organisation's documents and return the passages that best \
                      match the query, best first, with the document name and section."
            .into(),
        parameters: json!({
            "type": "object",
            "properties": {
                "query": {"type": "string", "description": "What to look for."},
                "k": {"type": "integer", "minimum": 1, "maximum": MAX_RESULTS, "description": "How many passages (default 5)."}
            },
            "required": ["query"],
            "additionalProperties": false
        }),
        destructive: false,
        idempotent: true,
    }
}

/// Run the tool with `arguments` (JSON text) for the run's tenant.
pub(crate) async fn call(
    docs: &DocStore,
    scope: &Scope,
    arguments: &str,
) -> Result<ToolOutput, ToolFailure> {
    let started = Instant::now();
    let args: Value = serde_json::from_str(arguments)
        .map_err(|e| ToolFailure::InvalidArguments(format!("not JSON: {e}")))?;
    let query = args
        .get("query")
        .and_then(Value::as_str)
        .ok_or_else(|| ToolFailure::InvalidArguments("`query` must be a string".into()))?;
    let k = args.get("k").and_then(Value::as_u64).unwrap_or(5) as usize;
    let mode: SearchMode = docs.default_mode();
    let hits = docs
        .search(&scope.tenant, query, k, mode)
        .await
        .map_err(|error| match error {
            RetrievalError::Invalid(m) => ToolFailure::InvalidArguments(m),
            other => ToolFailure::Failed(other.to_string()),
        })?;
    Ok(ToolOutput::from_host(json!(hits).to_string(), started))
}
