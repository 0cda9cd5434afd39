//! Command descriptor blocks: decoded into [`Command`]s, and built from them (DISK.md §5,
//! §5.6, §5.7).

use crate::op;
use crate::sense::Sense;

/// MODE SENSE's page control.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageControl {
    Current = 0,
    Changeable = 1,
    Default = 2,
    Saved = 3,
}

/// A READ or WRITE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transfer {
    pub lba: u64,
    pub blocks: u32,
    pub fua: bool,
}

/// A decoded CDB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    TestUnitReady,
    RequestSense {
        alloc: u8,
    },
    Inquiry {
        evpd: bool,
        page: u8,
        alloc: u16,
    },
    ReadCapacity10,
    ReadCapacity16 {
        alloc: u32,
    },
    ModeSense {
        ten: bool,
        dbd: bool,
        page: u8,
        subpage: u8,
        control: PageControl,
        alloc: u16,
    },
    StartStopUnit {
        start: bool,
        load_eject: bool,
    },
    MediumRemoval {
        prevent: bool,
    },
    ReportLuns {
        alloc: u32,
    },
    Verify {
        lba: u64,
        blocks: u32,
    },
    Read(Transfer),
    Write(Transfer),
    SynchronizeCache {
        lba: u64,
        blocks: u32,
    },
    Unmap {
        param_len: u16,
    },
}

/// An SRB's CDB bytes (`SCSI_REQUEST_BLOCK.Cdb`): [`decode_block`] reads the fields of every
/// command from fixed offsets in it, with no bounds to check.
pub type CdbBlock = [u8; 16];

fn be16(b: &CdbBlock, at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &CdbBlock, at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &CdbBlock, at: usize) -> u64 {
    (u64::from(be32(b, at)) << 32) | u64::from(be32(b, at + 4))
}

/// The (LBA, block count) of a 10-byte CDB (group 1 or 2) or a 16-byte one (group 4): the
/// layouts `put_range` writes.
fn range(cdb: &CdbBlock) -> (u64, u32) {
    if group_len(cdb[0]) == 10 {
        (be32(cdb, 2).into(), be16(cdb, 7).into())
    } else {
        (be64(cdb, 2), be32(cdb, 10))
    }
}

/// The CDB length of an opcode's group (SAM: the top three bits).
fn group_len(opcode: u8) -> usize {
    match opcode >> 5 {
        0 => 6,
        1 | 2 => 10,
        4 => 16,
        5 => 12,
        _ => 16,
    }
}

/// Decodes a CDB.
///
/// # Errors
///
/// INVALID OPCODE for a command a virtual disk does not implement; INVALID FIELD IN CDB for a
/// CDB shorter than its group's length or with a field this implementation refuses (EVPD 0
/// with a page code, changeable MODE SENSE values, a READ CAPACITY(16) service action other
/// than 0x10).
pub fn decode(cdb: &[u8]) -> Result<Command, Sense> {
    let mut block = CdbBlock::default();
    let len = cdb.len().min(block.len());
    block[..len].copy_from_slice(&cdb[..len]);
    decode_block(&block, cdb.len())
}

