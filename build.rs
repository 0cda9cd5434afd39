//! The driver's link settings live in `.cargo/config.toml` under `[target.x86_64-pc-windows-msvc]`
//! (rust-lld in lld-link flavor, /DRIVER:WDM, /SUBSYSTEM:NATIVE, /ENTRY:DriverEntry, /NODEFAULTLIB).
//! This script only adds the WDK path: with `--features wdk` on a Windows host with the WDK,
//! wdk-build configures the build (library paths, its standard driver link arguments) and
//! storport.lib is linked, which wdk-build does not add by itself.

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    #[cfg(windows)]
    wdk::configure();
}

// `cfg(windows)` here is the *host*: wdk-build is a build-dependency only on Windows hosts.
#[cfg(windows)]
mod wdk {
    pub fn configure() {
        if std::env::var_os("CARGO_FEATURE_WDK").is_none() {
            return;
        }
        if let Err(error) = wdk_build::configure_wdk_binary_build() {
            panic!(
                "the wdk feature needs the WDK: wdk-build could not configure the build: {error}"
            );
        }
        println!("cargo::rustc-cdylib-link-arg=storport.lib");
    }
}
