//! Lookup tables read in place from a ruleset section.
//!
//! Every table maps a key to a `u32` *value*: an index whose meaning belongs to
//! the caller (a list, an action, a row of the policy). Each table has a
//! builder, used by the compiler, that produces the section bytes, and a
//! reader, used by the node, that wraps a [`Bytes`] view without copying it.
//!
//! | table            | key                                  | match                        | storage            |
//! |------------------|--------------------------------------|------------------------------|--------------------|
//! | [`DomainTable`]  | a domain, optionally its subdomains  | most specific entry          | `fst::Map`         |
//! | [`AddressTable`] | a mail address                       | exact (after case folding)   | `fst::Map`         |
//! | [`PrefixTable`]  | an IPv4 or IPv6 prefix               | longest prefix               | interval bounds    |
//!
//! # Determinism
//!
//! Builders sort and deduplicate, so the order entries are inserted in never
//! changes the bytes, and the same policy gives the same ruleset hash. The
//! same key inserted twice with the same value is kept once; with two
//! different values the builder fails with [`TableError::Conflicts`] listing
//! every such key. The compiler is expected to have reported them to the
//! operator already, with spans; the error here is the backstop.
//!
//! # Case rules
//!
//! - **Domains** are case-insensitive (RFC 1035 §2.3.3): ASCII letters are
//!   lowercased at build time and at lookup, and one trailing dot is ignored
//!   (`Example.COM.` is `example.com`). Bytes outside ASCII are kept as they
//!   are; internationalised names should be given in their A-label
//!   (`xn--…`) form, which is what arrives in SMTP without SMTPUTF8.
//! - **Local parts** of addresses are compared case-insensitively for ASCII
//!   letters too (`John@` is `john@`). RFC 5321 §2.4 says a local part *may*
//!   be case-sensitive, but no mailbox server in use treats it so, and a
//!   case-sensitive blocklist would be bypassed by changing one letter.
//!   Non-ASCII UTF-8 bytes in a local part are kept as they are: Unicode case
//!   folding is locale-dependent and not what servers do. Quoting is not
//!   interpreted (`"john"@` is not `john@`); the caller should pass the
//!   address as it unquotes it.
//!
//! # Trust
//!
//! Garbage in a table gives an error at open or wrong answers, never a panic.
//! A [`PrefixTable`] checks its sizes at open and bounds-checks every read.
//! The fst-backed tables are built by the `fst` crate but not read by it: its
//! reader assumes well-formed bytes and panics on others. They are read by
//! `fst_nodes`, the same node layout decoded with a check at every step.
//! Opening one makes a single pass down its nodes (they lie back to back,
//! root last) and refuses the table if a node does not decode or a
//! transition does not lead to the start of a node below it
//! ([`TableError::FstStructure`]); lookups check every read anyway and sum
//! outputs with a check. Neither the container's BLAKE3 hash nor fst's CRC
//! ([`DomainTable::verify_checksum`], [`AddressTable::verify_checksum`]) is
//! that check: both say the bytes are unchanged, not that they are well
//! formed, and whoever writes a file (or a fuzzer, in seconds) makes both
//! match.
//!
//! # Example
//!
//! ```
//! use mtac_ruleset::container::Bytes;
//! use mtac_ruleset::tables::{DomainTable, DomainTableBuilder};
//!
//! let mut builder = DomainTableBuilder::new();
//! builder.insert("example.com", true, 1)?;
//! builder.insert("mail.example.com", false, 2)?;
//! let table = DomainTable::new(Bytes::from_vec(builder.build()?))?;
//!
//! assert_eq!(table.lookup("MAIL.example.com."), Some(2));
//! assert_eq!(table.lookup("a.mail.example.com"), Some(1));
//! assert_eq!(table.lookup("example.org"), None);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use fst::{Map, MapBuilder};
use ipnet::{IpNet, Ipv4Net};

use crate::container::Bytes;
use crate::fst_nodes::{self, Step};

/// Longest domain accepted, in bytes, without the trailing dot (RFC 1035
/// limits a name to 255 octets on the wire, which is shorter as text).
pub const MAX_DOMAIN_LEN: usize = 255;

/// Longest address key accepted, in bytes: domain, `@`, local part. RFC 5321
/// limits a path to 256 octets; this leaves room for sloppy senders while
/// keeping the lookup buffer on the stack.
pub const MAX_ADDRESS_LEN: usize = 512;

/// Why a table could not be built or opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TableError {
    /// A domain given to a builder can never match a lookup.
    #[error("invalid domain {domain:?}: {reason}; fix it in the policy (the compiler should have rejected it)")]
    InvalidDomain {
        /// The domain as given.
        domain: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An address given to a builder can never match a lookup.
    #[error("invalid address {address:?}: {reason}; fix it in the policy (the compiler should have rejected it)")]
    InvalidAddress {
        /// The address as given.
        address: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The same key was given two different values.
    #[error("{table}: {} key(s) have two different values: {}; give each key one value (the compiler should have reported this)", conflicts.len(), ConflictList(conflicts))]
    Conflicts {
        /// Which table.
        table: &'static str,
        /// Every conflicting key, sorted.
        conflicts: Vec<Conflict>,
    },
    /// The section is not a valid fst (or fst could not build one).
    #[error("{table} section is not a valid table ({source}); the ruleset was written by an incompatible or buggy compiler, recompile it")]
    Fst {
        /// Which table.
        table: &'static str,
        /// What fst said.
        #[source]
        source: fst::Error,
    },
    /// The fst's header is fine but its nodes are not: a node does not
    /// decode, or a transition does not lead to the start of a node below it.
    /// fst's CRC is no proof of a well-formed table, only of unchanged bytes.
    #[error("{table} section is not a well-formed fst ({reason}); the ruleset was written by an incompatible or buggy compiler, recompile it")]
    FstStructure {
        /// Which table.
        table: &'static str,
        /// What the check found.
        reason: &'static str,
    },
    /// The section's size does not match what its header says.
    #[error("prefix table section is {found} bytes but its header implies {expected}; the ruleset was written by an incompatible or buggy compiler, recompile it")]
    PrefixTableSize {
        /// Size implied by the header.
        expected: u64,
        /// Actual size.
        found: usize,
    },
    /// The section's header is not one a builder writes.
    #[error(
        "prefix table section {reason}; the ruleset was written by an incompatible or buggy compiler, recompile it"
    )]
    PrefixTableFormat {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A family has more boundaries than the format counts (over 2^32).
    #[error("prefix table needs {boundaries} interval boundaries, more than the format holds; split the list")]
    PrefixTableTooLarge {
        /// Boundaries needed.
        boundaries: usize,
    },
}

/// One key that was given two values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// The key, normalised (lowercase domain, address, or prefix).
    pub key: String,
    /// The smaller of the two values.
    pub first: u32,
    /// The larger of the two values.
    pub second: u32,
}

struct ConflictList<'a>(&'a [Conflict]);

impl fmt::Display for ConflictList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 10;
        for (i, c) in self.0.iter().take(SHOWN).enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{} ({} and {})", c.key, c.first, c.second)?;
        }
        if self.0.len() > SHOWN {
            write!(f, " and {} more", self.0.len() - SHOWN)?;
        }
        Ok(())
    }
}

/// Sorts `(key, value)` pairs, drops exact duplicates and returns the pairs
/// or every key that has two values.
fn sort_dedup<K: Ord + Clone>(
    mut entries: Vec<(K, u32)>,
    table: &'static str,
    show: impl Fn(&K) -> String,
) -> Result<Vec<(K, u32)>, TableError> {
    entries.sort_unstable();
    entries.dedup();
    let mut conflicts = Vec::new();
    for pair in entries.windows(2) {
        if let [(ka, va), (kb, vb)] = pair {
            if ka == kb {
                conflicts.push(Conflict { key: show(ka), first: *va, second: *vb });
            }
        }
    }
    if conflicts.is_empty() {
        Ok(entries)
    } else {
        Err(TableError::Conflicts { table, conflicts })
    }
}

