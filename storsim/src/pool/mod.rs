//! The emulated kernel pool, every block in Special-Pool "Verify End" layout (docs/VERIFIER-NOTES.md §2.2).
//!
//! Driver allocations (`ExAllocatePool2`, `StorPortAllocatePool`), IRPs and METHOD_BUFFERED
//! SystemBuffers all come from here, so a driver's memory bugs fault or show up as a
//! [`PoolError`] the verifier turns into a bug check:
//!
//! ```text
//!  one mmap per block:  | underrun area | block (size) | slack |  guard page  |
//!                        ^ page aligned   ^ 16-aligned    < 16 B  ^ PROT_NONE
//!                        GUARD_BYTE       FILL_BYTE/0     GUARD_BYTE
//! ```
//!
//! * The block ends as close to the guard page as 16-byte alignment allows, so running off its
//!   end faults at once (0xCD/0xD6) and [`Pool::classify`] explains the fault; the few slack
//!   bytes and the underrun area are checked by [`Pool::check`] and [`Pool::free`] (0xC1).
//! * Freed blocks become `PROT_NONE` and stay in a quarantine, so a use after free faults and
//!   classifies as [`FaultClass::AfterFree`] (0xCC/0xD5) — for as long as the block is among
//!   the last [`Limits::quarantine_blocks`] freed (default 4096) within 64 MiB. With
//!   [`SpecialPool::DriverOnly`] (benchmarks) only the driver's blocks do.
//! * Driver blocks start filled with [`FILL_BYTE`] (a non-canonical pointer, a negative
//!   integer), like Driver Verifier's random fill: reliance on zeroed pool shows.
//!
//! # Mapping budget
//!
//! Linux caps a process at `vm.max_map_count` VMAs (65530 by default). A live block costs two
//! (read-write data, no-access guard), a quarantined or spare one two as well (its guard page
//! never merges with a data VMA: `region.rs`), and the quarantine and spare list are bounded,
//! so the pool holds at most `2 × (live + quarantine_blocks + SPARE_BLOCKS)` VMAs: 10240 plus two
//! per live block with the default limits, however many millions of IRPs a run allocates.
//!
//! # Cost
//!
//! Steady-state churn of same-sized blocks (IRPs) costs two `mprotect` calls per
//! allocate/free pair (the oldest quarantined mapping is recycled), each flipping one whole VMA
//! in place (no split, no merge, so no VMA-tree rebalancing whose cost would depend on the other
//! live blocks), and no page faults; a new size costs an `mmap`, an `mprotect` and a `madvise`.
//! A block [`SpecialPool::DriverOnly`] does not trap costs no syscall at all. The table lock is
//! never held across a syscall, a pattern scan or a copy of more than a few hundred bytes.

mod pattern;
mod region;
mod table;

#[cfg(test)]
mod tests;

use std::ops::Range;
use std::sync::{Mutex, MutexGuard, PoisonError, TryLockError};

use serde::Serialize;

use pattern::verify;
use region::Region;
use table::{Slot, Spare, State, Table};

pub use pattern::{FILL_BYTE, GUARD_BYTE};
pub use table::{Limits, SPARE_BLOCKS};

/// Alignment of every block, as the x64 pool guarantees.
pub const ALIGN: usize = 16;

/// Accesses of up to this many bytes run under the table lock; longer ones pin their block
/// and run unlocked (two short lock holds instead of one long one).
const LOCKED_ACCESS_MAX: usize = 256;

/// `try_lock` attempts [`Pool::classify`] makes (yielding in between) before giving up.
const CLASSIFY_ATTEMPTS: u32 = 1000;

/// Who a block belongs to, for leak accounting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Owner {
    /// `ExAllocatePool*` / `StorPortAllocatePool` on behalf of the driver.
    Driver,
    /// `ExAllocatePool*` on behalf of a driver loaded above the miniport (a kernel-mode
    /// caller of its service IOCTL), accounted at that driver's unload.
    UpperDriver,
    /// An IRP allocated by the emulated I/O manager.
    Irp,
    /// A METHOD_BUFFERED SystemBuffer.
    SystemBuffer,
    /// Storport's memory the miniport writes: the device extension, SRBs and their buffers.
    Port,
}

