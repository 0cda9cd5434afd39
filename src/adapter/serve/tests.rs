//! The data path on the host: a server attaches, fetches and commits; fake SRBs and IRPs check
//! what the port driver and Driver Verifier would (each completed once, never under the lock).

extern crate std;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::vec::Vec;

use revcall_protocol::{
    CommitResult, DataOp, Descriptor, FetchFlags, LunFlags, LunSpec, MAX_TRANSFER, Reply, Request,
    ScsiStatus, decode_reply, encode_commit, fetch_reply_size,
};
use revcall_scsi::{Command, Sense, Transfer};
use storport_abi::{srb_function, srb_status};

use crate::error::Status;
use crate::testing::{
    FakeIrp, FakePort, FakeSrb, IrpCell, SrbCell, SrbEnd, TestAdapter, adapter, before_lock,
    interleaving_pending,
};

const FETCH_OUT: usize = fetch_reply_size(4, 4 * MAX_TRANSFER as usize);
const SERVER: usize = 0x1000;
const OTHER_SERVER: usize = 0x2000;

struct Bench {
    adapter: std::boxed::Box<TestAdapter>,
    port: FakePort,
    next_id: AtomicUsize,
}

impl Bench {
    fn new(flags: u32) -> Self {
        let bench = Self {
            adapter: adapter(true),
            port: FakePort::new(),
            next_id: AtomicUsize::new(1),
        };
        assert_eq!(bench.create(flags, 1), Ok(0));
        bench
    }

    /// LUN_CREATE with serial SV`n`: its number or the status.
    fn create(&self, flags: u32, n: u8) -> Result<u32, Status> {
        let mut serial = [b' '; 32];
        serial[..3].copy_from_slice(&[b'S', b'V', b'0' + n]);
        let spec = LunSpec {
            block_count: 1024,
            block_size: 512,
            flags,
            serial,
            unique_id: [n + 2; 16],
            ..LunSpec::default()
        };
        let done = self.send(SERVER, Request::LunCreate(spec), 64);
        let done = done.completion().unwrap();
        match decode_reply(&done.bytes) {
            Ok(Reply::LunCreate(reply)) => Ok(reply.lun),
            _ => Err(done.status),
        }
    }

    fn remove(&self, lun: u32) -> Status {
        let done = self.send(SERVER, Request::LunRemove { lun }, 64);
        done.completion().unwrap().status
    }

    fn id(&self) -> usize {
        self.next_id.fetch_add(1, SeqCst) + 1
    }

    fn send(&self, file: usize, request: Request, out: usize) -> Arc<IrpCell> {
        let (irp, cell) = FakeIrp::new(self.id(), request, out);
        self.adapter.process(irp.on(file), &self.port);
        cell
    }

    fn attach(&self, file: usize) -> Arc<IrpCell> {
        let cell = self.send(file, Request::Attach { lun: 0 }, 16);
        assert!(cell.completion().is_none(), "ATTACH parks for the session");
        cell
    }

    fn fetch(&self, file: usize) -> Arc<IrpCell> {
        self.send(file, Request::Fetch { max_descriptors: 4 }, FETCH_OUT)
    }

    fn commit(
        &self,
        file: usize,
        results: &[CommitResult],
        data: &[u8],
        fetch: u32,
    ) -> Arc<IrpCell> {
        let mut input = std::vec![0u8; 16 + results.len() * 16 + data.len()];
        let n = encode_commit(&mut input, fetch, results, data).unwrap();
        input.truncate(n);
        let (irp, cell) = FakeIrp::raw(self.id(), Some(input), Some(FETCH_OUT));
        self.adapter.process(irp.on(file), &self.port);
        cell
    }

    fn io(&self, command: Command, data: Vec<u8>) -> Arc<SrbCell> {
        let mut srb = FakeSrb::scsi(0, &command, data.len());
        srb.data = data;
        let cell = srb.cell.clone();
        self.adapter.start_io(srb, &self.port);
        cell
    }
}

fn rw(lba: u64, blocks: u32) -> Transfer {
    Transfer {
        lba,
        blocks,
        fua: false,
    }
}

