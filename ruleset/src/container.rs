//! The ruleset file: a small verified container of typed sections.
//!
//! The compiler writes one file; every node memory-maps it, checks it once,
//! and then reads its tables in place without copying or parsing them. The
//! container only knows where sections are and that the bytes are the ones the
//! compiler wrote; what a section means is up to [`crate::tables`] and the
//! policy code.
//!
//! # Layout
//!
//! All integers are little-endian.
//!
//! | offset      | size    | field                                                   |
//! |-------------|---------|---------------------------------------------------------|
//! | 0           | 8       | magic `b"MTACRULE"`                                     |
//! | 8           | 4       | format version, `u32` (= [`FORMAT_VERSION`])            |
//! | 12          | 4       | flags, `u32`, must be 0                                 |
//! | 16          | 2       | compiler version length `n`, `u16`, at most 64          |
//! | 18          | n       | compiler version, UTF-8                                 |
//! | 18+n        | 8       | payload length, `u64`                                   |
//! | 26+n        | 32      | BLAKE3 hash (see below)                                 |
//! | 58+n        | 4       | section count `c`, `u32`                                |
//! | 62+n        | 24 × c  | section table: kind `u32`, id `u32`, offset `u64`, length `u64` |
//! | …           | 0–7     | zero padding up to a multiple of 8: the payload start   |
//! | payload     | …       | the sections, each starting on a multiple of 8 from the payload start, zero padding between them |
//!
//! Section offsets are counted from the payload start. The file ends exactly
//! at the end of the payload; trailing bytes are an error, so are sections
//! that overlap, stick out of the payload or are not 8-byte aligned, a kind
//! this build does not know, and a `(kind, id)` pair that appears twice.
//!
//! # The hash
//!
//! The hash is BLAKE3 over **every byte of the file except the 32 hash bytes
//! themselves** (the header before the hash, then everything after it). It is
//! the payload hash of the format plus the header: hashing only the payload
//! would let a flipped bit in the section table or in the compiler version
//! slip through, and this way *any* single changed byte is caught. Its hex
//! form ([`Container::hash_hex`]) is the ruleset's identity in logs and in
//! `mtac inspect`.
//!
//! The whole file is hashed at every open. That is the integrity check: a
//! damaged, truncated or half-copied file is refused before anything in it is
//! read. It is not a validation, since whoever writes a file can make its hash
//! match, so the readers in [`crate::tables`] still check the structure of
//! their sections (see "Trust" there). BLAKE3 runs at well over 1 GB/s on one
//! core, so even a large ruleset verifies in milliseconds.
//!
//! # Writing
//!
//! [`ContainerWriter::to_bytes`] is deterministic: sections are stored in
//! `(kind, id)` order whatever order they were added in, so the same policy
//! compiles to a byte-identical file and the same hash. [`write_atomic`] puts
//! the file in place with a rename, which is also what makes the memory map
//! in [`Container::open`] sound enough (see there).
//!
//! ```
//! use mtac_ruleset::container::{Container, ContainerWriter, SectionKind};
//!
//! let mut writer = ContainerWriter::new();
//! writer.add_section(SectionKind::Policy, 0, b"policy bytes".to_vec())?;
//! let file = writer.to_bytes("mtac-compiler 0.1.0");
//!
//! let container = Container::from_vec(file)?;
//! assert_eq!(container.compiler_version(), "mtac-compiler 0.1.0");
//! let policy = container.section(SectionKind::Policy, 0).ok_or("no policy")?;
//! assert_eq!(policy.as_ref(), b"policy bytes");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The first eight bytes of every ruleset file.
pub const MAGIC: [u8; 8] = *b"MTACRULE";

/// The container format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// Longest compiler version string the header holds, in bytes.
pub const MAX_COMPILER_VERSION_LEN: usize = 64;

/// Size of one section table entry: kind, id, offset, length.
const SECTION_ENTRY_LEN: usize = 4 + 4 + 8 + 8;

/// Sections and the payload start on multiples of this, so a reader that
/// wants to view a section as `u64`s could, and so offsets are recognisable
/// in a hex dump.
const ALIGN: usize = 8;

/// Offset of the compiler version string: magic, version, flags, length.
const COMPILER_VERSION_OFFSET: usize = 8 + 4 + 4 + 2;

/// Size of the fixed part of the header that follows the compiler version:
/// payload length, hash, section count.
const HEADER_TAIL_LEN: usize = 8 + 32 + 4;

/// What a section holds. Stored as a `u32`; a kind this build does not know is
/// an error at open rather than silently ignored, because a section the node
/// skipped could be one the policy depends on.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SectionKind {
    /// The compiled decision program (serialized by the policy code).
    Policy = 1,
    /// A [`crate::tables::DomainTable`].
    DomainTable = 2,
    /// A [`crate::tables::AddressTable`].
    AddressTable = 3,
    /// A [`crate::tables::PrefixTable`].
    PrefixTable = 4,
    /// The model fingerprint of the mtac that wrote the file ([`crate::MODEL_FINGERPRINT`]).
    Model = 5,
}

