//! Durable state in one redb file under the data directory, written by one
//! group-committing writer.
//!
//! Every write goes through [`Store`]'s writer thread, which gathers the
//! writes queued while the previous commit ran and commits them together in
//! one durable transaction: a thousand concurrent runs cost one fsync, not a
//! thousand, and a caller that awaits its write knows it is on disk. Reads
//! open their own read transaction and never wait for the writer.
//!
//! The file holds sessions ([`SessionStore`]), finished runs of the run
//! journal ([`journal`], whose entries live in a log beside the file),
//! budget counters
//! (`governance::budget`), memory (`crate::memory`) and the scoped data of
//! memory components ([`kv`]). Keys are built from
//! typed ids only.

pub mod journal;
pub mod kv;
pub(crate) mod sessions;

pub use sessions::SessionStore;

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use tokio::sync::oneshot;

/// Why stored state could not be read or written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened.
    #[error(
        "cannot open the database {path}: {message} (another loom process may hold it; \
         stop it or point data_dir elsewhere)"
    )]
    Open {
        /// The file.
        path: String,
        /// What failed.
        message: String,
    },
    /// A read or write failed.
    #[error("database error: {0}")]
    Io(String),
    /// Stored data could not be decoded.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The writer thread is gone (the store is shutting down).
    #[error("the database writer has stopped")]
    Closed,
    /// The run is being executed by this process already (a run is
    /// journaled by one executor at a time).
    #[error(
        "run {0} is being executed by this process already; wait for it to end before \
         resuming it, or start a new run"
    )]
    Live(String),
    /// The run to go on with is no longer in the journal (pruned or
    /// dropped since it was read).
    #[error(
        "run {0} is no longer in the journal (it was pruned or finished meanwhile); \
         start a new run"
    )]
    Gone(String),
}

/// Convert any redb error into [`StoreError::Io`].
pub(crate) fn io(error: impl std::fmt::Display) -> StoreError {
    StoreError::Io(error.to_string())
}

/// Open `table` for reading; `None` when it was never written.
pub(crate) fn read_table<K: redb::Key + 'static, V: redb::Value + 'static>(
    txn: &redb::ReadTransaction,
    table: redb::TableDefinition<K, V>,
) -> Result<Option<redb::ReadOnlyTable<K, V>>, StoreError> {
    match txn.open_table(table) {
        Ok(table) => Ok(Some(table)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(io(e)),
    }
}

/// One write: applied inside the writer's transaction. It may be applied
/// twice (alone, after a batch it shared failed), so it must be repeatable.
pub(crate) type WriteOp =
    Box<dyn Fn(&redb::WriteTransaction) -> Result<(), StoreError> + Send + 'static>;

/// Called on the writer thread with the outcome of a write.
pub(crate) type WriteDone = Box<dyn FnOnce(Result<(), StoreError>) + Send + 'static>;

/// Who learns how a write went.
enum Done {
    /// A task awaiting it.
    Waiter(oneshot::Sender<Result<(), StoreError>>),
    /// A thread blocked on it.
    Blocking(mpsc::Sender<Result<(), StoreError>>),
    /// A callback, run on the writer thread.
    Callback(WriteDone),
}

impl Done {
    fn send(self, result: Result<(), StoreError>) {
        match self {
            Done::Waiter(sender) => {
                let _ = sender.send(result);
            }
            Done::Blocking(sender) => {
                let _ = sender.send(result);
            }
            Done::Callback(callback) => callback(result),
        }
    }
}

/// A queued write and who waits for it.
struct Job {
    op: Option<WriteOp>,
    done: Option<Done>,
    /// Whether a caller waits for the commit. A batch of writes nobody
    /// waits for may gather for [`BACKGROUND_LINGER`] before it commits.
    waited: bool,
}

/// The page cache of a store opened without a size (`[store] cache_mib`).
pub const DEFAULT_CACHE_BYTES: usize = 256 << 20;

/// Most writes committed in one transaction.
const MAX_BATCH: usize = 8192;

/// How long the writer lets writes gather after committing a batch that
/// did not fill up. While it waits, queuing a write is a lock-free push
/// with no wake-up, so under load many writers share one commit and the
/// writer wakes at most this often; a lone write waits no longer than
/// before, a write right after a commit at most this much longer.
const LINGER: std::time::Duration = std::time::Duration::from_millis(2);

/// How long writes that nobody waits for ([`Store::write_later`]) may
/// gather before they commit, with `fsync = "interval"` (never past the
/// interval). Every commit writes the B-tree pages it dirtied and redb's
/// own bookkeeping pages; under load, gathering ten times as many writes
/// into one commit writes each shared page once instead of ten times. A
/// write someone waits for, a sync, or the interval running out commits
/// the batch at once.
const BACKGROUND_LINGER: std::time::Duration = std::time::Duration::from_millis(20);

/// When commits are forced to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreSync {
    /// Every commit is durable before its writers hear back (the default).
    #[default]
    Always,
    /// Commits are visible at once and made durable at least this often
    /// (milliseconds): a crash may lose that much; a clean shutdown
    /// loses nothing.
    Interval(u64),
}

