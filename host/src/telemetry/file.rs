//! The `file` sink: JSON lines, one per closed span and per metric.
//!
//! A record is encoded on the thread that closes its span or emits its
//! metric and appended to a buffer under a short lock; nothing waits for
//! the disk there. When the buffer stops being empty, the sink's writer
//! thread is woken; it lets lines gather for [`WRITE_INTERVAL`] and writes
//! them out (an idle sink's thread sleeps until there is something to
//! write). The record that takes the buffer past [`WRITE_AT_BYTES`] writes
//! it at once (so a burst cannot grow it without bound), and
//! [`FileSink::flush`] and dropping the sink (the
//! [`super::TelemetryGuard`]) write out whatever is left. Batches reach the
//! file in the order they were taken. A write that fails is reported on
//! stderr (once per outage) and its lines dropped; the next batch starts on
//! a line of its own. Telemetry never fails the work it observes.

use super::TelemetryError;
use super::record::{RecordLayer, RecordRef, RecordSink};
use crate::sync::lock;
use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

/// How long the writer thread lets lines gather, once woken by the first
/// of them, before it writes them out.
pub const WRITE_INTERVAL: Duration = Duration::from_millis(50);

/// The record that takes the buffer past this many bytes writes it at
/// once, on its own thread.
pub const WRITE_AT_BYTES: usize = 256 << 10;

/// A thread's line buffer is let go rather than kept once a record made it
/// this large.
const KEEP_LINE_BYTES: usize = 64 << 10;

/// Room a buffer of lines is made with: a full buffer's worth and a few
/// lines past it, so that gathering lines never grows it.
const BUFFER_BYTES: usize = WRITE_AT_BYTES + (64 << 10);

/// A written buffer is kept for the next batch unless a record made it
/// larger than this (a line of a few MiB).
const KEEP_BUFFER_BYTES: usize = 4 * BUFFER_BYTES;

/// An open JSONL telemetry file (appended to). Cloning shares the file.
#[derive(Clone)]
pub struct FileSink {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// Lines not written yet.
    pending: Mutex<Vec<u8>>,
    /// The buffer the last batch was written from, emptied: the next
    /// batch's. Lines gather in two buffers that take turns, allocated
    /// once; a buffer allocated for each batch and freed by the writer
    /// thread had the allocator hand the recording threads fresh memory
    /// again and again, each page of it zeroed by the kernel on first
    /// touch (a third of the sink's cost in a profile).
    spare: Mutex<Vec<u8>>,
    /// The file, and whether the last write to it failed (so the next
    /// batch starts a line of its own); held from taking a batch to
    /// writing it, so batches reach the file in order.
    file: Mutex<(File, bool)>,
    /// Whether the current outage was already reported.
    reported: AtomicBool,
    /// Wakes the writer thread; dropped with the sink, which stops it.
    wake: SyncSender<()>,
}

impl std::fmt::Debug for FileSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSink")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl FileSink {
    /// Open `path` for appending, creating it (and its directory), and
    /// start the sink's writer thread.
    ///
    /// # Errors
    ///
    /// [`TelemetryError::File`] when the file cannot be opened or the
    /// writer thread cannot be started.
    pub fn open(path: &Path) -> Result<Self, TelemetryError> {
        Self::open_writing_every(path, WRITE_INTERVAL)
    }

    /// [`Self::open`], the writer thread letting lines gather for
    /// `interval`.
    fn open_writing_every(path: &Path, interval: Duration) -> Result<Self, TelemetryError> {
        let fail = |source| TelemetryError::File {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(fail)?;
        let (wake, woken) = mpsc::sync_channel(1);
        let inner = Arc::new(Inner {
            path: path.to_owned(),
            pending: Mutex::new(Vec::with_capacity(BUFFER_BYTES)),
            spare: Mutex::new(Vec::with_capacity(BUFFER_BYTES)),
            file: Mutex::new((file, false)),
            reported: AtomicBool::new(false),
            wake,
        });
        // The thread holds the sink weakly: the last clone's drop writes
        // out the rest and disconnects the channel, which stops it.
        let sink = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("loom-telemetry-file".into())
            .spawn(move || {
                while woken.recv().is_ok() {
                    // The whole interval, whatever wakes it meanwhile.
                    let until = Instant::now() + interval;
                    loop {
                        match woken.recv_timeout(until.saturating_duration_since(Instant::now())) {
                            Ok(()) => {}
                            Err(RecvTimeoutError::Timeout) => break,
                            Err(RecvTimeoutError::Disconnected) => return,
                        }
                    }
                    match sink.upgrade() {
                        Some(inner) => inner.write_pending(),
                        None => return,
                    }
                }
            })
            .map_err(fail)?;
        Ok(FileSink { inner })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Write out every line recorded so far.
    pub fn flush(&self) {
        self.inner.write_pending();
    }

    /// A `tracing` layer writing to this file, for embedders composing
    /// their own subscriber.
    pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync + 'static
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        RecordLayer::new(vec![Arc::new(self.clone()) as Arc<dyn RecordSink>])
    }
}

