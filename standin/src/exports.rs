//! The routines revcall.sys imports from storport.sys.
//!
//! StorPortNotification and StorPortExtendedFunction are variadic in storport.h; stable Rust
//! cannot define a variadic function, so they are defined with the most arguments any
//! notification or function the stand-in serves takes. On x64 a variadic call passes its
//! arguments exactly as a fixed-arity one does (RCX, RDX, R8, R9, then the stack above the
//! caller's 32-byte home area), so each declared argument the caller did pass arrives intact,
//! and one it did not pass is a register or a stack slot of the caller's frame: readable,
//! never used (each code reads only its own arguments). storsim's shims do the same
//! (docs/EMULATION-NOTES.md §3.2).
#![allow(non_snake_case)]

use core::ffi::c_void;
use core::mem::{offset_of, transmute};

use storport_abi::init::InitData;
use storport_abi::{
    BUS_CHANGE_DETECTED, DRIVER_OBJECT, EXT_FUNCTION_COMPLETE_SERVICE_IRP, EXT_FUNCTION_FREE_TIMER,
    EXT_FUNCTION_INITIALIZE_TIMER, EXT_FUNCTION_REQUEST_TIMER, HW_DPC_ROUTINE,
    HW_INITIALIZATION_DATA, HW_TIMER, HW_TIMER_EX, INITIALIZE_DPC, IRP, ISSUE_DPC,
    REQUEST_COMPLETE, REQUEST_TIMER_CALL, SCSI_REQUEST_BLOCK, STOR_DPC,
    STOR_STATUS_INSUFFICIENT_RESOURCES, STOR_STATUS_INVALID_PARAMETER, STOR_STATUS_NOT_IMPLEMENTED,
    STOR_STATUS_SUCCESS, UNICODE_STRING,
};

use crate::adapter::{Adapter, POOL_TAG};
use crate::miniport::{Miniport, Refusal};
use crate::nt::{self, DriverObject};
use crate::registry;

/// §6.1: validate, keep the typed routines in the driver object's extension, install the
/// dispatch table and AddDevice, mark the caller's structure.
///
/// # Safety
///
/// The miniport's DriverEntry passes its own arguments and its HW_INITIALIZATION_DATA.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn StorPortInitialize(
    driver: *mut DRIVER_OBJECT,
    registry_path: *mut UNICODE_STRING,
    init: *mut HW_INITIALIZATION_DATA,
    _context: *mut c_void,
) -> u32 {
    if driver.is_null() || registry_path.is_null() || init.is_null() {
        return nt::STATUS_INVALID_PARAMETER as u32;
    }
    // SAFETY: the miniport's structure, as long as the revision it names.
    let Some(data) = (unsafe { InitData::new(init) }) else {
        log!("StorPortInitialize: unknown HwInitializationDataSize");
        return nt::STATUS_REVISION_MISMATCH as u32;
    };
    // SAFETY: DriverEntry's registry path; the routines are the loaded miniport's.
    let miniport = match unsafe { Miniport::from_init(&data, registry_path.cast()) } {
        Ok(miniport) => miniport,
        Err(refusal) => {
            let (why, status) = match refusal {
                Refusal::MissingRoutine => {
                    (c"a required routine is NULL", nt::STATUS_INVALID_PARAMETER)
                }
                Refusal::NotVirtual => (c"not a virtual miniport", nt::STATUS_NOT_SUPPORTED),
                Refusal::RegistryPathTooLong => {
                    (c"registry path too long", nt::STATUS_INVALID_PARAMETER)
                }
            };
            log!("StorPortInitialize: %s", why.as_ptr());
            return status as u32;
        }
    };
    if !crate::miniport::register(driver, miniport) {
        return nt::STATUS_INSUFFICIENT_RESOURCES as u32;
    }
    // SAFETY: the miniport's own structure, writable (a non-const pointer).
    unsafe { data.mark_seen(init) };
    // SAFETY: the miniport's live driver object.
    unsafe { crate::dispatch::install(driver.cast::<DriverObject>()) };
    log!(
        "StorPortInitialize: HW_INITIALIZATION_DATA %#x, virtual, DeviceExtensionSize %#x",
        data.size() as u32,
        data.u32_at(offset_of!(HW_INITIALIZATION_DATA, DeviceExtensionSize))
    );
    nt::STATUS_SUCCESS as u32
}

/// The notifications a virtual miniport sends (see the module's note on the arguments).
///
/// # Safety
///
/// `extension` is a HwDeviceExtension the stand-in gave the caller; the arguments are those
/// storport.h documents for `kind`.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn StorPortNotification(
    kind: u32,
    extension: *mut c_void,
    a0: usize,
    a1: usize,
    a2: usize,
    a3: usize,
) {
    // SAFETY: the caller's promise.
    let adapter = unsafe { Adapter::from_extension(extension) };
    match kind {
        REQUEST_TIMER_CALL => {
            // SAFETY: RequestTimerCall's first argument is a PHW_TIMER (or NULL).
            let routine = unsafe { transmute::<usize, Option<HW_TIMER>>(a0) };
            adapter.worker.request_timer_call(routine, a1 as u32);
        }
        INITIALIZE_DPC => {
            // SAFETY: InitializeDpc's second argument is a PHW_DPC_ROUTINE.
            match unsafe { transmute::<usize, Option<HW_DPC_ROUTINE>>(a1) } {
                Some(routine) => adapter.worker.initialize_dpc(a0 as *mut STOR_DPC, routine),
                None => log!("StorPortInitializeDpc with a NULL routine"),
            }
        }
        ISSUE_DPC => {
            let queued =
                adapter
                    .worker
                    .issue_dpc(a0 as *mut STOR_DPC, a1 as *mut c_void, a2 as *mut c_void);
            let out = a3 as *mut u8;
            if !out.is_null() {
                // SAFETY: IssueDpc's fourth argument is the caller's PBOOLEAN.
                unsafe { out.write(u8::from(queued)) };
            }
        }
        BUS_CHANGE_DETECTED => adapter.scanner.rescan(),
        REQUEST_COMPLETE => {
            if !adapter.scanner.completed(a0 as *mut SCSI_REQUEST_BLOCK) {
                log!(
                    "RequestComplete for SRB %p, which the stand-in did not send",
                    a0
                );
            }
        }
        other => log!("StorPortNotification(%#x) is not emulated", other),
    }
}

