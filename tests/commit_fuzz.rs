//! The COMMIT fuzz target's rig (`revcall_sim::commit_fuzz`) on a seeded stream of inputs:
//! what `cargo +nightly fuzz run commit` does with coverage guidance, a few thousand times here
//! on every test run, against the real revcall.sys. `COMMIT_FUZZ_INPUTS=N` runs N inputs
//! instead of 5,000.

mod common;

use revcall_protocol::status::*;
use revcall_sim::commit_fuzz::CommitRig;
use storport_abi::status::Named;

#[test]
fn arbitrary_commits_complete_only_what_they_validly_commit() {
    let mut rig = CommitRig::start(&common::revcall_sys()).expect("the rig starts");
    let mut rng = fastrand::Rng::with_seed(0x00C0_FFEE);
    let inputs: usize = std::env::var("COMMIT_FUZZ_INPUTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(5_000);
    for _ in 0..inputs {
        let len = rng.usize(0..160);
        let mut input: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        // Half the inputs build their results from the held tags (mode bit 0).
        if let Some(mode) = input.first_mut() {
            *mode |= u8::from(rng.bool());
        }
        if let Err(error) = rig.check(&input) {
            panic!("input {input:02x?}: {error}");
        }
    }
    let seen: Vec<String> = rig
        .seen
        .iter()
        .map(|(&status, count)| format!("{}: {count}", Named(status)))
        .collect();
    println!(
        "{} inputs, {} SRBs committed: {}",
        rig.inputs,
        rig.committed,
        seen.join(", ")
    );
    assert!(rig.committed >= 300, "few SRBs committed");
    for status in [
        STATUS_SUCCESS,
        STATUS_INVALID_PARAMETER,
        STATUS_NOT_FOUND,
        STATUS_ACCESS_DENIED,
        STATUS_INVALID_BUFFER_SIZE,
        STATUS_BUFFER_TOO_SMALL,
    ] {
        assert!(
            rig.seen.get(&status).copied().unwrap_or(0) >= 10,
            "the inputs rarely reach {}: {seen:?}",
            Named(status)
        );
    }
    let summary = rig.finish().expect("the rig stops");
    assert!(summary.violations.is_empty(), "{}", summary.text(false));
    assert_eq!(summary.irps.outstanding, Some(0));
    assert_eq!(summary.pool_outstanding, 0);
}