fn build_fst<'a>(table: &'static str, entries: impl Iterator<Item = (&'a [u8], u64)>) -> Result<Vec<u8>, TableError> {
    let fst_err = |source| TableError::Fst { table, source };
    let mut builder = MapBuilder::memory();
    for (key, value) in entries {
        builder.insert(key, value).map_err(fst_err)?;
    }
    builder.into_inner().map_err(fst_err)
}

/// An fst section, opened: its bytes (header, nodes, footer) and the root
/// node's address. Lookups read the nodes with [`fst_nodes`], which checks
/// every read; [`open_fst`] has checked the whole graph once.
#[derive(Clone)]
struct FstTable {
    map: Map<Bytes>,
    root: usize,
}

/// Footer of a version-3 fst: key count, root address (u64 each), CRC32C.
const FST_FOOTER_LEN: usize = 20;

fn open_fst(table: &'static str, bytes: Bytes) -> Result<FstTable, TableError> {
    let structure = |reason| TableError::FstStructure { table, reason };
    let data: &[u8] = bytes.as_slice();
    let u64_at = |at: usize| -> Option<u64> {
        let b: [u8; 8] = data.get(at..at.checked_add(8)?)?.try_into().ok()?;
        Some(u64::from_le_bytes(b))
    };
    // Our builder writes fst's format version 3 only; older versions lay
    // nodes out differently and are not read.
    if u64_at(0) != Some(fst_nodes::VERSION) {
        return Err(structure("it is not an fst of format version 3"));
    }
    let root = data.len().checked_sub(FST_FOOTER_LEN - 8).and_then(u64_at).ok_or(structure("it has no footer"))?;
    let root = usize::try_from(root).map_err(|_| structure("the root address is outside the table"))?;
    fst_nodes::check(data, root, FST_FOOTER_LEN).map_err(structure)?;
    // fst's own open reads the header and the key count; it decodes no node.
    let map = Map::new(bytes).map_err(|source| TableError::Fst { table, source })?;
    Ok(FstTable { map, root })
}

impl FstTable {
    fn data(&self) -> &[u8] {
        self.map.as_fst().as_bytes()
    }

    /// Follows `key` from the root: the node reached and the outputs summed
    /// on the way (with a check: a crafted table can make them overflow), or
    /// `None` if the fst has no path for it.
    #[inline]
    fn walk(&self, key: &[u8]) -> Option<(usize, u64)> {
        let data = self.data();
        let mut addr = self.root;
        let mut out = 0u64;
        for &b in key {
            match fst_nodes::step(data, addr, b) {
                Step::To(to, o) => {
                    addr = to;
                    out = out.checked_add(o)?;
                }
                Step::Missing => return None,
            }
        }
        Some((addr, out))
    }

    /// The value of `key`: the outputs on its path plus its final output.
    #[inline]
    fn get(&self, key: &[u8]) -> Option<u64> {
        let (addr, out) = self.walk(key)?;
        out.checked_add(fst_nodes::final_output(self.data(), addr)?)
    }

    fn verify_checksum(&self, table: &'static str) -> Result<(), TableError> {
        self.map.as_fst().verify().map_err(|source| TableError::Fst { table, source })
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn byte_len(&self) -> usize {
        self.data().len()
    }
}

// ---------------------------------------------------------------------------
// Domains
// ---------------------------------------------------------------------------

/// Lowercases `domain` without its trailing dot, for the builders.
fn normalize_domain(domain: &str) -> Result<Vec<u8>, &'static str> {
    let d = domain.strip_suffix('.').unwrap_or(domain).as_bytes();
    if d.is_empty() {
        return Err("it is empty");
    }
    if d.len() > MAX_DOMAIN_LEN {
        return Err("it is longer than 255 bytes");
    }
    if d.split(|&b| b == b'.').any(<[u8]>::is_empty) {
        return Err("it has an empty label");
    }
    if d.iter().any(|&b| b <= b' ' || b == b'@' || b == 0x7f) {
        return Err("it contains '@', a space or a control character");
    }
    Ok(d.to_ascii_lowercase())
}

/// Writes the labels of `domain` (already without trailing dot) in reverse
/// order, lowercased, into `buf`: `Mail.Example.com` → `com.example.mail`.
/// Returns the length, or `None` if it is empty, has an empty label or does
/// not fit.
fn reverse_labels(domain: &[u8], buf: &mut [u8]) -> Option<usize> {
    if domain.is_empty() || domain.len() > buf.len() {
        return None;
    }
    let mut pos = 0;
    for label in domain.rsplit(|&b| b == b'.') {
        if label.is_empty() {
            return None;
        }
        if pos > 0 {
            *buf.get_mut(pos)? = b'.';
            pos += 1;
        }
        let dst = buf.get_mut(pos..pos + label.len())?;
        dst.copy_from_slice(label);
        dst.make_ascii_lowercase();
        pos += label.len();
    }
    Some(pos)
}

/// Builds the bytes of a [`DomainTable`].
#[derive(Debug, Default, Clone)]
pub struct DomainTableBuilder {
    /// Reversed, lowercased key; value; include-subdomains flag.
    entries: Vec<(Vec<u8>, u32, bool)>,
}

impl DomainTableBuilder {
    /// An empty builder.
    pub fn new() -> DomainTableBuilder {
        DomainTableBuilder::default()
    }

    /// Adds `domain` with `value`. With `include_subdomains`, every name below
    /// it matches too, unless a more specific entry exists.
    ///
    /// The same domain added once with and once without subdomains, with the
    /// same value, keeps the subdomains: the table matches the union.
    pub fn insert(&mut self, domain: &str, include_subdomains: bool, value: u32) -> Result<(), TableError> {
        let invalid = |reason| TableError::InvalidDomain { domain: domain.to_owned(), reason };
        let normalized = normalize_domain(domain).map_err(invalid)?;
        let mut buf = [0u8; MAX_DOMAIN_LEN];
        let len = reverse_labels(&normalized, &mut buf).ok_or(invalid("it has an empty label"))?;
        let key = buf.get(..len).unwrap_or(&[]).to_vec();
        self.entries.push((key, value, include_subdomains));
        Ok(())
    }

    /// Number of entries added so far (before deduplication).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The section bytes: an `fst::Map` from reversed domain to
    /// `value << 1 | include_subdomains`.
    pub fn build(self) -> Result<Vec<u8>, TableError> {
        // Merge the flag first so that only values can conflict.
        let mut entries = self.entries;
        entries.sort_unstable();
        let mut merged: Vec<((Vec<u8>, bool), u32)> = Vec::with_capacity(entries.len());
        let mut pairs: Vec<(Vec<u8>, u32)> = Vec::with_capacity(entries.len());
        for (key, value, subs) in entries {
            match merged.last_mut() {
                Some(((k, s), v)) if *k == key && *v == value => *s |= subs,
                _ => merged.push(((key.clone(), subs), value)),
            }
            pairs.push((key, value));
        }
        sort_dedup(pairs, "domain table", |k| unreverse(k))?;
        build_fst(
            "domain table",
            merged.iter().map(|((k, subs), v)| (k.as_slice(), (u64::from(*v) << 1) | u64::from(*subs))),
        )
    }
}

/// `com.example.mail` → `mail.example.com`, for messages.
fn unreverse(key: &[u8]) -> String {
    let labels: Vec<&[u8]> = key.rsplit(|&b| b == b'.').collect();
    String::from_utf8_lossy(&labels.join(&b'.')).into_owned()
}

