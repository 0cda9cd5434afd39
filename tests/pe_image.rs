//! Opens the built revcall.sys and revcall-client.sys and proves each is a real kernel driver
//! image, as the Windows loader and Driver Verifier would see it.
//!
//! revcall.sys comes from `REVCALL_SYS` (set by `cargo xtask test`) or the default output path
//! of `cargo xtask build`; revcall-client.sys lies beside it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use object::LittleEndian as LE;
use object::pe::{
    IMAGE_DLLCHARACTERISTICS_WDM_DRIVER, IMAGE_FILE_MACHINE_AMD64, IMAGE_NT_OPTIONAL_HDR64_MAGIC,
    IMAGE_SCN_MEM_DISCARDABLE, IMAGE_SCN_MEM_EXECUTE, IMAGE_SCN_MEM_NOT_PAGED, IMAGE_SCN_MEM_WRITE,
    IMAGE_SUBSYSTEM_NATIVE,
};
use object::read::pe::{ImageNtHeaders, ImageOptionalHeader, PeFile64};

fn revcall_sys() -> PathBuf {
    std::env::var_os("REVCALL_SYS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("target/x86_64-pc-windows-msvc/release/revcall.sys")
        })
}

fn read(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| {
        panic!(
            "cannot read {} ({e}): build it with `cargo xtask build`",
            path.display()
        )
    })
}

struct Driver {
    name: &'static str,
    bytes: Vec<u8>,
}

impl Driver {
    fn pe(&self) -> PeFile64<'_> {
        PeFile64::parse(&*self.bytes)
            .unwrap_or_else(|e| panic!("{} is not a PE32+ image: {e}", self.name))
    }

    /// Imported functions by DLL name (lower case).
    fn imports(&self) -> BTreeMap<String, Vec<String>> {
        let pe = self.pe();
        let table = pe.import_table().unwrap().expect("an import table");
        let mut imports = BTreeMap::new();
        let mut descriptors = table.descriptors().unwrap();
        while let Some(descriptor) = descriptors.next().unwrap() {
            let dll = String::from_utf8_lossy(table.name(descriptor.name.get(LE)).unwrap())
                .to_lowercase();
            let mut names = Vec::new();
            let mut thunks = table
                .thunks(descriptor.original_first_thunk.get(LE))
                .unwrap();
            while let Some(thunk) = thunks.next::<object::pe::ImageNtHeaders64>().unwrap() {
                let import = table.import::<object::pe::ImageNtHeaders64>(thunk).unwrap();
                match import {
                    object::read::pe::Import::Name(_, name) => {
                        names.push(String::from_utf8_lossy(name).into_owned())
                    }
                    other => panic!("{dll}: import by ordinal {other:?}"),
                }
            }
            imports.insert(dll, names);
        }
        imports
    }
}

fn driver() -> Driver {
    Driver {
        name: "revcall.sys",
        bytes: read(&revcall_sys()),
    }
}

fn client() -> Driver {
    Driver {
        name: "revcall-client.sys",
        bytes: read(&revcall_sys().with_file_name("revcall-client.sys")),
    }
}

/// Both images, for the checks every driver must pass.
fn drivers() -> [Driver; 2] {
    [driver(), client()]
}

#[test]
fn is_a_pe32_plus_native_wdm_driver_for_amd64() {
    for driver in drivers() {
        is_a_native_wdm_driver(&driver);
    }
}

fn is_a_native_wdm_driver(driver: &Driver) {
    let pe = driver.pe();
    let nt = pe.nt_headers();
    let optional = nt.optional_header();
    assert_eq!(nt.file_header().machine.get(LE), IMAGE_FILE_MACHINE_AMD64);
    assert_eq!(optional.magic(), IMAGE_NT_OPTIONAL_HDR64_MAGIC, "PE32+");
    assert_eq!(
        optional.subsystem(),
        IMAGE_SUBSYSTEM_NATIVE,
        "subsystem NATIVE"
    );
    assert_ne!(
        optional.dll_characteristics() & IMAGE_DLLCHARACTERISTICS_WDM_DRIVER,
        0,
        "IMAGE_DLLCHARACTERISTICS_WDM_DRIVER (/DRIVER:WDM)"
    );
    assert_eq!(
        optional.section_alignment(),
        0x1000,
        "4 KiB section alignment"
    );
}

