//! The journal segment being appended to: a file whose blocks are reserved
//! up front, appended to with no system call per append, by one of two
//! copies into the page cache:
//!
//! - staged in the shard's ring ([`super::ring`]), which is copied on to
//!   the segment with `pwrite`, its older part once half full and all of
//!   it before every sync, leaving out the records of runs dropped before
//!   any of them were copied: what a shard whose runs write in place uses
//!   on Linux;
//! - written through a shared memory map of the segment itself, where
//!   there is no ring;
//!
//! or, where the file system cannot reserve blocks, a file appended to
//! with `write`.
//!
//! A copy into a shared mapping is in the kernel's page cache the moment
//! it is made: it survives a crash of the process exactly as a `write`
//! does, and `fdatasync` makes it durable the same way. Reserving the
//! blocks first (`fallocate`) is what makes the mapping safe: a store to a
//! page with no block behind it would fault the process (`SIGBUS`) on a
//! full disk, where a `write` fails politely. The reserved tail reads as
//! zeros (in a reused file: records of an older generation), which the
//! reader takes as the end of the records ([`super::log::bodies`]), and
//! is cut off when the segment is closed.
//!
//! Before each interval sync of a mapped segment, the pages wholly behind
//! the appends are unmapped ([`SegmentFile::release_written`]): `fdatasync` must
//! write-protect every mapped dirty page it writes back, which costs a TLB
//! shootdown (an interrupt to every other core running the process) per
//! page, where one `munmap` of the written range costs one. The appends
//! go on in the mapping's tail.

#![allow(
    unsafe_code,
    reason = "mapping a file and reserving its blocks are system calls without safe wrappers"
)]

use super::ring::{Ring, StagedRun};
use std::fs::File;
use std::io::{self, Write};

/// Create (or empty) the segment file at `path`, open for reading as well
/// as writing, as a shared writable mapping of it requires.
pub(super) fn create(path: &std::path::Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(path)
}

/// A segment file open for appending.
pub(super) struct SegmentFile {
    file: File,
    /// Bytes of records (and magic) in the file.
    len: u64,
    /// The mapping of the reserved file, when blocks could be reserved
    /// and appends are not staged.
    map: Option<Mapping>,
    /// The shard's staging ring, lent to the segment while it is written.
    ring: Option<Ring>,
    /// Appends are staged in `ring` and copied on with `pwrite`, into
    /// blocks reserved up to `capacity`.
    staged: bool,
    /// The bytes reserved for the segment, when its appends are staged.
    capacity: u64,
    /// How far the mapping has been populated ahead of the appends
    /// ([`POPULATE_AHEAD`]); its whole length once the kernel refused to,
    /// so that it is not asked again.
    populated: usize,
    /// How many times the kernel was asked to populate a window.
    #[cfg(test)]
    populations: usize,
}

/// How much of a mapped segment is populated (its pages allocated and
/// mapped writable, `MADV_POPULATE_WRITE`) at a time, ahead of the appends.
/// Without it, every first store to a page of the segment takes a page
/// fault of its own on the appending run's thread; one call for a window
/// of pages costs a fraction of that many faults. Small (16 pages of 4
/// KiB), since a populated page is dirty: a sync that finds it still ahead
/// of the appends writes it back before its records are in it and
/// write-protects it with a TLB shootdown, which with a 1 MiB window was
/// most of what the journal's syncs cost.
const POPULATE_AHEAD: usize = 64 << 10;

impl SegmentFile {
    /// `file`, holding `len` bytes, prepared for appends with `capacity`
    /// bytes reserved, where the file system allows it (`reserved`: bytes
    /// already reserved, by [`warm`], which are not asked for again: on
    /// ext4 that walks every extent, under the shard's file lock): staged
    /// in `ring` when one is lent (begun for this segment at `len`), else
    /// mapped when `map`. Otherwise appended to with `write`.
    pub(super) fn new(
        file: File,
        len: u64,
        (capacity, reserved): (u64, u64),
        map: bool,
        ring: Option<Ring>,
    ) -> Self {
        let reserved = reserved >= capacity;
        let staged = ring.is_some() && (reserved || reserve(&file, capacity));
        let map = if map && !staged {
            reserve_and_map(&file, len, capacity, reserved)
        } else {
            None
        };
        SegmentFile {
            file,
            len,
            map,
            ring,
            staged,
            capacity,
            populated: 0,
            #[cfg(test)]
            populations: 0,
        }
    }

