//! The journal's append-only log: segment files of checksummed,
//! length-prefixed records, appended through the shard's staging ring
//! ([`super::ring`]) or a shared memory map ([`super::mapped`]). With
//! [`StoreSync::Always`] one group-committing thread writes and syncs them;
//! otherwise the caller appends in place (`Shared::write_now` for the
//! queue, `Shared::write_run` for one run's records) and the thread only
//! syncs on the interval.
//!
//! A journal write is a few hundred bytes that is never updated in place,
//! read back only when a run resumes, and deleted wholesale when the run
//! finishes: an append to a file fits it, a B-tree does not. Every record
//! queued while the writer was busy goes out in the next single `write`,
//! so a thousand concurrent runs cost one system call per batch. A record
//! is on its way to disk (in the kernel, safe from a crash of the process)
//! before an awaiting caller hears back; with [`StoreSync::Always`] it is
//! also `fdatasync`ed, with [`StoreSync::Interval`] synced that often.
//!
//! A segment file (`<id>.seg`, ids increasing, a new one per process and
//! every [`SEGMENT_BYTES`]) starts with [`MAGIC`], its generation and its
//! salt (`u32 LE` each). Record: `len: u32 LE`, `generation: u32 LE`,
//! `checksum: u32 LE`, `body`. The checksum is XXH3-64 of the body, seeded
//! with the salt, the generation and `offset`, where the record starts in
//! the file, cut to its low 32 bits ([`sum_at`]): a record checks only
//! where it was written, never copied to another place (see the staging
//! ring's recovery, [`super::ring`]). A skip record (a length word with
//! its top bit set, [`SKIP`]) is a header alone, its checksum covering its
//! offset and length word: the bytes it spans are a hole a reader steps
//! over, where the staging ring left out the records of runs dropped
//! before they were copied. Opening the log replays every
//! segment; a torn record at a segment's end (a crash in a write) is cut
//! off, and whatever follows a corrupt record is ignored with a warning.
//!
//! A segment nothing needs any more is not deleted but kept as the spare
//! ([`SPARE_FILE`]), and the next segment is the spare renamed, its
//! generation one higher: its blocks stay allocated and its pages stay in
//! the page cache, where a new file's pages would each be allocated and
//! zeroed by the kernel as the appends reach them (and a deleted file's
//! dropped). The records of the file's earlier lives stay behind the new
//! ones until overwritten; they carry an older generation, so a reader
//! takes the first of them as the end of the segment, exactly as it does
//! the zeroed tail of a new one, and never as a record. The salt, random
//! for each life, keeps the bytes of an earlier life's payloads (a prompt,
//! a tool's output: text a caller chose) from being made to look like a
//! record of the new one: the generation is predictable, the salt is not.
//!
//! A body starts with its tag. A run written in place names itself in its
//! records by a number of the process's instead of its id (see
//! [`RunKey`]); its start record, or a bind record before its first
//! record in a later segment, says which run the number is, so a segment
//! is read from its start with the numbers it binds ([`Binds`]).
//!
//! Segments checksummed with CRC-32 instead (`crc32(generation, salt,
//! offset, body)`, skip records included: `LOOMJNL4`; written before skip
//! records: `LOOMJNL3`), written before checksums covered offsets
//! (`LOOMJNL2`) are still read, and recycled like the others; those written
//! before generations (`LOOMJNL1`: `len`, `crc32(body)`, `body`) are still
//! read, and never recycled.

use super::mapped::{self, SegmentFile};
use super::ring::{Ring, StagedRun};
use super::segments::Segments;
use super::{EntryKind, JournalEntry, JournalRun, RunEntry, RunMap, RunStart};
use crate::store::{StoreError, StoreSync};
use crate::sync::lock;
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// The first bytes of every segment file.
pub(super) const MAGIC: &[u8; 8] = b"LOOMJNL5";

/// The first bytes of a segment whose records are checksummed with CRC-32
/// ([`checksum_at`]; read, never written).
const CRC_MAGIC: &[u8; 8] = b"LOOMJNL4";

/// The first bytes of a segment written before skip records (read as one
/// of [`CRC_MAGIC`], which it is but for never holding one; never
/// written).
const UNSKIPPED_MAGIC: &[u8; 8] = b"LOOMJNL3";

/// The first bytes of a segment whose checksums do not cover their
/// records' offsets (written before they did; read, never written).
const UNPLACED_MAGIC: &[u8; 8] = b"LOOMJNL2";

/// The first bytes of a segment written before generations.
const LEGACY_MAGIC: &[u8; 8] = b"LOOMJNL1";

/// A segment's header: [`MAGIC`], its generation, its salt (`u32 LE`
/// each).
pub(super) const SEGMENT_HEADER: usize = 16;

/// What seals a segment's records: its generation (one above its file's
/// previous life, 1 for a new file) and a salt drawn at random for this
/// life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Seal {
    /// The life of the file.
    pub(super) generation: u32,
    /// Unpredictable, so no earlier content can be crafted to pass.
    pub(super) salt: u32,
}

impl Seal {
    /// The seal of a new life `generation`, with a fresh salt.
    pub(super) fn fresh(generation: u32) -> Seal {
        let salt = getrandom::u32().unwrap_or_else(|error| {
            tracing::debug!(%error, "no system randomness for a journal segment's salt");
            fastrand::u32(..)
        });
        Seal { generation, salt }
    }

    /// Whether the segment's file had an earlier life (whose records may
    /// follow the segment's own).
    fn reused(self) -> bool {
        self.generation > 1
    }
}

/// A record's header: length, generation, checksum (`u32 LE` each).
const RECORD_HEADER: usize = 12;

/// Set in a record's length word, it makes the record a skip record: a
/// header alone, followed by a hole of that many bytes (the records of
/// dropped runs the staging ring left out, see [`super::ring`]) which a
/// reader steps over. Its checksum covers its offset and its length word.
/// A record's length is far below it.
const SKIP: u32 = 1 << 31;

/// The length of a skip record: the least a hole can be.
pub(super) const SKIP_HEADER: usize = RECORD_HEADER;

/// A legacy record's header: length, checksum.
const LEGACY_RECORD_HEADER: usize = 8;

/// The spent segment kept for reuse as the next one, in the log's
/// directory. Not a segment: never replayed.
pub(super) const SPARE_FILE: &str = "spare.seg-recycled";

/// The segment file the writer thread made ready to be the next segment
/// (when callers write in place), in the log's directory. Not a segment:
/// never replayed; one a crash left becomes the spare.
pub(super) const PREPARED_FILE: &str = "next.seg-prepared";

/// A segment is closed once it holds this much, at a batch boundary.
/// Small enough that spent segments come back as new ones early on (their
/// pages still in the page cache, where a new file's must each be
/// allocated and zeroed), and that a run left pinning one keeps little.
pub(super) const SEGMENT_BYTES: u64 = 4 << 20;

/// How long a record nobody awaits may wait for company before the writer
/// writes it anyway.
const QUEUED_DELAY: Duration = Duration::from_millis(2);

/// Record tags.
const START: u8 = 1;
const ENTRY: u8 = 2;
const FINISH: u8 = 3;
const DROP: u8 = 4;
/// A run's start in postcard ([`CompactStart`]); [`START`] is JSON, as
/// written before.
const START_COMPACT: u8 = 5;
/// [`ENTRY`] of a run named by its number in the segment (see
/// [`RunKey::Bound`]): the number, the scope and step as varints, the kind
/// (its top bit set when the fingerprint is 16 bytes, its second half
/// being zero), the fingerprint, the payload.
const ENTRY_BOUND: u8 = 6;
/// [`FINISH`] of a run named by its number in the segment.
const FINISH_BOUND: u8 = 7;
/// [`START_COMPACT`] that also binds the run's number in the segment.
const START_BOUND: u8 = 8;
/// Binds a run's number to its id in the segment, for the run's records
/// there when its start is in an earlier one.
const BIND: u8 = 9;
/// The bit of an entry's kind byte that says its fingerprint is 16 bytes.
const SHORT_PRINT: u8 = 0x80;

/// A decoded record, borrowing from the bytes it was read from.
#[derive(Debug)]
pub(super) enum Record<'a> {
    /// A run started or was resumed.
    Start(Box<JournalRun>),
    /// A journal entry of `run`.
    Entry {
        /// The run.
        run: &'a str,
        /// The invocation's scope.
        scope: &'a str,
        /// The step.
        seq: u32,
        /// The entry.
        entry: JournalEntry,
    },
    /// The run finished; with `drop`, its entries are void.
    Finish {
        /// The run.
        run: &'a str,
        /// Whether its entries are void.
        drop: bool,
        /// When, in milliseconds since the Unix epoch.
        updated_ms: u64,
    },
    /// The run's records are void (pruned).
    Drop {
        /// The run.
        run: &'a str,
    },
    /// The run has records in this segment under a number, bound here.
    Bind {
        /// The run.
        run: &'a str,
    },
}

impl Record<'_> {
    /// The run the record belongs to.
    pub(super) fn run(&self) -> &str {
        match self {
            Record::Start(run) => &run.run,
            Record::Entry { run, .. }
            | Record::Finish { run, .. }
            | Record::Drop { run }
            | Record::Bind { run } => run,
        }
    }
}

/// Frame `body` as a record, its generation and checksum still open
/// ([`seal_batch`] fills them in once the segment it goes to is known).
pub(super) fn frame(body: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(RECORD_HEADER + body.len());
    let start = open_record(&mut bytes);
    bytes.extend_from_slice(body);
    close_record(&mut bytes, start);
    bytes
}

/// Start a record at the end of `out`: its header, still blank. Returns
/// where it starts, for [`close_record`].
fn open_record(out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; RECORD_HEADER]);
    start
}

