//! SMTP replies: the one place that turns a code and a text into bytes on the wire.
//!
//! A [`Reply`] keeps its text already sanitised, so nothing that reaches the client can break
//! the reply framing, whoever wrote the text (the policy author, or a client whose address is
//! echoed back):
//!
//! * CR, LF and every other control character become a space: a policy text or an echoed
//!   address can never start a new reply line or a fake reply of its own.
//! * Anything outside printable ASCII becomes `?`: RFC 5321 §4.2 reply text is
//!   `*( HT / SP / %d33-126 )`, and RFC 6531 gives no licence to send UTF-8 to a client that
//!   may not have asked for it.
//! * Lines are kept within RFC 5321 §4.5.3.1.5's 512 octets (code and CRLF included) by
//!   wrapping long texts onto continuation lines, at a space when there is one.
//!
//! Enhanced status codes (RFC 2034, RFC 3463) go on every line of every reply except the
//! greeting and the `HELO`/`EHLO` answers, as RFC 2034 §3 says.

use std::borrow::Cow;
use std::fmt;

/// RFC 5321 §4.5.3.1.5: the maximum length of a reply line, code and CRLF included.
pub const MAX_REPLY_LINE: usize = 512;

/// An RFC 3463 enhanced status code, `class.subject.detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedCode {
    class: u8,
    subject: u16,
    detail: u16,
}

impl EnhancedCode {
    /// `2.0.0` Other or undefined status: success.
    pub const OK: Self = Self::known(2, 0, 0);
    /// `2.1.0` Sender address valid.
    pub const SENDER_OK: Self = Self::known(2, 1, 0);
    /// `2.1.5` Destination address valid.
    pub const RECIPIENT_OK: Self = Self::known(2, 1, 5);
    /// `2.5.0` Other or undefined protocol status.
    pub const PROTOCOL_OK: Self = Self::known(2, 5, 0);
    /// `5.1.3` Bad destination mailbox address syntax.
    pub const BAD_RECIPIENT_SYNTAX: Self = Self::known(5, 1, 3);
    /// `5.1.7` Bad sender's mailbox address syntax.
    pub const BAD_SENDER_SYNTAX: Self = Self::known(5, 1, 7);
    /// `4.3.0` Other or undefined mail system status (temporary).
    pub const LOCAL_ERROR: Self = Self::known(4, 3, 0);
    /// `4.3.2` System not accepting network messages.
    pub const NOT_ACCEPTING: Self = Self::known(4, 3, 2);
    /// `5.3.4` Message too big for system.
    pub const MESSAGE_TOO_BIG: Self = Self::known(5, 3, 4);
    /// `4.4.2` Bad connection (used for timeouts).
    pub const BAD_CONNECTION: Self = Self::known(4, 4, 2);
    /// `5.5.1` Invalid command.
    pub const INVALID_COMMAND: Self = Self::known(5, 5, 1);
    /// `5.5.2` Syntax error.
    pub const SYNTAX_ERROR: Self = Self::known(5, 5, 2);
    /// `4.5.3` Too many recipients.
    pub const TOO_MANY_RECIPIENTS: Self = Self::known(4, 5, 3);
    /// `5.5.4` Invalid command arguments.
    pub const INVALID_ARGUMENTS: Self = Self::known(5, 5, 4);
    /// `5.5.6` Authentication exchange line is too long (RFC 4954).
    pub const AUTH_LINE_TOO_LONG: Self = Self::known(5, 5, 6);
    /// `5.6.7` Non-ASCII addresses not permitted for that sender/recipient (RFC 6531).
    pub const NON_ASCII_ADDRESS: Self = Self::known(5, 6, 7);
    /// `5.7.0` Other or undefined security status.
    pub const SECURITY: Self = Self::known(5, 7, 0);
    /// `4.7.0` Other or undefined security status (temporary).
    pub const SECURITY_TEMPORARY: Self = Self::known(4, 7, 0);

