//! Feature `wdk` (Windows hosts with the WDK): proves at compile time that every hand-written
//! binding the driver uses matches wdk-sys's bindgen output of the real WDK headers (wdk-sys
//! feature `storage`, which adds storport.h).
//!
//! Nothing here runs or lands in the image; a mismatch is a compile error naming the item. What
//! is compared with the WDK:
//!
//! * every structure of `storport-abi` the driver passes to or gets from Windows: size,
//!   alignment, and the offset of every field (with the field's size and alignment wherever the
//!   WDK reaches it without going through a union);
//! * the scalar typedefs: the same Rust type, or the same size and alignment;
//! * every constant: its value;
//! * every function pointer type and every import the driver calls: its *ABI shape* (number
//!   of parameters, the size and alignment of each parameter and of the result, variadic or
//!   not). The pointee of a pointer parameter is one of the structures above. The ABI string
//!   itself differs on purpose: `storport-abi` declares callbacks `extern "win64"` so that
//!   storsim can call the very same pointers on Linux, and `nt-imports` declares imports
//!   `extern "system"`, where bindgen writes `extern "C"`; on x86_64-pc-windows-msvc all three
//!   are the one Microsoft x64 convention.
//!
//! This cannot be compiled on Linux (wdk-sys generates its bindings from the installed WDK).
//! WDKs it works with: 10.0.22621, and 10.0.26100 from .4202 (earlier 26100 builds break
//! bindgen on storport.h + ntddstor.h). Prerelease WDKs move HwAdapterControl and
//! HwUnitControl of HW_INITIALIZATION_DATA into unions; the field checks below then need the
//! union's member path.
//! The wdk-sys names follow bindgen's conventions as wdk-sys 0.5 configures them (type aliases
//! `NAME` for `struct _NAME`, `__bindgen_anon_N` for anonymous members, enums as modules
//! `_TAG::Variant`, functions in `wdk_sys::ntddk` and `wdk_sys::storage`); docs/WINDOWS.md lists
//! which names were confirmed against public code using wdk-sys and which were not.

use core::mem::{align_of, offset_of, size_of};

use revcall_protocol::status;
use storport_abi as abi;
use wdk_sys as wdk;

/// The size and alignment of a type: all the Microsoft x64 convention looks at when a value of
/// that type is passed or returned.
#[derive(Clone, Copy)]
struct Layout {
    size: usize,
    align: usize,
}

impl Layout {
    const fn of<T>() -> Self {
        Self {
            size: size_of::<T>(),
            align: align_of::<T>(),
        }
    }

    const fn matches(self, other: Self) -> bool {
        self.size == other.size && self.align == other.align
    }
}

/// What the calling convention sees of a function pointer type.
struct Shape {
    result: Layout,
    params: &'static [Layout],
    variadic: bool,
}

impl Shape {
    const fn matches(&self, other: &Self) -> bool {
        if !self.result.matches(other.result)
            || self.variadic != other.variadic
            || self.params.len() != other.params.len()
        {
            return false;
        }
        let mut i = 0;
        while i < self.params.len() {
            if !self.params[i].matches(other.params[i]) {
                return false;
            }
            i += 1;
        }
        true
    }
}

/// Function pointer types (and `Option`s of them, as callbacks are stored) with their shape.
trait Abi {
    const SHAPE: Shape;
}

impl<F: Abi> Abi for Option<F> {
    const SHAPE: Shape = F::SHAPE;
}

/// Implements [`Abi`] for `unsafe extern $abi fn` of 0 to 7 parameters.
macro_rules! abi_impls {
    ($($abi:literal),*) => {
        $( abi_impls!(@arities $abi; ; A0 A1 A2 A3 A4 A5 A6); )*
    };
    (@arities $abi:literal; $($param:ident)*; $next:ident $($rest:ident)*) => {
        abi_impls!(@one $abi; $($param)*);
        abi_impls!(@arities $abi; $($param)* $next; $($rest)*);
    };
    (@arities $abi:literal; $($param:ident)*; ) => {
        abi_impls!(@one $abi; $($param)*);
    };
    (@one $abi:literal; $($param:ident)*) => {
        impl<R, $($param),*> Abi for unsafe extern $abi fn($($param),*) -> R {
            const SHAPE: Shape = Shape {
                result: Layout::of::<R>(),
                params: &[$(Layout::of::<$param>()),*],
                variadic: false,
            };
        }
    };
}

