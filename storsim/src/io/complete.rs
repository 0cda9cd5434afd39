//! IofCompleteRequest: the verifier's preconditions, the walk up the stack locations with
//! completion routines, then the copy-back, IOSB and freeing of the IRP and its SystemBuffer.

use std::sync::atomic::Ordering;

use super::irp::{
    CompletionRoutine, IrpPtr, SL_ERROR_RETURNED, SL_INVOKE_ON_CANCEL, SL_INVOKE_ON_ERROR,
    SL_INVOKE_ON_SUCCESS, SL_PENDING_RETURNED,
};
use super::{
    IrpState, Origin, Outcome, STATUS_CANCELLED, STATUS_MORE_PROCESSING_REQUIRED, STATUS_PENDING,
};
use crate::cpu::{self, DISPATCH_LEVEL};
use crate::kernel::Kernel;
use crate::pool::PoolError;
use crate::verifier::{BugCheck, Code, locks};

/// Who completed the IRP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// The miniport, through StorPortCompleteServiceIrp (releases the rundown reference).
    StorPortCompleteServiceIrp,
    /// A driver calling IofCompleteRequest itself.
    IofCompleteRequest,
    /// Storport's own dispatch (errors it answers without the miniport).
    Port,
}

/// The storsim rule: a service IRP completed without StorPortCompleteServiceIrp.
pub const RULE_SERVICE_IRP_BYPASSED_STORPORT: u64 = 0x5700_0002;
/// The storsim rule: completion while a spin lock is held (SDV SpinLockSafe).
pub const RULE_SPIN_LOCK_SAFE: u64 = 0x5700_0001;
/// The storsim rule: output bytes within Information that the driver never wrote.
pub const RULE_UNWRITTEN_OUTPUT: u64 = 0x5700_0004;
/// Consecutive never-written output bytes that make a disclosure (chance: 2^-32 per place).
const UNWRITTEN_RUN: usize = 4;

impl Kernel {
    /// IofCompleteRequest as the driver (or Storport) calls it.
    pub fn complete_irp(&self, addr: usize, via: Via) {
        let record = {
            let mut irps = self.io.irps();
            match irps.get_mut(&addr) {
                Some(record) if record.state == IrpState::WithDriver => {
                    record.state = IrpState::Completed;
                    record.clone()
                }
                Some(_) => {
                    drop(irps);
                    return self.irp_violation(
                        Code::MultipleIrpCompleteRequests,
                        0,
                        addr,
                        0,
                        format!("IRP {addr:#x} completed a second time"),
                    );
                }
                None if self.io.recently_completed(addr) => {
                    drop(irps);
                    return self.irp_violation(
                        Code::MultipleIrpCompleteRequests,
                        0,
                        addr,
                        0,
                        format!("IRP {addr:#x} completed a second time (it was already completed and freed)"),
                    );
                }
                None => {
                    drop(irps);
                    return self.irp_violation(
                Code::DriverVerifierIomanagerViolation,
                        0x01,
                        addr,
                        0,
                        format!("completion of {addr:#x}, which is not an IRP in flight"),
                    );
                }
            }
        };
        let irp = IrpPtr(addr as *mut _);
        self.check_completion(irp, &record, via);
        if record.service && via == Via::IofCompleteRequest {
            self.report(BugCheck::new(Code::DriverVerifierDetectedViolation,
                [RULE_SERVICE_IRP_BYPASSED_STORPORT, addr as u64, 0, 0],
                "service IRP completed with IoCompleteRequest instead of StorPortCompleteServiceIrp: \
                 Storport's rundown reference leaks and removal will hang",
            ));
        }
        // SAFETY: this thread owns the completion of the live IRP.
        let status = unsafe { irp.header() }.IoStatus.Status as u32;
        self.io.counters.completed.fetch_add(1, Ordering::Relaxed);
        if status == STATUS_CANCELLED {
            self.io.counters.cancelled.fetch_add(1, Ordering::Relaxed);
        }
        let finished = self.walk_completion_routines(irp);
        if finished {
            self.finish_irp(irp, &record);
        }
        if record.service && via == Via::StorPortCompleteServiceIrp {
            self.port.rundown_release();
        }
    }

