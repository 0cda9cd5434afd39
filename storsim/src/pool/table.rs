//! The pool's bookkeeping: every mapped block (live, being freed, quarantined) and the spare
//! mappings kept for reuse. Plain data behind the pool's mutex; no syscalls, no `unsafe`.
//!
//! # Ownership of mappings
//!
//! A [`Region`] is owned by this table from the moment it is inserted (as a live block) until it
//! leaves it: evicted from the quarantine or from the spare list, or taken for reuse by
//! [`Table::take_spare`]. Only the thread that removed a region may unmap or reuse it, and slots
//! in the `Freeing` state or with `pins > 0` are never removed, which is what lets `free` and
//! `check` read a block's pattern bytes after dropping the lock.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;

use super::BlockInfo;
use super::region::Region;

/// Spare mappings (evicted from the quarantine, `PROT_NONE`, or recycled at once, read-write)
/// kept for reuse, at most.
/// Enough for a burst of 512 completed WAITs (an IRP and a SystemBuffer each) to be
/// allocated again without an `mmap` each: with 64 spares, 64 waiters re-arming
/// at once cost storsim an `munmap` + `mmap` per block beyond the 64th, which made revcall look
/// 25% slower than the floor in `storsim bench` for storsim's own reason.
pub const SPARE_BLOCKS: usize = 1024;

/// Only mappings with at most this many bytes of data pages are kept as spares: IRPs, driver
/// structures and SystemBuffers up to a FETCH reply's (a few hundred KiB) are recycled without
/// an `mmap` and fresh zeroed pages each time; bigger ones are returned.
pub(super) const SPARE_MAX_DATA: usize = 1024 * 1024;

/// Data bytes the spare mappings may hold in all (their pages stay allocated).
pub(super) const SPARE_BYTES: usize = 64 * 1024 * 1024;

/// How much freed memory the quarantine holds before the oldest blocks are released.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Freed blocks kept no-access, at most. Each costs two VMAs.
    pub quarantine_blocks: usize,
    /// Bytes of data pages kept no-access, at most (the physical pages stay allocated).
    pub quarantine_bytes: usize,
}

impl Default for Limits {
    /// 4096 blocks (8192 VMAs, an eighth of the default `vm.max_map_count` of 65530) and
    /// 64 MiB: a use after free is caught if the block was among the last 4096 freed.
    fn default() -> Limits {
        Limits {
            quarantine_blocks: 4096,
            quarantine_bytes: 64 << 20,
        }
    }
}

/// Where a block is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum State {
    /// Allocated and handed out.
    Live,
    /// `free` is checking its patterns and revoking access; a second free is a double free.
    Freeing,
    /// No-access, in the quarantine.
    Freed,
}

/// One mapped block.
#[derive(Clone, Debug)]
pub(super) struct Slot {
    pub(super) info: BlockInfo,
    pub(super) region: Region,
    pub(super) state: State,
    /// Running `check` calls reading this block's patterns; `free` waits for them.
    pub(super) pins: u32,
}

/// A mapping kept for reuse.
#[derive(Clone, Copy, Debug)]
pub(super) struct Spare {
    pub(super) region: Region,
    /// Its data pages are read-write (recycled at once), not no-access (out of the quarantine).
    pub(super) writable: bool,
}

/// Every mapping the pool owns.
#[derive(Debug)]
pub(super) struct Table {
    /// Blocks keyed by their mapping's base address.
    blocks: FxHashMap<usize, Slot>,
    /// The base of the mapping each page (address / `page`) belongs to, guard pages included:
    /// finding the block an address falls in is two hash lookups whatever the table's size.
    /// (An ordered map's range query cost a third more for revcall than for the floor in
    /// `storsim bench` only because revcall keeps more blocks live: the driver's own and its
    /// parked IRPs'.) FxHash: the keys are addresses the kernel chose, not attacker input.
    pages: FxHashMap<usize, usize>,
    page: usize,
    /// Bases of `Freed` blocks, oldest first.
    quarantine: VecDeque<usize>,
    /// Sum of the quarantined blocks' data bytes.
    quarantine_bytes: usize,
    /// Evicted or recycled mappings, oldest first.
    spares: VecDeque<Spare>,
    /// Sum of the spares' data bytes.
    spare_bytes: usize,
    limits: Limits,
}

impl Table {
    pub(super) fn new(limits: Limits, page: usize) -> Table {
        Table {
            blocks: FxHashMap::default(),
            pages: FxHashMap::default(),
            page,
            // Pre-sized so quarantining never allocates (bounded, the cap stays small for
            // tests that use tiny limits).
            quarantine: VecDeque::with_capacity(limits.quarantine_blocks.min(1 << 16) + 1),
            quarantine_bytes: 0,
            spares: VecDeque::with_capacity(SPARE_BLOCKS + 1),
            spare_bytes: 0,
            limits,
        }
    }

    /// The base of the mapping (guard page included) that contains `addr`.
    fn base_of(&self, addr: usize) -> Option<usize> {
        self.pages.get(&(addr / self.page)).copied()
    }

    /// The block whose mapping (guard page included) contains `addr`.
    pub(super) fn containing(&self, addr: usize) -> Option<&Slot> {
        self.blocks.get(&self.base_of(addr)?)
    }

    /// As [`Table::containing`], to update.
    pub(super) fn containing_mut(&mut self, addr: usize) -> Option<&mut Slot> {
        let base = self.base_of(addr)?;
        self.blocks.get_mut(&base)
    }

