//! DriverEntry and the Storport callback shims.
//!
//! Each shim converts what Storport passes, calls one safe method, and converts back. The
//! `# Safety` section of each lists what Storport promises when it calls it.

use core::cell::UnsafeCell;
use core::mem::size_of;
use core::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use crate::adapter::{Adapter, Bus, Control, GraceTimer, State, Timer};
use crate::irp::{Irp, cancel_context};
use crate::log::{ERROR, TRACE, WARNING, log};
use crate::port;
use crate::srb::Srb;
use crate::sync::SpinLock;
use nt_imports::inline::{
    StorPortBusChangeDetected, StorPortFreeTimer, StorPortInitializeDpc, StorPortInitializeTimer,
    StorPortIssueDpc, StorPortRequestTimer, StorPortRequestTimerCall,
};
use nt_imports::ntoskrnl::IoReleaseCancelSpinLock;
use nt_imports::storport::{
    StorPortAllocateRegistryBuffer, StorPortFreeRegistryBuffer, StorPortInitialize,
    StorPortRegistryRead, StorPortSetDeviceQueueDepth,
};
use storport_abi::{
    BOOLEAN, DEVICE_OBJECT, DRIVER_OBJECT, HW_INITIALIZATION_DATA, INTERFACE_TYPE_INTERNAL, IRP,
    MINIPORT_REG_DWORD, NTSTATUS, PORT_CONFIGURATION_INFORMATION, PVOID,
    SCSI_ADAPTER_CONTROL_SUCCESS, SCSI_ADAPTER_CONTROL_UNSUCCESSFUL, SCSI_ADAPTER_SURPRISE_REMOVAL,
    SCSI_QUERY_SUPPORTED_CONTROL_TYPES, SCSI_REQUEST_BLOCK, SCSI_RESTART_ADAPTER,
    SCSI_STOP_ADAPTER, SCSI_SUPPORTED_CONTROL_TYPE_LIST, SP_RETURN_FOUND, STOR_DPC,
    STOR_FEATURE_VIRTUAL_MINIPORT, STOR_MAP_ALL_BUFFERS_INCLUDING_READ_WRITE, TRUE, UNICODE_STRING,
};

type WinAdapter = Adapter<Irp, Srb, SpinLock<State<Irp, Srb>>>;

/// The HwDeviceExtension: the whole adapter lives in the memory Storport allocates for it.
#[repr(C)]
struct Extension {
    adapter: WinAdapter,
    /// Delivers a DiscoveryComplete outside the StartIo lock HwStorTimer runs under, and applies
    /// the stop / restart controls HwAdapterControl records at DIRQL.
    delivery_dpc: UnsafeCell<STOR_DPC>,
    /// The DPC was initialized (once per extension: re-initializing a queued DPC would corrupt
    /// the DPC queue, and a stop's DPC may still be queued when the next start comes).
    dpc_initialized: AtomicBool,
    /// The grace timer's handle (StorPortInitializeTimer), null if there is none: created at
    /// the extension's first HwFindAdapter, freed by HwFreeAdapterResources.
    grace_timer: AtomicPtr<core::ffi::c_void>,
}

const _: () = assert!(size_of::<Extension>() < u32::MAX as usize);

/// revcall's bug-check code ('RVCL'): a panic in the driver stops the machine with it.
pub const REVCALL_BUGCHECK: u32 = 0x5256_434C;

/// The registry value (REG_DWORD under `Services\revcall\Parameters\Device`) that allows FIRE.
const ENABLE_FIRE_INJECTION: &core::ffi::CStr = c"EnableFireInjection";

/// The extension behind a HwDeviceExtension pointer.
///
/// # Safety
///
/// `ext` is a HwDeviceExtension Storport allocated for this driver: `size_of::<Extension>()`
/// bytes (DeviceExtensionSize below), 16-aligned, zeroed when first allocated and kept, never
/// moved, until the adapter is removed. All-zero bytes are a valid `Extension` (the
/// invariants of `State` and `SpinLock`; `STOR_DPC` is opaque bytes), and it has no `Drop`,
/// so it needs no other setup.
unsafe fn extension<'a>(ext: PVOID) -> &'a Extension {
    debug_assert!(ext.cast::<Extension>().is_aligned());
    // SAFETY: the caller's contract; the adapter's mutable parts are behind its lock and the
    // DPC is only ever handed to Storport by pointer.
    unsafe { &*ext.cast::<Extension>() }
}

