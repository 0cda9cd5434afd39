//! The Windows backend: the installed revcall adapter through `\\.\ScsiN:`, opened for read and
//! write with FILE_FLAG_OVERLAPPED; every request is an overlapped DeviceIoControl with its own
//! event, so any number can be in flight (Storport answers every one STATUS_PENDING).

use std::ffi::c_void;
use std::ptr::null_mut;
use std::time::Duration;

use revcall_protocol::IOCTL_MINIPORT_PROCESS_SERVICE_IRP;
use windows_sys::Win32::Foundation::{
    CloseHandle, ERROR_ACCESS_DENIED, ERROR_IO_PENDING, GENERIC_READ, GENERIC_WRITE, GetLastError,
    HANDLE, INVALID_HANDLE_VALUE,
};
use windows_sys::Win32::Storage::FileSystem::{
    CreateFileW, FILE_FLAG_OVERLAPPED, FILE_SHARE_READ, FILE_SHARE_WRITE, OPEN_EXISTING,
};
use windows_sys::Win32::System::IO::{
    CancelIoEx, DeviceIoControl, GetOverlappedResult, GetOverlappedResultEx, OVERLAPPED,
};
use windows_sys::Win32::System::Threading::CreateEventW;

use crate::transport::{Completion, Transport, TransportError};

const STATUS_PENDING: usize = 0x103;
/// SCSI port numbers probed for `\\.\ScsiN:`.
const PORTS: u32 = 64;

/// One revcall adapter, by its SCSI port path.
pub struct Windows {
    path: String,
}

/// An open handle (a kernel HANDLE as an integer, so it is Copy + Send).
pub type Handle = usize;

/// An overlapped request: the OVERLAPPED, its event and the output buffer must stay put until
/// the I/O completes, so they live in one box that is only freed after completion.
pub struct Pending {
    overlapped: Box<OVERLAPPED>,
    output: Vec<u8>,
    file: Handle,
}

// SAFETY: the OVERLAPPED and buffer are owned by this value and touched by the kernel only
// until completion; HANDLEs are process-wide and usable from any thread.
unsafe impl Send for Pending {}
// SAFETY: shared access only reads the OVERLAPPED's status words (as GetOverlappedResult does).
unsafe impl Sync for Pending {}

impl Pending {
    /// `OVERLAPPED.Internal`: STATUS_PENDING until the kernel stores the final NTSTATUS.
    fn status(&self) -> usize {
        // SAFETY: a valid, aligned field of our own OVERLAPPED; read volatile because the
        // kernel writes it when the I/O completes.
        unsafe { std::ptr::read_volatile(&self.overlapped.Internal) }
    }
}

fn wide(text: &str) -> Vec<u16> {
    text.encode_utf16().chain(Some(0)).collect()
}

impl Windows {
    /// The adapter at `\\.\ScsiN:` if given, else the first port that answers as revcall.
    pub fn open_adapter(port: Option<u32>) -> Result<Self, TransportError> {
        let found = match port {
            Some(port) => vec![port],
            None => list()?.into_iter().map(|p| p.port).collect(),
        };
        found
            .first()
            .map(|port| Self {
                path: format!(r"\\.\Scsi{port}:"),
            })
            .ok_or_else(|| TransportError::NoAdapter(" (is revcall installed and started? `pnputil /enum-devices /class SCSIAdapter`)".into()))
    }

    fn open_path(path: &str) -> Result<Handle, TransportError> {
        let name = wide(path);
        // SAFETY: `name` is a NUL-terminated UTF-16 string that outlives the call; no security
        // attributes or template file.
        let handle = unsafe {
            CreateFileW(
                name.as_ptr(),
                GENERIC_READ | GENERIC_WRITE,
                FILE_SHARE_READ | FILE_SHARE_WRITE,
                null_mut(),
                OPEN_EXISTING,
                FILE_FLAG_OVERLAPPED,
                null_mut(),
            )
        };
        if handle == INVALID_HANDLE_VALUE {
            // SAFETY: reads this thread's last-error value.
            let error = unsafe { GetLastError() };
            return Err(if error == ERROR_ACCESS_DENIED {
                TransportError::AccessDenied(path.to_owned())
            } else {
                TransportError::System(format!("CreateFileW({path}) failed with error {error}"))
            });
        }
        Ok(handle as Handle)
    }
}

/// A port that answered.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Port {
    pub port: u32,
    pub path: String,
    /// The adapter's STATS, or why it is not (or not quite) revcall.
    pub note: String,
}

