//! The objects the I/O and PnP managers own for the driver: its DRIVER_OBJECT (0x150 bytes)
//! with the DRIVER_EXTENSION, the FDO Storport creates and the root-enumerated PDO below it
//! (DEVICE_OBJECT, 0x150 bytes each), and the registry path DriverEntry receives.
//!
//! Only the fields storsim or a miniport reads are filled. The driver writes some of them
//! (its dispatch table through StorPortInitialize), so storsim reads and writes them through
//! [`DriverObjects::dispatch`] / [`DriverObjects::set_word`] with volatile accesses.

use std::ffi::c_void;

use storport_abi::{DEVICE_OBJECT, DRIVER_OBJECT, IRP, UNICODE_STRING};

const DRIVER_OBJECT_SIZE: usize = 0x150;
const DEVICE_OBJECT_SIZE: usize = 0x150;
/// `DriverObject->MajorFunction`.
pub const MAJOR_FUNCTION: usize = 0x70;
/// `DriverObject->DriverUnload`.
pub const DRIVER_UNLOAD: usize = 0x68;
/// `DriverObject->DriverExtension`.
const DRIVER_EXTENSION: usize = 0x30;
/// `DriverExtension->AddDevice`.
pub const ADD_DEVICE: usize = 0x08;
/// Major functions 0..=IRP_MJ_MAXIMUM_FUNCTION.
pub const IRP_MJ_MAXIMUM_FUNCTION: u8 = 0x1B;

/// A DRIVER_UNLOAD routine.
pub type DriverUnloadRoutine = unsafe extern "win64" fn(driver: *mut DRIVER_OBJECT);

/// A DRIVER_DISPATCH routine.
pub type DriverDispatch = unsafe extern "win64" fn(device: *mut c_void, irp: *mut IRP) -> i32;

/// Which word a driver-object write goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// `DriverObject->MajorFunction[major]`.
    MajorFunction(u8),
    /// `DriverObject->DriverUnload`.
    DriverUnload,
    /// `DriverObject->DriverExtension->AddDevice`.
    AddDevice,
}

/// A DRIVER_OBJECT with its DRIVER_EXTENSION and the registry path DriverEntry receives: the
/// miniport's (inside [`DriverObjects`]) or a driver loaded above it.
pub struct DriverObject {
    driver: Box<[u64; DRIVER_OBJECT_SIZE / 8]>,
    extension: Box<[u64; 5]>,
    registry_path: Box<[u64; 2]>,
    _registry_text: Box<[u16]>,
}

impl DriverObject {
    /// The object of the driver registered as service `service`.
    pub fn new(service: &str) -> Self {
        let text: Box<[u16]> =
            format!("\\Registry\\Machine\\System\\CurrentControlSet\\Services\\{service}")
                .encode_utf16()
                .collect();
        let mut registry_path = Box::new([0u64; 2]);
        let bytes = (text.len() * 2) as u64;
        registry_path[0] = bytes | (bytes << 16);
        registry_path[1] = text.as_ptr() as u64;
        let mut object = Self {
            driver: Box::new([0; DRIVER_OBJECT_SIZE / 8]),
            extension: Box::new([0; 5]),
            registry_path,
            _registry_text: text,
        };
        // Type / Size: IO_TYPE_DRIVER 4.
        object.driver[0] = 4 | ((DRIVER_OBJECT_SIZE as u64) << 16);
        object.driver[DRIVER_EXTENSION / 8] = object.extension.as_ptr() as u64;
        object.extension[0] = object.driver.as_ptr() as u64;
        object
    }

    pub fn as_ptr(&self) -> *mut DRIVER_OBJECT {
        self.driver.as_ptr() as *mut _
    }

    pub fn registry_path(&self) -> *mut UNICODE_STRING {
        self.registry_path.as_ptr() as *mut _
    }

    fn word(&self, slot: Slot) -> *mut Option<DriverDispatch> {
        let (base, offset) = match slot {
            Slot::MajorFunction(major) => {
                assert!(
                    major <= IRP_MJ_MAXIMUM_FUNCTION,
                    "major function {major:#x}"
                );
                (
                    self.driver.as_ptr(),
                    MAJOR_FUNCTION + usize::from(major) * 8,
                )
            }
            Slot::DriverUnload => (self.driver.as_ptr(), DRIVER_UNLOAD),
            Slot::AddDevice => (self.extension.as_ptr(), ADD_DEVICE),
        };
        base.cast::<u8>().wrapping_add(offset).cast_mut().cast()
    }

