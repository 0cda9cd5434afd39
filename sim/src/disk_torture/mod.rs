//! `storsim disk-torture`: the data path under fire. N emulated CPUs issue random READ, WRITE,
//! SYNCHRONIZE CACHE and UNMAP of 1 to 128 blocks to several LUNs while misbehaving servers
//! ([`server`]) serve them; the main thread removes and re-creates LUNs with I/O in flight,
//! resets LUNs and the bus as Storport does after a timeout (often while a server sits on a
//! WRITE it will still carry out: the zombie WRITE), power-cycles the adapter, and ends each
//! cycle with a removal or surprise removal of the adapter (then a new instance); the event
//! channel carries FIRE and WAIT traffic throughout.
//!
//! Checked: every SRB completes (storsim reports one that never does, and one completed twice),
//! with a status its moment allows; every READ returns, block by block, the bytes of the last
//! acknowledged WRITE, or of a WRITE that failed since, or zeros on a LUN created since
//! ([`model`]); every malformed COMMIT is refused with its status; every IRP completes once; no
//! verifier violation; no pool left at unload.
//!
//! Each CPU owns a region of each LUN and has one SRB in flight at a time, so its own order is
//! the truth. A LUN's *generation* is odd while it is being removed and re-created (and while
//! the adapter goes): an SRB that overlaps a change may end NO_DEVICE, and its WRITE may or may
//! not be in the new LUN. The run's *reset epoch* is odd while a reset runs: an SRB that
//! overlaps one may end ABORTED or BUS_RESET, and its WRITE may or may not have landed — but
//! once a READ has seen a block, nothing but a later WRITE may change it.

mod model;
mod server;

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use revcall_client::server::MemoryDisk;
use revcall_protocol::{CURSOR_NOW, LunFlags, LunSpec};
use revcall_scsi::{Command, Sense, Transfer};
use serde::Serialize;
use storsim::class::DiskClass;
use storsim::kernel::Kernel;
use storsim::machine::Config;
use storsim::report::Summary;

use crate::Failures;
use crate::client::Channel;
use crate::progress::Progress;
use model::{Region, Stamp};
use server::{ServerCounts, ServerPlan};

const BLOCK: u32 = 512;
/// Blocks per LUN: 8 MiB.
const LUN_BLOCKS: u64 = 16 * 1024;
const MAX_BLOCKS: u32 = 128;
const SRB_STATUS_SUCCESS: u8 = 0x01;
const SRB_STATUS_ABORTED: u8 = 0x02;
const SRB_STATUS_ERROR: u8 = 0x04;
const SRB_STATUS_BUS_RESET: u8 = 0x0E;
const SRB_STATUS_NO_DEVICE: u8 = 0x08;

/// What to run.
#[derive(Clone, Debug)]
pub struct DiskTortureOptions {
    pub driver: std::path::PathBuf,
    pub cpus: usize,
    /// SRBs in all.
    pub ios: u64,
    /// Adapter removal cycles.
    pub removals: u32,
    pub luns: usize,
    /// Servers per LUN at once.
    pub servers: usize,
    pub seed: u64,
    pub delay: f64,
    pub progress: bool,
}

/// The run's figures and verdict.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DiskTortureReport {
    pub command: String,
    pub ios: u64,
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub unmaps: u64,
    pub bytes_verified: u64,
    /// SRBs that ended otherwise than SUCCESS, by status: each allowed at its moment.
    pub failed_ios: u64,
    pub removals: u32,
    pub lun_recreations: u64,
    pub lun_resets: u64,
    pub bus_resets: u64,
    /// Servers that sat on a WRITE or UNMAP through a reset, wrote the blocks anyway, and
    /// found their COMMIT stale (at least: a split COMMIT's first half is not counted).
    pub late_writes: u64,
    pub power_cycles: u64,
    pub server_deaths: u64,
    pub commits: u64,
    pub answered: u64,
    pub stale_results: u64,
    pub malformed_refused: u64,
    pub injected_errors: u64,
    pub events_fired: u64,
    pub wrong_bytes: u64,
    pub violations: Vec<String>,
    pub failures: Vec<String>,
    pub pool_outstanding: u64,
    pub irps_outstanding: Option<u64>,
    pub seconds: f64,
    pub passed: bool,
    /// After a failure: the smallest failing command [`shrink`] found.
    pub reproduce: Option<String>,
}

