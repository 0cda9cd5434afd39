//! The SRBs Storport builds (its own bus scan's INQUIRY, and the SCSI commands of the disk
//! class model above it), in pool memory like the real port driver's, with a data buffer, a
//! sense buffer and the miniport's SrbExtension.

use std::mem::offset_of;

use storport_abi::SCSI_REQUEST_BLOCK;

use crate::pool::{Owner, Pool};

const TAG: u32 = u32::from_le_bytes(*b"Srb ");

/// An SRB and the blocks it points at; the addresses are live pool blocks until `free`.
pub struct Srb {
    srb: usize,
    data: usize,
    extension: usize,
    sense: usize,
    data_len: u32,
    /// (TargetId, Lun).
    address: (u8, u8),
}

/// Which way an SRB's data moves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    None,
    /// Device to host (READ, INQUIRY): SRB_FLAGS_DATA_IN.
    In,
    /// Host to device (WRITE): SRB_FLAGS_DATA_OUT.
    Out,
}

/// classpnp's sense buffer (SENSE_BUFFER_SIZE).
const SENSE_LEN: usize = 18;

/// disk.sys's default TimeOutValue, in seconds (DISK.md §4.1).
pub const TIMEOUT_S: u32 = 10;

impl Srb {
    /// An INQUIRY (36 bytes of data in) to LUN 0 of `target`: the port's own bus scan.
    pub fn inquiry(pool: &Pool, target: u8, extension_size: u32) -> Option<Self> {
        Self::scsi(
            pool,
            (target, 0),
            &[0x12, 0, 0, 0, 36, 0],
            36,
            Direction::In,
            extension_size,
        )
    }

    /// An EXECUTE_SCSI SRB to (`target`, `lun`) with `cdb`, a zeroed data buffer of
    /// `data_len` bytes and an 18-byte sense buffer, all in pool memory like the port
    /// driver's.
    pub fn scsi(
        pool: &Pool,
        address: (u8, u8),
        cdb: &[u8],
        data_len: u32,
        direction: Direction,
        extension_size: u32,
    ) -> Option<Self> {
        let function = storport_abi::srb_function::EXECUTE_SCSI;
        Self::build(
            pool,
            function,
            address,
            cdb,
            data_len,
            direction,
            extension_size,
        )
    }

    /// SRB_FUNCTION_RESET_LOGICAL_UNIT to (`target`, `lun`): the first step of Storport's
    /// reset ladder (DISK.md §4.2).
    pub fn reset_lun(pool: &Pool, address: (u8, u8), extension_size: u32) -> Option<Self> {
        let function = storport_abi::srb_function::RESET_LOGICAL_UNIT;
        Self::build(
            pool,
            function,
            address,
            &[],
            0,
            Direction::None,
            extension_size,
        )
    }

    fn build(
        pool: &Pool,
        function: u8,
        (target, lun): (u8, u8),
        cdb: &[u8],
        data_len: u32,
        direction: Direction,
        extension_size: u32,
    ) -> Option<Self> {
        let block = |size: usize| match size {
            0 => Some(0),
            size => pool
                .allocate_zeroed(size, TAG, Owner::Port)
                .ok()
                .map(|p| p as usize),
        };
        let srb = Self {
            srb: block(size_of::<SCSI_REQUEST_BLOCK>())?,
            data: block(data_len as usize)?,
            extension: block(extension_size as usize)?,
            sense: block(SENSE_LEN)?,
            data_len,
            address: (target, lun),
        };
        // The block is zeroed: fill the fields a SCSI command needs.
        let put = |offset: usize, bytes: &[u8]| {
            pool.write_bytes(srb.srb + offset, bytes)
                .expect("inside the SRB block");
        };
        let length = size_of::<SCSI_REQUEST_BLOCK>() as u16;
        put(
            offset_of!(SCSI_REQUEST_BLOCK, Length),
            &length.to_le_bytes(),
        );
        put(offset_of!(SCSI_REQUEST_BLOCK, Function), &[function]);
        put(offset_of!(SCSI_REQUEST_BLOCK, TargetId), &[target]);
        put(offset_of!(SCSI_REQUEST_BLOCK, Lun), &[lun]);
        put(
            offset_of!(SCSI_REQUEST_BLOCK, CdbLength),
            &[cdb.len() as u8],
        );
        put(offset_of!(SCSI_REQUEST_BLOCK, Cdb), cdb);
        put(
            offset_of!(SCSI_REQUEST_BLOCK, DataTransferLength),
            &data_len.to_le_bytes(),
        );
        put(
            offset_of!(SCSI_REQUEST_BLOCK, DataBuffer),
            &(srb.data as u64).to_le_bytes(),
        );
        put(
            offset_of!(SCSI_REQUEST_BLOCK, SrbExtension),
            &(srb.extension as u64).to_le_bytes(),
        );
        put(
            offset_of!(SCSI_REQUEST_BLOCK, SenseInfoBuffer),
            &(srb.sense as u64).to_le_bytes(),
        );
        put(
            offset_of!(SCSI_REQUEST_BLOCK, SenseInfoBufferLength),
            &[SENSE_LEN as u8],
        );
        let flags: u32 = match direction {
            Direction::None => 0,
            Direction::In => 0x40,
            Direction::Out => 0x80,
        };
        put(
            offset_of!(SCSI_REQUEST_BLOCK, SrbFlags),
            &flags.to_le_bytes(),
        );
        // classpnp's default disk timeout (DISK.md §4.1).
        put(
            offset_of!(SCSI_REQUEST_BLOCK, TimeOutValue),
            &10u32.to_le_bytes(),
        );
        Some(srb)
    }

