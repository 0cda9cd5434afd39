//! The WDK structures and constants of the Storport service-IRP path, x64 layouts, hand-written.
//!
//! Shared by the driver (built for `x86_64-pc-windows-msvc`) and storsim (a Linux host that
//! calls into the same driver), so every function-pointer type is `extern "win64"`: on the
//! Windows x64 target that is the one "system" convention, on Linux it is what the driver's code
//! actually expects.
//!
//! Sources: storport.h / srb.h / wdm.h as tabulated in docs/STORPORT-NOTES.md §1 and §4
//! (DDI: <https://learn.microsoft.com/windows-hardware/drivers/ddi/storport/>). Every size and
//! every offset the driver reads or writes is asserted below; the `wdk` feature additionally
//! checks them against wdk-sys on a Windows host (`wdk_check.rs`).
#![no_std]
#![allow(non_camel_case_types, non_snake_case, clippy::upper_case_acronyms)]

pub mod init;
pub mod status;

use core::ffi::c_void;
use core::mem::{offset_of, size_of};

pub type PVOID = *mut c_void;
pub type BOOLEAN = u8;
pub type KIRQL = u8;
pub type NTSTATUS = i32;
pub type KSPIN_LOCK = usize;

pub const TRUE: BOOLEAN = 1;
pub const FALSE: BOOLEAN = 0;

/// Opaque: revcall only passes these through.
#[repr(C)]
pub struct DRIVER_OBJECT {
    _opaque: [u8; 0],
}
#[repr(C)]
pub struct DEVICE_OBJECT {
    _opaque: [u8; 0],
}
/// `DEVICE_OBJECT.StackSize` (CCHAR): the locations an IRP sent to this device needs.
pub const DEVICE_OBJECT_STACK_SIZE: usize = 0x4C;
/// `UNICODE_STRING`: counted UTF-16, not NUL-terminated.
#[repr(C)]
pub struct UNICODE_STRING {
    /// In bytes, without a terminating NUL.
    pub Length: u16,
    pub MaximumLength: u16,
    pub Buffer: *mut u16,
}
const _: () = assert!(size_of::<UNICODE_STRING>() == 0x10);

/// `FILE_OBJECT`: opaque; a kernel-mode caller holds a referenced one for the device it sends
/// IRPs to (IoGetDeviceObjectPointer) and names it in each IRP's stack location.
#[repr(C)]
pub struct FILE_OBJECT {
    _opaque: [u8; 0],
}

/// `KEVENT` (a DISPATCHER_HEADER and a list head): storage only, initialised by
/// KeInitializeEvent.
#[repr(C, align(8))]
pub struct KEVENT {
    _opaque: [u8; 0x18],
}

impl KEVENT {
    pub const fn new() -> Self {
        Self { _opaque: [0; 0x18] }
    }
}

impl Default for KEVENT {
    fn default() -> Self {
        Self::new()
    }
}

/// `IO_WORKITEM`: opaque, `IoSizeofWorkItem()` bytes the caller provides
/// (IoInitializeWorkItem).
#[repr(C)]
pub struct IO_WORKITEM {
    _opaque: [u8; 0],
}

/// `IO_WORKITEM_ROUTINE_EX`: runs at PASSIVE_LEVEL in a system worker thread; `IoObject` is
/// the driver or device object the item was initialised with.
pub type IO_WORKITEM_ROUTINE_EX =
    unsafe extern "win64" fn(IoObject: PVOID, Context: PVOID, IoWorkItem: *mut IO_WORKITEM);

/// `IO_COMPLETION_ROUTINE`: the device above (NULL at the top), the IRP, the context given to
/// IoSetCompletionRoutine.
pub type IO_COMPLETION_ROUTINE = unsafe extern "win64" fn(
    DeviceObject: *mut DEVICE_OBJECT,
    Irp: *mut IRP,
    Context: PVOID,
) -> NTSTATUS;

// ---- Storport callbacks (storport.h).

pub type HW_INITIALIZE = unsafe extern "win64" fn(DeviceExtension: PVOID) -> BOOLEAN;
pub type HW_STARTIO =
    unsafe extern "win64" fn(DeviceExtension: PVOID, Srb: *mut SCSI_REQUEST_BLOCK) -> BOOLEAN;
