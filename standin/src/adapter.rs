//! One adapter per PnP device, in Storport's order (docs/STORPORT-NOTES.md §6.1, §6.7):
//! AddDevice creates the FDO `\Device\RaidPortN` and `\DosDevices\ScsiN:`; START_DEVICE runs
//! HwFindAdapter and HwInitialize, asks which adapter controls the miniport supports and
//! enables GUID_DEVINTERFACE_STORAGEPORT; SURPRISE_REMOVAL and REMOVE_DEVICE call
//! HwAdapterControl(ScsiAdapterSurpriseRemoval) / HwCompleteServiceIrp first and wait for every
//! service IRP to come back before the adapter stops and its resources go.
//!
//! The adapter lives in the FDO's device extension; the miniport's HwDeviceExtension is a
//! separate block with a 16-byte header in front that points back at it, as Storport's does,
//! so every StorPort* routine finds its adapter from the extension alone.

use core::cell::UnsafeCell;
use core::ffi::c_void;
use core::ptr::null_mut;
use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use storport_abi::{
    DEVICE_OBJECT, DRIVER_OBJECT, PORT_CONFIGURATION_INFORMATION, SCSI_ADAPTER_SURPRISE_REMOVAL,
    SCSI_QUERY_SUPPORTED_CONTROL_TYPES, SCSI_STOP_ADAPTER, SP_RETURN_FOUND, SP_UNINITIALIZED_VALUE,
};

use crate::miniport::Miniport;
use crate::nt::{self, DeviceObject, UNICODE_STRING};
use crate::scan::Scanner;
use crate::worker::Worker;

/// Pool tag of the stand-in's blocks ("StPt").
pub const POOL_TAG: u32 = u32::from_le_bytes(*b"StPt");
/// Bytes in front of the miniport's extension (Storport's header is 16 bytes too).
const EXTENSION_HEADER: usize = 16;
/// The highest adapter control type the query offers (ScsiAdapterControlMax, storport.h).
const SCSI_ADAPTER_CONTROL_MAX: usize = 19;
/// How long removal waits for parked service IRPs before it says so in the log (and goes on
/// waiting: Storport's rundown wait has no end; `cargo xtask wine` bounds the whole step).
const RUNDOWN_REPORT_MS: u64 = 5_000;

/// A UTF-16 name built from a prefix, a port number and a suffix.
pub struct Name {
    units: [u16; 32],
    len: usize,
}

impl Name {
    fn new(prefix: &str, port: u32, suffix: &str) -> Self {
        let mut name = Self {
            units: [0; 32],
            len: 0,
        };
        let mut digits = [0u8; 10];
        let mut count = 0;
        let mut rest = port;
        loop {
            digits[count] = b'0' + (rest % 10) as u8;
            count += 1;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        let number = digits[..count].iter().rev().map(|&d| char::from(d));
        for unit in prefix.chars().chain(number).chain(suffix.chars()) {
            name.units[name.len] = unit as u16;
            name.len += 1;
        }
        name
    }

    pub fn unicode(&self) -> UNICODE_STRING {
        nt::unicode(&self.units[..self.len])
    }
}

/// Service IRPs and in-flight IOCTLs hold the adapter; removal closes it and waits for them
/// (Storport's remove rundown, §6.4). Closed until START_DEVICE completes, so nothing reaches
/// the miniport before HwInitialize has returned.
pub struct Rundown(AtomicU64);

const CLOSED: u64 = 1 << 63;

impl Rundown {
    const fn new() -> Self {
        Self(AtomicU64::new(CLOSED))
    }

    /// Takes a reference; false once removal has started.
    pub fn acquire(&self) -> bool {
        let mut seen = self.0.load(Ordering::Acquire);
        loop {
            if seen & CLOSED != 0 {
                return false;
            }
            match self
                .0
                .compare_exchange_weak(seen, seen + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(now) => seen = now,
            }
        }
    }

    pub fn release(&self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }

    fn open(&self) {
        self.0.fetch_and(!CLOSED, Ordering::AcqRel);
    }

