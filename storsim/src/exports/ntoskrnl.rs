//! The ntoskrnl.exe routines storsim provides: spin locks (classic, in-stack queued, cancel),
//! IRQL, IRP completion and cancellation, pool, bug checks, time and the C memory routines.
//!
//! Each one checks the IRQL rule its DDI page states and reports a violation the way Driver
//! Verifier's DDI compliance checking would (0xC4 with the rule id, or the classic code).

use std::ffi::c_void;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use storport_abi::status::STATUS_INVALID_PARAMETER;
use storport_abi::{KLOCK_QUEUE_HANDLE, POOL_FLAG_PAGED, POOL_FLAG_UNINITIALIZED};

use super::csq::{
    self, AcquireLock, CompleteCanceledIrp, Insert, InsertIrp, InsertIrpEx, IoCsq, IoCsqIrpContext,
    PeekNextIrp, ReleaseLock, RemoveIrp, Routines,
};
use super::{Export, enter};
use crate::cpu::{self, APC_LEVEL, DISPATCH_LEVEL};
use crate::io::{IrpPtr, Via};
use crate::kernel::Kernel;
use crate::machine::Running;
use crate::pool::{Owner, PoolError};
use crate::verifier::locks::LockApi;
use crate::verifier::{BugCheck, Code};

/// DDI compliance rule ids (docs/VERIFIER-NOTES.md §2.7).
pub(super) const RULE_IRQL_KE_DISPATCH_LTE: u64 = 0x0002_0011;
const RULE_IRQL_EX_ALLOCATE_POOL: u64 = 0x0002_0004;
const RULE_IRQL_KE_RELEASE_SPIN_LOCK: u64 = 0x0002_0015;

pub(super) fn require_irql_at_most(routine: &'static str, max: u8, rule: u64) {
    let irql = cpu::irql();
    if irql > max {
        crate::kernel::kernel().machine().report(BugCheck::new(
            Code::DriverVerifierDetectedViolation,
            [rule, u64::from(irql), u64::from(max), 0],
            format!("{routine} called at IRQL {irql}; it requires IRQL <= {max}"),
        ));
    }
}

/// An IRP argument, checked against the I/O manager's registry: an IRP that is not in flight
/// is reported (0xC9/0x01, as I/O verification does for an IRP it does not know) and refused.
fn irp_argument(kernel: &Kernel, routine: &str, irp: *mut c_void) -> Option<IrpPtr> {
    // SAFETY: the driver passes an IRP it owns (one it was dispatched, not yet completed).
    let found = unsafe { kernel.io().irp_in_flight(irp as usize) };
    if found.is_none() {
        kernel.machine().report(BugCheck::new(
            Code::DriverVerifierIomanagerViolation,
            [0x01, irp as u64, 0, 0],
            format!("{routine} with {irp:p}, which is not an IRP in flight"),
        ));
    }
    found
}

/// The driver's KSPIN_LOCK word. A NULL lock is what Windows would touch at DISPATCH_LEVEL:
/// reported as the 0xD1 it bug-checks with, and the call does nothing.
fn lock_word<'a>(kernel: &Kernel, routine: &str, lock: *mut usize) -> Option<&'a AtomicUsize> {
    if lock.is_null() {
        kernel.machine().report(BugCheck::new(
            Code::DriverIrqlNotLessOrEqual,
            [0, u64::from(DISPATCH_LEVEL), 1, 0],
            format!("{routine} with a NULL spin lock"),
        ));
        return None;
    }
    // SAFETY: a non-NULL KSPIN_LOCK from the driver: an aligned pointer-sized word in memory
    // it owns for as long as the lock is in use (the DDI's contract; storsim checks the rest).
    Some(unsafe { &*lock.cast::<AtomicUsize>() })
}

