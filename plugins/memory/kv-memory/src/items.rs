//! Memory items: remember, recall, export, and forgetting everything.
//!
//! An item is two keys: `i/<number>` holds what recall ranks (id, text,
//! times) as JSON, and `m/<number>` the metadata, the JSON text as the
//! caller wrote it. Recall reads only the first kind, newest first, and
//! fetches metadata only for the items it returns, so large metadata
//! (whole episodes) costs nothing to rank past.

use crate::store::{self, MAX_VALUE_BYTES, Store};
use crate::text;
use loom_sdk::memory::{MemoryError, MemoryItem, ScoredItem};
use serde::{Deserialize, Serialize};

/// The counter of items: how many were ever remembered, so the next item's
/// number.
pub(crate) const NEXT_ITEM: &str = "n/i";

/// The prefix of item keys: `i/<16 hex number>` → the item as JSON.
pub(crate) const ITEM_PREFIX: &str = "i/";

/// The prefix of metadata keys: `m/<16 hex number>` → item `number`'s
/// metadata, a JSON object as text.
pub(crate) const METADATA_PREFIX: &str = "m/";

/// Recall ranks the newest this many items at most.
pub(crate) const RECALL_WINDOW: u64 = 10_000;

/// Recall reads no more than this many bytes of item JSON (8 MiB): it
/// ranks the newest items that fit.
pub(crate) const RECALL_BYTES: usize = 8 * 1024 * 1024;

/// The most items recall asks for in one range (it reads newest first, a
/// range of numbers at a time).
const RECALL_CHUNK: u64 = store::SCAN_PAGE as u64;

/// Bytes of each item's text that recall ranks by.
const RANKED_BYTES: usize = 4 * 1024;

/// The metadata of an item stored without any.
const NO_METADATA: &str = "{}";

/// The key of item `number`.
fn item_key(number: u64) -> String {
    format!("{ITEM_PREFIX}{number:016x}")
}

/// The key of item `number`'s metadata.
fn metadata_key(number: u64) -> String {
    format!("{METADATA_PREFIX}{number:016x}")
}

/// The id of item `number`.
fn item_id(number: u64) -> String {
    format!("item_{number:016x}")
}

/// `key` without `prefix`: the item's number as written in its keys.
fn key_suffix<'k>(key: &'k str, prefix: &str) -> &'k str {
    key.strip_prefix(prefix).unwrap_or(key)
}

/// An item as stored, JSON under `i/<number>`; its metadata is apart,
/// under `m/<number>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StoredItem {
    /// `item_<16 hex digits>`.
    id: String,
    /// The remembered text.
    text: String,
    /// When it became true (unix milliseconds).
    valid_from: u64,
    /// When it stopped being true, if it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    valid_to: Option<u64>,
    /// When it was stored (unix milliseconds).
    recorded_at: u64,
}

impl StoredItem {
    /// The item as the interface has it, with its `metadata`.
    fn with_metadata(self, metadata: String) -> MemoryItem {
        MemoryItem {
            id: self.id,
            text: self.text,
            metadata,
            valid_from: self.valid_from,
            valid_to: self.valid_to,
            recorded_at: self.recorded_at,
        }
    }
}

/// Stored metadata read back as text.
fn metadata_text(bytes: Vec<u8>) -> Result<String, MemoryError> {
    String::from_utf8(bytes)
        .map_err(|_| MemoryError::storage("a stored item's metadata is corrupt: not UTF-8"))
}

/// Remember `text` with `metadata` (a JSON object) at `now` (unix
/// milliseconds); returns the new item's id.
pub(crate) fn remember(
    store: &mut dyn Store,
    text: &str,
    metadata: &str,
    now: u64,
) -> Result<String, MemoryError> {
    if text.trim().is_empty() {
        return Err(MemoryError::invalid(
            "the text to remember is empty; give it some text",
        ));
    }
    if metadata.len() > MAX_VALUE_BYTES {
        return Err(MemoryError::invalid(format!(
            "the metadata takes {} bytes, over the {MAX_VALUE_BYTES}-byte limit; shorten it",
            metadata.len()
        )));
    }
    match serde_json::from_str::<serde_json::Value>(metadata) {
        Ok(serde_json::Value::Object(_)) => {}
        Ok(_) => {
            return Err(MemoryError::invalid(
                "the metadata must be a JSON object (`{}` for none)",
            ));
        }
        Err(error) => {
            return Err(MemoryError::invalid(format!(
                "the metadata is not JSON: {error}"
            )));
        }
    }
    let number = store::next_number(store, NEXT_ITEM)?;
    let item = StoredItem {
        id: item_id(number),
        text: text.to_owned(),
        valid_from: now,
        valid_to: None,
        recorded_at: now,
    };
    let bytes = store::encode(&item, "memory item")?;
    if bytes.len() > MAX_VALUE_BYTES {
        return Err(MemoryError::invalid(format!(
            "the text takes {} bytes to store, over the {MAX_VALUE_BYTES}-byte limit; shorten it",
            bytes.len()
        )));
    }
    store.set(&item_key(number), &bytes)?;
    store.set(&metadata_key(number), metadata.as_bytes())?;
    Ok(item.id)
}

