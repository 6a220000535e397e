//! The journal's append-only log: segment files of checksummed,
//! length-prefixed records, appended through a shared memory map. With
//! [`StoreSync::Always`] one group-committing thread writes and syncs them;
//! otherwise the caller appends in place (`Shared::write_now`) and the
//! thread only syncs on the interval.
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
//! Record: `len: u32 LE`, `crc32(body): u32 LE`, `body`. A segment file
//! (`<id>.seg`, ids increasing, a new one per process and every
//! [`SEGMENT_BYTES`]) starts with [`MAGIC`]. Opening the log replays every
//! segment; a torn record at a segment's end (a crash in a write) is cut
//! off, and whatever follows a corrupt record is ignored with a warning.

use super::mapped::{self, SegmentFile};
use super::segments::Segments;
use super::{EntryKind, JournalEntry, JournalRun};
use crate::store::{StoreError, StoreSync};
use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// The first bytes of every segment file.
pub(super) const MAGIC: &[u8; 8] = b"LOOMJNL1";

/// A segment is closed once it holds this much, at a batch boundary.
pub(super) const SEGMENT_BYTES: u64 = 32 << 20;

/// How long a record nobody awaits may wait for company before the writer
/// writes it anyway.
const QUEUED_DELAY: Duration = Duration::from_millis(2);

/// Record tags.
const START: u8 = 1;
const ENTRY: u8 = 2;
const FINISH: u8 = 3;
const DROP: u8 = 4;

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
}

impl Record<'_> {
    /// The run the record belongs to.
    pub(super) fn run(&self) -> &str {
        match self {
            Record::Start(run) => &run.run,
            Record::Entry { run, .. } | Record::Finish { run, .. } | Record::Drop { run } => run,
        }
    }
}

/// Frame `body` as a record.
fn frame(body: &[u8]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(8 + body.len());
    bytes.extend_from_slice(&[0; 8]);
    bytes.extend_from_slice(body);
    seal(bytes)
}

