//! Recording and replaying what one run's architectures receive.
//!
//! An architecture sees the world only through the import gate, so the
//! gate is where a run is journaled: every result it hands the guest (a
//! completion, tool results, a sub-agent's output, recollections, clock
//! readings, random bytes, the tool list, and the input each invocation
//! started with) is first written to the journal's log (`store::journal`) under
//! the invocation's scope and the step's sequence number, with a
//! fingerprint of the request it answers.
//!
//! A resumed run re-instantiates its architecture with the journal loaded:
//! each step then takes the recorded result instead of doing the work, as
//! long as the request's fingerprint matches, and goes live at the first
//! step with no record. A request that does not match its record stops the
//! run with [`JournalError::Diverged`]: the component or its input changed,
//! and going on would silently mix two different runs.
//!
//! Steps that do work outside the host (model calls, tools, sub-agents,
//! memory) are durable before their result reaches the guest; clock and
//! random readings are queued and committed with the next such step, so
//! nothing a later effect depends on is lost.

use crate::governance::budget::BudgetLedger;
use crate::store::StoreError;
use crate::store::journal::{
    EntryAt, EntryKind, Journal, JournalEntry, JournalFormat, JournalRun, ROOT_SCOPE, RunLog,
    RunStart, child_scope, tool_scope,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Entries one run tree may journal (a guest reading its clock in a loop
/// meets this cap instead of filling the disk).
pub const MAX_ENTRIES_PER_RUN: u32 = 200_000;

/// Bytes of payload one run tree may journal.
pub const MAX_BYTES_PER_RUN: u64 = 256 << 20;

/// Why a run could not be journaled or resumed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    /// A resumed run asked for something other than what its journal
    /// recorded at that step.
    #[error(
        "the resumed run diverged from its journal at step {seq} of scope {scope}: the journal \
         recorded {recorded}, and the architecture now asked for {asked} with a different \
         request. The architecture component or the run's input changed since the run started; \
         it cannot be resumed (start it again with `loom run`)"
    )]
    Diverged {
        /// The invocation's scope.
        scope: String,
        /// The step.
        seq: u32,
        /// What the journal holds there.
        recorded: String,
        /// What was asked.
        asked: String,
    },
    /// The architecture component is not the one the run started with.
    #[error(
        "architecture `{architecture}` changed since run {run} started (component sha256 \
         {recorded} then, {now} now); a run resumes only on the component it ran. Put the \
         earlier component back to resume it, or start the run again"
    )]
    ComponentChanged {
        /// The run.
        run: String,
        /// The architecture's name.
        architecture: String,
        /// The component's digest when the run started.
        recorded: String,
        /// Its digest now.
        now: String,
    },
    /// No unfinished run matches.
    #[error("{0}")]
    NotFound(String),
    /// The run is being executed by this process right now.
    #[error("run {0} is running in this process; it can be resumed only once it stopped")]
    Live(String),
    /// The run tree reached the journal's caps.
    #[error(
        "the run journaled more than {MAX_ENTRIES_PER_RUN} results or {MAX_BYTES_PER_RUN} bytes; \
         it was stopped so its journal cannot fill the disk"
    )]
    Full,
    /// A recorded result could not be decoded.
    #[error("the journal entry at step {seq} of scope {scope} is corrupt: {message}")]
    Corrupt {
        /// The invocation's scope.
        scope: String,
        /// The step.
        seq: u32,
        /// What is wrong.
        message: String,
    },
    /// The store failed.
    #[error("the run journal could not be written or read: {0}")]
    Store(#[from] StoreError),
}

