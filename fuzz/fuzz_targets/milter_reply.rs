//! Arbitrary bytes where a milter's replies are expected (a broken or hostile milter). The
//! checks live in `mtac_runtime::milter::codec::fuzz::check`, where `cargo test` also replays
//! this target's corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mtac_runtime::milter::codec::fuzz::check(data));