pub type VIRTUAL_HW_FIND_ADAPTER = unsafe extern "win64" fn(
    DeviceExtension: PVOID,
    HwContext: PVOID,
    BusInformation: PVOID,
    LowerDevice: PVOID,
    ArgumentString: *mut i8,
    ConfigInfo: *mut PORT_CONFIGURATION_INFORMATION,
    Again: *mut BOOLEAN,
) -> u32;
pub type HW_RESET_BUS = unsafe extern "win64" fn(DeviceExtension: PVOID, PathId: u32) -> BOOLEAN;
pub type HW_ADAPTER_CONTROL =
    unsafe extern "win64" fn(DeviceExtension: PVOID, ControlType: u32, Parameters: PVOID) -> u32;
pub type HW_FREE_ADAPTER_RESOURCES = unsafe extern "win64" fn(DeviceExtension: PVOID);
pub type HW_PROCESS_SERVICE_REQUEST = unsafe extern "win64" fn(DeviceExtension: PVOID, Irp: PVOID);
pub type HW_COMPLETE_SERVICE_IRP = unsafe extern "win64" fn(DeviceExtension: PVOID);
pub type HW_TIMER = unsafe extern "win64" fn(DeviceExtension: PVOID);
/// `HW_TIMER_EX`: the callback of a timer from StorPortInitializeTimer.
pub type HW_TIMER_EX = unsafe extern "win64" fn(DeviceExtension: PVOID, Context: PVOID);
pub type HW_DPC_ROUTINE = unsafe extern "win64" fn(
    Dpc: *mut STOR_DPC,
    HwDeviceExtension: PVOID,
    SystemArgument1: PVOID,
    SystemArgument2: PVOID,
);
pub type DRIVER_CANCEL = unsafe extern "win64" fn(DeviceObject: *mut DEVICE_OBJECT, Irp: *mut IRP);

/// `HW_INITIALIZATION_DATA` (Win8+, 0xD0 bytes). revcall uses it with
/// `STOR_FEATURE_VIRTUAL_MINIPORT` rather than the 0xB0-byte `VIRTUAL_HW_INITIALIZATION_DATA`,
/// as the DDI page recommends for virtual miniports that run only on Windows 8 or later
/// (service IRPs need Windows 8 anyway). `HwFindAdapter` is typed `PVOID` in the header; a
/// virtual miniport stores the virtual prototype there.
#[repr(C)]
pub struct HW_INITIALIZATION_DATA {
    pub HwInitializationDataSize: u32,
    pub AdapterInterfaceType: i32,
    pub HwInitialize: Option<HW_INITIALIZE>,
    pub HwStartIo: Option<HW_STARTIO>,
    pub HwInterrupt: PVOID,
    pub HwFindAdapter: Option<VIRTUAL_HW_FIND_ADAPTER>,
    pub HwResetBus: Option<HW_RESET_BUS>,
    pub HwDmaStarted: PVOID,
    pub HwAdapterState: PVOID,
    pub DeviceExtensionSize: u32,
    pub SpecificLuExtensionSize: u32,
    pub SrbExtensionSize: u32,
    pub NumberOfAccessRanges: u32,
    pub Reserved: PVOID,
    pub MapBuffers: u8,
    pub NeedPhysicalAddresses: BOOLEAN,
    pub TaggedQueuing: BOOLEAN,
    pub AutoRequestSense: BOOLEAN,
    pub MultipleRequestPerLu: BOOLEAN,
    pub ReceiveEvent: BOOLEAN,
    pub VendorIdLength: u16,
    pub VendorId: PVOID,
    pub PortVersionFlags: u16,
    pub DeviceIdLength: u16,
    pub DeviceId: PVOID,
    pub HwAdapterControl: Option<HW_ADAPTER_CONTROL>,
    pub HwBuildIo: PVOID,
    pub HwFreeAdapterResources: Option<HW_FREE_ADAPTER_RESOURCES>,
    pub HwProcessServiceRequest: Option<HW_PROCESS_SERVICE_REQUEST>,
    pub HwCompleteServiceIrp: Option<HW_COMPLETE_SERVICE_IRP>,
    pub HwInitializeTracing: PVOID,
    pub HwCleanupTracing: PVOID,
    pub HwTracingEnabled: PVOID,
    pub FeatureSupport: u32,
    pub SrbTypeFlags: u32,
    pub AddressTypeFlags: u32,
    pub Reserved1: u32,
    pub HwUnitControl: PVOID,
}