/// Fill in the length of the record started at `start`, whose body is
/// the rest of `out`.
fn close_record(out: &mut [u8], start: usize) {
    let len = (out.len() - start - RECORD_HEADER) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

/// The little-endian `u32` at `at` in `bytes` (which must hold it).
fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// The CRC-32 of `seal`'s generation and salt (`u32 LE` each), which
/// every record's checksum in a segment checksummed with CRC-32
/// ([`CRC_MAGIC`] and older) starts from (a record's checksum is the CRC-32
/// of those eight bytes, its offset where covered, and its body): computed
/// once per read rather than per record.
fn seal_crc(seal: Seal) -> u32 {
    let mut prefix = [0u8; 8];
    prefix[..4].copy_from_slice(&seal.generation.to_le_bytes());
    prefix[4..].copy_from_slice(&seal.salt.to_le_bytes());
    crc32fast::hash(&prefix)
}

/// The checksum of a record's `body` in a segment of [`UNPLACED_MAGIC`]
/// whose seal's CRC is `seal_crc` ([`seal_crc`]).
fn checksum_after(seal_crc: u32, body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new_with_initial(seal_crc);
    hasher.update(body);
    hasher.finalize()
}

/// The checksum of a record's `body` at `offset` of a segment of
/// [`CRC_MAGIC`] whose seal's CRC is `seal_crc` ([`seal_crc`]): a record
/// copied anywhere else, even into the same segment, does not check.
fn checksum_at(seal_crc: u32, offset: u64, body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new_with_initial(seal_crc);
    hasher.update(&offset.to_le_bytes());
    hasher.update(body);
    hasher.finalize()
}

/// The odd constant a record's offset is multiplied by in its checksum's
/// seed (the 64-bit golden ratio): distinct offsets of a segment give
/// distinct seeds.
const OFFSET_MIX: u64 = 0x9E37_79B9_7F4A_7C15;

/// The checksum of `bytes` (a record's body, or a skip record's length
/// word) at `offset` of a segment of [`MAGIC`] sealed with `seal`:
/// XXH3-64 seeded with the salt, the generation and the offset, its low
/// 32 bits. A record copied anywhere else, even into the same segment, or
/// into another life of its file, does not check; and as the salt is
/// unpredictable, no content can be crafted to.
///
/// XXH3 rather than CRC-32: a journaled turn seals a handful of records of
/// 15 to 250 bytes, and CRC-32 takes its table-driven path below 128 bytes,
/// whose tables are out of the cache between turns; XXH3 needs no table
/// and took half the time (`docs/journal-performance.md`).
pub(super) fn sum_at(seal: Seal, offset: u64, bytes: &[u8]) -> u32 {
    let key = u64::from(seal.salt) << 32 | u64::from(seal.generation);
    let seed = key ^ offset.wrapping_mul(OFFSET_MIX);
    // The low half of the digest is the checksum.
    xxhash_rust::xxh3::xxh3_64_with_seed(bytes, seed) as u32
}

/// The skip record at segment `offset` of a segment sealed with `seal`,
/// for a hole of `hole` bytes from `offset` on, the record included (at
/// least [`SKIP_HEADER`], less than 2 GiB).
pub(super) fn skip_header(seal: Seal, offset: u64, hole: usize) -> [u8; RECORD_HEADER] {
    let skipped = u32::try_from(hole.saturating_sub(RECORD_HEADER)).unwrap_or(u32::MAX) & !SKIP;
    let word = SKIP | skipped;
    let crc = sum_at(seal, offset, &word.to_le_bytes());
    let mut header = [0u8; RECORD_HEADER];
    header[..4].copy_from_slice(&word.to_le_bytes());
    header[4..8].copy_from_slice(&seal.generation.to_le_bytes());
    header[8..].copy_from_slice(&crc.to_le_bytes());
    header
}

/// Stamp every framed record in `batch` with `seal`'s generation and its
/// checksum, as they go to a segment sealed with it, `batch` starting at
/// segment offset `offset`.
pub(super) fn seal_batch(batch: &mut [u8], seal: Seal, offset: u64) {
    stamp_batch(batch, seal.generation, |at, body| {
        sum_at(seal, offset + at as u64, body)
    });
}

/// Stamp every framed record in `batch` with `generation` and the
/// checksum `sum` gives its body at its offset in `batch`.
fn stamp_batch(batch: &mut [u8], generation: u32, sum: impl Fn(usize, &[u8]) -> u32) {
    let mut at = 0;
    while let Some(header) = batch.get(at..at + RECORD_HEADER) {
        let len = u32_at(header, 0) as usize;
        let Some(body) = batch.get(at + RECORD_HEADER..at + RECORD_HEADER + len) else {
            return;
        };
        let checksum = sum(at, body);
        batch[at + 4..at + 8].copy_from_slice(&generation.to_le_bytes());
        batch[at + 8..at + 12].copy_from_slice(&checksum.to_le_bytes());
        at += RECORD_HEADER + len;
    }
}

/// [`seal_batch`] as builds before XXH3 sealed records: with CRC-32, for
/// a segment of [`CRC_MAGIC`] (tests of what those builds left behind).
#[cfg(test)]
pub(super) fn seal_batch_crc(batch: &mut [u8], seal: Seal, offset: u64) {
    let seal_crc = seal_crc(seal);
    stamp_batch(batch, seal.generation, |at, body| {
        checksum_at(seal_crc, offset + at as u64, body)
    });
}

/// Append `text` with a u16 length.
fn put_str(body: &mut Vec<u8>, text: &str, what: &str) -> Result<(), StoreError> {
    let len = u16::try_from(text.len()).map_err(|_| {
        StoreError::Io(format!(
            "a journal {what} of {} bytes; at most {} fit",
            text.len(),
            u16::MAX
        ))
    })?;
    body.extend_from_slice(&len.to_le_bytes());
    body.extend_from_slice(text.as_bytes());
    Ok(())
}

/// Append `text` with a varint length, as long as [`put_str`] allows.
fn put_short_str(body: &mut Vec<u8>, text: &str, what: &str) -> Result<(), StoreError> {
    if text.len() > usize::from(u16::MAX) {
        return Err(StoreError::Io(format!(
            "a journal {what} of {} bytes; at most {} fit",
            text.len(),
            u16::MAX
        )));
    }
    put_varint(body, text.len() as u64);
    body.extend_from_slice(text.as_bytes());
    Ok(())
}

/// Append `value` as a LEB128 varint.
fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Split a LEB128 varint off `bytes`.
fn take_varint(bytes: &mut &[u8]) -> Result<u64, String> {
    let mut value = 0u64;
    for (i, &byte) in bytes.iter().enumerate().take(10) {
        let bits = u64::from(byte & 0x7f);
        if i == 9 && bits > 1 {
            return Err("a varint past 64 bits".into());
        }
        value |= bits << (7 * i);
        if byte & 0x80 == 0 {
            *bytes = &bytes[i + 1..];
            return Ok(value);
        }
    }
    Err("a record cut short in a varint".into())
}

/// Split a varint-length-prefixed string off `bytes`.
fn take_short_str<'a>(bytes: &mut &'a [u8]) -> Result<&'a str, String> {
    let len = usize::try_from(take_varint(bytes)?).map_err(|e| e.to_string())?;
    let (text, rest) = bytes
        .split_at_checked(len)
        .ok_or("a record cut short in a string")?;
    *bytes = rest;
    std::str::from_utf8(text).map_err(|e| e.to_string())
}

/// How a record names its run.
///
/// A run this process writes in place is given a number when it begins
/// (unique among the runs begun through this open log; a store, and with
/// it its journal, is open in one process at a time, and each open writes
/// segments of its own, so a number is unique in every segment), and its
/// records name it by that: a few bytes where its id
/// takes about thirty, in every record. Its start record binds the number
/// to the id in the segment it goes to, and a [`BIND`] record does in each
/// later segment the run's records reach, before them; a reader learns
/// the bindings as it reads a segment from its start ([`Binds`]).
#[derive(Clone, Copy, Debug)]
pub(super) enum RunKey<'a> {
    /// By its id.
    Id(&'a str),
    /// By its number in the segment.
    Bound(u64),
}

/// The run numbers a reader of one segment (or of the queue) has seen
/// bound so far, in order: a record naming a number not bound before it
/// is corrupt.
#[derive(Debug, Default)]
pub(super) struct Binds<'a> {
    runs: HashMap<u64, &'a str>,
}

impl<'a> Binds<'a> {
    fn bind(&mut self, number: u64, run: &'a str) {
        self.runs.insert(number, run);
    }

    fn run(&self, number: u64) -> Result<&'a str, String> {
        self.runs
            .get(&number)
            .copied()
            .ok_or_else(|| format!("run number {number} not bound before its record"))
    }
}

/// A run's record as a compact start record holds it: postcard, with the
/// two free-form JSON values (which postcard cannot read back) as JSON
/// text. Field for field [`JournalRun`].
#[derive(serde::Serialize, serde::Deserialize)]
struct CompactStart<S, T> {
    run: S,
    tenant: S,
    user: Option<S>,
    session: Option<S>,
    agent: Option<S>,
    architecture: S,
    prompt: S,
    output_schema: Option<S>,
    metadata: T,
    component: S,
    origin: S,
    format: super::JournalFormat,
    status: super::JournalStatus,
    started_ms: u64,
    updated_ms: u64,
}

/// Room a run's buffer is made with beyond its start record: what a turn
/// queues before its first awaited write (its input, the tool list and
/// the step itself) fits without growing it.
const QUEUE_ROOM: usize = 1 << 10;

/// A run's framed start record, in a buffer with room for the records
/// queued after it ([`QUEUE_ROOM`]), and where in it its body is.
pub(super) struct StartRecord {
    bytes: Vec<u8>,
    body: std::ops::Range<usize>,
}

impl StartRecord {
    /// The framed record.
    pub(super) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Its body: the compact start itself (what [`decode_start_body`]
    /// reads), without the tag and the run's number.
    pub(super) fn body(&self) -> &[u8] {
        &self.bytes[self.body.clone()]
    }

    /// The buffer, the framed record in it.
    pub(super) fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// The framed record of a run's start, running, started at `started_ms`
/// and changed at `updated_ms`; with `number`, it binds the run's number
/// in the segment it goes to (see [`RunKey`]).
///
/// # Errors
///
/// [`StoreError::Io`] when a JSON value of the run cannot be encoded.
pub(super) fn start_record(
    run: &RunStart<'_>,
    started_ms: u64,
    updated_ms: u64,
    number: Option<u64>,
) -> Result<StartRecord, StoreError> {
    let mut bytes = Vec::with_capacity(QUEUE_ROOM);
    let body = put_start(&mut bytes, run, (started_ms, updated_ms), number)?;
    Ok(StartRecord { bytes, body })
}

/// The body of a compact start record of `run` (running; its times zero):
/// what a shard keeps of a run's record in memory.
///
/// # Errors
///
/// As [`start_record`].
pub(super) fn start_body(run: &RunStart<'_>) -> Result<Vec<u8>, StoreError> {
    let mut bytes = Vec::new();
    let body = put_start(&mut bytes, run, (0, 0), None)?;
    bytes.truncate(body.end);
    bytes.drain(..body.start);
    Ok(bytes)
}

/// Frame a run's start record onto `out` (left as it was on failure),
/// running, with its start and change `times`; with `number`, it binds
/// the run's number. Returns where the record's body (the compact start)
/// is in `out`.
fn put_start(
    out: &mut Vec<u8>,
    run: &RunStart<'_>,
    (started_ms, updated_ms): (u64, u64),
    number: Option<u64>,
) -> Result<std::ops::Range<usize>, StoreError> {
    // JSON text; `null` (a run with no origin or schema) allocates nothing.
    let json = |value: &serde_json::Value| -> Result<std::borrow::Cow<'static, str>, StoreError> {
        if value.is_null() {
            return Ok(std::borrow::Cow::Borrowed("null"));
        }
        serde_json::to_string(value)
            .map(std::borrow::Cow::Owned)
            .map_err(crate::store::io)
    };
    let output_schema = run.output_schema.map(json).transpose()?;
    let origin = json(run.origin)?;
    // Room for the whole record at once (each field's length prefix and
    // the fixed fields fit in the 96), so encoding it never grows `out`.
    let optional = |field: Option<&str>| field.map_or(0, str::len);
    let metadata: usize = run
        .metadata
        .iter()
        .map(|(key, value)| key.len() + value.len() + 10)
        .sum();
    out.reserve(
        RECORD_HEADER
            + 96
            + run.run.len()
            + run.tenant.len()
            + optional(run.user)
            + optional(run.session)
            + optional(run.agent)
            + run.architecture.len()
            + run.prompt.len()
            + run.component.len()
            + metadata
            + origin.len()
            + output_schema.as_ref().map_or(0, |schema| schema.len()),
    );
    let compact = CompactStart {
        run: run.run,
        tenant: run.tenant,
        user: run.user,
        session: run.session,
        agent: run.agent,
        architecture: run.architecture,
        prompt: run.prompt,
        output_schema: output_schema.as_deref(),
        metadata: run.metadata,
        component: run.component,
        origin: &origin,
        format: run.format,
        status: super::JournalStatus::Running,
        started_ms,
        updated_ms,
    };
    let start = open_record(out);
    match number {
        Some(number) => {
            out.push(START_BOUND);
            put_varint(out, number);
        }
        None => out.push(START_COMPACT),
    }
    let body = out.len();
    if let Err(error) = postcard::serialize_with_flavor(&compact, super::VecFlavor(out)) {
        out.truncate(start);
        return Err(crate::store::io(error));
    }
    let end = out.len();
    close_record(out, start);
    Ok(body..end)
}

/// A compact start record's body, decoded.
pub(super) fn decode_start_body(body: &[u8]) -> Result<JournalRun, String> {
    let compact: CompactStart<String, Vec<(String, String)>> =
        postcard::from_bytes(body).map_err(|e| e.to_string())?;
    let json = |text: &str| serde_json::from_str(text).map_err(|e| e.to_string());
    Ok(JournalRun {
        run: compact.run,
        tenant: compact.tenant,
        user: compact.user,
        session: compact.session,
        agent: compact.agent,
        architecture: compact.architecture,
        prompt: compact.prompt,
        output_schema: compact.output_schema.as_deref().map(json).transpose()?,
        metadata: compact.metadata,
        component: compact.component,
        origin: json(&compact.origin)?,
        format: compact.format,
        status: compact.status,
        started_ms: compact.started_ms,
        updated_ms: compact.updated_ms,
    })
}

/// The framed record of an entry.
pub(super) fn entry_record(
    run: &str,
    scope: &str,
    seq: u32,
    entry: &JournalEntry,
) -> Result<Vec<u8>, StoreError> {
    let mut bytes = Vec::with_capacity(57 + run.len() + scope.len() + entry.payload.len());
    put_entry(
        &mut bytes,
        EntryHead {
            run: RunKey::Id(run),
            scope,
            seq,
            kind: entry.kind,
            fingerprint: &entry.fingerprint,
        },
        |out| {
            out.extend_from_slice(&entry.payload);
            Ok(())
        },
    )?;
    Ok(bytes)
}

/// What an entry record says before its payload.
#[derive(Clone, Copy, Debug)]
pub(super) struct EntryHead<'a> {
    /// The run.
    pub(super) run: RunKey<'a>,
    /// The architecture invocation's scope.
    pub(super) scope: &'a str,
    /// The step in it.
    pub(super) seq: u32,
    /// What the entry records.
    pub(super) kind: EntryKind,
    /// The request's fingerprint.
    pub(super) fingerprint: &'a [u8; 32],
}

