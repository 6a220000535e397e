//! The audit log: an append-only, HMAC-SHA256-signed, hash-chained JSONL file
//! with one writer thread, plus offline verification ([`verify`]) and reading
//! ([`read_entries`]).
//!
//! # Format
//!
//! One JSON object per line, fields in this order:
//!
//! ```text
//! {"seq":1,"ts":"2026-11-28T18:00:00.123Z","tenant":"acme","user":"alice","run":"run_01H…",
//!  "action":"tool_call","actor":"model","data":{…},"prev":"<64 hex>","mac":"<64 hex>"}
//! ```
//!
//! * `seq` counts from 1 and goes on across restarts; `ts` is assigned by the
//!   writer (RFC 3339, UTC, milliseconds) and never goes backwards.
//! * `prev` is the previous entry's `mac` (64 zeros for seq 1): the entries
//!   form a chain, so deleting, inserting or reordering lines is detected.
//! * `mac` is the hex HMAC-SHA256, under the audit key, of the entry's
//!   *canonical bytes*: the compact JSON of every other field in the order
//!   above, with the keys of every object inside `data` sorted bytewise,
//!   strings escaped minimally (`"`, `\`, control characters), integers that
//!   fit `u64`/`i64` written as integers and every other number as the
//!   shortest text that reads back as the same `f64`. Verification rebuilds
//!   the canonical bytes from the parsed line, so re-indenting a line or
//!   reordering its keys does not break it; only a change of value does.
//!
//! Beside the log, `<path>.head` holds `{"seq":N,"mac":…,"head_mac":…}` for
//! the last entry known to be written (and, unless the policy is
//! [`FsyncPolicy::Never`], synced), signed with the same key, so removing
//! lines from the end of the log is detected too. The head may lag the log
//! (after a crash, or by up to one interval under [`FsyncPolicy::Interval`]);
//! it is never ahead of it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

type HmacSha256 = Hmac<Sha256>;

/// `prev` of the first entry, and `mac` of the (empty) head of a new log.
const ZERO_MAC: [u8; 64] = [b'0'; 64];
/// Most messages the writer takes from its queue for one batch.
const MAX_BATCH: usize = 8192;
/// Unwritten bytes the writer keeps for a retry after a failed write before
/// it gives up.
const MAX_PENDING: usize = 256 * 1024 * 1024;
/// Containers nested deeper than this inside `data` are stored as the string
/// [`TOO_DEEP`], so that every line stays readable by JSON parsers with a
/// recursion limit (serde_json's is 128).
const MAX_DATA_DEPTH: usize = 100;
/// What a container nested deeper than [`MAX_DATA_DEPTH`] is stored as.
const TOO_DEEP: &str = "[nested too deeply]";
/// Deepest nesting the verifying parser accepts, counting the line's object.
const MAX_PARSE_DEPTH: usize = 128;
/// How long dropping the last [`AuditLog`] handle waits for the writer.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(30);

/// How long the writer lets entries gather after writing a batch that did
/// not fill up. While it waits, queuing an entry is a lock-free push with
/// no wake-up, so under load a run's entries cost no system calls on the
/// caller's thread and the writer wakes at most this often; a flush may
/// wait this much longer.
const LINGER: Duration = Duration::from_millis(5);
/// Chunk size for reading the end of a log backwards.
const TAIL_CHUNK: u64 = 64 * 1024;
/// What [`read_entries`] puts in place of a redacted field.
pub const REDACTED: &str = "[redacted]";

// ---------------------------------------------------------------------------
// Settings and records
// ---------------------------------------------------------------------------

/// When the writer forces written entries to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// `sync_data` after every batch, before [`AuditLog::flush`] answers: an
    /// entry that a flush reported is on disk.
    Always,
    /// `sync_data` at most once per interval, and at the latest one interval
    /// after a write. The head file follows each sync, so it may lag the log
    /// by up to one interval. A flush means "written to the OS".
    Interval(Duration),
    /// No `sync_data` while running (only once when the log is closed); a
    /// flush means "written to the OS". After a power loss the head file may
    /// claim more than the disk kept, and opening the log then refuses.
    Never,
}

/// The HMAC key. Debug must not print it.
#[derive(Clone)]
pub struct AuditKey(Vec<u8>);

impl AuditKey {
    /// A key made of these bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        AuditKey(bytes)
    }

    /// The empty key: the log is still chained, but anyone can forge MACs.
    /// For tests and throwaway setups only.
    pub fn insecure_empty() -> Self {
        AuditKey(Vec::new())
    }

    /// Whether the key is empty (and so proves nothing).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A MAC keyed with this key, to clone for each message.
    fn mac(&self) -> Result<HmacSha256, String> {
        HmacSha256::new_from_slice(&self.0).map_err(|e| e.to_string())
    }
}

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            f.write_str("AuditKey(empty)")
        } else {
            f.write_str("AuditKey(***)")
        }
    }
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct AuditSettings {
    /// The log file (JSONL); its head file is `<path>.head`.
    pub path: PathBuf,
    /// The key that signs every entry and the head.
    pub key: AuditKey,
    /// When written entries are forced to disk.
    pub fsync: FsyncPolicy,
    /// Payload field names that readers replace with `"[redacted]"`.
    pub redact: Vec<String>,
}

/// One entry to append (the writer adds seq, ts, prev, mac).
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    /// The tenant the event belongs to (`"*"` for the host itself).
    pub tenant: String,
    /// The user, or `None` when anonymous.
    pub user: Option<String>,
    /// The run, or `None` outside a run.
    pub run: Option<String>,
    /// What happened: `run_started`, `tool_call`, `permission_decision`, …
    pub action: &'static str,
    /// Who did it: `user`, `model`, `system`, `approver`, `policy:<name>`, …
    pub actor: String,
    /// The payload. An object is stored as is; `null` is stored as `{}` and
    /// any other value `v` as `{"value": v}`, so `data` is always an object.
    pub data: Value,
}

/// A stored entry as read back.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct AuditEntry {
    /// Position in the log, from 1.
    pub seq: u64,
    /// When the writer sequenced it (RFC 3339, UTC, milliseconds).
    pub ts: String,
    /// The tenant.
    pub tenant: String,
    /// The user, or `None` when anonymous.
    pub user: Option<String>,
    /// The run, or `None`.
    pub run: Option<String>,
    /// What happened.
    pub action: String,
    /// Who did it.
    pub actor: String,
    /// The payload (an object).
    pub data: Value,
    /// The previous entry's `mac` (64 zeros for seq 1).
    pub prev: String,
    /// Hex HMAC-SHA256 of the entry's canonical bytes.
    pub mac: String,
}

/// Filter for reading.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only this tenant's entries.
    pub tenant: Option<String>,
    /// Only this user's entries (anonymous entries never match).
    pub user: Option<String>,
    /// Only entries stamped at or after this time.
    pub since: Option<SystemTime>,
}

/// Errors of opening, writing and reading an audit log. Each message names
/// the file and says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// A file operation failed.
    #[error(
        "cannot {action} {}: {source}; check that the path is right and that its directory exists and is writable by the user running loom",
        path.display()
    )]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// What was being done, as a verb phrase ("open", "read", …).
        action: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Another writer holds the log.
    #[error(
        "{} is already open for writing by another audit writer (another loom process, or a second AuditLog in this one); stop that writer, or give this instance its own audit path",
        path.display()
    )]
    Locked {
        /// The log file.
        path: PathBuf,
    },
    /// The key cannot key an HMAC.
    #[error("cannot use the audit key for {}: {reason}; configure a valid audit key", path.display())]
    Key {
        /// The log file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The last complete line of the log is not an entry.
    #[error(
        "the last line of {} (at byte {offset}) is not a valid audit entry: {reason}; run `loom audit verify` on it to find the damage, then restore the log from a backup or move it aside to start a new one",
        path.display()
    )]
    TailInvalid {
        /// The log file.
        path: PathBuf,
        /// Byte offset of the line.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The last line's MAC does not verify.
    #[error(
        "the last line of {} (at byte {offset}, entry seq {seq}) does not match its MAC under the configured audit key: it was edited, or the key changed; run `loom audit verify` on it, then restore the log or the key (loom does not append to a log it cannot vouch for)",
        path.display()
    )]
    TailMac {
        /// The log file.
        path: PathBuf,
        /// Byte offset of the line.
        offset: u64,
        /// The seq the line claims.
        seq: u64,
    },
    /// The head records more entries than the log holds.
    #[error(
        "{} ends at seq {log_seq} but its head file records seq {head_seq}: entries were removed from the end; run `loom audit verify` on it, then restore the log from a backup, or move the log and its .head aside to start a new log",
        path.display()
    )]
    Truncated {
        /// The log file.
        path: PathBuf,
        /// The last seq in the log.
        log_seq: u64,
        /// The seq in the head file.
        head_seq: u64,
    },
    /// A non-empty log without its head file.
    #[error(
        "{} holds entries but its head file {} is missing (loom always writes one, so it was deleted or the log comes from elsewhere); restore the head file from a backup, or move the log aside to start a new one",
        path.display(),
        head.display()
    )]
    HeadMissing {
        /// The log file.
        path: PathBuf,
        /// The missing head file.
        head: PathBuf,
    },
    /// The head file is unreadable, malformed, or not signed with the key.
    #[error(
        "the head file {} of {} is not valid: {reason}; restore it from a backup, or move the log and its head aside to start a new log",
        head.display(),
        path.display()
    )]
    HeadInvalid {
        /// The log file.
        path: PathBuf,
        /// The head file.
        head: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The head and the log disagree about the last entry.
    #[error(
        "the head file of {} records a different MAC for entry {seq} than the log holds: the end of the log was replaced; run `loom audit verify` on it, then restore the log from a backup or move it and its head aside",
        path.display()
    )]
    HeadMismatch {
        /// The log file.
        path: PathBuf,
        /// The seq both claim.
        seq: u64,
    },
    /// The writer could not write, sync or record the head.
    #[error(
        "the audit writer of {} failed: {message}; free disk space or fix the file's permissions (the writer retries on the next record or flush; if it says it stopped writing, restart loom, and opening the log repairs a cut-off last line)",
        path.display()
    )]
    Writer {
        /// The log file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
    /// The writer thread is gone.
    #[error(
        "the audit writer of {} has stopped, so recent entries may not be written; see the log for the error that stopped it and restart loom",
        path.display()
    )]
    WriterStopped {
        /// The log file.
        path: PathBuf,
    },
    /// A line of the log cannot be read as an entry.
    #[error(
        "line {line} of {} is not a valid audit entry: {reason}; run `loom audit verify` on the log to check it",
        path.display()
    )]
    Entry {
        /// The log file.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What is wrong with it.
        reason: String,
    },
}

/// Why [`verify`] rejected a log: the first bad line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyFailure {
    /// 1-based line number; 0 when the file itself cannot be read; one past
    /// the last line for problems found at the end (truncation, head file).
    pub line: u64,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

impl std::error::Error for VerifyFailure {}

