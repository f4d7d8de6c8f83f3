//! Paths and mailboxes: the `<...>` of MAIL FROM and RCPT TO, parsed against RFC 5321 §4.1.2
//! with the RFC 6531 (SMTPUTF8) extensions, and the [`Cursor`] the command parser reads with.
//!
//! Source routes are checked and stripped; a quoted local part comes out in one canonical form
//! (quotes only where needed, only `"` and `\\` escaped; `<` or `>` inside quotes refused), so
//! the policy's tables, the logs and the back end read one address; the limits are §4.5.3.1's.
//! [`super::command`]'s module doc gives the whole grammar and why it is strict where it is.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// RFC 5321 §4.5.3.1.1: maximum length of a local part, in octets.
pub const MAX_LOCAL_PART: usize = 64;
/// RFC 5321 §4.5.3.1.2: maximum length of a domain, in octets.
pub const MAX_DOMAIN: usize = 255;
/// RFC 5321 §4.5.3.1.3: maximum length of a path including its angle brackets, in octets.
pub const MAX_PATH: usize = 256;
/// A `MAIL FROM` path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReversePath {
    /// `<>`: the null sender of bounces and other notifications.
    Null,
    /// A mailbox.
    Mailbox(Mailbox),
}

/// A `RCPT TO` path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ForwardPath {
    /// `<postmaster>` with no domain (any case), which RFC 5321 §4.1.1.3 says every server
    /// must accept.
    Postmaster,
    /// A mailbox.
    Mailbox(Mailbox),
}

/// `local-part@domain`: the domain as the client sent it, the local part in canonical form
/// (source route removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    local_part: String,
    domain: String,
}

impl Mailbox {
    /// A mailbox as the parser would give it (for the parser's tests).
    #[cfg(test)]
    pub(super) fn from_parts(local_part: &str, domain: &str) -> Mailbox {
        Mailbox { local_part: local_part.to_owned(), domain: domain.to_owned() }
    }

    /// The local part: a dot-string, or (only when it must be) a quoted string in canonical
    /// form (see the module doc).
    pub fn local_part(&self) -> &str {
        &self.local_part
    }

    /// The domain as sent, or an address literal with its brackets.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// True if the domain is an address literal such as `[192.0.2.1]`.
    pub fn domain_is_literal(&self) -> bool {
        self.domain.starts_with('[')
    }

    /// True if the local part is a quoted string.
    pub fn local_part_is_quoted(&self) -> bool {
        self.local_part.starts_with('"')
    }

    /// False if the address has UTF-8 in it, which is only allowed after `SMTPUTF8`.
    pub fn is_ascii(&self) -> bool {
        self.local_part.is_ascii() && self.domain.is_ascii()
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local_part, self.domain)
    }
}

/// Why an address was refused; carried by [`ParseError::BadSender`] and
/// [`ParseError::BadRecipient`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The address is not enclosed in `<` and `>`.
    #[error("address must be enclosed in <>")]
    MissingAngleBrackets,
    /// `RCPT TO:<>`: only a sender may be null.
    #[error("empty recipient")]
    Empty,
    /// A source route (`@a,@b:`) that does not parse.
    #[error("bad source route")]
    BadSourceRoute,
    /// The local part is neither a dot-string nor a quoted string.
    #[error("bad local part")]
    BadLocalPart,
    /// The local part is longer than 64 octets.
    #[error("local part longer than 64 octets")]
    LocalPartTooLong,
    /// No `@domain` after the local part (only `<postmaster>` may omit it).
    #[error("missing domain")]
    MissingDomain,
    /// The domain is not a valid domain name.
    #[error("bad domain")]
    BadDomain,
    /// The domain is longer than 255 octets.
    #[error("domain longer than 255 octets")]
    DomainTooLong,
    /// An address literal that is neither IPv4 nor `IPv6:`.
    #[error("bad address literal")]
    BadAddressLiteral,
    /// Something other than `>` after the domain.
    #[error("unexpected characters in address")]
    Unterminated,
    /// The whole path, brackets included, is longer than 256 octets.
    #[error("path longer than 256 octets")]
    PathTooLong,
    /// A quoted local part holding `<` or `>`, which a careless back end could read as the end
    /// of the path: `553`, not `501` (the syntax is valid, the name is not allowed).
    #[error("< or > in a quoted local part")]
    AngleBracketQuoted,
}