    /// The checks VERIFIER.md §5.4 lists, before anything changes.
    fn check_completion(&self, irp: IrpPtr, record: &super::IrpRecord, via: Via) {
        let addr = irp.addr();
        // SAFETY: the record says the IRP is live and this thread now owns its completion.
        let header = unsafe { irp.header() };
        let status = header.IoStatus.Status as u32;
        if status == STATUS_PENDING || status == 0xFFFF_FFFF {
            self.irp_violation(
                Code::DriverVerifierIomanagerViolation,
                0x06,
                addr,
                u64::from(status),
                format!("IRP completed with IoStatus.Status = {status:#x}"),
            );
        }
        let routine = irp
            .cancel_routine()
            .swap(std::ptr::null_mut(), Ordering::AcqRel);
        if !routine.is_null() {
            self.irp_violation(
                Code::DriverVerifierIomanagerViolation,
                0x07,
                addr,
                routine as u64,
                format!("IRP completed with its cancel routine {routine:p} still set"),
            );
        }
        let irql = cpu::irql();
        if irql > DISPATCH_LEVEL {
            self.irp_violation(
                Code::DriverVerifierIomanagerViolation,
                0x0E,
                addr,
                u64::from(irql),
                format!("IRP completed at IRQL {irql} (above DISPATCH_LEVEL)"),
            );
        }
        if via != Via::Port
            && let Some((lock, name)) = locks::any_held()
        {
            self.report(BugCheck::new(Code::DriverVerifierDetectedViolation,
                [RULE_SPIN_LOCK_SAFE, lock as u64, addr as u64, 0],
                format!("IRP completed while holding {name} {lock:#x} (SDV SpinLockSafe)"),
            ));
        }
        let information = header.IoStatus.Information;
        if information > record.out_len as usize {
            self.irp_violation(
                Code::DriverVerifierIomanagerViolation,
                0x312,
                addr,
                information as u64,
                format!(
                    "IoStatus.Information = {information} exceeds the output buffer ({} bytes)",
                    record.out_len
                ),
            );
        }
        if record.system_buffer != 0 {
            match self.pool.check(record.system_buffer as *mut u8) {
                Ok(()) => {}
                Err(PoolError::Underrun { block, offset }) => self.report(BugCheck::new(Code::SpecialPoolDetectedMemoryCorruption,
                    [block.addr as u64, block.size as u64, offset as u64, 0x21],
                    format!("SystemBuffer underrun: byte {offset} before the buffer was written"),
                )),
                Err(PoolError::Overrun { block, offset }) => self.report(BugCheck::new(Code::SpecialPoolDetectedMemoryCorruption,
                    [block.addr as u64, block.size as u64, offset as u64, 0x20],
                    format!("SystemBuffer overrun: byte {offset} past the end was written"),
                )),
                Err(other) => self.report(BugCheck::new(Code::SpecialPoolDetectedMemoryCorruption,
                    [record.system_buffer as u64, 0, 0, 0],
                    format!("SystemBuffer damaged: {other}"),
                )),
            }
            if !crate::io::is_error(status) {
                self.check_disclosure(record, information);
            }
        }
    }

    /// Output bytes the I/O manager will copy back but the driver never wrote.
    ///
    /// Every output byte past the input started as the I/O manager's marker (byte `i` holds
    /// byte `i % 8` of the pattern). A run of [`UNWRITTEN_RUN`] or more marker bytes inside
    /// Information was never written — struct padding included. Shorter runs are not reported:
    /// a written byte matches the marker by chance one time in 256.
    fn check_disclosure(&self, record: &super::IrpRecord, information: usize) {
        let start = record.in_len as usize;
        let end = information.min(record.out_len as usize);
        if end <= start {
            return;
        }
        let pattern = self.io.pattern.to_le_bytes();
        // SAFETY: [start, end) lies inside the live SystemBuffer (end ≤ out_len ≤ its length).
        let bytes = unsafe {
            std::slice::from_raw_parts((record.system_buffer + start) as *const u8, end - start)
        };
        let mut run = 0;
        for (offset, &byte) in bytes.iter().enumerate() {
            let at = start + offset;
            run = if byte == pattern[at % 8] { run + 1 } else { 0 };
            if run == UNWRITTEN_RUN {
                let first = at + 1 - UNWRITTEN_RUN;
                let last = (first..end)
                    .take_while(|&i| bytes[i - start] == pattern[i % 8])
                    .last()
                    .unwrap_or(at);
                self.report(BugCheck::new(Code::DriverVerifierDetectedViolation,
                    [RULE_UNWRITTEN_OUTPUT, record.system_buffer as u64, first as u64, information as u64],
                    format!(
                        "output bytes {first}..={last} are reported in Information ({information}) but were \
                         never written: kernel memory would be disclosed to the caller"
                    ),
                ));
                return;
            }
        }
    }

