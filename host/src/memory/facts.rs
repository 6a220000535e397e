//! Bi-temporal facts: what was true when (world time), and what Loom
//! believed when (knowledge time).
//!
//! A fact row is never edited in what it claims. When a new fact about the
//! same user, subject and predicate names a different object, the open
//! fact is *closed*: its row is expired (Loom stops believing it as it
//! stood, at `expired_at`) and a new row, identical but for `valid_until`
//! set to the new fact's `valid_from`, is recorded in its place. So a query
//! with `known_at` before the change still sees the old belief, open-ended;
//! one after it sees both the closed old fact and the new one, each valid in
//! its own window.

use super::predicate::{canonical_predicate, match_key};
use super::timestamp::Timestamp;
use super::{MemoryError, MemoryLimits, ids};
use crate::store::{StoreError, io};
use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// (tenant, user, fact number) → the fact as JSON; every version ever
/// recorded.
pub(crate) const FACTS: TableDefinition<(&str, &str, u64), &[u8]> =
    TableDefinition::new("memory_facts");

/// (tenant, user, subject key, predicate, fact number) → (): the facts Loom
/// currently believes, by what they are about, for supersession.
pub(crate) const FACT_INDEX: TableDefinition<(&str, &str, &str, &str, u64), ()> =
    TableDefinition::new("memory_fact_index");

/// A stored fact: one version of a belief.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fact {
    /// `fact_<16 hex digits>`.
    pub id: String,
    /// What the fact is about, as written.
    pub subject: String,
    /// The relation, canonical (`lives_in`).
    pub predicate: String,
    /// The value, as written.
    pub object: String,
    /// How sure the writer was, 0 to 1.
    pub confidence: f32,
    /// Where it came from: episode ids, `cli`, `api`, a run id.
    pub sources: Vec<String>,
    /// World time: from when it holds.
    pub valid_from: Timestamp,
    /// World time: until when it holds (exclusive); `None` while open.
    pub valid_until: Option<Timestamp>,
    /// Knowledge time: when Loom recorded this version.
    pub recorded_at: Timestamp,
    /// Knowledge time: when Loom stopped believing this version (it was
    /// closed by a newer fact, or retracted); `None` while believed.
    pub expired_at: Option<Timestamp>,
    /// Why it stopped being believed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired_by: Option<Expiry>,
    /// The version this one replaced (the same belief, closed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
}

/// Why a fact version stopped being believed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Expiry {
    /// A newer fact closed it; `by` is that fact, `closed` the version
    /// that records the closed window.
    Superseded {
        /// The fact that closed it.
        by: String,
        /// The version with its window cut where the new fact starts;
        /// `None` when the new fact starts where it did (a correction).
        closed: Option<String>,
    },
    /// Withdrawn by hand.
    Retracted,
}

impl Fact {
    /// Whether Loom believed this version at `known_at` (now when `None`).
    pub fn known_at(&self, known_at: Option<Timestamp>) -> bool {
        match known_at {
            None => self.expired_at.is_none(),
            Some(at) => self.recorded_at <= at && self.expired_at.is_none_or(|end| end > at),
        }
    }

    /// Whether the fact holds at `valid_at` in the world.
    pub fn valid_at(&self, valid_at: Timestamp) -> bool {
        self.valid_from <= valid_at && self.valid_until.is_none_or(|end| valid_at < end)
    }

    /// One line: `subject predicate object`, with its window when closed.
    pub fn text(&self) -> String {
        match self.valid_until {
            Some(until) => format!(
                "{} {} {} (from {} until {})",
                self.subject, self.predicate, self.object, self.valid_from, until
            ),
            None => format!("{} {} {}", self.subject, self.predicate, self.object),
        }
    }
}

/// A fact to record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewFact {
    /// What it is about.
    pub subject: String,
    /// The relation, in any spelling (it is canonicalised).
    pub predicate: String,
    /// The value.
    pub object: String,
    /// 0 to 1; 1 when not given.
    #[serde(default = "one")]
    pub confidence: f32,
    /// Where it came from.
    #[serde(default)]
    pub sources: Vec<String>,
    /// From when it holds; now when not given.
    #[serde(default)]
    pub valid_from: Option<Timestamp>,
    /// Until when it holds; open when not given.
    #[serde(default)]
    pub valid_until: Option<Timestamp>,
}

fn one() -> f32 {
    1.0
}