unsafe extern "win64" fn ke_acquire_in_stack_queued_spin_lock(
    lock: *mut usize,
    handle: *mut KLOCK_QUEUE_HANDLE,
) {
    let (kernel, _call) = enter("KeAcquireInStackQueuedSpinLock");
    if lock.is_null() || handle.is_null() {
        return kernel.machine().report(BugCheck::new(
            Code::DriverVerifierDetectedViolation,
            [0x1002, lock as u64, handle as u64, 0],
            "KeAcquireInStackQueuedSpinLock with a NULL lock or handle",
        ));
    }
    let Some(word) = lock_word(&kernel, "KeAcquireInStackQueuedSpinLock", lock) else {
        return;
    };
    let old = kernel.machine().acquire_spin_lock(
        word,
        lock as usize,
        LockApi::InStackQueued,
        "in-stack queued spin lock",
    );
    // SAFETY: the driver's handle, valid until the matching release.
    let handle = unsafe { &mut *handle };
    handle.Lock = lock.cast();
    handle.OldIrql = old;
}

unsafe extern "win64" fn ke_release_in_stack_queued_spin_lock(handle: *mut KLOCK_QUEUE_HANDLE) {
    let (kernel, _call) = enter("KeReleaseInStackQueuedSpinLock");
    if handle.is_null() {
        return kernel.machine().report(BugCheck::new(
            Code::DriverVerifierDetectedViolation,
            [0x1007, 0, 0, 0],
            "KeReleaseInStackQueuedSpinLock with a NULL handle",
        ));
    }
    // SAFETY: the driver's handle.
    let handle = unsafe { &mut *handle };
    let lock = handle.Lock.cast::<usize>();
    if cpu::irql() != DISPATCH_LEVEL {
        kernel.machine().report(BugCheck::new(
            Code::DriverVerifierDetectedViolation,
            [
                RULE_IRQL_KE_RELEASE_SPIN_LOCK,
                u64::from(cpu::irql()),
                lock as u64,
                0,
            ],
            format!(
                "in-stack queued spin lock released at IRQL {}, not DISPATCH_LEVEL",
                cpu::irql()
            ),
        ));
    }
    if lock.is_null() {
        return kernel.machine().report(BugCheck::new(
            Code::DriverVerifierDetectedViolation,
            [0x1007, 0, handle as *mut _ as u64, 0],
            "KeReleaseInStackQueuedSpinLock with a handle that was never acquired",
        ));
    }
    if let Some(word) = lock_word(&kernel, "KeReleaseInStackQueuedSpinLock", lock) {
        kernel.machine().release_spin_lock(
            word,
            lock as usize,
            "in-stack queued spin lock",
            handle.OldIrql,
        );
    }
}

unsafe extern "win64" fn ke_acquire_spin_lock_raise_to_dpc(lock: *mut usize) -> u8 {
    let (kernel, _call) = enter("KeAcquireSpinLockRaiseToDpc");
    match lock_word(&kernel, "KeAcquireSpinLockRaiseToDpc", lock) {
        Some(word) => {
            kernel
                .machine()
                .acquire_spin_lock(word, lock as usize, LockApi::Classic, "spin lock")
        }
        None => cpu::irql(),
    }
}

unsafe extern "win64" fn ke_release_spin_lock(lock: *mut usize, irql: u8) {
    let (kernel, _call) = enter("KeReleaseSpinLock");
    if cpu::irql() != DISPATCH_LEVEL {
        kernel.machine().report(BugCheck::new(
            Code::DriverVerifierDetectedViolation,
            [0x32, lock as u64, u64::from(cpu::irql()), 0],
            "KeReleaseSpinLock not at DISPATCH_LEVEL",
        ));
    }
    if let Some(word) = lock_word(&kernel, "KeReleaseSpinLock", lock) {
        kernel
            .machine()
            .release_spin_lock(word, lock as usize, "spin lock", irql);
    }
}

