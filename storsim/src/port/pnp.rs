//! PnP as Storport handles it for a virtual adapter (STORPORT.md §6.7): START (HwFindAdapter,
//! HwInitialize, the supported-control query, a bus scan through HwStartIo), STOP,
//! REMOVE (HwCompleteServiceIrp first, then the rundown wait), SURPRISE_REMOVAL
//! (ScsiAdapterSurpriseRemoval if supported, then the wait) and unload.

use std::ffi::c_void;
use std::sync::atomic::Ordering;

use storport_abi::{PORT_CONFIGURATION_INFORMATION, SCSI_REQUEST_BLOCK, SP_UNINITIALIZED_VALUE};

use super::{
    SCSI_ADAPTER_CONTROL_MAX, SCSI_ADAPTER_SURPRISE_REMOVAL, SCSI_QUERY_SUPPORTED_CONTROL_TYPES,
    SCSI_RESTART_ADAPTER, SCSI_STOP_ADAPTER,
};
use crate::cpu::{DISPATCH_LEVEL, PASSIVE_LEVEL};
use crate::io::IrpState;
use crate::kernel::Kernel;
use crate::pool::Owner;
use crate::verifier::{BugCheck, Code};

/// Storport's view of the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum PnpState {
    Added,
    Started,
    Stopped,
    SurpriseRemoved,
    Removed,
}

/// The storsim rules for the port path.
pub const RULE_REMOVAL_HANG: u64 = 0x5700_0003;
pub const RULE_SRB_STATUS_PENDING: u64 = 0x5700_0006;
pub const RULE_FIND_ADAPTER_CONFIG: u64 = 0x5700_0007;
pub const RULE_IRPS_LEFT_AFTER_FLUSH: u64 = 0x5700_0008;
pub const RULE_SRB_NEVER_COMPLETED: u64 = 0x5700_000B;

/// An SRB Storport builds, in pool memory like the real one's, with its data buffer and
/// SrbExtension.
struct Srb {
    srb: *mut SCSI_REQUEST_BLOCK,
    data: *mut u8,
    extension: *mut u8,
}

impl Srb {
    /// An INQUIRY (36 bytes of data in) to LUN 0 of `target`.
    fn inquiry(kernel: &Kernel, target: u8, extension_size: u32) -> Option<Self> {
        let tag = u32::from_le_bytes(*b"Srb ");
        let srb = kernel
            .pool
            .allocate_zeroed(size_of::<SCSI_REQUEST_BLOCK>(), tag, Owner::Port)
            .ok()?;
        let data = kernel.pool.allocate_zeroed(36, tag, Owner::Port).ok()?;
        let extension = match extension_size {
            0 => std::ptr::null_mut(),
            size => kernel
                .pool
                .allocate_zeroed(size as usize, tag, Owner::Port)
                .ok()?,
        };
        // SAFETY: a fresh, zeroed, 16-aligned block of SRB size; all-zero is a valid SRB.
        let block = unsafe { &mut *srb.cast::<SCSI_REQUEST_BLOCK>() };
        block.Length = size_of::<SCSI_REQUEST_BLOCK>() as u16;
        block.Function = storport_abi::srb_function::EXECUTE_SCSI;
        block.TargetId = target;
        block.CdbLength = 6;
        block.Cdb[0] = 0x12; // INQUIRY
        block.Cdb[4] = 36;
        block.DataTransferLength = 36;
        block.DataBuffer = data.cast();
        block.SrbExtension = extension.cast();
        block.SrbFlags = 0x40; // SRB_FLAGS_DATA_IN
        Some(Self {
            srb: srb.cast(),
            data,
            extension,
        })
    }

    fn free(self, kernel: &Kernel) {
        for block in [self.srb.cast::<u8>(), self.data, self.extension] {
            if !block.is_null() {
                let _ = kernel.pool.free(block, None);
            }
        }
    }
}

/// Storport's header in front of the HwDeviceExtension (maps extension → adapter).
const EXTENSION_HEADER: usize = 16;

/// Why a start failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the driver has not called StorPortInitialize")]
    NotInitialized,
    #[error("HwFindAdapter returned {0} (SP_RETURN_FOUND is 1)")]
    NotFound(u32),
    #[error("HwInitialize returned FALSE")]
    InitializeFailed,
    #[error("no memory for the device extension (STATUS_INSUFFICIENT_RESOURCES)")]
    NoMemory,
    #[error("the adapter is {0:?}")]
    WrongState(PnpState),
}

