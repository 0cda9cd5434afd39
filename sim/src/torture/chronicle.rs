//! When things happened, on one clock every CPU reads: which handles any CPU may cancel and
//! when each such cancel ran, and when each removal began and when HwCompleteServiceIrp had
//! returned. With it a worker can tell a cancel that could have reached its WAIT from one that
//! could not, and a WAIT the removal should have completed from one it raced.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use storsim::io::Handle;

/// A point on the run's clock.
pub type Tick = u64;

/// A cancel or a removal still under way has no end yet.
const UNDER_WAY: Tick = Tick::MAX;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    start: Tick,
    end: Tick,
}

/// A removal of adapter instance `instance`: `began` before PnP sent REMOVE (or
/// SURPRISE_REMOVAL), `drained` once HwCompleteServiceIrp had returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Removal {
    pub instance: u64,
    pub began: Tick,
    pub drained: Tick,
}

#[derive(Default)]
struct Inner {
    /// Handles of every CPU's waiters, by owning CPU: another thread of the owner's process
    /// may CancelIoEx on them.
    exposed: Vec<(usize, Handle)>,
    /// The cancels other CPUs ran on each handle.
    cancels: HashMap<Handle, Vec<Span>>,
    removals: Vec<(u64, Span)>,
    /// Floods, from their first WAIT until all of them completed.
    floods: Vec<Span>,
}

pub struct Chronicle {
    clock: AtomicU64,
    /// Per CPU: the handle it is sending a WAIT on right now, plus one (0: none). A cancel
    /// aimed there is the one likely to land inside HwProcessServiceRequest.
    sending: Vec<AtomicU64>,
    inner: Mutex<Inner>,
}

impl Chronicle {
    pub fn new(cpus: usize) -> Self {
        Self {
            clock: AtomicU64::new(0),
            sending: (0..cpus).map(|_| AtomicU64::new(0)).collect(),
            inner: Mutex::default(),
        }
    }

    /// CPU `cpu` is about to send a WAIT on `handle` (`Some`), or is done sending (`None`).
    pub fn sending(&self, cpu: usize, handle: Option<Handle>) {
        self.sending[cpu].store(handle.map_or(0, |h| h + 1), Ordering::SeqCst);
    }

    fn sending_on(&self, cpu: usize) -> Option<Handle> {
        self.sending[cpu].load(Ordering::SeqCst).checked_sub(1)
    }

