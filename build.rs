//! Link settings of revcall.sys.
//!
//! * For `x86_64-pc-windows-msvc`: the driver's link arguments (`driver_link.rs`: /DRIVER:WDM,
//!   /SUBSYSTEM:NATIVE, /ENTRY:DriverEntry, /NODEFAULTLIB, non-paged sections), as
//!   `rustc-link-arg-cdylib`, so they reach the driver and nothing else (not the unit-test
//!   harness, not other packages). `.cargo/config.toml` only picks the linker (rust-lld,
//!   lld-link flavor) and the static CRT, which are harmless for executables.
//! * With `--features wdk`, on a Windows host with the WDK: wdk-build configures the build
//!   (library paths, its standard WDM link arguments, cfgs) and storport.lib is linked, which
//!   wdk-build does not add by itself.

#[path = "driver_link.rs"]
mod driver_link;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=driver_link.rs");
    if driver_link::for_driver_target() {
        driver_link::emit("rustc-link-arg-cdylib");
    }
    wdk::configure();
}

/// Whether `--features wdk` is on.
fn wdk_feature() -> bool {
    std::env::var_os("CARGO_FEATURE_WDK").is_some()
}

// `cfg(windows)` here is the *host* (a build script runs on the host): wdk-build is a
// build-dependency only on Windows hosts (`[target.'cfg(windows)'.build-dependencies]`).
#[cfg(windows)]
mod wdk {
    pub fn configure() {
        if !super::wdk_feature() {
            return;
        }
        if let Err(error) = wdk_build::configure_wdk_binary_build() {
            panic!(
                "the wdk feature needs the WDK: wdk-build could not configure the build: {error}"
            );
        }
        println!("cargo::rustc-link-arg-cdylib=storport.lib");
    }
}

#[cfg(not(windows))]
mod wdk {
    pub fn configure() {
        if super::wdk_feature() {
            panic!(
                "the wdk feature builds only on a Windows host with the WDK (wdk-sys generates its \
                 bindings from the WDK headers); on this host use `cargo xtask build`"
            );
        }
    }
}