/// The descriptors and payloads of a completed FETCH.
fn fetched(cell: &IrpCell) -> (u32, u32, Vec<(Descriptor, Vec<u8>)>) {
    let done = cell.completion().expect("the FETCH completed");
    assert_eq!(done.status, Status::SUCCESS);
    let Ok(Reply::Fetch(reply)) = decode_reply(&done.bytes) else {
        panic!("not a FETCH reply");
    };
    let items = reply
        .descriptors()
        .map(|d| (d, reply.payload(&d).unwrap().to_vec()))
        .collect();
    (reply.reply.flags, reply.reply.stale, items)
}

fn good(tag: u64, data_len: u32) -> CommitResult {
    CommitResult {
        tag,
        data_len,
        ..CommitResult::default()
    }
}

fn ended(cell: &SrbCell) -> SrbEnd {
    assert_eq!(cell.completions(), 1, "completed exactly once");
    cell.end().unwrap()
}

#[test]
fn a_write_and_a_read_travel_through_a_parked_fetch_and_a_commit() {
    let b = Bench::new(0);
    let attach = b.attach(SERVER);
    let fetch = b.fetch(SERVER);
    assert!(fetch.completion().is_none(), "no work: the FETCH parks");
    let write = b.io(Command::Write(rw(8, 2)), std::vec![0xA5; 1024]);
    assert_eq!(write.completions(), 0, "the SRB waits for its server");
    let (flags, stale, items) = fetched(&fetch);
    assert_eq!((flags, stale, items.len()), (0, 0, 1));
    let (descriptor, payload) = &items[0];
    assert_eq!(
        (descriptor.op, descriptor.lba, descriptor.blocks),
        (DataOp::Write as u8, 8, 2)
    );
    assert_eq!(
        payload,
        &std::vec![0xA5; 1024],
        "the WRITE's data, copied once"
    );
    // Queued before the next FETCH: it completes at once, with the commit of the WRITE.
    let read = b.io(Command::Read(rw(8, 2)), std::vec![0; 1024]);
    let next = b.commit(SERVER, &[good(descriptor.tag, 0)], &[], 4);
    let end = ended(&write);
    assert_eq!((end.srb_status, end.scsi_status), (srb_status::SUCCESS, 0));
    let (_, _, items) = fetched(&next);
    let (read_descriptor, payload) = &items[0];
    assert_eq!(read_descriptor.op, DataOp::Read as u8);
    assert!(payload.is_empty());
    let last = b.commit(SERVER, &[good(read_descriptor.tag, 1024)], &[0x5A; 1024], 0);
    assert_eq!(
        last.completion().unwrap().status,
        Status::SUCCESS,
        "commit only"
    );
    let end = ended(&read);
    assert_eq!(end.srb_status, srb_status::SUCCESS);
    assert_eq!(end.data, std::vec![0x5A; 1024]);
    assert!(attach.completion().is_none(), "the session lives on");
}

#[test]
fn a_bad_commit_is_refused_whole_and_touches_no_srb() {
    let b = Bench::new(0);
    let _attach = b.attach(SERVER);
    let _other = b.attach(OTHER_SERVER);
    let read = b.io(Command::Read(rw(0, 1)), std::vec![0; 512]);
    let fetch = b.fetch(SERVER);
    let (_, _, items) = fetched(&fetch);
    let tag = items[0].0.tag;
    let refused = |b: &Bench, file, results: &[CommitResult], data: &[u8]| {
        let cell = b.commit(file, results, data, 0);
        cell.completion().unwrap().status
    };
    assert_eq!(
        refused(&b, SERVER, &[good(tag + (1 << 16), 0)], &[]),
        Status::NOT_FOUND
    );
    assert_eq!(
        refused(&b, OTHER_SERVER, &[good(tag, 512)], &[0; 512]),
        Status::ACCESS_DENIED
    );
    assert_eq!(
        refused(&b, SERVER, &[good(tag, 256)], &[0; 256]),
        Status::INVALID_BUFFER_SIZE
    );
    assert_eq!(
        refused(&b, 0x3000, &[good(tag, 512)], &[0; 512]),
        Status::INVALID_DEVICE_STATE
    );
    // A good result beside a bad one: neither is applied.
    assert_eq!(
        refused(&b, SERVER, &[good(tag, 512), good(77, 0)], &[1; 512]),
        Status::NOT_FOUND
    );
    assert_eq!(read.completions(), 0, "no refused COMMIT touched the SRB");
    let check = CommitResult {
        scsi_status: ScsiStatus::CHECK_CONDITION,
        sense_key: 3,
        asc: 0x11,
        ..good(tag, 0)
    };
    assert_eq!(refused(&b, SERVER, &[check], &[]), Status::SUCCESS);
    let end = ended(&read);
    assert_eq!(end.scsi_status, ScsiStatus::CHECK_CONDITION);
    assert_eq!(
        Sense::parse(&end.sense),
        Some(Sense::UNRECOVERED_READ_ERROR)
    );
    assert!(end.data.is_empty());
    // Committed once: the tag is gone.
    assert_eq!(refused(&b, SERVER, &[good(tag, 0)], &[]), Status::NOT_FOUND);
}

