//! Episodes: one per run (what was asked and answered), plus notes an
//! agent asked to remember.

use super::timestamp::Timestamp;
use crate::model::Message;
use crate::store::StoreError;
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// (tenant, user, episode number) → the episode as JSON.
pub(crate) const EPISODES: TableDefinition<(&str, &str, u64), &[u8]> =
    TableDefinition::new("memory_episodes");

/// What an episode records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EpisodeKind {
    /// A run: its prompt and answer.
    Run,
    /// A note the agent stored with `remember`.
    Note,
}

/// One stored episode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Episode {
    /// `ep_<16 hex digits>`.
    pub id: String,
    /// A run or a note.
    pub kind: EpisodeKind,
    /// The session it belongs to, if any.
    pub session: Option<String>,
    /// The run that produced it, if any.
    pub run: Option<String>,
    /// When it happened.
    pub at: Timestamp,
    /// The prompt (or the note's text).
    pub input: String,
    /// The answer (empty for a note).
    pub output: String,
    /// The run's tool calls and results, when the agent keeps them (capped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transcript: Option<Vec<Message>>,
}

impl Episode {
    /// The text recall ranks and shows.
    pub fn text(&self) -> String {
        match self.kind {
            EpisodeKind::Note => format!("[{}] note: {}", self.at, self.input),
            EpisodeKind::Run => format!("[{}] {:?} -> {:?}", self.at, self.input, self.output),
        }
    }
}

/// An episode to store.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NewEpisode {
    /// The session, if any.
    pub session: Option<String>,
    /// The run, if any.
    pub run: Option<String>,
    /// The prompt.
    pub input: String,
    /// The answer.
    pub output: String,
    /// Tool calls and results to keep (cut to the limit).
    pub transcript: Option<Vec<Message>>,
}

pub(crate) fn decode(bytes: &[u8]) -> Result<Episode, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("a memory episode: {e}")))
}

/// Every episode of (tenant, user), oldest first.
pub(crate) fn all(
    table: &impl ReadableTable<(&'static str, &'static str, u64), &'static [u8]>,
    tenant: &str,
    user: &str,
) -> Result<Vec<Episode>, StoreError> {
    super::numbered_rows(table, tenant, user, "episode")
}

/// Cut a transcript to about `max_bytes` of JSON: each message's content
/// is cut to what is left, and messages past the limit are dropped.
pub(crate) fn cap_transcript(messages: Vec<Message>, max_bytes: usize) -> Vec<Message> {
    let mut left = max_bytes;
    let mut out = Vec::new();
    for mut message in messages {
        let size = serde_json::to_vec(&message).map(|v| v.len()).unwrap_or(0);
        if size <= left {
            left -= size;
            out.push(message);
            continue;
        }
        if left > 64 {
            let text = &mut message.content;
            let keep = left.saturating_sub(64).min(text.len());
            super::cut(text, keep);
            text.push_str("…[truncated]");
            out.push(message);
        }
        break;
    }
    out
}
