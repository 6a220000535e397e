//! The host's own tools for working blocks: an agent with
//! [`super::MemoryOptions::block_tools`] may read its user's blocks and
//! edit them. They are governed like any tool (permission chain, budgets,
//! audit), act on the run's user only, and run in the host (no component).

use crate::engine::{ToolFailure, ToolOutput, ToolSpec};
use crate::memory::{BlockEdit, Memory};
use crate::tenancy::ids::Scope;
use serde_json::{Value, json};
use std::time::Instant;

/// Reads the user's blocks.
pub(crate) const READ: &str = "memory_blocks";
/// Replaces (or creates) one block.
pub(crate) const SET: &str = "memory_block_set";
/// Appends a line to one block (creating it).
pub(crate) const APPEND: &str = "memory_block_append";

/// The specs of the block tools.
pub(crate) fn specs() -> Vec<ToolSpec> {
    let name = json!({
        "type": "string",
        "pattern": "^[a-z0-9_-]{1,64}$",
        "description": "The block's name: 1 to 64 of a-z, 0-9, _ and -."
    });
    vec![
        ToolSpec {
            name: READ.into(),
            description: "Read your working memory blocks about this user (name, content, size limit).".into(),
            parameters: json!({"type": "object", "properties": {}, "additionalProperties": false}),
            destructive: false,
            idempotent: true,
        },
        ToolSpec {
            name: SET.into(),
            description: "Replace the content of a working memory block about this user, creating it if missing. Blocks are shown to you at the start of every conversation with this user.".into(),
            parameters: json!({
                "type": "object",
                "properties": {"name": name, "content": {"type": "string"}},
                "required": ["name", "content"],
                "additionalProperties": false
            }),
            destructive: true,
            idempotent: true,
        },
        ToolSpec {
            name: APPEND.into(),
            description: "Add a line to the end of a working memory block about this user, creating it if missing.".into(),
            parameters: json!({
                "type": "object",
                "properties": {"name": name, "line": {"type": "string"}},
                "required": ["name", "line"],
                "additionalProperties": false
            }),
            // It changes state: a plan-mode run may not use it either.
            destructive: true,
            idempotent: false,
        },
    ]
}

fn text_arg(args: &Value, key: &str) -> Result<String, ToolFailure> {
    args.get(key)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| ToolFailure::InvalidArguments(format!("`{key}` must be a string")))
}

/// Run block tool `tool` with `arguments` (JSON text) for the run's user.
pub(crate) async fn call(
    memory: &Memory,
    scope: &Scope,
    tool: &str,
    arguments: &str,
) -> Result<ToolOutput, ToolFailure> {
    let started = Instant::now();
    let args: Value = serde_json::from_str(arguments)
        .map_err(|e| ToolFailure::InvalidArguments(format!("not JSON: {e}")))?;
    if !args.is_object() {
        return Err(ToolFailure::InvalidArguments(
            "arguments must be a JSON object".into(),
        ));
    }
    let failed = |e: crate::memory::MemoryError| match e {
        crate::memory::MemoryError::Invalid(m) => ToolFailure::InvalidArguments(m),
        crate::memory::MemoryError::Limit(m) => ToolFailure::Failed(m),
        other => ToolFailure::Failed(other.to_string()),
    };
    let output = match tool {
        READ => {
            let blocks = memory.blocks(&scope.tenant, &scope.user).map_err(failed)?;
            json!(
                blocks
                    .iter()
                    .map(|b| json!({"name": b.name, "content": b.content, "limit": b.limit}))
                    .collect::<Vec<_>>()
            )
        }
        SET | APPEND => {
            let name = text_arg(&args, "name")?;
            let edit = if tool == SET {
                BlockEdit::Set(text_arg(&args, "content")?)
            } else {
                BlockEdit::Append(text_arg(&args, "line")?)
            };
            let block = memory
                .edit_block(&scope.tenant, &scope.user, &name, edit)
                .await
                .map_err(failed)?;
            json!({"name": block.name, "bytes": block.content.len(), "limit": block.limit})
        }
        other => return Err(ToolFailure::UnknownTool(other.to_owned())),
    };
    Ok(ToolOutput::from_host(output.to_string(), started))
}
