//! Reading replies the way the class driver does (storsim's disk class model): each parser
//! checks the lengths it relies on and returns `None` for a reply too short to hold them.

/// Standard INQUIRY data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inquiry {
    pub qualifier: u8,
    pub device_type: u8,
    pub vendor: [u8; 8],
    pub product: [u8; 16],
}

/// READ CAPACITY (10) or (16).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub last_lba: u64,
    pub block_size: u32,
    /// READ CAPACITY(16)'s LBPME: logical block provisioning (UNMAP) on.
    pub provisioning: bool,
}

/// What MODE SENSE(6) says: the header's WP bit, and the caching page's WCE if present.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModeInfo {
    pub write_protected: bool,
    pub write_cache: Option<bool>,
}

pub fn parse_inquiry(data: &[u8]) -> Option<Inquiry> {
    let data = data.get(..32)?;
    Some(Inquiry {
        qualifier: data[0] >> 5,
        device_type: data[0] & 0x1F,
        vendor: data[8..16].try_into().ok()?,
        product: data[16..32].try_into().ok()?,
    })
}

/// A VPD page's body, checked against its header (`page` must be the one asked for).
pub fn parse_vpd_pages(data: &[u8], page: u8) -> Option<&[u8]> {
    if *data.get(1)? != page {
        return None;
    }
    let length = usize::from(u16::from_be_bytes([*data.get(2)?, *data.get(3)?]));
    data.get(4..4 + length)
}

pub fn parse_read_capacity10(data: &[u8]) -> Option<Capacity> {
    let data = data.get(..8)?;
    Some(Capacity {
        last_lba: u32::from_be_bytes(data[..4].try_into().ok()?).into(),
        block_size: u32::from_be_bytes(data[4..8].try_into().ok()?),
        provisioning: false,
    })
}

pub fn parse_read_capacity16(data: &[u8]) -> Option<Capacity> {
    let data = data.get(..15)?;
    Some(Capacity {
        last_lba: u64::from_be_bytes(data[..8].try_into().ok()?),
        block_size: u32::from_be_bytes(data[8..12].try_into().ok()?),
        provisioning: data[14] & 0x80 != 0,
    })
}

/// MODE SENSE(6) data: the header, the block descriptors skipped, then the pages.
pub fn parse_mode_sense(data: &[u8]) -> Option<ModeInfo> {
    let header = data.get(..4)?;
    let end = (usize::from(header[0]) + 1).min(data.len());
    let mut at = 4 + usize::from(header[3]);
    let mut write_cache = None;
    while at + 2 <= end {
        let (code, length) = (data[at] & 0x3F, usize::from(data[at + 1]));
        if code == 0x08 && at + 2 < end {
            write_cache = Some(data[at + 2] & 0x04 != 0);
        }
        at += 2 + length;
    }
    Some(ModeInfo {
        write_protected: header[2] & 0x80 != 0,
        write_cache,
    })
}

/// REPORT LUNS: the LUNs (peripheral addressing, byte 1 of each entry) the reply lists.
pub fn parse_report_luns(data: &[u8]) -> Option<impl Iterator<Item = u8> + '_> {
    let length = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
    let entries = data.get(8..)?;
    let entries = &entries[..length.min(entries.len()) / 8 * 8];
    Some(entries.chunks_exact(8).map(|entry| entry[1]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answer::{Identity, answer};
    use crate::cdb::{Command, PageControl};
    use std::vec::Vec;

    /// The class model's parsers read back what the driver's answers say.
    #[test]
    fn parsers_read_the_answers() {
        let unit = Identity {
            block_size: 4096,
            block_count: 1 << 20,
            read_only: true,
            write_cache: true,
            unmap: true,
            serial: b"S1",
            unique_id: [1; 16],
            max_transfer_blocks: 256,
        };
        let mut out = [0u8; 255];
        let mut ask = |command: Command| {
            let n = answer(&command, Some(&unit), &[0, 2, 5], &mut out).unwrap();
            out[..n].to_vec()
        };
        let inquiry = parse_inquiry(&ask(Command::Inquiry {
            evpd: false,
            page: 0,
            alloc: 96,
        }))
        .unwrap();
        assert_eq!((inquiry.qualifier, inquiry.device_type), (0, 0));
        let pages = ask(Command::Inquiry {
            evpd: true,
            page: 0,
            alloc: 255,
        });
        assert_eq!(
            parse_vpd_pages(&pages, 0),
            Some(&[0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2][..])
        );
        assert_eq!(parse_vpd_pages(&pages, 0x80), None);
        let rc10 = parse_read_capacity10(&ask(Command::ReadCapacity10)).unwrap();
        assert_eq!((rc10.last_lba, rc10.block_size), ((1 << 20) - 1, 4096));
        let rc16 = parse_read_capacity16(&ask(Command::ReadCapacity16 { alloc: 32 })).unwrap();
        assert!(rc16.provisioning);
        let mode = parse_mode_sense(&ask(Command::ModeSense {
            ten: false,
            dbd: false,
            page: 0x3F,
            subpage: 0,
            control: PageControl::Current,
            alloc: 255,
        }))
        .unwrap();
        assert_eq!(
            mode,
            ModeInfo {
                write_protected: true,
                write_cache: Some(true)
            }
        );
        let luns: Vec<u8> = parse_report_luns(&ask(Command::ReportLuns { alloc: 255 }))
            .unwrap()
            .collect();
        assert_eq!(luns, [0, 2, 5]);
        assert!(parse_inquiry(&[0; 10]).is_none());
    }
}
