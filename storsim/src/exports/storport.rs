//! The storport.sys routines storsim provides: StorPortInitialize, the variadic
//! StorPortNotification / StorPortExtendedFunction (fixed-arity shims decoding by their first
//! argument, EMULATION.md §3.2 option a), the registry routines and StorPortStallExecution.

use std::ffi::c_void;
use std::time::Duration;

use storport_abi::{HW_DPC_ROUTINE, HW_INITIALIZATION_DATA, HW_TIMER, SCSI_REQUEST_BLOCK};

use super::{Export, enter};
use crate::cpu::{self, DISPATCH_LEVEL, PASSIVE_LEVEL};
use crate::faults::Site;
use crate::io::Via;
use crate::pool::Owner;
use crate::verifier::{BugCheck, Code};

const STOR_STATUS_SUCCESS: u32 = 0;
const STOR_STATUS_NOT_IMPLEMENTED: u32 = 0xC100_0002;
const STOR_STATUS_INSUFFICIENT_RESOURCES: u32 = 0xC100_0003;
const STOR_STATUS_INVALID_PARAMETER: u32 = 0xC100_0006;
const STOR_STATUS_INVALID_IRQL: u32 = 0xC100_0008;

/// The storsim rule for calls storsim does not emulate (the run fails rather than pretend).
const RULE_UNEMULATED: u64 = 0x5700_0009;
/// The storsim rule for an argument a Storport routine cannot take (P2: the argument, or the notification type).
const RULE_BAD_ARGUMENT: u64 = 0x5700_000C;
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
    if kernel.faults.fail(Site::StorPortInitialize) {
        kernel.note("StorPortInitialize → STATUS_INSUFFICIENT_RESOURCES (injected)");
        return crate::io::STATUS_INSUFFICIENT_RESOURCES;
    }
    kernel.storport_initialize(driver, registry, init)
}

