//! Which segment files of the journal log still hold something a run
//! needs, and which can be deleted.
//!
//! A run's records (its start, its entries, a kept finish) pin every
//! segment they are in. When a run is dropped (finished without keeping
//! its entries, or pruned), a drop marker is written to the segment being
//! written, and the run stops pinning its data. The marker itself must
//! outlive that data: if the segment holding the marker went first, a
//! restart would find the run's older records with nothing saying they
//! are void, and bring the run back as interrupted. So a segment is
//! deletable when no run pins it and none of its markers still guards
//! data in another segment.
//!
//! The accounting follows what is on disk: the log's writer applies a
//! record here only once it is written, and replays every segment through
//! it when the log is opened.

use super::{RunMap, RunSet};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Segment ids, their pins and drop markers.
#[derive(Debug, Default)]
pub(super) struct Segments {
    /// Every segment file that exists, with how many runs pin it (each
    /// run once, as listed in `runs`).
    pins: BTreeMap<u64, usize>,
    /// Each live run's segments.
    runs: RunMap<SegmentIds>,
    /// A dropped run whose data outlives its marker's need: run → (the
    /// marker's segment, the segments of its data not yet deleted).
    tombstones: RunMap<(u64, BTreeSet<u64>)>,
    /// Segment → the dropped runs whose markers it holds.
    markers: BTreeMap<u64, RunSet>,
}

impl Segments {
    /// Note that segment `id` exists.
    pub(super) fn add(&mut self, id: u64) {
        self.pins.entry(id).or_default();
    }

    /// A record of `run` was written to segment `id`.
    pub(super) fn record(&mut self, run: &Arc<str>, id: u64) {
        match self.runs.get_mut(&**run) {
            Some(ids) => {
                if !ids.insert(id) {
                    return;
                }
            }
            None => {
                self.runs.insert(run.clone(), SegmentIds::One(id));
            }
        }
        *self.pins.entry(id).or_default() += 1;
    }

    /// The segments holding `run`'s records, oldest first.
    pub(super) fn of(&self, run: &str) -> Vec<u64> {
        self.runs
            .get(run)
            .map(SegmentIds::to_vec)
            .unwrap_or_default()
    }

    /// A drop marker of `run` was written to segment `id`: its records are
    /// void, and the marker is kept while they exist.
    pub(super) fn drop_run(&mut self, run: &Arc<str>, id: u64) {
        self.add(id);
        let held = self.runs.remove(&**run);
        let held = held.iter().flat_map(SegmentIds::iter);
        for segment in held.clone() {
            if let Some(count) = self.pins.get_mut(&segment) {
                debug_assert!(*count > 0, "segment {segment} unpinned more than pinned");
                *count = count.saturating_sub(1);
            }
        }
        // Data in the marker's own segment goes with it.
        let data: BTreeSet<u64> = held.filter(|&s| s != id).collect();
        if data.is_empty() {
            return;
        }
        if let Some((old, _)) = self.tombstones.remove(&**run)
            && let Some(markers) = self.markers.get_mut(&old)
        {
            markers.remove(&**run);
        }
        self.markers.entry(id).or_default().insert(run.clone());
        self.tombstones.insert(run.clone(), (id, data));
    }

    /// The oldest segment below `active` that nothing needs any more.
    pub(super) fn next_deletable(&self, active: u64) -> Option<u64> {
        self.pins
            .range(..active)
            .find(|(id, pins)| **pins == 0 && !self.guards_data(**id))
            .map(|(id, _)| *id)
    }

    /// Whether a marker in segment `id` still voids data elsewhere.
    fn guards_data(&self, id: u64) -> bool {
        self.markers.get(&id).is_some_and(|runs| {
            runs.iter()
                .any(|run| self.tombstones.get(run).is_some_and(|(_, d)| !d.is_empty()))
        })
    }

    /// Segment `id` was deleted.
    pub(super) fn deleted(&mut self, id: u64) {
        self.pins.remove(&id);
        if let Some(runs) = self.markers.remove(&id) {
            for run in runs {
                self.tombstones.remove(&run);
            }
        }
        let settled: Vec<Arc<str>> = self
            .tombstones
            .iter_mut()
            .filter_map(|(run, (_, data))| {
                data.remove(&id);
                data.is_empty().then(|| run.clone())
            })
            .collect();
        for run in settled {
            if let Some((marker, _)) = self.tombstones.remove(&run)
                && let Some(markers) = self.markers.get_mut(&marker)
            {
                markers.remove(&run);
            }
        }
    }

