//! storsim's layers depend downward only (docs/STORSIM.md): every `crate::…` path in a module
//! must name a module of a lower layer. A new top-level module must be given a layer here.

use std::collections::BTreeSet;
use std::path::Path;

/// Top-level modules, lowest layer first. Modules of one layer may not use each other.
const LAYERS: &[&[&str]] = &[
    // the ground: no storsim dependencies
    &["loader", "pool", "cpu", "faults", "verifier", "events"],
    // the machine every layer above shares
    &["machine"],
    // the I/O manager; the run's summary (plain data)
    &["io", "report"],
    // the miniport's code, typed
    &["miniport"],
    // the port driver
    &["port"],
    // the disk class driver above Storport
    &["class"],
    // the façade: one emulated machine
    &["kernel"],
    // the driver boundary: what the driver imports, then loading it and its faults
    &["exports"],
    &["driver"],
    // for scripts: boot, load, start, finish
    &["harness"],
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// The storsim modules `source` names through `crate::…` paths, outside comments.
fn crate_paths(source: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // `crate::{a, b::c}`: each item's first segment.
                let group = group.split('}').next().unwrap_or("");
                found.extend(
                    group
                        .split(',')
                        .map(|item| first_segment(item.trim()))
                        .filter(|name| !name.is_empty()),
                );
            } else {
                found.insert(first_segment(rest));
            }
        }
    }
    found
}

fn first_segment(path: &str) -> String {
    path.chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

/// Every upward or sideways edge of `module` whose source is `source`.
fn violations(module: &str, source: &str) -> Vec<String> {
    let Some(own) = layer(module) else {
        return vec![format!(
            "module `{module}` has no layer in tests/layering.rs"
        )];
    };
    crate_paths(source)
        .into_iter()
        .filter(|target| target != module)
        .filter_map(|target| match layer(&target) {
            Some(theirs) if theirs < own => None,
            Some(_) => Some(format!(
                "`{module}` uses `crate::{target}`, which is not below it"
            )),
            None => Some(format!(
                "`{module}` uses `crate::{target}`, which has no layer"
            )),
        })
        .collect()
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("source folder") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_layer_depends_only_on_lower_ones() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut found = Vec::new();
    for file in files {
        let relative = file.strip_prefix(&src).expect("under src");
        let module = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .map(|name| name.trim_end_matches(".rs").to_owned())
            .expect("a file name");
        if module == "lib" || module == "main" {
            continue;
        }
        let source = std::fs::read_to_string(&file).expect("source");
        found.extend(
            violations(&module, &source)
                .into_iter()
                .map(|v| format!("{}: {v}", relative.display())),
        );
    }
    assert!(found.is_empty(), "layering broken:\n{}", found.join("\n"));
}

#[test]
fn the_checker_sees_upward_sideways_and_grouped_edges() {
    assert!(violations("io", "use crate::machine::Machine;").is_empty());
    assert_eq!(violations("io", "use crate::kernel::Kernel;").len(), 1);
    assert_eq!(
        violations("io", "let k = crate::kernel::kernel();").len(),
        1
    );
    assert_eq!(
        violations("io", "use crate::{pool::Pool, port::Port};").len(),
        1
    );
    assert_eq!(violations("pool", "use crate::cpu;").len(), 1, "same layer");
    assert!(violations("io", "// crate::kernel in a comment").is_empty());
    assert_eq!(
        violations("newcomer", "").len(),
        1,
        "a module without a layer"
    );
}
