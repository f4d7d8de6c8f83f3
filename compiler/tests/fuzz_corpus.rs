//! Corpus replay for the `policy_kdl` fuzz target: every committed input of
//! `fuzz/corpus/policy_kdl/` through the target's own checks, on stable, in every `cargo test`.
//! The one integration-test binary of this crate.

#[test]
fn policy_kdl_corpus_replays() {
    mtac_ruleset::fuzz::replay_corpus("policy_kdl", mtac_compiler::fuzz::policy_kdl);
}
