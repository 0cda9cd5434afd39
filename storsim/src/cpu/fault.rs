//! The process's SIGSEGV/SIGBUS/SIGILL/SIGFPE handler: emulates CR8 moves, reports everything
//! else to storsim's fatal hook.
//!
//! Only async-signal-safe work happens before the hook is called: reading the `siginfo_t` and
//! `ucontext_t`, the `const` thread-locals of this module, an atomic load, and for the fallback
//! report `write(2)` and `_exit(2)`.

use std::cell::Cell;
use std::ffi::{c_int, c_void};
use std::io;
use std::ptr;
use std::sync::Once;
use std::sync::atomic::{AtomicPtr, Ordering};

use super::decode::{Direction, decode_cr8_move, greg_slot};
use super::{HIGH_LEVEL, current_cpu, irql, set_irql};

/// Signals the handler takes over. SIGFPE is included because a divide error in driver code is
/// as fatal as a page fault on Windows.
const SIGNALS: [c_int; 4] = [libc::SIGSEGV, libc::SIGBUS, libc::SIGILL, libc::SIGFPE];

/// x86 exception vectors as Linux reports them in `REG_TRAPNO`.
const TRAP_GENERAL_PROTECTION: i64 = 13;
const TRAP_PAGE_FAULT: i64 = 14;
/// Page-fault error code bit 1: the access was a write.
const PF_WRITE: i64 = 1 << 1;
/// Exit status of the fallback report when no hook is set.
const FALLBACK_EXIT_CODE: c_int = 70;
/// First user address past the lower canonical half; RIP is never at or above it in user mode.
const USER_SPACE_END: usize = 0x0000_8000_0000_0000;

/// A fault in code running on an emulated CPU, as handed to the fatal hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    /// `SIGSEGV`, `SIGBUS`, `SIGILL` or `SIGFPE`.
    pub signal: i32,
    /// `si_addr`: the faulting data address for page faults, the instruction for SIGILL/SIGFPE,
    /// and 0 for a general-protection fault (privileged instruction other than a CR8 move, or a
    /// non-canonical address such as a poisoned pointer).
    pub addr: usize,
    /// Address of the faulting instruction.
    pub rip: usize,
    /// For page faults, whether the access was a write (page-fault error code bit 1); `None` for
    /// every other kind of fault, which also tells a #GP at `addr` 0 apart from a NULL access.
    pub write: Option<bool>,
    /// [`current_cpu`] of the faulting thread ([`super::NO_CPU`] if it never entered).
    pub cpu: u32,
}

/// The hook as a data pointer; null until [`set_fatal_hook`]. Only `fn(&Fault) -> !` values are
/// ever stored.
static FATAL_HOOK: AtomicPtr<()> = AtomicPtr::new(ptr::null_mut());

thread_local! {
    // Set while this thread is reporting, so a fault inside the hook is not reported through it
    // again (const, drop-free: usable in the handler).
    static REPORTING: Cell<bool> = const { Cell::new(false) };
}

/// Sets the function called for every fault that is not an emulated CR8 move; a later call
/// replaces an earlier hook.
///
/// The hook runs in the signal handler, on the faulting thread's alternate stack, with the
/// signal blocked, and must end the process (typically by `_exit` after printing a bug-check
/// report). It may call [`irql`] and [`current_cpu`] to describe the faulting CPU. A fault inside
/// the hook ends the process through the fallback report below instead of recursing.
///
/// Without a hook the handler writes a one-line message to stderr and exits with status 70.
pub fn set_fatal_hook(hook: fn(&Fault) -> !) {
    FATAL_HOOK.store(hook as *mut (), Ordering::Release);
}

/// Installs the fault handler for SIGSEGV, SIGBUS, SIGILL and SIGFPE, once per process.
///
/// Thread-safe and idempotent. The handler replaces std's stack-overflow handler for every
/// thread; overflows are then reported through the fatal hook (on threads that called
/// [`super::enter_thread`], whose alternate stack is large enough for the hook).
///
/// # Panics
///
/// If `sigaction` fails, which it does not for these signals.
pub fn install_fault_handler() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        for signal in SIGNALS {
            if let Err(err) = install(signal) {
                panic!("cannot install handler for signal {signal}: {err}");
            }
        }
    });
}

