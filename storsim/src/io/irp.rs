//! An IRP in the real x64 layout (docs/STORPORT-NOTES.md §1.6): the header (0xD0 bytes)
//! followed by `StackCount` IO_STACK_LOCATIONs (0x48 each). The layout itself, with its offset
//! assertions, is `storport_abi::IRP`.
//!
//! [`IrpPtr`] is the I/O manager's only way into IRP memory: fields are read and written one
//! at a time through raw pointers (never a `&mut IRP` that would alias the driver's own
//! accesses), and the two fields another CPU may change under us (`Cancel`, `CancelRoutine`)
//! only atomically.

use std::ffi::c_void;
use std::mem::{offset_of, size_of};
use std::sync::atomic::{AtomicPtr, AtomicU8, Ordering};

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

/// Bytes of an IRP with `stack_count` locations (`IoSizeOfIrp`).
pub const fn irp_size(stack_count: u8) -> usize {
    size_of::<IRP>() + stack_count as usize * size_of::<IO_STACK_LOCATION>()
}

/// A field of the IRP header or of one stack location, by offset and type.
#[derive(Clone, Copy)]
pub struct Field<T> {
    offset: usize,
    _type: std::marker::PhantomData<T>,
}

impl<T> Field<T> {
    const fn at(offset: usize) -> Self {
        Self {
            offset,
            _type: std::marker::PhantomData,
        }
    }
}

/// The header fields storsim reads or writes.
pub mod header {
    use super::*;
    pub const TYPE: Field<i16> = Field::at(offset_of!(IRP, Type));
    pub const SIZE: Field<u16> = Field::at(offset_of!(IRP, Size));
    pub const FLAGS: Field<u32> = Field::at(offset_of!(IRP, Flags));
    pub const SYSTEM_BUFFER: Field<*mut c_void> = Field::at(offset_of!(IRP, SystemBuffer));
    pub const STATUS: Field<i32> = Field::at(offset_of!(IRP, IoStatus.Status));
    pub const INFORMATION: Field<usize> = Field::at(offset_of!(IRP, IoStatus.Information));
    pub const REQUESTOR_MODE: Field<i8> = Field::at(offset_of!(IRP, RequestorMode));
    pub const PENDING_RETURNED: Field<u8> = Field::at(offset_of!(IRP, PendingReturned));
    pub const STACK_COUNT: Field<i8> = Field::at(offset_of!(IRP, StackCount));
    pub const CURRENT_LOCATION: Field<i8> = Field::at(offset_of!(IRP, CurrentLocation));
    pub const CANCEL_IRQL: Field<u8> = Field::at(offset_of!(IRP, CancelIrql));
    pub const ORIGINAL_FILE_OBJECT: Field<*mut c_void> =
        Field::at(offset_of!(IRP, OriginalFileObject));
    pub const CURRENT_STACK_LOCATION: Field<*mut IO_STACK_LOCATION> =
        Field::at(offset_of!(IRP, CurrentStackLocation));
    /// `Tail.Overlay.DriverContext[3]`, where IoCsq keeps its context or queue.
    pub const DRIVER_CONTEXT3: Field<*mut c_void> =
        Field::at(offset_of!(IRP, DriverContext) + 3 * size_of::<usize>());
}

/// The stack-location fields storsim reads or writes.
pub mod location {
    use super::*;
    pub const MAJOR_FUNCTION: Field<u8> = Field::at(offset_of!(IO_STACK_LOCATION, MajorFunction));
    pub const CONTROL: Field<u8> = Field::at(offset_of!(IO_STACK_LOCATION, Control));
    pub const OUTPUT_BUFFER_LENGTH: Field<u32> =
        Field::at(offset_of!(IO_STACK_LOCATION, OutputBufferLength));
    pub const INPUT_BUFFER_LENGTH: Field<u32> =
        Field::at(offset_of!(IO_STACK_LOCATION, InputBufferLength));
    pub const IO_CONTROL_CODE: Field<u32> = Field::at(offset_of!(IO_STACK_LOCATION, IoControlCode));
    pub const DEVICE_OBJECT: Field<*mut c_void> =
        Field::at(offset_of!(IO_STACK_LOCATION, DeviceObject));
    pub const FILE_OBJECT: Field<*mut c_void> =
        Field::at(offset_of!(IO_STACK_LOCATION, FileObject));
    pub const COMPLETION_ROUTINE: Field<Option<CompletionRoutine>> =
        Field::at(offset_of!(IO_STACK_LOCATION, CompletionRoutine));
    pub const CONTEXT: Field<*mut c_void> = Field::at(offset_of!(IO_STACK_LOCATION, Context));
}

/// A live IRP that storsim allocated, and the stack size it was allocated with.
///
/// Not `Copy`: each holder got it from [`IrpPtr::new`] under the promise below, so a copy
/// cannot outlive the fact that made it.
#[derive(Debug, PartialEq, Eq)]
pub struct IrpPtr {
    irp: *mut IRP,
    stack_count: u8,
}

// SAFETY: an IRP is handed between threads by design; the I/O manager's registry decides who
// may touch which fields, and the racing ones are accessed atomically.
unsafe impl Send for IrpPtr {}

impl IrpPtr {
    /// # Safety
    ///
    /// `irp` points to an IRP block storsim's pool allocated with `irp_size(stack_count)` bytes
    /// (16-aligned), and stays allocated for as long as the returned value is used: the
    /// caller holds the fact that says so (the I/O manager's registry lists it as in flight or
    /// as its kernel caller's own, or the caller is the allocation that made it).
    pub unsafe fn new(irp: *mut IRP, stack_count: u8) -> Self {
        Self { irp, stack_count }
    }