/// The journal of one run and all its sub-agents.
///
/// The fields every step reads come first and in declaration order
/// (`repr(C)`): with hundreds of runs in flight, a run's journal is cold
/// whenever the run comes back from a model call, and each cache line a
/// step touches is a trip to memory. What only a failure, a resume or the
/// run's end reads follows.
#[repr(C)]
pub(crate) struct RunJournal {
    /// The run's records, written in place (see [`RunLog`]).
    log: RunLog,
    /// The budget counters written before each entry (see
    /// [`Self::guard_spend`]).
    spend: OnceLock<Option<BudgetLedger>>,
    bytes: AtomicU64,
    entries: AtomicU32,
    /// How the run's requests are fingerprinted and its results encoded.
    format: JournalFormat,
    resumed: bool,
    /// Whether the journal keeps the run's entries when it finishes.
    keep_on_finish: bool,
    /// Set once `failed` is: what a step checks.
    failing: AtomicBool,
    /// The first divergence or failure; every later step refuses.
    failed: OnceLock<JournalError>,
    /// Entries recorded before the run was resumed: scope → seq → entry,
    /// taken as the steps replay.
    replay: Mutex<HashMap<String, BTreeMap<u32, JournalEntry>>>,
    /// SHA-256 of the architecture component a resumed run started on
    /// (`None` for a run begun here, on the component it runs).
    component: Option<String>,
    /// Entries recorded before a resume.
    recorded: u32,
}

/// A run live here already is [`JournalError::Live`], one no longer held
/// [`JournalError::NotFound`]; any other store failure is
/// [`JournalError::Store`].
fn live_or_store(error: StoreError) -> JournalError {
    match error {
        StoreError::Live(run) => JournalError::Live(run),
        error @ StoreError::Gone(_) => JournalError::NotFound(error.to_string()),
        error => JournalError::Store(error),
    }
}

impl RunJournal {
    /// Start journaling the run `start` describes.
    ///
    /// # Errors
    ///
    /// [`JournalError`] when the store fails or the run is live here.
    pub(crate) fn start(
        journal: &Journal,
        start: &RunStart<'_>,
        keep_on_finish: bool,
    ) -> Result<Arc<Self>, JournalError> {
        // Written with the run's first awaited entry.
        let log = journal.begin(start).map_err(live_or_store)?;
        Ok(Self::new(log, start.format, None, keep_on_finish, None))
    }

    /// Resume `record`'s run: its entries are loaded for replay.
    ///
    /// # Errors
    ///
    /// [`JournalError`] when the store fails or the run is live here.
    pub(crate) async fn resume(
        journal: &Journal,
        record: JournalRun,
        keep_on_finish: bool,
    ) -> Result<Arc<Self>, JournalError> {
        // Marked live first, so that no one else resumes it meanwhile.
        let log = journal.begin_resumed(&record).map_err(live_or_store)?;
        let entries = journal.all_entries(log.run())?;
        log.flush().await?;
        Ok(Self::new(
            log,
            record.format,
            Some(record.component),
            keep_on_finish,
            Some(entries),
        ))
    }

    /// The journal of the run `log` records, in `format`; a resumed run's
    /// `component` (the SHA-256 of the one it started on) and `recorded`
    /// entries, which it replays (none for a new run).
    fn new(
        log: RunLog,
        format: JournalFormat,
        component: Option<String>,
        keep_on_finish: bool,
        recorded: Option<Vec<(String, u32, JournalEntry)>>,
    ) -> Arc<Self> {
        let resumed = recorded.is_some();
        let mut replay: HashMap<String, BTreeMap<u32, JournalEntry>> = HashMap::new();
        let mut bytes = 0u64;
        let mut count = 0u32;
        for (scope, seq, entry) in recorded.unwrap_or_default() {
            bytes += entry.payload.len() as u64;
            count += 1;
            replay.entry(scope).or_default().insert(seq, entry);
        }
        Arc::new(RunJournal {
            log,
            replay: Mutex::new(replay),
            resumed,
            failing: AtomicBool::new(false),
            failed: OnceLock::new(),
            entries: AtomicU32::new(count),
            bytes: AtomicU64::new(bytes),
            keep_on_finish,
            component,
            format,
            recorded: count,
            spend: OnceLock::new(),
        })
    }

