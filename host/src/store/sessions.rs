//! Sessions: the messages of a conversation, keyed by tenant, user and
//! session id, so a session id reused by another user (or tenant) finds
//! nothing of it.

use super::{Store, StoreError, io};
use crate::model::Message;
use crate::tenancy::ids::{SessionId, TenantId, UserId};
use redb::{ReadableDatabase, TableDefinition};
use std::path::Path;
use std::sync::Arc;

/// (tenant, user — empty for the anonymous user, session) → JSON messages.
const SESSIONS: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("sessions");

/// The session store.
#[derive(Clone)]
pub struct SessionStore {
    store: Arc<Store>,
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
        Ok(SessionStore {
            store: Store::open(path)?,
        })
    }

    /// Sessions kept in `store`.
    pub fn new(store: Arc<Store>) -> Self {
        SessionStore { store }
    }

    /// The database the sessions live in.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
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
        let txn = self.store.db().begin_read().map_err(io)?;
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

    /// Replace the messages of a session, atomically; resolves once the
    /// write is durable.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the write fails; the previous state is kept.
    pub async fn save(
        &self,
        tenant: &TenantId,
        user: &UserId,
        session: &SessionId,
        messages: &[Message],
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(messages).map_err(io)?;
        let key = (
            tenant.as_str().to_owned(),
            user_key(user).to_owned(),
            session.as_str().to_owned(),
        );
        self.store
            .write(Box::new(move |txn| {
                let mut table = txn.open_table(SESSIONS).map_err(io)?;
                table
                    .insert(
                        (key.0.as_str(), key.1.as_str(), key.2.as_str()),
                        bytes.as_slice(),
                    )
                    .map_err(io)?;
                Ok(())
            }))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sessions_are_per_user_and_survive_reopen() {
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
                .await
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

    #[tokio::test]
    async fn deferred_durability_still_keeps_what_a_sync_confirmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("loom.redb");
        let tenant = TenantId::new("acme").unwrap();
        let alice = UserId::named("alice").unwrap();
        let session = SessionId::new("s1").unwrap();
        {
            let store = SessionStore::new(
                Store::open_with(&path, crate::store::StoreSync::Interval(60_000)).unwrap(),
            );
            store
                .save(&tenant, &alice, &session, &[Message::user("hi")])
                .await
                .unwrap();
            // Visible at once, before any fsync.
            assert_eq!(store.load(&tenant, &alice, &session).unwrap().len(), 1);
            store.store().sync().await.unwrap();
        }
        let store = SessionStore::open(&path).unwrap();
        assert_eq!(store.load(&tenant, &alice, &session).unwrap().len(), 1);
    }
}
