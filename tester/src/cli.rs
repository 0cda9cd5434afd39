//! The `revcall-tester` command line: `list`, `watch`, `fire`, `discover`, `stats`, `disk`,
//! `selftest`, each with `--json`; `--sim <revcall.sys>` runs against storsim instead of Windows.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};
use revcall_protocol::{CURSOR_NOW, EventKind};
use serde_json::json;

use crate::client::{Adapter, Watcher};
use crate::selftest;
use crate::transport::Transport;

#[derive(Parser)]
#[command(
    name = "revcall-tester",
    about = "Drive revcall's service-IRP channel: watch events, inject them, check the driver"
)]
pub struct Cli {
    /// Run against storsim with this driver image instead of the installed driver.
    #[arg(long, global = true, value_name = "REVCALL_SYS")]
    sim: Option<PathBuf>,
    /// On Windows: the adapter's SCSI port (\\.\ScsiN:); default: the first revcall adapter.
    #[arg(long, global = true)]
    port: Option<u32>,
    /// Machine-readable output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List revcall adapters.
    List,
    /// Print events as they arrive (Ctrl-C stops and cancels the outstanding WAITs).
    Watch {
        /// WAITs kept outstanding.
        #[arg(long, default_value_t = 2)]
        waiters: usize,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long)]
        seconds: Option<u64>,
        /// Start from every retained event instead of only new ones.
        #[arg(long)]
        from_start: bool,
        /// Also inject this many events (one every 10 ms), to see the channel move.
        #[arg(long, default_value_t = 0)]
        fire: u64,
    },
    /// Inject a test event.
    Fire {
        #[arg(long, default_value_t = 1)]
        code: u32,
        #[arg(long, default_value_t = 0)]
        value: u64,
    },
    /// Start a device discovery that completes later (through the Storport timer).
    Discover {
        #[arg(long, default_value_t = 100)]
        delay_ms: u32,
        /// Wait for the DiscoveryComplete event.
        #[arg(long)]
        wait: bool,
    },
    /// The channel's counters.
    Stats,
    /// Virtual disks: create, list, remove, and serve one from memory.
    Disk {
        #[command(subcommand)]
        action: DiskAction,
    },
    /// The self-test suite (exit 0 only if every case passed).
    Selftest,
    /// Remove revcall's adapters from the system, as Device Manager's "Uninstall device" does
    /// (SetupAPI DIF_REMOVE; elevated): parked requests end with the adapter-gone event. With
    /// --sim: storsim's PnP removal.
    Remove,
}

#[derive(Subcommand)]
enum DiskAction {
    /// Create a disk; with --serve, serve it (from memory, or --file) until Ctrl-C, then
    /// remove it.
    Create {
        /// Size: 64MiB, 1GiB, or bytes.
        #[arg(long, default_value = "64MiB")]
        size: String,
        /// SRBs Storport may have outstanding on it (1..=250; default 128).
        #[arg(long, default_value_t = 0)]
        queue_depth: u32,
        /// With --serve: keep the blocks in this file (created, or extended to the size)
        /// instead of memory.
        #[arg(long)]
        file: Option<PathBuf>,
        /// 512 or 4096.
        #[arg(long, default_value_t = 512)]
        block_size: u32,
        /// The disk's serial number (VPD 0x80); default: one of this run.
        #[arg(long)]
        serial: Option<String>,
        #[arg(long)]
        read_only: bool,
        /// Report a write cache: Windows then sends SYNCHRONIZE CACHE.
        #[arg(long)]
        write_cache: bool,
        /// Report UNMAP support: Windows then trims.
        #[arg(long)]
        unmap: bool,
        #[arg(long)]
        serve: bool,
        /// With --serve: stop after this many seconds.
        #[arg(long)]
        seconds: Option<u64>,
    },
    /// List the disks.
    List,
    /// Remove a disk: its outstanding I/O fails and its servers' sessions end.
    Remove { lun: u32 },
    /// Serve an existing disk until Ctrl-C: from memory (its contents start zeroed) or --file.
    Serve {
        lun: u32,
        /// Keep the blocks in this file instead of memory.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Stop after this many seconds.
        #[arg(long)]
        seconds: Option<u64>,
    },
}

