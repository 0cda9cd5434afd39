//! revcall-client.sys, the real kernel-mode caller, loaded above revcall.sys in one emulated
//! kernel (the kernel-client scenario): every fired event arrives in order with the exact lost
//! count, an unload with the WAIT parked, or in the middle of a burst, cancels and awaits it,
//! the adapter's removal delivers FINAL, and nothing is left behind.

mod common;

use common::revcall_sys;
use revcall_sim::{Options, Scenario};
use storsim::machine::Config;

#[test]
fn the_client_driver_receives_every_event_and_survives_removal_and_unload() {
    let driver = revcall_sys();
    let summary = revcall_sim::run(&Options {
        client: driver.with_file_name("revcall-client.sys"),
        driver,
        scenario: Scenario::KernelClient,
        cpus: 1,
        config: Config {
            timeline: false,
            ..Config::default()
        },
        json: false,
    });
    assert!(summary.passed, "{}", summary.text(false));
    assert!(summary.violations.is_empty());
    assert_eq!(summary.pool_outstanding, 0);
    assert_eq!(summary.irps.outstanding, Some(0));
    let figure = |name: &str| summary.figures.get(name).copied();
    // Life 1: 300 events fired before it loaded (seqs 2..=301 after AdapterStarted): the
    // ring's 256 (46..=301) arrive from cursor 0 and 45 are counted lost; then 200 more, one
    // by one; the unload cancels its parked WAIT (End::Stopped = 3).
    assert_eq!(figure("client1.lost"), Some(45));
    assert_eq!(figure("client1.delivered"), Some(256 + 200));
    assert_eq!(figure("client1.cursor"), Some(501));
    assert_eq!(figure("client1.end"), Some(3));
    // Life 2: unloaded while a burst of 200 goes on (End::Stopped): 245 older than the ring,
    // its cursor somewhere in the burst (502..=701), every event up to it delivered or lost.
    assert_eq!(figure("client2.lost"), Some(245));
    assert_eq!(figure("client2.end"), Some(3));
    let cursor = figure("client2.cursor").expect("client2.cursor");
    assert!((501..=701).contains(&cursor), "{cursor}");
    assert_eq!(
        figure("client2.delivered")
            .zip(figure("client2.lost"))
            .map(|(d, l)| d + l),
        Some(cursor)
    );
    // Life 3: 445 before the ring's oldest, 256 + 200 more + the removal event (seq 902),
    // whose reply carries FINAL (End::Final = 1).
    assert_eq!(figure("client3.lost"), Some(445));
    assert_eq!(figure("client3.delivered"), Some(256 + 200 + 1));
    assert_eq!(figure("client3.cursor"), Some(902));
    assert_eq!(figure("client3.end"), Some(1));
    for life in 1..=3 {
        assert_eq!(
            figure(&format!("client{life}.gaps")),
            Some(0),
            "life {life}"
        );
    }
}
