//! Cancel-safe IRP queues (IoCsq*), the kernel's algorithm (VERIFIER.md §5.3, ReactOS
//! csq.c for the detail): the driver supplies the queue and its lock; the I/O manager owns the
//! cancel routine and the race between cancellation and removal.

use std::ffi::c_void;
use std::sync::atomic::Ordering;

use storport_abi::IRP;

use super::irp::{IrpPtr, SL_PENDING_RETURNED};
use crate::kernel::{Kernel, kernel};

const IO_TYPE_CSQ_IRP_CONTEXT: u32 = 1;
const IO_TYPE_CSQ: u32 = 2;
const IO_TYPE_CSQ_EX: u32 = 3;
const STATUS_SUCCESS: i32 = 0;

/// `IO_CSQ` (0x40 bytes): the driver's callbacks.
#[repr(C)]
pub struct IoCsq {
    pub kind: u32,
    pub insert: usize,
    pub remove: unsafe extern "win64" fn(*mut IoCsq, *mut IRP),
    pub peek: unsafe extern "win64" fn(*mut IoCsq, *mut IRP, *mut c_void) -> *mut IRP,
    pub acquire: unsafe extern "win64" fn(*mut IoCsq, *mut u8),
    pub release: unsafe extern "win64" fn(*mut IoCsq, u8),
    pub complete_canceled: unsafe extern "win64" fn(*mut IoCsq, *mut IRP),
    pub reserve: *mut c_void,
}

/// `IO_CSQ_IRP_CONTEXT` (0x18 bytes).
#[repr(C)]
pub struct IoCsqIrpContext {
    pub kind: u32,
    pub irp: *mut IRP,
    pub csq: *mut IoCsq,
}

const _: () = {
    assert!(size_of::<IoCsq>() == 0x40);
    assert!(std::mem::offset_of!(IoCsq, acquire) == 0x20);
    assert!(std::mem::offset_of!(IoCsq, complete_canceled) == 0x30);
    assert!(size_of::<IoCsqIrpContext>() == 0x18);
};

type InsertIrp = unsafe extern "win64" fn(*mut IoCsq, *mut IRP);
type InsertIrpEx = unsafe extern "win64" fn(*mut IoCsq, *mut IRP, *mut c_void) -> i32;

/// `Irp->Tail.Overlay.DriverContext[3]` (IRP+0x90), where IoCsq keeps its context or queue.
fn driver_context3(irp: IrpPtr) -> *mut *mut c_void {
    irp.0
        .cast::<u8>()
        .wrapping_add(std::mem::offset_of!(IRP, DriverContext) + 3 * size_of::<usize>())
        .cast()
}

impl Kernel {
    /// IoCsqInsertIrpEx: queue, mark pending, arm the cancel routine; if the IRP was
    /// cancelled meanwhile, take it back out and hand it to CsqCompleteCanceledIrp.
    pub(crate) fn csq_insert(
        &self,
        csq: *mut IoCsq,
        irp: IrpPtr,
        context: *mut IoCsqIrpContext,
        insert_context: *mut c_void,
    ) -> i32 {
        // SAFETY: the driver's initialized IO_CSQ.
        let queue = unsafe { &*csq };
        let mut irql = 0u8;
        // SAFETY: CsqAcquireLock's contract.
        unsafe { (queue.acquire)(csq, &mut irql) };
        let status = if queue.kind == IO_TYPE_CSQ_EX {
            // SAFETY: an IO_CSQ_EX stores a CsqInsertIrpEx.
            let insert: InsertIrpEx = unsafe { std::mem::transmute(queue.insert) };
            // SAFETY: CsqInsertIrpEx's contract, lock held.
            unsafe { insert(csq, irp.0, insert_context) }
        } else {
            // SAFETY: an IO_CSQ stores a CsqInsertIrp.
            let insert: InsertIrp = unsafe { std::mem::transmute(queue.insert) };
            // SAFETY: CsqInsertIrp's contract, lock held.
            unsafe { insert(csq, irp.0) };
            STATUS_SUCCESS
        };
        if status >= 0 {
            // SAFETY: the IRP's current location is the driver's (it is being queued).
            unsafe { irp.current() }.Control |= SL_PENDING_RETURNED;
            let owner = if context.is_null() {
                csq.cast()
            } else {
                // SAFETY: the caller's IO_CSQ_IRP_CONTEXT, live while the IRP is queued.
                let context_ref = unsafe { &mut *context };
                context_ref.kind = IO_TYPE_CSQ_IRP_CONTEXT;
                context_ref.irp = irp.0;
                context_ref.csq = csq;
                context.cast()
            };
            // SAFETY: the IRP is live and being queued: this slot is the queue's now.
            unsafe { driver_context3(irp).write(owner) };
            irp.cancel_routine()
                .store(csq_cancel_routine as *mut c_void, Ordering::Release);
            if irp.cancel_flag().load(Ordering::Acquire) != 0
                && !irp
                    .cancel_routine()
                    .swap(std::ptr::null_mut(), Ordering::AcqRel)
                    .is_null()
            {
                // Cancelled before the routine was armed, and we got it back: undo and cancel.
                // SAFETY: CsqRemoveIrp's contract, lock held.
                unsafe { (queue.remove)(csq, irp.0) };
                self.csq_unlink(irp);
                // SAFETY: CsqReleaseLock's contract.
                unsafe { (queue.release)(csq, irql) };
                // SAFETY: CsqCompleteCanceledIrp's contract, lock not held.
                unsafe { (queue.complete_canceled)(csq, irp.0) };
                return status;
            }
        }
        // SAFETY: CsqReleaseLock's contract.
        unsafe { (queue.release)(csq, irql) };
        status
    }

