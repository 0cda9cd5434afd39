//! `cargo xtask wine`: the unchanged revcall.sys and the real revcall-tester.exe against each
//! other under Wine, whose loader, NT I/O manager, PnP manager and Win32 nobody here wrote.
//!
//! A fresh prefix under target/wine; revcall.sys, the stand-in storport.sys (crate
//! `storport-standin`) and the `foreign` fixture (a miniport without HwProcessServiceRequest,
//! like storahci) installed as kernel services, each with a root-enumerated devnode (Wine's PnP
//! manager then calls AddDevice and sends START_DEVICE, as Windows does for `root\revcall`);
//! one Wine process kept alive for the session (wineserver ends winedevice with the last user
//! process); then the tester's commands, each with a time limit, and checks on what they print.
//! Every process and the prefix go at the end, pass or fail.

use std::cell::Cell;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

/// Where Debian's wine64 lives (it is not on PATH).
const WINE64: &str = "/usr/lib/wine/wine64";
/// wineserver: on PATH through Debian's alternatives, or where libwine puts it.
fn wineserver() -> PathBuf {
    if crate::have("wineserver") {
        PathBuf::from("wineserver")
    } else {
        PathBuf::from("/usr/lib/wine/wineserver")
    }
}

/// wine64's path, if Wine is installed.
pub fn wine64() -> Option<PathBuf> {
    let debian = PathBuf::from(WINE64);
    if debian.exists() {
        return Some(debian);
    }
    crate::have("wine64").then(|| PathBuf::from("wine64"))
}

/// The images the run installs.
pub struct Images {
    pub revcall: PathBuf,
    pub storport: PathBuf,
    pub foreign: PathBuf,
    pub tester: PathBuf,
}

/// A Wine prefix with the drivers installed and one process keeping its wineserver alive.
struct Session {
    wine64: PathBuf,
    prefix: PathBuf,
    log: PathBuf,
    keep_alive: Option<Child>,
    /// revcall's `\\.\ScsiN:` once the selftest's lab has restarted it: Wine does not enable
    /// the storage-port interface a second time, so the tester is pointed at the port.
    port: Cell<Option<u32>>,
}

impl Session {
    fn command(&self, program: &Path) -> Command {
        let mut command = Command::new(program);
        command
            .env("WINEPREFIX", &self.prefix)
            .env("WINEDEBUG", "-all")
            // No Mono or Gecko installer prompts in a fresh prefix.
            .env("WINEDLLOVERRIDES", "mscoree,mshtml=")
            // The Wine lab's verdict reads the stand-in's log (a Windows path: drive Z: is /).
            .env(
                "REVCALL_WINE_LOG",
                format!("Z:{}", self.log.display()).replace('/', "\\"),
            )
            .stdin(Stdio::null());
        command
    }

    fn wine(&self, args: &[&str], limit: Duration) -> Result<Output> {
        let mut command = self.command(&self.wine64);
        command.args(args);
        output_within(command, limit).with_context(|| format!("wine64 {}", args.join(" ")))
    }

    fn tester(&self, args: &[&str], limit: Duration) -> Result<Output> {
        let mut all = vec![r"C:\revcall-tester.exe"];
        all.extend_from_slice(args);
        self.wine(&all, limit)
    }