abi_impls!("C", "system", "win64");

/// The variadic imports: StorPortNotification and StorPortExtendedFunction (2 fixed
/// parameters), DbgPrintEx (3).
impl<R, A0, A1> Abi for unsafe extern "C" fn(A0, A1, ...) -> R {
    const SHAPE: Shape = Shape {
        result: Layout::of::<R>(),
        params: &[Layout::of::<A0>(), Layout::of::<A1>()],
        variadic: true,
    };
}

impl<R, A0, A1, A2> Abi for unsafe extern "C" fn(A0, A1, A2, ...) -> R {
    const SHAPE: Shape = Shape {
        result: Layout::of::<R>(),
        params: &[Layout::of::<A0>(), Layout::of::<A1>(), Layout::of::<A2>()],
        variadic: true,
    };
}

/// The shape of a function (item cast to its pointer type, e.g. `f as unsafe extern "C" fn(_, _)`).
const fn shape_of<F: Abi + Copy>(_: F) -> &'static Shape {
    &F::SHAPE
}

/// The shape of the function pointer type of the field `select` picks, e.g.
/// `field_shape(&|d: &wdk::IRP| &d.CancelRoutine)`.
const fn field_shape<S, F: Abi>(_select: &impl Fn(&S) -> &F) -> &'static Shape {
    &F::SHAPE
}

/// The layout of the type of the field `select` picks.
const fn field_layout<S, F>(_select: &impl Fn(&S) -> &F) -> Layout {
    Layout::of::<F>()
}

/// Asserts equal size and alignment of two types.
macro_rules! same_layout {
    ($ours:ty, $theirs:ty) => {
        assert!(
            Layout::of::<$ours>().matches(Layout::of::<$theirs>()),
            concat!(
                stringify!($ours),
                ": size or alignment differs from the WDK"
            )
        );
    };
}

/// Asserts, for fields of the same name, the same offset and the same field size and alignment.
macro_rules! same_fields {
    ($ours:ty, $theirs:ty: $($field:ident),+ $(,)?) => {$(
        assert!(
            offset_of!($ours, $field) == offset_of!($theirs, $field),
            concat!(stringify!($ours), ".", stringify!($field), ": offset differs from the WDK")
        );
        assert!(
            field_layout(&|s: &$ours| &s.$field)
                .matches(field_layout(&|s: &$theirs| &s.$field)),
            concat!(stringify!($ours), ".", stringify!($field), ": size or alignment differs")
        );
    )+};
}

/// Asserts the offsets of fields the WDK reaches through a union or an anonymous member,
/// written `our_field => wdk.path`.
macro_rules! same_offsets {
    ($ours:ty, $theirs:ty: $($field:ident => $($path:ident).+),+ $(,)?) => {$(
        assert!(
            offset_of!($ours, $field) == offset_of!($theirs, $($path).+),
            concat!(stringify!($ours), ".", stringify!($field), ": offset differs from the WDK")
        );
    )+};
}

/// Asserts equal ABI shapes.
macro_rules! same_shape {
    ($what:literal, $ours:expr, $theirs:expr) => {
        assert!(
            $ours.matches($theirs),
            concat!($what, ": signature differs from the WDK")
        );
    };
}

/// Asserts that same-named function-pointer fields of two structures have the same shape.
macro_rules! same_callbacks {
    ($ours:ty, $theirs:ty: $($field:ident),+ $(,)?) => {$(
        assert!(
            field_shape(&|s: &$ours| &s.$field).matches(field_shape(&|s: &$theirs| &s.$field)),
            concat!(stringify!($ours), ".", stringify!($field), ": signature differs from the WDK")
        );
    )+};
}

