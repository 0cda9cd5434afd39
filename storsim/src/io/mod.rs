//! The emulated I/O manager: handles, IRPs with the real x64 layout, METHOD_BUFFERED
//! SystemBuffers, overlapped requests, IoCompleteRequest, IoCancelIrp, CancelIoEx, handle close
//! and process exit.

mod caller;
mod cancel;
mod complete;
pub mod irp;
mod kernel_caller;
pub mod objects;
mod request;
#[cfg(test)]
mod tests;
pub mod work;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

pub use caller::Leftovers;
pub use complete::Via;
pub use irp::IrpPtr;
pub use kernel_caller::KernelCaller;
pub use request::{Outcome, Request};

use crate::faults::Site;
use crate::machine::Machine;
use crate::pool::Owner;
use crate::verifier::{BugCheck, Code};
use irp::{
    IRP_BUFFERED_IO, IRP_DEALLOCATE_BUFFER, IRP_INPUT_OPERATION, IRP_MJ_DEVICE_CONTROL, header,
    location,
};
use objects::DriverObjects;

pub use storport_abi::status::is_error;
use storport_abi::status::user::{
    STATUS_ACCESS_DENIED, STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_DEVICE_REQUEST,
    STATUS_INVALID_HANDLE, STATUS_PENDING,
};

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
    /// The device instance the handle was opened on ([`Io::device_instance`]).
    instance: u64,
    /// Address of the FILE_OBJECT the IRPs point at.
    file_object: Box<[u64; 0x1B]>,
}

/// Who sent an IRP and where its outcome goes.
#[derive(Clone)]
enum Origin {
    User {
        process: ProcessId,
        handle: Handle,
        /// The device instance the handle was opened on: once that device is removed, its
        /// device object is gone for good and requests through the handle fail.
        instance: u64,
        request: Arc<Request>,
    },
    Kernel {
        request: Arc<Request>,
    },
    /// A driver loaded above the adapter, with an IRP of its own (IoAllocateIrp): the outcome
    /// goes to its completion routine only.
    Driver {
        /// The adapter instance of the FILE_OBJECT the IRP names, if it is one the driver
        /// holds a reference on (IoGetDeviceObjectPointer).
        instance: Option<u64>,
    },
}

