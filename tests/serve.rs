//! Disks served from user mode, end to end on the real revcall.sys under storsim: servers
//! ATTACH, FETCH and COMMIT_AND_FETCH over the service IOCTL while storsim's disk class model
//! sends READ / WRITE / SYNCHRONIZE CACHE / UNMAP SRBs through HwStartIo (docs/DATAPATH.md).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{finish, start_with};
use revcall_client::server::{Answer, Backend, MemoryDisk, answer};
use revcall_protocol::status::*;
use revcall_protocol::{CURSOR_NOW, CommitResult, EventKind, LunFlags, LunSpec};
use revcall_scsi::{Command, Sense, Transfer};
use revcall_sim::client::Channel;
use storsim::class::DiskClass;
use storsim::harness::Harness;
use storsim::io::Request;
use storsim::machine::Config;

const BLOCK: u32 = 512;
const BLOCKS: u64 = 64 * 1024 * 1024 / BLOCK as u64;
const SRB_STATUS_SUCCESS: u8 = 0x01;
const SRB_STATUS_ABORTED: u8 = 0x02;
const SRB_STATUS_NO_DEVICE: u8 = 0x08;
/// Long enough for any FETCH the test expects to complete.
const PATIENCE: Duration = Duration::from_secs(60);

fn start() -> Harness {
    start_at(Config::default().srb_second)
}

/// A machine where one second of an SRB's timeout lasts `srb_second`.
fn start_at(srb_second: Duration) -> Harness {
    start_with(Config {
        delay_probability: 0.05,
        srb_second,
        ..Config::default()
    })
}

fn spec(flags: u32) -> LunSpec {
    let mut serial = [b' '; 32];
    serial[..6].copy_from_slice(b"SERVED");
    LunSpec {
        block_count: BLOCKS,
        block_size: BLOCK,
        flags,
        serial,
        unique_id: [0x42; 16],
        ..LunSpec::default()
    }
}

/// Serves from `disk` the LUN `attach` (already posted on `channel`) made this handle a server
/// of, until the session ends; returns how many SRBs it answered and how the ATTACH completed.
fn serve(channel: &Channel, attach: Arc<Request>, disk: &Mutex<MemoryDisk>) -> (usize, u32) {
    let served = channel
        .serve(&attach, 8, PATIENCE, |work, commit| {
            commit.answer(work, BLOCK, &mut *disk.lock().unwrap());
        })
        .expect("every FETCH and the ATTACH complete");
    let ended = attach.wait(PATIENCE).expect("the ATTACH completed");
    (served, ended.status)
}

fn transfer(lba: u64, blocks: u32) -> Transfer {
    Transfer {
        lba,
        blocks,
        fua: false,
    }
}

/// The bytes a writer puts at `lba`: different for every block and every writer.
fn pattern(writer: u8, lba: u64, blocks: u32) -> Vec<u8> {
    (0..blocks as u64 * u64::from(BLOCK))
        .map(|i| (lba.wrapping_mul(31) ^ i.wrapping_mul(7) ^ u64::from(writer) << 5) as u8)
        .collect()
}

fn read(class: &DiskClass, lba: u64, blocks: u32) -> (u8, Vec<u8>) {
    let done = class
        .command(
            0,
            &Command::Read(transfer(lba, blocks)),
            blocks * BLOCK,
            None,
        )
        .expect("the READ completes");
    (done.srb_status, done.data)
}

fn write(class: &DiskClass, lba: u64, data: &[u8]) -> u8 {
    let blocks = data.len() as u32 / BLOCK;
    class
        .command(
            0,
            &Command::Write(transfer(lba, blocks)),
            data.len() as u32,
            Some(data),
        )
        .expect("the WRITE completes")
        .srb_status
}

/// Whether `request` completes within `limit`.
fn wait_for(request: &Arc<Request>, limit: Duration) -> bool {
    request.wait(limit).is_some()
}

