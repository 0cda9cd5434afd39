//! The channel's behaviour on the host, through fake IRPs that check what Driver Verifier would.

extern crate std;

use std::sync::Arc;
use std::sync::atomic::Ordering::SeqCst;
use std::vec::Vec;

use revcall_protocol::{
    CURSOR_NOW, DiscoverReply, EventKind, EventRecord, FireReply, Reply, Request, StatsReply,
    WaitFlags, WaitReply, decode_reply,
};

use super::{Control, Lifecycle};
use crate::error::Status;
use crate::event_ring::RING_CAPACITY;
use crate::service_queue::PARK_CAP;
use crate::testing::{FakeIrp, FakePort, IrpCell, TestAdapter, adapter};

const OUT: usize = 64 + 32 * 15; // room for 16 events

fn send(a: &TestAdapter, t: &FakePort, id: usize, request: Request, out: usize) -> Arc<IrpCell> {
    let (irp, cell) = FakeIrp::new(id, request, out);
    a.process(irp, t);
    cell
}

fn wait(a: &TestAdapter, t: &FakePort, id: usize, cursor: u64) -> Arc<IrpCell> {
    send(
        a,
        t,
        id,
        Request::Wait {
            cursor,
            max_events: 16,
        },
        OUT,
    )
}

fn fire(a: &TestAdapter, t: &FakePort, code: u32) -> u64 {
    let cell = send(
        a,
        t,
        9000 + code as usize,
        Request::Fire {
            code,
            value: u64::from(code) * 2,
        },
        16,
    );
    let done = cell.completion().expect("FIRE completes at once");
    assert_eq!(done.status, Status::SUCCESS);
    match decode_reply(&done.bytes) {
        Ok(Reply::Fire(FireReply { seq })) => seq,
        other => panic!("not a FIRE reply: {other:?}"),
    }
}

/// The WAIT reply of a completed IRP.
fn events_of(cell: &IrpCell) -> (WaitReply, Vec<EventRecord>) {
    let done = cell.completion().expect("completed");
    assert_eq!(done.status, Status::SUCCESS);
    match decode_reply(&done.bytes) {
        Ok(Reply::Wait { reply, events }) => (reply, events.collect()),
        other => panic!("not a WAIT reply: {other:?}"),
    }
}

fn status_of(cell: &IrpCell) -> Status {
    let done = cell.completion().expect("completed");
    assert!(done.bytes.is_empty() || done.status == Status::SUCCESS);
    done.status
}

fn stats(a: &TestAdapter, t: &FakePort) -> StatsReply {
    let cell = send(a, t, 7777, Request::Stats, 128);
    match decode_reply(&cell.completion().unwrap().bytes) {
        Ok(Reply::Stats(s)) => s,
        other => panic!("not a STATS reply: {other:?}"),
    }
}

#[test]
fn started_adapter_has_published_its_start() {
    let (a, t) = (adapter(true), FakePort::new());
    assert_eq!(a.lifecycle(), Lifecycle::Running);
    let cell = wait(&a, &t, 1, 0);
    let (reply, events) = events_of(&cell);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, EventKind::AdapterStarted as u32);
    assert_eq!(
        (reply.cursor, reply.lost, reply.count, reply.flags),
        (1, 0, 1, 0)
    );
}

#[test]
fn park_then_fire_completes_the_waiter_with_that_event() {
    let (a, t) = (adapter(true), FakePort::new());
    let cell = wait(&a, &t, 1, CURSOR_NOW);
    assert_eq!(cell.completions(), 0, "parked");
    assert_eq!(stats(&a, &t).parked_now, 1);
    let seq = fire(&a, &t, 5);
    assert_eq!(seq, 2);
    let (reply, events) = events_of(&cell);
    assert_eq!(
        reply,
        WaitReply {
            cursor: 2,
            lost: 0,
            count: 1,
            flags: 0
        }
    );
    assert_eq!(
        events,
        [EventRecord {
            seq: 2,
            kind: EventKind::Injected as u32,
            reserved: 0,
            arg0: 5,
            arg1: 10
        }]
    );
    assert_eq!(stats(&a, &t).parked_now, 0);
}

