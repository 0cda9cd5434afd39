//! The replies a virtual disk answers itself (DISK.md §5.1–§5.5): each built whole in a small
//! scratch buffer, then cut to the allocation length and the caller's buffer.

use crate::cdb::Command;
use crate::sense::{Sense, SenseKey};

/// INQUIRY's vendor identification (8 bytes, space-padded).
pub const VENDOR: &[u8; 8] = b"revcall ";
/// INQUIRY's product identification (16 bytes).
pub const PRODUCT: &[u8; 16] = b"user-mode disk  ";
/// INQUIRY's product revision (4 bytes).
pub const REVISION: &[u8; 4] = b"0002";

/// UNMAP block descriptors accepted per command (VPD B0): the ranges travel to the server in
/// the FETCH reply, so they are kept few.
pub const MAX_UNMAP_DESCRIPTORS: u32 = 64;

/// The NAA IEEE Registered Extended designator VPD 0x83 reports for a LUN's unique id: its
/// first nibble is the NAA type (6), the other 124 bits are the id's.
pub const fn naa(unique_id: [u8; 16]) -> [u8; 16] {
    let mut naa = unique_id;
    naa[0] = 0x60 | (naa[0] & 0x0F);
    naa
}

/// What a logical unit says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity<'a> {
    pub block_size: u32,
    pub block_count: u64,
    pub read_only: bool,
    /// The caching page says WCE, so Windows sends SYNCHRONIZE CACHE.
    pub write_cache: bool,
    /// VPD B2 says LBPU, so Windows sends UNMAP. LBPRZ (unmapped blocks read as zeros) is
    /// not claimed: that would be a promise about every server's backend.
    pub unmap: bool,
    /// Printable ASCII (VPD 0x80), trailing spaces allowed.
    pub serial: &'a [u8],
    /// The NAA identifier of VPD 0x83 (its first nibble is forced to 6, IEEE Registered
    /// Extended).
    pub unique_id: [u8; 16],
    /// The largest transfer, in blocks (VPD B0), from the adapter's MaximumTransferLength.
    pub max_transfer_blocks: u32,
}

/// LBA OUT OF RANGE unless `blocks` blocks from `lba` lie within `block_count`.
///
/// # Errors
///
/// [`Sense::LBA_OUT_OF_RANGE`].
pub fn check_range(lba: u64, blocks: u32, block_count: u64) -> Result<(), Sense> {
    match lba.checked_add(blocks.into()) {
        Some(end) if end <= block_count => Ok(()),
        _ => Err(Sense::LBA_OUT_OF_RANGE),
    }
}

/// Scratch for one reply: the largest is a VPD page (64 bytes) or REPORT LUNS of 256 LUNs.
const SCRATCH: usize = 8 + 8 * 256;

struct Reply {
    bytes: [u8; SCRATCH],
    len: usize,
}

