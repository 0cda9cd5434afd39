//! The I/O manager on its own: a fake dispatch routine stands in for a driver; no `.sys`.
//!
//! Driver routines run on the calling thread (dispatch, IoCancelIrp's cancel routine), so the
//! fakes find their test's state in thread-locals.

use std::cell::{Cell, RefCell};
use std::ffi::c_void;
use std::sync::Arc;

use storport_abi::IRP;
use storport_abi::status::user::{
    STATUS_ACCESS_DENIED, STATUS_CANCELLED, STATUS_PENDING, STATUS_SUCCESS,
};

use super::irp::header;
use super::objects::Slot;
use super::{Access, Io, Via};
use crate::machine::{Config, Machine};
use crate::verifier::Code;

const IOCTL: u32 = 0x0004_D038;

std::thread_local! {
    /// The IRP the fake dispatch routine was last handed.
    static DISPATCHED: Cell<usize> = const { Cell::new(0) };
    /// The I/O manager the fake cancel routine completes through.
    static IO: RefCell<Option<Arc<Io>>> = const { RefCell::new(None) };
}

/// A dispatch routine that keeps every IRP (as a miniport parking it would).
unsafe extern "win64" fn keep(_device: *mut c_void, irp: *mut IRP) -> i32 {
    DISPATCHED.with(|d| d.set(irp as usize));
    STATUS_PENDING as i32
}

fn io() -> Arc<Io> {
    io_with(Config::default())
}

fn io_with(config: Config) -> Arc<Io> {
    let machine = Arc::new(Machine::new(
        Config {
            timeline: false,
            delay_probability: 0.0,
            ..config
        },
        0,
    ));
    let io = Arc::new(Io::new(machine, "test"));
    io.objects()
        .set_word(Slot::MajorFunction(0x0E), keep as *const () as usize);
    IO.with(|slot| *slot.borrow_mut() = Some(io.clone()));
    io
}

/// Sends the IOCTL and returns the request and the IRP the fake driver now holds.
fn send(io: &Io, input: &[u8], out_len: u32) -> (Arc<super::Request>, usize) {
    let handle = io.open(1, Access::READ_WRITE);
    let request = io
        .device_io_control(handle, IOCTL, input, out_len)
        .expect("sent");
    (request, DISPATCHED.with(|d| d.get()))
}

/// Sets the IRP's IoStatus and completes it, as a driver that owns it would.
fn complete(io: &Io, irp: usize, status: u32, information: usize, via: Via) {
    // SAFETY: the fake driver owns the IRP it was dispatched.
    let ptr = unsafe { io.irp_in_flight(irp) }.expect("in flight");
    ptr.set(header::STATUS, status as i32);
    ptr.set(header::INFORMATION, information);
    io.complete(irp, via);
}

fn violations(io: &Io) -> Vec<(u32, u64)> {
    io.machine.verifier().codes()
}

#[test]
fn a_buffered_reply_is_copied_back_up_to_information() {
    let io = io();
    let (request, irp) = send(&io, b"in", 8);
    let buffer = {
        // SAFETY: the fake driver owns the IRP.
        let ptr = unsafe { io.irp_in_flight(irp) }.unwrap();
        ptr.get(header::SYSTEM_BUFFER) as usize
    };
    assert_eq!(io.machine.pool().read_bytes(buffer, 2).unwrap(), b"in");
    io.machine.pool().write_bytes(buffer, b"abcdefgh").unwrap();
    complete(&io, irp, STATUS_SUCCESS, 5, Via::IofCompleteRequest);
    let outcome = request.outcome().expect("completed");
    assert_eq!(
        (outcome.status, outcome.output),
        (STATUS_SUCCESS, b"abcde".to_vec())
    );
    assert_eq!(request.completions(), 1);
    assert!(violations(&io).is_empty(), "{:?}", violations(&io));
}

#[test]
fn information_beyond_the_output_buffer_is_0xc9_312() {
    let io = io();
    let (_request, irp) = send(&io, &[0; 4], 4);
    complete(&io, irp, STATUS_SUCCESS, 64, Via::IofCompleteRequest);
    assert!(violations(&io).contains(&(0xC9, 0x312)));
}

#[test]
fn a_second_completion_is_0x44() {
    let io = io();
    let (_request, irp) = send(&io, &[0; 4], 0);
    complete(&io, irp, STATUS_SUCCESS, 0, Via::IofCompleteRequest);
    io.complete(irp, Via::IofCompleteRequest);
    assert_eq!(
        violations(&io),
        [(Code::MultipleIrpCompleteRequests.value(), irp as u64)]
    );
}

