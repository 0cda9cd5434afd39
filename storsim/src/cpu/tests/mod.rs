//! Tests on real hardware behaviour: CR8 moves trap and are emulated and GS reaches the KPCR
//! (`emulation`); real faults reach the fatal hook (`faults`, which runs the test binary itself
//! as a child process, since the hook ends the process).

mod emulation;
mod faults;

use super::{enter_thread, install_fault_handler};

/// Makes the calling test thread an emulated CPU with CR8 emulation (libtest runs tests on
/// several threads; every one needs this).
fn setup() {
    enter_thread();
    install_fault_handler();
}
