//! The ntoskrnl.exe routines of a kernel-mode caller (a driver loaded above the adapter):
//! IRPs it allocates and sends, the adapter's device object by name, events, work items.
//!
//! The IRQL each DDI page states is checked, and two rules more strictly than Windows checks
//! them at the call (Windows would fail later, or hang): IoCallDriver of a service IRP and
//! IoGetDeviceObjectPointer at PASSIVE_LEVEL only; a wait that can block never at
//! DISPATCH_LEVEL, where a completion routine runs.

use std::ffi::c_void;
use std::time::Duration;

use storport_abi::status::user::{
    STATUS_INVALID_PARAMETER, STATUS_OBJECT_NAME_NOT_FOUND, STATUS_SUCCESS, STATUS_TIMEOUT,
};

use super::ntoskrnl::{RULE_IRQL_KE_DISPATCH_LTE, require_irql_at_most};
use super::{Export, enter};
use crate::cpu::{self, APC_LEVEL, DISPATCH_LEVEL, PASSIVE_LEVEL};
use crate::events::{Kind, Waited};
use crate::io::work::{WORK_ITEM_SIZE, WorkRoutine};
use crate::kernel::Kernel;
use crate::machine::Running;
use crate::port::PnpState;
use crate::verifier::{BugCheck, Code, rules};

/// The adapter's FDO as IoGetDeviceObjectPointer finds it (Storport's first adapter).
const ADAPTER_NAME: &str = "\\Device\\RaidPort0";

/// How long a wait without a timeout may go unsatisfied before storsim calls it a hang.
const WAIT_LIMIT: Duration = Duration::from_secs(30);

fn require_passive(kernel: &Kernel, routine: &str, why: &str) {
    let irql = cpu::irql();
    if irql > PASSIVE_LEVEL {
        kernel.machine().report(BugCheck::new(
            Code::DriverVerifierDetectedViolation,
            [rules::PASSIVE_ONLY, u64::from(irql), 0, 0],
            format!("{routine} at IRQL {irql}: {why}"),
        ));
    }
}

unsafe extern "win64" fn io_allocate_irp(stack_size: i8, _charge_quota: u8) -> *mut c_void {
    let (kernel, _call) = enter("IoAllocateIrp");
    require_irql_at_most("IoAllocateIrp", DISPATCH_LEVEL, RULE_IRQL_KE_DISPATCH_LTE);
    kernel
        .io()
        .allocate_irp(stack_size)
        .map_or(std::ptr::null_mut(), |irp| irp as *mut c_void)
}

unsafe extern "win64" fn io_free_irp(irp: *mut c_void) {
    let (kernel, _call) = enter("IoFreeIrp");
    require_irql_at_most("IoFreeIrp", DISPATCH_LEVEL, RULE_IRQL_KE_DISPATCH_LTE);
    kernel.io().free_irp(irp as usize);
}

unsafe extern "win64" fn io_reuse_irp(irp: *mut c_void, status: i32) {
    let (kernel, _call) = enter("IoReuseIrp");
    require_irql_at_most("IoReuseIrp", DISPATCH_LEVEL, RULE_IRQL_KE_DISPATCH_LTE);
    kernel.io().reuse_irp(irp as usize, status);
}

unsafe extern "win64" fn iof_call_driver(device: *mut c_void, irp: *mut c_void) -> i32 {
    let (kernel, _call) = enter("IofCallDriver");
    require_irql_at_most("IofCallDriver", DISPATCH_LEVEL, RULE_IRQL_KE_DISPATCH_LTE);
    require_passive(
        &kernel,
        "IofCallDriver",
        "Storport hands a service IRP to HwProcessServiceRequest at PASSIVE_LEVEL in the sender's thread",
    );
    // The adapter's dispatch runs as the miniport's code, whoever sent the IRP.
    Running::Miniport.enter(|| kernel.io().send_irp(device as usize, irp as usize)) as i32
}

/// The text of a UNICODE_STRING the driver passes.
///
/// # Safety
///
/// `name` is NULL or a valid counted string.
unsafe fn unicode(name: *const storport_abi::UNICODE_STRING) -> Option<String> {
    if name.is_null() {
        return None;
    }
    // SAFETY: the caller's promise: a valid UNICODE_STRING.
    let name = unsafe { &*name };
    if name.Buffer.is_null() {
        return Some(String::new());
    }
    // SAFETY: Buffer holds Length bytes of UTF-16 (the DDI's contract for a counted string).
    let units = unsafe { std::slice::from_raw_parts(name.Buffer, usize::from(name.Length) / 2) };
    Some(String::from_utf16_lossy(units))
}

