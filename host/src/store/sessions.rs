//! Sessions: the messages of a conversation, keyed by tenant, user and
//! session id, so a session id reused by another user (or tenant) finds
//! nothing of it.
//!
//! Recently saved sessions are also kept in memory (up to [`CACHE_BYTES`]
//! of them): a user's next turn reads its history without a read
//! transaction or decoding. The cache is filled only by the writer
//! thread, in commit order, after a save committed, and a failed save
//! removes its session; a load that misses reads the database and caches
//! nothing. So the cache never holds a version the database does not, nor
//! an older one than it. One process owns the database file.
//!
//! With `[store] fsync = "always"` a save resolves once it is durable. With
//! `fsync = "interval"` a crash may lose the last interval of writes
//! anyway, so a save does not wait for its commit either (write-behind): it
//! is queued and held as *pending* until the writer commits it, and a load
//! finds the newest pending save of a session before anything committed.
//! Pending saves are never evicted; past [`PENDING_BYTES`] of them a save
//! waits for its commit again, so a writer that falls behind slows the
//! runs down instead of letting memory grow. A pending save that fails is
//! dropped (the session reads as its last committed version), logged, and
//! reported by the next [`Store::sync`].

use super::{Store, StoreError, StoreSync, io};
use crate::model::{Message, Role, ToolCall};
use crate::tenancy::ids::{SessionId, TenantId, UserId};
use redb::{ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Bytes of sessions (as stored) kept in memory.
pub const CACHE_BYTES: usize = 64 << 20;

/// Bytes of saves (as stored) that may wait for their commit without
/// their runs waiting too (`[store] fsync = "interval"` only).
pub const PENDING_BYTES: usize = 32 << 20;

/// A session's key in memory: tenant, user and session joined by `\n`
/// (which no id contains), shared by the map and the eviction order.
type Key = Arc<str>;

/// A session held in memory.
struct Entry {
    messages: Arc<Vec<Message>>,
    /// Its stored size.
    bytes: usize,
    /// Its place in the eviction order.
    stamp: u64,
    /// The ticket of its save while that save waits for its commit (a
    /// later save of the session gets a greater one); a pending entry is
    /// never evicted.
    pending: Option<u64>,
}

/// Sessions recently saved, oldest first in `order`; some still waiting
/// for their commit.
#[derive(Default)]
struct Cache {
    entries: HashMap<Key, Entry>,
    order: VecDeque<(Key, u64)>,
    /// Bytes of every entry.
    bytes: usize,
    /// Bytes of the pending entries.
    pending_bytes: usize,
    stamp: u64,
    /// The last ticket handed to a pending save.
    ticket: u64,
}

impl Cache {
    /// Keep `messages`, committed, as the newest version of `key`.
    fn insert(&mut self, key: Key, messages: Arc<Vec<Message>>, bytes: usize) {
        self.put(key, messages, bytes, None);
    }

    /// Hold `messages` as the newest version of `key` until its save
    /// commits; returns the save's ticket.
    fn hold(&mut self, key: Key, messages: Arc<Vec<Message>>, bytes: usize) -> u64 {
        self.ticket += 1;
        let ticket = self.ticket;
        self.pending_bytes += bytes;
        self.put(key, messages, bytes, Some(ticket));
        ticket
    }

    fn put(&mut self, key: Key, messages: Arc<Vec<Message>>, bytes: usize, pending: Option<u64>) {
        self.stamp += 1;
        let stamp = self.stamp;
        let entry = Entry {
            messages,
            bytes,
            stamp,
            pending,
        };
        if let Some(old) = self.entries.insert(key.clone(), entry) {
            self.forget_bytes(&old);
        }
        self.bytes += bytes;
        self.order.push_back((key, stamp));
        self.evict();
    }

    fn forget_bytes(&mut self, entry: &Entry) {
        self.bytes -= entry.bytes;
        if entry.pending.is_some() {
            self.pending_bytes -= entry.bytes;
        }
    }

    /// Drop the oldest committed entries while over [`CACHE_BYTES`];
    /// pending ones go to the back of the order instead.
    fn evict(&mut self) {
        let mut skipped = 0;
        while self.bytes > CACHE_BYTES && skipped < self.order.len() {
            let Some((oldest, stamp)) = self.order.pop_front() else {
                break;
            };
            match self.entries.get(&oldest) {
                Some(entry) if entry.stamp == stamp && entry.pending.is_some() => {
                    self.order.push_back((oldest, stamp));
                    skipped += 1;
                }
                Some(entry) if entry.stamp == stamp => self.remove(&oldest),
                _ => {}
            }
        }
        // Superseded stamps pile up in `order` when one session is saved
        // again and again; drop them once they outnumber the entries.
        if self.order.len() > 2 * self.entries.len() + 64 {
            let entries = &self.entries;
            self.order
                .retain(|(key, stamp)| entries.get(key).is_some_and(|e| e.stamp == *stamp));
        }
    }

    fn remove(&mut self, key: &str) {
        if let Some(old) = self.entries.remove(key) {
            self.forget_bytes(&old);
        }
    }

    /// The pending save of `key` with `ticket` committed (`Ok(true)`),
    /// wrote nothing (`Ok(false)`, stale) or failed (`Err`). Whether it
    /// was still the newest version of its session.
    fn settle(&mut self, key: &str, ticket: u64, committed: Result<bool, ()>) -> bool {
        let Some(entry) = self.entries.get_mut(key) else {
            return false;
        };
        if entry.pending != Some(ticket) {
            return false;
        }
        match committed {
            Ok(true) => {
                entry.pending = None;
                self.pending_bytes -= entry.bytes;
            }
            // What the database holds is older: read it from there.
            Ok(false) | Err(()) => self.remove(key),
        }
        true
    }

    /// The newest version of `key` in memory.
    fn newest(&self, key: &str) -> Option<&Arc<Vec<Message>>> {
        self.entries.get(key).map(|entry| &entry.messages)
    }
}

/// The first byte of a session stored in the compact encoding (postcard).
/// A session stored as JSON, as earlier versions did, starts with `[` and
/// is still read; the next save rewrites it compactly.
const COMPACT: u8 = 0x01;

/// A message as the compact encoding stores it: every field, always (an
/// encoding that does not describe itself cannot skip one).
#[derive(Serialize)]
struct StoredRef<'a> {
    role: Role,
    content: &'a str,
    name: Option<&'a str>,
    tool_call_id: Option<&'a str>,
    tool_calls: &'a [ToolCall],
}

