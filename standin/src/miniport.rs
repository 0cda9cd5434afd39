//! The miniport as StorPortInitialize keeps it: its routines (typed), its extension size and
//! its service's registry path, found again by AddDevice from the driver object.
//!
//! Storport keeps it in the driver object's extension; Wine 8's IoAllocateDriverObjectExtension
//! is a stub that fails, so the stand-in keeps a small process-wide table instead ([`MINIPORTS`]:
//! the one global, because the driver object is all AddDevice has, and a winedevice process
//! hosts a handful of drivers at most).

use core::ffi::c_void;
use core::mem::offset_of;
use core::ptr::null_mut;
use core::sync::atomic::{AtomicPtr, Ordering};

use storport_abi::init::{InitData, Routines};
use storport_abi::{DRIVER_OBJECT, HW_INITIALIZATION_DATA};

use crate::adapter::POOL_TAG;
use crate::nt::{self, UNICODE_STRING};

/// The longest service registry path kept, in UTF-16 units.
const REGISTRY_PATH_UNITS: usize = 256;

pub struct Miniport {
    pub routines: Routines,
    pub extension_size: u32,
    pub srb_extension_size: u32,
    registry_path: [u16; REGISTRY_PATH_UNITS],
    registry_path_len: usize,
}

/// Why StorPortInitialize refuses a miniport.
pub enum Refusal {
    /// One of HwInitialize, HwStartIo, HwFindAdapter, HwResetBus is NULL.
    MissingRoutine,
    /// Not a virtual miniport: the stand-in has no hardware to give one.
    NotVirtual,
    /// The service's registry path does not fit.
    RegistryPathTooLong,
}

impl Miniport {
    /// Storport's checks and its typed copy of the routines.
    ///
    /// # Safety
    ///
    /// `registry_path` is the UNICODE_STRING DriverEntry received; every routine in `data`
    /// has its storport.h prototype and stays loaded while the miniport's driver is.
    pub unsafe fn from_init(
        data: &InitData,
        registry_path: *const UNICODE_STRING,
    ) -> Result<Self, Refusal> {
        let routines = data.routines().map_err(|_| Refusal::MissingRoutine)?;
        if !data.is_virtual() {
            return Err(Refusal::NotVirtual);
        }
        // SAFETY: DriverEntry's registry path (the caller's promise): Length bytes of UTF-16.
        let path_string = unsafe { &*registry_path };
        let (units, length) = (path_string.Buffer, usize::from(path_string.Length) / 2);
        if length > REGISTRY_PATH_UNITS {
            return Err(Refusal::RegistryPathTooLong);
        }
        let mut path = [0u16; REGISTRY_PATH_UNITS];
        // SAFETY: `length` readable units at `units` (the string's own length), copied into
        // a local array at least that long.
        unsafe { core::ptr::copy_nonoverlapping(units, path.as_mut_ptr(), length) };
        Ok(Self {
            routines,
            extension_size: data.u32_at(offset_of!(HW_INITIALIZATION_DATA, DeviceExtensionSize)),
            srb_extension_size: data.u32_at(offset_of!(HW_INITIALIZATION_DATA, SrbExtensionSize)),
            registry_path: path,
            registry_path_len: length,
        })
    }

    /// The service's key, `\Registry\Machine\System\CurrentControlSet\Services\<name>`.
    pub fn registry_path(&self) -> &[u16] {
        &self.registry_path[..self.registry_path_len]
    }

    /// HwAdapterControl, FALSE-like `None` when the miniport has none.
    pub fn adapter_control(&self, extension: *mut c_void, control: u32, parameters: *mut c_void) {
        if let Some(routine) = self.routines.adapter_control {
            // SAFETY: the miniport's routine (`from_init`) on its live extension.
            unsafe { routine(extension, control, parameters) };
        }
    }
}

/// A table entry: the driver and its miniport, in pool.
struct Entry {
    driver: *mut DRIVER_OBJECT,
    miniport: Miniport,
}

/// Drivers that called StorPortInitialize in this process.
static MINIPORTS: [AtomicPtr<Entry>; 8] = [const { AtomicPtr::new(null_mut()) }; 8];

/// Keeps `miniport` for `driver`, replacing what an earlier StorPortInitialize of the same
/// driver left (Storport keeps the latest); false when the table or the pool is full.
pub fn register(driver: *mut DRIVER_OBJECT, miniport: Miniport) -> bool {
    forget(driver);
    let entry = nt::allocate_zeroed(size_of::<Entry>(), POOL_TAG).cast::<Entry>();
    if entry.is_null() {
        return false;
    }
    // SAFETY: a fresh block sized and aligned (pool: 16 bytes) for an Entry.
    unsafe { entry.write(Entry { driver, miniport }) };
    for slot in &MINIPORTS {
        if slot
            .compare_exchange(null_mut(), entry, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            return true;
        }
    }
    // SAFETY: the block allocated above, published nowhere.
    unsafe { nt_imports::ntoskrnl::ExFreePoolWithTag(entry.cast(), POOL_TAG) };
    false
}

/// The miniport `driver` registered; it stays valid until [`forget`] at the driver's unload,
/// after its last device is gone.
pub fn lookup(driver: *mut DRIVER_OBJECT) -> Option<&'static Miniport> {
    MINIPORTS.iter().find_map(|slot| {
        let entry = slot.load(Ordering::Acquire);
        // SAFETY: a published entry stays allocated until `forget` takes it out of the table,
        // which happens only when its driver unloads.
        (!entry.is_null() && unsafe { (*entry).driver } == driver)
            // SAFETY: as above.
            .then(|| unsafe { &(*entry).miniport })
    })
}

/// Drops `driver`'s entry (its unload, or a second StorPortInitialize).
pub fn forget(driver: *mut DRIVER_OBJECT) {
    for slot in &MINIPORTS {
        let entry = slot.load(Ordering::Acquire);
        if !entry.is_null()
            // SAFETY: as in `lookup`.
            && unsafe { (*entry).driver } == driver
            && slot
                .compare_exchange(entry, null_mut(), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // SAFETY: the entry is out of the table; its driver has no adapter left.
            unsafe { nt_imports::ntoskrnl::ExFreePoolWithTag(entry.cast(), POOL_TAG) };
        }
    }
}
