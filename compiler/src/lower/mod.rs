//! Lowering: KDL documents (the policy and its includes) → a typed [`Draft`] with spans.
//!
//! Every node and property is checked against the language described in docs/policy.md. Unknown
//! names get a "did you mean"; wrong types, bad CIDRs, domains and addresses get a diagnostic that
//! points at the value. Lowering never stops at the first problem: a bad node is reported and
//! skipped, and the rest of the policy is still read.
//!
//! One file per concern, each an `impl Lowerer` block:
//! - `mod.rs` (this file): the [`Lowerer`], reading the policy, and the dispatch of top-level and
//!   farm nodes: each to the lowering function `crate::nodes` gives its name, with the
//!   once-per-farm check and, for names the table lacks, "unknown node" with a suggestion;
//! - `ir.rs`: the draft IR the later passes read; `read.rs`: KDL readers, typed values, value parsers;
//! - `include.rs`: includes and standard policies; `lists.rs`: list nodes and `file=` lists;
//! - one file per group of docs/policy.md section 2: `top.rs`, `listen.rs`, `checks.rs`,
//!   `content.rs`, `submission.rs`, `relay.rs`.

mod checks;
mod content;
mod dkim;
mod filters;
mod include;
mod ir;
mod journal;
mod listen;
mod lists;
mod read;
mod recipient_domain;
mod relay;
mod screen;
mod sender_auth;
mod shadow;
mod submission;
mod top;

pub use include::STANDARD_POLICIES;
pub use ir::{
    AddressEntry, DomainEntry, Draft, DraftBan, DraftDnsbl, DraftFarm, DraftGreylist, DraftLimits, DraftRelay,
    DraftScanner, DraftScreen, DraftTls, DraftZone, HeloRules, NetEntry, Origin, Pos, SenderRules, Sources,
};
pub use read::{parse_answer_pattern, parse_duration, parse_reply, parse_size};
pub use sender_auth::DraftDmarc;

use crate::diag::{did_you_mean, Diag, Reporter};
use crate::files::{self, Trees};
use crate::nodes::{self, Lowering, Place};
use include::stack_key;
use kdl::{KdlDocument, KdlNode};
use miette::SourceSpan;
use mtac_ruleset::model::{BarePolicy, FarmKind};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Reads the policy and everything it names, and lowers it.
pub struct Lowerer {
    /// The files read and the diagnostics so far; the later passes take it over ([`Lowerer::finish`]).
    pub reporter: Reporter,
    /// Files being included: their identity (canonical path) and their name as written.
    include_stack: Vec<(PathBuf, String)>,
    /// `file=` lists already read, by canonical path (a list may be named twice).
    list_cache: HashMap<PathBuf, usize>,
    /// Included files already read, by canonical path: a fragment shared by farms is read once.
    include_cache: HashMap<PathBuf, usize>,
    /// Includes so far, each time counted (`files::MAX_INCLUDES`).
    includes: usize,
    /// Where included and listed files may come from.
    trees: Trees,
}

/// A node and the file it came from: what every lowering function reads.
#[derive(Clone, Copy)]
pub struct At<'a> {
    node: &'a KdlNode,
    file: usize,
}

impl Default for Lowerer {
    fn default() -> Self {
        Lowerer::new()
    }
}

impl Lowerer {
    pub fn new() -> Self {
        Lowerer {
            reporter: Reporter::default(),
            include_stack: Vec::new(),
            list_cache: HashMap::new(),
            include_cache: HashMap::new(),
            includes: 0,
            trees: Trees::default(),
        }
    }

    /// Let includes and lists come from `dir` too, besides the policy's own directory.
    pub fn allow_dir(&mut self, dir: &Path) {
        if let Err(e) = self.trees.allow(dir) {
            self.reporter.push(
                Diag::error("mtac::io", format!("cannot allow directory {}: {e}", dir.display()))
                    .help("--allow-dir takes an existing directory"),
            );
        }
    }

    /// Lower the policy at `path` (read from disk).
    pub fn lower_path(&mut self, path: &Path) -> Option<Draft> {
        let text = match files::read_regular(path, files::POLICY_FILE_LIMIT) {
            Ok(text) => text,
            Err(why) => {
                self.reporter.push(
                    Diag::error("mtac::io", format!("cannot read {}: {why}", path.display()))
                        .help("give the path of a policy file (.kdl)"),
                );
                return None;
            }
        };
        self.lower_text(&path.display().to_string(), text, path.parent().map(Path::to_path_buf))
    }