/// Frame an entry record onto `out`, its payload whatever `encode`
/// appends (encoded in place: no copy of it is made on the way); returns
/// the payload's length. On failure `out` is left as it was.
///
/// # Errors
///
/// [`StoreError::Io`] when `encode` fails, an id is longer than a record
/// holds, or the payload is larger than [`super::MAX_PAYLOAD_BYTES`].
pub(super) fn put_entry(
    out: &mut Vec<u8>,
    head: EntryHead<'_>,
    encode: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
) -> Result<usize, StoreError> {
    let start = open_record(out);
    let framed = (|| {
        match head.run {
            RunKey::Id(run) => {
                out.push(ENTRY);
                put_str(out, run, "run id")?;
                put_str(out, head.scope, "scope")?;
                out.extend_from_slice(&head.seq.to_le_bytes());
                out.push(head.kind as u8);
                out.extend_from_slice(head.fingerprint);
            }
            RunKey::Bound(number) => {
                out.push(ENTRY_BOUND);
                put_varint(out, number);
                put_short_str(out, head.scope, "scope")?;
                put_varint(out, u64::from(head.seq));
                let (first, second) = head.fingerprint.split_at(16);
                if second.iter().all(|&b| b == 0) {
                    out.push(head.kind as u8 | SHORT_PRINT);
                    out.extend_from_slice(first);
                } else {
                    out.push(head.kind as u8);
                    out.extend_from_slice(head.fingerprint);
                }
            }
        }
        let payload = out.len();
        encode(out).map_err(StoreError::Io)?;
        let len = out.len() - payload;
        if len > super::MAX_PAYLOAD_BYTES {
            return Err(StoreError::Io(format!(
                "a journal entry of {len} bytes; at most {} are kept",
                super::MAX_PAYLOAD_BYTES
            )));
        }
        Ok(len)
    })();
    match framed {
        Ok(len) => {
            close_record(out, start);
            Ok(len)
        }
        Err(error) => {
            out.truncate(start);
            Err(error)
        }
    }
}

/// The framed record of a run's end at `updated_ms`.
pub(super) fn finish_record(run: &str, drop: bool, updated_ms: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(RECORD_HEADER + 10 + run.len());
    put_finish(&mut bytes, RunKey::Id(run), drop, updated_ms);
    bytes
}

/// Frame a run's end at `updated_ms` onto `out`.
pub(super) fn put_finish(out: &mut Vec<u8>, run: RunKey<'_>, drop: bool, updated_ms: u64) {
    let start = open_record(out);
    out.push(match run {
        RunKey::Id(_) => FINISH,
        RunKey::Bound(_) => FINISH_BOUND,
    });
    out.push(u8::from(drop));
    out.extend_from_slice(&updated_ms.to_le_bytes());
    match run {
        RunKey::Id(run) => out.extend_from_slice(run.as_bytes()),
        RunKey::Bound(number) => put_varint(out, number),
    }
    close_record(out, start);
}

/// Frame the record binding run `number` to `run` in the segment it goes
/// to onto `out`.
fn put_bind(out: &mut Vec<u8>, number: u64, run: &str) {
    let start = open_record(out);
    out.push(BIND);
    put_varint(out, number);
    out.extend_from_slice(run.as_bytes());
    close_record(out, start);
}

/// The framed record voiding a run.
pub(super) fn drop_record(run: &str) -> Vec<u8> {
    let mut body = Vec::with_capacity(1 + run.len());
    body.push(DROP);
    body.extend_from_slice(run.as_bytes());
    frame(&body)
}

/// Split a u16-length-prefixed string off `bytes`.
fn take_str<'a>(bytes: &mut &'a [u8]) -> Result<&'a str, String> {
    let (len, rest) = bytes
        .split_at_checked(2)
        .ok_or("a record cut short in a length")?;
    let len = usize::from(u16::from_le_bytes([len[0], len[1]]));
    let (text, rest) = rest
        .split_at_checked(len)
        .ok_or("a record cut short in a string")?;
    *bytes = rest;
    std::str::from_utf8(text).map_err(|e| e.to_string())
}

/// Decode one record's body, the next in its segment (or queue) after
/// those `binds` has seen.
pub(super) fn decode<'a>(body: &'a [u8], binds: &mut Binds<'a>) -> Result<Record<'a>, String> {
    let (&tag, mut rest) = body.split_first().ok_or("an empty record")?;
    match tag {
        START => serde_json::from_slice(rest)
            .map(|run| Record::Start(Box::new(run)))
            .map_err(|e| format!("a run record: {e}")),
        START_COMPACT => decode_start_body(rest)
            .map(|run| Record::Start(Box::new(run)))
            .map_err(|e| format!("a run record: {e}")),
        START_BOUND => {
            let number = take_varint(&mut rest)?;
            // The run's id is the first field of the postcard body.
            let mut peek = rest;
            let run = take_short_str(&mut peek)?;
            let record = decode_start_body(rest).map_err(|e| format!("a run record: {e}"))?;
            binds.bind(number, run);
            Ok(Record::Start(Box::new(record)))
        }
        BIND => {
            let number = take_varint(&mut rest)?;
            let run = std::str::from_utf8(rest).map_err(|e| e.to_string())?;
            binds.bind(number, run);
            Ok(Record::Bind { run })
        }
        ENTRY_BOUND => {
            let run = binds.run(take_varint(&mut rest)?)?;
            let scope = take_short_str(&mut rest)?;
            let seq = u32::try_from(take_varint(&mut rest)?).map_err(|e| e.to_string())?;
            entry_from(run, scope, seq, rest, true)
        }
        FINISH_BOUND => {
            let (drop, updated_ms, mut number) = finish_head(rest)?;
            let run = binds.run(take_varint(&mut number)?)?;
            Ok(Record::Finish {
                run,
                drop,
                updated_ms,
            })
        }
        ENTRY => {
            let run = take_str(&mut rest)?;
            let scope = take_str(&mut rest)?;
            let (seq, rest) = rest.split_at_checked(4).ok_or("an entry cut short")?;
            entry_from(run, scope, u32_at(seq, 0), rest, false)
        }
        FINISH => {
            let (drop, updated_ms, run) = finish_head(rest)?;
            let run = std::str::from_utf8(run).map_err(|e| e.to_string())?;
            Ok(Record::Finish {
                run,
                drop,
                updated_ms,
            })
        }
        DROP => Ok(Record::Drop {
            run: std::str::from_utf8(rest).map_err(|e| e.to_string())?,
        }),
        other => Err(format!("record tag {other}")),
    }
}

/// The entry of `run` at (`scope`, `seq`) whose body goes on with `rest`:
/// its kind, its fingerprint, its payload. With `short_prints`, the kind's
/// [`SHORT_PRINT`] bit says the fingerprint is 16 bytes (the rest zero).
fn entry_from<'a>(
    run: &'a str,
    scope: &'a str,
    seq: u32,
    rest: &'a [u8],
    short_prints: bool,
) -> Result<Record<'a>, String> {
    let (&kind, rest) = rest.split_first().ok_or("an entry cut short")?;
    let short = short_prints && kind & SHORT_PRINT != 0;
    let kind = if short_prints {
        kind & !SHORT_PRINT
    } else {
        kind
    };
    let kind = EntryKind::from_byte(kind).ok_or(format!("entry kind {kind}"))?;
    let width = if short { 16 } else { 32 };
    let (print, payload) = rest.split_at_checked(width).ok_or("an entry cut short")?;
    let mut fingerprint = [0u8; 32];
    fingerprint[..width].copy_from_slice(print);
    Ok(Record::Entry {
        run,
        scope,
        seq,
        entry: JournalEntry {
            kind,
            fingerprint,
            payload: payload.to_vec(),
        },
    })
}

/// What a finish record's body says before it names its run: whether the
/// run's entries are void, and when; and the rest of the body.
fn finish_head(rest: &[u8]) -> Result<(bool, u64, &[u8]), String> {
    let (&drop, rest) = rest.split_first().ok_or("a finish cut short")?;
    let (when, rest) = rest.split_at_checked(8).ok_or("a finish cut short")?;
    let mut millis = [0u8; 8];
    millis.copy_from_slice(when);
    Ok((drop != 0, u64::from_le_bytes(millis), rest))
}

/// How the records in some bytes are framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Framing {
    /// Records of a segment sealed with this, each checksum covering the
    /// record's offset. A record of another generation is a stale one,
    /// left by an earlier life of the file (see [`SPARE_FILE`]): the
    /// segment's records end before it.
    Sealed(Seal),
    /// [`Framing::Sealed`], checksummed with CRC-32 ([`CRC_MAGIC`]).
    SealedCrc(Seal),
    /// [`Framing::SealedCrc`], written before checksums covered offsets.
    SealedUnplaced(Seal),
    /// Records of a segment written before generations.
    Legacy,
    /// Records framed in memory and not yet sealed: the queue.
    Unsealed,
}

impl Framing {
    /// The length of a record's header.
    fn header(self) -> usize {
        match self {
            Framing::Legacy => LEGACY_RECORD_HEADER,
            Framing::Sealed(_)
            | Framing::SealedCrc(_)
            | Framing::SealedUnplaced(_)
            | Framing::Unsealed => RECORD_HEADER,
        }
    }

    /// The seal of a sealed segment's records.
    pub(super) fn seal(self) -> Option<Seal> {
        match self {
            Framing::Sealed(seal) | Framing::SealedCrc(seal) | Framing::SealedUnplaced(seal) => {
                Some(seal)
            }
            Framing::Legacy | Framing::Unsealed => None,
        }
    }

    /// Whether records' checksums cover their offsets, so that a record
    /// checks only where it was written (and skip records may occur).
    pub(super) fn placed(self) -> bool {
        matches!(self, Framing::Sealed(_) | Framing::SealedCrc(_))
    }

    /// The checksum a record's header of this framing holds for `bytes`
    /// at segment `offset` (`seal_crc`: [`seal_crc`] of the seal, for the
    /// CRC framings), if it holds one in its last word.
    fn sum(self, seal_crc: u32, offset: u64, bytes: &[u8]) -> Option<u32> {
        match self {
            Framing::Sealed(seal) => Some(sum_at(seal, offset, bytes)),
            Framing::SealedCrc(_) => Some(checksum_at(seal_crc, offset, bytes)),
            Framing::SealedUnplaced(_) => Some(checksum_after(seal_crc, bytes)),
            Framing::Legacy | Framing::Unsealed => None,
        }
    }
}

/// The record bodies framed in `bytes`, and where the valid ones end (a
/// torn or corrupt frame stops the walk). A zero header ends the records
/// without a problem: it is the unused, reserved tail of a segment that
/// was written through a memory map ([`super::mapped`]); no record is
/// empty. So does a record of an older generation: the rest of a
/// recycled file.
pub(super) fn bodies(bytes: &[u8], framing: Framing) -> (Vec<&[u8]>, usize, Option<String>) {
    bodies_at(bytes, framing, SEGMENT_HEADER as u64)
}