    fn csq_unlink(&self, irp: IrpPtr) {
        let slot = driver_context3(irp);
        // SAFETY: the IRP is live and leaving the queue, which owns this slot.
        let context = unsafe { slot.read() };
        if !context.is_null() {
            // SAFETY: DriverContext[3] holds either the IO_CSQ or an IO_CSQ_IRP_CONTEXT, both
            // starting with their u32 type.
            if unsafe { context.cast::<u32>().read() } == IO_TYPE_CSQ_IRP_CONTEXT {
                // SAFETY: an IO_CSQ_IRP_CONTEXT, live while its IRP is queued.
                unsafe { (*context.cast::<IoCsqIrpContext>()).irp = std::ptr::null_mut() };
            }
        }
        // SAFETY: as above.
        unsafe { slot.write(std::ptr::null_mut()) };
    }

    /// IoCsqRemoveIrp: the IRP of `context` if it is still queued and not being cancelled.
    pub(crate) fn csq_remove(&self, csq: *mut IoCsq, context: *mut IoCsqIrpContext) -> *mut IRP {
        // SAFETY: the driver's initialized IO_CSQ.
        let queue = unsafe { &*csq };
        let mut irql = 0u8;
        // SAFETY: CsqAcquireLock's contract.
        unsafe { (queue.acquire)(csq, &mut irql) };
        // SAFETY: the caller's context from IoCsqInsertIrp.
        let irp = unsafe { (*context).irp };
        let removed = if irp.is_null() {
            irp
        } else {
            let irp = IrpPtr(irp);
            if irp
                .cancel_routine()
                .swap(std::ptr::null_mut(), Ordering::AcqRel)
                .is_null()
            {
                // The cancel routine owns it now.
                std::ptr::null_mut()
            } else {
                // SAFETY: CsqRemoveIrp's contract, lock held.
                unsafe { (queue.remove)(csq, irp.0) };
                self.csq_unlink(irp);
                irp.0
            }
        };
        // SAFETY: CsqReleaseLock's contract.
        unsafe { (queue.release)(csq, irql) };
        removed
    }

    /// IoCsqRemoveNextIrp: the first queued IRP matching `peek_context` that is not being
    /// cancelled.
    pub(crate) fn csq_remove_next(&self, csq: *mut IoCsq, peek_context: *mut c_void) -> *mut IRP {
        // SAFETY: the driver's initialized IO_CSQ.
        let queue = unsafe { &*csq };
        let mut irql = 0u8;
        // SAFETY: CsqAcquireLock's contract.
        unsafe { (queue.acquire)(csq, &mut irql) };
        // SAFETY: CsqPeekNextIrp's contract, lock held.
        let mut next = unsafe { (queue.peek)(csq, std::ptr::null_mut(), peek_context) };
        while !next.is_null() {
            let irp = IrpPtr(next);
            if !irp
                .cancel_routine()
                .swap(std::ptr::null_mut(), Ordering::AcqRel)
                .is_null()
            {
                // SAFETY: CsqRemoveIrp's contract, lock held.
                unsafe { (queue.remove)(csq, next) };
                self.csq_unlink(irp);
                break;
            }
            // SAFETY: CsqPeekNextIrp's contract, lock held.
            next = unsafe { (queue.peek)(csq, next, peek_context) };
        }
        // SAFETY: CsqReleaseLock's contract.
        unsafe { (queue.release)(csq, irql) };
        next
    }
}

