//! Which entry matched, and where the policy wrote it: the answer `postmap -q` gives, for
//! `mtac explain` and `mtac lookup`.
//!
//! A ruleset holds tables, not their history: a domain table knows `example.com` is listed,
//! not that line 12 of `lists/partners.txt` said so. `mtac build` therefore writes a second file
//! beside the ruleset, `RULESET.sources`: every entry of every table, its value and its source
//! (`file:line`). Nodes never read it, so the ruleset stays what nodes map, and moving a
//! comment in a list file changes this file but not the ruleset's hash (no reload for nothing).
//! It names the hash of the ruleset it describes; a file for another ruleset is refused, never
//! trusted.
//!
//! The tables answer the lookup; this file only names the entry behind the answer: the most
//! specific entry that matches the key and carries the value the table returned, found by
//! the tables' own rules (most specific domain, longest prefix, exact address after case
//! folding).
//!
//! The format is text, one entry per line, in table order:
//!
//! ```text
//! mtac-sources 1 RULESET-HASH
//! file 0 policy.kdl
//! file 1 lists/domains.txt
//! table 0 mx.local-domains
//! example.com<TAB>0<TAB>0:12
//! *.example.net<TAB>0<TAB>1:3
//! ```
//!
//! (entry: key, value, file number and line; a file is named once, so a million entries of one
//! list cost their keys and not a million copies of its path).

use crate::diag::SourceFile;
use crate::emit::EntryOrigin;
use crate::lower::Pos;
use ipnet::IpNet;
use mtac_ruleset::eval::Lookup;
use mtac_ruleset::model::{TableId, TableKind};
use mtac_ruleset::Ruleset;
use std::cell::RefCell;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

const MAGIC: &str = "mtac-sources 1";

/// One table entry: as the policy wrote it (`*.` for a domain with its subdomains), its value
/// in the table, and where: an index into [`EntrySources::files`] and a 1-based line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceEntry {
    pub key: String,
    pub value: u32,
    pub file: u32,
    pub line: u32,
}

/// Every table's entries and their sources, for one ruleset.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntrySources {
    /// The hash of the ruleset these entries were compiled into.
    pub ruleset_hash: String,
    /// The policy's files, as its diagnostics name them.
    pub files: Vec<String>,
    /// Same order as the policy's tables.
    pub tables: Vec<(String, Vec<SourceEntry>)>,
}

/// `mx.mtac` → `mx.mtac.sources`.
pub fn path_for(ruleset: &Path) -> PathBuf {
    let mut name = ruleset.as_os_str().to_owned();
    name.push(".sources");
    PathBuf::from(name)
}

impl EntrySources {
    /// Names each entry's source: `file:line` for list files, the policy's line for inline values.
    pub(crate) fn new(
        ruleset_hash: String,
        names: impl Iterator<Item = String>,
        origins: Vec<Vec<EntryOrigin>>,
        files: &[SourceFile],
    ) -> EntrySources {
        let tables = names
            .zip(origins)
            .map(|(name, entries)| {
                let entries = entries
                    .into_iter()
                    .map(|e| {
                        let line = match (e.origin.pos, files.get(e.origin.file)) {
                            (Pos::Line(line), _) => line,
                            (Pos::Span(span), Some(file)) => {
                                u32::try_from(file.line_col(span.offset()).0).unwrap_or(u32::MAX)
                            }
                            (Pos::Span(_), None) => 0,
                        };
                        let file = u32::try_from(e.origin.file).unwrap_or(u32::MAX);
                        SourceEntry { key: e.key, value: e.value, file, line }
                    })
                    .collect();
                (name, entries)
            })
            .collect();
        EntrySources { ruleset_hash, files: files.iter().map(|f| f.name.clone()).collect(), tables }
    }

    /// `file:line` of an entry.
    pub fn source(&self, entry: &SourceEntry) -> String {
        let file = usize::try_from(entry.file).ok().and_then(|i| self.files.get(i)).map_or("?", String::as_str);
        format!("{file}:{}", entry.line)
    }

    /// The file's text: deterministic, like the ruleset itself.
    pub fn render(&self) -> String {
        let mut out = format!("{MAGIC} {}\n", self.ruleset_hash);
        for (index, name) in self.files.iter().enumerate() {
            let _ = writeln!(out, "file {index} {name}");
        }
        for (index, (name, entries)) in self.tables.iter().enumerate() {
            let _ = writeln!(out, "table {index} {name}");
            for e in entries {
                let _ = writeln!(out, "{}\t{}\t{}:{}", e.key, e.value, e.file, e.line);
            }
        }
        out
    }

