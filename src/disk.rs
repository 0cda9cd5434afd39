//! HwStartIo for the virtual disks: what identifies a disk (INQUIRY and its VPD pages, READ
//! CAPACITY, MODE SENSE, REPORT LUNS, TEST UNIT READY, …) is answered here from the LUN's
//! identity; data commands (READ, WRITE, SYNCHRONIZE CACHE, UNMAP) are checked here and go to
//! the LUN's server ([`Route::Server`]), which the adapter hands them to
//! (docs/DATAPATH.md §5).

use arrayvec::ArrayVec;
use revcall_protocol::{DataOp, LunFlags, LunSpec, MAX_LUNS, UnmapRange};
use revcall_scsi::{Command, Identity, Sense, Transfer};
use storport_abi::{srb_function, srb_status};

use crate::port;
use crate::tag_table::Io;

/// The parts of an SRB HwStartIo reads and writes.
pub trait ScsiRequest {
    fn function(&self) -> u8;
    /// (PathId, TargetId, Lun).
    fn address(&self) -> (u8, u8, u8);
    /// The CDB block and `CdbLength` (the CDB is that many bytes at its start).
    fn cdb(&self) -> (&revcall_scsi::CdbBlock, usize);
    /// The data buffer as a system address, `DataTransferLength` bytes; `None` if it has none.
    fn data(&mut self) -> Option<&mut [u8]>;
    /// The sense buffer, unless the SRB disables autosense.
    fn sense(&mut self) -> Option<&mut [u8]>;
    /// Records that `len` bytes of sense data were written (`SenseInfoBufferLength`).
    fn sense_written(&mut self, len: u8);
    /// SRB_FUNCTION_ABORT_COMMAND's `NextSrb`: the address of the SRB to abort.
    fn next_srb(&self) -> usize;
    /// `SrbStatus`, and for a SCSI command `ScsiStatus` and `DataTransferLength` (the bytes
    /// actually moved, never more than asked).
    fn finish(&mut self, srb_status: u8, scsi_status: u8, transferred: u32);
}

/// An SRB the miniport owns until it hands it back.
pub trait PendingSrb: ScsiRequest + Send + Sized {
    /// The SRB's address: what an ABORT_COMMAND's `NextSrb` names.
    fn id(&self) -> usize;
    /// `StorPortNotification(RequestComplete)`. Never under the adapter lock.
    fn complete(self);
}

/// Where HwStartIo finds the LUNs: the adapter's table, read under the adapter lock, so an
/// SRB routed to a server is queued in the same lock hold as the LUN it was checked against
/// (no copy of the LUN's identity on the data path, no window for the LUN to change).
pub trait Units {
    /// LUN `lun`'s identity and which LUN of its number it is
    /// ([`LunTable::incarnation`](crate::lun_table::LunTable::incarnation)), if it exists.
    fn unit(&self, lun: u8) -> Option<(&LunSpec, u32)>;
    /// Every LUN, in ascending order (REPORT LUNS).
    fn luns(&self) -> ArrayVec<u8, MAX_LUNS>;
}

/// What [`start_io`] made of an SRB.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// Answered: its status is set; complete it.
    Done,
    /// A successful INQUIRY of an existing LUN, answered: complete it, then tell Storport
    /// the LUN's queue depth (the DDI allows it from the first INQUIRY on).
    Inquired { depth: u32 },
    /// A data command for the LUN's server, checked against the LUN: the `incarnation` of
    /// its number the SRB is queued for.
    Server { io: Io, incarnation: u32 },
}

/// How an SRB the adapter held ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// GOOD; `transferred` bytes moved (capped at what the SRB asked for).
    Good { transferred: u32 },
    /// CHECK CONDITION with this sense.
    Check(Sense),
    /// This SRB status with no SCSI status (a reset, an abort, a removal, busy).
    Status(u8),
}

const GOOD: u8 = 0x00;
const CHECK_CONDITION: u8 = 0x02;
const SRB_STATUS_ERROR: u8 = 0x04;
const SRB_STATUS_AUTOSENSE_VALID: u8 = 0x80;

