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
//! entry carries its kind, a fingerprint of the request it answers
//! (replay refuses a request whose fingerprint differs), and the result as
//! the caller encoded it.
//!
//! A run's record ([`JournalRun`]) says who it serves and whether it
//! finished: the runs a crash left unfinished are the ones still
//! [`JournalStatus::Running`].
//!
//! The journal is an append-only log of segment files beside the store
//! ([`log`]): an awaited append is written (and, with the store's default
//! sync, `fdatasync`ed in one batch with every other run's of its shard) before the
//! caller hears back. A run this process executes journals through its own
//! [`RunLog`], which frames its records into a buffer of its own and
//! writes them with its next awaited write. The log holds each run's
//! record too, so a crash leaves everything a resume needs in one place. A finished run is
//! dropped (or kept, with its entries, until pruned), and segments are
//! deleted once no run needs them ([`segments`]). The log is sharded (see
//! [`Journal`]): each of a run's records goes to the shard it began in.

mod log;
mod mapped;
#[cfg(target_os = "linux")]
mod ring;
#[cfg(not(target_os = "linux"))]
#[path = "ring_elsewhere.rs"]
mod ring;
mod run_log;
mod segments;

pub use run_log::{EntryAt, RunLog};

use super::{Store, StoreError, io, read_table};
use log::{Mark, Record, Shared};
use redb::{ReadableDatabase, TableDefinition};
use segments::Segments;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use xxhash_rust::xxh3::xxh3_128;

/// The journal's maps keyed by run id hash with foldhash, keyed per
/// process: every record of every run looks its run up in them (SipHash
/// was a visible share of a journaled turn), and a random key still keeps
/// callers from choosing colliding run ids.
pub(super) type RunHasher = foldhash::fast::RandomState;

/// A map keyed by run id. A run this process begins has its id allocated
/// once, as it begins, and shared by the maps it is entered in from then
/// on (a run read back from the log keeps the id it was read with).
pub(super) type RunMap<V> = HashMap<Arc<str>, V, RunHasher>;

/// A set of run ids.
pub(super) type RunSet = std::collections::HashSet<Arc<str>, RunHasher>;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The tables of the journal's first format (entries in redb), deleted
/// when a store that has them is opened.
const LEGACY_ENTRIES: TableDefinition<(&str, &str, u32), &[u8]> = TableDefinition::new("journal");
const LEGACY_RUNS: TableDefinition<&str, &[u8]> = TableDefinition::new("journal_runs");

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
    /// The fingerprint of the request it answers (in its run's
    /// [`JournalFormat`]).
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
}

/// SHA-256 of `request`.
pub fn fingerprint(request: &[u8]) -> [u8; 32] {
    Sha256::digest(request).into()
}

/// SHA-256 of `request`'s JSON encoding: the same digest as
/// `fingerprint(&serde_json::to_vec(request)?)` (of no bytes when it cannot
/// be encoded), encoded into a buffer each thread keeps instead of a new
/// one per request.
pub fn fingerprint_json<T: serde::Serialize + ?Sized>(request: &T) -> [u8; 32] {
    with_scratch(|buffer| {
        if serde_json::to_writer(&mut *buffer, request).is_err() {
            buffer.clear();
        }
        fingerprint(buffer)
    })
}

/// Run `work` on an empty buffer this thread keeps for encoding requests
/// (a fresh one when re-entered from a `Serialize` impl), instead of a new
/// one per request.
fn with_scratch<R>(work: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    /// Past this, the buffer is let go rather than kept for the thread.
    const KEEP: usize = 1 << 20;
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut buffer) => {
            buffer.clear();
            let result = work(&mut buffer);
            if buffer.capacity() > KEEP {
                *buffer = Vec::new();
            }
            result
        }
        Err(_) => work(&mut Vec::new()),
    })
}

/// SHA-256 of `request`'s compact binary encoding (postcard: strings as
/// their length and bytes, numbers as varints), fed to the hash as it is
/// encoded, a 512-byte chunk at a time. It identifies a request as surely
/// as the JSON digest does, at a fraction of the cost: nothing is escaped
/// and the encoding is never held whole.
/// A value postcard cannot encode (a map or sequence of unknown length)
/// falls back to [`fingerprint_json`], which is just as deterministic.
pub fn fingerprint_compact<T: serde::Serialize + ?Sized>(request: &T) -> [u8; 32] {
    match postcard::serialize_with_flavor(request, HashingFlavor::new(Sha256::new())) {
        Ok(hasher) => hasher.finalize().into(),
        Err(_) => fingerprint_json(request),
    }
}

/// XXH3-128 of `request`'s compact binary encoding (as
/// [`fingerprint_compact`] encodes it), in the first 16 bytes; the rest
/// are zero. A fingerprint only tells a resumed run's request from the
/// one its journal recorded (the component, its input or its
/// configuration changed): a strong 128-bit hash does that as surely as
/// SHA-256 at a small part of the cost, and a guest that made two
/// requests collide would only be handed again the result it was handed
/// before.
///
/// The request is encoded into a buffer each thread keeps and hashed in
/// one pass: no hash state or chunk is carried on the stack, which for an
/// architecture's import is the guest's fiber stack, whose untouched
/// pages fault in.
pub fn fingerprint_quick<T: serde::Serialize + ?Sized>(request: &T) -> [u8; 32] {
    with_scratch(|buffer| {
        if postcard::serialize_with_flavor(request, VecFlavor(buffer)).is_err() {
            buffer.clear();
            if serde_json::to_writer(&mut *buffer, request).is_err() {
                buffer.clear();
            }
        }
        fingerprint_quick_bytes(buffer)
    })
}

/// [`fingerprint_quick`] of raw bytes.
pub fn fingerprint_quick_bytes(request: &[u8]) -> [u8; 32] {
    let mut print = [0u8; 32];
    print[..16].copy_from_slice(&xxh3_128(request).to_le_bytes());
    print
}

/// Bytes a [`HashingFlavor`] gathers before it hands them to SHA-256.
const HASH_CHUNK: usize = 512;

/// A postcard output that hashes instead of storing. postcard emits a
/// request as many small pieces (each length and number a byte or two);
/// they are gathered into a chunk on the stack and hashed a chunk at a
/// time, which digests the same bytes as hashing each piece would, for a
/// fraction of the calls.
struct HashingFlavor {
    hasher: Sha256,
    chunk: [u8; HASH_CHUNK],
    filled: usize,
}

impl HashingFlavor {
    fn new(hasher: Sha256) -> Self {
        HashingFlavor {
            hasher,
            chunk: [0; HASH_CHUNK],
            filled: 0,
        }
    }

    /// Hash what the chunk holds and empty it.
    fn drain(&mut self) {
        self.hasher.update(&self.chunk[..self.filled]);
        self.filled = 0;
    }
}

impl postcard::ser_flavors::Flavor for HashingFlavor {
    type Output = Sha256;

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        if self.filled == HASH_CHUNK {
            self.drain();
        }
        self.chunk[self.filled] = byte;
        self.filled += 1;
        Ok(())
    }

    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        if self.filled + bytes.len() <= HASH_CHUNK {
            self.chunk[self.filled..self.filled + bytes.len()].copy_from_slice(bytes);
            self.filled += bytes.len();
        } else {
            // Larger than what is left: hash the chunk, then the bytes.
            self.drain();
            self.hasher.update(bytes);
        }
        Ok(())
    }

    fn finalize(mut self) -> postcard::Result<Sha256> {
        self.drain();
        Ok(self.hasher)
    }
}

/// How a journaled run's requests are fingerprinted and its results
/// encoded. A run keeps the format it started with, so a journal written by
/// an earlier Loom still resumes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JournalFormat {
    /// JSON: requests fingerprinted by [`fingerprint_json`], results
    /// stored as JSON. Runs journaled before the compact format existed
    /// (their records name no format).
    #[default]
    Json,
    /// postcard: requests fingerprinted by [`fingerprint_compact`], results
    /// stored in postcard's binary encoding: no string is escaped on the
    /// way in or parsed on the way out.
    Compact,
    /// As [`Self::Compact`], with requests fingerprinted by
    /// [`fingerprint_quick`] (XXH3-128 instead of SHA-256). Every run
    /// started now.
    Compact2,
}

impl JournalFormat {
    /// The fingerprint of `request` in this format.
    pub fn digest<T: serde::Serialize + ?Sized>(self, request: &T) -> [u8; 32] {
        match self {
            JournalFormat::Json => fingerprint_json(request),
            JournalFormat::Compact => fingerprint_compact(request),
            JournalFormat::Compact2 => fingerprint_quick(request),
        }
    }

    /// The fingerprint of a request identified by raw bytes in this
    /// format.
    pub fn digest_bytes(self, request: &[u8]) -> [u8; 32] {
        match self {
            JournalFormat::Json | JournalFormat::Compact => fingerprint(request),
            JournalFormat::Compact2 => fingerprint_quick_bytes(request),
        }
    }