    pub fn parse(text: &str) -> Result<EntrySources, String> {
        let mut lines = text.lines().enumerate();
        let ruleset_hash = match lines.next() {
            Some((_, first)) => first
                .strip_prefix(MAGIC)
                .and_then(|rest| rest.strip_prefix(' '))
                .filter(|hash| !hash.is_empty() && hash.bytes().all(|b| b.is_ascii_hexdigit()))
                .ok_or_else(|| format!("line 1: not a sources file (expected `{MAGIC} HASH`)"))?,
            None => return Err("the file is empty".to_owned()),
        };
        let mut sources = EntrySources { ruleset_hash: ruleset_hash.to_owned(), ..EntrySources::default() };
        for (index, line) in lines {
            let bad = |what: &str| format!("line {}: {what}", index + 1);
            if let Some(rest) = line.strip_prefix("file ") {
                let (number, name) = rest.split_once(' ').ok_or_else(|| bad("expected `file N PATH`"))?;
                if number.parse::<usize>().ok() != Some(sources.files.len()) || !sources.tables.is_empty() {
                    return Err(bad("files out of order"));
                }
                sources.files.push(name.to_owned());
                continue;
            }
            if let Some(rest) = line.strip_prefix("table ") {
                let (number, name) = rest.split_once(' ').ok_or_else(|| bad("expected `table N NAME`"))?;
                if number.parse::<usize>().ok() != Some(sources.tables.len()) {
                    return Err(bad("tables out of order"));
                }
                sources.tables.push((name.to_owned(), Vec::new()));
                continue;
            }
            let mut fields = line.splitn(3, '\t');
            let (Some(key), Some(value), Some(source)) = (fields.next(), fields.next(), fields.next()) else {
                return Err(bad("expected KEY<TAB>VALUE<TAB>SOURCE"));
            };
            let value = value.parse().map_err(|_| bad("the value is not a number"))?;
            let (file, line) = source
                .split_once(':')
                .and_then(|(file, line)| Some((file.parse::<u32>().ok()?, line.parse::<u32>().ok()?)))
                .filter(|&(file, _)| usize::try_from(file).is_ok_and(|f| f < sources.files.len()))
                .ok_or_else(|| bad("the source is not FILE-NUMBER:LINE of a listed file"))?;
            let (_, entries) = sources.tables.last_mut().ok_or_else(|| bad("an entry before any `table` line"))?;
            entries.push(SourceEntry { key: key.to_owned(), value, file, line });
        }
        Ok(sources)
    }

    /// Reads `RULESET.sources` for this ruleset; an error says why there is no answer (no file,
    /// a file for another ruleset, a damaged file).
    pub fn load_for(ruleset_path: &Path, ruleset: &Ruleset) -> Result<EntrySources, String> {
        let path = path_for(ruleset_path);
        let text = std::fs::read_to_string(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                format!("{} not found (`mtac build` writes it beside the ruleset)", path.display())
            }
            _ => format!("{}: {e}", path.display()),
        })?;
        let sources = EntrySources::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let hash = ruleset.hash_hex();
        if sources.ruleset_hash != hash {
            return Err(format!(
                "{} describes ruleset {}, not {hash} (build again to have both)",
                path.display(),
                sources.ruleset_hash
            ));
        }
        if sources.tables.len() != ruleset.policy().tables.len()
            || sources.tables.iter().zip(&ruleset.policy().tables).any(|((name, _), info)| *name != info.name)
        {
            return Err(format!("{}: its tables are not the ruleset's", path.display()));
        }
        Ok(sources)
    }

    /// The entries behind a table's answer `value` to `asked`: the most specific entries that
    /// match (more than one when two sources list the same key), preferring those that carry
    /// `value`. Empty when nothing in the sources matches.
    pub fn matched(&self, table: TableId, kind: TableKind, asked: &Asked, value: u32) -> Vec<&SourceEntry> {
        let Some((_, entries)) = usize::try_from(table).ok().and_then(|i| self.tables.get(i)) else {
            return Vec::new();
        };
        let asked = asked.folded();
        let mut best: Vec<&SourceEntry> = Vec::new();
        let mut best_rank = 0usize;
        for entry in entries {
            let Some(rank) = specificity(kind, &asked, &entry.key) else { continue };
            // Rank 0 is reserved for "no match yet": every match ranks 1 or more.
            let rank = rank + 1;
            if rank > best_rank {
                best_rank = rank;
                best.clear();
            }
            if rank == best_rank {
                best.push(entry);
            }
        }
        if best.iter().any(|e| e.value == value) {
            best.retain(|e| e.value == value);
        }
        best
    }
}

