//! What an overlapped DeviceIoControl's result means for the request, as plain logic so it is
//! tested on every host (the Windows backend, [`crate::windows`], acts on it).
//!
//! The trap it avoids: for a device whose driver fails the IOCTL at once (every other vendor's
//! Storport miniport, which has no HwProcessServiceRequest), DeviceIoControl returns FALSE with
//! an error other than ERROR_IO_PENDING; the I/O manager then never writes the OVERLAPPED nor
//! signals its event, and `OVERLAPPED.Internal` still holds the STATUS_PENDING kernel32 put
//! there. Waiting for such a request, or cancelling it and waiting, waits forever.

/// `ERROR_IO_PENDING`.
pub const ERROR_IO_PENDING: u32 = 997;
/// `WAIT_TIMEOUT` and `ERROR_IO_INCOMPLETE`: GetOverlappedResultEx saw the I/O still running.
pub const STILL_RUNNING: [u32; 2] = [258, 996];

/// A request right after DeviceIoControl returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Submitted {
    /// Completed or pending: the kernel owns the OVERLAPPED and the buffers until it signals.
    InFlight,
    /// Failed before any IRP was pending, with this NTSTATUS: nothing will ever be signalled.
    Failed(u32),
}

/// What DeviceIoControl's return value and the thread's last error say about the request.
pub fn submitted(returned_true: bool, last_error: u32) -> Submitted {
    if returned_true || last_error == ERROR_IO_PENDING {
        Submitted::InFlight
    } else {
        Submitted::Failed(status_of(last_error))
    }
}

/// The Win32 errors a synchronous DeviceIoControl failure shows, as the NTSTATUS behind them.
pub fn status_of(error: u32) -> u32 {
    match error {
        // ERROR_INVALID_FUNCTION: STATUS_INVALID_DEVICE_REQUEST.
        1 => 0xC000_0010,
        // ERROR_ACCESS_DENIED.
        5 => 0xC000_0022,
        // ERROR_NOT_SUPPORTED.
        50 => 0xC000_00BB,
        // ERROR_INVALID_PARAMETER.
        87 => 0xC000_000D,
        // ERROR_DELETE_PENDING.
        303 => 0xC000_0056,
        // ERROR_DEVICE_REMOVED (1617).
        1617 => 0xC000_02B6,
        // STATUS_UNSUCCESSFUL.
        _ => 0xC000_0001,
    }
}

/// What freeing a request's OVERLAPPED and buffers needs first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// The kernel may still write them: cancel the I/O and wait for it to finish.
    CancelAndWait,
    /// Nothing of the kernel's refers to them any more (completed, or never in flight).
    Free,
}

/// How to release a request that `was_in_flight` and has `completed` (or not) by now.
pub fn release(was_in_flight: bool, completed: bool) -> Release {
    if was_in_flight && !completed {
        Release::CancelAndWait
    } else {
        Release::Free
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A foreign miniport fails the service IOCTL at once: the request is not in flight and
    /// its release neither waits nor cancels, even though `Internal` still says
    /// STATUS_PENDING (the old bookkeeping keyed on `Internal` and waited forever).
    #[test]
    fn a_synchronous_failure_is_never_waited_for() {
        for (error, status) in [(1, 0xC000_0010), (50, 0xC000_00BB), (87, 0xC000_000D)] {
            let fate = submitted(false, error);
            assert_eq!(fate, Submitted::Failed(status));
            let in_flight = fate == Submitted::InFlight;
            let internal_still_pending = true;
            assert_eq!(release(in_flight, !internal_still_pending), Release::Free);
        }
    }

    #[test]
    fn pending_and_completed_requests_are_in_flight_until_done() {
        assert_eq!(submitted(false, ERROR_IO_PENDING), Submitted::InFlight);
        assert_eq!(submitted(true, 0), Submitted::InFlight);
        assert_eq!(release(true, false), Release::CancelAndWait);
        assert_eq!(release(true, true), Release::Free);
    }

    #[test]
    fn unknown_errors_are_unsuccessful() {
        assert_eq!(status_of(12345), 0xC000_0001);
    }
}
