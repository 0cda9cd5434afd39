//! Arbitrary COMMITs against SRBs the servers hold, on the real revcall.sys: the rig behind the
//! `commit` fuzz target (`fuzz/`, nightly) and its seeded stable run (`tests/commit_fuzz.rs`).
//!
//! One LUN, two servers (sessions on two handles), and [`WORKERS`] threads of the disk class
//! model, each keeping one READ or WRITE in flight in a LBA region of its own (so a
//! descriptor's LBA names its worker). Before each input the rig fetches until every worker's
//! SRB is at a server; the input then becomes one COMMIT_AND_FETCH on one of the two handles,
//! either raw bytes behind a valid header or results built from the tags held (some perturbed,
//! some old, some foreign). The outcome is judged against a model:
//!
//! * the protocol crate's decoder predicts every refusal of malformed bytes (differential);
//! * for a well-formed COMMIT, the model of the tags (held by which server, committed before,
//!   how many generations ago) predicts NOT_FOUND, ACCESS_DENIED, INVALID_BUFFER_SIZE or
//!   SUCCESS with its stale count;
//! * a refused COMMIT completes no SRB; an accepted one completes exactly its results' SRBs, with
//!   the committed READ data or the committed sense, and nothing else ever completes;
//! * every request completes once, with no verifier violation.
//!
//! The FETCH half is not fuzzed (`max_descriptors` is forced to 0 when the decoder would take
//! it): this target is about what a COMMIT may do to the SRBs.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use revcall_protocol::status::{
    STATUS_ACCESS_DENIED, STATUS_CANCELLED, STATUS_INVALID_BUFFER_SIZE, STATUS_NOT_FOUND,
    STATUS_SUCCESS,
};
use revcall_protocol::{
    Commit, CommitResult, DataOp, Descriptor, LunSpec, Opcode, ScsiStatus, VERSION, encode_commit,
    refusal,
};
use revcall_scsi::{Command, Sense, SenseKey, Transfer};
use storport_abi::status::Named;
use storsim::class::{Completion, DiskClass};
use storsim::harness::Harness;
use storsim::io::{Outcome, Request};
use storsim::machine::Config;
use storsim::report::Summary;

use crate::client::Channel;

/// Class-model threads, one SRB in flight each.
pub const WORKERS: usize = 6;
const BLOCK: u32 = 512;
/// Blocks per worker's region; a transfer is 1..=8 blocks.
const REGION: u64 = 256;
/// How long an expected completion or FETCH may take.
const PATIENCE: Duration = Duration::from_secs(10);
/// The tag slot's history the driver keeps (src/tag_table.rs `HISTORY`).
const HISTORY: u64 = 64;
const SRB_STATUS_SUCCESS: u8 = 0x01;
const SRB_STATUS_ERROR: u8 = 0x04;

/// An SRB a server holds.
#[derive(Clone, Copy, Debug)]
struct Held {
    descriptor: Descriptor,
    /// Which server fetched it (0 or 1).
    server: usize,
}

/// What a worker's SRB must end with, once committed.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Expected {
    Read(Vec<u8>),
    Written,
    Check(Sense),
}

/// A worker's report: its index, and how its SRB ended.
type Done = (usize, Completion);

/// The fuzzing rig: a started adapter, its LUN, two servers and the workers.
pub struct CommitRig {
    harness: Harness,
    servers: [Channel; 2],
    attaches: [Arc<Request>; 2],
    /// By tag.
    held: HashMap<u64, Held>,
    /// Tags committed, by slot: the highest generation handed out and the committed ones.
    generations: HashMap<u16, (u64, HashSet<u64>)>,
    done: Receiver<Done>,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<()>>,
    pub inputs: u64,
    /// SRBs completed by accepted COMMITs.
    pub committed: u64,
    /// Completions by status, to show what the inputs reached.
    pub seen: std::collections::BTreeMap<u32, u64>,
}

/// The bytes one fuzz input reads, as small numbers; zeros once it runs out.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        let (&first, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        first
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn u64(&mut self) -> u64 {
        (0..8).fold(0, |value, _| value << 8 | u64::from(self.u8()))
    }
}

