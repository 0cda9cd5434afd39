//! An SRB Storport handed HwStartIo, owned until it is completed: the fields `disk` reads and
//! writes, its CDB, its data and sense buffers as slices, and its completion.

use core::ptr::NonNull;

use crate::disk::{PendingSrb, ScsiRequest};
use nt_imports::inline::StorPortRequestComplete;
use storport_abi::{PVOID, SCSI_REQUEST_BLOCK, srb_function};

/// `SRB_FLAGS_DISABLE_AUTOSENSE`: the class driver wants no sense data.
const SRB_FLAGS_DISABLE_AUTOSENSE: u32 = 0x20;

/// # Invariants
///
/// `srb` is a legacy SRB Storport passed to the HwStartIo of the adapter whose
/// HwDeviceExtension is `ext`, and that has not been completed; this value is its only owner
/// (neither `Copy` nor `Clone`). Until it is completed, its `DataBuffer` (`DataTransferLength`
/// bytes, a system address for every SRB under STOR_MAP_ALL_BUFFERS_INCLUDING_READ_WRITE) and
/// `SenseInfoBuffer` (`SenseInfoBufferLength` bytes) are this driver's to read and write.
pub struct Srb {
    srb: NonNull<SCSI_REQUEST_BLOCK>,
    ext: PVOID,
}

// SAFETY: an SRB may be completed from any CPU; ownership travels with the value.
unsafe impl Send for Srb {}

impl Srb {
    /// Takes ownership of an SRB.
    ///
    /// # Safety
    ///
    /// `srb` is the SRB Storport passed to HwStartIo of the adapter whose HwDeviceExtension is
    /// `ext`, and the caller does not use it afterwards.
    pub unsafe fn new(ext: PVOID, srb: *mut SCSI_REQUEST_BLOCK) -> Option<Self> {
        Some(Self {
            srb: NonNull::new(srb)?,
            ext,
        })
    }

    fn get(&self) -> &SCSI_REQUEST_BLOCK {
        // SAFETY: the type's invariant: a live SRB this value owns.
        unsafe { self.srb.as_ref() }
    }

    fn get_mut(&mut self) -> &mut SCSI_REQUEST_BLOCK {
        // SAFETY: as in `get`, borrowed mutably through `&mut self`.
        unsafe { self.srb.as_mut() }
    }
}

impl ScsiRequest for Srb {
    fn function(&self) -> u8 {
        self.get().Function
    }

    fn address(&self) -> (u8, u8, u8) {
        let srb = self.get();
        (srb.PathId, srb.TargetId, srb.Lun)
    }

    fn cdb(&self) -> (&revcall_scsi::CdbBlock, usize) {
        let srb = self.get();
        (&srb.Cdb, usize::from(srb.CdbLength))
    }

    fn data(&mut self) -> Option<&mut [u8]> {
        let srb = self.get();
        if srb.Function != srb_function::EXECUTE_SCSI {
            return None;
        }
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
        if srb.Function != srb_function::EXECUTE_SCSI
            || buffer.is_null()
            || len == 0
            || srb.SrbFlags & SRB_FLAGS_DISABLE_AUTOSENSE != 0
        {
            return None;
        }
        // SAFETY: the type's invariant: SenseInfoBufferLength bytes, ours until completion.
        Some(unsafe { core::slice::from_raw_parts_mut(buffer, len) })
    }

    fn next_srb(&self) -> usize {
        self.get().NextSrb as usize
    }

    fn sense_written(&mut self, len: u8) {
        let srb = self.get_mut();
        srb.SenseInfoBufferLength = len.min(srb.SenseInfoBufferLength);
    }

    fn finish(&mut self, srb_status: u8, scsi_status: u8, transferred: u32) {
        let srb = self.get_mut();
        srb.SrbStatus = srb_status;
        // The other functions' blocks (power, PnP) use these bytes for their own fields.
        if srb.Function == srb_function::EXECUTE_SCSI {
            srb.ScsiStatus = scsi_status;
            srb.DataTransferLength = transferred.min(srb.DataTransferLength);
        }
    }
}

impl PendingSrb for Srb {
    fn id(&self) -> usize {
        self.srb.as_ptr() as usize
    }

    fn complete(self) {
        // SAFETY: `ext` is this SRB's adapter (invariant) and we give the SRB up here: `self`
        // is consumed, so it cannot be touched or completed again.
        unsafe { StorPortRequestComplete(self.ext, self.srb.as_ptr()) };
    }
}
