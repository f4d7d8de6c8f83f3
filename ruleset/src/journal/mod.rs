//! The decision journal: for every call of the evaluator a node makes, the facts it was given
//! and what it decided, so that `mtac diff` can replay real traffic through a candidate ruleset
//! and show which decisions would change before the candidate is pushed.
//!
//! # Layout
//!
//! ```text
//! "mtacjrnl"                 8 bytes, magic
//! version                    u16 little-endian (FORMAT_VERSION)
//! layout fingerprint         u64 little-endian (JOURNAL_FINGERPRINT)
//! header length, header      u32 little-endian, postcard `Header` (host, start, privacy)
//! record length, record      u32 little-endian (≤ MAX_RECORD), postcard `Record`, repeated
//! ```
//!
//! postcard is not self-describing: the fingerprint (a hash of the definitions of every type a
//! record holds, ruleset/build.rs) is how a reader knows the bytes mean what it thinks. A file
//! of another layout, a truncated file or a foreign one is a [`JournalError`] naming the byte
//! offset where reading stopped, never a panic (the `journal_reader` fuzz target holds it to
//! that). Every rotated file starts with its own header, so each file reads alone.
//!
//! What a record holds is what the evaluator read — never a message body. With a pseudonymising
//! [`Privacy`] the addresses' local parts are replaced before the record is written (see
//! `privacy.rs` for what such a record can and cannot replay).

mod privacy;
mod write;

pub use privacy::{Privacy, REDACTED_CLIENT_IP, REDACTED_LOCAL_PARTS};
pub use write::{JournalFile, WriteError};

use crate::eval::{evaluate, DirectoryAnswer, Facts, GivenDns, GreylistStatus, MessageAuth};
use crate::model::Stage;
use crate::replay::Outcome;
use crate::Ruleset;
use serde::{Deserialize, Serialize};
use std::io::Read;
use std::net::IpAddr;

/// The first bytes of every journal file.
pub const MAGIC: &[u8; 8] = b"mtacjrnl";
/// The version of the framing above.
pub const FORMAT_VERSION: u16 = 1;
/// What this build's records mean (see the module doc); a file with another one is refused.
pub const JOURNAL_FINGERPRINT: &str = env!("MTAC_JOURNAL_FINGERPRINT");
/// The largest record or header: far above a real one (a few hundred bytes; addresses are
/// bounded by SMTP's line length), small enough that a corrupt length costs no memory.
pub const MAX_RECORD: u32 = 64 * 1024;
/// Bytes before the header's own bytes: magic, version, fingerprint, header length.
const PREAMBLE: usize = 8 + 2 + 8 + 4;

fn fingerprint() -> u64 {
    u64::from_str_radix(JOURNAL_FINGERPRINT, 16).unwrap_or(0)
}

/// Who wrote a journal file and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The node's host name.
    pub hostname: String,
    /// When the file was started (Unix seconds).
    pub started: u64,
    /// The `addresses=` mode the file was written under (`full`, `pseudonymous`, `domain`).
    pub addresses: String,
    /// The `client-ip=` mode (`full`, `network`).
    pub client_ip: String,
}

/// One call of the evaluator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Unix seconds.
    pub time: u64,
    pub farm: String,
    pub stage: Stage,
    pub facts: RecordedFacts,
    /// What the node decided.
    pub outcome: Outcome,
}

/// The evaluator's [`Facts`], owned. The host name is the ruleset's and is not recorded: a
/// replay through another ruleset uses that ruleset's, as a node serving it would.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedFacts {
    pub client_ip: IpAddr,
    pub helo: Option<String>,
    pub sender: Option<String>,
    pub recipient: Option<String>,
    pub authenticated: bool,
    pub user: Option<String>,
    pub tls: bool,
    pub dns: GivenDns,
    pub greylist: Option<GreylistStatus>,
    pub directory: Option<DirectoryAnswer>,
    pub message: Option<MessageAuth>,
    /// What privacy replaced ([`REDACTED_LOCAL_PARTS`], [`REDACTED_CLIENT_IP`]): such a
    /// record's replay cannot be trusted to match the live decision.
    pub redacted: u8,
}