    /// Have `ledger`'s changed counters written to the store, and that
    /// write committed, before each awaited entry: a crash then never
    /// leaves a recorded model or tool call unbilled, and a resume never
    /// bills it twice. Set once, when the top-level run starts.
    pub(crate) fn guard_spend(&self, ledger: Option<BudgetLedger>) {
        let _ = self.spend.set(ledger);
    }

    /// Write `value` as the entry at `at`, with every entry the run
    /// queued before it; resolves once written. A failure stops the
    /// journal.
    async fn write<T: Serialize + ?Sized>(
        &self,
        at: EntryAt<'_>,
        value: &T,
    ) -> Result<(), JournalError> {
        // The spend is committed before the entry is queued: no other
        // write of the run can take the entry out ahead of it.
        if let Some(Some(ledger)) = self.spend.get() {
            ledger.flush().await.map_err(|e| self.fail(e.into()))?;
        }
        let mut unencodable = None;
        let written = self
            .log
            .write(at, self.encoder(value, &mut unencodable), |len| {
                self.admit(len).is_ok()
            })
            .await;
        self.queued(at, written, unencodable)
    }

    /// Queue `value` as the entry at `at`, encoded in the run's format and
    /// counted against the caps; it is written with the run's next write.
    /// A failure stops the journal.
    fn queue<T: Serialize + ?Sized>(&self, at: EntryAt<'_>, value: &T) -> Result<(), JournalError> {
        let mut unencodable = None;
        let queued = self
            .log
            .queue(at, self.encoder(value, &mut unencodable), |len| {
                self.admit(len).is_ok()
            });
        self.queued(at, queued, unencodable)
    }

    /// What encodes `value` in the run's format onto a record, keeping in
    /// `unencodable` why it could not, if it could not.
    fn encoder<'a, T: Serialize + ?Sized>(
        &self,
        value: &'a T,
        unencodable: &'a mut Option<String>,
    ) -> impl FnOnce(&mut Vec<u8>) -> Result<(), String> + 'a {
        let format = self.format;
        move |out| {
            format
                .encode_into(value, out)
                .inspect_err(|message| *unencodable = Some(message.clone()))
        }
    }

    /// What queueing (and writing) the entry at `at` came to
    /// (`unencodable`: why its value could not be encoded, if it could
    /// not); a failure stops the journal.
    fn queued(
        &self,
        at: EntryAt<'_>,
        queued: Result<bool, StoreError>,
        unencodable: Option<String>,
    ) -> Result<(), JournalError> {
        match queued {
            Ok(true) => Ok(()),
            // `admit` noted the failure.
            Ok(false) => Err(self.failure().unwrap_or(JournalError::Full)),
            Err(error) => Err(self.fail(match unencodable {
                Some(message) => JournalError::Corrupt {
                    scope: at.scope.to_owned(),
                    seq: at.seq,
                    message,
                },
                None => error.into(),
            })),
        }
    }

    /// The journal of the top-level invocation.
    pub(crate) fn root(self: &Arc<Self>) -> ScopeJournal {
        ScopeJournal::new(
            Some(self.clone()),
            self.log.run_id().clone(),
            Cow::Borrowed(ROOT_SCOPE),
        )
    }

    /// Whether this run was resumed from a crash.
    pub(crate) fn resumed(&self) -> bool {
        self.resumed
    }

    /// SHA-256 of the architecture component a resumed run started on
    /// (`None` for a run begun here).
    pub(crate) fn component(&self) -> Option<&str> {
        self.component.as_deref()
    }

    /// Entries the journal held when the run was resumed.
    pub(crate) fn recorded(&self) -> u32 {
        self.recorded
    }

    /// Record that the run finished (its entries dropped unless kept),
    /// committed with the store's next batch: until then the run still
    /// counts as live, never as interrupted.
    pub(crate) fn finish(&self) {
        self.log.finish(!self.keep_on_finish);
    }

    /// What stopped journaling, if anything did.
    pub(crate) fn failure(&self) -> Option<JournalError> {
        if !self.failing.load(Ordering::Acquire) {
            return None;
        }
        self.failed.get().cloned()
    }

    fn fail(&self, error: JournalError) -> JournalError {
        let _ = self.failed.set(error.clone());
        self.failing.store(true, Ordering::Release);
        self.failed.get().cloned().unwrap_or(error)
    }

    fn take(&self, scope: &str, seq: u32) -> Option<JournalEntry> {
        if !self.resumed {
            return None;
        }
        let mut replay = crate::sync::lock(&self.replay);
        let entries = replay.get_mut(scope)?;
        let entry = entries.remove(&seq);
        if entries.is_empty() {
            replay.remove(scope);
        }
        entry
    }

    /// Count an entry of `bytes` against the caps. Called only with the
    /// run log's lock held (as [`RunLog::queue`] accepts an entry), so the
    /// counters are read and written, not updated by locked instructions
    /// (each of which waits for the entry's stores just made).
    fn admit(&self, bytes: usize) -> Result<(), JournalError> {
        let entries = self.entries.load(Ordering::Relaxed);
        self.entries
            .store(entries.saturating_add(1), Ordering::Relaxed);
        let total = self.bytes.load(Ordering::Relaxed);
        self.bytes
            .store(total.saturating_add(bytes as u64), Ordering::Relaxed);
        if entries >= MAX_ENTRIES_PER_RUN || total.saturating_add(bytes as u64) > MAX_BYTES_PER_RUN
        {
            return Err(self.fail(JournalError::Full));
        }
        Ok(())
    }
}

