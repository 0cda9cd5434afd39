//! The adapter's remove rundown (EX_RUNDOWN_REF): every in-flight device-control IRP holds
//! one reference; removal closes it and waits for the count to drain.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct State {
    count: u64,
    closed: bool,
}

#[derive(Default)]
pub struct Rundown {
    state: Mutex<State>,
    drained: Condvar,
}

impl Rundown {
    /// ExAcquireRundownProtection: fails once removal has started.
    pub fn acquire(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.closed {
            return false;
        }
        state.count += 1;
        true
    }

    /// ExReleaseRundownProtection.
    pub fn release(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.count = state.count.saturating_sub(1);
        // Only a closed rundown has a waiter (it closes before it waits, under this lock): a
        // notify costs a syscall even with nobody waiting, once per IRP for a driver that
        // completes each at once.
        if state.count == 0 && state.closed {
            self.drained.notify_all();
        }
    }

    /// References held now.
    pub fn held(&self) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).count
    }

    /// ExWaitForRundownProtectionRelease with a limit: closes the rundown (new acquisitions
    /// fail) and waits for the count to reach zero. `Err(held)` if it did not within `limit`.
    pub fn close_and_wait(&self, limit: Duration) -> Result<Duration, u64> {
        let start = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.closed = true;
        let (state, _) = self
            .drained
            .wait_timeout_while(state, limit, |state| state.count > 0)
            .unwrap_or_else(|p| p.into_inner());
        if state.count > 0 {
            Err(state.count)
        } else {
            Ok(start.elapsed())
        }
    }

    /// A fresh start (after a completed removal storsim re-adds the device).
    pub fn reopen(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.closed = false;
    }
}
