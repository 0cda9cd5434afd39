//! One virtual adapter: its lifecycle and the reverse-callback channel's request handling.
//!
//! Everything here is safe, portable Rust; the Storport shims in `entry.rs` convert their
//! arguments and call one method. The rules the shims rely on:
//!
//! * Every service IRP handed to [`Adapter::process`] is completed exactly once: at once
//!   (errors, FIRE, DISCOVER, STATS, a WAIT with events already retained) or later (a parked
//!   WAIT: by an event, its cancellation, or removal).
//! * No IRP is completed while the adapter lock is held: completions are collected under the
//!   lock and issued after it is released (SDV SpinLockSafe).
//! * A WAIT reply is written under the lock, so the ring cannot move under it, and it never
//!   reports a byte it did not write.
//! * Storport's timer is armed and cancelled with the lock released: HwStorTimer takes the
//!   lock under Storport's StartIo lock, so a timer request made under it would order the two
//!   locks both ways.
//! * `ScsiStopAdapter` / `ScsiRestartAdapter` may come at DIRQL (the HW_ADAPTER_CONTROL page's
//!   reading), where no spin lock may be taken: they only record the control
//!   ([`Adapter::request_control`]); a DPC applies it ([`Adapter::apply_controls`]).

use core::marker::PhantomData;
use core::sync::atomic::{AtomicU32, Ordering};

use arrayvec::ArrayVec;
use revcall_protocol::{
    CURSOR_NOW, DiscoverReply, EventKind, FireReply, IOCTL_MINIPORT_PROCESS_SERVICE_IRP,
    LunCreateReply, LunSpec, Opcode, Request, StatsReply, WaitFlags, WaitReplyWriter,
    decode_request, encode_discover_reply, encode_fire_reply, encode_lun_create_reply,
    encode_lun_list_reply, encode_lun_remove_reply, encode_stats_reply, status,
};

use crate::disk::PendingSrb;
use crate::error::Status;
use crate::event_ring::{EventRing, RING_CAPACITY};
use crate::lun_table::LunTable;
use crate::service_queue::{PARK_CAP, Parkable, Refusal, WaitQueue, Waiter};
use crate::session::Sessions;
use crate::tag_table::TagTable;

mod serve;

pub use serve::SERVER_PARK_CAP;
use serve::ServerQueue;

/// A lock around the adapter's state: a spin lock in the driver, a mutex in tests.
pub trait Lock<T>: Sync {
    /// Runs `f` with the state locked. `f` must not complete IRPs.
    fn with<R>(&self, f: impl FnOnce(&mut T) -> R) -> R;
}

/// A service IRP (`IOCTL_MINIPORT_PROCESS_SERVICE_IRP`) the adapter owns until it completes it.
pub trait ServiceIrp: Parkable + Sized {
    /// The current stack location's `IoControlCode`.
    fn control_code(&self) -> u32;
    /// The current stack location's `FileObject`: the handle a server's session is bound to.
    fn file(&self) -> usize;
    /// The request bytes; `None` if the buffer is missing.
    fn input(&self) -> Option<&[u8]>;
    /// `OutputBufferLength`: the most a reply may take.
    fn output_len(&self) -> usize;
    /// The reply buffer's first `len` bytes (at most [`output_len`](Self::output_len)), each
    /// initialized: what the input did not fill is zeroed at this call, so nothing stale can
    /// leave the kernel. Zeroing only what the reply takes, not the whole buffer: a FETCH
    /// brings room for a 64 KiB payload that a READ's reply never uses. Take it once per
    /// reply (each call zeroes again); `None` if the buffer is missing.
    fn output(&mut self, len: usize) -> Option<&mut [u8]>;
    /// [`output`](Self::output) of the whole buffer: for replies that may fill it.
    fn whole_output(&mut self) -> Option<&mut [u8]> {
        let room = self.output_len();
        self.output(room)
    }
    /// Sets `IoStatus` and hands the IRP back to Storport (`StorPortCompleteServiceIrp`).
    fn complete(self, status: Status, information: usize);
}

/// The adapter's one Storport timer, used by DISCOVER. Never called with the adapter lock held.
pub trait Timer {
    /// Fires [`Adapter::timer_fired`] once, `delay_us` from now.
    fn arm(&self, delay_us: u32);
    fn cancel(&self);
}

