//! Per-thread emulated CPU: a fake KPCR/KPRCB/KTHREAD behind GS, an alternate signal stack and a
//! CPU number.
//!
//! Each thread that calls [`enter_thread`] owns one anonymous mapping (a [`CpuBlock`]) laid out as
//!
//! ```text
//! +0x00000  guard page (PROT_NONE): an overflowing signal handler faults instead of scribbling
//! +0x01000  alternate signal stack, ALTSTACK_SIZE bytes
//! +0x41000  KPCR with the KPRCB at KPCR+0x180, KPCR_SIZE bytes (room for the real PRCB's size)
//! +0x49000  KTHREAD, KTHREAD_SIZE bytes, zeroed
//! ```
//!
//! The block lives in a `thread_local!` and is unmapped by its `Drop` when the thread exits,
//! after GS and the alternate stack stop pointing into it.

use std::cell::{Cell, RefCell};
use std::ffi::{c_int, c_long, c_void};
use std::io;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU32, Ordering};

use super::{PASSIVE_LEVEL, set_irql};

/// What [`current_cpu`] returns on a thread that never called [`enter_thread`].
pub const NO_CPU: u32 = u32::MAX;

const PAGE_SIZE: usize = 0x1000;
/// Generous, since storsim's fatal hook formats a report on it; untouched pages cost nothing.
const ALTSTACK_SIZE: usize = 0x40000;
/// A Windows 10 x64 KPCR plus KPRCB is about 0x6A00 bytes; zeroed room for all of it.
const KPCR_SIZE: usize = 0x8000;
/// At least the 0x800 bytes inlined `KeGetCurrentThread()->…` accesses may reach.
const KTHREAD_SIZE: usize = 0x1000;

const ALTSTACK_OFFSET: usize = PAGE_SIZE;
const KPCR_OFFSET: usize = ALTSTACK_OFFSET + ALTSTACK_SIZE;
const KTHREAD_OFFSET: usize = KPCR_OFFSET + KPCR_SIZE;
const BLOCK_SIZE: usize = KTHREAD_OFFSET + KTHREAD_SIZE;

/// KPCR.Self (`gs:[0x18]`).
const KPCR_SELF: usize = 0x18;
/// KPCR.CurrentPrcb (`gs:[0x20]`).
const KPCR_CURRENT_PRCB: usize = 0x20;
/// KPCR.Prcb, the embedded KPRCB.
const KPCR_PRCB: usize = 0x180;
/// KPRCB.MxCsr; the power-on value 0x1F80 (all exceptions masked).
const KPRCB_MXCSR: usize = 0x0;
/// KPRCB.LegacyNumber (u8, `gs:[0x184]`, read by the old inline `KeGetCurrentProcessorNumber`).
const KPRCB_LEGACY_NUMBER: usize = 0x4;
/// KPRCB.CurrentThread (`gs:[0x188]`, read by inline `KeGetCurrentThread`).
const KPRCB_CURRENT_THREAD: usize = 0x8;
/// KPRCB.Number (u32, `gs:[0x1A4]`).
const KPRCB_NUMBER: usize = 0x24;

/// `arch_prctl` codes from Linux `asm/prctl.h` (the libc crate does not export them).
const ARCH_SET_GS: c_int = 0x1001;
const ARCH_GET_GS: c_int = 0x1004;

/// Next CPU number to hand out, in order of first [`enter_thread`] call.
static NEXT_CPU: AtomicU32 = AtomicU32::new(0);

thread_local! {
    // The three `const`, drop-free slots below are plain `#[thread_local]` statics: readable from
    // the signal handler and from other thread-local destructors at any time.
    static CPU: Cell<u32> = const { Cell::new(NO_CPU) };
    static KPCR: Cell<*mut c_void> = const { Cell::new(ptr::null_mut()) };
    static KTHREAD: Cell<*mut c_void> = const { Cell::new(ptr::null_mut()) };
    // Owner of the mapping; its destructor runs at thread exit.
    static BLOCK: RefCell<Option<CpuBlock>> = const { RefCell::new(None) };
}