    /// How many segment files exist.
    pub(super) fn count(&self) -> usize {
        self.pins.len()
    }
}

/// A run's segments, ascending: inline while there is one (as for
/// nearly every run), a short list past that.
#[derive(Debug)]
enum SegmentIds {
    One(u64),
    Many(Vec<u64>),
}

impl SegmentIds {
    /// Add `id`; whether it was not there yet.
    fn insert(&mut self, id: u64) -> bool {
        match self {
            SegmentIds::One(only) if *only == id => false,
            SegmentIds::One(only) => {
                let mut ids = vec![*only, id];
                ids.sort_unstable();
                *self = SegmentIds::Many(ids);
                true
            }
            SegmentIds::Many(ids) => match ids.binary_search(&id) {
                Ok(_) => false,
                Err(at) => {
                    ids.insert(at, id);
                    true
                }
            },
        }
    }

    /// The ids, ascending.
    fn iter(&self) -> impl Iterator<Item = u64> + Clone + '_ {
        let (one, many) = match self {
            SegmentIds::One(id) => (Some(*id), &[][..]),
            SegmentIds::Many(ids) => (None, ids.as_slice()),
        };
        one.into_iter().chain(many.iter().copied())
    }

    fn to_vec(&self) -> Vec<u64> {
        self.iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(segments: &mut Segments, active: u64) -> Vec<u64> {
        let mut deleted = Vec::new();
        while let Some(id) = segments.next_deletable(active) {
            segments.deleted(id);
            deleted.push(id);
        }
        deleted
    }

    #[test]
    fn a_live_run_pins_its_segments() {
        let mut s = Segments::default();
        s.record(&"a".into(), 1);
        s.record(&"a".into(), 2);
        s.record(&"b".into(), 2);
        s.add(3);
        assert_eq!(drain(&mut s, 3), Vec::<u64>::new());
        s.drop_run(&"b".into(), 3);
        assert_eq!(drain(&mut s, 3), Vec::<u64>::new());
        s.drop_run(&"a".into(), 3);
        assert_eq!(drain(&mut s, 3), [1, 2]);
        // The active segment is never deleted.
        assert_eq!(drain(&mut s, 3), Vec::<u64>::new());
        assert_eq!(s.count(), 1);
    }

    #[test]
    fn a_marker_outlives_the_data_it_voids() {
        let mut s = Segments::default();
        // `x` has data in 1; `y` runs long in 1 and pins it.
        s.record(&"x".into(), 1);
        s.record(&"y".into(), 1);
        s.record(&"z".into(), 2);
        // x is dropped: its marker is in 2; z is dropped too, in 2.
        s.drop_run(&"x".into(), 2);
        s.drop_run(&"z".into(), 2);
        s.add(3);
        // 2 holds nobody's records, but its marker guards x's data in 1.
        assert_eq!(drain(&mut s, 3), Vec::<u64>::new());
        s.drop_run(&"y".into(), 3);
        assert_eq!(drain(&mut s, 3), [1, 2]);
        assert_eq!(drain(&mut s, 4), [3]);
    }

    #[test]
    fn a_run_across_several_segments_pins_each_once() {
        let mut s = Segments::default();
        s.record(&"a".into(), 2);
        s.record(&"a".into(), 1);
        s.record(&"a".into(), 2);
        s.record(&"a".into(), 3);
        s.record(&"b".into(), 1);
        assert_eq!(s.of("a"), [1, 2, 3]);
        s.add(4);
        s.drop_run(&"b".into(), 4);
        assert_eq!(drain(&mut s, 4), Vec::<u64>::new());
        // a's marker in 4 guards its data in 1..=3 until they go.
        s.drop_run(&"a".into(), 4);
        assert_eq!(drain(&mut s, 4), [1, 2, 3]);
        assert_eq!(drain(&mut s, 5), [4]);
    }

    #[test]
    fn a_run_restarted_after_its_drop_pins_again() {
        let mut s = Segments::default();
        s.record(&"r".into(), 1);
        s.drop_run(&"r".into(), 1);
        s.record(&"r".into(), 2);
        s.add(3);
        assert_eq!(drain(&mut s, 3), [1]);
        assert_eq!(s.of("r"), [2]);
    }
}