/// The redb file and its writer.
pub struct Store {
    db: Arc<redb::Database>,
    path: std::path::PathBuf,
    sync: StoreSync,
    queue: Option<mpsc::Sender<Job>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Open (creating if needed) the database at `path` and start its writer.
    ///
    /// # Errors
    ///
    /// [`StoreError::Open`] naming the file.
    pub fn open(path: &Path) -> Result<Arc<Self>, StoreError> {
        Self::open_with(path, StoreSync::Always)
    }

    /// [`Self::open`] with the given durability.
    ///
    /// # Errors
    ///
    /// [`StoreError::Open`] naming the file.
    pub fn open_with(path: &Path, sync: StoreSync) -> Result<Arc<Self>, StoreError> {
        Self::open_with_cache(path, sync, DEFAULT_CACHE_BYTES)
    }

    /// [`Self::open_with`], with a page cache of `cache_bytes` (redb's
    /// own default is 1 GiB, which a big store fills).
    ///
    /// # Errors
    ///
    /// [`StoreError::Open`] naming the file.
    pub fn open_with_cache(
        path: &Path,
        sync: StoreSync,
        cache_bytes: usize,
    ) -> Result<Arc<Self>, StoreError> {
        let open_error = |message: String| StoreError::Open {
            path: path.display().to_string(),
            message,
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| open_error(e.to_string()))?;
        }
        let db = Arc::new(
            redb::Builder::new()
                .set_cache_size(cache_bytes)
                .create(path)
                .map_err(|e| open_error(e.to_string()))?,
        );
        let (queue, jobs) = mpsc::channel::<Job>();
        let writer = std::thread::Builder::new()
            .name("loom-store-writer".into())
            .spawn({
                let db = db.clone();
                move || write_loop(&db, &jobs, sync)
            })
            .map_err(|e| open_error(format!("cannot start the writer thread: {e}")))?;
        Ok(Arc::new(Store {
            db,
            path: path.to_path_buf(),
            sync,
            queue: Some(queue),
            writer: Some(writer),
        }))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// When commits are forced to stable storage.
    pub fn sync_mode(&self) -> StoreSync {
        self.sync
    }

    /// The database, for read transactions.
    pub(crate) fn db(&self) -> &redb::Database {
        &self.db
    }

    fn enqueue(&self, op: Option<WriteOp>, done: Option<Done>) {
        self.enqueue_job(Job {
            op,
            done,
            waited: true,
        });
    }

    fn enqueue_job(&self, job: Job) {
        let refused = match &self.queue {
            Some(queue) => queue.send(job).err().map(|mpsc::SendError(job)| job),
            None => Some(job),
        };
        if let Some(Job {
            done: Some(done), ..
        }) = refused
        {
            done.send(Err(StoreError::Closed));
        }
    }

    /// Stop the writer as a shutdown does, keeping the store: every later
    /// write fails with [`StoreError::Closed`].
    #[cfg(test)]
    pub(crate) fn close_queue_for_test(&mut self) {
        self.stop_writer();
    }

