//! The storport.sys routines storsim provides: StorPortInitialize, the variadic
//! StorPortNotification / StorPortExtendedFunction (fixed-arity shims decoding by their first
//! argument, docs/EMULATION-NOTES.md §3.2 option a), the registry routines and StorPortStallExecution.

use std::ffi::c_void;
use std::time::Duration;

use std::mem::offset_of;

use storport_abi::status::user::{
    STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_PARAMETER, STATUS_NOT_SUPPORTED,
    STATUS_REVISION_MISMATCH,
};

use storport_abi::{
    HW_DPC_ROUTINE, HW_INITIALIZATION_DATA, HW_TIMER, HW_TIMER_EX, IRP,
    STOR_STATUS_INSUFFICIENT_RESOURCES, STOR_STATUS_INVALID_PARAMETER, STOR_STATUS_NOT_IMPLEMENTED,
    init::InitData,
};

use super::{Export, enter};
use crate::cpu::{self, DISPATCH_LEVEL, PASSIVE_LEVEL};
use crate::faults::Site;
use crate::io::Via;
use crate::io::objects::Slot;
use crate::kernel::Kernel;
use crate::miniport::{DpcRoutine, Miniport, Timer, TimerEx};
use crate::pool::Owner;
use crate::verifier::{BugCheck, Code, rules};

const STOR_STATUS_SUCCESS: u32 = 0;
const STOR_STATUS_INVALID_IRQL: u32 = 0xC100_0008;

/// StorPortIrql: a Storport routine called above its documented IRQL.
const RULE_STORPORT_IRQL: u64 = 0x0002_0003;

const REGISTRY_BUFFER_TAG: u32 = u32::from_le_bytes(*b"RegB");

unsafe extern "win64" fn stor_port_initialize(
    driver: *mut c_void,
    registry: *mut c_void,
    init: *mut HW_INITIALIZATION_DATA,
    _context: *mut c_void,
) -> u32 {
    let (kernel, _call) = enter("StorPortInitialize");
    if kernel.machine().faults().fail(Site::StorPortInitialize) {
        kernel.note("StorPortInitialize → STATUS_INSUFFICIENT_RESOURCES (injected)");
        return STATUS_INSUFFICIENT_RESOURCES;
    }
    storport_initialize(&kernel, driver, registry, init)
}