/// Asserts that imports declared `extern $abi` in module `$ours` have the shape of wdk-sys's
/// declarations (`extern "C"`) in module `$theirs`; `(_, _, ...)` spells each parameter list.
macro_rules! same_imports {
    ($abi:literal, $ours:ident => $theirs:ident: $($name:ident($($params:tt)*)),+ $(,)?) => {$(
        assert!(
            shape_of($ours::$name as unsafe extern $abi fn($($params)*) -> _)
                .matches(shape_of($theirs::$name as unsafe extern "C" fn($($params)*) -> _)),
            concat!(stringify!($name), ": signature differs from the WDK")
        );
    )+};
}

/// Asserts equal integer values (constants of any integer type, enum constants included).
macro_rules! same_value {
    ($($ours:expr => $theirs:expr),+ $(,)?) => {$(
        assert!(
            $ours as i128 == $theirs as i128,
            concat!(stringify!($ours), " differs from ", stringify!($theirs))
        );
    )+};
}

// ---- Scalar typedefs.

const _: () = {
    // The very same Rust types as wdk-sys's.
    let _: fn(abi::PVOID) -> wdk::PVOID = |x| x;
    let _: fn(abi::BOOLEAN) -> wdk::BOOLEAN = |x| x;
    let _: fn(abi::KIRQL) -> wdk::KIRQL = |x| x;
    let _: fn(abi::NTSTATUS) -> wdk::NTSTATUS = |x| x;
    // usize here, ULONG_PTR (u64) there.
    same_layout!(abi::KSPIN_LOCK, wdk::KSPIN_LOCK);
};

// ---- Structures.

