//! The adapter's virtual disks: up to [`MAX_LUNS`] logical units on target 0, created and
//! removed through the channel (LUN_CREATE, LUN_REMOVE), each with the identity LUN_CREATE
//! gave it. docs/DATAPATH.md §5.

use arrayvec::ArrayVec;
use revcall_protocol::{LunEntry, LunSpec, MAX_LUNS};

use crate::error::Status;

/// Ticks of the grace timer (one a second) a LUN whose last server died waits for another.
/// 5 s: below disk.sys's 10 s TimeOutValue, so Storport's resets do not start meanwhile.
pub const GRACE_TICKS: u8 = 5;

/// One logical unit's slot.
///
/// # Invariants
///
/// All-zero bytes are an empty slot (the adapter state's invariant).
#[derive(Clone, Copy)]
struct Slot {
    present: bool,
    /// A server has attached since the LUN was created.
    served: bool,
    /// Grace ticks left since its last server died (0: none running).
    grace: u8,
    /// Its last server died and the grace period ended with no other attached: its I/O
    /// fails until one does (docs/DATAPATH.md §3).
    orphaned: bool,
    /// Bumped by each LUN_CREATE in this slot (never 0 for a present LUN): SRBs sent to a
    /// removed LUN are never served by the next one created under its number.
    incarnation: u32,
    spec: LunSpec,
}

pub struct LunTable {
    slots: [Slot; MAX_LUNS],
}

impl crate::disk::Units for LunTable {
    fn unit(&self, lun: u8) -> Option<(&LunSpec, u32)> {
        let slot = self.present(lun)?;
        Some((&slot.spec, slot.incarnation))
    }

    fn luns(&self) -> ArrayVec<u8, MAX_LUNS> {
        LunTable::luns(self).collect()
    }
}

impl LunTable {
    pub const fn new() -> Self {
        const EMPTY: Slot = Slot {
            present: false,
            served: false,
            grace: 0,
            orphaned: false,
            incarnation: 0,
            spec: LunSpec {
                block_count: 0,
                block_size: 0,
                flags: 0,
                queue_depth: 0,
                reserved: 0,
                serial: [0; 32],
                unique_id: [0; 16],
            },
        };
        Self {
            slots: [EMPTY; MAX_LUNS],
        }
    }

    /// Adds a LUN with `spec` (already validated by the protocol decoder) at the lowest free
    /// number.
    ///
    /// # Errors
    ///
    /// `QUOTA_EXCEEDED` when every LUN number is taken; `OBJECT_NAME_COLLISION` when another
    /// LUN has the same serial number or unique id (Windows would take them for one disk).
    /// Ids are compared as VPD 0x83 reports them (`revcall_scsi::naa`), so two that differ
    /// only in the nibble the NAA designator replaces clash too.
    pub fn create(&mut self, spec: LunSpec) -> Result<u8, Status> {
        let id = revcall_scsi::naa(spec.unique_id);
        let clash = self.slots.iter().any(|slot| {
            slot.present
                && (slot.spec.serial == spec.serial || revcall_scsi::naa(slot.spec.unique_id) == id)
        });
        if clash {
            return Err(Status::OBJECT_NAME_COLLISION);
        }
        let (lun, slot) = self
            .slots
            .iter_mut()
            .enumerate()
            .find(|(_, slot)| !slot.present)
            .ok_or(Status::QUOTA_EXCEEDED)?;
        *slot = Slot {
            present: true,
            served: false,
            grace: 0,
            orphaned: false,
            incarnation: slot.incarnation.wrapping_add(1).max(1),
            spec,
        };
        Ok(lun as u8)
    }

    /// Removes LUN `lun`.
    ///
    /// # Errors
    ///
    /// `NO_SUCH_DEVICE` if there is no such LUN.
    pub fn remove(&mut self, lun: u32) -> Result<(), Status> {
        let slot = usize::try_from(lun)
            .ok()
            .and_then(|lun| self.slots.get_mut(lun))
            .filter(|slot| slot.present)
            .ok_or(Status::NO_SUCH_DEVICE)?;
        slot.present = false;
        Ok(())
    }

