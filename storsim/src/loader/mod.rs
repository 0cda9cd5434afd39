//! Maps a Windows x64 kernel driver image (`.sys`, PE32+) into this process the way the kernel
//! loader would, so its code can be called natively.
//!
//! [`Image::load`] parses the file with `object`, refuses what Windows would refuse for a driver
//! (not AMD64, not the NATIVE subsystem, a writable+executable section), maps it anywhere but its
//! preferred ImageBase (so the relocation path always runs), applies the DIR64 base relocations,
//! writes storsim's export addresses into the IAT, and finally gives every section the
//! protection its characteristics ask for. Everything read from the file is bounds-checked: a
//! malformed image is a [`LoadError`], never a stray write.
//!
//! The `unsafe` (mmap, mprotect, munmap and the one slice over the fresh mapping) lives in
//! `mapping.rs`; the rest of the loader is safe code over that slice.

mod error;
mod fixup;
mod mapping;
#[cfg(test)]
mod tests;

use object::LittleEndian as LE;
use object::pe::{
    IMAGE_FILE_MACHINE_AMD64, IMAGE_FILE_RELOCS_STRIPPED, IMAGE_NT_OPTIONAL_HDR64_MAGIC,
    IMAGE_SCN_MEM_DISCARDABLE, IMAGE_SCN_MEM_EXECUTE, IMAGE_SCN_MEM_NOT_PAGED, IMAGE_SCN_MEM_READ,
    IMAGE_SCN_MEM_WRITE, IMAGE_SUBSYSTEM_NATIVE, ImageSectionHeader,
};
use object::read::pe::{ExportTarget, ImageNtHeaders, ImageOptionalHeader, PeFile64};
use zerocopy::IntoBytes;

pub use error::LoadError;
use mapping::{Mapping, PAGE, Protection, Region, Staging, page_align};

/// Largest SizeOfImage accepted; real drivers are a few MiB, a larger value means a corrupt
/// header, and mapping it would only waste address space.
const MAX_IMAGE_SIZE: usize = 256 << 20;

/// One section of a loaded image, as its header describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// Name from the section header (`.text`, `.rdata`, `INIT`, …).
    pub name: String,
    /// Offset from the image base.
    pub rva: u32,
    /// Size in memory (VirtualSize, or SizeOfRawData when that is zero).
    pub size: u32,
    /// IMAGE_SCN_MEM_READ.
    pub read: bool,
    /// IMAGE_SCN_MEM_WRITE.
    pub write: bool,
    /// IMAGE_SCN_MEM_EXECUTE.
    pub execute: bool,
    /// IMAGE_SCN_MEM_DISCARDABLE: Windows frees it once DriverEntry returns.
    pub discardable: bool,
    /// IMAGE_SCN_MEM_NOT_PAGED: resident, so usable above APC_LEVEL.
    pub not_paged: bool,
}

impl Section {
    fn protection(&self) -> Protection {
        Protection {
            read: self.read,
            write: self.write,
            execute: self.execute,
        }
    }
}

/// One imported routine, bound when the image was loaded.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Import {
    /// The DLL as the PE spells it (`ntoskrnl.exe`, `storport.sys`).
    pub dll: String,
    /// The routine's name.
    pub name: String,
}

/// A driver image mapped, relocated, bound and protected in this process.
///
/// Dropping it unmaps the image: no code of the driver may be running then and no pointer into
/// it (a dispatch routine, a global) may be used afterwards. Callers that call into the image
/// must keep the `Image` alive for as long as those calls can happen.
#[derive(Debug)]
pub struct Image {
    name: String,
    mapping: Mapping,
    size: usize,
    entry_rva: u32,
    sections: Vec<Section>,
    imports: Vec<Import>,
    exports: Vec<(String, u32)>,
}

