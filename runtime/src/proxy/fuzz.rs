//! The checks of the `proxy_header` fuzz target, kept here so that the target (in `fuzz/`,
//! nightly and libFuzzer) and the corpus replay test below (stable, in every `cargo test`) run
//! exactly the same code. Not part of the API.

use super::{parse, Header, MAX_V1, MAX_V2};

/// Arbitrary bytes where a balancer's header is expected: [`parse`] never panics; a header it
/// finds lies within the input and the caps, and is found again, the same, in any longer input
/// that starts with it (so bytes that follow the header never change it), and every shorter
/// prefix of it is "need more" (so a header split across reads is the same header).
#[doc(hidden)]
pub fn proxy_header(data: &[u8]) {
    let Ok(Some(header)) = parse(data) else { return };
    let Header { len, .. } = header;
    assert!(len <= data.len(), "a header longer than its input");
    assert!(len <= MAX_V1.max(MAX_V2), "a header past the caps");
    let Some(exact) = data.get(..len) else { return };
    assert_eq!(parse(exact), Ok(Some(header)), "the header alone parses differently");
    for cut in 0..len {
        if let Some(prefix) = data.get(..cut) {
            assert_eq!(parse(prefix), Ok(None), "a prefix of {cut} bytes is not 'need more'");
        }
    }
}

/// Corpus replay: every committed input of the target, through the same checks, on stable.
#[cfg(test)]
mod tests {
    #[test]
    fn proxy_header_corpus_replays() {
        mtac_ruleset::fuzz::replay_corpus("proxy_header", super::proxy_header);
    }
}