unsafe extern "win64" fn ke_acquire_spin_lock_at_dpc_level(lock: *mut usize) {
    let (kernel, _call) = enter("KeAcquireSpinLockAtDpcLevel");
    if cpu::irql() < DISPATCH_LEVEL {
        kernel.machine().report(BugCheck::new(
            Code::DriverVerifierDetectedViolation,
            [0x40, lock as u64, u64::from(cpu::irql()), 0],
            "KeAcquireSpinLockAtDpcLevel below DISPATCH_LEVEL",
        ));
    }
    // The AtDpcLevel pair takes the lock without touching IRQL.
    let irql = cpu::irql();
    if let Some(word) = lock_word(&kernel, "KeAcquireSpinLockAtDpcLevel", lock) {
        kernel
            .machine()
            .acquire_spin_lock(word, lock as usize, LockApi::Classic, "spin lock");
    }
    cpu::set_irql(irql);
}

unsafe extern "win64" fn ke_release_spin_lock_from_dpc_level(lock: *mut usize) {
    let (kernel, _call) = enter("KeReleaseSpinLockFromDpcLevel");
    let irql = cpu::irql();
    if irql < DISPATCH_LEVEL {
        kernel.machine().report(BugCheck::new(
            Code::DriverVerifierDetectedViolation,
            [0x32, lock as u64, u64::from(irql), 0],
            "KeReleaseSpinLockFromDpcLevel below DISPATCH_LEVEL",
        ));
    }
    if let Some(word) = lock_word(&kernel, "KeReleaseSpinLockFromDpcLevel", lock) {
        kernel
            .machine()
            .release_spin_lock(word, lock as usize, "spin lock", irql);
    }
}

unsafe extern "win64" fn io_acquire_cancel_spin_lock(irql: *mut u8) {
    let (kernel, _call) = enter("IoAcquireCancelSpinLock");
    let old = kernel.io().acquire_cancel_lock();
    if !irql.is_null() {
        // SAFETY: the driver passes a KIRQL to receive the old level.
        unsafe { irql.write(old) };
    }
}

unsafe extern "win64" fn io_release_cancel_spin_lock(irql: u8) {
    let (kernel, _call) = enter("IoReleaseCancelSpinLock");
    kernel.io().release_cancel_lock(irql);
}

unsafe extern "win64" fn ke_get_current_irql() -> u8 {
    cpu::irql()
}

unsafe extern "win64" fn kf_raise_irql(new: u8) -> u8 {
    let (kernel, _call) = enter("KfRaiseIrql");
    let old = cpu::irql();
    if new < old {
        kernel.machine().report(BugCheck::new(
            Code::DriverVerifierDetectedViolation,
            [0x30, u64::from(old), u64::from(new), 0],
            format!("KeRaiseIrql used to lower IRQL from {old} to {new}"),
        ));
    }
    cpu::set_irql(new);
    old
}

unsafe extern "win64" fn ke_lower_irql(new: u8) {
    let (kernel, _call) = enter("KeLowerIrql");
    let old = cpu::irql();
    if new > old {
        kernel.machine().report(BugCheck::new(
            Code::DriverVerifierDetectedViolation,
            [0x31, u64::from(old), u64::from(new), 0],
            format!("KeLowerIrql used to raise IRQL from {old} to {new}"),
        ));
    }
    cpu::set_irql(new);
}

unsafe extern "win64" fn iof_complete_request(irp: *mut c_void, _boost: i8) {
    let (kernel, _call) = enter("IofCompleteRequest");
    kernel.io().complete(irp as usize, Via::IofCompleteRequest);
}

unsafe extern "win64" fn io_cancel_irp(irp: *mut c_void) -> u8 {
    let (kernel, _call) = enter("IoCancelIrp");
    require_irql_at_most("IoCancelIrp", DISPATCH_LEVEL, RULE_IRQL_KE_DISPATCH_LTE);
    u8::from(kernel.io().cancel_irp(irp as usize))
}