pub(super) enum Path {
    Null,
    Postmaster,
    Mailbox(Mailbox),
}

/// Parses `<...>` at the cursor, leaving the cursor right after the `>`.
pub(super) fn parse_path(c: &mut Cursor<'_>) -> Result<Path, AddressError> {
    let start = c.pos;
    if !c.eat(b'<') {
        return Err(AddressError::MissingAngleBrackets);
    }
    if c.eat(b'>') {
        return Ok(Path::Null);
    }
    let mut routed = false;
    if c.peek() == Some(b'@') {
        routed = true;
        loop {
            if !c.eat(b'@') {
                return Err(AddressError::BadSourceRoute);
            }
            parse_domain(c).map_err(|_| AddressError::BadSourceRoute)?;
            if c.eat(b':') {
                break;
            }
            if !c.eat(b',') {
                return Err(AddressError::BadSourceRoute);
            }
        }
    }
    let local_start = c.pos;
    parse_local_part(c)?;
    let local_part = c.slice_from(local_start);
    if local_part.len() > MAX_LOCAL_PART {
        return Err(AddressError::LocalPartTooLong);
    }
    if !c.eat(b'@') {
        if !routed && c.peek() == Some(b'>') && local_part.eq_ignore_ascii_case("postmaster") {
            c.bump();
            return Ok(Path::Postmaster);
        }
        return Err(match c.peek() {
            Some(b'>') | None => AddressError::MissingDomain,
            Some(_) => AddressError::BadLocalPart,
        });
    }
    let domain_start = c.pos;
    parse_domain(c)?;
    let domain = c.slice_from(domain_start);
    if !c.eat(b'>') {
        return Err(match c.peek() {
            Some(b'.' | b'-') | None => AddressError::BadDomain,
            Some(_) => AddressError::Unterminated,
        });
    }
    if c.pos - start > MAX_PATH {
        return Err(AddressError::PathTooLong);
    }
    let local_part = canonical_local_part(local_part).ok_or(AddressError::AngleBracketQuoted)?;
    Ok(Path::Mailbox(Mailbox { local_part, domain: domain.to_owned() }))
}

/// A local part (already parsed) in the form every reader agrees on: a quoted string whose
/// content is a dot-string loses its quotes; any other keeps them, with exactly its `"` and `\`
/// escaped. `None` for a quoted string holding `<` or `>` (module doc: why).
fn canonical_local_part(sent: &str) -> Option<String> {
    let Some(inner) = sent.strip_prefix('"').and_then(|s| s.strip_suffix('"')) else {
        return Some(sent.to_owned());
    };
    let mut content = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        // quoted-pairSMTP: the parser checked that a character follows every backslash.
        content.push(if c == '\\' { chars.next()? } else { c });
    }
    if content.contains(['<', '>']) {
        return None;
    }
    if is_dot_string(&content) {
        return Some(content);
    }
    let mut quoted = String::with_capacity(content.len() + 2);
    quoted.push('"');
    for c in content.chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    Some(quoted)
}

/// `Dot-string = Atom *("." Atom)` (RFC 5321 §4.1.2), UTF-8 included.
fn is_dot_string(text: &str) -> bool {
    text.split('.').all(|atom| !atom.is_empty() && atom.bytes().all(is_atext))
}

/// `atext` of RFC 5322 plus UTF-8 (RFC 6531 `atext =/ UTF8-non-ascii`).
fn is_atext(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b >= 0x80 || b"!#$%&'*+-/=?^_`{|}~".contains(&b)
}

