//! Scripted runs of a driver under storsim: what the CLI's `--scenario` names, what the tests
//! and benchmarks drive. Each boots a fresh kernel, loads the driver, runs its script and
//! unloads it; the [`Summary`] says what happened and whether the verifier is content.

pub mod bench;
pub mod client;
mod demo;
pub mod faults;
mod fixture;
pub mod torture;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::kernel::Kernel;
use crate::machine::{Config, Label};
use crate::report::Summary;

/// A scripted run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// revcall's channel end to end: waiters park, FIRE from several CPUs, batching, a
    /// DISCOVER through the timer, a cancel, a process exit, a kernel-mode caller, removal
    /// completing the rest and a request in the removal window.
    Demo,
    /// revcall with parked waiters and a surprise removal, then the removal.
    SurpriseRemoval,
    /// The fixture drivers' protocol (PARK / FLUSH / ECHO) through every path, for proving
    /// the verifier's checks with deliberately broken drivers.
    Fixture,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Demo => "demo",
            Scenario::SurpriseRemoval => "surprise-removal",
            Scenario::Fixture => "fixture",
        }
    }
}

/// What to run and how.
#[derive(Clone, Debug)]
pub struct Options {
    pub driver: PathBuf,
    pub scenario: Scenario,
    /// Emulated CPUs issuing requests at once.
    pub cpus: usize,
    pub config: Config,
    pub json: bool,
}

/// What a script found wrong that is not a verifier rule (an expected outcome not seen).
#[derive(Default)]
pub struct Failures(Mutex<Vec<String>>);

impl Failures {
    pub fn expect(&self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            let what = what();
            eprintln!("scenario: expected {what}");
            self.0.lock().unwrap_or_else(|p| p.into_inner()).push(what);
        }
    }

    pub fn list(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Boots a kernel, runs the scenario, unloads, and summarises.
pub fn run(options: &Options) -> Summary {
    let session = Kernel::boot(options.config.clone());
    let kernel = session.kernel().clone();
    kernel.name_run(Label {
        driver: options.driver.display().to_string(),
        scenario: options.scenario.name().to_owned(),
        cpus: options.cpus,
        json: options.json,
    });
    let failures = Failures::default();
    let error = match crate::driver::load(&kernel, &options.driver) {
        Err(error) => Some(error.to_string()),
        Ok(_driver) => {
            let result = match options.scenario {
                Scenario::Demo => demo::run(&kernel, options.cpus, &failures),
                Scenario::SurpriseRemoval => demo::surprise_removal(&kernel, &failures),
                Scenario::Fixture => fixture::run(&kernel, &failures),
            };
            kernel.unload();
            result.err().map(|e| e.to_string())
        }
    };
    let summary = kernel.summary(error, failures.list());
    drop(session);
    summary
}

/// Shared by scripts: the kernel handle they pass around.
pub type KernelRef = Arc<Kernel>;

/// A driver loaded and its adapter started, for tests and tools that script their own steps.
pub struct Harness {
    pub kernel: Arc<Kernel>,
    session: Option<crate::kernel::Session>,
    driver: crate::driver::Driver,
}

impl Harness {
    /// Boots a kernel, loads `driver` and starts its adapter.
    pub fn start(
        driver: &std::path::Path,
        config: Config,
    ) -> Result<Self, crate::driver::RunError> {
        let session = Kernel::boot(config);
        let kernel = session.kernel().clone();
        let loaded = crate::driver::load(&kernel, driver)?;
        kernel.start_adapter()?;
        Ok(Self {
            kernel,
            session: Some(session),
            driver: loaded,
        })
    }

    /// The loaded image: where the driver's own code lies.
    pub fn image(&self) -> &crate::loader::Image {
        self.driver.image()
    }

    /// Removes the adapter if the script has not, unloads, and summarises the run.
    pub fn finish(mut self) -> Summary {
        if self.kernel.adapter_state() != crate::port::PnpState::Removed {
            self.kernel.remove_adapter(|| {});
        }
        self.kernel.unload();
        let summary = self.kernel.summary(None, Vec::new());
        self.session.take();
        summary
    }
}
