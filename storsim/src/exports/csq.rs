//! Cancel-safe IRP queues (IoCsq*), the kernel's algorithm (docs/VERIFIER-NOTES.md §5.3, ReactOS
//! csq.c for the detail): the driver supplies the queue and its lock; the I/O manager owns the
//! cancel routine and the race between cancellation and removal.

use std::ffi::c_void;
use std::sync::atomic::Ordering;

use storport_abi::IRP;

use crate::io::IrpPtr;
use crate::io::irp::{SL_PENDING_RETURNED, header, location};
use crate::kernel::{Kernel, kernel};
use storport_abi::status::{STATUS_INVALID_PARAMETER, STATUS_SUCCESS};

const IO_TYPE_CSQ_IRP_CONTEXT: u32 = 1;
const IO_TYPE_CSQ: u32 = 2;
const IO_TYPE_CSQ_EX: u32 = 3;

/// The IoCsq callbacks (wdm.h).
pub type InsertIrp = unsafe extern "win64" fn(*mut IoCsq, *mut IRP);
pub type InsertIrpEx = unsafe extern "win64" fn(*mut IoCsq, *mut IRP, *mut c_void) -> i32;
pub type RemoveIrp = unsafe extern "win64" fn(*mut IoCsq, *mut IRP);
pub type PeekNextIrp = unsafe extern "win64" fn(*mut IoCsq, *mut IRP, *mut c_void) -> *mut IRP;
pub type AcquireLock = unsafe extern "win64" fn(*mut IoCsq, *mut u8);
pub type ReleaseLock = unsafe extern "win64" fn(*mut IoCsq, u8);
pub type CompleteCanceledIrp = unsafe extern "win64" fn(*mut IoCsq, *mut IRP);

/// The insert routine: which prototype is `IoCsq::kind`'s to say.
#[repr(C)]
#[derive(Clone, Copy)]
pub union Insert {
    pub plain: InsertIrp,
    pub ex: InsertIrpEx,
}

/// `IO_CSQ` (0x40 bytes): the driver's callbacks.
#[repr(C)]
pub struct IoCsq {
    pub kind: u32,
    pub insert: Insert,
    pub remove: RemoveIrp,
    pub peek: PeekNextIrp,
    pub acquire: AcquireLock,
    pub release: ReleaseLock,
    pub complete_canceled: CompleteCanceledIrp,
    pub reserve: *mut c_void,
}

/// The routines IoCsqInitialize(Ex) receives, NULL or not.
pub struct Routines {
    pub insert: Option<Insert>,
    pub remove: Option<RemoveIrp>,
    pub peek: Option<PeekNextIrp>,
    pub acquire: Option<AcquireLock>,
    pub release: Option<ReleaseLock>,
    pub complete_canceled: Option<CompleteCanceledIrp>,
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

/// IoCsqInsertIrpEx: queue, mark pending, arm the cancel routine; if the IRP was cancelled
/// meanwhile, take it back out and hand it to CsqCompleteCanceledIrp.
pub(super) fn csq_insert(
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
        // SAFETY: IoCsqInitializeEx made this queue (kind IO_TYPE_CSQ_EX) and stored the
        // driver's CsqInsertIrpEx in the `ex` field.
        let insert = unsafe { queue.insert.ex };
        // SAFETY: CsqInsertIrpEx's contract, lock held.
        unsafe { insert(csq, irp.as_ptr(), insert_context) }
    } else {
        // SAFETY: IoCsqInitialize made this queue (kind IO_TYPE_CSQ) and stored the driver's
        // CsqInsertIrp in the `plain` field.
        let insert = unsafe { queue.insert.plain };
        // SAFETY: CsqInsertIrp's contract, lock held.
        unsafe { insert(csq, irp.as_ptr()) };
        STATUS_SUCCESS
    };
    if status >= 0 {
        // IoMarkIrpPending on the driver's (current) location.
        if let Some(current) = irp.current() {
            let control = irp.get_at(current, location::CONTROL);
            irp.set_at(current, location::CONTROL, control | SL_PENDING_RETURNED);
        }
        let owner = if context.is_null() {
            csq.cast()
        } else {
            // SAFETY: the caller's IO_CSQ_IRP_CONTEXT, live while the IRP is queued.
            let context_ref = unsafe { &mut *context };
            context_ref.kind = IO_TYPE_CSQ_IRP_CONTEXT;
            context_ref.irp = irp.as_ptr();
            context_ref.csq = csq;
            context.cast()
        };
        // The IRP is being queued: DriverContext[3] is the queue's now.
        irp.set(header::DRIVER_CONTEXT3, owner);
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
            unsafe { (queue.remove)(csq, irp.as_ptr()) };
            csq_unlink(&irp);
            // SAFETY: CsqReleaseLock's contract.
            unsafe { (queue.release)(csq, irql) };
            // SAFETY: CsqCompleteCanceledIrp's contract, lock not held.
            unsafe { (queue.complete_canceled)(csq, irp.as_ptr()) };
            return status;
        }
    }
    // SAFETY: CsqReleaseLock's contract.
    unsafe { (queue.release)(csq, irql) };
    status
}

/// Forgets the queue's DriverContext[3] of an IRP leaving it (and its IO_CSQ_IRP_CONTEXT's
/// IRP pointer).
fn csq_unlink(irp: &IrpPtr) {
    let context = irp.get(header::DRIVER_CONTEXT3);
    if !context.is_null() {
        // SAFETY: DriverContext[3] holds either the IO_CSQ or an IO_CSQ_IRP_CONTEXT, both
        // starting with their u32 type.
        if unsafe { context.cast::<u32>().read() } == IO_TYPE_CSQ_IRP_CONTEXT {
            // SAFETY: an IO_CSQ_IRP_CONTEXT, live while its IRP is queued.
            unsafe { (*context.cast::<IoCsqIrpContext>()).irp = std::ptr::null_mut() };
        }
    }
    irp.set(header::DRIVER_CONTEXT3, std::ptr::null_mut());
}

