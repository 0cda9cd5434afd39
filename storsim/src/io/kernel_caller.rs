//! A kernel-mode caller: an emulated upper driver that sends the service IOCTL with its own
//! IRP and completion routine, takes the IRP back with STATUS_MORE_PROCESSING_REQUIRED and
//! reuses it (IoReuseIrp) for the next request — the path Enhanced I/O Verification exercises.

use std::ffi::c_void;
use std::sync::Arc;

use super::irp::{IrpPtr, SL_INVOKE_ON_CANCEL, SL_INVOKE_ON_ERROR, SL_INVOKE_ON_SUCCESS};
use super::{IrpState, Origin, Outcome, Parameters, Request, STATUS_MORE_PROCESSING_REQUIRED};
use crate::kernel::{Kernel, kernel};
use crate::pool::Owner;

/// The upper driver's IRP and buffer, reused for every request it sends.
pub struct KernelCaller {
    irp: IrpPtr,
    buffer: usize,
    capacity: usize,
}

/// IRP stack size the caller allocates: its target's StackSize (Storport FDO over the PDO).
const STACK_COUNT: u8 = 2;

impl KernelCaller {
    /// IoAllocateIrp plus a nonpaged buffer of `capacity` bytes.
    pub fn new(kernel: &Kernel, capacity: usize) -> Option<Self> {
        let irp = kernel
            .pool
            .allocate_zeroed(
                super::irp::irp_size(STACK_COUNT),
                u32::from_le_bytes(*b"KIrp"),
                Owner::Irp,
            )
            .ok()?;
        let buffer = kernel
            .pool
            .allocate(
                capacity.max(1),
                u32::from_le_bytes(*b"KBuf"),
                Owner::SystemBuffer,
            )
            .ok()?;
        Some(Self {
            irp: IrpPtr(irp.cast()),
            buffer: buffer as usize,
            capacity,
        })
    }

    /// Sends one IOCTL: IoReuseIrp, fill the next location, IoSetCompletionRoutine(all three
    /// outcomes), IoCallDriver. `None` if the IRP is still out or the request is too large.
    pub fn send(
        &self,
        kernel: &Kernel,
        code: u32,
        input: &[u8],
        out_len: u32,
    ) -> Option<Arc<Request>> {
        if input.len().max(out_len as usize) > self.capacity {
            return None;
        }
        if kernel
            .io
            .irps()
            .get(&self.irp.addr())
            .is_some_and(|record| record.state == IrpState::WithDriver)
        {
            return None;
        }
        let request = Request::new(kernel.io.next_id());
        kernel.prepare_irp(
            self.irp,
            STACK_COUNT,
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
        {
            // SAFETY: prepared just now; the caller owns it until IoCallDriver.
            let location = unsafe { self.irp.current() };
            location.CompletionRoutine = on_complete as *mut c_void;
            location.Context = Arc::as_ptr(&request) as *mut c_void;
            location.Control |= SL_INVOKE_ON_SUCCESS | SL_INVOKE_ON_ERROR | SL_INVOKE_ON_CANCEL;
        }
        kernel.call_port(self.irp);
        Some(request)
    }

    /// IoFreeIrp and the buffer. The IRP must not be in flight.
    pub fn free(self, kernel: &Kernel) {
        kernel.io.irps().remove(&self.irp.addr());
        let _ = kernel.pool.free(self.irp.0.cast(), None);
        let _ = kernel.pool.free(self.buffer as *mut u8, None);
    }
}

/// The caller's IO_COMPLETION_ROUTINE: reads the reply out of its buffer, signals the waiter
/// and keeps the IRP (STATUS_MORE_PROCESSING_REQUIRED), as a driver that reuses IRPs must.
unsafe extern "win64" fn on_complete(
    _device: *mut c_void,
    irp: *mut storport_abi::IRP,
    context: *mut c_void,
) -> i32 {
    let kernel = kernel();
    let irp = IrpPtr(irp);
    let out_len = kernel
        .io
        .irps()
        .get(&irp.addr())
        .map_or(0, |record| record.out_len as usize);
    // SAFETY: the I/O manager passes the IRP it is completing; the caller owns it again.
    let header = unsafe { irp.header() };
    let status = header.IoStatus.Status as u32;
    let information = header.IoStatus.Information;
    let copied = if super::is_error(status) {
        0
    } else {
        information.min(out_len)
    };
    let mut output = vec![0u8; copied];
    // SAFETY: `copied` ≤ out_len ≤ the caller's buffer capacity.
    unsafe {
        std::ptr::copy_nonoverlapping(
            header.SystemBuffer.cast::<u8>(),
            output.as_mut_ptr(),
            copied,
        )
    };
    // SAFETY: `context` is the Request `send` registered; the record in the I/O registry holds
    // an Arc to it until the IRP is reused or freed, so it is alive here.
    let request = unsafe { &*context.cast::<Request>() };
    request.finish(Outcome {
        status,
        information,
        output,
    });
    STATUS_MORE_PROCESSING_REQUIRED as i32
}
