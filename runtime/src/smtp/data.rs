//! The DATA receiver: message bytes in, dot-unstuffed content out, and exactly one place
//! where the message ends.
//!
//! This is the security-critical edge of mtac. SMTP smuggling (CVE-2023-51764/51765/51766)
//! works when two servers disagree about where a message ends: the attacker hides
//! `\n.\n` or `\r.\r` plus a second `MAIL FROM` inside one message; a lenient receiver
//! further down takes that as the end and the rest as new, unauthenticated commands. So:
//!
//! **Invariant: only `CR LF . CR LF` ends DATA** (or `. CR LF` as the very first line, for an
//! empty message; smtp-proto 0.2's receiver misses that case). `\n.\n`, `\r.\r`, `\n.\r\n`,
//! `\r\n.\n` and `\r.\r\n` are message content, never an end.
//!
//! **Invariant: no bare CR, bare LF or NUL ever reaches `out`.** Whatever the [`BarePolicy`],
//! the bytes are normalised on their way to `out`; under [`BarePolicy::Reject`] appending also
//! stops at the first one, and [`DataReceiver::check`] refuses the message. So mtac never hands
//! its back end a byte sequence that another parser could split differently.
//!
//! **Invariant: `out` holds unstuffed content; the relay must dot-stuff it again** (see
//! [`DotStuffer`]). A content line may be a lone `.` (the client sent `..`, or a `.` line that
//! did not end DATA because its line end was bare).
//!
//! # Normalisation
//!
//! * A bare LF becomes CRLF, as Postfix's `smtpd_forbid_bare_newline = normalize` does. It
//!   counts as a line end for dot-unstuffing (a client that ends lines with LF alone still
//!   dot-stuffs them), but a line it opens can never end DATA.
//! * A bare CR becomes a space. Turning it into CRLF would invent a line break the sender's
//!   own CRLF-speaking software never saw, which is exactly the header-splitting trick a CR
//!   smuggler wants; dropping it would glue words together. A space keeps the line structure
//!   and the token boundary, and renderers show a lone CR as white space anyway.
//! * A NUL is dropped. C-based filters stop reading a string at NUL, so a NUL can hide the rest
//!   of a header from them; renderers ignore it, so dropping it makes filters see what the
//!   reader sees (`vi\0agra` is scanned as `viagra`).
//!
//! # Dot-unstuffing
//!
//! RFC 5321 §4.5.2: at the start of a line, a `.` followed by other characters is removed
//! (`..` → `.`, `.x` → `x`). A lone `.` line that did not end DATA (its line end, or the one
//! before it, was bare) has no "other characters", so it is kept as `.`. A bare CR or a NUL
//! right after the dot counts as another character, so the dot goes.
//!
//! # Chunks (BDAT)
//!
//! [`DataReceiver::chunked`] reads RFC 3030 BDAT chunks: the same normalisation, counts and
//! size, but no dot-unstuffing and no end marker — a `.` line is content, and the message ends
//! when the session says so ([`DataReceiver::end_chunks`]), after the `LAST` chunk's octets.
//!
//! # Size
//!
//! `size` counts the content as it would be relayed: after unstuffing and normalisation,
//! including the CRLF that precedes the final dot (it belongs to the message). Once it passes
//! `max_size`, appending stops but reading goes on to the end of DATA, so the session can
//! answer `552 5.3.4` and carry on with the next command instead of dropping the connection.

use super::reply::Reply;

/// What to do with a bare CR, a bare LF or a NUL in message data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarePolicy {
    /// Read to the end of DATA, then refuse the message (`550 5.5.2`).
    Reject,
    /// Accept the message with bare LF turned into CRLF, bare CR into a space, NUL removed.
    Normalize,
}

/// Where `feed` got to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataProgress {
    /// Bytes of `input` used. When `done`, what follows is the next (pipelined) command.
    pub consumed: usize,
    /// The end-of-data marker has been read.
    pub done: bool,
}

/// Facts about the message, for the session's policy and its log line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DataStats {
    /// Bytes read from the client, end marker included.
    pub raw_bytes: u64,
    /// The content size as relayed (unstuffed, normalised), counted on even past the limit.
    /// Past the limit, `out` holds the first `max_size` bytes (less a trailing half CRLF).
    pub size: u64,
    /// Bare CRs seen.
    pub bare_cr: u64,
    /// Bare LFs seen.
    pub bare_lf: u64,
    /// NULs seen.
    pub nul: u64,
    /// Any byte ≥ 0x80 was seen (the client should have said `BODY=8BITMIME`).
    pub eight_bit: bool,
    /// Complete lines in the content.
    pub lines: u64,
    /// The longest content line in bytes, without its line end (RFC 5322 §2.1.1 allows 998).
    pub longest_line: u64,
}

