//! # mtac-ruleset: the compiled policy file
//!
//! `mtac build` turns a KDL policy into one ruleset file; every node of a farm memory-maps that
//! file and decides from it. This crate is the file format and nothing else that would tie it to
//! either side: no KDL (that is the compiler's), no tokio (that is the runtime's).
//!
//! - [`container`]: the byte layout (header, blake3 hash of the payload, section table), the
//!   deterministic writer and atomic file replacement, and the verifying reader.
//! - [`tables`]: zero-copy lookup tables over the mapped bytes: domains and addresses in fst maps,
//!   IPv4/IPv6 prefixes as flattened intervals with longest-prefix match.
//! - [`model`]: the compiled policy itself (farms, limits, the decision program), stored
//!   postcard-encoded in the `Policy` section.
//! - [`eval`]: the evaluator of the decision program, shared by `mtac run`, `explain` and `test` so
//!   the three can never disagree.
//! - [`journal`]: the decision journal's format (every evaluator call's facts and outcome), its
//!   reader and its rotating writer; [`replay`]: two decisions compared (`mtac diff`).
//! - [`rules`]: every rule name a refusal can carry (stage, reply class, policy or node), the
//!   one list that logs, metrics, `mtac test` and the docs read.
//!
//! ```no_run
//! let ruleset = mtac_ruleset::Ruleset::open(std::path::Path::new("/etc/mtac/ruleset.mtac"))?;
//! println!("serving ruleset {}", ruleset.hash_hex());
//! # Ok::<(), mtac_ruleset::LoadError>(())
//! ```
//!
//! **Invariant:** a mapped ruleset is never mutated; a new policy is a new file, swapped in by
//! rename. **Invariant:** loading trusts nothing in the file: the hash covers every byte of the
//! payload, every table's structure is checked when it is opened, and every table reference in the
//! policy is checked against the tables present.

#![deny(unsafe_code)]

pub mod container;
pub mod dkim;
pub mod eval;
pub mod filters;
mod fst_nodes;
#[doc(hidden)]
pub mod fuzz;
pub mod journal;
pub mod model;
pub mod replay;
pub mod rules;
pub mod sender_auth;
pub mod syntax;
pub mod tables;

use container::{Container, ContainerError, ContainerWriter, SectionKind, WriteError};
use model::{Check, Policy, Relay, TableId, TableKind};
use std::net::IpAddr;
use std::path::Path;
use tables::{
    AddressTable, AddressTableBuilder, DomainTable, DomainTableBuilder, PrefixTable, PrefixTableBuilder, TableError,
};

/// The version of the program that wrote a ruleset, recorded in its header.
pub const COMPILER_VERSION: &str = concat!("mtac ", env!("CARGO_PKG_VERSION"));

/// What this build's ruleset bytes mean: a hash of the policy model and the tables' layout
/// (ruleset/build.rs). Written into every ruleset; a ruleset with another one is refused.
pub const MODEL_FINGERPRINT: &str = env!("MTAC_MODEL_FINGERPRINT");

/// Opens one kind of table over its section's bytes.
type TableOpener = fn(container::Bytes) -> Result<Table, TableError>;

/// A loaded table.
#[derive(Debug)]
pub enum Table {
    Domains(DomainTable),
    Addresses(AddressTable),
    Prefixes(PrefixTable),
}

impl Table {
    pub fn kind(&self) -> TableKind {
        match self {
            Table::Domains(_) => TableKind::Domains,
            Table::Addresses(_) => TableKind::Addresses,
            Table::Prefixes(_) => TableKind::Prefixes,
        }
    }

    pub fn byte_len(&self) -> usize {
        match self {
            Table::Domains(t) => t.byte_len(),
            Table::Addresses(t) => t.byte_len(),
            Table::Prefixes(t) => t.byte_len(),
        }
    }
}

/// Why a ruleset could not be loaded. The running ruleset is kept whenever this is returned.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Container(#[from] ContainerError),
    #[error("the ruleset has no policy section; it was not written by `mtac build`")]
    NoPolicy,
    #[error(
        "the ruleset was built by an mtac whose policy model differs (model {found}, this node reads {expected}): rebuild it with this node's mtac (`mtac --version`)"
    )]
    Model { found: String, expected: &'static str },
    #[error("the policy section does not decode ({0}); rebuild the ruleset with this version of mtac")]
    Policy(postcard::Error),
    #[error("table {id} ({name}) is missing or damaged: {reason}")]
    Table { id: TableId, name: String, reason: String },
    #[error("farm `{farm}` refers to {what}, which the ruleset does not contain")]
    Dangling { farm: String, what: String },
}

/// A verified, loaded ruleset: the decoded policy plus its mapped tables.
#[derive(Debug)]
pub struct Ruleset {
    container: Container,
    policy: Policy,
    tables: Vec<Table>,
}

