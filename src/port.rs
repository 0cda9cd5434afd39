//! What revcall tells Storport about its virtual bus, and how it answers SRBs on it.
//!
//! The adapter exposes one bus with one target whose logical units are the virtual disks
//! callers create (`disk` answers their SCSI commands); every bus-level request succeeds
//! trivially, since nothing is ever outstanding.

use storport_abi::{
    FALSE, PORT_CONFIGURATION_INFORMATION, SCSI_ADAPTER_SURPRISE_REMOVAL,
    SCSI_DMA64_MINIPORT_SUPPORTED, SCSI_QUERY_SUPPORTED_CONTROL_TYPES, SCSI_RESTART_ADAPTER,
    SCSI_STOP_ADAPTER, STOR_MAP_ALL_BUFFERS_INCLUDING_READ_WRITE, STOR_SYNCHRONIZE_FULL_DUPLEX,
    TRUE, srb_function, srb_status,
};

pub const NUMBER_OF_BUSES: u8 = 1;
pub const TARGETS_PER_BUS: u8 = 1;
pub const LUNS_PER_TARGET: u8 = revcall_protocol::MAX_LUNS as u8;
/// The largest transfer Storport hands one SRB (classpnp splits larger ones); reported in VPD
/// B0.
pub const MAXIMUM_TRANSFER_LENGTH: u32 = 64 * 1024;
pub const NUMBER_OF_PHYSICAL_BREAKS: u32 = 16;

/// The control types HwAdapterControl handles. ScsiAdapterSurpriseRemoval is essential: without
/// it a surprise removal waits forever for the parked IRPs (Storport calls no
/// HwCompleteServiceIrp first).
pub const SUPPORTED_CONTROL_TYPES: [u32; 4] = [
    SCSI_QUERY_SUPPORTED_CONTROL_TYPES,
    SCSI_STOP_ADAPTER,
    SCSI_RESTART_ADAPTER,
    SCSI_ADAPTER_SURPRISE_REMOVAL,
];

/// Fills the configuration HwFindAdapter returns for a virtual adapter.
pub fn configure(config: &mut PORT_CONFIGURATION_INFORMATION) {
    config.VirtualDevice = TRUE;
    config.MaximumTransferLength = MAXIMUM_TRANSFER_LENGTH;
    config.NumberOfPhysicalBreaks = NUMBER_OF_PHYSICAL_BREAKS;
    config.AlignmentMask = 0;
    config.NumberOfBuses = NUMBER_OF_BUSES;
    config.MaximumNumberOfTargets = TARGETS_PER_BUS;
    config.MaximumNumberOfLogicalUnits = LUNS_PER_TARGET;
    config.ScatterGather = TRUE;
    config.Master = TRUE;
    config.CachesData = FALSE;
    config.MapBuffers = STOR_MAP_ALL_BUFFERS_INCLUDING_READ_WRITE;
    config.Dma64BitAddresses = SCSI_DMA64_MINIPORT_SUPPORTED;
    config.SynchronizationModel = STOR_SYNCHRONIZE_FULL_DUPLEX;
    config.WmiDataProvider = FALSE;
}

/// Marks the supported control types in `list`, Storport's `SupportedTypeList` of
/// `MaxControlType` entries; types at or beyond its length are not reported.
pub fn report_supported(list: &mut [u8]) {
    for ty in SUPPORTED_CONTROL_TYPES {
        if let Some(entry) = list.get_mut(ty as usize) {
            *entry = TRUE;
        }
    }
}

