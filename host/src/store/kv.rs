//! The scoped key-value store behind the `kv` import of memory components.
//!
//! One table holds every component's data, keyed (tenant, user, component,
//! key): the host builds the first three parts from the call's scope, so a
//! component names only the last and can never reach another scope. A
//! second table counts the bytes each tenant stores, against its quota.
//!
//! A component call works in a [`KvTransaction`]: reads see the call's own
//! writes (an overlay over the database), and the writes are committed
//! together, with the quota checked again, only when the call succeeds.

use super::{Store, StoreError, io, read_table};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

/// (tenant, user, component, key) → value.
pub(crate) const PLUGIN_KV: TableDefinition<(&str, &str, &str, &str), &[u8]> =
    TableDefinition::new("plugin_kv");

/// tenant → bytes stored in [`PLUGIN_KV`] (keys and values).
pub(crate) const PLUGIN_KV_USAGE: TableDefinition<&str, u64> =
    TableDefinition::new("plugin_kv_usage");

/// Longest key a component may use.
pub const MAX_KEY_BYTES: usize = 512;
/// Largest value a component may store under one key.
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// Most entries one `scan` returns.
pub const MAX_SCAN_ENTRIES: u32 = 1000;
/// Most bytes (keys and values) one `scan` returns; the page ends early.
pub const MAX_SCAN_BYTES: usize = 8 << 20;
/// Most bytes one call may have written but not yet committed.
pub const MAX_PENDING_BYTES: usize = 32 << 20;
/// Most distinct keys one call may write.
pub const MAX_PENDING_KEYS: usize = 65_536;

/// Why a key-value operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// A key or value, or the call's writes, passed a size limit.
    #[error("{0}")]
    TooLarge(String),
    /// The tenant's quota would be passed.
    #[error("{0}")]
    QuotaExceeded(String),
    /// The database failed.
    #[error("{0}")]
    Io(String),
}

impl From<StoreError> for KvError {
    fn from(error: StoreError) -> Self {
        KvError::Io(error.to_string())
    }
}

/// Whose data a transaction reads and writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvScope {
    /// The tenant's key.
    pub tenant: String,
    /// The user's key (as sessions and memory key users).
    pub user: String,
    /// The component's name.
    pub component: String,
}

/// The reads and writes of one component call.
pub struct KvTransaction {
    store: Arc<Store>,
    scope: KvScope,
    quota: u64,
    /// Key → new value (`None`: deleted), not yet committed.
    writes: BTreeMap<String, Option<Vec<u8>>>,
    pending_bytes: usize,
    /// Change of the tenant's stored bytes the writes make, as far as this
    /// call can tell (checked again at commit).
    delta: i64,
}

impl std::fmt::Debug for KvTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvTransaction")
            .field("scope", &self.scope)
            .field("writes", &self.writes.len())
            .finish_non_exhaustive()
    }
}

/// Bytes a row is charged beyond its key and value: the scope it is stored
/// under and the database's own per-entry cost, so many tiny rows cannot
/// store far more than the quota says.
pub const ROW_OVERHEAD_BYTES: usize = 64;

/// What one row costs against the quota.
fn entry_bytes(key: &str, value: &[u8]) -> i64 {
    i64::try_from(key.len() + value.len() + ROW_OVERHEAD_BYTES).unwrap_or(i64::MAX)
}

impl KvTransaction {
    /// A transaction over `scope`'s keys in `store`; the tenant may store
    /// at most `quota` bytes in all.
    pub fn new(store: Arc<Store>, scope: KvScope, quota: u64) -> Self {
        KvTransaction {
            store,
            scope,
            quota,
            writes: BTreeMap::new(),
            pending_bytes: 0,
            delta: 0,
        }
    }

    /// Whose data this is.
    pub fn scope(&self) -> &KvScope {
        &self.scope
    }

    /// Whether the call wrote anything.
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    fn check_key(key: &str) -> Result<(), KvError> {
        if key.len() > MAX_KEY_BYTES {
            return Err(KvError::TooLarge(format!(
                "the key is {} bytes; keys may be at most {MAX_KEY_BYTES}",
                key.len()
            )));
        }
        Ok(())
    }

