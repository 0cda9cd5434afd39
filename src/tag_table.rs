//! SRBs the servers owe: a fixed table of tags, a FIFO of queued tags per LUN, no allocation on
//! the I/O path. docs/DATAPATH.md §2 and §5.
//!
//! Each slot moves Free → Queued → AtServer → Free under the adapter lock, and only the move
//! out of AtServer or Queued hands the SRB back (to be completed), so an SRB is completed once.
//! A WRITE or UNMAP taken from a live server (a reset, an abort) is **fenced** on the way:
//! AtServer → Fenced → Free. Its SRB is completed, but the server may still change the blocks,
//! so its LUN hands out nothing until that server commits the tag or its session ends. A tag is the
//! slot (low 16 bits) and the slot's generation (the rest): a COMMIT with a tag from an
//! earlier use of the slot is told apart from one for the SRB there now. For each of the last
//! [`HISTORY`] generations a slot remembers whether its SRB was taken from the server (retired
//! by a reset, a removal, an abort, or requeued when its session ended) rather than committed,
//! so a late COMMIT for it is "stale" while a second COMMIT of a committed tag is "unknown",
//! however many times the slot was reset meanwhile.

use revcall_protocol::{DataOp, Descriptor, DescriptorFlags, MAX_LUNS};

/// Tags per adapter: above Storport's default of 1,000 outstanding SRBs per adapter
/// (DISK.md §3.4), so the table is never what throttles a LUN.
pub const TAGS: usize = 1024;

const _: () = assert!(TAGS <= u16::MAX as usize);

/// Generations of a slot whose fate a lookup can tell (bits of [`Entry::taken`]). A tag older
/// than that is taken for stale: nothing is touched either way, and refusing a whole COMMIT
/// for a result the server could not have known was late would strand the live ones in it.
pub const HISTORY: u64 = 64;

/// What a server is asked to do with one SRB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Io {
    pub lun: u8,
    pub op: DataOp,
    pub fua: bool,
    pub lba: u64,
    /// READ/WRITE: blocks; UNMAP: the number of ranges; FLUSH: 0.
    pub blocks: u32,
    /// The bytes the server's answer must carry (READ) or the descriptor's payload (WRITE,
    /// UNMAP ranges).
    pub bytes: u32,
}

/// The bytes a descriptor carries: a WRITE's data, an UNMAP's ranges.
fn payload_len(op: u8, bytes: u32) -> usize {
    if op == DataOp::Write as u8 || op == DataOp::Unmap as u8 {
        bytes as usize
    } else {
        0
    }
}

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TagState {
    Free = 0,
    Queued = 1,
    AtServer = 2,
    /// Completed, but its server may still be writing: see [`TagTable::fenced`].
    Fenced = 3,
}

/// A tag's slot. All-zero bytes are a free slot that was never used.
#[derive(Clone, Copy)]
struct Entry {
    state: TagState,
    lun: u8,
    /// DataOp as a byte (0 in a free slot).
    op: u8,
    fua: bool,
    /// The session that fetched it (AtServer, Fenced).
    session: u8,
    blocks: u32,
    bytes: u32,
    /// Which LUN of its number the SRB was sent to (a LUN removed and created again under
    /// the same number is another one: [`LunTable`](crate::lun_table::LunTable)).
    incarnation: u32,
    lba: u64,
    generation: u64,
    /// Bit `d`: generation `generation - d` was taken from its server rather than committed.
    taken: u64,
    /// FIFO links while Queued: node numbers (slot + 1; 0 is the LUN's list head).
    prev: u16,
    next: u16,
}

const FREE: Entry = Entry {
    state: TagState::Free,
    lun: 0,
    op: 0,
    fua: false,
    session: 0,
    blocks: 0,
    bytes: 0,
    incarnation: 0,
    lba: 0,
    generation: 0,
    taken: 0,
    prev: 0,
    next: 0,
};

/// A LUN's FIFO of queued tags: head and tail node numbers (0: empty).
#[derive(Clone, Copy)]
struct Fifo {
    head: u16,
    tail: u16,
}

