//! The checks of the `policy_kdl` fuzz target, kept here so that the target (in `fuzz/`, nightly
//! and libFuzzer) and the corpus replay test (`tests/fuzz_corpus.rs`, stable, in every
//! `cargo test`) run exactly the same code. Not part of the API.
//!
//! Arbitrary bytes as a policy: the compiler must answer with diagnostics, never panic; every
//! diagnostic must render; and a policy that compiles gives bytes that load back as the same
//! ruleset, the same bytes again on a second run.
//!
//! Includes and lists are resolved against the working directory (`dir` is `None`), so an input
//! that names a file on disk reads it; that is what `mtac check` on a stray policy would do too.

use crate::diag;

/// Runs every check on one input; panics (the fuzzer's signal) only on a bug.
#[doc(hidden)]
pub fn policy_kdl(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let compilation = crate::compile_text("fuzz.kdl", text, None);
    for d in &compilation.diagnostics.list {
        let _ = diag::render(d, false);
    }
    let Some(output) = compilation.output else {
        return;
    };
    assert!(!compilation.diagnostics.has_errors(), "output despite errors");
    let reloaded = mtac_ruleset::Ruleset::from_vec(output.bytes.clone());
    assert!(reloaded.is_ok(), "the compiled ruleset does not load back: {:?}", reloaded.err());
    let reloaded = reloaded.ok();
    assert_eq!(reloaded.map(|r| r.hash_hex()), Some(output.ruleset.hash_hex()));
    let again = crate::compile_text("fuzz.kdl", text, None).output.map(|o| o.bytes);
    assert!(again.as_ref() == Some(&output.bytes), "the same policy compiled to different bytes");
}