/// [`StoredRef`], read back.
#[derive(Deserialize)]
struct Stored {
    role: Role,
    content: String,
    name: Option<String>,
    tool_call_id: Option<String>,
    tool_calls: Vec<ToolCall>,
}

/// Messages serialized as a sequence of [`StoredRef`], without copying.
struct StoredSeq<'a>(&'a [Message]);

impl Serialize for StoredSeq<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|m| StoredRef {
            role: m.role,
            content: &m.content,
            name: m.name.as_deref(),
            tool_call_id: m.tool_call_id.as_deref(),
            tool_calls: &m.tool_calls,
        }))
    }
}

/// A session's messages as stored: [`COMPACT`], then postcard.
fn encode(messages: &[Message]) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::with_capacity(64 * messages.len() + 1);
    out.push(COMPACT);
    postcard::serialize_with_flavor(&StoredSeq(messages), super::journal::VecFlavor(&mut out))
        .map_err(io)?;
    Ok(out)
}

/// A stored session's messages, in either encoding.
fn decode(bytes: &[u8]) -> Result<Vec<Message>, StoreError> {
    let corrupt = |e: &dyn std::fmt::Display| StoreError::Corrupt(format!("a session: {e}"));
    match bytes.split_first() {
        Some((&COMPACT, rest)) => {
            let stored: Vec<Stored> = postcard::from_bytes(rest).map_err(|e| corrupt(&e))?;
            Ok(stored
                .into_iter()
                .map(|m| Message {
                    role: m.role,
                    content: m.content,
                    name: m.name,
                    tool_call_id: m.tool_call_id,
                    tool_calls: m.tool_calls,
                })
                .collect())
        }
        _ => serde_json::from_slice(bytes).map_err(|e| corrupt(&e)),
    }
}

/// (tenant, user — empty for the anonymous user, session) → messages
/// ([`encode`]).
pub(crate) const SESSIONS: TableDefinition<(&str, &str, &str), &[u8]> =
    TableDefinition::new("sessions");

/// The session store.
#[derive(Clone)]
pub struct SessionStore {
    store: Arc<Store>,
    cache: Arc<Mutex<Cache>>,
}

fn key(tenant: &TenantId, user: &UserId, session: &SessionId) -> String {
    let mut key = user_prefix(tenant.as_str(), user_key(user));
    key.push_str(session.as_str());
    key
}