impl Ruleset {
    /// Map and verify the file at `path`.
    pub fn open(path: &Path) -> Result<Ruleset, LoadError> {
        Ruleset::from_container(Container::open(path)?)
    }

    /// Load the file at `path` as a serving node must: from a sealed private copy, so that no
    /// later change to the file (an in-place `cp`, a half-written push) can reach the ruleset in
    /// use. See [`Container::open_sealed`].
    pub fn open_sealed(path: &Path) -> Result<Ruleset, LoadError> {
        Ruleset::from_container(Container::open_sealed(path)?)
    }

    /// Verify a ruleset held in memory (`mtac run --policy` compiles without a file).
    pub fn from_vec(bytes: Vec<u8>) -> Result<Ruleset, LoadError> {
        Ruleset::from_container(Container::from_vec(bytes)?)
    }

    fn from_container(container: Container) -> Result<Ruleset, LoadError> {
        // Before decoding: postcard would read another model's bytes as some other policy.
        let model = container.section(SectionKind::Model, 0);
        if model.as_ref().map(|m| m.as_slice()) != Some(MODEL_FINGERPRINT.as_bytes()) {
            let found = model.map_or_else(
                || "none, from an older mtac".to_owned(),
                |m| String::from_utf8_lossy(m.as_slice()).chars().take(32).collect(),
            );
            return Err(LoadError::Model { found, expected: MODEL_FINGERPRINT });
        }
        let policy_bytes = container.section(SectionKind::Policy, 0).ok_or(LoadError::NoPolicy)?;
        let policy: Policy = postcard::from_bytes(policy_bytes.as_slice()).map_err(LoadError::Policy)?;
        let mut tables = Vec::with_capacity(policy.tables.len());
        for (index, info) in policy.tables.iter().enumerate() {
            let id = u32::try_from(index).map_err(|_| LoadError::Table {
                id: u32::MAX,
                name: info.name.clone(),
                reason: "too many tables".to_owned(),
            })?;
            let fail = |reason: String| LoadError::Table { id, name: info.name.clone(), reason };
            let (kind, open): (SectionKind, TableOpener) = match info.kind {
                TableKind::Domains => (SectionKind::DomainTable, |b| DomainTable::new(b).map(Table::Domains)),
                TableKind::Addresses => (SectionKind::AddressTable, |b| AddressTable::new(b).map(Table::Addresses)),
                TableKind::Prefixes => (SectionKind::PrefixTable, |b| PrefixTable::new(b).map(Table::Prefixes)),
            };
            let bytes = container.section(kind, id).ok_or_else(|| fail("section missing".to_owned()))?;
            tables.push(open(bytes).map_err(|e| fail(e.to_string()))?);
        }
        let ruleset = Ruleset { container, policy, tables };
        ruleset.check_references()?;
        Ok(ruleset)
    }

    /// Every table a farm names must exist with the right kind; every access value must index an action.
    fn check_references(&self) -> Result<(), LoadError> {
        for farm in &self.policy.farms {
            let dangling = |what: String| LoadError::Dangling { farm: farm.name.clone(), what };
            let expect = |table: Option<TableId>, kind: TableKind, role: &str| -> Result<(), LoadError> {
                if let Some(id) = table {
                    let found = self.table(id).map(Table::kind);
                    if found != Some(kind) {
                        return Err(dangling(format!("{role} table {id}")));
                    }
                }
                Ok(())
            };
            expect(farm.local_domains, TableKind::Domains, "local-domains")?;
            expect(farm.local_addresses, TableKind::Addresses, "local-addresses")?;
            expect(farm.access, TableKind::Prefixes, "access")?;
            expect(farm.relay_clients, TableKind::Prefixes, "relay-clients")?;
            if let Some(g) = &farm.greylist {
                expect(g.whitelist_clients, TableKind::Prefixes, "greylist client whitelist")?;
                expect(g.whitelist_senders, TableKind::Domains, "greylist sender whitelist")?;
                expect(g.whitelist_recipients, TableKind::Addresses, "greylist recipient whitelist")?;
            }
            for stage in model::Stage::ALL {
                for step in farm.program.stage(stage) {
                    if let Check::SenderDeny { domains, addresses } = &step.check {
                        expect(*domains, TableKind::Domains, "sender deny")?;
                        expect(*addresses, TableKind::Addresses, "sender deny")?;
                    }
                }
            }
            if let Some(Table::Prefixes(access)) = farm.access.and_then(|id| self.table(id)) {
                // Values are indices into access_actions; a table larger than the action list is damaged.
                if access.is_empty() != farm.access_actions.is_empty() {
                    return Err(dangling("access actions".to_owned()));
                }
            }
            if let Relay::Backends(backends) = &farm.relay {
                if backends.is_empty() {
                    return Err(dangling("a back end".to_owned()));
                }
            }
        }
        Ok(())
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn container(&self) -> &Container {
        &self.container
    }

    pub fn hash_hex(&self) -> String {
        self.container.hash_hex()
    }

    pub fn table(&self, id: TableId) -> Option<&Table> {
        self.tables.get(usize::try_from(id).ok()?)
    }

    pub fn tables(&self) -> &[Table] {
        &self.tables
    }

    /// The farm called `name`.
    pub fn farm(&self, name: &str) -> Option<&model::Farm> {
        self.policy.farms.iter().find(|f| f.name == name)
    }
}

impl eval::Lookup for Ruleset {
    fn domain(&self, table: TableId, domain: &str) -> Option<u32> {
        match self.table(table)? {
            Table::Domains(t) => t.lookup(domain),
            _ => None,
        }
    }

