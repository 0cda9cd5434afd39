//! What a port driver needs from ntoskrnl.exe beyond `nt-imports` (the miniport's set): device
//! objects and their stack, PnP forwarding, device interfaces, the registry, a system thread,
//! events; and the fields of NT's structures the stand-in reads or writes (x64 layouts, wdm.h),
//! each offset asserted.
//!
//! Wine 8's ntoskrnl.exe exports every routine here. It has no `ExAllocatePool2`, so pool comes
//! from `ExAllocatePoolWithTag`. Its `KeQueryInterruptTime` returns the tick count rather than
//! 100 ns units, so the clock here is `KeQuerySystemTime` (100 ns units, read through NtQuerySystemTime).
#![allow(non_snake_case, non_camel_case_types, clippy::upper_case_acronyms)]

use core::ffi::c_void;
use core::mem::offset_of;

use storport_abi::{
    BOOLEAN, DEVICE_OBJECT, DRIVER_OBJECT, IO_STACK_LOCATION, IRP, NTSTATUS, PVOID,
};

// The layouts and routines nt-imports already has, under the names this module's users know.
pub use nt_imports::ntoskrnl::{
    IofCallDriver, KeInitializeEvent, KeSetEvent, KeWaitForSingleObject,
};
pub use storport_abi::{EXECUTIVE, KERNEL_MODE, KEVENT, SYNCHRONIZATION_EVENT, UNICODE_STRING};

pub const STATUS_SUCCESS: NTSTATUS = 0;
pub const STATUS_PENDING: NTSTATUS = 0x103;
pub const STATUS_NOT_SUPPORTED: NTSTATUS = 0xC000_00BB_u32 as i32;
pub const STATUS_INVALID_DEVICE_REQUEST: NTSTATUS = 0xC000_0010_u32 as i32;
pub const STATUS_DELETE_PENDING: NTSTATUS = 0xC000_0056_u32 as i32;
pub const STATUS_INSUFFICIENT_RESOURCES: NTSTATUS = 0xC000_009A_u32 as i32;
pub const STATUS_OBJECT_NAME_COLLISION: NTSTATUS = 0xC000_0035_u32 as i32;
pub const STATUS_UNSUCCESSFUL: NTSTATUS = 0xC000_0001_u32 as i32;
pub const STATUS_INVALID_PARAMETER: NTSTATUS = 0xC000_000D_u32 as i32;
pub const STATUS_REVISION_MISMATCH: NTSTATUS = 0xC000_0059_u32 as i32;

pub const IRP_MJ_CREATE: usize = 0x00;
pub const IRP_MJ_CLOSE: usize = 0x02;
pub const IRP_MJ_READ: usize = 0x03;
pub const IRP_MJ_WRITE: usize = 0x04;
pub const IRP_MJ_FLUSH_BUFFERS: usize = 0x09;
pub const IRP_MJ_DEVICE_CONTROL: usize = 0x0E;
pub const IRP_MJ_INTERNAL_DEVICE_CONTROL: usize = 0x0F;
pub const IRP_MJ_SHUTDOWN: usize = 0x10;
pub const IRP_MJ_POWER: usize = 0x16;
pub const IRP_MJ_SYSTEM_CONTROL: usize = 0x17;
pub const IRP_MJ_PNP: usize = 0x1B;

pub const IRP_MN_START_DEVICE: u8 = 0x00;
pub const IRP_MN_REMOVE_DEVICE: u8 = 0x02;
pub const IRP_MN_SURPRISE_REMOVAL: u8 = 0x17;

/// `IO_STACK_LOCATION.Control`: what IoMarkIrpPending sets.
pub const SL_PENDING_RETURNED: u8 = 0x01;
/// SL_INVOKE_ON_CANCEL | SL_INVOKE_ON_SUCCESS | SL_INVOKE_ON_ERROR.
const SL_INVOKE_ALWAYS: u8 = 0x20 | 0x40 | 0x80;
pub const DO_DEVICE_INITIALIZING: u32 = 0x80;
pub const FILE_DEVICE_CONTROLLER: u32 = 0x04;
pub const FILE_DEVICE_SECURE_OPEN: u32 = 0x100;
pub const NON_PAGED_POOL: u32 = 0;
pub const KEY_READ: u32 = 0x2_0019;
pub const OBJ_CASE_INSENSITIVE: u32 = 0x40;
pub const OBJ_KERNEL_HANDLE: u32 = 0x200;
pub const KEY_VALUE_PARTIAL_INFORMATION: u32 = 2;
pub const REG_DWORD: u32 = 4;