#[test]
fn a_dead_servers_srbs_go_to_the_next_server_or_wait_out_the_grace_period() {
    let b = Bench::new(0);
    let first = b.attach(SERVER);
    let second = b.attach(OTHER_SERVER);
    let reads: Vec<_> = (0..3)
        .map(|n| b.io(Command::Read(rw(n, 1)), std::vec![0; 512]))
        .collect();
    let (_, _, held) = fetched(&b.fetch(SERVER));
    assert_eq!(held.len(), 3);
    // The first server dies: its ATTACH is cancelled (thread or process exit).
    first.io_cancel_irp(&b.adapter);
    assert_eq!(first.completion().unwrap().status, Status::CANCELLED);
    let (_, _, again) = fetched(&b.fetch(OTHER_SERVER));
    let lbas: Vec<u64> = again.iter().map(|(d, _)| d.lba).collect();
    assert_eq!(lbas, [0, 1, 2], "requeued at the front, in order");
    assert!(reads.iter().all(|r| r.completions() == 0));
    // The dead session's tags are stale for it: it has no session to commit from anyway.
    let late = b.commit(SERVER, &[good(held[0].0.tag, 512)], &[0; 512], 0);
    assert_eq!(
        late.completion().unwrap().status,
        Status::INVALID_DEVICE_STATE
    );
    let twice = b.send(OTHER_SERVER, Request::Attach { lun: 0 }, 16);
    assert_eq!(
        twice.completion().unwrap().status,
        Status::INVALID_DEVICE_STATE,
        "one session per handle"
    );
    // The last server dies too: the LUN's grace period starts; its parked FETCH ends FINAL.
    let parked = b.fetch(OTHER_SERVER);
    second.io_cancel_irp(&b.adapter);
    let (flags, _, items) = fetched(&parked);
    assert_eq!((flags, items.len()), (FetchFlags::FINAL, 0));
    let late = b.io(Command::Read(rw(9, 1)), std::vec![0; 512]);
    for _ in 1..crate::lun_table::GRACE_TICKS {
        assert_eq!(b.adapter.grace_tick(), (true, false), "still in grace");
    }
    assert!(
        reads.iter().chain([&late]).all(|r| r.completions() == 0),
        "held for a server"
    );
    // A restarted server within the grace period gets them all.
    let third = b.attach(0x4000);
    let (_, _, again) = fetched(&b.fetch(0x4000));
    assert_eq!(again.len(), 4);
    assert_eq!(
        b.adapter.grace_tick(),
        (false, false),
        "the grace period ended"
    );
    // It dies with them, and no server comes: when the grace period is over they fail NOT
    // READY, 04/03, and so does what comes next.
    third.io_cancel_irp(&b.adapter);
    for _ in 1..crate::lun_table::GRACE_TICKS {
        assert_eq!(b.adapter.grace_tick(), (true, false));
    }
    assert_eq!(b.adapter.grace_tick(), (false, true), "orphaned");
    b.adapter.settle();
    for read in reads.iter().chain([&late]) {
        let end = ended(read);
        assert_eq!(
            Sense::parse(&end.sense),
            Some(Sense::NOT_READY_MANUAL_INTERVENTION)
        );
    }
    let after = b.io(Command::Read(rw(0, 1)), std::vec![0; 512]);
    assert_eq!(
        Sense::parse(&ended(&after).sense),
        Some(Sense::NOT_READY_MANUAL_INTERVENTION)
    );
}

