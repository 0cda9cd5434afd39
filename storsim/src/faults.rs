//! Low-resources simulation: the fallible calls a driver makes, and the allocations Storport
//! and the I/O manager make on its behalf, fail on demand — the way Windows fails them (NULL,
//! FALSE, STATUS_INSUFFICIENT_RESOURCES) — either at random (seeded) or at one chosen site.
//!
//! A site is an import (or a port / I/O-manager allocation), not a return address: each
//! fallible import revcall uses is called from exactly one place in its source (`src/entry.rs`),
//! so the two coincide for it.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// A fallible call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
pub enum Site {
    /// `StorPortInitialize` → STATUS_INSUFFICIENT_RESOURCES (Storport cannot allocate its
    /// driver extension): DriverEntry must return it.
    StorPortInitialize,
    /// `StorPortAllocateRegistryBuffer` → NULL.
    StorPortAllocateRegistryBuffer,
    /// `StorPortRegistryRead` → FALSE.
    StorPortRegistryRead,
    /// `StorPortAllocatePool` → STOR_STATUS_INSUFFICIENT_RESOURCES, `*BufferPointer = NULL`.
    StorPortAllocatePool,
    /// `ExAllocatePool2` / `ExAllocatePoolWithTag` → NULL.
    ExAllocatePool,
    /// Storport's HwDeviceExtension at IRP_MN_START_DEVICE: the start fails
    /// (STATUS_INSUFFICIENT_RESOURCES) before HwFindAdapter.
    DeviceExtension,
    /// The I/O manager's IRP for a DeviceIoControl: the call fails with
    /// STATUS_INSUFFICIENT_RESOURCES before any driver sees it.
    IoAllocateIrp,
}

impl Site {
    pub const ALL: [Site; 7] = [
        Site::StorPortInitialize,
        Site::StorPortAllocateRegistryBuffer,
        Site::StorPortRegistryRead,
        Site::StorPortAllocatePool,
        Site::ExAllocatePool,
        Site::DeviceExtension,
        Site::IoAllocateIrp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Site::StorPortInitialize => "StorPortInitialize",
            Site::StorPortAllocateRegistryBuffer => "StorPortAllocateRegistryBuffer",
            Site::StorPortRegistryRead => "StorPortRegistryRead",
            Site::StorPortAllocatePool => "StorPortAllocatePool",
            Site::ExAllocatePool => "ExAllocatePool2/WithTag",
            Site::DeviceExtension => "device extension (START_DEVICE)",
            Site::IoAllocateIrp => "IRP allocation (DeviceIoControl)",
        }
    }

    fn index(self) -> usize {
        Site::ALL
            .iter()
            .position(|s| *s == self)
            .expect("ALL lists every site")
    }
}

/// Which calls fail.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FaultPlan {
    /// Probability that any one fallible call fails (0 turns random failures off).
    pub rate: f64,
    /// Systematic mode: the first call at this site fails (and only that one).
    pub first_at: Option<Site>,
}

/// Calls and failures at one site.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct SiteCount {
    pub site: Site,
    pub calls: u64,
    pub failed: u64,
}

/// The injector: counts every fallible call and decides whether it fails.
pub struct Faults {
    /// The failure probability's bits (`f64::to_bits`), changeable mid-run.
    rate: AtomicU64,
    first_at: Option<Site>,
    rng: Mutex<fastrand::Rng>,
    calls: [AtomicU64; Site::ALL.len()],
    failed: [AtomicU64; Site::ALL.len()],
}

impl Faults {
    pub fn new(plan: FaultPlan, seed: u64) -> Self {
        Self {
            rate: AtomicU64::new(plan.rate.to_bits()),
            first_at: plan.first_at,
            // A stream of its own, so failures do not shift with delay injection.
            rng: Mutex::new(fastrand::Rng::with_seed(seed ^ 0x5EED_FA17)),
            calls: Default::default(),
            failed: Default::default(),
        }
    }

    /// Changes the random failure rate (a scenario may load the driver first, then turn it on).
    pub fn set_rate(&self, rate: f64) {
        self.rate.store(rate.to_bits(), Ordering::Relaxed);
    }

    /// Counts a call at `site`; `true` if it must fail.
    pub fn fail(&self, site: Site) -> bool {
        let i = site.index();
        let earlier = self.calls[i].fetch_add(1, Ordering::Relaxed);
        let rate = f64::from_bits(self.rate.load(Ordering::Relaxed));
        let fail = if self.first_at == Some(site) {
            earlier == 0
        } else {
            rate > 0.0 && self.rng.lock().unwrap_or_else(|p| p.into_inner()).f64() < rate
        };
        if fail {
            self.failed[i].fetch_add(1, Ordering::Relaxed);
        }
        fail
    }

    /// Every site with its calls and failures so far.
    pub fn counts(&self) -> Vec<SiteCount> {
        Site::ALL
            .iter()
            .map(|&site| SiteCount {
                site,
                calls: self.calls[site.index()].load(Ordering::Relaxed),
                failed: self.failed[site.index()].load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Failures injected so far, at every site.
    pub fn injected(&self) -> u64 {
        self.failed.iter().map(|f| f.load(Ordering::Relaxed)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn systematic_fails_only_the_first_call_at_its_site() {
        let faults = Faults::new(
            FaultPlan {
                rate: 0.0,
                first_at: Some(Site::StorPortRegistryRead),
            },
            1,
        );
        assert!(!faults.fail(Site::IoAllocateIrp));
        assert!(faults.fail(Site::StorPortRegistryRead));
        assert!(!faults.fail(Site::StorPortRegistryRead));
        assert_eq!(faults.injected(), 1);
        let read = faults.counts()[Site::StorPortRegistryRead.index()];
        assert_eq!((read.calls, read.failed), (2, 1));
    }

    #[test]
    fn random_rate_is_seeded_and_roughly_kept() {
        let run = |seed| {
            let faults = Faults::new(
                FaultPlan {
                    rate: 0.25,
                    first_at: None,
                },
                seed,
            );
            (0..4000)
                .map(|_| faults.fail(Site::IoAllocateIrp))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        let failed = run(7).iter().filter(|f| **f).count();
        assert!((800..1200).contains(&failed), "{failed} of 4000");
    }
}