impl DataStats {
    /// Whether any bare CR, bare LF or NUL was seen.
    pub fn bare_seen(&self) -> bool {
        self.bare_cr > 0 || self.bare_lf > 0 || self.nul > 0
    }
}

/// Why the received message must be refused. [`DataError::reply`] gives the SMTP answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    /// Bare CR, bare LF or NUL under [`BarePolicy::Reject`]: `550 5.5.2`.
    #[error("bare line ending or NUL in message data ({cr} CR, {lf} LF, {nul} NUL)")]
    BareLineEnding {
        /// Bare CRs seen.
        cr: u64,
        /// Bare LFs seen.
        lf: u64,
        /// NULs seen.
        nul: u64,
    },
    /// The content went over the size limit: `552 5.3.4`.
    #[error("message of {size} bytes exceeds the {max} byte limit")]
    TooLarge {
        /// The content size.
        size: u64,
        /// The limit.
        max: u64,
    },
}

impl DataError {
    /// The reply for this refusal.
    pub fn reply(&self) -> Reply {
        match self {
            Self::BareLineEnding { .. } => Reply::bare_line_ending(),
            Self::TooLarge { .. } => Reply::message_too_big(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line. `real` if the previous line ended with a real CRLF (or this is
    /// the first line): only such a line can be the end marker.
    LineStart { real: bool },
    /// A `.` at the start of a line, held back.
    Dot { real: bool },
    /// `.` CR at the start of a line, held back.
    DotCr { real: bool },
    /// Inside a line.
    Text,
    /// A CR inside a line, held back until we know whether LF follows.
    Cr,
    /// The end marker has been read.
    Done,
}

/// Streams message data from `DATA`'s 354 to the end marker. See the module docs.
#[derive(Debug, Clone)]
pub struct DataReceiver {
    max_size: u64,
    /// BDAT: no dot-unstuffing, no end marker.
    chunked: bool,
    policy: BarePolicy,
    state: State,
    stats: DataStats,
    line_len: u64,
}

impl DataReceiver {
    /// A receiver that keeps at most `max_size` content bytes in `out`.
    pub fn new(max_size: u64, policy: BarePolicy) -> Self {
        Self {
            max_size,
            chunked: false,
            policy,
            state: State::LineStart { real: true },
            stats: DataStats::default(),
            line_len: 0,
        }
    }

    /// A receiver for BDAT chunks: feed it exactly each chunk's octets (it consumes all it is
    /// given), then call [`DataReceiver::end_chunks`] after the `LAST` one.
    pub fn chunked(max_size: u64, policy: BarePolicy) -> Self {
        Self { chunked: true, ..Self::new(max_size, policy) }
    }

    /// The end of a chunked message: a CR held back at the very end was bare.
    pub fn end_chunks(&mut self, out: &mut Vec<u8>) {
        if self.state == State::Cr {
            self.bare_cr(out);
        }
        self.state = State::Done;
    }

    /// Reads `input`, appending content to `out`, up to and including the end marker. The
    /// caller may flush and clear `out` between calls; the receiver holds back at most two
    /// bytes (a line-start dot and a CR) until it knows what they are.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> DataProgress {
        let mut i = 0;
        while let Some(rest) = input.get(i..) {
            if self.state == State::Done {
                break;
            }
            // The common case, line after line: input that is its own content is copied at
            // once; the state machine sees a byte at a time only what it must change or hold.
            let verbatim = self.verbatim(rest, out);
            if verbatim > 0 {
                i += verbatim;
                continue;
            }
            let Some(&b) = rest.first() else { break };
            i += 1;
            self.step(b, out);
        }
        self.stats.raw_bytes = self.stats.raw_bytes.saturating_add(i as u64);
        DataProgress { consumed: i, done: self.state == State::Done }
    }

    /// Takes the longest prefix of `rest` that is its own content — lines ended by CRLF and
    /// then the text of an unfinished line, with no NUL, no bare CR or LF and (outside BDAT) no
    /// line-start dot — counts its lines and appends it in one piece: what [`Self::step`]
    /// would do byte by byte. Returns its length; 0 when the next byte is one `step` must
    /// decide (or hold back: a CR at the end of `rest`). Its work is proportional to what it
    /// takes, plus one byte, so `feed` stays linear.
    fn verbatim(&mut self, rest: &[u8], out: &mut Vec<u8>) -> usize {
        let (mut line_start, real) = match self.state {
            State::LineStart { real } => (true, real),
            State::Text => (false, true),
            _ => return 0,
        };
        let (mut taken, mut lines, mut line_len, mut longest) = (0, 0, self.line_len, self.stats.longest_line);
        while let Some(line) = rest.get(taken..) {
            if line_start && !self.chunked && line.first() == Some(&b'.') {
                break;
            }
            let text = memchr::memchr3(b'\r', b'\n', 0, line).unwrap_or(line.len());
            line_len = line_len.saturating_add(text as u64);
            if line.get(text..text + 2) != Some(b"\r\n") {
                taken += text;
                line_start = line_start && text == 0;
                break;
            }
            taken += text + 2;
            lines += 1;
            longest = longest.max(line_len);
            line_len = 0;
            line_start = true;
        }
        let Some(taken_bytes) = rest.get(..taken).filter(|bytes| !bytes.is_empty()) else {
            return 0;
        };
        self.stats.lines += lines;
        self.stats.longest_line = longest;
        self.line_len = line_len;
        if !self.stats.eight_bit && !taken_bytes.is_ascii() {
            self.stats.eight_bit = true;
        }
        self.emit(taken_bytes, out);
        self.state = match (line_start, lines) {
            (false, _) => State::Text,
            (true, 0) => State::LineStart { real },
            (true, _) => State::LineStart { real: true },
        };
        taken
    }

    /// True once the end marker has been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The facts gathered so far.
    pub fn stats(&self) -> &DataStats {
        &self.stats
    }

    /// Whether the message can be accepted, judged on what was read so far; meaningful before
    /// the end too (a session may stop spooling early).
    pub fn check(&self) -> Result<(), DataError> {
        if self.policy == BarePolicy::Reject && self.stats.bare_seen() {
            return Err(DataError::BareLineEnding {
                cr: self.stats.bare_cr,
                lf: self.stats.bare_lf,
                nul: self.stats.nul,
            });
        }
        if self.stats.size > self.max_size {
            return Err(DataError::TooLarge { size: self.stats.size, max: self.max_size });
        }
        Ok(())
    }

    fn step(&mut self, b: u8, out: &mut Vec<u8>) {
        match self.state {
            State::LineStart { real } => match b {
                b'.' if !self.chunked => self.state = State::Dot { real },
                _ => self.text_byte(b, out),
            },
            State::Dot { real } => match b {
                b'\r' => self.state = State::DotCr { real },
                b'\n' => {
                    // ". LF": a lone dot with a bare line end; content, dot kept.
                    self.stats.bare_lf += 1;
                    self.content(b".", out);
                    self.line_end(false, out);
                }
                // A dot followed by other characters: the dot goes.
                _ => self.text_byte(b, out),
            },
            State::DotCr { real } => match b {
                b'\n' if real => self.state = State::Done,
                b'\n' => {
                    // LF "." CRLF: the line is a lone dot but the line before ended bare.
                    self.content(b".", out);
                    self.line_end(true, out);
                }
                _ => {
                    // ". CR x": the CR was bare, so the dot had other characters after it.
                    self.bare_cr(out);
                    self.text_byte(b, out);
                }
            },
            State::Text => self.text_byte(b, out),
            State::Cr => match b {
                b'\n' => self.line_end(true, out),
                _ => {
                    self.bare_cr(out);
                    self.text_byte(b, out);
                }
            },
            State::Done => {}
        }
    }

    /// One byte inside a line (the line-start dot, if any, already dealt with).
    fn text_byte(&mut self, b: u8, out: &mut Vec<u8>) {
        match b {
            b'\r' => self.state = State::Cr,
            b'\n' => {
                self.stats.bare_lf += 1;
                self.line_end(false, out);
            }
            0 => {
                self.stats.nul += 1;
                self.state = State::Text;
            }
            _ => {
                self.content(&[b], out);
                self.state = State::Text;
            }
        }
    }

    fn bare_cr(&mut self, out: &mut Vec<u8>) {
        self.stats.bare_cr += 1;
        self.content(b" ", out);
    }

    fn line_end(&mut self, real: bool, out: &mut Vec<u8>) {
        self.stats.lines += 1;
        self.stats.longest_line = self.stats.longest_line.max(self.line_len);
        self.line_len = 0;
        self.emit(b"\r\n", out);
        self.state = State::LineStart { real };
    }

    /// Content bytes of the current line (never CR, LF or NUL).
    fn content(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        self.line_len = self.line_len.saturating_add(bytes.len() as u64);
        if !self.stats.eight_bit && !bytes.is_ascii() {
            self.stats.eight_bit = true;
        }
        self.emit(bytes, out);
        self.state = State::Text;
    }

    /// Counts content `bytes` (in which a CR is always the first half of a CRLF) and appends
    /// what fits. `out` thus receives the longest prefix of the content that fits in
    /// `max_size`, whatever the chunking of the input, except that a CRLF is never split (a
    /// lone CR in `out` would break the invariant, even in a spool that is about to be thrown
    /// away).
    fn emit(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        let room = self.max_size.saturating_sub(self.stats.size);
        self.stats.size = self.stats.size.saturating_add(bytes.len() as u64);
        if self.policy == BarePolicy::Reject && self.stats.bare_seen() {
            return;
        }
        let fits = usize::try_from(room).unwrap_or(usize::MAX).min(bytes.len());
        let kept = bytes.get(..fits).unwrap_or_default();
        match kept.strip_suffix(b"\r") {
            Some(before_cr) if fits < bytes.len() => out.extend_from_slice(before_cr),
            _ => out.extend_from_slice(kept),
        }
    }
}

/// The relay side of dot-stuffing: turns content (as [`DataReceiver`] produced it) back into
/// DATA bytes for the back end, doubling every line-start dot and ending with `CRLF . CRLF`.
///
/// Any LF counts as a line end here. On normalised content that changes nothing; on content
/// that somehow still had a bare LF it errs towards an extra dot, never towards a line that a
/// lenient back end could take for the end of the message.
#[derive(Debug, Clone)]
pub struct DotStuffer {
    /// The last two content bytes (zeros before there are any).
    last: [u8; 2],
    empty: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl DotStuffer {
    /// A stuffer at the start of a message.
    pub fn new() -> Self {
        Self { last: [0, 0], empty: true }
    }

    fn at_line_start(&self) -> bool {
        self.empty || self.last[1] == b'\n'
    }

    /// Appends `content`, dot-stuffed, to `out`.
    pub fn encode(&mut self, content: &[u8], out: &mut Vec<u8>) {
        if content.is_empty() {
            return;
        }
        if self.at_line_start() && content.first() == Some(&b'.') {
            out.push(b'.');
        }
        // Every other line-start dot follows an LF inside `content`: copy the runs between
        // such dots whole (most messages have none), doubling each.
        let (mut copied, mut from) = (0, 0);
        while let Some(lf) = content.get(from..).and_then(|rest| memchr::memchr(b'\n', rest)) {
            let line_start = from + lf + 1;
            if content.get(line_start) == Some(&b'.') {
                out.extend_from_slice(content.get(copied..line_start).unwrap_or_default());
                out.push(b'.');
                copied = line_start;
            }
            from = line_start;
        }
        out.extend_from_slice(content.get(copied..).unwrap_or_default());
        self.last = match content {
            [.., a, b] => [*a, *b],
            [b] => [self.last[1], *b],
            [] => self.last,
        };
        self.empty = false;
    }

    /// Appends the end marker, first completing the last line with CRLF if needed.
    pub fn finish(self, out: &mut Vec<u8>) {
        if !self.empty && self.last != *b"\r\n" {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    const BIG: u64 = 1 << 30;

    /// Feeds `chunks` in order, like the net layer; returns content, bytes consumed in total,
    /// and the receiver.
    fn run(chunks: &[&[u8]], max: u64, policy: BarePolicy) -> (Vec<u8>, usize, DataReceiver) {
        let mut rx = DataReceiver::new(max, policy);
        let mut out = Vec::new();
        let mut consumed = 0;
        for chunk in chunks {
            let mut part: &[u8] = chunk;
            loop {
                let p = rx.feed(part, &mut out);
                consumed += p.consumed;
                part = &part[p.consumed..];
                if p.done || part.is_empty() {
                    break;
                }
                assert!(p.consumed > 0, "no progress");
            }
            if rx.is_done() {
                break;
            }
        }
        (out, consumed, rx)
    }

    fn whole(input: &[u8], policy: BarePolicy) -> (Vec<u8>, usize, DataReceiver) {
        run(&[input], BIG, policy)
    }

    /// Every way to split `input` in two, and one byte at a time, must give what one call gives.
    fn assert_split_invariant(input: &[u8], max: u64, policy: BarePolicy) {
        let (out, consumed, rx) = run(&[input], max, policy);
        for split in 0..=input.len() {
            let (o, c, r) = run(&[&input[..split], &input[split..]], max, policy);
            assert_eq!(o, out, "split at {split} of {:?}", String::from_utf8_lossy(input));
            assert_eq!(c, consumed, "split at {split}");
            assert_eq!(r.stats(), rx.stats(), "split at {split}");
            assert_eq!(r.is_done(), rx.is_done());
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        let (o, c, r) = run(&bytes, max, policy);
        assert_eq!((o, c, r.stats()), (out, consumed, rx.stats()));
    }

    #[test]
    fn simple_message_and_pipelined_rest() {
        let input = b"Subject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n";
        let (out, consumed, rx) = whole(input, BarePolicy::Reject);
        assert_eq!(out, b"Subject: hi\r\n\r\nbody\r\n");
        assert_eq!(&input[consumed..], b"QUIT\r\n");
        assert!(rx.is_done());
        assert_eq!(rx.check(), Ok(()));
        let s = rx.stats();
        assert_eq!((s.lines, s.longest_line, s.size), (3, 11, 21));
        assert_eq!(s.raw_bytes, consumed as u64);
        assert!(!s.eight_bit && !s.bare_seen());
    }

    #[test]
    fn empty_message_ends_at_once() {
        let (out, consumed, rx) = whole(b".\r\nMAIL FROM:<>\r\n", BarePolicy::Reject);
        assert!(rx.is_done());
        assert_eq!(out, b"");
        assert_eq!(consumed, 3);
        assert_eq!(rx.stats().size, 0);
        assert_eq!(rx.stats().lines, 0);
    }

    #[test]
    fn only_crlf_dot_crlf_ends_data() {
        for fake in [
            &b"a\n.\nb"[..],
            b"a\r.\rb",
            b"a\n.\r\nb",
            b"a\r\n.\nb",
            b"a\r.\r\nb",
            b"\n.\n",
            b"\r.\r",
            b"\n.\r\n",
            b".\n",
            b".\r",
            b"a\r\n.\r",
            b"a\r\n. \r\n",
            b"a\r\n.\0\r\n",
        ] {
            for policy in [BarePolicy::Reject, BarePolicy::Normalize] {
                let (_, consumed, rx) = whole(fake, policy);
                assert!(!rx.is_done(), "{fake:?} ended DATA");
                assert_eq!(consumed, fake.len());
            }
        }
    }

    #[test]
    fn smuggling_attempts_stay_inside_the_message() {
        let attack: &[u8] = b"Subject: x\r\n\r\nhi\n.\nMAIL FROM:<evil@x>\nRCPT TO:<v@y>\nDATA\n\
            forged\n.\r\nafter\r\n.\r\nNOOP\r\n";
        let (out, consumed, rx) = whole(attack, BarePolicy::Normalize);
        assert!(rx.is_done());
        assert_eq!(&attack[consumed..], b"NOOP\r\n");
        assert_eq!(
            out,
            b"Subject: x\r\n\r\nhi\r\n.\r\nMAIL FROM:<evil@x>\r\nRCPT TO:<v@y>\r\nDATA\r\n\
              forged\r\n.\r\nafter\r\n"
                .to_vec()
        );
        assert_eq!(rx.stats().bare_lf, 6);
        assert_eq!(rx.check(), Ok(()));
        // Under Reject the same input is read to the same end and then refused.
        let (out, consumed2, rx) = whole(attack, BarePolicy::Reject);
        assert_eq!(consumed2, consumed);
        assert_eq!(out, b"Subject: x\r\n\r\nhi");
        assert!(matches!(rx.check(), Err(DataError::BareLineEnding { lf: 6, .. })));
        assert_eq!(rx.check().unwrap_err().reply().code(), 550);

        let cr_attack: &[u8] = b"hi\r.\rMAIL FROM:<e@x>\r\r\n.\r\n";
        let (out, _, rx) = whole(cr_attack, BarePolicy::Normalize);
        assert!(rx.is_done());
        assert_eq!(out, b"hi . MAIL FROM:<e@x> \r\n");
        assert_eq!(rx.stats().bare_cr, 3);
    }

    #[test]
    fn dot_unstuffing_is_exact() {
        let input: &[u8] = b"..\r\n...x\r\n.x\r\nno.dot.here.\r\n a . b\r\n.\r\n";
        let (out, _, rx) = whole(input, BarePolicy::Reject);
        assert_eq!(out, b".\r\n..x\r\nx\r\nno.dot.here.\r\n a . b\r\n");
        assert_eq!(rx.check(), Ok(()));
        assert_eq!(rx.stats().lines, 5);
        assert_eq!(rx.stats().longest_line, 12);
        assert_split_invariant(input, BIG, BarePolicy::Reject);
    }

    #[test]
    fn lone_dot_lines_that_do_not_end_data_keep_their_dot() {
        let (out, _, rx) = whole(b"a\n.\r\n.\r\n", BarePolicy::Normalize);
        assert!(rx.is_done());
        assert_eq!(out, b"a\r\n.\r\n");
        let (out, _, _) = whole(b"a\r\n.\nb\r\n.\r\n", BarePolicy::Normalize);
        assert_eq!(out, b"a\r\n.\r\nb\r\n");
        // After a bare LF, a stuffed dot is still unstuffed.
        let (out, _, _) = whole(b"a\n..b\r\n.\r\n", BarePolicy::Normalize);
        assert_eq!(out, b"a\r\n.b\r\n");
        // ". CR x": the CR was bare, so the dot is removed and the CR becomes a space.
        let (out, _, _) = whole(b".\rx\r\n.\r\n", BarePolicy::Normalize);
        assert_eq!(out, b" x\r\n");
        let (out, _, rx) = whole(b".\0\r\n.\r\n", BarePolicy::Normalize);
        assert_eq!(out, b"\r\n");
        assert_eq!(rx.stats().nul, 1);
    }

    #[test]
    fn normalisation() {
        // The last line end before the dot must be a real CRLF, or the dot would not end DATA.
        let input: &[u8] = b"a\nb\rc\0d\r\r\n\r\re\n\r\n.\r\n";
        let (out, _, rx) = whole(input, BarePolicy::Normalize);
        assert!(rx.is_done());
        assert_eq!(out, b"a\r\nb cd \r\n  e\r\n\r\n");
        let s = rx.stats();
        assert_eq!((s.bare_lf, s.bare_cr, s.nul), (2, 4, 1));
        assert_eq!(rx.check(), Ok(()));
        assert_no_bare(&out);
        assert_split_invariant(input, BIG, BarePolicy::Normalize);
        assert_split_invariant(input, BIG, BarePolicy::Reject);
    }

    fn assert_no_bare(out: &[u8]) {
        for (i, &b) in out.iter().enumerate() {
            assert_ne!(b, 0, "NUL at {i}");
            if b == b'\r' {
                assert_eq!(out.get(i + 1), Some(&b'\n'), "bare CR at {i}");
            }
            if b == b'\n' {
                assert!(i > 0 && out[i - 1] == b'\r', "bare LF at {i}");
            }
        }
    }

    #[test]
    fn eight_bit_passes_through_untouched() {
        let mut input = Vec::new();
        input.extend_from_slice("Grüße, 日本語\r\n".as_bytes());
        input.extend((0x80..=0xffu8).filter(|&b| b != b'\r' && b != b'\n'));
        input.extend_from_slice(b"\r\n.\r\n");
        let (out, _, rx) = whole(&input, BarePolicy::Reject);
        assert_eq!(out, input[..input.len() - 3]);
        assert!(rx.stats().eight_bit);
        assert_eq!(rx.check(), Ok(()));
        assert_split_invariant(&input, BIG, BarePolicy::Reject);
    }

    #[test]
    fn size_limit_stops_appending_but_reads_to_the_end() {
        let input: &[u8] = b"0123456789\r\n0123456789\r\n.\r\nQUIT\r\n";
        // Exactly at the limit is fine.
        let (out, _, rx) = run(&[input], 24, BarePolicy::Reject);
        assert_eq!(out.len(), 24);
        assert_eq!(rx.check(), Ok(()));
        let (out, consumed, rx) = run(&[input], 20, BarePolicy::Reject);
        assert!(rx.is_done());
        assert_eq!(&input[consumed..], b"QUIT\r\n");
        assert_eq!(out, b"0123456789\r\n01234567");
        assert_eq!(rx.stats().size, 24);
        assert_eq!(rx.check(), Err(DataError::TooLarge { size: 24, max: 20 }));
        assert_eq!(rx.check().unwrap_err().reply().code(), 552);
        // The limit is on unstuffed content: `..` counts one byte.
        let (_, _, rx) = run(&[b"..\r\n.\r\n"], 3, BarePolicy::Reject);
        assert_eq!(rx.check(), Ok(()));
        assert_eq!(rx.stats().size, 3);
        assert_split_invariant(input, 20, BarePolicy::Reject);
        assert_split_invariant(input, 0, BarePolicy::Normalize);
    }

    #[test]
    fn every_split_point_on_tricky_messages() {
        let messages: &[&[u8]] = &[
            b".\r\nNOOP\r\n",
            b"a\r\n.\r\n",
            b"..\r\n...\r\n.x\r\n.\r\n\r\n",
            b"x\n.\ny\r.\rz\n.\r\n\r\n.\r\n.\r\nRSET\r\n",
            b"\r\r\n\n\r\n.\r\n",
            b".\r\r\n.\r\n",
            b"line\r\n.\r.\r\n.\r\nDATA\r\n",
            b"\0.\r\n\0\r\n.\r\n",
            b"unterminated\r\n.\r",
        ];
        for m in messages {
            for policy in [BarePolicy::Reject, BarePolicy::Normalize] {
                assert_split_invariant(m, BIG, policy);
                assert_split_invariant(m, 5, policy);
            }
            let (out, _, _) = whole(m, BarePolicy::Normalize);
            assert_no_bare(&out);
        }
    }

    #[test]
    fn long_lines_are_measured() {
        let mut input = vec![b'x'; 1500];
        input.extend_from_slice(b"\r\nshort\r\n.\r\n");
        let (_, _, rx) = whole(&input, BarePolicy::Reject);
        assert_eq!(rx.stats().longest_line, 1500);
        assert_eq!(rx.stats().lines, 2);
    }

    #[test]
    fn feed_after_done_consumes_nothing() {
        let mut rx = DataReceiver::new(BIG, BarePolicy::Reject);
        let mut out = Vec::new();
        assert!(rx.feed(b"x\r\n.\r\n", &mut out).done);
        assert_eq!(rx.feed(b"more", &mut out), DataProgress { consumed: 0, done: true });
        assert_eq!(out, b"x\r\n");
    }

    /// `feed` takes runs of ordinary lines whole (`verbatim`); it must do exactly what the byte
    /// state machine does alone — content, counts, state, where it stops — at any size limit,
    /// in DATA and in BDAT, under either policy, however the input is cut.
    #[test]
    fn feed_agrees_with_the_byte_at_a_time_machine() {
        fn bytewise(input: &[u8], mut rx: DataReceiver) -> (Vec<u8>, usize, DataReceiver) {
            let mut out = Vec::new();
            let mut consumed = 0;
            for &b in input {
                if rx.is_done() {
                    break;
                }
                rx.step(b, &mut out);
                consumed += 1;
            }
            rx.stats.raw_bytes = consumed as u64;
            (out, consumed, rx)
        }
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |below: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % below as u64) as usize
        };
        for _ in 0..20_000 {
            let input: Vec<u8> = (0..next(60)).map(|_| b".\r\n\r\naab\0\xc3"[next(10)]).collect();
            let max = if next(2) == 0 { BIG } else { next(40) as u64 };
            let policy = if next(2) == 0 { BarePolicy::Reject } else { BarePolicy::Normalize };
            let chunked = next(4) == 0;
            let fresh = || if chunked { DataReceiver::chunked(max, policy) } else { DataReceiver::new(max, policy) };
            let (want, want_consumed, want_rx) = bytewise(&input, fresh());
            let cut = next(input.len() + 1);
            let cut2 = cut + next(input.len() - cut + 1);
            let (mut rx, mut out, mut consumed) = (fresh(), Vec::new(), 0);
            for part in [&input[..cut], &input[cut..cut2], &input[cut2..]] {
                consumed += rx.feed(part, &mut out).consumed;
                if rx.is_done() {
                    break;
                }
            }
            let case = format!(
                "{:?} cut at {cut}, {cut2}, max {max}, {policy:?}, chunked {chunked}",
                String::from_utf8_lossy(&input)
            );
            assert_eq!(out, want, "{case}");
            assert_eq!(consumed, want_consumed, "{case}");
            assert_eq!(rx.stats(), want_rx.stats(), "{case}");
            assert_eq!((rx.state, rx.line_len), (want_rx.state, want_rx.line_len), "{case}");
        }
    }

    fn stuff(content: &[&[u8]]) -> Vec<u8> {
        let mut s = DotStuffer::new();
        let mut out = Vec::new();
        for c in content {
            s.encode(c, &mut out);
        }
        s.finish(&mut out);
        out
    }

    #[test]
    fn dot_stuffer_round_trips() {
        assert_eq!(stuff(&[]), b".\r\n");
        assert_eq!(stuff(&[b"a"]), b"a\r\n.\r\n");
        assert_eq!(stuff(&[b"a\r\n"]), b"a\r\n.\r\n");
        assert_eq!(stuff(&[b".\r\n..x\r\n"]), b"..\r\n...x\r\n.\r\n");
        assert_eq!(stuff(&[b"a\r", b"\n.", b"b\r\n"]), b"a\r\n..b\r\n.\r\n");
        assert_eq!(stuff(&[b"a\n.b"]), b"a\n..b\r\n.\r\n");
        assert_eq!(stuff(&[b"a\r\n", b"\n"]), b"a\r\n\n\r\n.\r\n");
        let content: &[u8] = b".\r\n..\r\n.x\r\nplain\r\n\r\n.";
        let wire = stuff(&[content]);
        let (out, consumed, rx) = whole(&wire, BarePolicy::Reject);
        assert!(rx.is_done());
        assert_eq!(consumed, wire.len());
        assert_eq!(out, [content, b"\r\n"].concat());
        for split in 0..=content.len() {
            assert_eq!(stuff(&[&content[..split], &content[split..]]), wire);
        }
    }

    /// The stuffer copies runs between line-start dots whole; a byte-at-a-time oracle (a dot
    /// doubled after every LF and at the very start) agrees on every content over the bytes that
    /// matter, however the content is split across calls.
    #[test]
    fn dot_stuffer_agrees_with_a_byte_at_a_time_oracle() {
        fn oracle(content: &[u8]) -> Vec<u8> {
            let mut out = Vec::new();
            let mut line_start = true;
            for &b in content {
                if line_start && b == b'.' {
                    out.push(b'.');
                }
                out.push(b);
                line_start = b == b'\n';
            }
            if !content.is_empty() && !content.ends_with(b"\r\n") {
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b".\r\n");
            out
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..2000 {
            let len = (next() % 40) as usize;
            let content: Vec<u8> = (0..len).map(|_| b".\r\na"[(next() % 4) as usize]).collect();
            let cut = (next() as usize) % (len + 1);
            let cut2 = cut + (next() as usize) % (len - cut + 1);
            let parts = [&content[..cut], &content[cut..cut2], &content[cut2..]];
            assert_eq!(
                stuff(&parts),
                oracle(&content),
                "{:?} split at {cut}, {cut2}",
                String::from_utf8_lossy(&content)
            );
        }
    }

    /// Issue 18: BDAT content is taken as is: a `.` line and a leading dot are content, nothing
    /// ends the message but the session, and bare line ends follow the same policy as DATA.
    #[test]
    fn issue18_chunks_are_content_without_dot_unstuffing() {
        let message = b"Subject: x\r\n\r\n.\r\n..two\r\n.\r\nend\r\n";
        for split in 0..=message.len() {
            let mut rx = DataReceiver::chunked(BIG, BarePolicy::Reject);
            let mut out = Vec::new();
            for part in [&message[..split], &message[split..]] {
                assert_eq!(rx.feed(part, &mut out), DataProgress { consumed: part.len(), done: false });
            }
            rx.end_chunks(&mut out);
            assert!(rx.is_done());
            assert_eq!(out, message, "split at {split}");
            assert_eq!(rx.check(), Ok(()));
        }
        let mut rx = DataReceiver::chunked(BIG, BarePolicy::Normalize);
        let mut out = Vec::new();
        rx.feed(b"a\nb\rc\0d\r", &mut out);
        rx.end_chunks(&mut out);
        assert_eq!(out, b"a\r\nb cd ", "LF to CRLF, CR to a space, NUL dropped");
        let mut rx = DataReceiver::chunked(BIG, BarePolicy::Reject);
        rx.feed(b"a\nb\r\n", &mut Vec::new());
        assert!(matches!(rx.check(), Err(DataError::BareLineEnding { lf: 1, .. })));
        let mut rx = DataReceiver::chunked(10, BarePolicy::Reject);
        let mut out = Vec::new();
        rx.feed(&[b'x'; 20], &mut out);
        assert_eq!(out.len(), 10);
        assert!(matches!(rx.check(), Err(DataError::TooLarge { size: 20, max: 10 })));
    }
}