    /// Close the queue and wait for the writer to commit what is queued and
    /// stop.
    fn stop_writer(&mut self) {
        // Closing the queue lets the writer commit what is queued and stop.
        self.queue = None;
        // The last handle may be dropped by a job on the writer itself,
        // which then finishes the queue and stops on its own.
        if !self.on_writer_thread()
            && let Some(writer) = self.writer.take()
        {
            let _ = writer.join();
        }
    }

    /// Queue `op`; `done` runs on the writer thread with its outcome.
    pub(crate) fn write_then(&self, op: WriteOp, done: WriteDone) {
        self.enqueue(Some(op), Some(Done::Callback(done)));
    }

    /// [`Self::write_then`] for a write nobody waits for: with `fsync =
    /// "interval"` it may wait up to [`BACKGROUND_LINGER`] to share its
    /// commit with later writes. Readers must not depend on seeing it in
    /// the database before `done` runs (a session save held in the cache
    /// as pending, budget counters held in memory).
    pub(crate) fn write_later(&self, op: WriteOp, done: WriteDone) {
        self.enqueue_job(Job {
            op: Some(op),
            done: Some(Done::Callback(done)),
            waited: false,
        });
    }

    /// Apply `op` in the writer's transaction and resolve with its value
    /// once that transaction is committed. `op` may run twice (alone, after
    /// a batch it shared failed): it must read what it changes from the
    /// transaction, not from outside it.
    ///
    /// # Errors
    ///
    /// The error `op` returned, or the commit's.
    pub(crate) async fn write<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&redb::WriteTransaction) -> Result<T, StoreError> + Send + Sync + 'static,
    {
        self.write_with(op, || {}).await
    }

    /// [`Self::write`], running `after_commit` on the writer thread right
    /// after a successful commit, before any later write commits (to drop
    /// cached copies of what the write deleted, in commit order).
    ///
    /// # Errors
    ///
    /// As [`Self::write`].
    pub(crate) async fn write_with<T, F, A>(&self, op: F, after_commit: A) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: Fn(&redb::WriteTransaction) -> Result<T, StoreError> + Send + Sync + 'static,
        A: FnOnce() + Send + 'static,
    {
        let value: Arc<std::sync::Mutex<Option<T>>> = Arc::default();
        let slot = value.clone();
        let (done, committed) = oneshot::channel();
        self.write_then(
            Box::new(move |txn| {
                let result = op(txn)?;
                *crate::sync::lock(&slot) = Some(result);
                Ok(())
            }),
            Box::new(move |result| {
                if result.is_ok() {
                    after_commit();
                }
                let _ = done.send(result);
            }),
        );
        committed.await.unwrap_or(Err(StoreError::Closed))?;
        let taken = crate::sync::lock(&value).take();
        taken.ok_or_else(|| StoreError::Io("a committed write left no result".into()))
    }

    /// Resolves once every write queued before this call is committed.
    ///
    /// # Errors
    ///
    /// [`StoreError::Closed`] when the writer has stopped, or the error of
    /// a write committed in the same batch that failed.
    pub async fn sync(&self) -> Result<(), StoreError> {
        let (done, committed) = oneshot::channel();
        self.enqueue(None, Some(Done::Waiter(done)));
        committed.await.unwrap_or(Err(StoreError::Closed))
    }
}

impl Store {
    /// Whether the caller is the writer thread itself (which must never
    /// wait for itself).
    fn on_writer_thread(&self) -> bool {
        self.writer
            .as_ref()
            .is_some_and(|w| w.thread().id() == std::thread::current().id())
    }

    /// [`Self::sync`] for a thread that cannot await (a host being
    /// dropped); waits at most `timeout`.
    ///
    /// # Errors
    ///
    /// As [`Self::sync`], or [`StoreError::Closed`] after `timeout`.
    pub fn sync_blocking(&self, timeout: std::time::Duration) -> Result<(), StoreError> {
        if self.on_writer_thread() {
            return Ok(());
        }
        let (done, committed) = mpsc::channel();
        self.enqueue(None, Some(Done::Blocking(done)));
        committed
            .recv_timeout(timeout)
            .unwrap_or(Err(StoreError::Closed))
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.stop_writer();
    }
}