/// A block as its allocator saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BlockInfo {
    /// First byte of the block (the address `allocate` returned).
    pub addr: usize,
    /// Requested size in bytes.
    pub size: usize,
    /// Pool tag.
    pub tag: u32,
    pub owner: Owner,
}

/// A pool call the verifier must report.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum PoolError {
    /// Zero-byte allocation (0xC4/0x00).
    #[error("zero-size pool allocation")]
    ZeroSize,
    /// The address is not the start of a live block (0xC4/0x10).
    #[error("freeing {addr:#x}, which is not the start of a pool block")]
    NotAllocated { addr: usize },
    /// The block was already freed and is still in the quarantine (0xC4/0x13).
    #[error("double free of pool block {addr:#x}")]
    DoubleFree { addr: usize },
    /// `ExFreePoolWithTag` with the wrong tag: `expected` is the block's, `actual` the caller's.
    #[error("pool block {addr:#x} has tag {expected:#010x}, freed with tag {actual:#010x}")]
    TagMismatch {
        addr: usize,
        expected: u32,
        actual: u32,
    },
    /// A byte of the underrun area was overwritten (0xC1); `offset` (negative) is that of the
    /// damaged byte nearest the block.
    #[error("pool underrun at offset {offset} of {}-byte block {:#x}", .block.size, .block.addr)]
    Underrun { block: BlockInfo, offset: isize },
    /// A slack byte after the block was overwritten (0xC1); `offset` (≥ size) is that of the
    /// first damaged byte.
    #[error("pool overrun at offset {offset} of {}-byte block {:#x}", .block.size, .block.addr)]
    Overrun { block: BlockInfo, offset: usize },
    /// The host refused the mapping.
    #[error("pool exhausted: the host refused a mapping")]
    Exhausted,
    /// Bytes asked of a block that are not all inside it (a storsim bug, not the driver's).
    #[error("bytes {start:#x}..{end:#x} are not inside one live pool block")]
    OutOfBlock { start: usize, end: usize },
}

/// What a fault address inside the pool means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultClass {
    /// The guard page after a live block was touched (0xCD/0xD6); `offset` from the block start.
    Overrun { block: BlockInfo, offset: usize },
    /// The page just below a live block's mapping, not itself pool memory, was touched;
    /// `offset` is negative. (If that page is another block's guard, it is that one's overrun.)
    Underrun { block: BlockInfo, offset: isize },
    /// A freed block was touched (0xCC/0xD5). `offset` is `addr - block.addr` in wrapping
    /// arithmetic: read it `as isize` for a touch of the freed block's underrun area.
    AfterFree { block: BlockInfo, offset: usize },
}

/// Which freed blocks the pool keeps no-access in its quarantine (Special Pool's trap for a
/// use after free); every block keeps its guard page and pattern checks either way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SpecialPool {
    /// Every block: the driver's, and the IRPs, SystemBuffers and Storport memory storsim
    /// allocates for it, so a driver touching an IRP it completed faults (Driver Verifier
    /// with I/O verification). What tests and tortures run.
    #[default]
    Everything,
    /// The driver's blocks only ([`Owner::Driver`], [`Owner::UpperDriver`]); storsim's own
    /// are recycled at once, read-write, as the I/O manager's lookaside lists recycle IRPs.
    /// For benchmarks: the quarantine costs two `mprotect`s per block, and once a second
    /// thread runs (a user-mode server), a TLB shootdown each and a fight for the process's
    /// mapping lock: most of an IRP's cost, charged to whichever driver has that thread.
    DriverOnly,
}

impl SpecialPool {
    fn traps(self, owner: Owner) -> bool {
        match self {
            Self::Everything => true,
            Self::DriverOnly => matches!(owner, Owner::Driver | Owner::UpperDriver),
        }
    }

