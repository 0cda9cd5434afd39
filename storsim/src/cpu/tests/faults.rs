//! Real faults (page faults, `ud2`, a non-emulated privileged instruction, a stack overflow)
//! reach the fatal hook; each runs in a child copy of this test binary, since the hook ends the
//! process.

use std::arch::naked_asm;
use std::collections::HashMap;
use std::io::Write;
use std::process::Command;
use std::sync::mpsc;
use std::thread;

use super::setup;
use crate::cpu::{
    DISPATCH_LEVEL, Fault, current_kpcr, enter_thread, install_fault_handler, irql, set_fatal_hook,
    set_irql,
};

/// Selects the child mode; unset in normal test runs.
const CHILD_ENV: &str = "STORSIM_CPU_TEST_CHILD";
/// Full name of [`child_process_entry`] for `--exact`.
const CHILD_TEST: &str = "cpu::tests::faults::child_process_entry";
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
            announce(&format!(
                "EXPECT addr={page:p} rip={:#x}",
                poke as *const () as usize
            ));
            // SAFETY: faults by design; the hook ends the process.
            unsafe { poke(page) };
        }
        "read" => {
            setup();
            set_fatal_hook(print_fault_and_exit);
            let page = prot_none_page();
            announce(&format!(
                "EXPECT addr={page:p} rip={:#x}",
                peek as *const () as usize
            ));
            // SAFETY: faults by design; the hook ends the process.
            std::hint::black_box(unsafe { peek(page) });
        }
        "ud2" => {
            setup();
            set_fatal_hook(print_fault_and_exit);
            announce(&format!(
                "EXPECT rip={:#x}",
                raise_ud2 as *const () as usize
            ));
            raise_ud2();
        }
        "cr0" => {
            setup();
            set_fatal_hook(print_fault_and_exit);
            announce(&format!("EXPECT rip={:#x}", read_cr0 as *const () as usize));
            std::hint::black_box(read_cr0());
        }
        "no-hook" => {
            setup();
            let page = prot_none_page();
            announce(&format!(
                "EXPECT addr={page:p} rip={:#x}",
                poke as *const () as usize
            ));
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
            announce(&format!(
                "EXITED mapped_before={before} mapped_after={}",
                is_mapped(kpcr)
            ));
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
            panic!(
                "no {marker:?} in child stdout:\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            );
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
    assert_eq!(
        run.status,
        Some(HOOK_EXIT),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
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
    assert_eq!(
        run.status,
        Some(70),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    let expect = run.fields("EXPECT ");
    let message = format!(
        "storsim: fatal signal {} at rip {}, addr {}, cpu 0 (no fatal hook set)\n",
        libc::SIGSEGV,
        expect["rip"],
        expect["addr"]
    );
    assert!(
        run.stderr.contains(&message),
        "{message:?} not in stderr:\n{}",
        run.stderr
    );
}

#[test]
fn driver_stack_overflow_is_reported_on_altstack() {
    let (expect, fault) = run_faulting_child("stack-overflow");
    assert_eq!(fault["signal"], libc::SIGSEGV.to_string());
    assert_eq!(fault["cpu"], "0");
    let parse = |s: &str| usize::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
    let (top, addr) = (parse(&expect["top"]), parse(&fault["addr"]));
    // The fault lies just below the 256 KiB stack the thread started on.
    assert!(
        addr < top && top - addr <= 256 * 1024 + 64 * 1024,
        "top {top:#x}, fault {addr:#x}"
    );
}

#[test]
fn thread_exit_unmaps_cpu_block() {
    let run = run_child("exit-frees");
    assert_eq!(
        run.status,
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    let exited = run.fields("EXITED ");
    assert_eq!(exited["mapped_before"], "true");
    assert_eq!(exited["mapped_after"], "false");
}
