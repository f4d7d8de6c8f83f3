//! One SMTP command line in, one typed [`Command`] (or a [`ParseError`] that knows its reply) out.
//!
//! # Why not smtp-proto's parser
//!
//! smtp-proto 0.2 has a fast request parser, but it decides things mtac must decide itself:
//! it accepts every ESMTP parameter it knows (DSN's `RET`/`ENVID`/`NOTIFY`/`ORCPT`, `MT-PRIORITY`,
//! `HOLDFOR`, …) whether or not mtac offered the extension, so the session would have to refuse
//! them after the fact; it folds `<postmaster>` into the same empty string as the null sender
//! `<>`; it drops the quotes of a quoted local part, so the address relayed to the back end
//! would not be the one the client sent; and its errors do not say which of RFC 5321's replies
//! applies. The grammar is small, so mtac parses it here, by hand, against RFC 5321 §4.1.2 with
//! the RFC 6531 (SMTPUTF8) extensions.
//!
//! # Strictness
//!
//! * Verbs are case-insensitive; one SP separates the verb from its arguments and one SP
//!   separates ESMTP parameters. Trailing blanks are ignored (Postfix ignores them too).
//! * `MAIL FROM: <a@b>` (a space after the colon) is accepted because Postfix accepts it and
//!   real clients send it; an address without angle brackets is not.
//! * Any control character (including TAB, a bare CR left in the line by
//!   [`LineReader`](super::LineReader), or NUL) refuses the whole line: mtac writes its own
//!   commands to the back end, but a command that means two things should not be half-obeyed.
//! * Only the parameters mtac advertises are accepted: `SIZE`, `BODY=7BIT|8BITMIME`, `SMTPUTF8`,
//!   and `AUTH=` on `MAIL` (parsed and ignored: mtac does not relay the authenticated identity
//!   of a previous hop). `RCPT` takes none. Anything else gets `555 5.5.4`.
//! * Addresses: source routes `<@a,@b:user@d>` are checked and stripped (RFC 5321 §4.1.2 says
//!   to ignore them); a quoted local part is kept in one canonical form (below); domains
//!   may be address literals (`[192.0.2.1]`, `[IPv6:2001:db8::1]`); limits are RFC 5321
//!   §4.5.3.1: local part 64 octets, domain 255, the whole path 256 with its brackets.
//!   Non-ASCII (UTF-8) addresses are parsed here; whether they were allowed (the client gave
//!   `SMTPUTF8`) is the session's call, using [`Mailbox::is_ascii`].
//! * `SIZE` above the limit is also the session's call (`552 5.3.4`); here it is only parsed.
//!   A value with more digits than fit in a `u64` saturates: it is over any limit anyway.
//! * Quoted local parts are rewritten to the one form every later reader agrees on — the
//!   policy's tables, the logs, and above all the back end, which receives mtac's own `MAIL`
//!   and `RCPT`: quotes that were not needed are dropped (`"alice"@d` is `alice@d`, so it cannot
//!   slip past an address list), and needed ones keep only the escapes of `"` and `\`
//!   (`"a\ b"@d` is `"a b"@d`). A quoted local part holding `<` or `>` is refused with `553`:
//!   relayed, `<"a> SIZE=1"@x>` is a path plus a parameter to a back end that ends the path at
//!   the first `>` without reading quotes.

use super::address::{parse_domain, parse_path, Cursor, Path};
pub use super::address::{AddressError, ForwardPath, Mailbox, ReversePath, MAX_DOMAIN, MAX_LOCAL_PART, MAX_PATH};
use super::reply::{EnhancedCode, Reply};

/// RFC 1870: a SIZE value has at most 20 digits.
const MAX_SIZE_DIGITS: usize = 20;

/// A parsed SMTP command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `HELO name`: the name as sent, unchecked (see [`helo_name_is_valid`]).
    Helo(String),
    /// `EHLO name`: the name as sent, unchecked (see [`helo_name_is_valid`]).
    Ehlo(String),
    /// `MAIL FROM:<path> [params]`.
    Mail(MailFrom),
    /// `RCPT TO:<path>`.
    Rcpt(RcptTo),
    /// `DATA`.
    Data,
    /// `BDAT size [LAST]` (RFC 3030): `size` octets of message follow the line at once.
    Bdat {
        /// The chunk's size in octets, saturated at `u64::MAX`.
        size: u64,
        /// The message ends with this chunk.
        last: bool,
    },
    /// `RSET`.
    Rset,
    /// `NOOP [string]`; the string is ignored.
    Noop,
    /// `QUIT`.
    Quit,
    /// `HELP [string]`; the string is ignored.
    Help,
    /// `VRFY string`.
    Vrfy(String),
    /// `EXPN string`.
    Expn(String),
    /// `STARTTLS`.
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954).
    Auth {
        /// The SASL mechanism name, upper-cased.
        mechanism: String,
        /// The base64 initial response as sent (`=` stands for an empty one), undecoded.
        initial_response: Option<String>,
    },
}

/// The arguments of `MAIL FROM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailFrom {
    /// The reverse path; [`ReversePath::Null`] for bounces.
    pub from: ReversePath,
    /// The `SIZE=` estimate (RFC 1870), saturated at `u64::MAX`.
    pub size: Option<u64>,
    /// The `BODY=` type (RFC 6152), if given.
    pub body: Option<Body>,
    /// Whether `SMTPUTF8` (RFC 6531) was given.
    pub smtputf8: bool,
}

