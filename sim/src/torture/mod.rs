//! `storsim torture`: N emulated CPUs hammer one adapter at once — WAITs on several handles and
//! processes, FIRE, DISCOVER, STATS, CancelIoEx, handle close, process exit, malformed
//! requests — while removals and surprise removals (each followed by a new adapter instance)
//! happen in the middle of it, with delay injection on.
//!
//! Checked continuously by the workers and at the end: every IRP completed exactly once with a
//! status its path allows; every waiter's events strictly ordered with every gap reported as
//! `lost`; no two FIREs given one sequence number; no removal longer than the limit; no
//! verifier violation; no pool leak at unload; nothing outstanding.

mod checkpoint;
mod chronicle;
mod ledger;
mod report;
mod subscriber;
mod worker;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

pub use report::{Events, Races, Removals, TortureReport};

use ledger::DriverView;
use storsim::cpu;
use storsim::kernel::Kernel;
use storsim::machine::{Config, Label};
use storsim::port::PnpState;
use storsim::report::Summary;
use worker::{Tally, Worker};

use crate::progress::Progress;

/// What to run.
#[derive(Clone, Debug)]
pub struct TortureOptions {
    pub driver: PathBuf,
    pub cpus: usize,
    pub ops: u64,
    pub removals: u32,
    pub seed: u64,
    /// Probability of an injected delay at each emulated call.
    pub delay: f64,
    /// Probability that a fallible call fails (low-resources simulation), after the load.
    pub fail_rate: f64,
    pub rundown_limit: Duration,
    /// Show progress on stderr (a bar on a terminal, a line per 10% otherwise).
    pub progress: bool,
    /// The report is JSON (so is the one a bug check prints).
    pub json: bool,
    /// A kernel-mode client driver (revcall-client.sys) loaded above every adapter instance.
    pub client: Option<PathBuf>,
}

impl TortureOptions {
    /// The command line that runs exactly this.
    pub fn command(&self) -> String {
        let mut line = format!(
            "storsim torture {} --cpus {} --ops {} --removals {} --seed {} --delay {}",
            self.driver.display(),
            self.cpus,
            self.ops,
            self.removals,
            self.seed,
            self.delay
        );
        if self.fail_rate > 0.0 {
            line += &format!(" --fail-rate {}", self.fail_rate);
        }
        if let Some(client) = &self.client {
            line += &format!(" --client {}", client.display());
        }
        if self.rundown_limit != Duration::from_millis(2000) {
            line += &format!(" --rundown-limit-ms {}", self.rundown_limit.as_millis());
        }
        line
    }
}

/// The client operations the workers count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    Wait,
    Fire,
    Discover,
    Stats,
    Cancel,
    CancelForeign,
    Close,
    Exit,
    Flood,
    Lun,
    Malformed,
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Wait => "wait",
            Op::Fire => "fire",
            Op::Discover => "discover",
            Op::Stats => "stats",
            Op::Cancel => "cancel-io",
            Op::CancelForeign => "cancel-io-foreign",
            Op::Close => "close-handle",
            Op::Exit => "process-exit",
            Op::Flood => "flood",
            Op::Lun => "lun",
            Op::Malformed => "malformed",
        }
    }
}

/// What the CPUs share: progress, the failures they found, and the chronicle of cancels and
/// removals they judge completions by.
pub struct Shared {
    ops_done: AtomicU64,
    workers_done: AtomicUsize,
    failures: Mutex<Vec<String>>,
    failure_count: AtomicU64,
    fault_rate: f64,
    cpus: usize,
    chronicle: chronicle::Chronicle,
    /// Held shared by whatever makes an event (FIRE, DISCOVER), exclusively by a flood while it
    /// sends: the parked count then moves only by WAITs.
    events: RwLock<()>,
    /// Each CPU's view of what the driver counted, by adapter instance, as of its last
    /// checkpoint.
    views: Mutex<Vec<BTreeMap<u64, DriverView>>>,
    checkpoints: checkpoint::Checkpoints,
}