/// IoCsqInitialize / IoCsqInitializeEx: fills the IO_CSQ.
///
/// # Safety
///
/// `csq` points to a writable IO_CSQ; the routines have the IoCsq callback prototypes.
pub unsafe fn initialize(csq: *mut IoCsq, ex: bool, routines: [usize; 6]) -> i32 {
    let [insert, remove, peek, acquire, release, complete] = routines;
    if csq.is_null() || routines.contains(&0) {
        return 0xC000_000Du32 as i32;
    }
    // SAFETY (each transmute): the caller's promise: every routine is non-null and has the
    // IoCsq callback prototype of its position.
    let queue = IoCsq {
        kind: if ex { IO_TYPE_CSQ_EX } else { IO_TYPE_CSQ },
        insert,
        // SAFETY: see above.
        remove: unsafe {
            std::mem::transmute::<usize, unsafe extern "win64" fn(*mut IoCsq, *mut IRP)>(remove)
        },
        // SAFETY: see above.
        peek: unsafe {
            std::mem::transmute::<
                usize,
                unsafe extern "win64" fn(*mut IoCsq, *mut IRP, *mut c_void) -> *mut IRP,
            >(peek)
        },
        // SAFETY: see above.
        acquire: unsafe {
            std::mem::transmute::<usize, unsafe extern "win64" fn(*mut IoCsq, *mut u8)>(acquire)
        },
        // SAFETY: see above.
        release: unsafe {
            std::mem::transmute::<usize, unsafe extern "win64" fn(*mut IoCsq, u8)>(release)
        },
        // SAFETY: see above.
        complete_canceled: unsafe {
            std::mem::transmute::<usize, unsafe extern "win64" fn(*mut IoCsq, *mut IRP)>(complete)
        },
        reserve: std::ptr::null_mut(),
    };
    // SAFETY: the caller's promise: `csq` is a writable IO_CSQ.
    unsafe { csq.write(queue) };
    STATUS_SUCCESS
}

/// IopCsqCancelRoutine: the cancel routine IoCsq arms on every queued IRP.
unsafe extern "win64" fn csq_cancel_routine(_device: *mut c_void, irp: *mut IRP) {
    let kernel = kernel();
    let irp = IrpPtr(irp);
    // SAFETY: IoCancelIrp called us with the live IRP and set CancelIrql.
    let cancel_irql = unsafe { irp.header() }.CancelIrql;
    kernel.release_cancel_lock(cancel_irql);
    // SAFETY: IoCancelIrp passed a live IRP that IoCsqInsertIrp queued.
    let context = unsafe { driver_context3(irp).read() };
    // SAFETY: DriverContext[3] holds the IO_CSQ or an IO_CSQ_IRP_CONTEXT (type first).
    let csq = if unsafe { context.cast::<u32>().read() } == IO_TYPE_CSQ_IRP_CONTEXT {
        // SAFETY: an IO_CSQ_IRP_CONTEXT.
        unsafe { (*context.cast::<IoCsqIrpContext>()).csq }
    } else {
        context.cast::<IoCsq>()
    };
    // SAFETY: the IO_CSQ the IRP was queued on.
    let queue = unsafe { &*csq };
    let mut irql = 0u8;
    // SAFETY: CsqAcquireLock's contract.
    unsafe { (queue.acquire)(csq, &mut irql) };
    // SAFETY: CsqRemoveIrp's contract, lock held.
    unsafe { (queue.remove)(csq, irp.0) };
    kernel.csq_unlink(irp);
    // SAFETY: CsqReleaseLock's contract.
    unsafe { (queue.release)(csq, irql) };
    // SAFETY: CsqCompleteCanceledIrp's contract.
    unsafe { (queue.complete_canceled)(csq, irp.0) };
}
