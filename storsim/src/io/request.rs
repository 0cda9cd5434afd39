//! An overlapped request as its sender sees it: pending until the IRP completes.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::machine::spin_until;

/// What the sender learns when its IRP completes (the IOSB plus the copied-back output).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// `IoStatus.Status` (raw NTSTATUS, as in `OVERLAPPED.Internal`).
    pub status: u32,
    /// `IoStatus.Information` (bytes returned, as in `OVERLAPPED.InternalHigh`).
    pub information: usize,
    /// The bytes copied back to the caller's output buffer.
    pub output: Vec<u8>,
}

/// The sender's side of one IRP (an OVERLAPPED with its event).
pub struct Request {
    pub id: u64,
    outcome: Mutex<Option<Outcome>>,
    done: Condvar,
    /// Times the I/O manager finished this request: exactly 1 once it completed.
    completions: AtomicU32,
    /// Threads asleep in [`Request::wait`]: `finish` notifies only if there are any (a
    /// notify is a syscall even with nobody to wake, and most waiters are still spinning).
    sleepers: AtomicU32,
}

impl Request {
    pub(super) fn new(id: u64) -> Arc<Self> {
        Arc::new(Self {
            id,
            outcome: Mutex::new(None),
            done: Condvar::new(),
            completions: AtomicU32::new(0),
            sleepers: AtomicU32::new(0),
        })
    }

    pub(super) fn finish(&self, outcome: Outcome) {
        let sleepers = {
            let mut slot = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
            *slot = Some(outcome);
            self.completions.fetch_add(1, Ordering::AcqRel);
            // Read under the lock: a waiter counts itself under it before it sleeps.
            self.sleepers.load(Ordering::Relaxed)
        };
        if sleepers > 0 {
            self.done.notify_all();
        }
    }

    /// How many times the request was finished (a client's exactly-once check).
    pub fn completions(&self) -> u32 {
        self.completions.load(Ordering::Acquire)
    }

    /// The outcome if the IRP has completed.
    pub fn outcome(&self) -> Option<Outcome> {
        self.outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// GetOverlappedResult with a time limit: `None` if still pending after `limit`.
    pub fn wait(&self, limit: Duration) -> Option<Outcome> {
        spin_until(|| self.completions.load(Ordering::Acquire) > 0);
        let guard = self.outcome.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_some() {
            return guard.clone();
        }
        self.sleepers.fetch_add(1, Ordering::Relaxed);
        let (guard, _) = self
            .done
            .wait_timeout_while(guard, limit, |outcome| outcome.is_none())
            .unwrap_or_else(|p| p.into_inner());
        self.sleepers.fetch_sub(1, Ordering::Relaxed);
        guard.clone()
    }
}
