//! The adapter's virtual disks: up to [`MAX_LUNS`] logical units on target 0, created and
//! removed through the channel (LUN_CREATE, LUN_REMOVE), each with the identity LUN_CREATE
//! gave it. docs/DATAPATH.md §5.

use arrayvec::ArrayVec;
use revcall_protocol::{LunEntry, LunSpec, MAX_LUNS};

use crate::error::Status;

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
    spec: LunSpec,
}

pub struct LunTable {
    slots: [Slot; MAX_LUNS],
}

impl LunTable {
    pub const fn new() -> Self {
        const EMPTY: Slot = Slot {
            present: false,
            served: false,
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

    /// LUN `lun`'s identity, if it exists.
    pub fn get(&self, lun: u8) -> Option<&LunSpec> {
        self.slots
            .get(usize::from(lun))
            .filter(|slot| slot.present)
            .map(|slot| &slot.spec)
    }

    /// Records that a server attached to `lun`.
    pub fn mark_served(&mut self, lun: u8) {
        if let Some(slot) = self.slots.get_mut(usize::from(lun)) {
            slot.served = slot.present;
        }
    }

    /// Whether a server ever attached to `lun` since it was created: until one does, its
    /// SRBs wait for the server its creator is about to start; once its last server is gone
    /// they fail (docs/DATAPATH.md §3).
    pub fn was_served(&self, lun: u8) -> bool {
        self.slots
            .get(usize::from(lun))
            .is_some_and(|slot| slot.present && slot.served)
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
        assert_eq!(table.remove(3), Ok(()));
        assert_eq!(table.remove(3), Err(Status::NO_SUCH_DEVICE));
        assert_eq!(table.remove(99), Err(Status::NO_SUCH_DEVICE));
        table.mark_served(4);
        assert!(table.was_served(4) && !table.was_served(5));
        assert_eq!(table.create(spec(21)), Ok(3));
        assert!(!table.was_served(3), "a new LUN has not been served yet");
        assert_eq!(table.get(3).map(|s| s.block_count), Some(1021));
        assert_eq!(table.entries().len(), MAX_LUNS);
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
