//! What the file and memory sinks keep: one [`SpanRecord`] per closed span
//! and one [`MetricRecord`] per metric event, built by one `tracing` layer
//! that hands them to its sinks.
//!
//! The layer hands a sink a [`RecordRef`], borrowed from its own state: a
//! sink that writes records out (the file) serializes that, to the same
//! JSON a [`Record`] has, without building one; a sink that keeps them
//! (memory) makes the owned [`Record`].
//!
//! Metric events follow `tracing-opentelemetry`'s convention (see
//! [`super::metrics`]): a field named `monotonic_counter.NAME`,
//! `counter.NAME`, `histogram.NAME` or `gauge.NAME` is a measurement of
//! metric NAME; the event's other fields are its attributes.

use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tracing::field::{Field, Visit};
use tracing::span;
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// One closed span.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanRecord {
    /// The span's name (`otel.name` when it sets one, such as `chat gpt-4o`).
    pub name: String,
    /// 32 hex digits, shared by every span of one trace.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// The parent's `span_id`; `None` for a root span.
    pub parent_span_id: Option<String>,
    /// When the span was created, in nanoseconds since the Unix epoch.
    pub start_unix_nanos: u64,
    /// From creation to close, in nanoseconds.
    pub duration_ns: u64,
    /// Every field recorded on the span, including those recorded after
    /// it was created (`otel.*` fields excluded).
    pub attributes: BTreeMap<String, Value>,
}

impl SpanRecord {
    /// The attribute `key`.
    pub fn attr(&self, key: &str) -> Option<&Value> {
        self.attributes.get(key)
    }

    /// The attribute `key` when it is a string.
    pub fn str_attr(&self, key: &str) -> Option<&str> {
        self.attr(key).and_then(Value::as_str)
    }

    /// The attribute `key` when it is an unsigned integer.
    pub fn u64_attr(&self, key: &str) -> Option<u64> {
        self.attr(key).and_then(Value::as_u64)
    }
}

/// The instrument a metric event measures with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    /// A monotonic counter (`monotonic_counter.` fields): values add up.
    Counter,
    /// A counter that may go down (`counter.` fields).
    UpDownCounter,
    /// A distribution (`histogram.` fields).
    Histogram,
    /// The latest value (`gauge.` fields).
    Gauge,
}

/// One measurement of a metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricRecord {
    /// The metric, such as `gen_ai.client.token.usage`.
    pub name: String,
    /// Its instrument.
    pub kind: MetricKind,
    /// The measurement (an integer or a float, as emitted).
    pub value: serde_json::Number,
    /// The event's other fields.
    pub attributes: BTreeMap<String, Value>,
}

impl MetricRecord {
    /// The measurement as a float.
    pub fn value_f64(&self) -> f64 {
        self.value.as_f64().unwrap_or(0.0)
    }

    /// The attribute `key` when it is a string.
    pub fn str_attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).and_then(Value::as_str)
    }
}

/// A span or a metric: one line of the JSONL file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    /// A closed span.
    Span(SpanRecord),
    /// A metric measurement.
    Metric(MetricRecord),
}

/// Where the record layer delivers.
pub(crate) trait RecordSink: Send + Sync + 'static {
    /// Take one record.
    fn record(&self, record: &RecordRef<'_>);
}

/// A record as the layer hands it to its sinks, borrowed from the layer's
/// state; it serializes to the same JSON as the [`Record`] it stands for.
pub(crate) enum RecordRef<'a> {
    /// A closed span.
    Span(SpanRef<'a>),
    /// A metric measurement.
    Metric(MetricRef<'a>),
}

/// A closed span, borrowed (see [`SpanRecord`]).
pub(crate) struct SpanRef<'a> {
    name: &'a str,
    trace_id: u128,
    span_id: u64,
    parent_span_id: Option<u64>,
    start_unix_nanos: u64,
    duration_ns: u64,
    attributes: &'a Attributes,
}

/// A metric measurement, borrowed (see [`MetricRecord`]).
pub(crate) struct MetricRef<'a> {
    name: &'static str,
    kind: MetricKind,
    value: &'a serde_json::Number,
    attributes: &'a Attributes,
}

