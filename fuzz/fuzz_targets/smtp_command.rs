//! Arbitrary bytes on the SMTP command channel. The checks live in
//! `mtac_runtime::smtp::fuzz::smtp_command`, where `cargo test` also replays this target's corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mtac_runtime::smtp::fuzz::smtp_command(data));
