//! Events per second through a driver, end to end: one script of FIREs and WAITs, run the same
//! way against revcall and against the floor fixture.
//!
//! The script, per round: the firer sends `batch` FIREs; every waiter collects its parked WAIT
//! (completed by the first FIRE), with batching also sends one WAIT that takes the rest of the
//! burst at once, and parks a new WAIT for the next round. Every waiter has its own handle and
//! process. The floor completes each of those IRPs at once, with a reply of the size revcall's
//! reply to it has (the script knows it: one event for a parked WAIT, the rest of the burst for
//! the catch-up; it checks revcall's replies have exactly those sizes), so the same script on
//! it costs exactly storsim's I/O path for the same IRPs and the same bytes copied back: the
//! ratio of the two rates is what revcall itself adds. One thread drives it all, so the figure
//! is CPU cost, not scheduling luck.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use storport_abi::status::Named;

use revcall_client::channel::{encode, wait_reply_size};
use revcall_protocol::{CURSOR_NOW, Header, Opcode, Request as Wire, WaitReply, wait_reply_len};
use serde::Serialize;
use zerocopy::FromBytes;

use super::{BenchError, quiet_config};
use crate::client::{Channel, PROMPT};
use storsim::harness::Harness;
use storsim::io::Request;

/// Which driver runs the script, and so what its replies must say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    /// revcall: every WAIT's events are checked (count and sequence).
    Revcall,
    /// The floor fixture: each request carries the length of revcall's reply where revcall's
    /// requests have their opcode, and the reply is that many zero bytes; events are counted
    /// as the script promises.
    Floor,
}

/// One configuration of the script.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Case {
    pub waiters: usize,
    /// Events per round; 1 is "batching off" (one event per completion).
    pub batch: u32,
}

impl Case {
    /// IRPs the script sends per round.
    pub fn irps_per_round(self) -> u64 {
        let per_waiter = if self.batch > 1 { 2 } else { 1 };
        u64::from(self.batch) + (self.waiters * per_waiter) as u64
    }

    /// Events delivered per round (each waiter sees each event).
    pub fn events_per_round(self) -> u64 {
        u64::from(self.batch) * self.waiters as u64
    }
}

/// What one timed run of the script did.
#[derive(Clone, Copy, Debug)]
pub struct Run {
    pub events: u64,
    pub irps: u64,
    pub elapsed: Duration,
    /// The CPU time of the one thread that drives the script (and so every driver call), over
    /// the same span: what the run cost, without the time it waited for a core.
    pub cpu: Duration,
}

impl Run {
    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }

    /// Events per second of the driving thread's CPU time.
    pub fn events_per_cpu_second(&self) -> f64 {
        self.events as f64 / self.cpu.as_secs_f64()
    }
}

/// Boots a kernel with `path` loaded, runs `rounds` rounds of `case`, removes the adapter.
///
/// # Errors
///
/// The driver does not start, a request does not complete promptly, revcall's replies are not
/// the events fired in order, or the verifier objects.
pub fn run(path: &Path, driver: Driver, case: Case, rounds: u64) -> Result<Run, BenchError> {
    let harness = Harness::start(path, quiet_config())?;
    let kernel = harness.kernel.clone();
    let firer = Channel::open(&kernel, 1);
    let waiters: Vec<Channel> = (0..case.waiters)
        .map(|i| Channel::open(&kernel, 2 + i as u32))
        .collect();
    let mut cursors = vec![CURSOR_NOW; case.waiters];
    let wait = |waiter: &Channel, cursor: u64, events: u32| {
        let request = Wire::Wait {
            cursor,
            max_events: case.batch,
        };
        send(
            driver,
            waiter,
            &request,
            wait_reply_size(case.batch),
            wait_reply_len(events as usize),
        )
    };
    let mut parked: Vec<Arc<Request>> = waiters.iter().map(|w| wait(w, CURSOR_NOW, 1)).collect();
    let fire_reply = Opcode::Fire.min_reply_size();
    // Every WAIT's completion, checked after the timed loop: checking revcall's replies is the
    // script's work, not the driver's, and the floor's are not checked at all.
    let per_round = case.waiters * if case.batch > 1 { 2 } else { 1 };
    let mut collected = Vec::with_capacity(per_round * rounds as usize);
    let mut collect = |waiter: usize, request: &Request, events: u32| {
        let outcome = finish(request)?;
        let cursor = reply_cursor(&outcome);
        collected.push(Collected {
            waiter,
            events,
            outcome,
        });
        Ok::<_, BenchError>(cursor)
    };
    let start = Instant::now();
    let cpu_start = super::thread_cpu_time();
    for _ in 0..rounds {
        for _ in 0..case.batch {
            let fired = finish(&send(
                driver,
                &firer,
                &Wire::Fire { code: 1, value: 0 },
                64,
                fire_reply,
            ))?;
            if fired.information != fire_reply {
                return Err(BenchError::Unexpected(format!(
                    "a FIRE reply of {} bytes, not the {fire_reply} the floor writes",
                    fired.information
                )));
            }
        }
        for (i, waiter) in waiters.iter().enumerate() {
            // The parked WAIT took the burst's first event.
            cursors[i] = collect(i, &parked[i], 1)?;
            if case.batch > 1 {
                let catch_up = wait(waiter, cursors[i], case.batch - 1);
                cursors[i] = collect(i, &catch_up, case.batch - 1)?;
            }
            parked[i] = wait(waiter, cursors[i], 1);
        }
    }
    let elapsed = start.elapsed();
    let cpu = super::thread_cpu_time().saturating_sub(cpu_start);
    let expected = rounds * case.events_per_round();
    let delivered = match driver {
        Driver::Revcall => check(&waiters, &collected)?,
        Driver::Floor => expected,
    };
    if delivered != expected {
        return Err(BenchError::Unexpected(format!(
            "{case:?}: {delivered} events delivered, {expected} fired to the waiters"
        )));
    }
    firer.close();
    for waiter in waiters {
        waiter.close();
    }
    super::clean(harness.finish())?;
    Ok(Run {
        events: expected,
        irps: rounds * case.irps_per_round(),
        elapsed,
        cpu,
    })
}

