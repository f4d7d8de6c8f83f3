//! The verdict-header filter: a sender's copies of the header fields that carry this node's
//! verdicts never reach the back end.
//!
//! A back end trusts `X-Spam-Flag`, `X-Spam-Status`, `X-Virus-Scanned` or an
//! `Authentication-Results` naming the farm's own authserv-id because it believes its perimeter
//! wrote them. A sender can write them too; when a scanner is down and fails open, the forged
//! ones would be the only verdict the back end sees. RFC 8601 §5 asks a border MTA to remove
//! (or rename) inbound Authentication-Results that carry its own authserv-id; the same holds for
//! every verdict field.
//!
//! The filter works on the receiver's output while DATA streams into the spool, so the spool
//! file is still written once and the message is never held whole. It is sans-I/O: bytes in,
//! bytes out, with a small bounded buffer for the one field being decided.
//!
//! **Input contract**: [`super::DataReceiver`]'s output, where every line ends in CRLF and no
//! bare CR or LF occurs. The header section ends at the first empty line.
//!
//! Decisions:
//! * A field is matched by its name, case-insensitively, with white space before the colon
//!   ignored (RFC 5322's obsolete syntax, which lenient parsers still accept).
//! * Continuation lines follow their field's fate, so a folded forged field goes whole.
//! * `Authentication-Results` is held until its field ends (at most [`MAX_HELD`] bytes) to read
//!   the authserv-id; one whose id cannot be read within that is removed: nothing vouches for it.
//! * A line in the header section that is not a field (no colon) is passed on and the filter stays
//!   in the header section: a lenient parser further down may keep reading fields after it, so
//!   what follows is still filtered until the empty line.
//! * With `rename`, a removed field is relayed as `X-Original-NAME`, which no filter trusts.

use mtac_ruleset::model::VerdictHeaders;

/// The most bytes held while a field's fate is open (its name, or a whole Authentication-Results
/// field). A name longer than this is no name we filter.
pub const MAX_HELD: usize = 8 * 1024;
/// The most bytes of `From:` fields kept for the submission checks.
const MAX_FROM: usize = 2 * 1024;

const AUTH_RESULTS: &[u8] = b"authentication-results";
/// Fields that each cost the verifier a DNS lookup and a public-key check.
const SIGNATURES: [&[u8]; 3] = [b"dkim-signature", b"arc-seal", b"arc-message-signature"];
const RENAMED_PREFIX: &[u8] = b"X-Original-";

/// What happens to the field being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Its name is not complete yet: the bytes are held.
    Undecided,
    Keep,
    Drop,
    /// An Authentication-Results field, held whole until the authserv-id is known.
    HoldAuthResults,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Section {
    Headers,
    Body,
}

/// Filters a message's header section. See the module documentation.
#[derive(Debug)]
pub struct VerdictFilter<'v> {
    rules: &'v VerdictHeaders,
    section: Section,
    at_line_start: bool,
    fate: Fate,
    held: Vec<u8>,
    /// Whether the current field is a `From:` (its bytes are kept in `from`).
    in_from: bool,
    from: Vec<u8>,
    from_fields: u32,
    /// Some From text did not fit in `MAX_FROM`: what was kept may not name every address.
    from_truncated: bool,
    removed: u32,
    signature_fields: u32,
}

impl<'v> VerdictFilter<'v> {
    pub fn new(rules: &'v VerdictHeaders) -> Self {
        VerdictFilter {
            rules,
            section: Section::Headers,
            at_line_start: true,
            fate: Fate::Keep,
            held: Vec::new(),
            in_from: false,
            from: Vec::new(),
            from_fields: 0,
            from_truncated: false,
            removed: 0,
            signature_fields: 0,
        }
    }

    /// Whether the header section is over: everything from now on passes unchanged, so the
    /// caller may skip the filter.
    pub fn in_body(&self) -> bool {
        self.section == Section::Body
    }

    /// Fields removed or renamed so far.
    pub fn removed(&self) -> u32 {
        self.removed
    }

    /// DKIM-Signature, ARC-Seal and ARC-Message-Signature fields so far: the signatures a
    /// verifier would check.
    pub fn signature_fields(&self) -> u32 {
        self.signature_fields
    }

