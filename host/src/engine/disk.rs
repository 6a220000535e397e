//! Per-tenant disk quotas: how many bytes a tenant's read-write grants hold,
//! charged as guests write.
//!
//! A [`DiskLedger`] is shared by every call of one tenant. It learns the
//! current usage by walking the tenant's writable directories once (lazily,
//! on the first write), then keeps a running total: writes that grow a file
//! reserve the growth first and are refused when the quota would be passed;
//! deletes give bytes back. Sizes are logical (a sparse file counts at its
//! full length), so holes cannot hide usage. When a reservation would fail,
//! the ledger measures the directories again (at most once per
//! [`REMEASURE_INTERVAL`]) in case files were removed behind its back, and
//! only then refuses.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The size of one disk block: every file and directory counts at least
/// this much, and files count in whole blocks.
pub const BLOCK_BYTES: u64 = 4096;

/// The shortest time between two walks of a tenant's directories.
pub const REMEASURE_INTERVAL: Duration = Duration::from_secs(1);

/// Entries a measurement walks at most; past it the walk stops and what it
/// saw so far is the usage (a tenant cannot stall the host with a huge tree).
const MAX_WALK_ENTRIES: usize = 200_000;

/// Why a write was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DiskRefusal {
    /// The tenant's writable directories would hold more than the quota.
    #[error("the tenant's disk quota of {quota} bytes is used up ({used} bytes in use)")]
    Quota {
        /// The quota in bytes.
        quota: u64,
        /// Bytes in use.
        used: u64,
    },
    /// One file would grow past the largest size allowed.
    #[error("files may be at most {max} bytes; this write would make one {wanted} bytes")]
    FileTooLarge {
        /// The largest file size.
        max: u64,
        /// The size the write asked for.
        wanted: u64,
    },
}

/// Bytes in use in one tenant's writable grants.
#[derive(Debug)]
pub struct DiskLedger {
    roots: Vec<PathBuf>,
    quota: u64,
    max_file: u64,
    state: Mutex<LedgerState>,
}

#[derive(Debug, Default)]
struct LedgerState {
    used: u64,
    /// Bytes of removed files that calls may still hold open: invisible to
    /// a walk, still on disk.
    held: u64,
    measured_at: Option<Instant>,
}

impl DiskLedger {
    /// A ledger over `roots` (the tenant's read-write grant directories).
    pub fn new(roots: Vec<PathBuf>, quota: u64, max_file: u64) -> Self {
        DiskLedger {
            roots,
            quota,
            max_file,
            state: Mutex::new(LedgerState::default()),
        }
    }

    /// The quota in bytes.
    pub fn quota(&self) -> u64 {
        self.quota
    }

    /// The largest file size in bytes.
    pub fn max_file(&self) -> u64 {
        self.max_file
    }

