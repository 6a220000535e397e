//! The memory allocator Loom's binaries use: mimalloc, tuned for a host
//! that creates and drops many short-lived sandboxes, and counting what each
//! thread allocates so the engine can charge host memory to the call that
//! caused it.
//!
//! Each sandboxed call allocates a few hundred kilobytes of host-side state
//! (the store, instance contexts, the WASI context) and frees it a moment
//! later. With glibc's allocator the two worker threads contend on arena
//! locks; with mimalloc's default 10 ms purge delay, freed pages go back to
//! the kernel and come back zero-filled on the next call. Purging after one
//! second instead keeps that churn in memory: on the multi-tenant bench this
//! is worth about 20 % of throughput for no change in peak RSS.
//!
//! A purge still hands whole free ranges back at once, recently freed ones
//! included, and mimalloc's default purge *decommits* them
//! (`MADV_DONTNEED`): the next allocation there takes a page fault that
//! zeroes a whole 2 MiB transparent huge page. On the governed bench that
//! was about 5 % of all CPU (the store's writer thread and both workers
//! refaulting freed arenas). Loom makes a purge *reset* the range instead
//! (`MADV_FREE`): the kernel takes those pages back when it needs memory,
//! and until then reusing them costs nothing. Same peak RSS; about 20 µs
//! less CPU per governed turn.
//!
//! [`Allocator`] also keeps, per thread, the net number of bytes allocated
//! minus freed ([`thread_net_bytes`]). The engine reads it before and after
//! every poll of a sandboxed call, so host memory a guest makes the host hold
//! (HTTP fields, buffers, resource-table entries) counts against that call's
//! memory budget. Without this allocator the counter stays at zero and only
//! the engine's fixed caps bound host memory.
//!
//! A binary opts in with
//!
//! ```ignore
//! #[global_allocator]
//! static ALLOCATOR: loom_host::allocator::Allocator = loom_host::allocator::Allocator;
//!
//! fn main() {
//!     loom_host::allocator::tune();
//! }
//! ```

#![allow(
    unsafe_code,
    reason = "a global allocator is an unsafe trait; each call forwards to mimalloc"
)]

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;

/// mimalloc's `mi_option_purge_delay` (the same index in its v2 and v3
/// headers).
const PURGE_DELAY_OPTION: libmimalloc_sys::mi_option_t = 15;

/// How long freed memory stays committed before mimalloc returns it to the
/// kernel, in milliseconds.
pub const PURGE_DELAY_MS: i64 = 1000;

/// mimalloc's `mi_option_purge_decommits` (the same index in its v2 and v3
/// headers): 1 decommits purged memory, 0 resets it (`MADV_FREE`).
const PURGE_DECOMMITS_OPTION: libmimalloc_sys::mi_option_t = 5;

thread_local! {
    /// Bytes allocated minus bytes freed on this thread, since it started.
    static NET_BYTES: Cell<i64> = const { Cell::new(0) };
}

/// Whether [`Allocator`] is the global allocator, probed once.
static ACTIVE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// The global allocator: mimalloc, with per-thread byte counting.
#[derive(Debug, Default, Clone, Copy)]
pub struct Allocator;

#[inline]
fn count(delta: i64) {
    // `const` initialised and without a destructor: always accessible, even
    // while the thread is being torn down, and never allocates.
    NET_BYTES.with(|net| net.set(net.get().wrapping_add(delta)));
}

// SAFETY: every method forwards to mimalloc with the caller's arguments;
// the counting only touches a thread-local integer.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        let ptr = unsafe { mimalloc::MiMalloc.alloc(layout) };
        if !ptr.is_null() {
            count(layout.size() as i64);
        }
        ptr
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        let ptr = unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) };
        if !ptr.is_null() {
            count(layout.size() as i64);
        }
        ptr
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) };
        count(-(layout.size() as i64));
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged.
        let new = unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            count(new_size as i64 - layout.size() as i64);
        }
        new
    }
}

/// Bytes allocated minus bytes freed by the current thread so far. Only
/// differences between two readings on the same thread mean anything.
pub fn thread_net_bytes() -> i64 {
    NET_BYTES.with(Cell::get)
}

/// Whether [`Allocator`] is the global allocator of this process, so
/// [`thread_net_bytes`] counts: an allocation made now must show in it.
pub fn is_active() -> bool {
    *ACTIVE.get_or_init(|| {
        let before = thread_net_bytes();
        let probe = std::hint::black_box(vec![0u8; 4096]);
        let counted = thread_net_bytes().wrapping_sub(before) >= 4096;
        drop(probe);
        counted
    })
}

/// Apply Loom's mimalloc settings: purge freed memory after
/// [`PURGE_DELAY_MS`], and purge by resetting (`MADV_FREE`) rather than
/// decommitting. Call once, first thing in `main`, before other threads
/// start; an explicit `MIMALLOC_PURGE_DELAY` or `MIMALLOC_PURGE_DECOMMITS`
/// in the environment still wins.
pub fn tune() {
    for (variable, option, value) in [
        ("MIMALLOC_PURGE_DELAY", PURGE_DELAY_OPTION, PURGE_DELAY_MS),
        ("MIMALLOC_PURGE_DECOMMITS", PURGE_DECOMMITS_OPTION, 0),
    ] {
        if std::env::var_os(variable).is_none() {
            // SAFETY: `mi_option_set` only stores an integer in mimalloc's
            // option table; any option index and value are accepted.
            unsafe {
                libmimalloc_sys::mi_option_set(option, value as _);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tune_sets_the_purge_delay_and_purges_by_reset() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some()
            || std::env::var_os("MIMALLOC_PURGE_DECOMMITS").is_some()
        {
            return;
        }
        tune();
        // SAFETY: reading an option only reads mimalloc's option table.
        let (delay, decommits) = unsafe {
            (
                libmimalloc_sys::mi_option_get(PURGE_DELAY_OPTION),
                libmimalloc_sys::mi_option_get(PURGE_DECOMMITS_OPTION),
            )
        };
        assert_eq!(delay, PURGE_DELAY_MS as std::ffi::c_long);
        assert_eq!(decommits, 0, "a purge must reset (MADV_FREE), not decommit");
    }
}
