//! One METHOD_BUFFERED service IOCTL in an IRP the caller owns: the stack location the adapter
//! will find, and the pool the IRP and its buffer come from.

use core::ffi::c_void;

use nt_imports::inline::{IoGetNextIrpStackLocation, IoSetCompletionRoutine};
use nt_imports::ntoskrnl::{ExAllocatePool2, ExFreePoolWithTag};
use revcall_protocol::IOCTL_MINIPORT_PROCESS_SERVICE_IRP;
use storport_abi::{
    IO_COMPLETION_ROUTINE, IRP, IRP_MJ_DEVICE_CONTROL, NTSTATUS, POOL_FLAG_NON_PAGED,
};

use crate::adapter::Adapter;

/// Pool tag of everything this crate allocates ("RvKc").
pub const TAG: u32 = u32::from_le_bytes(*b"RvKc");

/// `size` bytes of nonpaged pool, or NULL. IRQL ≤ DISPATCH_LEVEL.
pub fn allocate(size: usize) -> *mut u8 {
    // SAFETY: plain arguments; the block is the caller's until `free`.
    unsafe { ExAllocatePool2(POOL_FLAG_NON_PAGED, size, TAG) }.cast()
}

/// Frees a block from [`allocate`].
///
/// # Safety
///
/// `block` came from [`allocate`], is freed once and not used after.
pub unsafe fn free(block: *mut u8) {
    // SAFETY: the caller's promise.
    unsafe { ExFreePoolWithTag(block.cast(), TAG) }
}

/// Lays out the next stack location of `irp` for the service IOCTL: `input` bytes of request
/// already in `buffer`, up to `output` bytes of reply to come back in it, the adapter's file
/// object, and `routine(context)` on every outcome.
///
/// # Safety
///
/// `irp` is a fresh or reused IRP the caller owns with at least the adapter's StackSize
/// locations, `buffer` holds max(input, output) bytes and stays valid, with `context`, until
/// `routine` has run.
pub unsafe fn prepare(
    irp: *mut IRP,
    adapter: &Adapter,
    buffer: *mut u8,
    input: u32,
    output: u32,
    routine: IO_COMPLETION_ROUTINE,
    context: *mut c_void,
) {
    // SAFETY: the caller owns the IRP; METHOD_BUFFERED: the SystemBuffer carries both ways.
    unsafe {
        (*irp).SystemBuffer = buffer.cast();
    }
    // SAFETY: the IRP has a location below the current one (StackSize ≥ 1, none used yet).
    let next = unsafe { IoGetNextIrpStackLocation(irp) };
    // SAFETY: that location is inside the IRP and ours to fill.
    let next = unsafe { &mut *next };
    next.MajorFunction = IRP_MJ_DEVICE_CONTROL;
    next.MinorFunction = 0;
    next.IoControlCode = IOCTL_MINIPORT_PROCESS_SERVICE_IRP;
    next.InputBufferLength = input;
    next.OutputBufferLength = output;
    next.FileObject = adapter.file().cast();
    // SAFETY: as above; the routine and context outlive the trip (the caller's promise).
    unsafe { IoSetCompletionRoutine(irp, routine, context) };
}

/// The IRP's final status and Information.
///
/// # Safety
///
/// The IRP is the caller's again (its completion routine is running or has run).
pub unsafe fn outcome(irp: *mut IRP) -> (NTSTATUS, usize) {
    // SAFETY: the caller's promise: an owned IRP whose status block is final.
    let status = unsafe { &(*irp).IoStatus };
    (status.Status, status.Information)
}
