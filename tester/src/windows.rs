//! The Windows backend: revcall's adapters, found by the storage-port device interface its
//! devnode (`root\revcall`) registers, opened for read and write with FILE_FLAG_OVERLAPPED;
//! every request is an overlapped DeviceIoControl with its own event, so any number can be in
//! flight (Storport answers every one STATUS_PENDING). Other vendors' adapters are never sent
//! revcall's wire format; `--port N` (`\\.\ScsiN:`) opens one adapter by hand.

use std::ffi::c_void;
use std::ptr::null_mut;
use std::time::Duration;

use revcall_protocol::IOCTL_MINIPORT_PROCESS_SERVICE_IRP;
use windows_sys::Win32::Devices::DeviceAndDriverInstallation::{
    DIGCF_DEVICEINTERFACE, DIGCF_PRESENT, HDEVINFO, SP_DEVICE_INTERFACE_DATA,
    SP_DEVICE_INTERFACE_DETAIL_DATA_W, SP_DEVINFO_DATA, SPDRP_HARDWAREID,
    SetupDiDestroyDeviceInfoList, SetupDiEnumDeviceInterfaces, SetupDiGetClassDevsW,
    SetupDiGetDeviceInterfaceDetailW, SetupDiGetDeviceRegistryPropertyW,
};
use windows_sys::Win32::Foundation::{
    CloseHandle, ERROR_ACCESS_DENIED, GENERIC_READ, GENERIC_WRITE, GetLastError, HANDLE,
    INVALID_HANDLE_VALUE,
};
use windows_sys::Win32::Storage::FileSystem::{
    CreateFileW, FILE_FLAG_OVERLAPPED, FILE_SHARE_READ, FILE_SHARE_WRITE, OPEN_EXISTING,
};
use windows_sys::Win32::System::IO::{
    CancelIoEx, DeviceIoControl, GetOverlappedResult, GetOverlappedResultEx, OVERLAPPED,
};
use windows_sys::Win32::System::Threading::CreateEventW;
use windows_sys::core::GUID;

use crate::overlapped::{Release, STILL_RUNNING, Submitted, release, submitted};
use crate::transport::{Completion, Transport, TransportError};

const STATUS_PENDING: usize = 0x103;
/// GUID_DEVINTERFACE_STORAGEPORT, which Storport registers on every adapter it starts.
const GUID_DEVINTERFACE_STORAGEPORT: GUID = GUID::from_u128(0x2accfe60_c130_11d2_b082_00a0c91efb8b);
/// revcall's hardware id (inf/revcall.inf), compared without regard to case.
const HARDWARE_ID: &str = r"root\revcall";

/// One revcall adapter, by its device path.
pub struct Windows {
    path: String,
}

/// An open handle (a kernel HANDLE as an integer, so it is Copy + Send).
pub type Handle = usize;

/// An overlapped request. The kernel writes the OVERLAPPED and the output buffer until it
/// signals completion, so both stay put, and the OVERLAPPED is reached only through a raw
/// pointer (no Rust reference to memory the kernel is writing).
pub struct Pending {
    overlapped: *mut OVERLAPPED,
    output: Vec<u8>,
    file: Handle,
    /// DeviceIoControl left the I/O with the kernel ([`Submitted::InFlight`]).
    in_flight: bool,
}

// SAFETY: the OVERLAPPED and buffer are owned by this value and touched by the kernel only
// until completion; HANDLEs are process-wide and usable from any thread.
unsafe impl Send for Pending {}
// SAFETY: shared access only reads the OVERLAPPED's status word (volatile), as
// GetOverlappedResult does.
unsafe impl Sync for Pending {}

impl Pending {
    /// `OVERLAPPED.Internal`: STATUS_PENDING until the kernel stores the final NTSTATUS.
    fn status(&self) -> usize {
        // SAFETY: the OVERLAPPED is alive until Drop; this only forms the field's address.
        let internal = unsafe { &raw const (*self.overlapped).Internal };
        // SAFETY: an aligned field of the live OVERLAPPED, read volatile through the raw
        // pointer because the kernel writes it when the I/O completes.
        unsafe { std::ptr::read_volatile(internal) }
    }
}

fn wide(text: &str) -> Vec<u16> {
    text.encode_utf16().chain(Some(0)).collect()
}

