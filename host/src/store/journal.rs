//! The run journal: every result an architecture received, in order, so a
//! run cut short by a crash can be replayed to where it stopped and then go
//! on live.
//!
//! An entry is keyed by (run, scope, sequence). The scope names one
//! architecture invocation inside the run's tree of sub-agents (the
//! top-level run is [`ROOT_SCOPE`]; a sub-agent's scope is derived from its
//! parent's scope and the sequence of the delegation that started it, so
//! it is the same on replay however the sub-agents of a batch interleave),
//! and the sequence counts that invocation's harness results from 0. Each
//! entry carries its kind, a SHA-256 fingerprint of the request it answers
//! (replay refuses a request whose fingerprint differs), and the result as
//! the caller encoded it.
//!
//! A run's record ([`JournalRun`]) says who it serves and whether it
//! finished: the runs a crash left unfinished are the ones still
//! [`JournalStatus::Running`].
//!
//! Writes go through the store's group-committing writer: an appended
//! entry is committed with whatever else was queued, and [`Journal::append`]
//! resolves once it is.

use super::{Store, StoreError, io, read_table};
use redb::{ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// (run id, scope, sequence) → encoded [`JournalEntry`].
const ENTRIES: TableDefinition<(&str, &str, u32), &[u8]> = TableDefinition::new("journal");

/// Run id → JSON [`JournalRun`].
const RUNS: TableDefinition<&str, &[u8]> = TableDefinition::new("journal_runs");

/// The scope of a top-level run's architecture.
pub const ROOT_SCOPE: &str = "0";

/// Bytes of one entry's payload at most (a model completion or tool result
/// is capped far below this by the import gate).
pub const MAX_PAYLOAD_BYTES: usize = 64 << 20;

/// What kind of result an entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[repr(u8)]
pub enum EntryKind {
    /// A model completion.
    Completion = 1,
    /// The results of one `call-tools`.
    ToolResults = 2,
    /// A sub-agent's output.
    Delegation = 3,
    /// What `recall` returned.
    Recall = 4,
    /// What `remember` returned.
    Remember = 5,
    /// A wall-clock reading.
    WallClock = 6,
    /// A monotonic-clock reading.
    MonotonicClock = 7,
    /// Random bytes.
    Random = 8,
    /// The tool list.
    Tools = 9,
    /// The input an architecture invocation was started with.
    Input = 10,
    /// One tool call's result, recorded as soon as it finished when its
    /// turn ran several calls (see [`tool_scope`]).
    ToolResult = 11,
}

impl EntryKind {
    fn from_byte(byte: u8) -> Option<Self> {
        Some(match byte {
            1 => EntryKind::Completion,
            2 => EntryKind::ToolResults,
            3 => EntryKind::Delegation,
            4 => EntryKind::Recall,
            5 => EntryKind::Remember,
            6 => EntryKind::WallClock,
            7 => EntryKind::MonotonicClock,
            8 => EntryKind::Random,
            9 => EntryKind::Tools,
            10 => EntryKind::Input,
            11 => EntryKind::ToolResult,
            _ => return None,
        })
    }
}

/// One recorded result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    /// What it records.
    pub kind: EntryKind,
    /// SHA-256 of the request it answers.
    pub fingerprint: [u8; 32],
    /// The result, encoded by the caller.
    pub payload: Vec<u8>,
}

impl JournalEntry {
    /// An entry answering `request` (any bytes that identify it) with
    /// `payload`.
    pub fn new(kind: EntryKind, request: &[u8], payload: Vec<u8>) -> Self {
        JournalEntry {
            kind,
            fingerprint: fingerprint(request),
            payload,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(33 + self.payload.len());
        bytes.push(self.kind as u8);
        bytes.extend_from_slice(&self.fingerprint);
        bytes.extend_from_slice(&self.payload);
        bytes
    }

    fn decode(bytes: &[u8]) -> Result<Self, StoreError> {
        let (&kind, rest) = bytes
            .split_first()
            .ok_or_else(|| StoreError::Corrupt("an empty journal entry".into()))?;
        let kind = EntryKind::from_byte(kind)
            .ok_or_else(|| StoreError::Corrupt(format!("journal entry kind {kind}")))?;
        if rest.len() < 32 {
            return Err(StoreError::Corrupt(
                "a journal entry shorter than its fingerprint".into(),
            ));
        }
        let (print, payload) = rest.split_at(32);
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(print);
        Ok(JournalEntry {
            kind,
            fingerprint,
            payload: payload.to_vec(),
        })
    }
}

/// SHA-256 of `request`.
pub fn fingerprint(request: &[u8]) -> [u8; 32] {
    Sha256::digest(request).into()
}

/// The scope of the sub-agent started by the delegation recorded at
/// `seq` in `parent`, the `index`th of its batch (0 for `delegate`).
pub fn child_scope(parent: &str, seq: u32, index: usize) -> String {
    format!("{parent}.{seq}:{index}")
}

/// The scope holding the per-call results of the `call-tools` recorded at
/// `seq` in `parent` (sequence = the call's index among the turn's calls),
/// so a crash in the middle of a turn loses none of the calls that finished.
pub fn tool_scope(parent: &str, seq: u32) -> String {
    format!("{parent}.{seq}t")
}

/// Whether a journaled run finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JournalStatus {
    /// Started and not finished: a crash left it so, or it is running now.
    Running,
    /// Finished (completed, interrupted or failed).
    Finished,
}

