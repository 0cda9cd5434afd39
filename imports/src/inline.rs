//! The `FORCEINLINE` helpers of wdm.h and storport.h, written out (the WDK exports none of them).
#![allow(non_snake_case)]

use core::sync::atomic::{AtomicPtr, AtomicU8, Ordering};

use storport_abi::{
    BOOLEAN, BUS_CHANGE_DETECTED, DEVICE_OBJECT, DRIVER_CANCEL, EXT_FUNCTION_COMPLETE_SERVICE_IRP,
    EXT_FUNCTION_FREE_TIMER, EXT_FUNCTION_INITIALIZE_TIMER, EXT_FUNCTION_REQUEST_TIMER,
    HW_DPC_ROUTINE, HW_TIMER, HW_TIMER_EX, INITIALIZE_DPC, IO_COMPLETION_ROUTINE,
    IO_STACK_LOCATION, IRP, ISSUE_DPC, NTSTATUS, PVOID, REQUEST_COMPLETE, REQUEST_TIMER_CALL,
    SCSI_REQUEST_BLOCK, SL_INVOKE_ON_CANCEL, SL_INVOKE_ON_ERROR, SL_INVOKE_ON_SUCCESS, STOR_DPC,
};

use crate::storport::{StorPortExtendedFunction, StorPortNotification};
use storport_abi::status::STATUS_MORE_PROCESSING_REQUIRED;

/// `IoGetCurrentIrpStackLocation`.
///
/// # Safety
///
/// `irp` points to a live IRP the caller owns.
#[inline]
pub unsafe fn IoGetCurrentIrpStackLocation(irp: *mut IRP) -> *mut IO_STACK_LOCATION {
    // SAFETY: the caller guarantees `irp` is live; the field is plain data the owner may read.
    unsafe { (*irp).CurrentStackLocation }
}

/// `IoGetNextIrpStackLocation`: the location the driver below will own.
///
/// # Safety
///
/// `irp` points to a live IRP the caller owns, with a location below the current one.
#[inline]
pub unsafe fn IoGetNextIrpStackLocation(irp: *mut IRP) -> *mut IO_STACK_LOCATION {
    // SAFETY: as for IoGetCurrentIrpStackLocation; the next location is one below, inside the
    // IRP (the caller's promise).
    unsafe { (*irp).CurrentStackLocation.wrapping_sub(1) }
}

/// `IoSetCompletionRoutine(irp, routine, context, TRUE, TRUE, TRUE)`: `routine` is called on
/// success, error and cancellation when the driver below completes the IRP.
///
/// # Safety
///
/// As for [`IoGetNextIrpStackLocation`]; `context` stays valid until the routine has run.
#[inline]
pub unsafe fn IoSetCompletionRoutine(
    irp: *mut IRP,
    routine: IO_COMPLETION_ROUTINE,
    context: PVOID,
) {
    // SAFETY: the caller's promise: a live, owned IRP with a next location.
    let next = unsafe { IoGetNextIrpStackLocation(irp) };
    // SAFETY: that location is inside the IRP and the caller's to fill.
    let next = unsafe { &mut *next };
    next.CompletionRoutine = routine as PVOID;
    next.Context = context;
    next.Control = SL_INVOKE_ON_SUCCESS | SL_INVOKE_ON_ERROR | SL_INVOKE_ON_CANCEL;
}

/// An IO_COMPLETION_ROUTINE for a request its sender waits for: sets the KEVENT its context
/// points to and keeps the IRP (STATUS_MORE_PROCESSING_REQUIRED), as the routine of
/// `IoForwardIrpSynchronously` does. The waiter then owns the IRP again.
///
/// # Safety
///
/// `event` is an initialised KEVENT that lives until the waiter has woken.
pub unsafe extern "win64" fn set_event_keep_irp(
    _device: *mut DEVICE_OBJECT,
    _irp: *mut IRP,
    event: PVOID,
) -> NTSTATUS {
    // SAFETY: the waiter's event (the caller's promise).
    unsafe { crate::ntoskrnl::KeSetEvent(event.cast(), 0, 0) };
    STATUS_MORE_PROCESSING_REQUIRED
}

