//! Corpus replay for the `policy_kdl` fuzz target: every committed input of
//! `fuzz/corpus/policy_kdl/` through the target's own checks, on stable, in every `cargo test`.
//! The one integration-test binary of this crate.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::path::{Path, PathBuf};

#[test]
fn policy_kdl_corpus_replays() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/policy_kdl");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the policy_kdl corpus is empty");
    for path in files {
        let bytes = std::fs::read(&path).unwrap();
        if std::panic::catch_unwind(|| mtac_compiler::fuzz::policy_kdl(&bytes)).is_err() {
            panic!("fuzz input {} fails its checks", path.display());
        }
    }
}
