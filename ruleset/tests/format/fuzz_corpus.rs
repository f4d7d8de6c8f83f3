//! Corpus replay for the `ruleset_reader` fuzz target: every committed input of
//! `fuzz/corpus/ruleset_reader/` through the target's own checks, on stable, in every
//! `cargo test`.

use std::path::{Path, PathBuf};

#[test]
fn ruleset_reader_corpus_replays() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/ruleset_reader");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the ruleset_reader corpus is empty");
    for path in files {
        let bytes = std::fs::read(&path).unwrap();
        if std::panic::catch_unwind(|| mtac_ruleset::fuzz::ruleset_reader(&bytes)).is_err() {
            panic!("fuzz input {} fails its checks", path.display());
        }
    }
}
