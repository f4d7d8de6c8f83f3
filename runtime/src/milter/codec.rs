//! The milter wire format, sans I/O: commands encoded into a buffer, replies decoded from one.
//!
//! Every packet is a 4-byte big-endian length (the command byte included), one command byte,
//! then its data; strings are NUL-terminated. Version 6 as Sendmail's libmilter and Postfix
//! speak it (libmilter's `mfdef.h` names every constant below). Decoding is total: any bytes
//! give a reply or an error, never a panic (the `milter_reply` fuzz target holds it to that),
//! and a packet larger than [`MAX_PACKET`] is refused before it is buffered.

/// The protocol version mtac offers.
pub const VERSION: u32 = 6;
/// The largest body chunk libmilter accepts (`MILTER_CHUNK_SIZE`).
pub const BODY_CHUNK: usize = 65535;
/// The largest reply mtac reads: a replaced-body chunk is at most 64 KiB, a header a few KiB.
pub const MAX_PACKET: usize = 256 * 1024;

/// What the MTA lets a milter do (`SMFIF_*`), offered in full as Postfix does: libmilter aborts
/// a milter offered fewer actions than it registered. What mtac does with each is
/// `super::client`'s business.
pub mod action {
    pub const ADD_HEADERS: u32 = 0x01;
    pub const CHANGE_BODY: u32 = 0x02;
    pub const ADD_RCPT: u32 = 0x04;
    pub const DELETE_RCPT: u32 = 0x08;
    pub const CHANGE_HEADERS: u32 = 0x10;
    pub const QUARANTINE: u32 = 0x20;
    pub const CHANGE_FROM: u32 = 0x40;
    pub const ADD_RCPT_PAR: u32 = 0x80;
    pub const SET_SYMLIST: u32 = 0x100;
    pub const ALL: u32 = 0x1ff;
}

/// Stages a milter may skip or not answer (`SMFIP_*`).
pub mod protocol {
    pub const NO_CONNECT: u32 = 0x1;
    pub const NO_HELO: u32 = 0x2;
    pub const NO_MAIL: u32 = 0x4;
    pub const NO_RCPT: u32 = 0x8;
    pub const NO_BODY: u32 = 0x10;
    pub const NO_HEADERS: u32 = 0x20;
    pub const NO_EOH: u32 = 0x40;
    pub const NR_HEADER: u32 = 0x80;
    pub const NO_UNKNOWN: u32 = 0x100;
    pub const NO_DATA: u32 = 0x200;
    pub const SKIP: u32 = 0x400;
    pub const RCPT_REJ: u32 = 0x800;
    pub const NR_CONNECT: u32 = 0x1000;
    pub const NR_HELO: u32 = 0x2000;
    pub const NR_MAIL: u32 = 0x4000;
    pub const NR_RCPT: u32 = 0x8000;
    pub const NR_DATA: u32 = 0x10000;
    pub const NR_UNKNOWN: u32 = 0x20000;
    pub const NR_EOH: u32 = 0x40000;
    pub const NR_BODY: u32 = 0x80000;
    pub const HEADER_LEADING_SPACE: u32 = 0x100000;
    /// Everything mtac can honour (all of the above but `RCPT_REJ`: rejected recipients are
    /// never sent on).
    pub const OFFERED: u32 = 0x1ff7ff & !RCPT_REJ;
}