fn install(signal: c_int) -> io::Result<()> {
    // SAFETY: `sigaction` is plain old data for which all-zero bytes are valid: SIG_DFL, no flags,
    // an empty mask, no restorer.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = on_fault as *const () as libc::sighandler_t;
    // SA_ONSTACK: run on the alternate stack, so a driver stack overflow still gets reported.
    action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
    // SAFETY: `on_fault` has the SA_SIGINFO handler signature and is async-signal-safe up to the
    // hook, whose contract (set_fatal_hook) is to end the process.
    if unsafe { libc::sigaction(signal, &action, ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The signal handler.
///
/// # Safety
///
/// Only the kernel calls this, as an `SA_SIGINFO` handler: `info` points to the `siginfo_t` and
/// `context` to the interrupted thread's `ucontext_t` of this delivery, both valid and used by
/// nothing else until the handler returns.
unsafe extern "C" fn on_fault(signal: c_int, info: *mut libc::siginfo_t, context: *mut c_void) {
    // SAFETY: `info` is this delivery's siginfo_t (see # Safety).
    let info = unsafe { &*info };
    // SAFETY: `context` is this delivery's ucontext_t, ours alone until we return (# Safety).
    let context = unsafe { &mut *context.cast::<libc::ucontext_t>() };
    let gregs = &mut context.uc_mcontext.gregs;
    let rip = gregs[libc::REG_RIP as usize] as usize;
    let trapno = gregs[libc::REG_TRAPNO as usize];

    // `mov cr8` at CPL 3: #GP, reported as SIGSEGV / SI_KERNEL / trap 13 (docs/EMULATION-NOTES.md §4.2).
    if signal == libc::SIGSEGV
        && info.si_code == libc::SI_KERNEL
        && trapno == TRAP_GENERAL_PROTECTION
        && rip < USER_SPACE_END
    {
        let fetch = |i: usize| {
            // SAFETY: the CPU just decoded the instruction at `rip` (it faulted executing it, so
            // its bytes are mapped and, on x86, readable), and `decode_cr8_move` fetches only
            // bytes that this instruction must contain (its documented fetch discipline).
            unsafe { (rip as *const u8).wrapping_add(i).read_volatile() }
        };
        if let Some(access) = decode_cr8_move(fetch) {
            let slot = greg_slot(access.gpr);
            match access.direction {
                // CR8 reads are zero-extended to 64 bits.
                Direction::Read => gregs[slot] = i64::from(irql() & HIGH_LEVEL),
                // Bits 63:4 of the source are ignored.
                Direction::Write => set_irql((gregs[slot] & i64::from(HIGH_LEVEL)) as u8),
            }
            gregs[libc::REG_RIP as usize] = (rip + access.len) as i64;
            return;
        }
    }

    let is_page_fault = info.si_code > 0 && trapno == TRAP_PAGE_FAULT;
    let fault = Fault {
        signal,
        // SAFETY: `si_addr` is the union member the kernel fills for the four signals this
        // handler is installed for; any bits are a valid pointer value.
        addr: unsafe { info.si_addr() } as usize,
        rip,
        write: is_page_fault.then(|| gregs[libc::REG_ERR as usize] & PF_WRITE != 0),
        cpu: current_cpu(),
    };
    report(&fault)
}

/// Hands `fault` to the fatal hook, or prints it and exits when there is none (or when the hook
/// itself faulted).
fn report(fault: &Fault) -> ! {
    let hook = FATAL_HOOK.load(Ordering::Acquire);
    if !hook.is_null() && !REPORTING.replace(true) {
        // SAFETY: non-null values in FATAL_HOOK were stored by `set_fatal_hook` from a
        // `fn(&Fault) -> !`; function and data pointers have the same representation on x86_64.
        let hook = unsafe { std::mem::transmute::<*mut (), fn(&Fault) -> !>(hook) };
        hook(fault);
    }
    let mut line = Line::new();
    line.push(b"storsim: fatal signal ");
    line.push_decimal(fault.signal as u64);
    line.push(b" at rip 0x");
    line.push_hex(fault.rip as u64);
    line.push(b", addr 0x");
    line.push_hex(fault.addr as u64);
    line.push(b", cpu ");
    line.push_decimal(u64::from(fault.cpu));
    line.push(if hook.is_null() {
        b" (no fatal hook set)\n"
    } else {
        b" (inside the fatal hook)\n"
    });
    let bytes = line.as_bytes();
    // SAFETY: writes `bytes.len()` initialized bytes from a live buffer to stderr.
    unsafe { libc::write(libc::STDERR_FILENO, bytes.as_ptr().cast(), bytes.len()) };
    // SAFETY: `_exit` is async-signal-safe and ends the process without running any user code.
    unsafe { libc::_exit(FALLBACK_EXIT_CODE) }
}

/// A fixed-size line buffer: formatting without allocation, for use in the signal handler.
struct Line {
    bytes: [u8; 128],
    len: usize,
}

impl Line {
    fn new() -> Self {
        Line {
            bytes: [0; 128],
            len: 0,
        }
    }

    /// Appends `text`, silently truncating at the buffer's end.
    fn push(&mut self, text: &[u8]) {
        let n = text.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&text[..n]);
        self.len += n;
    }

    fn push_hex(&mut self, value: u64) {
        self.push_radix(value, 16);
    }

    fn push_decimal(&mut self, value: u64) {
        self.push_radix(value, 10);
    }

    fn push_radix(&mut self, mut value: u64, radix: u64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b"0123456789abcdef"[(value % radix) as usize];
            value /= radix;
            if value == 0 {
                break;
            }
        }
        self.push(&digits[at..]);
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::Line;

    #[test]
    fn line_formats_without_allocating() {
        let mut line = Line::new();
        line.push(b"sig ");
        line.push_decimal(11);
        line.push(b" 0x");
        line.push_hex(0xdead_beef_0000);
        line.push(b" ");
        line.push_decimal(0);
        line.push(b" ");
        line.push_hex(u64::MAX);
        assert_eq!(line.as_bytes(), b"sig 11 0xdeadbeef0000 0 ffffffffffffffff");
        line.push(&[b'x'; 200]);
        assert_eq!(line.as_bytes().len(), 128);
    }
}