impl HW_INITIALIZATION_DATA {
    pub const fn zeroed() -> Self {
        // SAFETY: every field is an integer, a raw pointer or an `Option` of a function
        // pointer, for all of which all-zero bytes are a valid value (0, null, None).
        unsafe { core::mem::zeroed() }
    }
}

/// `PORT_CONFIGURATION_INFORMATION` (0xE0 bytes).
#[repr(C)]
pub struct PORT_CONFIGURATION_INFORMATION {
    pub Length: u32,
    pub SystemIoBusNumber: u32,
    pub AdapterInterfaceType: i32,
    pub BusInterruptLevel: u32,
    pub BusInterruptVector: u32,
    pub InterruptMode: u32,
    pub MaximumTransferLength: u32,
    pub NumberOfPhysicalBreaks: u32,
    pub DmaChannel: u32,
    pub DmaPort: u32,
    pub DmaWidth: u32,
    pub DmaSpeed: u32,
    pub AlignmentMask: u32,
    pub NumberOfAccessRanges: u32,
    pub AccessRanges: PVOID,
    pub MiniportDumpData: PVOID,
    pub NumberOfBuses: u8,
    pub InitiatorBusId: [i8; 8],
    pub ScatterGather: BOOLEAN,
    pub Master: BOOLEAN,
    pub CachesData: BOOLEAN,
    pub AdapterScansDown: BOOLEAN,
    pub AtdiskPrimaryClaimed: BOOLEAN,
    pub AtdiskSecondaryClaimed: BOOLEAN,
    pub Dma32BitAddresses: BOOLEAN,
    pub DemandMode: BOOLEAN,
    pub MapBuffers: u8,
    pub NeedPhysicalAddresses: BOOLEAN,
    pub TaggedQueuing: BOOLEAN,
    pub AutoRequestSense: BOOLEAN,
    pub MultipleRequestPerLu: BOOLEAN,
    pub ReceiveEvent: BOOLEAN,
    pub RealModeInitialized: BOOLEAN,
    pub BufferAccessScsiPortControlled: BOOLEAN,
    pub MaximumNumberOfTargets: u8,
    pub SrbType: u8,
    pub AddressType: u8,
    pub SlotNumber: u32,
    pub BusInterruptLevel2: u32,
    pub BusInterruptVector2: u32,
    pub InterruptMode2: u32,
    pub DmaChannel2: u32,
    pub DmaPort2: u32,
    pub DmaWidth2: u32,
    pub DmaSpeed2: u32,
    pub DeviceExtensionSize: u32,
    pub SpecificLuExtensionSize: u32,
    pub SrbExtensionSize: u32,
    pub Dma64BitAddresses: u8,
    pub ResetTargetSupported: BOOLEAN,
    pub MaximumNumberOfLogicalUnits: u8,
    pub WmiDataProvider: BOOLEAN,
    pub SynchronizationModel: u32,
    pub HwMSInterruptRoutine: PVOID,
    pub InterruptSynchronizationMode: u32,
    pub DumpRegion: [u64; 3],
    pub RequestedDumpBufferSize: u32,
    pub VirtualDevice: BOOLEAN,
    pub DumpMode: u8,
    pub DmaAddressWidth: u8,
    pub ExtendedFlags1: u32,
    pub MaxNumberOfIO: u32,
    pub MaxIOsPerLun: u32,
    pub InitialLunQueueDepth: u32,
    pub BusResetHoldTime: u32,
    pub FeatureSupport: u32,
}

impl PORT_CONFIGURATION_INFORMATION {
    pub const fn zeroed() -> Self {
        // SAFETY: every field is an integer, an integer array or a raw pointer, all valid at 0.
        unsafe { core::mem::zeroed() }
    }
}