#[test]
fn output_never_written_is_a_disclosure() {
    let io = io();
    let (_request, irp) = send(&io, &[1, 2], 64);
    complete(&io, irp, STATUS_SUCCESS, 64, Via::IofCompleteRequest);
    assert!(violations(&io).contains(&(0xC4, 0x5700_0004)));
}

/// Without the check (a benchmark's run) the output past the input is the block's old bytes,
/// unmarked, and nothing is reported.
#[test]
fn without_the_disclosure_check_output_is_neither_marked_nor_checked() {
    let io = io_with(Config {
        disclosure_check: false,
        ..Config::default()
    });
    let (_request, irp) = send(&io, &[1, 2], 64);
    // SAFETY: the fake driver owns the IRP.
    let buffer = unsafe { io.irp_in_flight(irp) }
        .unwrap()
        .get(header::SYSTEM_BUFFER) as usize;
    let bytes = io.machine.pool().read_bytes(buffer, 64).unwrap();
    assert_eq!(bytes[..2], [1, 2], "the input is copied in");
    let pattern = io.pattern.to_le_bytes();
    assert!(
        (2..64).any(|at| bytes[at] != pattern[at % 8]),
        "no marker past the input"
    );
    complete(&io, irp, STATUS_SUCCESS, 64, Via::IofCompleteRequest);
    assert_eq!(violations(&io), []);
}

/// Completes an IRP whose output was written whole but for `gap` marker bytes left at 40
/// (the driver "wrote" the marker elsewhere: what arbitrary data may hold by chance).
fn disclosed(out_len: usize, gap: usize) -> bool {
    let io = io();
    let (_request, irp) = send(&io, &[1, 2], out_len as u32);
    // SAFETY: the fake driver owns the IRP.
    let buffer = unsafe { io.irp_in_flight(irp) }
        .unwrap()
        .get(header::SYSTEM_BUFFER) as usize;
    let mut bytes = vec![0u8; out_len];
    let marker = io.machine.pool().read_bytes(buffer + 40, gap).unwrap();
    bytes[40..40 + gap].copy_from_slice(&marker);
    io.machine.pool().write_bytes(buffer, &bytes).unwrap();
    complete(&io, irp, STATUS_SUCCESS, out_len, Via::IofCompleteRequest);
    violations(&io).contains(&(0xC4, 0x5700_0004))
}

#[test]
fn four_unwritten_bytes_are_a_disclosure_in_a_reply_eight_in_bulk_output() {
    assert!(!disclosed(64, 3));
    assert!(disclosed(64, 4));
    assert!(disclosed(4096, 4), "4 KiB is still a reply");
    assert!(
        !disclosed(4097, 7),
        "bulk: chance matches of arbitrary data"
    );
    assert!(disclosed(4097, 8));
}

#[test]
fn a_handle_without_write_access_is_refused_before_any_irp() {
    let io = io();
    let handle = io.open(
        1,
        Access {
            read: true,
            write: false,
        },
    );
    assert_eq!(
        io.device_io_control(handle, IOCTL, &[0; 4], 4).err(),
        Some(STATUS_ACCESS_DENIED)
    );
    assert_eq!(io.outstanding(), 0);
}

/// A cancel routine as the WDK prescribes: release the cancel spin lock, complete cancelled.
unsafe extern "win64" fn cancel_routine(_device: *mut c_void, irp: *mut IRP) {
    let io = IO
        .with(|slot| slot.borrow().clone())
        .expect("a test's I/O manager");
    // SAFETY: IoCancelIrp hands the cancel routine the IRP whose routine it swapped out.
    let ptr = unsafe { io.irp_in_flight(irp as usize) }.unwrap();
    io.release_cancel_lock(ptr.get(header::CANCEL_IRQL));
    complete(
        &io,
        irp as usize,
        STATUS_CANCELLED,
        0,
        Via::IofCompleteRequest,
    );
}

/// A cancel routine that forgets to release the cancel spin lock.
unsafe extern "win64" fn cancel_routine_keeping_the_lock(_device: *mut c_void, irp: *mut IRP) {
    let io = IO
        .with(|slot| slot.borrow().clone())
        .expect("a test's I/O manager");
    complete(
        &io,
        irp as usize,
        STATUS_CANCELLED,
        0,
        Via::IofCompleteRequest,
    );
}