    /// Bytes in use as last counted.
    pub fn used(&self) -> u64 {
        self.lock().used
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LedgerState> {
        crate::sync::lock(&self.state)
    }

    /// Whether the directories have never been measured.
    pub fn unmeasured(&self) -> bool {
        self.lock().measured_at.is_none()
    }

    /// Whether a shortfall may be re-checked by measuring again (the last
    /// walk is older than [`REMEASURE_INTERVAL`]).
    pub fn may_remeasure(&self) -> bool {
        self.lock()
            .measured_at
            .is_none_or(|at| at.elapsed() >= REMEASURE_INTERVAL)
    }

    /// Walk the directories and take their size as the usage. Blocking: run
    /// it off the async workers. Writes racing the walk are counted on top.
    pub fn measure(&self) {
        let measured = self.roots.iter().map(|r| tree_size(r)).sum::<u64>();
        let mut state = self.lock();
        state.used = measured.saturating_add(state.held);
        state.measured_at = Some(Instant::now());
    }

    /// Check that a file may reach `new_size` bytes.
    ///
    /// # Errors
    ///
    /// [`DiskRefusal::FileTooLarge`] past the per-file maximum.
    pub fn check_file_size(&self, new_size: u64) -> Result<(), DiskRefusal> {
        if new_size > self.max_file {
            Err(DiskRefusal::FileTooLarge {
                max: self.max_file,
                wanted: new_size,
            })
        } else {
            Ok(())
        }
    }

    /// Reserve `bytes` of growth against the usage as last counted; never
    /// blocks.
    ///
    /// # Errors
    ///
    /// [`DiskRefusal::Quota`] when the tenant's usage would pass the quota.
    pub fn try_reserve(&self, bytes: u64) -> Result<(), DiskRefusal> {
        let mut state = self.lock();
        if state.used.saturating_add(bytes) <= self.quota {
            state.used = state.used.saturating_add(bytes);
            Ok(())
        } else {
            Err(DiskRefusal::Quota {
                quota: self.quota,
                used: state.used,
            })
        }
    }

    /// Reserve `bytes`, measuring first when never measured and once more
    /// before refusing. Blocking (it may walk the directories).
    ///
    /// # Errors
    ///
    /// [`DiskRefusal::Quota`] when the tenant's usage would pass the quota.
    pub fn reserve(&self, bytes: u64) -> Result<(), DiskRefusal> {
        if self.unmeasured() {
            self.measure();
        }
        match self.try_reserve(bytes) {
            Err(_) if self.may_remeasure() => {
                self.measure();
                self.try_reserve(bytes)
            }
            other => other,
        }
    }

    /// A call removed a file of `bytes` it may still hold open: keep
    /// counting them (a walk cannot see them) until [`Self::unhold`].
    pub fn hold(&self, bytes: u64) {
        let mut state = self.lock();
        state.held = state.held.saturating_add(bytes);
    }

    /// The call that removed `bytes` of files has ended: they are free.
    pub fn unhold(&self, bytes: u64) {
        let mut state = self.lock();
        state.held = state.held.saturating_sub(bytes);
        state.used = state.used.saturating_sub(bytes);
    }

    /// Give back `bytes` (a reserved write did not happen).
    pub fn release(&self, bytes: u64) {
        let mut state = self.lock();
        state.used = state.used.saturating_sub(bytes);
    }
}

/// What the entries under `root` hold: files by their logical size (a
/// sparse file counts in full) in whole blocks, every entry at least one
/// block; symlinks not followed; at most [`MAX_WALK_ENTRIES`] entries.
fn tree_size(root: &Path) -> u64 {
    let mut total = 0u64;
    let mut seen = 0usize;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            seen += 1;
            if seen > MAX_WALK_ENTRIES {
                return total;
            }
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                total = total.saturating_add(BLOCK_BYTES);
                stack.push(entry.path());
            } else {
                let blocks = meta.len().div_ceil(BLOCK_BYTES).max(1);
                total = total.saturating_add(blocks.saturating_mul(BLOCK_BYTES));
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_stop_at_the_quota_and_deletes_are_found() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("old"), vec![0u8; 600]).unwrap();
        let ledger = DiskLedger::new(vec![dir.path().to_owned()], 10_000, 8000);
        assert!(ledger.unmeasured());
        ledger.reserve(3000).unwrap();
        assert_eq!(
            ledger.used(),
            BLOCK_BYTES + 3000,
            "600 bytes take one block"
        );
        let err = ledger.reserve(4000).unwrap_err();
        assert!(
            matches!(err, DiskRefusal::Quota { quota: 10_000, .. }),
            "{err}"
        );
        assert!(ledger.check_file_size(8001).is_err());
        ledger.release(3000);
        // Removed behind the ledger's back: the next shortfall re-measures.
        std::fs::remove_file(dir.path().join("old")).unwrap();
        std::thread::sleep(REMEASURE_INTERVAL);
        ledger.reserve(9000).unwrap();
    }
}