/// `SCSI_REQUEST_BLOCK` (legacy SRB, 0x58 bytes).
#[repr(C)]
pub struct SCSI_REQUEST_BLOCK {
    pub Length: u16,
    pub Function: u8,
    pub SrbStatus: u8,
    pub ScsiStatus: u8,
    pub PathId: u8,
    pub TargetId: u8,
    pub Lun: u8,
    pub QueueTag: u8,
    pub QueueAction: u8,
    pub CdbLength: u8,
    pub SenseInfoBufferLength: u8,
    pub SrbFlags: u32,
    pub DataTransferLength: u32,
    pub TimeOutValue: u32,
    pub DataBuffer: PVOID,
    pub SenseInfoBuffer: PVOID,
    pub NextSrb: *mut SCSI_REQUEST_BLOCK,
    pub OriginalRequest: PVOID,
    pub SrbExtension: PVOID,
    pub InternalStatus: u32,
    pub Reserved: u32,
    pub Cdb: [u8; 16],
}

/// `IO_STATUS_BLOCK`.
#[repr(C)]
pub struct IO_STATUS_BLOCK {
    pub Status: NTSTATUS,
    pub Information: usize,
}

/// `IRP` (0xD0 bytes, 16-aligned). Only `Tail.Overlay` of the tail union is spelt out.
#[repr(C, align(16))]
pub struct IRP {
    pub Type: i16,
    pub Size: u16,
    pub AllocationProcessorNumber: u16,
    pub Reserved: u16,
    pub MdlAddress: PVOID,
    pub Flags: u32,
    /// `AssociatedIrp.SystemBuffer`.
    pub SystemBuffer: PVOID,
    pub ThreadListEntry: [PVOID; 2],
    pub IoStatus: IO_STATUS_BLOCK,
    pub RequestorMode: i8,
    pub PendingReturned: BOOLEAN,
    pub StackCount: i8,
    pub CurrentLocation: i8,
    pub Cancel: BOOLEAN,
    pub CancelIrql: KIRQL,
    pub ApcEnvironment: i8,
    pub AllocationFlags: u8,
    pub UserIosb: PVOID,
    pub UserEvent: PVOID,
    pub Overlay: [PVOID; 2],
    /// Read and written only with interlocked operations (`IoSetCancelRoutine`).
    pub CancelRoutine: Option<DRIVER_CANCEL>,
    pub UserBuffer: PVOID,
    /// `Tail.Overlay.DriverContext[4]`: the IRP's current owner may use it.
    pub DriverContext: [PVOID; 4],
    pub Thread: PVOID,
    pub AuxiliaryBuffer: PVOID,
    pub ListEntry: [PVOID; 2],
    pub CurrentStackLocation: *mut IO_STACK_LOCATION,
    pub OriginalFileObject: PVOID,
    _tail_rest: [u8; 0x08],
}

/// `IO_STACK_LOCATION` (0x48 bytes) with the `Parameters.DeviceIoControl` view.
#[repr(C)]
pub struct IO_STACK_LOCATION {
    pub MajorFunction: u8,
    pub MinorFunction: u8,
    pub Flags: u8,
    pub Control: u8,
    /// `Parameters` is pointer-aligned.
    _pad_head: u32,
    pub OutputBufferLength: u32,
    _pad0: u32,
    pub InputBufferLength: u32,
    _pad1: u32,
    pub IoControlCode: u32,
    _pad2: u32,
    pub Type3InputBuffer: PVOID,
    pub DeviceObject: *mut DEVICE_OBJECT,
    pub FileObject: PVOID,
    pub CompletionRoutine: PVOID,
    pub Context: PVOID,
}

/// `KLOCK_QUEUE_HANDLE`: the in-stack queued spin lock's per-acquisition handle.
#[repr(C)]
pub struct KLOCK_QUEUE_HANDLE {
    pub Next: PVOID,
    pub Lock: PVOID,
    pub OldIrql: KIRQL,
}

impl KLOCK_QUEUE_HANDLE {
    pub const fn new() -> Self {
        Self {
            Next: core::ptr::null_mut(),
            Lock: core::ptr::null_mut(),
            OldIrql: 0,
        }
    }
}

impl Default for KLOCK_QUEUE_HANDLE {
    fn default() -> Self {
        Self::new()
    }
}

/// `STOR_DPC` = `{ DPC_BUFFER Dpc; ULONG_PTR Lock; }`: opaque, written only by Storport.
/// `DPC_BUFFER` mirrors the 0x40-byte `KDPC` [INFERRED from wdm.h; checked by `wdk_check`].
#[repr(C, align(8))]
pub struct STOR_DPC {
    _opaque: [u8; 0x48],
}