/// The adapter in a HwDeviceExtension.
///
/// # Safety
///
/// As for [`extension`].
unsafe fn adapter<'a>(ext: PVOID) -> &'a WinAdapter {
    // SAFETY: the caller's contract is `extension`'s.
    &unsafe { extension(ext) }.adapter
}

/// What this adapter asks of Storport: its timer (`RequestTimerCall`) and bus rescans.
struct Storport(PVOID);

impl Timer for Storport {
    fn arm(&self, delay_us: u32) {
        // SAFETY: `self.0` is the HwDeviceExtension of the adapter whose callback made this.
        unsafe { StorPortRequestTimerCall(self.0, hw_timer, delay_us) };
    }

    fn cancel(&self) {
        // SAFETY: as in `arm`; a zero interval cancels the pending call.
        unsafe { StorPortRequestTimerCall(self.0, hw_timer, 0) };
    }
}

impl GraceTimer for Storport {
    fn arm(&self) -> bool {
        // SAFETY: `self.0` is the HwDeviceExtension of the adapter whose callback made this.
        let handle = unsafe { extension(self.0) }
            .grace_timer
            .load(Ordering::Acquire);
        // SAFETY: the handle came from StorPortInitializeTimer for this adapter and is freed
        // only by HwFreeAdapterResources, after every callback that arms it; a second of delay,
        // with a tenth of it tolerated for coalescing.
        !handle.is_null()
            && unsafe {
                StorPortRequestTimer(
                    self.0,
                    handle,
                    hw_grace_tick,
                    core::ptr::null_mut(),
                    1_000_000,
                    100_000,
                )
            } == storport_abi::STOR_STATUS_SUCCESS
    }
}

impl Bus for Storport {
    fn changed(&self) {
        // SAFETY: `self.0` is the HwDeviceExtension of the adapter whose callback made this;
        // the LUNs live on bus 0.
        unsafe { StorPortBusChangeDetected(self.0, 0) };
    }

    fn set_queue_depth(&self, lun: u8, depth: u32) {
        // SAFETY: as in `changed`; HwStartIo calls this, at ≤ DISPATCH_LEVEL, right after the
        // LUN's INQUIRY, with a depth of 1..=250 (LUN_CREATE's range).
        unsafe { StorPortSetDeviceQueueDepth(self.0, 0, 0, lun, depth) };
    }
}

/// The driver's entry point.
///
/// # Safety
///
/// Called once by the I/O manager at PASSIVE_LEVEL with its driver object and registry path.
#[unsafe(export_name = "DriverEntry")]
pub unsafe extern "system" fn driver_entry(
    driver: *mut DRIVER_OBJECT,
    registry_path: *mut UNICODE_STRING,
) -> NTSTATUS {
    // HW_INITIALIZATION_DATA with STOR_FEATURE_VIRTUAL_MINIPORT rather than the older
    // VIRTUAL_HW_INITIALIZATION_DATA: the DDI recommends it for Windows 8 and later, which the
    // service-IRP channel requires anyway, and it keeps the Win8+ fields at their real offsets.
    let mut init = HW_INITIALIZATION_DATA::zeroed();
    init.HwInitializationDataSize = size_of::<HW_INITIALIZATION_DATA>() as u32;
    init.AdapterInterfaceType = INTERFACE_TYPE_INTERNAL;
    init.FeatureSupport = STOR_FEATURE_VIRTUAL_MINIPORT;
    init.DeviceExtensionSize = size_of::<Extension>() as u32;
    init.MapBuffers = STOR_MAP_ALL_BUFFERS_INCLUDING_READ_WRITE;
    init.TaggedQueuing = TRUE;
    init.AutoRequestSense = TRUE;
    init.MultipleRequestPerLu = TRUE;
    init.HwFindAdapter = Some(hw_find_adapter);
    init.HwInitialize = Some(hw_initialize);
    init.HwStartIo = Some(hw_start_io);
    init.HwResetBus = Some(hw_reset_bus);
    init.HwAdapterControl = Some(hw_adapter_control);
    init.HwFreeAdapterResources = Some(hw_free_adapter_resources);
    init.HwProcessServiceRequest = Some(hw_process_service_request);
    init.HwCompleteServiceIrp = Some(hw_complete_service_irp);
    // SAFETY: the arguments are the ones the I/O manager gave DriverEntry; Storport copies
    // `init` and does not keep the pointer.
    let status =
        unsafe { StorPortInitialize(driver, registry_path, &mut init, core::ptr::null_mut()) };
    if status != 0 {
        log!(ERROR, "StorPortInitialize failed: 0x%x", status);
    }
    status as NTSTATUS
}

