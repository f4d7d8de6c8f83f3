//! What a PROXY protocol header costs the node per connection: [`mtac_runtime::proxy::parse`]
//! (framing and `ppp`'s decoding, TLVs walked) on the headers HAProxy writes.
//!
//! ```text
//! cargo bench -p mtac-runtime --bench proxy -- --quick
//! ```
//!
//! - `v1_tcp4`: `send-proxy`'s text header for an IPv4 client.
//! - `v1_tcp6`: the same for an IPv6 client.
//! - `v2_tcp4_tlvs`: `send-proxy-v2` with the TLVs a TLS-terminating balancer adds (ALPN,
//!   authority, a unique id).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;

fn v2_tcp4_tlvs() -> Vec<u8> {
    let mut body = vec![192, 0, 2, 7, 10, 0, 0, 1, 0xC3, 0x50, 0, 25];
    body.extend_from_slice(b"\x01\x00\x02h2");
    body.extend_from_slice(b"\x02\x00\x0bexample.com");
    body.extend_from_slice(b"\x05\x00\x10abcdef0123456789");
    let mut out = b"\r\n\r\n\0\r\nQUIT\n\x21\x11".to_vec();
    out.extend_from_slice(&u16::try_from(body.len()).unwrap().to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fn bench(c: &mut Criterion) {
    let headers: [(&str, Vec<u8>); 3] = [
        ("v1_tcp4", b"PROXY TCP4 192.0.2.7 10.0.0.1 50000 25\r\n".to_vec()),
        ("v1_tcp6", b"PROXY TCP6 2001:db8::7 2001:db8::1 50000 25\r\n".to_vec()),
        ("v2_tcp4_tlvs", v2_tcp4_tlvs()),
    ];
    let mut group = c.benchmark_group("proxy_header");
    group.throughput(Throughput::Elements(1));
    for (name, header) in &headers {
        assert!(mtac_runtime::proxy::parse(header).unwrap().unwrap().client.is_some());
        group.bench_function(*name, |b| b.iter(|| black_box(mtac_runtime::proxy::parse(black_box(header)))));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