/// `IoSetCancelRoutine`: an interlocked exchange returning the previous routine.
///
/// # Safety
///
/// `irp` points to a live IRP the caller owns (not yet completed).
#[inline]
pub unsafe fn IoSetCancelRoutine(
    irp: *mut IRP,
    routine: Option<DRIVER_CANCEL>,
) -> Option<DRIVER_CANCEL> {
    let new = routine.map_or(core::ptr::null_mut(), |f| f as *mut ());
    // SAFETY: the caller guarantees `irp` is live; this only forms the field's address.
    let field = unsafe { &raw mut (*irp).CancelRoutine }.cast::<*mut ()>();
    // SAFETY: the field is pointer-sized and 8-aligned (IRP+0x68, asserted in storport-abi), live
    // while the IRP is, and every access to it (ours and IoCancelIrp's) is interlocked.
    let field = unsafe { AtomicPtr::from_ptr(field) };
    let old = field.swap(new, Ordering::SeqCst);
    if old.is_null() {
        None
    } else {
        // SAFETY: a non-null CancelRoutine was stored by IoSetCancelRoutine from a DRIVER_CANCEL.
        Some(unsafe { core::mem::transmute::<*mut (), DRIVER_CANCEL>(old) })
    }
}

/// Reads `Irp->Cancel`, which IoCancelIrp sets from another CPU.
///
/// # Safety
///
/// `irp` points to a live IRP the caller owns.
#[inline]
pub unsafe fn IrpCancelRequested(irp: *mut IRP) -> bool {
    // SAFETY: the caller guarantees `irp` is live; this only forms the field's address.
    let cancel = unsafe { &raw mut (*irp).Cancel };
    // SAFETY: a live IRP's `Cancel` byte; IoCancelIrp writes it before its interlocked exchange
    // of CancelRoutine, so reading it after our own exchange observes it (x64 ordering).
    let cancel = unsafe { AtomicU8::from_ptr(cancel) };
    cancel.load(Ordering::SeqCst) != 0
}

/// `StorPortCompleteServiceIrp` = `StorPortExtendedFunction(ExtFunctionCompleteServiceIrp, ext, Irp)`.
///
/// # Safety
///
/// `ext` is the adapter's HwDeviceExtension and `irp` a service IRP Storport handed to this
/// adapter's HwProcessServiceRequest and not yet completed. The IRP must not be touched after.
#[inline]
pub unsafe fn StorPortCompleteServiceIrp(ext: PVOID, irp: *mut IRP) -> u32 {
    // SAFETY: the caller's contract is the DDI's; code 7 takes exactly one pointer argument.
    unsafe { StorPortExtendedFunction(EXT_FUNCTION_COMPLETE_SERVICE_IRP, ext, irp) }
}

/// `StorPortInitializeTimer(ext, &TimerHandle)`: a timer of the adapter's own beside the
/// RequestTimerCall one; STOR_STATUS.
///
/// # Safety
///
/// `ext` is the adapter's HwDeviceExtension; at most DISPATCH_LEVEL; `handle` writable.
#[inline]
pub unsafe fn StorPortInitializeTimer(ext: PVOID, handle: *mut PVOID) -> u32 {
    // SAFETY: the caller's contract is the DDI's; code 32 takes the handle's address.
    unsafe { StorPortExtendedFunction(EXT_FUNCTION_INITIALIZE_TIMER, ext, handle) }
}

/// `StorPortRequestTimer(ext, TimerHandle, Callback, Context, TimerValue µs, TolerableDelay µs)`:
/// calls `callback` once after `delay_us`, replacing a pending request; STOR_STATUS.
///
/// # Safety
///
/// `handle` came from [`StorPortInitializeTimer`] for `ext` and was not freed.
#[inline]
pub unsafe fn StorPortRequestTimer(
    ext: PVOID,
    handle: PVOID,
    callback: HW_TIMER_EX,
    context: PVOID,
    delay_us: u64,
    tolerable_us: u64,
) -> u32 {
    // SAFETY: the caller's contract is the DDI's; code 33 takes the handle, a PHW_TIMER_EX,
    // a context pointer and two ULONGLONGs.
    unsafe {
        StorPortExtendedFunction(
            EXT_FUNCTION_REQUEST_TIMER,
            ext,
            handle,
            callback,
            context,
            delay_us,
            tolerable_us,
        )
    }
}