/// Fill in the header of a record built after 8 reserved bytes.
fn seal(mut bytes: Vec<u8>) -> Vec<u8> {
    let (header, body) = bytes.split_at_mut(8);
    header[..4].copy_from_slice(&(body.len() as u32).to_le_bytes());
    header[4..].copy_from_slice(&crc32fast::hash(body).to_le_bytes());
    bytes
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

/// The framed record of a run's start.
pub(super) fn start_record(run: &JournalRun) -> Result<Vec<u8>, StoreError> {
    let mut body = vec![START];
    serde_json::to_writer(&mut body, run).map_err(crate::store::io)?;
    Ok(frame(&body))
}

/// The framed record of an entry.
pub(super) fn entry_record(
    run: &str,
    scope: &str,
    seq: u32,
    entry: &JournalEntry,
) -> Result<Vec<u8>, StoreError> {
    let mut body = Vec::with_capacity(53 + run.len() + scope.len() + entry.payload.len());
    body.extend_from_slice(&[0; 8]);
    body.push(ENTRY);
    put_str(&mut body, run, "run id")?;
    put_str(&mut body, scope, "scope")?;
    body.extend_from_slice(&seq.to_le_bytes());
    body.push(entry.kind as u8);
    body.extend_from_slice(&entry.fingerprint);
    body.extend_from_slice(&entry.payload);
    Ok(seal(body))
}

/// The framed record of a run's end at `updated_ms`.
pub(super) fn finish_record(run: &str, drop: bool, updated_ms: u64) -> Vec<u8> {
    let mut body = Vec::with_capacity(10 + run.len());
    body.push(FINISH);
    body.push(u8::from(drop));
    body.extend_from_slice(&updated_ms.to_le_bytes());
    body.extend_from_slice(run.as_bytes());
    frame(&body)
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

/// Decode one record's body.
pub(super) fn decode(body: &[u8]) -> Result<Record<'_>, String> {
    let (&tag, mut rest) = body.split_first().ok_or("an empty record")?;
    match tag {
        START => serde_json::from_slice(rest)
            .map(|run| Record::Start(Box::new(run)))
            .map_err(|e| format!("a run record: {e}")),
        ENTRY => {
            let run = take_str(&mut rest)?;
            let scope = take_str(&mut rest)?;
            let (seq, rest) = rest.split_at_checked(4).ok_or("an entry cut short")?;
            let seq = u32::from_le_bytes([seq[0], seq[1], seq[2], seq[3]]);
            let (&kind, rest) = rest.split_first().ok_or("an entry cut short")?;
            let kind = EntryKind::from_byte(kind).ok_or(format!("entry kind {kind}"))?;
            let (print, payload) = rest.split_at_checked(32).ok_or("an entry cut short")?;
            let mut fingerprint = [0u8; 32];
            fingerprint.copy_from_slice(print);
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
        FINISH => {
            let (&drop, rest) = rest.split_first().ok_or("a finish cut short")?;
            let (when, run) = rest.split_at_checked(8).ok_or("a finish cut short")?;
            let mut millis = [0u8; 8];
            millis.copy_from_slice(when);
            let run = std::str::from_utf8(run).map_err(|e| e.to_string())?;
            Ok(Record::Finish {
                run,
                drop: drop != 0,
                updated_ms: u64::from_le_bytes(millis),
            })
        }
        DROP => Ok(Record::Drop {
            run: std::str::from_utf8(rest).map_err(|e| e.to_string())?,
        }),
        other => Err(format!("record tag {other}")),
    }
}

/// The record bodies framed in `bytes`, and where the valid ones end (a
/// torn or corrupt frame stops the walk). A zero header ends the records
/// without a problem: it is the unused, reserved tail of a segment that
/// was written through a memory map ([`super::mapped`]); no record is
/// empty.
pub(super) fn bodies(bytes: &[u8]) -> (Vec<&[u8]>, usize, Option<String>) {
    let mut found = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at..].iter().all(|&b| b == 0) {
            return (found, at, None);
        }
        let Some(header) = bytes.get(at..at + 8) else {
            return (found, at, Some("a record header cut short".into()));
        };
        if header == [0; 8] {
            return (
                found,
                at,
                Some("a zeroed record header before more data".into()),
            );
        }
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        let Some(body) = bytes.get(at + 8..at + 8 + len) else {
            return (found, at, Some("a record cut short".into()));
        };
        if crc32fast::hash(body) != crc {
            return (
                found,
                at,
                Some("a record whose checksum does not match".into()),
            );
        }
        found.push(body);
        at += 8 + len;
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

/// Read segment `id`: its record bytes (after the magic), cutting a torn
/// or corrupt tail off the file when `repair`. `None`: not a segment.
pub(super) fn read_segment(dir: &Path, id: u64, repair: bool) -> Option<Vec<u8>> {
    let path = segment_path(dir, id);
    let mut bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "a journal segment could not be read");
            return None;
        }
    };
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        if !bytes.is_empty() {
            tracing::warn!(path = %path.display(), "not a journal segment; ignored");
        }
        return None;
    }
    bytes.drain(..MAGIC.len());
    let (_, valid, problem) = bodies(&bytes);
    if let Some(problem) = &problem {
        tracing::warn!(
            path = %path.display(),
            offset = valid + MAGIC.len(),
            "the journal segment ends in {problem} (a crash during a write?); what follows is ignored"
        );
    }
    // A torn record, or the zeroed tail a crash left reserved.
    if valid < bytes.len() {
        if repair {
            let cut = std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len((valid + MAGIC.len()) as u64));
            if let Err(error) = cut {
                tracing::warn!(path = %path.display(), %error, "the torn journal segment could not be cut");
            }
        }
        bytes.truncate(valid);
    }
    Some(bytes)
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
    Pin(String),
    /// The run's drop marker.
    Drop(String),
    /// Nothing (a flush).
    None,
}