/// Domains, each matching itself and optionally its subdomains; a lookup
/// returns the value of the most specific match.
///
/// Keys are stored with their labels reversed (`example.com` as
/// `com.example`), so a domain's subtree is a key prefix and one walk down the
/// fst finds the exact entry and every parent on the way.
#[derive(Clone)]
pub struct DomainTable {
    fst: FstTable,
}

impl fmt::Debug for DomainTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DomainTable").field("len", &self.len()).field("byte_len", &self.byte_len()).finish()
    }
}

impl DomainTable {
    /// Opens a section built by [`DomainTableBuilder`]. Checks the fst header
    /// and footer and every node, in one pass; see the module docs on trust.
    pub fn new(bytes: Bytes) -> Result<DomainTable, TableError> {
        Ok(DomainTable { fst: open_fst("domain table", bytes)? })
    }

    /// Checks fst's own checksum over the whole table: a corruption check for
    /// bytes that did not come through a verified container, not a validation
    /// (opening the table is that).
    pub fn verify_checksum(&self) -> Result<(), TableError> {
        self.fst.verify_checksum("domain table")
    }

    /// The value of the most specific match for `domain`: the entry for the
    /// domain itself, else the nearest parent entry that includes subdomains.
    /// Case and one trailing dot are ignored. A name longer than 255 bytes or
    /// with an empty label matches nothing.
    ///
    /// Does not allocate.
    pub fn lookup(&self, domain: &str) -> Option<u32> {
        let d = domain.strip_suffix('.').unwrap_or(domain).as_bytes();
        let mut buf = [0u8; MAX_DOMAIN_LEN];
        let len = reverse_labels(d, &mut buf)?;
        let key = buf.get(..len)?;

        // Outputs are summed with a check, as in `FstTable::walk`; an
        // overflow can only come from a crafted table, which then matches
        // nothing.
        let data = self.fst.data();
        let mut addr = self.fst.root;
        let mut out = 0u64;
        let mut parent = None;
        for &b in key {
            // A final state just before a '.' is a parent domain.
            if b == b'.' {
                if let Some(fin) = fst_nodes::final_output(data, addr) {
                    let raw = out.checked_add(fin)?;
                    if raw & 1 == 1 {
                        parent = u32::try_from(raw >> 1).ok();
                    }
                }
            }
            match fst_nodes::step(data, addr, b) {
                Step::To(to, o) => {
                    addr = to;
                    out = out.checked_add(o)?;
                }
                Step::Missing => return parent,
            }
        }
        match fst_nodes::final_output(data, addr) {
            Some(fin) => u32::try_from(out.checked_add(fin)? >> 1).ok(),
            None => parent,
        }
    }

    /// Every entry and its value, in key order: `example.com`, or `.example.com` for an entry
    /// that also matches its subdomains (`mtac diff` compares two tables' entries). Walks the
    /// whole table with fst's reader, safe here because [`DomainTable::new`] checked every node.
    pub fn entries(&self) -> Vec<(String, u32)> {
        let mut out = Vec::with_capacity(self.len());
        let mut stream = self.fst.map.stream();
        while let Some((key, raw)) = fst::Streamer::next(&mut stream) {
            let domain = unreverse(key);
            let name = if raw & 1 == 1 { format!(".{domain}") } else { domain };
            out.push((name, u32::try_from(raw >> 1).unwrap_or(u32::MAX)));
        }
        out
    }

    /// Number of domains in the table.
    pub fn len(&self) -> usize {
        self.fst.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.fst.len() == 0
    }

    /// Size of the section in bytes.
    pub fn byte_len(&self) -> usize {
        self.fst.byte_len()
    }
}

// ---------------------------------------------------------------------------
// Addresses
// ---------------------------------------------------------------------------

/// Writes `domain@local` (domain lowercased without trailing dot, local part
/// lowercased for ASCII) into `buf` and returns its length. Splits at the last
/// `@`, since a quoted local part may contain one and a domain cannot.
fn address_key(address: &str, buf: &mut [u8]) -> Result<usize, &'static str> {
    let (local, domain) = address.rsplit_once('@').ok_or("it has no '@'")?;
    if local.is_empty() {
        return Err("its local part is empty");
    }
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    if domain.is_empty() {
        return Err("its domain is empty");
    }
    let len = domain.len() + 1 + local.len();
    if len > buf.len() {
        return Err("it is too long");
    }
    let (d, rest) = buf.split_at_mut(domain.len());
    d.copy_from_slice(domain.as_bytes());
    d.make_ascii_lowercase();
    let (at, rest) = rest.split_first_mut().ok_or("it is too long")?;
    *at = b'@';
    let l = rest.get_mut(..local.len()).ok_or("it is too long")?;
    l.copy_from_slice(local.as_bytes());
    l.make_ascii_lowercase();
    Ok(len)
}

/// Builds the bytes of an [`AddressTable`].
///
/// Keys are kept back to back in one buffer, not one allocation each: a
/// million addresses sort faster (the first eight bytes of each key are
/// compared in place) and are freed at once.
#[derive(Debug, Default, Clone)]
pub struct AddressTableBuilder {
    /// Every key (`domain@local`, folded), back to back.
    keys: Vec<u8>,
    entries: Vec<KeyRef>,
}

/// One entry of an [`AddressTableBuilder`].
#[derive(Debug, Clone, Copy)]
struct KeyRef {
    /// The key's first eight bytes, big-endian and zero-padded: comparing
    /// two of these orders keys as their bytes do, or ties.
    head: u64,
    start: usize,
    len: usize,
    value: u32,
}

impl AddressTableBuilder {
    /// An empty builder.
    pub fn new() -> AddressTableBuilder {
        AddressTableBuilder::default()
    }

    /// Adds `address` (`local@domain`) with `value`.
    pub fn insert(&mut self, address: &str, value: u32) -> Result<(), TableError> {
        let invalid = |reason| TableError::InvalidAddress { address: address.to_owned(), reason };
        let (_, domain) = address.rsplit_once('@').ok_or(invalid("it has no '@'"))?;
        normalize_domain(domain).map_err(invalid)?;
        let mut buf = [0u8; MAX_ADDRESS_LEN];
        let len = address_key(address, &mut buf).map_err(invalid)?;
        let key = buf.get(..len).unwrap_or(&[]);
        let mut head = [0u8; 8];
        for (h, k) in head.iter_mut().zip(key) {
            *h = *k;
        }
        self.entries.push(KeyRef { head: u64::from_be_bytes(head), start: self.keys.len(), len, value });
        self.keys.extend_from_slice(key);
        Ok(())
    }

    /// Number of entries added so far (before deduplication).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The section bytes: an `fst::Map` from `domain@local` to the value.
    pub fn build(self) -> Result<Vec<u8>, TableError> {
        let AddressTableBuilder { keys, mut entries } = self;
        let key = |e: &KeyRef| keys.get(e.start..e.start + e.len).unwrap_or(&[]);
        entries.sort_unstable_by(|a, b| {
            a.head.cmp(&b.head).then_with(|| key(a).cmp(key(b))).then_with(|| a.value.cmp(&b.value))
        });
        entries.dedup_by(|b, a| a.value == b.value && key(a) == key(b));
        let mut conflicts = Vec::new();
        for pair in entries.windows(2) {
            if let [a, b] = pair {
                if key(a) == key(b) {
                    // Show it the way the operator wrote it.
                    let s = String::from_utf8_lossy(key(a));
                    let shown = match s.split_once('@') {
                        Some((domain, local)) => format!("{local}@{domain}"),
                        None => s.into_owned(),
                    };
                    conflicts.push(Conflict { key: shown, first: a.value, second: b.value });
                }
            }
        }
        if !conflicts.is_empty() {
            return Err(TableError::Conflicts { table: "address table", conflicts });
        }
        build_fst("address table", entries.iter().map(|e| (key(e), u64::from(e.value))))
    }
}

