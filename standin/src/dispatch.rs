//! The IRP_MJ routines StorPortInitialize installs (§6.1 step 3: CREATE, CLOSE, READ, WRITE,
//! FLUSH_BUFFERS, DEVICE_CONTROL, INTERNAL_DEVICE_CONTROL, SHUTDOWN, POWER, SYSTEM_CONTROL,
//! PNP; CLEANUP stays the I/O manager's).

use storport_abi::{DEVICE_OBJECT, IRP};

use crate::adapter::Adapter;
use crate::nt::{self, DriverObject};

/// `IOCTL_MINIPORT_PROCESS_SERVICE_IRP`.
const IOCTL_MINIPORT_PROCESS_SERVICE_IRP: u32 = 0x4D038;

/// Fills the driver object's table with the stand-in's routines.
///
/// # Safety
///
/// `driver` is the live driver object of the miniport calling StorPortInitialize.
pub unsafe fn install(driver: *mut DriverObject) {
    let routines: [(usize, nt::DRIVER_DISPATCH); 11] = [
        (nt::IRP_MJ_CREATE, open_close),
        (nt::IRP_MJ_CLOSE, open_close),
        (nt::IRP_MJ_READ, refuse),
        (nt::IRP_MJ_WRITE, refuse),
        (nt::IRP_MJ_FLUSH_BUFFERS, refuse),
        (nt::IRP_MJ_DEVICE_CONTROL, device_control),
        (nt::IRP_MJ_INTERNAL_DEVICE_CONTROL, refuse),
        (nt::IRP_MJ_SHUTDOWN, open_close),
        (nt::IRP_MJ_POWER, pass_down),
        (nt::IRP_MJ_SYSTEM_CONTROL, pass_down),
        (nt::IRP_MJ_PNP, pnp),
    ];
    for (major, routine) in routines {
        // SAFETY: the caller's live driver object; MajorFunction has 28 entries.
        unsafe { (*driver).MajorFunction[major] = Some(routine) };
    }
    // SAFETY: as above.
    let extension = unsafe { (*driver).DriverExtension };
    // SAFETY: the I/O manager allocated the driver extension with the object.
    unsafe { (*extension).AddDevice = Some(crate::adapter::add_device) };
    // SAFETY: as above. A driver without DriverUnload cannot be stopped.
    unsafe { (*driver).DriverUnload = Some(unload) };
}

/// PnP removed every adapter before the driver unloads: only its miniport entry is left.
unsafe extern "system" fn unload(driver: *mut storport_abi::DRIVER_OBJECT) {
    crate::miniport::forget(driver);
    log!("driver unloaded");
}

unsafe extern "system" fn open_close(_device: *mut DEVICE_OBJECT, irp: *mut IRP) -> i32 {
    // SAFETY: the I/O manager's IRP, completed once here.
    unsafe { nt::complete(irp, nt::STATUS_SUCCESS, 0) }
}

unsafe extern "system" fn refuse(_device: *mut DEVICE_OBJECT, irp: *mut IRP) -> i32 {
    // SAFETY: as in `open_close`.
    unsafe { nt::complete(irp, nt::STATUS_INVALID_DEVICE_REQUEST, 0) }
}

unsafe extern "system" fn pass_down(device: *mut DEVICE_OBJECT, irp: *mut IRP) -> i32 {
    // SAFETY: `device` is one of the stand-in's FDOs (only those reach its routines).
    let lower = unsafe { Adapter::from_fdo(device) }.lower();
    // SAFETY: the IRP goes to the device below, unchanged.
    unsafe { nt::pass_down(lower, irp) }
}

