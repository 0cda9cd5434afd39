//! Why a driver image was refused, worded the way a driver author needs to read it.

use std::io;

/// Why [`Image::load`](super::Image::load) refused a driver image.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file is not a PE image, or its headers or tables are malformed.
    #[error("malformed PE image: {0}")]
    Malformed(object::read::Error),
    /// A PE image, but not PE32+ (the only format of an x64 driver).
    #[error("not a PE32+ image: optional header magic {magic:#x}, a 64-bit image has 0x20b")]
    NotPe32Plus { magic: u16 },
    /// Built for another processor.
    #[error(
        "built for machine {machine:#06x} ({}), not AMD64 (0x8664)",
        machine_name(*machine)
    )]
    WrongMachine { machine: u16 },
    /// Not a kernel-mode image.
    #[error(
        "subsystem is {} ({subsystem}), not NATIVE (1): not a kernel driver",
        subsystem_name(*subsystem)
    )]
    NotNative { subsystem: u16 },
    /// Linked without base relocations, so it can only run at its preferred base.
    #[error("the image has its relocations stripped and cannot be loaded away from ImageBase")]
    RelocationsStripped,
    /// SizeOfImage is zero or implausibly large.
    #[error("SizeOfImage {size:#x} is zero or above the {limit:#x}-byte limit")]
    ImageSize { size: u32, limit: usize },
    /// Sections could not each get their own page protection.
    #[error("SectionAlignment {alignment:#x} is not a multiple of the 4 KiB page size")]
    SectionAlignment { alignment: u32 },
    /// SizeOfHeaders does not fit the file, the image or the first section.
    #[error("SizeOfHeaders {size:#x} exceeds the file, the image or the first section")]
    Headers { size: u32 },
    /// A section is misaligned, overlaps another, lies outside the image or its raw data
    /// outside the file.
    #[error("section {section} (RVA {rva:#x}, {size:#x} bytes): {what}")]
    SectionLayout {
        section: String,
        rva: u32,
        size: u32,
        what: &'static str,
    },
    /// A section is both writable and executable.
    #[error(
        "section {section} is both writable and executable (refused, as Windows does under HVCI)"
    )]
    WritableExecutable { section: String },
    /// AddressOfEntryPoint is not inside an executable section.
    #[error("entry point RVA {rva:#x} is not inside an executable section")]
    EntryPoint { rva: u32 },
    /// The base relocation table is malformed.
    #[error("malformed base relocation table: {0}")]
    Relocations(object::read::Error),
    /// A base relocation of a type x64 images do not use.
    #[error(
        "base relocation type {kind} at RVA {rva:#x} is not supported (only DIR64 (10) and ABSOLUTE (0))"
    )]
    RelocationType { kind: u16, rva: u32 },
    /// A base relocation points outside the image.
    #[error("base relocation at RVA {rva:#x} points outside the image")]
    RelocationTarget { rva: u32 },
    /// The import table is malformed.
    #[error("malformed import table: {0}")]
    Imports(object::read::Error),
    /// An import by ordinal: storsim binds by name only.
    #[error("imports {dll} ordinal {ordinal}; only imports by name can be bound")]
    OrdinalImport { dll: String, ordinal: u16 },
    /// An IAT slot lies outside every section.
    #[error("the IAT slot of {dll}!{name} at RVA {rva:#x} is not inside a section")]
    ImportSlot { dll: String, name: String, rva: u64 },
    /// Imports the resolver does not know, each as `dll!name`.
    #[error("driver imports routines storsim does not provide: {}", .0.join(", "))]
    MissingImports(Vec<String>),
    /// The export table is malformed.
    #[error("malformed export table: {0}")]
    Exports(object::read::Error),
    /// A named export whose address lies outside the image.
    #[error("export {name} at RVA {rva:#x} lies outside the image")]
    ExportTarget { name: String, rva: u32 },
    /// mmap or mprotect failed.
    #[error("cannot {what} the image: {source}")]
    Memory {
        what: &'static str,
        source: io::Error,
    },
}

/// Name of an IMAGE_FILE_MACHINE_* value.
fn machine_name(machine: u16) -> &'static str {
    use object::pe::*;
    match machine {
        IMAGE_FILE_MACHINE_I386 => "i386",
        IMAGE_FILE_MACHINE_AMD64 => "AMD64",
        IMAGE_FILE_MACHINE_ARM64 => "ARM64",
        IMAGE_FILE_MACHINE_ARMNT => "ARM Thumb-2",
        IMAGE_FILE_MACHINE_ARM => "ARM",
        IMAGE_FILE_MACHINE_IA64 => "IA-64",
        IMAGE_FILE_MACHINE_ARM64EC => "ARM64EC",
        _ => "unknown",
    }
}

/// Name of an IMAGE_SUBSYSTEM_* value.
fn subsystem_name(subsystem: u16) -> &'static str {
    use object::pe::*;
    match subsystem {
        IMAGE_SUBSYSTEM_UNKNOWN => "UNKNOWN",
        IMAGE_SUBSYSTEM_NATIVE => "NATIVE",
        IMAGE_SUBSYSTEM_WINDOWS_GUI => "WINDOWS_GUI (a Windows GUI program)",
        IMAGE_SUBSYSTEM_WINDOWS_CUI => "WINDOWS_CUI (a Windows console program)",
        IMAGE_SUBSYSTEM_OS2_CUI => "OS2_CUI",
        IMAGE_SUBSYSTEM_POSIX_CUI => "POSIX_CUI",
        IMAGE_SUBSYSTEM_NATIVE_WINDOWS => "NATIVE_WINDOWS (a Win9x driver)",
        IMAGE_SUBSYSTEM_WINDOWS_CE_GUI => "WINDOWS_CE_GUI",
        IMAGE_SUBSYSTEM_EFI_APPLICATION => "EFI_APPLICATION",
        IMAGE_SUBSYSTEM_EFI_BOOT_SERVICE_DRIVER => "EFI_BOOT_SERVICE_DRIVER",
        IMAGE_SUBSYSTEM_EFI_RUNTIME_DRIVER => "EFI_RUNTIME_DRIVER",
        IMAGE_SUBSYSTEM_EFI_ROM => "EFI_ROM",
        IMAGE_SUBSYSTEM_XBOX => "XBOX",
        IMAGE_SUBSYSTEM_WINDOWS_BOOT_APPLICATION => "WINDOWS_BOOT_APPLICATION",
        _ => "unknown",
    }
}