/// The `SrbStatus` HwStartIo completes an SRB with. Never SRB_STATUS_PENDING.
pub fn start_io_status(function: u8, path_id: u8, target_id: u8, lun: u8) -> u8 {
    match function {
        srb_function::EXECUTE_SCSI => {
            if path_id >= NUMBER_OF_BUSES {
                srb_status::INVALID_PATH_ID
            } else if target_id >= TARGETS_PER_BUS {
                srb_status::INVALID_TARGET_ID
            } else if lun >= LUNS_PER_TARGET {
                srb_status::INVALID_LUN
            } else {
                // A valid address with no disk behind it (`disk` answers those that have one).
                srb_status::NO_DEVICE
            }
        }
        // Nothing is ever outstanding, so resets, aborts, flushes and queue controls have
        // nothing to do and succeed; PnP and power changes of (absent) units likewise.
        srb_function::RESET_BUS
        | srb_function::RESET_DEVICE
        | srb_function::RESET_LOGICAL_UNIT
        | srb_function::ABORT_COMMAND
        | srb_function::TERMINATE_IO
        | srb_function::RELEASE_RECOVERY
        | srb_function::FLUSH
        | srb_function::SHUTDOWN
        | srb_function::FLUSH_QUEUE
        | srb_function::RELEASE_QUEUE
        | srb_function::LOCK_QUEUE
        | srb_function::UNLOCK_QUEUE
        | srb_function::QUIESCE_DEVICE
        | srb_function::PNP
        | srb_function::POWER => srb_status::SUCCESS,
        // No miniport IOCTLs, no WMI, no dump support, legacy SRBs only, no crypto: refuse.
        _ => srb_status::INVALID_REQUEST,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use storport_abi::SP_UNINITIALIZED_VALUE;

    #[test]
    fn configuration_is_a_complete_virtual_adapter() {
        let mut config = PORT_CONFIGURATION_INFORMATION::zeroed();
        config.MaximumTransferLength = SP_UNINITIALIZED_VALUE;
        config.NumberOfPhysicalBreaks = SP_UNINITIALIZED_VALUE;
        configure(&mut config);
        assert_eq!(config.VirtualDevice, TRUE);
        assert_ne!(config.MaximumTransferLength, SP_UNINITIALIZED_VALUE);
        assert_ne!(config.NumberOfPhysicalBreaks, SP_UNINITIALIZED_VALUE);
        assert_eq!(config.SynchronizationModel, STOR_SYNCHRONIZE_FULL_DUPLEX);
        assert_eq!(
            (
                config.NumberOfBuses,
                config.MaximumNumberOfTargets,
                config.MaximumNumberOfLogicalUnits
            ),
            (1, 1, 8)
        );
    }

    #[test]
    fn control_types_are_reported_only_within_the_list() {
        let mut list = [0u8; 19];
        report_supported(&mut list);
        let reported: Vec<usize> = (0..19).filter(|&i| list[i] == TRUE).collect();
        assert_eq!(reported, [0, 1, 2, 16]);
        let mut short = [0u8; 16];
        report_supported(&mut short);
        assert_eq!(
            short.iter().filter(|&&b| b == TRUE).count(),
            3,
            "16 is beyond MaxControlType"
        );
    }

    #[test]
    fn every_srb_function_gets_a_final_status() {
        for function in 0..=u8::MAX {
            let status = start_io_status(function, 0, 0, 0);
            assert_ne!(status, srb_status::PENDING, "function {function:#x}");
        }
        assert_eq!(
            start_io_status(srb_function::EXECUTE_SCSI, 0, 0, 0),
            srb_status::NO_DEVICE
        );
        assert_eq!(
            start_io_status(srb_function::EXECUTE_SCSI, 1, 0, 0),
            srb_status::INVALID_PATH_ID
        );
        assert_eq!(
            start_io_status(srb_function::EXECUTE_SCSI, 0, 3, 0),
            srb_status::INVALID_TARGET_ID
        );
        assert_eq!(
            start_io_status(srb_function::EXECUTE_SCSI, 0, 0, 8),
            srb_status::INVALID_LUN
        );
        assert_eq!(
            start_io_status(srb_function::RESET_BUS, 0, 0, 0),
            srb_status::SUCCESS
        );
        assert_eq!(
            start_io_status(srb_function::IO_CONTROL, 0, 0, 0),
            srb_status::INVALID_REQUEST
        );
        assert_eq!(
            start_io_status(srb_function::STORAGE_REQUEST_BLOCK, 0, 0, 0),
            srb_status::INVALID_REQUEST
        );
    }
}