/// §6.2: the service IOCTL takes a rundown reference, is marked pending and goes to
/// HwProcessServiceRequest (the reference is released by StorPortCompleteServiceIrp); where the
/// miniport has no HwProcessServiceRequest it fails at once with STATUS_NOT_SUPPORTED. Other
/// control codes: Storport's SCSI IOCTLs are not emulated.
unsafe extern "system" fn device_control(device: *mut DEVICE_OBJECT, irp: *mut IRP) -> i32 {
    // SAFETY: the I/O manager's IRP at its current location.
    let stack = unsafe { nt::current_stack(irp) };
    // SAFETY: a DEVICE_CONTROL location has the DeviceIoControl parameters.
    let code = unsafe { (*stack).IoControlCode };
    if code != IOCTL_MINIPORT_PROCESS_SERVICE_IRP {
        // SAFETY: as in `open_close`.
        return unsafe { nt::complete(irp, nt::STATUS_INVALID_DEVICE_REQUEST, 0) };
    }
    // SAFETY: only the stand-in's FDOs reach here.
    let adapter = unsafe { Adapter::from_fdo(device) };
    if !adapter.rundown.acquire() {
        // SAFETY: as in `open_close`.
        return unsafe { nt::complete(irp, nt::STATUS_DELETE_PENDING, 0) };
    }
    let Some(process) = adapter.miniport().routines.process_service_request else {
        adapter.rundown.release();
        // SAFETY: as in `open_close`.
        return unsafe { nt::complete(irp, nt::STATUS_NOT_SUPPORTED, 0) };
    };
    // SAFETY: IoMarkIrpPending on the IRP's current location, before the miniport owns it.
    unsafe { (*stack).Control |= nt::SL_PENDING_RETURNED };
    // SAFETY: the miniport's routine on its extension; the IRP is the miniport's from here
    // until StorPortCompleteServiceIrp.
    unsafe { process(adapter.extension(), irp.cast()) };
    nt::STATUS_PENDING
}

/// IRP_MJ_PNP: START goes down first and the adapter starts on the way up; the removals run
/// the adapter's part first and then go down (§6.7); everything else goes down unchanged.
unsafe extern "system" fn pnp(device: *mut DEVICE_OBJECT, irp: *mut IRP) -> i32 {
    // SAFETY: the I/O manager's IRP.
    let stack = unsafe { nt::current_stack(irp) };
    // SAFETY: its current location.
    let minor = unsafe { (*stack).MinorFunction };
    // SAFETY: only the stand-in's FDOs reach here.
    let adapter = unsafe { Adapter::from_fdo(device) };
    match minor {
        nt::IRP_MN_START_DEVICE => {
            // SAFETY: the lower device is the PDO this FDO is attached to.
            let below = unsafe { nt::forward_and_wait(adapter.lower(), irp) };
            let status = if below < 0 && below != nt::STATUS_NOT_SUPPORTED {
                below
            } else {
                // SAFETY: the PnP path: the PnP manager sends one IRP at a time.
                unsafe { adapter.start() }
            };
            // SAFETY: completed once, here.
            unsafe { nt::complete(irp, status, 0) }
        }
        nt::IRP_MN_SURPRISE_REMOVAL => {
            // SAFETY: as for START.
            unsafe { adapter.surprise_remove() };
            // SAFETY: the IRP is ours to set and pass on.
            unsafe { (*irp).IoStatus.Status = nt::STATUS_SUCCESS };
            // SAFETY: as in `pass_down`.
            unsafe { nt::pass_down(adapter.lower(), irp) }
        }
        nt::IRP_MN_REMOVE_DEVICE => {
            // SAFETY: as for START.
            unsafe { adapter.remove() };
            // SAFETY: as above.
            unsafe { (*irp).IoStatus.Status = nt::STATUS_SUCCESS };
            // SAFETY: as in `pass_down`.
            let status = unsafe { nt::pass_down(adapter.lower(), irp) };
            // SAFETY: removal is the adapter's last IRP; nothing refers to it any more.
            unsafe { adapter.delete() };
            status
        }
        _ => {
            // SAFETY: as in `pass_down`.
            unsafe { nt::pass_down(adapter.lower(), irp) }
        }
    }
}
