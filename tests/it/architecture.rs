//! ARCHITECTURE.md is checked against the tree, so the map fails loudly when the code moves
//! (rust-analyzer checks its architecture.md the same way): every Rust source file of the code
//! directories has its line in the code map, and every file the map names exists.

use std::collections::BTreeSet;
use std::path::Path;

/// The code directories the map covers, as its `### `DIR/`` headings name them, and where their
/// sources live.
const DIRECTORIES: &[(&str, &str)] = &[
    ("ruleset/", "ruleset/src"),
    ("compiler/", "compiler/src"),
    ("runtime/", "runtime/src"),
    ("src/", "src"),
    ("bench/tls-load/", "bench/tls-load/src"),
];

/// The `.rs` files under `root`, as paths relative to it (`conn/rcpt.rs`).
fn sources(root: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                found.insert(path.strip_prefix(root).unwrap().to_string_lossy().replace('\\', "/"));
            }
        }
    }
    found
}

/// The section of the map under the heading that names `dir`, up to the next heading.
fn section<'a>(map: &'a str, dir: &str) -> &'a str {
    let heading = format!("### `{dir}`");
    let start = map.find(&heading).unwrap_or_else(|| panic!("ARCHITECTURE.md has no heading {heading}"));
    let rest = &map[start + heading.len()..];
    &rest[..rest.find("\n#").unwrap_or(rest.len())]
}

/// Every `…​.rs` written in backticks at the start of a bullet (`- `conn/rcpt.rs`: …`).
fn named_files(section: &str) -> BTreeSet<String> {
    section
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("- `"))
        .filter_map(|rest| rest.split('`').next())
        .filter(|name| name.ends_with(".rs"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn issue15_the_code_map_names_every_source_file_and_only_files_that_exist() {
    let map = std::fs::read_to_string("ARCHITECTURE.md").unwrap();
    let mut problems = Vec::new();
    for (dir, root) in DIRECTORIES {
        let on_disk = sources(Path::new(root));
        let in_map = named_files(section(&map, dir));
        for missing in on_disk.difference(&in_map) {
            problems.push(format!("{root}/{missing} has no line in the code map under `{dir}`"));
        }
        for stale in in_map.difference(&on_disk) {
            problems.push(format!("the code map names {root}/{stale}, which does not exist"));
        }
    }
    assert!(problems.is_empty(), "ARCHITECTURE.md is out of date:\n{}", problems.join("\n"));
}
