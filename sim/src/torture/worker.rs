//! One emulated CPU of the torture: a user thread with waiters on several handles in two
//! processes, issuing a seeded random mix of requests, cancellations (its own, and as another
//! thread of the owning process, of other CPUs' requests), handle closes and process exits,
//! and checking every completion it gets.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use revcall_protocol::status::{STATUS_DELETE_PENDING, STATUS_DEVICE_REMOVED, STATUS_SUCCESS};
use revcall_protocol::{CURSOR_NOW, Reply, decode_reply};

use super::chronicle::Tick;
use super::ledger::{DriverView, Excuses, Path, WaiterLog, allowed, status_name};
use super::{Op, Shared};
use crate::client::{Channel, PROMPT};
use revcall_protocol::status::{STATUS_CANCELLED, STATUS_QUOTA_EXCEEDED};
use storport_abi::status::user::STATUS_INSUFFICIENT_RESOURCES;
use storsim::io::{Handle, Outcome, ProcessId, Request};
use storsim::kernel::Kernel;

/// Waiters (handles with a WAIT of their own) per emulated CPU.
const WAITERS: usize = 3;

/// WAITs the driver parks per adapter (revcall's PARK_CAP; STATS reports it too).
const PARK_CAP: usize = 1024;

/// WAITs a flood sends at once: more than the driver parks per adapter, so the cap is reached
/// (events are held back while a flood sends), even when the low-resources simulation refuses
/// a few percent of them.
const FLOOD: usize = PARK_CAP + 64;

/// CancelIoEx calls a foreign cancel makes while its target CPU is still sending a WAIT.
const FOREIGN_TRIES: usize = 64;

/// Process ids handed out to the torture's user processes.
static NEXT_PROCESS: AtomicU32 = AtomicU32::new(10_000);

fn new_process() -> ProcessId {
    NEXT_PROCESS.fetch_add(1, Ordering::Relaxed)
}

/// A WAIT in flight.
struct InFlight {
    request: Arc<Request>,
    handle: Handle,
    /// The adapter instance `handle` was opened on.
    instance: Option<u64>,
    out_len: u32,
    /// Before DeviceIoControl.
    sent: Tick,
    /// After DeviceIoControl returned with the WAIT still pending: the driver had parked it.
    parked: Option<Tick>,
    /// When this CPU asked for its cancellation (CancelIoEx, its process exiting).
    cancelled_at: Option<Tick>,
}

/// A client that keeps one WAIT outstanding and follows its cursor.
struct Waiter {
    channel: Channel,
    /// The adapter instance `channel` was opened on.
    instance: Option<u64>,
    log: WaiterLog,
    /// The instance `log` follows.
    log_instance: Option<u64>,
    pending: Option<InFlight>,
}

/// What one CPU counted.
#[derive(Default)]
pub struct Tally {
    pub ops: BTreeMap<Op, u64>,
    pub statuses: BTreeMap<u32, u64>,
    pub fired: u64,
    pub delivered: u64,
    pub lost: u64,
    pub lost_at_start: u64,
    /// (adapter instance, seq) of every successful FIRE: no two may share one.
    pub fire_seqs: Vec<(u64, u64)>,
    /// What the driver must have counted, by adapter instance, from what this CPU saw.
    pub views: BTreeMap<u64, DriverView>,
    /// Floods that reached the cap, their QUOTA_EXCEEDED refusals checked against it.
    pub floods_at_cap: u64,
    /// Other CPUs' handles this CPU cancelled on.
    pub foreign_cancels: u64,
}

pub struct Worker<'a> {
    kernel: &'a Arc<Kernel>,
    shared: &'a Shared,
    index: usize,
    rng: fastrand::Rng,
    processes: [ProcessId; 2],
    waiters: Vec<Waiter>,
    fires: u64,
    /// Checkpoints this CPU has served.
    served: u64,
    /// LUN_CREATEs sent, for unique serial numbers.
    luns_created: u64,
    pub tally: Tally,
}