/// The writer thread: commit whatever is queued, in batches, until the
/// queue closes.
fn write_loop(db: &redb::Database, jobs: &mpsc::Receiver<Job>, sync: StoreSync) {
    let interval = match sync {
        StoreSync::Always => None,
        StoreSync::Interval(ms) => Some(std::time::Duration::from_millis(ms.max(1))),
    };
    let mut last_durable = std::time::Instant::now();
    let mut last_commit = last_durable;
    // Commits made visible but not yet durable.
    let mut pending = false;
    // A write that failed since the last sync: the next sync reports it.
    let mut failed: Option<StoreError> = None;
    // Writes gathered but not committed yet: only writes nobody waits for
    // are held across a linger.
    let mut batch: Vec<Job> = Vec::new();
    loop {
        if batch.is_empty() {
            batch.push(
                match next_job(db, jobs, interval, &mut last_durable, &mut pending) {
                    Some(job) => job,
                    None => return,
                },
            );
        }
        let mut closed = false;
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        // An explicit sync, or the interval running out, makes this commit
        // durable; otherwise it is only visible.
        let durable = match interval {
            None => true,
            Some(every) => batch.iter().any(|j| j.op.is_none()) || last_durable.elapsed() >= every,
        };
        let full = batch.len() >= MAX_BATCH;
        let deferred = !durable
            && !full
            && !closed
            && last_commit.elapsed() < BACKGROUND_LINGER
            && batch.iter().all(|j| !j.waited);
        if deferred {
            std::thread::sleep(LINGER);
            continue;
        }
        let reached = commit_batch(
            db,
            std::mem::take(&mut batch),
            durable,
            pending,
            &mut failed,
        );
        last_commit = std::time::Instant::now();
        if durable && reached {
            last_durable = last_commit;
            pending = false;
        } else {
            pending = true;
        }
        if !full && !closed {
            std::thread::sleep(LINGER);
        }
    }
}

/// Wait for the next job; with an interval, make visible commits durable
/// when it runs out while waiting. `None` once the queue is closed (after
/// a last durable commit).
fn next_job(
    db: &redb::Database,
    jobs: &mpsc::Receiver<Job>,
    interval: Option<std::time::Duration>,
    last_durable: &mut std::time::Instant,
    pending: &mut bool,
) -> Option<Job> {
    loop {
        match interval {
            None => return jobs.recv().ok(),
            Some(every) => {
                let wait = every.saturating_sub(last_durable.elapsed());
                match jobs.recv_timeout(wait) {
                    Ok(job) => return Some(job),
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if !*pending || make_durable(db).is_ok() {
                            *pending = false;
                        }
                        *last_durable = std::time::Instant::now();
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        if *pending {
                            let _ = make_durable(db);
                        }
                        return None;
                    }
                }
            }
        }
    }
}

/// An empty durable commit: every visible commit before it reaches disk.
fn make_durable(db: &redb::Database) -> Result<(), StoreError> {
    let result = db
        .begin_write()
        .map_err(io)
        .and_then(|txn| txn.commit().map_err(io));
    if let Err(error) = &result {
        tracing::error!(%error, "the database could not be synced");
    }
    result
}

