//! Hand-written Storport/WDM bindings: layouts (checked on every target), the `raw-dylib`
//! imports of `storport.sys` and `ntoskrnl.exe`, and the WDK's inline helpers written out.
//!
//! This module and the shims in `entry.rs`, `irp.rs` and `sync.rs` are the only `unsafe` code
//! in the driver. Names keep their exact NT spelling so they can be looked up in the DDI docs.

mod types;
pub use types::*;

#[cfg(target_os = "windows")]
pub mod inline;
#[cfg(target_os = "windows")]
pub mod ntoskrnl;
#[cfg(target_os = "windows")]
pub mod storport;
