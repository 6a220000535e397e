//! The staging ring where there is none: the ring relies on Linux's
//! `MADV_POPULATE_WRITE`, `fallocate` and boot id. Shards elsewhere append
//! through the segment's own mapping or with `write` (see
//! [`super::mapped`]).

use super::log::Seal;
use std::fs::File;
use std::io;
use std::path::Path;

/// Never made: [`Ring::open`] always declines.
pub(super) enum Ring {}

/// A staged append's run (never staged here).
#[derive(Clone, Copy, Debug)]
#[allow(
    dead_code,
    reason = "made by the log for every append, read only by the Linux ring"
)]
pub(super) struct StagedRun {
    /// The run's number in the segment.
    pub(super) number: u64,
    /// The append starts the run.
    pub(super) starts: bool,
}

impl Ring {
    /// No ring here.
    pub(super) fn open(_dir: &Path) -> Option<Ring> {
        None
    }

    /// Never called: no ring exists.
    pub(super) fn size(&self) -> usize {
        match *self {}
    }

    /// Never called: no ring exists.
    pub(super) fn staged(&self) -> usize {
        match *self {}
    }

    /// Never called: no ring exists.
    pub(super) fn begin(&mut self, _id: u64, _seal: Seal, _len: u64) {
        match *self {}
    }

    /// Never called: no ring exists.
    pub(super) fn stage_for(&mut self, _bytes: &[u8], _run: Option<StagedRun>) -> io::Result<()> {
        match *self {}
    }

    /// Never called: no ring exists.
    pub(super) fn drop_run(&mut self, _number: u64) {
        match *self {}
    }

    /// Never called: no ring exists.
    pub(super) fn skip(&mut self, _len: usize) -> io::Result<()> {
        match *self {}
    }

    /// Never called: no ring exists.
    pub(super) fn copy_out(&mut self, _segment: &File) -> io::Result<()> {
        match *self {}
    }

    /// Never called: no ring exists.
    pub(super) fn copy_out_older(&mut self, _segment: &File) -> io::Result<()> {
        match *self {}
    }
}

/// Nothing is ever staged here, so nothing is left to copy.
pub(super) fn recover(_dir: &Path) -> Result<usize, crate::store::StoreError> {
    Ok(0)
}

/// No ring is ever set aside here.
pub(super) fn prune_unrecovered(_dir: &Path, _cutoff_ms: u64) -> usize {
    0
}
