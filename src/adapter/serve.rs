//! The data path: HwStartIo hands a LUN's data commands to its servers through their parked
//! FETCHes; COMMIT_AND_FETCH answers them; sessions end by cancellation, LUN removal or the
//! adapter's removal; resets take back what the servers hold. docs/DATAPATH.md.
//!
//! The rules, beside the adapter's:
//!
//! * An SRB leaves the tag table exactly once ([`TagTable`](crate::tag_table::TagTable)), and
//!   is completed after the lock is released, with its status set there too: the SRB is
//!   exclusively ours once it left the table.
//! * A COMMIT is checked whole before any SRB is touched; its READ data is copied into the
//!   SRBs outside the lock, before the same buffer is written as the FETCH reply.
//! * A WRITE's data is copied into the FETCH reply under the lock: until the reply is complete
//!   the SRB is still in the table, where a reset may take it.
//! * [`Adapter::settle`] brings the state to rest after anything that may leave work behind:
//!   SRBs no server can take end, IRPs of ended sessions complete, queued SRBs meet parked
//!   FETCHes. Each lock hold does a bounded batch.

use arrayvec::ArrayVec;
use revcall_protocol::{
    AttachReply, Commit, CommitResult, DataOp, Descriptor, EventKind, FetchFlags, FetchReplyWriter,
    MAX_RESULTS, Opcode, ScsiStatus, encode_attach_reply, fetch_reply_size,
};
use revcall_scsi::{Sense, SenseKey};
use storport_abi::{srb_function, srb_status};

use super::{Adapter, Batch, GraceTimer, Lock, Outcome, ServiceIrp, State};
use crate::disk::{self, Ending, PendingSrb, Route};
use crate::error::Status;
use crate::service_queue::{PARK_CAP, Parked, ServiceQueue};
use crate::session::SessionId;
use crate::tag_table::{Held, Lookup};

/// Parked ATTACHes and FETCHes per adapter.
pub const SERVER_PARK_CAP: usize = 256;

/// The server queue's IRPs are armed with numbers above the WAIT queue's.
pub type ServerQueue<I> = ServiceQueue<I, Server, { SERVER_PARK_CAP + 1 }, { PARK_CAP as u16 }>;

/// A parked ATTACH, FETCH or COMMIT_AND_FETCH.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Server {
    /// The request's opcode (the reply echoes it).
    opcode: u16,
    lun: u8,
    max_descriptors: u8,
    session: SessionId,
}

impl Parked for Server {
    const EMPTY: Self = Self {
        opcode: 0,
        lun: 0,
        max_descriptors: 0,
        session: SessionId { index: 0, epoch: 0 },
    };
}

impl Server {
    fn is_attach(&self) -> bool {
        self.opcode == Opcode::Attach as u16
    }
}

/// What a COMMIT's result names, once checked.
#[derive(Clone, Copy)]
enum Owed {
    /// The SRB in this slot: completed with the result, and its READ data (where it lies in
    /// the COMMIT).
    Srb {
        slot: u16,
        ending: Ending,
        data: Placed,
    },
    /// A fenced slot: dropped as stale, and the fence lifts.
    Fence(u16),
    /// Dropped.
    Stale,
}

/// What HwStartIo's lock hold made of an SRB.
enum Started<I, R> {
    /// Answered or refused, its status set: complete it (an INQUIRY: then tell Storport the
    /// LUN's queue depth).
    Answered(R, Route),
    /// Queued for the LUN's servers; the parked FETCH it met, to complete.
    Queued(Option<(I, Status, usize)>),
    /// Queued; something else is left to settle.
    Unsettled,
}

/// SRBs completed per lock hold.
const SRB_BATCH: usize = 16;

type SrbBatch<R> = ArrayVec<(R, Ending), SRB_BATCH>;

/// Where a result's READ data lies in its COMMIT (kept small: a COMMIT's 64 results are
/// checked into an array on the stack, then their SRBs taken into another).
#[derive(Clone, Copy)]
struct Placed {
    start: u32,
    len: u32,
}

/// A COMMIT's SRBs, taken from the table, with how each ends and its READ data.
type Committed<R> = ArrayVec<(R, Ending, Placed), { MAX_RESULTS as usize }>;