/// The head file of the log at `path`: `<path>.head`.
pub fn head_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".head");
    PathBuf::from(name)
}

fn head_tmp_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".head.tmp");
    PathBuf::from(name)
}

// ---------------------------------------------------------------------------
// The log handle and its writer thread
// ---------------------------------------------------------------------------

enum Msg {
    /// A record's fields after `ts`, rendered by [`render_fields`].
    Record(Vec<u8>),
    Flush(tokio::sync::oneshot::Sender<Result<(), String>>),
}

/// An open audit log: queue entries with [`AuditLog::record`], wait for them
/// with [`AuditLog::flush`]. Cloning shares the same writer; when the last
/// handle is dropped the writer writes what is queued, syncs, updates the
/// head and exits (the drop waits for it, at most 30 seconds).
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

struct Inner {
    tx: Option<mpsc::Sender<Msg>>,
    path: PathBuf,
    redact: Vec<String>,
    thread: Option<JoinHandle<()>>,
    done: Mutex<mpsc::Receiver<()>>,
    /// Whether a record dropped for lack of a writer was already logged.
    reported_stop: AtomicBool,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.inner.path)
            .field("redact", &self.inner.redact)
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Open (create if missing, with parent directories) and start the writer.
    ///
    /// An existing log is continued: its last line is read (from the end, not
    /// the whole file) and its MAC checked; numbering goes on from it. A
    /// cut-off last line (a crash mid-write) is removed, and an entry
    /// `log_recovered` with `{"dropped_bytes": n}` records it. Refuses a log
    /// whose last line does not verify, whose head file is missing or
    /// invalid, or whose head records more entries than the log holds.
    pub fn open(settings: &AuditSettings) -> Result<AuditLog, AuditError> {
        let path = settings.path.clone();
        let io_err = |action: &'static str, source: io::Error| AuditError::Io {
            path: settings.path.clone(),
            action,
            source,
        };
        let base = settings.key.mac().map_err(|reason| AuditError::Key {
            path: path.clone(),
            reason,
        })?;
        if settings.key.is_empty() {
            tracing::warn!(
                path = %path.display(),
                "the audit key is empty: the audit log is chained but its MACs prove nothing; configure a key"
            );
        }
        let mut created_dir = false;
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
            && !parent.exists()
        {
            fs::create_dir_all(parent).map_err(|e| io_err("create the directory of", e))?;
            created_dir = true;
        }
        let existed = path.exists();
        let mut file = open_private(
            OpenOptions::new().read(true).append(true).create(true),
            &path,
        )
        .map_err(|e| io_err("open", e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(AuditError::Locked { path }),
            Err(fs::TryLockError::Error(e)) => tracing::warn!(
                path = %path.display(),
                error = %e,
                "cannot lock the audit log; make sure no other loom writes to it"
            ),
        }
        if !existed && settings.fsync != FsyncPolicy::Never {
            sync_dir_of(&path, created_dir);
        }
        let len = file
            .metadata()
            .map_err(|e| io_err("read the size of", e))?
            .len();
        let tail = read_tail(&mut file, len).map_err(|e| io_err("read the end of", e))?;

        let mut last_seq = 0;
        let mut last_mac = ZERO_MAC;
        let mut last_ms = 0;
        if let Some((offset, line)) = &tail.last_line {
            let parsed = parse_line(line).map_err(|reason| AuditError::TailInvalid {
                path: path.clone(),
                offset: *offset,
                reason,
            })?;
            if !parsed.mac_matches(&base) {
                return Err(AuditError::TailMac {
                    path,
                    offset: *offset,
                    seq: parsed.seq,
                });
            }
            last_seq = parsed.seq;
            last_mac = parsed.mac;
            last_ms = parse_ts_ms(&parsed.ts).unwrap_or(0);
        }

        let head_file = head_path(&path);
        let head = read_head(&head_file, &base).map_err(|reason| AuditError::HeadInvalid {
            path: path.clone(),
            head: head_file.clone(),
            reason,
        })?;
        match &head {
            None if tail.last_line.is_some() => {
                return Err(AuditError::HeadMissing {
                    path,
                    head: head_file,
                });
            }
            Some(h) if h.seq > last_seq => {
                return Err(AuditError::Truncated {
                    path,
                    log_seq: last_seq,
                    head_seq: h.seq,
                });
            }
            Some(h) if h.seq == last_seq && h.mac != last_mac => {
                return Err(AuditError::HeadMismatch { path, seq: h.seq });
            }
            _ => {}
        }

        let dropped = len - tail.complete_end;
        if dropped > 0 {
            file.set_len(tail.complete_end)
                .map_err(|e| io_err("cut the incomplete last line off", e))?;
            tracing::warn!(
                path = %path.display(),
                dropped_bytes = dropped,
                "the audit log ended with an incomplete line (a write was cut off); removed it"
            );
        }

        let mut writer = Writer {
            file,
            path: path.clone(),
            head_path: head_file,
            head_tmp: head_tmp_path(&path),
            base,
            fsync: settings.fsync,
            next_seq: last_seq.saturating_add(1),
            prev: last_mac,
            written_seq: last_seq,
            written_mac: last_mac,
            synced_seq: last_seq,
            head_seq: head.as_ref().map(|h| h.seq),
            file_len: tail.complete_end,
            last_sync: Instant::now(),
            last_ms,
            ts_cache: (i64::MIN, String::new()),
            buf: Vec::with_capacity(64 * 1024),
            poisoned: None,
            write_error: None,
            head_error: None,
        };
        let sync = settings.fsync != FsyncPolicy::Never;
        if sync && (dropped > 0 || writer.head_seq != Some(last_seq)) {
            // The cut, and the entries the head is about to vouch for, go to
            // disk before the head does.
            writer.file.sync_data().map_err(|e| io_err("sync", e))?;
        }
        if writer.head_seq != Some(last_seq) {
            writer
                .write_head(sync)
                .map_err(|e| io_err("write the head file of", e))?;
        }

        let (tx, rx) = mpsc::channel();
        if dropped > 0 {
            let mut data = serde_json::Map::new();
            data.insert("dropped_bytes".to_owned(), Value::from(dropped));
            // The receiver is alive: it is right here.
            let _ = tx.send(Msg::Record(render_fields(RecordFields {
                tenant: "*",
                user: None,
                run: None,
                action: "log_recovered",
                actor: "system",
                data: Data::Value(&Value::Object(data)),
            })));
        }
        let (done_tx, done_rx) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("loom-audit-writer".to_owned())
            .spawn(move || {
                let mut writer = writer;
                writer.run(rx);
                drop(done_tx);
            })
            .map_err(|e| io_err("start the writer thread of", e))?;
        Ok(AuditLog {
            inner: Arc::new(Inner {
                tx: Some(tx),
                path,
                redact: settings.redact.clone(),
                thread: Some(thread),
                done: Mutex::new(done_rx),
                reported_stop: AtomicBool::new(false),
            }),
        })
    }

    /// Queue `record`; never blocks on I/O, never fails (a writer failure is
    /// logged with tracing::error and reported by the next flush()).
    ///
    /// The record is rendered here, on the caller's thread, into the one
    /// buffer the writer sequences and signs: the writer's thread frees one
    /// allocation per entry, not the record's every string and value.
    pub fn record(&self, record: AuditRecord) {
        self.record_fields(record.fields());
    }

    /// [`Self::record`] from borrowed fields (nothing is copied but into
    /// the rendered entry).
    pub fn record_fields(&self, fields: RecordFields<'_>) {
        self.queue(render_fields(fields));
    }

    fn queue(&self, body: Vec<u8>) {
        let sent = match &self.inner.tx {
            Some(tx) => tx.send(Msg::Record(body)).is_ok(),
            None => false,
        };
        if !sent && !self.inner.reported_stop.swap(true, Ordering::Relaxed) {
            tracing::error!(
                path = %self.inner.path.display(),
                "the audit writer has stopped; audit entries are being dropped (reported once)"
            );
        }
    }

    /// Resolves once every record queued before this call is written (and
    /// fsynced when the policy is Always). Err if the writer failed.
    pub fn flush(
        &self,
    ) -> impl std::future::Future<Output = Result<(), AuditError>> + Send + 'static {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if let Some(sender) = &self.inner.tx {
            // On failure `tx` is dropped with the message and `rx` reports it.
            let _ = sender.send(Msg::Flush(tx));
        }
        let path = self.inner.path.clone();
        async move {
            match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(message)) => Err(AuditError::Writer { path, message }),
                Err(_) => Err(AuditError::WriterStopped { path }),
            }
        }
    }

    /// The settings' redact list.
    pub fn redact_fields(&self) -> &[String] {
        &self.inner.redact
    }

    /// The log file this handle writes.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue tells the writer to drain it and exit.
        drop(self.tx.take());
        let Some(thread) = self.thread.take() else {
            return;
        };
        let done = crate::sync::get_mut(&mut self.done);
        match done.recv_timeout(SHUTDOWN_WAIT) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                if thread.join().is_err() {
                    tracing::error!(path = %self.path.display(), "the audit writer panicked");
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => tracing::warn!(
                path = %self.path.display(),
                "the audit writer did not finish within {SHUTDOWN_WAIT:?}; leaving it to finish alone"
            ),
        }
    }
}

struct Writer {
    file: File,
    path: PathBuf,
    head_path: PathBuf,
    head_tmp: PathBuf,
    /// HMAC keyed once; cloned per message.
    base: HmacSha256,
    fsync: FsyncPolicy,
    /// Seq the next entry gets.
    next_seq: u64,
    /// MAC of the last sequenced entry (possibly not written yet).
    prev: [u8; 64],
    /// Last entry in the file, and its MAC.
    written_seq: u64,
    written_mac: [u8; 64],
    /// Last entry known to be on disk.
    synced_seq: u64,
    /// Seq the head file records (None: no head file yet).
    head_seq: Option<u64>,
    /// Length of the file up to the last written entry.
    file_len: u64,
    last_sync: Instant,
    /// Last timestamp handed out, in Unix milliseconds.
    last_ms: i64,
    ts_cache: (i64, String),
    /// Sequenced lines not yet written.
    buf: Vec<u8>,
    /// Set when the writer cannot go on safely; it then drops entries.
    poisoned: Option<String>,
    /// The last write failed; `buf` is kept for a retry.
    write_error: Option<String>,
    head_error: Option<String>,
}