/// Mail addresses, matched exactly after case folding (see the module docs).
///
/// Keys are stored domain first (`example.com@john`): addresses of one domain
/// share a prefix, which compresses well and makes
/// [`AddressTable::contains_domain`] a prefix walk.
#[derive(Clone)]
pub struct AddressTable {
    fst: FstTable,
}

impl fmt::Debug for AddressTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddressTable").field("len", &self.len()).field("byte_len", &self.byte_len()).finish()
    }
}

impl AddressTable {
    /// Opens a section built by [`AddressTableBuilder`]. Checks the fst
    /// header and footer and every node, in one pass; see the module docs on
    /// trust.
    pub fn new(bytes: Bytes) -> Result<AddressTable, TableError> {
        Ok(AddressTable { fst: open_fst("address table", bytes)? })
    }

    /// Checks fst's own checksum over the whole table.
    pub fn verify_checksum(&self) -> Result<(), TableError> {
        self.fst.verify_checksum("address table")
    }

    /// The value for `address` (`local@domain`), if present. A malformed or
    /// over-long address matches nothing. Does not allocate.
    pub fn lookup(&self, address: &str) -> Option<u32> {
        let mut buf = [0u8; MAX_ADDRESS_LEN];
        let len = address_key(address, &mut buf).ok()?;
        u32::try_from(self.fst.get(buf.get(..len)?)?).ok()
    }

    /// Whether any address of `domain` is in the table (so a recipient
    /// domain can be told "known domain, unknown user" from "not ours").
    /// Case and a trailing dot are ignored. Does not allocate.
    pub fn contains_domain(&self, domain: &str) -> bool {
        let d = domain.strip_suffix('.').unwrap_or(domain).as_bytes();
        let mut buf = [0u8; MAX_DOMAIN_LEN + 1];
        let Some(dst) = buf.get_mut(..d.len()) else {
            return false;
        };
        if d.is_empty() {
            return false;
        }
        dst.copy_from_slice(d);
        dst.make_ascii_lowercase();
        let Some(at) = buf.get_mut(d.len()) else {
            return false;
        };
        *at = b'@';
        // Every state of an fst built from keys lies on the path of some key,
        // so reaching the state after "domain@" means a key starts with it.
        buf.get(..=d.len()).is_some_and(|prefix| self.fst.walk(prefix).is_some())
    }

    /// Every address (`local@domain`, as stored: case-folded by the module's rules) and its
    /// value, in key order; see [`DomainTable::entries`].
    pub fn entries(&self) -> Vec<(String, u32)> {
        let mut out = Vec::with_capacity(self.len());
        let mut stream = self.fst.map.stream();
        while let Some((key, raw)) = fst::Streamer::next(&mut stream) {
            let key = String::from_utf8_lossy(key);
            let address = match key.split_once('@') {
                Some((domain, local)) => format!("{local}@{domain}"),
                None => key.into_owned(),
            };
            out.push((address, u32::try_from(raw).unwrap_or(u32::MAX)));
        }
        out
    }

    /// Number of addresses in the table.
    pub fn len(&self) -> usize {
        self.fst.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.fst.len() == 0
    }

    /// Size of the section in bytes.
    pub fn byte_len(&self) -> usize {
        self.fst.byte_len()
    }
}

// ---------------------------------------------------------------------------
// IP prefixes
// ---------------------------------------------------------------------------

/// First bytes of a prefix table section: the layout's name and version, so
/// a reader meets a clear error, not wrong answers, on another layout.
const PREFIX_MAGIC: [u8; 4] = *b"LPM2";
/// Section header: magic, distinct value count u32, distinct prefix count
/// u64, value width u8, 7 reserved bytes.
const PREFIX_HEADER_LEN: usize = 24;
/// Family descriptor: boundaries u32, valued intervals u32, buckets u32,
/// key shift u8, residual width u8, 2 reserved bytes, base u128.
const FAMILY_LEN: usize = 32;
/// Zero bytes at the end of the section, so that a residual is always read
/// as one 8- or 16-byte load and masked.
const PREFIX_PADDING: usize = 16;

/// A prefix as a closed interval of addresses (both families in u128).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Span {
    start: u128,
    prefix_len: u8,
    end: u128,
}

/// Builds the bytes of a [`PrefixTable`].
#[derive(Debug, Default, Clone)]
pub struct PrefixTableBuilder {
    v4: Vec<(Span, u32)>,
    v6: Vec<(Span, u32)>,
}

impl PrefixTableBuilder {
    /// An empty builder.
    pub fn new() -> PrefixTableBuilder {
        PrefixTableBuilder::default()
    }

    /// Adds `net` with `value`. Host bits are cleared (`10.1.2.3/8` is
    /// `10.0.0.0/8`); the compiler warns about them. An IPv6 prefix inside
    /// `::ffff:0:0/96` is stored as the IPv4 prefix it denotes, because
    /// lookups of IPv4-mapped addresses go to the IPv4 side.
    pub fn insert(&mut self, net: IpNet, value: u32) {
        match normalize_net(net) {
            IpNet::V4(n) => {
                let start = u32::from(n.network());
                let end = u32::from(n.broadcast());
                self.v4.push((Span { start: start.into(), prefix_len: n.prefix_len(), end: end.into() }, value));
            }
            IpNet::V6(n) => {
                self.v6.push((
                    Span { start: u128::from(n.network()), prefix_len: n.prefix_len(), end: u128::from(n.broadcast()) },
                    value,
                ));
            }
        }
    }

