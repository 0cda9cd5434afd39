//! The driver's cost per operation, in instructions the driver image itself executes.
//!
//! Wall time on a shared machine is noise; instruction counts are not. storsim runs a script of
//! single operations ([`phases`]) under `valgrind --tool=callgrind`, which dumps a profile
//! at every [`phase_boundary`], before and after each phase; each phase's profile is summed over the
//! driver image's addresses ([`super::callgrind`]). What the driver calls into (storsim's
//! emulated Storport and ntoskrnl, whose cost is the emulator's, not Windows') is not counted;
//! inline WDK helpers compiled into the driver are.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use storport_abi::status::Named;

use revcall_protocol::{CURSOR_NOW, WaitFlags};
use serde::{Deserialize, Serialize};

use super::disk::NullDisk;
use super::{BenchError, quiet_config};
use crate::client::{Channel, PROMPT};
use revcall_protocol::status::STATUS_CANCELLED;
use storsim::harness::Harness;
use storsim::io::Request;

/// Parked waiters at which each operation is measured.
pub const SIZES: [usize; 6] = [0, 1, 8, 64, 256, 1024];

/// The operation a phase performs once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    /// One WAIT parks, joining `parked - 1` others.
    Park,
    /// One of `parked` WAITs is cancelled (CancelIoEx → the driver's cancel routine).
    Cancel,
    /// One FIRE, delivered to `parked` waiters (one event each).
    Fire,
    /// Removal (HwCompleteServiceIrp … HwFreeAdapterResources) with `parked` WAITs parked.
    Remove,
    /// `parked` 4 KiB READs, one after another, each through the data path: HwStartIo, the
    /// server's parked FETCH completed, its COMMIT_AND_FETCH, the SRB completed.
    DiskRead,
    /// The same with 4 KiB WRITEs.
    DiskWrite,
    /// `parked` 4 KiB READs in bursts of [`DISK_QUEUE_DEPTH`] in flight, the server fetching
    /// up to 32 at once: the FETCH and the COMMIT shared by a burst's I/Os.
    DiskReadQueued,
    /// The same with 4 KiB WRITEs.
    DiskWriteQueued,
}

/// One measured phase, in the order the profiles were dumped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Phase {
    pub op: Op,
    /// WAITs parked; for a disk phase, the I/Os it ran.
    pub parked: usize,
    /// The driver's payload copies during the phase (a block or more between a SystemBuffer
    /// and an SRB's buffer).
    pub copies: u64,
}

/// Runs one phase: its op, its size, what it does.
type Measure<'a> = dyn FnMut(Op, usize, &mut dyn FnMut()) + 'a;

/// I/Os in each disk phase.
pub const DISK_IOS: usize = 64;
/// SRBs in flight in a queued disk phase's bursts.
pub const DISK_QUEUE_DEPTH: usize = 32;
const DISK_BLOCK: u32 = 512;
const DISK_IO_BLOCKS: u32 = 8;

/// What the measured child reports: where the driver lies and which phases it ran.
#[derive(Debug, Serialize, Deserialize)]
pub struct Plan {
    pub image_start: u64,
    pub image_end: u64,
    pub phases: Vec<Phase>,
}

/// Where callgrind dumps a profile (`--dump-before` names it): called right before and right
/// after each measured phase, so every other profile holds exactly one phase.
#[inline(never)]
pub fn phase_boundary() {
    std::hint::black_box(());
}

