//! Debug output: `DbgPrintEx` with component `DPFLTR_IHVDRIVER_ID`.
//!
//! Shown by WinDbg or DebugView once the IHVDRIVER filter allows the level, e.g.
//! `ed nt!Kd_IHVDRIVER_Mask 0xF`.

pub const DPFLTR_IHVDRIVER_ID: u32 = 77;
pub const ERROR: u32 = 0;
pub const WARNING: u32 = 1;
pub const TRACE: u32 = 2;

/// `log!(level, "format", args…)`: a printf format (`%u`/`%x` take `u32`, `%I64u` takes
/// `u64`, `%p` a pointer); "revcall: " and a newline are added.
macro_rules! log {
    ($level:expr, $fmt:literal $(, $arg:expr)* $(,)?) => {
        // SAFETY: the format is a NUL-terminated literal, and by this macro's contract every
        // conversion in it matches the type of its argument.
        unsafe {
            ::nt_imports::ntoskrnl::DbgPrintEx(
                $crate::log::DPFLTR_IHVDRIVER_ID,
                $level,
                concat!("revcall: ", $fmt, "\n\0").as_ptr()
                $(, $arg)*
            )
        }
    };
}
pub(crate) use log;
