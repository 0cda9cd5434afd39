//! The fixture drivers' protocol through every path storsim checks: park, flush (complete
//! parked requests), echo (complete at once), cancel, removal with a parked request and a
//! request after removal. Opcodes are the first u32 of the input: 1 PARK, 2 FLUSH, 3 ECHO.

use std::time::Duration;

use super::client::PROMPT;
use super::{Failures, KernelRef};
use revcall_protocol::status::STATUS_CANCELLED;
use storsim::driver::RunError;
use storsim::io::Access;
use storsim::port::IOCTL;

const PARK: u32 = 1;
const FLUSH: u32 = 2;
const ECHO: u32 = 3;
use revcall_protocol::status::{STATUS_DELETE_PENDING, STATUS_DEVICE_REMOVED};

pub fn run(kernel: &KernelRef, failures: &Failures) -> Result<(), RunError> {
    kernel.start_adapter()?;
    // The class driver's enumeration, as after a bus change: REPORT LUNS, then each LUN.
    if let Some(class) = kernel.disk_class() {
        class.enumerate();
    }
    // ScsiStopAdapter and ScsiRestartAdapter, at the DIRQL storsim models for them.
    kernel.power_cycle_adapter();
    let handle = kernel.open(1, Access::READ_WRITE);
    let send = |op: u32, out: u32| {
        kernel
            .device_io_control(handle, IOCTL, &op.to_le_bytes(), out)
            .expect("the handle is open with read/write access")
    };
    let parked = [send(PARK, 8), send(PARK, 8)];
    std::thread::sleep(Duration::from_millis(5));
    failures.expect(parked.iter().all(|p| p.outcome().is_none()), || {
        "PARK requests to stay pending".into()
    });

    let echo = send(ECHO, 64).wait(PROMPT);
    failures.expect(echo.as_ref().is_some_and(|o| o.status == 0), || {
        format!("ECHO to succeed, got {echo:?}")
    });

    let flush = send(FLUSH, 8).wait(PROMPT);
    failures.expect(
        flush
            .as_ref()
            .is_some_and(|o| o.status == 0 && o.information == 8),
        || format!("FLUSH to succeed with 8 bytes, got {flush:?}"),
    );
    for request in &parked {
        let outcome = request.wait(PROMPT);
        failures.expect(
            outcome
                .as_ref()
                .is_some_and(|o| o.status == 0 && o.information == 8),
            || format!("FLUSH to complete each parked request, got {outcome:?}"),
        );
    }

    let cancelled = send(PARK, 8);
    std::thread::sleep(Duration::from_millis(2));
    kernel.cancel_io(handle, Some(cancelled.id));
    kernel.io().await_cancellations();
    let outcome = cancelled.outcome();
    failures.expect(
        outcome
            .as_ref()
            .is_some_and(|o| o.status == STATUS_CANCELLED),
        || {
            format!(
                "CancelIoEx to complete a parked request with STATUS_CANCELLED, got {outcome:?}"
            )
        },
    );

    let at_removal = send(PARK, 8);
    kernel.remove_adapter(|| {});
    let outcome = at_removal.wait(Duration::from_millis(100));
    failures.expect(
        outcome
            .as_ref()
            .is_some_and(|o| o.status == STATUS_DEVICE_REMOVED),
        || {
            format!(
                "removal to complete the parked request with STATUS_DEVICE_REMOVED, got {outcome:?}"
            )
        },
    );
    let late = send(ECHO, 8).wait(PROMPT);
    failures.expect(
        late.as_ref()
            .is_some_and(|o| o.status == STATUS_DELETE_PENDING),
        || format!("a request after removal to fail with STATUS_DELETE_PENDING, got {late:?}"),
    );
    kernel.close(handle);
    Ok(())
}
