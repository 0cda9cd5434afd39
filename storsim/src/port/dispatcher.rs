//! Storport's timer (StorPortNotification RequestTimerCall) and the miniport's DPCs
//! (InitializeDpc / IssueDpc), run on an emulated CPU of their own at DISPATCH_LEVEL.
//!
//! HwTimer runs holding the StartIo lock, as RaidpAdapterTimerDpcRoutine does; DPC routines
//! run with no Storport lock. A timer request replaces the previous one; 0 cancels it.
//! Timers from StorPortInitializeTimer work alike, each with its own pending request; their
//! HwStorTimerEx runs under the StartIo lock too (the strict reading: nothing documents it
//! either way).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::Port;
use crate::cpu::{self, DISPATCH_LEVEL};
use crate::miniport::{DpcRoutine, Timer, TimerEx};
use crate::verifier::locks::{LockApi, STARTIO_LOCK};

#[derive(Default)]
struct State {
    timer: Option<(Instant, Timer)>,
    /// StorPortInitializeTimer's timers by handle, each with its pending request.
    timers_ex: HashMap<usize, Option<(Instant, TimerEx)>>,
    dpcs: VecDeque<(usize, usize, usize)>,
    queued: HashSet<usize>,
    routines: HashMap<usize, DpcRoutine>,
    running: bool,
    /// The adapter is gone: queued work waits for unload (and is reported there) instead of
    /// running against freed state.
    held: bool,
    stop: bool,
}