/// A step that found no record: its work runs live, then is recorded.
#[derive(Debug)]
pub(crate) struct LiveStep {
    seq: u32,
    kind: EntryKind,
    fingerprint: [u8; 32],
    /// The first live step of an invocation of a resumed run: its work may
    /// have been under way when the run stopped.
    pub(crate) maybe_repeated: bool,
}

impl LiveStep {
    /// The step's sequence number in its invocation.
    pub(crate) fn seq(&self) -> u32 {
        self.seq
    }
}

/// What a step does: replay a recorded result, or go live.
pub(crate) enum Step<T> {
    /// The recorded result.
    Replayed(T),
    /// No record: do the work and [`ScopeJournal::record`] it.
    Live(LiveStep),
}

/// The journal of one architecture invocation (the top-level run or one
/// sub-agent): its scope and its step counter. Without a run journal it
/// only counts steps (idempotency keys stay stable either way).
pub(crate) struct ScopeJournal {
    tree: Option<Arc<RunJournal>>,
    /// The top-level run's id.
    run: Arc<str>,
    scope: Cow<'static, str>,
    seq: AtomicU32,
    /// No live step has run yet in this invocation.
    fresh: AtomicBool,
}

impl ScopeJournal {
    fn new(tree: Option<Arc<RunJournal>>, run: Arc<str>, scope: Cow<'static, str>) -> Self {
        ScopeJournal {
            tree,
            run,
            scope,
            seq: AtomicU32::new(0),
            fresh: AtomicBool::new(true),
        }
    }

    /// An invocation of a run that is not journaled.
    pub(crate) fn unjournaled(run: &str) -> Self {
        ScopeJournal::new(None, Arc::from(run), Cow::Borrowed(ROOT_SCOPE))
    }

    /// The journal of the sub-agent started by the delegation at `seq`,
    /// the `index`th of its batch.
    pub(crate) fn child(&self, seq: u32, index: usize) -> ScopeJournal {
        ScopeJournal::new(
            self.tree.clone(),
            self.run.clone(),
            Cow::Owned(child_scope(&self.scope, seq, index)),
        )
    }

    /// The run tree's journal, if the run is journaled.
    pub(crate) fn tree(&self) -> Option<&Arc<RunJournal>> {
        self.tree.as_ref()
    }

