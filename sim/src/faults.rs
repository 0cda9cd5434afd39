//! `storsim faults`: the systematic low-resources run. A short script (load, start, WAIT, FIRE,
//! DISCOVER, STATS, a cancel, removal, a new adapter instance, removal, unload) runs once to
//! find which fallible sites the driver reaches, then once per site with the first call there
//! failing. Each run must end with the failure visible as a clear status (a refused load, a
//! failed start, a request refused with STATUS_INSUFFICIENT_RESOURCES), every IRP completed
//! exactly once, no verifier violation and no leak.

use std::path::Path;
use std::sync::Arc;
use storport_abi::status::Named;

use revcall_protocol::status::{STATUS_CANCELLED, STATUS_NOT_SUPPORTED, STATUS_SUCCESS};
use revcall_protocol::{CURSOR_NOW, EventKind, Reply, Request as Wire, decode_reply};
use serde::Serialize;

use super::client::{Channel, PROMPT};
use storport_abi::status::user::STATUS_INSUFFICIENT_RESOURCES;
use storsim::driver::RunError;
use storsim::faults::{FaultPlan, Site};
use storsim::io::Request;
use storsim::kernel::Kernel;
use storsim::machine::{Config, Label};
use storsim::port::StartError;
use storsim::report::Summary;
use storsim::verifier::BugCheck;

/// One site's run.
#[derive(Clone, Debug, Serialize)]
pub struct SiteRun {
    pub site: Site,
    pub name: &'static str,
    /// Calls at this site in the run without failures.
    pub calls: u64,
    /// How the failure showed (empty when the site is never called).
    pub seen: Vec<String>,
    pub passed: bool,
    pub violations: Vec<BugCheck>,
    pub failures: Vec<String>,
}

/// The whole systematic run.
#[derive(Clone, Debug, Serialize)]
pub struct FaultsReport {
    pub driver: String,
    pub sites: Vec<SiteRun>,
    pub passed: bool,
}

impl FaultsReport {
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report is plain data")
    }

    pub fn text(&self) -> String {
        let mut out = format!("storsim faults: {}\n", self.driver);
        for run in &self.sites {
            let verdict = match (run.calls, run.passed) {
                (0, _) => "not called",
                (_, true) => "ok",
                (_, false) => "FAIL",
            };
            out += &format!(
                "  {:<34} {:>5} calls  {verdict:<10} {}\n",
                run.name,
                run.calls,
                run.seen.join("; ")
            );
            for bug in &run.violations {
                out += &format!("{bug}\n");
            }
            for failure in &run.failures {
                out += &format!("    failure: {failure}\n");
            }
        }
        out += if self.passed { "PASS\n" } else { "FAIL\n" };
        out
    }
}

/// What one run of the script saw.
#[derive(Default)]
struct Log {
    seen: Vec<String>,
    failures: Vec<String>,
    /// The driver's debug output.
    said: Vec<String>,
}

impl Log {
    fn expect(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.failures.push(what());
        }
    }
}

/// Runs the script without failures, then with the first call at each site failing.
pub fn systematic(driver: &Path, seed: u64) -> FaultsReport {
    let (baseline, quiet, _) = once(driver, seed, None);
    let mut sites = Vec::new();
    for count in baseline {
        let (calls, name) = (count.calls, count.site.name());
        if calls == 0 {
            sites.push(SiteRun {
                site: count.site,
                name,
                calls,
                seen: Vec::new(),
                passed: true,
                violations: Vec::new(),
                failures: Vec::new(),
            });
            continue;
        }
        let (after, mut log, summary) = once(driver, seed, Some(count.site));
        // What the driver said about it: debug output the clean run did not print.
        log.seen.extend(
            log.said
                .iter()
                .filter(|line| !quiet.said.contains(line))
                .map(|line| format!("driver: {line}")),
        );
        let mut failures = log.failures;
        let failed = after
            .iter()
            .find(|c| c.site == count.site)
            .map_or(0, |c| c.failed);
        if failed != 1 {
            failures.push(format!("{failed} failures injected, expected 1"));
        }
        sites.push(SiteRun {
            site: count.site,
            name,
            calls,
            seen: log.seen,
            passed: failures.is_empty() && summary.violations.is_empty(),
            violations: summary.violations,
            failures,
        });
    }
    FaultsReport {
        driver: driver.display().to_string(),
        passed: sites.iter().all(|s| s.passed),
        sites,
    }
}

