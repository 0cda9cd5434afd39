//! IRP_MJ_DEVICE_CONTROL on Storport's FDO: the service IOCTL goes to
//! HwProcessServiceRequest holding a rundown reference and is always answered STATUS_PENDING
//! (STORPORT.md §6.2); StorPortCompleteServiceIrp completes it and drops the reference.

use std::ffi::c_void;
use std::sync::atomic::Ordering;

use crate::cpu::PASSIVE_LEVEL;
use crate::io::irp::{IrpPtr, SL_PENDING_RETURNED};
use crate::io::{Origin, STATUS_PENDING, Via};
use crate::kernel::{Kernel, kernel};

pub const IOCTL_MINIPORT_PROCESS_SERVICE_IRP: u32 = 0x0004_D038;
const STATUS_DELETE_PENDING: u32 = 0xC000_0056;
const STATUS_INVALID_DEVICE_REQUEST: u32 = 0xC000_0010;
const STATUS_NOT_SUPPORTED: u32 = 0xC000_00BB;

/// Storport's dispatch routine for every major function it registers.
pub unsafe extern "win64" fn storport_dispatch(
    _device: *mut c_void,
    irp: *mut storport_abi::IRP,
) -> i32 {
    kernel().device_control(IrpPtr(irp)) as i32
}

/// Storport's DriverUnload / AddDevice placeholder: storsim drives PnP itself.
pub unsafe extern "win64" fn storport_unload(_driver: *mut c_void) {}

/// Storport's AddDevice: the FDO already exists in storsim.
pub unsafe extern "win64" fn storport_add_device(_driver: *mut c_void, _pdo: *mut c_void) -> i32 {
    0
}

impl Kernel {
    /// IoCallDriver to the adapter's FDO: one location down, then its dispatch routine (taken
    /// from the driver object, so a miniport that hooked it after StorPortInitialize is honoured).
    pub(crate) fn call_port(&self, irp: IrpPtr) -> u32 {
        // SAFETY: the sender just prepared the IRP; its current location is valid.
        let major = unsafe { irp.current() }.MajorFunction;
        let dispatch = self.port.objects.major_function(major);
        // SAFETY: Storport (or the driver) stored a DRIVER_DISPATCH there.
        let dispatch: unsafe extern "win64" fn(*mut c_void, *mut storport_abi::IRP) -> i32 =
            unsafe { std::mem::transmute(dispatch) };
        // SAFETY: the dispatch contract: the FDO and an IRP whose current location is its own.
        unsafe { dispatch(self.port.fdo().cast(), irp.0) as u32 }
    }

    /// RaidAdapterDeviceControlIrp + RaidAdapterMiniportProcessServiceRequest.
    pub(crate) fn device_control(&self, irp: IrpPtr) -> u32 {
        self.maybe_delay();
        if !self.port.rundown.acquire() {
            return self.port_complete(irp, STATUS_DELETE_PENDING);
        }
        // A handle to a removed adapter instance reaches a deleted FDO, whose rundown stays
        // closed for good. Checked under the reference just taken: while it is held the
        // current instance cannot be removed and replaced.
        let stale = self.io.irps().get(&irp.addr()).is_some_and(|record| {
            matches!(record.origin, Origin::User { instance, .. } if instance != self.port.instance())
        });
        if stale {
            let status = self.port_complete(irp, STATUS_DELETE_PENDING);
            self.port.rundown.release();
            return status;
        }
        // SAFETY: Storport owns the IRP during its dispatch.
        let code = unsafe { irp.current() }.IoControlCode;
        if code != IOCTL_MINIPORT_PROCESS_SERVICE_IRP {
            let status = self.port_complete(irp, STATUS_INVALID_DEVICE_REQUEST);
            self.port.rundown.release();
            return status;
        }
        let extension = self.port.extension();
        let process = self
            .port
            .callbacks()
            .and_then(|c| c.process_service_request);
        // Storport has no adapter-state gate here, only the rundown (STORPORT.md §6.2).
        let Some(process) = process.filter(|_| extension != 0) else {
            let status = self.port_complete(irp, STATUS_NOT_SUPPORTED);
            self.port.rundown.release();
            return status;
        };
        if let Some(record) = self.io.irps().get_mut(&irp.addr()) {
            record.service = true;
        }
        // IoMarkIrpPending, then the miniport owns it; every path ends in STATUS_PENDING.
        // SAFETY: still Storport's until the callback.
        unsafe { irp.current() }.Control |= SL_PENDING_RETURNED;
        self.port
            .counters
            .service_requests
            .fetch_add(1, Ordering::Relaxed);
        self.call_driver("HwProcessServiceRequest", PASSIVE_LEVEL, || {
            // SAFETY: the callback's contract: its extension and a service IRP at PASSIVE_LEVEL.
            unsafe { process(extension as *mut c_void, irp.0.cast()) }
        });
        STATUS_PENDING
    }

    /// Storport answering an IRP itself (IoCompleteRequest with IO_NO_INCREMENT).
    fn port_complete(&self, irp: IrpPtr, status: u32) -> u32 {
        {
            // SAFETY: Storport owns the IRP in its dispatch.
            let header = unsafe { irp.header() };
            header.IoStatus.Status = status as i32;
            header.IoStatus.Information = 0;
        }
        self.complete_irp(irp.addr(), Via::Port);
        status
    }
}
