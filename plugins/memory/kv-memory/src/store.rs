//! The storage the component's logic runs on: the host's key-value store in
//! the component, an in-memory map in the unit tests.

use loom_sdk::memory::MemoryError;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Entries asked for per [`Store::scan`] when reading a whole range.
pub(crate) const SCAN_PAGE: u32 = 500;

/// The largest value the host stores, in bytes (1 MiB).
pub(crate) const MAX_VALUE_BYTES: usize = 1024 * 1024;

/// A key-value store with the host's semantics: keys in ascending byte
/// order, scans by prefix with paging.
pub(crate) trait Store {
    /// The value under `key`, if any.
    fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, MemoryError>;
    /// Store `value` under `key`, replacing any previous value.
    fn set(&mut self, key: &str, value: &[u8]) -> Result<(), MemoryError>;
    /// Delete `key`; a missing key is not an error.
    fn delete(&mut self, key: &str) -> Result<(), MemoryError>;
    /// Up to `limit` entries with keys starting with `prefix`, ascending,
    /// after `start_after` when given.
    fn scan(
        &mut self,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, Vec<u8>)>, MemoryError>;
}

/// Every entry whose key starts with `prefix` and sorts after
/// `start_after` (all of them when `None`), ascending, read
/// [`SCAN_PAGE`] at a time.
pub(crate) fn scan_from(
    store: &mut dyn Store,
    prefix: &str,
    start_after: Option<String>,
) -> Result<Vec<(String, Vec<u8>)>, MemoryError> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let mut cursor = start_after;
    loop {
        let page = store.scan(prefix, cursor.as_deref(), SCAN_PAGE)?;
        let Some((last, _)) = page.last() else {
            return Ok(out);
        };
        // A page that does not move past the cursor would loop forever.
        if cursor.as_deref().is_some_and(|c| last.as_str() <= c) {
            return Ok(out);
        }
        cursor = Some(last.clone());
        out.extend(page);
    }
}

/// Delete every key starting with `prefix`; returns the keys deleted.
pub(crate) fn delete_prefix(
    store: &mut dyn Store,
    prefix: &str,
) -> Result<Vec<String>, MemoryError> {
    let mut deleted = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store.scan(prefix, cursor.as_deref(), SCAN_PAGE)?;
        let Some((last, _)) = page.last() else {
            return Ok(deleted);
        };
        if cursor.as_deref().is_some_and(|c| last.as_str() <= c) {
            return Ok(deleted);
        }
        cursor = Some(last.clone());
        for (key, _) in page {
            store.delete(&key)?;
            deleted.push(key);
        }
    }
}

/// The counter under `key` (0 when unset), advanced by one: each call
/// returns a number the previous calls did not.
pub(crate) fn next_number(store: &mut dyn Store, key: &str) -> Result<u64, MemoryError> {
    let current = read_counter(store, key)?;
    let next = current
        .checked_add(1)
        .ok_or_else(|| MemoryError::storage(format!("the counter `{key}` is exhausted")))?;
    store.set(key, next.to_string().as_bytes())?;
    Ok(current)
}

/// The value of the counter under `key`: how many numbers it has handed
/// out (0 when unset).
pub(crate) fn read_counter(store: &mut dyn Store, key: &str) -> Result<u64, MemoryError> {
    let Some(bytes) = store.get(key)? else {
        return Ok(0);
    };
    std::str::from_utf8(&bytes)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| MemoryError::storage(format!("the counter `{key}` is corrupt")))
}

/// `value` as stored JSON.
pub(crate) fn encode<T: Serialize>(value: &T, what: &str) -> Result<Vec<u8>, MemoryError> {
    serde_json::to_vec(value)
        .map_err(|e| MemoryError::storage(format!("cannot encode the {what}: {e}")))
}

/// Stored JSON read back as `T`; `what` names it in the error.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, MemoryError> {
    serde_json::from_slice(bytes)
        .map_err(|e| MemoryError::storage(format!("a stored {what} is corrupt: {e}")))
}

/// The number written as `<16 hex digits>` at the end of a key or an id.
pub(crate) fn parse_hex16(hex: &str) -> Option<u64> {
    if hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        u64::from_str_radix(hex, 16).ok()
    } else {
        None
    }
}

/// The most bytes of keys and values the host returns from one scan
/// (8 MiB), unless the first entry alone is more.
#[cfg(test)]
const SCAN_BYTES: usize = 8 * 1024 * 1024;

/// An in-memory [`Store`] for the unit tests; a `BTreeMap` keeps keys in
/// the host's order, and scans page as the host's do.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct MemStore {
    /// Every entry.
    pub(crate) map: std::collections::BTreeMap<String, Vec<u8>>,
}

#[cfg(test)]
impl Store for MemStore {
    fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, MemoryError> {
        Ok(self.map.get(key).cloned())
    }

    fn set(&mut self, key: &str, value: &[u8]) -> Result<(), MemoryError> {
        assert!(key.len() <= 512, "key over 512 bytes: {key}");
        assert!(
            value.len() <= MAX_VALUE_BYTES,
            "value over 1 MiB under {key}"
        );
        self.map.insert(key.to_owned(), value.to_vec());
        Ok(())
    }

    fn delete(&mut self, key: &str) -> Result<(), MemoryError> {
        self.map.remove(key);
        Ok(())
    }

    fn scan(
        &mut self,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, Vec<u8>)>, MemoryError> {
        use std::ops::Bound;
        let start = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(after.to_owned()),
            _ => Bound::Included(prefix.to_owned()),
        };
        // Like the host: at most 1,000 entries, and no more than 8 MiB of
        // keys and values (but at least one entry).
        let mut bytes = 0usize;
        let mut page = Vec::new();
        for (key, value) in self
            .map
            .range((start, Bound::Unbounded))
            .take_while(|(key, _)| key.starts_with(prefix))
            .take(limit.min(1000) as usize)
        {
            bytes += key.len() + value.len();
            if bytes > SCAN_BYTES && !page.is_empty() {
                break;
            }
            page.push((key.clone(), value.clone()));
        }
        Ok(page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scans_page_through_everything_in_order() {
        let mut store = MemStore::default();
        for i in 0..1234 {
            store.set(&format!("a/{i:05}"), b"x").unwrap();
        }
        store.set("b/0", b"y").unwrap();
        let all = scan_from(&mut store, "a/", None).unwrap();
        assert_eq!(all.len(), 1234);
        assert!(all.windows(2).all(|w| w[0].0 < w[1].0));
        let tail = scan_from(&mut store, "a/", Some("a/01000".into())).unwrap();
        assert_eq!(tail.len(), 233);
        assert_eq!(delete_prefix(&mut store, "a/").unwrap().len(), 1234);
        assert_eq!(store.map.len(), 1);
    }

    #[test]
    fn counters_count_and_hex_parses_strictly() {
        let mut store = MemStore::default();
        assert_eq!(next_number(&mut store, "n").unwrap(), 0);
        assert_eq!(next_number(&mut store, "n").unwrap(), 1);
        assert_eq!(read_counter(&mut store, "n").unwrap(), 2);
        store.set("n", b"junk").unwrap();
        assert!(next_number(&mut store, "n").is_err());
        assert_eq!(parse_hex16("00000000000000ff"), Some(255));
        assert_eq!(parse_hex16("+0000000000000ff"), None);
        assert_eq!(parse_hex16("ff"), None);
    }
}
