//! Imports from `storport.sys` (DDI: storport.h).
//!
//! <https://learn.microsoft.com/windows-hardware/drivers/ddi/storport/>
#![allow(non_snake_case)]

use storport_abi::{BOOLEAN, DRIVER_OBJECT, HW_INITIALIZATION_DATA, PVOID, UNICODE_STRING};

#[link(name = "storport.sys", kind = "raw-dylib", modifiers = "+verbatim")]
unsafe extern "system" {
    /// Returns an NTSTATUS in a ULONG.
    /// <https://learn.microsoft.com/windows-hardware/drivers/ddi/storport/nf-storport-storportinitialize>
    pub fn StorPortInitialize(
        Argument1: *mut DRIVER_OBJECT,
        Argument2: *mut UNICODE_STRING,
        HwInitializationData: *mut HW_INITIALIZATION_DATA,
        HwContext: PVOID,
    ) -> u32;
    /// PASSIVE_LEVEL. `Buffer` must come from StorPortAllocateRegistryBuffer.
    /// <https://learn.microsoft.com/windows-hardware/drivers/ddi/storport/nf-storport-storportregistryread>
    pub fn StorPortRegistryRead(
        HwDeviceExtension: PVOID,
        ValueName: *const u8,
        Global: u32,
        Type: u32,
        Buffer: *mut u8,
        BufferLength: *mut u32,
    ) -> BOOLEAN;
    pub fn StorPortAllocateRegistryBuffer(HwDeviceExtension: PVOID, Length: *mut u32) -> *mut u8;
    pub fn StorPortFreeRegistryBuffer(HwDeviceExtension: PVOID, Buffer: *mut u8);
    /// Busy-waits `Delay` microseconds, at any IRQL.
    /// <https://learn.microsoft.com/windows-hardware/drivers/ddi/storport/nf-storport-storportstallexecution>
    pub fn StorPortStallExecution(Delay: u32);
    /// How many SRBs Storport may have outstanding on one logical unit; ≤ DISPATCH_LEVEL, on
    /// or after the unit's first INQUIRY.
    /// <https://learn.microsoft.com/windows-hardware/drivers/ddi/storport/nf-storport-storportsetdevicequeuedepth>
    pub fn StorPortSetDeviceQueueDepth(
        HwDeviceExtension: PVOID,
        PathId: u8,
        TargetId: u8,
        Lun: u8,
        Depth: u32,
    ) -> BOOLEAN;
}

#[link(name = "storport.sys", kind = "raw-dylib", modifiers = "+verbatim")]
unsafe extern "C" {
    /// Variadic: the arguments after the extension depend on `NotificationType`.
    pub fn StorPortNotification(NotificationType: u32, HwDeviceExtension: PVOID, ...);
    /// Variadic: the arguments after the extension depend on `FunctionCode`; returns STOR_STATUS.
    pub fn StorPortExtendedFunction(FunctionCode: u32, HwDeviceExtension: PVOID, ...) -> u32;
}