/// Answers `srb` or routes it to a server; `units` is asked only for what the SRB addresses
/// (the list of every LUN only for REPORT LUNS): the data path does not pay for the scan.
pub fn start_io(srb: &mut impl ScsiRequest, units: &impl Units) -> Route {
    let (path, target, lun) = srb.address();
    let function = srb.function();
    let addressed = path < port::NUMBER_OF_BUSES
        && target < port::TARGETS_PER_BUS
        && lun < port::LUNS_PER_TARGET;
    if function != srb_function::EXECUTE_SCSI || !addressed {
        let status = port::start_io_status(function, path, target, lun);
        srb.finish(status, GOOD, 0);
        return Route::Done;
    }
    // REPORT LUNS answers for the whole target, whichever LUN it is sent to (LUN 0 usually,
    // which may not exist); anything else to a LUN that does not exist, however malformed,
    // finds no device there (DISK.md §1.3).
    let unit = units.unit(lun);
    let (cdb, cdb_len) = srb.cdb();
    let report_luns = cdb_len != 0 && cdb[0] == revcall_scsi::op::REPORT_LUNS;
    if unit.is_none() && !report_luns {
        srb.finish(srb_status::NO_DEVICE, GOOD, 0);
        return Route::Done;
    }
    let command = match revcall_scsi::decode_block(cdb, cdb_len) {
        Ok(command) => command,
        Err(sense) => return check_condition(srb, sense),
    };
    let luns = || {
        if report_luns {
            units.luns()
        } else {
            ArrayVec::new()
        }
    };
    let Some((spec, incarnation)) = unit else {
        return answer(srb, &command, None, &luns());
    };
    match route(srb, lun, &command, spec) {
        Ok(Step::Server(io)) => Route::Server { io, incarnation },
        Ok(Step::Nothing) => {
            srb.finish(srb_status::SUCCESS, GOOD, 0);
            Route::Done
        }
        // The identity (its serial trimmed) only for what is answered here, not for every I/O.
        Ok(Step::Answer) => match answer(srb, &command, Some(&identity(spec)), &luns()) {
            Route::Done if matches!(command, Command::Inquiry { evpd: false, .. }) => {
                Route::Inquired {
                    depth: spec.depth(),
                }
            }
            route => route,
        },
        Err(sense) => check_condition(srb, sense),
    }
}

enum Step {
    /// The server's part of a data command.
    Server(Io),
    /// A data command with nothing to do: GOOD.
    Nothing,
    /// Answered from the LUN's identity.
    Answer,
}

/// Where a command to an existing LUN goes; a data command is checked against the LUN.
fn route(
    srb: &mut impl ScsiRequest,
    lun: u8,
    command: &Command,
    unit: &LunSpec,
) -> Result<Step, Sense> {
    let read_only = unit.flags & LunFlags::READ_ONLY != 0;
    let data_len = srb.data().map_or(0, |data| data.len());
    let io = |op, fua, lba, blocks, bytes| Io {
        lun,
        op,
        fua,
        lba,
        blocks,
        bytes,
    };
    match *command {
        Command::Read(transfer) | Command::Write(transfer) => {
            let write = matches!(command, Command::Write(_));
            let Transfer { lba, blocks, fua } = transfer;
            revcall_scsi::check_range(lba, blocks, unit.block_count)?;
            if write && read_only {
                return Err(Sense::WRITE_PROTECTED);
            }
            let bytes = u64::from(blocks) * u64::from(unit.block_size);
            if blocks == 0 {
                // A transfer of no blocks is not an error (SBC).
                return Ok(Step::Nothing);
            }
            // Storport splits at MaximumTransferLength, and the class driver's buffer is the
            // transfer's size: anything else is a caller's mistake, not the server's business.
            if bytes > u64::from(port::MAXIMUM_TRANSFER_LENGTH) || bytes != data_len as u64 {
                return Err(Sense::INVALID_FIELD_IN_CDB);
            }
            let op = if write { DataOp::Write } else { DataOp::Read };
            Ok(Step::Server(io(op, fua, lba, blocks, bytes as u32)))
        }
        // Without a write cache every WRITE is already durable: nothing to flush.
        Command::SynchronizeCache { .. } if unit.flags & LunFlags::WRITE_CACHE == 0 => {
            Ok(Step::Nothing)
        }
        Command::SynchronizeCache { .. } => Ok(Step::Server(io(DataOp::Flush, false, 0, 0, 0))),
        Command::Unmap { .. } if unit.flags & LunFlags::UNMAP == 0 => Err(Sense::INVALID_OPCODE),
        Command::Unmap { .. } if read_only => Err(Sense::WRITE_PROTECTED),
        Command::Unmap { .. } => {
            let list = srb.data().map_or(&[][..], |data| &data[..]);
            let mut ranges = 0u32;
            for (lba, blocks) in revcall_scsi::unmap_ranges(list)? {
                revcall_scsi::check_range(lba, blocks, unit.block_count)?;
                ranges += 1;
            }
            if ranges > revcall_scsi::MAX_UNMAP_DESCRIPTORS {
                return Err(Sense::INVALID_FIELD_IN_PARAMETER_LIST);
            }
            if ranges == 0 {
                return Ok(Step::Nothing);
            }
            let bytes = ranges * size_of::<UnmapRange>() as u32;
            Ok(Step::Server(io(DataOp::Unmap, false, 0, ranges, bytes)))
        }
        _ => Ok(Step::Answer),
    }
}