impl CommitRig {
    /// Boots `driver` (revcall.sys), creates the LUN, attaches the servers and starts the
    /// workers.
    pub fn start(driver: &Path) -> Result<Self, String> {
        let harness = Harness::start(
            driver,
            Config {
                delay_probability: 0.0,
                timeline: false,
                // No Storport timeout ever fires: every SRB waits for the COMMIT the input makes.
                srb_second: Duration::from_secs(60),
                ..Config::default()
            },
        )
        .map_err(|error| format!("revcall.sys does not start: {error}"))?;
        let kernel = harness.kernel.clone();
        let admin = Channel::open(&kernel, 1);
        let mut serial = [b' '; 32];
        serial[..6].copy_from_slice(b"FUZZED");
        let lun = admin
            .create_lun(LunSpec {
                block_count: REGION * WORKERS as u64,
                block_size: BLOCK,
                serial,
                unique_id: [0x5A; 16],
                ..LunSpec::default()
            })
            .map_err(|status| format!("LUN_CREATE: {}", Named(status)))?;
        admin.close();
        let servers = [Channel::open(&kernel, 20), Channel::open(&kernel, 21)];
        let attaches = [servers[0].attach(lun), servers[1].attach(lun)];
        let class = Arc::new(kernel.disk_class().ok_or("no disk class: not started")?);
        let (report, done) = channel();
        let stop = Arc::new(AtomicBool::new(false));
        let workers = (0..WORKERS)
            .map(|worker| {
                let (class, report, stop) = (class.clone(), report.clone(), stop.clone());
                std::thread::spawn(move || work(worker, &class, &report, &stop))
            })
            .collect();
        Ok(Self {
            harness,
            servers,
            attaches,
            held: HashMap::new(),
            generations: HashMap::new(),
            done,
            stop,
            workers,
            inputs: 0,
            committed: 0,
            seen: std::collections::BTreeMap::new(),
        })
    }

    /// Runs one input; `Err` says what the driver did wrong.
    pub fn check(&mut self, data: &[u8]) -> Result<(), String> {
        self.inputs += 1;
        self.gather()?;
        let mut bytes = Bytes(data);
        let mode = bytes.u8();
        let server = usize::from(mode >> 1 & 1);
        let out_len = match bytes.u8() {
            0 => u32::from(bytes.u8()),
            _ => 64,
        };
        let input = if mode & 1 == 0 {
            self.raw(&mut bytes)
        } else {
            self.built(&mut bytes, server)
        };
        let expected = self.expect(&input, out_len, server);
        let request = self.servers[server]
            .send_raw(&input, out_len)
            .map_err(|status| format!("the I/O manager refused the IOCTL: {}", Named(status)))?;
        let outcome = request
            .wait(PATIENCE)
            .ok_or("a COMMIT with max_descriptors 0 did not complete")?;
        if request.completions() != 1 {
            return Err(format!("completed {} times", request.completions()));
        }
        *self.seen.entry(outcome.status).or_default() += 1;
        let verdict = match expected {
            Verdict::Refused(statuses) if statuses.contains(&outcome.status) => Ok(()),
            Verdict::Refused(statuses) => Err(format!(
                "completed {}, expected one of {:?} for {input:02x?} from server {server}; \
                 held (tag, server): {:x?}",
                Named(outcome.status),
                statuses
                    .iter()
                    .map(|&s| Named(s).to_string())
                    .collect::<Vec<_>>(),
                self.held
                    .values()
                    .map(|h| (h.descriptor.tag, h.server))
                    .collect::<Vec<_>>()
            )),
            // A tag at the edge of its slot's history was taken for unknown: refused whole.
            Verdict::Accepted { edge: true, .. } if outcome.status == STATUS_NOT_FOUND => Ok(()),
            Verdict::Accepted { .. } if outcome.status != STATUS_SUCCESS => Err(format!(
                "a valid COMMIT refused {} ({input:02x?})",
                Named(outcome.status)
            )),
            Verdict::Accepted { stale, ends, .. } => {
                let work = self.servers[server]
                    .work(&outcome)
                    .map_err(|status| format!("the reply does not decode ({status:#x})"))?;
                if !stale.contains(&work.stale) || !work.items.is_empty() || work.last {
                    return Err(format!(
                        "reply: stale {} (expected {stale:?}), {} descriptors, last {}",
                        work.stale,
                        work.items.len(),
                        work.last
                    ));
                }
                self.settle(ends)
            }
        };
        verdict?;
        // Whatever else: nothing completed that was not committed.
        self.unexpected(Duration::ZERO)?;
        let violations = self.harness.kernel.machine().verifier().violations();
        if violations.is_empty() {
            Ok(())
        } else {
            Err(format!("verifier: {violations:?}"))
        }
    }