/// StorPortInitialize's validation (docs/STORPORT-NOTES.md §6.1): the structure's size (the
/// three revisions Storport accepts), the required routines, a virtual miniport; then Storport
/// keeps a typed copy of the routines and fills the driver object's dispatch table.
fn storport_initialize(
    kernel: &Kernel,
    driver: *mut c_void,
    registry: *mut c_void,
    init: *mut HW_INITIALIZATION_DATA,
) -> u32 {
    if driver.is_null() || registry.is_null() || init.is_null() {
        kernel.machine().report(BugCheck::new(
            Code::ScsiVerifierDetectedViolation,
            [0x1000, driver as u64, registry as u64, init as u64],
            "StorPortInitialize called with a NULL argument",
        ));
        return STATUS_INVALID_PARAMETER;
    }
    // SAFETY: the driver passes its HW_INITIALIZATION_DATA; the u32 size field comes first,
    // and the driver's structure is as long as the revision it names.
    let Some(data) = (unsafe { InitData::new(init) }) else {
        // SAFETY: as above: the size field is readable.
        let size = unsafe { init.cast::<u32>().read_unaligned() };
        kernel.note(format!(
            "StorPortInitialize: HwInitializationDataSize {size:#x} → STATUS_REVISION_MISMATCH"
        ));
        return STATUS_REVISION_MISMATCH;
    };
    let size = data.size();
    let routines = match data.routines() {
        Ok(routines) => routines,
        Err(name) => {
            kernel.note(format!(
                "StorPortInitialize: {name} is NULL → STATUS_INVALID_PARAMETER"
            ));
            return STATUS_INVALID_PARAMETER;
        }
    };
    if !data.is_virtual() {
        kernel.note("StorPortInitialize: not a virtual miniport; storsim emulates no HBA hardware");
        return STATUS_NOT_SUPPORTED;
    }
    let extension_size = data.u32_at(offset_of!(HW_INITIALIZATION_DATA, DeviceExtensionSize));
    // SAFETY: every routine was read from the miniport's HW_INITIALIZATION_DATA with its
    // storport.h prototype, and its image stays loaded while storsim runs the adapter.
    let miniport = unsafe {
        Miniport::new(
            routines,
            extension_size,
            data.u32_at(offset_of!(HW_INITIALIZATION_DATA, SrbExtensionSize)),
        )
    };
    // SAFETY: the driver's own structure, writable (a non-const pointer).
    unsafe { data.mark_seen(init) };
    kernel.port().register(miniport);
    let objects = kernel.io().objects();
    for major in [
        0x00, 0x02, 0x03, 0x04, 0x09, 0x0E, 0x0F, 0x10, 0x16, 0x17, 0x1B,
    ] {
        objects.set_word(
            Slot::MajorFunction(major),
            storport_dispatch as *const () as usize,
        );
    }
    objects.set_word(Slot::DriverUnload, storport_unload as *const () as usize);
    objects.set_word(Slot::AddDevice, storport_add_device as *const () as usize);
    kernel.note(format!(
        "StorPortInitialize: HW_INITIALIZATION_DATA {size:#x}, virtual, DeviceExtensionSize {extension_size:#x} → STATUS_SUCCESS"
    ));
    0
}

/// Storport's dispatch routine for every major function it registers.
unsafe extern "win64" fn storport_dispatch(_device: *mut c_void, irp: *mut IRP) -> i32 {
    let kernel = crate::kernel::kernel();
    // SAFETY: IoCallDriver hands the dispatch routine the IRP it is sending: Storport owns it
    // until it completes it or passes it to the miniport.
    let irp = unsafe { kernel.io().irp_in_flight(irp as usize) }
        .expect("IoCallDriver dispatches an IRP in flight");
    kernel.port().device_control(irp) as i32
}

/// Storport's DriverUnload: storsim drives unload itself.
unsafe extern "win64" fn storport_unload(_driver: *mut c_void) {}

/// Storport's AddDevice: the FDO already exists in storsim.
unsafe extern "win64" fn storport_add_device(_driver: *mut c_void, _pdo: *mut c_void) -> i32 {
    0
}

fn storport_irql_at_most(routine: &'static str, max: u8) -> bool {
    let irql = cpu::irql();
    if irql > max {
        crate::kernel::kernel().machine().report(BugCheck::new(
            Code::DriverVerifierDetectedViolation,
            [RULE_STORPORT_IRQL, u64::from(irql), u64::from(max), 0],
            format!("{routine} called at IRQL {irql}; allowed up to {max} (SDV StorPortIrql)"),
        ));
        return false;
    }
    true
}

