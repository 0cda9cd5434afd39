//! Tests on real hardware behaviour: CR8 moves trap and are emulated, GS reaches the KPCR, and
//! real faults reach the fatal hook (those run the test binary itself as a child process, since
//! the hook ends the process).

use std::arch::{asm, naked_asm};
use std::collections::HashMap;
use std::io::Write;
use std::process::Command;
use std::sync::{Arc, Barrier, mpsc};
use std::thread;

use super::{
    APC_LEVEL, DISPATCH_LEVEL, Fault, HIGH_LEVEL, NO_CPU, PASSIVE_LEVEL, current_cpu,
    current_kpcr, current_kthread, enter_thread, install_fault_handler, irql, set_fatal_hook,
    set_irql,
};

/// Makes the calling test thread an emulated CPU with CR8 emulation (libtest runs tests on
/// several threads; every one needs this).
fn setup() {
    enter_thread();
    install_fault_handler();
}

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
                options(nomem, nostack, preserves_flags),
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
                options(nomem, nostack, preserves_flags),
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
                options(nomem, nostack, preserves_flags),
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
        assert_eq!(read_cr8_everywhere(), [u64::from(level); 15], "IRQL {level}");
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
    unsafe {
        asm!("mov {:e}, dword ptr gs:[0x1A4]", out(reg) number, options(nostack, readonly))
    };
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
    assert_eq!((current_cpu(), current_kpcr(), current_kthread()), (cpu, kpcr, kthread));
    assert_eq!(irql(), DISPATCH_LEVEL, "a second enter_thread must not reset the IRQL");
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

// ---- real faults, observed from a child process -------------------------------------------

/// Selects the child mode; unset in normal test runs.
const CHILD_ENV: &str = "STORSIM_CPU_TEST_CHILD";
/// Full name of [`child_process_entry`] for `--exact`.
const CHILD_TEST: &str = "cpu::tests::child_process_entry";
/// Exit status of [`print_fault_and_exit`].
const HOOK_EXIT: i32 = 42;

/// Stores 1 to `addr` with a single instruction at the function's own address.
///
/// # Safety
///
/// `addr` must be writable — or the caller wants the fault.
#[unsafe(naked)]
unsafe extern "C" fn poke(addr: *mut u8) {
    naked_asm!("mov byte ptr [rdi], 1", "ret")
}

/// Loads from `addr` with a single instruction at the function's own address.
///
/// # Safety
///
/// `addr` must be readable — or the caller wants the fault.
#[unsafe(naked)]
unsafe extern "C" fn peek(addr: *const u8) -> u8 {
    naked_asm!("mov al, byte ptr [rdi]", "ret")
}

/// Executes `ud2` at the function's own address.
#[unsafe(naked)]
extern "C" fn raise_ud2() {
    naked_asm!("ud2")
}

/// Reads CR0 (not emulated) at the function's own address.
#[unsafe(naked)]
extern "C" fn read_cr0() -> u64 {
    naked_asm!("mov rax, cr0", "ret")
}

/// The child's fatal hook: one parseable line on stdout, then exit [`HOOK_EXIT`].
fn print_fault_and_exit(fault: &Fault) -> ! {
    let line = format!(
        "FAULT signal={} addr={:#x} rip={:#x} write={:?} cpu={} irql={}\n",
        fault.signal,
        fault.addr,
        fault.rip,
        fault.write,
        fault.cpu,
        irql()
    );
    // Straight to fd 1: libtest's capture only intercepts `print!`.
    let mut stdout = std::io::stdout();
    let _ = stdout.write_all(line.as_bytes());
    let _ = stdout.flush();
    // SAFETY: `_exit` ends the process at once; nothing can observe a broken invariant after it.
    unsafe { libc::_exit(HOOK_EXIT) }
}