/// [`bodies`] of `bytes` that start at offset `base` of their segment
/// (right after its header, for [`bodies`]).
pub(super) fn bodies_at(
    bytes: &[u8],
    framing: Framing,
    base: u64,
) -> (Vec<&[u8]>, usize, Option<String>) {
    let header_len = framing.header();
    let sealed_from = match framing {
        Framing::SealedCrc(seal) | Framing::SealedUnplaced(seal) => seal_crc(seal),
        Framing::Sealed(_) | Framing::Legacy | Framing::Unsealed => 0,
    };
    let mut found = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at..].iter().all(|&b| b == 0) {
            return (found, at, None);
        }
        let Some(header) = bytes.get(at..at + header_len) else {
            return (found, at, Some("a record header cut short".into()));
        };
        if header.iter().all(|&b| b == 0) {
            // In a reused file, zeros may be an earlier life's payload.
            if let Some(seal) = framing.seal()
                && seal.reused()
            {
                return (found, at, None);
            }
            return (
                found,
                at,
                Some("a zeroed record header before more data".into()),
            );
        }
        let word = |i: usize| u32_at(header, i);
        let len = word(0) as usize;
        if let Some(seal) = framing.seal()
            && word(4) != seal.generation
        {
            return (found, at, None);
        }
        if framing.placed() && word(0) & SKIP != 0 {
            let offset = base + at as u64;
            if framing.sum(sealed_from, offset, &word(0).to_le_bytes()) != Some(word(8)) {
                return (
                    found,
                    at,
                    Some("a skip record whose checksum does not match".into()),
                );
            }
            let hole = header_len + (word(0) & !SKIP) as usize;
            if bytes.len() - at < hole {
                return (found, at, Some("a skipped stretch cut short".into()));
            }
            at += hole;
            continue;
        }
        let Some(body) = bytes.get(at + header_len..at + header_len + len) else {
            return (found, at, Some("a record cut short".into()));
        };
        let intact = match framing {
            Framing::Legacy => crc32fast::hash(body) == word(4),
            Framing::Unsealed => true,
            Framing::Sealed(_) | Framing::SealedCrc(_) | Framing::SealedUnplaced(_) => {
                framing.sum(sealed_from, base + at as u64, body) == Some(word(8))
            }
        };
        if !intact {
            return (
                found,
                at,
                Some("a record whose checksum does not match".into()),
            );
        }
        found.push(body);
        at += header_len + len;
    }
    (found, at, None)
}

/// The path of segment `id` in `dir`.
pub(super) fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

/// The segment ids in `dir`, oldest first.
pub(super) fn segment_ids(dir: &Path) -> Result<Vec<u64>, StoreError> {
    let mut ids = Vec::new();
    for item in std::fs::read_dir(dir).map_err(crate::store::io)? {
        let item = item.map_err(crate::store::io)?;
        let name = item.file_name();
        if let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".seg"))
            .and_then(|n| n.parse::<u64>().ok())
        {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// How a segment file's records are framed, from its first bytes, and
/// how long its header is; `None`: not a segment.
pub(super) fn framing_of(head: &[u8]) -> Option<(Framing, usize)> {
    let sealed = |head: &[u8]| {
        let header = head.get(..SEGMENT_HEADER)?;
        Some(Seal {
            generation: u32_at(header, 8),
            salt: u32_at(header, 12),
        })
    };
    if head.starts_with(MAGIC) {
        Some((Framing::Sealed(sealed(head)?), SEGMENT_HEADER))
    } else if head.starts_with(CRC_MAGIC) || head.starts_with(UNSKIPPED_MAGIC) {
        Some((Framing::SealedCrc(sealed(head)?), SEGMENT_HEADER))
    } else if head.starts_with(UNPLACED_MAGIC) {
        Some((Framing::SealedUnplaced(sealed(head)?), SEGMENT_HEADER))
    } else if head.starts_with(LEGACY_MAGIC) {
        Some((Framing::Legacy, LEGACY_MAGIC.len()))
    } else {
        None
    }
}

/// The header of a segment sealed with `seal`.
pub(super) fn segment_header(seal: Seal) -> [u8; SEGMENT_HEADER] {
    let mut header = [0; SEGMENT_HEADER];
    header[..8].copy_from_slice(MAGIC);
    header[8..12].copy_from_slice(&seal.generation.to_le_bytes());
    header[12..].copy_from_slice(&seal.salt.to_le_bytes());
    header
}

/// Read segment `id`: how its records are framed and their bytes (after
/// the header), cutting a torn or corrupt tail (or a recycled file's
/// stale one) off the file when `repair`. `None`: not a segment.
pub(super) fn read_segment(dir: &Path, id: u64, repair: bool) -> Option<(Framing, Vec<u8>)> {
    let path = segment_path(dir, id);
    let mut bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "a journal segment could not be read");
            return None;
        }
    };
    let Some((framing, header)) = framing_of(&bytes) else {
        if !bytes.is_empty() {
            tracing::warn!(path = %path.display(), "not a journal segment; ignored");
        }
        return None;
    };
    bytes.drain(..header);
    let (_, valid, problem) = bodies(&bytes, framing);
    if let Some(problem) = &problem {
        tracing::warn!(
            path = %path.display(),
            offset = valid + header,
            "the journal segment ends in {problem} (a crash during a write?); what follows is ignored"
        );
    }
    // A torn record, the zeroed tail a crash left reserved, or the stale
    // records of a recycled file.
    if valid < bytes.len() {
        if repair {
            let cut = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len((valid + header) as u64));
            if let Err(error) = cut {
                tracing::warn!(path = %path.display(), %error, "the torn journal segment could not be cut");
            }
        }
        bytes.truncate(valid);
    }
    Some((framing, bytes))
}

/// Who hears that a write reached the log.
pub(super) enum Waiter {
    /// An awaiting task.
    Task(oneshot::Sender<Result<(), StoreError>>),
    /// A callback, run on the writer thread.
    Callback(Box<dyn FnOnce(Result<(), StoreError>) + Send>),
}

impl Waiter {
    fn send(self, result: Result<(), StoreError>) {
        match self {
            Waiter::Task(sender) => {
                let _ = sender.send(result);
            }
            Waiter::Callback(callback) => callback(result),
        }
    }
}

/// What a queued record does to the segment accounting once written.
#[derive(Debug)]
pub(super) enum Mark {
    /// A record of the run: it pins the segment.
    Pin(Arc<str>),
    /// The run's drop marker.
    Drop(Arc<str>),
    /// Nothing (a flush).
    None,
}

/// The visible state and the queue, behind one lock.
pub(super) struct State {
    /// The runs the log holds (started, not dropped), as last recorded,
    /// and which of them this process executes.
    pub(super) runs: RunMap<RunEntry>,
    /// Framed records queued for the next write.
    pending: Vec<u8>,
    /// Their effect on the accounting, in order.
    marks: Vec<Mark>,
    /// Who waits for them.
    waiters: Vec<Waiter>,
    /// An awaiting caller is among them: write now.
    urgent: bool,
    /// The log is closing: write what is queued and stop.
    closed: bool,
    /// What is on disk, for deletion.
    pub(super) segments: Segments,
    /// The generation the spare file ([`SPARE_FILE`]) takes when it
    /// becomes the next segment; `None`: there is no spare.
    spare: Option<u32>,
    /// When the oldest write not yet `fdatasync`ed was made (changed
    /// only under the `io` lock too, mirrored by [`Io::unsynced`]).
    unsynced_since: Option<Instant>,
    /// The segment being written is half full and no file is ready to
    /// follow it: the writer thread is to prepare one. (The first
    /// segment's file is prepared by the open.)
    prepare: bool,
}

/// The log, shared by the journal's handles and its writer.
pub(super) struct Shared {
    dir: PathBuf,
    sync: StoreSync,
    state: Mutex<State>,
    wake: Condvar,
    /// The file being appended to. Held by whoever writes a batch (the
    /// writer thread, or a caller writing its own record) from taking the
    /// batch until it is written, and by readers of segment files, so a
    /// reader sees every record either in a file or in the queue.
    io: Mutex<Io>,
    /// The queue holds records: a run writing its own records in place
    /// writes them first (read without the state lock, so a record queued
    /// a moment ago may wait for the next write).
    queued: AtomicBool,
    /// The next run number (see [`RunKey::Bound`]).
    numbers: AtomicU64,
}

/// The segment file being appended to.
#[derive(Default)]
struct Io {
    active: Option<Active>,
    /// The id of the segment the next write goes to: `active`'s, until it
    /// is full or a write to it failed.
    active_id: u64,
    /// A write was made since the last `fdatasync` (the state's
    /// `unsynced_since` is set), so a write need not take the state lock
    /// to say so.
    unsynced: bool,
    /// The file made ready to be the next segment ([`PREPARED_FILE`]).
    prepared: Option<Prepared>,
    /// The writer thread was asked to prepare a file for the segment
    /// after the one being written.
    prepare_asked: bool,
    /// Handles of segments closed since the last sync, which syncs them.
    closing: Vec<File>,
    /// A segment was named (a prepared file renamed) since the last sync,
    /// which syncs the directory first.
    dir_unsynced: bool,
    /// The shard's staging ring ([`super::ring`]), while no segment is
    /// open to lend it to; `None` when the store syncs every commit, where
    /// there is none, and while a stranded segment keeps it.
    ring: Option<Ring>,
    /// Whether the ring was made (or tried): when the first segment opens.
    ring_tried: bool,
    /// A segment closed while its staged appends could not be copied to
    /// it: it keeps the ring until a sync copies them, then is synced.
    stranded: Option<Active>,
    /// The last batch's buffers, emptied, swapped in for the queue's so
    /// it does not grow from nothing for every batch.
    spare: Vec<u8>,
    spare_marks: Vec<Mark>,
}

impl Shared {
    /// The log in `dir` with the state replayed from its segments (the
    /// runs it holds); new records go to segment `active`.
    pub(super) fn new(
        dir: PathBuf,
        sync: StoreSync,
        runs: RunMap<RunEntry>,
        segments: Segments,
        active: u64,
        spare: Option<u32>,
    ) -> Arc<Self> {
        Arc::new(Shared {
            dir,
            sync,
            state: Mutex::new(State {
                runs,
                pending: Vec::new(),
                marks: Vec::new(),
                waiters: Vec::new(),
                urgent: false,
                closed: false,
                segments,
                spare,
                unsynced_since: None,
                prepare: false,
            }),
            wake: Condvar::new(),
            io: Mutex::new(Io {
                active_id: active,
                ..Io::default()
            }),
            queued: AtomicBool::new(false),
            numbers: AtomicU64::new(1),
        })
    }

    /// Note that this process no longer executes `run` (if the log still
    /// holds it).
    pub(super) fn unmark(&self, run: &str) {
        if let Some(entry) = self.state().runs.get_mut(run) {
            entry.live = false;
        }
    }

    /// Have the writer thread make the next segment's file ready.
    pub(super) fn ask_to_prepare(&self) {
        self.state().prepare = true;
        self.wake.notify_one();
    }

    /// A number for a run begun through this log, unique among them.
    pub(super) fn next_number(&self) -> u64 {
        self.numbers.fetch_add(1, Ordering::Relaxed)
    }

    /// The state, locked.
    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Resolves once everything queued in this log before the call is
    /// written.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the write fails or the log is closed.
    pub(super) async fn flush(&self) -> Result<(), StoreError> {
        self.write(&[], Mark::None, |_| {}).await
    }

    /// Queue `record` with its `mark` and write it, with whatever was
    /// queued before it: on the caller's thread when writes need no
    /// `fdatasync` each ([`Self::writes_in_place`]), else by the writer
    /// thread at once. `update` changes the visible runs in the same step.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the write fails or the log is closed.
    pub(super) async fn write(
        &self,
        record: &[u8],
        mark: Mark,
        update: impl FnOnce(&mut RunMap<RunEntry>),
    ) -> Result<(), StoreError> {
        if !self.writes_in_place() {
            let (done, written) = oneshot::channel();
            self.push(record, mark, update, Some(Waiter::Task(done)));
            return written.await.unwrap_or(Err(StoreError::Closed));
        }
        if !self.push(record, mark, update, None) {
            return Err(StoreError::Closed);
        }
        self.write_now()
    }

    /// Queue `record` with its `mark`; `update` changes the visible runs
    /// in the same step. `waiter` hears when it is written; a
    /// [`Waiter::Task`] has it written at once, a callback within
    /// [`QUEUED_DELAY`], or, when callers write in place
    /// ([`Self::writes_in_place`]), with the next write anyone makes (the
    /// writer thread makes one at its next sync at the latest, and is
    /// woken when no sync is due). A record nobody waits for wakes no one:
    /// it goes out with the next write (every run's last record is waited
    /// for). Returns whether it was queued: not once the log is closed
    /// (the waiter then hears so).
    pub(super) fn push(
        &self,
        record: &[u8],
        mark: Mark,
        update: impl FnOnce(&mut RunMap<RunEntry>),
        waiter: Option<Waiter>,
    ) -> bool {
        let mut state = self.state();
        if state.closed {
            drop(state);
            if let Some(waiter) = waiter {
                waiter.send(Err(StoreError::Closed));
            }
            return false;
        }
        update(&mut state.runs);
        self.enqueue(&mut state, record, mark);
        let wake = match waiter {
            Some(waiter) => {
                let urgent = matches!(waiter, Waiter::Task(_));
                let first = state.waiters.is_empty() || (urgent && !state.urgent);
                // Written in place, a callback rides on the next write; the
                // writer thread, asleep until its next sync, makes that
                // write then, so it needs waking only when no sync is due.
                let rides = !urgent && self.writes_in_place() && state.unsynced_since.is_some();
                state.waiters.push(waiter);
                state.urgent |= urgent;
                first && !rides
            }
            None => false,
        };
        drop(state);
        if wake {
            self.wake.notify_one();
        }
        true
    }