    /// `value`, encoded in this format.
    ///
    /// # Errors
    ///
    /// What the encoder reports (a map or sequence of unknown length, in
    /// the compact format).
    pub fn encode<T: serde::Serialize + ?Sized>(self, value: &T) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        self.encode_into(value, &mut out)?;
        Ok(out)
    }

    /// Append `value`, encoded in this format, to `out` (which may hold
    /// other bytes before it; on failure some of the value may follow
    /// them).
    ///
    /// # Errors
    ///
    /// As [`Self::encode`].
    pub fn encode_into<T: serde::Serialize + ?Sized>(
        self,
        value: &T,
        out: &mut Vec<u8>,
    ) -> Result<(), String> {
        match self {
            JournalFormat::Json => serde_json::to_writer(out, value).map_err(|e| e.to_string()),
            JournalFormat::Compact | JournalFormat::Compact2 => {
                postcard::serialize_with_flavor(value, VecFlavor(out)).map_err(|e| e.to_string())
            }
        }
    }

    /// Decode a value this format encoded.
    ///
    /// # Errors
    ///
    /// What the decoder reports when `bytes` are not such a value.
    pub fn decode<T: serde::de::DeserializeOwned>(self, bytes: &[u8]) -> Result<T, String> {
        match self {
            JournalFormat::Json => serde_json::from_slice(bytes).map_err(|e| e.to_string()),
            JournalFormat::Compact | JournalFormat::Compact2 => {
                postcard::from_bytes(bytes).map_err(|e| e.to_string())
            }
        }
    }
}

/// A postcard output appending to a vector.
pub(crate) struct VecFlavor<'a>(pub(crate) &'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for VecFlavor<'_> {
    type Output = ();

    fn try_push(&mut self, byte: u8) -> postcard::Result<()> {
        self.0.push(byte);
        Ok(())
    }

    fn try_extend(&mut self, bytes: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
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
    /// How its requests are fingerprinted and its results encoded
    /// (records written before the field existed read as
    /// [`JournalFormat::Json`]).
    #[serde(default)]
    pub format: JournalFormat,
    /// Whether it finished.
    pub status: JournalStatus,
    /// When it started, in milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// When its record last changed, in milliseconds since the Unix epoch.
    pub updated_ms: u64,
}

impl JournalRun {
    /// What the run began with, borrowed: the record without its status
    /// and times (what [`Journal::begin_resumed`] writes again).
    pub fn start(&self) -> RunStart<'_> {
        RunStart {
            run: &self.run,
            tenant: &self.tenant,
            user: self.user.as_deref(),
            session: self.session.as_deref(),
            agent: self.agent.as_deref(),
            architecture: &self.architecture,
            prompt: &self.prompt,
            output_schema: self.output_schema.as_ref(),
            metadata: &self.metadata,
            component: &self.component,
            origin: &self.origin,
            format: self.format,
        }
    }
}

/// Who a run serves and what it runs, as [`Journal::begin`] takes it:
/// [`JournalRun`] without its status and times (the journal sets them),
/// every field borrowed from the caller, which need not copy its strings
/// into a record of their own.
#[derive(Debug, Clone, Copy)]
pub struct RunStart<'a> {
    /// The run id.
    pub run: &'a str,
    /// Its tenant.
    pub tenant: &'a str,
    /// Its user (none when anonymous).
    pub user: Option<&'a str>,
    /// Its session, if any.
    pub session: Option<&'a str>,
    /// The named agent it runs (`[agents.NAME]`), if any.
    pub agent: Option<&'a str>,
    /// The architecture it runs.
    pub architecture: &'a str,
    /// The prompt.
    pub prompt: &'a str,
    /// The JSON Schema the answer has to match, if any.
    pub output_schema: Option<&'a serde_json::Value>,
    /// The run's metadata.
    pub metadata: &'a [(String, String)],
    /// SHA-256 (hex) of the architecture component it runs.
    pub component: &'a str,
    /// What the caller keeps with the run to rebuild its agent on resume.
    pub origin: &'a serde_json::Value,
    /// How its requests are fingerprinted and its results encoded.
    pub format: JournalFormat,
}

/// A run as a shard of the journal keeps it in memory: the body of its
/// start record as written (decoded into a [`JournalRun`] only when the
/// run is listed), its status and times, and whether this process
/// executes it.
///
/// A run's begin copies its start record's body here, once, where a
/// [`JournalRun`] would take a string of its own per field, allocated as
/// the run begins and freed, cold, as it ends. And the mark that says a
/// run is executed here is a field of the entry its begin and end update
/// anyway, under the shard's lock they take anyway: no set of its own,
/// no lock of its own passed between the cores twice per run.
#[derive(Debug)]
pub(super) struct RunEntry {
    /// The body of a compact start record of the run (see
    /// [`log::start_body`]); its status and times are the fields below.
    start: Box<[u8]>,
    /// Whether it finished.
    pub(super) status: JournalStatus,
    /// When it started, in milliseconds since the Unix epoch.
    pub(super) started_ms: u64,
    /// When its record last changed, in milliseconds since the Unix epoch.
    pub(super) updated_ms: u64,
    /// This process executes it: from its begin until its end is written
    /// (see [`RunLog`]). A run live here is never listed as interrupted,
    /// nor pruned, nor begun again.
    pub(super) live: bool,
}

impl RunEntry {
    /// The entry of `run` as a record read back from the log has it
    /// (not live).
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] when a JSON value of the record cannot be
    /// encoded.
    fn of_record(run: &JournalRun) -> Result<Self, StoreError> {
        Ok(RunEntry {
            start: log::start_body(&run.start())?.into_boxed_slice(),
            status: run.status,
            started_ms: run.started_ms,
            updated_ms: run.updated_ms,
            live: false,
        })
    }

    /// Whether a prune with `cutoff` drops it: nobody executes it here
    /// and its record last changed before then.
    fn prunable(&self, cutoff: u64) -> bool {
        self.updated_ms < cutoff && !self.live
    }

    /// The run's record, decoded.
    ///
    /// # Errors
    ///
    /// [`StoreError::Corrupt`] when the body does not decode (never, for
    /// a body the journal encoded itself).
    fn record(&self) -> Result<JournalRun, StoreError> {
        let mut run = log::decode_start_body(&self.start)
            .map_err(|e| StoreError::Corrupt(format!("a journal run record in memory: {e}")))?;
        run.status = self.status;
        run.started_ms = self.started_ms;
        run.updated_ms = self.updated_ms;
        Ok(run)
    }
}

/// Milliseconds since the Unix epoch, now.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// The journal of every run: its log beside the host's store, in shards.
///
/// A shard is a log of its own (its segments, its accounting, its writer
/// thread), and a run's records all go to one: the shard of the thread
/// that began it (a resumed run goes back to the shard holding it). With
/// one shard, the threads that run agents took turns at the log's locks,
/// and each write moved the locks' and the log's state between the cores'
/// caches; with a shard per core each thread mostly writes to its own.
/// Runs written in place (the store syncs on an interval) are spread over
/// as many shards as there are cores (at most 4); with a sync at
/// every write, new runs all go to the first shard, so that one
/// `fdatasync` serves every run of a batch. Every shard found on disk is
/// read, whatever this process writes to.
#[derive(Clone)]
pub struct Journal {
    /// The shards; the first's directory is the journal's own, the others'
    /// are `shard-N` inside it.
    shards: Arc<[Shard]>,
    /// New runs go to the first `writing` shards.
    writing: usize,
}

/// One shard of the journal: its log and the log's writer thread.
struct Shard {
    log: Arc<Shared>,
    /// Stops the log's writer when the journal's last handle goes.
    _writer: Writer,
}

/// The log's writer thread; dropping it writes what is queued and stops it.
struct Writer {
    log: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.log.close();
        if let Some(thread) = self.thread.take()
            && thread.thread().id() != std::thread::current().id()
        {
            let _ = thread.join();
        }
    }
}

/// The slot of the calling thread: threads take slots in turn the first
/// time they begin a run, and a run goes to the shard its slot names.
fn thread_slot() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    SLOT.with(|slot| *slot)
}

/// The directory of shard `index` of the journal in `dir`.
fn shard_dir(dir: &std::path::Path, index: usize) -> std::path::PathBuf {
    if index == 0 {
        dir.to_owned()
    } else {
        dir.join(format!("shard-{index}"))
    }
}