impl Image {
    /// Parses, maps, relocates, binds and protects the driver image in `bytes`.
    ///
    /// `resolve(dll, name)` returns the absolute address of storsim's implementation of an
    /// imported routine; the DLL name is passed as the PE spells it, so the resolver compares
    /// it case-insensitively.
    ///
    /// # Errors
    ///
    /// A [`LoadError`] saying why the image was refused; for unresolved imports, one
    /// [`LoadError::MissingImports`] listing all of them.
    pub fn load(
        bytes: &[u8],
        name: &str,
        resolve: &dyn Fn(&str, &str) -> Option<usize>,
    ) -> Result<Image, LoadError> {
        let mut copy = Vec::new();
        let file = parse(aligned(bytes, &mut copy))?;
        let optional = file.nt_headers().optional_header();

        let size = usize::try_from(optional.size_of_image())
            .ok()
            .filter(|&size| size != 0 && size <= MAX_IMAGE_SIZE)
            .ok_or(LoadError::ImageSize {
                size: optional.size_of_image(),
                limit: MAX_IMAGE_SIZE,
            })?;
        let alignment = optional.section_alignment();
        if alignment == 0 || !(alignment as usize).is_multiple_of(PAGE) {
            return Err(LoadError::SectionAlignment { alignment });
        }
        let header_bytes = usize::try_from(optional.size_of_headers())
            .ok()
            .filter(|&len| len <= size)
            .and_then(|len| file.data().get(..len))
            .ok_or(LoadError::Headers {
                size: optional.size_of_headers(),
            })?;
        // Headers take whole pages of their own: they are read-only, sections are not.
        let headers_end = page_align(header_bytes.len()).unwrap_or(usize::MAX);
        let placed = layout(&file, size, headers_end, alignment)?;
        let sections: Vec<Section> = placed.iter().map(|(s, _)| s.clone()).collect();

        let entry_rva = optional.address_of_entry_point();
        let entry_in_code = sections.iter().any(|s| {
            s.execute
                && entry_rva >= s.rva
                && u64::from(entry_rva) < u64::from(s.rva) + u64::from(s.size)
        });
        if !entry_in_code {
            return Err(LoadError::EntryPoint { rva: entry_rva });
        }
        let exports = exports(&file, size)?;

        let image_base = optional.image_base();
        let len = page_align(size).unwrap_or(usize::MAX);
        let mut staging =
            Staging::new(len, image_base as usize).map_err(|source| LoadError::Memory {
                what: "map",
                source,
            })?;
        let base = staging.addr();
        let image = staging.bytes_mut();
        // In bounds: the headers fit SizeOfImage and each section was checked by `layout`.
        image[..header_bytes.len()].copy_from_slice(header_bytes);
        for (section, contents) in &placed {
            let start = section.rva as usize;
            image[start..start + contents.len()].copy_from_slice(contents);
        }
        fixup::relocate(&file, image, size, (base as u64).wrapping_sub(image_base))?;
        // After relocation, as Windows does: the IAT slots must end up holding exactly the
        // resolved addresses, whatever a (bogus) relocation might have added to them.
        let imports = fixup::bind(&file, image, &sections, resolve)?;

        let mut regions = vec![Region {
            offset: 0,
            len: headers_end,
            protection: Protection {
                read: true,
                write: false,
                execute: false,
            },
        }];
        regions.extend(sections.iter().map(|section| Region {
            offset: section.rva as usize,
            // Cannot overflow: `layout` checked the section ends inside the image.
            len: page_align(section.size as usize).unwrap_or(0),
            protection: section.protection(),
        }));
        let mapping = staging.seal(&regions).map_err(|source| LoadError::Memory {
            what: "protect",
            source,
        })?;

        Ok(Image {
            name: name.to_owned(),
            mapping,
            size,
            entry_rva,
            sections,
            imports,
            exports,
        })
    }

    /// The name the image was loaded under.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Address the image is mapped at (never its preferred ImageBase).
    pub fn base(&self) -> usize {
        self.mapping.addr()
    }