    /// Fetches until every worker's SRB is at a server, then takes back the FETCHes still
    /// out: while the COMMIT runs no SRB reaches a server unseen, so the model knows every
    /// slot's generation but for one SRB queued since.
    fn gather(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + PATIENCE;
        let mut fetches: [Option<Arc<Request>>; 2] = [None, None];
        loop {
            for (server, fetch) in fetches.iter_mut().enumerate() {
                if self.held.len() == WORKERS {
                    if let Some(out) = fetch.take() {
                        self.servers[server].cancel(&out);
                        let outcome = out.wait(PATIENCE).ok_or("a cancelled FETCH stayed")?;
                        self.take_work(server, &outcome)?;
                    }
                    continue;
                }
                let out = fetch.get_or_insert_with(|| self.servers[server].fetch(4));
                if let Some(outcome) = out.outcome() {
                    *fetch = None;
                    self.take_work(server, &outcome)?;
                }
            }
            if self.held.len() == WORKERS && fetches.iter().all(Option::is_none) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "only {} of {WORKERS} SRBs reached the servers",
                    self.held.len()
                ));
            }
            std::thread::yield_now();
        }
    }

    /// Records what a FETCH that ended handed to `server` (a cancelled one: nothing).
    fn take_work(&mut self, server: usize, outcome: &Outcome) -> Result<(), String> {
        if outcome.status == STATUS_CANCELLED {
            return Ok(());
        }
        let work = self.servers[server]
            .work(outcome)
            .map_err(|status| format!("FETCH failed: {}", Named(status)))?;
        for (descriptor, _) in work.items {
            self.handed_out(descriptor.tag);
            self.held
                .insert(descriptor.tag, Held { descriptor, server });
        }
        Ok(())
    }

    fn handed_out(&mut self, tag: u64) {
        let (slot, generation) = split(tag);
        let entry = self.generations.entry(slot).or_default();
        entry.0 = entry.0.max(generation);
    }

    /// A valid header (COMMIT_AND_FETCH, this version, the true size unless the input says
    /// otherwise) before raw body bytes.
    fn raw(&self, bytes: &mut Bytes<'_>) -> Vec<u8> {
        let lie = bytes.u8() == 0xFF;
        let body = bytes.0.to_vec();
        let mut input = vec![0u8; 8];
        input.extend_from_slice(&body);
        let size = if lie {
            u32::from(bytes.u16())
        } else {
            input.len() as u32
        };
        input[..4].copy_from_slice(&size.to_le_bytes());
        input[4..6].copy_from_slice(&VERSION.to_le_bytes());
        input[6..8].copy_from_slice(&(Opcode::CommitAndFetch as u16).to_le_bytes());
        force_commit_only(&mut input);
        input
    }

    /// Results built from the tags held and seen: mostly the sender's own, some another's,
    /// perturbed, committed before or made up.
    fn built(&self, bytes: &mut Bytes<'_>, server: usize) -> Vec<u8> {
        let mut held: Vec<&Held> = self.held.values().collect();
        held.sort_by_key(|h| h.descriptor.tag);
        let own: Vec<&Held> = held
            .iter()
            .copied()
            .filter(|h| h.server == server)
            .collect();
        let committed: Vec<u64> = self
            .generations
            .iter()
            .flat_map(|(&slot, (_, gens))| gens.iter().map(move |&g| join(slot, g)))
            .collect();
        let mut results = Vec::new();
        let mut data = Vec::new();
        for _ in 0..bytes.u8() % 5 {
            let pick = bytes.u8();
            let index = usize::from(bytes.u8());
            let any = held.get(index % held.len().max(1)).copied();
            let mine = own.get(index % own.len().max(1)).copied();
            let tag = match (pick % 8, mine, any) {
                (0..=3, Some(h), _) | (4, _, Some(h)) => h.descriptor.tag,
                (5, _, Some(h)) => h.descriptor.tag ^ u64::from(bytes.u8()) << 16,
                (6, ..) if !committed.is_empty() => committed[index % committed.len()],
                _ => bytes.u64(),
            };
            let op = self.held.get(&tag).map(|h| h.descriptor);
            let check = bytes.u8();
            let (scsi_status, sense_key, asc, ascq) = if check % 4 == 3 {
                (
                    ScsiStatus::CHECK_CONDITION,
                    bytes.u8() % 0x11,
                    bytes.u8(),
                    bytes.u8(),
                )
            } else {
                (ScsiStatus::GOOD, 0, 0, 0)
            };
            let right = match op {
                Some(d) if d.op == DataOp::Read as u8 && scsi_status == ScsiStatus::GOOD => {
                    d.blocks * BLOCK
                }
                _ => 0,
            };
            let data_len = if bytes.u8() % 8 == 7 {
                u32::from(bytes.u16() % 5000)
            } else {
                right
            };
            let fill = bytes.u8();
            data.extend((0..data_len).map(|i| fill.wrapping_add(i as u8)));
            results.push(CommitResult {
                tag,
                scsi_status,
                sense_key,
                asc,
                ascq,
                data_len,
            });
        }
        let mut input = vec![0u8; 16 + 16 * results.len() + data.len()];
        let size = encode_commit(&mut input, 0, &results, &data).expect("room");
        input.truncate(size);
        input
    }

    /// What the driver must make of `input` sent by `server`.
    fn expect(&self, input: &[u8], out_len: u32, server: usize) -> Verdict {
        if let Some(status) = refusal(input, out_len) {
            return Verdict::Refused(vec![status]);
        }
        let Some(commit) = Commit::of(input) else {
            return Verdict::Refused(vec![]);
        };
        let mut stale_min = 0;
        let mut stale_max = 0;
        let mut ends = Vec::new();
        for (result, data) in commit.results() {
            let fate = match self.held.get(&result.tag) {
                Some(held) if held.server != server => Fate::Refused(STATUS_ACCESS_DENIED),
                Some(held) => {
                    let d = held.descriptor;
                    let read = d.op == DataOp::Read as u8;
                    let want = match (read, result.scsi_status) {
                        (true, ScsiStatus::GOOD) => (d.blocks * BLOCK) as usize,
                        _ => 0,
                    };
                    if data.len() != want {
                        Fate::Refused(STATUS_INVALID_BUFFER_SIZE)
                    } else {
                        let end = if result.scsi_status == ScsiStatus::GOOD {
                            if read {
                                Expected::Read(data.to_vec())
                            } else {
                                Expected::Written
                            }
                        } else {
                            Expected::Check(Sense {
                                key: SenseKey::try_from(result.sense_key)
                                    .unwrap_or(SenseKey::HardwareError),
                                asc: result.asc,
                                ascq: result.ascq,
                            })
                        };
                        Fate::Ends(result.tag, end)
                    }
                }
                None => self.old(result.tag),
            };
            match fate {
                // An earlier tag at the edge of its slot's history may have refused it first.
                Fate::Refused(status) if stale_max != stale_min => {
                    return Verdict::Refused(vec![status, STATUS_NOT_FOUND]);
                }
                Fate::Refused(status) => return Verdict::Refused(vec![status]),
                Fate::Ends(tag, end) => ends.push((tag, end)),
                Fate::Stale => {
                    stale_min += 1;
                    stale_max += 1;
                }
                Fate::StaleOrUnknown => stale_max += 1,
            }
        }
        Verdict::Accepted {
            stale: stale_min..=stale_max,
            ends,
            edge: stale_max != stale_min,
        }
    }

    /// A tag no server holds: one committed before, or never handed out.
    fn old(&self, tag: u64) -> Fate {
        let (slot, generation) = split(tag);
        let Some((newest, _)) = self.generations.get(&slot) else {
            return Fate::Refused(STATUS_NOT_FOUND);
        };
        if generation == 0 || generation > *newest {
            // Never handed out (a later generation may be queued, not yet fetched: unknown too).
            return Fate::Refused(STATUS_NOT_FOUND);
        }
        // With no FETCH out, a slot whose newest generation the rig saw is not held may hold
        // one more, queued: one generation older in the driver's eyes.
        let exact = self.held.contains_key(&join(slot, *newest));
        match newest - generation {
            age if age >= HISTORY => Fate::Stale,
            age if age == HISTORY - 1 && !exact => Fate::StaleOrUnknown,
            _ => Fate::Refused(STATUS_NOT_FOUND),
        }
    }

    /// Waits for every committed SRB's worker to report the ending the COMMIT gave it.
    fn settle(&mut self, ends: Vec<(u64, Expected)>) -> Result<(), String> {
        let mut waiting: HashMap<usize, (u64, Expected)> = HashMap::new();
        for (tag, end) in ends {
            let held = self.held.remove(&tag).expect("the model held it");
            let (slot, generation) = split(tag);
            self.generations
                .entry(slot)
                .or_default()
                .1
                .insert(generation);
            waiting.insert(worker_of(&held.descriptor), (tag, end));
            self.committed += 1;
        }
        while !waiting.is_empty() {
            let (worker, completion) = match self.done.recv_timeout(PATIENCE) {
                Ok(done) => done,
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!("committed SRBs never completed: {waiting:?}"));
                }
                Err(RecvTimeoutError::Disconnected) => return Err("the workers died".into()),
            };
            let Some((tag, end)) = waiting.remove(&worker) else {
                return Err(format!(
                    "worker {worker}'s SRB completed without a COMMIT: {completion:?}"
                ));
            };
            let right = match &end {
                Expected::Read(data) => {
                    completion.srb_status == SRB_STATUS_SUCCESS && completion.data == *data
                }
                Expected::Written => completion.srb_status == SRB_STATUS_SUCCESS,
                Expected::Check(sense) => {
                    completion.srb_status == SRB_STATUS_ERROR && completion.sense == Some(*sense)
                }
            };
            if !right {
                return Err(format!(
                    "tag {tag:#x} committed as {end:?} ended {completion:?}"
                ));
            }
        }
        Ok(())
    }

    /// Fails if a worker reported a completion within `wait` (none is expected).
    fn unexpected(&self, wait: Duration) -> Result<(), String> {
        match self.done.recv_timeout(wait) {
            Ok((worker, completion)) => Err(format!(
                "worker {worker}'s SRB completed without a COMMIT: {completion:?}"
            )),
            Err(_) => Ok(()),
        }
    }

    /// Removes the adapter (every held SRB ends NO_DEVICE), stops the workers and returns
    /// storsim's verdict.
    pub fn finish(self) -> Result<Summary, String> {
        self.stop.store(true, Ordering::Relaxed);
        self.harness.kernel.remove_adapter(|| {});
        for worker in self.workers {
            worker.join().map_err(|_| "a worker panicked")?;
        }
        for attach in &self.attaches {
            attach
                .wait(PATIENCE)
                .ok_or("an ATTACH outlived the adapter")?;
        }
        for server in self.servers {
            server.close();
        }
        Ok(self.harness.finish())
    }
}

