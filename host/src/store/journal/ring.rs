//! The shard's staging ring: where a run's in-place appends land first, a
//! file mapped once and rewritten in a circle, copied on to the segment
//! file with `pwrite` a batch at a time.
//!
//! An append copied into a shared file mapping is in the kernel's page
//! cache at once, so it survives a crash of the process. Written straight
//! into the segment's own mapping, though, every page of the segment is a
//! page the process has not written before: the kernel must fault it in
//! writable (`MADV_POPULATE_WRITE` or a fault per page, with the file
//! system's `page_mkwrite`), and write-protect it again when a sync writes
//! it back. On the multi-tenant bench that was the largest single part of
//! what the journal cost a turn (about 0.8 µs; a few µs per page), and
//! every append stored to cache lines that came from memory. The ring's
//! pages are faulted in once and stay mapped and dirty (nothing ever syncs
//! the ring; the kernel writes it back on its own schedule, a few dozen
//! faults a minute). The copy to the segment file is a `pwrite` into
//! cached pages, made for the older part of what is staged once the ring
//! is half full, and for all of it before every sync, so that `fdatasync`
//! makes durable every record staged before it that a replay needs.
//!
//! Most runs end, and are dropped, long before the ring is copied: their
//! records void each other, and nothing of them need reach the segment at
//! all. The ring tracks which run each append is of, for the runs begun
//! in the segment it stages ([`Ring::stage_for`]); a run dropped while all
//! its appends are still staged ([`Ring::drop_run`]) is left out of the
//! copy, each stretch of such appends replaced in the segment by a skip
//! record that spans it (see [`super::log`]). Nothing is left out of what
//! a replay needs: a run some of whose records were copied already has
//! the rest copied too, its finish among them, and so does a resumed run,
//! whose earlier records are in older segments. On the multi-tenant bench
//! the copies and the write-back of what they copied had been about 0.6
//! µs of a journaled turn; now all but the runs under way at a sync are
//! left out. The ring is large (2 MiB) so that the runs under way are a
//! small part of it, and its lines are long out of the core's cache when
//! an append comes back to them: it asks for the next ones ahead.
//!
//! After a crash of the process, the ring holds whatever the appends had
//! reached and the copies had not: the next open of the shard copies that
//! into the segment ([`recover`]) before replaying it, from the end of the
//! segment's valid records on, up to the first record whose checksum does
//! not check at the offset it would take. A record's checksum covers its
//! offset (see [`super::log`]), so that also holds when the machine went
//! down or was restarted before the next open: the ring is never synced,
//! and the kernel may have written back some of its pages and not others,
//! so a page may hold what a lap before left there, records of the same
//! segment and seal but for offsets a ring's size lower; they do not check
//! where the new ones would go, and the copy stops before them. A crash of
//! the machine keeps what the last sync made durable, and may keep some
//! of the appends staged after it: those the kernel had written back, up
//! to the first it had not, and below the tail in the header page as it
//! was written back.
//! (The ring's header names the boot it was written in: a segment written
//! before checksums covered offsets takes nothing from a ring of another
//! boot.) A ring that cannot be copied is renamed aside, never
//! overwritten.
//!
//! File (`RING_FILE` in the shard's directory): a header page, then the
//! ring's bytes. Header: `LOOMRNG1`, the boot id (36 bytes of text), the
//! ring's size (`u32 LE`), the segment whose bytes it holds (`u64 LE`),
//! that segment's seal (generation and salt, `u32 LE` each), the segment
//! offset of the first byte staged for it (`u64 LE`) and the offset its
//! complete appends reach (`u64 LE`). Segment offset `o` is at ring byte
//! `o % size`.

#![allow(
    unsafe_code,
    reason = "the ring is a shared file mapping, written through a raw pointer"
)]

use super::log::{Seal, bodies, bodies_at, framing_of, segment_path};
use super::mapped;
use crate::store::StoreError;
use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::path::Path;

/// The ring's file in a shard's directory (not a segment: never replayed
/// as one).
pub(super) const RING_FILE: &str = "appends.ring";

/// How a ring that could not be copied to its segment is renamed, with
/// the time in milliseconds appended: kept aside for an operator to look
/// at, never read again.
pub(super) const UNRECOVERED_PREFIX: &str = "appends.ring-unrecovered-";

/// The ring's first bytes.
const RING_MAGIC: &[u8; 8] = b"LOOMRNG1";

/// The header's length: one page (the ring's bytes start page-aligned).
const HEADER: usize = 4096;

/// Where each header field starts.
const BOOT_AT: usize = 8;
const BOOT_LEN: usize = 36;
const SIZE_AT: usize = 44;
const SEGMENT_AT: usize = 48;
const GENERATION_AT: usize = 56;
const SALT_AT: usize = 60;
const START_AT: usize = 64;
const TAIL_AT: usize = 72;

/// The ring's size. Large enough to hold what the runs under way have
/// written recently several times over: the copy to the segment leaves
/// out the records of runs dropped before it ([`Ring::drop_run`]), and
/// starts once the ring is half full, with the oldest appends, whose runs
/// have mostly ended, leaving the most recent quarter of the ring staged
/// ([`Ring::copy_out_older`]). (Its lines are long out of the
/// core's cache when an append comes back to them a lap later; the ring
/// asks for them ahead, [`Ring::prefetch_next`].)
pub(super) const RING_BYTES: usize = 2 << 20;

/// How far past its tail the ring asks for cache lines after each
/// append ([`Ring::prefetch_next`]): more than a journaled turn's largest
/// append (its first, with the run's start, input, tool list and first
/// completion: about 730 bytes on the multi-tenant bench).
const PREFETCH_AHEAD: usize = 1024;

/// The cache line the prefetch counts in (64 bytes on x86-64).
#[cfg(target_arch = "x86_64")]
const CACHE_LINE: usize = 64;

/// The largest ring [`recover`] reads (a later build may make larger ones
/// than [`RING_BYTES`]).
const MAX_RING_BYTES: usize = 16 << 20;

/// The ring byte that segment offset `offset` is staged at. (The ring's
/// size is a constant power of two, so this is a mask, not a division: the
/// prefetch ahead of every append computes it for each line.)
fn ring_index(offset: u64) -> usize {
    (offset % RING_BYTES as u64) as usize
}

const _: () = assert!(RING_BYTES.is_power_of_two());

