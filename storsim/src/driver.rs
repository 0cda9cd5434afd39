//! Loading a driver into the running kernel: map it (loader), bind it to the emulated exports,
//! run DriverEntry; and the fault path that turns a crash in driver code into a bug check.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use storport_abi::status::Named;

use crate::cpu::{self, Fault, PASSIVE_LEVEL};
use crate::exports;
use crate::kernel::Kernel;
use crate::loader::{Image, LoadError};
use crate::pool::FaultClass;
use crate::verifier::{self, BugCheck, Code};

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

// Where the driver lives, for the fault path (which cannot take locks).
static IMAGE_BASE: AtomicUsize = AtomicUsize::new(0);
static IMAGE_SIZE: AtomicUsize = AtomicUsize::new(0);
static IMAGE_NAME: Mutex<String> = Mutex::new(String::new());

/// Loads the `.sys` at `path` into `kernel` and runs its DriverEntry at PASSIVE_LEVEL.
pub fn load(kernel: &Arc<Kernel>, path: &std::path::Path) -> Result<Driver, RunError> {
    {
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let bytes = std::fs::read(path).map_err(|reason| RunError::Read {
            path: path.display().to_string(),
            reason,
        })?;
        let image =
            Image::load(&bytes, &name, &exports::resolve).map_err(|reason| RunError::Load {
                name: name.clone(),
                reason,
            })?;
        IMAGE_BASE.store(image.base(), Ordering::Release);
        IMAGE_SIZE.store(image.size(), Ordering::Release);
        *IMAGE_NAME.lock().unwrap_or_else(|p| p.into_inner()) = name.clone();
        cpu::set_fatal_hook(on_fault);
        kernel.note(format!(
            "loaded {name} at {:#x} ({} bytes, {} imports bound, relocated from its ImageBase)",
            image.base(),
            image.size(),
            image.imports().len()
        ));
        let entry = image.entry();
        // SAFETY: the loader mapped, relocated and bound the image; its entry point is
        // DriverEntry(PDRIVER_OBJECT, PUNICODE_STRING) -> NTSTATUS in the win64 convention.
        let driver_entry: unsafe extern "win64" fn(
            *mut std::ffi::c_void,
            *mut std::ffi::c_void,
        ) -> i32 = unsafe { std::mem::transmute(entry) };
        let objects = kernel.io().objects();
        let driver_object = objects.driver();
        let registry = objects.registry_path();
        let status = kernel
            .machine()
            .call_driver("DriverEntry", PASSIVE_LEVEL, || {
                // SAFETY: DriverEntry's contract: the driver object and registry path, PASSIVE_LEVEL.
                unsafe { driver_entry(driver_object.cast(), registry.cast()) }
            }) as u32;
        kernel.note(format!("DriverEntry → {}", Named(status)));
        if status != 0 {
            return Err(RunError::DriverEntry { name, status });
        }
        Ok(Driver { image })
    }
}

/// `revcall.sys+0x1234` for an address inside the driver.
fn describe(address: usize) -> String {
    let base = IMAGE_BASE.load(Ordering::Acquire);
    let size = IMAGE_SIZE.load(Ordering::Acquire);
    if (base..base + size).contains(&address) {
        let name = IMAGE_NAME
            .try_lock()
            .map_or_else(|_| "driver".to_owned(), |n| n.clone());
        format!("{name}+{:#x}", address - base)
    } else {
        format!("{address:#x} (outside the driver)")
    }
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
