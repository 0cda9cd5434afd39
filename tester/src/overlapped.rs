//! The bookkeeping of one overlapped `DeviceIoControl`, apart from the Win32 calls so that it
//! is compiled and tested on every host: what the call's result means ([`Issued`]), and when
//! the kernel may still write the request's OVERLAPPED and buffers ([`Request`]).
//!
//! The rule that keeps discovery from hanging: a request is **in flight** only if
//! `DeviceIoControl` returned TRUE or failed with `ERROR_IO_PENDING`. On any other error it
//! failed during the call — for an overlapped handle the I/O manager then neither writes the
//! OVERLAPPED (its `Internal` stays STATUS_PENDING, as kernel32 set it before the call) nor
//! signals its event — so it is never waited on and never cancelled: a wait would block
//! forever. Only a [`Request`] waits (when dropped unfinished), and [`issue`] makes one only
//! for a request in flight.

use std::time::Duration;

use storport_abi::status::user::{
    STATUS_ACCESS_DENIED, STATUS_BUFFER_TOO_SMALL, STATUS_CANCELLED, STATUS_DEVICE_REMOVED,
    STATUS_INSUFFICIENT_RESOURCES, STATUS_INVALID_DEVICE_REQUEST, STATUS_INVALID_HANDLE,
    STATUS_INVALID_PARAMETER, STATUS_NOT_SUPPORTED, STATUS_PENDING, STATUS_QUOTA_EXCEEDED,
    STATUS_REVISION_MISMATCH,
};

use crate::transport::Completion;

/// Win32 error codes (winerror.h) the submit path tells apart; portable copies, so that this
/// module builds where windows-sys does not.
pub mod win32 {
    pub const ERROR_INVALID_FUNCTION: u32 = 1;
    pub const ERROR_ACCESS_DENIED: u32 = 5;
    pub const ERROR_INVALID_HANDLE: u32 = 6;
    pub const ERROR_NOT_ENOUGH_MEMORY: u32 = 8;
    pub const ERROR_NOT_SUPPORTED: u32 = 50;
    pub const ERROR_INVALID_PARAMETER: u32 = 87;
    pub const ERROR_INSUFFICIENT_BUFFER: u32 = 122;
    pub const WAIT_TIMEOUT: u32 = 258;
    pub const ERROR_OPERATION_ABORTED: u32 = 995;
    pub const ERROR_IO_INCOMPLETE: u32 = 996;
    pub const ERROR_IO_PENDING: u32 = 997;
    pub const ERROR_REVISION_MISMATCH: u32 = 1306;
    pub const ERROR_NO_SYSTEM_RESOURCES: u32 = 1450;
    pub const ERROR_DEVICE_REMOVED: u32 = 1617;
    pub const ERROR_NOT_ENOUGH_QUOTA: u32 = 1816;
}

/// `OVERLAPPED.Internal` until the request completes (kernel32 stores it before the call).
pub const PENDING: usize = STATUS_PENDING as usize;

/// The NTSTATUS behind a Win32 error that `DeviceIoControl` (or `CreateFileW`) reported: the
/// inverse of `RtlNtStatusToDosError` for the statuses this channel meets; any other error as
/// the status carrying a Win32 code (`0xC007xxxx`, FACILITY_NTWIN32), so none is lost.
pub fn status_from_win32(error: u32) -> u32 {
    use win32::*;
    match error {
        ERROR_INVALID_FUNCTION => STATUS_INVALID_DEVICE_REQUEST,
        ERROR_ACCESS_DENIED => STATUS_ACCESS_DENIED,
        ERROR_INVALID_HANDLE => STATUS_INVALID_HANDLE,
        ERROR_NOT_ENOUGH_MEMORY | ERROR_NO_SYSTEM_RESOURCES => STATUS_INSUFFICIENT_RESOURCES,
        ERROR_NOT_SUPPORTED => STATUS_NOT_SUPPORTED,
        ERROR_INVALID_PARAMETER => STATUS_INVALID_PARAMETER,
        ERROR_INSUFFICIENT_BUFFER => STATUS_BUFFER_TOO_SMALL,
        ERROR_OPERATION_ABORTED => STATUS_CANCELLED,
        ERROR_REVISION_MISMATCH => STATUS_REVISION_MISMATCH,
        ERROR_DEVICE_REMOVED => STATUS_DEVICE_REMOVED,
        ERROR_NOT_ENOUGH_QUOTA => STATUS_QUOTA_EXCEEDED,
        other => 0xC007_0000 | (other & 0xFFFF),
    }
}

