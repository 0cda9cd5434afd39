//! IoCancelIrp and the requests that lead to it: CancelIoEx, process exit.
//!
//! The algorithm is the kernel's (VERIFIER.md §5): take the global cancel spin lock, set
//! `Irp->Cancel`, swap the cancel routine out and, if there was one, call it at DISPATCH_LEVEL
//! with the cancel lock held; the routine must release it with IoReleaseCancelSpinLock.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::irp::IrpPtr;
use super::{Handle, IrpState, Origin, ProcessId};
use crate::cpu::{self, DISPATCH_LEVEL};
use crate::kernel::Kernel;
use crate::verifier::locks::{self, CANCEL_SPIN_LOCK, LockApi};
use crate::verifier::{self, BugCheck, Code};

/// The storsim rule: a cancel routine returned holding the cancel spin lock.
pub const RULE_CANCEL_SPIN_LOCK_KEPT: u64 = 0x5700_000A;

/// A DRIVER_CANCEL routine.
type CancelRoutine =
    unsafe extern "win64" fn(device: *mut std::ffi::c_void, irp: *mut storport_abi::IRP);

impl Kernel {
    /// IoAcquireCancelSpinLock: returns the previous IRQL.
    pub fn acquire_cancel_lock(&self) -> u8 {
        self.acquire_spin_lock(
            &self.cancel_lock,
            CANCEL_SPIN_LOCK,
            LockApi::Cancel,
            "the cancel spin lock",
        )
    }

    /// IoReleaseCancelSpinLock(irql).
    pub fn release_cancel_lock(&self, irql: u8) {
        self.release_spin_lock(
            &self.cancel_lock,
            CANCEL_SPIN_LOCK,
            "the cancel spin lock",
            irql,
        );
    }

    /// IoCancelIrp. `true` if a cancel routine was called.
    pub fn cancel_irp(&self, addr: usize) -> bool {
        let held = locks::held_count();
        let old_irql = self.acquire_cancel_lock();
        let irp = IrpPtr(addr as *mut _);
        // Everything read from the IRP is read while the registry says it is live; once the
        // routine is swapped out, its owner must leave the IRP to the cancel routine.
        let (routine, device) = {
            let mut irps = self.io.irps();
            match irps.get_mut(&addr) {
                Some(record) if record.state == IrpState::WithDriver => {
                    record.cancelled_at.get_or_insert_with(Instant::now);
                    // SAFETY: the registry lists the IRP as live and in flight; CancelIrql is
                    // written only here, under the cancel spin lock.
                    unsafe { irp.header() }.CancelIrql = old_irql;
                    irp.cancel_flag().store(1, Ordering::SeqCst);
                    // SAFETY: live (above); the location is read only if it lies inside the IRP
                    // (a driver may have skipped past its own location).
                    let header = unsafe { irp.header() };
                    let device = if (1..=header.StackCount).contains(&header.CurrentLocation) {
                        // SAFETY: 1 ≤ CurrentLocation ≤ StackCount: inside the block.
                        unsafe { irp.current() }.DeviceObject.cast()
                    } else {
                        std::ptr::null_mut()
                    };
                    let routine = irp
                        .cancel_routine()
                        .swap(std::ptr::null_mut(), Ordering::AcqRel);
                    (routine, device)
                }
                _ => (std::ptr::null_mut(), std::ptr::null_mut()),
            }
        };
        self.io
            .counters
            .cancel_requests
            .fetch_add(1, Ordering::Relaxed);
        if routine.is_null() {
            self.release_cancel_lock(old_irql);
            return false;
        }
        // SAFETY: the driver stored a DRIVER_CANCEL in Irp->CancelRoutine.
        let routine: CancelRoutine = unsafe { std::mem::transmute(routine) };
        let _call = verifier::enter("cancel routine");
        self.maybe_delay();
        // SAFETY: the cancel routine's contract: Storport's FDO, the IRP, the cancel lock held
        // at DISPATCH_LEVEL.
        unsafe { routine(device, irp.0) };
        for (lock, name) in locks::take_held_beyond(held) {
            if lock == CANCEL_SPIN_LOCK {
                self.report(BugCheck::new(Code::DriverVerifierDetectedViolation,
                    [RULE_CANCEL_SPIN_LOCK_KEPT, CANCEL_SPIN_LOCK as u64, addr as u64, 0],
                    "cancel routine returned without releasing the cancel spin lock (SDV CancelSpinLock)",
                ));
                // What IoReleaseCancelSpinLock would have restored.
                cpu::set_irql(old_irql);
            } else {
                self.report(BugCheck::new(Code::DriverVerifierDetectedViolation,
                    [0x0004_0006, lock as u64, addr as u64, 0],
                    format!("cancel routine returned still holding {name} {lock:#x} (QueuedSpinLock / SpinLock rule)"),
                ));
            }
            self.force_unlock(lock);
        }
        let after = cpu::irql();
        if after != old_irql {
            self.report(BugCheck::new(Code::DriverVerifierIomanagerViolation,
                [0x05, 0, u64::from(old_irql), u64::from(after)],
                format!("cancel routine returned at IRQL {after}, IoCancelIrp's caller was at {old_irql}"),
            ));
            cpu::set_irql(old_irql);
        }
        true
    }