/// A command from the MTA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    OptionNegotiation {
        version: u32,
        actions: u32,
        protocol: u32,
    },
    /// Macros for the command whose byte is `stage`: name/value pairs.
    Macros {
        stage: u8,
        pairs: &'a [(&'a str, String)],
    },
    Connect {
        hostname: &'a str,
        address: Option<std::net::SocketAddr>,
    },
    Helo(&'a str),
    /// The path without brackets (they are added), then ESMTP arguments.
    Mail(&'a str),
    Rcpt(&'a str),
    Data,
    Header {
        name: &'a [u8],
        value: &'a [u8],
    },
    EndOfHeaders,
    Body(&'a [u8]),
    EndOfMessage,
    Abort,
    Quit,
}

impl Command<'_> {
    /// The command byte (`SMFIC_*`).
    pub fn code(&self) -> u8 {
        match self {
            Command::OptionNegotiation { .. } => b'O',
            Command::Macros { .. } => b'D',
            Command::Connect { .. } => b'C',
            Command::Helo(_) => b'H',
            Command::Mail(_) => b'M',
            Command::Rcpt(_) => b'R',
            Command::Data => b'T',
            Command::Header { .. } => b'L',
            Command::EndOfHeaders => b'N',
            Command::Body(_) => b'B',
            Command::EndOfMessage => b'E',
            Command::Abort => b'A',
            Command::Quit => b'Q',
        }
    }

    /// Append the packet to `out`. Strings lose any NUL they hold (it would end them early).
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0, 0, 0, 0, self.code()]);
        match self {
            Command::OptionNegotiation { version, actions, protocol } => {
                for n in [version, actions, protocol] {
                    out.extend_from_slice(&n.to_be_bytes());
                }
            }
            Command::Macros { stage, pairs } => {
                out.push(*stage);
                for (name, value) in pairs.iter() {
                    cstr(out, name.as_bytes());
                    cstr(out, value.as_bytes());
                }
            }
            Command::Connect { hostname, address } => {
                cstr(out, hostname.as_bytes());
                match address {
                    Some(a) => {
                        out.push(if a.is_ipv4() { b'4' } else { b'6' });
                        out.extend_from_slice(&a.port().to_be_bytes());
                        // libmilter wants IPv6 addresses with the IPv6: prefix stripped.
                        cstr(out, a.ip().to_string().as_bytes());
                    }
                    None => out.push(b'U'),
                }
            }
            Command::Helo(name) => cstr(out, name.as_bytes()),
            Command::Mail(path) | Command::Rcpt(path) => {
                let mut bracketed = Vec::with_capacity(path.len() + 2);
                bracketed.push(b'<');
                bracketed.extend_from_slice(path.as_bytes());
                bracketed.push(b'>');
                cstr(out, &bracketed);
            }
            Command::Header { name, value } => {
                cstr(out, name);
                cstr(out, value);
            }
            Command::Body(chunk) => out.extend_from_slice(chunk),
            Command::Data | Command::EndOfHeaders | Command::EndOfMessage | Command::Abort | Command::Quit => {}
        }
        // Packets are built from bounded parts (a body chunk ≤ 64 KiB, a header field ≤ 64 KiB),
        // so the length always fits in 32 bits.
        let len = u32::try_from(out.len() - start - 4).unwrap_or(u32::MAX).to_be_bytes();
        if let Some(prefix) = out.get_mut(start..start + 4) {
            prefix.copy_from_slice(&len);
        }
    }
}

fn cstr(out: &mut Vec<u8>, s: &[u8]) {
    out.extend(s.iter().copied().filter(|b| *b != 0));
    out.push(0);
}

/// A reply from the milter (`SMFIR_*`, and the option negotiation's answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    OptionNegotiation {
        version: u32,
        actions: u32,
        protocol: u32,
    },
    Accept,
    Continue,
    Discard,
    Reject,
    Tempfail,
    /// `SMFIR_REPLYCODE`: the milter's own SMTP reply, as it sent it (validated by the client).
    ReplyCode(String),
    /// `SMFIR_SHUTDOWN` and `SMFIR_CONN_FAIL`: the milter gives up on the connection.
    Shutdown,
    Progress,
    Skip,
    AddHeader {
        name: String,
        value: String,
    },
    InsertHeader {
        index: u32,
        name: String,
        value: String,
    },
    /// An empty value deletes the field.
    ChangeHeader {
        index: u32,
        name: String,
        value: String,
    },
    ReplaceBody(Vec<u8>),
    AddRcpt(String),
    DeleteRcpt(String),
    ChangeFrom(String),
    Quarantine(String),
    SetSymbolList,
}

impl Reply {
    /// Whether this reply ends the milter's answer to a command (modifications and progress
    /// reports come before the final one).
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Reply::Accept
                | Reply::Continue
                | Reply::Discard
                | Reply::Reject
                | Reply::Tempfail
                | Reply::ReplyCode(_)
                | Reply::Shutdown
                | Reply::Skip
                | Reply::OptionNegotiation { .. }
        )
    }
}

