//! Emulated CPUs: the per-thread kernel state driver code expects to find on a real x64 processor.
//!
//! storsim calls the driver natively on ordinary Linux threads. Each such thread becomes an
//! "emulated CPU" by calling [`enter_thread`], which gives it what inlined kernel code reads
//! directly from the processor instead of through an import (docs/EMULATION-NOTES.md §4):
//!
//! * a GS base pointing at a fake KPCR, so `gs:[0x18]` (KPCR.Self), `gs:[0x20]` (KPCR.CurrentPrcb)
//!   and `gs:[0x188]` (KPRCB.CurrentThread) are valid;
//! * an IRQL, kept per thread in this module and reachable both from storsim's emulated
//!   `KfRaiseIrql`/`KeLowerIrql` ([`irql`], [`set_irql`]) and from driver code that inlines
//!   `mov reg, cr8` / `mov cr8, reg`: at CPL 3 those raise #GP, and the SIGSEGV handler installed
//!   by [`install_fault_handler`] emulates them against the same per-thread value;
//! * an alternate signal stack, so a fault that is a driver stack overflow is still reported.
//!
//! Every other fault (page faults, `ud2`, other privileged instructions) goes to the fatal hook
//! storsim registers with [`set_fatal_hook`] as a [`Fault`] — the emulator's bug check.

mod decode;
mod fault;
mod thread;

#[cfg(test)]
mod tests;

use std::cell::Cell;

pub use fault::{Fault, install_fault_handler, set_fatal_hook};
pub use thread::{NO_CPU, current_cpu, current_kpcr, current_kthread, enter_thread};

/// The IRQLs storsim models (x64: CR8 holds 4 bits, so nothing lies above HIGH_LEVEL).
pub use storport_abi::{APC_LEVEL, DISPATCH_LEVEL, HIGH_LEVEL, PASSIVE_LEVEL};

thread_local! {
    // `const` initializer without `Drop`: a plain `#[thread_local]` slot that never registers a
    // destructor or lazily initializes, so the signal handler may read and write it (§4.2).
    static IRQL: Cell<u8> = const { Cell::new(PASSIVE_LEVEL) };
}

/// Returns this thread's emulated IRQL (what `mov reg, cr8` in driver code reads).
///
/// Async-signal-safe: no allocation, no locks. A thread that never called [`enter_thread`]
/// reads [`PASSIVE_LEVEL`].
pub fn irql() -> u8 {
    IRQL.get()
}

/// Stores this thread's emulated IRQL.
///
/// Legality (raising below the current level, lowering above it) is for storsim's emulated
/// `KfRaiseIrql`/`KeLowerIrql` to judge; this only stores. Driver code reading CR8 sees the low
/// 4 bits, as CR8 has no more. Async-signal-safe.
pub fn set_irql(level: u8) {
    IRQL.set(level);
}
