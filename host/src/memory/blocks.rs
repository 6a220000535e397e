//! Working blocks: named, ordered, size-limited notes per user that are
//! put into every prompt (a persona, a task list, preferences).

use super::timestamp::Timestamp;
use super::{MemoryError, MemoryLimits};
use crate::store::{StoreError, io};
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// (tenant, user, block name) → the block as JSON.
pub(crate) const BLOCKS: TableDefinition<(&str, &str, &str), &[u8]> =
    TableDefinition::new("memory_blocks");

/// One working block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// `[a-z0-9_-]`, 1 to 64 characters.
    pub name: String,
    /// Its text.
    pub content: String,
    /// Where it goes among the user's blocks (smaller first; ties by name).
    pub position: u32,
    /// Most bytes its content may hold.
    pub limit: u32,
    /// When it last changed.
    pub updated_at: Timestamp,
}

impl Block {
    /// The block as it is put into a prompt.
    pub fn render(&self) -> String {
        format!("<{name}>\n{}\n</{name}>", self.content, name = self.name)
    }
}

/// How to change a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlockEdit {
    /// Replace its content (creating it if missing).
    Set(String),
    /// Add a line to its end (creating it if missing).
    Append(String),
}

/// Check a block name.
pub(crate) fn check_name(name: &str) -> Result<(), MemoryError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(MemoryError::Invalid(format!(
            "block name `{}` is not valid: use 1 to 64 of a-z, 0-9, `_` and `-`",
            name.chars().take(80).collect::<String>()
        )))
    }
}

fn decode(bytes: &[u8]) -> Result<Block, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("a memory block: {e}")))
}

/// Every block of (tenant, user), in prompt order.
pub(crate) fn all(
    table: &impl ReadableTable<(&'static str, &'static str, &'static str), &'static [u8]>,
    tenant: &str,
    user: &str,
) -> Result<Vec<Block>, StoreError> {
    let mut out = Vec::new();
    // Block names are a-z, 0-9, `_` and `-`: all sort below `~`.
    for entry in table
        .range((tenant, user, "")..(tenant, user, "~"))
        .map_err(io)?
    {
        let (_, value) = entry.map_err(io)?;
        out.push(decode(value.value())?);
    }
    out.sort_by(|a, b| a.position.cmp(&b.position).then(a.name.cmp(&b.name)));
    Ok(out)
}

/// Apply `edit` to block `name` of (tenant, user) in `txn`.
pub(crate) fn edit(
    txn: &redb::WriteTransaction,
    tenant: &str,
    user: &str,
    name: &str,
    edit: &BlockEdit,
    limits: &MemoryLimits,
    now: Timestamp,
) -> Result<Result<Block, MemoryError>, StoreError> {
    let mut table = txn.open_table(BLOCKS).map_err(io)?;
    let existing = table
        .get((tenant, user, name))
        .map_err(io)?
        .map(|bytes| decode(bytes.value()))
        .transpose()?;
    let mut block = match existing {
        Some(block) => block,
        None => {
            let blocks = all(&table, tenant, user)?;
            if blocks.len() >= limits.max_blocks {
                return Ok(Err(MemoryError::Limit(format!(
                    "the user already has {} working blocks, the most allowed; delete one first",
                    blocks.len()
                ))));
            }
            let position = blocks.iter().map(|b| b.position + 1).max().unwrap_or(0);
            Block {
                name: name.to_owned(),
                content: String::new(),
                position,
                limit: limits.max_block_bytes as u32,
                updated_at: now,
            }
        }
    };
    let content = match edit {
        BlockEdit::Set(content) => content.clone(),
        BlockEdit::Append(line) if block.content.is_empty() => line.clone(),
        BlockEdit::Append(line) => format!("{}\n{line}", block.content),
    };
    if content.len() > block.limit as usize {
        return Ok(Err(MemoryError::Limit(format!(
            "block `{name}` would hold {} bytes, over its {}-byte limit; shorten it or replace it",
            content.len(),
            block.limit
        ))));
    }
    block.content = content;
    block.updated_at = now;
    let bytes = serde_json::to_vec(&block).map_err(io)?;
    table
        .insert((tenant, user, name), bytes.as_slice())
        .map_err(io)?;
    Ok(Ok(block))
}