/// IoCsqInitialize (`I` = [`InsertIrp`]) and IoCsqInitializeEx (`I` = [`InsertIrpEx`]): the
/// same routine but for the insert callback's prototype.
unsafe extern "win64" fn io_csq_initialize<I: InsertPrototype>(
    csq: *mut IoCsq,
    insert: I,
    remove: Option<RemoveIrp>,
    peek: Option<PeekNextIrp>,
    acquire: Option<AcquireLock>,
    release: Option<ReleaseLock>,
    complete_canceled: Option<CompleteCanceledIrp>,
) -> i32 {
    let (_kernel, _call) = enter(I::ROUTINE);
    let routines = Routines {
        insert: insert.insert(),
        remove,
        peek,
        acquire,
        release,
        complete_canceled,
    };
    // SAFETY: the DDI's contract: the driver's writable IO_CSQ.
    unsafe { csq::initialize(csq, I::EX, routines) }
}

/// What tells IoCsqInitialize from IoCsqInitializeEx: the insert argument's type (a
/// routine pointer or NULL).
trait InsertPrototype: Copy {
    const ROUTINE: &'static str;
    const EX: bool;
    fn insert(self) -> Option<Insert>;
}

impl InsertPrototype for Option<InsertIrp> {
    const ROUTINE: &'static str = "IoCsqInitialize";
    const EX: bool = false;
    fn insert(self) -> Option<Insert> {
        self.map(|plain| Insert { plain })
    }
}

impl InsertPrototype for Option<InsertIrpEx> {
    const ROUTINE: &'static str = "IoCsqInitializeEx";
    const EX: bool = true;
    fn insert(self) -> Option<Insert> {
        self.map(|ex| Insert { ex })
    }
}

unsafe extern "win64" fn io_csq_insert_irp(
    csq: *mut IoCsq,
    irp: *mut c_void,
    context: *mut IoCsqIrpContext,
) {
    let (kernel, _call) = enter("IoCsqInsertIrp");
    require_irql_at_most("IoCsqInsertIrp", DISPATCH_LEVEL, RULE_IRQL_KE_DISPATCH_LTE);
    if let Some(irp) = irp_argument(&kernel, "IoCsqInsertIrp", irp) {
        csq::csq_insert(csq, irp, context, std::ptr::null_mut());
    }
}

unsafe extern "win64" fn io_csq_insert_irp_ex(
    csq: *mut IoCsq,
    irp: *mut c_void,
    context: *mut IoCsqIrpContext,
    insert_context: *mut c_void,
) -> i32 {
    let (kernel, _call) = enter("IoCsqInsertIrpEx");
    require_irql_at_most(
        "IoCsqInsertIrpEx",
        DISPATCH_LEVEL,
        RULE_IRQL_KE_DISPATCH_LTE,
    );
    match irp_argument(&kernel, "IoCsqInsertIrpEx", irp) {
        Some(irp) => csq::csq_insert(csq, irp, context, insert_context),
        None => STATUS_INVALID_PARAMETER,
    }
}

unsafe extern "win64" fn io_csq_remove_irp(
    csq: *mut IoCsq,
    context: *mut IoCsqIrpContext,
) -> *mut c_void {
    let (kernel, _call) = enter("IoCsqRemoveIrp");
    require_irql_at_most("IoCsqRemoveIrp", DISPATCH_LEVEL, RULE_IRQL_KE_DISPATCH_LTE);
    csq::csq_remove(&kernel, csq, context).cast()
}

unsafe extern "win64" fn io_csq_remove_next_irp(
    csq: *mut IoCsq,
    peek_context: *mut c_void,
) -> *mut c_void {
    let (kernel, _call) = enter("IoCsqRemoveNextIrp");
    require_irql_at_most(
        "IoCsqRemoveNextIrp",
        DISPATCH_LEVEL,
        RULE_IRQL_KE_DISPATCH_LTE,
    );
    csq::csq_remove_next(&kernel, csq, peek_context).cast()
}

