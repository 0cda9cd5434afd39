//! I/Os per second through the data path, end to end: one SRB script — N emulated CPUs, each
//! keeping its share of a queue depth in flight through HwStartIo — run against revcall.sys,
//! whose LUN 0 is served by an in-process null server over FETCH / COMMIT_AND_FETCH, and
//! against the `nulldisk` fixture, which answers the same SRBs in HwStartIo. The fixture's
//! rate is what storsim's own SRB path costs (SRB in pool, HwStartIo, completion, the class
//! model's collection): the ratio of the two is what revcall and its user-mode hop add.
//!
//! The null server does no work of its own (a READ's zeros are laid out by `answer`, not
//! copied from a store; a WRITE's data is dropped), so what is measured is the channel.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use revcall_client::server::{Backend, Failure};
use revcall_protocol::LunSpec;
use revcall_scsi::{Command, Transfer};
use serde::Serialize;
use storport_abi::status::Named;

use super::{BenchError, quiet_config};
use crate::client::{Channel, PROMPT};
use storsim::harness::Harness;

pub const BLOCK: u32 = 512;
/// LUN 0's size: 1 GiB of LBAs for the random offsets (the null server stores nothing).
const LUN_BLOCKS: u64 = 1 << 21;
const SRB_STATUS_SUCCESS: u8 = 0x01;

/// What the SRBs do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Pattern {
    /// 4 KiB READs at random 4 KiB-aligned offsets.
    RandRead4k,
    /// 4 KiB WRITEs at random 4 KiB-aligned offsets.
    RandWrite4k,
    /// 64 KiB READs, one after another.
    SeqRead64k,
}

impl Pattern {
    pub fn bytes(self) -> u32 {
        match self {
            Self::RandRead4k | Self::RandWrite4k => 4096,
            Self::SeqRead64k => 64 * 1024,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::RandRead4k => "4K random READ",
            Self::RandWrite4k => "4K random WRITE",
            Self::SeqRead64k => "64K sequential READ",
        }
    }

    /// The `n`-th SRB of CPU `cpu`'s script.
    fn command(self, cpu: usize, n: u64, rng: &mut fastrand::Rng) -> Command {
        let blocks = self.bytes() / BLOCK;
        let slots = LUN_BLOCKS / u64::from(blocks);
        let lba = match self {
            Self::SeqRead64k => ((cpu as u64) << 32 | n) % slots * u64::from(blocks),
            _ => rng.u64(..slots) * u64::from(blocks),
        };
        let transfer = Transfer {
            lba,
            blocks,
            fua: false,
        };
        match self {
            Self::RandWrite4k => Command::Write(transfer),
            _ => Command::Read(transfer),
        }
    }
}

/// Which driver answers, and so how LUN 0 comes to exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    /// revcall: LUN_CREATE, and one null server per submitting CPU.
    Revcall,
    /// The nulldisk fixture: LUN 0 is there from the start.
    NullDisk,
}

/// One configuration of the script.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct DiskCase {
    pub pattern: Pattern,
    /// Submitting CPUs.
    pub cpus: usize,
    /// SRBs in flight in all (each CPU keeps its share).
    pub depth: usize,
    /// Servers fetch up to 32 descriptors at once (on) or one (off).
    pub batch: bool,
}

impl DiskCase {
    fn per_cpu_depth(self) -> usize {
        (self.depth / self.cpus).max(1)
    }

    fn max_descriptors(self) -> u32 {
        if self.batch { 32 } else { 1 }
    }
}

/// What one timed run did.
#[derive(Clone, Debug)]
pub struct DiskRun {
    pub ios: u64,
    pub elapsed: Duration,
    /// Each SRB's time from submission to the submitting CPU collecting it.
    pub latencies: Vec<Duration>,
}

impl DiskRun {
    pub fn iops(&self) -> f64 {
        self.ios as f64 / self.elapsed.as_secs_f64()
    }
}

/// A null server's store: a READ gets the zeros `answer` lays out (nothing is copied in), the
/// rest succeeds; nothing is stored.
pub struct NullDisk;

impl Backend for NullDisk {
    fn read(&mut self, _lba: u64, _out: &mut [u8]) -> Result<(), Failure> {
        Ok(())
    }