/// How many shards the journal in `dir` has on disk (at least one): the
/// highest `shard-N` directory found, plus one. Only names [`shard_dir`]
/// makes count (`shard-01` is not shard 1).
///
/// # Errors
///
/// [`StoreError::Io`] when the directory cannot be listed: a shard
/// skipped would leave its runs unlisted, unresumable and unpruned.
fn shards_on_disk(dir: &std::path::Path) -> Result<usize, StoreError> {
    let unreadable = |e: std::io::Error| {
        StoreError::Io(format!("cannot read the journal {}: {e}", dir.display()))
    };
    let mut count = 1;
    for entry in std::fs::read_dir(dir).map_err(unreadable)? {
        let entry = entry.map_err(unreadable)?;
        let name = entry.file_name();
        let index = name
            .to_str()
            .and_then(|name| name.strip_prefix("shard-"))
            .and_then(|n| n.parse::<usize>().ok().filter(|i| i.to_string() == n));
        if let Some(index) = index
            && (1..MAX_SHARDS).contains(&index)
            && entry.path().is_dir()
        {
            count = count.max(index + 1);
        }
    }
    Ok(count)
}

/// The most shards a journal has (directories past it are not read).
const MAX_SHARDS: usize = 64;

/// The most shards runs are spread over by default. Each shard keeps up
/// to three 4 MiB files reserved on disk (its active segment, the next
/// one made ready, a spent one kept for reuse) and, written in place, a
/// 2 MiB staging ring (made when its first segment opens), and past a few
/// shards the threads that share one rarely meet at its locks.
const WRITING_SHARDS_MAX: usize = 4;

impl Journal {
    /// Open the journal of `store`: its log in the directory beside the
    /// store's file (`loom.redb` → `loom.journal/`), replayed to find the
    /// runs a crash left unfinished. The store's file can be open in one
    /// process at a time, so the runs a journal knows to be live are all
    /// the live runs of that store: open the journal once per store.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the log's directory cannot be made or read, or
    /// its writer thread cannot start.
    pub fn open(store: Arc<Store>) -> Result<Self, StoreError> {
        Self::open_with_shards(store, None)
    }

    /// [`Journal::open`], spreading runs written in place over `writing`
    /// shards (`None`: one per core, at most 4).
    ///
    /// # Errors
    ///
    /// As [`Journal::open`].
    pub fn open_with_shards(store: Arc<Store>, writing: Option<usize>) -> Result<Self, StoreError> {
        let dir = store.path().with_extension("journal");
        std::fs::create_dir_all(&dir).map_err(|e| {
            StoreError::Io(format!("cannot create the journal {}: {e}", dir.display()))
        })?;
        drop_legacy_tables(&store)?;
        let writing = if store.sync_mode() == crate::store::StoreSync::Always {
            1
        } else {
            writing.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, |n| n.get().min(WRITING_SHARDS_MAX))
            })
        }
        .clamp(1, MAX_SHARDS);
        let count = writing.max(shards_on_disk(&dir)?);
        let shards = (0..count)
            .map(|index| open_shard(&shard_dir(&dir, index), store.sync_mode(), index == 0))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Journal {
            shards: shards.into(),
            writing,
        })
    }

    /// The log new runs begun on this thread go to.
    fn writing_log(&self) -> &Arc<Shared> {
        let index = if self.writing == 1 {
            0
        } else {
            thread_slot() % self.writing
        };
        &self.shards[index].log
    }

    /// The log holding `run`'s record, if any shard does.
    fn log_of(&self, run: &str) -> Option<&Arc<Shared>> {
        self.shards
            .iter()
            .find(|shard| Self::holds(shard, run))
            .map(|shard| &shard.log)
    }

    /// Whether `shard` holds `run`'s record.
    fn holds(shard: &Shard, run: &str) -> bool {
        shard.log.state().runs.contains_key(run)
    }

    /// The log `run`'s records go to: the one holding its record, else
    /// this thread's.
    fn log_for(&self, run: &str) -> &Arc<Shared> {
        self.log_of(run).unwrap_or_else(|| self.writing_log())
    }

    /// The runs a crash (or a cancellation) left unfinished: started, not
    /// finished, and not being executed by this process. Newest first.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store cannot be read or a record is corrupt.
    pub fn interrupted(&self) -> Result<Vec<JournalRun>, StoreError> {
        self.listed(|run| run.status == JournalStatus::Running && !run.live)
    }

    /// The runs of every shard that `keep` keeps, decoded, newest first.
    fn listed(&self, keep: impl Fn(&RunEntry) -> bool) -> Result<Vec<JournalRun>, StoreError> {
        let mut runs: Vec<JournalRun> = Vec::new();
        for shard in self.shards.iter() {
            let state = shard.log.state();
            for run in state.runs.values().filter(|run| keep(run)) {
                runs.push(run.record()?);
            }
        }
        runs.sort_by_key(|run| std::cmp::Reverse(run.started_ms));
        Ok(runs)
    }

    /// Whether this process executes `run` (for tests).
    #[cfg(test)]
    pub(super) fn is_live(&self, run: &str) -> bool {
        self.shards
            .iter()
            .any(|shard| shard.log.state().runs.get(run).is_some_and(|run| run.live))
    }

    /// Record that `run` started (or restarted, on resume: its status goes
    /// back to running and its entries stay); resolves once written.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the write fails.
    pub async fn start(&self, run: JournalRun) -> Result<(), StoreError> {
        let now = now_ms();
        let record = log::start_record(&run.start(), run.started_ms, now, None)?;
        let mut entry = RunEntry {
            start: record.body().into(),
            status: JournalStatus::Running,
            started_ms: run.started_ms,
            updated_ms: now,
            live: false,
        };
        let id: Arc<str> = Arc::from(run.run.as_str());
        self.log_for(&id)
            .write(record.bytes(), Mark::Pin(id.clone()), move |runs| {
                // A run executing here stays marked so.
                entry.live = runs.get(&id).is_some_and(|old| old.live);
                runs.insert(id, entry);
            })
            .await
    }

    /// Record `entry` at (`run`, `scope`, `seq`); resolves once written.
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
        let record = entry_record(run, scope, seq, entry)?;
        self.log_for(run)
            .write(&record, Mark::Pin(Arc::from(run)), |_| {})
            .await
    }

    /// Queue `entry` at (`run`, `scope`, `seq`) without waiting: it is
    /// written, in order, with the next write anyone awaits (the next
    /// [`Self::append`] of the run, say, or its end). A failed write is
    /// logged.
    pub fn append_queued(&self, run: &str, scope: &str, seq: u32, entry: &JournalEntry) {
        match entry_record(run, scope, seq, entry) {
            Ok(record) => {
                self.log_for(run)
                    .push(&record, Mark::Pin(Arc::from(run)), |_| {}, None);
            }
            Err(error) => tracing::warn!(run, scope, seq, %error, "a journal entry was dropped"),
        }
    }

    /// The entries of `run` in `scope`, in sequence order.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the log cannot be read.
    pub fn entries(&self, run: &str, scope: &str) -> Result<Vec<JournalEntry>, StoreError> {
        Ok(self
            .all_entries(run)?
            .into_iter()
            .filter(|(s, _, _)| s == scope)
            .map(|(_, _, entry)| entry)
            .collect())
    }

    /// Every entry of `run`, all scopes: (scope, sequence, entry), sorted
    /// by scope then sequence.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the log cannot be read.
    pub fn all_entries(&self, run: &str) -> Result<Vec<(String, u32, JournalEntry)>, StoreError> {
        // A run's records are in the shard holding its record (entries
        // with no record, which only the by-id calls make, may be in any).
        let shards: Vec<&Shard> = match self.shards.iter().find(|s| Self::holds(s, run)) {
            Some(shard) => vec![shard],
            None => self.shards.iter().collect(),
        };
        let found = shards.into_iter().flat_map(|shard| {
            shard.log.read_run(run, |record| match record {
                Record::Entry {
                    scope, seq, entry, ..
                } => Some(((scope.to_owned(), seq), entry)),
                _ => None,
            })
        });
        // A step recorded twice (the same result, written again by a
        // resumed run) counts once: the latest.
        let sorted: BTreeMap<(String, u32), JournalEntry> = found.collect();
        Ok(sorted
            .into_iter()
            .map(|((scope, seq), entry)| (scope, seq, entry))
            .collect())
    }

    /// Record that `run` finished: with `drop_entries` it is dropped (its
    /// record and entries are void, and their segments deleted once no
    /// other run needs them), else kept until pruned. Resolves once
    /// written.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the write fails.
    pub async fn finish(&self, run: &str, drop_entries: bool) -> Result<(), StoreError> {
        let log = self.log_for(run);
        push_finish(log, run, drop_entries);
        log.flush().await
    }

    /// Every journaled run (unfinished, or finished and kept), optionally
    /// only those still running (the ones a crash left unfinished, when no
    /// run is live), newest first.
    ///
    /// # Errors
    ///
    /// [`StoreError::Corrupt`] when a run's record does not decode.
    pub fn runs(&self, only_running: bool) -> Result<Vec<JournalRun>, StoreError> {
        self.listed(|run| !only_running || run.status == JournalStatus::Running)
    }

    /// One journaled run.
    ///
    /// # Errors
    ///
    /// [`StoreError::Corrupt`] when its record does not decode.
    pub fn run(&self, run: &str) -> Result<Option<JournalRun>, StoreError> {
        self.shards
            .iter()
            .find_map(|shard| shard.log.state().runs.get(run).map(RunEntry::record))
            .transpose()
    }

    /// Delete every run (its record and entries) whose record last changed
    /// more than `older_than` ago, finished or not; the number deleted.
    /// Runs executing now are kept. Staging rings a crash left that could
    /// not be copied, set aside before then, are deleted too.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store cannot be read or written.
    pub async fn prune(&self, older_than: Duration) -> Result<usize, StoreError> {
        let cutoff = now_ms().saturating_sub(older_than.as_millis() as u64);
        let mut pruned = 0;
        for shard in self.shards.iter() {
            // Runs executing now are kept.
            let stale: Vec<Arc<str>> = shard
                .log
                .state()
                .runs
                .iter()
                .filter(|(_, run)| run.prunable(cutoff))
                .map(|(id, _)| id.clone())
                .collect();
            // A run resumed since it was seen is live now, and kept: the
            // check is made again where the drop is queued.
            let dropped = stale
                .iter()
                .filter(|run| push_drop_idle(&shard.log, run, cutoff))
                .count();
            if dropped > 0 {
                shard.log.flush().await?;
            }
            pruned += dropped;
            let rings = ring::prune_unrecovered(shard.log.dir(), cutoff);
            if rings > 0 {
                tracing::info!(
                    rings,
                    "deleted journal staging rings set aside before the cutoff"
                );
            }
        }
        Ok(pruned)
    }

    /// How many segment files the log has (for tests of retention).
    pub fn segment_files(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.log.state().segments.count())
            .sum()
    }

    /// Resolves once everything queued before the call is written.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the write fails.
    pub async fn flush(&self) -> Result<(), StoreError> {
        // Every shard is flushed, a failing one or not; the first failure
        // is reported.
        let mut result = Ok(());
        for shard in self.shards.iter() {
            let flushed = shard.log.flush().await;
            if result.is_ok() {
                result = flushed;
            }
        }
        result
    }
}