pub type DRIVER_DISPATCH = unsafe extern "system" fn(*mut DEVICE_OBJECT, *mut IRP) -> NTSTATUS;
pub type DRIVER_ADD_DEVICE =
    unsafe extern "system" fn(*mut DRIVER_OBJECT, *mut DEVICE_OBJECT) -> NTSTATUS;
pub type DRIVER_UNLOAD = unsafe extern "system" fn(*mut DRIVER_OBJECT);
pub type KSTART_ROUTINE = unsafe extern "system" fn(PVOID);

/// The head of `DRIVER_OBJECT`, up to and including `MajorFunction`.
#[repr(C)]
pub struct DriverObject {
    pub Type: i16,
    pub Size: i16,
    pub DeviceObject: *mut DEVICE_OBJECT,
    pub Flags: u32,
    pub DriverStart: PVOID,
    pub DriverSize: u32,
    pub DriverSection: PVOID,
    pub DriverExtension: *mut DriverExtension,
    pub DriverName: UNICODE_STRING,
    pub HardwareDatabase: PVOID,
    pub FastIoDispatch: PVOID,
    pub DriverInit: PVOID,
    pub DriverStartIo: PVOID,
    pub DriverUnload: Option<DRIVER_UNLOAD>,
    pub MajorFunction: [Option<DRIVER_DISPATCH>; 28],
}
const _: () = assert!(offset_of!(DriverObject, DriverExtension) == 0x30);
const _: () = assert!(offset_of!(DriverObject, DriverUnload) == 0x68);
const _: () = assert!(offset_of!(DriverObject, MajorFunction) == 0x70);

/// The head of `DRIVER_EXTENSION`.
#[repr(C)]
pub struct DriverExtension {
    pub DriverObject: *mut DRIVER_OBJECT,
    pub AddDevice: Option<DRIVER_ADD_DEVICE>,
}

/// The head of `DEVICE_OBJECT`, up to `DeviceExtension`.
#[repr(C)]
pub struct DeviceObject {
    pub Type: i16,
    pub Size: u16,
    pub ReferenceCount: i32,
    pub DriverObject: *mut DRIVER_OBJECT,
    pub NextDevice: *mut DEVICE_OBJECT,
    pub AttachedDevice: *mut DEVICE_OBJECT,
    pub CurrentIrp: *mut IRP,
    pub Timer: PVOID,
    pub Flags: u32,
    pub Characteristics: u32,
    pub Vpb: PVOID,
    pub DeviceExtension: PVOID,
}
const _: () = assert!(offset_of!(DeviceObject, Flags) == 0x30);
const _: () = assert!(offset_of!(DeviceObject, DeviceExtension) == 0x40);

#[repr(C)]
pub struct OBJECT_ATTRIBUTES {
    pub Length: u32,
    pub RootDirectory: PVOID,
    pub ObjectName: *const UNICODE_STRING,
    pub Attributes: u32,
    pub SecurityDescriptor: PVOID,
    pub SecurityQualityOfService: PVOID,
}
const _: () = assert!(size_of::<OBJECT_ATTRIBUTES>() == 0x30);

#[repr(C)]
pub struct GUID {
    pub Data1: u32,
    pub Data2: u16,
    pub Data3: u16,
    pub Data4: [u8; 8],
}

/// `GUID_DEVINTERFACE_STORAGEPORT`: Storport enables it on every adapter's PDO at start, and
/// revcall-tester finds adapters through it.
pub const GUID_DEVINTERFACE_STORAGEPORT: GUID = GUID {
    Data1: 0x2ACC_FE60,
    Data2: 0xC130,
    Data3: 0x11D2,
    Data4: [0xB0, 0x82, 0x00, 0xA0, 0xC9, 0x1E, 0xFB, 0x8B],
};