/// What an overlapped `DeviceIoControl`'s result says about the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Issued {
    /// TRUE: it completed during the call; the OVERLAPPED holds the result, the event is set.
    Completed,
    /// FALSE with `ERROR_IO_PENDING`: in flight; its completion writes the OVERLAPPED and sets
    /// the event.
    Pending,
    /// FALSE with any other error: it failed during the call, with this NTSTATUS. Nothing is in
    /// flight and the event will never be set.
    Failed(u32),
}

impl Issued {
    /// Reads the call's result: `returned` is its BOOL, `last_error` `GetLastError()` right
    /// after it, `status` the OVERLAPPED's `Internal` right after it.
    pub fn of(returned: bool, last_error: u32, status: usize) -> Self {
        if returned {
            Self::Completed
        } else if last_error == win32::ERROR_IO_PENDING {
            Self::Pending
        } else if status != PENDING {
            // The I/O manager did store a final status: it is more exact than the Win32 error.
            Self::Failed(status as u32)
        } else {
            Self::Failed(status_from_win32(last_error))
        }
    }
}

/// The system calls on one overlapped request, as [`Request`] needs them: the real ones on
/// Windows (`crate::windows`), a fake in the tests.
pub trait Io {
    /// `OVERLAPPED.Internal`, read without a reference to the OVERLAPPED: [`PENDING`] until the
    /// request completes.
    fn status(&self) -> usize;
    /// `GetOverlappedResultEx(.., ms, FALSE)`: the bytes transferred (its out-parameter) once
    /// the request has completed, with success or not; `None` while it is still in flight.
    fn result(&self, ms: u32) -> Option<u32>;
    /// `CancelIoEx` of this request.
    fn cancel(&self);
    /// `GetOverlappedResult(.., bWait = TRUE)`: blocks until the request has completed.
    fn wait_done(&self);
    /// The first `bytes` bytes of the output buffer (at most its length); called only once the
    /// request has completed.
    fn output(&self, bytes: u32) -> Vec<u8>;
}

/// A request the kernel accepted (in flight, or completed during the call): until it has
/// completed the kernel may write its OVERLAPPED and output buffer, so dropping it first
/// cancels it and waits for the completion. Failed calls never become one (see [`issue`]).
#[derive(Debug)]
pub struct Request<I: Io> {
    io: I,
}

/// Runs `call` (the `DeviceIoControl`, returning its BOOL and `GetLastError()`) on `io` and
/// keeps the request if it is in flight.
///
/// # Errors
///
/// The NTSTATUS of a request that failed during the call. `io` is then dropped at once: it was
/// never in flight, so nothing waits for it or cancels it.
pub fn issue<I: Io>(io: I, call: impl FnOnce(&I) -> (bool, u32)) -> Result<Request<I>, u32> {
    let (returned, last_error) = call(&io);
    match Issued::of(returned, last_error, io.status()) {
        Issued::Failed(status) => Err(status),
        Issued::Completed | Issued::Pending => Ok(Request { io }),
    }
}

impl<I: Io> Request<I> {
    /// Waits up to `ms` for the request: its final status and the bytes transferred, or `None`
    /// while it is still in flight.
    pub fn finished(&self, ms: u32) -> Option<(u32, u32)> {
        let bytes = self.io.result(ms)?;
        let status = self.io.status();
        (status != PENDING).then_some((status as u32, bytes))
    }

    /// Waits up to `limit` for the request: its status and output, `None` while in flight.
    pub fn wait(&self, limit: Duration) -> Option<Completion> {
        // INFINITE (u32::MAX) is not a limit.
        let ms = u32::try_from(limit.as_millis()).unwrap_or(u32::MAX - 1);
        let (status, bytes) = self.finished(ms)?;
        Some(Completion {
            status,
            output: self.io.output(bytes),
        })
    }

    /// Asks for cancellation (the request still completes, with whatever status the driver
    /// chooses).
    pub fn cancel(&self) {
        self.io.cancel();
    }
}

impl<I: Io> Drop for Request<I> {
    fn drop(&mut self) {
        // In flight (or done): the buffers are freed after this, so the kernel must be finished
        // with them. `wait_done` returns at once for a request that has completed.
        if self.io.status() == PENDING {
            self.io.cancel();
        }
        self.io.wait_done();
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A fake request on a fake adapter: what the I/O manager does with an overlapped request,
    //! reduced to the OVERLAPPED's status word, its byte count and its event.

    use std::sync::{Arc, Mutex};

    use super::{Io, PENDING, win32};

    /// How the fake adapter answers a request.
    #[derive(Clone, Debug)]
    pub enum Answer {
        /// Fails during the call with this Win32 error, OVERLAPPED untouched, event never set
        /// (a Storport adapter whose miniport has no HwProcessServiceRequest).
        FailNow(u32),
        /// Fails during the call with this Win32 error, but the OVERLAPPED was written.
        FailNowWritten(u32, u32),
        /// Completes during the call (DeviceIoControl returns TRUE).
        CompleteNow(u32, Vec<u8>),
        /// Pends; completes with STATUS_CANCELLED when cancelled, or when told to.
        Pend,
    }

    /// What the submit path did to the request, in order.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Call {
        Result,
        Cancel,
        WaitDone,
    }