/// Commit `batch` in one transaction, durably when `durable`; if that
/// fails, commit each write alone so one bad write does not fail the
/// others. `pending`: earlier commits are not durable yet. `failed` holds a
/// write that failed since the last sync, which the next sync reports.
/// Returns whether everything committed.
fn commit_batch(
    db: &redb::Database,
    batch: Vec<Job>,
    durable: bool,
    pending: bool,
    failed: &mut Option<StoreError>,
) -> bool {
    let ops: Vec<&WriteOp> = batch.iter().filter_map(|j| j.op.as_ref()).collect();
    let outcome = if ops.is_empty() {
        // A sync alone: it makes earlier visible commits durable.
        if durable && pending {
            make_durable(db)
        } else {
            Ok(())
        }
    } else {
        commit(db, &ops, durable)
    };
    match outcome {
        Ok(()) => {
            for Job { op, done, .. } in batch {
                // The write (and what it holds, a last handle to this store
                // perhaps) is dropped before its caller hears back.
                let was_write = op.is_some();
                drop(op);
                if let Some(done) = done {
                    let result = match (was_write, failed.take()) {
                        (false, Some(error)) => Err(error),
                        (true, earlier) => {
                            *failed = earlier;
                            Ok(())
                        }
                        (false, None) => Ok(()),
                    };
                    done.send(result);
                }
            }
            true
        }
        Err(error) if ops.is_empty() => {
            for Job { op, done, .. } in batch {
                drop(op);
                if let Some(done) = done {
                    done.send(Err(error.clone()));
                }
            }
            false
        }
        Err(error) => {
            tracing::warn!(%error, writes = ops.len(), "a batched commit failed; committing its writes one by one");
            let mut all = true;
            for Job { op, done, .. } in batch {
                let result = match &op {
                    Some(op) => commit(db, &[op], durable),
                    None => failed.take().map_or(Ok(()), Err),
                };
                if let (Err(error), Some(_)) = (&result, &op) {
                    tracing::error!(%error, "a database write failed");
                    *failed = Some(error.clone());
                    all = false;
                }
                drop(op);
                if let Some(done) = done {
                    done.send(result);
                }
            }
            all
        }
    }
}

fn commit(db: &redb::Database, ops: &[&WriteOp], durable: bool) -> Result<(), StoreError> {
    let mut txn = db.begin_write().map_err(io)?;
    if !durable {
        txn.set_durability(redb::Durability::None).map_err(io)?;
    }
    for op in ops {
        if let Err(error) = op(&txn) {
            let _ = txn.abort();
            return Err(error);
        }
    }
    txn.commit().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::{ReadableDatabase, ReadableTable};
    use std::sync::atomic::{AtomicUsize, Ordering};

    const ROWS: redb::TableDefinition<u64, u64> = redb::TableDefinition::new("test_rows");

    fn put(n: u64) -> WriteOp {
        Box::new(move |txn| {
            let mut table = txn.open_table(ROWS).map_err(io)?;
            table.insert(n, n * 10).map_err(io)?;
            Ok(())
        })
    }

    fn rows(store: &Store) -> Vec<(u64, u64)> {
        let txn = store.db().begin_read().expect("read");
        let Some(table) = read_table(&txn, ROWS).expect("table") else {
            return Vec::new();
        };
        table
            .iter()
            .expect("iter")
            .map(|e| {
                let (k, v) = e.expect("row");
                (k.value(), v.value())
            })
            .collect()
    }

    #[tokio::test]
    async fn background_writes_commit_with_a_sync_a_waited_write_or_shutdown() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("store.redb");
        let store = Store::open_with(&path, StoreSync::Interval(60_000)).expect("open");
        let done = Arc::new(AtomicUsize::new(0));
        for n in 0..100 {
            let done = done.clone();
            store.write_later(
                put(n),
                Box::new(move |result| {
                    assert!(result.is_ok());
                    done.fetch_add(1, Ordering::SeqCst);
                }),
            );
        }
        // A sync commits what was queued before it, background or not, and
        // every callback has run by the time it resolves.
        store.sync().await.expect("sync");
        assert_eq!(done.load(Ordering::SeqCst), 100);
        assert_eq!(rows(&store).len(), 100);

        // A waited write does not wait behind the background linger: it
        // takes the background writes queued before it into its commit.
        store.write_later(put(100), Box::new(|_| {}));
        store.write(|txn| put(101)(txn)).await.expect("write");
        let seen: Vec<u64> = rows(&store).into_iter().map(|(k, _)| k).collect();
        assert!(seen.contains(&100) && seen.contains(&101));

        // Shutdown commits a background write still gathering, durably.
        store.write_later(put(102), Box::new(|_| {}));
        drop(store);
        let reopened = Store::open(&path).expect("reopen");
        assert_eq!(rows(&reopened).len(), 103);
        assert!(rows(&reopened).contains(&(102, 1020)));
    }
}
