//! The adapter's timers and DPCs, run on a system thread of its own: Wine 8's
//! KeInsertQueueDpc never runs a DPC, and a port driver must not run a miniport's timer or DPC
//! on the thread that requested it (storsim's rule; Storport queues both).
//!
//! * RequestTimerCall: one pending HwTimer call per adapter; a new request replaces it, 0
//!   cancels it.
//! * Extended timers (StorPortInitializeTimer / RequestTimer / FreeTimer): up to
//!   [`TIMERS`] per adapter, each one pending callback at most.
//! * DPCs: StorPortInitializeDpc records the routine in the STOR_DPC (the port driver's
//!   storage); IssueDpc queues it unless it is queued already, and the thread runs it once.
//!
//! One spin lock guards all of it; callbacks run with it released.

use core::cell::UnsafeCell;
use core::ffi::c_void;
use core::ops::{Deref, DerefMut};
use core::ptr::null_mut;
use core::sync::atomic::{AtomicPtr, Ordering};

use storport_abi::{HW_DPC_ROUTINE, HW_TIMER, HW_TIMER_EX, KSPIN_LOCK, STOR_DPC};

use crate::adapter::now_ms;
use crate::nt::{self, KEVENT};

/// Extended timers per adapter (revcall uses one).
pub const TIMERS: usize = 4;
/// DPCs per adapter (revcall uses one).
const DPCS: usize = 4;

#[derive(Clone, Copy)]
struct TimerCall {
    routine: HW_TIMER,
    due_ms: u64,
}

#[derive(Clone, Copy)]
struct ExTimer {
    allocated: bool,
    pending: Option<(HW_TIMER_EX, *mut c_void, u64)>,
}

#[derive(Clone, Copy)]
struct Dpc {
    dpc: *mut STOR_DPC,
    routine: HW_DPC_ROUTINE,
    queued: Option<(*mut c_void, *mut c_void)>,
}

struct Work {
    timer_call: Option<TimerCall>,
    timers: [ExTimer; TIMERS],
    dpcs: [Option<Dpc>; DPCS],
    stopping: bool,
}

/// What the thread does next.
enum Due {
    Timer(HW_TIMER),
    TimerEx(HW_TIMER_EX, *mut c_void),
    Dpc(HW_DPC_ROUTINE, *mut STOR_DPC, *mut c_void, *mut c_void),
    /// Nothing due: sleep until this many ms from now (or a wake-up).
    Wait(u64),
    Stop,
}

/// Shared by the thread that runs the work and every thread that requests it: the lists
/// behind the spin lock, the rest atomic or written only while the thread is not running.
pub struct Worker {
    lock: UnsafeCell<KSPIN_LOCK>,
    work: UnsafeCell<Work>,
    wake: UnsafeCell<KEVENT>,
    thread: AtomicPtr<c_void>,
    extension: AtomicPtr<c_void>,
}

// SAFETY: `work` is reached only through `Locked` (the spin lock); `wake` only through the
// Ke event routines, which synchronize themselves; the rest is atomic.
unsafe impl Sync for Worker {}

/// The work lists, with the spin lock held.
struct Locked<'a> {
    worker: &'a Worker,
    irql: u8,
}

impl Deref for Locked<'_> {
    type Target = Work;
    fn deref(&self) -> &Work {
        // SAFETY: the lock is held while this guard lives.
        unsafe { &*self.worker.work.get() }
    }
}

impl DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Work {
        // SAFETY: the lock is held while this guard lives, and the guard is the only way in.
        unsafe { &mut *self.worker.work.get() }
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        // SAFETY: the lock this guard acquired, at the IRQL it returned.
        unsafe { nt_imports::ntoskrnl::KeReleaseSpinLock(self.worker.lock.get(), self.irql) };
    }
}

