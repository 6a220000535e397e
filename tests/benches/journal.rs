//! The run journal's own cost per turn, without the harness around it.
//!
//! One iteration is what a journaled `bare` turn of the multi-tenant bench
//! asks of the journal's store layer, with the payload sizes that bench
//! writes: a run begun, its input (37 bytes) and tool list (120 bytes)
//! queued, then three awaited steps (a completion of 42 bytes, tool results
//! of 200, a completion of 194), each written with what was queued before
//! it ([`RunLog::write`]), and the run
//! finished and dropped: seven records in four appends. The store fsyncs
//! every 100 ms, as in that bench, so the appends are written in place
//! (through the shard's staging ring) and the journal's writer thread syncs
//! them on that interval; a new run id each time, so segments fill, rotate
//! and are retired as under load.
//!
//! Not included: what the agent side adds (fingerprinting requests and
//! encoding results, a few hundred nanoseconds), and the cache misses a
//! turn's other work causes; the multi-tenant bench's `journal-ab` mode
//! measures the whole.
//!
//! Run: `cargo bench -p loom-tests --bench journal`

use criterion::Criterion;
use loom_host::store::journal::{EntryAt, EntryKind, Journal, JournalFormat, RunLog, RunStart};
use loom_host::store::{Store, StoreSync};
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// The start record of run `id`, as the multi-tenant bench's runs have it.
fn record(id: &str) -> RunStart<'_> {
    RunStart {
        run: id,
        tenant: "tenant-3",
        user: Some("user-17"),
        session: None,
        agent: None,
        architecture: "react",
        prompt: "What does my run context say?",
        output_schema: None,
        metadata: &[],
        component: COMPONENT,
        origin: &serde_json::Value::Null,
        format: JournalFormat::Compact2,
    }
}

/// The SHA-256 (hex) of the run's architecture component.
const COMPONENT: &str = "9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f9f";

/// Queue `len` bytes at step `seq` of the root scope.
fn queue(log: &RunLog, seq: u32, kind: EntryKind, len: usize) {
    let fingerprint = [seq as u8; 32];
    let queued = log.queue(at(seq, kind, &fingerprint), payload(len), |_| true);
    assert!(matches!(queued, Ok(true)), "queue: {queued:?}");
}

/// Write `len` bytes at step `seq` of the root scope, with what the run
/// queued before them: an awaited step, as the agent writes one.
fn write(log: &RunLog, seq: u32, kind: EntryKind, len: usize) {
    let fingerprint = [seq as u8; 32];
    let written = now(log.write(at(seq, kind, &fingerprint), payload(len), |_| true));
    assert!(matches!(written, Ok(true)), "write: {written:?}");
}

/// Step `seq` of the root scope.
fn at(seq: u32, kind: EntryKind, fingerprint: &[u8; 32]) -> EntryAt<'_> {
    EntryAt {
        scope: "0",
        seq,
        kind,
        fingerprint,
    }
}

/// A payload of `len` bytes.
fn payload(len: usize) -> impl FnOnce(&mut Vec<u8>) -> Result<(), String> {
    move |out| {
        out.resize(out.len() + len, b'x');
        Ok(())
    }
}

/// Poll `future` once: a flush written in place is done when it returns.
fn now<T>(future: impl Future<Output = T>) -> T {
    let mut context = Context::from_waker(Waker::noop());
    match pin!(future).as_mut().poll(&mut context) {
        Poll::Ready(value) => value,
        Poll::Pending => panic!("an in-place journal flush waited"),
    }
}

/// One journaled turn's records (see the module's doc).
fn turn(journal: &Journal, id: &str) {
    let log = journal.begin(&record(id)).expect("begin");
    queue(&log, 0, EntryKind::Input, 37);
    queue(&log, 1, EntryKind::Tools, 120);
    write(&log, 2, EntryKind::Completion, 42);
    write(&log, 3, EntryKind::ToolResults, 200);
    write(&log, 4, EntryKind::Completion, 194);
    log.finish(true);
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    let dir = tempfile::tempdir().expect("tempdir");
    let store =
        Store::open_with(&dir.path().join("loom.redb"), StoreSync::Interval(100)).expect("store");
    let journal = Journal::open(store).expect("journal");
    let mut n = 0u64;
    let mut id = String::new();
    criterion.bench_function("journal/bare_turn_in_place", |b| {
        b.iter(|| {
            use std::fmt::Write;
            n += 1;
            id.clear();
            let _ = write!(id, "run-{n:016x}");
            turn(&journal, black_box(&id));
        })
    });
    criterion.final_summary();
}