    /// The tester's JSON answer to `args` (which it must give, exit 0).
    /// The tester's JSON answer to `args` (which it must give, exit 0), on revcall's port
    /// when one is set.
    fn tester_json(&self, args: &[&str]) -> Result<Value> {
        let port = self.port.get().map(|p| p.to_string());
        let mut all = vec!["--json"];
        if let Some(port) = &port {
            all.extend(["--port", port.as_str()]);
        }
        all.extend_from_slice(args);
        let output = self.tester(&all, Duration::from_secs(20))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        ensure!(
            output.status.success(),
            "revcall-tester {}: {}{}",
            all.join(" "),
            stdout,
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_str(stdout.trim())
            .with_context(|| format!("revcall-tester {}: not JSON: {stdout}", all.join(" ")))
    }

    fn stats(&self) -> Result<Value> {
        self.tester_json(&["stats"])
    }

    fn reg_add(&self, key: &str, name: &str, kind: &str, data: &str) -> Result<()> {
        let output = self.wine(
            &["reg", "add", key, "/v", name, "/t", kind, "/d", data, "/f"],
            Duration::from_secs(30),
        )?;
        ensure!(output.status.success(), "reg add {key} {name} failed");
        Ok(())
    }

    /// A kernel service for `name`.sys and a root devnode `ROOT\<NAME>\0000` with hardware id
    /// `root\<name>` whose service it is.
    fn install(&self, name: &str) -> Result<()> {
        let bin = format!(r"C:\windows\system32\drivers\{name}.sys");
        let output = self.wine(
            &[
                "sc", "create", name, "type=", "kernel", "start=", "demand", "binPath=", &bin,
            ],
            Duration::from_secs(30),
        )?;
        ensure!(output.status.success(), "sc create {name} failed");
        self.add_devnode(name)
    }

    /// The root devnode `ROOT\<NAME>\0000` with hardware id `root\<name>`, whose service
    /// `name` is (what `devcon install` leaves in the registry).
    fn add_devnode(&self, name: &str) -> Result<()> {
        let devnode = format!(
            r"HKLM\System\CurrentControlSet\Enum\ROOT\{}\0000",
            name.to_uppercase()
        );
        self.reg_add(&devnode, "Service", "REG_SZ", name)?;
        self.reg_add(
            &devnode,
            "HardwareID",
            "REG_MULTI_SZ",
            &format!(r"root\{name}"),
        )?;
        // The SCSIAdapter class, as revcall.inf installs it.
        self.reg_add(
            &devnode,
            "ClassGUID",
            "REG_SZ",
            "{4d36e97b-e325-11ce-bfc1-08002be10318}",
        )
    }

    fn log_text(&self) -> String {
        std::fs::read(&self.log)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(mut child) = self.keep_alive.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for flag in ["-k", "-w"] {
            let mut server = self.command(&wineserver());
            server.arg(flag);
            let _ = output_within(server, Duration::from_secs(30));
        }
        // wineserver -k has been seen to leave a winedevice.exe behind: end whatever still
        // runs in this prefix before the prefix goes.
        for pid in processes_in(&self.prefix) {
            let _ = Command::new("kill").args(["-9", &pid]).status();
        }
        let _ = std::fs::remove_dir_all(&self.prefix);
    }
}

/// The processes whose environment names `prefix` as their WINEPREFIX.
fn processes_in(prefix: &Path) -> Vec<String> {
    let wanted = format!("WINEPREFIX={}", prefix.display());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            name.parse::<u32>().ok()?;
            let environ = std::fs::read(format!("/proc/{name}/environ")).ok()?;
            environ
                .split(|&b| b == 0)
                .any(|var| var == wanted.as_bytes())
                .then_some(name)
        })
        .collect()
}