/// A shard's staging ring, mapped (see the module's doc). Holds at most
/// [`Ring::size`] bytes not yet copied to their segment.
pub(super) struct Ring {
    /// The ring's file, open while it is mapped.
    _file: File,
    /// The mapping: header page, then the ring ([`RING_BYTES`]).
    ptr: *mut u8,
    /// The segment offset of the first staged byte not yet copied to the
    /// segment file.
    copied: u64,
    /// The segment offset the staged appends reach.
    tail: u64,
    /// The seal of the segment being staged for (what a skip record in it
    /// is sealed with).
    seal: Seal,
    /// The appends staged and not copied yet, in order: where each ends,
    /// and the run it is all of, when that run is tracked in `runs`.
    spans: VecDeque<Span>,
    /// The runs begun in this segment whose every append is still staged
    /// (none copied yet): how many appends each has staged, and whether it
    /// was dropped, in which case they need not be copied at all.
    runs: RunSlots,
}

/// The most slots [`RunSlots`] holds: a run whose number was drawn long
/// before its first append (it waited that long) can be the oldest
/// tracked, and the runs begun after it must not grow the slots without
/// bound.
const MAX_RUN_SLOTS: usize = 1 << 16;

/// The runs a [`Ring`] tracks, by number: a shard numbers its runs in
/// the order they begin, and they begin and end within about a ring's
/// appends of each other, so a slot per number from the oldest tracked on
/// is a short array, used mostly at its end, with no hashing and few
/// cache lines (a map of them, looked up for every append and at the
/// copy, cost a third of the copies it spared). A run that begins after
/// its slot was let go (a number drawn long before its first append) is
/// not tracked: its records are copied, as any untracked run's.
#[derive(Debug, Default)]
struct RunSlots {
    /// The number of the run in `slots[0]`.
    base: u64,
    slots: VecDeque<Option<Elidable>>,
}

impl RunSlots {
    /// Track run `number` from its first append on (unless it is too far
    /// past the oldest tracked: then it is not, and its records are
    /// copied).
    fn insert(&mut self, number: u64, run: Elidable) {
        if self.slots.is_empty() {
            self.base = number;
        }
        let Some(index) = self.index(number).filter(|&index| index < MAX_RUN_SLOTS) else {
            return;
        };
        if index >= self.slots.len() {
            self.slots.resize(index + 1, None);
        }
        self.slots[index] = Some(run);
    }

    /// Where run `number`'s slot is, or would be: `None` behind the
    /// oldest.
    fn index(&self, number: u64) -> Option<usize> {
        usize::try_from(number.checked_sub(self.base)?).ok()
    }

    fn get(&self, number: u64) -> Option<&Elidable> {
        self.slots.get(self.index(number)?)?.as_ref()
    }

    fn get_mut(&mut self, number: u64) -> Option<&mut Elidable> {
        let index = self.index(number)?;
        self.slots.get_mut(index)?.as_mut()
    }

    /// Track run `number` no longer; let go of the slots before the oldest
    /// still tracked.
    fn remove(&mut self, number: u64) {
        if let Some(index) = self.index(number)
            && let Some(slot) = self.slots.get_mut(index)
        {
            *slot = None;
        }
        while let Some(None) = self.slots.front() {
            self.slots.pop_front();
            self.base += 1;
        }
    }

    fn clear(&mut self) {
        self.slots.clear();
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// The staged appends [`Ring::spans`] has room for from the start: half a
/// ring (what it holds before a copy) of appends of 128 bytes, more than a
/// journaled turn's average, so under load the list is not regrown and
/// copied under the shard's file lock (a profile caught such a growth
/// waiting on the allocator's first touch of a fresh 2 MiB page). Appends
/// smaller on average can still grow it.
const SPANS_ROOM: usize = RING_BYTES / 2 / 128;

/// One staged append (see [`Ring::spans`]).
#[derive(Clone, Copy, Debug)]
struct Span {
    /// The segment offset it ends at.
    end: u64,
    /// The run whose records it holds, when that run is tracked.
    run: Option<u64>,
}

/// A run whose appends are all still staged (see [`Ring::runs`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Elidable {
    /// Its appends in [`Ring::spans`].
    spans: u32,
    /// It ended and its records were dropped: they are voided, so they
    /// need never reach the segment.
    dropped: bool,
}

/// A staged append's run, as [`Ring::stage_for`] tracks it.
#[derive(Clone, Copy, Debug)]
pub(super) struct StagedRun {
    /// The run's number in the segment.
    pub(super) number: u64,
    /// The append starts the run (its start record, begun by this process
    /// and not resumed): every record of the run is in this ring.
    pub(super) starts: bool,
}

// SAFETY: the mapping is plain shared memory owned by the `Ring`, and
// reached only through `&mut self` (the shard's file lock).
unsafe impl Send for Ring {}

impl Ring {
    /// The ring in `dir` (created, or reused from an earlier process once
    /// [`recover`] copied what it held, or set it aside), mapped with its
    /// pages faulted in;
    /// `None` where there is no boot id to name (the shard then writes
    /// through the segment's own mapping) or the file cannot be made.
    pub(super) fn open(dir: &Path) -> Option<Ring> {
        let boot = boot_id()?;
        let made = (|| -> io::Result<Ring> {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(dir.join(RING_FILE))?;
            let len = HEADER + RING_BYTES;
            file.set_len(len as u64)?;
            let ptr = map(&file, len)?;
            let mut ring = Ring {
                _file: file,
                ptr,
                copied: 0,
                tail: 0,
                seal: Seal {
                    generation: 0,
                    salt: 0,
                },
                spans: VecDeque::with_capacity(SPANS_ROOM),
                runs: RunSlots::default(),
            };
            ring.header_mut()[..8].copy_from_slice(RING_MAGIC);
            ring.header_mut()[BOOT_AT..BOOT_AT + BOOT_LEN].copy_from_slice(&boot);
            let size = u32::try_from(RING_BYTES).unwrap_or(u32::MAX);
            ring.header_mut()[SIZE_AT..SIZE_AT + 4].copy_from_slice(&size.to_le_bytes());
            ring.begin(
                0,
                Seal {
                    generation: 0,
                    salt: 0,
                },
                0,
            );
            Ok(ring)
        })();
        match made {
            Ok(ring) => Some(ring),
            Err(error) => {
                tracing::debug!(%error, "the journal's staging ring could not be made; appending through the segment's mapping");
                None
            }
        }
    }

    /// The most bytes the ring holds.
    pub(super) fn size(&self) -> usize {
        RING_BYTES
    }

    /// Bytes staged and not yet copied to the segment.
    pub(super) fn staged(&self) -> usize {
        (self.tail - self.copied) as usize
    }