impl SectionKind {
    /// Every kind this build knows, in numeric order.
    pub const ALL: [SectionKind; 5] = [
        SectionKind::Policy,
        SectionKind::DomainTable,
        SectionKind::AddressTable,
        SectionKind::PrefixTable,
        SectionKind::Model,
    ];

    /// The number stored in the file.
    pub fn as_u32(self) -> u32 {
        self as u32
    }

    /// The kind stored as `raw`, or `None` if this build does not know it.
    pub fn from_u32(raw: u32) -> Option<SectionKind> {
        match raw {
            1 => Some(SectionKind::Policy),
            2 => Some(SectionKind::DomainTable),
            3 => Some(SectionKind::AddressTable),
            4 => Some(SectionKind::PrefixTable),
            5 => Some(SectionKind::Model),
            _ => None,
        }
    }

    /// A short lowercase name for logs and `mtac inspect`.
    pub fn name(self) -> &'static str {
        match self {
            SectionKind::Policy => "policy",
            SectionKind::DomainTable => "domain-table",
            SectionKind::AddressTable => "address-table",
            SectionKind::PrefixTable => "prefix-table",
            SectionKind::Model => "model",
        }
    }
}

impl fmt::Display for SectionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a ruleset file was refused. Every variant means the node keeps the
/// ruleset it had (or does not start); the message says what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContainerError {
    /// The file could not be opened, inspected or mapped.
    #[error("cannot read ruleset file {path}: {source}; check that the path is right and readable by the mtac user")]
    Io {
        /// The file we tried to read.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// The file is larger than this machine's address space.
    #[error(
        "ruleset file is {len} bytes, too large to map on this machine; compile a smaller policy or use a 64-bit build"
    )]
    TooLarge {
        /// The file size.
        len: u64,
    },
    /// The file ends before its header does.
    #[error("ruleset file is truncated: {len} bytes, but its header alone needs {need}; the copy is incomplete, recompile or copy it again")]
    TruncatedHeader {
        /// The file size.
        len: usize,
        /// Bytes the header needs (as far as it could be read).
        need: usize,
    },
    /// The file does not start with [`MAGIC`].
    #[error("not an mtac ruleset (it starts with {found:02x?}, not \"MTACRULE\"); point the configuration at a file written by `mtac compile`")]
    BadMagic {
        /// The first bytes of the file.
        found: [u8; 8],
    },
    /// The file uses a format version this build cannot read.
    #[error("ruleset format version {found}, but this build of mtac reads version {supported}; recompile the policy with the compiler of the same mtac release")]
    UnsupportedVersion {
        /// The version in the file.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// Flags this build does not understand are set.
    #[error("ruleset header has unknown flags {flags:#010x}; it was written by a newer compiler, recompile it with the compiler of this mtac release")]
    UnknownFlags {
        /// The flags word.
        flags: u32,
    },
    /// The compiler version string is too long or not UTF-8.
    #[error("ruleset header has an invalid compiler version ({reason}); the file is damaged or not from `mtac compile`, recompile it")]
    BadCompilerVersion {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The file is shorter than the header says.
    #[error("ruleset file is truncated: the header says {expected} bytes, the file has {found}; the copy is incomplete, recompile or copy it again")]
    Truncated {
        /// Size the header implies.
        expected: u64,
        /// Actual size.
        found: u64,
    },
    /// The file is longer than the header says.
    #[error("ruleset file has {extra} bytes after its end; it was appended to or is not a ruleset, recompile it")]
    TrailingBytes {
        /// How many bytes follow the payload.
        extra: u64,
    },
    /// The hash does not match the contents.
    #[error(
        "ruleset file is corrupted: its hash is {expected} but its contents hash to {actual}; restore it or recompile"
    )]
    HashMismatch {
        /// Hash stored in the header, hex.
        expected: String,
        /// Hash of the bytes read, hex.
        actual: String,
    },
    /// The padding before the payload is not zero.
    #[error("ruleset header padding is not zero; the file is not from `mtac compile`, recompile it")]
    NonZeroPadding,
    /// A section has a kind this build does not know.
    #[error("ruleset section #{index} has unknown kind {kind}; it was written by a newer compiler, recompile with the compiler of this mtac release")]
    UnknownSectionKind {
        /// Position in the section table.
        index: usize,
        /// The raw kind.
        kind: u32,
    },
    /// A section does not fit inside the payload.
    #[error("ruleset section #{index} ({kind} {id}) spans {offset}+{len} bytes, past the payload of {payload_len}; the file is damaged, recompile it")]
    SectionOutOfBounds {
        /// Position in the section table.
        index: usize,
        /// Its kind.
        kind: SectionKind,
        /// Its id.
        id: u32,
        /// Offset from the payload start.
        offset: u64,
        /// Its length.
        len: u64,
        /// The payload length.
        payload_len: u64,
    },
    /// A section does not start on an 8-byte boundary.
    #[error("ruleset section #{index} starts at payload offset {offset}, not a multiple of 8; the file is damaged, recompile it")]
    SectionMisaligned {
        /// Position in the section table.
        index: usize,
        /// Offset from the payload start.
        offset: u64,
    },
    /// Two sections share bytes.
    #[error("ruleset sections #{first} and #{second} overlap; the file is damaged, recompile it")]
    SectionsOverlap {
        /// Position in the section table of the earlier section.
        first: usize,
        /// Position in the section table of the later section.
        second: usize,
    },
    /// The same `(kind, id)` appears twice.
    #[error(
        "ruleset has two {kind} sections with id {id}; the file is damaged or the compiler is buggy, recompile it"
    )]
    DuplicateSection {
        /// The kind.
        kind: SectionKind,
        /// The id.
        id: u32,
    },
}