/// What a COMMIT's tag names, for the session that sent it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The SRB at the server, fetched by this session: its slot, and the bytes a GOOD result
    /// must carry (a READ's transfer; 0 for anything else).
    Owed { slot: u16, read_len: u32 },
    /// Taken from the server (reset, removal, abort, requeued after its session ended), or
    /// more than [`HISTORY`] uses of the slot ago: the result is dropped.
    Stale,
    /// Fetched by this session, then taken from it while it may still change the blocks: the
    /// result is dropped, and this COMMIT lifts the fence ([`TagTable::unfence`]).
    Fenced { slot: u16 },
    /// Fetched by another session.
    Foreign,
    /// Never handed out, or already committed.
    Unknown,
}

/// A slot in use, as [`TagTable::retire_first`] shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    pub lun: u8,
    pub incarnation: u32,
    /// The session that fetched it; `None` while queued.
    pub session: Option<u8>,
}

/// # Invariants
///
/// * `srbs[i].is_some()` ⇔ `entries[i].state` is Queued or AtServer.
/// * `fences[lun]` counts the Fenced slots whose `lun` it is; they are on no list.
/// * Each LUN's FIFO, through `prev`/`next`, visits exactly that LUN's Queued slots.
/// * Slots `0..high_water` not in use are on the `free` stack; all-zero bytes are the empty
///   table (`Option<R>` is null-pointer optimized for the driver's SRB handle).
pub struct TagTable<R> {
    srbs: [Option<R>; TAGS],
    entries: [Entry; TAGS],
    fifos: [Fifo; MAX_LUNS],
    free: [u16; TAGS],
    free_len: u16,
    high_water: u16,
    /// Slots in use per LUN (LUN_LIST's `outstanding`).
    outstanding: [u16; MAX_LUNS],
    /// Bit `lun`: that LUN's FIFO is not empty (what settling looks at, instead of every LUN).
    queued_luns: u8,
    /// Fenced slots per LUN.
    fences: [u16; MAX_LUNS],
}

const _: () = assert!(MAX_LUNS <= u8::BITS as usize);

impl<R> TagTable<R> {
    pub const fn new() -> Self {
        Self {
            srbs: [const { None }; TAGS],
            entries: [FREE; TAGS],
            fifos: [Fifo { head: 0, tail: 0 }; MAX_LUNS],
            free: [0; TAGS],
            free_len: 0,
            high_water: 0,
            outstanding: [0; MAX_LUNS],
            queued_luns: 0,
            fences: [0; MAX_LUNS],
        }
    }

    /// SRBs of `lun` not yet completed.
    pub fn outstanding(&self, lun: u8) -> u32 {
        self.outstanding
            .get(usize::from(lun))
            .map_or(0, |&n| n.into())
    }

    /// Queues `srb`, sent to the `incarnation` of its LUN, at the tail of its LUN's FIFO.
    ///
    /// # Errors
    ///
    /// Hands the SRB back when every tag is taken (or the LUN number is out of range).
    pub fn admit(&mut self, srb: R, io: Io, incarnation: u32) -> Result<(), R> {
        if usize::from(io.lun) >= MAX_LUNS {
            return Err(srb);
        }
        let Some(slot) = self.allocate() else {
            return Err(srb);
        };
        // At the tail of its LUN's FIFO.
        let lun = usize::from(io.lun);
        let (node, fifo) = (slot as u16 + 1, &mut self.fifos[lun]);
        let tail = core::mem::replace(&mut fifo.tail, node);
        if tail == 0 {
            fifo.head = node;
        } else {
            self.entries[usize::from(tail - 1)].next = node;
        }
        self.queued_luns |= 1 << lun;
        let entry = &mut self.entries[slot];
        *entry = Entry {
            state: TagState::Queued,
            lun: io.lun,
            op: io.op as u8,
            fua: io.fua,
            session: 0,
            blocks: io.blocks,
            bytes: io.bytes,
            incarnation,
            lba: io.lba,
            // 48 bits of generation: wraps after 2^48 uses of one slot, past 0 (no tag has
            // generation 0).
            generation: ((entry.generation + 1) & 0xFFFF_FFFF_FFFF).max(1),
            taken: entry.taken << 1,
            prev: tail,
            next: 0,
        };
        self.srbs[slot] = Some(srb);
        self.outstanding[lun] += 1;
        Ok(())
    }