    /// Number of prefixes added so far (before deduplication).
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// The section bytes. The nested prefixes of each family are flattened
    /// into sorted disjoint intervals, each carrying the value of the longest
    /// prefix covering it, and only the *boundaries* are stored: the address
    /// where an interval or a gap starts, with the interval's value or "no
    /// match". A lookup finds the last boundary at or before the address.
    ///
    /// Layout (little-endian), see [`PrefixTable`] for why:
    ///
    /// ```text
    /// header   "LPM2", distinct values d u32, prefixes u64, value width vw u8, 7 zero bytes
    /// family   IPv4 descriptor, then IPv6 descriptor, each:
    ///          boundaries n u32, valued intervals u32, buckets nb u32,
    ///          shift u8, residual width w u8, 2 zero bytes, base u128
    /// values   d × u32, sorted; boundary code c means values[c - 1], 0 "no match"
    /// IPv4     bucket index (nb + 1) × u32, residuals n × w bytes, codes n × vw bytes
    /// IPv6     the same
    /// padding  16 zero bytes
    /// ```
    ///
    /// A boundary `b` is stored as its key `k = b >> shift`; `shift` is the
    /// number of trailing zero bits every boundary has (64 or more when all
    /// IPv6 prefixes are /64 or shorter). Keys are split at byte `w` into a
    /// bucket `(k - base) >> 8w` and a residual, the low `8w` bits, stored in
    /// `w` bytes; `w` is the width that makes the family smallest. Bucket `j`
    /// holds boundaries `index[j]..index[j + 1]`. With a single distinct value
    /// the codes are implied (boundaries alternate value, gap) and `vw` is 0.
    pub fn build(self) -> Result<Vec<u8>, TableError> {
        let show4 = |s: &Span| show_span(s, false);
        let show6 = |s: &Span| show_span(s, true);
        let (v4, v6) = match (sort_dedup(self.v4, "prefix table", show4), sort_dedup(self.v6, "prefix table", show6)) {
            (Ok(v4), Ok(v6)) => (v4, v6),
            (Err(a), Err(b)) => return Err(merge_conflicts(a, b)),
            (Err(e), _) | (_, Err(e)) => return Err(e),
        };
        let prefixes = (v4.len() + v6.len()) as u64;
        let v4 = flatten(&v4);
        let v6 = flatten(&v6);

        let mut values: Vec<u32> = v4.iter().chain(&v6).map(|&(_, _, v)| v).collect();
        values.sort_unstable();
        values.dedup();
        let code_of = |v: u32| values.binary_search(&v).map_or(0, |i| i + 1);
        let value_width: usize = match values.len() {
            0 | 1 => 0,
            n if n < 0x100 => 1,
            n if n < 0x1_0000 => 2,
            _ => 4,
        };
        let v4 = Family::encode(&boundaries(&v4, u128::from(u32::MAX), code_of))?;
        let v6 = Family::encode(&boundaries(&v6, u128::MAX, code_of))?;
        let too_large = || TableError::PrefixTableTooLarge { boundaries: v4.codes.len() + v6.codes.len() };
        let value_count = u32::try_from(values.len()).map_err(|_| too_large())?;

        let mut out = Vec::with_capacity(
            PREFIX_HEADER_LEN
                + 2 * FAMILY_LEN
                + 4 * values.len()
                + v4.byte_len(value_width)
                + v6.byte_len(value_width)
                + PREFIX_PADDING,
        );
        out.extend_from_slice(&PREFIX_MAGIC);
        out.extend_from_slice(&value_count.to_le_bytes());
        out.extend_from_slice(&prefixes.to_le_bytes());
        out.push(value_width as u8);
        out.extend_from_slice(&[0; 7]);
        v4.write_descriptor(&mut out);
        v6.write_descriptor(&mut out);
        for v in &values {
            out.extend_from_slice(&v.to_le_bytes());
        }
        v4.write_arrays(&mut out, value_width);
        v6.write_arrays(&mut out, value_width);
        out.extend_from_slice(&[0; PREFIX_PADDING]);
        Ok(out)
    }
}

/// Turns flattened intervals into boundaries `(address, code)`: each interval
/// start with its value's code, and the address after an interval with code 0
/// when a gap follows (not when the next interval is adjacent or the
/// interval ends at `max`).
fn boundaries(intervals: &[(u128, u128, u32)], max: u128, code_of: impl Fn(u32) -> usize) -> Vec<(u128, usize)> {
    let mut out = Vec::with_capacity(intervals.len() * 2);
    let mut gap_at: Option<u128> = None;
    for &(start, end, value) in intervals {
        if let Some(gap) = gap_at {
            if gap < start {
                out.push((gap, 0));
            }
        }
        out.push((start, code_of(value)));
        gap_at = end.checked_add(1).filter(|&g| g <= max);
    }
    if let Some(gap) = gap_at {
        out.push((gap, 0));
    }
    out
}

/// One family's boundaries, encoded.
struct Family {
    intervals: u32,
    shift: u8,
    width: u8,
    base: u128,
    /// Bucket index: `buckets + 1` starts.
    index: Vec<u32>,
    residuals: Vec<u128>,
    codes: Vec<usize>,
}

impl Family {
    fn encode(bounds: &[(u128, usize)]) -> Result<Family, TableError> {
        let too_large = || TableError::PrefixTableTooLarge { boundaries: bounds.len() };
        let n = bounds.len();
        let n32 = u32::try_from(n).map_err(|_| too_large())?;
        let intervals = bounds.iter().filter(|&&(_, code)| code != 0).count() as u32;
        // Every boundary has at least `shift` trailing zero bits, so
        // `b <= x` exactly when `b >> shift <= x >> shift`.
        let shift = bounds.iter().filter(|&&(b, _)| b != 0).map(|&(b, _)| b.trailing_zeros()).min().unwrap_or(0);
        let shift = shift.min(127) as u8;
        let keys: Vec<u128> = bounds.iter().map(|&(b, _)| b >> shift).collect();
        let base = keys.first().copied().unwrap_or(0);
        let range = keys.last().copied().unwrap_or(0) - base;

        // The residual width that makes this family smallest; ties go to the
        // narrower width, which means more buckets and shorter searches.
        let mut best: Option<(u128, u8, u128)> = None;
        for width in 1..=16u8 {
            let buckets = range.checked_shr(8 * u32::from(width)).unwrap_or(0) + 1;
            if buckets >= u128::from(u32::MAX) {
                continue;
            }
            let size = n as u128 * u128::from(width) + 4 * (buckets + 1);
            if best.is_none_or(|(s, _, _)| size < s) {
                best = Some((size, width, buckets));
            }
        }
        // Width 16 always fits (one bucket).
        let (_, width, buckets) = best.unwrap_or((0, 16, 1));
        let bits = 8 * u32::from(width);
        let (buckets, width) = if n == 0 { (0, 1) } else { (buckets as usize, width) };

        let mut index = Vec::with_capacity(buckets + 1);
        let mut residuals = Vec::with_capacity(n);
        for (i, &k) in keys.iter().enumerate() {
            let d = k - base;
            // Buckets fit in u32 (checked above), and so does `i`.
            let bucket = d.checked_shr(bits).unwrap_or(0) as usize;
            while index.len() <= bucket {
                index.push(i as u32);
            }
            residuals.push(d & low_mask(bits));
        }
        while index.len() <= buckets {
            index.push(n32);
        }
        Ok(Family { intervals, shift, width, base, index, residuals, codes: bounds.iter().map(|&(_, c)| c).collect() })
    }

    fn byte_len(&self, value_width: usize) -> usize {
        4 * self.index.len() + self.residuals.len() * (usize::from(self.width) + value_width)
    }

    fn write_descriptor(&self, out: &mut Vec<u8>) {
        // Lengths fit in u32: checked by `encode`.
        out.extend_from_slice(&(self.codes.len() as u32).to_le_bytes());
        out.extend_from_slice(&self.intervals.to_le_bytes());
        out.extend_from_slice(&(self.index.len().saturating_sub(1) as u32).to_le_bytes());
        out.extend_from_slice(&[self.shift, self.width, 0, 0]);
        out.extend_from_slice(&self.base.to_le_bytes());
    }

    fn write_arrays(&self, out: &mut Vec<u8>, value_width: usize) {
        for start in &self.index {
            out.extend_from_slice(&start.to_le_bytes());
        }
        let width = usize::from(self.width);
        for r in &self.residuals {
            out.extend_from_slice(r.to_le_bytes().get(..width).unwrap_or(&[]));
        }
        if value_width > 0 {
            for &code in &self.codes {
                // Codes are below the distinct value count, which chose the width.
                out.extend_from_slice((code as u32).to_le_bytes().get(..value_width).unwrap_or(&[]));
            }
        }
    }
}

/// The low `bits` bits set.
fn low_mask(bits: u32) -> u128 {
    u128::MAX.checked_shr(128u32.saturating_sub(bits)).unwrap_or(0)
}

fn merge_conflicts(a: TableError, b: TableError) -> TableError {
    match (a, b) {
        (TableError::Conflicts { table, conflicts: mut first }, TableError::Conflicts { conflicts, .. }) => {
            first.extend(conflicts);
            TableError::Conflicts { table, conflicts: first }
        }
        (a, _) => a,
    }
}

fn show_span(s: &Span, v6: bool) -> String {
    if v6 {
        format!("{}/{}", Ipv6Addr::from(s.start), s.prefix_len)
    } else {
        let start = u32::try_from(s.start).unwrap_or(0);
        format!("{}/{}", Ipv4Addr::from(start), s.prefix_len)
    }
}

