//! DriverEntry and StorPortInitialize: the driver object Storport fills, the validation it
//! does (STORPORT.md §6.1) and the copy of the miniport's callbacks it keeps.

use std::ffi::c_void;
use std::mem::offset_of;

use storport_abi::{
    DEVICE_OBJECT, DRIVER_OBJECT, HW_ADAPTER_CONTROL, HW_COMPLETE_SERVICE_IRP,
    HW_FREE_ADAPTER_RESOURCES, HW_INITIALIZATION_DATA, HW_INITIALIZE, HW_PROCESS_SERVICE_REQUEST,
    HW_RESET_BUS, HW_STARTIO, STOR_FEATURE_VIRTUAL_MINIPORT, UNICODE_STRING,
    VIRTUAL_HW_FIND_ADAPTER,
};

use crate::kernel::Kernel;
use crate::verifier::{BugCheck, Code};

pub const STATUS_INVALID_PARAMETER: u32 = 0xC000_000D;
pub const STATUS_REVISION_MISMATCH: u32 = 0xC000_0059;
pub const STATUS_NOT_SUPPORTED: u32 = 0xC000_00BB;

/// What Storport keeps from the miniport's HW_INITIALIZATION_DATA.
#[derive(Clone, Copy)]
pub struct Callbacks {
    pub find_adapter: VIRTUAL_HW_FIND_ADAPTER,
    pub initialize: HW_INITIALIZE,
    pub start_io: HW_STARTIO,
    pub reset_bus: HW_RESET_BUS,
    pub adapter_control: Option<HW_ADAPTER_CONTROL>,
    pub free_adapter_resources: Option<HW_FREE_ADAPTER_RESOURCES>,
    pub process_service_request: Option<HW_PROCESS_SERVICE_REQUEST>,
    pub complete_service_irp: Option<HW_COMPLETE_SERVICE_IRP>,
    pub extension_size: u32,
    pub srb_extension_size: u32,
}

const DRIVER_OBJECT_SIZE: usize = 0x150;
const DEVICE_OBJECT_SIZE: usize = 0x150;
const MAJOR_FUNCTION: usize = 0x70;
const DRIVER_UNLOAD: usize = 0x68;
const DRIVER_EXTENSION: usize = 0x30;
const ADD_DEVICE: usize = 0x08;
const IRP_MJ_MAXIMUM_FUNCTION: usize = 0x1B;

/// The objects the I/O manager and PnP manager own for the driver: DRIVER_OBJECT (0x150) with
/// its DRIVER_EXTENSION, Storport's FDO and the root-enumerated PDO (DEVICE_OBJECT, 0x150),
/// and the registry path handed to DriverEntry.
pub struct DriverObjects {
    driver: Box<[u64; DRIVER_OBJECT_SIZE / 8]>,
    extension: Box<[u64; 5]>,
    fdo: Box<[u64; DEVICE_OBJECT_SIZE / 8]>,
    pdo: Box<[u64; DEVICE_OBJECT_SIZE / 8]>,
    registry_path: Box<[u64; 2]>,
    _registry_text: Box<[u16]>,
}

impl Default for DriverObjects {
    fn default() -> Self {
        let text: Box<[u16]> = "\\Registry\\Machine\\System\\CurrentControlSet\\Services\\revcall"
            .encode_utf16()
            .collect();
        let mut registry_path = Box::new([0u64; 2]);
        let bytes = (text.len() * 2) as u64;
        registry_path[0] = bytes | (bytes << 16);
        registry_path[1] = text.as_ptr() as u64;
        let mut objects = Self {
            driver: Box::new([0; DRIVER_OBJECT_SIZE / 8]),
            extension: Box::new([0; 5]),
            fdo: Box::new([0; DEVICE_OBJECT_SIZE / 8]),
            pdo: Box::new([0; DEVICE_OBJECT_SIZE / 8]),
            registry_path,
            _registry_text: text,
        };
        // Type / Size: IO_TYPE_DRIVER 4, IO_TYPE_DEVICE 3.
        objects.driver[0] = 4 | ((DRIVER_OBJECT_SIZE as u64) << 16);
        objects.driver[DRIVER_EXTENSION / 8] = objects.extension.as_ptr() as u64;
        objects.extension[0] = objects.driver.as_ptr() as u64;
        let driver = objects.driver.as_ptr() as u64;
        for device in [&mut objects.fdo, &mut objects.pdo] {
            device[0] = 3 | ((DEVICE_OBJECT_SIZE as u64) << 16);
            device[1] = driver;
        }
        // StackSize (0x4C): the FDO sits on the PDO.
        objects.fdo[0x48 / 8] |= 2 << 32;
        objects.pdo[0x48 / 8] |= 1 << 32;
        objects.fdo[0x18 / 8] = 0;
        objects.pdo[0x18 / 8] = objects.fdo.as_ptr() as u64;
        objects
    }
}