/// `StorPortFreeTimer(ext, TimerHandle)`: cancels and frees it; STOR_STATUS.
///
/// # Safety
///
/// `handle` came from [`StorPortInitializeTimer`] for `ext`; it is not used afterwards.
#[inline]
pub unsafe fn StorPortFreeTimer(ext: PVOID, handle: PVOID) -> u32 {
    // SAFETY: the caller's contract is the DDI's; code 34 takes the handle.
    unsafe { StorPortExtendedFunction(EXT_FUNCTION_FREE_TIMER, ext, handle) }
}

/// `StorPortNotification(RequestComplete, ext, Srb)`.
///
/// # Safety
///
/// `srb` is an SRB Storport passed to this adapter's HwStartIo, not yet completed.
#[inline]
pub unsafe fn StorPortRequestComplete(ext: PVOID, srb: *mut SCSI_REQUEST_BLOCK) {
    // SAFETY: the caller's contract is the DDI's; RequestComplete takes one SRB pointer.
    unsafe { StorPortNotification(REQUEST_COMPLETE, ext, srb) }
}

/// `StorPortNotification(BusChangeDetected, ext, PathId)`: a logical unit appeared or went
/// away on bus `path_id`; Storport rescans it.
///
/// # Safety
///
/// `ext` is the adapter's HwDeviceExtension.
#[inline]
pub unsafe fn StorPortBusChangeDetected(ext: PVOID, path_id: u8) {
    // SAFETY: the caller's contract is the DDI's; BusChangeDetected takes the path id (a
    // UCHAR, promoted through the variadic call).
    unsafe { StorPortNotification(BUS_CHANGE_DETECTED, ext, u32::from(path_id)) }
}

/// `StorPortNotification(RequestTimerCall, ext, HwTimer, MiniportTimerValue)`: calls `timer`
/// once after `delay_us` microseconds; 0 cancels the pending call.
///
/// # Safety
///
/// `ext` is the adapter's HwDeviceExtension.
#[inline]
pub unsafe fn StorPortRequestTimerCall(ext: PVOID, timer: HW_TIMER, delay_us: u32) {
    // SAFETY: the caller's contract is the DDI's; RequestTimerCall takes a PHW_TIMER and a ULONG.
    unsafe { StorPortNotification(REQUEST_TIMER_CALL, ext, timer, delay_us) }
}

/// `StorPortInitializeDpc` = `StorPortNotification(InitializeDpc, ext, Dpc, HwDpcRoutine)`.
///
/// # Safety
///
/// `ext` is the adapter's HwDeviceExtension and `dpc` lives in it, not queued.
#[inline]
pub unsafe fn StorPortInitializeDpc(ext: PVOID, dpc: *mut STOR_DPC, routine: HW_DPC_ROUTINE) {
    // SAFETY: the caller's contract is the DDI's; InitializeDpc takes a PSTOR_DPC and a
    // PHW_DPC_ROUTINE.
    unsafe { StorPortNotification(INITIALIZE_DPC, ext, dpc, routine) }
}

/// `StorPortIssueDpc` = `StorPortNotification(IssueDpc, ext, Dpc, Arg1, Arg2, &Succ)` with
/// null system arguments; false if the DPC was already queued (it then runs once, for both).
///
/// # Safety
///
/// `dpc` was initialized with [`StorPortInitializeDpc`] for the adapter `ext`.
#[inline]
pub unsafe fn StorPortIssueDpc(ext: PVOID, dpc: *mut STOR_DPC) -> bool {
    let mut queued: BOOLEAN = 0;
    let none = core::ptr::null_mut::<core::ffi::c_void>();
    // SAFETY: the caller's contract is the DDI's; IssueDpc takes the DPC, two system
    // arguments and a PBOOLEAN it writes before returning.
    unsafe { StorPortNotification(ISSUE_DPC, ext, dpc, none, none, &raw mut queued) };
    queued != 0
}