unsafe extern "win64" fn ex_allocate_pool2(flags: u64, size: usize, tag: u32) -> *mut c_void {
    let (kernel, _call) = enter("ExAllocatePool2");
    let max = if flags & POOL_FLAG_PAGED != 0 {
        APC_LEVEL
    } else {
        DISPATCH_LEVEL
    };
    require_irql_at_most("ExAllocatePool2", max, RULE_IRQL_EX_ALLOCATE_POOL);
    if size == 0 {
        kernel.machine().report(BugCheck::new(
            Code::DriverVerifierDetectedViolation,
            [0x00, 0, u64::from(tag), 0],
            "ExAllocatePool2 of zero bytes",
        ));
        return std::ptr::null_mut();
    }
    if kernel
        .machine()
        .faults()
        .fail(crate::faults::Site::ExAllocatePool)
    {
        return std::ptr::null_mut();
    }
    let owner = Running::now().pool_owner();
    let block = if flags & POOL_FLAG_UNINITIALIZED != 0 {
        kernel.machine().pool().allocate(size, tag, owner)
    } else {
        kernel.machine().pool().allocate_zeroed(size, tag, owner)
    };
    block.map_or(std::ptr::null_mut(), |p| p.cast())
}

unsafe extern "win64" fn ex_allocate_pool_with_tag(
    pool_type: u32,
    size: usize,
    tag: u32,
) -> *mut c_void {
    let paged = pool_type & 1 != 0;
    // SAFETY: forwards the same contract (ExAllocatePoolWithTag does not zero; DV fills).
    unsafe {
        ex_allocate_pool2(
            if paged { POOL_FLAG_PAGED } else { 0x40 } | POOL_FLAG_UNINITIALIZED,
            size,
            tag,
        )
    }
}

fn free_pool(routine: &'static str, pointer: *mut c_void, tag: Option<u32>) {
    let (kernel, _call) = enter(routine);
    require_irql_at_most(routine, DISPATCH_LEVEL, RULE_IRQL_KE_DISPATCH_LTE);
    let bug = match kernel.machine().pool().free(pointer.cast(), tag) {
        Ok(block) => {
            kernel
                .machine()
                .locks()
                .forget_range(block.addr, block.size);
            return;
        }
        Err(PoolError::DoubleFree { addr }) => BugCheck::new(
            Code::DriverVerifierDetectedViolation,
            [0x13, addr as u64, 0, 0],
            format!("{routine}: pool block {addr:#x} freed twice"),
        ),
        Err(PoolError::NotAllocated { addr }) => BugCheck::new(
            Code::DriverVerifierDetectedViolation,
            [0x10, addr as u64, 0, 0],
            format!("{routine}: {addr:#x} was never allocated"),
        ),
        Err(PoolError::TagMismatch {
            addr,
            expected,
            actual,
        }) => BugCheck::new(
            Code::BadPoolCaller,
            [0x0A, addr as u64, u64::from(expected), u64::from(actual)],
            format!("{routine}: tag {expected:#x} does not match the block's {actual:#x}"),
        ),
        Err(PoolError::Underrun { block, offset }) => BugCheck::new(
            Code::SpecialPoolDetectedMemoryCorruption,
            [block.addr as u64, block.size as u64, offset as u64, 0x21],
            format!("{routine}: pool underrun at byte {offset}"),
        ),
        Err(PoolError::Overrun { block, offset }) => BugCheck::new(
            Code::SpecialPoolDetectedMemoryCorruption,
            [block.addr as u64, block.size as u64, offset as u64, 0x20],
            format!("{routine}: pool overrun at byte {offset}"),
        ),
        Err(other) => BugCheck::new(
            Code::DriverVerifierDetectedViolation,
            [0x10, pointer as u64, 0, 0],
            format!("{routine}: {other}"),
        ),
    };
    kernel.machine().report(bug);
}

