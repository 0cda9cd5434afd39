//! Decoding of `mov r64, cr8` / `mov cr8, r64`, the only privileged instructions storsim emulates.
//!
//! Pure code: the signal handler supplies the instruction bytes through a fetch closure, so the
//! decoder is tested here on byte slices (Intel SDM "MOV — Move to/from Control Registers";
//! docs/EMULATION-NOTES.md §4.2).

use std::ffi::c_int;

/// Which way a decoded CR8 move copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Direction {
    /// `mov r64, cr8` (`0F 20 /r`): the IRQL goes into the register.
    Read,
    /// `mov cr8, r64` (`0F 22 /r`): the register becomes the IRQL.
    Write,
}

/// A decoded CR8 move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Cr8Move {
    pub(super) direction: Direction,
    /// General-purpose register in x86 encoding order (0 = rax … 7 = rdi, 8–15 = r8–r15).
    pub(super) gpr: u8,
    /// Instruction length in bytes, to advance RIP past it.
    pub(super) len: usize,
}

/// Decodes a CR8 move from the instruction whose byte `i` is `fetch(i)`.
///
/// Returns `None` for anything else, including moves to or from other control registers and
/// encodings with ModRM.mod ≠ 0b11 (compilers never emit them; refusing keeps the rule simple).
/// Bytes are fetched one at a time and only while they still match, so a byte is read only if
/// the instruction the CPU decoded must contain it — the handler never reads past the faulting
/// instruction into a possibly unmapped page.
pub(super) fn decode_cr8_move(mut fetch: impl FnMut(usize) -> u8) -> Option<Cr8Move> {
    let first = fetch(0);
    let (rex, opcode_at) = if first & 0xF0 == 0x40 {
        (first, 1)
    } else {
        (0, 0)
    };
    if fetch(opcode_at) != 0x0F {
        return None;
    }
    let direction = match fetch(opcode_at + 1) {
        0x20 => Direction::Read,
        0x22 => Direction::Write,
        _ => return None,
    };
    let modrm = fetch(opcode_at + 2);
    if modrm >> 6 != 0b11 {
        return None;
    }
    let rex_r = (rex >> 2) & 1;
    let rex_b = rex & 1;
    let cr = ((modrm >> 3) & 7) + 8 * rex_r;
    if cr != 8 {
        return None;
    }
    Some(Cr8Move {
        direction,
        gpr: (modrm & 7) + 8 * rex_b,
        len: opcode_at + 3,
    })
}

/// glibc `mcontext_t.gregs` slot of each register in x86 encoding order (rax rcx rdx rbx rsp rbp
/// rsi rdi r8–r15); glibc orders them differently (`sys/ucontext.h`).
const GREG_SLOTS: [c_int; 16] = [
    libc::REG_RAX,
    libc::REG_RCX,
    libc::REG_RDX,
    libc::REG_RBX,
    libc::REG_RSP,
    libc::REG_RBP,
    libc::REG_RSI,
    libc::REG_RDI,
    libc::REG_R8,
    libc::REG_R9,
    libc::REG_R10,
    libc::REG_R11,
    libc::REG_R12,
    libc::REG_R13,
    libc::REG_R14,
    libc::REG_R15,
];

/// Index into `gregs` of general-purpose register `gpr` (x86 encoding order, 0–15).
pub(super) fn greg_slot(gpr: u8) -> usize {
    // The table holds small non-negative constants, so the cast is lossless.
    GREG_SLOTS[usize::from(gpr & 15)] as usize
}

#[cfg(test)]
mod tests {
    use super::{Cr8Move, Direction, decode_cr8_move, greg_slot};

    /// Decodes from a slice; indexing past its end panics, proving the decoder stays inside.
    fn decode(bytes: &[u8]) -> Option<Cr8Move> {
        decode_cr8_move(|i| bytes[i])
    }

    #[test]
    fn cr8_reads_and_writes_decode() {
        // 44 0F 20 C0 = mov rax, cr8; 44 0F 22 C1 = mov cr8, rcx (docs/EMULATION-NOTES.md §4.2).
        assert_eq!(
            decode(&[0x44, 0x0F, 0x20, 0xC0]),
            Some(Cr8Move {
                direction: Direction::Read,
                gpr: 0,
                len: 4
            })
        );
        assert_eq!(
            decode(&[0x44, 0x0F, 0x22, 0xC1]),
            Some(Cr8Move {
                direction: Direction::Write,
                gpr: 1,
                len: 4
            })
        );
        // REX.WRB (4D): mov r15, cr8 — REX.B extends rm, REX.W is ignored.
        assert_eq!(
            decode(&[0x4D, 0x0F, 0x20, 0xC7]),
            Some(Cr8Move {
                direction: Direction::Read,
                gpr: 15,
                len: 4
            })
        );
        // 45 0F 22 C0 = mov cr8, r8.
        assert_eq!(
            decode(&[0x45, 0x0F, 0x22, 0xC0]),
            Some(Cr8Move {
                direction: Direction::Write,
                gpr: 8,
                len: 4
            })
        );
        // 44 0F 20 C4 = mov rsp, cr8: rm 4 is a plain register here, not a SIB escape.
        assert_eq!(
            decode(&[0x44, 0x0F, 0x20, 0xC4]),
            Some(Cr8Move {
                direction: Direction::Read,
                gpr: 4,
                len: 4
            })
        );
    }

    #[test]
    fn other_instructions_are_refused() {
        // Without REX.R the control register is CR0, CR2, CR3, CR4.
        assert_eq!(decode(&[0x0F, 0x20, 0xC0]), None);
        assert_eq!(decode(&[0x0F, 0x22, 0xD8]), None);
        // REX.R with reg 1 names CR9, which does not exist.
        assert_eq!(decode(&[0x44, 0x0F, 0x20, 0xC8]), None);
        // ModRM.mod ≠ 0b11.
        assert_eq!(decode(&[0x44, 0x0F, 0x20, 0x00]), None);
        // mov r64, dr0 (0F 21) and ud2 (0F 0B) stop after the opcode byte.
        assert_eq!(decode(&[0x44, 0x0F, 0x21]), None);
        assert_eq!(decode(&[0x0F, 0x0B]), None);
        // hlt, cli: one byte, nothing more is read.
        assert_eq!(decode(&[0xF4]), None);
        assert_eq!(decode(&[0xFA]), None);
    }

    #[test]
    fn greg_slots_follow_glibc_order() {
        // docs/EMULATION-NOTES.md §4.2: rax rcx rdx rbx rsp rbp rsi rdi r8–r15 → 13 14 12 11 15 10 9 8 0–7.
        let slots: Vec<usize> = (0..16).map(greg_slot).collect();
        assert_eq!(
            slots,
            [13, 14, 12, 11, 15, 10, 9, 8, 0, 1, 2, 3, 4, 5, 6, 7]
        );
    }
}
