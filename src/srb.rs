//! An SRB Storport handed HwStartIo, seen through [`ScsiRequest`]: the fields `disk` reads and
//! writes, its CDB, its data and sense buffers as slices.

use core::ptr::NonNull;

use crate::disk::ScsiRequest;
use storport_abi::SCSI_REQUEST_BLOCK;

/// `SRB_FLAGS_DISABLE_AUTOSENSE`: the class driver wants no sense data.
const SRB_FLAGS_DISABLE_AUTOSENSE: u32 = 0x20;

/// # Invariants
///
/// The pointer is a legacy SRB Storport passed to this driver's HwStartIo and that has not
/// been completed; until it is, its `DataBuffer` (`DataTransferLength` bytes, a system address
/// for every SRB but READ/WRITE under STOR_MAP_NON_READ_WRITE_BUFFERS) and `SenseInfoBuffer`
/// (`SenseInfoBufferLength` bytes) are this driver's to read and write. The value borrows the
/// SRB for its lifetime and completion happens after it is dropped.
pub struct Srb<'a> {
    srb: NonNull<SCSI_REQUEST_BLOCK>,
    _borrow: core::marker::PhantomData<&'a mut SCSI_REQUEST_BLOCK>,
}

impl Srb<'_> {
    /// # Safety
    ///
    /// `srb` is the SRB Storport passed to HwStartIo, not yet completed, and not completed
    /// while the returned value lives.
    pub unsafe fn new(srb: *mut SCSI_REQUEST_BLOCK) -> Option<Self> {
        Some(Self {
            srb: NonNull::new(srb)?,
            _borrow: core::marker::PhantomData,
        })
    }

    fn get(&self) -> &SCSI_REQUEST_BLOCK {
        // SAFETY: the type's invariant: a live SRB this value borrows.
        unsafe { self.srb.as_ref() }
    }

    fn get_mut(&mut self) -> &mut SCSI_REQUEST_BLOCK {
        // SAFETY: as in `get`, borrowed mutably through `&mut self`.
        unsafe { self.srb.as_mut() }
    }

    /// Whether READ/WRITE data is unmapped: `disk` never touches it yet (it waits for a
    /// server), and `data` must not hand out a user-space address.
    fn data_unmapped(&self) -> bool {
        let opcode = self.get().Cdb[0];
        // READ/WRITE (6, 10, 12, 16): not mapped under STOR_MAP_NON_READ_WRITE_BUFFERS.
        matches!(
            opcode,
            0x08 | 0x0A | 0x28 | 0x2A | 0xA8 | 0xAA | 0x88 | 0x8A
        )
    }
}

impl ScsiRequest for Srb<'_> {
    fn function(&self) -> u8 {
        self.get().Function
    }

    fn address(&self) -> (u8, u8, u8) {
        let srb = self.get();
        (srb.PathId, srb.TargetId, srb.Lun)
    }

    fn cdb(&self) -> &[u8] {
        let srb = self.get();
        let len = usize::from(srb.CdbLength).min(srb.Cdb.len());
        &srb.Cdb[..len]
    }

    fn data(&mut self) -> Option<&mut [u8]> {
        if self.data_unmapped() {
            return None;
        }
        let srb = self.get();
        let (buffer, len) = (srb.DataBuffer.cast::<u8>(), srb.DataTransferLength as usize);
        if buffer.is_null() || len == 0 {
            return None;
        }
        // SAFETY: the type's invariant: a mapped data buffer of DataTransferLength bytes,
        // ours until completion; `&mut self` keeps this the only view.
        Some(unsafe { core::slice::from_raw_parts_mut(buffer, len) })
    }

    fn sense(&mut self) -> Option<&mut [u8]> {
        let srb = self.get();
        let (buffer, len) = (
            srb.SenseInfoBuffer.cast::<u8>(),
            usize::from(srb.SenseInfoBufferLength),
        );
        if buffer.is_null() || len == 0 || srb.SrbFlags & SRB_FLAGS_DISABLE_AUTOSENSE != 0 {
            return None;
        }
        // SAFETY: the type's invariant: SenseInfoBufferLength bytes, ours until completion.
        Some(unsafe { core::slice::from_raw_parts_mut(buffer, len) })
    }

    fn finish(&mut self, srb_status: u8, scsi_status: u8, transferred: u32) {
        let srb = self.get_mut();
        srb.SrbStatus = srb_status;
        srb.ScsiStatus = scsi_status;
        srb.DataTransferLength = transferred.min(srb.DataTransferLength);
    }
}
