//! Arbitrary bytes after `354`: the DATA receiver must never panic, must give the same result
//! however the input is chunked, must never let a bare CR, bare LF or NUL into its output under
//! `Normalize`, must only ever stop right after `CR LF . CR LF` (or a leading `. CR LF`), and its
//! output must survive a dot-stuffing round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mtac_runtime::smtp::{BarePolicy, DataReceiver, DataStats, DotStuffer};

fn feed_all(chunks: &[&[u8]], max: u64, policy: BarePolicy) -> (Vec<u8>, usize, bool, DataStats) {
    let mut rx = DataReceiver::new(max, policy);
    let mut out = Vec::new();
    let mut consumed = 0;
    for chunk in chunks {
        let p = rx.feed(chunk, &mut out);
        assert!(p.consumed <= chunk.len());
        consumed += p.consumed;
        if p.done {
            break;
        }
        assert_eq!(p.consumed, chunk.len(), "stopped early without being done");
    }
    (out, consumed, rx.is_done(), rx.stats().clone())
}

fn assert_clean(out: &[u8]) {
    for (i, &b) in out.iter().enumerate() {
        assert_ne!(b, 0, "NUL in output");
        if b == b'\r' {
            assert_eq!(out.get(i + 1), Some(&b'\n'), "bare CR in output");
        }
        if b == b'\n' {
            assert!(i > 0 && out.get(i - 1) == Some(&b'\r'), "bare LF in output");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&control, input)) = data.split_first() else {
        return;
    };
    let policy = if control & 1 == 0 { BarePolicy::Normalize } else { BarePolicy::Reject };
    // Mostly no limit, sometimes a tiny one, so the size cut-off is exercised too.
    let max = if control & 2 == 0 { u64::MAX } else { u64::from(control >> 2) };
    let split = if input.is_empty() { 0 } else { usize::from(control) * 7919 % (input.len() + 1) };

    let (out, consumed, done, stats) = feed_all(&[input], max, policy);
    let (head, tail) = input.split_at(split);
    let two = feed_all(&[head, tail], max, policy);
    assert_eq!((&out, consumed, done, &stats), (&two.0, two.1, two.2, &two.3), "chunking changed the result");

    assert!(out.len() as u64 <= max);
    assert_eq!(stats.raw_bytes, consumed as u64);
    assert_clean(&out);
    if done {
        let read = &input[..consumed];
        assert!(read == b".\r\n" || read.ends_with(b"\r\n.\r\n"), "ended without CRLF.CRLF");
        // The earliest end marker is the one that counts, so nothing before it may be one.
        let first = if read.starts_with(b".\r\n") {
            3
        } else {
            read.windows(5).position(|w| w == b"\r\n.\r\n").map_or(usize::MAX, |p| p + 5)
        };
        assert_eq!(first, consumed, "missed an earlier end marker");
    } else {
        assert_eq!(consumed, input.len());
    }

    // Round trip: what the relay sends the back end reads back to the same content.
    if done && stats.size <= max && (policy == BarePolicy::Normalize || !stats.bare_seen()) {
        let mut wire = Vec::new();
        let mut stuffer = DotStuffer::new();
        stuffer.encode(&out, &mut wire);
        stuffer.finish(&mut wire);
        let (again, used, again_done, again_stats) = feed_all(&[&wire], u64::MAX, BarePolicy::Reject);
        assert!(again_done);
        assert_eq!(used, wire.len());
        assert_eq!(again, out);
        assert!(!again_stats.bare_seen());
    }
});