    fn stored(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let txn = self.store.db().begin_read().map_err(io)?;
        let Some(table) = read_table(&txn, PLUGIN_KV)? else {
            return Ok(None);
        };
        let s = &self.scope;
        Ok(table
            .get((
                s.tenant.as_str(),
                s.user.as_str(),
                s.component.as_str(),
                key,
            ))
            .map_err(io)?
            .map(|v| v.value().to_vec()))
    }

    /// The value of `key`, the call's own writes included.
    ///
    /// # Errors
    ///
    /// [`KvError::TooLarge`] for an oversized key; [`KvError::Io`].
    pub fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        Self::check_key(key)?;
        match self.writes.get(key) {
            Some(written) => Ok(written.clone()),
            None => self.stored(key),
        }
    }

    fn size_now(&self, key: &str) -> Result<i64, KvError> {
        Ok(match self.writes.get(key) {
            Some(Some(value)) => entry_bytes(key, value),
            Some(None) => 0,
            None => self
                .stored(key)?
                .map(|value| entry_bytes(key, &value))
                .unwrap_or(0),
        })
    }

    fn usage(&self) -> Result<u64, KvError> {
        let txn = self.store.db().begin_read().map_err(io)?;
        let Some(table) = read_table(&txn, PLUGIN_KV_USAGE)? else {
            return Ok(0);
        };
        Ok(table
            .get(self.scope.tenant.as_str())
            .map_err(io)?
            .map(|v| v.value())
            .unwrap_or(0))
    }

    fn pend(&mut self, key: &str, value: Option<Vec<u8>>) -> Result<(), KvError> {
        let new_bytes = value.as_ref().map_or(0, |v| v.len()) + key.len();
        // What the overlay holds now for this key, replaced by this write.
        let replaced = match self.writes.get(key) {
            Some(old) => old.as_ref().map_or(0, |v| v.len()) + key.len(),
            None => 0,
        };
        if !self.writes.contains_key(key) && self.writes.len() >= MAX_PENDING_KEYS {
            return Err(KvError::TooLarge(format!(
                "one call may write at most {MAX_PENDING_KEYS} keys"
            )));
        }
        if self.pending_bytes - replaced + new_bytes > MAX_PENDING_BYTES {
            return Err(KvError::TooLarge(format!(
                "one call may write at most {MAX_PENDING_BYTES} bytes"
            )));
        }
        let before = self.size_now(key)?;
        let after = value.as_ref().map_or(0, |v| entry_bytes(key, v));
        let delta = self.delta + after - before;
        if after > before {
            let usage = i64::try_from(self.usage()?).unwrap_or(i64::MAX);
            if usage.saturating_add(delta) > i64::try_from(self.quota).unwrap_or(i64::MAX) {
                return Err(KvError::QuotaExceeded(format!(
                    "tenant `{}` may store {} bytes of component data and has {usage} stored",
                    self.scope.tenant, self.quota
                )));
            }
        }
        self.delta = delta;
        self.pending_bytes = self.pending_bytes - replaced + new_bytes;
        self.writes.insert(key.to_owned(), value);
        Ok(())
    }

    /// Set `key` to `value` (stored when the call succeeds).
    ///
    /// # Errors
    ///
    /// [`KvError::TooLarge`], [`KvError::QuotaExceeded`], [`KvError::Io`].
    pub fn set(&mut self, key: &str, value: Vec<u8>) -> Result<(), KvError> {
        Self::check_key(key)?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(KvError::TooLarge(format!(
                "the value is {} bytes; values may be at most {MAX_VALUE_BYTES}",
                value.len()
            )));
        }
        self.pend(key, Some(value))
    }

    /// Delete `key` (when the call succeeds); a missing key is no error.
    ///
    /// # Errors
    ///
    /// [`KvError::TooLarge`] for an oversized key; [`KvError::Io`].
    pub fn delete(&mut self, key: &str) -> Result<(), KvError> {
        Self::check_key(key)?;
        self.pend(key, None)
    }

    /// Entries whose key starts with `prefix`, after `start_after` when
    /// given, in key order: at most `limit` (and [`MAX_SCAN_ENTRIES`]), and
    /// fewer when they pass [`MAX_SCAN_BYTES`] (at least one is returned).
    ///
    /// # Errors
    ///
    /// [`KvError::TooLarge`] for an oversized prefix; [`KvError::Io`].
    pub fn scan(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, Vec<u8>)>, KvError> {
        Self::check_key(prefix)?;
        if let Some(after) = start_after {
            Self::check_key(after)?;
        }
        let limit = limit.min(MAX_SCAN_ENTRIES) as usize;
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        let lower: Bound<&str> = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        let s = &self.scope;
        let (t, u, c) = (s.tenant.as_str(), s.user.as_str(), s.component.as_str());
        let txn = self.store.db().begin_read().map_err(io)?;
        let table = read_table(&txn, PLUGIN_KV)?;
        let mut stored = match &table {
            Some(table) => {
                let low = match lower {
                    Bound::Included(k) => Bound::Included((t, u, c, k)),
                    Bound::Excluded(k) => Bound::Excluded((t, u, c, k)),
                    Bound::Unbounded => Bound::Unbounded,
                };
                Some(
                    table
                        .range::<(&str, &str, &str, &str)>((low, Bound::Unbounded))
                        .map_err(io)?,
                )
            }
            None => None,
        };
        let mut next_stored = || -> Result<Option<(String, Vec<u8>)>, KvError> {
            let Some(range) = stored.as_mut() else {
                return Ok(None);
            };
            match range.next() {
                None => Ok(None),
                Some(entry) => {
                    let (key, value) = entry.map_err(io)?;
                    let key = key.value();
                    if key.0 != t || key.1 != u || key.2 != c || !key.3.starts_with(prefix) {
                        return Ok(None);
                    }
                    Ok(Some((key.3.to_owned(), value.value().to_vec())))
                }
            }
        };
        let mut pending = self
            .writes
            .range::<str, _>((lower, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .peekable();
        let mut from_db = next_stored()?;
        let mut bytes = 0usize;
        while out.len() < limit {
            // Merge the two ordered streams; the call's own write wins.
            let take_pending = match (&from_db, pending.peek()) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some((db_key, _)), Some((p_key, _))) => p_key.as_str() <= db_key.as_str(),
            };
            let entry = if take_pending {
                let Some((key, value)) = pending.next() else {
                    break;
                };
                if from_db.as_ref().is_some_and(|(k, _)| k == key) {
                    from_db = next_stored()?;
                }
                match value {
                    Some(value) => (key.clone(), value.clone()),
                    None => continue,
                }
            } else {
                match from_db.take() {
                    Some(entry) => {
                        from_db = next_stored()?;
                        entry
                    }
                    None => break,
                }
            };
            bytes += entry.0.len() + entry.1.len();
            if bytes > MAX_SCAN_BYTES && !out.is_empty() {
                break;
            }
            out.push(entry);
        }
        Ok(out)
    }

    /// Store the call's writes in one transaction, checking the tenant's
    /// quota with exact sizes. `still_valid` runs inside the transaction:
    /// when it says no (the user was forgotten meanwhile), nothing is
    /// written and `Ok(false)` is returned.
    ///
    /// # Errors
    ///
    /// [`KvError::QuotaExceeded`] (nothing written), [`KvError::Io`].
    pub async fn commit(
        self,
        still_valid: impl Fn() -> bool + Send + Sync + 'static,
    ) -> Result<bool, KvError> {
        if self.writes.is_empty() {
            return Ok(true);
        }
        let KvTransaction {
            store,
            scope,
            quota,
            writes,
            ..
        } = self;
        store
            .write(move |txn| {
                if !still_valid() {
                    return Ok(Ok(false));
                }
                let (t, u, c) = (
                    scope.tenant.as_str(),
                    scope.user.as_str(),
                    scope.component.as_str(),
                );
                let mut table = txn.open_table(PLUGIN_KV).map_err(io)?;
                let mut usage_table = txn.open_table(PLUGIN_KV_USAGE).map_err(io)?;
                let usage = usage_table.get(t).map_err(io)?.map_or(0, |v| v.value());
                let mut delta: i64 = 0;
                for (key, value) in &writes {
                    let before = table
                        .get((t, u, c, key.as_str()))
                        .map_err(io)?
                        .map_or(0, |v| entry_bytes(key, v.value()));
                    let after = value.as_ref().map_or(0, |v| entry_bytes(key, v));
                    delta += after - before;
                }
                let total = i64::try_from(usage).unwrap_or(i64::MAX) + delta;
                if delta > 0 && total > i64::try_from(quota).unwrap_or(i64::MAX) {
                    return Ok(Err(KvError::QuotaExceeded(format!(
                        "tenant `{t}` may store {quota} bytes of component data; this call's \
                         writes would bring it to {total}"
                    ))));
                }
                for (key, value) in &writes {
                    match value {
                        Some(value) => {
                            table
                                .insert((t, u, c, key.as_str()), value.as_slice())
                                .map_err(io)?;
                        }
                        None => {
                            table.remove((t, u, c, key.as_str())).map_err(io)?;
                        }
                    }
                }
                let total = u64::try_from(total.max(0)).unwrap_or(0);
                if total == 0 {
                    usage_table.remove(t).map_err(io)?;
                } else {
                    usage_table.insert(t, total).map_err(io)?;
                }
                Ok(Ok(true))
            })
            .await?
    }
}

