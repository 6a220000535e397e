//! Sessions: the messages of a conversation, keyed by tenant, user and
//! session id, so a session id reused by another user (or tenant) finds
//! nothing of it.
//!
//! Recently saved sessions are also kept in memory (up to [`CACHE_BYTES`]
//! of them): a user's next turn reads its history without a read
//! transaction or JSON decoding. The cache is filled only by the writer
//! thread, in commit order, after a save committed, and a failed save
//! removes its session; a load that misses reads the database and caches
//! nothing. So the cache never holds a version the database does not, nor
//! an older one than it. One process owns the database file.

use super::{Store, StoreError, io};
use crate::model::Message;
use crate::tenancy::ids::{SessionId, TenantId, UserId};
use redb::{ReadableDatabase, TableDefinition};
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Bytes of sessions (as stored JSON) kept in memory.
pub const CACHE_BYTES: usize = 64 << 20;

/// A session's key: (tenant, user, session).
type Key = (String, String, String);

/// Sessions recently loaded or saved, oldest first in `order`.
#[derive(Default)]
struct Cache {
    entries: HashMap<Key, (Arc<Vec<Message>>, usize, u64)>,
    order: VecDeque<(Key, u64)>,
    bytes: usize,
    stamp: u64,
}

impl Cache {
    fn insert(&mut self, key: Key, messages: Arc<Vec<Message>>, bytes: usize) {
        self.stamp += 1;
        let stamp = self.stamp;
        if let Some((_, old, _)) = self.entries.insert(key.clone(), (messages, bytes, stamp)) {
            self.bytes -= old;
        }
        self.bytes += bytes;
        self.order.push_back((key, stamp));
        while self.bytes > CACHE_BYTES {
            let Some((oldest, stamp)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&oldest).is_some_and(|e| e.2 == stamp)
                && let Some((_, size, _)) = self.entries.remove(&oldest)
            {
                self.bytes -= size;
            }
        }
        // Superseded stamps pile up in `order` when one session is saved
        // again and again; drop them once they outnumber the entries.
        if self.order.len() > 2 * self.entries.len() + 64 {
            let entries = &self.entries;
            self.order
                .retain(|(key, stamp)| entries.get(key).is_some_and(|e| e.2 == *stamp));
        }
    }

    fn remove(&mut self, key: &Key) {
        if let Some((_, size, _)) = self.entries.remove(key) {
            self.bytes -= size;
        }
    }
}

/// (tenant, user — empty for the anonymous user, session) → JSON messages.
pub(crate) const SESSIONS: TableDefinition<(&str, &str, &str), &[u8]> =
    TableDefinition::new("sessions");

/// The session store.
#[derive(Clone)]
pub struct SessionStore {
    store: Arc<Store>,
    cache: Arc<Mutex<Cache>>,
}

fn key(tenant: &TenantId, user: &UserId, session: &SessionId) -> Key {
    (
        tenant.as_str().to_owned(),
        user_key(user).to_owned(),
        session.as_str().to_owned(),
    )
}

