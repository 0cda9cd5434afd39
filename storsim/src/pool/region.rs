//! One special-pool mapping: the data pages of a block followed by one `PROT_NONE` guard page.
//!
//! All of the pool's `unsafe` lives here: the syscalls (`mmap`, `mprotect`, `madvise`,
//! `munmap`) and the raw byte access the pool needs to fill and verify the pattern areas. A
//! block gets a single `mmap` covering data + guard; the guard is marked so it never merges
//! with a data VMA ([`Region::mark_guard`]), so every block costs two VMAs, live or
//! quarantined.

use std::ops::Range;
use std::ptr;

/// A private anonymous mapping of `data_len` bytes of data pages plus one guard page.
///
/// A `Region` is a plain description (`Copy`) so the pool can work on a block outside its lock;
/// who may touch the mapping is decided by the pool's block table (see `table.rs`), which is why
/// every operation on an existing mapping is an `unsafe fn` whose caller states that the table
/// still owns it.
///
/// # Invariants
///
/// `base..base + data_len + page` was created by [`Region::map`]; its guard page
/// `base + data_len..` stays `PROT_NONE` for the mapping's whole life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Region {
    base: usize,
    data_len: usize,
    page: usize,
}

impl Region {
    /// Maps `data_len` bytes (a multiple of `page`, not zero) of read-write pages plus a guard
    /// page after them; `None` if the kernel refuses (address space or `vm.max_map_count`).
    pub(super) fn map(data_len: usize, page: usize) -> Option<Region> {
        debug_assert!(data_len > 0 && data_len.is_multiple_of(page));
        let total = data_len.checked_add(page)?;
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing touches no
        // existing memory; the result is checked before use.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                total,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        let region = Region {
            base: base as usize,
            data_len,
            page,
        };
        // SAFETY: the mapping was created just above and nobody else knows its address yet.
        if unsafe { region.set_protection(region.guard(), libc::PROT_NONE) } && region.mark_guard()
        {
            Some(region)
        } else {
            // SAFETY: the mapping was created just above and nobody else knows it; the region
            // is dropped right after, so it is unmapped once.
            unsafe { region.unmap() };
            None
        }
    }

    /// First byte of the mapping (page aligned).
    pub(super) fn base(self) -> usize {
        self.base
    }

    /// Bytes of data pages (the guard page not included).
    pub(super) fn data_len(self) -> usize {
        self.data_len
    }

    /// Address range of the guard page.
    pub(super) fn guard(self) -> Range<usize> {
        self.base + self.data_len..self.base + self.data_len + self.page
    }

    /// Address range of the whole mapping, guard page included.
    pub(super) fn span(self) -> Range<usize> {
        self.base..self.base + self.data_len + self.page
    }

    /// Numbers (address / page size) of the mapping's pages, guard page included.
    pub(super) fn pages(self) -> Range<usize> {
        self.base / self.page..(self.base + self.data_len) / self.page + 1
    }

    /// Makes the data pages read-write (`true`) or no-access (`false`); `false` if the kernel
    /// refuses (it can, when splitting a VMA would exceed `vm.max_map_count`).
    ///
    /// # Safety
    ///
    /// The mapping must not have been unmapped, and no Rust reference into its data pages may
    /// be alive when they become no-access.
    pub(super) unsafe fn protect(self, writable: bool) -> bool {
        let prot = if writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_NONE
        };
        // SAFETY: forwarded from this function's own safety requirements.
        unsafe { self.set_protection(self.base..self.base + self.data_len, prot) }
    }

    /// # Safety
    ///
    /// As for [`Region::protect`], for `range` (which must lie inside the mapping).
    unsafe fn set_protection(self, range: Range<usize>, prot: libc::c_int) -> bool {
        debug_assert!(self.span().start <= range.start && range.end <= self.span().end);
        // SAFETY: `range` lies inside this still-mapped region (caller's guarantee), so only the
        // pool's own pages change protection and no Rust reference points into them; the pool
        // hands block addresses only to emulated driver code, for which a trap is intended.
        let rc = unsafe { libc::mprotect(range.start as *mut libc::c_void, range.len(), prot) };
        rc == 0
    }

    /// Gives the guard page a VMA flag no data page has (`VM_DONTDUMP`), so the kernel never
    /// merges it with a no-access data VMA, its own or a neighbour's: the region stays two VMAs
    /// for life and each `mprotect` of its data flips one whole VMA in place. Merging and
    /// splitting instead would make every IRP's allocate and free rebalance the process's VMA
    /// tree at a cost that depends on how many other blocks are live (measured: 15% more
    /// system time per IRP for revcall than for the floor fixture, the same syscalls), which
    /// would charge one driver for storsim's bookkeeping of another's.
    fn mark_guard(self) -> bool {
        let guard = self.guard();
        // SAFETY: MADV_DONTDUMP changes only the flags of the VMAs in the range, never memory
        // contents or protection; were the range not mapped, the call would fail and change
        // nothing.
        let rc = unsafe {
            libc::madvise(
                guard.start as *mut libc::c_void,
                guard.len(),
                libc::MADV_DONTDUMP,
            )
        };
        rc == 0
    }

    /// Unmaps the whole region, guard page included.
    ///
    /// # Safety
    ///
    /// The mapping must still exist, and neither this value nor any copy of it may be used
    /// afterwards (the pool removes the region from its table before unmapping it).
    pub(super) unsafe fn unmap(self) {
        let span = self.span();
        // SAFETY: the mapping exists and is unmapped exactly once (caller's guarantee); it is
        // the pool's own, so no Rust reference points into it.
        let rc = unsafe { libc::munmap(span.start as *mut libc::c_void, span.len()) };
        debug_assert_eq!(rc, 0, "munmap of an owned pool region failed");
    }

    /// Sets every byte of `range` (absolute addresses, inside the data pages) to `byte`.
    ///
    /// # Safety
    ///
    /// The mapping must exist with read-write data pages, and no other thread may access `range`
    /// during the call: the pool calls this only before handing the block out.
    pub(super) unsafe fn fill(self, range: Range<usize>, byte: u8) {
        debug_assert!(self.base <= range.start && range.end <= self.base + self.data_len);
        // SAFETY: `range` is inside this region's data pages, which the caller guarantees are
        // writable and not accessed concurrently; `u8` has no alignment requirement.
        unsafe { ptr::write_bytes(range.start as *mut u8, byte, range.len()) };
    }

    /// The bytes of `range` (absolute addresses, inside the data pages).
    ///
    /// # Safety
    ///
    /// The mapping must exist with readable data pages for the lifetime `'a` the caller picks
    /// (the pool pins the block or holds it in its `Freeing` state), and only the pattern areas,
    /// which a correct driver never writes, may be viewed.
    pub(super) unsafe fn bytes<'a>(self, range: Range<usize>) -> &'a [u8] {
        debug_assert!(self.base <= range.start && range.end <= self.base + self.data_len);
        // SAFETY: `range` is inside this region's mapping, readable for the slice's lifetime by
        // the caller's guarantee; a `u8` slice needs no alignment.
        unsafe { std::slice::from_raw_parts(range.start as *const u8, range.len()) }
    }
}