impl Origin {
    /// Where the I/O manager reports the outcome (none for a driver's own IRP).
    fn request(&self) -> Option<&Arc<Request>> {
        match self {
            Origin::User { request, .. } | Origin::Kernel { request } => Some(request),
            Origin::Driver { .. } => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IrpState {
    /// Sent down, owned by the port driver / miniport.
    WithDriver,
    /// Completed; for kernel-caller IRPs the caller owns it again (it may reuse it).
    Completed,
}

#[derive(Clone)]
struct IrpRecord {
    pub id: u64,
    pub origin: Origin,
    pub state: IrpState,
    pub stack_count: u8,
    pub system_buffer: usize,
    pub in_len: u32,
    pub out_len: u32,
    /// Holds a reference on its device that only the port driver's own completion routine
    /// releases (Storport's rundown reference of a service IRP): see [`Via`].
    pub referenced: bool,
    /// Its dispatch routine is running (IoCallDriver has not returned yet).
    pub dispatching: bool,
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
    /// IoCancelIrp calls that found the IRP still inside its dispatch routine (another CPU
    /// cancelled it while the driver was deciding whether to park it).
    pub cancels_during_dispatch: AtomicU64,
}

/// The I/O manager.
pub struct Io {
    machine: Arc<Machine>,
    objects: DriverObjects,
    /// Bumped when PnP adds a new device instance (a re-added adapter is a new FDO).
    device_instance: AtomicU64,
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
    /// Drivers above the adapter: their IRPs and references.
    callers: caller::Callers,
    work: Arc<work::WorkQueue>,
    next_id: AtomicU64,
    counters: Counters,
    /// Fill for output bytes the driver has not written (disclosure check).
    pattern: u64,
}

impl Io {
    pub fn new(machine: Arc<Machine>, service: &str) -> Self {
        // Never zero bytes: a driver that zeroes its output must not look like it wrote nothing.
        let pattern = (fastrand::Rng::with_seed(machine.config().seed).u64(..)
            | 0x0101_0101_0101_0101)
            ^ 0x8080_8080_8080_8080;
        Self {
            machine,
            objects: DriverObjects::new(service),
            device_instance: AtomicU64::new(0),
            irps: Mutex::new(HashMap::new()),
            recent: Mutex::new((VecDeque::new(), HashSet::new())),
            handles: Mutex::new(HashMap::new()),
            closed_files: Mutex::new(Vec::new()),
            callers: caller::Callers::default(),
            work: Arc::default(),
            next_id: AtomicU64::new(1),
            counters: Counters::default(),
            pattern: pattern | 0x0101_0101_0101_0101,
        }
    }

    pub fn objects(&self) -> &DriverObjects {
        &self.objects
    }

    /// Work items and the system worker thread.
    pub fn work(&self) -> &Arc<work::WorkQueue> {
        &self.work
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Which device instance is current: handles opened on an earlier one are stale.
    pub fn device_instance(&self) -> u64 {
        self.device_instance.load(Ordering::Acquire)
    }

    /// PnP added a new device instance (the last one was removed).
    pub fn add_device_instance(&self) {
        self.device_instance.fetch_add(1, Ordering::AcqRel);
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn irps(&self) -> MutexGuard<'_, HashMap<usize, IrpRecord>> {
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

    /// IRPs parked with the driver: sent, not completed, and no longer inside the dispatch
    /// routine that received them.
    pub fn parked(&self) -> usize {
        self.irps()
            .values()
            .filter(|r| r.state == IrpState::WithDriver && !r.dispatching)
            .count()
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

    /// The IRP at `addr` if it is in flight (sent down and not completed): the registry's word
    /// that the pointer names a live IRP, and of its size.
    ///
    /// # Safety
    ///
    /// The caller owns the IRP (a driver handed it over, or the I/O manager dispatched it to
    /// the caller), so it cannot be completed and freed behind the caller's back while the
    /// returned value is used. A third party (IoCancelIrp) must work under the registry lock
    /// instead.
    pub unsafe fn irp_in_flight(&self, addr: usize) -> Option<IrpPtr> {
        let irps = self.irps();
        let record = irps.get(&addr)?;
        (record.state == IrpState::WithDriver).then(|| {
            // SAFETY: the registry lists it as allocated by storsim with this stack count and
            // not completed; the caller's ownership keeps it so while the value is used.
            unsafe { IrpPtr::new(addr as *mut _, record.stack_count) }
        })
    }

    /// The device instance the sender of `irp` opened its handle on (`None` for a kernel
    /// caller, whose IRP names its device directly).
    pub fn sender_instance(&self, irp: &IrpPtr) -> Option<u64> {
        match self.irps().get(&irp.addr())?.origin {
            Origin::User { instance, .. } => Some(instance),
            Origin::Driver { instance } => instance,
            Origin::Kernel { .. } => None,
        }
    }

    /// Marks `irp` as holding a reference of its device (see [`IrpRecord::referenced`]).
    pub fn mark_referenced(&self, irp: &IrpPtr) {
        if let Some(record) = self.irps().get_mut(&irp.addr()) {
            record.referenced = true;
        }
    }

    /// IRPs in flight that hold a reference of their device.
    pub fn referenced_in_flight(&self) -> usize {
        self.irps()
            .values()
            .filter(|r| r.referenced && r.state == IrpState::WithDriver)
            .count()
    }

    /// CreateFile on the adapter (`\\.\ScsiN:`): a handle with `access` for `process`.
    pub fn open(&self, process: ProcessId, access: Access) -> Handle {
        let handle = self.next_id();
        let mut file_object = Box::new([0u64; 0x1B]);
        // FILE_OBJECT.Type = IO_TYPE_FILE (5), Size = 0xD8.
        file_object[0] = 5 | (0xD8 << 16);
        self.handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                handle,
                HandleEntry {
                    process,
                    access,
                    instance: self.device_instance(),
                    file_object,
                },
            );
        self.machine.note(format!(
            "process {process} opens handle {handle:#x} ({access:?})"
        ));
        handle
    }

    /// CloseHandle. Like Windows, closing does not cancel IRPs in flight and no cleanup
    /// request reaches a Storport miniport (docs/STORPORT-NOTES.md §6.9); their outcomes still arrive.
    pub fn close(&self, handle: Handle) -> bool {
        let entry = self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&handle);
        let closed = entry.is_some();
        if let Some(entry) = entry {
            self.closed_files
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(entry.file_object);
            let parked = self
                .irps()
                .values()
                .filter(|r| {
                    matches!(r.origin, Origin::User { handle: h, .. } if h == handle)
                        && r.state == IrpState::WithDriver
                })
                .count();
            self.machine.note(format!(
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
            let handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
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
        if self.machine.faults().fail(Site::IoAllocateIrp) {
            return Err(STATUS_INSUFFICIENT_RESOURCES);
        }
        let request = Request::new(self.next_id());
        let origin = Origin::User {
            process,
            handle,
            instance,
            request: request.clone(),
        };
        let irp = self
            .build_irp(code, input, out_len, 2, origin, file_object)
            .ok_or(STATUS_INSUFFICIENT_RESOURCES)?;
        self.call_device(&irp);
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
        let block = self
            .machine
            .pool()
            .allocate_zeroed(
                irp::irp_size(stack_count),
                u32::from_le_bytes(*b"Irp "),
                Owner::Irp,
            )
            .ok()?;
        // SAFETY: a fresh pool block of irp_size(stack_count) bytes; it is freed only by this
        // IRP's completion (finish) or right below if its SystemBuffer cannot be had.
        let irp = unsafe { IrpPtr::new(block.cast(), stack_count) };
        let system_buffer = if buffer_len == 0 {
            0
        } else {
            // prepare_irp writes every byte of it (without the disclosure check, the input
            // only: the rest keeps the block's old bytes, stale memory as on Windows).
            let Ok(buffer) = self.machine.pool().allocate_to_fill(
                buffer_len,
                u32::from_le_bytes(*b"SysB"),
                Owner::SystemBuffer,
            ) else {
                // The IRP never went anywhere; give it back.
                let _ = self.machine.pool().free(block, None);
                return None;
            };
            buffer as usize
        };
        self.prepare_irp(
            &irp,
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
        irp: &IrpPtr,
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
        irp.initialize();
        if system_buffer != 0 && !self.machine.config().disclosure_check {
            // The output past the input keeps what the block held before: stale memory, as
            // on Windows.
            self.machine
                .pool()
                .write_bytes(system_buffer, input)
                .expect("the SystemBuffer holds max(input, output) bytes");
        } else if system_buffer != 0 {
            // Output bytes past the input hold a marker the driver must overwrite before it
            // reports them in Information (the real buffer holds stale kernel memory).
            let pattern = self.pattern.to_le_bytes();
            self.machine
                .pool()
                .fill(system_buffer, input.len().max(out_len as usize), |buffer| {
                    let (given, marked) = buffer.split_at_mut(input.len());
                    given.copy_from_slice(input);
                    // Byte `at` of the buffer holds pattern[at % 8]: whole words from the
                    // first multiple of 8 on.
                    let head = input.len().next_multiple_of(8) - input.len();
                    let (first, words) = marked.split_at_mut(head.min(marked.len()));
                    for (n, byte) in first.iter_mut().enumerate() {
                        *byte = pattern[(input.len() + n) % 8];
                    }
                    let mut words = words.chunks_exact_mut(8);
                    for word in &mut words {
                        word.copy_from_slice(&pattern);
                    }
                    let tail = words.into_remainder();
                    tail.copy_from_slice(&pattern[..tail.len()]);
                })
                .expect("the SystemBuffer holds max(input, output) bytes");
        }
        irp.set(header::SYSTEM_BUFFER, system_buffer as *mut _);
        irp.set(
            header::FLAGS,
            IRP_BUFFERED_IO
                | if system_buffer != 0 {
                    IRP_DEALLOCATE_BUFFER
                } else {
                    0
                }
                | if out_len > 0 { IRP_INPUT_OPERATION } else { 0 },
        );
        irp.set(
            header::REQUESTOR_MODE,
            match origin {
                Origin::User { .. } => irp::USER_MODE,
                Origin::Kernel { .. } | Origin::Driver { .. } => irp::KERNEL_MODE,
            },
        );
        irp.set(header::ORIGINAL_FILE_OBJECT, file_object as *mut _);
        irp.set(header::STATUS, STATUS_PENDING as i32);
        // The top location, where IoCallDriver will find it.
        let top = irp.get(header::STACK_COUNT);
        irp.move_to(top);
        irp.set_at(top, location::MAJOR_FUNCTION, IRP_MJ_DEVICE_CONTROL);
        irp.set_at(top, location::OUTPUT_BUFFER_LENGTH, out_len);
        irp.set_at(top, location::INPUT_BUFFER_LENGTH, input.len() as u32);
        irp.set_at(top, location::IO_CONTROL_CODE, code);
        irp.set_at(top, location::DEVICE_OBJECT, self.objects.fdo().cast());
        irp.set_at(top, location::FILE_OBJECT, file_object as *mut _);
        self.register(irp, origin, system_buffer, input.len() as u32, out_len);
    }

    /// Lists `irp` as sent down (its current location the FDO's) and counts it.
    fn register(
        &self,
        irp: &IrpPtr,
        origin: Origin,
        system_buffer: usize,
        in_len: u32,
        out_len: u32,
    ) {
        let id = self.next_id();
        self.forget_completed(irp.addr());
        self.irps().insert(
            irp.addr(),
            IrpRecord {
                id,
                origin,
                state: IrpState::WithDriver,
                stack_count: irp.get(header::STACK_COUNT) as u8,
                system_buffer,
                in_len,
                out_len,
                referenced: false,
                dispatching: false,
                cancelled_at: None,
            },
        );
        self.counters.issued.fetch_add(1, Ordering::Relaxed);
    }

    /// IoCallDriver to the adapter's FDO: its dispatch routine for the current location's
    /// major function, taken from the driver object (so a miniport that replaced Storport's
    /// after StorPortInitialize is honoured).
    fn call_device(&self, irp: &IrpPtr) -> u32 {
        let major = irp
            .get_current(location::MAJOR_FUNCTION)
            .expect("a prepared IRP has a current location");
        let Some(dispatch) = self.objects.dispatch(major) else {
            // Windows fills every empty slot with IopInvalidDeviceRequest.
            irp.set(header::STATUS, STATUS_INVALID_DEVICE_REQUEST as i32);
            irp.set(header::INFORMATION, 0);
            self.complete(irp.addr(), Via::Port);
            return STATUS_INVALID_DEVICE_REQUEST;
        };
        let addr = irp.addr();
        let send = self.begin_dispatch(addr);
        // SAFETY: the slot holds a DRIVER_DISPATCH (`DriverObjects::dispatch`); its contract:
        // the FDO and an IRP whose current location is the FDO's, owned by the callee now.
        let status = unsafe { dispatch(self.objects.fdo().cast(), irp.as_ptr()) } as u32;
        // By address and send: the IRP may be completed and gone by now, or sent again.
        self.end_dispatch(addr, send);
        status
    }

    /// Marks `irp` as inside its dispatch routine; returns the id of that send.
    fn begin_dispatch(&self, irp: usize) -> Option<u64> {
        let mut irps = self.irps();
        let record = irps.get_mut(&irp)?;
        record.dispatching = true;
        Some(record.id)
    }

    /// Clears the mark of send `id`; a record of a later send (a driver's IRP completed and
    /// sent again before this dispatch returned) keeps its own.
    fn end_dispatch(&self, irp: usize, id: Option<u64>) {
        if let Some(record) = self.irps().get_mut(&irp)
            && Some(record.id) == id
        {
            record.dispatching = false;
        }
    }

    /// Reports a violation about an IRP: 0x44 names only the IRP; the others carry a sub-code.
    fn irp_violation(&self, code: Code, sub: u64, irp: usize, extra: u64, what: String) {
        let params = if code == Code::MultipleIrpCompleteRequests {
            [irp as u64, 0, 0, 0]
        } else {
            [sub, irp as u64, extra, 0]
        };
        self.machine.report(BugCheck::new(code, params, what));
    }
}