/// Why a section could not be added to a [`ContainerWriter`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    /// A section with this kind and id was already added.
    #[error("a {kind} section with id {id} was already added; give each table of one kind its own id")]
    DuplicateSection {
        /// The kind.
        kind: SectionKind,
        /// The id.
        id: u32,
    },
}

/// The bytes a [`Bytes`] view points into: a memory map or an owned buffer.
pub enum Backing {
    /// A read-only memory map of a ruleset file.
    Mapped(memmap2::Mmap),
    /// Bytes in memory (tests, fuzzing, a ruleset received over the network).
    Owned(Vec<u8>),
}

impl Backing {
    fn as_slice(&self) -> &[u8] {
        match self {
            Backing::Mapped(map) => map,
            Backing::Owned(vec) => vec,
        }
    }
}

impl fmt::Debug for Backing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backing::Mapped(map) => write!(f, "Mapped({} bytes)", map.len()),
            Backing::Owned(vec) => write!(f, "Owned({} bytes)", vec.len()),
        }
    }
}

/// A cheap, cloneable view of part of a ruleset file.
///
/// It keeps the whole file (map or buffer) alive, so a table built over a
/// section stays valid after the [`Container`] is dropped and while a newer
/// ruleset is being loaded. It implements `AsRef<[u8]>`, which is all
/// `fst::Map::new` needs to read a table in place.
#[derive(Clone)]
pub struct Bytes {
    backing: Arc<Backing>,
    start: usize,
    end: usize,
}

impl Bytes {
    /// Wraps an owned buffer.
    pub fn from_vec(vec: Vec<u8>) -> Bytes {
        let end = vec.len();
        Bytes { backing: Arc::new(Backing::Owned(vec)), start: 0, end }
    }

    fn from_backing(backing: Backing) -> Bytes {
        let end = backing.as_slice().len();
        Bytes { backing: Arc::new(backing), start: 0, end }
    }

    /// The viewed bytes.
    pub fn as_slice(&self) -> &[u8] {
        // `start..end` is inside the backing by construction; the fallback
        // keeps a broken invariant from becoming a panic.
        self.backing.as_slice().get(self.start..self.end).unwrap_or(&[])
    }

    /// Number of bytes viewed.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether the view is empty.
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// A view of `range` (relative to this view), or `None` if it does not
    /// fit.
    pub fn slice(&self, range: Range<usize>) -> Option<Bytes> {
        if range.start > range.end || range.end > self.len() {
            return None;
        }
        Some(Bytes {
            backing: Arc::clone(&self.backing),
            start: self.start.checked_add(range.start)?,
            end: self.start.checked_add(range.end)?,
        })
    }

    /// Whether the bytes come from a memory map.
    pub fn is_mapped(&self) -> bool {
        matches!(*self.backing, Backing::Mapped(_))
    }
}

impl AsRef<[u8]> for Bytes {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bytes").field("backing", &self.backing).field("range", &(self.start..self.end)).finish()
    }
}

/// Where a section is, as stored in the section table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SectionInfo {
    /// What it holds.
    pub kind: SectionKind,
    /// Which one of that kind (the compiler's numbering, e.g. a list index).
    pub id: u32,
    /// Offset from the payload start.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

/// Collects sections and lays them out as a ruleset file.
#[derive(Debug, Default, Clone)]
pub struct ContainerWriter {
    sections: Vec<(SectionKind, u32, Vec<u8>)>,
}

impl ContainerWriter {
    /// An empty writer.
    pub fn new() -> ContainerWriter {
        ContainerWriter::default()
    }

    /// Adds a section. Each `(kind, id)` may appear once, because readers look
    /// sections up by that pair.
    pub fn add_section(&mut self, kind: SectionKind, id: u32, bytes: Vec<u8>) -> Result<(), WriteError> {
        if self.sections.iter().any(|(k, i, _)| *k == kind && *i == id) {
            return Err(WriteError::DuplicateSection { kind, id });
        }
        self.sections.push((kind, id, bytes));
        Ok(())
    }

    /// Number of sections added.
    pub fn len(&self) -> usize {
        self.sections.len()
    }

    /// Whether no section was added.
    pub fn is_empty(&self) -> bool {
        self.sections.is_empty()
    }