    /// Bytes written so far.
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// Whether `bytes` more fit in the reserved file (a file appended to
    /// with `write` grows as needed).
    pub(super) fn fits(&self, bytes: usize) -> bool {
        if self.staged {
            return self.len + bytes as u64 <= self.capacity;
        }
        self.map
            .as_ref()
            .is_none_or(|map| self.len as usize + bytes <= map.len())
    }

    /// Whether appends are copies into a mapping.
    #[cfg(test)]
    pub(super) fn is_mapped(&self) -> bool {
        self.map.is_some()
    }

    /// Append `bytes` (which must [`Self::fits`]). A failed `write` is cut
    /// back off the file.
    pub(super) fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.append_for(bytes, None)
    }

    /// [`Self::append`] one run's records: staged, they are tracked as
    /// that run's (see [`Ring::stage_for`]).
    ///
    /// # Errors
    ///
    /// As [`Self::append`].
    pub(super) fn append_for(&mut self, bytes: &[u8], run: Option<StagedRun>) -> io::Result<()> {
        if self.staged
            && let Some(ring) = &mut self.ring
        {
            return stage(ring, &self.file, &mut self.len, self.capacity, bytes, run);
        }
        let start = self.len as usize;
        match &mut self.map {
            Some(map) => {
                let end = start + bytes.len();
                if end > map.len() {
                    return Err(io::Error::other(
                        "a journal batch larger than its segment's reserved space",
                    ));
                }
                // Past half the populated window, the pages up to a window
                // ahead of this append that are not populated yet (those
                // that are would only be walked again); none once the end
                // of the mapping is reached (or the kernel refused).
                if end > self.populated.saturating_sub(POPULATE_AHEAD / 2)
                    && self.populated < map.len()
                {
                    self.populated = populate_ahead(map, start, self.populated);
                    #[cfg(test)]
                    {
                        self.populations += 1;
                    }
                }
                map.write(start, bytes)?;
            }
            None => {
                if let Err(error) = self.file.write_all(bytes) {
                    let _ = self.file.set_len(self.len);
                    return Err(error);
                }
            }
        }
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Run `number`'s records were dropped: those still staged need not be
    /// copied on ([`Ring::drop_run`]).
    pub(super) fn drop_run(&mut self, number: u64) {
        if self.staged
            && let Some(ring) = &mut self.ring
        {
            ring.drop_run(number);
        }
    }

    /// Make the file hold every append, ready for `fdatasync`: what is
    /// staged is copied on; of a mapping, the pages wholly behind the
    /// appends are unmapped, so that syncing them needs no TLB shootdown
    /// per page (see the module's doc).
    ///
    /// # Errors
    ///
    /// The failed copy of staged appends (they stay staged, for the next
    /// try).
    pub(super) fn catch_up(&mut self) -> io::Result<()> {
        if self.staged {
            return self.copy_staged();
        }
        self.release_written();
        Ok(())
    }

    /// Copy on what is staged, if anything (a mapped segment is left as
    /// it is): what a reader of the file needs first.
    ///
    /// # Errors
    ///
    /// The failed copy (what was not copied stays staged).
    pub(super) fn copy_staged(&mut self) -> io::Result<()> {
        match &mut self.ring {
            Some(ring) if self.staged => ring.copy_out(&self.file),
            _ => Ok(()),
        }
    }

    /// The ring lent to the segment (`None` if none was), once what it
    /// stages is copied on.
    ///
    /// # Errors
    ///
    /// The failed copy: the segment keeps the ring, so that its staged
    /// appends are not overwritten, for a later try (or the next open of
    /// the shard, which copies them: [`super::ring::recover`]).
    pub(super) fn take_ring(&mut self) -> io::Result<Option<Ring>> {
        self.copy_staged()?;
        self.staged = false;
        Ok(self.ring.take())
    }

    /// Unmap the pages wholly behind the appends (see
    /// [`Self::catch_up`]); the pages stay in the page cache, dirty until
    /// synced. Returns the bytes unmapped so far.
    pub(super) fn release_written(&mut self) -> usize {
        match &mut self.map {
            Some(map) => map.release_below(self.len as usize),
            None => 0,
        }
    }

    /// Another handle to the file, to sync it without holding this one.
    pub(super) fn handle(&self) -> io::Result<File> {
        self.file.try_clone()
    }

    /// `fdatasync` the file (pages stored through the mapping included,
    /// appends staged copied on first).
    pub(super) fn sync_data(&mut self) -> io::Result<()> {
        self.catch_up()?;
        self.file.sync_data()
    }
}