/// Writes an UNMAP SRB's ranges as the server reads them; `out` holds `Io::bytes` bytes.
pub fn unmap_payload(srb: &mut impl ScsiRequest, out: &mut [u8]) {
    let list = srb.data().map_or(&[][..], |data| &data[..]);
    let ranges = revcall_scsi::unmap_ranges(list).into_iter().flatten();
    for (chunk, (lba, blocks)) in out.chunks_exact_mut(size_of::<UnmapRange>()).zip(ranges) {
        let range = UnmapRange {
            lba,
            blocks,
            reserved: 0,
        };
        chunk.copy_from_slice(zerocopy::IntoBytes::as_bytes(&range));
    }
}

/// Sets the status an SRB ends with. Inline: every committed SRB passes here, and what it
/// does for a GOOD one is three stores.
#[inline]
pub fn end(srb: &mut impl ScsiRequest, ending: Ending) {
    match ending {
        Ending::Good { transferred } => srb.finish(srb_status::SUCCESS, GOOD, transferred),
        Ending::Check(sense) => {
            check_condition(srb, sense);
        }
        Ending::Status(status) => srb.finish(status, GOOD, 0),
    }
}

fn identity(spec: &LunSpec) -> Identity<'_> {
    let serial_len = spec
        .serial
        .iter()
        .rposition(|&b| b != b' ')
        .map_or(0, |last| last + 1);
    Identity {
        block_size: spec.block_size,
        block_count: spec.block_count,
        read_only: spec.flags & LunFlags::READ_ONLY != 0,
        write_cache: spec.flags & LunFlags::WRITE_CACHE != 0,
        unmap: spec.flags & LunFlags::UNMAP != 0,
        serial: &spec.serial[..serial_len],
        unique_id: spec.unique_id,
        max_transfer_blocks: port::MAXIMUM_TRANSFER_LENGTH / spec.block_size,
    }
}

/// Out of line: identification is rare, and its scratch reply must not enlarge the data
/// path's frame.
#[cold]
#[inline(never)]
fn answer(
    srb: &mut impl ScsiRequest,
    command: &Command,
    unit: Option<&Identity<'_>>,
    luns: &[u8],
) -> Route {
    let mut none: [u8; 0] = [];
    let out = srb.data().unwrap_or(&mut none);
    match revcall_scsi::answer(command, unit, luns, out) {
        Ok(n) => {
            srb.finish(srb_status::SUCCESS, GOOD, n as u32);
            Route::Done
        }
        Err(sense) => check_condition(srb, sense),
    }
}

