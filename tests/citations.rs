//! The repository explains itself: every `docs/<NAME>.md` a source file or document mentions
//! exists, and every `docs/<NAME>.md §n` it cites has a section `n`.

use std::path::{Path, PathBuf};

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("a folder") {
        let path = entry.expect("an entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if !matches!(name, "target" | ".git") {
                files(&path, out);
            }
        } else if name.ends_with(".rs") || name.ends_with(".md") || name.ends_with(".toml") {
            out.push(path);
        }
    }
}

/// `(doc, section)` for each `docs/X.md` mention in `text`; the section is empty when none is
/// cited.
fn citations(text: &str) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("docs/") {
        rest = &rest[at + "docs/".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            .collect();
        let Some(name) = name
            .strip_suffix(".md")
            .or_else(|| name.split_once(".md").map(|(n, _)| n))
        else {
            continue;
        };
        let after = &rest[name.len() + ".md".len()..];
        let section = after
            .strip_prefix(" §")
            .map(|s| {
                s.chars()
                    .take_while(|c| c.is_ascii_digit() || *c == '.')
                    .collect::<String>()
                    .trim_end_matches('.')
                    .to_owned()
            })
            .unwrap_or_default();
        found.push((format!("{name}.md"), section));
    }
    found
}

/// Whether `doc` has a heading for `section` (`## 6. …`, `### 6.1 …`).
fn has_section(doc: &str, section: &str) -> bool {
    doc.lines().any(|line| {
        let heading = line.trim_start_matches('#');
        heading.len() < line.len()
            && heading
                .trim_start()
                .strip_prefix(section)
                .is_some_and(|rest| rest.starts_with(". ") || rest.starts_with(' '))
    })
}

#[test]
fn every_cited_doc_and_section_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut sources = Vec::new();
    files(root, &mut sources);
    let mut broken = Vec::new();
    // This file's own examples are not references.
    for source in sources
        .into_iter()
        .filter(|s| !s.ends_with("tests/citations.rs"))
    {
        let text = std::fs::read_to_string(&source).expect("a text file");
        for (doc, section) in citations(&text) {
            let path = root.join("docs").join(&doc);
            let where_ = source.strip_prefix(root).unwrap_or(&source).display();
            match std::fs::read_to_string(&path) {
                Err(_) => broken.push(format!("{where_}: docs/{doc} does not exist")),
                Ok(text) if !section.is_empty() && !has_section(&text, &section) => {
                    broken.push(format!("{where_}: docs/{doc} has no §{section}"))
                }
                Ok(_) => {}
            }
        }
    }
    assert!(
        broken.is_empty(),
        "stale references:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_reader_finds_docs_and_sections() {
    assert_eq!(
        citations("see docs/STORPORT-NOTES.md §6.2; and docs/WINDOWS.md."),
        [
            ("STORPORT-NOTES.md".to_owned(), "6.2".to_owned()),
            ("WINDOWS.md".to_owned(), String::new())
        ]
    );
    assert!(has_section("# T\n### 6.2 Dispatch\n", "6.2"));
    assert!(has_section("## 6. Runtime\n", "6"));
    assert!(!has_section("### 6.21 Other\n", "6.2"));
}