impl Drop for SegmentFile {
    /// Copy on what is staged, unmap the file and cut off what follows its
    /// records: the unused reserved tail, or a reused file's older records.
    /// A segment whose staged appends cannot be copied is not cut: the
    /// ring keeps them for the next open.
    fn drop(&mut self) {
        if self.staged && self.take_ring().is_err() {
            return;
        }
        self.map = None;
        let _ = self.file.set_len(self.len);
    }
}

/// Append `bytes` to the segment `file` of `len` bytes (`capacity`
/// reserved) through `ring`: staged, the ring copied on first when they
/// would not fit beside what it holds, and its older part once it is half
/// full ([`Ring::copy_out_older`]); a batch
/// larger than the ring is written past it.
fn stage(
    ring: &mut Ring,
    file: &File,
    len: &mut u64,
    capacity: u64,
    bytes: &[u8],
    run: Option<StagedRun>,
) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    if *len + bytes.len() as u64 > capacity {
        return Err(io::Error::other(
            "a journal batch larger than its segment's reserved space",
        ));
    }
    if ring.staged() + bytes.len() > ring.size() {
        ring.copy_out(file)?;
    }
    if bytes.len() > ring.size() {
        file.write_all_at(bytes, *len)?;
        ring.skip(bytes.len())?;
    } else {
        ring.stage_for(bytes, run)?;
    }
    *len += bytes.len() as u64;
    if let Err(error) = ring.copy_out_older(file) {
        // Staged, so written as far as a crash of the process goes; the
        // next copy tries again.
        tracing::warn!(%error, "staged journal appends could not be copied to their segment yet");
    }
    Ok(())
}

/// The system's page size: what a release and a population are aligned
/// to (`munmap` rounds a length up to whole pages, so a release aligned
/// to less than the real page would unmap the page being appended to).
fn page_size() -> usize {
    static PAGE: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        #[cfg(target_os = "linux")]
        {
            // SAFETY: `sysconf` reads a system constant.
            let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
            usize::try_from(size)
                .ok()
                .filter(|size| size.is_power_of_two())
                .unwrap_or(4096)
        }
        #[cfg(not(target_os = "linux"))]
        {
            4096
        }
    })
}

/// A shared writable mapping of a segment file from offset 0, whose
/// written prefix can be unmapped while appends go on behind it (which
/// `memmap2`'s mappings, unmapped whole, cannot do safely).
struct Mapping {
    /// The start of the mapping (page-aligned).
    ptr: *mut u8,
    /// Its length in bytes.
    len: usize,
    /// The prefix already unmapped, in bytes (a multiple of the page
    /// size).
    released: usize,
}

// SAFETY: the mapping is plain shared memory owned by its `SegmentFile`,
// which is used under one lock at a time; nothing in it is tied to a
// thread.
unsafe impl Send for Mapping {}

impl Mapping {
    fn len(&self) -> usize {
        self.len
    }