/// Delete every component's keys of (tenant, user) in `txn`; how many.
/// Rows are removed as they are found (nothing is collected), so a user
/// with millions of keys costs time, not memory.
pub(crate) fn delete_user_rows(
    txn: &redb::WriteTransaction,
    tenant: &str,
    user: &str,
) -> Result<u64, StoreError> {
    let mut table = txn.open_table(PLUGIN_KV).map_err(io)?;
    let mut removed = 0u64;
    let mut freed = 0u64;
    // Exactly the user's rows: `user` followed by NUL is the smallest
    // string after `user`, so no other user's key lies in between.
    let next_user = format!("{user}\0");
    table
        .retain_in(
            (tenant, user, "", "")..(tenant, next_user.as_str(), "", ""),
            |key, value| {
                removed += 1;
                freed += u64::try_from(entry_bytes(key.3, value)).unwrap_or(0);
                false
            },
        )
        .map_err(io)?;
    if removed == 0 {
        return Ok(0);
    }
    let mut usage_table = txn.open_table(PLUGIN_KV_USAGE).map_err(io)?;
    let usage = usage_table
        .get(tenant)
        .map_err(io)?
        .map_or(0, |v| v.value());
    let left = usage.saturating_sub(freed);
    if left == 0 {
        usage_table.remove(tenant).map_err(io)?;
    } else {
        usage_table.insert(tenant, left).map_err(io)?;
    }
    Ok(removed)
}