/// Queue `run`'s finish in `log`.
fn push_finish(log: &Shared, run: &str, drop_entries: bool) {
    let now = now_ms();
    let mark = if drop_entries {
        Mark::Drop(Arc::from(run))
    } else {
        Mark::Pin(Arc::from(run))
    };
    log.push(
        &log::finish_record(run, drop_entries, now),
        mark,
        |runs| {
            if drop_entries {
                runs.remove(run);
            } else if let Some(record) = runs.get_mut(run) {
                record.status = JournalStatus::Finished;
                record.updated_ms = now;
            }
        },
        None,
    );
}

/// Void `run`'s records in `log` when, at that moment, nobody executes
/// it and it last changed before `cutoff`; whether it was voided.
fn push_drop_idle(log: &Shared, run: &str, cutoff: u64) -> bool {
    log.push_if(&log::drop_record(run), Mark::Drop(Arc::from(run)), |runs| {
        let idle = runs.get(run).is_some_and(|entry| entry.prunable(cutoff));
        if idle {
            runs.remove(run);
        }
        idle
    })
}

/// The framed record of `entry` at (`run`, `scope`, `seq`).
///
/// # Errors
///
/// [`StoreError::Io`] when the payload is larger than [`MAX_PAYLOAD_BYTES`].
fn entry_record(
    run: &str,
    scope: &str,
    seq: u32,
    entry: &JournalEntry,
) -> Result<Vec<u8>, StoreError> {
    if entry.payload.len() > MAX_PAYLOAD_BYTES {
        return Err(StoreError::Io(format!(
            "a journal entry of {} bytes; at most {MAX_PAYLOAD_BYTES} are kept",
            entry.payload.len()
        )));
    }
    log::entry_record(run, scope, seq, entry)
}

/// Apply one record read back from segment `id` to the runs and the
/// segment accounting.
fn replay(record: Record<'_>, id: u64, runs: &mut RunMap<RunEntry>, segments: &mut Segments) {
    match record {
        Record::Start(run) => {
            let entry = match RunEntry::of_record(&run) {
                Ok(entry) => entry,
                Err(error) => {
                    tracing::warn!(segment = id, %error, "a journal run record is unusable; skipped");
                    return;
                }
            };
            let key: Arc<str> = Arc::from(run.run.as_str());
            segments.record(&key, id);
            runs.insert(key, entry);
        }
        // An entry of a run with no start is void (its run was dropped).
        Record::Entry { run, .. } => {
            if let Some((key, _)) = runs.get_key_value(run) {
                segments.record(key, id);
            }
        }
        Record::Finish {
            run, drop: true, ..
        }
        | Record::Drop { run } => {
            let key = match runs.remove_entry(run) {
                Some((key, _)) => key,
                None => Arc::from(run),
            };
            segments.drop_run(&key, id);
        }
        // The run's records that follow pin the segment.
        Record::Bind { .. } => {}
        Record::Finish {
            run, updated_ms, ..
        } => {
            if let Some(record) = runs.get_mut(run) {
                record.status = JournalStatus::Finished;
                record.updated_ms = updated_ms;
            }
            if let Some((key, _)) = runs.get_key_value(run) {
                segments.record(key, id);
            }
        }
    }
}

/// Open the journal shard in `dir`: its segments replayed to find its
/// runs, its spare and prepared files taken up, its writer thread started.
/// With in-place appends, the `first` shard's first segment file is made
/// ready before this returns; the other shards' writer threads make theirs
/// ready meanwhile (each costs a sync, which a process's start need not
/// wait for several times over).
fn open_shard(
    dir: &std::path::Path,
    sync: crate::store::StoreSync,
    first: bool,
) -> Result<Shard, StoreError> {
    if !dir.is_dir() {
        std::fs::create_dir_all(dir).map_err(|e| {
            StoreError::Io(format!("cannot create the journal {}: {e}", dir.display()))
        })?;
        // The new directory's entry is durable before any segment in it.
        if let Some(parent) = dir.parent() {
            std::fs::File::open(parent)
                .and_then(|parent| parent.sync_all())
                .map_err(|e| {
                    StoreError::Io(format!("cannot sync the journal {}: {e}", parent.display()))
                })?;
        }
    }
    // Appends a crash of the last process left staged go to their
    // segment before it is read.
    ring::recover(dir)?;
    let ids = log::segment_ids(dir)?;
    let mut runs: RunMap<RunEntry> = RunMap::default();
    let mut segments = Segments::default();
    for &id in &ids {
        let Some((framing, bytes)) = log::read_segment(dir, id, true) else {
            continue;
        };
        segments.add(id);
        let mut binds = log::Binds::default();
        for body in log::bodies(&bytes, framing).0 {
            match log::decode(body, &mut binds) {
                Ok(record) => replay(record, id, &mut runs, &mut segments),
                Err(error) => {
                    tracing::warn!(segment = id, %error, "a journal record is corrupt; skipped");
                }
            }
        }
    }
    let active = ids.last().map_or(0, |last| last + 1);
    // A spent segment kept for reuse by the last process (never one
    // without generations).
    let spare_path = dir.join(log::SPARE_FILE);
    let mut spare = log::next_generation(&spare_path);
    if spare.is_none() && spare_path.exists() {
        let _ = std::fs::remove_file(&spare_path);
    }
    // A file the last process made ready for its next segment and
    // never used: the spare, if there is none.
    let prepared = dir.join(log::PREPARED_FILE);
    if prepared.exists() {
        match log::next_generation(&prepared) {
            Some(generation)
                if spare.is_none() && std::fs::rename(&prepared, &spare_path).is_ok() =>
            {
                spare = Some(generation);
            }
            _ => {
                let _ = std::fs::remove_file(&prepared);
            }
        }
    }
    let log = Shared::new(dir.to_owned(), sync, runs, segments, active, spare);
    // With in-place appends, the first segment's file is made ready
    // (and warmed) ahead of the first write rather than on its path.
    if log.writes_in_place() && first {
        log::prepare_next(&log);
    }
    let thread = std::thread::Builder::new()
        .name("loom-journal".into())
        .spawn({
            let log = log.clone();
            move || log::write_loop(&log)
        })
        .map_err(|e| StoreError::Io(format!("cannot start the journal writer: {e}")))?;
    if log.writes_in_place() && !first {
        log.ask_to_prepare();
    }
    Ok(Shard {
        log: log.clone(),
        _writer: Writer {
            log,
            thread: Some(thread),
        },
    })
}

