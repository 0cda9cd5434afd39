//! The emulated Storport port driver, behaving as the real one does
//! (docs/STORPORT-NOTES.md §6): PnP start / stop / removal / surprise removal, the
//! service-IRP dispatch with its rundown reference, timers, DPCs and SRB completion.
//!
//! It drives the miniport through [`crate::miniport`] and IRPs through [`crate::io`]; what the
//! miniport calls back (StorPort* routines) arrives through `exports/`, which turns the
//! driver's raw arguments into the typed values the methods here take.

mod dispatcher;
mod pnp;
mod rundown;
mod service;
mod srb;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crossbeam_utils::CachePadded;
use rustc_hash::FxHashMap;

pub use dispatcher::Dispatcher;
pub use pnp::{DIRQL, PnpState, StartError};
pub use rundown::Rundown;
pub use service::IOCTL_MINIPORT_PROCESS_SERVICE_IRP as IOCTL;
use srb::Standing;
pub use srb::{Direction, Outcome, Srb};

use crate::io::Io;
use crate::machine::Machine;
use crate::miniport::{Extension, Miniport, Timer, TimerEx};
use crate::verifier::locks::{self, LockApi, STARTIO_LOCK};
use crate::verifier::{BugCheck, Code, rules};

/// SCSI_ADAPTER_CONTROL_TYPE values storsim uses.
pub const SCSI_QUERY_SUPPORTED_CONTROL_TYPES: u32 = 0;
pub const SCSI_STOP_ADAPTER: u32 = 1;
pub const SCSI_RESTART_ADAPTER: u32 = 2;
pub const SCSI_ADAPTER_SURPRISE_REMOVAL: u32 = 16;
/// ScsiAdapterControlMax in the WDK storsim follows: Storport offers this many entries.
pub const SCSI_ADAPTER_CONTROL_MAX: u32 = 19;

/// The adapter as Storport tracks it.
struct Adapter {
    pub state: PnpState,
    /// HwDeviceExtension (after Storport's 16-byte header); none until the first start.
    pub extension: Option<Extension>,
    pub supported: [bool; SCSI_ADAPTER_CONTROL_MAX as usize],
    pub starts: u32,
}

impl Default for Adapter {
    fn default() -> Self {
        Self {
            state: PnpState::Added,
            extension: None,
            supported: [false; SCSI_ADAPTER_CONTROL_MAX as usize],
            starts: 0,
        }
    }
}

/// A copy this long or longer may be a payload copy ([`PortCounters::payload_copies`]): one
/// 512-byte block.
pub const BULK_COPY: usize = 512;

/// Counters of the port's work.
#[derive(Default)]
pub struct PortCounters {
    pub srbs: AtomicU64,
    pub timer_calls: AtomicU64,
    pub dpcs: AtomicU64,
    pub service_requests: AtomicU64,
    /// BusChangeDetected notifications: rescans the miniport asked for.
    pub bus_changes: AtomicU64,
    /// SRBs that timed out into the reset ladder.
    pub resets: AtomicU64,
    /// SRBs sent after the adapter was (surprise-)removed: failed NO_DEVICE by the port.
    pub srbs_refused: AtomicU64,
    /// The driver's memcpy / memmove calls of at least [`BULK_COPY`] bytes between a service
    /// IRP's SystemBuffer and Storport's memory: its payload copies.
    pub payload_copies: AtomicU64,
    /// Bytes the disk class model's WRITEs moved, and its READs brought back, successfully.
    pub bytes_written: AtomicU64,
    pub bytes_read: AtomicU64,
    /// Bytes a script compared, after reading them back, with what it had written.
    pub bytes_verified: AtomicU64,
}