impl DiskTortureReport {
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report is plain data")
    }

    pub fn text(&self) -> String {
        let mut out = format!("storsim disk-torture: {}\n", self.command);
        let rows = [
            ("SRBs", self.ios.to_string()),
            (
                "  READ / WRITE / FLUSH / UNMAP",
                format!(
                    "{} / {} / {} / {}",
                    self.reads, self.writes, self.flushes, self.unmaps
                ),
            ),
            ("  bytes verified", self.bytes_verified.to_string()),
            ("  ended otherwise (allowed)", self.failed_ios.to_string()),
            ("adapter removals", self.removals.to_string()),
            (
                "LUNs removed and re-created",
                self.lun_recreations.to_string(),
            ),
            (
                "resets (LUN / bus)",
                format!("{} / {}", self.lun_resets, self.bus_resets),
            ),
            ("  late WRITEs after a reset", self.late_writes.to_string()),
            ("power cycles", self.power_cycles.to_string()),
            ("server deaths", self.server_deaths.to_string()),
            ("COMMITs", self.commits.to_string()),
            ("  results", self.answered.to_string()),
            ("  stale", self.stale_results.to_string()),
            ("  malformed, refused", self.malformed_refused.to_string()),
            ("  medium errors injected", self.injected_errors.to_string()),
            ("events fired", self.events_fired.to_string()),
            ("wrong bytes", self.wrong_bytes.to_string()),
            ("verifier violations", self.violations.len().to_string()),
            ("pool blocks left", self.pool_outstanding.to_string()),
            ("seconds", format!("{:.1}", self.seconds)),
        ];
        for (what, value) in rows {
            out += &format!("  {what:<32} {value}\n");
        }
        for failure in self.failures.iter().take(20) {
            out += &format!("  FAILED: {failure}\n");
        }
        if let Some(smaller) = &self.reproduce {
            out += &format!("  smallest failing run found: {smaller}\n");
        }
        out += if self.passed {
            "disk-torture: passed\n"
        } else {
            "disk-torture: FAILED\n"
        };
        out
    }
}

/// What a CPU does next to the blocks of a WRITE a reset ended: LUN slot, (lba, blocks).
enum FollowUp {
    Rewrite(usize, (u64, u32)),
    Reread(usize, (u64, u32)),
}

/// A LUN of the current cycle: its number, its store and its generation.
struct Lun {
    number: AtomicU32,
    store: Mutex<Arc<Mutex<MemoryDisk>>>,
    /// Odd while the LUN is being removed and re-created, or the adapter is going.
    generation: AtomicU64,
    /// Held (written) while the LUN is removed and re-created; servers attach holding it read.
    changing: RwLock<()>,
}

#[derive(Default)]
struct IoCounts {
    ios: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
    flushes: AtomicU64,
    unmaps: AtomicU64,
    verified: AtomicU64,
    failed: AtomicU64,
    wrong: AtomicU64,
}

/// Everything the threads of one run share.
struct Run<'a> {
    options: &'a DiskTortureOptions,
    kernel: Arc<Kernel>,
    luns: Vec<Lun>,
    /// SRBs left to issue in all.
    budget: AtomicU64,
    io: IoCounts,
    servers: ServerCounts,
    failures: Failures,
    pids: AtomicU32,
    recreations: AtomicU64,
    fired: AtomicU64,
    /// Odd while the main thread resets a LUN or the bus.
    reset_epoch: AtomicU64,
    /// Servers sitting on a WRITE or UNMAP until a reset takes it.
    stalled: AtomicU32,
    lun_resets: AtomicU64,
    bus_resets: AtomicU64,
    power_cycles: AtomicU64,
}

fn spec(lun: usize, cycle: u32, round: u64) -> LunSpec {
    let mut serial = [b' '; 32];
    let name = format!("TORTURE-{lun}-{cycle}-{round}");
    serial[..name.len()].copy_from_slice(name.as_bytes());
    let mut unique_id = [0u8; 16];
    unique_id[..8].copy_from_slice(&(lun as u64 + 1).to_le_bytes());
    unique_id[8..12].copy_from_slice(&cycle.to_le_bytes());
    unique_id[12..].copy_from_slice(&(round as u32).to_le_bytes());
    LunSpec {
        block_count: LUN_BLOCKS,
        block_size: BLOCK,
        flags: LunFlags::WRITE_CACHE | LunFlags::UNMAP,
        serial,
        unique_id,
        ..LunSpec::default()
    }
}