impl Worker {
    pub const fn new() -> Self {
        Self {
            lock: UnsafeCell::new(0),
            work: UnsafeCell::new(Work {
                timer_call: None,
                timers: [ExTimer {
                    allocated: false,
                    pending: None,
                }; TIMERS],
                dpcs: [None; DPCS],
                stopping: false,
            }),
            wake: UnsafeCell::new(KEVENT::new()),
            thread: AtomicPtr::new(null_mut()),
            extension: AtomicPtr::new(null_mut()),
        }
    }

    fn locked(&self) -> Locked<'_> {
        // SAFETY: the worker's own spin lock (a zeroed KSPIN_LOCK is a free one).
        let irql = unsafe { nt_imports::ntoskrnl::KeAcquireSpinLockRaiseToDpc(self.lock.get()) };
        Locked { worker: self, irql }
    }

    fn wake(&self) {
        if !self.thread.load(Ordering::Acquire).is_null() {
            // SAFETY: the worker's event, initialized in `start` before the thread existed.
            unsafe { nt::KeSetEvent(self.wake.get(), 0, 0) };
        }
    }

    /// Starts the thread (once per start of the adapter). PnP calls only: never concurrent
    /// with itself or `stop`.
    pub fn start(&self, extension: *mut c_void) {
        if !self.thread.load(Ordering::Acquire).is_null() {
            return;
        }
        self.extension.store(extension, Ordering::Release);
        self.locked().stopping = false;
        // SAFETY: the worker's own event, initialized while no thread can wait on it.
        unsafe { nt::KeInitializeEvent(self.wake.get(), nt::SYNCHRONIZATION_EVENT, 0) };
        // SAFETY: `run` on this worker, which lives in the FDO's extension until `stop` has
        // joined the thread.
        match unsafe { nt::spawn_thread(run, core::ptr::from_ref(self).cast_mut().cast()) } {
            Ok(thread) => self.thread.store(thread, Ordering::Release),
            Err(status) => log!(
                "PsCreateSystemThread failed: %#x: no timers or DPCs",
                status
            ),
        }
    }

    /// Stops the thread and waits for it to end; pending timers and DPCs are dropped. PnP
    /// calls only, never from the thread itself.
    pub fn stop(&self) {
        let thread = self.thread.load(Ordering::Acquire);
        if thread.is_null() {
            return;
        }
        self.locked().stopping = true;
        self.wake();
        // SAFETY: the thread `start` spawned, joined once (PnP path), from another thread.
        unsafe { nt::join_thread(thread) };
        self.thread.store(null_mut(), Ordering::Release);
    }

    pub fn request_timer_call(&self, routine: Option<HW_TIMER>, delay_us: u32) {
        let call = routine.filter(|_| delay_us != 0).map(|routine| TimerCall {
            routine,
            due_ms: now_ms() + u64::from(delay_us).div_ceil(1000),
        });
        self.locked().timer_call = call;
        self.wake();
    }

    /// A free extended timer's handle (its index + 1), or None.
    pub fn initialize_timer(&self) -> Option<usize> {
        let mut locked = self.locked();
        let slot = locked.timers.iter().position(|t| !t.allocated)?;
        locked.timers[slot] = ExTimer {
            allocated: true,
            pending: None,
        };
        Some(slot + 1)
    }

    /// Arms timer `handle`; false if it is no allocated timer.
    pub fn request_timer(
        &self,
        handle: usize,
        callback: HW_TIMER_EX,
        context: *mut c_void,
        delay_us: u64,
    ) -> bool {
        let due = now_ms() + delay_us.div_ceil(1000);
        {
            let mut locked = self.locked();
            let Some(timer) = handle
                .checked_sub(1)
                .and_then(|i| locked.timers.get_mut(i))
                .filter(|t| t.allocated)
            else {
                return false;
            };
            timer.pending = Some((callback, context, due));
        }
        self.wake();
        true
    }

    /// Frees timer `handle`, cancelling it; false if it is no allocated timer.
    pub fn free_timer(&self, handle: usize) -> bool {
        let mut locked = self.locked();
        match handle
            .checked_sub(1)
            .and_then(|i| locked.timers.get_mut(i))
            .filter(|t| t.allocated)
        {
            Some(timer) => {
                timer.allocated = false;
                timer.pending = None;
                true
            }
            None => false,
        }
    }

    pub fn initialize_dpc(&self, dpc: *mut STOR_DPC, routine: HW_DPC_ROUTINE) {
        let mut locked = self.locked();
        let dpcs = &mut locked.dpcs;
        let slot = dpcs
            .iter()
            .position(|d| d.is_some_and(|d| d.dpc == dpc))
            .or_else(|| dpcs.iter().position(Option::is_none));
        match slot {
            Some(slot) => {
                dpcs[slot] = Some(Dpc {
                    dpc,
                    routine,
                    queued: None,
                })
            }
            None => {
                drop(locked);
                log!("StorPortInitializeDpc: more than %u DPCs", DPCS as u32);
            }
        }
    }

    /// Queues `dpc`; false if it is queued already (it then runs once) or unknown.
    pub fn issue_dpc(&self, dpc: *mut STOR_DPC, arg1: *mut c_void, arg2: *mut c_void) -> bool {
        let queued = {
            let mut locked = self.locked();
            match locked.dpcs.iter_mut().flatten().find(|d| d.dpc == dpc) {
                Some(entry) if entry.queued.is_none() => {
                    entry.queued = Some((arg1, arg2));
                    true
                }
                _ => false,
            }
        };
        if queued {
            self.wake();
        }
        queued
    }

    /// Takes the next thing due off the lists.
    fn next(&self) -> Due {
        let now = now_ms();
        let mut locked = self.locked();
        let work = &mut *locked;
        if work.stopping {
            return Due::Stop;
        }
        if let Some(dpc) = work.dpcs.iter_mut().flatten().find(|d| d.queued.is_some()) {
            let (arg1, arg2) = dpc.queued.take().unwrap_or((null_mut(), null_mut()));
            return Due::Dpc(dpc.routine, dpc.dpc, arg1, arg2);
        }
        if let Some(call) = work.timer_call.filter(|c| c.due_ms <= now) {
            work.timer_call = None;
            return Due::Timer(call.routine);
        }
        for timer in &mut work.timers {
            if let Some((callback, context, due)) = timer.pending
                && due <= now
            {
                timer.pending = None;
                return Due::TimerEx(callback, context);
            }
        }
        let earliest = work
            .timers
            .iter()
            .filter_map(|t| t.pending.map(|(_, _, due)| due))
            .chain(work.timer_call.map(|c| c.due_ms))
            .min();
        Due::Wait(earliest.map_or(1_000, |due| due.saturating_sub(now).max(1)))
    }
}