    /// The LUNs with SRBs queued: bit `lun` set.
    pub fn queued_luns(&self) -> u8 {
        self.queued_luns
    }

    /// Whether a server may still be changing `lun`'s blocks for an SRB already completed
    /// (a WRITE or UNMAP taken from it by a reset or an abort). Until it commits that tag or
    /// its session ends, nothing else of the LUN may be handed out: a later WRITE acknowledged
    /// before the late one lands would be overwritten by it, a READ would see the blocks change
    /// with no WRITE acknowledged.
    pub fn fenced(&self, lun: u8) -> bool {
        self.fences.get(usize::from(lun)).is_some_and(|&n| n != 0)
    }

    /// Hands the queued `slot` to `session`: it leaves its FIFO. The tests' way to hand out
    /// slots in any order; a FETCH takes the head ([`hand_out_first`](Self::hand_out_first)).
    #[cfg(test)]
    pub fn hand_out(&mut self, slot: u16, session: u8) {
        let slot = usize::from(slot);
        if self.entries[slot].state == TagState::Queued {
            self.unlink(slot);
            self.entries[slot].state = TagState::AtServer;
            self.entries[slot].session = session;
        }
    }

    /// `lun`'s queued slots, oldest first: which LUN of its number each SRB was sent to, and
    /// its descriptor's payload.
    pub fn queued(&self, lun: u8) -> impl Iterator<Item = (u32, usize)> + '_ {
        let mut node = self.fifos.get(usize::from(lun)).map_or(0, |fifo| fifo.head);
        core::iter::from_fn(move || {
            let entry = self.entries.get(usize::from(node.checked_sub(1)?))?;
            node = entry.next;
            Some((entry.incarnation, payload_len(entry.op, entry.bytes)))
        })
    }

    /// Hands the slot at the head of `lun`'s FIFO to `session`: the descriptor the server
    /// gets for it (its payload's length set, its offset not) and its SRB (to copy a WRITE's
    /// data while the lock is held). The FETCH path's pop: the head has no predecessor to
    /// relink.
    pub fn hand_out_first(&mut self, lun: u8, session: u8) -> Option<(Descriptor, &mut R)> {
        let fifo = self.fifos.get_mut(usize::from(lun))?;
        let slot = usize::from(fifo.head.checked_sub(1)?);
        let next = self.entries[slot].next;
        fifo.head = next;
        match next.checked_sub(1) {
            Some(next) => self.entries[usize::from(next)].prev = 0,
            None => {
                fifo.tail = 0;
                self.queued_luns &= !(1 << lun);
            }
        }
        let tag = self.tag(slot as u16);
        let entry = &mut self.entries[slot];
        (entry.state, entry.session, entry.next) = (TagState::AtServer, session, 0);
        let descriptor = Descriptor {
            tag,
            lba: entry.lba,
            blocks: entry.blocks,
            payload_offset: 0,
            payload_len: payload_len(entry.op, entry.bytes) as u32,
            lun: entry.lun,
            op: entry.op,
            flags: if entry.fua { DescriptorFlags::FUA } else { 0 },
            reserved: 0,
        };
        Some((descriptor, self.srbs[slot].as_mut()?))
    }

    /// The tag a server sees for `slot`.
    pub fn tag(&self, slot: u16) -> u64 {
        self.entries[usize::from(slot)].generation << 16 | u64::from(slot)
    }

    /// What `tag` names for `session`.
    pub fn lookup(&self, tag: u64, session: u8) -> Lookup {
        let (slot, generation) = ((tag & 0xFFFF) as usize, tag >> 16);
        let Some(entry) = self.entries.get(slot) else {
            return Lookup::Unknown;
        };
        // The common case first: the SRB this session holds (a live generation is never 0).
        if entry.generation == generation
            && entry.state == TagState::AtServer
            && entry.session == session
        {
            let read = entry.op == DataOp::Read as u8;
            return Lookup::Owed {
                slot: slot as u16,
                read_len: if read { entry.bytes } else { 0 },
            };
        }
        if generation == 0 || generation > entry.generation {
            return Lookup::Unknown;
        }
        let age = entry.generation - generation;
        match entry.state {
            TagState::AtServer if age == 0 => Lookup::Foreign,
            TagState::Fenced if age == 0 && entry.session == session => {
                Lookup::Fenced { slot: slot as u16 }
            }
            _ if age >= HISTORY || entry.taken >> age & 1 == 1 => Lookup::Stale,
            _ => Lookup::Unknown,
        }
    }

    /// Frees `slot` for its COMMIT and hands its SRB back.
    pub fn commit(&mut self, slot: u16) -> Option<R> {
        let slot = usize::from(slot);
        let srb = self.srbs.get_mut(slot)?.take()?;
        let entry = &mut self.entries[slot];
        // Only a slot at the server is committed ([`Lookup::Owed`]): on no FIFO.
        debug_assert_eq!(entry.state, TagState::AtServer);
        // A requeued SRB committed by its second server: this generation was committed.
        entry.taken &= !1;
        entry.state = TagState::Free;
        self.outstanding[usize::from(entry.lun)] -= 1;
        self.push_free(slot);
        Some(srb)
    }

    /// Frees the first slot `matches` selects, retiring its generation, and hands its SRB
    /// back with what held it.
    pub fn retire_first(&mut self, matches: impl Fn(Held) -> bool) -> Option<(R, Held)> {
        let (slot, held) = (0..usize::from(self.high_water)).find_map(|slot| {
            self.held(slot)
                .filter(|&held| matches(held))
                .map(|held| (slot, held))
        })?;
        Some((self.free_slot(slot, true)?, held))
    }

    /// Frees the slot holding the SRB `matches` selects (an ABORT_COMMAND's target), retiring
    /// its generation.
    pub fn retire_srb(&mut self, matches: impl Fn(&R) -> bool) -> Option<(R, Held)> {
        let slot = (0..usize::from(self.high_water))
            .find(|&slot| self.srbs[slot].as_ref().is_some_and(&matches))?;
        let held = self.held(slot)?;
        Some((self.free_slot(slot, true)?, held))
    }

    /// Lifts the fence of `slot` (its server committed the tag: it is done with the blocks);
    /// returns whether it was fenced.
    pub fn unfence(&mut self, slot: u16) -> bool {
        let slot = usize::from(slot);
        if self.entries.get(slot).map(|e| e.state) != Some(TagState::Fenced) {
            return false;
        }
        let lun = usize::from(self.entries[slot].lun);
        self.entries[slot].state = TagState::Free;
        self.fences[lun] -= 1;
        self.push_free(slot);
        true
    }

    /// Lifts every fence `session` holds (it ended: the server is gone or let go of its LUN).
    pub fn unfence_session(&mut self, session: u8) {
        for slot in 0..self.high_water {
            let entry = &self.entries[usize::from(slot)];
            if entry.state == TagState::Fenced && entry.session == session {
                self.unfence(slot);
            }
        }
    }

    /// What holds `slot`, if it is in use.
    fn held(&self, slot: usize) -> Option<Held> {
        let entry = &self.entries[slot];
        let session = match entry.state {
            TagState::Free | TagState::Fenced => return None,
            TagState::Queued => None,
            TagState::AtServer => Some(entry.session),
        };
        Some(Held {
            lun: entry.lun,
            incarnation: entry.incarnation,
            session,
        })
    }

    /// Puts every slot `session` holds back at the front of `lun`'s FIFO, in tag order, for
    /// another session to fetch; returns how many.
    pub fn requeue(&mut self, lun: u8, session: u8) -> u32 {
        let mut requeued = 0;
        // Highest slot first, each to the front: the FIFO starts in ascending slot order.
        for slot in (0..usize::from(self.high_water)).rev() {
            let entry = &self.entries[slot];
            if entry.state == TagState::AtServer && entry.lun == lun && entry.session == session {
                self.entries[slot].state = TagState::Queued;
                self.entries[slot].taken |= 1;
                self.link_head(slot);
                requeued += 1;
            }
        }
        requeued
    }

    fn free_slot(&mut self, slot: usize, retire: bool) -> Option<R> {
        let srb = self.srbs.get_mut(slot)?.take()?;
        if self.entries[slot].state == TagState::Queued {
            self.unlink(slot);
        }
        let entry = &mut self.entries[slot];
        let lun = usize::from(entry.lun);
        self.outstanding[lun] -= 1;
        // Taken from a server: a late COMMIT of it is stale. One never fetched stays unknown.
        if retire && entry.state == TagState::AtServer {
            entry.taken |= 1;
            if entry.op == DataOp::Write as u8 || entry.op == DataOp::Unmap as u8 {
                entry.state = TagState::Fenced;
                self.fences[lun] += 1;
                return Some(srb);
            }
        }
        entry.state = TagState::Free;
        self.push_free(slot);
        Some(srb)
    }

    fn push_free(&mut self, slot: usize) {
        self.free[usize::from(self.free_len)] = slot as u16;
        self.free_len += 1;
    }

    fn allocate(&mut self) -> Option<usize> {
        if let Some(top) = self.free_len.checked_sub(1) {
            self.free_len = top;
            return Some(self.free[usize::from(top)].into());
        }
        if usize::from(self.high_water) < TAGS {
            self.high_water += 1;
            return Some(usize::from(self.high_water) - 1);
        }
        None
    }

    fn link_head(&mut self, slot: usize) {
        let node = slot as u16 + 1;
        let lun = self.entries[slot].lun;
        self.queued_luns |= 1 << lun;
        let fifo = &mut self.fifos[usize::from(lun)];
        let head = fifo.head;
        fifo.head = node;
        if head == 0 {
            fifo.tail = node;
        }
        (self.entries[slot].prev, self.entries[slot].next) = (0, head);
        if let Some(head) = head.checked_sub(1) {
            self.entries[usize::from(head)].prev = node;
        }
    }

    fn unlink(&mut self, slot: usize) {
        let Entry {
            prev, next, lun, ..
        } = self.entries[slot];
        let fifo = &mut self.fifos[usize::from(lun)];
        match prev.checked_sub(1) {
            Some(prev) => self.entries[usize::from(prev)].next = next,
            None => fifo.head = next,
        }
        let fifo = &mut self.fifos[usize::from(lun)];
        match next.checked_sub(1) {
            Some(next) => self.entries[usize::from(next)].prev = prev,
            None => fifo.tail = prev,
        }
        if fifo.head == 0 {
            self.queued_luns &= !(1 << lun);
        }
        (self.entries[slot].prev, self.entries[slot].next) = (0, 0);
    }

    /// The queued slots of `lun`, head first; for tests.
    #[cfg(test)]
    fn fifo(&self, lun: u8) -> std::vec::Vec<u16> {
        let mut out = std::vec::Vec::new();
        let mut at = self.fifos[usize::from(lun)].head;
        while let Some(slot) = at.checked_sub(1) {
            assert_eq!(self.entries[usize::from(slot)].state, TagState::Queued);
            out.push(slot);
            at = self.entries[usize::from(slot)].next;
            assert!(out.len() <= TAGS, "FIFO cycle");
        }
        out
    }
}