impl Inner {
    /// Take the buffered lines and write them to the file.
    fn write_pending(&self) {
        let mut file = lock(&self.file);
        // The spare is only ever taken under the file's lock, held here.
        let next = std::mem::take(&mut *lock(&self.spare));
        let mut batch = std::mem::replace(&mut *lock(&self.pending), next);
        let (file, torn) = &mut *file;
        self.write(file, torn, &batch);
        if batch.capacity() <= KEEP_BUFFER_BYTES {
            batch.clear();
            *lock(&self.spare) = batch;
        }
    }

    /// Write `batch` to `file`; `torn`: whether the last write failed,
    /// perhaps part-way through a line.
    fn write(&self, file: &mut File, torn: &mut bool, batch: &[u8]) {
        if batch.is_empty() {
            return;
        }
        let written = if *torn {
            file.write_all(b"\n").and_then(|()| file.write_all(batch))
        } else {
            file.write_all(batch)
        };
        match written {
            Ok(()) => {
                *torn = false;
                self.reported.store(false, Ordering::Relaxed);
            }
            Err(error) => {
                *torn = true;
                self.report(&error);
            }
        }
    }

    fn report(&self, error: &std::io::Error) {
        if !self.reported.swap(true, Ordering::Relaxed) {
            // Best effort: a closed stderr is no reason to fail anything.
            let _ = writeln!(
                std::io::stderr(),
                "loom: cannot write the telemetry file {}: {error}; its lines are dropped while \
                 this lasts",
                self.path.display()
            );
        }
    }

    /// Append the encoded `line` to the buffer: wake the writer thread if
    /// it was empty, write the buffer out if the line took it past
    /// [`WRITE_AT_BYTES`].
    fn append(&self, line: &[u8]) {
        let (was_empty, crossed) = {
            let mut pending = lock(&self.pending);
            let before = pending.len();
            if before == 0 {
                // A buffer not kept (one grown past what is kept).
                pending.reserve(BUFFER_BYTES);
            }
            pending.extend_from_slice(line);
            (
                before == 0,
                before < WRITE_AT_BYTES && pending.len() >= WRITE_AT_BYTES,
            )
        };
        if crossed {
            self.write_pending();
        } else if was_empty {
            // Full: a wake-up is already on its way.
            if let Err(TrySendError::Disconnected(())) = self.wake.try_send(()) {
                self.write_pending();
            }
        }
    }
}