impl<'a> Worker<'a> {
    pub fn new(kernel: &'a Arc<Kernel>, shared: &'a Shared, index: usize, seed: u64) -> Self {
        let processes = [new_process(), new_process()];
        let mut worker = Self {
            kernel,
            shared,
            index,
            rng: fastrand::Rng::with_seed(
                seed ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            ),
            processes,
            waiters: Vec::new(),
            fires: 0,
            served: 0,
            luns_created: 0,
            tally: Tally::default(),
        };
        for w in 0..WAITERS {
            let channel = Channel::open(kernel, processes[w % 2]);
            shared.chronicle.expose(index, channel.handle);
            let waiter = worker.fresh_waiter(channel);
            worker.waiters.push(waiter);
        }
        worker
    }

    fn fresh_waiter(&mut self, channel: Channel) -> Waiter {
        let instance = self.kernel.io().handle_instance(channel.handle);
        Waiter {
            channel,
            instance,
            log: WaiterLog::new(self.start_cursor()),
            log_instance: instance,
            pending: None,
        }
    }

    fn start_cursor(&mut self) -> u64 {
        if self.rng.u8(0..5) == 0 {
            CURSOR_NOW
        } else {
            0
        }
    }

    fn fail(&self, what: String) {
        self.shared.fail(format!("cpu {}: {what}", self.index));
    }