#[derive(Default)]
pub struct Dispatcher {
    state: Mutex<State>,
    wake: Condvar,
    idle: Condvar,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Dispatcher {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ensure_thread(&self, port: &Arc<Port>) {
        let mut thread = self.thread.lock().unwrap_or_else(|p| p.into_inner());
        // Once stopped, the DPC CPU stays down: work queued later (a DPC re-issuing itself
        // while the driver unloads) waits for the unload check instead of reviving it.
        if thread.is_none() && !self.state().stop {
            let weak = Arc::downgrade(port);
            *thread = Some(
                std::thread::Builder::new()
                    .name("storsim-dpc".into())
                    .stack_size(8 << 20)
                    .spawn(move || run(weak))
                    .expect("spawning the DPC CPU"),
            );
        }
    }

    /// RequestTimerCall: `micros` = 0 cancels.
    pub fn request_timer(&self, port: &Arc<Port>, routine: Option<Timer>, micros: u64) {
        self.ensure_thread(port);
        let mut state = self.state();
        state.timer = match (routine, micros) {
            (Some(routine), 1..) => Some((Instant::now() + Duration::from_micros(micros), routine)),
            _ => None,
        };
        self.wake.notify_all();
    }

    pub fn cancel_timer(&self) {
        self.state().timer = None;
    }

    /// StorPortInitializeTimer: a new timer with this handle.
    pub fn init_timer(&self, handle: usize) {
        self.state().timers_ex.insert(handle, None);
    }

    /// StorPortRequestTimer: `false` if `handle` is no timer (never initialized, or freed).
    pub fn request_timer_ex(
        &self,
        port: &Arc<Port>,
        handle: usize,
        timer: TimerEx,
        micros: u64,
    ) -> bool {
        self.ensure_thread(port);
        let mut state = self.state();
        let Some(pending) = state.timers_ex.get_mut(&handle) else {
            return false;
        };
        *pending = Some((Instant::now() + Duration::from_micros(micros), timer));
        self.wake.notify_all();
        true
    }

    /// The timers StorPortInitializeTimer made and StorPortFreeTimer has not freed.
    pub fn timers(&self) -> Vec<usize> {
        self.state().timers_ex.keys().copied().collect()
    }

    /// The StorPortInitializeTimer timers armed now (requested and not yet fired).
    pub fn timers_armed(&self) -> usize {
        self.state()
            .timers_ex
            .values()
            .filter(|t| t.is_some())
            .count()
    }

    /// StorPortFreeTimer: cancels and forgets the timer; `false` if it was none.
    pub fn free_timer(&self, handle: usize) -> bool {
        self.state().timers_ex.remove(&handle).is_some()
    }

    /// InitializeDpc.
    /// `false` (and nothing changes) if the DPC is queued: KeInitializeDpc on a queued DPC
    /// would unlink the kernel's DPC queue.
    pub fn init_dpc(&self, dpc: usize, routine: DpcRoutine) -> bool {
        let mut state = self.state();
        if state.queued.contains(&dpc) {
            return false;
        }
        state.routines.insert(dpc, routine);
        true
    }

    /// IssueDpc: `false` if the DPC was already queued (or never initialized).
    pub fn issue_dpc(&self, port: &Arc<Port>, dpc: usize, arg1: usize, arg2: usize) -> bool {
        self.ensure_thread(port);
        let mut state = self.state();
        if !state.routines.contains_key(&dpc) || !state.queued.insert(dpc) {
            return false;
        }
        state.dpcs.push_back((dpc, arg1, arg2));
        self.wake.notify_all();
        true
    }

    /// Waits until no DPC is queued or running (removal flushes DPCs before freeing);
    /// `false` if that did not happen within `limit` (a DPC that keeps re-queuing itself).
    pub fn drain(&self, limit: Duration) -> bool {
        let state = self.state();
        let (_state, timeout) = self
            .idle
            .wait_timeout_while(state, limit, |s| !s.dpcs.is_empty() || s.running)
            .unwrap_or_else(|p| p.into_inner());
        !timeout.timed_out()
    }

    /// A timer or DPC still queued.
    pub fn pending(&self) -> bool {
        let state = self.state();
        state.timer.is_some()
            || !state.dpcs.is_empty()
            || state.timers_ex.values().any(Option::is_some)
    }

    /// From now on nothing queued runs (the adapter's resources are being freed).
    pub fn hold(&self) {
        self.state().held = true;
    }

    /// Lets queued work run again (a new adapter was added after a removal).
    pub fn release(&self) {
        self.state().held = false;
        self.wake.notify_all();
    }

    /// Drops every queued DPC and the timer (the driver is going away).
    pub fn discard(&self) {
        let mut state = self.state();
        state.timer = None;
        state.timers_ex.clear();
        state.dpcs.clear();
        state.queued.clear();
    }

    /// Stops the DPC CPU after it has run what is queued.
    pub fn stop(&self) {
        self.state().stop = true;
        self.wake.notify_all();
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

enum Work {
    Dpc(usize, DpcRoutine, usize, usize),
    Timer(Timer),
    TimerEx(TimerEx),
}

impl State {
    /// The timer request due first: RequestTimerCall's (`None` handle) or a timer's.
    fn next_due(&self) -> Option<(Instant, Option<usize>)> {
        let call = self.timer.map(|(due, _)| (due, None));
        let timers = self
            .timers_ex
            .iter()
            .filter_map(|(&handle, pending)| pending.map(|(due, _)| (due, Some(handle))));
        call.into_iter().chain(timers).min_by_key(|&(due, _)| due)
    }
}

fn run(port: Weak<Port>) {
    cpu::enter_thread();
    loop {
        let Some(port) = port.upgrade() else {
            return;
        };
        let dispatcher = &port.dispatcher;
        let work = {
            let mut state = dispatcher.state();
            loop {
                if state.held {
                    if state.stop {
                        break None;
                    }
                    state = dispatcher
                        .wake
                        .wait_timeout(state, Duration::from_millis(50))
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                    continue;
                }
                if let Some((dpc, arg1, arg2)) = state.dpcs.pop_front() {
                    state.queued.remove(&dpc);
                    let routine = state.routines[&dpc];
                    state.running = true;
                    break Some(Work::Dpc(dpc, routine, arg1, arg2));
                }
                let now = Instant::now();
                match state.next_due() {
                    Some((due, handle)) if due <= now => {
                        let work = match handle {
                            None => state.timer.take().map(|(_, routine)| Work::Timer(routine)),
                            Some(handle) => state
                                .timers_ex
                                .get_mut(&handle)
                                .and_then(Option::take)
                                .map(|(_, timer)| Work::TimerEx(timer)),
                        };
                        state.running = true;
                        break work;
                    }
                    _ if state.stop => break None,
                    Some((due, _)) => {
                        state = dispatcher
                            .wake
                            .wait_timeout(state, due - now)
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                    }
                    None => {
                        state = dispatcher
                            .wake
                            .wait_timeout(state, Duration::from_millis(50))
                            .unwrap_or_else(|p| p.into_inner())
                            .0;
                    }
                }
            }
        };
        let Some(work) = work else {
            return;
        };
        // Queued work runs only while an adapter exists (`hold` stops it at removal).
        if let Some(extension) = port.extension() {
            let machine = &port.machine;
            match work {
                Work::Dpc(dpc, routine, arg1, arg2) => {
                    port.counters.dpcs.fetch_add(1, Ordering::Relaxed);
                    machine.call_driver("HwDpcRoutine", DISPATCH_LEVEL, || {
                        routine.call(dpc, extension, arg1, arg2)
                    });
                }
                Work::Timer(routine) => {
                    port.counters.timer_calls.fetch_add(1, Ordering::Relaxed);
                    under_startio_lock(machine, || {
                        machine.call_driver("HwTimer", DISPATCH_LEVEL, || routine.call(extension));
                    });
                }
                Work::TimerEx(timer) => {
                    port.counters.timer_calls.fetch_add(1, Ordering::Relaxed);
                    under_startio_lock(machine, || {
                        machine.call_driver("HwStorTimerEx", DISPATCH_LEVEL, || {
                            timer.call(extension);
                        });
                    });
                }
            }
        }
        let mut state = dispatcher.state();
        state.running = false;
        dispatcher.idle.notify_all();
    }
}

fn under_startio_lock(machine: &crate::machine::Machine, f: impl FnOnce()) {
    let old =
        machine.acquire_kernel_lock(STARTIO_LOCK, LockApi::Storport, "Storport's StartIo lock");
    f();
    machine.release_kernel_lock(STARTIO_LOCK, "Storport's StartIo lock", old);
}