impl<I: ServiceIrp, R: PendingSrb> State<I, R> {
    /// Fills a FETCH reply for `session` from `lun`'s queue: as many queued SRBs as
    /// `max_descriptors` and the buffer allow (the first always fits: the buffer was checked
    /// against the largest payload on arrival). Hands them to the session.
    fn fill_fetch(
        &mut self,
        irp: &mut I,
        server: &Server,
        stale: u32,
        flags: u32,
    ) -> (Status, usize) {
        // How many of the LUN's queued SRBs fit, oldest first: the reply's size must be known
        // before its first payload is placed (payloads follow every descriptor).
        let (mut count, mut payload) = (0usize, 0usize);
        if let (0, Some(current)) = (
            flags & FetchFlags::FINAL,
            self.ready_incarnation(server.lun),
        ) {
            // What the reply needs beyond its empty size, against what the buffer has.
            let (mut used, room) = (
                0usize,
                irp.output_len().saturating_sub(fetch_reply_size(0, 0)),
            );
            for (incarnation, len) in self.tags.queued(server.lun) {
                used += size_of::<Descriptor>() + len;
                // SRBs sent to a removed LUN of this number wait at the head for settle.
                if count == usize::from(server.max_descriptors)
                    || incarnation != current
                    || used > room
                {
                    break;
                }
                count += 1;
                payload += len;
            }
        }
        let opcode = Opcode::try_from(server.opcode).unwrap_or(Opcode::Fetch);
        let out = irp.output(fetch_reply_size(count, payload));
        let Some(mut writer) =
            out.and_then(|out| FetchReplyWriter::new(out, opcode, count, payload))
        else {
            return (self.count(Status::BUFFER_TOO_SMALL), 0);
        };
        for _ in 0..count {
            let Some((descriptor, srb)) =
                self.tags.hand_out_first(server.lun, server.session.index)
            else {
                break;
            };
            let Some(room) = writer.push(descriptor, descriptor.payload_len as usize) else {
                continue;
            };
            if descriptor.op == DataOp::Write as u8 {
                if let Some(data) = srb.data() {
                    room.copy_from_slice(&data[..room.len()]);
                }
            } else if descriptor.op == DataOp::Unmap as u8 {
                disk::unmap_payload(srb, room);
            }
        }
        let size = writer.finish(flags, stale);
        (self.count(Status::SUCCESS), size)
    }

    /// How an SRB taken back by a reset or an abort ends: `status`, unless its LUN was removed
    /// meanwhile. ABORTED and BUS_RESET are retried by the class driver, and the retry would
    /// reach the LUN created next under the number.
    fn retired_status(&self, held: Held, status: u8) -> u8 {
        if self.luns.is_current(held.lun, held.incarnation) {
            status
        } else {
            srb_status::NO_DEVICE
        }
    }

    /// The incarnation of `lun` whose queued SRBs a server may take: none while the LUN is
    /// fenced ([`TagTable::fenced`](crate::tag_table::TagTable::fenced)) or gone. SRBs sent to
    /// a removed LUN of that number wait at its FIFO's head for [`Adapter::settle`] to end
    /// them: a LUN created again under the number must never serve them.
    fn ready_incarnation(&self, lun: u8) -> Option<u32> {
        if self.tags.fenced(lun) {
            return None;
        }
        self.luns.incarnation(lun)
    }

    /// Whether `lun`'s first queued SRB may be taken by a server.
    fn ready(&self, lun: u8) -> bool {
        let first = self.tags.queued(lun).next();
        first.is_some_and(|(incarnation, _)| self.ready_incarnation(lun) == Some(incarnation))
    }

