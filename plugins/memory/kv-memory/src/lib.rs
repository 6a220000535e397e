//! `kv-memory`: the first-party Loom memory component. It keeps items
//! (`loom:plugin/memory@0.1.3`) and bi-temporal facts
//! (`loom:plugin/facts@0.1.3`) in the host's key-value store, which the host
//! scopes to the tenant, the user and the component, so every key below is
//! the current user's.
//!
//! * **Items.** `remember` stores the text with its metadata (a JSON
//!   object), valid and recorded from now, under two keys: the text apart
//!   from the metadata, which may be large (whole episodes). `recall` ranks
//!   the newest items, at most 10,000 and no more than fit in 8 MiB of
//!   stored item JSON, lexically by the first 4 KiB of their text (BM25
//!   over lower-cased words, stop words dropped), scores divided by the
//!   best so the best item scores 1, and leaves out items sharing no word
//!   with the query; a query with nothing to rank by returns the newest
//!   items, each scored 1. It reads metadata only for the items it
//!   returns. `export` returns every item with its metadata, oldest first.
//! * **Facts.** The semantics of the host's built-in memory: a fact about
//!   a subject and predicate already believed with another object closes
//!   that belief where the new fact starts (expiring it, and recording it
//!   again with its window cut, unless the new fact starts where it did);
//!   the same object, believed and open from no later start, records
//!   nothing; a fact starting before a believed one with another object
//!   ends where that one starts. Subjects and objects compare case- and
//!   space-insensitively.
//! * **Forgetting** deletes every key the component holds for the user.
//!
//! # Key layout
//!
//! | Key | Value |
//! |-----|-------|
//! | `n/i` | items remembered so far (the next item's number), decimal |
//! | `n/f` | fact versions recorded so far (the next version's number), decimal |
//! | `i/<16 hex number>` | a memory item as JSON: `id` (`item_<16 hex number>`), `text`, `valid_from`, `valid_to` (absent while open), `recorded_at` |
//! | `m/<16 hex number>` | that item's metadata: the JSON object's text as given (none stored: `{}`) |
//! | `f/<16 hex number>` | a fact version as JSON; its id is `fact_<16 hex number>` |
//! | `b/<16 hex hash>/<predicate>/<16 hex number>` | empty: version `number` is believed now |
//!
//! Numbers are written as 16 lower-case hex digits, so keys sort by number,
//! oldest first. Items are numbered densely from 0 (they are only ever
//! removed all together), which lets recall read back from the newest, a
//! range of numbers at a time, and stop without reading older ones; export
//! reads `i/` and `m/` in the same order and joins them. In the belief
//! index the hash is the
//! 64-bit FNV-1a of the subject's match key (case-folded, spaces collapsed);
//! a predicate that would make the key longer than the host's 512 bytes is
//! written as `#` and its FNV-1a hash instead. Index entries are checked
//! against the stored version when read, so hash collisions do no harm.
//!
//! Each call into the component is one host transaction, so an error (an
//! invalid fact in a batch, say) writes nothing, and the host serialises
//! the calls of one user, so the counters are safe.

mod facts;
mod items;
mod store;
mod text;

use loom_sdk::kv;
use loom_sdk::memory::{
    Fact, FactQuery, MemoryError, MemoryItem, MemoryPlugin, NewFact, Recorded, ScoredItem,
};
use std::time::{SystemTime, UNIX_EPOCH};

/// The host's key-value store, through the SDK.
struct KvStore;

impl store::Store for KvStore {
    fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, MemoryError> {
        Ok(kv::get(key)?)
    }

    fn set(&mut self, key: &str, value: &[u8]) -> Result<(), MemoryError> {
        Ok(kv::set(key, value)?)
    }

    fn delete(&mut self, key: &str) -> Result<(), MemoryError> {
        Ok(kv::delete(key)?)
    }

    fn scan(
        &mut self,
        prefix: &str,
        start_after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<(String, Vec<u8>)>, MemoryError> {
        Ok(kv::scan(prefix, start_after, limit)?)
    }
}

/// Now, in unix milliseconds (0 before the epoch).
fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The component: memory and facts on the host's key-value store.
struct KvMemory;

impl MemoryPlugin for KvMemory {
    fn remember(text: &str, metadata: &str) -> Result<String, MemoryError> {
        items::remember(&mut KvStore, text, metadata, now_millis())
    }

    fn recall(query: &str, limit: u32) -> Result<Vec<ScoredItem>, MemoryError> {
        items::recall(&mut KvStore, query, limit)
    }

    fn forget_current_user() -> Result<u64, MemoryError> {
        items::forget(&mut KvStore)
    }

    fn export() -> Result<Vec<MemoryItem>, MemoryError> {
        items::export(&mut KvStore)
    }

    fn add_facts(facts: Vec<NewFact>, now: i64) -> Result<Vec<Recorded>, MemoryError> {
        facts::add_facts(&mut KvStore, facts, now)
    }

    fn retract(id: &str, now: i64) -> Result<Option<Fact>, MemoryError> {
        facts::retract(&mut KvStore, id, now)
    }

    fn query(query: &FactQuery) -> Result<Vec<Fact>, MemoryError> {
        facts::query(&mut KvStore, query)
    }
}

loom_sdk::export_memory!(KvMemory);

#[cfg(test)]
mod tests {
    use crate::store::{MemStore, Store};
    use crate::{facts, items};
    use loom_sdk::memory::{FactQuery, NewFact};

    #[test]
    fn forget_removes_everything_and_counts_items_and_versions() {
        let mut store = MemStore::default();
        items::remember(&mut store, "Alice likes tea", "{}", 1).unwrap();
        items::remember(&mut store, "Bob likes coffee", "{}", 2).unwrap();
        let fact = |object: &str, valid_from: i64| NewFact {
            subject: "Alice".into(),
            predicate: "lives_in".into(),
            object: object.into(),
            confidence: 1.0,
            sources: Vec::new(),
            valid_from,
            valid_until: None,
        };
        // Tokyo, then Paris: three versions (Tokyo, Paris, Tokyo closed).
        facts::add_facts(&mut store, vec![fact("Tokyo", 10), fact("Paris", 20)], 100).unwrap();
        store.set("stray", b"left by an older version").unwrap();
        assert_eq!(items::forget(&mut store).unwrap(), 5);
        assert!(store.map.is_empty(), "{:?}", store.map.keys());
        assert!(items::export(&mut store).unwrap().is_empty());
        let everything = FactQuery {
            valid_at: None,
            known_at: None,
            subject: None,
            predicate: None,
            include_expired: true,
        };
        assert!(facts::query(&mut store, &everything).unwrap().is_empty());
        // Numbering starts over.
        assert_eq!(
            items::remember(&mut store, "again", "{}", 3).unwrap(),
            "item_0000000000000000"
        );
        assert_eq!(items::forget(&mut store).unwrap(), 1);
    }
}