    /// The idempotency key of the `index`th tool call of the `call-tools`
    /// at step `seq`: the same each time this call runs, a resumed run's
    /// included.
    pub(crate) fn tool_key(&self, seq: u32, index: usize) -> String {
        format!("{}:{}:{seq}:{index}", self.run, self.scope)
    }

    /// Take the next step: its record when the run is replaying, else a
    /// live step to record. `request` identifies what is asked.
    ///
    /// # Errors
    ///
    /// [`JournalError::Diverged`] when the record answers another request,
    /// [`JournalError::Corrupt`] when it cannot be decoded, or the failure
    /// that stopped the journal earlier.
    pub(crate) fn step<T: DeserializeOwned, R: Serialize + ?Sized>(
        &self,
        kind: EntryKind,
        request: &R,
    ) -> Result<Step<T>, JournalError> {
        self.step_by(kind, |tree| tree.format.digest(request))
    }

    /// [`Self::step`] for a request identified by raw bytes.
    ///
    /// # Errors
    ///
    /// As [`Self::step`].
    pub(crate) fn step_bytes<T: DeserializeOwned>(
        &self,
        kind: EntryKind,
        request: &[u8],
    ) -> Result<Step<T>, JournalError> {
        self.step_by(kind, |tree| tree.format.digest_bytes(request))
    }

    /// The next step, with the request's fingerprint computed only when
    /// the run is journaled (an unjournaled run never reads it).
    fn step_by<T: DeserializeOwned>(
        &self,
        kind: EntryKind,
        print: impl FnOnce(&RunJournal) -> [u8; 32],
    ) -> Result<Step<T>, JournalError> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let Some(tree) = &self.tree else {
            return Ok(Step::Live(LiveStep {
                seq,
                kind,
                fingerprint: [0; 32],
                maybe_repeated: false,
            }));
        };
        let print = print(tree);
        if let Some(error) = tree.failure() {
            return Err(error);
        }
        if let Some(entry) = tree.take(&self.scope, seq) {
            if entry.kind != kind || entry.fingerprint != print {
                return Err(tree.fail(JournalError::Diverged {
                    scope: self.scope.to_string(),
                    seq,
                    recorded: kind_name(entry.kind).to_owned(),
                    asked: kind_name(kind).to_owned(),
                }));
            }
            let value = tree.format.decode(&entry.payload).map_err(|message| {
                tree.fail(JournalError::Corrupt {
                    scope: self.scope.to_string(),
                    seq,
                    message,
                })
            })?;
            return Ok(Step::Replayed(value));
        }
        let maybe_repeated = tree.resumed && self.fresh.swap(false, Ordering::Relaxed);
        Ok(Step::Live(LiveStep {
            seq,
            kind,
            fingerprint: print,
            maybe_repeated,
        }))
    }

    /// Where `step`'s entry goes.
    fn at<'a>(&'a self, step: &'a LiveStep) -> EntryAt<'a> {
        EntryAt {
            scope: &self.scope,
            seq: step.seq,
            kind: step.kind,
            fingerprint: &step.fingerprint,
        }
    }

    /// Record `value` as the result of `step`; resolves once durable.
    ///
    /// # Errors
    ///
    /// [`JournalError`] when the journal is full or the store fails; the
    /// run must stop, since a resume could not reproduce it.
    pub(crate) async fn record<T: Serialize>(
        &self,
        step: &LiveStep,
        value: &T,
    ) -> Result<(), JournalError> {
        let Some(tree) = &self.tree else {
            return Ok(());
        };
        tree.write(self.at(step), value).await
    }

    /// Record `value` as the result of `step` without waiting: it becomes
    /// durable with the next [`Self::record`] (for readings of clocks and
    /// randomness, which the host hands out synchronously).
    pub(crate) fn record_queued<T: Serialize>(&self, step: &LiveStep, value: &T) {
        if let Some(tree) = &self.tree {
            // A failure is kept by the journal; the next step reports it.
            let _ = tree.queue(self.at(step), value);
        }
    }

    /// Note a failure that must stop the run (from a synchronous step,
    /// which cannot refuse the guest); the next step reports it.
    pub(crate) fn fail(&self, error: JournalError) {
        if let Some(tree) = &self.tree {
            tree.fail(error);
        }
    }
}

