//! Loading a driver into the running kernel: map it (loader), bind it to the emulated exports,
//! run DriverEntry; and the fault path that turns a crash in driver code into a bug check.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use storport_abi::status::Named;

use crate::cpu::{self, Fault, PASSIVE_LEVEL};
use crate::exports;
use crate::io::objects::DriverObject;
use crate::kernel::Kernel;
use crate::loader::{Image, LoadError};
use crate::machine::Running;
use crate::pool::{FaultClass, Owner};
use crate::verifier::{self, BugCheck, Code, rules};

/// Why a driver did not get as far as a started adapter.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    // The reasons are part of the message, not error sources: a report that prints the chain
    // (anyhow's `{:#}`) would say them twice.
    #[error("cannot read {path}: {reason}")]
    Read {
        path: String,
        reason: std::io::Error,
    },
    #[error("Windows would refuse to load {name}: {reason}")]
    Load { name: String, reason: LoadError },
    #[error("DriverEntry of {name} failed with {}", Named(*status))]
    DriverEntry { name: String, status: u32 },
    #[error("PnP start failed: {0}")]
    Start(#[from] crate::port::StartError),
}

/// A loaded driver image.
pub struct Driver {
    image: Image,
}

impl Driver {
    pub fn image(&self) -> &Image {
        &self.image
    }
}

// Where the loaded drivers live, for the fault path (which cannot wait for locks): base,
// size and name of each image, in load order.
static IMAGES: Mutex<Vec<(usize, usize, String)>> = Mutex::new(Vec::new());

/// Reads and maps the `.sys` at `path`, binds it to the emulated exports, and records it for
/// the fault path.
fn map(kernel: &Kernel, path: &std::path::Path) -> Result<(Image, String), RunError> {
    let name = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let bytes = std::fs::read(path).map_err(|reason| RunError::Read {
        path: path.display().to_string(),
        reason,
    })?;
    let image = Image::load(&bytes, &name, &exports::resolve).map_err(|reason| RunError::Load {
        name: name.clone(),
        reason,
    })?;
    IMAGES.lock().unwrap_or_else(|p| p.into_inner()).push((
        image.base(),
        image.size(),
        name.clone(),
    ));
    cpu::set_fatal_hook(on_fault);
    kernel.note(format!(
        "loaded {name} at {:#x} ({} bytes, {} imports bound, relocated from its ImageBase)",
        image.base(),
        image.size(),
        image.imports().len()
    ));
    Ok((image, name))
}

/// Runs the image's DriverEntry at PASSIVE_LEVEL with `driver_object` and `registry`.
fn driver_entry(
    kernel: &Kernel,
    image: &Image,
    name: &str,
    driver_object: *mut storport_abi::DRIVER_OBJECT,
    registry: *mut storport_abi::UNICODE_STRING,
) -> Result<(), RunError> {
    let entry = image.entry();
    // SAFETY: the loader mapped, relocated and bound the image; its entry point is
    // DriverEntry(PDRIVER_OBJECT, PUNICODE_STRING) -> NTSTATUS in the win64 convention.
    let driver_entry: unsafe extern "win64" fn(
        *mut std::ffi::c_void,
        *mut std::ffi::c_void,
    ) -> i32 = unsafe { std::mem::transmute(entry) };
    let status = kernel
        .machine()
        .call_driver("DriverEntry", PASSIVE_LEVEL, || {
            // SAFETY: DriverEntry's contract: the driver object and registry path, PASSIVE_LEVEL.
            unsafe { driver_entry(driver_object.cast(), registry.cast()) }
        }) as u32;
    kernel.note(format!("DriverEntry of {name} → {}", Named(status)));
    if status != 0 {
        return Err(RunError::DriverEntry {
            name: name.to_owned(),
            status,
        });
    }
    Ok(())
}