/// A worker: one READ or WRITE at a time in its region, each reported when it ends.
fn work(worker: usize, class: &DiskClass, report: &Sender<Done>, stop: &AtomicBool) {
    let mut rng = fastrand::Rng::with_seed(worker as u64);
    while !stop.load(Ordering::Relaxed) {
        let blocks = rng.u32(1..=8);
        let lba = worker as u64 * REGION + rng.u64(0..REGION - 8);
        let transfer = Transfer {
            lba,
            blocks,
            fua: false,
        };
        let len = blocks * BLOCK;
        let completion = if rng.bool() {
            class.command(0, &Command::Read(transfer), len, None)
        } else {
            let payload = vec![worker as u8; len as usize];
            class.command(0, &Command::Write(transfer), len, Some(&payload))
        };
        let Some(completion) = completion else {
            return;
        };
        if stop.load(Ordering::Relaxed) || report.send((worker, completion)).is_err() {
            return;
        }
    }
}

/// A parsed COMMIT whose `max_descriptors` the decoder would take gets 0 instead: the FETCH
/// half is not this target's (and a parked one would wait for work the rig holds).
fn force_commit_only(input: &mut [u8]) {
    if let Some(field) = input.get_mut(12..16) {
        let max = u32::from_le_bytes(field.try_into().expect("four bytes"));
        if max <= revcall_protocol::MAX_DESCRIPTORS {
            field.copy_from_slice(&0u32.to_le_bytes());
        }
    }
}

fn worker_of(descriptor: &Descriptor) -> usize {
    (descriptor.lba / REGION) as usize
}

fn split(tag: u64) -> (u16, u64) {
    ((tag & 0xFFFF) as u16, tag >> 16)
}

fn join(slot: u16, generation: u64) -> u64 {
    generation << 16 | u64::from(slot)
}

enum Fate {
    Refused(u32),
    Ends(u64, Expected),
    Stale,
    /// At the edge of the slot's history.
    StaleOrUnknown,
}

enum Verdict {
    /// Refused with one of these statuses; no SRB touched.
    Refused(Vec<u32>),
    /// Accepted with a stale count in `stale`; `ends` are the SRBs it completes. With `edge`,
    /// a tag at the edge of its slot's history may instead refuse it whole, NOT_FOUND.
    Accepted {
        stale: std::ops::RangeInclusive<u32>,
        ends: Vec<(u64, Expected)>,
        edge: bool,
    },
}