    /// An enhanced code, if it is one RFC 3463 can express: class 2, 4 or 5, and subject and
    /// detail of at most three digits.
    pub const fn new(class: u8, subject: u16, detail: u16) -> Option<Self> {
        if matches!(class, 2 | 4 | 5) && subject <= 999 && detail <= 999 {
            Some(Self { class, subject, detail })
        } else {
            None
        }
    }

    /// For the constants above, which are valid by inspection.
    const fn known(class: u8, subject: u16, detail: u16) -> Self {
        Self { class, subject, detail }
    }

    /// The class digit: 2, 4 or 5.
    pub fn class(self) -> u8 {
        self.class
    }

    /// The subject number.
    pub fn subject(self) -> u16 {
        self.subject
    }

    /// The detail number.
    pub fn detail(self) -> u16 {
        self.detail
    }
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

impl EnhancedCode {
    /// The length of `class.subject.detail` as written.
    fn wire_len(self) -> usize {
        3 + decimal_len(self.subject) + decimal_len(self.detail)
    }

    /// Appends `class.subject.detail`, as [`fmt::Display`] writes it.
    fn write_to(self, out: &mut Vec<u8>) {
        out.push(b'0' + self.class % 10);
        out.push(b'.');
        push_decimal(out, self.subject);
        out.push(b'.');
        push_decimal(out, self.detail);
    }
}

/// Digits of `n` (at most 999, as [`EnhancedCode::new`] and the reply code checks keep it).
fn decimal_len(n: u16) -> usize {
    match n {
        0..=9 => 1,
        10..=99 => 2,
        _ => 3,
    }
}

/// Appends `n` (at most 999) in decimal without leading zeros.
fn push_decimal(out: &mut Vec<u8>, n: u16) {
    let digits = three_digits(n);
    out.extend_from_slice(digits.get(3 - decimal_len(n)..).unwrap_or(&digits));
}

/// `n` (at most 999) as three ASCII digits, leading zeros included.
fn three_digits(n: u16) -> [u8; 3] {
    let n = n % 1000;
    [b'0' + (n / 100) as u8, b'0' + (n / 10 % 10) as u8, b'0' + (n % 10) as u8]
}

/// Why [`Reply::new`] refused a code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// The reply code is not in 200..=599 (RFC 5321 §4.2: the first digit is 2 to 5).
    #[error("reply code {0} is not between 200 and 599")]
    BadCode(u16),
    /// The enhanced code's class does not match the reply code's first digit (RFC 3463 §2),
    /// or the reply is a 3xx intermediate reply, which takes no enhanced code.
    #[error("enhanced code {enhanced} does not fit reply code {code}")]
    ClassMismatch {
        /// The reply code.
        code: u16,
        /// The enhanced code that does not fit it.
        enhanced: EnhancedCode,
    },
}

/// A complete SMTP reply, one or more lines, with sanitised text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    enhanced: Option<EnhancedCode>,
    lines: Vec<String>,
}

impl Reply {
    /// A reply from a code and a text that may come from outside (policy texts, echoed
    /// addresses). The text is sanitised and wrapped; see the module docs.
    pub fn new(code: u16, enhanced: Option<EnhancedCode>, text: &str) -> Result<Self, ReplyError> {
        Self::multiline(code, enhanced, [text])
    }

