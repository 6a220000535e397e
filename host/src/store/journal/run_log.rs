//! The journal of one run this process executes ([`RunLog`]): its records
//! framed, as they come, into a buffer of the run's own, and written with
//! the run's next awaited write.
//!
//! A journaled turn writes a handful of records of a few hundred bytes
//! each, so what a record costs is nearly all bookkeeping: building it,
//! queueing it, locking the log, accounting for it. A run's log does that
//! bookkeeping once per run where the log's by-id calls ([`Journal::append`]
//! and the like) do it per record: a payload is encoded straight into the
//! framed record in the run's buffer; a record nobody awaits (a clock
//! reading, the tool list, the run's start) waits there for the run's next
//! awaited one; and an awaited write, when writes need no `fdatasync` each,
//! is a copy into the segment under the file's lock alone: the run is
//! pinned in a segment's accounting with its first write there, not with
//! every record.
//!
//! A run's records are written in the order it made them (the buffer's
//! lock is held through its write), so its start always precedes its
//! entries and its finish follows them. They reach the log no later than
//! the run's next awaited write, its finish, or the drop of its log: a run
//! killed before its first awaited write leaves nothing that could be
//! replayed, and is not listed as interrupted.

use super::log::{self, EntryHead, Mark, RunEnd, RunKey, RunWriting, Shared, Waiter};
use super::{EntryKind, Journal, JournalRun, JournalStatus, RunEntry, RunStart, now_ms};
use crate::store::StoreError;
use crate::sync::lock;
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::oneshot;

/// A run's buffer is let go rather than kept once a write left it this
/// large (a run that once journaled a large result keeps no large buffer).
const KEEP_BYTES: usize = 64 << 10;

/// The journal of one run this process executes, from [`Journal::begin`]
/// to [`RunLog::finish`]. Dropping it unfinished writes what it holds and
/// leaves the run interrupted (resumable).
///
/// Its fields are all small (128 bytes in all, a failure is boxed) and
/// laid out in declaration order (`repr(C)`), the queue and its lock
/// first, so that a step finds them in as few cache lines as possible:
/// with hundreds of runs in flight, a run's log is cold whenever the run
/// comes back from a model call.
#[repr(C)]
pub struct RunLog {
    queue: Mutex<RunQueue>,
    log: Arc<Shared>,
    /// The run's number, when its records are written in place and name
    /// it by that ([`RunKey::Bound`]); else [`NO_NUMBER`]. (Not an
    /// `Option`, whose tag would take the room of `fresh`.)
    number: u64,
    /// Begun by this process, not resumed ([`RunWriting::fresh`]).
    fresh: bool,
    run: Arc<str>,
    /// When the writer thread writes the run's records: where it keeps a
    /// failed write, outside the queue's lock (see [`RunQueue::failed`]).
    written_by_writer: Option<Arc<OnceLock<StoreError>>>,
}

/// [`RunLog::number`] of a run whose records name it by its id. (A
/// shard's numbers count up from zero, one per run, and never reach it.)
const NO_NUMBER: u64 = u64::MAX;

// The layout its doc promises.
const _: () = assert!(std::mem::size_of::<RunLog>() <= 128);

/// What a run's log holds between writes.
struct RunQueue {
    /// Framed records not written yet, in order.
    bytes: Vec<u8>,
    /// The segment the log's accounting has the run pinned in.
    pinned: Option<u64>,
    /// The run is marked as executed by this process (its entry in its
    /// shard's runs map is live): unmarked once its end is written, so it
    /// is never listed as interrupted in between.
    live: bool,
    /// A write of the run's records in place failed: they are lost, so
    /// every later flush fails too (an empty buffer is then no sign of a
    /// write).
    failed: Option<Box<StoreError>>,
}

/// Where one entry goes: its scope, its step, what it records and the
/// fingerprint of the request it answers.
#[derive(Clone, Copy, Debug)]
pub struct EntryAt<'a> {
    /// The architecture invocation's scope.
    pub scope: &'a str,
    /// The step in it.
    pub seq: u32,
    /// What the entry records.
    pub kind: EntryKind,
    /// The fingerprint of the request it answers.
    pub fingerprint: &'a [u8; 32],
}

