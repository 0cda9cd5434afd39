//! PnP as Storport handles it for a virtual adapter (docs/STORPORT-NOTES.md §6.7): START (HwFindAdapter,
//! HwInitialize, the supported-control query, a bus scan through HwStartIo), STOP,
//! REMOVE (HwCompleteServiceIrp first, then the rundown wait), SURPRISE_REMOVAL
//! (ScsiAdapterSurpriseRemoval if supported, then the wait) and unload.

use std::sync::atomic::Ordering;

use storport_abi::{PORT_CONFIGURATION_INFORMATION, SCSI_REQUEST_BLOCK, SP_UNINITIALIZED_VALUE};

use super::srb::Srb;
use super::{
    Adapter, Port, SCSI_ADAPTER_CONTROL_MAX, SCSI_ADAPTER_SURPRISE_REMOVAL, SCSI_RESTART_ADAPTER,
    SCSI_STOP_ADAPTER,
};
use crate::cpu::{DISPATCH_LEVEL, PASSIVE_LEVEL};
use crate::machine::spin_until;
use crate::miniport::{Extension, Miniport};
use crate::pool::Owner;
use crate::verifier::locks::{LockApi, STARTIO_LOCK};
use crate::verifier::{BugCheck, Code, rules};

/// Storport's view of the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum PnpState {
    Added,
    Started,
    Stopped,
    SurpriseRemoved,
    Removed,
}

/// The device IRQL storsim calls ScsiStopAdapter and ScsiRestartAdapter at.
///
/// The HW_ADAPTER_CONTROL page documents them at DIRQL with the interrupt lock held; Storport's
/// code for a virtual adapter (no interrupt) calls them at its caller's IRQL
/// (docs/STORPORT-NOTES.md §6.7). storsim takes the stricter reading, with a DIRQL above
/// DISPATCH_LEVEL, so a miniport that takes a spin lock, arms a timer or completes a request
/// there is reported.
pub const DIRQL: u8 = 5;

