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

use crate::adapter::{Adapter, Bus, Lock, ServiceIrp, State, Timer};
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

impl<T: Send> Lock<T> for MutexLock<T> {
    fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let mut state = self.0.lock().unwrap();
        let outer = LOCKED.with(|locked| locked.replace(true));
        let result = f(&mut state);
        LOCKED.with(|locked| locked.set(outer));
        result
    }
}

pub type TestAdapter = Adapter<FakeIrp, MutexLock<State<FakeIrp>>>;

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
    pub fn io_cancel_irp<L: Lock<State<FakeIrp>>>(&self, adapter: &Adapter<FakeIrp, L>) {
        self.cancel.store(true, SeqCst);
        if self.armed.swap(false, SeqCst) {
            let slot = self.slot.load(SeqCst) as u16;
            assert!(
                adapter.cancel(slot, self.id),
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
            input,
            output,
        };
        (irp, cell)
    }

    /// An IRP carrying `request`, with an output buffer of `output_len` bytes.
    pub fn new(id: usize, request: Request, output_len: usize) -> (Self, Arc<IrpCell>) {
        let mut input = std::vec![0u8; 64];
        let n = encode_request(&request, &mut input).unwrap();
        input.truncate(n);
        Self::raw(id, Some(input), Some(output_len))
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

    fn input(&self) -> Option<&[u8]> {
        self.input.as_deref()
    }

    fn output(&mut self) -> Option<&mut [u8]> {
        self.output.as_deref_mut()
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

/// Storport's timer and bus notifications, recorded.
pub struct FakePort {
    pub armed: Mutex<Option<u32>>,
    pub arms: AtomicUsize,
    pub cancels: AtomicUsize,
    pub bus_changes: AtomicUsize,
}

impl FakePort {
    pub fn new() -> Self {
        Self {
            armed: Mutex::new(None),
            arms: AtomicUsize::new(0),
            cancels: AtomicUsize::new(0),
            bus_changes: AtomicUsize::new(0),
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

impl Bus for FakePort {
    /// Like the timer, never under the adapter lock.
    fn changed(&self) {
        assert!(!lock_held(), "BusChangeDetected under the adapter lock");
        self.bus_changes.fetch_add(1, SeqCst);
    }
}