    /// Closes it and waits until no reference is left.
    fn close_and_wait(&self) {
        self.0.fetch_or(CLOSED, Ordering::AcqRel);
        let started = now_ms();
        let mut reported = false;
        loop {
            let held = self.0.load(Ordering::Acquire) & !CLOSED;
            if held == 0 {
                return;
            }
            if !reported && now_ms() - started >= RUNDOWN_REPORT_MS {
                reported = true;
                log!(
                    "RUNDOWN STUCK: %u service IRPs still held %u ms after removal began",
                    held as u32,
                    RUNDOWN_REPORT_MS as u32
                );
            }
            sleep_ms(10);
        }
    }
}

/// Milliseconds of system time (the stand-in's only clock: see `nt`).
pub fn now_ms() -> u64 {
    let mut time = 0i64;
    // SAFETY: writes the time into a local.
    unsafe { nt::KeQuerySystemTime(&mut time) };
    time as u64 / 10_000
}

fn sleep_ms(ms: u64) {
    let interval = nt::relative_ms(ms);
    // SAFETY: PASSIVE_LEVEL, a local interval.
    unsafe { nt::KeDelayExecutionThread(nt::KERNEL_MODE, 0, &interval) };
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PnpState {
    Added,
    Started,
    SurpriseRemoved,
}

/// What only the PnP path reads and writes (the PnP manager sends one IRP at a time).
struct Pnp {
    state: PnpState,
    /// GUID_DEVINTERFACE_STORAGEPORT's link, once registered (Buffer NULL before).
    interface: UNICODE_STRING,
    supports_surprise_removal: bool,
    supports_stop: bool,
}

/// The FDO's device extension, shared by the dispatch routines, the StorPort* routines the
/// miniport calls from any thread, and the worker thread.
pub struct Adapter {
    fdo: *mut DEVICE_OBJECT,
    pdo: *mut DEVICE_OBJECT,
    lower: *mut DEVICE_OBJECT,
    miniport: &'static Miniport,
    port: u32,
    dos_name: Name,
    /// The miniport's HwDeviceExtension (after its header); NULL before the first start.
    extension: AtomicPtr<c_void>,
    pnp: UnsafeCell<Pnp>,
    pub rundown: Rundown,
    pub worker: Worker,
    pub scanner: Scanner,
}

impl Adapter {
    /// The adapter whose miniport extension is `extension`.
    ///
    /// # Safety
    ///
    /// `extension` is a HwDeviceExtension this stand-in gave a miniport, of an adapter whose
    /// FDO has not been deleted.
    pub unsafe fn from_extension<'a>(extension: *mut c_void) -> &'a Self {
        let header = extension
            .cast::<u8>()
            .wrapping_sub(EXTENSION_HEADER)
            .cast::<*const Adapter>();
        // SAFETY: the header in front of every extension holds its adapter's address (`start`).
        let adapter = unsafe { header.read() };
        // SAFETY: that adapter lives as long as its FDO (the caller's promise).
        unsafe { &*adapter }
    }

    /// The adapter of an FDO this stand-in created.
    ///
    /// # Safety
    ///
    /// `fdo` is a live device object created by [`add_device`].
    pub unsafe fn from_fdo<'a>(fdo: *mut DEVICE_OBJECT) -> &'a Self {
        // SAFETY: a live device object (the caller's promise).
        let extension = unsafe { (*fdo.cast::<DeviceObject>()).DeviceExtension };
        // SAFETY: the FDO's extension holds an Adapter (`add_device`) until `delete`.
        unsafe { &*extension.cast::<Adapter>() }
    }

    /// The PnP-only state.
    ///
    /// # Safety
    ///
    /// Called only on the PnP path, which runs one IRP at a time, and the reference is not
    /// kept past the call that took it.
    #[allow(clippy::mut_from_ref)]
    unsafe fn pnp(&self) -> &mut Pnp {
        // SAFETY: the caller's promise: nothing else reaches `pnp` meanwhile.
        unsafe { &mut *self.pnp.get() }
    }

    pub fn miniport(&self) -> &'static Miniport {
        self.miniport
    }

    pub fn extension(&self) -> *mut c_void {
        self.extension.load(Ordering::Acquire)
    }

    pub fn lower(&self) -> *mut DEVICE_OBJECT {
        self.lower
    }

    /// IRP_MN_START_DEVICE, after the PDO has started: the miniport's find/initialize pair.
    ///
    /// # Safety
    ///
    /// PnP path only (as for [`Self::pnp`]).
    pub unsafe fn start(&self) -> i32 {
        if self.extension().is_null() {
            let size = EXTENSION_HEADER + self.miniport().extension_size as usize;
            let block = nt::allocate_zeroed(size, POOL_TAG);
            if block.is_null() {
                return nt::STATUS_INSUFFICIENT_RESOURCES;
            }
            // SAFETY: a fresh block of at least the header's 16 bytes; the adapter's address
            // stays valid while the FDO exists, and the block is freed before the FDO.
            unsafe {
                block
                    .cast::<*const Adapter>()
                    .write(core::ptr::from_ref(self))
            };
            self.extension.store(
                block.cast::<u8>().wrapping_add(EXTENSION_HEADER).cast(),
                Ordering::Release,
            );
        }
        let extension = self.extension();
        self.worker.start(extension);
        let mut config = PORT_CONFIGURATION_INFORMATION::zeroed();
        config.Length = size_of::<PORT_CONFIGURATION_INFORMATION>() as u32;
        config.MaximumTransferLength = SP_UNINITIALIZED_VALUE;
        config.NumberOfPhysicalBreaks = SP_UNINITIALIZED_VALUE;
        config.DeviceExtensionSize = self.miniport().extension_size;
        let mut again = 0u8;
        // SAFETY: the miniport's routine with the virtual prototype: HwContext and
        // LowerDevice are the PDO, BusInformation the FDO (as storsim passes them), no
        // argument string; config and again are locals.
        let found = unsafe {
            (self.miniport().routines.find_adapter)(
                extension,
                self.pdo.cast(),
                self.fdo.cast(),
                self.pdo.cast(),
                null_mut(),
                &mut config,
                &mut again,
            )
        };
        if found != SP_RETURN_FOUND {
            log!("HwFindAdapter returned %u: adapter not started", found);
            return nt::STATUS_UNSUCCESSFUL;
        }
        // SAFETY: the miniport's routine on its extension, after HwFindAdapter found it.
        if unsafe { (self.miniport().routines.initialize)(extension) } == 0 {
            log!("HwInitialize returned FALSE: adapter not started");
            return nt::STATUS_UNSUCCESSFUL;
        }
        let mut list = [0u8; 4 + SCSI_ADAPTER_CONTROL_MAX];
        list[..4].copy_from_slice(&(SCSI_ADAPTER_CONTROL_MAX as u32).to_le_bytes());
        self.miniport().adapter_control(
            extension,
            SCSI_QUERY_SUPPORTED_CONTROL_TYPES,
            list.as_mut_ptr().cast(),
        );
        // SAFETY: the PnP path (this function's contract).
        let pnp = unsafe { self.pnp() };
        pnp.supports_surprise_removal = list[4 + SCSI_ADAPTER_SURPRISE_REMOVAL as usize] != 0;
        pnp.supports_stop = list[4 + SCSI_STOP_ADAPTER as usize] != 0;
        // SAFETY: the PDO below this FDO, a static GUID, no reference string; the link string
        // is the adapter's own and freed at removal.
        let registered = unsafe {
            nt::IoRegisterDeviceInterface(
                self.pdo,
                &nt::GUID_DEVINTERFACE_STORAGEPORT,
                core::ptr::null(),
                &mut pnp.interface,
            )
        };
        let enabled = if registered == nt::STATUS_SUCCESS {
            // SAFETY: the link IoRegisterDeviceInterface just returned.
            unsafe { nt::IoSetDeviceInterfaceState(&pnp.interface, 1) }
        } else {
            registered
        };
        if enabled != nt::STATUS_SUCCESS {
            log!("GUID_DEVINTERFACE_STORAGEPORT not enabled: %#x", enabled);
        }
        pnp.state = PnpState::Started;
        self.rundown.open();
        self.scanner.start(self);
        log!(
            "adapter started: \\\\.\\Scsi%u:, MaximumTransferLength %#x, surprise removal %s",
            self.port,
            config.MaximumTransferLength,
            if pnp.supports_surprise_removal {
                c"supported".as_ptr()
            } else {
                c"not supported".as_ptr()
            }
        );
        nt::STATUS_SUCCESS
    }

    fn disable_interface(pnp: &Pnp) {
        if !pnp.interface.Buffer.is_null() {
            // SAFETY: the link registered at start, still owned by the adapter.
            unsafe { nt::IoSetDeviceInterfaceState(&pnp.interface, 0) };
        }
    }

    /// IRP_MN_SURPRISE_REMOVAL, before it goes down to the PDO (§6.7): no HwCompleteServiceIrp
    /// here; the miniport flushes its parked IRPs in ScsiAdapterSurpriseRemoval, or the rundown
    /// wait never ends.
    ///
    /// # Safety
    ///
    /// PnP path only (as for [`Self::pnp`]).
    pub unsafe fn surprise_remove(&self) {
        // SAFETY: the PnP path (this function's contract).
        let pnp = unsafe { self.pnp() };
        if pnp.state != PnpState::Started {
            return;
        }
        pnp.state = PnpState::SurpriseRemoved;
        Self::disable_interface(pnp);
        if pnp.supports_surprise_removal {
            self.miniport().adapter_control(
                self.extension(),
                SCSI_ADAPTER_SURPRISE_REMOVAL,
                null_mut(),
            );
        }
        self.rundown.close_and_wait();
        self.stop_adapter(pnp);
        log!("adapter \\\\.\\Scsi%u: surprise-removed", self.port);
    }

    /// The scan ended, ScsiStopAdapter (when the query said it is supported), the timers'
    /// thread ended.
    fn stop_adapter(&self, pnp: &Pnp) {
        self.scanner.stop();
        if pnp.supports_stop {
            self.miniport()
                .adapter_control(self.extension(), SCSI_STOP_ADAPTER, null_mut());
        }
        self.worker.stop();
    }

    /// IRP_MN_REMOVE_DEVICE, before it goes down to the PDO: HwCompleteServiceIrp first, then
    /// (unless a surprise removal did it) the rundown wait and the stop; then the miniport's
    /// resources. The FDO itself goes in [`delete`].
    ///
    /// # Safety
    ///
    /// PnP path only (as for [`Self::pnp`]).
    pub unsafe fn remove(&self) {
        let extension = self.extension();
        if !extension.is_null()
            && let Some(complete) = self.miniport().routines.complete_service_irp
        {
            // SAFETY: the miniport's routine on its live extension, at PASSIVE_LEVEL.
            unsafe { complete(extension) };
        }
        // SAFETY: the PnP path (this function's contract).
        let pnp = unsafe { self.pnp() };
        if pnp.state == PnpState::Started {
            Self::disable_interface(pnp);
            self.rundown.close_and_wait();
            self.stop_adapter(pnp);
        }
        self.scanner.stop();
        self.worker.stop();
        if !extension.is_null() {
            if let Some(free) = self.miniport().routines.free_adapter_resources {
                // SAFETY: the miniport's routine, last of all its calls.
                unsafe { free(extension) };
            }
            self.extension.store(null_mut(), Ordering::Release);
            let block = extension.cast::<u8>().wrapping_sub(EXTENSION_HEADER);
            // SAFETY: the block `start` allocated with this tag; nothing uses it any more.
            unsafe { nt_imports::ntoskrnl::ExFreePoolWithTag(block.cast(), POOL_TAG) };
        }
        log!("adapter \\\\.\\Scsi%u: removed", self.port);
    }

    /// After REMOVE_DEVICE went down: the link, the interface string, the FDO.
    ///
    /// # Safety
    ///
    /// Nothing refers to the adapter any more; it is gone when this returns.
    pub unsafe fn delete(&self) {
        let dos = self.dos_name.unicode();
        // SAFETY: the link `add_device` created.
        unsafe { nt::IoDeleteSymbolicLink(&dos) };
        // SAFETY: the PnP path (REMOVE_DEVICE, the caller's).
        let pnp = unsafe { self.pnp() };
        if !pnp.interface.Buffer.is_null() {
            // SAFETY: the string IoRegisterDeviceInterface allocated, freed once.
            unsafe { nt::RtlFreeUnicodeString(&mut pnp.interface) };
        }
        let (lower, fdo) = (self.lower, self.fdo);
        // SAFETY: the FDO is attached to `lower` (`add_device`).
        unsafe { nt::IoDetachDevice(lower) };
        // SAFETY: the FDO this adapter lives in; `self` is not used after this.
        unsafe { nt::IoDeleteDevice(fdo) };
    }
}

/// AddDevice: the FDO on the first free `\Device\RaidPortN`, its `\DosDevices\ScsiN:` link,
/// attached above the PDO.
///
/// # Safety
///
/// The PnP manager's call for a driver that called StorPortInitialize.
pub unsafe extern "system" fn add_device(
    driver: *mut DRIVER_OBJECT,
    pdo: *mut DEVICE_OBJECT,
) -> i32 {
    let Some(miniport) = crate::miniport::lookup(driver) else {
        return nt::STATUS_UNSUCCESSFUL;
    };
    let mut fdo = null_mut();
    let mut port = 0;
    loop {
        let name = Name::new(r"\Device\RaidPort", port, "");
        let unicode = name.unicode();
        // SAFETY: a named, secure-open controller device with room for an Adapter.
        let status = unsafe {
            nt::IoCreateDevice(
                driver,
                size_of::<Adapter>() as u32,
                &unicode,
                nt::FILE_DEVICE_CONTROLLER,
                nt::FILE_DEVICE_SECURE_OPEN,
                0,
                &mut fdo,
            )
        };
        match status {
            nt::STATUS_SUCCESS => break,
            nt::STATUS_OBJECT_NAME_COLLISION if port < 64 => port += 1,
            other => return other,
        }
    }
    let dos_name = Name::new(r"\DosDevices\Scsi", port, ":");
    let device_name = Name::new(r"\Device\RaidPort", port, "");
    // SAFETY: both names are live locals; the link is deleted with the adapter.
    let linked = unsafe { nt::IoCreateSymbolicLink(&dos_name.unicode(), &device_name.unicode()) };
    // SAFETY: the new FDO goes on top of the PDO's stack.
    let lower = unsafe { nt::IoAttachDeviceToDeviceStack(fdo, pdo) };
    let adapter = Adapter {
        fdo,
        pdo,
        lower,
        miniport,
        port,
        dos_name,
        extension: AtomicPtr::new(null_mut()),
        pnp: UnsafeCell::new(Pnp {
            state: PnpState::Added,
            interface: UNICODE_STRING {
                Length: 0,
                MaximumLength: 0,
                Buffer: null_mut(),
            },
            supports_surprise_removal: false,
            supports_stop: false,
        }),
        rundown: Rundown::new(),
        worker: Worker::new(),
        scanner: Scanner::new(),
    };
    let object = fdo.cast::<DeviceObject>();
    // SAFETY: the FDO IoCreateDevice just created.
    let extension = unsafe { (*object).DeviceExtension };
    // SAFETY: the extension has room for an Adapter (IoCreateDevice above) and nothing else
    // uses it yet.
    unsafe { extension.cast::<Adapter>().write(adapter) };
    // SAFETY: the new FDO; clearing DO_DEVICE_INITIALIZING lets opens through.
    unsafe { (*object).Flags &= !nt::DO_DEVICE_INITIALIZING };
    log!(
        "AddDevice: \\Device\\RaidPort%u, link %s",
        port,
        if linked == nt::STATUS_SUCCESS {
            c"created".as_ptr()
        } else {
            c"FAILED".as_ptr()
        }
    );
    nt::STATUS_SUCCESS
}