    /// The `From:` fields' values (unfolded bytes, at most 2 KiB) and how many there were.
    pub fn from(&self) -> (&[u8], u32) {
        (&self.from, self.from_fields)
    }

    /// Whether [`Self::from`] holds all of the From fields' text. When it does not, an address
    /// may hide past the 2 KiB kept (behind folded white space, say), so nothing may be decided
    /// as if the kept text were the whole header: ownership is refused and nothing is signed.
    pub fn from_complete(&self) -> bool {
        !self.from_truncated
    }

    /// Keep a piece of a From field's value (line ends dropped, so folding unfolds), noting
    /// when the 2 KiB cap cut some of it off.
    fn keep_from(&mut self, text: &[u8]) {
        let text: Vec<u8> = text.iter().copied().filter(|&b| b != b'\r' && b != b'\n').collect();
        let room = MAX_FROM.saturating_sub(self.from.len());
        if text.len() > room {
            self.from_truncated = true;
        }
        self.from.extend(text.iter().take(room));
    }

    /// Filter `input` (the next receiver output) onto `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut rest = input;
        while !rest.is_empty() {
            if self.section == Section::Body {
                out.extend_from_slice(rest);
                return;
            }
            if self.at_line_start {
                let first = rest.first().copied().unwrap_or(b'\r');
                if first != b' ' && first != b'\t' {
                    // A new field (or the end of the header section): the last one is complete.
                    self.end_field(out);
                    if first == b'\r' {
                        self.section = Section::Body;
                        continue;
                    }
                    self.fate = Fate::Undecided;
                    self.in_from = false;
                }
                self.at_line_start = false;
            }
            let (line, ends) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (rest.get(..=i).unwrap_or(rest), true),
                None => (rest, false),
            };
            rest = rest.get(line.len()..).unwrap_or(&[]);
            self.at_line_start = ends;
            if self.in_from {
                self.keep_from(line);
            }
            match self.fate {
                Fate::Keep => out.extend_from_slice(line),
                Fate::Drop => {}
                Fate::HoldAuthResults => {
                    self.held.extend_from_slice(line);
                    if self.held.len() > MAX_HELD {
                        // An authserv-id no one can read within 8 KiB: nothing vouches for it.
                        self.drop_held(out);
                        self.fate = Fate::Drop;
                    }
                }
                Fate::Undecided => {
                    self.held.extend_from_slice(line);
                    self.decide(ends, out);
                }
            }
        }
    }

    /// Call after the last [`VerdictFilter::feed`]: a message that ends inside its header
    /// section still has its last field decided.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.section == Section::Headers {
            self.end_field(out);
        }
    }

    /// With the held bytes of an undecided field: decide it if its name is complete.
    fn decide(&mut self, line_ended: bool, out: &mut Vec<u8>) {
        let Some(colon) = self.held.iter().position(|&b| b == b':') else {
            if line_ended || self.held.len() > MAX_HELD {
                // Not a field (or a name no filter would know): relayed as it is.
                self.fate = Fate::Keep;
                out.append(&mut self.held);
            }
            return;
        };
        if trim_end(self.held.get(..colon).unwrap_or(&[])).eq_ignore_ascii_case(b"from") {
            self.in_from = true;
            self.from_fields += 1;
            if !self.from.is_empty() {
                self.from.push(b',');
            }
            let value = self.held.get(colon + 1..).unwrap_or(&[]).to_vec();
            self.keep_from(&value);
        }
        let name = trim_end(self.held.get(..colon).unwrap_or(&[]));
        if SIGNATURES.iter().any(|signature| name.eq_ignore_ascii_case(signature)) {
            self.signature_fields += 1;
        }
        if name.eq_ignore_ascii_case(AUTH_RESULTS) {
            self.fate = Fate::HoldAuthResults;
            return;
        }
        let verdict = self.rules.names.iter().any(|n| name.eq_ignore_ascii_case(n.as_bytes()));
        if verdict {
            self.removed += 1;
            if self.rules.rename {
                out.extend_from_slice(RENAMED_PREFIX);
                out.append(&mut self.held);
                self.fate = Fate::Keep;
            } else {
                self.held.clear();
                self.fate = Fate::Drop;
            }
        } else {
            self.fate = Fate::Keep;
            out.append(&mut self.held);
        }
    }

    /// The field being read is complete.
    fn end_field(&mut self, out: &mut Vec<u8>) {
        match self.fate {
            Fate::HoldAuthResults => {
                let ours = match authserv_id(&self.held) {
                    Some(id) => self
                        .rules
                        .authserv_ids
                        .iter()
                        .any(|a| id.eq_ignore_ascii_case(a.trim_end_matches('.').as_bytes())),
                    None => true,
                };
                if ours {
                    self.drop_held(out);
                } else {
                    out.append(&mut self.held);
                }
            }
            // A field whose line never ended cannot be here: the receiver ends every line.
            Fate::Undecided => out.append(&mut self.held),
            Fate::Keep | Fate::Drop => {}
        }
        self.held.clear();
        self.fate = Fate::Keep;
    }

    /// Remove (or rename) the held field.
    fn drop_held(&mut self, out: &mut Vec<u8>) {
        self.removed += 1;
        if self.rules.rename {
            out.extend_from_slice(RENAMED_PREFIX);
            out.append(&mut self.held);
        }
        self.held.clear();
    }
}

