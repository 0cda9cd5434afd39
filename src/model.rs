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
use revcall_protocol::{CURSOR_NOW, Request};

use crate::error::Status;
use crate::testing::{FakeIrp, FakeTimer, IrpCell, TestAdapter, adapter};

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(3);
    let f = std::sync::Arc::new(f);
    builder.check(move || {
        let f = f.clone();
        // The adapter state (~40 KiB) is built on the stack before it is boxed: give the
        // scenario a thread with room for it.
        let scenario = thread::Builder::new()
            .stack_size(4 << 20)
            .spawn(move || f())
            .unwrap();
        scenario.join().unwrap();
    });
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

fn fire(a: &TestAdapter, t: &FakeTimer, id: usize) {
    let (irp, cell) = FakeIrp::new(id, Request::Fire { code: 1, value: 2 }, 16);
    a.process(irp, t);
    assert_eq!(cell.completion().map(|c| c.status), Some(Status::SUCCESS));
}

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

#[test]
fn park_races_cancel_and_fire() {
    model(|| {
        let a = Arc::new(adapter(true));
        let t = Arc::new(FakeTimer::new());
        let (irp, cell) = wait_irp(1);
        let parker = {
            let (a, t) = (a.clone(), t.clone());
            thread::spawn(move || a.process(irp, &*t))
        };
        let canceller = {
            let (a, cell) = (a.clone(), cell.clone());
            thread::spawn(move || cell.io_cancel_irp(&**a))
        };
        fire(&a, &t, 2);
        parker.join().unwrap();
        canceller.join().unwrap();
        // Whichever came first, the WAIT ended: with the event, or cancelled.
        let status = status(&cell);
        assert!(
            status == Status::SUCCESS || status == Status::CANCELLED,
            "{status:?}"
        );
        assert_eq!(a.stats().parked_now, 0);
    });
}

#[test]
fn park_races_fire_and_removal() {
    model(|| {
        let a = Arc::new(adapter(true));
        let t = Arc::new(FakeTimer::new());
        let (irp, cell) = wait_irp(1);
        let parker = {
            let (a, t) = (a.clone(), t.clone());
            thread::spawn(move || a.process(irp, &*t))
        };
        let firer = {
            let (a, t) = (a.clone(), t.clone());
            thread::spawn(move || {
                let (irp, fired) = FakeIrp::new(2, Request::Fire { code: 1, value: 2 }, 16);
                a.process(irp, &*t);
                let s = fired.completion().unwrap().status;
                assert!(s == Status::SUCCESS || s == Status::DEVICE_REMOVED, "{s:?}");
            })
        };
        a.remove(&*t);
        parker.join().unwrap();
        firer.join().unwrap();
        // Parked before removal: completed with events (the last one AdapterRemoved);
        // arrived after: refused.
        let status = status(&cell);
        assert!(
            status == Status::SUCCESS || status == Status::DEVICE_REMOVED,
            "{status:?}"
        );
        assert_eq!(a.stats().parked_now, 0, "removal left a parked IRP");
    });
}

#[test]
fn cancel_races_removal_and_delivery() {
    model(|| {
        let a = Arc::new(adapter(true));
        let t = Arc::new(FakeTimer::new());
        let (first, first_cell) = wait_irp(1);
        a.process(first, &*t);
        let (second, second_cell) = wait_irp(2);
        let parker = {
            let (a, t) = (a.clone(), t.clone());
            thread::spawn(move || a.process(second, &*t))
        };
        let canceller = {
            let (a, cell) = (a.clone(), first_cell.clone());
            thread::spawn(move || cell.io_cancel_irp(&**a))
        };
        fire(&a, &t, 3);
        a.remove(&*t);
        parker.join().unwrap();
        canceller.join().unwrap();
        let first = status(&first_cell);
        assert!(
            first == Status::SUCCESS || first == Status::CANCELLED,
            "{first:?}"
        );
        let second = status(&second_cell);
        // Parked before removal: delivered; arrived after: refused. Never lost.
        assert!(
            second == Status::SUCCESS || second == Status::DEVICE_REMOVED,
            "{second:?}"
        );
        assert_eq!(a.stats().parked_now, 0);
    });
}
