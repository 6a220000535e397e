//! The `file` sink: JSON lines, one per closed span and per metric.
//!
//! Lines go through a buffer behind a mutex and reach the file when a root
//! span (a whole run) closes, when the buffer fills, and when the
//! [`super::TelemetryGuard`] is dropped. A write that fails is reported once
//! on stderr and its line dropped; telemetry never fails the work it
//! observes.

use super::TelemetryError;
use super::record::{Record, RecordLayer, RecordSink};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

/// An open JSONL telemetry file (appended to). Cloning shares the file.
#[derive(Clone)]
pub struct FileSink {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<BufWriter<File>>,
    /// Whether a failure was already reported.
    reported: AtomicBool,
}

impl std::fmt::Debug for FileSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSink")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl FileSink {
    /// Open `path` for appending, creating it (and its directory).
    ///
    /// # Errors
    ///
    /// [`TelemetryError::File`] when the file cannot be opened.
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
        Ok(FileSink {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                writer: Mutex::new(BufWriter::with_capacity(64 << 10, file)),
                reported: AtomicBool::new(false),
            }),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Write out what is buffered.
    pub fn flush(&self) {
        let result = match self.inner.writer.lock() {
            Ok(mut writer) => writer.flush(),
            Err(poisoned) => poisoned.into_inner().flush(),
        };
        if let Err(error) = result {
            self.inner.report(&error);
        }
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

impl RecordSink for FileSink {
    fn record(&self, record: Record) {
        let mut line = match serde_json::to_vec(&record) {
            Ok(line) => line,
            Err(_) => return,
        };
        line.push(b'\n');
        let result = match self.inner.writer.lock() {
            Ok(mut writer) => writer.write_all(&line),
            Err(poisoned) => poisoned.into_inner().write_all(&line),
        };
        if let Err(error) = result {
            self.inner.report(&error);
        }
    }

    fn root_closed(&self) {
        self.flush();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        let writer = match self.writer.get_mut() {
            Ok(writer) => writer,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Err(error) = writer.flush() {
            self.report(&error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::record::MetricKind;
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
        // The root closed: the lines are on disk before the sink is dropped.
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