    /// The underrun area of a block of `owner` starting at `start` in `region`, filled with
    /// [`GUARD_BYTE`] and checked at free: the whole page below the block for a trapped one,
    /// the [`UNDERRUN_BAND`] bytes right below it for one recycled at once.
    fn underrun_area(self, owner: Owner, region: Region, start: usize) -> Range<usize> {
        if self.traps(owner) {
            region.base()..start
        } else {
            start.saturating_sub(UNDERRUN_BAND).max(region.base())..start
        }
    }
}

/// The underrun area of a block [`SpecialPool::DriverOnly`] recycles at once. Filling and
/// checking the whole page below a half-KiB IRP was most of the bytes storsim touched per IRP,
/// and a driver that parks IRPs keeps many such pages live: `storsim bench` charged revcall
/// for the cache misses (an eighth of its time in `memset`, a third more than the floor's)
/// although its code never touched those pages. A stray write below an IRP or a SystemBuffer
/// lands within a few words of it; the guard page still stops every overrun.
pub const UNDERRUN_BAND: usize = 256;

/// The emulated kernel pool. `Send + Sync`: emulated CPUs allocate and free concurrently.
///
/// Dropping the pool unmaps every block, live ones included.
#[derive(Debug)]
pub struct Pool {
    table: Mutex<Table>,
    page: usize,
    special: SpecialPool,
}

impl Default for Pool {
    fn default() -> Pool {
        Pool::new()
    }
}

impl Pool {
    /// A pool with the default quarantine [`Limits`] that traps every freed block.
    pub fn new() -> Pool {
        Pool::with_limits(Limits::default(), SpecialPool::Everything)
    }

    /// A pool whose quarantine holds at most `limits`, of the blocks `special` says.
    pub fn with_limits(limits: Limits, special: SpecialPool) -> Pool {
        let page = page_size();
        Pool {
            table: Mutex::new(Table::new(limits, page)),
            page,
            special,
        }
    }

    /// Allocates `size` bytes, 16-byte aligned and ending next to a guard page. Driver blocks
    /// are filled with [`FILL_BYTE`]; IRPs and SystemBuffers, which storsim initializes, are
    /// zeroed.
    ///
    /// # Errors
    ///
    /// [`PoolError::ZeroSize`] for `size == 0`, [`PoolError::Exhausted`] if the host refuses.
    pub fn allocate(&self, size: usize, tag: u32, owner: Owner) -> Result<*mut u8, PoolError> {
        let contents = if matches!(owner, Owner::Driver | Owner::UpperDriver) {
            FILL_BYTE
        } else {
            0
        };
        self.place(size, tag, owner, Some(contents))
    }

    /// As [`Pool::allocate`], with the block's bytes left as they are (a recycled mapping's
    /// old contents): for a buffer storsim fills whole ([`Pool::fill`]) before anyone reads
    /// it, so a big SystemBuffer is not written twice.
    ///
    /// # Errors
    ///
    /// As for [`Pool::allocate`].
    pub fn allocate_to_fill(
        &self,
        size: usize,
        tag: u32,
        owner: Owner,
    ) -> Result<*mut u8, PoolError> {
        self.place(size, tag, owner, None)
    }

    /// As [`Pool::allocate`], with the block zeroed whatever its owner.
    ///
    /// # Errors
    ///
    /// As for [`Pool::allocate`].
    pub fn allocate_zeroed(
        &self,
        size: usize,
        tag: u32,
        owner: Owner,
    ) -> Result<*mut u8, PoolError> {
        self.place(size, tag, owner, Some(0))
    }

