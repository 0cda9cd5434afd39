//! A kernel-mode caller written in host code: sends the service IOCTL with any bytes, from
//! its own IRP and completion routine, takes the IRP back with STATUS_MORE_PROCESSING_REQUIRED
//! and reuses it.
//!
//! The real kernel-mode caller is revcall-client.sys, loaded as a driver above the adapter
//! (`crate::driver::load_upper`, the kernel-client scenario); this stays for tests of the
//! driver's answers to kernel-mode requests no real client sends (an ATTACH without a
//! FILE_OBJECT), which would otherwise each need a driver image of their own.

use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use super::irp::{
    CompletionRoutine, IrpPtr, SL_INVOKE_ON_CANCEL, SL_INVOKE_ON_ERROR, SL_INVOKE_ON_SUCCESS,
    header, location,
};
use super::{Io, IrpState, Origin, Outcome, Parameters, Request};
use crate::machine::Machine;
use crate::pool::Owner;
use storport_abi::status::user::STATUS_MORE_PROCESSING_REQUIRED;

/// The upper driver's IRP and buffer, reused for every request it sends.
pub struct KernelCaller {
    buffer: usize,
    capacity: usize,
    /// Its IRP and what the completion routine finds through its context pointer (boxed: the
    /// address stays put while the caller moves).
    context: Box<Context>,
}

/// The caller's IRP and the completion routine's context: where the reply goes.
struct Context {
    irp: IrpPtr,
    machine: Arc<Machine>,
    /// The request in flight and its output length.
    sent: Mutex<Option<(Arc<Request>, usize)>>,
}

/// IRP stack size the caller allocates: its target's StackSize (Storport FDO over the PDO).
const STACK_COUNT: u8 = 2;

impl KernelCaller {
    /// IoAllocateIrp plus a nonpaged buffer of `capacity` bytes.
    pub fn new(io: &Io, capacity: usize) -> Option<Self> {
        let pool = io.machine.pool();
        let irp = pool
            .allocate_zeroed(
                super::irp::irp_size(STACK_COUNT),
                u32::from_le_bytes(*b"KIrp"),
                Owner::Irp,
            )
            .ok()?;
        let buffer = pool
            .allocate(
                capacity.max(1),
                u32::from_le_bytes(*b"KBuf"),
                Owner::SystemBuffer,
            )
            .ok()?;
        Some(Self {
            buffer: buffer as usize,
            capacity,
            context: Box::new(Context {
                // SAFETY: a fresh pool block of irp_size(STACK_COUNT) bytes, freed only by
                // `free`, which consumes the caller (and this context with it).
                irp: unsafe { IrpPtr::new(irp.cast(), STACK_COUNT) },
                machine: io.machine.clone(),
                sent: Mutex::new(None),
            }),
        })
    }

    /// Sends one IOCTL: IoReuseIrp, fill the next location, IoSetCompletionRoutine(all three
    /// outcomes), IoCallDriver. `None` if the IRP is still out or the request is too large.
    pub fn send(&self, io: &Io, code: u32, input: &[u8], out_len: u32) -> Option<Arc<Request>> {
        if input.len().max(out_len as usize) > self.capacity {
            return None;
        }
        if io
            .irps()
            .get(&self.context.irp.addr())
            .is_some_and(|record| record.state == IrpState::WithDriver)
        {
            return None;
        }
        let request = Request::new(io.next_id());
        io.prepare_irp(
            &self.context.irp,
            Parameters {
                code,
                input,
                out_len,
                system_buffer: self.buffer,
            },
            Origin::Kernel {
                request: request.clone(),
            },
            0,
        );
        // IoSetCompletionRoutine on the location the lower driver will own.
        let top = self.context.irp.get(header::CURRENT_LOCATION);
        let routine: CompletionRoutine = on_complete;
        self.context
            .irp
            .set_at(top, location::COMPLETION_ROUTINE, Some(routine));
        *self.context.sent.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((request.clone(), out_len as usize));
        let context: *const Context = &*self.context;
        self.context
            .irp
            .set_at(top, location::CONTEXT, context.cast_mut().cast());
        let control = self.context.irp.get_at(top, location::CONTROL);
        self.context.irp.set_at(
            top,
            location::CONTROL,
            control | SL_INVOKE_ON_SUCCESS | SL_INVOKE_ON_ERROR | SL_INVOKE_ON_CANCEL,
        );
        io.call_device(&self.context.irp);
        Some(request)
    }

    /// IoFreeIrp and the buffer. The IRP must not be in flight.
    pub fn free(self, io: &Io) {
        io.irps().remove(&self.context.irp.addr());
        let pool = io.machine.pool();
        let _ = pool.free(self.context.irp.as_ptr().cast(), None);
        let _ = pool.free(self.buffer as *mut u8, None);
    }
}

/// The caller's IO_COMPLETION_ROUTINE: reads the reply out of its buffer, signals the waiter
/// and keeps the IRP (STATUS_MORE_PROCESSING_REQUIRED), as a driver that reuses IRPs must.
unsafe extern "win64" fn on_complete(
    _device: *mut c_void,
    completed: *mut storport_abi::IRP,
    context: *mut c_void,
) -> i32 {
    // SAFETY: `context` is the caller's boxed Context `send` registered; the caller (and so
    // the box) lives while its IRP is out.
    let context = unsafe { &*context.cast::<Context>() };
    let Some((request, out_len)) = context
        .sent
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take()
    else {
        return STATUS_MORE_PROCESSING_REQUIRED as i32;
    };
    // The I/O manager completes the caller's own IRP, the one the context holds.
    let irp = &context.irp;
    debug_assert_eq!(irp.as_ptr(), completed);
    let status = irp.get(header::STATUS) as u32;
    let information = irp.get(header::INFORMATION);
    let copied = if super::is_error(status) {
        0
    } else {
        information.min(out_len)
    };
    let output = context
        .machine
        .pool()
        .read_bytes(irp.get(header::SYSTEM_BUFFER) as usize, copied)
        .expect("copied ≤ out_len ≤ the caller's buffer");
    request.finish(Outcome {
        status,
        information,
        output,
    });
    STATUS_MORE_PROCESSING_REQUIRED as i32
}