impl Journal {
    /// Begin journaling the new run `run` in this process, in the shard
    /// of the calling thread, started now; the run is marked as executed
    /// here (never listed as interrupted) until its end is written. Its
    /// start record goes out with its first write; it is listed among the
    /// journal's runs at once.
    ///
    /// A run the journal already holds goes on with
    /// [`Journal::begin_resumed`] instead, in the shard holding it (begun
    /// here, it would have a record in two shards, and, dropped before its
    /// records left the staging ring, its drop would be left out with
    /// them and its older records come back at the next open). Its id is
    /// checked against the runs live in this thread's shard only: ids
    /// from [`crate::tenancy::ids::RunId::generate`] are unique in the
    /// process, and a caller choosing its own must not begin one twice.
    ///
    /// # Errors
    ///
    /// [`StoreError::Live`] when this process executes the run already;
    /// [`StoreError`] when the run's record cannot be encoded.
    pub fn begin(&self, run: &RunStart<'_>) -> Result<RunLog, StoreError> {
        begin_in(self.writing_log(), run, None)
    }

    /// [`Journal::begin`] for the run `run` being resumed: its records go
    /// on in the shard that holds them, and it keeps the time it started.
    ///
    /// # Errors
    ///
    /// As [`Journal::begin`], and [`StoreError::Gone`] when the journal no
    /// longer holds the run (a prune or its finish dropped it since it was
    /// read).
    pub fn begin_resumed(&self, run: &JournalRun) -> Result<RunLog, StoreError> {
        begin_in(self.log_for(&run.run), &run.start(), Some(run.started_ms))
    }
}

/// Begin journaling `run` in `log`, marking it live; `resumed_from`: the
/// time a resumed run started (a new run starts now).
pub(super) fn begin_in(
    log: &Arc<Shared>,
    run: &RunStart<'_>,
    resumed_from: Option<u64>,
) -> Result<RunLog, StoreError> {
    let now = now_ms();
    let started_ms = resumed_from.unwrap_or(now);
    let number = log.writes_in_place().then(|| log.next_number());
    let record = log::start_record(run, started_ms, now, number)?;
    // Allocated once for every map naming the run, outside the lock.
    let id: Arc<str> = Arc::from(run.run);
    let entry = RunEntry {
        start: record.body().into(),
        status: JournalStatus::Running,
        started_ms,
        updated_ms: now,
        live: true,
    };
    {
        let mut state = log.state();
        match state.runs.get(run.run) {
            Some(held) if held.live => return Err(StoreError::Live(run.run.to_owned())),
            // Going on with a run a prune dropped since it was read would
            // start it afresh, its recorded results gone.
            None if resumed_from.is_some() => return Err(StoreError::Gone(run.run.to_owned())),
            _ => {}
        }
        state.runs.insert(id.clone(), entry);
    }
    Ok(RunLog {
        log: log.clone(),
        run: id,
        number: number.unwrap_or(NO_NUMBER),
        fresh: resumed_from.is_none(),
        queue: Mutex::new(RunQueue {
            bytes: record.into_bytes(),
            pinned: None,
            live: true,
            failed: None,
        }),
        written_by_writer: (!log.writes_in_place()).then(Arc::default),
    })
}

impl RunLog {
    /// The run's id.
    pub fn run(&self) -> &str {
        &self.run
    }

    /// The run's id, shared (allocated once per run).
    pub fn run_id(&self) -> &Arc<str> {
        &self.run
    }

    /// The log (the journal's shard) the run writes to.
    #[cfg(test)]
    pub(super) fn shared(&self) -> &Arc<Shared> {
        &self.log
    }

    /// The run's number, when its records name it by that.
    fn number(&self) -> Option<u64> {
        (self.number != NO_NUMBER).then_some(self.number)
    }