/// Runs the torture.
pub fn run(options: &DiskTortureOptions) -> DiskTortureReport {
    let started = Instant::now();
    let session = Kernel::boot(Config {
        seed: options.seed,
        delay_probability: options.delay,
        timeline: false,
        // No Storport timeout while a server pauses (at most 30 ms): 10 × 100 ms.
        srb_second: Duration::from_millis(100),
        ..Config::default()
    });
    let kernel = session.kernel().clone();
    let mut report = DiskTortureReport {
        command: options.command(),
        ..DiskTortureReport::default()
    };
    let loaded = match storsim::driver::load(&kernel, &options.driver) {
        Ok(loaded) => loaded,
        Err(error) => {
            report
                .failures
                .push(format!("the driver does not load: {error}"));
            return report;
        }
    };
    let run = Run {
        options,
        kernel: kernel.clone(),
        luns: (0..options.luns)
            .map(|_| Lun {
                number: AtomicU32::new(0),
                store: Mutex::new(Arc::new(Mutex::new(MemoryDisk::new(BLOCK, LUN_BLOCKS)))),
                generation: AtomicU64::new(1),
                changing: RwLock::new(()),
            })
            .collect(),
        budget: AtomicU64::new(options.ios),
        io: IoCounts::default(),
        servers: ServerCounts::default(),
        failures: Failures::default(),
        pids: AtomicU32::new(100),
        recreations: AtomicU64::new(0),
        fired: AtomicU64::new(0),
        reset_epoch: AtomicU64::new(0),
        stalled: AtomicU32::new(0),
        lun_resets: AtomicU64::new(0),
        bus_resets: AtomicU64::new(0),
        power_cycles: AtomicU64::new(0),
    };
    let cycles = options.removals.max(1);
    let per_cycle = options.ios / u64::from(cycles);
    let progress = Progress::new(options.progress, options.ios, "disk-torture", "SRBs");
    for cycle in 0..cycles {
        let left = if cycle + 1 == cycles {
            run.budget.load(Ordering::Relaxed)
        } else {
            per_cycle
        };
        run.cycle(cycle, left, &progress);
        report.removals += 1;
        if !run.failures.list().is_empty() {
            break;
        }
    }
    progress.finish(format!("{} failures", run.failures.list().len()));
    kernel.unload();
    let summary: Summary = kernel.summary(None, run.failures.list());
    drop(loaded);
    drop(session);
    let io = &run.io;
    let servers = &run.servers;
    report.ios = io.ios.load(Ordering::Relaxed);
    report.reads = io.reads.load(Ordering::Relaxed);
    report.writes = io.writes.load(Ordering::Relaxed);
    report.flushes = io.flushes.load(Ordering::Relaxed);
    report.unmaps = io.unmaps.load(Ordering::Relaxed);
    report.bytes_verified = io.verified.load(Ordering::Relaxed);
    report.failed_ios = io.failed.load(Ordering::Relaxed);
    report.wrong_bytes = io.wrong.load(Ordering::Relaxed);
    report.lun_recreations = run.recreations.load(Ordering::Relaxed);
    report.lun_resets = run.lun_resets.load(Ordering::Relaxed);
    report.bus_resets = run.bus_resets.load(Ordering::Relaxed);
    report.late_writes = servers.late_writes.load(Ordering::Relaxed);
    report.power_cycles = run.power_cycles.load(Ordering::Relaxed);
    report.server_deaths = servers.deaths.load(Ordering::Relaxed);
    report.commits = servers.commits.load(Ordering::Relaxed);
    report.answered = servers.answered.load(Ordering::Relaxed);
    report.stale_results = servers.stale.load(Ordering::Relaxed);
    report.malformed_refused = servers.malformed_refused.load(Ordering::Relaxed);
    report.injected_errors = servers.injected_errors.load(Ordering::Relaxed);
    report.events_fired = run.fired.load(Ordering::Relaxed);
    report.violations = summary
        .violations
        .iter()
        .map(|v| format!("{v:?}"))
        .collect();
    report.failures = run.failures.list();
    report.pool_outstanding = summary.pool_outstanding as u64;
    report.irps_outstanding = summary.irps.outstanding;
    report.seconds = started.elapsed().as_secs_f64();
    report.passed = report.failures.is_empty()
        && report.violations.is_empty()
        && report.wrong_bytes == 0
        && report.pool_outstanding == 0
        && report.irps_outstanding == Some(0)
        && report.ios > 0;
    report
}