fn arm(io: &Io, irp: usize, routine: usize) {
    // SAFETY: the fake driver owns the IRP.
    let ptr = unsafe { io.irp_in_flight(irp) }.unwrap();
    ptr.cancel_routine()
        .store(routine as *mut c_void, std::sync::atomic::Ordering::Release);
}

#[test]
fn cancel_io_calls_the_cancel_routine_with_the_cancel_lock_held() {
    let io = io();
    let handle = io.open(1, Access::READ_WRITE);
    let first = io.device_io_control(handle, IOCTL, &[0; 4], 0).unwrap();
    arm(
        &io,
        DISPATCHED.with(|d| d.get()),
        cancel_routine as *const () as usize,
    );
    let second = io.device_io_control(handle, IOCTL, &[0; 4], 0).unwrap();
    let second_irp = DISPATCHED.with(|d| d.get());
    arm(&io, second_irp, cancel_routine as *const () as usize);
    // One request by its id: the other stays.
    assert_eq!(io.cancel_io(handle, Some(first.id)), 1);
    assert_eq!(first.outcome().map(|o| o.status), Some(STATUS_CANCELLED));
    assert!(second.outcome().is_none());
    // CancelIoEx(handle, NULL): the rest.
    assert_eq!(io.cancel_io(handle, None), 1);
    assert_eq!(second.outcome().map(|o| o.status), Some(STATUS_CANCELLED));
    assert_eq!(
        io.counters()
            .cancelled
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    assert!(violations(&io).is_empty(), "{:?}", violations(&io));
}

#[test]
fn a_cancel_routine_that_keeps_the_cancel_lock_is_reported() {
    let io = io();
    let (request, irp) = send(&io, &[0; 4], 0);
    arm(
        &io,
        irp,
        cancel_routine_keeping_the_lock as *const () as usize,
    );
    assert!(io.cancel_irp(irp), "the routine was called");
    assert_eq!(request.outcome().map(|o| o.status), Some(STATUS_CANCELLED));
    assert!(
        violations(&io).contains(&(0xC4, 0x5700_000A)),
        "{:?}",
        violations(&io)
    );
}

#[test]
fn an_irp_without_a_cancel_routine_only_gets_its_cancel_flag() {
    let io = io();
    let (request, irp) = send(&io, &[0; 4], 0);
    assert!(!io.cancel_irp(irp), "no routine to call");
    // SAFETY: the fake driver still owns the IRP.
    let ptr = unsafe { io.irp_in_flight(irp) }.unwrap();
    assert_eq!(
        ptr.cancel_flag().load(std::sync::atomic::Ordering::Acquire),
        1
    );
    assert!(request.outcome().is_none(), "nothing completes it");
    complete(&io, irp, STATUS_CANCELLED, 0, Via::IofCompleteRequest);
}

#[test]
fn a_new_device_instance_tells_old_handles_apart() {
    let io = io();
    let (_request, irp) = send(&io, &[0; 4], 0);
    // SAFETY: the fake driver owns the IRP.
    let ptr = unsafe { io.irp_in_flight(irp) }.unwrap();
    assert_eq!(io.sender_instance(&ptr), Some(0));
    io.add_device_instance();
    assert_eq!(io.device_instance(), 1);
    assert_eq!(
        io.sender_instance(&ptr),
        Some(0),
        "the handle keeps its instance"
    );
    complete(&io, irp, STATUS_SUCCESS, 0, Via::IofCompleteRequest);
}

#[test]
fn a_waiter_gets_its_outcome_whether_it_was_spinning_or_asleep_when_it_came() {
    use super::request::{Outcome, Request};
    use std::time::Duration;

    let outcome = Outcome {
        status: 0,
        information: 0,
        output: Vec::new(),
    };
    // Finished at once (the waiter is still spinning), after the spin (asleep: the finish must
    // notify), and before the wait begins.
    for delay in [Duration::ZERO, Duration::from_millis(20)] {
        let request = Request::new(1);
        let finisher = {
            let (request, outcome) = (request.clone(), outcome.clone());
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                request.finish(outcome);
            })
        };
        let waited = std::time::Instant::now();
        assert_eq!(
            request.wait(Duration::from_secs(10)),
            Some(outcome.clone()),
            "{delay:?}"
        );
        // Woken by the finish, not found at the end of the limit.
        assert!(
            waited.elapsed() < Duration::from_secs(5),
            "{delay:?}: not woken"
        );
        finisher.join().expect("the finisher ends");
    }
    let request = Request::new(2);
    request.finish(outcome.clone());
    assert_eq!(request.wait(Duration::ZERO), Some(outcome));
}
