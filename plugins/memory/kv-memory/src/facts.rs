//! Bi-temporal facts: what was true when (world time), and what was
//! believed when (knowledge time). The same semantics as the host's
//! built-in memory.
//!
//! A stored version is never edited in what it claims. When a new fact
//! about the same subject and predicate names another object, the believed
//! version that holds where the new fact starts is *closed*: it is expired
//! (no longer believed as it stood) and, unless the new fact starts where
//! it did (a correction), recorded again with its window ending where the
//! new fact starts. So a query known-at before the change still sees the
//! old belief, open-ended; one after it sees both the closed old version
//! and the new fact, each valid in its own window.

use crate::store::{self, Store};
use crate::text::{hash64, match_key};
use loom_sdk::memory::{Expiry, Fact, FactQuery, MemoryError, NewFact, Recorded, Supersession};
use serde::{Deserialize, Serialize};

/// The counter of fact versions: the next version's number.
pub(crate) const NEXT_FACT: &str = "n/f";

/// The prefix of fact keys: `f/<16 hex number>` → the version as JSON.
pub(crate) const FACT_PREFIX: &str = "f/";

/// The prefix of the index of believed versions:
/// `b/<16 hex hash of match_key(subject)>/<predicate>/<16 hex number>`.
const BELIEF_PREFIX: &str = "b/";

/// The longest key the host accepts, in bytes.
const MAX_KEY_BYTES: usize = 512;

/// Bytes of an index key besides its predicate segment: `b/`, the subject
/// hash, two `/`, the number.
const INDEX_KEY_OVERHEAD: usize = BELIEF_PREFIX.len() + 16 + 1 + 1 + 16;

/// The key of version `number`.
fn fact_key(number: u64) -> String {
    format!("{FACT_PREFIX}{number:016x}")
}

/// The id of version `number`.
fn fact_id(number: u64) -> String {
    format!("fact_{number:016x}")
}

/// The number in a `fact_<16 hex digits>` id.
fn fact_number(id: &str) -> Option<u64> {
    store::parse_hex16(id.strip_prefix("fact_")?)
}

/// The index prefix of every believed version about `subject` (any
/// spelling: it is reduced to its match key).
fn subject_prefix(subject: &str) -> String {
    format!("{BELIEF_PREFIX}{:016x}/", hash64(&match_key(subject)))
}

/// The index prefix of every believed version about `subject` and
/// `predicate`. A predicate too long for the key is replaced by `#` and its
/// hash; either way the stored version is checked on read, so hash
/// collisions do no harm.
fn subject_predicate_prefix(subject: &str, predicate: &str) -> String {
    let segment = if INDEX_KEY_OVERHEAD + predicate.len() <= MAX_KEY_BYTES {
        predicate.to_owned()
    } else {
        format!("#{:016x}", hash64(predicate))
    };
    format!("{}{segment}/", subject_prefix(subject))
}

/// The index key of believed version `number` of `fact`.
fn index_key(fact: &Fact, number: u64) -> String {
    format!(
        "{}{number:016x}",
        subject_predicate_prefix(&fact.subject, &fact.predicate)
    )
}

/// The version number at the end of an index key.
fn indexed_number(key: &str) -> Option<u64> {
    store::parse_hex16(key.get(key.len().checked_sub(16)?..)?)
}

/// Why a version stopped being believed, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
enum StoredExpiry {
    /// A newer fact closed it.
    Superseded {
        /// The fact that closed it.
        by: String,
        /// The version recorded in its place, if any.
        closed: Option<String>,
    },
    /// Withdrawn by hand.
    Retracted,
}