impl NewFact {
    /// A fact valid from now, open-ended, fully confident.
    pub fn new(
        subject: impl Into<String>,
        predicate: impl Into<String>,
        object: impl Into<String>,
    ) -> Self {
        NewFact {
            subject: subject.into(),
            predicate: predicate.into(),
            object: object.into(),
            confidence: 1.0,
            sources: Vec::new(),
            valid_from: None,
            valid_until: None,
        }
    }

    /// Check sizes and times; canonicalise the predicate.
    pub(crate) fn validated(mut self, limits: &MemoryLimits) -> Result<NewFact, MemoryError> {
        self.subject = self.subject.trim().to_owned();
        self.object = self.object.trim().to_owned();
        self.predicate = canonical_predicate(&self.predicate);
        for (field, value) in [
            ("subject", &self.subject),
            ("predicate", &self.predicate),
            ("object", &self.object),
        ] {
            if value.is_empty() {
                return Err(MemoryError::Invalid(format!(
                    "the fact's {field} is empty; give it some text (a predicate needs letters or digits)"
                )));
            }
            if value.len() > limits.max_fact_field_bytes {
                return Err(MemoryError::Invalid(format!(
                    "the fact's {field} is {} bytes, over the {}-byte limit",
                    value.len(),
                    limits.max_fact_field_bytes
                )));
            }
        }
        if !self.confidence.is_finite() {
            self.confidence = 1.0;
        }
        self.confidence = self.confidence.clamp(0.0, 1.0);
        self.sources.truncate(limits.max_fact_sources);
        for source in &mut self.sources {
            super::cut(source, 256);
        }
        // A fact without `valid_from` holds from now, so its end must come
        // after now.
        let from = self.valid_from.unwrap_or_else(Timestamp::now);
        if let Some(until) = self.valid_until
            && until <= from
        {
            return Err(MemoryError::Invalid(format!(
                "the fact's valid_until ({until}) is not after its valid_from ({from}{})",
                if self.valid_from.is_none() {
                    ", now"
                } else {
                    ""
                }
            )));
        }
        Ok(self)
    }
}

/// A query over a user's facts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FactQuery {
    /// Only facts that hold at this world time.
    pub valid_at: Option<Timestamp>,
    /// What Loom believed at this time (now when `None`).
    pub known_at: Option<Timestamp>,
    /// Only this subject (compared case- and space-insensitively).
    pub subject: Option<String>,
    /// Only this predicate (any spelling).
    pub predicate: Option<String>,
}

impl FactQuery {
    pub(crate) fn matches(&self, fact: &Fact) -> bool {
        fact.known_at(self.known_at)
            && self.valid_at.is_none_or(|at| fact.valid_at(at))
            && self
                .subject
                .as_ref()
                .is_none_or(|s| match_key(s) == match_key(&fact.subject))
            && self
                .predicate
                .as_ref()
                .is_none_or(|p| canonical_predicate(p) == fact.predicate)
    }
}

/// What recording a fact did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recorded {
    /// The fact as stored (or the one already believed, when nothing new
    /// was learned).
    pub fact: Fact,
    /// Whether a new row was written (false: the same object was already
    /// believed, and nothing changed).
    pub created: bool,
    /// Facts this one closed (their closed versions).
    pub closed: Vec<Fact>,
}

fn decode(bytes: &[u8]) -> Result<Fact, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("a memory fact: {e}")))
}

fn encode(fact: &Fact) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(fact).map_err(io)
}

type FactsTable<'t> = redb::Table<'t, (&'static str, &'static str, u64), &'static [u8]>;
type IndexTable<'t> =
    redb::Table<'t, (&'static str, &'static str, &'static str, &'static str, u64), ()>;

/// Store `fact` as row `number` of (tenant, user), believed: in the index.
fn believe(
    facts: &mut FactsTable<'_>,
    index: &mut IndexTable<'_>,
    (tenant, user): (&str, &str),
    number: u64,
    fact: &Fact,
) -> Result<(), StoreError> {
    facts
        .insert((tenant, user, number), encode(fact)?.as_slice())
        .map_err(io)?;
    index
        .insert(
            (
                tenant,
                user,
                match_key(&fact.subject).as_str(),
                fact.predicate.as_str(),
                number,
            ),
            (),
        )
        .map_err(io)?;
    Ok(())
}

