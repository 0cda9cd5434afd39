//! The verifier's lock bookkeeping on its own: lock ids are plain numbers here, no driver.

use super::locks::{self, LockApi, LockOrder, Refused};

/// Runs `f` on a fresh thread, so its held-lock list starts empty.
fn on_a_thread(f: impl FnOnce() + Send + 'static) {
    std::thread::spawn(f).join().expect("the checks hold");
}

#[test]
fn taking_a_lock_twice_is_refused_as_a_self_deadlock() {
    on_a_thread(|| {
        let order = LockOrder::default();
        assert!(matches!(
            order.before_acquire(0x100, LockApi::InStackQueued, "A"),
            Ok(None)
        ));
        locks::push_held(0x100, "A");
        match order.before_acquire(0x100, LockApi::InStackQueued, "A") {
            Err(Refused::Recursive(bug)) => assert_eq!((bug.code, bug.params[0]), (0xC4, 0x1000)),
            other => panic!("recursion not refused: {}", other.is_ok()),
        }
        assert_eq!(locks::pop_held(0x100), Ok(()));
    });
}

#[test]
fn two_locks_taken_in_both_orders_are_a_hierarchy_violation() {
    let order = std::sync::Arc::new(LockOrder::default());
    let first = order.clone();
    on_a_thread(move || {
        assert!(
            first
                .before_acquire(0xA, LockApi::Classic, "A")
                .unwrap()
                .is_none()
        );
        locks::push_held(0xA, "A");
        assert!(
            first
                .before_acquire(0xB, LockApi::Classic, "B")
                .unwrap()
                .is_none()
        );
        locks::push_held(0xB, "B");
        assert_eq!(locks::pop_held(0xB), Ok(()));
        assert_eq!(locks::pop_held(0xA), Ok(()));
    });
    on_a_thread(move || {
        assert!(
            order
                .before_acquire(0xB, LockApi::Classic, "B")
                .unwrap()
                .is_none()
        );
        locks::push_held(0xB, "B");
        let bug = order
            .before_acquire(0xA, LockApi::Classic, "A")
            .unwrap()
            .expect("B then A, after A then B");
        assert_eq!(
            (bug.code, bug.params[0], bug.params[1]),
            (0xC4, 0x1001, 0xA)
        );
    });
}

/// On a fresh thread, takes `outer` then `inner` (the order check runs for each) and releases
/// both; returns what taking `inner` reported.
fn nest(order: &std::sync::Arc<LockOrder>, outer: usize, inner: usize) -> Option<(u32, u64)> {
    let order = order.clone();
    std::thread::spawn(move || {
        assert!(
            order
                .before_acquire(outer, LockApi::Classic, "outer")
                .unwrap()
                .is_none()
        );
        locks::push_held(outer, "outer");
        let report = order
            .before_acquire(inner, LockApi::Classic, "inner")
            .unwrap();
        locks::push_held(inner, "inner");
        assert_eq!(locks::pop_held(inner), Ok(()));
        assert_eq!(locks::pop_held(outer), Ok(()));
        report.map(|bug| (bug.code, bug.params[0]))
    })
    .join()
    .expect("the checks hold")
}

#[test]
fn a_cycle_through_three_locks_is_found_by_the_edge_that_closes_it() {
    // Each nesting is taken twice: an edge already known is not searched again, which must not
    // hide the cycle the last new edge closes.
    let order = std::sync::Arc::new(LockOrder::default());
    for (outer, inner) in [(0xA, 0xB), (0xA, 0xB), (0xB, 0xC), (0xB, 0xC)] {
        assert_eq!(
            nest(&order, outer, inner),
            None,
            "{outer:#x} then {inner:#x}"
        );
    }
    assert_eq!(
        nest(&order, 0xC, 0xA),
        Some((0xC4, 0x1001)),
        "C then A closes A→B→C"
    );
}

#[test]
fn releasing_out_of_order_and_releasing_a_lock_not_held_are_told_apart() {
    on_a_thread(|| {
        locks::push_held(1, "A");
        locks::push_held(2, "B");
        let bug = locks::pop_held(1)
            .expect_err("A released before B")
            .expect("a report");
        assert_eq!(
            (bug.code, bug.params[0], bug.params[1], bug.params[2]),
            (0xC4, 0x1003, 1, 2)
        );
        assert_eq!(locks::pop_held(2), Ok(()));
        assert_eq!(locks::pop_held(3), Err(None), "never acquired");
        assert_eq!(locks::held_count(), 0);
    });
}

#[test]
fn one_lock_through_two_api_families_is_0xc4_1008() {
    on_a_thread(|| {
        let order = LockOrder::default();
        assert!(
            order
                .before_acquire(7, LockApi::InStackQueued, "L")
                .unwrap()
                .is_none()
        );
        let bug = order
            .before_acquire(7, LockApi::Classic, "L")
            .unwrap()
            .expect("a report");
        assert_eq!((bug.code, bug.params[0]), (0xC4, 0x1008));
        // Freed memory forgets its locks: the address may hold a new lock of another family.
        order.forget_range(0, 16);
        assert!(
            order
                .before_acquire(7, LockApi::Classic, "L")
                .unwrap()
                .is_none()
        );
    });
}

#[test]
fn a_lock_taken_alone_again_is_vouched_for_only_while_the_graph_remembers_it() {
    let order = std::sync::Arc::new(LockOrder::default());
    let take = |order: &LockOrder, api| order.before_acquire(7, api, "L").unwrap();
    let first = order.clone();
    on_a_thread(move || {
        // The second acquisition skips the graph; the mix of families still is one report each
        // time (a reported acquisition vouches for nothing).
        for api in [LockApi::InStackQueued, LockApi::InStackQueued] {
            assert!(take(&first, api).is_none());
        }
        for _ in 0..2 {
            let bug = take(&first, LockApi::Classic).expect("a report");
            assert_eq!((bug.code, bug.params[0]), (0xC4, 0x1008));
        }
        // The word is freed and holds a new lock: this thread's next acquisition must teach
        // the graph its family again, or the other thread's mix below would go unseen.
        first.forget_range(0, 16);
        assert!(take(&first, LockApi::InStackQueued).is_none());
    });
    on_a_thread(move || {
        let bug = take(&order, LockApi::Classic).expect("the family the other thread recorded");
        assert_eq!((bug.code, bug.params[0]), (0xC4, 0x1008));
    });
}

#[test]
fn a_callback_that_left_locks_held_hands_them_back_outermost_first() {
    on_a_thread(|| {
        locks::push_held(1, "outer");
        let keep = locks::held_count();
        locks::push_held(2, "A");
        locks::push_held(3, "B");
        assert_eq!(locks::take_held_beyond(keep), [(2, "A"), (3, "B")]);
        assert!(locks::holds(1) && !locks::holds(2));
        assert_eq!(locks::pop_held(1), Ok(()));
    });
}

#[test]
fn a_bug_check_reads_like_one() {
    let bug = super::BugCheck::new(
        super::Code::DriverVerifierDetectedViolation,
        [0x1001, 2, 3, 4],
        "what",
    );
    let text = bug.to_string();
    assert!(
        text.starts_with(
            "*** STOP 0x000000C4 (0x1001, 0x2, 0x3, 0x4) DRIVER_VERIFIER_DETECTED_VIOLATION"
        ),
        "{text}"
    );
    assert!(text.contains("\n    what\n    in: "), "{text}");
}