/// A fact version as stored, JSON under `f/<number>` (the field names of
/// the host's built-in memory).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StoredFact {
    /// `fact_<16 hex digits>`.
    id: String,
    /// What the fact is about, as written.
    subject: String,
    /// The relation, canonical.
    predicate: String,
    /// The value, as written.
    object: String,
    /// How sure the writer was, 0 to 1.
    confidence: f32,
    /// Where it came from.
    sources: Vec<String>,
    /// World time: from when it holds.
    valid_from: i64,
    /// World time: until when it holds (exclusive).
    valid_until: Option<i64>,
    /// Knowledge time: when this version was recorded.
    recorded_at: i64,
    /// Knowledge time: when it stopped being believed.
    expired_at: Option<i64>,
    /// Why it stopped being believed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expired_by: Option<StoredExpiry>,
    /// The version this one replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    replaces: Option<String>,
}

impl From<&Fact> for StoredFact {
    fn from(fact: &Fact) -> Self {
        StoredFact {
            id: fact.id.clone(),
            subject: fact.subject.clone(),
            predicate: fact.predicate.clone(),
            object: fact.object.clone(),
            confidence: fact.confidence,
            sources: fact.sources.clone(),
            valid_from: fact.valid_from,
            valid_until: fact.valid_until,
            recorded_at: fact.recorded_at,
            expired_at: fact.expired_at,
            expired_by: fact.expired_by.as_ref().map(|expiry| match expiry {
                Expiry::Superseded(s) => StoredExpiry::Superseded {
                    by: s.by.clone(),
                    closed: s.closed.clone(),
                },
                Expiry::Retracted => StoredExpiry::Retracted,
            }),
            replaces: fact.replaces.clone(),
        }
    }
}

impl From<StoredFact> for Fact {
    fn from(fact: StoredFact) -> Self {
        Fact {
            id: fact.id,
            subject: fact.subject,
            predicate: fact.predicate,
            object: fact.object,
            confidence: fact.confidence,
            sources: fact.sources,
            valid_from: fact.valid_from,
            valid_until: fact.valid_until,
            recorded_at: fact.recorded_at,
            expired_at: fact.expired_at,
            expired_by: fact.expired_by.map(|expiry| match expiry {
                StoredExpiry::Superseded { by, closed } => {
                    Expiry::Superseded(Supersession { by, closed })
                }
                StoredExpiry::Retracted => Expiry::Retracted,
            }),
            replaces: fact.replaces,
        }
    }
}

/// Whether `fact` was believed at `known_at` (now when `None`).
fn known_at(fact: &Fact, known_at: Option<i64>) -> bool {
    match known_at {
        None => fact.expired_at.is_none(),
        Some(at) => fact.recorded_at <= at && fact.expired_at.is_none_or(|end| end > at),
    }
}

/// Whether `fact` holds at `valid_at` in the world.
fn valid_at(fact: &Fact, valid_at: i64) -> bool {
    fact.valid_from <= valid_at && fact.valid_until.is_none_or(|end| valid_at < end)
}

/// Whether `fact` answers `query`.
fn matches(query: &FactQuery, fact: &Fact) -> bool {
    (query.include_expired || known_at(fact, query.known_at))
        && query.valid_at.is_none_or(|at| valid_at(fact, at))
        && query
            .subject
            .as_ref()
            .is_none_or(|s| match_key(s) == match_key(&fact.subject))
        && query
            .predicate
            .as_ref()
            .is_none_or(|p| *p == fact.predicate)
}

/// Version `number`, if stored.
fn load(store: &mut dyn Store, number: u64) -> Result<Option<Fact>, MemoryError> {
    store
        .get(&fact_key(number))?
        .map(|bytes| store::decode::<StoredFact>(&bytes, "fact").map(Fact::from))
        .transpose()
}

/// Store `fact` as version `number`.
fn save(store: &mut dyn Store, number: u64, fact: &Fact) -> Result<(), MemoryError> {
    let bytes = store::encode(&StoredFact::from(fact), "fact")?;
    store.set(&fact_key(number), &bytes)
}

/// Store `fact` as version `number`, believed: in the index.
fn believe(store: &mut dyn Store, number: u64, fact: &Fact) -> Result<(), MemoryError> {
    save(store, number, fact)?;
    store.set(&index_key(fact, number), &[])
}