    /// SizeOfImage: the image spans `base()..base() + size()`.
    pub fn size(&self) -> usize {
        self.size
    }

    /// Absolute address of AddressOfEntryPoint (DriverEntry).
    pub fn entry(&self) -> usize {
        self.base() + self.entry_rva as usize
    }

    /// Whether `addr` lies inside the image.
    pub fn contains(&self, addr: usize) -> bool {
        addr.checked_sub(self.base())
            .is_some_and(|offset| offset < self.size)
    }

    /// Offset of `addr` from the image base, if it lies inside the image.
    pub fn rva(&self, addr: usize) -> Option<u32> {
        if !self.contains(addr) {
            return None;
        }
        u32::try_from(addr - self.base()).ok()
    }

    /// The sections, in header order (ascending RVA).
    pub fn sections(&self) -> &[Section] {
        &self.sections
    }

    /// Every bound import, in import-table order.
    pub fn imports(&self) -> &[Import] {
        &self.imports
    }

    /// Absolute address of the export called `name` (e.g. `DriverEntry`).
    pub fn export(&self, name: &str) -> Option<usize> {
        self.exports
            .iter()
            .find(|(export, _)| export == name)
            .map(|&(_, rva)| self.base() + rva as usize)
    }
}

/// `bytes`, or an 8-byte-aligned copy of them in `copy`: object reads the headers in place and
/// its 64-bit header fields need that alignment, which a caller's slice need not have.
fn aligned<'a>(bytes: &'a [u8], copy: &'a mut Vec<u64>) -> &'a [u8] {
    if bytes.as_ptr().align_offset(align_of::<u64>()) == 0 {
        return bytes;
    }
    copy.resize(bytes.len().div_ceil(8), 0);
    copy.as_mut_bytes()[..bytes.len()].copy_from_slice(bytes);
    let copy: &'a [u64] = copy;
    &copy.as_bytes()[..bytes.len()]
}

/// Parses the headers and refuses anything that is not an x64 kernel-mode image.
fn parse(data: &[u8]) -> Result<PeFile64<'_>, LoadError> {
    // Checked first so a PE32 file is named as such instead of "invalid optional header magic".
    let magic = object::read::pe::optional_header_magic(data).map_err(LoadError::Malformed)?;
    if magic != IMAGE_NT_OPTIONAL_HDR64_MAGIC {
        return Err(LoadError::NotPe32Plus { magic });
    }
    let file = PeFile64::parse(data).map_err(LoadError::Malformed)?;
    let header = file.nt_headers().file_header();
    let machine = header.machine.get(LE);
    if machine != IMAGE_FILE_MACHINE_AMD64 {
        return Err(LoadError::WrongMachine { machine });
    }
    let subsystem = file.nt_headers().optional_header().subsystem();
    if subsystem != IMAGE_SUBSYSTEM_NATIVE {
        return Err(LoadError::NotNative { subsystem });
    }
    if header.characteristics.get(LE) & IMAGE_FILE_RELOCS_STRIPPED != 0 {
        return Err(LoadError::RelocationsStripped);
    }
    Ok(file)
}

/// Section name: the 8-byte header field up to its first NUL.
fn section_name(header: &ImageSectionHeader) -> String {
    let raw = header.raw_name();
    let len = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..len]).into_owned()
}

