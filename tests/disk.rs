//! Virtual disks on revcall.sys, end to end under storsim: LUN_CREATE / LUN_REMOVE / LUN_LIST
//! through the channel, BusChangeDetected to Storport, and storsim's disk class model
//! enumerating the LUNs through HwStartIo as disk.sys and classpnp do (docs/DATAPATH.md).

mod common;

use common::{finish, start_with};
use revcall_protocol::status::*;
use revcall_protocol::{EventKind, LunFlags, LunSpec, MAX_LUNS};
use revcall_scsi::{Command, Sense, Transfer};
use revcall_sim::client::Channel;
use std::sync::atomic::Ordering;
use storsim::harness::Harness;
use storsim::machine::Config;

fn start() -> Harness {
    start_with(Config {
        delay_probability: 0.05,
        ..Config::default()
    })
}

fn spec(n: u8, flags: u32) -> LunSpec {
    let mut serial = [b' '; 32];
    serial[..7].copy_from_slice(format!("DISK{n:03}").as_bytes());
    LunSpec {
        block_count: 64 * 1024 * 1024 / 512,
        block_size: 512,
        flags,
        serial,
        unique_id: [n + 1; 16],
        ..LunSpec::default()
    }
}

const SRB_STATUS_SUCCESS: u8 = 0x01;
const SRB_STATUS_ABORTED: u8 = 0x02;
const SRB_STATUS_NO_DEVICE: u8 = 0x08;

#[test]
fn a_created_lun_is_enumerated_as_the_disk_it_was_described_as() {
    let harness = start();
    let kernel = harness.kernel.clone();
    let channel = Channel::open(&kernel, 1);
    let before = kernel.port().counters().bus_changes.load(Ordering::Relaxed);
    let lun = channel
        .create_lun(spec(0, LunFlags::WRITE_CACHE | LunFlags::UNMAP))
        .expect("LUN_CREATE");
    assert_eq!(lun, 0);
    assert_eq!(
        kernel.port().counters().bus_changes.load(Ordering::Relaxed),
        before + 1,
        "Storport was told the bus changed"
    );
    let class = kernel.disk_class().expect("a started adapter");
    let disks = class.enumerate();
    assert_eq!(disks.len(), 1, "{disks:?}");
    let disk = &disks[0];
    assert_eq!(disk.lun, 0);
    assert_eq!(disk.serial, "DISK000");
    assert_eq!((disk.block_size, disk.block_count), (512, 131_072));
    assert!(disk.write_cache && disk.unmap && !disk.write_protected);
    assert!(!disk.identifiers.is_empty(), "VPD 0x83 never empty");
    assert_eq!(disk.vpd_pages, [0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]);
    assert_eq!(disk.vendor, "revcall");
    assert_eq!(
        kernel.port().queue_depth(0, 0),
        Some(128),
        "StorPortSetDeviceQueueDepth after the INQUIRY, LUN_CREATE's default depth"
    );

    // The event channel tells the disk's life.
    let events = channel
        .wait(0, 16)
        .wait(revcall_sim::client::PROMPT)
        .expect("events");
    let kinds: Vec<u32> = channel
        .delivery(&events)
        .expect("a WAIT reply")
        .events
        .iter()
        .map(|e| e.kind)
        .collect();
    assert!(kinds.contains(&(EventKind::LunCreated as u32)), "{kinds:?}");

    channel.remove_lun(lun).expect("LUN_REMOVE");
    assert!(class.enumerate().is_empty(), "the removed LUN is gone");
    // Nothing answers at a removed LUN's address any more.
    let gone = class
        .command(0, &Command::TestUnitReady, 0, None)
        .expect("completed");
    assert_eq!(gone.srb_status, SRB_STATUS_NO_DEVICE);
    channel.close();
    finish(harness);
}