/// [`decode`] for a CDB of `len` bytes at the start of `cdb`, as an SRB carries it.
///
/// # Errors
///
/// As for [`decode`].
pub fn decode_block(cdb: &CdbBlock, len: usize) -> Result<Command, Sense> {
    if len == 0 {
        return Err(Sense::INVALID_OPCODE);
    }
    let opcode = cdb[0];
    if len < group_len(opcode) {
        return Err(Sense::INVALID_FIELD_IN_CDB);
    }
    let fua = |byte: u8| byte & 0x08 != 0;
    Ok(match opcode {
        op::TEST_UNIT_READY => Command::TestUnitReady,
        op::REQUEST_SENSE => Command::RequestSense { alloc: cdb[4] },
        op::INQUIRY => {
            let evpd = cdb[1] & 0x01 != 0;
            if !evpd && cdb[2] != 0 {
                return Err(Sense::INVALID_FIELD_IN_CDB);
            }
            Command::Inquiry {
                evpd,
                page: cdb[2],
                alloc: be16(cdb, 3),
            }
        }
        op::READ_CAPACITY10 => Command::ReadCapacity10,
        op::SERVICE_ACTION_IN16 => {
            if cdb[1] & 0x1F != op::SA_READ_CAPACITY16 {
                return Err(Sense::INVALID_FIELD_IN_CDB);
            }
            Command::ReadCapacity16 {
                alloc: be32(cdb, 10),
            }
        }
        op::MODE_SENSE6 | op::MODE_SENSE10 => {
            let control = match cdb[2] >> 6 {
                0 => PageControl::Current,
                // WinSpd's answer too: nothing here is changeable (DISK.md §5.4).
                1 => return Err(Sense::INVALID_FIELD_IN_CDB),
                2 => PageControl::Default,
                _ => PageControl::Saved,
            };
            let ten = opcode == op::MODE_SENSE10;
            Command::ModeSense {
                ten,
                dbd: cdb[1] & 0x08 != 0,
                page: cdb[2] & 0x3F,
                subpage: cdb[3],
                control,
                alloc: if ten { be16(cdb, 7) } else { cdb[4].into() },
            }
        }
        op::START_STOP_UNIT => Command::StartStopUnit {
            start: cdb[4] & 0x01 != 0,
            load_eject: cdb[4] & 0x02 != 0,
        },
        op::MEDIUM_REMOVAL => Command::MediumRemoval {
            prevent: cdb[4] & 0x03 != 0,
        },
        op::REPORT_LUNS => Command::ReportLuns {
            alloc: be32(cdb, 6),
        },
        op::VERIFY10 | op::VERIFY16 => {
            let (lba, blocks) = range(cdb);
            Command::Verify { lba, blocks }
        }
        op::READ6 | op::WRITE6 => {
            let transfer = Transfer {
                lba: u64::from(be32(cdb, 0) & 0x001F_FFFF),
                // Transfer length 0 means 256 blocks in the 6-byte CDBs.
                blocks: match cdb[4] {
                    0 => 256,
                    n => n.into(),
                },
                fua: false,
            };
            if opcode == op::READ6 {
                Command::Read(transfer)
            } else {
                Command::Write(transfer)
            }
        }
        op::READ10 | op::WRITE10 | op::READ12 | op::WRITE12 | op::READ16 | op::WRITE16 => {
            let (lba, blocks) = match opcode {
                op::READ12 | op::WRITE12 => (be32(cdb, 2).into(), be32(cdb, 6)),
                _ => range(cdb),
            };
            let transfer = Transfer {
                lba,
                blocks,
                fua: fua(cdb[1]),
            };
            if matches!(opcode, op::READ10 | op::READ12 | op::READ16) {
                Command::Read(transfer)
            } else {
                Command::Write(transfer)
            }
        }
        op::SYNCHRONIZE_CACHE10 | op::SYNCHRONIZE_CACHE16 => {
            let (lba, blocks) = range(cdb);
            Command::SynchronizeCache { lba, blocks }
        }
        op::UNMAP => Command::Unmap {
            param_len: be16(cdb, 7),
        },
        _ => return Err(Sense::INVALID_OPCODE),
    })
}

