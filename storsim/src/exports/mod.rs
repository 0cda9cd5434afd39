//! The emulated exports of ntoskrnl.exe and storport.sys, bound into the driver's import
//! table by the loader, and the routines storport.sys leaves in the driver object. Every
//! routine is `extern "win64"` (the driver's calling convention); each enters the verifier's
//! call context and the delay injector first.
//!
//! This is the one place the driver's raw pointers become checked values: a NULL where
//! Windows would bug-check is reported as it would be, an IRP is looked up in the I/O
//! manager's registry ([`crate::io::Io::irp_in_flight`]) before anything touches it, and the
//! miniport's routines become a typed [`crate::miniport::Miniport`].
//!
//! # Safety (every routine here)
//!
//! The driver calls these through its import table with the arguments the DDI documents:
//! each routine trusts exactly what its DDI page promises of a correct caller (pointer
//! arguments valid for the documented access) and checks what Driver Verifier checks.

mod caller;
mod csq;
mod dbgprint;
mod ntoskrnl;
mod storport;

use std::rc::Rc;
use std::sync::Arc;

use crate::kernel::{Kernel, entered};
use crate::verifier::{self, CallGuard};

/// One export: its name and the address the driver's IAT slot receives.
pub type Export = (&'static str, usize);

/// The address of `dll!name`, or `None` if storsim does not provide it (the load then fails
/// naming it, as Windows refuses a driver with an unresolved import).
pub fn resolve(dll: &str, name: &str) -> Option<usize> {
    let table = match dll.to_ascii_lowercase().as_str() {
        "ntoskrnl.exe" => [ntoskrnl::exports(), caller::exports()].concat(),
        "storport.sys" => storport::exports(),
        _ => return None,
    };
    table
        .into_iter()
        .find(|(export, _)| *export == name)
        .map(|(_, address)| address)
}

/// Every routine storsim provides, as `dll!name`.
pub fn provided() -> Vec<String> {
    let ntoskrnl = [ntoskrnl::exports(), caller::exports()]
        .concat()
        .into_iter()
        .map(|(n, _)| format!("ntoskrnl.exe!{n}"));
    let storport = storport::exports()
        .into_iter()
        .map(|(n, _)| format!("storport.sys!{n}"));
    ntoskrnl.chain(storport).collect()
}

/// What every emulated routine does first: find the kernel, say who is running, maybe delay.
#[expect(
    clippy::redundant_allocation,
    reason = "crate::kernel::entered's per-thread count"
)]
fn enter(routine: &'static str) -> (Rc<Arc<Kernel>>, CallGuard) {
    let kernel = entered();
    let guard = verifier::enter(routine);
    kernel.machine().maybe_delay();
    (kernel, guard)
}
