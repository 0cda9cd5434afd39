//! Scripted runs of a driver under storsim: what the CLI's `--scenario` names, what the tests
//! and benchmarks drive. Each boots a fresh kernel, loads the driver, runs its script and
//! unloads it; the [`Summary`] says what happened and whether the verifier is content.

pub mod bench;
pub mod cli;
pub mod client;
pub mod commit_fuzz;
mod demo;
mod disk;
pub mod disk_torture;
pub mod faults;
mod fixture;
mod kernel_client;
mod progress;
mod shrink;
pub mod torture;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use storsim::kernel::Kernel;
use storsim::machine::{Config, Label};
use storsim::report::Summary;

/// A scripted run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// revcall's channel end to end: waiters park, FIRE from several CPUs, batching, a
    /// DISCOVER through the timer, a cancel, a process exit, removal completing the rest and a
    /// request in the removal window (the kernel-mode caller has its own scenario).
    Demo,
    /// revcall with parked waiters and a surprise removal, then the removal.
    SurpriseRemoval,
    /// A LUN served from user mode: RAM servers, every CPU writing and verifying, a flush, an
    /// unmap, a server's process exit with I/O held, LUN and adapter removal with I/O held.
    Disk,
    /// The fixture drivers' protocol (PARK / FLUSH / ECHO) through every path, for proving
    /// the verifier's checks with deliberately broken drivers.
    Fixture,
    /// A kernel-mode client driver (revcall-client.sys, or `--client`) loaded above revcall:
    /// every event in order with an exact lost count, an unload with its WAIT parked, one
    /// during a burst, a removal delivering FINAL, nothing leaked.
    KernelClient,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Demo => "demo",
            Scenario::SurpriseRemoval => "surprise-removal",
            Scenario::Disk => "disk",
            Scenario::Fixture => "fixture",
            Scenario::KernelClient => "kernel-client",
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
    /// The kernel-mode client driver of the kernel-client scenario.
    pub client: PathBuf,
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
    let error = match storsim::driver::load(&kernel, &options.driver) {
        Err(error) => Some(error.to_string()),
        Ok(_driver) => {
            let result = match options.scenario {
                Scenario::Demo => demo::run(&kernel, options.cpus, &failures),
                Scenario::SurpriseRemoval => demo::surprise_removal(&kernel, &failures),
                Scenario::Disk => disk::run(&kernel, options.cpus, &failures),
                Scenario::Fixture => fixture::run(&kernel, &failures),
                Scenario::KernelClient => kernel_client::run(&kernel, &options.client, &failures),
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

/// revcall.sys as `cargo xtask build` leaves it, or `$REVCALL_SYS`: what the fuzz targets load.
pub fn built_driver() -> std::path::PathBuf {
    std::env::var_os("REVCALL_SYS").map_or_else(
        || {
            std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/x86_64-pc-windows-msvc/release/revcall.sys")
        },
        std::path::PathBuf::from,
    )
}