const _: () = {
    same_layout!(abi::HW_INITIALIZATION_DATA, wdk::HW_INITIALIZATION_DATA);
    // Released WDKs (10.0.22621, 10.0.26100) declare HwAdapterControl and HwUnitControl as
    // plain members. Prerelease (Insider) WDKs move them into anonymous unions, which bindgen
    // names `__bindgen_anon_N`: there this list (and `same_callbacks!` below) stops compiling
    // with "no field `HwAdapterControl`". Build with a released WDK (docs/WINDOWS.md, step 0),
    // or name them through their union as PortVersionFlags is below.
    same_fields!(abi::HW_INITIALIZATION_DATA, wdk::HW_INITIALIZATION_DATA:
        HwInitializationDataSize, AdapterInterfaceType, HwInitialize, HwStartIo, HwInterrupt,
        HwFindAdapter, HwResetBus, HwDmaStarted, HwAdapterState, DeviceExtensionSize,
        SpecificLuExtensionSize, SrbExtensionSize, NumberOfAccessRanges, Reserved, MapBuffers,
        NeedPhysicalAddresses, TaggedQueuing, AutoRequestSense, MultipleRequestPerLu,
        ReceiveEvent, VendorIdLength, VendorId, DeviceIdLength, DeviceId, HwAdapterControl,
        HwBuildIo, HwFreeAdapterResources, HwProcessServiceRequest, HwCompleteServiceIrp,
        HwInitializeTracing, HwCleanupTracing, HwTracingEnabled, FeatureSupport, SrbTypeFlags,
        AddressTypeFlags, Reserved1, HwUnitControl,
    );
    same_offsets!(abi::HW_INITIALIZATION_DATA, wdk::HW_INITIALIZATION_DATA:
        // `union { USHORT ReservedUshort; USHORT PortVersionFlags; }`
        PortVersionFlags => __bindgen_anon_1.PortVersionFlags,
    );

    same_layout!(
        abi::PORT_CONFIGURATION_INFORMATION,
        wdk::PORT_CONFIGURATION_INFORMATION
    );
    // All but DmaAddressWidth, which only WDKs for NTDDI_WIN10_VB and later declare (in what was
    // padding) and which revcall never touches; the size check above covers it.
    same_fields!(abi::PORT_CONFIGURATION_INFORMATION, wdk::PORT_CONFIGURATION_INFORMATION:
        Length, SystemIoBusNumber, AdapterInterfaceType, BusInterruptLevel, BusInterruptVector,
        InterruptMode, MaximumTransferLength, NumberOfPhysicalBreaks, DmaChannel, DmaPort,
        DmaWidth, DmaSpeed, AlignmentMask, NumberOfAccessRanges, AccessRanges, MiniportDumpData,
        NumberOfBuses, InitiatorBusId, ScatterGather, Master, CachesData, AdapterScansDown,
        AtdiskPrimaryClaimed, AtdiskSecondaryClaimed, Dma32BitAddresses, DemandMode, MapBuffers,
        NeedPhysicalAddresses, TaggedQueuing, AutoRequestSense, MultipleRequestPerLu,
        ReceiveEvent, RealModeInitialized, BufferAccessScsiPortControlled,
        MaximumNumberOfTargets, SrbType, AddressType, SlotNumber, BusInterruptLevel2,
        BusInterruptVector2, InterruptMode2, DmaChannel2, DmaPort2, DmaWidth2, DmaSpeed2,
        DeviceExtensionSize, SpecificLuExtensionSize, SrbExtensionSize, Dma64BitAddresses,
        ResetTargetSupported, MaximumNumberOfLogicalUnits, WmiDataProvider, SynchronizationModel,
        HwMSInterruptRoutine, InterruptSynchronizationMode, DumpRegion, RequestedDumpBufferSize,
        VirtualDevice, DumpMode, ExtendedFlags1, MaxNumberOfIO, MaxIOsPerLun,
        InitialLunQueueDepth, BusResetHoldTime, FeatureSupport,
    );

    same_layout!(abi::SCSI_REQUEST_BLOCK, wdk::SCSI_REQUEST_BLOCK);
    same_fields!(abi::SCSI_REQUEST_BLOCK, wdk::SCSI_REQUEST_BLOCK:
        Length, Function, SrbStatus, ScsiStatus, PathId, TargetId, Lun, QueueTag, QueueAction,
        CdbLength, SenseInfoBufferLength, SrbFlags, DataTransferLength, TimeOutValue, DataBuffer,
        SenseInfoBuffer, NextSrb, OriginalRequest, SrbExtension, Reserved, Cdb,
    );
    same_offsets!(abi::SCSI_REQUEST_BLOCK, wdk::SCSI_REQUEST_BLOCK:
        // `union { ULONG InternalStatus; ULONG QueueSortKey; ULONG LinkTimeoutValue; }`
        InternalStatus => __bindgen_anon_1.InternalStatus,
    );

    same_layout!(abi::IO_STATUS_BLOCK, wdk::IO_STATUS_BLOCK);
    same_fields!(abi::IO_STATUS_BLOCK, wdk::IO_STATUS_BLOCK: Information);
    same_offsets!(abi::IO_STATUS_BLOCK, wdk::IO_STATUS_BLOCK:
        // `union { NTSTATUS Status; PVOID Pointer; }`
        Status => __bindgen_anon_1.Status,
    );

    // The IRP fields revcall reads or writes, and the I/O manager's bookkeeping around them.
    // Not checked by name: AllocationProcessorNumber/Reserved (newer WDKs only; padding
    // before), ApcEnvironment through UserEvent and Overlay (newer WDKs wrap UserIosb in a
    // union); the size check covers them.
    same_layout!(abi::IRP, wdk::IRP);
    same_fields!(abi::IRP, wdk::IRP:
        Type, Size, MdlAddress, Flags, IoStatus, RequestorMode, PendingReturned, StackCount,
        CurrentLocation, Cancel, CancelIrql, CancelRoutine, UserBuffer,
    );
    same_offsets!(abi::IRP, wdk::IRP:
        SystemBuffer => AssociatedIrp.SystemBuffer,
        DriverContext => Tail.Overlay.__bindgen_anon_1.__bindgen_anon_1.DriverContext,
        Thread => Tail.Overlay.Thread,
        AuxiliaryBuffer => Tail.Overlay.AuxiliaryBuffer,
        ListEntry => Tail.Overlay.__bindgen_anon_2.ListEntry,
        CurrentStackLocation => Tail.Overlay.__bindgen_anon_2.__bindgen_anon_1.CurrentStackLocation,
        OriginalFileObject => Tail.Overlay.OriginalFileObject,
    );

    same_layout!(abi::IO_STACK_LOCATION, wdk::IO_STACK_LOCATION);
    same_fields!(abi::IO_STACK_LOCATION, wdk::IO_STACK_LOCATION:
        MajorFunction, MinorFunction, Flags, Control, DeviceObject, FileObject, CompletionRoutine,
        Context,
    );
    same_offsets!(abi::IO_STACK_LOCATION, wdk::IO_STACK_LOCATION:
        OutputBufferLength => Parameters.DeviceIoControl.OutputBufferLength,
        InputBufferLength => Parameters.DeviceIoControl.InputBufferLength,
        IoControlCode => Parameters.DeviceIoControl.IoControlCode,
        Type3InputBuffer => Parameters.DeviceIoControl.Type3InputBuffer,
    );

    same_layout!(abi::KLOCK_QUEUE_HANDLE, wdk::KLOCK_QUEUE_HANDLE);
    same_fields!(abi::KLOCK_QUEUE_HANDLE, wdk::KLOCK_QUEUE_HANDLE: OldIrql);
    same_offsets!(abi::KLOCK_QUEUE_HANDLE, wdk::KLOCK_QUEUE_HANDLE:
        Next => LockQueue.Next,
        Lock => LockQueue.Lock,
    );

    // Opaque to the miniport: only its size and alignment matter (it lives in the extension).
    same_layout!(abi::STOR_DPC, wdk::STOR_DPC);

    same_layout!(
        abi::SCSI_SUPPORTED_CONTROL_TYPE_LIST,
        wdk::SCSI_SUPPORTED_CONTROL_TYPE_LIST
    );
    same_offsets!(abi::SCSI_SUPPORTED_CONTROL_TYPE_LIST, wdk::SCSI_SUPPORTED_CONTROL_TYPE_LIST:
        MaxControlType => MaxControlType,
        SupportedTypeList => SupportedTypeList,
    );

    // DRIVER_OBJECT, DEVICE_OBJECT and UNICODE_STRING are opaque here: revcall only passes
    // pointers to them through, so they have no layout to compare.
};

