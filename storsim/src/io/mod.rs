//! The emulated I/O manager: handles, IRPs with the real x64 layout, METHOD_BUFFERED
//! SystemBuffers, overlapped requests, IoCompleteRequest, IoCancelIrp, CancelIoEx, handle close
//! and process exit.

mod cancel;
mod complete;
pub mod csq;
pub mod irp;
mod kernel_caller;
mod request;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

pub use complete::Via;
pub use irp::IrpPtr;
pub use kernel_caller::KernelCaller;
pub use request::{Outcome, Request};

use crate::kernel::Kernel;
use crate::pool::Owner;
use crate::verifier::{BugCheck, Code};
use irp::{IRP_BUFFERED_IO, IRP_DEALLOCATE_BUFFER, IRP_INPUT_OPERATION, IRP_MJ_DEVICE_CONTROL};

pub const STATUS_SUCCESS: u32 = 0;
pub const STATUS_PENDING: u32 = 0x103;
pub const STATUS_INVALID_HANDLE: u32 = 0xC000_0008;
pub const STATUS_ACCESS_DENIED: u32 = 0xC000_0022;
pub const STATUS_INSUFFICIENT_RESOURCES: u32 = 0xC000_009A;
pub const STATUS_CANCELLED: u32 = 0xC000_0120;
pub const STATUS_MORE_PROCESSING_REQUIRED: u32 = 0xC000_0016;

/// NT_ERROR: severity "error"; the I/O manager copies no output back.
pub const fn is_error(status: u32) -> bool {
    status >> 30 == 3
}

/// Access rights of a handle (`FILE_READ_DATA`, `FILE_WRITE_DATA` as CreateFile grants them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Access {
    pub read: bool,
    pub write: bool,
}

impl Access {
    pub const READ_WRITE: Access = Access {
        read: true,
        write: true,
    };
}

/// An emulated user process.
pub type ProcessId = u32;
/// A handle value (unique per run).
pub type Handle = u64;

struct HandleEntry {
    process: ProcessId,
    access: Access,
    /// The adapter instance the handle was opened on ([`crate::port::Port::instance`]).
    instance: u64,
    /// Address of the FILE_OBJECT the IRPs point at.
    file_object: Box<[u64; 0x1B]>,
}

/// Who sent an IRP and where its outcome goes.
#[derive(Clone)]
pub(crate) enum Origin {
    User {
        process: ProcessId,
        handle: Handle,
        /// The adapter instance the handle was opened on: once that adapter is removed, its
        /// device object is gone for good and requests through the handle fail.
        instance: u64,
        request: Arc<Request>,
    },
    Kernel {
        request: Arc<Request>,
    },
}

impl Origin {
    fn request(&self) -> &Arc<Request> {
        match self {
            Origin::User { request, .. } | Origin::Kernel { request } => request,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IrpState {
    /// Sent down, owned by the port driver / miniport.
    WithDriver,
    /// Completed; for kernel-caller IRPs the caller owns it again (it may reuse it).
    Completed,
}

#[derive(Clone)]
pub(crate) struct IrpRecord {
    pub id: u64,
    pub origin: Origin,
    pub state: IrpState,
    pub system_buffer: usize,
    pub in_len: u32,
    pub out_len: u32,
    /// Holds an adapter rundown reference (dispatched to HwProcessServiceRequest).
    pub service: bool,
    pub cancelled_at: Option<Instant>,
}

/// What a METHOD_BUFFERED IOCTL carries.
struct Parameters<'a> {
    code: u32,
    input: &'a [u8],
    out_len: u32,
    /// A buffer of at least max(input, out_len) bytes, or 0 when both are 0.
    system_buffer: usize,
}

/// Completed IRPs remembered to recognise a second completion without touching the memory.
const RECENT_COMPLETIONS: usize = 1 << 16;

fn count_outstanding(irps: &HashMap<usize, IrpRecord>) -> usize {
    irps.values()
        .filter(|r| r.state == IrpState::WithDriver)
        .count()
}

/// Counters for the run summary.
#[derive(Default)]
pub struct Counters {
    pub issued: AtomicU64,
    pub completed: AtomicU64,
    pub cancelled: AtomicU64,
    pub cancel_requests: AtomicU64,
}

/// The I/O manager's state.
pub struct Io {
    irps: Mutex<HashMap<usize, IrpRecord>>,
    recent: Mutex<(VecDeque<usize>, HashSet<usize>)>,
    handles: Mutex<HashMap<Handle, HandleEntry>>,
    /// FILE_OBJECTs of closed handles: IRPs still in flight point at them (on Windows their
    /// references keep the object alive), so they live until the session ends.
    #[expect(
        clippy::vec_box,
        reason = "each FILE_OBJECT keeps its address: IRPs point at it"
    )]
    closed_files: Mutex<Vec<Box<[u64; 0x1B]>>>,
    next_id: AtomicU64,
    pub counters: Counters,
    /// Fill for output bytes the driver has not written (disclosure check).
    pattern: u64,
}