/// The visible state and the queue, behind one lock.
pub(super) struct State {
    /// The runs the log holds (started, not dropped), as last recorded.
    pub(super) runs: HashMap<String, JournalRun>,
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
    /// The segment being written.
    active: u64,
    /// When the oldest write not yet `fdatasync`ed was made.
    unsynced_since: Option<Instant>,
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
}

/// The segment file being appended to.
#[derive(Default)]
struct Io {
    active: Option<Active>,
    /// The last batch's buffers, emptied, swapped in for the queue's so
    /// it does not grow from nothing for every batch.
    spare: Vec<u8>,
    spare_marks: Vec<Mark>,
}

/// Lock `mutex`, through a poisoning (the guarded state stays usable).
pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Shared {
    /// The log in `dir` with the state replayed from its segments; new
    /// records go to segment `active`.
    pub(super) fn new(
        dir: PathBuf,
        sync: StoreSync,
        runs: HashMap<String, JournalRun>,
        segments: Segments,
        active: u64,
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
                active,
                unsynced_since: None,
            }),
            wake: Condvar::new(),
            io: Mutex::new(Io::default()),
        })
    }

    /// The state, locked.
    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
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
        update: impl FnOnce(&mut HashMap<String, JournalRun>),
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
    /// [`QUEUED_DELAY`]. A record nobody waits for wakes no one: it goes
    /// out with the next write (every run's last record is waited for).
    /// Returns whether it was queued: not once the log is closed (the
    /// waiter then hears so).
    pub(super) fn push(
        &self,
        record: &[u8],
        mark: Mark,
        update: impl FnOnce(&mut HashMap<String, JournalRun>),
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
        state.pending.extend_from_slice(record);
        state.marks.push(mark);
        let wake = match waiter {
            Some(waiter) => {
                let urgent = matches!(waiter, Waiter::Task(_));
                let first = state.waiters.is_empty() || (urgent && !state.urgent);
                state.waiters.push(waiter);
                state.urgent |= urgent;
                first
            }
            None => false,
        };
        drop(state);
        if wake {
            self.wake.notify_one();
        }
        true
    }

    /// Every record of `run` on disk and queued, in order, from its last
    /// drop on.
    pub(super) fn read_run<T>(
        &self,
        run: &str,
        mut visit: impl FnMut(Record<'_>) -> Option<T>,
    ) -> Vec<T> {
        let _io = lock(&self.io);
        let ids = self.state().segments.of(run);
        let mut found = Vec::new();
        let mut take = |bytes: &[u8], found: &mut Vec<T>| {
            for body in bodies(bytes).0 {
                match decode(body) {
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
            if let Some(bytes) = read_segment(&self.dir, id, false) {
                take(&bytes, &mut found);
            }
        }
        let pending = self.state().pending.clone();
        take(&pending, &mut found);
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
    /// Stop.
    Stop,
}

/// The file being appended to.
struct Active {
    id: u64,
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
                sync_now(shared, &lock(&shared.io));
                return;
            }
            Next::Sync => sync_now(shared, &lock(&shared.io)),
            Next::Write => {
                let mut io = lock(&shared.io);
                let (result, waiters) = write_batch(shared, &mut io);
                drop(io);
                for waiter in waiters {
                    waiter.send(result.clone());
                }
            }
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

/// `fdatasync` what was written, if anything (the caller holds `io`, so
/// no write runs meanwhile).
fn sync_now(shared: &Shared, io: &Io) {
    if shared.state().unsynced_since.is_none() {
        return;
    }
    if let Some(active) = &io.active
        && let Err(error) = active.file.sync_data()
    {
        tracing::error!(%error, "the journal could not be synced");
    }
    shared.state().unsynced_since = None;
}

/// Take the queue and write it to the active segment (synced when the
/// store syncs every commit); returns the outcome and who waits for it.
fn write_batch(shared: &Shared, io: &mut Io) -> (Result<(), StoreError>, Vec<Waiter>) {
    let mut bytes = std::mem::take(&mut io.spare);
    let mut marks = std::mem::take(&mut io.spare_marks);
    bytes.clear();
    marks.clear();
    let (waiters, id) = {
        let mut state = shared.state();
        state.urgent = false;
        std::mem::swap(&mut state.pending, &mut bytes);
        std::mem::swap(&mut state.marks, &mut marks);
        (std::mem::take(&mut state.waiters), state.active)
    };
    if bytes.is_empty() && marks.is_empty() {
        io.spare = bytes;
        io.spare_marks = marks;
        return (Ok(()), waiters);
    }
    let result = append(shared, &mut io.active, id, &bytes).and_then(|()| {
        if shared.sync == StoreSync::Always {
            sync(&io.active)
        } else {
            Ok(())
        }
    });
    io.spare = bytes;
    match &result {
        Ok(()) => {
            let first_unsynced = settle(shared, &io.active, &mut marks);
            // The writer thread syncs it within the interval.
            if first_unsynced {
                shared.wake.notify_one();
            }
        }
        Err(error) => {
            tracing::error!(%error, records = marks.len(), "journal records could not be written");
            // Never append after a torn write: start a new segment.
            let mut state = shared.state();
            if io.active.as_ref().is_some_and(|a| a.id == state.active) {
                state.active += 1;
            }
            io.active = None;
        }
    }
    io.spare_marks = marks;
    (result, waiters)
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
            Some(timeout) => match shared.wake.wait_timeout(state, timeout) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            },
            None => match shared.wake.wait(state) {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            },
        };
    }
}