unsafe extern "win64" fn ex_free_pool_with_tag(pointer: *mut c_void, tag: u32) {
    free_pool("ExFreePoolWithTag", pointer, Some(tag));
}

unsafe extern "win64" fn ex_free_pool(pointer: *mut c_void) {
    free_pool("ExFreePool", pointer, None);
}

unsafe extern "win64" fn ke_bug_check_ex(code: u32, p1: u64, p2: u64, p3: u64, p4: u64) -> ! {
    let (kernel, _call) = enter("KeBugCheckEx");
    kernel.machine().stop(BugCheck::raised_by_driver(
        code,
        [p1, p2, p3, p4],
        format!("the driver called KeBugCheckEx({code:#x})"),
    ))
}

/// 100 ns units, like the kernel's clocks.
fn ticks(duration: Duration) -> i64 {
    (duration.as_nanos() / 100) as i64
}

unsafe extern "win64" fn ke_query_performance_counter(frequency: *mut i64) -> i64 {
    if !frequency.is_null() {
        // SAFETY: optional out-parameter supplied by the driver.
        unsafe { frequency.write(10_000_000) };
    }
    ticks(crate::kernel::kernel().machine().uptime())
}

unsafe extern "win64" fn ke_query_system_time_precise(time: *mut i64) {
    // Windows epoch 1601-01-01 is 11644473600 s before the Unix epoch.
    let since_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    // SAFETY: the driver's LARGE_INTEGER.
    unsafe { time.write(ticks(since_unix) + 116_444_736_000_000_000) };
}

unsafe extern "win64" fn ke_query_interrupt_time_precise(qpc: *mut u64) -> u64 {
    let now = ticks(crate::kernel::kernel().machine().uptime()) as u64;
    if !qpc.is_null() {
        // SAFETY: optional out-parameter.
        unsafe { qpc.write(now) };
    }
    now
}

unsafe extern "win64" fn ke_stall_execution_processor(micros: u32) {
    std::thread::sleep(Duration::from_micros(u64::from(micros)));
}

unsafe extern "win64" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the C contract; `copy` also tolerates the overlap real memcpy forbids.
    unsafe { std::ptr::copy(src, dest, n) };
    if n >= crate::port::BULK_COPY
        && let Some(kernel) = crate::kernel::running()
        && kernel.machine().config().count_copies
    {
        // Between a service IRP's SystemBuffer and Storport's memory (an SRB's data buffer):
        // a payload copy. A copy within the driver's own stack or extension is not one.
        let ends = kernel
            .machine()
            .pool()
            .owners([src as usize, dest as usize]);
        if ends.contains(&Some(Owner::SystemBuffer)) && ends.contains(&Some(Owner::Port)) {
            kernel
                .port()
                .counters()
                .payload_copies
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    dest
}

unsafe extern "win64" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the C contract: `n` writable bytes at `dest`.
    unsafe { std::ptr::write_bytes(dest, c as u8, n) };
    dest
}

unsafe extern "win64" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: the C contract: `n` readable bytes at `a`.
    let a = unsafe { std::slice::from_raw_parts(a, n) };
    // SAFETY: and at `b`.
    let b = unsafe { std::slice::from_raw_parts(b, n) };
    a.iter()
        .zip(b)
        .find(|(x, y)| x != y)
        .map_or(0, |(x, y)| i32::from(*x) - i32::from(*y))
}

/// `__chkstk`: RAX = frame size; probe each page below RSP so a large frame touches the guard
/// page in order; changes only R10, R11 and flags, and does not move RSP (x64 ABI).
#[unsafe(naked)]
unsafe extern "win64" fn chkstk() {
    core::arch::naked_asm!(
        "lea r10, [rsp + 8]",
        "mov r11, rax",
        "2:",
        "cmp r11, 0x1000",
        "jb 3f",
        "sub r10, 0x1000",
        "test [r10], r10",
        "sub r11, 0x1000",
        "jmp 2b",
        "3:",
        "ret",
    )
}