// ---- Callback types: the driver's functions are stored in or passed as these.

const _: () = {
    same_callbacks!(abi::HW_INITIALIZATION_DATA, wdk::HW_INITIALIZATION_DATA:
        HwInitialize, HwStartIo, HwResetBus, HwAdapterControl, HwFreeAdapterResources,
        HwProcessServiceRequest, HwCompleteServiceIrp,
    );
    // DRIVER_CANCEL.
    same_callbacks!(abi::IRP, wdk::IRP: CancelRoutine);
    // HW_INITIALIZATION_DATA types HwFindAdapter as PVOID; the virtual prototype is the field
    // type of VIRTUAL_HW_INITIALIZATION_DATA.
    same_shape!(
        "VIRTUAL_HW_FIND_ADAPTER",
        field_shape(&|d: &abi::HW_INITIALIZATION_DATA| &d.HwFindAdapter),
        field_shape(&|d: &wdk::VIRTUAL_HW_INITIALIZATION_DATA| &d.HwFindAdapter)
    );
    same_shape!(
        "HW_TIMER",
        &<abi::HW_TIMER as Abi>::SHAPE,
        &<wdk::PHW_TIMER as Abi>::SHAPE
    );
    same_shape!(
        "HW_DPC_ROUTINE",
        &<abi::HW_DPC_ROUTINE as Abi>::SHAPE,
        &<wdk::PHW_DPC_ROUTINE as Abi>::SHAPE
    );
    same_shape!(
        "DriverEntry (DRIVER_INITIALIZE)",
        shape_of(crate::entry::driver_entry as unsafe extern "system" fn(_, _) -> _),
        field_shape(&|d: &wdk::DRIVER_OBJECT| &d.DriverInit)
    );
};

// ---- Imports the driver calls (crate `nt-imports`: `storport`, `ntoskrnl`). `__chkstk` is
// declared by no header (the compiler emits calls to it), so it has nothing to compare with.
// The imports only storsim's fixtures call are not compared.

