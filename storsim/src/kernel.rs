//! One emulated machine: the kernel state every emulated export acts on.
//!
//! Exports are called by the driver with no context argument, so the running [`Kernel`] is
//! process-global. Only one exists at a time ([`Kernel::boot`] serialises sessions), which is
//! also what the driver expects: its `.data` and its Storport callbacks assume one instance.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::cpu;
use crate::io::Io;
use crate::pool::Pool;
use crate::port::Port;
use crate::verifier::locks::{self, LockOrder};
use crate::verifier::{self, BugCheck, Code, Verifier};

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
    /// Registry values under the service's `Parameters\Device` key (REG_DWORD).
    pub registry: HashMap<String, u32>,
    /// Keep a timeline of what happened (off for torture and benchmarks).
    pub timeline: bool,
    /// Print the timeline as it happens.
    pub live: bool,
    /// Low-resources simulation: which fallible calls fail.
    pub faults: crate::faults::FaultPlan,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            seed: 1,
            delay_probability: 0.02,
            rundown_limit: Duration::from_secs(5),
            cancel_limit: Duration::from_secs(2),
            registry: HashMap::new(),
            timeline: true,
            live: false,
            faults: crate::faults::FaultPlan::default(),
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

/// Channel events seen by the scenario's clients.
#[derive(Default)]
pub struct EventCounters {
    pub fired: AtomicU64,
    pub delivered: AtomicU64,
}

/// One line of the run's timeline.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Moment {
    /// Milliseconds since boot.
    pub ms: f64,
    /// The emulated CPU it happened on.
    pub cpu: u32,
    pub what: String,
}

/// The emulated machine.
pub struct Kernel {
    pub config: Config,
    pub verifier: Verifier,
    pub pool: Pool,
    pub locks: LockOrder,
    pub io: Io,
    pub port: Port,
    pub events: EventCounters,
    pub faults: crate::faults::Faults,
    label: Mutex<Label>,
    /// The word of the global cancel spin lock.
    pub cancel_lock: AtomicUsize,
    /// Distinguishes sessions, so per-thread state (the delay RNG) restarts with each one.
    session: u64,
    booted: Instant,
    timeline: Mutex<Vec<Moment>>,
    delays: AtomicU64,
}

static CURRENT: RwLock<Option<Arc<Kernel>>> = RwLock::new(None);
/// Whether a session is running; one at a time per process.
static SESSION: Mutex<bool> = Mutex::new(false);
static SESSION_ENDED: std::sync::Condvar = std::sync::Condvar::new();
static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// The running kernel. Exports call this; outside a session it is a storsim bug.
pub fn kernel() -> Arc<Kernel> {
    CURRENT
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .expect("an emulated export ran outside a storsim session")
}

/// The running kernel, if any (the fault path must not panic).
pub fn current() -> Option<Arc<Kernel>> {
    CURRENT.try_read().ok().and_then(|k| k.clone())
}

/// Owns the process-wide session: one kernel at a time; dropping it ends the session.
pub struct Session {
    kernel: Arc<Kernel>,
}

impl Session {
    pub fn kernel(&self) -> &Arc<Kernel> {
        &self.kernel
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.kernel.port.dispatcher.stop();
        *CURRENT.write().unwrap_or_else(|p| p.into_inner()) = None;
        *SESSION.lock().unwrap_or_else(|p| p.into_inner()) = false;
        SESSION_ENDED.notify_one();
    }
}

impl Kernel {
    /// Boots a fresh kernel and makes it current; waits for any other session to end.
    pub fn boot(config: Config) -> Session {
        {
            let running = SESSION.lock().unwrap_or_else(|p| p.into_inner());
            let mut running = SESSION_ENDED
                .wait_while(running, |running| *running)
                .unwrap_or_else(|p| p.into_inner());
            *running = true;
        }
        cpu::install_fault_handler();
        cpu::enter_thread();
        let kernel = Arc::new(Kernel {
            io: Io::new(config.seed),
            faults: crate::faults::Faults::new(config.faults, config.seed),
            config,
            verifier: Verifier::default(),
            pool: Pool::new(),
            locks: LockOrder::default(),
            port: Port::default(),
            events: EventCounters::default(),
            label: Mutex::new(Label::default()),
            cancel_lock: AtomicUsize::new(0),
            session: NEXT_SESSION.fetch_add(1, Ordering::Relaxed),
            booted: Instant::now(),
            timeline: Mutex::new(Vec::new()),
            delays: AtomicU64::new(0),
        });
        *CURRENT.write().unwrap_or_else(|p| p.into_inner()) = Some(kernel.clone());
        Session { kernel }
    }

    /// Names the run for its report.
    pub fn set_label(&self, options: &crate::scenarios::Options) {
        self.name_run(Label {
            driver: options.driver.display().to_string(),
            scenario: options.scenario.name().to_owned(),
            cpus: options.cpus,
            json: options.json,
        });
    }

    /// Names a run that is not one of the `--scenario` scripts.
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
            println!("{:>9.3} ms  cpu{}  {}", moment.ms, moment.cpu, moment.what);
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

    /// Calls into the driver: `name` is the callback, `irql` the level Storport calls it at.
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
            self.report(BugCheck::new(Code::DriverVerifierIomanagerViolation,
                [0x05, 0, u64::from(irql), u64::from(after)],
                format!("{name} was called at IRQL {irql} and returned at IRQL {after}"),
            ));
        }
        for (lock, what) in locks::take_held_beyond(held) {
            self.report(BugCheck::new(Code::DriverVerifierDetectedViolation,
                [0x0004_0006, lock as u64, 0, 0],
                format!("{name} returned still holding {what} {lock:#x} (QueuedSpinLock / SpinLock rule)"),
            ));
            self.force_unlock(lock);
        }
        self.maybe_delay();
        cpu::set_irql(previous);
        result
    }

    /// Frees a lock a callback left held, so other CPUs do not spin on it forever.
    pub fn force_unlock(&self, lock: locks::LockId) {
        match lock {
            locks::CANCEL_SPIN_LOCK => self.cancel_lock.store(0, Ordering::Release),
            locks::STARTIO_LOCK => self.port.startio_lock.store(0, Ordering::Release),
            word => {
                // SAFETY: `word` is the address of a KSPIN_LOCK the driver passed to an acquire
                // routine that storsim completed, so it is a live, aligned pointer-sized word
                // in driver memory (nonpaged pool or the device extension).
                let word = unsafe { &*(word as *const AtomicUsize) };
                word.store(0, Ordering::Release);
            }
        }
    }

    /// Ends the run the way a bug check ends Windows: report, print the summary, exit.
    pub fn stop(&self, bug: BugCheck) -> ! {
        use std::io::Write;
        static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if STOPPING.swap(true, Ordering::AcqRel) {
            // Another CPU is already reporting a bug check; this one stops here, as a halted
            // machine's other processors do.
            loop {
                std::thread::park();
            }
        }
        self.report(bug);
        crate::report::emit_ending(self, "the run ended with a bug check".into());
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
