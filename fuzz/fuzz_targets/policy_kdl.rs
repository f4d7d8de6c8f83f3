//! Arbitrary bytes as a KDL policy. The checks live in `mtac_compiler::fuzz::policy_kdl`, where
//! `cargo test` also replays this target's corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mtac_compiler::fuzz::policy_kdl(data));
