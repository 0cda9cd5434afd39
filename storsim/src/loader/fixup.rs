//! Base relocations and import binding, applied to the staged (still writable) image.
//!
//! Tables are read from the file with `object`; every write into the image goes through a
//! bounds-checked slice, so a malformed table yields a [`LoadError`], never a stray write.

use object::LittleEndian as LE;
use object::pe::{IMAGE_REL_BASED_ABSOLUTE, IMAGE_REL_BASED_DIR64, ImageNtHeaders64};
use object::read::pe::PeFile64;

use super::{Import, LoadError, Section};

/// The eight bytes at `rva`, if they lie entirely in the first `limit` bytes of `image`.
fn qword_mut(image: &mut [u8], limit: usize, rva: u64) -> Option<&mut [u8; 8]> {
    let start = usize::try_from(rva).ok()?;
    image
        .get_mut(..limit)?
        .get_mut(start..)?
        .first_chunk_mut::<8>()
}

/// Adds `delta` (load address − ImageBase, modulo 2⁶⁴) to every DIR64 target of data directory 5.
pub(super) fn relocate(
    file: &PeFile64<'_>,
    image: &mut [u8],
    size_of_image: usize,
    delta: u64,
) -> Result<(), LoadError> {
    let Some(mut blocks) = file
        .data_directories()
        .relocation_blocks(file.data(), &file.section_table())
        .map_err(LoadError::Relocations)?
    else {
        return Ok(());
    };
    while let Some(block) = blocks.next().map_err(LoadError::Relocations)? {
        // object adds the 12-bit offset with wrapping arithmetic; a page outside the image
        // would wrap to a plausible but wrong address, so refuse the page itself.
        let page = block.virtual_address();
        if usize::try_from(page).map_or(true, |page| page >= size_of_image) {
            return Err(LoadError::RelocationTarget { rva: page });
        }
        for reloc in block {
            let rva = reloc.virtual_address;
            match reloc.typ {
                // Padding that keeps each block a multiple of four bytes.
                IMAGE_REL_BASED_ABSOLUTE => {}
                IMAGE_REL_BASED_DIR64 => {
                    let target = qword_mut(image, size_of_image, rva.into())
                        .ok_or(LoadError::RelocationTarget { rva })?;
                    let value = u64::from_le_bytes(*target).wrapping_add(delta);
                    *target = value.to_le_bytes();
                }
                kind => return Err(LoadError::RelocationType { kind, rva }),
            }
        }
    }
    Ok(())
}

/// Whether `rva..rva + len` lies inside one section.
fn in_section(sections: &[Section], rva: u64, len: u64) -> bool {
    sections.iter().any(|section| {
        let start = u64::from(section.rva);
        rva >= start && rva + len <= start + u64::from(section.size)
    })
}

/// Writes the resolved address of every import into its IAT slot and lists the imports.
///
/// The names come from the import lookup table (OriginalFirstThunk, or FirstThunk when there is
/// none); slot `i` of a descriptor is `FirstThunk + 8 * i`. The file's copy of that slot holds
/// the hint/name RVA, which is exactly what must be overwritten.
///
/// # Errors
///
/// [`LoadError::MissingImports`] lists every import `resolve` does not know, once each.
pub(super) fn bind(
    file: &PeFile64<'_>,
    image: &mut [u8],
    sections: &[Section],
    resolve: &dyn Fn(&str, &str) -> Option<usize>,
) -> Result<Vec<Import>, LoadError> {
    let Some(table) = file.import_table().map_err(LoadError::Imports)? else {
        return Ok(Vec::new());
    };
    let mut imports = Vec::new();
    let mut missing = Vec::new();
    let mut descriptors = table.descriptors().map_err(LoadError::Imports)?;
    while let Some(descriptor) = descriptors.next().map_err(LoadError::Imports)? {
        let dll = table
            .name(descriptor.name.get(LE))
            .map_err(LoadError::Imports)?;
        let dll = String::from_utf8_lossy(dll).into_owned();
        let first_thunk = descriptor.first_thunk.get(LE);
        let lookup = match descriptor.original_first_thunk.get(LE) {
            0 => first_thunk,
            rva => rva,
        };
        let mut thunks = table.thunks(lookup).map_err(LoadError::Imports)?;
        let mut slot_rva = u64::from(first_thunk);
        while let Some(thunk) = thunks
            .next::<ImageNtHeaders64>()
            .map_err(LoadError::Imports)?
        {
            let name = match table
                .import::<ImageNtHeaders64>(thunk)
                .map_err(LoadError::Imports)?
            {
                object::read::pe::Import::Name(_hint, name) => {
                    String::from_utf8_lossy(name).into_owned()
                }
                object::read::pe::Import::Ordinal(ordinal) => {
                    return Err(LoadError::OrdinalImport { dll, ordinal });
                }
            };
            // Only a slot inside a section is a plausible IAT entry (never the headers).
            let image_len = image.len();
            let slot = in_section(sections, slot_rva, 8)
                .then(|| qword_mut(image, image_len, slot_rva))
                .flatten();
            let Some(slot) = slot else {
                return Err(LoadError::ImportSlot {
                    dll,
                    name,
                    rva: slot_rva,
                });
            };
            match resolve(&dll, &name) {
                Some(address) => *slot = (address as u64).to_le_bytes(),
                None => {
                    let entry = format!("{dll}!{name}");
                    if !missing.contains(&entry) {
                        missing.push(entry);
                    }
                }
            }
            imports.push(Import {
                dll: dll.clone(),
                name,
            });
            slot_rva += 8;
        }
    }
    if missing.is_empty() {
        Ok(imports)
    } else {
        Err(LoadError::MissingImports(missing))
    }
}
