//! Loom model of the channel's races: park vs cancel vs fire vs remove on several CPUs.
//!
//! Runs the real `Adapter` and `ServiceQueue` code with loom's mutex standing in for the spin
//! lock and loom's atomics for `Irp->CancelRoutine` / `Irp->Cancel`, and explores every
//! interleaving (bounded preemptions). In each, every IRP must complete exactly once (the fake
//! IRP asserts no double completion and no completion with a cancel routine set), with a
//! status its path allows, and nothing may stay parked after removal.
//!
//! `RUSTFLAGS="--cfg loom" cargo test -p revcall --release --lib model` (or `cargo xtask test`).

extern crate std;

use loom::sync::Arc;
use loom::thread;
use revcall_protocol::{CURSOR_NOW, Reply, Request, decode_reply};

use crate::error::Status;
use crate::testing::{FakeIrp, FakePort, IrpCell, TestAdapter, adapter};

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(5);
    let f = std::sync::Arc::new(f);
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = runs.clone();
    builder.check(move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let f = f.clone();
        // The adapter state (~40 KiB) is built on the stack before it is boxed: give the
        // scenario a thread with room for it.
        let scenario = thread::Builder::new()
            .stack_size(4 << 20)
            .spawn(move || f())
            .unwrap();
        scenario.join().unwrap();
    });
    let runs = runs.load(std::sync::atomic::Ordering::Relaxed);
    std::eprintln!("loom explored {runs} interleavings");
    assert!(runs > 1, "the model explored no interleaving");
}

fn wait_irp(id: usize) -> (FakeIrp, Arc<IrpCell>) {
    FakeIrp::new(
        id,
        Request::Wait {
            cursor: CURSOR_NOW,
            max_events: 4,
        },
        64 + 32 * 3,
    )
}

fn fire(a: &TestAdapter, t: &FakePort, id: usize) {
    let (irp, cell) = FakeIrp::new(id, Request::Fire { code: 1, value: 2 }, 16);
    a.process(irp, t);
    assert_eq!(cell.completion().map(|c| c.status), Some(Status::SUCCESS));
}

/// How an IRP ended; it was completed exactly once.
fn status(cell: &IrpCell) -> Status {
    assert_eq!(
        cell.completions(),
        1,
        "IRP {} completed {} times",
        cell.id,
        cell.completions()
    );
    cell.completion().unwrap().status
}

/// How a WAIT ended: as [`status`], and a SUCCESS carries a WAIT reply with at least one event
/// (a WAIT is never answered with nothing).
fn wait_status(cell: &IrpCell) -> Status {
    let status = status(cell);
    let completion = cell.completion().unwrap();
    if status == Status::SUCCESS {
        match decode_reply(&completion.bytes) {
            Ok(Reply::Wait { reply, .. }) => {
                assert!(reply.count >= 1, "WAIT {} succeeded with no event", cell.id)
            }
            other => panic!("WAIT {} succeeded without a WAIT reply: {other:?}", cell.id),
        }
    }
    status
}

/// The adapter and its timer, shared by the model's threads.
#[derive(Clone)]
struct Shared {
    adapter: Arc<std::boxed::Box<TestAdapter>>,
    timer: Arc<FakePort>,
}

impl Shared {
    fn new() -> Self {
        Self {
            adapter: Arc::new(adapter(true)),
            timer: Arc::new(FakePort::new()),
        }
    }

    /// HwProcessServiceRequest of `irp` on another CPU.
    fn spawn_process(&self, irp: FakeIrp) -> thread::JoinHandle<()> {
        let shared = self.clone();
        thread::spawn(move || shared.adapter.process(irp, &*shared.timer))
    }

    /// IoCancelIrp of `cell`'s IRP on another CPU.
    fn spawn_cancel(&self, cell: &Arc<IrpCell>) -> thread::JoinHandle<()> {
        let (shared, cell) = (self.clone(), cell.clone());
        thread::spawn(move || cell.io_cancel_irp(&**shared.adapter))
    }
}

#[test]
fn park_races_cancel_and_fire() {
    model(|| {
        let s = Shared::new();
        let (irp, cell) = wait_irp(1);
        let parker = s.spawn_process(irp);
        let canceller = s.spawn_cancel(&cell);
        fire(&s.adapter, &s.timer, 2);
        parker.join().unwrap();
        canceller.join().unwrap();
        // Whichever came first, the WAIT ended: with the event, or cancelled.
        let status = wait_status(&cell);
        assert!(
            status == Status::SUCCESS || status == Status::CANCELLED,
            "{status:?}"
        );
        assert_eq!(s.adapter.stats().parked_now, 0);
    });
}

#[test]
fn park_races_fire_and_removal() {
    model(|| {
        let s = Shared::new();
        let (irp, cell) = wait_irp(1);
        let parker = s.spawn_process(irp);
        let (fire_irp, fired) = FakeIrp::new(2, Request::Fire { code: 1, value: 2 }, 16);
        let firer = s.spawn_process(fire_irp);
        s.adapter.remove(&*s.timer);
        parker.join().unwrap();
        firer.join().unwrap();
        let fire_status = status(&fired);
        assert!(fire_status == Status::SUCCESS || fire_status == Status::DEVICE_REMOVED);
        // Parked before removal: completed with events (the last one AdapterRemoved);
        // arrived after: refused.
        let status = wait_status(&cell);
        assert!(
            status == Status::SUCCESS || status == Status::DEVICE_REMOVED,
            "{status:?}"
        );
        assert_eq!(s.adapter.stats().parked_now, 0, "removal left a parked IRP");
    });
}

#[test]
fn cancel_races_removal_and_delivery() {
    model(|| {
        let s = Shared::new();
        let (first, first_cell) = wait_irp(1);
        s.adapter.process(first, &*s.timer);
        let (second, second_cell) = wait_irp(2);
        let parker = s.spawn_process(second);
        let canceller = s.spawn_cancel(&first_cell);
        fire(&s.adapter, &s.timer, 3);
        s.adapter.remove(&*s.timer);
        parker.join().unwrap();
        canceller.join().unwrap();
        let first = wait_status(&first_cell);
        assert!(
            first == Status::SUCCESS || first == Status::CANCELLED,
            "{first:?}"
        );
        // Parked before removal: delivered; arrived after: refused. Never lost.
        let second = wait_status(&second_cell);
        assert!(
            second == Status::SUCCESS || second == Status::DEVICE_REMOVED,
            "{second:?}"
        );
        assert_eq!(s.adapter.stats().parked_now, 0);
    });
}