impl<R> Default for TagTable<R> {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::boxed::Box;

    fn io(lun: u8) -> Io {
        Io {
            lun,
            op: DataOp::Read,
            fua: false,
            lba: 8,
            blocks: 1,
            bytes: 512,
        }
    }

    fn table() -> Box<TagTable<u32>> {
        Box::new(TagTable::new())
    }

    #[test]
    fn tags_queue_per_lun_and_commit_once() {
        let mut t = table();
        for n in 0..4 {
            t.admit(n, io((n % 2) as u8), 1).unwrap();
        }
        assert_eq!(t.fifo(0), [0, 2]);
        assert_eq!(t.fifo(1), [1, 3]);
        assert_eq!(t.queued_luns(), 0b11);
        assert_eq!((t.outstanding(0), t.outstanding(1)), (2, 2));
        t.hand_out(0, 5);
        assert_eq!(t.fifo(0), [2]);
        let tag = t.tag(0);
        assert_eq!(t.lookup(tag, 6), Lookup::Foreign);
        assert_eq!(
            t.lookup(tag, 5),
            Lookup::Owed {
                slot: 0,
                read_len: io(0).bytes
            }
        );
        assert_eq!(t.commit(0), Some(0));
        assert_eq!(t.lookup(tag, 5), Lookup::Unknown, "already committed");
        assert_eq!(
            t.lookup(tag + (1 << 16), 5),
            Lookup::Unknown,
            "never handed out"
        );
        assert_eq!(t.outstanding(0), 1);
        // The slot's next use has another tag; the old one stays unknown.
        t.admit(9, io(0), 1).unwrap();
        assert_ne!(t.tag(0), tag);
        assert_eq!(t.fifo(0), [2, 0]);
    }

