//! Parked service IRPs: a fixed slot table with a FIFO through it, cancel-safe.
//!
//! The cancel protocol is the driver-supplied-spin-lock pattern of the WDK docs ("Using a
//! driver-supplied spin lock"), adapted to slots; the caller holds the queue lock around every
//! method here:
//!
//! * park: store the IRP in a slot, *then* arm its cancel routine, *then* look at
//!   `Irp->Cancel`. If cancellation already started and we can still disarm, the IRP is handed
//!   back to be completed as cancelled; if we cannot, the cancel routine owns its completion.
//! * dequeue: unlink, then disarm. If disarming fails, the cancel routine is running or about
//!   to: the IRP stays in its slot as an orphan for that routine to take.
//! * cancel routine: takes the IRP from its slot, found through the slot index the IRP carries.
//!
//! Exactly one side wins `IoSetCancelRoutine`'s exchange, and only the winner takes the IRP out
//! of its slot, so every IRP leaves the queue exactly once.
//!
//! Why slots rather than `LIST_ENTRY`s through the IRPs: the table is plain safe Rust, a cancel
//! finds its slot in O(1) with no list walk, a stale or foreign IRP pointer reaching the cancel
//! path is detected (the slot holds another IRP) instead of corrupting a list, and the parked
//! cap is the table's size. The cost is 31 bytes of device extension per slot.

/// Parked WAITs per adapter. Beyond it a WAIT fails with STATUS_QUOTA_EXCEEDED.
pub const PARK_CAP: usize = 1024;

const _: () = assert!(PARK_CAP < u16::MAX as usize);

/// The adapter's queue of parked WAITs.
pub type WaitQueue<I> = ServiceQueue<I, Waiter, { PARK_CAP + 1 }, 0>;

/// What a queue keeps beside each parked IRP.
pub trait Parked: Copy {
    /// The value of a free slot: all-zero bytes, like the rest of an empty queue.
    const EMPTY: Self;
}

impl Parked for Waiter {
    const EMPTY: Self = Self {
        cursor: 0,
        max_events: 0,
    };
}

/// What the queue needs from an IRP to park it cancel-safely.
pub trait Parkable {
    /// Identifies the IRP (its address) so a cancel can be matched to its slot.
    fn id(&self) -> usize;
    /// Records `slot` where the cancel routine will read it, then sets the cancel routine.
    fn arm_cancel(&mut self, slot: u16);
    /// Clears the cancel routine; false if it was already taken (cancellation has started).
    fn disarm_cancel(&mut self) -> bool;
    /// `Irp->Cancel`.
    fn cancel_requested(&self) -> bool;
}

/// What a parked WAIT asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Waiter {
    /// The last `seq` this waiter has seen.
    pub cursor: u64,
    pub max_events: u32,
}

/// Why [`ServiceQueue::park`] handed the IRP back.
#[derive(Debug)]
pub enum Refusal<I> {
    /// Every slot is taken.
    Full(I),
    /// Cancellation had already started and this side won the exchange: complete as cancelled.
    Cancelled(I),
}

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    Free = 0,
    /// Linked in the FIFO.
    Parked = 1,
    /// Unlinked; its cancel routine is running and will take it.
    Orphaned = 2,
}

/// A FIFO node, like a `LIST_ENTRY` but with 16-bit node numbers (0: the list head).
#[derive(Clone, Copy)]
struct Link {
    prev: u16,
    next: u16,
}

/// Node `SENTINEL` is the list head (`LIST_ENTRY ListHead`); slot `s` is node `s + 1`.
/// A circular list through a sentinel makes insert and unlink the same few stores wherever
/// the node is, so a cancel costs the same with 1 or 1024 parked (no head/tail special cases).
const SENTINEL: usize = 0;

