//! The benchmark's scripts against the real revcall.sys (and the floor fixture), natively: they
//! must run clean and deliver what they claim, or `cargo xtask bench` measures nothing real.
//! The figures themselves are the benchmark's business, not a test's.

mod common;

use std::path::PathBuf;

use revcall_sim::bench::cost::{self, Op, SIZES};
use revcall_sim::bench::disk::{self, DiskCase, Pattern};
use revcall_sim::bench::throughput::{self, Case, Driver};

fn floor_sys() -> PathBuf {
    fixture("floor")
}

fn fixture(name: &str) -> PathBuf {
    let path = std::env::var_os("STORSIM_FIXTURES")
        .map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/fixtures"),
            PathBuf::from,
        )
        .join(format!("{name}.sys"));
    assert!(
        path.exists(),
        "{} missing: run `cargo xtask test`",
        path.display()
    );
    path
}

#[test]
fn the_cost_script_measures_every_operation_at_every_size() {
    let plan = cost::phases(&common::revcall_sys()).expect("the cost script runs clean");
    assert!(plan.image_start < plan.image_end);
    for &parked in &SIZES {
        let ops: Vec<Op> = plan
            .phases
            .iter()
            .filter(|p| {
                p.parked == parked
                    && !matches!(
                        p.op,
                        Op::DiskRead | Op::DiskWrite | Op::DiskReadQueued | Op::DiskWriteQueued
                    )
            })
            .map(|p| p.op)
            .collect();
        let expected: &[Op] = if parked == 0 {
            &[Op::Fire, Op::Remove]
        } else {
            &[Op::Park, Op::Cancel, Op::Fire, Op::Remove]
        };
        assert_eq!(ops, expected, "phases with {parked} parked");
    }
    // The data path: 4 KiB READs, then WRITEs, one at a time and then 32 in flight, each
    // with exactly one payload copy.
    let disk_ops = [
        Op::DiskRead,
        Op::DiskWrite,
        Op::DiskReadQueued,
        Op::DiskWriteQueued,
    ];
    let disk: Vec<_> = plan
        .phases
        .iter()
        .filter(|p| disk_ops.contains(&p.op))
        .map(|p| (p.op, p.parked, p.copies))
        .collect();
    let ios = cost::DISK_IOS;
    assert_eq!(disk, disk_ops.map(|op| (op, ios, ios as u64)).to_vec(),);
}

#[test]
fn the_throughput_script_delivers_every_event_on_both_drivers() {
    for batch in [1, 16] {
        let case = Case { waiters: 8, batch };
        let revcall = throughput::run(&common::revcall_sys(), Driver::Revcall, case, 20)
            .expect("revcall runs the script clean, every event in order");
        assert_eq!(revcall.events, 20 * case.events_per_round());
        assert_eq!(revcall.irps, 20 * case.irps_per_round());
        let floor = throughput::run(&floor_sys(), Driver::Floor, case, 20)
            .expect("the floor runs the script clean");
        assert_eq!(floor.irps, revcall.irps);
        // The driving thread's CPU time is measured, and is within the run's wall time.
        for run in [revcall, floor] {
            assert!(run.cpu > std::time::Duration::ZERO, "{run:?}");
            assert!(
                run.cpu <= run.elapsed + std::time::Duration::from_millis(5),
                "{run:?}"
            );
        }
    }
}

#[test]
fn a_floor_that_delivers_nothing_fails_revcalls_checks() {
    // The floor's empty replies, read as revcall's, are not the events the script fired.
    let case = Case {
        waiters: 1,
        batch: 1,
    };
    assert!(throughput::run(&floor_sys(), Driver::Revcall, case, 2).is_err());
}

#[test]
fn the_disk_script_completes_every_srb_on_both_drivers() {
    for (pattern, cpus, depth, batch) in [
        (Pattern::RandRead4k, 1, 32, true),
        (Pattern::RandWrite4k, 2, 8, false),
        (Pattern::SeqRead64k, 1, 1, true),
    ] {
        let case = DiskCase {
            pattern,
            cpus,
            depth,
            batch,
        };
        let revcall = disk::run(&common::revcall_sys(), disk::Driver::Revcall, case, 300)
            .expect("revcall serves every SRB through its null server, clean");
        assert_eq!((revcall.ios, revcall.latencies.len()), (300, 300));
        let floor = disk::run(&fixture("nulldisk"), disk::Driver::NullDisk, case, 300)
            .expect("nulldisk answers every SRB, clean");
        assert_eq!(floor.latencies.len(), 300);
    }
    // The floor has no service channel: revcall's script cannot create its LUN there.
    let case = DiskCase {
        pattern: Pattern::RandRead4k,
        cpus: 1,
        depth: 1,
        batch: false,
    };
    assert!(disk::run(&fixture("nulldisk"), disk::Driver::Revcall, case, 10).is_err());
}

#[test]
fn a_class_driver_without_io_verification_reuses_its_srbs_zeroed_and_one_with_it_frees_them() {
    use revcall_scsi::{Command, Transfer};
    use storsim::machine::Config;
    use storsim::pool::{Owner, SpecialPool};

    let transfer = Transfer {
        lba: 8,
        blocks: 8,
        fua: false,
    };
    for special_pool in [SpecialPool::DriverOnly, SpecialPool::Everything] {
        let harness = storsim::harness::Harness::start(
            &fixture("nulldisk"),
            Config {
                special_pool,
                timeline: false,
                ..Config::default()
            },
        )
        .expect("nulldisk starts");
        let class = harness.kernel.disk_class().expect("a started adapter");
        let storports = || {
            harness
                .kernel
                .machine()
                .pool()
                .outstanding(Owner::Port)
                .len()
        };
        let before = storports();
        let written = class
            .command(0, &Command::Write(transfer), 4096, Some(&[0x5A; 4096]))
            .expect("nulldisk completes the WRITE");
        assert_eq!(written.srb_status, 0x01);
        let kept = storports() - before;
        // nulldisk succeeds a TEST UNIT READY without touching its data buffer: the WRITE's
        // bytes would show in a reused one that was not zeroed.
        let read = class
            .command(0, &Command::TestUnitReady, 4096, None)
            .expect("nulldisk completes the TEST UNIT READY");
        assert_eq!(read.data.len(), 4096);
        assert!(
            read.data.iter().all(|&b| b == 0),
            "{special_pool:?}: a dirty data buffer"
        );
        match special_pool {
            // The SRB, its data buffer and sense buffer (nulldisk asks for no SRB extension).
            SpecialPool::DriverOnly => assert_eq!((kept, storports() - before), (3, 3)),
            SpecialPool::Everything => assert_eq!((kept, storports() - before), (0, 0)),
        }
        drop(class);
        assert_eq!(
            storports(),
            before,
            "the lookaside is freed with its class driver"
        );
        harness.finish();
    }
}