    /// Queue `record` with its `mark` only when `decide`, run under the
    /// same lock as the queueing, says so after changing the visible runs:
    /// for a change that holds only while the run's entry stays as it was
    /// seen (a prune must not drop a run that became live since). Nobody
    /// waits for it. Returns whether it was queued.
    pub(super) fn push_if(
        &self,
        record: &[u8],
        mark: Mark,
        decide: impl FnOnce(&mut RunMap<RunEntry>) -> bool,
    ) -> bool {
        let mut state = self.state();
        if state.closed || !decide(&mut state.runs) {
            return false;
        }
        self.enqueue(&mut state, record, mark);
        true
    }

    /// Append `record` and its `mark` to what `state` has queued, and say
    /// that something is.
    fn enqueue(&self, state: &mut State, record: &[u8], mark: Mark) {
        state.pending.extend_from_slice(record);
        state.marks.push(mark);
        self.queued.store(true, Ordering::Release);
    }

    /// Every record of `run` on disk and queued, in order, from its last
    /// drop on.
    pub(super) fn read_run<T>(
        &self,
        run: &str,
        mut visit: impl FnMut(Record<'_>) -> Option<T>,
    ) -> Vec<T> {
        let mut io = lock(&self.io);
        // The segments being written hold their staged appends too.
        let Io {
            active, stranded, ..
        } = &mut *io;
        for segment in [active, stranded].into_iter().flatten() {
            if let Err(error) = segment.file.copy_staged() {
                tracing::warn!(%error, segment = segment.id, "staged journal appends could not be copied to their segment; they are not read back");
            }
        }
        let ids = self.state().segments.of(run);
        let mut found = Vec::new();
        let mut take = |bytes: &[u8], framing: Framing, found: &mut Vec<T>| {
            let mut binds = Binds::default();
            for body in bodies(bytes, framing).0 {
                match decode(body, &mut binds) {
                    Ok(record) if record.run() == run => {
                        if matches!(
                            record,
                            Record::Drop { .. } | Record::Finish { drop: true, .. }
                        ) {
                            found.clear();
                        } else if let Some(value) = visit(record) {
                            found.push(value);
                        }
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(run, %error, "a journal record is corrupt"),
                }
            }
        };
        for id in ids {
            if let Some((framing, bytes)) = read_segment(&self.dir, id, false) {
                take(&bytes, framing, &mut found);
            }
        }
        let pending = self.state().pending.clone();
        take(&pending, Framing::Unsealed, &mut found);
        found
    }

    /// Stop the writer once what is queued is written.
    pub(super) fn close(&self) {
        self.state().closed = true;
        self.wake.notify_one();
    }
}

/// What the writer does next.
enum Next {
    /// Write the queue.
    Write,
    /// Sync what was written.
    Sync,
    /// Make a file ready to be the next segment.
    Prepare,
    /// Stop.
    Stop,
}

/// A file made ready to be the next segment, under [`PREPARED_FILE`]:
/// its header written and synced, the rename all that is left.
struct Prepared {
    file: File,
    seal: Seal,
    /// The bytes of it reserved already ([`mapped::warm`]).
    reserved: u64,
}

/// The file being appended to.
struct Active {
    id: u64,
    /// What seals its records.
    seal: Seal,
    file: SegmentFile,
}

/// The writer thread: write the queue in batches until the log closes,
/// and sync on the store's interval.
pub(super) fn write_loop(shared: &Shared) {
    let interval = match shared.sync {
        StoreSync::Always => None,
        StoreSync::Interval(ms) => Some(Duration::from_millis(ms.max(1))),
    };
    loop {
        match wait(shared, interval) {
            Next::Stop => {
                sync_now(shared);
                return;
            }
            Next::Sync => {
                // What rode waiting for a write goes out with the sync. A
                // failed write is logged, and its waiters hear of it.
                let _ = shared.write_now();
                sync_now(shared);
            }
            Next::Write => {
                let _ = shared.write_now();
            }
            Next::Prepare => prepare_next(shared),
        }
    }
}

/// Make a file ready to be the next segment, off the appending runs'
/// path: the spare (renamed [`PREPARED_FILE`]) or a new file, with the
/// header of its next life written and synced and its pages read in
/// ([`mapped::warm`]), so that the run whose append fills the segment only
/// renames it and maps it, and its appends find the pages cached. Called
/// by the writer thread, and when the journal's first shard is opened for
/// its first segment.
pub(super) fn prepare_next(shared: &Shared) {
    if lock(&shared.io).prepared.is_some() {
        return;
    }
    let target = shared.dir.join(PREPARED_FILE);
    // Taken and renamed under the state lock: a segment retired meanwhile
    // (renamed to the spare's name under the same lock) cannot take the
    // spare's place between the two.
    let spare = {
        let mut state = shared.state();
        state.spare.take().map(|generation| {
            std::fs::rename(shared.dir.join(SPARE_FILE), &target).map(|()| generation)
        })
    };
    let made = (|| -> std::io::Result<Prepared> {
        let (mut file, generation) = match spare.transpose()? {
            Some(generation) => {
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&target)?;
                (file, generation)
            }
            None => (mapped::create(&target)?, 1),
        };
        let seal = Seal::fresh(generation);
        file.write_all(&segment_header(seal))?;
        // A reused file's new generation is on disk before it is named a
        // segment (else, after a power loss, its stale records could read
        // as the segment's).
        file.sync_data()?;
        let reserved = mapped::warm(&file, SEGMENT_BYTES);
        Ok(Prepared {
            file,
            seal,
            reserved,
        })
    })();
    match made {
        Ok(prepared) => lock(&shared.io).prepared = Some(prepared),
        Err(error) => {
            tracing::warn!(%error, "the next journal segment could not be prepared; it will be made when needed");
            let _ = std::fs::remove_file(&target);
        }
    }
}

impl Shared {
    /// Whether a caller may write its own record at once instead of
    /// waiting for the writer thread: when no `fdatasync` is owed per
    /// write, a `write` is a few microseconds, and doing it in place
    /// spares the run a trip through another thread.
    pub(super) fn writes_in_place(&self) -> bool {
        self.sync != StoreSync::Always
    }

    /// Write everything queued now, on the caller's thread.
    pub(super) fn write_now(&self) -> Result<(), StoreError> {
        let mut io = lock(&self.io);
        let (result, waiters) = write_batch(self, &mut io);
        drop(io);
        for waiter in waiters {
            waiter.send(result.clone());
        }
        result
    }
}

/// `fdatasync` what was written, if anything, without holding the file's
/// lock through the sync: runs go on appending meanwhile (a sync takes
/// milliseconds, a thousand appends' worth), and what they append is
/// marked unsynced again, for the next sync. Segments closed since the
/// last sync are synced first, then the directory if a segment was named.
fn sync_now(shared: &Shared) {
    let (closing, dir, file) = {
        let mut io = lock(&shared.io);
        unstrand(&mut io);
        let closing = std::mem::take(&mut io.closing);
        let dir = std::mem::take(&mut io.dir_unsynced);
        let unsynced = io.unsynced;
        let file = match &mut io.active {
            Some(active) if unsynced => {
                // With its staged appends copied to it; synced unmapped:
                // one TLB shootdown, not one per page.
                Some(active.file.catch_up().and_then(|()| active.file.handle()))
            }
            _ => None,
        };
        // With no segment open (its write failed, or the next could not
        // be made), what was written is among the closing ones.
        if io.unsynced {
            shared.state().unsynced_since = None;
            io.unsynced = false;
        }
        (closing, dir, file)
    };
    let mut failed = false;
    for closed in closing {
        if let Err(error) = closed.sync_data() {
            tracing::error!(%error, "a closed journal segment could not be synced");
        }
    }
    if dir && let Err(error) = File::open(&shared.dir).and_then(|dir| dir.sync_all()) {
        tracing::error!(%error, "the journal's directory could not be synced; trying again at the next interval");
        lock(&shared.io).dir_unsynced = true;
        failed = true;
    }
    if let Some(file) = file
        && let Err(error) = file.and_then(|file| file.sync_data())
    {
        tracing::error!(%error, "the journal could not be synced; trying again at the next interval");
        failed = true;
    }
    if failed {
        // Not at once: at the next interval.
        let mut io = lock(&shared.io);
        shared.state().unsynced_since = Some(Instant::now());
        io.unsynced = true;
    }
}

/// Take the queue and write it to the active segment (synced when the
/// store syncs every commit); returns the outcome and who waits for it.
fn write_batch(shared: &Shared, io: &mut Io) -> (Result<(), StoreError>, Vec<Waiter>) {
    let mut bytes = std::mem::take(&mut io.spare);
    let mut marks = std::mem::take(&mut io.spare_marks);
    bytes.clear();
    marks.clear();
    let waiters = {
        let mut state = shared.state();
        state.urgent = false;
        std::mem::swap(&mut state.pending, &mut bytes);
        std::mem::swap(&mut state.marks, &mut marks);
        shared.queued.store(false, Ordering::Release);
        std::mem::take(&mut state.waiters)
    };
    if bytes.is_empty() && marks.is_empty() {
        io.spare = bytes;
        io.spare_marks = marks;
        return (Ok(()), waiters);
    }
    let result = append(shared, io, &mut bytes, None).and_then(|()| {
        if shared.sync == StoreSync::Always {
            sync(&mut io.active)
        } else {
            Ok(())
        }
    });
    io.spare = bytes;
    match &result {
        Ok(()) => settle(shared, io, &mut marks),
        Err(error) => {
            tracing::error!(%error, records = marks.len(), "journal records could not be written");
            abandon_segment(io);
        }
    }
    io.spare_marks = marks;
    (result, waiters)
}

/// Never append after a torn write: the next write starts a new segment.
/// What was written to the abandoned one is still synced with the next
/// sync.
fn abandon_segment(io: &mut Io) {
    if io.active.as_ref().is_some_and(|a| a.id == io.active_id) {
        io.active_id += 1;
    }
    if let Some(old) = io.active.take() {
        let unsynced = io.unsynced;
        close_segment(io, old, unsynced);
    }
}

/// Segment `old` is no longer written: its staged appends copied to it,
/// the ring goes back to the shard, and with `sync` it is synced at the
/// next sync. When the copy fails the segment is stranded: it keeps the
/// ring (and its appends) until a sync copies them ([`unstrand`]).
fn close_segment(io: &mut Io, mut old: Active, sync: bool) {
    match old.file.take_ring() {
        Ok(ring) => {
            io.ring = io.ring.take().or(ring);
            if sync {
                sync_later(io, &mut old);
            }
        }
        Err(error) => {
            tracing::error!(%error, segment = old.id, "a closed journal segment's staged appends could not be copied to it; trying again at the next sync");
            if let Some(earlier) = io.stranded.replace(old) {
                // Only a segment with a ring is stranded, and the shard
                // has one ring: there is never an earlier one.
                tracing::error!(segment = earlier.id, "a second stranded journal segment");
            }
        }
    }
}

/// Close a stranded segment again: once its staged appends are copied to
/// it at last, it gives back the ring and is synced with the closed
/// segments; else it stays stranded until the next sync.
fn unstrand(io: &mut Io) {
    if let Some(stranded) = io.stranded.take() {
        close_segment(io, stranded, true);
    }
}

/// Have the writer thread's next sync `fdatasync` the segment `old`, which
/// is being closed (synced at once if no handle to it can be kept).
fn sync_later(io: &mut Io, old: &mut Active) {
    match old.file.handle() {
        Ok(handle) => io.closing.push(handle),
        Err(_) => {
            let _ = old.file.sync_data();
        }
    }
}

/// How the records a run writes in place end it
/// ([`Shared::write_run`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum RunEnd {
    /// The run finished and is kept (with its entries) until pruned, as
    /// of `updated_ms`.
    Kept {
        /// When it finished, in milliseconds since the Unix epoch.
        updated_ms: u64,
    },
    /// The run finished and is dropped: its records are void.
    Dropped,
}