/// The extended functions revcall uses: CompleteServiceIrp and the timers.
///
/// # Safety
///
/// As for [`StorPortNotification`], with storport.h's arguments for `code`.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn StorPortExtendedFunction(
    code: u32,
    extension: *mut c_void,
    a0: usize,
    a1: usize,
    a2: usize,
    a3: usize,
    _a4: usize,
) -> u32 {
    // SAFETY: the caller's promise.
    let adapter = unsafe { Adapter::from_extension(extension) };
    match code {
        EXT_FUNCTION_COMPLETE_SERVICE_IRP => {
            let irp = a0 as *mut IRP;
            if irp.is_null() {
                return STOR_STATUS_INVALID_PARAMETER;
            }
            // SAFETY: a service IRP this adapter handed to HwProcessServiceRequest (§6.3),
            // completed once with the status the miniport stored.
            unsafe { nt_imports::ntoskrnl::IofCompleteRequest(irp, 0) };
            adapter.rundown.release();
            STOR_STATUS_SUCCESS
        }
        EXT_FUNCTION_INITIALIZE_TIMER => {
            let out = a0 as *mut usize;
            match adapter.worker.initialize_timer() {
                Some(handle) if !out.is_null() => {
                    // SAFETY: the caller's PVOID* for the handle.
                    unsafe { out.write(handle) };
                    STOR_STATUS_SUCCESS
                }
                Some(handle) => {
                    adapter.worker.free_timer(handle);
                    STOR_STATUS_INVALID_PARAMETER
                }
                None => STOR_STATUS_INSUFFICIENT_RESOURCES,
            }
        }
        EXT_FUNCTION_REQUEST_TIMER => {
            // SAFETY: RequestTimer's second argument is a PHW_TIMER_EX (or NULL).
            let Some(callback) = (unsafe { transmute::<usize, Option<HW_TIMER_EX>>(a1) }) else {
                return STOR_STATUS_INVALID_PARAMETER;
            };
            if adapter
                .worker
                .request_timer(a0, callback, a2 as *mut c_void, a3 as u64)
            {
                STOR_STATUS_SUCCESS
            } else {
                STOR_STATUS_INVALID_PARAMETER
            }
        }
        EXT_FUNCTION_FREE_TIMER => {
            if adapter.worker.free_timer(a0) {
                STOR_STATUS_SUCCESS
            } else {
                STOR_STATUS_INVALID_PARAMETER
            }
        }
        other => {
            log!("StorPortExtendedFunction(%u) is not emulated", other);
            STOR_STATUS_NOT_IMPLEMENTED
        }
    }
}

/// A REG_DWORD from the service's `Parameters\Device` key (storsim's configuration model).
///
/// # Safety
///
/// The DDI's contract: a live extension, a NUL-terminated name, a buffer from
/// StorPortAllocateRegistryBuffer and its in/out length.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn StorPortRegistryRead(
    extension: *mut c_void,
    name: *const u8,
    _global: u32,
    kind: u32,
    buffer: *mut u8,
    length: *mut u32,
) -> u8 {
    if name.is_null() || buffer.is_null() || length.is_null() || kind != nt::REG_DWORD {
        return 0;
    }
    // SAFETY: the caller's promise.
    let adapter = unsafe { Adapter::from_extension(extension) };
    // SAFETY: the caller's in/out length.
    if unsafe { length.read() } < 4 {
        return 0;
    }
    // SAFETY: a NUL-terminated name (the caller's promise).
    let Some(value) = (unsafe { registry::read_dword(adapter.miniport(), name) }) else {
        return 0;
    };
    // SAFETY: at least 4 writable bytes (checked above).
    unsafe { buffer.cast::<u32>().write_unaligned(value) };
    // SAFETY: the caller's in/out length.
    unsafe { length.write(4) };
    1
}

/// # Safety
///
/// `length` is the caller's in/out length.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn StorPortAllocateRegistryBuffer(
    _extension: *mut c_void,
    length: *mut u32,
) -> *mut u8 {
    if length.is_null() {
        return core::ptr::null_mut();
    }
    // SAFETY: the caller's in/out length.
    let requested = unsafe { length.read() } as usize;
    nt::allocate_zeroed(requested.max(1), POOL_TAG).cast()
}

/// # Safety
///
/// `buffer` came from [`StorPortAllocateRegistryBuffer`] and is not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn StorPortFreeRegistryBuffer(_extension: *mut c_void, buffer: *mut u8) {
    if !buffer.is_null() {
        // SAFETY: the caller's promise: our block, freed once.
        unsafe { nt_imports::ntoskrnl::ExFreePoolWithTag(buffer.cast(), POOL_TAG) };
    }
}

/// The depth is accepted: the stand-in sends one SRB at a time anyway.
#[unsafe(no_mangle)]
pub extern "system" fn StorPortSetDeviceQueueDepth(
    _extension: *mut c_void,
    path: u8,
    target: u8,
    lun: u8,
    depth: u32,
) -> u8 {
    log!(
        "queue depth of %u:%u:%u is %u",
        u32::from(path),
        u32::from(target),
        u32::from(lun),
        depth
    );
    1
}
