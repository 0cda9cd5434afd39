//! The Windows backend: the installed revcall adapter, opened for read and write with
//! FILE_FLAG_OVERLAPPED; every request is an overlapped DeviceIoControl with its own event, so
//! any number can be in flight (Storport answers every one STATUS_PENDING).
//!
//! revcall's adapters are found through the device interface Storport registers for every
//! adapter it starts (GUID_DEVINTERFACE_STORAGEPORT), keeping only devnodes with revcall's
//! hardware id ([`crate::discovery`]); `--port N` opens `\\.\ScsiN:` instead. What a
//! DeviceIoControl result means, and when a request may be waited on, is decided in
//! [`crate::overlapped`]; this file only makes the calls.

use std::mem::{offset_of, size_of};
use std::ptr::{NonNull, null, null_mut};
use std::sync::Mutex;
use std::time::Duration;

use revcall_protocol::IOCTL_MINIPORT_PROCESS_SERVICE_IRP;
use windows_sys::Win32::Devices::DeviceAndDriverInstallation::{
    DIF_REMOVE, DIGCF_ALLCLASSES, DIGCF_DEVICEINTERFACE, DIGCF_PRESENT, HDEVINFO,
    SP_DEVICE_INTERFACE_DATA, SP_DEVICE_INTERFACE_DETAIL_DATA_W, SP_DEVINFO_DATA, SPDRP_HARDWAREID,
    SetupDiCallClassInstaller, SetupDiDestroyDeviceInfoList, SetupDiEnumDeviceInfo,
    SetupDiEnumDeviceInterfaces, SetupDiGetClassDevsW, SetupDiGetDeviceInstanceIdW,
    SetupDiGetDeviceInterfaceDetailW, SetupDiGetDeviceRegistryPropertyW,
};
use windows_sys::Win32::Foundation::{
    CloseHandle, ERROR_ACCESS_DENIED, GENERIC_READ, GENERIC_WRITE, GetLastError, HANDLE,
    INVALID_HANDLE_VALUE, WAIT_OBJECT_0,
};
use windows_sys::Win32::Storage::FileSystem::{
    CreateFileW, FILE_FLAG_OVERLAPPED, FILE_SHARE_READ, FILE_SHARE_WRITE, OPEN_EXISTING,
};
use windows_sys::Win32::System::IO::{CancelIoEx, DeviceIoControl, OVERLAPPED};
use windows_sys::Win32::System::Ioctl::GUID_DEVINTERFACE_STORAGEPORT;
use windows_sys::Win32::System::Threading::{CreateEventW, INFINITE, WaitForSingleObject};
use windows_sys::core::GUID;

use crate::discovery::{self, Found};
use crate::overlapped::{self, Io, Request, status_from_win32};
use crate::transport::{Completion, Transport, TransportError};

/// One revcall adapter, by the path that opens it.
pub struct Windows {
    /// Changes only when the Wine lab restarts the adapter.
    path: Mutex<String>,
    /// Every open handle with the process id it was opened for (the lab's process exit).
    handles: Mutex<Vec<(u32, Handle)>>,
    /// Running under Wine: [`crate::wine_lab`] is this transport's lab.
    wine: bool,
}

/// An open handle (a kernel HANDLE as an integer, so it is Copy + Send).
pub type Handle = usize;

/// A request the kernel accepted ([`Request`] waits for it before its buffers go).
pub type Pending = Request<Win32Io>;

/// The system side of one overlapped request: its OVERLAPPED, the event in it and the output
/// buffer.
///
/// # Invariants
///
/// `overlapped` and `output` come from `Box::into_raw` and are freed only by `Drop`. While the
/// request is in flight the kernel writes both, so neither is ever reached through a `&` or
/// `&mut` (only raw pointers and the system calls); `output` is read only after completion.
/// Only [`Request`] holds one that was in flight, and it waits for the completion before
/// dropping it.
pub struct Win32Io {
    file: Handle,
    event: Handle,
    overlapped: NonNull<OVERLAPPED>,
    output: NonNull<[u8]>,
}

// SAFETY: the allocations are owned by this value (Invariants); the kernel's writes are
// observed only through the volatile status read and the system calls, and HANDLEs are
// process-wide, usable from any thread.
unsafe impl Send for Win32Io {}
// SAFETY: shared access reads the status word (volatile), calls the thread-safe
// WaitForSingleObject on the event/CancelIoEx, or reads `output` after completion, when nothing
// writes it.
unsafe impl Sync for Win32Io {}