    fn place(
        &self,
        size: usize,
        tag: u32,
        owner: Owner,
        contents: Option<u8>,
    ) -> Result<*mut u8, PoolError> {
        if size == 0 {
            return Err(PoolError::ZeroSize);
        }
        let aligned = size
            .checked_next_multiple_of(ALIGN)
            .ok_or(PoolError::Exhausted)?;
        let data_len = aligned
            .checked_next_multiple_of(self.page)
            .ok_or(PoolError::Exhausted)?;
        let spare = self.table().take_spare(data_len);
        let (region, fresh) = match spare {
            Some(spare) if spare.writable => (spare.region, false),
            // SAFETY: `take_spare` removed the mapping from the table, so this thread owns it;
            // it is no-access and nothing refers into it.
            Some(spare) if unsafe { spare.region.protect(true) } => (spare.region, false),
            spare => {
                if let Some(Spare { region, .. }) = spare {
                    // SAFETY: `take_spare` handed this thread the mapping (the table no longer
                    // has it); forgotten right after, so unmapped once.
                    unsafe { region.unmap() };
                }
                (
                    Region::map(data_len, self.page).ok_or(PoolError::Exhausted)?,
                    true,
                )
            }
        };
        let start = region.base() + data_len - aligned;
        let end = start + size;
        // SAFETY: the mapping is this thread's alone (new, or just taken from the spares) and
        // was made read-write above; the block is not handed out yet.
        unsafe { region.fill(self.special.underrun_area(owner, region, start), GUARD_BYTE) };
        // A fresh anonymous mapping is already zero.
        if let Some(contents) = contents.filter(|&c| !(fresh && c == 0)) {
            // SAFETY: the block's own bytes, in the same thread-owned read-write mapping.
            unsafe { region.fill(start..end, contents) };
        }
        // SAFETY: the slack after the block, in the same thread-owned read-write mapping.
        unsafe { region.fill(end..start + aligned, GUARD_BYTE) };
        let info = BlockInfo {
            addr: start,
            size,
            tag,
            owner,
        };
        self.table().insert(Slot {
            info,
            region,
            state: State::Live,
            pins: 0,
        });
        Ok(start as *mut u8)
    }

    /// Frees the block starting at `addr` after checking its patterns, and quarantines it
    /// (no-access) so a later touch faults. `tag`, if given, must be the block's.
    ///
    /// A pattern error leaves the block allocated, as if the call had not happened.
    ///
    /// # Errors
    ///
    /// [`PoolError::NotAllocated`], [`PoolError::DoubleFree`], [`PoolError::TagMismatch`],
    /// [`PoolError::Overrun`] or [`PoolError::Underrun`].
    pub fn free(&self, addr: *mut u8, tag: Option<u32>) -> Result<BlockInfo, PoolError> {
        let addr = addr as usize;
        let (info, region) = loop {
            let mut table = self.table();
            let slot = table
                .starting_at(addr)
                .ok_or(PoolError::NotAllocated { addr })?;
            if slot.state != State::Live {
                return Err(PoolError::DoubleFree { addr });
            }
            if let Some(actual) = tag
                && actual != slot.info.tag
            {
                return Err(PoolError::TagMismatch {
                    addr,
                    expected: slot.info.tag,
                    actual,
                });
            }
            if slot.pins == 0 && !self.special.traps(slot.info.owner) {
                // Recycled at once: its patterns are a few hundred bytes, checked and the
                // block recycled in this one hold of the lock (each hold costs a cache miss on
                // the lock when another CPU took it last).
                let (info, region) = (slot.info.clone(), slot.region);
                // SAFETY: the table lock is held and the block is live and unpinned: no other
                // thread frees, reprotects or unmaps it meanwhile.
                unsafe { verify(&info, region, self.special) }?;
                slot.state = State::Freeing;
                let victim = table.recycle(region.base()).or_else(|| table.evict());
                drop(table);
                self.unmap_evicted(victim);
                return Ok(info);
            }
            if slot.pins == 0 {
                slot.state = State::Freeing;
                break (slot.info.clone(), slot.region);
            }
            // A concurrent `check` is reading the patterns; it takes microseconds.
            drop(table);
            std::thread::yield_now();
        };
        // SAFETY: the slot is `Freeing`, so no other thread removes, unmaps or reprotects it
        // until this thread moves it on (table.rs, "Ownership of mappings").
        if let Err(error) = unsafe { verify(&info, region, self.special) } {
            if let Some(slot) = self.table().starting_at(addr) {
                slot.state = State::Live;
            }
            return Err(error);
        }
        // SAFETY: still `Freeing`, so this thread alone manages the mapping; `verify`'s slices
        // are gone. Only emulated driver code may still point into the block: that is the trap.
        if !unsafe { region.protect(false) } {
            // The kernel would not split the VMA: release the block without a quarantine.
            self.table().remove(region.base());
            // SAFETY: just removed from the table by this thread, so unmapped once.
            unsafe { region.unmap() };
            return Ok(info);
        }
        let victim = {
            let mut table = self.table();
            table.quarantine(region.base());
            table.evict()
        };
        self.unmap_evicted(victim);
        Ok(info)
    }