/// Append `bytes` to segment `id`, opening (creating) it first when the
/// writer is on another; a failed write is cut back off the file.
fn append(
    shared: &Shared,
    active: &mut Option<Active>,
    id: u64,
    bytes: &[u8],
) -> Result<(), StoreError> {
    if bytes.is_empty() {
        return Ok(());
    }
    let mut id = id;
    // A batch that does not fit the reserved segment starts the next one.
    if let Some(segment) = active.as_ref()
        && segment.id == id
        && !segment.file.fits(bytes.len())
    {
        let mut state = shared.state();
        if state.active == id {
            state.active += 1;
        }
        id = state.active;
    }
    if active.as_ref().is_none_or(|a| a.id != id) {
        if let Some(old) = active.take()
            && shared.sync != StoreSync::Always
        {
            let _ = old.file.sync_data();
        }
        *active = Some(open_segment(shared, id, bytes.len())?);
    }
    let Some(segment) = active.as_mut() else {
        return Err(StoreError::Closed);
    };
    segment.file.append(bytes).map_err(crate::store::io)?;
    if segment.file.len() >= SEGMENT_BYTES {
        let mut state = shared.state();
        if state.active == id {
            state.active += 1;
        }
    }
    Ok(())
}

/// Create segment `id` with its magic (or open it, empty, after a failed
/// start), with room reserved for at least `batch` bytes of records.
fn open_segment(shared: &Shared, id: u64, batch: usize) -> Result<Active, StoreError> {
    let path = segment_path(&shared.dir, id);
    let mut file = mapped::create(&path)
        .map_err(|e| StoreError::Io(format!("cannot create {}: {e}", path.display())))?;
    file.write_all(MAGIC).map_err(crate::store::io)?;
    if shared.sync == StoreSync::Always {
        file.sync_data().map_err(crate::store::io)?;
        // The new file's name must survive a power loss too.
        if let Ok(dir) = File::open(&shared.dir) {
            let _ = dir.sync_all();
        }
    }
    shared.state().segments.add(id);
    let len = MAGIC.len() as u64;
    let capacity = SEGMENT_BYTES.max(len + batch as u64);
    Ok(Active {
        id,
        file: SegmentFile::new(file, len, capacity, true),
    })
}