    fn write(&mut self, _lba: u64, _data: &[u8]) -> Result<(), Failure> {
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Failure> {
        Ok(())
    }

    fn unmap(&mut self, _lba: u64, _blocks: u32) -> Result<(), Failure> {
        Ok(())
    }
}

/// Boots a kernel with `path` loaded, runs `ios` SRBs of `case`, removes the adapter.
///
/// # Errors
///
/// The driver does not start, an SRB does not complete SUCCESS promptly, the null server does
/// not end with its LUN, or the verifier objects.
pub fn run(path: &Path, driver: Driver, case: DiskCase, ios: u64) -> Result<DiskRun, BenchError> {
    // nulldisk sends no IRP and makes no bulk copy: storsim's checks of those (the copy
    // count's lookups, the SystemBuffer's unwritten-output marker) would be costs charged to
    // revcall alone. The copies are counted in the cost phase; the marker is every test's.
    let config = storsim::machine::Config {
        count_copies: false,
        disclosure_check: false,
        ..quiet_config()
    };
    let harness = Harness::start(path, config)?;
    let kernel = harness.kernel.clone();
    let admin = Channel::open(&kernel, 1);
    let lun = match driver {
        Driver::Revcall => Some(create_lun(&admin)?),
        Driver::NullDisk => None,
    };
    let class = kernel
        .disk_class()
        .ok_or_else(|| BenchError::Unexpected("no disk class".into()))?;
    if driver == Driver::Revcall {
        class.enumerate();
    }
    let servers: Vec<Channel> = lun
        .map(|_| {
            (0..case.cpus)
                .map(|n| Channel::open(&kernel, 10 + n as u32))
                .collect()
        })
        .unwrap_or_default();
    let failed = Failures::default();
    let (elapsed, latencies) = std::thread::scope(|scope| {
        let serving: Vec<_> = servers
            .iter()
            .map(|server| {
                let attach = server.attach(lun.unwrap_or(0));
                scope.spawn(move || {
                    server.serve(&attach, case.max_descriptors(), PROMPT, |work, commit| {
                        commit.answer(work, BLOCK, &mut NullDisk);
                    })
                })
            })
            .collect();
        let start = Instant::now();
        let submitting: Vec<_> = (0..case.cpus)
            .map(|cpu| {
                let (class, failed) = (&class, &failed);
                let share =
                    ios / case.cpus as u64 + u64::from((cpu as u64) < ios % case.cpus as u64);
                scope.spawn(move || {
                    storsim::cpu::enter_thread();
                    submit(class, case, cpu, share, failed)
                })
            })
            .collect();
        let latencies: Vec<Duration> = submitting
            .into_iter()
            .flat_map(|cpu| cpu.join().unwrap_or_default())
            .collect();
        let elapsed = start.elapsed();
        if let Some(lun) = lun
            && let Err(status) = admin.remove_lun(lun)
        {
            failed.note(|| format!("LUN_REMOVE: {}", Named(status)));
        }
        for (n, server) in serving.into_iter().enumerate() {
            if !matches!(server.join(), Ok(Some(_))) {
                failed.note(|| format!("server {n} did not end with its LUN"));
            }
        }
        (elapsed, latencies)
    });
    for server in servers {
        server.close();
    }
    admin.close();
    super::clean(harness.finish())?;
    match failed.first.into_inner().unwrap_or_else(|p| p.into_inner()) {
        None => Ok(DiskRun {
            ios,
            elapsed,
            latencies,
        }),
        Some(first) => Err(BenchError::Unexpected(format!(
            "{case:?}: {} failures, the first: {first}",
            failed.count.load(Ordering::Relaxed)
        ))),
    }
}

/// What went wrong in a run: how often, and the first time in words.
#[derive(Default)]
struct Failures {
    count: AtomicU64,
    first: std::sync::Mutex<Option<String>>,
}

impl Failures {
    fn note(&self, what: impl FnOnce() -> String) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.first
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(what);
    }
}

fn create_lun(admin: &Channel) -> Result<u32, BenchError> {
    let mut serial = [b' '; 32];
    serial[..5].copy_from_slice(b"BENCH");
    admin
        .create_lun(LunSpec {
            block_count: LUN_BLOCKS,
            block_size: BLOCK,
            serial,
            unique_id: [0x66; 16],
            ..LunSpec::default()
        })
        .map_err(|status| BenchError::Unexpected(format!("LUN_CREATE: {}", Named(status))))
}

/// One CPU's part: `share` SRBs, its share of the depth in flight; each SRB's latency.
fn submit(
    class: &storsim::class::DiskClass,
    case: DiskCase,
    cpu: usize,
    share: u64,
    failed: &Failures,
) -> Vec<Duration> {
    let mut rng = fastrand::Rng::with_seed(cpu as u64 + 1);
    let len = case.pattern.bytes();
    let payload = vec![0x5A; len as usize];
    let mut flights = Vec::with_capacity(case.per_cpu_depth());
    let mut issued = Vec::with_capacity(case.per_cpu_depth());
    let mut latencies = Vec::with_capacity(share as usize);
    let mut sent = 0;
    while sent < share || !flights.is_empty() {
        while sent < share && flights.len() < case.per_cpu_depth() {
            let command = case.pattern.command(cpu, sent, &mut rng);
            let data = matches!(command, Command::Write(_)).then_some(&payload[..]);
            let Some(flight) = class.submit(0, &command, len, data) else {
                failed.note(|| format!("CPU {cpu}: SRB {sent} could not be submitted"));
                return latencies;
            };
            flights.push(flight);
            issued.push(Instant::now());
            sent += 1;
        }
        let Some(done) = class.first_done(&flights, PROMPT) else {
            failed.note(|| {
                format!(
                    "CPU {cpu}: no SRB of {} completed within {PROMPT:?}",
                    flights.len()
                )
            });
            return latencies;
        };
        // In submission order, oldest first: a completed SRB is collected before those after it.
        let flight = flights.remove(done);
        let latency = issued.remove(done).elapsed();
        latencies.push(latency);
        match class.finish(flight) {
            Some(c) if c.srb_status == SRB_STATUS_SUCCESS => {}
            Some(c) => failed.note(|| {
                format!(
                    "CPU {cpu}: an SRB ended with SRB status {:#04x}, SCSI status {:#04x}, sense {:?} after {latency:?}",
                    c.srb_status, c.scsi_status, c.sense
                )
            }),
            None => failed.note(|| format!("CPU {cpu}: an SRB was never completed")),
        }
    }
    latencies
}
