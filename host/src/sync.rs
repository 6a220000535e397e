//! Locks that outlive a panic.
//!
//! A `std` lock is poisoned when a thread panics while holding it, and
//! every later `lock` returns an error. What the host keeps behind its
//! locks (counters, caches, queues, buffers, maps of ids, file handles, a
//! random generator) is changed a step at a time, none of which leaves it
//! in a state a later reader cannot use, and a panic in one run must not
//! stop every other tenant's runs from taking the same lock, nor make
//! them drop what they record there (usage, refusals, captured output).
//! So the host takes its locks through these helpers, which hand back the
//! guard whether or not the lock was poisoned.

use std::sync::{Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

/// Lock `mutex`, poisoned or not.
pub(crate) fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The value inside `mutex`, borrowed mutably (no other handle exists),
/// poisoned or not.
pub(crate) fn get_mut<T: ?Sized>(mutex: &mut Mutex<T>) -> &mut T {
    mutex
        .get_mut()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Lock `lock` for reading, poisoned or not.
pub(crate) fn read<T: ?Sized>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Lock `lock` for writing, poisoned or not.
pub(crate) fn write<T: ?Sized>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Wait on `condvar` with `guard`, poisoned or not.
pub(crate) fn wait<'a, T>(condvar: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    condvar
        .wait(guard)
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Wait on `condvar` with `guard` for at most `timeout`, poisoned or not.
pub(crate) fn wait_timeout<'a, T>(
    condvar: &Condvar,
    guard: MutexGuard<'a, T>,
    timeout: Duration,
) -> MutexGuard<'a, T> {
    condvar
        .wait_timeout(guard, timeout)
        .map_or_else(|poisoned| poisoned.into_inner().0, |(guard, _)| guard)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_lock_poisoned_by_a_panic_is_still_taken() {
        let mutex = Arc::new(Mutex::new(1));
        let rw = Arc::new(RwLock::new(1));
        let (m, r) = (mutex.clone(), rw.clone());
        let panicked = std::thread::spawn(move || {
            let _m = m.lock().unwrap();
            let _r = r.write().unwrap();
            panic!("a panic while holding both locks");
        })
        .join();
        assert!(panicked.is_err());
        assert!(mutex.is_poisoned() && rw.is_poisoned());
        *lock(&mutex) += 1;
        assert_eq!(*lock(&mutex), 2);
        *write(&rw) += 1;
        assert_eq!(*read(&rw), 2);
        let mut owned = Arc::try_unwrap(mutex).unwrap();
        *get_mut(&mut owned) += 1;
        assert_eq!(*lock(&owned), 3);
        let condvar = Condvar::new();
        let guard = wait_timeout(&condvar, lock(&owned), Duration::from_millis(1));
        assert_eq!(*guard, 3);
    }
}
