//! IofCompleteRequest: the verifier's preconditions, the walk up the stack locations with
//! completion routines, then the copy-back, IOSB and freeing of the IRP and its SystemBuffer.

use std::sync::atomic::Ordering;

use super::irp::{
    CompletionRoutine, IrpPtr, SL_ERROR_RETURNED, SL_INVOKE_ON_CANCEL, SL_INVOKE_ON_ERROR,
    SL_INVOKE_ON_SUCCESS, SL_PENDING_RETURNED, header, location,
};
use super::{Io, IrpRecord, IrpState, Origin, Outcome};
use crate::cpu::{self, DISPATCH_LEVEL};
use crate::machine::Running;
use crate::pool::PoolError;
use crate::verifier::{BugCheck, Code, locks, rules};
use storport_abi::status::Named;
use storport_abi::status::user::{
    STATUS_CANCELLED, STATUS_MORE_PROCESSING_REQUIRED, STATUS_PENDING,
};

/// Who completed the IRP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// The miniport, through StorPortCompleteServiceIrp (whose caller then releases the
    /// rundown reference of a referenced IRP).
    StorPortCompleteServiceIrp,
    /// A driver calling IofCompleteRequest itself.
    IofCompleteRequest,
    /// Storport's own dispatch (errors it answers without the miniport).
    Port,
}

/// Consecutive never-written output bytes that make a disclosure (chance: 2^-32 per place).
const UNWRITTEN_RUN: usize = 4;
/// The same in an output longer than [`BULK_OUTPUT`]: a whole period of the marker (chance:
/// 2^-64 per place). Bulk output carries arbitrary data — a FETCH reply's WRITE payload —
/// where four bytes matching the marker by chance come once in 4 GiB: the disk torture's
/// hundreds of megabytes met one (a 127-block WRITE's bytes 35,426..35,429, all written).
const UNWRITTEN_RUN_BULK: usize = 8;
/// Outputs up to this long (replies, records, small payloads) keep the 4-byte run.
const BULK_OUTPUT: usize = 4096;

impl Io {
    /// IofCompleteRequest as the driver (or Storport) calls it. Returns whether the IRP held
    /// a reference of its device (the port driver's to release when it completed it).
    pub fn complete(&self, addr: usize, via: Via) -> bool {
        let record = {
            let mut irps = self.irps();
            match irps.get_mut(&addr) {
                Some(record) if record.state == IrpState::WithDriver => {
                    record.state = IrpState::Completed;
                    record.clone()
                }
                Some(_) => {
                    drop(irps);
                    self.irp_violation(
                        Code::MultipleIrpCompleteRequests,
                        0,
                        addr,
                        0,
                        format!("IRP {addr:#x} completed a second time"),
                    );
                    return false;
                }
                None if self.recently_completed(addr) => {
                    drop(irps);
                    self.irp_violation(
                        Code::MultipleIrpCompleteRequests,
                        0,
                        addr,
                        0,
                        format!("IRP {addr:#x} completed a second time (it was already completed and freed)"),
                    );
                    return false;
                }
                None => {
                    drop(irps);
                    self.irp_violation(
                        Code::DriverVerifierIomanagerViolation,
                        0x01,
                        addr,
                        0,
                        format!("completion of {addr:#x}, which is not an IRP in flight"),
                    );
                    return false;
                }
            }
        };
        // SAFETY: the registry listed it in flight with this stack count, and this thread has
        // just taken its completion: nothing frees it before `finish_irp` below.
        let irp = unsafe { IrpPtr::new(addr as *mut _, record.stack_count) };
        self.check_completion(&irp, &record, via);
        if record.referenced && via == Via::IofCompleteRequest {
            self.machine.report(BugCheck::new(Code::DriverVerifierDetectedViolation,
                [rules::SERVICE_IRP_BYPASSED_STORPORT, addr as u64, 0, 0],
                "service IRP completed with IoCompleteRequest instead of StorPortCompleteServiceIrp: \
                 Storport's rundown reference leaks and removal will hang",
            ));
        }
        let status = irp.get(header::STATUS) as u32;
        self.counters.completed.fetch_add(1, Ordering::Relaxed);
        if status == STATUS_CANCELLED {
            self.counters.cancelled.fetch_add(1, Ordering::Relaxed);
        }
        let upper = matches!(record.origin, Origin::Driver { .. });
        if self.walk_completion_routines(&irp, upper) {
            self.finish_irp(irp, &record);
        }
        record.referenced
    }

