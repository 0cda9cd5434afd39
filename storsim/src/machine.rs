//! The machine under the I/O manager and the port driver: configuration, special pool, fault
//! injection, the verifier's report list, the timeline, delay injection, and the two things
//! every layer above does to driver code — call into it ([`Machine::call_driver`]) and take
//! spin locks with it ([`Machine::acquire_spin_lock`]).
//!
//! It knows nothing of IRPs or adapters: [`crate::io`] and [`crate::port`] sit on it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::cpu::{self, DISPATCH_LEVEL};
use crate::events::Events;
use crate::faults::{FaultPlan, Faults};
use crate::pool::{Limits, Owner, Pool, SpecialPool};
use crate::verifier::locks::{self, CANCEL_SPIN_LOCK, LockApi, LockId, LockOrder, STARTIO_LOCK};
use crate::verifier::{self, BugCheck, Code, Verifier};

/// How long a thread that waits for another CPU's completion spins before it sleeps.
pub const SPIN_BEFORE_SLEEP: Duration = Duration::from_micros(5);

/// Spins until `done` holds, for at most [`SPIN_BEFORE_SLEEP`], yielding the core between
/// rounds (with more emulated CPUs than cores, the thread it waits for may need this one);
/// whether it does. A completion
/// from another CPU usually comes within microseconds, and a futex sleep and wake cost both
/// threads more than that (a context switch each side, and a syscall for the waker); a thread
/// that spins instead is still running when the completion comes, so the waker's unpark or
/// notify finds nobody asleep.
pub fn spin_until(mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        for _ in 0..64 {
            if done() {
                return true;
            }
            std::hint::spin_loop();
        }
        std::thread::yield_now();
        if start.elapsed() > SPIN_BEFORE_SLEEP {
            return done();
        }
    }
}

/// What a run is allowed and how hard it is pushed.
#[derive(Clone, Debug)]
pub struct Config {
    /// Seeds delay injection and scenario randomness.
    pub seed: u64,
    /// Probability of a random delay at each emulated call (0 disables delay injection).
    pub delay_probability: f64,
    /// Longest wait for the removal rundown before calling it a hang.
    pub rundown_limit: Duration,
    /// Longest a cancelled IRP may stay uncompleted (0xC4/0x135).
    pub cancel_limit: Duration,
    /// One second of an SRB's `TimeOutValue` (Storport times SRBs in seconds; storsim
    /// compresses time, so disk.sys's 10 s timeout lasts 10 × this before the reset ladder).
    pub srb_second: Duration,
    /// Registry values under the service's `Parameters\Device` key (REG_DWORD).
    pub registry: HashMap<String, u32>,
    /// Keep a timeline of what happened (off for torture and benchmarks).
    pub timeline: bool,
    /// Print the timeline as it happens.
    pub live: bool,
    /// Low-resources simulation: which fallible calls fail.
    pub faults: FaultPlan,
    /// Which freed pool blocks stay no-access in the quarantine.
    pub special_pool: SpecialPool,
    /// Count the driver's payload copies ([`crate::port::PortCounters::payload_copies`]).
    /// Telling a payload copy from another takes the pool's lock at each bulk `memcpy`, a
    /// cost real Windows does not have: a throughput run that does not read the count turns
    /// it off.
    pub count_copies: bool,
    /// Mark every output byte of a METHOD_BUFFERED SystemBuffer past the input, and report
    /// the marked bytes a completion hands back as kernel memory disclosed. The marking writes
    /// the whole output of every IRP (up to 64 KiB for a FETCH's payload room), a cost Windows
    /// does not have: a throughput run whose floor sends no IRP turns it off.
    pub disclosure_check: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            seed: 1,
            delay_probability: 0.02,
            rundown_limit: Duration::from_secs(5),
            cancel_limit: Duration::from_secs(2),
            srb_second: Duration::from_millis(10),
            registry: HashMap::new(),
            timeline: true,
            live: false,
            faults: FaultPlan::default(),
            special_pool: SpecialPool::Everything,
            count_copies: true,
            disclosure_check: true,
        }
    }
}

/// What the run is, for its report.
#[derive(Clone, Debug, Default)]
pub struct Label {
    pub driver: String,
    pub scenario: String,
    pub cpus: usize,
    pub json: bool,
}

/// One line of the run's timeline.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Moment {
    /// Milliseconds since boot.
    pub ms: f64,
    /// The emulated CPU it happened on (`u32::MAX`: a host thread that is none of them, such
    /// as a test's server thread).
    pub cpu: u32,
    pub what: String,
}