/// Most keys [`user_keys`] lists.
pub const MAX_LISTED_KEYS: usize = 10_000;

/// The keys of (tenant, user) in [`PLUGIN_KV`], as `component/key`, at
/// most [`MAX_LISTED_KEYS`] (then a last line says how many more).
pub(crate) fn user_keys(
    txn: &redb::ReadTransaction,
    tenant: &str,
    user: &str,
) -> Result<Vec<String>, StoreError> {
    let Some(table) = read_table(txn, PLUGIN_KV)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    let mut more = 0u64;
    for entry in table.range((tenant, user, "", "")..).map_err(io)? {
        let (key, _) = entry.map_err(io)?;
        let key = key.value();
        if key.0 != tenant || key.1 != user {
            break;
        }
        if out.len() < MAX_LISTED_KEYS {
            out.push(format!("{}/{}", key.2, key.3));
        } else {
            more += 1;
        }
    }
    if more > 0 {
        out.push(format!("… and {more} more keys"));
    }
    Ok(out)
}

/// Bytes of component data `tenant` stores.
///
/// # Errors
///
/// [`StoreError`].
pub fn tenant_usage(store: &Store, tenant: &str) -> Result<u64, StoreError> {
    let txn = store.db().begin_read().map_err(io)?;
    let Some(table) = read_table(&txn, PLUGIN_KV_USAGE)? else {
        return Ok(0);
    };
    Ok(table.get(tenant).map_err(io)?.map_or(0, |v| v.value()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(user: &str) -> KvScope {
        KvScope {
            tenant: "acme".into(),
            user: user.into(),
            component: "mem".into(),
        }
    }

    fn open() -> (tempfile::TempDir, Arc<Store>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::open(&dir.path().join("db.redb")).expect("store");
        (dir, store)
    }

    #[tokio::test]
    async fn writes_are_seen_by_the_call_and_stored_on_commit() {
        let (_dir, store) = open();
        let mut txn = KvTransaction::new(store.clone(), scope("u1"), 1 << 20);
        txn.set("a/1", b"one".to_vec()).expect("set");
        txn.set("a/2", b"two".to_vec()).expect("set");
        txn.set("b/1", b"other".to_vec()).expect("set");
        assert_eq!(txn.get("a/1").expect("get"), Some(b"one".to_vec()));
        let page = txn.scan("a/", None, 10).expect("scan");
        assert_eq!(page.len(), 2);
        assert!(txn.commit(|| true).await.expect("commit"));

        let mut txn = KvTransaction::new(store.clone(), scope("u1"), 1 << 20);
        assert_eq!(txn.get("a/2").expect("get"), Some(b"two".to_vec()));
        txn.delete("a/1").expect("delete");
        txn.set("a/0", b"zero".to_vec()).expect("set");
        let keys: Vec<String> = txn
            .scan("a/", None, 10)
            .expect("scan")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(keys, ["a/0", "a/2"]);
        let after: Vec<String> = txn
            .scan("a/", Some("a/0"), 10)
            .expect("scan")
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(after, ["a/2"]);
        // Another user sees nothing of u1's.
        let other = KvTransaction::new(store.clone(), scope("u2"), 1 << 20);
        assert_eq!(other.get("a/2").expect("get"), None);
        assert!(other.scan("", None, 100).expect("scan").is_empty());
    }

    #[tokio::test]
    async fn the_quota_and_sizes_are_enforced() {
        let (_dir, store) = open();
        // Each row costs its key, its value and ROW_OVERHEAD_BYTES.
        let row = |value: usize| 1 + value + ROW_OVERHEAD_BYTES;
        let quota = 250;
        let mut txn = KvTransaction::new(store.clone(), scope("u1"), quota as u64);
        assert!(matches!(
            txn.set(&"k".repeat(MAX_KEY_BYTES + 1), Vec::new()),
            Err(KvError::TooLarge(_))
        ));
        txn.set("a", vec![0; 90]).expect("fits");
        assert!(row(90) + row(40) > quota);
        assert!(matches!(
            txn.set("b", vec![0; 40]),
            Err(KvError::QuotaExceeded(_))
        ));
        // Replacing a value frees its old bytes.
        txn.set("a", vec![0; 50]).expect("smaller");
        txn.set("b", vec![0; 40]).expect("fits now");
        assert!(txn.commit(|| true).await.expect("commit"));
        assert_eq!(
            tenant_usage(&store, "acme").expect("usage"),
            (row(50) + row(40)) as u64
        );
        // The usage counts across users of the tenant.
        let mut other = KvTransaction::new(store.clone(), scope("u2"), quota as u64);
        assert!(matches!(
            other.set("c", vec![0; 40]),
            Err(KvError::QuotaExceeded(_))
        ));
        // Rewriting one key does not use up the call's write allowance.
        let mut txn = KvTransaction::new(store.clone(), scope("u3"), 1 << 30);
        for _ in 0..64 {
            txn.set("big", vec![0; MAX_VALUE_BYTES]).expect("rewrite");
        }
    }

    #[tokio::test]
    async fn a_refused_commit_writes_nothing_and_forget_deletes_the_user() {
        let (_dir, store) = open();
        let mut txn = KvTransaction::new(store.clone(), scope("u1"), 1 << 20);
        txn.set("x", b"1".to_vec()).expect("set");
        assert!(!txn.commit(|| false).await.expect("commit"));
        let txn = KvTransaction::new(store.clone(), scope("u1"), 1 << 20);
        assert_eq!(txn.get("x").expect("get"), None);

        for user in ["u1", "u2"] {
            let mut txn = KvTransaction::new(store.clone(), scope(user), 1 << 20);
            txn.set("x", b"1".to_vec()).expect("set");
            txn.set("y", b"2".to_vec()).expect("set");
            assert!(txn.commit(|| true).await.expect("commit"));
        }
        let removed = store
            .write(|txn| delete_user_rows(txn, "acme", "u1"))
            .await
            .expect("forget");
        assert_eq!(removed, 2);
        let read = store.db().begin_read().expect("read");
        assert!(user_keys(&read, "acme", "u1").expect("keys").is_empty());
        assert_eq!(user_keys(&read, "acme", "u2").expect("keys").len(), 2);
        assert_eq!(
            tenant_usage(&store, "acme").expect("usage"),
            (4 + 2 * ROW_OVERHEAD_BYTES) as u64
        );
    }
}