/// What [`read_range`] found.
enum Range {
    /// Every item in the range, oldest first, and the bytes their JSON
    /// takes.
    Within(Vec<(String, Vec<u8>)>, usize),
    /// The items read so far passed the budget: `read` of them, oldest
    /// first, took `bytes`.
    Over { read: usize, bytes: usize },
}

/// The stored items numbered `first..end`, oldest first, unless their JSON
/// takes more than `budget` bytes: reading stops at the page that passes
/// it.
fn read_range(
    store: &mut dyn Store,
    first: u64,
    end: u64,
    budget: usize,
) -> Result<Range, MemoryError> {
    let wanted = end.saturating_sub(first);
    let end_key = item_key(end);
    let mut cursor = first.checked_sub(1).map(item_key);
    let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
    let mut bytes = 0usize;
    loop {
        let read = u64::try_from(entries.len()).unwrap_or(u64::MAX);
        if read >= wanted {
            return Ok(Range::Within(entries, bytes));
        }
        let limit = u32::try_from(wanted - read).unwrap_or(u32::MAX);
        let page = store.scan(ITEM_PREFIX, cursor.as_deref(), limit)?;
        let Some((last, _)) = page.last() else {
            return Ok(Range::Within(entries, bytes));
        };
        // A page that does not move past the cursor would loop forever.
        if cursor.as_deref().is_some_and(|c| last.as_str() <= c) {
            return Ok(Range::Within(entries, bytes));
        }
        cursor = Some(last.clone());
        let mut past_end = false;
        for (key, value) in page {
            if key >= end_key {
                past_end = true;
                break;
            }
            bytes += value.len();
            entries.push((key, value));
        }
        if bytes > budget {
            return Ok(Range::Over {
                read: entries.len(),
                bytes,
            });
        }
        if past_end {
            return Ok(Range::Within(entries, bytes));
        }
    }
}

/// How many items of `average` bytes fit in `left` bytes, kept between 1
/// and `max` (at least 1).
fn items_fitting(left: usize, average: usize, max: u64) -> u64 {
    let fitting = left.checked_div(average).unwrap_or(usize::MAX);
    u64::try_from(fitting)
        .unwrap_or(u64::MAX)
        .clamp(1, max.max(1))
}

/// The newest items, newest first, each with its key's number: at most
/// `window` of them, and only as many, newest first, as fit in `budget`
/// bytes of stored JSON. Older items are not read.
///
/// Reads a range of numbers at a time, going back from the newest; a range
/// whose items pass what is left of the budget is read again smaller (the
/// older items it holds are not wanted), sized from what its items
/// averaged, so that the bytes read stay near the budget.
fn newest_items(
    store: &mut dyn Store,
    window: u64,
    budget: usize,
) -> Result<Vec<(String, StoredItem)>, MemoryError> {
    let count = store::read_counter(store, NEXT_ITEM)?;
    let oldest = count.saturating_sub(window);
    let mut items = Vec::new();
    let mut end = count;
    let mut chunk = RECALL_CHUNK;
    let mut used = 0usize;
    while end > oldest && used < budget {
        let first = end - chunk.min(end - oldest);
        let left = budget - used;
        match read_range(store, first, end, left)? {
            Range::Within(entries, bytes) => {
                used += bytes;
                if let Some(average) = bytes.checked_div(entries.len()) {
                    chunk = items_fitting(
                        budget - used,
                        average,
                        chunk.saturating_mul(2).min(RECALL_CHUNK),
                    );
                }
                for (key, value) in entries.into_iter().rev() {
                    let item = store::decode(&value, "memory item")?;
                    items.push((key_suffix(&key, ITEM_PREFIX).to_owned(), item));
                }
                end = first;
            }
            Range::Over { read, bytes } => {
                let tried = end - first;
                if tried <= 1 {
                    // The newest item not read yet does not fit by itself.
                    break;
                }
                let average = bytes.checked_div(read).unwrap_or(bytes);
                chunk = items_fitting(left, average, tried / 2);
            }
        }
    }
    Ok(items)
}