unsafe extern "win64" fn io_get_device_object_pointer(
    name: *const storport_abi::UNICODE_STRING,
    _access: u32,
    file: *mut *mut c_void,
    device: *mut *mut c_void,
) -> i32 {
    let (kernel, _call) = enter("IoGetDeviceObjectPointer");
    require_passive(
        &kernel,
        "IoGetDeviceObjectPointer",
        "it opens the device (IRP_MJ_CREATE) and waits",
    );
    // SAFETY: the DDI's contract: a valid counted name.
    let Some(name) = (unsafe { unicode(name) }) else {
        return STATUS_INVALID_PARAMETER as i32;
    };
    if file.is_null() || device.is_null() {
        return STATUS_INVALID_PARAMETER as i32;
    }
    // The FDO exists from AddDevice to REMOVE_DEVICE; storsim's adapter has one name.
    let present = !matches!(kernel.adapter_state(), PnpState::Removed);
    if !present || !name.eq_ignore_ascii_case(ADAPTER_NAME) {
        return STATUS_OBJECT_NAME_NOT_FOUND as i32;
    }
    let io = kernel.io();
    let object = io.reference_adapter(io.device_instance());
    // SAFETY: the caller's out-parameters, checked non-NULL above.
    unsafe { file.write(object as *mut c_void) };
    // SAFETY: as above.
    unsafe { device.write(io.objects().fdo().cast()) };
    kernel.note(format!(
        "IoGetDeviceObjectPointer({name}) → the adapter's FDO, FILE_OBJECT {object:#x} referenced"
    ));
    STATUS_SUCCESS as i32
}

unsafe extern "win64" fn obf_dereference_object(object: *mut c_void) -> isize {
    let (kernel, _call) = enter("ObfDereferenceObject");
    require_irql_at_most(
        "ObfDereferenceObject",
        DISPATCH_LEVEL,
        RULE_IRQL_KE_DISPATCH_LTE,
    );
    if kernel.io().dereference(object as usize) {
        return 0;
    }
    kernel.machine().report(BugCheck::new(
        Code::DriverVerifierDetectedViolation,
        [rules::OBJECT_MISUSE, object as u64, 0, 0],
        format!("ObDereferenceObject({object:p}): no reference is held on it"),
    ));
    0
}

/// `KEVENT.Header.SignalState` (a LONG at 4), which storsim keeps up to date in the driver's
/// memory as Windows does: an event in freed pool then faults when it is used (0xCC).
const SIGNAL_STATE: usize = 4;

/// Writes the event's SignalState into its KEVENT.
///
/// # Safety
///
/// `event` is the driver's KEVENT (0x18 bytes, 8-aligned), as the DDI requires.
unsafe fn store_signal_state(event: *mut c_void, signalled: bool) {
    // SAFETY: the caller's promise; a plain aligned 4-byte store into it.
    unsafe {
        event
            .cast::<u8>()
            .wrapping_add(SIGNAL_STATE)
            .cast::<i32>()
            .write_volatile(i32::from(signalled))
    };
}

unsafe extern "win64" fn ke_initialize_event(event: *mut c_void, kind: u32, signalled: u8) {
    let (kernel, _call) = enter("KeInitializeEvent");
    // SAFETY: KeInitializeEvent's contract: the driver's KEVENT.
    unsafe { store_signal_state(event, signalled != 0) };
    let kind = if kind == storport_abi::SYNCHRONIZATION_EVENT {
        Kind::Synchronization
    } else {
        Kind::Notification
    };
    kernel
        .machine()
        .events()
        .initialize(event as usize, kind, signalled != 0);
}

fn uninitialized_event(kernel: &Kernel, routine: &str, event: *mut c_void) {
    kernel.machine().report(BugCheck::new(
        Code::DriverVerifierDetectedViolation,
        [rules::OBJECT_MISUSE, event as u64, 0, 0],
        format!("{routine}({event:p}): no KeInitializeEvent made it an event"),
    ));
}

unsafe extern "win64" fn ke_set_event(event: *mut c_void, _increment: i32, _wait: u8) -> i32 {
    let (kernel, _call) = enter("KeSetEvent");
    require_irql_at_most("KeSetEvent", DISPATCH_LEVEL, RULE_IRQL_KE_DISPATCH_LTE);
    // SAFETY: KeSetEvent's contract: the driver's KEVENT (a freed one faults here, 0xCC).
    unsafe { store_signal_state(event, true) };
    match kernel.machine().events().set(event as usize) {
        Some(previous) => i32::from(previous),
        None => {
            uninitialized_event(&kernel, "KeSetEvent", event);
            0
        }
    }
}