    /// Start staging segment `id`, sealed with `seal`, from offset `len`
    /// on. Whatever the ring held for another segment must have been
    /// copied ([`Self::copy_out`]).
    pub(super) fn begin(&mut self, id: u64, seal: Seal, len: u64) {
        self.copied = len;
        self.tail = len;
        self.seal = seal;
        self.spans.clear();
        self.runs.clear();
        // The tail first: a crash between these stores leaves a header
        // whose offsets hold nothing to copy, for either segment. (The
        // fence keeps the compiler from moving the plain stores below
        // ahead of it; the processor keeps stores in order for a kill.)
        self.store_tail(len);
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
        let header = self.header_mut();
        header[START_AT..START_AT + 8].copy_from_slice(&len.to_le_bytes());
        header[SEGMENT_AT..SEGMENT_AT + 8].copy_from_slice(&id.to_le_bytes());
        header[GENERATION_AT..GENERATION_AT + 4].copy_from_slice(&seal.generation.to_le_bytes());
        header[SALT_AT..SALT_AT + 4].copy_from_slice(&seal.salt.to_le_bytes());
        self.prefetch_next();
    }

    /// [`Self::stage_for`] an append that is no one run's.
    #[cfg(test)]
    pub(super) fn stage(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stage_for(bytes, None)
    }

    /// Stage `bytes`, the segment's next: when `run` says whose records
    /// they are, tracked as that run's, so that the copy can leave them
    /// out should the run be dropped before any of them are copied
    /// ([`Self::drop_run`]).
    ///
    /// # Errors
    ///
    /// When they do not fit beside what is staged (`staged() +
    /// bytes.len() > size()`): nothing is staged.
    pub(super) fn stage_for(&mut self, bytes: &[u8], run: Option<StagedRun>) -> io::Result<()> {
        if self.staged() + bytes.len() > RING_BYTES {
            return Err(io::Error::other(
                "journal appends larger than the room left in the staging ring",
            ));
        }
        let at = ring_index(self.tail);
        let first = bytes.len().min(RING_BYTES - at);
        // SAFETY: `at + first <= RING_BYTES` and `bytes.len() - first <=
        // RING_BYTES`:
        // both copies land in the ring's part of the mapping, which lives
        // as long as `self`, and nothing else refers to it.
        unsafe {
            let ring = self.ptr.add(HEADER);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), ring.add(at), first);
            std::ptr::copy_nonoverlapping(bytes.as_ptr().add(first), ring, bytes.len() - first);
        }
        self.tail += bytes.len() as u64;
        self.store_tail(self.tail);
        self.prefetch_next();
        let run = run.and_then(|run| {
            if run.starts {
                self.runs.insert(
                    run.number,
                    Elidable {
                        spans: 1,
                        dropped: false,
                    },
                );
                return Some(run.number);
            }
            let tracked = self.runs.get_mut(run.number)?;
            tracked.spans += 1;
            Some(run.number)
        });
        self.spans.push_back(Span {
            end: self.tail,
            run,
        });
        Ok(())
    }

    /// Run `number` ended and its records were dropped: if every one of
    /// them is still staged, they are left out of the copy (a skip record
    /// takes their place, see [`super::log::skip_header`]). A dropped run
    /// leaves nothing a replay needs, so nothing of it need reach the
    /// segment; a run of which some records were copied already keeps the
    /// rest, its finish among them.
    pub(super) fn drop_run(&mut self, number: u64) {
        if let Some(run) = self.runs.get_mut(number) {
            run.dropped = true;
        }
    }

    /// Ask for the cache lines the next append will store to, in the
    /// state a store needs (`prefetchw`), without waiting for them.
    ///
    /// A lap of the ring is a couple of thousand turns, so by the time an
    /// append comes back to a line, the line has long left the core's
    /// cache (and the copy to the segment may have read it on the other
    /// core). Stored
    /// to cold, an append's bytes sat in the store buffer until the next
    /// locked instruction (the file lock's release) waited for all of
    /// them: in profiles of the multi-tenant bench that wait was most of
    /// what `write_run` cost. Asked for here, the lines arrive while the
    /// run does its other work and the next append stores to lines
    /// already held.
    fn prefetch_next(&self) {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::x86_64::{_MM_HINT_ET0, _mm_prefetch};
            let at = ring_index(self.tail) & !(CACHE_LINE - 1);
            for line in (0..PREFETCH_AHEAD).step_by(CACHE_LINE) {
                let offset = (at + line) % RING_BYTES;
                // SAFETY: `offset < RING_BYTES`: an address in the ring's part of
                // the mapping (a prefetch neither faults nor changes memory).
                unsafe { _mm_prefetch::<_MM_HINT_ET0>(self.ptr.add(HEADER + offset).cast::<i8>()) };
            }
        }
    }

    /// Note `len` bytes written to the segment file past the ring (a
    /// batch larger than the ring).
    ///
    /// # Errors
    ///
    /// When the ring still holds staged bytes (they would be skipped):
    /// nothing changes.
    pub(super) fn skip(&mut self, len: usize) -> io::Result<()> {
        if self.staged() > 0 {
            return Err(io::Error::other(
                "a journal batch written past the staging ring while it holds appends",
            ));
        }
        self.tail += len as u64;
        self.copied = self.tail;
        self.store_tail(self.tail);
        Ok(())
    }

    /// Copy what is staged to `segment`'s file, at the offsets it was
    /// staged for. On failure what was not copied stays staged (and in
    /// the ring's file for a later open) and the next copy tries it
    /// again.
    ///
    /// The appends of runs dropped before any of their records were copied
    /// are not copied: each stretch of them becomes a hole in the segment,
    /// with a skip record at its start that a reader steps over. On the
    /// multi-tenant bench nearly every run ends well before the ring is
    /// copied, and the copy and the write-back of what it copied were
    /// about 0.6 µs of a journaled turn.
    pub(super) fn copy_out(&mut self, segment: &File) -> io::Result<()> {
        self.copy_out_before(segment, self.tail)
    }

    /// Once the ring is half full, [`Self::copy_out`] of the appends
    /// staged before its most recent quarter, which stays staged: the runs
    /// that made those are the likeliest to be still under way, and those
    /// that end and are dropped before the next copy are left out of it.
    ///
    /// # Errors
    ///
    /// As [`Self::copy_out`].
    pub(super) fn copy_out_older(&mut self, segment: &File) -> io::Result<()> {
        if self.staged() < RING_BYTES / 2 {
            return Ok(());
        }
        let recent = (RING_BYTES / 4) as u64;
        self.copy_out_before(segment, self.tail.saturating_sub(recent))
    }

    /// Copy the staged appends that end by segment offset `limit`.
    fn copy_out_before(&mut self, segment: &File, limit: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        while self.copied < self.tail {
            let Some((end, elided)) = self.next_piece(limit) else {
                break;
            };
            if elided {
                let hole = usize::try_from(end - self.copied).unwrap_or(usize::MAX);
                let header = super::log::skip_header(self.seal, self.copied, hole);
                segment.write_all_at(&header, self.copied)?;
            } else {
                // `copied` moves only once the whole piece is written: a
                // piece is what the spans and the runs' tracking describe,
                // and a failed copy is tried again from its start.
                let mut written = self.copied;
                while written < end {
                    let at = ring_index(written);
                    let len = ((end - written) as usize).min(RING_BYTES - at);
                    // SAFETY: `at + len <= RING_BYTES`: the ring's part of the
                    // mapping.
                    let staged =
                        unsafe { std::slice::from_raw_parts(self.ptr.add(HEADER + at), len) };
                    segment.write_all_at(staged, written)?;
                    written += len as u64;
                }
            }
            self.settle_piece(end, elided);
        }
        Ok(())
    }

    /// Where the next piece of the copy ends, and whether it is left out:
    /// the longest stretch of staged appends from `copied` to `limit` at
    /// most that are all of dropped runs (at least a skip record long), or
    /// all not; `None` when the first ends past `limit`.
    fn next_piece(&self, limit: u64) -> Option<(u64, bool)> {
        let elided = |span: &Span| {
            span.run
                .and_then(|run| self.runs.get(run))
                .is_some_and(|run| run.dropped)
        };
        let Some(first) = self.spans.front() else {
            // Every staged byte is in a span; none is left.
            return (self.tail <= limit && self.copied < self.tail).then_some((self.tail, false));
        };
        if first.end > limit {
            return None;
        }
        let skip = elided(first);
        let mut end = first.end;
        for span in self.spans.iter().skip(1) {
            if span.end > limit || elided(span) != skip {
                break;
            }
            end = span.end;
        }
        if skip && end - self.copied < super::log::SKIP_HEADER as u64 {
            return Some((first.end, false));
        }
        Some((end, skip))
    }

    /// The piece of the copy up to `end` is done: its spans leave the
    /// ring's accounting, and a run some of whose records were copied is
    /// tracked no longer (the rest of them are copied too).
    fn settle_piece(&mut self, end: u64, elided: bool) {
        while let Some(span) = self.spans.front().copied() {
            if span.end > end {
                break;
            }
            self.spans.pop_front();
            let Some(number) = span.run else { continue };
            if !elided {
                self.runs.remove(number);
                continue;
            }
            if let Some(run) = self.runs.get_mut(number) {
                run.spans = run.spans.saturating_sub(1);
                if run.spans == 0 {
                    self.runs.remove(number);
                }
            }
        }
        self.copied = end;
    }

    fn header_mut(&mut self) -> &mut [u8] {
        // SAFETY: the header page is the mapping's first `HEADER` bytes.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, HEADER) }
    }

    /// Publish the tail after the bytes it covers: a crash of the process
    /// leaves every byte below it in the ring's page cache.
    fn store_tail(&mut self, tail: u64) {
        // SAFETY: `TAIL_AT` is 8-aligned in the page-aligned mapping.
        let slot = unsafe { &*self.ptr.add(TAIL_AT).cast::<std::sync::atomic::AtomicU64>() };
        slot.store(tail.to_le(), std::sync::atomic::Ordering::Release);
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // The whole mapping, made in `open`, unmapped once.
        mapped::unmap(self.ptr, 0, HEADER + RING_BYTES);
    }
}

