//! `cargo xtask …`: the project's one-command entry points (see README.md).
//!
//! `build` cross-builds revcall.sys for x86_64-pc-windows-msvc with rust-lld (no WDK needed);
//! `test` builds it and runs every test of the workspace against it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

mod wine;

const DRIVER_TARGET: &str = "x86_64-pc-windows-msvc";

#[derive(Parser)]
#[command(about = "Build and test revcall")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build target/x86_64-pc-windows-msvc/release/revcall.sys and revcall-client.sys.
    Build,
    /// Link revcall-tester.exe for Windows (x86_64-pc-windows-gnu, Debian's mingw-w64 linker).
    TesterExe,
    /// The main job: build revcall.sys and run it in storsim (`storsim run … --scenario demo`,
    /// then `--scenario disk`, then `--scenario kernel-client` with revcall-client.sys loaded
    /// above it); arguments after `--` go to storsim (e.g. `-- --json`, `-- --cpus 4`).
    Run {
        #[arg(last = true)]
        storsim_args: Vec<String>,
    },
    /// The full torture run of docs/RELIABILITY.md: revcall.sys in storsim, 4 emulated CPUs,
    /// 1,000,000 operations, 100 removal / surprise-removal cycles, revcall-client.sys loaded
    /// above every adapter instance; arguments after `--` replace the numbers (e.g.
    /// `-- --ops 50000 --seed 7`).
    Torture {
        #[arg(last = true)]
        storsim_args: Vec<String>,
    },
    /// The full disk torture of docs/RELIABILITY.md: 4 emulated CPUs, 1,000,000 SRBs to two
    /// LUNs served by misbehaving servers, 100 removal / surprise-removal cycles; arguments
    /// after `--` replace those (e.g. `-- --ios 50000 --seed 7`).
    DiskTorture {
        #[arg(last = true)]
        storsim_args: Vec<String>,
    },
    /// Measure the channel: build revcall.sys and the floor fixtures, run `storsim bench`
    /// (event throughput against the floor, the data path's IOPS against nulldisk, latency,
    /// instructions per operation under callgrind, memory); arguments after `--` go to storsim
    /// bench (e.g. `-- --json`, `-- --no-cost`).
    Bench {
        #[arg(last = true)]
        bench_args: Vec<String>,
    },
    /// The unchanged revcall.sys and the real revcall-tester.exe under Wine (a second runtime,
    /// written by others): a fresh prefix, the stand-in storport.sys, a foreign adapter, the
    /// tester's commands and self-test, a process killed with WAITs parked (docs/WINDOWS.md,
    /// "Wine"). Needs wine64 and mingw-w64.
    Wine,
    /// Build revcall.sys and storsim's fixture drivers (target/fixtures), then run the whole
    /// test suite: unit, property, model (loom) and PE-image tests, clippy for the host and the
    /// driver target, rustfmt, the demo and surprise-removal scenarios, a short torture run, the systematic
    /// low-resources run and the tester's self-test.
    Test,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::Build => {
            let sys = build_driver()?;
            println!("revcall.sys: {}", sys.display());
            println!(
                "revcall-client.sys: {}",
                sys.with_file_name("revcall-client.sys").display()
            );
        }
        Task::Run { storsim_args } => {
            let sys = build_driver()?;
            run(
                "storsim: revcall.sys, demo scenario",
                storsim_run(&sys)
                    .args(["--scenario", "demo"])
                    .args(&storsim_args),
            )?;
            run(
                "storsim: revcall.sys, disk scenario (a LUN served from user mode)",
                storsim_run(&sys)
                    .args(["--scenario", "disk"])
                    .args(&storsim_args),
            )?;
            run(
                "storsim: revcall.sys with revcall-client.sys above it, kernel-client scenario",
                storsim_run(&sys)
                    .args(["--scenario", "kernel-client"])
                    .args(storsim_args),
            )?;
        }
        Task::Torture { storsim_args } => {
            let sys = build_driver()?;
            let args = if storsim_args.is_empty() {
                FULL_TORTURE.iter().map(|a| (*a).to_owned()).collect()
            } else {
                storsim_args
            };
            run(
                "storsim torture: revcall.sys, revcall-client.sys above it",
                storsim(&["torture"])
                    .arg(&sys)
                    .arg("--client")
                    .arg(sys.with_file_name("revcall-client.sys"))
                    .args(args),
            )?;
        }
        Task::DiskTorture { storsim_args } => {
            let sys = build_driver()?;
            let args = if storsim_args.is_empty() {
                FULL_DISK_TORTURE.iter().map(|a| (*a).to_owned()).collect()
            } else {
                storsim_args
            };
            run(
                "storsim disk-torture: revcall.sys",
                storsim(&["disk-torture"]).arg(&sys).args(args),
            )?;
        }
        Task::TesterExe => {
            let exe = build_tester_exe()?;
            println!("revcall-tester.exe: {}", exe.display());
        }
        Task::Bench { bench_args } => {
            let sys = build_driver()?;
            let fixtures = build_fixtures()?;
            let wants_cost = !bench_args.iter().any(|a| a == "--no-cost");
            if wants_cost && !have("valgrind") {
                bail!(
                    "the instruction counts need valgrind (apt-get install valgrind), \
                     or pass `-- --no-cost`"
                );
            }
            run(
                "storsim bench: revcall.sys against the floor and nulldisk fixtures",
                storsim(&["bench"])
                    .arg(&sys)
                    .arg("--floor")
                    .arg(fixtures.join("floor.sys"))
                    .arg("--nulldisk")
                    .arg(fixtures.join("nulldisk.sys"))
                    .args(bench_args),
            )?;
        }
        Task::Wine => {
            let wine64 =
                wine::wine64().context("Wine is not installed (apt-get install wine wine64)")?;
            if !have_mingw() {
                bail!("revcall-tester.exe needs mingw-w64 (apt-get install gcc-mingw-w64-x86-64)");
            }
            wine_run(&wine64)?;
        }
        Task::Test => test()?,
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(workspace_root());
    command
}