/// Storport's state for the one adapter storsim runs.
pub struct Port {
    machine: Arc<Machine>,
    io: Arc<Io>,
    miniport: Mutex<Option<Miniport>>,
    adapter: Mutex<Adapter>,
    rundown: Rundown,
    dispatcher: Dispatcher,
    /// The SRBs Storport has handed to the miniport and not freed, by address: what tells a
    /// completion of one of them (outstanding or not) from one of anything else. It changes
    /// when an SRB is first handed over or freed, so the completing CPU has its lock to
    /// itself while the class model reuses its SRBs; whether one is outstanding is its own
    /// [`Standing`]. On a line of its own, as is the count: the submitting CPU spins reading
    /// the count while the completing CPU takes the lock and bumps the count, and on one line
    /// each look stole it from the other's writes.
    srbs: CachePadded<Mutex<FxHashMap<usize, Arc<Standing>>>>,
    /// SRBs completed so far: a waiter spins on it before it parks.
    srbs_completed: CachePadded<AtomicU64>,
    /// Held (read) by each SRB handed to HwStartIo for the length of the call; a removal takes
    /// it (write) once the adapter's state says no more SRBs go to the miniport, so none is
    /// still on its way in when the extension goes.
    start_io_gate: std::sync::RwLock<()>,
    /// Logical units Storport has sent an INQUIRY, with the queue depth the miniport set for
    /// each (0: not set).
    units: Mutex<std::collections::HashMap<(u8, u8), u32>>,
    counters: PortCounters,
}

impl Port {
    pub fn new(machine: Arc<Machine>, io: Arc<Io>) -> Self {
        Self {
            machine,
            io,
            miniport: Mutex::new(None),
            adapter: Mutex::new(Adapter::default()),
            rundown: Rundown::default(),
            dispatcher: Dispatcher::default(),
            srbs: CachePadded::new(Mutex::new(FxHashMap::default())),
            srbs_completed: CachePadded::new(AtomicU64::new(0)),
            start_io_gate: std::sync::RwLock::new(()),
            units: Mutex::new(std::collections::HashMap::new()),
            counters: PortCounters::default(),
        }
    }

    /// StorPortInitialize accepted `miniport` (validated by the export).
    pub fn register(&self, miniport: Miniport) {
        *self.miniport.lock().unwrap_or_else(|p| p.into_inner()) = Some(miniport);
    }