/// A CDB as disk.sys builds it: the 10-byte form when the fields fit, else the 16-byte form
/// (READ/WRITE, VERIFY, SYNCHRONIZE CACHE), 6 bytes for the 6-byte commands. Returns the CDB
/// and its length. `decode(encode(c))` is `c` for every command `encode` can express
/// (READ/WRITE(6) are never produced, as disk.sys never sends them).
pub fn encode(command: &Command) -> ([u8; 16], usize) {
    let mut cdb = [0u8; 16];
    let put16 =
        |cdb: &mut [u8; 16], at: usize, v: u16| cdb[at..at + 2].copy_from_slice(&v.to_be_bytes());
    let put32 =
        |cdb: &mut [u8; 16], at: usize, v: u32| cdb[at..at + 4].copy_from_slice(&v.to_be_bytes());
    let len = match *command {
        Command::TestUnitReady => {
            cdb[0] = op::TEST_UNIT_READY;
            6
        }
        Command::RequestSense { alloc } => {
            cdb[0] = op::REQUEST_SENSE;
            cdb[4] = alloc;
            6
        }
        Command::Inquiry { evpd, page, alloc } => {
            cdb[0] = op::INQUIRY;
            cdb[1] = u8::from(evpd);
            cdb[2] = page;
            put16(&mut cdb, 3, alloc);
            6
        }
        Command::ReadCapacity10 => {
            cdb[0] = op::READ_CAPACITY10;
            10
        }
        Command::ReadCapacity16 { alloc } => {
            cdb[0] = op::SERVICE_ACTION_IN16;
            cdb[1] = op::SA_READ_CAPACITY16;
            put32(&mut cdb, 10, alloc);
            16
        }
        Command::ModeSense {
            ten,
            dbd,
            page,
            subpage,
            control,
            alloc,
        } => {
            cdb[1] = if dbd { 0x08 } else { 0 };
            cdb[2] = (control as u8) << 6 | (page & 0x3F);
            cdb[3] = subpage;
            if ten {
                cdb[0] = op::MODE_SENSE10;
                put16(&mut cdb, 7, alloc);
                10
            } else {
                cdb[0] = op::MODE_SENSE6;
                cdb[4] = alloc as u8;
                6
            }
        }
        Command::StartStopUnit { start, load_eject } => {
            cdb[0] = op::START_STOP_UNIT;
            cdb[4] = u8::from(start) | u8::from(load_eject) << 1;
            6
        }
        Command::MediumRemoval { prevent } => {
            cdb[0] = op::MEDIUM_REMOVAL;
            cdb[4] = u8::from(prevent);
            6
        }
        Command::ReportLuns { alloc } => {
            cdb[0] = op::REPORT_LUNS;
            put32(&mut cdb, 6, alloc);
            12
        }
        Command::Verify { lba, blocks } => {
            put_range(&mut cdb, (op::VERIFY10, op::VERIFY16), lba, blocks)
        }
        Command::Read(t) | Command::Write(t) => {
            let ops = match command {
                Command::Read(_) => (op::READ10, op::READ16),
                _ => (op::WRITE10, op::WRITE16),
            };
            cdb[1] = if t.fua { 0x08 } else { 0 };
            put_range(&mut cdb, ops, t.lba, t.blocks)
        }
        Command::SynchronizeCache { lba, blocks } => put_range(
            &mut cdb,
            (op::SYNCHRONIZE_CACHE10, op::SYNCHRONIZE_CACHE16),
            lba,
            blocks,
        ),
        Command::Unmap { param_len } => {
            cdb[0] = op::UNMAP;
            put16(&mut cdb, 7, param_len);
            10
        }
    };
    (cdb, len)
}