fn trim_end(mut bytes: &[u8]) -> &[u8] {
    while let [rest @ .., last] = bytes {
        if *last == b' ' || *last == b'\t' {
            bytes = rest;
        } else {
            break;
        }
    }
    bytes
}

/// The authserv-id of a whole Authentication-Results field (RFC 8601 §2.2): the first token
/// of its value, after white space, line folds and comments. `None` when there is none (or an
/// open quote never closes).
fn authserv_id(field: &[u8]) -> Option<Vec<u8>> {
    let colon = field.iter().position(|&b| b == b':')?;
    let value = field.get(colon + 1..)?;
    let mut i = 0;
    let mut depth = 0u32;
    while let Some(&b) = value.get(i) {
        match b {
            b'(' => depth += 1,
            b')' if depth > 0 => depth -= 1,
            b'\\' if depth > 0 => i += 1,
            b' ' | b'\t' | b'\r' | b'\n' => {}
            _ if depth > 0 => {}
            _ => break,
        }
        i += 1;
    }
    // A quoted authserv-id is a value too (RFC 8601 §2.2 allows `value`): read it unquoted and
    // unescaped. A reader downstream may also ignore white space in it and a trailing root dot
    // (`mx.example.net.`): so does this comparison, since a field wrongly taken for ours is only
    // removed, while one wrongly taken for a stranger's is a forged verdict relayed.
    let mut id = Vec::new();
    if value.get(i) == Some(&b'"') {
        i += 1;
        loop {
            match *value.get(i)? {
                b'"' => break,
                b'\\' => {
                    i += 1;
                    id.push(*value.get(i)?);
                }
                b => id.push(b),
            }
            i += 1;
        }
    } else {
        while let Some(&b) = value.get(i) {
            if matches!(b, b';' | b' ' | b'\t' | b'\r' | b'\n' | b'(') {
                break;
            }
            id.push(b);
            i += 1;
        }
    }
    id.retain(|b| !b.is_ascii_whitespace());
    while id.last() == Some(&b'.') {
        id.pop();
    }
    (!id.is_empty()).then_some(id)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn rules(rename: bool) -> VerdictHeaders {
        VerdictHeaders {
            names: vec!["x-spam-flag".into(), "x-spam-status".into(), "x-virus-scanned".into()],
            authserv_ids: vec!["mx.example.net".into()],
            rename,
        }
    }

    /// Filter `message` fed in pieces of every size from 1 to its length: the output never
    /// depends on where the network split the input.
    fn filter_all_splits(message: &str, rename: bool) -> String {
        let rules = rules(rename);
        let bytes = message.as_bytes();
        let mut first: Option<Vec<u8>> = None;
        for step in 1..=bytes.len().max(1) {
            let mut f = VerdictFilter::new(&rules);
            let mut out = Vec::new();
            for piece in bytes.chunks(step) {
                f.feed(piece, &mut out);
            }
            f.finish(&mut out);
            match &first {
                None => first = Some(out),
                Some(expected) => assert_eq!(
                    String::from_utf8_lossy(expected),
                    String::from_utf8_lossy(&out),
                    "pieces of {step} bytes"
                ),
            }
        }
        String::from_utf8(first.unwrap_or_default()).unwrap()
    }

    const FORGED: &str = "Received: from a by b\r\n\
        X-Spam-Flag: NO\r\n\
        x-spam-status : No, score=-100\r\n\
        \tfolded=yes\r\n\
        Subject: hello\r\n\
        X-Virus-Scanned: clamav on mx.example.net (mtac)\r\n\
        Authentication-Results: mx.example.net; spf=pass smtp.mailfrom=bank.example\r\n\
        Authentication-Results: (comment) MX.Example.NET;\r\n\
        \tdkim=pass\r\n\
        Authentication-Results: relay.partner.example; spf=pass\r\n\
        From: Alice <alice@example.org>\r\n\
        \r\n\
        X-Spam-Flag: YES (in the body: content, not a field)\r\n";

    #[test]
    fn forged_verdicts_are_removed_wherever_the_input_splits() {
        let out = filter_all_splits(FORGED, false);
        assert_eq!(
            out,
            "Received: from a by b\r\n\
             Subject: hello\r\n\
             Authentication-Results: relay.partner.example; spf=pass\r\n\
             From: Alice <alice@example.org>\r\n\
             \r\n\
             X-Spam-Flag: YES (in the body: content, not a field)\r\n"
        );
    }

    #[test]
    fn renaming_keeps_the_fields_under_a_name_no_filter_trusts() {
        let out = filter_all_splits(FORGED, true);
        assert!(out.contains("X-Original-X-Spam-Flag: NO\r\n"), "{out}");
        assert!(out.contains("X-Original-x-spam-status : No, score=-100\r\n\tfolded=yes\r\n"), "{out}");
        assert!(out.contains("X-Original-Authentication-Results: mx.example.net; spf=pass"), "{out}");
        assert!(out.contains("\r\nAuthentication-Results: relay.partner.example; spf=pass\r\n"), "{out}");
        assert!(!out.contains("\r\nX-Spam-Flag: NO"), "{out}");
    }

    #[test]
    fn signature_fields_are_counted_in_the_header_section_only() {
        let message = "DKIM-Signature: v=1; d=a.example;\r\n\tb=abc\r\n\
            arc-seal : i=1; b=x\r\n\
            ARC-Message-Signature: i=1\r\n\
            ARC-Authentication-Results: i=1; x\r\n\
            Subject: DKIM-Signature: not this one\r\n\
            \r\n\
            DKIM-Signature: in the body, not a field\r\n";
        let rules = rules(false);
        for step in 1..=message.len() {
            let mut f = VerdictFilter::new(&rules);
            let mut out = Vec::new();
            for piece in message.as_bytes().chunks(step) {
                f.feed(piece, &mut out);
            }
            f.finish(&mut out);
            assert_eq!(f.signature_fields(), 3, "pieces of {step} bytes");
        }
    }

    #[test]
    fn a_message_without_a_body_still_has_its_last_field_decided() {
        let out = filter_all_splits("Subject: x\r\nAuthentication-Results: mx.example.net; none\r\n", false);
        assert_eq!(out, "Subject: x\r\n");
        let out = filter_all_splits("Subject: x\r\nAuthentication-Results: other.example; none\r\n", false);
        assert_eq!(out, "Subject: x\r\nAuthentication-Results: other.example; none\r\n");
    }

    #[test]
    fn a_line_that_is_no_field_does_not_end_the_filtering() {
        let out = filter_all_splits("Subject: x\r\nnot a field\r\nX-Spam-Flag: NO\r\n\r\nbody\r\n", false);
        assert_eq!(out, "Subject: x\r\nnot a field\r\n\r\nbody\r\n");
    }

    #[test]
    fn an_unreadable_authserv_id_is_not_trusted_and_memory_stays_bounded() {
        let huge = format!("Authentication-Results: ({})\r\n\r\nbody\r\n", "x".repeat(3 * MAX_HELD));
        let rules = rules(false);
        let mut f = VerdictFilter::new(&rules);
        let mut out = Vec::new();
        for piece in huge.as_bytes().chunks(1000) {
            f.feed(piece, &mut out);
            assert!(f.held.capacity() <= 2 * MAX_HELD + 2048, "held {}", f.held.capacity());
        }
        f.finish(&mut out);
        assert_eq!(String::from_utf8_lossy(&out), "\r\nbody\r\n");
        // A very long field name is no verdict field: passed on, never held whole.
        let long = format!("X-{}: v\r\n\r\n", "a".repeat(3 * MAX_HELD));
        let out = filter_all_splits(&long, false);
        assert_eq!(out, long);
    }

    #[test]
    fn from_fields_are_collected_for_the_submission_checks() {
        let rules = rules(false);
        let mut f = VerdictFilter::new(&rules);
        let mut out = Vec::new();
        f.feed(b"From: Alice\r\n <alice@example.org>\r\nTo: b@x\r\nfrom: eve@evil.example\r\n\r\nbody", &mut out);
        let (from, count) = f.from();
        assert_eq!(count, 2);
        assert_eq!(String::from_utf8_lossy(from), " Alice <alice@example.org>, eve@evil.example");
        assert!(f.from_complete());
    }

    /// Issue 16 review: an address hidden past the 2 KiB of From text the filter keeps (behind
    /// folded white space) made `auth header-from="owned"` and `dkim-sign` see only the first.
    #[test]
    fn a_from_header_longer_than_what_is_kept_is_marked_incomplete() {
        let rules = rules(false);
        let mut f = VerdictFilter::new(&rules);
        let mut out = Vec::new();
        let padding = "\r\n ".repeat(2500);
        let message = format!("From: alice@owned.example{padding}, ceo@bank.example\r\nTo: b@x\r\n\r\nbody");
        // Fed in small pieces, as the receiver hands it on.
        for piece in message.as_bytes().chunks(100) {
            f.feed(piece, &mut out);
        }
        let (from, count) = f.from();
        assert_eq!(count, 1);
        assert!(!String::from_utf8_lossy(from).contains("bank"), "the cap holds");
        assert!(!f.from_complete(), "and says so");
    }

    #[test]
    fn authserv_ids_are_read_past_comments_and_folds() {
        let id = |field: &[u8]| authserv_id(field).map(|id| String::from_utf8(id).unwrap());
        assert_eq!(id(b"Authentication-Results: mx.example.net; spf=pass").as_deref(), Some("mx.example.net"));
        assert_eq!(id(b"Authentication-Results:\r\n (a (nested) one) x.example 1; none").as_deref(), Some("x.example"));
        assert_eq!(id(b"Authentication-Results: \"q.example\"; none").as_deref(), Some("q.example"));
        assert_eq!(id(b"Authentication-Results: (only a comment)"), None);
        assert_eq!(id(b"Authentication-Results: \"never closed; none"), None);
    }

    /// Issue 16 review: spellings of our own authserv-id that a mail store may read as ours
    /// survived the filter: a trailing root dot, a quoted id with escapes or white space.
    #[test]
    fn our_authserv_id_is_recognised_in_every_spelling() {
        let rules = rules(false);
        for forged in [
            "Authentication-Results: mx.example.net.; dmarc=pass\r\n",
            "Authentication-Results: MX.Example.NET; dmarc=pass\r\n",
            "Authentication-Results: \"mx.exa\\mple.net\"; dmarc=pass\r\n",
            "Authentication-Results: \" mx.example.net \"; dmarc=pass\r\n",
            "Authentication-Results: \"mx.example.net.\" (ours?); dmarc=pass\r\n",
        ] {
            let mut f = VerdictFilter::new(&rules);
            let mut out = Vec::new();
            f.feed(format!("{forged}Subject: x\r\n\r\nbody").as_bytes(), &mut out);
            let kept = String::from_utf8(out).unwrap();
            assert!(!kept.contains("dmarc=pass"), "{forged:?} survived: {kept:?}");
        }
    }
}