/// One lookup a decision made, as [`Recorder`] saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asked {
    Domain(String),
    Address(String),
    /// Whether any address of this domain is in an address table.
    AddressDomain(String),
    Ip(IpAddr),
}

impl Asked {
    /// As the tables compare it: case and a trailing dot folded, an IPv4-mapped IPv6 address
    /// as IPv4. Done once per lookup, not once per entry compared.
    fn folded(&self) -> Asked {
        match self {
            Asked::Domain(d) => Asked::Domain(fold_domain(d)),
            Asked::Address(a) => Asked::Address(fold_address(a)),
            Asked::AddressDomain(d) => Asked::AddressDomain(fold_domain(d)),
            Asked::Ip(IpAddr::V6(v6)) => Asked::Ip(v6.to_ipv4_mapped().map_or(IpAddr::V6(*v6), IpAddr::V4)),
            Asked::Ip(ip) => Asked::Ip(*ip),
        }
    }
}

impl std::fmt::Display for Asked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Asked::Domain(d) | Asked::Address(d) => f.write_str(d),
            Asked::AddressDomain(d) => write!(f, "@{d}"),
            Asked::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// How specific a match `key` is for `asked` ([`Asked::folded`]; higher is more specific), by
/// the table's own rules; `None` when it does not match.
fn specificity(kind: TableKind, asked: &Asked, key: &str) -> Option<usize> {
    match (kind, asked) {
        (TableKind::Domains, Asked::Domain(domain)) => {
            let (listed, subdomains) = match key.strip_prefix("*.") {
                Some(rest) => (rest, true),
                None => (key, false),
            };
            let matches = domain == listed
                || (subdomains
                    && domain.len() > listed.len()
                    && domain.ends_with(listed)
                    && domain.as_bytes().get(domain.len() - listed.len() - 1) == Some(&b'.'));
            matches.then_some(listed.len())
        }
        (TableKind::Addresses, Asked::Address(address)) => (fold_address(key) == *address).then_some(0),
        (TableKind::Addresses, Asked::AddressDomain(domain)) => {
            key.rsplit_once('@').is_some_and(|(_, d)| fold_domain(d) == *domain).then_some(0)
        }
        (TableKind::Prefixes, Asked::Ip(ip)) => {
            let net: IpNet = key.parse().ok()?;
            net.contains(ip).then_some(usize::from(net.prefix_len()))
        }
        _ => None,
    }
}

/// The tables' folding: ASCII case and one trailing dot do not count (see `mtac_ruleset::tables`).
fn fold_domain(domain: &str) -> String {
    domain.strip_suffix('.').unwrap_or(domain).to_ascii_lowercase()
}

fn fold_address(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) => format!("{}@{}", local.to_ascii_lowercase(), fold_domain(domain)),
        None => address.to_ascii_lowercase(),
    }
}

/// A lookup and what it found, in the order the evaluation asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Looked {
    pub table: TableId,
    pub asked: Asked,
    /// The table's value; `None` when nothing matched.
    pub value: Option<u32>,
}

/// The ruleset's own lookups, recorded: `explain` evaluates through this and then names the
/// entry behind each answer, so what it shows is what the evaluator asked, not a guess.
pub struct Recorder<'r> {
    ruleset: &'r Ruleset,
    looked: RefCell<Vec<Looked>>,
}

impl<'r> Recorder<'r> {
    pub fn new(ruleset: &'r Ruleset) -> Recorder<'r> {
        Recorder { ruleset, looked: RefCell::new(Vec::new()) }
    }

    /// Every distinct lookup, first asked first.
    pub fn into_looked(self) -> Vec<Looked> {
        self.looked.into_inner()
    }

    fn record(&self, table: TableId, asked: Asked, value: Option<u32>) {
        let mut looked = self.looked.borrow_mut();
        if !looked.iter().any(|l| l.table == table && l.asked == asked) {
            looked.push(Looked { table, asked, value });
        }
    }
}

impl Lookup for Recorder<'_> {
    fn domain(&self, table: TableId, domain: &str) -> Option<u32> {
        let value = self.ruleset.domain(table, domain);
        self.record(table, Asked::Domain(domain.to_owned()), value);
        value
    }