    #[test]
    fn a_retired_tag_is_stale_and_a_dead_sessions_tags_go_first() {
        let mut t = table();
        for n in 0..4 {
            t.admit(n, io(0), 1).unwrap();
        }
        assert_eq!(
            t.lookup(t.tag(1), 7),
            Lookup::Unknown,
            "queued, never fetched"
        );
        t.hand_out(1, 7);
        t.hand_out(3, 7);
        t.hand_out(0, 8);
        assert_eq!(t.requeue(0, 7), 2);
        assert_eq!(t.fifo(0), [1, 3, 2]);
        assert_eq!(t.lookup(t.tag(1), 7), Lookup::Stale, "requeued");
        let tag = t.tag(0);
        let (srb, held) = t
            .retire_first(|held| held.lun == 0 && held.session == Some(8))
            .unwrap();
        assert_eq!(
            (srb, held),
            (
                0,
                Held {
                    lun: 0,
                    incarnation: 1,
                    session: Some(8)
                }
            )
        );
        assert_eq!(t.lookup(tag, 8), Lookup::Stale);
        let mut left = std::vec::Vec::new();
        while let Some((srb, _)) = t.retire_first(|_| true) {
            left.push(srb);
        }
        assert_eq!(left, [1, 2, 3]);
        assert!(t.fifo(0).is_empty());
        assert_eq!(t.queued_luns(), 0);
        assert_eq!(t.outstanding(0), 0);
    }

