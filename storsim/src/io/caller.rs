//! A driver loaded above the adapter as a kernel-mode caller: the IRPs it allocates
//! (IoAllocateIrp, IoReuseIrp, IoFreeIrp) and sends (IoCallDriver), the FILE_OBJECT references
//! it holds (IoGetDeviceObjectPointer, ObDereferenceObject), and what Driver Verifier finds
//! left when it unloads.
//!
//! Its IRPs go through the same registry as every other: sent, one is `WithDriver` until the
//! adapter completes it; its completion routine then keeps it (STATUS_MORE_PROCESSING_REQUIRED)
//! and it is the caller's again — to reuse, send again or free, never while it is out.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::Mutex;

use super::irp::{IrpPtr, header, irp_size, location};
use super::{Io, IrpState, Origin};
use crate::faults::Site;
use crate::pool::Owner;
use crate::verifier::{BugCheck, Code, rules};
use storport_abi::status::user::STATUS_INVALID_DEVICE_REQUEST;

/// IoCallDriver calls one thread may nest (a completion routine sending again from inside the
/// completion it is called for, and the adapter completing at once): past this, Windows's
/// kernel stack (12–24 KiB) would already be at risk.
pub const CALL_DEPTH_LIMIT: u32 = 8;

/// Locations an IRP may have (IoAllocateIrp's StackSize is a CCHAR).
const MAX_STACK_SIZE: i8 = 32;

thread_local! {
    static CALL_DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// A FILE_OBJECT a driver holds a reference on, and the adapter instance it was opened on.
struct Reference {
    /// The object's memory (0xD8 bytes), boxed so its address stays put.
    object: Box<[u64; 0x1B]>,
    instance: u64,
}

/// The I/O manager's records of upper drivers' IRPs and references.
#[derive(Default)]
pub struct Callers {
    /// IRPs from IoAllocateIrp not yet freed: address → stack count.
    allocated: Mutex<HashMap<usize, u8>>,
    references: Mutex<HashMap<usize, Reference>>,
}

/// What an upper driver left behind at its unload.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// Its IRPs still with the adapter.
    pub pending: usize,
    /// Its IRPs never freed.
    pub unfreed: usize,
    /// FILE_OBJECT references never dropped.
    pub references: usize,
}

impl Io {
    fn callers(&self) -> &Callers {
        &self.callers
    }

    /// IoAllocateIrp: a zeroed IRP with `stack_size` locations, or `None` (NULL).
    pub fn allocate_irp(&self, stack_size: i8) -> Option<usize> {
        if !(1..=MAX_STACK_SIZE).contains(&stack_size) {
            self.machine.report(BugCheck::new(
                Code::DriverVerifierDetectedViolation,
                [rules::OBJECT_MISUSE, stack_size as u64, 0, 0],
                format!("IoAllocateIrp with StackSize {stack_size}"),
            ));
            return None;
        }
        if self.machine.faults().fail(Site::IoAllocateIrp) {
            return None;
        }
        let stack_count = stack_size as u8;
        let block = self
            .machine
            .pool()
            .allocate_zeroed(
                irp_size(stack_count),
                u32::from_le_bytes(*b"Irp "),
                Owner::Irp,
            )
            .ok()?;
        // SAFETY: a fresh pool block of irp_size(stack_count) bytes, freed only by
        // `free_irp`, which the `allocated` record below guards.
        let irp = unsafe { IrpPtr::new(block.cast(), stack_count) };
        irp.initialize();
        let addr = irp.addr();
        self.callers()
            .allocated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(addr, stack_count);
        Some(addr)
    }