    /// `DriverObject->MajorFunction[major]` (a miniport may have replaced Storport's).
    pub fn dispatch(&self, major: u8) -> Option<DriverDispatch> {
        // SAFETY: `word` addresses an aligned 8-byte word inside the driver object box, which
        // lives as long as `self`; it holds NULL or a routine with the prototype of its slot
        // (what Windows and storsim store there), read volatile because the driver may write
        // it through its own pointer.
        unsafe { self.word(Slot::MajorFunction(major)).read_volatile() }
    }

    /// `DriverObject->DriverUnload`, as the driver left it.
    pub fn unload_routine(&self) -> Option<DriverUnloadRoutine> {
        // SAFETY: as in `dispatch`: the slot holds NULL or a DRIVER_UNLOAD the driver stored.
        unsafe {
            self.word(Slot::DriverUnload)
                .cast::<Option<DriverUnloadRoutine>>()
                .read_volatile()
        }
    }

    /// Fills a driver-object routine slot, as Storport does inside StorPortInitialize (the
    /// driver runs single-threaded in DriverEntry then).
    pub fn set_word(&self, slot: Slot, routine: usize) {
        // SAFETY: as in `dispatch`; a plain word store of an address of storsim's own code.
        unsafe { self.word(slot).cast::<usize>().write_volatile(routine) }
    }
}

/// The miniport's driver object, the FDO Storport creates and the root-enumerated PDO below.
pub struct DriverObjects {
    driver: DriverObject,
    fdo: Box<[u64; DEVICE_OBJECT_SIZE / 8]>,
    pdo: Box<[u64; DEVICE_OBJECT_SIZE / 8]>,
}

impl DriverObjects {
    /// The objects of the driver registered as service `service`.
    pub fn new(service: &str) -> Self {
        let mut objects = Self {
            driver: DriverObject::new(service),
            fdo: Box::new([0; DEVICE_OBJECT_SIZE / 8]),
            pdo: Box::new([0; DEVICE_OBJECT_SIZE / 8]),
        };
        // Type / Size: IO_TYPE_DEVICE 3.
        let driver = objects.driver.as_ptr() as u64;
        for device in [&mut objects.fdo, &mut objects.pdo] {
            device[0] = 3 | ((DEVICE_OBJECT_SIZE as u64) << 16);
            device[1] = driver;
        }
        // StackSize (0x4C): the FDO sits on the PDO.
        objects.fdo[0x48 / 8] |= 2 << 32;
        objects.pdo[0x48 / 8] |= 1 << 32;
        objects.pdo[0x18 / 8] = objects.fdo.as_ptr() as u64;
        objects
    }

    /// Whether a driver was loaded into these objects: DriverEntry ran and
    /// StorPortInitialize filled its dispatch table.
    pub fn loaded(&self) -> bool {
        self.dispatch(0x0E).is_some()
    }

    pub fn driver(&self) -> *mut DRIVER_OBJECT {
        self.driver.as_ptr()
    }
    pub fn fdo(&self) -> *mut DEVICE_OBJECT {
        self.fdo.as_ptr() as *mut _
    }
    pub fn pdo(&self) -> *mut DEVICE_OBJECT {
        self.pdo.as_ptr() as *mut _
    }
    pub fn registry_path(&self) -> *mut UNICODE_STRING {
        self.driver.registry_path()
    }

    /// `DriverObject->MajorFunction[major]`.
    pub fn dispatch(&self, major: u8) -> Option<DriverDispatch> {
        self.driver.dispatch(major)
    }

    /// See [`DriverObject::set_word`].
    pub fn set_word(&self, slot: Slot, routine: usize) {
        self.driver.set_word(slot, routine)
    }
}

// SAFETY: the boxes are plain memory; the driver and storsim access them through raw pointers
// with the kernel's own (lack of) synchronisation, as Windows does.
unsafe impl Send for DriverObject {}
// SAFETY: shared access is the volatile word reads and writes above, as on Windows.
unsafe impl Sync for DriverObject {}
// SAFETY: as for DriverObject; the device objects are plain boxes as well.
unsafe impl Send for DriverObjects {}
// SAFETY: as above.
unsafe impl Sync for DriverObjects {}
