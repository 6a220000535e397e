//! The `memory` sink: spans and metrics kept in memory for embedders and
//! tests, the oldest dropped past a bound.

use super::record::{MetricRecord, Record, RecordLayer, RecordRef, RecordSink, SpanRecord};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

/// How many records a [`MemorySink`] keeps by default.
pub const DEFAULT_MEMORY_RECORDS: usize = 100_000;

/// Spans and metrics in memory, newest last; a cloneable handle to one
/// shared buffer holding at most its capacity (the oldest records go first).
#[derive(Clone)]
pub struct MemorySink {
    inner: Arc<Mutex<Buffer>>,
}

struct Buffer {
    records: VecDeque<Record>,
    capacity: usize,
    dropped: u64,
}

impl std::fmt::Debug for MemorySink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let buffer = self.lock();
        f.debug_struct("MemorySink")
            .field("records", &buffer.records.len())
            .field("capacity", &buffer.capacity)
            .field("dropped", &buffer.dropped)
            .finish()
    }
}

impl Default for MemorySink {
    fn default() -> Self {
        Self::new()
    }
}

impl MemorySink {
    /// A sink keeping the last [`DEFAULT_MEMORY_RECORDS`] records.
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_MEMORY_RECORDS)
    }

    /// A sink keeping the last `capacity` records (at least one).
    pub fn with_capacity(capacity: usize) -> Self {
        MemorySink {
            inner: Arc::new(Mutex::new(Buffer {
                records: VecDeque::new(),
                capacity: capacity.max(1),
                dropped: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Buffer> {
        crate::sync::lock(&self.inner)
    }

    /// Every record kept, oldest first.
    pub fn records(&self) -> Vec<Record> {
        self.lock().records.iter().cloned().collect()
    }

    /// The closed spans kept, in the order they closed (children before
    /// their parents).
    pub fn spans(&self) -> Vec<SpanRecord> {
        self.lock()
            .records
            .iter()
            .filter_map(|r| match r {
                Record::Span(span) => Some(span.clone()),
                Record::Metric(_) => None,
            })
            .collect()
    }

    /// The metric measurements kept, oldest first.
    pub fn metrics(&self) -> Vec<MetricRecord> {
        self.lock()
            .records
            .iter()
            .filter_map(|r| match r {
                Record::Metric(metric) => Some(metric.clone()),
                Record::Span(_) => None,
            })
            .collect()
    }

    /// How many records were dropped to stay within the capacity.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// Forget every record.
    pub fn clear(&self) {
        self.lock().records.clear();
    }

    /// A `tracing` layer filling this sink, for embedders composing their
    /// own subscriber.
    pub fn layer<S>(&self) -> impl Layer<S> + Send + Sync + 'static
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        RecordLayer::new(vec![Arc::new(self.clone()) as Arc<dyn RecordSink>])
    }
}

impl RecordSink for MemorySink {
    fn record(&self, record: &RecordRef<'_>) {
        let record = record.to_record();
        let mut buffer = self.lock();
        if buffer.records.len() >= buffer.capacity {
            buffer.records.pop_front();
            buffer.dropped += 1;
        }
        buffer.records.push_back(record);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn telemetry_memory_keeps_spans_with_parents_and_late_fields() {
        let sink = MemorySink::new();
        let subscriber = tracing_subscriber::registry().with(sink.layer());
        tracing::subscriber::with_default(subscriber, || {
            let run = tracing::info_span!("invoke_agent", loom.user = "alice");
            let tool = tracing::info_span!(
                parent: &run,
                "execute_tool",
                gen_ai.tool.name = "calculate",
                "error.type" = tracing::field::Empty,
            );
            // An explicit parent elsewhere than the current span.
            let other = tracing::info_span!("other");
            other.in_scope(|| tool.record("error.type", "denied"));
            drop((tool, other));
            tracing::event!(
                tracing::Level::INFO,
                monotonic_counter.loom.cost.usd = 0.25f64,
                loom.tenant = "acme",
            );
            drop(run);
        });
        let spans = sink.spans();
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["execute_tool", "other", "invoke_agent"]);
        let (tool, other, run) = (&spans[0], &spans[1], &spans[2]);
        assert_eq!(tool.parent_span_id.as_ref(), Some(&run.span_id));
        assert_eq!(tool.trace_id, run.trace_id);
        assert_eq!(other.parent_span_id, None, "a root of its own trace");
        assert_ne!(other.trace_id, run.trace_id);
        assert_eq!(tool.str_attr("gen_ai.tool.name"), Some("calculate"));
        assert_eq!(tool.str_attr("error.type"), Some("denied"));
        assert_eq!(run.str_attr("loom.user"), Some("alice"));
        let metrics = sink.metrics();
        assert_eq!(metrics.len(), 1);
        assert_eq!(metrics[0].name, "loom.cost.usd");
        assert_eq!(
            metrics[0].kind,
            crate::telemetry::record::MetricKind::Counter
        );
        assert_eq!(metrics[0].value_f64(), 0.25);
        assert_eq!(metrics[0].str_attr("loom.tenant"), Some("acme"));
    }

    #[test]
    fn telemetry_memory_is_bounded() {
        let sink = MemorySink::with_capacity(3);
        let subscriber = tracing_subscriber::registry().with(sink.layer());
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..5u64 {
                tracing::info_span!("step", i).in_scope(|| {});
            }
        });
        let kept: Vec<u64> = sink
            .spans()
            .iter()
            .filter_map(|s| s.u64_attr("i"))
            .collect();
        assert_eq!(kept, [2, 3, 4]);
        assert_eq!(sink.dropped(), 2);
        sink.clear();
        assert!(sink.records().is_empty());
    }
}