#[test]
fn every_waiter_sees_every_event_broadcast() {
    let (a, t) = (adapter(true), FakePort::new());
    let cells: Vec<_> = (0..50).map(|id| wait(&a, &t, id, 1)).collect();
    fire(&a, &t, 1);
    for cell in &cells {
        let (reply, events) = events_of(cell);
        assert_eq!((reply.cursor, events[0].seq), (2, 2));
    }
}

#[test]
fn a_late_waiter_gets_a_batch_limited_by_max_events_and_buffer() {
    let (a, t) = (adapter(true), FakePort::new());
    for code in 0..10 {
        fire(&a, &t, code);
    }
    // 11 events retained (start + 10). max_events 4.
    let cell = send(
        &a,
        &t,
        1,
        Request::Wait {
            cursor: 0,
            max_events: 4,
        },
        OUT,
    );
    let (reply, events) = events_of(&cell);
    assert_eq!(
        events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    assert_eq!((reply.cursor, reply.flags), (4, WaitFlags::MORE));
    // A buffer with room for 2 events.
    let cell = send(
        &a,
        &t,
        2,
        Request::Wait {
            cursor: 4,
            max_events: 100,
        },
        64 + 32,
    );
    let (reply, events) = events_of(&cell);
    assert_eq!(events.len(), 2);
    assert_eq!(reply.cursor, 6);
    // Information covers exactly the reply: header 8 + body 24 + 2 events.
    assert_eq!(cell.completion().unwrap().bytes.len(), 96);
    // The rest arrive without loss.
    let (reply, events) = events_of(&wait(&a, &t, 3, 6));
    assert_eq!((reply.cursor, reply.flags, events.len()), (11, 0, 5));
}

#[test]
fn a_waiter_behind_the_ring_learns_how_many_it_lost() {
    let (a, t) = (adapter(true), FakePort::new());
    let n = RING_CAPACITY as u32 + 20;
    for code in 0..n {
        fire(&a, &t, code);
    }
    let head = u64::from(n) + 1;
    let (reply, events) = events_of(&wait(&a, &t, 1, 5));
    let oldest = head - RING_CAPACITY as u64 + 1;
    assert_eq!(reply.lost, oldest - 6);
    assert_eq!(events[0].seq, oldest);
    assert_eq!(stats(&a, &t).ring_overwrites, head - RING_CAPACITY as u64);
}

#[test]
fn cursor_ahead_of_head_is_invalid_and_cursor_now_parks() {
    let (a, t) = (adapter(true), FakePort::new());
    assert_eq!(status_of(&wait(&a, &t, 1, 99)), Status::INVALID_PARAMETER);
    let parked = wait(&a, &t, 2, CURSOR_NOW);
    assert_eq!(parked.completions(), 0);
}

#[test]
fn the_park_cap_refuses_with_quota_exceeded() {
    let (a, t) = (adapter(true), FakePort::new());
    let cells: Vec<_> = (0..PARK_CAP)
        .map(|id| wait(&a, &t, id, CURSOR_NOW))
        .collect();
    let over = wait(&a, &t, PARK_CAP, CURSOR_NOW);
    assert_eq!(status_of(&over), Status::QUOTA_EXCEEDED);
    let s = stats(&a, &t);
    assert_eq!(
        (s.parked_now, s.parked_peak, s.parked_cap),
        (PARK_CAP as u64, PARK_CAP as u64, PARK_CAP as u64)
    );
    // One event completes all of them, in batches, each exactly once.
    fire(&a, &t, 1);
    assert!(
        cells
            .iter()
            .all(|c| c.completions() == 1 && events_of(c).0.cursor == 2)
    );
    assert_eq!(stats(&a, &t).parked_now, 0);
}

#[test]
fn cancel_of_a_parked_wait_completes_it_cancelled() {
    let (a, t) = (adapter(true), FakePort::new());
    let keep = wait(&a, &t, 1, CURSOR_NOW);
    let cancelled = wait(&a, &t, 2, CURSOR_NOW);
    cancelled.io_cancel_irp(&*a);
    assert_eq!(status_of(&cancelled), Status::CANCELLED);
    assert!(cancelled.completion().unwrap().bytes.is_empty());
    assert_eq!(keep.completions(), 0);
    // A second IoCancelIrp finds no routine: nothing happens.
    cancelled.io_cancel_irp(&*a);
    assert_eq!(cancelled.completions(), 1);
    let s = stats(&a, &t);
    assert_eq!((s.parked_now, s.cancelled), (1, 1));
    fire(&a, &t, 1);
    assert_eq!(keep.completions(), 1);
}

#[test]
fn cancel_after_completion_is_a_no_op() {
    let (a, t) = (adapter(true), FakePort::new());
    let cell = wait(&a, &t, 1, CURSOR_NOW);
    fire(&a, &t, 1);
    cell.io_cancel_irp(&*a);
    assert_eq!((cell.completions(), status_of(&cell)), (1, Status::SUCCESS));
}

#[test]
fn removal_completes_every_parked_wait_with_the_final_event() {
    let (a, t) = (adapter(true), FakePort::new());
    let cells: Vec<_> = (0..40).map(|id| wait(&a, &t, id, CURSOR_NOW)).collect();
    a.remove(&t);
    assert_eq!(a.lifecycle(), Lifecycle::Removed);
    for cell in &cells {
        let (reply, events) = events_of(cell);
        assert_eq!(reply.flags, WaitFlags::FINAL);
        assert_eq!(
            events.last().unwrap().kind,
            EventKind::AdapterRemoved as u32
        );
    }
    // Requests after removal: retained events are still delivered, flagged FINAL; an
    // up-to-date cursor is refused at once.
    assert_eq!(
        status_of(&wait(&a, &t, 100, CURSOR_NOW)),
        Status::DEVICE_REMOVED
    );
    assert_eq!(status_of(&wait(&a, &t, 101, 2)), Status::DEVICE_REMOVED);
    let (reply, events) = events_of(&wait(&a, &t, 102, 0));
    assert_eq!(
        (reply.flags, reply.cursor, events.len()),
        (WaitFlags::FINAL, 2, 2)
    );
    let fire = send(&a, &t, 102, Request::Fire { code: 1, value: 1 }, 16);
    assert_eq!(status_of(&fire), Status::DEVICE_REMOVED);
    let s = stats(&a, &t);
    assert_eq!((s.parked_now, s.closed), (0, 1));
}

#[test]
fn surprise_removal_flushes_and_a_later_remove_adds_nothing() {
    let (a, t) = (adapter(true), FakePort::new());
    let cell = wait(&a, &t, 1, CURSOR_NOW);
    a.surprise_remove(&t);
    let (reply, events) = events_of(&cell);
    assert_eq!(reply.flags, WaitFlags::FINAL);
    assert_eq!(events[0].kind, EventKind::SurpriseRemoved as u32);
    a.remove(&t);
    assert_eq!(a.lifecycle(), Lifecycle::SurpriseRemoved);
    assert_eq!(
        stats(&a, &t).head_seq,
        2,
        "no AdapterRemoved after SurpriseRemoved"
    );
}

#[test]
fn stop_and_restart_keep_parked_waits_and_publish_events() {
    let (a, t) = (adapter(true), FakePort::new());
    let first = wait(&a, &t, 1, CURSOR_NOW);
    assert!(a.request_control(Control::Stop));
    a.apply_controls(&t);
    assert_eq!(a.lifecycle(), Lifecycle::Stopped);
    assert_eq!(
        events_of(&first).1[0].kind,
        EventKind::AdapterStopped as u32
    );
    let second = wait(&a, &t, 2, CURSOR_NOW);
    assert!(a.request_control(Control::Restart));
    a.apply_controls(&t);
    assert_eq!(
        events_of(&second).1[0].kind,
        EventKind::AdapterRestarted as u32
    );
    assert_eq!(a.lifecycle(), Lifecycle::Running);
}

#[test]
fn discover_completes_later_through_the_timer_and_coalesces() {
    let (a, t) = (adapter(true), FakePort::new());
    let waiter = wait(&a, &t, 1, CURSOR_NOW);
    let d1 = send(&a, &t, 2, Request::Discover { delay_ms: 250 }, 24);
    let d2 = send(&a, &t, 3, Request::Discover { delay_ms: 10 }, 24);
    let reply = |c: &IrpCell| match decode_reply(&c.completion().unwrap().bytes) {
        Ok(Reply::Discover(r)) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        reply(&d1),
        DiscoverReply {
            id: 1,
            coalesced: 0,
            reserved: 0
        }
    );
    assert_eq!(
        reply(&d2),
        DiscoverReply {
            id: 1,
            coalesced: 1,
            reserved: 0
        }
    );
    assert_eq!(*t.armed.lock().unwrap(), Some(250_000));
    assert_eq!(
        waiter.completions(),
        0,
        "nothing yet: the timer has not fired"
    );
    assert!(a.timer_fired());
    assert_eq!(
        waiter.completions(),
        0,
        "the timer only publishes; the DPC delivers"
    );
    a.deliver();
    let (_, events) = events_of(&waiter);
    assert_eq!(
        (events[0].kind, events[0].arg0, events[0].arg1),
        (EventKind::DiscoveryComplete as u32, 1, 2)
    );
    // A stray timer call with nothing pending publishes nothing.
    assert!(!a.timer_fired());
    let s = stats(&a, &t);
    assert_eq!(
        (s.discoveries_started, s.discoveries_completed, s.head_seq),
        (1, 1, 2)
    );
}

#[test]
fn removal_cancels_a_pending_discovery() {
    let (a, t) = (adapter(true), FakePort::new());
    send(&a, &t, 1, Request::Discover { delay_ms: 5 }, 24);
    a.remove(&t);
    assert_eq!(*t.armed.lock().unwrap(), None);
    assert!(!a.timer_fired());
    assert_eq!(stats(&a, &t).discoveries_completed, 0);
    let late = send(&a, &t, 2, Request::Discover { delay_ms: 5 }, 24);
    assert_eq!(status_of(&late), Status::DEVICE_REMOVED);
    assert_eq!(t.arms.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[test]
fn fire_can_be_disabled_by_configuration() {
    let (a, t) = (adapter(false), FakePort::new());
    let cell = send(&a, &t, 1, Request::Fire { code: 1, value: 1 }, 16);
    assert_eq!(status_of(&cell), Status::NOT_SUPPORTED);
    assert_eq!(stats(&a, &t).events_injected, 0);
}

#[test]
fn malformed_requests_get_their_documented_status_and_no_bytes() {
    let (a, t) = (adapter(true), FakePort::new());
    let mut wait_bytes = [0u8; 24];
    let n = revcall_protocol::encode_request(
        &Request::Wait {
            cursor: 0,
            max_events: 1,
        },
        &mut wait_bytes,
    )
    .unwrap();
    assert_eq!(n, 24);
    let cases: Vec<(Option<Vec<u8>>, Option<usize>, Status)> = std::vec![
        (None, None, Status::INVALID_PARAMETER),
        (Some(Vec::new()), Some(64), Status::INVALID_PARAMETER),
        (
            Some(wait_bytes[..23].to_vec()),
            Some(64),
            Status::INVALID_PARAMETER
        ),
        (
            Some(wait_bytes.to_vec()),
            Some(63),
            Status::BUFFER_TOO_SMALL
        ),
        (Some(wait_bytes.to_vec()), Some(0), Status::BUFFER_TOO_SMALL),
        (Some(wait_bytes.to_vec()), None, Status::BUFFER_TOO_SMALL),
        (
            {
                let mut b = wait_bytes.to_vec();
                b[4] = 7;
                Some(b)
            },
            Some(64),
            Status::REVISION_MISMATCH
        ),
        (
            {
                let mut b = wait_bytes.to_vec();
                b[6] = 42;
                Some(b)
            },
            Some(64),
            Status::INVALID_DEVICE_REQUEST
        ),
        (
            {
                let mut b = wait_bytes.to_vec();
                b[20] = 1;
                Some(b)
            },
            Some(64),
            Status::INVALID_PARAMETER
        ),
    ];
    for (i, (input, out, expected)) in cases.into_iter().enumerate() {
        let (irp, cell) = FakeIrp::raw(i, input, out);
        a.process(irp, &t);
        let done = cell.completion().unwrap();
        assert_eq!((i, done.status), (i, expected));
        assert!(done.bytes.is_empty(), "case {i}: error carries no bytes");
    }
    let (irp, cell) = FakeIrp::new(99, Request::Stats, 128);
    a.process(irp.with_control_code(0x0004_D008), &t);
    assert_eq!(status_of(&cell), Status::INVALID_DEVICE_REQUEST);
    assert_eq!(stats(&a, &t).rejected, 10);
}

#[test]
fn every_request_size_around_each_record_is_answered() {
    let (a, t) = (adapter(true), FakePort::new());
    for request in [
        Request::Wait {
            cursor: 0,
            max_events: 1,
        },
        Request::Fire { code: 1, value: 2 },
        Request::Discover { delay_ms: 1 },
        Request::Stats,
    ] {
        let mut valid = [0u8; 64];
        let n = revcall_protocol::encode_request(&request, &mut valid).unwrap();
        let min_out = request.opcode().min_reply_size();
        for len in 0..=n + 8 {
            for out in [0, min_out - 1, min_out, 4096] {
                let mut input = valid[..len.min(64)].to_vec();
                input.resize(len, 0);
                let (irp, cell) = FakeIrp::raw(len, Some(input), Some(out));
                a.process(irp, &t);
                let done = cell.completion().expect("answered at once");
                let ok = len == n && out >= min_out;
                assert_eq!(
                    done.status == Status::SUCCESS,
                    ok,
                    "{request:?} len {len} out {out}: {done:?}"
                );
                if ok {
                    assert!(decode_reply(&done.bytes).is_ok());
                }
            }
        }
    }
    // Every one of those IRPs completed at once: nothing is parked.
    assert_eq!(stats(&a, &t).parked_now, 0);
}

#[test]
fn stats_count_every_completion_path() {
    let (a, t) = (adapter(true), FakePort::new());
    let parked = wait(&a, &t, 1, CURSOR_NOW);
    let cancelled = wait(&a, &t, 2, CURSOR_NOW);
    cancelled.io_cancel_irp(&*a);
    fire(&a, &t, 1);
    let s = stats(&a, &t);
    assert_eq!(parked.completions(), 1);
    // parked (1) + cancelled (1) + fire (1); this STATS not yet counted.
    assert_eq!(
        (s.completed, s.cancelled, s.rejected, s.events_injected),
        (3, 1, 0, 1)
    );
    assert_eq!((s.head_seq, s.oldest_seq, s.events_published), (2, 1, 2));
}

#[test]
fn a_pnp_stop_does_not_wedge_a_pending_discovery() {
    let (a, t) = (adapter(true), FakePort::new());
    send(&a, &t, 1, Request::Discover { delay_ms: 60_000 }, 24);
    // Storport cancels its timer on a PnP stop; HwInitialize on the next start re-arms it.
    a.request_control(Control::Stop);
    a.apply_controls(&t);
    *t.armed.lock().unwrap() = None;
    a.start(&t);
    assert_eq!(*t.armed.lock().unwrap(), Some(60_000_000));
    assert!(a.timer_fired());
    let s = stats(&a, &t);
    assert_eq!((s.discoveries_started, s.discoveries_completed), (1, 1));
    // A new DISCOVER starts a new discovery rather than joining a dead one.
    let d = send(&a, &t, 2, Request::Discover { delay_ms: 1 }, 24);
    assert!(matches!(
        decode_reply(&d.completion().unwrap().bytes),
        Ok(Reply::Discover(DiscoverReply {
            id: 2,
            coalesced: 0,
            ..
        }))
    ));
}

#[test]
fn a_closed_adapter_still_delivers_its_retained_tail() {
    let (a, t) = (adapter(true), FakePort::new());
    // A waiter that takes one event at a time falls behind at removal.
    let cell = send(
        &a,
        &t,
        1,
        Request::Wait {
            cursor: 1,
            max_events: 1,
        },
        OUT,
    );
    fire(&a, &t, 7);
    assert_eq!(events_of(&cell).0.cursor, 2);
    a.remove(&t);
    // Re-armed with its cursor, it gets the final event, then the refusal.
    let tail = send(
        &a,
        &t,
        2,
        Request::Wait {
            cursor: 2,
            max_events: 1,
        },
        OUT,
    );
    let (reply, events) = events_of(&tail);
    assert_eq!(
        (reply.flags, events[0].kind),
        (WaitFlags::FINAL, EventKind::AdapterRemoved as u32)
    );
    assert_eq!(
        status_of(&wait(&a, &t, 3, reply.cursor)),
        Status::DEVICE_REMOVED
    );
}

#[test]
fn stop_and_restart_take_no_lock_and_apply_in_order_in_the_dpc() {
    let (a, t) = (adapter(true), FakePort::new());
    send(&a, &t, 1, Request::Discover { delay_ms: 5 }, 24);
    let waiter = wait(&a, &t, 2, CURSOR_NOW);
    // What HwAdapterControl does at DIRQL: record only. Nothing changes until the DPC.
    assert!(a.request_control(Control::Stop));
    assert!(a.request_control(Control::Restart));
    assert_eq!(a.lifecycle(), Lifecycle::Running);
    assert!(waiter.completion().is_none(), "nothing delivered at DIRQL");
    let arms = t.arms.load(SeqCst);
    a.apply_controls(&t);
    let kinds: Vec<u32> = events_of(&waiter).1.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventKind::AdapterStopped as u32]);
    let next = wait(&a, &t, 3, events_of(&waiter).0.cursor);
    assert_eq!(
        events_of(&next).1[0].kind,
        EventKind::AdapterRestarted as u32
    );
    assert_eq!(a.lifecycle(), Lifecycle::Running);
    assert_eq!(
        t.arms.load(SeqCst),
        arms + 1,
        "the restart re-armed the discovery"
    );
    // Nothing left over: applying again changes nothing.
    a.apply_controls(&t);
    assert_eq!(a.stats().head_seq, events_of(&next).1[0].seq);
}

#[test]
fn the_control_mailbox_holds_eight_and_refuses_a_ninth() {
    let a = adapter(true);
    for _ in 0..8 {
        assert!(a.request_control(Control::Stop));
    }
    assert!(!a.request_control(Control::Restart));
}

#[test]
fn a_wait_cancelled_before_it_could_park_completes_cancelled() {
    let (a, t) = (adapter(true), FakePort::new());
    let (irp, cell) = FakeIrp::new(
        1,
        Request::Wait {
            cursor: CURSOR_NOW,
            max_events: 4,
        },
        160,
    );
    // CancelIoEx ran before HwProcessServiceRequest: Irp->Cancel set, no routine to call yet.
    cell.io_cancel_irp(&*a);
    a.process(irp, &t);
    let completion = cell.completion().expect("completed at once, never parked");
    assert_eq!(completion.status, Status::CANCELLED);
    assert!(
        completion.bytes.is_empty(),
        "a cancelled WAIT carries no reply"
    );
    assert_eq!(cell.completions(), 1);
    let s = a.stats();
    assert_eq!((s.parked_now, s.cancelled), (0, 1));
}