/// Loads the miniport `.sys` at `path` into `kernel` and runs its DriverEntry at PASSIVE_LEVEL.
pub fn load(kernel: &Arc<Kernel>, path: &std::path::Path) -> Result<Driver, RunError> {
    let (image, name) = map(kernel, path)?;
    let objects = kernel.io().objects();
    driver_entry(
        kernel,
        &image,
        &name,
        objects.driver(),
        objects.registry_path(),
    )?;
    Ok(Driver { image })
}

/// A driver loaded above the adapter (a kernel-mode caller of its service IOCTL), with its
/// own driver object. [`UpperDriver::unload`] runs its DriverUnload and Driver Verifier's
/// checks.
pub struct UpperDriver {
    image: Image,
    name: String,
    object: DriverObject,
}

/// Loads the `.sys` at `path` as the driver of service `service` above the adapter and runs
/// its DriverEntry, as its code.
pub fn load_upper(
    kernel: &Arc<Kernel>,
    path: &std::path::Path,
    service: &str,
) -> Result<UpperDriver, RunError> {
    let (image, name) = map(kernel, path)?;
    let object = DriverObject::new(service);
    let entered = Running::Upper.enter(|| {
        driver_entry(
            kernel,
            &image,
            &name,
            object.as_ptr(),
            object.registry_path(),
        )
    });
    if let Err(error) = entered {
        // Windows unmaps a driver whose DriverEntry failed without calling DriverUnload: what
        // it allocated or sent must be gone already.
        check_gone(kernel, &name);
        return Err(error);
    }
    Ok(UpperDriver {
        image,
        name,
        object,
    })
}

impl UpperDriver {
    /// The address of the image's export `name` (data a test reads, like a debugger would).
    pub fn export(&self, name: &str) -> Option<usize> {
        self.image.export(name)
    }

    /// Runs DriverUnload at PASSIVE_LEVEL, then reports what Driver Verifier finds left: its
    /// IRPs still with the adapter or work items still queued (0xCE), IRPs never freed and
    /// pool outstanding (0xC4/0x62), references never dropped.
    pub fn unload(&self, kernel: &Kernel) {
        let Some(unload) = self.object.unload_routine() else {
            kernel.note(format!(
                "{} has no DriverUnload: Windows keeps it loaded",
                self.name
            ));
            return;
        };
        Running::Upper.enter(|| {
            kernel
                .machine()
                .call_driver("DriverUnload", PASSIVE_LEVEL, || {
                    // SAFETY: DRIVER_UNLOAD's contract: the driver's own object, PASSIVE_LEVEL.
                    unsafe { unload(self.object.as_ptr()) }
                })
        });
        kernel.note(format!("DriverUnload of {} returned", self.name));
        check_gone(kernel, &self.name);
    }
}

/// What Driver Verifier checks when an upper driver's image goes away: IRPs never freed and
/// pool outstanding (0xC4/0x62), references never dropped, and — a bug check — its IRPs still
/// with the adapter or work items still queued (0xCE).
fn check_gone(kernel: &Kernel, name: &str) {
    let machine = kernel.machine();
    // A work item's routine may still be returning (its queued reference keeps the image).
    kernel.io().work().settle(Duration::from_secs(1));
    let left = kernel.io().leftovers();
    let queued = kernel.io().work().queued(Running::Upper);
    let blocks = machine.pool().outstanding(Owner::UpperDriver);
    if left.unfreed + blocks.len() > 0 {
        let bytes: usize = blocks.iter().map(|b| b.size).sum();
        machine.report(BugCheck::new(
            Code::DriverVerifierDetectedViolation,
            [0x62, 0, bytes as u64, (blocks.len() + left.unfreed) as u64],
            format!(
                "{name} unloaded with {} IRP(s) from IoAllocateIrp not freed and {} pool allocation(s) outstanding",
                left.unfreed,
                blocks.len()
            ),
        ));
    }
    if left.references > 0 {
        machine.report(BugCheck::new(
            Code::DriverVerifierDetectedViolation,
            [rules::REFERENCE_LEAKED, left.references as u64, 0, 0],
            format!(
                "{name} unloaded holding {} FILE_OBJECT reference(s) from IoGetDeviceObjectPointer (ObDereferenceObject never called)",
                left.references
            ),
        ));
    }
    if left.pending + queued > 0 {
        // Windows bug-checks here: what is pending would call into the unloaded image.
        machine.stop(BugCheck::new(
            Code::DriverUnloadedWithoutCancellingPendingOperations,
            [left.pending as u64, queued as u64, 0, 0],
            format!(
                "{name} unloaded with {} IRP(s) still at the adapter and {queued} work item(s) queued: their completion would run in unloaded code",
                left.pending
            ),
        ));
    }
}