/// A second Storport timer (`StorPortRequestTimer`): one tick a second while a LUN's grace
/// period runs (docs/DATAPATH.md §3). Never called with the adapter lock held.
pub trait GraceTimer {
    /// Calls [`Adapter::grace_tick`] once, a second from now. `false` if the adapter has no
    /// such timer (StorPortInitializeTimer failed): grace periods then end at once.
    fn arm(&self) -> bool;
}

/// Storport's bus notifications. Never called with the adapter lock held.
pub trait Bus {
    /// `StorPortNotification(BusChangeDetected)`: a LUN appeared or went away; Storport
    /// rescans the bus.
    fn changed(&self);
    /// `StorPortSetDeviceQueueDepth`: how many SRBs Storport may have outstanding on `lun`
    /// (allowed on or after its first INQUIRY).
    fn set_queue_depth(&self, lun: u8, depth: u32);
}

/// Where the adapter is in its PnP life.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    /// Not started yet (the zeroed device extension).
    Down = 0,
    Running = 1,
    /// `ScsiStopAdapter`: parked requests stay parked.
    Stopped = 2,
    SurpriseRemoved = 3,
    Removed = 4,
}

#[derive(Clone, Copy)]
struct Discovery {
    pending: bool,
    /// The pending discovery's timer interval, to re-arm it after a PnP stop.
    delay_us: u32,
    /// DISCOVER requests the pending discovery answers.
    joined: u64,
    /// Discoveries started; the newest one's id is this count.
    started: u64,
    completed: u64,
}

#[derive(Clone, Copy)]
struct Counters {
    completed: u64,
    cancelled: u64,
    rejected: u64,
    injected: u64,
}

/// Everything behind the adapter lock.
///
/// # Invariants
///
/// All-zero bytes are a valid, empty, [`Lifecycle::Down`] state: every field is an integer,
/// a `bool`, a `repr(u8)` enum whose 0 is a variant, or a null-pointer-optimized `Option`.
pub struct State<I, R> {
    queue: WaitQueue<I>,
    /// Parked ATTACHes and FETCHes.
    servers: ServerQueue<I>,
    /// SRBs queued for servers or at a server.
    tags: TagTable<R>,
    sessions: Sessions,
    /// Something may have to end (a session, a LUN, the adapter did): [`Adapter::settle`]
    /// looks for it.
    unsettled: bool,
    ring: EventRing,
    lifecycle: Lifecycle,
    fire_enabled: bool,
    discovery: Discovery,
    counters: Counters,
    luns: LunTable,
}

/// Parked WAITs completed per lock hold when an event is delivered.
const DELIVERY_BATCH: usize = 16;

type Batch<I> = ArrayVec<(I, Status, usize), DELIVERY_BATCH>;

impl<I: ServiceIrp, R: PendingSrb> State<I, R> {
    pub const fn new() -> Self {
        Self {
            queue: WaitQueue::new(),
            servers: ServerQueue::new(),
            tags: TagTable::new(),
            sessions: Sessions::new(),
            unsettled: false,
            ring: EventRing::new(),
            lifecycle: Lifecycle::Down,
            fire_enabled: false,
            discovery: Discovery {
                pending: false,
                delay_us: 0,
                joined: 0,
                started: 0,
                completed: 0,
            },
            counters: Counters {
                completed: 0,
                cancelled: 0,
                rejected: 0,
                injected: 0,
            },
            luns: LunTable::new(),
        }
    }

    fn is_closed(&self) -> bool {
        matches!(
            self.lifecycle,
            Lifecycle::SurpriseRemoved | Lifecycle::Removed
        )
    }

    /// Counts a completion that is about to be issued.
    fn count(&mut self, status: Status) -> Status {
        self.counters.completed += 1;
        if status == Status::CANCELLED {
            self.counters.cancelled += 1;
        } else if status::is_error(status.0) {
            self.counters.rejected += 1;
        }
        status
    }

    /// What a park attempt leaves to do: nothing, or complete a refused IRP (counted).
    fn parked(&mut self, result: Result<u16, Refusal<I>>) -> Outcome<I> {
        match result {
            Ok(_) => Outcome::Parked,
            Err(Refusal::Full(irp)) => {
                Outcome::Complete(irp, self.count(Status::QUOTA_EXCEEDED), 0)
            }
            Err(Refusal::Cancelled(irp)) => {
                Outcome::Complete(irp, self.count(Status::CANCELLED), 0)
            }
        }
    }