    /// The block whose mapping starts right above `addr`, within `distance` bytes.
    pub(super) fn above(&self, addr: usize, distance: usize) -> Option<&Slot> {
        let first = addr.checked_add(1)?;
        let last = addr.saturating_add(distance);
        // Pages in address order: the first one whose mapping starts above `addr` is that
        // mapping's first page (a mapping's pages are contiguous).
        (first / self.page..=last / self.page)
            .filter_map(|page| self.pages.get(&page))
            .find(|&&base| base > addr && base <= last)
            .and_then(|base| self.blocks.get(base))
    }

    /// The block that starts exactly at `addr` (its data, not its mapping).
    pub(super) fn starting_at(&mut self, addr: usize) -> Option<&mut Slot> {
        self.containing_mut(addr)
            .filter(|slot| slot.info.addr == addr)
    }

    pub(super) fn insert(&mut self, slot: Slot) {
        let base = slot.region.base();
        for page in slot.region.pages() {
            self.pages.insert(page, base);
        }
        let previous = self.blocks.insert(base, slot);
        debug_assert!(previous.is_none(), "two pool blocks share a mapping");
    }

    /// Forgets the block whose mapping starts at `base`; returns it.
    pub(super) fn remove(&mut self, base: usize) -> Option<Slot> {
        let slot = self.blocks.remove(&base)?;
        for page in slot.region.pages() {
            self.pages.remove(&page);
        }
        Some(slot)
    }

    /// Live blocks, in address order.
    pub(super) fn live(&self) -> impl Iterator<Item = &Slot> {
        let mut live: Vec<&Slot> = self
            .blocks
            .values()
            .filter(|slot| slot.state == State::Live)
            .collect();
        live.sort_unstable_by_key(|slot| slot.region.base());
        live.into_iter()
    }

    /// Puts the `Freeing` block at `base` into the quarantine.
    pub(super) fn quarantine(&mut self, base: usize) {
        let Some(slot) = self.blocks.get_mut(&base) else {
            debug_assert!(false, "quarantining an unknown block");
            return;
        };
        debug_assert_eq!(slot.state, State::Freeing);
        slot.state = State::Freed;
        self.quarantine_bytes += slot.region.data_len();
        self.quarantine.push_back(base);
    }

    /// Makes the `Freeing` block at `base` a read-write spare at once (no quarantine); a
    /// mapping too big to keep comes back for the caller to unmap.
    pub(super) fn recycle(&mut self, base: usize) -> Option<Region> {
        let Some(slot) = self.remove(base) else {
            debug_assert!(false, "recycling an unknown block");
            return None;
        };
        debug_assert_eq!(slot.state, State::Freeing);
        self.keep(slot.region, true)
    }

    /// Keeps `region` as a spare, or hands it back if it is too big to keep.
    fn keep(&mut self, region: Region, writable: bool) -> Option<Region> {
        if region.data_len() > SPARE_MAX_DATA {
            return Some(region);
        }
        self.spare_bytes += region.data_len();
        self.spares.push_back(Spare { region, writable });
        None
    }

    /// Number of quarantined blocks.
    #[cfg(test)]
    pub(super) fn quarantined(&self) -> usize {
        self.quarantine.len()
    }

    /// Number of spare mappings.
    #[cfg(test)]
    pub(super) fn spares(&self) -> usize {
        self.spares.len()
    }

    /// Releases quarantined blocks beyond the limits, oldest first: those up to
    /// [`SPARE_MAX_DATA`] become spares, the rest (and the oldest spares beyond
    /// [`SPARE_BLOCKS`] or [`SPARE_BYTES`]) come back for the caller to unmap, one per call;
    /// `None` once within the limits.
    pub(super) fn evict(&mut self) -> Option<Region> {
        loop {
            if self.spares.len() > SPARE_BLOCKS || self.spare_bytes > SPARE_BYTES {
                let spare = self.spares.pop_front()?;
                self.spare_bytes -= spare.region.data_len();
                return Some(spare.region);
            }
            if self.quarantine.len() <= self.limits.quarantine_blocks
                && self.quarantine_bytes <= self.limits.quarantine_bytes
            {
                return None;
            }
            let base = self.quarantine.pop_front()?;
            let Some(slot) = self.remove(base) else {
                debug_assert!(false, "quarantined block missing from the table");
                continue;
            };
            self.quarantine_bytes -= slot.region.data_len();
            if let Some(region) = self.keep(slot.region, false) {
                return Some(region);
            }
        }
    }

    /// A spare mapping with exactly `data_len` bytes of data pages, newest first.
    pub(super) fn take_spare(&mut self, data_len: usize) -> Option<Spare> {
        let index = self
            .spares
            .iter()
            .rposition(|spare| spare.region.data_len() == data_len)?;
        let spare = self.spares.remove(index)?;
        self.spare_bytes -= spare.region.data_len();
        Some(spare)
    }

    /// Empties the table, handing back every mapping it owned.
    pub(super) fn drain(&mut self) -> impl Iterator<Item = Region> + use<> {
        self.quarantine.clear();
        self.quarantine_bytes = 0;
        self.spare_bytes = 0;
        self.pages.clear();
        let blocks = std::mem::take(&mut self.blocks)
            .into_values()
            .map(|slot| slot.region);
        let spares = std::mem::take(&mut self.spares)
            .into_iter()
            .map(|spare| spare.region);
        blocks.chain(spares)
    }
}