/// Who a journaled run serves and what it ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalRun {
    /// The run id.
    pub run: String,
    /// Its tenant.
    pub tenant: String,
    /// Its user (none when anonymous).
    pub user: Option<String>,
    /// Its session, if any.
    pub session: Option<String>,
    /// The named agent it ran (`[agents.NAME]`), if any.
    pub agent: Option<String>,
    /// The architecture it ran.
    pub architecture: String,
    /// The prompt.
    pub prompt: String,
    /// The JSON Schema the answer had to match, if any.
    #[serde(default)]
    pub output_schema: Option<serde_json::Value>,
    /// The run's metadata.
    #[serde(default)]
    pub metadata: Vec<(String, String)>,
    /// SHA-256 (hex) of the architecture component it ran.
    #[serde(default)]
    pub component: String,
    /// What the caller kept with the run to rebuild its agent on resume
    /// (the CLI: agent name and model).
    #[serde(default)]
    pub origin: serde_json::Value,
    /// Whether it finished.
    pub status: JournalStatus,
    /// When it started, in milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// When its record last changed, in milliseconds since the Unix epoch.
    pub updated_ms: u64,
}

/// Milliseconds since the Unix epoch, now.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// The journal of every run, in the host's store.
#[derive(Clone)]
pub struct Journal {
    store: Arc<Store>,
    /// Runs this process is executing now.
    live: Arc<Mutex<HashSet<String>>>,
}

/// A run this process is executing; dropping it ends that.
pub struct LiveRun {
    live: Arc<Mutex<HashSet<String>>>,
    run: String,
}

impl Drop for LiveRun {
    fn drop(&mut self) {
        lock(&self.live).remove(&self.run);
    }
}