/// The journal of one `call-tools` turn, handed to the calls: their
/// idempotency keys, what a resumed run recorded for each, and a recorder
/// for each as it finishes (when the turn runs several).
pub(crate) struct TurnJournal {
    journal: Arc<ScopeJournal>,
    seq: u32,
    /// The turn may have been under way when the run stopped.
    pub(crate) maybe_repeated: bool,
}

impl TurnJournal {
    /// The journal of the turn at `step`.
    pub(crate) fn new(journal: &Arc<ScopeJournal>, step: &LiveStep) -> Self {
        TurnJournal {
            journal: journal.clone(),
            seq: step.seq,
            maybe_repeated: step.maybe_repeated,
        }
    }

    /// The fingerprint of one call of the turn, as its own record holds it
    /// (in the run's format; zero when the run is not journaled).
    pub(crate) fn call_fingerprint<T: Serialize + ?Sized>(&self, call: &T) -> [u8; 32] {
        self.journal
            .tree
            .as_ref()
            .map_or([0; 32], |tree| tree.format.digest(call))
    }

    /// The idempotency key of the `index`th call.
    pub(crate) fn key(&self, index: usize) -> String {
        self.journal.tool_key(self.seq, index)
    }

    /// The result recorded for the `index`th call before the run stopped,
    /// when that call finished then and `call` (the call's fingerprint,
    /// [`TurnJournal::call_fingerprint`]) is the same call.
    pub(crate) fn recorded<T: DeserializeOwned>(&self, index: usize, call: &[u8; 32]) -> Option<T> {
        let tree = self.journal.tree.as_ref()?;
        if !tree.resumed {
            return None;
        }
        let scope = tool_scope(&self.journal.scope, self.seq);
        let entry = tree.take(&scope, u32::try_from(index).ok()?)?;
        if entry.kind != EntryKind::ToolResult || entry.fingerprint != *call {
            return None;
        }
        tree.format.decode(&entry.payload).ok()
    }

    /// A recorder to move into the calls' tasks (none unjournaled).
    pub(crate) fn recorder(&self) -> Option<CallRecorder> {
        Some(CallRecorder {
            tree: self.journal.tree.clone()?,
            scope: tool_scope(&self.journal.scope, self.seq),
        })
    }
}

/// Records each call of one turn as it finishes, so a crash mid-turn
/// repeats only the calls that had not.
#[derive(Clone)]
pub(crate) struct CallRecorder {
    tree: Arc<RunJournal>,
    scope: String,
}

impl CallRecorder {
    /// Record the `index`th call's `result`; `call` is the call's
    /// fingerprint ([`TurnJournal::call_fingerprint`]).
    pub(crate) async fn record<T: Serialize>(&self, index: usize, call: [u8; 32], result: &T) {
        let Ok(seq) = u32::try_from(index) else {
            return;
        };
        let at = EntryAt {
            scope: &self.scope,
            seq,
            kind: EntryKind::ToolResult,
            fingerprint: &call,
        };
        // A failure is kept by the journal; the run's next step reports it.
        let _ = self.tree.write(at, result).await;
    }
}

fn kind_name(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::Completion => "a model completion",
        EntryKind::ToolResults => "tool results",
        EntryKind::Delegation => "a sub-agent's output",
        EntryKind::Recall => "a recall",
        EntryKind::Remember => "a remember",
        EntryKind::WallClock => "a wall-clock reading",
        EntryKind::MonotonicClock => "a monotonic-clock reading",
        EntryKind::Random => "random bytes",
        EntryKind::Tools => "the tool list",
        EntryKind::Input => "the architecture's input",
        EntryKind::ToolResult => "a tool result",
    }
}