    /// The file bytes. Deterministic: sections are laid out in `(kind, id)`
    /// order, padding is zero, and nothing depends on time or the machine.
    ///
    /// `compiler_version` longer than [`MAX_COMPILER_VERSION_LEN`] bytes is
    /// cut at the last character boundary that fits; it is informational.
    pub fn to_bytes(&self, compiler_version: &str) -> Vec<u8> {
        let mut order: Vec<&(SectionKind, u32, Vec<u8>)> = self.sections.iter().collect();
        order.sort_by_key(|(kind, id, _)| (*kind, *id));

        let mut entries = Vec::with_capacity(order.len());
        let mut payload = Vec::new();
        for (kind, id, bytes) in order {
            pad_to_alignment(&mut payload);
            entries.push(RawEntry {
                kind: kind.as_u32(),
                id: *id,
                offset: payload.len() as u64,
                len: bytes.len() as u64,
            });
            payload.extend_from_slice(bytes);
        }
        encode(truncate_str(compiler_version), &entries, &payload)
    }
}

fn truncate_str(s: &str) -> &str {
    let mut end = s.len().min(MAX_COMPILER_VERSION_LEN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.get(..end).unwrap_or("")
}

fn pad_to_alignment(buf: &mut Vec<u8>) {
    while !buf.len().is_multiple_of(ALIGN) {
        buf.push(0);
    }
}

/// A section table entry as stored, before any check.
#[derive(Debug, Clone, Copy)]
struct RawEntry {
    kind: u32,
    id: u32,
    offset: u64,
    len: u64,
}

/// Lays out a file from a header and a payload, hashing it. Kept separate from
/// [`ContainerWriter`] so tests can write hostile section tables that still
/// carry a valid hash.
fn encode(compiler_version: &str, entries: &[RawEntry], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        COMPILER_VERSION_OFFSET
            + compiler_version.len()
            + HEADER_TAIL_LEN
            + entries.len() * SECTION_ENTRY_LEN
            + ALIGN
            + payload.len(),
    );
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    // The caller keeps the version within 64 bytes, so it fits a u16.
    out.extend_from_slice(&(compiler_version.len() as u16).to_le_bytes());
    out.extend_from_slice(compiler_version.as_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    let hash_at = out.len();
    out.extend_from_slice(&[0u8; 32]);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for entry in entries {
        out.extend_from_slice(&entry.kind.to_le_bytes());
        out.extend_from_slice(&entry.id.to_le_bytes());
        out.extend_from_slice(&entry.offset.to_le_bytes());
        out.extend_from_slice(&entry.len.to_le_bytes());
    }
    pad_to_alignment(&mut out);
    out.extend_from_slice(payload);
    let hash = file_hash(&out, hash_at);
    if let Some(slot) = out.get_mut(hash_at..hash_at + 32) {
        slot.copy_from_slice(&hash);
    }
    out
}

/// Overwrites the hash of `file` with the hash of its contents, if its header
/// reaches that far; whether it did. Fuzzing uses it so that mutated files get
/// past the integrity check and the section table, policy and table checks
/// behind it are exercised too.
pub(crate) fn rehash(file: &mut [u8]) -> bool {
    let Some(&[lo, hi]) = file.get(COMPILER_VERSION_OFFSET - 2..COMPILER_VERSION_OFFSET) else {
        return false;
    };
    let version_len = usize::from(u16::from_le_bytes([lo, hi]));
    let hash_at = COMPILER_VERSION_OFFSET + version_len + 8;
    if file.len() < hash_at + 32 {
        return false;
    }
    let hash = file_hash(file, hash_at);
    match file.get_mut(hash_at..hash_at + 32) {
        Some(slot) => {
            slot.copy_from_slice(&hash);
            true
        }
        None => false,
    }
}

/// BLAKE3 of `file` without the 32 bytes at `hash_at`.
fn file_hash(file: &[u8], hash_at: usize) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(file.get(..hash_at).unwrap_or(&[]));
    hasher.update(file.get(hash_at.saturating_add(32)..).unwrap_or(&[]));
    *hasher.finalize().as_bytes()
}

/// Writes `bytes` to `path` so that `path` is, at every moment, either the old
/// file or the complete new one.
///
/// The bytes go to a temporary file in the same directory (same file system,
/// so the rename is atomic), which is flushed to disk before it is renamed
/// over `path`; the directory is then flushed so the rename survives a crash.
/// A watcher of `path` sees one rename, never a half-written file, and a node
/// that has the old file mapped keeps reading the old inode, untouched. On any
/// error before the rename the temporary file is removed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);

    let name = path.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("{} does not name a file", path.display()))
    })?;
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp.{}.{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
    let tmp = dir.join(tmp_name);

    // `create_new` refuses to follow a symlink or reuse a file someone else
    // left there.
    let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all()).and_then(|()| {
        drop(file);
        fs::rename(&tmp, path)
    });
    if let Err(err) = written {
        // Best effort: the original error is the one worth reporting.
        let _ = fs::remove_file(&tmp);
        return Err(err);
    }
    sync_dir(dir)
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    // Directories cannot be opened for syncing on every platform; the rename
    // is still atomic, only its durability after a crash is weaker.
    Ok(())
}