fn lock(live: &Mutex<HashSet<String>>) -> std::sync::MutexGuard<'_, HashSet<String>> {
    match live.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Journal {
    /// The journal kept in `store`. The store's file can be open in one
    /// process at a time, so the runs a journal knows to be live are all
    /// the live runs of that store: open the journal once per store.
    pub fn new(store: Arc<Store>) -> Self {
        Journal {
            store,
            live: Arc::default(),
        }
    }

    /// Note that this process executes `run`; `None` when it already does.
    pub fn mark_live(&self, run: &str) -> Option<LiveRun> {
        lock(&self.live).insert(run.to_owned()).then(|| LiveRun {
            live: self.live.clone(),
            run: run.to_owned(),
        })
    }

    /// The runs a crash (or a cancellation) left unfinished: started, not
    /// finished, and not being executed by this process. Newest first.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store cannot be read or a record is corrupt.
    pub fn interrupted(&self) -> Result<Vec<JournalRun>, StoreError> {
        let mut runs = self.runs(true)?;
        let live = lock(&self.live);
        runs.retain(|run| !live.contains(&run.run));
        Ok(runs)
    }

    /// Record that `run` started (or restarted, on resume: its status goes
    /// back to running and its entries stay).
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the write fails.
    pub async fn start(&self, run: JournalRun) -> Result<(), StoreError> {
        let (key, bytes) = running_record(run)?;
        self.store
            .write(move |txn| put_record(txn, &key, &bytes))
            .await
    }

    /// [`Self::start`] without waiting: the record is committed, in order,
    /// with the next write anyone awaits.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the record cannot be encoded.
    pub fn start_queued(&self, run: JournalRun) -> Result<(), StoreError> {
        let (key, bytes) = running_record(run)?;
        self.store.write_then(
            Box::new(move |txn| put_record(txn, &key, &bytes)),
            Box::new(|result| {
                if let Err(error) = result {
                    tracing::error!(%error, "a run's journal record could not be written");
                }
            }),
        );
        Ok(())
    }

    /// Record `entry` at (`run`, `scope`, `seq`); resolves once committed.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the write fails, or the payload is larger than
    /// [`MAX_PAYLOAD_BYTES`].
    pub async fn append(
        &self,
        run: &str,
        scope: &str,
        seq: u32,
        entry: &JournalEntry,
    ) -> Result<(), StoreError> {
        let insert = insert_entry(run, scope, seq, entry)?;
        self.store.write(insert).await
    }

    /// The entries of `run` in `scope`, in sequence order.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store cannot be read or an entry is corrupt.
    pub fn entries(&self, run: &str, scope: &str) -> Result<Vec<JournalEntry>, StoreError> {
        let txn = self.store.db().begin_read().map_err(io)?;
        let Some(table) = read_table(&txn, ENTRIES)? else {
            return Ok(Vec::new());
        };
        let mut entries = Vec::new();
        for item in table
            .range((run, scope, 0u32)..=(run, scope, u32::MAX))
            .map_err(io)?
        {
            let (_, value) = item.map_err(io)?;
            entries.push(JournalEntry::decode(value.value())?);
        }
        Ok(entries)
    }

    /// Every entry of `run`, all scopes: (scope, sequence, entry), sorted
    /// by scope then sequence.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store cannot be read or an entry is corrupt.
    pub fn all_entries(&self, run: &str) -> Result<Vec<(String, u32, JournalEntry)>, StoreError> {
        let txn = self.store.db().begin_read().map_err(io)?;
        let Some(table) = read_table(&txn, ENTRIES)? else {
            return Ok(Vec::new());
        };
        let mut entries = Vec::new();
        for item in table
            .range((run, "", 0u32)..=(run, "\u{10FFFF}", u32::MAX))
            .map_err(io)?
        {
            let (key, value) = item.map_err(io)?;
            let (_, scope, seq) = key.value();
            entries.push((scope.to_owned(), seq, JournalEntry::decode(value.value())?));
        }
        Ok(entries)
    }

    /// Queue `entry` at (`run`, `scope`, `seq`) without waiting: it is
    /// committed, in order, with the next write anyone awaits (the next
    /// [`Self::append`] of the run, say). A failed write is logged.
    pub fn append_queued(&self, run: &str, scope: &str, seq: u32, entry: &JournalEntry) {
        let insert = match insert_entry(run, scope, seq, entry) {
            Ok(insert) => insert,
            Err(error) => {
                tracing::warn!(run, scope, seq, %error, "a journal entry was dropped");
                return;
            }
        };
        self.store.write_then(
            Box::new(insert),
            Box::new(|result| {
                if let Err(error) = result {
                    tracing::error!(%error, "a journal entry could not be written");
                }
            }),
        );
    }

    /// Record that `run` finished; with `drop_entries`, its entries are
    /// deleted in the same transaction (retention on completion).
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the write fails.
    pub async fn finish(&self, run: &str, drop_entries: bool) -> Result<(), StoreError> {
        let run = run.to_owned();
        self.store
            .write(move |txn| finish_in(txn, &run, drop_entries))
            .await
    }

    /// [`Self::finish`] without waiting; `live` (the run's mark as executed
    /// by this process) is dropped once the write is committed, so the run
    /// is never listed as interrupted in between.
    pub fn finish_queued(&self, run: &str, drop_entries: bool, live: LiveRun) {
        let run = run.to_owned();
        self.store.write_then(
            Box::new(move |txn| finish_in(txn, &run, drop_entries)),
            Box::new(move |result| {
                if let Err(error) = result {
                    tracing::warn!(%error, "a finished run's journal could not be closed");
                }
                drop(live);
            }),
        );
    }

    /// Every journaled run, optionally only those still running (the ones
    /// a crash left unfinished, when no run is live), newest first.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store cannot be read or a record is corrupt.
    pub fn runs(&self, only_running: bool) -> Result<Vec<JournalRun>, StoreError> {
        let txn = self.store.db().begin_read().map_err(io)?;
        let Some(table) = read_table(&txn, RUNS)? else {
            return Ok(Vec::new());
        };
        let mut runs = Vec::new();
        for item in table.iter().map_err(io)? {
            let (_, value) = item.map_err(io)?;
            let run: JournalRun = serde_json::from_slice(value.value())
                .map_err(|e| StoreError::Corrupt(format!("journal run: {e}")))?;
            if !only_running || run.status == JournalStatus::Running {
                runs.push(run);
            }
        }
        runs.sort_by_key(|run| std::cmp::Reverse(run.started_ms));
        Ok(runs)
    }

    /// One journaled run.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store cannot be read or the record is corrupt.
    pub fn run(&self, run: &str) -> Result<Option<JournalRun>, StoreError> {
        let txn = self.store.db().begin_read().map_err(io)?;
        let Some(table) = read_table(&txn, RUNS)? else {
            return Ok(None);
        };
        table
            .get(run)
            .map_err(io)?
            .map(|value| {
                serde_json::from_slice(value.value())
                    .map_err(|e| StoreError::Corrupt(format!("journal run: {e}")))
            })
            .transpose()
    }

    /// Delete every run (its record and entries) whose record last changed
    /// more than `older_than` ago, finished or not; the number deleted.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store cannot be read or written.
    pub async fn prune(&self, older_than: Duration) -> Result<usize, StoreError> {
        let cutoff = now_ms().saturating_sub(older_than.as_millis() as u64);
        let stale: Vec<String> = self
            .runs(false)?
            .into_iter()
            .filter(|run| run.updated_ms < cutoff)
            .map(|run| run.run)
            .collect();
        let count = stale.len();
        if count == 0 {
            return Ok(0);
        }
        self.store
            .write(move |txn| {
                let mut runs = txn.open_table(RUNS).map_err(io)?;
                for run in &stale {
                    runs.remove(run.as_str()).map_err(io)?;
                }
                drop(runs);
                for run in &stale {
                    delete_entries(txn, run)?;
                }
                Ok(())
            })
            .await?;
        Ok(count)
    }
}

