//! Hand-written Storport/WDM bindings: the layouts (crate `storport-abi`, shared with storsim), the `raw-dylib`
//! imports of `storport.sys` and `ntoskrnl.exe`, and the WDK's inline helpers written out.
//!
//! This module and the shims in `entry.rs`, `irp.rs` and `sync.rs` are the only `unsafe` code
//! in the driver. Names keep their exact NT spelling so they can be looked up in the DDI docs.

pub use storport_abi::*;

#[cfg(target_os = "windows")]
pub mod inline;
#[cfg(target_os = "windows")]
pub mod ntoskrnl;
#[cfg(target_os = "windows")]
pub mod storport;
