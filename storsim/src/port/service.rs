//! IRP_MJ_DEVICE_CONTROL on Storport's FDO: the service IOCTL goes to
//! HwProcessServiceRequest holding a rundown reference and is always answered STATUS_PENDING
//! (docs/STORPORT-NOTES.md §6.2); StorPortCompleteServiceIrp completes it and drops the
//! reference.

use std::sync::atomic::Ordering;

use super::Port;
use crate::cpu::PASSIVE_LEVEL;
use crate::io::irp::{SL_PENDING_RETURNED, header, location};
use crate::io::{IrpPtr, Via};
use storport_abi::status::user::{
    STATUS_DELETE_PENDING, STATUS_INVALID_DEVICE_REQUEST, STATUS_NOT_SUPPORTED, STATUS_PENDING,
};

pub const IOCTL_MINIPORT_PROCESS_SERVICE_IRP: u32 = 0x0004_D038;

impl Port {
    /// RaidAdapterDeviceControlIrp + RaidAdapterMiniportProcessServiceRequest.
    pub fn device_control(&self, irp: IrpPtr) -> u32 {
        self.machine.maybe_delay();
        if !self.rundown.acquire() {
            return self.port_complete(irp, STATUS_DELETE_PENDING);
        }
        // A handle to a removed adapter instance reaches a deleted FDO, whose rundown stays
        // closed for good. Checked under the reference just taken: while it is held the
        // current instance cannot be removed and replaced.
        let stale = self
            .io
            .sender_instance(&irp)
            .is_some_and(|instance| instance != self.io.device_instance());
        let code = irp.get_current(location::IO_CONTROL_CODE);
        let refused = if stale {
            Some(STATUS_DELETE_PENDING)
        } else if code != Some(IOCTL_MINIPORT_PROCESS_SERVICE_IRP) {
            Some(STATUS_INVALID_DEVICE_REQUEST)
        } else {
            None
        };
        if let Some(status) = refused {
            let status = self.port_complete(irp, status);
            self.rundown.release();
            return status;
        }
        // Storport has no adapter-state gate here, only the rundown (docs/STORPORT-NOTES.md
        // §6.2).
        let target = self
            .miniport()
            .filter(|miniport| miniport.serves_service_irps())
            .zip(self.extension());
        let Some((miniport, extension)) = target else {
            let status = self.port_complete(irp, STATUS_NOT_SUPPORTED);
            self.rundown.release();
            return status;
        };
        self.io.mark_referenced(&irp);
        // IoMarkIrpPending, then the miniport owns it; every path ends in STATUS_PENDING.
        let current = irp
            .current()
            .expect("a dispatched IRP has a current location");
        let control = irp.get_at(current, location::CONTROL);
        irp.set_at(current, location::CONTROL, control | SL_PENDING_RETURNED);
        self.counters
            .service_requests
            .fetch_add(1, Ordering::Relaxed);
        self.machine
            .call_driver("HwProcessServiceRequest", PASSIVE_LEVEL, || {
                miniport.process_service_request(extension, &irp)
            });
        STATUS_PENDING
    }

    /// Storport answering an IRP itself (IoCompleteRequest with IO_NO_INCREMENT).
    fn port_complete(&self, irp: IrpPtr, status: u32) -> u32 {
        irp.set(header::STATUS, status as i32);
        irp.set(header::INFORMATION, 0);
        self.io.complete(irp.addr(), Via::Port);
        status
    }
}