impl Io {
    pub fn new(seed: u64) -> Self {
        // Never zero bytes: a driver that zeroes its output must not look like it wrote nothing.
        let pattern = (fastrand::Rng::with_seed(seed).u64(..) | 0x0101_0101_0101_0101)
            ^ 0x8080_8080_8080_8080;
        Self {
            irps: Mutex::new(HashMap::new()),
            recent: Mutex::new((VecDeque::new(), HashSet::new())),
            handles: Mutex::new(HashMap::new()),
            closed_files: Mutex::new(Vec::new()),
            next_id: AtomicU64::new(1),
            counters: Counters::default(),
            pattern: pattern | 0x0101_0101_0101_0101,
        }
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn irps(&self) -> MutexGuard<'_, HashMap<usize, IrpRecord>> {
        self.irps.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remember_completed(&self, irp: usize) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        let (order, set) = &mut *recent;
        if set.insert(irp) {
            order.push_back(irp);
            if order.len() > RECENT_COMPLETIONS
                && let Some(old) = order.pop_front()
            {
                set.remove(&old);
            }
        }
    }

    fn forget_completed(&self, irp: usize) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        recent.1.remove(&irp);
    }

    fn recently_completed(&self, irp: usize) -> bool {
        self.recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .1
            .contains(&irp)
    }

    /// IRPs not yet completed.
    pub fn outstanding(&self) -> usize {
        count_outstanding(&self.irps())
    }

    /// [`Io::outstanding`] without blocking (a bug check may have stopped the thread that
    /// holds the registry): `None` if the registry stays busy.
    pub fn try_outstanding(&self) -> Option<usize> {
        for _ in 0..1000 {
            match self.irps.try_lock() {
                Ok(irps) => return Some(count_outstanding(&irps)),
                Err(std::sync::TryLockError::Poisoned(irps)) => {
                    return Some(count_outstanding(&irps.into_inner()));
                }
                Err(std::sync::TryLockError::WouldBlock) => std::thread::yield_now(),
            }
        }
        None
    }

    fn handles_of(&self, process: ProcessId) -> Vec<Handle> {
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, entry)| entry.process == process)
            .map(|(handle, _)| *handle)
            .collect()
    }

    /// Handles currently open.
    pub fn open_handles(&self) -> usize {
        self.handles.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// The adapter instance `handle` was opened on, if it is open.
    pub fn handle_instance(&self, handle: Handle) -> Option<u64> {
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&handle)
            .map(|entry| entry.instance)
    }
}

