//! Loads the real revcall.sys, and corrupted copies of it, and checks exact outcomes.
//!
//! The image comes from `REVCALL_SYS` (set by CI) or the default output of `cargo xtask build`.
//! Expected values are computed from the file independently of the loader (with `object` and
//! raw header offsets), so a loader bug cannot confirm itself.

use std::collections::BTreeSet;
use std::path::PathBuf;

use object::LittleEndian as LE;
use object::pe::{
    IMAGE_FILE_MACHINE_ARM64, IMAGE_FILE_MACHINE_I386, IMAGE_REL_BASED_DIR64,
    IMAGE_SCN_MEM_EXECUTE, IMAGE_SCN_MEM_READ, IMAGE_SCN_MEM_WRITE, IMAGE_SUBSYSTEM_WINDOWS_CUI,
    ImageNtHeaders64,
};
use object::read::pe::{ImageNtHeaders, ImageOptionalHeader, PeFile64};

use super::{Image, LoadError};

fn revcall_path() -> PathBuf {
    std::env::var_os("REVCALL_SYS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../target/x86_64-pc-windows-msvc/release/revcall.sys")
        })
}

fn revcall() -> Vec<u8> {
    let path = revcall_path();
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read {} ({e}): run `cargo xtask build` first (or set REVCALL_SYS)",
            path.display()
        )
    })
}

fn pe(bytes: &[u8]) -> PeFile64<'_> {
    PeFile64::parse(bytes).expect("revcall.sys parses as PE32+")
}

/// A distinct, recognisable fake address per import (FNV-1a of `dll!name`).
fn fake_address(dll: &str, name: &str) -> usize {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in dll.bytes().chain([b'!']).chain(name.bytes()) {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    0x7e00_0000_0000 | (hash as usize & 0xffff_fff0)
}

fn resolve_all(dll: &str, name: &str) -> Option<usize> {
    Some(fake_address(dll, name))
}

fn resolve_none(_: &str, _: &str) -> Option<usize> {
    None
}

fn load(bytes: &[u8]) -> Result<Image, LoadError> {
    Image::load(bytes, "revcall.sys", &resolve_all)
}

/// Every import of the file as (dll, name, IAT slot RVA), read with object.
fn file_imports(bytes: &[u8]) -> Vec<(String, String, u32)> {
    let file = pe(bytes);
    let table = file.import_table().unwrap().expect("an import table");
    let mut imports = Vec::new();
    let mut descriptors = table.descriptors().unwrap();
    while let Some(descriptor) = descriptors.next().unwrap() {
        let dll = String::from_utf8(table.name(descriptor.name.get(LE)).unwrap().to_vec()).unwrap();
        let mut thunks = table
            .thunks(descriptor.original_first_thunk.get(LE))
            .unwrap();
        let mut slot = descriptor.first_thunk.get(LE);
        while let Some(thunk) = thunks.next::<ImageNtHeaders64>().unwrap() {
            let object::read::pe::Import::Name(_, name) =
                table.import::<ImageNtHeaders64>(thunk).unwrap()
            else {
                panic!("revcall.sys imports by ordinal");
            };
            imports.push((dll.clone(), String::from_utf8(name.to_vec()).unwrap(), slot));
            slot += 8;
        }
    }
    imports
}

/// File offset of a header structure `field` borrowed from `bytes` (address arithmetic only).
fn offset_of<T>(bytes: &[u8], field: &T) -> usize {
    field as *const T as usize - bytes.as_ptr() as usize
}

/// File offset of the PE signature (e_lfanew).
fn nt_offset(bytes: &[u8]) -> usize {
    u32::from_le_bytes(bytes[0x3c..0x40].try_into().unwrap()) as usize
}

/// Reads the little-endian u64 the loaded image holds at `rva`.
fn read_u64(image: &Image, rva: u32) -> u64 {
    let readable = image.sections().iter().any(|s| {
        (s.read || s.write) && rva >= s.rva && u64::from(rva) + 8 <= u64::from(s.rva + s.size)
    });
    assert!(readable, "RVA {rva:#x} is not in a readable section");
    let ptr = (image.base() + rva as usize) as *const u64;
    // SAFETY: the eight bytes lie inside a section the loader mapped readable (asserted above),
    // and `image` keeps the mapping alive for the duration of the read.
    unsafe { ptr.read_unaligned() }
}

/// Permissions (`r-x`, `---`, …) /proc/self/maps shows for the page holding `addr`.
fn page_permissions(maps: &str, addr: usize) -> String {
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let range = fields.next().unwrap();
        let perms = fields.next().unwrap();
        let (start, end) = range.split_once('-').unwrap();
        let start = usize::from_str_radix(start, 16).unwrap();
        let end = usize::from_str_radix(end, 16).unwrap();
        if (start..end).contains(&addr) {
            return perms[..3].to_owned();
        }
    }
    panic!("{addr:#x} is not mapped");
}