impl Kernel {
    /// IRP_MN_START_DEVICE.
    pub fn start_adapter(&self) -> Result<(), StartError> {
        let callbacks = self.port.callbacks().ok_or(StartError::NotInitialized)?;
        let (extension, first) = {
            let mut adapter = self.port.adapter();
            if !matches!(
                adapter.state,
                super::PnpState::Added | super::PnpState::Stopped
            ) {
                return Err(StartError::WrongState(adapter.state));
            }
            let first = adapter.extension == 0;
            if first {
                if self.faults.fail(crate::faults::Site::DeviceExtension) {
                    return Err(StartError::NoMemory);
                }
                // Zeroed at first allocation only, kept across stop/start [DECOMP]; special
                // pool, so writing past DeviceExtensionSize hits the guard page.
                let block = self
                    .pool
                    .allocate_zeroed(
                        EXTENSION_HEADER + callbacks.extension_size as usize,
                        u32::from_le_bytes(*b"RaDx"),
                        Owner::Port,
                    )
                    .map_err(|_| StartError::NoMemory)?;
                adapter.extension = block as usize + EXTENSION_HEADER;
            }
            adapter.starts += 1;
            (adapter.extension, first)
        };
        self.note(format!(
            "PnP START_DEVICE: extension {extension:#x} ({} bytes{})",
            callbacks.extension_size,
            if first {
                ", zeroed"
            } else {
                ", kept from the last start"
            }
        ));
        let mut config: PORT_CONFIGURATION_INFORMATION = PORT_CONFIGURATION_INFORMATION::zeroed();
        config.Length = size_of::<PORT_CONFIGURATION_INFORMATION>() as u32;
        config.MaximumTransferLength = SP_UNINITIALIZED_VALUE;
        config.NumberOfPhysicalBreaks = SP_UNINITIALIZED_VALUE;
        config.DeviceExtensionSize = callbacks.extension_size;
        let mut again = 0u8;
        let pdo = self.port.objects.pdo();
        let found = self.call_driver("HwFindAdapter", PASSIVE_LEVEL, || {
            // SAFETY: the virtual HwFindAdapter contract: the extension, HwContext = PDO,
            // BusInformation = FDO, LowerDevice = PDO, no argument string, a writable config.
            unsafe {
                (callbacks.find_adapter)(
                    extension as *mut c_void,
                    pdo.cast(),
                    self.port.fdo().cast(),
                    pdo.cast(),
                    std::ptr::null_mut(),
                    &mut config,
                    &mut again,
                )
            }
        });
        if found > 3 {
            self.report(BugCheck::new(Code::DriverVerifierDetectedViolation,
                [RULE_FIND_ADAPTER_CONFIG, u64::from(found), 0, 0],
                format!("HwFindAdapter returned {found}, not one of the SP_RETURN_* values (SDV SpReturnValue)"),
            ));
        }
        if config.VirtualDevice == 0 {
            self.report(BugCheck::new(Code::DriverVerifierDetectedViolation,
                [RULE_FIND_ADAPTER_CONFIG, 0xC4, 0, 0],
                "HwFindAdapter of a virtual miniport left ConfigInfo->VirtualDevice FALSE (SDV StorPortVirtualDevice2)",
            ));
        }
        if config.MaximumTransferLength == SP_UNINITIALIZED_VALUE
            || config.NumberOfPhysicalBreaks == SP_UNINITIALIZED_VALUE
        {
            self.report(BugCheck::new(Code::DriverVerifierDetectedViolation,
                [RULE_FIND_ADAPTER_CONFIG, 0x18, 0, 0],
                "HwFindAdapter left MaximumTransferLength or NumberOfPhysicalBreaks uninitialized (SDV StorPortFindAdapter)",
            ));
        }
        if found != 1 {
            self.note(format!("HwFindAdapter → {found}: adapter not started"));
            return Err(StartError::NotFound(found));
        }
        self.note(format!(
            "HwFindAdapter → SP_RETURN_FOUND (VirtualDevice {}, MaximumTransferLength {:#x})",
            config.VirtualDevice, config.MaximumTransferLength
        ));
        let initialized = self.call_driver("HwInitialize", PASSIVE_LEVEL, || {
            // SAFETY: HwInitialize contract: the extension HwFindAdapter just configured.
            unsafe { (callbacks.initialize)(extension as *mut c_void) }
        });
        if initialized == 0 {
            return Err(StartError::InitializeFailed);
        }
        self.note("HwInitialize → TRUE");
        self.query_supported_controls(extension);
        self.port.adapter().state = PnpState::Started;
        // Only now can a request reach the miniport: user mode finds the adapter through the
        // \\.\ScsiN: link Storport creates when the start completes, so nothing arrives
        // while HwFindAdapter or HwInitialize runs (a re-added adapter's FDO refuses until then).
        self.port.rundown.reopen();
        self.scan_bus(extension, config.MaximumNumberOfTargets.clamp(1, 8));
        Ok(())
    }