fn finish(request: &Request) -> Result<storsim::io::Outcome, BenchError> {
    match request.wait(PROMPT) {
        Some(outcome) if outcome.status == 0 => Ok(outcome),
        Some(outcome) => Err(BenchError::Unexpected(format!(
            "request {} completed with {:#010x}: is this driver the one the script expects?",
            request.id, outcome.status
        ))),
        None => Err(BenchError::Unexpected(format!(
            "request {} did not complete within {PROMPT:?}",
            request.id
        ))),
    }
}

/// Sends `request` with `out_len` bytes of room; to the floor, with `reply_len` (the size of
/// revcall's reply) in its first four bytes instead of the opcode.
fn send(
    driver: Driver,
    channel: &Channel,
    request: &Wire,
    out_len: u32,
    reply_len: usize,
) -> Arc<Request> {
    let mut input = encode(request);
    if driver == Driver::Floor {
        input[..4].copy_from_slice(&(reply_len as u32).to_le_bytes());
    }
    channel
        .send_raw(&input, out_len)
        .expect("a read/write handle to the adapter accepts the service IOCTL")
}

/// A completed WAIT, as the timed loop left it for [`check`].
struct Collected {
    waiter: usize,
    /// The events the script expects it to carry.
    events: u32,
    outcome: storsim::io::Outcome,
}

/// The cursor a WAIT's reply gives for the next one: one field read, the same cost for either
/// driver (the floor's zero bytes give 0, which it ignores).
fn reply_cursor(outcome: &storsim::io::Outcome) -> u64 {
    outcome
        .output
        .get(size_of::<Header>()..)
        .and_then(|body| WaitReply::read_from_prefix(body).ok())
        .map_or(0, |(reply, _)| reply.cursor)
}

/// Checks revcall's WAIT replies in the order they completed: each of the size the floor is
/// told to write, each continuing its waiter's sequence exactly with nothing lost. The events
/// delivered.
fn check(waiters: &[Channel], collected: &[Collected]) -> Result<u64, BenchError> {
    let mut cursors = vec![CURSOR_NOW; waiters.len()];
    let mut delivered = 0;
    for Collected {
        waiter,
        events,
        outcome,
    } in collected
    {
        if outcome.information != wait_reply_len(*events as usize) {
            return Err(BenchError::Unexpected(format!(
                "a WAIT reply of {} bytes, not the {} the floor writes for {events} event(s)",
                outcome.information,
                wait_reply_len(*events as usize)
            )));
        }
        let delivery = waiters[*waiter]
            .delivery(outcome)
            .map_err(|status| BenchError::Unexpected(format!("a WAIT reply: {}", Named(status))))?;
        let cursor = &mut cursors[*waiter];
        let mut expected = (*cursor != CURSOR_NOW).then(|| *cursor + 1);
        for event in &delivery.events {
            if expected.is_some_and(|e| e != event.seq) || delivery.reply.lost != 0 {
                return Err(BenchError::Unexpected(format!(
                    "event {} after cursor {cursor} (lost {})",
                    event.seq, delivery.reply.lost
                )));
            }
            expected = Some(event.seq + 1);
        }
        *cursor = delivery.reply.cursor;
        delivered += delivery.events.len() as u64;
    }
    Ok(delivered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_counts_what_it_sends() {
        let off = Case {
            waiters: 8,
            batch: 1,
        };
        assert_eq!(off.irps_per_round(), 9);
        assert_eq!(off.events_per_round(), 8);
        let on = Case {
            waiters: 8,
            batch: 16,
        };
        assert_eq!(on.irps_per_round(), 16 + 16);
        assert_eq!(on.events_per_round(), 128);
    }
}