impl Win32Io {
    /// A fresh OVERLAPPED with its own manual-reset event, and an `out_len`-byte buffer.
    fn new(file: Handle, out_len: u32) -> Result<Self, u32> {
        // SAFETY: a manual-reset, initially clear, unnamed event with default security.
        let event = unsafe { CreateEventW(null(), 1, 0, null()) };
        if event.is_null() {
            // SAFETY: reads this thread's last-error value.
            return Err(status_from_win32(unsafe { GetLastError() }));
        }
        let overlapped = Box::new(OVERLAPPED {
            hEvent: event,
            ..OVERLAPPED::default()
        });
        let output = vec![0u8; out_len as usize].into_boxed_slice();
        Ok(Self {
            file,
            event: event as Handle,
            overlapped: NonNull::from(Box::leak(overlapped)),
            output: NonNull::from(Box::leak(output)),
        })
    }

    /// The output buffer for DeviceIoControl: NULL when empty.
    fn output_ptr(&self) -> *mut std::ffi::c_void {
        if self.output.is_empty() {
            null_mut()
        } else {
            self.output.as_ptr().cast()
        }
    }
}

impl Io for Win32Io {
    fn status(&self) -> usize {
        let internal = self
            .overlapped
            .as_ptr()
            .wrapping_byte_add(offset_of!(OVERLAPPED, Internal))
            .cast::<usize>();
        // SAFETY: `Internal` of our live, aligned OVERLAPPED (Invariants), read through a raw
        // pointer and volatile because the kernel stores the final status there.
        unsafe { internal.read_volatile() }
    }

    fn result(&self, ms: u32) -> Option<u32> {
        // What GetOverlappedResultEx does, without the file handle (which the owner may have
        // closed with the request still in flight): the kernel sets the event when the request
        // completes, after writing Internal and InternalHigh.
        // SAFETY: the request's own manual-reset event, live until this value drops.
        if unsafe { WaitForSingleObject(self.event as HANDLE, ms) } != WAIT_OBJECT_0 {
            return None;
        }
        let internal_high = self
            .overlapped
            .as_ptr()
            .wrapping_byte_add(offset_of!(OVERLAPPED, InternalHigh))
            .cast::<usize>();
        // SAFETY: `InternalHigh` of our live, aligned OVERLAPPED (Invariants), written by the
        // kernel before it set the event: the bytes transferred.
        Some(unsafe { internal_high.read_volatile() } as u32)
    }

    fn cancel(&self) {
        // SAFETY: cancels at most the I/O this OVERLAPPED describes on this handle.
        unsafe { CancelIoEx(self.file as HANDLE, self.overlapped.as_ptr()) };
    }

    fn wait_done(&self) {
        // SAFETY: the request's own event (see `result`); it is set once the I/O has
        // completed, after which the kernel no longer writes the OVERLAPPED or the buffer.
        unsafe { WaitForSingleObject(self.event as HANDLE, INFINITE) };
    }

    fn output(&self, bytes: u32) -> Vec<u8> {
        let len = (bytes as usize).min(self.output.len());
        // SAFETY: `len` bytes of our buffer (Invariants), read after the request completed, so
        // nothing writes them now.
        unsafe { std::slice::from_raw_parts(self.output.as_ptr().cast::<u8>(), len) }.to_vec()
    }
}

impl Drop for Win32Io {
    fn drop(&mut self) {
        // SAFETY: the event was created by `new` for this request only.
        unsafe { CloseHandle(self.event as HANDLE) };
        // SAFETY: from `Box::leak` in `new`, freed once here; no I/O is in flight (a failed
        // call never was, and `Request` waits for the completion before dropping this).
        drop(unsafe { Box::from_raw(self.overlapped.as_ptr()) });
        // SAFETY: as for the OVERLAPPED, the buffer from `Box::leak` in `new`.
        drop(unsafe { Box::from_raw(self.output.as_ptr()) });
    }
}

fn wide(text: &str) -> Vec<u16> {
    text.encode_utf16().chain(Some(0)).collect()
}

/// A UTF-16 string from little-endian bytes, up to its first NUL.
fn utf16_until_nul(bytes: &[u8]) -> Vec<u16> {
    bytes
        .chunks_exact(2)
        .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
        .take_while(|&unit| unit != 0)
        .collect()
}