    #[test]
    fn the_table_refuses_when_full() {
        let mut t = table();
        for n in 0..TAGS as u32 {
            t.admit(n, io(3), 1).unwrap();
        }
        assert_eq!(t.admit(7777, io(3), 1), Err(7777));
        assert_eq!(t.admit(1, io(MAX_LUNS as u8), 1), Err(1));
        assert_eq!(t.fifo(3).first(), Some(&0));
    }

    #[test]
    fn a_tag_stays_stale_through_later_resets_and_a_committed_one_stays_unknown() {
        let mut t = table();
        let fetch = |t: &mut TagTable<u32>, n| {
            t.admit(n, io(0), 1).unwrap();
            t.hand_out(0, 5);
            t.tag(0)
        };
        let retired = fetch(&mut t, 1);
        assert!(t.retire_first(|_| true).is_some());
        let committed = fetch(&mut t, 2);
        assert_eq!(t.commit(0), Some(2));
        // Two more resets of the same slot.
        for n in 3..5 {
            fetch(&mut t, n);
            assert!(t.retire_first(|_| true).is_some());
        }
        assert_eq!(t.lookup(retired, 5), Lookup::Stale);
        assert_eq!(t.lookup(committed, 5), Lookup::Unknown, "committed once");
        assert_eq!(
            t.lookup(t.tag(0) + (1 << 16), 5),
            Lookup::Unknown,
            "not yet"
        );
        // A requeued SRB committed by the next server counts as committed.
        let requeued = fetch(&mut t, 6);
        assert_eq!(t.requeue(0, 5), 1);
        t.hand_out(0, 6);
        assert_eq!(t.lookup(requeued, 5), Lookup::Foreign);
        assert_eq!(t.commit(0), Some(6));
        assert_eq!(t.lookup(requeued, 6), Lookup::Unknown);
        // Past the history, an old tag is stale whatever its fate.
        for n in 0..HISTORY as u32 {
            fetch(&mut t, n);
            t.commit(0);
        }
        assert_eq!(t.lookup(committed, 5), Lookup::Stale);
        assert_eq!(t.entries[0].incarnation, 1);
    }