    fn address(&self, table: TableId, address: &str) -> Option<u32> {
        let value = self.ruleset.address(table, address);
        self.record(table, Asked::Address(address.to_owned()), value);
        value
    }

    fn address_domain(&self, table: TableId, domain: &str) -> bool {
        let found = self.ruleset.address_domain(table, domain);
        self.record(table, Asked::AddressDomain(domain.to_owned()), found.then_some(0));
        found
    }

    fn prefix(&self, table: TableId, ip: IpAddr) -> Option<u32> {
        let value = self.ruleset.prefix(table, ip);
        self.record(table, Asked::Ip(ip), value);
        value
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn entry(key: &str, value: u32, file: u32, line: u32) -> SourceEntry {
        SourceEntry { key: key.to_owned(), value, file, line }
    }

    fn sample() -> EntrySources {
        EntrySources {
            ruleset_hash: "ab12".to_owned(),
            files: ["p.kdl", "d.txt", "a.txt", "u.txt"].map(str::to_owned).to_vec(),
            tables: vec![
                ("mx.local-domains".to_owned(), vec![entry("example.com", 0, 0, 3), entry("*.example.net", 0, 1, 1)]),
                ("mx.access".to_owned(), vec![entry("192.0.2.0/24", 0, 2, 1), entry("192.0.2.128/25", 1, 2, 2)]),
                ("mx.local-addresses".to_owned(), vec![entry("John@Example.com", 0, 3, 9)]),
            ],
        }
    }

    #[test]
    fn a_rendered_file_parses_back() {
        let sources = sample();
        assert_eq!(EntrySources::parse(&sources.render()), Ok(sources));
        assert!(EntrySources::parse("").is_err());
        assert!(EntrySources::parse("mtac-sources 1 zz\n").is_err());
        let err = EntrySources::parse("mtac-sources 1 ab\nexample.com\t0\tp:1\n").unwrap_err();
        assert!(err.starts_with("line 2:"), "{err}");
        let err = EntrySources::parse("mtac-sources 1 ab\ntable 1 x\n").unwrap_err();
        assert!(err.contains("out of order"), "{err}");
        let err = EntrySources::parse("mtac-sources 1 ab\nfile 0 p\ntable 0 x\nexample.com\t0\t1:3\n").unwrap_err();
        assert!(err.contains("of a listed file"), "{err}");
    }

    #[test]
    fn the_entry_behind_an_answer_is_found_by_the_tables_rules() {
        let s = sample();
        let keys = |found: Vec<&SourceEntry>| found.into_iter().map(|e| s.source(e)).collect::<Vec<_>>();
        let domain = |d: &str| Asked::Domain(d.to_owned());
        assert_eq!(keys(s.matched(0, TableKind::Domains, &domain("Example.COM."), 0)), ["p.kdl:3"]);
        assert!(s.matched(0, TableKind::Domains, &domain("mail.example.com"), 0).is_empty());
        assert_eq!(keys(s.matched(0, TableKind::Domains, &domain("mx.example.net"), 0)), ["d.txt:1"]);
        assert_eq!(keys(s.matched(0, TableKind::Domains, &domain("example.net"), 0)), ["d.txt:1"]);
        assert!(s.matched(0, TableKind::Domains, &domain("badexample.net"), 0).is_empty());
        let ip = |text: &str| Asked::Ip(text.parse().unwrap());
        assert_eq!(keys(s.matched(1, TableKind::Prefixes, &ip("192.0.2.200"), 1)), ["a.txt:2"]);
        assert_eq!(keys(s.matched(1, TableKind::Prefixes, &ip("::ffff:192.0.2.7"), 0)), ["a.txt:1"]);
        let address = Asked::Address("john@example.COM".to_owned());
        assert_eq!(keys(s.matched(2, TableKind::Addresses, &address, 0)), ["u.txt:9"]);
        let of_domain = Asked::AddressDomain("example.com".to_owned());
        assert_eq!(keys(s.matched(2, TableKind::Addresses, &of_domain, 0)), ["u.txt:9"]);
        assert!(s.matched(7, TableKind::Addresses, &of_domain, 0).is_empty());
    }
}