/// Closes a top-level run's journal on the paths that finish the run. A
/// run dropped before (its stream dropped, its process killed) stays
/// unfinished in the journal, and [`crate::agent::Agent::resume`] can
/// finish it.
pub(crate) struct JournalCloser(Option<Arc<RunJournal>>);

impl JournalCloser {
    /// A closer of `tree` (none: nothing to close).
    pub(crate) fn new(tree: Option<Arc<RunJournal>>) -> Self {
        JournalCloser(tree)
    }

    /// Record that the run finished.
    pub(crate) async fn close(self) {
        if let Some(tree) = self.0 {
            tree.finish();
        }
    }
}

/// Journaling settings of an agent.
#[derive(Clone)]
pub struct JournalSettings {
    /// The journal (the host's: [`crate::Host::journal`]).
    pub journal: Journal,
    /// Keep a run's entries after it finished (default: dropped, only its
    /// record stays; `loom runtime prune` deletes old records).
    pub keep_finished: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::bindings::architecture_export as arch;
    use crate::engine::bindings::harness as wit;
    use crate::engine::bindings::types as wt;
    use std::fmt::Debug;

    /// `value` survives the compact format unchanged (compared by its
    /// debug form: the generated types do not all implement `PartialEq`).
    fn round_trips<T: Serialize + DeserializeOwned + Debug>(value: T) {
        let bytes = JournalFormat::Compact
            .encode(&value)
            .expect("every journaled result encodes in the compact format");
        let back: T = JournalFormat::Compact
            .decode(&bytes)
            .expect("and decodes back");
        assert_eq!(format!("{back:?}"), format!("{value:?}"));
    }

    fn message() -> wt::Message {
        wt::Message {
            role: wt::Role::Assistant,
            content: "quoted \"text\" with ünïcode\n".into(),
            name: Some("n".into()),
            tool_call_id: None,
            tool_calls: vec![wt::ToolCall {
                id: "c1".into(),
                name: "calculator".into(),
                arguments: r#"{"expression":"6*7"}"#.into(),
            }],
        }
    }

    fn usage() -> wt::Usage {
        wt::Usage {
            input_tokens: 10,
            output_tokens: u64::MAX,
            cached_tokens: 0,
        }
    }

    /// A journal of a new run `run`, in a fresh store syncing as `sync`
    /// says (open while the returned journal is).
    async fn started(
        run: &str,
        sync: crate::store::StoreSync,
    ) -> (tempfile::TempDir, Journal, Arc<RunJournal>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            crate::store::Store::open_with(&dir.path().join("loom.redb"), sync).expect("store");
        let journal = Journal::open(store).expect("journal");
        let record = crate::store::journal::test_run(
            run,
            JournalFormat::Compact2,
            crate::store::journal::JournalStatus::Running,
            0,
        );
        let tree = RunJournal::start(&journal, &record.start(), false).expect("a new run starts");
        (dir, journal, tree)
    }

    /// The next step of `scope`, which must go live.
    fn live_step(scope: &ScopeJournal, kind: EntryKind) -> Result<LiveStep, JournalError> {
        match scope.step::<u64, _>(kind, &())? {
            Step::Live(step) => Ok(step),
            Step::Replayed(_) => panic!("a new run replays nothing"),
        }
    }

    /// A guest reading its clock in a loop meets the entry cap: the entry
    /// past it is refused and the run's journal stops (every later step,
    /// awaited or not, fails with the same error); with the writer thread
    /// writing every entry, and with the run writing its own in place.
    #[tokio::test]
    async fn a_run_journaling_past_its_entry_cap_is_stopped() {
        for sync in [
            crate::store::StoreSync::Always,
            crate::store::StoreSync::Interval(100),
        ] {
            run_past_the_entry_cap(sync).await;
        }
    }