impl RecordRef<'_> {
    /// The owned record.
    pub(crate) fn to_record(&self) -> Record {
        match self {
            RecordRef::Span(span) => Record::Span(SpanRecord {
                name: span.name.to_owned(),
                trace_id: Hex::<32>(span.trace_id).to_string(),
                span_id: Hex::<16>(u128::from(span.span_id)).to_string(),
                parent_span_id: span
                    .parent_span_id
                    .map(|p| Hex::<16>(u128::from(p)).to_string()),
                start_unix_nanos: span.start_unix_nanos,
                duration_ns: span.duration_ns,
                attributes: span.attributes.to_map(),
            }),
            RecordRef::Metric(metric) => Record::Metric(MetricRecord {
                name: metric.name.to_owned(),
                kind: metric.kind,
                value: metric.value.clone(),
                attributes: metric.attributes.to_map(),
            }),
        }
    }
}

/// An id as the fixed number of lowercase hex digits [`SpanRecord`]
/// holds (32 for a trace, 16 for a span; the id's lowest digits if it has
/// more); serialized without a string being built.
struct Hex<const DIGITS: usize>(u128);

impl<const DIGITS: usize> Hex<DIGITS> {
    /// The digits, most significant first: a table lookup per digit, where
    /// the formatting machinery's `{:032x}` cost every line of the file
    /// sink about 40 ns per id.
    fn digits(&self) -> [u8; DIGITS] {
        const DIGIT: &[u8; 16] = b"0123456789abcdef";
        let mut out = [b'0'; DIGITS];
        for (at, digit) in out.iter_mut().enumerate() {
            let shift = 4 * (DIGITS - 1 - at);
            if shift < 128 {
                *digit = DIGIT[((self.0 >> shift) & 0xf) as usize];
            }
        }
        out
    }
}

impl<const DIGITS: usize> std::fmt::Display for Hex<DIGITS> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let digits = self.digits();
        f.write_str(std::str::from_utf8(&digits).map_err(|_| std::fmt::Error)?)
    }
}

impl<const DIGITS: usize> Serialize for Hex<DIGITS> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let digits = self.digits();
        let text = std::str::from_utf8(&digits).map_err(serde::ser::Error::custom)?;
        serializer.serialize_str(text)
    }
}

impl Serialize for RecordRef<'_> {
    /// The fields of [`Record`]'s JSON, in its order: the tag `type`, then
    /// the span's or the metric's own.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            RecordRef::Span(span) => {
                let mut out = serializer.serialize_struct("SpanRecord", 8)?;
                out.serialize_field("type", "span")?;
                out.serialize_field("name", span.name)?;
                out.serialize_field("trace_id", &Hex::<32>(span.trace_id))?;
                out.serialize_field("span_id", &Hex::<16>(u128::from(span.span_id)))?;
                out.serialize_field(
                    "parent_span_id",
                    &span.parent_span_id.map(|p| Hex::<16>(u128::from(p))),
                )?;
                out.serialize_field("start_unix_nanos", &span.start_unix_nanos)?;
                out.serialize_field("duration_ns", &span.duration_ns)?;
                out.serialize_field("attributes", span.attributes)?;
                out.end()
            }
            RecordRef::Metric(metric) => {
                let mut out = serializer.serialize_struct("MetricRecord", 5)?;
                out.serialize_field("type", "metric")?;
                out.serialize_field("name", metric.name)?;
                out.serialize_field("kind", &metric.kind)?;
                out.serialize_field("value", metric.value)?;
                out.serialize_field("attributes", metric.attributes)?;
                out.end()
            }
        }
    }
}

