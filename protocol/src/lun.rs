//! The records that manage virtual disks (LUNs): LUN_CREATE, LUN_REMOVE and LUN_LIST, with
//! their replies. docs/DATAPATH.md §1 is the specification.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// LUNs per adapter (target 0, LUN 0..=7).
pub const MAX_LUNS: usize = 8;

/// The queue depth a LUN gets when LUN_CREATE asks for 0.
pub const DEFAULT_QUEUE_DEPTH: u32 = 128;

/// The deepest queue a LUN may ask for: the default per-LU depth Storport gives a virtual
/// miniport (docs/STORPORT-NOTES.md, DISK.md §3.4).
pub const MAX_QUEUE_DEPTH: u32 = 250;

/// Bits of [`LunCreateRequest::flags`].
pub struct LunFlags;

impl LunFlags {
    /// WRITE fails DATA PROTECT; MODE SENSE reports WP.
    pub const READ_ONLY: u32 = 1;
    /// The caching page reports WCE, so Windows sends SYNCHRONIZE CACHE (a FLUSH to the server).
    pub const WRITE_CACHE: u32 = 2;
    /// VPD B2 reports LBPU, so Windows sends UNMAP.
    pub const UNMAP: u32 = 4;
    pub const ALL: u32 = Self::READ_ONLY | Self::WRITE_CACHE | Self::UNMAP;
}

/// LUN_CREATE body: what the new disk is.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct LunCreateRequest {
    pub block_count: u64,
    /// 512 or 4096.
    pub block_size: u32,
    /// [`LunFlags`] bits.
    pub flags: u32,
    /// SRBs Storport may have outstanding on this LUN: 0 (default) or 1..=[`MAX_QUEUE_DEPTH`].
    pub queue_depth: u32,
    pub reserved: u32,
    /// The disk's serial number (VPD 0x80): printable ASCII, space-padded, not blank.
    pub serial: [u8; 32],
    /// The disk's identifier (VPD 0x83, NAA): not all zero, or Windows may give two disks one
    /// number (WNBD's lesson, DISK.md §3.3).
    pub unique_id: [u8; 16],
}

/// A validated LUN_CREATE.
pub type LunSpec = LunCreateRequest;

impl LunCreateRequest {
    /// The first field out of its documented range, if any.
    pub fn invalid_field(&self) -> Option<&'static str> {
        if self.block_size != 512 && self.block_size != 4096 {
            return Some("block_size");
        }
        let bytes = self.block_count.checked_mul(u64::from(self.block_size));
        if self.block_count == 0 || bytes.is_none() {
            return Some("block_count");
        }
        if self.flags & !LunFlags::ALL != 0 {
            return Some("flags");
        }
        if self.queue_depth > MAX_QUEUE_DEPTH {
            return Some("queue_depth");
        }
        let printable = self.serial.iter().all(|b| (0x20..=0x7E).contains(b));
        if !printable || self.serial.iter().all(|&b| b == b' ') {
            return Some("serial");
        }
        if self.unique_id == [0; 16] {
            return Some("unique_id");
        }
        None
    }

    /// The queue depth this LUN gets.
    pub fn depth(&self) -> u32 {
        match self.queue_depth {
            0 => DEFAULT_QUEUE_DEPTH,
            depth => depth,
        }
    }
}

/// LUN_REMOVE body.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct LunRemoveRequest {
    pub lun: u32,
    pub reserved: u32,
}

/// LUN_CREATE reply body.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct LunCreateReply {
    pub lun: u32,
    pub reserved: u32,
}

/// LUN_LIST reply body, followed by `count` [`LunEntry`]s.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct LunListReply {
    pub count: u32,
    pub reserved: u32,
}

/// One LUN in a LUN_LIST reply.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
pub struct LunEntry {
    pub lun: u32,
    /// [`LunFlags`] bits.
    pub flags: u32,
    pub block_count: u64,
    pub block_size: u32,
    pub queue_depth: u32,
    /// SRBs Storport has handed this LUN and revcall has not completed yet.
    pub outstanding: u32,
    pub reserved: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn spec() -> LunCreateRequest {
        let mut serial = [b' '; 32];
        serial[..6].copy_from_slice(b"RC0001");
        LunCreateRequest {
            block_count: 1 << 17,
            block_size: 512,
            flags: LunFlags::WRITE_CACHE | LunFlags::UNMAP,
            queue_depth: 0,
            reserved: 0,
            serial,
            unique_id: [0x5A; 16],
        }
    }

    #[test]
    fn a_good_spec_has_no_invalid_field() {
        assert_eq!(spec().invalid_field(), None);
        assert_eq!(spec().depth(), DEFAULT_QUEUE_DEPTH);
        assert_eq!(size_of::<LunCreateRequest>(), 72);
        assert_eq!(size_of::<LunEntry>(), 32);
    }

    #[test]
    fn each_field_out_of_range_is_named() {
        type Spoil = fn(&mut LunCreateRequest);
        let cases: [(Spoil, &str); 8] = [
            (|s| s.block_size = 1024, "block_size"),
            (|s| s.block_count = 0, "block_count"),
            (|s| s.block_count = u64::MAX / 256, "block_count"),
            (|s| s.flags = 8, "flags"),
            (|s| s.queue_depth = MAX_QUEUE_DEPTH + 1, "queue_depth"),
            (|s| s.serial = [b' '; 32], "serial"),
            (|s| s.serial[3] = 0, "serial"),
            (|s| s.unique_id = [0; 16], "unique_id"),
        ];
        for (spoil, field) in cases {
            let mut bad = spec();
            spoil(&mut bad);
            assert_eq!(bad.invalid_field(), Some(field));
        }
    }
}