/// Writes an (LBA, block count) command in the 10-byte form when both fit it (32-bit LBA,
/// 16-bit count), else in the 16-byte form; returns the CDB length.
fn put_range(cdb: &mut [u8; 16], (op10, op16): (u8, u8), lba: u64, blocks: u32) -> usize {
    match (u32::try_from(lba), u16::try_from(blocks)) {
        (Ok(lba), Ok(blocks)) => {
            cdb[0] = op10;
            cdb[2..6].copy_from_slice(&lba.to_be_bytes());
            cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
            10
        }
        _ => {
            cdb[0] = op16;
            cdb[2..10].copy_from_slice(&lba.to_be_bytes());
            cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
            16
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::vec;

    #[test]
    fn six_byte_transfers_and_the_zero_length_rule() {
        let read6 = [op::READ6, 0x1F, 0xFF, 0xFF, 0, 0];
        assert_eq!(
            decode(&read6),
            Ok(Command::Read(Transfer {
                lba: 0x1F_FFFF,
                blocks: 256,
                fua: false
            }))
        );
        let read10 = [op::READ10, 0x08, 0, 0, 0, 9, 0, 0, 0, 0];
        assert_eq!(
            decode(&read10),
            Ok(Command::Read(Transfer {
                lba: 9,
                blocks: 0,
                fua: true
            }))
        );
    }

    #[test]
    fn refusals_are_the_documented_senses() {
        assert_eq!(decode(&[]), Err(Sense::INVALID_OPCODE));
        assert_eq!(
            decode(&[0xC1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Err(Sense::INVALID_OPCODE)
        );
        assert_eq!(
            decode(&[op::READ10, 0, 0]),
            Err(Sense::INVALID_FIELD_IN_CDB)
        );
        assert_eq!(
            decode(&[op::INQUIRY, 0, 0x80, 0, 36, 0]),
            Err(Sense::INVALID_FIELD_IN_CDB)
        );
        assert_eq!(
            decode(&[op::MODE_SENSE6, 0, 0x48, 0, 255, 0]),
            Err(Sense::INVALID_FIELD_IN_CDB)
        );
        let mut sa = [0u8; 16];
        sa[0] = op::SERVICE_ACTION_IN16;
        sa[1] = 0x11;
        assert_eq!(decode(&sa), Err(Sense::INVALID_FIELD_IN_CDB));
    }

    fn any_command() -> impl Strategy<Value = Command> {
        let transfer = (any::<u64>(), any::<u32>(), any::<bool>())
            .prop_map(|(lba, blocks, fua)| Transfer { lba, blocks, fua });
        let control = prop_oneof![
            Just(PageControl::Current),
            Just(PageControl::Default),
            Just(PageControl::Saved)
        ];
        prop_oneof![
            Just(Command::TestUnitReady),
            any::<u8>().prop_map(|alloc| Command::RequestSense { alloc }),
            (any::<u16>()).prop_map(|alloc| Command::Inquiry {
                evpd: false,
                page: 0,
                alloc
            }),
            (any::<u8>(), any::<u16>()).prop_map(|(page, alloc)| Command::Inquiry {
                evpd: true,
                page,
                alloc
            }),
            Just(Command::ReadCapacity10),
            any::<u32>().prop_map(|alloc| Command::ReadCapacity16 { alloc }),
            (
                any::<bool>(),
                any::<bool>(),
                0u8..64,
                any::<u8>(),
                control,
                any::<u16>()
            )
                .prop_map(|(ten, dbd, page, subpage, control, alloc)| {
                    Command::ModeSense {
                        ten,
                        dbd,
                        page,
                        subpage,
                        control,
                        alloc: if ten { alloc } else { alloc & 0xFF },
                    }
                }),
            (any::<bool>(), any::<bool>())
                .prop_map(|(start, load_eject)| Command::StartStopUnit { start, load_eject }),
            any::<bool>().prop_map(|prevent| Command::MediumRemoval { prevent }),
            any::<u32>().prop_map(|alloc| Command::ReportLuns { alloc }),
            (any::<u64>(), any::<u32>()).prop_map(|(lba, blocks)| Command::Verify { lba, blocks }),
            transfer.clone().prop_map(Command::Read),
            transfer.prop_map(Command::Write),
            (any::<u64>(), any::<u32>())
                .prop_map(|(lba, blocks)| Command::SynchronizeCache { lba, blocks }),
            any::<u16>().prop_map(|param_len| Command::Unmap { param_len }),
        ]
    }

    proptest! {
        #[test]
        fn encode_then_decode_round_trips(command in any_command()) {
            let (cdb, len) = encode(&command);
            prop_assert_eq!(decode(&cdb[..len]), Ok(command));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..20)) {
            let _ = decode(&bytes);
        }
    }
}