impl Kernel {
    /// CreateFile on the adapter (`\\.\ScsiN:`): a handle with `access` for `process`.
    pub fn open(&self, process: ProcessId, access: Access) -> Handle {
        let handle = self.io.next_id();
        let mut file_object = Box::new([0u64; 0x1B]);
        // FILE_OBJECT.Type = IO_TYPE_FILE (5), Size = 0xD8.
        file_object[0] = 5 | (0xD8 << 16);
        self.io
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                handle,
                HandleEntry {
                    process,
                    access,
                    instance: self.port.instance(),
                    file_object,
                },
            );
        self.note(format!(
            "process {process} opens handle {handle:#x} ({access:?})"
        ));
        handle
    }

    /// CloseHandle. Like Windows, closing does not cancel IRPs in flight and no cleanup
    /// request reaches a Storport miniport (STORPORT.md §6.9); their outcomes still arrive.
    pub fn close(&self, handle: Handle) -> bool {
        let entry = self
            .io
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&handle);
        let closed = entry.is_some();
        if let Some(entry) = entry {
            self.io
                .closed_files
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(entry.file_object);
            let parked = self
                .io
                .irps()
                .values()
                .filter(|r| {
                    matches!(r.origin, Origin::User { handle: h, .. } if h == handle)
                        && r.state == IrpState::WithDriver
                })
                .count();
            self.note(format!(
                "handle {handle:#x} closed with {parked} requests in flight"
            ));
        }
        closed
    }

    /// Overlapped DeviceIoControl with METHOD_BUFFERED semantics: `input` is copied into a
    /// SystemBuffer of max(input, output) bytes (none when both are 0); the outcome arrives on
    /// the returned request. `Err` is a status the I/O manager returns before any IRP exists.
    pub fn device_io_control(
        &self,
        handle: Handle,
        code: u32,
        input: &[u8],
        out_len: u32,
    ) -> Result<Arc<Request>, u32> {
        let (process, instance, file_object) = {
            let handles = self.io.handles.lock().unwrap_or_else(|p| p.into_inner());
            let entry = handles.get(&handle).ok_or(STATUS_INVALID_HANDLE)?;
            // The access bits of the control code (CTL_CODE bits 14–15) are checked against
            // the handle before any driver sees the request.
            let needs_read = code & (1 << 14) != 0;
            let needs_write = code & (1 << 15) != 0;
            if (needs_read && !entry.access.read) || (needs_write && !entry.access.write) {
                return Err(STATUS_ACCESS_DENIED);
            }
            (
                entry.process,
                entry.instance,
                entry.file_object.as_ptr() as usize,
            )
        };
        if self.faults.fail(crate::faults::Site::IoAllocateIrp) {
            return Err(STATUS_INSUFFICIENT_RESOURCES);
        }
        let request = Request::new(self.io.next_id());
        let origin = Origin::User {
            process,
            handle,
            instance,
            request: request.clone(),
        };
        let irp = self
            .build_irp(code, input, out_len, 2, origin, file_object)
            .ok_or(STATUS_INSUFFICIENT_RESOURCES)?;
        self.call_port(irp);
        Ok(request)
    }

    /// Allocates and fills an IRP as the I/O manager does for a METHOD_BUFFERED IOCTL.
    fn build_irp(
        &self,
        code: u32,
        input: &[u8],
        out_len: u32,
        stack_count: u8,
        origin: Origin,
        file_object: usize,
    ) -> Option<IrpPtr> {
        let buffer_len = input.len().max(out_len as usize);
        let irp = IrpPtr(
            self.pool
                .allocate_zeroed(
                    irp::irp_size(stack_count),
                    u32::from_le_bytes(*b"Irp "),
                    Owner::Irp,
                )
                .ok()?
                .cast(),
        );
        let system_buffer = if buffer_len == 0 {
            0
        } else {
            let Ok(buffer) = self.pool.allocate(
                buffer_len,
                u32::from_le_bytes(*b"SysB"),
                Owner::SystemBuffer,
            ) else {
                // The IRP never went anywhere; give it back.
                let _ = self.pool.free(irp.0.cast(), None);
                return None;
            };
            buffer as usize
        };
        self.prepare_irp(
            irp,
            stack_count,
            Parameters {
                code,
                input,
                out_len,
                system_buffer,
            },
            origin,
            file_object,
        );
        Some(irp)
    }

    /// Lays out `irp` for a METHOD_BUFFERED IOCTL (IoInitializeIrp / IoReuseIrp plus what
    /// IoBuildDeviceIoControlRequest fills) and registers it as in flight, leaving its top
    /// location current as IoCallDriver will find it.
    fn prepare_irp(
        &self,
        irp: IrpPtr,
        stack_count: u8,
        parameters: Parameters<'_>,
        origin: Origin,
        file_object: usize,
    ) {
        let Parameters {
            code,
            input,
            out_len,
            system_buffer,
        } = parameters;
        irp.initialize(stack_count);
        if system_buffer != 0 {
            let buffer = system_buffer as *mut u8;
            // SAFETY: the SystemBuffer has max(input, out_len) bytes (its allocator's promise).
            unsafe { std::ptr::copy_nonoverlapping(input.as_ptr(), buffer, input.len()) };
            // Output bytes past the input hold a marker the driver must overwrite before it
            // reports them in Information (the real buffer holds stale kernel memory).
            let pattern = self.io.pattern.to_le_bytes();
            for at in input.len()..input.len().max(out_len as usize) {
                // SAFETY: `at` < max(input, out_len), inside the buffer.
                unsafe { buffer.wrapping_add(at).write(pattern[at % 8]) };
            }
        }
        {
            // SAFETY: the sender owns the IRP until IoCallDriver.
            let header = unsafe { irp.header() };
            header.SystemBuffer = system_buffer as *mut _;
            header.Flags = IRP_BUFFERED_IO
                | if system_buffer != 0 {
                    IRP_DEALLOCATE_BUFFER
                } else {
                    0
                }
                | if out_len > 0 { IRP_INPUT_OPERATION } else { 0 };
            header.RequestorMode = match origin {
                Origin::User { .. } => irp::USER_MODE,
                Origin::Kernel { .. } => irp::KERNEL_MODE,
            };
            header.OriginalFileObject = file_object as *mut _;
            header.IoStatus.Status = STATUS_PENDING as i32;
        }
        irp.step_down();
        {
            // SAFETY: the current location is now StackCount, inside the block.
            let location = unsafe { irp.current() };
            location.MajorFunction = IRP_MJ_DEVICE_CONTROL;
            location.OutputBufferLength = out_len;
            location.InputBufferLength = input.len() as u32;
            location.IoControlCode = code;
            location.DeviceObject = self.port.fdo();
            location.FileObject = file_object as *mut _;
        }
        let id = self.io.next_id();
        self.io.forget_completed(irp.addr());
        self.io.irps().insert(
            irp.addr(),
            IrpRecord {
                id,
                origin,
                state: IrpState::WithDriver,
                system_buffer,
                in_len: input.len() as u32,
                out_len,
                service: false,
                cancelled_at: None,
            },
        );
        self.io.counters.issued.fetch_add(1, Ordering::Relaxed);
    }

    /// Reports a violation about an IRP: 0x44 names only the IRP; the others carry a sub-code.
    fn irp_violation(&self, code: Code, sub: u64, irp: usize, extra: u64, what: String) {
        let params = if code == Code::MultipleIrpCompleteRequests {
            [irp as u64, 0, 0, 0]
        } else {
            [sub, irp as u64, extra, 0]
        };
        self.report(BugCheck::new(code, params, what));
    }
}