    fn query_supported_controls(&self, extension: usize) {
        let Some(control) = self.port.callbacks().and_then(|c| c.adapter_control) else {
            return;
        };
        let mut list = [0u8; 4 + SCSI_ADAPTER_CONTROL_MAX as usize];
        list[..4].copy_from_slice(&SCSI_ADAPTER_CONTROL_MAX.to_le_bytes());
        self.call_driver(
            "HwAdapterControl(ScsiQuerySupportedControlTypes)",
            PASSIVE_LEVEL,
            || {
                // SAFETY: HwAdapterControl contract: a SCSI_SUPPORTED_CONTROL_TYPE_LIST with
                // MaxControlType entries after the count.
                unsafe {
                    control(
                        extension as *mut c_void,
                        SCSI_QUERY_SUPPORTED_CONTROL_TYPES,
                        list.as_mut_ptr().cast(),
                    )
                }
            },
        );
        let mut adapter = self.port.adapter();
        for (slot, &flag) in adapter.supported.iter_mut().zip(&list[4..]) {
            *slot = flag != 0;
        }
        let names: Vec<String> = adapter
            .supported
            .iter()
            .enumerate()
            .filter(|(_, s)| **s)
            .map(|(i, _)| i.to_string())
            .collect();
        drop(adapter);
        self.note(format!(
            "HwAdapterControl: supported control types [{}]",
            names.join(", ")
        ));
    }

    /// Calls HwAdapterControl(`control`) if the miniport reported it supported.
    fn adapter_control(&self, control: u32, name: &'static str) -> bool {
        let (extension, supported) = {
            let adapter = self.port.adapter();
            (adapter.extension, adapter.supported[control as usize])
        };
        let Some(routine) = self.port.callbacks().and_then(|c| c.adapter_control) else {
            return false;
        };
        if !supported {
            return false;
        }
        self.call_driver(name, PASSIVE_LEVEL, || {
            // SAFETY: HwAdapterControl contract for a control type the miniport reported.
            unsafe { routine(extension as *mut c_void, control, std::ptr::null_mut()) }
        });
        self.note(format!("HwAdapterControl({name})"));
        true
    }

