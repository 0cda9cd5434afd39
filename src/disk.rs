//! HwStartIo for the virtual disks: what identifies a disk (INQUIRY and its VPD pages, READ
//! CAPACITY, MODE SENSE, REPORT LUNS, TEST UNIT READY, …) is answered here from the LUN's
//! identity; data commands (READ, WRITE, SYNCHRONIZE CACHE, UNMAP) belong to the LUN's server.
//! Until a server is attached — and servers are the next step of the data path
//! (docs/DATAPATH.md) — a LUN is one whose server is gone: its data commands fail NOT READY,
//! MANUAL INTERVENTION REQUIRED, which classpnp does not retry (DISK.md §4.4).
//!
//! Every SRB is completed by the caller right after [`start_io`] returns: nothing is held.

use arrayvec::ArrayVec;
use revcall_protocol::{LunFlags, LunSpec, MAX_LUNS};
use revcall_scsi::{Command, Identity, Sense};
use storport_abi::{srb_function, srb_status};

use crate::port;

/// The parts of an SRB HwStartIo reads and writes.
pub trait ScsiRequest {
    fn function(&self) -> u8;
    /// (PathId, TargetId, Lun).
    fn address(&self) -> (u8, u8, u8);
    /// The CDB, `CdbLength` bytes.
    fn cdb(&self) -> &[u8];
    /// The data buffer as a system address, `DataTransferLength` bytes; `None` if it has none
    /// or it is not mapped (READ/WRITE data under `STOR_MAP_NON_READ_WRITE_BUFFERS`).
    fn data(&mut self) -> Option<&mut [u8]>;
    /// The sense buffer, unless the SRB disables autosense.
    fn sense(&mut self) -> Option<&mut [u8]>;
    /// `SrbStatus`, `ScsiStatus` and `DataTransferLength` (the bytes actually moved).
    fn finish(&mut self, srb_status: u8, scsi_status: u8, transferred: u32);
}

/// A logical unit's identity and the adapter's LUNs, copied out of the adapter lock.
pub struct Units {
    pub unit: Option<LunSpec>,
    pub luns: ArrayVec<u8, MAX_LUNS>,
}

const GOOD: u8 = 0x00;
const CHECK_CONDITION: u8 = 0x02;
const SRB_STATUS_ERROR: u8 = 0x04;
const SRB_STATUS_AUTOSENSE_VALID: u8 = 0x80;