fn once(
    driver: &Path,
    seed: u64,
    site: Option<Site>,
) -> (Vec<storsim::faults::SiteCount>, Log, Summary) {
    let session = Kernel::boot(Config {
        seed,
        // Kept for the driver's debug output, which lands there.
        timeline: true,
        faults: FaultPlan {
            rate: 0.0,
            first_at: site,
        },
        ..Config::default()
    });
    let kernel = session.kernel().clone();
    kernel.name_run(Label {
        driver: driver.display().to_string(),
        scenario: format!(
            "faults (reproduce: storsim faults {} --seed {seed})",
            driver.display()
        ),
        cpus: 1,
        json: false,
    });
    let mut log = Log::default();
    match storsim::driver::load(&kernel, driver) {
        Err(RunError::DriverEntry { status, .. }) => {
            log.seen.push(format!(
                "load refused: DriverEntry returned {}",
                Named(status)
            ));
            log.expect(status == STATUS_INSUFFICIENT_RESOURCES, || {
                format!(
                    "DriverEntry to pass on STATUS_INSUFFICIENT_RESOURCES, got {}",
                    Named(status)
                )
            });
        }
        Err(error) => log.failures.push(format!("load: {error}")),
        Ok(_driver) => {
            script(&kernel, &mut log);
            kernel.unload();
        }
    }
    let summary = kernel.summary(None, Vec::new());
    log.expect(summary.irps.outstanding == Some(0), || {
        format!("no IRP outstanding, {:?} are", summary.irps.outstanding)
    });
    let counts = kernel.machine().faults().counts();
    log.said = kernel
        .machine()
        .timeline()
        .into_iter()
        .filter_map(|m| m.what.strip_prefix("DbgPrintEx: ").map(str::to_owned))
        .collect();
    drop(session);
    (counts, log, summary)
}

/// START_DEVICE; a start refused for want of memory is reported, and PnP tries again.
fn start(kernel: &Kernel, log: &mut Log) -> bool {
    for _ in 0..2 {
        match kernel.start_adapter() {
            Ok(()) => return true,
            Err(error @ StartError::NoMemory) => log.seen.push(format!("start failed: {error}")),
            Err(error) => {
                log.failures.push(format!("start: {error}"));
                return false;
            }
        }
    }
    log.failures.push("the adapter never started".into());
    false
}

/// Sends `request`; a DeviceIoControl refused with STATUS_INSUFFICIENT_RESOURCES (no IRP) is
/// reported and sent again, as a client would.
fn send(
    kernel: &Kernel,
    channel: &Channel,
    request: &Wire,
    out_len: u32,
    log: &mut Log,
) -> Option<Arc<Request>> {
    let mut bytes = [0u8; 64];
    let len = revcall_protocol::encode_request(request, &mut bytes)
        .expect("every request record fits 64 bytes");
    for _ in 0..2 {
        match kernel.device_io_control(
            channel.handle,
            revcall_protocol::IOCTL_MINIPORT_PROCESS_SERVICE_IRP,
            &bytes[..len],
            out_len,
        ) {
            Ok(sent) => return Some(sent),
            Err(STATUS_INSUFFICIENT_RESOURCES) => log.seen.push(format!(
                "{:?} refused: STATUS_INSUFFICIENT_RESOURCES",
                request.opcode()
            )),
            Err(status) => {
                log.failures.push(format!(
                    "{:?} refused with {}",
                    request.opcode(),
                    Named(status)
                ));
                return None;
            }
        }
    }
    None
}

/// The request's one completion, within the prompt limit.
fn completed(request: &Request, what: &str, log: &mut Log) -> Option<storsim::io::Outcome> {
    let outcome = request.wait(PROMPT);
    log.expect(outcome.is_some(), || format!("{what} to complete"));
    log.expect(request.completions() <= 1, || {
        format!("{what} completed {} times", request.completions())
    });
    outcome
}

