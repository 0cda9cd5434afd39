//! The anonymous memory an image lives in: mapped read-write while the loader fills it, then
//! sealed with per-region protections. All of the loader's `unsafe` is here.

use std::io;
use std::ptr::NonNull;

/// Page size of x86_64 Linux; section protections are applied with this granularity.
pub(crate) const PAGE: usize = 0x1000;

/// Rounds `n` up to a whole number of pages, or `None` on overflow.
pub(crate) fn page_align(n: usize) -> Option<usize> {
    Some(n.checked_add(PAGE - 1)? & !(PAGE - 1))
}

/// Access an image region gets once sealed (what `mprotect` will be asked for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Protection {
    pub read: bool,
    pub write: bool,
    pub execute: bool,
}

impl Protection {
    fn bits(self) -> libc::c_int {
        let mut prot = libc::PROT_NONE;
        // Writable memory is always readable on x86; asking for write alone would be a fiction.
        if self.read || self.write {
            prot |= libc::PROT_READ;
        }
        if self.write {
            prot |= libc::PROT_WRITE;
        }
        if self.execute {
            prot |= libc::PROT_EXEC;
        }
        prot
    }
}

/// One page-aligned range of a mapping and the protection it gets when sealed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Region {
    pub offset: usize,
    pub len: usize,
    pub protection: Protection,
}

/// A private anonymous mapping, unmapped on drop.
///
/// # Invariants
///
/// `ptr..ptr + len` is a mapping this value created with `mmap` and alone unmaps; `len` is a
/// non-zero multiple of [`PAGE`]. No reference into it outlives the [`Staging`] that wrote it:
/// once sealed, only addresses are handed out.
#[derive(Debug)]
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: `Mapping` is an owned region of process memory, like a `Box<[u8]>` nobody reads
// through: after sealing it gives out only addresses (usize), never references, and the one
// operation that touches the memory (`munmap` in `drop`) needs `self` by value/exclusively. A
// region of anonymous memory is not tied to the thread that mapped it.
unsafe impl Send for Mapping {}
// SAFETY: every `&self` method only reads `ptr`/`len` (address arithmetic); none dereferences
// the memory, so shared use from several threads cannot race (see the `Send` argument above).
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes (a non-zero multiple of [`PAGE`]) read-write, anywhere.
    fn new(len: usize) -> io::Result<Self> {
        if len == 0 || !len.is_multiple_of(PAGE) {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        // SAFETY: a fresh private anonymous mapping at an address of the kernel's choosing
        // (no MAP_FIXED) cannot alias any existing Rust object.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave 0"))?;
        // INVARIANT: just mapped, `len` checked above.
        Ok(Self { ptr, len })
    }

    /// Address of the first byte.
    pub(crate) fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    /// Sets the protection of `offset..offset + len`, which must lie in this mapping and be
    /// page-aligned (both checked: a stray `mprotect` could change some other mapping).
    fn protect(&self, offset: usize, len: usize, prot: libc::c_int) -> io::Result<()> {
        let end = offset.checked_add(len);
        if !offset.is_multiple_of(PAGE) || end.is_none_or(|end| end > self.len) {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        if len == 0 {
            return Ok(());
        }
        let start = self
            .ptr
            .as_ptr()
            .wrapping_add(offset)
            .cast::<libc::c_void>();
        // SAFETY: `start..start + len` lies inside this mapping (checked above, type invariant)
        // and `start` is page-aligned; no Rust reference into the mapping exists while `&self`
        // can be had (`Staging` hands out `&mut [u8]` only through `&mut self`).
        let rc = unsafe { libc::mprotect(start, len, prot) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the type invariant says this value alone owns the mapping; dropping it is the
        // last use. Code still running in it is the caller's to prevent (`Image` says so).
        let rc = unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        // munmap of a range we mapped only fails on a bug; nothing useful can be done in drop.
        debug_assert_eq!(rc, 0, "munmap failed: {}", io::Error::last_os_error());
    }
}

/// A fresh read-write [`Mapping`] the loader fills before sealing it.
#[derive(Debug)]
pub(crate) struct Staging {
    mapping: Mapping,
}

impl Staging {
    /// Maps `len` bytes (a non-zero multiple of [`PAGE`]) read-write at an address other than
    /// `avoid`, so an image never lands on its preferred base and relocation always runs.
    pub(crate) fn new(len: usize, avoid: usize) -> io::Result<Self> {
        let first = Mapping::new(len)?;
        if first.addr() != avoid {
            return Ok(Self { mapping: first });
        }
        // While `first` stays mapped the kernel cannot hand out the same address again.
        let second = Mapping::new(len)?;
        drop(first);
        Ok(Self { mapping: second })
    }

    /// Address of the first byte.
    pub(crate) fn addr(&self) -> usize {
        self.mapping.addr()
    }

    /// The whole mapping as bytes (zero-filled when fresh).
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        let ptr = self.mapping.ptr.as_ptr();
        // SAFETY: the mapping is `len` bytes, readable and writable (Staging never protects it),
        // initialised (anonymous memory is zero-filled) and owned by `self`; the `&mut self`
        // borrow makes this the only reference for its lifetime.
        unsafe { std::slice::from_raw_parts_mut(ptr, self.mapping.len) }
    }

    /// Makes everything inaccessible, then gives each region its protection.
    ///
    /// Pages outside every region stay `PROT_NONE`.
    pub(crate) fn seal(self, regions: &[Region]) -> io::Result<Mapping> {
        let mapping = self.mapping;
        mapping.protect(0, mapping.len, libc::PROT_NONE)?;
        for region in regions {
            mapping.protect(region.offset, region.len, region.protection.bits())?;
        }
        Ok(mapping)
    }
}
