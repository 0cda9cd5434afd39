//! DriverEntry, DriverUnload and the sink that reports what arrives.

use core::cell::UnsafeCell;

use nt_imports::ntoskrnl::DbgPrintEx;
use revcall_kclient::{Adapter, End, Options, Sink, Stats, Subscription};
use revcall_protocol::ReplyEvents;
use storport_abi::status::STATUS_NO_SUCH_DEVICE;
use storport_abi::{DRIVER_OBJECT, NTSTATUS, STATUS_SUCCESS, UNICODE_STRING};

/// What the subscription did: exported, so a test harness (storsim) can read it out of the
/// loaded image by name.
#[unsafe(no_mangle)]
#[allow(non_upper_case_globals)]
pub static RevcallClientStats: Stats = Stats::new();

/// The driver's one subscription. A process-wide slot because DriverUnload receives nothing
/// else to find it by (no device extension: the driver has no device of its own); written
/// only by DriverEntry and DriverUnload, which the I/O manager never runs at the same time.
struct Running(UnsafeCell<Option<Subscription<Reporter>>>);

// SAFETY: accessed only from DriverEntry and DriverUnload, which are serialised (above).
unsafe impl Sync for Running {}

static RUNNING: Running = Running(UnsafeCell::new(None));

/// Storport adapters tried, `\Device\RaidPort0` up.
const ADAPTERS: u32 = 16;

/// `DRIVER_OBJECT.DriverUnload`.
const DRIVER_UNLOAD: usize = 0x68;

const DPFLTR_IHVDRIVER_ID: u32 = 77;
const INFO: u32 = 3;

/// Logs what arrives: IRQL ≤ DISPATCH_LEVEL, where DbgPrintEx may be called.
struct Reporter;

impl Sink for Reporter {
    fn events(&self, events: ReplyEvents<'_>, lost: u64) {
        let count = events.len() as u64;
        let last = events.last().map_or(0, |event| event.seq);
        // SAFETY: a NUL-terminated format whose conversions match the three u64 arguments.
        unsafe {
            DbgPrintEx(
                DPFLTR_IHVDRIVER_ID,
                INFO,
                c"revcall-client: %I64u events up to %I64u, %I64u lost\n"
                    .as_ptr()
                    .cast(),
                count,
                last,
                lost,
            )
        };
    }

    fn ended(&self, end: End) {
        // SAFETY: a NUL-terminated format whose one conversion matches the u32 argument.
        unsafe {
            DbgPrintEx(
                DPFLTR_IHVDRIVER_ID,
                INFO,
                c"revcall-client: subscription ended (%u)\n".as_ptr().cast(),
                end.code(),
            )
        };
    }
}

/// `\Device\RaidPort<n>` in `buffer`, as a counted string over it.
fn adapter_name(n: u32, buffer: &mut [u16; 24]) -> UNICODE_STRING {
    let mut len = 0;
    for unit in "\\Device\\RaidPort".encode_utf16() {
        buffer[len] = unit;
        len += 1;
    }
    let mut digits = [0u16; 10];
    let (mut value, mut count) = (n, 0);
    loop {
        digits[count] = u16::from(b'0') + (value % 10) as u16;
        count += 1;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    for &digit in digits[..count].iter().rev() {
        buffer[len] = digit;
        len += 1;
    }
    UNICODE_STRING {
        Length: (len * 2) as u16,
        MaximumLength: (buffer.len() * 2) as u16,
        Buffer: buffer.as_mut_ptr(),
    }
}

/// The first adapter that is revcall's.
fn find_adapter() -> Option<Adapter> {
    (0..ADAPTERS).find_map(|n| {
        let mut buffer = [0u16; 24];
        let adapter = Adapter::open(&adapter_name(n, &mut buffer)).ok()?;
        adapter.is_revcall().then_some(adapter)
    })
}

/// The driver's entry: subscribe, or fail the load when no revcall adapter is there.
///
/// # Safety
///
/// Called once by the I/O manager with the driver's object, at PASSIVE_LEVEL.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn DriverEntry(
    driver: *mut DRIVER_OBJECT,
    _registry_path: *mut UNICODE_STRING,
) -> NTSTATUS {
    let Some(adapter) = find_adapter() else {
        // SAFETY: a NUL-terminated format without conversions.
        unsafe {
            DbgPrintEx(
                DPFLTR_IHVDRIVER_ID,
                INFO,
                c"revcall-client: no revcall adapter\n".as_ptr().cast(),
            )
        };
        return STATUS_NO_SUCH_DEVICE;
    };
    // SAFETY: our driver object; DriverUnload stops the subscription before it returns.
    let subscription = match unsafe {
        Subscription::start(
            driver,
            adapter,
            Options::default(),
            &RevcallClientStats,
            Reporter,
        )
    } {
        Ok(subscription) => subscription,
        Err(status) => return status,
    };
    // SAFETY: DriverEntry runs alone (see `Running`).
    unsafe { *RUNNING.0.get() = Some(subscription) };
    let unload: unsafe extern "system" fn(*mut DRIVER_OBJECT) = driver_unload;
    // SAFETY: DriverObject->DriverUnload, ours to set in DriverEntry.
    unsafe {
        driver
            .cast::<u8>()
            .wrapping_add(DRIVER_UNLOAD)
            .cast::<usize>()
            .write(unload as usize)
    };
    STATUS_SUCCESS
}

/// Stops the subscription and waits for its IRP (PASSIVE_LEVEL, the I/O manager's call).
unsafe extern "system" fn driver_unload(_driver: *mut DRIVER_OBJECT) {
    // SAFETY: DriverUnload runs alone (see `Running`).
    if let Some(subscription) = unsafe { (*RUNNING.0.get()).take() } {
        subscription.stop();
    }
}