/// Failures kept verbatim (the count goes on).
const FAILURES_KEPT: usize = 50;

impl Shared {
    fn events_allowed(&self) -> RwLockReadGuard<'_, ()> {
        self.events.read().unwrap_or_else(|p| p.into_inner())
    }

    fn hold_events(&self) -> RwLockWriteGuard<'_, ()> {
        self.events.write().unwrap_or_else(|p| p.into_inner())
    }

    fn fail(&self, what: String) {
        if self.failure_count.fetch_add(1, Ordering::Relaxed) < FAILURES_KEPT as u64 {
            self.failures
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(what);
        }
    }
}

/// Runs the torture once.
pub fn run(options: &TortureOptions) -> TortureReport {
    let session = Kernel::boot(Config {
        seed: options.seed,
        delay_probability: options.delay,
        rundown_limit: options.rundown_limit,
        timeline: false,
        live: false,
        ..Config::default()
    });
    let kernel = session.kernel().clone();
    kernel.name_run(Label {
        driver: options.driver.display().to_string(),
        // A bug check ends the process with the run's summary: it names how to reproduce.
        scenario: format!("torture (reproduce: {})", options.command()),
        cpus: options.cpus,
        json: options.json,
    });
    let shared = Shared {
        ops_done: AtomicU64::new(0),
        workers_done: AtomicUsize::new(0),
        failures: Mutex::new(Vec::new()),
        failure_count: AtomicU64::new(0),
        fault_rate: options.fail_rate,
        cpus: options.cpus.max(1),
        chronicle: chronicle::Chronicle::new(options.cpus.max(1)),
        events: RwLock::new(()),
        views: Mutex::new(vec![BTreeMap::new(); options.cpus.max(1)]),
        checkpoints: checkpoint::Checkpoints::new(options.cpus.max(1)),
    };
    let started = Instant::now();
    let loaded = storsim::driver::load(&kernel, &options.driver)
        .and_then(|driver| Ok((driver, kernel.start_adapter()?)));
    let mut client = options.client.as_deref().map(subscriber::Subscriber::new);
    let (tallies, removals, reconciled, error) = match loaded {
        Err(error) => (Vec::new(), Removals::default(), 0, Some(error.to_string())),
        Ok((_driver, ())) => {
            kernel.machine().faults().set_rate(options.fail_rate);
            if let Some(client) = &mut client {
                client.attach(&kernel, &shared);
            }
            let (tallies, removals, reconciled) =
                hammer(&kernel, &shared, options, client.as_mut());
            kernel.unload();
            (tallies, removals, reconciled, None)
        }
    };
    let races = Races {
        foreign_cancels: tallies.iter().map(|t| t.foreign_cancels).sum(),
        cancels_during_dispatch: kernel
            .io()
            .counters()
            .cancels_during_dispatch
            .load(Ordering::Relaxed),
        floods_at_cap: tallies.iter().map(|t| t.floods_at_cap).sum(),
        stats_reconciled: reconciled,
    };
    let summary = kernel.summary(error, Vec::new());
    drop(session);
    let mut report = conclude(
        options,
        &shared,
        tallies,
        (removals, races),
        summary,
        started.elapsed(),
    );
    report.kernel_client = client.map(|client| client.tally);
    report
}