fn run(step: &str, command: &mut Command) -> Result<()> {
    eprintln!("==> {step}");
    let status = command
        .status()
        .with_context(|| format!("{step}: could not start cargo"))?;
    if !status.success() {
        bail!("{step} failed ({status})");
    }
    Ok(())
}

/// Builds the driver and the kernel-mode client driver beside it (revcall-client.sys) and
/// gives them their Windows names; returns the path of revcall.sys.
fn build_driver() -> Result<PathBuf> {
    build_sys(
        "build revcall-client.sys",
        "revcall-client-driver",
        "revcall_client",
        "revcall-client",
    )?;
    build_sys("build revcall.sys", "revcall", "revcall", "revcall")
}

/// Builds the stand-in storport.sys for Wine (crate `storport-standin`); returns its path.
fn build_standin() -> Result<PathBuf> {
    build_sys(
        "build the stand-in storport.sys (Wine)",
        "storport-standin",
        "storport",
        "storport",
    )
}

/// Builds `package` for the driver target and copies its `<image>.dll` to `<sys>.sys` (like
/// windows-drivers-rs: the linker writes a .dll, the driver is the same file as .sys).
fn build_sys(step: &str, package: &str, image: &str, sys: &str) -> Result<PathBuf> {
    run(
        step,
        cargo().args([
            "build",
            "--package",
            package,
            "--release",
            "--target",
            DRIVER_TARGET,
        ]),
    )?;
    let out = workspace_root()
        .join("target")
        .join(DRIVER_TARGET)
        .join("release");
    let sys = out.join(format!("{sys}.sys"));
    std::fs::copy(out.join(format!("{image}.dll")), &sys)
        .with_context(|| format!("copying {image}.dll to {}", sys.display()))?;
    Ok(sys)
}

/// Builds everything the Wine run installs and runs it.
fn wine_run(wine64: &Path) -> Result<()> {
    let images = wine::Images {
        revcall: build_driver()?,
        storport: build_standin()?,
        foreign: build_fixtures()?.join("foreign.sys"),
        tester: build_tester_exe()?,
    };
    eprintln!(
        "==> revcall.sys and revcall-tester.exe under Wine ({})",
        wine64.display()
    );
    wine::run(wine64, &images, &workspace_root().join("target"))
}

