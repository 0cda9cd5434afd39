//! revcall.sys itself (the bytes that would be installed on Windows) under storsim, with every
//! verifier check on: each channel behaviour, end to end through the emulated I/O manager and
//! Storport. Every test ends with a clean verifier summary and no IRP left behind.

mod common;

use std::time::Duration;

use common::{finish, start_with};
use revcall_protocol::status::*;
use revcall_protocol::{CURSOR_NOW, EventKind, WaitFlags};
use revcall_sim::client::{Channel, Delivery, PROMPT};
use storsim::harness::Harness;
use storsim::io::{Access, Outcome};
use storsim::machine::Config;

fn start() -> Harness {
    start_with(Config {
        delay_probability: 0.05,
        ..Config::default()
    })
}

fn delivery(channel: &Channel, outcome: Option<Outcome>) -> Delivery {
    let outcome = outcome.expect("the WAIT completes");
    channel
        .delivery(&outcome)
        .unwrap_or_else(|status| panic!("WAIT failed with {status:#x}"))
}

fn settle() {
    std::thread::sleep(Duration::from_millis(5));
}

#[test]
fn a_parked_wait_completes_when_an_event_fires() {
    let harness = start();
    let channel = Channel::open(&harness.kernel, 1);
    let waiting = channel.wait(CURSOR_NOW, 4);
    settle();
    assert_eq!(waiting.outcome(), None, "parked, not completed");
    let seq = channel.fire(7, 42).expect("FIRE succeeds");
    let got = delivery(&channel, waiting.wait(PROMPT));
    assert_eq!(got.events.len(), 1);
    assert_eq!(got.events[0].seq, seq);
    assert_eq!(got.events[0].kind, EventKind::Injected as u32);
    assert_eq!((got.events[0].arg0, got.events[0].arg1), (7, 42));
    assert_eq!(got.reply.cursor, seq);
    assert_eq!(got.reply.lost, 0);
    finish(harness);
}

#[test]
fn every_handle_sees_every_event() {
    let harness = start();
    let channels: Vec<_> = (0..5)
        .map(|i| Channel::open(&harness.kernel, 10 + i))
        .collect();
    let waits: Vec<_> = channels.iter().map(|c| c.wait(CURSOR_NOW, 4)).collect();
    settle();
    let seq = channels[0].fire(1, 1).expect("FIRE");
    for (channel, wait) in channels.iter().zip(&waits) {
        let got = delivery(channel, wait.wait(PROMPT));
        assert_eq!(
            got.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![seq]
        );
    }
    finish(harness);
}

#[test]
fn a_backlog_arrives_in_batches_with_more_set() {
    let harness = start();
    let channel = Channel::open(&harness.kernel, 1);
    let fired: Vec<u64> = (0..10).map(|i| channel.fire(1, i).expect("FIRE")).collect();
    let first = fired[0];
    let cursor = first - 1;
    let got = delivery(&channel, channel.wait(cursor, 4).wait(PROMPT));
    assert_eq!(
        got.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (first..first + 4).collect::<Vec<_>>()
    );
    assert_ne!(
        got.reply.flags & WaitFlags::MORE,
        0,
        "more retained events follow"
    );
    let rest = delivery(&channel, channel.wait(got.reply.cursor, 16).wait(PROMPT));
    assert_eq!(rest.events.len(), 6);
    assert_eq!(rest.reply.flags & WaitFlags::MORE, 0);
    assert_eq!(rest.reply.cursor, first + 9);
    finish(harness);
}

#[test]
fn a_cursor_behind_the_ring_learns_exactly_how_many_it_lost() {
    let harness = start_with(Config {
        delay_probability: 0.0,
        ..Config::default()
    });
    let channel = Channel::open(&harness.kernel, 1);
    let before = channel.fire(0, 0).expect("FIRE");
    for i in 0..300 {
        channel.fire(1, i).expect("FIRE");
    }
    let head = before + 300;
    let got = delivery(&channel, channel.wait(before, 8).wait(PROMPT));
    let first = got.events[0].seq;
    assert_eq!(first, head - 255, "the ring keeps the newest 256 events");
    assert_eq!(
        got.reply.lost,
        first - before - 1,
        "every missed event is counted"
    );
    finish(harness);
}