    /// Unmaps `victim` and whatever else the table evicts after it, outside the lock.
    fn unmap_evicted(&self, mut victim: Option<Region>) {
        while let Some(region) = victim {
            // SAFETY: `evict` removed the mapping from the table and handed it to this thread.
            unsafe { region.unmap() };
            victim = self.table().evict();
        }
    }

    /// Checks the underrun area and slack of the live block starting at `addr`.
    ///
    /// # Errors
    ///
    /// [`PoolError::NotAllocated`] if `addr` is not a live block's start, else
    /// [`PoolError::Overrun`] or [`PoolError::Underrun`].
    pub fn check(&self, addr: *mut u8) -> Result<(), PoolError> {
        let addr = addr as usize;
        let (info, region) = {
            let mut table = self.table();
            let slot = table
                .starting_at(addr)
                .filter(|slot| slot.state == State::Live)
                .ok_or(PoolError::NotAllocated { addr })?;
            slot.pins += 1;
            (slot.info.clone(), slot.region)
        };
        // SAFETY: the pin keeps `free` from revoking access or unmapping until it is dropped
        // below (table.rs, "Ownership of mappings").
        let result = unsafe { verify(&info, region, self.special) };
        if let Some(slot) = self.table().starting_at(addr) {
            slot.pins -= 1;
        }
        result
    }

    /// Live blocks of `owner`, in address order (the 0xC4/0x62 leak check).
    pub fn outstanding(&self, owner: Owner) -> Vec<BlockInfo> {
        let table = self.table();
        table
            .live()
            .filter(|slot| slot.info.owner == owner)
            .map(|slot| slot.info.clone())
            .collect()
    }

    /// Explains a fault at `addr`, or `None` if the pool cannot tell (not its memory, or the
    /// table stayed locked). Never blocks: callable from a SIGSEGV handler (no allocation).
    pub fn classify(&self, addr: usize) -> Option<FaultClass> {
        let table = self.try_table()?;
        if let Some(slot) = table.containing(addr) {
            let offset = addr.wrapping_sub(slot.info.addr);
            let block = slot.info.clone();
            return match slot.state {
                State::Live if slot.region.guard().contains(&addr) => {
                    Some(FaultClass::Overrun { block, offset })
                }
                // The data pages are read-write: not a fault the pool explains.
                State::Live => None,
                State::Freeing | State::Freed => Some(FaultClass::AfterFree { block, offset }),
            };
        }
        let slot = table
            .above(addr, self.page)
            .filter(|slot| slot.state == State::Live)?;
        let offset = (addr as isize).wrapping_sub(slot.info.addr as isize);
        Some(FaultClass::Underrun {
            block: slot.info.clone(),
            offset,
        })
    }

    /// Copies `bytes` into a live block at `addr` (storsim filling a buffer it allocated).
    ///
    /// # Errors
    ///
    /// [`PoolError::OutOfBlock`] unless `addr..addr + bytes.len()` lies inside one live block.
    pub fn write_bytes(&self, addr: usize, bytes: &[u8]) -> Result<(), PoolError> {
        self.fill(addr, bytes.len(), |place| place.copy_from_slice(bytes))
    }

    /// Lets `write` fill `len` bytes of a live block at `addr` in place (storsim preparing a
    /// buffer it allocated, before any driver sees it).
    ///
    /// # Errors
    ///
    /// As for [`Pool::write_bytes`].
    pub fn fill(
        &self,
        addr: usize,
        len: usize,
        write: impl FnOnce(&mut [u8]),
    ) -> Result<(), PoolError> {
        self.with_live_bytes(addr, len, |place| {
            // SAFETY: `with_live_bytes` hands out `len` bytes of a live, read-write block, kept
            // live (the table lock or a pin) for the call; storsim's callers fill blocks no
            // driver holds yet, so nothing else reads or writes them meanwhile.
            write(unsafe { std::slice::from_raw_parts_mut(place, len) })
        })
    }