/// A ruleset file that passed every check: magic, version, lengths, hash and
/// section table.
///
/// Cloning is cheap (the bytes are shared). Sections are handed out as
/// [`Bytes`] views into the same map.
#[derive(Clone)]
pub struct Container {
    bytes: Bytes,
    format_version: u32,
    compiler_version: String,
    hash: [u8; 32],
    payload_start: usize,
    sections: Vec<SectionInfo>,
}

impl fmt::Debug for Container {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Container")
            .field("hash", &self.hash_hex())
            .field("format_version", &self.format_version)
            .field("compiler_version", &self.compiler_version)
            .field("len", &self.len())
            .field("sections", &self.sections)
            .finish()
    }
}

impl Container {
    /// Memory-maps and verifies the ruleset at `path`.
    ///
    /// The file is read once in full to check its hash; after that, lookups
    /// touch only the pages they need.
    pub fn open(path: &Path) -> Result<Container, ContainerError> {
        let io_err = |source| ContainerError::Io { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        if usize::try_from(len).is_err() {
            return Err(ContainerError::TooLarge { len });
        }
        // SAFETY: a memory map is only sound while nobody else changes the
        // file under it. mtac never writes a ruleset in place: the compiler
        // and every deployment path use `write_atomic`, which renames a new
        // inode over the path, and the mapped old inode stays unchanged until
        // the last view of it is dropped ("a mapped ruleset is never
        // mutated"). The map is read-only and private to this process. The
        // residual risk is someone else truncating or rewriting the file in
        // place (e.g. `cp` over it, or `truncate`): reads of the vanished
        // pages raise SIGBUS and changed bytes are seen after the hash check.
        // We accept that, as every mmap-based reader (fst, databases) does;
        // operators must deploy rulesets by rename, as documented.
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io_err)?;
        Container::verify(Bytes::from_backing(Backing::Mapped(map)))
    }