    /// The stack count of the IRP from IoAllocateIrp at `addr`, if it is one not yet freed.
    fn allocated_stack_count(&self, addr: usize) -> Option<u8> {
        self.callers()
            .allocated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&addr)
            .copied()
    }

    /// The allocated IRP at `addr` if the caller may touch it (not with the adapter); reports
    /// why not otherwise. `routine` names the DDI for the report.
    fn owned_irp(&self, routine: &str, addr: usize, in_use: (Code, u64)) -> Option<IrpPtr> {
        let stack_count = self.allocated_stack_count(addr);
        let Some(stack_count) = stack_count else {
            self.machine.report(BugCheck::new(
                Code::DriverVerifierDetectedViolation,
                [rules::OBJECT_MISUSE, addr as u64, 0, 0],
                format!("{routine} with {addr:#x}, which is no IRP from IoAllocateIrp"),
            ));
            return None;
        };
        let out = self
            .irps()
            .get(&addr)
            .is_some_and(|record| record.state == IrpState::WithDriver);
        if out {
            let (code, p1) = in_use;
            self.machine.report(BugCheck::new(
                code,
                [p1, addr as u64, 0, 0],
                format!(
                    "{routine} with IRP {addr:#x} while the driver below still owns it (it has not completed it)"
                ),
            ));
            return None;
        }
        // SAFETY: allocated by `allocate_irp` with this stack count, not freed (the record is
        // there) and not with a driver below: its caller owns it.
        Some(unsafe { IrpPtr::new(addr as *mut _, stack_count) })
    }

    /// IoCancelIrp's mark on an IRP from IoAllocateIrp that no driver below holds: `Cancel`
    /// set, nothing called (the caller holds the registry lock).
    pub(super) fn flag_owned_irp(&self, addr: usize) {
        let stack_count = self.allocated_stack_count(addr);
        if let Some(stack_count) = stack_count {
            // SAFETY: allocated by `allocate_irp` with this stack count and not freed: the
            // record is there, and `free_irp` takes the registry lock our caller holds after
            // removing the record and before freeing the memory.
            let irp = unsafe { IrpPtr::new(addr as *mut _, stack_count) };
            irp.cancel_flag()
                .store(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// IoReuseIrp: the IRP laid out new, `IoStatus.Status = status`.
    pub fn reuse_irp(&self, addr: usize, status: i32) {
        if let Some(irp) = self.owned_irp(
            "IoReuseIrp",
            addr,
            (Code::DriverVerifierIomanagerViolation, 0x311),
        ) {
            irp.initialize();
            irp.set(header::STATUS, status);
        }
    }

    /// IoFreeIrp.
    pub fn free_irp(&self, addr: usize) {
        let Some(irp) = self.owned_irp(
            "IoFreeIrp",
            addr,
            (
                Code::DriverVerifierDetectedViolation,
                rules::IRP_FREED_IN_USE,
            ),
        ) else {
            return;
        };
        self.callers()
            .allocated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&addr);
        self.irps().remove(&addr);
        self.remember_completed(addr);
        // Freed to special pool: a later touch by either driver faults (0xCC).
        let _ = self.machine.pool().free(irp.as_ptr().cast(), None);
    }

    /// IoCallDriver(`device`, `addr`) from a driver above the adapter: the IRP's next location
    /// becomes current and the FDO's dispatch routine gets it. Returns what that returned.
    pub fn send_irp(&self, device: usize, addr: usize) -> u32 {
        let Some(irp) = self.owned_irp(
            "IoCallDriver",
            addr,
            (Code::DriverVerifierIomanagerViolation, 0x310),
        ) else {
            return STATUS_INVALID_DEVICE_REQUEST;
        };
        if device != self.objects.fdo() as usize {
            self.machine.report(BugCheck::new(
                Code::DriverVerifierDetectedViolation,
                [rules::OBJECT_MISUSE, device as u64, addr as u64, 0],
                format!("IoCallDriver to {device:#x}, which is no device object"),
            ));
            return STATUS_INVALID_DEVICE_REQUEST;
        }
        let next = irp.get(header::CURRENT_LOCATION) - 1;
        if next < 1 {
            self.machine.stop(BugCheck::new(
                Code::NoMoreIrpStackLocations,
                [addr as u64, 0, 0, 0],
                format!("IoCallDriver with IRP {addr:#x}, which has no stack location left"),
            ));
        }
        irp.move_to(next);
        irp.set_at(next, location::DEVICE_OBJECT, device as *mut _);
        let file = irp.get_at(next, location::FILE_OBJECT) as usize;
        let instance = self
            .callers()
            .references
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&file)
            .map(|reference| reference.instance);
        self.register(
            &irp,
            Origin::Driver { instance },
            irp.get(header::SYSTEM_BUFFER) as usize,
            irp.get_at(next, location::INPUT_BUFFER_LENGTH),
            irp.get_at(next, location::OUTPUT_BUFFER_LENGTH),
        );
        let depth = CALL_DEPTH.get() + 1;
        if depth > CALL_DEPTH_LIMIT {
            // Each nested call is a completion routine sending again from inside its own
            // completion: on Windows the kernel stack runs out (a double fault, 0x7F).
            self.machine.stop(BugCheck::new(
                Code::DriverVerifierDetectedViolation,
                [rules::CALL_DRIVER_RECURSION, u64::from(depth), addr as u64, 0],
                format!(
                    "IoCallDriver nested {depth} deep on one thread: a completion routine sends its IRP again from inside the completion (re-arm from a work item or DPC instead)"
                ),
            ));
        }
        CALL_DEPTH.set(depth);
        let status = self.call_device(&irp);
        CALL_DEPTH.set(depth - 1);
        status
    }

    /// IoGetDeviceObjectPointer's reference: a new FILE_OBJECT on the adapter instance
    /// `instance`. Returns its address.
    pub fn reference_adapter(&self, instance: u64) -> usize {
        let object = Box::new([0u64; 0x1B]);
        let addr = object.as_ptr() as usize;
        self.callers()
            .references
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(addr, Reference { object, instance });
        addr
    }

    /// ObDereferenceObject: drops the reference on `object`; `false` if it holds none.
    pub fn dereference(&self, object: usize) -> bool {
        let removed = self
            .callers()
            .references
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&object);
        match removed {
            Some(reference) => {
                // IRPs may still name the object (on Windows, their own references keep it).
                self.closed_files
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(reference.object);
                true
            }
            None => false,
        }
    }

    /// What an unloading upper driver leaves: checked by the verifier at its unload.
    pub fn leftovers(&self) -> Leftovers {
        let allocated: Vec<usize> = self
            .callers()
            .allocated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .copied()
            .collect();
        let irps = self.irps();
        Leftovers {
            pending: allocated
                .iter()
                .filter(|addr| {
                    irps.get(addr)
                        .is_some_and(|record| record.state == IrpState::WithDriver)
                })
                .count(),
            unfreed: allocated.len(),
            references: self
                .callers()
                .references
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .len(),
        }
    }
}
