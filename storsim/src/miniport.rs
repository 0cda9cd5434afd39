//! The miniport's code as Storport calls it: the HW_* routines of its HW_INITIALIZATION_DATA,
//! its HwTimer and HwDpcRoutines, each behind a safe method.
//!
//! Soundness rests on how the values are made, once, where the driver's raw pointers come in:
//! [`Miniport::new`] (StorPortInitialize's validation in `exports/`), [`Extension::new`] (the
//! port's allocation of the device extension) and [`Timer::new`] / [`DpcRoutine::new`]
//! (StorPortNotification). The methods add only what each DDI page requires of the call.

use std::ffi::c_void;

use storport_abi::{
    HW_ADAPTER_CONTROL, HW_COMPLETE_SERVICE_IRP, HW_DPC_ROUTINE, HW_FREE_ADAPTER_RESOURCES,
    HW_INITIALIZE, HW_PROCESS_SERVICE_REQUEST, HW_RESET_BUS, HW_STARTIO, HW_TIMER, HW_TIMER_EX,
    PORT_CONFIGURATION_INFORMATION, SCSI_REQUEST_BLOCK, VIRTUAL_HW_FIND_ADAPTER,
};

use crate::io::IrpPtr;
use crate::io::objects::DriverObjects;

/// The miniport's HwDeviceExtension, as Storport allocated it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extension(usize);

impl Extension {
    /// # Safety
    ///
    /// `addr` is the start of a live HwDeviceExtension of at least the miniport's
    /// `DeviceExtensionSize` bytes, which stays allocated while callbacks are called with it.
    pub unsafe fn new(addr: usize) -> Self {
        Self(addr)
    }

    pub fn addr(self) -> usize {
        self.0
    }

    fn ptr(self) -> *mut c_void {
        self.0 as *mut c_void
    }
}

/// What Storport keeps from the miniport's HW_INITIALIZATION_DATA.
#[derive(Clone, Copy)]
pub struct Miniport {
    find_adapter: VIRTUAL_HW_FIND_ADAPTER,
    initialize: HW_INITIALIZE,
    start_io: HW_STARTIO,
    reset_bus: HW_RESET_BUS,
    adapter_control: Option<HW_ADAPTER_CONTROL>,
    free_adapter_resources: Option<HW_FREE_ADAPTER_RESOURCES>,
    process_service_request: Option<HW_PROCESS_SERVICE_REQUEST>,
    complete_service_irp: Option<HW_COMPLETE_SERVICE_IRP>,
    pub extension_size: u32,
    pub srb_extension_size: u32,
}

/// The routines of a [`Miniport`], as read from HW_INITIALIZATION_DATA.
pub use storport_abi::init::Routines;

impl Miniport {
    /// # Safety
    ///
    /// Every routine is the address of driver code with its storport.h prototype, in an image
    /// that stays loaded while the miniport is called.
    pub unsafe fn new(routines: Routines, extension_size: u32, srb_extension_size: u32) -> Self {
        Self {
            find_adapter: routines.find_adapter,
            initialize: routines.initialize,
            start_io: routines.start_io,
            reset_bus: routines.reset_bus,
            adapter_control: routines.adapter_control,
            free_adapter_resources: routines.free_adapter_resources,
            process_service_request: routines.process_service_request,
            complete_service_irp: routines.complete_service_irp,
            extension_size,
            srb_extension_size,
        }
    }

    /// HwFindAdapter with the virtual prototype: HwContext and LowerDevice are the PDO,
    /// BusInformation the FDO, no argument string. Returns its SP_RETURN_* value.
    pub fn find_adapter(
        &self,
        extension: Extension,
        objects: &DriverObjects,
        config: &mut PORT_CONFIGURATION_INFORMATION,
        again: &mut u8,
    ) -> u32 {
        let (pdo, fdo) = (objects.pdo().cast(), objects.fdo().cast());
        // SAFETY: the routine's prototype (`new`); a live extension (`Extension::new`); the
        // device objects are the I/O manager's own; config and again are exclusive references.
        unsafe {
            (self.find_adapter)(
                extension.ptr(),
                pdo,
                fdo,
                pdo,
                std::ptr::null_mut(),
                config,
                again,
            )
        }
    }

    /// HwInitialize: `false` if the miniport refused.
    pub fn initialize(&self, extension: Extension) -> bool {
        // SAFETY: prototype (`new`), live extension (`Extension::new`).
        unsafe { (self.initialize)(extension.ptr()) != 0 }
    }

    /// HwStartIo.
    ///
    /// # Safety
    ///
    /// `srb` is a live SCSI_REQUEST_BLOCK (with its data buffer and SrbExtension) that
    /// Storport owns and hands to the miniport until it completes it.
    pub unsafe fn start_io(&self, extension: Extension, srb: *mut SCSI_REQUEST_BLOCK) -> bool {
        // SAFETY: prototype (`new`), live extension (`Extension::new`), the caller's SRB.
        unsafe { (self.start_io)(extension.ptr(), srb) != 0 }
    }

    /// HwResetBus(PathId): the miniport completes every SRB of the bus; whether it reset it.
    pub fn reset_bus(&self, extension: Extension, path_id: u32) -> bool {
        // SAFETY: prototype (`new`), live extension (`Extension::new`).
        unsafe { (self.reset_bus)(extension.ptr(), path_id) != 0 }
    }

