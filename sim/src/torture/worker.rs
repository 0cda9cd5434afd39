//! One emulated CPU of the torture: a user thread with waiters on several handles in two
//! processes, issuing a seeded random mix of requests, cancellations, handle closes and
//! process exits, and checking every completion it gets.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use revcall_protocol::status::{STATUS_DELETE_PENDING, STATUS_DEVICE_REMOVED, STATUS_SUCCESS};
use revcall_protocol::{CURSOR_NOW, Reply, decode_reply};

use super::ledger::{Path, WaiterLog, allowed, status_name};
use super::{Op, Shared};
use crate::client::{Channel, PROMPT};
use storport_abi::status::user::STATUS_INSUFFICIENT_RESOURCES;
use storsim::io::{Handle, Outcome, ProcessId, Request};
use storsim::kernel::Kernel;

/// Waiters (handles with a WAIT of their own) per emulated CPU.
const WAITERS: usize = 3;

/// WAITs a flood sends at once: more than the driver parks per adapter (1024), so the cap is
/// reached whenever events are quiet long enough.
const FLOOD: usize = 1024 + 16;

/// Process ids handed out to the torture's user processes.
static NEXT_PROCESS: AtomicU32 = AtomicU32::new(10_000);

fn new_process() -> ProcessId {
    NEXT_PROCESS.fetch_add(1, Ordering::Relaxed)
}

/// A WAIT in flight.
struct InFlight {
    request: Arc<Request>,
    handle: Handle,
    out_len: u32,
    cancel_requested: bool,
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
}

pub struct Worker<'a> {
    kernel: &'a Arc<Kernel>,
    shared: &'a Shared,
    index: usize,
    rng: fastrand::Rng,
    processes: [ProcessId; 2],
    waiters: Vec<Waiter>,
    fires: u64,
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
            tally: Tally::default(),
        };
        for w in 0..WAITERS {
            let channel = Channel::open(kernel, processes[w % 2]);
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
            self.reap_all();
            match self.rng.u8(0..100) {
                0..40 => self.wait(),
                40..55 => self.fire(),
                55..58 => self.discover(),
                58..63 => self.stats(),
                63..75 => self.cancel(),
                75..78 => self.close_handle(),
                78 if self.rng.u32(0..200) == 0 => self.flood(),
                78 => self.exit_process(),
                _ => self.malformed(),
            }
        }
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

    /// Checks the exactly-once completion every request gets, and its status on `path`.
    fn settle(&mut self, path: Path, request: &Request, cancel_requested: bool) -> Option<Outcome> {
        let outcome = request.outcome()?;
        *self.tally.statuses.entry(outcome.status).or_default() += 1;
        if request.completions() != 1 {
            self.fail(format!(
                "request #{} ({path:?}) completed {} times",
                request.id,
                request.completions()
            ));
        }
        if !allowed(
            path,
            outcome.status,
            cancel_requested,
            self.shared.fault_rate > 0.0,
        ) {
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
        let Some(outcome) = self.settle(Path::Wait, &in_flight.request, in_flight.cancel_requested)
        else {
            self.waiters[w].pending = Some(in_flight);
            return;
        };
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

    /// The waiter's adapter is gone: a new handle (to whatever adapter is there now).
    fn reopen(&mut self, w: usize) {
        let process = self.waiters[w].channel.process;
        self.attach(w, process).close();
    }

    /// Gives waiter `w` a new handle in `process`; returns the old one.
    fn attach(&mut self, w: usize, process: ProcessId) -> Channel {
        let channel = Channel::open(self.kernel, process);
        self.waiters[w].instance = self.kernel.io().handle_instance(channel.handle);
        std::mem::replace(&mut self.waiters[w].channel, channel)
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
        if let Some(request) = self.send(handle, &request, out_len) {
            let done = request.outcome().is_some();
            self.waiters[w].pending = Some(InFlight {
                request,
                handle,
                out_len,
                cancel_requested: false,
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
        let mut bytes = [0u8; 64];
        let len = revcall_protocol::encode_request(request, &mut bytes)
            .expect("every request record fits 64 bytes");
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
    fn immediate(&mut self, path: Path, request: Option<Arc<Request>>) -> Option<Outcome> {
        let request = request?;
        // Completed inside HwProcessServiceRequest, before DeviceIoControl returned.
        let outcome = self.settle(path, &request, false);
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
        let sent = self.send(handle, &request, 64);
        if let Some(outcome) = self.immediate(Path::Fire, sent)
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
        let (handle, _) = self.any_handle();
        let request = revcall_protocol::Request::Discover {
            delay_ms: self.rng.u32(1..=3),
        };
        let sent = self.send(handle, &request, 64);
        if let Some(outcome) = self.immediate(Path::Discover, sent)
            && outcome.status == STATUS_SUCCESS
            && !matches!(decode_reply(&outcome.output), Ok(Reply::Discover(_)))
        {
            self.fail("DISCOVER succeeded without a DISCOVER reply".into());
        }
    }

    fn stats(&mut self) {
        self.count(Op::Stats);
        let (handle, _) = self.any_handle();
        let sent = self.send(handle, &revcall_protocol::Request::Stats, 256);
        if let Some(outcome) = self.immediate(Path::Stats, sent)
            && outcome.status == STATUS_SUCCESS
        {
            match decode_reply(&outcome.output) {
                Ok(Reply::Stats(stats)) if stats.parked_now <= stats.parked_cap => {}
                other => self.fail(format!("STATS reply not sane: {other:?}")),
            }
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
        self.immediate(Path::Malformed(bad.expected), sent);
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
        in_flight.cancel_requested = true;
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
    /// all of them: each ends with an event (other CPUs keep firing), cancelled, refused
    /// QUOTA_EXCEEDED past the cap, or by a removal; none is lost, each completes once.
    fn flood(&mut self) {
        self.count(Op::Flood);
        let channel = Channel::open(self.kernel, self.processes[0]);
        let next = revcall_protocol::Request::Wait {
            cursor: CURSOR_NOW,
            max_events: 1,
        };
        let sent: Vec<_> = (0..FLOOD)
            .filter_map(|_| self.send(channel.handle, &next, 64))
            .collect();
        self.kernel.cancel_io(channel.handle, None);
        for request in &sent {
            if request.wait(self.kernel.config().cancel_limit).is_none() {
                self.fail(format!(
                    "flooding WAIT #{} not completed {} ms after CancelIoEx",
                    request.id,
                    self.kernel.config().cancel_limit.as_millis()
                ));
            }
            self.settle(Path::Flood, request, true);
        }
        channel.close();
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
                in_flight.cancel_requested = true;
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