impl Windows {
    /// The adapter at `\\.\ScsiN:` if given, else the first revcall adapter found.
    pub fn open_adapter(port: Option<u32>) -> Result<Self, TransportError> {
        let path = match port {
            Some(port) => Some(format!(r"\\.\Scsi{port}:")),
            None => interfaces()?.into_iter().next(),
        };
        path.map(Self::at).ok_or_else(|| {
            TransportError::NoAdapter(
                " (is revcall installed and started? `pnputil /enum-devices /class SCSIAdapter`)"
                    .into(),
            )
        })
    }

    /// The path this adapter is opened by.
    /// The transport for the adapter at `path`.
    pub(crate) fn at(path: String) -> Self {
        Self {
            path: Mutex::new(path),
            handles: Mutex::new(Vec::new()),
            wine: crate::wine_lab::running_under_wine(),
        }
    }

    pub fn path(&self) -> String {
        self.path.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Points the transport at another path (the Wine lab's restart).
    pub(crate) fn set_path(&self, path: String) {
        *self.path.lock().unwrap_or_else(|e| e.into_inner()) = path;
    }

    /// The open handles of `process`.
    pub(crate) fn handles_of(&self, process: u32) -> Vec<Handle> {
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(owner, _)| *owner == process)
            .map(|(_, handle)| *handle)
            .collect()
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
                null(),
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

/// Every revcall adapter, with what its STATS said.
///
/// # Errors
///
/// Access denied (not elevated), or SetupAPI failing to enumerate.
pub fn list() -> Result<Vec<Found>, TransportError> {
    discovery::survey(
        interfaces()?
            .into_iter()
            .map(|path| (path.clone(), Windows::at(path))),
    )
}

/// Removes every revcall devnode, as Device Manager's "Uninstall device" does (SetupAPI's
/// DIF_REMOVE: PnP removes the device, Storport calls HwCompleteServiceIrp, parked requests
/// end). The devnodes are found by hardware id among the root-enumerated ones, not through the
/// storage-port interface, so one whose interface is not enabled is found too. Returns their
/// device instance ids.
///
/// # Errors
///
/// SetupAPI failing to enumerate, or DIF_REMOVE failing on one (not elevated: access denied).
pub fn remove_adapters() -> Result<Vec<String>, TransportError> {
    let set = DeviceInfoSet::of(None, Some("ROOT"), DIGCF_ALLCLASSES, "ROOT")?;
    let mut ours = Vec::new();
    for index in 0.. {
        let mut device = SP_DEVINFO_DATA {
            cbSize: size_of::<SP_DEVINFO_DATA>() as u32,
            ..SP_DEVINFO_DATA::default()
        };
        // SAFETY: `set` is live; `device` is a local with its cbSize set. FALSE ends the
        // enumeration (ERROR_NO_MORE_ITEMS).
        if unsafe { SetupDiEnumDeviceInfo(set.0, index, &mut device) } == 0 {
            break;
        }
        if hardware_ids(&set, &device).is_some_and(|ids| discovery::is_revcall(&ids)) {
            ours.push((instance_id(&set, &device), device));
        }
    }
    let mut removed = Vec::new();
    for (id, device) in ours {
        // SAFETY: `device` belongs to `set`, which is live; DIF_REMOVE takes nothing else.
        if unsafe { SetupDiCallClassInstaller(DIF_REMOVE, set.0, &device) } == 0 {
            // SAFETY: reads this thread's last-error value.
            let error = unsafe { GetLastError() };
            return Err(if error == ERROR_ACCESS_DENIED {
                TransportError::AccessDenied(id)
            } else {
                TransportError::System(format!("DIF_REMOVE on {id} failed with error {error:#x}"))
            });
        }
        removed.push(id);
    }
    Ok(removed)
}

/// The devnode's instance id (`ROOT\REVCALL\0000`), or "" if SetupAPI will not say.
fn instance_id(set: &DeviceInfoSet, device: &SP_DEVINFO_DATA) -> String {
    let mut buffer = [0u16; 256];
    // SAFETY: `device` belongs to the live `set`; the buffer's length is given in units.
    let ok = unsafe {
        SetupDiGetDeviceInstanceIdW(
            set.0,
            device,
            buffer.as_mut_ptr(),
            buffer.len() as u32,
            null_mut(),
        )
    };
    if ok == 0 {
        return String::new();
    }
    let units: Vec<u16> = buffer.iter().copied().take_while(|&u| u != 0).collect();
    String::from_utf16_lossy(&units)
}

/// A SetupAPI device information set, destroyed when dropped.
struct DeviceInfoSet(HDEVINFO);

impl DeviceInfoSet {
    /// `SetupDiGetClassDevsW(class, enumerator, NULL, flags)`; `what` names the query in the
    /// error.
    fn of(
        class: Option<&GUID>,
        enumerator: Option<&str>,
        flags: u32,
        what: &str,
    ) -> Result<Self, TransportError> {
        let enumerator = enumerator.map(wide);
        let class = class.map_or(null(), std::ptr::from_ref);
        let enumerator = enumerator.as_ref().map_or(null(), |e| e.as_ptr());
        // SAFETY: `class` is NULL or a live GUID, `enumerator` NULL or a live NUL-terminated
        // string; no parent window.
        let set = unsafe { SetupDiGetClassDevsW(class, enumerator, null_mut(), flags) };
        if set == INVALID_HANDLE_VALUE as HDEVINFO {
            // SAFETY: reads this thread's last-error value.
            let error = unsafe { GetLastError() };
            return Err(TransportError::System(format!(
                "SetupDiGetClassDevsW({what}) failed with error {error}"
            )));
        }
        Ok(Self(set))
    }
}

impl Drop for DeviceInfoSet {
    fn drop(&mut self) {
        // SAFETY: a set from SetupDiGetClassDevsW, destroyed once.
        unsafe { SetupDiDestroyDeviceInfoList(self.0) };
    }
}

/// The interface paths of the started Storport adapters whose devnode is revcall's (by
/// hardware id): only these are ever sent revcall's requests.
fn interfaces() -> Result<Vec<String>, TransportError> {
    let set = DeviceInfoSet::of(
        Some(&GUID_DEVINTERFACE_STORAGEPORT),
        None,
        DIGCF_PRESENT | DIGCF_DEVICEINTERFACE,
        "GUID_DEVINTERFACE_STORAGEPORT",
    )?;
    let mut found = Vec::new();
    for index in 0.. {
        let mut interface = SP_DEVICE_INTERFACE_DATA {
            cbSize: size_of::<SP_DEVICE_INTERFACE_DATA>() as u32,
            ..SP_DEVICE_INTERFACE_DATA::default()
        };
        // SAFETY: `set` is live; `interface` is a local with its cbSize set. FALSE ends the
        // enumeration (ERROR_NO_MORE_ITEMS).
        let more = unsafe {
            SetupDiEnumDeviceInterfaces(
                set.0,
                null(),
                &GUID_DEVINTERFACE_STORAGEPORT,
                index,
                &mut interface,
            )
        };
        if more == 0 {
            break;
        }
        if let Some((path, device)) = interface_detail(&set, &interface)
            && hardware_ids(&set, &device).is_some_and(|ids| discovery::is_revcall(&ids))
        {
            found.push(path);
        }
    }
    Ok(found)
}

/// The interface's path (what CreateFileW opens) and its devnode.
fn interface_detail(
    set: &DeviceInfoSet,
    interface: &SP_DEVICE_INTERFACE_DATA,
) -> Option<(String, SP_DEVINFO_DATA)> {
    let mut required = 0u32;
    // SAFETY: the size query: no buffer, `required` a local the call writes. It fails with
    // ERROR_INSUFFICIENT_BUFFER, having set `required`.
    unsafe {
        SetupDiGetDeviceInterfaceDetailW(set.0, interface, null_mut(), 0, &mut required, null_mut())
    };
    let header = size_of::<SP_DEVICE_INTERFACE_DETAIL_DATA_W>();
    if (required as usize) < header {
        return None;
    }
    // u32 units: the detail structure's alignment. Its first field, cbSize, is the size of the
    // fixed part, as the API requires.
    const _: () = assert!(offset_of!(SP_DEVICE_INTERFACE_DETAIL_DATA_W, cbSize) == 0);
    let mut buffer = vec![0u32; (required as usize).div_ceil(4)];
    buffer[0] = header as u32;
    let detail = buffer
        .as_mut_ptr()
        .cast::<SP_DEVICE_INTERFACE_DETAIL_DATA_W>();
    let mut device = SP_DEVINFO_DATA {
        cbSize: size_of::<SP_DEVINFO_DATA>() as u32,
        ..SP_DEVINFO_DATA::default()
    };
    // SAFETY: `detail` points to `required` writable bytes (rounded up to whole u32s);
    // `device` is a local with its cbSize set.
    let ok = unsafe {
        SetupDiGetDeviceInterfaceDetailW(
            set.0,
            interface,
            detail,
            required,
            null_mut(),
            &mut device,
        )
    };
    if ok == 0 {
        return None;
    }
    let bytes: Vec<u8> = buffer.iter().flat_map(|unit| unit.to_le_bytes()).collect();
    let path = utf16_until_nul(&bytes[offset_of!(SP_DEVICE_INTERFACE_DETAIL_DATA_W, DevicePath)..]);
    Some((String::from_utf16_lossy(&path), device))
}

/// The devnode's hardware ids (REG_MULTI_SZ, UTF-16).
fn hardware_ids(set: &DeviceInfoSet, device: &SP_DEVINFO_DATA) -> Option<Vec<u16>> {
    let mut required = 0u32;
    // SAFETY: the size query: no buffer; fails with ERROR_INSUFFICIENT_BUFFER, setting
    // `required`.
    unsafe {
        SetupDiGetDeviceRegistryPropertyW(
            set.0,
            device,
            SPDRP_HARDWAREID,
            null_mut(),
            null_mut(),
            0,
            &mut required,
        )
    };
    if required == 0 {
        return None;
    }
    let mut buffer = vec![0u8; required as usize];
    // SAFETY: `buffer` has `required` writable bytes.
    let ok = unsafe {
        SetupDiGetDeviceRegistryPropertyW(
            set.0,
            device,
            SPDRP_HARDWAREID,
            null_mut(),
            buffer.as_mut_ptr(),
            required,
            null_mut(),
        )
    };
    (ok != 0).then(|| {
        buffer
            .chunks_exact(2)
            .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
            .collect()
    })
}

impl Transport for Windows {
    type Handle = Handle;
    type Pending = Pending;

    fn name(&self) -> &'static str {
        "windows"
    }

    fn open(&self, process: u32) -> Result<Handle, TransportError> {
        let handle = Self::open_path(&self.path())?;
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((process, handle));
        Ok(handle)
    }

    fn submit(&self, handle: Handle, input: &[u8], out_len: u32) -> Result<Pending, u32> {
        let io = Win32Io::new(handle, out_len)?;
        overlapped::issue(io, |io| {
            // SAFETY: METHOD_BUFFERED copies the input during the call; the output buffer and
            // the OVERLAPPED belong to `io`, which stays alive until the I/O has completed:
            // `issue` keeps it in a `Request` (which waits before dropping it) unless the call
            // failed, when the kernel holds neither.
            let returned = unsafe {
                DeviceIoControl(
                    handle as HANDLE,
                    IOCTL_MINIPORT_PROCESS_SERVICE_IRP,
                    if input.is_empty() {
                        null()
                    } else {
                        input.as_ptr().cast()
                    },
                    input.len() as u32,
                    io.output_ptr(),
                    out_len,
                    null_mut(),
                    io.overlapped.as_ptr(),
                )
            };
            if returned != 0 {
                (true, 0)
            } else {
                // SAFETY: reads this thread's last-error value, right after the call.
                (false, unsafe { GetLastError() })
            }
        })
    }

    fn wait(&self, pending: &Pending, limit: Duration) -> Option<Completion> {
        pending.wait(limit)
    }

    fn cancel(&self, _handle: Handle, pending: &Pending) {
        pending.cancel();
    }

    fn cancel_all(&self, handle: Handle) {
        // SAFETY: NULL cancels every I/O this process issued on the handle.
        unsafe { CancelIoEx(handle as HANDLE, null()) };
    }

    fn close(&self, handle: Handle) {
        self.handles
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(_, open)| *open != handle);
        // SAFETY: a handle from CreateFileW, closed once by its owner.
        unsafe { CloseHandle(handle as HANDLE) };
    }

    fn lab(&self) -> Option<&dyn crate::transport::Lab> {
        self.wine.then_some(self as &dyn crate::transport::Lab)
    }
}