impl Writer {
    fn run(&mut self, rx: mpsc::Receiver<Msg>) {
        let mut batch: Vec<Msg> = Vec::with_capacity(1024);
        loop {
            let first = match self.sync_deadline() {
                Some(deadline) => {
                    match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                        Ok(msg) => msg,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            self.sync_and_head();
                            continue;
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
                None => match rx.recv() {
                    Ok(msg) => msg,
                    Err(_) => break,
                },
            };
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(msg) => batch.push(msg),
                    Err(_) => break,
                }
            }
            let full = batch.len() >= MAX_BATCH;
            self.process(&mut batch);
            if !full {
                std::thread::sleep(LINGER);
            }
        }
        self.shutdown();
    }

    /// When an Interval policy next wants a sync, if something is unsynced.
    fn sync_deadline(&self) -> Option<Instant> {
        match self.fsync {
            FsyncPolicy::Interval(every)
                if self.poisoned.is_none() && self.head_seq != Some(self.written_seq) =>
            {
                self.last_sync.checked_add(every)
            }
            _ => None,
        }
    }

    fn process(&mut self, batch: &mut Vec<Msg>) {
        let ts = self.next_ts();
        let mut waiters = Vec::new();
        let mut dropped = 0u64;
        for msg in batch.drain(..) {
            match msg {
                Msg::Record(body) => {
                    if self.poisoned.is_some() {
                        dropped += 1;
                    } else {
                        self.append(&body, &ts);
                    }
                }
                Msg::Flush(waiter) => waiters.push(waiter),
            }
        }
        if dropped > 0 {
            tracing::error!(
                path = %self.path.display(),
                dropped,
                "the audit writer has failed; dropped audit entries"
            );
        }
        self.write_pending();
        if self.poisoned.is_none() && self.write_error.is_none() {
            match self.fsync {
                FsyncPolicy::Always => self.sync_and_head(),
                FsyncPolicy::Interval(every) => {
                    if self.last_sync.elapsed() >= every {
                        self.sync_and_head();
                    }
                }
                FsyncPolicy::Never => self.update_head(false),
            }
        }
        if !waiters.is_empty() {
            let status = self.status();
            for waiter in waiters {
                // A waiter that stopped waiting does not need the answer.
                let _ = waiter.send(status.clone());
            }
        }
    }

    fn status(&self) -> Result<(), String> {
        if let Some(message) = &self.poisoned {
            return Err(message.clone());
        }
        if let Some(message) = &self.write_error {
            return Err(format!("entries are waiting to be written: {message}"));
        }
        if let Some(message) = &self.head_error {
            return Err(format!("cannot update the head file: {message}"));
        }
        Ok(())
    }

    /// The timestamp for the entries of this batch, never earlier than the
    /// last one handed out.
    fn next_ts(&mut self) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let ms = now.max(self.last_ms);
        self.last_ms = ms;
        if self.ts_cache.0 != ms {
            self.ts_cache = (ms, format_ts(ms));
        }
        self.ts_cache.1.clone()
    }

    /// Sequence the record rendered as `body` ([`render_fields`]), MAC it
    /// and add its line to `buf`.
    fn append(&mut self, body: &[u8], ts: &str) {
        let seq = self.next_seq;
        let b = &mut self.buf;
        let start = b.len();
        b.extend_from_slice(b"{\"seq\":");
        push_u64(b, seq);
        b.extend_from_slice(b",\"ts\":");
        push_str(b, ts);
        b.extend_from_slice(body);
        b.extend_from_slice(b",\"prev\":\"");
        b.extend_from_slice(&self.prev);
        b.push(b'"');
        let mut mac = self.base.clone();
        mac.update(&b[start..]);
        mac.update(b"}");
        let tag = hex64(&mac.finalize().into_bytes());
        b.extend_from_slice(b",\"mac\":\"");
        b.extend_from_slice(&tag);
        b.extend_from_slice(b"\"}\n");
        self.prev = tag;
        self.next_seq = seq.saturating_add(1);
    }

    /// Write `buf` with one `write_all`. On failure, cut the file back to
    /// its last complete line and keep `buf` for a retry.
    fn write_pending(&mut self) {
        if self.buf.is_empty() || self.poisoned.is_some() {
            return;
        }
        match self.file.write_all(&self.buf) {
            Ok(()) => {
                self.file_len += self.buf.len() as u64;
                self.buf.clear();
                if self.buf.capacity() > 16 * 1024 * 1024 {
                    self.buf.shrink_to(1024 * 1024);
                }
                self.written_seq = self.next_seq.saturating_sub(1);
                self.written_mac = self.prev;
                self.write_error = None;
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), error = %e, "cannot write the audit log; will retry");
                match self.file.set_len(self.file_len) {
                    Ok(()) => {
                        self.write_error = Some(e.to_string());
                        if self.buf.len() > MAX_PENDING {
                            self.poison(format!(
                                "writing failed ({e}) and too many entries piled up; they were dropped"
                            ));
                        }
                    }
                    Err(e2) => self.poison(format!(
                        "writing failed ({e}) and cutting off the partly written lines failed too ({e2})"
                    )),
                }
            }
        }
    }

    fn poison(&mut self, message: String) {
        tracing::error!(path = %self.path.display(), "{message}; the audit writer stops writing");
        self.poisoned = Some(message);
        self.buf = Vec::new();
    }

    /// Force the written entries to disk, then update the head.
    fn sync_and_head(&mut self) {
        if self.poisoned.is_some() {
            return;
        }
        if self.synced_seq != self.written_seq {
            if let Err(e) = self.file.sync_data() {
                self.poison(format!(
                    "fsync failed ({e}); the entries may not be on disk"
                ));
                return;
            }
            self.synced_seq = self.written_seq;
        }
        self.last_sync = Instant::now();
        self.update_head(true);
    }

    fn update_head(&mut self, sync: bool) {
        if self.head_seq == Some(self.written_seq) {
            return;
        }
        match self.write_head(sync) {
            Ok(()) => self.head_error = None,
            Err(e) => {
                tracing::error!(path = %self.head_path.display(), error = %e, "cannot update the audit head file");
                self.head_error = Some(e.to_string());
            }
        }
    }

    /// Record the last written entry in the head file (temp file + rename).
    fn write_head(&mut self, sync: bool) -> io::Result<()> {
        let seq = self.written_seq;
        let mut mac = self.base.clone();
        mac.update(&head_message(seq, &self.written_mac));
        let head_mac = hex64(&mac.finalize().into_bytes());
        let mut text = Vec::with_capacity(180);
        text.extend_from_slice(b"{\"seq\":");
        push_u64(&mut text, seq);
        text.extend_from_slice(b",\"mac\":\"");
        text.extend_from_slice(&self.written_mac);
        text.extend_from_slice(b"\",\"head_mac\":\"");
        text.extend_from_slice(&head_mac);
        text.extend_from_slice(b"\"}\n");
        let mut tmp = open_private(
            OpenOptions::new().write(true).create(true).truncate(true),
            &self.head_tmp,
        )?;
        tmp.write_all(&text)?;
        if sync {
            tmp.sync_data()?;
        }
        drop(tmp);
        fs::rename(&self.head_tmp, &self.head_path)?;
        self.head_seq = Some(seq);
        Ok(())
    }

    fn shutdown(&mut self) {
        self.write_pending();
        if self.poisoned.is_none() && self.write_error.is_none() {
            self.sync_and_head();
        }
        if let Some(message) = self.status().err() {
            tracing::error!(path = %self.path.display(), "the audit log closed with an error: {message}");
        }
    }
}

/// Open with owner-only permissions where the platform has them.
fn open_private(options: &mut OpenOptions, path: &Path) -> io::Result<File> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Make a new file's directory entry durable (best effort).
fn sync_dir_of(path: &Path, created_dir: bool) {
    #[cfg(unix)]
    {
        let Some(dir) = path.parent() else { return };
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let mut dirs = vec![dir];
        if created_dir
            && let Some(up) = dir.parent()
            && !up.as_os_str().is_empty()
        {
            dirs.push(up);
        }
        for dir in dirs {
            if let Err(e) = File::open(dir).and_then(|d| d.sync_all()) {
                tracing::debug!(dir = %dir.display(), error = %e, "cannot sync the audit log's directory");
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (path, created_dir);
    }
}

/// The end of a log: where its complete lines end, and its last complete line.
struct Tail {
    complete_end: u64,
    /// Byte offset and bytes (without the newline) of the last complete line.
    last_line: Option<(u64, Vec<u8>)>,
}

fn read_tail(file: &mut File, len: u64) -> io::Result<Tail> {
    let mut chunk = Vec::new();
    let Some(last_nl) = rfind_newline(file, len, &mut chunk)? else {
        return Ok(Tail {
            complete_end: 0,
            last_line: None,
        });
    };
    let start = rfind_newline(file, last_nl, &mut chunk)?.map_or(0, |p| p + 1);
    let mut line = vec![0; usize::try_from(last_nl - start).map_err(io::Error::other)?];
    file.seek(SeekFrom::Start(start))?;
    file.read_exact(&mut line)?;
    Ok(Tail {
        complete_end: last_nl + 1,
        last_line: Some((start, line)),
    })
}

/// Offset of the last `\n` before `end`, reading backwards in chunks.
fn rfind_newline(file: &mut File, end: u64, chunk: &mut Vec<u8>) -> io::Result<Option<u64>> {
    let mut hi = end;
    while hi > 0 {
        let lo = hi.saturating_sub(TAIL_CHUNK);
        let n = (hi - lo) as usize; // at most TAIL_CHUNK
        chunk.resize(n, 0);
        file.seek(SeekFrom::Start(lo))?;
        file.read_exact(&mut chunk[..n])?;
        if let Some(i) = chunk[..n].iter().rposition(|&b| b == b'\n') {
            return Ok(Some(lo + i as u64));
        }
        hi = lo;
    }
    Ok(None)
}

// ---------------------------------------------------------------------------
// Head file
// ---------------------------------------------------------------------------

struct Head {
    seq: u64,
    mac: [u8; 64],
}

#[derive(Deserialize)]
struct HeadFile {
    seq: u64,
    mac: String,
    head_mac: String,
}

fn head_message(seq: u64, mac: &[u8; 64]) -> Vec<u8> {
    let mut message = Vec::with_capacity(100);
    message.extend_from_slice(b"loom-audit-head:");
    push_u64(&mut message, seq);
    message.push(b':');
    message.extend_from_slice(mac);
    message
}

/// The head file, checked against the key; `Ok(None)` when it does not exist.
fn read_head(path: &Path, base: &HmacSha256) -> Result<Option<Head>, String> {
    let text = match fs::read(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read it: {e}")),
    };
    let head: HeadFile = serde_json::from_slice(&text)
        .map_err(|e| format!("it is not a JSON object with seq, mac and head_mac: {e}"))?;
    let mac = parse_hex64(&head.mac).ok_or("its mac is not 64 lowercase hex digits")?;
    let head_mac =
        parse_hex64(&head.head_mac).ok_or("its head_mac is not 64 lowercase hex digits")?;
    let mut check = base.clone();
    check.update(&head_message(head.seq, &mac));
    if check.verify_slice(&unhex32(&head_mac)).is_err() {
        return Err(
            "its head_mac does not match under the configured key: it was edited, or the key changed"
                .to_owned(),
        );
    }
    if head.seq == 0 && mac != ZERO_MAC {
        return Err("it records seq 0 with a MAC other than zeros".to_owned());
    }
    Ok(Some(Head { seq: head.seq, mac }))
}

// ---------------------------------------------------------------------------
// Verification
// ---------------------------------------------------------------------------

/// Check a whole log. Ok(number of entries) or the first bad line.
///
/// Reads line by line and reports the first line that is not a valid entry
/// (a cut-off last line included), whose MAC does not match (an edit, or a
/// different key), whose seq is not the previous one plus one (deletion,
/// insertion, reordering), or whose `prev` is not the previous `mac`. Then
/// compares the end with the head file: a missing or invalid head, or one
/// that records more entries than the log holds, fails at the line after the
/// last. An empty log without a head file is `Ok(0)`; a missing log is a
/// failure at line 0.
///
/// Meant for a log that no writer is appending to: a batch being written
/// shows as a cut-off last line.
pub fn verify(path: &Path, key: &AuditKey) -> Result<u64, VerifyFailure> {
    let fail = |line: u64, reason: String| VerifyFailure { line, reason };
    let base = key
        .mac()
        .map_err(|e| fail(0, format!("cannot use the audit key: {e}")))?;
    let head_file = head_path(path);
    let head = read_head(&head_file, &base);
    let file =
        File::open(path).map_err(|e| fail(0, format!("cannot open {}: {e}", path.display())))?;
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let mut line = Vec::with_capacity(4096);
    let mut line_no = 0u64;
    let mut last_seq = 0u64;
    let mut prev = ZERO_MAC;
    let head_target = head.as_ref().ok().and_then(|h| h.as_ref().map(|h| h.seq));
    let mut mac_at_head = (head_target == Some(0)).then_some(ZERO_MAC);
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| fail(line_no + 1, format!("cannot read {}: {e}", path.display())))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        if line.last() == Some(&b'\n') {
            line.pop();
        } else {
            return Err(fail(
                line_no,
                "the line has no newline at its end: a write was cut off (opening the log with loom removes it)"
                    .to_owned(),
            ));
        }
        let parsed = parse_line(&line)
            .map_err(|e| fail(line_no, format!("not a valid audit entry: {e}")))?;
        if !parsed.mac_matches(&base) {
            return Err(fail(
                line_no,
                "the MAC does not match: the line was edited, or the log was written with another key"
                    .to_owned(),
            ));
        }
        let expected = last_seq.saturating_add(1);
        if parsed.seq != expected {
            return Err(fail(
                line_no,
                format!(
                    "expected seq {expected}, found seq {}: entries were deleted, inserted or reordered",
                    parsed.seq
                ),
            ));
        }
        if parsed.prev != prev {
            return Err(fail(
                line_no,
                "prev is not the MAC of the previous entry: entries were deleted, inserted or reordered"
                    .to_owned(),
            ));
        }
        prev = parsed.mac;
        last_seq = parsed.seq;
        if head_target == Some(last_seq) {
            mac_at_head = Some(prev);
        }
    }
    let end = line_no + 1;
    match head {
        Err(reason) => Err(fail(
            end,
            format!(
                "the head file {} is not valid: {reason}",
                head_file.display()
            ),
        )),
        Ok(None) if line_no == 0 => Ok(0),
        Ok(None) => Err(fail(
            end,
            format!(
                "the head file {} is missing, so removal of entries from the end cannot be ruled out",
                head_file.display()
            ),
        )),
        Ok(Some(h)) if h.seq > last_seq => Err(fail(
            end,
            format!(
                "the log ends at seq {last_seq} but its head records seq {}: entries were removed from the end",
                h.seq
            ),
        )),
        Ok(Some(h)) if mac_at_head != Some(h.mac) => Err(fail(
            end,
            format!(
                "the head records a different MAC for seq {} than the log holds: the log was replaced",
                h.seq
            ),
        )),
        Ok(Some(_)) => Ok(line_no),
    }
}