#[test]
fn the_lun_table_refuses_what_it_cannot_hold() {
    let harness = start();
    let channel = Channel::open(&harness.kernel, 1);
    for n in 0..MAX_LUNS as u8 {
        assert_eq!(channel.create_lun(spec(n, 0)), Ok(u32::from(n)));
    }
    assert_eq!(channel.create_lun(spec(20, 0)), Err(STATUS_QUOTA_EXCEEDED));
    assert_eq!(channel.remove_lun(3), Ok(()));
    assert_eq!(channel.remove_lun(3), Err(STATUS_NO_SUCH_DEVICE));
    assert_eq!(channel.remove_lun(77), Err(STATUS_NO_SUCH_DEVICE));
    // Two disks with one serial (or one id) would be one disk to Windows.
    let twin = LunSpec {
        unique_id: [0xEE; 16],
        ..spec(0, 0)
    };
    assert_eq!(channel.create_lun(twin), Err(STATUS_OBJECT_NAME_COLLISION));
    let listed = channel.list_luns().expect("LUN_LIST");
    assert_eq!(
        listed.iter().map(|e| e.lun).collect::<Vec<_>>(),
        [0, 1, 2, 4, 5, 6, 7]
    );
    assert!(
        listed
            .iter()
            .all(|e| e.block_size == 512 && e.queue_depth == 128)
    );
    let class = harness.kernel.disk_class().expect("started");
    assert_eq!(class.enumerate().len(), 7);
    // A malformed LUN_CREATE is refused by the decoder with its field.
    let bad = LunSpec {
        block_size: 1000,
        ..spec(9, 0)
    };
    assert_eq!(channel.create_lun(bad), Err(STATUS_INVALID_PARAMETER));
    channel.close();
    finish(harness);
}

#[test]
fn data_commands_wait_for_a_first_server_and_never_hang() {
    let harness = start();
    let channel = Channel::open(&harness.kernel, 1);
    let rw = channel.create_lun(spec(1, 0)).expect("LUN_CREATE") as u8;
    let ro = channel
        .create_lun(spec(2, LunFlags::READ_ONLY))
        .expect("LUN_CREATE") as u8;
    let class = harness.kernel.disk_class().expect("started");
    let read = |lun, lba, blocks| {
        class
            .command(
                lun,
                &Command::Read(Transfer {
                    lba,
                    blocks,
                    fua: false,
                }),
                blocks * 512,
                None,
            )
            .expect("completed")
    };
    let resets = || {
        harness
            .kernel
            .port()
            .counters()
            .resets
            .load(Ordering::Relaxed)
    };
    // No server has attached yet: the READ waits for one, and when none comes, Storport's
    // timeout resets the LUN, which aborts it (classpnp retries it).
    let before = resets();
    let watching = channel.wait(revcall_protocol::CURSOR_NOW, 16);
    let waited = read(rw, 0, 8);
    assert_eq!(waited.srb_status, SRB_STATUS_ABORTED);
    assert_eq!(resets(), before + 1);
    // The event channel says so: a Reset of that LUN, one SRB completed.
    let events = channel
        .delivery(
            &watching
                .wait(revcall_sim::client::PROMPT)
                .expect("an event"),
        )
        .expect("a WAIT reply")
        .events;
    assert!(
        events
            .iter()
            .any(|e| e.kind == EventKind::Reset as u32 && e.arg0 == u64::from(rw) && e.arg1 == 1),
        "{events:?}"
    );
    assert!(waited.data.is_empty(), "no data reported moved");
    assert_eq!(read(rw, 131_071, 2).sense, Some(Sense::LBA_OUT_OF_RANGE));
    let write = class
        .command(
            ro,
            &Command::Write(Transfer {
                lba: 0,
                blocks: 1,
                fua: false,
            }),
            512,
            Some(&[0xA5; 512]),
        )
        .expect("completed");
    assert_eq!(write.sense, Some(Sense::WRITE_PROTECTED));
    let absent = class
        .command(6, &Command::TestUnitReady, 0, None)
        .expect("completed");
    assert_eq!(absent.srb_status, SRB_STATUS_NO_DEVICE);
    let tur = class
        .command(rw, &Command::TestUnitReady, 0, None)
        .expect("completed");
    assert_eq!(tur.srb_status, SRB_STATUS_SUCCESS);
    channel.close();
    finish(harness);
}