    /// The next point on the clock; points are strictly ordered across CPUs.
    pub fn tick(&self) -> Tick {
        self.clock.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// CPU `cpu` now waits on `handle`, which others may cancel.
    pub fn expose(&self, cpu: usize, handle: Handle) {
        self.inner().exposed.push((cpu, handle));
    }

    /// `handle` is about to be closed: no cancel may name it any more.
    pub fn withdraw(&self, handle: Handle) {
        self.inner().exposed.retain(|&(_, h)| h != handle);
    }

    /// CancelIoEx by CPU `cpu`, as another thread of the owner's process, on a handle another
    /// CPU waits on: one it is sending a WAIT on if there is one (then again, up to `tries`
    /// times, while that send lasts), else one chosen by `pick` among `n` candidates. `cancel`
    /// runs while the handle is known open; the span it ran in is recorded. False if there was
    /// no handle to cancel on.
    pub fn cancel_foreign(
        &self,
        cpu: usize,
        pick: impl FnOnce(usize) -> usize,
        tries: usize,
        mut cancel: impl FnMut(Handle),
    ) -> bool {
        let mut inner = self.inner();
        let foreign: Vec<(usize, Handle)> = inner
            .exposed
            .iter()
            .filter(|&&(owner, _)| owner != cpu)
            .copied()
            .collect();
        if foreign.is_empty() {
            return false;
        }
        let busy = foreign
            .iter()
            .find(|&&(owner, h)| self.sending_on(owner) == Some(h))
            .copied();
        let (owner, handle) = busy.unwrap_or_else(|| foreign[pick(foreign.len())]);
        // Held across the cancel so the owner cannot close the handle under it (CancelIoEx on
        // a closed handle fails on Windows; storsim's cancel_io would not notice).
        let start = self.tick();
        inner.cancels.entry(handle).or_default().push(Span {
            start,
            end: UNDER_WAY,
        });
        cancel(handle);
        if busy.is_some() {
            for _ in 1..tries {
                if self.sending_on(owner) != Some(handle) {
                    break;
                }
                cancel(handle);
            }
        }
        let end = self.tick();
        if let Some(span) = inner
            .cancels
            .get_mut(&handle)
            .and_then(|spans| spans.last_mut())
        {
            span.end = end;
        }
        true
    }

    /// The earliest start of another CPU's cancel on `handle` that could have reached a
    /// request sent at `sent` and seen complete at `seen`: one that began before `seen` and had
    /// not ended before `sent`.
    pub fn foreign_cancel(&self, handle: Handle, sent: Tick, seen: Tick) -> Option<Tick> {
        self.inner()
            .cancels
            .get(&handle)?
            .iter()
            .filter(|span| span.start < seen && span.end > sent)
            .map(|span| span.start)
            .min()
    }

    /// PnP begins removing adapter instance `instance`; returns the removal's index.
    pub fn removal_begins(&self, instance: u64) -> usize {
        let mut inner = self.inner();
        let start = self.tick();
        inner.removals.push((
            instance,
            Span {
                start,
                end: UNDER_WAY,
            },
        ));
        inner.removals.len() - 1
    }

    /// HwCompleteServiceIrp of removal `index` has returned.
    pub fn removal_drained(&self, index: usize) {
        let end = self.tick();
        if let Some((_, span)) = self.inner().removals.get_mut(index) {
            span.end = end;
        }
    }

    /// The first removal of `instance` that began after `parked`, once it has drained.
    pub fn drained_after(&self, instance: u64, parked: Tick) -> Option<Removal> {
        let inner = self.inner();
        let (_, span) = inner
            .removals
            .iter()
            .find(|(i, span)| *i == instance && span.start > parked)?;
        (span.end != UNDER_WAY).then_some(Removal {
            instance,
            began: span.start,
            drained: span.end,
        })
    }

    /// A flood of WAITs begins; returns its index.
    pub fn flood_begins(&self) -> usize {
        let mut inner = self.inner();
        let start = self.tick();
        inner.floods.push(Span {
            start,
            end: UNDER_WAY,
        });
        inner.floods.len() - 1
    }

    /// Every WAIT of flood `index` has completed.
    pub fn flood_ends(&self, index: usize) {
        let end = self.tick();
        if let Some(span) = self.inner().floods.get_mut(index) {
            span.end = end;
        }
    }

    /// Whether a flood was under way at some point between `sent` and `seen`.
    pub fn flooded(&self, sent: Tick, seen: Tick) -> bool {
        self.inner()
            .floods
            .iter()
            .any(|span| span.start < seen && span.end > sent)
    }

    /// How many removals have begun.
    pub fn removals(&self) -> usize {
        self.inner().removals.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_foreign_cancel_counts_only_if_it_overlapped_the_request() {
        let chronicle = Chronicle::new(2);
        chronicle.expose(0, 7);
        assert!(
            !chronicle.cancel_foreign(0, |_| 0, 1, |_| {}),
            "its own handle"
        );
        let sent_before = chronicle.tick();
        let mut cancelled = None;
        assert!(chronicle.cancel_foreign(1, |n| n - 1, 1, |h| cancelled = Some(h)));
        assert_eq!(cancelled, Some(7));
        let sent_after = chronicle.tick();
        let seen = chronicle.tick();
        assert!(chronicle.foreign_cancel(7, sent_before, seen).is_some());
        assert_eq!(chronicle.foreign_cancel(7, sent_after, seen), None);
        assert_eq!(chronicle.foreign_cancel(8, sent_before, seen), None);
        chronicle.withdraw(7);
        assert!(!chronicle.cancel_foreign(1, |_| 0, 1, |_| {}), "withdrawn");
    }

    #[test]
    fn a_foreign_cancel_aims_at_a_send_in_progress_while_it_lasts() {
        let chronicle = Chronicle::new(2);
        chronicle.expose(0, 7);
        chronicle.expose(0, 8);
        chronicle.sending(0, Some(8));
        let mut calls = Vec::new();
        assert!(chronicle.cancel_foreign(1, |_| 0, 3, |h| calls.push(h)));
        assert_eq!(calls, [8, 8, 8], "the busy handle, every try");
        chronicle.sending(0, None);
        calls.clear();
        assert!(chronicle.cancel_foreign(1, |_| 0, 3, |h| calls.push(h)));
        assert_eq!(calls, [7], "none busy: the picked one, once");
    }

    #[test]
    fn a_flood_overlaps_what_was_out_while_it_was() {
        let chronicle = Chronicle::new(1);
        let before = chronicle.tick();
        let flood = chronicle.flood_begins();
        let during = chronicle.tick();
        assert!(chronicle.flooded(before, during), "under way");
        chronicle.flood_ends(flood);
        let after = chronicle.tick();
        assert!(chronicle.flooded(before, after));
        assert!(!chronicle.flooded(after, chronicle.tick()));
    }

    #[test]
    fn a_removal_counts_once_drained_and_only_for_waits_parked_before_it() {
        let chronicle = Chronicle::new(1);
        let parked = chronicle.tick();
        let removal = chronicle.removal_begins(3);
        assert_eq!(chronicle.drained_after(3, parked), None, "still under way");
        chronicle.removal_drained(removal);
        let found = chronicle.drained_after(3, parked).expect("drained");
        assert!(found.began > parked && found.drained > found.began);
        assert_eq!(chronicle.drained_after(4, parked), None, "another instance");
        assert_eq!(
            chronicle.drained_after(3, found.drained),
            None,
            "parked later"
        );
    }
}
