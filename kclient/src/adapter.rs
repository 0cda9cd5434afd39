//! The adapter as a kernel-mode caller holds it: the top device of its stack and a referenced
//! FILE_OBJECT, from IoGetDeviceObjectPointer, released once when the holder drops it.

use core::ptr::null_mut;

use nt_imports::inline::set_event_keep_irp;
use nt_imports::ntoskrnl::{
    IoAllocateIrp, IoCancelIrp, IoFreeIrp, IoGetDeviceObjectPointer, IofCallDriver,
    KeInitializeEvent, KeWaitForSingleObject, ObfDereferenceObject,
};
use revcall_protocol::{Reply, Request, decode_reply, encode_request};
use storport_abi::status::{STATUS_INSUFFICIENT_RESOURCES, STATUS_TIMEOUT};
use storport_abi::{
    DEVICE_OBJECT, DEVICE_OBJECT_STACK_SIZE, EXECUTIVE, FILE_OBJECT, FILE_READ_WRITE_DATA, IRP,
    KERNEL_MODE, KEVENT, NOTIFICATION_EVENT, NTSTATUS, STATUS_PENDING, STATUS_SUCCESS,
    UNICODE_STRING,
};

use crate::request;

/// How long STATS may take before it is cancelled: one second, relative (100 ns units).
const STATS_PATIENCE: i64 = -10_000_000;

/// An open adapter. Not `Send`/`Sync` by itself: its owner decides who uses it.
pub struct Adapter {
    device: *mut DEVICE_OBJECT,
    file: *mut FILE_OBJECT,
}

impl Adapter {
    /// Opens the device named `name` (`\Device\RaidPort0`). PASSIVE_LEVEL.
    ///
    /// # Errors
    ///
    /// IoGetDeviceObjectPointer's status (STATUS_OBJECT_NAME_NOT_FOUND: no such device).
    pub fn open(name: &UNICODE_STRING) -> Result<Self, NTSTATUS> {
        let mut file = null_mut();
        let mut device = null_mut();
        // SAFETY: a valid counted string and two locals for the out-parameters.
        let status =
            unsafe { IoGetDeviceObjectPointer(name, FILE_READ_WRITE_DATA, &mut file, &mut device) };
        if status == STATUS_SUCCESS {
            Ok(Self { device, file })
        } else {
            Err(status)
        }
    }

    /// The device IRPs go to (the top of the adapter's stack).
    pub fn device(&self) -> *mut DEVICE_OBJECT {
        self.device
    }

    /// The referenced file object every IRP names.
    pub fn file(&self) -> *mut FILE_OBJECT {
        self.file
    }

    /// The stack locations an IRP sent to the adapter needs.
    pub fn stack_size(&self) -> i8 {
        // SAFETY: the referenced file object keeps the device object alive; StackSize is a
        // byte the I/O manager set when the stack was built and does not change while open.
        unsafe {
            self.device
                .cast::<u8>()
                .wrapping_add(DEVICE_OBJECT_STACK_SIZE)
                .cast::<i8>()
                .read()
        }
    }

    /// Whether the adapter answers revcall's STATS (another miniport refuses the service
    /// IOCTL or does not know it). Sends one request and waits for it. PASSIVE_LEVEL.
    pub fn is_revcall(&self) -> bool {
        self.stats_status() == STATUS_SUCCESS
    }

    /// STATS, synchronously: STATUS_SUCCESS only for a well-formed STATS reply.
    fn stats_status(&self) -> NTSTATUS {
        const CAPACITY: usize = 256;
        // SAFETY: plain arguments.
        let irp = unsafe { IoAllocateIrp(self.stack_size(), 0) };
        let buffer = request::allocate(CAPACITY);
        let status = if irp.is_null() || buffer.is_null() {
            STATUS_INSUFFICIENT_RESOURCES
        } else {
            // SAFETY: a fresh IRP with the adapter's StackSize and a CAPACITY-byte buffer,
            // both freed below only after the request is back.
            unsafe { self.stats_round_trip(irp, buffer, CAPACITY) }
        };
        if !irp.is_null() {
            // SAFETY: our IRP, back from the adapter (or never sent).
            unsafe { IoFreeIrp(irp) };
        }
        if !buffer.is_null() {
            // SAFETY: our block, no longer in any IRP.
            unsafe { request::free(buffer) };
        }
        status
    }

    /// # Safety
    ///
    /// `irp` is a fresh IRP with the adapter's StackSize; `buffer` holds `capacity` bytes.
    unsafe fn stats_round_trip(&self, irp: *mut IRP, buffer: *mut u8, capacity: usize) -> NTSTATUS {
        let Some(input) = ({
            // SAFETY: the caller's block of `capacity` bytes, ours until the IRP is sent (this
            // borrow ends before it is).
            let out = unsafe { core::slice::from_raw_parts_mut(buffer, capacity) };
            encode_request(&Request::Stats, out)
        }) else {
            return STATUS_INSUFFICIENT_RESOURCES;
        };
        let mut back = KEVENT::new();
        // SAFETY: a local event, waited on below before it goes out of scope.
        unsafe { KeInitializeEvent(&mut back, NOTIFICATION_EVENT, 0) };
        // SAFETY: the caller's fresh IRP and buffer; the event outlives the trip (waited on).
        unsafe {
            request::prepare(
                irp,
                self,
                buffer,
                input as u32,
                capacity as u32,
                set_event_keep_irp,
                (&raw mut back).cast(),
            )
        };
        // SAFETY: the IRP goes to the adapter and returns through the completion routine.
        if unsafe { IofCallDriver(self.device, irp) } == STATUS_PENDING {
            let mut wait = |timeout: *const i64| {
                // SAFETY: the local event, set by the completion routine; PASSIVE_LEVEL (this
                // routine's rule).
                unsafe {
                    KeWaitForSingleObject(
                        (&raw mut back).cast(),
                        EXECUTIVE,
                        KERNEL_MODE,
                        0,
                        timeout,
                    )
                }
            };
            // Another miniport may park a service IRP it does not know: give it a second,
            // then cancel and wait for the IRP to come back.
            if wait(&STATS_PATIENCE) == STATUS_TIMEOUT {
                // SAFETY: our IRP, allocated until the caller frees it after this returns.
                unsafe { IoCancelIrp(irp) };
                wait(null_mut());
            }
        }
        // SAFETY: the IRP is ours again (the completion routine kept it).
        let (status, information) = unsafe { request::outcome(irp) };
        if status != STATUS_SUCCESS {
            return status;
        }
        // SAFETY: the buffer is ours again with the IRP; Information of its bytes are the reply.
        let reply = unsafe { core::slice::from_raw_parts(buffer, information.min(capacity)) };
        match decode_reply(reply) {
            Ok(Reply::Stats(_)) => STATUS_SUCCESS,
            _ => storport_abi::status::STATUS_INVALID_DEVICE_REQUEST,
        }
    }
}

impl Drop for Adapter {
    fn drop(&mut self) {
        // SAFETY: the reference IoGetDeviceObjectPointer gave us, dropped once (the device
        // object itself was not referenced for us).
        unsafe { ObfDereferenceObject(self.file.cast()) };
    }
}