    fn adapter(&self) -> MutexGuard<'_, Adapter> {
        self.adapter.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn miniport(&self) -> Option<Miniport> {
        *self.miniport.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The adapter's PnP state.
    pub fn state(&self) -> PnpState {
        self.adapter().state
    }

    /// Times the adapter was started.
    pub fn starts(&self) -> u32 {
        self.adapter().starts
    }

    /// The miniport's DeviceExtensionSize, once StorPortInitialize accepted it.
    pub fn extension_size(&self) -> Option<u32> {
        self.miniport().map(|miniport| miniport.extension_size)
    }

    /// The miniport's HwDeviceExtension, if the adapter was ever started.
    pub fn extension(&self) -> Option<Extension> {
        self.adapter().extension
    }

    fn srbs_known(&self) -> MutexGuard<'_, FxHashMap<usize, Arc<Standing>>> {
        self.srbs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The SRBs handed to the miniport and not completed yet, by address.
    fn srbs_outstanding(&self) -> Vec<(usize, Arc<Standing>)> {
        self.srbs_known()
            .iter()
            .filter(|(_, standing)| standing.is_outstanding())
            .map(|(&srb, standing)| (srb, standing.clone()))
            .collect()
    }

    /// Done with `srb` (Storport's again): its blocks go back to the pool.
    pub fn free_srb(&self, srb: Srb) {
        let standing = srb.standing();
        if standing.known.load(Ordering::Relaxed) {
            let mut known = self.srbs_known();
            if known
                .get(&srb.addr())
                .is_some_and(|entry| Arc::ptr_eq(entry, standing))
            {
                known.remove(&srb.addr());
            }
        }
        srb.free(self.machine.pool());
    }

    /// StorPortNotification(BusChangeDetected, PathId): Storport queues a rescan of the bus
    /// (what it then sends is not documented, DISK.md §3.3: the disk class model's
    /// enumeration plays it).
    pub fn bus_changed(&self, path_id: u8) {
        self.counters.bus_changes.fetch_add(1, Ordering::Relaxed);
        self.machine
            .note(format!("BusChangeDetected(bus {path_id}): a rescan is due"));
    }

    pub fn counters(&self) -> &PortCounters {
        &self.counters
    }

    pub fn dispatcher(&self) -> &Dispatcher {
        &self.dispatcher
    }

    /// Rundown references held now (one per service IRP with the miniport).
    pub fn rundown_held(&self) -> u64 {
        self.rundown.held()
    }

    /// StorPortCompleteServiceIrp's release of the IRP's rundown reference.
    pub fn rundown_release(&self) {
        self.rundown.release();
    }

    /// StorPortNotification(RequestTimerCall): `micros` = 0 cancels.
    ///
    /// Storport's timer and HwStorTimer are serialised by its StartIo lock; storsim takes the
    /// strict reading that the request takes that lock too (unless HwStorTimer itself, which
    /// holds it, asks), so a miniport that requests its timer under a lock its HwStorTimer also
    /// takes shows the lock-order cycle it would deadlock on (0xC4/0x1001).
    pub fn request_timer(self: &Arc<Self>, timer: Option<Timer>, micros: u64) {
        self.as_timer_request(|| self.dispatcher.request_timer(self, timer, micros));
    }

    /// StorPortRequestTimer on the timer `handle` (StorPortInitializeTimer's): `false` if it is
    /// no timer. Serialised with its callback by the StartIo lock, as RequestTimerCall is.
    pub fn request_timer_ex(self: &Arc<Self>, handle: usize, timer: TimerEx, micros: u64) -> bool {
        self.as_timer_request(|| {
            self.dispatcher
                .request_timer_ex(self, handle, timer, micros)
        })
    }

    /// Runs a timer request holding the StartIo lock, unless a timer callback (which holds
    /// it) makes the request.
    fn as_timer_request<R>(&self, request: impl FnOnce() -> R) -> R {
        let inside_timer = locks::holds(STARTIO_LOCK);
        let old = (!inside_timer).then(|| {
            self.machine.acquire_kernel_lock(
                STARTIO_LOCK,
                LockApi::Storport,
                "Storport's StartIo lock",
            )
        });
        let result = request();
        if let Some(old) = old {
            self.machine
                .release_kernel_lock(STARTIO_LOCK, "Storport's StartIo lock", old);
        }
        result
    }

    /// StorPortSetDeviceQueueDepth: `false` (reported) for a depth of 0 or a logical unit
    /// Storport has not sent an INQUIRY yet — the DDI allows it only on or after the first.
    pub fn set_queue_depth(&self, (path, target, lun): (u8, u8, u8), depth: u32) -> bool {
        let mut units = self.units.lock().unwrap_or_else(|p| p.into_inner());
        let problem = match units.get_mut(&(target, lun)) {
            _ if path != 0 || depth == 0 => Some("a depth of 0 or a bus that does not exist"),
            None => Some("before Storport sent the logical unit its first INQUIRY"),
            Some(set) => {
                *set = depth;
                None
            }
        };
        if let Some(problem) = problem {
            self.machine.report(BugCheck::new(
                Code::DriverVerifierDetectedViolation,
                [
                    rules::BAD_ARGUMENT,
                    u64::from(target),
                    u64::from(lun),
                    u64::from(depth),
                ],
                format!("StorPortSetDeviceQueueDepth({path}, {target}, {lun}, {depth}): {problem}"),
            ));
        }
        problem.is_none()
    }

    /// SRBs handed to the miniport and not completed yet.
    pub fn srbs_in_flight(&self) -> usize {
        self.srbs_outstanding().len()
    }

    /// The queue depth the miniport set for (`target`, `lun`), if it did.
    pub fn queue_depth(&self, target: u8, lun: u8) -> Option<u32> {
        let units = self.units.lock().unwrap_or_else(|p| p.into_inner());
        units
            .get(&(target, lun))
            .copied()
            .filter(|&depth| depth != 0)
    }

    /// Timer calls made so far.
    pub fn timer_calls(&self) -> u64 {
        self.counters.timer_calls.load(Ordering::Relaxed)
    }
}