    /// Copy `bytes` to offset `at`, which must be at or past the released
    /// prefix and fit in the mapping (else an error, nothing written).
    fn write(&mut self, at: usize, bytes: &[u8]) -> io::Result<()> {
        let end = at.saturating_add(bytes.len());
        if at < self.released || end > self.len {
            return Err(io::Error::other(
                "a journal append outside the mapped part of its segment",
            ));
        }
        // SAFETY: `at..end` lies in the live (still mapped) part of the
        // mapping, checked above, and nothing else refers to it.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.add(at), bytes.len());
        }
        Ok(())
    }

    /// Unmap the pages wholly below offset `upto`; returns the bytes
    /// unmapped so far. A failed `munmap` leaves the pages mapped (they
    /// are then synced the slower way).
    fn release_below(&mut self, upto: usize) -> usize {
        let page = page_size();
        let upto = (upto.min(self.len) / page) * page;
        if upto > self.released && unmap(self.ptr, self.released, upto) {
            self.released = upto;
        }
        self.released
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        unmap(self.ptr, self.released, self.len);
    }
}

/// `munmap` the part `from..to` of the mapping at `ptr`; whether it was.
#[cfg(target_os = "linux")]
pub(super) fn unmap(ptr: *mut u8, from: usize, to: usize) -> bool {
    if to <= from {
        return true;
    }
    // SAFETY: `from..to` is a page-aligned part of the mapping at `ptr`
    // that is still mapped (the caller's `released` only grows, past
    // what was unmapped), and no reference into it outlives this call.
    unsafe { libc::munmap(ptr.add(from).cast(), to - from) == 0 }
}

/// No mapping is ever made elsewhere.
#[cfg(not(target_os = "linux"))]
fn unmap(_ptr: *mut u8, _from: usize, _to: usize) -> bool {
    true
}

/// Populate the window of `map` that starts at the page holding `from`,
/// skipping its part below `done` (populated already, and only walked
/// again if asked for); returns how far it is populated, or the mapping's
/// whole length where the kernel cannot (before Linux 5.14), so that it is
/// not asked again. A refusal costs nothing but the faults the population
/// would have saved.
#[cfg(target_os = "linux")]
fn populate_ahead(map: &Mapping, from: usize, done: usize) -> usize {
    let page = page_size();
    let window = from / page * page;
    let stop = (window + POPULATE_AHEAD).min(map.len());
    let start = window.max(done / page * page);
    if stop <= start {
        // At the mapping's end, or a batch larger than half a window
        // starts below what is populated.
        return if stop >= map.len() { map.len() } else { done };
    }
    // SAFETY: the range lies in the mapping's live part (`start` is at or
    // past the released prefix: appends never go below it), and
    // `MADV_POPULATE_WRITE` only faults its pages in.
    let advised = unsafe {
        libc::madvise(
            map.ptr.add(start).cast(),
            stop - start,
            libc::MADV_POPULATE_WRITE,
        )
    };
    if advised == 0 {
        stop
    } else {
        tracing::debug!(
            error = %io::Error::last_os_error(),
            "the journal segment could not be populated ahead"
        );
        map.len()
    }
}

/// Other systems take the page faults.
#[cfg(not(target_os = "linux"))]
fn populate_ahead(map: &Mapping, _from: usize, _done: usize) -> usize {
    map.len()
}

/// How much of a file one `readahead` call is asked to read in: at most a
/// device's usual readahead limit.
#[cfg(target_os = "linux")]
const WARM_CHUNK: usize = 64 << 10;