/// `StorPortNotification(NotificationType, HwDeviceExtension, …)`.
#[allow(clippy::too_many_arguments)]
unsafe extern "win64" fn stor_port_notification(
    kind: u32,
    _extension: *mut c_void,
    a0: usize,
    a1: usize,
    a2: usize,
    a3: usize,
) {
    let (kernel, _call) = enter("StorPortNotification");
    match kind {
        // RequestComplete(Srb)
        0 => kernel.port().srb_complete(a0),
        // NextRequest, NextLuRequest: nothing is queued behind a virtual adapter's SRBs.
        1 | 2 => {}
        // BusChangeDetected(PathId)
        7 => {
            if storport_irql_at_most("StorPortNotification(BusChangeDetected)", DISPATCH_LEVEL) {
                kernel.port().bus_changed(a0 as u8);
            }
        }
        // RequestTimerCall(HwTimer, MiniportTimerValue µs)
        6 => {
            if storport_irql_at_most("StorPortNotification(RequestTimerCall)", DISPATCH_LEVEL) {
                // SAFETY: RequestTimerCall's first argument is the miniport's HW_TIMER or
                // NULL, passed in an integer register by the variadic shim.
                let routine = unsafe { std::mem::transmute::<usize, Option<HW_TIMER>>(a0) };
                // SAFETY: the miniport's HwTimer, in its loaded image.
                let timer = routine.map(|routine| unsafe { Timer::new(routine) });
                kernel.port().request_timer(timer, (a1 as u32).into());
            }
        }
        // InitializeDpc(Dpc, HwDpcRoutine)
        0x1001 => match a1 {
            0 => kernel.machine().report(BugCheck::new(Code::DriverVerifierDetectedViolation, [rules::BAD_ARGUMENT, 0x1001, 0, 0], "StorPortInitializeDpc with a NULL routine")),
            routine => {
                // SAFETY: non-NULL (matched above); InitializeDpc's second argument is the
                // miniport's HW_DPC_ROUTINE, passed in an integer register by the shim.
                let routine = unsafe { std::mem::transmute::<usize, HW_DPC_ROUTINE>(routine) };
                // SAFETY: the miniport's DPC routine, in its loaded image.
                let routine = unsafe { DpcRoutine::new(routine) };
                if !kernel.port().dispatcher().init_dpc(a0, routine) {
                    kernel.machine().report(BugCheck::new(
                        Code::TimerOrDpcInvalid,
                        [1, a0 as u64, 0, 0],
                        format!("StorPortInitializeDpc on the STOR_DPC at {a0:#x} while it is queued: the kernel's DPC queue would be corrupted"),
                    ));
                }
            }
        },
        // IssueDpc(Dpc, SystemArgument1, SystemArgument2, &Succ): KeInsertQueueDpc, which it
        // wraps, may be called at any IRQL (how an ISR defers its work).
        0x1002 => {
            let queued = kernel
                    .port()
                    .dispatcher()
                    .issue_dpc(kernel.port(), a0, a1, a2);
            if a3 != 0 {
                // SAFETY: the wrapper passes a BOOLEAN to receive the result.
                unsafe { (a3 as *mut u8).write(u8::from(queued)) };
            }
        }
        other => kernel.machine().report(BugCheck::new(Code::DriverVerifierDetectedViolation,
            [rules::UNEMULATED, u64::from(other), 0, 0],
            format!("StorPortNotification type {other:#x} is not emulated by storsim (undocumented types violate StorPortNotification2)"),
        )),
    }
}