/// Clears host bits and turns `::ffff:a.b.c.d/96+n` into `a.b.c.d/n`.
fn normalize_net(net: IpNet) -> IpNet {
    match net.trunc() {
        IpNet::V6(n) if n.prefix_len() >= 96 => match n.network().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, n.prefix_len() - 96).map(IpNet::V4).unwrap_or(IpNet::V6(n)),
            None => IpNet::V6(n),
        },
        other => other,
    }
}

/// Turns sorted, deduplicated prefixes (which are either nested or disjoint)
/// into sorted disjoint intervals `(start, end_inclusive, value)` where each
/// address gets the value of the longest prefix containing it. Adjacent
/// intervals with the same value are merged.
///
/// Sorted by `(start, prefix_len)`, a prefix comes before every prefix nested
/// in it, so a stack of open prefixes is enough: the top is the longest one
/// covering the current position.
fn flatten(spans: &[(Span, u32)]) -> Vec<(u128, u128, u32)> {
    fn emit(out: &mut Vec<(u128, u128, u32)>, start: u128, end: u128, value: u32) {
        if let Some(last) = out.last_mut() {
            if last.2 == value && last.1.checked_add(1) == Some(start) {
                last.1 = end;
                return;
            }
        }
        out.push((start, end, value));
    }

    let mut out = Vec::new();
    let mut stack: Vec<(u128, u32)> = Vec::new();
    // First address not yet emitted; meaningful while the stack is not empty.
    let mut cursor: u128 = 0;
    for &(span, value) in spans {
        while let Some(&(end, v)) = stack.last() {
            if end >= span.start {
                break;
            }
            if cursor <= end {
                emit(&mut out, cursor, end, v);
            }
            // end < span.start, so end + 1 does not overflow.
            cursor = end + 1;
            stack.pop();
        }
        if let Some(&(_, v)) = stack.last() {
            if cursor < span.start {
                emit(&mut out, cursor, span.start - 1, v);
            }
        }
        cursor = span.start;
        stack.push((span.end, value));
    }
    while let Some((end, v)) = stack.pop() {
        if cursor <= end {
            emit(&mut out, cursor, end, v);
        }
        match end.checked_add(1) {
            Some(next) => cursor = next,
            // Everything still open ends at the last address too.
            None => break,
        }
    }
    out
}

/// Where one family's arrays lie in the section, from its descriptor.
#[derive(Debug, Clone, Copy, Default)]
struct FamilyView {
    boundaries: usize,
    intervals: usize,
    buckets: usize,
    shift: u32,
    width: usize,
    base: u128,
    index_at: usize,
    residuals_at: usize,
    codes_at: usize,
}

impl FamilyView {
    /// Reads a descriptor at `at`; `arrays_at` is where its arrays start.
    /// Returns the view and where the next family's arrays start, or why the
    /// descriptor is impossible.
    fn read(b: &[u8], at: usize, arrays_at: u64, value_width: u64) -> Result<(FamilyView, u64), &'static str> {
        let d: &[u8; FAMILY_LEN] = b.get(at..at + FAMILY_LEN).and_then(|d| d.try_into().ok()).ok_or("is truncated")?;
        let [n0, n1, n2, n3, i0, i1, i2, i3, b0, b1, b2, b3, shift, width, _, _, base @ ..] = *d;
        let n = u64::from(u32::from_le_bytes([n0, n1, n2, n3]));
        let intervals = u32::from_le_bytes([i0, i1, i2, i3]);
        let buckets = u64::from(u32::from_le_bytes([b0, b1, b2, b3]));
        if !(1..=16).contains(&width) || shift > 127 {
            return Err("has an impossible key shift or residual width");
        }
        if n > 0 && buckets == 0 {
            return Err("has boundaries but no bucket");
        }
        // All u64 products of u32 counts and small widths: no overflow.
        let index_at = arrays_at;
        let residuals_at = index_at + 4 * (buckets + 1);
        let codes_at = residuals_at + n * u64::from(width);
        let end = codes_at + n * value_width;
        let usize_of = |v: u64| usize::try_from(v).map_err(|_| "does not fit in memory");
        let view = FamilyView {
            boundaries: usize_of(n)?,
            intervals: usize_of(u64::from(intervals))?,
            buckets: usize_of(buckets)?,
            shift: u32::from(shift),
            width: usize::from(width),
            base: u128::from_le_bytes(base),
            index_at: usize_of(index_at)?,
            residuals_at: usize_of(residuals_at)?,
            codes_at: usize_of(codes_at)?,
        };
        Ok((view, end))
    }

    /// Index of the last boundary at or before `x`, if any.
    #[inline]
    fn last_at_or_before(&self, b: &[u8], x: u128) -> Option<usize> {
        let key = x.checked_shr(self.shift).unwrap_or(0);
        let d = key.checked_sub(self.base)?;
        let bits = 8 * self.width as u32;
        let bucket = d.checked_shr(bits).unwrap_or(0);
        if bucket >= self.buckets as u128 {
            // Past the last bucket: after every boundary.
            return self.boundaries.checked_sub(1);
        }
        // `bucket < buckets`, which came from a u32.
        let at = self.index_at.checked_add(4 * bucket as usize)?;
        let (lo, hi) = (read_u32(b, at)? as usize, read_u32(b, at.checked_add(4)?)? as usize);
        if lo > hi || hi > self.boundaries {
            return None;
        }
        let residual = d & low_mask(bits);
        // First boundary of the bucket whose residual is above `residual`.
        let (mut lo, mut hi) = (lo, hi);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let at = self.residuals_at.checked_add(mid.checked_mul(self.width)?)?;
            if read_residual(b, at, self.width)? <= residual {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo.checked_sub(1)
    }
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

/// A `width`-byte little-endian number at `at`, read as one 8- or 16-byte
/// load (the section's padding keeps it in bounds) and masked.
#[inline]
fn read_residual(b: &[u8], at: usize, width: usize) -> Option<u128> {
    if width <= 8 {
        let raw = u64::from_le_bytes(b.get(at..at.checked_add(8)?)?.try_into().ok()?);
        let mask = u64::MAX.checked_shr(64 - 8 * width as u32).unwrap_or(0);
        Some(u128::from(raw & mask))
    } else {
        let raw = u128::from_le_bytes(b.get(at..at.checked_add(16)?)?.try_into().ok()?);
        Some(raw & low_mask(8 * width as u32))
    }
}

/// IPv4 and IPv6 prefixes with longest-prefix match.
///
/// Stored as the boundaries of the flattened intervals (see
/// [`PrefixTableBuilder::build`] for the layout): a lookup reads one bucket
/// index entry and binary-searches the fixed-width residuals of one bucket,
/// in place. The widths are chosen at build time to make the table small:
/// random IPv4 block lists need about two bytes per boundary, IPv6 lists of
/// /64s and shorter about six, and a table with a single value stores no
/// values at all. Every read is bounds-checked: a damaged table answers
/// wrongly, never panics.
#[derive(Clone)]
pub struct PrefixTable {
    bytes: Bytes,
    prefixes: u64,
    values: usize,
    values_at: usize,
    value_width: usize,
    v4: FamilyView,
    v6: FamilyView,
}

impl fmt::Debug for PrefixTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrefixTable")
            .field("prefixes", &self.prefixes)
            .field("v4_intervals", &self.v4.intervals)
            .field("v6_intervals", &self.v6.intervals)
            .field("v4_boundaries", &self.v4.boundaries)
            .field("v6_boundaries", &self.v6.boundaries)
            .field("values", &self.values)
            .field("byte_len", &self.byte_len())
            .finish()
    }
}

