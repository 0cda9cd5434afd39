//! A stand-in `storport.sys` for Wine: the port driver revcall.sys binds its seven storport.sys
//! imports to when Wine's winedevice.exe loads it, written from docs/STORPORT-NOTES.md §6 (the
//! real port driver's behaviour) over Wine's own ntoskrnl.exe. It is what lets the unchanged
//! revcall.sys and the real revcall-tester.exe meet in a runtime nobody here wrote
//! (`cargo xtask wine`, docs/WINDOWS.md "Wine").
//!
//! * [`exports`]: StorPortInitialize (HW_INITIALIZATION_DATA validated as Storport does, the
//!   driver object's dispatch table and AddDevice set), StorPortNotification /
//!   StorPortExtendedFunction, the registry routines, StorPortSetDeviceQueueDepth.
//! * [`adapter`]: one adapter per PnP device: AddDevice (the FDO `\Device\RaidPortN`, the
//!   `\DosDevices\ScsiN:` link), START_DEVICE (HwFindAdapter with the virtual prototype,
//!   HwInitialize, the supported-control query, GUID_DEVINTERFACE_STORAGEPORT), removal and
//!   surprise removal in Storport's order, with the rundown wait on parked service IRPs.
//! * [`dispatch`]: the IRP_MJ routines; IOCTL_MINIPORT_PROCESS_SERVICE_IRP is marked pending
//!   and handed to HwProcessServiceRequest, or refused at once where the miniport has none.
//! * [`worker`]: RequestTimerCall, the extended timers and the DPCs run on a thread of the
//!   adapter's own, because Wine 8's KeInsertQueueDpc never runs a DPC.
//! * [`registry`]: StorPortRegistryRead from the service's `Parameters\Device` key.
//! * [`scan`]: the INQUIRY scan after start and BusChangeDetected, and the first READ a disk
//!   class driver would send a new disk (Wine has no disk.sys).
//!
//! Only built for `x86_64-pc-windows-msvc`; on the host the crate is empty.
#![cfg_attr(target_os = "windows", no_std)]

#[cfg(target_os = "windows")]
#[macro_use]
mod log;

#[cfg(target_os = "windows")]
mod adapter;
#[cfg(target_os = "windows")]
mod dispatch;
#[cfg(target_os = "windows")]
mod exports;
#[cfg(target_os = "windows")]
mod miniport;
#[cfg(target_os = "windows")]
mod nt;
#[cfg(target_os = "windows")]
mod registry;
#[cfg(target_os = "windows")]
mod scan;
#[cfg(target_os = "windows")]
mod worker;

/// An export driver's entry: the loader may call it; there is nothing to set up before a
/// miniport calls StorPortInitialize.
///
/// # Safety
///
/// Called by the loader with its own arguments, which are not used.
#[cfg(target_os = "windows")]
#[unsafe(no_mangle)]
pub unsafe extern "system" fn DriverEntry(
    _driver: *mut storport_abi::DRIVER_OBJECT,
    _registry_path: *mut storport_abi::UNICODE_STRING,
) -> i32 {
    nt::STATUS_SUCCESS
}

/// The code KeBugCheckEx reports for a panic in the stand-in ("SP" + 1).
#[cfg(target_os = "windows")]
const PANIC_BUG_CHECK_CODE: u32 = 0x5350_0001;

#[cfg(target_os = "windows")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let (file, line) = info.location().map_or(("", 0), |l| (l.file(), l.line()));
    log!("panic at %.*s:%u", file.len() as u32, file.as_ptr(), line);
    nt_imports::bug_check_on_panic(PANIC_BUG_CHECK_CODE, info)
}