/// `StorPortExtendedFunction(FunctionCode, HwDeviceExtension, …)` → STOR_STATUS.
///
/// Five variadic arguments are read, the most a function here takes (RequestTimer); a call
/// that passes fewer leaves the rest as whatever its stack holds, never looked at.
unsafe extern "win64" fn stor_port_extended_function(
    code: u32,
    _extension: *mut c_void,
    a0: usize,
    a1: usize,
    a2: usize,
    a3: usize,
    // RequestTimer's TolerableDelay: storsim fires timers on time.
    _a4: usize,
) -> u32 {
    let (kernel, _call) = enter(match code {
        7 => "StorPortCompleteServiceIrp",
        0 => "StorPortAllocatePool",
        1 => "StorPortFreePool",
        32 => "StorPortInitializeTimer",
        33 => "StorPortRequestTimer",
        34 => "StorPortFreeTimer",
        _ => "StorPortExtendedFunction",
    });
    match code {
        // AllocatePool(NumberOfBytes, Tag, &BufferPointer)
        0 => {
            if !storport_irql_at_most("StorPortAllocatePool", DISPATCH_LEVEL) {
                return STOR_STATUS_INVALID_IRQL;
            }
            if a2 == 0 {
                return STOR_STATUS_INVALID_PARAMETER;
            }
            let block = if kernel.machine().faults().fail(Site::StorPortAllocatePool) {
                Err(crate::pool::PoolError::Exhausted)
            } else {
                kernel.machine().pool().allocate_zeroed(
                    a0 as u32 as usize,
                    a1 as u32,
                    Owner::Driver,
                )
            };
            let (status, pointer) = match block {
                Ok(pointer) => (STOR_STATUS_SUCCESS, pointer as *const () as usize),
                Err(_) => (STOR_STATUS_INSUFFICIENT_RESOURCES, 0),
            };
            // SAFETY: the wrapper's out-parameter.
            unsafe { (a2 as *mut usize).write(pointer) };
            status
        }
        // FreePool(BufferPointer)
        1 if !storport_irql_at_most("StorPortFreePool", DISPATCH_LEVEL) => STOR_STATUS_INVALID_IRQL,
        1 => match kernel.machine().pool().free(a0 as *mut u8, None) {
            Ok(block) => {
                kernel
                    .machine()
                    .locks()
                    .forget_range(block.addr, block.size);
                STOR_STATUS_SUCCESS
            }
            Err(error) => {
                kernel.machine().report(BugCheck::new(
                    Code::DriverVerifierDetectedViolation,
                    [0x10, a0 as u64, 0, 0],
                    format!("StorPortFreePool: {error}"),
                ));
                STOR_STATUS_INVALID_PARAMETER
            }
        },
        // CompleteServiceIrp(Irp)
        7 => {
            if a0 == 0 {
                return STOR_STATUS_INVALID_PARAMETER;
            }
            storport_irql_at_most("StorPortCompleteServiceIrp", DISPATCH_LEVEL);
            // The completion drops the service IRP's rundown reference after the IRP is done.
            if kernel.io().complete(a0, Via::StorPortCompleteServiceIrp) {
                kernel.port().rundown_release();
            }
            STOR_STATUS_SUCCESS
        }
        // InitializeTimer(&TimerHandle): the handle is a block of Storport's pool, so a timer
        // never freed shows as a leak at unload.
        32 => {
            if !storport_irql_at_most("StorPortInitializeTimer", DISPATCH_LEVEL) {
                return STOR_STATUS_INVALID_IRQL;
            }
            if a0 == 0 {
                return STOR_STATUS_INVALID_PARAMETER;
            }
            let Ok(handle) = kernel.machine().pool().allocate_zeroed(
                64,
                u32::from_le_bytes(*b"Tmr "),
                Owner::Port,
            ) else {
                return STOR_STATUS_INSUFFICIENT_RESOURCES;
            };
            let handle = handle as *const () as usize;
            kernel.port().dispatcher().init_timer(handle);
            // SAFETY: the wrapper's out-parameter.
            unsafe { (a0 as *mut usize).write(handle) };
            STOR_STATUS_SUCCESS
        }
        // RequestTimer(TimerHandle, HwStorTimerEx, Context, TimerValue µs, TolerableDelay µs)
        33 => {
            if !storport_irql_at_most("StorPortRequestTimer", DISPATCH_LEVEL) {
                return STOR_STATUS_INVALID_IRQL;
            }
            if a1 == 0 {
                kernel.machine().report(BugCheck::new(
                    Code::DriverVerifierDetectedViolation,
                    [rules::BAD_ARGUMENT, 33, a0 as u64, 0],
                    "StorPortRequestTimer with a NULL callback",
                ));
                return STOR_STATUS_INVALID_PARAMETER;
            }
            // SAFETY: non-NULL (checked above); RequestTimer's second argument is the
            // miniport's HW_TIMER_EX, passed in an integer register by the shim.
            let routine = unsafe { std::mem::transmute::<usize, HW_TIMER_EX>(a1) };
            // SAFETY: the miniport's callback, in its loaded image, with its own context.
            let timer = unsafe { TimerEx::new(routine, a2) };
            if kernel.port().request_timer_ex(a0, timer, a3 as u64) {
                return STOR_STATUS_SUCCESS;
            }
            kernel.machine().report(BugCheck::new(
                Code::DriverVerifierDetectedViolation,
                [rules::BAD_ARGUMENT, 33, a0 as u64, 0],
                format!("StorPortRequestTimer on {a0:#x}, which is no timer (never initialized, or freed)"),
            ));
            STOR_STATUS_INVALID_PARAMETER
        }
        // FreeTimer(TimerHandle)
        34 => {
            if !storport_irql_at_most("StorPortFreeTimer", DISPATCH_LEVEL) {
                return STOR_STATUS_INVALID_IRQL;
            }
            if !kernel.port().dispatcher().free_timer(a0) {
                kernel.machine().report(BugCheck::new(
                    Code::DriverVerifierDetectedViolation,
                    [rules::BAD_ARGUMENT, 34, a0 as u64, 0],
                    format!("StorPortFreeTimer on {a0:#x}, which is no timer (freed twice?)"),
                ));
                return STOR_STATUS_INVALID_PARAMETER;
            }
            let _ = kernel.machine().pool().free(a0 as *mut u8, None);
            STOR_STATUS_SUCCESS
        }
        // DelayExecution(µs)
        81 => {
            std::thread::sleep(Duration::from_micros(a0 as u64));
            STOR_STATUS_SUCCESS
        }
        other => {
            kernel.note(format!(
                "StorPortExtendedFunction({other}) is not emulated → STOR_STATUS_NOT_IMPLEMENTED"
            ));
            STOR_STATUS_NOT_IMPLEMENTED
        }
    }
}