/// One line on stdout before the fault, so the parent knows what to expect.
fn announce(line: &str) {
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

/// A fresh inaccessible page.
fn prot_none_page() -> *mut u8 {
    // SAFETY: a new anonymous mapping at an address of the kernel's choosing touches nothing
    // existing.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(page, libc::MAP_FAILED);
    page.cast()
}

/// Recurses until the stack overflows.
fn recurse(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth; 64]);
    if std::hint::black_box(depth) == u64::MAX {
        return 0;
    }
    recurse(depth + 1) + frame[63]
}

/// Child side of the fault tests; does nothing unless [`CHILD_ENV`] is set.
#[test]
fn child_process_entry() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        return;
    };
    match mode.as_str() {
        "write" => {
            setup();
            set_fatal_hook(print_fault_and_exit);
            set_irql(DISPATCH_LEVEL);
            let page = prot_none_page();
            announce(&format!("EXPECT addr={page:p} rip={:#x}", poke as usize));
            // SAFETY: faults by design; the hook ends the process.
            unsafe { poke(page) };
        }
        "read" => {
            setup();
            set_fatal_hook(print_fault_and_exit);
            let page = prot_none_page();
            announce(&format!("EXPECT addr={page:p} rip={:#x}", peek as usize));
            // SAFETY: faults by design; the hook ends the process.
            std::hint::black_box(unsafe { peek(page) });
        }
        "ud2" => {
            setup();
            set_fatal_hook(print_fault_and_exit);
            announce(&format!("EXPECT rip={:#x}", raise_ud2 as usize));
            raise_ud2();
        }
        "cr0" => {
            setup();
            set_fatal_hook(print_fault_and_exit);
            announce(&format!("EXPECT rip={:#x}", read_cr0 as usize));
            std::hint::black_box(read_cr0());
        }
        "no-hook" => {
            setup();
            let page = prot_none_page();
            announce(&format!("EXPECT addr={page:p} rip={:#x}", poke as usize));
            // SAFETY: faults by design; the fallback report ends the process.
            unsafe { poke(page) };
        }
        "stack-overflow" => {
            install_fault_handler();
            set_fatal_hook(print_fault_and_exit);
            let cpu = thread::Builder::new().stack_size(256 * 1024).spawn(|| {
                enter_thread();
                let top = std::hint::black_box(0u8);
                announce(&format!("EXPECT top={:p}", &top));
                recurse(0)
            });
            let _ = cpu.unwrap().join();
        }
        "exit-frees" => {
            let (to_main, from_cpu) = mpsc::channel();
            let (to_cpu, from_main) = mpsc::channel::<()>();
            let cpu = thread::spawn(move || {
                enter_thread();
                to_main.send(current_kpcr() as usize).unwrap();
                from_main.recv().unwrap();
            });
            let kpcr = from_cpu.recv().unwrap();
            let before = is_mapped(kpcr);
            to_cpu.send(()).unwrap();
            cpu.join().unwrap();
            announce(&format!("EXITED mapped_before={before} mapped_after={}", is_mapped(kpcr)));
            return;
        }
        other => panic!("unknown child mode {other}"),
    }
    announce("NO FAULT");
}

/// Whether `addr` lies in any mapping of this process.
fn is_mapped(addr: usize) -> bool {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines().any(|line| {
        let range = line.split_whitespace().next().unwrap();
        let (start, end) = range.split_once('-').unwrap();
        let start = usize::from_str_radix(start, 16).unwrap();
        let end = usize::from_str_radix(end, 16).unwrap();
        (start..end).contains(&addr)
    })
}

struct ChildRun {
    status: Option<i32>,
    stdout: String,
    stderr: String,
}