/// The arguments of `RCPT TO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RcptTo {
    /// The forward path.
    pub to: ForwardPath,
}

/// `BODY=` values mtac accepts. `BINARYMIME` is refused while parsing: mtac relays to back ends
/// that may not offer CHUNKING, and a binary body cannot be relayed faithfully as DATA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// `BODY=7BIT`.
    SevenBit,
    /// `BODY=8BITMIME`.
    EightBitMime,
}

/// Why a command line was refused. [`ParseError::reply`] gives the SMTP answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A verb mtac does not know: `500 5.5.1`. The verb is kept (printable ASCII, at most 32
    /// characters) for the log.
    #[error("unknown command {verb:?}")]
    UnknownCommand {
        /// The verb, sanitised for logging.
        verb: String,
    },
    /// A known extension verb mtac does not offer (`BURL`, `ETRN`, …): `502 5.5.1`.
    #[error("command {verb} not implemented")]
    NotImplemented {
        /// The verb, upper-cased.
        verb: &'static str,
    },
    /// A control character (bare CR, NUL, TAB, …) anywhere in the line: `500 5.5.2`.
    #[error("control character in command line")]
    ControlCharacter,
    /// The line is not UTF-8: `500 5.5.2`.
    #[error("command line is not valid UTF-8")]
    InvalidUtf8,
    /// The arguments do not fit the command's syntax: `501 5.5.4`.
    #[error("syntax: {usage}")]
    Syntax {
        /// The expected form, shown to the client.
        usage: &'static str,
    },
    /// The `MAIL FROM` address does not parse: `501 5.1.7`.
    #[error("bad sender address: {0}")]
    BadSender(AddressError),
    /// The `RCPT TO` address does not parse: `501 5.1.3`.
    #[error("bad recipient address: {0}")]
    BadRecipient(AddressError),
    /// A known parameter with a bad value (`SIZE=x`, `BODY=7bits`) or a malformed
    /// `keyword=value`: `501 5.5.4`.
    #[error("bad {keyword} parameter")]
    BadParameter {
        /// The parameter keyword, upper-cased, or `"ESMTP"` when it is not even a keyword.
        keyword: String,
    },
    /// The same parameter twice: `501 5.5.4`.
    #[error("duplicate {keyword} parameter")]
    DuplicateParameter {
        /// The parameter keyword, upper-cased.
        keyword: &'static str,
    },
    /// A parameter mtac does not offer (`RET=`, `NOTIFY=`, `BODY=BINARYMIME`, …): `555 5.5.4`.
    #[error("unsupported parameter {keyword}")]
    UnsupportedParameter {
        /// The parameter keyword (and value for `BODY`), upper-cased.
        keyword: String,
    },
}

impl ParseError {
    /// The reply RFC 5321 and RFC 3463 call for.
    pub fn reply(&self) -> Reply {
        let (code, enhanced, text) = match self {
            Self::UnknownCommand { .. } => (500, EnhancedCode::INVALID_COMMAND, "Command unrecognized".to_owned()),
            Self::NotImplemented { verb } => (502, EnhancedCode::INVALID_COMMAND, format!("{verb} not implemented")),
            Self::ControlCharacter => {
                (500, EnhancedCode::SYNTAX_ERROR, "Syntax error: control character in command".to_owned())
            }
            Self::InvalidUtf8 => {
                (500, EnhancedCode::SYNTAX_ERROR, "Syntax error: command is not valid UTF-8".to_owned())
            }
            Self::Syntax { usage } => (501, EnhancedCode::INVALID_ARGUMENTS, format!("Syntax: {usage}")),
            Self::BadSender(e @ AddressError::AngleBracketQuoted) => {
                (553, EnhancedCode::BAD_SENDER_SYNTAX, format!("Sender address not allowed: {e}"))
            }
            Self::BadRecipient(e @ AddressError::AngleBracketQuoted) => {
                (553, EnhancedCode::BAD_RECIPIENT_SYNTAX, format!("Recipient address not allowed: {e}"))
            }
            Self::BadSender(e) => (501, EnhancedCode::BAD_SENDER_SYNTAX, format!("Bad sender address syntax: {e}")),
            Self::BadRecipient(e) => {
                (501, EnhancedCode::BAD_RECIPIENT_SYNTAX, format!("Bad recipient address syntax: {e}"))
            }
            Self::BadParameter { keyword } => {
                (501, EnhancedCode::INVALID_ARGUMENTS, format!("Bad {keyword} parameter"))
            }
            Self::DuplicateParameter { keyword } => {
                (501, EnhancedCode::INVALID_ARGUMENTS, format!("Duplicate {keyword} parameter"))
            }
            Self::UnsupportedParameter { keyword } => {
                (555, EnhancedCode::INVALID_ARGUMENTS, format!("{keyword} parameter not recognized or not implemented"))
            }
        };
        Reply::fixed(code, Some(enhanced), &text)
    }
}

