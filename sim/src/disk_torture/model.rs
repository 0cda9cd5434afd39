//! What a CPU knows of the blocks it owns: every WRITE stamps each block it writes (which CPU,
//! which of its WRITEs, which block), so a READ can tell for each block whose bytes it holds,
//! and whether they are whole. Each CPU owns a region of each LUN and issues one SRB at a time,
//! so the order of its own SRBs is the order of the truth.

use std::collections::BTreeSet;

pub const BLOCK: usize = 512;
const MAGIC: u32 = 0x5245_5643; // "REVC"

/// One WRITE's identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp {
    pub cpu: u16,
    pub seq: u32,
}

/// What a block read back holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Content {
    /// Never written since the LUN was created (or unmapped to zeros).
    Zero,
    Written(Stamp),
    /// Neither: bytes no WRITE of this run put there, or a block torn or misplaced.
    Garbage,
}

/// What a block may hold.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Allowed {
    /// Exactly one content.
    One(Content),
    /// One of these: WRITEs that failed may or may not have reached the store, block by block.
    OneOf(BTreeSet<Content>),
    /// An UNMAP'd block: the LUN promises nothing (no LBPRZ, provisioning type 1).
    Any,
}

/// The bytes `stamp` puts into block `lba`.
pub fn block(lba: u64, stamp: Stamp) -> [u8; BLOCK] {
    let mut out = [0u8; BLOCK];
    out[..4].copy_from_slice(&MAGIC.to_le_bytes());
    out[4..6].copy_from_slice(&stamp.cpu.to_le_bytes());
    out[8..12].copy_from_slice(&stamp.seq.to_le_bytes());
    out[16..24].copy_from_slice(&lba.to_le_bytes());
    let mut state = lba ^ u64::from(stamp.seq) << 20 ^ u64::from(stamp.cpu) << 52 | 1;
    for chunk in out[24..].chunks_mut(8) {
        // xorshift64: every byte depends on the stamp and the place.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
    out
}

/// Which content `bytes`, read at `lba`, is.
pub fn content(lba: u64, bytes: &[u8]) -> Content {
    if bytes.iter().all(|&b| b == 0) {
        return Content::Zero;
    }
    let word = |at: usize, len: usize| {
        bytes.get(at..at + len).map_or(0, |b| {
            b.iter().rev().fold(0u64, |v, &x| v << 8 | u64::from(x))
        })
    };
    if word(0, 4) != u64::from(MAGIC) || word(16, 8) != lba {
        return Content::Garbage;
    }
    let stamp = Stamp {
        cpu: word(4, 2) as u16,
        seq: word(8, 4) as u32,
    };
    if bytes == block(lba, stamp) {
        Content::Written(stamp)
    } else {
        Content::Garbage
    }
}

/// A CPU's view of its region of one LUN.
pub struct Region {
    first: u64,
    blocks: Vec<Allowed>,
}

/// A READ that returned what no history allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrongBytes {
    pub lba: u64,
    pub found: Content,
    pub allowed: String,
}

impl Region {
    /// A region of a LUN just created: zeros.
    pub fn new(first: u64, count: u64) -> Self {
        Self {
            first,
            blocks: vec![Allowed::One(Content::Zero); count as usize],
        }
    }

    fn at(&mut self, lba: u64) -> &mut Allowed {
        &mut self.blocks[(lba - self.first) as usize]
    }

    /// A WRITE of `stamp` to `lba..lba + count` ended: acknowledged, or failed (each block then
    /// holds the old bytes or the new ones).
    pub fn wrote(&mut self, lba: u64, count: u32, stamp: Stamp, acknowledged: bool) {
        for at in lba..lba + u64::from(count) {
            let block = self.at(at);
            *block = match (acknowledged, std::mem::replace(block, Allowed::Any)) {
                (true, _) => Allowed::One(Content::Written(stamp)),
                (false, Allowed::Any) => Allowed::Any,
                (false, Allowed::One(old)) => {
                    Allowed::OneOf([old, Content::Written(stamp)].into_iter().collect())
                }
                (false, Allowed::OneOf(mut set)) => {
                    set.insert(Content::Written(stamp));
                    Allowed::OneOf(set)
                }
            };
        }
    }

    /// An UNMAP of `lba..lba + count` ended (acknowledged or not, the blocks may be anything).
    pub fn unmapped(&mut self, lba: u64, count: u32) {
        for at in lba..lba + u64::from(count) {
            *self.at(at) = Allowed::Any;
        }
    }

    /// A READ of `lba..` returned `data`: each block must be one it may hold; what it holds
    /// becomes what it is known to hold.
    pub fn read(&mut self, lba: u64, data: &[u8]) -> Result<(), WrongBytes> {
        for (n, bytes) in data.chunks(BLOCK).enumerate() {
            let at = lba + n as u64;
            let found = content(at, bytes);
            let block = self.at(at);
            let fits = match block {
                Allowed::One(content) => *content == found,
                Allowed::OneOf(set) => set.contains(&found),
                Allowed::Any => true,
            };
            if !fits {
                return Err(WrongBytes {
                    lba: at,
                    found,
                    allowed: format!("{block:?}"),
                });
            }
            if found != Content::Garbage {
                *block = Allowed::One(found);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Stamp = Stamp { cpu: 1, seq: 7 };
    const B: Stamp = Stamp { cpu: 1, seq: 8 };

    fn bytes(lba: u64, stamps: &[Option<Stamp>]) -> Vec<u8> {
        stamps
            .iter()
            .enumerate()
            .flat_map(|(n, s)| s.map_or([0; BLOCK], |s| block(lba + n as u64, s)))
            .collect()
    }

    #[test]
    fn a_block_tells_its_stamp_and_any_damage() {
        let data = block(40, A);
        assert_eq!(content(40, &data), Content::Written(A));
        assert_eq!(content(41, &data), Content::Garbage, "misplaced");
        let mut torn = data;
        torn[300] ^= 1;
        assert_eq!(content(40, &torn), Content::Garbage);
        assert_eq!(content(40, &[0; BLOCK]), Content::Zero);
    }

    #[test]
    fn reads_must_show_the_last_acknowledged_write_or_a_failed_ones() {
        let mut region = Region::new(100, 4);
        region.wrote(100, 2, A, true);
        assert_eq!(
            region.read(100, &bytes(100, &[Some(A), Some(A), None])),
            Ok(())
        );
        assert!(
            region.read(100, &bytes(100, &[None])).is_err(),
            "A was acknowledged"
        );
        region.wrote(100, 2, B, false);
        // Block by block, the old or the new.
        assert_eq!(region.read(100, &bytes(100, &[Some(A), Some(B)])), Ok(()));
        // What a READ saw is what the block holds from then on.
        assert!(region.read(100, &bytes(100, &[Some(B)])).is_err());
        region.unmapped(102, 2);
        let garbage = vec![0x77; 2 * BLOCK];
        assert_eq!(region.read(102, &garbage), Ok(()), "unmapped: anything");
    }
}