unsafe extern "win64" fn stor_port_allocate_registry_buffer(
    _extension: *mut c_void,
    length: *mut u32,
) -> *mut u8 {
    let (kernel, _call) = enter("StorPortAllocateRegistryBuffer");
    storport_irql_at_most("StorPortAllocateRegistryBuffer", PASSIVE_LEVEL);
    if length.is_null() {
        return std::ptr::null_mut();
    }
    if kernel
        .machine()
        .faults()
        .fail(Site::StorPortAllocateRegistryBuffer)
    {
        kernel.note("StorPortAllocateRegistryBuffer → NULL (injected)");
        return std::ptr::null_mut();
    }
    // SAFETY: the driver's in/out length.
    let requested = unsafe { length.read() } as usize;
    kernel
        .machine()
        .pool()
        .allocate_zeroed(requested.max(1), REGISTRY_BUFFER_TAG, Owner::Driver)
        .unwrap_or(std::ptr::null_mut())
}

unsafe extern "win64" fn stor_port_free_registry_buffer(_extension: *mut c_void, buffer: *mut u8) {
    let (kernel, _call) = enter("StorPortFreeRegistryBuffer");
    if let Err(error) = kernel
        .machine()
        .pool()
        .free(buffer, Some(REGISTRY_BUFFER_TAG))
    {
        kernel.machine().report(BugCheck::new(
            Code::DriverVerifierDetectedViolation,
            [0x10, buffer as u64, 0, 0],
            format!("StorPortFreeRegistryBuffer: {error}"),
        ));
    }
}