#[test]
fn removing_the_lun_ends_its_sessions_and_srbs() {
    let b = Bench::new(LunFlags::WRITE_CACHE);
    let attach = b.attach(SERVER);
    let flush = b.io(Command::SynchronizeCache { lba: 0, blocks: 0 }, Vec::new());
    let (_, _, items) = fetched(&b.fetch(SERVER));
    assert_eq!(items[0].0.op, DataOp::Flush as u8);
    let parked = b.fetch(SERVER);
    let queued = b.io(Command::Write(rw(0, 1)), std::vec![1; 512]);
    let (_, _, more) = fetched(&parked);
    assert_eq!(more.len(), 1);
    let removed = b.send(0x9000, Request::LunRemove { lun: 0 }, 64);
    assert_eq!(removed.completion().unwrap().status, Status::SUCCESS);
    assert_eq!(ended(&flush).srb_status, srb_status::NO_DEVICE);
    assert_eq!(ended(&queued).srb_status, srb_status::NO_DEVICE);
    let done = attach
        .completion()
        .expect("the ATTACH completes with its LUN");
    assert_eq!(done.status, Status::SUCCESS);
    assert!(matches!(decode_reply(&done.bytes), Ok(Reply::Attach(a)) if a.lun == 0));
    // The server's late COMMIT finds no session; a FETCH neither.
    let late = b.commit(SERVER, &[good(items[0].0.tag, 0)], &[], 0);
    assert_eq!(
        late.completion().unwrap().status,
        Status::INVALID_DEVICE_STATE
    );
    let gone = b.send(SERVER, Request::Attach { lun: 0 }, 16);
    assert_eq!(gone.completion().unwrap().status, Status::NO_SUCH_DEVICE);
}

#[test]
fn a_parked_fetch_ends_final_when_its_session_ends() {
    let b = Bench::new(0);
    let attach = b.attach(SERVER);
    let parked = b.fetch(SERVER);
    attach.io_cancel_irp(&b.adapter);
    let (flags, _, items) = fetched(&parked);
    assert_eq!((flags, items.len()), (FetchFlags::FINAL, 0));
}

#[test]
fn resets_take_back_what_the_servers_hold_and_a_late_commit_is_stale() {
    let b = Bench::new(0);
    let _attach = b.attach(SERVER);
    let read = b.io(Command::Read(rw(0, 1)), std::vec![0; 512]);
    let (_, _, items) = fetched(&b.fetch(SERVER));
    let queued = b.io(Command::Read(rw(1, 1)), std::vec![0; 512]);
    b.adapter.reset(None, srb_status::BUS_RESET);
    assert_eq!(ended(&read).srb_status, srb_status::BUS_RESET);
    assert_eq!(ended(&queued).srb_status, srb_status::BUS_RESET);
    let late = b.commit(SERVER, &[good(items[0].0.tag, 512)], &[9; 512], 4);
    let (_, stale, more) = fetched(&late);
    assert_eq!(
        (stale, more.len()),
        (1, 0),
        "dropped and counted, not refused"
    );
    // A LUN reset SRB aborts the LUN's SRBs and then succeeds.
    let held = b.io(Command::Read(rw(2, 1)), std::vec![0; 512]);
    let mut reset = FakeSrb::scsi(0, &Command::TestUnitReady, 0);
    reset.function = srb_function::RESET_LOGICAL_UNIT;
    let reset_cell = reset.cell.clone();
    b.adapter.start_io(reset, &b.port);
    assert_eq!(ended(&held).srb_status, srb_status::ABORTED);
    assert_eq!(ended(&reset_cell).srb_status, srb_status::SUCCESS);
}

