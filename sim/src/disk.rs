//! The `disk` scenario: a LUN served from user mode, end to end (docs/DATAPATH.md). RAM
//! servers in emulated processes serve it while the disk class model writes a pattern from
//! every CPU and reads it back, flushes, unmaps; then a server exits with I/O in hand, the LUN
//! is removed with I/O in flight, and the adapter is removed with I/O in flight.

use std::sync::Mutex;
use std::time::Duration;

use revcall_client::server::{Commit, MemoryDisk, Work};
use revcall_protocol::{CURSOR_NOW, LunFlags, LunSpec};
use revcall_scsi::{Command, Transfer};
use storsim::class::DiskClass;
use storsim::driver::RunError;

use super::client::{Channel, PROMPT};
use super::{Failures, KernelRef};

const BLOCK: u32 = 512;
const BLOCKS: u64 = 32 * 1024 * 1024 / BLOCK as u64;
/// What each CPU writes and reads back.
const PER_CPU: u64 = 4 * 1024 * 1024 / BLOCK as u64;
const SRB_STATUS_SUCCESS: u8 = 0x01;
const SRB_STATUS_NO_DEVICE: u8 = 0x08;
/// Long enough for anything a server answers.
const PATIENCE: Duration = Duration::from_secs(30);

fn spec(tag: &[u8], unique: u8) -> LunSpec {
    let mut serial = [b' '; 32];
    serial[..tag.len()].copy_from_slice(tag);
    LunSpec {
        block_count: BLOCKS,
        block_size: BLOCK,
        flags: LunFlags::WRITE_CACHE | LunFlags::UNMAP,
        serial,
        unique_id: [unique; 16],
        ..LunSpec::default()
    }
}

/// A RAM server's answers: `disk`, shared by every server of the LUN.
fn from_ram(disk: &Mutex<MemoryDisk>) -> impl FnMut(&Work, &mut Commit) + '_ {
    |work, commit| {
        commit.answer(
            work,
            BLOCK,
            &mut *disk.lock().unwrap_or_else(|p| p.into_inner()),
        );
    }
}

/// The bytes CPU `cpu` writes at `lba`: a function of each byte's place on the disk, different
/// for every block and every CPU, so any range's expected bytes are known.
fn pattern(cpu: usize, lba: u64, blocks: u32) -> Vec<u8> {
    let start = lba * u64::from(BLOCK);
    (start..start + u64::from(blocks) * u64::from(BLOCK))
        .map(|at| (at.wrapping_mul(7) ^ (at >> 9).wrapping_mul(131) ^ (cpu as u64) << 3) as u8)
        .collect()
}

fn io(class: &DiskClass, command: Command, len: u32, payload: Option<&[u8]>) -> (u8, Vec<u8>) {
    class
        .command(0, &command, len, payload)
        .map_or((0, Vec::new()), |done| (done.srb_status, done.data))
}

fn transfer(lba: u64, blocks: u32) -> Transfer {
    Transfer {
        lba,
        blocks,
        fua: false,
    }
}

/// CPU `cpu` writes its region in chunks of 1 to 128 blocks in a shuffled order, then reads
/// it back in other chunks and compares with what it wrote: the bytes verified.
fn write_and_verify(class: &DiskClass, cpu: usize, failures: &Failures) -> u64 {
    let base = cpu as u64 * PER_CPU;
    let mut rng = fastrand::Rng::with_seed(cpu as u64 + 1);
    let mut chunks = Vec::new();
    let mut lba = base;
    while lba < base + PER_CPU {
        let blocks = rng.u32(1..=128).min((base + PER_CPU - lba) as u32);
        chunks.push((lba, blocks));
        lba += u64::from(blocks);
    }
    rng.shuffle(&mut chunks);
    for &(lba, blocks) in &chunks {
        let data = pattern(cpu, lba, blocks);
        let (status, _) = io(
            class,
            Command::Write(transfer(lba, blocks)),
            blocks * BLOCK,
            Some(&data),
        );
        failures.expect(status == SRB_STATUS_SUCCESS, || {
            format!("CPU {cpu}: WRITE of {blocks} blocks at {lba} to succeed, got {status:#x}")
        });
    }
    let mut verified = 0;
    let mut lba = base;
    while lba < base + PER_CPU {
        let blocks = rng.u32(1..=128).min((base + PER_CPU - lba) as u32);
        let (status, data) = io(
            class,
            Command::Read(transfer(lba, blocks)),
            blocks * BLOCK,
            None,
        );
        let expected = pattern(cpu, lba, blocks);
        let same = status == SRB_STATUS_SUCCESS && data == expected;
        failures.expect(same, || {
            format!("CPU {cpu}: READ of {blocks} blocks at {lba} to return what was written")
        });
        if same {
            verified += data.len() as u64;
        }
        lba += u64::from(blocks);
    }
    class.verified(verified);
    verified
}