    /// The data buffer's bytes (what a data-in command returned).
    pub fn data(&self, pool: &Pool) -> Vec<u8> {
        if self.data == 0 {
            return Vec::new();
        }
        pool.read_bytes(self.data, self.data_len as usize)
            .expect("the data buffer is a live block")
    }

    /// Fills the data buffer (a data-out command's payload).
    pub fn set_data(&self, pool: &Pool, bytes: &[u8]) {
        if self.data != 0 {
            pool.write_bytes(self.data, &bytes[..bytes.len().min(self.data_len as usize)])
                .expect("the data buffer is a live block");
        }
    }

    /// The sense buffer's bytes.
    pub fn sense(&self, pool: &Pool) -> Vec<u8> {
        pool.read_bytes(self.sense, SENSE_LEN)
            .expect("the sense buffer is a live block")
    }

    fn field(&self, pool: &Pool, offset: usize, len: usize) -> Vec<u8> {
        pool.read_bytes(self.srb + offset, len)
            .expect("the SRB is a live block")
    }

    /// `ScsiStatus`, once completed.
    pub fn scsi_status(&self, pool: &Pool) -> u8 {
        self.field(pool, offset_of!(SCSI_REQUEST_BLOCK, ScsiStatus), 1)[0]
    }

    /// `DataTransferLength`, once completed: the bytes the miniport says it moved.
    pub fn transferred(&self, pool: &Pool) -> u32 {
        let bytes = self.field(pool, offset_of!(SCSI_REQUEST_BLOCK, DataTransferLength), 4);
        u32::from_le_bytes(bytes.try_into().expect("4 bytes"))
    }

    /// The data length the SRB asked for.
    pub fn requested(&self) -> u32 {
        self.data_len
    }

    /// The CDB's operation code.
    pub fn opcode(&self, pool: &Pool) -> u8 {
        self.field(pool, offset_of!(SCSI_REQUEST_BLOCK, Cdb), 1)[0]
    }

    /// (TargetId, Lun).
    pub fn address(&self) -> (u8, u8) {
        self.address
    }

    pub fn addr(&self) -> usize {
        self.srb
    }

    pub fn as_ptr(&self) -> *mut SCSI_REQUEST_BLOCK {
        self.srb as *mut _
    }

    /// `SrbStatus`, once the miniport has completed it (Storport owns it again).
    pub fn status(&self, pool: &Pool) -> u8 {
        pool.read_bytes(self.srb + offset_of!(SCSI_REQUEST_BLOCK, SrbStatus), 1)
            .expect("the SRB is a live block")[0]
    }

    pub fn free(self, pool: &Pool) {
        for block in [self.srb, self.data, self.extension, self.sense] {
            if block != 0 {
                let _ = pool.free(block as *mut u8, None);
            }
        }
    }
}