// SAFETY: the boxes are plain memory; the driver and storsim access them through raw pointers
// with the kernel's own (lack of) synchronisation, as Windows does.
unsafe impl Send for DriverObjects {}
// SAFETY: as above.
unsafe impl Sync for DriverObjects {}

impl DriverObjects {
    pub fn driver(&self) -> *mut DRIVER_OBJECT {
        self.driver.as_ptr() as *mut _
    }
    pub fn fdo(&self) -> *mut DEVICE_OBJECT {
        self.fdo.as_ptr() as *mut _
    }
    pub fn pdo(&self) -> *mut DEVICE_OBJECT {
        self.pdo.as_ptr() as *mut _
    }
    pub fn registry_path(&self) -> *mut UNICODE_STRING {
        self.registry_path.as_ptr() as *mut _
    }

    /// `DriverObject->MajorFunction[major]`.
    pub fn major_function(&self, major: u8) -> usize {
        self.word(MAJOR_FUNCTION + usize::from(major) * 8)
    }

    fn word(&self, offset: usize) -> usize {
        let base = self.driver.as_ptr() as *const u8;
        // SAFETY: offset < 0x150 and 8-aligned: inside the driver object box; read volatile
        // because the driver may have written it through its own pointer.
        unsafe { base.wrapping_add(offset).cast::<usize>().read_volatile() }
    }

    fn set_word(&self, offset: usize, value: usize) {
        let base = self.driver.as_ptr() as *mut u8;
        // SAFETY: as in `word`; storsim writes only while the driver is inside
        // StorPortInitialize (single-threaded DriverEntry).
        unsafe {
            base.wrapping_add(offset)
                .cast::<usize>()
                .write_volatile(value)
        };
    }
}

/// Reads field `offset` of the caller's init data if the declared size covers it.
fn field<T: Copy>(init: *const HW_INITIALIZATION_DATA, size: usize, offset: usize) -> Option<T> {
    if offset + size_of::<T>() > size {
        return None;
    }
    // SAFETY: `init` points to at least `size` readable bytes (the driver's structure, whose
    // declared size we trust only up to the real struct size: the caller caps it).
    Some(unsafe {
        init.cast::<u8>()
            .wrapping_add(offset)
            .cast::<T>()
            .read_unaligned()
    })
}