/// The workers and the removal cycles (each after a checkpoint), then a last checkpoint and the
/// final removal. Returns each CPU's tally, the removals, and how many checkpoints compared the
/// driver's counters.
fn hammer(
    kernel: &std::sync::Arc<Kernel>,
    shared: &Shared,
    options: &TortureOptions,
    mut client: Option<&mut subscriber::Subscriber<'_>>,
) -> (Vec<Tally>, Removals, u64) {
    let cpus = options.cpus.max(1);
    let progress = Progress::new(options.progress, options.ops, "torture", "ops");
    let mut reconciler = Reconciler::default();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..cpus)
            .map(|index| {
                let share = options.ops / cpus as u64
                    + u64::from((index as u64) < options.ops % cpus as u64);
                scope.spawn(move || {
                    cpu::enter_thread();
                    let mut worker = Worker::new(kernel, shared, index, options.seed);
                    // A panic (a storsim bug) must not leave the others at a checkpoint.
                    guarded(shared, index, || worker.run(share));
                    shared.workers_done.fetch_add(1, Ordering::Release);
                    // Checkpoints, the last one and the final removal happen meanwhile.
                    guarded(shared, index, || worker.idle());
                    guarded(shared, index, || worker.finish());
                    worker.tally
                })
            })
            .collect();
        let mut removals = cycles(
            kernel,
            shared,
            options,
            (&progress, cpus),
            &mut reconciler,
            client.as_deref_mut(),
        );
        // The checks at the end must not fail for want of memory.
        kernel.machine().faults().set_rate(0.0);
        if kernel.adapter_state() != PnpState::Removed {
            reconciler.checkpoint(kernel, shared, client.as_deref());
            remove(kernel, shared, &mut removals, false, || {});
            if let Some(client) = client {
                client.detach(kernel, shared);
            }
        }
        shared.checkpoints.end();
        let tallies = workers
            .into_iter()
            .map(|w| w.join().unwrap_or_default())
            .collect();
        progress.finish(format!(
            "done, failures {}",
            shared.failure_count.load(Ordering::Relaxed)
        ));
        (tallies, removals, reconciler.reconciled)
    })
}

/// The process the checkpoints' STATS come from.
const CHECK_PROCESS: u32 = 0x4348_4B00;

/// Compares the driver's STATS counters with what the clients saw, at checkpoints.
#[derive(Default)]
struct Reconciler {
    /// The checkpoints' own STATS requests, by adapter instance (the driver counts them too).
    own: BTreeMap<u64, DriverView>,
    /// Checkpoints whose comparison ran.
    reconciled: u64,
}

impl Reconciler {
    /// Stops every CPU, lets the adapter's timer and DPCs finish (they could still complete
    /// parked WAITs), and compares STATS of the current adapter instance with what every
    /// client saw of the requests it sent that instance.
    fn checkpoint(
        &mut self,
        kernel: &std::sync::Arc<Kernel>,
        shared: &Shared,
        client: Option<&subscriber::Subscriber<'_>>,
    ) {
        shared.checkpoints.take(
            || drain_adapter(kernel, shared),
            || self.compare(kernel, shared, client),
        );
    }

    fn compare(
        &mut self,
        kernel: &std::sync::Arc<Kernel>,
        shared: &Shared,
        client: Option<&subscriber::Subscriber<'_>>,
    ) {
        let instance = kernel.io().device_instance();
        // The kernel client's requests count too; when they cannot be known, nothing is
        // compared this time.
        let Some(theirs) = client.map_or(Some(DriverView::default()), |c| c.view()) else {
            return;
        };
        let own = self.own.entry(instance).or_default();
        let mut view = *own;
        view.merge(&theirs);
        for cpu in shared
            .views
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            if let Some(seen) = cpu.get(&instance) {
                view.merge(seen);
            }
        }
        let channel = crate::client::Channel::open(kernel, CHECK_PROCESS);
        let stats = revcall_client::channel::encode(&revcall_protocol::Request::Stats);
        match channel.send_raw(&stats, 256) {
            Ok(request) => {
                let outcome = request.wait(crate::client::PROMPT);
                own.saw(
                    ledger::Path::Stats,
                    outcome.as_ref().map_or(u32::MAX, |o| o.status),
                );
                match outcome.map(|o| revcall_client::channel::stats(o.status, &o.output)) {
                    Some(Ok(stats)) => {
                        self.reconciled += 1;
                        for (counter, driver, clients) in view.disagreements(&stats) {
                            shared.fail(format!(
                                "STATS of adapter instance {instance}: {counter} is {driver}, \
                                 but clients saw {clients}"
                            ));
                        }
                    }
                    other => shared.fail(format!("STATS at a checkpoint: {other:?}")),
                }
            }
            // The low-resources simulation refused the IRP: no comparison this time.
            Err(storport_abi::status::user::STATUS_INSUFFICIENT_RESOURCES)
                if shared.fault_rate > 0.0 => {}
            Err(status) => shared.fail(format!(
                "STATS at a checkpoint refused: {}",
                ledger::status_name(status)
            )),
        }
        channel.close();
    }
}