fn parse_local_part(c: &mut Cursor<'_>) -> Result<(), AddressError> {
    if c.eat(b'"') {
        loop {
            match c.peek() {
                Some(b'"') => {
                    c.bump();
                    return Ok(());
                }
                Some(b'\\') => {
                    c.bump();
                    // quoted-pairSMTP = %d92 %d32-126
                    match c.peek() {
                        Some(32..=126) => c.bump(),
                        _ => return Err(AddressError::BadLocalPart),
                    }
                }
                // qtextSMTP = %d32-33 / %d35-91 / %d93-126 / UTF8-non-ascii
                Some(32..=126 | 0x80..=0xff) => c.bump(),
                _ => return Err(AddressError::BadLocalPart),
            }
        }
    }
    // Dot-string = Atom *("." Atom)
    loop {
        let atom_start = c.pos;
        while c.peek().is_some_and(is_atext) {
            c.bump();
        }
        if c.pos == atom_start {
            return Err(AddressError::BadLocalPart);
        }
        if !c.eat(b'.') {
            return Ok(());
        }
    }
}

/// A domain name or an address literal. Labels take letters, digits, '-' inside, UTF-8
/// (U-labels, RFC 6531) and '_' (not RFC 5321, but real host names have it and Postfix takes
/// it).
pub(super) fn parse_domain(c: &mut Cursor<'_>) -> Result<(), AddressError> {
    let start = c.pos;
    if c.eat(b'[') {
        let inner_start = c.pos;
        while c.peek().is_some_and(|b| b != b']' && b != b'[' && b != b'\\') {
            c.bump();
        }
        let inner = c.slice_from(inner_start);
        if !c.eat(b']') {
            return Err(AddressError::BadAddressLiteral);
        }
        let ok = match inner.get(..5) {
            Some(tag) if tag.eq_ignore_ascii_case("IPv6:") => {
                inner.get(5..).is_some_and(|ip| ip.parse::<Ipv6Addr>().is_ok())
            }
            _ => inner.parse::<Ipv4Addr>().is_ok(),
        };
        return if ok { Ok(()) } else { Err(AddressError::BadAddressLiteral) };
    }
    loop {
        let label_start = c.pos;
        while c.peek().is_some_and(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b >= 0x80) {
            c.bump();
        }
        let label = c.slice_from(label_start);
        if label.is_empty() || label.len() > 63 || label.starts_with('-') || label.ends_with('-') {
            return Err(AddressError::BadDomain);
        }
        // A dot not followed by a label is a trailing dot, refused on the next turn.
        if !c.eat(b'.') {
            break;
        }
    }
    if c.pos - start > MAX_DOMAIN {
        return Err(AddressError::DomainTooLong);
    }
    Ok(())
}

/// A read position in a `&str`. It only ever stops on ASCII bytes or at the end, so every
/// slice it hands out falls on a character boundary.
pub(super) struct Cursor<'a> {
    s: &'a str,
    pub(super) pos: usize,
}

impl<'a> Cursor<'a> {
    pub(super) fn new(s: &'a str) -> Self {
        Self { s, pos: 0 }
    }

    pub(super) fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.pos).copied()
    }

    pub(super) fn bump(&mut self) {
        if self.pos < self.s.len() {
            self.pos += 1;
        }
    }

    pub(super) fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        if hit {
            self.bump();
        }
        hit
    }

    pub(super) fn eat_ignore_case(&mut self, lit: &str) -> bool {
        let hit = self
            .s
            .as_bytes()
            .get(self.pos..self.pos + lit.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(lit.as_bytes()));
        if hit {
            self.pos += lit.len();
        }
        hit
    }

    pub(super) fn at_end(&self) -> bool {
        self.pos >= self.s.len()
    }

    pub(super) fn rest(&self) -> &'a str {
        self.s.get(self.pos..).unwrap_or_default()
    }

    pub(super) fn slice_from(&self, start: usize) -> &'a str {
        self.s.get(start..self.pos).unwrap_or_default()
    }
}
