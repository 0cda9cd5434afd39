//! The kernel-mode client in the torture's mix: revcall-client.sys loaded above each adapter
//! instance while the CPUs hammer it. After each removal it must have ended (its last reply
//! FINAL, or the adapter gone before it asked again), with every event in order and the lost
//! count exact, and its unload must pass the verifier's checks (IRP home and freed, reference
//! dropped, no pool left). Its requests count in the driver's STATS, so the checkpoints add
//! what it saw.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::Ordering;

use revcall_kclient::{End, Stats};
use serde::Serialize;
use storsim::driver::UpperDriver;
use storsim::kernel::Kernel;

use super::Shared;
use super::ledger::{self, DriverView};
use crate::kernel_client::{SERVICE, eventually, stats};

/// What the client went through, over the whole run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ClientTally {
    /// Adapter instances it subscribed to (loaded, ended, unloaded).
    pub lives: u64,
    /// Loads that failed (low-resources simulation).
    pub not_loaded: u64,
    pub delivered: u64,
    pub lost: u64,
    /// How each life ended.
    pub ends: BTreeMap<String, u64>,
}

/// The client of the current adapter instance, if loaded.
pub struct Subscriber<'a> {
    path: &'a Path,
    live: Option<UpperDriver>,
    /// The current instance's load failed: what it sent before failing is unknown.
    unknown: bool,
    pub tally: ClientTally,
}

impl<'a> Subscriber<'a> {
    pub fn new(path: &'a Path) -> Self {
        Self {
            path,
            live: None,
            unknown: false,
            tally: ClientTally::default(),
        }
    }

    /// Loads the client above the adapter instance just started.
    pub fn attach(&mut self, kernel: &std::sync::Arc<Kernel>, shared: &Shared) {
        match storsim::driver::load_upper(kernel, self.path, SERVICE) {
            Ok(driver) if stats(&driver).is_some() => {
                self.live = Some(driver);
                self.unknown = false;
            }
            Ok(driver) => {
                shared.fail(format!(
                    "{} exports no RevcallClientStats",
                    self.path.display()
                ));
                driver.unload(kernel);
                self.unknown = true;
            }
            Err(error) => {
                if shared.fault_rate == 0.0 {
                    shared.fail(format!("loading the kernel client: {error}"));
                }
                self.tally.not_loaded += 1;
                self.unknown = true;
            }
        }
    }

    /// What the client's requests added to the driver's STATS counters (its STATS probe, its
    /// WAITs' replies, the completion that ended it); `None` when that is unknown.
    pub fn view(&self) -> Option<DriverView> {
        if self.unknown {
            return None;
        }
        let mut view = DriverView::default();
        let Some(stats) = self.live.as_ref().and_then(stats) else {
            return Some(view);
        };
        let now = stats.snapshot();
        view.saw(ledger::Path::Stats, 0);
        for _ in 0..now.replies {
            view.saw(ledger::Path::Wait, 0);
        }
        if now.end.is_some() && revcall_protocol::status::is_error(now.end_status) {
            view.saw(ledger::Path::Wait, now.end_status);
        }
        Some(view)
    }

    /// After the instance's removal: the client must end; then it is unloaded and checked.
    pub fn detach(&mut self, kernel: &Kernel, shared: &Shared) {
        let Some(driver) = self.live.take() else {
            return;
        };
        let stats = stats(&driver).expect("checked at attach");
        if !eventually(|| stats.ended().is_some()) {
            shared.fail(format!(
                "the kernel client did not end after the adapter's removal (cursor {})",
                stats.cursor.load(Ordering::Relaxed)
            ));
        }
        driver.unload(kernel);
        self.judge(stats, shared);
    }

    fn judge(&mut self, stats: &Stats, shared: &Shared) {
        let now = stats.snapshot();
        let (end, status) = (now.end, now.end_status);
        self.tally.lives += 1;
        self.tally.delivered += now.delivered;
        self.tally.lost += now.lost;
        let name = match end {
            Some(End::Failed) => format!("failed {}", ledger::status_name(status)),
            Some(end) => format!("{end:?}").to_lowercase(),
            None => "never".to_owned(),
        };
        *self.tally.ends.entry(name).or_insert(0) += 1;
        if !now.exact() {
            shared.fail(format!(
                "kernel client: {} delivered + {} lost != cursor {}, {} gaps",
                now.delivered, now.lost, now.cursor, now.gaps
            ));
        }
        // The adapter's refusals under load (its parked-request cap, low resources) end a
        // subscription too; anything else is wrong.
        let allowed = match end {
            Some(End::Final | End::Removed) => true,
            Some(End::Failed) => {
                status == storport_abi::status::user::STATUS_QUOTA_EXCEEDED
                    || status == storport_abi::status::user::STATUS_INSUFFICIENT_RESOURCES
            }
            _ => false,
        };
        if !allowed {
            shared.fail(format!(
                "kernel client ended {end:?} ({}) through a removal",
                ledger::status_name(status)
            ));
        }
    }
}
