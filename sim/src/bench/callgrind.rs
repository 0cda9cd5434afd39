//! Reads a callgrind profile (`--dump-instr=yes`) and sums the instructions executed inside one
//! address range: the driver image's own cost, whatever storsim did around it.
//!
//! Callgrind has no symbols for code storsim mapped itself, but with `--dump-instr=yes` every
//! cost line carries the instruction address, so attribution by address is exact. The format
//! (valgrind's "Callgrind Format Specification"): `positions:` names the position columns,
//! `events:` the cost columns; a position is absolute (`0x…` or decimal), relative to the
//! previous one (`+n`, `-n`) or the same (`*`); the line after `calls=` is the *inclusive* cost
//! of a call made from that position, which is not the caller's own cost.

use std::ops::Range;

/// Why a profile could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("line {line}: {what}")]
    Syntax { line: usize, what: String },
    #[error("the profile has no `events:` line with Ir")]
    NoInstructions,
    #[error(
        "self costs add up to {summed} instructions but the profile's total says {total}: \
         the reader misparsed it"
    )]
    Mismatch { summed: u64, total: u64 },
}

/// Instructions of one profile.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Instructions {
    /// Executed at addresses inside the range asked for.
    pub inside: u64,
    /// Executed anywhere (the profile's total).
    pub total: u64,
}

/// Sums the `Ir` self cost of the instructions whose address lies in `range`.
///
/// # Errors
///
/// A malformed line, a profile without `Ir`, or self costs that do not add up to the
/// profile's `totals:`/`summary:` line (so a misreading cannot pass unnoticed).
pub fn instructions_in(profile: &str, range: Range<u64>) -> Result<Instructions, ProfileError> {
    let mut position_columns = 1;
    let mut ir_column = None;
    let mut address = 0u64;
    let mut next_is_call_cost = false;
    let mut counted = Instructions::default();
    let mut stated_total = None;
    for (index, line) in profile.lines().enumerate() {
        let syntax = |what: &str| ProfileError::Syntax {
            line: index + 1,
            what: format!("{what}: {line:?}"),
        };
        if let Some(names) = line.strip_prefix("positions:") {
            position_columns = names.split_whitespace().count();
            continue;
        }
        if let Some(names) = line.strip_prefix("events:") {
            ir_column = names.split_whitespace().position(|e| e == "Ir");
            continue;
        }
        if let Some(total) = line
            .strip_prefix("totals:")
            .or_else(|| line.strip_prefix("summary:"))
        {
            let ir = ir_column.ok_or(ProfileError::NoInstructions)?;
            let value = total.split_whitespace().nth(ir).unwrap_or("0");
            stated_total = Some(value.parse().map_err(|_| syntax("a bad total"))?);
            continue;
        }
        if line.starts_with("calls=") {
            next_is_call_cost = true;
            continue;
        }
        let Some(first) = line.chars().next() else {
            continue;
        };
        if !(first.is_ascii_digit() || matches!(first, '+' | '-' | '*')) {
            // fn=, fl=, ob=, cfn=, jump=, comments and the header's other keys.
            continue;
        }
        let mut fields = line.split_whitespace();
        let instr = fields.next().ok_or_else(|| syntax("no position"))?;
        address = position(instr, address).ok_or_else(|| syntax("a bad position"))?;
        // The other position columns (source lines) do not matter here.
        let mut costs = fields.skip(position_columns - 1);
        let ir = ir_column.ok_or(ProfileError::NoInstructions)?;
        let cost = match costs.nth(ir) {
            None => 0,
            Some(value) => value.parse().map_err(|_| syntax("a bad cost"))?,
        };
        if std::mem::take(&mut next_is_call_cost) {
            continue;
        }
        counted.total += cost;
        if range.contains(&address) {
            counted.inside += cost;
        }
    }
    match stated_total {
        Some(total) if total != counted.total => Err(ProfileError::Mismatch {
            summed: counted.total,
            total,
        }),
        _ => Ok(counted),
    }
}

/// One subposition: absolute (hex or decimal), relative, or unchanged.
fn position(text: &str, last: u64) -> Option<u64> {
    let number = |digits: &str| match digits.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => digits.parse().ok(),
    };
    match text.as_bytes().first()? {
        b'*' => Some(last),
        b'+' => last.checked_add(number(&text[1..])?),
        b'-' => last.checked_sub(number(&text[1..])?),
        _ => number(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape callgrind writes with `--dump-instr=yes --dump-line=no`: a function outside
    /// the range calls one inside it; relative and repeated positions; a call's inclusive cost.
    const PROFILE: &str = "\
# callgrind format
version: 1
positions: instr
events: Ir
summary: 112

ob=(1) /usr/bin/storsim
fl=(1) ???
fn=(1) storsim::call_driver
0x1000 5
+4 3
calls=1 0x7000
* 30
+2 1
fn=(2) 0x0000000000007000
0x7000 10
+16 7
-6 2
*  1
calls=1 0x1100
+1 80
0x1100 83
";

    #[test]
    fn sums_self_cost_by_address_and_skips_inclusive_call_costs() {
        let counted = instructions_in(PROFILE, 0x7000..0x8000).unwrap();
        // 0x7000: 10, 0x7010: 7, 0x700a: 2, 0x700a: 1; the `+1 80` line is a call's inclusive cost.
        assert_eq!(counted.inside, 20);
        assert_eq!(counted.total, 5 + 3 + 1 + 20 + 83);
    }

    #[test]
    fn a_total_that_does_not_add_up_is_an_error() {
        let wrong = PROFILE.replace("summary: 112", "summary: 113");
        assert!(matches!(
            instructions_in(&wrong, 0..1),
            Err(ProfileError::Mismatch {
                summed: 112,
                total: 113
            })
        ));
    }

    #[test]
    fn position_columns_beyond_the_address_are_skipped() {
        let profile =
            "positions: instr line\nevents: Ir Dr\nfn=(1) f\n0x10 7 3 1\n+2 * 4 0\ntotals: 7 1\n";
        let counted = instructions_in(profile, 0x12..0x13).unwrap();
        assert_eq!(
            counted,
            Instructions {
                inside: 4,
                total: 7
            }
        );
    }

    #[test]
    fn garbage_is_reported_with_its_line() {
        let profile = "events: Ir\n0x10 seven\n";
        assert!(matches!(
            instructions_in(profile, 0..1),
            Err(ProfileError::Syntax { line: 2, .. })
        ));
    }
}
