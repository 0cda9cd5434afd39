//! Checkpoints: every CPU stopped between two operations at once, so that the driver's STATS
//! counters can be compared exactly with what the clients saw. The main thread asks; each CPU
//! stops at its next operation boundary (or, done with its share, wherever it idles); once all
//! have stopped and the adapter's own work (timer, DPCs) has drained, each settles what
//! completed; the main thread compares; all go on.

use std::sync::{Condvar, Mutex, MutexGuard};

#[derive(Default)]
struct State {
    /// Checkpoints asked for so far; a CPU that has served fewer must stop.
    asked: u64,
    stopped: usize,
    /// The main thread's go-ahead to settle, for checkpoint `asked`.
    settle: bool,
    settled: usize,
    /// Checkpoints finished (the CPUs may go on).
    done: u64,
    /// The run is over: idle CPUs return.
    ended: bool,
}

pub struct Checkpoints {
    cpus: usize,
    state: Mutex<State>,
    changed: Condvar,
}

impl Checkpoints {
    pub fn new(cpus: usize) -> Self {
        Self {
            cpus,
            state: Mutex::default(),
            changed: Condvar::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait_until<'a>(
        &'a self,
        state: MutexGuard<'a, State>,
        ready: impl Fn(&State) -> bool,
    ) -> MutexGuard<'a, State> {
        self.changed
            .wait_while(state, |s| !ready(s))
            .unwrap_or_else(|p| p.into_inner())
    }

    /// A CPU between two operations: if a checkpoint is asked for, stop, `settle` when told,
    /// and return once it is over. `served` is the CPU's count of checkpoints served.
    pub fn boundary(&self, served: &mut u64, settle: impl FnOnce()) {
        let state = self.state();
        if state.asked > *served {
            self.serve(state, served, settle);
        }
    }

    fn serve(&self, mut state: MutexGuard<'_, State>, served: &mut u64, settle: impl FnOnce()) {
        *served = state.asked;
        state.stopped += 1;
        self.changed.notify_all();
        drop(self.wait_until(state, |s| s.settle));
        // A panic while settling (a storsim bug) must not leave the main thread waiting.
        let settled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(settle));
        let mut state = self.state();
        state.settled += 1;
        self.changed.notify_all();
        let checkpoint = *served;
        drop(self.wait_until(state, |s| s.done >= checkpoint));
        if let Err(panic) = settled {
            std::panic::resume_unwind(panic);
        }
    }

    /// A CPU done with its share: serves checkpoints until the run ends.
    pub fn idle(&self, served: &mut u64, mut settle: impl FnMut()) {
        loop {
            let state = self.wait_until(self.state(), |s| s.ended || s.asked > *served);
            if state.asked > *served {
                self.serve(state, served, &mut settle);
            } else {
                return;
            }
        }
    }

    /// The main thread's checkpoint: stops every CPU, runs `drain` (the adapter's own work
    /// finishes), lets each settle, then runs `compare` and lets them go on.
    pub fn take(&self, drain: impl FnOnce(), compare: impl FnOnce()) {
        let mut state = self.state();
        state.asked += 1;
        state.stopped = 0;
        state.settled = 0;
        state.settle = false;
        self.changed.notify_all();
        let state = self.wait_until(state, |s| s.stopped == self.cpus);
        drop(state);
        drain();
        let mut state = self.state();
        state.settle = true;
        self.changed.notify_all();
        drop(self.wait_until(state, |s| s.settled == self.cpus));
        compare();
        let mut state = self.state();
        state.done = state.asked;
        self.changed.notify_all();
    }

    /// The run is over: idle CPUs return from [`Checkpoints::idle`].
    pub fn end(&self) {
        self.state().ended = true;
        self.changed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// Two CPUs, one working and one idle: both stop and settle at each checkpoint, and
    /// neither works while a checkpoint compares.
    #[test]
    fn every_cpu_stops_and_settles_before_the_compare() {
        let checkpoints = Checkpoints::new(2);
        let work = AtomicU64::new(0);
        let settled = AtomicU64::new(0);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let mut served = 0;
                for _ in 0..10_000 {
                    checkpoints.boundary(&mut served, || {
                        settled.fetch_add(1, Ordering::SeqCst);
                    });
                    work.fetch_add(1, Ordering::SeqCst);
                }
                checkpoints.idle(&mut served, || {
                    settled.fetch_add(1, Ordering::SeqCst);
                });
            });
            scope.spawn(|| {
                let mut served = 0;
                checkpoints.idle(&mut served, || {
                    settled.fetch_add(1, Ordering::SeqCst);
                });
            });
            for round in 1..=5u64 {
                let before = AtomicU64::new(0);
                checkpoints.take(
                    || before.store(work.load(Ordering::SeqCst), Ordering::SeqCst),
                    || {
                        assert_eq!(settled.load(Ordering::SeqCst), 2 * round);
                        assert_eq!(
                            work.load(Ordering::SeqCst),
                            before.load(Ordering::SeqCst),
                            "work while stopped"
                        );
                    },
                );
            }
            checkpoints.end();
        });
    }
}
