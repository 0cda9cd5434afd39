//! Cancel-safe IRP queues (IoCsq*), the kernel's algorithm (docs/VERIFIER-NOTES.md §5.3, ReactOS
//! csq.c for the detail): the driver supplies the queue and its lock; the I/O manager owns the
//! cancel routine and the race between cancellation and removal.

use std::ffi::c_void;
use std::sync::atomic::Ordering;

use storport_abi::IRP;

use crate::io::IrpPtr;
use crate::io::irp::{SL_PENDING_RETURNED, header, location};
use crate::kernel::{Kernel, kernel};
use storport_abi::status::STATUS_SUCCESS;

const IO_TYPE_CSQ_IRP_CONTEXT: u32 = 1;
const IO_TYPE_CSQ: u32 = 2;
const IO_TYPE_CSQ_EX: u32 = 3;

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
        // SAFETY: an IO_CSQ_EX stores a CsqInsertIrpEx.
        let insert: InsertIrpEx = unsafe { std::mem::transmute(queue.insert) };
        // SAFETY: CsqInsertIrpEx's contract, lock held.
        unsafe { insert(csq, irp.as_ptr(), insert_context) }
    } else {
        // SAFETY: an IO_CSQ stores a CsqInsertIrp.
        let insert: InsertIrp = unsafe { std::mem::transmute(queue.insert) };
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
    let removed = match kernel.io().irp_in_flight(irp as usize) {
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
    while let Some(irp) = kernel.io().irp_in_flight(next as usize) {
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
    let Some(irp) = kernel.io().irp_in_flight(irp as usize) else {
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