/// Map `len` bytes of `file` shared and writable, their blocks reserved
/// first (so a store never faults on a full disk) and their pages faulted
/// in.
fn map(file: &File, len: usize) -> io::Result<*mut u8> {
    if !mapped::reserve(file, len as u64) {
        return Err(io::Error::last_os_error());
    }
    let ptr = mapped::map_shared(file, len)?;
    // SAFETY: the mapping just made; population only faults pages in.
    unsafe { libc::madvise(ptr.cast(), len, libc::MADV_POPULATE_WRITE) };
    Ok(ptr)
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), as text.
fn boot_id() -> Option<[u8; BOOT_LEN]> {
    let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    text.trim().as_bytes().try_into().ok()
}

/// Copy into its segment what the ring in `dir` holds for it beyond the
/// segment file's valid records: the appends a crash of the last process
/// left staged, up to the first record that does not check at the offset
/// it would take (see the module's doc). Done when a shard opens, before
/// its segments are read. A ring for a segment that is gone or sealed
/// otherwise, that holds nothing past the segment's records, or (from
/// another boot) whose bytes do not reach back to them, is left alone; so
/// is a ring from another boot for a segment whose checksums do not cover
/// offsets. Returns how many bytes were copied.
///
/// A ring that could not be read or copied is renamed aside
/// ([`UNRECOVERED_PREFIX`], with a warning), so that the shard's new ring
/// does not overwrite what it may hold.
///
/// # Errors
///
/// [`StoreError::Io`] when such a ring cannot even be renamed aside: the
/// shard does not open rather than lose it.
pub(super) fn recover(dir: &Path) -> Result<usize, StoreError> {
    let path = dir.join(RING_FILE);
    let failure = match std::fs::metadata(&path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(0),
        // Never read more than a ring of the largest size this code makes
        // could hold (a file grown past it was not written by a ring).
        Ok(meta) if meta.len() > (HEADER + MAX_RING_BYTES) as u64 => {
            tracing::warn!(path = %path.display(), bytes = meta.len(), "the journal's staging ring is larger than any ring; ignored");
            return Ok(0);
        }
        Err(error) => error,
        Ok(_) => {
            match std::fs::read(&path).and_then(|bytes| recover_from(dir, &bytes, boot_id())) {
                Ok(copied) => return Ok(copied),
                Err(error) => error,
            }
        }
    };
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis());
    let aside = dir.join(format!("{UNRECOVERED_PREFIX}{now_ms}"));
    match std::fs::rename(&path, &aside) {
        Ok(()) => {
            tracing::warn!(
                path = %path.display(),
                kept = %aside.display(),
                error = %failure,
                "the journal's staging ring could not be copied to its segment; kept aside, the records it held since the last sync are not replayed"
            );
            Ok(0)
        }
        Err(error) => Err(StoreError::Io(format!(
            "the journal's staging ring {} may hold records its segment lacks, and could be neither copied ({failure}) nor renamed aside ({error}); move it away to open the journal without them",
            path.display()
        ))),
    }
}

