//! The run's summary: a readable timeline and verifier verdict, or one JSON object.
//!
//! Plain data and its two forms; [`crate::kernel::Kernel::summary`] fills it.

use serde::Serialize;

use crate::machine::Moment;
use crate::verifier::BugCheck;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Irps {
    pub issued: u64,
    pub completed: u64,
    pub cancelled: u64,
    /// `null` only when a bug check stopped the run while the I/O registry was busy.
    pub outstanding: Option<u64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Events {
    pub fired: u64,
    pub delivered: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct PortWork {
    pub service_requests: u64,
    pub srbs: u64,
    /// SRBs the miniport still had at the end.
    pub srbs_outstanding: u64,
    pub timer_calls: u64,
    pub dpcs: u64,
    /// The disk class model's successful data transfers, and what a script verified.
    pub bytes_written: u64,
    pub bytes_read: u64,
    pub bytes_verified: u64,
}

/// Everything a run reports.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub driver: String,
    pub scenario: String,
    pub seed: u64,
    pub cpus: usize,
    /// No violation, no scenario failure, no error.
    pub passed: bool,
    /// Why the run could not go on (load refused, DriverEntry failed, a bug check).
    pub error: Option<String>,
    pub violations: Vec<BugCheck>,
    /// Expected outcomes the scenario did not see.
    pub failures: Vec<String>,
    pub irps: Irps,
    pub events: Events,
    pub port: PortWork,
    /// Driver pool blocks still allocated at the end.
    pub pool_outstanding: usize,
    pub delays_injected: u64,
    /// Fallible calls failed on purpose (low-resources simulation).
    pub faults_injected: u64,
    pub timeline: Vec<Moment>,
    /// Whether the driver loaded at all: without it there are no counters to speak of.
    pub loaded: bool,
    /// What the scenario measured, by name (e.g. a kernel-mode client's counts).
    pub figures: std::collections::BTreeMap<String, u64>,
}

impl Summary {
    /// The readable form: timeline, then the verdict.
    pub fn text(&self, with_timeline: bool) -> String {
        let mut out = String::new();
        if with_timeline {
            for moment in &self.timeline {
                out += &format!(
                    "{:>9.3} ms  {:<5} {}\n",
                    moment.ms,
                    moment.place(),
                    moment.what
                );
            }
            out += "\n";
        }
        out += &format!(
            "storsim: {} under scenario {} (seed {}, {} CPUs)\n",
            self.driver, self.scenario, self.seed, self.cpus
        );
        if let Some(error) = &self.error {
            out += &format!("error: {error}\n");
        }
        // A driver that never loaded has no counters to speak of, only its error.
        if self.loaded {
            out += &format!(
                "IRPs: {} issued, {} completed ({} cancelled), {} outstanding\n",
                self.irps.issued,
                self.irps.completed,
                self.irps.cancelled,
                self.irps
                    .outstanding
                    .map_or("unknown".to_owned(), |n| n.to_string())
            );
            out += &format!(
                "events: {} fired, {} delivered; port: {} service requests, {} SRBs, {} timer calls, {} DPCs; {} delays injected\n",
                self.events.fired,
                self.events.delivered,
                self.port.service_requests,
                self.port.srbs,
                self.port.timer_calls,
                self.port.dpcs,
                self.delays_injected
            );
            if self.port.bytes_written + self.port.bytes_read > 0 {
                out += &format!(
                    "disk: {} bytes written, {} read, {} verified; {} SRBs outstanding\n",
                    self.port.bytes_written,
                    self.port.bytes_read,
                    self.port.bytes_verified,
                    self.port.srbs_outstanding
                );
            }
        }
        if !self.figures.is_empty() {
            let figures: Vec<String> = self
                .figures
                .iter()
                .map(|(name, value)| format!("{name} {value}"))
                .collect();
            out += &format!("figures: {}\n", figures.join(", "));
        }
        for failure in &self.failures {
            out += &format!("scenario: expected {failure}\n");
        }
        if self.violations.is_empty() {
            if self.loaded {
                out += "verifier: no violations\n";
            }
        } else {
            out += &format!("verifier: {} violation(s)\n", self.violations.len());
            for bug in &self.violations {
                out += &format!("{bug}\n");
            }
        }
        out += if self.passed { "PASS\n" } else { "FAIL\n" };
        out
    }

    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a summary is plain data")
    }
}
