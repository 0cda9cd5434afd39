//! Raw access to an IRP in the real x64 layout (STORPORT.md §1.6): the header (0xD0 bytes)
//! followed by `StackCount` IO_STACK_LOCATIONs (0x48 each).

use std::ffi::c_void;
use std::mem::{offset_of, size_of};
use std::sync::atomic::{AtomicPtr, AtomicU8};

use storport_abi::{IO_STACK_LOCATION, IRP};

/// `IO_TYPE_IRP`.
pub const IO_TYPE_IRP: i16 = 6;
pub const IRP_MJ_DEVICE_CONTROL: u8 = 0x0E;
pub const SL_PENDING_RETURNED: u8 = 0x01;
pub const SL_ERROR_RETURNED: u8 = 0x02;
pub const SL_INVOKE_ON_CANCEL: u8 = 0x20;
pub const SL_INVOKE_ON_SUCCESS: u8 = 0x40;
pub const SL_INVOKE_ON_ERROR: u8 = 0x80;
pub const IRP_BUFFERED_IO: u32 = 0x10;
pub const IRP_DEALLOCATE_BUFFER: u32 = 0x20;
pub const IRP_INPUT_OPERATION: u32 = 0x40;
pub const USER_MODE: i8 = 1;
pub const KERNEL_MODE: i8 = 0;

/// An IO_COMPLETION_ROUTINE.
pub type CompletionRoutine =
    unsafe extern "win64" fn(device: *mut c_void, irp: *mut IRP, context: *mut c_void) -> i32;

const _: () = {
    assert!(size_of::<IRP>() == 0xD0);
    assert!(size_of::<IO_STACK_LOCATION>() == 0x48);
    assert!(offset_of!(IRP, SystemBuffer) == 0x18);
    assert!(offset_of!(IRP, IoStatus) == 0x30);
    assert!(offset_of!(IRP, PendingReturned) == 0x41);
    assert!(offset_of!(IRP, StackCount) == 0x42);
    assert!(offset_of!(IRP, CurrentLocation) == 0x43);
    assert!(offset_of!(IRP, Cancel) == 0x44);
    assert!(offset_of!(IRP, CancelIrql) == 0x45);
    assert!(offset_of!(IRP, CancelRoutine) == 0x68);
    assert!(offset_of!(IRP, DriverContext) == 0x78);
    assert!(offset_of!(IRP, Thread) == 0x98);
    assert!(offset_of!(IRP, ListEntry) == 0xA8);
    assert!(offset_of!(IRP, CurrentStackLocation) == 0xB8);
    assert!(offset_of!(IRP, OriginalFileObject) == 0xC0);
    assert!(offset_of!(IO_STACK_LOCATION, Control) == 0x03);
    assert!(offset_of!(IO_STACK_LOCATION, OutputBufferLength) == 0x08);
    assert!(offset_of!(IO_STACK_LOCATION, InputBufferLength) == 0x10);
    assert!(offset_of!(IO_STACK_LOCATION, IoControlCode) == 0x18);
    assert!(offset_of!(IO_STACK_LOCATION, DeviceObject) == 0x28);
    assert!(offset_of!(IO_STACK_LOCATION, FileObject) == 0x30);
    assert!(offset_of!(IO_STACK_LOCATION, CompletionRoutine) == 0x38);
    assert!(offset_of!(IO_STACK_LOCATION, Context) == 0x40);
};

/// Bytes of an IRP with `stack_count` locations (`IoSizeOfIrp`).
pub const fn irp_size(stack_count: u8) -> usize {
    size_of::<IRP>() + stack_count as usize * size_of::<IO_STACK_LOCATION>()
}

/// A pointer to an IRP storsim allocated.
///
/// # Invariants
///
/// Points to a live, zero-initialised-at-allocation IRP block of `irp_size(StackCount)`
/// bytes that the I/O manager's registry lists as not yet freed; callers hold that fact (the
/// registry lookup or the allocation that made it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrpPtr(pub *mut IRP);

