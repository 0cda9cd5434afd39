//! One emulated machine: the machine layer, the I/O manager and the port driver, and the
//! façade that scenarios, tests, the tester and the fuzz target drive it through.
//!
//! Exports are called by the driver with no context argument, so the running [`Kernel`] is
//! process-global: [`entered`] (each thread's copy of it) is how `exports/` (and only the
//! driver boundary) finds it. Only one exists at a time ([`Kernel::boot`] serialises sessions),
//! which is also what the driver expects: its `.data` and its Storport callbacks assume one
//! instance.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::cpu;
use crate::io::{Access, Handle, Io, ProcessId, Request};
use crate::machine::{Config, Label, Machine};
use crate::pool::Owner;
use crate::port::{PnpState, Port, StartError};
use crate::report::{Events, Irps, PortWork, Summary};

/// Channel events seen by the scenario's clients.
#[derive(Default)]
pub struct EventCounters {
    pub fired: AtomicU64,
    pub delivered: AtomicU64,
}

/// The emulated machine.
pub struct Kernel {
    machine: Arc<Machine>,
    io: Arc<Io>,
    port: Arc<Port>,
    events: EventCounters,
    figures: Mutex<std::collections::BTreeMap<String, u64>>,
}

static CURRENT: RwLock<Option<Arc<Kernel>>> = RwLock::new(None);
/// The running kernel's session number (0: none), so a thread can tell with one load that
/// its copy in [`LOCAL`] is still the running kernel.
static CURRENT_SESSION: AtomicU64 = AtomicU64::new(0);
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

thread_local! {
    /// This thread's copy of the running kernel. The driver calls exports hundreds of
    /// thousands of times a second, and finding the kernel through [`CURRENT`]'s lock and a
    /// count on the shared `Arc` (four atomic operations) was a third of what storsim spent on
    /// an uncontended spin lock. The `Rc` is this thread's own count: each call in progress
    /// holds one, so replacing the copy never frees a kernel a call still uses. A thread keeps
    /// a finished session's kernel until its next export call or its exit; the thread that
    /// ends a session drops its own copy at once.
    #[expect(clippy::redundant_allocation, reason = "the Rc is the per-thread count, the point")]
    static LOCAL: RefCell<Option<Rc<Arc<Kernel>>>> = const { RefCell::new(None) };
}

/// The running kernel, for one export call on this thread (each thread keeps a copy: `LOCAL`).
pub fn entered() -> Rc<Arc<Kernel>> {
    running().expect("an emulated export ran outside a storsim session")
}

/// [`entered`], or `None` outside a session.
pub fn running() -> Option<Rc<Arc<Kernel>>> {
    let session = CURRENT_SESSION.load(Ordering::Acquire);
    let stale = LOCAL.with(|local| {
        let mut local = local.borrow_mut();
        match &*local {
            Some(kernel) if kernel.machine.session() == session => return Ok(kernel.clone()),
            _ => {}
        }
        let kernel = CURRENT
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .map(Rc::new);
        Err((std::mem::replace(&mut *local, kernel.clone()), kernel))
    });
    match stale {
        Ok(kernel) => Some(kernel),
        // The finished session's kernel is dropped outside the borrow: its teardown must not
        // find `LOCAL` borrowed.
        Err((old, kernel)) => {
            drop(old);
            kernel
        }
    }
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
        self.kernel.port.dispatcher().stop();
        self.kernel.io.work().stop();
        CURRENT_SESSION.store(0, Ordering::Release);
        *CURRENT.write().unwrap_or_else(|p| p.into_inner()) = None;
        let local = LOCAL.with(|local| local.borrow_mut().take());
        drop(local);
        *SESSION.lock().unwrap_or_else(|p| p.into_inner()) = false;
        SESSION_ENDED.notify_one();
    }
}