/// Reads `EnableFireInjection`; FIRE stays allowed when the value is absent.
///
/// Without a registry buffer (low resources) the value cannot be read at all, and an
/// administrator's 0 must not turn into "enabled": FIRE, a test hook, then fails closed
/// (STATUS_NOT_SUPPORTED) until the next start.
///
/// # Safety
///
/// PASSIVE_LEVEL, `ext` the adapter's HwDeviceExtension (HwFindAdapter's context).
unsafe fn fire_injection_enabled(ext: PVOID) -> bool {
    let mut capacity = size_of::<u32>() as u32;
    // SAFETY: the caller's contract is the DDI's.
    let buffer = unsafe { StorPortAllocateRegistryBuffer(ext, &mut capacity) };
    if buffer.is_null() {
        log!(
            WARNING,
            "no registry buffer; FIRE disabled until the next start"
        );
        return false;
    }
    let mut length = capacity;
    let found = (capacity as usize) >= size_of::<u32>()
        // SAFETY: `buffer` has `capacity` (>= 4) bytes from StorPortAllocateRegistryBuffer;
        // the name is NUL-terminated; Global = 1 reads Parameters\Device.
        && unsafe {
            StorPortRegistryRead(
                ext,
                ENABLE_FIRE_INJECTION.as_ptr().cast(),
                1,
                MINIPORT_REG_DWORD,
                buffer,
                &mut length,
            )
        } != 0;
    let value = if found && length as usize == size_of::<u32>() {
        // SAFETY: Storport wrote `length` == 4 bytes into the buffer.
        unsafe { buffer.cast::<u32>().read_unaligned() }
    } else {
        1
    };
    // SAFETY: the buffer came from StorPortAllocateRegistryBuffer and is freed once, whatever
    // its size.
    unsafe { StorPortFreeRegistryBuffer(ext, buffer) };
    value != 0
}

/// HwStorFindAdapter (virtual prototype).
///
/// # Safety
///
/// Storport calls it at PASSIVE_LEVEL with this adapter's HwDeviceExtension and a writable
/// PORT_CONFIGURATION_INFORMATION.
unsafe extern "win64" fn hw_find_adapter(
    ext: PVOID,
    _hw_context: PVOID,
    _bus_information: PVOID,
    _lower_device: PVOID,
    _argument_string: *mut i8,
    config: *mut PORT_CONFIGURATION_INFORMATION,
    _again: *mut BOOLEAN,
) -> u32 {
    // SAFETY: Storport passes a valid, exclusive configuration for the call's duration.
    port::configure(unsafe { &mut *config });
    // SAFETY: PASSIVE_LEVEL and this adapter's extension, per this function's contract.
    let fire = unsafe { fire_injection_enabled(ext) };
    // SAFETY: this adapter's HwDeviceExtension.
    let extension = unsafe { extension(ext) };
    extension.adapter.configure(fire);
    if !extension.dpc_initialized.swap(true, Ordering::AcqRel) {
        // SAFETY: the DPC lives in this adapter's extension, which outlives it; this is the
        // extension's first HwFindAdapter, so the DPC was never initialized or queued.
        unsafe { StorPortInitializeDpc(ext, extension.delivery_dpc.get(), hw_delivery_dpc) };
        let mut handle = core::ptr::null_mut();
        // SAFETY: PASSIVE_LEVEL, this adapter's extension, a writable handle.
        if unsafe { StorPortInitializeTimer(ext, &mut handle) } == storport_abi::STOR_STATUS_SUCCESS
        {
            extension.grace_timer.store(handle, Ordering::Release);
        } else {
            log!(
                WARNING,
                "no grace timer: a LUN whose server dies fails its I/O at once"
            );
        }
    }
    log!(
        TRACE,
        "adapter found, FIRE %s",
        if fire {
            c"enabled".as_ptr()
        } else {
            c"disabled".as_ptr()
        }
    );
    SP_RETURN_FOUND
}