/// `SCSI_SUPPORTED_CONTROL_TYPE_LIST`: `SupportedTypeList[MaxControlType]` follows at offset 4.
#[repr(C)]
pub struct SCSI_SUPPORTED_CONTROL_TYPE_LIST {
    pub MaxControlType: u32,
    pub SupportedTypeList: [BOOLEAN; 0],
}

// ---- Constants (docs/STORPORT-NOTES.md §4).

pub const INTERFACE_TYPE_INTERNAL: i32 = 0;
pub const STOR_FEATURE_VIRTUAL_MINIPORT: u32 = 0x1;
pub const STOR_MAP_NON_READ_WRITE_BUFFERS: u8 = 2;
/// Every data buffer, READ and WRITE included, is a system address (DISK.md §2.1).
pub const STOR_MAP_ALL_BUFFERS_INCLUDING_READ_WRITE: u8 = 3;
pub const STOR_SYNCHRONIZE_FULL_DUPLEX: u32 = 1;
pub const SCSI_DMA64_MINIPORT_SUPPORTED: u8 = 0x01;
/// `SP_UNINITIALIZED_VALUE`: what SDV's StorPortFindAdapter rule forbids leaving behind.
pub const SP_UNINITIALIZED_VALUE: u32 = 0xFFFF_FFFF;
pub const SP_RETURN_NOT_FOUND: u32 = 0;
pub const SP_RETURN_FOUND: u32 = 1;
pub const SP_RETURN_ERROR: u32 = 2;
pub const SP_RETURN_BAD_CONFIG: u32 = 3;

/// `SCSI_ADAPTER_CONTROL_TYPE`.
pub const SCSI_QUERY_SUPPORTED_CONTROL_TYPES: u32 = 0;
pub const SCSI_STOP_ADAPTER: u32 = 1;
pub const SCSI_RESTART_ADAPTER: u32 = 2;
pub const SCSI_ADAPTER_SURPRISE_REMOVAL: u32 = 16;
/// `SCSI_ADAPTER_CONTROL_STATUS`.
pub const SCSI_ADAPTER_CONTROL_SUCCESS: u32 = 0;
pub const SCSI_ADAPTER_CONTROL_UNSUCCESSFUL: u32 = 1;

/// `SCSI_NOTIFICATION_TYPE`.
pub const REQUEST_COMPLETE: u32 = 0;
pub const REQUEST_TIMER_CALL: u32 = 6;
pub const BUS_CHANGE_DETECTED: u32 = 7;
pub const INITIALIZE_DPC: u32 = 0x1001;
pub const ISSUE_DPC: u32 = 0x1002;
/// `STORPORT_FUNCTION_CODE`: `ExtFunctionCompleteServiceIrp`.
pub const EXT_FUNCTION_COMPLETE_SERVICE_IRP: u32 = 7;
/// `STORPORT_FUNCTION_CODE`: `ExtFunctionInitializeTimer`, `RequestTimer`, `FreeTimer`.
pub const EXT_FUNCTION_INITIALIZE_TIMER: u32 = 32;
pub const EXT_FUNCTION_REQUEST_TIMER: u32 = 33;
pub const EXT_FUNCTION_FREE_TIMER: u32 = 34;
/// `STOR_STATUS_SUCCESS`: what StorPortExtendedFunction returns when it did what was asked.
pub const STOR_STATUS_SUCCESS: u32 = 0;
pub const STOR_STATUS_NOT_IMPLEMENTED: u32 = 0xC100_0002;
pub const STOR_STATUS_INSUFFICIENT_RESOURCES: u32 = 0xC100_0003;
pub const STOR_STATUS_INVALID_PARAMETER: u32 = 0xC100_0006;

/// `MINIPORT_REG_DWORD` (StorPortRegistryRead's `Type`).
pub const MINIPORT_REG_DWORD: u32 = 4;

/// The `NTSTATUS` values a service IRP completes with (the whole table: [`status`]).
pub use status::{
    STATUS_CANCELLED, STATUS_DEVICE_REMOVED, STATUS_INVALID_PARAMETER, STATUS_PENDING,
    STATUS_QUOTA_EXCEEDED, STATUS_SUCCESS,
};

