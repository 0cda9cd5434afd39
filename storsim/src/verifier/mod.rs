//! The emulated Driver Verifier: every rule violation becomes a [`BugCheck`] that reads like the
//! real one (code, four parameters, a sentence, the driver call that did it) and fails the run.
//!
//! Checks live next to the emulated routine they guard (`exports/`, `io/`, `port/`, `pool/`);
//! this module only collects reports and knows which driver call is running on each thread.

use std::cell::RefCell;
use std::fmt;
use std::sync::Mutex;

use serde::Serialize;

/// One violation, shaped like a Windows bug check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BugCheck {
    /// Bug-check code, e.g. 0x44 MULTIPLE_IRP_COMPLETE_REQUESTS or 0xC9 for I/O verification.
    pub code: u32,
    /// The four bug-check parameters (P1 is the sub-code for 0xC4/0xC9/0xF1).
    pub params: [u64; 4],
    /// The bug check's symbolic name.
    pub name: &'static str,
    /// One sentence: what the driver did wrong.
    pub what: String,
    /// The driver callback and emulated call that were running, outermost first.
    pub call: String,
}

impl fmt::Display for BugCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "*** STOP 0x{:08X} ({:#x}, {:#x}, {:#x}, {:#x}) {}\n    {}\n    in: {}",
            self.code,
            self.params[0],
            self.params[1],
            self.params[2],
            self.params[3],
            self.name,
            self.what,
            self.call
        )
    }
}

impl BugCheck {
    /// A report attributed to whatever driver call is running on this thread.
    pub fn new(code: Code, params: [u64; 4], what: impl Into<String>) -> Self {
        Self {
            code: code.value(),
            params,
            name: code.name(),
            what: what.into(),
            call: current_call(),
        }
    }

    /// The driver's own KeBugCheckEx: its code, whatever that means to the driver.
    pub fn raised_by_driver(code: u32, params: [u64; 4], what: impl Into<String>) -> Self {
        Self {
            code,
            params,
            name: "driver-initiated bug check",
            what: what.into(),
            call: current_call(),
        }
    }
}

/// Collects the violations of one run.
#[derive(Default)]
pub struct Verifier {
    violations: Mutex<Vec<BugCheck>>,
}

impl Verifier {
    /// Records a violation; the run will fail.
    pub fn report(&self, bug: BugCheck) {
        eprintln!("{bug}");
        self.violations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(bug);
    }

    /// Each violation so far as (bug-check code, P1), in report order: what a test compares.
    pub fn codes(&self) -> Vec<(u32, u64)> {
        self.violations()
            .iter()
            .map(|bug| (bug.code, bug.params[0]))
            .collect()
    }

    /// Every violation so far, in report order.
    pub fn violations(&self) -> Vec<BugCheck> {
        self.violations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

thread_local! {
    // What driver code is running on this thread: callbacks and emulated calls, outermost first.
    static CALLS: RefCell<Vec<&'static str>> = const { RefCell::new(Vec::new()) };
}

/// Marks `name` (a driver callback or an emulated routine) as running on this thread until the
/// guard drops, so reports can say which call did it.
pub fn enter(name: &'static str) -> CallGuard {
    CALLS.with(|calls| calls.borrow_mut().push(name));
    CallGuard(())
}

/// Pops the call pushed by [`enter`].
pub struct CallGuard(());

impl Drop for CallGuard {
    fn drop(&mut self) {
        CALLS.with(|calls| calls.borrow_mut().pop());
    }
}

/// The calls running on this thread, e.g. `HwProcessServiceRequest → StorPortExtendedFunction`.
pub fn current_call() -> String {
    CALLS.with(|calls| {
        let calls = calls.borrow();
        if calls.is_empty() {
            "storsim (no driver call)".to_owned()
        } else {
            calls.join(" → ")
        }
    })
}
pub mod locks;
pub mod rules;
#[cfg(test)]
mod tests;

pub use rules::Code;