unsafe extern "win64" fn ke_wait_for_single_object(
    object: *mut c_void,
    _reason: u32,
    _mode: i8,
    _alertable: u8,
    timeout: *const i64,
) -> i32 {
    let (kernel, _call) = enter("KeWaitForSingleObject");
    let timeout = if timeout.is_null() {
        None
    } else {
        // SAFETY: a non-NULL Timeout points to a LARGE_INTEGER (the DDI's contract).
        let ticks = unsafe { timeout.read() };
        // Negative: relative, in 100 ns units; storsim treats an absolute time as relative.
        Some(Duration::from_nanos(
            ticks.unsigned_abs().saturating_mul(100),
        ))
    };
    let irql = cpu::irql();
    if irql > APC_LEVEL && timeout.is_none_or(|t| !t.is_zero()) {
        // Windows bug-checks when a thread would wait at DISPATCH_LEVEL.
        kernel.machine().stop(BugCheck::new(
            Code::DriverVerifierDetectedViolation,
            [rules::BLOCKING_AT_DISPATCH, u64::from(irql), object as u64, 0],
            format!(
                "KeWaitForSingleObject with a non-zero timeout at IRQL {irql} (a completion routine runs at DISPATCH_LEVEL and may not block)"
            ),
        ));
    }
    match kernel
        .machine()
        .events()
        .wait(object as usize, Some(timeout.unwrap_or(WAIT_LIMIT)))
    {
        Waited::Signalled => STATUS_SUCCESS as i32,
        Waited::TimedOut if timeout.is_some() => STATUS_TIMEOUT as i32,
        Waited::TimedOut => kernel.machine().stop(BugCheck::new(
            Code::DriverVerifierDetectedViolation,
            [rules::WAIT_NEVER_SATISFIED, object as u64, 0, 0],
            format!(
                "KeWaitForSingleObject({object:p}) without a timeout: nothing set it in {} s",
                WAIT_LIMIT.as_secs()
            ),
        )),
        Waited::Uninitialized => {
            uninitialized_event(&kernel, "KeWaitForSingleObject", object);
            STATUS_SUCCESS as i32
        }
    }
}

unsafe extern "win64" fn io_sizeof_work_item() -> u32 {
    let (_kernel, _call) = enter("IoSizeofWorkItem");
    WORK_ITEM_SIZE
}

unsafe extern "win64" fn io_initialize_work_item(io_object: *mut c_void, item: *mut c_void) {
    let (kernel, _call) = enter("IoInitializeWorkItem");
    kernel.io().work().initialize(
        kernel.machine(),
        item as usize,
        io_object as usize,
        Running::now(),
    );
}

unsafe extern "win64" fn io_uninitialize_work_item(item: *mut c_void) {
    let (kernel, _call) = enter("IoUninitializeWorkItem");
    kernel
        .io()
        .work()
        .uninitialize(kernel.machine(), item as usize);
}

unsafe extern "win64" fn io_queue_work_item_ex(
    item: *mut c_void,
    routine: Option<WorkRoutine>,
    _queue_type: u32,
    context: *mut c_void,
) {
    let (kernel, _call) = enter("IoQueueWorkItemEx");
    require_irql_at_most(
        "IoQueueWorkItemEx",
        DISPATCH_LEVEL,
        RULE_IRQL_KE_DISPATCH_LTE,
    );
    let Some(routine) = routine else {
        return kernel.machine().report(BugCheck::new(
            Code::DriverVerifierDetectedViolation,
            [rules::OBJECT_MISUSE, item as u64, 0, 0],
            "IoQueueWorkItemEx with a NULL routine",
        ));
    };
    kernel
        .io()
        .work()
        .queue(kernel.machine(), item as usize, routine, context as usize);
}

/// What a kernel-mode caller imports.
pub fn exports() -> Vec<Export> {
    vec![
        ("IoAllocateIrp", io_allocate_irp as *const () as usize),
        ("IoFreeIrp", io_free_irp as *const () as usize),
        ("IoReuseIrp", io_reuse_irp as *const () as usize),
        ("IofCallDriver", iof_call_driver as *const () as usize),
        (
            "IoGetDeviceObjectPointer",
            io_get_device_object_pointer as *const () as usize,
        ),
        (
            "ObfDereferenceObject",
            obf_dereference_object as *const () as usize,
        ),
        (
            "KeInitializeEvent",
            ke_initialize_event as *const () as usize,
        ),
        ("KeSetEvent", ke_set_event as *const () as usize),
        (
            "KeWaitForSingleObject",
            ke_wait_for_single_object as *const () as usize,
        ),
        (
            "IoSizeofWorkItem",
            io_sizeof_work_item as *const () as usize,
        ),
        (
            "IoInitializeWorkItem",
            io_initialize_work_item as *const () as usize,
        ),
        (
            "IoUninitializeWorkItem",
            io_uninitialize_work_item as *const () as usize,
        ),
        (
            "IoQueueWorkItemEx",
            io_queue_work_item_ex as *const () as usize,
        ),
    ]
}