/// Parses one command line, without its line end (as [`Frame::Line`](super::Frame::Line) gives
/// it).
pub fn parse(line: &[u8]) -> Result<Command, ParseError> {
    if line.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(ParseError::ControlCharacter);
    }
    let line = std::str::from_utf8(line).map_err(|_| ParseError::InvalidUtf8)?;
    let line = line.trim_end_matches(' ');
    let (verb, args) = match line.split_once(' ') {
        Some((verb, args)) => (verb, Some(args)),
        None => (line, None),
    };
    let upper = verb.to_ascii_uppercase();
    match upper.as_str() {
        "HELO" => one_token(args, "HELO hostname").map(Command::Helo),
        "EHLO" => one_token(args, "EHLO hostname").map(Command::Ehlo),
        "MAIL" => parse_mail(args).map(Command::Mail),
        "RCPT" => parse_rcpt(args).map(Command::Rcpt),
        "DATA" => no_args(args, "DATA", Command::Data),
        "RSET" => no_args(args, "RSET", Command::Rset),
        "QUIT" => no_args(args, "QUIT", Command::Quit),
        "STARTTLS" => no_args(args, "STARTTLS", Command::StartTls),
        "NOOP" => Ok(Command::Noop),
        "HELP" => Ok(Command::Help),
        "VRFY" => required(args, "VRFY address").map(Command::Vrfy),
        "EXPN" => required(args, "EXPN list").map(Command::Expn),
        "AUTH" => parse_auth(args),
        "BDAT" => parse_bdat(args),
        "BURL" => Err(ParseError::NotImplemented { verb: "BURL" }),
        "ETRN" => Err(ParseError::NotImplemented { verb: "ETRN" }),
        "ATRN" => Err(ParseError::NotImplemented { verb: "ATRN" }),
        "TURN" => Err(ParseError::NotImplemented { verb: "TURN" }),
        _ => Err(ParseError::UnknownCommand { verb: verb.chars().filter(char::is_ascii_graphic).take(32).collect() }),
    }
}

/// True if `name` is a syntactically valid domain or address literal, as RFC 5321 wants for
/// `HELO`/`EHLO`. The parser does not enforce it (many clients send junk there); the policy
/// decides what to do with a bad one.
pub fn helo_name_is_valid(name: &str) -> bool {
    let mut c = Cursor::new(name);
    parse_domain(&mut c).is_ok() && c.at_end()
}

/// `BDAT 1*DIGIT [ SP "LAST" ]` (RFC 3030 §3). The size's digits are bounded like SIZE='s; a
/// size is refused only by the session (after its octets are read), never here, so the client
/// and mtac agree on where the chunk ends.
fn parse_bdat(args: Option<&str>) -> Result<Command, ParseError> {
    const USAGE: &str = "BDAT size [LAST]";
    let mut words = args.unwrap_or("").split(' ');
    let size = words.next().unwrap_or("");
    if size.is_empty() || size.len() > MAX_SIZE_DIGITS || !size.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::Syntax { usage: USAGE });
    }
    let size = size.parse::<u64>().unwrap_or(u64::MAX);
    let last = match (words.next(), words.next()) {
        (None, _) => false,
        (Some(word), None) if word.eq_ignore_ascii_case("LAST") => true,
        _ => return Err(ParseError::Syntax { usage: USAGE }),
    };
    Ok(Command::Bdat { size, last })
}

fn no_args(args: Option<&str>, usage: &'static str, cmd: Command) -> Result<Command, ParseError> {
    match args {
        None => Ok(cmd),
        Some(_) => Err(ParseError::Syntax { usage }),
    }
}

fn required(args: Option<&str>, usage: &'static str) -> Result<String, ParseError> {
    match args {
        Some(a) if !a.is_empty() && !a.starts_with(' ') => Ok(a.to_owned()),
        _ => Err(ParseError::Syntax { usage }),
    }
}

fn one_token(args: Option<&str>, usage: &'static str) -> Result<String, ParseError> {
    let a = required(args, usage)?;
    if a.contains(' ') {
        return Err(ParseError::Syntax { usage });
    }
    Ok(a)
}

fn parse_auth(args: Option<&str>) -> Result<Command, ParseError> {
    const USAGE: &str = "AUTH mechanism [initial-response]";
    let a = required(args, USAGE)?;
    let mut parts = a.split(' ');
    let mechanism = parts.next().unwrap_or_default();
    let initial_response = parts.next();
    if parts.next().is_some() {
        return Err(ParseError::Syntax { usage: USAGE });
    }
    // RFC 4422 §3.1: 1 to 20 of upper-case letters, digits, '-' and '_'.
    let mech_ok = (1..=20).contains(&mechanism.len())
        && mechanism.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let resp_ok = initial_response.is_none_or(|r| {
        r == "="
            || (!r.is_empty() && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'='))
    });
    if !mech_ok || !resp_ok {
        return Err(ParseError::Syntax { usage: USAGE });
    }
    Ok(Command::Auth {
        mechanism: mechanism.to_ascii_uppercase(),
        initial_response: initial_response.map(str::to_owned),
    })
}