/// HwStorInitialize.
///
/// # Safety
///
/// Storport calls it once per start with this adapter's HwDeviceExtension.
unsafe extern "win64" fn hw_initialize(ext: PVOID) -> BOOLEAN {
    // SAFETY: this adapter's HwDeviceExtension.
    unsafe { adapter(ext) }.start(&Storport(ext));
    TRUE
}

/// HwStorStartIo: an SRB is answered at once (`disk`) or queued for the LUN's server; either
/// way the adapter completes it, with no lock of its own held.
///
/// # Safety
///
/// Storport passes this adapter's extension and an SRB it owns until we complete it, at
/// DISPATCH_LEVEL or below, with no lock held (virtual miniport, DISK.md §2.3).
unsafe extern "win64" fn hw_start_io(ext: PVOID, srb: *mut SCSI_REQUEST_BLOCK) -> BOOLEAN {
    // SAFETY: the SRB of this call, handed over: it is not touched here again.
    if let Some(srb) = unsafe { Srb::new(ext, srb) } {
        // SAFETY: this adapter's HwDeviceExtension.
        unsafe { adapter(ext) }.start_io(srb, &Storport(ext));
    }
    TRUE
}

/// HwStorResetBus: every SRB the servers hold or that waits for them completes
/// SRB_STATUS_BUS_RESET (DATAPATH.md §4), and waiters hear of it.
///
/// # Safety
///
/// Storport passes this adapter's extension, at DISPATCH_LEVEL with its StartIo lock held,
/// where completing SRBs is allowed.
unsafe extern "win64" fn hw_reset_bus(ext: PVOID, _path_id: u32) -> BOOLEAN {
    // SAFETY: this adapter's HwDeviceExtension.
    let extension = unsafe { extension(ext) };
    extension
        .adapter
        .reset(None, storport_abi::srb_status::BUS_RESET);
    // The Reset event reaches waiters from the DPC: no IRP completes under the StartIo lock.
    // SAFETY: HwFindAdapter initialized this DPC for this adapter.
    unsafe { StorPortIssueDpc(ext, extension.delivery_dpc.get()) };
    TRUE
}

/// HwStorAdapterControl.
///
/// # Safety
///
/// Storport passes this adapter's extension and the `Parameters` the control type defines
/// (a SCSI_SUPPORTED_CONTROL_TYPE_LIST for ScsiQuerySupportedControlTypes); it calls only the
/// types reported supported, ScsiAdapterSurpriseRemoval below DISPATCH_LEVEL, and
/// ScsiStopAdapter / ScsiRestartAdapter at any IRQL up to DIRQL.
unsafe extern "win64" fn hw_adapter_control(
    ext: PVOID,
    control_type: u32,
    parameters: PVOID,
) -> u32 {
    // SAFETY: this adapter's HwDeviceExtension.
    let extension = unsafe { extension(ext) };
    let adapter = &extension.adapter;
    match control_type {
        SCSI_QUERY_SUPPORTED_CONTROL_TYPES => {
            let list = parameters.cast::<SCSI_SUPPORTED_CONTROL_TYPE_LIST>();
            // SAFETY: for this control type `Parameters` is a valid list header.
            let max = unsafe { (*list).MaxControlType } as usize;
            // SAFETY: as above; this only forms the address of the entries.
            let first = unsafe { &raw mut (*list).SupportedTypeList }.cast::<u8>();
            // SAFETY: Storport allocates MaxControlType entries after the header, ours to
            // write for the duration of this call.
            let entries = unsafe { core::slice::from_raw_parts_mut(first, max) };
            port::report_supported(entries);
        }
        // Possibly at DIRQL with the interrupt lock held (the DDI page's reading): no spin lock,
        // no timer, no completion here; record the control and let the DPC apply it.
        SCSI_STOP_ADAPTER | SCSI_RESTART_ADAPTER => {
            let control = if control_type == SCSI_STOP_ADAPTER {
                Control::Stop
            } else {
                Control::Restart
            };
            if !adapter.request_control(control) {
                return SCSI_ADAPTER_CONTROL_UNSUCCESSFUL;
            }
            // SAFETY: this adapter's extension and the DPC its first HwFindAdapter initialized
            // (Storport sends no stop or restart before that); KeInsertQueueDpc, which this
            // wraps, may be called at any IRQL, and an already queued DPC applies this too.
            unsafe { StorPortIssueDpc(ext, extension.delivery_dpc.get()) };
        }
        SCSI_ADAPTER_SURPRISE_REMOVAL => {
            log!(TRACE, "surprise removal: flushing parked requests");
            adapter.surprise_remove(&Storport(ext));
        }
        _ => return SCSI_ADAPTER_CONTROL_UNSUCCESSFUL,
    }
    SCSI_ADAPTER_CONTROL_SUCCESS
}

