//! StorPortRegistryRead's values: REG_DWORDs under the service's `Parameters\Device` key, as
//! the INF writes them (`HKR,"Parameters\Device",…` in the service section) and as storsim
//! reads its configuration.

use core::ffi::c_void;
use core::ptr::null_mut;

use crate::miniport::Miniport;
use crate::nt::{self, OBJECT_ATTRIBUTES};

const SUBKEY: &str = r"\Parameters\Device";
/// Longest value name read, in characters.
const NAME_UNITS: usize = 64;

/// The REG_DWORD `name` (NUL-terminated ANSI) of the miniport's device parameters.
///
/// # Safety
///
/// `name` points to a NUL-terminated byte string. PASSIVE_LEVEL.
pub unsafe fn read_dword(miniport: &Miniport, name: *const u8) -> Option<u32> {
    let mut path = [0u16; 320];
    let service = miniport.registry_path();
    let length = service.len() + SUBKEY.len();
    if length > path.len() {
        return None;
    }
    path[..service.len()].copy_from_slice(service);
    for (slot, unit) in path[service.len()..].iter_mut().zip(SUBKEY.encode_utf16()) {
        *slot = unit;
    }
    let mut value_name = [0u16; NAME_UNITS];
    let mut name_len = 0;
    loop {
        // SAFETY: a NUL-terminated string (the caller's promise), read up to its NUL.
        let byte = unsafe { name.wrapping_add(name_len).read() };
        if byte == 0 {
            break;
        }
        if name_len == NAME_UNITS {
            return None;
        }
        value_name[name_len] = u16::from(byte);
        name_len += 1;
    }
    let key_name = nt::unicode(&path[..length]);
    let attributes = OBJECT_ATTRIBUTES {
        Length: size_of::<OBJECT_ATTRIBUTES>() as u32,
        RootDirectory: null_mut(),
        ObjectName: &key_name,
        Attributes: nt::OBJ_CASE_INSENSITIVE | nt::OBJ_KERNEL_HANDLE,
        SecurityDescriptor: null_mut(),
        SecurityQualityOfService: null_mut(),
    };
    let mut key: *mut c_void = null_mut();
    // SAFETY: locals for the handle and the attributes, which name a live string.
    if unsafe { nt::ZwOpenKey(&mut key, nt::KEY_READ, &attributes) } != nt::STATUS_SUCCESS {
        return None;
    }
    // KEY_VALUE_PARTIAL_INFORMATION: TitleIndex, Type, DataLength, then the data.
    let mut info = [0u32; 8];
    let mut returned = 0u32;
    let value = nt::unicode(&value_name[..name_len]);
    // SAFETY: an open key handle, a live name and a local buffer of the size given.
    let status = unsafe {
        nt::ZwQueryValueKey(
            key,
            &value,
            nt::KEY_VALUE_PARTIAL_INFORMATION,
            info.as_mut_ptr().cast(),
            size_of_val(&info) as u32,
            &mut returned,
        )
    };
    // SAFETY: the handle ZwOpenKey opened, closed once.
    unsafe { nt::ZwClose(key) };
    (status == nt::STATUS_SUCCESS && info[1] == nt::REG_DWORD && info[2] == 4).then_some(info[3])
}
