//! Servers: a session is a handle (its FILE_OBJECT) with an ATTACH parked for one LUN, from
//! the ATTACH until it completes. The ATTACH's cancellation is the server's death: a server's
//! parked FETCHes cannot tell it (with every tag at the server none is parked), its ATTACH
//! always can. docs/DATAPATH.md §3.

use revcall_protocol::MAX_LUNS;

/// Sessions per adapter: several servers for each of the eight LUNs.
pub const MAX_SESSIONS: usize = 32;

/// A session's slot. All-zero bytes are a free slot.
#[derive(Clone, Copy)]
struct Slot {
    /// The FILE_OBJECT's address; 0: free.
    file: usize,
    lun: u8,
    /// Bumped at each ATTACH in this slot, so what a parked IRP remembers of an ended session
    /// never matches the next one.
    epoch: u32,
    /// The session's FETCHes parked now: a later one takes no work before them.
    fetches: u16,
}

/// Names one session for as long as it lives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionId {
    pub index: u8,
    pub epoch: u32,
}

/// A live session, as a request finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Session {
    pub id: SessionId,
    pub lun: u8,
}

/// # Invariants
///
/// A FILE_OBJECT is in at most one slot. `fetches_of_lun[lun]` is the sum of the live sessions'
/// `fetches` for `lun`. All-zero bytes are the empty table.
pub struct Sessions {
    slots: [Slot; MAX_SESSIONS],
    /// What HwStartIo asks before it looks for a parked FETCH to hand its SRB to.
    fetches_of_lun: [u32; MAX_LUNS],
}

impl Sessions {
    pub const fn new() -> Self {
        const FREE: Slot = Slot {
            file: 0,
            lun: 0,
            epoch: 0,
            fetches: 0,
        };
        Self {
            slots: [FREE; MAX_SESSIONS],
            fetches_of_lun: [0; MAX_LUNS],
        }
    }

    /// The session of the handle `file`.
    pub fn of_file(&self, file: usize) -> Option<Session> {
        let index = self
            .slots
            .iter()
            .position(|slot| file != 0 && slot.file == file)?;
        self.session(index)
    }

    fn session(&self, index: usize) -> Option<Session> {
        let slot = self.slots.get(index).filter(|slot| slot.file != 0)?;
        Some(Session {
            id: SessionId {
                index: index as u8,
                epoch: slot.epoch,
            },
            lun: slot.lun,
        })
    }

    /// The session `id` names, if it is still live.
    pub fn live(&self, id: SessionId) -> Option<Session> {
        self.session(usize::from(id.index))
            .filter(|session| session.id == id)
    }

    /// Whether `id` names a session that is still live.
    pub fn is_live(&self, id: SessionId) -> bool {
        self.slots
            .get(usize::from(id.index))
            .is_some_and(|slot| slot.file != 0 && slot.epoch == id.epoch)
    }

    /// Whether some session serves `lun`.
    pub fn serves(&self, lun: u8) -> bool {
        self.slots
            .iter()
            .any(|slot| slot.file != 0 && slot.lun == lun)
    }

    /// The id the next [`open`](Self::open) will give, if a slot is free.
    pub fn next(&self) -> Option<SessionId> {
        let index = self.slots.iter().position(|slot| slot.file == 0)?;
        Some(SessionId {
            index: index as u8,
            epoch: self.slots[index].epoch.wrapping_add(1),
        })
    }

    /// Opens the session [`next`](Self::next) named.
    pub fn open(&mut self, id: SessionId, file: usize, lun: u8) {
        if let Some(slot) = self.slots.get_mut(usize::from(id.index)) {
            *slot = Slot {
                file,
                lun,
                epoch: id.epoch,
                fetches: 0,
            };
        }
    }

    /// Counts a FETCH of `id` parked (`parked`) or taken from the queue (`!parked`); a session
    /// no longer live is not counted.
    pub fn count_fetch(&mut self, id: SessionId, parked: bool) {
        if let Some(slot) = self
            .slots
            .get_mut(usize::from(id.index))
            .filter(|slot| slot.file != 0 && slot.epoch == id.epoch)
        {
            let before = slot.fetches;
            slot.fetches = if parked {
                before.saturating_add(1)
            } else {
                before.saturating_sub(1)
            };
            if let Some(of_lun) = self.fetches_of_lun.get_mut(usize::from(slot.lun)) {
                *of_lun = *of_lun - u32::from(before) + u32::from(slot.fetches);
            }
        }
    }