/// The IRQL Storport calls HwAdapterControl(`control`) at.
fn control_irql(control: u32) -> u8 {
    match control {
        SCSI_STOP_ADAPTER | SCSI_RESTART_ADAPTER => DIRQL,
        _ => PASSIVE_LEVEL,
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

impl Port {
    /// IRP_MN_START_DEVICE.
    pub fn start_adapter(&self) -> Result<(), StartError> {
        let miniport = self.miniport().ok_or(StartError::NotInitialized)?;
        let (extension, first) = {
            let mut adapter = self.adapter();
            if !matches!(
                adapter.state,
                super::PnpState::Added | super::PnpState::Stopped
            ) {
                return Err(StartError::WrongState(adapter.state));
            }
            let first = adapter.extension.is_none();
            let extension = match adapter.extension {
                Some(extension) => extension,
                None => {
                    if self
                        .machine
                        .faults()
                        .fail(crate::faults::Site::DeviceExtension)
                    {
                        return Err(StartError::NoMemory);
                    }
                    // Zeroed at first allocation only, kept across stop/start [DECOMP];
                    // special pool, so writing past DeviceExtensionSize hits the guard page.
                    let block = self
                        .machine
                        .pool()
                        .allocate_zeroed(
                            EXTENSION_HEADER + miniport.extension_size as usize,
                            u32::from_le_bytes(*b"RaDx"),
                            Owner::Port,
                        )
                        .map_err(|_| StartError::NoMemory)?;
                    // SAFETY: the block just allocated holds Storport's header and then
                    // DeviceExtensionSize bytes; it is freed only when the adapter is gone
                    // (`add_adapter` replaces it), after the miniport's last callback.
                    let extension = unsafe { Extension::new(block as usize + EXTENSION_HEADER) };
                    adapter.extension = Some(extension);
                    extension
                }
            };
            adapter.starts += 1;
            (extension, first)
        };
        self.machine.note(format!(
            "PnP START_DEVICE: extension {:#x} ({} bytes{})",
            extension.addr(),
            miniport.extension_size,
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
        config.DeviceExtensionSize = miniport.extension_size;
        let mut again = 0u8;
        let found = self
            .machine
            .call_driver("HwFindAdapter", PASSIVE_LEVEL, || {
                miniport.find_adapter(extension, self.io.objects(), &mut config, &mut again)
            });
        if found > 3 {
            self.machine.report(BugCheck::new(Code::DriverVerifierDetectedViolation,
                [rules::FIND_ADAPTER_CONFIG, u64::from(found), 0, 0],
                format!("HwFindAdapter returned {found}, not one of the SP_RETURN_* values (SDV SpReturnValue)"),
            ));
        }
        if config.VirtualDevice == 0 {
            self.machine.report(BugCheck::new(Code::DriverVerifierDetectedViolation,
                [rules::FIND_ADAPTER_CONFIG, 0xC4, 0, 0],
                "HwFindAdapter of a virtual miniport left ConfigInfo->VirtualDevice FALSE (SDV StorPortVirtualDevice2)",
            ));
        }
        if config.MaximumTransferLength == SP_UNINITIALIZED_VALUE
            || config.NumberOfPhysicalBreaks == SP_UNINITIALIZED_VALUE
        {
            self.machine.report(BugCheck::new(Code::DriverVerifierDetectedViolation,
                [rules::FIND_ADAPTER_CONFIG, 0x18, 0, 0],
                "HwFindAdapter left MaximumTransferLength or NumberOfPhysicalBreaks uninitialized (SDV StorPortFindAdapter)",
            ));
        }
        if found != 1 {
            self.machine
                .note(format!("HwFindAdapter → {found}: adapter not started"));
            return Err(StartError::NotFound(found));
        }
        self.machine.note(format!(
            "HwFindAdapter → SP_RETURN_FOUND (VirtualDevice {}, MaximumTransferLength {:#x})",
            config.VirtualDevice, config.MaximumTransferLength
        ));
        let initialized = self.machine.call_driver("HwInitialize", PASSIVE_LEVEL, || {
            miniport.initialize(extension)
        });
        if !initialized {
            return Err(StartError::InitializeFailed);
        }
        self.machine.note("HwInitialize → TRUE");
        self.query_supported_controls(extension);
        self.adapter().state = PnpState::Started;
        // Only now can a request reach the miniport: user mode finds the adapter through the
        // \\.\ScsiN: link Storport creates when the start completes, so nothing arrives
        // while HwFindAdapter or HwInitialize runs (a re-added adapter's FDO refuses until then).
        self.rundown.reopen();
        self.scan_bus(extension, config.MaximumNumberOfTargets.clamp(1, 8));
        Ok(())
    }

    fn query_supported_controls(&self, extension: Extension) {
        let Some(miniport) = self.miniport().filter(|m| m.has_adapter_control()) else {
            return;
        };
        let mut list = [0u8; 4 + SCSI_ADAPTER_CONTROL_MAX as usize];
        list[..4].copy_from_slice(&SCSI_ADAPTER_CONTROL_MAX.to_le_bytes());
        self.machine.call_driver(
            "HwAdapterControl(ScsiQuerySupportedControlTypes)",
            PASSIVE_LEVEL,
            || miniport.query_supported_controls(extension, &mut list),
        );
        let mut adapter = self.adapter();
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
        self.machine.note(format!(
            "HwAdapterControl: supported control types [{}]",
            names.join(", ")
        ));
    }

    /// Calls HwAdapterControl(`control`) if the miniport reported it supported.
    fn adapter_control(&self, control: u32, name: &'static str) -> bool {
        let (extension, supported) = {
            let adapter = self.adapter();
            (adapter.extension, adapter.supported[control as usize])
        };
        let (Some(miniport), Some(extension)) = (self.miniport(), extension) else {
            return false;
        };
        if !supported || !miniport.has_adapter_control() {
            return false;
        }
        self.machine.call_driver(name, control_irql(control), || {
            miniport.adapter_control(extension, control)
        });
        self.machine.note(format!("HwAdapterControl({name})"));
        true
    }

    /// The bus scan after start: an INQUIRY to LUN 0 of each target through HwStartIo.
    fn scan_bus(&self, extension: Extension, targets: u8) {
        let Some(miniport) = self.miniport() else {
            return;
        };
        let pool = self.machine.pool();
        let mut answered = Vec::new();
        for target in 0..targets {
            let Some(srb) = Srb::inquiry(pool, target, miniport.srb_extension_size) else {
                return self.machine.note("bus scan: no pool for an SRB");
            };
            if !self.execute(extension, &srb) {
                return;
            }
            answered.push(format!("target {target}: SRB_STATUS {:#04x}", srb.status()));
            self.free_srb(srb);
        }
        self.machine.note(format!(
            "bus scan: INQUIRY via HwStartIo → {}",
            answered.join(", ")
        ));
    }

    /// The SrbExtensionSize SRBs for this miniport need.
    pub fn srb_extension_size(&self) -> u32 {
        self.miniport()
            .map_or(0, |miniport| miniport.srb_extension_size)
    }

    /// Hands `srb` to HwStartIo at DISPATCH_LEVEL and waits until the miniport completes it
    /// (from HwStartIo, a DPC, a timer or a service request). An SRB still outstanding after
    /// its `TimeOutValue` meets Storport's reset ladder (DISK.md §4.2, §4.3): an
    /// SRB_FUNCTION_RESET_LOGICAL_UNIT to its LUN, then HwResetBus under the StartIo lock, which
    /// must complete it. `false` (reported) if even that does not: the SRB is then still the
    /// miniport's and must not be freed.
    pub fn execute(&self, extension: Extension, srb: &Srb) -> bool {
        let Some(miniport) = self.miniport() else {
            return false;
        };
        self.start_io(miniport, extension, srb);
        self.finish(miniport, extension, srb)
    }

    /// Hands `srb` to HwStartIo at DISPATCH_LEVEL and returns: the caller keeps several in
    /// flight and learns of their completion with [`Port::first_done`], then
    /// [`Port::finish_srb`]s each.
    pub fn submit(&self, extension: Extension, srb: &Srb) -> bool {
        let Some(miniport) = self.miniport() else {
            return false;
        };
        self.start_io(miniport, extension, srb);
        true
    }

    /// Waits until one of `srbs` is completed (at most `limit`): its index.
    ///
    /// Each SRB's own `Standing` says whether it is, and only a thread about to sleep takes
    /// its locks, to register itself.
    pub fn first_done(&self, srbs: &[&Srb], limit: std::time::Duration) -> Option<usize> {
        let done = || srbs.iter().position(|srb| srb.is_completed());
        let mut deadline = None;
        loop {
            // Bumped after an SRB completes: a count seen before the look tells whether one
            // completed since.
            let seen = self.srbs_completed.load(Ordering::Acquire);
            if let Some(done) = done() {
                return Some(done);
            }
            if spin_until(|| self.srbs_completed.load(Ordering::Acquire) != seen) {
                continue;
            }
            let me = std::thread::current();
            // Registered under each SRB's lock, which its completion takes: a completion after
            // it wakes this thread, and an unpark before the park makes the park return.
            if let Some(done) = srbs.iter().position(|srb| !srb.standing().sleep_on(&me)) {
                return Some(done);
            }
            let deadline = *deadline.get_or_insert_with(|| std::time::Instant::now() + limit);
            std::thread::park_timeout(deadline.checked_duration_since(std::time::Instant::now())?);
        }
    }

    /// What [`Port::execute`] does once the SRB is in HwStartIo, for one [`Port::submit`]ted:
    /// waits for it (through the reset ladder if it times out) and checks its transfer.
    pub fn finish_srb(&self, extension: Extension, srb: &Srb) -> bool {
        self.miniport()
            .is_some_and(|miniport| self.finish(miniport, extension, srb))
    }

    fn finish(&self, miniport: Miniport, extension: Extension, srb: &Srb) -> bool {
        let timeout = self.machine.config().srb_second * super::srb::TIMEOUT_S;
        if !self.completes_within(srb, timeout) {
            self.reset_ladder(miniport, extension, srb);
            if !self.completes_within(srb, self.machine.config().srb_second) {
                self.machine.report(BugCheck::new(
                    Code::DriverVerifierDetectedViolation,
                    [rules::SRB_PENDING_AFTER_RESET, srb.addr() as u64, 0, 0],
                    format!(
                        "the SRB at {:#x} is still pending after its {} s timeout, a LUN reset \
                         and HwResetBus: Windows would reset the bus again and again",
                        srb.addr(),
                        super::srb::TIMEOUT_S
                    ),
                ));
                return false;
            }
        }
        self.check_transfer(srb)
    }

    fn start_io(&self, miniport: Miniport, extension: Extension, srb: &Srb) {
        let _in_flight = self.start_io_gate.read().unwrap_or_else(|p| p.into_inner());
        if matches!(
            self.adapter().state,
            PnpState::SurpriseRemoved | PnpState::Removed
        ) {
            // The device is gone: Storport fails the request itself; the miniport never sees it.
            let status = std::mem::offset_of!(SCSI_REQUEST_BLOCK, SrbStatus);
            let _ = self
                .machine
                .pool()
                .write_bytes(srb.addr() + status, &[storport_abi::srb_status::NO_DEVICE]);
            self.counters.srbs_refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if srb.opcode() == 0x12 {
            self.units
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(srb.address())
                .or_insert(0);
        }
        let standing = srb.standing();
        if !standing.known.swap(true, Ordering::Relaxed) {
            self.srbs_known().insert(srb.addr(), standing.clone());
        }
        standing.hand_over();
        self.counters.srbs.fetch_add(1, Ordering::Relaxed);
        self.machine.call_driver("HwStartIo", DISPATCH_LEVEL, || {
            // SAFETY: the SRB and its buffers are live pool blocks Storport owns (`Srb`),
            // handed to the miniport until it completes it; the caller frees them only once
            // it is completed.
            unsafe { miniport.start_io(extension, srb.as_ptr()) }
        });
    }

    fn completes_within(&self, srb: &Srb, limit: std::time::Duration) -> bool {
        self.first_done(&[srb], limit).is_some()
    }

    /// Storport's answer to a timed-out SRB: reset its LUN with an SRB, then the bus.
    fn reset_ladder(&self, miniport: Miniport, extension: Extension, srb: &Srb) {
        let (target, lun) = srb.address();
        self.counters.resets.fetch_add(1, Ordering::Relaxed);
        self.machine.note(format!(
            "SRB {:#x} to target {target} LUN {lun} timed out ({} s): Storport resets the LUN",
            srb.addr(),
            super::srb::TIMEOUT_S
        ));
        self.reset_lun_with(miniport, extension, (target, lun));
        if self.completes_within(srb, self.machine.config().srb_second) {
            return;
        }
        self.machine
            .note("the SRB survived the LUN reset: Storport resets the bus (HwResetBus)");
        self.reset_bus_with(miniport, extension);
    }

    /// The first step of the reset ladder on its own, as Storport takes it when an SRB to
    /// (`target`, `lun`) times out: SRB_FUNCTION_RESET_LOGICAL_UNIT through HwStartIo, which
    /// must complete it (reported if not).
    pub fn reset_lun(&self, (target, lun): (u8, u8)) {
        if let (Some(miniport), Some(extension)) = (self.miniport(), self.extension()) {
            self.reset_lun_with(miniport, extension, (target, lun));
        }
    }

    /// The last step on its own: HwResetBus at DISPATCH_LEVEL under the StartIo lock.
    pub fn reset_bus(&self) {
        if let (Some(miniport), Some(extension)) = (self.miniport(), self.extension()) {
            self.reset_bus_with(miniport, extension);
        }
    }

    fn reset_lun_with(&self, miniport: Miniport, extension: Extension, (target, lun): (u8, u8)) {
        let pool = self.machine.pool();
        let Some(reset) = Srb::reset_lun(pool, (target, lun), miniport.srb_extension_size) else {
            return self.machine.note("LUN reset: no pool for the SRB");
        };
        self.start_io(miniport, extension, &reset);
        if self.completes_within(&reset, self.machine.config().rundown_limit) {
            self.free_srb(reset);
        } else {
            // Still the miniport's: its blocks stay allocated.
            self.machine.report(BugCheck::new(
                Code::DriverVerifierDetectedViolation,
                [
                    rules::SRB_NEVER_COMPLETED,
                    reset.addr() as u64,
                    u64::from(target),
                    u64::from(lun),
                ],
                format!("the LUN reset SRB to target {target} LUN {lun} was never completed"),
            ));
        }
    }

    fn reset_bus_with(&self, miniport: Miniport, extension: Extension) {
        let old = self.machine.acquire_kernel_lock(
            STARTIO_LOCK,
            LockApi::Storport,
            "Storport's StartIo lock",
        );
        self.machine.call_driver("HwResetBus", DISPATCH_LEVEL, || {
            miniport.reset_bus(extension, 0)
        });
        self.machine
            .release_kernel_lock(STARTIO_LOCK, "Storport's StartIo lock", old);
    }

    /// A completed SRB's DataTransferLength is at most what it asked for; returns true (the
    /// SRB is Storport's again either way).
    fn check_transfer(&self, srb: &Srb) -> bool {
        let transferred = srb.outcome().transferred;
        if transferred > srb.requested() {
            // The class driver would read (or believe written) bytes past its buffer.
            self.machine.report(BugCheck::new(
                Code::DriverVerifierDetectedViolation,
                [
                    rules::SRB_TRANSFER_RAISED,
                    srb.addr() as u64,
                    u64::from(transferred),
                    u64::from(srb.requested()),
                ],
                format!(
                    "the miniport completed an SRB with DataTransferLength {transferred}, above \
                     the {} bytes it asked for",
                    srb.requested()
                ),
            ));
        }
        true
    }

    /// StorPortNotification(RequestComplete, ext, Srb).
    pub fn srb_complete(&self, srb: usize) {
        // Completing hands the SRB up to the class driver's completion, which may call back
        // down: never under a lock of the miniport's own (its HwResetBus, under Storport's
        // StartIo lock, is where completing is documented).
        if let Some((lock, name)) = crate::verifier::locks::held_except(STARTIO_LOCK) {
            self.machine.report(BugCheck::new(
                Code::DriverVerifierDetectedViolation,
                [rules::SRB_COMPLETED_UNDER_LOCK, lock as u64, srb as u64, 0],
                format!("SRB {srb:#x} completed while holding {name} {lock:#x}"),
            ));
        }
        let standing = self.srbs_known().get(&srb).cloned();
        let status = standing.and_then(|standing| {
            standing.complete(|| {
                let at = srb + std::mem::offset_of!(SCSI_REQUEST_BLOCK, SrbStatus);
                // SAFETY: an SRB Storport knows is one `Srb` it built in its pool and has not
                // freed, and while it is outstanding its issuer does not free it. Storport
                // reads its own SRB directly.
                unsafe { std::ptr::read_volatile(at as *const u8) & 0x3F }
            })
        });
        if status.is_some() {
            self.srbs_completed.fetch_add(1, Ordering::Release);
        }
        let Some(status) = status else {
            return self.machine.report(BugCheck::new(
                Code::ScsiVerifierDetectedViolation,
                [0x2004, srb as u64, 0, 0],
                format!("the miniport completed SRB {srb:#x}, which is not outstanding (completed twice?)"),
            ));
        };
        if status == storport_abi::srb_status::PENDING {
            self.machine.report(BugCheck::new(
                Code::DriverVerifierDetectedViolation,
                [rules::SRB_STATUS_PENDING, srb as u64, 0, 0],
                "SRB completed with SRB_STATUS_PENDING (SDV StorPortStatusPending)",
            ));
        }
    }

    /// IRP_MN_STOP_DEVICE: the timer is cancelled, ScsiStopAdapter; parked service IRPs and the
    /// rundown are untouched.
    pub fn stop_adapter(&self) {
        self.adapter().state = PnpState::Stopped;
        self.dispatcher.cancel_timer();
        self.machine.note("PnP STOP_DEVICE");
        self.adapter_control(SCSI_STOP_ADAPTER, "ScsiStopAdapter");
    }

    /// A device power cycle (D0 → D3 → D0, RaidAdapterDevicePowerstopAdapter): ScsiStopAdapter
    /// then ScsiRestartAdapter; PnP state, parked IRPs and the rundown are untouched.
    pub fn power_cycle_adapter(&self) {
        self.machine.note("power: D3 then D0");
        self.dispatcher.cancel_timer();
        self.adapter_control(SCSI_STOP_ADAPTER, "ScsiStopAdapter");
        self.adapter_control(SCSI_RESTART_ADAPTER, "ScsiRestartAdapter");
    }

    /// IRP_MN_REMOVE_DEVICE. `between` runs after HwCompleteServiceIrp returns and before the
    /// rundown wait starts: the window in which a late request still reaches the miniport.
    pub fn remove_adapter(&self, between: impl FnOnce()) {
        let state = self.adapter().state;
        self.machine
            .note(format!("PnP REMOVE_DEVICE (adapter {state:?})"));
        self.complete_service_irps();
        between();
        if state != PnpState::SurpriseRemoved {
            self.adapter().state = PnpState::Removed;
            self.wait_for_start_io();
            self.wait_rundown("REMOVE_DEVICE");
            self.dispatcher.cancel_timer();
            self.adapter_control(SCSI_STOP_ADAPTER, "ScsiStopAdapter");
        }
        self.adapter().state = PnpState::Removed;
        if !self.dispatcher.drain(self.machine.config().rundown_limit) {
            self.machine.report(BugCheck::new(
                Code::DriverVerifierDetectedViolation,
                [
                    rules::REMOVAL_HANG,
                    0,
                    0,
                    self.machine.config().rundown_limit.as_millis() as u64,
                ],
                "removal cannot flush the miniport's DPCs: one keeps running or re-queuing itself",
            ));
        }
        self.dispatcher.hold();
        self.free_adapter_resources();
    }

    /// IRP_MN_SURPRISE_REMOVAL: ScsiAdapterSurpriseRemoval only if supported, then the wait.
    pub fn surprise_remove_adapter(&self) {
        self.adapter().state = PnpState::SurpriseRemoved;
        self.wait_for_start_io();
        self.machine.note("PnP SURPRISE_REMOVAL");
        if !self.adapter_control(SCSI_ADAPTER_SURPRISE_REMOVAL, "ScsiAdapterSurpriseRemoval") {
            self.machine.note(
                "ScsiAdapterSurpriseRemoval not supported: Storport just waits for the rundown",
            );
        }
        self.wait_rundown("SURPRISE_REMOVAL");
        self.dispatcher.cancel_timer();
        self.adapter_control(SCSI_STOP_ADAPTER, "ScsiStopAdapter");
    }

    /// Waits until no HwStartIo call that began before the state change is still running.
    fn wait_for_start_io(&self) {
        drop(
            self.start_io_gate
                .write()
                .unwrap_or_else(|p| p.into_inner()),
        );
    }

    fn complete_service_irps(&self) {
        let (Some(miniport), Some(extension)) = (self.miniport(), self.extension()) else {
            return;
        };
        if !miniport.has_complete_service_irp() {
            return;
        }
        self.machine
            .call_driver("HwCompleteServiceIrp", PASSIVE_LEVEL, || {
                miniport.complete_service_irp(extension)
            });
        let left = self.io.referenced_in_flight();
        self.machine.note(format!(
            "HwCompleteServiceIrp returned; {left} service IRPs still with the miniport"
        ));
    }

    /// RaidReleaseAdapterRemoveLockAndWait, with a limit: a hang becomes a report.
    fn wait_rundown(&self, during: &str) {
        match self
            .rundown
            .close_and_wait(self.machine.config().rundown_limit)
        {
            Ok(waited) => self.machine.note(format!(
                "{during}: rundown drained after {:.1} ms",
                waited.as_secs_f64() * 1e3
            )),
            Err(held) => {
                let parked = self.io.referenced_in_flight();
                self.machine.report(BugCheck::new(Code::DriverVerifierDetectedViolation,
                    [rules::REMOVAL_HANG, held, parked as u64, self.machine.config().rundown_limit.as_millis() as u64],
                    format!(
                        "{during} cannot finish: {held} rundown references still held after {} ms \
                         ({parked} service IRPs never completed by the miniport); Windows would hang the PnP thread",
                        self.machine.config().rundown_limit.as_millis()
                    ),
                ));
            }
        }
    }

    fn free_adapter_resources(&self) {
        if let (Some(miniport), Some(extension)) = (self.miniport(), self.extension())
            && miniport.has_free_adapter_resources()
        {
            self.machine
                .call_driver("HwFreeAdapterResources", PASSIVE_LEVEL, || {
                    miniport.free_adapter_resources(extension)
                });
        }
        for timer in self.dispatcher.timers() {
            self.machine.report(BugCheck::new(
                Code::DriverVerifierDetectedViolation,
                [rules::TIMER_NOT_FREED, timer as u64, 0, 0],
                format!("the timer {timer:#x} from StorPortInitializeTimer was never freed"),
            ));
            self.dispatcher.free_timer(timer);
            let _ = self.machine.pool().free(timer as *mut u8, None);
        }
        // The class driver's SRBs outlive the adapter only as dangling pointers: Storport
        // would complete them into freed memory, or never.
        for (srb, _) in self.srbs_outstanding() {
            self.machine.report(BugCheck::new(
                Code::DriverVerifierDetectedViolation,
                [rules::SRB_PENDING_AT_REMOVAL, srb as u64, 0, 0],
                format!("SRB {srb:#x} still pending after the adapter's removal"),
            ));
        }
        let left = self.io.referenced_in_flight();
        if left > 0 {
            self.machine.report(BugCheck::new(
                Code::DriverVerifierDetectedViolation,
                [rules::IRPS_LEFT_AFTER_FLUSH, left as u64, 0, 0],
                format!(
                    "{left} service IRPs still owned by the miniport after HwFreeAdapterResources"
                ),
            ));
        }
        self.machine.note("HwFreeAdapterResources: adapter gone");
    }

    /// PnP adds a new device instance after the last one was removed (the driver stays
    /// loaded): a fresh, zeroed device extension; then [`Port::start_adapter`] starts it.
    /// The removed adapter's extension goes back to special pool, so a stale pointer to it
    /// faults (0xCC).
    pub fn add_adapter(&self) -> Result<(), StartError> {
        let old = {
            let mut adapter = self.adapter();
            if adapter.state != PnpState::Removed {
                return Err(StartError::WrongState(adapter.state));
            }
            let old = adapter.extension;
            *adapter = Adapter::default();
            self.io.add_device_instance();
            old
        };
        self.no_queued_work("the removed adapter's device extension was freed");
        if let Some(old) = old {
            let _ = self
                .machine
                .pool()
                .free((old.addr() - EXTENSION_HEADER) as *mut u8, None);
        }
        // Those the removal reported: their issuers stop waiting.
        for (_, standing) in self.srbs_outstanding() {
            standing.complete(|| 0);
        }
        self.dispatcher.release();
        self.machine.note("PnP: a new adapter instance is added");
        Ok(())
    }

    /// Reports (0xC7) a timer or DPC still queued when what it would run against goes away,
    /// and drops it.
    fn no_queued_work(&self, because: &str) {
        if self.dispatcher.pending() {
            self.machine.report(BugCheck::new(
                Code::TimerOrDpcInvalid,
                [1, 0, 0, 0],
                format!("a timer or DPC is still queued, but {because}"),
            ));
        }
        self.dispatcher.discard();
    }

    /// Driver unload: what Driver Verifier checks when the image goes away.
    pub fn unload(&self) {
        // Nothing queued by the driver may run once its image is gone.
        self.no_queued_work("the driver unloaded: it would run in freed code");
        self.dispatcher.stop();
        let leaks = self.machine.pool().outstanding(Owner::Driver);
        if !leaks.is_empty() {
            let bytes: usize = leaks.iter().map(|b| b.size).sum();
            let tags: Vec<String> = leaks
                .iter()
                .take(8)
                .map(|b| format!("'{}' {} bytes", tag_text(b.tag), b.size))
                .collect();
            self.machine.report(BugCheck::new(
                Code::DriverVerifierDetectedViolation,
                [0x62, 0, bytes as u64, leaks.len() as u64],
                format!(
                    "driver unloaded with {} pool allocations outstanding: {}",
                    leaks.len(),
                    tags.join(", ")
                ),
            ));
        }
        self.machine.note("driver unloaded");
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