/// A WAIT for what comes next (it parks).
fn wait_next(kernel: &Kernel, channel: &Channel, log: &mut Log) -> Option<Arc<Request>> {
    let next = Wire::Wait {
        cursor: CURSOR_NOW,
        max_events: 4,
    };
    send(kernel, channel, &next, 192, log)
}

fn script(kernel: &Arc<Kernel>, log: &mut Log) {
    if !start(kernel, log) {
        return;
    }
    let channel = Channel::open(kernel, 1);
    let waiting = wait_next(kernel, &channel, log);
    let mut fired = false;
    if let Some(sent) = send(kernel, &channel, &Wire::Fire { code: 7, value: 7 }, 64, log)
        && let Some(outcome) = completed(&sent, "FIRE", log)
    {
        fired = outcome.status == STATUS_SUCCESS;
        if outcome.status == STATUS_NOT_SUPPORTED {
            log.seen.push("FIRE refused: STATUS_NOT_SUPPORTED".into());
        }
        // Only an unreadable registry may disable FIRE (the test hook fails closed).
        log.expect(fired || outcome.status == STATUS_NOT_SUPPORTED, || {
            format!(
                "FIRE to succeed or be refused NOT_SUPPORTED, got {:#x}",
                outcome.status
            )
        });
    }
    // Without an event the WAIT stays parked: removal completes it below.
    let mut at_removal = Vec::new();
    if let Some(waiting) = waiting {
        if fired {
            if let Some(outcome) = completed(&waiting, "the parked WAIT", log) {
                log.expect(outcome.status == STATUS_SUCCESS, || {
                    format!(
                        "the parked WAIT to get the event, got {:#x}",
                        outcome.status
                    )
                });
            }
        } else {
            at_removal.push(waiting);
        }
    }
    let watcher = wait_next(kernel, &channel, log);
    if let Some(sent) = send(kernel, &channel, &Wire::Discover { delay_ms: 1 }, 64, log) {
        completed(&sent, "DISCOVER", log);
    }
    if let Some(watcher) = watcher
        && let Some(outcome) = completed(&watcher, "the WAIT for the discovery", log)
    {
        let discovered = match decode_reply(&outcome.output) {
            Ok(Reply::Wait { mut events, .. }) => {
                events.any(|e| e.kind == EventKind::DiscoveryComplete as u32)
            }
            _ => false,
        };
        log.expect(discovered, || "a DiscoveryComplete event".into());
    }
    if let Some(sent) = send(kernel, &channel, &Wire::Stats, 256, log) {
        completed(&sent, "STATS", log);
    }
    if let Some(doomed) = wait_next(kernel, &channel, log) {
        channel.cancel(&doomed);
        if let Some(outcome) = completed(&doomed, "the cancelled WAIT", log) {
            log.expect(outcome.status == STATUS_CANCELLED, || {
                format!(
                    "the cancelled WAIT to end STATUS_CANCELLED, got {:#x}",
                    outcome.status
                )
            });
        }
    }
    at_removal.extend(wait_next(kernel, &channel, log));
    kernel.remove_adapter(|| {});
    for parked in &at_removal {
        completed(parked, "a WAIT parked at removal", log);
    }
    channel.close();
    // A new adapter instance, driven once more.
    if kernel.add_adapter().is_err() || !start(kernel, log) {
        return log.failures.push("a new adapter instance to start".into());
    }
    let again = Channel::open(kernel, 2);
    if let Some(sent) = send(kernel, &again, &Wire::Fire { code: 8, value: 8 }, 64, log)
        && let Some(outcome) = completed(&sent, "FIRE on the new adapter", log)
    {
        // The failure was the first call only: the new adapter reads its registry again.
        log.expect(outcome.status == STATUS_SUCCESS, || {
            format!(
                "FIRE on the new adapter to succeed, got {:#x}",
                outcome.status
            )
        });
    }
    kernel.remove_adapter(|| {});
    again.close();
}
