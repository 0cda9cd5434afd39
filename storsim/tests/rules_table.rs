//! The README's table of storsim-defined P1 values says what `verifier::rules` says: the
//! same rules, in the same order, with the same sentences.

use storsim::verifier::rules::STORSIM_RULES;

/// `(p1, sentence)` rows of the README's table: lines `| 0x57…… | … |`.
fn readme_rows(readme: &str) -> Vec<(u64, String)> {
    readme
        .lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.trim().trim_matches('|').split(" | ").collect();
            let [p1, what] = cells.as_slice() else {
                return None;
            };
            let p1 = u64::from_str_radix(p1.trim().strip_prefix("0x57")?, 16).ok()?;
            Some((0x5700_0000 | p1, what.trim().to_owned()))
        })
        .collect()
}

#[test]
fn the_readme_lists_every_storsim_rule_as_the_table_says_it() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md at the repository root");
    let rows = readme_rows(&readme);
    let rules: Vec<(u64, String)> = STORSIM_RULES
        .iter()
        .map(|rule| (rule.p1, rule.what.to_owned()))
        .collect();
    assert_eq!(
        rows, rules,
        "README.md's P1 table and verifier/rules.rs disagree"
    );
}

#[test]
fn the_row_reader_reads_rows_and_only_rows() {
    let rows = readme_rows("| P1 | rule |\n|---|---|\n| 0x5700000A | a thing |\ntext | 0x57 | x\n");
    assert_eq!(rows, vec![(0x5700_000A, "a thing".to_owned())]);
}