/// Make `file` ready to be mapped as a segment of `capacity` bytes, ahead
/// of time and off the appending threads: reserve its blocks and read its
/// pages into the page cache. A new file's reserved blocks read as zeros,
/// so its pages come in zeroed and clean (nothing to write back), and the
/// appends that later map them find them there instead of having each
/// allocated and zeroed on the way (which on a virtual machine, for memory
/// the guest has not touched lately, costs tens of microseconds a page).
/// A reused file's pages are mostly cached already. Best effort: a file
/// system that cannot is simply not warmed. Returns the bytes reserved
/// (`capacity`, or none).
#[cfg(target_os = "linux")]
pub(super) fn warm(file: &File, capacity: u64) -> u64 {
    use std::os::fd::AsRawFd;
    let Ok(count) = usize::try_from(capacity) else {
        return 0;
    };
    let fd = file.as_raw_fd();
    let reserved = reserve(file, capacity);
    let warmed = reserved
        // A chunk at a time: one call reads in no more than the device's
        // readahead limit (128 KiB by default), however much is asked.
        && (0..count).step_by(WARM_CHUNK).all(|at| {
            let Ok(offset) = at.try_into() else {
                return false;
            };
            // SAFETY: `readahead` reads only its integer arguments; the
            // descriptor is open and stays open for the call.
            unsafe { libc::readahead(fd, offset, WARM_CHUNK.min(count - at)) == 0 }
        });
    if !warmed {
        tracing::debug!(
            error = %io::Error::last_os_error(),
            "the next journal segment could not be warmed"
        );
    }
    if reserved { capacity } else { 0 }
}

/// Reserve the blocks of `file`'s first `capacity` bytes (`fallocate`);
/// whether they were.
#[cfg(target_os = "linux")]
pub(super) fn reserve(file: &File, capacity: u64) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(length) = libc::off_t::try_from(capacity) else {
        return false;
    };
    // SAFETY: `fallocate` reads only its integer arguments; the descriptor
    // is open for writing and stays open for the call.
    unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, length) == 0 }
}

/// Other systems reserve nothing.
#[cfg(not(target_os = "linux"))]
fn reserve(_file: &File, _capacity: u64) -> bool {
    false
}

/// Other systems are not warmed (nor reserved).
#[cfg(not(target_os = "linux"))]
pub(super) fn warm(_file: &File, _capacity: u64) -> u64 {
    0
}

/// Reserve `capacity` bytes of blocks for `file` and map them, or `None`
/// where the file system cannot reserve blocks (the caller then appends
/// with `write`).
#[cfg(target_os = "linux")]
fn reserve_and_map(file: &File, len: u64, capacity: u64, reserved: bool) -> Option<Mapping> {
    if !reserved && !reserve(file, capacity) {
        tracing::debug!(
            error = %io::Error::last_os_error(),
            "the journal's file system cannot reserve blocks; appending with write"
        );
        return None;
    }
    let size = usize::try_from(capacity).ok().filter(|&size| size > 0)?;
    // The segment was created by this process in the journal's own
    // directory (the store, and with it the journal, is open in one
    // process at a time), and is never truncated while mapped: only `Drop`
    // cuts it, after unmapping. Its blocks are reserved, so no store
    // faults.
    let ptr = match map_shared(file, size) {
        Ok(ptr) => ptr,
        Err(error) => {
            tracing::warn!(%error, "the journal segment could not be mapped; appending with write");
            let _ = file.set_len(len);
            return None;
        }
    };
    Some(Mapping {
        ptr,
        len: size,
        released: 0,
    })
}

/// A new shared, writable mapping of `file`'s first `len` bytes (which
/// must exist), placed by the kernel: what a segment and the staging ring
/// ([`super::ring`]) are written through.
///
/// # Errors
///
/// The system's, when it cannot be made.
#[cfg(target_os = "linux")]
pub(super) fn map_shared(file: &File, len: usize) -> io::Result<*mut u8> {
    use std::os::fd::AsRawFd;
    // SAFETY: a new mapping, placed by the kernel, of an open descriptor;
    // it refers to no memory of the process's before it is made.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    Ok(ptr.cast())
}