/// The write that stores `entry` at (`run`, `scope`, `seq`), for
/// [`Journal::append`] and [`Journal::append_queued`].
///
/// # Errors
///
/// [`StoreError::Io`] when the payload is larger than [`MAX_PAYLOAD_BYTES`].
fn insert_entry(
    run: &str,
    scope: &str,
    seq: u32,
    entry: &JournalEntry,
) -> Result<
    impl Fn(&redb::WriteTransaction) -> Result<(), StoreError> + Send + Sync + 'static,
    StoreError,
> {
    if entry.payload.len() > MAX_PAYLOAD_BYTES {
        return Err(StoreError::Io(format!(
            "a journal entry of {} bytes; at most {MAX_PAYLOAD_BYTES} are kept",
            entry.payload.len()
        )));
    }
    let (run, scope, bytes) = (run.to_owned(), scope.to_owned(), entry.encode());
    Ok(move |txn: &redb::WriteTransaction| {
        let mut table = txn.open_table(ENTRIES).map_err(io)?;
        table
            .insert((run.as_str(), scope.as_str(), seq), bytes.as_slice())
            .map_err(io)?;
        Ok(())
    })
}

/// `run` as a running record: its key and JSON.
fn running_record(mut run: JournalRun) -> Result<(String, Vec<u8>), StoreError> {
    run.status = JournalStatus::Running;
    run.updated_ms = now_ms();
    let bytes = serde_json::to_vec(&run).map_err(io)?;
    Ok((run.run, bytes))
}

fn put_record(txn: &redb::WriteTransaction, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
    let mut table = txn.open_table(RUNS).map_err(io)?;
    table.insert(key, bytes).map_err(io)?;
    Ok(())
}

/// Mark `run` finished in `txn`, deleting its entries with `drop_entries`.
fn finish_in(
    txn: &redb::WriteTransaction,
    run: &str,
    drop_entries: bool,
) -> Result<(), StoreError> {
    let mut runs = txn.open_table(RUNS).map_err(io)?;
    let record = runs
        .get(run)
        .map_err(io)?
        .map(|value| serde_json::from_slice::<JournalRun>(value.value()));
    if let Some(Ok(mut record)) = record {
        record.status = JournalStatus::Finished;
        record.updated_ms = now_ms();
        let bytes = serde_json::to_vec(&record).map_err(io)?;
        runs.insert(run, bytes.as_slice()).map_err(io)?;
    }
    drop(runs);
    if drop_entries {
        delete_entries(txn, run)?;
    }
    Ok(())
}