    /// The checks docs/VERIFIER-NOTES.md §5.4 lists, before anything changes.
    fn check_completion(&self, irp: &IrpPtr, record: &IrpRecord, via: Via) {
        let addr = irp.addr();
        let status = irp.get(header::STATUS) as u32;
        if status == STATUS_PENDING || status == 0xFFFF_FFFF {
            self.irp_violation(
                Code::DriverVerifierIomanagerViolation,
                0x06,
                addr,
                u64::from(status),
                format!("IRP completed with IoStatus.Status = {}", Named(status)),
            );
        }
        let routine = irp.take_cancel_routine();
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
            self.machine.report(BugCheck::new(
                Code::DriverVerifierDetectedViolation,
                [rules::SPIN_LOCK_SAFE, lock as u64, addr as u64, 0],
                format!("IRP completed while holding {name} {lock:#x} (SDV SpinLockSafe)"),
            ));
        }
        let information = irp.get(header::INFORMATION);
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
        // A driver's own buffer is its business: no I/O manager copy, nothing disclosed.
        let io_managers = !matches!(record.origin, Origin::Driver { .. });
        if record.system_buffer != 0 && io_managers {
            match self.machine.pool().check(record.system_buffer as *mut u8) {
                Ok(()) => {}
                Err(PoolError::Underrun { block, offset }) => self.machine.report(BugCheck::new(
                    Code::SpecialPoolDetectedMemoryCorruption,
                    [block.addr as u64, block.size as u64, offset as u64, 0x21],
                    format!("SystemBuffer underrun: byte {offset} before the buffer was written"),
                )),
                Err(PoolError::Overrun { block, offset }) => self.machine.report(BugCheck::new(
                    Code::SpecialPoolDetectedMemoryCorruption,
                    [block.addr as u64, block.size as u64, offset as u64, 0x20],
                    format!("SystemBuffer overrun: byte {offset} past the end was written"),
                )),
                Err(other) => self.machine.report(BugCheck::new(
                    Code::SpecialPoolDetectedMemoryCorruption,
                    [record.system_buffer as u64, 0, 0, 0],
                    format!("SystemBuffer damaged: {other}"),
                )),
            }
            if !crate::io::is_error(status) && self.machine.config().disclosure_check {
                self.check_disclosure(record, information);
            }
        }
    }

    /// Output bytes the I/O manager will copy back but the driver never wrote.
    ///
    /// Every output byte past the input started as the I/O manager's marker (byte `i` holds
    /// byte `i % 8` of the pattern). A run of [`UNWRITTEN_RUN`] or more marker bytes inside
    /// Information was never written — struct padding included ([`UNWRITTEN_RUN_BULK`] in
    /// an output past [`BULK_OUTPUT`] bytes). Shorter runs are not reported: a written byte
    /// matches the marker by chance one time in 256.
    fn check_disclosure(&self, record: &IrpRecord, information: usize) {
        let start = record.in_len as usize;
        let end = information.min(record.out_len as usize);
        if end <= start {
            return;
        }
        let unwritten_run = if end > BULK_OUTPUT {
            UNWRITTEN_RUN_BULK
        } else {
            UNWRITTEN_RUN
        };
        let pattern = self.pattern.to_le_bytes();
        let bytes = self
            .machine
            .pool()
            .read_bytes(record.system_buffer + start, end - start)
            .expect("Information ≤ out_len ≤ the SystemBuffer's length");
        let mut run = 0;
        for (offset, &byte) in bytes.iter().enumerate() {
            let at = start + offset;
            run = if byte == pattern[at % 8] { run + 1 } else { 0 };
            if run == unwritten_run {
                let first = at + 1 - unwritten_run;
                let last = (first..end)
                    .take_while(|&i| bytes[i - start] == pattern[i % 8])
                    .last()
                    .unwrap_or(at);
                self.machine.report(BugCheck::new(Code::DriverVerifierDetectedViolation,
                    [rules::UNWRITTEN_OUTPUT, record.system_buffer as u64, first as u64, information as u64],
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
    ///
    /// Routines run at DISPATCH_LEVEL whatever the completer's IRQL: "IRQL ≤ DISPATCH_LEVEL in
    /// an arbitrary thread" read at its strictest, so a routine that blocks or calls a
    /// PASSIVE_LEVEL-only routine is caught even when the adapter completes at PASSIVE_LEVEL.
    /// `upper`: the routine is code of a driver loaded above the adapter.
    fn walk_completion_routines(&self, irp: &IrpPtr, upper: bool) -> bool {
        let stack_count = irp.get(header::STACK_COUNT);
        loop {
            let at = irp.get(header::CURRENT_LOCATION);
            if at > stack_count {
                return true;
            }
            let control = irp.get_at(at, location::CONTROL);
            let pending_returned = control & SL_PENDING_RETURNED != 0;
            irp.set(header::PENDING_RETURNED, u8::from(pending_returned));
            // NT_SUCCESS picks success or error (a warning is not success); Cancel adds its own.
            let succeeded = irp.get(header::STATUS) >= 0;
            let cancelled = irp.cancel_flag().load(Ordering::Acquire) != 0;
            let wants = if succeeded {
                SL_INVOKE_ON_SUCCESS
            } else {
                SL_INVOKE_ON_ERROR
            } | if cancelled { SL_INVOKE_ON_CANCEL } else { 0 };
            // Read as the IO_COMPLETION_ROUTINE whoever set the location stored (or NULL).
            let routine: Option<CompletionRoutine> = irp.get_at(at, location::COMPLETION_ROUTINE);
            let context = irp.get_at(at, location::CONTEXT);
            let invoke = routine.filter(|_| control & wants != 0);
            // Clear the processed location as the I/O manager does, keeping SL_ERROR_RETURNED.
            irp.clear_location(at);
            irp.set_at(at, location::CONTROL, control & SL_ERROR_RETURNED);
            irp.move_to(at + 1);
            let above = at < stack_count;
            if let Some(routine) = invoke {
                let device = if above {
                    irp.get_at(at + 1, location::DEVICE_OBJECT)
                } else {
                    std::ptr::null_mut()
                };
                let running = if upper {
                    Running::Upper
                } else {
                    Running::Miniport
                };
                let result = running.enter(|| {
                    self.machine
                        .call_driver("completion routine", DISPATCH_LEVEL, || {
                            // SAFETY: the routine's contract: the device above, the IRP (live
                            // until it returns: only its owner frees it), its context, at IRQL
                            // ≤ DISPATCH_LEVEL.
                            unsafe { routine(device, irp.as_ptr(), context) }
                        })
                }) as u32;
                if result == STATUS_MORE_PROCESSING_REQUIRED {
                    return false;
                }
            } else if pending_returned && above {
                let control = irp.get_at(at + 1, location::CONTROL);
                irp.set_at(at + 1, location::CONTROL, control | SL_PENDING_RETURNED);
            }
        }
    }

    /// The I/O manager's final step: IOSB, copy-back, free SystemBuffer and IRP.
    fn finish_irp(&self, irp: IrpPtr, record: &IrpRecord) {
        let status = irp.get(header::STATUS) as u32;
        let information = irp.get(header::INFORMATION);
        let copied = if super::is_error(status) || record.system_buffer == 0 {
            0
        } else {
            information.min(record.out_len as usize)
        };
        let output = self
            .machine
            .pool()
            .read_bytes(record.system_buffer, copied)
            .expect("copied ≤ out_len ≤ the SystemBuffer's length");
        let outcome = Outcome {
            status,
            information,
            output,
        };
        if matches!(record.origin, Origin::Driver { .. }) {
            // Windows would now finish it as if a thread had sent it, and a driver's own IRP
            // has none: the DDI rule IoFreeIrp wants a completion routine that keeps it.
            self.machine.report(BugCheck::new(
                Code::DriverVerifierDetectedViolation,
                [rules::COMPLETED_PAST_TOP, irp.addr() as u64, u64::from(status), 0],
                format!(
                    "IRP {:#x} from IoAllocateIrp completed past its top location: no completion routine returned STATUS_MORE_PROCESSING_REQUIRED",
                    irp.addr()
                ),
            ));
            return;
        }
        if matches!(record.origin, Origin::User { .. }) {
            let pool = self.machine.pool();
            if record.system_buffer != 0 {
                let _ = pool.free(record.system_buffer as *mut u8, None);
            }
            self.irps().remove(&irp.addr());
            self.remember_completed(irp.addr());
            // Freed to special pool: any later touch by the driver faults (0xCC).
            let _ = pool.free(irp.as_ptr().cast(), None);
        }
        if self.machine.config().timeline {
            self.machine.note(format!(
                "IRP #{} completed: {}, {information} bytes",
                record.id,
                Named(status)
            ));
        }
        if let Some(request) = record.origin.request() {
            request.finish(outcome);
        }
    }
}