    fn address(&self, table: TableId, address: &str) -> Option<u32> {
        match self.table(table)? {
            Table::Addresses(t) => t.lookup(address),
            _ => None,
        }
    }

    fn address_domain(&self, table: TableId, domain: &str) -> bool {
        match self.table(table) {
            Some(Table::Addresses(t)) => t.contains_domain(domain),
            _ => false,
        }
    }

    fn prefix(&self, table: TableId, ip: IpAddr) -> Option<u32> {
        match self.table(table)? {
            Table::Prefixes(t) => t.lookup(ip),
            _ => None,
        }
    }
}

/// A table to write, in the order of `Policy::tables`.
pub enum TableInput {
    Domains(DomainTableBuilder),
    Addresses(AddressTableBuilder),
    Prefixes(PrefixTableBuilder),
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("table {id}: {source}")]
    Table { id: TableId, source: TableError },
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error("the policy does not encode: {0}")]
    Encode(postcard::Error),
    #[error("the policy names {named} tables but {given} were given")]
    TableCount { named: usize, given: usize },
}

impl TableInput {
    /// Entries added (before deduplication): what building it costs.
    fn len(&self) -> usize {
        match self {
            TableInput::Domains(b) => b.len(),
            TableInput::Addresses(b) => b.len(),
            TableInput::Prefixes(b) => b.len(),
        }
    }
}

type BuiltTable = (SectionKind, Result<Vec<u8>, TableError>);

fn build_table(table: TableInput) -> BuiltTable {
    match table {
        TableInput::Domains(b) => (SectionKind::DomainTable, b.build()),
        TableInput::Addresses(b) => (SectionKind::AddressTable, b.build()),
        TableInput::Prefixes(b) => (SectionKind::PrefixTable, b.build()),
    }
}

/// Builds every table, largest first, on as many threads as there are
/// cores, and returns them in their original order.
fn build_tables(tables: Vec<TableInput>) -> Vec<BuiltTable> {
    let threads = std::thread::available_parallelism().map_or(1, usize::from).min(tables.len());
    if threads <= 1 {
        return tables.into_iter().map(build_table).collect();
    }
    let mut queue: Vec<(usize, TableInput)> = tables.into_iter().enumerate().collect();
    // Popped from the end: the largest last in the vector.
    queue.sort_by_key(|(_, t)| t.len());
    let queue = std::sync::Mutex::new(queue);
    let next = || queue.lock().ok().and_then(|mut q| q.pop());
    let mut built: Vec<(usize, BuiltTable)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    while let Some((index, table)) = next() {
                        done.push((index, build_table(table)));
                    }
                    done
                })
            })
            .collect();
        // A builder that panicked is a bug: let it reach the caller rather
        // than write a ruleset without its table.
        workers.into_iter().flat_map(|w| w.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    });
    built.sort_by_key(|(index, _)| *index);
    built.into_iter().map(|(_, b)| b).collect()
}

/// Serialise a policy and its tables into ruleset bytes. Same input, same bytes.
pub fn build(policy: &Policy, tables: Vec<TableInput>) -> Result<Vec<u8>, BuildError> {
    if policy.tables.len() != tables.len() {
        return Err(BuildError::TableCount { named: policy.tables.len(), given: tables.len() });
    }
    let mut writer = ContainerWriter::new();
    writer.add_section(SectionKind::Model, 0, MODEL_FINGERPRINT.as_bytes().to_vec())?;
    let encoded = postcard::to_stdvec(policy).map_err(BuildError::Encode)?;
    writer.add_section(SectionKind::Policy, 0, encoded)?;
    // Tables are independent: build them on all cores (a farm of a million
    // addresses and a million networks builds its two big tables at once).
    // Each comes out the same whatever thread builds it.
    let built = build_tables(tables);
    for (index, (kind, bytes)) in built.into_iter().enumerate() {
        let id = u32::try_from(index).unwrap_or(u32::MAX);
        let bytes = bytes.map_err(|source| BuildError::Table { id, source })?;
        writer.add_section(kind, id, bytes)?;
    }
    Ok(writer.to_bytes(COMPILER_VERSION))
}
