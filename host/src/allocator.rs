//! The memory allocator Loom's binaries use: mimalloc, tuned for a host
//! that creates and drops many short-lived sandboxes.
//!
//! Each sandboxed call allocates a few hundred kilobytes of host-side state
//! (the store, instance contexts, the WASI context) and frees it a moment
//! later. With glibc's allocator the two worker threads contend on arena
//! locks; with mimalloc's default 10 ms purge delay, freed pages go back to
//! the kernel and come back zero-filled on the next call. Purging after one
//! second instead keeps that churn in memory: on the multi-tenant bench this
//! is worth about 20 % of throughput for no change in peak RSS.
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

/// The global allocator type (mimalloc).
pub use mimalloc::MiMalloc as Allocator;

/// mimalloc's `mi_option_purge_delay` (the same index in its v2 and v3
/// headers).
const PURGE_DELAY_OPTION: libmimalloc_sys::mi_option_t = 15;

/// How long freed memory stays committed before mimalloc returns it to the
/// kernel, in milliseconds.
pub const PURGE_DELAY_MS: i64 = 1000;

/// Apply Loom's mimalloc settings. Call once, first thing in `main`; an
/// explicit `MIMALLOC_PURGE_DELAY` in the environment still wins.
pub fn tune() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: `mi_option_set` only stores an integer in mimalloc's option
    // table; any option index and value are accepted.
    unsafe {
        libmimalloc_sys::mi_option_set(PURGE_DELAY_OPTION, PURGE_DELAY_MS as _);
    }
}