/// A failing run again with fewer SRBs (and removals), then fewer CPUs, LUNs and servers, the
/// seed and the rest kept: the smallest failing options found within `budget`.
pub fn shrink(failing: &DiskTortureOptions, budget: std::time::Duration) -> DiskTortureOptions {
    let quiet = DiskTortureOptions {
        progress: false,
        ..failing.clone()
    };
    let best = crate::shrink::shrink(
        &quiet,
        &[
            |o| {
                (o.ios > 1000).then(|| DiskTortureOptions {
                    ios: o.ios / 2,
                    removals: o.removals.div_ceil(2),
                    ..o.clone()
                })
            },
            |o| {
                (o.cpus > 1).then(|| DiskTortureOptions {
                    cpus: o.cpus / 2,
                    ..o.clone()
                })
            },
            |o| {
                (o.luns > 1).then(|| DiskTortureOptions {
                    luns: o.luns / 2,
                    ..o.clone()
                })
            },
            |o| {
                (o.servers > 1).then(|| DiskTortureOptions {
                    servers: o.servers - 1,
                    ..o.clone()
                })
            },
        ],
        |o| !run(o).passed,
        budget,
    );
    DiskTortureOptions {
        progress: failing.progress,
        ..best
    }
}

impl DiskTortureOptions {
    /// The command line that runs exactly this.
    pub fn command(&self) -> String {
        format!(
            "storsim disk-torture {} --cpus {} --ios {} --removals {} --luns {} --servers {} --seed {} --delay {}",
            self.driver.display(),
            self.cpus,
            self.ios,
            self.removals,
            self.luns,
            self.servers,
            self.seed,
            self.delay
        )
    }
}