    /// Walks from the current location to the top, calling completion routines. `false` if a
    /// routine returned STATUS_MORE_PROCESSING_REQUIRED (its owner has the IRP back).
    fn walk_completion_routines(&self, irp: IrpPtr) -> bool {
        loop {
            // SAFETY: the completing thread owns the IRP; it is live until finish_irp.
            let header = unsafe { irp.header() };
            if header.CurrentLocation > header.StackCount {
                return true;
            }
            let location_ptr = irp.location_ptr(header.CurrentLocation);
            // SAFETY: 1 ≤ CurrentLocation ≤ StackCount: inside the IRP block.
            let location = unsafe { &mut *location_ptr };
            header.PendingReturned = u8::from(location.Control & SL_PENDING_RETURNED != 0);
            // NT_SUCCESS picks success or error (a warning is not success); Cancel adds its own.
            let succeeded = header.IoStatus.Status >= 0;
            let wants = if succeeded {
                SL_INVOKE_ON_SUCCESS
            } else {
                SL_INVOKE_ON_ERROR
            } | if header.Cancel != 0 {
                SL_INVOKE_ON_CANCEL
            } else {
                0
            };
            let routine = location.CompletionRoutine;
            let context = location.Context;
            let invoke = !routine.is_null() && location.Control & wants != 0;
            let keep = location.Control & SL_ERROR_RETURNED;
            // SAFETY: as above; clearing the processed location as the I/O manager does.
            unsafe { std::ptr::write_bytes(location_ptr, 0, 1) };
            location.Control = keep;
            header.CurrentLocation += 1;
            header.CurrentStackLocation = irp.location_ptr(header.CurrentLocation);
            let above = header.CurrentLocation <= header.StackCount;
            if invoke {
                let device = if above {
                    // SAFETY: the new current location is inside the block.
                    unsafe { (*header.CurrentStackLocation).DeviceObject.cast() }
                } else {
                    std::ptr::null_mut()
                };
                // SAFETY: whoever set the location stored an IO_COMPLETION_ROUTINE there.
                let routine: CompletionRoutine = unsafe { std::mem::transmute(routine) };
                // SAFETY: the routine's contract: the device above, the IRP, its context.
                let result = unsafe { routine(device, irp.0, context) } as u32;
                if result == STATUS_MORE_PROCESSING_REQUIRED {
                    return false;
                }
            } else if header.PendingReturned != 0 && above {
                // SAFETY: inside the block (above).
                unsafe { (*header.CurrentStackLocation).Control |= SL_PENDING_RETURNED };
            }
        }
    }

    /// The I/O manager's final step: IOSB, copy-back, free SystemBuffer and IRP.
    fn finish_irp(&self, irp: IrpPtr, record: &super::IrpRecord) {
        // SAFETY: still live; nothing else touches a completed IRP.
        let header = unsafe { irp.header() };
        let status = header.IoStatus.Status as u32;
        let information = header.IoStatus.Information;
        let copied = if crate::io::is_error(status) || record.system_buffer == 0 {
            0
        } else {
            information.min(record.out_len as usize)
        };
        let mut output = vec![0u8; copied];
        // SAFETY: `copied` ≤ out_len ≤ the SystemBuffer's length, and it is live.
        unsafe {
            std::ptr::copy_nonoverlapping(
                record.system_buffer as *const u8,
                output.as_mut_ptr(),
                copied,
            )
        };
        let outcome = Outcome {
            status,
            information,
            output,
        };
        if matches!(record.origin, Origin::User { .. }) {
            if record.system_buffer != 0 {
                let _ = self.pool.free(record.system_buffer as *mut u8, None);
            }
            self.io.irps().remove(&irp.addr());
            self.io.remember_completed(irp.addr());
            // Freed to special pool: any later touch by the driver faults (0xCC).
            let _ = self.pool.free(irp.0.cast(), None);
        }
        if self.config.timeline {
            self.note(format!(
                "IRP #{} completed: status {status:#010x}, {information} bytes",
                record.id
            ));
        }
        record.origin.request().finish(outcome);
    }
}