    pub fn addr(&self) -> usize {
        self.irp as usize
    }

    /// The raw pointer, to hand to driver routines.
    pub fn as_ptr(&self) -> *mut IRP {
        self.irp
    }

    /// Byte offset of location `n` (1-based; `StackCount + 1` is one past the last).
    fn location_offset(n: i8) -> usize {
        size_of::<IRP>() + (n as isize - 1) as usize * size_of::<IO_STACK_LOCATION>()
    }

    /// Address of location `n` (what `CurrentStackLocation` holds; may be one past the end).
    pub fn location_ptr(&self, n: i8) -> *mut IO_STACK_LOCATION {
        self.irp
            .cast::<u8>()
            .wrapping_add(Self::location_offset(n))
            .cast()
    }

    /// The address of `len` bytes at `offset`, checked to lie inside the IRP block.
    fn place<T>(&self, offset: usize) -> *mut T {
        assert!(
            offset + size_of::<T>() <= irp_size(self.stack_count),
            "IRP access at {offset:#x} outside its {}-location block",
            self.stack_count
        );
        self.irp.cast::<u8>().wrapping_add(offset).cast()
    }

    fn read_at<T: Copy>(&self, offset: usize) -> T {
        // SAFETY: type invariant (a live IRP block); `place` keeps the access inside it; every
        // field read this way is naturally aligned in the 16-aligned block and plain data.
        unsafe { self.place::<T>(offset).read() }
    }

    fn write_at<T: Copy>(&self, offset: usize, value: T) {
        // SAFETY: as in `read_at`; the caller is the IRP's current owner for this field
        // (the registry's state says who that is), so no one else writes it meanwhile.
        unsafe { self.place::<T>(offset).write(value) }
    }

    /// A header field.
    pub fn get<T: Copy>(&self, field: Field<T>) -> T {
        self.read_at(field.offset)
    }

    /// Writes a header field (the caller owns the IRP).
    pub fn set<T: Copy>(&self, field: Field<T>, value: T) {
        self.write_at(field.offset, value)
    }

    /// A field of location `n` (1 ≤ n ≤ StackCount, else this panics: a storsim bug).
    pub fn get_at<T: Copy>(&self, n: i8, field: Field<T>) -> T {
        self.read_at(self.checked_location(n) + field.offset)
    }

    /// Writes a field of location `n`.
    pub fn set_at<T: Copy>(&self, n: i8, field: Field<T>, value: T) {
        self.write_at(self.checked_location(n) + field.offset, value)
    }

    fn checked_location(&self, n: i8) -> usize {
        assert!(
            (1..=self.stack_count as i8).contains(&n),
            "stack location {n} of an IRP with {}",
            self.stack_count
        );
        Self::location_offset(n)
    }

    /// `CurrentLocation`, if it names a location inside the IRP (a driver may have skipped
    /// past its own).
    pub fn current(&self) -> Option<i8> {
        let n = self.get(header::CURRENT_LOCATION);
        (1..=self.get(header::STACK_COUNT))
            .contains(&n)
            .then_some(n)
    }

    /// A field of the current location; `None` if there is no current location.
    pub fn get_current<T: Copy>(&self, field: Field<T>) -> Option<T> {
        self.current().map(|n| self.get_at(n, field))
    }

    /// Zeroes location `n` (the I/O manager clears each location it has walked past).
    pub fn clear_location(&self, n: i8) {
        let offset = self.checked_location(n);
        // SAFETY: type invariant; `checked_location` puts the whole location inside the block.
        unsafe { std::ptr::write_bytes(self.place::<IO_STACK_LOCATION>(offset), 0, 1) };
    }

    /// Lays out the IRP as IoInitializeIrp does: zeroed, `CurrentLocation = StackCount + 1`.
    pub fn initialize(&self) {
        let size = irp_size(self.stack_count);
        // SAFETY: type invariant: a live block of `size` bytes, owned by its sender now.
        unsafe { std::ptr::write_bytes(self.irp.cast::<u8>(), 0, size) };
        self.set(header::TYPE, IO_TYPE_IRP);
        self.set(header::SIZE, size as u16);
        self.set(header::STACK_COUNT, self.stack_count as i8);
        self.move_to(self.stack_count as i8 + 1);
    }

    /// Makes location `n` current (`CurrentLocation` and `CurrentStackLocation` together).
    pub fn move_to(&self, n: i8) {
        self.set(header::CURRENT_LOCATION, n);
        self.set(header::CURRENT_STACK_LOCATION, self.location_ptr(n));
    }

    /// `Irp->CancelRoutine`, read and swapped atomically as IoSetCancelRoutine does.
    pub fn cancel_routine(&self) -> &AtomicPtr<c_void> {
        let place = self.place::<AtomicPtr<c_void>>(offset_of!(IRP, CancelRoutine));
        // SAFETY: type invariant; the field is pointer-aligned (offset 0x68 of a 16-aligned
        // block), lives while `self` does, and storsim and the driver (its
        // InterlockedExchangePointer) only ever access it atomically.
        unsafe { &*place }
    }

    /// `Irp->Cancel`, which IoCancelIrp sets while the driver may be reading it.
    pub fn cancel_flag(&self) -> &AtomicU8 {
        let place = self.place::<AtomicU8>(offset_of!(IRP, Cancel));
        // SAFETY: type invariant; a byte field living while `self` does, written by storsim
        // only atomically.
        unsafe { &*place }
    }

    /// Swaps the cancel routine out (IoSetCancelRoutine(NULL)).
    pub fn take_cancel_routine(&self) -> *mut c_void {
        self.cancel_routine()
            .swap(std::ptr::null_mut(), Ordering::AcqRel)
    }
}