/// Delete every entry of `run`, all scopes.
fn delete_entries(txn: &redb::WriteTransaction, run: &str) -> Result<(), StoreError> {
    let mut table = txn.open_table(ENTRIES).map_err(io)?;
    // Scopes are ASCII: every key of `run` sorts inside this range.
    table
        .retain_in((run, "", 0u32)..=(run, "\u{10FFFF}", u32::MAX), |_, _| {
            false
        })
        .map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal() -> (tempfile::TempDir, Journal) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("loom.redb")).unwrap();
        (dir, Journal::new(store))
    }

    fn record(run: &str, started_ms: u64) -> JournalRun {
        JournalRun {
            run: run.into(),
            tenant: "acme".into(),
            user: Some("ann".into()),
            session: None,
            agent: None,
            architecture: "react".into(),
            prompt: "hi".into(),
            output_schema: None,
            metadata: Vec::new(),
            component: String::new(),
            origin: serde_json::Value::Null,
            status: JournalStatus::Finished,
            started_ms,
            updated_ms: 0,
        }
    }

    #[tokio::test]
    async fn entries_come_back_in_order_per_scope() {
        let (_dir, journal) = journal();
        let child = child_scope(ROOT_SCOPE, 1, 0);
        for (scope, seq, text) in [
            (ROOT_SCOPE, 1, "b"),
            (ROOT_SCOPE, 0, "a"),
            (child.as_str(), 0, "child"),
            (ROOT_SCOPE, 10, "c"),
        ] {
            let entry = JournalEntry::new(EntryKind::Completion, text.as_bytes(), text.into());
            journal.append("run-1", scope, seq, &entry).await.unwrap();
        }
        let other = JournalEntry::new(EntryKind::Random, b"r", vec![1, 2]);
        journal
            .append("run-2", ROOT_SCOPE, 0, &other)
            .await
            .unwrap();
        let root: Vec<Vec<u8>> = journal
            .entries("run-1", ROOT_SCOPE)
            .unwrap()
            .into_iter()
            .map(|e| e.payload)
            .collect();
        assert_eq!(root, [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        let entries = journal.entries("run-1", &child).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].fingerprint, fingerprint(b"child"));
        assert_eq!(entries[0].kind, EntryKind::Completion);
        assert_eq!(journal.entries("run-2", ROOT_SCOPE).unwrap(), [other]);
    }

    #[tokio::test]
    async fn finish_marks_the_run_and_can_drop_its_entries_only() {
        let (_dir, journal) = journal();
        for run in ["run-1", "run-10", "run-2"] {
            journal.start(record(run, 1)).await.unwrap();
            let entry = JournalEntry::new(EntryKind::Completion, b"q", b"a".to_vec());
            journal.append(run, ROOT_SCOPE, 0, &entry).await.unwrap();
            journal
                .append(run, &child_scope(ROOT_SCOPE, 0, 3), 0, &entry)
                .await
                .unwrap();
        }
        assert_eq!(journal.runs(true).unwrap().len(), 3);
        journal.finish("run-1", true).await.unwrap();
        journal.finish("run-2", false).await.unwrap();
        let running: Vec<String> = journal
            .runs(true)
            .unwrap()
            .into_iter()
            .map(|r| r.run)
            .collect();
        assert_eq!(running, ["run-10"]);
        assert!(journal.entries("run-1", ROOT_SCOPE).unwrap().is_empty());
        // A run whose id extends another's keeps its entries.
        assert_eq!(journal.entries("run-10", ROOT_SCOPE).unwrap().len(), 1);
        assert_eq!(journal.entries("run-2", ROOT_SCOPE).unwrap().len(), 1);
        assert_eq!(
            journal.run("run-2").unwrap().unwrap().status,
            JournalStatus::Finished
        );
    }

    #[tokio::test]
    async fn prune_deletes_stale_runs_with_their_entries() {
        let (_dir, journal) = journal();
        journal.start(record("old", 1)).await.unwrap();
        let entry = JournalEntry::new(EntryKind::Tools, b"", b"[]".to_vec());
        journal.append("old", ROOT_SCOPE, 0, &entry).await.unwrap();
        assert_eq!(journal.prune(Duration::from_secs(3600)).await.unwrap(), 0);
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(journal.prune(Duration::from_millis(1)).await.unwrap(), 1);
        assert!(journal.runs(false).unwrap().is_empty());
        assert!(journal.entries("old", ROOT_SCOPE).unwrap().is_empty());
    }

    #[test]
    fn corrupt_entries_are_named() {
        assert!(JournalEntry::decode(&[]).is_err());
        assert!(JournalEntry::decode(&[99; 40]).is_err());
        assert!(JournalEntry::decode(&[1; 10]).is_err());
        let entry = JournalEntry::new(EntryKind::Delegation, b"x", b"y".to_vec());
        assert_eq!(JournalEntry::decode(&entry.encode()).unwrap(), entry);
    }
}