    fn count(&mut self, op: Op) {
        *self.tally.ops.entry(op).or_default() += 1;
        self.shared.ops_done.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs `ops` operations.
    pub fn run(&mut self, ops: u64) {
        for _ in 0..ops {
            self.checkpoint(false);
            self.reap_all();
            match self.rng.u8(0..100) {
                0..40 => self.wait(),
                40..55 => self.fire(),
                55..58 => self.discover(),
                58..63 => self.stats(),
                63..71 => self.cancel(),
                71..75 => self.cancel_foreign(),
                75..78 => self.close_handle(),
                78 if self.rng.u32(0..50) == 0 => self.flood(),
                78 => self.exit_process(),
                79..81 => self.lun(),
                _ => self.malformed(),
            }
        }
    }

    /// Done with its share: serves checkpoints until the run ends.
    pub fn idle(&mut self) {
        self.checkpoint(true);
    }

    /// At a checkpoint (between two operations, or `idle`), settles whatever has completed and
    /// publishes this CPU's view of the driver's counters.
    fn checkpoint(&mut self, idle: bool) {
        let shared = self.shared;
        let mut served = self.served;
        let publish = || {
            self.reap_all();
            shared.views.lock().unwrap_or_else(|p| p.into_inner())[self.index] =
                self.tally.views.clone();
        };
        if idle {
            shared.checkpoints.idle(&mut served, publish);
        } else {
            shared.checkpoints.boundary(&mut served, publish);
        }
        self.served = served;
    }

    /// After the final removal: every WAIT still out must complete, and each waiter's
    /// accounting must add up.
    pub fn finish(&mut self) {
        for w in 0..self.waiters.len() {
            if let Some(in_flight) = &self.waiters[w].pending {
                if in_flight.request.wait(PROMPT).is_none() {
                    self.fail(format!(
                        "a WAIT (request #{}) was never completed, even by the final removal",
                        in_flight.request.id
                    ));
                    self.waiters[w].pending = None;
                    continue;
                }
                self.reap(w);
            }
            self.retire_log(w);
        }
        for waiter in std::mem::take(&mut self.waiters) {
            self.shared.chronicle.withdraw(waiter.channel.handle);
            waiter.channel.close();
        }
    }

    /// The end of waiter `w`'s log: its accounting checked and added to the tally.
    fn retire_log(&mut self, w: usize) {
        let log = &self.waiters[w].log;
        if let Err(error) = log.close() {
            self.fail(format!("waiter {w}: {error}"));
        }
        let log = &self.waiters[w].log;
        self.tally.delivered += log.events;
        self.tally.lost += log.lost;
        self.tally.lost_at_start += log.lost_at_start;
    }

    fn reap_all(&mut self) {
        for w in 0..self.waiters.len() {
            if self.waiters[w]
                .pending
                .as_ref()
                .is_some_and(|p| p.request.outcome().is_some())
            {
                self.reap(w);
            }
        }
    }

    /// Checks the exactly-once completion every request gets, and its status on `path` (with
    /// what excuses an error); counts it in the view of adapter `instance` it was sent to.
    fn settle(
        &mut self,
        path: Path,
        request: &Request,
        excuses: Excuses,
        instance: Option<u64>,
    ) -> Option<Outcome> {
        let outcome = request.outcome()?;
        *self.tally.statuses.entry(outcome.status).or_default() += 1;
        if let Some(instance) = instance {
            self.tally
                .views
                .entry(instance)
                .or_default()
                .saw(path, outcome.status);
        }
        if request.completions() != 1 {
            self.fail(format!(
                "request #{} ({path:?}) completed {} times",
                request.id,
                request.completions()
            ));
        }
        let excuses = Excuses {
            low_resources: self.shared.fault_rate > 0.0,
            ..excuses
        };
        if !allowed(path, outcome.status, excuses) {
            self.fail(format!(
                "request #{} ({path:?}) completed with {}, which that path does not allow",
                request.id,
                status_name(outcome.status)
            ));
        }
        if revcall_protocol::status::is_error(outcome.status)
            && (outcome.information != 0 || !outcome.output.is_empty())
        {
            self.fail(format!(
                "request #{} ({path:?}) failed {} but reported {} bytes",
                request.id,
                status_name(outcome.status),
                outcome.information
            ));
        }
        Some(outcome)
    }

    /// A completed WAIT: check it and move the waiter on.
    fn reap(&mut self, w: usize) {
        let Some(in_flight) = self.waiters[w].pending.take() else {
            return;
        };
        if in_flight.request.outcome().is_none() {
            self.waiters[w].pending = Some(in_flight);
            return;
        }
        let seen = self.shared.chronicle.tick();
        let cancelled_at = self.cancelled_at(&in_flight, seen);
        let excuses = Excuses {
            cancel_requested: cancelled_at.is_some(),
            cap_full: self.shared.chronicle.flooded(in_flight.sent, seen),
            ..Excuses::default()
        };
        let Some(outcome) =
            self.settle(Path::Wait, &in_flight.request, excuses, in_flight.instance)
        else {
            return;
        };
        if outcome.status == STATUS_CANCELLED {
            self.check_removal_drained(&in_flight, cancelled_at);
        }
        match outcome.status {
            STATUS_SUCCESS => {
                if outcome.information > in_flight.out_len as usize {
                    self.fail(format!(
                        "WAIT #{}: Information {} beyond its {}-byte buffer",
                        in_flight.request.id, outcome.information, in_flight.out_len
                    ));
                }
                match decode_reply(&outcome.output) {
                    Ok(Reply::Wait { reply, events }) => {
                        let events: Vec<_> = events.collect();
                        if let Err(error) = self.waiters[w].log.absorb(&reply, &events) {
                            self.fail(format!(
                                "waiter {w}, WAIT #{}: {error}",
                                in_flight.request.id
                            ));
                        }
                    }
                    other => self.fail(format!(
                        "WAIT #{} succeeded with a reply that is not a WAIT reply: {other:?}",
                        in_flight.request.id
                    )),
                }
            }
            // After a FINAL reply the waiter re-arms to drain what is retained; the refusal
            // that ends the drain says it saw everything, the removal last.
            STATUS_DEVICE_REMOVED => {
                if let Err(error) = self.waiters[w].log.removed() {
                    self.fail(format!("waiter {w}: {error}"));
                }
                self.reopen(w);
            }
            STATUS_DELETE_PENDING => {
                self.reopen(w);
                // Removal is under way on another CPU: let it progress.
                std::thread::yield_now();
            }
            _ => {}
        }
    }

    /// The earliest cancel that could have reached `in_flight`: this CPU's own, or another
    /// CPU's on its handle while it was out.
    fn cancelled_at(&self, in_flight: &InFlight, seen: Tick) -> Option<Tick> {
        let foreign = self
            .shared
            .chronicle
            .foreign_cancel(in_flight.handle, in_flight.sent, seen);
        match (in_flight.cancelled_at, foreign) {
            (Some(own), Some(foreign)) => Some(own.min(foreign)),
            (own, foreign) => own.or(foreign),
        }
    }

    /// A WAIT the driver had parked before a removal of its adapter began must be completed by
    /// that removal's HwCompleteServiceIrp, unless a cancel began before that returned: a
    /// CANCELLED from a later cancel means the removal left it parked.
    fn check_removal_drained(&self, in_flight: &InFlight, cancelled_at: Option<Tick>) {
        let (Some(parked), Some(instance)) = (in_flight.parked, in_flight.instance) else {
            return;
        };
        let Some(removal) = self.shared.chronicle.drained_after(instance, parked) else {
            return;
        };
        if cancelled_at.is_some_and(|at| at > removal.drained) {
            self.fail(format!(
                "WAIT #{} was parked (tick {parked}) before the removal of adapter instance {} \
                 began (tick {}) but was completed CANCELLED by a cancel that began after \
                 HwCompleteServiceIrp returned (tick {}): the removal left it parked",
                in_flight.request.id, instance, removal.began, removal.drained
            ));
        }
    }

    /// The waiter's adapter is gone: a new handle (to whatever adapter is there now).
    fn reopen(&mut self, w: usize) {
        let process = self.waiters[w].channel.process;
        self.attach(w, process).close();
    }

    /// Gives waiter `w` a new handle in `process`; returns the old one.
    fn attach(&mut self, w: usize, process: ProcessId) -> Channel {
        let channel = Channel::open(self.kernel, process);
        self.waiters[w].instance = self.kernel.io().handle_instance(channel.handle);
        self.shared.chronicle.expose(self.index, channel.handle);
        let old = std::mem::replace(&mut self.waiters[w].channel, channel);
        self.shared.chronicle.withdraw(old.handle);
        old
    }

    /// Before a WAIT on a handle to another adapter instance than the waiter's log follows,
    /// the log ends (its accounting checked) and a new one starts.
    fn follow_instance(&mut self, w: usize) {
        if self.waiters[w].instance == self.waiters[w].log_instance {
            return;
        }
        self.retire_log(w);
        let cursor = self.start_cursor();
        let waiter = &mut self.waiters[w];
        waiter.log = WaiterLog::new(cursor);
        waiter.log_instance = waiter.instance;
    }

    /// A random waiter whose WAIT is (`parked`) or is not in flight.
    fn pick(&mut self, parked: bool) -> Option<usize> {
        let matching: Vec<usize> = (0..self.waiters.len())
            .filter(|&w| self.waiters[w].pending.is_some() == parked)
            .collect();
        (!matching.is_empty()).then(|| matching[self.rng.usize(0..matching.len())])
    }

    fn wait(&mut self) {
        let Some(w) = self.pick(false) else {
            return self.fire();
        };
        self.count(Op::Wait);
        self.follow_instance(w);
        let max_events = self.rng.u32(1..=16);
        let out_len = 64 + 32 * (max_events - 1) + self.rng.u32(0..3) * 32;
        let handle = self.waiters[w].channel.handle;
        let request = revcall_protocol::Request::Wait {
            cursor: self.waiters[w].log.cursor,
            max_events,
        };
        let sent = self.shared.chronicle.tick();
        self.shared.chronicle.sending(self.index, Some(handle));
        let request = self.send(handle, &request, out_len);
        self.shared.chronicle.sending(self.index, None);
        if let Some(request) = request {
            let done = request.outcome().is_some();
            self.waiters[w].pending = Some(InFlight {
                request,
                handle,
                instance: self.waiters[w].instance,
                out_len,
                sent,
                parked: (!done).then(|| self.shared.chronicle.tick()),
                cancelled_at: None,
            });
            if done {
                self.reap(w);
            }
        }
    }

    /// Sends a well-formed request; `None` if the I/O manager refused it before any IRP
    /// existed (only allowed as an injected IRP allocation failure).
    fn send(
        &mut self,
        handle: Handle,
        request: &revcall_protocol::Request,
        out_len: u32,
    ) -> Option<Arc<Request>> {
        let mut bytes = [0u8; revcall_protocol::MAX_REQUEST_SIZE];
        let len = revcall_protocol::encode_request(request, &mut bytes)
            .expect("every request record fits MAX_REQUEST_SIZE");
        self.raw(
            handle,
            revcall_protocol::IOCTL_MINIPORT_PROCESS_SERVICE_IRP,
            &bytes[..len],
            out_len,
        )
    }

    fn raw(
        &mut self,
        handle: Handle,
        code: u32,
        input: &[u8],
        out_len: u32,
    ) -> Option<Arc<Request>> {
        match self.kernel.device_io_control(handle, code, input, out_len) {
            Ok(request) => Some(request),
            Err(status) => {
                *self.tally.statuses.entry(status).or_default() += 1;
                if status != STATUS_INSUFFICIENT_RESOURCES || self.shared.fault_rate == 0.0 {
                    self.fail(format!(
                        "DeviceIoControl refused before the driver: {}",
                        status_name(status)
                    ));
                }
                None
            }
        }
    }

    /// A request the driver answers at once: its completion, checked.
    fn immediate(
        &mut self,
        path: Path,
        request: Option<Arc<Request>>,
        instance: Option<u64>,
    ) -> Option<Outcome> {
        let request = request?;
        // Completed inside HwProcessServiceRequest, before DeviceIoControl returned.
        let outcome = self.settle(path, &request, Excuses::default(), instance);
        if outcome.is_none() {
            self.fail(format!(
                "request #{} ({path:?}) is still pending: the driver parked or lost it",
                request.id
            ));
        }
        outcome
    }

    fn any_channel(&mut self) -> usize {
        self.rng.usize(0..self.waiters.len())
    }

    /// A handle of one of this CPU's waiters, and the adapter instance it was opened on.
    fn any_handle(&mut self) -> (Handle, Option<u64>) {
        let w = self.any_channel();
        (self.waiters[w].channel.handle, self.waiters[w].instance)
    }

    fn fire(&mut self) {
        self.count(Op::Fire);
        let (handle, instance) = self.any_handle();
        self.fires += 1;
        let request = revcall_protocol::Request::Fire {
            code: 0x1000 + self.index as u32,
            value: self.fires,
        };
        let sent = {
            let _events = self.shared.events_allowed();
            self.send(handle, &request, 64)
        };
        if let Some(outcome) = self.immediate(Path::Fire, sent, instance)
            && outcome.status == STATUS_SUCCESS
        {
            match decode_reply(&outcome.output) {
                Ok(Reply::Fire(reply)) => {
                    self.tally.fired += 1;
                    if let Some(instance) = instance {
                        self.tally.fire_seqs.push((instance, reply.seq));
                    }
                }
                other => self.fail(format!("FIRE succeeded without a FIRE reply: {other:?}")),
            }
        }
    }

    fn discover(&mut self) {
        self.count(Op::Discover);
        let (handle, instance) = self.any_handle();
        let request = revcall_protocol::Request::Discover {
            delay_ms: self.rng.u32(1..=3),
        };
        let sent = {
            // The discovery's event comes from the timer later; a flood tolerates that one.
            let _events = self.shared.events_allowed();
            self.send(handle, &request, 64)
        };
        if let Some(outcome) = self.immediate(Path::Discover, sent, instance)
            && outcome.status == STATUS_SUCCESS
            && !matches!(decode_reply(&outcome.output), Ok(Reply::Discover(_)))
        {
            self.fail("DISCOVER succeeded without a DISCOVER reply".into());
        }
    }

    fn stats(&mut self) {
        self.count(Op::Stats);
        let (handle, instance) = self.any_handle();
        let sent = self.send(handle, &revcall_protocol::Request::Stats, 256);
        if let Some(outcome) = self.immediate(Path::Stats, sent, instance)
            && outcome.status == STATUS_SUCCESS
        {
            match decode_reply(&outcome.output) {
                Ok(Reply::Stats(stats)) if stats.parked_now <= stats.parked_cap => {}
                other => self.fail(format!("STATS reply not sane: {other:?}")),
            }
        }
    }

    /// LUN_CREATE (a serial no other LUN has), LUN_REMOVE of any LUN number, or LUN_LIST:
    /// each CPU races the others for the eight numbers; every reply must be sane.
    fn lun(&mut self) {
        self.count(Op::Lun);
        let (handle, instance) = self.any_handle();
        let (path, request, out_len) = match self.rng.u8(0..3) {
            0 => {
                self.luns_created += 1;
                let mut serial = [b' '; 32];
                let name = format!("T{:02}-{:08}", self.index, self.luns_created);
                serial[..name.len()].copy_from_slice(name.as_bytes());
                // Not in byte 0: the NAA designator replaces its high nibble (VPD 0x83), and
                // ids that differ only there are one id to Windows, and to revcall.
                let mut unique_id = [0u8; 16];
                unique_id[1..9].copy_from_slice(&self.luns_created.to_le_bytes());
                unique_id[9] = self.index as u8 + 1;
                let spec = revcall_protocol::LunSpec {
                    block_count: self.rng.u64(1..1 << 24),
                    block_size: 512,
                    serial,
                    unique_id,
                    ..revcall_protocol::LunSpec::default()
                };
                (
                    Path::LunCreate,
                    revcall_protocol::Request::LunCreate(spec),
                    64,
                )
            }
            1 => {
                let lun = self.rng.u32(0..revcall_protocol::MAX_LUNS as u32 + 1);
                (
                    Path::LunRemove,
                    revcall_protocol::Request::LunRemove { lun },
                    64,
                )
            }
            _ => {
                let room = revcall_protocol::Opcode::LunList.min_reply_size() as u32;
                (Path::LunList, revcall_protocol::Request::LunList, room)
            }
        };
        let sent = self.send(handle, &request, out_len);
        let Some(outcome) = self.immediate(path, sent, instance) else {
            return;
        };
        if outcome.status != STATUS_SUCCESS {
            return;
        }
        let sane = match decode_reply(&outcome.output) {
            Ok(Reply::LunCreate(reply)) => path == Path::LunCreate && reply.lun < 8,
            Ok(Reply::LunRemove) => path == Path::LunRemove,
            Ok(Reply::LunList(entries)) => {
                let luns: Vec<u32> = entries.map(|e| e.lun).collect();
                path == Path::LunList && luns.windows(2).all(|w| w[0] < w[1])
            }
            _ => false,
        };
        if !sane {
            self.fail(format!(
                "{path:?} succeeded with a reply that is not sane: {:02x?}",
                outcome.output
            ));
        }
    }

    fn malformed(&mut self) {
        self.count(Op::Malformed);
        let w = self.any_channel();
        let cursor = self.waiters[w].log.cursor;
        let bad = revcall_client::malformed::generate(
            &mut self.rng,
            if cursor == CURSOR_NOW { 0 } else { cursor },
        );
        let handle = self.waiters[w].channel.handle;
        let sent = self.raw(handle, bad.code, &bad.input, bad.out_len);
        // Storport refuses another control code itself: the driver never counts it.
        let instance = if bad.code == revcall_protocol::IOCTL_MINIPORT_PROCESS_SERVICE_IRP {
            self.waiters[w].instance
        } else {
            None
        };
        self.immediate(Path::Malformed(bad.expected), sent, instance);
    }

    /// CancelIoEx of a waiter's parked WAIT: it must complete promptly (cancelled, or with
    /// the event that beat the cancel).
    fn cancel(&mut self) {
        let Some(w) = self.pick(true) else {
            return self.wait();
        };
        let waiter = &mut self.waiters[w];
        let Some(in_flight) = waiter.pending.as_mut() else {
            return self.wait();
        };
        if in_flight.handle != waiter.channel.handle {
            // Its handle was closed: CancelIoEx needs an open one.
            return self.wait();
        }
        in_flight.cancelled_at = Some(self.shared.chronicle.tick());
        let (handle, request) = (in_flight.handle, in_flight.request.clone());
        self.count(Op::Cancel);
        self.kernel.cancel_io(handle, Some(request.id));
        if request.wait(self.kernel.config().cancel_limit).is_none() {
            self.fail(format!(
                "WAIT #{} not completed {} ms after CancelIoEx",
                request.id,
                self.kernel.config().cancel_limit.as_millis()
            ));
        }
        self.reap(w);
    }

    /// A flood of WAITs on a new handle, more than the adapter's parked cap, then CancelIoEx of
    /// all of them: each ends cancelled, refused QUOTA_EXCEEDED past the cap, with an event, or
    /// by a removal; none is lost, each completes once. Events and other floods are held back
    /// meanwhile, so the parked count moves only by its own WAITs and the other waiters (at
    /// most one each): the cap is checked exactly, from both sides.
    fn flood(&mut self) {
        self.count(Op::Flood);
        let channel = Channel::open(self.kernel, self.processes[0]);
        let instance = self.kernel.io().handle_instance(channel.handle);
        let next = revcall_protocol::Request::Wait {
            cursor: CURSOR_NOW,
            max_events: 1,
        };
        let removals = self.shared.chronicle.removals();
        let flood = self.shared.chronicle.flood_begins();
        // Until every WAIT of this flood is complete: no event, and no other flood (whose
        // WAITs, still parked, would count against this one's cap).
        let quiet = self.shared.hold_events();
        // A discovery armed earlier would still complete every parked WAIT at once.
        self.await_discoveries(channel.handle, instance);
        let sent: Vec<_> = (0..FLOOD)
            .filter_map(|_| self.send(channel.handle, &next, 64))
            .collect();
        // Refusals complete at once; anything else that completed left the parked set.
        let completed_while_sending = sent
            .iter()
            .filter(|r| {
                r.outcome()
                    .is_some_and(|o| o.status != STATUS_QUOTA_EXCEEDED)
            })
            .count();
        self.kernel.cancel_io(channel.handle, None);
        let mut refused = Vec::new();
        for (index, request) in sent.iter().enumerate() {
            if request.wait(self.kernel.config().cancel_limit).is_none() {
                self.fail(format!(
                    "flooding WAIT #{} not completed {} ms after CancelIoEx",
                    request.id,
                    self.kernel.config().cancel_limit.as_millis()
                ));
            }
            let cancelled = Excuses {
                cancel_requested: true,
                ..Excuses::default()
            };
            if let Some(outcome) = self.settle(Path::Flood, request, cancelled, instance)
                && outcome.status == STATUS_QUOTA_EXCEEDED
            {
                refused.push(index);
            }
        }
        self.shared.chronicle.flood_ends(flood);
        drop(quiet);
        channel.close();
        if self.shared.chronicle.removals() == removals {
            self.check_cap(&refused, sent.len(), completed_while_sending);
        }
    }

    /// Waits (a little) until the adapter has no discovery pending, by STATS on `handle`.
    fn await_discoveries(&mut self, handle: Handle, instance: Option<u64>) {
        let deadline = std::time::Instant::now() + PROMPT;
        while std::time::Instant::now() < deadline {
            let sent = self.send(handle, &revcall_protocol::Request::Stats, 256);
            let Some(outcome) = self.immediate(Path::Stats, sent, instance) else {
                return;
            };
            match decode_reply(&outcome.output) {
                Ok(Reply::Stats(stats))
                    if stats.discoveries_completed < stats.discoveries_started =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                _ => return,
            }
        }
    }

    /// The cap, from the flood's side (`refused`: indices among the `sent` WAITs): its WAIT `k` found at most `k` of its own parked (fewer
    /// by those completed meanwhile, at most `completed`) beside at most one WAIT per waiter of
    /// every CPU. So none may be refused before `k` = cap − waiters, and every one from `k` =
    /// cap + `completed` on must be.
    fn check_cap(&mut self, refused: &[usize], sent: usize, completed: usize) {
        let others = WAITERS * self.shared.cpus;
        if let Some(&first) = refused.first()
            && first + others < PARK_CAP
        {
            return self.fail(format!(
                "a flood was refused QUOTA_EXCEEDED at its WAIT {first}: at most {} WAITs \
                 were parked, under the cap of {PARK_CAP}",
                first + others
            ));
        }
        let must_refuse = PARK_CAP + completed;
        let accepted_past_cap = (must_refuse..sent).find(|k| refused.binary_search(k).is_err());
        if let Some(k) = accepted_past_cap {
            return self.fail(format!(
                "a flood's WAIT {k} was not refused QUOTA_EXCEEDED with at least {} of its own \
                 WAITs parked (cap {PARK_CAP})",
                k - completed
            ));
        }
        if must_refuse < sent {
            self.tally.floods_at_cap += 1;
        }
    }

    /// CancelIoEx, as another thread of the owning process, on a handle another CPU waits on:
    /// it may land while that CPU's request is inside HwProcessServiceRequest. The owner learns
    /// of it from the chronicle when its WAIT completes.
    fn cancel_foreign(&mut self) {
        self.count(Op::CancelForeign);
        let kernel = self.kernel;
        let rng = &mut self.rng;
        if self.shared.chronicle.cancel_foreign(
            self.index,
            |n| rng.usize(0..n),
            FOREIGN_TRIES,
            |handle| {
                kernel.cancel_io(handle, None);
            },
        ) {
            self.tally.foreign_cancels += 1;
        }
    }

    /// CloseHandle with the WAIT in flight: no cleanup reaches a miniport, so the WAIT stays
    /// parked and its outcome still arrives; the waiter goes on with a new handle.
    fn close_handle(&mut self) {
        self.count(Op::Close);
        let w = self.any_channel();
        self.reopen(w);
    }

    /// One of this CPU's processes exits: the I/O manager cancels its IRPs and closes its
    /// handles; its waiters come back as a new process.
    fn exit_process(&mut self) {
        self.count(Op::Exit);
        let slot = self.rng.usize(0..2);
        let process = self.processes[slot];
        for waiter in &mut self.waiters {
            if let Some(in_flight) = waiter.pending.as_mut()
                && waiter.channel.process == process
            {
                in_flight.cancelled_at = Some(self.shared.chronicle.tick());
            }
        }
        for waiter in &self.waiters {
            if waiter.channel.process == process {
                self.shared.chronicle.withdraw(waiter.channel.handle);
            }
        }
        self.kernel.exit_process(process);
        let replacement = new_process();
        self.processes[slot] = replacement;
        for w in 0..self.waiters.len() {
            if self.waiters[w].channel.process != process {
                continue;
            }
            // Completed, or about to be: the registry may say so a moment before the
            // sender's outcome is filled in.
            if let Some(in_flight) = &self.waiters[w].pending
                && in_flight
                    .request
                    .wait(self.kernel.config().cancel_limit)
                    .is_none()
            {
                self.fail(format!(
                    "process exit left WAIT #{} uncompleted",
                    in_flight.request.id
                ));
            }
            self.reap(w);
            // The exited process's handles are closed already.
            let _closed = self.attach(w, replacement);
            // A new process is a new client: its log starts over.
            self.waiters[w].log_instance = None;
            self.follow_instance(w);
        }
    }
}