/// Store `expired` (its `expired_at` set) as version `number`, no longer
/// believed: out of the index.
fn stop_believing(store: &mut dyn Store, number: u64, expired: &Fact) -> Result<(), MemoryError> {
    save(store, number, expired)?;
    store.delete(&index_key(expired, number))
}

/// A version number no stored version holds.
fn fresh_number(store: &mut dyn Store) -> Result<u64, MemoryError> {
    loop {
        let number = store::next_number(store, NEXT_FACT)?;
        if store.get(&fact_key(number))?.is_none() {
            return Ok(number);
        }
    }
}

/// Check `fact`: subject, predicate and object not empty, window not
/// empty; trim the text and bring the confidence into 0..=1.
fn validated(mut fact: NewFact) -> Result<NewFact, MemoryError> {
    fact.subject = fact.subject.trim().to_owned();
    fact.predicate = fact.predicate.trim().to_owned();
    fact.object = fact.object.trim().to_owned();
    for (field, value) in [
        ("subject", &fact.subject),
        ("predicate", &fact.predicate),
        ("object", &fact.object),
    ] {
        if value.is_empty() {
            return Err(MemoryError::invalid(format!(
                "the fact's {field} is empty; give it some text"
            )));
        }
    }
    if !fact.confidence.is_finite() {
        fact.confidence = 1.0;
    }
    fact.confidence = fact.confidence.clamp(0.0, 1.0);
    if let Some(until) = fact.valid_until
        && until <= fact.valid_from
    {
        return Err(MemoryError::invalid(format!(
            "the fact's valid_until ({until}) is not after its valid_from ({})",
            fact.valid_from
        )));
    }
    Ok(fact)
}

/// Record `facts` in order at knowledge time `now`. Every fact is checked
/// before anything is written; an invalid one fails the whole call.
pub(crate) fn add_facts(
    store: &mut dyn Store,
    facts: Vec<NewFact>,
    now: i64,
) -> Result<Vec<Recorded>, MemoryError> {
    let facts = facts
        .into_iter()
        .map(validated)
        .collect::<Result<Vec<_>, _>>()?;
    facts.iter().map(|fact| record(store, fact, now)).collect()
}

/// The believed versions about `subject_key` (a match key) and
/// `predicate`, by number, ascending.
fn believed_about(
    store: &mut dyn Store,
    subject: &str,
    predicate: &str,
) -> Result<Vec<(u64, Fact)>, MemoryError> {
    let subject_key = match_key(subject);
    let prefix = subject_predicate_prefix(subject, predicate);
    let mut current = Vec::new();
    for (key, _) in store::scan_from(store, &prefix, None)? {
        let Some(number) = indexed_number(&key) else {
            continue;
        };
        let Some(fact) = load(store, number)? else {
            continue;
        };
        // The subject hash may collide, and a long predicate is hashed:
        // keep only what is really about this subject and predicate.
        if match_key(&fact.subject) == subject_key
            && fact.predicate == predicate
            && fact.expired_at.is_none()
        {
            current.push((number, fact));
        }
    }
    Ok(current)
}