/// A queue of up to `N - 1` IRPs, each with its `W`. An IRP's cancel routine finds it by the
/// number `BASE + slot`, so queues with disjoint ranges can share one cancel routine.
///
/// `N` counts the list's nodes, the head included, so every node is an element of one array
/// and unlinking costs the same wherever the node is (no branch on "is this the head"); the
/// other arrays keep one unused element for it.
///
/// # Invariants
///
/// * `irps[i].is_some()` ⇔ `state[i] != Free`.
/// * The circular list from `links[SENTINEL]` through `next` visits exactly the `Parked` slots
///   (node `i + 1` for slot `i`), `prev` mirrors `next`; `parked` counts them.
/// * Slots `0..high_water` not in use are on the `free` stack; slots `high_water..` were never used.
/// * All-zero bytes are the empty queue: the sentinel linked to itself, every slot free
///   (`Option<I>` is null-pointer optimized for the driver's IRP handle), which is how the
///   Windows device extension starts.
pub struct ServiceQueue<I, W = Waiter, const N: usize = PARK_CAP, const BASE: u16 = 0> {
    irps: [Option<I>; N],
    waiters: [W; N],
    /// `links[SENTINEL]` is the head; slot `s` is node `s + 1`.
    links: [Link; N],
    state: [SlotState; N],
    free: [u16; N],
    free_len: u16,
    high_water: u16,
    parked: u16,
    peak: u16,
}

impl<I: Parkable, W: Parked, const N: usize, const BASE: u16> ServiceQueue<I, W, N, BASE> {
    const FITS: () = assert!(N >= 2 && N + BASE as usize <= u16::MAX as usize);

    /// How many IRPs the queue holds at most.
    pub const CAPACITY: usize = N - 1;

    pub const fn new() -> Self {
        let () = Self::FITS;
        Self {
            irps: [const { None }; N],
            waiters: [W::EMPTY; N],
            links: [Link { prev: 0, next: 0 }; N],
            state: [SlotState::Free; N],
            free: [0; N],
            free_len: 0,
            high_water: 0,
            parked: 0,
            peak: 0,
        }
    }

    /// IRPs linked in the FIFO now.
    pub fn len(&self) -> usize {
        self.parked.into()
    }

    pub fn is_empty(&self) -> bool {
        self.parked == 0
    }

    /// The most IRPs ever parked at once.
    pub fn peak(&self) -> usize {
        self.peak.into()
    }

    /// Parks `irp` at the tail, cancel-safely; returns its slot.
    ///
    /// # Errors
    ///
    /// Hands the IRP back when every slot is taken, or when it was cancelled before it could
    /// be armed and this side must complete it.
    pub fn park(&mut self, mut irp: I, waiter: W) -> Result<u16, Refusal<I>> {
        let Some(slot) = self.allocate() else {
            return Err(Refusal::Full(irp));
        };
        irp.arm_cancel(BASE + slot as u16);
        if irp.cancel_requested() {
            if irp.disarm_cancel() {
                self.release(slot);
                return Err(Refusal::Cancelled(irp));
            }
            // IoCancelIrp took the routine: it is waiting for this lock to take the IRP.
            self.irps[slot] = Some(irp);
            self.waiters[slot] = waiter;
            self.state[slot] = SlotState::Orphaned;
            return Ok(slot as u16);
        }
        self.irps[slot] = Some(irp);
        self.waiters[slot] = waiter;
        self.link_tail(slot);
        Ok(slot as u16)
    }

    /// Takes the head IRP if `ready` accepts its waiter, skipping (orphaning) IRPs whose
    /// cancellation has started.
    pub fn pop_front_if(&mut self, ready: impl Fn(&W) -> bool) -> Option<(I, W)> {
        loop {
            let slot = usize::from(self.links[SENTINEL].next.checked_sub(1)?);
            if !ready(&self.waiters[slot]) {
                return None;
            }
            if let Some(taken) = self.take_linked(slot) {
                return Some(taken);
            }
        }
    }

    /// Takes the first IRP in FIFO order whose waiter `wanted` accepts, skipping (orphaning)
    /// IRPs whose cancellation has started.
    pub fn take_first(&mut self, wanted: impl Fn(&W) -> bool) -> Option<(I, W)> {
        let mut at = self.links[SENTINEL].next;
        while let Some(slot) = at.checked_sub(1) {
            let slot = usize::from(slot);
            at = self.links[slot + 1].next;
            if wanted(&self.waiters[slot])
                && let Some(taken) = self.take_linked(slot)
            {
                return Some(taken);
            }
        }
        None
    }

    /// Takes the IRP parked in `slot` (as [`park`](Self::park) returned it); `None` if the slot
    /// holds no linked IRP, or its cancellation has started (its cancel routine takes it).
    pub fn take(&mut self, slot: u16) -> Option<(I, W)> {
        let slot = usize::from(slot);
        if *self.state.get(slot)? != SlotState::Parked {
            return None;
        }
        self.take_linked(slot)
    }