/// A span's or an event's fields by name, each name once, sorted by name
/// (as the [`BTreeMap`] of the owned records has them). Field names are
/// the callsites' own `'static` strings: nothing is allocated per key.
#[derive(Debug, Default, Clone)]
pub(crate) struct Attributes(Vec<(&'static str, Value)>);

impl Attributes {
    /// Set `key` to `value` (a later value replaces an earlier one).
    fn insert(&mut self, key: &'static str, value: Value) {
        match self.0.binary_search_by(|(name, _)| (*name).cmp(key)) {
            Ok(at) => self.0[at].1 = value,
            Err(at) => self.0.insert(at, (key, value)),
        }
    }

    /// The owned map.
    fn to_map(&self) -> BTreeMap<String, Value> {
        self.0
            .iter()
            .map(|(name, value)| ((*name).to_owned(), value.clone()))
            .collect()
    }
}

impl Serialize for Attributes {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// The `tracing` layer feeding the file and memory sinks.
pub(crate) struct RecordLayer {
    sinks: Vec<Arc<dyn RecordSink>>,
}

impl RecordLayer {
    /// A layer delivering to every sink in `sinks`.
    pub(crate) fn new(sinks: Vec<Arc<dyn RecordSink>>) -> Self {
        RecordLayer { sinks }
    }

    fn deliver(&self, record: &RecordRef<'_>) {
        for sink in &self.sinks {
            sink.record(record);
        }
    }
}

/// What the layer keeps on each live span.
struct SpanData {
    /// The callsite's name, or the `otel.name` the span set.
    name: Cow<'static, str>,
    trace_id: u128,
    span_id: u64,
    parent_span_id: Option<u64>,
    start_unix_nanos: u64,
    started: Instant,
    attributes: Attributes,
}

/// Records span fields as JSON values.
struct SpanVisitor<'a> {
    name: &'a mut Cow<'static, str>,
    attributes: &'a mut Attributes,
}

impl SpanVisitor<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        let key = field.name();
        if key == "otel.name" {
            if let Value::String(name) = value {
                *self.name = Cow::Owned(name);
            }
        } else if !key.starts_with("otel.") {
            self.attributes.insert(key, value);
        }
    }
}

impl Visit for SpanVisitor<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::String(value.to_owned()));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::Bool(value));
    }
    fn record_u128(&mut self, field: &Field, value: u128) {
        self.put(
            field,
            wide(u64::try_from(value).ok().map(Value::from), value),
        );
    }
    fn record_i128(&mut self, field: &Field, value: i128) {
        self.put(
            field,
            wide(i64::try_from(value).ok().map(Value::from), value),
        );
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::String(value.to_string()));
    }
}

/// A 128-bit value as a number when it fits, else as a string.
fn wide(fits: Option<Value>, value: impl std::fmt::Display) -> Value {
    fits.unwrap_or_else(|| Value::String(value.to_string()))
}

/// Splits a metric event into its measurements and attributes.
struct MetricVisitor {
    measurements: Vec<(&'static str, MetricKind, serde_json::Number)>,
    attributes: Attributes,
}

/// The metric and instrument a field name declares, if it declares one.
pub(crate) fn metric_field(name: &str) -> Option<(&str, MetricKind)> {
    [
        ("monotonic_counter.", MetricKind::Counter),
        ("counter.", MetricKind::UpDownCounter),
        ("histogram.", MetricKind::Histogram),
        ("gauge.", MetricKind::Gauge),
    ]
    .into_iter()
    .find_map(|(prefix, kind)| name.strip_prefix(prefix).map(|metric| (metric, kind)))
}

impl MetricVisitor {
    fn number(&mut self, field: &Field, number: Option<serde_json::Number>, value: Value) {
        match (metric_field(field.name()), number) {
            (Some((metric, kind)), Some(number)) => {
                self.measurements.push((metric, kind, number));
            }
            _ => {
                self.attributes.insert(field.name(), value);
            }
        }
    }
}

impl Visit for MetricVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() != "message" {
            self.attributes
                .insert(field.name(), Value::String(format!("{value:?}")));
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.attributes
            .insert(field.name(), Value::String(value.to_owned()));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.attributes.insert(field.name(), Value::Bool(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.number(field, Some(value.into()), Value::from(value));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.number(field, Some(value.into()), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.number(
            field,
            serde_json::Number::from_f64(value),
            Value::from(value),
        );
    }
}

/// Whether an event's fields make it a metric event.
fn is_metric_event(event: &Event<'_>) -> bool {
    event
        .metadata()
        .fields()
        .iter()
        .any(|f| metric_field(f.name()).is_some())
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl<S> Layer<S> for RecordLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        // The nearest ancestor this layer sees (filtered-out ones are skipped).
        let parent = span.parent().and_then(|parent| {
            parent
                .extensions()
                .get::<SpanData>()
                .map(|data| (data.trace_id, data.span_id))
        });
        let (trace_id, parent_span_id) = match parent {
            Some((trace_id, parent_id)) => (trace_id, Some(parent_id)),
            None => (fastrand::u128(1..), None),
        };
        let mut data = SpanData {
            name: Cow::Borrowed(attrs.metadata().name()),
            trace_id,
            span_id: fastrand::u64(1..),
            parent_span_id,
            start_unix_nanos: unix_nanos(),
            started: Instant::now(),
            // Room for every field the callsite declares, recorded now or
            // later (`Empty` ones), so recording them never grows it.
            attributes: Attributes(Vec::with_capacity(attrs.metadata().fields().len())),
        };
        attrs.record(&mut SpanVisitor {
            name: &mut data.name,
            attributes: &mut data.attributes,
        });
        span.extensions_mut().insert(data);
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let mut extensions = span.extensions_mut();
        if let Some(data) = extensions.get_mut::<SpanData>() {
            values.record(&mut SpanVisitor {
                name: &mut data.name,
                attributes: &mut data.attributes,
            });
        }
    }

    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        if !is_metric_event(event) {
            return;
        }
        // Room for every field, so recording them never grows a buffer.
        let fields = event.metadata().fields().len();
        let mut visitor = MetricVisitor {
            measurements: Vec::with_capacity(fields.min(4)),
            attributes: Attributes(Vec::with_capacity(fields)),
        };
        event.record(&mut visitor);
        let MetricVisitor {
            measurements,
            attributes,
        } = visitor;
        for (name, kind, value) in &measurements {
            self.deliver(&RecordRef::Metric(MetricRef {
                name,
                kind: *kind,
                value,
                attributes: &attributes,
            }));
        }
    }

    fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else {
            return;
        };
        let Some(data) = span.extensions_mut().remove::<SpanData>() else {
            return;
        };
        self.deliver(&RecordRef::Span(SpanRef {
            name: &data.name,
            trace_id: data.trace_id,
            span_id: data.span_id,
            parent_span_id: data.parent_span_id,
            start_unix_nanos: data.start_unix_nanos,
            duration_ns: u64::try_from(data.started.elapsed().as_nanos()).unwrap_or(u64::MAX),
            attributes: &data.attributes,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_fixed_width_lowercase_hex() {
        for id in [
            0u128,
            1,
            0xabc,
            u128::from(u64::MAX),
            u128::MAX,
            0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
        ] {
            assert_eq!(Hex::<32>(id).to_string(), format!("{id:032x}"));
            let span = id & u128::from(u64::MAX);
            assert_eq!(Hex::<16>(span).to_string(), format!("{span:016x}"));
            assert_eq!(
                serde_json::to_string(&Hex::<32>(id)).unwrap(),
                format!("\"{id:032x}\"")
            );
        }
    }

    /// The file writes a borrowed record; the memory sink keeps the owned
    /// one. Both must be the same JSON, and the line must read back.
    #[test]
    fn a_borrowed_record_serializes_as_its_owned_record() {
        let mut attributes = Attributes::default();
        attributes.insert("loom.tenant", Value::from("acme"));
        attributes.insert("gen_ai.usage.input_tokens", Value::from(1u64));
        attributes.insert("gen_ai.usage.input_tokens", Value::from(42u64));
        let value = serde_json::Number::from(7u64);
        let records = [
            RecordRef::Span(SpanRef {
                name: "chat echo",
                trace_id: 0xab,
                span_id: 0xcd,
                parent_span_id: Some(0xef),
                start_unix_nanos: 1,
                duration_ns: 2,
                attributes: &attributes,
            }),
            RecordRef::Span(SpanRef {
                name: "invoke_agent",
                trace_id: u128::MAX,
                span_id: u64::MAX,
                parent_span_id: None,
                start_unix_nanos: 3,
                duration_ns: 4,
                attributes: &Attributes::default(),
            }),
            RecordRef::Metric(MetricRef {
                name: "loom.tool.duration",
                kind: MetricKind::Histogram,
                value: &value,
                attributes: &attributes,
            }),
        ];
        for record in &records {
            let line = serde_json::to_string(record).unwrap();
            let owned = record.to_record();
            assert_eq!(line, serde_json::to_string(&owned).unwrap());
            assert_eq!(serde_json::from_str::<Record>(&line).unwrap(), owned);
        }
        let RecordRef::Span(span) = &records[0] else {
            unreachable!()
        };
        assert_eq!(
            span.attributes.to_map()["gen_ai.usage.input_tokens"],
            42,
            "a field recorded twice keeps the later value"
        );
    }
}
