//! The SRBs Storport builds itself (the bus scan's INQUIRY), in pool memory like the real
//! port driver's, with a data buffer and the miniport's SrbExtension.

use std::mem::offset_of;

use storport_abi::SCSI_REQUEST_BLOCK;

use crate::pool::{Owner, Pool};

const TAG: u32 = u32::from_le_bytes(*b"Srb ");

/// An SRB and the blocks it points at; the addresses are live pool blocks until `free`.
pub struct Srb {
    srb: usize,
    data: usize,
    extension: usize,
}

impl Srb {
    /// An INQUIRY (36 bytes of data in) to LUN 0 of `target`.
    pub fn inquiry(pool: &Pool, target: u8, extension_size: u32) -> Option<Self> {
        let srb = pool
            .allocate_zeroed(size_of::<SCSI_REQUEST_BLOCK>(), TAG, Owner::Port)
            .ok()? as usize;
        let data = pool.allocate_zeroed(36, TAG, Owner::Port).ok()? as usize;
        let extension = match extension_size {
            0 => 0,
            size => pool.allocate_zeroed(size as usize, TAG, Owner::Port).ok()? as usize,
        };
        let srb = Self {
            srb,
            data,
            extension,
        };
        // The block is zeroed: fill the fields an INQUIRY needs.
        let put = |offset: usize, bytes: &[u8]| {
            pool.write_bytes(srb.srb + offset, bytes)
                .expect("inside the SRB block");
        };
        let length = size_of::<SCSI_REQUEST_BLOCK>() as u16;
        put(
            offset_of!(SCSI_REQUEST_BLOCK, Length),
            &length.to_le_bytes(),
        );
        put(
            offset_of!(SCSI_REQUEST_BLOCK, Function),
            &[storport_abi::srb_function::EXECUTE_SCSI],
        );
        put(offset_of!(SCSI_REQUEST_BLOCK, TargetId), &[target]);
        put(offset_of!(SCSI_REQUEST_BLOCK, CdbLength), &[6]);
        // INQUIRY, allocation length 36.
        put(offset_of!(SCSI_REQUEST_BLOCK, Cdb), &[0x12, 0, 0, 0, 36, 0]);
        put(
            offset_of!(SCSI_REQUEST_BLOCK, DataTransferLength),
            &36u32.to_le_bytes(),
        );
        put(
            offset_of!(SCSI_REQUEST_BLOCK, DataBuffer),
            &(data as u64).to_le_bytes(),
        );
        put(
            offset_of!(SCSI_REQUEST_BLOCK, SrbExtension),
            &(extension as u64).to_le_bytes(),
        );
        // SRB_FLAGS_DATA_IN.
        put(
            offset_of!(SCSI_REQUEST_BLOCK, SrbFlags),
            &0x40u32.to_le_bytes(),
        );
        Some(srb)
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
        for block in [self.srb, self.data, self.extension] {
            if block != 0 {
                let _ = pool.free(block as *mut u8, None);
            }
        }
    }
}