#[link(name = "ntoskrnl.exe", kind = "raw-dylib", modifiers = "+verbatim")]
unsafe extern "system" {
    pub fn IoCreateDevice(
        DriverObject: *mut DRIVER_OBJECT,
        DeviceExtensionSize: u32,
        DeviceName: *const UNICODE_STRING,
        DeviceType: u32,
        DeviceCharacteristics: u32,
        Exclusive: BOOLEAN,
        DeviceObject: *mut *mut DEVICE_OBJECT,
    ) -> NTSTATUS;
    pub fn IoDeleteDevice(DeviceObject: *mut DEVICE_OBJECT);
    pub fn IoCreateSymbolicLink(
        SymbolicLinkName: *const UNICODE_STRING,
        DeviceName: *const UNICODE_STRING,
    ) -> NTSTATUS;
    pub fn IoDeleteSymbolicLink(SymbolicLinkName: *const UNICODE_STRING) -> NTSTATUS;
    pub fn IoAttachDeviceToDeviceStack(
        SourceDevice: *mut DEVICE_OBJECT,
        TargetDevice: *mut DEVICE_OBJECT,
    ) -> *mut DEVICE_OBJECT;
    pub fn IoDetachDevice(TargetDevice: *mut DEVICE_OBJECT);
    pub fn IoRegisterDeviceInterface(
        PhysicalDeviceObject: *mut DEVICE_OBJECT,
        InterfaceClassGuid: *const GUID,
        ReferenceString: *const UNICODE_STRING,
        SymbolicLinkName: *mut UNICODE_STRING,
    ) -> NTSTATUS;
    pub fn IoSetDeviceInterfaceState(
        SymbolicLinkName: *const UNICODE_STRING,
        Enable: BOOLEAN,
    ) -> NTSTATUS;
    pub fn RtlFreeUnicodeString(UnicodeString: *mut UNICODE_STRING);
    pub fn ExAllocatePoolWithTag(PoolType: u32, NumberOfBytes: usize, Tag: u32) -> PVOID;
    pub fn PsCreateSystemThread(
        ThreadHandle: *mut PVOID,
        DesiredAccess: u32,
        ObjectAttributes: *const OBJECT_ATTRIBUTES,
        ProcessHandle: PVOID,
        ClientId: PVOID,
        StartRoutine: KSTART_ROUTINE,
        StartContext: PVOID,
    ) -> NTSTATUS;
    pub fn PsTerminateSystemThread(ExitStatus: NTSTATUS) -> NTSTATUS;
    pub fn KeDelayExecutionThread(
        WaitMode: i8,
        Alertable: BOOLEAN,
        Interval: *const i64,
    ) -> NTSTATUS;
    pub fn KeQuerySystemTime(CurrentTime: *mut i64);
    pub fn ZwWaitForSingleObject(
        Handle: PVOID,
        Alertable: BOOLEAN,
        Timeout: *const i64,
    ) -> NTSTATUS;
    pub fn ZwClose(Handle: PVOID) -> NTSTATUS;
    pub fn ZwOpenKey(
        KeyHandle: *mut PVOID,
        DesiredAccess: u32,
        ObjectAttributes: *const OBJECT_ATTRIBUTES,
    ) -> NTSTATUS;
    pub fn ZwQueryValueKey(
        KeyHandle: PVOID,
        ValueName: *const UNICODE_STRING,
        KeyValueInformationClass: u32,
        KeyValueInformation: PVOID,
        Length: u32,
        ResultLength: *mut u32,
    ) -> NTSTATUS;
}

/// The IRP's current stack location.
///
/// # Safety
///
/// `irp` is a live IRP the caller owns.
pub unsafe fn current_stack(irp: *mut IRP) -> *mut IO_STACK_LOCATION {
    // SAFETY: the caller owns the live IRP; the field is the I/O manager's current location.
    unsafe { (*irp).CurrentStackLocation }
}

/// Completes `irp` with `status` and `information`.
///
/// # Safety
///
/// The caller owns `irp` and gives it up: it is not touched afterwards.
pub unsafe fn complete(irp: *mut IRP, status: NTSTATUS, information: usize) -> NTSTATUS {
    // SAFETY: the caller owns the live IRP until the completion below.
    unsafe {
        (*irp).IoStatus.Status = status;
    }
    // SAFETY: as above.
    unsafe {
        (*irp).IoStatus.Information = information;
    }
    // SAFETY: an owned IRP, completed once; the caller does not touch it again.
    unsafe { nt_imports::ntoskrnl::IofCompleteRequest(irp, 0) };
    status
}

/// `IoSkipCurrentIrpStackLocation` + `IoCallDriver`: passes `irp` down unchanged.
///
/// # Safety
///
/// The caller owns `irp`, `lower` is the device below in its stack, and the IRP has a stack
/// location for it (the I/O manager allocated StackSize of the top device).
pub unsafe fn pass_down(lower: *mut DEVICE_OBJECT, irp: *mut IRP) -> NTSTATUS {
    // SAFETY: the caller owns the IRP; skipping makes the lower driver reuse this location,
    // which IofCallDriver then advances past again.
    let irp = unsafe { &mut *irp };
    irp.CurrentLocation += 1;
    irp.CurrentStackLocation = irp.CurrentStackLocation.wrapping_add(1);
    // SAFETY: the IRP now belongs to `lower` (the caller's promise for both).
    unsafe { IofCallDriver(lower, irp) }
}