impl PrefixTable {
    /// Opens a section built by [`PrefixTableBuilder`], checking its header
    /// and that its size matches it.
    pub fn new(bytes: Bytes) -> Result<PrefixTable, TableError> {
        let found = bytes.len();
        let format = |reason| TableError::PrefixTableFormat { reason };
        let b = bytes.as_slice();
        let header: &[u8; PREFIX_HEADER_LEN] =
            b.get(..PREFIX_HEADER_LEN).and_then(|h| h.try_into().ok()).ok_or(format("is shorter than its header"))?;
        let [m0, m1, m2, m3, d0, d1, d2, d3, p0, p1, p2, p3, p4, p5, p6, p7, value_width, ..] = *header;
        if [m0, m1, m2, m3] != PREFIX_MAGIC {
            return Err(format("does not start with the prefix table magic (an older or newer layout)"));
        }
        let values = u64::from(u32::from_le_bytes([d0, d1, d2, d3]));
        let prefixes = u64::from_le_bytes([p0, p1, p2, p3, p4, p5, p6, p7]);
        let vw = u64::from(value_width);
        if !matches!(value_width, 0 | 1 | 2 | 4) || (value_width == 0 && values > 1) {
            return Err(format("has an impossible value width"));
        }
        let values_at = (PREFIX_HEADER_LEN + 2 * FAMILY_LEN) as u64;
        let v4_at = values_at + 4 * values;
        let (v4, v6_at) = FamilyView::read(b, PREFIX_HEADER_LEN, v4_at, vw).map_err(format)?;
        let (v6, end) = FamilyView::read(b, PREFIX_HEADER_LEN + FAMILY_LEN, v6_at, vw).map_err(format)?;
        let expected = end + PREFIX_PADDING as u64;
        if expected != found as u64 {
            return Err(TableError::PrefixTableSize { expected, found });
        }
        Ok(PrefixTable {
            // Both bounded by the section size now.
            values: values as usize,
            values_at: values_at as usize,
            value_width: usize::from(value_width),
            prefixes,
            v4,
            v6,
            bytes,
        })
    }

    /// The value of the longest prefix containing `ip`. IPv4-mapped IPv6
    /// addresses (`::ffff:a.b.c.d`) are looked up as IPv4.
    pub fn lookup(&self, ip: IpAddr) -> Option<u32> {
        let (family, x) = match ip {
            IpAddr::V4(v4) => (&self.v4, u128::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => (&self.v4, u128::from(u32::from(v4))),
                None => (&self.v6, u128::from(v6)),
            },
        };
        let b = self.bytes.as_slice();
        let i = family.last_at_or_before(b, x)?;
        let code = match self.value_width {
            // One distinct value: boundaries alternate between it and a gap.
            0 => usize::from(i % 2 == 0),
            1 => usize::from(*b.get(family.codes_at.checked_add(i)?)?),
            2 => {
                let at = family.codes_at.checked_add(i.checked_mul(2)?)?;
                usize::from(u16::from_le_bytes(b.get(at..at.checked_add(2)?)?.try_into().ok()?))
            }
            _ => read_u32(b, family.codes_at.checked_add(i.checked_mul(4)?)?)? as usize,
        };
        let slot = code.checked_sub(1)?;
        if slot >= self.values {
            return None;
        }
        read_u32(b, self.values_at.checked_add(slot.checked_mul(4)?)?)
    }

    /// Number of distinct prefixes the table was built from.
    pub fn len(&self) -> usize {
        usize::try_from(self.prefixes).unwrap_or(usize::MAX)
    }

    /// Whether the table was built from no prefix.
    pub fn is_empty(&self) -> bool {
        self.prefixes == 0
    }

    /// Number of IPv4 intervals with a value (adjacent intervals with the
    /// same value count once).
    pub fn v4_intervals(&self) -> usize {
        self.v4.intervals
    }

    /// Number of IPv6 intervals with a value.
    pub fn v6_intervals(&self) -> usize {
        self.v6.intervals
    }

    /// Number of intervals with a value, both families.
    pub fn interval_count(&self) -> usize {
        self.v4.intervals.saturating_add(self.v6.intervals)
    }

    /// Size of the section in bytes.
    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn reverse_labels_works() {
        let mut buf = [0u8; 255];
        let n = reverse_labels(b"Mail.Example.COM", &mut buf).unwrap();
        assert_eq!(&buf[..n], b"com.example.mail");
        assert!(reverse_labels(b"a..b", &mut buf).is_none());
        assert!(reverse_labels(b"", &mut buf).is_none());
        assert!(reverse_labels(&[b'a'; 256], &mut buf).is_none());
    }

    #[test]
    fn flatten_nested() {
        let s = |start: u128, end: u128, len: u8| Span { start, prefix_len: len, end };
        let spans = vec![(s(0, 255, 24), 1), (s(16, 31, 28), 2), (s(20, 23, 30), 3)];
        assert_eq!(flatten(&spans), vec![(0, 15, 1), (16, 19, 2), (20, 23, 3), (24, 31, 2), (32, 255, 1)]);
        // Child ending with its parent, and a child with the parent's value.
        let spans = vec![(s(0, 255, 24), 1), (s(128, 255, 25), 2)];
        assert_eq!(flatten(&spans), vec![(0, 127, 1), (128, 255, 2)]);
        let spans = vec![(s(0, 255, 24), 1), (s(128, 255, 25), 1)];
        assert_eq!(flatten(&spans), vec![(0, 255, 1)]);
        let spans = vec![(s(0, u128::MAX, 0), 1), (s(u128::MAX, u128::MAX, 128), 2)];
        assert_eq!(flatten(&spans), vec![(0, u128::MAX - 1, 1), (u128::MAX, u128::MAX, 2)]);
    }