/// HwStorFreeAdapterResources: the adapter's last callback. Nothing is allocated outside
/// the extension, which Storport frees.
///
/// # Safety
///
/// PASSIVE_LEVEL, this adapter's extension, after the removal rundown completed.
unsafe extern "win64" fn hw_free_adapter_resources(ext: PVOID) {
    // SAFETY: this adapter's HwDeviceExtension, still valid during this last call.
    let extension = unsafe { extension(ext) };
    let timer = extension
        .grace_timer
        .swap(core::ptr::null_mut(), Ordering::AcqRel);
    if !timer.is_null() {
        // SAFETY: the handle StorPortInitializeTimer gave this adapter, freed once (swapped
        // out); nothing arms it after the removal (every session has ended).
        unsafe { StorPortFreeTimer(ext, timer) };
    }
    let stats = extension.adapter.stats();
    if stats.parked_now != 0 {
        log!(ERROR, "freed with %I64u requests parked", stats.parked_now);
    }
}

/// HwStorProcessServiceRequest: a caller's IOCTL_MINIPORT_PROCESS_SERVICE_IRP.
///
/// # Safety
///
/// Storport calls it at PASSIVE_LEVEL in the requester's thread with this adapter's extension
/// and an IRP it has marked pending and hands over: it must be completed exactly once, with
/// StorPortCompleteServiceIrp.
unsafe extern "win64" fn hw_process_service_request(ext: PVOID, irp: PVOID) {
    // SAFETY: Storport hands us this adapter's service IRP (this function's contract).
    let Some(irp) = (unsafe { Irp::from_service_request(irp.cast::<IRP>(), ext) }) else {
        log!(ERROR, "HwProcessServiceRequest without an IRP");
        return;
    };
    // SAFETY: this adapter's HwDeviceExtension.
    unsafe { adapter(ext) }.process(irp, &Storport(ext));
}

/// HwStorCompleteServiceIrp: the adapter is being removed.
///
/// # Safety
///
/// Storport calls it at PASSIVE_LEVEL, holding no spin lock, with this adapter's extension.
unsafe extern "win64" fn hw_complete_service_irp(ext: PVOID) {
    log!(TRACE, "removal: completing parked requests");
    // SAFETY: this adapter's HwDeviceExtension.
    unsafe { adapter(ext) }.remove(&Storport(ext));
}

/// HwStorTimer (RequestTimerCall): a DISCOVER completes. Storport holds its StartIo spin lock
/// around this call, so the event is only published here and delivered by a DPC.
///
/// # Safety
///
/// Storport calls it at DISPATCH_LEVEL with this adapter's extension.
unsafe extern "win64" fn hw_timer(ext: PVOID) {
    // SAFETY: this adapter's HwDeviceExtension.
    let extension = unsafe { extension(ext) };
    if extension.adapter.timer_fired() {
        // SAFETY: HwFindAdapter initialized this DPC for this adapter. Already queued is
        // fine: one run delivers to every waiter.
        unsafe { StorPortIssueDpc(ext, extension.delivery_dpc.get()) };
    }
}

