//! Imports from `ntoskrnl.exe` (DDI: wdm.h).
//!
//! <https://learn.microsoft.com/windows-hardware/drivers/ddi/wdm/>
#![allow(non_snake_case)]

use storport_abi::{
    BOOLEAN, DEVICE_OBJECT, FILE_OBJECT, IO_WORKITEM, IO_WORKITEM_ROUTINE_EX, IRP, KEVENT, KIRQL,
    KLOCK_QUEUE_HANDLE, KSPIN_LOCK, NTSTATUS, PVOID, UNICODE_STRING,
};

use crate::csq::{
    IO_CSQ, IO_CSQ_ACQUIRE_LOCK, IO_CSQ_COMPLETE_CANCELED_IRP, IO_CSQ_INSERT_IRP,
    IO_CSQ_PEEK_NEXT_IRP, IO_CSQ_RELEASE_LOCK, IO_CSQ_REMOVE_IRP,
};

#[link(name = "ntoskrnl.exe", kind = "raw-dylib", modifiers = "+verbatim")]
unsafe extern "system" {
    /// <https://learn.microsoft.com/windows-hardware/drivers/ddi/wdm/nf-wdm-kebugcheckex>
    pub fn KeBugCheckEx(code: u32, p1: usize, p2: usize, p3: usize, p4: usize) -> !;
    /// IRQL ≤ DISPATCH_LEVEL; raises to DISPATCH_LEVEL. `handle` must stay put until release.
    pub fn KeAcquireInStackQueuedSpinLock(lock: *mut KSPIN_LOCK, handle: *mut KLOCK_QUEUE_HANDLE);
    pub fn KeReleaseInStackQueuedSpinLock(handle: *mut KLOCK_QUEUE_HANDLE);
    /// IRQL ≤ DISPATCH_LEVEL; raises to DISPATCH_LEVEL and returns the old IRQL.
    pub fn KeAcquireSpinLockRaiseToDpc(lock: *mut KSPIN_LOCK) -> KIRQL;
    /// At DISPATCH_LEVEL, holding `lock` taken with KeAcquireSpinLockRaiseToDpc.
    pub fn KeReleaseSpinLock(lock: *mut KSPIN_LOCK, new_irql: KIRQL);
    /// At DISPATCH_LEVEL already: takes `lock` without changing the IRQL.
    pub fn KeAcquireSpinLockAtDpcLevel(lock: *mut KSPIN_LOCK);
    /// Releases a lock taken with KeAcquireSpinLockAtDpcLevel, staying at DISPATCH_LEVEL.
    pub fn KeReleaseSpinLockFromDpcLevel(lock: *mut KSPIN_LOCK);
    /// A cancel routine's first call: releases the global cancel spin lock IoCancelIrp holds.
    pub fn IoReleaseCancelSpinLock(irql: KIRQL);
    /// `IoCompleteRequest`; never right for a service IRP (only the `io_complete_request`
    /// fixture calls it).
    pub fn IofCompleteRequest(irp: *mut IRP, priority_boost: i8);
    /// <https://learn.microsoft.com/windows-hardware/drivers/ddi/wdm/nf-wdm-exallocatepool2>
    pub fn ExAllocatePool2(flags: u64, size: usize, tag: u32) -> PVOID;
    pub fn ExFreePoolWithTag(block: PVOID, tag: u32);
    pub fn KfRaiseIrql(new_irql: KIRQL) -> KIRQL;
    pub fn KeLowerIrql(new_irql: KIRQL);
    /// Fills `Csq` with the six callbacks; STATUS_SUCCESS.
    pub fn IoCsqInitialize(
        Csq: *mut IO_CSQ,
        CsqInsertIrp: IO_CSQ_INSERT_IRP,
        CsqRemoveIrp: IO_CSQ_REMOVE_IRP,
        CsqPeekNextIrp: IO_CSQ_PEEK_NEXT_IRP,
        CsqAcquireLock: IO_CSQ_ACQUIRE_LOCK,
        CsqReleaseLock: IO_CSQ_RELEASE_LOCK,
        CsqCompleteCanceledIrp: IO_CSQ_COMPLETE_CANCELED_IRP,
    ) -> NTSTATUS;
    /// Queues `Irp` cancelably (`Context` may be null); IRQL ≤ DISPATCH_LEVEL.
    pub fn IoCsqInsertIrp(Csq: *mut IO_CSQ, Irp: *mut IRP, Context: PVOID);
    /// Dequeues the first IRP not being cancelled (`PeekContext` null: any), or null.
    pub fn IoCsqRemoveNextIrp(Csq: *mut IO_CSQ, PeekContext: PVOID) -> *mut IRP;

    // A kernel-mode caller's side of an IRP (revcall-kclient, the client fixtures).
    /// The top device of `ObjectName`'s stack and a referenced FILE_OBJECT for it; the caller
    /// releases the reference with ObfDereferenceObject(file). PASSIVE_LEVEL.
    pub fn IoGetDeviceObjectPointer(
        ObjectName: *const UNICODE_STRING,
        DesiredAccess: u32,
        FileObject: *mut *mut FILE_OBJECT,
        DeviceObject: *mut *mut DEVICE_OBJECT,
    ) -> NTSTATUS;
    /// `ObDereferenceObject`.
    pub fn ObfDereferenceObject(Object: PVOID) -> isize;
    /// An IRP with `StackSize` locations, or NULL; IRQL ≤ DISPATCH_LEVEL.
    pub fn IoAllocateIrp(StackSize: i8, ChargeQuota: BOOLEAN) -> *mut IRP;
    /// Frees an IRP from IoAllocateIrp that no driver below holds.
    pub fn IoFreeIrp(Irp: *mut IRP);
    /// Makes a completed IRP from IoAllocateIrp new again, IoStatus.Status = `Status`.
    pub fn IoReuseIrp(Irp: *mut IRP, Status: NTSTATUS);
    /// `IoCallDriver`: the IRP's next location becomes current and belongs to `DeviceObject`.
    pub fn IofCallDriver(DeviceObject: *mut DEVICE_OBJECT, Irp: *mut IRP) -> NTSTATUS;
    /// Sets the IRP's Cancel flag and calls its cancel routine if one is set.
    pub fn IoCancelIrp(Irp: *mut IRP) -> BOOLEAN;
    pub fn KeInitializeEvent(Event: *mut KEVENT, Type: u32, State: BOOLEAN);
    /// IRQL ≤ DISPATCH_LEVEL; returns the previous state.
    pub fn KeSetEvent(Event: *mut KEVENT, Increment: i32, Wait: BOOLEAN) -> i32;
    /// PASSIVE_LEVEL unless `Timeout` is zero.
    pub fn KeWaitForSingleObject(
        Object: PVOID,
        WaitReason: u32,
        WaitMode: i8,
        Alertable: BOOLEAN,
        Timeout: *const i64,
    ) -> NTSTATUS;
    /// The bytes an IO_WORKITEM takes, for IoInitializeWorkItem.
    pub fn IoSizeofWorkItem() -> u32;
    /// `IoObject`: the caller's driver object or one of its device objects, referenced while
    /// the item is queued so the driver cannot unload under its routine.
    pub fn IoInitializeWorkItem(IoObject: PVOID, IoWorkItem: *mut IO_WORKITEM);
    pub fn IoUninitializeWorkItem(IoWorkItem: *mut IO_WORKITEM);
    /// Runs `WorkerRoutine` at PASSIVE_LEVEL in a system worker thread; IRQL ≤ DISPATCH_LEVEL.
    pub fn IoQueueWorkItemEx(
        IoWorkItem: *mut IO_WORKITEM,
        WorkerRoutine: IO_WORKITEM_ROUTINE_EX,
        QueueType: u32,
        Context: PVOID,
    );
}

// LLVM emits calls to these for block copies, zeroing, comparisons and frames over 4 KiB;
// nothing else provides them to a driver.
#[link(name = "ntoskrnl.exe", kind = "raw-dylib", modifiers = "+verbatim")]
unsafe extern "C" {
    pub fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8;
    pub fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8;
    pub fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8;
    pub fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32;
    pub fn __chkstk();
    /// <https://learn.microsoft.com/windows-hardware/drivers/ddi/wdm/nf-wdm-dbgprint>
    pub fn DbgPrint(format: *const u8, ...) -> u32;
    /// <https://learn.microsoft.com/windows-hardware/drivers/ddi/wdm/nf-wdm-dbgprintex>
    pub fn DbgPrintEx(component_id: u32, level: u32, format: *const u8, ...) -> u32;
}
