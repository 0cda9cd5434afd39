//! The torture's progress display and its report: a summary table, or one JSON object.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::Serialize;

use super::Shared;
use storsim::kernel::Kernel;
use storsim::report::Irps;
use storsim::verifier::BugCheck;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Events {
    /// FIREs that succeeded.
    pub fired: u64,
    /// Events delivered to waiters (each waiter counts its own).
    pub delivered: u64,
    /// Events waiters were told they missed (ring overwrites), each waiter its own.
    pub lost: u64,
    /// Of `lost`, those reported by a waiter's first reply (a new waiter at cursor 0 is told
    /// how much history the ring no longer holds); the rest it fell behind on while following.
    pub lost_at_start: u64,
}

/// How hard the races were pressed, and which end-of-run checks could run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Races {
    /// CancelIoEx calls on another CPU's handle.
    pub foreign_cancels: u64,
    /// IoCancelIrp calls that found the IRP inside its dispatch routine.
    pub cancels_during_dispatch: u64,
    /// Floods that reached the parked cap, their QUOTA_EXCEEDED refusals checked exactly
    /// against it (a flood a removal overlapped is not checked).
    pub floods_at_cap: u64,
    /// Checkpoints (one before each removal cycle, one at the end) that compared the adapter's
    /// STATS counters with what the clients saw, every CPU stopped.
    pub stats_reconciled: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Removals {
    pub regular: u64,
    pub surprise: u64,
    /// The longest removal (IRP_MN_[SURPRISE_]REMOVAL to HwFreeAdapterResources).
    pub max_ms: u64,
    pub limit_ms: u64,
    /// Cycles that first power-cycled the adapter (ScsiStopAdapter, ScsiRestartAdapter).
    pub power_cycles: u64,
    /// Cycles that first PnP-stopped and restarted it.
    pub stops: u64,
}

impl Removals {
    /// One removal (a surprise removal first if `surprise`), timed and entered in the
    /// chronicle; `between` runs in the window after HwCompleteServiceIrp returned.
    pub(super) fn remove(
        &mut self,
        kernel: &Kernel,
        shared: &Shared,
        surprise: bool,
        between: impl FnOnce(),
    ) {
        let removal = shared
            .chronicle
            .removal_begins(kernel.io().device_instance());
        let started = Instant::now();
        if surprise {
            kernel.surprise_remove_adapter();
        }
        kernel.remove_adapter(|| {
            shared.chronicle.removal_drained(removal);
            between();
        });
        let took = started.elapsed().as_millis() as u64;
        self.max_ms = self.max_ms.max(took);
        if surprise {
            self.surprise += 1;
        } else {
            self.regular += 1;
        }
        if kernel.port().rundown_held() != 0 {
            shared.fail(format!(
                "removal finished with {} rundown references held",
                kernel.port().rundown_held()
            ));
        }
    }
}

/// Everything a torture run reports.
#[derive(Clone, Debug, Serialize)]
pub struct TortureReport {
    pub driver: String,
    /// The command line of this run.
    pub command: String,
    pub seed: u64,
    pub cpus: usize,
    pub ops_requested: u64,
    pub ops_total: u64,
    /// Operations by kind.
    pub ops: BTreeMap<String, u64>,
    /// Completions by status (and DeviceIoControl refusals before any IRP existed).
    pub completions: BTreeMap<String, u64>,
    pub irps: Irps,
    pub events: Events,
    pub removals: Removals,
    pub races: Races,
    pub faults_injected: u64,
    /// Driver pool blocks still allocated at unload.
    pub pool_outstanding: usize,
    pub delays_injected: u64,
    pub passed: bool,
    pub error: Option<String>,
    pub violations: Vec<BugCheck>,
    /// The first failures found (invariants broken), verbatim.
    pub failures: Vec<String>,
    pub failures_total: u64,
    pub elapsed_s: f64,
    /// On failure: the smallest command found that still fails.
    pub reproduce: Option<String>,
    /// The kernel-mode client's lives, when one was loaded (`--client`).
    pub kernel_client: Option<super::subscriber::ClientTally>,
}

