//! A misbehaving server of one LUN: it batches, answers out of order, splits its COMMITs,
//! pauses, sends malformed COMMITs first, fails some I/O with a medium error, and dies (its
//! process exits) with SRBs in hand, then comes back as a new process. Every server of a LUN
//! shares the LUN's store, as servers restarted on one backing file would.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use revcall_client::server::{Answer, Backend, MemoryDisk, Work, answer};
use revcall_protocol::status::{
    STATUS_DELETE_PENDING, STATUS_DEVICE_REMOVED, STATUS_INVALID_BUFFER_SIZE,
    STATUS_INVALID_DEVICE_STATE, STATUS_INVALID_PARAMETER, STATUS_NOT_FOUND, STATUS_SUCCESS,
};
use revcall_protocol::{CommitResult, DataOp, ScsiStatus};
use storport_abi::status::Named;
use storsim::io::Request;
use storsim::kernel::Kernel;

use super::BLOCK;
use crate::Failures;
use crate::client::Channel;

/// How long a request to a live adapter may take.
const PATIENCE: Duration = Duration::from_secs(30);

/// What the servers of the run did, in all.
#[derive(Default)]
pub struct ServerCounts {
    pub commits: AtomicU64,
    pub answered: AtomicU64,
    pub stale: AtomicU64,
    pub malformed_refused: AtomicU64,
    pub deaths: AtomicU64,
    pub injected_errors: AtomicU64,
    pub late_writes: AtomicU64,
}

/// One server slot of a LUN: it serves until its LUN or the adapter goes, dying and coming
/// back now and then.
pub struct ServerPlan<'a> {
    pub kernel: &'a Arc<Kernel>,
    pub lun: u32,
    pub store: &'a Mutex<MemoryDisk>,
    pub seed: u64,
    /// Process ids to take, one per life.
    pub pids: &'a AtomicU32,
    /// Chance that a FETCH reply is this life's last: the process exits holding it.
    pub death_rate: f64,
    pub counts: &'a ServerCounts,
    pub failures: &'a Failures,
    /// Stops coming back (the cycle ends).
    pub stop: &'a AtomicBool,
    /// The LUN's generation this plan serves, and the lock its removal and re-creation
    /// hold: a server coming back must not attach to the next LUN given the same number.
    pub generation: u64,
    pub current: &'a AtomicU64,
    pub changing: &'a RwLock<()>,
    /// The run's reset epoch (odd while a reset runs), and how many servers sit on a WRITE
    /// waiting for one: the main thread resets when some do.
    pub reset_epoch: &'a AtomicU64,
    pub stalled: &'a AtomicU32,
}

