//! The adapter's spin lock: an in-stack queued spin lock around the channel state.

use core::cell::UnsafeCell;

use crate::adapter::Lock;
use nt_imports::ntoskrnl::{KeAcquireInStackQueuedSpinLock, KeReleaseInStackQueuedSpinLock};
use storport_abi::{KLOCK_QUEUE_HANDLE, KSPIN_LOCK};

/// A `KSPIN_LOCK` and the data it guards.
///
/// # Invariants
///
/// `data` is only reached inside [`Lock::with`], while the lock is held. All-zero bytes are a
/// free lock (a `KSPIN_LOCK` is free at 0), so a zeroed device extension holds a valid one.
pub struct SpinLock<T> {
    lock: UnsafeCell<KSPIN_LOCK>,
    data: UnsafeCell<T>,
}

// SAFETY: the data is only reached under the lock (invariant), from one CPU at a time.
unsafe impl<T: Send> Sync for SpinLock<T> {}

impl<T: Send> Lock<T> for SpinLock<T> {
    /// Raises to DISPATCH_LEVEL for the duration of `f`: callers run at ≤ DISPATCH_LEVEL.
    fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        // The queued lock links this handle into the lock's queue: it must not move until
        // the release, which keeping it in this frame guarantees.
        let mut handle = KLOCK_QUEUE_HANDLE::new();
        // SAFETY: `self.lock` is a valid KSPIN_LOCK for the life of `self`; `handle` outlives
        // the hold. The adapter never nests `with`, so this CPU does not hold it already.
        unsafe { KeAcquireInStackQueuedSpinLock(self.lock.get(), &mut handle) };
        // SAFETY: the lock is held, so this is the only reference to the data (invariant).
        let result = f(unsafe { &mut *self.data.get() });
        // SAFETY: releases the acquisition made above with the same handle.
        unsafe { KeReleaseInStackQueuedSpinLock(&mut handle) };
        result
    }
}
