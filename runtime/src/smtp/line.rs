//! Command framing: where one SMTP command line ends and the next begins.
//!
//! The net layer owns the receive buffer and appends whatever the socket gave it; [`LineReader`]
//! looks at that buffer and says one of three things, mini-redis style: here is a whole line,
//! I need more bytes, or this line is too long. It never copies the line: [`Frame::Line`]
//! borrows the caller's buffer, and [`Framed::consumed`] says how many bytes to drop from its
//! front once the line has been handled, so pipelined commands behind it stay in the buffer.
//!
//! # Line ends
//!
//! RFC 5321 ends a command with CRLF. A bare LF is accepted too, as Postfix does: for commands
//! this is harmless because mtac never forwards the client's command bytes; it parses them
//! into a [`Command`](super::Command) and writes its own, CRLF-terminated, commands to the back
//! end, so no second parser downstream can disagree about where a command ended. Message data
//! is the opposite case: its bytes *are* forwarded, and a bare LF there is how SMTP smuggling
//! works. That is why [`DataReceiver`](super::DataReceiver) never treats a bare LF as the start
//! of the end-of-data marker.
//!
//! A bare CR is not a line end: it stays inside the returned line, and the command parser
//! refuses it as a control character. Treating it as a line end would let `MAIL FROM:<a@b>\rRCPT
//! ...` look like two commands to mtac and one to anyone else.
//!
//! # Too-long lines
//!
//! Once more than `max_line` bytes (not counting the line end) arrive without a line end, the
//! reader reports [`Frame::TooLong`] at once, discards what it holds, and from then on silently
//! discards bytes up to and including the next LF. The session answers one `500` for the whole
//! over-long line and carries on with the next command; memory stays bounded by `max_line`
//! whatever the client sends. RFC 5321 §4.5.3.1.4 puts the command line limit at 512 bytes
//! with its CRLF (510 without), but `AUTH` initial responses may be much longer (RFC 4954
//! allows 12288): the session picks `max_line`.

/// The RFC 5321 §4.5.3.1.4 command line limit without its CRLF.
pub const RFC5321_MAX_COMMAND_LINE: usize = 510;

/// One framing decision about the front of the receive buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A complete line, without its CRLF or LF.
    Line(&'a [u8]),
    /// No complete line yet: append more bytes and ask again.
    NeedMore,
    /// A line longer than the limit; its bytes are being discarded up to the next LF.
    TooLong,
}

/// A [`Frame`] and how many bytes at the front of the buffer it used up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Framed<'a> {
    /// What the reader found.
    pub frame: Frame<'a>,
    /// How many bytes to remove from the front of the buffer once the frame has been handled.
    /// It may be non-zero with [`Frame::NeedMore`] while an over-long line is being skipped.
    pub consumed: usize,
}

/// Splits a caller-owned buffer into command lines. See the module docs.
#[derive(Debug, Clone)]
pub struct LineReader {
    max_line: usize,
    /// True between reporting [`Frame::TooLong`] and seeing that line's LF.
    skipping: bool,
}

impl LineReader {
    /// A reader that accepts lines of at most `max_line` bytes, line end not included.
    pub fn new(max_line: usize) -> Self {
        Self { max_line, skipping: false }
    }

    /// The limit this reader enforces.
    pub fn max_line(&self) -> usize {
        self.max_line
    }

    /// True while the rest of an over-long line is being discarded.
    pub fn is_skipping(&self) -> bool {
        self.skipping
    }