/// Runs `command` to the end, or kills it at `limit`. Its output goes through files, not
/// pipes: wine64 may start wineserver, which inherits them and outlives the command.
fn output_within(mut command: Command, limit: Duration) -> Result<Output> {
    static RUNS: AtomicU32 = AtomicU32::new(0);
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    let base = std::env::temp_dir().join(format!("revcall-wine-{}-{run}", std::process::id()));
    let (out_path, err_path) = (base.with_extension("out"), base.with_extension("err"));
    let mut child = command
        .stdout(File::create(&out_path)?)
        .stderr(File::create(&err_path)?)
        .spawn()
        .context("starting it")?;
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |path: &Path| {
        let bytes = std::fs::read(path).unwrap_or_default();
        let _ = std::fs::remove_file(path);
        bytes
    };
    let (stdout, stderr) = (read(&out_path), read(&err_path));
    let Some(status) = status else {
        bail!(
            "did not finish within {} s; it printed: {}{}",
            limit.as_secs(),
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        );
    };
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Polls `probe` every 100 ms until it gives `Some`, or fails after `limit`.
fn wait_for<T>(
    what: &str,
    limit: Duration,
    mut probe: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe()? {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("{what}: not within {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn step(name: &str, detail: impl std::fmt::Display) {
    eprintln!("==> wine: {name}: {detail}");
}

/// The whole run; prints a line per check and the wall time.
pub fn run(wine64: &Path, images: &Images, target: &Path) -> Result<()> {
    let started = Instant::now();
    let root = target.join("wine");
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    let mut session = Session {
        wine64: wine64.to_path_buf(),
        prefix: root.join("prefix"),
        log: root.join("winedevice.log"),
        keep_alive: None,
        port: Cell::new(None),
    };
    if session.prefix.exists() {
        std::fs::remove_dir_all(&session.prefix)?;
    }
    let boot = session.wine(&["wineboot", "--init"], Duration::from_secs(180))?;
    ensure!(boot.status.success(), "wineboot --init failed");
    // A clean wineserver, so the one the session's first process starts below carries the log
    // settings: kill wineboot's, and wait until it has gone (`-k` does not wait).
    for flag in ["-k", "-w"] {
        let mut server = session.command(&wineserver());
        server.arg(flag);
        output_within(server, Duration::from_secs(60))?;
    }
    step(
        "prefix",
        format!(
            "{} ({:.1} s)",
            session.prefix.display(),
            started.elapsed().as_secs_f64()
        ),
    );

    // The session's first process: its stderr is where winedevice's DbgPrint lines land. No
    // other Wine process may start before it is up, or that one starts the session instead.
    let log = std::fs::File::create(&session.log)?;
    let ready = root.join("session.out");
    let mut keep = session.command(&session.wine64);
    keep.args(["cmd", "/k", "echo", "session ready"])
        .env("WINEDEBUG", "+debugstr")
        .stdin(Stdio::piped())
        .stdout(File::create(&ready)?)
        .stderr(log);
    session.keep_alive = Some(keep.spawn().context("starting the session's cmd")?);
    wait_for("the session's cmd", Duration::from_secs(60), || {
        Ok(std::fs::read_to_string(&ready)
            .is_ok_and(|out| out.contains("session ready"))
            .then_some(()))
    })?;
    let drivers = session.prefix.join("drive_c/windows/system32/drivers");
    for (image, name) in [
        (&images.revcall, "revcall.sys"),
        (&images.storport, "storport.sys"),
        (&images.foreign, "foreign.sys"),
    ] {
        std::fs::copy(image, drivers.join(name))
            .with_context(|| format!("installing {}", image.display()))?;
    }
    std::fs::copy(
        &images.tester,
        session.prefix.join("drive_c/revcall-tester.exe"),
    )?;
    session.install("foreign")?;
    session.install("revcall")?;
    session.reg_add(
        r"HKLM\System\CurrentControlSet\Services\revcall\Parameters\Device",
        "EnableFireInjection",
        "REG_DWORD",
        "1",
    )?;

    for service in ["foreign", "revcall"] {
        // 1056: already running (Wine starts a driver when it enumerates its devnode).
        let output = session.wine(&["sc", "start", service], Duration::from_secs(60))?;
        let text = String::from_utf8_lossy(&output.stdout);
        ensure!(
            output.status.success()
                || text.contains("1056")
                || session.log_text().contains("adapter started"),
            "sc start {service}: {text}"
        );
    }

    let adapters = wait_for(
        "revcall's adapter in `list`",
        Duration::from_secs(60),
        || {
            let list = session.tester_json(&["list"]);
            Ok(list.ok().and_then(|list| {
                list["adapters"]
                    .as_array()
                    .filter(|a| !a.is_empty())
                    .cloned()
            }))
        },
    )?;
    ensure!(
        adapters.len() == 1
            && adapters[0]["path"]
                .as_str()
                .is_some_and(|p| p.to_lowercase().contains(r"root#revcall#")),
        "list: expected revcall's one devnode (the foreign adapter is not revcall's): {adapters:?}"
    );
    step("list", adapters[0]["path"].as_str().unwrap_or_default());

    // Both adapters' \\.\ScsiN: links: revcall's answers STATS, the foreign one refuses the
    // service IOCTL at once (STATUS_NOT_SUPPORTED) and the probe returns.
    let (ours, foreign) = probe_ports(&session)?;
    ensure!(
        ours.len() == 1 && foreign.len() == 1,
        "ports: expected one revcall adapter and one foreign one, got revcall {ours:?}, foreign {foreign:?}"
    );
    step(
        "foreign adapter",
        format!(
            "\\\\.\\Scsi{}: refused the service IOCTL with STATUS_NOT_SUPPORTED, the probe done in {} ms; revcall is \\\\.\\Scsi{}:",
            foreign[0].0,
            foreign[0].1.as_millis(),
            ours[0]
        ),
    );

    let fired = session.tester_json(&["fire", "--code", "7", "--value", "9"])?;
    let seq = fired["seq"].as_u64().context("fire: no seq")?;
    let stats = session.stats()?;
    ensure!(
        stats["head_seq"].as_u64() == Some(seq) && stats["events_injected"].as_u64() == Some(1),
        "after FIRE {seq}: {stats}"
    );
    step("fire", format!("event {seq} published, STATS agrees"));

    let discover = session.tester(&["discover", "--wait"], Duration::from_secs(20))?;
    let text = String::from_utf8_lossy(&discover.stdout);
    ensure!(
        discover.status.success() && text.contains("completed"),
        "discover --wait: {text}{}",
        String::from_utf8_lossy(&discover.stderr)
    );
    step("discover", text.trim());

    process_exit(&session)?;
    selftest(&session)?;
    let restarted = probe_ports(&session)?.0;
    ensure!(
        restarted.len() == 1,
        "after the selftest's restarts: revcall answers on ports {restarted:?}"
    );
    session.port.set(restarted.first().copied());
    disk_served(&session)?;
    removal_and_restart(&session)?;

    let log = session.log_text();
    // foreign's, revcall's, revcall's after each of the selftest's two restarts and after
    // the run's own.
    let started_adapters = log.matches("storport: adapter started").count();
    ensure!(
        started_adapters == 5,
        "winedevice's log shows {started_adapters} adapter starts, not 5:\n{log}"
    );
    for bad in ["storport: panic", "RUNDOWN STUCK", "revcall: panic"] {
        ensure!(!log.contains(bad), "winedevice's log has `{bad}`:\n{log}");
    }
    step(
        "done",
        format!(
            "{:.1} s wall; winedevice's log: {}",
            started.elapsed().as_secs_f64(),
            session.log.display()
        ),
    );
    Ok(())
}

/// A `watch` process parks WAITs and is killed: Wine ends its requests, which must reach
/// revcall's cancel routine (every WAIT cancelled, none left parked).
fn process_exit(session: &Session) -> Result<()> {
    let before = session.stats()?;
    let mut watch = session.command(&session.wine64);
    watch
        .args([r"C:\revcall-tester.exe", "watch", "--waiters", "3"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = watch.spawn().context("starting watch")?;
    let parked = wait_for("3 WAITs parked by watch", Duration::from_secs(20), || {
        let stats = session.stats()?;
        Ok((stats["parked_now"].as_u64() == Some(3)).then_some(()))
    });
    let _ = child.kill();
    let _ = child.wait();
    parked?;
    let cancelled_before = before["cancelled"].as_u64().unwrap_or(0);
    let after = wait_for(
        "the killed watch's WAITs cancelled",
        Duration::from_secs(20),
        || {
            let stats = session.stats()?;
            Ok((stats["parked_now"].as_u64() == Some(0)).then_some(stats))
        },
    )?;
    let cancelled = after["cancelled"].as_u64().unwrap_or(0) - cancelled_before;
    ensure!(
        cancelled == 3,
        "process exit: {cancelled} WAITs cancelled, not 3: {after}"
    );
    step(
        "process exit",
        "watch killed with 3 WAITs parked: 3 cancelled through revcall's cancel routine, 0 parked",
    );
    Ok(())
}

/// Ports that answered as revcall; ports that refused the service IOCTL, with the probe's time.
type Ports = (Vec<u32>, Vec<(u32, Duration)>);

/// Probes `\\.\Scsi0:` … `\\.\Scsi3:` with STATS: the ports that answered as revcall, and
/// those that refused the service IOCTL with STATUS_NOT_SUPPORTED (with how long the probe
/// took); a port with no adapter fails to open and is in neither.
fn probe_ports(session: &Session) -> Result<Ports> {
    let (mut ours, mut foreign) = (Vec::new(), Vec::new());
    for port in 0..4u32 {
        let port_arg = port.to_string();
        let probe_started = Instant::now();
        let output = session.tester(
            &["--port", &port_arg, "--json", "stats"],
            Duration::from_secs(15),
        )?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if output.status.success() {
            ours.push(port);
        } else if text.contains("STATUS_NOT_SUPPORTED") {
            foreign.push((port, probe_started.elapsed()));
        }
    }
    Ok((ours, foreign))
}

/// `disk create --serve`: a LUN created from user mode, found by the stand-in's scan after
/// BusChangeDetected, its block 0 read by the stand-in (as the partition manager would) and
/// served from the tester's memory, then removed when the tester stops serving.
fn disk_served(session: &Session) -> Result<()> {
    let before = session
        .log_text()
        .matches("READ of block 0: SRB status 0x1")
        .count();
    let served = session.tester_json(&[
        "disk",
        "create",
        "--size",
        "1MiB",
        "--serve",
        "--seconds",
        "3",
    ])?;
    let srbs = served["served"].as_u64().unwrap_or(0);
    let log = session.log_text();
    let read = log.matches("READ of block 0: SRB status 0x1").count() - before;
    ensure!(
        srbs >= 1 && read == 1,
        "disk create --serve: {srbs} SRBs served, {read} first READs succeeded: {served}\n{log}"
    );
    let luns = session.tester_json(&["disk", "list"])?;
    ensure!(
        luns.as_array().is_some_and(Vec::is_empty)
            || luns["luns"].as_array().is_some_and(Vec::is_empty),
        "disk list after the server stopped: {luns}"
    );
    step(
        "disk",
        format!(
            "a 1 MiB LUN created, found by the stand-in's scan, {srbs} SRBs served from user mode (block 0 read by the stand-in), removed"
        ),
    );
    Ok(())
}

/// A `watch` parks WAITs; `revcall-tester remove` removes the devnode (SetupAPI DIF_REMOVE:
/// Wine's PnP manager sends SURPRISE_REMOVAL, then REMOVE_DEVICE); the watch must see the
/// adapter go and end by itself, the stand-in's rundown wait must end, the service must then
/// stop (Wine refuses while a PnP device is left). Restarted with `EnableFireInjection=0`,
/// revcall must refuse FIRE.
fn removal_and_restart(session: &Session) -> Result<()> {
    let watch_out = session.prefix.with_file_name("watch.out");
    let port = session.port.get().context("revcall's port")?.to_string();
    let mut watch = session.command(&session.wine64);
    watch
        .args([
            r"C:\revcall-tester.exe",
            "--json",
            "--port",
            &port,
            "watch",
            "--waiters",
            "3",
        ])
        .stdout(File::create(&watch_out)?)
        .stderr(Stdio::null());
    let mut child = watch.spawn().context("starting watch")?;
    let parked = wait_for("3 WAITs parked by watch", Duration::from_secs(20), || {
        let stats = session.stats()?;
        Ok((stats["parked_now"].as_u64() == Some(3)).then_some(()))
    });
    if let Err(error) = parked {
        let _ = child.kill();
        return Err(error);
    }
    let removed = session.tester_json(&["remove"])?;
    ensure!(
        removed["removed"].as_array().is_some_and(|r| {
            r.len() == 1
                && r[0]
                    .as_str()
                    .is_some_and(|id| id.eq_ignore_ascii_case(r"ROOT\REVCALL\0000"))
        }),
        "remove: {removed}"
    );
    let ended = wait_for("watch to end by itself", Duration::from_secs(20), || {
        Ok(child.try_wait()?)
    });
    if ended.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    ended?;
    let lines = std::fs::read_to_string(&watch_out)?;
    let last: Value = lines
        .lines()
        .rev()
        .find_map(|line| serde_json::from_str(line).ok())
        .context("watch printed no JSON")?;
    ensure!(
        last["adapter_gone"] == true && lines.contains("SurpriseRemoved"),
        "watch did not see the adapter go:\n{lines}"
    );
    let log = session.log_text();
    ensure!(
        log.contains("surprise-removed") && log.contains(": removed"),
        "winedevice's log shows no surprise removal and removal:\n{log}"
    );
    let list = session.tester(&["--json", "list"], Duration::from_secs(20))?;
    ensure!(
        String::from_utf8_lossy(&list.stdout).contains(r#""adapters":[]"#),
        "list after removal: {}",
        String::from_utf8_lossy(&list.stdout)
    );
    step(
        "removal",
        "DIF_REMOVE with 3 WAITs parked: SurpriseRemoved delivered, watch ended (adapter gone), rundown done, no adapter listed",
    );

    session.wine(&["sc", "stop", "revcall"], Duration::from_secs(30))?;
    wait_for("revcall's service to stop", Duration::from_secs(30), || {
        let query = session.wine(&["sc", "query", "revcall"], Duration::from_secs(20))?;
        Ok(String::from_utf8_lossy(&query.stdout)
            .contains("STOPPED")
            .then_some(()))
    })?;
    session.reg_add(
        r"HKLM\System\CurrentControlSet\Services\revcall\Parameters\Device",
        "EnableFireInjection",
        "REG_DWORD",
        "0",
    )?;
    session.add_devnode("revcall")?;
    session.wine(&["sc", "start", "revcall"], Duration::from_secs(60))?;
    // Wine 8 does not enable the storage-port interface of a devnode a second time in one
    // session (IoSetDeviceInterfaceState fails with STATUS_OBJECT_TYPE_MISMATCH; the stand-in
    // logs it), so the restarted adapter is reached by its \\.\ScsiN: link.
    let port = wait_for(
        "the restarted adapter's port",
        Duration::from_secs(60),
        || Ok(probe_ports(session)?.0.first().copied()),
    )?;
    let port_arg = port.to_string();
    session.port.set(Some(port));
    let stats = session.stats()?;
    ensure!(
        stats["events_injected"].as_u64() == Some(0) && stats["parked_now"].as_u64() == Some(0),
        "the restarted adapter is not a fresh one: {stats}"
    );
    let fire = session.tester(&["--port", &port_arg, "fire"], Duration::from_secs(20))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&fire.stdout),
        String::from_utf8_lossy(&fire.stderr)
    );
    ensure!(
        !fire.status.success() && text.contains("STATUS_NOT_SUPPORTED"),
        "FIRE with EnableFireInjection=0: {text}"
    );
    step(
        "restart",
        "service stopped, devnode re-added, service started: a fresh adapter; EnableFireInjection=0 → FIRE refused with STATUS_NOT_SUPPORTED",
    );
    Ok(())
}

/// The tester's self-test: everything passes but the cases listed above.
fn selftest(session: &Session) -> Result<()> {
    let output = session.tester(&["--json", "selftest"], Duration::from_secs(180))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: Value = serde_json::from_str(stdout.trim())
        .with_context(|| format!("selftest: not JSON: {stdout}"))?;
    let cases = report["cases"].as_array().context("selftest: no cases")?;
    let named = |outcome: &str| -> Vec<String> {
        cases
            .iter()
            .filter(|c| c["outcome"] == outcome)
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            .collect()
    };
    let (passed, failed, skipped) = (named("passed"), named("failed"), named("skipped"));
    ensure!(
        failed.is_empty(),
        "selftest on Wine: {failed:?} failed:\n{stdout}"
    );
    ensure!(
        skipped.is_empty(),
        "selftest on Wine: {skipped:?} skipped:\n{stdout}"
    );
    ensure!(
        passed.len() >= 33,
        "selftest on Wine: only {} passed",
        passed.len()
    );
    step(
        "selftest",
        format!(
            "{} passed, 0 failed, 0 skipped (the lab cases through the Wine lab: CancelIoEx, DIF_REMOVE, service restart, the stand-in's log)",
            passed.len()
        ),
    );
    Ok(())
}
