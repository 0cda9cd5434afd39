//! The `storsim` command line.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::torture::{self, TortureOptions};
use crate::{Options, Scenario};
use storsim::machine::Config;

#[derive(Parser)]
#[command(
    name = "storsim",
    about = "Run a Storport miniport .sys on Linux under an emulated Storport, ntoskrnl and I/O manager, with Driver-Verifier-style checks"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the driver, run a scenario, unload; print a timeline and the verifier's verdict.
    Run {
        /// The driver image (e.g. target/x86_64-pc-windows-msvc/release/revcall.sys).
        driver: PathBuf,
        #[arg(long, value_enum, default_value = "demo")]
        scenario: Scenario,
        /// Emulated CPUs issuing requests at once.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
        cpus: u16,
        /// Seeds delay injection.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Probability of an injected delay at each emulated call (0 turns it off).
        #[arg(long, default_value_t = 0.02)]
        delay: f64,
        /// A REG_DWORD under the service's Parameters\Device key, e.g. EnableFireInjection=0.
        #[arg(long = "param", value_parser = parse_param)]
        params: Vec<(String, u32)>,
        /// Milliseconds removal may wait for the rundown before it counts as a hang.
        #[arg(long, default_value_t = 2000)]
        rundown_limit_ms: u64,
        /// One JSON object instead of the timeline.
        #[arg(long)]
        json: bool,
        /// The kernel-mode client driver the kernel-client scenario loads above the driver
        /// (default: revcall-client.sys beside it).
        #[arg(long)]
        client: Option<PathBuf>,
    },
    /// N emulated CPUs hammer one adapter with every kind of request, cancellation, handle
    /// close, process exit and malformed input, through R removal / surprise-removal cycles;
    /// checks that every IRP completes exactly once with an allowed status, that every waiter's
    /// events are ordered with every gap reported as lost, and that nothing hangs or leaks.
    Torture {
        driver: PathBuf,
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
        cpus: u16,
        /// Client operations in all (requests, cancellations, closes, process exits).
        #[arg(long, default_value_t = 100_000)]
        ops: u64,
        /// Removal or surprise-removal cycles, each followed by a new adapter instance.
        #[arg(long, default_value_t = 10)]
        removals: u32,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Probability of an injected delay at each emulated call.
        #[arg(long, default_value_t = 0.02)]
        delay: f64,
        /// Probability that each fallible call (allocations, registry, IRP allocation) fails.
        #[arg(long, default_value_t = 0.0)]
        fail_rate: f64,
        /// Milliseconds a removal may wait for the rundown before it counts as a hang.
        #[arg(long, default_value_t = 2000)]
        rundown_limit_ms: u64,
        /// On failure, do not look for a smaller failing run.
        #[arg(long)]
        no_shrink: bool,
        /// One JSON object instead of the table.
        #[arg(long)]
        json: bool,
        /// A kernel-mode client driver (revcall-client.sys) to load above every adapter
        /// instance: it must end cleanly at each removal with its counts exact.
        #[arg(long)]
        client: Option<PathBuf>,
    },
    /// The data path under fire: N emulated CPUs issue random READ / WRITE / SYNCHRONIZE
    /// CACHE / UNMAP to several LUNs served by misbehaving user-mode servers (batching, out of
    /// order, split and malformed COMMITs, medium errors, deaths with SRBs in hand, WRITEs
    /// carried out after a reset took them), LUNs removed and re-created, LUN and bus resets
    /// and power cycles with I/O in flight, each cycle ending with a removal or surprise
    /// removal; every READ checked block by block against a model of what was written.
    DiskTorture {
        driver: PathBuf,
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
        cpus: u16,
        /// SRBs in all.
        #[arg(long, default_value_t = 100_000)]
        ios: u64,
        /// Adapter removal (or surprise-removal) cycles, each followed by a new instance.
        #[arg(long, default_value_t = 10)]
        removals: u32,
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=8))]
        luns: u16,
        /// Servers per LUN at once, each in its own process.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=3))]
        servers: u16,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Probability of an injected delay at each emulated call.
        #[arg(long, default_value_t = 0.02)]
        delay: f64,
        /// On failure, do not look for a smaller failing run.
        #[arg(long)]
        no_shrink: bool,
        /// One JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Low-resources simulation, systematically: a short script runs once per fallible call
    /// site (allocations, registry, StorPortInitialize, Storport's and the I/O manager's
    /// allocations) with the first call there failing; each must degrade with a clear status,
    /// lose no IRP, leak nothing and violate no rule.
    Faults {
        driver: PathBuf,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// One JSON object instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Measure the channel: throughput against the floor fixture, latency, the driver's cost
    /// in instructions (callgrind) and memory; tables, then one summary line.
    Bench {
        /// revcall.sys.
        driver: PathBuf,
        /// The floor fixture (target/fixtures/floor.sys): completes every service IRP at once.
        #[arg(long)]
        floor: PathBuf,
        /// The disk floor fixture (target/fixtures/nulldisk.sys): answers READ and WRITE in
        /// HwStartIo. Without it there is no disk table.
        #[arg(long)]
        nulldisk: Option<PathBuf>,
        /// IRPs each throughput run sends.
        #[arg(long, default_value_t = 20_000)]
        irps: u64,
        /// SRBs each disk run sends (a quarter at queue depth 1).
        #[arg(long, default_value_t = 20_000)]
        disk_ios: u64,
        /// Interleaved revcall / floor pairs per case; each figure is the median over them.
        #[arg(long, default_value_t = 5)]
        pairs: usize,
        /// Latency samples per measurement.
        #[arg(long, default_value_t = 2000)]
        samples: usize,
        /// Skip the instruction counts (no valgrind needed).
        #[arg(long)]
        no_cost: bool,
        /// One JSON object (then the summary line on stderr).
        #[arg(long)]
        json: bool,
    },
    /// The single operations `bench` counts under callgrind; prints where the driver lies and
    /// which phases ran (JSON). Run by `bench`, not by hand.
    #[command(hide = true)]
    CostPhases { driver: PathBuf },
    /// List the routines storsim provides to drivers.
    Exports,
}

