//! How the tester reaches an adapter: one trait, two backends — DeviceIoControl on Windows
//! ([`crate::windows`]) and storsim's emulated I/O manager on Linux ([`crate::sim`]).

use std::fmt::Debug;
use std::time::Duration;

/// A completed request as overlapped I/O reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The raw NTSTATUS (`OVERLAPPED.Internal` once the request completed).
    pub status: u32,
    /// The bytes returned: as many as `GetOverlappedResultEx` reports transferred.
    pub output: Vec<u8>,
}

/// Why the transport itself failed (not a status the driver chose).
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("no revcall adapter found{0}")]
    NoAdapter(String),
    #[error("access denied opening {0}: run the tester from an elevated (administrator) prompt")]
    AccessDenied(String),
    #[error("{0}")]
    System(String),
}

/// One way of sending the service IOCTL to a revcall adapter.
pub trait Transport: Send + Sync {
    /// An open handle.
    type Handle: Copy + Debug + Eq + Send + Sync;
    /// A request in flight (an OVERLAPPED, or storsim's request).
    type Pending: Send + Sync;

    /// "windows" or "storsim".
    fn name(&self) -> &'static str;

    /// Opens the adapter for read and write, as `process` (only storsim models processes).
    fn open(&self, process: u32) -> Result<Self::Handle, TransportError>;

    /// Overlapped DeviceIoControl(IOCTL_MINIPORT_PROCESS_SERVICE_IRP). `Err` is an NTSTATUS
    /// the system returned before the driver saw the request.
    fn submit(
        &self,
        handle: Self::Handle,
        input: &[u8],
        out_len: u32,
    ) -> Result<Self::Pending, u32>;

    /// Waits up to `limit` for the request; `None` while it is still pending.
    fn wait(&self, pending: &Self::Pending, limit: Duration) -> Option<Completion>;

    /// CancelIoEx for one request.
    fn cancel(&self, handle: Self::Handle, pending: &Self::Pending);

    /// CancelIoEx(handle, NULL): every request on the handle.
    fn cancel_all(&self, handle: Self::Handle);

    /// CloseHandle.
    fn close(&self, handle: Self::Handle);

    /// What only a lab can do (process exit, removal, restart, a verdict): storsim's, or the
    /// tester's Wine lab; `None` on Windows.
    fn lab(&self) -> Option<&dyn Lab> {
        None
    }
}

/// Powers over the machine itself, which only storsim has.
pub trait Lab: Sync {
    /// Ends an emulated process: the I/O manager cancels its requests and closes its handles.
    fn exit_process(&self, process: u32);
    /// PnP removal (HwCompleteServiceIrp, then Storport's rundown wait).
    fn remove(&self);
    /// PnP surprise removal.
    fn surprise_remove(&self);
    /// Unloads the driver and boots a fresh machine with it, adapter started.
    fn restart(&self) -> anyhow::Result<()>;
    /// The verifier's reports so far, one line each.
    fn violations(&self) -> Vec<String>;
    /// The disk class driver writes `data` to `lun` at `lba` and reads it back (blocking
    /// until a server answers both): the bytes read, or why either failed.
    fn disk_write_read(&self, lun: u8, lba: u64, data: &[u8]) -> Result<Vec<u8>, String>;
    /// How long after one of the lab's actions its effect on requests may still be on its way:
    /// zero in storsim, whose lab acts synchronously; under Wine, completions reach the
    /// process through wineserver.
    fn settle(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }
    /// The status of a request sent on a handle opened before the adapter's removal: Storport
    /// refuses it (STATUS_DELETE_PENDING, its remove rundown).
    fn refusal_after_removal(&self) -> u32 {
        revcall_protocol::status::STATUS_DELETE_PENDING
    }
    /// Whether [`Self::disk_write_read`] has a disk class driver behind it (storsim's model
    /// has; Wine has none, and its stand-in port driver only reads a new disk's first block).
    fn has_disk_class(&self) -> bool {
        true
    }
}
