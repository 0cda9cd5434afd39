//! IoCancelIrp and the requests that lead to it: CancelIoEx, process exit.
//!
//! The algorithm is the kernel's (docs/VERIFIER-NOTES.md §5): take the global cancel spin lock, set
//! `Irp->Cancel`, swap the cancel routine out and, if there was one, call it at DISPATCH_LEVEL
//! with the cancel lock held; the routine must release it with IoReleaseCancelSpinLock.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::irp::{IrpPtr, header, location};
use super::{Handle, Io, IrpState, Origin, ProcessId};
use crate::cpu;
use crate::verifier::locks::{self, CANCEL_SPIN_LOCK, LockApi};
use crate::verifier::{self, BugCheck, Code, rules};

/// A DRIVER_CANCEL routine.
type CancelRoutine =
    unsafe extern "win64" fn(device: *mut std::ffi::c_void, irp: *mut storport_abi::IRP);

impl Io {
    /// IoAcquireCancelSpinLock: returns the previous IRQL.
    pub fn acquire_cancel_lock(&self) -> u8 {
        self.machine
            .acquire_kernel_lock(CANCEL_SPIN_LOCK, LockApi::Cancel, "the cancel spin lock")
    }

    /// IoReleaseCancelSpinLock(irql).
    pub fn release_cancel_lock(&self, irql: u8) {
        self.machine
            .release_kernel_lock(CANCEL_SPIN_LOCK, "the cancel spin lock", irql);
    }

    /// IoCancelIrp. `true` if a cancel routine was called.
    pub fn cancel_irp(&self, addr: usize) -> bool {
        let held = locks::held_count();
        let old_irql = self.acquire_cancel_lock();
        // Everything read from the IRP is read while the registry lock is held, so its completion
        // (which marks it completed under that lock first) cannot free it meanwhile; once the
        // routine is swapped out, its owner must leave the IRP to the cancel routine.
        let target = {
            let mut irps = self.irps();
            match irps.get_mut(&addr) {
                Some(record) if record.state == IrpState::WithDriver => {
                    record.cancelled_at.get_or_insert_with(Instant::now);
                    if record.dispatching {
                        self.counters
                            .cancels_during_dispatch
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    // SAFETY: the registry lists it in flight with this stack count, and its lock
                    // (held until the end of this block) keeps completion from freeing it.
                    let irp = unsafe { IrpPtr::new(addr as *mut _, record.stack_count) };
                    // CancelIrql is written only here, under the cancel spin lock.
                    irp.set(header::CANCEL_IRQL, old_irql);
                    irp.cancel_flag().store(1, Ordering::SeqCst);
                    let device = irp
                        .get_current(location::DEVICE_OBJECT)
                        .unwrap_or(std::ptr::null_mut());
                    Some((irp.take_cancel_routine(), device, irp))
                }
                _ => {
                    // An IRP its driver owns (allocated, not sent, or back from a trip): Windows
                    // still sets Cancel, which the next driver to get the IRP must honour.
                    self.flag_owned_irp(addr);
                    None
                }
            }
        };
        self.counters
            .cancel_requests
            .fetch_add(1, Ordering::Relaxed);
        let Some((routine, device, irp)) = target.filter(|(routine, ..)| !routine.is_null()) else {
            self.release_cancel_lock(old_irql);
            return false;
        };
        // SAFETY: a non-null Irp->CancelRoutine holds the DRIVER_CANCEL its driver stored
        // (IoSetCancelRoutine's contract); only the word's type changes.
        let routine =
            unsafe { std::mem::transmute::<*mut std::ffi::c_void, CancelRoutine>(routine) };
        let _call = verifier::enter("cancel routine");
        self.machine.maybe_delay();
        // SAFETY: the cancel routine's contract: the device of the current location, the IRP
        // (live: with its routine swapped out, only the cancel routine completes it), the
        // cancel lock held at DISPATCH_LEVEL with CancelIrql set.
        unsafe { routine(device, irp.as_ptr()) };
        self.machine.release_left_held(held, |lock, name| {
            if lock == CANCEL_SPIN_LOCK {
                // What IoReleaseCancelSpinLock would have restored.
                cpu::set_irql(old_irql);
                BugCheck::new(
                    Code::DriverVerifierDetectedViolation,
                    [rules::CANCEL_SPIN_LOCK_KEPT, CANCEL_SPIN_LOCK as u64, addr as u64, 0],
                    "cancel routine returned without releasing the cancel spin lock (SDV CancelSpinLock)",
                )
            } else {
                BugCheck::new(
                    Code::DriverVerifierDetectedViolation,
                    [0x0004_0006, lock as u64, addr as u64, 0],
                    format!("cancel routine returned still holding {name} {lock:#x} (QueuedSpinLock / SpinLock rule)"),
                )
            }
        });
        let after = cpu::irql();
        if after != old_irql {
            self.machine.report(BugCheck::new(
                Code::DriverVerifierIomanagerViolation,
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
        self.machine.note(format!(
            "process {process} exits with {} requests in flight",
            targets.len()
        ));
        for &irp in &targets {
            self.cancel_irp(irp);
        }
        let handles: Vec<Handle> = self.handles_of(process);
        for handle in handles {
            self.close(handle);
        }
        self.await_cancellations();
    }

    /// IRPs still with the driver whose sender matches.
    fn in_flight(&self, sent_by: impl Fn(&Origin) -> bool) -> Vec<usize> {
        self.irps()
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
                .irps()
                .iter()
                .filter(|(_, r)| r.state == IrpState::WithDriver)
                .filter_map(|(addr, r)| r.cancelled_at.map(|at| (*addr, r.id, now - at)))
                .partition(|(_, _, age)| *age >= self.machine.config().cancel_limit);
            for (addr, id, age) in &late {
                self.machine.report(BugCheck::new(
                    Code::DriverVerifierDetectedViolation,
                    [
                        0x135,
                        *addr as u64,
                        self.machine.config().cancel_limit.as_millis() as u64,
                        0,
                    ],
                    format!(
                        "IRP #{id} was cancelled {} ms ago and is still not completed: the driver \
                         has no working cancel path for parked requests",
                        age.as_millis()
                    ),
                ));
                // Report once: forget the cancel time.
                if let Some(record) = self.irps().get_mut(addr) {
                    record.cancelled_at = None;
                }
            }
            if waiting.is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