thread_local! {
    /// The line being encoded, kept by each thread between records.
    static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// `record` as one JSON line in `line` (emptied first); whether it could
/// be encoded.
fn encode_line(record: &RecordRef<'_>, line: &mut Vec<u8>) -> bool {
    line.clear();
    if serde_json::to_writer(&mut *line, record).is_err() {
        return false;
    }
    line.push(b'\n');
    true
}

impl RecordSink for FileSink {
    fn record(&self, record: &RecordRef<'_>) {
        // The thread's own line buffer, or (while it is in use, or the
        // thread is shutting down) one for this record.
        let kept = LINE.try_with(|line| match line.try_borrow_mut() {
            Ok(mut line) => {
                if encode_line(record, &mut line) {
                    self.inner.append(&line);
                }
                if line.capacity() > KEEP_LINE_BYTES {
                    *line = Vec::new();
                }
                true
            }
            Err(_) => false,
        });
        if kept != Ok(true) {
            let mut line = Vec::new();
            if encode_line(record, &mut line) {
                self.inner.append(&line);
            }
        }
    }
}

impl Drop for FileSink {
    /// Whatever was recorded reaches the file before any clone of the sink
    /// is gone (the writer thread may hold the last reference a moment
    /// longer).
    fn drop(&mut self) {
        self.inner.write_pending();
    }
}

impl Drop for Inner {
    /// The rest, should the writer thread have held the last reference.
    fn drop(&mut self) {
        self.write_pending();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::record::{MetricKind, Record};
    use tracing_subscriber::layer::SubscriberExt;

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn telemetry_file_writes_one_json_line_per_span_and_metric() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/t.jsonl");
        let sink = FileSink::open(&path).unwrap();
        let subscriber = tracing_subscriber::registry().with(sink.layer());
        tracing::subscriber::with_default(subscriber, || {
            let run = tracing::info_span!(
                "invoke_agent",
                otel.name = "invoke_agent react",
                loom.tenant = "acme",
                gen_ai.usage.input_tokens = tracing::field::Empty,
            );
            let _entered = run.enter();
            let chat = tracing::info_span!("chat", gen_ai.request.model = "echo");
            chat.in_scope(|| {
                tracing::event!(
                    target: "loom::metrics",
                    tracing::Level::INFO,
                    histogram.gen_ai.client.token.usage = 42u64,
                    "gen_ai.token.type" = "input",
                );
            });
            drop(chat);
            run.record("gen_ai.usage.input_tokens", 42u64);
        });
        // Written out by the writer thread within its interval; `flush`
        // writes them at once.
        sink.flush();
        let got = lines(&path);
        assert_eq!(got.len(), 3, "{got:?}");
        let metric = &got[0];
        assert_eq!(metric["type"], "metric");
        assert_eq!(metric["name"], "gen_ai.client.token.usage");
        assert_eq!(metric["kind"], "histogram");
        assert_eq!(metric["value"], 42);
        assert_eq!(metric["attributes"]["gen_ai.token.type"], "input");
        let (chat, run) = (&got[1], &got[2]);
        assert_eq!(chat["type"], "span");
        assert_eq!(chat["name"], "chat");
        assert_eq!(chat["attributes"]["gen_ai.request.model"], "echo");
        assert_eq!(
            run["name"], "invoke_agent react",
            "otel.name names the span"
        );
        assert_eq!(run["parent_span_id"], serde_json::Value::Null);
        assert_eq!(chat["parent_span_id"], run["span_id"]);
        assert_eq!(chat["trace_id"], run["trace_id"]);
        assert_eq!(run["trace_id"].as_str().unwrap().len(), 32);
        assert_eq!(run["span_id"].as_str().unwrap().len(), 16);
        assert_eq!(run["attributes"]["loom.tenant"], "acme");
        assert_eq!(
            run["attributes"]["gen_ai.usage.input_tokens"], 42,
            "a field recorded after creation is kept"
        );
        assert!(run["attributes"].get("otel.name").is_none());
        assert!(run["start_unix_nanos"].as_u64().unwrap() > 1_600_000_000_000_000_000);
        assert!(run["duration_ns"].as_u64().unwrap() >= chat["duration_ns"].as_u64().unwrap());
        // Each line reads back as a typed record.
        let typed: Record = serde_json::from_value(metric.clone()).unwrap();
        assert!(matches!(typed, Record::Metric(m) if m.kind == MetricKind::Histogram));
    }

    #[test]
    fn telemetry_file_lines_reach_the_file_without_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        let sink = FileSink::open(&path).unwrap();
        let subscriber = tracing_subscriber::registry().with(sink.layer());
        tracing::subscriber::with_default(subscriber, || {
            tracing::info_span!("run").in_scope(|| {});
            // The writer thread writes the line while the sink lives on.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::fs::read_to_string(&path).unwrap().is_empty() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the line never reached the file"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        assert_eq!(lines(&path).len(), 1);
    }

    #[test]
    fn telemetry_file_writes_a_full_buffer_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        // The writer thread waits an hour: only the threshold writes.
        let sink = FileSink::open_writing_every(&path, Duration::from_secs(3600)).unwrap();
        let subscriber = tracing_subscriber::registry().with(sink.layer());
        let pad = "x".repeat(1000);
        let mut n = 0;
        tracing::subscriber::with_default(subscriber, || {
            // Past the threshold: the recording thread writes the batch
            // itself, without waiting for the writer thread.
            while n * 1000 < WRITE_AT_BYTES {
                tracing::info_span!("span", n, pad = pad.as_str()).in_scope(|| {});
                n += 1;
            }
            let written = std::fs::metadata(&path).unwrap().len() as usize;
            assert!(written >= WRITE_AT_BYTES, "{written} bytes written");
        });
        drop(sink);
        let got = lines(&path);
        assert_eq!(got.len(), n);
        assert_eq!(got[n - 1]["attributes"]["n"], n - 1, "in order");
    }

    #[test]
    fn telemetry_file_appends_and_refuses_an_unopenable_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        for _ in 0..2 {
            let sink = FileSink::open(&path).unwrap();
            let subscriber = tracing_subscriber::registry().with(sink.layer());
            tracing::subscriber::with_default(subscriber, || {
                tracing::info_span!("run").in_scope(|| {});
            });
        }
        assert_eq!(lines(&path).len(), 2);
        // A directory where the file should be.
        let err = FileSink::open(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains(&dir.path().display().to_string()),
            "{err}"
        );
    }
}
