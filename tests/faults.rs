//! Low-resources simulation against revcall.sys: every fallible site the driver reaches fails
//! once (systematically) and the driver degrades with a clear status; and random failures
//! during a torture run lose nothing.

mod common;

use common::revcall_sys;
use revcall_sim::faults::systematic;
use revcall_sim::torture::{self, TortureOptions};
use storsim::faults::Site;

#[test]
fn each_fallible_site_failing_once_degrades_cleanly() {
    let report = systematic(&revcall_sys(), 1);
    assert!(report.passed, "{}", report.text());
    let run = |site| {
        report
            .sites
            .iter()
            .find(|r| r.site == site)
            .expect("every site is reported")
    };
    for site in [
        Site::StorPortInitialize,
        Site::StorPortAllocateRegistryBuffer,
        Site::StorPortRegistryRead,
        Site::DeviceExtension,
        Site::IoAllocateIrp,
    ] {
        assert!(
            run(site).calls > 0,
            "{site:?} never called:\n{}",
            report.text()
        );
    }
    let seen = |site| run(site).seen.join("; ");
    assert!(
        seen(Site::StorPortInitialize)
            .contains("DriverEntry returned STATUS_INSUFFICIENT_RESOURCES"),
        "{}",
        report.text()
    );
    // No registry buffer: FIRE (a test hook) fails closed with a clear status, and says so.
    let no_buffer = seen(Site::StorPortAllocateRegistryBuffer);
    assert!(
        no_buffer.contains("FIRE refused: STATUS_NOT_SUPPORTED")
            && no_buffer.contains("FIRE disabled"),
        "{}",
        report.text()
    );
    assert!(
        seen(Site::IoAllocateIrp).contains("STATUS_INSUFFICIENT_RESOURCES"),
        "{}",
        report.text()
    );
}

#[test]
fn random_failures_during_a_torture_run_lose_nothing() {
    let report = torture::run(&TortureOptions {
        driver: revcall_sys(),
        cpus: 4,
        ops: 8_000,
        removals: 4,
        seed: 11,
        delay: 0.02,
        fail_rate: 0.05,
        rundown_limit: std::time::Duration::from_secs(2),
        progress: false,
        json: false,
        client: Some(revcall_sys().with_file_name("revcall-client.sys")),
    });
    assert!(report.passed, "{}", report.text());
    assert!(report.faults_injected > 0, "{}", report.text());
    assert_eq!(report.irps.outstanding, Some(0));
}
