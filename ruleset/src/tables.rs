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
//! | [`PrefixTable`]  | an IPv4 or IPv6 prefix               | longest prefix               | sorted intervals   |
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
//! A reader checks the structure it can check cheaply at open (sizes; the fst
//! header and footer) and bounds-checks every read, so garbage in a
//! [`PrefixTable`] gives wrong answers, never a panic. The fst-backed tables
//! rely on the `fst` crate's reader, which assumes well-formed fst bytes:
//! the container's BLAKE3 hash is what guarantees they are the bytes the
//! compiler wrote, and [`DomainTable::verify_checksum`] /
//! [`AddressTable::verify_checksum`] add fst's own CRC for bytes that did not
//! come through a container (the fuzzer).
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

use fst::raw::{Fst, Output};
use fst::{Map, MapBuilder};
use ipnet::{IpNet, Ipv4Net};

use crate::container::Bytes;

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
    /// The section's size does not match what its header says.
    #[error("prefix table section is {found} bytes but its header implies {expected}; the ruleset was written by an incompatible or buggy compiler, recompile it")]
    PrefixTableSize {
        /// Size implied by the header (`u64::MAX` if it overflows).
        expected: u64,
        /// Actual size.
        found: usize,
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

fn open_fst(table: &'static str, bytes: Bytes) -> Result<Map<Bytes>, TableError> {
    Map::new(bytes).map_err(|source| TableError::Fst { table, source })
}

fn verify_fst(table: &'static str, map: &Map<Bytes>) -> Result<(), TableError> {
    map.as_fst().verify().map_err(|source| TableError::Fst { table, source })
}

/// Follows `key` from the root; `None` if the fst has no path for it.
fn walk<'f>(fst: &'f Fst<Bytes>, key: &[u8]) -> Option<(fst::raw::Node<'f>, Output)> {
    let mut node = fst.root();
    let mut out = Output::zero();
    for &b in key {
        let t = node.transition(node.find_input(b)?);
        out = out.cat(t.out);
        node = fst.node(t.addr);
    }
    Some((node, out))
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
    map: Map<Bytes>,
}

impl fmt::Debug for DomainTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DomainTable").field("len", &self.len()).field("byte_len", &self.byte_len()).finish()
    }
}

impl DomainTable {
    /// Opens a section built by [`DomainTableBuilder`]. Checks the fst header
    /// and footer only; see the module docs on trust.
    pub fn new(bytes: Bytes) -> Result<DomainTable, TableError> {
        Ok(DomainTable { map: open_fst("domain table", bytes)? })
    }

    /// Checks fst's own checksum over the whole table (not needed for a table
    /// from a verified container, whose hash covers it).
    pub fn verify_checksum(&self) -> Result<(), TableError> {
        verify_fst("domain table", &self.map)
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

        let fst = self.map.as_fst();
        let mut node = fst.root();
        let mut out = Output::zero();
        let mut parent = None;
        for &b in key {
            // A final state just before a '.' is a parent domain.
            if b == b'.' && node.is_final() {
                let raw = out.cat(node.final_output()).value();
                if raw & 1 == 1 {
                    parent = u32::try_from(raw >> 1).ok();
                }
            }
            let Some(i) = node.find_input(b) else {
                return parent;
            };
            let t = node.transition(i);
            out = out.cat(t.out);
            node = fst.node(t.addr);
        }
        if node.is_final() {
            u32::try_from(out.cat(node.final_output()).value() >> 1).ok()
        } else {
            parent
        }
    }

    /// Number of domains in the table.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Size of the section in bytes.
    pub fn byte_len(&self) -> usize {
        self.map.as_fst().as_bytes().len()
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
#[derive(Debug, Default, Clone)]
pub struct AddressTableBuilder {
    entries: Vec<(Vec<u8>, u32)>,
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
        self.entries.push((buf.get(..len).unwrap_or(&[]).to_vec(), value));
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
        let entries = sort_dedup(self.entries, "address table", |k| {
            // Show it the way the operator wrote it.
            let s = String::from_utf8_lossy(k);
            match s.split_once('@') {
                Some((domain, local)) => format!("{local}@{domain}"),
                None => s.into_owned(),
            }
        })?;
        build_fst("address table", entries.iter().map(|(k, v)| (k.as_slice(), u64::from(*v))))
    }
}

/// Mail addresses, matched exactly after case folding (see the module docs).
///
/// Keys are stored domain first (`example.com@john`): addresses of one domain
/// share a prefix, which compresses well and makes
/// [`AddressTable::contains_domain`] a prefix walk.
#[derive(Clone)]
pub struct AddressTable {
    map: Map<Bytes>,
}

impl fmt::Debug for AddressTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddressTable").field("len", &self.len()).field("byte_len", &self.byte_len()).finish()
    }
}