/// HwStorDpcRoutine: applies recorded stop / restart controls and delivers published events,
/// with no Storport lock held.
///
/// # Safety
///
/// Storport runs it at DISPATCH_LEVEL, holding none of its locks, with this adapter's extension.
unsafe extern "win64" fn hw_delivery_dpc(
    _dpc: *mut STOR_DPC,
    ext: PVOID,
    _argument1: PVOID,
    _argument2: PVOID,
) {
    // SAFETY: this adapter's HwDeviceExtension.
    let adapter = unsafe { adapter(ext) };
    adapter.apply_controls(&Storport(ext));
    adapter.settle();
    adapter.deliver();
}

/// HwStorTimerEx of the grace timer: a second of a LUN's grace period has passed. It may run
/// under Storport's StartIo lock, so what a grace period's end completes is left to the DPC.
///
/// # Safety
///
/// Storport calls it at DISPATCH_LEVEL with this adapter's extension and the null context
/// StorPortRequestTimer was given.
unsafe extern "win64" fn hw_grace_tick(ext: PVOID, _context: PVOID) {
    // SAFETY: this adapter's HwDeviceExtension.
    let extension = unsafe { extension(ext) };
    let adapter = &extension.adapter;
    let (again, mut orphaned) = adapter.grace_tick();
    if again && !GraceTimer::arm(&Storport(ext)) {
        log!(
            ERROR,
            "the grace timer could not be re-armed: grace periods end now"
        );
        orphaned |= adapter.end_grace();
    }
    if orphaned {
        // SAFETY: HwFindAdapter initialized this DPC for this adapter.
        unsafe { StorPortIssueDpc(ext, extension.delivery_dpc.get()) };
    }
}

/// The cancel routine of a parked service IRP.
///
/// # Safety
///
/// IoCancelIrp calls it at DISPATCH_LEVEL holding the cancel spin lock, for an IRP whose
/// routine revcall armed (so its DriverContext names the adapter and slot). `device` is
/// Storport's FDO, not ours, and is not used.
pub unsafe extern "win64" fn hw_cancel_service_irp(_device: *mut DEVICE_OBJECT, irp: *mut IRP) {
    // SAFETY: the IRP is live until completed, which only this routine can do now.
    let cancel_irql = unsafe { (*irp).CancelIrql };
    // SAFETY: IoCancelIrp holds the cancel spin lock for us; release it first, as documented.
    unsafe { IoReleaseCancelSpinLock(cancel_irql) };
    // SAFETY: our routine is running for this IRP, so arm_cancel wrote its context.
    let (ext, slot) = unsafe { cancel_context(irp) };
    // SAFETY: the context names the HwDeviceExtension of the IRP's adapter, which stays
    // valid: the IRP holds Storport's removal rundown until it is completed.
    if !unsafe { adapter(ext) }.cancel(slot, irp as usize, &Storport(ext)) {
        log!(
            ERROR,
            "cancel routine found no parked IRP %p in slot %u",
            irp,
            u32::from(slot)
        );
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    let (file, line) = info.location().map_or(("", 0), |l| (l.file(), l.line()));
    log!(
        ERROR,
        "panic at %.*s:%u",
        file.len() as u32,
        file.as_ptr(),
        line
    );
    nt_imports::bug_check_on_panic(REVCALL_BUGCHECK, info)
}

// The precompiled core for this target references `_fltused` and `__CxxFrameHandler3`.
// Defined here in assembly rather than as Rust items so they stay out of the export table
// (every `#[no_mangle]` item of a cdylib is exported); the handler is never reached with
// panic=abort, and traps if it ever is. With the `wdk` feature wdk-sys defines both (as
// exported `#[no_mangle]` items), and a second definition would not link.
#[cfg(not(feature = "wdk"))]
core::arch::global_asm!(
    ".section .rdata,\"dr\"",
    ".globl _fltused",
    "_fltused:",
    ".long 0",
    ".text",
    ".globl __CxxFrameHandler3",
    "__CxxFrameHandler3:",
    "ud2",
);
