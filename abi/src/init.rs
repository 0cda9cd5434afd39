//! Reading a miniport's `HW_INITIALIZATION_DATA` the way StorPortInitialize does
//! (docs/STORPORT-NOTES.md §6.1): the structure comes in three revisions, told apart by its
//! first field, and a field lying past the caller's revision is absent rather than read.
//! Shared by storsim's StorPortInitialize and the stand-in storport.sys that runs under Wine.

use core::ffi::c_void;
use core::mem::size_of;

use crate::{
    HW_ADAPTER_CONTROL, HW_COMPLETE_SERVICE_IRP, HW_FREE_ADAPTER_RESOURCES, HW_INITIALIZATION_DATA,
    HW_INITIALIZE, HW_PROCESS_SERVICE_REQUEST, HW_RESET_BUS, HW_STARTIO,
    STOR_FEATURE_VIRTUAL_MINIPORT, VIRTUAL_HW_FIND_ADAPTER,
};

/// A miniport's routines as StorPortInitialize keeps them (typed, the four it requires
/// present).
#[derive(Clone, Copy)]
pub struct Routines {
    pub find_adapter: VIRTUAL_HW_FIND_ADAPTER,
    pub initialize: HW_INITIALIZE,
    pub start_io: HW_STARTIO,
    pub reset_bus: HW_RESET_BUS,
    pub adapter_control: Option<HW_ADAPTER_CONTROL>,
    pub free_adapter_resources: Option<HW_FREE_ADAPTER_RESOURCES>,
    pub process_service_request: Option<HW_PROCESS_SERVICE_REQUEST>,
    pub complete_service_irp: Option<HW_COMPLETE_SERVICE_IRP>,
}

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

    /// The routines, typed; `Err` names the first of HwInitialize, HwStartIo, HwFindAdapter,
    /// HwResetBus that is NULL (Storport then answers STATUS_INVALID_PARAMETER).
    pub fn routines(&self) -> Result<Routines, &'static str> {
        macro_rules! routine {
            ($field:ident) => {
                // SAFETY: the field holds NULL or a routine with this storport.h prototype.
                unsafe { self.field(core::mem::offset_of!(HW_INITIALIZATION_DATA, $field)) }
                    .flatten()
            };
        }
        Ok(Routines {
            initialize: routine!(HwInitialize).ok_or("HwInitialize")?,
            start_io: routine!(HwStartIo).ok_or("HwStartIo")?,
            find_adapter: routine!(HwFindAdapter).ok_or("HwFindAdapter")?,
            reset_bus: routine!(HwResetBus).ok_or("HwResetBus")?,
            adapter_control: routine!(HwAdapterControl),
            free_adapter_resources: routine!(HwFreeAdapterResources),
            process_service_request: routine!(HwProcessServiceRequest),
            complete_service_irp: routine!(HwCompleteServiceIrp),
        })
    }

    /// Storport marks the caller's structure: PortVersionFlags |= 0x10 [DECOMP].
    ///
    /// # Safety
    ///
    /// `init` is the structure this value reads, and writable.
    pub unsafe fn mark_seen(&self, init: *mut HW_INITIALIZATION_DATA) {
        let flags = init
            .cast::<u8>()
            .wrapping_add(core::mem::offset_of!(
                HW_INITIALIZATION_DATA,
                PortVersionFlags
            ))
            .cast::<u16>();
        // SAFETY: inside the caller's structure (every revision is longer than 0x6A bytes).
        let old = unsafe { flags.read_unaligned() };
        // SAFETY: as above, and writable (the caller's promise).
        unsafe { flags.write_unaligned(old | 0x10) };
    }
}