    /// Lower policy text; `dir` is where relative includes and lists are found.
    pub fn lower_text(&mut self, name: &str, text: String, dir: Option<PathBuf>) -> Option<Draft> {
        let dir = dir.unwrap_or_else(|| PathBuf::from("."));
        if let Err(e) = self.trees.allow_policy_dir(&dir) {
            self.reporter
                .push(Diag::error("mtac::io", format!("cannot resolve the policy's directory {}: {e}", dir.display())));
        }
        let file = self.reporter.add_file(name, text);
        let doc = self.parse(file)?;
        let mut draft = Draft::default();
        self.include_stack.push((stack_key(name), name.to_owned()));
        self.top_level(&doc, file, &dir, &mut draft);
        self.include_stack.pop();
        Some(draft)
    }

    /// Done lowering: the files read and the diagnostics, for the passes that follow.
    pub fn finish(self) -> Reporter {
        self.reporter
    }

    fn parse(&mut self, file: usize) -> Option<KdlDocument> {
        let source = self.reporter.files.get(file)?.clone();
        match KdlDocument::parse_v2(&source.text) {
            Ok(doc) => Some(doc),
            Err(error) => {
                for d in &error.diagnostics {
                    let message = d.message.clone().unwrap_or_else(|| "invalid KDL".to_owned());
                    let mut diag = Diag::error("mtac::kdl::syntax", format!("KDL syntax: {message}")).at(
                        &source,
                        d.span,
                        d.label.clone().unwrap_or_else(|| "here".to_owned()),
                    );
                    diag = diag.help(d.help.clone().unwrap_or_else(|| {
                        "policies are KDL 2.0: strings in \"quotes\", booleans as #true/#false".to_owned()
                    }));
                    self.reporter.push(diag);
                }
                if error.diagnostics.is_empty() {
                    self.reporter.push(Diag::error("mtac::kdl::syntax", "KDL syntax error").at(
                        &source,
                        SourceSpan::new(0.into(), 0),
                        "in this file",
                    ));
                }
                None
            }
        }
    }

    // ----- top level -----------------------------------------------------------------------------

    /// Each node by the lowering the table gives it at the top level.
    fn top_level(&mut self, doc: &KdlDocument, file: usize, dir: &Path, draft: &mut Draft) {
        for node in doc.nodes() {
            let at = At { node, file };
            match nodes::find(Place::Top, node.name().value()).map(|node| node.lower) {
                Some(Lowering::Top(lower)) => lower(self, at, dir, draft),
                Some(Lowering::Include) => {
                    self.shape(at, &[], 1, false);
                    if let Some((doc, file, dir)) = self.include(at, dir) {
                        self.top_level(&doc, file, &dir, draft);
                        self.include_stack.pop();
                    }
                }
                // `Farm` and `ByParent` never stand at the top level (a test of `nodes` proves it).
                _ => self.unknown_node(at, &nodes::names(Place::Top), "the top level"),
            }
        }
    }

    // ----- farms ---------------------------------------------------------------------------------

    /// `farm`: read it, and refuse a second farm of the same name.
    pub(crate) fn farm(&mut self, at: At<'_>, dir: &Path, draft: &mut Draft) {
        let Some(farm) = self.read_farm(at, dir) else { return };
        if let Some(first) = draft.farms.iter().find(|f| f.name == farm.name) {
            let first_span = self.reporter.span_of(first.origin);
            let source = self.reporter.source(at.file);
            self.reporter.push(
                Diag::error("mtac::farm::duplicate", format!("farm `{}` is defined twice", farm.name))
                    .at(&source, self.reporter.span_of(farm.origin), "second definition")
                    .at(&source, first_span, "first definition")
                    .help("give each farm its own name"),
            );
        } else {
            draft.farms.push(farm);
        }
    }