#[test]
fn sixteen_mib_written_and_read_back_from_four_cpus_through_two_servers() {
    // Seven threads on the test machine's cores, 64 KiB SRBs and injected delays: at 100 ms a
    // timeout (10 s at 10 ms), a loaded machine had Storport reset the LUN under a WRITE the
    // servers were still answering (ABORTED, once in a clean-clone CI run). Resets are other
    // tests' subject; here the bytes are.
    let harness = start_at(Duration::from_secs(1));
    let kernel = harness.kernel.clone();
    let admin = Channel::open(&kernel, 1);
    let lun = admin
        .create_lun(spec(LunFlags::WRITE_CACHE | LunFlags::UNMAP))
        .expect("LUN_CREATE");
    let disk = Mutex::new(MemoryDisk::new(BLOCK, BLOCKS));
    let class = kernel.disk_class().expect("a started adapter");
    const CHUNK: u32 = 128; // 64 KiB: MaximumTransferLength
    const PER_WRITER: u64 = 4 * 1024 * 1024 / BLOCK as u64;
    let servers: Vec<Channel> = (0..2).map(|n| Channel::open(&kernel, 10 + n)).collect();
    std::thread::scope(|scope| {
        let serving: Vec<_> = servers
            .iter()
            .map(|channel| {
                let attach = channel.attach(lun);
                scope.spawn(|| serve(channel, attach, &disk))
            })
            .collect();
        let writers: Vec<_> = (0..4u8)
            .map(|writer| {
                let class = &class;
                scope.spawn(move || {
                    let base = u64::from(writer) * PER_WRITER;
                    for lba in (base..base + PER_WRITER).step_by(CHUNK as usize) {
                        let data = pattern(writer, lba, CHUNK);
                        assert_eq!(write(class, lba, &data), SRB_STATUS_SUCCESS, "WRITE {lba}");
                    }
                    let flush = class
                        .command(0, &Command::SynchronizeCache { lba: 0, blocks: 0 }, 0, None)
                        .expect("the flush completes");
                    assert_eq!(flush.srb_status, SRB_STATUS_SUCCESS);
                    for lba in (base..base + PER_WRITER).step_by(CHUNK as usize) {
                        let (status, data) = read(class, lba, CHUNK);
                        assert_eq!(status, SRB_STATUS_SUCCESS, "READ {lba}");
                        assert!(
                            data == pattern(writer, lba, CHUNK),
                            "READ {lba}: other bytes"
                        );
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().expect("a writer's checks hold");
        }
        // UNMAP the first writer's first chunk: it reads back as the server's zeros.
        let mut list = [0u8; 24];
        let len = revcall_scsi::write_unmap_list(&[(0, CHUNK)], &mut list).unwrap();
        let unmap = class
            .command(
                0,
                &Command::Unmap {
                    param_len: len as u16,
                },
                len as u32,
                Some(&list[..len]),
            )
            .expect("the UNMAP completes");
        assert_eq!(unmap.srb_status, SRB_STATUS_SUCCESS);
        assert_eq!(read(&class, 0, CHUNK).1, vec![0; (CHUNK * BLOCK) as usize]);
        let listed = admin.list_luns().expect("LUN_LIST");
        assert_eq!(listed[0].outstanding, 0, "nothing left at the servers");
        // Removing the LUN ends both sessions: FINAL, then the ATTACH completes.
        admin.remove_lun(lun).expect("LUN_REMOVE");
        let served: usize = serving
            .into_iter()
            .map(|server| {
                let (served, ended) = server.join().expect("a server");
                assert_eq!(ended, STATUS_SUCCESS, "the ATTACH ends with its LUN");
                served
            })
            .sum();
        // 4 writers × (64 WRITEs + 64 READs + 1 flush), the UNMAP and its READ.
        assert_eq!(served, 4 * (64 + 64 + 1) + 2);
    });
    for channel in servers {
        channel.close();
    }
    admin.close();
    finish(harness);
}

#[test]
fn a_dead_servers_srbs_are_served_by_the_next_one() {
    let harness = start();
    let kernel = harness.kernel.clone();
    let admin = Channel::open(&kernel, 1);
    let lun = admin.create_lun(spec(0)).expect("LUN_CREATE");
    let class = kernel.disk_class().expect("started");
    let disk = Mutex::new(MemoryDisk::new(BLOCK, BLOCKS));
    disk.lock().unwrap().write(40, &[0x77; 4096]).unwrap();
    let doomed = Channel::open(&kernel, 20);
    let heir = Channel::open(&kernel, 21);
    std::thread::scope(|scope| {
        let attach = doomed.attach(lun);
        let fetch = doomed.fetch(8);
        let reader = scope.spawn(|| read(&class, 40, 8));
        assert!(
            wait_for(&fetch, PATIENCE),
            "the doomed server gets the READ"
        );
        let held = doomed.work(&fetch.wait(PATIENCE).unwrap()).expect("work");
        assert_eq!(held.items.len(), 1);
        // Bad answers are refused whole and touch nothing.
        let tag = held.items[0].0.tag;
        let short = Answer {
            results: vec![CommitResult {
                tag,
                data_len: 512,
                ..CommitResult::default()
            }],
            data: vec![0; 512],
        };
        let refused = doomed.commit(&short, 0).wait(PATIENCE).unwrap();
        assert_eq!(refused.status, STATUS_INVALID_BUFFER_SIZE);
        let unknown = Answer {
            results: vec![CommitResult {
                tag: tag ^ 0x1_0000,
                ..CommitResult::default()
            }],
            data: Vec::new(),
        };
        let refused = doomed.commit(&unknown, 0).wait(PATIENCE).unwrap();
        assert_eq!(refused.status, STATUS_NOT_FOUND);
        let foreign = heir.commit(&short, 0).wait(PATIENCE).unwrap();
        assert_eq!(
            foreign.status, STATUS_INVALID_DEVICE_STATE,
            "no session yet"
        );
        // The heir attaches; the doomed server dies with the READ in hand.
        let heir_attach = heir.attach(lun);
        let foreign = heir.commit(&short, 0).wait(PATIENCE).unwrap();
        assert_eq!(
            foreign.status, STATUS_ACCESS_DENIED,
            "another session's tag"
        );
        let heir_thread = scope.spawn(|| serve(&heir, heir_attach, &disk));
        assert_eq!(doomed.cancel(&attach), 1, "the ATTACH is cancelled");
        let ended = attach.wait(PATIENCE).expect("cancelled");
        assert_eq!(ended.status, STATUS_CANCELLED);
        let (status, data) = reader.join().unwrap();
        assert_eq!(status, SRB_STATUS_SUCCESS);
        assert_eq!(data, vec![0x77; 4096], "served by the heir");
        admin.remove_lun(lun).expect("LUN_REMOVE");
        let (served, ended) = heir_thread.join().unwrap();
        assert_eq!((served, ended), (1, STATUS_SUCCESS));
    });
    doomed.close();
    heir.close();
    admin.close();
    finish(harness);
}

#[test]
fn a_server_restarted_within_the_grace_period_serves_what_the_dead_one_held() {
    // Storport's timeouts at their real length here: 10 s, longer than the grace period.
    let harness = start_at(Duration::from_secs(1));
    let kernel = harness.kernel.clone();
    let admin = Channel::open(&kernel, 1);
    let lun = admin.create_lun(spec(0)).expect("LUN_CREATE");
    let class = kernel.disk_class().expect("started");
    let disk = Mutex::new(MemoryDisk::new(BLOCK, BLOCKS));
    disk.lock().unwrap().write(64, &[0x3C; 512]).unwrap();
    let first = Channel::open(&kernel, 40);
    let second = Channel::open(&kernel, 41);
    std::thread::scope(|scope| {
        let attach = first.attach(lun);
        let fetch = first.fetch(8);
        let reader = scope.spawn(|| read(&class, 64, 1));
        let held = first.work(&fetch.wait(PATIENCE).unwrap()).expect("work");
        assert_eq!(held.items.len(), 1);
        // The only server dies holding the READ; a second later another attaches.
        assert_eq!(first.cancel(&attach), 1);
        assert_eq!(attach.wait(PATIENCE).unwrap().status, STATUS_CANCELLED);
        std::thread::sleep(Duration::from_secs(1));
        assert!(!reader.is_finished(), "held through the grace period");
        let restarted = second.attach(lun);
        let serving = scope.spawn(|| serve(&second, restarted, &disk));
        let (status, data) = reader.join().unwrap();
        assert_eq!((status, data), (SRB_STATUS_SUCCESS, vec![0x3C; 512]));
        admin.remove_lun(lun).expect("LUN_REMOVE");
        assert_eq!(serving.join().unwrap(), (1, STATUS_SUCCESS));
    });
    first.close();
    second.close();
    admin.close();
    finish(harness);
}

#[test]
fn a_stalled_server_meets_storports_reset_and_its_late_commit_is_stale() {
    let harness = start();
    let kernel = harness.kernel.clone();
    let admin = Channel::open(&kernel, 1);
    let lun = admin.create_lun(spec(0)).expect("LUN_CREATE");
    let class = kernel.disk_class().expect("started");
    let server = Channel::open(&kernel, 30);
    let attach = server.attach(lun);
    let fetch = server.fetch(8);
    let resets = || {
        kernel
            .port()
            .counters()
            .resets
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let before = resets();
    // Nobody answers: after its timeout Storport resets the LUN, which aborts the READ.
    let (status, _) = read(&class, 0, 1);
    assert_eq!(status, SRB_STATUS_ABORTED);
    assert_eq!(resets(), before + 1);
    let held = server.work(&fetch.wait(PATIENCE).unwrap()).expect("work");
    // Reset again in the same tag slot (a later generation) before the server answers: both
    // of its late results are stale, however often the slot was reset meanwhile.
    let refetch = server.fetch(8);
    let (status, _) = read(&class, 0, 1);
    assert_eq!(status, SRB_STATUS_ABORTED);
    let again = server.work(&refetch.wait(PATIENCE).unwrap()).expect("work");
    let (first, second) = (held.items[0].0.tag, again.items[0].0.tag);
    assert_eq!(first & 0xFFFF, second & 0xFFFF, "one slot");
    assert!(second > first, "a later generation");
    let late = Answer {
        results: [first, second]
            .map(|tag| CommitResult {
                tag,
                data_len: BLOCK,
                ..CommitResult::default()
            })
            .to_vec(),
        data: vec![1; 2 * BLOCK as usize],
    };
    let reply = server.commit(&late, 1).wait(PATIENCE).expect("completes");
    let work = server.work(&reply).expect("a FETCH reply");
    assert_eq!((work.stale, work.items.len()), (2, 0), "dropped, counted");
    // The server dies: its parked FETCH ends FINAL and the LUN's grace period starts. A READ
    // meanwhile waits for a server (here Storport's compressed timeout aborts it first); once
    // the grace period is over (LunOrphaned), the LUN's I/O fails at once: NOT READY, 04/03.
    let events = admin.wait(CURSOR_NOW, 16);
    let parked = server.fetch(8);
    assert_eq!(server.cancel(&attach), 1);
    assert_eq!(attach.wait(PATIENCE).unwrap().status, STATUS_CANCELLED);
    let ended = server
        .work(&parked.wait(PATIENCE).unwrap())
        .expect("a FETCH reply");
    assert!(ended.last && ended.items.is_empty());
    let waited = read(&class, 0, 1);
    assert_eq!(
        waited.0, SRB_STATUS_ABORTED,
        "held for a server, then reset"
    );
    let started = std::time::Instant::now();
    let Awaited {
        at,
        kinds: seen,
        pending,
    } = event_of(
        &admin,
        events,
        EventKind::LunOrphaned,
        lun.into(),
        Duration::from_secs(10),
    );
    let grace = at.expect("LunOrphaned within 10 s") - started;
    assert!(
        grace >= Duration::from_secs(4) && grace < Duration::from_secs(8),
        "a grace period of about 5 s, took {grace:?}"
    );
    assert!(seen.contains(&(EventKind::ServerLost as u32)), "{seen:?}");
    let orphaned = class
        .command(0, &Command::Read(transfer(0, 1)), BLOCK, None)
        .expect("completes");
    assert_eq!(orphaned.sense, Some(Sense::NOT_READY_MANUAL_INTERVENTION));
    assert_eq!(admin.cancel(&pending), 1);
    // A new server takes a READ and holds it; the adapter's removal completes the READ
    // NO_DEVICE, and the server's ATTACH and parked FETCH DEVICE_REMOVED.
    let next = Channel::open(&kernel, 31);
    let attach = next.attach(lun);
    let fetch = next.fetch(8);
    std::thread::scope(|scope| {
        let reader = scope.spawn(|| read(&class, 3, 1));
        let held = next.work(&fetch.wait(PATIENCE).unwrap()).expect("work");
        assert_eq!(held.items.len(), 1);
        let parked = next.fetch(8);
        kernel.remove_adapter(|| {});
        assert_eq!(reader.join().unwrap().0, SRB_STATUS_NO_DEVICE);
        assert_eq!(attach.wait(PATIENCE).unwrap().status, STATUS_DEVICE_REMOVED);
        assert_eq!(parked.wait(PATIENCE).unwrap().status, STATUS_DEVICE_REMOVED);
    });
    next.close();
    server.close();
    admin.close();
    finish(harness);
}

/// The zombie WRITE: a reset completes a WRITE its server still holds, and that server
/// writes the blocks later. Until it has answered (or died), nothing else of the LUN is handed
/// out: a READ served meanwhile would see the blocks change under it, a later WRITE would be
/// overwritten by the late one.
#[test]
fn a_write_reset_under_its_live_server_holds_the_lun_until_that_server_answers() {
    // Long SRB timeouts (5 s): the waiting READ must not meet the reset ladder.
    let harness = start_at(Duration::from_millis(500));
    let kernel = harness.kernel.clone();
    let admin = Channel::open(&kernel, 1);
    let lun = admin.create_lun(spec(0)).expect("LUN_CREATE");
    let class = kernel.disk_class().expect("started");
    let disk = Mutex::new(MemoryDisk::new(BLOCK, BLOCKS));
    let slow = Channel::open(&kernel, 40);
    let other = Channel::open(&kernel, 41);
    let written = pattern(1, 0, 1);
    std::thread::scope(|scope| {
        let slow_attach = slow.attach(lun);
        let fetch = slow.fetch(8);
        let writer = scope.spawn(|| write(&class, 0, &written));
        let held = slow.work(&fetch.wait(PATIENCE).unwrap()).expect("work");
        assert_eq!(held.items.len(), 1);
        // Storport resets the LUN: the WRITE ends ABORTED while its server still has it.
        kernel.reset_lun(0, lun as u8);
        assert_eq!(writer.join().unwrap(), SRB_STATUS_ABORTED);
        let other_attach = other.attach(lun);
        let other_fetch = other.fetch(8);
        let reader = scope.spawn(|| read(&class, 0, 1));
        assert!(
            !wait_for(&other_fetch, Duration::from_millis(500)),
            "the READ is handed out while the slow server may still write block 0"
        );
        // The slow server writes its store late, then commits: stale, and the LUN moves on.
        let late = answer(&held, BLOCK, &mut *disk.lock().unwrap());
        let reply = slow.commit(&late, 0).wait(PATIENCE).expect("completes");
        assert_eq!(reply.status, STATUS_SUCCESS);
        assert_eq!(slow.work(&reply).expect("a reply").stale, 1);
        let work = other
            .work(&other_fetch.wait(PATIENCE).expect("now the READ"))
            .expect("work");
        let served = answer(&work, BLOCK, &mut *disk.lock().unwrap());
        other.commit(&served, 0).wait(PATIENCE).expect("completes");
        let (status, data) = reader.join().unwrap();
        assert_eq!(status, SRB_STATUS_SUCCESS);
        assert_eq!(
            data, written,
            "the late WRITE, and no change after the READ"
        );
        kernel.remove_adapter(|| {});
        for attach in [slow_attach, other_attach] {
            assert_eq!(attach.wait(PATIENCE).unwrap().status, STATUS_DEVICE_REMOVED);
        }
    });
    slow.close();
    other.close();
    admin.close();
    finish(harness);
}

#[test]
fn a_surprise_removal_completes_the_srbs_servers_hold_and_queue() {
    let harness = start_at(Duration::from_secs(1));
    let kernel = harness.kernel.clone();
    let admin = Channel::open(&kernel, 1);
    let lun = admin.create_lun(spec(0)).expect("LUN_CREATE");
    let class = kernel.disk_class().expect("started");
    let server = Channel::open(&kernel, 50);
    let attach = server.attach(lun);
    let fetch = server.fetch(1);
    std::thread::scope(|scope| {
        // Two READs: the server takes one (it fetches one at a time) and holds it; the
        // other waits in the LUN's queue.
        let class = &class;
        let readers: Vec<_> = (0..2)
            .map(|n| scope.spawn(move || read(class, n * 8, 1)))
            .collect();
        let held = server.work(&fetch.wait(PATIENCE).unwrap()).expect("work");
        assert_eq!(held.items.len(), 1);
        while admin.list_luns().expect("LUN_LIST")[0].outstanding < 2 {
            std::thread::sleep(Duration::from_millis(1));
        }
        kernel.surprise_remove_adapter();
        for reader in readers {
            assert_eq!(reader.join().unwrap().0, SRB_STATUS_NO_DEVICE);
        }
        assert_eq!(attach.wait(PATIENCE).unwrap().status, STATUS_DEVICE_REMOVED);
        kernel.remove_adapter(|| {});
    });
    server.close();
    admin.close();
    finish(harness);
}

#[test]
fn every_malformed_commit_is_refused_with_its_status_and_touches_no_srb() {
    let harness = start_at(Duration::from_secs(1));
    let kernel = harness.kernel.clone();
    let admin = Channel::open(&kernel, 1);
    let lun = admin.create_lun(spec(0)).expect("LUN_CREATE");
    let class = kernel.disk_class().expect("started");
    let server = Channel::open(&kernel, 60);
    let other = Channel::open(&kernel, 61);
    let stranger = Channel::open(&kernel, 62);
    let _attach = server.attach(lun);
    let _other_attach = other.attach(lun);
    let fetch = server.fetch(8);
    std::thread::scope(|scope| {
        let reader = scope.spawn(|| read(&class, 5, 1));
        let held = server.work(&fetch.wait(PATIENCE).unwrap()).expect("work");
        let tag = held.items[0].0.tag;
        let good = |data_len| CommitResult {
            tag,
            data_len,
            ..CommitResult::default()
        };
        let encode = |results: &[CommitResult], data: &[u8]| {
            Answer {
                results: results.to_vec(),
                data: data.to_vec(),
            }
            .encode(0)
        };
        let block = vec![0x42; BLOCK as usize];
        let mut wrong_size = encode(&[good(BLOCK)], &block);
        wrong_size[0] ^= 1;
        let mut left_over = encode(&[good(BLOCK)], &block);
        left_over.push(0);
        let len = left_over.len() as u32;
        left_over[..4].copy_from_slice(&len.to_le_bytes());
        let mut short = encode(&[good(BLOCK)], &block);
        short.pop();
        let len = short.len() as u32;
        short[..4].copy_from_slice(&len.to_le_bytes());
        let twice = encode(
            &[good(BLOCK), good(BLOCK)],
            &[block.clone(), block.clone()].concat(),
        );
        let odd_status = encode(
            &[CommitResult {
                scsi_status: 8,
                ..good(0)
            }],
            &[],
        );
        let no_sense = encode(
            &[CommitResult {
                scsi_status: 2,
                ..good(0)
            }],
            &[],
        );
        let too_many: Vec<_> = (0..65u64)
            .map(|n| CommitResult {
                tag: tag + (n << 16),
                ..good(0)
            })
            .collect();
        let too_many = encode(&too_many, &[]);
        let unknown = encode(
            &[CommitResult {
                tag: tag ^ (7 << 16),
                ..good(0)
            }],
            &[],
        );
        let wrong_len = encode(&[good(256)], &block[..256]);
        let right = encode(&[good(BLOCK)], &block);
        let cases: [(&str, &Channel, &[u8], u32, u32); 12] = [
            (
                "size field",
                &server,
                &wrong_size,
                64,
                STATUS_INVALID_PARAMETER,
            ),
            (
                "data left over",
                &server,
                &left_over,
                64,
                STATUS_INVALID_PARAMETER,
            ),
            ("data short", &server, &short, 64, STATUS_INVALID_PARAMETER),
            ("a tag twice", &server, &twice, 64, STATUS_INVALID_PARAMETER),
            (
                "a SCSI status",
                &server,
                &odd_status,
                64,
                STATUS_INVALID_PARAMETER,
            ),
            (
                "CHECK CONDITION without a sense key",
                &server,
                &no_sense,
                64,
                STATUS_INVALID_PARAMETER,
            ),
            (
                "65 results",
                &server,
                &too_many,
                64,
                STATUS_INVALID_PARAMETER,
            ),
            ("an unknown tag", &server, &unknown, 64, STATUS_NOT_FOUND),
            (
                "another server's tag",
                &other,
                &right,
                64,
                STATUS_ACCESS_DENIED,
            ),
            (
                "READ data of another size",
                &server,
                &wrong_len,
                64,
                STATUS_INVALID_BUFFER_SIZE,
            ),
            (
                "no session",
                &stranger,
                &right,
                64,
                STATUS_INVALID_DEVICE_STATE,
            ),
            (
                "no room for the reply",
                &server,
                &right,
                16,
                STATUS_BUFFER_TOO_SMALL,
            ),
        ];
        for (what, channel, record, out_len, status) in cases {
            let done = channel
                .send_raw(record, out_len)
                .expect("sent")
                .wait(PATIENCE)
                .expect("completed");
            assert_eq!(done.status, status, "{what}");
            assert!(done.output.is_empty(), "{what}: an error carries no bytes");
            assert_eq!(
                admin.list_luns().expect("LUN_LIST")[0].outstanding,
                1,
                "{what}: the SRB was touched"
            );
        }
        let done = server.send_raw(&right, 64).unwrap().wait(PATIENCE).unwrap();
        assert_eq!(done.status, STATUS_SUCCESS);
        assert_eq!(reader.join().unwrap(), (SRB_STATUS_SUCCESS, block));
        admin.remove_lun(lun).expect("LUN_REMOVE");
    });
    for channel in [server, other, stranger] {
        channel.close();
    }
    admin.close();
    finish(harness);
}

/// What [`event_of`] saw.
struct Awaited {
    /// When the event came, if it did within the limit.
    at: Option<std::time::Instant>,
    /// The kinds of every event delivered meanwhile.
    kinds: Vec<u32>,
    /// The next WAIT, parked.
    pending: Arc<Request>,
}

/// Waits on `admin` (a WAIT parked as `pending`) until an event of `kind` for `lun`.
fn event_of(
    admin: &Channel,
    mut pending: Arc<Request>,
    kind: EventKind,
    lun: u64,
    limit: Duration,
) -> Awaited {
    let deadline = std::time::Instant::now() + limit;
    let mut kinds = Vec::new();
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        let Some(done) = pending.wait(left) else {
            break;
        };
        let delivery = admin.delivery(&done).expect("a WAIT reply");
        pending = admin.wait(delivery.reply.cursor, 16);
        kinds.extend(delivery.events.iter().map(|e| e.kind));
        if delivery
            .events
            .iter()
            .any(|e| e.kind == kind as u32 && e.arg0 == lun)
        {
            return Awaited {
                at: Some(std::time::Instant::now()),
                kinds,
                pending,
            };
        }
    }
    Awaited {
        at: None,
        kinds,
        pending,
    }
}

#[test]
fn a_crash_looping_server_does_not_hold_off_another_luns_grace_period() {
    let harness = start_at(Duration::from_secs(1));
    let kernel = harness.kernel.clone();
    let admin = Channel::open(&kernel, 1);
    let lun = admin.create_lun(spec(0)).expect("LUN_CREATE");
    let mut other = spec(0);
    other.serial[..6].copy_from_slice(b"LOOPER");
    other.unique_id = [0x43; 16];
    let looping = admin.create_lun(other).expect("LUN_CREATE");
    let events = admin.wait(CURSOR_NOW, 16);
    let server = Channel::open(&kernel, 70);
    let attach = server.attach(lun);
    assert_eq!(server.cancel(&attach), 1);
    let died = std::time::Instant::now();
    // LUN 1's server dies every 300 ms meanwhile, each death starting its grace period anew.
    let stop = std::sync::atomic::AtomicBool::new(false);
    let Awaited {
        at: orphaned,
        pending,
        ..
    } = std::thread::scope(|scope| {
        let looper = scope.spawn(|| {
            let mut deaths = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let channel = Channel::open(&kernel, 71 + deaths);
                let attach = channel.attach(looping);
                std::thread::sleep(Duration::from_millis(300));
                assert_eq!(channel.cancel(&attach), 1);
                channel.close();
                deaths += 1;
            }
            deaths
        });
        let seen = event_of(
            &admin,
            events,
            EventKind::LunOrphaned,
            lun.into(),
            Duration::from_secs(7),
        );
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(looper.join().unwrap() >= 12, "a death every 300 ms");
        seen
    });
    let grace = orphaned.expect("LUN 0 orphaned within 7 s") - died;
    assert!(
        grace >= Duration::from_secs(4) && grace < Duration::from_secs(7),
        "LUN 0's grace period took {grace:?}"
    );
    // Later events (LUN 1's own orphaning) may have completed it already.
    admin.cancel(&pending);
    server.close();
    admin.close();
    finish(harness);
}

#[test]
fn the_grace_timer_is_not_armed_again_after_a_surprise_removal() {
    let harness = start();
    let kernel = harness.kernel.clone();
    let admin = Channel::open(&kernel, 1);
    let lun = admin.create_lun(spec(0)).expect("LUN_CREATE");
    let server = Channel::open(&kernel, 80);
    let attach = server.attach(lun);
    assert_eq!(server.cancel(&attach), 1);
    let dispatcher = kernel.port().dispatcher();
    assert_eq!(dispatcher.timers_armed(), 1, "the grace period runs");
    kernel.surprise_remove_adapter();
    // Its next tick finds the adapter removed and does not arm it again.
    std::thread::sleep(Duration::from_millis(1_600));
    assert_eq!(dispatcher.timers_armed(), 0);
    kernel.remove_adapter(|| {});
    server.close();
    admin.close();
    finish(harness);
}

#[test]
fn a_kernel_caller_without_a_file_object_cannot_attach() {
    let harness = start();
    let kernel = harness.kernel.clone();
    let admin = Channel::open(&kernel, 1);
    let lun = admin.create_lun(spec(0)).expect("LUN_CREATE");
    let caller = storsim::io::KernelCaller::new(kernel.io(), 1024).expect("IRP");
    let mut attach = [0u8; 64];
    let len =
        revcall_protocol::encode_request(&revcall_protocol::Request::Attach { lun }, &mut attach)
            .expect("fits");
    let request = caller
        .send(
            kernel.io(),
            revcall_protocol::IOCTL_MINIPORT_PROCESS_SERVICE_IRP,
            &attach[..len],
            64,
        )
        .expect("sent");
    let done = request
        .wait(Duration::from_secs(5))
        .expect("refused at once");
    assert_eq!(done.status, STATUS_INVALID_DEVICE_STATE);
    assert_eq!(admin.stats().expect("STATS").parked_now, 0);
    caller.free(kernel.io());
    admin.close();
    finish(harness);
}