/// Checks that every section is aligned, lies in the image after the headers and its
/// predecessor, has its raw data in the file and is not writable+executable; returns each
/// section with the bytes to copy into it (the rest of it stays zero).
fn layout<'data>(
    file: &PeFile64<'data>,
    size_of_image: usize,
    headers_end: usize,
    alignment: u32,
) -> Result<Vec<(Section, &'data [u8])>, LoadError> {
    let mut placed = Vec::new();
    let mut next_free = headers_end;
    for header in file.section_table().iter() {
        let name = section_name(header);
        let rva = header.virtual_address.get(LE);
        let raw_size = header.size_of_raw_data.get(LE);
        let virtual_size = header.virtual_size.get(LE);
        // As the Windows loader does: a zero VirtualSize means "as large as the raw data".
        let size = if virtual_size == 0 {
            raw_size
        } else {
            virtual_size
        };
        let refuse = |what| LoadError::SectionLayout {
            section: name.clone(),
            rva,
            size,
            what,
        };
        if !rva.is_multiple_of(alignment) {
            return Err(refuse("not aligned to SectionAlignment"));
        }
        if (rva as usize) < next_free {
            return Err(refuse("overlaps the headers or the previous section"));
        }
        let end = (rva as usize)
            .checked_add(size as usize)
            .filter(|&end| end <= size_of_image)
            .ok_or_else(|| refuse("extends past SizeOfImage"))?;
        let contents = if virtual_size == 0 {
            let offset = header.pointer_to_raw_data.get(LE) as usize;
            offset
                .checked_add(raw_size as usize)
                .and_then(|end| file.data().get(offset..end))
        } else {
            // The smaller of raw and virtual size: a longer raw size is file padding.
            header.pe_data(file.data()).ok()
        };
        let contents = contents.ok_or_else(|| refuse("raw data lies outside the file"))?;
        let characteristics = header.characteristics.get(LE);
        let section = Section {
            name,
            rva,
            size,
            read: characteristics & IMAGE_SCN_MEM_READ != 0,
            write: characteristics & IMAGE_SCN_MEM_WRITE != 0,
            execute: characteristics & IMAGE_SCN_MEM_EXECUTE != 0,
            discardable: characteristics & IMAGE_SCN_MEM_DISCARDABLE != 0,
            not_paged: characteristics & IMAGE_SCN_MEM_NOT_PAGED != 0,
        };
        if section.write && section.execute {
            return Err(LoadError::WritableExecutable {
                section: section.name,
            });
        }
        // `end` is at most MAX_IMAGE_SIZE, so rounding up cannot overflow.
        next_free = page_align(end).unwrap_or(usize::MAX);
        placed.push((section, contents));
    }
    Ok(placed)
}

/// Named exports that point into the image (forwarders cannot be called, so they are left out).
///
/// Windows reads the export directory wherever it lies, aligned or not (lld's
/// `/MERGE:.edata=.rdata` packs it at any byte offset), so it is copied to an aligned buffer
/// before `object` parses it.
fn exports(file: &PeFile64<'_>, size_of_image: usize) -> Result<Vec<(String, u32)>, LoadError> {
    let directories = file.data_directories();
    let Some(directory) = directories.get(object::pe::IMAGE_DIRECTORY_ENTRY_EXPORT) else {
        return Ok(Vec::new());
    };
    if directory.virtual_address.get(object::LittleEndian) == 0 {
        return Ok(Vec::new());
    }
    let bytes = directory
        .data(file.data(), &file.section_table())
        .map_err(LoadError::Exports)?;
    let mut aligned = vec![0u64; bytes.len().div_ceil(8)];
    let copy = &mut zerocopy::IntoBytes::as_mut_bytes(aligned.as_mut_slice())[..bytes.len()];
    copy.copy_from_slice(bytes);
    let table = object::read::pe::ExportTable::parse(
        copy,
        directory.virtual_address.get(object::LittleEndian),
    )
    .map_err(LoadError::Exports)?;
    let mut named = Vec::new();
    for export in table.exports().map_err(LoadError::Exports)? {
        let (Some(name), ExportTarget::Address(rva)) = (export.name, export.target) else {
            continue;
        };
        let name = String::from_utf8_lossy(name).into_owned();
        if rva as usize >= size_of_image {
            return Err(LoadError::ExportTarget { name, rva });
        }
        named.push((name, rva));
    }
    Ok(named)
}
