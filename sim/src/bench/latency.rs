//! Latency: how long from a FIRE being sent until the thread blocked on a parked WAIT wakes
//! with the event, and, for reference, one IRP's round trip through each driver.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use revcall_protocol::{CURSOR_NOW, Request as Wire};
use serde::Serialize;

use super::{BenchError, quiet_config};
use crate::client::{Channel, PROMPT};
use storsim::cpu;
use storsim::harness::Harness;

/// p50 and p99 of a set of samples, in microseconds.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Percentiles {
    pub samples: usize,
    pub p50_us: f64,
    pub p99_us: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles; an empty set gives zeros.
    pub fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort_unstable();
        let at = |q: f64| {
            let index = ((samples.len() as f64 * q).ceil() as usize).saturating_sub(1);
            samples.get(index).map_or(0.0, |d| d.as_secs_f64() * 1e6)
        };
        Self {
            samples: samples.len(),
            p50_us: at(0.50),
            p99_us: at(0.99),
        }
    }
}

/// FIRE → wake: a waiter thread parks a WAIT, tells the firer, and blocks on it; the firer
/// stamps the time and fires; the waiter stamps its wake-up.
///
/// # Errors
///
/// The driver does not start, a WAIT does not complete with its event, or the verifier objects.
pub fn wake(path: &Path, samples: usize) -> Result<Percentiles, BenchError> {
    let harness = Harness::start(path, quiet_config())?;
    let kernel = harness.kernel.clone();
    let firer = Channel::open(&kernel, 1);
    let waiter = Channel::open(&kernel, 2);
    let clock = Instant::now();
    // The round whose WAIT is parked, and when that round's FIRE was sent (ns since `clock`).
    let armed = AtomicU64::new(0);
    let fired_at = AtomicU64::new(0);
    let latencies = std::thread::scope(|scope| {
        let waiting = scope.spawn(|| {
            cpu::enter_thread();
            let mut cursor = CURSOR_NOW;
            let mut latencies = Vec::with_capacity(samples);
            for round in 1..=samples as u64 {
                let request = waiter.wait(cursor, 1);
                armed.store(round, Ordering::Release);
                let outcome = request.wait(PROMPT);
                let woke = clock.elapsed().as_nanos() as u64;
                let delivery = outcome.as_ref().map(|o| waiter.delivery(o));
                let Some(Ok(delivery)) = delivery else {
                    return Err(BenchError::Unexpected(format!(
                        "round {round}: the parked WAIT did not deliver: {delivery:?}"
                    )));
                };
                cursor = delivery.reply.cursor;
                let sent = fired_at.load(Ordering::Acquire);
                latencies.push(Duration::from_nanos(woke.saturating_sub(sent)));
            }
            Ok(latencies)
        });
        'rounds: for round in 1..=samples as u64 {
            while armed.load(Ordering::Acquire) < round {
                if waiting.is_finished() {
                    break 'rounds;
                }
                std::thread::yield_now();
            }
            fired_at.store(clock.elapsed().as_nanos() as u64, Ordering::Release);
            if firer.fire(1, round).is_err() {
                break;
            }
        }
        waiting
            .join()
            .unwrap_or_else(|_| Err(BenchError::Unexpected("the waiter thread panicked".into())))
    })?;
    if latencies.len() != samples {
        return Err(BenchError::Unexpected(format!(
            "{} of {samples} FIREs woke their waiter",
            latencies.len()
        )));
    }
    firer.close();
    waiter.close();
    super::clean(harness.finish())?;
    Ok(Percentiles::of(latencies))
}

/// One FIRE request's round trip on one thread: sent, completed, outcome in hand. No waiter is
/// parked, so against revcall it is the request path alone; the floor answers it unread.
///
/// # Errors
///
/// The driver does not start, a request fails, or the verifier objects.
pub fn round_trip(path: &Path, samples: usize) -> Result<Percentiles, BenchError> {
    let harness = Harness::start(path, quiet_config())?;
    let channel = Channel::open(&harness.kernel, 1);
    let mut latencies = Vec::with_capacity(samples);
    for value in 0..samples as u64 {
        let start = Instant::now();
        let outcome = channel
            .send(&Wire::Fire { code: 1, value }, 64)
            .wait(PROMPT);
        latencies.push(start.elapsed());
        if outcome.is_none_or(|o| o.status != 0) {
            return Err(BenchError::Unexpected(format!("FIRE {value} failed")));
        }
    }
    channel.close();
    super::clean(harness.finish())?;
    Ok(Percentiles::of(latencies))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let samples = (1..=100).map(Duration::from_micros).collect();
        let p = Percentiles::of(samples);
        assert_eq!((p.samples, p.p50_us, p.p99_us), (100, 50.0, 99.0));
        let p = Percentiles::of(Vec::new());
        assert_eq!((p.p50_us, p.p99_us), (0.0, 0.0));
    }
}