    /// How the run's records name it.
    fn key(&self) -> RunKey<'_> {
        match self.number() {
            Some(number) => RunKey::Bound(number),
            None => RunKey::Id(&self.run),
        }
    }

    /// The run, as [`Shared::write_run`] writes its records.
    fn writing(&self) -> RunWriting<'_> {
        RunWriting {
            id: &self.run,
            number: self.number(),
            fresh: self.fresh,
        }
    }

    /// Queue an entry at `at`, its payload whatever `encode` appends to
    /// the buffer it is handed, if `accept` takes the payload's length
    /// (caps on what a run may journal); it is written with the run's
    /// next awaited write. Returns whether it was accepted (and queued).
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] when `encode` fails, the scope is longer than a
    /// record holds, or the payload is larger than
    /// [`super::MAX_PAYLOAD_BYTES`]; [`StoreError::Closed`] once the run
    /// finished. Nothing is queued then.
    pub fn queue(
        &self,
        at: EntryAt<'_>,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
        accept: impl FnOnce(usize) -> bool,
    ) -> Result<bool, StoreError> {
        self.queue_in(&mut lock(&self.queue), at, encode, accept)
    }

    /// [`Self::queue`] then [`Self::flush`]: the entry and every record
    /// queued before it, written; resolves once they are in the log.
    /// Returns whether the entry was accepted (nothing is written if it
    /// was not). When the run writes in place, both happen under one
    /// hold of the run's lock.
    ///
    /// # Errors
    ///
    /// As [`Self::queue`] and [`Self::flush`].
    pub async fn write(
        &self,
        at: EntryAt<'_>,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
        accept: impl FnOnce(usize) -> bool,
    ) -> Result<bool, StoreError> {
        if self.written_by_writer.is_some() {
            if !self.queue(at, encode, accept)? {
                return Ok(false);
            }
            return self.flush().await.map(|()| true);
        }
        let mut queue = lock(&self.queue);
        if !self.queue_in(&mut queue, at, encode, accept)? {
            return Ok(false);
        }
        self.write_in_place(&mut queue).map(|()| true)
    }

    /// [`Self::queue`], the run's lock held (`queue`).
    fn queue_in(
        &self,
        queue: &mut RunQueue,
        at: EntryAt<'_>,
        encode: impl FnOnce(&mut Vec<u8>) -> Result<(), String>,
        accept: impl FnOnce(usize) -> bool,
    ) -> Result<bool, StoreError> {
        if let Some(error) = self.failure(queue) {
            return Err(error);
        }
        if !queue.live {
            return Err(StoreError::Closed);
        }
        let start = queue.bytes.len();
        let len = log::put_entry(
            &mut queue.bytes,
            EntryHead {
                run: self.key(),
                scope: at.scope,
                seq: at.seq,
                kind: at.kind,
                fingerprint: at.fingerprint,
            },
            encode,
        )?;
        if !accept(len) {
            queue.bytes.truncate(start);
            return Ok(false);
        }
        Ok(true)
    }

    /// Write every queued record; resolves once they are in the log (on
    /// disk, when the store syncs every commit).
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the write fails or the log is closed.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let written = {
            let mut queue = lock(&self.queue);
            if let Some(error) = self.failure(&queue) {
                return Err(error);
            }
            let Some(kept_by_writer) = &self.written_by_writer else {
                return self.write_in_place(&mut queue);
            };
            // The writer thread syncs it: queued in order under the
            // run's lock, awaited without it. An empty buffer may have
            // been taken by another of the run's tasks whose write is not
            // done yet: the waiter, queued after it, hears once it is.
            let (done, written) = oneshot::channel();
            let bytes = std::mem::take(&mut queue.bytes);
            let mark = if bytes.is_empty() {
                Mark::None
            } else {
                Mark::Pin(self.run.clone())
            };
            // A failure is kept on the writer thread, before any later
            // batch's waiters hear back.
            let failed = kept_by_writer.clone();
            let waiter = Waiter::Callback(Box::new(move |result: Result<(), StoreError>| {
                if let Err(error) = &result {
                    let _ = failed.set(error.clone());
                }
                let _ = done.send(result);
            }));
            self.log.push(&bytes, mark, |_| {}, Some(waiter));
            written
        };
        written.await.unwrap_or(Err(StoreError::Closed))?;
        match self
            .written_by_writer
            .as_ref()
            .and_then(|failed| failed.get())
        {
            Some(error) => Err(error.clone()),
            None => Ok(()),
        }
    }

    /// Write what `queue` (the run's lock, held) holds, in place.
    fn write_in_place(&self, queue: &mut RunQueue) -> Result<(), StoreError> {
        // Under the run's lock: an empty buffer was written by whoever
        // emptied it (a failure would be kept).
        if queue.bytes.is_empty() {
            return Ok(());
        }
        let RunQueue { bytes, pinned, .. } = queue;
        let result = self.log.write_run(bytes, self.writing(), pinned, None);
        if bytes.capacity() > KEEP_BYTES {
            *bytes = Vec::new();
        }
        if let Err(error) = &result {
            queue.failed = Some(Box::new(error.clone()));
        }
        result
    }

    /// The failed write that stopped the run's log, if one did.
    fn failure(&self, queue: &RunQueue) -> Option<StoreError> {
        if let Some(error) = &queue.failed {
            return Some(StoreError::clone(error));
        }
        let failed = self.written_by_writer.as_ref()?;
        failed.get().cloned()
    }

    /// Record that the run finished: with `drop_entries` it is dropped
    /// (its records void, their segments freed once no other run needs
    /// them), else kept until pruned. Written at once when writes need no
    /// `fdatasync` each, else by the writer thread; the run stays live
    /// here until it is. Later records are refused.
    pub fn finish(&self, drop_entries: bool) {
        let mut queue = lock(&self.queue);
        if !std::mem::replace(&mut queue.live, false) {
            return;
        }
        // A dropped run's record is void: nothing reads when it changed.
        let updated_ms = if drop_entries { 0 } else { now_ms() };
        log::put_finish(&mut queue.bytes, self.key(), drop_entries, updated_ms);
        let end = if drop_entries {
            RunEnd::Dropped
        } else {
            RunEnd::Kept { updated_ms }
        };
        self.close(&mut queue, Some(end));
    }

    /// Write what `queue` holds, ending the run with `end` if given; the
    /// run is unmarked as live once it is written.
    fn close(&self, queue: &mut RunQueue, end: Option<RunEnd>) {
        let mut bytes = std::mem::take(&mut queue.bytes);
        if self.log.writes_in_place() {
            let written = self
                .log
                .write_run(&mut bytes, self.writing(), &mut queue.pinned, end);
            // Written with an end, the run was ended in the runs map in
            // the same step (dropped, or finished and unmarked).
            let ended = written.is_ok() && end.is_some();
            closed(&self.log, &self.run, written, !ended);
            return;
        }
        let log = self.log.clone();
        let id = self.run.clone();
        // A dropped run's entry left the map as its drop was queued (a run
        // begun since under the same id is another's to unmark).
        let unmark = end != Some(RunEnd::Dropped);
        let closed = move |result: Result<(), StoreError>| closed(&log, &id, result, unmark);
        let run = self.run.clone();
        let mark = match end {
            Some(RunEnd::Dropped) => Mark::Drop(run.clone()),
            Some(RunEnd::Kept { .. }) | None => Mark::Pin(run.clone()),
        };
        let update = move |runs: &mut super::RunMap<RunEntry>| match end {
            Some(RunEnd::Dropped) => {
                runs.remove(&*run);
            }
            Some(RunEnd::Kept { updated_ms }) => {
                if let Some(record) = runs.get_mut(&*run) {
                    record.status = JournalStatus::Finished;
                    record.updated_ms = updated_ms;
                }
            }
            None => {}
        };
        self.log.push(
            &bytes,
            mark,
            update,
            Some(Waiter::Callback(Box::new(closed))),
        );
    }
}

/// A run's last records were written (`result`): a failure is logged,
/// and, with `unmark`, the run is marked as no longer executed here.
fn closed(log: &Shared, run: &str, result: Result<(), StoreError>, unmark: bool) {
    if let Err(error) = result {
        tracing::warn!(%error, "a run's journal records could not be written");
    }
    if unmark {
        log.unmark(run);
    }
}

impl Drop for RunLog {
    /// A run dropped unfinished (its task cancelled, its stream dropped)
    /// writes what it queued, so its records are complete up to where it
    /// stopped, and stays interrupted.
    fn drop(&mut self) {
        let mut queue = lock(&self.queue);
        if !std::mem::replace(&mut queue.live, false) {
            return;
        }
        if queue.bytes.is_empty() {
            self.log.unmark(&self.run);
            return;
        }
        self.close(&mut queue, None);
    }
}