impl Moment {
    /// Where it happened, as the timeline shows it: `cpu0`, or `host` off the emulated CPUs.
    pub fn place(&self) -> String {
        match self.cpu {
            u32::MAX => "host".into(),
            cpu => format!("cpu{cpu}"),
        }
    }
}

/// Which loaded driver the code running on this thread belongs to: the miniport (revcall.sys,
/// a fixture) or a driver loaded above it (a kernel-mode caller). Pool the code allocates is
/// accounted to it, and checked at its unload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Running {
    Miniport,
    Upper,
}

thread_local! {
    static RUNNING: std::cell::Cell<Running> = const { std::cell::Cell::new(Running::Miniport) };
}

impl Running {
    /// The driver on this thread now.
    pub fn now() -> Self {
        RUNNING.get()
    }

    /// Runs `f` as code of `self` (storsim calling into that driver), then restores.
    pub fn enter<R>(self, f: impl FnOnce() -> R) -> R {
        let before = RUNNING.replace(self);
        let result = f();
        RUNNING.set(before);
        result
    }

    /// Who owns the pool this driver allocates.
    pub fn pool_owner(self) -> Owner {
        match self {
            Running::Miniport => Owner::Driver,
            Running::Upper => Owner::UpperDriver,
        }
    }
}

/// What a bug check prints before the process ends (installed by the kernel, which knows the
/// layers above this one).
pub type Ending = Box<dyn Fn(&BugCheck) + Send + Sync>;

/// The machine's shared services.
pub struct Machine {
    config: Config,
    verifier: Verifier,
    pool: Pool,
    events: Events,
    locks: LockOrder,
    faults: Faults,
    /// The words of the kernel's own spin locks, indexed by their [`LockId`].
    kernel_locks: [AtomicUsize; 3],
    label: Mutex<Label>,
    /// Distinguishes sessions, so per-thread state (the delay RNG) restarts with each one.
    session: u64,
    booted: Instant,
    timeline: Mutex<Vec<Moment>>,
    delays: AtomicU64,
    ending: OnceLock<Ending>,
}

