//! Spin locks as the driver sees them, with Deadlock-Detection-style bookkeeping.
//!
//! A `KSPIN_LOCK` is a pointer-sized word in driver memory; storsim spins on it for real so
//! several emulated CPUs contend exactly as they would. Each thread keeps the locks it holds
//! (outermost first) and a process-wide graph of "held A while taking B" edges finds order
//! cycles before they deadlock (0xC4/0x1001), as Driver Verifier's deadlock detection does.

use std::cell::{Cell, RefCell};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rustc_hash::{FxHashMap, FxHashSet};

use super::{BugCheck, Code};

/// A lock's identity: the address of its word (driver locks) or a fixed id (kernel locks).
pub type LockId = usize;

/// The global cancel spin lock's identity (IoAcquireCancelSpinLock, IoCancelIrp).
pub const CANCEL_SPIN_LOCK: LockId = 1;
/// Storport's StartIo lock (held around HwTimer).
pub const STARTIO_LOCK: LockId = 2;

/// Which API family took a lock (0xC4/0x1008 if one lock is used through both).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LockApi {
    InStackQueued,
    Classic,
    Cancel,
    Storport,
}

#[derive(Clone, Copy, Debug)]
struct Held {
    lock: LockId,
    name: &'static str,
}

thread_local! {
    static HELD: RefCell<Vec<Held>> = const { RefCell::new(Vec::new()) };
    /// The last lock this thread took holding no other: the graph it went into (its address),
    /// the lock, its API family and the [`FORGOTTEN`] count then. Taking it again the same way,
    /// still holding nothing, teaches that graph nothing (no edge, a family already recorded),
    /// so the graph's mutex is skipped. A driver takes its queue lock this way on nearly every
    /// request; the mutex and the lookups were half of what storsim spent per acquisition.
    static SOLO: Cell<Option<Solo>> = const { Cell::new(None) };
}

/// Bumped whenever a graph forgets locks or a new graph starts, so no thread's [`SOLO`] can
/// vouch for a lock the graph no longer knows.
static FORGOTTEN: AtomicU64 = AtomicU64::new(0);

type Solo = (usize, LockId, LockApi, u64);

/// Locks held by this thread right now.
pub fn held_count() -> usize {
    HELD.with(|held| held.borrow().len())
}

/// True if this thread holds any spin lock (for SpinLockSafe at completion).
pub fn any_held() -> Option<(LockId, &'static str)> {
    HELD.with(|held| held.borrow().last().map(|h| (h.lock, h.name)))
}

/// The innermost lock this thread holds other than `except` (a lock its caller holds around
/// it, such as Storport's StartIo lock around HwResetBus).
pub fn held_except(except: LockId) -> Option<(LockId, &'static str)> {
    HELD.with(|held| {
        held.borrow()
            .iter()
            .rev()
            .find(|h| h.lock != except)
            .map(|h| (h.lock, h.name))
    })
}

/// How long a CPU spins on a lock before storsim calls it a deadlock.
pub const SPIN_LIMIT: Duration = Duration::from_secs(10);

/// The process-wide lock-order graph and each lock's API family, behind one mutex: every
/// acquisition on every emulated CPU goes through it but the repeats `SOLO` vouches for, so
/// it is kept cheap (one lock, FxHash: the keys are addresses storsim itself produced, not
/// attacker-chosen).
pub struct LockOrder {
    graph: Mutex<Graph>,
}

impl Default for LockOrder {
    fn default() -> LockOrder {
        // A thread's SOLO may name a graph that was dropped where this one is created.
        FORGOTTEN.fetch_add(1, Ordering::AcqRel);
        LockOrder {
            graph: Mutex::default(),
        }
    }
}

#[derive(Default)]
struct Graph {
    apis: FxHashMap<LockId, LockApi>,
    /// `after[a]` holds every lock taken while `a` was held.
    after: FxHashMap<LockId, FxHashSet<LockId>>,
}

/// Why an acquisition was refused: the caller reports it and must not take the lock.
#[derive(Debug)]
pub enum Refused {
    /// The thread already holds it: taking it again would spin forever.
    Recursive(BugCheck),
}