/// IRQLs (x64) and `IO_NO_INCREMENT` (docs/STORPORT-NOTES.md §4.6).
pub const PASSIVE_LEVEL: KIRQL = 0;
pub const APC_LEVEL: KIRQL = 1;
pub const DISPATCH_LEVEL: KIRQL = 2;
pub const HIGH_LEVEL: KIRQL = 15;
pub const IO_NO_INCREMENT: i8 = 0;

/// `POOL_FLAG_NON_PAGED` and `POOL_FLAG_PAGED` (ExAllocatePool2's `Flags`, wdm.h); paged pool
/// only at IRQL ≤ APC_LEVEL.
pub const POOL_FLAG_NON_PAGED: u64 = 0x40;
pub const POOL_FLAG_PAGED: u64 = 0x100;
/// `POOL_FLAG_UNINITIALIZED`: the block's contents are not zeroed.
pub const POOL_FLAG_UNINITIALIZED: u64 = 0x2;

/// `IRP_MJ_DEVICE_CONTROL`: the major function of every service IRP.
pub const IRP_MJ_DEVICE_CONTROL: u8 = 0x0E;
/// `IO_STACK_LOCATION.Control` bits IoSetCompletionRoutine sets: call the routine when the
/// IRP is cancelled, succeeds, fails.
pub const SL_INVOKE_ON_CANCEL: u8 = 0x20;
pub const SL_INVOKE_ON_SUCCESS: u8 = 0x40;
pub const SL_INVOKE_ON_ERROR: u8 = 0x80;
/// `DelayedWorkQueue` (WORK_QUEUE_TYPE).
pub const DELAYED_WORK_QUEUE: u32 = 1;
/// `FILE_READ_DATA | FILE_WRITE_DATA`: what a caller of the read/write service IOCTL opens with.
pub const FILE_READ_WRITE_DATA: u32 = 0x3;
/// `KWAIT_REASON::Executive` and `KPROCESSOR_MODE::KernelMode` (KeWaitForSingleObject).
pub const EXECUTIVE: u32 = 0;
pub const KERNEL_MODE: i8 = 0;
/// `EVENT_TYPE`: NotificationEvent stays signalled; SynchronizationEvent wakes one waiter.
pub const NOTIFICATION_EVENT: u32 = 0;
pub const SYNCHRONIZATION_EVENT: u32 = 1;

/// `SRB_FUNCTION_*`.
pub mod srb_function {
    pub const EXECUTE_SCSI: u8 = 0x00;
    pub const CLAIM_DEVICE: u8 = 0x01;
    pub const IO_CONTROL: u8 = 0x02;
    pub const RECEIVE_EVENT: u8 = 0x03;
    pub const RELEASE_QUEUE: u8 = 0x04;
    pub const ATTACH_DEVICE: u8 = 0x05;
    pub const RELEASE_DEVICE: u8 = 0x06;
    pub const SHUTDOWN: u8 = 0x07;
    pub const FLUSH: u8 = 0x08;
    pub const ABORT_COMMAND: u8 = 0x10;
    pub const RELEASE_RECOVERY: u8 = 0x11;
    pub const RESET_BUS: u8 = 0x12;
    pub const RESET_DEVICE: u8 = 0x13;
    pub const TERMINATE_IO: u8 = 0x14;
    pub const FLUSH_QUEUE: u8 = 0x15;
    pub const REMOVE_DEVICE: u8 = 0x16;
    pub const WMI: u8 = 0x17;
    pub const LOCK_QUEUE: u8 = 0x18;
    pub const UNLOCK_QUEUE: u8 = 0x19;
    pub const QUIESCE_DEVICE: u8 = 0x1A;
    pub const RESET_LOGICAL_UNIT: u8 = 0x20;
    pub const SET_LINK_TIMEOUT: u8 = 0x21;
    pub const LINK_TIMEOUT_OCCURRED: u8 = 0x22;
    pub const LINK_TIMEOUT_COMPLETE: u8 = 0x23;
    pub const POWER: u8 = 0x24;
    pub const PNP: u8 = 0x25;
    pub const DUMP_POINTERS: u8 = 0x26;
    pub const FREE_DUMP_POINTERS: u8 = 0x27;
    pub const STORAGE_REQUEST_BLOCK: u8 = 0x28;
    pub const CRYPTO_OPERATION: u8 = 0x29;
}