/// Runs the command; the process exit code.
pub fn run(cli: Cli) -> i32 {
    match execute(&cli) {
        Ok(code) => code,
        Err(error) => {
            let message = message(&error);
            if cli.json {
                println!("{}", json!({ "error": message }));
            } else {
                eprintln!("revcall-tester: {message}");
            }
            2
        }
    }
}

#[cfg(target_os = "linux")]
fn execute(cli: &Cli) -> anyhow::Result<i32> {
    let Some(driver) = &cli.sim else {
        anyhow::bail!(
            "there is no Windows here: pass --sim <path to revcall.sys> to run against storsim"
        );
    };
    let sim = crate::sim::Sim::start(driver)?;
    let code = command(cli, &sim)?;
    let violations = sim.finish();
    if !violations.is_empty() {
        eprintln!("storsim verifier: {violations:#?}");
        return Ok(1);
    }
    Ok(code)
}

#[cfg(windows)]
fn execute(cli: &Cli) -> anyhow::Result<i32> {
    if cli.sim.is_some() {
        anyhow::bail!("--sim needs Linux: storsim runs the driver in a Linux process");
    }
    if matches!(cli.command, Command::Remove) {
        let removed = crate::windows::remove_adapters()?;
        print(
            cli,
            json!({ "removed": removed }),
            if removed.is_empty() {
                "no revcall adapter to remove".to_owned()
            } else {
                removed
                    .iter()
                    .map(|path| format!("removed {path}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            },
        );
        return Ok(i32::from(removed.is_empty()));
    }
    if matches!(cli.command, Command::List) {
        let found = match cli.port {
            None => crate::windows::list()?,
            // The explicit port is probed even if it is not revcall's: its note says so.
            Some(_) => {
                let adapter = crate::windows::Windows::open_adapter(cli.port)?;
                vec![crate::discovery::Found {
                    note: crate::discovery::probe(&adapter)?,
                    path: adapter.path(),
                }]
            }
        };
        return Ok(print_list(
            cli,
            found.into_iter().map(|f| (f.path, f.note)).collect(),
        ));
    }
    let adapter = crate::windows::Windows::open_adapter(cli.port)?;
    command(cli, &adapter)
}

#[cfg(not(any(windows, target_os = "linux")))]
fn execute(_cli: &Cli) -> anyhow::Result<i32> {
    anyhow::bail!("revcall-tester runs on Windows (the driver) or Linux (storsim)")
}

fn print_list(cli: &Cli, adapters: Vec<(String, String)>) -> i32 {
    if cli.json {
        let list: Vec<_> = adapters
            .iter()
            .map(|(path, note)| json!({ "path": path, "note": note }))
            .collect();
        println!("{}", json!({ "adapters": list }));
    } else if adapters.is_empty() {
        println!("no revcall adapter");
    } else {
        for (path, note) in &adapters {
            println!("{path}  {note}");
        }
    }
    i32::from(adapters.is_empty())
}

fn command<T: Transport>(cli: &Cli, transport: &T) -> anyhow::Result<i32> {
    let adapter = Adapter::open(transport, std::process::id())?;
    let code = match &cli.command {
        Command::List => {
            let stats = adapter.stats()?;
            print_list(
                cli,
                vec![(
                    format!("{} adapter", transport.name()),
                    format!(
                        "revcall: {} parked (cap {}), newest event {}",
                        stats.parked_now, stats.parked_cap, stats.head_seq
                    ),
                )],
            )
        }
        Command::Fire { code, value } => {
            let seq = adapter.fire(*code, *value)?;
            print(cli, json!({ "seq": seq }), format!("event {seq} published"));
            0
        }
        Command::Discover { delay_ms, wait } => discover(cli, &adapter, *delay_ms, *wait)?,
        Command::Remove => {
            let Some(lab) = transport.lab() else {
                anyhow::bail!("the {} backend cannot remove its adapter", transport.name());
            };
            lab.remove();
            let removed = format!("{} adapter", transport.name());
            print(
                cli,
                json!({ "removed": [removed] }),
                format!("removed the {removed}"),
            );
            0
        }
        Command::Disk { action } => disk(cli, transport, &adapter, action)?,
        Command::Stats => {
            let stats = adapter.stats()?;
            print(
                cli,
                serde_json::to_value(StatsView::from(&stats))?,
                stats_table(&stats),
            );
            0
        }
        Command::Watch {
            waiters,
            count,
            seconds,
            from_start,
            fire,
        } => watch(
            cli,
            transport,
            &adapter,
            *waiters,
            *count,
            seconds.map(Duration::from_secs),
            *from_start,
            *fire,
        )?,
        Command::Selftest => {
            let report = selftest::run(transport, |case| {
                if !cli.json {
                    eprintln!(
                        "{:>7}  {:<40} {:>8.1} ms  {}",
                        case.outcome, case.name, case.ms, case.detail
                    );
                }
            });
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "selftest on {}: {} passed, {} failed, {} skipped",
                    report.backend, report.passed, report.failed, report.skipped
                );
            }
            i32::from(report.failed > 0)
        }
    };
    adapter.close();
    Ok(code)
}

/// An error and its causes on one line, each said once: a message that already includes its
/// cause's text (`#[error("cannot read {path}: {source}")]`) is not followed by it again.
fn message(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain().map(ToString::to_string) {
        if text.is_empty() {
            text = cause;
        } else if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// STATS for people: one counter a line, the value right-aligned.
fn stats_table(s: &revcall_protocol::StatsReply) -> String {
    let rows: [(&str, String); 15] = [
        ("WAITs parked now", s.parked_now.to_string()),
        ("WAITs parked at most", s.parked_peak.to_string()),
        ("parked WAITs allowed", s.parked_cap.to_string()),
        ("event ring capacity", s.ring_capacity.to_string()),
        ("newest event", s.head_seq.to_string()),
        ("oldest retained event", s.oldest_seq.to_string()),
        ("events published", s.events_published.to_string()),
        ("  of them injected (FIRE)", s.events_injected.to_string()),
        (
            "events overwritten in the ring",
            s.ring_overwrites.to_string(),
        ),
        ("requests completed", s.completed.to_string()),
        ("  cancelled", s.cancelled.to_string()),
        ("  refused with an error", s.rejected.to_string()),
        ("discoveries started", s.discoveries_started.to_string()),
        ("discoveries completed", s.discoveries_completed.to_string()),
        (
            "adapter removed",
            if s.closed != 0 { "yes" } else { "no" }.to_owned(),
        ),
    ];
    let label = rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    let value = rows.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(l, v)| format!("{l:<label$}  {v:>value$}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn disk<T: Transport>(
    cli: &Cli,
    transport: &T,
    adapter: &Adapter<'_, T>,
    action: &DiskAction,
) -> anyhow::Result<i32> {
    let stop = Arc::new(AtomicBool::new(false));
    let serve = |lun, file: &Option<PathBuf>, seconds| {
        let flag = stop.clone();
        let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));
        crate::disk::serve(transport, lun, file.as_deref(), seconds, &stop, cli.json)
    };
    match action {
        DiskAction::Create {
            size,
            queue_depth,
            file,
            block_size,
            serial,
            read_only,
            write_cache,
            unmap,
            serve: serving,
            seconds,
        } => {
            let shape = crate::disk::Shape {
                size: crate::disk::parse_size(size)?,
                queue_depth: *queue_depth,
                block_size: *block_size,
                serial: serial.clone(),
                read_only: *read_only,
                write_cache: *write_cache,
                unmap: *unmap,
            };
            let lun = adapter.create_lun(shape.spec()?)?;
            if !serving {
                print(cli, json!({ "lun": lun }), format!("LUN {lun} created"));
                return Ok(0);
            }
            if !cli.json {
                let from = file
                    .as_ref()
                    .map_or("memory".to_owned(), |path| path.display().to_string());
                eprintln!(
                    "LUN {lun} created; serving it from {from} (Ctrl-C stops and removes it)"
                );
            }
            let served = serve(lun, file, *seconds);
            // The disk goes with its server, whatever ended the serving.
            let removed = adapter.remove_lun(lun);
            let served = served?;
            if let Err(error) = removed
                && !served.ended_by_driver
            {
                return Err(error).context(format!("cannot remove LUN {lun}"));
            }
            print(cli, served.json(), served.text());
        }
        DiskAction::List => {
            let entries = adapter.list_luns()?;
            let list: Vec<_> = entries.iter().map(crate::disk::entry_json).collect();
            print(cli, json!({ "luns": list }), crate::disk::table(&entries));
        }
        DiskAction::Remove { lun } => {
            adapter.remove_lun(*lun)?;
            print(cli, json!({ "removed": lun }), format!("LUN {lun} removed"));
        }
        DiskAction::Serve { lun, file, seconds } => {
            let served = serve(*lun, file, *seconds)?;
            print(cli, served.json(), served.text());
        }
    }
    Ok(0)
}

fn print(cli: &Cli, value: serde_json::Value, text: String) {
    if cli.json {
        println!("{value}");
    } else {
        println!("{text}");
    }
}

fn discover<T: Transport>(
    cli: &Cli,
    adapter: &Adapter<'_, T>,
    delay_ms: u32,
    wait: bool,
) -> anyhow::Result<i32> {
    let watcher = wait
        .then(|| Watcher::start(adapter, 1, CURSOR_NOW, 16))
        .transpose()?;
    let reply = adapter.discover(delay_ms)?;
    let mut completed_after = None;
    if let Some(mut watcher) = watcher {
        let started = Instant::now();
        let deadline = started + Duration::from_millis(u64::from(delay_ms)) + crate::client::PROMPT;
        while completed_after.is_none() && Instant::now() < deadline {
            if let Some(batch) = watcher.next(Duration::from_millis(50))?
                && batch
                    .events
                    .iter()
                    .any(|e| e.kind == EventKind::DiscoveryComplete as u32 && e.arg0 == reply.id)
            {
                completed_after = Some(started.elapsed());
            }
        }
        watcher.stop();
        if completed_after.is_none() {
            anyhow::bail!("discovery {} did not complete", reply.id);
        }
    }
    let ms = completed_after.map(|d| d.as_secs_f64() * 1e3);
    print(
        cli,
        json!({ "id": reply.id, "coalesced": reply.coalesced != 0, "completed_ms": ms }),
        match ms {
            Some(ms) => format!("discovery {} completed after {ms:.1} ms", reply.id),
            None => format!(
                "discovery {} started{}",
                reply.id,
                if reply.coalesced != 0 {
                    " (joined a running one)"
                } else {
                    ""
                }
            ),
        },
    );
    Ok(0)
}

#[allow(clippy::too_many_arguments)]
fn watch<T: Transport>(
    cli: &Cli,
    transport: &T,
    adapter: &Adapter<'_, T>,
    waiters: usize,
    count: Option<u64>,
    limit: Option<Duration>,
    from_start: bool,
    fire: u64,
) -> anyhow::Result<i32> {
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // A second call (tests running several watches) keeps the first handler: fine.
        let _ = ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst));
    }
    let started = Instant::now();
    let mut watcher = Watcher::start(
        adapter,
        waiters,
        if from_start { 0 } else { CURSOR_NOW },
        16,
    )?;
    let mut seen = 0u64;
    let mut ended = false;
    std::thread::scope(|scope| -> anyhow::Result<()> {
        if fire > 0 {
            let stop = stop.clone();
            scope.spawn(move || -> anyhow::Result<()> {
                let injector = Adapter::open(transport, std::process::id())?;
                for i in 0..fire {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    injector.fire(0x7E57, i)?;
                    std::thread::sleep(Duration::from_millis(10));
                }
                injector.close();
                Ok(())
            });
        }
        while !stop.load(Ordering::SeqCst)
            && count.is_none_or(|c| seen < c)
            && limit.is_none_or(|l| started.elapsed() < l)
            && !ended
        {
            let Some(batch) = watcher.next(Duration::from_millis(100))? else {
                continue;
            };
            if batch.lost > 0 {
                print(
                    cli,
                    json!({ "lost": batch.lost }),
                    format!(
                        "!! {} events lost (the ring overflowed before we caught up)",
                        batch.lost
                    ),
                );
            }
            for event in &batch.events {
                seen += 1;
                let kind = EventKind::try_from(event.kind)
                    .map_or_else(|_| format!("kind {}", event.kind), |k| format!("{k:?}"));
                print(
                    cli,
                    json!({ "seq": event.seq, "kind": kind, "arg0": event.arg0, "arg1": event.arg1 }),
                    format!(
                        "#{:<6} {kind:<18} arg0 {:#x} arg1 {:#x}",
                        event.seq, event.arg0, event.arg1
                    ),
                );
            }
            ended = batch.last;
        }
        stop.store(true, Ordering::SeqCst);
        Ok(())
    })?;
    let (delivered, lost) = (watcher.delivered, watcher.lost);
    let cancelled = watcher.stop().len();
    print(
        cli,
        json!({ "delivered": delivered, "lost": lost, "cancelled_waits": cancelled, "adapter_gone": ended }),
        format!("{delivered} events, {lost} lost; {cancelled} outstanding WAITs cancelled"),
    );
    Ok(0)
}