/// The measured script (run by `storsim cost-phases`, under callgrind): for every size in
/// [`SIZES`], on a fresh adapter, one park, one cancel, one FIRE and the removal.
///
/// # Errors
///
/// The driver does not start, or an operation does not end as the channel promises.
pub fn phases(driver: &Path) -> Result<Plan, BenchError> {
    // Under callgrind a round trip through a server is slow: no SRB may time out meanwhile.
    let harness = Harness::start(
        driver,
        storsim::machine::Config {
            srb_second: std::time::Duration::from_secs(60),
            ..quiet_config()
        },
    )?;
    let kernel = harness.kernel.clone();
    let image = harness.image();
    let mut plan = Plan {
        image_start: image.base() as u64,
        image_end: (image.base() + image.size()) as u64,
        phases: Vec::new(),
    };
    let copies = || {
        kernel
            .port()
            .counters()
            .payload_copies
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let mut measure = |op, parked, phase: &mut dyn FnMut()| {
        let before = copies();
        phase_boundary();
        phase();
        phase_boundary();
        plan.phases.push(Phase {
            op,
            parked,
            copies: copies() - before,
        });
    };
    for (round, &size) in SIZES.iter().enumerate() {
        if round > 0 {
            kernel.add_adapter()?;
            kernel.start_adapter()?;
        }
        // A handle belongs to the adapter instance it was opened on, as on Windows.
        let firer = Channel::open(&kernel, 1);
        let waiter = Channel::open(&kernel, 2);
        let mut parked = park(&waiter, size.saturating_sub(1));
        if size > 0 {
            measure(Op::Park, size, &mut || {
                parked.push(waiter.wait(CURSOR_NOW, 1));
            });
            let victim = parked.swap_remove(size / 2);
            measure(Op::Cancel, size, &mut || {
                waiter.cancel(&victim);
            });
            expect_status(&victim, STATUS_CANCELLED, "the cancelled WAIT")?;
            parked.push(waiter.wait(CURSOR_NOW, 1));
        }
        let mut fired = Err(0);
        measure(Op::Fire, size, &mut || fired = firer.fire(1, 0));
        fired
            .map_err(|status| BenchError::Unexpected(format!("FIRE failed: {}", Named(status))))?;
        for request in &parked {
            expect_events(&waiter, request, 1)?;
        }
        let parked = park(&waiter, size);
        measure(Op::Remove, size, &mut || kernel.remove_adapter(|| {}));
        for request in &parked {
            let outcome = request.wait(PROMPT);
            let closed = outcome.as_ref().is_some_and(|o| {
                waiter
                    .delivery(o)
                    .is_ok_and(|d| d.reply.flags & WaitFlags::FINAL != 0)
            });
            if !closed {
                return Err(BenchError::Unexpected(format!(
                    "removal left a parked WAIT without its FINAL reply: {outcome:?}"
                )));
            }
        }
        firer.close();
        waiter.close();
    }
    kernel.add_adapter()?;
    kernel.start_adapter()?;
    disk_phases(&kernel, &mut measure)?;
    super::clean(harness.finish())?;
    Ok(plan)
}

/// The data path's phases: a LUN, one null server (answers READ with zeros it does not copy
/// from a store, WRITE with GOOD), [`DISK_IOS`] 4 KiB READs then WRITEs from one CPU.
fn disk_phases(
    kernel: &Arc<storsim::kernel::Kernel>,
    measure: &mut Measure<'_>,
) -> Result<(), BenchError> {
    let admin = Channel::open(kernel, 1);
    let mut serial = [b' '; 32];
    serial[..5].copy_from_slice(b"COSTS");
    let lun = admin
        .create_lun(revcall_protocol::LunSpec {
            block_count: 1 << 16,
            block_size: DISK_BLOCK,
            serial,
            unique_id: [0x77; 16],
            ..revcall_protocol::LunSpec::default()
        })
        .map_err(|status| BenchError::Unexpected(format!("LUN_CREATE: {}", Named(status))))?;
    let class = kernel
        .disk_class()
        .ok_or_else(|| BenchError::Unexpected("no disk class".into()))?;
    class.enumerate();
    let server = Channel::open(kernel, 3);
    let attach = server.attach(lun);
    let failed = std::sync::atomic::AtomicU64::new(0);
    // Held while the CPU hands SRBs over: the server answers what it fetched only once every
    // SRB of the round is in, so a burst of 32 is always fetched 1 then 31. Without it how
    // many a COMMIT_AND_FETCH found queued was up to valgrind's scheduler, and a loaded
    // machine moved the queued figure from 578 to 608 instructions per I/O.
    let handing_over = std::sync::atomic::AtomicBool::new(false);
    // I/Os `first..first + count`, `depth` in flight at a time.
    let burst = |write: bool, first: usize, count: usize, depth: usize| {
        let len = DISK_IO_BLOCKS * DISK_BLOCK;
        let payload = vec![0x5A; len as usize];
        let mut flights = Vec::with_capacity(depth);
        let mut next = first;
        while next < first + count || !flights.is_empty() {
            // Each I/O one at a time, and each burst's first, meets a parked FETCH (the
            // ATTACH and it are parked): otherwise whether the server's COMMIT_AND_FETCH parks
            // before the next SRB comes is up to the scheduler, and the figure moves with it.
            if flights.is_empty() && next < first + count && !parked(kernel, 2) {
                eprintln!("cost-phases: the server's FETCH never parked");
                failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return;
            }
            handing_over.store(true, std::sync::atomic::Ordering::Release);
            while next < first + count && flights.len() < depth {
                let transfer = revcall_scsi::Transfer {
                    lba: (next as u64 % 4096) * u64::from(DISK_IO_BLOCKS),
                    blocks: DISK_IO_BLOCKS,
                    fua: false,
                };
                let (command, data) = if write {
                    (revcall_scsi::Command::Write(transfer), Some(&payload[..]))
                } else {
                    (revcall_scsi::Command::Read(transfer), None)
                };
                flights.extend(class.submit(0, &command, len, data));
                next += 1;
            }
            handing_over.store(false, std::sync::atomic::Ordering::Release);
            let done = class
                .first_done(&flights, PROMPT)
                .and_then(|done| class.finish(flights.remove(done)));
            if done.as_ref().is_none_or(|d| d.srb_status != 0x01) {
                eprintln!("cost-phases: a disk I/O (write: {write}) ended {done:?}");
                failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return;
            }
        }
    };
    std::thread::scope(|scope| {
        let serving = scope.spawn(|| {
            server.serve(&attach, 32, PROMPT, |work, commit| {
                while handing_over.load(std::sync::atomic::Ordering::Acquire) {
                    std::thread::yield_now();
                }
                commit.answer(work, DISK_BLOCK, &mut NullDisk);
            })
        });
        // Warm: the first I/Os of a LUN are not what every later one costs.
        for n in 0..8 {
            burst(n % 2 == 0, n, 1, 1);
        }
        for (op, write, depth) in [
            (Op::DiskRead, false, 1),
            (Op::DiskWrite, true, 1),
            (Op::DiskReadQueued, false, DISK_QUEUE_DEPTH),
            (Op::DiskWriteQueued, true, DISK_QUEUE_DEPTH),
        ] {
            measure(op, DISK_IOS, &mut || {
                // Bursts: each fills the queue, then drains it.
                for first in (0..DISK_IOS).step_by(depth) {
                    burst(write, first, depth.min(DISK_IOS - first), depth);
                }
            });
        }
        let removed = admin.remove_lun(lun);
        let served = serving.join();
        (removed.is_ok() && matches!(served, Ok(Some(_))))
            .then_some(())
            .ok_or_else(|| {
                BenchError::Unexpected("the null server did not end with its LUN".into())
            })
    })?;
    server.close();
    admin.close();
    match failed.load(std::sync::atomic::Ordering::Relaxed) {
        0 => Ok(()),
        n => Err(BenchError::Unexpected(format!("{n} disk I/Os failed"))),
    }
}

/// Waits until `count` IRPs are parked with the driver; false if that takes longer than
/// [`PROMPT`].
fn parked(kernel: &storsim::kernel::Kernel, count: usize) -> bool {
    let start = std::time::Instant::now();
    while kernel.io().parked() < count {
        if start.elapsed() > PROMPT {
            return false;
        }
        std::thread::yield_now();
    }
    true
}

fn park(waiter: &Channel, count: usize) -> Vec<Arc<Request>> {
    (0..count).map(|_| waiter.wait(CURSOR_NOW, 1)).collect()
}

fn expect_status(request: &Request, status: u32, what: &str) -> Result<(), BenchError> {
    match request.outcome() {
        Some(outcome) if outcome.status == status => Ok(()),
        other => Err(BenchError::Unexpected(format!(
            "{what}: expected status {}, got {other:?}",
            Named(status)
        ))),
    }
}

/// The WAIT completed with exactly `count` events.
fn expect_events(waiter: &Channel, request: &Request, count: usize) -> Result<(), BenchError> {
    let outcome = request.wait(PROMPT);
    match outcome.as_ref().map(|o| waiter.delivery(o)) {
        Some(Ok(delivery)) if delivery.events.len() == count => Ok(()),
        other => Err(BenchError::Unexpected(format!(
            "a parked WAIT: expected {count} event(s), got {other:?}"
        ))),
    }
}

/// Instructions per operation at one size.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct CostRow {
    pub parked: usize,
    /// Parking one WAIT (None at size 0).
    pub park: Option<u64>,
    /// Cancelling one parked WAIT.
    pub cancel: Option<u64>,
    /// One FIRE delivered to `parked` waiters, all of it.
    pub fire: u64,
    /// (fire − fire with no waiter) / parked: one delivered event for one waiter.
    pub per_event_per_waiter: Option<f64>,
    /// The whole removal.
    pub removal: u64,
    /// (removal − removal with none parked) / parked: completing one parked WAIT at removal.
    pub removal_per_parked: Option<f64>,
}