impl AddressTable {
    /// Opens a section built by [`AddressTableBuilder`]. Checks the fst
    /// header and footer only; see the module docs on trust.
    pub fn new(bytes: Bytes) -> Result<AddressTable, TableError> {
        Ok(AddressTable { map: open_fst("address table", bytes)? })
    }

    /// Checks fst's own checksum over the whole table.
    pub fn verify_checksum(&self) -> Result<(), TableError> {
        verify_fst("address table", &self.map)
    }

    /// The value for `address` (`local@domain`), if present. A malformed or
    /// over-long address matches nothing. Does not allocate.
    pub fn lookup(&self, address: &str) -> Option<u32> {
        let mut buf = [0u8; MAX_ADDRESS_LEN];
        let len = address_key(address, &mut buf).ok()?;
        let value = self.map.get(buf.get(..len)?)?;
        u32::try_from(value).ok()
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
        buf.get(..=d.len()).is_some_and(|prefix| walk(self.map.as_fst(), prefix).is_some())
    }

    /// Number of addresses in the table.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Size of the section in bytes.
    pub fn byte_len(&self) -> usize {
        self.map.as_fst().as_bytes().len()
    }
}

// ---------------------------------------------------------------------------
// IP prefixes
// ---------------------------------------------------------------------------

/// Section header: distinct prefixes, IPv4 intervals, IPv6 intervals (u64
/// each).
const PREFIX_HEADER_LEN: usize = 24;
/// IPv4 record: start u32, end u32 (inclusive), value u32.
const V4_RECORD_LEN: usize = 12;
/// IPv6 record: start u128, end u128 (inclusive), value u32.
const V6_RECORD_LEN: usize = 36;

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

    /// The section bytes: the nested prefixes flattened into sorted, disjoint
    /// intervals, each carrying the value of the longest prefix covering it.
    ///
    /// Layout (little-endian): distinct prefix count u64, IPv4 interval
    /// count u64, IPv6 interval count u64, the IPv4 records (start u32, end
    /// u32, value u32), then the IPv6 records (start u128, end u128, value
    /// u32). Ends are inclusive, so `0.0.0.0/0` fits.
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

        let mut out = Vec::with_capacity(PREFIX_HEADER_LEN + v4.len() * V4_RECORD_LEN + v6.len() * V6_RECORD_LEN);
        out.extend_from_slice(&prefixes.to_le_bytes());
        out.extend_from_slice(&(v4.len() as u64).to_le_bytes());
        out.extend_from_slice(&(v6.len() as u64).to_le_bytes());
        for &(start, end, value) in &v4 {
            // IPv4 spans were built from u32s, so they fit.
            out.extend_from_slice(&(start as u32).to_le_bytes());
            out.extend_from_slice(&(end as u32).to_le_bytes());
            out.extend_from_slice(&value.to_le_bytes());
        }
        for &(start, end, value) in &v6 {
            out.extend_from_slice(&start.to_le_bytes());
            out.extend_from_slice(&end.to_le_bytes());
            out.extend_from_slice(&value.to_le_bytes());
        }
        Ok(out)
    }
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

/// IPv4 and IPv6 prefixes with longest-prefix match.
///
/// Stored as sorted disjoint intervals, so a lookup is one binary search over
/// the section, reading fixed-size records in place. Every read is
/// bounds-checked: a damaged table answers wrongly, never panics.
#[derive(Clone)]
pub struct PrefixTable {
    bytes: Bytes,
    prefixes: u64,
    v4_count: usize,
    v6_count: usize,
    v6_at: usize,
}

impl fmt::Debug for PrefixTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrefixTable")
            .field("prefixes", &self.prefixes)
            .field("v4_intervals", &self.v4_count)
            .field("v6_intervals", &self.v6_count)
            .field("byte_len", &self.byte_len())
            .finish()
    }
}

fn read_u64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at.checked_add(8)?)?.try_into().ok()?))
}