pub fn run(kernel: &KernelRef, cpus: usize, failures: &Failures) -> Result<(), RunError> {
    kernel.start_adapter()?;
    let admin = Channel::open(kernel, 1);
    let events = admin.wait(CURSOR_NOW, 64);
    let lun = match admin.create_lun(spec(b"DISKSCENARIO", 0x51)) {
        Ok(lun) => lun,
        Err(status) => {
            failures.expect(false, || format!("LUN_CREATE to succeed, got {status:#x}"));
            return Ok(());
        }
    };
    let Some(class) = kernel.disk_class() else {
        failures.expect(false, || "a started adapter for the class driver".into());
        return Ok(());
    };
    let disks = class.enumerate();
    failures.expect(disks.len() == 1, || {
        format!("one disk enumerated, got {disks:?}")
    });
    kernel.note(format!(
        "LUN {lun} created: {} MiB of {BLOCK}-byte blocks, write cache and unmap; two RAM \
         servers attach (processes 10 and 11)",
        (BLOCKS * u64::from(BLOCK)) >> 20
    ));
    let disk = Mutex::new(MemoryDisk::new(BLOCK, BLOCKS));
    let servers: Vec<Channel> = (0..2).map(|n| Channel::open(kernel, 10 + n)).collect();
    let cpus = cpus.clamp(1, (BLOCKS / PER_CPU) as usize - 1);
    std::thread::scope(|scope| {
        let serving: Vec<_> = servers
            .iter()
            .map(|channel| {
                let attach = channel.attach(lun);
                let disk = &disk;
                scope.spawn(move || channel.serve(&attach, 8, PATIENCE, from_ram(disk)))
            })
            .collect();
        let class = &class;
        // Every CPU writes its 4 MiB in shuffled chunks and reads them back.
        let verified: u64 = (0..cpus)
            .map(|cpu| {
                scope.spawn(move || {
                    storsim::cpu::enter_thread();
                    write_and_verify(class, cpu, failures)
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|writer| writer.join().unwrap_or(0))
            .sum();
        kernel.note(format!(
            "{cpus} CPUs wrote {} MiB in shuffled chunks of 1 to 128 blocks and read back \
             {verified} bytes, every one as written",
            (cpus as u64 * PER_CPU * u64::from(BLOCK)) >> 20
        ));
        // A flush, then an UNMAP of CPU 0's first 64 KiB: the RAM server reads it back zeroed.
        let (flushed, _) = io(
            class,
            Command::SynchronizeCache { lba: 0, blocks: 0 },
            0,
            None,
        );
        failures.expect(flushed == SRB_STATUS_SUCCESS, || {
            "SYNCHRONIZE CACHE to succeed".into()
        });
        let mut list = [0u8; 24];
        let len = revcall_scsi::write_unmap_list(&[(0, 128)], &mut list).unwrap_or(0);
        let unmap = Command::Unmap {
            param_len: len as u16,
        };
        let (unmapped, _) = io(class, unmap, len as u32, Some(&list[..len]));
        let (_, zeros) = io(class, Command::Read(transfer(0, 128)), 128 * BLOCK, None);
        failures.expect(
            unmapped == SRB_STATUS_SUCCESS && zeros == vec![0; 128 * BLOCK as usize],
            || "UNMAP of 128 blocks, then zeros read back".into(),
        );
        kernel.note("SYNCHRONIZE CACHE went to the servers as a FLUSH, UNMAP as ranges; blocks 0..127 read back zeroed");

        // A third server takes READs and its process exits without answering: what it held
        // goes back to the queue and the two others serve it.
        let doomed = Channel::open(kernel, 12);
        let doomed_attach = doomed.attach(lun);
        let doomed_fetch = doomed.fetch(8);
        let readers: Vec<_> = (0..4u64)
            .map(|n| {
                scope.spawn(move || {
                    storsim::cpu::enter_thread();
                    let lba = PER_CPU + n * 16;
                    let (status, data) = io(class, Command::Read(transfer(lba, 1)), BLOCK, None);
                    status == SRB_STATUS_SUCCESS && data == pattern(1, lba, 1)
                })
            })
            .collect();
        let held = doomed_fetch
            .wait(PATIENCE)
            .and_then(|o| doomed.work(&o).ok())
            .map_or(0, |w| w.items.len());
        kernel.exit_process(12);
        let ended = doomed_attach.wait(PATIENCE).map(|o| o.status);
        let all_served = readers.into_iter().all(|r| r.join().unwrap_or(false));
        failures.expect(all_served, || {
            "every READ, the exited server's too, to be served as written".into()
        });
        kernel.note(format!(
            "process 12 exited holding {held} READ(s): its ATTACH ended {}; the other servers \
             served them",
            ended.map_or("never".into(), |s| storport_abi::status::Named(s)
                .to_string())
        ));
        doomed.close();
        let removed = admin.remove_lun(lun);
        failures.expect(removed.is_ok(), || format!("LUN_REMOVE, got {removed:?}"));
        for (n, server) in serving.into_iter().enumerate() {
            let served = server.join().ok().flatten();
            failures.expect(served.is_some(), || {
                format!("server {n} to see its session end")
            });
        }
        kernel.note("LUN_REMOVE: both servers' FETCH came back FINAL and their ATTACH completed");
    });
    for server in servers {
        server.close();
    }
    // A READ held by a server when its LUN goes, then when the adapter goes.
    held_read(
        kernel,
        &admin,
        &class,
        failures,
        b"DISKSCENARIO-2",
        0x52,
        |lun| {
            let removed = admin.remove_lun(lun);
            failures.expect(removed.is_ok(), || format!("LUN_REMOVE, got {removed:?}"));
            "LUN_REMOVE"
        },
    );
    held_read(
        kernel,
        &admin,
        &class,
        failures,
        b"DISKSCENARIO-3",
        0x53,
        |_| {
            kernel.remove_adapter(|| {});
            "the adapter's removal"
        },
    );
    let seen = events
        .wait(PROMPT)
        .and_then(|o| admin.delivery(&o).ok())
        .map_or(0, |d| d.events.len());
    failures.expect(seen > 0, || "events of the disk's life".into());
    admin.close();
    Ok(())
}

/// Creates a LUN whose one server holds a READ without answering it, and has `end` take the
/// LUN or the adapter away: the READ must end NO_DEVICE and the server's ATTACH complete.
fn held_read(
    kernel: &KernelRef,
    admin: &Channel,
    class: &DiskClass,
    failures: &Failures,
    serial: &[u8],
    unique: u8,
    end: impl FnOnce(u32) -> &'static str,
) {
    let Ok(lun) = admin.create_lun(spec(serial, unique)) else {
        return failures.expect(false, || "LUN_CREATE to succeed".into());
    };
    class.enumerate();
    let holder = Channel::open(kernel, 20 + u32::from(unique));
    let attach = holder.attach(lun);
    let fetch = holder.fetch(8);
    std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            storsim::cpu::enter_thread();
            class.command(lun as u8, &Command::Read(transfer(0, 1)), BLOCK, None)
        });
        let held = fetch.wait(PATIENCE).and_then(|o| holder.work(&o).ok());
        failures.expect(held.is_some_and(|w| w.items.len() == 1), || {
            "the server to hold the READ".into()
        });
        let what = end(lun);
        let read = reader.join().ok().flatten();
        failures.expect(
            read.as_ref()
                .is_some_and(|r| r.srb_status == SRB_STATUS_NO_DEVICE),
            || format!("the held READ to end NO_DEVICE at {what}, got {read:?}"),
        );
        let ended = attach.wait(PROMPT).map(|o| o.status);
        failures.expect(ended.is_some(), || {
            format!("the server's ATTACH to complete at {what}")
        });
        kernel.note(format!(
            "{what} with a READ held by a server: the READ ended NO_DEVICE, the ATTACH {}",
            ended.map_or("never".into(), |s| storport_abi::status::Named(s)
                .to_string())
        ));
    });
    holder.close();
}
