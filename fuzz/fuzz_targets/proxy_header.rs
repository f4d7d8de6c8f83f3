//! Arbitrary bytes where a load balancer's PROXY protocol header (v1 or v2, TLVs included) is
//! expected. The checks live in `mtac_runtime::proxy::fuzz::proxy_header`, where `cargo test`
//! also replays this target's corpus.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| mtac_runtime::proxy::fuzz::proxy_header(data));
