//! revcall's channel end to end, as the README's main job shows it.

use std::time::Duration;
use storport_abi::status::Named;

use revcall_protocol::{CURSOR_NOW, EventKind, LunFlags, LunSpec, WaitFlags};

use super::client::{Channel, Delivery, PROMPT};
use super::{Failures, KernelRef};
use revcall_client::server::MemoryDisk;
use revcall_protocol::status::STATUS_CANCELLED;
use storsim::cpu;
use storsim::driver::RunError;
use storsim::io::Outcome;

use revcall_protocol::status::{STATUS_DELETE_PENDING, STATUS_DEVICE_REMOVED};

/// A waiter's view: its cursor and what it has seen, checking order and loss accounting.
struct Tracker {
    name: &'static str,
    cursor: u64,
    last: Option<u64>,
    seen: Vec<u64>,
}

impl Tracker {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            cursor: CURSOR_NOW,
            last: None,
            seen: Vec::new(),
        }
    }

    fn absorb(&mut self, delivery: &Delivery, failures: &Failures) {
        let mut expected = self.last.map(|last| last + 1 + delivery.reply.lost);
        for event in &delivery.events {
            failures.expect(expected.is_none_or(|e| event.seq == e), || {
                format!(
                    "{}: event seq {} right after {:?} (lost {})",
                    self.name, event.seq, self.last, delivery.reply.lost
                )
            });
            expected = Some(event.seq + 1);
            self.last = Some(event.seq);
            self.seen.push(event.seq);
        }
        self.cursor = delivery.reply.cursor;
    }
}

fn delivered(
    channel: &Channel,
    outcome: Option<Outcome>,
    tracker: &mut Tracker,
    failures: &Failures,
) -> Option<Delivery> {
    let Some(outcome) = outcome else {
        failures.expect(false, || format!("{}: a WAIT to complete", tracker.name));
        return None;
    };
    match channel.delivery(&outcome) {
        Ok(delivery) => {
            tracker.absorb(&delivery, failures);
            Some(delivery)
        }
        Err(status) => {
            failures.expect(false, || {
                format!("{}: WAIT to succeed, got {}", tracker.name, Named(status))
            });
            None
        }
    }
}

