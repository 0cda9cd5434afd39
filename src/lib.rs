//! revcall: a Storport virtual miniport whose job is the reverse-callback channel.
//!
//! Callers park `IOCTL_MINIPORT_PROCESS_SERVICE_IRP` requests with the adapter; the adapter
//! completes them when events fire, when they are cancelled, or when it goes away.
//!
//! Layout: the hand-written Storport/WDM bindings are crates of their own, shared with storsim
//! and its fixture drivers: `storport-abi` (layouts and constants) and `nt-imports` (the
//! imports of ntoskrnl.exe and storport.sys, and the WDK's inline helpers). `entry` holds the
//! thin callback shims; with `irp`, `srb` and `sync` they are the driver's only `unsafe` code.
//! `adapter`, `service_queue`, `event_ring`, `lun_table`, `tag_table`, `session`, `disk` and
//! `port` are safe, portable Rust, unit-tested on the host; the SCSI command set is the `revcall-scsi` crate.
//!
//! The crate is `no_std` when built for Windows (the driver); on other targets it builds
//! against std so its portable core can be unit-tested, and nothing kernel-only is compiled.
#![cfg_attr(target_os = "windows", no_std)]

pub mod adapter;
pub mod disk;
pub mod error;
pub mod event_ring;
pub mod lun_table;
pub mod port;
pub mod service_queue;
pub mod session;
pub mod tag_table;

#[cfg(target_os = "windows")]
mod entry;
#[cfg(target_os = "windows")]
mod irp;
#[cfg(target_os = "windows")]
mod log;
#[cfg(target_os = "windows")]
mod srb;
#[cfg(target_os = "windows")]
mod sync;
#[cfg(all(target_os = "windows", feature = "wdk"))]
mod wdk_check;

#[cfg(all(test, loom))]
mod model;
#[cfg(test)]
mod testing;