    /// Looks at the front of `buf`, which must start where the previous call's `consumed`
    /// left off.
    pub fn read<'a>(&mut self, buf: &'a [u8]) -> Framed<'a> {
        let mut skipped = 0;
        let mut rest = buf;
        if self.skipping {
            match rest.iter().position(|&b| b == b'\n') {
                Some(lf) => {
                    self.skipping = false;
                    skipped = lf + 1;
                    rest = rest.get(skipped..).unwrap_or_default();
                }
                None => return Framed { frame: Frame::NeedMore, consumed: buf.len() },
            }
        }
        // A line of `max_line` bytes plus CRLF fits in `max_line + 2`; looking no further keeps
        // every call O(max_line) even when bytes trickle in one at a time.
        let window = rest.len().min(self.max_line.saturating_add(2));
        let head = rest.get(..window).unwrap_or(rest);
        match head.iter().position(|&b| b == b'\n') {
            Some(lf) => {
                let with_cr = rest.get(..lf).unwrap_or_default();
                let line = with_cr.strip_suffix(b"\r").unwrap_or(with_cr);
                let consumed = skipped + lf + 1;
                if line.len() > self.max_line {
                    Framed { frame: Frame::TooLong, consumed }
                } else {
                    Framed { frame: Frame::Line(line), consumed }
                }
            }
            None if window > self.max_line.saturating_add(1)
                || (window == self.max_line.saturating_add(1) && head.last().is_some_and(|&b| b != b'\r')) =>
            {
                // The line end may already be in the buffer beyond the window: drop up to it and
                // leave what follows (pipelined commands) alone.
                let consumed = match rest.iter().position(|&b| b == b'\n') {
                    Some(lf) => skipped + lf + 1,
                    None => {
                        self.skipping = true;
                        buf.len()
                    }
                };
                Framed { frame: Frame::TooLong, consumed }
            }
            None => Framed { frame: Frame::NeedMore, consumed: skipped },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    /// Drives a reader the way the net layer does: append, read until NeedMore, drain.
    fn run(reader: &mut LineReader, chunks: &[&[u8]]) -> Vec<Result<Vec<u8>, ()>> {
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            loop {
                let Framed { frame, consumed } = reader.read(&buf);
                let stop = match frame {
                    Frame::Line(line) => {
                        out.push(Ok(line.to_vec()));
                        false
                    }
                    Frame::TooLong => {
                        out.push(Err(()));
                        false
                    }
                    Frame::NeedMore => true,
                };
                assert!(consumed <= buf.len());
                buf.drain(..consumed);
                if stop {
                    break;
                }
            }
        }
        out
    }

    fn lines(v: &[&str]) -> Vec<Result<Vec<u8>, ()>> {
        v.iter().map(|s| Ok(s.as_bytes().to_vec())).collect()
    }

    #[test]
    fn crlf_and_bare_lf_end_commands() {
        let mut r = LineReader::new(100);
        assert_eq!(run(&mut r, &[b"EHLO a\r\nNOOP\nQUIT\r\n"]), lines(&["EHLO a", "NOOP", "QUIT"]));
    }

    #[test]
    fn bare_cr_is_not_a_line_end() {
        let mut r = LineReader::new(100);
        assert_eq!(run(&mut r, &[b"MAIL FROM:<a@b>\rRCPT TO:<c@d>\r\n"]), lines(&["MAIL FROM:<a@b>\rRCPT TO:<c@d>"]));
        // Only the CR right before the LF belongs to the line end.
        assert_eq!(run(&mut r, &[b"NOOP\r\r\n"]), lines(&["NOOP\r"]));
    }

    #[test]
    fn incomplete_until_whole() {
        let mut r = LineReader::new(100);
        assert_eq!(r.read(b"EHLO"), Framed { frame: Frame::NeedMore, consumed: 0 });
        assert_eq!(r.read(b"EHLO x\r"), Framed { frame: Frame::NeedMore, consumed: 0 });
        let f = r.read(b"EHLO x\r\nDATA\r\n");
        assert_eq!(f.frame, Frame::Line(b"EHLO x"));
        assert_eq!(f.consumed, 8);
        assert_eq!(r.read(b"").frame, Frame::NeedMore);
    }

    #[test]
    fn every_split_point_gives_the_same_lines() {
        let input: &[u8] = b"EHLO client.example\r\nMAIL FROM:<a@b>\nRCPT TO:<c@d>\r\nDATA\r\n";
        let mut whole = LineReader::new(40);
        let expected = run(&mut whole, &[input]);
        for split in 0..=input.len() {
            let mut r = LineReader::new(40);
            assert_eq!(run(&mut r, &[&input[..split], &input[split..]]), expected);
        }
        let mut r = LineReader::new(40);
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(run(&mut r, &bytes), expected);
    }

    #[test]
    fn exact_limit_is_accepted_one_more_is_not() {
        let mut r = LineReader::new(4);
        assert_eq!(run(&mut r, &[b"NOOP\r\n"]), lines(&["NOOP"]));
        assert_eq!(run(&mut r, &[b"NOOP\n"]), lines(&["NOOP"]));
        assert_eq!(run(&mut r, &[b"NOOPS\r\nQUIT\r\n"]), vec![Err(()), Ok(b"QUIT".to_vec())]);
        // Byte at a time: the CR after exactly max_line bytes must not trigger TooLong.
        let bytes: Vec<&[u8]> = b"NOOP\r\nQUIT\r\n".chunks(1).collect();
        assert_eq!(run(&mut r, &bytes), lines(&["NOOP", "QUIT"]));
    }

    #[test]
    fn too_long_is_reported_once_then_skipped_to_next_lf() {
        let mut r = LineReader::new(8);
        let long = [b'x'; 1000];
        let out = run(&mut r, &[b"NOOP\r\n", &long, &long, b"yyy\r\nQUIT\r\n"]);
        assert_eq!(out, vec![Ok(b"NOOP".to_vec()), Err(()), Ok(b"QUIT".to_vec())]);
        assert!(!r.is_skipping());
    }

    #[test]
    fn too_long_before_line_end_arrives() {
        let mut r = LineReader::new(8);
        let f = r.read(b"0123456789");
        assert_eq!(f.frame, Frame::TooLong);
        assert_eq!(f.consumed, 10);
        assert!(r.is_skipping());
        let f = r.read(b"abc\r\nQUIT\r\n");
        assert_eq!(f.frame, Frame::Line(b"QUIT"));
        assert_eq!(f.consumed, 11);
    }

    #[test]
    fn too_long_split_at_every_point() {
        let input: &[u8] = b"NOOP\r\nxxxxxxxxxxxxxxxxxxxxxx\r\nQUIT\r\n";
        let expected = vec![Ok(b"NOOP".to_vec()), Err(()), Ok(b"QUIT".to_vec())];
        for split in 0..=input.len() {
            let mut r = LineReader::new(8);
            assert_eq!(run(&mut r, &[&input[..split], &input[split..]]), expected, "split at {split}");
        }
    }

    #[test]
    fn zero_limit_accepts_only_empty_lines() {
        let mut r = LineReader::new(0);
        assert_eq!(run(&mut r, &[b"\r\n\nx\r\n\r\n"]), vec![Ok(vec![]), Ok(vec![]), Err(()), Ok(vec![])]);
    }
}
