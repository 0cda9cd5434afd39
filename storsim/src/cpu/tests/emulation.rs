//! CR8 emulation, per-thread IRQL, GS/KPCR layout and CPU numbering, observed in-process.

use std::arch::asm;
use std::sync::{Arc, Barrier};
use std::thread;

use super::setup;
use crate::cpu::{
    APC_LEVEL, DISPATCH_LEVEL, HIGH_LEVEL, NO_CPU, PASSIVE_LEVEL, current_cpu, current_kpcr,
    current_kthread, enter_thread, irql, set_irql,
};

// The emulated IRQL lives in thread-local memory that the handler reads and writes, so these asm
// blocks must not claim `nomem`: the optimizer would otherwise move `set_irql`/`irql()` across
// them (a release build did). Driver code needs no such care: it reaches storsim's IRQL only
// through calls.

/// `mov <reg>, cr8` with the register preloaded with all ones, so the result also proves the
/// handler zero-extends. Needs [`setup`] on the calling thread.
macro_rules! read_cr8_via {
    ($reg:tt) => {{
        let value: u64;
        // SAFETY: the instruction traps (#GP) and the handler installed by `setup` writes the
        // IRQL into the register and skips the instruction; nothing else is touched.
        unsafe {
            asm!(
                concat!("mov ", $reg, ", cr8"),
                inout($reg) u64::MAX => value,
                options(readonly, nostack, preserves_flags),
            )
        };
        value
    }};
}

/// `mov cr8, <reg>`. Needs [`setup`] on the calling thread.
macro_rules! write_cr8_via {
    ($reg:tt, $value:expr) => {{
        let value: u64 = $value;
        // SAFETY: the instruction traps (#GP) and the handler sets this thread's emulated IRQL
        // and skips it; no register or memory changes.
        unsafe {
            asm!(
                concat!("mov cr8, ", $reg),
                in($reg) value,
                options(nostack, preserves_flags),
            )
        };
    }};
}

/// `mov <reg>, cr8` for a register LLVM reserves (rbx, rbp): saved and restored around it.
macro_rules! read_cr8_via_reserved {
    ($reg:tt) => {{
        let value: u64;
        // SAFETY: the register is saved, loaded with all ones, written by the emulated CR8 read,
        // copied out and restored before the block ends; nothing reads through it meanwhile.
        unsafe {
            asm!(
                concat!("mov {save}, ", $reg),
                concat!("mov ", $reg, ", -1"),
                concat!("mov ", $reg, ", cr8"),
                concat!("mov {value}, ", $reg),
                concat!("mov ", $reg, ", {save}"),
                save = out(reg) _,
                value = out(reg) value,
                options(readonly, nostack, preserves_flags),
            )
        };
        value
    }};
}

/// Reads CR8 through every register inline asm can name, in x86 encoding order.
fn read_cr8_everywhere() -> [u64; 15] {
    [
        read_cr8_via!("rax"),
        read_cr8_via!("rcx"),
        read_cr8_via!("rdx"),
        read_cr8_via_reserved!("rbx"),
        read_cr8_via_reserved!("rbp"),
        read_cr8_via!("rsi"),
        read_cr8_via!("rdi"),
        read_cr8_via!("r8"),
        read_cr8_via!("r9"),
        read_cr8_via!("r10"),
        read_cr8_via!("r11"),
        read_cr8_via!("r12"),
        read_cr8_via!("r13"),
        read_cr8_via!("r14"),
        read_cr8_via!("r15"),
    ]
}

#[test]
fn cr8_read_lands_in_each_register() {
    setup();
    for level in [PASSIVE_LEVEL, APC_LEVEL, DISPATCH_LEVEL, 7, HIGH_LEVEL] {
        set_irql(level);
        assert_eq!(
            read_cr8_everywhere(),
            [u64::from(level); 15],
            "IRQL {level}"
        );
    }
    set_irql(PASSIVE_LEVEL);
}

#[test]
fn cr8_write_from_each_register_sets_irql() {
    setup();
    write_cr8_via!("rax", 1);
    assert_eq!(irql(), 1);
    write_cr8_via!("rcx", 2);
    assert_eq!(irql(), 2);
    write_cr8_via!("rdx", 3);
    assert_eq!(irql(), 3);
    write_cr8_via!("rsi", 4);
    assert_eq!(irql(), 4);
    write_cr8_via!("rdi", 5);
    assert_eq!(irql(), 5);
    write_cr8_via!("r8", 6);
    assert_eq!(irql(), 6);
    write_cr8_via!("r9", 7);
    assert_eq!(irql(), 7);
    write_cr8_via!("r10", 8);
    assert_eq!(irql(), 8);
    write_cr8_via!("r11", 9);
    assert_eq!(irql(), 9);
    write_cr8_via!("r12", 10);
    assert_eq!(irql(), 10);
    write_cr8_via!("r13", 11);
    assert_eq!(irql(), 11);
    write_cr8_via!("r14", 12);
    assert_eq!(irql(), 12);
    write_cr8_via!("r15", 15);
    assert_eq!(irql(), 15);
    // Only the low 4 bits of the source count.
    write_cr8_via!("rax", 0xFFFF_FFFF_FFFF_FFF2);
    assert_eq!(irql(), DISPATCH_LEVEL);
    write_cr8_via!("r9", 0);
    assert_eq!(irql(), PASSIVE_LEVEL);
}

