//! Arbitrary bytes as a ruleset file. The checks live in `mtac_ruleset::fuzz::ruleset_reader`,
//! where `cargo test` also replays this target's corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mtac_ruleset::fuzz::ruleset_reader(data));