    /// CancelIoEx(handle, NULL) or, with `only`, CancelIoEx(handle, &overlapped).
    /// Returns how many IRPs were cancel-requested.
    pub fn cancel_io(&self, handle: Handle, only: Option<u64>) -> usize {
        let targets = self.in_flight(|origin| {
            matches!(origin, Origin::User { handle: h, request, .. }
                if *h == handle && only.is_none_or(|id| request.id == id))
        });
        for &irp in &targets {
            self.cancel_irp(irp);
        }
        targets.len()
    }

    /// Process exit: cancel every IRP the process has in flight (IoCancelThreadIo), close its
    /// handles, and wait up to the cancel limit for the IRPs to finish (0xC4/0x135 if not).
    pub fn exit_process(&self, process: ProcessId) {
        let targets = self
            .in_flight(|origin| matches!(origin, Origin::User { process: p, .. } if *p == process));
        self.note(format!(
            "process {process} exits with {} requests in flight",
            targets.len()
        ));
        for &irp in &targets {
            self.cancel_irp(irp);
        }
        let handles: Vec<Handle> = self.io.handles_of(process);
        for handle in handles {
            self.close(handle);
        }
        self.await_cancellations();
    }

    /// IRPs still with the driver whose sender matches.
    fn in_flight(&self, sent_by: impl Fn(&Origin) -> bool) -> Vec<usize> {
        self.io
            .irps()
            .iter()
            .filter(|(_, r)| r.state == IrpState::WithDriver && sent_by(&r.origin))
            .map(|(addr, _)| *addr)
            .collect()
    }

    /// Waits until every cancel-requested IRP is completed, up to the cancel limit after its
    /// request; any left then is reported as 0xC4/0x135 (a user thread cannot exit).
    pub fn await_cancellations(&self) {
        loop {
            let now = Instant::now();
            let (late, waiting): (Vec<_>, Vec<_>) = self
                .io
                .irps()
                .iter()
                .filter(|(_, r)| r.state == IrpState::WithDriver)
                .filter_map(|(addr, r)| r.cancelled_at.map(|at| (*addr, r.id, now - at)))
                .partition(|(_, _, age)| *age >= self.config.cancel_limit);
            for (addr, id, age) in &late {
                self.report(BugCheck::new(Code::DriverVerifierDetectedViolation,
                    [
                        0x135,
                        *addr as u64,
                        self.config.cancel_limit.as_millis() as u64,
                        0,
                    ],
                    format!(
                        "IRP #{id} was cancelled {} ms ago and is still not completed: the driver \
                         has no working cancel path for parked requests",
                        age.as_millis()
                    ),
                ));
                // Report once: forget the cancel time.
                if let Some(record) = self.io.irps().get_mut(addr) {
                    record.cancelled_at = None;
                }
            }
            if waiting.is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Spins on a kernel-owned lock word as KeAcquireSpinLock does; returns the old IRQL.
    pub(crate) fn acquire_spin_lock(
        &self,
        word: &std::sync::atomic::AtomicUsize,
        id: locks::LockId,
        api: LockApi,
        name: &'static str,
    ) -> u8 {
        let old = cpu::irql();
        if old > DISPATCH_LEVEL {
            self.report(BugCheck::new(Code::DriverVerifierDetectedViolation,
                [0x42, id as u64, u64::from(old), 0],
                format!("{name} acquired at IRQL {old} (above DISPATCH_LEVEL)"),
            ));
        }
        match self.locks.before_acquire(id, api, name) {
            Ok(report) => {
                if let Some(report) = report {
                    self.report(report);
                }
            }
            Err(locks::Refused::Recursive(report)) => {
                self.report(report);
                return old;
            }
        }
        cpu::set_irql(DISPATCH_LEVEL.max(old));
        if !locks::spin_acquire(word, locks::owner_tag()) {
            self.stop(BugCheck::new(Code::DriverVerifierDetectedViolation,
                [0x1001, id as u64, 0, 0],
                format!("deadlock: spun on {name} for {:?}", locks::SPIN_LIMIT),
            ));
        }
        locks::push_held(id, name);
        old
    }

    /// Releases a kernel-owned lock word and lowers to `irql`.
    pub(crate) fn release_spin_lock(
        &self,
        word: &std::sync::atomic::AtomicUsize,
        id: locks::LockId,
        name: &'static str,
        irql: u8,
    ) {
        match locks::pop_held(id) {
            Ok(()) => {}
            Err(None) => {
                return self.report(BugCheck::new(Code::DriverVerifierDetectedViolation,
                    [0x1007, id as u64, 0, 0],
                    format!("{name} released without being acquired by this thread"),
                ));
            }
            Err(Some(report)) => self.report(report),
        }
        word.store(0, Ordering::Release);
        cpu::set_irql(irql);
    }
}