/// Prepares the calling thread to run driver code, once per thread.
///
/// On the first call: assigns the next CPU number, maps this thread's [`CpuBlock`], points GS
/// at its KPCR (KPCR+0x18 = KPCR, +0x20 = KPCR+0x180, +0x188 = a zeroed KTHREAD of 0x1000
/// bytes; the KPRCB's processor numbers = the CPU number), installs its alternate signal stack
/// (replacing std's smaller one) and sets the IRQL to [`PASSIVE_LEVEL`]. Later calls do nothing
/// — in particular they leave the IRQL alone, so a driver that returns at raised IRQL stays
/// detectable.
///
/// The memory is released when the thread exits: GS is reset to 0 and the alternate stack
/// disabled first, so driver code running later on this thread (from another thread-local
/// destructor) faults visibly instead of touching freed memory.
///
/// # Panics
///
/// If the kernel refuses the mapping, the alternate stack or the GS base (out of memory), or if
/// called from a thread-local destructor after this module's state was destroyed.
pub fn enter_thread() {
    BLOCK.with_borrow_mut(|block| {
        if block.is_some() {
            return;
        }
        let cpu = NEXT_CPU.fetch_add(1, Ordering::Relaxed);
        let new = CpuBlock::new(cpu)
            .unwrap_or_else(|err| panic!("cannot set up emulated CPU {cpu}: {err}"));
        CPU.set(cpu);
        KPCR.set(new.kpcr());
        KTHREAD.set(new.kthread());
        set_irql(PASSIVE_LEVEL);
        *block = Some(new);
    });
}

/// Returns this thread's CPU number (0-based, in order of first [`enter_thread`]), or
/// [`NO_CPU`] if it never called it. Async-signal-safe.
pub fn current_cpu() -> u32 {
    CPU.get()
}

/// Returns this thread's fake KPCR (what `gs:[0x18]` holds), or null before [`enter_thread`]
/// and after the thread's state was freed.
pub fn current_kpcr() -> *mut c_void {
    KPCR.get()
}

/// Returns this thread's fake KTHREAD (what `gs:[0x188]` holds), for storsim's
/// `KeGetCurrentThread`/`PsGetCurrentThread`; null before [`enter_thread`].
pub fn current_kthread() -> *mut c_void {
    KTHREAD.get()
}

/// One thread's mapping: guard page, alternate signal stack, KPCR/KPRCB and KTHREAD.
///
/// # Invariants
///
/// `base` is the start of a private anonymous mapping of [`BLOCK_SIZE`] bytes made by
/// [`CpuBlock::new`] and unmapped only by `Drop`.
struct CpuBlock {
    base: NonNull<c_void>,
}