    /// Reads `len` bytes of a live block at `addr`.
    ///
    /// # Errors
    ///
    /// As for [`Pool::write_bytes`].
    pub fn read_bytes(&self, addr: usize, len: usize) -> Result<Vec<u8>, PoolError> {
        let mut out = vec![0u8; len];
        self.with_live_bytes(addr, len, |place| {
            // SAFETY: as in `write_bytes`, reading into a fresh vector of `len` bytes.
            unsafe { std::ptr::copy_nonoverlapping(place, out.as_mut_ptr(), len) }
        })?;
        Ok(out)
    }

    /// Runs `access` on `addr` if `addr..addr + len` is inside one live block, which cannot be
    /// freed (and made no-access) meanwhile: a short access holds the table lock, a longer one
    /// pins the block and runs unlocked, so copying a payload never stalls every other CPU's
    /// allocations and accesses behind it.
    fn with_live_bytes(
        &self,
        addr: usize,
        len: usize,
        access: impl FnOnce(*mut u8),
    ) -> Result<(), PoolError> {
        let out_of_block = || PoolError::OutOfBlock {
            start: addr,
            end: addr.wrapping_add(len),
        };
        if len == 0 {
            return Ok(());
        }
        let mut table = self.table();
        let slot = table
            .containing_mut(addr)
            .filter(|slot| slot.state == State::Live)
            .ok_or_else(out_of_block)?;
        let block = slot.info.addr..slot.info.addr + slot.info.size;
        if !block.contains(&addr) || addr.checked_add(len).is_none_or(|end| end > block.end) {
            return Err(out_of_block());
        }
        if len <= LOCKED_ACCESS_MAX {
            access(addr as *mut u8);
            return Ok(());
        }
        slot.pins += 1;
        drop(table);
        access(addr as *mut u8);
        if let Some(slot) = self.table().starting_at(block.start) {
            slot.pins -= 1;
        }
        Ok(())
    }

    /// The live block whose bytes (`addr..addr + size`) contain `addr`.
    pub fn block(&self, addr: usize) -> Option<BlockInfo> {
        live_block(&self.table(), addr).cloned()
    }

    /// The owners of the live blocks the `N` addresses fall in, looked up in one hold of the
    /// lock (a payload copy's two ends).
    pub fn owners<const N: usize>(&self, addrs: [usize; N]) -> [Option<Owner>; N] {
        let table = self.table();
        addrs.map(|addr| live_block(&table, addr).map(|block| block.owner))
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // A panic never leaves the table half-updated, so a poisoned lock is still consistent.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn try_table(&self) -> Option<MutexGuard<'_, Table>> {
        for _ in 0..CLASSIFY_ATTEMPTS {
            match self.table.try_lock() {
                Ok(table) => return Some(table),
                Err(TryLockError::Poisoned(poisoned)) => return Some(poisoned.into_inner()),
                // `sched_yield` is async-signal-safe; holders keep the lock for microseconds.
                Err(TryLockError::WouldBlock) => std::thread::yield_now(),
            }
        }
        None
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let table = self.table.get_mut().unwrap_or_else(PoisonError::into_inner);
        for region in table.drain() {
            // SAFETY: `drain` handed over every mapping the table owned, each once, and
            // `&mut self` means no other pool call is using one.
            unsafe { region.unmap() };
        }
    }
}

/// The live block `addr` falls in (its bytes, not its underrun area, slack or guard page).
fn live_block(table: &Table, addr: usize) -> Option<&BlockInfo> {
    let slot = table
        .containing(addr)
        .filter(|slot| slot.state == State::Live)?;
    (slot.info.addr..slot.info.addr + slot.info.size)
        .contains(&addr)
        .then_some(&slot.info)
}

fn page_size() -> usize {
    // SAFETY: `sysconf` only reads a system constant.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(page)
        .ok()
        .filter(|page| page.is_power_of_two())
        .unwrap_or(4096)
}