pub fn run(kernel: &KernelRef, cpus: usize, failures: &Failures) -> Result<(), RunError> {
    kernel.start_adapter()?;
    let a1 = Channel::open(kernel, 100);
    let a2 = Channel::open(kernel, 100);
    let b = Channel::open(kernel, 200);
    let channels = [&a1, &a2, &b];
    let mut trackers = [
        Tracker::new("waiter A1"),
        Tracker::new("waiter A2"),
        Tracker::new("waiter B"),
    ];

    kernel.note("-- three waiters park (WAIT, cursor NOW)");
    let parked: Vec<_> = channels.iter().map(|c| c.wait(CURSOR_NOW, 4)).collect();
    std::thread::sleep(Duration::from_millis(5));
    failures.expect(parked.iter().all(|p| p.outcome().is_none()), || {
        "every first WAIT to park".into()
    });

    let per_cpu = 4;
    kernel.note(format!(
        "-- {cpus} CPUs inject {per_cpu} events each (FIRE)"
    ));
    std::thread::scope(|scope| {
        for cpu_index in 0..cpus {
            let channel = &a1;
            scope.spawn(move || {
                cpu::enter_thread();
                for i in 0..per_cpu {
                    if let Err(status) = channel.fire(0x100 + cpu_index as u32, i) {
                        failures
                            .expect(false, || format!("FIRE to succeed, got {}", Named(status)));
                    }
                }
            });
        }
    });
    let fired = (cpus * per_cpu as usize) as u64;
    for ((channel, request), tracker) in channels.iter().zip(&parked).zip(&mut trackers) {
        delivered(channel, request.wait(PROMPT), tracker, failures);
    }

    kernel.note("-- waiters re-arm with their cursors: the backlog arrives batched");
    for (channel, tracker) in channels.iter().zip(&mut trackers) {
        while tracker.seen.len() < fired as usize {
            let Some(delivery) = delivered(
                channel,
                channel.wait(tracker.cursor, 16).wait(PROMPT),
                tracker,
                failures,
            ) else {
                break;
            };
            if delivery.events.len() > 1 {
                kernel.note(format!(
                    "{}: {} events in one completion",
                    tracker.name,
                    delivery.events.len()
                ));
            }
        }
        failures.expect(tracker.seen.len() == fired as usize, || {
            format!(
                "{} to see all {fired} events (broadcast), saw {}",
                tracker.name,
                tracker.seen.len()
            )
        });
    }

    kernel.note("-- DISCOVER completes later, through Storport's timer and a DPC");
    let waiting = a2.wait(trackers[1].cursor, 4);
    match a1.discover(20) {
        Ok(reply) => {
            let outcome = waiting.wait(PROMPT);
            if let Some(delivery) = delivered(&a2, outcome, &mut trackers[1], failures) {
                let done = delivery
                    .events
                    .iter()
                    .any(|e| e.kind == EventKind::DiscoveryComplete as u32 && e.arg0 == reply.id);
                failures.expect(done, || {
                    format!("a DiscoveryComplete event for discovery {}", reply.id)
                });
            }
        }
        Err(status) => failures.expect(false, || {
            format!("DISCOVER to succeed, got {}", Named(status))
        }),
    }
    failures.expect(kernel.port().timer_calls() >= 1, || {
        "the discovery to run through HwTimer".into()
    });

    kernel.note("-- a parked WAIT is cancelled (CancelIoEx)");
    let doomed = b.wait(CURSOR_NOW, 4);
    std::thread::sleep(Duration::from_millis(2));
    b.cancel(&doomed);
    kernel.io().await_cancellations();
    let outcome = doomed.wait(PROMPT);
    failures.expect(
        outcome
            .as_ref()
            .is_some_and(|o| o.status == STATUS_CANCELLED),
        || format!("the cancelled WAIT to end STATUS_CANCELLED, got {outcome:?}"),
    );

    kernel.note("-- a process exits with WAITs parked: the I/O manager cancels them all");
    let leaving = Channel::open(kernel, 300);
    let orphans: Vec<_> = (0..3).map(|_| leaving.wait(CURSOR_NOW, 4)).collect();
    std::thread::sleep(Duration::from_millis(2));
    kernel.exit_process(300);
    for orphan in &orphans {
        let outcome = orphan.outcome();
        failures.expect(
            outcome
                .as_ref()
                .is_some_and(|o| o.status == STATUS_CANCELLED),
            || format!("process exit to cancel a parked WAIT, got {outcome:?}"),
        );
    }

    kernel.note("-- a virtual disk: LUN_CREATE, Storport rescans, the class driver identifies it");
    virtual_disk(kernel, &b, failures);

    match a1.stats() {
        Ok(stats) => kernel.note(format!("STATS: {stats:?}")),
        Err(status) => {
            failures.expect(false, || format!("STATS to succeed, got {}", Named(status)))
        }
    }

    kernel.note("-- removal with waiters parked; a late request arrives in the window");
    let at_removal: Vec<_> = channels.iter().map(|c| c.wait(CURSOR_NOW, 4)).collect();
    std::thread::sleep(Duration::from_millis(5));
    failures.expect(at_removal.iter().all(|r| r.outcome().is_none()), || {
        "WAITs with cursor NOW to park before removal".into()
    });
    let late = std::cell::RefCell::new(None);
    kernel.remove_adapter(|| *late.borrow_mut() = Some(b.wait(CURSOR_NOW, 4)));
    for (channel, request) in channels.iter().zip(&at_removal) {
        let outcome = request.wait(PROMPT);
        let removed = outcome
            .as_ref()
            .is_some_and(|o| o.status == STATUS_DEVICE_REMOVED);
        let last_word = outcome.as_ref().map(|o| channel.delivery(o));
        let final_event =
            matches!(&last_word, Some(Ok(d)) if d.reply.flags & WaitFlags::FINAL != 0);
        failures.expect(removed || final_event, || format!("removal to complete a parked WAIT with a FINAL reply or STATUS_DEVICE_REMOVED, got {outcome:?}"));
    }
    let late = late.into_inner().and_then(|r| r.wait(PROMPT));
    failures.expect(late.is_some(), || {
        "the request sent between HwCompleteServiceIrp and the rundown wait to complete".into()
    });
    let after = b.wait(CURSOR_NOW, 4).wait(PROMPT);
    failures.expect(
        after
            .as_ref()
            .is_some_and(|o| o.status == STATUS_DELETE_PENDING),
        || format!("a request after removal to fail STATUS_DELETE_PENDING, got {after:?}"),
    );
    for channel in [a1, a2, b] {
        channel.close();
    }
    Ok(())
}