    /// The waiter parked in `slot`, if an IRP is parked there.
    pub fn waiter(&self, slot: u16) -> Option<&W> {
        let slot = usize::from(slot);
        (*self.state.get(slot)? == SlotState::Parked).then(|| &self.waiters[slot])
    }

    /// Unlinks `slot` and disarms its IRP; orphans it if its cancel routine won the race.
    fn take_linked(&mut self, slot: usize) -> Option<(I, W)> {
        self.unlink(slot);
        let irp = self.irps[slot].as_mut()?;
        if irp.disarm_cancel() {
            let irp = self.irps[slot].take()?;
            let waiter = self.waiters[slot];
            self.release(slot);
            return Some((irp, waiter));
        }
        self.state[slot] = SlotState::Orphaned;
        None
    }

    /// Takes the IRP whose cancel routine is running, given the number it was armed with.
    ///
    /// Returns `None` if that number is not this queue's or its slot does not hold the IRP
    /// `id`: a stale or foreign pointer, which the caller must not complete.
    pub fn take_cancelled(&mut self, armed: u16, id: usize) -> Option<(I, W)> {
        let slot = usize::from(armed.checked_sub(BASE)?);
        if self.irps.get(slot)?.as_ref()?.id() != id {
            return None;
        }
        if self.state[slot] == SlotState::Parked {
            self.unlink(slot);
        }
        let irp = self.irps[slot].take()?;
        let waiter = self.waiters[slot];
        self.release(slot);
        Some((irp, waiter))
    }

    fn allocate(&mut self) -> Option<usize> {
        if let Some(top) = self.free_len.checked_sub(1) {
            self.free_len = top;
            return Some(self.free[usize::from(top)].into());
        }
        if usize::from(self.high_water) < Self::CAPACITY {
            self.high_water += 1;
            return Some(usize::from(self.high_water) - 1);
        }
        None
    }

    fn release(&mut self, slot: usize) {
        self.state[slot] = SlotState::Free;
        self.free[usize::from(self.free_len)] = slot as u16;
        self.free_len += 1;
    }

    /// InsertTailList.
    fn link_tail(&mut self, slot: usize) {
        let me = slot as u16 + 1;
        let tail = self.links[SENTINEL].prev;
        self.links[usize::from(me)] = Link {
            prev: tail,
            next: SENTINEL as u16,
        };
        self.links[usize::from(tail)].next = me;
        self.links[SENTINEL].prev = me;
        self.state[slot] = SlotState::Parked;
        self.parked += 1;
        self.peak = self.peak.max(self.parked);
    }

    /// RemoveEntryList; the slot is left `Orphaned` until it is taken.
    fn unlink(&mut self, slot: usize) {
        let Link { prev, next } = self.links[slot + 1];
        self.links[usize::from(prev)].next = next;
        self.links[usize::from(next)].prev = prev;
        self.state[slot] = SlotState::Orphaned;
        self.parked -= 1;
    }

    /// Checks every invariant; for tests.
    #[cfg(test)]
    pub fn assert_valid(&self) {
        let mut seen = 0;
        let mut prev = SENTINEL as u16;
        let mut at = self.links[SENTINEL].next;
        while let Some(slot) = at.checked_sub(1) {
            let link = self.links[usize::from(at)];
            assert_eq!(self.state[usize::from(slot)], SlotState::Parked);
            assert_eq!(link.prev, prev);
            assert!(self.irps[usize::from(slot)].is_some());
            seen += 1;
            assert!(seen <= N, "FIFO cycle");
            prev = at;
            at = link.next;
        }
        assert_eq!(self.links[SENTINEL].prev, prev);
        assert_eq!(seen, self.len());
        let parked = self
            .state
            .iter()
            .filter(|&&s| s == SlotState::Parked)
            .count();
        assert_eq!(parked, seen);
        let in_use = (0..usize::from(self.high_water))
            .filter(|&s| self.state[s] != SlotState::Free)
            .count();
        assert_eq!(
            in_use + usize::from(self.free_len),
            usize::from(self.high_water)
        );
        for slot in 0..Self::CAPACITY {
            assert_eq!(
                self.irps[slot].is_some(),
                self.state[slot] != SlotState::Free
            );
        }
    }
}