/// The service name the driver is registered under (its registry path ends with it).
const SERVICE: &str = "revcall";

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
        let machine = Arc::new(Machine::new(
            config,
            NEXT_SESSION.fetch_add(1, Ordering::Relaxed),
        ));
        let io = Arc::new(Io::new(machine.clone(), SERVICE));
        let port = Arc::new(Port::new(machine.clone(), io.clone()));
        let kernel = Arc::new(Kernel {
            machine,
            io,
            port,
            events: EventCounters::default(),
            figures: Mutex::default(),
        });
        let weak = Arc::downgrade(&kernel);
        kernel.machine.set_ending(Box::new(move |_bug| {
            if let Some(kernel) = weak.upgrade() {
                kernel.emit_ending("the run ended with a bug check".into());
            }
        }));
        *CURRENT.write().unwrap_or_else(|p| p.into_inner()) = Some(kernel.clone());
        CURRENT_SESSION.store(kernel.machine.session(), Ordering::Release);
        Session { kernel }
    }

    /// The machine layer: configuration, pool, verifier, faults, timeline.
    pub fn machine(&self) -> &Arc<Machine> {
        &self.machine
    }

    /// The I/O manager.
    pub fn io(&self) -> &Arc<Io> {
        &self.io
    }

    /// The port driver.
    /// The disk class driver of the adapter's target, while the adapter is started (Storport
    /// sends SRBs to nothing else: a stopped or removed adapter's extension is not the
    /// miniport's to use).
    pub fn disk_class(&self) -> Option<crate::class::DiskClass> {
        if self.port.state() != crate::port::PnpState::Started {
            return None;
        }
        let extension = self.port.extension()?;
        Some(crate::class::DiskClass::new(
            self.machine.clone(),
            self.port.clone(),
            extension,
        ))
    }

    pub fn port(&self) -> &Arc<Port> {
        &self.port
    }

    /// Events the scenario's clients fired and received (for the summary).
    pub fn events(&self) -> &EventCounters {
        &self.events
    }

    pub fn config(&self) -> &Config {
        self.machine.config()
    }

    /// Names the run for its report.
    pub fn name_run(&self, label: Label) {
        self.machine.name_run(label);
    }

    /// Records a figure the scenario measured, for the report.
    pub fn figure(&self, name: impl Into<String>, value: u64) {
        self.figures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.into(), value);
    }

    /// Adds a line to the timeline.
    pub fn note(&self, what: impl Into<String>) {
        self.machine.note(what);
    }

    /// CreateFile on the adapter (`\\.\ScsiN:`): a handle with `access` for `process`.
    pub fn open(&self, process: ProcessId, access: Access) -> Handle {
        self.io.open(process, access)
    }

    /// CloseHandle (IRPs in flight go on).
    pub fn close(&self, handle: Handle) -> bool {
        self.io.close(handle)
    }

    /// Overlapped DeviceIoControl, METHOD_BUFFERED; `Err` is a status the I/O manager
    /// returns before any IRP exists.
    pub fn device_io_control(
        &self,
        handle: Handle,
        code: u32,
        input: &[u8],
        out_len: u32,
    ) -> Result<Arc<Request>, u32> {
        self.io.device_io_control(handle, code, input, out_len)
    }

    /// CancelIoEx(handle, NULL) or, with `only`, of one request.
    pub fn cancel_io(&self, handle: Handle, only: Option<u64>) -> usize {
        self.io.cancel_io(handle, only)
    }

    /// Process exit: its IRPs cancelled, its handles closed, the cancels awaited.
    pub fn exit_process(&self, process: ProcessId) {
        self.io.exit_process(process)
    }

    /// IRP_MN_START_DEVICE.
    pub fn start_adapter(&self) -> Result<(), StartError> {
        self.port.start_adapter()
    }

    /// IRP_MN_STOP_DEVICE.
    pub fn stop_adapter(&self) {
        self.port.stop_adapter()
    }

    /// Storport resets a LUN (SRB_FUNCTION_RESET_LOGICAL_UNIT), as after an SRB timeout.
    pub fn reset_lun(&self, target: u8, lun: u8) {
        self.port.reset_lun((target, lun))
    }

    /// Storport resets the bus (HwResetBus).
    pub fn reset_bus(&self) {
        self.port.reset_bus()
    }

    /// D0 → D3 → D0.
    pub fn power_cycle_adapter(&self) {
        self.port.power_cycle_adapter()
    }

    /// IRP_MN_REMOVE_DEVICE; `between` runs in the window before the rundown wait.
    pub fn remove_adapter(&self, between: impl FnOnce()) {
        self.port.remove_adapter(between)
    }

    /// IRP_MN_SURPRISE_REMOVAL.
    pub fn surprise_remove_adapter(&self) {
        self.port.surprise_remove_adapter()
    }

    /// PnP adds a new adapter instance after a removal.
    pub fn add_adapter(&self) -> Result<(), StartError> {
        self.port.add_adapter()
    }

    /// The adapter's PnP state.
    pub fn adapter_state(&self) -> PnpState {
        self.port.state()
    }

    /// Driver unload and the verifier's checks at it.
    pub fn unload(&self) {
        self.port.unload()
    }

    /// What the run did so far, for its report.
    pub fn summary(&self, error: Option<String>, failures: Vec<String>) -> Summary {
        let label = self.machine.label();
        let violations = self.machine.verifier().violations();
        let irps = self.io.counters();
        let port = self.port.counters();
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Summary {
            driver: label.driver,
            scenario: label.scenario,
            seed: self.config().seed,
            cpus: label.cpus,
            passed: error.is_none() && violations.is_empty() && failures.is_empty(),
            error,
            violations,
            failures,
            irps: Irps {
                issued: load(&irps.issued),
                completed: load(&irps.completed),
                cancelled: load(&irps.cancelled),
                outstanding: self.io.try_outstanding().map(|n| n as u64),
            },
            events: Events {
                fired: load(&self.events.fired),
                delivered: load(&self.events.delivered),
            },
            port: PortWork {
                service_requests: load(&port.service_requests),
                srbs: load(&port.srbs),
                srbs_outstanding: self.port.srbs_in_flight() as u64,
                timer_calls: load(&port.timer_calls),
                dpcs: load(&port.dpcs),
                bytes_written: load(&port.bytes_written),
                bytes_read: load(&port.bytes_read),
                bytes_verified: load(&port.bytes_verified),
            },
            pool_outstanding: self.machine.pool().outstanding(Owner::Driver).len()
                + self.machine.pool().outstanding(Owner::UpperDriver).len(),
            delays_injected: self.machine.delays_injected(),
            faults_injected: self.machine.faults().injected(),
            timeline: self.machine.timeline(),
            loaded: self.io.objects().loaded(),
            figures: self
                .figures
                .try_lock()
                .map(|figures| figures.clone())
                .unwrap_or_default(),
        }
    }

    /// Prints the report of a run that cannot go on (a bug check, or storsim itself
    /// failing), in the run's form, with `error` saying why it ended.
    pub fn emit_ending(&self, error: String) {
        let summary = self.summary(Some(error), Vec::new());
        if self.machine.label().json {
            println!("{}", summary.json());
        } else {
            print!("{}", summary.text(!self.config().live));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use super::*;

    #[test]
    fn an_export_finds_the_running_kernel_and_a_finished_one_is_let_go() {
        let first = Kernel::boot(Config::default());
        let gone = Arc::downgrade(first.kernel());
        assert!(Arc::ptr_eq(&entered(), first.kernel()));
        drop(first);
        assert!(
            gone.upgrade().is_none(),
            "the thread that ended the session kept its kernel"
        );

        // Another thread calls into one session and, parked, into the next.
        let (call, calls) = mpsc::channel::<()>();
        let (seen, sees) = mpsc::channel();
        let other = std::thread::spawn(move || {
            for () in calls {
                seen.send(Arc::as_ptr(&entered()) as usize)
                    .expect("the test is listening");
            }
        });
        let second = Kernel::boot(Config::default());
        let gone = Arc::downgrade(second.kernel());
        call.send(()).expect("the thread runs");
        assert_eq!(
            sees.recv().ok(),
            Some(Arc::as_ptr(second.kernel()) as usize)
        );
        drop(second);
        let third = Kernel::boot(Config::default());
        call.send(()).expect("the thread runs");
        assert_eq!(sees.recv().ok(), Some(Arc::as_ptr(third.kernel()) as usize));
        assert!(
            gone.upgrade().is_none(),
            "a thread's next call let the finished session's kernel go"
        );
        // The other thread holds the last reference to the third kernel when it exits: the
        // kernel is torn down in its thread-local destructors, which must not need any other.
        let gone = Arc::downgrade(third.kernel());
        drop(third);
        assert!(gone.upgrade().is_some(), "the other thread's copy");
        drop(call);
        other.join().expect("the thread ends");
        assert!(gone.upgrade().is_none(), "let go at the thread's exit");
    }
}
