//! Feature `wdk` (Windows hosts with the WDK): proves at compile time that the hand-written
//! bindings in `ffi` match wdk-sys's bindgen output of the real WDK headers.
//!
//! Nothing here runs; a mismatch is a compile error. It cannot be compiled on Linux (wdk-sys
//! needs the WDK), so it stays small: sizes, the offsets the driver touches, and the values.

use core::mem::{offset_of, size_of};

use crate::ffi;
use wdk_sys as wdk;

const _: () = {
    assert!(size_of::<ffi::HW_INITIALIZATION_DATA>() == size_of::<wdk::HW_INITIALIZATION_DATA>());
    assert!(
        offset_of!(ffi::HW_INITIALIZATION_DATA, HwFindAdapter)
            == offset_of!(wdk::HW_INITIALIZATION_DATA, HwFindAdapter)
    );
    assert!(
        offset_of!(ffi::HW_INITIALIZATION_DATA, DeviceExtensionSize)
            == offset_of!(wdk::HW_INITIALIZATION_DATA, DeviceExtensionSize)
    );
    assert!(
        offset_of!(ffi::HW_INITIALIZATION_DATA, HwAdapterControl)
            == offset_of!(wdk::HW_INITIALIZATION_DATA, HwAdapterControl)
    );
    assert!(
        offset_of!(ffi::HW_INITIALIZATION_DATA, HwProcessServiceRequest)
            == offset_of!(wdk::HW_INITIALIZATION_DATA, HwProcessServiceRequest)
    );
    assert!(
        offset_of!(ffi::HW_INITIALIZATION_DATA, HwCompleteServiceIrp)
            == offset_of!(wdk::HW_INITIALIZATION_DATA, HwCompleteServiceIrp)
    );
    assert!(
        offset_of!(ffi::HW_INITIALIZATION_DATA, FeatureSupport)
            == offset_of!(wdk::HW_INITIALIZATION_DATA, FeatureSupport)
    );

    assert!(
        size_of::<ffi::PORT_CONFIGURATION_INFORMATION>()
            == size_of::<wdk::PORT_CONFIGURATION_INFORMATION>()
    );
    assert!(
        offset_of!(ffi::PORT_CONFIGURATION_INFORMATION, MaximumTransferLength)
            == offset_of!(wdk::PORT_CONFIGURATION_INFORMATION, MaximumTransferLength)
    );
    assert!(
        offset_of!(ffi::PORT_CONFIGURATION_INFORMATION, SynchronizationModel)
            == offset_of!(wdk::PORT_CONFIGURATION_INFORMATION, SynchronizationModel)
    );
    assert!(
        offset_of!(ffi::PORT_CONFIGURATION_INFORMATION, VirtualDevice)
            == offset_of!(wdk::PORT_CONFIGURATION_INFORMATION, VirtualDevice)
    );

    assert!(size_of::<ffi::SCSI_REQUEST_BLOCK>() == size_of::<wdk::SCSI_REQUEST_BLOCK>());
    assert!(
        offset_of!(ffi::SCSI_REQUEST_BLOCK, SrbStatus)
            == offset_of!(wdk::SCSI_REQUEST_BLOCK, SrbStatus)
    );
    assert!(offset_of!(ffi::SCSI_REQUEST_BLOCK, Lun) == offset_of!(wdk::SCSI_REQUEST_BLOCK, Lun));

    assert!(size_of::<ffi::IRP>() == size_of::<wdk::IRP>());
    assert!(offset_of!(ffi::IRP, SystemBuffer) == offset_of!(wdk::IRP, AssociatedIrp));
    assert!(offset_of!(ffi::IRP, IoStatus) == offset_of!(wdk::IRP, IoStatus));
    assert!(offset_of!(ffi::IRP, Cancel) == offset_of!(wdk::IRP, Cancel));
    assert!(offset_of!(ffi::IRP, CancelIrql) == offset_of!(wdk::IRP, CancelIrql));
    assert!(offset_of!(ffi::IRP, CancelRoutine) == offset_of!(wdk::IRP, CancelRoutine));
    assert!(offset_of!(ffi::IRP, DriverContext) == offset_of!(wdk::IRP, Tail));
    assert!(size_of::<ffi::IO_STACK_LOCATION>() == size_of::<wdk::IO_STACK_LOCATION>());
    assert!(size_of::<ffi::KLOCK_QUEUE_HANDLE>() == size_of::<wdk::KLOCK_QUEUE_HANDLE>());
    assert!(size_of::<ffi::STOR_DPC>() == size_of::<wdk::STOR_DPC>());

    assert!(
        ffi::SCSI_ADAPTER_SURPRISE_REMOVAL
            == wdk::_SCSI_ADAPTER_CONTROL_TYPE::ScsiAdapterSurpriseRemoval as u32
    );
    assert!(ffi::REQUEST_TIMER_CALL == wdk::_SCSI_NOTIFICATION_TYPE::RequestTimerCall as u32);
    assert!(
        ffi::EXT_FUNCTION_COMPLETE_SERVICE_IRP
            == wdk::_STORPORT_FUNCTION_CODE::ExtFunctionCompleteServiceIrp as u32
    );
    assert!(ffi::STOR_FEATURE_VIRTUAL_MINIPORT == wdk::STOR_FEATURE_VIRTUAL_MINIPORT);
    assert!(ffi::srb_status::NO_DEVICE as u32 == wdk::SRB_STATUS_NO_DEVICE);
    assert!(ffi::MINIPORT_REG_DWORD == wdk::MINIPORT_REG_DWORD);
};