impl IrpPtr {
    pub fn addr(self) -> usize {
        self.0 as usize
    }

    /// Lays out a fresh IRP as IoInitializeIrp does: `CurrentLocation = StackCount + 1`.
    pub fn initialize(self, stack_count: u8) {
        // SAFETY: type invariant: a live block of irp_size(stack_count) bytes.
        unsafe { std::ptr::write_bytes(self.0.cast::<u8>(), 0, irp_size(stack_count)) };
        // SAFETY: as above; the header fields are plain integers.
        let irp = unsafe { &mut *self.0 };
        irp.Type = IO_TYPE_IRP;
        irp.Size = irp_size(stack_count) as u16;
        irp.StackCount = stack_count as i8;
        irp.CurrentLocation = stack_count as i8 + 1;
        irp.CurrentStackLocation = self.location_ptr(stack_count as i8 + 1);
    }

    /// Location `n` (1-based; `StackCount + 1` is one past the last, as on a fresh IRP).
    pub fn location_ptr(self, n: i8) -> *mut IO_STACK_LOCATION {
        let offset = size_of::<IRP>() + (n as isize - 1) as usize * size_of::<IO_STACK_LOCATION>();
        self.0.cast::<u8>().wrapping_add(offset).cast()
    }

    /// The header, for fields only the current owner writes.
    ///
    /// # Safety
    ///
    /// No other thread may write the same fields while the reference lives.
    pub unsafe fn header(self) -> &'static mut IRP {
        // SAFETY: type invariant (live block); exclusivity is the caller's promise.
        unsafe { &mut *self.0 }
    }

    /// The current stack location (what `IoGetCurrentIrpStackLocation` returns).
    ///
    /// # Safety
    ///
    /// As for [`IrpPtr::header`], and `CurrentLocation` must be within `1..=StackCount`.
    pub unsafe fn current(self) -> &'static mut IO_STACK_LOCATION {
        // SAFETY: the caller's promise.
        let location = unsafe { self.header() }.CurrentLocation;
        // SAFETY: 1 ≤ location ≤ StackCount (caller), so the location lies inside the block.
        unsafe { &mut *self.location_ptr(location) }
    }

    /// `IoCallDriver`'s step down: the next location becomes current.
    pub fn step_down(self) {
        // SAFETY: type invariant; the sender owns the IRP until the dispatch routine runs.
        let irp = unsafe { self.header() };
        irp.CurrentLocation -= 1;
        irp.CurrentStackLocation = self.location_ptr(irp.CurrentLocation);
    }

    /// `Irp->CancelRoutine`, read and swapped atomically as IoSetCancelRoutine does.
    pub fn cancel_routine(self) -> &'static AtomicPtr<c_void> {
        // SAFETY: type invariant; the field is pointer-aligned (offset 0x68 of a 16-aligned
        // block) and only ever accessed atomically by storsim and by the driver's
        // InterlockedExchangePointer.
        unsafe {
            &*self
                .0
                .cast::<u8>()
                .wrapping_add(offset_of!(IRP, CancelRoutine))
                .cast::<AtomicPtr<c_void>>()
        }
    }

    /// `Irp->Cancel`, which IoCancelIrp sets while the driver may be reading it.
    pub fn cancel_flag(self) -> &'static AtomicU8 {
        // SAFETY: type invariant; a byte field, accessed atomically by storsim.
        unsafe {
            &*self
                .0
                .cast::<u8>()
                .wrapping_add(offset_of!(IRP, Cancel))
                .cast::<AtomicU8>()
        }
    }
}

// SAFETY: an IRP is handed between threads by design; the registry in `io` serialises who
// may touch which fields.
unsafe impl Send for IrpPtr {}
// SAFETY: as above.
unsafe impl Sync for IrpPtr {}