/// Other systems append with `write`.
#[cfg(not(target_os = "linux"))]
fn reserve_and_map(_file: &File, _len: u64, _capacity: u64, _reserved: bool) -> Option<Mapping> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_segment(dir: &tempfile::TempDir) -> (std::path::PathBuf, File) {
        let path = dir.path().join("1.seg");
        let mut file = create(&path).expect("create");
        file.write_all(b"MAGIC").expect("magic");
        (path, file)
    }

    #[test]
    fn a_mapped_segment_holds_its_appends_and_is_cut_to_them_when_closed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, file) = new_segment(&dir);
        let mut segment = SegmentFile::new(file, 5, (4096, 0), true, None);
        assert!(segment.is_mapped(), "ext4 and tmpfs reserve blocks");
        segment.append(b"one").expect("append");
        segment.append(b"two").expect("append");
        assert_eq!(segment.len(), 11);
        assert!(segment.fits(4096 - 11));
        assert!(!segment.fits(4096 - 10));
        // What was copied is in the file already (the page cache), with
        // the reserved tail zeroed behind it.
        let read = std::fs::read(&path).expect("read");
        assert_eq!(read.len(), 4096);
        assert_eq!(&read[..11], b"MAGIConetwo");
        assert!(read[11..].iter().all(|&b| b == 0));
        segment.sync_data().expect("sync");
        drop(segment);
        assert_eq!(std::fs::read(&path).expect("read"), b"MAGIConetwo");
    }

    #[test]
    fn an_append_past_the_reservation_is_refused_not_a_fault() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_path, file) = new_segment(&dir);
        let mut segment = SegmentFile::new(file, 5, (8, 0), true, None);
        assert!(segment.is_mapped());
        assert!(segment.append(b"toolong").is_err());
        assert_eq!(segment.len(), 5);
        segment.append(b"ok!").expect("fits exactly");
    }

    #[test]
    fn appends_populate_the_mapping_a_window_ahead_and_stay_intact() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, file) = new_segment(&dir);
        let capacity = 3 * POPULATE_AHEAD as u64;
        let mut segment = SegmentFile::new(file, 5, (capacity, 0), true, None);
        assert!(segment.is_mapped());
        segment.append(b"first").expect("append");
        // Linux 5.14+ populates a window from the first append's page;
        // an older kernel refuses once, which counts as done.
        let window = segment.populated;
        assert!(
            window == POPULATE_AHEAD || window == capacity as usize,
            "populated to {window}"
        );
        // Past half the window, the next append moves it on; the last
        // window stops at the end of the mapping.
        let chunk = vec![7u8; 4096];
        while segment.fits(chunk.len()) {
            segment.append(&chunk).expect("append");
        }
        assert_eq!(segment.populated, capacity as usize);
        // About two populations per window, and none again once the end
        // of the mapping is populated (48 appends of 4 KiB in all).
        assert!(
            segment.populations <= 8,
            "{} populations",
            segment.populations
        );
        let len = segment.len() as usize;
        drop(segment);
        let read = std::fs::read(&path).expect("read");
        assert_eq!(read.len(), len);
        assert_eq!(&read[..10], b"MAGICfirst");
        assert!(read[10..].iter().all(|&b| b == 7));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_warmed_file_has_its_blocks_reserved_and_its_pages_cached() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let (_path, file) = new_segment(&dir);
        let capacity = 1u64 << 20;
        warm(&file, capacity);
        let meta = file.metadata().expect("metadata");
        if meta.len() < capacity {
            // A file system without fallocate is not warmed.
            return;
        }
        assert!(meta.blocks() * 512 >= capacity, "{} blocks", meta.blocks());
        // Every page is in the page cache: mincore on a read-only mapping.
        let size = capacity as usize;
        // SAFETY: a new private read-only mapping of the file's first
        // `size` bytes, unmapped below; nothing is read through it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        let mut resident = vec![0u8; size.div_ceil(page_size())];
        // SAFETY: `ptr..ptr+size` is the mapping made above; `resident`
        // has a byte per page of it.
        let rc = unsafe { libc::mincore(ptr, size, resident.as_mut_ptr()) };
        // SAFETY: the mapping made above, unmapped once.
        unsafe { libc::munmap(ptr, size) };
        assert_eq!(rc, 0);
        let cached = resident.iter().filter(|&&r| r & 1 == 1).count();
        assert_eq!(cached, resident.len(), "pages cached");
    }

    #[test]
    fn releasing_the_written_pages_keeps_them_and_appends_go_on_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, file) = new_segment(&dir);
        const PAGE: usize = 4096;
        if page_size() != PAGE {
            // The offsets below assume 4 KiB pages.
            return;
        }
        let mut segment = SegmentFile::new(file, 5, (4 * PAGE as u64, 0), true, None);
        assert!(segment.is_mapped());
        // Nothing below a whole page yet: nothing released.
        segment.append(&[1u8; 100]).expect("append");
        assert_eq!(segment.release_written(), 0);
        segment.append(&[2u8; PAGE + 50]).expect("append");
        assert_eq!(segment.release_written(), PAGE);
        // The tail page stays mapped and takes the next appends, across
        // the next page boundary, and a later release moves on.
        segment.append(&[3u8; PAGE]).expect("append");
        assert_eq!(segment.release_written(), 2 * PAGE);
        assert_eq!(segment.release_written(), 2 * PAGE, "nothing new");
        segment.sync_data().expect("sync");
        let len = segment.len() as usize;
        assert_eq!(len, 5 + 100 + PAGE + 50 + PAGE);
        // Appends below the released prefix cannot happen; the mapping
        // refuses one rather than write outside itself.
        if let Some(map) = segment.map.as_mut() {
            assert!(map.write(0, b"x").is_err());
            assert!(map.write(4 * PAGE - 1, b"xy").is_err());
        }
        drop(segment);
        let read = std::fs::read(&path).expect("read");
        assert_eq!(read.len(), len);
        assert_eq!(&read[..5], b"MAGIC");
        assert!(read[5..105].iter().all(|&b| b == 1));
        assert!(read[105..105 + PAGE + 50].iter().all(|&b| b == 2));
        assert!(read[105 + PAGE + 50..].iter().all(|&b| b == 3));
    }

    #[test]
    fn an_unmapped_segment_appends_with_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (path, file) = new_segment(&dir);
        let mut segment = SegmentFile::new(file, 5, (4096, 0), false, None);
        assert!(!segment.is_mapped());
        assert!(segment.fits(1 << 20));
        segment.append(b"abc").expect("append");
        assert_eq!(std::fs::read(&path).expect("read"), b"MAGICabc");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_staged_segment_reaches_its_file_by_the_sync_and_is_cut_to_its_appends_when_closed() {
        use super::super::log::Seal;
        use super::super::ring::RING_BYTES;
        let dir = tempfile::tempdir().expect("tempdir");
        let Some(mut ring) = Ring::open(dir.path()) else {
            return;
        };
        let (path, file) = new_segment(&dir);
        ring.begin(
            1,
            Seal {
                generation: 1,
                salt: 5,
            },
            5,
        );
        let capacity = 4 * RING_BYTES as u64;
        let mut segment = SegmentFile::new(file, 5, (capacity, 0), true, Some(ring));
        assert!(segment.staged && !segment.is_mapped());
        segment.append(b"one").expect("append");
        // Staged: not in the segment's file until a sync copies it.
        assert_eq!(&std::fs::read(&path).expect("read")[..8], b"MAGIC\0\0\0");
        segment.sync_data().expect("sync");
        assert_eq!(&std::fs::read(&path).expect("read")[..8], b"MAGICone");
        // Past half the ring, appends are copied on as they go; a batch
        // larger than the ring is written past it.
        let chunk = vec![7u8; RING_BYTES / 3];
        segment.append(&chunk).expect("append");
        segment.append(&chunk).expect("append");
        let large = vec![9u8; RING_BYTES + 1];
        segment.append(&large).expect("append");
        assert!(!segment.fits(capacity as usize));
        let len = segment.len() as usize;
        drop(segment);
        let read = std::fs::read(&path).expect("read");
        assert_eq!(read.len(), len, "cut to its appends");
        assert_eq!(&read[..8], b"MAGICone");
        let chunks = 8 + 2 * chunk.len();
        assert!(read[8..chunks].iter().all(|&b| b == 7));
        assert!(read[chunks..].iter().all(|&b| b == 9));
    }
}