#[test]
fn a_write_reset_under_a_live_server_holds_the_lun_until_that_server_lets_go() {
    let b = Bench::new(0);
    let _slow = b.attach(SERVER);
    let _other = b.attach(OTHER_SERVER);
    let write = b.io(Command::Write(rw(0, 1)), std::vec![1; 512]);
    let (_, _, held) = fetched(&b.fetch(SERVER));
    // The slow server still holds the WRITE when the bus is reset: the SRB ends, but the
    // server may yet write block 0.
    b.adapter.reset(None, srb_status::BUS_RESET);
    assert_eq!(ended(&write).srb_status, srb_status::BUS_RESET);
    // The class driver's retry, and a READ of the same block, wait: the other server's FETCH
    // parks with them queued.
    let retry = b.io(Command::Write(rw(0, 1)), std::vec![1; 512]);
    let read = b.io(Command::Read(rw(0, 1)), std::vec![0; 512]);
    let parked = b.fetch(OTHER_SERVER);
    assert!(parked.completion().is_none(), "fenced: nothing handed out");
    // A stale COMMIT of another tag does not lift it; the slow server's own COMMIT does.
    let (_, stale, _) = fetched(&b.commit(OTHER_SERVER, &[good(held[0].0.tag, 0)], &[], 0));
    assert_eq!(stale, 1);
    assert!(parked.completion().is_none(), "only the holder lifts it");
    let late = b.commit(SERVER, &[good(held[0].0.tag, 0)], &[], 0);
    assert_eq!(fetched(&late).1, 1, "stale");
    let (_, _, items) = fetched(&parked);
    let ops: Vec<u8> = items.iter().map(|(d, _)| d.op).collect();
    assert_eq!(ops, [DataOp::Write as u8, DataOp::Read as u8]);
    assert!(retry.completions() == 0 && read.completions() == 0);
    // Committed again by the slow server: stale, and no fence to lift twice.
    let again = b.commit(SERVER, &[good(held[0].0.tag, 0)], &[], 0);
    assert_eq!(fetched(&again).1, 1);
}

#[test]
fn a_fence_lifts_when_its_servers_session_ends_and_a_read_never_fences() {
    let b = Bench::new(LunFlags::UNMAP);
    let slow = b.attach(SERVER);
    let _other = b.attach(OTHER_SERVER);
    let read = b.io(Command::Read(rw(0, 1)), std::vec![0; 512]);
    let unmap_list = {
        let mut list = [0u8; 24];
        let n = revcall_scsi::write_unmap_list(&[(4, 2)], &mut list).unwrap();
        list[..n].to_vec()
    };
    let _ = fetched(&b.fetch(SERVER));
    // A READ taken back is merely stale: the LUN goes on.
    let mut reset = FakeSrb::scsi(0, &Command::TestUnitReady, 0);
    reset.function = srb_function::RESET_LOGICAL_UNIT;
    b.adapter.start_io(reset, &b.port);
    assert_eq!(ended(&read).srb_status, srb_status::ABORTED);
    let next = b.io(Command::Read(rw(1, 1)), std::vec![0; 512]);
    let (_, _, items) = fetched(&b.fetch(OTHER_SERVER));
    assert_eq!(items.len(), 1, "not fenced by a READ");
    b.commit(OTHER_SERVER, &[good(items[0].0.tag, 512)], &[0; 512], 0);
    assert_eq!(ended(&next).srb_status, srb_status::SUCCESS);
    // An UNMAP taken back fences; the slow server dies holding it: the process is gone, so
    // is the fence.
    let unmap = b.io(
        Command::Unmap {
            param_len: unmap_list.len() as u16,
        },
        unmap_list,
    );
    let _ = fetched(&b.fetch(SERVER));
    b.adapter.reset(None, srb_status::BUS_RESET);
    assert_eq!(ended(&unmap).srb_status, srb_status::BUS_RESET);
    let after = b.io(Command::Read(rw(4, 1)), std::vec![0; 512]);
    let parked = b.fetch(OTHER_SERVER);
    assert!(parked.completion().is_none(), "fenced");
    slow.io_cancel_irp(&b.adapter);
    let (_, _, items) = fetched(&parked);
    assert_eq!(items.len(), 1);
    assert_eq!(after.completions(), 0);
}

