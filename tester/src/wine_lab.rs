//! The lab under Wine: what the selftest's lab cases need (a process exit, a removal, a
//! restart, a verdict), done with Win32 on the Wine prefix `cargo xtask wine` set up — revcall
//! as a kernel service with the root devnode `ROOT\REVCALL\0000` and the stand-in storport.sys.
//! On Windows there is no such lab (a removal there is `revcall-tester remove`, a restart is
//! `devcon install`, the verdict is Driver Verifier's), so it exists only where Wine is.
//!
//! * process exit: what the I/O manager does to a dying process's requests, CancelIoEx on each
//!   of its handles (the real exit, a killed process, is `cargo xtask wine`'s own check);
//! * removal and surprise removal: SetupAPI DIF_REMOVE on revcall's devnode; Wine's PnP
//!   manager sends SURPRISE_REMOVAL and then REMOVE_DEVICE for it, so both are one action;
//! * restart: the service stopped, the devnode written back, the service started, the adapter
//!   found again by `\\.\ScsiN:` (Wine does not enable the storage-port interface twice);
//! * verdict: the stand-in's log (`REVCALL_WINE_LOG`), which names a stuck rundown, a panic
//!   or a RequestComplete for an SRB nobody sent.

use std::ptr::{null, null_mut};
use std::time::{Duration, Instant};

use windows_sys::Win32::Foundation::{ERROR_SERVICE_NOT_ACTIVE, GetLastError};
use windows_sys::Win32::System::IO::CancelIoEx;
use windows_sys::Win32::System::LibraryLoader::{GetModuleHandleW, GetProcAddress};
use windows_sys::Win32::System::Registry::{
    HKEY, HKEY_LOCAL_MACHINE, KEY_SET_VALUE, REG_MULTI_SZ, REG_OPTION_NON_VOLATILE, REG_SZ,
    RegCloseKey, RegCreateKeyExW, RegSetValueExW,
};
use windows_sys::Win32::System::Services::{
    CloseServiceHandle, ControlService, OpenSCManagerW, OpenServiceW, QueryServiceStatus,
    SC_HANDLE, SC_MANAGER_CONNECT, SERVICE_CONTROL_STOP, SERVICE_QUERY_STATUS, SERVICE_START,
    SERVICE_STATUS, SERVICE_STOP, SERVICE_STOPPED, StartServiceW,
};

use crate::client::PROMPT;
use crate::transport::Lab;
use crate::windows::{Windows, remove_adapters};

/// The devnode and service `cargo xtask wine` installs.
const DEVNODE: &str = r"System\CurrentControlSet\Enum\ROOT\REVCALL\0000";
const SERVICE: &str = "revcall";
/// The SCSIAdapter class, as revcall.inf installs it.
const CLASS_GUID: &str = "{4d36e97b-e325-11ce-bfc1-08002be10318}";
/// The environment variable naming the stand-in's log (a Windows path).
pub const LOG_VARIABLE: &str = "REVCALL_WINE_LOG";
/// What the stand-in writes when something went wrong.
const LOG_ALARMS: &[&str] = &[
    "RUNDOWN STUCK",
    "storport: panic",
    "which the stand-in did not send",
];

fn wide(text: &str) -> Vec<u16> {
    text.encode_utf16().chain(Some(0)).collect()
}

/// Whether this process runs under Wine (its ntdll exports `wine_get_version`).
pub fn running_under_wine() -> bool {
    let ntdll = wide("ntdll.dll");
    // SAFETY: a NUL-terminated module name; ntdll is loaded in every process.
    let module = unsafe { GetModuleHandleW(ntdll.as_ptr()) };
    if module.is_null() {
        return false;
    }
    // SAFETY: a loaded module and a NUL-terminated ANSI name.
    unsafe { GetProcAddress(module, c"wine_get_version".as_ptr().cast()) }.is_some()
}

/// A service-manager handle, closed when dropped.
struct Sc(SC_HANDLE);

impl Drop for Sc {
    fn drop(&mut self) {
        // SAFETY: a handle from OpenSCManagerW/OpenServiceW, closed once.
        unsafe { CloseServiceHandle(self.0) };
    }
}

fn service() -> anyhow::Result<Sc> {
    // SAFETY: the local machine's active database; no strings.
    let manager = unsafe { OpenSCManagerW(null(), null(), SC_MANAGER_CONNECT) };
    anyhow::ensure!(
        !manager.is_null(),
        "OpenSCManagerW failed: {}",
        last_error()
    );
    let manager = Sc(manager);
    let name = wide(SERVICE);
    // SAFETY: an open manager and a NUL-terminated service name.
    let service = unsafe {
        OpenServiceW(
            manager.0,
            name.as_ptr(),
            SERVICE_START | SERVICE_STOP | SERVICE_QUERY_STATUS,
        )
    };
    anyhow::ensure!(
        !service.is_null(),
        "OpenServiceW({SERVICE}) failed: {}",
        last_error()
    );
    Ok(Sc(service))
}

fn last_error() -> u32 {
    // SAFETY: reads this thread's last-error value.
    unsafe { GetLastError() }
}