    /// Like [`Reply::new`] with one text per line; long lines are wrapped further.
    pub fn multiline<I, S>(code: u16, enhanced: Option<EnhancedCode>, lines: I) -> Result<Self, ReplyError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        if !(200..=599).contains(&code) {
            return Err(ReplyError::BadCode(code));
        }
        if let Some(e) = enhanced {
            if u16::from(e.class) != code / 100 {
                return Err(ReplyError::ClassMismatch { code, enhanced: e });
            }
        }
        let mut reply = Self { code, enhanced, lines: Vec::new() };
        let budget = reply.text_budget();
        for line in lines {
            wrap_into(&sanitize(line.as_ref()), budget, &mut reply.lines);
        }
        if reply.lines.is_empty() {
            reply.lines.push(String::new());
        }
        Ok(reply)
    }

    /// For this module's own constructors, whose codes are valid by inspection.
    pub(crate) fn fixed(code: u16, enhanced: Option<EnhancedCode>, text: &str) -> Self {
        let mut reply = Self { code, enhanced, lines: Vec::with_capacity(1) };
        let budget = reply.text_budget();
        wrap_into(&sanitize(text), budget, &mut reply.lines);
        if reply.lines.is_empty() {
            reply.lines.push(String::new());
        }
        reply
    }

    /// How much text fits on one line after `NNN-` and the enhanced code, before CRLF.
    fn text_budget(&self) -> usize {
        let enhanced = self.enhanced.map_or(0, |e| e.wire_len() + 1);
        MAX_REPLY_LINE - 2 - 4 - enhanced
    }

    /// The three-digit reply code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The enhanced status code, if any.
    pub fn enhanced(&self) -> Option<EnhancedCode> {
        self.enhanced
    }

    /// The sanitised text lines, without codes.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// A 2xx reply.
    pub fn is_positive(&self) -> bool {
        self.code / 100 == 2
    }

    /// A 4xx reply: the client should try again later.
    pub fn is_transient(&self) -> bool {
        self.code / 100 == 4
    }

    /// A 5xx reply: the client should not try again.
    pub fn is_permanent(&self) -> bool {
        self.code / 100 == 5
    }

    /// Appends the reply as it goes on the wire: `NNN-…` lines, then one `NNN …` line, each
    /// ending in CRLF.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        // Straight into `out`, without formatting machinery: every reply of every session
        // passes here.
        let code = three_digits(self.code);
        let last = self.lines.len().saturating_sub(1);
        for (i, text) in self.lines.iter().enumerate() {
            out.extend_from_slice(&code);
            let has_content = self.enhanced.is_some() || !text.is_empty();
            if i < last {
                out.push(b'-');
            } else if has_content {
                out.push(b' ');
            }
            if let Some(e) = self.enhanced {
                e.write_to(out);
                if !text.is_empty() {
                    out.push(b' ');
                }
            }
            out.extend_from_slice(text.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The reply as bytes; see [`Reply::write_to`].
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out);
        out
    }

    // --- The common replies. Their texts follow Postfix's where one exists, so operators
    // recognise them in logs.

    /// `220 host banner`: the greeting (no enhanced code, RFC 2034 §3).
    pub fn greeting(hostname: &str, banner: &str) -> Self {
        Self::fixed(220, None, &format!("{hostname} {banner}"))
    }

    /// `250 host`: the answer to `HELO` (no enhanced code, RFC 2034 §3).
    pub fn helo(hostname: &str) -> Self {
        Self::fixed(250, None, hostname)
    }

    /// `334 TEXT`: a SASL challenge (RFC 4954), base64 text, no enhanced code.
    pub fn challenge(base64: &str) -> Self {
        Self::fixed(334, None, base64)
    }

    /// `250 2.0.0 Ok`: `RSET`, `NOOP`.
    pub fn ok() -> Self {
        Self::fixed(250, Some(EnhancedCode::OK), "Ok")
    }

    /// `250 2.1.0 Ok`: sender accepted.
    pub fn sender_ok() -> Self {
        Self::fixed(250, Some(EnhancedCode::SENDER_OK), "Ok")
    }

    /// `250 2.1.5 Ok`: recipient accepted.
    pub fn recipient_ok() -> Self {
        Self::fixed(250, Some(EnhancedCode::RECIPIENT_OK), "Ok")
    }

    /// `354 End data with <CR><LF>.<CR><LF>` (3xx replies take no enhanced code).
    pub fn start_data() -> Self {
        Self::fixed(354, None, "End data with <CR><LF>.<CR><LF>")
    }

    /// `250 2.0.0 Ok: <detail>`: the message was relayed and the back end took it.
    pub fn message_accepted(detail: &str) -> Self {
        Self::fixed(250, Some(EnhancedCode::OK), &format!("Ok: {detail}"))
    }

    /// `221 2.0.0 Bye`: the answer to `QUIT`.
    pub fn closing() -> Self {
        Self::fixed(221, Some(EnhancedCode::OK), "Bye")
    }

    /// `220 2.0.0 Ready to start TLS`.
    pub fn ready_for_tls() -> Self {
        Self::fixed(220, Some(EnhancedCode::OK), "Ready to start TLS")
    }

    /// `454 4.7.0 TLS not available due to local problem`.
    pub fn tls_unavailable() -> Self {
        Self::fixed(454, Some(EnhancedCode::SECURITY_TEMPORARY), "TLS not available due to local problem")
    }

    /// `530 5.7.0 Must issue a STARTTLS command first`.
    pub fn tls_required() -> Self {
        Self::fixed(530, Some(EnhancedCode::SECURITY), "Must issue a STARTTLS command first")
    }

    /// `214 2.0.0 …`: the answer to `HELP`.
    pub fn help() -> Self {
        Self::fixed(214, Some(EnhancedCode::OK), "See RFC 5321")
    }

    /// `252 2.5.0 …`: `VRFY` is never answered truthfully (it would be an address oracle).
    pub fn cannot_vrfy() -> Self {
        Self::fixed(
            252,
            Some(EnhancedCode::PROTOCOL_OK),
            "Cannot VRFY user, but will accept message and attempt delivery",
        )
    }

    /// `502 5.5.1 EXPN not available`: mailing lists are not disclosed.
    pub fn expn_disabled() -> Self {
        Self::fixed(502, Some(EnhancedCode::INVALID_COMMAND), "EXPN not available")
    }

    /// `503 5.5.1 Error: <what>`: a command out of sequence (e.g. `RCPT` before `MAIL`).
    pub fn bad_sequence(what: &str) -> Self {
        Self::fixed(503, Some(EnhancedCode::INVALID_COMMAND), &format!("Error: {what}"))
    }

    /// `500 5.5.2 Error: line too long`: a command line over the limit. (RFC 5321 §4.5.3.1.10
    /// gives 500; 5.5.6 is reserved by RFC 4954 for `AUTH` exchange lines, see
    /// [`Reply::auth_line_too_long`].)
    pub fn line_too_long() -> Self {
        Self::fixed(500, Some(EnhancedCode::SYNTAX_ERROR), "Error: line too long")
    }

    /// `500 5.5.6 Authentication Exchange line is too long` (RFC 4954 §4).
    pub fn auth_line_too_long() -> Self {
        Self::fixed(500, Some(EnhancedCode::AUTH_LINE_TOO_LONG), "Authentication Exchange line is too long")
    }

    /// `552 5.3.4 Message size exceeds fixed limit`: for `SIZE=` over the limit and for data
    /// that went over it.
    pub fn message_too_big() -> Self {
        Self::fixed(552, Some(EnhancedCode::MESSAGE_TOO_BIG), "Message size exceeds fixed limit")
    }

    /// `550 5.5.2 Error: bare CR, LF or NUL received`: message data with a bare CR, a bare LF
    /// or a NUL under [`BarePolicy::Reject`](super::BarePolicy::Reject). 5.5.2 (syntax error)
    /// because the client broke RFC 5321 §2.3.8's framing, which is a protocol fault rather
    /// than a content (5.6.x) one; Postfix answers the same for its bare-LF rejection.
    pub fn bare_line_ending() -> Self {
        Self::fixed(550, Some(EnhancedCode::SYNTAX_ERROR), "Error: bare CR, LF or NUL received")
    }

    /// `452 4.5.3 Error: too many recipients`.
    pub fn too_many_recipients() -> Self {
        Self::fixed(452, Some(EnhancedCode::TOO_MANY_RECIPIENTS), "Error: too many recipients")
    }

    /// `554 5.5.1 Error: no valid recipients`: `DATA` with no accepted recipient.
    pub fn no_valid_recipients() -> Self {
        Self::fixed(554, Some(EnhancedCode::INVALID_COMMAND), "Error: no valid recipients")
    }

    /// `553 5.6.7 …`: a non-ASCII address without the `SMTPUTF8` parameter (RFC 6531 §3.5).
    pub fn smtputf8_required() -> Self {
        Self::fixed(553, Some(EnhancedCode::NON_ASCII_ADDRESS), "Error: non-ASCII address requires SMTPUTF8")
    }

    /// `451 4.3.0 Error: local error, try again later`.
    pub fn local_error() -> Self {
        Self::fixed(451, Some(EnhancedCode::LOCAL_ERROR), "Error: local error, try again later")
    }

    /// `421 4.3.2 host Service not available, closing transmission channel`: shutdown.
    pub fn shutting_down(hostname: &str) -> Self {
        Self::fixed(
            421,
            Some(EnhancedCode::NOT_ACCEPTING),
            &format!("{hostname} Service not available, closing transmission channel"),
        )
    }

    /// `421 4.4.2 host Error: timeout exceeded`.
    pub fn timeout(hostname: &str) -> Self {
        Self::fixed(421, Some(EnhancedCode::BAD_CONNECTION), &format!("{hostname} Error: timeout exceeded"))
    }

    /// `421 4.7.0 host Error: too many errors`: the session gives up on a client.
    pub fn too_many_errors(hostname: &str) -> Self {
        Self::fixed(421, Some(EnhancedCode::SECURITY_TEMPORARY), &format!("{hostname} Error: too many errors"))
    }

    /// The `EHLO` answer: the host name line, then one line per offered extension.
    pub fn ehlo(hostname: &str, caps: &EhloCapabilities) -> Self {
        let mut reply = Self { code: 250, enhanced: None, lines: Vec::with_capacity(10) };
        let budget = reply.text_budget();
        let mut line = |text: &str| wrap_into(&sanitize(text), budget, &mut reply.lines);
        line(hostname);
        line("PIPELINING");
        line(&format!("SIZE {}", caps.max_size));
        line("8BITMIME");
        line("CHUNKING");
        if caps.smtputf8 {
            line("SMTPUTF8");
        }
        line("ENHANCEDSTATUSCODES");
        if caps.starttls {
            line("STARTTLS");
        }
        // RFC 4422 §3.1 mechanism names; anything else is left out rather than sent mangled.
        let mut auth = String::new();
        for mech in caps.auth_mechanisms.iter().filter(|m| {
            (1..=20).contains(&m.len()) && m.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        }) {
            auth.push_str(if auth.is_empty() { "AUTH " } else { " " });
            auth.extend(mech.chars().map(|c| c.to_ascii_uppercase()));
        }
        if !auth.is_empty() {
            line(&auth);
        }
        reply
    }
}

