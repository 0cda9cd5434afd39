//! The emulated Storport port driver, behaving as the real one does (STORPORT.md §6):
//! StorPortInitialize, PnP start / stop / removal / surprise removal, the service-IRP dispatch
//! with its rundown reference, timers, DPCs and SRB completion.

mod dispatcher;
mod init;
mod pnp;
mod rundown;
mod service;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

pub use dispatcher::Dispatcher;
pub use init::{Callbacks, DriverObjects};
pub use pnp::PnpState;
pub use pnp::StartError;
pub use rundown::Rundown;
pub use service::IOCTL_MINIPORT_PROCESS_SERVICE_IRP as IOCTL;

use storport_abi::DEVICE_OBJECT;

/// SCSI_ADAPTER_CONTROL_TYPE values storsim uses.
pub const SCSI_QUERY_SUPPORTED_CONTROL_TYPES: u32 = 0;
pub const SCSI_STOP_ADAPTER: u32 = 1;
pub const SCSI_RESTART_ADAPTER: u32 = 2;
pub const SCSI_ADAPTER_SURPRISE_REMOVAL: u32 = 16;
/// ScsiAdapterControlMax in the WDK storsim follows: Storport offers this many entries.
pub const SCSI_ADAPTER_CONTROL_MAX: u32 = 19;

/// The adapter as Storport tracks it.
pub struct Adapter {
    pub state: PnpState,
    /// HwDeviceExtension (after Storport's 16-byte header); 0 until the first start.
    pub extension: usize,
    pub supported: [bool; SCSI_ADAPTER_CONTROL_MAX as usize],
    pub starts: u32,
}

impl Default for Adapter {
    fn default() -> Self {
        Self {
            state: PnpState::Added,
            extension: 0,
            supported: [false; SCSI_ADAPTER_CONTROL_MAX as usize],
            starts: 0,
        }
    }
}

/// Counters of the port's work.
#[derive(Default)]
pub struct PortCounters {
    pub srbs: AtomicU64,
    pub timer_calls: AtomicU64,
    pub dpcs: AtomicU64,
    pub service_requests: AtomicU64,
}

/// Storport's state for the one adapter storsim runs.
#[derive(Default)]
pub struct Port {
    /// The StartIo spin lock's word (held around HwTimer).
    pub startio_lock: AtomicUsize,
    pub(crate) callbacks: Mutex<Option<Callbacks>>,
    adapter: Mutex<Adapter>,
    pub(crate) objects: DriverObjects,
    pub rundown: Rundown,
    pub dispatcher: Dispatcher,
    srbs: Mutex<std::collections::HashSet<usize>>,
    pub counters: PortCounters,
    /// Adapter instances added after the first (each removal and re-add is a new device).
    instance: AtomicU64,
}

impl Port {
    /// Storport's FDO for the adapter (what stack locations and cancel routines see).
    pub fn fdo(&self) -> *mut DEVICE_OBJECT {
        self.objects.fdo()
    }

    pub fn adapter(&self) -> MutexGuard<'_, Adapter> {
        self.adapter.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn callbacks(&self) -> Option<Callbacks> {
        *self.callbacks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The miniport's HwDeviceExtension, 0 before the first start.
    pub fn extension(&self) -> usize {
        self.adapter().extension
    }

    pub(crate) fn srbs_outstanding(&self) -> MutexGuard<'_, std::collections::HashSet<usize>> {
        self.srbs.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn rundown_release(&self) {
        self.rundown.release();
    }

    /// Which adapter instance is current: handles opened on an earlier one are stale.
    pub fn instance(&self) -> u64 {
        self.instance.load(Ordering::Acquire)
    }

    /// Timer calls made so far.
    pub fn timer_calls(&self) -> u64 {
        self.counters.timer_calls.load(Ordering::Relaxed)
    }
}