/// `revcall.sys+0x1234` for an address inside a loaded driver.
fn describe(address: usize) -> String {
    let inside = IMAGES.try_lock().ok().and_then(|images| {
        images
            .iter()
            .rev()
            .find(|(base, size, _)| (*base..base + size).contains(&address))
            .map(|(base, _, name)| format!("{name}+{:#x}", address - base))
    });
    inside.unwrap_or_else(|| format!("{address:#x} (outside the drivers)"))
}

/// The fatal hook: a fault in driver code is a bug check. Explains the address with the pool
/// (guard page → overrun, quarantine → use after free/completion) and ends the run.
fn on_fault(fault: &Fault) -> ! {
    let Some(kernel) = crate::kernel::current() else {
        eprintln!("storsim: fault at {:#x} outside a session", fault.rip);
        std::process::exit(70);
    };
    let at = describe(fault.rip);
    let access = match fault.write {
        Some(true) => "write",
        Some(false) => "read",
        None => "access",
    };
    // For SIGILL si_addr is the instruction, not data: nothing for the pool to explain.
    let class = (fault.signal != libc::SIGILL)
        .then(|| kernel.machine().pool().classify(fault.addr))
        .flatten();
    let bug = match class {
        Some(FaultClass::Overrun { block, offset }) => BugCheck::new(
            Code::PageFaultBeyondEndOfAllocation,
            [
                fault.addr as u64,
                u64::from(fault.write == Some(true)),
                fault.rip as u64,
                0,
            ],
            format!(
                "{access} at {at}: byte {offset} of a {}-byte {:?} block, past its end (special pool guard page)",
                block.size, block.owner
            ),
        ),
        Some(FaultClass::Underrun { block, offset }) => BugCheck::new(
            Code::SpecialPoolDetectedMemoryCorruption,
            [fault.addr as u64, block.size as u64, offset as u64, 0x21],
            format!(
                "{access} at {at}: {} bytes before a {:?} block",
                -offset, block.owner
            ),
        ),
        Some(FaultClass::AfterFree { block, offset }) => BugCheck::new(
            Code::PageFaultInFreedSpecialPool,
            [
                fault.addr as u64,
                u64::from(fault.write == Some(true)),
                fault.rip as u64,
                0,
            ],
            format!(
                "{access} at {at}: byte {offset} of a {:?} block already {} (poisoned)",
                block.owner,
                if block.owner == crate::pool::Owner::Driver {
                    "freed"
                } else {
                    "completed and freed"
                }
            ),
        ),
        None if fault.signal == libc::SIGILL => BugCheck::new(
            Code::KmodeExceptionNotHandled,
            [0xC000_001D, fault.rip as u64, 0, 0],
            format!("illegal instruction at {at}"),
        ),
        None => BugCheck::new(
            Code::PageFaultInNonpagedArea,
            [
                fault.addr as u64,
                u64::from(fault.write == Some(true)),
                fault.rip as u64,
                0,
            ],
            format!(
                "{access} of {:#x} at {at} (IRQL {})",
                fault.addr,
                cpu::irql()
            ),
        ),
    };
    let bug = BugCheck {
        call: format!("{} [cpu {}]", verifier::current_call(), fault.cpu),
        ..bug
    };
    kernel.machine().stop(bug)
}