    #[test]
    fn a_write_taken_from_its_server_fences_the_lun_until_that_server_lets_go() {
        let mut t = table();
        let write = Io {
            op: DataOp::Write,
            ..io(0)
        };
        for (n, io) in [(0, write), (1, io(0)), (2, write), (3, write)] {
            t.admit(n, io, 1).unwrap();
        }
        t.admit(4, io(1), 1).unwrap();
        t.hand_out(0, 5);
        t.hand_out(1, 5);
        t.hand_out(2, 6);
        let (w0, r1, w2) = (t.tag(0), t.tag(1), t.tag(2));
        // A LUN reset: the READ is simply stale, each WRITE fences LUN 0.
        let mut reset = std::vec::Vec::new();
        while let Some((srb, _)) = t.retire_first(|held| held.lun == 0 && held.session.is_some()) {
            reset.push(srb);
        }
        assert_eq!(reset, [0, 1, 2], "every SRB handed back once");
        assert!(t.fenced(0) && !t.fenced(1));
        assert_eq!(t.outstanding(0), 1, "a fence is no SRB");
        assert_eq!(t.lookup(r1, 5), Lookup::Stale);
        assert_eq!(t.lookup(w0, 6), Lookup::Stale, "only its server lifts it");
        assert_eq!(t.lookup(w0, 5), Lookup::Fenced { slot: 0 });
        // Its server commits it: one fence left, and the tag is stale from now on.
        assert!(t.unfence(0));
        assert!(!t.unfence(0), "once");
        assert_eq!(t.lookup(w0, 5), Lookup::Stale);
        assert!(t.fenced(0));
        // The other server's session ends: its fence goes.
        t.unfence_session(6);
        assert!(!t.fenced(0));
        assert_eq!(t.lookup(w2, 6), Lookup::Stale);
        // The fenced slots are free again, the queued WRITE was never fenced.
        let mut left = std::vec::Vec::new();
        while let Some((srb, _)) = t.retire_first(|_| true) {
            left.push(srb);
        }
        assert_eq!(left, [3, 4]);
        assert!(!t.fenced(0));
        for n in 0..TAGS as u32 {
            t.admit(n, io(2), 1).unwrap();
        }
    }

    #[test]
    fn a_tag_retired_before_any_server_fetched_it_stays_unknown() {
        let mut t = table();
        t.admit(1, io(0), 1).unwrap();
        let tag = t.tag(0);
        assert!(t.retire_first(|_| true).is_some());
        assert_eq!(t.lookup(tag, 5), Lookup::Unknown, "never handed out");
    }

    #[test]
    fn the_generation_skips_zero_when_it_wraps() {
        let mut t = table();
        t.entries[0].generation = 0xFFFF_FFFF_FFFF;
        t.high_water = 1;
        t.free[0] = 0;
        t.free_len = 1;
        t.admit(1, io(0), 1).unwrap();
        assert_eq!(t.tag(0) >> 16, 1);
    }
}