    /// Writes the WAIT reply for `waiter` into the IRP's buffer; returns its size.
    fn fill(&self, irp: &mut I, waiter: &Waiter) -> Option<usize> {
        let mut writer = WaitReplyWriter::new(irp.whole_output()?, waiter.max_events)?;
        let delivery = self.ring.read_into(waiter.cursor, &mut writer);
        let mut flags = if delivery.more { WaitFlags::MORE } else { 0 };
        if self.is_closed() {
            flags |= WaitFlags::FINAL;
        }
        Some(writer.finish(delivery.cursor, delivery.lost, flags))
    }

    /// Fills and counts the completion of a WAIT that has events to deliver.
    fn answer(&mut self, irp: &mut I, waiter: &Waiter) -> (Status, usize) {
        // The buffer was checked against the minimum reply on arrival, so this fails only if
        // the IRP lied about its buffer since.
        match self.fill(irp, waiter) {
            Some(size) => (self.count(Status::SUCCESS), size),
            None => (self.count(Status::BUFFER_TOO_SMALL), 0),
        }
    }

    fn stats(&self) -> StatsReply {
        StatsReply {
            parked_now: self.queue.len() as u64,
            parked_peak: self.queue.peak() as u64,
            parked_cap: PARK_CAP as u64,
            ring_capacity: RING_CAPACITY as u64,
            head_seq: self.ring.head(),
            oldest_seq: self.ring.oldest(),
            events_published: self.ring.head(),
            events_injected: self.counters.injected,
            ring_overwrites: self.ring.overwrites(),
            completed: self.counters.completed,
            cancelled: self.counters.cancelled,
            rejected: self.counters.rejected,
            discoveries_started: self.discovery.started,
            discoveries_completed: self.discovery.completed,
            closed: u64::from(self.is_closed()),
        }
    }
}

impl<I: ServiceIrp, R: PendingSrb> Default for State<I, R> {
    fn default() -> Self {
        Self::new()
    }
}

/// A control Storport sent at an IRQL where the lock cannot be taken, until a DPC applies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Control {
    /// `ScsiStopAdapter`.
    Stop = 1,
    /// `ScsiRestartAdapter`.
    Restart = 2,
}

/// Controls recorded and not yet applied, oldest in the lowest bits, 4 bits each (0: none).
/// Eight fit: Storport sends at most a stop and a restart between two runs of the DPC.
const CONTROL_BITS: u32 = 4;
const CONTROL_SLOTS: u32 = u32::BITS / CONTROL_BITS;

/// What the adapter owns while it holds them: service IRPs and SRBs (a `fn` type, so the
/// adapter is `Send`/`Sync` through its lock alone).
type Owned<I, R> = fn(I, R) -> (I, R);

/// The adapter: its state behind a lock, and the controls waiting for a DPC.
///
/// All-zero bytes are a valid adapter (the state's invariant; no control waiting).
pub struct Adapter<I, R, L> {
    state: L,
    controls: AtomicU32,
    _owned: PhantomData<Owned<I, R>>,
}

enum Outcome<I> {
    Parked,
    Complete(I, Status, usize),
}

impl<I: ServiceIrp, R: PendingSrb, L: Lock<State<I, R>>> Adapter<I, R, L> {
    pub const fn new(state: L) -> Self {
        Self {
            state,
            controls: AtomicU32::new(0),
            _owned: PhantomData,
        }
    }

    /// HwFindAdapter: applies the registry configuration. Keeps the state of an adapter that
    /// is started again after a PnP stop.
    pub fn configure(&self, fire_enabled: bool) {
        self.state.with(|s| s.fire_enabled = fire_enabled);
    }

    /// HwInitialize: the adapter is up (first start, or again after a PnP stop). Controls still
    /// waiting for the DPC (Storport flushes DPCs before a restart, so normally none) come first.
    pub fn start(&self, port: &(impl Timer + GraceTimer)) {
        self.apply_controls(port);
        self.transition(Lifecycle::Running, EventKind::AdapterStarted, Some(port));
        self.resume_grace(port);
    }