    /// Whether the miniport has an HwAdapterControl.
    pub fn has_adapter_control(&self) -> bool {
        self.adapter_control.is_some()
    }

    /// HwAdapterControl(ScsiQuerySupportedControlTypes): fills `list`, a
    /// SCSI_SUPPORTED_CONTROL_TYPE_LIST (count, then one flag per control type).
    pub fn query_supported_controls(&self, extension: Extension, list: &mut [u8]) {
        let Some(routine) = self.adapter_control else {
            return;
        };
        let entries = u32::from_le_bytes(list[..4].try_into().expect("a 4-byte count"));
        assert!(
            list.len() >= 4 + entries as usize,
            "a list as long as its count"
        );
        // SAFETY: prototype (`new`), live extension; `list` holds the count and `entries`
        // flags, the layout the control type requires, exclusively borrowed for the call.
        unsafe {
            routine(
                extension.ptr(),
                0, // ScsiQuerySupportedControlTypes
                list.as_mut_ptr().cast(),
            );
        }
    }

    /// HwAdapterControl for a control type that takes no parameters (stop, restart, surprise
    /// removal). `false` if the miniport has no HwAdapterControl.
    pub fn adapter_control(&self, extension: Extension, control: u32) -> bool {
        let Some(routine) = self.adapter_control else {
            return false;
        };
        // SAFETY: prototype (`new`), live extension; these control types take no parameters.
        unsafe { routine(extension.ptr(), control, std::ptr::null_mut()) };
        true
    }

    pub fn has_free_adapter_resources(&self) -> bool {
        self.free_adapter_resources.is_some()
    }

    pub fn has_complete_service_irp(&self) -> bool {
        self.complete_service_irp.is_some()
    }

    /// HwFreeAdapterResources, if the miniport has one.
    pub fn free_adapter_resources(&self, extension: Extension) {
        if let Some(routine) = self.free_adapter_resources {
            // SAFETY: prototype (`new`), live extension; the adapter's last callback.
            unsafe { routine(extension.ptr()) }
        }
    }

    /// Whether the miniport serves IOCTL_MINIPORT_PROCESS_SERVICE_IRP.
    pub fn serves_service_irps(&self) -> bool {
        self.process_service_request.is_some()
    }

    /// HwProcessServiceRequest: the miniport owns `irp` from here until it completes it.
    pub fn process_service_request(&self, extension: Extension, irp: &IrpPtr) {
        if let Some(routine) = self.process_service_request {
            // SAFETY: prototype (`new`), live extension; `irp` is a live IRP (IrpPtr's
            // invariant) whose current location is the miniport's.
            unsafe { routine(extension.ptr(), irp.as_ptr().cast()) }
        }
    }

    /// HwCompleteServiceIrp: `false` if the miniport has none.
    pub fn complete_service_irp(&self, extension: Extension) -> bool {
        let Some(routine) = self.complete_service_irp else {
            return false;
        };
        // SAFETY: prototype (`new`), live extension.
        unsafe { routine(extension.ptr()) };
        true
    }
}

/// The HwTimer a RequestTimerCall named.
#[derive(Clone, Copy)]
pub struct Timer(HW_TIMER);

impl Timer {
    /// # Safety
    ///
    /// `routine` is driver code with the HW_TIMER prototype, in an image that stays loaded
    /// while the timer is queued.
    pub unsafe fn new(routine: HW_TIMER) -> Self {
        Self(routine)
    }

    pub fn call(self, extension: Extension) {
        // SAFETY: prototype (`new`), live extension.
        unsafe { (self.0)(extension.ptr()) }
    }
}

/// The HwStorTimerEx a StorPortRequestTimer named, with its context.
#[derive(Clone, Copy)]
pub struct TimerEx(HW_TIMER_EX, usize);

impl TimerEx {
    /// # Safety
    ///
    /// `routine` is driver code with the HW_TIMER_EX prototype, in an image that stays loaded
    /// while the timer is queued; `context` is the miniport's own value.
    pub unsafe fn new(routine: HW_TIMER_EX, context: usize) -> Self {
        Self(routine, context)
    }

    pub fn call(self, extension: Extension) {
        // SAFETY: prototype (`new`), live extension, the context handed back unchanged.
        unsafe { (self.0)(extension.ptr(), self.1 as *mut c_void) }
    }
}

/// The HwDpcRoutine an InitializeDpc bound to a STOR_DPC.
#[derive(Clone, Copy)]
pub struct DpcRoutine(HW_DPC_ROUTINE);

impl DpcRoutine {
    /// # Safety
    ///
    /// `routine` is driver code with the HW_DPC_ROUTINE prototype, in an image that stays
    /// loaded while the DPC can run.
    pub unsafe fn new(routine: HW_DPC_ROUTINE) -> Self {
        Self(routine)
    }

    /// Runs the routine for the STOR_DPC at `dpc` (the miniport's own, by address: the routine
    /// receives it back as it passed it) with IssueDpc's two arguments.
    pub fn call(self, dpc: usize, extension: Extension, arg1: usize, arg2: usize) {
        // SAFETY: prototype (`new`), live extension; the STOR_DPC pointer and the arguments
        // are the miniport's own values, handed back unchanged.
        unsafe {
            (self.0)(
                dpc as *mut _,
                extension.ptr(),
                arg1 as *mut c_void,
                arg2 as *mut c_void,
            )
        }
    }
}
