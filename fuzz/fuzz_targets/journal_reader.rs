//! Arbitrary bytes read as a decision journal (`mtac diff --journal` on a truncated, corrupt or
//! foreign file). The checks live in `mtac_ruleset::journal::fuzz_reader`, where `cargo test`
//! also replays this target's corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mtac_ruleset::journal::fuzz_reader(data));