// ---------------------------------------------------------------------------
// Reading
// ---------------------------------------------------------------------------

/// Entries matching `query`, in order, with the payload fields named in
/// `redact` (at any depth inside data) replaced by the string `"[redacted]"`.
/// Skips nothing silently: a line that does not parse is an error naming the
/// line. (MACs are not checked here; use [`verify`].)
pub fn read_entries(
    path: &Path,
    query: &AuditQuery,
    redact: &[String],
) -> Result<Vec<AuditEntry>, AuditError> {
    let file = File::open(path).map_err(|source| AuditError::Io {
        path: path.to_owned(),
        action: "open",
        source,
    })?;
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let mut line = Vec::with_capacity(4096);
    let mut line_no = 0u64;
    let mut entries = Vec::new();
    let entry_err = |line: u64, reason: String| AuditError::Entry {
        path: path.to_owned(),
        line,
        reason,
    };
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(|source| AuditError::Io {
                path: path.to_owned(),
                action: "read",
                source,
            })?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let mut entry: AuditEntry =
            serde_json::from_slice(text).map_err(|e| entry_err(line_no, e.to_string()))?;
        if let Some(tenant) = &query.tenant
            && entry.tenant != *tenant
        {
            continue;
        }
        if let Some(user) = &query.user
            && entry.user.as_deref() != Some(user.as_str())
        {
            continue;
        }
        if let Some(since) = query.since {
            let ts = OffsetDateTime::parse(&entry.ts, &Rfc3339).map_err(|e| {
                entry_err(
                    line_no,
                    format!("its ts {:?} is not an RFC 3339 time: {e}", entry.ts),
                )
            })?;
            let Some(ts) = system_time(ts) else {
                return Err(entry_err(
                    line_no,
                    format!("its ts {:?} is out of range", entry.ts),
                ));
            };
            if ts < since {
                continue;
            }
        }
        if !redact.is_empty() {
            redact_value(&mut entry.data, redact);
        }
        entries.push(entry);
    }
    Ok(entries)
}

fn redact_value(value: &mut Value, redact: &[String]) {
    match value {
        Value::Object(map) => {
            for (key, field) in map.iter_mut() {
                if redact.iter().any(|r| r == key) {
                    *field = Value::String(REDACTED.to_owned());
                } else {
                    redact_value(field, redact);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                redact_value(item, redact);
            }
        }
        _ => {}
    }
}

/// Parse an RFC 3339 timestamp or a relative age like "90s", "15m", "2h",
/// "7d" (meaning now minus that) for --since. Ages also take "w" (weeks).
pub fn parse_since(text: &str) -> Result<SystemTime, String> {
    let text = text.trim();
    let junk = || {
        format!(
            "cannot read {text:?} as a time: give an RFC 3339 time such as 2026-11-28T18:00:00Z, or an age such as 90s, 15m, 2h or 7d"
        )
    };
    if let Ok(when) = OffsetDateTime::parse(text, &Rfc3339) {
        return system_time(when)
            .ok_or_else(|| format!("{text:?} is out of the supported range of times"));
    }
    let Some(unit) = text.chars().last() else {
        return Err(junk());
    };
    let number = &text[..text.len() - unit.len_utf8()];
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return Err(junk());
    }
    let per_unit: u64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'w' => 604_800,
        _ => return Err(junk()),
    };
    let too_far = || format!("{text:?} reaches back further than the clock can represent");
    let count: u64 = number.parse().map_err(|_| too_far())?;
    let seconds = count.checked_mul(per_unit).ok_or_else(too_far)?;
    SystemTime::now()
        .checked_sub(Duration::from_secs(seconds))
        .ok_or_else(too_far)
}

fn system_time(when: OffsetDateTime) -> Option<SystemTime> {
    let seconds = when.unix_timestamp();
    let whole = Duration::from_secs(seconds.unsigned_abs());
    let at_second = if seconds >= 0 {
        UNIX_EPOCH.checked_add(whole)?
    } else {
        UNIX_EPOCH.checked_sub(whole)?
    };
    at_second.checked_add(Duration::from_nanos(u64::from(when.nanosecond())))
}

fn parse_ts_ms(ts: &str) -> Option<i64> {
    let when = OffsetDateTime::parse(ts, &Rfc3339).ok()?;
    i64::try_from(when.unix_timestamp_nanos() / 1_000_000).ok()
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for Unix milliseconds.
fn format_ts(ms: i64) -> String {
    let when = OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        when.year(),
        u8::from(when.month()),
        when.day(),
        when.hour(),
        when.minute(),
        when.second(),
        ms.rem_euclid(1000)
    )
}

// ---------------------------------------------------------------------------
// Canonical JSON: writing
// ---------------------------------------------------------------------------

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex64(bytes: &[u8]) -> [u8; 64] {
    let mut out = [b'0'; 64];
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0x0f)];
    }
    out
}

/// 64 lowercase hex digits, or None.
fn parse_hex64(text: &str) -> Option<[u8; 64]> {
    let bytes: [u8; 64] = text.as_bytes().try_into().ok()?;
    bytes
        .iter()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        .then_some(bytes)
}

/// Bytes of 64 lowercase hex digits (as checked by [`parse_hex64`]).
fn unhex32(hex: &[u8; 64]) -> [u8; 32] {
    let nibble = |c: u8| {
        if c >= b'a' {
            c - b'a' + 10
        } else {
            c.wrapping_sub(b'0')
        }
    };
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = (nibble(pair[0]) << 4) | (nibble(pair[1]) & 0x0f);
    }
    out
}

impl AuditRecord {
    /// Its fields, borrowed.
    pub fn fields(&self) -> RecordFields<'_> {
        RecordFields {
            tenant: &self.tenant,
            user: self.user.as_deref(),
            run: self.run.as_deref(),
            action: self.action,
            actor: &self.actor,
            data: Data::Value(&self.data),
        }
    }
}