impl Windows {
    /// The adapter at `\\.\ScsiN:` if given, else the first revcall adapter found.
    pub fn open_adapter(port: Option<u32>) -> Result<Self, TransportError> {
        let path = match port {
            Some(port) => Some(format!(r"\\.\Scsi{port}:")),
            None => list()?.into_iter().next().map(|adapter| adapter.path),
        };
        path.map(|path| Self { path }).ok_or_else(|| {
            TransportError::NoAdapter(
                " (is revcall installed and started? `pnputil /enum-devices /class SCSIAdapter`)"
                    .into(),
            )
        })
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

/// A revcall adapter that answered.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Adapter {
    pub path: String,
    /// The adapter's STATS, or why it is not quite usable.
    pub note: String,
}

/// The device paths of the storage-port interfaces whose device has revcall's hardware id.
fn revcall_interfaces() -> Result<Vec<String>, TransportError> {
    // SAFETY: a class GUID that outlives the call; no enumerator or window.
    let set: HDEVINFO = unsafe {
        SetupDiGetClassDevsW(
            &GUID_DEVINTERFACE_STORAGEPORT,
            null_mut(),
            null_mut(),
            DIGCF_PRESENT | DIGCF_DEVICEINTERFACE,
        )
    };
    if set == INVALID_HANDLE_VALUE as HDEVINFO {
        // SAFETY: reads this thread's last-error value.
        let error = unsafe { GetLastError() };
        return Err(TransportError::System(format!(
            "SetupDiGetClassDevsW(GUID_DEVINTERFACE_STORAGEPORT) failed with error {error}"
        )));
    }
    let mut paths = Vec::new();
    for index in 0.. {
        let mut interface = SP_DEVICE_INTERFACE_DATA {
            cbSize: size_of::<SP_DEVICE_INTERFACE_DATA>() as u32,
            ..SP_DEVICE_INTERFACE_DATA::default()
        };
        // SAFETY: the set from above and a sized, writable interface record.
        let more = unsafe {
            SetupDiEnumDeviceInterfaces(
                set,
                null_mut(),
                &GUID_DEVINTERFACE_STORAGEPORT,
                index,
                &mut interface,
            )
        };
        if more == 0 {
            break;
        }
        if let Some(path) = interface_path(set, &interface) {
            paths.push(path);
        }
    }
    // SAFETY: the set from SetupDiGetClassDevsW, destroyed once.
    unsafe { SetupDiDestroyDeviceInfoList(set) };
    Ok(paths)
}

/// The device path of `interface` if its device is revcall's.
fn interface_path(set: HDEVINFO, interface: &SP_DEVICE_INTERFACE_DATA) -> Option<String> {
    let mut device = SP_DEVINFO_DATA {
        cbSize: size_of::<SP_DEVINFO_DATA>() as u32,
        ..SP_DEVINFO_DATA::default()
    };
    // The detail record: a u32 size, then the path; a u64 buffer keeps it aligned.
    let mut detail = vec![0u64; 512];
    let record = detail
        .as_mut_ptr()
        .cast::<SP_DEVICE_INTERFACE_DETAIL_DATA_W>();
    // SAFETY: the record lies in `detail`, 8-aligned and large enough for its header.
    unsafe { (*record).cbSize = size_of::<SP_DEVICE_INTERFACE_DETAIL_DATA_W>() as u32 };
    let bytes = (detail.len() * 8) as u32;
    // SAFETY: the set and interface from the enumeration; `bytes` writable bytes at `record`.
    let ok = unsafe {
        SetupDiGetDeviceInterfaceDetailW(set, interface, record, bytes, null_mut(), &mut device)
    };
    if ok == 0 || !has_revcall_id(set, &device) {
        return None;
    }
    // The path is NUL-terminated UTF-16 after the size field, inside `detail`.
    let units = (detail.len() * 8 - 4) / 2;
    // SAFETY: the record lies in `detail`; this only forms the path's address.
    let first = unsafe { &raw const (*record).DevicePath[0] };
    // SAFETY: `units` u16s from `first` lie inside `detail`, which SetupAPI filled with a
    // NUL-terminated path.
    let path = unsafe { std::slice::from_raw_parts(first, units) };
    let end = path.iter().position(|&unit| unit == 0).unwrap_or(units);
    Some(String::from_utf16_lossy(&path[..end]))
}

/// Whether the device's hardware ids (a REG_MULTI_SZ) include revcall's.
fn has_revcall_id(set: HDEVINFO, device: &SP_DEVINFO_DATA) -> bool {
    let mut ids = vec![0u16; 1024];
    // SAFETY: the set and device from the enumeration; a writable buffer of its byte size.
    let ok = unsafe {
        SetupDiGetDeviceRegistryPropertyW(
            set,
            device,
            SPDRP_HARDWAREID,
            null_mut(),
            ids.as_mut_ptr().cast(),
            (ids.len() * 2) as u32,
            null_mut(),
        )
    };
    ok != 0
        && String::from_utf16_lossy(&ids)
            .split('\0')
            .any(|id| id.eq_ignore_ascii_case(HARDWARE_ID))
}

/// revcall's adapters: the storage-port interfaces of devices with its hardware id, each
/// probed with a STATS request. Access denied is an error (not elevated).
pub fn list() -> Result<Vec<Adapter>, TransportError> {
    let mut ours = Vec::new();
    for path in revcall_interfaces()? {
        let handle = Windows::open_path(&path)?;
        let adapter = Windows { path: path.clone() };
        let probe = crate::client::Adapter {
            transport: &adapter,
            handle,
        };
        let note = match probe.stats() {
            Ok(stats) => format!(
                "revcall: {} parked (cap {}), newest event {}",
                stats.parked_now, stats.parked_cap, stats.head_seq
            ),
            Err(crate::client::RequestError::Status(
                revcall_protocol::status::STATUS_REVISION_MISMATCH,
            )) => "revcall, but another protocol version: update the tester or the driver".into(),
            Err(error) => format!("revcall's device, but STATS failed: {error}"),
        };
        adapter.close(handle);
        ours.push(Adapter { path, note });
    }
    Ok(ours)
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
            return Err(crate::overlapped::status_of(unsafe { GetLastError() }));
        }
        let mut pending = Pending {
            overlapped: Box::into_raw(Box::new(OVERLAPPED {
                hEvent: event,
                ..OVERLAPPED::default()
            })),
            output: vec![0; out_len as usize],
            file: handle,
            in_flight: false,
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
        // OVERLAPPED live in `pending`, which is not freed before the I/O completes (Drop).
        let returned = unsafe {
            DeviceIoControl(
                handle as HANDLE,
                IOCTL_MINIPORT_PROCESS_SERVICE_IRP,
                input_ptr,
                input.len() as u32,
                output_ptr,
                out_len,
                null_mut(),
                pending.overlapped,
            )
        } != 0;
        let error = if returned {
            0
        } else {
            // SAFETY: reads this thread's last-error value, which DeviceIoControl just set.
            unsafe { GetLastError() }
        };
        match submitted(returned, error) {
            Submitted::InFlight => {
                pending.in_flight = true;
                Ok(pending)
            }
            // Never in flight: dropping it frees the OVERLAPPED without waiting.
            Submitted::Failed(status) => Err(status),
        }
    }

