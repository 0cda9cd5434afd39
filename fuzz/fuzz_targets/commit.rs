//! Coverage-guided fuzzing of revcall.sys's COMMIT path, through storsim: each input becomes
//! one COMMIT_AND_FETCH against SRBs two servers hold, judged by `revcall_sim::commit_fuzz`
//! (the protocol decoder as the differential oracle for malformed bytes, a model of the tags
//! for well-formed ones; a refused COMMIT completes no SRB, an accepted one exactly its own,
//! with the committed data or sense). The test command runs the same rig on a seeded stream
//! (`tests/commit_fuzz.rs`).
//!
//! `cargo +nightly fuzz run commit --sanitizer none` (see README.md, "Fuzzing").

#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use revcall_sim::commit_fuzz::CommitRig;

thread_local! {
    // libFuzzer runs every input on one thread; the rig lives until the process exits.
    static RIG: RefCell<Option<CommitRig>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    RIG.with(|cell| {
        let mut cell = cell.borrow_mut();
        let rig = cell.get_or_insert_with(|| {
            CommitRig::start(&revcall_sim::built_driver())
                .expect("revcall.sys loads and starts (build it with `cargo xtask build`)")
        });
        if let Err(error) = rig.check(data) {
            panic!("{error}");
        }
    });
});