#[test]
fn a_new_lun_queues_for_its_first_server_and_removal_ends_everything() {
    let b = Bench::new(0);
    // Before any server: the SRB waits for the one its creator is about to start.
    let early = b.io(Command::Read(rw(0, 1)), std::vec![0; 512]);
    assert_eq!(early.completions(), 0);
    let fetch_cell = b.fetch(OTHER_SERVER);
    assert_eq!(
        fetch_cell.completion().unwrap().status,
        Status::INVALID_DEVICE_STATE,
        "FETCH without an ATTACH"
    );
    let attach = b.attach(SERVER);
    let (_, _, items) = fetched(&b.fetch(SERVER));
    assert_eq!(items[0].0.lba, 0, "the early READ");
    let parked = b.fetch(SERVER);
    b.adapter.remove(&b.port);
    assert_eq!(ended(&early).srb_status, srb_status::NO_DEVICE);
    assert_eq!(attach.completion().unwrap().status, Status::DEVICE_REMOVED);
    assert_eq!(parked.completion().unwrap().status, Status::DEVICE_REMOVED);
    let after = b.io(Command::Read(rw(0, 1)), std::vec![0; 512]);
    assert_eq!(ended(&after).srb_status, srb_status::NO_DEVICE);
}

#[test]
fn an_inquiry_tells_storport_the_luns_queue_depth() {
    let b = Bench::new(0);
    let inquiry = b.io(
        Command::Inquiry {
            evpd: false,
            page: 0,
            alloc: 96,
        },
        std::vec![0; 96],
    );
    assert_eq!(ended(&inquiry).srb_status, srb_status::SUCCESS);
    assert_eq!(
        *b.port.queue_depths.lock().unwrap(),
        [(0, revcall_protocol::DEFAULT_QUEUE_DEPTH)]
    );
    // A VPD page is no first INQUIRY: nothing more is said.
    b.io(
        Command::Inquiry {
            evpd: true,
            page: 0x80,
            alloc: 96,
        },
        std::vec![0; 96],
    );
    assert_eq!(b.port.queue_depths.lock().unwrap().len(), 1);
}

#[test]
fn abort_command_aborts_the_srb_it_names_and_nothing_else() {
    let b = Bench::new(0);
    let _attach = b.attach(SERVER);
    let mut doomed = FakeSrb::scsi(0, &Command::Read(rw(0, 1)), 512);
    let target = crate::disk::PendingSrb::id(&doomed);
    doomed.data = std::vec![0; 512];
    let doomed_cell = doomed.cell.clone();
    b.adapter.start_io(doomed, &b.port);
    let other = b.io(Command::Read(rw(1, 1)), std::vec![0; 512]);
    let abort = |target| {
        let mut abort = FakeSrb::scsi(0, &Command::TestUnitReady, 0);
        abort.function = srb_function::ABORT_COMMAND;
        abort.next_srb = target;
        let cell = abort.cell.clone();
        b.adapter.start_io(abort, &b.port);
        ended(&cell).srb_status
    };
    assert_eq!(abort(target), srb_status::SUCCESS);
    assert_eq!(ended(&doomed_cell).srb_status, srb_status::ABORTED);
    assert_eq!(other.completions(), 0, "only the named SRB");
    // Aborting one that is gone already is no error, and touches nothing.
    assert_eq!(abort(target), srb_status::SUCCESS);
    assert_eq!(other.completions(), 0);
}

/// A value the other side of a race leaves for the test to check.
type Left<T> = Arc<Mutex<Option<T>>>;

fn left<T>() -> (Left<T>, Left<T>) {
    let cell = Arc::new(Mutex::new(None));
    (cell.clone(), cell)
}

fn take<T>(cell: &Left<T>) -> T {
    assert!(!interleaving_pending(), "the race's other side never ran");
    cell.lock().unwrap().take().expect("left by the other side")
}

#[test]
fn an_srb_is_checked_against_the_lun_it_is_queued_for() {
    let b = Arc::new(Bench::new(0));
    let (mine, theirs) = left();
    let other = b.clone();
    // Just before HwStartIo's one lock hold: LUN 0 is removed and a read-only one created
    // under its number, whose server waits for work. The WRITE meets that LUN, and only it:
    // checked against it (refused), never queued for it unchecked.
    before_lock(0, move || {
        assert_eq!(other.remove(0), Status::SUCCESS);
        assert_eq!(other.create(LunFlags::READ_ONLY, 2), Ok(0));
        *theirs.lock().unwrap() = Some((other.attach(SERVER), other.fetch(SERVER)));
    });
    let write = b.io(Command::Write(rw(0, 1)), std::vec![0; 512]);
    let (_attach, fetch) = take(&mine);
    let end = ended(&write);
    assert_eq!(end.scsi_status, ScsiStatus::CHECK_CONDITION);
    assert_eq!(Sense::parse(&end.sense), Some(Sense::WRITE_PROTECTED));
    assert!(
        fetch.completion().is_none(),
        "the new LUN's server never sees it"
    );
}

