//! Host stand-ins for the I/O manager's side of a service IRP, shared by the unit tests and
//! the loom model (which swaps in loom's primitives with `--cfg loom`).
//!
//! [`FakeIrp`] checks what Driver Verifier would: no completion with a cancel routine still
//! set, no second completion, `Information` within the output buffer.

extern crate std;

use std::vec::Vec;

#[cfg(loom)]
use loom::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::SeqCst},
};
#[cfg(not(loom))]
use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::SeqCst},
};

use revcall_protocol::{IOCTL_MINIPORT_PROCESS_SERVICE_IRP, Request, encode_request};

use crate::adapter::{Adapter, Bus, GraceTimer, Lock, ServiceIrp, State, Timer};
use crate::disk::{PendingSrb, ScsiRequest};
use crate::error::Status;
use crate::service_queue::Parkable;

/// The adapter lock as a mutex.
pub struct MutexLock<T>(Mutex<T>);

std::thread_local! {
    /// Whether this thread is inside an adapter lock (what the fakes check calls against).
    static LOCKED: core::cell::Cell<bool> = const { core::cell::Cell::new(false) };
}

/// Whether the calling thread holds an adapter lock.
pub fn lock_held() -> bool {
    LOCKED.with(|locked| locked.get())
}

/// A step and how many of this thread's adapter lock acquisitions to let pass before it.
#[cfg(not(loom))]
type Interleaving = (u32, std::boxed::Box<dyn FnOnce()>);

// A thread-local, as LOCKED is: the step must run inside `Lock::with`, which the test cannot
// reach otherwise, and per thread, so tests running in parallel never meet each other's steps.
#[cfg(not(loom))]
std::thread_local! {
    static INTERLEAVE: core::cell::RefCell<Option<Interleaving>> =
        const { core::cell::RefCell::new(None) };
}

/// Runs `step` on this thread just before its adapter lock acquisition number `skip` (0: the
/// next one), with no lock held: the other side of a race, at the one point between two lock
/// holds where it hurts.
#[cfg(not(loom))]
pub fn before_lock(skip: u32, step: impl FnOnce() + 'static) {
    INTERLEAVE.with(|slot| *slot.borrow_mut() = Some((skip, std::boxed::Box::new(step))));
}

/// Whether the step [`before_lock`] set is still waiting (the acquisition never came).
#[cfg(not(loom))]
pub fn interleaving_pending() -> bool {
    INTERLEAVE.with(|slot| slot.borrow().is_some())
}

#[cfg(not(loom))]
fn interleave() {
    let step = INTERLEAVE.with(|slot| {
        let mut slot = slot.borrow_mut();
        match slot.as_mut()? {
            (0, _) => slot.take().map(|(_, step)| step),
            (skip, _) => {
                *skip -= 1;
                None
            }
        }
    });
    if let Some(step) = step {
        step();
    }
}

impl<T: Send> Lock<T> for MutexLock<T> {
    fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        #[cfg(not(loom))]
        interleave();
        let mut state = self.0.lock().unwrap();
        let outer = LOCKED.with(|locked| locked.replace(true));
        let result = f(&mut state);
        LOCKED.with(|locked| locked.set(outer));
        result
    }
}

pub type TestAdapter = Adapter<FakeIrp, FakeSrb, MutexLock<State<FakeIrp, FakeSrb>>>;

/// A started adapter on the heap (its state is ~40 KiB).
pub fn adapter(fire_enabled: bool) -> std::boxed::Box<TestAdapter> {
    let adapter = std::boxed::Box::new(Adapter::new(MutexLock(Mutex::new(State::new()))));
    adapter.configure(fire_enabled);
    adapter.start(&FakePort::new());
    adapter
}

/// How an IRP ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    pub status: Status,
    /// The `Information` bytes of the output buffer.
    pub bytes: Vec<u8>,
}

/// What the I/O manager keeps about an IRP the driver owns: its cancel fields and its fate.
pub struct IrpCell {
    pub id: usize,
    /// `Irp->CancelRoutine != NULL`.
    armed: AtomicBool,
    /// `Irp->Cancel`.
    cancel: AtomicBool,
    /// The slot the driver stored in `DriverContext` when arming.
    slot: AtomicU32,
    completions: AtomicUsize,
    result: Mutex<Option<Completion>>,
}

impl IrpCell {
    pub fn completion(&self) -> Option<Completion> {
        self.result.lock().unwrap().clone()
    }

    pub fn completions(&self) -> usize {
        self.completions.load(SeqCst)
    }

    /// `IoCancelIrp`: sets Cancel, takes the cancel routine and, if there was one, runs it.
    pub fn io_cancel_irp<L: Lock<State<FakeIrp, FakeSrb>>>(
        &self,
        adapter: &Adapter<FakeIrp, FakeSrb, L>,
    ) {
        self.io_cancel_irp_on(adapter, &FakePort::new());
    }