impl TortureReport {
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report is plain data")
    }

    /// The summary table.
    pub fn text(&self) -> String {
        let join = |map: &BTreeMap<String, u64>| {
            map.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut rows = vec![
            (
                "run",
                format!(
                    "{}, seed {}, {} CPUs, {:.1} s ({:.0} ops/s)",
                    self.driver,
                    self.seed,
                    self.cpus,
                    self.elapsed_s,
                    self.ops_total as f64 / self.elapsed_s.max(1e-9)
                ),
            ),
            (
                "ops",
                format!(
                    "{} of {}: {}",
                    self.ops_total,
                    self.ops_requested,
                    join(&self.ops)
                ),
            ),
            (
                "IRPs",
                format!(
                    "{} issued, {} completed ({} cancelled), {} outstanding",
                    self.irps.issued,
                    self.irps.completed,
                    self.irps.cancelled,
                    self.irps
                        .outstanding
                        .map_or("unknown".to_owned(), |n| n.to_string())
                ),
            ),
            ("completions", join(&self.completions)),
            (
                "events",
                format!(
                    "{} fired, {} delivered, {} lost and accounted ({} of them history older \
                     than the ring when a waiter started at cursor 0)",
                    self.events.fired,
                    self.events.delivered,
                    self.events.lost,
                    self.events.lost_at_start
                ),
            ),
            (
                "removals",
                format!(
                    "{} ({} removal, {} surprise removal; the last ends the run), longest {} ms \
                     (limit {} ms); before them {} power cycles, {} PnP stop/starts",
                    self.removals.regular + self.removals.surprise,
                    self.removals.regular,
                    self.removals.surprise,
                    self.removals.max_ms,
                    self.removals.limit_ms,
                    self.removals.power_cycles,
                    self.removals.stops
                ),
            ),
        ];
        if let Some(client) = &self.kernel_client {
            rows.push((
                "kernel client",
                format!(
                    "{} lives ({} loads refused), {} events delivered, {} lost and accounted; ended: {}",
                    client.lives,
                    client.not_loaded,
                    client.delivered,
                    client.lost,
                    join(&client.ends)
                ),
            ));
        }
        rows.extend([
            (
                "races",
                format!(
                    "{} cancels from other CPUs, {} cancels inside dispatch; {} floods reached \
                     the parked cap and were checked; STATS equal to what clients saw at {} \
                     checkpoints",
                    self.races.foreign_cancels,
                    self.races.cancels_during_dispatch,
                    self.races.floods_at_cap,
                    self.races.stats_reconciled
                ),
            ),
            (
                "injected",
                format!(
                    "{} delays, {} allocation/call failures",
                    self.delays_injected, self.faults_injected
                ),
            ),
            (
                "pool",
                format!(
                    "{} driver blocks outstanding at unload",
                    self.pool_outstanding
                ),
            ),
            (
                "verifier",
                match self.violations.len() {
                    0 => "no violations".to_owned(),
                    n => format!("{n} violation(s)"),
                },
            ),
            (
                "invariants",
                match self.failures_total {
                    0 => "all held".to_owned(),
                    n => format!("{n} failure(s)"),
                },
            ),
        ]);
        if let Some(error) = &self.error {
            rows.push(("error", error.clone()));
        }
        let mut out = String::from("storsim torture\n");
        for (name, value) in rows {
            out += &format!("  {name:<13} {value}\n");
        }
        for bug in &self.violations {
            out += &format!("{bug}\n");
        }
        for failure in &self.failures {
            out += &format!("failure: {failure}\n");
        }
        if !self.passed {
            out += &format!("seed {}; this run: {}\n", self.seed, self.command);
            if let Some(smaller) = &self.reproduce {
                out += &format!("smallest failing run found: {smaller}\n");
            }
        }
        out += if self.passed { "PASS\n" } else { "FAIL\n" };
        out
    }
}