impl LockOrder {
    /// Checks taking `lock` on this thread against the locks it holds; records order edges.
    /// Returns a violation to report (the lock may still be taken) or a refusal.
    pub fn before_acquire(
        &self,
        lock: LockId,
        api: LockApi,
        name: &'static str,
    ) -> Result<Option<BugCheck>, Refused> {
        let solo = Some((
            std::ptr::from_ref(self) as usize,
            lock,
            api,
            FORGOTTEN.load(Ordering::Acquire),
        ));
        HELD.with(|held| {
            let held = held.borrow();
            if held.is_empty() && SOLO.get() == solo {
                return Ok(None);
            }
            if held.iter().any(|h| h.lock == lock) {
                return Err(Refused::Recursive(BugCheck::new(
                    Code::DriverVerifierDetectedViolation,
                    [0x1000, lock as u64, 0, 0],
                    format!(
                        "{name} {lock:#x} acquired recursively by the thread that holds it (self-deadlock)"
                    ),
                )));
            }
            let mut graph = self.graph.lock().unwrap_or_else(|p| p.into_inner());
            let known = *graph.apis.entry(lock).or_insert(api);
            let mut report = (known != api).then(|| {
                BugCheck::new(
                    Code::DriverVerifierDetectedViolation,
                    [0x1008, lock as u64, 0, 0],
                    format!("spin lock {lock:#x} used through {known:?} and {api:?} APIs"),
                )
            });
            for outer in held.iter() {
                // An edge already in the graph was checked when it went in, and any cycle
                // through it was reported by the edge that closed it: only new edges are
                // searched (the search is what made every nested acquisition slow).
                if !graph.after.entry(outer.lock).or_default().insert(lock) {
                    continue;
                }
                if report.is_none() && graph.reachable(lock, outer.lock) {
                    report = Some(BugCheck::new(
                        Code::DriverVerifierDetectedViolation,
                        [0x1001, lock as u64, outer.lock as u64, 0],
                        format!(
                            "lock hierarchy violation: {name} {lock:#x} taken while holding {} {:#x}, \
                             but elsewhere {:#x} was held while taking {:#x} (a deadlock waiting to happen)",
                            outer.name, outer.lock, lock, outer.lock
                        ),
                    ));
                }
            }
            if held.is_empty() && report.is_none() {
                SOLO.set(solo);
            }
            Ok(report)
        })
    }

    /// Forgets the locks that lived in freed memory, so a reused address starts clean.
    pub fn forget_range(&self, start: usize, len: usize) {
        let gone = |lock: &LockId| (start..start + len).contains(lock);
        let mut graph = self.graph.lock().unwrap_or_else(|p| p.into_inner());
        FORGOTTEN.fetch_add(1, Ordering::AcqRel);
        graph.apis.retain(|lock, _| !gone(lock));
        graph.after.retain(|lock, _| !gone(lock));
        for set in graph.after.values_mut() {
            set.retain(|lock| !gone(lock));
        }
    }
}

impl Graph {
    fn reachable(&self, from: LockId, to: LockId) -> bool {
        let mut seen = FxHashSet::default();
        let mut stack = vec![from];
        while let Some(node) = stack.pop() {
            if node == to {
                return true;
            }
            if seen.insert(node)
                && let Some(next) = self.after.get(&node)
            {
                stack.extend(next.iter().copied());
            }
        }
        false
    }
}

/// Records that this thread now holds `lock`.
pub fn push_held(lock: LockId, name: &'static str) {
    HELD.with(|held| held.borrow_mut().push(Held { lock, name }));
}

/// Removes `lock` from this thread's held set. `Err` carries the out-of-order report
/// (0xC4/0x1003) when an inner lock is still held; the lock is released either way.
pub fn pop_held(lock: LockId) -> Result<(), Option<BugCheck>> {
    HELD.with(|held| {
        let mut held = held.borrow_mut();
        let Some(at) = held.iter().rposition(|h| h.lock == lock) else {
            return Err(None);
        };
        let inner = held.get(at + 1).map(|h| h.lock);
        held.remove(at);
        match inner {
            Some(inner) => Err(Some(BugCheck::new(
                Code::DriverVerifierDetectedViolation,
                [0x1003, lock as u64, inner as u64, 0],
                format!(
                    "spin lock {lock:#x} released while {inner:#x}, taken after it, is still held"
                ),
            ))),
            None => Ok(()),
        }
    })
}

/// True if this thread holds `lock`.
pub fn holds(lock: LockId) -> bool {
    HELD.with(|held| held.borrow().iter().any(|h| h.lock == lock))
}

/// Drops every lock this thread took after the first `keep`, returning them (outermost first);
/// used after a callback returned holding locks, so the run can go on.
pub fn take_held_beyond(keep: usize) -> Vec<(LockId, &'static str)> {
    HELD.with(|held| {
        let mut held = held.borrow_mut();
        let keep = keep.min(held.len());
        let extra = held.split_off(keep);
        extra.into_iter().map(|h| (h.lock, h.name)).collect()
    })
}

/// A spin-lock word: 0 free, otherwise the owner's tag.
///
/// Spins like a real CPU (pause, then yield, since emulated CPUs share 2 host cores); gives
/// up after [`SPIN_LIMIT`] and returns `false`, which the caller reports as a deadlock.
pub fn spin_acquire(word: &AtomicUsize, owner: usize) -> bool {
    // The clock is read only once the lock proved busy: most acquisitions find it free, and a
    // clock read per acquisition was a tenth of what storsim spent taking an uncontended lock.
    let mut start = None;
    let mut spins = 0u32;
    loop {
        if word
            .compare_exchange_weak(0, owner, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return true;
        }
        let start = *start.get_or_insert_with(Instant::now);
        spins += 1;
        if spins < 64 {
            std::hint::spin_loop();
        } else {
            std::thread::yield_now();
            if spins.is_multiple_of(1024) && start.elapsed() > SPIN_LIMIT {
                return false;
            }
        }
    }
}

/// This thread's owner tag for lock words (never 0).
pub fn owner_tag() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(1);
    thread_local! {
        static TAG: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    TAG.with(|tag| *tag)
}