impl<I: Parkable, W: Parked, const N: usize, const BASE: u16> Default
    for ServiceQueue<I, W, N, BASE>
{
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    /// An IRP reduced to what the queue looks at; `armed` and `cancel` model
    /// `Irp->CancelRoutine` and `Irp->Cancel`.
    #[derive(Debug, PartialEq, Eq)]
    pub(crate) struct Mock {
        pub id: usize,
        pub armed: bool,
        pub cancel: bool,
        pub slot: u16,
    }

    impl Mock {
        pub fn new(id: usize) -> Self {
            Self {
                id,
                armed: false,
                cancel: false,
                slot: u16::MAX,
            }
        }
    }

    impl Parkable for Mock {
        fn id(&self) -> usize {
            self.id
        }
        fn arm_cancel(&mut self, slot: u16) {
            self.slot = slot;
            // IoCancelIrp may have run before: then it found no routine and only set Cancel.
            self.armed = true;
        }
        fn disarm_cancel(&mut self) -> bool {
            core::mem::replace(&mut self.armed, false)
        }
        fn cancel_requested(&self) -> bool {
            self.cancel
        }
    }

    fn waiter(cursor: u64) -> Waiter {
        Waiter {
            cursor,
            max_events: 1,
        }
    }

    #[test]
    fn take_first_skips_what_it_does_not_want_and_take_finds_a_slot() {
        let mut q: ServiceQueue<Mock, Waiter, 9, 100> = ServiceQueue::new();
        let slots: Vec<u16> = (1..=4)
            .map(|id| q.park(Mock::new(id), waiter(id as u64)).unwrap())
            .collect();
        assert_eq!(
            q.irps[0].as_ref().unwrap().slot,
            100,
            "armed with BASE + slot"
        );
        let (irp, w) = q.take_first(|w| w.cursor % 2 == 0).unwrap();
        assert_eq!((irp.id, w.cursor), (2, 2));
        assert_eq!(q.waiter(slots[3]).map(|w| w.cursor), Some(4));
        assert_eq!(q.take(slots[3]).unwrap().0.id, 4);
        assert!(q.take(slots[3]).is_none(), "taken once");
        assert!(
            q.take_cancelled(0, 1).is_none(),
            "below BASE is another queue's"
        );
        // A cancelled IRP is skipped and left to its routine.
        q.irps[0].as_mut().unwrap().armed = false;
        assert!(q.take_first(|w| w.cursor == 1).is_none());
        assert_eq!(q.take_cancelled(100, 1).unwrap().0.id, 1);
        q.assert_valid();
        assert_eq!(drain(&mut q), [3]);
    }

    fn drain<W: Parked, const N: usize, const B: u16>(
        q: &mut ServiceQueue<Mock, W, N, B>,
    ) -> Vec<usize> {
        core::iter::from_fn(|| q.pop_front_if(|_| true))
            .map(|(irp, _)| irp.id)
            .collect()
    }

    #[test]
    fn fifo_order_and_counts() {
        let mut q: WaitQueue<Mock> = ServiceQueue::new();
        for id in 1..=5 {
            q.park(Mock::new(id), waiter(id as u64)).unwrap();
        }
        q.assert_valid();
        assert_eq!((q.len(), q.peak()), (5, 5));
        let (irp, w) = q.pop_front_if(|w| w.cursor < 3).unwrap();
        assert_eq!((irp.id, w.cursor, irp.armed), (1, 1, false));
        assert!(q.pop_front_if(|w| w.cursor < 3).is_some());
        assert!(q.pop_front_if(|w| w.cursor < 3).is_none());
        assert_eq!(drain(&mut q), [3, 4, 5]);
        q.assert_valid();
        assert_eq!((q.len(), q.peak()), (0, 5));
    }

    #[test]
    fn the_cap_refuses_and_hands_the_irp_back() {
        let mut q: WaitQueue<Mock> = ServiceQueue::new();
        for id in 0..PARK_CAP {
            q.park(Mock::new(id), waiter(0)).unwrap();
        }
        match q.park(Mock::new(9999), waiter(0)) {
            Err(Refusal::Full(irp)) => assert!(!irp.armed && irp.id == 9999),
            other => panic!("expected Full, got {other:?}"),
        }
        // Freed slots are reused.
        assert_eq!(q.pop_front_if(|_| true).unwrap().0.id, 0);
        q.park(Mock::new(7777), waiter(0)).unwrap();
        q.assert_valid();
        assert_eq!(q.len(), PARK_CAP);
    }

    #[test]
    fn cancel_before_park_is_completed_by_the_parker() {
        let mut q: WaitQueue<Mock> = ServiceQueue::new();
        let mut irp = Mock::new(1);
        irp.cancel = true; // IoCancelIrp ran first and found no cancel routine
        match q.park(irp, waiter(0)) {
            Err(Refusal::Cancelled(irp)) => assert!(!irp.armed),
            other => panic!("expected Cancelled, got {other:?}"),
        }
        q.assert_valid();
        assert!(q.is_empty());
    }

    #[test]
    fn cancel_routine_takes_a_parked_irp_by_slot() {
        let mut q: WaitQueue<Mock> = ServiceQueue::new();
        for id in 1..=3 {
            q.park(Mock::new(id), waiter(0)).unwrap();
        }
        // The slot of IRP 2 is 1 (allocation is in order on a fresh queue).
        assert!(
            q.take_cancelled(1, 99).is_none(),
            "foreign pointer must not match"
        );
        assert!(
            q.take_cancelled(5000, 2).is_none(),
            "out-of-range slot must not match"
        );
        let (irp, _) = q.take_cancelled(1, 2).unwrap();
        assert_eq!(irp.id, 2);
        q.assert_valid();
        assert_eq!(drain(&mut q), [1, 3]);
    }

    #[test]
    fn cancel_unlinks_the_only_the_first_a_middle_and_the_last_alike() {
        for victim in [0usize, 1, 2, 3] {
            let mut q: WaitQueue<Mock> = ServiceQueue::new();
            let count = if victim == 0 { 1 } else { 4 };
            for id in 0..count {
                q.park(Mock::new(id), waiter(0)).unwrap();
            }
            let victim = victim.min(count - 1);
            assert_eq!(
                q.take_cancelled(victim as u16, victim).unwrap().0.id,
                victim
            );
            q.assert_valid();
            let rest: Vec<usize> = (0..count).filter(|&id| id != victim).collect();
            assert_eq!(drain(&mut q), rest);
            q.assert_valid();
        }
    }

    #[test]
    fn dequeue_that_loses_to_cancel_leaves_an_orphan_for_the_routine() {
        let mut q: WaitQueue<Mock> = ServiceQueue::new();
        q.park(Mock::new(1), waiter(0)).unwrap();
        q.park(Mock::new(2), waiter(0)).unwrap();
        // IoCancelIrp on IRP 1 exchanged the routine away but its routine has not run yet.
        q.irps[0].as_mut().unwrap().armed = false;
        assert_eq!(drain(&mut q), [2]);
        q.assert_valid();
        assert!(q.is_empty());
        // The routine now runs and finds its IRP.
        assert_eq!(q.take_cancelled(0, 1).unwrap().0.id, 1);
        assert!(q.take_cancelled(0, 1).is_none(), "taken exactly once");
        q.assert_valid();
    }

    #[test]
    fn cancel_racing_park_leaves_an_orphan() {
        // The routine was exchanged away after arming: model with an IRP whose disarm fails.
        #[derive(Debug)]
        struct Racing(Mock);
        impl Parkable for Racing {
            fn id(&self) -> usize {
                self.0.id
            }
            fn arm_cancel(&mut self, slot: u16) {
                self.0.slot = slot;
                self.0.cancel = true; // IoCancelIrp ran right here and took the routine
            }
            fn disarm_cancel(&mut self) -> bool {
                false
            }
            fn cancel_requested(&self) -> bool {
                self.0.cancel
            }
        }
        let mut rq: WaitQueue<Racing> = ServiceQueue::new();
        rq.park(Racing(Mock::new(4)), waiter(0)).unwrap();
        assert!(rq.is_empty());
        assert_eq!(rq.take_cancelled(0, 4).map(|(r, _)| r.0.id), Some(4));
        assert!(rq.take_cancelled(0, 4).is_none());
    }
}