const _: () = {
    use nt_imports::{ntoskrnl, storport};
    use wdk::{ntddk, storage};

    same_imports!("system", storport => storage:
        StorPortInitialize(_, _, _, _),
        StorPortRegistryRead(_, _, _, _, _, _),
        StorPortAllocateRegistryBuffer(_, _),
        StorPortFreeRegistryBuffer(_, _),
    );
    same_imports!("C", storport => storage:
        StorPortNotification(_, _, ...),
        StorPortExtendedFunction(_, _, ...),
    );
    same_imports!("system", ntoskrnl => ntddk:
        KeBugCheckEx(_, _, _, _, _),
        KeAcquireInStackQueuedSpinLock(_, _),
        KeReleaseInStackQueuedSpinLock(_),
        IoReleaseCancelSpinLock(_),
    );
    same_imports!("C", ntoskrnl => ntddk:
        DbgPrintEx(_, _, _, ...),
        memcpy(_, _, _),
        memmove(_, _, _),
        memset(_, _, _),
        memcmp(_, _, _),
    );
};

// ---- Constants.

const _: () = {
    use revcall_protocol::IOCTL_MINIPORT_PROCESS_SERVICE_IRP;
    use wdk::{
        _DPFLTR_TYPE, _INTERFACE_TYPE, _SCSI_ADAPTER_CONTROL_STATUS as ControlStatus,
        _SCSI_ADAPTER_CONTROL_TYPE as Control, _SCSI_NOTIFICATION_TYPE as Notification,
        _STOR_SYNCHRONIZATION_MODEL, _STORPORT_FUNCTION_CODE,
    };

    same_value!(
        abi::TRUE => wdk::TRUE,
        abi::FALSE => wdk::FALSE,
        abi::INTERFACE_TYPE_INTERNAL => _INTERFACE_TYPE::Internal,
        abi::STOR_FEATURE_VIRTUAL_MINIPORT => wdk::STOR_FEATURE_VIRTUAL_MINIPORT,
        abi::STOR_MAP_NON_READ_WRITE_BUFFERS => wdk::STOR_MAP_NON_READ_WRITE_BUFFERS,
        abi::STOR_MAP_ALL_BUFFERS_INCLUDING_READ_WRITE => wdk::STOR_MAP_ALL_BUFFERS_INCLUDING_READ_WRITE,
        abi::STOR_SYNCHRONIZE_FULL_DUPLEX => _STOR_SYNCHRONIZATION_MODEL::StorSynchronizeFullDuplex,
        abi::SCSI_DMA64_MINIPORT_SUPPORTED => wdk::SCSI_DMA64_MINIPORT_SUPPORTED,
        abi::SP_RETURN_NOT_FOUND => wdk::SP_RETURN_NOT_FOUND,
        abi::SP_RETURN_FOUND => wdk::SP_RETURN_FOUND,
        abi::SP_RETURN_ERROR => wdk::SP_RETURN_ERROR,
        abi::SP_RETURN_BAD_CONFIG => wdk::SP_RETURN_BAD_CONFIG,
        abi::SCSI_QUERY_SUPPORTED_CONTROL_TYPES => Control::ScsiQuerySupportedControlTypes,
        abi::SCSI_STOP_ADAPTER => Control::ScsiStopAdapter,
        abi::SCSI_RESTART_ADAPTER => Control::ScsiRestartAdapter,
        abi::SCSI_ADAPTER_SURPRISE_REMOVAL => Control::ScsiAdapterSurpriseRemoval,
        abi::SCSI_ADAPTER_CONTROL_SUCCESS => ControlStatus::ScsiAdapterControlSuccess,
        abi::SCSI_ADAPTER_CONTROL_UNSUCCESSFUL => ControlStatus::ScsiAdapterControlUnsuccessful,
        abi::REQUEST_COMPLETE => Notification::RequestComplete,
        abi::REQUEST_TIMER_CALL => Notification::RequestTimerCall,
        abi::INITIALIZE_DPC => Notification::InitializeDpc,
        abi::ISSUE_DPC => Notification::IssueDpc,
        abi::EXT_FUNCTION_COMPLETE_SERVICE_IRP =>
            _STORPORT_FUNCTION_CODE::ExtFunctionCompleteServiceIrp,
        abi::MINIPORT_REG_DWORD => wdk::MINIPORT_REG_DWORD,
        abi::DISPATCH_LEVEL => wdk::DISPATCH_LEVEL,
        abi::HIGH_LEVEL => wdk::HIGH_LEVEL,
        abi::IO_NO_INCREMENT => wdk::IO_NO_INCREMENT,
        abi::POOL_FLAG_NON_PAGED => wdk::POOL_FLAG_NON_PAGED,
    );

    // NTSTATUS values: abi's, and the wire protocol's the driver completes requests with.
    same_value!(
        abi::STATUS_SUCCESS => wdk::STATUS_SUCCESS,
        abi::STATUS_PENDING => wdk::STATUS_PENDING,
        abi::STATUS_INVALID_PARAMETER => wdk::STATUS_INVALID_PARAMETER,
        abi::STATUS_QUOTA_EXCEEDED => wdk::STATUS_QUOTA_EXCEEDED,
        abi::STATUS_CANCELLED => wdk::STATUS_CANCELLED,
        abi::STATUS_DEVICE_REMOVED => wdk::STATUS_DEVICE_REMOVED,
        status::STATUS_SUCCESS as i32 => wdk::STATUS_SUCCESS,
        status::STATUS_PENDING as i32 => wdk::STATUS_PENDING,
        status::STATUS_INVALID_PARAMETER as i32 => wdk::STATUS_INVALID_PARAMETER,
        status::STATUS_INVALID_DEVICE_REQUEST as i32 => wdk::STATUS_INVALID_DEVICE_REQUEST,
        status::STATUS_BUFFER_TOO_SMALL as i32 => wdk::STATUS_BUFFER_TOO_SMALL,
        status::STATUS_QUOTA_EXCEEDED as i32 => wdk::STATUS_QUOTA_EXCEEDED,
        status::STATUS_REVISION_MISMATCH as i32 => wdk::STATUS_REVISION_MISMATCH,
        status::STATUS_NOT_SUPPORTED as i32 => wdk::STATUS_NOT_SUPPORTED,
        status::STATUS_CANCELLED as i32 => wdk::STATUS_CANCELLED,
        status::STATUS_DEVICE_REMOVED as i32 => wdk::STATUS_DEVICE_REMOVED,
    );

    same_value!(
        abi::srb_function::EXECUTE_SCSI => wdk::SRB_FUNCTION_EXECUTE_SCSI,
        abi::srb_function::CLAIM_DEVICE => wdk::SRB_FUNCTION_CLAIM_DEVICE,
        abi::srb_function::IO_CONTROL => wdk::SRB_FUNCTION_IO_CONTROL,
        abi::srb_function::RECEIVE_EVENT => wdk::SRB_FUNCTION_RECEIVE_EVENT,
        abi::srb_function::RELEASE_QUEUE => wdk::SRB_FUNCTION_RELEASE_QUEUE,
        abi::srb_function::ATTACH_DEVICE => wdk::SRB_FUNCTION_ATTACH_DEVICE,
        abi::srb_function::RELEASE_DEVICE => wdk::SRB_FUNCTION_RELEASE_DEVICE,
        abi::srb_function::SHUTDOWN => wdk::SRB_FUNCTION_SHUTDOWN,
        abi::srb_function::FLUSH => wdk::SRB_FUNCTION_FLUSH,
        abi::srb_function::ABORT_COMMAND => wdk::SRB_FUNCTION_ABORT_COMMAND,
        abi::srb_function::RELEASE_RECOVERY => wdk::SRB_FUNCTION_RELEASE_RECOVERY,
        abi::srb_function::RESET_BUS => wdk::SRB_FUNCTION_RESET_BUS,
        abi::srb_function::RESET_DEVICE => wdk::SRB_FUNCTION_RESET_DEVICE,
        abi::srb_function::TERMINATE_IO => wdk::SRB_FUNCTION_TERMINATE_IO,
        abi::srb_function::FLUSH_QUEUE => wdk::SRB_FUNCTION_FLUSH_QUEUE,
        abi::srb_function::REMOVE_DEVICE => wdk::SRB_FUNCTION_REMOVE_DEVICE,
        abi::srb_function::WMI => wdk::SRB_FUNCTION_WMI,
        abi::srb_function::LOCK_QUEUE => wdk::SRB_FUNCTION_LOCK_QUEUE,
        abi::srb_function::UNLOCK_QUEUE => wdk::SRB_FUNCTION_UNLOCK_QUEUE,
        abi::srb_function::QUIESCE_DEVICE => wdk::SRB_FUNCTION_QUIESCE_DEVICE,
        abi::srb_function::RESET_LOGICAL_UNIT => wdk::SRB_FUNCTION_RESET_LOGICAL_UNIT,
        abi::srb_function::SET_LINK_TIMEOUT => wdk::SRB_FUNCTION_SET_LINK_TIMEOUT,
        abi::srb_function::LINK_TIMEOUT_OCCURRED => wdk::SRB_FUNCTION_LINK_TIMEOUT_OCCURRED,
        abi::srb_function::LINK_TIMEOUT_COMPLETE => wdk::SRB_FUNCTION_LINK_TIMEOUT_COMPLETE,
        abi::srb_function::POWER => wdk::SRB_FUNCTION_POWER,
        abi::srb_function::PNP => wdk::SRB_FUNCTION_PNP,
        abi::srb_function::DUMP_POINTERS => wdk::SRB_FUNCTION_DUMP_POINTERS,
        abi::srb_function::FREE_DUMP_POINTERS => wdk::SRB_FUNCTION_FREE_DUMP_POINTERS,
        abi::srb_function::STORAGE_REQUEST_BLOCK => wdk::SRB_FUNCTION_STORAGE_REQUEST_BLOCK,
        abi::srb_function::CRYPTO_OPERATION => wdk::SRB_FUNCTION_CRYPTO_OPERATION,
        abi::srb_status::PENDING => wdk::SRB_STATUS_PENDING,
        abi::srb_status::SUCCESS => wdk::SRB_STATUS_SUCCESS,
        abi::srb_status::INVALID_REQUEST => wdk::SRB_STATUS_INVALID_REQUEST,
        abi::srb_status::INVALID_PATH_ID => wdk::SRB_STATUS_INVALID_PATH_ID,
        abi::srb_status::NO_DEVICE => wdk::SRB_STATUS_NO_DEVICE,
        abi::srb_status::INVALID_LUN => wdk::SRB_STATUS_INVALID_LUN,
        abi::srb_status::INVALID_TARGET_ID => wdk::SRB_STATUS_INVALID_TARGET_ID,
    );

    // log.rs: DbgPrintEx's component and levels.
    same_value!(
        crate::log::DPFLTR_IHVDRIVER_ID => _DPFLTR_TYPE::DPFLTR_IHVDRIVER_ID,
        crate::log::ERROR => wdk::DPFLTR_ERROR_LEVEL,
        crate::log::WARNING => wdk::DPFLTR_WARNING_LEVEL,
        crate::log::TRACE => wdk::DPFLTR_TRACE_LEVEL,
    );

    // IOCTL_MINIPORT_PROCESS_SERVICE_IRP is a CTL_CODE(IOCTL_SCSI_BASE, 0x040E, ...) invocation,
    // which bindgen does not evaluate; its parts are plain constants (IOCTL_SCSI_BASE is
    // FILE_DEVICE_CONTROLLER; the function number 0x040E has no constant of its own).
    const fn ctl_code(device_type: i128, function: i128, method: i128, access: i128) -> i128 {
        (device_type << 16) | (access << 14) | (function << 2) | method
    }
    same_value!(
        IOCTL_MINIPORT_PROCESS_SERVICE_IRP => ctl_code(
            wdk::FILE_DEVICE_CONTROLLER as i128,
            0x040E,
            wdk::METHOD_BUFFERED as i128,
            wdk::FILE_READ_ACCESS as i128 | wdk::FILE_WRITE_ACCESS as i128,
        ),
    );
};