    /// Copies the file at `path` into a sealed anonymous memory file and maps that: what a
    /// serving node uses. Whatever later happens to `path` — `cp` over it, truncation, a push
    /// that is still being written — cannot reach the mapped bytes, because the kernel forbids
    /// every write, shrink and grow of the sealed copy. A copy taken while the file was being
    /// written is simply incomplete, and the hash check refuses it. Where memfd is not available
    /// the bytes are read into private memory instead.
    pub fn open_sealed(path: &Path) -> Result<Container, ContainerError> {
        use rustix::fs::{fcntl_add_seals, memfd_create, MemfdFlags, SealFlags};
        let io_err = |source| ContainerError::Io { path: path.to_path_buf(), source };
        let mut source = File::open(path).map_err(io_err)?;
        let memfd = match memfd_create("mtac-ruleset", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING) {
            Ok(fd) => File::from(fd),
            Err(_) => {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut source, &mut bytes).map_err(io_err)?;
                return Container::from_vec(bytes);
            }
        };
        let mut writer = &memfd;
        std::io::copy(&mut source, &mut writer).map_err(io_err)?;
        fcntl_add_seals(&memfd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::WRITE | SealFlags::SEAL)
            .map_err(|e| io_err(e.into()))?;
        let len = memfd.metadata().map_err(io_err)?.len();
        if usize::try_from(len).is_err() {
            return Err(ContainerError::TooLarge { len });
        }
        // SAFETY: the memory file is sealed against writes, shrinking and growing (and against
        // removing those seals), and no path leads to it: its bytes cannot change while mapped.
        #[allow(unsafe_code)]
        let map = unsafe { memmap2::Mmap::map(&memfd) }.map_err(io_err)?;
        Container::verify(Bytes::from_backing(Backing::Mapped(map)))
    }

    /// Verifies a ruleset held in memory.
    pub fn from_vec(vec: Vec<u8>) -> Result<Container, ContainerError> {
        Container::verify(Bytes::from_vec(vec))
    }

    /// All checks, in the order that gives the most useful error: what the
    /// file is (magic, version), whether it is whole (lengths), whether it is
    /// intact (hash), and only then whether its section table makes sense.
    fn verify(bytes: Bytes) -> Result<Container, ContainerError> {
        let file = bytes.as_slice();
        let mut reader = Reader { file, pos: 0 };

        let magic: [u8; 8] = reader.array()?;
        if magic != MAGIC {
            return Err(ContainerError::BadMagic { found: magic });
        }
        let format_version = u32::from_le_bytes(reader.array()?);
        if format_version != FORMAT_VERSION {
            return Err(ContainerError::UnsupportedVersion { found: format_version, supported: FORMAT_VERSION });
        }
        let flags = u32::from_le_bytes(reader.array()?);
        if flags != 0 {
            return Err(ContainerError::UnknownFlags { flags });
        }
        let version_len = usize::from(u16::from_le_bytes(reader.array()?));
        if version_len > MAX_COMPILER_VERSION_LEN {
            return Err(ContainerError::BadCompilerVersion { reason: "longer than 64 bytes" });
        }
        let compiler_version = std::str::from_utf8(reader.take(version_len)?)
            .map_err(|_| ContainerError::BadCompilerVersion { reason: "not UTF-8" })?
            .to_owned();
        let payload_len = u64::from_le_bytes(reader.array()?);
        let hash_at = reader.pos;
        let hash: [u8; 32] = reader.array()?;
        let section_count = u32::from_le_bytes(reader.array()?);

        // Everything below is computed in u64 with checks, so a hostile count
        // or length gives an error, never an overflow or an allocation.
        let table_len = u64::from(section_count) * SECTION_ENTRY_LEN as u64;
        let header_end = (reader.pos as u64) + table_len;
        let payload_start = header_end.div_ceil(ALIGN as u64) * ALIGN as u64;
        let file_len = file.len() as u64;
        if payload_start > file_len {
            return Err(ContainerError::TruncatedHeader {
                len: file.len(),
                need: usize::try_from(payload_start).unwrap_or(usize::MAX),
            });
        }
        let expected = payload_start
            .checked_add(payload_len)
            .ok_or(ContainerError::Truncated { expected: u64::MAX, found: file_len })?;
        if expected > file_len {
            return Err(ContainerError::Truncated { expected, found: file_len });
        }
        if expected < file_len {
            return Err(ContainerError::TrailingBytes { extra: file_len - expected });
        }
        // Both fit: they are at most the file length.
        let payload_start = payload_start as usize;
        let header_end = header_end as usize;

        let actual = file_hash(file, hash_at);
        if actual != hash {
            return Err(ContainerError::HashMismatch { expected: hex(&hash), actual: hex(&actual) });
        }
        if file.get(header_end..payload_start).is_some_and(|pad| pad.iter().any(|&b| b != 0)) {
            return Err(ContainerError::NonZeroPadding);
        }

        // The table fits in the file (checked above), so this allocation is
        // bounded by the file size.
        let mut sections = Vec::with_capacity(section_count as usize);
        for index in 0..section_count as usize {
            let raw = RawEntry {
                kind: u32::from_le_bytes(reader.array()?),
                id: u32::from_le_bytes(reader.array()?),
                offset: u64::from_le_bytes(reader.array()?),
                len: u64::from_le_bytes(reader.array()?),
            };
            let kind =
                SectionKind::from_u32(raw.kind).ok_or(ContainerError::UnknownSectionKind { index, kind: raw.kind })?;
            let in_bounds = raw.offset.checked_add(raw.len).is_some_and(|end| end <= payload_len);
            if !in_bounds {
                return Err(ContainerError::SectionOutOfBounds {
                    index,
                    kind,
                    id: raw.id,
                    offset: raw.offset,
                    len: raw.len,
                    payload_len,
                });
            }
            if !raw.offset.is_multiple_of(ALIGN as u64) {
                return Err(ContainerError::SectionMisaligned { index, offset: raw.offset });
            }
            sections.push(SectionInfo { kind, id: raw.id, offset: raw.offset, len: raw.len });
        }
        check_disjoint(&sections)?;

        Ok(Container { bytes, format_version, compiler_version, hash, payload_start, sections })
    }

    /// The hash stored in (and verified against) the file.
    pub fn hash(&self) -> [u8; 32] {
        self.hash
    }

    /// [`Container::hash`] as 64 lowercase hex digits: the ruleset's identity.
    pub fn hash_hex(&self) -> String {
        hex(&self.hash)
    }

    /// The container format version (always [`FORMAT_VERSION`] once opened).
    pub fn format_version(&self) -> u32 {
        self.format_version
    }

    /// The version string the compiler wrote.
    pub fn compiler_version(&self) -> &str {
        &self.compiler_version
    }

    /// File size in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the file is empty (never true for a verified container).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Whether the file is memory-mapped (opened with [`Container::open`]).
    pub fn is_mapped(&self) -> bool {
        self.bytes.is_mapped()
    }

    /// The sections in file order.
    pub fn sections(&self) -> impl Iterator<Item = SectionInfo> + '_ {
        self.sections.iter().copied()
    }

    /// The bytes of the section `(kind, id)`, if the file has it.
    pub fn section(&self, kind: SectionKind, id: u32) -> Option<Bytes> {
        let info = self.sections.iter().find(|s| s.kind == kind && s.id == id)?;
        let start = self.payload_start.checked_add(usize::try_from(info.offset).ok()?)?;
        let end = start.checked_add(usize::try_from(info.len).ok()?)?;
        self.bytes.slice(start..end)
    }
}

/// Sections must not share bytes and `(kind, id)` must be unique. Zero-length
/// sections overlap nothing.
fn check_disjoint(sections: &[SectionInfo]) -> Result<(), ContainerError> {
    let mut by_offset: Vec<usize> = (0..sections.len()).collect();
    by_offset.sort_by_key(|&i| sections.get(i).map(|s| (s.offset, s.len)));
    let mut prev: Option<(usize, u64)> = None;
    for &i in &by_offset {
        let Some(s) = sections.get(i) else { continue };
        if s.len == 0 {
            continue;
        }
        if let Some((prev_index, prev_end)) = prev {
            if s.offset < prev_end {
                return Err(ContainerError::SectionsOverlap { first: prev_index.min(i), second: prev_index.max(i) });
            }
        }
        // In bounds was checked, so this does not overflow.
        prev = Some((i, s.offset + s.len));
    }

    let mut by_key: Vec<(SectionKind, u32)> = sections.iter().map(|s| (s.kind, s.id)).collect();
    by_key.sort_unstable();
    for pair in by_key.windows(2) {
        if let [a, b] = pair {
            if a == b {
                return Err(ContainerError::DuplicateSection { kind: a.0, id: a.1 });
            }
        }
    }
    Ok(())
}