/// The database row of a [`key`]: (tenant, user, session).
fn row(key: &str) -> (&str, &str, &str) {
    let mut parts = key.splitn(3, '\n');
    let mut next = || parts.next().unwrap_or_default();
    (next(), next(), next())
}

/// The start of every [`key`] of (tenant, user).
fn user_prefix(tenant: &str, user: &str) -> String {
    format!("{tenant}\n{user}\n")
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
        crate::sync::lock(&self.cache)
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
        if let Some(messages) = self.cache().newest(&key) {
            return Ok(messages.as_ref().clone());
        }
        let txn = self.store.db().begin_read().map_err(io)?;
        let Some(table) = super::read_table(&txn, SESSIONS)? else {
            return Ok(Vec::new());
        };
        let found = table.get(row(&key)).map_err(io)?;
        match found {
            None => Ok(Vec::new()),
            Some(value) => decode(value.value()),
        }
    }

    /// Replace the messages of a session, atomically. With `[store] fsync
    /// = "always"` it resolves once the write is durable; with `fsync =
    /// "interval"` once it is queued (see the module documentation): a
    /// load sees it at once, and the interval makes it durable.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the write fails (or, queued, when the writer has
    /// stopped); the previous state is kept.
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

    /// [`Self::save`], unless `stale()` says so: then nothing is written or
    /// cached and the result is `false`. A run passes "its user was
    /// forgotten since it started". `stale` is asked when the save is
    /// queued and again inside the writer's transaction, so a save racing
    /// a forget never outlives it: a forget drops pending saves of its
    /// user, and the save's own write then finds it stale.
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
        self.save_shared(tenant, user, session, Arc::new(messages.to_vec()), stale)
            .await
    }

    /// [`Self::save_unless`] of messages the caller shares with the cache
    /// (a run hands over its history without copying it).
    ///
    /// # Errors
    ///
    /// As [`Self::save_unless`].
    pub(crate) async fn save_shared(
        &self,
        tenant: &TenantId,
        user: &UserId,
        session: &SessionId,
        saved: Arc<Vec<Message>>,
        stale: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Result<bool, StoreError> {
        let bytes = encode(&saved)?;
        let key: Key = key(tenant, user, session).into();
        let size = bytes.len();
        // Held in memory until it commits: checked and held under the cache
        // lock, which a forget's uncaching takes after the forget commits,
        // so a save either sees the forget or is dropped by it.
        let ticket = match self.store.sync_mode() {
            StoreSync::Always => None,
            StoreSync::Interval(_) => {
                let mut cache = self.cache();
                if stale() {
                    return Ok(false);
                }
                let ticket = cache.hold(key.clone(), saved.clone(), size);
                Some((ticket, cache.pending_bytes > PENDING_BYTES))
            }
        };
        let in_op = key.clone();
        let skipped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let skipped_in_op = skipped.clone();
        let op: super::WriteOp = Box::new(move |txn| {
            if stale() {
                skipped_in_op.store(true, std::sync::atomic::Ordering::Relaxed);
                return Ok(());
            }
            skipped_in_op.store(false, std::sync::atomic::Ordering::Relaxed);
            let mut table = txn.open_table(SESSIONS).map_err(io)?;
            table.insert(row(&in_op), bytes.as_slice()).map_err(io)?;
            Ok(())
        });
        // The writer runs this after the commit, in commit order.
        let cache = self.cache.clone();
        let skipped_after = skipped.clone();
        let (done, mut committed) = tokio::sync::oneshot::channel();
        // A pending save is read from the cache until it commits: nobody
        // waits for it, so it may share a later commit.
        let waited = !matches!(ticket, Some((_, false)));
        let queue = if waited {
            super::Store::write_then
        } else {
            super::Store::write_later
        };
        queue(
            &self.store,
            op,
            Box::new(move |result| {
                let mut cache = crate::sync::lock(&cache);
                let written = match &result {
                    Ok(()) => Ok(!skipped_after.load(std::sync::atomic::Ordering::Relaxed)),
                    Err(_) => Err(()),
                };
                match (ticket, written) {
                    // Pending: it is committed now, unless a later save of
                    // the session superseded it.
                    (Some((ticket, _)), written) => {
                        cache.settle(&key, ticket, written);
                    }
                    (None, Ok(true)) => {
                        cache.insert(key, saved, size);
                    }
                    (None, Ok(false)) => {}
                    (None, Err(())) => cache.remove(&key),
                }
                drop(cache);
                let _ = done.send(result);
            }),
        );
        match ticket {
            Some((_, false)) => match committed.try_recv() {
                // Queued: the writer commits it; only a writer that already
                // stopped answers at once.
                Ok(Err(error)) => Err(error),
                Err(tokio::sync::oneshot::error::TryRecvError::Closed) => Err(StoreError::Closed),
                Ok(Ok(())) | Err(tokio::sync::oneshot::error::TryRecvError::Empty) => Ok(true),
            },
            _ => {
                committed.await.unwrap_or(Err(StoreError::Closed))?;
                Ok(!skipped.load(std::sync::atomic::Ordering::Relaxed))
            }
        }
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
        let key: Key = key(tenant, user, session).into();
        let in_op = key.clone();
        let existed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let existed_in_op = existed.clone();
        let op: super::WriteOp = Box::new(move |txn| {
            let mut table = txn.open_table(SESSIONS).map_err(io)?;
            let removed = table.remove(row(&in_op)).map_err(io)?.is_some();
            existed_in_op.store(removed, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        });
        let cache = self.cache.clone();
        let (done, committed) = tokio::sync::oneshot::channel();
        self.store.write_then(
            op,
            Box::new(move |result| {
                // A save queued before the delete has committed by now; one
                // queued after it is still pending and stays.
                let mut cache = crate::sync::lock(&cache);
                if cache.entries.get(&key).is_some_and(|e| e.pending.is_none()) {
                    cache.remove(&key);
                }
                drop(cache);
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
        let (tenant, user) = (tenant.as_str(), user_key(user));
        let mut out = std::collections::BTreeMap::new();
        if let Some(table) = super::read_table(&txn, SESSIONS)? {
            for entry in table
                .range((tenant, user, "")..(tenant, user, PAST_EVERY_SESSION))
                .map_err(io)?
            {
                let (key, value) = entry.map_err(io)?;
                let messages = decode(value.value())?;
                out.insert(key.value().2.to_owned(), messages);
            }
        }
        // Saves still pending, and any committed since the read began (the
        // cache never holds a version older than the database's).
        let prefix = user_prefix(tenant, user);
        let cache = self.cache();
        for (key, entry) in &cache.entries {
            if let Some(session) = key.strip_prefix(prefix.as_str()) {
                out.insert(session.to_owned(), entry.messages.as_ref().clone());
            }
        }
        Ok(out.into_iter().collect())
    }

    /// A closure that drops every cached session of (tenant, user): run it
    /// on the writer thread right after the commit that deleted them.
    pub(crate) fn uncache_user(
        &self,
        tenant: &TenantId,
        user: &UserId,
    ) -> impl FnOnce() + Send + use<> {
        let cache = self.cache.clone();
        let prefix = user_prefix(tenant.as_str(), user_key(user));
        move || {
            let mut cache = crate::sync::lock(&cache);
            let doomed: Vec<Key> = cache
                .entries
                .keys()
                .filter(|key| key.starts_with(prefix.as_str()))
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

    fn interval_store(path: &Path) -> SessionStore {
        SessionStore::new(
            Store::open_with(path, crate::store::StoreSync::Interval(60_000)).unwrap(),
        )
    }

    /// What the database holds, read through a second store on the same
    /// file handle (its cache is empty, so every load reads the file).
    fn committed(
        store: &SessionStore,
        tenant: &TenantId,
        user: &UserId,
        session: &SessionId,
    ) -> usize {
        SessionStore::new(store.store().clone())
            .load(tenant, user, session)
            .unwrap()
            .len()
    }

    #[tokio::test]
    async fn write_behind_saves_read_back_at_once_and_commit_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = interval_store(&dir.path().join("loom.redb"));
        let tenant = TenantId::new("acme").unwrap();
        let alice = UserId::named("alice").unwrap();
        let session = SessionId::new("s1").unwrap();
        let other = SessionId::new("s2").unwrap();
        let mut history = Vec::new();
        for turn in 0..50 {
            history.push(Message::user(format!("turn {turn}")));
            store
                .save(&tenant, &alice, &session, &history)
                .await
                .unwrap();
            // The next turn reads what this one saved, committed or not.
            assert_eq!(store.load(&tenant, &alice, &session).unwrap(), history);
        }
        store
            .save(&tenant, &alice, &other, &[Message::user("other")])
            .await
            .unwrap();
        let listed = store.user_sessions(&tenant, &alice).unwrap();
        assert_eq!(listed.len(), 2, "pending saves are listed");
        assert_eq!(listed[0], ("s1".to_owned(), history.clone()));
        store.store().sync().await.unwrap();
        // Committed: the newest version, and nothing left pending.
        assert_eq!(committed(&store, &tenant, &alice, &session), 50);
        assert_eq!(committed(&store, &tenant, &alice, &other), 1);
        let cache = store.cache();
        assert!(cache.entries.values().all(|e| e.pending.is_none()));
        assert_eq!(cache.pending_bytes, 0);
    }

    #[tokio::test]
    async fn a_forget_drops_pending_saves_and_a_stale_save_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = interval_store(&dir.path().join("loom.redb"));
        let tenant = TenantId::new("acme").unwrap();
        let alice = UserId::named("alice").unwrap();
        let bob = UserId::named("bob").unwrap();
        let session = SessionId::new("s1").unwrap();
        let forgotten = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stale = {
            let forgotten = forgotten.clone();
            move || forgotten.load(std::sync::atomic::Ordering::SeqCst)
        };
        let saved = store
            .save_unless(
                &tenant,
                &alice,
                &session,
                &[Message::user("hi")],
                stale.clone(),
            )
            .await
            .unwrap();
        assert!(saved);
        store
            .save(&tenant, &bob, &session, &[Message::user("bob's")])
            .await
            .unwrap();
        // A forget of alice: flagged, then her cached and pending sessions
        // dropped (as the forget's commit does on the writer thread).
        forgotten.store(true, std::sync::atomic::Ordering::SeqCst);
        store.uncache_user(&tenant, &alice)();
        let alices_prefix = user_prefix("acme", "alice");
        let holds_alice = || {
            store
                .cache()
                .entries
                .keys()
                .any(|k| k.starts_with(alices_prefix.as_str()))
        };
        assert!(
            !holds_alice(),
            "nothing of alice's is held after the forget"
        );
        let refused = store
            .save_unless(&tenant, &alice, &session, &[Message::user("late")], stale)
            .await
            .unwrap();
        assert!(!refused, "a save after the forget writes nothing");
        assert!(!holds_alice());
        // Bob is untouched.
        assert_eq!(store.load(&tenant, &bob, &session).unwrap().len(), 1);
        store.store().sync().await.unwrap();
        assert_eq!(committed(&store, &tenant, &bob, &session), 1);
        let alices = SessionStore::new(store.store().clone())
            .load(&tenant, &alice, &session)
            .unwrap();
        assert!(
            !alices.contains(&Message::user("late")),
            "the refused save never reaches the file"
        );
    }

    #[tokio::test]
    async fn past_the_pending_cap_a_save_waits_for_its_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = interval_store(&dir.path().join("loom.redb"));
        let tenant = TenantId::new("acme").unwrap();
        let alice = UserId::named("alice").unwrap();
        let session = SessionId::new("big").unwrap();
        let big = vec![Message::user("x".repeat(PENDING_BYTES + 1))];
        store.save(&tenant, &alice, &session, &big).await.unwrap();
        // Over the cap: resolved only once committed.
        assert_eq!(committed(&store, &tenant, &alice, &session), 1);
        assert_eq!(store.cache().pending_bytes, 0);
    }

    #[tokio::test]
    async fn a_save_to_a_stopped_writer_fails() {
        let dir = tempfile::tempdir().unwrap();
        let mut inner = Store::open_with(
            &dir.path().join("loom.redb"),
            crate::store::StoreSync::Interval(60_000),
        )
        .unwrap();
        Arc::get_mut(&mut inner).unwrap().close_queue_for_test();
        let store = SessionStore::new(inner);
        let tenant = TenantId::new("acme").unwrap();
        let alice = UserId::named("alice").unwrap();
        let session = SessionId::new("s1").unwrap();
        let error = store
            .save(&tenant, &alice, &session, &[Message::user("hi")])
            .await
            .unwrap_err();
        assert!(matches!(error, StoreError::Closed), "{error}");
        assert!(store.load(&tenant, &alice, &session).unwrap().is_empty());
    }

    #[test]
    fn eviction_skips_pending_sessions() {
        let mut cache = Cache::default();
        let half = CACHE_BYTES / 2 + 1;
        let messages = Arc::new(vec![Message::user("m")]);
        let a = cache.hold("t\nu\na".into(), messages.clone(), half);
        cache.hold("t\nu\nb".into(), messages.clone(), half);
        // Over the cap, but both wait for their commits: both stay.
        assert!(cache.newest("t\nu\na").is_some() && cache.newest("t\nu\nb").is_some());
        assert_eq!(cache.pending_bytes, 2 * half);
        assert!(cache.settle("t\nu\na", a, Ok(true)));
        assert_eq!(cache.pending_bytes, half);
        cache.insert("t\nu\nc".into(), messages, 1);
        // `a` committed and is the oldest: it goes; pending `b` stays.
        assert!(cache.newest("t\nu\na").is_none());
        assert!(cache.newest("t\nu\nb").is_some() && cache.newest("t\nu\nc").is_some());
        assert_eq!(cache.bytes, half + 1);
    }

    #[tokio::test]
    async fn a_delete_keeps_a_save_queued_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = interval_store(&dir.path().join("loom.redb"));
        let tenant = TenantId::new("acme").unwrap();
        let alice = UserId::named("alice").unwrap();
        let session = SessionId::new("s1").unwrap();
        store
            .save(&tenant, &alice, &session, &[Message::user("old")])
            .await
            .unwrap();
        let deleting = store.delete(&tenant, &alice, &session);
        let again = [Message::user("new")];
        let (deleted, saved) = tokio::join!(deleting, async {
            // Queued behind the delete (the delete queues on first poll).
            tokio::task::yield_now().await;
            store.save(&tenant, &alice, &session, &again).await
        });
        assert!(deleted.unwrap());
        saved.unwrap();
        assert_eq!(store.load(&tenant, &alice, &session).unwrap(), again);
        store.store().sync().await.unwrap();
        assert_eq!(committed(&store, &tenant, &alice, &session), 1);
        assert_eq!(store.load(&tenant, &alice, &session).unwrap(), again);
    }

    #[test]
    fn the_compact_encoding_round_trips_and_json_sessions_still_read() {
        let mut asked = Message::text(Role::Assistant, "");
        asked.tool_calls.push(ToolCall {
            id: "c1".into(),
            name: "run_context".into(),
            arguments: "{\"a\":[1,\"x\"]}".into(),
        });
        let mut answered = Message::text(Role::Tool, "{\"ok\":true}\nline \u{e9}");
        answered.name = Some("run_context".into());
        answered.tool_call_id = Some("c1".into());
        let messages = vec![
            Message::system("be brief"),
            Message::user("hi \"there\""),
            asked,
            answered,
            Message::text(Role::Assistant, ""),
        ];
        let stored = encode(&messages).unwrap();
        assert_eq!(stored[0], COMPACT);
        assert_eq!(decode(&stored).unwrap(), messages);
        let json = serde_json::to_vec(&messages).unwrap();
        assert!(
            stored.len() < json.len(),
            "{} >= {}",
            stored.len(),
            json.len()
        );
        // What earlier versions stored.
        assert_eq!(decode(&json).unwrap(), messages);
        assert_eq!(decode(b"[]").unwrap(), Vec::<Message>::new());
        // Damage is a typed error, in either encoding.
        assert!(matches!(
            decode(&stored[..stored.len() - 3]),
            Err(StoreError::Corrupt(_))
        ));
        assert!(matches!(decode(b"[{\"role\""), Err(StoreError::Corrupt(_))));
        assert!(matches!(
            decode(&[COMPACT, 0xff, 0xff]),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[tokio::test]
    async fn a_session_stored_as_json_loads_and_is_rewritten_compactly() {
        let dir = tempfile::tempdir().unwrap();
        let store = SessionStore::open(&dir.path().join("loom.redb")).unwrap();
        let tenant = TenantId::new("acme").unwrap();
        let alice = UserId::named("alice").unwrap();
        let session = SessionId::new("s1").unwrap();
        let old = vec![Message::user("from an earlier loom")];
        let json = serde_json::to_vec(&old).unwrap();
        store
            .store()
            .write(move |txn| {
                let mut table = txn.open_table(SESSIONS).map_err(io)?;
                table
                    .insert(("acme", "alice", "s1"), json.as_slice())
                    .map_err(io)?;
                Ok(())
            })
            .await
            .unwrap();
        let mut history = store.load(&tenant, &alice, &session).unwrap();
        assert_eq!(history, old);
        history.push(Message::user("and now"));
        store
            .save(&tenant, &alice, &session, &history)
            .await
            .unwrap();
        let raw = {
            let txn = store.store().db().begin_read().unwrap();
            let table = txn.open_table(SESSIONS).unwrap();
            table
                .get(("acme", "alice", "s1"))
                .unwrap()
                .unwrap()
                .value()
                .to_vec()
        };
        assert_eq!(raw[0], COMPACT);
        assert_eq!(committed(&store, &tenant, &alice, &session), 2);
    }
}