impl PrefixTable {
    /// Opens a section built by [`PrefixTableBuilder`], checking that its size
    /// matches its header.
    pub fn new(bytes: Bytes) -> Result<PrefixTable, TableError> {
        let found = bytes.len();
        let size_err =
            |expected: Option<u64>| TableError::PrefixTableSize { expected: expected.unwrap_or(u64::MAX), found };
        let b = bytes.as_slice();
        let (Some(prefixes), Some(n4), Some(n6)) = (read_u64(b, 0), read_u64(b, 8), read_u64(b, 16)) else {
            return Err(size_err(Some(PREFIX_HEADER_LEN as u64)));
        };
        let expected = n4
            .checked_mul(V4_RECORD_LEN as u64)
            .zip(n6.checked_mul(V6_RECORD_LEN as u64))
            .and_then(|(a, b)| a.checked_add(b))
            .and_then(|r| r.checked_add(PREFIX_HEADER_LEN as u64));
        if expected != Some(found as u64) {
            return Err(size_err(expected));
        }
        // Both counts are bounded by the section size now.
        let v4_count = n4 as usize;
        let v6_count = n6 as usize;
        Ok(PrefixTable { prefixes, v4_count, v6_count, v6_at: PREFIX_HEADER_LEN + v4_count * V4_RECORD_LEN, bytes })
    }

    /// The value of the longest prefix containing `ip`. IPv4-mapped IPv6
    /// addresses (`::ffff:a.b.c.d`) are looked up as IPv4.
    pub fn lookup(&self, ip: IpAddr) -> Option<u32> {
        match ip {
            IpAddr::V4(v4) => self.lookup_v4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => self.lookup_v4(v4),
                None => self.lookup_v6(v6),
            },
        }
    }

    fn lookup_v4(&self, ip: Ipv4Addr) -> Option<u32> {
        let b = self.bytes.as_slice();
        let record = |i: usize| {
            let at = PREFIX_HEADER_LEN.checked_add(i.checked_mul(V4_RECORD_LEN)?)?;
            let r: &[u8; V4_RECORD_LEN] = b.get(at..at.checked_add(V4_RECORD_LEN)?)?.try_into().ok()?;
            let [s0, s1, s2, s3, e0, e1, e2, e3, v0, v1, v2, v3] = *r;
            Some((
                u32::from_le_bytes([s0, s1, s2, s3]),
                u32::from_le_bytes([e0, e1, e2, e3]),
                u32::from_le_bytes([v0, v1, v2, v3]),
            ))
        };
        search(self.v4_count, u32::from(ip), record)
    }

    fn lookup_v6(&self, ip: Ipv6Addr) -> Option<u32> {
        let b = self.bytes.as_slice();
        let base = self.v6_at;
        let record = |i: usize| {
            let at = base.checked_add(i.checked_mul(V6_RECORD_LEN)?)?;
            let r = b.get(at..at.checked_add(V6_RECORD_LEN)?)?;
            let (start, rest) = r.split_first_chunk::<16>()?;
            let (end, rest) = rest.split_first_chunk::<16>()?;
            let value: &[u8; 4] = rest.try_into().ok()?;
            Some((u128::from_le_bytes(*start), u128::from_le_bytes(*end), u32::from_le_bytes(*value)))
        };
        search(self.v6_count, u128::from(ip), record)
    }

    /// Number of distinct prefixes the table was built from.
    pub fn len(&self) -> usize {
        usize::try_from(self.prefixes).unwrap_or(usize::MAX)
    }

    /// Whether the table was built from no prefix.
    pub fn is_empty(&self) -> bool {
        self.prefixes == 0
    }

    /// Number of stored IPv4 intervals.
    pub fn v4_intervals(&self) -> usize {
        self.v4_count
    }

    /// Number of stored IPv6 intervals.
    pub fn v6_intervals(&self) -> usize {
        self.v6_count
    }

    /// Number of stored intervals, both families.
    pub fn interval_count(&self) -> usize {
        self.v4_count + self.v6_count
    }

    /// Size of the section in bytes.
    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Binary search for the last interval starting at or before `x` among
/// `count` records; its value if it also ends at or after `x`. A record that
/// cannot be read ends the search with `None`.
fn search<T: Ord + Copy>(count: usize, x: T, record: impl Fn(usize) -> Option<(T, T, u32)>) -> Option<u32> {
    let (mut lo, mut hi) = (0usize, count);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let (start, _, _) = record(mid)?;
        if start <= x {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    let (start, end, value) = record(lo.checked_sub(1)?)?;
    (start <= x && x <= end).then_some(value)
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