/// Record `new` (validated) at knowledge time `now`, closing what it
/// supersedes.
fn record(store: &mut dyn Store, new: &NewFact, now: i64) -> Result<Recorded, MemoryError> {
    let object_key = match_key(&new.object);
    let valid_from = new.valid_from;
    let mut valid_until = new.valid_until;
    let current = believed_about(store, &new.subject, &new.predicate)?;

    // The same object, believed and open over the new window: nothing new.
    if let Some((_, same)) = current.iter().find(|(_, f)| {
        match_key(&f.object) == object_key && f.valid_from <= valid_from && f.valid_until.is_none()
    }) {
        return Ok(Recorded {
            fact: same.clone(),
            created: false,
            closed: Vec::new(),
        });
    }

    let number = fresh_number(store)?;
    let id = fact_id(number);
    let mut closed = Vec::new();
    // Where the believed versions with another object start: the new fact
    // ends at the first one after its own start.
    let mut later_starts = Vec::new();
    for (old_number, old) in current {
        if match_key(&old.object) == object_key {
            continue;
        }
        let overlaps_start =
            old.valid_from <= valid_from && old.valid_until.is_none_or(|until| until > valid_from);
        if !overlaps_start {
            if old.valid_from > valid_from {
                later_starts.push(old.valid_from);
            }
            continue;
        }
        // The old version holds where the new fact starts: stop believing
        // it as it stood, and, unless the new fact starts where it did (a
        // correction of it), record it again ending there.
        let kept = if old.valid_from < valid_from {
            let closed_number = fresh_number(store)?;
            Some((closed_number, fact_id(closed_number)))
        } else {
            None
        };
        let mut expired = old.clone();
        expired.expired_at = Some(now);
        expired.expired_by = Some(Expiry::Superseded(Supersession {
            by: id.clone(),
            closed: kept.as_ref().map(|(_, id)| id.clone()),
        }));
        stop_believing(store, old_number, &expired)?;
        let Some((closed_number, closed_id)) = kept else {
            continue;
        };
        let version = Fact {
            id: closed_id,
            valid_until: Some(valid_from),
            recorded_at: now,
            expired_at: None,
            expired_by: None,
            replaces: Some(old.id.clone()),
            ..old
        };
        believe(store, closed_number, &version)?;
        closed.push(version);
    }
    // Older news ends where the next believed fact begins.
    if let Some(next) = later_starts.into_iter().filter(|s| *s > valid_from).min()
        && valid_until.is_none_or(|until| until > next)
    {
        valid_until = Some(next);
    }

    let fact = Fact {
        id,
        subject: new.subject.clone(),
        predicate: new.predicate.clone(),
        object: new.object.clone(),
        confidence: new.confidence,
        sources: new.sources.clone(),
        valid_from,
        valid_until,
        recorded_at: now,
        expired_at: None,
        expired_by: None,
        replaces: None,
    };
    believe(store, number, &fact)?;
    Ok(Recorded {
        fact,
        created: true,
        closed,
    })
}

/// Stop believing fact `id` at `now`; `None` when there is no such
/// believed fact (a malformed id names none).
pub(crate) fn retract(
    store: &mut dyn Store,
    id: &str,
    now: i64,
) -> Result<Option<Fact>, MemoryError> {
    let Some(number) = fact_number(id) else {
        return Ok(None);
    };
    let Some(mut fact) = load(store, number)? else {
        return Ok(None);
    };
    if fact.expired_at.is_some() {
        return Ok(None);
    }
    fact.expired_at = Some(now);
    fact.expired_by = Some(Expiry::Retracted);
    stop_believing(store, number, &fact)?;
    Ok(Some(fact))
}

