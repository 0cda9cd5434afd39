//! A short disk torture on the real revcall.sys (`storsim disk-torture`, sim/src/disk_torture/):
//! four CPUs, two LUNs served by misbehaving servers, LUNs re-created, reset (with servers
//! writing after the reset took their WRITEs) and the adapter power-cycled and removed with I/O
//! in flight. `cargo xtask disk-torture` is the long run docs/RELIABILITY.md reports.

mod common;

use revcall_sim::disk_torture::{DiskTortureOptions, run};

#[test]
fn the_data_path_survives_a_short_disk_torture() {
    let report = run(&DiskTortureOptions {
        driver: common::revcall_sys(),
        cpus: 4,
        ios: 12_000,
        removals: 3,
        luns: 2,
        servers: 2,
        seed: 11,
        delay: 0.02,
        progress: false,
    });
    println!("{}", report.text());
    assert!(report.passed, "{}", report.text());
    assert_eq!(report.ios, 12_000);
    assert_eq!(report.removals, 3);
    assert!(report.bytes_verified > 0);
    assert!(report.server_deaths > 0, "no server died");
    assert!(report.lun_recreations > 0, "no LUN re-created");
    assert!(report.lun_resets > 0 && report.bus_resets > 0, "no reset");
    assert!(
        report.late_writes > 0,
        "no WRITE carried out after its reset"
    );
    assert!(report.power_cycles > 0, "no power cycle");
    assert!(report.malformed_refused > 0, "no malformed COMMIT");
    assert!(report.events_fired > 0, "no event traffic");
}