/// `IoForwardIrpSynchronously` (a stub in Wine 8): the current location copied to the next,
/// a completion routine that takes the IRP back and sets an event, IoCallDriver, the wait.
/// Returns the status the lower driver completed the IRP with; the IRP is the caller's again.
///
/// # Safety
///
/// As for [`pass_down`]; PASSIVE_LEVEL.
pub unsafe fn forward_and_wait(lower: *mut DEVICE_OBJECT, irp: *mut IRP) -> NTSTATUS {
    let mut done = KEVENT::new();
    // SAFETY: a local event, waited on below before it goes out of scope.
    unsafe { KeInitializeEvent(&mut done, 0, 0) };
    // SAFETY: the caller owns the IRP, which has a location below the current one.
    let current = unsafe { (*irp).CurrentStackLocation };
    let next = current.wrapping_sub(1);
    // SAFETY: IoCopyCurrentIrpStackLocationToNext: everything before CompletionRoutine.
    unsafe {
        core::ptr::copy_nonoverlapping(
            current.cast::<u8>(),
            next.cast::<u8>(),
            offset_of!(IO_STACK_LOCATION, CompletionRoutine),
        )
    };
    // SAFETY: IoSetCompletionRoutine on the next location, which is the caller's to set.
    unsafe {
        (*next).Control = SL_INVOKE_ALWAYS;
    }
    // SAFETY: as above.
    unsafe {
        (*next).CompletionRoutine = nt_imports::inline::set_event_keep_irp as *mut c_void;
    }
    // SAFETY: as above; the event outlives the IRP's trip (the wait below).
    unsafe {
        (*next).Context = (&raw mut done).cast();
    }
    // SAFETY: the IRP goes to the lower device and comes back through the completion routine.
    if unsafe { IofCallDriver(lower, irp) } == STATUS_PENDING {
        // SAFETY: the local event, set by the completion routine.
        unsafe {
            KeWaitForSingleObject(
                (&raw mut done).cast(),
                EXECUTIVE,
                KERNEL_MODE,
                0,
                core::ptr::null(),
            )
        };
    }
    // SAFETY: the IRP is back with the caller (the completion routine stopped its completion).
    unsafe { (*irp).IoStatus.Status }
}

/// A system thread running `routine(context)`: its handle, or the failing status.
///
/// # Safety
///
/// `context` stays valid for `routine` until the thread is joined with [`join_thread`].
pub unsafe fn spawn_thread(
    routine: KSTART_ROUTINE,
    context: *mut c_void,
) -> Result<PVOID, NTSTATUS> {
    let mut handle = core::ptr::null_mut();
    // SAFETY: a local for the handle, no object attributes, the system process; the context's
    // lifetime is the caller's promise.
    let status = unsafe {
        PsCreateSystemThread(
            &mut handle,
            0x1F_03FF,
            core::ptr::null(),
            core::ptr::null_mut(),
            core::ptr::null_mut(),
            routine,
            context,
        )
    };
    if status == STATUS_SUCCESS {
        Ok(handle)
    } else {
        Err(status)
    }
}

/// Waits for a thread from [`spawn_thread`] to end and closes its handle.
///
/// # Safety
///
/// `thread` came from [`spawn_thread`], is joined once, and is not the calling thread.
pub unsafe fn join_thread(thread: PVOID) {
    // SAFETY: the thread's handle (the caller's promise), waited on once.
    unsafe { ZwWaitForSingleObject(thread, 0, core::ptr::null()) };
    // SAFETY: as above, closed once.
    unsafe { ZwClose(thread) };
}

/// A UNICODE_STRING over `units` (no terminating NUL counted).
pub fn unicode(units: &[u16]) -> UNICODE_STRING {
    let bytes = (units.len() * 2) as u16;
    UNICODE_STRING {
        Length: bytes,
        MaximumLength: bytes,
        Buffer: units.as_ptr().cast_mut(),
    }
}

/// A relative timeout of `ms` milliseconds, in 100 ns units as the Ke waits take it.
pub fn relative_ms(ms: u64) -> i64 {
    -((ms * 10_000) as i64)
}

/// Pool for the stand-in's own objects, zeroed; null when out of memory.
pub fn allocate_zeroed(size: usize, tag: u32) -> *mut c_void {
    // SAFETY: plain nonpaged-pool allocation at PASSIVE_LEVEL or DISPATCH_LEVEL.
    let block = unsafe { ExAllocatePoolWithTag(NON_PAGED_POOL, size, tag) };
    if !block.is_null() {
        // SAFETY: `size` freshly allocated, writable bytes.
        unsafe { core::ptr::write_bytes(block.cast::<u8>(), 0, size) };
    }
    block
}