#[test]
fn srbs_of_a_removed_lun_are_never_served_by_the_next_one_under_its_number() {
    let b = Arc::new(Bench::new(0));
    let _attach = b.attach(SERVER);
    let old = b.io(Command::Write(rw(0, 1)), std::vec![0xAA; 512]);
    let (mine, theirs) = left();
    let other = b.clone();
    // Between LUN_REMOVE's lock hold and the settling that ends the LUN's SRBs: a new LUN 0
    // and its server.
    before_lock(1, move || {
        assert_eq!(other.create(0, 2), Ok(0));
        *theirs.lock().unwrap() = Some((other.attach(OTHER_SERVER), other.fetch(OTHER_SERVER)));
    });
    assert_eq!(b.remove(0), Status::SUCCESS);
    let (_attach, fetch) = take(&mine);
    assert_eq!(ended(&old).srb_status, srb_status::NO_DEVICE);
    assert!(
        fetch.completion().is_none(),
        "the old LUN's WRITE is not its"
    );
    let new = b.io(Command::Write(rw(0, 1)), std::vec![0xBB; 512]);
    let (_, _, items) = fetched(&fetch);
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].1, std::vec![0xBB; 512]);
    assert_eq!(new.completions(), 0);
}

#[test]
fn a_sessions_fetches_take_work_in_the_order_they_came() {
    let b = Arc::new(Bench::new(0));
    let _attach = b.attach(SERVER);
    let first = b.fetch(SERVER);
    let (mine, theirs) = left();
    let other = b.clone();
    // Just before the WRITE is queued (and, in the same lock hold, handed to a parked
    // FETCH), the same server's COMMIT_AND_FETCH arrives and parks behind its older FETCH.
    before_lock(0, move || {
        *theirs.lock().unwrap() = Some(other.commit(SERVER, &[], &[], 4));
    });
    let _write = b.io(Command::Write(rw(3, 1)), std::vec![0x11; 512]);
    let second = take(&mine);
    let (_, _, items) = fetched(&first);
    assert_eq!(items.len(), 1, "the older FETCH gets the work");
    assert!(second.completion().is_none(), "the newer one waits");
    // A commit-only request never waits, and takes nothing ahead of the parked one.
    let only = b.commit(SERVER, &[good(items[0].0.tag, 0)], &[], 0);
    assert_eq!(only.completion().unwrap().status, Status::SUCCESS);
    let _read = b.io(Command::Read(rw(4, 1)), std::vec![0; 512]);
    assert_eq!(fetched(&second).2.len(), 1);
}

#[test]
fn a_commit_whose_session_ends_before_its_fetch_half_is_applied_and_says_final() {
    let b = Arc::new(Bench::new(0));
    let attach = b.attach(SERVER);
    let read = b.io(Command::Read(rw(0, 1)), std::vec![0; 512]);
    let (_, _, items) = fetched(&b.fetch(SERVER));
    let other = b.clone();
    let dying = attach.clone();
    before_lock(1, move || dying.io_cancel_irp(&other.adapter));
    let next = b.commit(SERVER, &[good(items[0].0.tag, 512)], &[7; 512], 4);
    assert!(!interleaving_pending());
    assert_eq!(attach.completion().unwrap().status, Status::CANCELLED);
    let end = ended(&read);
    assert_eq!(
        (end.srb_status, end.data),
        (srb_status::SUCCESS, std::vec![7; 512])
    );
    let (flags, stale, items) = fetched(&next);
    assert_eq!((flags, stale, items.len()), (FetchFlags::FINAL, 0, 0));
}

#[test]
fn an_attach_without_a_file_object_is_refused() {
    let b = Bench::new(0);
    let attach = b.send(0, Request::Attach { lun: 0 }, 16);
    assert_eq!(
        attach.completion().unwrap().status,
        Status::INVALID_DEVICE_STATE
    );
    assert_eq!(b.adapter.stats().parked_now, 0);
    // Nothing serves LUN 0: its I/O still waits for a first server.
    let read = b.io(Command::Read(rw(0, 1)), std::vec![0; 512]);
    assert_eq!(read.completions(), 0);
}

