//! The structures of the cancel-safe queue (wdm.h) that `storport-abi` does not have: `IO_CSQ`,
//! its six callback types, and `LIST_ENTRY`, the link a driver's IRP list is made of.
//!
//! <https://learn.microsoft.com/windows-hardware/drivers/ddi/wdm/nf-wdm-iocsqinitialize>
#![allow(non_camel_case_types, non_snake_case, clippy::upper_case_acronyms)]

use core::mem::{align_of, size_of};

use storport_abi::{IRP, KIRQL, PVOID};

/// `LIST_ENTRY`: a link of a circular, doubly linked list whose head is one too.
#[repr(C)]
pub struct LIST_ENTRY {
    pub Flink: *mut LIST_ENTRY,
    pub Blink: *mut LIST_ENTRY,
}

/// `IO_CSQ` (0x40 bytes): IoCsqInitialize fills it; the driver only passes it on.
#[repr(C, align(8))]
pub struct IO_CSQ {
    _opaque: [u8; 0x40],
}

// The callbacks are `extern "win64"`, like every callback type of `storport-abi`: on the
// driver target that is the "system" convention, and storsim calls the same pointers on Linux.
// IoCsq calls each with the queue lock held, except the last two.
pub type IO_CSQ_INSERT_IRP = unsafe extern "win64" fn(Csq: *mut IO_CSQ, Irp: *mut IRP);
pub type IO_CSQ_REMOVE_IRP = unsafe extern "win64" fn(Csq: *mut IO_CSQ, Irp: *mut IRP);
pub type IO_CSQ_PEEK_NEXT_IRP =
    unsafe extern "win64" fn(Csq: *mut IO_CSQ, Irp: *mut IRP, PeekContext: PVOID) -> *mut IRP;
pub type IO_CSQ_ACQUIRE_LOCK = unsafe extern "win64" fn(Csq: *mut IO_CSQ, Irql: *mut KIRQL);
pub type IO_CSQ_RELEASE_LOCK = unsafe extern "win64" fn(Csq: *mut IO_CSQ, Irql: KIRQL);
pub type IO_CSQ_COMPLETE_CANCELED_IRP = unsafe extern "win64" fn(Csq: *mut IO_CSQ, Irp: *mut IRP);

const _: () = {
    assert!(size_of::<LIST_ENTRY>() == 0x10);
    assert!(size_of::<IO_CSQ>() == 0x40);
    assert!(align_of::<IO_CSQ>() == 8);
};