    /// [`io_cancel_irp`](Self::io_cancel_irp), with the grace timer a server's death arms.
    pub fn io_cancel_irp_on<L: Lock<State<FakeIrp, FakeSrb>>>(
        &self,
        adapter: &Adapter<FakeIrp, FakeSrb, L>,
        grace: &impl GraceTimer,
    ) {
        self.cancel.store(true, SeqCst);
        if self.armed.swap(false, SeqCst) {
            let slot = self.slot.load(SeqCst) as u16;
            assert!(
                adapter.cancel(slot, self.id, grace),
                "cancel routine did not find IRP {}",
                self.id
            );
        }
    }
}

/// A service IRP as Storport hands it to HwProcessServiceRequest.
pub struct FakeIrp {
    cell: Arc<IrpCell>,
    control_code: u32,
    /// The FILE_OBJECT: the handle it was sent on.
    file: usize,
    input: Option<Vec<u8>>,
    output: Option<Vec<u8>>,
}

impl FakeIrp {
    /// An IRP with raw buffers; `None` models a NULL SystemBuffer.
    pub fn raw(
        id: usize,
        input: Option<Vec<u8>>,
        output_len: Option<usize>,
    ) -> (Self, Arc<IrpCell>) {
        let cell = Arc::new(IrpCell {
            id,
            armed: AtomicBool::new(false),
            cancel: AtomicBool::new(false),
            slot: AtomicU32::new(u32::MAX),
            completions: AtomicUsize::new(0),
            result: Mutex::new(None),
        });
        // Poison the output so bytes the driver did not write are recognisable.
        let output = output_len.map(|n| std::vec![0xCC; n]);
        let irp = Self {
            cell: cell.clone(),
            control_code: IOCTL_MINIPORT_PROCESS_SERVICE_IRP,
            file: 0x1000,
            input,
            output,
        };
        (irp, cell)
    }

    /// An IRP carrying `request`, with an output buffer of `output_len` bytes.
    pub fn new(id: usize, request: Request, output_len: usize) -> (Self, Arc<IrpCell>) {
        let mut input = std::vec![0u8; revcall_protocol::MAX_REQUEST_SIZE];
        let n = encode_request(&request, &mut input).unwrap();
        input.truncate(n);
        Self::raw(id, Some(input), Some(output_len))
    }

    /// The IRP as sent on the handle `file`.
    #[cfg_attr(loom, allow(dead_code))]
    pub fn on(mut self, file: usize) -> Self {
        self.file = file;
        self
    }

    #[cfg_attr(loom, allow(dead_code))]
    pub fn with_control_code(mut self, code: u32) -> Self {
        self.control_code = code;
        self
    }
}

impl Parkable for FakeIrp {
    fn id(&self) -> usize {
        self.cell.id
    }

    fn arm_cancel(&mut self, slot: u16) {
        self.cell.slot.store(slot.into(), SeqCst);
        let was = self.cell.armed.swap(true, SeqCst);
        assert!(!was, "cancel routine armed twice");
    }

    fn disarm_cancel(&mut self) -> bool {
        self.cell.armed.swap(false, SeqCst)
    }

    fn cancel_requested(&self) -> bool {
        self.cell.cancel.load(SeqCst)
    }
}

impl ServiceIrp for FakeIrp {
    fn control_code(&self) -> u32 {
        self.control_code
    }

    fn file(&self) -> usize {
        self.file
    }

    fn input(&self) -> Option<&[u8]> {
        self.input.as_deref()
    }

    fn output_len(&self) -> usize {
        self.output.as_ref().map_or(0, Vec::len)
    }

    fn output(&mut self, len: usize) -> Option<&mut [u8]> {
        let out = self.output.as_deref_mut()?;
        let len = len.min(out.len());
        Some(&mut out[..len])
    }

    fn complete(self, status: Status, information: usize) {
        assert!(
            !self.cell.armed.load(SeqCst),
            "IRP {} completed with its cancel routine set (0xC9/0x07)",
            self.cell.id
        );
        assert_eq!(
            self.cell.completions.fetch_add(1, SeqCst),
            0,
            "IRP {} completed twice (0x44)",
            self.cell.id
        );
        let out = self.output.unwrap_or_default();
        assert!(
            information <= out.len(),
            "Information {information} > output {} (0xC9/0x312)",
            out.len()
        );
        let bytes = out[..information].to_vec();
        *self.cell.result.lock().unwrap() = Some(Completion { status, bytes });
    }
}

/// How an SRB ended: what the port driver sees after RequestComplete.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SrbEnd {
    pub srb_status: u8,
    pub scsi_status: u8,
    /// The data buffer up to `DataTransferLength`.
    pub data: Vec<u8>,
    pub sense: Vec<u8>,
}

/// The port driver's record of one SRB: how often it was completed, and how.
#[derive(Default)]
pub struct SrbCell {
    completions: AtomicUsize,
    end: Mutex<Option<SrbEnd>>,
}

#[cfg_attr(loom, allow(dead_code))]
impl SrbCell {
    pub fn end(&self) -> Option<SrbEnd> {
        self.end.lock().unwrap().clone()
    }

    pub fn completions(&self) -> usize {
        self.completions.load(SeqCst)
    }
}