/// Delete the tables of the journal's first format, if the store has them.
fn drop_legacy_tables(store: &Store) -> Result<(), StoreError> {
    let legacy = {
        let txn = store.db().begin_read().map_err(io)?;
        read_table(&txn, LEGACY_RUNS)?.is_some() || read_table(&txn, LEGACY_ENTRIES)?.is_some()
    };
    if legacy {
        tracing::info!("dropping the run journal of an earlier format");
        let txn = store.db().begin_write().map_err(io)?;
        txn.delete_table(LEGACY_ENTRIES).map_err(io)?;
        txn.delete_table(LEGACY_RUNS).map_err(io)?;
        txn.commit().map_err(io)?;
    }
    Ok(())
}

/// A run's record for tests: run `run` of user `ann` of tenant `acme`,
/// prompt `hi` to `react`, in `format`, `status`, started at `started_ms`.
#[cfg(test)]
pub(crate) fn test_run(
    run: &str,
    format: JournalFormat,
    status: JournalStatus,
    started_ms: u64,
) -> JournalRun {
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
        format,
        status,
        started_ms,
        updated_ms: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal() -> (tempfile::TempDir, Journal) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("loom.redb")).unwrap();
        (dir, Journal::open(store).unwrap())
    }

    fn record(run: &str, started_ms: u64) -> JournalRun {
        test_run(
            run,
            JournalFormat::Compact,
            JournalStatus::Finished,
            started_ms,
        )
    }

    /// Wait (a bounded while) until `run` is no longer live: written by
    /// the writer thread, a run's end unmarks it once written.
    async fn until_not_live(journal: &Journal, run: &str) {
        for _ in 0..500 {
            if !journal.is_live(run) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("{run} still live");
    }

    /// A run is live from its begin until its end is written, in either
    /// mode of writing: never listed as interrupted, pruned or begun again
    /// meanwhile. It starts when it is begun, and a resumed run keeps
    /// that time.
    #[tokio::test]
    async fn a_run_is_live_from_its_begin_until_its_end_is_written() {
        for dir in both_modes() {
            let journal = open_at(dir.path());
            let before = now_ms();
            let begun = record("begun", 1);
            let log = journal.begin(&begun.start()).unwrap();
            log.flush().await.unwrap();
            assert!(journal.is_live("begun"));
            assert!(journal.interrupted().unwrap().is_empty());
            let listed = journal.run("begun").unwrap().expect("listed");
            assert_eq!(listed.status, JournalStatus::Running);
            assert!(listed.started_ms >= before, "started when begun");
            assert!(matches!(
                journal.begin(&begun.start()),
                Err(StoreError::Live(run)) if run == "begun"
            ));
            assert!(matches!(
                journal.begin_resumed(&listed),
                Err(StoreError::Live(run)) if run == "begun"
            ));
            // Stale by its age, but live: kept.
            tokio::time::sleep(Duration::from_millis(5)).await;
            assert_eq!(journal.prune(Duration::ZERO).await.unwrap(), 0);
            // Dropped unfinished: interrupted, as it was.
            drop(log);
            until_not_live(&journal, "begun").await;
            let interrupted = journal.interrupted().unwrap();
            assert_eq!(interrupted, vec![listed.clone()]);
            // Resumed: live again, started when it first was; finished
            // and kept, no longer live.
            let log = journal.begin_resumed(&interrupted[0]).unwrap();
            assert!(journal.is_live("begun"));
            assert!(journal.interrupted().unwrap().is_empty());
            log.finish(false);
            until_not_live(&journal, "begun").await;
            journal.flush().await.unwrap();
            let finished = journal.run("begun").unwrap().expect("kept");
            assert_eq!(finished.status, JournalStatus::Finished);
            assert_eq!(finished.started_ms, listed.started_ms);
            assert_eq!(finished.prompt, "hi");
            // Ended, it may be begun again; dropped, it is gone.
            let log = journal.begin_resumed(&finished).unwrap();
            log.finish(true);
            journal.flush().await.unwrap();
            until_not_live(&journal, "begun").await;
            assert!(journal.run("begun").unwrap().is_none());
            // Reopened, nothing is live and nothing of the run is left.
            drop(journal);
            let journal = open_at(dir.path());
            assert!(journal.runs(false).unwrap().is_empty());
        }
    }

    #[test]
    fn a_json_fingerprint_is_the_digest_of_the_encoding() {
        let request = serde_json::json!({"messages": ["a", "b"], "n": 3});
        let encoded = serde_json::to_vec(&request).expect("json");
        assert_eq!(fingerprint_json(&request), fingerprint(&encoded));
        // The thread's buffer is reused: a shorter request after a longer one.
        assert_eq!(fingerprint_json(&"x"), fingerprint(b"\"x\""));
        let large = "y".repeat(2 << 20);
        assert_eq!(
            fingerprint_json(&large),
            fingerprint(&serde_json::to_vec(&large).expect("json"))
        );
        assert_eq!(fingerprint_json(&1u8), fingerprint(b"1"));
    }

    #[test]
    fn a_compact_fingerprint_is_the_digest_of_the_postcard_encoding() {
        let request = (vec!["ab".to_owned(), "c".to_owned()], Some(3u32), 0.5f32);
        let mut buffer = [0u8; 64];
        let encoded = postcard::to_slice(&request, &mut buffer).expect("postcard");
        assert_eq!(fingerprint_compact(&request), fingerprint(encoded));
        // Strings carry their length: moving a byte across a boundary changes it.
        let moved = (vec!["a".to_owned(), "bc".to_owned()], Some(3u32), 0.5f32);
        assert_ne!(fingerprint_compact(&request), fingerprint_compact(&moved));
        // A JSON value (a map of known length) encodes too.
        let value = serde_json::json!({"messages": ["a", "b"], "n": 3});
        assert_ne!(fingerprint_compact(&value), fingerprint_json(&value));
        assert_eq!(
            fingerprint_compact(&value),
            fingerprint_compact(&value.clone())
        );
        // Pieces are hashed a chunk at a time: a request of many small
        // pieces and long strings, crossing the chunk many times over,
        // digests exactly its encoding.
        let long: Vec<(String, u64)> = (0..2000u64)
            .map(|i| ("x".repeat((i % 700) as usize), i * 7919))
            .collect();
        let mut buffer = vec![0u8; 1 << 20];
        let encoded = postcard::to_slice(&long, &mut buffer).expect("postcard");
        assert!(encoded.len() > 100 * HASH_CHUNK);
        assert_eq!(fingerprint_compact(&long), fingerprint(encoded));
    }

    #[test]
    fn a_quick_fingerprint_is_xxh3_128_of_the_postcard_encoding() {
        let request = (vec!["ab".to_owned(), "c".to_owned()], Some(3u32), 0.5f32);
        let mut buffer = [0u8; 64];
        let encoded = postcard::to_slice(&request, &mut buffer).expect("postcard");
        let print = fingerprint_quick(&request);
        assert_eq!(
            print[..16],
            xxhash_rust::xxh3::xxh3_128(encoded).to_le_bytes()
        );
        assert_eq!(print[16..], [0; 16]);
        assert_eq!(print, fingerprint_quick_bytes(encoded));
        assert_eq!(JournalFormat::Compact2.digest(&request), print);
        assert_eq!(JournalFormat::Compact2.digest_bytes(encoded), print);
        // The earlier formats keep SHA-256, so their runs still resume.
        assert_eq!(
            JournalFormat::Compact.digest_bytes(encoded),
            fingerprint(encoded)
        );
        let moved = (vec!["a".to_owned(), "bc".to_owned()], Some(3u32), 0.5f32);
        assert_ne!(print, fingerprint_quick(&moved));
        // Across many chunks, still exactly the encoding's hash.
        let long: Vec<(String, u64)> = (0..2000u64)
            .map(|i| ("x".repeat((i % 700) as usize), i * 7919))
            .collect();
        let mut buffer = vec![0u8; 1 << 20];
        let encoded = postcard::to_slice(&long, &mut buffer).expect("postcard");
        assert_eq!(fingerprint_quick(&long), fingerprint_quick_bytes(encoded));
        // The format's name in a run's record.
        assert_eq!(
            serde_json::to_string(&JournalFormat::Compact2).unwrap(),
            "\"compact2\""
        );
    }

    #[test]
    fn a_run_recorded_before_journal_formats_reads_as_json() {
        let mut written = serde_json::to_value(record("r", 1)).expect("json");
        written.as_object_mut().expect("an object").remove("format");
        let read: JournalRun = serde_json::from_value(written).expect("a run record");
        assert_eq!(read.format, JournalFormat::Json);
        let request = ("q", 1u32);
        assert_eq!(
            JournalFormat::Json.digest(&request),
            fingerprint_json(&request)
        );
        assert_eq!(
            JournalFormat::Compact.digest(&request),
            fingerprint_compact(&request)
        );
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
        let root = root_payloads(&journal, "run-1");
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

    #[tokio::test]
    async fn a_run_made_live_after_a_prune_saw_it_is_kept() {
        let (_dir, journal) = journal();
        journal.start(record("old", 1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
        // The prune saw "old" idle; a resume then marks it live (and a
        // restart record for it keeps the mark) before the drop is queued.
        let log = journal.log_for("old").clone();
        if let Some(entry) = log.state().runs.get_mut("old") {
            entry.live = true;
        }
        journal.start(record("old", 1)).await.unwrap();
        assert!(journal.is_live("old"));
        assert!(!push_drop_idle(&log, "old", now_ms() + 1));
        assert!(journal.run("old").unwrap().is_some());
        // Once nobody executes it, it goes.
        if let Some(entry) = log.state().runs.get_mut("old") {
            entry.live = false;
        }
        assert!(push_drop_idle(&log, "old", now_ms() + 1));
        journal.flush().await.unwrap();
        assert!(journal.run("old").unwrap().is_none());
        // A resume that read it before the drop does not start it afresh.
        assert!(matches!(
            journal.begin_resumed(&record("old", 1)),
            Err(StoreError::Gone(run)) if run == "old"
        ));
    }

    fn open_at(dir: &std::path::Path) -> Journal {
        let sync = if dir.join("interval").exists() {
            crate::store::StoreSync::Interval(50)
        } else {
            crate::store::StoreSync::Always
        };
        let store = Store::open_with(&dir.join("loom.redb"), sync).unwrap();
        Journal::open_with_shards(store, Some(1)).unwrap()
    }

    /// Temporary directories for a test: one whose journal syncs every
    /// write (written by the writer thread), one whose store syncs on an
    /// interval (written in place by the caller).
    fn both_modes() -> [tempfile::TempDir; 2] {
        [tempfile::tempdir().unwrap(), interval_dir()]
    }

    /// A temporary directory whose store syncs on an interval (its
    /// journal written in place), for [`open_at`].
    fn interval_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("interval"), "").unwrap();
        dir
    }

    /// The root scope's entries of `run`, each a JSON-encoded text.
    fn root_texts(journal: &Journal, run: &str) -> Vec<String> {
        root_payloads(journal, run)
            .iter()
            .map(|payload| JournalFormat::Json.decode(payload).unwrap())
            .collect()
    }

    fn root_payloads(journal: &Journal, run: &str) -> Vec<Vec<u8>> {
        journal
            .entries(run, ROOT_SCOPE)
            .unwrap()
            .into_iter()
            .map(|e| e.payload)
            .collect()
    }

    fn interrupted_ids(journal: &Journal) -> Vec<String> {
        journal
            .interrupted()
            .unwrap()
            .into_iter()
            .map(|r| r.run)
            .collect()
    }

    fn entry(text: &str) -> JournalEntry {
        JournalEntry::new(EntryKind::Completion, text.as_bytes(), text.into())
    }

    fn log_dir(dir: &std::path::Path) -> std::path::PathBuf {
        dir.join("loom.journal")
    }

    #[tokio::test]
    async fn a_reopened_journal_finds_what_a_crash_left() {
        for dir in both_modes() {
            reopened_journal_finds_what_a_crash_left(&dir).await;
        }
    }

    async fn reopened_journal_finds_what_a_crash_left(dir: &tempfile::TempDir) {
        {
            let journal = open_at(dir.path());
            for run in ["a", "b", "c"] {
                journal.start(record(run, 1)).await.unwrap();
                journal
                    .append(run, ROOT_SCOPE, 0, &entry(run))
                    .await
                    .unwrap();
            }
            journal.append_queued("a", ROOT_SCOPE, 1, &entry("a1"));
            journal.finish("b", true).await.unwrap();
            journal.finish("c", false).await.unwrap();
        }
        let journal = open_at(dir.path());
        let interrupted = interrupted_ids(&journal);
        assert_eq!(interrupted, ["a"]);
        let a = root_payloads(&journal, "a");
        assert_eq!(a, [b"a".to_vec(), b"a1".to_vec()]);
        assert!(journal.all_entries("b").unwrap().is_empty());
        assert!(journal.run("b").unwrap().is_none());
        assert_eq!(journal.entries("c", ROOT_SCOPE).unwrap().len(), 1);
        let kept = journal.run("c").unwrap().unwrap();
        assert_eq!(kept.status, JournalStatus::Finished);
        assert_eq!(journal.runs(false).unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_torn_or_corrupt_tail_is_cut_and_the_rest_reads() {
        let dir = tempfile::tempdir().unwrap();
        {
            let journal = open_at(dir.path());
            journal.start(record("r", 1)).await.unwrap();
            for seq in 0..3 {
                journal
                    .append("r", ROOT_SCOPE, seq, &entry(&format!("e{seq}")))
                    .await
                    .unwrap();
            }
        }
        let segment = log::segment_path(&log_dir(dir.path()), 0);
        let whole = std::fs::read(&segment).unwrap();
        // A write cut short by a crash: half of a last record, sealed as
        // segment 0's records are.
        let mut torn = log::entry_record("r", ROOT_SCOPE, 3, &entry("lost")).unwrap();
        let Some((log::Framing::Sealed(seal), _)) = log::framing_of(&whole) else {
            panic!("segment 0 is not sealed");
        };
        log::seal_batch(&mut torn, seal, whole.len() as u64);
        let mut bytes = whole.clone();
        bytes.extend_from_slice(&torn[..torn.len() / 2]);
        std::fs::write(&segment, &bytes).unwrap();
        {
            let journal = open_at(dir.path());
            assert_eq!(journal.entries("r", ROOT_SCOPE).unwrap().len(), 3);
            assert_eq!(
                std::fs::read(&segment).unwrap(),
                whole,
                "the torn tail is cut"
            );
            journal
                .append("r", ROOT_SCOPE, 3, &entry("e3"))
                .await
                .unwrap();
        }
        // A flipped byte in the first segment's last entry (e2; e3 went
        // to the second process's segment): the others read.
        let mut bytes = std::fs::read(&segment).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x55;
        std::fs::write(&segment, &bytes).unwrap();
        let journal = open_at(dir.path());
        let payloads = root_payloads(&journal, "r");
        assert_eq!(payloads, [b"e0".to_vec(), b"e1".to_vec(), b"e3".to_vec()]);
        // Not a segment at all: ignored, never deleted.
        std::fs::write(
            log_dir(dir.path()).join("00000000000000000099.seg"),
            b"junk",
        )
        .unwrap();
        drop(journal);
        let journal = open_at(dir.path());
        assert_eq!(journal.interrupted().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn finished_runs_free_their_segments_and_drops_outlive_the_data_they_void() {
        for dir in both_modes() {
            segments_are_freed_and_drops_outlive_their_data(&dir).await;
        }
    }

    async fn segments_are_freed_and_drops_outlive_their_data(dir: &tempfile::TempDir) {
        // Process 1: `long` starts and is cut off; `short` runs and finishes.
        {
            let journal = open_at(dir.path());
            journal.start(record("long", 1)).await.unwrap();
            journal
                .append("long", ROOT_SCOPE, 0, &entry("x"))
                .await
                .unwrap();
            journal.start(record("short", 1)).await.unwrap();
            journal.finish("short", true).await.unwrap();
            assert_eq!(journal.segment_files(), 1);
        }
        // Process 2: `long` resumes (its records now span two segments)
        // and finishes; `other` is cut off here.
        {
            let journal = open_at(dir.path());
            journal.start(record("long", 1)).await.unwrap();
            journal
                .append("long", ROOT_SCOPE, 1, &entry("y"))
                .await
                .unwrap();
            journal.start(record("other", 1)).await.unwrap();
            journal.finish("long", true).await.unwrap();
            // Segment 0 held only `long` and `short`: deleted.
            assert_eq!(journal.segment_files(), 1);
        }
        let ids = log::segment_ids(&log_dir(dir.path())).unwrap();
        assert_eq!(ids, [1]);
        // Process 3: `other` is still interrupted, `long` is not back.
        let journal = open_at(dir.path());
        let interrupted = interrupted_ids(&journal);
        assert_eq!(interrupted, ["other"]);
        journal.finish("other", true).await.unwrap();
        journal.flush().await.unwrap();
        assert_eq!(log::segment_ids(&log_dir(dir.path())).unwrap(), [2]);
        drop(journal);
        assert!(open_at(dir.path()).interrupted().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_spent_segment_is_reused_and_its_old_records_stay_void() {
        for dir in both_modes() {
            spent_segment_is_reused_and_its_old_records_stay_void(&dir).await;
        }
    }

    async fn spent_segment_is_reused_and_its_old_records_stay_void(dir: &tempfile::TempDir) {
        use std::os::unix::fs::MetadataExt;
        let log = log_dir(dir.path());
        let inode = |path: &std::path::Path| std::fs::metadata(path).unwrap().ino();
        // Process 1: `old` records plenty, then is dropped.
        {
            let journal = open_at(dir.path());
            journal.start(record("old", 1)).await.unwrap();
            for seq in 0..40 {
                journal
                    .append("old", ROOT_SCOPE, seq, &entry(&format!("old entry {seq}")))
                    .await
                    .unwrap();
            }
            journal.finish("old", true).await.unwrap();
        }
        let old_bytes = std::fs::read(log::segment_path(&log, 0)).unwrap();
        let file = inode(&log::segment_path(&log, 0));
        // Process 2 writes segment 1; segment 0, spent, becomes the spare.
        {
            let journal = open_at(dir.path());
            journal.start(record("gone", 1)).await.unwrap();
            journal.finish("gone", true).await.unwrap();
            assert_eq!(log::segment_ids(&log).unwrap(), [1]);
            assert_eq!(inode(&log.join(log::SPARE_FILE)), file);
        }
        // Process 3: segment 2 is the spare renamed (segment 1, spent in
        // turn, is the spare now); `new` is left unfinished.
        {
            let journal = open_at(dir.path());
            journal.start(record("new", 1)).await.unwrap();
            journal
                .append("new", ROOT_SCOPE, 0, &entry("n"))
                .await
                .unwrap();
            assert_eq!(log::segment_ids(&log).unwrap(), [2]);
            assert_eq!(inode(&log::segment_path(&log, 2)), file);
            assert!(log.join(log::SPARE_FILE).exists());
        }
        // A crash leaves the file's old records behind the new ones (a
        // clean close cuts them off): rebuild that.
        let new_bytes = std::fs::read(log::segment_path(&log, 2)).unwrap();
        assert!(new_bytes.len() < old_bytes.len());
        let mut crashed = new_bytes.clone();
        crashed.extend_from_slice(&old_bytes[new_bytes.len()..]);
        std::fs::write(log::segment_path(&log, 2), &crashed).unwrap();
        // Process 4 finds `new` interrupted with its one entry, and
        // nothing of `old`; the stale tail is cut off.
        let journal = open_at(dir.path());
        assert_eq!(interrupted_ids(&journal), ["new"]);
        assert_eq!(root_payloads(&journal, "new"), [b"n".to_vec()]);
        assert!(journal.run("old").unwrap().is_none());
        assert!(journal.all_entries("old").unwrap().is_empty());
        assert_eq!(
            std::fs::read(log::segment_path(&log, 2)).unwrap(),
            new_bytes
        );
    }

    /// Queue `text` (JSON-encoded) as the entry at `seq` of `log`'s root
    /// scope.
    /// Where a test's completion at `seq` goes, in the root scope.
    fn completion_at(seq: u32, print: &[u8; 32]) -> EntryAt<'_> {
        EntryAt {
            scope: ROOT_SCOPE,
            seq,
            kind: EntryKind::Completion,
            fingerprint: print,
        }
    }

    fn queue_text(log: &RunLog, seq: u32, text: &str) -> bool {
        let print = fingerprint(text.as_bytes());
        log.queue(
            completion_at(seq, &print),
            |out| JournalFormat::Json.encode_into(text, out),
            |_| true,
        )
        .unwrap()
    }

    #[tokio::test]
    async fn a_runs_log_writes_its_queued_records_in_order_with_its_next_write() {
        for dir in both_modes() {
            run_log_writes_in_order(&dir).await;
        }
    }

    async fn run_log_writes_in_order(dir: &tempfile::TempDir) {
        {
            let journal = open_at(dir.path());
            let log = journal.begin(&record("r", 1).start()).unwrap();
            // Listed (as running, and live) at once; nothing written yet.
            assert_eq!(journal.runs(true).unwrap().len(), 1);
            assert!(journal.interrupted().unwrap().is_empty());
            assert!(queue_text(&log, 0, "zero"));
            assert!(queue_text(&log, 1, "one"));
            assert!(journal.all_entries("r").unwrap().is_empty());
            log.flush().await.unwrap();
            assert_eq!(journal.all_entries("r").unwrap().len(), 2);
            // Refused by the caps: nothing is queued.
            let print = [0; 32];
            let at = completion_at(2, &print);
            let refused = log
                .queue(
                    at,
                    |out| JournalFormat::Json.encode_into("two", out),
                    |len| {
                        assert_eq!(len, 5, "the payload's length");
                        false
                    },
                )
                .unwrap();
            assert!(!refused);
            // An encoding that fails queues nothing either.
            assert!(log.queue(at, |_| Err("no".into()), |_| true).is_err());
            assert!(queue_text(&log, 2, "two"));
            // The run's log is dropped unfinished (a cancelled task): what
            // it queued is written, and the run is interrupted.
            drop(log);
            if !journal.shards[0].log.writes_in_place() {
                journal.flush().await.unwrap();
            }
            assert_eq!(interrupted_ids(&journal), ["r"]);
        }
        let journal = open_at(dir.path());
        assert_eq!(interrupted_ids(&journal), ["r"]);
        assert_eq!(root_texts(&journal, "r"), ["zero", "one", "two"]);
    }

    /// The segment files of the journal in `dir`, concatenated.
    fn segment_bytes(dir: &std::path::Path) -> Vec<u8> {
        let log = log_dir(dir);
        log::segment_ids(&log)
            .unwrap()
            .into_iter()
            .flat_map(|id| std::fs::read(log::segment_path(&log, id)).unwrap())
            .collect()
    }

    /// Runs written in place and dropped before the staging ring was
    /// copied leave nothing in the segments (their records are left out);
    /// kept, unfinished and resumed runs are all there after a reopen.
    #[tokio::test]
    async fn runs_dropped_while_staged_leave_nothing_and_the_rest_replay() {
        let dir = interval_dir();
        {
            let journal = open_at(dir.path());
            for (run, keep) in [("gone-run", false), ("kept-run", true)] {
                let log = journal.begin(&record(run, 1).start()).unwrap();
                assert!(queue_text(&log, 0, &format!("text of {run}")));
                log.flush().await.unwrap();
                log.finish(!keep);
            }
            for run in ["open-run", "resumed-run"] {
                let log = journal.begin(&record(run, 1).start()).unwrap();
                assert!(queue_text(&log, 0, &format!("text of {run}")));
                log.flush().await.unwrap();
                drop(log);
            }
        }
        let bytes = segment_bytes(dir.path());
        assert!(!bytes.windows(8).any(|w| w == b"gone-run"));
        assert!(bytes.windows(8).any(|w| w == b"kept-run"));
        {
            let journal = open_at(dir.path());
            assert!(journal.run("gone-run").unwrap().is_none());
            assert_eq!(
                journal.run("kept-run").unwrap().unwrap().status,
                JournalStatus::Finished
            );
            let mut interrupted = interrupted_ids(&journal);
            interrupted.sort();
            assert_eq!(interrupted, ["open-run", "resumed-run"]);
            // Resumed, then dropped at once, before any copy: its records
            // of the first process are in another segment, so its finish
            // must reach this one.
            let log = journal.begin_resumed(&record("resumed-run", 1)).unwrap();
            log.flush().await.unwrap();
            log.finish(true);
        }
        let journal = open_at(dir.path());
        assert!(journal.run("resumed-run").unwrap().is_none());
        assert_eq!(interrupted_ids(&journal), ["open-run"]);
        assert_eq!(root_texts(&journal, "open-run"), ["text of open-run"]);
        assert_eq!(root_texts(&journal, "kept-run"), ["text of kept-run"]);
    }

    #[tokio::test]
    async fn a_finished_runs_log_drops_or_keeps_it_and_refuses_more() {
        for dir in both_modes() {
            finished_run_log_drops_or_keeps(&dir).await;
        }
    }

    async fn finished_run_log_drops_or_keeps(dir: &tempfile::TempDir) {
        {
            let journal = open_at(dir.path());
            for (run, keep) in [("dropped", false), ("kept", true)] {
                let log = journal.begin(&record(run, 1).start()).unwrap();
                assert!(queue_text(&log, 0, run));
                log.flush().await.unwrap();
                assert!(queue_text(&log, 1, "queued, written with the finish"));
                log.finish(!keep);
                assert!(
                    log.queue(completion_at(2, &[0; 32]), |_| Ok(()), |_| true,)
                        .is_err()
                );
                // Live until the finish is written (the writer thread
                // writes it when every write is synced).
                let deadline = std::time::Instant::now() + Duration::from_secs(10);
                while journal.is_live(run) {
                    assert!(std::time::Instant::now() < deadline, "{run} never finished");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            assert!(journal.run("dropped").unwrap().is_none());
            assert_eq!(
                journal.run("kept").unwrap().unwrap().status,
                JournalStatus::Finished
            );
        }
        let journal = open_at(dir.path());
        assert!(journal.interrupted().unwrap().is_empty());
        assert!(journal.run("dropped").unwrap().is_none());
        assert!(journal.all_entries("dropped").unwrap().is_empty());
        assert_eq!(
            journal.run("kept").unwrap().unwrap().status,
            JournalStatus::Finished
        );
        assert_eq!(journal.entries("kept", ROOT_SCOPE).unwrap().len(), 2);
    }

    /// Begin run `long` and write its first entry, "first".
    async fn begin_long_run(journal: &Journal) -> RunLog {
        let long = journal.begin(&record("long", 1).start()).unwrap();
        assert!(queue_text(&long, 0, "first"));
        long.flush().await.unwrap();
        long
    }

    /// Runs of 1 MiB entries enough to fill a segment and start another.
    const SHORT_RUNS_PAST_A_SEGMENT: usize = (log::SEGMENT_BYTES >> 20) as usize + 2;

    /// Run `count` runs (`short-0`, ...) of one 1 MiB entry each, finished
    /// with their entries dropped or kept.
    async fn fill_with_short_runs(journal: &Journal, count: usize, drop_entries: bool) {
        let big = "x".repeat(1 << 20);
        for n in 0..count {
            let run = format!("short-{n}");
            let log = journal.begin(&record(&run, 1).start()).unwrap();
            assert!(queue_text(&log, 0, &big));
            log.flush().await.unwrap();
            log.finish(drop_entries);
        }
    }

    #[tokio::test]
    async fn runs_logs_free_and_reuse_segments_as_their_runs_finish() {
        let dir = interval_dir();
        let journal = open_at(dir.path());
        // A long run pins the first segment; runs of 1 MiB entries fill
        // segments behind it.
        let long = begin_long_run(&journal).await;
        fill_with_short_runs(&journal, 80, true).await;
        // 80 MiB went through 32 MiB segments: the first is pinned by the
        // long run, the spent ones between were reused or deleted.
        assert!(journal.segment_files() <= 3, "{}", journal.segment_files());
        assert!(queue_text(&long, 1, "second"));
        long.flush().await.unwrap();
        assert_eq!(journal.entries("long", ROOT_SCOPE).unwrap().len(), 2);
        long.finish(true);
        assert!(journal.segment_files() <= 2, "{}", journal.segment_files());
    }

    #[tokio::test]
    async fn a_run_that_writes_on_into_later_segments_reads_back_whole_when_reopened() {
        let dir = interval_dir();
        {
            let journal = open_at(dir.path());
            let long = begin_long_run(&journal).await;
            // Other runs fill the segment the long run started in: its
            // next records go to a later one, which binds its number
            // before them.
            fill_with_short_runs(&journal, SHORT_RUNS_PAST_A_SEGMENT, false).await;
            assert!(queue_text(&long, 1, "second"));
            long.flush().await.unwrap();
            assert!(queue_text(&long, 2, "third, written as the log is dropped"));
            drop(long);
        }
        let journal = open_at(dir.path());
        assert_eq!(interrupted_ids(&journal), ["long"]);
        assert!(journal.segment_files() >= 2, "{}", journal.segment_files());
        assert_eq!(
            root_texts(&journal, "long"),
            ["first", "second", "third, written as the log is dropped"]
        );
        // The short runs were kept, each with its one entry.
        assert_eq!(
            journal.runs(false).unwrap().len(),
            1 + SHORT_RUNS_PAST_A_SEGMENT
        );
        assert_eq!(journal.entries("short-0", ROOT_SCOPE).unwrap().len(), 1);
    }

    #[tokio::test]
    async fn the_writer_prepares_the_next_segment_and_a_crash_leaves_it_as_the_spare() {
        use std::os::unix::fs::MetadataExt;
        let dir = interval_dir();
        let log = log_dir(dir.path());
        let prepared = log.join(log::PREPARED_FILE);
        let inode = |path: &std::path::Path| std::fs::metadata(path).unwrap().ino();
        let wait_for = |path: &std::path::Path| {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !path.exists() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{} never appeared",
                    path.display()
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        let chunk = "x".repeat(256 << 10);
        {
            let journal = open_at(dir.path());
            let run = journal.begin(&record("r", 1).start()).unwrap();
            // Past half of segment 0, the writer thread makes the next
            // segment's file ready...
            let mut seq = 0;
            while seq * (256 << 10) < log::SEGMENT_BYTES as usize / 2 + (256 << 10) {
                assert!(queue_text(&run, seq as u32, &chunk));
                run.flush().await.unwrap();
                seq += 1;
            }
            wait_for(&prepared);
            // ...and there is no wait for it: the filling run only renames
            // it.
            let ready = inode(&prepared);
            while log::segment_ids(&log).unwrap().len() < 2 {
                assert!(queue_text(&run, seq as u32, &chunk));
                run.flush().await.unwrap();
                seq += 1;
            }
            assert_eq!(inode(&log::segment_path(&log, 1)), ready);
            // Written past half of segment 1 too: a file is ready again
            // when this "process" stops without having used it.
            while seq * (256 << 10) < log::SEGMENT_BYTES as usize * 3 / 2 + (256 << 10) {
                assert!(queue_text(&run, seq as u32, &chunk));
                run.flush().await.unwrap();
                seq += 1;
            }
            wait_for(&prepared);
            drop(run);
            journal.flush().await.unwrap();
        }
        let left = inode(&prepared);
        // The next open takes the unused file as the spare, which its
        // writer makes ready again for its first segment, and every record
        // the run made reads back.
        let journal = open_at(dir.path());
        wait_for(&prepared);
        assert_eq!(inode(&prepared), left);
        assert!(!log.join(log::SPARE_FILE).exists());
        assert_eq!(interrupted_ids(&journal), ["r"]);
        let entries = journal.entries("r", ROOT_SCOPE).unwrap();
        assert!(entries.len() >= 16, "{} entries", entries.len());
    }

    #[tokio::test]
    async fn a_failed_write_fails_every_later_flush_of_its_run() {
        let dir = interval_dir();
        let journal = open_at(dir.path());
        // The first segment cannot be created: a directory has its name.
        std::fs::create_dir(log::segment_path(&log_dir(dir.path()), 0)).unwrap();
        let run = journal.begin(&record("r", 1).start()).unwrap();
        assert!(queue_text(&run, 0, "lost"));
        assert!(run.flush().await.is_err());
        // Its records are lost: an empty buffer is no sign of a write, and
        // nothing more is taken.
        assert!(run.flush().await.is_err());
        let print = [0; 32];
        let at = completion_at(1, &print);
        assert!(run.queue(at, |_| Ok(()), |_| true).is_err());
    }

    #[tokio::test]
    async fn runs_spread_over_shards_read_back_and_resume_in_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let open = |writing| {
            let store = Store::open_with(
                &dir.path().join("loom.redb"),
                crate::store::StoreSync::Interval(50),
            )
            .unwrap();
            Journal::open_with_shards(store, Some(writing)).unwrap()
        };
        {
            let journal = open(3);
            for (shard, run) in ["zero", "one", "two"].into_iter().enumerate() {
                let log =
                    run_log::begin_in(&journal.shards[shard].log, &record(run, 1).start(), None)
                        .unwrap();
                assert!(queue_text(&log, 0, run));
                log.flush().await.unwrap();
                if run == "one" {
                    log.finish(true);
                }
            }
            // Begun on a thread of its own: one of the three shards.
            let journal2 = journal.clone();
            std::thread::spawn(move || {
                let log = journal2.begin(&record("threaded", 2).start()).unwrap();
                assert!(queue_text(&log, 0, "threaded"));
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                runtime.block_on(log.flush()).unwrap();
            })
            .join()
            .unwrap();
        }
        assert!(log_dir(dir.path()).join("shard-1").is_dir());
        assert!(log_dir(dir.path()).join("shard-2").is_dir());
        // Opened to write one shard, it still reads all three.
        let journal = open(1);
        let mut interrupted = interrupted_ids(&journal);
        interrupted.sort();
        assert_eq!(interrupted, ["threaded", "two", "zero"]);
        assert_eq!(root_texts(&journal, "two"), ["two"]);
        assert!(journal.run("one").unwrap().is_none());
        // A resumed run goes on in the shard that holds it.
        let record = journal.run("two").unwrap().unwrap();
        let log = journal.begin_resumed(&record).unwrap();
        assert!(Arc::ptr_eq(log.shared(), &journal.shards[2].log));
        assert!(queue_text(&log, 1, "two again"));
        log.flush().await.unwrap();
        log.finish(false);
        journal.flush().await.unwrap();
        drop(log);
        drop(journal);
        let journal = open(2);
        assert_eq!(root_texts(&journal, "two"), ["two", "two again"]);
        let two = journal.run("two").unwrap().unwrap();
        assert_eq!(two.status, JournalStatus::Finished);
        let mut interrupted = interrupted_ids(&journal);
        interrupted.sort();
        assert_eq!(interrupted, ["threaded", "zero"]);
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(journal.prune(Duration::ZERO).await.unwrap(), 3);
        assert!(journal.runs(false).unwrap().is_empty());
    }
}