fn sync(active: &Option<Active>) -> Result<(), StoreError> {
    match active {
        Some(active) => active.file.sync_data().map_err(crate::store::io),
        None => Ok(()),
    }
}

/// A batch was written to `active`: apply its marks (leaving them
/// empty) and delete the segments nothing needs any more. Returns whether
/// the write is the first not yet synced (when the store syncs on an
/// interval).
fn settle(shared: &Shared, active: &Option<Active>, marks: &mut Vec<Mark>) -> bool {
    let Some(written) = active.as_ref().map(|a| a.id) else {
        return false;
    };
    let mut state = shared.state();
    for mark in marks.drain(..) {
        match mark {
            Mark::Pin(run) => state.segments.record(&run, written),
            Mark::Drop(run) => state.segments.drop_run(&run, written),
            Mark::None => {}
        }
    }
    let first_unsynced = shared.sync != StoreSync::Always && state.unsynced_since.is_none();
    if first_unsynced {
        state.unsynced_since = Some(Instant::now());
    }
    let below = state.active.min(written);
    while let Some(id) = state.segments.next_deletable(below) {
        let path = segment_path(&shared.dir, id);
        match std::fs::remove_file(&path) {
            Ok(()) => state.segments.deleted(id),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                state.segments.deleted(id)
            }
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "a finished journal segment could not be deleted");
                break;
            }
        }
    }
    first_unsynced
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
        let (found, valid, problem) = bodies(&bytes);
        assert_eq!((found.len(), valid, problem), (3, bytes.len(), None));
        match decode(found[0]).unwrap() {
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
            decode(found[1]).unwrap(),
            Record::Finish {
                run: "run-1",
                drop: true,
                updated_ms: 5
            }
        ));
        assert!(matches!(
            decode(found[2]).unwrap(),
            Record::Drop { run: "run-2" }
        ));
        // A torn last record: the first two still read.
        let torn = &bytes[..bytes.len() - 3];
        let (found, _, problem) = bodies(torn);
        assert_eq!(found.len(), 2);
        assert!(problem.is_some());
        // A flipped byte fails the checksum.
        let mut flipped = bytes.clone();
        flipped[12] ^= 1;
        let (found, valid, problem) = bodies(&flipped);
        assert_eq!((found.len(), valid), (0, 0));
        assert!(problem.unwrap().contains("checksum"));
        // A mapped segment's reserved tail is zeros: the records end there,
        // with no problem, however long the tail (even shorter than a header).
        for tail in [3, 8, 4096] {
            let mut padded = bytes.clone();
            padded.resize(bytes.len() + tail, 0);
            assert_eq!(bodies(&padded).1, bytes.len());
            assert_eq!(bodies(&padded).2, None);
            assert_eq!(bodies(&padded).0.len(), 3);
        }
        // A record torn in its copy (header there, body still zeros) is torn.
        let mut half = bytes.clone();
        let zeroed = half.len() - 2;
        half[zeroed..].fill(0);
        half.resize(half.len() + 64, 0);
        let (found, _, problem) = bodies(&half);
        assert_eq!(found.len(), 2);
        assert!(problem.is_some());
        // Zeros followed by data are not a tail: they are reported.
        let mut gap = bytes.clone();
        gap.extend_from_slice(&[0; 8]);
        gap.extend(drop_record("run-3"));
        let (found, valid, problem) = bodies(&gap);
        assert_eq!((found.len(), valid), (3, bytes.len()));
        assert!(problem.unwrap().contains("zeroed"));
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
            &[FINISH],
            &[DROP, 0xff, 0xfe],
        ] {
            assert!(decode(body).is_err(), "{body:?}");
        }
        let too_long = "x".repeat(70_000);
        let entry = JournalEntry::new(EntryKind::Random, b"", Vec::new());
        assert!(entry_record("run", &too_long, 0, &entry).is_err());
    }
}
