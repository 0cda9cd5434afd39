//! Links revcall-client.sys like revcall.sys (`../driver_link.rs`), only for
//! `x86_64-pc-windows-msvc`; on the host the crate is empty.

#[path = "../driver_link.rs"]
mod driver_link;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=../driver_link.rs");
    if driver_link::for_driver_target() {
        driver_link::emit("rustc-link-arg-cdylib");
    }
}