/// Store `expired` (a fact whose `expired_at` is set) as row `number` of
/// (tenant, user), no longer believed: out of the index.
fn stop_believing(
    facts: &mut FactsTable<'_>,
    index: &mut IndexTable<'_>,
    (tenant, user): (&str, &str),
    number: u64,
    expired: &Fact,
) -> Result<(), StoreError> {
    facts
        .insert((tenant, user, number), encode(expired)?.as_slice())
        .map_err(io)?;
    index
        .remove((
            tenant,
            user,
            match_key(&expired.subject).as_str(),
            expired.predicate.as_str(),
            number,
        ))
        .map_err(io)?;
    Ok(())
}

/// Record `new` for (tenant, user) inside `txn`, closing what it
/// supersedes. `now` is the knowledge time of this write.
pub(crate) fn record(
    txn: &redb::WriteTransaction,
    tenant: &str,
    user: &str,
    new: &NewFact,
    now: Timestamp,
    next_id: &dyn Fn() -> u64,
) -> Result<Recorded, StoreError> {
    let mut facts = txn.open_table(FACTS).map_err(io)?;
    let mut index = txn.open_table(FACT_INDEX).map_err(io)?;
    let subject_key = match_key(&new.subject);
    let object_key = match_key(&new.object);
    let valid_from = new.valid_from.unwrap_or(now);
    let mut valid_until = new.valid_until;

    // The facts currently believed about the same subject and predicate.
    let mut current = Vec::new();
    for entry in index
        .range(
            (
                tenant,
                user,
                subject_key.as_str(),
                new.predicate.as_str(),
                0,
            )
                ..=(
                    tenant,
                    user,
                    subject_key.as_str(),
                    new.predicate.as_str(),
                    u64::MAX,
                ),
        )
        .map_err(io)?
    {
        let (key, _) = entry.map_err(io)?;
        let number = key.value().4;
        if let Some(bytes) = facts.get((tenant, user, number)).map_err(io)? {
            current.push((number, decode(bytes.value())?));
        }
    }

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

    // A number no row of the user holds (the clock may have stepped back
    // across a restart): never overwrite a stored fact.
    let fresh = |facts: &redb::Table<(&str, &str, u64), &[u8]>| -> Result<u64, StoreError> {
        loop {
            let number = next_id();
            if facts.get((tenant, user, number)).map_err(io)?.is_none() {
                return Ok(number);
            }
        }
    };
    let number = fresh(&facts)?;
    let id = ids::fact_id(number);
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
            let closed_number = fresh(&facts)?;
            Some((closed_number, ids::fact_id(closed_number)))
        } else {
            None
        };
        let mut expired = old.clone();
        expired.expired_at = Some(now);
        expired.expired_by = Some(Expiry::Superseded {
            by: id.clone(),
            closed: kept.as_ref().map(|(_, id)| id.clone()),
        });
        stop_believing(&mut facts, &mut index, (tenant, user), old_number, &expired)?;
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
        believe(
            &mut facts,
            &mut index,
            (tenant, user),
            closed_number,
            &version,
        )?;
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
    believe(&mut facts, &mut index, (tenant, user), number, &fact)?;
    Ok(Recorded {
        fact,
        created: true,
        closed,
    })
}

/// Stop believing fact `number` of (tenant, user); `None` when there is no
/// such believed fact.
pub(crate) fn retract(
    txn: &redb::WriteTransaction,
    tenant: &str,
    user: &str,
    number: u64,
    now: Timestamp,
) -> Result<Option<Fact>, StoreError> {
    let mut facts = txn.open_table(FACTS).map_err(io)?;
    let Some(mut fact) = facts
        .get((tenant, user, number))
        .map_err(io)?
        .map(|bytes| decode(bytes.value()))
        .transpose()?
    else {
        return Ok(None);
    };
    if fact.expired_at.is_some() {
        return Ok(None);
    }
    fact.expired_at = Some(now);
    fact.expired_by = Some(Expiry::Retracted);
    let mut index = txn.open_table(FACT_INDEX).map_err(io)?;
    stop_believing(&mut facts, &mut index, (tenant, user), number, &fact)?;
    Ok(Some(fact))
}

/// Every fact version of (tenant, user), oldest first.
pub(crate) fn all(
    table: &impl ReadableTable<(&'static str, &'static str, u64), &'static [u8]>,
    tenant: &str,
    user: &str,
) -> Result<Vec<Fact>, StoreError> {
    super::numbered_rows(table, tenant, user, "fact")
}