/// `StorPortRegistryRead(ext, ValueName, Global, Type, Buffer, BufferLength)`: values come from
/// storsim's configuration (the service's `Parameters\Device` key); REG_DWORD only.
unsafe extern "win64" fn stor_port_registry_read(
    _extension: *mut c_void,
    name: *const u8,
    _global: u32,
    kind: u32,
    buffer: *mut u8,
    length: *mut u32,
) -> u8 {
    let (kernel, _call) = enter("StorPortRegistryRead");
    storport_irql_at_most("StorPortRegistryRead", PASSIVE_LEVEL);
    if name.is_null() || buffer.is_null() || length.is_null() {
        return 0;
    }
    if kernel
        .machine()
        .pool()
        .block(buffer as usize)
        .is_none_or(|b| b.tag != REGISTRY_BUFFER_TAG || b.addr != buffer as usize)
    {
        kernel.machine().report(BugCheck::new(
            Code::DriverVerifierDetectedViolation,
            [rules::BAD_ARGUMENT, buffer as u64, 0, 0],
            "StorPortRegistryRead with a buffer not from StorPortAllocateRegistryBuffer",
        ));
        return 0;
    }
    if kernel.machine().faults().fail(Site::StorPortRegistryRead) {
        kernel.note("StorPortRegistryRead → FALSE (injected)");
        return 0;
    }
    // SAFETY: NUL-terminated ANSI value name (the DDI's PUCHAR).
    let name = unsafe { std::ffi::CStr::from_ptr(name.cast()) }
        .to_string_lossy()
        .into_owned();
    const MINIPORT_REG_DWORD: u32 = 4;
    let value = kernel.config().registry.get(&name).copied();
    // SAFETY: the driver's in/out length.
    let capacity = unsafe { length.read() };
    let found = match value {
        Some(value) if kind == MINIPORT_REG_DWORD && capacity >= 4 => {
            // SAFETY: at least 4 bytes of the registry buffer are writable.
            unsafe { buffer.cast::<u32>().write_unaligned(value) };
            // SAFETY: `length` is the driver's in/out length, checked non-NULL on entry.
            unsafe { length.write(4) };
            true
        }
        _ => false,
    };
    kernel.note(format!(
        "StorPortRegistryRead({name}) → {}",
        value
            .filter(|_| found)
            .map_or("not found".to_owned(), |v| format!("REG_DWORD {v}"))
    ));
    u8::from(found)
}

unsafe extern "win64" fn stor_port_set_device_queue_depth(
    _extension: *mut c_void,
    path: u8,
    target: u8,
    lun: u8,
    depth: u32,
) -> u8 {
    let (kernel, _call) = enter("StorPortSetDeviceQueueDepth");
    storport_irql_at_most("StorPortSetDeviceQueueDepth", DISPATCH_LEVEL);
    u8::from(kernel.port().set_queue_depth((path, target, lun), depth))
}

unsafe extern "win64" fn stor_port_stall_execution(micros: u32) {
    let (kernel, _call) = enter("StorPortStallExecution");
    if micros > 100_000 {
        kernel.machine().report(BugCheck::new(
            Code::ScsiVerifierDetectedViolation,
            [0x2001, u64::from(micros), 0, 0],
            format!("StorPortStallExecution({micros} µs) exceeds 0.1 s"),
        ));
    }
    std::thread::sleep(Duration::from_micros(u64::from(micros.min(100_000))));
}

/// The table the loader binds `storport.sys!…` imports against.
pub fn exports() -> Vec<Export> {
    vec![
        (
            "StorPortInitialize",
            stor_port_initialize as *const () as usize,
        ),
        (
            "StorPortNotification",
            stor_port_notification as *const () as usize,
        ),
        (
            "StorPortExtendedFunction",
            stor_port_extended_function as *const () as usize,
        ),
        (
            "StorPortAllocateRegistryBuffer",
            stor_port_allocate_registry_buffer as *const () as usize,
        ),
        (
            "StorPortFreeRegistryBuffer",
            stor_port_free_registry_buffer as *const () as usize,
        ),
        (
            "StorPortRegistryRead",
            stor_port_registry_read as *const () as usize,
        ),
        (
            "StorPortStallExecution",
            stor_port_stall_execution as *const () as usize,
        ),
        (
            "StorPortSetDeviceQueueDepth",
            stor_port_set_device_queue_depth as *const () as usize,
        ),
        (
            "StorPortDebugPrint",
            super::dbgprint::address(super::dbgprint::stor_port_debug_print),
        ),
    ]
}