/// The first `max` bytes of `text`, on a character boundary.
fn prefix(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// At most `limit` items relevant to `query`, best first (ties: newer
/// first), among the newest [`RECALL_WINDOW`] items that fit in
/// [`RECALL_BYTES`] of item JSON. Items sharing no term with the query are
/// left out; a query with nothing to rank by (empty, or stop words only)
/// returns the newest items, each scored 1. Only the returned items'
/// metadata is read.
pub(crate) fn recall(
    store: &mut dyn Store,
    query: &str,
    limit: u32,
) -> Result<Vec<ScoredItem>, MemoryError> {
    recall_within(store, query, limit, RECALL_BYTES)
}

/// [`recall`], reading at most `budget` bytes of item JSON.
fn recall_within(
    store: &mut dyn Store,
    query: &str,
    limit: u32,
    budget: usize,
) -> Result<Vec<ScoredItem>, MemoryError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let terms = text::query_terms(query);
    let window = if terms.is_empty() {
        RECALL_WINDOW.min(u64::from(limit))
    } else {
        RECALL_WINDOW
    };
    // Newest first.
    let items = newest_items(store, window, budget)?;
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let chosen: Vec<((String, StoredItem), f32)> = if terms.is_empty() {
        items
            .into_iter()
            .take(limit)
            .map(|item| (item, 1.0))
            .collect()
    } else {
        let scores = text::relevance(
            &terms,
            items
                .iter()
                .map(|(_, item)| prefix(&item.text, RANKED_BYTES)),
        );
        let mut ranked: Vec<(usize, f32)> = scores
            .into_iter()
            .enumerate()
            .filter(|(_, score)| *score > 0.0)
            .collect();
        // Lower indices are newer.
        ranked.sort_by(|(a, score_a), (b, score_b)| score_b.total_cmp(score_a).then(a.cmp(b)));
        ranked.truncate(limit);
        let mut items: Vec<Option<(String, StoredItem)>> = items.into_iter().map(Some).collect();
        ranked
            .into_iter()
            .filter_map(|(i, score)| items[i].take().map(|item| (item, score)))
            .collect()
    };
    chosen
        .into_iter()
        .map(|((number, item), score)| {
            let metadata = match store.get(&format!("{METADATA_PREFIX}{number}"))? {
                Some(bytes) => metadata_text(bytes)?,
                None => NO_METADATA.to_owned(),
            };
            Ok(ScoredItem {
                item: item.with_metadata(metadata),
                score,
            })
        })
        .collect()
}

/// Every item with its metadata, oldest first.
pub(crate) fn export(store: &mut dyn Store) -> Result<Vec<MemoryItem>, MemoryError> {
    let items = store::scan_from(store, ITEM_PREFIX, None)?;
    // Both scans are in number order: join them as they go.
    let mut metadata = store::scan_from(store, METADATA_PREFIX, None)?
        .into_iter()
        .peekable();
    let mut out = Vec::with_capacity(items.len());
    for (key, bytes) in items {
        let number = key_suffix(&key, ITEM_PREFIX);
        let item: StoredItem = store::decode(&bytes, "memory item")?;
        // Metadata of no item (there should be none) is passed over.
        while metadata
            .next_if(|(key, _)| key_suffix(key, METADATA_PREFIX) < number)
            .is_some()
        {}
        let text = match metadata.next_if(|(key, _)| key_suffix(key, METADATA_PREFIX) == number) {
            Some((_, bytes)) => metadata_text(bytes)?,
            None => NO_METADATA.to_owned(),
        };
        out.push(item.with_metadata(text));
    }
    Ok(out)
}