fn expect_err(bytes: &[u8]) -> LoadError {
    match load(bytes) {
        Ok(image) => panic!("loaded at {:#x} but should have been refused", image.base()),
        Err(e) => e,
    }
}

#[test]
fn loads_revcall_and_binds_every_iat_slot() {
    let bytes = revcall();
    let image = load(&bytes).expect("revcall.sys loads");
    let optional = pe(&bytes).nt_headers().optional_header();

    assert_eq!(image.name(), "revcall.sys");
    assert_ne!(image.base() as u64, optional.image_base());
    assert_eq!(image.base() % 0x1000, 0);
    assert_eq!(image.size(), optional.size_of_image() as usize);

    let expected = file_imports(&bytes);
    assert!(!expected.is_empty());
    let addresses: BTreeSet<usize> = expected
        .iter()
        .map(|(d, n, _)| fake_address(d, n))
        .collect();
    assert_eq!(addresses.len(), expected.len(), "fake addresses collide");
    let listed: Vec<(String, String)> = image
        .imports()
        .iter()
        .map(|i| (i.dll.clone(), i.name.clone()))
        .collect();
    let wanted: Vec<(String, String)> = expected
        .iter()
        .map(|(d, n, _)| (d.clone(), n.clone()))
        .collect();
    assert_eq!(listed, wanted);
    for (dll, name, slot) in &expected {
        assert_eq!(
            read_u64(&image, *slot),
            fake_address(dll, name) as u64,
            "IAT slot of {dll}!{name} at RVA {slot:#x}"
        );
    }
}