/// One member's value in [`Data::Members`], rendered exactly as the
/// `serde_json::Value` built from it would be.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Field<'a> {
    /// `null`.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// An unsigned integer.
    U64(u64),
    /// A float; not finite renders as `null`, as `serde_json` converts it.
    F64(f64),
    /// A string.
    Str(&'a str),
    /// A string, or `null`.
    OptStr(Option<&'a str>),
    /// No member at all: the key is left out, as a `Value` built without
    /// it would have it (for members only some entries carry).
    Absent,
}

/// A record's payload, borrowed.
#[derive(Debug, Clone, Copy)]
pub enum Data<'a> {
    /// Any JSON value: an object's members are rendered sorted, anything
    /// else as `{"value": …}`.
    Value(&'a Value),
    /// An object given member by member, its keys in ascending byte order:
    /// rendered straight into the entry, the bytes the same as for the
    /// equivalent [`Data::Value`], without building a tree of values first
    /// (the entries of every run's calls take this way).
    Members(&'a [(&'static str, Field<'a>)]),
}

/// An [`AuditRecord`]'s fields, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct RecordFields<'a> {
    /// The tenant the event belongs to (`"*"` for the host itself).
    pub tenant: &'a str,
    /// The user, or `None` when anonymous.
    pub user: Option<&'a str>,
    /// The run, or `None` outside a run.
    pub run: Option<&'a str>,
    /// What happened.
    pub action: &'static str,
    /// Who did it.
    pub actor: &'a str,
    /// The payload, as [`AuditRecord::data`].
    pub data: Data<'a>,
}

/// A record's fields as its line holds them after `ts`: `,"tenant":…`
/// through `,"data":{…}`, in canonical form.
fn render_fields(fields: RecordFields<'_>) -> Vec<u8> {
    let mut b = Vec::with_capacity(256);
    b.extend_from_slice(b",\"tenant\":");
    push_str(&mut b, fields.tenant);
    b.extend_from_slice(b",\"user\":");
    push_opt_str(&mut b, fields.user);
    b.extend_from_slice(b",\"run\":");
    push_opt_str(&mut b, fields.run);
    b.extend_from_slice(b",\"action\":");
    push_str(&mut b, fields.action);
    b.extend_from_slice(b",\"actor\":");
    push_str(&mut b, fields.actor);
    b.extend_from_slice(b",\"data\":");
    match fields.data {
        Data::Value(value @ Value::Object(_)) => push_value(&mut b, value, 1),
        Data::Value(Value::Null) => b.extend_from_slice(b"{}"),
        Data::Value(other) => {
            b.extend_from_slice(b"{\"value\":");
            push_value(&mut b, other, 2);
            b.push(b'}');
        }
        Data::Members(members) => push_members(&mut b, members),
    }
    b
}

/// `members` as a canonical JSON object. Keys given out of order are
/// sorted here (a copy), so the entry is canonical either way.
fn push_members(out: &mut Vec<u8>, members: &[(&'static str, Field<'_>)]) {
    let sorted = members
        .windows(2)
        .all(|pair| pair[0].0.as_bytes() < pair[1].0.as_bytes());
    debug_assert!(sorted, "audit members must be given in key order");
    let mut copy;
    let members = if sorted {
        members
    } else {
        copy = members.to_vec();
        copy.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        copy.dedup_by(|later, earlier| later.0 == earlier.0);
        &copy[..]
    };
    out.push(b'{');
    let present = members
        .iter()
        .filter(|(_, field)| !matches!(field, Field::Absent));
    for (i, (key, field)) in present.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_str(out, key);
        out.push(b':');
        match *field {
            Field::Null | Field::OptStr(None) => out.extend_from_slice(b"null"),
            Field::Bool(true) => out.extend_from_slice(b"true"),
            Field::Bool(false) => out.extend_from_slice(b"false"),
            Field::U64(n) => push_u64(out, n),
            Field::F64(x) => push_f64(out, x),
            Field::Str(text) | Field::OptStr(Some(text)) => push_str(out, text),
            Field::Absent => {}
        }
    }
    out.push(b'}');
}

fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

fn push_i64(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    push_u64(out, n.unsigned_abs());
}

/// The shortest text that reads back as `x` (as serde_json writes it).
fn push_f64(out: &mut Vec<u8>, x: f64) {
    if !x.is_finite() || serde_json::to_writer(&mut *out, &x).is_err() {
        out.extend_from_slice(b"null");
    }
}

/// A JSON string, escaping only `"`, `\` and control characters.
fn push_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0x0f)]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

fn push_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => push_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn push_number(out: &mut Vec<u8>, n: &serde_json::Number) {
    if let Some(u) = n.as_u64() {
        push_u64(out, u);
    } else if let Some(i) = n.as_i64() {
        push_i64(out, i);
    } else if let Some(f) = n.as_f64() {
        push_f64(out, f);
    } else {
        out.extend_from_slice(b"null");
    }
}

/// Canonical JSON of `value`, a container at `depth` inside `data` (1 for
/// `data` itself).
fn push_value(out: &mut Vec<u8>, value: &Value, depth: usize) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => push_number(out, n),
        Value::String(s) => push_str(out, s),
        Value::Array(_) | Value::Object(_) if depth > MAX_DATA_DEPTH => push_str(out, TOO_DEEP),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                push_value(out, item, depth + 1);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            out.push(b'{');
            let mut keys = map.keys();
            let sorted = match keys.next() {
                None => true,
                Some(first) => {
                    let mut last = first;
                    keys.all(|k| {
                        let ok = last.as_bytes() < k.as_bytes();
                        last = k;
                        ok
                    })
                }
            };
            if sorted {
                for (i, (k, v)) in map.iter().enumerate() {
                    push_member(out, i, k, v, depth);
                }
            } else {
                let mut members: Vec<(&String, &Value)> = map.iter().collect();
                members.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                for (i, (k, v)) in members.into_iter().enumerate() {
                    push_member(out, i, k, v, depth);
                }
            }
            out.push(b'}');
        }
    }
}

fn push_member(out: &mut Vec<u8>, index: usize, key: &str, value: &Value, depth: usize) {
    if index > 0 {
        out.push(b',');
    }
    push_str(out, key);
    out.push(b':');
    push_value(out, value, depth + 1);
}

// ---------------------------------------------------------------------------
// Canonical JSON: reading a line back
// ---------------------------------------------------------------------------

/// A line taken apart for verification.
struct ParsedLine {
    seq: u64,
    ts: String,
    prev: [u8; 64],
    mac: [u8; 64],
    /// What the MAC covers, rebuilt from the parsed values.
    canonical: Vec<u8>,
}

impl ParsedLine {
    fn mac_matches(&self, base: &HmacSha256) -> bool {
        let mut mac = base.clone();
        mac.update(&self.canonical);
        mac.verify_slice(&unhex32(&self.mac)).is_ok()
    }
}

/// What a parsed value was (strings carry their text).
enum Kind {
    Null,
    Bool,
    UInt(u64),
    Number,
    Str(String),
    Array,
    Object,
}

const FIELDS: [&str; 10] = [
    "seq", "ts", "tenant", "user", "run", "action", "actor", "data", "prev", "mac",
];

/// Parse one line (without its newline) and rebuild its canonical bytes.
fn parse_line(line: &[u8]) -> Result<ParsedLine, String> {
    std::str::from_utf8(line).map_err(|e| format!("it is not UTF-8: {e}"))?;
    let mut p = Parser { s: line, i: 0 };
    let mut values = Vec::with_capacity(line.len());
    let mut slots: [Option<(usize, usize, Kind)>; 10] = Default::default();
    p.ws();
    p.expect(b'{')?;
    p.ws();
    if p.peek() == Some(b'}') {
        return Err("it is an empty object".to_owned());
    }
    loop {
        p.ws();
        if p.peek() != Some(b'"') {
            return Err(p.unexpected("a field name"));
        }
        let key = p.string()?;
        let Some(index) = FIELDS.iter().position(|f| *f == key) else {
            return Err(format!("it has an unknown field {key:?}"));
        };
        p.ws();
        p.expect(b':')?;
        let start = values.len();
        let kind = p.value(&mut values, 2)?;
        let slot = &mut slots[index];
        if slot.is_some() {
            return Err(format!("it has the field {key:?} twice"));
        }
        *slot = Some((start, values.len(), kind));
        p.ws();
        match p.bump() {
            Some(b',') => {}
            Some(b'}') => break,
            other => return Err(p.unexpected_taken("',' or '}'", other)),
        }
    }
    p.ws();
    if p.i != line.len() {
        return Err(p.unexpected("the end of the line"));
    }

    let mut canonical = Vec::with_capacity(values.len() + 100);
    let mut seq = 0;
    let mut ts = String::new();
    let mut prev = ZERO_MAC;
    let mut mac = ZERO_MAC;
    for (index, slot) in slots.into_iter().enumerate() {
        let name = FIELDS[index];
        let Some((start, end, kind)) = slot else {
            return Err(format!("it has no field {name:?}"));
        };
        let ok = match (index, &kind) {
            (0, Kind::UInt(n)) if *n >= 1 => {
                seq = *n;
                true
            }
            (1, Kind::Str(s)) => {
                ts.clone_from(s);
                true
            }
            (2 | 5 | 6, Kind::Str(_)) | (3 | 4, Kind::Str(_) | Kind::Null) | (7, Kind::Object) => {
                true
            }
            (8 | 9, Kind::Str(s)) => match parse_hex64(s) {
                Some(hex) if index == 8 => {
                    prev = hex;
                    true
                }
                Some(hex) => {
                    mac = hex;
                    true
                }
                None => false,
            },
            _ => false,
        };
        if !ok {
            let wanted = match index {
                0 => "a positive integer",
                3 | 4 => "a string or null",
                7 => "an object",
                8 | 9 => "64 lowercase hex digits",
                _ => "a string",
            };
            return Err(format!("its field {name:?} is not {wanted}"));
        }
        if index == 9 {
            break;
        }
        canonical.push(if index == 0 { b'{' } else { b',' });
        push_str(&mut canonical, name);
        canonical.push(b':');
        canonical.extend_from_slice(&values[start..end]);
    }
    canonical.push(b'}');
    Ok(ParsedLine {
        seq,
        ts,
        prev,
        mac,
        canonical,
    })
}