/// The PE checksum as ImageHlp's CheckSumMappedFile computes it: the file summed as 16-bit
/// little-endian words with end-around carry, the CheckSum field itself counted as 0, plus the
/// file's length.
fn pe_checksum(bytes: &[u8], checksum_offset: usize) -> u32 {
    let mut sum: u32 = 0;
    for (index, pair) in bytes.chunks(2).enumerate() {
        let at = index * 2;
        let word = if (checksum_offset..checksum_offset + 4).contains(&at) {
            0
        } else {
            u32::from(pair[0]) | pair.get(1).map_or(0, |&high| u32::from(high) << 8)
        };
        sum += word;
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    (sum & 0xFFFF) + (sum >> 16) + bytes.len() as u32
}

#[test]
fn the_checksum_is_set_and_right() {
    for driver in drivers() {
        checksum_is_right(&driver);
    }
}

fn checksum_is_right(driver: &Driver) {
    let pe_offset = u32::from_le_bytes(driver.bytes[0x3C..0x40].try_into().unwrap()) as usize;
    // Signature (4) + IMAGE_FILE_HEADER (20) + the CheckSum's offset in the optional header.
    let checksum_offset = pe_offset + 4 + 20 + 64;
    let stored = driver.pe().nt_headers().optional_header().check_sum.get(LE);
    assert_eq!(
        u32::from_le_bytes(
            driver.bytes[checksum_offset..checksum_offset + 4]
                .try_into()
                .unwrap()
        ),
        stored,
        "the CheckSum field's offset"
    );
    assert_ne!(
        stored, 0,
        "{}: a zero checksum: link with /RELEASE (Windows 7 refuses the driver)",
        driver.name
    );
    assert_eq!(stored, pe_checksum(&driver.bytes, checksum_offset));
}

#[test]
fn the_checksum_reader_counts_what_imagehlp_counts() {
    // Two words and a length: 0x0201 + 0x0403 + 4 bytes.
    assert_eq!(pe_checksum(&[1, 2, 3, 4], 100), 0x0604 + 4);
    // Carries fold back in: 0xFFFF + 0x0002 = 0x1_0001 → 0x0002.
    assert_eq!(pe_checksum(&[0xFF, 0xFF, 2, 0], 100), 2 + 4);
    // The four bytes of the field itself count as 0.
    assert_eq!(pe_checksum(&[1, 0, 9, 9, 9, 9, 2, 0], 2), 1 + 2 + 8);
}

#[test]
fn entry_point_is_driver_entry_and_the_only_export() {
    assert_eq!(exports(&driver()), ["DriverEntry"]);
}

#[test]
fn the_client_exports_its_entry_and_its_counters() {
    assert_eq!(
        exports(&client()),
        ["DriverEntry", "RevcallClientStats"],
        "storsim reads RevcallClientStats by name"
    );
}

/// The image's exports, by name; AddressOfEntryPoint must be DriverEntry's.
fn exports(driver: &Driver) -> Vec<String> {
    let pe = driver.pe();
    let directory = pe
        .data_directory(object::pe::IMAGE_DIRECTORY_ENTRY_EXPORT)
        .expect("an export table");
    let bytes = directory.data(pe.data(), &pe.section_table()).unwrap();
    // The merged .edata may start at any byte; object reads its u32 tables aligned.
    let mut aligned = vec![0u32; bytes.len().div_ceil(4)];
    let copy = &mut zerocopy::IntoBytes::as_mut_bytes(aligned.as_mut_slice())[..bytes.len()];
    copy.copy_from_slice(bytes);
    let exports =
        object::read::pe::ExportTable::parse(copy, directory.virtual_address.get(LE)).unwrap();
    let exported: Vec<(String, u32)> = exports
        .exports()
        .unwrap()
        .into_iter()
        .map(|e| {
            let name = String::from_utf8_lossy(e.name.expect("named export")).into_owned();
            let rva = match e.target {
                object::read::pe::ExportTarget::Address(rva) => rva,
                other => panic!("forwarded export {other:?}"),
            };
            (name, rva)
        })
        .collect();
    let entry = pe.nt_headers().optional_header().address_of_entry_point();
    assert!(
        exported.contains(&("DriverEntry".to_string(), entry)),
        "{}: AddressOfEntryPoint is DriverEntry: {exported:?}",
        driver.name
    );
    exported.into_iter().map(|(name, _)| name).collect()
}

#[test]
fn imports_only_from_storport_and_the_kernel() {
    let imports = driver().imports();
    for dll in imports.keys() {
        assert!(
            ["storport.sys", "ntoskrnl.exe", "hal.dll"].contains(&dll.as_str()),
            "unexpected import DLL {dll}: {imports:?}"
        );
    }
    let storport = &imports["storport.sys"];
    for needed in [
        "StorPortInitialize",
        "StorPortExtendedFunction",
        "StorPortNotification",
    ] {
        assert!(
            storport.iter().any(|f| f == needed),
            "{needed} not imported: {storport:?}"
        );
    }
    assert!(
        imports["ntoskrnl.exe"]
            .iter()
            .any(|f| f == "IoReleaseCancelSpinLock")
    );
}

#[test]
fn the_client_imports_only_the_kernel_a_caller_needs() {
    let imports = client().imports();
    assert_eq!(
        imports.keys().collect::<Vec<_>>(),
        ["ntoskrnl.exe"],
        "{imports:?}"
    );
    for needed in [
        "IoGetDeviceObjectPointer",
        "ObfDereferenceObject",
        "IoAllocateIrp",
        "IoReuseIrp",
        "IofCallDriver",
        "IoCancelIrp",
        "IoFreeIrp",
        "IoQueueWorkItemEx",
        "KeWaitForSingleObject",
    ] {
        assert!(
            imports["ntoskrnl.exe"].iter().any(|f| f == needed),
            "{needed} not imported: {imports:?}"
        );
    }
}

#[test]
fn no_section_is_writable_and_executable_and_code_is_not_paged() {
    for driver in drivers() {
        sections_are_safe(&driver);
    }
}

fn sections_are_safe(driver: &Driver) {
    let pe = driver.pe();
    let mut names = Vec::new();
    for section in pe.section_table().iter() {
        let name = String::from_utf8_lossy(section.raw_name())
            .trim_end_matches('\0')
            .to_string();
        let flags = section.characteristics.get(LE);
        assert!(
            flags & IMAGE_SCN_MEM_WRITE == 0 || flags & IMAGE_SCN_MEM_EXECUTE == 0,
            "{}: section {name} is writable and executable ({flags:#x})",
            driver.name
        );
        // Callbacks run at DISPATCH_LEVEL, where a page fault is a bug check.
        if flags & IMAGE_SCN_MEM_DISCARDABLE == 0 {
            assert_ne!(
                flags & IMAGE_SCN_MEM_NOT_PAGED,
                0,
                "{}: section {name} is pageable ({flags:#x})",
                driver.name
            );
        }
        names.push(name);
    }
    assert!(names.iter().any(|n| n == ".text"), "{names:?}");
    assert!(
        names.iter().any(|n| n == ".reloc"),
        "relocatable: {names:?}"
    );
}