/// What the `EHLO` answer offers. `CHUNKING` always (RFC 3030 BDAT, read by
/// [`DataReceiver::chunked`](super::DataReceiver::chunked)), but not `BINARYMIME`: a binary body
/// could not be relayed faithfully to a back end without CHUNKING. `DSN` is not offered because
/// its parameters are not relayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EhloCapabilities {
    /// The `SIZE` limit (RFC 1870) in bytes.
    pub max_size: u64,
    /// Offer `SMTPUTF8`; only when the back end takes it, since mtac does not downgrade.
    pub smtputf8: bool,
    /// Offer `STARTTLS` (not after TLS has started, not without a certificate).
    pub starttls: bool,
    /// SASL mechanisms to offer with `AUTH`; empty offers no `AUTH`.
    pub auth_mechanisms: Vec<String>,
}

/// Makes `text` safe to put in a reply: control characters become spaces, everything outside
/// printable ASCII becomes `?`.
fn sanitize(text: &str) -> Cow<'_, str> {
    // Most texts (every fixed one) are already clean: borrowed, not copied.
    if text.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| match c {
                ' '..='~' => c,
                c if c.is_control() => ' ',
                _ => '?',
            })
            .collect(),
    )
}

/// Splits ASCII `text` into pieces of at most `budget` bytes, preferring to break at a space.
fn wrap_into(text: &str, budget: usize, out: &mut Vec<String>) {
    let budget = budget.max(1);
    let mut rest = text;
    if rest.is_empty() {
        out.push(String::new());
        return;
    }
    while !rest.is_empty() {
        if rest.len() <= budget {
            out.push(rest.to_owned());
            break;
        }
        let head = rest.get(..budget).unwrap_or(rest);
        let cut = match head.rfind(' ') {
            Some(space) if space > 0 => space,
            _ => head.len(),
        };
        out.push(rest.get(..cut).unwrap_or(rest).to_owned());
        rest = rest.get(cut..).unwrap_or_default();
        rest = rest.strip_prefix(' ').unwrap_or(rest);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    fn wire(r: &Reply) -> String {
        String::from_utf8(r.to_bytes()).unwrap()
    }

    #[test]
    fn single_and_multi_line() {
        assert_eq!(wire(&Reply::ok()), "250 2.0.0 Ok\r\n");
        assert_eq!(wire(&Reply::start_data()), "354 End data with <CR><LF>.<CR><LF>\r\n");
        let r = Reply::multiline(550, EnhancedCode::new(5, 7, 1), ["first", "second", "third"]).unwrap();
        assert_eq!(wire(&r), "550-5.7.1 first\r\n550-5.7.1 second\r\n550 5.7.1 third\r\n");
        let r = Reply::multiline(250, None, ["a", "", "c"]).unwrap();
        assert_eq!(wire(&r), "250-a\r\n250-\r\n250 c\r\n");
        assert_eq!(wire(&Reply::new(250, None, "").unwrap()), "250\r\n");
        assert_eq!(wire(&Reply::new(250, Some(EnhancedCode::OK), "").unwrap()), "250 2.0.0\r\n");
        let none: [&str; 0] = [];
        assert_eq!(wire(&Reply::multiline(221, None, none).unwrap()), "221\r\n");
    }

    #[test]
    fn no_injection_from_texts() {
        let r = Reply::new(550, EnhancedCode::new(5, 7, 1), "no\r\n250 2.0.0 Ok\nfake\0x\x1b[31m").unwrap();
        let w = wire(&r);
        assert_eq!(w.matches("\r\n").count(), 1);
        assert!(!w.contains('\n') || w.ends_with("\r\n"));
        assert_eq!(w, "550 5.7.1 no  250 2.0.0 Ok fake x [31m\r\n");
        let r = Reply::bad_sequence("sender <jöran@bücher>\r\nQUIT");
        assert_eq!(wire(&r), "503 5.5.1 Error: sender <j?ran@b?cher>  QUIT\r\n");
        assert!(Reply::greeting("mx\r\n250 evil", "ESMTP").to_bytes().iter().filter(|&&b| b == b'\n').count() == 1);
    }

    #[test]
    fn long_texts_wrap_within_512() {
        let words = "word ".repeat(300);
        let r = Reply::new(554, EnhancedCode::new(5, 7, 1), &words).unwrap();
        let w = r.to_bytes();
        let lines: Vec<&[u8]> = w.split_inclusive(|&b| b == b'\n').collect();
        assert!(lines.len() > 2);
        for (i, line) in lines.iter().enumerate() {
            assert!(line.len() <= MAX_REPLY_LINE, "{}", line.len());
            let sep = if i + 1 == lines.len() { b' ' } else { b'-' };
            assert_eq!(&line[..10], &[b'5', b'5', b'4', sep, b'5', b'.', b'7', b'.', b'1', b' '][..]);
        }
        let unbroken = "x".repeat(2000);
        let w = Reply::new(250, None, &unbroken).unwrap().to_bytes();
        let total: usize = w.split(|&b| b == b'\n').map(|l| l.len().saturating_sub(5)).sum();
        assert_eq!(total, 2000);
        for line in w.split_inclusive(|&b| b == b'\n') {
            assert!(line.len() <= MAX_REPLY_LINE);
        }
    }

    #[test]
    fn codes_are_checked() {
        assert_eq!(Reply::new(199, None, "x"), Err(ReplyError::BadCode(199)));
        assert_eq!(Reply::new(600, None, "x"), Err(ReplyError::BadCode(600)));
        assert!(matches!(Reply::new(550, Some(EnhancedCode::OK), "x"), Err(ReplyError::ClassMismatch { .. })));
        assert!(matches!(Reply::new(354, Some(EnhancedCode::OK), "x"), Err(ReplyError::ClassMismatch { .. })));
        assert_eq!(EnhancedCode::new(3, 0, 0), None);
        assert_eq!(EnhancedCode::new(5, 1000, 0), None);
        assert_eq!(EnhancedCode::new(4, 7, 1).unwrap().to_string(), "4.7.1");
        // The wire writer (no formatting machinery) says what Display says, and as many bytes
        // as the line budget counted.
        for (class, subject, detail) in [(2, 0, 0), (5, 7, 26), (4, 4, 10), (5, 100, 999), (4, 999, 0), (2, 10, 1)] {
            let e = EnhancedCode::new(class, subject, detail).unwrap();
            let mut wire = Vec::new();
            e.write_to(&mut wire);
            assert_eq!(wire, e.to_string().as_bytes());
            assert_eq!(e.wire_len(), wire.len());
            let r = Reply::multiline(u16::from(class) * 100 + 50, Some(e), ["a", "", "b"]).unwrap();
            let code = u16::from(class) * 100 + 50;
            assert_eq!(
                String::from_utf8(r.to_bytes()).unwrap(),
                format!("{code}-{e} a\r\n{code}-{e}\r\n{code} {e} b\r\n")
            );
        }
        assert!(Reply::new(421, EnhancedCode::new(4, 7, 0), "x").unwrap().is_transient());
        assert!(Reply::message_too_big().is_permanent());
        assert!(Reply::ok().is_positive());
    }

    #[test]
    fn ehlo_keywords() {
        let caps = EhloCapabilities {
            max_size: 10_485_760,
            smtputf8: true,
            starttls: true,
            auth_mechanisms: vec!["plain".into(), "LOGIN".into(), "BAD MECH\r\n".into()],
        };
        assert_eq!(
            wire(&Reply::ehlo("mx.example", &caps)),
            "250-mx.example\r\n250-PIPELINING\r\n250-SIZE 10485760\r\n250-8BITMIME\r\n250-CHUNKING\r\n\
             250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250-STARTTLS\r\n250 AUTH PLAIN LOGIN\r\n"
        );
        let caps = EhloCapabilities { max_size: 1000, smtputf8: false, starttls: false, auth_mechanisms: vec![] };
        let w = wire(&Reply::ehlo("mx.example", &caps));
        assert_eq!(
            w,
            "250-mx.example\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-CHUNKING\r\n250 ENHANCEDSTATUSCODES\r\n"
        );
        assert!(!w.contains("BINARYMIME"));
    }

    #[test]
    fn fixed_replies_are_well_formed() {
        for r in [
            Reply::greeting("mx.example", "ESMTP mtac"),
            Reply::helo("mx.example"),
            Reply::ok(),
            Reply::sender_ok(),
            Reply::recipient_ok(),
            Reply::start_data(),
            Reply::message_accepted("queued as 1234"),
            Reply::closing(),
            Reply::ready_for_tls(),
            Reply::tls_unavailable(),
            Reply::tls_required(),
            Reply::help(),
            Reply::cannot_vrfy(),
            Reply::expn_disabled(),
            Reply::bad_sequence("need MAIL command"),
            Reply::line_too_long(),
            Reply::auth_line_too_long(),
            Reply::message_too_big(),
            Reply::bare_line_ending(),
            Reply::too_many_recipients(),
            Reply::no_valid_recipients(),
            Reply::smtputf8_required(),
            Reply::local_error(),
            Reply::shutting_down("mx.example"),
            Reply::timeout("mx.example"),
            Reply::too_many_errors("mx.example"),
        ] {
            // The checked constructor agrees with every fixed one.
            let checked = Reply::multiline(r.code(), r.enhanced(), r.lines()).unwrap();
            assert_eq!(checked, r);
        }
        assert_eq!(wire(&Reply::bare_line_ending()), "550 5.5.2 Error: bare CR, LF or NUL received\r\n");
        assert_eq!(wire(&Reply::message_too_big()), "552 5.3.4 Message size exceeds fixed limit\r\n");
    }
}