#[test]
fn one_grace_timer_is_not_restarted_by_each_death_and_stops_at_removal() {
    let b = Bench::new(0);
    assert_eq!(b.create(0, 2), Ok(1));
    let first = b.attach(SERVER);
    let second = b.send(OTHER_SERVER, Request::Attach { lun: 1 }, 16);
    first.io_cancel_irp_on(&b.adapter, &b.port);
    assert_eq!(b.port.grace_arms.load(SeqCst), 1);
    assert_eq!(b.adapter.grace_tick(), (true, false));
    second.io_cancel_irp_on(&b.adapter, &b.port);
    assert_eq!(
        b.port.grace_arms.load(SeqCst),
        1,
        "the running timer measures LUN 1 too"
    );
    for _ in 2..crate::lun_table::GRACE_TICKS {
        assert_eq!(b.adapter.grace_tick(), (true, false));
    }
    assert_eq!(b.adapter.grace_tick(), (true, true), "LUN 0 on time");
    // Removed while LUN 1's grace period runs: the timer is not armed again.
    b.adapter.remove(&b.port);
    assert_eq!(b.adapter.grace_tick(), (false, false));
}

/// A grace timer that records whether the ATTACH whose cancellation armed it had already been
/// completed (after which Storport's removal rundown may have finished and freed the timer).
struct WatchingGrace {
    watched: Arc<IrpCell>,
    armed_after_completion: AtomicUsize,
    arms: AtomicUsize,
}

impl crate::adapter::GraceTimer for WatchingGrace {
    fn arm(&self) -> bool {
        self.arms.fetch_add(1, SeqCst);
        if self.watched.completions() != 0 {
            self.armed_after_completion.fetch_add(1, SeqCst);
        }
        true
    }
}

#[test]
fn a_dead_servers_attach_completes_only_after_its_grace_timer_is_armed() {
    let b = Bench::new(0);
    let attach = b.attach(SERVER);
    let grace = WatchingGrace {
        watched: attach.clone(),
        armed_after_completion: AtomicUsize::new(0),
        arms: AtomicUsize::new(0),
    };
    attach.io_cancel_irp_on(&b.adapter, &grace);
    assert_eq!(grace.arms.load(SeqCst), 1);
    assert_eq!(grace.armed_after_completion.load(SeqCst), 0);
    assert_eq!(attach.completion().unwrap().status, Status::CANCELLED);
}

#[test]
fn a_reset_ends_a_removed_luns_srbs_no_device_not_aborted() {
    let b = Arc::new(Bench::new(0));
    let _attach = b.attach(SERVER);
    let old = b.io(Command::Write(rw(0, 1)), std::vec![0xAA; 512]);
    let other = b.clone();
    // Between LUN_REMOVE's lock hold and its settle: a new LUN 0, and Storport's LUN reset.
    // ABORTED would be retried, at the new LUN.
    before_lock(1, move || {
        assert_eq!(other.create(0, 2), Ok(0));
        let mut reset = FakeSrb::scsi(0, &Command::TestUnitReady, 0);
        reset.function = srb_function::RESET_LOGICAL_UNIT;
        other.adapter.start_io(reset, &other.port);
    });
    assert_eq!(b.remove(0), Status::SUCCESS);
    assert!(!interleaving_pending());
    assert_eq!(ended(&old).srb_status, srb_status::NO_DEVICE);
}

#[test]
fn a_commit_applied_before_the_adapter_went_is_answered_final() {
    let b = Arc::new(Bench::new(0));
    let _attach = b.attach(SERVER);
    let read = b.io(Command::Read(rw(0, 1)), std::vec![0; 512]);
    let (_, _, items) = fetched(&b.fetch(SERVER));
    let other = b.clone();
    before_lock(1, move || other.adapter.remove(&other.port));
    let next = b.commit(SERVER, &[good(items[0].0.tag, 512)], &[7; 512], 4);
    assert!(!interleaving_pending());
    assert_eq!(ended(&read).srb_status, srb_status::SUCCESS, "applied");
    let (flags, _, items) = fetched(&next);
    assert_eq!((flags, items.len()), (FetchFlags::FINAL, 0));
}