fn storport_irql_at_most(routine: &'static str, max: u8) -> bool {
    let irql = cpu::irql();
    if irql > max {
        crate::kernel::kernel().report(BugCheck::new(Code::DriverVerifierDetectedViolation,
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
        0 => kernel.srb_complete(a0 as *mut SCSI_REQUEST_BLOCK),
        // NextRequest, NextLuRequest: nothing is queued behind a virtual adapter's SRBs.
        1 | 2 => {}
        // RequestTimerCall(HwTimer, MiniportTimerValue µs)
        6 => {
            if storport_irql_at_most("StorPortNotification(RequestTimerCall)", DISPATCH_LEVEL) {
                // SAFETY: a0 is the miniport's HW_TIMER or NULL.
                let routine: Option<HW_TIMER> = unsafe { std::mem::transmute(a0) };
                kernel.port.dispatcher.request_timer(&kernel, routine, (a1 as u32).into());
            }
        }
        // InitializeDpc(Dpc, HwDpcRoutine)
        0x1001 => match a1 {
            0 => kernel.report(BugCheck::new(Code::DriverVerifierDetectedViolation, [RULE_BAD_ARGUMENT, 0x1001, 0, 0], "StorPortInitializeDpc with a NULL routine")),
            routine => {
                // SAFETY: non-null; the miniport passes its HW_DPC_ROUTINE.
                let routine: HW_DPC_ROUTINE = unsafe { std::mem::transmute(routine) };
                kernel.port.dispatcher.init_dpc(a0, routine);
            }
        },
        // IssueDpc(Dpc, SystemArgument1, SystemArgument2, &Succ)
        0x1002 => {
            let queued = storport_irql_at_most("StorPortIssueDpc", DISPATCH_LEVEL)
                && kernel.port.dispatcher.issue_dpc(&kernel, a0, a1, a2);
            if a3 != 0 {
                // SAFETY: the wrapper passes a BOOLEAN to receive the result.
                unsafe { (a3 as *mut u8).write(u8::from(queued)) };
            }
        }
        other => kernel.report(BugCheck::new(Code::DriverVerifierDetectedViolation,
            [RULE_UNEMULATED, u64::from(other), 0, 0],
            format!("StorPortNotification type {other:#x} is not emulated by storsim (undocumented types violate StorPortNotification2)"),
        )),
    }
}

/// `StorPortExtendedFunction(FunctionCode, HwDeviceExtension, …)` → STOR_STATUS.
unsafe extern "win64" fn stor_port_extended_function(
    code: u32,
    _extension: *mut c_void,
    a0: usize,
    a1: usize,
    a2: usize,
) -> u32 {
    let (kernel, _call) = enter(match code {
        7 => "StorPortCompleteServiceIrp",
        0 => "StorPortAllocatePool",
        1 => "StorPortFreePool",
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
            let block = if kernel.faults.fail(Site::StorPortAllocatePool) {
                Err(crate::pool::PoolError::Exhausted)
            } else {
                kernel
                    .pool
                    .allocate_zeroed(a0 as u32 as usize, a1 as u32, Owner::Driver)
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
        1 => match kernel.pool.free(a0 as *mut u8, None) {
            Ok(block) => {
                kernel.locks.forget_range(block.addr, block.size);
                STOR_STATUS_SUCCESS
            }
            Err(error) => {
                kernel.report(BugCheck::new(Code::DriverVerifierDetectedViolation,
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
            kernel.complete_irp(a0, Via::StorPortCompleteServiceIrp);
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
    if kernel.faults.fail(Site::StorPortAllocateRegistryBuffer) {
        kernel.note("StorPortAllocateRegistryBuffer → NULL (injected)");
        return std::ptr::null_mut();
    }
    // SAFETY: the driver's in/out length.
    let requested = unsafe { length.read() } as usize;
    kernel
        .pool
        .allocate_zeroed(requested.max(1), REGISTRY_BUFFER_TAG, Owner::Driver)
        .unwrap_or(std::ptr::null_mut())
}

unsafe extern "win64" fn stor_port_free_registry_buffer(_extension: *mut c_void, buffer: *mut u8) {
    let (kernel, _call) = enter("StorPortFreeRegistryBuffer");
    if let Err(error) = kernel.pool.free(buffer, Some(REGISTRY_BUFFER_TAG)) {
        kernel.report(BugCheck::new(Code::DriverVerifierDetectedViolation,
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
        .pool
        .block(buffer as usize)
        .is_none_or(|b| b.tag != REGISTRY_BUFFER_TAG || b.addr != buffer as usize)
    {
        kernel.report(BugCheck::new(Code::DriverVerifierDetectedViolation,
            [RULE_BAD_ARGUMENT, buffer as u64, 0, 0],
            "StorPortRegistryRead with a buffer not from StorPortAllocateRegistryBuffer",
        ));
        return 0;
    }
    if kernel.faults.fail(Site::StorPortRegistryRead) {
        kernel.note("StorPortRegistryRead → FALSE (injected)");
        return 0;
    }
    // SAFETY: NUL-terminated ANSI value name (the DDI's PUCHAR).
    let name = unsafe { std::ffi::CStr::from_ptr(name.cast()) }
        .to_string_lossy()
        .into_owned();
    const MINIPORT_REG_DWORD: u32 = 4;
    let value = kernel.config.registry.get(&name).copied();
    // SAFETY: the driver's in/out length.
    let capacity = unsafe { length.read() };
    let found = match value {
        Some(value) if kind == MINIPORT_REG_DWORD && capacity >= 4 => {
            // SAFETY: at least 4 bytes of the registry buffer are writable.
            unsafe { buffer.cast::<u32>().write_unaligned(value) };
            // SAFETY: as above.
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

unsafe extern "win64" fn stor_port_stall_execution(micros: u32) {
    let (kernel, _call) = enter("StorPortStallExecution");
    if micros > 100_000 {
        kernel.report(BugCheck::new(Code::ScsiVerifierDetectedViolation,
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
            "StorPortDebugPrint",
            super::dbgprint::address(super::dbgprint::stor_port_debug_print),
        ),
    ]
}