/// Delete the rings [`recover`] set aside in `dir` before `cutoff_ms`
/// (milliseconds since the Unix epoch, as their names carry): kept for an
/// operator to look at, they go with the journals of their age. Returns
/// how many were deleted.
pub(super) fn prune_unrecovered(dir: &Path, cutoff_ms: u64) -> usize {
    let Ok(items) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut deleted = 0;
    for item in items.flatten() {
        let name = item.file_name();
        let Some(set_aside_ms) = name
            .to_str()
            .and_then(|name| name.strip_prefix(UNRECOVERED_PREFIX))
            .and_then(|ms| ms.parse::<u64>().ok())
        else {
            continue;
        };
        if set_aside_ms >= cutoff_ms {
            continue;
        }
        match std::fs::remove_file(item.path()) {
            Ok(()) => deleted += 1,
            Err(error) => {
                tracing::warn!(path = %item.path().display(), %error, "a journal staging ring set aside could not be deleted");
            }
        }
    }
    deleted
}

fn recover_from(dir: &Path, ring: &[u8], boot: Option<[u8; BOOT_LEN]>) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let field = |at: usize, len: usize| ring.get(at..at + len);
    let u32_at = |at| field(at, 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let u64_at =
        |at| field(at, 8).and_then(|b| <[u8; 8]>::try_from(b).ok().map(u64::from_le_bytes));
    if field(0, 8) != Some(RING_MAGIC) {
        return Ok(0);
    }
    let same_boot = boot.is_some_and(|boot| field(BOOT_AT, BOOT_LEN) == Some(&boot[..]));
    let (Some(size), Some(id), Some(generation), Some(salt), Some(start), Some(tail)) = (
        u32_at(SIZE_AT),
        u64_at(SEGMENT_AT),
        u32_at(GENERATION_AT),
        u32_at(SALT_AT),
        u64_at(START_AT),
        u64_at(TAIL_AT),
    ) else {
        return Ok(0);
    };
    let size = size as usize;
    let Some(data) = ring.get(HEADER..HEADER + size) else {
        return Ok(0);
    };
    if size == 0 || tail <= start {
        return Ok(0);
    }
    let segment = segment_path(dir, id);
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&segment)
    {
        Ok(file) => file,
        // Retired since (a segment is retired only once every run in it
        // ended): nothing it staged is needed.
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(error) => return Err(error),
    };
    let written = std::fs::read(&segment)?;
    let Some((framing, header_len)) = framing_of(&written) else {
        return Ok(0);
    };
    if framing.seal() != Some(Seal { generation, salt }) {
        return Ok(0);
    }
    let placed = framing.placed();
    // Written back by the kernel in another boot, the ring's pages may be
    // of different laps; only checksums that cover their records' offsets
    // tell a record staged there from one staged a lap before.
    if !placed && !same_boot {
        return Ok(0);
    }
    let valid = (header_len + bodies(&written[header_len..], framing).1) as u64;
    // The ring holds offsets `tail - size..tail` of the segment, from
    // `start` on: it can go on from the segment's records only if they
    // reach its start.
    if valid < start || valid >= tail {
        return Ok(0);
    }
    if tail - valid > size as u64 {
        // From another boot that is the ring's header page written back
        // after more than a ring's worth of appends since the last sync:
        // what the ring holds does not join the segment's records, and
        // nothing can be copied.
        if !same_boot {
            tracing::info!(
                segment = id,
                valid,
                tail,
                "the journal's staging ring from before the restart does not reach back to its segment's records; nothing to copy"
            );
            return Ok(0);
        }
        return Err(io::Error::other(format!(
            "the segment's records end at {valid}, and the ring holds only {} bytes before {tail}",
            size
        )));
    }
    let mut staged = Vec::with_capacity((tail - valid) as usize);
    let mut at = valid;
    while at < tail {
        let index = (at % size as u64) as usize;
        let len = ((tail - at) as usize).min(size - index);
        staged.extend_from_slice(&data[index..index + len]);
        at += len as u64;
    }
    // The records that check where they would go, up to the first that
    // does not (all of them, unless the machine went down).
    let keep = if placed {
        bodies_at(&staged, framing, valid).1
    } else {
        staged.len()
    };
    if keep < staged.len() && same_boot {
        // Within one boot every staged record checks: this is a fault.
        tracing::warn!(
            segment = id,
            kept = keep,
            staged = staged.len(),
            "some journal records the staging ring held do not check where they go; copied up to them"
        );
    }
    if keep == 0 {
        return Ok(0);
    }
    file.write_all_at(&staged[..keep], valid)?;
    file.sync_data()?;
    // The crashed process may have named the segment without syncing the
    // directory yet.
    File::open(dir)?.sync_all()?;
    tracing::info!(
        segment = id,
        bytes = keep,
        "journal records a crash left staged were copied to their segment"
    );
    Ok(keep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::journal::log::{
        SEGMENT_HEADER, SKIP_HEADER, frame, seal_batch, seal_batch_crc, segment_header,
    };

    fn segment(dir: &Path, id: u64, seal: Seal) -> File {
        let path = segment_path(dir, id);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(path)
            .expect("segment");
        use std::os::unix::fs::FileExt;
        file.write_all_at(&segment_header(seal), 0).expect("header");
        file
    }

    /// Segment `id` in `dir`, sealed with `seal` (its header written), and
    /// the shard's ring begun for it.
    fn begun(dir: &Path, id: u64, seal: Seal) -> (File, Ring) {
        let file = segment(dir, id, seal);
        let mut ring = Ring::open(dir).expect("ring");
        ring.begin(id, seal, SEGMENT_HEADER as u64);
        (file, ring)
    }

    #[test]
    fn staged_bytes_wrap_around_and_reach_the_segment_in_order() {
        let Some(_) = boot_id() else { return };
        let dir = tempfile::tempdir().expect("tempdir");
        let seal = Seal {
            generation: 3,
            salt: 7,
        };
        let (file, mut ring) = begun(dir.path(), 1, seal);
        let mut expected = Vec::new();
        let mut n = 0u8;
        // Three times around the ring, in uneven pieces.
        while expected.len() < 3 * RING_BYTES {
            let piece: Vec<u8> = (0..(1000 + 37 * n as usize % 5000))
                .map(|i| (i as u8) ^ n)
                .collect();
            if ring.staged() + piece.len() > ring.size() {
                ring.copy_out(&file).expect("copy");
            }
            ring.stage(&piece).expect("stage");
            expected.extend_from_slice(&piece);
            n = n.wrapping_add(1);
        }
        ring.copy_out(&file).expect("copy");
        assert_eq!(ring.staged(), 0);
        let written = std::fs::read(segment_path(dir.path(), 1)).expect("read");
        assert_eq!(&written[SEGMENT_HEADER..], &expected[..]);
    }

    /// Three records of 40-byte payloads (0s, 1s, 2s), each sealed with
    /// `seal` for the offset it takes from the start of a segment's
    /// records.
    fn three_records(seal: Seal) -> Vec<u8> {
        let mut records = Vec::new();
        for i in 0..3u8 {
            let offset = (SEGMENT_HEADER + records.len()) as u64;
            records.extend(sealed_at(seal, offset, &[i; 40]));
        }
        records
    }

    /// Frame `body` as a record sealed with `seal` for segment `offset`.
    fn sealed_at(seal: Seal, offset: u64, body: &[u8]) -> Vec<u8> {
        let mut record = frame(body);
        seal_batch(&mut record, seal, offset);
        record
    }

    /// Stage one sealed record of `body` for `run` (starting it when
    /// `starts`) at the ring's tail.
    fn stage_record(ring: &mut Ring, seal: Seal, body: &[u8], run: Option<(u64, bool)>) {
        let record = sealed_at(seal, ring.tail, body);
        let run = run.map(|(number, starts)| StagedRun { number, starts });
        ring.stage_for(&record, run).expect("stage");
    }

    /// Stage kept records of `body` (none of a run), copying them on as
    /// the ring fills, until fewer than `room` bytes are left before the
    /// ring's end; then copy the rest.
    fn fill_copied_up_to(ring: &mut Ring, file: &File, seal: Seal, body: &[u8], room: u64) {
        while ring.tail + room < ring.size() as u64 {
            stage_record(ring, seal, body, None);
            if ring.staged() > ring.size() / 4 {
                ring.copy_out(file).expect("copy");
            }
        }
        ring.copy_out(file).expect("copy");
    }

    /// The segment file's record bodies, and where they end.
    fn segment_bodies(dir: &Path, id: u64) -> (Vec<Vec<u8>>, usize, Option<String>) {
        let bytes = std::fs::read(segment_path(dir, id)).expect("segment");
        let (framing, header) = framing_of(&bytes).expect("a segment");
        let (found, valid, problem) = bodies(&bytes[header..], framing);
        (
            found.into_iter().map(<[u8]>::to_vec).collect(),
            header + valid,
            problem,
        )
    }

    /// Slots follow the runs by number: let go from the front as the
    /// oldest are done with, never tracking a run behind them.
    #[test]
    fn run_slots_track_runs_by_number_and_let_go_of_the_oldest() {
        let run = Elidable {
            spans: 1,
            dropped: false,
        };
        let mut slots = RunSlots::default();
        slots.insert(10, run);
        slots.insert(12, run);
        assert_eq!(slots.get(10), Some(&run));
        assert_eq!(slots.get(11), None);
        assert_eq!(slots.get(9), None);
        if let Some(twelve) = slots.get_mut(12) {
            twelve.dropped = true;
        }
        slots.remove(10);
        // 11 never began: its slot goes with 10's.
        assert_eq!((slots.base, slots.slots.len()), (12, 1));
        slots.insert(11, run);
        assert_eq!(slots.get(11), None, "behind the oldest tracked");
        assert!(slots.get(12).is_some_and(|r| r.dropped));
        slots.remove(12);
        assert!(slots.is_empty());
        slots.insert(40, run);
        assert_eq!(slots.get(40), Some(&run));
    }

    /// The records of a run dropped while all of them were staged are left
    /// out of the copy: a skip record spans them, and a reader finds the
    /// records around it and nothing of the dropped run.
    #[test]
    fn a_run_dropped_while_staged_is_left_out_of_the_segment() {
        let Some(_) = boot_id() else { return };
        let dir = tempfile::tempdir().expect("tempdir");
        let seal = Seal {
            generation: 1,
            salt: 5,
        };
        let (file, mut ring) = begun(dir.path(), 2, seal);
        stage_record(&mut ring, seal, b"kept before", None);
        // Run 7 starts, writes twice more, and is dropped.
        stage_record(&mut ring, seal, b"start of 7", Some((7, true)));
        stage_record(&mut ring, seal, b"entry of 7", Some((7, false)));
        // Run 8 starts between, and runs on.
        stage_record(&mut ring, seal, b"start of 8", Some((8, true)));
        stage_record(&mut ring, seal, b"finish of 7", Some((7, false)));
        ring.drop_run(7);
        // A run never seen starting here (resumed, or begun in an earlier
        // segment) is never left out, dropped or not.
        stage_record(&mut ring, seal, b"entry of 9", Some((9, false)));
        ring.drop_run(9);
        let tail = ring.tail;
        ring.copy_out(&file).expect("copy");
        assert_eq!(ring.staged(), 0);
        assert!(ring.runs.is_empty());
        let (found, valid, problem) = segment_bodies(dir.path(), 2);
        assert_eq!(problem, None);
        assert_eq!(valid as u64, tail, "the walk reaches the tail");
        assert_eq!(
            found,
            [
                b"kept before".to_vec(),
                b"start of 8".to_vec(),
                b"entry of 9".to_vec()
            ]
        );
        // Nothing of run 7's records is in the file.
        let bytes = std::fs::read(segment_path(dir.path(), 2)).expect("segment");
        assert!(!bytes.windows(4).any(|w| w == b"of 7"));
        // Run 8 goes on past the copy: copied once, it is no longer left
        // out, even when dropped.
        stage_record(&mut ring, seal, b"finish of 8", Some((8, false)));
        ring.drop_run(8);
        ring.copy_out(&file).expect("copy");
        let (found, valid, problem) = segment_bodies(dir.path(), 2);
        assert_eq!(problem, None);
        assert_eq!(valid as u64, ring.tail);
        assert_eq!(found.last().map(Vec::as_slice), Some(&b"finish of 8"[..]));
        assert!(ring.runs.is_empty() && ring.spans.is_empty());
    }

    /// A copy that fails leaves `copied` where it was (a piece counts as
    /// copied only once all of it is written): the next copy starts the
    /// piece again, and leaves out the runs dropped meanwhile.
    #[test]
    fn a_failed_copy_is_tried_again_from_the_start_of_its_piece() {
        let Some(_) = boot_id() else { return };
        let dir = tempfile::tempdir().expect("tempdir");
        let seal = Seal {
            generation: 2,
            salt: 8,
        };
        let (file, mut ring) = begun(dir.path(), 3, seal);
        // Up to near the ring's end, copied; then a kept run's record and
        // a run of its own across the end, both staged.
        let body = vec![b'k'; 1000];
        fill_copied_up_to(&mut ring, &file, seal, &body, 1500);
        let before = ring.copied;
        stage_record(&mut ring, seal, &body, Some((1, true)));
        stage_record(&mut ring, seal, &body, Some((2, true)));
        // A read-only handle: every write fails.
        let read_only = std::fs::File::open(segment_path(dir.path(), 3)).expect("open");
        assert!(ring.copy_out(&read_only).is_err());
        assert_eq!(ring.copied, before, "nothing counts as copied");
        // Run 2, across the ring's end, is dropped meanwhile.
        ring.drop_run(2);
        stage_record(&mut ring, seal, b"last", None);
        ring.copy_out(&file).expect("copy");
        let (found, valid, problem) = segment_bodies(dir.path(), 3);
        assert_eq!(problem, None);
        assert_eq!(valid as u64, ring.tail);
        let n = found.len();
        assert_eq!(found[n - 2], body, "run 1's record, kept");
        assert_eq!(found[n - 1], b"last");
    }

    /// Appends of dropped runs on both sides of the ring's end make one
    /// hole; a skip record moved to another offset does not check.
    #[test]
    fn a_hole_across_the_rings_end_is_one_skip_and_checks_only_in_place() {
        let Some(_) = boot_id() else { return };
        let dir = tempfile::tempdir().expect("tempdir");
        let seal = Seal {
            generation: 3,
            salt: 11,
        };
        let (file, mut ring) = begun(dir.path(), 1, seal);
        // Fill most of a lap with kept records, copied.
        let body = vec![b'k'; 1000];
        fill_copied_up_to(&mut ring, &file, seal, &body, 3000);
        // Dropped runs staged across the end of the ring.
        for run in 0..6 {
            stage_record(&mut ring, seal, &body, Some((run, true)));
            ring.drop_run(run);
        }
        stage_record(&mut ring, seal, b"after the hole", None);
        let hole_at = ring.copied;
        ring.copy_out(&file).expect("copy");
        let (found, valid, problem) = segment_bodies(dir.path(), 1);
        assert_eq!(problem, None);
        assert_eq!(valid as u64, ring.tail);
        assert_eq!(
            found.last().map(Vec::as_slice),
            Some(&b"after the hole"[..])
        );
        assert!(!found.iter().any(|b| b.len() == 1000 && b[0] != b'k'));
        // One skip record, at the hole's start, spanning it.
        let bytes = std::fs::read(segment_path(dir.path(), 1)).expect("segment");
        let at = hole_at as usize;
        let word = u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        assert_eq!(word & (1 << 31), 1 << 31);
        // The same skip record copied to the hole's end (over the record
        // there) does not check there.
        let hole_end = at + SKIP_HEADER + (word & !(1 << 31)) as usize;
        let mut moved = bytes.clone();
        moved.copy_within(at..at + SKIP_HEADER, hole_end);
        let (framing, header) = framing_of(&moved).expect("a segment");
        let (_, valid, problem) = bodies(&moved[header..], framing);
        assert_eq!(header + valid, hole_end);
        assert_eq!(
            problem.as_deref(),
            Some("a skip record whose checksum does not match")
        );
    }

    #[test]
    fn a_crash_leaves_staged_records_that_the_next_open_copies() {
        let Some(_) = boot_id() else { return };
        let dir = tempfile::tempdir().expect("tempdir");
        let seal = Seal {
            generation: 1,
            salt: 99,
        };
        let (file, mut ring) = begun(dir.path(), 4, seal);
        let records = three_records(seal);
        let half = records.len() / 2;
        ring.stage(&records[..half]).expect("stage");
        ring.copy_out(&file).expect("copy");
        ring.stage(&records[half..]).expect("stage");
        // The process dies here: the second half is only in the ring.
        std::mem::forget(ring);
        let ring_bytes = std::fs::read(dir.path().join(RING_FILE)).expect("ring file");
        // A ring file grown past any ring's size is not read at all.
        let ring_file = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join(RING_FILE))
            .expect("ring file");
        ring_file
            .set_len((HEADER + MAX_RING_BYTES + 1) as u64)
            .expect("grow");
        assert_eq!(recover(dir.path()).expect("recover"), 0);
        ring_file
            .set_len(ring_bytes.len() as u64)
            .expect("shrink back");
        // Copied from the end of the last whole record in the file: the
        // copy before the crash cut the second record in two.
        let whole = records.len() / 3;
        assert!(half > whole && half < 2 * whole);
        assert_eq!(recover(dir.path()).expect("recover"), records.len() - whole);
        let written = std::fs::read(segment_path(dir.path(), 4)).expect("read");
        assert_eq!(&written[SEGMENT_HEADER..], &records[..]);
        // Copying again finds nothing more to do.
        assert_eq!(recover(dir.path()).expect("recover"), 0);
    }

    /// A crash under a build that sealed records with CRC-32 left a ring
    /// staged for a `LOOMJNL4` segment: this build recovers it, checking
    /// the staged records as that segment's, and the segment reads.
    #[test]
    fn a_ring_an_older_build_staged_for_a_crc_segment_is_recovered() {
        let Some(_) = boot_id() else { return };
        let dir = tempfile::tempdir().expect("tempdir");
        let seal = Seal {
            generation: 4,
            salt: 0x5eed,
        };
        let (_file, mut ring) = begun(dir.path(), 7, seal);
        let mut records = Vec::new();
        for i in 0..3u8 {
            let mut record = frame(&[i; 60]);
            seal_batch_crc(&mut record, seal, (SEGMENT_HEADER + records.len()) as u64);
            records.extend(record);
        }
        ring.stage(&records).expect("stage");
        std::mem::forget(ring);
        let path = segment_path(dir.path(), 7);
        let mut header = std::fs::read(&path).expect("read");
        header.truncate(SEGMENT_HEADER);
        header[..8].copy_from_slice(b"LOOMJNL4");
        std::fs::write(&path, &header).expect("write");
        assert_eq!(recover(dir.path()).expect("recover"), records.len());
        let written = std::fs::read(&path).expect("read");
        assert_eq!(&written[SEGMENT_HEADER..], &records[..]);
        let (framing, header_len) = framing_of(&written).expect("a segment");
        assert_eq!(bodies(&written[header_len..], framing).0.len(), 3);
    }

    #[test]
    fn after_a_restart_of_the_machine_only_records_that_check_where_they_go_are_copied() {
        let Some(boot) = boot_id() else { return };
        let mut other = boot;
        other[0] ^= 1;
        let dir = tempfile::tempdir().expect("tempdir");
        let seal = Seal {
            generation: 2,
            salt: 41,
        };
        let (_file, mut ring) = begun(dir.path(), 6, seal);
        let records = three_records(seal);
        ring.stage(&records).expect("stage");
        std::mem::forget(ring);
        let mut ring_bytes = std::fs::read(dir.path().join(RING_FILE)).expect("ring file");
        // The machine went down with the third record's page never written
        // back: it holds what a lap before left there, a record of the same
        // segment (its first, here) sealed for another offset.
        let whole = records.len() / 3;
        let third = HEADER + SEGMENT_HEADER + 2 * whole;
        ring_bytes[third..third + whole].copy_from_slice(&records[..whole]);
        assert_eq!(
            recover_from(dir.path(), &ring_bytes, Some(other)).expect("other boot"),
            2 * whole
        );
        let written = std::fs::read(segment_path(dir.path(), 6)).expect("read");
        assert_eq!(&written[SEGMENT_HEADER..], &records[..2 * whole]);
        // A segment framed before checksums covered offsets takes nothing
        // from a ring of another boot, and all it holds from this boot's.
        let path = segment_path(dir.path(), 6);
        let mut unplaced = std::fs::read(&path).expect("read");
        unplaced.truncate(SEGMENT_HEADER);
        unplaced[..8].copy_from_slice(b"LOOMJNL2");
        std::fs::write(&path, &unplaced).expect("write");
        assert_eq!(
            recover_from(dir.path(), &ring_bytes, Some(other)).expect("other boot"),
            0
        );
        assert_eq!(
            recover_from(dir.path(), &ring_bytes, Some(boot)).expect("this boot"),
            records.len()
        );
    }

    #[test]
    fn staged_records_across_the_rings_end_are_recovered_in_order_from_any_boot() {
        let Some(boot) = boot_id() else { return };
        let mut other = boot;
        other[0] ^= 1;
        let dir = tempfile::tempdir().expect("tempdir");
        let seal = Seal {
            generation: 5,
            salt: 0x77,
        };
        let (file, mut ring) = begun(dir.path(), 8, seal);
        // Records of about a KiB, each sealed for where it goes.
        let record = |n: usize, at: usize| {
            let mut record = frame(&vec![n as u8; 1000 + n % 7]);
            seal_batch(&mut record, seal, at as u64);
            record
        };
        let mut all = Vec::new();
        // Around the ring once, copied on as it fills, up to the record
        // that would cross its end.
        loop {
            let at = SEGMENT_HEADER + all.len();
            let next = record(all.len(), at);
            if all.len() > RING_BYTES / 2 && at % RING_BYTES + next.len() > RING_BYTES {
                break;
            }
            if ring.staged() + next.len() > ring.size() / 2 {
                ring.copy_out(&file).expect("copy");
            }
            ring.stage(&next).expect("stage");
            all.extend_from_slice(&next);
        }
        ring.copy_out(&file).expect("copy");
        let copied = all.len();
        // The last appends before the crash cross the ring's end and were
        // never copied.
        for _ in 0..3 {
            let next = record(all.len(), SEGMENT_HEADER + all.len());
            ring.stage(&next).expect("stage");
            all.extend_from_slice(&next);
        }
        std::mem::forget(ring);
        let ring_bytes = std::fs::read(dir.path().join(RING_FILE)).expect("ring file");
        assert_eq!(
            recover_from(dir.path(), &ring_bytes, Some(other)).expect("other boot"),
            all.len() - copied
        );
        let written = std::fs::read(segment_path(dir.path(), 8)).expect("read");
        assert_eq!(&written[SEGMENT_HEADER..], &all[..]);
        // A header written back past more than the ring holds since the
        // segment's records: from another boot nothing joins them, which
        // is no fault; in this boot it is one.
        let mut far = ring_bytes.clone();
        let tail = (SEGMENT_HEADER + all.len() + 2 * RING_BYTES) as u64;
        far[TAIL_AT..TAIL_AT + 8].copy_from_slice(&tail.to_le_bytes());
        assert_eq!(
            recover_from(dir.path(), &far, Some(other)).expect("other boot"),
            0
        );
        assert!(recover_from(dir.path(), &far, Some(boot)).is_err());
    }

    #[test]
    fn a_ring_that_cannot_be_copied_is_kept_aside_not_overwritten() {
        let Some(_) = boot_id() else { return };
        let dir = tempfile::tempdir().expect("tempdir");
        let seal = Seal {
            generation: 1,
            salt: 3,
        };
        let (_file, mut ring) = begun(dir.path(), 2, seal);
        ring.stage(&[1u8; 100]).expect("stage");
        std::mem::forget(ring);
        // A tail the ring cannot hold the bytes before: it cannot be
        // applied, so it is renamed aside rather than reused.
        let path = dir.path().join(RING_FILE);
        let mut bytes = std::fs::read(&path).expect("ring file");
        let tail = (SEGMENT_HEADER + 2 * RING_BYTES) as u64;
        bytes[TAIL_AT..TAIL_AT + 8].copy_from_slice(&tail.to_le_bytes());
        std::fs::write(&path, &bytes).expect("write");
        assert_eq!(recover(dir.path()).expect("recover"), 0);
        assert!(!path.exists());
        let kept: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .filter(|item| {
                item.file_name()
                    .to_string_lossy()
                    .starts_with(UNRECOVERED_PREFIX)
            })
            .collect();
        assert_eq!(kept.len(), 1);
        assert_eq!(std::fs::read(kept[0].path()).expect("kept"), bytes);
        // Pruning takes it once it is older than the cutoff, and nothing
        // else in the directory.
        let set_aside: u64 = kept[0]
            .file_name()
            .to_string_lossy()
            .strip_prefix(UNRECOVERED_PREFIX)
            .and_then(|ms| ms.parse().ok())
            .expect("named with its time");
        let newer = dir
            .path()
            .join(format!("{UNRECOVERED_PREFIX}{}", set_aside + 10));
        std::fs::write(&newer, b"ring").expect("write");
        let other = dir.path().join(format!("{UNRECOVERED_PREFIX}notatime"));
        std::fs::write(&other, b"ring").expect("write");
        assert_eq!(prune_unrecovered(dir.path(), set_aside), 0);
        assert_eq!(prune_unrecovered(dir.path(), set_aside + 1), 1);
        assert!(!kept[0].path().exists());
        assert!(newer.exists() && other.exists());
        assert!(segment_path(dir.path(), 2).exists());
    }
}