/// STATS as named fields for `--json`.
#[derive(serde::Serialize)]
struct StatsView {
    parked_now: u64,
    parked_peak: u64,
    parked_cap: u64,
    ring_capacity: u64,
    head_seq: u64,
    oldest_seq: u64,
    events_published: u64,
    events_injected: u64,
    ring_overwrites: u64,
    completed: u64,
    cancelled: u64,
    rejected: u64,
    discoveries_started: u64,
    discoveries_completed: u64,
    closed: u64,
}

impl From<&revcall_protocol::StatsReply> for StatsView {
    fn from(s: &revcall_protocol::StatsReply) -> Self {
        Self {
            parked_now: s.parked_now,
            parked_peak: s.parked_peak,
            parked_cap: s.parked_cap,
            ring_capacity: s.ring_capacity,
            head_seq: s.head_seq,
            oldest_seq: s.oldest_seq,
            events_published: s.events_published,
            events_injected: s.events_injected,
            ring_overwrites: s.ring_overwrites,
            completed: s.completed,
            cancelled: s.cancelled,
            rejected: s.rejected,
            discoveries_started: s.discoveries_started,
            discoveries_completed: s.discoveries_completed,
            closed: s.closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot read {path}: {source}")]
    struct Read {
        path: &'static str,
        source: std::io::Error,
    }

    #[test]
    fn an_error_that_prints_its_cause_is_not_followed_by_it_again() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let error = anyhow::Error::new(Read {
            path: "/missing.sys",
            source: io(),
        });
        assert_eq!(message(&error), "cannot read /missing.sys: no such file");
        // A context that does not mention its cause still gets it.
        let error = anyhow::Error::new(io()).context("loading the driver");
        assert_eq!(message(&error), "loading the driver: no such file");
    }

    #[test]
    fn stats_print_as_a_table() {
        let stats = revcall_protocol::StatsReply {
            parked_cap: 1024,
            ring_capacity: 256,
            head_seq: 12,
            closed: 1,
            ..Default::default()
        };
        let table = stats_table(&stats);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 15);
        assert!(lines.iter().all(|l| l.len() == lines[0].len()), "{table}");
        assert!(lines[2].starts_with("parked WAITs allowed") && lines[2].ends_with(" 1024"));
        assert!(lines[4].starts_with("newest event") && lines[4].ends_with("   12"));
        assert!(lines[14].ends_with("yes"));
        assert!(!table.contains("StatsReply"));
    }
}
