//! storsim: load a Storport miniport `.sys` into a Linux process and drive it through emulated
//! storport.sys, ntoskrnl.exe and I/O-manager behaviour, with Driver-Verifier-style checks.
//!
//! This crate is the emulator, for any virtual miniport; what runs revcall.sys in it (the
//! scripted runs, the torture, the benchmark and the `storsim` command) is the `revcall-sim`
//! crate beside it.
//!
//! Layers, each using only those below it (`tests/layering.rs` checks every `use crate::…`;
//! docs/STORSIM.md draws the graph):
//!
//! | layer | modules |
//! |---|---|
//! | for scripts | `harness` (boot, load, start, finish) |
//! | the driver boundary | `driver` (load, the fault path), `exports` (driver → storsim) |
//! | the façade | `kernel` (one machine; the process-global the exports find) |
//! | the port driver | `port` |
//! | the miniport's code, typed | `miniport` (storsim → driver) |
//! | the I/O manager | `io` |
//! | the machine | `machine`, `report` |
//! | the ground | `verifier`, `faults`, `pool`, `cpu`, `loader`, `events` |

pub mod class;
pub mod cpu;
pub mod driver;
pub mod events;
pub mod exports;
pub mod faults;
pub mod harness;
pub mod io;
pub mod kernel;
pub mod loader;
pub mod machine;
pub mod miniport;
pub mod pool;
pub mod port;
pub mod report;
pub mod verifier;
