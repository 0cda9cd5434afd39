//! `log!("format", args…)`: one DbgPrint line prefixed `storport: ` (Wine shows it with
//! `WINEDEBUG=+debugstr`; `cargo xtask wine` reads it back).

macro_rules! log {
    ($format:literal $(, $arg:expr)* $(,)?) => {{
        // SAFETY: a NUL-terminated format whose conversions match the arguments' C types.
        unsafe {
            nt_imports::ntoskrnl::DbgPrint(
                concat!("storport: ", $format, "\n\0").as_ptr()
                $(, $arg)*
            )
        };
    }};
}