/// The thread: runs what is due, sleeps until the next deadline or a wake-up.
unsafe extern "system" fn run(context: *mut c_void) {
    // SAFETY: `start` passed its worker, which outlives the thread (`stop` joins it first).
    let worker = unsafe { &*context.cast::<Worker>() };
    let extension = worker.extension.load(Ordering::Acquire);
    loop {
        match worker.next() {
            Due::Stop => break,
            Due::Timer(routine) => {
                // SAFETY: the miniport's HwTimer on its extension.
                unsafe { routine(extension) }
            }
            Due::TimerEx(callback, context) => {
                // SAFETY: the miniport's HW_TIMER_EX with the context it asked for.
                unsafe { callback(extension, context) }
            }
            Due::Dpc(routine, dpc, arg1, arg2) => {
                // SAFETY: the miniport's HwDpcRoutine with its STOR_DPC and IssueDpc's arguments.
                unsafe { routine(dpc, extension, arg1, arg2) }
            }
            Due::Wait(ms) => {
                let timeout = nt::relative_ms(ms);
                // SAFETY: the worker's event; a relative timeout.
                unsafe {
                    nt::KeWaitForSingleObject(
                        worker.wake.get().cast(),
                        nt::EXECUTIVE,
                        nt::KERNEL_MODE,
                        0,
                        &timeout,
                    )
                };
            }
        }
    }
    // SAFETY: ends this system thread.
    unsafe { nt::PsTerminateSystemThread(nt::STATUS_SUCCESS) };
}