fn parse_mail(args: Option<&str>) -> Result<MailFrom, ParseError> {
    const USAGE: &str = "MAIL FROM:<address>";
    let args = args.ok_or(ParseError::Syntax { usage: USAGE })?;
    let mut c = Cursor::new(args);
    if !c.eat_ignore_case("FROM:") {
        return Err(ParseError::Syntax { usage: USAGE });
    }
    c.eat(b' ');
    let from = match parse_path(&mut c).map_err(ParseError::BadSender)? {
        Path::Null => ReversePath::Null,
        Path::Postmaster => return Err(ParseError::BadSender(AddressError::MissingDomain)),
        Path::Mailbox(m) => ReversePath::Mailbox(m),
    };
    let mut mail = MailFrom { from, size: None, body: None, smtputf8: false };
    let mut seen_auth = false;
    for (keyword, value) in parameters(c.rest())? {
        let upper = keyword.to_ascii_uppercase();
        match upper.as_str() {
            "SIZE" => {
                if mail.size.is_some() {
                    return Err(ParseError::DuplicateParameter { keyword: "SIZE" });
                }
                mail.size = Some(parse_size(value)?);
            }
            "BODY" => {
                if mail.body.is_some() {
                    return Err(ParseError::DuplicateParameter { keyword: "BODY" });
                }
                let value = value.ok_or_else(|| bad("BODY"))?.to_ascii_uppercase();
                mail.body = Some(match value.as_str() {
                    "7BIT" => Body::SevenBit,
                    "8BITMIME" => Body::EightBitMime,
                    "BINARYMIME" => {
                        return Err(ParseError::UnsupportedParameter { keyword: "BODY=BINARYMIME".to_owned() })
                    }
                    _ => return Err(bad("BODY")),
                });
            }
            "SMTPUTF8" => {
                if mail.smtputf8 {
                    return Err(ParseError::DuplicateParameter { keyword: "SMTPUTF8" });
                }
                if value.is_some() {
                    return Err(bad("SMTPUTF8"));
                }
                mail.smtputf8 = true;
            }
            "AUTH" => {
                if seen_auth {
                    return Err(ParseError::DuplicateParameter { keyword: "AUTH" });
                }
                if value.is_none() {
                    return Err(bad("AUTH"));
                }
                seen_auth = true;
            }
            _ => return Err(ParseError::UnsupportedParameter { keyword: upper }),
        }
    }
    Ok(mail)
}

fn parse_rcpt(args: Option<&str>) -> Result<RcptTo, ParseError> {
    const USAGE: &str = "RCPT TO:<address>";
    let args = args.ok_or(ParseError::Syntax { usage: USAGE })?;
    let mut c = Cursor::new(args);
    if !c.eat_ignore_case("TO:") {
        return Err(ParseError::Syntax { usage: USAGE });
    }
    c.eat(b' ');
    let to = match parse_path(&mut c).map_err(ParseError::BadRecipient)? {
        Path::Null => return Err(ParseError::BadRecipient(AddressError::Empty)),
        Path::Postmaster => ForwardPath::Postmaster,
        Path::Mailbox(m) => ForwardPath::Mailbox(m),
    };
    if let Some((keyword, _)) = parameters(c.rest())?.into_iter().next() {
        return Err(ParseError::UnsupportedParameter { keyword: keyword.to_ascii_uppercase() });
    }
    Ok(RcptTo { to })
}

fn bad(keyword: &str) -> ParseError {
    ParseError::BadParameter { keyword: keyword.to_owned() }
}

fn parse_size(value: Option<&str>) -> Result<u64, ParseError> {
    let value = value.ok_or_else(|| bad("SIZE"))?;
    if value.is_empty() || value.len() > MAX_SIZE_DIGITS || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("SIZE"));
    }
    Ok(value.bytes().fold(0u64, |n, d| n.saturating_mul(10).saturating_add(u64::from(d - b'0'))))
}