/// Delete every key the component holds for the user; returns how many
/// items and fact versions were removed (an item's metadata key is part of
/// the item, not counted apart).
pub(crate) fn forget(store: &mut dyn Store) -> Result<u64, MemoryError> {
    let deleted = store::delete_prefix(store, "")?;
    let removed = deleted
        .iter()
        .filter(|key| key.starts_with(ITEM_PREFIX) || key.starts_with(crate::facts::FACT_PREFIX))
        .count();
    Ok(u64::try_from(removed).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    fn texts(found: &[ScoredItem]) -> Vec<&str> {
        found.iter().map(|s| s.item.text.as_str()).collect()
    }

    /// A [`MemStore`] that records what is read from it.
    #[derive(Default)]
    struct Recording {
        inner: MemStore,
        /// Keys asked for with `get`.
        gets: Vec<String>,
        /// Prefixes scanned.
        scans: Vec<String>,
        /// Bytes of values returned by scans.
        scanned_bytes: usize,
    }

    impl Store for Recording {
        fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, MemoryError> {
            self.gets.push(key.to_owned());
            self.inner.get(key)
        }

        fn set(&mut self, key: &str, value: &[u8]) -> Result<(), MemoryError> {
            self.inner.set(key, value)
        }

        fn delete(&mut self, key: &str) -> Result<(), MemoryError> {
            self.inner.delete(key)
        }

        fn scan(
            &mut self,
            prefix: &str,
            start_after: Option<&str>,
            limit: u32,
        ) -> Result<Vec<(String, Vec<u8>)>, MemoryError> {
            self.scans.push(prefix.to_owned());
            let page = self.inner.scan(prefix, start_after, limit)?;
            self.scanned_bytes += page.iter().map(|(_, value)| value.len()).sum::<usize>();
            Ok(page)
        }
    }

    /// The texts of the newest items whose stored JSON fits in `budget`
    /// bytes, newest first: what recall with no query should return.
    fn newest_fitting(store: &mut MemStore, budget: usize) -> Vec<String> {
        let mut used = 0;
        let mut out = Vec::new();
        let items = store
            .map
            .iter()
            .filter(|(key, _)| key.starts_with(ITEM_PREFIX));
        for (_, value) in items.rev() {
            used += value.len();
            if used > budget {
                break;
            }
            let item: StoredItem = store::decode(value, "memory item").unwrap();
            out.push(item.text);
        }
        out
    }

    #[test]
    fn items_are_stored_apart_from_their_metadata() {
        let mut store = Recording::default();
        let episode = format!(r#"{{"transcript":"{}"}}"#, "tool output ".repeat(4_000));
        remember(&mut store, "Alice likes tea", &episode, 1).unwrap();
        remember(&mut store, "Bob likes coffee", r#"{"source":"cli"}"#, 2).unwrap();
        remember(&mut store, "Carol likes tea too", "{}", 3).unwrap();
        let map = &store.inner.map;
        assert_eq!(
            map.get("m/0000000000000000").map(Vec::as_slice),
            Some(episode.as_bytes())
        );
        let stored = String::from_utf8(map["i/0000000000000000"].clone()).unwrap();
        assert!(
            stored.len() < 200 && !stored.contains("transcript"),
            "{stored}"
        );

        // Recall reads items by scanning `i/` only, and fetches the
        // metadata of the items it returns only.
        store.gets.clear();
        let found = recall(&mut store, "who likes Carol", 1).unwrap();
        assert_eq!(texts(&found), vec!["Carol likes tea too"]);
        assert_eq!(found[0].item.metadata, "{}");
        assert!(store.scans.iter().all(|prefix| prefix == ITEM_PREFIX));
        assert_eq!(store.gets, vec![NEXT_ITEM, "m/0000000000000002"]);
        assert!(store.scanned_bytes < 1_000, "{}", store.scanned_bytes);

        store.gets.clear();
        let mut found = recall(&mut store, "tea", 5).unwrap();
        assert_eq!(found.len(), 2);
        store.gets.sort();
        assert_eq!(
            store.gets,
            vec!["m/0000000000000000", "m/0000000000000002", NEXT_ITEM]
        );
        found.sort_by(|a, b| a.item.id.cmp(&b.item.id));
        assert_eq!(found[0].item.text, "Alice likes tea");
        assert_eq!(found[0].item.id, "item_0000000000000000");
        assert_eq!(found[0].item.metadata, episode);
        assert_eq!(found[1].item.metadata, "{}");
        let newest = recall(&mut store, "", 2).unwrap();
        assert_eq!(newest[1].item.metadata, r#"{"source":"cli"}"#);

        // Export joins every item with its metadata, oldest first; an item
        // without metadata has `{}`, and metadata without an item is
        // passed over.
        let all = export(&mut store).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(
            all[0],
            MemoryItem {
                id: "item_0000000000000000".into(),
                text: "Alice likes tea".into(),
                metadata: episode.clone(),
                valid_from: 1,
                valid_to: None,
                recorded_at: 1,
            }
        );
        assert_eq!(all[1].metadata, r#"{"source":"cli"}"#);
        assert_eq!(all[2].metadata, "{}");
        store.delete("m/0000000000000001").unwrap();
        store.set("m/00000000000000ff", br#"{"orphan":1}"#).unwrap();
        let all = export(&mut store).unwrap();
        let metadata: Vec<&str> = all.iter().map(|item| item.metadata.as_str()).collect();
        assert_eq!(metadata, vec![episode.as_str(), "{}", "{}"]);
        assert_eq!(recall(&mut store, "Bob", 1).unwrap()[0].item.metadata, "{}");
    }

    #[test]
    fn forget_removes_metadata_keys() {
        let mut store = MemStore::default();
        remember(&mut store, "Alice likes tea", r#"{"a":1}"#, 1).unwrap();
        remember(&mut store, "Bob likes coffee", r#"{"b":2}"#, 2).unwrap();
        assert_eq!(
            store
                .map
                .keys()
                .filter(|key| key.starts_with(METADATA_PREFIX))
                .count(),
            2
        );
        assert_eq!(forget(&mut store).unwrap(), 2);
        assert!(store.map.is_empty(), "{:?}", store.map.keys());
        assert!(export(&mut store).unwrap().is_empty());
        assert!(recall(&mut store, "", 5).unwrap().is_empty());
    }

    #[test]
    fn oversized_text_or_metadata_is_invalid() {
        let mut store = MemStore::default();
        let long_text = "a".repeat(MAX_VALUE_BYTES);
        assert!(matches!(
            remember(&mut store, &long_text, "{}", 1),
            Err(MemoryError::Invalid(_))
        ));
        let long_metadata = format!(r#"{{"x":"{}"}}"#, "a".repeat(MAX_VALUE_BYTES));
        assert!(matches!(
            remember(&mut store, "short", &long_metadata, 1),
            Err(MemoryError::Invalid(_))
        ));
        // Each may take nearly the whole value limit by itself.
        let text = "a".repeat(MAX_VALUE_BYTES - 200);
        let metadata = format!(r#"{{"x":"{}"}}"#, "a".repeat(MAX_VALUE_BYTES - 8));
        assert_eq!(metadata.len(), MAX_VALUE_BYTES);
        remember(&mut store, &text, &metadata, 1).unwrap();
        let all = export(&mut store).unwrap();
        assert_eq!(
            (all[0].text.len(), all[0].metadata.len()),
            (text.len(), metadata.len())
        );
    }

    #[test]
    fn recall_reads_the_newest_items_within_its_byte_budget() {
        let mut store = Recording::default();
        // 12 items of about 900 KB: only the newest 9 fit in 8 MiB.
        for i in 0..12u64 {
            let text = format!("item{i} {}", "word ".repeat(180_000));
            let metadata = format!(r#"{{"n":"{}"}}"#, "m".repeat(500_000));
            remember(&mut store, &text, &metadata, i).unwrap();
        }
        store.scanned_bytes = 0;
        let found = recall(&mut store, "", 100).unwrap();
        // The first range read (all 12) passes the budget, so the newest 9
        // are read again: under three budgets' worth in all.
        assert!(
            store.scanned_bytes < 3 * RECALL_BYTES,
            "{}",
            store.scanned_bytes
        );
        assert_eq!(found.len(), 9);
        assert!(found[0].item.text.starts_with("item11 "));
        assert!(found[8].item.text.starts_with("item3 "));
        assert!(recall(&mut store, "item2", 5).unwrap().is_empty());
        let found = recall(&mut store, "item3", 5).unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].item.metadata.len(), 500_008);
        assert!(store.scans.iter().all(|prefix| prefix == ITEM_PREFIX));

        // Items of mixed sizes, against budgets of every size: recall
        // returns the newest run that fits, whole.
        let mut store = MemStore::default();
        for i in 0..700u64 {
            let size = [10, 2_000, 40, 7_000, 300][usize::try_from(i % 5).unwrap()]
                * (1 + usize::try_from(i % 7).unwrap());
            let text = format!("n{i} {}", "x".repeat(size));
            remember(&mut store, &text, "{}", i).unwrap();
        }
        for budget in [0, 1, 100, 5_000, 20_000, 123_456, 1_000_000, 10_000_000] {
            let found = recall_within(&mut store, "", 1_000, budget).unwrap();
            let found: Vec<String> = found.into_iter().map(|s| s.item.text).collect();
            assert_eq!(found, newest_fitting(&mut store, budget), "budget {budget}");
        }
        assert_eq!(
            recall_within(&mut store, "", 1_000, usize::MAX)
                .unwrap()
                .len(),
            700
        );
        assert_eq!(
            recall_within(&mut store, "", 3, usize::MAX).unwrap().len(),
            3
        );
        let ranked = recall_within(&mut store, "n0 n699", 10, 20_000).unwrap();
        assert_eq!(texts(&ranked).len(), 1);
        assert!(ranked[0].item.text.starts_with("n699 "));
    }

    #[test]
    fn remember_checks_metadata_and_stores_items() {
        let mut store = MemStore::default();
        let id = remember(&mut store, "Alice likes tea", r#"{"source":"cli"}"#, 1_000).unwrap();
        assert_eq!(id, "item_0000000000000000");
        for bad in ["[]", "3", "\"x\"", "", "{nope"] {
            assert!(
                matches!(
                    remember(&mut store, "text", bad, 1),
                    Err(MemoryError::Invalid(_))
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            remember(&mut store, "  ", "{}", 1),
            Err(MemoryError::Invalid(_))
        ));
        let id = remember(&mut store, "Bob likes coffee", "{}", 2_000).unwrap();
        assert_eq!(id, "item_0000000000000001");
        let all = export(&mut store).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(
            all[0],
            MemoryItem {
                id: "item_0000000000000000".into(),
                text: "Alice likes tea".into(),
                metadata: r#"{"source":"cli"}"#.into(),
                valid_from: 1_000,
                valid_to: None,
                recorded_at: 1_000,
            }
        );
        assert_eq!(all[1].text, "Bob likes coffee");
    }

    #[test]
    fn recall_ranks_lexically() {
        let mut store = MemStore::default();
        for (i, text) in [
            "Alice lives in Paris",
            "The weather in Paris was rainy",
            "Bob prefers tea over coffee",
            "Alice prefers tea; Alice drinks tea daily",
        ]
        .into_iter()
        .enumerate()
        {
            remember(&mut store, text, "{}", i as u64).unwrap();
        }
        let found = recall(&mut store, "What does Alice drink? Tea?", 10).unwrap();
        assert_eq!(
            found[0].item.text,
            "Alice prefers tea; Alice drinks tea daily"
        );
        assert_eq!(found[0].score, 1.0);
        assert!(found.iter().all(|s| s.score > 0.0 && s.score <= 1.0));
        assert!(found.windows(2).all(|w| w[0].score >= w[1].score));
        assert!(!texts(&found).contains(&"The weather in Paris was rainy"));
        assert_eq!(found.len(), 3);

        assert_eq!(recall(&mut store, "tea", 1).unwrap().len(), 1);
        assert!(recall(&mut store, "tea", 0).unwrap().is_empty());
        assert!(recall(&mut store, "submarine", 5).unwrap().is_empty());

        let newest = recall(&mut store, "  ", 2).unwrap();
        assert_eq!(
            texts(&newest),
            vec![
                "Alice prefers tea; Alice drinks tea daily",
                "Bob prefers tea over coffee"
            ]
        );
        assert!(newest.iter().all(|s| s.score == 1.0));
    }

    #[test]
    fn recall_looks_at_the_newest_window_only() {
        let mut store = MemStore::default();
        remember(&mut store, "ancient zebra", "{}", 0).unwrap();
        // Pretend the window's worth of newer items exists by moving the
        // counter; the old item falls out of it.
        store
            .set(NEXT_ITEM, (RECALL_WINDOW + 1).to_string().as_bytes())
            .unwrap();
        assert!(recall(&mut store, "zebra", 5).unwrap().is_empty());
        store
            .set(NEXT_ITEM, RECALL_WINDOW.to_string().as_bytes())
            .unwrap();
        assert_eq!(recall(&mut store, "zebra", 5).unwrap().len(), 1);
    }
}