    #[derive(Debug)]
    struct State {
        status: usize,
        bytes: u32,
        event: bool,
        output: Vec<u8>,
    }

    /// One request on the fake adapter.
    #[derive(Debug)]
    pub struct FakeIo {
        answer: Answer,
        out_len: usize,
        state: Mutex<State>,
        calls: Mutex<Vec<Call>>,
    }

    impl FakeIo {
        pub fn new(answer: Answer, out_len: usize) -> Self {
            Self {
                answer,
                out_len,
                state: Mutex::new(State {
                    status: PENDING,
                    bytes: 0,
                    event: false,
                    output: Vec::new(),
                }),
                calls: Mutex::new(Vec::new()),
            }
        }

        /// The fake DeviceIoControl: its BOOL and GetLastError().
        pub fn device_io_control(&self) -> (bool, u32) {
            match &self.answer {
                Answer::FailNow(error) => (false, *error),
                Answer::FailNowWritten(error, status) => {
                    self.state.lock().unwrap().status = *status as usize;
                    (false, *error)
                }
                Answer::CompleteNow(status, output) => {
                    self.complete(*status, output);
                    (true, 0)
                }
                Answer::Pend => (false, win32::ERROR_IO_PENDING),
            }
        }

        /// The driver completes the request: the output copied, then the status word and the
        /// byte count written, then the event set.
        pub fn complete(&self, status: u32, output: &[u8]) {
            let mut state = self.state.lock().unwrap();
            assert_eq!(state.status, PENDING, "completed twice");
            let n = output.len().min(self.out_len);
            state.output = output[..n].to_vec();
            state.bytes = n as u32;
            state.status = status as usize;
            state.event = true;
        }

        /// Everything the fake driver wrote to the output buffer.
        pub fn written(&self) -> Vec<u8> {
            self.state.lock().unwrap().output.clone()
        }

        pub fn calls(&self) -> Vec<Call> {
            self.calls.lock().unwrap().clone()
        }

        fn log(&self, call: Call) {
            self.calls.lock().unwrap().push(call);
        }
    }

    impl Io for FakeIo {
        fn status(&self) -> usize {
            self.state.lock().unwrap().status
        }

        fn result(&self, _ms: u32) -> Option<u32> {
            self.log(Call::Result);
            let state = self.state.lock().unwrap();
            (state.status != PENDING).then_some(state.bytes)
        }

        fn cancel(&self) {
            self.log(Call::Cancel);
            if matches!(self.answer, Answer::Pend) && self.status() == PENDING {
                self.complete(storport_abi::status::user::STATUS_CANCELLED, &[]);
            }
        }

        fn wait_done(&self) {
            self.log(Call::WaitDone);
            // Windows would block on the event for ever: fail the test instead of hanging it.
            assert!(
                self.state.lock().unwrap().event,
                "GetOverlappedResult(bWait = TRUE) on a request whose event is never set: \
                 this blocks for ever"
            );
        }

        fn output(&self, bytes: u32) -> Vec<u8> {
            let state = self.state.lock().unwrap();
            state.output[..(bytes as usize).min(state.output.len())].to_vec()
        }
    }