impl CpuBlock {
    /// Maps and fills a block for CPU `cpu`, then installs it on the calling thread.
    fn new(cpu: u32) -> io::Result<Self> {
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing touches no
        // existing memory.
        let base = unsafe {
            libc::mmap(
                ptr::null_mut(),
                BLOCK_SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(base).ok_or_else(|| io::Error::other("mmap returned null"))?;
        // INVARIANT: `base` is a fresh mapping of BLOCK_SIZE bytes; from here on `Drop` unmaps it,
        // also on the error paths below.
        let block = CpuBlock { base };

        // SAFETY: the first page lies inside the mapping this function just created.
        if unsafe { libc::mprotect(block.base.as_ptr(), PAGE_SIZE, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        block.fill_kpcr(cpu);

        let altstack = libc::stack_t {
            ss_sp: block.at(ALTSTACK_OFFSET),
            ss_flags: 0,
            ss_size: ALTSTACK_SIZE,
        };
        // SAFETY: the stack lies inside the mapping, which stays mapped until `Drop` has disabled
        // it again.
        if unsafe { libc::sigaltstack(&altstack, ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: ARCH_SET_GS only changes this thread's GS base; neither Rust nor glibc uses GS
        // on x86_64 Linux (docs/EMULATION-NOTES.md §4.1). The KPCR stays mapped until `Drop` resets GS.
        if unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_SET_GS, block.kpcr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(block)
    }

    /// Address `offset` bytes into the block.
    fn at(&self, offset: usize) -> *mut c_void {
        self.base.as_ptr().wrapping_byte_add(offset)
    }

    fn kpcr(&self) -> *mut c_void {
        self.at(KPCR_OFFSET)
    }

    fn kthread(&self) -> *mut c_void {
        self.at(KTHREAD_OFFSET)
    }

    /// Writes the KPCR and KPRCB fields inline kernel code reads; everything else stays zero.
    fn fill_kpcr(&self, cpu: u32) {
        let kpcr_addr = self.kpcr() as u64;
        let kthread_addr = self.kthread() as u64;
        // SAFETY: KPCR_SIZE bytes at KPCR_OFFSET lie inside the mapping (type invariant), are
        // initialized (zero-filled by mmap) and no other reference to them exists: GS does not
        // point here yet, and the slice ends with this function.
        let kpcr = unsafe { std::slice::from_raw_parts_mut(self.kpcr().cast::<u8>(), KPCR_SIZE) };
        let mut put = |offset: usize, bytes: &[u8]| {
            kpcr[offset..offset + bytes.len()].copy_from_slice(bytes);
        };
        put(KPCR_SELF, &kpcr_addr.to_le_bytes());
        put(
            KPCR_CURRENT_PRCB,
            &(kpcr_addr + KPCR_PRCB as u64).to_le_bytes(),
        );
        put(KPCR_PRCB + KPRCB_MXCSR, &0x1F80u32.to_le_bytes());
        // The legacy field is a byte; CPU numbers past 255 wrap there as they would not on Windows.
        put(KPCR_PRCB + KPRCB_LEGACY_NUMBER, &[cpu as u8]);
        put(
            KPCR_PRCB + KPRCB_CURRENT_THREAD,
            &kthread_addr.to_le_bytes(),
        );
        put(KPCR_PRCB + KPRCB_NUMBER, &cpu.to_le_bytes());
    }
}

impl Drop for CpuBlock {
    fn drop(&mut self) {
        let owns_thread_state = KPCR.get() == self.kpcr();
        if owns_thread_state {
            KPCR.set(ptr::null_mut());
            KTHREAD.set(ptr::null_mut());
        }
        let mut gs_base: u64 = 0;
        // SAFETY: ARCH_GET_GS writes one u64 to the address given, which is `gs_base`.
        let got = unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_GET_GS, &mut gs_base) };
        if got == 0 && gs_base == self.kpcr() as u64 {
            // SAFETY: resets this thread's GS base to 0; nothing but driver code reads through GS.
            unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_SET_GS, 0 as c_long) };
        }

        let mut current = libc::stack_t {
            ss_sp: ptr::null_mut(),
            ss_flags: 0,
            ss_size: 0,
        };
        // SAFETY: with a null new stack, sigaltstack only writes the current one into `current`.
        if unsafe { libc::sigaltstack(ptr::null(), &mut current) } != 0 {
            // Cannot tell whether the kernel still delivers signals onto this block: leak it.
            return;
        }
        if current.ss_flags & libc::SS_DISABLE == 0 && current.ss_sp == self.at(ALTSTACK_OFFSET) {
            let disable = libc::stack_t {
                ss_sp: ptr::null_mut(),
                ss_flags: libc::SS_DISABLE,
                ss_size: 0,
            };
            // SAFETY: disabling the alternate stack releases nothing; it fails only while a
            // handler runs on it, which a thread-local destructor never does.
            if unsafe { libc::sigaltstack(&disable, ptr::null_mut()) } != 0 {
                return; // still in use: leaking beats unmapping a live signal stack
            }
        }
        // SAFETY: the type invariant says `base` is our BLOCK_SIZE mapping; GS and the signal
        // stack no longer point into it and the KPCR/KTHREAD slots were cleared, so nothing in
        // this process refers to it any more.
        unsafe { libc::munmap(self.base.as_ptr(), BLOCK_SIZE) };
    }
}
