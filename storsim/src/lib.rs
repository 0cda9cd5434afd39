//! storsim: load a Storport miniport `.sys` into a Linux process and drive it through emulated
//! storport.sys, ntoskrnl.exe and I/O-manager behaviour, with Driver-Verifier-style checks.
//!
//! Layers (dependencies point down): `cli` → `scenarios` → `port`, `io` → `verifier`;
//! `exports` (what the driver imports) calls into `port` and `io`; `loader` (PE mapping),
//! `pool` (special pool) and `cpu` (threads, IRQL, faults) know none of them.

pub mod cli;
pub mod cpu;
pub mod driver;
pub mod exports;
pub mod faults;
pub mod io;
pub mod kernel;
pub mod loader;
pub mod pool;
pub mod port;
pub mod report;
pub mod scenarios;
pub mod verifier;