    /// Longest-prefix match by trying every prefix of `entries`, normalised
    /// as the builder does (mapped IPv6 prefixes as IPv4).
    fn naive(entries: &[(IpNet, u32)], ip: IpAddr) -> Option<u32> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        entries.iter().filter(|(n, _)| n.contains(&ip)).max_by_key(|(n, _)| n.prefix_len()).map(|&(_, v)| v)
    }

    fn table(entries: &[(IpNet, u32)]) -> PrefixTable {
        let mut b = PrefixTableBuilder::new();
        for &(n, v) in entries {
            b.insert(n, v);
        }
        PrefixTable::new(Bytes::from_vec(b.build().unwrap())).unwrap()
    }

    /// Addresses where an answer can change: both edges of every prefix and
    /// their neighbours, and both sides of every bucket edge of both families.
    fn probes(t: &PrefixTable, entries: &[(IpNet, u32)]) -> Vec<IpAddr> {
        let mut out = Vec::new();
        let mut around = |v6: bool, x: u128| {
            for p in [x.wrapping_sub(1), x, x.wrapping_add(1)] {
                if v6 {
                    out.push(IpAddr::V6(p.into()));
                } else {
                    out.push(IpAddr::V4((p as u32).into()));
                }
            }
        };
        for &(n, _) in entries {
            match normalize_net(n) {
                IpNet::V4(n) => {
                    around(false, u32::from(n.network()).into());
                    around(false, u32::from(n.broadcast()).into());
                }
                IpNet::V6(n) => {
                    around(true, n.network().into());
                    around(true, n.broadcast().into());
                }
            }
        }
        for (f, v6) in [(t.v4, false), (t.v6, true)] {
            let bits = 8 * f.width as u32;
            for j in 0..=f.buckets as u128 {
                let key = f.base.wrapping_add(j.checked_shl(bits).unwrap_or(0));
                around(v6, key << f.shift);
                around(v6, (key << f.shift).wrapping_sub(1));
            }
        }
        for x in [0, u128::from(u32::MAX), u128::MAX] {
            around(false, x);
            around(true, x);
        }
        out
    }

    fn check(entries: &[(IpNet, u32)]) -> PrefixTable {
        let t = table(entries);
        let normalized: Vec<(IpNet, u32)> = entries.iter().map(|&(n, v)| (normalize_net(n), v)).collect();
        for ip in probes(&t, entries) {
            assert_eq!(t.lookup(ip), naive(&normalized, ip), "{ip}");
        }
        t
    }

    fn nets(list: &[(&str, u32)]) -> Vec<(IpNet, u32)> {
        list.iter().map(|&(n, v)| (n.parse().unwrap(), v)).collect()
    }

    #[test]
    fn prefix_encoding_edges() {
        // Empty: no boundary, nothing matches.
        let t = check(&[]);
        assert_eq!((t.v4.boundaries, t.v6.boundaries, t.interval_count()), (0, 0, 0));
        // /0 alone: one boundary at 0, no gap after (it ends at the last address).
        let t = check(&nets(&[("0.0.0.0/0", 7), ("::/0", 8)]));
        assert_eq!((t.v4.boundaries, t.v6.boundaries), (1, 1));
        // Single addresses at both ends of both families.
        let t = check(&nets(&[
            ("0.0.0.0/32", 1),
            ("255.255.255.255/32", 2),
            ("::/128", 3),
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128", 4),
        ]));
        // 0 (value), 1 (gap), max (value): nothing after max.
        assert_eq!((t.v4.boundaries, t.v6.boundaries), (3, 3));
        assert_eq!(t.v6.shift, 0);
        // Adjacent intervals with different values share one boundary; with
        // the same value they merge; a gap adds a "no match" boundary.
        let t = check(&nets(&[("10.0.0.0/24", 1), ("10.0.1.0/24", 2), ("10.0.2.0/24", 2), ("10.0.4.0/24", 1)]));
        assert_eq!((t.v4.boundaries, t.v4_intervals()), (5, 3));
        // Nested prefixes ending together with their parent.
        check(&nets(&[("10.0.0.0/8", 1), ("10.255.255.0/24", 2), ("10.255.255.255/32", 3), ("11.0.0.0/8", 1)]));
        // A prefix ending at the last address, after a gap.
        check(&nets(&[("128.0.0.0/1", 5), ("1.0.0.0/8", 6), ("8000::/1", 5), ("2001:db8::/32", 6)]));
        // Mapped IPv6 prefixes go to the IPv4 side.
        let t = check(&nets(&[("::ffff:10.0.0.0/104", 1), ("::ffff:0:0/96", 2)]));
        assert_eq!(t.v6.boundaries, 0);
    }

    #[test]
    fn prefix_ipv6_shift_uses_trailing_zeros() {
        let t = check(&nets(&[("2001:db8::/32", 1), ("2001:db8:1::/48", 2), ("2001:db8:1:2::/64", 3)]));
        // Boundaries are multiples of 2^64, so keys are the high half.
        assert!(t.v6.shift >= 64, "shift {}", t.v6.shift);
        // One /128 brings the low half back.
        let t = check(&nets(&[("2001:db8::/32", 1), ("2001:db8::1/128", 2)]));
        assert_eq!(t.v6.shift, 0);
        // An IPv6 prefix that ends at the last address.
        check(&nets(&[("ffff:ffff:ffff:ffff::/64", 1), ("ffff::/16", 2)]));
    }

    #[test]
    fn prefix_value_widths() {
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        // Distinct /24s under 10/8 and /64s under 2001:db8::/32, with 1, 255,
        // 256 and 70,000 distinct values: widths 0, 1, 2 and 4.
        for (distinct, width) in [(1u32, 0usize), (255, 1), (256, 2), (70_000, 4)] {
            let count = distinct.max(300) as usize;
            let mut entries = Vec::with_capacity(count);
            let mut seen = std::collections::BTreeSet::new();
            while entries.len() < count {
                let r = next();
                let net: IpNet = if r % 2 == 0 {
                    let a = 0x0a00_0000u32 | ((r >> 8) as u32 & 0x00ff_ff00);
                    IpNet::V4(Ipv4Net::new(Ipv4Addr::from(a), 24).unwrap())
                } else {
                    let a = (0x2001_0db8u128 << 96) | (u128::from((r >> 1) as u32) << 64);
                    IpNet::V6(ipnet::Ipv6Net::new(Ipv6Addr::from(a), 64).unwrap())
                };
                if seen.insert(net) {
                    entries.push((net, entries.len() as u32 % distinct));
                }
            }
            let t = table(&entries);
            assert_eq!(t.value_width, width, "{distinct} values");
            assert_eq!(t.values, distinct as usize);
            // Every prefix answers its own value (they do not nest).
            for &(n, v) in entries.iter().take(2000) {
                assert_eq!(t.lookup(n.network()), Some(v));
                assert_eq!(t.lookup(n.broadcast()), Some(v));
            }
        }
    }

    #[test]
    fn prefix_bucket_edges_match_brute_force() {
        // Dense runs of /32s and /31s around chosen keys make buckets of one,
        // many, and none, at widths 1 and 2; every bucket edge is probed.
        let mut entries = Vec::new();
        let mut value = 0;
        for base in [0x0a00_0000u32, 0x0a00_00fe, 0x0a00_ff00, 0x0a00_fffc, 0x0a01_0000, 0x0a01_fff0] {
            for i in 0..8u32 {
                let addr = base.wrapping_add(i * 2);
                let len = if i % 3 == 0 { 31 } else { 32 };
                let net = IpNet::V4(Ipv4Net::new(Ipv4Addr::from(addr), len).unwrap().trunc());
                if !entries.iter().any(|&(n, _)| n == net) {
                    value += 1;
                    entries.push((net, value % 3));
                }
            }
        }
        for low in [0u128, 0xfe, 0xff00, 0x1_fffc, 0x2_0000, 0x3_ffe0] {
            for i in 0..6u128 {
                let addr = (0x2001_0db8 << 96) + low + i * 3;
                let net = IpNet::V6(ipnet::Ipv6Net::new(Ipv6Addr::from(addr), 127).unwrap().trunc());
                if !entries.iter().any(|&(n, _)| n == net) {
                    value += 1;
                    entries.push((net, value % 3));
                }
            }
        }
        let t = check(&entries);
        assert!(t.v4.buckets > 1 && t.v6.buckets > 1, "{t:?}");
        // And a spread of /32s over a /8, where width 2 wins.
        let mut state = 99u64;
        let spread: Vec<(IpNet, u32)> = (0..3_000u32)
            .map(|i| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let addr = 0x0a00_0000 | ((state >> 40) as u32 & 0x00ff_ffff);
                (IpNet::V4(Ipv4Net::new(Ipv4Addr::from(addr), 32).unwrap()), i % 2)
            })
            .collect::<std::collections::BTreeMap<_, _>>()
            .into_iter()
            .collect();
        let t = check(&spread);
        assert_eq!(t.v4.width, 2);
    }

    #[test]
    fn address_key_layout() {
        let mut buf = [0u8; MAX_ADDRESS_LEN];
        let n = address_key("John.Doe@Example.COM.", &mut buf).unwrap();
        assert_eq!(&buf[..n], b"example.com@john.doe");
        let n = address_key("\"a@b\"@x.org", &mut buf).unwrap();
        assert_eq!(&buf[..n], b"x.org@\"a@b\"");
        assert!(address_key("nobody", &mut buf).is_err());
        assert!(address_key("@x.org", &mut buf).is_err());
        assert!(address_key("a@", &mut buf).is_err());
        let long = format!("{}@x.org", "a".repeat(600));
        assert!(address_key(&long, &mut buf).is_err());
    }
}