/// An SRB as Storport hands it to HwStartIo, with buffers of its own.
pub struct FakeSrb {
    pub function: u8,
    pub address: (u8, u8, u8),
    /// The CDB block and its length, as [`revcall_scsi::encode`] gives them.
    pub cdb: (revcall_scsi::CdbBlock, usize),
    pub data: Vec<u8>,
    pub sense: Vec<u8>,
    /// `SenseInfoBufferLength` as the miniport left it.
    pub sense_len: u8,
    pub finished: Option<(u8, u8, u32)>,
    pub next_srb: usize,
    pub cell: Arc<SrbCell>,
}

impl FakeSrb {
    /// `command` to `lun` of target 0 with a `data_len`-byte buffer and 18 bytes of sense.
    pub fn scsi(lun: u8, command: &revcall_scsi::Command, data_len: usize) -> Self {
        Self {
            function: storport_abi::srb_function::EXECUTE_SCSI,
            address: (0, 0, lun),
            cdb: revcall_scsi::encode(command),
            data: std::vec![0; data_len],
            sense: std::vec![0; 18],
            sense_len: 18,
            finished: None,
            next_srb: 0,
            cell: Arc::new(SrbCell::default()),
        }
    }
}

impl ScsiRequest for FakeSrb {
    fn function(&self) -> u8 {
        self.function
    }
    fn address(&self) -> (u8, u8, u8) {
        self.address
    }
    fn cdb(&self) -> (&revcall_scsi::CdbBlock, usize) {
        (&self.cdb.0, self.cdb.1)
    }
    fn data(&mut self) -> Option<&mut [u8]> {
        (!self.data.is_empty()).then_some(&mut self.data[..])
    }
    fn sense(&mut self) -> Option<&mut [u8]> {
        Some(&mut self.sense)
    }
    fn sense_written(&mut self, len: u8) {
        self.sense_len = len.min(self.sense_len);
    }
    fn next_srb(&self) -> usize {
        self.next_srb
    }
    fn finish(&mut self, srb_status: u8, scsi_status: u8, transferred: u32) {
        assert!(self.finished.is_none(), "SRB status set twice");
        let transferred = transferred.min(self.data.len() as u32);
        self.finished = Some((srb_status, scsi_status, transferred));
    }
}

impl PendingSrb for FakeSrb {
    /// The record the port keeps of it: unique while the SRB lives.
    fn id(&self) -> usize {
        Arc::as_ptr(&self.cell) as usize
    }

    /// Storport's RequestComplete: never under the adapter lock, never twice, never without a
    /// status.
    fn complete(self) {
        assert!(!lock_held(), "SRB completed under the adapter lock");
        assert_eq!(
            self.cell.completions.fetch_add(1, SeqCst),
            0,
            "SRB completed twice"
        );
        let (srb_status, scsi_status, transferred) =
            self.finished.expect("completed with no status");
        *self.cell.end.lock().unwrap() = Some(SrbEnd {
            srb_status,
            scsi_status,
            data: self.data[..transferred as usize].to_vec(),
            sense: self.sense[..usize::from(self.sense_len)].to_vec(),
        });
    }
}

/// Storport's timer and bus notifications, recorded.
pub struct FakePort {
    pub armed: Mutex<Option<u32>>,
    pub arms: AtomicUsize,
    pub cancels: AtomicUsize,
    pub bus_changes: AtomicUsize,
    pub grace_arms: AtomicUsize,
    pub queue_depths: Mutex<Vec<(u8, u32)>>,
}

impl FakePort {
    pub fn new() -> Self {
        Self {
            armed: Mutex::new(None),
            arms: AtomicUsize::new(0),
            cancels: AtomicUsize::new(0),
            bus_changes: AtomicUsize::new(0),
            grace_arms: AtomicUsize::new(0),
            queue_depths: Mutex::new(Vec::new()),
        }
    }
}

impl Timer for FakePort {
    /// Storport's timer request is never made under the adapter lock (lock order with the
    /// StartIo lock HwStorTimer runs under).
    fn arm(&self, delay_us: u32) {
        assert!(!lock_held(), "the timer armed under the adapter lock");
        self.arms.fetch_add(1, SeqCst);
        *self.armed.lock().unwrap() = Some(delay_us);
    }

    fn cancel(&self) {
        assert!(!lock_held(), "the timer cancelled under the adapter lock");
        self.cancels.fetch_add(1, SeqCst);
        *self.armed.lock().unwrap() = None;
    }
}

impl GraceTimer for FakePort {
    /// The test ticks it by hand ([`Adapter::grace_tick`]).
    fn arm(&self) -> bool {
        assert!(!lock_held(), "the grace timer armed under the adapter lock");
        self.grace_arms.fetch_add(1, SeqCst);
        true
    }
}

impl Bus for FakePort {
    /// Like the timer, never under the adapter lock.
    fn changed(&self) {
        assert!(!lock_held(), "BusChangeDetected under the adapter lock");
        self.bus_changes.fetch_add(1, SeqCst);
    }

    fn set_queue_depth(&self, lun: u8, depth: u32) {
        assert!(!lock_held(), "SetDeviceQueueDepth under the adapter lock");
        self.queue_depths.lock().unwrap().push((lun, depth));
    }
}