/// LUN_CREATE through the channel, the disk class model's enumeration after BusChangeDetected,
/// the LunCreated event, a server attaching and serving a WRITE and a READ, LUN_REMOVE.
fn virtual_disk(kernel: &KernelRef, channel: &Channel, failures: &Failures) {
    let mut serial = [b' '; 32];
    serial[..8].copy_from_slice(b"DEMO0001");
    let spec = LunSpec {
        block_count: 64 * 1024 * 1024 / 4096,
        block_size: 4096,
        flags: LunFlags::WRITE_CACHE | LunFlags::UNMAP,
        serial,
        unique_id: *b"revcall-demo-lun",
        ..LunSpec::default()
    };
    let watching = channel.wait(CURSOR_NOW, 4);
    let lun = match channel.create_lun(spec) {
        Ok(lun) => lun,
        Err(status) => {
            return failures.expect(false, || {
                format!("LUN_CREATE to succeed, got {}", Named(status))
            });
        }
    };
    let told = watching
        .wait(PROMPT)
        .and_then(|outcome| channel.delivery(&outcome).ok())
        .is_some_and(|d| {
            d.events
                .iter()
                .any(|e| e.kind == EventKind::LunCreated as u32 && e.arg0 == u64::from(lun))
        });
    failures.expect(told, || format!("a LunCreated event for LUN {lun}"));
    let Some(class) = kernel.disk_class() else {
        return failures.expect(false, || "a started adapter for the class driver".into());
    };
    let disks = class.enumerate();
    match disks.iter().find(|d| u32::from(d.lun) == lun) {
        Some(disk) => kernel.note(format!(
            "disk class: LUN {}: \"{}\" \"{}\", serial {}, {} blocks of {} bytes, write cache {}, unmap {}",
            disk.lun, disk.vendor, disk.product, disk.serial, disk.block_count, disk.block_size, disk.write_cache, disk.unmap
        )),
        None => failures.expect(false, || format!("the class driver to find LUN {lun}, found {disks:?}")),
    }
    // A server attaches from another handle and serves the disk from memory while the class
    // driver writes a block and reads it back; LUN_REMOVE then ends its session.
    let server = Channel::open(kernel, channel.process + 1);
    let attach = server.attach(lun);
    std::thread::scope(|scope| {
        let serving = scope.spawn(|| {
            let mut disk = MemoryDisk::new(4096, spec.block_count);
            server.serve(&attach, 4, PROMPT, |work, commit| {
                commit.answer(work, 4096, &mut disk);
            })
        });
        let transfer = revcall_scsi::Transfer {
            lba: 7,
            blocks: 1,
            fua: false,
        };
        let block: Vec<u8> = (0..4096u32).map(|i| (i * 13 + 5) as u8).collect();
        let wrote = class.command(
            lun as u8,
            &revcall_scsi::Command::Write(transfer),
            4096,
            Some(&block),
        );
        let read = class.command(
            lun as u8,
            &revcall_scsi::Command::Read(transfer),
            4096,
            None,
        );
        let round_trip = wrote.is_some_and(|w| w.srb_status == 1)
            && read
                .as_ref()
                .is_some_and(|r| r.srb_status == 1 && r.data == block);
        failures.expect(round_trip, || {
            format!("a WRITE then a READ of block 7 served from user mode, got {read:?}")
        });
        kernel.note(
            "WRITE and READ of block 7: each handed to the server by completing its parked FETCH, \
             answered by its COMMIT_AND_FETCH; the same bytes came back",
        );
        if let Err(status) = channel.remove_lun(lun) {
            failures.expect(false, || {
                format!("LUN_REMOVE to succeed, got {}", Named(status))
            });
        }
        let served = serving.join().ok().flatten();
        failures.expect(served == Some(2), || {
            format!("the server to answer 2 SRBs and see its session end, got {served:?}")
        });
        kernel.note("LUN_REMOVE: the server's FETCH came back FINAL and its ATTACH completed");
    });
    server.close();
    failures.expect(class.enumerate().is_empty(), || {
        "the removed LUN to be gone".into()
    });
}

pub fn surprise_removal(kernel: &KernelRef, failures: &Failures) -> Result<(), RunError> {
    kernel.start_adapter()?;
    let channel = Channel::open(kernel, 100);
    let parked: Vec<_> = (0..4).map(|_| channel.wait(CURSOR_NOW, 4)).collect();
    std::thread::sleep(Duration::from_millis(5));
    kernel.surprise_remove_adapter();
    for request in &parked {
        let outcome = request.wait(PROMPT);
        failures.expect(outcome.is_some(), || {
            "surprise removal to complete every parked WAIT".into()
        });
    }
    kernel.remove_adapter(|| {});
    channel.close();
    Ok(())
}