#[test]
fn dir64_targets_move_by_load_delta() {
    let bytes = revcall();
    let file = pe(&bytes);
    let image = load(&bytes).unwrap();
    let delta =
        (image.base() as u64).wrapping_sub(file.nt_headers().optional_header().image_base());
    let sections = file.section_table();
    let mut blocks = file
        .data_directories()
        .relocation_blocks(&*bytes, &sections)
        .unwrap()
        .expect("a relocation directory");
    let mut checked = 0;
    while let Some(block) = blocks.next().unwrap() {
        for reloc in block {
            if reloc.typ != IMAGE_REL_BASED_DIR64 {
                assert_eq!(reloc.typ, 0, "unexpected relocation type in revcall.sys");
                continue;
            }
            let (offset, _) = sections.pe_file_range_at(reloc.virtual_address).unwrap();
            let offset = offset as usize;
            let in_file = u64::from_le_bytes(bytes[offset..offset + 8].try_into().unwrap());
            assert_eq!(
                read_u64(&image, reloc.virtual_address),
                in_file.wrapping_add(delta),
                "DIR64 at RVA {:#x}",
                reloc.virtual_address
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "revcall.sys has no DIR64 relocation to check");
}

#[test]
fn sections_get_the_protection_their_characteristics_ask_for() {
    let bytes = revcall();
    let file = pe(&bytes);
    let image = load(&bytes).unwrap();

    let headers: Vec<_> = file.section_table().iter().collect();
    assert_eq!(image.sections().len(), headers.len());
    for (section, header) in image.sections().iter().zip(&headers) {
        let characteristics = header.characteristics.get(LE);
        assert_eq!(section.rva, header.virtual_address.get(LE));
        assert_eq!(section.size, header.virtual_size.get(LE));
        assert_eq!(section.read, characteristics & IMAGE_SCN_MEM_READ != 0);
        assert_eq!(section.write, characteristics & IMAGE_SCN_MEM_WRITE != 0);
        assert_eq!(
            section.execute,
            characteristics & IMAGE_SCN_MEM_EXECUTE != 0
        );
    }
    let text = image.sections().iter().find(|s| s.name == ".text").unwrap();
    assert!(text.read && text.execute && !text.write);
    let rdata = image
        .sections()
        .iter()
        .find(|s| s.name == ".rdata")
        .unwrap();
    assert!(rdata.read && !rdata.write && !rdata.execute);

    // Every page of the image, as the kernel sees it.
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    for offset in (0..image.size()).step_by(0x1000) {
        let expected = match image
            .sections()
            .iter()
            .find(|s| offset >= s.rva as usize && offset < (s.rva + s.size) as usize)
        {
            Some(s) => format!(
                "{}{}{}",
                if s.read || s.write { 'r' } else { '-' },
                if s.write { 'w' } else { '-' },
                if s.execute { 'x' } else { '-' }
            ),
            None if offset < file.nt_headers().optional_header().size_of_headers() as usize => {
                "r--".to_owned()
            }
            None => "---".to_owned(),
        };
        assert_eq!(
            page_permissions(&maps, image.base() + offset),
            expected,
            "page at RVA {offset:#x}"
        );
    }
    assert_eq!(
        page_permissions(&maps, image.base() + text.rva as usize),
        "r-x"
    );
}

#[test]
fn pages_past_every_section_are_inaccessible_and_data_is_read_write() {
    let mut bytes = revcall();
    let (size_at, pdata_at) = {
        let file = pe(&bytes);
        let optional = &file.nt_headers().optional_header;
        let pdata = file
            .section_table()
            .iter()
            .find(|s| s.raw_name() == b".pdata")
            .expect("a .pdata section");
        (
            offset_of(&bytes, &optional.size_of_image),
            offset_of(&bytes, &pdata.characteristics),
        )
    };
    // Two spare pages at the end, and .pdata turned into a writable data section.
    let size = u32::from_le_bytes(bytes[size_at..size_at + 4].try_into().unwrap());
    bytes[size_at..size_at + 4].copy_from_slice(&(size + 0x2000).to_le_bytes());
    let flags = u32::from_le_bytes(bytes[pdata_at..pdata_at + 4].try_into().unwrap());
    bytes[pdata_at..pdata_at + 4].copy_from_slice(&(flags | IMAGE_SCN_MEM_WRITE).to_le_bytes());

    let image = load(&bytes).unwrap();
    let pdata = image
        .sections()
        .iter()
        .find(|s| s.name == ".pdata")
        .unwrap();
    assert!(pdata.write && !pdata.execute);
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    assert_eq!(
        page_permissions(&maps, image.base() + pdata.rva as usize),
        "rw-"
    );
    let spare = image.base() + size as usize;
    assert_eq!(page_permissions(&maps, spare), "---");
    assert_eq!(page_permissions(&maps, spare + 0x1000), "---");
}

#[test]
fn unknown_imports_are_all_listed_in_one_error() {
    let bytes = revcall();
    let err = Image::load(&bytes, "revcall.sys", &resolve_none).unwrap_err();
    let LoadError::MissingImports(missing) = &err else {
        panic!("expected MissingImports, got {err}");
    };
    let expected: BTreeSet<String> = file_imports(&bytes)
        .into_iter()
        .map(|(dll, name, _)| format!("{dll}!{name}"))
        .collect();
    assert_eq!(
        missing.len(),
        expected.len(),
        "each missing import listed once"
    );
    assert_eq!(missing.iter().cloned().collect::<BTreeSet<_>>(), expected);
    assert_eq!(
        err.to_string(),
        format!(
            "driver imports routines storsim does not provide: {}",
            missing.join(", ")
        )
    );
}

#[test]
fn one_unknown_import_fails_the_load_and_names_only_it() {
    let bytes = revcall();
    let (dll, name, _) = file_imports(&bytes).into_iter().last().unwrap();
    let resolve = |d: &str, n: &str| (d != dll || n != name).then(|| fake_address(d, n));
    let err = Image::load(&bytes, "revcall.sys", &resolve).unwrap_err();
    let LoadError::MissingImports(missing) = err else {
        panic!("expected MissingImports, got {err}");
    };
    assert_eq!(missing, [format!("{dll}!{name}")]);
}

#[test]
fn writable_text_is_refused() {
    let mut bytes = revcall();
    let characteristics = {
        let file = pe(&bytes);
        let text = file
            .section_table()
            .iter()
            .find(|s| s.raw_name() == b".text")
            .expect("a .text section");
        offset_of(&bytes, &text.characteristics)
    };
    let value = u32::from_le_bytes(
        bytes[characteristics..characteristics + 4]
            .try_into()
            .unwrap(),
    );
    bytes[characteristics..characteristics + 4]
        .copy_from_slice(&(value | IMAGE_SCN_MEM_WRITE).to_le_bytes());
    let err = expect_err(&bytes);
    assert!(
        matches!(&err, LoadError::WritableExecutable { section } if section == ".text"),
        "{err:?}"
    );
}

#[test]
fn truncated_files_are_refused() {
    let bytes = revcall();
    let file = pe(&bytes);
    // Past the end of the last section's raw data the rest is padding the loader never reads.
    let needed = file
        .section_table()
        .iter()
        .map(|s| {
            let (offset, size) = s.pe_file_range();
            offset as usize + size as usize
        })
        .max()
        .unwrap();
    for len in 0..needed {
        assert!(
            load(&bytes[..len]).is_err(),
            "loaded when truncated to {len} bytes"
        );
    }
    for len in needed..=bytes.len() {
        load(&bytes[..len]).unwrap_or_else(|e| panic!("truncated to {len} bytes: {e}"));
    }
}

#[test]
fn garbage_is_refused() {
    let mut rng = fastrand::Rng::with_seed(0x005e_a1ed);
    let mut inputs: Vec<Vec<u8>> = vec![Vec::new(), b"MZ".to_vec(), vec![0; 4096]];
    let mut mz = vec![0u8; 4096];
    mz[..2].copy_from_slice(b"MZ");
    inputs.push(mz);
    for len in [1, 64, 512, 4096, 65536] {
        inputs.push((0..len).map(|_| rng.u8(..)).collect());
    }
    for input in &inputs {
        let err = expect_err(input);
        assert!(
            matches!(err, LoadError::Malformed(_)),
            "{} bytes: {err:?}",
            input.len()
        );
    }
}

#[test]
fn loads_from_a_misaligned_slice() {
    let bytes = revcall();
    let mut buffer = vec![0u8; bytes.len() + 1];
    buffer[1..].copy_from_slice(&bytes);
    let image = load(&buffer[1..]).expect("revcall.sys loads from an odd address");
    assert_eq!(image.imports().len(), file_imports(&bytes).len());
}

#[test]
fn wrong_machine_is_refused() {
    for (machine, named) in [
        (IMAGE_FILE_MACHINE_I386, "i386"),
        (IMAGE_FILE_MACHINE_ARM64, "ARM64"),
    ] {
        let mut bytes = revcall();
        let at = nt_offset(&bytes) + 4;
        bytes[at..at + 2].copy_from_slice(&machine.to_le_bytes());
        let err = expect_err(&bytes);
        assert!(
            matches!(err, LoadError::WrongMachine { machine: m } if m == machine),
            "{err:?}"
        );
        assert!(err.to_string().contains(named), "{err}");
    }
}

#[test]
fn pe32_is_refused() {
    let mut bytes = revcall();
    let at = nt_offset(&bytes) + 24;
    bytes[at..at + 2].copy_from_slice(&0x10bu16.to_le_bytes());
    let err = expect_err(&bytes);
    assert!(
        matches!(err, LoadError::NotPe32Plus { magic: 0x10b }),
        "{err:?}"
    );
}

#[test]
fn non_native_subsystem_is_named() {
    let mut bytes = revcall();
    let at = {
        let file = pe(&bytes);
        offset_of(&bytes, &file.nt_headers().optional_header.subsystem)
    };
    bytes[at..at + 2].copy_from_slice(&IMAGE_SUBSYSTEM_WINDOWS_CUI.to_le_bytes());
    let err = expect_err(&bytes);
    assert!(
        matches!(
            err,
            LoadError::NotNative {
                subsystem: IMAGE_SUBSYSTEM_WINDOWS_CUI
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("WINDOWS_CUI"), "{err}");
}

/// File offset of the first DIR64 entry of the relocation table, and the RVA it patches.
fn first_dir64(bytes: &[u8]) -> (usize, u32) {
    let file = pe(bytes);
    let dir = file
        .data_directory(object::pe::IMAGE_DIRECTORY_ENTRY_BASERELOC)
        .unwrap();
    let (start, size) = dir.file_range(&file.section_table()).unwrap();
    let table = &bytes[start as usize..(start + size) as usize];
    let page = u32::from_le_bytes(table[..4].try_into().unwrap());
    let entry = u16::from_le_bytes(table[8..10].try_into().unwrap());
    assert_eq!(
        entry >> 12,
        IMAGE_REL_BASED_DIR64,
        "first entry of the first block"
    );
    (start as usize + 8, page + u32::from(entry & 0xfff))
}

#[test]
fn unsupported_relocation_type_names_type_and_rva() {
    let mut bytes = revcall();
    let (at, rva) = first_dir64(&bytes);
    let entry = u16::from_le_bytes(bytes[at..at + 2].try_into().unwrap());
    // IMAGE_REL_BASED_HIGHLOW: a 32-bit relocation, never valid in an x64 image.
    bytes[at..at + 2].copy_from_slice(&((entry & 0xfff) | 3 << 12).to_le_bytes());
    let err = expect_err(&bytes);
    assert!(
        matches!(err, LoadError::RelocationType { kind: 3, rva: r } if r == rva),
        "{err:?}"
    );
    assert!(err.to_string().contains(&format!("{rva:#x}")), "{err}");
}

#[test]
fn relocation_outside_the_image_is_refused() {
    let mut bytes = revcall();
    let (at, _) = first_dir64(&bytes);
    // Move the first block's page past SizeOfImage.
    bytes[at - 8..at - 4].copy_from_slice(&0x4000_0000u32.to_le_bytes());
    let err = expect_err(&bytes);
    assert!(
        matches!(err, LoadError::RelocationTarget { rva: 0x4000_0000 }),
        "{err:?}"
    );
}

#[test]
fn ordinal_import_is_refused() {
    let mut bytes = revcall();
    let (at, dll) = {
        let file = pe(&bytes);
        let table = file.import_table().unwrap().unwrap();
        let descriptor = table.descriptors().unwrap().next().unwrap().unwrap();
        let dll = String::from_utf8(table.name(descriptor.name.get(LE)).unwrap().to_vec()).unwrap();
        let lookup = descriptor.original_first_thunk.get(LE);
        let (offset, _) = file.section_table().pe_file_range_at(lookup).unwrap();
        (offset as usize, dll)
    };
    bytes[at..at + 8].copy_from_slice(&(1u64 << 63 | 7).to_le_bytes());
    let err = expect_err(&bytes);
    assert!(
        matches!(&err, LoadError::OrdinalImport { dll: d, ordinal: 7 } if *d == dll),
        "{err:?}"
    );
}

#[test]
fn entry_point_is_driver_entry_export() {
    let bytes = revcall();
    let image = load(&bytes).unwrap();
    let driver_entry = image
        .export("DriverEntry")
        .expect("DriverEntry is exported");
    assert_eq!(image.entry(), driver_entry);
    assert_eq!(
        image.rva(image.entry()),
        Some(
            pe(&bytes)
                .nt_headers()
                .optional_header()
                .address_of_entry_point()
        )
    );
    assert_eq!(image.export("NoSuchRoutine"), None);
}

#[test]
fn contains_and_rva_cover_exactly_the_image() {
    let bytes = revcall();
    let image = load(&bytes).unwrap();
    let (base, size) = (image.base(), image.size());
    assert!(image.contains(base));
    assert!(image.contains(base + size - 1));
    assert!(!image.contains(base + size));
    assert!(!image.contains(base - 1));
    assert!(!image.contains(0));
    assert_eq!(image.rva(base), Some(0));
    assert_eq!(image.rva(base + size - 1), Some(size as u32 - 1));
    assert_eq!(image.rva(base + size), None);
    assert_eq!(image.rva(usize::MAX), None);
}

#[test]
fn single_byte_corruptions_never_crash() {
    let bytes = revcall();
    let mut rng = fastrand::Rng::with_seed(7);
    // Bias towards the headers and tables, where a flipped byte changes what the loader does.
    for _ in 0..4000 {
        let mut corrupt = bytes.clone();
        let at = if rng.bool() {
            rng.usize(..0x400)
        } else {
            rng.usize(..bytes.len())
        };
        corrupt[at] = rng.u8(..);
        // Either outcome is fine; a panic or a fault is not.
        drop(load(&corrupt));
    }
}

#[test]
fn image_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Image>();
}