/// IoCsqRemoveIrp: the IRP of `context` if it is still queued and not being cancelled.
pub(super) fn csq_remove(
    kernel: &Kernel,
    csq: *mut IoCsq,
    context: *mut IoCsqIrpContext,
) -> *mut IRP {
    // SAFETY: the driver's initialized IO_CSQ.
    let queue = unsafe { &*csq };
    let mut irql = 0u8;
    // SAFETY: CsqAcquireLock's contract.
    unsafe { (queue.acquire)(csq, &mut irql) };
    // SAFETY: the caller's context from IoCsqInsertIrp.
    let irp = unsafe { (*context).irp };
    // SAFETY: a queued IRP belongs to the queue, whose lock is held: neither its cancel
    // routine (which takes the lock first) nor anyone else completes it meanwhile.
    let removed = match unsafe { kernel.io().irp_in_flight(irp as usize) } {
        None => std::ptr::null_mut(),
        Some(irp) => {
            if irp
                .cancel_routine()
                .swap(std::ptr::null_mut(), Ordering::AcqRel)
                .is_null()
            {
                // The cancel routine owns it now.
                std::ptr::null_mut()
            } else {
                // SAFETY: CsqRemoveIrp's contract, lock held.
                unsafe { (queue.remove)(csq, irp.as_ptr()) };
                csq_unlink(&irp);
                irp.as_ptr()
            }
        }
    };
    // SAFETY: CsqReleaseLock's contract.
    unsafe { (queue.release)(csq, irql) };
    removed
}

/// IoCsqRemoveNextIrp: the first queued IRP matching `peek_context` that is not being
/// cancelled.
pub(super) fn csq_remove_next(
    kernel: &Kernel,
    csq: *mut IoCsq,
    peek_context: *mut c_void,
) -> *mut IRP {
    // SAFETY: the driver's initialized IO_CSQ.
    let queue = unsafe { &*csq };
    let mut irql = 0u8;
    // SAFETY: CsqAcquireLock's contract.
    unsafe { (queue.acquire)(csq, &mut irql) };
    // SAFETY: CsqPeekNextIrp's contract, lock held.
    let mut next = unsafe { (queue.peek)(csq, std::ptr::null_mut(), peek_context) };
    // SAFETY: each IRP the peek routine returns is queued, and the queue's lock is held: no
    // one completes it meanwhile.
    while let Some(irp) = unsafe { kernel.io().irp_in_flight(next as usize) } {
        if !irp
            .cancel_routine()
            .swap(std::ptr::null_mut(), Ordering::AcqRel)
            .is_null()
        {
            // SAFETY: CsqRemoveIrp's contract, lock held.
            unsafe { (queue.remove)(csq, next) };
            csq_unlink(&irp);
            break;
        }
        // SAFETY: CsqPeekNextIrp's contract, lock held.
        next = unsafe { (queue.peek)(csq, next, peek_context) };
    }
    // SAFETY: CsqReleaseLock's contract.
    unsafe { (queue.release)(csq, irql) };
    next
}

/// IoCsqInitialize / IoCsqInitializeEx: fills the IO_CSQ, or STATUS_INVALID_PARAMETER if the
/// queue or a routine is NULL.
///
/// # Safety
///
/// A non-NULL `csq` points to a writable IO_CSQ.
pub unsafe fn initialize(csq: *mut IoCsq, ex: bool, routines: Routines) -> i32 {
    let Routines {
        insert: Some(insert),
        remove: Some(remove),
        peek: Some(peek),
        acquire: Some(acquire),
        release: Some(release),
        complete_canceled: Some(complete_canceled),
    } = routines
    else {
        return STATUS_INVALID_PARAMETER;
    };
    if csq.is_null() {
        return STATUS_INVALID_PARAMETER;
    }
    let queue = IoCsq {
        kind: if ex { IO_TYPE_CSQ_EX } else { IO_TYPE_CSQ },
        insert,
        remove,
        peek,
        acquire,
        release,
        complete_canceled,
        reserve: std::ptr::null_mut(),
    };
    // SAFETY: non-NULL (checked) and writable (the caller's promise).
    unsafe { csq.write(queue) };
    STATUS_SUCCESS
}

/// IopCsqCancelRoutine: the cancel routine IoCsq arms on every queued IRP.
unsafe extern "win64" fn csq_cancel_routine(_device: *mut c_void, irp: *mut IRP) {
    let kernel = kernel();
    // SAFETY: IoCancelIrp hands the cancel routine the IRP whose routine it swapped out: the
    // routine owns it now, until it completes it.
    let Some(irp) = (unsafe { kernel.io().irp_in_flight(irp as usize) }) else {
        return;
    };
    let cancel_irql = irp.get(header::CANCEL_IRQL);
    kernel.io().release_cancel_lock(cancel_irql);
    let context = irp.get(header::DRIVER_CONTEXT3);
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
    unsafe { (queue.remove)(csq, irp.as_ptr()) };
    csq_unlink(&irp);
    // SAFETY: CsqReleaseLock's contract.
    unsafe { (queue.release)(csq, irql) };
    // SAFETY: CsqCompleteCanceledIrp's contract.
    unsafe { (queue.complete_canceled)(csq, irp.as_ptr()) };
}
