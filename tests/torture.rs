//! A short torture run of revcall.sys: 4 emulated CPUs, every kind of request, cancellation,
//! handle close, process exit and malformed input, through removal and surprise-removal cycles.
//! (`cargo xtask test` also runs the CLI; the full run is in docs/RELIABILITY.md.)

mod common;

use common::revcall_sys;
use revcall_sim::torture::{self, TortureOptions};

#[test]
fn four_cpus_through_removal_cycles_keep_every_invariant() {
    let options = TortureOptions {
        driver: revcall_sys(),
        cpus: 4,
        ops: 20_000,
        removals: 6,
        seed: 3,
        delay: 0.02,
        fail_rate: 0.0,
        rundown_limit: std::time::Duration::from_secs(2),
        progress: false,
        json: false,
        client: Some(revcall_sys().with_file_name("revcall-client.sys")),
    };
    let report = torture::run(&options);
    assert!(report.passed, "{}", report.text());
    // The kernel client lived through every adapter instance and ended with each.
    let client = report
        .kernel_client
        .as_ref()
        .expect("a kernel client was loaded");
    assert_eq!(client.lives, 7, "{}", report.text());
    assert!(client.delivered > 0, "{}", report.text());
    assert_eq!(report.ops_total, 20_000);
    assert!(report.violations.is_empty() && report.failures_total == 0);
    assert_eq!(report.irps.outstanding, Some(0));
    assert_eq!(report.irps.issued, report.irps.completed);
    assert_eq!(report.pool_outstanding, 0);
    // Every path was exercised.
    for op in [
        "wait",
        "fire",
        "discover",
        "stats",
        "cancel-io",
        "close-handle",
        "process-exit",
        "malformed",
        "cancel-io-foreign",
        "flood",
        "lun",
    ] {
        assert!(
            report.ops.get(op).is_some_and(|n| *n > 0),
            "no {op}: {:?}",
            report.ops
        );
    }
    for status in [
        "SUCCESS",
        "CANCELLED",
        "DELETE_PENDING",
        "INVALID_PARAMETER",
    ] {
        assert!(
            report.completions.contains_key(status),
            "never saw {status}: {:?}",
            report.completions
        );
    }
    assert_eq!(report.removals.regular + report.removals.surprise, 7);
    // The races were pressed and the end-of-run checks ran.
    let races = &report.races;
    assert!(
        races.foreign_cancels > 0 && races.cancels_during_dispatch > 0,
        "{races:?}"
    );
    assert!(races.floods_at_cap > 0, "{races:?}");
    // One checkpoint before each of the 6 cycles, one at the end.
    assert_eq!(races.stats_reconciled, 7, "{races:?}");
    assert!(report.events.delivered > 0);
}