/// Builds storsim's fixture drivers (crate `storsim-fixtures`, one example each) and installs
/// each as `target/fixtures/<name>.sys`; returns that directory.
fn build_fixtures() -> Result<PathBuf> {
    run(
        "build the storsim fixture drivers",
        cargo().args([
            "build",
            "--package",
            "storsim-fixtures",
            "--release",
            "--target",
            DRIVER_TARGET,
            "--examples",
        ]),
    )?;
    let built = workspace_root()
        .join("target")
        .join(DRIVER_TARGET)
        .join("release")
        .join("examples");
    let fixtures = workspace_root().join("target").join("fixtures");
    // Start empty, so a removed fixture cannot linger.
    if fixtures.exists() {
        std::fs::remove_dir_all(&fixtures)
            .with_context(|| format!("removing {}", fixtures.display()))?;
    }
    std::fs::create_dir_all(&fixtures)
        .with_context(|| format!("creating {}", fixtures.display()))?;
    let entries =
        std::fs::read_dir(&built).with_context(|| format!("listing {}", built.display()))?;
    for entry in entries {
        let path = entry?.path();
        // `<name>.dll` is the example's final artifact; `<name>-<hash>.dll` its deps copy.
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".dll"))
        else {
            continue;
        };
        if name.contains('-') {
            continue;
        }
        let sys = fixtures.join(format!("{name}.sys"));
        std::fs::copy(&path, &sys)
            .with_context(|| format!("copying {} to {}", path.display(), sys.display()))?;
    }
    Ok(fixtures)
}