impl RecordedFacts {
    /// `facts`, owned; `dns` is what `facts.dns` reads (the node's session keeps a [`GivenDns`]).
    pub fn of(facts: &Facts<'_>, dns: &GivenDns) -> RecordedFacts {
        RecordedFacts {
            client_ip: facts.client_ip,
            helo: facts.helo.map(str::to_owned),
            sender: facts.sender.map(str::to_owned),
            recipient: facts.recipient.map(str::to_owned),
            authenticated: facts.authenticated,
            user: facts.user.map(str::to_owned),
            tls: facts.tls,
            dns: dns.clone(),
            greylist: facts.greylist,
            directory: facts.directory,
            message: facts.message.cloned(),
            redacted: 0,
        }
    }

    /// The facts for the evaluator, under `hostname` (the replaying ruleset's).
    pub fn facts<'a>(&'a self, hostname: &'a str) -> Facts<'a> {
        Facts {
            client_ip: self.client_ip,
            helo: self.helo.as_deref(),
            sender: self.sender.as_deref(),
            recipient: self.recipient.as_deref(),
            authenticated: self.authenticated,
            user: self.user.as_deref(),
            tls: self.tls,
            hostname,
            dns: &self.dns,
            greylist: self.greylist,
            directory: self.directory,
            message: self.message.as_ref(),
        }
    }
}

impl Record {
    /// This record's decision under `ruleset` (`None`: the ruleset has no farm of this name).
    pub fn replay(&self, ruleset: &Ruleset) -> Option<Outcome> {
        let policy = ruleset.policy();
        let farm = policy.farms.iter().find(|f| f.name == self.farm)?;
        let facts = self.facts.facts(&policy.hostname);
        Some(Outcome::of(&evaluate(ruleset, farm, self.stage, &facts)))
    }
}

/// The start of a journal file: magic, version, fingerprint and `header`.
pub fn encode_header(header: &Header) -> Result<Vec<u8>, WriteError> {
    let mut out = Vec::with_capacity(PREAMBLE + 64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&fingerprint().to_le_bytes());
    frame(header, &mut out)?;
    Ok(out)
}

/// Append `record`, length-prefixed, to `out`; the bytes appended.
pub fn encode_record(record: &Record, out: &mut Vec<u8>) -> Result<usize, WriteError> {
    frame(record, out)
}

fn frame<T: Serialize>(value: &T, out: &mut Vec<u8>) -> Result<usize, WriteError> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    let encoded = postcard::to_extend(value, std::mem::take(out));
    *out = match encoded {
        Ok(out) => out,
        Err(e) => return Err(WriteError::Encode(e.to_string())),
    };
    let len = out.len() - start - 4;
    match u32::try_from(len) {
        Ok(n) if n <= MAX_RECORD => {
            out.get_mut(start..start + 4).into_iter().for_each(|slot| slot.copy_from_slice(&n.to_le_bytes()));
            Ok(len + 4)
        }
        _ => {
            out.truncate(start);
            Err(WriteError::TooLong(len))
        }
    }
}