impl ServerPlan<'_> {
    /// Runs lives until the LUN or the adapter is gone.
    pub fn run(&self) {
        let mut rng = fastrand::Rng::with_seed(self.seed);
        while !self.stop.load(Ordering::Relaxed) {
            let pid = self.pids.fetch_add(1, Ordering::Relaxed);
            let channel = Channel::open(self.kernel, pid);
            let attach = {
                let _steady = self.changing.read().unwrap_or_else(|p| p.into_inner());
                if self.current.load(Ordering::Acquire) != self.generation {
                    channel.close();
                    return;
                }
                channel.attach(self.lun)
            };
            let goes_on = self.life(&channel, attach, pid, &mut rng);
            channel.close();
            if !goes_on {
                return;
            }
            std::thread::sleep(Duration::from_millis(rng.u64(0..20)));
        }
    }

    /// One process's life; whether the server should come back (it died, the LUN lives on).
    fn life(
        &self,
        channel: &Channel,
        attach: Arc<Request>,
        pid: u32,
        rng: &mut fastrand::Rng,
    ) -> bool {
        let mut pending = channel.fetch(rng.u32(1..=8));
        // The last answer was written after a stall through a reset.
        let mut late = false;
        loop {
            let Some(outcome) = pending.wait(PATIENCE) else {
                self.failures
                    .expect(false, || format!("server {pid}: a FETCH never completed"));
                return false;
            };
            let work = match channel.work(&outcome) {
                Ok(work) if !work.last => work,
                // FINAL (the LUN went), or the adapter went: this server is done.
                _ => break,
            };
            self.counts
                .stale
                .fetch_add(work.stale.into(), Ordering::Relaxed);
            if late && work.stale > 0 {
                // What it wrote late was stale: a reset had taken it.
                self.counts.late_writes.fetch_add(1, Ordering::Relaxed);
            }
            if !work.items.is_empty() && rng.f64() < self.death_rate {
                // Dies holding them: the process exit cancels the ATTACH.
                self.counts.deaths.fetch_add(1, Ordering::Relaxed);
                self.kernel.exit_process(pid);
                let ended = attach.wait(PATIENCE);
                self.failures.expect(ended.is_some(), || {
                    format!("server {pid}: its ATTACH outlived its process")
                });
                return true;
            }
            if rng.u32(0..8) == 0 {
                std::thread::sleep(Duration::from_millis(rng.u64(1..30)));
            }
            late = rng.u32(0..12) == 0 && self.stall_for_reset(&work, rng);
            if late {
                // The reset may have completed them; this server goes on and writes the blocks
                // anyway, a little later: the driver must not have let the LUN move on.
                std::thread::sleep(Duration::from_millis(rng.u64(0..5)));
            }
            let mut answer = self.answer(&work, rng);
            if rng.u32(0..6) == 0 {
                self.malformed(channel, &answer, rng);
            }
            shuffle(&mut answer, rng);
            // Sometimes half now, commit only, and the rest with the next fetch.
            if answer.results.len() > 1 && rng.bool() {
                let half = answer.results.len() / 2;
                let rest = split(&mut answer, half);
                if !self.commit(channel, &answer, 0) {
                    break;
                }
                answer = rest;
            }
            pending = channel.commit(&answer, rng.u32(1..=8));
            self.counts.commits.fetch_add(1, Ordering::Relaxed);
        }
        let ended = attach.wait(PATIENCE);
        self.failures.expect(ended.is_some(), || {
            format!("server {pid}: its ATTACH never completed after its session ended")
        });
        false
    }

    /// Sits on `work`, if it changes blocks, until a reset comes (at most 150 ms); whether one
    /// came.
    fn stall_for_reset(&self, work: &Work, rng: &mut fastrand::Rng) -> bool {
        let writes = work
            .items
            .iter()
            .any(|(d, _)| [DataOp::Write as u8, DataOp::Unmap as u8].contains(&d.op));
        if !writes {
            return false;
        }
        let epoch = self.reset_epoch.load(Ordering::Acquire);
        self.stalled.fetch_add(1, Ordering::Relaxed);
        let deadline = std::time::Instant::now() + Duration::from_millis(rng.u64(50..150));
        let mut reset = false;
        while std::time::Instant::now() < deadline && !self.stop.load(Ordering::Relaxed) {
            let now = self.reset_epoch.load(Ordering::Acquire);
            // A reset that began after the stall and has ended.
            if now >= epoch + 2 && now.is_multiple_of(2) {
                reset = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.stalled.fetch_sub(1, Ordering::Relaxed);
        reset
    }

    /// Serves `work` from the store, failing one in 64 with a medium error (unapplied).
    fn answer(&self, work: &Work, rng: &mut fastrand::Rng) -> Answer {
        let mut store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        let served = answer(
            work,
            BLOCK,
            &mut Failing {
                store: &mut store,
                rng,
            },
        );
        self.counts
            .answered
            .fetch_add(served.results.len() as u64, Ordering::Relaxed);
        let injected = served
            .results
            .iter()
            .filter(|r| r.scsi_status == ScsiStatus::CHECK_CONDITION)
            .count();
        self.counts
            .injected_errors
            .fetch_add(injected as u64, Ordering::Relaxed);
        served
    }

    /// A commit-only COMMIT; false if the session is gone.
    fn commit(&self, channel: &Channel, answer: &Answer, max: u32) -> bool {
        self.counts.commits.fetch_add(1, Ordering::Relaxed);
        channel
            .commit(answer, max)
            .wait(PATIENCE)
            .is_some_and(|o| o.status == STATUS_SUCCESS)
    }

    /// Sends a broken copy of `answer` first: it must be refused, and touch nothing.
    fn malformed(&self, channel: &Channel, answer: &Answer, rng: &mut fastrand::Rng) {
        let Some(first) = answer.results.first().copied() else {
            return;
        };
        let mut broken = answer.clone();
        let expected = match rng.u32(0..3) {
            0 => {
                // A generation never handed out.
                broken.results[0].tag = first.tag.wrapping_add(1 << 40);
                STATUS_NOT_FOUND
            }
            1 => {
                broken.results.push(first);
                STATUS_INVALID_PARAMETER
            }
            _ => {
                // This result alone: should a reset have made it stale meanwhile, the COMMIT
                // is accepted, and it must carry nothing the real one still has to commit.
                let data = answer.data[..first.data_len as usize].to_vec();
                broken = Answer {
                    results: vec![CommitResult {
                        data_len: first.data_len + BLOCK,
                        ..first
                    }],
                    data: [vec![0xEE; BLOCK as usize], data].concat(),
                };
                // A GOOD result with the wrong data; CHECK CONDITION with data is malformed.
                if first.scsi_status == ScsiStatus::GOOD {
                    STATUS_INVALID_BUFFER_SIZE
                } else {
                    STATUS_INVALID_PARAMETER
                }
            }
        };
        let Some(outcome) = channel.commit(&broken, 0).wait(PATIENCE) else {
            return self
                .failures
                .expect(false, || "a malformed COMMIT never completed".into());
        };
        // Its session may have ended meanwhile (the LUN or the adapter went).
        let gone = [
            STATUS_DEVICE_REMOVED,
            STATUS_INVALID_DEVICE_STATE,
            STATUS_DELETE_PENDING,
        ]
        .contains(&outcome.status);
        // A reset may have taken the tag meanwhile: a stale result is dropped unchecked.
        let stale = expected == STATUS_INVALID_BUFFER_SIZE
            && outcome.status == STATUS_SUCCESS
            && channel.work(&outcome).is_ok_and(|work| work.stale > 0);
        self.failures
            .expect(outcome.status == expected || gone || stale, || {
                format!(
                    "a malformed COMMIT ({}) completed {} instead of {}",
                    Named(expected),
                    Named(outcome.status),
                    Named(expected)
                )
            });
        if outcome.status == expected {
            self.counts
                .malformed_refused
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The store, failing one request in 64 with MEDIUM ERROR 11/00 before touching anything.
struct Failing<'a> {
    store: &'a mut MemoryDisk,
    rng: &'a mut fastrand::Rng,
}

impl Failing<'_> {
    fn fails(&mut self) -> Result<(), revcall_client::server::Failure> {
        if self.rng.u32(0..64) == 0 {
            Err(revcall_client::server::Failure {
                key: 3,
                asc: 0x11,
                ascq: 0,
            })
        } else {
            Ok(())
        }
    }
}

impl Backend for Failing<'_> {
    fn read(&mut self, lba: u64, out: &mut [u8]) -> Result<(), revcall_client::server::Failure> {
        self.fails()?;
        self.store.read(lba, out)
    }

    fn write(&mut self, lba: u64, data: &[u8]) -> Result<(), revcall_client::server::Failure> {
        self.fails()?;
        self.store.write(lba, data)
    }

    fn flush(&mut self) -> Result<(), revcall_client::server::Failure> {
        self.store.flush()
    }

    fn unmap(&mut self, lba: u64, blocks: u32) -> Result<(), revcall_client::server::Failure> {
        self.store.unmap(lba, blocks)
    }
}

/// The results (with their READ data) in a random order.
fn shuffle(answer: &mut Answer, rng: &mut fastrand::Rng) {
    let mut parts = parts(answer);
    rng.shuffle(&mut parts);
    *answer = join(parts);
}

/// Keeps the first `keep` results in `answer`; returns the others.
fn split(answer: &mut Answer, keep: usize) -> Answer {
    let mut parts = parts(answer);
    let rest = parts.split_off(keep);
    *answer = join(parts);
    join(rest)
}

fn parts(answer: &Answer) -> Vec<(CommitResult, Vec<u8>)> {
    let mut at = 0;
    answer
        .results
        .iter()
        .map(|result| {
            let len = result.data_len as usize;
            let data = answer.data[at..at + len].to_vec();
            at += len;
            (*result, data)
        })
        .collect()
}

fn join(parts: Vec<(CommitResult, Vec<u8>)>) -> Answer {
    let mut answer = Answer::default();
    for (result, data) in parts {
        answer.results.push(result);
        answer.data.extend_from_slice(&data);
    }
    answer
}