    /// One batch of the work [`Adapter::settle`] does; whether there may be more (a batch
    /// filled up, or something is left to end).
    fn settle_some(&mut self, irps: &mut Batch<I>, srbs: &mut SrbBatch<R>) -> bool {
        if self.unsettled {
            while !srbs.is_full() {
                let closed = self.is_closed();
                let luns = &self.luns;
                let gone = |held: Held| closed || !luns.is_current(held.lun, held.incarnation);
                let Some((srb, held)) = self
                    .tags
                    .retire_first(|held| gone(held) || luns.orphaned(held.lun))
                else {
                    break;
                };
                let ending = if gone(held) {
                    Ending::Status(srb_status::NO_DEVICE)
                } else {
                    // No server: classpnp does not retry this (DISK.md §4.4).
                    Ending::Check(Sense::NOT_READY_MANUAL_INTERVENTION)
                };
                srbs.push((srb, ending));
            }
            while !irps.is_full() {
                let sessions = &self.sessions;
                let Some((mut irp, server)) =
                    self.servers.take_first(|w| !sessions.is_live(w.session))
                else {
                    break;
                };
                let (status, size) = self.end_reply(&mut irp, &server);
                irps.push((irp, status, size));
            }
            self.unsettled = irps.is_full() || srbs.is_full();
        }
        let mut queued = self.tags.queued_luns();
        while queued != 0 {
            let lun = queued.trailing_zeros() as u8;
            queued &= queued - 1;
            while !irps.is_full() {
                let Some(fed) = self.feed(lun) else {
                    break;
                };
                irps.push(fed);
            }
        }
        self.unsettled || irps.is_full() || srbs.is_full()
    }

    /// Hands `lun`'s queued work to its oldest parked FETCH of a live session: the FETCH
    /// to complete, if there were both.
    fn feed(&mut self, lun: u8) -> Option<(I, Status, usize)> {
        if !self.sessions.fetch_parked(lun) || !self.ready(lun) {
            return None;
        }
        let sessions = &self.sessions;
        let (mut irp, server) = self
            .servers
            .take_first(|w| !w.is_attach() && w.lun == lun && sessions.is_live(w.session))?;
        self.sessions.count_fetch(server.session, false);
        let (status, size) = self.fill_fetch(&mut irp, &server, 0, 0);
        Some((irp, status, size))
    }

    /// The completion of a parked IRP whose session ended.
    fn end_reply(&mut self, irp: &mut I, server: &Server) -> (Status, usize) {
        if self.is_closed() {
            return (self.count(Status::DEVICE_REMOVED), 0);
        }
        if server.is_attach() {
            let reply = AttachReply {
                lun: server.lun.into(),
                reserved: 0,
            };
            let size = irp
                .whole_output()
                .and_then(|out| encode_attach_reply(out, &reply));
            return (self.count(Status::SUCCESS), size.unwrap_or(0));
        }
        self.fill_fetch(irp, server, 0, FetchFlags::FINAL)
    }

    /// Ends `session`: what it held goes back to its LUN's queue, and [`Adapter::settle`]
    /// completes its parked IRPs; a LUN left with no server starts its grace period. The LUN
    /// and how many SRBs went back, if the session was live.
    fn end_session(&mut self, session: SessionId) -> Option<(u8, u32)> {
        let ended = self.sessions.close(session)?;
        let requeued = self.tags.requeue(ended.lun, session.index);
        self.tags.unfence_session(session.index);
        self.unsettled = true;
        if !self.is_closed() && !self.sessions.serves(ended.lun) {
            self.luns.start_grace(ended.lun);
        }
        Some((ended.lun, requeued))
    }

    /// Ends every session of `lun` (of every LUN when `None`).
    pub(super) fn end_sessions(&mut self, lun: Option<u8>) {
        let mut ended = ArrayVec::<SessionId, { crate::session::MAX_SESSIONS }>::new();
        ended.extend(self.sessions.of_lun(lun).map(|session| session.id));
        for session in ended {
            let _ = self.end_session(session);
        }
    }
}

/// How a committed SRB ends, as its result says (a GOOD READ's data is copied into it before
/// it is completed).
fn ending(result: &CommitResult) -> Ending {
    if result.scsi_status != ScsiStatus::GOOD {
        let key = SenseKey::try_from(result.sense_key).unwrap_or(SenseKey::HardwareError);
        return Ending::Check(Sense {
            key,
            asc: result.asc,
            ascq: result.ascq,
        });
    }
    Ending::Good {
        transferred: u32::MAX,
    }
}