/// CHECK CONDITION with autosense when the SRB has room for it (WinSpd's recipe, DISK.md
/// §5.9); without a sense buffer, SRB_STATUS_ERROR alone.
#[cold]
fn check_condition(srb: &mut impl ScsiRequest, sense: Sense) -> Route {
    let status = match srb.sense() {
        Some(buffer) if buffer.len() >= revcall_scsi::FIXED_SENSE_LEN => {
            buffer.fill(0);
            let len = sense.write_fixed(buffer);
            srb.sense_written(len as u8);
            SRB_STATUS_ERROR | SRB_STATUS_AUTOSENSE_VALID
        }
        _ => SRB_STATUS_ERROR,
    };
    srb.finish(status, CHECK_CONDITION, 0);
    Route::Done
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    use crate::testing::FakeSrb;

    fn srb(lun: u8, command: Command) -> FakeSrb {
        FakeSrb::scsi(lun, &command, 96)
    }

    fn spec(flags: u32) -> LunSpec {
        let mut serial = [b' '; 32];
        serial[..4].copy_from_slice(b"SN42");
        LunSpec {
            block_count: 2048,
            block_size: 512,
            flags,
            serial,
            unique_id: [7; 16],
            ..LunSpec::default()
        }
    }

    /// One LUN (number 2 in the list REPORT LUNS sees), or none.
    struct OneLun(Option<LunSpec>);

    impl Units for OneLun {
        fn unit(&self, _lun: u8) -> Option<(&LunSpec, u32)> {
            self.0.as_ref().map(|spec| (spec, 1))
        }

        fn luns(&self) -> ArrayVec<u8, MAX_LUNS> {
            [2u8].into_iter().collect()
        }
    }

    fn route(srb: &mut FakeSrb, unit: Option<LunSpec>) -> Route {
        start_io(srb, &OneLun(unit))
    }

    fn run(srb: &mut FakeSrb, unit: Option<LunSpec>) -> (u8, u8, u32) {
        assert_eq!(route(srb, unit), Route::Done);
        srb.finished.expect("every SRB answered here is finished")
    }

    #[test]
    fn identification_is_answered_from_the_lun_spec() {
        let mut inquiry = srb(
            2,
            Command::Inquiry {
                evpd: true,
                page: 0x80,
                alloc: 96,
            },
        );
        assert_eq!(
            run(&mut inquiry, Some(spec(0))),
            (srb_status::SUCCESS, GOOD, 8)
        );
        assert_eq!(
            &inquiry.data[4..8],
            b"SN42",
            "the serial without its padding"
        );
        let mut capacity = srb(2, Command::ReadCapacity10);
        run(&mut capacity, Some(spec(0)));
        assert_eq!(&capacity.data[..8], [0, 0, 0x07, 0xFF, 0, 0, 2, 0]);
    }

    #[test]
    fn data_commands_are_checked_then_routed_to_the_server() {
        let transfer = |lba, blocks| revcall_scsi::Transfer {
            lba,
            blocks,
            fua: lba == 0,
        };
        let mut read = FakeSrb::scsi(2, &Command::Read(transfer(0, 8)), 4096);
        assert_eq!(
            route(&mut read, Some(spec(0))),
            Route::Server {
                io: Io {
                    lun: 2,
                    op: DataOp::Read,
                    fua: true,
                    lba: 0,
                    blocks: 8,
                    bytes: 4096
                },
                incarnation: 1
            }
        );
        assert!(read.finished.is_none(), "the server finishes it");
        let check = |command: Command, len, flags| {
            let mut s = FakeSrb::scsi(2, &command, len);
            let error = SRB_STATUS_ERROR | SRB_STATUS_AUTOSENSE_VALID;
            assert_eq!(run(&mut s, Some(spec(flags))), (error, CHECK_CONDITION, 0));
            assert_eq!(
                s.sense_len, 18,
                "SenseInfoBufferLength says what was written"
            );
            Sense::parse(&s.sense)
        };
        let past_end = Command::Write(transfer(2047, 2));
        assert_eq!(check(past_end, 1024, 0), Some(Sense::LBA_OUT_OF_RANGE));
        let write = Command::Write(transfer(0, 1));
        assert_eq!(
            check(write, 512, LunFlags::READ_ONLY),
            Some(Sense::WRITE_PROTECTED)
        );
        // A buffer that is not the transfer's size is the caller's mistake.
        let short = Command::Read(transfer(1, 8));
        assert_eq!(check(short, 512, 0), Some(Sense::INVALID_FIELD_IN_CDB));
        let unmap = Command::Unmap { param_len: 24 };
        assert_eq!(
            check(unmap, 24, 0),
            Some(Sense::INVALID_OPCODE),
            "UNMAP off"
        );
        assert_eq!(
            check(unmap, 24, LunFlags::UNMAP | LunFlags::READ_ONLY),
            Some(Sense::WRITE_PROTECTED)
        );
        // A flush without a write cache has nothing to do; with one it is the server's.
        let flush = Command::SynchronizeCache { lba: 0, blocks: 0 };
        let mut s = FakeSrb::scsi(2, &flush, 0);
        assert_eq!(run(&mut s, Some(spec(0))), (srb_status::SUCCESS, GOOD, 0));
        let mut s = FakeSrb::scsi(2, &flush, 0);
        let routed = route(&mut s, Some(spec(LunFlags::WRITE_CACHE)));
        assert!(matches!(
            routed,
            Route::Server {
                io: Io {
                    op: DataOp::Flush,
                    ..
                },
                ..
            }
        ));
    }

    #[test]
    fn unmap_ranges_are_checked_and_handed_over_little_endian() {
        let mut list = [0u8; 40];
        let n = revcall_scsi::write_unmap_list(&[(8, 16), (100, 1)], &mut list).unwrap();
        let mut s = FakeSrb::scsi(
            2,
            &Command::Unmap {
                param_len: n as u16,
            },
            0,
        );
        s.data = list[..n].to_vec();
        let Route::Server { io, .. } = route(&mut s, Some(spec(LunFlags::UNMAP))) else {
            panic!("UNMAP goes to the server");
        };
        assert_eq!((io.op, io.blocks, io.bytes), (DataOp::Unmap, 2, 32));
        let mut payload = [0u8; 32];
        unmap_payload(&mut s, &mut payload);
        assert_eq!(payload[..8], 8u64.to_le_bytes());
        assert_eq!(payload[8..12], 16u32.to_le_bytes());
        assert_eq!(payload[16..24], 100u64.to_le_bytes());
        let n = revcall_scsi::write_unmap_list(&[(2047, 2)], &mut list).unwrap();
        let mut s = FakeSrb::scsi(
            2,
            &Command::Unmap {
                param_len: n as u16,
            },
            0,
        );
        s.data = list[..n].to_vec();
        run(&mut s, Some(spec(LunFlags::UNMAP)));
        assert_eq!(Sense::parse(&s.sense), Some(Sense::LBA_OUT_OF_RANGE));
    }

    #[test]
    fn an_absent_lun_is_no_device_but_report_luns_answers() {
        let mut tur = srb(5, Command::TestUnitReady);
        assert_eq!(run(&mut tur, None), (srb_status::NO_DEVICE, GOOD, 0));
        let mut report = srb(0, Command::ReportLuns { alloc: 96 });
        assert_eq!(run(&mut report, None), (srb_status::SUCCESS, GOOD, 16));
        assert_eq!(report.data[9], 2);
        // An unknown command to an absent LUN finds no device, not an unknown opcode.
        let mut absent = srb(5, Command::TestUnitReady);
        absent.cdb = ([0xC1; 16], 16);
        assert_eq!(run(&mut absent, None), (srb_status::NO_DEVICE, GOOD, 0));
        let mut bad = srb(2, Command::TestUnitReady);
        bad.cdb = ([0xC1; 16], 16);
        run(&mut bad, Some(spec(0)));
        assert_eq!(
            revcall_scsi::Sense::parse(&bad.sense),
            Some(Sense::INVALID_OPCODE)
        );
        let mut no_sense_room = srb(
            2,
            Command::Read(revcall_scsi::Transfer {
                lba: 0,
                blocks: 1,
                fua: false,
            }),
        );
        no_sense_room.sense.truncate(8);
        assert_eq!(
            run(&mut no_sense_room, Some(spec(0))),
            (SRB_STATUS_ERROR, CHECK_CONDITION, 0)
        );
    }

    #[test]
    fn other_functions_and_addresses_keep_the_bus_answers() {
        let mut reset = srb(0, Command::TestUnitReady);
        reset.function = srb_function::RESET_LOGICAL_UNIT;
        assert_eq!(
            run(&mut reset, Some(spec(0))),
            (srb_status::SUCCESS, GOOD, 0)
        );
        let mut other_target = srb(0, Command::TestUnitReady);
        other_target.address = (0, 1, 0);
        assert_eq!(
            run(&mut other_target, Some(spec(0))).0,
            srb_status::INVALID_TARGET_ID
        );
    }
}