/// A JSON parser that writes the canonical form of what it reads.
struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.i += 1;
        Some(b)
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.i += 1;
        }
    }

    fn unexpected(&self, wanted: &str) -> String {
        match self.peek() {
            Some(b) => format!(
                "expected {wanted} at column {}, found {:?}",
                self.i + 1,
                char::from(b)
            ),
            None => format!(
                "expected {wanted} at column {}, found the end of the line",
                self.i + 1
            ),
        }
    }

    /// For a byte just taken with [`Parser::bump`] that was not wanted.
    fn unexpected_taken(&self, wanted: &str, taken: Option<u8>) -> String {
        match taken {
            Some(b) => format!(
                "expected {wanted} at column {}, found {:?}",
                self.i,
                char::from(b)
            ),
            None => format!(
                "expected {wanted} at column {}, found the end of the line",
                self.i + 1
            ),
        }
    }

    fn expect(&mut self, wanted: u8) -> Result<(), String> {
        if self.peek() == Some(wanted) {
            self.i += 1;
            Ok(())
        } else {
            Err(self.unexpected(&format!("{:?}", char::from(wanted))))
        }
    }

    fn literal(&mut self, word: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
        if self
            .s
            .get(self.i..)
            .is_some_and(|rest| rest.starts_with(word))
        {
            self.i += word.len();
            out.extend_from_slice(word);
            Ok(())
        } else {
            Err(self.unexpected("a JSON value"))
        }
    }

    /// One value at nesting `depth` (the line's object is 1).
    fn value(&mut self, out: &mut Vec<u8>, depth: usize) -> Result<Kind, String> {
        self.ws();
        match self.peek() {
            Some(b'{' | b'[') if depth > MAX_PARSE_DEPTH => Err(format!(
                "it is nested more than {MAX_PARSE_DEPTH} levels deep"
            )),
            Some(b'{') => {
                self.object(out, depth)?;
                Ok(Kind::Object)
            }
            Some(b'[') => {
                self.i += 1;
                out.push(b'[');
                self.ws();
                if self.peek() == Some(b']') {
                    self.i += 1;
                } else {
                    loop {
                        self.value(out, depth + 1)?;
                        self.ws();
                        match self.bump() {
                            Some(b',') => out.push(b','),
                            Some(b']') => break,
                            other => return Err(self.unexpected_taken("',' or ']'", other)),
                        }
                    }
                }
                out.push(b']');
                Ok(Kind::Array)
            }
            Some(b'"') => {
                let s = self.string()?;
                push_str(out, &s);
                Ok(Kind::Str(s))
            }
            Some(b't') => self.literal(b"true", out).map(|()| Kind::Bool),
            Some(b'f') => self.literal(b"false", out).map(|()| Kind::Bool),
            Some(b'n') => self.literal(b"null", out).map(|()| Kind::Null),
            Some(b'-' | b'0'..=b'9') => self.number(out),
            _ => Err(self.unexpected("a JSON value")),
        }
    }

    fn object(&mut self, out: &mut Vec<u8>, depth: usize) -> Result<(), String> {
        self.i += 1;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            out.extend_from_slice(b"{}");
            return Ok(());
        }
        let start = out.len();
        let mut members: Vec<(String, usize, usize)> = Vec::new();
        loop {
            self.ws();
            if self.peek() != Some(b'"') {
                return Err(self.unexpected("a key"));
            }
            let key = self.string()?;
            self.ws();
            self.expect(b':')?;
            let value_start = out.len();
            self.value(out, depth + 1)?;
            members.push((key, value_start - start, out.len() - start));
            self.ws();
            match self.bump() {
                Some(b',') => {}
                Some(b'}') => break,
                other => return Err(self.unexpected_taken("',' or '}'", other)),
            }
        }
        members.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        if let Some(pair) = members.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            return Err(format!("an object has the key {:?} twice", pair[0].0));
        }
        let values = out.split_off(start);
        out.push(b'{');
        for (i, (key, from, to)) in members.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            push_str(out, key);
            out.push(b':');
            out.extend_from_slice(&values[*from..*to]);
        }
        out.push(b'}');
        Ok(())
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let mut value = 0u32;
        for _ in 0..4 {
            let digit = self
                .bump()
                .and_then(|b| char::from(b).to_digit(16))
                .ok_or_else(|| format!("a \\u escape needs 4 hex digits (column {})", self.i))?;
            value = value * 16 + digit;
        }
        Ok(value)
    }

    /// A string at `self.i` (which is `"`), unescaped.
    fn string(&mut self) -> Result<String, String> {
        self.i += 1;
        let mut text = Vec::new();
        loop {
            let run = self.i;
            while matches!(self.peek(), Some(b) if b != b'"' && b != b'\\' && b >= 0x20) {
                self.i += 1;
            }
            text.extend_from_slice(&self.s[run..self.i]);
            match self.bump() {
                Some(b'"') => break,
                Some(b'\\') => {
                    let c = match self.bump() {
                        Some(b'"') => '"',
                        Some(b'\\') => '\\',
                        Some(b'/') => '/',
                        Some(b'b') => '\u{8}',
                        Some(b'f') => '\u{c}',
                        Some(b'n') => '\n',
                        Some(b'r') => '\r',
                        Some(b't') => '\t',
                        Some(b'u') => {
                            let first = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&first) {
                                if self.bump() != Some(b'\\') || self.bump() != Some(b'u') {
                                    return Err(format!(
                                        "a lone surrogate \\u{first:04x} in a string"
                                    ));
                                }
                                let second = self.hex4()?;
                                if !(0xDC00..0xE000).contains(&second) {
                                    return Err(format!(
                                        "a lone surrogate \\u{first:04x} in a string"
                                    ));
                                }
                                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
                            } else {
                                first
                            };
                            char::from_u32(code).ok_or_else(|| {
                                format!("a lone surrogate \\u{code:04x} in a string")
                            })?
                        }
                        _ => {
                            return Err(format!(
                                "an invalid escape in a string (column {})",
                                self.i
                            ));
                        }
                    };
                    let mut utf8 = [0u8; 4];
                    text.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                }
                Some(_) => {
                    return Err(format!(
                        "a control character in a string (column {})",
                        self.i
                    ));
                }
                None => return Err("a string is not closed".to_owned()),
            }
        }
        String::from_utf8(text).map_err(|e| format!("a string is not UTF-8: {e}"))
    }

    fn digits(&mut self) -> Result<(), String> {
        if !matches!(self.peek(), Some(b'0'..=b'9')) {
            return Err(self.unexpected("a digit"));
        }
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.i += 1;
        }
        Ok(())
    }

    /// A number, written back as an integer when it is one that fits `u64`
    /// or (negative) `i64`, else as the shortest text of its `f64`.
    fn number(&mut self, out: &mut Vec<u8>) -> Result<Kind, String> {
        let start = self.i;
        let negative = self.peek() == Some(b'-');
        if negative {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            _ => self.digits()?,
        }
        let mut integer = true;
        if self.peek() == Some(b'.') {
            integer = false;
            self.i += 1;
            self.digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            integer = false;
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            self.digits()?;
        }
        let text = std::str::from_utf8(&self.s[start..self.i]).map_err(|e| e.to_string())?;
        if integer {
            if !negative {
                if let Ok(n) = text.parse::<u64>() {
                    push_u64(out, n);
                    return Ok(Kind::UInt(n));
                }
            } else if let Ok(n) = text.parse::<i64>()
                && n < 0
            {
                push_i64(out, n);
                return Ok(Kind::Number);
            }
        }
        let x: f64 = text
            .parse()
            .map_err(|_| format!("the number {text} cannot be read"))?;
        if !x.is_finite() {
            return Err(format!("the number {text} is out of range"));
        }
        push_f64(out, x);
        Ok(Kind::Number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const KEY: &[u8] = b"test audit key";

    #[test]
    fn members_render_as_the_same_value_would() {
        fn fields(data: Data<'_>) -> RecordFields<'_> {
            RecordFields {
                tenant: "acme",
                user: Some("alice"),
                run: Some("r1"),
                action: "tool_call",
                actor: "model",
                data,
            }
        }
        let text = "quote \" backslash \\ newline \n tab \t bell \u{7} é 🦀";
        let members = [
            ("a_absent", Field::Absent),
            ("a_null", Field::Null),
            ("b_true", Field::Bool(true)),
            ("c_false", Field::Bool(false)),
            ("d_max", Field::U64(u64::MAX)),
            ("e_zero", Field::U64(0)),
            ("f_float", Field::F64(0.1 + 0.2)),
            ("g_whole", Field::F64(3.0)),
            ("h_huge", Field::F64(1e300)),
            ("i_nan", Field::F64(f64::NAN)),
            ("j_text", Field::Str(text)),
            ("k_none", Field::OptStr(None)),
            ("l_some", Field::OptStr(Some("x"))),
            ("m_empty", Field::Str("")),
            ("z_absent", Field::Absent),
        ];
        let value = json!({
            "a_null": null,
            "b_true": true,
            "c_false": false,
            "d_max": u64::MAX,
            "e_zero": 0,
            "f_float": 0.1 + 0.2,
            "g_whole": 3.0,
            "h_huge": 1e300,
            "i_nan": f64::NAN,
            "j_text": text,
            "k_none": Option::<&str>::None,
            "l_some": "x",
            "m_empty": "",
        });
        let direct = render_fields(fields(Data::Members(&members)));
        let through_value = render_fields(fields(Data::Value(&value)));
        assert_eq!(
            String::from_utf8_lossy(&direct),
            String::from_utf8_lossy(&through_value)
        );
        // Out of order (a caller's mistake) still renders canonically.
        if !cfg!(debug_assertions) {
            let mut shuffled = members;
            shuffled.reverse();
            assert_eq!(render_fields(fields(Data::Members(&shuffled))), direct);
        }
        // No members is an empty object, as an empty map is.
        assert_eq!(
            render_fields(fields(Data::Members(&[]))),
            render_fields(fields(Data::Value(&json!({}))))
        );
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn settings(dir: &Path, fsync: FsyncPolicy) -> AuditSettings {
        AuditSettings {
            path: dir.join("nested/dir/audit.jsonl"),
            key: AuditKey::new(KEY.to_vec()),
            fsync,
            redact: vec!["password".to_owned()],
        }
    }

    fn key() -> AuditKey {
        AuditKey::new(KEY.to_vec())
    }

    fn rec(n: u64) -> AuditRecord {
        AuditRecord {
            tenant: "acme".to_owned(),
            user: Some("alice".to_owned()),
            run: Some("run_1".to_owned()),
            action: "tool_call",
            actor: "model".to_owned(),
            data: json!({ "n": n, "tool": "search", "args": { "q": "x" } }),
        }
    }

    /// Open, record `from..from+count`, flush, close.
    fn write_entries(settings: &AuditSettings, from: u64, count: u64) {
        let log = AuditLog::open(settings).unwrap();
        for n in from..from + count {
            log.record(rec(n));
        }
        rt().block_on(log.flush()).unwrap();
    }

    fn all(path: &Path) -> Vec<AuditEntry> {
        read_entries(path, &AuditQuery::default(), &[]).unwrap()
    }

    fn lines(path: &Path) -> Vec<String> {
        fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn put_lines(path: &Path, lines: &[String]) {
        let mut text = lines.join("\n");
        text.push('\n');
        fs::write(path, text).unwrap();
    }

    fn fresh(count: u64) -> (tempfile::TempDir, AuditSettings) {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), FsyncPolicy::Never);
        write_entries(&s, 1, count);
        (dir, s)
    }

    #[test]
    fn entries_are_numbered_chained_and_continue_across_restarts() {
        let (_dir, s) = fresh(5);
        let entries = all(&s.path);
        assert_eq!(entries.len(), 5);
        let mut prev = "0".repeat(64);
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.seq, i as u64 + 1);
            assert_eq!(e.prev, prev);
            assert_eq!(e.mac.len(), 64);
            assert_eq!(e.data["n"], json!(i as u64 + 1));
            assert_eq!(e.action, "tool_call");
            assert_eq!(e.user.as_deref(), Some("alice"));
            prev = e.mac.clone();
        }
        assert!(entries.windows(2).all(|w| w[0].ts <= w[1].ts));
        assert_eq!(entries[0].ts.len(), 24);
        assert!(entries[0].ts.ends_with('Z'));
        assert_eq!(verify(&s.path, &key()), Ok(5));
        // The first line is exactly in the documented field order.
        let first = &lines(&s.path)[0];
        assert!(first.starts_with("{\"seq\":1,\"ts\":\""), "{first}");
        assert!(first.contains(
            "\"tenant\":\"acme\",\"user\":\"alice\",\"run\":\"run_1\",\"action\":\"tool_call\",\"actor\":\"model\",\"data\":{\"args\":{\"q\":\"x\"},\"n\":1,\"tool\":\"search\"},\"prev\":\"0000"
        ));

        write_entries(&s, 6, 3);
        let entries = all(&s.path);
        assert_eq!(entries.len(), 8);
        assert_eq!(entries[5].seq, 6);
        assert_eq!(entries[5].prev, entries[4].mac);
        assert_eq!(verify(&s.path, &key()), Ok(8));
        let head: Value = serde_json::from_slice(&fs::read(head_path(&s.path)).unwrap()).unwrap();
        assert_eq!(head["seq"], json!(8));
        assert_eq!(head["mac"], json!(entries[7].mac));
    }

    fn expect_failure(s: &AuditSettings, line: u64, reason_has: &[&str]) {
        let failure = verify(&s.path, &key()).unwrap_err();
        assert_eq!(failure.line, line, "{failure}");
        for part in reason_has {
            assert!(failure.reason.contains(part), "{failure}");
        }
        assert!(failure.to_string().starts_with(&format!("line {line}: ")));
    }

    #[test]
    fn an_edited_field_fails_its_mac() {
        let (_dir, s) = fresh(10);
        let mut l = lines(&s.path);
        l[2] = l[2].replace("\"n\":3", "\"n\":33");
        put_lines(&s.path, &l);
        expect_failure(&s, 3, &["MAC"]);
    }

    #[test]
    fn a_deleted_middle_line_is_found() {
        let (_dir, s) = fresh(10);
        let mut l = lines(&s.path);
        l.remove(4);
        put_lines(&s.path, &l);
        expect_failure(&s, 5, &["expected seq 5, found seq 6"]);
    }

    #[test]
    fn an_inserted_copy_is_found() {
        let (_dir, s) = fresh(10);
        let mut l = lines(&s.path);
        let copy = l[1].clone();
        l.insert(5, copy);
        put_lines(&s.path, &l);
        expect_failure(&s, 6, &["expected seq 6, found seq 2"]);
    }

    #[test]
    fn swapped_lines_are_found() {
        let (_dir, s) = fresh(10);
        let mut l = lines(&s.path);
        l.swap(2, 3);
        put_lines(&s.path, &l);
        expect_failure(&s, 3, &["expected seq 3, found seq 4"]);
    }

    #[test]
    fn a_line_signed_elsewhere_breaks_the_chain() {
        // Two logs with the same key: line 3 of the other one has the right
        // seq and a valid MAC, but its prev does not chain.
        let (_dir, s) = fresh(5);
        let other_dir = tempfile::tempdir().unwrap();
        let other = settings(other_dir.path(), FsyncPolicy::Never);
        write_entries(&other, 100, 5);
        let mut l = lines(&s.path);
        l[2] = lines(&other.path)[2].clone();
        put_lines(&s.path, &l);
        expect_failure(&s, 3, &["prev"]);
    }

    #[test]
    fn truncating_the_tail_is_found_by_the_head() {
        let (_dir, s) = fresh(10);
        let mut l = lines(&s.path);
        l.truncate(7);
        put_lines(&s.path, &l);
        expect_failure(
            &s,
            8,
            &[
                "ends at seq 7",
                "head records seq 10",
                "removed from the end",
            ],
        );
        match AuditLog::open(&s) {
            Err(
                e @ AuditError::Truncated {
                    log_seq: 7,
                    head_seq: 10,
                    ..
                },
            ) => {
                let text = e.to_string();
                assert!(text.contains("seq 7") && text.contains("seq 10"), "{text}");
                assert!(
                    text.contains("audit.jsonl") && text.contains("loom audit verify"),
                    "{text}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_torn_last_line_is_found() {
        let (_dir, s) = fresh(10);
        let text = fs::read(&s.path).unwrap();
        fs::write(&s.path, &text[..text.len() - 40]).unwrap();
        expect_failure(&s, 10, &["no newline"]);
        let mut text = text.clone();
        text.extend_from_slice(b"{\"seq\":11,\"ts\":\"2026");
        fs::write(&s.path, &text).unwrap();
        expect_failure(&s, 11, &["no newline"]);
    }

    #[test]
    fn the_wrong_key_fails_at_line_one() {
        let (_dir, s) = fresh(3);
        let failure = verify(&s.path, &AuditKey::new(b"another key".to_vec())).unwrap_err();
        assert_eq!(failure.line, 1, "{failure}");
        assert!(failure.reason.contains("key"), "{failure}");
        match AuditLog::open(&AuditSettings {
            key: AuditKey::new(b"another key".to_vec()),
            ..s.clone()
        }) {
            Err(AuditError::TailMac { seq: 3, .. }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_missing_or_edited_head_is_refused() {
        let (_dir, s) = fresh(4);
        let head = head_path(&s.path);
        let saved = fs::read_to_string(&head).unwrap();
        fs::remove_file(&head).unwrap();
        expect_failure(&s, 5, &["missing"]);
        assert!(matches!(
            AuditLog::open(&s),
            Err(AuditError::HeadMissing { .. })
        ));
        // A head claiming fewer entries, not re-signed.
        fs::write(&head, saved.replace("\"seq\":4", "\"seq\":3")).unwrap();
        expect_failure(&s, 5, &["head_mac"]);
        assert!(matches!(
            AuditLog::open(&s),
            Err(AuditError::HeadInvalid { .. })
        ));
        fs::write(&head, saved).unwrap();
        assert_eq!(verify(&s.path, &key()), Ok(4));
    }

    #[test]
    fn verification_ignores_formatting_and_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), FsyncPolicy::Never);
        let log = AuditLog::open(&s).unwrap();
        log.record(AuditRecord {
            data: json!({ "a": 1, "b": { "c": "two", "d": [3, null, true] } }),
            ..rec(0)
        });
        log.record(rec(1));
        rt().block_on(log.flush()).unwrap();
        drop(log);
        let mut l = lines(&s.path);
        let canonical = "{\"a\":1,\"b\":{\"c\":\"two\",\"d\":[3,null,true]}}";
        assert!(l[0].contains(canonical), "{}", l[0]);
        // Keys reordered and spaced, at the top and inside data.
        let entry: Value = serde_json::from_str(&l[0]).unwrap();
        let mut top: Vec<String> = entry
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k != "data")
            .map(|(k, v)| format!(" {} :\t{} ", json!(k), v))
            .collect();
        top.reverse();
        top.push(" \"data\" : { \"b\" : { \"d\" : [ 3 , null , true ] , \"c\" : \"t\\u0077o\" } , \"a\" : 1 } ".to_owned());
        l[0] = format!("  {{{}}}  ", top.join(","));
        put_lines(&s.path, &l);
        assert_eq!(verify(&s.path, &key()), Ok(2));
        // A duplicated key is not a valid entry.
        l[0] = l[0].replacen("\"a\" : 1", "\"a\" : 1, \"a\" : 1", 1);
        put_lines(&s.path, &l);
        expect_failure(&s, 1, &["twice"]);
    }

    #[test]
    fn floats_and_strings_survive_the_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), FsyncPolicy::Never);
        let log = AuditLog::open(&s).unwrap();
        let mut floats = vec![
            0.1 + 0.2,
            1e300,
            -0.0,
            5e-324,
            123_456.789,
            f64::MAX,
            f64::MIN_POSITIVE,
            1e16,
            2.5e-7,
            3.0,
        ];
        let mut state = 0x9E37_79B9_7F4A_7C15_u64;
        while floats.len() < 3000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let x = f64::from_bits(state);
            if x.is_finite() {
                floats.push(x);
            }
        }
        for chunk in floats.chunks(100) {
            log.record(AuditRecord {
                data: json!({ "floats": chunk }),
                ..rec(0)
            });
        }
        let tricky = "quote \" backslash \\ newline \n tab \t nul \u{0} bell \u{7} del \u{7f} é 😀 \u{2028} </script>";
        log.record(AuditRecord {
            tenant: tricky.to_owned(),
            user: None,
            run: None,
            actor: "policy:default".to_owned(),
            data: json!({ tricky: tricky, "ints": [u64::MAX, i64::MIN, 0, -1], "big": 1e20 }),
            ..rec(0)
        });
        rt().block_on(log.flush()).unwrap();
        drop(log);
        let count = floats.len().div_ceil(100) as u64 + 1;
        assert_eq!(verify(&s.path, &key()), Ok(count));
        let entries = all(&s.path);
        let last = entries.last().unwrap();
        assert_eq!(last.tenant, tricky);
        assert_eq!(last.user, None);
        assert_eq!(last.data[tricky], json!(tricky));
        assert_eq!(last.data["ints"], json!([u64::MAX, i64::MIN, 0, -1]));
        // Reopening checks the last line's MAC too.
        write_entries(&s, 1, 1);
        assert_eq!(verify(&s.path, &key()), Ok(count + 1));
    }

    #[test]
    fn data_that_is_not_an_object_or_too_deep_is_stored_safely() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), FsyncPolicy::Never);
        let log = AuditLog::open(&s).unwrap();
        log.record(AuditRecord {
            data: Value::Null,
            ..rec(0)
        });
        log.record(AuditRecord {
            data: json!([1, 2]),
            ..rec(0)
        });
        let mut deep = json!("bottom");
        for _ in 0..300 {
            deep = json!([deep]);
        }
        log.record(AuditRecord {
            data: json!({ "deep": deep }),
            ..rec(0)
        });
        rt().block_on(log.flush()).unwrap();
        drop(log);
        assert_eq!(verify(&s.path, &key()), Ok(3));
        let entries = all(&s.path);
        assert_eq!(entries[0].data, json!({}));
        assert_eq!(entries[1].data, json!({ "value": [1, 2] }));
        assert!(lines(&s.path)[2].contains(TOO_DEEP));
    }

    #[test]
    fn read_entries_filters_and_redacts() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), FsyncPolicy::Never);
        let log = AuditLog::open(&s).unwrap();
        let data = json!({
            "password": "hunter2",
            "args": { "list": [{ "token": "t1", "keep": 1 }], "password": { "nested": true } },
            "keep": "yes"
        });
        for (tenant, user) in [
            ("acme", Some("alice")),
            ("acme", Some("bob")),
            ("globex", Some("alice")),
            ("acme", None),
        ] {
            log.record(AuditRecord {
                tenant: tenant.to_owned(),
                user: user.map(str::to_owned),
                data: data.clone(),
                ..rec(0)
            });
        }
        rt().block_on(log.flush()).unwrap();
        std::thread::sleep(Duration::from_millis(30));
        let middle = SystemTime::now();
        std::thread::sleep(Duration::from_millis(30));
        log.record(AuditRecord {
            tenant: "acme".to_owned(),
            ..rec(9)
        });
        rt().block_on(log.flush()).unwrap();
        assert_eq!(log.redact_fields(), ["password".to_owned()]);
        drop(log);

        let query =
            |tenant: Option<&str>, user: Option<&str>, since: Option<SystemTime>| AuditQuery {
                tenant: tenant.map(str::to_owned),
                user: user.map(str::to_owned),
                since,
            };
        let read = |q: AuditQuery| read_entries(&s.path, &q, &[]).unwrap();
        assert_eq!(read(query(None, None, None)).len(), 5);
        assert_eq!(read(query(Some("acme"), None, None)).len(), 4);
        assert_eq!(read(query(Some("globex"), None, None)).len(), 1);
        let alice = read(query(None, Some("alice"), None));
        assert_eq!(alice.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 3, 5]);
        assert_eq!(read(query(Some("acme"), Some("alice"), None)).len(), 2);
        let recent = read(query(None, None, Some(middle)));
        assert_eq!(recent.iter().map(|e| e.seq).collect::<Vec<_>>(), [5]);
        assert!(
            read(query(
                None,
                None,
                Some(SystemTime::now() + Duration::from_secs(60))
            ))
            .is_empty()
        );
        assert_eq!(read(query(None, None, Some(UNIX_EPOCH))).len(), 5);

        let redact = ["password".to_owned(), "token".to_owned()];
        let entries = read_entries(&s.path, &AuditQuery::default(), &redact).unwrap();
        assert_eq!(
            entries[0].data,
            json!({
                "password": "[redacted]",
                "args": { "list": [{ "token": "[redacted]", "keep": 1 }], "password": "[redacted]" },
                "keep": "yes"
            })
        );
    }

    #[test]
    fn read_entries_names_a_bad_line() {
        let (_dir, s) = fresh(4);
        let mut l = lines(&s.path);
        l[2] = "not json".to_owned();
        put_lines(&s.path, &l);
        match read_entries(&s.path, &AuditQuery::default(), &[]) {
            Err(e @ AuditError::Entry { line: 3, .. }) => {
                assert!(e.to_string().starts_with("line 3 of "), "{e}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            read_entries(
                &s.path.with_extension("missing"),
                &AuditQuery::default(),
                &[]
            ),
            Err(AuditError::Io { .. })
        ));
    }

    #[test]
    fn parse_since_takes_times_and_ages() {
        let when = parse_since("2026-11-28T18:00:00Z").unwrap();
        let expected = time::macros::datetime!(2026-11-28 18:00:00 UTC).unix_timestamp();
        assert_eq!(when, UNIX_EPOCH + Duration::from_secs(expected as u64));
        assert_eq!(
            parse_since("2026-11-28T19:00:00.5+01:00").unwrap(),
            when + Duration::from_millis(500)
        );
        for (text, seconds) in [
            ("90s", 90),
            ("15m", 900),
            ("2h", 7200),
            ("7d", 604_800),
            ("1w", 604_800),
        ] {
            let age = SystemTime::now()
                .duration_since(parse_since(text).unwrap())
                .unwrap();
            assert!(age.as_secs().abs_diff(seconds) <= 2, "{text}: {age:?}");
        }
        for junk in [
            "",
            "yesterday",
            "5x",
            "-5m",
            "+5m",
            "h",
            "2.5h",
            "2 h",
            "99999999999999999999d",
            "2026-13-01T00:00:00Z",
            "ĥ",
        ] {
            let err = parse_since(junk).unwrap_err();
            assert!(
                err.contains("RFC 3339") || err.contains("further than the clock"),
                "{junk}: {err}"
            );
        }
        assert!(parse_since("yesterday").unwrap_err().contains("2h"));
    }

    #[test]
    fn open_refuses_an_edited_last_line() {
        let (_dir, s) = fresh(5);
        let mut l = lines(&s.path);
        l[4] = l[4].replace("\"n\":5", "\"n\":6");
        put_lines(&s.path, &l);
        match AuditLog::open(&s) {
            Err(e @ AuditError::TailMac { seq: 5, .. }) => {
                let text = e.to_string();
                assert!(
                    text.contains("loom audit verify") && text.contains("audit.jsonl"),
                    "{text}"
                );
            }
            other => panic!("{other:?}"),
        }
        l[4] = "garbage".to_owned();
        put_lines(&s.path, &l);
        assert!(matches!(
            AuditLog::open(&s),
            Err(AuditError::TailInvalid { .. })
        ));
    }

    #[test]
    fn open_repairs_a_torn_tail() {
        let (_dir, s) = fresh(4);
        let before = all(&s.path);
        let torn = b"{\"seq\":5,\"ts\":\"2026-11-28T18:00";
        let mut text = fs::read(&s.path).unwrap();
        text.extend_from_slice(torn);
        fs::write(&s.path, &text).unwrap();
        assert_eq!(verify(&s.path, &key()).unwrap_err().line, 5);

        write_entries(&s, 5, 1);
        let entries = all(&s.path);
        assert_eq!(entries.len(), 6);
        assert_eq!(entries[..4], before[..]);
        let recovered = &entries[4];
        assert_eq!(recovered.seq, 5);
        assert_eq!(recovered.action, "log_recovered");
        assert_eq!(recovered.tenant, "*");
        assert_eq!(recovered.actor, "system");
        assert_eq!(recovered.user, None);
        assert_eq!(recovered.data, json!({ "dropped_bytes": torn.len() }));
        assert_eq!(recovered.prev, before[3].mac);
        assert_eq!(entries[5].seq, 6);
        assert_eq!(verify(&s.path, &key()), Ok(6));
    }

    #[test]
    fn open_repairs_a_log_that_is_all_torn() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), FsyncPolicy::Always);
        drop(AuditLog::open(&s).unwrap());
        fs::write(&s.path, b"{\"seq\":1,").unwrap();
        write_entries(&s, 1, 1);
        let entries = all(&s.path);
        assert_eq!(entries[0].action, "log_recovered");
        assert_eq!(entries[0].seq, 1);
        assert_eq!(verify(&s.path, &key()), Ok(2));
    }

    #[test]
    fn empty_logs_verify() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), FsyncPolicy::Never);
        drop(AuditLog::open(&s).unwrap());
        assert_eq!(verify(&s.path, &key()), Ok(0));
        fs::remove_file(head_path(&s.path)).unwrap();
        assert_eq!(verify(&s.path, &key()), Ok(0));
        assert_eq!(
            verify(&dir.path().join("none.jsonl"), &key())
                .unwrap_err()
                .line,
            0
        );
    }

    #[test]
    fn a_second_writer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), FsyncPolicy::Never);
        let first = AuditLog::open(&s).unwrap();
        assert!(matches!(AuditLog::open(&s), Err(AuditError::Locked { .. })));
        drop(first);
        drop(AuditLog::open(&s).unwrap());
    }

    #[test]
    fn concurrent_records_are_all_written_in_order() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), FsyncPolicy::Interval(Duration::from_millis(5)));
        let log = Arc::new(AuditLog::open(&s).unwrap());
        const TASKS: u64 = 16;
        const EACH: u64 = 500;
        runtime.block_on(async {
            let mut tasks = Vec::new();
            for task in 0..TASKS {
                let log = Arc::clone(&log);
                tasks.push(tokio::spawn(async move {
                    for i in 0..EACH {
                        log.record(AuditRecord {
                            data: json!({ "task": task, "i": i }),
                            ..rec(0)
                        });
                        if i % 50 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                }));
            }
            for task in tasks {
                task.await.unwrap();
            }
            log.flush().await.unwrap();
        });
        let entries = all(&s.path);
        assert_eq!(entries.len() as u64, TASKS * EACH);
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.seq, i as u64 + 1);
        }
        let mut next = vec![0u64; TASKS as usize];
        for e in &entries {
            let task = e.data["task"].as_u64().unwrap() as usize;
            assert_eq!(e.data["i"].as_u64().unwrap(), next[task]);
            next[task] += 1;
        }
        drop(log);
        assert_eq!(verify(&s.path, &key()), Ok(TASKS * EACH));
    }

    #[test]
    fn every_fsync_policy_writes_and_verifies() {
        for policy in [
            FsyncPolicy::Always,
            FsyncPolicy::Never,
            FsyncPolicy::Interval(Duration::from_millis(20)),
            FsyncPolicy::Interval(Duration::MAX),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let s = settings(dir.path(), policy);
            let log = AuditLog::open(&s).unwrap();
            for n in 0..50 {
                log.record(rec(n));
            }
            rt().block_on(log.flush()).unwrap();
            assert_eq!(all(&s.path).len(), 50, "{policy:?}");
            if policy == FsyncPolicy::Interval(Duration::from_millis(20)) {
                // The head follows within the interval, without more records.
                std::thread::sleep(Duration::from_millis(150));
                assert_eq!(verify(&s.path, &key()), Ok(50));
            }
            if matches!(policy, FsyncPolicy::Always | FsyncPolicy::Never) {
                assert_eq!(verify(&s.path, &key()), Ok(50), "{policy:?}");
            }
            drop(log);
            assert_eq!(verify(&s.path, &key()), Ok(50), "{policy:?}");
        }
    }

    #[test]
    fn flush_works_from_any_runtime_and_after_many_flushes() {
        let (_dir, s) = fresh(0);
        let log = AuditLog::open(&s).unwrap();
        let waiting: Vec<_> = (0..10)
            .map(|n| {
                log.record(rec(n));
                log.flush()
            })
            .collect();
        let runtime = tokio::runtime::Builder::new_multi_thread().build().unwrap();
        for flush in waiting {
            runtime.block_on(flush).unwrap();
        }
        let clone = log.clone();
        drop(log);
        clone.record(rec(10));
        rt().block_on(clone.flush()).unwrap();
        drop(clone);
        assert_eq!(verify(&s.path, &key()), Ok(11));
    }

    #[test]
    fn keys_do_not_show_and_handles_are_shareable() {
        let secret = AuditKey::new(b"super secret".to_vec());
        assert_eq!(format!("{secret:?}"), "AuditKey(***)");
        let shown = format!(
            "{:?}",
            AuditSettings {
                key: secret,
                ..settings(Path::new("/x"), FsyncPolicy::Never)
            }
        );
        assert!(!shown.contains("super secret"), "{shown}");
        assert!(AuditKey::insecure_empty().is_empty());
        assert!(!key().is_empty());
        fn shareable<T: Send + Sync + 'static>() {}
        shareable::<AuditLog>();
        fn sendable<T: Send + 'static>(_: &T) {}
        let (_dir, s) = fresh(0);
        let log = AuditLog::open(&s).unwrap();
        sendable(&log.flush());
        assert_eq!(log.path(), s.path);
    }

    #[test]
    fn timestamps_are_formatted_in_utc_with_milliseconds() {
        assert_eq!(format_ts(0), "1970-01-01T00:00:00.000Z");
        let at = time::macros::datetime!(2026-11-28 18:00:00 UTC).unix_timestamp() * 1000 + 123;
        assert_eq!(format_ts(at), "2026-11-28T18:00:00.123Z");
        assert_eq!(parse_ts_ms("2026-11-28T18:00:00.123Z"), Some(at));
    }

    #[test]
    fn the_parser_rejects_malformed_lines() {
        for bad in [
            "",
            "{}",
            "[]",
            "{\"seq\":1",
            "{\"seq\":1,}",
            "{\"seq\":01}",
            "{\"seq\":\"\\ud800\"}",
            "{\"seq\":\"a\u{1}\"}",
            "{\"seq\":1e999}",
            "{\"other\":1}",
            "{\"seq\":tru}",
            &format!("{{\"seq\":{}}}", "[".repeat(200)),
        ] {
            assert!(parse_line(bad.as_bytes()).is_err(), "{bad}");
        }
        assert!(parse_line(&[b'{', 0xff, b'}']).is_err());
    }
}