    /// LUN `lun`'s slot, if the LUN exists.
    fn present(&self, lun: u8) -> Option<&Slot> {
        self.slots.get(usize::from(lun)).filter(|slot| slot.present)
    }

    /// LUN `lun`'s identity, if it exists.
    pub fn get(&self, lun: u8) -> Option<&LunSpec> {
        self.present(lun).map(|slot| &slot.spec)
    }

    /// Which LUN of its number `lun` is now: `None` if there is none.
    pub fn incarnation(&self, lun: u8) -> Option<u32> {
        self.present(lun).map(|slot| slot.incarnation)
    }

    /// Whether `incarnation` of `lun` is the one present now.
    pub fn is_current(&self, lun: u8, incarnation: u32) -> bool {
        self.incarnation(lun) == Some(incarnation)
    }

    /// Records that a server attached to `lun`: a grace period running ends.
    pub fn mark_served(&mut self, lun: u8) {
        if let Some(slot) = self.slots.get_mut(usize::from(lun)) {
            slot.served = slot.present;
            slot.grace = 0;
            slot.orphaned = false;
        }
    }

    /// The last server of `lun` died: its grace period starts ([`GRACE_TICKS`] ticks).
    pub fn start_grace(&mut self, lun: u8) {
        if let Some(slot) = self.slots.get_mut(usize::from(lun))
            && slot.present
            && slot.served
        {
            slot.grace = GRACE_TICKS;
            slot.orphaned = false;
        }
    }

    /// Whether a grace period is running for some LUN.
    pub fn in_grace(&self) -> bool {
        self.slots
            .iter()
            .any(|slot| slot.present && slot.grace != 0)
    }

    /// One tick of the grace timer: the LUNs whose grace period just ended.
    pub fn tick(&mut self) -> ArrayVec<u8, MAX_LUNS> {
        self.end_grace(|grace| grace.saturating_sub(1))
    }

    /// Ends every grace period at once (there is no timer to measure them).
    pub fn expire(&mut self) -> ArrayVec<u8, MAX_LUNS> {
        self.end_grace(|_| 0)
    }

    fn end_grace(&mut self, next: impl Fn(u8) -> u8) -> ArrayVec<u8, MAX_LUNS> {
        let mut ended = ArrayVec::new();
        for (lun, slot) in self.slots.iter_mut().enumerate() {
            if slot.present && slot.grace != 0 {
                slot.grace = next(slot.grace);
                if slot.grace == 0 {
                    slot.orphaned = true;
                    ended.push(lun as u8);
                }
            }
        }
        ended
    }

    /// Whether `lun`'s I/O fails: it had a server, the last one died, and the grace period
    /// after it ended with none attached again. A LUN not served yet waits for the server its
    /// creator is about to start; one in its grace period for a restarted server
    /// (docs/DATAPATH.md §3). One flag: HwStartIo asks for every SRB.
    pub fn orphaned(&self, lun: u8) -> bool {
        self.present(lun).is_some_and(|slot| slot.orphaned)
    }

    /// The LUNs in ascending order (REPORT LUNS, LUN_LIST).
    pub fn luns(&self) -> impl Iterator<Item = u8> + '_ {
        (0..MAX_LUNS as u8).filter(|&lun| self.get(lun).is_some())
    }

    /// LUN_LIST's entries.
    pub fn entries(&self) -> ArrayVec<LunEntry, MAX_LUNS> {
        self.luns()
            .filter_map(|lun| {
                let spec = self.get(lun)?;
                Some(LunEntry {
                    lun: lun.into(),
                    flags: spec.flags,
                    block_count: spec.block_count,
                    block_size: spec.block_size,
                    queue_depth: spec.depth(),
                    outstanding: 0,
                    reserved: 0,
                })
            })
            .collect()
    }
}