/// Probes `\\.\Scsi0:`…: a port is revcall's if a STATS request comes back as a revcall
/// reply. Access denied is an error (not elevated); other failures mean "not ours".
pub fn list() -> Result<Vec<Port>, TransportError> {
    let mut ours = Vec::new();
    for port in 0..PORTS {
        let path = format!(r"\\.\Scsi{port}:");
        let handle = match Windows::open_path(&path) {
            Ok(handle) => handle,
            Err(TransportError::AccessDenied(path)) => {
                return Err(TransportError::AccessDenied(path));
            }
            Err(_) => continue,
        };
        let adapter = Windows { path: path.clone() };
        let probe = crate::client::Adapter {
            transport: &adapter,
            handle,
        };
        let note = match probe.stats() {
            Ok(stats) => Some(format!(
                "revcall: {} parked (cap {}), newest event {}",
                stats.parked_now, stats.parked_cap, stats.head_seq
            )),
            Err(crate::client::RequestError::Status(
                revcall_protocol::status::STATUS_REVISION_MISMATCH,
            )) => Some(
                "revcall, but another protocol version: update the tester or the driver".into(),
            ),
            Err(_) => None,
        };
        adapter.close(handle);
        if let Some(note) = note {
            ours.push(Port { port, path, note });
        }
    }
    Ok(ours)
}

/// Win32 errors DeviceIoControl can fail with before the driver, as NTSTATUS.
fn status_of(error: u32) -> u32 {
    match error {
        ERROR_ACCESS_DENIED => 0xC000_0022,
        87 => 0xC000_000D,
        1 => 0xC000_0010,
        _ => 0xC000_0001,
    }
}

impl Transport for Windows {
    type Handle = Handle;
    type Pending = Pending;

    fn name(&self) -> &'static str {
        "windows"
    }

    fn open(&self, _process: u32) -> Result<Handle, TransportError> {
        Self::open_path(&self.path)
    }

    fn submit(&self, handle: Handle, input: &[u8], out_len: u32) -> Result<Pending, u32> {
        // SAFETY: a manual-reset, initially clear, unnamed event.
        let event = unsafe { CreateEventW(null_mut(), 1, 0, null_mut()) };
        if event.is_null() {
            // SAFETY: reads this thread's last-error value.
            return Err(status_of(unsafe { GetLastError() }));
        }
        let mut pending = Pending {
            overlapped: Box::new(OVERLAPPED {
                hEvent: event,
                ..OVERLAPPED::default()
            }),
            output: vec![0; out_len as usize],
            file: handle,
        };
        let input_ptr = if input.is_empty() {
            null_mut()
        } else {
            input.as_ptr() as *mut c_void
        };
        let output_ptr = if out_len == 0 {
            null_mut()
        } else {
            pending.output.as_mut_ptr().cast()
        };
        // SAFETY: METHOD_BUFFERED copies the input during the call; the output buffer and the
        // OVERLAPPED live in `pending`, which is not freed before the I/O completes (see Drop).
        let done = unsafe {
            DeviceIoControl(
                handle as HANDLE,
                IOCTL_MINIPORT_PROCESS_SERVICE_IRP,
                input_ptr,
                input.len() as u32,
                output_ptr,
                out_len,
                null_mut(),
                &mut *pending.overlapped,
            )
        };
        if done == 0 {
            // SAFETY: reads this thread's last-error value.
            let error = unsafe { GetLastError() };
            if error != ERROR_IO_PENDING && pending.status() == STATUS_PENDING {
                return Err(status_of(error));
            }
        }
        Ok(pending)
    }

    fn wait(&self, pending: &Pending, limit: Duration) -> Option<Completion> {
        let mut bytes = 0u32;
        let ms = u32::try_from(limit.as_millis()).unwrap_or(u32::MAX - 1);
        // SAFETY: the OVERLAPPED belongs to an I/O on this handle and outlives the call. A
        // failure (timeout, or an I/O that failed) is told apart by the status word below.
        unsafe {
            GetOverlappedResultEx(
                pending.file as HANDLE,
                &*pending.overlapped,
                &mut bytes,
                ms,
                0,
            )
        };
        let status = pending.status();
        if status == STATUS_PENDING {
            return None;
        }
        let returned = pending.overlapped.InternalHigh.min(pending.output.len());
        Some(Completion {
            status: status as u32,
            output: pending.output[..returned].to_vec(),
        })
    }

    fn cancel(&self, handle: Handle, pending: &Pending) {
        // SAFETY: cancels at most the I/O this OVERLAPPED describes on this handle.
        unsafe { CancelIoEx(handle as HANDLE, &*pending.overlapped) };
    }

    fn cancel_all(&self, handle: Handle) {
        // SAFETY: NULL cancels every I/O this process issued on the handle.
        unsafe { CancelIoEx(handle as HANDLE, null_mut()) };
    }

    fn close(&self, handle: Handle) {
        // SAFETY: a handle from CreateFileW, closed once by its owner.
        unsafe { CloseHandle(handle as HANDLE) };
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.status() == STATUS_PENDING {
            let mut bytes = 0u32;
            // SAFETY: this request's OVERLAPPED on its handle; then wait until the kernel is
            // done with the buffers before they are freed.
            unsafe { CancelIoEx(self.file as HANDLE, &*self.overlapped) };
            // SAFETY: as above; bWait = TRUE blocks until the I/O has completed.
            unsafe { GetOverlappedResult(self.file as HANDLE, &*self.overlapped, &mut bytes, 1) };
        }
        // SAFETY: the event was created by `submit` for this request only.
        unsafe { CloseHandle(self.overlapped.hEvent) };
    }
}