impl Shared {
    /// The shard's directory.
    pub(super) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Write `bytes`, framed records of `run` in order, on the caller's
    /// thread (when [`Self::writes_in_place`]), after whatever the queue
    /// holds; leaves `bytes` empty. `pinned` is the segment the accounting
    /// already has the run pinned in, kept up to date, so that a run's
    /// writes after its first in a segment take no lock but the file's;
    /// `end`: the records finish the run, which, once they are written,
    /// the runs map has dropped, or finished and no longer live.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the write fails (the records are lost).
    pub(super) fn write_run(
        &self,
        bytes: &mut Vec<u8>,
        run: RunWriting<'_>,
        pinned: &mut Option<u64>,
        end: Option<RunEnd>,
    ) -> Result<(), StoreError> {
        let mut io = lock(&self.io);
        let queued = self
            .queued
            .load(Ordering::Acquire)
            .then(|| write_batch(self, &mut io));
        let bind = run.number.map(|number| Bind {
            number,
            run: run.id,
            pinned: *pinned,
            fresh: run.fresh,
        });
        let result = append(self, &mut io, bytes, bind);
        if result.is_ok()
            && run.fresh
            && let (Some(number), Some(RunEnd::Dropped)) = (run.number, end)
            && let Some(active) = io.active.as_mut()
        {
            active.file.drop_run(number);
        }
        let run = run.id;
        bytes.clear();
        match &result {
            Ok(()) => settle_run(self, &mut io, run, pinned, end),
            Err(error) => {
                tracing::error!(%error, run = &**run, "a run's journal records could not be written");
                abandon_segment(&mut io);
            }
        }
        drop(io);
        if let Some((result, waiters)) = queued {
            for waiter in waiters {
                waiter.send(result.clone());
            }
        }
        result
    }
}

/// A run's records were written in place to the active segment: pin it
/// for the run unless it is already, end the run if they do, note the
/// first write since the last sync, and retire what is spent. Takes the
/// state lock only when one of these has something to do.
fn settle_run(
    shared: &Shared,
    io: &mut Io,
    run: &Arc<str>,
    pinned: &mut Option<u64>,
    end: Option<RunEnd>,
) {
    let Some(written) = io.active.as_ref().map(|a| a.id) else {
        return;
    };
    let first_unsynced = shared.sync != StoreSync::Always && !io.unsynced;
    let newly_pinned = *pinned != Some(written);
    if !newly_pinned && end.is_none() && !first_unsynced {
        return;
    }
    let mut state = shared.state();
    if newly_pinned {
        state.segments.record(run, written);
        *pinned = Some(written);
    }
    match end {
        Some(RunEnd::Dropped) => {
            state.segments.drop_run(run, written);
            state.runs.remove(&**run);
        }
        Some(RunEnd::Kept { updated_ms }) => {
            if let Some(record) = state.runs.get_mut(&**run) {
                record.status = super::JournalStatus::Finished;
                record.updated_ms = updated_ms;
                record.live = false;
            }
        }
        None => {}
    }
    if first_unsynced {
        state.unsynced_since = Some(Instant::now());
        io.unsynced = true;
    }
    if newly_pinned || end.is_some() {
        retire_spent(shared, &mut state, io.active_id.min(written));
    }
    drop(state);
    // The writer thread syncs it within the interval.
    if first_unsynced {
        shared.wake.notify_one();
    }
}

/// Wait for work: an awaited record, a queued one that waited long
/// enough, a sync that is due, or closing.
fn wait(shared: &Shared, interval: Option<Duration>) -> Next {
    let mut state = shared.state();
    let mut queued_since: Option<Instant> = None;
    loop {
        if state.closed {
            return if state.pending.is_empty() && state.waiters.is_empty() {
                Next::Stop
            } else {
                Next::Write
            };
        }
        if state.urgent {
            return Next::Write;
        }
        if state.prepare {
            state.prepare = false;
            return Next::Prepare;
        }
        let mut timeout: Option<Duration> = None;
        if !state.pending.is_empty() || !state.waiters.is_empty() {
            let since = *queued_since.get_or_insert_with(Instant::now);
            let left = QUEUED_DELAY.saturating_sub(since.elapsed());
            if left.is_zero() {
                return Next::Write;
            }
            timeout = Some(left);
        }
        if let (Some(since), Some(every)) = (state.unsynced_since, interval) {
            let left = every.saturating_sub(since.elapsed());
            if left.is_zero() {
                return Next::Sync;
            }
            timeout = Some(timeout.map_or(left, |t| t.min(left)));
        }
        state = match timeout {
            Some(timeout) => crate::sync::wait_timeout(&shared.wake, state, timeout),
            None => crate::sync::wait(&shared.wake, state),
        };
    }
}

/// A run whose records are written in place: its id, and its number
/// when its records name it by that ([`RunKey::Bound`]).
#[derive(Clone, Copy, Debug)]
pub(super) struct RunWriting<'a> {
    /// The run's id.
    pub(super) id: &'a Arc<str>,
    /// Its number in the segments this process writes.
    pub(super) number: Option<u64>,
    /// Begun by this process, not resumed: all its records are in the
    /// segments this process writes (so, dropped before any of them were
    /// copied from the staging ring, none need be).
    pub(super) fresh: bool,
}

/// What [`append`] needs to bind a run's number in the segment a batch
/// of its records goes to.
struct Bind<'a> {
    number: u64,
    run: &'a str,
    /// The segment the run's records last went to (bound there).
    pinned: Option<u64>,
    /// The run was begun by this process ([`RunWriting::fresh`]).
    fresh: bool,
}

/// The bytes of a bind record, at most: header, tag, number, id.
fn bind_len(run: &str) -> usize {
    RECORD_HEADER + 1 + 10 + run.len()
}

/// Append `bytes` to the segment being written (`io.active_id`), opening
/// (creating) it first when the file open is another; a batch that does
/// not fit the open segment starts the next one. With `bind`, the
/// records name their run by number: a segment the run has not written
/// to before gets the record binding it first, unless the batch starts
/// with the run's start record (which binds it). A failed write is cut
/// back off the file.
fn append(
    shared: &Shared,
    io: &mut Io,
    bytes: &mut [u8],
    bind: Option<Bind<'_>>,
) -> Result<(), StoreError> {
    if bytes.is_empty() {
        return Ok(());
    }
    let room = bytes.len() + bind.as_ref().map_or(0, |b| bind_len(b.run));
    if io
        .active
        .as_ref()
        .is_some_and(|a| a.id == io.active_id && !a.file.fits(room))
    {
        io.active_id += 1;
    }
    let id = io.active_id;
    if io.active.as_ref().is_none_or(|a| a.id != id) {
        if let Some(old) = io.active.take() {
            // Its staged appends copied to it, the ring goes to the next.
            close_segment(io, old, shared.sync != StoreSync::Always);
        }
        io.active = Some(open_segment(shared, io, id, room)?);
        io.prepare_asked = false;
    }
    let Some(segment) = io.active.as_mut() else {
        return Err(StoreError::Closed);
    };
    if let Some(bind) = &bind
        && bind.pinned != Some(id)
        && bytes.get(RECORD_HEADER) != Some(&START_BOUND)
    {
        let mut record = Vec::with_capacity(bind_len(bind.run));
        put_bind(&mut record, bind.number, bind.run);
        seal_batch(&mut record, segment.seal, segment.file.len());
        segment.file.append(&record).map_err(crate::store::io)?;
    }
    seal_batch(bytes, segment.seal, segment.file.len());
    // A batch that starts a run begun here is tracked as that run's, and
    // so are the run's later batches while all of them are staged.
    let staged_run = bind.as_ref().map(|bind| StagedRun {
        number: bind.number,
        starts: bind.fresh && bytes.get(RECORD_HEADER) == Some(&START_BOUND),
    });
    segment
        .file
        .append_for(bytes, staged_run)
        .map_err(crate::store::io)?;
    let len = segment.file.len();
    if len >= SEGMENT_BYTES {
        io.active_id += 1;
    }
    // Half full: the writer thread makes the next segment's file ready.
    if shared.sync != StoreSync::Always
        && len >= SEGMENT_BYTES / 2
        && !io.prepare_asked
        && io.prepared.is_none()
    {
        io.prepare_asked = true;
        shared.state().prepare = true;
        shared.wake.notify_one();
    }
    Ok(())
}

/// Start segment `id`, with room reserved for at least `batch` bytes of
/// records: the spare renamed, when there is one, else a new file.
fn open_segment(shared: &Shared, io: &mut Io, id: u64, batch: usize) -> Result<Active, StoreError> {
    let path = segment_path(&shared.dir, id);
    let capacity = SEGMENT_BYTES.max(SEGMENT_HEADER as u64 + batch as u64);
    if let Some(Prepared {
        file,
        seal,
        reserved,
    }) = io.prepared.take()
    {
        match std::fs::rename(shared.dir.join(PREPARED_FILE), &path) {
            Ok(()) => {
                let sync_dir_now = shared.sync == StoreSync::Always;
                return Ok(named_segment(
                    shared,
                    io,
                    id,
                    (file, seal),
                    (capacity, reserved),
                    sync_dir_now,
                ));
            }
            Err(error) => {
                tracing::warn!(%error, "the prepared journal segment could not be named; making one now");
                let _ = std::fs::remove_file(shared.dir.join(PREPARED_FILE));
            }
        }
    }
    let spare = shared.state().spare.take();
    let reused = spare.and_then(|generation| match reuse_spare(shared) {
        Ok(file) => Some((file, generation)),
        Err(error) => {
            tracing::warn!(%error, "the journal's spare segment could not be reused; starting a new one");
            let _ = std::fs::remove_file(shared.dir.join(SPARE_FILE));
            None
        }
    });
    let is_reused = reused.is_some();
    let (mut file, generation) = match reused {
        Some(reused) => reused,
        None => {
            let file = mapped::create(&path)
                .map_err(|e| StoreError::Io(format!("cannot create {}: {e}", path.display())))?;
            (file, 1)
        }
    };
    let seal = Seal::fresh(generation);
    file.write_all(&segment_header(seal))
        .map_err(crate::store::io)?;
    // A reused file is made durable in every mode, a new one when the
    // store syncs every commit.
    if is_reused || shared.sync == StoreSync::Always {
        // A reused file's new generation must be on disk before its new
        // name: else, after a power loss, its stale records could read as
        // records of the segment.
        file.sync_data().map_err(crate::store::io)?;
        if is_reused {
            std::fs::rename(shared.dir.join(SPARE_FILE), &path).map_err(|e| {
                StoreError::Io(format!(
                    "cannot rename the spare segment to {}: {e}",
                    path.display()
                ))
            })?;
        }
    }
    // The name must survive a power loss too (a renamed spare's lost, the
    // records synced into it would be in a file no open replays): synced
    // now when the file was, else with the next interval sync.
    let sync_dir_now = is_reused || shared.sync == StoreSync::Always;
    Ok(named_segment(
        shared,
        io,
        id,
        (file, seal),
        (capacity, 0),
        sync_dir_now,
    ))
}

/// Segment `id`, its file (with its header, `seal`'s) just given its
/// name: the directory synced now when `sync_dir_now`, else marked for the
/// next interval sync; counted in the accounting; mapped for appends with
/// `capacity` bytes reserved (of which `reserved` were already).
fn named_segment(
    shared: &Shared,
    io: &mut Io,
    id: u64,
    (file, seal): (File, Seal),
    (capacity, reserved): (u64, u64),
    sync_dir_now: bool,
) -> Active {
    if sync_dir_now {
        if let Ok(dir) = File::open(&shared.dir) {
            let _ = dir.sync_all();
        }
    } else {
        io.dir_unsynced = true;
    }
    shared.state().segments.add(id);
    if !io.ring_tried && shared.sync != StoreSync::Always {
        io.ring_tried = true;
        io.ring = Ring::open(&shared.dir);
    }
    let ring = io.ring.take().map(|mut ring| {
        ring.begin(id, seal, SEGMENT_HEADER as u64);
        ring
    });
    Active {
        id,
        seal,
        file: SegmentFile::new(
            file,
            SEGMENT_HEADER as u64,
            (capacity, reserved),
            true,
            ring,
        ),
    }
}