#[test]
fn cr8_write_then_read_round_trips() {
    setup();
    write_cr8_via!("r11", u64::from(DISPATCH_LEVEL));
    assert_eq!(read_cr8_via!("rcx"), u64::from(DISPATCH_LEVEL));
    write_cr8_via!("rdx", u64::from(PASSIVE_LEVEL));
    assert_eq!(read_cr8_via!("r14"), u64::from(PASSIVE_LEVEL));
}

#[test]
fn irql_is_per_thread() {
    let barrier = Arc::new(Barrier::new(2));
    let cpu_at = |level: u8| {
        let barrier = Arc::clone(&barrier);
        thread::spawn(move || {
            setup();
            let initial = read_cr8_via!("rax");
            write_cr8_via!("r8", u64::from(level));
            // Both threads have written before either reads back.
            barrier.wait();
            (initial, read_cr8_via!("r10"), irql())
        })
    };
    let apc = cpu_at(APC_LEVEL);
    let high = cpu_at(HIGH_LEVEL);
    assert_eq!(apc.join().unwrap(), (0, 1, APC_LEVEL));
    assert_eq!(high.join().unwrap(), (0, 15, HIGH_LEVEL));
}

/// Reads the u64 at `gs:[offset]` for a constant offset.
macro_rules! read_gs_u64 {
    ($offset:literal) => {{
        let value: u64;
        // SAFETY: `setup` pointed GS at this thread's KPCR, which holds the offset.
        unsafe {
            asm!(
                concat!("mov {}, qword ptr gs:[", $offset, "]"),
                out(reg) value,
                options(nostack, preserves_flags, readonly),
            )
        };
        value
    }};
}

#[test]
fn gs_reaches_kpcr_prcb_and_kthread() {
    setup();
    let kpcr = current_kpcr() as u64;
    assert_ne!(kpcr, 0);
    assert_eq!(read_gs_u64!("0x18"), kpcr, "KPCR.Self");
    assert_eq!(read_gs_u64!("0x20"), kpcr + 0x180, "KPCR.CurrentPrcb");
    let kthread = read_gs_u64!("0x188");
    assert_ne!(kthread, 0, "KPRCB.CurrentThread");
    assert_eq!(kthread, current_kthread() as u64);

    let number: u32;
    // SAFETY: GS points at this thread's KPCR; 0x1A4 is KPRCB.Number inside it.
    unsafe { asm!("mov {:e}, dword ptr gs:[0x1A4]", out(reg) number, options(nostack, readonly)) };
    assert_eq!(number, current_cpu());

    // SAFETY: `current_kthread` points at this thread's zeroed 0x1000-byte KTHREAD, which lives
    // until the thread exits; no one writes it while this shared borrow lives.
    let kthread = unsafe { std::slice::from_raw_parts(current_kthread().cast::<u8>(), 0x800) };
    assert!(kthread.iter().all(|&b| b == 0));
}

#[test]
fn enter_thread_is_idempotent() {
    setup();
    let (cpu, kpcr, kthread) = (current_cpu(), current_kpcr(), current_kthread());
    assert_ne!(cpu, NO_CPU);
    set_irql(DISPATCH_LEVEL);
    enter_thread();
    assert_eq!(
        (current_cpu(), current_kpcr(), current_kthread()),
        (cpu, kpcr, kthread)
    );
    assert_eq!(
        irql(),
        DISPATCH_LEVEL,
        "a second enter_thread must not reset the IRQL"
    );
    set_irql(PASSIVE_LEVEL);
}

#[test]
fn threads_get_distinct_cpus() {
    // Kept alive together so neither block can reuse the other's address.
    let barrier = Arc::new(Barrier::new(3));
    let cpu = || {
        let barrier = Arc::clone(&barrier);
        thread::spawn(move || {
            assert_eq!(current_cpu(), NO_CPU);
            assert!(current_kpcr().is_null());
            enter_thread();
            let seen = (current_cpu(), current_kpcr() as usize);
            barrier.wait();
            seen
        })
    };
    let (a, b) = (cpu(), cpu());
    barrier.wait();
    let (a, b) = (a.join().unwrap(), b.join().unwrap());
    assert_ne!(a.0, b.0);
    assert_ne!(a.1, b.1);
    assert!(a.0 != NO_CPU && b.0 != NO_CPU);
}
