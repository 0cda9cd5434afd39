//! The `storsim` command line.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::kernel::Config;
use crate::scenarios::{self, Options, Scenario};

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
    },
    /// Measure the channel: throughput against the floor fixture, latency, the driver's cost
    /// in instructions (callgrind) and memory; tables, then one summary line.
    Bench {
        /// revcall.sys.
        driver: PathBuf,
        /// The floor fixture (target/fixtures/floor.sys): completes every service IRP at once.
        #[arg(long)]
        floor: PathBuf,
        /// IRPs each throughput run sends.
        #[arg(long, default_value_t = 20_000)]
        irps: u64,
        /// Runs per driver and case (the best counts).
        #[arg(long, default_value_t = 3)]
        reps: usize,
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
        if let Some(kernel) = crate::kernel::current() {
            crate::report::emit_ending(&kernel, format!("storsim internal error: {info}"));
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

/// Runs the command; returns the process exit code (0 only for a clean run).
pub fn run(cli: Cli) -> i32 {
    match cli.command {
        Command::Exports => {
            for export in crate::exports::provided() {
                println!("{export}");
            }
            0
        }
        Command::Bench {
            driver,
            floor,
            irps,
            reps,
            samples,
            no_cost,
            json,
        } => {
            report_panics();
            let options = scenarios::bench::Options {
                driver,
                floor,
                irps,
                reps,
                samples,
                cost: !no_cost,
            };
            match scenarios::bench::run(&options, &mut |step| eprintln!("bench: {step}")) {
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
            match scenarios::bench::cost::phases(&driver) {
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
        } => {
            report_panics();
            let config = Config {
                seed,
                delay_probability: delay,
                rundown_limit: Duration::from_millis(rundown_limit_ms),
                registry: params.into_iter().collect::<HashMap<_, _>>(),
                timeline: true,
                live: !json,
                ..Config::default()
            };
            let summary = scenarios::run(&Options {
                driver,
                scenario,
                cpus: cpus.into(),
                config,
                json,
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