/// Open the spare file for reuse, positioned at its start (its old
/// records stay until overwritten).
fn reuse_spare(shared: &Shared) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(shared.dir.join(SPARE_FILE))
}

/// Segment `id` is no longer needed: keep it as the spare when there is
/// none and it has generations, else delete it. Returns whether it is
/// gone from the segments.
fn retire(shared: &Shared, state: &mut State, id: u64) -> bool {
    let path = segment_path(&shared.dir, id);
    if state.spare.is_none()
        && let Some(generation) = next_generation(&path)
    {
        match std::fs::rename(&path, shared.dir.join(SPARE_FILE)) {
            Ok(()) => {
                state.spare = Some(generation);
                return true;
            }
            Err(error) => {
                tracing::debug!(path = %path.display(), %error, "a spent journal segment could not be kept for reuse");
            }
        }
    }
    match std::fs::remove_file(&path) {
        Ok(()) => true,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => true,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "a finished journal segment could not be deleted");
            false
        }
    }
}

/// The generation the segment file at `path` would take if reused: one
/// above its own. `None` for a legacy segment (its records carry no
/// generation, so its stale ones could read as new) or an unreadable one.
pub(super) fn next_generation(path: &Path) -> Option<u32> {
    let mut head = [0u8; SEGMENT_HEADER];
    let mut file = File::open(path).ok()?;
    std::io::Read::read_exact(&mut file, &mut head).ok()?;
    let seal = framing_of(&head)?.0.seal()?;
    Some(seal.generation.wrapping_add(1).max(2))
}

/// `fdatasync` the active segment, its written pages unmapped first (one
/// TLB shootdown instead of one per page written back).
fn sync(active: &mut Option<Active>) -> Result<(), StoreError> {
    match active {
        Some(active) => active.file.sync_data().map_err(crate::store::io),
        None => Ok(()),
    }
}

/// A batch was written to the active segment: apply its marks (leaving
/// them empty), note the first write since the last sync (waking the
/// writer thread to sync it within the interval), and retire the segments
/// nothing needs any more.
fn settle(shared: &Shared, io: &mut Io, marks: &mut Vec<Mark>) {
    let Some(written) = io.active.as_ref().map(|a| a.id) else {
        return;
    };
    let mut state = shared.state();
    for mark in marks.drain(..) {
        match mark {
            Mark::Pin(run) => state.segments.record(&run, written),
            Mark::Drop(run) => state.segments.drop_run(&run, written),
            Mark::None => {}
        }
    }
    let first_unsynced = shared.sync != StoreSync::Always && !io.unsynced;
    if first_unsynced {
        state.unsynced_since = Some(Instant::now());
        io.unsynced = true;
    }
    retire_spent(shared, &mut state, io.active_id.min(written));
    drop(state);
    if first_unsynced {
        shared.wake.notify_one();
    }
}

