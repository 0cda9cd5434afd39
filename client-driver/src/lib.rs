//! revcall-client.sys: a kernel-mode subscriber of revcall's events.
//!
//! DriverEntry looks for revcall's adapter among `\Device\RaidPort0` … `RaidPort15` (the
//! first that answers revcall's STATS: other Storport adapters refuse the service IOCTL) and
//! subscribes to its events with [`revcall_kclient::Subscription`]. What arrives is counted in
//! the exported [`RevcallClientStats`] (storsim reads it out of the loaded image) and logged
//! with DbgPrintEx. DriverUnload stops the subscription: the WAIT at the adapter is cancelled
//! and awaited before the IRP is freed. docs/WINDOWS.md "The kernel-mode client".
//!
//! Only built for `x86_64-pc-windows-msvc`; on the host the crate is empty.
#![cfg_attr(target_os = "windows", no_std)]

#[cfg(target_os = "windows")]
mod driver;

#[cfg(target_os = "windows")]
pub use driver::{DriverEntry, RevcallClientStats};

/// The bug check a panic raises: "RC" + 1 (a Rust panic in revcall-client.sys).
#[cfg(target_os = "windows")]
const PANIC_BUG_CHECK_CODE: u32 = 0x5243_0001;

#[cfg(target_os = "windows")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    nt_imports::bug_check_on_panic(PANIC_BUG_CHECK_CODE, info)
}
