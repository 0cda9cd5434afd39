//! The linker arguments that make a cdylib a Windows kernel driver image, shared by the build
//! scripts of revcall (`build.rs`) and storsim's fixture drivers (`fixtures/build.rs`).
//!
//! They are not in `.cargo/config.toml`: target rustflags reach every crate built for the
//! target, so a user-mode executable (the companion tester) would be linked as a driver too.
//! A build script scopes them to its own package's linked artifacts instead.

/// The one target the drivers are built for.
pub const DRIVER_TARGET: &str = "x86_64-pc-windows-msvc";

/// lld-link arguments (link.exe spelling) of a WDM driver.
pub const DRIVER_LINK_ARGS: &[&str] = &[
    // IMAGE_DLLCHARACTERISTICS_WDM_DRIVER, kernel-mode subsystem, the entry the I/O manager calls.
    "/DRIVER:WDM",
    "/SUBSYSTEM:NATIVE",
    "/ENTRY:DriverEntry",
    // No CRT or default libraries: everything a driver calls is imported from the kernel.
    "/NODEFAULTLIB",
    // FORCE_INTEGRITY: the loader refuses the image unless it is signed.
    "/INTEGRITYCHECK",
    // The optional header's CheckSum: link.exe sets it for /SUBSYSTEM:NATIVE, lld-link only when
    // asked, and Windows 7's loader refuses a boot or kernel driver whose checksum is 0.
    "/RELEASE",
    // lld-link does not give driver sections the non-paged bit MSVC's linker does; the whole
    // driver runs at DISPATCH_LEVEL at times, so nothing may be paged.
    "/SECTION:.text,PRE",
    "/SECTION:.rdata,PR",
    "/SECTION:.data,PRW",
    "/SECTION:.pdata,PR",
    "/MERGE:.edata=.rdata",
];

/// Whether cargo runs this build script for the driver target.
pub fn for_driver_target() -> bool {
    std::env::var("TARGET").is_ok_and(|target| target == DRIVER_TARGET)
}

/// Prints every driver argument with the build-script `instruction`, e.g.
/// `rustc-link-arg-cdylib`.
pub fn emit(instruction: &str) {
    for arg in DRIVER_LINK_ARGS {
        println!("cargo::{instruction}={arg}");
    }
}