/// `SRB_STATUS_*`.
pub mod srb_status {
    pub const PENDING: u8 = 0x00;
    pub const SUCCESS: u8 = 0x01;
    pub const ABORTED: u8 = 0x02;
    pub const ERROR: u8 = 0x04;
    pub const BUSY: u8 = 0x05;
    pub const INVALID_REQUEST: u8 = 0x06;
    pub const INVALID_PATH_ID: u8 = 0x07;
    pub const NO_DEVICE: u8 = 0x08;
    pub const INVALID_LUN: u8 = 0x20;
    pub const BUS_RESET: u8 = 0x0E;
    pub const INVALID_TARGET_ID: u8 = 0x21;
}

// ---- Layout proofs against docs/STORPORT-NOTES.md §1.

const _: () = {
    assert!(size_of::<HW_INITIALIZATION_DATA>() == 0xD0);
    assert!(offset_of!(HW_INITIALIZATION_DATA, HwInitialize) == 0x08);
    assert!(offset_of!(HW_INITIALIZATION_DATA, HwStartIo) == 0x10);
    assert!(offset_of!(HW_INITIALIZATION_DATA, HwFindAdapter) == 0x20);
    assert!(offset_of!(HW_INITIALIZATION_DATA, HwResetBus) == 0x28);
    assert!(offset_of!(HW_INITIALIZATION_DATA, DeviceExtensionSize) == 0x40);
    assert!(offset_of!(HW_INITIALIZATION_DATA, MapBuffers) == 0x58);
    assert!(offset_of!(HW_INITIALIZATION_DATA, TaggedQueuing) == 0x5A);
    assert!(offset_of!(HW_INITIALIZATION_DATA, MultipleRequestPerLu) == 0x5C);
    assert!(offset_of!(HW_INITIALIZATION_DATA, VendorId) == 0x60);
    assert!(offset_of!(HW_INITIALIZATION_DATA, PortVersionFlags) == 0x68);
    assert!(offset_of!(HW_INITIALIZATION_DATA, DeviceId) == 0x70);
    assert!(offset_of!(HW_INITIALIZATION_DATA, HwAdapterControl) == 0x78);
    assert!(offset_of!(HW_INITIALIZATION_DATA, HwBuildIo) == 0x80);
    assert!(offset_of!(HW_INITIALIZATION_DATA, HwFreeAdapterResources) == 0x88);
    assert!(offset_of!(HW_INITIALIZATION_DATA, HwProcessServiceRequest) == 0x90);
    assert!(offset_of!(HW_INITIALIZATION_DATA, HwCompleteServiceIrp) == 0x98);
    assert!(offset_of!(HW_INITIALIZATION_DATA, HwTracingEnabled) == 0xB0);
    assert!(offset_of!(HW_INITIALIZATION_DATA, FeatureSupport) == 0xB8);
    assert!(offset_of!(HW_INITIALIZATION_DATA, SrbTypeFlags) == 0xBC);
    assert!(offset_of!(HW_INITIALIZATION_DATA, HwUnitControl) == 0xC8);

    assert!(size_of::<PORT_CONFIGURATION_INFORMATION>() == 0xE0);
    assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, MaximumTransferLength) == 0x18);
    assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, NumberOfPhysicalBreaks) == 0x1C);
    assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, AlignmentMask) == 0x30);
    assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, AccessRanges) == 0x38);
    assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, NumberOfBuses) == 0x48);
    assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, InitiatorBusId) == 0x49);
    assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, ScatterGather) == 0x51);
    assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, Master) == 0x52);
    assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, CachesData) == 0x53);
    assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, MapBuffers) == 0x59);
    assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, TaggedQueuing) == 0x5B);
    assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, MultipleRequestPerLu) == 0x5D);
    assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, MaximumNumberOfTargets) == 0x61);
    assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, SlotNumber) == 0x64);
    assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, DeviceExtensionSize) == 0x84);
    assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, Dma64BitAddresses) == 0x90);
    assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, MaximumNumberOfLogicalUnits) == 0x92);
    assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, WmiDataProvider) == 0x93);
    assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, SynchronizationModel) == 0x94);
    assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, HwMSInterruptRoutine) == 0x98);
    assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, InterruptSynchronizationMode) == 0xA0);
    assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, DumpRegion) == 0xA8);
    assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, RequestedDumpBufferSize) == 0xC0);
    assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, VirtualDevice) == 0xC4);
    assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, ExtendedFlags1) == 0xC8);
    assert!(offset_of!(PORT_CONFIGURATION_INFORMATION, FeatureSupport) == 0xDC);

    assert!(size_of::<SCSI_REQUEST_BLOCK>() == 0x58);
    assert!(offset_of!(SCSI_REQUEST_BLOCK, Function) == 0x02);
    assert!(offset_of!(SCSI_REQUEST_BLOCK, SrbStatus) == 0x03);
    assert!(offset_of!(SCSI_REQUEST_BLOCK, PathId) == 0x05);
    assert!(offset_of!(SCSI_REQUEST_BLOCK, TargetId) == 0x06);
    assert!(offset_of!(SCSI_REQUEST_BLOCK, Lun) == 0x07);
    assert!(offset_of!(SCSI_REQUEST_BLOCK, SrbFlags) == 0x0C);
    assert!(offset_of!(SCSI_REQUEST_BLOCK, DataBuffer) == 0x18);
    assert!(offset_of!(SCSI_REQUEST_BLOCK, OriginalRequest) == 0x30);
    assert!(offset_of!(SCSI_REQUEST_BLOCK, InternalStatus) == 0x40);
    assert!(offset_of!(SCSI_REQUEST_BLOCK, Cdb) == 0x48);

    assert!(size_of::<IO_STATUS_BLOCK>() == 0x10);
    assert!(size_of::<IRP>() == 0xD0);
    assert!(align_of::<IRP>() == 16);
    assert!(offset_of!(IRP, Flags) == 0x10);
    assert!(offset_of!(IRP, SystemBuffer) == 0x18);
    assert!(offset_of!(IRP, IoStatus) == 0x30);
    assert!(offset_of!(IRP, IoStatus) + offset_of!(IO_STATUS_BLOCK, Information) == 0x38);
    assert!(offset_of!(IRP, RequestorMode) == 0x40);
    assert!(offset_of!(IRP, PendingReturned) == 0x41);
    assert!(offset_of!(IRP, StackCount) == 0x42);
    assert!(offset_of!(IRP, CurrentLocation) == 0x43);
    assert!(offset_of!(IRP, Cancel) == 0x44);
    assert!(offset_of!(IRP, CancelIrql) == 0x45);
    assert!(offset_of!(IRP, UserIosb) == 0x48);
    assert!(offset_of!(IRP, CancelRoutine) == 0x68);
    assert!(offset_of!(IRP, UserBuffer) == 0x70);
    assert!(offset_of!(IRP, DriverContext) == 0x78);
    assert!(offset_of!(IRP, Thread) == 0x98);
    assert!(offset_of!(IRP, ListEntry) == 0xA8);
    assert!(offset_of!(IRP, CurrentStackLocation) == 0xB8);
    assert!(offset_of!(IRP, OriginalFileObject) == 0xC0);

    assert!(size_of::<IO_STACK_LOCATION>() == 0x48);
    assert!(offset_of!(IO_STACK_LOCATION, Control) == 0x03);
    assert!(offset_of!(IO_STACK_LOCATION, OutputBufferLength) == 0x08);
    assert!(offset_of!(IO_STACK_LOCATION, InputBufferLength) == 0x10);
    assert!(offset_of!(IO_STACK_LOCATION, IoControlCode) == 0x18);
    assert!(offset_of!(IO_STACK_LOCATION, Type3InputBuffer) == 0x20);
    assert!(offset_of!(IO_STACK_LOCATION, DeviceObject) == 0x28);
    assert!(offset_of!(IO_STACK_LOCATION, FileObject) == 0x30);
    assert!(offset_of!(IO_STACK_LOCATION, CompletionRoutine) == 0x38);
    assert!(offset_of!(IO_STACK_LOCATION, Context) == 0x40);

    assert!(size_of::<KLOCK_QUEUE_HANDLE>() == 0x18);
    assert!(offset_of!(KLOCK_QUEUE_HANDLE, OldIrql) == 0x10);
    assert!(offset_of!(SCSI_SUPPORTED_CONTROL_TYPE_LIST, SupportedTypeList) == 4);
    assert!(size_of::<KSPIN_LOCK>() == 8);
    assert!(size_of::<STOR_DPC>() == 0x48);
};
