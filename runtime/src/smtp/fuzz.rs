//! The checks of the `smtp_command` and `smtp_data` fuzz targets, kept here so that the targets
//! (in `fuzz/`, nightly and libFuzzer) and the corpus replay tests below (stable, in every
//! `cargo test`) run exactly the same code. Not part of the API.
//!
//! Each function takes the fuzzer's bytes, whose first byte is a control byte (limits, policy,
//! where to split the input) and the rest the client's bytes, and panics only on a bug.

use super::{
    parse, BarePolicy, DataProgress, DataReceiver, DataStats, DotStuffer, Frame, LineReader, Reply, MAX_REPLY_LINE,
};

/// Arbitrary bytes on the command channel: framing and parsing must never panic, every line the
/// reader hands out is within its limit and free of LF, and every reply built from a parse error
/// (which may echo client text) is well-formed on the wire.
#[doc(hidden)]
pub fn smtp_command(data: &[u8]) {
    let Some((&control, input)) = data.split_first() else {
        return;
    };
    let max_line = usize::from(control) * 4;
    let mut reader = LineReader::new(max_line);
    let mut buf: Vec<u8> = Vec::new();
    // Feed in two pieces so the NeedMore/skip paths run.
    let (head, tail) = input.split_at(usize::from(control) % (input.len() + 1));
    for piece in [head, tail] {
        buf.extend_from_slice(piece);
        loop {
            let framed = reader.read(&buf);
            assert!(framed.consumed <= buf.len());
            let more = match framed.frame {
                Frame::Line(line) => {
                    assert!(line.len() <= max_line);
                    assert!(!line.contains(&b'\n'));
                    if let Err(e) = parse(line) {
                        assert_wire_ok(&e.reply().to_bytes());
                    }
                    true
                }
                Frame::TooLong => true,
                Frame::NeedMore => false,
            };
            buf.drain(..framed.consumed);
            if !more {
                break;
            }
        }
    }
    // Client text echoed into replies must not break them either.
    if let Ok(text) = std::str::from_utf8(input) {
        assert_wire_ok(&Reply::bad_sequence(text).to_bytes());
        if let Ok(r) = Reply::new(550, None, text) {
            assert_wire_ok(&r.to_bytes());
        }
    }
}

/// A reply as sent: CRLF-terminated lines of at most [`MAX_REPLY_LINE`] bytes, each a three-digit
/// code and printable ASCII.
fn assert_wire_ok(bytes: &[u8]) {
    assert!(bytes.ends_with(b"\r\n"));
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        assert!(line.len() <= MAX_REPLY_LINE);
        let body = line.strip_suffix(b"\r\n");
        assert!(body.is_some(), "reply line not ended by CRLF");
        let body = body.unwrap_or_default();
        assert!(body.iter().all(|&b| (0x20..0x7f).contains(&b)), "unsafe byte in reply");
        assert!(body.get(..3).is_some_and(|code| code.iter().all(u8::is_ascii_digit)), "reply line without a code");
    }
}

/// Arbitrary bytes after `354`: the DATA receiver must never panic, must give the same result
/// however the input is chunked, must never let a bare CR, bare LF or NUL into its output under
/// `Normalize`, must only ever stop right after `CR LF . CR LF` (or a leading `. CR LF`), and its
/// output must survive a dot-stuffing round trip.
#[doc(hidden)]
pub fn smtp_data(data: &[u8]) {
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
        let read = input.get(..consumed).unwrap_or_default();
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

    verdict_filter(&out, control);

    // BDAT (RFC 3030): the same bytes as two chunks. All consumed, nothing in them ends the
    // message, the output is clean, and clean input within the limit comes out unchanged (no
    // dot-unstuffing).
    let mut chunks = DataReceiver::chunked(max, policy);
    let mut chunked = Vec::new();
    for piece in [head, tail] {
        assert_eq!(chunks.feed(piece, &mut chunked), DataProgress { consumed: piece.len(), done: false });
    }
    chunks.end_chunks(&mut chunked);
    assert!(chunked.len() as u64 <= max);
    assert_clean(&chunked);
    if !chunks.stats().bare_seen() && chunks.stats().size <= max {
        assert_eq!(chunked, input, "BDAT content changed");
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
}

/// The verdict filter on the receiver's output: the same result however it is chunked, never a
/// bare CR or LF, never longer than its input when removing, and removing twice is removing once
/// (nothing it lets through is a field it should have taken out).
fn verdict_filter(content: &[u8], control: u8) {
    use mtac_ruleset::model::VerdictHeaders;
    let rules = VerdictHeaders {
        names: vec!["x-spam-flag".to_owned(), "x".to_owned()],
        authserv_ids: vec!["mx.example".to_owned()],
        rename: control & 4 != 0,
    };
    let run = |chunks: &[&[u8]]| {
        let mut filter = super::VerdictFilter::new(&rules);
        let mut out = Vec::new();
        for chunk in chunks {
            filter.feed(chunk, &mut out);
        }
        filter.finish(&mut out);
        out
    };
    let whole = run(&[content]);
    let split = usize::from(control) * 31 % (content.len() + 1);
    let (head, tail) = content.split_at(split);
    assert_eq!(whole, run(&[head, tail]), "chunking changed the filter's result");
    assert_clean(&whole);
    if !rules.rename {
        assert!(whole.len() <= content.len());
        assert_eq!(run(&[&whole]), whole, "a second pass removed more");
    }
}

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

/// Corpus replay: every committed input of the two targets, through the same checks, on stable.
#[cfg(test)]
mod tests {
    #[test]
    fn smtp_command_corpus_replays() {
        mtac_ruleset::fuzz::replay_corpus("smtp_command", super::smtp_command);
    }

    #[test]
    fn smtp_data_corpus_replays() {
        mtac_ruleset::fuzz::replay_corpus("smtp_data", super::smtp_data);
    }
}