pub(crate) fn user_key(user: &UserId) -> &str {
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
        Ok(Self::new(Store::open(path)?))
    }

    /// Sessions kept in `store`.
    pub fn new(store: Arc<Store>) -> Self {
        SessionStore {
            store,
            cache: Arc::default(),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        match self.cache.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        }
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
        let key = key(tenant, user, session);
        if let Some((messages, _, _)) = self.cache().entries.get(&key) {
            return Ok(messages.as_ref().clone());
        }
        let txn = self.store.db().begin_read().map_err(io)?;
        let Some(table) = super::read_table(&txn, SESSIONS)? else {
            return Ok(Vec::new());
        };
        let found = table
            .get((key.0.as_str(), key.1.as_str(), key.2.as_str()))
            .map_err(io)?;
        match found {
            None => Ok(Vec::new()),
            Some(value) => serde_json::from_slice(value.value())
                .map_err(|e| StoreError::Corrupt(e.to_string())),
        }
    }

    /// Replace the messages of a session, atomically; resolves once the
    /// write is committed: durable, or with `[store] fsync = "interval"`
    /// visible at once and durable within the interval.
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
        self.save_unless(tenant, user, session, messages, || false)
            .await
            .map(|_| ())
    }

    /// [`Self::save`], unless `stale()` says so when the write runs (on the
    /// writer thread, inside its transaction): then nothing is written or
    /// cached and the result is `false`. A run passes "its user was
    /// forgotten since it started".
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the write fails; the previous state is kept.
    pub async fn save_unless(
        &self,
        tenant: &TenantId,
        user: &UserId,
        session: &SessionId,
        messages: &[Message],
        stale: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Result<bool, StoreError> {
        let bytes = serde_json::to_vec(messages).map_err(io)?;
        let key = key(tenant, user, session);
        let row = key.clone();
        let size = bytes.len();
        let skipped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let skipped_in_op = skipped.clone();
        let op: super::WriteOp = Box::new(move |txn| {
            if stale() {
                skipped_in_op.store(true, std::sync::atomic::Ordering::Relaxed);
                return Ok(());
            }
            skipped_in_op.store(false, std::sync::atomic::Ordering::Relaxed);
            let mut table = txn.open_table(SESSIONS).map_err(io)?;
            table
                .insert(
                    (row.0.as_str(), row.1.as_str(), row.2.as_str()),
                    bytes.as_slice(),
                )
                .map_err(io)?;
            Ok(())
        });
        // The writer runs this after the commit, in commit order.
        let cache = self.cache.clone();
        let saved = Arc::new(messages.to_vec());
        let skipped_after = skipped.clone();
        let (done, committed) = tokio::sync::oneshot::channel();
        self.store.write_then(
            op,
            Box::new(move |result| {
                if let Ok(mut cache) = cache.lock() {
                    match &result {
                        Ok(()) if skipped_after.load(std::sync::atomic::Ordering::Relaxed) => {}
                        Ok(()) => cache.insert(key, saved, size),
                        Err(_) => cache.remove(&key),
                    }
                }
                let _ = done.send(result);
            }),
        );
        committed.await.unwrap_or(Err(StoreError::Closed))?;
        Ok(!skipped.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Delete one session of (tenant, user); resolves once the delete is
    /// committed, with whether the session existed.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the write fails; the session is kept.
    pub async fn delete(
        &self,
        tenant: &TenantId,
        user: &UserId,
        session: &SessionId,
    ) -> Result<bool, StoreError> {
        let key = key(tenant, user, session);
        let row = key.clone();
        let existed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let existed_in_op = existed.clone();
        let op: super::WriteOp = Box::new(move |txn| {
            let mut table = txn.open_table(SESSIONS).map_err(io)?;
            let removed = table
                .remove((row.0.as_str(), row.1.as_str(), row.2.as_str()))
                .map_err(io)?
                .is_some();
            existed_in_op.store(removed, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        });
        let cache = self.cache.clone();
        let (done, committed) = tokio::sync::oneshot::channel();
        self.store.write_then(
            op,
            Box::new(move |result| {
                if let Ok(mut cache) = cache.lock() {
                    cache.remove(&key);
                }
                let _ = done.send(result);
            }),
        );
        committed.await.unwrap_or(Err(StoreError::Closed))?;
        Ok(existed.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// Session ids are `[A-Za-z0-9._:@-]`: every one sorts below `~`.
const PAST_EVERY_SESSION: &str = "~";

/// Delete every session of (tenant, user) in `txn`; returns how many.
pub(crate) fn delete_user(
    txn: &redb::WriteTransaction,
    tenant: &str,
    user: &str,
) -> Result<u64, StoreError> {
    let mut table = txn.open_table(SESSIONS).map_err(io)?;
    let mut removed = 0u64;
    table
        .retain_in(
            (tenant, user, "")..(tenant, user, PAST_EVERY_SESSION),
            |_, _| {
                removed += 1;
                false
            },
        )
        .map_err(io)?;
    Ok(removed)
}

impl SessionStore {
    /// Every session of (tenant, user): id and messages.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the database fails or a record is corrupt.
    pub fn user_sessions(
        &self,
        tenant: &TenantId,
        user: &UserId,
    ) -> Result<Vec<(String, Vec<Message>)>, StoreError> {
        let txn = self.store.db().begin_read().map_err(io)?;
        let Some(table) = super::read_table(&txn, SESSIONS)? else {
            return Ok(Vec::new());
        };
        let (tenant, user) = (tenant.as_str(), user_key(user));
        let mut out = Vec::new();
        for entry in table
            .range((tenant, user, "")..(tenant, user, PAST_EVERY_SESSION))
            .map_err(io)?
        {
            let (key, value) = entry.map_err(io)?;
            let messages = serde_json::from_slice(value.value())
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            out.push((key.value().2.to_owned(), messages));
        }
        Ok(out)
    }

    /// A closure that drops every cached session of (tenant, user): run it
    /// on the writer thread right after the commit that deleted them.
    pub(crate) fn uncache_user(
        &self,
        tenant: &TenantId,
        user: &UserId,
    ) -> impl FnOnce() + Send + use<> {
        let cache = self.cache.clone();
        let (tenant, user) = (tenant.as_str().to_owned(), user_key(user).to_owned());
        move || {
            let mut cache = match cache.lock() {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
            let doomed: Vec<Key> = cache
                .entries
                .keys()
                .filter(|(t, u, _)| *t == tenant && *u == user)
                .cloned()
                .collect();
            for key in doomed {
                cache.remove(&key);
            }
        }
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
            // Visible at once, before any fsync; the sync makes it durable.
            assert_eq!(store.load(&tenant, &alice, &session).unwrap().len(), 1);
            store.store().sync().await.unwrap();
        }
        let store = SessionStore::open(&path).unwrap();
        assert_eq!(store.load(&tenant, &alice, &session).unwrap().len(), 1);
    }
}