/// Splits `rest` (what follows the path) into `keyword[=value]` pairs: empty, or SP-separated
/// parameters each preceded by exactly one SP (RFC 5321 §4.1.2 `Mail-parameters`).
fn parameters(rest: &str) -> Result<Vec<(&str, Option<&str>)>, ParseError> {
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = rest.strip_prefix(' ') else {
        return Err(bad("ESMTP"));
    };
    rest.split(' ')
        .map(|param| {
            let (keyword, value) = match param.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (param, None),
            };
            // esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
            let keyword_ok = keyword.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                && keyword.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            // esmtp-value = 1*(%d33-60 / %d62-126 / UTF8-non-ascii); control bytes are
            // already gone, so only '=' and emptiness remain to check.
            let value_ok = value.is_none_or(|v| !v.is_empty() && !v.contains('='));
            if keyword_ok && value_ok {
                Ok((keyword, value))
            } else {
                Err(bad("ESMTP"))
            }
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Command, ParseError> {
        parse(s.as_bytes())
    }

    fn mailbox(local: &str, domain: &str) -> Mailbox {
        Mailbox::from_parts(local, domain)
    }

    fn mail(s: &str) -> MailFrom {
        match p(s) {
            Ok(Command::Mail(m)) => m,
            other => panic!("{s:?} gave {other:?}"),
        }
    }

    fn rcpt(s: &str) -> ForwardPath {
        match p(s) {
            Ok(Command::Rcpt(r)) => r.to,
            other => panic!("{s:?} gave {other:?}"),
        }
    }

    fn reply_of(s: &str) -> String {
        let mut out = Vec::new();
        p(s).unwrap_err().reply().write_to(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(p("ehlo client.example"), Ok(Command::Ehlo("client.example".into())));
        assert_eq!(p("HeLo x"), Ok(Command::Helo("x".into())));
        assert_eq!(p("data"), Ok(Command::Data));
        assert_eq!(p("Rset"), Ok(Command::Rset));
        assert_eq!(p("quit"), Ok(Command::Quit));
        assert_eq!(p("noop whatever you like"), Ok(Command::Noop));
        assert_eq!(p("help"), Ok(Command::Help));
        assert_eq!(p("help mail"), Ok(Command::Help));
        assert_eq!(p("starttls"), Ok(Command::StartTls));
        assert_eq!(p("vrfy bob"), Ok(Command::Vrfy("bob".into())));
        assert_eq!(p("EXPN staff"), Ok(Command::Expn("staff".into())));
    }

    #[test]
    fn trailing_blanks_are_ignored() {
        assert_eq!(p("DATA  "), Ok(Command::Data));
        assert_eq!(p("EHLO x "), Ok(Command::Ehlo("x".into())));
    }

    #[test]
    fn arguments_where_none_belong() {
        assert_eq!(p("DATA now"), Err(ParseError::Syntax { usage: "DATA" }));
        assert_eq!(p("QUIT please"), Err(ParseError::Syntax { usage: "QUIT" }));
        assert_eq!(p("STARTTLS x"), Err(ParseError::Syntax { usage: "STARTTLS" }));
        assert_eq!(reply_of("RSET x"), "501 5.5.4 Syntax: RSET\r\n");
    }

    #[test]
    fn helo_needs_one_name() {
        assert!(matches!(p("EHLO"), Err(ParseError::Syntax { .. })));
        assert!(matches!(p("EHLO a b"), Err(ParseError::Syntax { .. })));
        assert!(matches!(p("EHLO  a"), Err(ParseError::Syntax { .. })));
        assert_eq!(p("EHLO [192.0.2.1]"), Ok(Command::Ehlo("[192.0.2.1]".into())));
        assert!(helo_name_is_valid("mx1.example.com"));
        assert!(helo_name_is_valid("[192.0.2.1]"));
        assert!(helo_name_is_valid("[IPv6:2001:db8::1]"));
        assert!(!helo_name_is_valid("mx1..example"));
        assert!(!helo_name_is_valid("-bad.example"));
        assert!(!helo_name_is_valid("[999.1.1.1]"));
        assert!(!helo_name_is_valid("a.example."));
    }

    #[test]
    fn unknown_and_unimplemented() {
        assert_eq!(p("XYZZY plugh"), Err(ParseError::UnknownCommand { verb: "XYZZY".into() }));
        assert_eq!(reply_of("XYZZY"), "500 5.5.1 Command unrecognized\r\n");
        assert_eq!(p("bdat 100 LAST"), Ok(Command::Bdat { size: 100, last: true }));
        assert_eq!(p("BDAT 0"), Ok(Command::Bdat { size: 0, last: false }));
        assert_eq!(p("BDAT 99999999999999999999"), Ok(Command::Bdat { size: u64::MAX, last: false }));
        for bad in ["BDAT", "BDAT x", "BDAT -1", "BDAT 1 FIRST", "BDAT 1 LAST now", "BDAT 123456789012345678901"] {
            assert_eq!(p(bad), Err(ParseError::Syntax { usage: "BDAT size [LAST]" }), "{bad}");
        }
        assert_eq!(p("ETRN x"), Err(ParseError::NotImplemented { verb: "ETRN" }));
        assert_eq!(p(""), Err(ParseError::UnknownCommand { verb: String::new() }));
        let long = "X".repeat(100);
        match p(&long) {
            Err(ParseError::UnknownCommand { verb }) => assert_eq!(verb.len(), 32),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn control_characters_refuse_the_line() {
        for line in [&b"MAIL FROM:<a@b>\rRCPT TO:<c@d>"[..], b"NOOP\0", b"EHLO\tx", b"RCPT TO:<a\n@b>", b"DATA\x7f"] {
            assert_eq!(parse(line), Err(ParseError::ControlCharacter), "{line:?}");
        }
        assert_eq!(parse(b"EHLO \xff"), Err(ParseError::InvalidUtf8));
        assert_eq!(parse(b"NOOP\r").unwrap_err().reply().code(), 500,);
    }

    #[test]
    fn mail_from_forms() {
        let m = mail("MAIL FROM:<user@example.com>");
        assert_eq!(m.from, ReversePath::Mailbox(mailbox("user", "example.com")));
        assert_eq!((m.size, m.body, m.smtputf8), (None, None, false));
        assert_eq!(mail("mail from:<>").from, ReversePath::Null);
        // Postfix accepts one space after the colon; so does mtac.
        assert_eq!(mail("MAIL FROM: <a@b.example>").from, ReversePath::Mailbox(mailbox("a", "b.example")));
        assert_eq!(mail("MAIL FROM: <>").from, ReversePath::Null);
        assert!(matches!(p("MAIL FROM:  <a@b>"), Err(ParseError::BadSender(AddressError::MissingAngleBrackets))));
        assert!(matches!(p("MAIL FROM:a@b"), Err(ParseError::BadSender(AddressError::MissingAngleBrackets))));
        assert!(matches!(p("MAIL FROM :<a@b>"), Err(ParseError::Syntax { .. })));
        assert!(matches!(p("MAIL TO:<a@b>"), Err(ParseError::Syntax { .. })));
        assert!(matches!(p("MAIL"), Err(ParseError::Syntax { .. })));
        assert_eq!(reply_of("MAIL"), "501 5.5.4 Syntax: MAIL FROM:<address>\r\n");
        assert!(matches!(p("MAIL FROM:<postmaster>"), Err(ParseError::BadSender(AddressError::MissingDomain))));
    }

    #[test]
    fn mail_parameters() {
        let m = mail("MAIL FROM:<a@b> SIZE=12345 BODY=8BITMIME SMTPUTF8");
        assert_eq!((m.size, m.body, m.smtputf8), (Some(12345), Some(Body::EightBitMime), true));
        let m = mail("MAIL FROM:<a@b> body=7bit size=0 AUTH=<>");
        assert_eq!((m.size, m.body), (Some(0), Some(Body::SevenBit)));
        assert_eq!(mail("MAIL FROM:<a@b> SIZE=99999999999999999999").size, Some(u64::MAX));
        assert!(matches!(p("MAIL FROM:<a@b> SIZE=999999999999999999999"), Err(ParseError::BadParameter { .. })));
        assert!(matches!(p("MAIL FROM:<a@b> SIZE=12k"), Err(ParseError::BadParameter { .. })));
        assert!(matches!(p("MAIL FROM:<a@b> SIZE="), Err(ParseError::BadParameter { .. })));
        assert!(matches!(p("MAIL FROM:<a@b> SIZE"), Err(ParseError::BadParameter { .. })));
        assert!(matches!(p("MAIL FROM:<a@b> SIZE=-1"), Err(ParseError::BadParameter { .. })));
        assert!(matches!(p("MAIL FROM:<a@b> SIZE=1 SIZE=2"), Err(ParseError::DuplicateParameter { keyword: "SIZE" })));
        assert!(matches!(p("MAIL FROM:<a@b> BODY=9BIT"), Err(ParseError::BadParameter { .. })));
        assert!(matches!(p("MAIL FROM:<a@b> SMTPUTF8=yes"), Err(ParseError::BadParameter { .. })));
        assert!(matches!(p("MAIL FROM:<a@b> AUTH"), Err(ParseError::BadParameter { .. })));
        assert_eq!(
            p("MAIL FROM:<a@b> BODY=BINARYMIME"),
            Err(ParseError::UnsupportedParameter { keyword: "BODY=BINARYMIME".into() })
        );
        assert_eq!(p("MAIL FROM:<a@b> ret=full"), Err(ParseError::UnsupportedParameter { keyword: "RET".into() }));
        assert_eq!(
            reply_of("MAIL FROM:<a@b> ENVID=x"),
            "555 5.5.4 ENVID parameter not recognized or not implemented\r\n"
        );
        // Spacing between parameters is exactly one SP, and the path must be followed by one.
        assert!(matches!(p("MAIL FROM:<a@b>  SIZE=1"), Err(ParseError::BadParameter { .. })));
        assert!(matches!(
            p("MAIL FROM:<a@b>SIZE=1"),
            Err(ParseError::BadSender(_)) | Err(ParseError::BadParameter { .. })
        ));
        assert!(matches!(p("MAIL FROM:<a@b> =x"), Err(ParseError::BadParameter { .. })));
        assert!(matches!(p("MAIL FROM:<a@b> SIZE=1=2"), Err(ParseError::BadParameter { .. })));
    }

    #[test]
    fn rcpt_forms() {
        assert_eq!(rcpt("RCPT TO:<bob@example.org>"), ForwardPath::Mailbox(mailbox("bob", "example.org")));
        assert_eq!(rcpt("rcpt to: <bob@example.org>"), ForwardPath::Mailbox(mailbox("bob", "example.org")));
        assert_eq!(rcpt("RCPT TO:<postmaster>"), ForwardPath::Postmaster);
        assert_eq!(rcpt("RCPT TO:<PostMaster>"), ForwardPath::Postmaster);
        assert_eq!(
            rcpt("RCPT TO:<postmaster@example.org>"),
            ForwardPath::Mailbox(mailbox("postmaster", "example.org"))
        );
        assert_eq!(p("RCPT TO:<>"), Err(ParseError::BadRecipient(AddressError::Empty)));
        assert_eq!(p("RCPT TO:<bob>"), Err(ParseError::BadRecipient(AddressError::MissingDomain)));
        assert_eq!(p("RCPT TO:<@relay:postmaster>"), Err(ParseError::BadRecipient(AddressError::MissingDomain)));
        assert_eq!(p("RCPT TO:<a@b> NOTIFY=NEVER"), Err(ParseError::UnsupportedParameter { keyword: "NOTIFY".into() }));
        assert_eq!(reply_of("RCPT TO:<bob>"), "501 5.1.3 Bad recipient address syntax: missing domain\r\n");
        assert_eq!(reply_of("MAIL FROM:<a@@b>"), "501 5.1.7 Bad sender address syntax: bad domain\r\n");
    }

    #[test]
    fn source_routes_are_stripped() {
        assert_eq!(
            rcpt("RCPT TO:<@a.example,@b.example:user@d.example>"),
            ForwardPath::Mailbox(mailbox("user", "d.example"))
        );
        assert_eq!(mail("MAIL FROM:<@a:user@d>").from, ReversePath::Mailbox(mailbox("user", "d")));
        for bad in [
            "RCPT TO:<@:user@d>",
            "RCPT TO:<@a,user@d>",
            "RCPT TO:<@a@b:user@d>",
            "RCPT TO:<@a,:user@d>",
            "RCPT TO:<@a,b:user@d>",
        ] {
            assert_eq!(p(bad), Err(ParseError::BadRecipient(AddressError::BadSourceRoute)), "{bad}");
        }
    }

    #[test]
    fn quoted_local_parts_are_canonical() {
        let to = rcpt(r#"RCPT TO:<"john doe"@example.org>"#);
        let ForwardPath::Mailbox(m) = to else { panic!() };
        assert_eq!(m.local_part(), "\"john doe\"");
        assert!(m.local_part_is_quoted());
        assert_eq!(m.to_string(), "\"john doe\"@example.org");
        // '@' inside quotes does not end the local part.
        let ForwardPath::Mailbox(m) = rcpt(r#"RCPT TO:<"a@c"@d.example>"#) else { panic!() };
        assert_eq!(m.local_part(), r#""a@c""#);
        assert_eq!(m.domain(), "d.example");
        // Only `"` and `\` stay escaped; quotes that were not needed go.
        let ForwardPath::Mailbox(m) = rcpt(r#"RCPT TO:<"a\"b\\c"@d>"#) else { panic!() };
        assert_eq!(m.local_part(), r#""a\"b\\c""#);
        let ForwardPath::Mailbox(m) = rcpt(r#"RCPT TO:<"a\ b\x"@d>"#) else { panic!() };
        assert_eq!(m.local_part(), r#""a bx""#);
        for (sent, canonical) in [(r#""alice""#, "alice"), (r#""a.b+c""#, "a.b+c"), (r#""\a\l""#, "al"), ("\"ü\"", "ü")]
        {
            let ForwardPath::Mailbox(m) = rcpt(&format!("RCPT TO:<{sent}@d>")) else { panic!() };
            assert_eq!(m.local_part(), canonical, "{sent}");
            assert!(!m.local_part_is_quoted());
        }
        for needs_quotes in [r#"".a""#, r#""a..b""#, r#""a.""#, r#""""#, r#""a b""#, r#""a(b)""#] {
            let ForwardPath::Mailbox(m) = rcpt(&format!("RCPT TO:<{needs_quotes}@d>")) else { panic!() };
            assert_eq!(m.local_part(), needs_quotes);
        }
        assert_eq!(p(r#"RCPT TO:<"abc@d>"#), Err(ParseError::BadRecipient(AddressError::BadLocalPart)));
        assert_eq!(p(r#"RCPT TO:<"a"b"@d>"#), Err(ParseError::BadRecipient(AddressError::BadLocalPart)));
    }

    /// Issue 14: `<"a> SIZE=1"@x>` was relayed as sent, which a back end that ends the path at
    /// the first `>` reads as `<"a>` plus a parameter. `<` or `>` in quotes is refused with 553.
    #[test]
    fn angle_brackets_in_a_quoted_local_part_are_refused() {
        for line in [r#"MAIL FROM:<"a> SIZE=1"@x.example>"#, r#"MAIL FROM:<"a\>"@x>"#, r#"MAIL FROM:<"<b"@x>"#] {
            let e = p(line).unwrap_err();
            assert_eq!(e, ParseError::BadSender(AddressError::AngleBracketQuoted), "{line}");
            let reply = String::from_utf8_lossy(&e.reply().to_bytes()).into_owned();
            assert!(reply.starts_with("553 5.1.7 "), "{reply}");
        }
        let e = p(r#"RCPT TO:<"a>b@c"@d.example>"#).unwrap_err();
        assert_eq!(e, ParseError::BadRecipient(AddressError::AngleBracketQuoted));
        let reply = String::from_utf8_lossy(&e.reply().to_bytes()).into_owned();
        assert!(reply.starts_with("553 5.1.3 "), "{reply}");
    }

    #[test]
    fn dot_strings() {
        assert!(matches!(rcpt("RCPT TO:<a.b+tag@d>"), ForwardPath::Mailbox(_)));
        assert!(matches!(rcpt("RCPT TO:<!#$%&'*+-/=?^_`{|}~@d>"), ForwardPath::Mailbox(_)));
        for bad in ["RCPT TO:<.a@d>", "RCPT TO:<a.@d>", "RCPT TO:<a..b@d>", "RCPT TO:<a b@d>", "RCPT TO:<a(b)@d>"] {
            assert!(matches!(p(bad), Err(ParseError::BadRecipient(_))), "{bad}");
        }
    }

    #[test]
    fn domains_and_literals() {
        let ForwardPath::Mailbox(m) = rcpt("RCPT TO:<a@[192.0.2.1]>") else { panic!() };
        assert!(m.domain_is_literal());
        assert!(matches!(rcpt("RCPT TO:<a@[IPv6:2001:db8::1]>"), ForwardPath::Mailbox(_)));
        assert!(matches!(rcpt("RCPT TO:<a@[ipv6:::1]>"), ForwardPath::Mailbox(_)));
        assert!(matches!(rcpt("RCPT TO:<a@host_name.example>"), ForwardPath::Mailbox(_)));
        assert!(matches!(rcpt("RCPT TO:<a@EXAMPLE.ORG>"), ForwardPath::Mailbox(_)));
        for (bad, why) in [
            ("RCPT TO:<a@[1.2.3]>", AddressError::BadAddressLiteral),
            ("RCPT TO:<a@[IPv6:zz]>", AddressError::BadAddressLiteral),
            ("RCPT TO:<a@[tag:x]>", AddressError::BadAddressLiteral),
            ("RCPT TO:<a@[1.2.3.4>", AddressError::BadAddressLiteral),
            ("RCPT TO:<a@b.>", AddressError::BadDomain),
            ("RCPT TO:<a@.b>", AddressError::BadDomain),
            ("RCPT TO:<a@b..c>", AddressError::BadDomain),
            ("RCPT TO:<a@-b.c>", AddressError::BadDomain),
            ("RCPT TO:<a@b-.c>", AddressError::BadDomain),
            ("RCPT TO:<a@>", AddressError::BadDomain),
            ("RCPT TO:<a@b c>", AddressError::Unterminated),
            ("RCPT TO:<a@b", AddressError::BadDomain),
            ("RCPT TO:<a@b>junk", AddressError::Unterminated),
        ] {
            match p(bad) {
                Err(ParseError::BadRecipient(e)) => assert_eq!(e, why, "{bad}"),
                // Junk after the closing bracket is a parameter problem instead.
                Err(ParseError::BadParameter { .. }) if bad.ends_with("junk") => {}
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn length_limits() {
        let l64 = "a".repeat(64);
        let l65 = "a".repeat(65);
        assert!(matches!(rcpt(&format!("RCPT TO:<{l64}@d>")), ForwardPath::Mailbox(_)));
        assert_eq!(p(&format!("RCPT TO:<{l65}@d>")), Err(ParseError::BadRecipient(AddressError::LocalPartTooLong)));
        let label = "b".repeat(63);
        assert!(matches!(rcpt(&format!("RCPT TO:<a@{label}>")), ForwardPath::Mailbox(_)));
        assert_eq!(p(&format!("RCPT TO:<a@{label}b>")), Err(ParseError::BadRecipient(AddressError::BadDomain)));
        // 4 labels of 63 + 3 dots = 255: allowed; the path is then 255 + 4 = 259 > 256.
        let d255 = [label.as_str(); 4].join(".");
        assert_eq!(d255.len(), 255);
        assert_eq!(p(&format!("RCPT TO:<a@{d255}>")), Err(ParseError::BadRecipient(AddressError::PathTooLong)));
        let d256 = format!("{label}.{label}.{label}.{}.c", &label[..62]);
        assert_eq!(d256.len(), 256);
        assert_eq!(p(&format!("RCPT TO:<a@{d256}>")), Err(ParseError::BadRecipient(AddressError::DomainTooLong)));
        // Exactly 256 with the brackets.
        let d = format!("{label}.{label}.{label}.{}", &label[..60]);
        let path = format!("<{}@{d}>", "a");
        assert_eq!(path.len(), 256);
        assert!(matches!(rcpt(&format!("RCPT TO:{path}")), ForwardPath::Mailbox(_)));
    }

    #[test]
    fn utf8_addresses_are_parsed_and_flagged() {
        let m = mail("MAIL FROM:<jöran@bücher.example> SMTPUTF8");
        let ReversePath::Mailbox(mb) = m.from else { panic!() };
        assert!(!mb.is_ascii());
        assert_eq!(mb.local_part(), "jöran");
        assert!(m.smtputf8);
        let ForwardPath::Mailbox(mb) = rcpt("RCPT TO:<\"δοκιμή\"@παράδειγμα.δοκιμή>") else {
            panic!()
        };
        assert!(!mb.is_ascii());
        let ForwardPath::Mailbox(mb) = rcpt("RCPT TO:<plain@example>") else { panic!() };
        assert!(mb.is_ascii());
    }

    #[test]
    fn auth() {
        assert_eq!(
            p("auth plain AGJvYgBwdw=="),
            Ok(Command::Auth { mechanism: "PLAIN".into(), initial_response: Some("AGJvYgBwdw==".into()) })
        );
        assert_eq!(p("AUTH LOGIN"), Ok(Command::Auth { mechanism: "LOGIN".into(), initial_response: None }));
        assert_eq!(
            p("AUTH PLAIN ="),
            Ok(Command::Auth { mechanism: "PLAIN".into(), initial_response: Some("=".into()) })
        );
        assert!(matches!(p("AUTH"), Err(ParseError::Syntax { .. })));
        assert!(matches!(p("AUTH PLAIN a b"), Err(ParseError::Syntax { .. })));
        assert!(matches!(p("AUTH PL@IN"), Err(ParseError::Syntax { .. })));
        assert!(matches!(p("AUTH PLAIN a!b"), Err(ParseError::Syntax { .. })));
    }

    #[test]
    fn never_panics_on_prefixes_of_tricky_lines() {
        let lines = [
            r#"MAIL FROM:<@a.b,@c:"q\"x"@[IPv6:::1]> SIZE=1 BODY=8BITMIME SMTPUTF8 AUTH=x"#,
            "RCPT TO:<jöran@bücher.example>",
        ];
        for line in lines {
            let bytes = line.as_bytes();
            for end in 0..=bytes.len() {
                let _ = parse(&bytes[..end]);
            }
        }
    }
}
