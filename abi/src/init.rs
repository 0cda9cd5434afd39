//! Reading a miniport's `HW_INITIALIZATION_DATA` the way StorPortInitialize does
//! (docs/STORPORT-NOTES.md §6.1): the structure comes in three revisions, told apart by its
//! first field, and a field lying past the caller's revision is absent rather than read.
//! Shared by storsim's StorPortInitialize and the stand-in storport.sys that runs under Wine.

use core::ffi::c_void;
use core::mem::size_of;

use crate::{HW_INITIALIZATION_DATA, STOR_FEATURE_VIRTUAL_MINIPORT};

/// The sizes Storport accepts: 0x88 (no virtual fields), 0xB0 (VIRTUAL_HW_INITIALIZATION_DATA),
/// 0xD0 (the Windows 8 structure, virtual when FeatureSupport says so).
pub const REVISIONS: [usize; 3] = [0x88, 0xB0, 0xD0];

/// A routine field read as `Option` of a function pointer of unknown type.
pub type AnyRoutine = unsafe extern "win64" fn();

/// The caller's structure and its revision.
pub struct InitData {
    base: *const c_void,
    size: usize,
}

impl InitData {
    /// `None` when `HwInitializationDataSize` is none of [`REVISIONS`] (Storport then answers
    /// STATUS_REVISION_MISMATCH).
    ///
    /// # Safety
    ///
    /// `init` points to a readable u32, and to as many readable bytes as that u32 says when it
    /// is one of [`REVISIONS`]; they stay readable while the value is used.
    pub unsafe fn new(init: *const HW_INITIALIZATION_DATA) -> Option<Self> {
        // SAFETY: the caller's promise: the size field comes first and is readable.
        let size = unsafe { init.cast::<u32>().read_unaligned() } as usize;
        REVISIONS.contains(&size).then_some(Self {
            base: init.cast(),
            size,
        })
    }

    /// The revision's size in bytes.
    pub fn size(&self) -> usize {
        self.size
    }

    /// The field of type `T` at `offset`, or `None` when it lies past the caller's revision.
    ///
    /// # Safety
    ///
    /// Every bit pattern the field can hold is a valid `T` (storport.h's layout: integers, or
    /// NULL-or-routine pointers read as `Option<fn>`).
    pub unsafe fn field<T: Copy>(&self, offset: usize) -> Option<T> {
        if offset + size_of::<T>() > self.size {
            return None;
        }
        // SAFETY: inside the `size` readable bytes (`new`, checked above); the value's
        // validity is the caller's promise.
        Some(unsafe {
            self.base
                .cast::<u8>()
                .wrapping_add(offset)
                .cast::<T>()
                .read_unaligned()
        })
    }

    /// A routine field: `None` when NULL or past the revision.
    pub fn routine(&self, offset: usize) -> Option<AnyRoutine> {
        // SAFETY: a routine field holds NULL or a routine address: `Option<fn>` covers both.
        unsafe { self.field::<Option<AnyRoutine>>(offset) }.flatten()
    }

    /// A ULONG field, 0 past the revision.
    pub fn u32_at(&self, offset: usize) -> u32 {
        // SAFETY: any bit pattern is a u32.
        unsafe { self.field::<u32>(offset) }.unwrap_or(0)
    }

    /// Storport's test for a virtual miniport: the 0xB0 structure, or the 0xD0 one with
    /// STOR_FEATURE_VIRTUAL_MINIPORT in FeatureSupport.
    pub fn is_virtual(&self) -> bool {
        self.size == 0xB0
            || (self.size == 0xD0
                && self.u32_at(core::mem::offset_of!(
                    HW_INITIALIZATION_DATA,
                    FeatureSupport
                )) & STOR_FEATURE_VIRTUAL_MINIPORT
                    != 0)
    }
}