impl Machine {
    pub fn new(config: Config, session: u64) -> Self {
        let special_pool = config.special_pool;
        Self {
            faults: Faults::new(config.faults, config.seed),
            config,
            verifier: Verifier::default(),
            pool: Pool::with_limits(Limits::default(), special_pool),
            events: Events::default(),
            locks: LockOrder::default(),
            kernel_locks: Default::default(),
            label: Mutex::new(Label::default()),
            session,
            booted: Instant::now(),
            timeline: Mutex::new(Vec::new()),
            delays: AtomicU64::new(0),
            ending: OnceLock::new(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The KEVENTs drivers set and wait on.
    pub fn events(&self) -> &Events {
        &self.events
    }

    pub fn locks(&self) -> &LockOrder {
        &self.locks
    }

    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// Sets what a bug check prints (once per machine).
    pub fn set_ending(&self, ending: Ending) {
        let _ = self.ending.set(ending);
    }

    /// Names the run for its report.
    pub fn name_run(&self, label: Label) {
        *self.label.lock().unwrap_or_else(|p| p.into_inner()) = label;
    }

    pub fn label(&self) -> Label {
        self.label.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records a violation; the run fails but goes on.
    pub fn report(&self, bug: BugCheck) {
        self.note(format!(
            "VIOLATION 0x{:X}/{:#x}: {}",
            bug.code, bug.params[0], bug.what
        ));
        self.verifier.report(bug);
    }

    /// Adds a line to the timeline.
    pub fn note(&self, what: impl Into<String>) {
        if !self.config.timeline {
            return;
        }
        let moment = Moment {
            ms: self.booted.elapsed().as_secs_f64() * 1e3,
            cpu: cpu::current_cpu(),
            what: what.into(),
        };
        if self.config.live {
            println!(
                "{:>9.3} ms  {:<5} {}",
                moment.ms,
                moment.place(),
                moment.what
            );
        }
        self.timeline
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(moment);
    }

    pub fn timeline(&self) -> Vec<Moment> {
        self.timeline
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Time since boot (the emulated clocks count from here).
    pub fn uptime(&self) -> Duration {
        self.booted.elapsed()
    }

    /// Number of delays injected so far.
    pub fn delays_injected(&self) -> u64 {
        self.delays.load(Ordering::Relaxed)
    }

    /// Which session this machine is (never 0).
    pub fn session(&self) -> u64 {
        self.session
    }

    /// Seeded delay injection: at emulated calls and driver-callback boundaries, sometimes
    /// give the CPU away so other emulated CPUs run inside the window (kernel synchronization
    /// delay fuzzing).
    pub fn maybe_delay(&self) {
        if self.config.delay_probability <= 0.0 {
            return;
        }
        let roll = RNG.with(|rng| {
            let mut rng = rng.borrow_mut();
            if rng
                .as_ref()
                .is_none_or(|(session, _)| *session != self.session)
            {
                let seed = self.config.seed ^ (u64::from(cpu::current_cpu()) << 32);
                *rng = Some((self.session, fastrand::Rng::with_seed(seed)));
            }
            let (_, rng) = rng.as_mut().expect("seeded just above");
            (rng.f64(), rng.u32(0..4))
        });
        if roll.0 < self.config.delay_probability {
            self.delays.fetch_add(1, Ordering::Relaxed);
            if roll.1 == 0 {
                std::thread::sleep(Duration::from_micros(50));
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// Calls into the driver: `name` is the callback, `irql` the level it is called at.
    ///
    /// Checks what every callback must honour on return: the same IRQL (0xC9/0x05) and no spin
    /// lock still held (DDI QueuedSpinLock / SpinLock rules). A violation is reported and the
    /// state repaired, so the run goes on and finds the next one.
    pub fn call_driver<R>(&self, name: &'static str, irql: u8, call: impl FnOnce() -> R) -> R {
        let _call = verifier::enter(name);
        let previous = cpu::irql();
        cpu::set_irql(irql);
        let held = locks::held_count();
        self.maybe_delay();
        let result = call();
        let after = cpu::irql();
        if after != irql {
            self.report(BugCheck::new(
                Code::DriverVerifierIomanagerViolation,
                [0x05, 0, u64::from(irql), u64::from(after)],
                format!("{name} was called at IRQL {irql} and returned at IRQL {after}"),
            ));
        }
        self.release_left_held(held, |lock, what| {
            BugCheck::new(
                Code::DriverVerifierDetectedViolation,
                [0x0004_0006, lock as u64, 0, 0],
                format!(
                    "{name} returned still holding {what} {lock:#x} (QueuedSpinLock / SpinLock rule)"
                ),
            )
        });
        self.maybe_delay();
        cpu::set_irql(previous);
        result
    }

    /// Reports and frees every lock this thread took beyond the first `keep` (a callback
    /// returned holding them), so other CPUs do not spin on them forever.
    pub fn release_left_held(
        &self,
        keep: usize,
        report: impl Fn(LockId, &'static str) -> BugCheck,
    ) {
        for (lock, what) in locks::take_held_beyond(keep) {
            self.report(report(lock, what));
            match self.kernel_lock(lock) {
                Some(word) => word.store(0, Ordering::Release),
                None => {
                    // SAFETY: `lock` is not a kernel lock id, so it is the address of a
                    // KSPIN_LOCK word the driver passed to an acquire routine that storsim
                    // completed on this thread (the held list records nothing else): an
                    // aligned, pointer-sized word in driver memory still in use as a lock.
                    let word = unsafe { &*(lock as *const AtomicUsize) };
                    word.store(0, Ordering::Release);
                }
            }
        }
    }

    /// The word of one of the kernel's own spin locks (the cancel spin lock, Storport's
    /// StartIo lock); `None` for a driver lock.
    pub fn kernel_lock(&self, lock: LockId) -> Option<&AtomicUsize> {
        match lock {
            CANCEL_SPIN_LOCK | STARTIO_LOCK => Some(&self.kernel_locks[lock]),
            _ => None,
        }
    }

    /// Spins on a lock word as KeAcquireSpinLock does; returns the old IRQL.
    pub fn acquire_spin_lock(
        &self,
        word: &AtomicUsize,
        id: LockId,
        api: LockApi,
        name: &'static str,
    ) -> u8 {
        let old = cpu::irql();
        if old > DISPATCH_LEVEL {
            self.report(BugCheck::new(
                Code::DriverVerifierDetectedViolation,
                [0x42, id as u64, u64::from(old), 0],
                format!("{name} acquired at IRQL {old} (above DISPATCH_LEVEL)"),
            ));
        }
        match self.locks.before_acquire(id, api, name) {
            Ok(report) => {
                if let Some(report) = report {
                    self.report(report);
                }
            }
            Err(locks::Refused::Recursive(report)) => {
                self.report(report);
                return old;
            }
        }
        cpu::set_irql(DISPATCH_LEVEL.max(old));
        if !locks::spin_acquire(word, locks::owner_tag()) {
            self.stop(BugCheck::new(
                Code::DriverVerifierDetectedViolation,
                [0x1001, id as u64, 0, 0],
                format!("deadlock: spun on {name} for {:?}", locks::SPIN_LIMIT),
            ));
        }
        locks::push_held(id, name);
        old
    }

    /// Releases a lock word and lowers to `irql`.
    pub fn release_spin_lock(&self, word: &AtomicUsize, id: LockId, name: &'static str, irql: u8) {
        match locks::pop_held(id) {
            Ok(()) => {}
            Err(None) => {
                return self.report(BugCheck::new(
                    Code::DriverVerifierDetectedViolation,
                    [0x1007, id as u64, 0, 0],
                    format!("{name} released without being acquired by this thread"),
                ));
            }
            Err(Some(report)) => self.report(report),
        }
        word.store(0, Ordering::Release);
        cpu::set_irql(irql);
    }

    /// Takes one of the kernel's own spin locks (Storport's, the I/O manager's).
    pub fn acquire_kernel_lock(&self, id: LockId, api: LockApi, name: &'static str) -> u8 {
        let word = self.kernel_lock(id).expect("a kernel lock id");
        self.acquire_spin_lock(word, id, api, name)
    }

    /// Releases one of the kernel's own spin locks.
    pub fn release_kernel_lock(&self, id: LockId, name: &'static str, irql: u8) {
        let word = self.kernel_lock(id).expect("a kernel lock id");
        self.release_spin_lock(word, id, name, irql);
    }

    /// Ends the run the way a bug check ends Windows: report, print the summary, exit.
    pub fn stop(&self, bug: BugCheck) -> ! {
        use std::io::Write;
        static STOPPING: AtomicBool = AtomicBool::new(false);
        if STOPPING.swap(true, Ordering::AcqRel) {
            // Another CPU is already reporting a bug check; this one stops here, as a halted
            // machine's other processors do.
            loop {
                std::thread::park();
            }
        }
        self.report(bug.clone());
        match self.ending.get() {
            Some(ending) => ending(&bug),
            None => eprintln!("{bug}"),
        }
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        // Possibly inside the fault handler: end without atexit handlers or destructors.
        // SAFETY: _exit is async-signal-safe and takes no pointers.
        unsafe { libc::_exit(1) }
    }
}

thread_local! {
    static RNG: RefCell<Option<(u64, fastrand::Rng)>> = const { RefCell::new(None) };
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::{Config, Machine};
    use crate::cpu::{self, DISPATCH_LEVEL, PASSIVE_LEVEL};
    use crate::verifier::locks::LockApi;

    fn machine() -> Machine {
        Machine::new(
            Config {
                timeline: false,
                delay_probability: 0.0,
                ..Config::default()
            },
            0,
        )
    }

    fn reports(machine: &Machine) -> Vec<(u32, u64)> {
        machine.verifier().codes()
    }

    #[test]
    fn a_callback_must_return_at_the_irql_it_was_called_at() {
        std::thread::spawn(|| {
            let machine = machine();
            let value = machine.call_driver("HwTimer", DISPATCH_LEVEL, || {
                assert_eq!(cpu::irql(), DISPATCH_LEVEL);
                cpu::set_irql(PASSIVE_LEVEL);
                7
            });
            assert_eq!(value, 7);
            assert_eq!(reports(&machine), [(0xC9, 0x05)]);
            assert_eq!(cpu::irql(), PASSIVE_LEVEL, "the caller's IRQL is restored");
        })
        .join()
        .expect("the checks hold");
    }

    #[test]
    fn a_lock_left_held_by_a_callback_is_reported_and_freed() {
        std::thread::spawn(|| {
            let machine = machine();
            let word = Box::new(AtomicUsize::new(0));
            let id = &*word as *const AtomicUsize as usize;
            machine.call_driver("HwProcessServiceRequest", PASSIVE_LEVEL, || {
                machine.acquire_spin_lock(&word, id, LockApi::InStackQueued, "a spin lock");
                // Returns without releasing it (and lowers, as a release would have).
                cpu::set_irql(PASSIVE_LEVEL);
            });
            assert_eq!(reports(&machine), [(0xC4, 0x0004_0006)]);
            assert_eq!(word.load(Ordering::Acquire), 0, "freed for the other CPUs");
        })
        .join()
        .expect("the checks hold");
    }
}
