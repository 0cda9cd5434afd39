//! DbgPrint, DbgPrintEx and StorPortDebugPrint: variadic, so each enters through a naked
//! trampoline that spills the register arguments into the caller's home area and hands the
//! formatter a pointer to argument 0 (docs/EMULATION-NOTES.md §3.2 option b).

use std::ffi::c_void;

use crate::kernel::kernel;

macro_rules! spill_trampoline {
    ($entry:ident => $imp:ident) => {
        /// Variadic entry: arguments spilled to the home area, then `
        #[doc = stringify!($imp)]
        /// ` gets a pointer to argument 0 (argument n at `+8n`).
        #[unsafe(naked)]
        pub unsafe extern "win64" fn $entry() {
            core::arch::naked_asm!(
                "mov [rsp + 8], rcx",
                "mov [rsp + 16], rdx",
                "mov [rsp + 24], r8",
                "mov [rsp + 32], r9",
                "sub rsp, 40",
                "lea rcx, [rsp + 48]",
                "call {imp}",
                "add rsp, 40",
                "ret",
                imp = sym $imp,
            )
        }
    };
}

spill_trampoline!(dbg_print => dbg_print_args);
spill_trampoline!(dbg_print_ex => dbg_print_ex_args);
spill_trampoline!(stor_port_debug_print => stor_port_debug_print_args);

/// Argument slots of a Win64 variadic call, starting at the format string.
struct Args {
    next: *const u64,
}

impl Args {
    fn take(&mut self) -> u64 {
        // SAFETY: the caller's contract (DbgPrint's): every conversion in the format has an
        // argument; each occupies one 8-byte slot in the spilled/stack argument area.
        let value = unsafe { self.next.read() };
        self.next = self.next.wrapping_add(1);
        value
    }
}

unsafe extern "win64" fn dbg_print_args(args: *const u64) -> u32 {
    // SAFETY: argument 0 is the format string.
    let format = unsafe { args.read() } as *const u8;
    emit("DbgPrint", format, args.wrapping_add(1))
}

unsafe extern "win64" fn dbg_print_ex_args(args: *const u64) -> u32 {
    // SAFETY: argument 2 is the format string (ComponentId, Level, Format, …).
    let format = unsafe { args.wrapping_add(2).read() } as *const u8;
    emit("DbgPrintEx", format, args.wrapping_add(3))
}

unsafe extern "win64" fn stor_port_debug_print_args(args: *const u64) -> u32 {
    // SAFETY: argument 1 is the format string (DebugPrintLevel, DebugMessage, …).
    let format = unsafe { args.wrapping_add(1).read() } as *const u8;
    emit("StorPortDebugPrint", format, args.wrapping_add(2))
}

fn emit(routine: &str, format: *const u8, args: *const u64) -> u32 {
    let text = format_message(format, Args { next: args });
    kernel().note(format!("{routine}: {}", text.trim_end()));
    0
}

/// The longest string storsim reads from a driver pointer.
const MAX_STRING: usize = 4096;

