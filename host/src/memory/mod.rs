//! Memory: what agents know of each user, across runs.
//!
//! * [`facts`] — bi-temporal facts with supersession scoped to the user.
//! * [`episodes`] — one per run, plus notes the agent asked to remember.
//! * [`blocks`] — named, ordered, size-limited working blocks put into
//!   every prompt.
//! * [`rank`] — lexical (BM25) ranking for recall; no network needed.
//!
//! Everything is keyed (tenant, user, …) in the host's redb file, so one
//! user's data is one key range: recall reads only that user's rows, and
//! [`Memory::forget`] deletes them in one transaction, together with the
//! user's sessions.

pub mod backend;
pub mod blocks;
pub mod component;
pub mod episodes;
pub mod extract;
pub mod facts;
pub mod predicate;
pub mod rank;
pub mod timestamp;

pub use backend::TenantMemory;
pub use blocks::{Block, BlockEdit};
pub use component::ComponentMemory;
pub use episodes::{Episode, EpisodeKind, NewEpisode};
pub use facts::{Expiry, Fact, FactQuery, NewFact, Recorded};
pub use timestamp::Timestamp;

use crate::model::Message;
use crate::store::sessions::{self as session_rows, user_key};
use crate::store::{SessionStore, Store, StoreError, io, read_table};
use crate::sync::lock;
use crate::tenancy::ids::{TenantId, UserId};
use redb::ReadableDatabase;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Why a memory operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MemoryError {
    /// The request is malformed (an empty subject, a bad block name …).
    #[error("invalid memory request: {0}")]
    Invalid(String),
    /// A size or count limit would be passed.
    #[error("memory limit: {0}")]
    Limit(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The tenant's memory component failed, broke a limit, or is missing.
    #[error("memory component `{plugin}`: {message}")]
    Component {
        /// The plugin.
        plugin: String,
        /// What went wrong.
        message: String,
    },
}

/// Caps on what memory holds for a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLimits {
    /// Bytes of a fact's subject, predicate or object.
    pub max_fact_field_bytes: usize,
    /// Sources kept per fact.
    pub max_fact_sources: usize,
    /// Bytes of an episode's input or output (longer text is cut).
    pub max_episode_text_bytes: usize,
    /// Bytes of an episode's tool transcript (longer is cut).
    pub max_transcript_bytes: usize,
    /// Working blocks per user.
    pub max_blocks: usize,
    /// Bytes of one working block.
    pub max_block_bytes: usize,
    /// The newest episodes recall ranks (older ones are kept, not ranked).
    pub recall_episode_window: usize,
    /// Facts recall ranks (the newest believed ones).
    pub recall_fact_window: usize,
}

impl Default for MemoryLimits {
    fn default() -> Self {
        MemoryLimits {
            max_fact_field_bytes: 1024,
            max_fact_sources: 16,
            max_episode_text_bytes: 64 * 1024,
            max_transcript_bytes: 50_000,
            max_blocks: 32,
            max_block_bytes: 8 * 1024,
            recall_episode_window: 2_000,
            recall_fact_window: 2_000,
        }
    }
}

/// A recalled item.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recalled {
    /// What it is: `fact` or `episode`.
    pub kind: &'static str,
    /// The fact's or episode's id.
    pub id: String,
    /// The text shown.
    pub text: String,
    /// Relevance, 0 to 1 (1 for the best match).
    pub score: f32,
}

/// What [`Memory::forget`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ForgetReport {
    /// Episodes.
    pub episodes: u64,
    /// Fact versions.
    pub facts: u64,
    /// Working blocks.
    pub blocks: u64,
    /// Sessions.
    pub sessions: u64,
    /// Budget counter rows (only when the tenant's `forget_budgets` is on).
    pub budget_rows: u64,
    /// Items a memory component reported removing (its own count).
    pub component_items: u64,
    /// Keys of memory components' data (`kv`) deleted by the host.
    pub plugin_kv: u64,
}

impl ForgetReport {
    /// Everything deleted (rows of the host's database; a component's own
    /// count is reported beside, not added: its items are `plugin_kv` rows).
    pub fn total(&self) -> u64 {
        self.episodes + self.facts + self.blocks + self.sessions + self.budget_rows + self.plugin_kv
    }
}

/// What a forget deletes besides memory and sessions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForgetOptions {
    /// Also the user's budget counters (drop the ledger's in-memory copy
    /// first: [`crate::governance::budget::BudgetLedger::forget_user`]).
    pub budgets: bool,
}

/// Everything memory holds of one user.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryExport {
    /// The tenant.
    pub tenant: String,
    /// The user (`null` for the anonymous user).
    pub user: Option<String>,
    /// When the export was taken.
    pub exported_at: Timestamp,
    /// Episodes, oldest first.
    pub episodes: Vec<Episode>,
    /// Every fact version, oldest first.
    pub facts: Vec<Fact>,
    /// Working blocks, in prompt order.
    pub blocks: Vec<Block>,
    /// Sessions: id and messages.
    pub sessions: Vec<ExportedSession>,
}

impl MemoryExport {
    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.episodes.is_empty()
            && self.facts.is_empty()
            && self.blocks.is_empty()
            && self.sessions.is_empty()
    }
}

/// One exported session.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportedSession {
    /// The session id.
    pub id: String,
    /// Its messages.
    pub messages: Vec<Message>,
}

