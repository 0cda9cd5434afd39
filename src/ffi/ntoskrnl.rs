//! Imports from `ntoskrnl.exe` (DDI: wdm.h).
#![allow(non_snake_case)]

use super::{KIRQL, KLOCK_QUEUE_HANDLE, KSPIN_LOCK};

#[link(name = "ntoskrnl.exe", kind = "raw-dylib", modifiers = "+verbatim")]
unsafe extern "system" {
    /// <https://learn.microsoft.com/windows-hardware/drivers/ddi/wdm/nf-wdm-kebugcheckex>
    pub fn KeBugCheckEx(code: u32, p1: usize, p2: usize, p3: usize, p4: usize) -> !;
    /// IRQL ≤ DISPATCH_LEVEL; raises to DISPATCH_LEVEL. `handle` must stay put until release.
    pub fn KeAcquireInStackQueuedSpinLock(lock: *mut KSPIN_LOCK, handle: *mut KLOCK_QUEUE_HANDLE);
    pub fn KeReleaseInStackQueuedSpinLock(handle: *mut KLOCK_QUEUE_HANDLE);
    /// A cancel routine's first call: releases the global cancel spin lock IoCancelIrp holds.
    pub fn IoReleaseCancelSpinLock(irql: KIRQL);
}

// LLVM emits calls to these for block copies, zeroing, comparisons and frames over 4 KiB;
// nothing else provides them to a driver, and only the ones referenced land in the import table.
#[link(name = "ntoskrnl.exe", kind = "raw-dylib", modifiers = "+verbatim")]
unsafe extern "C" {
    pub fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8;
    pub fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8;
    pub fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8;
    pub fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32;
    pub fn __chkstk();
    /// <https://learn.microsoft.com/windows-hardware/drivers/ddi/wdm/nf-wdm-dbgprintex>
    pub fn DbgPrintEx(component_id: u32, level: u32, format: *const u8, ...) -> u32;
}