/// The table the loader binds `ntoskrnl.exe!…` imports against.
pub fn exports() -> Vec<Export> {
    vec![
        (
            "KeAcquireInStackQueuedSpinLock",
            ke_acquire_in_stack_queued_spin_lock as *const () as usize,
        ),
        (
            "KeReleaseInStackQueuedSpinLock",
            ke_release_in_stack_queued_spin_lock as *const () as usize,
        ),
        (
            "KeAcquireSpinLockRaiseToDpc",
            ke_acquire_spin_lock_raise_to_dpc as *const () as usize,
        ),
        (
            "KeReleaseSpinLock",
            ke_release_spin_lock as *const () as usize,
        ),
        (
            "KeAcquireSpinLockAtDpcLevel",
            ke_acquire_spin_lock_at_dpc_level as *const () as usize,
        ),
        (
            "KeReleaseSpinLockFromDpcLevel",
            ke_release_spin_lock_from_dpc_level as *const () as usize,
        ),
        (
            "IoAcquireCancelSpinLock",
            io_acquire_cancel_spin_lock as *const () as usize,
        ),
        (
            "IoReleaseCancelSpinLock",
            io_release_cancel_spin_lock as *const () as usize,
        ),
        (
            "KeGetCurrentIrql",
            ke_get_current_irql as *const () as usize,
        ),
        ("KfRaiseIrql", kf_raise_irql as *const () as usize),
        ("KeLowerIrql", ke_lower_irql as *const () as usize),
        (
            "IofCompleteRequest",
            iof_complete_request as *const () as usize,
        ),
        ("IoCancelIrp", io_cancel_irp as *const () as usize),
        (
            "IoCsqInitialize",
            io_csq_initialize::<Option<InsertIrp>> as *const () as usize,
        ),
        (
            "IoCsqInitializeEx",
            io_csq_initialize::<Option<InsertIrpEx>> as *const () as usize,
        ),
        ("IoCsqInsertIrp", io_csq_insert_irp as *const () as usize),
        (
            "IoCsqInsertIrpEx",
            io_csq_insert_irp_ex as *const () as usize,
        ),
        ("IoCsqRemoveIrp", io_csq_remove_irp as *const () as usize),
        (
            "IoCsqRemoveNextIrp",
            io_csq_remove_next_irp as *const () as usize,
        ),
        ("ExAllocatePool2", ex_allocate_pool2 as *const () as usize),
        (
            "ExAllocatePoolWithTag",
            ex_allocate_pool_with_tag as *const () as usize,
        ),
        (
            "ExFreePoolWithTag",
            ex_free_pool_with_tag as *const () as usize,
        ),
        ("ExFreePool", ex_free_pool as *const () as usize),
        ("KeBugCheckEx", ke_bug_check_ex as *const () as usize),
        (
            "KeQueryPerformanceCounter",
            ke_query_performance_counter as *const () as usize,
        ),
        (
            "KeQuerySystemTimePrecise",
            ke_query_system_time_precise as *const () as usize,
        ),
        (
            "KeQueryInterruptTimePrecise",
            ke_query_interrupt_time_precise as *const () as usize,
        ),
        (
            "KeStallExecutionProcessor",
            ke_stall_execution_processor as *const () as usize,
        ),
        (
            "DbgPrint",
            super::dbgprint::address(super::dbgprint::dbg_print),
        ),
        (
            "DbgPrintEx",
            super::dbgprint::address(super::dbgprint::dbg_print_ex),
        ),
        ("memcpy", memcpy as *const () as usize),
        ("memmove", memcpy as *const () as usize),
        ("memset", memset as *const () as usize),
        ("memcmp", memcmp as *const () as usize),
        ("__chkstk", chkstk as *const () as usize),
    ]
}