fn test() -> Result<()> {
    let sys = build_driver()?;
    let fixtures = build_fixtures()?;
    run(
        "clippy: the driver, revcall-kclient and revcall-client.sys for their target",
        cargo().args([
            "clippy",
            "--package",
            "revcall",
            "--package",
            "revcall-kclient",
            "--package",
            "revcall-client-driver",
            "--release",
            "--target",
            DRIVER_TARGET,
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    run(
        "clippy: the storsim fixtures for the driver target",
        cargo().args([
            "clippy",
            "--package",
            "storsim-fixtures",
            "--release",
            "--target",
            DRIVER_TARGET,
            "--examples",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    run(
        "clippy: the workspace on the host",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    run("rustfmt", cargo().args(["fmt", "--all", "--check"]))?;
    run(
        "loom model of park / cancel / fire / remove",
        cargo()
            .args([
                "test",
                "--package",
                "revcall",
                "--release",
                "--lib",
                "--target-dir",
            ])
            .arg(workspace_root().join("target").join("loom"))
            .arg("model")
            .env("RUSTFLAGS", "--cfg loom"),
    )?;
    run(
        "unit, property and PE-image tests",
        // xtask has no tests of its own; --all-targets skips doctests (there are none).
        cargo()
            // The fixture examples are drivers, not tests: only the fixtures' tests/ run.
            .args([
                "test",
                "--workspace",
                "--exclude",
                "xtask",
                "--exclude",
                "storsim-fixtures",
                "--all-targets",
            ])
            .env("REVCALL_SYS", &sys)
            .env("STORSIM_FIXTURES", &fixtures),
    )?;
    run(
        "fixture image tests",
        cargo()
            .args(["test", "--package", "storsim-fixtures", "--tests"])
            .env("STORSIM_FIXTURES", &fixtures),
    )?;
    run(
        "clippy: revcall-tester's Windows backend for x86_64-pc-windows-msvc",
        cargo().args([
            "clippy",
            "--package",
            "revcall-tester",
            "--target",
            DRIVER_TARGET,
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    scenario_is_clean(&sys, "demo")?;
    scenario_is_clean(&sys, "surprise-removal")?;
    scenario_is_clean(&sys, "disk")?;
    scenario_is_clean(&sys, "kernel-client")?;
    torture_is_clean(&sys)?;
    faults_are_handled(&sys)?;
    selftest_passes(&sys)?;
    remove_on_storsim(&sys)?;
    bench_runs(
        &sys,
        &fixtures.join("floor.sys"),
        &fixtures.join("nulldisk.sys"),
    )?;
    if have_mingw() {
        build_tester_exe()?;
    } else {
        eprintln!(
            "==> skipped: revcall-tester.exe (install mingw-w64: apt-get install gcc-mingw-w64-x86-64)"
        );
    }
    match wine::wine64() {
        Some(wine64) if have_mingw() => wine_run(&wine64)?,
        _ => eprintln!(
            "==> skipped: revcall.sys under Wine (install wine, wine64 and mingw-w64: \
             apt-get install --no-install-recommends wine wine64 gcc-mingw-w64-x86-64)"
        ),
    }
    Ok(())
}

const TESTER_EXE_TARGET: &str = "x86_64-pc-windows-gnu";
const MINGW_LINKER: &str = "x86_64-w64-mingw32-gcc";

/// Links revcall-tester.exe with mingw-w64 and checks it is a Windows console program.
fn build_tester_exe() -> Result<PathBuf> {
    run(
        "link revcall-tester.exe (x86_64-pc-windows-gnu)",
        cargo()
            .args([
                "build",
                "--package",
                "revcall-tester",
                "--release",
                "--target",
                TESTER_EXE_TARGET,
            ])
            // Scoped to this build: the gnu target is used for nothing else.
            .env("CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER", MINGW_LINKER),
    )?;
    let exe = workspace_root()
        .join("target")
        .join(TESTER_EXE_TARGET)
        .join("release")
        .join("revcall-tester.exe");
    let image = std::fs::read(&exe).with_context(|| format!("reading {}", exe.display()))?;
    // PE32+ with the console subsystem (3): the optional header's Subsystem at offset 68.
    let pe = image
        .get(0x3C..0x40)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .context("no DOS header")?;
    let subsystem = image
        .get(pe + 24 + 68..pe + 24 + 70)
        .map(|b| u16::from_le_bytes([b[0], b[1]]));
    if image.get(pe..pe + 4) != Some(b"PE\0\0") || subsystem != Some(3) {
        bail!("{} is not a Windows console executable", exe.display());
    }
    Ok(exe)
}

/// Whether the mingw-w64 linker is installed (.ci/run installs it when it can).
fn have_mingw() -> bool {
    have(MINGW_LINKER)
}

/// Whether `program --version` runs.
fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The tester's suite against storsim, as users run it: zero failed, at least 25 passed.
fn selftest_passes(sys: &Path) -> Result<()> {
    eprintln!("==> revcall-tester --sim revcall.sys selftest --json");
    let output = tester_on_storsim(sys, &["selftest", "--json"])?;
    let report = json_report(&output, "revcall-tester")?;
    let (passed, failed) = (report["passed"].as_u64(), report["failed"].as_u64());
    eprintln!(
        "    backend {}, passed {passed:?}, failed {failed:?}, skipped {}",
        report["backend"], report["skipped"]
    );
    if !output.status.success() || failed != Some(0) || passed.is_none_or(|p| p < 25) {
        bail!(
            "the self-test did not pass:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// `revcall-tester --sim revcall.sys <args>`.
fn tester_on_storsim(sys: &Path, args: &[&str]) -> Result<std::process::Output> {
    cargo()
        .args([
            "run",
            "--quiet",
            "--release",
            "--package",
            "revcall-tester",
            "--",
            "--sim",
        ])
        .arg(sys)
        .args(args)
        .output()
        .context("running revcall-tester")
}

/// `revcall-tester remove` on storsim: the PnP removal, and a verifier with nothing to say
/// after it (the exit status).
fn remove_on_storsim(sys: &Path) -> Result<()> {
    eprintln!("==> revcall-tester --sim revcall.sys remove --json");
    let output = tester_on_storsim(sys, &["--json", "remove"])?;
    let report = json_report(&output, "revcall-tester")?;
    if !output.status.success() || report["removed"] != serde_json::json!(["storsim adapter"]) {
        bail!(
            "remove did not remove the adapter cleanly:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// `storsim <subcommand…>` from a release build of storsim; the caller adds the rest.
fn storsim(subcommand: &[&str]) -> Command {
    let mut command = cargo();
    command
        .args([
            "run",
            "--quiet",
            "--release",
            "--package",
            "revcall-sim",
            "--bin",
            "storsim",
            "--",
        ])
        .args(subcommand);
    command
}

/// `storsim run <sys>`; the caller adds the options.
fn storsim_run(sys: &Path) -> Command {
    let mut command = storsim(&["run"]);
    command.arg(sys);
    command
}

/// A short `storsim bench --json`: every figure is produced, and the driver's instruction counts
/// (deterministic, unlike wall time) stay within the targets. Without valgrind only the
/// throughput and latency scripts run.
fn bench_runs(sys: &Path, floor: &Path, nulldisk: &Path) -> Result<()> {
    let cost = have("valgrind");
    eprintln!(
        "==> storsim bench (short, --json{})",
        if cost {
            ""
        } else {
            ", --no-cost: valgrind missing"
        }
    );
    let mut command = storsim(&["bench"]);
    command
        .arg(sys)
        .arg("--floor")
        .arg(floor)
        .arg("--nulldisk")
        .arg(nulldisk)
        .args([
            "--irps",
            "500",
            "--disk-ios",
            "400",
            "--pairs",
            "1",
            "--samples",
            "50",
            "--json",
        ]);
    if !cost {
        command.arg("--no-cost");
    }
    let output = command.output().context("running storsim bench")?;
    let report = json_report(&output, "storsim bench")?;
    let rows = report["throughput"].as_array().map_or(0, Vec::len);
    let rates_ok = report["throughput"].as_array().is_some_and(|rows| {
        rows.iter().all(|r| {
            [
                "revcall_events_per_s",
                "floor_events_per_s",
                "revcall_events_per_cpu_s",
                "floor_events_per_cpu_s",
            ]
            .iter()
            .all(|key| r[key].as_f64().is_some_and(|v| v > 0.0 && v.is_finite()))
        })
    });
    let disk_rows = report["disk"].as_array().map_or(0, Vec::len);
    let disk_ok = report["disk"].as_array().is_some_and(|rows| {
        rows.iter().all(|r| {
            r["revcall_iops"].as_f64().is_some_and(|v| v > 0.0)
                && r["floor_iops"].as_f64().is_some_and(|v| v > 0.0)
        })
    });
    let headline = &report["headline"];
    eprintln!(
        "    {}",
        String::from_utf8_lossy(&output.stderr)
            .trim_end()
            .lines()
            .last()
            .unwrap_or("")
    );
    if !output.status.success() || rows != 6 || !rates_ok || disk_rows != 19 || !disk_ok {
        bail!(
            "storsim bench did not measure every case:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    if cost && headline["cost_targets_met"] != serde_json::Value::Bool(true) {
        bail!(
            "the driver's instruction counts exceed their targets (≤ 300 per event per waiter, \
             ≤ 200 per park, cancel growth within 10%): {} per event, {} per park, growth {}",
            headline["instr_per_event"],
            headline["instr_per_park"],
            headline["cancel_growth"]
        );
    }
    // The data path's target (600 with 32 in flight, one copy), and one at a time no worse.
    let disk_within =
        |key: &str, ceiling: f64| headline[key].as_f64().is_some_and(|v| v <= ceiling);
    if cost
        && !(headline["disk_cost_targets_met"] == serde_json::Value::Bool(true)
            && disk_within("instr_per_disk_io", DISK_IO_ONE_AT_A_TIME_CEILING))
    {
        bail!(
            "the data path's cost exceeds its target or regressed: {} instructions per 4 KiB I/O \
             with 32 in flight (target ≤ 600), {} payload copies (exactly 1), {} one at a time \
             (ceiling {})",
            headline["instr_per_disk_io_queued"],
            headline["copies_per_disk_io"],
            headline["instr_per_disk_io"],
            DISK_IO_ONE_AT_A_TIME_CEILING
        );
    }
    Ok(())
}

/// Instructions in revcall.sys per 4 KiB I/O one at a time the test command allows (no target:
/// each I/O carries a FETCH and a COMMIT of its own): today's 1,292–1,297 with room for code
/// layout, so that it does not creep back up unnoticed.
const DISK_IO_ONE_AT_A_TIME_CEILING: f64 = 1_400.0;

/// The one JSON object `tool` printed on stdout.
fn json_report(output: &std::process::Output, tool: &str) -> Result<serde_json::Value> {
    serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "{tool} printed no JSON report: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// The full run docs/RELIABILITY.md reports (`cargo xtask torture`).
const FULL_TORTURE: [&str; 6] = ["--cpus", "4", "--ops", "1000000", "--removals", "100"];

/// The full disk torture docs/RELIABILITY.md reports (`cargo xtask disk-torture`).
const FULL_DISK_TORTURE: [&str; 6] = ["--cpus", "4", "--ios", "1000000", "--removals", "100"];

/// A short torture run in the test command: 4 CPUs, 20,000 operations, 5 removal cycles, the
/// kernel client loaded above each adapter instance; it must pass with no violation, no broken
/// invariant and nothing outstanding.
fn torture_is_clean(sys: &Path) -> Result<()> {
    eprintln!(
        "==> storsim torture: revcall.sys and revcall-client.sys, 4 CPUs, 20000 ops, 5 removals, --json"
    );
    let output = storsim(&["torture"])
        .arg(sys)
        .arg("--client")
        .arg(sys.with_file_name("revcall-client.sys"))
        .args([
            "--cpus",
            "4",
            "--ops",
            "20000",
            "--removals",
            "5",
            "--no-shrink",
            "--json",
        ])
        .output()
        .context("running storsim torture")?;
    let report = json_report(&output, "storsim torture")?;
    let violations = report["violations"].as_array().map_or(usize::MAX, Vec::len);
    let failures = report["failures_total"].as_u64();
    eprintln!(
        "    {} ops in {:.1} s, violations {violations}, invariant failures {failures:?}, IRPs issued {} / outstanding {}, events fired {} / delivered {} / lost {}",
        report["ops_total"],
        report["elapsed_s"].as_f64().unwrap_or(f64::NAN),
        report["irps"]["issued"],
        report["irps"]["outstanding"],
        report["events"]["fired"],
        report["events"]["delivered"],
        report["events"]["lost"]
    );
    let client = &report["kernel_client"];
    eprintln!(
        "    kernel client: {} lives, {} events delivered, {} lost, ends {}",
        client["lives"], client["delivered"], client["lost"], client["ends"]
    );
    if !output.status.success()
        || report["passed"] != serde_json::Value::Bool(true)
        || violations != 0
        || failures != Some(0)
    {
        bail!(
            "the torture run failed:\n{}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
    Ok(())
}

/// The systematic low-resources run: every fallible site the driver reaches fails once.
fn faults_are_handled(sys: &Path) -> Result<()> {
    eprintln!("==> storsim faults: revcall.sys, each fallible site failing once");
    let output = storsim(&["faults"])
        .arg(sys)
        .output()
        .context("running storsim faults")?;
    eprint!("{}", String::from_utf8_lossy(&output.stdout));
    if !output.status.success() {
        bail!("the systematic low-resources run failed");
    }
    Ok(())
}

/// The main job's scenario, and the surprise removal's, as tests: `storsim run revcall.sys
/// --scenario <name> --json` on 4 emulated CPUs must report no violation and leave no IRP
/// outstanding.
fn scenario_is_clean(sys: &Path, scenario: &str) -> Result<()> {
    eprintln!("==> storsim: revcall.sys, {scenario} scenario, 4 CPUs, --json");
    let output = storsim_run(sys)
        .args(["--scenario", scenario, "--cpus", "4", "--json"])
        .output()
        .context("running storsim")?;
    let report = json_report(&output, "storsim")?;
    let violations = report["violations"].as_array().map_or(usize::MAX, Vec::len);
    let outstanding = report["irps"]["outstanding"].as_u64();
    let srbs = report["port"]["srbs_outstanding"].as_u64();
    let verified = report["port"]["bytes_verified"].as_u64().unwrap_or(0);
    eprintln!(
        "    violations: {violations}, IRPs issued {} / completed {} / outstanding {:?}, events fired {} / delivered {}",
        report["irps"]["issued"],
        report["irps"]["completed"],
        outstanding,
        report["events"]["fired"],
        report["events"]["delivered"]
    );
    if scenario == "disk" {
        eprintln!(
            "    disk: {} bytes written, {verified} verified, SRBs outstanding {srbs:?}",
            report["port"]["bytes_written"]
        );
    }
    if let Some(figures) = report["figures"].as_object().filter(|f| !f.is_empty()) {
        let figures: Vec<String> = figures.iter().map(|(k, v)| format!("{k} {v}")).collect();
        eprintln!("    figures: {}", figures.join(", "));
    }
    let disk_ok = scenario != "disk" || verified > 0;
    if !output.status.success()
        || violations != 0
        || outstanding != Some(0)
        || srbs != Some(0)
        || !disk_ok
    {
        bail!(
            "the {scenario} scenario is not clean:\n{}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
    Ok(())
}