/// Waits until the adapter has no timer armed and no DPC queued or running, and no work item
/// is re-arming a kernel client's WAIT (with the CPUs stopped, it parks).
fn drain_adapter(kernel: &Kernel, shared: &Shared) {
    if !kernel.io().work().settle(crate::client::PROMPT) {
        shared.fail("the work items never went idle".into());
    }
    let dispatcher = kernel.port().dispatcher();
    let deadline = Instant::now() + crate::client::PROMPT;
    while dispatcher.pending() || !dispatcher.drain(Duration::from_millis(10)) {
        if Instant::now() > deadline {
            return shared.fail("the adapter's timer and DPCs never went idle".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Runs `step` of CPU `index`, turning a panic into a failure of the run.
fn guarded(shared: &Shared, index: usize, step: impl FnOnce()) {
    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(step)) {
        let what = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        shared.fail(format!("cpu {index}: storsim panicked: {what}"));
    }
}

/// The removal cycles, spread evenly over the run: removal or surprise removal, then PnP adds
/// a new adapter instance and starts it.
fn cycles(
    kernel: &std::sync::Arc<Kernel>,
    shared: &Shared,
    options: &TortureOptions,
    (progress, cpus): (&Progress, usize),
    reconciler: &mut Reconciler,
    mut client: Option<&mut subscriber::Subscriber<'_>>,
) -> Removals {
    let mut rng = fastrand::Rng::with_seed(options.seed ^ 0xC0FF_EE00);
    let mut removals = Removals {
        limit_ms: options.rundown_limit.as_millis() as u64,
        ..Removals::default()
    };
    let mut next = 0u32;
    loop {
        let done = shared.ops_done.load(Ordering::Relaxed);
        let finished = shared.workers_done.load(Ordering::Acquire) == cpus;
        progress.update(done, || {
            format!(
                "removals {next}/{}, failures {}",
                options.removals,
                shared.failure_count.load(Ordering::Relaxed)
            )
        });
        if next == options.removals && finished {
            return removals;
        }
        let due = (u64::from(next) + 1) * options.ops / (u64::from(options.removals) + 1);
        if next < options.removals && (done >= due || finished) {
            // The counters of this instance, exactly, while its CPUs are stopped.
            reconciler.checkpoint(kernel, shared, client.as_deref());
            // Half the cycles first take the adapter down without removing it: parked
            // requests must survive, a pending discovery must be re-armed.
            match rng.u8(0..4) {
                0 => {
                    kernel.power_cycle_adapter();
                    removals.power_cycles += 1;
                }
                1 => {
                    kernel.stop_adapter();
                    removals.stops += 1;
                    restart(kernel, shared, false);
                }
                _ => {}
            }
            let surprise = rng.bool();
            // A handle of this instance, for requests in the removal's window.
            let late = crate::client::Channel::open(kernel, LATE_PROCESS);
            remove(kernel, shared, &mut removals, surprise, || {
                late_requests(&late, shared, surprise);
            });
            late.close();
            if let Some(client) = client.as_deref_mut() {
                client.detach(kernel, shared);
            }
            restart(kernel, shared, true);
            if let Some(client) = client.as_deref_mut() {
                client.attach(kernel, shared);
            }
            next += 1;
            continue;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The emulated process whose WAITs are parked when each removal begins.
const SENTINEL_PROCESS: u32 = 0x5345_4E54;

/// WAITs parked as sentinels before each removal.
const SENTINELS: usize = 4;

/// One removal, with sentinel WAITs parked when it begins: nothing ever cancels them, so each
/// must have been completed by the time HwCompleteServiceIrp (or ScsiAdapterSurpriseRemoval)
/// returned — or be in the hands of another CPU's delivery that took it off the queue first,
/// which completes it promptly. Under load the workers' own cancels would otherwise complete
/// WAITs a removal left parked before the rundown wait noticed. `between` runs in the window
/// after the check.
fn remove(
    kernel: &std::sync::Arc<Kernel>,
    shared: &Shared,
    removals: &mut Removals,
    surprise: bool,
    between: impl FnOnce(),
) {
    let channel = crate::client::Channel::open(kernel, SENTINEL_PROCESS);
    let wait = revcall_client::channel::encode(&revcall_protocol::Request::Wait {
        cursor: revcall_protocol::CURSOR_NOW,
        max_events: 1,
    });
    // Sent last thing before the removal; an event may still complete one first. Refused
    // sends (low-resources simulation) are simply not sentinels.
    let sentinels: Vec<_> = (0..SENTINELS)
        .filter_map(|_| channel.send_raw(&wait, 64).ok())
        .collect();
    let parked: Vec<_> = sentinels
        .iter()
        .filter(|request| request.outcome().is_none())
        .collect();
    removals.remove(kernel, shared, surprise, || {
        for request in &parked {
            if request.wait(crate::client::PROMPT).is_none() {
                shared.fail(format!(
                    "WAIT #{} was parked when the removal began and no cancel was ever sent, \
                     yet it was still pending {} ms after HwCompleteServiceIrp returned",
                    request.id,
                    crate::client::PROMPT.as_millis()
                ));
                // So that the rundown can finish and the run go on to report it.
                kernel.cancel_io(channel.handle, Some(request.id));
            }
        }
        between();
    });
    channel.close();
}

/// The emulated process that sends requests into the removal's window.
const LATE_PROCESS: u32 = 0x4C41_5445;

/// Requests sent after HwCompleteServiceIrp and before Storport's rundown wait (the window
/// docs/STORPORT-NOTES.md §6.7 describes). They reach the miniport, which is closed and must
/// refuse each at once with STATUS_DEVICE_REMOVED, never park it; after a surprise removal the
/// rundown is already closed and Storport itself answers STATUS_DELETE_PENDING.
fn late_requests(late: &crate::client::Channel, shared: &Shared, surprise: bool) {
    use revcall_protocol::Request as Wire;
    use storport_abi::status::Named;
    use storport_abi::status::user::{
        STATUS_DELETE_PENDING, STATUS_DEVICE_REMOVED, STATUS_INSUFFICIENT_RESOURCES,
    };
    let expected = if surprise {
        STATUS_DELETE_PENDING
    } else {
        STATUS_DEVICE_REMOVED
    };
    let requests = [
        Wire::Wait {
            cursor: revcall_protocol::CURSOR_NOW,
            max_events: 1,
        },
        Wire::Fire {
            code: u32::from(u16::MAX),
            value: 0,
        },
        Wire::Discover { delay_ms: 1 },
    ];
    for request in requests {
        let bytes = revcall_client::channel::encode(&request);
        let sent = late.send_raw(&bytes, 256);
        let status = match sent {
            Ok(pending) => pending.wait(Duration::from_secs(2)).map(|o| o.status),
            // The low-resources simulation may refuse the IRP itself.
            Err(STATUS_INSUFFICIENT_RESOURCES) if shared.fault_rate > 0.0 => continue,
            Err(status) => Some(status),
        };
        if status != Some(expected) {
            let got = status.map_or("still pending".to_owned(), |s| Named(s).to_string());
            shared.fail(format!(
                "{:?} in the removal window: {got}, not {}",
                request.opcode(),
                Named(expected)
            ));
        }
    }
}

/// Starts the adapter again: after a removal PnP first adds a new adapter instance (`added`),
/// after a PnP stop the same one restarts. A start refused for want of memory (low-resources
/// simulation) is retried, as PnP would on the next enumeration.
fn restart(kernel: &Kernel, shared: &Shared, added: bool) {
    if added && let Err(error) = kernel.add_adapter() {
        return shared.fail(format!("adding a new adapter instance: {error}"));
    }
    for _ in 0..1000 {
        match kernel.start_adapter() {
            Ok(()) => return,
            Err(storsim::port::StartError::NoMemory) if shared.fault_rate > 0.0 => continue,
            Err(error) => return shared.fail(format!("starting the adapter: {error}")),
        }
    }
    shared.fail("the adapter never started again (1000 attempts)".into());
}

/// The end-of-run checks and the report.
fn conclude(
    options: &TortureOptions,
    shared: &Shared,
    tallies: Vec<Tally>,
    (removals, races): (Removals, Races),
    summary: Summary,
    elapsed: Duration,
) -> TortureReport {
    let mut ops = BTreeMap::new();
    let mut statuses = BTreeMap::new();
    let mut events = Events::default();
    let mut seqs = HashSet::new();
    for tally in &tallies {
        for (op, n) in &tally.ops {
            *ops.entry(op.name().to_owned()).or_insert(0) += n;
        }
        for (status, n) in &tally.statuses {
            *statuses.entry(ledger::status_name(*status)).or_insert(0) += n;
        }
        events.fired += tally.fired;
        events.delivered += tally.delivered;
        events.lost += tally.lost;
        events.lost_at_start += tally.lost_at_start;
        for seq in &tally.fire_seqs {
            if !seqs.insert(*seq) {
                shared.fail(format!(
                    "two FIREs were given seq {} on adapter instance {}",
                    seq.1, seq.0
                ));
            }
        }
    }
    if summary.error.is_none() {
        if summary.irps.outstanding != Some(0) {
            shared.fail(format!(
                "{:?} IRPs still outstanding at unload",
                summary.irps.outstanding
            ));
        }
        if summary.irps.issued != summary.irps.completed {
            shared.fail(format!(
                "{} IRPs issued but {} completed",
                summary.irps.issued, summary.irps.completed
            ));
        }
        if removals.max_ms > removals.limit_ms {
            shared.fail(format!(
                "a removal took {} ms, over the {} ms limit",
                removals.max_ms, removals.limit_ms
            ));
        }
    }
    let failures = shared
        .failures
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let failures_total = shared.failure_count.load(Ordering::Relaxed);
    TortureReport {
        driver: options.driver.display().to_string(),
        command: options.command(),
        seed: options.seed,
        cpus: options.cpus,
        ops_requested: options.ops,
        ops_total: ops.values().sum(),
        ops,
        completions: statuses,
        irps: summary.irps,
        events,
        removals,
        races,
        faults_injected: summary.faults_injected,
        pool_outstanding: summary.pool_outstanding,
        delays_injected: summary.delays_injected,
        passed: summary.passed && failures_total == 0,
        error: summary.error,
        violations: summary.violations,
        failures,
        failures_total,
        elapsed_s: elapsed.as_secs_f64(),
        reproduce: None,
        kernel_client: None,
    }
}

/// A failing run again with fewer operations, then fewer CPUs (same seed and the rest),
/// halving while it still fails: the smallest failing command found ([`crate::shrink`]).
pub fn shrink(failing: &TortureOptions, budget: Duration) -> TortureOptions {
    let quiet = TortureOptions {
        progress: false,
        ..failing.clone()
    };
    let best = crate::shrink::shrink(
        &quiet,
        &[
            |o| {
                (o.ops > 1000).then(|| TortureOptions {
                    ops: o.ops / 2,
                    removals: o.removals.div_ceil(2),
                    ..o.clone()
                })
            },
            |o| {
                (o.cpus > 1).then(|| TortureOptions {
                    cpus: o.cpus / 2,
                    ..o.clone()
                })
            },
        ],
        |o| !run(o).passed,
        budget,
    );
    TortureOptions {
        progress: failing.progress,
        ..best
    }
}