/// Why a reply could not be decoded: the milter is broken, its fail mode decides.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("a packet of {0} bytes (at most {MAX_PACKET})")]
    TooLarge(usize),
    #[error("an empty packet")]
    Empty,
    #[error("unknown reply {0:#04x}")]
    Unknown(u8),
    #[error("malformed {0} reply")]
    Malformed(&'static str),
}

/// Decode one reply from the front of `buf`: `Ok(None)` when more bytes are needed, otherwise
/// the reply and how many bytes it took.
pub fn decode(buf: &[u8]) -> Result<Option<(Reply, usize)>, CodecError> {
    let Some(prefix) = buf.first_chunk::<4>() else { return Ok(None) };
    let len = u32::from_be_bytes(*prefix) as usize;
    if len == 0 {
        return Err(CodecError::Empty);
    }
    if len > MAX_PACKET {
        return Err(CodecError::TooLarge(len));
    }
    let Some(packet) = buf.get(4..).and_then(|rest| rest.get(..len)) else { return Ok(None) };
    let (&code, data) = packet.split_first().ok_or(CodecError::Empty)?;
    let reply = match code {
        b'O' => {
            let word = |i: usize| {
                data.get(i * 4..)
                    .and_then(<[u8]>::first_chunk::<4>)
                    .map(|w| u32::from_be_bytes(*w))
                    .ok_or(CodecError::Malformed("option negotiation"))
            };
            // Symbol lists may follow the three words; mtac sends its own set of macros.
            Reply::OptionNegotiation { version: word(0)?, actions: word(1)?, protocol: word(2)? }
        }
        b'a' => Reply::Accept,
        b'c' => Reply::Continue,
        b'd' => Reply::Discard,
        b'r' => Reply::Reject,
        b't' => Reply::Tempfail,
        b'y' => Reply::ReplyCode(one_string(data, "reply code")?),
        b'4' | b'f' => Reply::Shutdown,
        b'p' => Reply::Progress,
        b's' => Reply::Skip,
        b'h' => {
            let (name, value) = two_strings(data, "add header")?;
            Reply::AddHeader { name, value }
        }
        b'i' | b'm' => {
            let what = if code == b'i' { "insert header" } else { "change header" };
            let (index, rest) = data.split_first_chunk::<4>().ok_or(CodecError::Malformed(what))?;
            let index = u32::from_be_bytes(*index);
            let (name, value) = two_strings(rest, what)?;
            if code == b'i' {
                Reply::InsertHeader { index, name, value }
            } else {
                Reply::ChangeHeader { index, name, value }
            }
        }
        b'b' => Reply::ReplaceBody(data.to_vec()),
        b'+' => Reply::AddRcpt(one_string(data, "add recipient")?),
        // SMFIR_ADDRCPT_PAR: the recipient, then ESMTP arguments.
        b'2' => Reply::AddRcpt(first_string(data, "add recipient")?),
        b'-' => Reply::DeleteRcpt(one_string(data, "delete recipient")?),
        b'e' => Reply::ChangeFrom(first_string(data, "change sender")?),
        b'q' => Reply::Quarantine(one_string(data, "quarantine")?),
        b'l' => Reply::SetSymbolList,
        other => return Err(CodecError::Unknown(other)),
    };
    Ok(Some((reply, 4 + len)))
}

/// Data that is one NUL-terminated string.
fn one_string(data: &[u8], what: &'static str) -> Result<String, CodecError> {
    match data.split_last() {
        Some((0, text)) if !text.contains(&0) => Ok(String::from_utf8_lossy(text).into_owned()),
        _ => Err(CodecError::Malformed(what)),
    }
}

/// The first of one or more NUL-terminated strings.
fn first_string(data: &[u8], what: &'static str) -> Result<String, CodecError> {
    match data.iter().position(|b| *b == 0) {
        Some(end) if data.last() == Some(&0) => {
            Ok(String::from_utf8_lossy(data.get(..end).unwrap_or_default()).into_owned())
        }
        _ => Err(CodecError::Malformed(what)),
    }
}