/// Answers `srb`; `units` looks up the addressed LUN (only for a SCSI command to target 0).
pub fn start_io(srb: &mut impl ScsiRequest, units: impl FnOnce(u8) -> Units) {
    let (path, target, lun) = srb.address();
    let function = srb.function();
    let addressed = path < port::NUMBER_OF_BUSES
        && target < port::TARGETS_PER_BUS
        && lun < port::LUNS_PER_TARGET;
    if function != srb_function::EXECUTE_SCSI || !addressed {
        let status = port::start_io_status(function, path, target, lun);
        return srb.finish(status, GOOD, 0);
    }
    let command = match revcall_scsi::decode(srb.cdb()) {
        Ok(command) => command,
        Err(sense) => return check_condition(srb, sense),
    };
    let units = units(lun);
    // REPORT LUNS answers for the whole target, whichever LUN it is sent to (LUN 0 usually,
    // which may not exist).
    if let Command::ReportLuns { .. } = command {
        let unit = units.unit.as_ref().map(identity);
        return answer(srb, &command, unit.as_ref(), &units.luns);
    }
    let Some(spec) = units.unit else {
        // No logical unit at this address: the class driver stops here (DISK.md §1.3).
        return srb.finish(srb_status::NO_DEVICE, GOOD, 0);
    };
    let identity = identity(&spec);
    match command {
        Command::Read(transfer) | Command::Write(transfer) => {
            let write = matches!(command, Command::Write(_));
            if let Err(sense) =
                revcall_scsi::check_range(transfer.lba, transfer.blocks, spec.block_count)
            {
                return check_condition(srb, sense);
            }
            if write && identity.read_only {
                return check_condition(srb, Sense::WRITE_PROTECTED);
            }
            check_condition(srb, Sense::NOT_READY_MANUAL_INTERVENTION);
        }
        Command::SynchronizeCache { .. } | Command::Unmap { .. } => {
            check_condition(srb, Sense::NOT_READY_MANUAL_INTERVENTION);
        }
        _ => answer(srb, &command, Some(&identity), &units.luns),
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

fn answer(srb: &mut impl ScsiRequest, command: &Command, unit: Option<&Identity<'_>>, luns: &[u8]) {
    let mut none: [u8; 0] = [];
    let out = srb.data().unwrap_or(&mut none);
    match revcall_scsi::answer(command, unit, luns, out) {
        Ok(n) => srb.finish(srb_status::SUCCESS, GOOD, n as u32),
        Err(sense) => check_condition(srb, sense),
    }
}

/// CHECK CONDITION with autosense when the SRB has room for it (WinSpd's recipe, DISK.md
/// §5.9); without a sense buffer, SRB_STATUS_ERROR alone.
fn check_condition(srb: &mut impl ScsiRequest, sense: Sense) {
    let status = match srb.sense() {
        Some(buffer) if buffer.len() >= revcall_scsi::FIXED_SENSE_LEN => {
            buffer.fill(0);
            sense.write_fixed(buffer);
            SRB_STATUS_ERROR | SRB_STATUS_AUTOSENSE_VALID
        }
        _ => SRB_STATUS_ERROR,
    };
    srb.finish(status, CHECK_CONDITION, 0);
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    struct FakeSrb {
        function: u8,
        address: (u8, u8, u8),
        cdb: Vec<u8>,
        data: Vec<u8>,
        sense: Vec<u8>,
        finished: Option<(u8, u8, u32)>,
    }

    impl ScsiRequest for FakeSrb {
        fn function(&self) -> u8 {
            self.function
        }
        fn address(&self) -> (u8, u8, u8) {
            self.address
        }
        fn cdb(&self) -> &[u8] {
            &self.cdb
        }
        fn data(&mut self) -> Option<&mut [u8]> {
            Some(&mut self.data)
        }
        fn sense(&mut self) -> Option<&mut [u8]> {
            Some(&mut self.sense)
        }
        fn finish(&mut self, srb_status: u8, scsi_status: u8, transferred: u32) {
            assert!(self.finished.is_none(), "finished twice");
            assert!(
                transferred as usize <= self.data.len(),
                "more than the buffer"
            );
            self.finished = Some((srb_status, scsi_status, transferred));
        }
    }

    fn srb(lun: u8, command: Command) -> FakeSrb {
        let (cdb, len) = revcall_scsi::encode(&command);
        FakeSrb {
            function: srb_function::EXECUTE_SCSI,
            address: (0, 0, lun),
            cdb: cdb[..len].to_vec(),
            data: std::vec![0; 96],
            sense: std::vec![0; 18],
            finished: None,
        }
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

    fn run(srb: &mut FakeSrb, unit: Option<LunSpec>) -> (u8, u8, u32) {
        start_io(srb, |_| Units {
            unit,
            luns: [2u8].into_iter().collect(),
        });
        srb.finished.expect("every SRB is finished")
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
    fn data_commands_fail_not_ready_without_a_server() {
        let read = Command::Read(revcall_scsi::Transfer {
            lba: 0,
            blocks: 8,
            fua: false,
        });
        let mut s = srb(2, read);
        let error = SRB_STATUS_ERROR | SRB_STATUS_AUTOSENSE_VALID;
        assert_eq!(run(&mut s, Some(spec(0))), (error, CHECK_CONDITION, 0));
        assert_eq!(
            revcall_scsi::Sense::parse(&s.sense),
            Some(Sense::NOT_READY_MANUAL_INTERVENTION)
        );
        let past_end = Command::Write(revcall_scsi::Transfer {
            lba: 2047,
            blocks: 2,
            fua: false,
        });
        let mut s = srb(2, past_end);
        run(&mut s, Some(spec(0)));
        assert_eq!(
            revcall_scsi::Sense::parse(&s.sense),
            Some(Sense::LBA_OUT_OF_RANGE)
        );
        let write = Command::Write(revcall_scsi::Transfer {
            lba: 0,
            blocks: 1,
            fua: false,
        });
        let mut s = srb(2, write);
        run(&mut s, Some(spec(LunFlags::READ_ONLY)));
        assert_eq!(
            revcall_scsi::Sense::parse(&s.sense),
            Some(Sense::WRITE_PROTECTED)
        );
    }

    #[test]
    fn an_absent_lun_is_no_device_but_report_luns_answers() {
        let mut tur = srb(5, Command::TestUnitReady);
        assert_eq!(run(&mut tur, None), (srb_status::NO_DEVICE, GOOD, 0));
        let mut report = srb(0, Command::ReportLuns { alloc: 96 });
        assert_eq!(run(&mut report, None), (srb_status::SUCCESS, GOOD, 16));
        assert_eq!(report.data[9], 2);
        let mut bad = srb(2, Command::TestUnitReady);
        bad.cdb = std::vec![0xC1; 16];
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