/// Counts and blocks of one user, for `loom memory show`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemorySummary {
    /// Episodes stored.
    pub episodes: usize,
    /// Facts believed now.
    pub facts_believed: usize,
    /// Fact versions stored (believed or not).
    pub fact_versions: usize,
    /// Sessions stored.
    pub sessions: usize,
    /// The working blocks.
    pub blocks: Vec<Block>,
    /// The newest episode's time.
    pub last_seen: Option<Timestamp>,
}

/// Ids: `fact_…` and `ep_…` around a number that grows with time.
pub(crate) mod ids {
    /// The id of fact `number`.
    pub fn fact_id(number: u64) -> String {
        format!("fact_{number:016x}")
    }

    /// The id of episode `number`.
    pub fn episode_id(number: u64) -> String {
        format!("ep_{number:016x}")
    }

    /// The number in a `fact_…` id.
    pub fn fact_number(id: &str) -> Option<u64> {
        let hex = id.strip_prefix("fact_")?;
        (hex.len() == 16).then(|| u64::from_str_radix(hex, 16).ok())?
    }
}

/// Every row of (tenant, user) in a numbered table, oldest first, decoded;
/// `what` names the kind in a corruption error.
pub(crate) fn numbered_rows<T: serde::de::DeserializeOwned>(
    table: &impl redb::ReadableTable<(&'static str, &'static str, u64), &'static [u8]>,
    tenant: &str,
    user: &str,
    what: &str,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    for entry in table
        .range((tenant, user, 0)..=(tenant, user, u64::MAX))
        .map_err(io)?
    {
        let (_, value) = entry.map_err(io)?;
        out.push(
            serde_json::from_slice(value.value())
                .map_err(|e| StoreError::Corrupt(format!("a memory {what}: {e}")))?,
        );
    }
    Ok(out)
}

/// Bytes of each candidate's text that recall ranks by.
const RANKED_BYTES: usize = 4 * 1024;

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

/// Cut `text` to at most `max` bytes on a character boundary.
pub(crate) fn cut(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// The built-in memory: episodes, facts and blocks in the host's store.
/// Cloning shares it.
#[derive(Clone)]
pub struct Memory {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<Store>,
    sessions: Arc<SessionStore>,
    limits: MemoryLimits,
    /// The last number handed out: microseconds since the epoch, or one
    /// more than the last when the clock has not moved.
    last_number: AtomicU64,
    /// Forgets so far, by (tenant, user): a background write started
    /// before a forget (an extraction) must not land after it.
    forgets: Mutex<HashMap<(String, String), u64>>,
    /// Extractions running or waiting, by (tenant, user): a forget
    /// cancels them.
    extractions: Mutex<HashMap<(String, String), Vec<tokio::task::AbortHandle>>>,
    /// Extractions that may call their model at once.
    extraction_slots: Arc<tokio::sync::Semaphore>,
    /// Extraction and forget events, for whoever subscribes.
    events: tokio::sync::broadcast::Sender<MemoryEvent>,
    /// Calls into memory components, one at a time per (tenant, user): a
    /// component's read-modify-write of its keys is then safe. Entries
    /// live while a call holds or waits for them.
    component_locks: Mutex<HashMap<(String, String), UserTurn>>,
}

/// The lock memory component calls of one user take, held weakly by the
/// map of locks (the calls hold it strongly).
type UserTurn = std::sync::Weak<tokio::sync::Mutex<()>>;

/// Whether a user was forgotten since the guard was taken
/// ([`Memory::forget_guard`]); check it inside the write that must not
/// land after a forget (the forget bumps the generation on the writer
/// thread, inside its own transaction).
#[derive(Clone)]
pub struct ForgetGuard {
    inner: Arc<Inner>,
    key: (String, String),
    generation: u64,
}

impl std::fmt::Debug for ForgetGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForgetGuard")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl ForgetGuard {
    /// Whether the user has not been forgotten since.
    pub fn holds(&self) -> bool {
        self.inner.generation(&self.key) == self.generation
    }

    /// The generation it was taken at (for [`Memory::add_facts`]).
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

impl Inner {
    /// Forgets of (tenant, user) so far.
    fn generation(&self, key: &(String, String)) -> u64 {
        lock(&self.forgets).get(key).copied().unwrap_or(0)
    }
}

/// Extractions that may run at once, host-wide.
pub const EXTRACTION_CONCURRENCY: usize = 2;

/// Extractions that may wait; more are skipped (and said so).
pub const MAX_PENDING_EXTRACTIONS: usize = 256;

/// Something memory did in the background.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemoryEvent {
    /// The tenant.
    pub tenant: String,
    /// The user (`None`: anonymous).
    pub user: Option<String>,
    /// The run it follows, if any.
    pub run: Option<String>,
    /// What happened.
    pub kind: MemoryEventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum MemoryEventKind {
    /// An extraction stored facts.
    Extracted {
        /// Facts recorded (new rows).
        facts: usize,
        /// Open facts they closed.
        closed: usize,
        /// What the extraction call used.
        input_tokens: u64,
        /// What the extraction call produced.
        output_tokens: u64,
        /// Its cost, charged to the user's budget.
        cost_usd: f64,
    },
    /// An extraction failed (the run it follows is unaffected).
    ExtractionFailed {
        /// Why.
        error: String,
    },
    /// An extraction was not run.
    ExtractionSkipped {
        /// Why: `budget:<key>`, `queue full`, `forgotten`.
        reason: String,
    },
    /// The user was forgotten.
    Forgotten {
        /// What was deleted.
        report: ForgetReport,
    },
}

impl std::fmt::Debug for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Memory")
            .field("limits", &self.inner.limits)
            .finish_non_exhaustive()
    }
}