impl Kernel {
    /// StorPortInitialize(DriverObject, RegistryPath, HwInitializationData, HwContext).
    pub fn storport_initialize(
        &self,
        driver: *mut c_void,
        registry: *mut c_void,
        init: *mut HW_INITIALIZATION_DATA,
    ) -> u32 {
        if driver.is_null() || registry.is_null() || init.is_null() {
            self.report(BugCheck::new(Code::ScsiVerifierDetectedViolation,
                [0x1000, driver as u64, registry as u64, init as u64],
                "StorPortInitialize called with a NULL argument",
            ));
            return STATUS_INVALID_PARAMETER;
        }
        // SAFETY: the driver passes its HW_INITIALIZATION_DATA; the size field comes first.
        let size = unsafe { init.cast::<u32>().read_unaligned() } as usize;
        if ![0x88, 0xB0, 0xD0].contains(&size) {
            self.note(format!(
                "StorPortInitialize: HwInitializationDataSize {size:#x} → STATUS_REVISION_MISMATCH"
            ));
            return STATUS_REVISION_MISMATCH;
        }
        let pointer = |offset| field::<usize>(init, size, offset).unwrap_or(0);
        let feature_support = field::<u32>(
            init,
            size,
            offset_of!(HW_INITIALIZATION_DATA, FeatureSupport),
        )
        .unwrap_or(0);
        let is_virtual =
            size == 0xB0 || (size == 0xD0 && feature_support & STOR_FEATURE_VIRTUAL_MINIPORT != 0);
        let required = [
            (
                "HwInitialize",
                offset_of!(HW_INITIALIZATION_DATA, HwInitialize),
            ),
            ("HwStartIo", offset_of!(HW_INITIALIZATION_DATA, HwStartIo)),
            (
                "HwFindAdapter",
                offset_of!(HW_INITIALIZATION_DATA, HwFindAdapter),
            ),
            ("HwResetBus", offset_of!(HW_INITIALIZATION_DATA, HwResetBus)),
        ];
        if let Some((name, _)) = required.iter().find(|(_, offset)| pointer(*offset) == 0) {
            self.note(format!(
                "StorPortInitialize: {name} is NULL → STATUS_INVALID_PARAMETER"
            ));
            return STATUS_INVALID_PARAMETER;
        }
        if !is_virtual {
            self.note(
                "StorPortInitialize: not a virtual miniport; storsim emulates no HBA hardware",
            );
            return STATUS_NOT_SUPPORTED;
        }
        let optional = |offset| {
            let address = pointer(offset);
            // SAFETY: a non-null callback pointer the driver stored; `Option<fn>` of the same
            // width, and 0 maps to None.
            unsafe { std::mem::transmute::<usize, Option<unsafe extern "win64" fn()>>(address) }
        };
        // SAFETY (all four): checked non-null above, and each field has this prototype in
        // storport.h; the transmutes only retype the same function address.
        let callbacks = Callbacks {
            // SAFETY: see above.
            find_adapter: unsafe {
                std::mem::transmute::<usize, VIRTUAL_HW_FIND_ADAPTER>(pointer(offset_of!(
                    HW_INITIALIZATION_DATA,
                    HwFindAdapter
                )))
            },
            // SAFETY: see above.
            initialize: unsafe {
                std::mem::transmute::<usize, HW_INITIALIZE>(pointer(offset_of!(
                    HW_INITIALIZATION_DATA,
                    HwInitialize
                )))
            },
            // SAFETY: see above.
            start_io: unsafe {
                std::mem::transmute::<usize, HW_STARTIO>(pointer(offset_of!(
                    HW_INITIALIZATION_DATA,
                    HwStartIo
                )))
            },
            // SAFETY: see above.
            reset_bus: unsafe {
                std::mem::transmute::<usize, HW_RESET_BUS>(pointer(offset_of!(
                    HW_INITIALIZATION_DATA,
                    HwResetBus
                )))
            },
            // SAFETY: `optional` yields None or the driver's function of this prototype.
            adapter_control: unsafe {
                std::mem::transmute::<Option<unsafe extern "win64" fn()>, Option<HW_ADAPTER_CONTROL>>(
                    optional(offset_of!(HW_INITIALIZATION_DATA, HwAdapterControl)),
                )
            },
            // SAFETY: as above.
            free_adapter_resources: unsafe {
                std::mem::transmute::<
                    Option<unsafe extern "win64" fn()>,
                    Option<HW_FREE_ADAPTER_RESOURCES>,
                >(optional(offset_of!(
                    HW_INITIALIZATION_DATA,
                    HwFreeAdapterResources
                )))
            },
            // SAFETY: as above.
            process_service_request: unsafe {
                std::mem::transmute::<
                    Option<unsafe extern "win64" fn()>,
                    Option<HW_PROCESS_SERVICE_REQUEST>,
                >(optional(offset_of!(
                    HW_INITIALIZATION_DATA,
                    HwProcessServiceRequest
                )))
            },
            // SAFETY: as above.
            complete_service_irp: unsafe {
                std::mem::transmute::<
                    Option<unsafe extern "win64" fn()>,
                    Option<HW_COMPLETE_SERVICE_IRP>,
                >(optional(offset_of!(
                    HW_INITIALIZATION_DATA,
                    HwCompleteServiceIrp
                )))
            },
            srb_extension_size: field::<u32>(
                init,
                size,
                offset_of!(HW_INITIALIZATION_DATA, SrbExtensionSize),
            )
            .unwrap_or(0),
            extension_size: field::<u32>(
                init,
                size,
                offset_of!(HW_INITIALIZATION_DATA, DeviceExtensionSize),
            )
            .unwrap_or(0),
        };
        // Storport marks the caller's copy (PortVersionFlags |= 0x10) [DECOMP].
        let flags = init
            .cast::<u8>()
            .wrapping_add(offset_of!(HW_INITIALIZATION_DATA, PortVersionFlags))
            .cast::<u16>();
        // SAFETY: inside the driver's structure (all sizes ≥ 0x88 > 0x6A).
        let old = unsafe { flags.read_unaligned() };
        // SAFETY: as above.
        unsafe { flags.write_unaligned(old | 0x10) };
        *self
            .port
            .callbacks
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(callbacks);
        let objects = &self.port.objects;
        for major in [
            0x00, 0x02, 0x03, 0x04, 0x09, 0x0E, 0x0F, 0x10, 0x16, 0x17, 0x1B,
        ] {
            debug_assert!(major <= IRP_MJ_MAXIMUM_FUNCTION);
            objects.set_word(
                MAJOR_FUNCTION + major * 8,
                super::service::storport_dispatch as *const () as usize,
            );
        }
        objects.set_word(
            DRIVER_UNLOAD,
            super::service::storport_unload as *const () as usize,
        );
        // SAFETY: the extension box is 5 words; AddDevice is word 1.
        let add_device =
            unsafe { (objects.driver[DRIVER_EXTENSION / 8] as *mut u64).add(ADD_DEVICE / 8) };
        // SAFETY: in bounds (above); nothing else writes it during DriverEntry.
        unsafe { add_device.write(super::service::storport_add_device as *const () as u64) };
        self.note(format!(
            "StorPortInitialize: HW_INITIALIZATION_DATA {size:#x}, virtual, DeviceExtensionSize {:#x} → STATUS_SUCCESS",
            callbacks.extension_size
        ));
        0
    }
}