#[test]
fn the_parked_request_cap_is_enforced_with_quota_exceeded() {
    let harness = start_with(Config {
        delay_probability: 0.0,
        ..Config::default()
    });
    let channel = Channel::open(&harness.kernel, 1);
    let parked: Vec<_> = (0..1024).map(|_| channel.wait(CURSOR_NOW, 1)).collect();
    let over = channel
        .wait(CURSOR_NOW, 1)
        .wait(PROMPT)
        .expect("refused at once");
    assert_eq!(over.status, STATUS_QUOTA_EXCEEDED);
    assert!(parked.iter().all(|p| p.outcome().is_none()));
    channel.fire(1, 1).expect("FIRE");
    for wait in &parked {
        assert_eq!(wait.wait(PROMPT).expect("completed").status, STATUS_SUCCESS);
    }
    finish(harness);
}

#[test]
fn cancel_completes_one_parked_wait_with_status_cancelled() {
    let harness = start();
    let channel = Channel::open(&harness.kernel, 1);
    let keep = channel.wait(CURSOR_NOW, 1);
    let doomed = channel.wait(CURSOR_NOW, 1);
    settle();
    assert_eq!(channel.cancel(&doomed), 1);
    assert_eq!(
        doomed.wait(PROMPT).expect("cancelled").status,
        STATUS_CANCELLED
    );
    assert_eq!(keep.outcome(), None, "the other waiter stays parked");
    channel.fire(1, 1).expect("FIRE");
    assert_eq!(keep.wait(PROMPT).expect("delivered").status, STATUS_SUCCESS);
    finish(harness);
}

#[test]
fn closing_a_handle_leaves_its_parked_waits_to_complete_later() {
    let harness = start();
    let kernel = harness.kernel.clone();
    let channel = Channel::open(&kernel, 1);
    let waiting = channel.wait(CURSOR_NOW, 1);
    settle();
    channel.close();
    settle();
    assert_eq!(
        waiting.outcome(),
        None,
        "no cleanup reaches a Storport miniport"
    );
    Channel::open(&kernel, 2).fire(1, 1).expect("FIRE");
    assert_eq!(
        waiting.wait(PROMPT).expect("delivered").status,
        STATUS_SUCCESS
    );
    finish(harness);
}

#[test]
fn process_exit_cancels_every_parked_wait_of_that_process() {
    let harness = start();
    let kernel = harness.kernel.clone();
    let mine = Channel::open(&kernel, 7);
    let other = Channel::open(&kernel, 8);
    let doomed: Vec<_> = (0..8).map(|_| mine.wait(CURSOR_NOW, 1)).collect();
    let survivor = other.wait(CURSOR_NOW, 1);
    settle();
    kernel.exit_process(7);
    for wait in &doomed {
        assert_eq!(
            wait.outcome()
                .expect("completed before exit returns")
                .status,
            STATUS_CANCELLED
        );
    }
    assert_eq!(survivor.outcome(), None);
    assert_eq!(kernel.io().open_handles(), 1);
    finish(harness);
}