/// The data path's cost per 4 KiB I/O, one CPU, one null server.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct DiskCost {
    /// Instructions in revcall.sys per READ (HwStartIo to the SRB's completion, the FETCH
    /// and COMMIT_AND_FETCH between), payload copies excluded (memcpy is ntoskrnl's).
    pub read_instr_per_io: f64,
    pub write_instr_per_io: f64,
    /// The driver's payload copies (a block or more between a SystemBuffer and an SRB's
    /// buffer) per I/O.
    pub read_copies_per_io: f64,
    pub write_copies_per_io: f64,
    /// The same per I/O in bursts of [`DISK_QUEUE_DEPTH`] (the server batching).
    pub queued_read_instr_per_io: f64,
    pub queued_write_instr_per_io: f64,
}

/// Everything the callgrind run measured.
#[derive(Clone, Debug, Default)]
pub struct Costs {
    pub rows: Vec<CostRow>,
    pub disk: Option<DiskCost>,
}

/// Runs [`phases`] in a child `storsim cost-phases` under callgrind and reads its profiles.
///
/// # Errors
///
/// valgrind is missing or fails, the child fails, or a profile cannot be read.
pub fn measure(driver: &Path, work: &Path) -> Result<Costs, BenchError> {
    let exe = std::env::current_exe().map_err(BenchError::Io)?;
    let out_file = work.join("callgrind.out");
    let output = Command::new("valgrind")
        .args([
            "--tool=callgrind",
            "--dump-instr=yes",
            "--dump-line=no",
            "--dump-before=*phase_boundary*",
        ])
        .arg(format!("--callgrind-out-file={}", out_file.display()))
        .arg(&exe)
        .arg("cost-phases")
        .arg(driver)
        .output()
        .map_err(|source| BenchError::Valgrind(format!("cannot start valgrind: {source}")))?;
    if !output.status.success() {
        return Err(BenchError::Valgrind(format!(
            "storsim cost-phases under callgrind failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    let plan: Plan = serde_json::from_slice(&output.stdout)
        .map_err(|e| BenchError::Unexpected(format!("cost-phases printed no plan: {e}")))?;
    let mut costs = Vec::with_capacity(plan.phases.len());
    for (index, phase) in plan.phases.iter().enumerate() {
        // Dumps alternate: what ran before the phase, then the phase itself.
        let file = dump_file(&out_file, 2 * index + 2);
        let text = std::fs::read_to_string(&file)
            .map_err(|e| BenchError::Valgrind(format!("{}: {e}", file.display())))?;
        let counted = super::callgrind::instructions_in(&text, plan.image_start..plan.image_end)?;
        costs.push((*phase, counted.inside));
    }
    Ok(Costs {
        rows: tabulate(&costs)?,
        disk: disk_cost(&costs),
    })
}

/// Per-I/O figures of the disk phases, if both ran.
fn disk_cost(costs: &[(Phase, u64)]) -> Option<DiskCost> {
    let per_io = |op| {
        costs.iter().find(|(p, _)| p.op == op).map(|(p, c)| {
            let ios = p.parked.max(1) as f64;
            (*c as f64 / ios, p.copies as f64 / ios)
        })
    };
    let (read_instr_per_io, read_copies_per_io) = per_io(Op::DiskRead)?;
    let (write_instr_per_io, write_copies_per_io) = per_io(Op::DiskWrite)?;
    Some(DiskCost {
        read_instr_per_io,
        write_instr_per_io,
        read_copies_per_io,
        write_copies_per_io,
        queued_read_instr_per_io: per_io(Op::DiskReadQueued)?.0,
        queued_write_instr_per_io: per_io(Op::DiskWriteQueued)?.0,
    })
}

/// callgrind names the n-th dump `<out-file>.<n>`.
fn dump_file(out_file: &Path, n: usize) -> PathBuf {
    let mut name = out_file.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// One row per size, each figure from its phase; marginal costs against size 0.
fn tabulate(costs: &[(Phase, u64)]) -> Result<Vec<CostRow>, BenchError> {
    let cost = |op, parked| {
        costs
            .iter()
            .find(|(p, _)| p.op == op && p.parked == parked)
            .map(|(_, c)| *c)
    };
    let missing = |op, parked| BenchError::Unexpected(format!("no {op:?} phase at {parked}"));
    let fire0 = cost(Op::Fire, 0).ok_or_else(|| missing(Op::Fire, 0))?;
    let removal0 = cost(Op::Remove, 0).ok_or_else(|| missing(Op::Remove, 0))?;
    let marginal =
        |total: u64, base: u64, n: usize| (n > 0).then(|| (total as f64 - base as f64) / n as f64);
    SIZES
        .iter()
        .map(|&parked| {
            let fire = cost(Op::Fire, parked).ok_or_else(|| missing(Op::Fire, parked))?;
            let removal = cost(Op::Remove, parked).ok_or_else(|| missing(Op::Remove, parked))?;
            Ok(CostRow {
                parked,
                park: cost(Op::Park, parked),
                cancel: cost(Op::Cancel, parked),
                fire,
                per_event_per_waiter: marginal(fire, fire0, parked),
                removal,
                removal_per_parked: marginal(removal, removal0, parked),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marginal_costs_are_taken_against_the_empty_adapter() {
        let mut costs = Vec::new();
        for &parked in &SIZES {
            let n = parked as u64;
            costs.push((
                Phase {
                    op: Op::Fire,
                    parked,
                    copies: 0,
                },
                500 + 200 * n,
            ));
            costs.push((
                Phase {
                    op: Op::Remove,
                    parked,
                    copies: 0,
                },
                900 + 150 * n,
            ));
            if parked > 0 {
                costs.push((
                    Phase {
                        op: Op::Park,
                        parked,
                        copies: 0,
                    },
                    180,
                ));
                costs.push((
                    Phase {
                        op: Op::Cancel,
                        parked,
                        copies: 0,
                    },
                    120,
                ));
            }
        }
        let rows = tabulate(&costs).unwrap();
        assert_eq!(rows.len(), SIZES.len());
        assert_eq!(rows[0].park, None);
        assert_eq!(rows[0].per_event_per_waiter, None);
        let last = rows.last().unwrap();
        assert_eq!(last.parked, 1024);
        assert_eq!(last.per_event_per_waiter, Some(200.0));
        assert_eq!(last.removal_per_parked, Some(150.0));
        assert_eq!(last.park, Some(180));
    }

    #[test]
    fn a_missing_phase_is_an_error() {
        let costs = [(
            Phase {
                op: Op::Fire,
                parked: 0,
                copies: 0,
            },
            10,
        )];
        assert!(tabulate(&costs).is_err());
    }

    #[test]
    fn dumps_are_numbered_after_the_out_file() {
        assert_eq!(
            dump_file(Path::new("/tmp/x/callgrind.out"), 4),
            PathBuf::from("/tmp/x/callgrind.out.4")
        );
    }
}