impl ChildRun {
    /// The `key=value` fields of the first stdout line containing `marker`.
    fn fields(&self, marker: &str) -> HashMap<String, String> {
        let Some((_, rest)) = self.stdout.split_once(marker) else {
            panic!("no {marker:?} in child stdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        };
        let line = rest.lines().next().unwrap_or("");
        line.split_whitespace()
            .filter_map(|field| field.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

/// Runs [`child_process_entry`] in `mode` in a fresh copy of this test binary.
fn run_child(mode: &str) -> ChildRun {
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", CHILD_TEST, "--test-threads=1"])
        .env(CHILD_ENV, mode)
        .output()
        .unwrap();
    ChildRun {
        status: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs `mode`, checks it ended in the hook, returns (expectations, fault fields).
fn run_faulting_child(mode: &str) -> (HashMap<String, String>, HashMap<String, String>) {
    let run = run_child(mode);
    assert_eq!(run.status, Some(HOOK_EXIT), "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    (run.fields("EXPECT "), run.fields("FAULT "))
}

#[test]
fn write_to_prot_none_page_reaches_hook() {
    let (expect, fault) = run_faulting_child("write");
    assert_eq!(fault["signal"], libc::SIGSEGV.to_string());
    assert_eq!(fault["addr"], expect["addr"]);
    assert_eq!(fault["rip"], expect["rip"]);
    assert_eq!(fault["write"], "Some(true)");
    assert_eq!(fault["cpu"], "0");
    // The IRQL at the fault is still readable from the hook.
    assert_eq!(fault["irql"], DISPATCH_LEVEL.to_string());
}

#[test]
fn read_from_prot_none_page_reaches_hook() {
    let (expect, fault) = run_faulting_child("read");
    assert_eq!(fault["signal"], libc::SIGSEGV.to_string());
    assert_eq!(fault["addr"], expect["addr"]);
    assert_eq!(fault["rip"], expect["rip"]);
    assert_eq!(fault["write"], "Some(false)");
    assert_eq!(fault["irql"], "0");
}

#[test]
fn ud2_reaches_hook_as_sigill() {
    let (expect, fault) = run_faulting_child("ud2");
    assert_eq!(fault["signal"], libc::SIGILL.to_string());
    assert_eq!(fault["addr"], expect["rip"]);
    assert_eq!(fault["rip"], expect["rip"]);
    assert_eq!(fault["write"], "None");
}

#[test]
fn other_control_register_is_not_emulated() {
    let (expect, fault) = run_faulting_child("cr0");
    assert_eq!(fault["signal"], libc::SIGSEGV.to_string());
    assert_eq!(fault["addr"], "0x0");
    assert_eq!(fault["rip"], expect["rip"]);
    assert_eq!(fault["write"], "None");
}

#[test]
fn fault_without_hook_exits_70_with_message() {
    let run = run_child("no-hook");
    assert_eq!(run.status, Some(70), "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    let expect = run.fields("EXPECT ");
    let message = format!(
        "storsim: fatal signal {} at rip {}, addr {}, cpu 0 (no fatal hook set)\n",
        libc::SIGSEGV,
        expect["rip"],
        expect["addr"]
    );
    assert!(run.stderr.contains(&message), "{message:?} not in stderr:\n{}", run.stderr);
}

#[test]
fn driver_stack_overflow_is_reported_on_altstack() {
    let (expect, fault) = run_faulting_child("stack-overflow");
    assert_eq!(fault["signal"], libc::SIGSEGV.to_string());
    assert_eq!(fault["cpu"], "0");
    let parse = |s: &str| usize::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
    let (top, addr) = (parse(&expect["top"]), parse(&fault["addr"]));
    // The fault lies just below the 256 KiB stack the thread started on.
    assert!(addr < top && top - addr <= 256 * 1024 + 64 * 1024, "top {top:#x}, fault {addr:#x}");
}

#[test]
fn thread_exit_unmaps_cpu_block() {
    let run = run_child("exit-frees");
    assert_eq!(run.status, Some(0), "stdout:\n{}\nstderr:\n{}", run.stdout, run.stderr);
    let exited = run.fields("EXITED ");
    assert_eq!(exited["mapped_before"], "true");
    assert_eq!(exited["mapped_after"], "false");
}