#[test]
fn removal_completes_parked_waits_and_refuses_later_requests() {
    let harness = start();
    let kernel = harness.kernel.clone();
    let channel = Channel::open(&kernel, 1);
    let parked: Vec<_> = (0..4).map(|_| channel.wait(CURSOR_NOW, 4)).collect();
    settle();
    let late = std::cell::RefCell::new(None);
    kernel.remove_adapter(|| *late.borrow_mut() = Some(channel.wait(CURSOR_NOW, 4)));
    for wait in &parked {
        let outcome = wait
            .wait(PROMPT)
            .expect("completed by HwCompleteServiceIrp");
        let finished = outcome.status == STATUS_DEVICE_REMOVED
            || channel
                .delivery(&outcome)
                .is_ok_and(|d| d.reply.flags & WaitFlags::FINAL != 0);
        assert!(finished, "{outcome:?}");
    }
    let late = late
        .into_inner()
        .expect("sent")
        .wait(PROMPT)
        .expect("answered at once");
    assert!(
        late.status == STATUS_DEVICE_REMOVED || late.status == STATUS_SUCCESS,
        "{late:?}"
    );
    let after = channel
        .wait(CURSOR_NOW, 4)
        .wait(PROMPT)
        .expect("answered by Storport");
    assert_eq!(after.status, STATUS_DELETE_PENDING);
    finish(harness);
}

#[test]
fn surprise_removal_flushes_parked_waits() {
    let harness = start();
    let kernel = harness.kernel.clone();
    let channel = Channel::open(&kernel, 1);
    let parked: Vec<_> = (0..4).map(|_| channel.wait(CURSOR_NOW, 4)).collect();
    settle();
    kernel.surprise_remove_adapter();
    for wait in &parked {
        assert!(
            wait.outcome().is_some(),
            "completed before the rundown wait returned"
        );
    }
    kernel.remove_adapter(|| {});
    finish(harness);
}

#[test]
fn discover_completes_later_through_the_timer() {
    let harness = start();
    let channel = Channel::open(&harness.kernel, 1);
    let waiting = channel.wait(CURSOR_NOW, 4);
    settle();
    let reply = channel.discover(10).expect("DISCOVER accepted");
    let got = delivery(&channel, waiting.wait(PROMPT));
    assert!(
        got.events
            .iter()
            .any(|e| e.kind == EventKind::DiscoveryComplete as u32 && e.arg0 == reply.id)
    );
    assert!(harness.kernel.port().timer_calls() >= 1);
    finish(harness);
}

#[test]
fn fire_can_be_disabled_by_the_registry() {
    let harness = start_with(Config {
        registry: [("EnableFireInjection".to_owned(), 0)].into(),
        ..Config::default()
    });
    let channel = Channel::open(&harness.kernel, 1);
    assert_eq!(channel.fire(1, 1), Err(STATUS_NOT_SUPPORTED));
    finish(harness);
}

#[test]
fn a_handle_without_write_access_is_refused_before_the_driver() {
    let harness = start();
    let kernel = harness.kernel.clone();
    let handle = kernel.open(
        1,
        Access {
            read: true,
            write: false,
        },
    );
    let result = kernel.device_io_control(
        handle,
        revcall_protocol::IOCTL_MINIPORT_PROCESS_SERVICE_IRP,
        &[0; 32],
        64,
    );
    assert_eq!(result.err(), Some(0xC000_0022));
    finish(harness);
}

/// Follows one waiter (re-arming with its cursor) until `done` holds for an event it received.
fn follow(
    channel: &Channel,
    first: std::sync::Arc<storsim::io::Request>,
    done: impl Fn(&revcall_protocol::EventRecord) -> bool,
) -> Vec<revcall_protocol::EventRecord> {
    let mut seen = Vec::new();
    let mut request = first;
    loop {
        let got = delivery(channel, request.wait(PROMPT));
        assert_eq!(got.reply.lost, 0);
        seen.extend(got.events.iter().copied());
        if seen.iter().any(&done) {
            return seen;
        }
        request = channel.wait(got.reply.cursor, 8);
    }
}

#[test]
fn parked_waits_survive_a_pnp_stop_and_start() {
    let harness = start();
    let kernel = harness.kernel.clone();
    let channel = Channel::open(&kernel, 1);
    let parked: Vec<_> = (0..3).map(|_| channel.wait(CURSOR_NOW, 8)).collect();
    settle();
    kernel.stop_adapter();
    kernel
        .start_adapter()
        .expect("restarts with the kept extension");
    settle();
    let seq = channel.fire(5, 5).expect("FIRE after restart");
    for wait in parked {
        // Not flushed with an error: the waiters hear the lifecycle, then the new event.
        let seen = follow(&channel, wait, |e| e.seq == seq);
        assert!(
            seen.iter()
                .any(|e| e.kind == EventKind::AdapterStopped as u32),
            "{seen:?}"
        );
        assert!(
            seen.windows(2).all(|w| w[1].seq == w[0].seq + 1),
            "no gaps: {seen:?}"
        );
    }
    finish(harness);
}