impl Run<'_> {
    /// One adapter instance: start, LUNs and servers, `ios` SRBs from every CPU with LUNs
    /// re-created meanwhile, then the adapter's removal (or surprise removal) with I/O in
    /// flight.
    fn cycle(&self, cycle: u32, ios: u64, progress: &Progress) {
        let added = if cycle == 0 {
            Ok(())
        } else {
            self.kernel.add_adapter()
        };
        let started = added.and_then(|()| self.kernel.start_adapter());
        if let Err(error) = started {
            return self.failures.expect(false, || {
                format!("cycle {cycle}: the adapter starts: {error:?}")
            });
        }
        let Some(class) = self.kernel.disk_class() else {
            return self.failures.expect(false, || "a disk class".into());
        };
        let admin = Channel::open(&self.kernel, 1);
        for (n, lun) in self.luns.iter().enumerate() {
            if !self.create(&admin, n, lun, cycle, 0) {
                return;
            }
        }
        class.enumerate();
        let mut rng = fastrand::Rng::with_seed(self.options.seed ^ u64::from(cycle) << 32);
        // The CPUs go on issuing while a cycle ends, so earlier cycles may have used this
        // one's share: never wait for more SRBs than the run has.
        let target =
            (self.options.ios - self.budget.load(Ordering::Relaxed) + ios).min(self.options.ios);
        let stop = AtomicBool::new(false);
        let servers_stop = AtomicBool::new(false);
        std::thread::scope(|scope| {
            let serving: Vec<_> = (0..self.luns.len())
                .flat_map(|n| (0..self.options.servers).map(move |s| (n, s)))
                .map(|(n, s)| {
                    let seed = rng.u64(..);
                    let servers_stop = &servers_stop;
                    scope.spawn(move || self.serve(n, seed, servers_stop, cycle, s))
                })
                .collect();
            let events = scope.spawn(|| self.events(&stop));
            let cpus: Vec<_> = (0..self.options.cpus)
                .map(|cpu| {
                    let (class, stop) = (&class, &stop);
                    scope.spawn(move || {
                        storsim::cpu::enter_thread();
                        self.cpu(cpu, class, stop)
                    })
                })
                .collect();
            // LUNs removed and re-created while the CPUs work.
            let mut round = 1;
            while self.options.ios - self.budget.load(Ordering::Relaxed) < target
                && self.failures.list().is_empty()
            {
                std::thread::sleep(Duration::from_millis(rng.u64(20..120)));
                let done = self.options.ios - self.budget.load(Ordering::Relaxed);
                progress.update(done, || format!("adapter cycle {}", cycle + 1));
                if rng.u32(0..4) == 0 {
                    let n = rng.usize(..self.luns.len());
                    let lun = &self.luns[n];
                    let _changing = lun.changing.write().unwrap_or_else(|p| p.into_inner());
                    lun.generation.fetch_add(1, Ordering::AcqRel);
                    let number = lun.number.load(Ordering::Relaxed);
                    let removed = admin.remove_lun(number);
                    self.failures.expect(removed.is_ok(), || {
                        format!("LUN_REMOVE {number}: {removed:?}")
                    });
                    if !self.create(&admin, n, lun, cycle, round) {
                        break;
                    }
                    class.enumerate();
                    round += 1;
                    self.recreations.fetch_add(1, Ordering::Relaxed);
                }
                // Storport's reset ladder, as after a timeout: surely when a server sits on a
                // WRITE waiting for one.
                if self.stalled.load(Ordering::Relaxed) > 0 || rng.u32(0..8) == 0 {
                    self.reset(&mut rng);
                }
                if rng.u32(0..16) == 0 {
                    self.kernel.power_cycle_adapter();
                    self.power_cycles.fetch_add(1, Ordering::Relaxed);
                }
            }
            // The adapter goes with I/O in flight.
            for lun in &self.luns {
                lun.generation.fetch_add(1, Ordering::AcqRel);
            }
            servers_stop.store(true, Ordering::Relaxed);
            if rng.bool() {
                self.kernel.surprise_remove_adapter();
            }
            self.kernel.remove_adapter(|| {});
            stop.store(true, Ordering::Relaxed);
            for cpu in cpus {
                let _ = cpu.join();
            }
            let _ = events.join();
            for server in serving {
                let _ = server.join();
            }
        });
        admin.close();
    }

    /// A LUN reset of a random LUN (SRB_FUNCTION_RESET_LOGICAL_UNIT) or, one time in three, a
    /// bus reset (HwResetBus), inside an odd reset epoch.
    fn reset(&self, rng: &mut fastrand::Rng) {
        self.reset_epoch.fetch_add(1, Ordering::AcqRel);
        if rng.u32(0..3) == 0 {
            self.kernel.reset_bus();
            self.bus_resets.fetch_add(1, Ordering::Relaxed);
        } else {
            let lun = &self.luns[rng.usize(..self.luns.len())];
            self.kernel
                .reset_lun(0, lun.number.load(Ordering::Relaxed) as u8);
            self.lun_resets.fetch_add(1, Ordering::Relaxed);
        }
        self.reset_epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// LUN_CREATE for slot `n` (a new store, zeros) and the generation made even again.
    fn create(&self, admin: &Channel, n: usize, lun: &Lun, cycle: u32, round: u64) -> bool {
        *lun.store.lock().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(Mutex::new(MemoryDisk::new(BLOCK, LUN_BLOCKS)));
        match admin.create_lun(spec(n, cycle, round)) {
            Ok(number) => {
                lun.number.store(number, Ordering::Relaxed);
                lun.generation.fetch_add(1, Ordering::AcqRel);
                true
            }
            Err(status) => {
                self.failures
                    .expect(false, || format!("LUN_CREATE: {status:#x}"));
                false
            }
        }
    }

    /// One server slot of LUN slot `n` for the cycle: it serves each LUN created in the slot.
    fn serve(&self, n: usize, seed: u64, stop: &AtomicBool, cycle: u32, slot: usize) {
        let lun = &self.luns[n];
        let mut served = u64::MAX;
        while !stop.load(Ordering::Relaxed) {
            let generation = lun.generation.load(Ordering::Acquire);
            if generation % 2 == 1 || generation == served {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            served = generation;
            let store = lun.store.lock().unwrap_or_else(|p| p.into_inner()).clone();
            ServerPlan {
                kernel: &self.kernel,
                lun: lun.number.load(Ordering::Relaxed),
                store: &store,
                seed: seed ^ generation ^ u64::from(cycle) << 40 ^ (slot as u64) << 48,
                pids: &self.pids,
                death_rate: 0.01,
                counts: &self.servers,
                failures: &self.failures,
                stop,
                generation,
                current: &lun.generation,
                changing: &lun.changing,
                reset_epoch: &self.reset_epoch,
                stalled: &self.stalled,
            }
            .run();
        }
    }

    /// FIRE now and then, and a WAIT that follows the cursor: the event channel beside.
    fn events(&self, stop: &AtomicBool) {
        let channel = Channel::open(&self.kernel, 2);
        let mut pending = channel.wait(CURSOR_NOW, 32);
        let mut last = 0u64;
        while !stop.load(Ordering::Relaxed) {
            if channel.fire(7, last).is_ok() {
                self.fired.fetch_add(1, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(1));
            let Some(outcome) = pending.wait(Duration::from_millis(50)) else {
                continue;
            };
            let Ok(delivery) = channel.delivery(&outcome) else {
                break;
            };
            for event in &delivery.events {
                self.failures.expect(event.seq > last, || {
                    format!("event {} after {last}: out of order", event.seq)
                });
                last = event.seq;
            }
            pending = channel.wait(delivery.reply.cursor, 32);
        }
        channel.cancel(&pending);
        let _ = pending.wait(Duration::from_secs(10));
        channel.close();
    }

    /// One CPU: random SRBs to random LUNs, each checked against the CPU's regions.
    fn cpu(&self, cpu: usize, class: &DiskClass, stop: &AtomicBool) {
        let per_lun = LUN_BLOCKS / self.options.cpus as u64;
        let first = cpu as u64 * per_lun;
        let mut rng = fastrand::Rng::with_seed(self.options.seed ^ (cpu as u64) << 16);
        // Per LUN slot: the region, and the generation it describes.
        let mut regions: Vec<(Region, u64)> = self
            .luns
            .iter()
            .map(|lun| {
                (
                    Region::new(first, per_lun),
                    lun.generation.load(Ordering::Acquire),
                )
            })
            .collect();
        // Writes and unmaps that overlapped a LUN change, to apply to the next one's region.
        let mut maybe: Vec<Vec<(u64, u32, Option<Stamp>)>> = vec![Vec::new(); self.luns.len()];
        let mut seq = 0u32;
        let mut follow = None;
        while !stop.load(Ordering::Relaxed) {
            if self
                .budget
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
                .is_err()
            {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            // After a WRITE a reset ended, what the class driver's retry and the application
            // do next: write the blocks again, then, a little later, read them. A late WRITE
            // from the server the reset took it from must not land in between.
            let (n, range, choice) = match follow.take() {
                Some(FollowUp::Rewrite(n, range)) => (n, Some(range), 9),
                Some(FollowUp::Reread(n, range)) => {
                    std::thread::sleep(Duration::from_millis(10));
                    (n, Some(range), 0)
                }
                None => (rng.usize(..self.luns.len()), None, rng.u32(0..20)),
            };
            let lun = &self.luns[n];
            let before = lun.generation.load(Ordering::Acquire);
            let resets_before = self.reset_epoch.load(Ordering::Acquire);
            let (region, described) = &mut regions[n];
            if before.is_multiple_of(2) && before != *described {
                // A LUN created since: zeros, but for what may have reached it meanwhile.
                *region = Region::new(first, per_lun);
                for (lba, count, stamp) in maybe[n].drain(..) {
                    match stamp {
                        Some(stamp) => region.wrote(lba, count, stamp, false),
                        None => region.unmapped(lba, count),
                    }
                }
                *described = before;
            }
            let number = lun.number.load(Ordering::Relaxed) as u8;
            let (lba, blocks) = range.unwrap_or_else(|| {
                let blocks = rng.u32(1..=MAX_BLOCKS).min(per_lun as u32);
                (first + rng.u64(0..=per_lun - u64::from(blocks)), blocks)
            });
            let transfer = Transfer {
                lba,
                blocks,
                fua: rng.u32(0..8) == 0,
            };
            let len = blocks * BLOCK;
            seq += 1;
            let stamp = Stamp {
                cpu: cpu as u16,
                seq,
            };
            let done = match choice {
                0..=8 => {
                    self.io.reads.fetch_add(1, Ordering::Relaxed);
                    class.command(number, &Command::Read(transfer), len, None)
                }
                9..=17 => {
                    self.io.writes.fetch_add(1, Ordering::Relaxed);
                    let data: Vec<u8> = (lba..lba + u64::from(blocks))
                        .flat_map(|at| model::block(at, stamp))
                        .collect();
                    class.command(number, &Command::Write(transfer), len, Some(&data))
                }
                18 => {
                    self.io.flushes.fetch_add(1, Ordering::Relaxed);
                    class.command(
                        number,
                        &Command::SynchronizeCache { lba: 0, blocks: 0 },
                        0,
                        None,
                    )
                }
                _ => {
                    self.io.unmaps.fetch_add(1, Ordering::Relaxed);
                    let mut list = [0u8; 24];
                    let size =
                        revcall_scsi::write_unmap_list(&[(lba, blocks)], &mut list).unwrap_or(0);
                    class.command(
                        number,
                        &Command::Unmap {
                            param_len: size as u16,
                        },
                        size as u32,
                        Some(&list[..size]),
                    )
                }
            };
            self.io.ios.fetch_add(1, Ordering::Relaxed);
            let after = lun.generation.load(Ordering::Acquire);
            let steady = before == after && before.is_multiple_of(2);
            let resets_after = self.reset_epoch.load(Ordering::Acquire);
            let reset = resets_before != resets_after || !resets_before.is_multiple_of(2);
            let Some(done) = done else {
                self.failures.expect(stop.load(Ordering::Relaxed), || {
                    format!("CPU {cpu}: an SRB to LUN {number} never completed")
                });
                continue;
            };
            let good = done.srb_status == SRB_STATUS_SUCCESS;
            if !good {
                self.io.failed.fetch_add(1, Ordering::Relaxed);
                let medium = done.srb_status == SRB_STATUS_ERROR
                    && done.sense
                        == Some(Sense {
                            key: revcall_scsi::SenseKey::MediumError,
                            asc: 0x11,
                            ascq: 0,
                        });
                let gone = done.srb_status == SRB_STATUS_NO_DEVICE && !steady;
                let was_reset =
                    reset && [SRB_STATUS_ABORTED, SRB_STATUS_BUS_RESET].contains(&done.srb_status);
                if was_reset && (9..=17).contains(&choice) && range.is_none() {
                    follow = Some(FollowUp::Rewrite(n, (lba, blocks)));
                }
                self.failures.expect(
                    medium || gone || was_reset || stop.load(Ordering::Relaxed),
                    || {
                        format!(
                            "CPU {cpu}: SRB to LUN {number} ended {:#x} {:?} with the LUN steady",
                            done.srb_status, done.sense
                        )
                    },
                );
            }
            let region = &mut regions[n].0;
            match choice {
                0..=8 if good && steady => match region.read(lba, &done.data) {
                    Ok(()) => {
                        self.io
                            .verified
                            .fetch_add(done.data.len() as u64, Ordering::Relaxed);
                    }
                    Err(wrong) => {
                        self.io.wrong.fetch_add(1, Ordering::Relaxed);
                        self.failures.expect(false, || {
                            format!(
                                "CPU {cpu}: READ of LUN {number} block {}: found {:?}, allowed {}",
                                wrong.lba, wrong.found, wrong.allowed
                            )
                        });
                    }
                },
                9..=17 if steady => {
                    region.wrote(lba, blocks, stamp, good);
                    if good && range.is_some() {
                        follow = Some(FollowUp::Reread(n, (lba, blocks)));
                    }
                }
                9..=17 => maybe[n].push((lba, blocks, Some(stamp))),
                19 if steady => region.unmapped(lba, blocks),
                19 => maybe[n].push((lba, blocks, None)),
                _ => {}
            }
        }
    }
}
