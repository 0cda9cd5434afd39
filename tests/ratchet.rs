//! A ratchet on what we fear (STYLE.md rule 14): per crate, the number of `unsafe` sites,
//! `transmute`s, `static` items and `static mut`s equals its row here. A count that grows
//! fails until someone raises the row, in review, with a reason; a count that falls fails until
//! the row is lowered, so the limits never go slack. Every crate of the repository has a row.

use std::path::{Path, PathBuf};

/// (crate folder, unsafe sites, transmutes, statics, `static mut`s)
const LIMITS: &[(&str, usize, usize, usize, usize)] = &[
    (".", 90, 0, 2, 0),
    ("abi", 12, 0, 0, 0),
    ("client", 0, 0, 0, 0),
    ("client-driver", 10, 0, 2, 0),
    ("fixtures", 191, 0, 3, 0),
    ("fuzz", 0, 0, 2, 0),
    ("imports", 39, 1, 0, 0),
    ("kclient", 76, 0, 0, 0),
    ("protocol", 0, 0, 0, 0),
    ("scsi", 0, 0, 0, 0),
    ("standin", 178, 4, 1, 0),
    ("sim", 3, 0, 1, 0),
    ("storsim", 315, 6, 36, 0),
    ("tester", 44, 0, 0, 0),
    ("xtask", 0, 0, 1, 0),
];

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    unsafe_sites: usize,
    transmutes: usize,
    statics: usize,
    static_muts: usize,
}

impl Counts {
    fn add(&mut self, line: &str) {
        let line = line.trim_start();
        if line.starts_with("//") {
            return;
        }
        self.unsafe_sites += unsafe_sites(line);
        self.transmutes += line.matches("transmute").count();
        let item = ["pub(crate) ", "pub(super) ", "pub "]
            .iter()
            .find_map(|vis| line.strip_prefix(vis))
            .unwrap_or(line);
        if let Some(rest) = item.strip_prefix("static ") {
            self.statics += 1;
            self.static_muts += usize::from(rest.starts_with("mut "));
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

/// The crates: the repository root and every folder with a Cargo.toml below it.
fn crates(root: &Path) -> Vec<String> {
    let mut found = vec![".".to_owned()];
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("a folder") {
            let path = entry.expect("an entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !path.is_dir() || name == "target" || name.starts_with('.') {
                continue;
            }
            if path.join("Cargo.toml").exists() {
                let relative = path.strip_prefix(root).expect("below the root");
                found.push(relative.display().to_string());
            }
            dirs.push(path);
        }
    }
    found.sort();
    found
}

/// The Rust files of the crate at `dir`: everything below it but other crates and `target`.
fn count(dir: &Path, counts: &mut Counts) {
    for entry in std::fs::read_dir(dir).expect("a crate folder") {
        let path = entry.expect("an entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') && !path.join("Cargo.toml").exists() {
                count(&path, counts);
            }
        } else if name.ends_with(".rs") && !path.ends_with("tests/ratchet.rs") {
            // (This file's own examples are not code.)
            let text = std::fs::read_to_string(&path).expect("a source file");
            text.lines().for_each(|line| counts.add(line));
        }
    }
}

fn counts_of(root: &Path, dir: &str) -> Counts {
    let mut counts = Counts::default();
    count(&root.join(dir), &mut counts);
    counts
}

fn row(dir: &str, c: Counts) -> String {
    format!(
        "    ({dir:?}, {}, {}, {}, {}),",
        c.unsafe_sites, c.transmutes, c.statics, c.static_muts
    )
}

#[test]
fn every_crate_stays_exactly_at_its_row() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut wrong = Vec::new();
    let crates = crates(&root);
    for dir in &crates {
        let found = counts_of(&root, dir);
        match LIMITS.iter().find(|limit| limit.0 == dir) {
            None => wrong.push(format!("{dir}: no row; add\n{}", row(dir, found))),
            Some(&(_, unsafe_sites, transmutes, statics, static_muts)) => {
                let limit = Counts {
                    unsafe_sites,
                    transmutes,
                    statics,
                    static_muts,
                };
                if found != limit {
                    wrong.push(format!(
                        "{dir}: counted {found:?}, the row says {limit:?}; if that is right, the row is\n{}",
                        row(dir, found)
                    ));
                }
            }
        }
    }
    for limit in LIMITS {
        if !crates.iter().any(|dir| dir == limit.0) {
            wrong.push(format!(
                "{}: a row for a crate that does not exist",
                limit.0
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_line_counter_counts_what_it_should() {
    let mut c = Counts::default();
    for line in [
        "unsafe { x() };",
        "pub unsafe fn f() {}",
        "unsafe extern \"C\" { fn g(); }",
        "unsafe impl Send for T {}",
        "type F = unsafe extern \"win64\" fn(u8);",
        "// unsafe { in a comment }",
        "let f: unsafe fn() = g;",
        "static A: u8 = 0;",
        "pub(crate) static B: u8 = 0;",
        "static mut C: u8 = 0;",
        "fn f(x: &'static str) {}",
        "std::mem::transmute::<u8, i8>(1)",
    ] {
        c.add(line);
    }
    assert_eq!(
        c,
        Counts {
            unsafe_sites: 4,
            transmutes: 1,
            statics: 3,
            static_muts: 1,
        }
    );
}