/// A cursor over the header that turns running out of bytes into an error.
struct Reader<'a> {
    file: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ContainerError> {
        let end = self.pos.saturating_add(n);
        let out =
            self.file.get(self.pos..end).ok_or(ContainerError::TruncatedHeader { len: self.file.len(), need: end })?;
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], ContainerError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write as _;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = ContainerWriter::new();
        w.add_section(SectionKind::Policy, 0, b"hello policy".to_vec()).unwrap();
        w.add_section(SectionKind::DomainTable, 7, vec![1, 2, 3]).unwrap();
        w.add_section(SectionKind::PrefixTable, 1, Vec::new()).unwrap();
        w.add_section(SectionKind::AddressTable, 2, vec![9; 17]).unwrap();
        w.to_bytes("test 1.0")
    }

    fn entry(kind: SectionKind, id: u32, offset: u64, len: u64) -> RawEntry {
        RawEntry { kind: kind.as_u32(), id, offset, len }
    }

    #[test]
    fn round_trip() {
        let bytes = sample();
        let c = Container::from_vec(bytes.clone()).unwrap();
        assert_eq!(c.format_version(), FORMAT_VERSION);
        assert_eq!(c.compiler_version(), "test 1.0");
        assert_eq!(c.len(), bytes.len());
        assert_eq!(c.hash_hex().len(), 64);
        assert_eq!(c.section(SectionKind::Policy, 0).unwrap().as_ref(), b"hello policy");
        assert_eq!(c.section(SectionKind::DomainTable, 7).unwrap().as_ref(), &[1, 2, 3]);
        assert!(c.section(SectionKind::PrefixTable, 1).unwrap().is_empty());
        assert_eq!(c.section(SectionKind::AddressTable, 2).unwrap().as_ref(), &[9; 17]);
        assert!(c.section(SectionKind::DomainTable, 0).is_none());
        let kinds: Vec<_> = c.sections().map(|s| (s.kind, s.id)).collect();
        assert_eq!(
            kinds,
            vec![
                (SectionKind::Policy, 0),
                (SectionKind::DomainTable, 7),
                (SectionKind::AddressTable, 2),
                (SectionKind::PrefixTable, 1),
            ]
        );
        for s in c.sections() {
            assert_eq!(s.offset % 8, 0);
        }
    }

    #[test]
    fn deterministic_regardless_of_order() {
        let mut a = ContainerWriter::new();
        a.add_section(SectionKind::Policy, 0, vec![1]).unwrap();
        a.add_section(SectionKind::DomainTable, 1, vec![2, 2]).unwrap();
        let mut b = ContainerWriter::new();
        b.add_section(SectionKind::DomainTable, 1, vec![2, 2]).unwrap();
        b.add_section(SectionKind::Policy, 0, vec![1]).unwrap();
        assert_eq!(a.to_bytes("v"), b.to_bytes("v"));
        assert_eq!(a.to_bytes("v"), a.to_bytes("v"));
    }

    #[test]
    fn writer_rejects_duplicate() {
        let mut w = ContainerWriter::new();
        w.add_section(SectionKind::Policy, 0, vec![]).unwrap();
        assert!(matches!(w.add_section(SectionKind::Policy, 0, vec![1]), Err(WriteError::DuplicateSection { .. })));
    }

    #[test]
    fn long_compiler_version_is_cut_on_char_boundary() {
        let long = "é".repeat(40); // 80 bytes
        let c = Container::from_vec(ContainerWriter::new().to_bytes(&long)).unwrap();
        assert_eq!(c.compiler_version(), "é".repeat(32));
    }

    #[test]
    fn empty_container() {
        let c = Container::from_vec(ContainerWriter::new().to_bytes("")).unwrap();
        assert_eq!(c.sections().count(), 0);
        assert_eq!(c.len() % 8, 0);
    }

    #[test]
    fn every_single_byte_flip_is_detected() {
        let bytes = sample();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut bad = bytes.clone();
                bad[i] ^= 1 << bit;
                assert!(Container::from_vec(bad).is_err(), "flip of bit {bit} at byte {i} not detected");
            }
        }
    }

    #[test]
    fn every_truncation_and_extension_is_an_error() {
        let bytes = sample();
        for len in 0..bytes.len() {
            assert!(Container::from_vec(bytes[..len].to_vec()).is_err(), "{len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(Container::from_vec(longer), Err(ContainerError::TrailingBytes { extra: 1 })));
    }

    #[test]
    fn version_error_names_both_versions() {
        let mut bytes = sample();
        bytes[8..12].copy_from_slice(&7u32.to_le_bytes());
        let err = Container::from_vec(bytes).unwrap_err();
        assert!(matches!(err, ContainerError::UnsupportedVersion { found: 7, supported: 1 }));
        let msg = err.to_string();
        assert!(msg.contains("version 7") && msg.contains("reads version 1"), "{msg}");
    }

    #[test]
    fn hostile_section_tables() {
        let payload = vec![0u8; 64];
        type Check = fn(&ContainerError) -> bool;
        let cases: Vec<(Vec<RawEntry>, Check)> = vec![
            (vec![entry(SectionKind::Policy, 0, 64, 1)], |e| matches!(e, ContainerError::SectionOutOfBounds { .. })),
            (vec![entry(SectionKind::Policy, 0, 8, u64::MAX)], |e| {
                matches!(e, ContainerError::SectionOutOfBounds { .. })
            }),
            (vec![entry(SectionKind::Policy, 0, u64::MAX - 7, 16)], |e| {
                matches!(e, ContainerError::SectionOutOfBounds { .. })
            }),
            (vec![entry(SectionKind::Policy, 0, 4, 4)], |e| matches!(e, ContainerError::SectionMisaligned { .. })),
            (vec![entry(SectionKind::Policy, 0, 0, 16), entry(SectionKind::DomainTable, 0, 8, 8)], |e| {
                matches!(e, ContainerError::SectionsOverlap { .. })
            }),
            (vec![entry(SectionKind::DomainTable, 3, 32, 8), entry(SectionKind::Policy, 0, 0, 64)], |e| {
                matches!(e, ContainerError::SectionsOverlap { .. })
            }),
            (vec![entry(SectionKind::DomainTable, 3, 0, 8), entry(SectionKind::DomainTable, 3, 8, 8)], |e| {
                matches!(e, ContainerError::DuplicateSection { .. })
            }),
            (vec![RawEntry { kind: 99, id: 0, offset: 0, len: 8 }], |e| {
                matches!(e, ContainerError::UnknownSectionKind { kind: 99, .. })
            }),
        ];
        for (i, (entries, check)) in cases.into_iter().enumerate() {
            let err = Container::from_vec(encode("x", &entries, &payload)).unwrap_err();
            assert!(check(&err), "case {i}: {err:?}");
        }
    }

    #[test]
    fn huge_counts_do_not_allocate() {
        // A valid header that claims 2^32-1 sections and a 2^64-1 payload:
        // must be rejected from the lengths alone.
        let mut bytes = encode("", &[], &[]);
        let count_at = COMPILER_VERSION_OFFSET + 8 + 32;
        bytes[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(Container::from_vec(bytes), Err(ContainerError::TruncatedHeader { .. })));
        let mut bytes = encode("", &[], &[]);
        let len_at = COMPILER_VERSION_OFFSET;
        bytes[len_at..len_at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(Container::from_vec(bytes), Err(ContainerError::Truncated { .. })));
    }

    #[test]
    fn bytes_slice_bounds() {
        let b = Bytes::from_vec(vec![1, 2, 3, 4]);
        assert_eq!(b.slice(1..3).unwrap().as_ref(), &[2, 3]);
        assert_eq!(b.slice(1..3).unwrap().slice(1..2).unwrap().as_ref(), &[3]);
        assert!(b.slice(3..5).is_none());
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = b.slice(3..2);
        assert!(reversed.is_none());
        assert!(b.slice(4..4).unwrap().is_empty());
    }

    #[test]
    fn open_maps_and_write_atomic_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.mtac");
        write_atomic(&path, &sample()).unwrap();
        let c = Container::open(&path).unwrap();
        assert!(c.is_mapped());
        let policy = c.section(SectionKind::Policy, 0).unwrap();

        let mut w = ContainerWriter::new();
        w.add_section(SectionKind::Policy, 0, b"new".to_vec()).unwrap();
        write_atomic(&path, &w.to_bytes("test 2.0")).unwrap();
        // The old map still reads the old inode.
        assert_eq!(policy.as_ref(), b"hello policy");
        let c2 = Container::open(&path).unwrap();
        assert_eq!(c2.section(SectionKind::Policy, 0).unwrap().as_ref(), b"new");
        assert_ne!(c.hash(), c2.hash());
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn open_reports_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = Container::open(&dir.path().join("nope")).unwrap_err();
        assert!(matches!(err, ContainerError::Io { .. }));
    }

    #[test]
    fn open_empty_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty");
        fs::write(&path, b"").unwrap();
        assert!(Container::open(&path).is_err());
    }

    #[test]
    fn failed_atomic_write_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        // Renaming a file over a non-empty directory fails.
        let target = dir.path().join("target");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("keep"), b"x").unwrap();
        assert!(write_atomic(&target, &sample()).is_err());
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("target")]);

        // A missing directory fails before anything is created.
        assert!(write_atomic(&dir.path().join("missing/rules"), b"x").is_err());
    }
}