fn c_string(pointer: *const u8) -> String {
    if pointer.is_null() {
        return "(null)".into();
    }
    let mut bytes = Vec::new();
    while bytes.len() < MAX_STRING {
        // SAFETY: the driver passed a NUL-terminated string; reading stops at the NUL.
        let byte = unsafe { pointer.wrapping_add(bytes.len()).read() };
        if byte == 0 {
            break;
        }
        bytes.push(byte);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn wide_string(pointer: *const u16, length: Option<usize>) -> String {
    if pointer.is_null() {
        return "(null)".into();
    }
    let mut units = Vec::new();
    while units.len() < length.unwrap_or(MAX_STRING).min(MAX_STRING) {
        // SAFETY: the driver passed a NUL-terminated (or counted) UTF-16 string.
        let unit = unsafe { pointer.wrapping_add(units.len()).read_unaligned() };
        if length.is_none() && unit == 0 {
            break;
        }
        units.push(unit);
    }
    String::from_utf16_lossy(&units)
}

/// Counted strings: ANSI_STRING / UNICODE_STRING { USHORT Length; USHORT Max; PVOID Buffer }.
fn counted(pointer: *const u8, wide: bool) -> String {
    if pointer.is_null() {
        return "(null)".into();
    }
    // SAFETY: the driver passed a STRING structure: Length at 0, Buffer at 8.
    let length = unsafe { pointer.cast::<u16>().read_unaligned() } as usize;
    // SAFETY: the same STRING structure: its Buffer pointer at offset 8.
    let buffer = unsafe { pointer.wrapping_add(8).cast::<usize>().read_unaligned() };
    if wide {
        wide_string(buffer as *const u16, Some(length / 2))
    } else {
        let mut bytes = Vec::with_capacity(length);
        for i in 0..length.min(MAX_STRING) {
            // SAFETY: Length bytes are readable at Buffer.
            bytes.push(unsafe { (buffer as *const u8).wrapping_add(i).read() });
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// At most `length` bytes of a string, stopping early at a NUL (`%.*s`).
fn counted_bytes(pointer: *const u8, length: usize) -> String {
    if pointer.is_null() {
        return "(null)".into();
    }
    let mut bytes = Vec::new();
    while bytes.len() < length.min(MAX_STRING) {
        // SAFETY: the driver promises `length` readable bytes or a NUL before them.
        let byte = unsafe { pointer.wrapping_add(bytes.len()).read() };
        if byte == 0 {
            break;
        }
        bytes.push(byte);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The DbgPrint format subset: `%s %S %ws %Z %wZ %p %x %X %d %i %u %c %%` with flags `-0`,
/// a width, a precision (`.N`, `.*`) for strings, and the size prefixes `h l ll I64 w`.
fn format_message(format: *const u8, mut args: Args) -> String {
    let format = c_string(format);
    let mut out = String::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut left = false;
        let mut zero = false;
        while let Some(&flag) = chars.peek() {
            match flag {
                '-' => left = true,
                '0' => zero = true,
                '+' | ' ' | '#' => {}
                _ => break,
            }
            chars.next();
        }
        let mut width = 0usize;
        while let Some(digit) = chars.peek().and_then(|d| d.to_digit(10)) {
            width = width * 10 + digit as usize;
            chars.next();
        }
        let mut precision = None;
        if chars.peek() == Some(&'.') {
            chars.next();
            if chars.peek() == Some(&'*') {
                chars.next();
                precision = Some(args.take() as u32 as usize);
            } else {
                let mut digits = 0usize;
                while let Some(digit) = chars.peek().and_then(|d| d.to_digit(10)) {
                    digits = digits * 10 + digit as usize;
                    chars.next();
                }
                precision = Some(digits);
            }
        }
        let mut long = false;
        let mut wide = false;
        loop {
            match chars.peek() {
                Some('l') => {
                    chars.next();
                    if chars.peek() == Some(&'l') {
                        chars.next();
                    }
                    long = true;
                }
                Some('h') => {
                    chars.next();
                }
                Some('w') => {
                    chars.next();
                    wide = true;
                }
                Some('I') => {
                    chars.next();
                    if chars.peek() == Some(&'6') {
                        chars.next();
                        chars.next();
                    }
                    long = true;
                }
                _ => break,
            }
        }
        let field = match chars.next() {
            Some('%') => "%".to_owned(),
            Some('s') if wide => wide_string(args.take() as *const u16, precision),
            Some('s') => match precision {
                Some(length) => counted_bytes(args.take() as *const u8, length),
                None => c_string(args.take() as *const u8),
            },
            Some('S') => wide_string(args.take() as *const u16, precision),
            Some('Z') => counted(args.take() as *const u8, wide),
            Some('c') => char::from(args.take() as u8).to_string(),
            Some('p') => format!("{:016X}", args.take()),
            Some(conversion @ ('x' | 'X' | 'd' | 'i' | 'u')) => {
                let raw = args.take();
                let value = if long { raw } else { raw & 0xFFFF_FFFF };
                match conversion {
                    'x' => format!("{value:x}"),
                    'X' => format!("{value:X}"),
                    'u' => value.to_string(),
                    _ if long => (value as i64).to_string(),
                    _ => (value as u32 as i32).to_string(),
                }
            }
            Some(other) => format!("%{other}"),
            None => "%".to_owned(),
        };
        let pad = width.saturating_sub(field.chars().count());
        if left {
            out.push_str(&field);
            out.extend(std::iter::repeat_n(' ', pad));
        } else {
            out.extend(std::iter::repeat_n(if zero { '0' } else { ' ' }, pad));
            out.push_str(&field);
        }
    }
    out
}

/// The `c_void` the trampolines stand for in the export table.
pub fn address(entry: unsafe extern "win64" fn()) -> usize {
    entry as *const c_void as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn format(text: &str, args: &[u64]) -> String {
        let text = format!("{text}\0");
        format_message(
            text.as_ptr(),
            Args {
                next: args.as_ptr(),
            },
        )
    }

    #[test]
    fn formats_the_dbgprint_subset() {
        let name = b"revcall\0";
        let wide: Vec<u16> = "wide\0".encode_utf16().collect();
        assert_eq!(
            format(
                "%s: %u %x %X %d",
                &[name.as_ptr() as u64, 7, 255, 255, u64::from(-3i32 as u32)]
            ),
            "revcall: 7 ff FF -3"
        );
        assert_eq!(
            format("%I64u %llx %lu", &[u64::MAX, 0x1_0000_0000, 5]),
            "18446744073709551615 100000000 5"
        );
        assert_eq!(
            format("[%08x] [%-4d] %%", &[0xbeef, 12]),
            "[0000beef] [12  ] %"
        );
        assert_eq!(
            format(
                "%ws %S %c",
                &[wide.as_ptr() as u64, wide.as_ptr() as u64, u64::from(b'!')]
            ),
            "wide wide !"
        );
        let record: [u64; 2] = [8 | (8 << 16), wide.as_ptr() as u64];
        assert_eq!(format("%wZ", &[record.as_ptr() as u64]), "wide");
        assert_eq!(format("%s", &[0]), "(null)");
        assert_eq!(
            format(
                "[%.*s] [%.3s]",
                &[4, name.as_ptr() as u64, name.as_ptr() as u64]
            ),
            "[revc] [rev]"
        );
    }
}