fn state(service: &Sc) -> anyhow::Result<u32> {
    let mut status = SERVICE_STATUS::default();
    // SAFETY: an open service handle and a local status.
    let ok = unsafe { QueryServiceStatus(service.0, &mut status) };
    anyhow::ensure!(ok != 0, "QueryServiceStatus failed: {}", last_error());
    Ok(status.dwCurrentState)
}

/// Stops the service and waits until it has (Wine refuses while a PnP device is left).
fn stop(service: &Sc) -> anyhow::Result<()> {
    let mut status = SERVICE_STATUS::default();
    // SAFETY: an open service handle and a local status.
    if unsafe { ControlService(service.0, SERVICE_CONTROL_STOP, &mut status) } == 0 {
        let error = last_error();
        anyhow::ensure!(
            error == ERROR_SERVICE_NOT_ACTIVE,
            "stopping {SERVICE}: error {error}"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while state(service)? != SERVICE_STOPPED {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{SERVICE} did not stop within 30 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Writes the devnode back as `cargo xtask wine` installed it.
fn write_devnode() -> anyhow::Result<()> {
    let path = wide(DEVNODE);
    let mut key: HKEY = null_mut();
    // SAFETY: a NUL-terminated subkey of HKLM and a local for the key.
    let created = unsafe {
        RegCreateKeyExW(
            HKEY_LOCAL_MACHINE,
            path.as_ptr(),
            0,
            null(),
            REG_OPTION_NON_VOLATILE,
            KEY_SET_VALUE,
            null(),
            &mut key,
            null_mut(),
        )
    };
    anyhow::ensure!(created == 0, "creating HKLM\\{DEVNODE}: error {created}");
    let hardware_ids: Vec<u16> = [r"root\revcall", ""]
        .iter()
        .flat_map(|id| wide(id))
        .collect();
    let values = [
        ("Service", REG_SZ, wide(SERVICE)),
        ("HardwareID", REG_MULTI_SZ, hardware_ids),
        ("ClassGUID", REG_SZ, wide(CLASS_GUID)),
    ];
    let mut result = Ok(());
    for (name, kind, data) in values {
        let name = wide(name);
        // SAFETY: an open key, a NUL-terminated name, and `data`'s bytes.
        let set = unsafe {
            RegSetValueExW(
                key,
                name.as_ptr(),
                0,
                kind,
                data.as_ptr().cast(),
                (data.len() * 2) as u32,
            )
        };
        if set != 0 {
            result = Err(anyhow::anyhow!(
                "writing a value of HKLM\\{DEVNODE}: error {set}"
            ));
        }
    }
    // SAFETY: the key opened above, closed once.
    unsafe { RegCloseKey(key) };
    result
}

/// The first `\\.\ScsiN:` that answers STATS as revcall.
fn find_port() -> Option<String> {
    (0..8).map(|n| format!(r"\\.\Scsi{n}:")).find(|path| {
        let transport = Windows::at(path.clone());
        crate::discovery::probe(&transport).is_ok_and(|note| note.starts_with("revcall:"))
    })
}

impl Lab for Windows {
    fn exit_process(&self, process: u32) {
        for handle in self.handles_of(process) {
            // SAFETY: an open handle of this process; NULL cancels all its I/O.
            unsafe { CancelIoEx(handle as _, null()) };
        }
    }

    fn remove(&self) {
        if let Err(error) = remove_adapters() {
            eprintln!("revcall-tester: the lab's removal failed: {error}");
        }
    }

    fn surprise_remove(&self) {
        self.remove();
    }

    fn restart(&self) -> anyhow::Result<()> {
        let service = service()?;
        stop(&service)?;
        write_devnode()?;
        // SAFETY: an open service handle; no arguments.
        if unsafe { StartServiceW(service.0, 0, null()) } == 0 {
            anyhow::bail!("starting {SERVICE}: error {}", last_error());
        }
        let deadline = Instant::now() + PROMPT * 4;
        loop {
            if let Some(path) = find_port() {
                self.set_path(path);
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "revcall did not come back after its restart"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn violations(&self) -> Vec<String> {
        let Some(path) = std::env::var_os(LOG_VARIABLE) else {
            return vec![format!(
                "{LOG_VARIABLE} is not set: no log to judge the run by"
            )];
        };
        match std::fs::read(&path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes)
                .lines()
                .filter(|line| LOG_ALARMS.iter().any(|alarm| line.contains(alarm)))
                .map(str::to_owned)
                .collect(),
            Err(error) => vec![format!("cannot read {}: {error}", path.to_string_lossy())],
        }
    }

    fn disk_write_read(&self, _lun: u8, _lba: u64, _data: &[u8]) -> Result<Vec<u8>, String> {
        Err("Wine has no disk class driver".into())
    }

    fn settle(&self) -> Duration {
        PROMPT
    }

    /// Seen under Wine: a request on an older handle fails in the call with
    /// STATUS_INVALID_DEVICE_REQUEST, not with the stand-in's STATUS_DELETE_PENDING [INFERRED:
    /// Wine's IoDeleteDevice takes the device away at once, where Windows keeps it while
    /// handles reference it and Storport answers STATUS_DELETE_PENDING].
    fn refusal_after_removal(&self) -> u32 {
        revcall_protocol::status::STATUS_INVALID_DEVICE_REQUEST
    }

    fn has_disk_class(&self) -> bool {
        false
    }
}
