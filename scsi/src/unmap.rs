//! UNMAP's parameter list: an 8-byte header, then 16-byte block descriptors (DISK.md §5.7).

use crate::sense::Sense;

const HEADER: usize = 8;
const DESCRIPTOR: usize = 16;

/// The (LBA, block count) ranges of a validated UNMAP parameter list.
#[derive(Clone, Debug)]
pub struct UnmapRanges<'a> {
    descriptors: &'a [u8],
}

impl Iterator for UnmapRanges<'_> {
    type Item = (u64, u32);

    fn next(&mut self) -> Option<(u64, u32)> {
        let (descriptor, rest) = self.descriptors.split_at_checked(DESCRIPTOR)?;
        self.descriptors = rest;
        let lba = u64::from_be_bytes(descriptor[..8].try_into().ok()?);
        let blocks = u32::from_be_bytes(descriptor[8..12].try_into().ok()?);
        Some((lba, blocks))
    }
}

/// Validates an UNMAP parameter list of which the CDB announced `list` (the bytes actually
/// transferred).
///
/// # Errors
///
/// INVALID FIELD IN PARAMETER LIST when the header's lengths disagree with each other or with
/// the bytes, or the descriptor length is not a multiple of 16.
pub fn unmap_ranges(list: &[u8]) -> Result<UnmapRanges<'_>, Sense> {
    if list.is_empty() {
        // A parameter list length of 0 unmaps nothing (SBC).
        return Ok(UnmapRanges { descriptors: &[] });
    }
    let bad = Sense::INVALID_FIELD_IN_PARAMETER_LIST;
    let header = list.get(..HEADER).ok_or(bad)?;
    let data_len = usize::from(u16::from_be_bytes([header[0], header[1]]));
    let descriptors_len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    if data_len + 2 > list.len()
        || descriptors_len + 6 > data_len
        || !descriptors_len.is_multiple_of(DESCRIPTOR)
    {
        return Err(bad);
    }
    Ok(UnmapRanges {
        descriptors: &list[HEADER..HEADER + descriptors_len],
    })
}

/// Writes an UNMAP parameter list for `ranges` into `out`; returns its length, or `None` if
/// `out` is too small or the list would exceed what its 16-bit lengths can say.
pub fn write_unmap_list(ranges: &[(u64, u32)], out: &mut [u8]) -> Option<usize> {
    let descriptors_len = ranges.len().checked_mul(DESCRIPTOR)?;
    let total = HEADER + descriptors_len;
    if total - 2 > usize::from(u16::MAX) {
        return None;
    }
    let out = out.get_mut(..total)?;
    out[..2].copy_from_slice(&((total - 2) as u16).to_be_bytes());
    out[2..4].copy_from_slice(&(descriptors_len as u16).to_be_bytes());
    out[4..HEADER].fill(0);
    for (descriptor, &(lba, blocks)) in out[HEADER..].chunks_exact_mut(DESCRIPTOR).zip(ranges) {
        descriptor[..8].copy_from_slice(&lba.to_be_bytes());
        descriptor[8..12].copy_from_slice(&blocks.to_be_bytes());
        descriptor[12..].fill(0);
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    #[test]
    fn a_list_round_trips_and_bad_lengths_are_refused() {
        let mut buf = [0u8; 64];
        let n = write_unmap_list(&[(5, 10), (100, 1)], &mut buf).unwrap();
        assert_eq!(n, 40);
        let ranges: Vec<_> = unmap_ranges(&buf[..n]).unwrap().collect();
        assert_eq!(ranges, [(5, 10), (100, 1)]);
        assert_eq!(
            unmap_ranges(&buf[..n - 1]).err(),
            Some(Sense::INVALID_FIELD_IN_PARAMETER_LIST)
        );
        buf[3] = 17;
        assert!(
            unmap_ranges(&buf[..n]).is_err(),
            "descriptor length not a multiple of 16"
        );
        assert_eq!(unmap_ranges(&[]).map(|r| r.count()).ok(), Some(0));
        assert!(unmap_ranges(&[0, 6, 0]).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_lists_never_read_outside(bytes in proptest::collection::vec(any::<u8>(), 0..120)) {
            if let Ok(ranges) = unmap_ranges(&bytes) {
                prop_assert!(ranges.count() * DESCRIPTOR + HEADER <= bytes.len().max(HEADER));
            }
        }
    }
}