impl Reply {
    fn new() -> Self {
        Self {
            bytes: [0; SCRATCH],
            len: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.bytes[self.len..self.len + bytes.len()].copy_from_slice(bytes);
        self.len += bytes.len();
    }

    /// Copies `min(len, alloc, out.len())` bytes out.
    fn deliver(&self, alloc: usize, out: &mut [u8]) -> usize {
        let n = self.len.min(alloc).min(out.len());
        out[..n].copy_from_slice(&self.bytes[..n]);
        n
    }
}

/// Answers `command` for a logical unit (`None`: no unit at this address). `luns` are the
/// adapter's units, for REPORT LUNS. Returns the bytes written to `out`.
///
/// Data commands (READ, WRITE, SYNCHRONIZE CACHE, UNMAP) are not answered here: they go to the
/// unit's server, and this refuses them INVALID OPCODE.
///
/// # Errors
///
/// The sense data of the CHECK CONDITION to report.
pub fn answer(
    command: &Command,
    unit: Option<&Identity<'_>>,
    luns: &[u8],
    out: &mut [u8],
) -> Result<usize, Sense> {
    let mut reply = Reply::new();
    let alloc = match (*command, unit) {
        (Command::ReportLuns { alloc }, _) => {
            report_luns(&mut reply, luns);
            alloc as usize
        }
        (
            Command::Inquiry {
                evpd: false, alloc, ..
            },
            None,
        ) => {
            // Peripheral qualifier 3, device type 0x1F: no logical unit here.
            standard_inquiry(&mut reply, 0x7F);
            alloc.into()
        }
        (_, None) => return Err(Sense::LUN_NOT_SUPPORTED),
        (Command::TestUnitReady, Some(_)) => 0,
        (Command::RequestSense { alloc }, Some(_)) => {
            let mut sense = [0u8; crate::FIXED_SENSE_LEN];
            let none = Sense {
                key: SenseKey::NoSense,
                asc: 0,
                ascq: 0,
            };
            none.write_fixed(&mut sense);
            reply.push(&sense);
            alloc.into()
        }
        (
            Command::Inquiry {
                evpd: false, alloc, ..
            },
            Some(_),
        ) => {
            standard_inquiry(&mut reply, 0x00);
            alloc.into()
        }
        (Command::Inquiry { page, alloc, .. }, Some(unit)) => {
            vpd(&mut reply, page, unit)?;
            alloc.into()
        }
        (Command::ReadCapacity10, Some(unit)) => {
            let last = unit.block_count - 1;
            // Above 2^32 blocks: 0xFFFFFFFF tells the class driver to use READ CAPACITY(16).
            let last = u32::try_from(last).unwrap_or(u32::MAX);
            reply.push(&last.to_be_bytes());
            reply.push(&unit.block_size.to_be_bytes());
            8
        }
        (Command::ReadCapacity16 { alloc }, Some(unit)) => {
            reply.push(&(unit.block_count - 1).to_be_bytes());
            reply.push(&unit.block_size.to_be_bytes());
            reply.push(&[0, 0]);
            // LBPME when unmap is on; no LBPRZ (see `Identity::unmap`).
            reply.push(&[if unit.unmap { 0x80 } else { 0 }, 0]);
            reply.push(&[0; 16]);
            alloc as usize
        }
        (
            Command::ModeSense {
                ten,
                dbd,
                page,
                subpage,
                alloc,
                ..
            },
            Some(unit),
        ) => {
            mode_sense(&mut reply, ten, dbd, page, subpage, unit)?;
            alloc.into()
        }
        (Command::StartStopUnit { .. } | Command::MediumRemoval { .. }, Some(_)) => 0,
        (Command::Verify { lba, blocks }, Some(unit)) => {
            check_range(lba, blocks, unit.block_count)?;
            0
        }
        (
            Command::Read(_)
            | Command::Write(_)
            | Command::SynchronizeCache { .. }
            | Command::Unmap { .. },
            Some(_),
        ) => return Err(Sense::INVALID_OPCODE),
    };
    Ok(reply.deliver(alloc, out))
}

fn standard_inquiry(reply: &mut Reply, peripheral: u8) {
    // Version 6 (SPC-4), response format 2 with HiSup, 31 more bytes, CmdQue.
    reply.push(&[peripheral, 0, 0x06, 0x12, 31, 0, 0, 0x02]);
    reply.push(VENDOR);
    reply.push(PRODUCT);
    reply.push(REVISION);
}

/// The VPD pages this unit has, ascending from 0x00 (classpnp ignores B0–B2 otherwise).
fn vpd_pages(unit: &Identity<'_>) -> &'static [u8] {
    if unit.unmap {
        &[0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]
    } else {
        &[0x00, 0x80, 0x83, 0xB0, 0xB1]
    }
}

fn vpd(reply: &mut Reply, page: u8, unit: &Identity<'_>) -> Result<(), Sense> {
    if !vpd_pages(unit).contains(&page) {
        return Err(Sense::INVALID_FIELD_IN_CDB);
    }
    let mut body = Reply::new();
    match page {
        0x00 => body.push(vpd_pages(unit)),
        0x80 => body.push(unit.serial),
        0x83 => {
            // NAA (type 3), binary, associated with the logical unit.
            let naa = naa(unit.unique_id);
            body.push(&[0x01, 0x03, 0x00, 16]);
            body.push(&naa);
            // T10 vendor identification (type 1), ASCII: vendor then serial.
            body.push(&[0x02, 0x01, 0x00, (8 + unit.serial.len()) as u8]);
            body.push(VENDOR);
            body.push(unit.serial);
        }
        0xB0 => {
            let mut limits = [0u8; 0x3C];
            limits[4..8].copy_from_slice(&unit.max_transfer_blocks.to_be_bytes());
            limits[8..12].copy_from_slice(&unit.max_transfer_blocks.to_be_bytes());
            if unit.unmap {
                limits[16..20].copy_from_slice(&u32::MAX.to_be_bytes());
                limits[20..24].copy_from_slice(&MAX_UNMAP_DESCRIPTORS.to_be_bytes());
                limits[24..28].copy_from_slice(&1u32.to_be_bytes());
            }
            // `limits` starts at byte 4 of the page: offsets above are DISK.md's minus 4.
            body.push(&limits);
        }
        0xB1 => {
            let mut characteristics = [0u8; 0x3C];
            // Medium rotation rate 1: non-rotating ("no seek penalty").
            characteristics[1] = 1;
            body.push(&characteristics);
        }
        _ => {
            // 0xB2: LBPU, no LBPRZ; provisioning type 1 (resource provisioned: logical block
            // provisioning without thin-provisioning thresholds; type 0 with LBPU would
            // contradict itself).
            body.push(&[0, 0x80, 0x01, 0]);
        }
    }
    let length = body.len as u16;
    reply.push(&[0x00, page]);
    reply.push(&length.to_be_bytes());
    reply.push(&body.bytes[..body.len]);
    Ok(())
}

fn mode_sense(
    reply: &mut Reply,
    ten: bool,
    dbd: bool,
    page: u8,
    subpage: u8,
    unit: &Identity<'_>,
) -> Result<(), Sense> {
    let (caching, control) = match (page, subpage) {
        (0x08, 0) => (true, false),
        (0x0A, 0) => (false, true),
        (0x3F, 0 | 0xFF) => (true, true),
        _ => return Err(Sense::INVALID_FIELD_IN_CDB),
    };
    let mut pages = Reply::new();
    if !dbd {
        // One block descriptor: density 0, block count (saturated), block length.
        let blocks = u32::try_from(unit.block_count)
            .unwrap_or(u32::MAX)
            .min(0x00FF_FFFF);
        pages.push(&[0]);
        pages.push(&blocks.to_be_bytes()[1..]);
        pages.push(&[0]);
        pages.push(&unit.block_size.to_be_bytes()[1..]);
    }
    let descriptor_len = pages.len;
    if caching {
        // MODE_CACHING_PAGE_EX: 20 bytes; WCE, or RCD when there is no write cache.
        let mut page = [0u8; 20];
        page[0] = 0x08;
        page[1] = 0x12;
        page[2] = if unit.write_cache { 0x04 } else { 0x01 };
        pages.push(&page);
    }
    if control {
        let mut page = [0u8; 12];
        page[0] = 0x0A;
        page[1] = 0x0A;
        pages.push(&page);
    }
    // WP for a read-only unit; DPOFUA: FUA is passed to the server.
    let device_specific = if unit.read_only { 0x80 } else { 0 } | 0x10;
    if ten {
        let length = (pages.len + 6) as u16;
        reply.push(&length.to_be_bytes());
        reply.push(&[0, device_specific, 0, 0]);
        reply.push(&(descriptor_len as u16).to_be_bytes());
    } else {
        reply.push(&[
            (pages.len + 3) as u8,
            0,
            device_specific,
            descriptor_len as u8,
        ]);
    }
    reply.push(&pages.bytes[..pages.len]);
    Ok(())
}

/// REPORT LUNS: the list length, then one 8-byte entry per LUN (peripheral addressing, the
/// LUN in byte 1).
fn report_luns(reply: &mut Reply, luns: &[u8]) {
    let luns = &luns[..luns.len().min(256)];
    reply.push(&((luns.len() * 8) as u32).to_be_bytes());
    reply.push(&[0; 4]);
    for &lun in luns {
        reply.push(&[0, lun, 0, 0, 0, 0, 0, 0]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdb::{PageControl, decode, encode};
    use proptest::prelude::*;

    pub(crate) fn unit(block_count: u64) -> Identity<'static> {
        Identity {
            block_size: 512,
            block_count,
            read_only: false,
            write_cache: true,
            unmap: true,
            serial: b"RC0001",
            unique_id: [0xAB; 16],
            max_transfer_blocks: 2048,
        }
    }

    fn ask(command: Command, unit: Option<&Identity<'_>>) -> std::vec::Vec<u8> {
        let mut out = [0u8; 512];
        let n = answer(&command, unit, &[0, 3], &mut out).expect("answered");
        out[..n].to_vec()
    }

    #[test]
    fn unmap_is_announced_without_promising_zeros() {
        let u = unit(1000);
        let b2 = ask(
            Command::Inquiry {
                evpd: true,
                page: 0xB2,
                alloc: 64,
            },
            Some(&u),
        );
        assert_eq!(b2[5], 0x80, "LBPU, no LBPRZ");
        assert_eq!(b2[6] & 0x07, 1, "resource provisioned");
        let rc16 = ask(Command::ReadCapacity16 { alloc: 32 }, Some(&u));
        assert_eq!(rc16[14] & 0xC0, 0x80, "LBPME, no LBPRZ");
        let plain = Identity {
            unmap: false,
            ..unit(1000)
        };
        assert_eq!(
            ask(Command::ReadCapacity16 { alloc: 32 }, Some(&plain))[14],
            0
        );
    }

    #[test]
    fn standard_inquiry_is_a_36_byte_disk() {
        let u = unit(1000);
        let data = ask(
            Command::Inquiry {
                evpd: false,
                page: 0,
                alloc: 255,
            },
            Some(&u),
        );
        assert_eq!(data.len(), 36);
        assert_eq!(data[0], 0x00);
        assert_eq!(data[4], 31);
        assert_eq!(&data[8..16], VENDOR);
        let none = ask(
            Command::Inquiry {
                evpd: false,
                page: 0,
                alloc: 255,
            },
            None,
        );
        assert_eq!(none[0], 0x7F, "qualifier 3, type 0x1F");
        let short = ask(
            Command::Inquiry {
                evpd: false,
                page: 0,
                alloc: 5,
            },
            Some(&u),
        );
        assert_eq!(short.len(), 5, "cut to the allocation length");
    }

    #[test]
    fn vpd_pages_ascend_and_identify() {
        let u = unit(1000);
        let supported = ask(
            Command::Inquiry {
                evpd: true,
                page: 0,
                alloc: 255,
            },
            Some(&u),
        );
        assert_eq!(&supported[4..], [0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2]);
        assert!(supported[4..].windows(2).all(|w| w[0] < w[1]));
        let serial = ask(
            Command::Inquiry {
                evpd: true,
                page: 0x80,
                alloc: 255,
            },
            Some(&u),
        );
        assert_eq!(&serial[4..], b"RC0001");
        let id = ask(
            Command::Inquiry {
                evpd: true,
                page: 0x83,
                alloc: 255,
            },
            Some(&u),
        );
        assert!(id.len() > 4, "never an empty identification page");
        assert_eq!(id[5] & 0x0F, 3, "NAA");
        assert_eq!(id[8] >> 4, 6, "NAA 6");
        let limits = ask(
            Command::Inquiry {
                evpd: true,
                page: 0xB0,
                alloc: 255,
            },
            Some(&u),
        );
        assert_eq!(limits.len(), 64);
        assert_eq!(u32::from_be_bytes(limits[8..12].try_into().unwrap()), 2048);
        let lbp = ask(
            Command::Inquiry {
                evpd: true,
                page: 0xB2,
                alloc: 255,
            },
            Some(&u),
        );
        assert_eq!(lbp[5] & 0x80, 0x80, "LBPU");
        let plain = Identity { unmap: false, ..u };
        let mut out = [0u8; 64];
        assert_eq!(
            answer(
                &Command::Inquiry {
                    evpd: true,
                    page: 0xB2,
                    alloc: 64
                },
                Some(&plain),
                &[],
                &mut out
            ),
            Err(Sense::INVALID_FIELD_IN_CDB)
        );
    }

    #[test]
    fn read_capacity_saturates_above_two_to_the_32_blocks() {
        let small = ask(Command::ReadCapacity10, Some(&unit(1000)));
        assert_eq!(small, [0, 0, 0x03, 0xE7, 0, 0, 2, 0]);
        let big = unit((1 << 32) + 5);
        assert_eq!(&ask(Command::ReadCapacity10, Some(&big))[..4], [0xFF; 4]);
        let exact = unit(1 << 32);
        assert_eq!(
            &ask(Command::ReadCapacity10, Some(&exact))[..4],
            [0xFF, 0xFF, 0xFF, 0xFF]
        );
        let rc16 = ask(Command::ReadCapacity16 { alloc: 32 }, Some(&big));
        assert_eq!(rc16.len(), 32);
        assert_eq!(
            u64::from_be_bytes(rc16[..8].try_into().unwrap()),
            (1 << 32) + 4
        );
        assert_eq!(rc16[14] & 0x80, 0x80, "LBPME with unmap");
    }

    #[test]
    fn mode_sense_reports_wp_and_wce() {
        let ro = Identity {
            read_only: true,
            write_cache: false,
            ..unit(1000)
        };
        let sense = |ten, page| Command::ModeSense {
            ten,
            dbd: true,
            page,
            subpage: 0,
            control: PageControl::Current,
            alloc: 255,
        };
        let all = ask(sense(false, 0x3F), Some(&ro));
        assert_eq!(all[0] as usize, all.len() - 1);
        assert_eq!(all[2] & 0x80, 0x80, "WP");
        assert_eq!(all[3], 0, "no block descriptor with DBD");
        assert_eq!(all[4], 0x08);
        assert_eq!(all[6] & 0x05, 0x01, "RCD, no WCE");
        assert_eq!(all[4 + 20], 0x0A, "then the control page");
        let rw = unit(1000);
        let caching = ask(sense(true, 0x08), Some(&rw));
        assert_eq!(
            usize::from(u16::from_be_bytes([caching[0], caching[1]])),
            caching.len() - 2
        );
        assert_eq!(caching[3] & 0x80, 0);
        assert_eq!(caching[8 + 2] & 0x04, 0x04, "WCE");
        let with_descriptor = ask(
            Command::ModeSense {
                ten: false,
                dbd: false,
                page: 0x08,
                subpage: 0,
                control: PageControl::Current,
                alloc: 255,
            },
            Some(&rw),
        );
        assert_eq!(with_descriptor[3], 8);
        assert_eq!(&with_descriptor[4 + 5..4 + 8], [0, 2, 0]);
        let mut out = [0u8; 64];
        assert_eq!(
            answer(&sense(false, 0x1C), Some(&rw), &[], &mut out),
            Err(Sense::INVALID_FIELD_IN_CDB)
        );
    }

    #[test]
    fn report_luns_lists_every_unit_even_without_lun_0() {
        let data = ask(Command::ReportLuns { alloc: 256 }, None);
        assert_eq!(data.len(), 8 + 16);
        assert_eq!(u32::from_be_bytes(data[..4].try_into().unwrap()), 16);
        assert_eq!(data[8 + 1], 0);
        assert_eq!(data[16 + 1], 3);
    }

    #[test]
    fn a_missing_unit_and_data_commands_are_refused() {
        let mut out = [0u8; 64];
        assert_eq!(
            answer(&Command::TestUnitReady, None, &[], &mut out),
            Err(Sense::LUN_NOT_SUPPORTED)
        );
        let read = decode(
            &encode(&Command::Read(crate::Transfer {
                lba: 0,
                blocks: 1,
                fua: false,
            }))
            .0,
        )
        .unwrap();
        assert_eq!(
            answer(&read, Some(&unit(10)), &[], &mut out),
            Err(Sense::INVALID_OPCODE)
        );
        assert_eq!(check_range(9, 1, 10), Ok(()));
        assert_eq!(check_range(9, 2, 10), Err(Sense::LBA_OUT_OF_RANGE));
        assert_eq!(check_range(u64::MAX, 2, 10), Err(Sense::LBA_OUT_OF_RANGE));
        assert_eq!(
            answer(
                &Command::Verify { lba: 10, blocks: 1 },
                Some(&unit(10)),
                &[],
                &mut out
            ),
            Err(Sense::LBA_OUT_OF_RANGE)
        );
    }

    proptest! {
        /// Whatever the CDB, the answer never writes past `out` nor beyond the allocation
        /// length, and never panics.
        #[test]
        fn answers_stay_inside_their_buffers(cdb in proptest::collection::vec(any::<u8>(), 6..17), room in 0usize..128, blocks in 1u64..u64::MAX / 4096) {
            let unit = Identity { block_count: blocks, ..unit(1) };
            if let Ok(command) = decode(&cdb) {
                let mut out = std::vec![0xEEu8; room + 8];
                if let Ok(n) = answer(&command, Some(&unit), &[0, 1], &mut out[..room]) {
                    prop_assert!(n <= room);
                    prop_assert!(out[room..].iter().all(|&b| b == 0xEE));
                }
            }
        }
    }
}