#[test]
fn a_discovery_pending_across_a_power_cycle_still_completes() {
    let harness = start();
    let kernel = harness.kernel.clone();
    let channel = Channel::open(&kernel, 1);
    let waiting = channel.wait(CURSOR_NOW, 8);
    settle();
    let reply = channel.discover(30).expect("DISCOVER");
    kernel.power_cycle_adapter();
    let seen = follow(&channel, waiting, |e| {
        e.kind == EventKind::DiscoveryComplete as u32 && e.arg0 == reply.id
    });
    assert!(
        seen.iter()
            .any(|e| e.kind == EventKind::AdapterRestarted as u32),
        "{seen:?}"
    );
    finish(harness);
}

#[test]
fn four_cpus_wait_fire_and_cancel_at_once_without_losing_anything() {
    let harness = start_with(Config {
        delay_probability: 0.1,
        seed: 7,
        ..Config::default()
    });
    let kernel = harness.kernel.clone();
    std::thread::scope(|scope| {
        for cpu in 0..4u32 {
            let kernel = kernel.clone();
            scope.spawn(move || {
                storsim::cpu::enter_thread();
                let channel = Channel::open(&kernel, 100 + cpu);
                let mut cursor = CURSOR_NOW;
                let mut last: Option<u64> = None;
                for round in 0..150u64 {
                    let waiting = channel.wait(cursor, 8);
                    channel.fire(cpu, round).expect("FIRE");
                    let got = delivery(&channel, waiting.wait(PROMPT));
                    let mut expected = last.map(|l| l + 1 + got.reply.lost);
                    for event in &got.events {
                        assert!(
                            expected.is_none_or(|e| event.seq == e),
                            "cpu {cpu}: seq {} after {last:?}",
                            event.seq
                        );
                        expected = Some(event.seq + 1);
                        last = Some(event.seq);
                    }
                    cursor = got.reply.cursor;
                    if round % 10 == 0 {
                        let doomed = channel.wait(CURSOR_NOW, 1);
                        channel.cancel(&doomed);
                        let status = doomed.wait(PROMPT).expect("completed").status;
                        // Cancelled, or an event beat the cancel to it.
                        assert!(
                            status == STATUS_CANCELLED || status == STATUS_SUCCESS,
                            "{status:#x}"
                        );
                    }
                }
                channel.close();
            });
        }
    });
    finish(harness);
}

#[test]
fn a_new_adapter_after_removal_starts_fresh_and_works() {
    let harness = start();
    let kernel = harness.kernel.clone();
    for cycle in 0..3 {
        let channel = Channel::open(&kernel, 1);
        let parked = channel.wait(CURSOR_NOW, 4);
        settle();
        let seq = channel.fire(9, cycle).expect("FIRE");
        let got = delivery(&channel, parked.wait(PROMPT));
        assert_eq!(got.events.last().map(|e| e.seq), Some(seq), "cycle {cycle}");
        let left = channel.wait(CURSOR_NOW, 4);
        settle();
        if cycle % 2 == 0 {
            kernel.remove_adapter(|| {});
        } else {
            kernel.surprise_remove_adapter();
            kernel.remove_adapter(|| {});
        }
        assert!(
            left.outcome().is_some(),
            "cycle {cycle}: removal completed the parked WAIT"
        );
        channel.close();
        kernel.add_adapter().expect("the driver stays loaded");
        kernel.start_adapter().expect("a fresh adapter starts");
        let stats = Channel::open(&kernel, 2).stats().expect("STATS");
        assert_eq!(
            stats.parked_now, 0,
            "a fresh extension holds nothing from the last adapter"
        );
    }
    finish(harness);
}