fn keys<'a>(tenant: &'a TenantId, user: &'a UserId) -> (&'a str, &'a str) {
    (tenant.as_str(), user_key(user))
}

impl Memory {
    /// Memory kept in `store`, forgetting `sessions` with the rest.
    pub fn new(store: Arc<Store>, sessions: Arc<SessionStore>, limits: MemoryLimits) -> Self {
        Memory {
            inner: Arc::new(Inner {
                store,
                sessions,
                limits,
                last_number: AtomicU64::new(0),
                forgets: Mutex::new(HashMap::new()),
                extractions: Mutex::new(HashMap::new()),
                extraction_slots: Arc::new(tokio::sync::Semaphore::new(EXTRACTION_CONCURRENCY)),
                events: tokio::sync::broadcast::channel(1024).0,
                component_locks: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &MemoryLimits {
        &self.inner.limits
    }

    /// Extraction and forget events from now on (a slow subscriber misses
    /// the oldest when 1,024 are waiting).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<MemoryEvent> {
        self.inner.events.subscribe()
    }

    /// Send `event` to subscribers, and to tracing.
    pub(crate) fn emit(&self, event: MemoryEvent) {
        tracing::info!(
            target: "loom::memory",
            tenant = %event.tenant,
            user = event.user.as_deref().unwrap_or(""),
            run = event.run.as_deref().unwrap_or(""),
            event = ?event.kind,
            "memory event"
        );
        let _ = self.inner.events.send(event);
    }

    /// The slots extractions wait for.
    pub(crate) fn extraction_slots(&self) -> Arc<tokio::sync::Semaphore> {
        self.inner.extraction_slots.clone()
    }

    /// Start `job` as an extraction of (tenant, user) that a forget
    /// cancels; `false` (and nothing started) when too many wait.
    pub(crate) fn spawn_extraction(
        &self,
        tenant: &TenantId,
        user: &UserId,
        job: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> bool {
        let (t, u) = keys(tenant, user);
        let mut extractions = lock(&self.inner.extractions);
        extractions.retain(|_, handles| {
            handles.retain(|h| !h.is_finished());
            !handles.is_empty()
        });
        let pending: usize = extractions.values().map(Vec::len).sum();
        if pending >= MAX_PENDING_EXTRACTIONS {
            return false;
        }
        let handle = tokio::spawn(job).abort_handle();
        extractions
            .entry((t.to_owned(), u.to_owned()))
            .or_default()
            .push(handle);
        true
    }

    /// Cancel the extractions of (tenant, user) that have not finished.
    fn cancel_extractions(&self, tenant: &str, user: &str) {
        if let Some(handles) =
            lock(&self.inner.extractions).remove(&(tenant.to_owned(), user.to_owned()))
        {
            for handle in handles {
                handle.abort();
            }
        }
    }

    fn next_number(&self) -> u64 {
        next_number(&self.inner.last_number)
    }

    /// The lock a memory component call of (tenant, user) holds: one per
    /// user, shared by the calls that hold or wait for it.
    pub(crate) fn component_lock(&self, tenant: &str, user: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = lock(&self.inner.component_locks);
        let key = (tenant.to_owned(), user.to_owned());
        if let Some(held) = locks.get(&key).and_then(std::sync::Weak::upgrade) {
            return held;
        }
        // Drop the entries no call holds any more before adding one, so the
        // map stays as large as the calls under way.
        // (at sizes that double, so pruning stays amortised O(1)).
        if locks.len() >= 64 && locks.len().is_power_of_two() {
            locks.retain(|_, weak| weak.strong_count() > 0);
        }
        let fresh = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(key, Arc::downgrade(&fresh));
        fresh
    }

    /// The database.
    pub(crate) fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    fn read(&self) -> Result<redb::ReadTransaction, MemoryError> {
        Ok(self.inner.store.db().begin_read().map_err(io)?)
    }

    /// Record a fact for (tenant, user), closing the user's open fact on
    /// the same subject and predicate when the object differs. Another
    /// user's facts are never touched; the same object closes nothing.
    ///
    /// # Errors
    ///
    /// [`MemoryError::Invalid`] for an empty or oversized field or a
    /// window that ends before it starts; [`MemoryError::Store`].
    pub async fn add_fact(
        &self,
        tenant: &TenantId,
        user: &UserId,
        fact: NewFact,
    ) -> Result<Recorded, MemoryError> {
        let mut recorded = self.add_facts(tenant, user, vec![fact], None).await?;
        recorded
            .pop()
            .ok_or_else(|| MemoryError::Store(StoreError::Io("no fact was recorded".into())))
    }

    /// The number of forgets of (tenant, user) so far: pass it to
    /// [`Self::add_facts`] to drop facts learned before a later forget.
    pub fn forget_generation(&self, tenant: &TenantId, user: &UserId) -> u64 {
        self.forget_guard(tenant, user).generation()
    }

    /// A guard that holds while (tenant, user) is not forgotten after this
    /// call: a run takes one when it starts, and its session save, episode
    /// and extraction write nothing if the user was forgotten meanwhile.
    pub fn forget_guard(&self, tenant: &TenantId, user: &UserId) -> ForgetGuard {
        let (t, u) = keys(tenant, user);
        let key = (t.to_owned(), u.to_owned());
        ForgetGuard {
            generation: self.inner.generation(&key),
            inner: self.inner.clone(),
            key,
        }
    }

    /// A guard for (tenant, user) taken at `generation` (from
    /// [`Self::forget_generation`]): it holds while no forget came after.
    pub fn guard_at(&self, tenant: &TenantId, user: &UserId, generation: u64) -> ForgetGuard {
        let (t, u) = keys(tenant, user);
        ForgetGuard {
            generation,
            inner: self.inner.clone(),
            key: (t.to_owned(), u.to_owned()),
        }
    }

    /// Record `facts` in one transaction, in order. With `generation`
    /// (from [`Self::forget_generation`]), nothing is written if the user
    /// was forgotten since: the result is then empty.
    ///
    /// # Errors
    ///
    /// As [`Self::add_fact`]; nothing is written when one fact is invalid.
    pub async fn add_facts(
        &self,
        tenant: &TenantId,
        user: &UserId,
        facts: Vec<NewFact>,
        generation: Option<u64>,
    ) -> Result<Vec<Recorded>, MemoryError> {
        let facts: Vec<NewFact> = facts
            .into_iter()
            .map(|f| f.validated(&self.inner.limits))
            .collect::<Result<_, _>>()?;
        let (t, u) = keys(tenant, user);
        let (t, u) = (t.to_owned(), u.to_owned());
        let memory = self.clone();
        let recorded = self
            .inner
            .store
            .write(move |txn| {
                if let Some(generation) = generation
                    && memory.inner.generation(&(t.clone(), u.clone())) != generation
                {
                    return Ok(Vec::new());
                }
                let now = Timestamp::now();
                let next = || memory.next_number();
                facts
                    .iter()
                    .map(|fact| facts::record(txn, &t, &u, fact, now, &next))
                    .collect::<Result<Vec<_>, _>>()
            })
            .await?;
        Ok(recorded)
    }

    /// Stop believing fact `id` of (tenant, user). `None` when the user has
    /// no such fact currently believed.
    ///
    /// # Errors
    ///
    /// [`MemoryError::Invalid`] for a malformed id; [`MemoryError::Store`].
    pub async fn retract_fact(
        &self,
        tenant: &TenantId,
        user: &UserId,
        id: &str,
    ) -> Result<Option<Fact>, MemoryError> {
        let number = ids::fact_number(id).ok_or_else(|| {
            MemoryError::Invalid(format!("`{id}` is not a fact id (fact_ and 16 hex digits)"))
        })?;
        let (t, u) = keys(tenant, user);
        let (t, u) = (t.to_owned(), u.to_owned());
        Ok(self
            .inner
            .store
            .write(move |txn| facts::retract(txn, &t, &u, number, Timestamp::now()))
            .await?)
    }

    /// The user's facts matching `query`, oldest recorded first.
    ///
    /// # Errors
    ///
    /// [`MemoryError::Store`].
    pub fn facts(
        &self,
        tenant: &TenantId,
        user: &UserId,
        query: &FactQuery,
    ) -> Result<Vec<Fact>, MemoryError> {
        let (t, u) = keys(tenant, user);
        let txn = self.read()?;
        let Some(table) = read_table(&txn, facts::FACTS)? else {
            return Ok(Vec::new());
        };
        let found = if query.known_at.is_none() {
            self.believed(&txn, &table, t, u, usize::MAX)?
        } else {
            facts::all(&table, t, u)?
        };
        Ok(found.into_iter().filter(|f| query.matches(f)).collect())
    }

    /// The facts believed now, oldest first, at most the newest `limit`.
    fn believed(
        &self,
        txn: &redb::ReadTransaction,
        table: &redb::ReadOnlyTable<(&'static str, &'static str, u64), &'static [u8]>,
        tenant: &str,
        user: &str,
        limit: usize,
    ) -> Result<Vec<Fact>, MemoryError> {
        let Some(index) = read_table(txn, facts::FACT_INDEX)? else {
            return Ok(Vec::new());
        };
        // Every index key of the user lies between these two: subject keys
        // are any text, so bound by the user, not by the subject.
        let mut numbers = Vec::new();
        let mut range = index.range((tenant, user, "", "", 0)..).map_err(io)?;
        for entry in range.by_ref() {
            let (key, _) = entry.map_err(io)?;
            let key = key.value();
            if key.0 != tenant || key.1 != user {
                break;
            }
            numbers.push(key.4);
        }
        numbers.sort_unstable();
        let skip = numbers.len().saturating_sub(limit);
        let mut out = Vec::with_capacity(numbers.len() - skip);
        for number in &numbers[skip..] {
            if let Some(bytes) = table.get((tenant, user, *number)).map_err(io)? {
                out.push(
                    serde_json::from_slice(bytes.value())
                        .map_err(|e| StoreError::Corrupt(format!("a memory fact: {e}")))?,
                );
            }
        }
        Ok(out)
    }

    /// Store an episode (a run) or a note for (tenant, user).
    ///
    /// # Errors
    ///
    /// [`MemoryError::Store`].
    pub async fn remember(
        &self,
        tenant: &TenantId,
        user: &UserId,
        kind: EpisodeKind,
        episode: NewEpisode,
    ) -> Result<Episode, MemoryError> {
        let guard = self.forget_guard(tenant, user);
        self.remember_guarded(tenant, user, kind, episode, guard)
            .await?
            .ok_or_else(|| MemoryError::Invalid("the user was forgotten meanwhile".into()))
    }

    /// [`Self::remember`], writing nothing (`None`) when the user was
    /// forgotten since `guard` was taken.
    ///
    /// # Errors
    ///
    /// [`MemoryError::Store`].
    pub async fn remember_guarded(
        &self,
        tenant: &TenantId,
        user: &UserId,
        kind: EpisodeKind,
        episode: NewEpisode,
        guard: ForgetGuard,
    ) -> Result<Option<Episode>, MemoryError> {
        let limits = &self.inner.limits;
        let mut input = episode.input;
        let mut output = episode.output;
        cut(&mut input, limits.max_episode_text_bytes);
        cut(&mut output, limits.max_episode_text_bytes);
        let at = Timestamp::now();
        let transcript = episode
            .transcript
            .map(|t| episodes::cap_transcript(t, limits.max_transcript_bytes));
        let (t, u) = keys(tenant, user);
        let (t, u) = (t.to_owned(), u.to_owned());
        let memory = self.clone();
        let (session, run) = (episode.session, episode.run);
        let stored = self
            .inner
            .store
            .write(move |txn| {
                use redb::ReadableTable;
                if !guard.holds() {
                    return Ok(None);
                }
                let mut table = txn.open_table(episodes::EPISODES).map_err(io)?;
                // A number no episode of the user holds (the clock may have
                // stepped back across a restart).
                let number = loop {
                    let number = memory.next_number();
                    if table
                        .get((t.as_str(), u.as_str(), number))
                        .map_err(io)?
                        .is_none()
                    {
                        break number;
                    }
                };
                let episode = Episode {
                    id: ids::episode_id(number),
                    kind,
                    session: session.clone(),
                    run: run.clone(),
                    at,
                    input: input.clone(),
                    output: output.clone(),
                    transcript: transcript.clone(),
                };
                let bytes = serde_json::to_vec(&episode).map_err(io)?;
                table
                    .insert((t.as_str(), u.as_str(), number), bytes.as_slice())
                    .map_err(io)?;
                Ok(Some(episode))
            })
            .await?;
        Ok(stored)
    }

    /// The user's episodes, oldest first.
    ///
    /// # Errors
    ///
    /// [`MemoryError::Store`].
    pub fn episodes(&self, tenant: &TenantId, user: &UserId) -> Result<Vec<Episode>, MemoryError> {
        let (t, u) = keys(tenant, user);
        let txn = self.read()?;
        match read_table(&txn, episodes::EPISODES)? {
            Some(table) => Ok(episodes::all(&table, t, u)?),
            None => Ok(Vec::new()),
        }
    }

    /// The newest `limit` episodes, oldest first.
    fn recent_episodes(
        &self,
        txn: &redb::ReadTransaction,
        tenant: &str,
        user: &str,
        limit: usize,
    ) -> Result<Vec<Episode>, MemoryError> {
        let Some(table) = read_table(txn, episodes::EPISODES)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for entry in table
            .range((tenant, user, 0)..=(tenant, user, u64::MAX))
            .map_err(io)?
            .rev()
            .take(limit)
        {
            let (_, value) = entry.map_err(io)?;
            out.push(episodes::decode(value.value())?);
        }
        out.reverse();
        Ok(out)
    }

    /// The user's working blocks, in prompt order.
    ///
    /// # Errors
    ///
    /// [`MemoryError::Store`].
    pub fn blocks(&self, tenant: &TenantId, user: &UserId) -> Result<Vec<Block>, MemoryError> {
        let (t, u) = keys(tenant, user);
        let txn = self.read()?;
        match read_table(&txn, blocks::BLOCKS)? {
            Some(table) => Ok(blocks::all(&table, t, u)?),
            None => Ok(Vec::new()),
        }
    }

    /// Set or append to block `name` of (tenant, user), creating it last in
    /// order when missing.
    ///
    /// # Errors
    ///
    /// [`MemoryError::Invalid`] for a bad name, [`MemoryError::Limit`] when
    /// the block would pass its size limit or the user has the most blocks
    /// allowed; [`MemoryError::Store`].
    pub async fn edit_block(
        &self,
        tenant: &TenantId,
        user: &UserId,
        name: &str,
        edit: BlockEdit,
    ) -> Result<Block, MemoryError> {
        blocks::check_name(name)?;
        let (t, u) = keys(tenant, user);
        let (t, u, name) = (t.to_owned(), u.to_owned(), name.to_owned());
        let limits = self.inner.limits.clone();
        self.inner
            .store
            .write(move |txn| blocks::edit(txn, &t, &u, &name, &edit, &limits, Timestamp::now()))
            .await?
    }

    /// Delete block `name` of (tenant, user); whether it existed.
    ///
    /// # Errors
    ///
    /// [`MemoryError::Invalid`] for a bad name; [`MemoryError::Store`].
    pub async fn delete_block(
        &self,
        tenant: &TenantId,
        user: &UserId,
        name: &str,
    ) -> Result<bool, MemoryError> {
        blocks::check_name(name)?;
        let (t, u) = keys(tenant, user);
        let (t, u, name) = (t.to_owned(), u.to_owned(), name.to_owned());
        Ok(self
            .inner
            .store
            .write(move |txn| {
                let mut table = txn.open_table(blocks::BLOCKS).map_err(io)?;
                let removed = table
                    .remove((t.as_str(), u.as_str(), name.as_str()))
                    .map_err(io)?
                    .is_some();
                Ok(removed)
            })
            .await?)
    }

    /// The user's facts valid now and episodes most relevant to `query`,
    /// best first, at most `limit`. An empty query returns the newest.
    ///
    /// # Errors
    ///
    /// [`MemoryError::Store`].
    pub fn recall(
        &self,
        tenant: &TenantId,
        user: &UserId,
        query: &str,
        limit: usize,
    ) -> Result<Vec<Recalled>, MemoryError> {
        let candidates = self.candidates(tenant, user, None)?;
        Ok(rank_candidates(query, candidates, limit, false))
    }

    /// Facts valid now and recent episodes (except those of
    /// `exclude_session`) of (tenant, user), newest last.
    fn candidates(
        &self,
        tenant: &TenantId,
        user: &UserId,
        exclude_session: Option<&str>,
    ) -> Result<Vec<Recalled>, MemoryError> {
        let (t, u) = keys(tenant, user);
        let limits = &self.inner.limits;
        let txn = self.read()?;
        let now = Timestamp::now();
        let mut out = Vec::new();
        if let Some(table) = read_table(&txn, facts::FACTS)? {
            for fact in self.believed(&txn, &table, t, u, limits.recall_fact_window)? {
                if fact.valid_at(now) {
                    out.push(Recalled {
                        kind: "fact",
                        text: fact.text(),
                        id: fact.id,
                        score: 0.0,
                    });
                }
            }
        }
        for episode in self.recent_episodes(&txn, t, u, limits.recall_episode_window)? {
            if exclude_session.is_some() && episode.session.as_deref() == exclude_session {
                continue;
            }
            out.push(Recalled {
                kind: "episode",
                text: episode.text(),
                id: episode.id,
                score: 0.0,
            });
        }
        Ok(out)
    }

    /// The memory section of a prompt for (tenant, user): the working
    /// blocks (always), then the facts valid now and the episodes relevant
    /// to `prompt`, best first, packed into about `token_budget` tokens.
    /// Episodes of `exclude_session` are left out (the session's own
    /// history is already in the conversation). `None` when there is
    /// nothing to say.
    ///
    /// # Errors
    ///
    /// [`MemoryError::Store`].
    pub fn prompt_context(
        &self,
        tenant: &TenantId,
        user: &UserId,
        prompt: &str,
        token_budget: usize,
        exclude_session: Option<&str>,
    ) -> Result<Option<String>, MemoryError> {
        let blocks = self.blocks(tenant, user)?;
        let candidates = self.candidates(tenant, user, exclude_session)?;
        Ok(pack_context(&blocks, prompt, candidates, token_budget))
    }

    /// Counts and blocks of (tenant, user).
    ///
    /// # Errors
    ///
    /// [`MemoryError::Store`].
    pub fn summary(&self, tenant: &TenantId, user: &UserId) -> Result<MemorySummary, MemoryError> {
        let episodes = self.episodes(tenant, user)?;
        // Every version, read once: the believed ones are those not expired.
        let versions = {
            let (t, u) = keys(tenant, user);
            let txn = self.read()?;
            match read_table(&txn, facts::FACTS)? {
                Some(table) => facts::all(&table, t, u)?,
                None => Vec::new(),
            }
        };
        Ok(MemorySummary {
            last_seen: episodes.last().map(|e| e.at),
            episodes: episodes.len(),
            facts_believed: versions.iter().filter(|f| f.expired_at.is_none()).count(),
            fact_versions: versions.len(),
            sessions: self.inner.sessions.user_sessions(tenant, user)?.len(),
            blocks: self.blocks(tenant, user)?,
        })
    }

    /// Everything held of (tenant, user), as one value (GDPR export).
    ///
    /// # Errors
    ///
    /// [`MemoryError::Store`].
    pub fn export(&self, tenant: &TenantId, user: &UserId) -> Result<MemoryExport, MemoryError> {
        let (t, u) = keys(tenant, user);
        let txn = self.read()?;
        let facts = match read_table(&txn, facts::FACTS)? {
            Some(table) => facts::all(&table, t, u)?,
            None => Vec::new(),
        };
        Ok(MemoryExport {
            tenant: tenant.as_str().to_owned(),
            user: user.name().map(str::to_owned),
            exported_at: Timestamp::now(),
            episodes: self.episodes(tenant, user)?,
            facts,
            blocks: self.blocks(tenant, user)?,
            sessions: self
                .inner
                .sessions
                .user_sessions(tenant, user)?
                .into_iter()
                .map(|(id, messages)| ExportedSession { id, messages })
                .collect(),
        })
    }

    /// Delete everything held of (tenant, user) — episodes, every fact
    /// version, working blocks and sessions — in one transaction. A write
    /// started before the forget (a background extraction holding an older
    /// [`Self::forget_generation`]) finds the user forgotten and writes
    /// nothing. Other users are untouched.
    ///
    /// # Errors
    ///
    /// [`MemoryError::Store`]; then nothing was deleted.
    pub async fn forget(
        &self,
        tenant: &TenantId,
        user: &UserId,
    ) -> Result<ForgetReport, MemoryError> {
        self.forget_with(tenant, user, ForgetOptions::default())
            .await
    }

    /// [`Self::forget`], deleting what `options` adds too.
    ///
    /// # Errors
    ///
    /// [`MemoryError::Store`]; then nothing was deleted.
    pub async fn forget_with(
        &self,
        tenant: &TenantId,
        user: &UserId,
        options: ForgetOptions,
    ) -> Result<ForgetReport, MemoryError> {
        self.forget_then(tenant, user, options, || {}).await
    }

    /// [`Self::forget_with`], running `after_commit` on the store's writer
    /// thread right after the forget commits, before any later write (to
    /// drop in-memory copies, such as budget counters a racing charge
    /// reloaded, that a later write could bring back).
    ///
    /// # Errors
    ///
    /// [`MemoryError::Store`]; then nothing was deleted.
    pub async fn forget_then(
        &self,
        tenant: &TenantId,
        user: &UserId,
        options: ForgetOptions,
        after_commit: impl FnOnce() + Send + 'static,
    ) -> Result<ForgetReport, MemoryError> {
        let (t, u) = keys(tenant, user);
        // Running extractions are cancelled; one that already queued its
        // write finds the generation moved and writes nothing.
        self.cancel_extractions(t, u);
        let (t, u) = (t.to_owned(), u.to_owned());
        let user_id = user.clone();
        let memory = self.clone();
        let uncache = self.inner.sessions.uncache_user(tenant, user);
        let report = self
            .inner
            .store
            .write_with(
                move |txn| {
                    // Bumped on the writer thread, inside the transaction:
                    // a fact write queued after this one sees it.
                    *lock(&memory.inner.forgets)
                        .entry((t.clone(), u.clone()))
                        .or_default() += 1;
                    let mut report = forget_rows(txn, &t, &u)?;
                    if options.budgets {
                        report.budget_rows =
                            crate::governance::budget::delete_user_rows(txn, &t, &user_id)?;
                    }
                    Ok(report)
                },
                move || {
                    uncache();
                    after_commit();
                },
            )
            .await?;
        self.emit(MemoryEvent {
            tenant: tenant.as_str().to_owned(),
            user: user.name().map(str::to_owned),
            run: None,
            kind: MemoryEventKind::Forgotten { report },
        });
        Ok(report)
    }
}

impl Memory {
    /// Every row of the database file that belongs to (tenant, user), in
    /// any table, described as `table: key`. Empty after a complete
    /// forget. Refuses a file holding a table this scan does not know, so
    /// a table added later cannot escape it.
    ///
    /// # Errors
    ///
    /// [`MemoryError::Invalid`] naming an unknown table;
    /// [`MemoryError::Store`].
    pub fn remaining(&self, tenant: &TenantId, user: &UserId) -> Result<Vec<String>, MemoryError> {
        use redb::ReadableTable;
        let (t, u) = keys(tenant, user);
        let budget_key = crate::governance::budget::user_row_key(user);
        let txn = self.read()?;
        let mut found = Vec::new();
        if let Some(handle) = txn.list_multimap_tables().map_err(io)?.next() {
            use redb::MultimapTableHandle;
            return Err(MemoryError::Invalid(format!(
                "the database holds a multimap table `{}` the forget scan does not know",
                handle.name()
            )));
        }
        for handle in txn.list_tables().map_err(io)? {
            use redb::TableHandle;
            let name = handle.name().to_owned();
            match name.as_str() {
                "sessions" | "memory_blocks" => {
                    let definition = if name == "sessions" {
                        session_rows::SESSIONS
                    } else {
                        blocks::BLOCKS
                    };
                    let table = txn.open_table(definition).map_err(io)?;
                    for entry in table.iter().map_err(io)? {
                        let (key, _) = entry.map_err(io)?;
                        let key = key.value();
                        if key.0 == t && key.1 == u {
                            found.push(format!("{name}: {key:?}"));
                        }
                    }
                }
                "memory_facts" | "memory_episodes" => {
                    let definition = if name == "memory_facts" {
                        facts::FACTS
                    } else {
                        episodes::EPISODES
                    };
                    let table = txn.open_table(definition).map_err(io)?;
                    for entry in table.iter().map_err(io)? {
                        let (key, _) = entry.map_err(io)?;
                        let key = key.value();
                        if key.0 == t && key.1 == u {
                            found.push(format!("{name}: {key:?}"));
                        }
                    }
                }
                "memory_fact_index" => {
                    let table = txn.open_table(facts::FACT_INDEX).map_err(io)?;
                    for entry in table.iter().map_err(io)? {
                        let (key, _) = entry.map_err(io)?;
                        let key = key.value();
                        if key.0 == t && key.1 == u {
                            found.push(format!("{name}: {key:?}"));
                        }
                    }
                }
                "plugin_kv" => {
                    for key in crate::store::kv::user_keys(&txn, t, u)? {
                        found.push(format!("{name}: {key}"));
                    }
                }
                // Per tenant, not per user: bytes stored, no user data.
                "plugin_kv_usage" => {}
                "budget_usage" => {
                    let table = txn
                        .open_table(crate::governance::budget::USAGE)
                        .map_err(io)?;
                    for entry in table.iter().map_err(io)? {
                        let (key, _) = entry.map_err(io)?;
                        let key = key.value();
                        if key.0 == t && key.1 == budget_key {
                            found.push(format!("{name}: {key:?}"));
                        }
                    }
                }
                other => {
                    return Err(MemoryError::Invalid(format!(
                        "the database holds a table `{other}` the forget scan does not know; \
                         add it to Memory::remaining and to Memory::forget"
                    )));
                }
            }
        }
        Ok(found)
    }
}

/// Delete every row of (tenant, user) in `txn`.
fn forget_rows(
    txn: &redb::WriteTransaction,
    tenant: &str,
    user: &str,
) -> Result<ForgetReport, StoreError> {
    let mut report = ForgetReport::default();
    {
        let mut facts_table = txn.open_table(facts::FACTS).map_err(io)?;
        let mut index = txn.open_table(facts::FACT_INDEX).map_err(io)?;
        // Every index key of the user, found by its key range (not rebuilt
        // from the fact rows, so a stray key cannot survive).
        let mut doomed = Vec::new();
        {
            use redb::ReadableTable;
            for entry in index.range((tenant, user, "", "", 0)..).map_err(io)? {
                let (key, _) = entry.map_err(io)?;
                let key = key.value();
                if key.0 != tenant || key.1 != user {
                    break;
                }
                doomed.push((key.2.to_owned(), key.3.to_owned(), key.4));
            }
        }
        for (subject, predicate, number) in &doomed {
            index
                .remove((tenant, user, subject.as_str(), predicate.as_str(), *number))
                .map_err(io)?;
        }
        facts_table
            .retain_in((tenant, user, 0)..=(tenant, user, u64::MAX), |_, _| {
                report.facts += 1;
                false
            })
            .map_err(io)?;
    }
    {
        let mut table = txn.open_table(episodes::EPISODES).map_err(io)?;
        table
            .retain_in((tenant, user, 0)..=(tenant, user, u64::MAX), |_, _| {
                report.episodes += 1;
                false
            })
            .map_err(io)?;
    }
    {
        let mut table = txn.open_table(blocks::BLOCKS).map_err(io)?;
        table
            .retain_in((tenant, user, "")..(tenant, user, "~"), |_, _| {
                report.blocks += 1;
                false
            })
            .map_err(io)?;
    }
    report.sessions = session_rows::delete_user(txn, tenant, user)?;
    report.plugin_kv = crate::store::kv::delete_user_rows(txn, tenant, user)?;
    Ok(report)
}

/// The memory section of a prompt: `blocks`, then `candidates` (facts
/// valid now and episodes, oldest first) ranked for `prompt` and packed
/// into about `token_budget` tokens. `None` when there is nothing to say.
pub(crate) fn pack_context(
    blocks: &[Block],
    prompt: &str,
    candidates: Vec<Recalled>,
    token_budget: usize,
) -> Option<String> {
    let ranked = rank_candidates(prompt, candidates, usize::MAX, true);
    let mut text = String::new();
    if !blocks.is_empty() {
        text.push_str("Working blocks:\n");
        for block in blocks {
            text.push_str(&block.render());
            text.push('\n');
        }
    }
    let mut left = token_budget;
    let mut facts = String::new();
    let mut episodes = String::new();
    for item in ranked {
        let line = format!("- {}\n", item.text);
        let cost = rank::token_cost(&line);
        let target = if item.kind == "fact" {
            &mut facts
        } else {
            &mut episodes
        };
        if cost <= left {
            left -= cost;
            target.push_str(&line);
            continue;
        }
        // The first item that does not fit is cut to the room left
        // (when that is worth it), and packing stops.
        if left >= 16 {
            let mut cut_line = line;
            cut(&mut cut_line, left.saturating_sub(4) * 4);
            cut_line.push_str("…[truncated]\n");
            target.push_str(&cut_line);
        }
        break;
    }
    if !facts.is_empty() {
        text.push_str("Known facts (valid now):\n");
        text.push_str(&facts);
    }
    if !episodes.is_empty() {
        text.push_str("Relevant past episodes:\n");
        text.push_str(&episodes);
    }
    if text.is_empty() {
        return None;
    }
    Some(format!(
        "<memory>\nWhat you remember about this user (use it when relevant):\n{text}</memory>"
    ))
}

/// Rank `candidates` for `query`: by BM25, ties (and an empty query) by
/// recency; scores scaled so the best is 1. With `relevant_only`, episodes
/// that share no word with the query are dropped (facts valid now stay).
pub(crate) fn rank_candidates(
    query: &str,
    candidates: Vec<Recalled>,
    limit: usize,
    relevant_only: bool,
) -> Vec<Recalled> {
    // Each candidate is ranked by its first RANKED_BYTES: a recall costs
    // at most that much reading per candidate.
    let scores = rank::bm25(
        query,
        candidates.iter().map(|c| prefix(&c.text, RANKED_BYTES)),
    );
    let best = scores.iter().copied().fold(0.0_f64, f64::max);
    let mut ranked: Vec<(usize, f64, Recalled)> = candidates
        .into_iter()
        .zip(scores)
        .enumerate()
        .map(|(position, (item, score))| (position, score, item))
        .filter(|(_, score, item)| !relevant_only || item.kind == "fact" || *score > 0.0)
        .collect();
    // Higher score first; among equals, the newer (later) first.
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.0.cmp(&a.0)));
    ranked
        .into_iter()
        .take(limit)
        .map(|(_, score, mut item)| {
            item.score = if best > 0.0 {
                (score / best) as f32
            } else {
                0.0
            };
            item
        })
        .collect()
}

fn next_number(last: &AtomicU64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let mut current = last.load(Ordering::Relaxed);
    loop {
        let next = now.max(current.saturating_add(1));
        match last.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => current = seen,
        }
    }
}