/// Retire every segment below `below` that nothing needs any more.
fn retire_spent(shared: &Shared, state: &mut State, below: u64) {
    while let Some(id) = state.segments.next_deletable(below) {
        if !retire(shared, state, id) {
            break;
        }
        state.segments.deleted(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_torn_tail_is_found() {
        let entry = JournalEntry::new(EntryKind::Completion, b"q", b"answer".to_vec());
        let mut bytes = entry_record("run-1", "0.3:1", 7, &entry).unwrap();
        bytes.extend(finish_record("run-1", true, 5));
        bytes.extend(drop_record("run-2"));
        // Queued records are walked before they are sealed.
        assert_eq!(bodies(&bytes, Framing::Unsealed).0.len(), 3);
        seal_batch(&mut bytes, FRESH, AT);
        let (found, valid, problem) = bodies(&bytes, SEALED);
        assert_eq!((found.len(), valid, problem), (3, bytes.len(), None));
        match decode(found[0], &mut Binds::default()).unwrap() {
            Record::Entry {
                run,
                scope,
                seq,
                entry: decoded,
            } => {
                assert_eq!((run, scope, seq), ("run-1", "0.3:1", 7));
                assert_eq!(decoded, entry);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode(found[1], &mut Binds::default()).unwrap(),
            Record::Finish {
                run: "run-1",
                drop: true,
                updated_ms: 5
            }
        ));
        assert!(matches!(
            decode(found[2], &mut Binds::default()).unwrap(),
            Record::Drop { run: "run-2" }
        ));
        // A torn last record: the first two still read.
        let torn = &bytes[..bytes.len() - 3];
        let (found, _, problem) = bodies(torn, SEALED);
        assert_eq!(found.len(), 2);
        assert!(problem.is_some());
        // A flipped byte fails the checksum.
        let mut flipped = bytes.clone();
        flipped[16] ^= 1;
        let (found, valid, problem) = bodies(&flipped, SEALED);
        assert_eq!((found.len(), valid), (0, 0));
        assert!(problem.unwrap().contains("checksum"));
        // A mapped segment's reserved tail is zeros: the records end there,
        // with no problem, however long the tail (even shorter than a header).
        for tail in [3, 8, 4096] {
            let mut padded = bytes.clone();
            padded.resize(bytes.len() + tail, 0);
            assert_eq!(bodies(&padded, SEALED).1, bytes.len());
            assert_eq!(bodies(&padded, SEALED).2, None);
            assert_eq!(bodies(&padded, SEALED).0.len(), 3);
        }
        // A record torn in its copy (header there, body still zeros) is torn.
        let mut half = bytes.clone();
        let zeroed = half.len() - 2;
        half[zeroed..].fill(0);
        half.resize(half.len() + 64, 0);
        let (found, _, problem) = bodies(&half, SEALED);
        assert_eq!(found.len(), 2);
        assert!(problem.is_some());
        // Zeros followed by data are not a tail: they are reported.
        let mut gap = bytes.clone();
        gap.extend_from_slice(&[0; RECORD_HEADER]);
        let mut dropped = drop_record("run-3");
        seal_batch(&mut dropped, FRESH, AT + gap.len() as u64);
        gap.extend(dropped);
        let (found, valid, problem) = bodies(&gap, SEALED);
        assert_eq!((found.len(), valid), (3, bytes.len()));
        assert!(problem.unwrap().contains("zeroed"));
    }

    fn full_run() -> JournalRun {
        JournalRun {
            run: "run-9".into(),
            tenant: "acme".into(),
            user: Some("ann".into()),
            session: Some("s1".into()),
            agent: Some("helper".into()),
            architecture: "react".into(),
            prompt: "say \"hi\"\n".into(),
            output_schema: Some(serde_json::json!({"type": "object", "required": ["a"]})),
            metadata: vec![("k".into(), "v".into())],
            component: "ab12".into(),
            origin: serde_json::json!({"agent": "helper", "model": "echo"}),
            format: super::super::JournalFormat::Compact,
            status: super::super::JournalStatus::Running,
            started_ms: 17,
            updated_ms: 18,
        }
    }

    #[test]
    fn a_start_record_round_trips_compact_and_json_ones_still_read() {
        for run in [full_run(), {
            let mut bare = full_run();
            bare.user = None;
            bare.session = None;
            bare.agent = None;
            bare.output_schema = None;
            bare.metadata.clear();
            bare.origin = serde_json::Value::Null;
            bare
        }] {
            let record = start_record(&run.start(), run.started_ms, run.updated_ms, None).unwrap();
            // The body is the compact start, which a shard keeps of it.
            assert_eq!(decode_start_body(record.body()).unwrap(), run);
            let kept = decode_start_body(&start_body(&run.start()).unwrap()).unwrap();
            assert_eq!((kept.started_ms, kept.updated_ms), (0, 0));
            assert_eq!(
                JournalRun {
                    started_ms: run.started_ms,
                    updated_ms: run.updated_ms,
                    ..kept
                },
                run
            );
            let mut bytes = record.into_bytes();
            assert_eq!(bytes[RECORD_HEADER], START_COMPACT);
            let seal = Seal {
                generation: 3,
                salt: 9,
            };
            seal_batch(&mut bytes, seal, AT);
            let (found, _, problem) = bodies(&bytes, Framing::Sealed(seal));
            assert_eq!((found.len(), problem), (1, None));
            match decode(found[0], &mut Binds::default()).unwrap() {
                Record::Start(decoded) => assert_eq!(*decoded, run),
                other => panic!("{other:?}"),
            }
        }
        // A start record written before the compact one: JSON.
        let mut legacy = vec![START];
        serde_json::to_writer(&mut legacy, &full_run()).unwrap();
        match decode(&legacy, &mut Binds::default()).unwrap() {
            Record::Start(decoded) => assert_eq!(*decoded, full_run()),
            other => panic!("{other:?}"),
        }
    }

    /// A new file's seal, as the tests use it.
    const FRESH: Seal = Seal {
        generation: 1,
        salt: 0x5a17_0001,
    };

    /// The framing of a segment sealed with [`FRESH`].
    const SEALED: Framing = Framing::Sealed(FRESH);

    /// Where a segment's records start: right after its header.
    const AT: u64 = SEGMENT_HEADER as u64;

    #[test]
    fn a_record_checks_only_at_the_offset_it_was_sealed_for() {
        let mut first = finish_record("run-1", true, 1);
        seal_batch(&mut first, FRESH, AT);
        let mut second = finish_record("run-2", true, 2);
        seal_batch(&mut second, FRESH, AT + first.len() as u64);
        let mut both = first.clone();
        both.extend_from_slice(&second);
        assert_eq!(bodies(&both, SEALED).0.len(), 2);
        // The same record one lap of a ring earlier or later, or swapped
        // with its neighbour, is not a record there.
        let mut swapped = second.clone();
        swapped.extend_from_slice(&first);
        let (found, valid, problem) = bodies(&swapped, SEALED);
        assert_eq!((found.len(), valid), (0, 0));
        assert!(problem.unwrap().contains("checksum"));
        let (found, _, _) = bodies_at(&first, SEALED, AT + (256 << 10));
        assert!(found.is_empty());
        assert_eq!(
            bodies_at(&second, SEALED, AT + first.len() as u64).0.len(),
            1
        );
    }

    #[test]
    fn a_record_checks_only_under_the_salt_and_generation_it_was_sealed_with() {
        let mut record = finish_record("run-1", true, 1);
        seal_batch(&mut record, FRESH, AT);
        assert_eq!(bodies(&record, SEALED).0.len(), 1);
        for other in [
            Seal {
                salt: FRESH.salt ^ 1,
                ..FRESH
            },
            Seal {
                generation: FRESH.generation + 1,
                ..FRESH
            },
        ] {
            let mut claimed = record.clone();
            claimed[4..8].copy_from_slice(&other.generation.to_le_bytes());
            let (found, valid, _) = bodies(&claimed, Framing::Sealed(other));
            assert_eq!((found.len(), valid), (0, 0));
        }
    }

    #[test]
    fn segments_checksummed_with_crc_still_read_skip_records_included() {
        // Framed as before XXH3: crc32(seal, offset, body), and a skip
        // record's crc32(seal, offset, length word).
        let crc_sealed = |record: &mut Vec<u8>, offset: u64| seal_batch_crc(record, FRESH, offset);
        let mut first = finish_record("run-1", true, 1);
        crc_sealed(&mut first, AT);
        let hole_at = AT + first.len() as u64;
        let hole = 40;
        let word = SKIP | (hole - RECORD_HEADER) as u32;
        let mut skip = word.to_le_bytes().to_vec();
        skip.extend_from_slice(&FRESH.generation.to_le_bytes());
        skip.extend_from_slice(
            &checksum_at(seal_crc(FRESH), hole_at, &word.to_le_bytes()).to_le_bytes(),
        );
        skip.resize(hole, 0xAA);
        let mut last = finish_record("run-2", true, 2);
        crc_sealed(&mut last, hole_at + hole as u64);
        for magic in [CRC_MAGIC, UNSKIPPED_MAGIC] {
            let mut file = magic.to_vec();
            file.extend_from_slice(&segment_header(FRESH)[8..]);
            file.extend_from_slice(&first);
            if magic == CRC_MAGIC {
                file.extend_from_slice(&skip);
            }
            let last_at = file.len() as u64;
            let mut last = last.clone();
            if magic == UNSKIPPED_MAGIC {
                crc_sealed(&mut last, last_at);
            }
            file.extend_from_slice(&last);
            let (framing, header) = framing_of(&file).unwrap();
            assert_eq!(
                (framing, header),
                (Framing::SealedCrc(FRESH), SEGMENT_HEADER)
            );
            let (found, valid, problem) = bodies(&file[header..], framing);
            assert_eq!(
                (found.len(), valid, problem),
                (2, file.len() - header, None)
            );
            // Read as a segment of today's framing, nothing checks.
            assert!(bodies(&file[header..], SEALED).0.is_empty());
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("old.seg");
            std::fs::write(&path, &file).unwrap();
            assert_eq!(next_generation(&path), Some(2));
        }
        // And today's records do not pass for CRC-sealed ones.
        let mut today = finish_record("run-1", true, 1);
        seal_batch(&mut today, FRESH, AT);
        assert!(bodies(&today, Framing::SealedCrc(FRESH)).0.is_empty());
    }

    #[test]
    fn segments_whose_checksums_do_not_cover_offsets_still_read() {
        // Framed as before offsets were covered: crc32(seal, body).
        let mut record = finish_record("run-1", true, 1);
        let body = record[RECORD_HEADER..].to_vec();
        let crc = checksum_after(seal_crc(FRESH), &body);
        record[4..8].copy_from_slice(&FRESH.generation.to_le_bytes());
        record[8..12].copy_from_slice(&crc.to_le_bytes());
        let mut file = UNPLACED_MAGIC.to_vec();
        file.extend_from_slice(&segment_header(FRESH)[8..]);
        file.extend_from_slice(&record);
        let (framing, header) = framing_of(&file).unwrap();
        assert_eq!(
            (framing, header),
            (Framing::SealedUnplaced(FRESH), SEGMENT_HEADER)
        );
        let (found, valid, problem) = bodies(&file[header..], framing);
        assert_eq!((found.len(), valid, problem), (1, record.len(), None));
        // Read as a segment of today's framing, it does not check.
        assert!(bodies(&file[header..], SEALED).0.is_empty());
        // Such a file is reused like any sealed one.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.seg");
        std::fs::write(&path, &file).unwrap();
        assert_eq!(next_generation(&path), Some(2));
    }

    #[test]
    fn a_recycled_files_stale_records_end_the_segment_quietly() {
        // A file's earlier life: three records of generation 6.
        let mut old = Vec::new();
        for run in ["old-1", "old-2", "old-3"] {
            old.extend(finish_record(run, true, 1));
        }
        const OLD: Seal = Seal {
            generation: 6,
            salt: 0x0bad_cafe,
        };
        const NEW: Seal = Seal {
            generation: 7,
            salt: 0x600d_f00d,
        };
        seal_batch(&mut old, OLD, AT);
        // Its new life (generation 7) overwrote the start with one record.
        let mut new = finish_record("new", false, 2);
        seal_batch(&mut new, NEW, AT);
        let mut file = old.clone();
        file[..new.len()].copy_from_slice(&new);
        // Whether the new record ends on a boundary of the old ones or
        // inside one, the segment holds exactly the new record.
        // (2: the new record ends where an old one began.)
        for cut in [0, 2, 5] {
            let mut bytes = file.clone();
            bytes.drain(new.len()..new.len() + cut);
            let (found, valid, problem) = bodies(&bytes, Framing::Sealed(NEW));
            assert_eq!((found.len(), valid), (1, new.len()), "cut {cut}");
            assert_eq!(problem, None);
            assert!(matches!(
                decode(found[0], &mut Binds::default()).unwrap(),
                Record::Finish { run: "new", .. }
            ));
        }
        // Read as its old generation, the file's old records fail their
        // checksum where the new one overwrote them.
        assert_eq!(bodies(&file, Framing::Sealed(OLD)).0.len(), 0);
        // Zeros in what an earlier life left (a payload's) end a reused
        // segment quietly too.
        let mut zeros = new.clone();
        zeros.extend_from_slice(&[0; RECORD_HEADER]);
        zeros.extend_from_slice(b"left by an earlier life");
        assert_eq!(
            bodies(&zeros, Framing::Sealed(NEW)),
            (vec![&new[RECORD_HEADER..]], new.len(), None)
        );
        // A record sealed with one generation never passes for another,
        // even with the generation field rewritten.
        let mut forged = new.clone();
        forged[4..8].copy_from_slice(&8u32.to_le_bytes());
        let eighth = Seal {
            generation: 8,
            ..NEW
        };
        let (found, _, problem) = bodies(&forged, Framing::Sealed(eighth));
        assert!(found.is_empty());
        assert!(problem.unwrap().contains("checksum"));
        // Nor for a record of the same generation under another salt: what
        // an earlier life's content could hold cannot know the new salt.
        let guessed = Seal {
            salt: NEW.salt ^ 1,
            ..NEW
        };
        let (found, _, problem) = bodies(&new, Framing::Sealed(guessed));
        assert!(found.is_empty());
        assert!(problem.unwrap().contains("checksum"));
    }

    #[test]
    fn segments_written_before_generations_still_read() {
        // The legacy framing: length, crc32(body), body.
        let body = finish_record("legacy", true, 9)[RECORD_HEADER..].to_vec();
        let mut file = LEGACY_MAGIC.to_vec();
        file.extend_from_slice(&(body.len() as u32).to_le_bytes());
        file.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        file.extend_from_slice(&body);
        let (framing, header) = framing_of(&file).unwrap();
        assert_eq!((framing, header), (Framing::Legacy, 8));
        let (found, valid, problem) = bodies(&file[header..], framing);
        assert_eq!((found.len(), valid, problem), (1, file.len() - 8, None));
        assert!(matches!(
            decode(found[0], &mut Binds::default()).unwrap(),
            Record::Finish {
                run: "legacy",
                drop: true,
                updated_ms: 9
            }
        ));
        let dir = tempfile::tempdir().unwrap();
        let legacy = dir.path().join("legacy.seg");
        std::fs::write(&legacy, &file).unwrap();
        assert_eq!(
            next_generation(&legacy),
            None,
            "a legacy segment is never reused"
        );
        let current = dir.path().join("current.seg");
        std::fs::write(
            &current,
            segment_header(Seal {
                generation: 41,
                salt: 5,
            }),
        )
        .unwrap();
        assert_eq!(next_generation(&current), Some(42));
        assert_eq!(framing_of(b"junk"), None);
        // A header cut short is not a segment (and no panic).
        assert_eq!(framing_of(&segment_header(Seal::fresh(1))[..13]), None);
        let fresh = Seal::fresh(1);
        assert_eq!(
            framing_of(&segment_header(fresh)),
            Some((Framing::Sealed(fresh), SEGMENT_HEADER))
        );
    }

    #[test]
    fn a_run_named_by_number_reads_back_by_its_id() {
        let run = full_run();
        let mut short = JournalEntry::new(EntryKind::Completion, b"q", b"answer".to_vec());
        short.fingerprint = [0; 32];
        short.fingerprint[..16].copy_from_slice(&[5; 16]);
        let mut long = short.clone();
        long.fingerprint = [7; 32];
        fn head(seq: u32, entry: &JournalEntry) -> EntryHead<'_> {
            EntryHead {
                run: RunKey::Bound(300),
                scope: "0.3:1",
                seq,
                kind: entry.kind,
                fingerprint: &entry.fingerprint,
            }
        }
        let payload = |entry: &JournalEntry| {
            let payload = entry.payload.clone();
            move |out: &mut Vec<u8>| {
                out.extend_from_slice(&payload);
                Ok(())
            }
        };
        // In the segment the run starts in, its start binds the number.
        let mut first = start_record(&run.start(), run.started_ms, run.updated_ms, Some(300))
            .unwrap()
            .into_bytes();
        put_entry(&mut first, head(1, &short), payload(&short)).unwrap();
        // In a later one, a bind record does.
        let mut later = Vec::new();
        put_bind(&mut later, 300, &run.run);
        put_entry(&mut later, head(200_000, &long), payload(&long)).unwrap();
        put_finish(&mut later, RunKey::Bound(300), true, 9);
        let by_id = entry_record(&run.run, "0.3:1", 1, &short).unwrap();
        let mut by_number = Vec::new();
        put_entry(&mut by_number, head(1, &short), payload(&short)).unwrap();
        assert!(
            // Neither the id nor the fingerprint's zero half.
            by_number.len() + run.run.len() + 16 <= by_id.len(),
            "{} bytes by number against {} by id",
            by_number.len(),
            by_id.len()
        );
        for bytes in [&mut first, &mut later] {
            seal_batch(bytes, FRESH, AT);
        }
        let (found, _, problem) = bodies(&first, SEALED);
        assert_eq!((found.len(), problem), (2, None));
        let mut binds = Binds::default();
        match decode(found[0], &mut binds).unwrap() {
            Record::Start(decoded) => assert_eq!(*decoded, run),
            other => panic!("{other:?}"),
        }
        match decode(found[1], &mut binds).unwrap() {
            Record::Entry {
                run: id,
                scope,
                seq,
                entry,
            } => {
                assert_eq!((id, scope, seq), (run.run.as_str(), "0.3:1", 1));
                assert_eq!(entry, short);
            }
            other => panic!("{other:?}"),
        }
        let (found, _, problem) = bodies(&later, SEALED);
        assert_eq!((found.len(), problem), (3, None));
        // Read alone, the later segment's entry is nobody's until bound.
        assert!(decode(found[1], &mut Binds::default()).is_err());
        let mut binds = Binds::default();
        assert!(matches!(
            decode(found[0], &mut binds).unwrap(),
            Record::Bind { run: id } if id == run.run
        ));
        match decode(found[1], &mut binds).unwrap() {
            Record::Entry {
                run: id,
                seq,
                entry,
                ..
            } => {
                assert_eq!((id, seq), (run.run.as_str(), 200_000));
                // A fingerprint with a second half is kept whole.
                assert_eq!(entry, long);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode(found[2], &mut binds).unwrap(),
            Record::Finish { run: id, drop: true, updated_ms: 9 } if id == run.run
        ));
    }

    #[test]
    fn a_checksum_resumed_after_the_seal_is_the_crc_of_seal_and_body() {
        let seal = Seal {
            generation: 0x0102_0304,
            salt: 0xdead_beef,
        };
        for body in [
            &b""[..],
            b"x",
            b"a record body of some length, past sixty-four bytes, to take the wide path",
        ] {
            let mut whole = Vec::new();
            whole.extend_from_slice(&seal.generation.to_le_bytes());
            whole.extend_from_slice(&seal.salt.to_le_bytes());
            whole.extend_from_slice(body);
            assert_eq!(
                checksum_after(seal_crc(seal), body),
                crc32fast::hash(&whole)
            );
        }
    }

    #[test]
    fn varints_round_trip_and_overlong_ones_are_refused() {
        for value in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            let mut bytes = &out[..];
            assert_eq!(take_varint(&mut bytes).unwrap(), value);
            assert!(bytes.is_empty());
        }
        // Eleven bytes, or a tenth with more than the 64th bit.
        assert!(take_varint(&mut &[0xff; 11][..]).is_err());
        let mut over = [0xff; 10];
        over[9] = 0x02;
        assert!(take_varint(&mut &over[..]).is_err());
        assert!(take_varint(&mut &[0x80][..]).is_err());
    }

    #[test]
    fn hostile_bodies_are_errors_not_panics() {
        for body in [
            &[][..],
            &[9],
            &[ENTRY],
            &[ENTRY, 0xff, 0xff, b'a'],
            &[ENTRY, 1, 0, b'r', 1, 0, b's', 0, 0, 0, 0, 99],
            &[START, b'{'],
            &[START_COMPACT],
            &[START_COMPACT, 0xff, 0xff],
            &[FINISH],
            &[DROP, 0xff, 0xfe],
            &[BIND, 0x80],
            &[BIND, 1, 0xff],
            &[
                ENTRY_BOUND,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0xff,
                0x7f,
            ],
            // Run 1 is not bound.
            &[ENTRY_BOUND, 1, 0, 0, 0x80 | 5],
            &[FINISH_BOUND, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            &[START_BOUND, 1],
        ] {
            assert!(decode(body, &mut Binds::default()).is_err(), "{body:?}");
        }
        let too_long = "x".repeat(70_000);
        let entry = JournalEntry::new(EntryKind::Random, b"", Vec::new());
        assert!(entry_record("run", &too_long, 0, &entry).is_err());
    }
}