/// Data that is exactly two NUL-terminated strings.
fn two_strings(data: &[u8], what: &'static str) -> Result<(String, String), CodecError> {
    let end = data.iter().position(|b| *b == 0).ok_or(CodecError::Malformed(what))?;
    let (first, rest) = data.split_at(end);
    let second = one_string(rest.get(1..).unwrap_or_default(), what)?;
    Ok((String::from_utf8_lossy(first).into_owned(), second))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn packet(code: u8, data: &[u8]) -> Vec<u8> {
        let mut p = ((data.len() + 1) as u32).to_be_bytes().to_vec();
        p.push(code);
        p.extend_from_slice(data);
        p
    }

    #[test]
    fn commands_are_framed_as_libmilter_reads_them() {
        let mut out = Vec::new();
        Command::OptionNegotiation { version: 6, actions: action::ALL, protocol: 0 }.encode(&mut out);
        assert_eq!(out, [0, 0, 0, 13, b'O', 0, 0, 0, 6, 0, 0, 1, 0xff, 0, 0, 0, 0]);
        out.clear();
        Command::Connect { hostname: "mx.example", address: Some("192.0.2.1:25".parse().unwrap()) }.encode(&mut out);
        assert_eq!(out, packet(b'C', b"mx.example\x004\x00\x19192.0.2.1\x00"));
        out.clear();
        Command::Mail("a\0b@example.org").encode(&mut out);
        assert_eq!(out, packet(b'M', b"<ab@example.org>\x00"), "a NUL cannot cut a string short");
        out.clear();
        let pairs = [("i", "Q1".to_owned()), ("{mail_addr}", "a@b".to_owned())];
        Command::Macros { stage: b'M', pairs: &pairs }.encode(&mut out);
        assert_eq!(out, packet(b'D', b"Mi\x00Q1\x00{mail_addr}\x00a@b\x00"));
    }

    #[test]
    fn replies_decode_and_need_whole_packets() {
        let mut bytes = packet(b'h', b"X-Test\0yes\0");
        bytes.extend(packet(b'c', b""));
        assert_eq!(decode(&bytes[..5]), Ok(None));
        let (reply, used) = decode(&bytes).unwrap().unwrap();
        assert_eq!(reply, Reply::AddHeader { name: "X-Test".into(), value: "yes".into() });
        assert_eq!(decode(&bytes[used..]), Ok(Some((Reply::Continue, 5))));
        let insert = packet(b'i', b"\0\0\0\0Authentication-Results\0mx; dkim=none\0");
        assert!(matches!(decode(&insert), Ok(Some((Reply::InsertHeader { index: 0, .. }, _)))));
        assert_eq!(decode(&packet(b'y', b"554 5.7.1 no\0")), Ok(Some((Reply::ReplyCode("554 5.7.1 no".into()), 18))));
    }

    #[test]
    fn garbage_is_an_error_never_a_panic() {
        assert_eq!(decode(&[0, 0, 0, 0]), Err(CodecError::Empty));
        assert_eq!(decode(&[0xff, 0xff, 0xff, 0xff]), Err(CodecError::TooLarge(u32::MAX as usize)));
        assert_eq!(decode(&packet(b'Z', b"")), Err(CodecError::Unknown(b'Z')));
        assert_eq!(decode(&packet(b'y', b"550 no NUL")), Err(CodecError::Malformed("reply code")));
        assert_eq!(decode(&packet(b'i', b"\0\0")), Err(CodecError::Malformed("insert header")));
        assert_eq!(decode(&packet(b'h', b"only-a-name\0")), Err(CodecError::Malformed("add header")));
        assert_eq!(decode(&packet(b'O', b"\0\0\0\x06")), Err(CodecError::Malformed("option negotiation")));
    }
}

/// The checks of the `milter_reply` fuzz target, shared with the corpus replay.
#[doc(hidden)]
pub mod fuzz {
    /// Decode replies from arbitrary bytes until they run out: each decoded reply took bytes,
    /// never more than there were.
    pub fn check(data: &[u8]) {
        let mut rest = data;
        while let Ok(Some((_, used))) = super::decode(rest) {
            assert!(used > 4 && used <= rest.len(), "a reply took {used} of {} bytes", rest.len());
            rest = rest.get(used..).unwrap_or_default();
        }
    }

    /// Corpus replay: every committed input of the target, through the same checks, on stable.
    #[cfg(test)]
    mod tests {
        #[test]
        fn milter_reply_corpus_replays() {
            mtac_ruleset::fuzz::replay_corpus("milter_reply", super::check);
        }
    }
}