    async fn run_past_the_entry_cap(sync: crate::store::StoreSync) {
        let (_dir, _journal, tree) = started("capped", sync).await;
        let root = tree.root();
        for reading in 0..MAX_ENTRIES_PER_RUN {
            let step = live_step(&root, EntryKind::MonotonicClock).expect("under the cap");
            root.record_queued(&step, &u64::from(reading));
        }
        assert!(tree.failure().is_none());
        let step = live_step(&root, EntryKind::MonotonicClock).expect("still under the cap");
        root.record_queued(&step, &0u64);
        assert!(matches!(tree.failure(), Some(JournalError::Full)));
        assert!(matches!(
            live_step(&root, EntryKind::Completion),
            Err(JournalError::Full)
        ));
        // An awaited write of a step taken before the cap was met fails too.
        let (_dir, _journal, tree) = started("capped-awaited", sync).await;
        let root = tree.root();
        for reading in 0..MAX_ENTRIES_PER_RUN - 1 {
            let step = live_step(&root, EntryKind::WallClock).expect("under the cap");
            root.record_queued(&step, &u64::from(reading));
        }
        let last = live_step(&root, EntryKind::Completion).expect("the last one");
        let past = live_step(&root, EntryKind::Completion).expect("one more");
        root.record(&last, &1u64)
            .await
            .expect("the last entry fits");
        assert!(matches!(
            root.record(&past, &2u64).await,
            Err(JournalError::Full)
        ));
    }

    /// Every kind of result the gate journals, in the shape it journals it
    /// (postcard is not self-describing: a type that needs a self-describing
    /// format would fail here, not on some crashed run's resume).
    #[test]
    fn every_journaled_result_round_trips_in_the_compact_format() {
        round_trips::<Result<wit::Completion, wit::HarnessError>>(Ok(wit::Completion {
            message: message(),
            usage: usage(),
            cost_usd: 0.25,
            finish_reason: wit::FinishReason::ToolCalls,
        }));
        round_trips::<Result<wit::Completion, wit::HarnessError>>(Err(
            wit::HarnessError::BudgetExceeded("budget:tokens_per_day".into()),
        ));
        round_trips(vec![
            wt::ToolResult {
                call_id: "c1".into(),
                name: "calculator".into(),
                outcome: Ok(r#"{"value":42}"#.into()),
            },
            wt::ToolResult {
                call_id: "c2".into(),
                name: "write".into(),
                outcome: Err(wt::ToolError::Denied("plan mode".into())),
            },
        ]);
        round_trips::<Result<String, wt::ToolError>>(Err(wt::ToolError::Failed("x".into())));
        round_trips(vec![wt::ToolSpec {
            name: "calculator".into(),
            description: "adds".into(),
            parameters: r#"{"type":"object"}"#.into(),
            destructive: false,
            idempotent: true,
        }]);
        round_trips(arch::RunInput {
            instructions: "be brief".into(),
            history: vec![message()],
            prompt: "hi".into(),
            config: "{}".into(),
            max_turns: 8,
        });
        let output = wit::RunOutput {
            output: "done".into(),
            turns: 2,
            usage: usage(),
            cost_usd: 0.0,
            interrupted: Some("budget:cost".into()),
        };
        round_trips::<Result<wit::RunOutput, wit::HarnessError>>(Ok(output.clone()));
        round_trips::<Vec<Result<wit::RunOutput, wit::HarnessError>>>(vec![
            Ok(output),
            Err(wit::HarnessError::UnknownAgent("critic".into())),
        ]);
        round_trips(vec![wit::Recollection {
            text: "Alice likes tea".into(),
            score: 0.5,
        }]);
        round_trips::<Result<(), wit::HarnessError>>(Err(wit::HarnessError::Cancelled));
        round_trips(std::time::Duration::new(1_764_000_000, 123));
        round_trips(u64::MAX);
        round_trips(vec![0u8, 255, 7]);
    }
}