/// The versions matching `query`, oldest recorded first (by number).
pub(crate) fn query(store: &mut dyn Store, query: &FactQuery) -> Result<Vec<Fact>, MemoryError> {
    if query.include_expired || query.known_at.is_some() {
        // Every version ever recorded, filtered.
        let mut out = Vec::new();
        for (_, bytes) in store::scan_from(store, FACT_PREFIX, None)? {
            let fact = Fact::from(store::decode::<StoredFact>(&bytes, "fact")?);
            if matches(query, &fact) {
                out.push(fact);
            }
        }
        return Ok(out);
    }
    // Believed now: read the index, as narrowly as the query allows.
    let prefix = match (&query.subject, &query.predicate) {
        (Some(subject), Some(predicate)) => subject_predicate_prefix(subject, predicate),
        (Some(subject), None) => subject_prefix(subject),
        (None, _) => BELIEF_PREFIX.to_owned(),
    };
    let mut numbers: Vec<u64> = store::scan_from(store, &prefix, None)?
        .iter()
        .filter_map(|(key, _)| indexed_number(key))
        .collect();
    numbers.sort_unstable();
    numbers.dedup();
    let mut out = Vec::with_capacity(numbers.len());
    for number in numbers {
        if let Some(fact) = load(store, number)?
            && matches(query, &fact)
        {
            out.push(fact);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemStore;

    const DAY: i64 = 86_400_000;

    fn new_fact(subject: &str, predicate: &str, object: &str, valid_from: i64) -> NewFact {
        NewFact {
            subject: subject.into(),
            predicate: predicate.into(),
            object: object.into(),
            confidence: 1.0,
            sources: vec!["test".into()],
            valid_from,
            valid_until: None,
        }
    }

    fn add(store: &mut MemStore, fact: NewFact, now: i64) -> Recorded {
        add_facts(store, vec![fact], now)
            .unwrap()
            .pop()
            .expect("one recorded")
    }

    fn believed(store: &mut MemStore, known_at: Option<i64>, valid_at: Option<i64>) -> Vec<Fact> {
        query(
            store,
            &FactQuery {
                valid_at,
                known_at,
                subject: None,
                predicate: None,
                include_expired: false,
            },
        )
        .unwrap()
    }

    fn objects(facts: &[Fact]) -> Vec<&str> {
        facts.iter().map(|f| f.object.as_str()).collect()
    }

    #[test]
    fn tokyo_then_paris_supersedes_on_both_axes() {
        let mut store = MemStore::default();
        let tokyo = add(
            &mut store,
            new_fact("Alice", "lives_in", "Tokyo", 10 * DAY),
            100 * DAY,
        );
        assert!(tokyo.created && tokyo.closed.is_empty());
        assert_eq!(tokyo.fact.id, "fact_0000000000000000");

        let paris = add(
            &mut store,
            new_fact("alice ", "lives_in", "Paris", 50 * DAY),
            200 * DAY,
        );
        assert!(paris.created);
        assert_eq!(paris.fact.valid_until, None);
        assert_eq!(paris.fact.recorded_at, 200 * DAY);
        assert_eq!(paris.closed.len(), 1);
        let closed = &paris.closed[0];
        assert_eq!(closed.object, "Tokyo");
        assert_eq!(closed.valid_from, 10 * DAY);
        assert_eq!(closed.valid_until, Some(50 * DAY));
        assert_eq!(closed.recorded_at, 200 * DAY);
        assert_eq!(closed.replaces.as_deref(), Some(tokyo.fact.id.as_str()));
        // The new fact's number is taken before the closed version's.
        assert_eq!(paris.fact.id, "fact_0000000000000001");
        assert_eq!(closed.id, "fact_0000000000000002");

        // Knowledge time: before the change Tokyo was believed open-ended;
        // after it, the closed Tokyo and Paris.
        let before = believed(&mut store, Some(150 * DAY), None);
        assert_eq!(objects(&before), vec!["Tokyo"]);
        assert_eq!(before[0].valid_until, None);
        assert_eq!(before[0].id, tokyo.fact.id);
        let now = believed(&mut store, None, None);
        assert_eq!(objects(&now), vec!["Paris", "Tokyo"]);
        let later = believed(&mut store, Some(250 * DAY), None);
        assert_eq!(objects(&later), vec!["Paris", "Tokyo"]);
        assert!(believed(&mut store, Some(5 * DAY), None).is_empty());

        // World time.
        assert_eq!(
            objects(&believed(&mut store, None, Some(20 * DAY))),
            vec!["Tokyo"]
        );
        assert_eq!(
            objects(&believed(&mut store, None, Some(50 * DAY))),
            vec!["Paris"]
        );
        assert!(believed(&mut store, None, Some(DAY)).is_empty());
        // What was believed at day 150 about day 60: still Tokyo.
        assert_eq!(
            objects(&believed(&mut store, Some(150 * DAY), Some(60 * DAY))),
            vec!["Tokyo"]
        );

        // The original version is expired, superseded by Paris.
        let all = query(
            &mut store,
            &FactQuery {
                valid_at: None,
                known_at: Some(DAY),
                subject: Some("ALICE".into()),
                predicate: Some("lives_in".into()),
                include_expired: true,
            },
        )
        .unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[0].id, tokyo.fact.id);
        assert_eq!(all[0].expired_at, Some(200 * DAY));
        assert_eq!(
            all[0].expired_by,
            Some(Expiry::Superseded(Supersession {
                by: paris.fact.id.clone(),
                closed: Some(closed.id.clone()),
            }))
        );
        assert_eq!(all[1], paris.fact);
        assert_eq!(all[2], *closed);
    }

    #[test]
    fn the_same_object_creates_nothing() {
        let mut store = MemStore::default();
        let first = add(
            &mut store,
            new_fact("Alice", "lives_in", "Paris", 10 * DAY),
            100 * DAY,
        );
        let keys = store.map.clone();
        let again = add(
            &mut store,
            new_fact("ALICE", "lives_in", " paris ", 20 * DAY),
            120 * DAY,
        );
        assert!(!again.created);
        assert!(again.closed.is_empty());
        assert_eq!(again.fact, first.fact);
        assert_eq!(store.map, keys, "nothing written");
        // Starting earlier than the believed one is news.
        let earlier = add(
            &mut store,
            new_fact("Alice", "lives_in", "Paris", 5 * DAY),
            130 * DAY,
        );
        assert!(earlier.created);
    }

    #[test]
    fn a_fact_starting_where_the_old_one_did_corrects_it() {
        let mut store = MemStore::default();
        let wrong = add(
            &mut store,
            new_fact("Alice", "lives_in", "Lyon", 10 * DAY),
            100 * DAY,
        );
        let right = add(
            &mut store,
            new_fact("Alice", "lives_in", "Paris", 10 * DAY),
            110 * DAY,
        );
        assert!(right.created);
        assert!(right.closed.is_empty());
        assert_eq!(objects(&believed(&mut store, None, None)), vec!["Paris"]);
        let old = query(
            &mut store,
            &FactQuery {
                valid_at: None,
                known_at: Some(105 * DAY),
                subject: None,
                predicate: None,
                include_expired: false,
            },
        )
        .unwrap();
        assert_eq!(old.len(), 1);
        assert_eq!(old[0].id, wrong.fact.id);
        assert_eq!(old[0].expired_at, Some(110 * DAY));
        assert_eq!(
            old[0].expired_by,
            Some(Expiry::Superseded(Supersession {
                by: right.fact.id.clone(),
                closed: None,
            }))
        );
    }

    #[test]
    fn older_news_ends_where_the_believed_fact_begins() {
        let mut store = MemStore::default();
        add(
            &mut store,
            new_fact("Alice", "lives_in", "Paris", 50 * DAY),
            100 * DAY,
        );
        let older = add(
            &mut store,
            new_fact("Alice", "lives_in", "Tokyo", 10 * DAY),
            110 * DAY,
        );
        assert!(older.created);
        assert!(older.closed.is_empty());
        assert_eq!(older.fact.valid_until, Some(50 * DAY));
        // An explicit end before the next start is kept.
        let mut short = new_fact("Alice", "lives_in", "Oslo", 20 * DAY);
        short.valid_until = Some(30 * DAY);
        let short = add(&mut store, short, 120 * DAY);
        assert_eq!(short.fact.valid_until, Some(30 * DAY));
        // Tokyo held at day 20, so it is closed there.
        assert_eq!(short.closed.len(), 1);
        assert_eq!(short.closed[0].object, "Tokyo");
        assert_eq!(short.closed[0].valid_until, Some(20 * DAY));
        assert_eq!(
            objects(&believed(&mut store, None, Some(25 * DAY))),
            vec!["Oslo"]
        );
        assert_eq!(
            objects(&believed(&mut store, None, Some(60 * DAY))),
            vec!["Paris"]
        );
    }

    #[test]
    fn retract_expires_a_believed_fact_once() {
        let mut store = MemStore::default();
        let fact = add(
            &mut store,
            new_fact("Alice", "likes", "tea", 10 * DAY),
            100 * DAY,
        )
        .fact;
        let retracted = retract(&mut store, &fact.id, 150 * DAY).unwrap().unwrap();
        assert_eq!(retracted.expired_at, Some(150 * DAY));
        assert_eq!(retracted.expired_by, Some(Expiry::Retracted));
        assert!(believed(&mut store, None, None).is_empty());
        assert_eq!(believed(&mut store, Some(120 * DAY), None).len(), 1);
        assert_eq!(retract(&mut store, &fact.id, 160 * DAY).unwrap(), None);
        assert_eq!(
            retract(&mut store, "fact_00000000000000ff", 1).unwrap(),
            None
        );
        assert_eq!(retract(&mut store, "nonsense", 1).unwrap(), None);
        // The same fact again is news now that it is no longer believed.
        assert!(
            add(
                &mut store,
                new_fact("Alice", "likes", "tea", 10 * DAY),
                170 * DAY
            )
            .created
        );
    }

    #[test]
    fn invalid_facts_write_nothing() {
        let mut store = MemStore::default();
        let mut backwards = new_fact("Alice", "likes", "tea", 10 * DAY);
        backwards.valid_until = Some(10 * DAY);
        for bad in [
            new_fact(" ", "likes", "tea", 0),
            new_fact("Alice", "", "tea", 0),
            new_fact("Alice", "likes", "\t", 0),
            backwards,
        ] {
            let result = add_facts(
                &mut store,
                vec![new_fact("Bob", "likes", "coffee", 0), bad],
                DAY,
            );
            assert!(matches!(result, Err(MemoryError::Invalid(_))), "{result:?}");
        }
        assert!(store.map.is_empty());
    }

    #[test]
    fn a_batch_sees_its_own_facts_and_queries_filter() {
        let mut store = MemStore::default();
        let recorded = add_facts(
            &mut store,
            vec![
                new_fact("Alice", "lives_in", "Tokyo", 10 * DAY),
                new_fact("Alice", "lives_in", "Paris", 20 * DAY),
                new_fact("Bob", "lives_in", "Rome", 10 * DAY),
                new_fact("Alice", "likes", "tea", 10 * DAY),
            ],
            100 * DAY,
        )
        .unwrap();
        assert_eq!(recorded.len(), 4);
        assert_eq!(recorded[1].closed.len(), 1);
        let by = |subject: Option<&str>, predicate: Option<&str>| {
            let mut store = MemStore {
                map: store.map.clone(),
            };
            query(
                &mut store,
                &FactQuery {
                    valid_at: None,
                    known_at: None,
                    subject: subject.map(Into::into),
                    predicate: predicate.map(Into::into),
                    include_expired: false,
                },
            )
            .unwrap()
        };
        assert_eq!(
            objects(&by(Some("alice"), Some("lives_in"))),
            vec!["Paris", "Tokyo"]
        );
        assert_eq!(
            objects(&by(Some("alice"), None)),
            vec!["Paris", "Tokyo", "tea"]
        );
        assert_eq!(
            objects(&by(None, Some("lives_in"))),
            vec!["Paris", "Tokyo", "Rome"]
        );
        assert_eq!(objects(&by(Some("carol"), None)), Vec::<&str>::new());
    }

    #[test]
    fn long_predicates_are_hashed_into_the_index() {
        let mut store = MemStore::default();
        let predicate = "p".repeat(1000);
        add(
            &mut store,
            new_fact("Alice", &predicate, "one", 10 * DAY),
            100 * DAY,
        );
        let two = add(
            &mut store,
            new_fact("Alice", &predicate, "two", 20 * DAY),
            110 * DAY,
        );
        assert_eq!(two.closed.len(), 1);
        assert!(store.map.keys().all(|key| key.len() <= MAX_KEY_BYTES));
        let edge = "q".repeat(MAX_KEY_BYTES - INDEX_KEY_OVERHEAD);
        add(&mut store, new_fact("Alice", &edge, "x", 0), 120 * DAY);
        assert!(store.map.keys().any(|key| key.len() == MAX_KEY_BYTES));
        assert_eq!(believed(&mut store, None, None).len(), 3);
    }
}
