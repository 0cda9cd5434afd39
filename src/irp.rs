//! A service IRP the adapter owns: move-only, completed exactly once through Storport.

use core::ptr::NonNull;

use crate::adapter::ServiceIrp;
use crate::error::Status;
use crate::service_queue::Parkable;
use nt_imports::inline::{
    IoGetCurrentIrpStackLocation, IoSetCancelRoutine, IrpCancelRequested,
    StorPortCompleteServiceIrp,
};
use storport_abi::{IO_STACK_LOCATION, IRP, PVOID};

/// `Tail.Overlay.DriverContext` slots revcall uses while it owns an IRP. Slot 3 is IoCsq's and
/// Storport writes a byte into slot 2 when completing, so both are left alone.
const CONTEXT_EXTENSION: usize = 0;
const CONTEXT_SLOT: usize = 1;

/// # Invariants
///
/// The pointer is a service IRP Storport handed to this driver's HwProcessServiceRequest and
/// that has not been completed; its `DriverContext[0]` holds the adapter's HwDeviceExtension;
/// this value is its only owner (it is neither `Copy` nor `Clone`).
#[repr(transparent)]
pub struct Irp(NonNull<IRP>);

// SAFETY: an IRP may be completed from any CPU; ownership travels with the value.
unsafe impl Send for Irp {}

impl Irp {
    /// Takes ownership of a service IRP.
    ///
    /// # Safety
    ///
    /// `irp` is the IRP Storport passed to HwProcessServiceRequest of the adapter whose
    /// HwDeviceExtension is `ext`, and the caller does not use it afterwards.
    pub unsafe fn from_service_request(irp: *mut IRP, ext: PVOID) -> Option<Self> {
        let irp = Self(NonNull::new(irp)?);
        // SAFETY: a live IRP we now own; its DriverContext belongs to its current owner.
        unsafe { (*irp.0.as_ptr()).DriverContext[CONTEXT_EXTENSION] = ext };
        Some(irp)
    }

    fn stack(&self) -> &IO_STACK_LOCATION {
        // SAFETY: by the type invariant the IRP is live and ours.
        let stack = unsafe { IoGetCurrentIrpStackLocation(self.0.as_ptr()) };
        // SAFETY: Storport dispatched the IRP, so its current stack location is valid, and no
        // one writes it while we own the IRP; the borrow of `self` bounds the reference.
        unsafe { &*stack }
    }

    fn system_buffer(&self) -> PVOID {
        // SAFETY: a live IRP we own; SystemBuffer is not changed by anyone else while we do.
        unsafe { (*self.0.as_ptr()).SystemBuffer }
    }
}

/// Where the cancel routine of `irp` finds its adapter and slot.
///
/// # Safety
///
/// `irp` is a live IRP whose cancel routine (revcall's) is running: it was armed by
/// [`Parkable::arm_cancel`], which wrote both before the interlocked exchange that published
/// the routine.
pub unsafe fn cancel_context(irp: *mut IRP) -> (PVOID, u16) {
    // SAFETY: the caller guarantees the IRP is live; the fields were written before the
    // exchange IoCancelIrp observed, so they are visible here.
    let context = unsafe { (*irp).DriverContext };
    (
        context[CONTEXT_EXTENSION],
        context[CONTEXT_SLOT] as usize as u16,
    )
}

impl Parkable for Irp {
    fn id(&self) -> usize {
        self.0.as_ptr() as usize
    }

    fn arm_cancel(&mut self, slot: u16) {
        let irp = self.0.as_ptr();
        // SAFETY: a live IRP we own (type invariant); DriverContext is ours.
        unsafe { (*irp).DriverContext[CONTEXT_SLOT] = usize::from(slot) as PVOID };
        // SAFETY: as above; the exchange publishes the context written just before.
        unsafe { IoSetCancelRoutine(irp, Some(crate::entry::hw_cancel_service_irp)) };
    }

    fn disarm_cancel(&mut self) -> bool {
        // SAFETY: a live IRP we own (type invariant).
        unsafe { IoSetCancelRoutine(self.0.as_ptr(), None) }.is_some()
    }

    fn cancel_requested(&self) -> bool {
        // SAFETY: a live IRP we own (type invariant).
        unsafe { IrpCancelRequested(self.0.as_ptr()) }
    }
}

impl ServiceIrp for Irp {
    fn control_code(&self) -> u32 {
        self.stack().IoControlCode
    }

    fn file(&self) -> usize {
        self.stack().FileObject as usize
    }

    fn input(&self) -> Option<&[u8]> {
        let len = self.stack().InputBufferLength as usize;
        let buffer = self.system_buffer();
        if len == 0 {
            return Some(&[]);
        }
        if buffer.is_null() {
            return None;
        }
        // SAFETY: METHOD_BUFFERED: SystemBuffer holds max(InputBufferLength,
        // OutputBufferLength) bytes of kernel pool owned by the IRP, live while we own it; the
        // shared borrow of `self` keeps `output()` from aliasing it.
        Some(unsafe { core::slice::from_raw_parts(buffer.cast::<u8>(), len) })
    }

    fn output_len(&self) -> usize {
        self.stack().OutputBufferLength as usize
    }

    fn output(&mut self, len: usize) -> Option<&mut [u8]> {
        let len = len.min(self.output_len());
        let buffer = self.system_buffer();
        if len == 0 {
            return Some(&mut []);
        }
        if buffer.is_null() {
            return None;
        }
        let input = self.stack().InputBufferLength as usize;
        if len > input {
            // SAFETY: METHOD_BUFFERED: SystemBuffer holds max(InputBufferLength,
            // OutputBufferLength) bytes owned by the IRP, which we own, and `input < len ≤
            // OutputBufferLength`.
            let tail = unsafe { buffer.cast::<u8>().add(input) };
            // SAFETY: as above: bytes input..len of that buffer, which the I/O manager left
            // as it found them.
            unsafe { core::ptr::write_bytes(tail, 0, len - input) };
        }
        // SAFETY: as in `input`, and every byte is initialized (input, or zeroed above); the
        // exclusive borrow of `self` makes this the only view.
        Some(unsafe { core::slice::from_raw_parts_mut(buffer.cast::<u8>(), len) })
    }

    fn complete(self, status: Status, information: usize) {
        let irp = self.0.as_ptr();
        // SAFETY: a live IRP we own (type invariant); IoStatus is the owner's to set.
        unsafe { (*irp).IoStatus.Status = status.to_ntstatus() };
        // SAFETY: as above.
        unsafe { (*irp).IoStatus.Information = information };
        // SAFETY: as above; from_service_request stored the extension here.
        let ext = unsafe { (*irp).DriverContext[CONTEXT_EXTENSION] };
        // SAFETY: `ext` is this IRP's adapter (invariant) and we give up the IRP here: `self`
        // is consumed, so it cannot be touched or completed again.
        unsafe { StorPortCompleteServiceIrp(ext, irp) };
    }
}
