//! Corpus replay for the `ruleset_reader` fuzz target: every committed input of
//! `fuzz/corpus/ruleset_reader/` through the target's own checks, on stable, in every
//! `cargo test`.

#[test]
fn ruleset_reader_corpus_replays() {
    mtac_ruleset::fuzz::replay_corpus("ruleset_reader", mtac_ruleset::fuzz::ruleset_reader);
}