    fn read_farm(&mut self, at: At<'_>, dir: &Path) -> Option<DraftFarm> {
        self.shape(at, &["kind"], 1, true);
        let name = self.one_string(at, "a name")?;
        let kind = match Self::prop(at, "kind") {
            Some(entry) => match self.string(entry, at.file, "`kind`")?.as_str() {
                "inbound-mx" => FarmKind::InboundMx,
                "submission" => FarmKind::Submission,
                other => {
                    let help = match did_you_mean(other, &["inbound-mx", "submission"]) {
                        Some(g) => format!("did you mean `{g}`?"),
                        None => "a farm is kind=\"inbound-mx\" or kind=\"submission\"".to_owned(),
                    };
                    self.reporter.err(
                        "mtac::farm::kind",
                        format!("unknown farm kind `{other}`"),
                        at.file,
                        entry.span(),
                        "unknown kind",
                        &help,
                    );
                    return None;
                }
            },
            None => {
                self.reporter.err(
                    "mtac::farm::kind",
                    format!("farm `{name}` has no kind"),
                    at.file,
                    at.node.span(),
                    "kind missing",
                    "add kind=\"inbound-mx\" (port 25, every check) or kind=\"submission\" (587/465, TLS and AUTH)",
                );
                return None;
            }
        };
        let mut farm = DraftFarm {
            name,
            origin: self.origin_of(at),
            kind,
            listeners: Vec::new(),
            limits: DraftLimits::default(),
            trust_loopback: false,
            local_domains: Vec::new(),
            local_domain_sources: Sources::default(),
            local_addresses: Vec::new(),
            local_address_sources: Sources::default(),
            role_accounts: Vec::new(),
            access: Vec::new(),
            access_sources: Sources::default(),
            access_stage: None,
            relay_clients: Vec::new(),
            relay_client_sources: Sources::default(),
            helo: HeloRules::default(),
            sender: SenderRules::default(),
            recipient_fqdn: false,
            dnsbl: None,
            bans: Vec::new(),
            shadow: Vec::new(),
            recipient_domains: Vec::new(),
            greylist: None,
            scanners: Vec::new(),
            scan_max_size: None,
            scan_oversize_pass: None,
            verdict_headers: None,
            authserv_id: None,
            mime: None,
            filters: Vec::new(),
            relay: None,
            tls: None,
            auth: None,
            dkim_sign: None,
            directory: None,
            bare_line_ends: BarePolicy::Reject,
            client_reverse_dns: None,
            ban_response: None,
            rate_limits: Vec::new(),
            tarpit_ms: 0,
            screen: DraftScreen::default(),
            spf: None,
            dkim: None,
            dmarc: None,
        };
        let mut seen: HashMap<String, (usize, SourceSpan)> = HashMap::new();
        let children: Vec<At<'_>> = Self::children(at).collect();
        self.farm_body(&children, dir, &mut farm, &mut seen);
        Some(farm)
    }

    fn farm_body(
        &mut self,
        nodes: &[At<'_>],
        dir: &Path,
        farm: &mut DraftFarm,
        seen: &mut HashMap<String, (usize, SourceSpan)>,
    ) {
        for &at in nodes {
            let name = at.node.name().value();
            let Some(node) = nodes::find(Place::Farm, name) else {
                self.unknown_node(at, &nodes::names(Place::Farm), "a farm");
                continue;
            };
            if let Some(key) = node.once {
                if let Some(&(file, span)) = seen.get(key) {
                    // A fragment may be overridden by the file that includes it; twice in one file is a slip.
                    if file == at.file {
                        let source = self.reporter.source(file);
                        self.reporter.push(
                            Diag::error("mtac::duplicate-node", format!("`{name}` is given twice in this farm"))
                                .at(&source, at.node.span(), "again here")
                                .at(&source, span, "first here")
                                .help("merge the two into one node"),
                        );
                        continue;
                    }
                }
                seen.insert(key.to_owned(), (at.file, at.node.span()));
            }
            match node.lower {
                Lowering::Farm(lower) => lower(self, at, dir, farm),
                Lowering::Include => {
                    self.shape(at, &[], 1, false);
                    if let Some((doc, file, new_dir)) = self.include(at, dir) {
                        let nodes: Vec<At<'_>> = doc.nodes().iter().map(|node| At { node, file }).collect();
                        self.farm_body(&nodes, &new_dir, farm, seen);
                        self.include_stack.pop();
                    }
                }
                // `Top` and `ByParent` never stand in a farm (a test of `nodes` proves it).
                Lowering::Top(_) | Lowering::ByParent => self.unknown_node(at, &nodes::names(Place::Farm), "a farm"),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::nodes::{Place, NODES};

    /// Issue 15: lowering is one room per chapter. Each file of `lower/` stays under ~600 lines
    /// and opens with a `//!` saying which part of docs/policy.md it lowers, and every top-level
    /// and farm node of the table is named in one of those headers, so "where is `greylist`
    /// lowered?" has a file name for an answer.
    #[test]
    fn issue_15_each_lowering_file_is_small_and_names_its_chapter() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/lower");
        let mut headers = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|ext| ext != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let lines = text.lines().count();
            assert!(lines <= 600, "{} has {lines} lines: split it by concern", path.display());
            let header: String = text.lines().take_while(|line| line.starts_with("//!")).collect::<Vec<_>>().join("\n");
            assert!(header.contains("docs/policy.md"), "{} does not say which chapter it lowers", path.display());
            headers.push(header);
        }
        assert!(headers.len() >= 10, "lower/ has only {} files", headers.len());
        let unnamed: Vec<&str> = NODES
            .iter()
            .filter(|node| matches!(node.place, Place::Top | Place::Farm))
            .map(|node| node.name)
            .filter(|name| !headers.iter().any(|header| header.contains(&format!("`{name}`"))))
            .collect();
        assert!(unnamed.is_empty(), "no file of lower/ names these nodes in its header: {unnamed:?}");
    }
}