/// A panic in storsim (a bug of ours, or a scenario step that cannot go on) still ends with the
/// run's report, then exit status 2.
fn report_panics() {
    std::panic::set_hook(Box::new(|info| {
        eprintln!("storsim: {info}");
        if let Some(kernel) = storsim::kernel::current() {
            kernel.emit_ending(format!("storsim internal error: {info}"));
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        // SAFETY: _exit takes no pointers; nothing after a panic is worth unwinding for.
        unsafe { libc::_exit(2) }
    }));
}

fn parse_param(text: &str) -> Result<(String, u32), String> {
    let (name, value) = text.split_once('=').ok_or("expected NAME=VALUE")?;
    let value = match value.strip_prefix("0x") {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => value.parse(),
    }
    .map_err(|e| format!("{value}: {e}"))?;
    Ok((name.to_owned(), value))
}

/// Prints a report in the form asked for; returns the exit code (0 only if it passed).
fn emit(
    json: bool,
    passed: bool,
    as_json: impl FnOnce() -> String,
    as_text: impl FnOnce() -> String,
) -> i32 {
    if json {
        println!("{}", as_json());
    } else {
        print!("{}", as_text());
    }
    i32::from(!passed)
}

/// Runs the command; returns the process exit code (0 only for a clean run).
pub fn run(cli: Cli) -> i32 {
    match cli.command {
        Command::Exports => {
            for export in storsim::exports::provided() {
                println!("{export}");
            }
            0
        }
        Command::DiskTorture {
            driver,
            cpus,
            ios,
            removals,
            luns,
            servers,
            seed,
            delay,
            no_shrink,
            json,
        } => {
            report_panics();
            let options = crate::disk_torture::DiskTortureOptions {
                driver,
                cpus: cpus.into(),
                ios,
                removals,
                luns: luns.into(),
                servers: servers.into(),
                seed,
                delay,
                progress: true,
            };
            let mut report = crate::disk_torture::run(&options);
            if !report.passed && !no_shrink {
                eprintln!("disk-torture: FAILED (seed {seed}); looking for a smaller failing run…");
                let smaller = crate::disk_torture::shrink(&options, Duration::from_secs(120));
                report.reproduce = Some(smaller.command());
            }
            emit(json, report.passed, || report.json(), || report.text())
        }
        Command::Faults { driver, seed, json } => {
            report_panics();
            let report = crate::faults::systematic(&driver, seed);
            emit(json, report.passed, || report.json(), || report.text())
        }
        Command::Torture {
            driver,
            cpus,
            ops,
            removals,
            seed,
            delay,
            fail_rate,
            rundown_limit_ms,
            no_shrink,
            json,
            client,
        } => {
            report_panics();
            let options = TortureOptions {
                driver,
                cpus: cpus.into(),
                ops,
                removals,
                seed,
                delay,
                fail_rate,
                rundown_limit: Duration::from_millis(rundown_limit_ms),
                progress: true,
                json,
                client,
            };
            let mut report = torture::run(&options);
            if !report.passed && report.error.is_none() && !no_shrink {
                eprintln!("torture: FAILED (seed {seed}); looking for a smaller failing run…");
                let smaller = torture::shrink(&options, Duration::from_secs(120));
                report.reproduce = Some(smaller.command());
            }
            emit(json, report.passed, || report.json(), || report.text())
        }
        Command::Bench {
            driver,
            floor,
            nulldisk,
            irps,
            disk_ios,
            pairs,
            samples,
            no_cost,
            json,
        } => {
            report_panics();
            let options = crate::bench::Options {
                driver,
                floor,
                nulldisk,
                irps,
                disk_ios,
                pairs,
                samples,
                cost: !no_cost,
            };
            match crate::bench::run(&options, &mut |step| eprintln!("bench: {step}")) {
                Ok(report) if json => {
                    println!("{}", report.json());
                    eprintln!("{}", report.summary_line());
                    0
                }
                Ok(report) => {
                    print!("{}", report.text());
                    0
                }
                Err(error) => {
                    eprintln!("storsim bench: {error}");
                    1
                }
            }
        }
        Command::CostPhases { driver } => {
            report_panics();
            match crate::bench::cost::phases(&driver) {
                Ok(plan) => {
                    println!("{}", serde_json::to_string(&plan).unwrap_or_default());
                    0
                }
                Err(error) => {
                    eprintln!("storsim cost-phases: {error}");
                    1
                }
            }
        }
        Command::Run {
            driver,
            scenario,
            cpus,
            seed,
            delay,
            params,
            rundown_limit_ms,
            json,
            client,
        } => {
            report_panics();
            let client = client.unwrap_or_else(|| driver.with_file_name("revcall-client.sys"));
            let config = Config {
                seed,
                delay_probability: delay,
                rundown_limit: Duration::from_millis(rundown_limit_ms),
                registry: params.into_iter().collect::<HashMap<_, _>>(),
                timeline: true,
                live: !json,
                ..Config::default()
            };
            let summary = crate::run(&Options {
                driver,
                scenario,
                cpus: cpus.into(),
                config,
                json,
                client,
            });
            if json {
                println!("{}", summary.json());
            } else {
                print!("\n{}", summary.text(false));
            }
            i32::from(!summary.passed)
        }
    }
}
