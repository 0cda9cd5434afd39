//! A ratchet on what we fear (STYLE.md rule 14): per crate, the number of `unsafe` sites,
//! `transmute`s and `static mut`s may go down but never up without someone raising the limit
//! here, in review, with a reason.

use std::path::Path;

/// (crate folder, unsafe sites, transmutes, `static mut`s)
const LIMITS: &[(&str, usize, usize, usize)] = &[
    ("src", 73, 0, 0),
    ("protocol/src", 0, 0, 0),
    ("abi/src", 2, 0, 0),
    ("imports/src", 23, 1, 0),
    ("storsim/src", 280, 23, 0),
    ("fixtures/src", 141, 0, 0),
];

fn count(dir: &Path, counts: &mut [usize; 3]) {
    for entry in std::fs::read_dir(dir).expect("crate folder") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            count(&path, counts);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("source");
            for line in text
                .lines()
                .map(str::trim_start)
                .filter(|l| !l.starts_with("//"))
            {
                counts[0] += unsafe_sites(line);
                counts[1] += line.matches("transmute").count();
                counts[2] += usize::from(
                    line.starts_with("static mut") || line.starts_with("pub static mut"),
                );
            }
        }
    }
}

/// `unsafe` blocks, functions, extern blocks and impls on a line; function-pointer *types*
/// (`unsafe extern "C" fn(…)`, `unsafe fn(…)`) are not unsafe code and do not count.
fn unsafe_sites(line: &str) -> usize {
    line.match_indices("unsafe ")
        .filter(|(at, _)| {
            let rest = &line[at + "unsafe ".len()..];
            let rest = rest.strip_prefix("extern ").map_or(rest, |abi| {
                abi.trim_start_matches(|c| c != ' ').trim_start()
            });
            ["{", "fn ", "extern", "impl"]
                .iter()
                .any(|p| rest.starts_with(p))
        })
        .count()
}

#[test]
fn unsafe_transmute_and_static_mut_never_grow() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut over = Vec::new();
    for &(dir, unsafe_sites, transmutes, statics) in LIMITS {
        let mut counts = [0; 3];
        count(&root.join(dir), &mut counts);
        for (what, found, limit) in [
            ("unsafe sites", counts[0], unsafe_sites),
            ("transmutes", counts[1], transmutes),
            ("static muts", counts[2], statics),
        ] {
            if found > limit {
                over.push(format!("{dir}: {found} {what}, limit {limit}"));
            } else if found < limit {
                eprintln!(
                    "{dir}: {found} {what} (limit {limit}): lower the limit in tests/ratchet.rs"
                );
            }
        }
    }
    assert!(over.is_empty(), "grew past the ratchet: {over:#?}");
}
