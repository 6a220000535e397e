//! Durable state in one redb file under the data directory.
//!
//! Today it holds sessions: the messages of a conversation, keyed by tenant,
//! user and session id, so a session id reused by another user (or tenant)
//! finds nothing of it. Keys are built from typed ids only.

use crate::model::Message;
use crate::tenancy::ids::{SessionId, TenantId, UserId};
use redb::{ReadableDatabase, TableDefinition};
use std::path::Path;

/// (tenant, user — empty for the anonymous user, session) → JSON messages.
const SESSIONS: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("sessions");

/// Why stored state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened.
    #[error("cannot open the database {path}: {message}")]
    Open {
        /// The file.
        path: String,
        /// What failed.
        message: String,
    },
    /// A read or write failed.
    #[error("database error: {0}")]
    Io(String),
    /// Stored data could not be decoded.
    #[error("stored session is corrupt: {0}")]
    Corrupt(String),
}

fn io(error: impl std::fmt::Display) -> StoreError {
    StoreError::Io(error.to_string())
}

/// The session store.
pub struct SessionStore {
    db: redb::Database,
}

fn user_key(user: &UserId) -> &str {
    // Named users are never empty, so "" cannot collide with one.
    user.name().unwrap_or("")
}

impl SessionStore {
    /// Open (creating if needed) the database at `path`.
    ///
    /// # Errors
    ///
    /// [`StoreError::Open`] naming the file.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::Open {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
        }
        let db = redb::Database::create(path).map_err(|e| StoreError::Open {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Ok(SessionStore { db })
    }

    /// The messages of a session; empty when it does not exist.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the database fails or the record is corrupt.
    pub fn load(
        &self,
        tenant: &TenantId,
        user: &UserId,
        session: &SessionId,
    ) -> Result<Vec<Message>, StoreError> {
        let txn = self.db.begin_read().map_err(io)?;
        let table = match txn.open_table(SESSIONS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(io(e)),
        };
        let key = (tenant.as_str(), user_key(user), session.as_str());
        match table.get(key).map_err(io)? {
            None => Ok(Vec::new()),
            Some(value) => serde_json::from_slice(value.value())
                .map_err(|e| StoreError::Corrupt(e.to_string())),
        }
    }

    /// Replace the messages of a session, atomically.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the write fails; the previous state is kept.
    pub fn save(
        &self,
        tenant: &TenantId,
        user: &UserId,
        session: &SessionId,
        messages: &[Message],
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(messages).map_err(io)?;
        let txn = self.db.begin_write().map_err(io)?;
        {
            let mut table = txn.open_table(SESSIONS).map_err(io)?;
            table
                .insert(
                    (tenant.as_str(), user_key(user), session.as_str()),
                    bytes.as_slice(),
                )
                .map_err(io)?;
        }
        txn.commit().map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_per_user_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loom.redb");
        let tenant = TenantId::new("acme").unwrap();
        let alice = UserId::named("alice").unwrap();
        let bob = UserId::named("bob").unwrap();
        let session = SessionId::new("s1").unwrap();
        {
            let store = SessionStore::open(&path).unwrap();
            assert!(store.load(&tenant, &alice, &session).unwrap().is_empty());
            store
                .save(&tenant, &alice, &session, &[Message::user("hi")])
                .unwrap();
            assert!(store.load(&tenant, &bob, &session).unwrap().is_empty());
            assert!(
                store
                    .load(&tenant, &UserId::Anonymous, &session)
                    .unwrap()
                    .is_empty()
            );
        }
        let store = SessionStore::open(&path).unwrap();
        assert_eq!(
            store.load(&tenant, &alice, &session).unwrap(),
            vec![Message::user("hi")]
        );
        let other = TenantId::new("globex").unwrap();
        assert!(store.load(&other, &alice, &session).unwrap().is_empty());
    }
}