    /// Shared, so that a test can look at the request after the submit path let go of it.
    impl Io for Arc<FakeIo> {
        fn status(&self) -> usize {
            FakeIo::status(self)
        }
        fn result(&self, ms: u32) -> Option<u32> {
            FakeIo::result(self, ms)
        }
        fn cancel(&self) {
            FakeIo::cancel(self)
        }
        fn wait_done(&self) {
            FakeIo::wait_done(self)
        }
        fn output(&self, bytes: u32) -> Vec<u8> {
            FakeIo::output(self, bytes)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use storport_abi::status::user::{STATUS_DEVICE_REMOVED, STATUS_SUCCESS};

    use super::fake::{Answer, Call, FakeIo};
    use super::*;

    /// Submits on a fresh fake request; the fake stays observable after the submit path let go.
    fn submit(answer: Answer, out_len: usize) -> (Result<Request<Arc<FakeIo>>, u32>, Arc<FakeIo>) {
        let io = Arc::new(FakeIo::new(answer, out_len));
        (issue(io.clone(), |io| io.device_io_control()), io)
    }

    #[test]
    fn the_call_result_decides_what_is_in_flight() {
        use win32::*;
        assert_eq!(Issued::of(true, 0, 0), Issued::Completed);
        assert_eq!(
            Issued::of(false, ERROR_IO_PENDING, PENDING),
            Issued::Pending
        );
        assert_eq!(
            Issued::of(false, ERROR_INVALID_FUNCTION, PENDING),
            Issued::Failed(STATUS_INVALID_DEVICE_REQUEST)
        );
        assert_eq!(
            Issued::of(false, ERROR_INVALID_PARAMETER, PENDING),
            Issued::Failed(STATUS_INVALID_PARAMETER)
        );
        // A status the I/O manager stored wins over the Win32 error's approximation.
        assert_eq!(
            Issued::of(false, ERROR_ACCESS_DENIED, STATUS_DEVICE_REMOVED as usize),
            Issued::Failed(STATUS_DEVICE_REMOVED)
        );
    }

    #[test]
    fn win32_errors_map_back_to_the_channel_statuses() {
        use win32::*;
        for (error, status) in [
            (ERROR_INVALID_FUNCTION, STATUS_INVALID_DEVICE_REQUEST),
            (ERROR_ACCESS_DENIED, STATUS_ACCESS_DENIED),
            (ERROR_NOT_SUPPORTED, STATUS_NOT_SUPPORTED),
            (ERROR_INSUFFICIENT_BUFFER, STATUS_BUFFER_TOO_SMALL),
            (ERROR_OPERATION_ABORTED, STATUS_CANCELLED),
            (ERROR_REVISION_MISMATCH, STATUS_REVISION_MISMATCH),
            (ERROR_DEVICE_REMOVED, STATUS_DEVICE_REMOVED),
            (ERROR_NOT_ENOUGH_QUOTA, STATUS_QUOTA_EXCEEDED),
            (ERROR_NO_SYSTEM_RESOURCES, STATUS_INSUFFICIENT_RESOURCES),
        ] {
            assert_eq!(status_from_win32(error), status, "error {error}");
        }
        // Anything else keeps its code: FACILITY_NTWIN32.
        assert_eq!(status_from_win32(1167), 0xC007_048F);
    }

    /// A Storport adapter whose miniport has no HwProcessServiceRequest fails the service IOCTL
    /// during the call and never sets the event: its status comes back at once, and nothing
    /// waits on the request or cancels it (the old `Pending` existed before the call, and
    /// dropping it cancelled and then waited for ever).
    #[test]
    fn a_request_that_fails_during_the_call_is_neither_waited_on_nor_cancelled() {
        let (result, io) = submit(Answer::FailNow(win32::ERROR_INVALID_FUNCTION), 256);
        assert_eq!(result.err(), Some(STATUS_INVALID_DEVICE_REQUEST));
        assert_eq!(
            io.calls(),
            [],
            "a failed call is never waited on or cancelled"
        );
    }

    /// The old code took a failure whose OVERLAPPED had been written for a request in flight.
    #[test]
    fn a_failure_with_a_written_overlapped_reports_that_status_and_does_not_wait() {
        let (result, io) = submit(
            Answer::FailNowWritten(win32::ERROR_ACCESS_DENIED, STATUS_DEVICE_REMOVED),
            256,
        );
        assert_eq!(result.err(), Some(STATUS_DEVICE_REMOVED));
        assert_eq!(io.calls(), []);
    }

    #[test]
    fn a_request_completed_during_the_call_is_read_without_cancelling() {
        let (result, io) = submit(Answer::CompleteNow(STATUS_SUCCESS, vec![7; 300]), 256);
        let request = result.unwrap();
        // The byte count is GetOverlappedResultEx's (the fake clamps it to the buffer).
        let completion = request.wait(Duration::ZERO).unwrap();
        assert_eq!(completion.status, STATUS_SUCCESS);
        assert_eq!(completion.output, vec![7; 256]);
        drop(request);
        assert_eq!(io.calls(), [Call::Result, Call::WaitDone]);
        assert_eq!(io.written().len(), 256);
    }

    #[test]
    fn a_pending_request_is_waited_for_and_its_byte_count_reported() {
        let (result, io) = submit(Answer::Pend, 64);
        let request = result.unwrap();
        assert_eq!(request.finished(0), None, "still in flight");
        io.complete(STATUS_SUCCESS, &[1, 2, 3]);
        assert_eq!(request.finished(0), Some((STATUS_SUCCESS, 3)));
        drop(request);
        assert_eq!(io.calls(), [Call::Result, Call::Result, Call::WaitDone]);
    }

    #[test]
    fn dropping_a_request_in_flight_cancels_it_then_waits_for_its_completion() {
        let (result, io) = submit(Answer::Pend, 64);
        drop(result.unwrap());
        assert_eq!(io.calls(), [Call::Cancel, Call::WaitDone]);
        assert_eq!(io.status(), STATUS_CANCELLED as usize);
    }
}