impl<I, R, L> Adapter<I, R, L>
where
    I: ServiceIrp,
    R: PendingSrb,
    L: Lock<State<I, R>>,
{
    /// HwStartIo: answers the SRB, or queues it for the LUN's servers.
    pub fn start_io(&self, mut srb: R, bus: &impl super::Bus) {
        let function = srb.function();
        if function != srb_function::EXECUTE_SCSI {
            self.manage(&srb, function);
        }
        let started = self.state.with(|s| {
            let (io, incarnation) = match disk::start_io(&mut srb, &s.luns) {
                Route::Server { io, incarnation } => (io, incarnation),
                route => return Started::Answered(srb, route),
            };
            let refuse = |mut srb, ending| {
                disk::end(&mut srb, ending);
                Started::Answered(srb, Route::Done)
            };
            if s.is_closed() {
                return refuse(srb, Ending::Status(srb_status::NO_DEVICE));
            }
            // Its last server is gone and its grace period over. A LUN not served yet, or in
            // its grace period, queues for the next server.
            if s.luns.orphaned(io.lun) {
                return refuse(srb, Ending::Check(Sense::NOT_READY_MANUAL_INTERVENTION));
            }
            // Every tag taken: Storport retries a BUSY SRB later.
            if let Err(srb) = s.tags.admit(srb, io, incarnation) {
                return refuse(srb, Ending::Status(srb_status::BUSY));
            }
            // The SRB meets a parked FETCH in this lock hold: after the last settle no FETCH
            // of the LUN waited beside ready work, so one FETCH is all it can need (it takes
            // at least this SRB). Anything else left to settle, settle does.
            if s.unsettled {
                Started::Unsettled
            } else {
                Started::Queued(s.feed(io.lun))
            }
        });
        match started {
            Started::Queued(Some((irp, status, size))) => irp.complete(status, size),
            Started::Queued(None) => {}
            Started::Unsettled => self.settle(),
            Started::Answered(srb, Route::Inquired { depth }) => {
                let (_, _, lun) = srb.address();
                srb.complete();
                bus.set_queue_depth(lun, depth);
            }
            Started::Answered(srb, _) => srb.complete(),
        }
    }

    /// What a task-management SRB does before it is answered: a LUN or target reset, an
    /// abort. Out of line: the data path's HwStartIo does not carry its frame.
    #[cold]
    #[inline(never)]
    fn manage(&self, srb: &R, function: u8) {
        if matches!(
            function,
            srb_function::RESET_LOGICAL_UNIT | srb_function::RESET_DEVICE
        ) {
            // A LUN reset (one target: RESET_DEVICE resets all of its LUNs): what the
            // servers hold is aborted; a late COMMIT for it is stale.
            let (_, _, lun) = srb.address();
            let scope = (function == srb_function::RESET_LOGICAL_UNIT).then_some(lun);
            self.reset(scope, srb_status::ABORTED);
            self.deliver();
        }
        if function == srb_function::ABORT_COMMAND {
            // The SRB it names ends ABORTED if it is still ours; the abort itself succeeds
            // either way (one completed meanwhile needs no abort).
            let target = srb.next_srb();
            let aborted = self.state.with(|s| {
                let (srb, held) = s.tags.retire_srb(|held| held.id() == target)?;
                Some((srb, s.retired_status(held, srb_status::ABORTED)))
            });
            Self::complete_srbs(aborted.map(|(srb, status)| (srb, Ending::Status(status))));
        }
    }

    /// HwResetBus (`None`) or a LUN reset: every SRB of the scope ends with `status`, and a
    /// Reset event says so. The caller delivers it ([`deliver`](Self::deliver)) where no spin
    /// lock is held: HwResetBus runs under Storport's StartIo lock.
    pub fn reset(&self, lun: Option<u8>, status: u8) {
        let mut completed = 0u64;
        loop {
            let batch: SrbBatch<R> = self.state.with(|s| {
                let mut batch = SrbBatch::new();
                while !batch.is_full() {
                    let Some((srb, held)) = s
                        .tags
                        .retire_first(|held| lun.is_none_or(|lun| lun == held.lun))
                    else {
                        break;
                    };
                    batch.push((srb, Ending::Status(s.retired_status(held, status))));
                }
                batch
            });
            if batch.is_empty() {
                break;
            }
            completed += batch.len() as u64;
            Self::complete_srbs(batch);
        }
        let scope = lun.map_or(u64::MAX, u64::from);
        self.state
            .with(|s| s.ring.publish(EventKind::Reset, scope, completed));
    }

    fn complete_srbs(batch: impl IntoIterator<Item = (R, Ending)>) {
        for (mut srb, ending) in batch {
            disk::end(&mut srb, ending);
            srb.complete();
        }
    }

    /// Completes, in batches with the lock released, everything the state says must end now,
    /// and hands queued SRBs to parked FETCHes. Callers hold no spin lock.
    pub fn settle(&self) {
        loop {
            let (irps, srbs, more) = self.state.with(|s| {
                let (mut irps, mut srbs) = (Batch::new(), SrbBatch::new());
                let more = s.settle_some(&mut irps, &mut srbs);
                (irps, srbs, more)
            });
            Self::complete_srbs(srbs);
            for (irp, status, size) in irps {
                irp.complete(status, size);
            }
            // What changes after this lock hold settles itself: its caller calls settle too.
            if !more {
                return;
            }
        }
    }

    /// ATTACH: the handle becomes a server of `lun`; the IRP stays parked until the session
    /// ends.
    pub(super) fn attach(&self, irp: I, lun: u32) {
        let outcome = self.state.with(|s| {
            if s.is_closed() {
                return Outcome::Complete(irp, s.count(Status::DEVICE_REMOVED), 0);
            }
            let Some(lun) = u8::try_from(lun)
                .ok()
                .filter(|&lun| s.luns.get(lun).is_some())
            else {
                return Outcome::Complete(irp, s.count(Status::NO_SUCH_DEVICE), 0);
            };
            let file = irp.file();
            // A session is a handle: an IRP with no FILE_OBJECT (a kernel caller's, built
            // without one) could never be told apart from another.
            if file == 0 || s.sessions.of_file(file).is_some() {
                return Outcome::Complete(irp, s.count(Status::INVALID_DEVICE_STATE), 0);
            }
            let Some(session) = s.sessions.next() else {
                return Outcome::Complete(irp, s.count(Status::QUOTA_EXCEEDED), 0);
            };
            let server = Server {
                opcode: Opcode::Attach as u16,
                lun,
                max_descriptors: 0,
                session,
            };
            let parked = s.servers.park(irp, server);
            if parked.is_ok() {
                s.sessions.open(session, file, lun);
                s.luns.mark_served(lun);
                let servers = s.sessions.of_lun(Some(lun)).count() as u64;
                s.ring
                    .publish(EventKind::ServerAttached, lun.into(), servers);
            }
            s.parked(parked)
        });
        match outcome {
            Outcome::Complete(irp, status, size) => irp.complete(status, size),
            Outcome::Parked => self.deliver(),
        }
    }

    /// FETCH, and the fetch half of COMMIT_AND_FETCH: completes with the work queued for the
    /// session's LUN, or parks until there is some. With `stale` results to report it does not
    /// park. A session's FETCHes take work in the order they came: one that finds an older
    /// FETCH of its session parked leaves the work to it.
    /// `session`: the one the COMMIT half found (still to be checked live), if any.
    pub(super) fn fetch(
        &self,
        irp: I,
        opcode: Opcode,
        max_descriptors: u32,
        stale: u32,
        session: Option<SessionId>,
    ) {
        let mut overtaken = false;
        let outcome = self.state.with(|s| {
            // A COMMIT already applied is answered FINAL even if the adapter went meanwhile.
            if s.is_closed() && session.is_none() {
                return Outcome::Complete(irp, s.count(Status::DEVICE_REMOVED), 0);
            }
            let found = match session {
                _ if s.is_closed() => None,
                Some(id) => s.sessions.live(id),
                None => s.sessions.of_file(irp.file()),
            };
            let Some(session) = found else {
                if opcode == Opcode::CommitAndFetch {
                    // The session ended after its COMMIT was applied: say so, successfully.
                    let mut irp = irp;
                    let ended = Server {
                        opcode: opcode as u16,
                        ..Server::EMPTY
                    };
                    let (status, size) = s.fill_fetch(&mut irp, &ended, stale, FetchFlags::FINAL);
                    return Outcome::Complete(irp, status, size);
                }
                return Outcome::Complete(irp, s.count(Status::INVALID_DEVICE_STATE), 0);
            };
            let ahead = s.sessions.has_fetch_parked(session.id);
            let mut server = Server {
                opcode: opcode as u16,
                lun: session.lun,
                max_descriptors: max_descriptors as u8,
                session: session.id,
            };
            let ready = s.ready(session.lun);
            if max_descriptors == 0 || stale != 0 || (ready && !ahead) {
                if ahead {
                    server.max_descriptors = 0;
                }
                let mut irp = irp;
                let (status, size) = s.fill_fetch(&mut irp, &server, stale, 0);
                return Outcome::Complete(irp, status, size);
            }
            let parked = s.servers.park(irp, server);
            if parked.is_ok() {
                s.sessions.count_fetch(session.id, true);
                overtaken = ready;
            }
            s.parked(parked)
        });
        match outcome {
            Outcome::Complete(irp, status, size) => irp.complete(status, size),
            // The work goes to the older FETCHes.
            Outcome::Parked if overtaken => self.settle(),
            Outcome::Parked => {}
        }
    }

    /// COMMIT_AND_FETCH: checks every result, completes their SRBs, then fetches.
    pub(super) fn commit(&self, irp: I, max_descriptors: u32) {
        let (mut stale, mut unfenced) = (0, false);
        let checked = self.state.with(|s| -> Result<_, Status> {
            if s.is_closed() {
                return Err(s.count(Status::DEVICE_REMOVED));
            }
            let session = s
                .sessions
                .of_file(irp.file())
                .ok_or_else(|| s.count(Status::INVALID_DEVICE_STATE))?;
            let commit = irp
                .input()
                .and_then(Commit::of)
                .ok_or_else(|| s.count(Status::INVALID_PARAMETER))?;
            let mut owed = ArrayVec::<Owed, { MAX_RESULTS as usize }>::new();
            for (result, data) in commit.placed() {
                let slot = match s.tags.lookup(result.tag, session.id.index) {
                    Lookup::Owed { slot, read_len } => {
                        let expected = match result.scsi_status {
                            ScsiStatus::GOOD => read_len as usize,
                            _ => 0,
                        };
                        if data.len() != expected {
                            return Err(s.count(Status::INVALID_BUFFER_SIZE));
                        }
                        // A COMMIT's record is far below 4 GiB (the request decoder).
                        let data = Placed {
                            start: data.start as u32,
                            len: data.len() as u32,
                        };
                        Owed::Srb {
                            slot,
                            ending: ending(&result),
                            data,
                        }
                    }
                    Lookup::Fenced { slot } => Owed::Fence(slot),
                    Lookup::Stale => Owed::Stale,
                    Lookup::Foreign => return Err(s.count(Status::ACCESS_DENIED)),
                    Lookup::Unknown => return Err(s.count(Status::NOT_FOUND)),
                };
                // The request decoder bounded the results at MAX_RESULTS; refuse, never panic.
                if owed.try_push(slot).is_err() {
                    return Err(s.count(Status::INVALID_PARAMETER));
                }
            }
            // Checked whole: now take the SRBs.
            let mut taken = Committed::new();
            for owed in owed {
                match owed {
                    Owed::Srb { slot, ending, data } => {
                        if let Some(srb) = s.tags.commit(slot) {
                            // No more than `owed` held, which has the same capacity.
                            taken.push((srb, ending, data));
                        }
                    }
                    Owed::Fence(slot) => {
                        stale += 1;
                        unfenced |= s.tags.unfence(slot);
                    }
                    Owed::Stale => stale += 1,
                }
            }
            Ok((taken, session.id))
        });
        let (taken, session) = match checked {
            Ok(checked) => checked,
            Err(status) => return irp.complete(status, 0),
        };
        // The SRBs are ours alone now; the READ data is copied before the reply overwrites
        // the buffer it sits in.
        let input = irp.input().unwrap_or_default();
        for (mut srb, ending, data) in taken {
            if data.len != 0 {
                let range = data.start as usize..(data.start + data.len) as usize;
                if let (Some(buffer), Some(data)) = (srb.data(), input.get(range)) {
                    // The COMMIT's check made `data` exactly the SRB's transfer length.
                    buffer[..data.len()].copy_from_slice(data);
                }
            }
            disk::end(&mut srb, ending);
            srb.complete();
        }
        // The LUN's queue moves again: its parked FETCHes, older than this one, go first.
        if unfenced {
            self.settle();
        }
        self.fetch(
            irp,
            Opcode::CommitAndFetch,
            max_descriptors,
            stale,
            Some(session),
        );
    }

    /// The cancel routine of an IRP parked in the server queue. An ATTACH's cancellation ends
    /// its session (the server died); a LUN left with no server starts its grace period on
    /// `grace`. Returns false if the queue does not hold that IRP.
    pub(super) fn cancel_server(&self, slot: u16, id: usize, grace: &impl GraceTimer) -> bool {
        let taken = self.state.with(|s| {
            let (irp, server) = s.servers.take_cancelled(slot, id)?;
            if !server.is_attach() {
                s.sessions.count_fetch(server.session, false);
            }
            // One timer measures every LUN's grace period: a server's death while one runs
            // must not restart it, or deaths a second apart would hold off every expiry.
            let ticking = s.luns.in_grace();
            // A live session's ATTACH is the one parked with its id.
            let lost = server
                .is_attach()
                .then(|| s.end_session(server.session))
                .flatten();
            if let Some((lun, requeued)) = lost {
                s.ring
                    .publish(EventKind::ServerLost, lun.into(), requeued.into());
            }
            s.count(Status::CANCELLED);
            Some((irp, lost.is_some() && !ticking && s.luns.in_grace()))
        });
        let Some((irp, tick)) = taken else {
            return false;
        };
        if tick && !grace.arm() {
            self.end_grace();
        }
        self.settle();
        self.deliver();
        // Last: the IRP holds Storport's removal rundown until it is completed, so nothing of
        // this adapter (its timer, its lock) may be touched after.
        irp.complete(Status::CANCELLED, 0);
        true
    }

    /// The grace timer ticked (at DISPATCH_LEVEL, perhaps under Storport's StartIo lock: it
    /// only publishes and marks). Returns (whether to arm it again, whether LUNs were orphaned:
    /// then [`settle`](Self::settle) and [`deliver`](Self::deliver) must run where no spin
    /// lock is held — the driver's DPC).
    pub fn grace_tick(&self) -> (bool, bool) {
        self.state.with(|s| {
            // The removal ended every LUN's I/O, and HwFreeAdapterResources frees the timer:
            // it must not be armed again.
            if s.is_closed() {
                return (false, false);
            }
            let orphaned = s.orphan(|luns| luns.tick());
            (s.luns.in_grace(), orphaned)
        })
    }

    /// Coming up again after a PnP stop (which may have cancelled the grace timer): a grace
    /// period still running gets its timer back, or ends if there is none.
    pub(super) fn resume_grace(&self, grace: &impl GraceTimer) {
        if self.state.with(|s| s.luns.in_grace()) && !grace.arm() && self.end_grace() {
            self.settle();
            self.deliver();
        }
    }

    /// Ends every grace period now (no timer to measure them): whether LUNs were orphaned,
    /// as for [`grace_tick`](Self::grace_tick).
    pub fn end_grace(&self) -> bool {
        self.state.with(|s| s.orphan(|luns| luns.expire()))
    }
}

impl<I: ServiceIrp, R: PendingSrb> State<I, R> {
    /// Ends the grace periods `end` says are over: their LUNs' I/O fails from now on.
    fn orphan(
        &mut self,
        end: impl FnOnce(
            &mut crate::lun_table::LunTable,
        ) -> ArrayVec<u8, { revcall_protocol::MAX_LUNS }>,
    ) -> bool {
        let ended = end(&mut self.luns);
        for &lun in &ended {
            let queued = self.tags.outstanding(lun);
            self.ring
                .publish(EventKind::LunOrphaned, lun.into(), queued.into());
        }
        self.unsettled |= !ended.is_empty();
        !ended.is_empty()
    }
}

#[cfg(all(test, not(loom)))]
mod tests;