impl Default for LunTable {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(n: u8) -> LunSpec {
        let mut serial = [b' '; 32];
        serial[0] = b'A' + n;
        LunSpec {
            block_count: 1000 + u64::from(n),
            block_size: 512,
            serial,
            unique_id: [n + 1; 16],
            ..LunSpec::default()
        }
    }

    #[test]
    fn luns_take_the_lowest_free_number_up_to_the_limit() {
        let mut table = LunTable::new();
        for n in 0..MAX_LUNS as u8 {
            assert_eq!(table.create(spec(n)), Ok(n));
        }
        assert_eq!(table.create(spec(20)), Err(Status::QUOTA_EXCEEDED));
        let first = table.incarnation(3).expect("LUN 3");
        assert_eq!(table.remove(3), Ok(()));
        assert_eq!(table.incarnation(3), None);
        assert_eq!(table.remove(3), Err(Status::NO_SUCH_DEVICE));
        assert_eq!(table.remove(99), Err(Status::NO_SUCH_DEVICE));
        assert_eq!(table.create(spec(21)), Ok(3));
        assert!(
            !table.is_current(3, first),
            "another LUN under the same number"
        );
        assert!(table.is_current(3, table.incarnation(3).unwrap()));
        assert!(!table.orphaned(3), "a new LUN waits for its first server");
        assert_eq!(table.get(3).map(|s| s.block_count), Some(1021));
        assert_eq!(table.entries().len(), MAX_LUNS);
    }

    #[test]
    fn a_lun_whose_server_died_waits_out_its_grace_then_fails() {
        let mut table = LunTable::new();
        let lun = table.create(spec(0)).unwrap();
        table.start_grace(lun);
        assert!(!table.in_grace(), "never served: no grace to run");
        table.mark_served(lun);
        assert!(!table.orphaned(lun), "served");
        table.start_grace(lun);
        assert!(table.in_grace() && !table.orphaned(lun));
        for _ in 1..GRACE_TICKS {
            assert!(table.tick().is_empty());
        }
        assert_eq!(table.tick().as_slice(), [lun]);
        assert!(!table.in_grace() && table.orphaned(lun));
        table.mark_served(lun);
        assert!(
            !table.in_grace() && !table.orphaned(lun),
            "a server came back"
        );
        table.start_grace(lun);
        assert_eq!(table.expire().as_slice(), [lun]);
        assert!(table.orphaned(lun));
    }

    #[test]
    fn two_luns_never_share_a_serial_or_an_id() {
        let mut table = LunTable::new();
        assert_eq!(table.create(spec(0)), Ok(0));
        let same_serial = LunSpec {
            unique_id: [9; 16],
            ..spec(0)
        };
        assert_eq!(
            table.create(same_serial),
            Err(Status::OBJECT_NAME_COLLISION)
        );
        let same_id = LunSpec {
            serial: spec(5).serial,
            ..spec(0)
        };
        assert_eq!(table.create(same_id), Err(Status::OBJECT_NAME_COLLISION));
        // The NAA designator keeps the low nibble of the first byte only.
        let mut naa_twin = spec(0).unique_id;
        naa_twin[0] ^= 0xF0;
        let same_designator = LunSpec {
            serial: spec(6).serial,
            unique_id: naa_twin,
            ..spec(0)
        };
        assert_eq!(
            table.create(same_designator),
            Err(Status::OBJECT_NAME_COLLISION)
        );
        assert_eq!(table.luns().collect::<ArrayVec<u8, 8>>().as_slice(), [0]);
    }

    #[test]
    fn an_all_zero_table_is_empty() {
        let table = LunTable::new();
        assert_eq!(table.luns().count(), 0);
        assert!(table.get(0).is_none());
    }
}