    /// The bus scan after start: an INQUIRY to LUN 0 of each target through HwStartIo.
    fn scan_bus(&self, extension: usize, targets: u8) {
        let Some(callbacks) = self.port.callbacks() else {
            return;
        };
        let mut answered = Vec::new();
        for target in 0..targets {
            let Some(srb) = Srb::inquiry(self, target, callbacks.srb_extension_size) else {
                return self.note("bus scan: no pool for an SRB");
            };
            self.port.srbs_outstanding().insert(srb.srb as usize);
            self.port.counters.srbs.fetch_add(1, Ordering::Relaxed);
            self.call_driver("HwStartIo", DISPATCH_LEVEL, || {
                // SAFETY: HwStartIo contract: the extension and an SRB Storport owns until
                // the miniport completes it.
                unsafe { (callbacks.start_io)(extension as *mut c_void, srb.srb) }
            });
            // A miniport may complete later (from a DPC or timer): wait for it, boundedly.
            let deadline = std::time::Instant::now() + self.config.rundown_limit;
            while self.port.srbs_outstanding().contains(&(srb.srb as usize)) {
                if std::time::Instant::now() > deadline {
                    self.report(BugCheck::new(Code::DriverVerifierDetectedViolation,
                        [
                            RULE_SRB_NEVER_COMPLETED,
                            srb.srb as u64,
                            u64::from(target),
                            0,
                        ],
                        format!("the INQUIRY SRB to target {target} was never completed"),
                    ));
                    // Still the miniport's: its blocks stay allocated (not `free`d under it).
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            // SAFETY: completed, so Storport owns the SRB again.
            answered.push(format!("target {target}: SRB_STATUS {:#04x}", unsafe {
                (*srb.srb).SrbStatus
            }));
            srb.free(self);
        }
        self.note(format!(
            "bus scan: INQUIRY via HwStartIo → {}",
            answered.join(", ")
        ));
    }

    /// StorPortNotification(RequestComplete, ext, Srb).
    pub(crate) fn srb_complete(&self, srb: *mut SCSI_REQUEST_BLOCK) {
        if !self.port.srbs_outstanding().remove(&(srb as usize)) {
            return self.report(BugCheck::new(Code::ScsiVerifierDetectedViolation,
                [0x2004, srb as u64, 0, 0],
                format!("the miniport completed SRB {srb:p}, which is not outstanding (completed twice?)"),
            ));
        }
        // SAFETY: the SRB is Storport's, outstanding until this call.
        let status = unsafe { (*srb).SrbStatus } & 0x3F;
        if status == storport_abi::srb_status::PENDING {
            self.report(BugCheck::new(Code::DriverVerifierDetectedViolation,
                [RULE_SRB_STATUS_PENDING, srb as u64, 0, 0],
                "SRB completed with SRB_STATUS_PENDING (SDV StorPortStatusPending)",
            ));
        }
    }

    /// IRP_MN_STOP_DEVICE: the timer is cancelled, ScsiStopAdapter; parked service IRPs and the
    /// rundown are untouched.
    pub fn stop_adapter(&self) {
        self.port.adapter().state = PnpState::Stopped;
        self.port.dispatcher.cancel_timer();
        self.note("PnP STOP_DEVICE");
        self.adapter_control(SCSI_STOP_ADAPTER, "ScsiStopAdapter");
    }

    /// A device power cycle (D0 → D3 → D0, RaidAdapterDevicePowerstopAdapter): ScsiStopAdapter
    /// then ScsiRestartAdapter; PnP state, parked IRPs and the rundown are untouched.
    pub fn power_cycle_adapter(&self) {
        self.note("power: D3 then D0");
        self.port.dispatcher.cancel_timer();
        self.adapter_control(SCSI_STOP_ADAPTER, "ScsiStopAdapter");
        self.adapter_control(SCSI_RESTART_ADAPTER, "ScsiRestartAdapter");
    }

    /// IRP_MN_REMOVE_DEVICE. `between` runs after HwCompleteServiceIrp returns and before the
    /// rundown wait starts: the window in which a late request still reaches the miniport.
    pub fn remove_adapter(&self, between: impl FnOnce()) {
        let state = self.port.adapter().state;
        self.note(format!("PnP REMOVE_DEVICE (adapter {state:?})"));
        self.complete_service_irps();
        between();
        if state != PnpState::SurpriseRemoved {
            self.port.adapter().state = PnpState::Removed;
            self.wait_rundown("REMOVE_DEVICE");
            self.port.dispatcher.cancel_timer();
            self.adapter_control(SCSI_STOP_ADAPTER, "ScsiStopAdapter");
        }
        self.port.adapter().state = PnpState::Removed;
        if !self.port.dispatcher.drain(self.config.rundown_limit) {
            self.report(BugCheck::new(Code::DriverVerifierDetectedViolation,
                [
                    RULE_REMOVAL_HANG,
                    0,
                    0,
                    self.config.rundown_limit.as_millis() as u64,
                ],
                "removal cannot flush the miniport's DPCs: one keeps running or re-queuing itself",
            ));
        }
        self.port.dispatcher.hold();
        self.free_adapter_resources();
    }

    /// IRP_MN_SURPRISE_REMOVAL: ScsiAdapterSurpriseRemoval only if supported, then the wait.
    pub fn surprise_remove_adapter(&self) {
        self.port.adapter().state = PnpState::SurpriseRemoved;
        self.note("PnP SURPRISE_REMOVAL");
        if !self.adapter_control(SCSI_ADAPTER_SURPRISE_REMOVAL, "ScsiAdapterSurpriseRemoval") {
            self.note(
                "ScsiAdapterSurpriseRemoval not supported: Storport just waits for the rundown",
            );
        }
        self.wait_rundown("SURPRISE_REMOVAL");
        self.port.dispatcher.cancel_timer();
        self.adapter_control(SCSI_STOP_ADAPTER, "ScsiStopAdapter");
    }

    fn complete_service_irps(&self) {
        let extension = self.port.extension();
        if let Some(routine) = self.port.callbacks().and_then(|c| c.complete_service_irp) {
            self.call_driver("HwCompleteServiceIrp", PASSIVE_LEVEL, || {
                // SAFETY: HwCompleteServiceIrp contract: PASSIVE_LEVEL, no locks, the extension.
                unsafe { routine(extension as *mut c_void) }
            });
            let left = self.service_irps_with_miniport();
            self.note(format!(
                "HwCompleteServiceIrp returned; {left} service IRPs still with the miniport"
            ));
        }
    }

    fn service_irps_with_miniport(&self) -> usize {
        self.io
            .irps()
            .values()
            .filter(|r| r.service && r.state == IrpState::WithDriver)
            .count()
    }

    /// RaidReleaseAdapterRemoveLockAndWait, with a limit: a hang becomes a report.
    fn wait_rundown(&self, during: &str) {
        match self.port.rundown.close_and_wait(self.config.rundown_limit) {
            Ok(waited) => self.note(format!(
                "{during}: rundown drained after {:.1} ms",
                waited.as_secs_f64() * 1e3
            )),
            Err(held) => {
                let parked = self.service_irps_with_miniport();
                self.report(BugCheck::new(Code::DriverVerifierDetectedViolation,
                    [RULE_REMOVAL_HANG, held, parked as u64, self.config.rundown_limit.as_millis() as u64],
                    format!(
                        "{during} cannot finish: {held} rundown references still held after {} ms \
                         ({parked} service IRPs never completed by the miniport); Windows would hang the PnP thread",
                        self.config.rundown_limit.as_millis()
                    ),
                ));
            }
        }
    }

    fn free_adapter_resources(&self) {
        let extension = self.port.extension();
        if let Some(routine) = self.port.callbacks().and_then(|c| c.free_adapter_resources) {
            self.call_driver("HwFreeAdapterResources", PASSIVE_LEVEL, || {
                // SAFETY: the last callback for the adapter, at PASSIVE_LEVEL.
                unsafe { routine(extension as *mut c_void) }
            });
        }
        let left = self.service_irps_with_miniport();
        if left > 0 {
            self.report(BugCheck::new(Code::DriverVerifierDetectedViolation,
                [RULE_IRPS_LEFT_AFTER_FLUSH, left as u64, 0, 0],
                format!(
                    "{left} service IRPs still owned by the miniport after HwFreeAdapterResources"
                ),
            ));
        }
        self.note("HwFreeAdapterResources: adapter gone");
    }

    /// PnP adds a new device instance after the last one was removed (the driver stays
    /// loaded): a fresh, zeroed device extension; then [`Kernel::start_adapter`] starts it.
    /// The removed adapter's extension goes back to special pool, so a stale pointer to it
    /// faults (0xCC).
    pub fn add_adapter(&self) -> Result<(), StartError> {
        let old = {
            let mut adapter = self.port.adapter();
            if adapter.state != PnpState::Removed {
                return Err(StartError::WrongState(adapter.state));
            }
            let old = adapter.extension;
            *adapter = super::Adapter::default();
            self.port.instance.fetch_add(1, Ordering::AcqRel);
            old
        };
        self.no_queued_work("the removed adapter's device extension was freed");
        if old != 0 {
            let _ = self.pool.free((old - EXTENSION_HEADER) as *mut u8, None);
        }
        self.port.srbs_outstanding().clear();
        self.port.dispatcher.release();
        self.note("PnP: a new adapter instance is added");
        Ok(())
    }

    /// Reports (0xC7) a timer or DPC still queued when what it would run against goes away,
    /// and drops it.
    fn no_queued_work(&self, because: &str) {
        if self.port.dispatcher.pending() {
            self.report(BugCheck::new(Code::TimerOrDpcInvalid,
                [1, 0, 0, 0],
                format!("a timer or DPC is still queued, but {because}"),
            ));
        }
        self.port.dispatcher.discard();
    }

    /// Driver unload: what Driver Verifier checks when the image goes away.
    pub fn unload(&self) {
        // Nothing queued by the driver may run once its image is gone.
        self.no_queued_work("the driver unloaded: it would run in freed code");
        self.port.dispatcher.stop();
        let leaks = self.pool.outstanding(Owner::Driver);
        if !leaks.is_empty() {
            let bytes: usize = leaks.iter().map(|b| b.size).sum();
            let tags: Vec<String> = leaks
                .iter()
                .take(8)
                .map(|b| format!("'{}' {} bytes", tag_text(b.tag), b.size))
                .collect();
            self.report(BugCheck::new(Code::DriverVerifierDetectedViolation,
                [0x62, 0, bytes as u64, leaks.len() as u64],
                format!(
                    "driver unloaded with {} pool allocations outstanding: {}",
                    leaks.len(),
                    tags.join(", ")
                ),
            ));
        }
        self.note("driver unloaded");
    }
}

fn tag_text(tag: u32) -> String {
    tag.to_le_bytes()
        .iter()
        .map(|&b| {
            if b.is_ascii_graphic() || b == b' ' {
                b as char
            } else {
                '.'
            }
        })
        .collect()
}
