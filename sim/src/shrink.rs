//! Looking for a smaller failing run: the same seed with each dimension halved in turn while
//! the run still fails. Interleavings are not deterministic, so a candidate counts as failing
//! if either of two tries fails; the search stops after its time budget.

use std::time::{Duration, Instant};

/// A way to make a run smaller, or None when that dimension is as small as it goes.
pub type Halving<O> = fn(&O) -> Option<O>;

/// The smallest failing options found from `failing`, trying `halvings` in order (each until it
/// no longer fails) within `budget`.
pub fn shrink<O: Clone>(
    failing: &O,
    halvings: &[Halving<O>],
    fails: impl Fn(&O) -> bool,
    budget: Duration,
) -> O {
    let started = Instant::now();
    let mut best = failing.clone();
    for halve in halvings {
        while started.elapsed() < budget
            && let Some(candidate) = halve(&best)
        {
            if !(0..2).any(|_| fails(&candidate)) {
                break;
            }
            best = candidate;
        }
    }
    best
}