    fn wait(&self, pending: &Pending, limit: Duration) -> Option<Completion> {
        let mut bytes = 0u32;
        let ms = u32::try_from(limit.as_millis()).unwrap_or(u32::MAX - 1);
        // SAFETY: the OVERLAPPED belongs to an I/O on this handle and lives until Drop.
        let done = unsafe {
            GetOverlappedResultEx(
                pending.file as HANDLE,
                pending.overlapped,
                &mut bytes,
                ms,
                0,
            )
        } != 0;
        if !done {
            // SAFETY: reads this thread's last-error value.
            let error = unsafe { GetLastError() };
            if STILL_RUNNING.contains(&error) || pending.status() == STATUS_PENDING {
                return None;
            }
        }
        // The byte count GetOverlappedResultEx reports (not InternalHigh, which is the
        // kernel's field): errors report none.
        let returned = (bytes as usize).min(pending.output.len());
        Some(Completion {
            status: pending.status() as u32,
            output: pending.output[..returned].to_vec(),
        })
    }

    fn cancel(&self, handle: Handle, pending: &Pending) {
        // SAFETY: cancels at most the I/O this OVERLAPPED describes on this handle.
        unsafe { CancelIoEx(handle as HANDLE, pending.overlapped) };
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
        let completed = self.status() != STATUS_PENDING;
        if release(self.in_flight, completed) == Release::CancelAndWait {
            let mut bytes = 0u32;
            // SAFETY: this request's OVERLAPPED on its handle; then wait until the kernel is
            // done with the buffers before they are freed.
            unsafe { CancelIoEx(self.file as HANDLE, self.overlapped) };
            // SAFETY: as above; bWait = TRUE blocks until the I/O has completed, which an
            // in-flight I/O does once cancelled.
            unsafe { GetOverlappedResult(self.file as HANDLE, self.overlapped, &mut bytes, 1) };
        }
        // SAFETY: the OVERLAPPED is alive until the Box::from_raw below.
        let event = unsafe { (*self.overlapped).hEvent };
        // SAFETY: the event was created by `submit` for this request only.
        unsafe { CloseHandle(event) };
        // SAFETY: the OVERLAPPED came from Box::into_raw in `submit`, and the kernel is done
        // with it (never in flight, completed, or waited for above).
        drop(unsafe { Box::from_raw(self.overlapped) });
    }
}
