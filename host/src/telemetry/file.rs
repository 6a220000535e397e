//! The `file` sink: JSON lines, one per closed span and per metric.
//!
//! A record is encoded on the thread that closes its span and appended to
//! a buffer under a short lock; nothing waits for the disk there. A writer
//! thread of the sink's own writes the buffer out every
//! [`WRITE_INTERVAL`]; a buffer that reaches [`WRITE_AT_BYTES`] is written
//! at once by the thread that filled it (so a burst cannot grow it without
//! bound), and [`FileSink::flush`] and dropping the sink (the
//! [`super::TelemetryGuard`]) write out whatever is left. Batches reach the
//! file in the order they were taken. A write that fails is reported once
//! on stderr and its lines dropped; telemetry never fails the work it
//! observes.

use super::TelemetryError;
use super::record::{RecordLayer, RecordRef, RecordSink};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

/// How long a line may wait in the buffer before the writer thread writes
/// it out.
pub const WRITE_INTERVAL: Duration = Duration::from_millis(50);

/// A buffer this large is written out at once by the thread that filled it.
pub const WRITE_AT_BYTES: usize = 256 << 10;

/// An open JSONL telemetry file (appended to). Cloning shares the file.
#[derive(Clone)]
pub struct FileSink {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    /// Lines not written yet.
    pending: Mutex<Vec<u8>>,
    /// The file; held from taking a batch to writing it, so batches reach
    /// the file in order.
    file: Mutex<File>,
    /// Whether a failure was already reported.
    reported: AtomicBool,
    /// Dropped with the sink: the writer thread then stops.
    _stop: mpsc::Sender<()>,
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
        let (stop, stopped) = mpsc::channel();
        let inner = Arc::new(Inner {
            path: path.to_owned(),
            pending: Mutex::new(Vec::new()),
            file: Mutex::new(file),
            reported: AtomicBool::new(false),
            _stop: stop,
        });
        // The thread holds the sink weakly: the last clone's drop writes
        // out the rest and disconnects the channel, which stops it.
        let sink = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("loom-telemetry-file".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(WRITE_INTERVAL) {
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

/// `mutex`'s guard, whether or not a panicking thread poisoned it (a
/// buffer of lines or a file handle stays usable).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    match mutex.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Inner {
    /// Take the buffered lines and write them to the file.
    fn write_pending(&self) {
        let mut file = lock(&self.file);
        let batch = std::mem::take(&mut *lock(&self.pending));
        self.write(&mut file, &batch);
    }

    /// Write `batch` to `file`, reporting a failure once.
    fn write(&self, file: &mut File, batch: &[u8]) {
        if batch.is_empty() {
            return;
        }
        if let Err(error) = file.write_all(batch) {
            self.report(&error);
        }
    }

    fn report(&self, error: &std::io::Error) {
        if !self.reported.swap(true, Ordering::Relaxed) {
            eprintln!(
                "loom: cannot write the telemetry file {}: {error}; its lines are dropped while \
                 this lasts",
                self.path.display()
            );
        }
    }
}

thread_local! {
    /// The line being encoded, kept by each thread between records.
    static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl RecordSink for FileSink {
    fn record(&self, record: &RecordRef<'_>) {
        let full = LINE.with_borrow_mut(|line| {
            line.clear();
            if serde_json::to_writer(&mut *line, record).is_err() {
                return false;
            }
            line.push(b'\n');
            let mut pending = lock(&self.inner.pending);
            if pending.is_empty() {
                pending.reserve(16 << 10);
            }
            pending.extend_from_slice(line);
            pending.len() >= WRITE_AT_BYTES
        });
        if full {
            self.inner.write_pending();
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
    fn drop(&mut self) {
        let batch = std::mem::take(self.pending.get_mut().unwrap_or_else(|p| p.into_inner()));
        if batch.is_empty() {
            return;
        }
        let written = self
            .file
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .write_all(&batch);
        if let Err(error) = written {
            self.report(&error);
        }
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
        let sink = FileSink::open(&path).unwrap();
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