#[test]
fn a_handle_to_a_removed_adapter_stays_dead_and_a_new_one_waits_for_the_start() {
    let harness = start();
    let kernel = harness.kernel.clone();
    let old = Channel::open(&kernel, 1);
    old.fire(1, 1).expect("FIRE on the first adapter");
    kernel.remove_adapter(|| {});
    kernel.add_adapter().expect("the driver stays loaded");
    // Added, not started: its FDO refuses until START_DEVICE completes.
    let early = Channel::open(&kernel, 2);
    let refused = early
        .send(&revcall_protocol::Request::Stats, 256)
        .wait(PROMPT);
    assert_eq!(refused.map(|o| o.status), Some(STATUS_DELETE_PENDING));
    kernel.start_adapter().expect("a fresh adapter starts");
    // The handle of the removed adapter reaches its deleted FDO, never the new adapter.
    let stale = old
        .send(&revcall_protocol::Request::Stats, 256)
        .wait(PROMPT);
    assert_eq!(stale.map(|o| o.status), Some(STATUS_DELETE_PENDING));
    let fresh = Channel::open(&kernel, 3);
    assert_eq!(fresh.stats().expect("STATS on a new handle").parked_now, 0);
    for channel in [old, early, fresh] {
        channel.close();
    }
    finish(harness);
}

/// Windows lets another thread cancel an IRP at any point after it exists, including while
/// HwProcessServiceRequest is deciding whether to park it. Here a second CPU cancels the
/// handle's requests over and over while the first sends WAITs: every WAIT still ends exactly
/// once, either cancelled with nothing or delivered with a real reply — and the window was hit.
#[test]
fn a_cancel_from_another_cpu_during_dispatch_never_loses_or_empties_a_wait() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let harness = start_with(Config {
        delay_probability: 0.3,
        seed: 11,
        ..Config::default()
    });
    let kernel = harness.kernel.clone();
    let channel = Channel::open(&kernel, 1);
    let stop = AtomicBool::new(false);
    let waits = std::thread::scope(|scope| {
        scope.spawn(|| {
            storsim::cpu::enter_thread();
            while !stop.load(Ordering::Acquire) {
                kernel.cancel_io(channel.handle, None);
                std::thread::yield_now();
            }
        });
        let mut waits = Vec::new();
        for round in 0..1500u64 {
            waits.push(channel.wait(CURSOR_NOW, 4));
            if round % 25 == 0 {
                let _ = channel.fire(3, round);
            }
        }
        stop.store(true, Ordering::Release);
        waits
    });
    kernel.cancel_io(channel.handle, None);
    kernel.io().await_cancellations();
    let (mut delivered, mut cancelled) = (0, 0);
    for waiting in &waits {
        let outcome = waiting.wait(PROMPT).expect("every WAIT ends");
        assert_eq!(
            waiting.completions(),
            1,
            "WAIT #{} completed twice",
            waiting.id
        );
        match outcome.status {
            STATUS_SUCCESS => {
                let got = channel.delivery(&outcome).unwrap_or_else(|status| {
                    panic!("a successful WAIT without a reply ({status:#x})")
                });
                assert!(!got.events.is_empty(), "a successful WAIT with no event");
                delivered += 1;
            }
            STATUS_CANCELLED => {
                assert_eq!(outcome.information, 0, "a cancelled WAIT carries nothing");
                cancelled += 1;
            }
            other => panic!("WAIT #{} ended with {other:#x}", waiting.id),
        }
    }
    let during = kernel
        .io()
        .counters()
        .cancels_during_dispatch
        .load(Ordering::Relaxed);
    assert!(
        during > 0,
        "no cancel ever reached an IRP inside its dispatch routine ({delivered} delivered, {cancelled} cancelled)"
    );
    channel.close();
    finish(harness);
}