/// Why a journal could not be read, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("at byte {offset}: {kind}")]
pub struct JournalError {
    /// The offset of the first byte of the part that could not be read.
    pub offset: u64,
    pub kind: JournalErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalErrorKind {
    #[error("cannot read: {0}")]
    Io(String),
    #[error("not an mtac journal (no `mtacjrnl` magic)")]
    NotAJournal,
    #[error("journal format version {0}, this mtac reads version {FORMAT_VERSION}")]
    Version(u16),
    #[error("journal written with record layout {found:016x}, this mtac's is {JOURNAL_FINGERPRINT}: replay it with the mtac that wrote it")]
    Layout { found: u64 },
    #[error("truncated: the file ends inside {0}")]
    Truncated(&'static str),
    #[error("a record length of {0} bytes (the most is {MAX_RECORD}): corrupt")]
    TooLong(u32),
    #[error("a record does not decode: {0}")]
    Malformed(String),
}

/// Reads a journal: the header at [`JournalReader::new`], then one record per `next`. After an
/// error it yields nothing more.
pub struct JournalReader<R> {
    input: R,
    offset: u64,
    header: Header,
    buf: Vec<u8>,
    done: bool,
}

impl<R: Read> JournalReader<R> {
    pub fn new(mut input: R) -> Result<JournalReader<R>, JournalError> {
        let mut preamble = [0u8; PREAMBLE - 4];
        let got = fill(&mut input, &mut preamble, 0)?;
        let at = |offset: usize, kind| JournalError { offset: offset as u64, kind };
        if got < MAGIC.len() || preamble.first_chunk::<8>() != Some(MAGIC) {
            return Err(at(0, JournalErrorKind::NotAJournal));
        }
        if got < preamble.len() {
            return Err(at(got, JournalErrorKind::Truncated("the preamble")));
        }
        let (_, rest) = preamble.split_first_chunk::<8>().unwrap_or((&[0; 8], &[]));
        let (version, rest) = rest.split_first_chunk::<2>().unwrap_or((&[0; 2], &[]));
        let version = u16::from_le_bytes(*version);
        if version != FORMAT_VERSION {
            return Err(at(8, JournalErrorKind::Version(version)));
        }
        let found = rest.first_chunk::<8>().map_or(0, |b| u64::from_le_bytes(*b));
        if found != fingerprint() {
            return Err(at(10, JournalErrorKind::Layout { found }));
        }
        let mut reader = JournalReader {
            input,
            offset: preamble.len() as u64,
            header: empty_header(),
            buf: Vec::new(),
            done: false,
        };
        match reader.frame::<Header>("the header")? {
            Some(header) => reader.header = header,
            None => return Err(at(preamble.len(), JournalErrorKind::Truncated("the header"))),
        }
        Ok(reader)
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Bytes read so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// One length-prefixed value; `None` at a clean end of the file.
    fn frame<T: for<'de> Deserialize<'de>>(&mut self, what: &'static str) -> Result<Option<T>, JournalError> {
        let start = self.offset;
        let mut len = [0u8; 4];
        match fill(&mut self.input, &mut len, start)? {
            0 => return Ok(None),
            4 => {}
            _ => return Err(JournalError { offset: start, kind: JournalErrorKind::Truncated(what) }),
        }
        let n = u32::from_le_bytes(len);
        if n > MAX_RECORD {
            return Err(JournalError { offset: start, kind: JournalErrorKind::TooLong(n) });
        }
        let n = n as usize;
        self.buf.resize(n, 0);
        if fill(&mut self.input, &mut self.buf, start + 4)? < n {
            return Err(JournalError { offset: start, kind: JournalErrorKind::Truncated(what) });
        }
        let value = postcard::from_bytes(&self.buf)
            .map_err(|e| JournalError { offset: start, kind: JournalErrorKind::Malformed(e.to_string()) })?;
        self.offset = start + 4 + n as u64;
        Ok(Some(value))
    }
}

impl<R: Read> Iterator for JournalReader<R> {
    type Item = Result<Record, JournalError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let next = self.frame::<Record>("a record").transpose();
        if !matches!(next, Some(Ok(_))) {
            self.done = true;
        }
        next
    }
}

fn empty_header() -> Header {
    Header { hostname: String::new(), started: 0, addresses: String::new(), client_ip: String::new() }
}

/// Read into `buf` until it is full or the input ends; the bytes read.
fn fill(input: &mut impl Read, buf: &mut [u8], offset: u64) -> Result<usize, JournalError> {
    let mut got = 0;
    while got < buf.len() {
        let Some(rest) = buf.get_mut(got..) else { break };
        match input.read(rest) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(JournalError { offset: offset + got as u64, kind: JournalErrorKind::Io(e.to_string()) })
            }
        }
    }
    Ok(got)
}

/// The `journal_reader` fuzz target's check: any bytes read as a journal give records or an
/// error naming an offset inside the input, never a panic.
#[doc(hidden)]
#[allow(clippy::panic)]
pub fn fuzz_reader(data: &[u8]) {
    let reader = match JournalReader::new(data) {
        Ok(reader) => reader,
        Err(e) => {
            assert!(e.offset <= data.len() as u64, "offset {} beyond {} bytes", e.offset, data.len());
            return;
        }
    };
    for record in reader {
        if let Err(e) = record {
            assert!(e.offset <= data.len() as u64, "offset {} beyond {} bytes", e.offset, data.len());
        }
    }
}

#[cfg(test)]
mod tests;