    /// Whether a live session of `lun` has a FETCH parked.
    pub fn fetch_parked(&self, lun: u8) -> bool {
        self.fetches_of_lun
            .get(usize::from(lun))
            .is_some_and(|&n| n != 0)
    }

    /// Whether a FETCH of `id` is parked, which a newer one must not overtake.
    pub fn has_fetch_parked(&self, id: SessionId) -> bool {
        self.is_live(id) && self.slots[usize::from(id.index)].fetches != 0
    }

    /// Ends `id`; returns it if it was live.
    pub fn close(&mut self, id: SessionId) -> Option<Session> {
        let session = self.session(usize::from(id.index))?;
        if session.id != id {
            return None;
        }
        let slot = &mut self.slots[usize::from(id.index)];
        slot.file = 0;
        if let Some(of_lun) = self.fetches_of_lun.get_mut(usize::from(slot.lun)) {
            *of_lun -= u32::from(slot.fetches);
        }
        Some(session)
    }

    /// The live sessions of `lun` (every one when `lun` is `None`).
    pub fn of_lun(&self, lun: Option<u8>) -> impl Iterator<Item = Session> + '_ {
        (0..MAX_SESSIONS)
            .filter_map(|index| self.session(index))
            .filter(move |session| lun.is_none_or(|lun| session.lun == lun))
    }
}

impl Default for Sessions {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_lives_from_open_to_close_and_its_id_is_never_reused() {
        let mut sessions = Sessions::new();
        let first = sessions.next().expect("room");
        sessions.open(first, 0x1000, 3);
        assert!(sessions.serves(3) && !sessions.serves(2));
        let found = sessions.of_file(0x1000).expect("the handle's session");
        assert_eq!((found.id, found.lun), (first, 3));
        assert!(sessions.of_file(0).is_none());
        assert_eq!(sessions.close(first).map(|s| s.lun), Some(3));
        assert!(sessions.close(first).is_none(), "closed once");
        assert!(!sessions.is_live(first));
        let second = sessions.next().expect("room");
        assert_eq!(second.index, first.index);
        assert_ne!(second, first, "a new epoch");
        sessions.open(second, 0x2000, 3);
        assert!(!sessions.is_live(first) && sessions.is_live(second));
        assert_eq!(sessions.live(second).map(|s| s.lun), Some(3));
        assert!(
            sessions.live(first).is_none(),
            "another session in its slot"
        );
        sessions.count_fetch(second, true);
        sessions.count_fetch(first, true);
        assert!(sessions.has_fetch_parked(second));
        assert!(
            !sessions.has_fetch_parked(first),
            "an ended session counts nothing"
        );
        assert!(sessions.fetch_parked(3) && !sessions.fetch_parked(2));
        sessions.count_fetch(second, false);
        assert!(!sessions.has_fetch_parked(second));
        assert!(!sessions.fetch_parked(3));
        // A session that ends with FETCHes parked takes them out of its LUN's count.
        sessions.count_fetch(second, true);
        sessions.count_fetch(second, true);
        let third = sessions.next().expect("room");
        sessions.open(third, 0x3000, 3);
        sessions.count_fetch(third, true);
        sessions.close(second);
        assert!(sessions.fetch_parked(3), "the third's");
        sessions.count_fetch(third, false);
        assert!(!sessions.fetch_parked(3));
        sessions.close(third);
        let second = sessions.next().expect("room");
        sessions.open(second, 0x2000, 3);
        assert_eq!(sessions.of_lun(Some(3)).count(), 1);
        assert_eq!(sessions.of_lun(Some(4)).count(), 0);
    }

    #[test]
    fn the_table_fills() {
        let mut sessions = Sessions::new();
        for n in 0..MAX_SESSIONS {
            let id = sessions.next().expect("room");
            sessions.open(id, 0x100 + n, 0);
        }
        assert!(sessions.next().is_none());
        assert_eq!(sessions.of_lun(None).count(), MAX_SESSIONS);
    }
}