    /// `ScsiStopAdapter` / `ScsiRestartAdapter`, possibly at DIRQL: records the control without
    /// a lock; the caller then issues the DPC that applies it. `false` if eight are already
    /// waiting (never, as Storport sends them).
    pub fn request_control(&self, control: Control) -> bool {
        self.controls
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |waiting| {
                let used = CONTROL_SLOTS - waiting.leading_zeros() / CONTROL_BITS;
                (used < CONTROL_SLOTS).then(|| waiting | (control as u32) << (used * CONTROL_BITS))
            })
            .is_ok()
    }

    /// Applies every recorded control in order (the DPC, at DISPATCH_LEVEL; HwInitialize).
    /// A stop is not a removal: parked requests stay parked.
    pub fn apply_controls(&self, port: &(impl Timer + GraceTimer)) {
        let mut waiting = self.controls.swap(0, Ordering::AcqRel);
        while waiting != 0 {
            match waiting & ((1 << CONTROL_BITS) - 1) {
                1 => self.transition(Lifecycle::Stopped, EventKind::AdapterStopped, None),
                _ => {
                    self.transition(Lifecycle::Running, EventKind::AdapterRestarted, Some(port));
                    self.resume_grace(port);
                }
            }
            waiting >>= CONTROL_BITS;
        }
    }

    /// Coming up, `timer` re-arms a pending discovery: a PnP stop cancels Storport's timer
    /// (RaidAdapterStopDeviceIrp), and re-arming one still pending only delays it.
    fn transition(&self, to: Lifecycle, kind: EventKind, timer: Option<&dyn Timer>) {
        let changed = self.state.with(|s| {
            if s.is_closed() {
                return None;
            }
            s.lifecycle = to;
            s.ring.publish(kind, 0, 0);
            Some(s.discovery.pending.then_some(s.discovery.delay_us))
        });
        let Some(rearm) = changed else {
            return;
        };
        if let (Some(timer), Some(delay_us)) = (timer, rearm) {
            self.arm(timer, delay_us);
        }
        self.deliver();
    }

    /// Arms the timer (the lock released); if a removal closed the adapter meanwhile, its
    /// cancel may have come first, so this cancels again.
    fn arm(&self, timer: &dyn Timer, delay_us: u32) {
        timer.arm(delay_us);
        if self.state.with(|s| s.is_closed()) {
            timer.cancel();
        }
    }

    /// `ScsiAdapterSurpriseRemoval`: Storport next waits for every service IRP, and will not
    /// call `HwCompleteServiceIrp` first, so flush them all and refuse new ones here.
    pub fn surprise_remove(&self, timer: &impl Timer) {
        self.close(
            Lifecycle::SurpriseRemoved,
            EventKind::SurpriseRemoved,
            timer,
        );
    }

    /// `HwCompleteServiceIrp`: the adapter is being removed; complete every parked IRP and
    /// every later request at once.
    pub fn remove(&self, timer: &impl Timer) {
        self.close(Lifecycle::Removed, EventKind::AdapterRemoved, timer);
    }

    fn close(&self, to: Lifecycle, kind: EventKind, timer: &impl Timer) {
        let pending = self.state.with(|s| {
            if !s.is_closed() {
                s.lifecycle = to;
                s.ring.publish(kind, 0, 0);
            }
            core::mem::take(&mut s.discovery.pending)
        });
        // A DISCOVER that armed the timer after this sees the adapter closed and cancels too.
        if pending {
            timer.cancel();
        }
        // Every parked waiter's cursor is now behind the final event, so this empties the
        // queue (but for IRPs whose cancel routine is already running: that routine completes them).
        self.deliver();
        // Every server's session ends; every SRB and parked FETCH or ATTACH completes.
        self.state.with(|s| {
            s.end_sessions(None);
            s.unsettled = true;
        });
        self.settle();
    }

    /// HwProcessServiceRequest: completes the IRP now or parks it.
    pub fn process(&self, mut irp: I, port: &(impl Timer + Bus)) {
        let request = match Self::decode(&mut irp) {
            Ok(request) => request,
            Err(status) => return self.refuse(irp, status),
        };
        match request {
            Request::Wait { cursor, max_events } => self.wait(irp, cursor, max_events),
            Request::Fire { code, value } => self.fire(irp, code, value),
            Request::Discover { delay_ms } => self.discover(irp, delay_ms, port),
            Request::Stats => self.report(irp),
            Request::LunCreate(spec) => self.create_lun(irp, spec, port),
            Request::LunRemove { lun } => self.remove_lun(irp, lun, port),
            Request::LunList => self.list_luns(irp),
            Request::Attach { lun } => self.attach(irp, lun),
            Request::Fetch { max_descriptors } => {
                self.fetch(irp, Opcode::Fetch, max_descriptors, 0, None);
            }
            Request::CommitAndFetch {
                max_descriptors, ..
            } => self.commit(irp, max_descriptors),
        }
    }

    fn decode(irp: &mut I) -> Result<Request, Status> {
        if irp.control_code() != IOCTL_MINIPORT_PROCESS_SERVICE_IRP {
            return Err(Status::INVALID_DEVICE_REQUEST);
        }
        let request = decode_request(irp.input().unwrap_or(&[]))?;
        let room = irp.output_len();
        if room < request.min_reply_size() {
            return Err(Status::BUFFER_TOO_SMALL);
        }
        Ok(request)
    }

    fn refuse(&self, irp: I, status: Status) {
        let status = self.state.with(|s| s.count(status));
        irp.complete(status, 0);
    }

    fn wait(&self, irp: I, cursor: u64, max_events: u32) {
        let outcome = self.state.with(|s| {
            let head = s.ring.head();
            let cursor = match cursor {
                CURSOR_NOW => head,
                // A cursor from the future: another adapter's, or made up.
                ahead if ahead > head => {
                    return Outcome::Complete(irp, s.count(Status::INVALID_PARAMETER), 0);
                }
                cursor => cursor,
            };
            let waiter = Waiter { cursor, max_events };
            // Once closed, events still retained are delivered (flagged FINAL) and only an
            // up-to-date cursor is refused: the last events are never lost silently.
            if head > cursor {
                let mut irp = irp;
                let (status, size) = s.answer(&mut irp, &waiter);
                return Outcome::Complete(irp, status, size);
            }
            if s.is_closed() {
                return Outcome::Complete(irp, s.count(Status::DEVICE_REMOVED), 0);
            }
            let parked = s.queue.park(irp, waiter);
            s.parked(parked)
        });
        if let Outcome::Complete(irp, status, size) = outcome {
            irp.complete(status, size);
        }
    }

    fn fire(&self, irp: I, code: u32, value: u64) {
        let published = self.state.with(|s| {
            if s.is_closed() {
                return Err(s.count(Status::DEVICE_REMOVED));
            }
            if !s.fire_enabled {
                return Err(s.count(Status::NOT_SUPPORTED));
            }
            s.counters.injected += 1;
            s.count(Status::SUCCESS);
            Ok(s.ring.publish(EventKind::Injected, code.into(), value))
        });
        match published {
            Ok(seq) => {
                // Waiters first: when FIRE completes, everyone parked before it has its event.
                self.deliver();
                Self::succeed(irp, |out| encode_fire_reply(out, &FireReply { seq }));
            }
            Err(status) => irp.complete(status, 0),
        }
    }

    fn discover(&self, irp: I, delay_ms: u32, timer: &impl Timer) {
        let joined = self.state.with(|s| {
            if s.is_closed() {
                return Err(s.count(Status::DEVICE_REMOVED));
            }
            let d = &mut s.discovery;
            let coalesced = d.pending;
            if coalesced {
                d.joined += 1;
            } else {
                *d = Discovery {
                    pending: true,
                    delay_us: delay_ms.saturating_mul(1000),
                    joined: 1,
                    started: d.started + 1,
                    ..*d
                };
            }
            let id = d.started;
            let arm = (!coalesced).then_some(d.delay_us);
            s.count(Status::SUCCESS);
            let reply = DiscoverReply {
                id,
                coalesced: u32::from(coalesced),
                reserved: 0,
            };
            Ok((reply, arm))
        });
        match joined {
            Ok((reply, arm)) => {
                // Armed before the reply completes the IRP: its rundown reference keeps a
                // removal (and Storport's own timer cancel after it) waiting until then.
                if let Some(delay_us) = arm {
                    self.arm(timer, delay_us);
                }
                Self::succeed(irp, |out| encode_discover_reply(out, &reply))
            }
            Err(status) => irp.complete(status, 0),
        }
    }

    /// LUN_CREATE: the LUN exists once the reply is sent; Storport is told before, so its
    /// rescan may already be running when the caller learns the number.
    fn create_lun(&self, irp: I, spec: LunSpec, bus: &impl Bus) {
        let created = self.state.with(|s| {
            if s.is_closed() {
                return Err(s.count(Status::DEVICE_REMOVED));
            }
            let lun = s.luns.create(spec).map_err(|status| s.count(status))?;
            let bytes = spec.block_count * u64::from(spec.block_size);
            s.ring.publish(EventKind::LunCreated, lun.into(), bytes);
            s.count(Status::SUCCESS);
            Ok(lun)
        });
        match created {
            Ok(lun) => {
                bus.changed();
                self.deliver();
                let reply = LunCreateReply {
                    lun: lun.into(),
                    reserved: 0,
                };
                Self::succeed(irp, |out| encode_lun_create_reply(out, &reply));
            }
            Err(status) => irp.complete(status, 0),
        }
    }

    /// LUN_REMOVE: its SRBs complete NO_DEVICE and its sessions end before the reply.
    fn remove_lun(&self, irp: I, lun: u32, bus: &impl Bus) {
        let removed = self.state.with(|s| {
            if s.is_closed() {
                return Err(s.count(Status::DEVICE_REMOVED));
            }
            s.luns.remove(lun).map_err(|status| s.count(status))?;
            s.end_sessions(Some(lun as u8));
            s.unsettled = true;
            s.ring.publish(EventKind::LunRemoved, lun.into(), 0);
            s.count(Status::SUCCESS);
            Ok(())
        });
        match removed {
            Ok(()) => {
                self.settle();
                bus.changed();
                self.deliver();
                Self::succeed(irp, encode_lun_remove_reply);
            }
            Err(status) => irp.complete(status, 0),
        }
    }

    fn list_luns(&self, irp: I) {
        let entries = self.state.with(|s| {
            s.count(Status::SUCCESS);
            let mut entries = s.luns.entries();
            for entry in &mut entries {
                entry.outstanding = s.tags.outstanding(entry.lun as u8);
            }
            entries
        });
        Self::succeed(irp, |out| encode_lun_list_reply(out, &entries));
    }

    fn report(&self, irp: I) {
        let stats = self.state.with(|s| {
            let stats = s.stats();
            s.count(Status::SUCCESS);
            stats
        });
        Self::succeed(irp, |out| encode_stats_reply(out, &stats));
    }

    /// Completes a fixed-size reply. The output was checked against the reply's size on
    /// arrival, so `encode` cannot run out of room.
    fn succeed(mut irp: I, encode: impl FnOnce(&mut [u8]) -> Option<usize>) {
        let size = irp.whole_output().and_then(encode);
        irp.complete(Status::SUCCESS, size.unwrap_or(0));
    }

    /// The Storport timer fired: the pending discovery completes. Only publishes: HwStorTimer
    /// runs with Storport's StartIo lock held, so no IRP may be completed here. Returns
    /// whether an event awaits [`deliver`](Self::deliver), which the caller must then run
    /// where no spin lock is held (the driver: a StorPort DPC).
    pub fn timer_fired(&self) -> bool {
        self.state.with(|s| {
            if !s.discovery.pending || s.is_closed() {
                return false;
            }
            s.discovery.pending = false;
            s.discovery.completed += 1;
            let (id, joined) = (s.discovery.started, s.discovery.joined);
            s.ring.publish(EventKind::DiscoveryComplete, id, joined);
            true
        })
    }

    /// The cancel routine of the IRP `id`, armed with `slot`: completes it as cancelled.
    /// Returns false if the slot does not hold that IRP (nothing is completed then).
    pub fn cancel(&self, slot: u16, id: usize, grace: &impl GraceTimer) -> bool {
        if usize::from(slot) >= PARK_CAP {
            return self.cancel_server(slot, id, grace);
        }
        let taken = self.state.with(|s| {
            let (irp, _) = s.queue.take_cancelled(slot, id)?;
            s.count(Status::CANCELLED);
            Some(irp)
        });
        match taken {
            Some(irp) => {
                irp.complete(Status::CANCELLED, 0);
                true
            }
            None => false,
        }
    }

    /// Completes every parked WAIT that has an event it has not seen, in batches so the lock
    /// is never held across a completion. Callers hold no spin lock.
    pub fn deliver(&self) {
        loop {
            let batch: Batch<I> = self.state.with(|s| {
                let head = s.ring.head();
                let mut batch = Batch::new();
                while !batch.is_full() {
                    // Waiters park with cursor == head, so the FIFO is sorted by cursor and the
                    // first one that is up to date ends the scan.
                    let Some((mut irp, waiter)) = s.queue.pop_front_if(|w| w.cursor < head) else {
                        break;
                    };
                    let (status, size) = s.answer(&mut irp, &waiter);
                    batch.push((irp, status, size));
                }
                batch
            });
            if batch.is_empty() {
                return;
            }
            for (irp, status, size) in batch {
                irp.complete(status, size);
            }
        }
    }

    /// The channel's counters (what STATS replies).
    pub fn stats(&self) -> StatsReply {
        self.state.with(|s| s.stats())
    }

    pub fn lifecycle(&self) -> Lifecycle {
        self.state.with(|s| s.lifecycle)
    }
}

// The tests use std's primitives; under `--cfg loom` the fakes use loom's (see `model.rs`).
#[cfg(all(test, not(loom)))]
mod tests;
