//! Lowering: KDL documents (the policy and its includes) → a typed [`Draft`] with spans.
//!
//! Every node and property is checked against the language described in docs/policy.md. Unknown
//! names get a "did you mean"; wrong types, bad CIDRs, domains and addresses get a diagnostic that
//! points at the value. Lowering never stops at the first problem: a bad node is reported and
//! skipped, and the rest of the policy is still read.

use crate::diag::{did_you_mean, Diag, Diagnostics, SourceFile};
use crate::files::{self, Refusal, Trees};
use crate::nodes::{self, Place};
use ipnet::IpNet;
use kdl::{KdlDocument, KdlEntry, KdlNode, KdlValue};
use miette::SourceSpan;
use mtac_ruleset::model::{
    AccessAction, Auth, AuthBackend, Backend, BackendProtocol, BanResponse, BanScope, BarePolicy, Directory,
    DnsSettings, DnsblAnswer, DnsblTarget, FarmKind, GreylistKey, Listener, MimeRules, RateLimit, RateSubject, Reply,
    ScannerKind, Stage, StateSettings,
};
use mtac_ruleset::syntax;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Standard fragments shipped in `policies/`, embedded so `include "mtac:NAME"` works on any node.
pub const STANDARD_POLICIES: &[(&str, &str)] = &[
    ("rfc-hygiene", include_str!("../../policies/rfc-hygiene.kdl")),
    ("role-accounts", include_str!("../../policies/role-accounts.kdl")),
    ("strict-failover", include_str!("../../policies/strict-failover.kdl")),
    ("dnsbl-spamhaus", include_str!("../../policies/dnsbl-spamhaus.kdl")),
];

/// Where an entry was written: a span in a policy file, or a line of a listed file.
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    pub file: usize,
    pub pos: Pos,
}

#[derive(Debug, Clone, Copy)]
pub enum Pos {
    Span(SourceSpan),
    Line(u32),
}

#[derive(Debug, Clone)]
pub struct DomainEntry {
    pub domain: String,
    pub subdomains: bool,
    pub origin: Origin,
}

#[derive(Debug, Clone)]
pub struct AddressEntry {
    pub address: String,
    pub origin: Origin,
}

#[derive(Debug, Clone)]
pub struct NetEntry {
    pub net: IpNet,
    pub action: AccessAction,
    pub origin: Origin,
}

/// A list that may come from inline values and files: which sources fed it.
#[derive(Debug, Clone, Default)]
pub struct Sources(pub Vec<String>);

impl Sources {
    fn add(&mut self, name: &str) {
        if !self.0.iter().any(|s| s == name) {
            self.0.push(name.to_owned());
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct HeloRules {
    pub required: bool,
    pub fqdn: bool,
    pub syntax: bool,
    pub not_ours: bool,
    pub resolvable: bool,
    pub stage: Option<Stage>,
}

#[derive(Debug, Clone, Default)]
pub struct SenderRules {
    pub fqdn: bool,
    pub resolvable: bool,
    pub deny_domains: Vec<DomainEntry>,
    pub deny_addresses: Vec<AddressEntry>,
    pub deny_sources: Sources,
    pub stage: Option<Stage>,
}

#[derive(Debug, Clone)]
pub struct DraftZone {
    pub zone: String,
    pub target: DnsblTarget,
    pub answers: Vec<DnsblAnswer>,
    pub origin: Origin,
}

#[derive(Debug, Clone)]
pub struct DraftDnsbl {
    pub threshold: i32,
    pub allow_threshold: Option<i32>,
    pub zones: Vec<DraftZone>,
    pub stage: Option<Stage>,
    pub reply: Option<Reply>,
    pub origin: Origin,
}

#[derive(Debug, Clone)]
pub struct DraftBan {
    pub after: Vec<(String, Origin)>,
    pub seconds: u32,
    pub v4_prefix: u8,
    pub v6_prefix: u8,
    pub scope: BanScope,
}

#[derive(Debug, Clone)]
pub struct DraftGreylist {
    pub key: GreylistKey,
    pub delay: u32,
    pub retry_window: u32,
    pub lifetime: u32,
    pub v4_prefix: u8,
    pub v6_prefix: u8,
    pub auto_whitelist: u32,
    pub clients: Vec<NetEntry>,
    pub sender_domains: Vec<DomainEntry>,
    pub recipients: Vec<AddressEntry>,
    pub reply: Option<Reply>,
    pub origin: Origin,
}

#[derive(Debug, Clone)]
pub struct DraftScanner {
    pub kind: ScannerKind,
    pub address: String,
    pub timeout: u32,
    pub fail_open: bool,
    pub tag_score: Option<i32>,
    pub reject_score: Option<i32>,
    pub origin: Origin,
}

#[derive(Debug, Clone)]
pub enum DraftRelay {
    Backends(Vec<Backend>),
    Maildir(String),
}

#[derive(Debug, Clone)]
pub struct DraftTls {
    pub certificate: String,
    pub key: String,
    pub required: bool,
    /// The host name clients connect to for this farm (`name=`; default: the policy's hostname).
    pub name: Option<String>,
    pub origin: Origin,
}

#[derive(Debug, Clone)]
pub struct DraftLimits {
    pub connections: u32,
    pub connections_per_ip: u32,
    pub transfers_per_ip: u32,
    pub message_size: u64,
    pub recipients: u32,
    pub line_length: u32,
    pub errors: u32,
    pub command_timeout: u32,
    pub data_timeout: u32,
    pub relay_timeout: u32,
    pub pregreet: u32,
}

impl Default for DraftLimits {
    fn default() -> Self {
        // Defaults of a careful public MX: Postfix's values where they are sound.
        DraftLimits {
            connections: 10_000,
            connections_per_ip: 20,
            // Enough for a big sender's parallel deliveries from one address, few enough that
            // one client cannot fill the RAM-disk spool for everyone else.
            transfers_per_ip: 5,
            message_size: 25 * 1024 * 1024,
            recipients: 100,
            line_length: 2048,
            errors: 10,
            command_timeout: 300,
            data_timeout: 600,
            relay_timeout: 120,
            pregreet: 0,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DraftFarm {
    pub name: String,
    pub origin: Origin,
    pub kind: FarmKind,
    pub listeners: Vec<(Listener, Origin)>,
    pub limits: DraftLimits,
    pub trust_loopback: bool,
    pub local_domains: Vec<DomainEntry>,
    pub local_domain_sources: Sources,
    pub local_addresses: Vec<AddressEntry>,
    pub local_address_sources: Sources,
    pub role_accounts: Vec<String>,
    pub access: Vec<NetEntry>,
    pub access_sources: Sources,
    pub access_stage: Option<Stage>,
    pub relay_clients: Vec<NetEntry>,
    pub relay_client_sources: Sources,
    pub helo: HeloRules,
    pub sender: SenderRules,
    pub recipient_fqdn: bool,
    pub dnsbl: Option<DraftDnsbl>,
    pub bans: Vec<DraftBan>,
    pub greylist: Option<DraftGreylist>,
    pub scanners: Vec<DraftScanner>,
    /// `scan max-size=` (default: the farm's message size).
    pub scan_max_size: Option<u64>,
    /// `scan oversize="pass"`, where it was written: the only way a message escapes the scanners.
    pub scan_oversize_pass: Option<Origin>,
    /// `verdict-headers`: extra field names, rename instead of remove, where it was written.
    pub verdict_headers: Option<(Vec<String>, bool)>,
    /// `authserv-id`: this farm's name in Authentication-Results (default: the host name).
    pub authserv_id: Option<String>,
    pub mime: Option<MimeRules>,
    pub relay: Option<(DraftRelay, Origin)>,
    pub tls: Option<DraftTls>,
    pub auth: Option<(Auth, Origin)>,
    pub directory: Option<(Directory, Origin)>,
    pub bare_line_ends: BarePolicy,
    /// `client reverse-dns=…`: whether forward confirmation is required, and the stage.
    pub client_reverse_dns: Option<(bool, Option<Stage>)>,
    pub ban_response: Option<(BanResponse, Origin)>,
    pub rate_limits: Vec<RateLimit>,
    pub tarpit_ms: u32,
}

#[derive(Debug, Default)]
pub struct Draft {
    pub hostname: Option<(String, Origin)>,
    pub banner: Option<String>,
    pub spool: Option<String>,
    /// `spool max-bytes=`.
    pub spool_max_bytes: Option<u64>,
    pub dns: DnsSettings,
    /// `None`: not said (the default address); `Some(None)`: `admin #false`.
    pub admin: Option<Option<SocketAddr>>,
    /// `None`: not said (the default path in the spool); `Some(None)`: `socket=#false`.
    pub admin_socket: Option<Option<String>>,
    pub state: Option<StateSettings>,
    pub farms: Vec<DraftFarm>,
}

/// Reads the policy and everything it names, and lowers it.
pub struct Lowerer<'d> {
    pub files: Vec<SourceFile>,
    pub diags: &'d mut Diagnostics,
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

/// A node and the file it came from.
#[derive(Clone, Copy)]
struct At<'a> {
    node: &'a KdlNode,
    file: usize,
}

impl<'d> Lowerer<'d> {
    pub fn new(diags: &'d mut Diagnostics) -> Self {
        Lowerer {
            files: Vec::new(),
            diags,
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
            self.diags.push(
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
                self.diags.push(
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
            self.diags
                .push(Diag::error("mtac::io", format!("cannot resolve the policy's directory {}: {e}", dir.display())));
        }
        let file = self.add_file(name, text);
        let doc = self.parse(file)?;
        let mut draft = Draft::default();
        self.include_stack.push((stack_key(name), name.to_owned()));
        self.top_level(&doc, file, &dir, &mut draft);
        self.include_stack.pop();
        Some(draft)
    }

    pub fn file(&self, index: usize) -> Option<&SourceFile> {
        self.files.get(index)
    }

    fn add_file(&mut self, name: &str, text: String) -> usize {
        self.files.push(SourceFile { name: name.to_owned(), text: Arc::new(text) });
        self.files.len() - 1
    }

    fn parse(&mut self, file: usize) -> Option<KdlDocument> {
        let source = self.files.get(file)?.clone();
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
                    self.diags.push(diag);
                }
                if error.diagnostics.is_empty() {
                    self.diags.push(Diag::error("mtac::kdl::syntax", "KDL syntax error").at(
                        &source,
                        SourceSpan::new(0.into(), 0),
                        "in this file",
                    ));
                }
                None
            }
        }
    }

    // ----- diagnostics helpers -------------------------------------------------------------------

    fn source(&self, file: usize) -> SourceFile {
        self.files
            .get(file)
            .cloned()
            .unwrap_or_else(|| SourceFile { name: "<unknown>".to_owned(), text: Arc::new(String::new()) })
    }

    pub fn span_of(&self, origin: Origin) -> SourceSpan {
        match origin.pos {
            Pos::Span(span) => span,
            Pos::Line(line) => self.source(origin.file).line_span(line as usize),
        }
    }

    /// An error or warning pointing at `origin`.
    pub fn report(&mut self, diag: Diag, origin: Origin, label: &str) {
        let source = self.source(origin.file);
        let span = self.span_of(origin);
        self.diags.push(diag.at(&source, span, label));
    }

    fn err(&mut self, code: &'static str, message: String, file: usize, span: SourceSpan, label: &str, help: &str) {
        let source = self.source(file);
        let mut diag = Diag::error(code, message).at(&source, span, label);
        if !help.is_empty() {
            diag = diag.help(help);
        }
        self.diags.push(diag);
    }

    fn warn(&mut self, code: &'static str, message: String, file: usize, span: SourceSpan, label: &str, help: &str) {
        let source = self.source(file);
        let mut diag = Diag::warning(code, message).at(&source, span, label);
        if !help.is_empty() {
            diag = diag.help(help);
        }
        self.diags.push(diag);
    }

    // ----- shape checks --------------------------------------------------------------------------

    fn unknown_node(&mut self, at: At<'_>, known: &[&str], context: &str) {
        let name = at.node.name().value();
        let help = match did_you_mean(name, known) {
            Some(guess) => format!("did you mean `{guess}`?"),
            None => format!("{context} may contain: {}", known.join(", ")),
        };
        self.err(
            "mtac::unknown-node",
            format!("unknown node `{name}` in {context}"),
            at.file,
            at.node.name().span(),
            "not part of the policy language",
            &help,
        );
    }

    /// Report properties not in `allowed`, arguments beyond `max_args`, and unexpected children.
    fn shape(&mut self, at: At<'_>, allowed: &[&str], max_args: usize, children: bool) {
        let node_name = at.node.name().value().to_owned();
        let mut args = 0usize;
        for entry in at.node.entries() {
            match entry.name() {
                Some(key) => {
                    if !allowed.contains(&key.value()) {
                        let help = match did_you_mean(key.value(), allowed) {
                            Some(guess) => format!("did you mean `{guess}`?"),
                            None if allowed.is_empty() => format!("`{node_name}` takes no properties"),
                            None => format!("`{node_name}` accepts: {}", allowed.join(", ")),
                        };
                        self.err(
                            "mtac::unknown-property",
                            format!("unknown property `{}` on `{node_name}`", key.value()),
                            at.file,
                            entry.span(),
                            "unknown property",
                            &help,
                        );
                    }
                }
                None => {
                    args += 1;
                    if args > max_args {
                        let help = if max_args == 0 {
                            format!("`{node_name}` takes no arguments")
                        } else {
                            format!("`{node_name}` takes at most {max_args} argument(s)")
                        };
                        self.err(
                            "mtac::extra-argument",
                            format!("too many arguments to `{node_name}`"),
                            at.file,
                            entry.span(),
                            "unexpected argument",
                            &help,
                        );
                    }
                }
            }
        }
        if !children {
            if let Some(doc) = at.node.children() {
                if !doc.nodes().is_empty() {
                    self.err(
                        "mtac::unexpected-children",
                        format!("`{node_name}` takes no child nodes"),
                        at.file,
                        at.node.span(),
                        "has a { … } block",
                        "remove the block, or move its contents to the parent",
                    );
                }
            }
        }
    }

    fn args<'a>(at: At<'a>) -> impl Iterator<Item = &'a KdlEntry> {
        at.node.entries().iter().filter(|e| e.name().is_none())
    }

    fn prop<'a>(at: At<'a>, key: &str) -> Option<&'a KdlEntry> {
        // The last occurrence wins, as the KDL spec says for duplicate properties.
        at.node.entries().iter().rev().find(|e| e.name().is_some_and(|n| n.value() == key))
    }

    fn children<'a>(at: At<'a>) -> impl Iterator<Item = At<'a>> {
        let file = at.file;
        at.node.children().into_iter().flat_map(|doc| doc.nodes()).map(move |node| At { node, file })
    }

    // ----- typed values --------------------------------------------------------------------------

    fn string(&mut self, entry: &KdlEntry, file: usize, what: &str) -> Option<String> {
        match entry.value() {
            KdlValue::String(s) => Some(s.clone()),
            other => {
                self.err(
                    "mtac::type",
                    format!("{what} must be a string, found {}", type_name(other)),
                    file,
                    entry.span(),
                    "expected a string",
                    "write it in quotes, e.g. \"example.com\"",
                );
                None
            }
        }
    }

    fn boolean(&mut self, entry: &KdlEntry, file: usize, what: &str) -> Option<bool> {
        match entry.value() {
            KdlValue::Bool(b) => Some(*b),
            other => {
                self.err(
                    "mtac::type",
                    format!("{what} must be a boolean, found {}", type_name(other)),
                    file,
                    entry.span(),
                    "expected #true or #false",
                    "KDL 2.0 booleans are written #true and #false",
                );
                None
            }
        }
    }

    fn bool_prop(&mut self, at: At<'_>, key: &str, default: bool) -> bool {
        match Self::prop(at, key) {
            Some(entry) => self.boolean(entry, at.file, &format!("`{key}`")).unwrap_or(default),
            None => default,
        }
    }

    fn integer(&mut self, entry: &KdlEntry, file: usize, what: &str, min: i64, max: i64) -> Option<i64> {
        let value = match entry.value() {
            KdlValue::Integer(i) => *i,
            other => {
                self.err(
                    "mtac::type",
                    format!("{what} must be an integer, found {}", type_name(other)),
                    file,
                    entry.span(),
                    "expected an integer",
                    "",
                );
                return None;
            }
        };
        match i64::try_from(value) {
            Ok(v) if (min..=max).contains(&v) => Some(v),
            _ => {
                self.err(
                    "mtac::range",
                    format!("{what} must be between {min} and {max}, found {value}"),
                    file,
                    entry.span(),
                    "out of range",
                    "",
                );
                None
            }
        }
    }

    fn u32_value(&mut self, entry: &KdlEntry, file: usize, what: &str, min: u32) -> Option<u32> {
        self.integer(entry, file, what, i64::from(min), i64::from(u32::MAX)).and_then(|v| u32::try_from(v).ok())
    }

    /// A duration: an integer number of seconds or a string like `30s`, `5m`, `4h`, `36d`.
    fn duration(&mut self, entry: &KdlEntry, file: usize, what: &str) -> Option<u32> {
        let parsed = match entry.value() {
            KdlValue::Integer(i) => u32::try_from(*i).ok(),
            KdlValue::String(s) => parse_duration(s),
            _ => None,
        };
        let help = "write seconds as an integer, or a string with a unit: \"30s\", \"5m\", \"4h\", \"36d\"";
        self.duration_or_report(parsed, entry, file, what, help)
    }

    /// Report a duration that did not parse (`parsed` is `None`), with the unit's help line.
    fn duration_or_report(
        &mut self,
        parsed: Option<u32>,
        entry: &KdlEntry,
        file: usize,
        what: &str,
        help: &str,
    ) -> Option<u32> {
        if parsed.is_none() {
            self.err(
                "mtac::duration",
                format!("{what} is not a valid duration"),
                file,
                entry.span(),
                "expected a duration",
                help,
            );
        }
        parsed
    }

    fn size(&mut self, entry: &KdlEntry, file: usize, what: &str) -> Option<u64> {
        let parsed = match entry.value() {
            KdlValue::Integer(i) => u64::try_from(*i).ok(),
            KdlValue::String(s) => parse_size(s),
            _ => None,
        };
        if parsed.is_none() {
            self.err(
                "mtac::size",
                format!("{what} is not a valid size"),
                file,
                entry.span(),
                "expected a size",
                "write bytes as an integer, or a string with a unit: \"512KiB\", \"25MiB\", \"15MB\"",
            );
        }
        parsed
    }

    fn reply(&mut self, entry: &KdlEntry, file: usize, class: Option<char>) -> Option<Reply> {
        let text = self.string(entry, file, "a reply")?;
        match parse_reply(&text) {
            Ok(reply) => {
                let first = reply.code.to_string().chars().next();
                if let (Some(class), Some(first)) = (class, first) {
                    if class != first {
                        self.err(
                            "mtac::reply::class",
                            format!("this reply must be a {class}xx reply, not {}", reply.code),
                            file,
                            entry.span(),
                            "wrong reply class",
                            if class == '4' {
                                "a deferral is a temporary failure: use 4xx, e.g. \"450 4.7.1 Try later\""
                            } else {
                                "a reject is a permanent failure: use 5xx, e.g. \"550 5.7.1 Rejected\""
                            },
                        );
                        return None;
                    }
                }
                Some(reply)
            }
            Err(why) => {
                self.err(
                    "mtac::reply",
                    format!("invalid SMTP reply: {why}"),
                    file,
                    entry.span(),
                    "invalid reply",
                    "write \"CODE X.Y.Z text\", e.g. \"550 5.7.1 Client host rejected\" (RFC 5321 and RFC 3463)",
                );
                None
            }
        }
    }

    fn stage(&mut self, at: At<'_>, allowed: &[Stage]) -> Option<Stage> {
        let entry = Self::prop(at, "stage")?;
        let text = self.string(entry, at.file, "`stage`")?;
        match Stage::parse(&text).filter(|s| allowed.contains(s)) {
            Some(stage) => Some(stage),
            None => {
                let names: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
                self.err(
                    "mtac::stage",
                    format!("`{}` cannot decide at stage `{text}`", at.node.name().value()),
                    at.file,
                    entry.span(),
                    "unsupported stage",
                    &format!(
                        "use one of: {} (rcpt, the default, answers listed clients at RCPT TO, as seed 002 advises)",
                        names.join(", ")
                    ),
                );
                None
            }
        }
    }

    // ----- top level -----------------------------------------------------------------------------

    fn top_level(&mut self, doc: &KdlDocument, file: usize, dir: &Path, draft: &mut Draft) {
        for node in doc.nodes() {
            let at = At { node, file };
            match node.name().value() {
                "hostname" => {
                    self.shape(at, &[], 1, false);
                    if let Some(value) = self.one_string(at, "a host name") {
                        if syntax::is_fqdn(&value) {
                            draft.hostname = Some((value, self.origin_of(at)));
                        } else {
                            self.err(
                                "mtac::hostname",
                                format!("`{value}` is not a fully qualified host name"),
                                file,
                                node.span(),
                                "not an FQDN",
                                "the host name goes into the greeting and Received headers: use e.g. \"mx1.example.net\"",
                            );
                        }
                    }
                }
                "banner" => {
                    self.shape(at, &[], 1, false);
                    if let Some(value) = self.one_string(at, "a banner") {
                        if value.chars().any(|c| c.is_control()) || value.len() > 200 {
                            self.err(
                                "mtac::banner",
                                "the banner must be one line of at most 200 characters".to_owned(),
                                file,
                                node.span(),
                                "invalid banner",
                                "",
                            );
                        } else {
                            draft.banner = Some(value);
                        }
                    }
                }
                "spool" => {
                    self.shape(at, &["max-bytes"], 1, false);
                    if let Some(value) = self.one_string(at, "a directory") {
                        draft.spool = Some(relative_to(dir, value));
                    }
                    if let Some(entry) = Self::prop(at, "max-bytes") {
                        if let Some(v) = self.size(entry, file, "`max-bytes`") {
                            if v < 1024 * 1024 {
                                self.err(
                                    "mtac::spool::max-bytes",
                                    format!("a spool budget of {v} bytes holds hardly one message"),
                                    file,
                                    entry.span(),
                                    "too small",
                                    "give the bytes all messages in flight may hold at once, e.g. \"1GiB\"",
                                );
                            } else {
                                draft.spool_max_bytes = Some(v);
                            }
                        }
                    }
                }
                "dns" => self.dns(at, &mut draft.dns),
                "admin" => {
                    self.shape(at, &["socket"], 1, false);
                    if let Some(entry) = Self::prop(at, "socket") {
                        match entry.value() {
                            KdlValue::Bool(false) => draft.admin_socket = Some(None),
                            KdlValue::String(path) if path.starts_with('/') && path.len() < 100 => {
                                draft.admin_socket = Some(Some(path.clone()));
                            }
                            _ => self.err(
                                "mtac::admin::socket",
                                "`socket` takes an absolute path (under 100 bytes) or #false".to_owned(),
                                file,
                                entry.span(),
                                "invalid admin socket",
                                "e.g. socket=\"/run/mtac/admin.sock\": state queries and unbans are served there only",
                            ),
                        }
                    }
                    let value = Self::args(at).next().map(|entry| entry.value().clone());
                    match value {
                        Some(KdlValue::Bool(false)) => draft.admin = Some(None),
                        Some(KdlValue::String(text)) => match text.parse::<SocketAddr>() {
                            Ok(address) => draft.admin = Some(Some(address)),
                            Err(_) => self.err(
                                "mtac::admin::address",
                                format!("`{text}` is not an address:port"),
                                file,
                                node.span(),
                                "invalid admin address",
                                "the admin listener serves /metrics, /healthz, /readyz and /status: e.g. \"127.0.0.1:9325\", or #false to turn it off",
                            ),
                        },
                        _ => self.err(
                            "mtac::admin::address",
                            "`admin` takes an address:port or #false".to_owned(),
                            file,
                            node.span(),
                            "expected \"address:port\" or #false",
                            "e.g. admin \"127.0.0.1:9325\"",
                        ),
                    }
                }
                "state" => self.state(at, dir, draft),
                "farm" => {
                    if let Some(farm) = self.farm(at, dir) {
                        if let Some(first) = draft.farms.iter().find(|f| f.name == farm.name) {
                            let first_span = self.span_of(first.origin);
                            let source = self.source(file);
                            self.diags.push(
                                Diag::error("mtac::farm::duplicate", format!("farm `{}` is defined twice", farm.name))
                                    .at(&source, self.span_of(farm.origin), "second definition")
                                    .at(&source, first_span, "first definition")
                                    .help("give each farm its own name"),
                            );
                        } else {
                            draft.farms.push(farm);
                        }
                    }
                }
                "include" => {
                    self.shape(at, &[], 1, false);
                    if let Some((doc, file, dir)) = self.include(at, dir) {
                        self.top_level(&doc, file, &dir, draft);
                        self.include_stack.pop();
                    }
                }
                _ => self.unknown_node(at, &nodes::names(Place::Top), "the top level"),
            }
        }
    }

    fn origin_of(&self, at: At<'_>) -> Origin {
        Origin { file: at.file, pos: Pos::Span(at.node.span()) }
    }

    fn one_string(&mut self, at: At<'_>, what: &str) -> Option<String> {
        match Self::args(at).next() {
            Some(entry) => self.string(entry, at.file, what),
            None => {
                let name = at.node.name().value().to_owned();
                self.err(
                    "mtac::missing-argument",
                    format!("`{name}` needs {what}"),
                    at.file,
                    at.node.span(),
                    "argument missing",
                    &format!("write e.g. `{name} \"…\"`"),
                );
                None
            }
        }
    }

    /// Read an included file; returns its document, file index and directory.
    fn include(&mut self, at: At<'_>, dir: &Path) -> Option<(KdlDocument, usize, PathBuf)> {
        let target = self.one_string(at, "a file to include")?;
        self.includes += 1;
        if self.includes > files::MAX_INCLUDES {
            // Said once: after the cap every include is refused, and a doubling chain has millions.
            if self.includes == files::MAX_INCLUDES + 1 {
                self.err(
                    "mtac::include::too-many",
                    format!("more than {} includes in one policy", files::MAX_INCLUDES),
                    at.file,
                    at.node.span(),
                    "one include too many",
                    "a file counts each time it is included: look for files that include the same file more than once",
                );
            }
            return None;
        }
        let (name, key, file, new_dir) = if let Some(std_name) = target.strip_prefix("mtac:") {
            match STANDARD_POLICIES.iter().find(|(n, _)| *n == std_name) {
                Some((n, text)) => {
                    let name = format!("mtac:{n}");
                    (name.clone(), stack_key(&name), self.add_file(&name, (*text).to_owned()), dir.to_path_buf())
                }
                None => {
                    let known: Vec<&str> = STANDARD_POLICIES.iter().map(|(n, _)| *n).collect();
                    let help = match did_you_mean(std_name, &known) {
                        Some(g) => format!("did you mean `mtac:{g}`?"),
                        None => format!("standard policies: {}", known.join(", ")),
                    };
                    self.err(
                        "mtac::include::unknown",
                        format!("no standard policy named `{std_name}`"),
                        at.file,
                        at.node.span(),
                        "unknown standard policy",
                        &help,
                    );
                    return None;
                }
            }
        } else {
            let path = dir.join(&target);
            let name = path.display().to_string();
            let new_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
            let read = self.trees.resolve(&path).and_then(|canonical| match self.include_cache.get(&canonical) {
                Some(&file) => Ok((canonical, file)),
                None => {
                    let text = files::read_regular(&canonical, files::POLICY_FILE_LIMIT)?;
                    let file = self.add_file(&name, text);
                    self.include_cache.insert(canonical.clone(), file);
                    Ok((canonical, file))
                }
            });
            match read {
                Ok((canonical, file)) => (name, canonical, file, new_dir),
                Err(refusal) => {
                    self.refuse(Named::Include, &path, refusal, at.file, at.node.span());
                    return None;
                }
            }
        };
        if self.include_stack.iter().any(|(k, _)| *k == key) {
            let chain: Vec<&str> = self.include_stack.iter().map(|(_, n)| n.as_str()).collect();
            self.err(
                "mtac::include::cycle",
                format!("`{name}` is already being included ({} → {name})", chain.join(" → ")),
                at.file,
                at.node.span(),
                "include cycle",
                "remove one of the includes",
            );
            return None;
        }
        let doc = self.parse(file)?;
        self.include_stack.push((key, name));
        Some((doc, file, new_dir))
    }

    /// Report a named file that was not read. The message names the path, never the content.
    fn refuse(&mut self, named: Named, path: &Path, refusal: Refusal, file: usize, span: SourceSpan) {
        let shown = path.display();
        let (code, message, label, help) = match (named, refusal) {
            (Named::Include, Refusal::Io(e)) => (
                "mtac::include::missing",
                format!("cannot read included file {shown}: {e}"),
                "included here",
                "paths are relative to the file that includes them".to_owned(),
            ),
            (Named::List, Refusal::Io(e)) => (
                "mtac::list::missing",
                format!("cannot read list {shown}: {e}"),
                "named here",
                "list paths are relative to the policy file that names them".to_owned(),
            ),
            (named, Refusal::Outside(canonical)) => (
                named.code("mtac::include::outside-tree", "mtac::list::outside-tree"),
                format!(
                    "{} {shown} is {}outside the policy's directory{}",
                    named.noun(),
                    if canonical == path {
                        String::new()
                    } else {
                        format!("{} (links resolved), ", canonical.display())
                    },
                    self.trees.policy_dir().map_or_else(String::new, |d| format!(" {}", d.display()))
                ),
                "outside the policy's tree",
                "mtac reads includes and lists only under the policy's directory; \
                 to let it read another directory, give `--allow-dir DIR`"
                    .to_owned(),
            ),
            (named, Refusal::NotRegular) => (
                named.code("mtac::include::not-regular", "mtac::list::not-regular"),
                format!("{} {shown} is not a regular file", named.noun()),
                "not a regular file",
                "devices, FIFOs and directories are never read: name a file".to_owned(),
            ),
            (named, Refusal::TooLarge(limit)) => (
                named.code("mtac::include::too-large", "mtac::list::too-large"),
                format!("{} {shown} is larger than {}", named.noun(), files::mib(limit)),
                "too large",
                match named {
                    Named::Include => "long lists belong in list files (`file=`), which may be larger".to_owned(),
                    Named::List => "split the list: list nodes add up, so each part can be its own node".to_owned(),
                },
            ),
        };
        self.err(code, message, file, span, label, &help);
    }

    // ----- farms ---------------------------------------------------------------------------------

    fn farm(&mut self, at: At<'_>, dir: &Path) -> Option<DraftFarm> {
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
                    self.err(
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
                self.err(
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
            greylist: None,
            scanners: Vec::new(),
            scan_max_size: None,
            scan_oversize_pass: None,
            verdict_headers: None,
            authserv_id: None,
            mime: None,
            relay: None,
            tls: None,
            auth: None,
            directory: None,
            bare_line_ends: BarePolicy::Reject,
            client_reverse_dns: None,
            ban_response: None,
            rate_limits: Vec::new(),
            tarpit_ms: 0,
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
            if let Some(key) = nodes::once_per_farm(name) {
                if let Some(&(file, span)) = seen.get(key) {
                    // A fragment may be overridden by the file that includes it; twice in one file is a slip.
                    if file == at.file {
                        let source = self.source(file);
                        self.diags.push(
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
            match name {
                "listen" => self.listen(at, farm),
                "limits" => self.limits(at, farm),
                "trust-loopback" => {
                    self.shape(at, &[], 1, false);
                    farm.trust_loopback = match Self::args(at).next() {
                        Some(entry) => self.boolean(entry, at.file, "`trust-loopback`").unwrap_or(false),
                        None => true,
                    };
                }
                "local-domains" => {
                    self.shape(at, &["file", "subdomains"], usize::MAX, false);
                    let subdomains = self.bool_prop(at, "subdomains", false);
                    let mut entries = Vec::new();
                    self.domains(at, dir, subdomains, &mut entries, &mut farm.local_domain_sources);
                    farm.local_domains.extend(entries);
                }
                "local-addresses" => {
                    self.shape(at, &["file"], usize::MAX, false);
                    let mut entries = Vec::new();
                    self.addresses(at, dir, &mut entries, &mut farm.local_address_sources);
                    farm.local_addresses.extend(entries);
                }
                "role-accounts" => {
                    self.shape(at, &[], usize::MAX, false);
                    for entry in Self::args(at) {
                        if let Some(local) = self.string(entry, at.file, "a role account") {
                            let valid = !local.is_empty()
                                && local.len() <= 64
                                && !local.contains('@')
                                && local.bytes().all(|b| b > b' ' && b != 0x7f);
                            if valid {
                                let lower = local.to_ascii_lowercase();
                                if !farm.role_accounts.contains(&lower) {
                                    farm.role_accounts.push(lower);
                                }
                            } else {
                                self.err(
                                    "mtac::role-account",
                                    format!("`{local}` is not a local part"),
                                    at.file,
                                    entry.span(),
                                    "not a local part",
                                    "role accounts are local parts without a domain, e.g. \"postmaster\" \"abuse\"",
                                );
                            }
                        }
                    }
                }
                "relay-clients" => {
                    self.shape(at, &["file"], usize::MAX, false);
                    let mut entries = Vec::new();
                    self.networks(at, dir, &AccessAction::Accept, &mut entries, &mut farm.relay_client_sources);
                    farm.relay_clients.extend(entries);
                }
                "access" => self.access(at, dir, farm),
                "helo" => {
                    self.shape(at, &["required", "fqdn", "syntax", "not-ours", "resolvable", "stage"], 0, false);
                    farm.helo.required = self.bool_prop(at, "required", farm.helo.required);
                    farm.helo.fqdn = self.bool_prop(at, "fqdn", farm.helo.fqdn);
                    farm.helo.syntax = self.bool_prop(at, "syntax", farm.helo.syntax);
                    farm.helo.not_ours = self.bool_prop(at, "not-ours", farm.helo.not_ours);
                    farm.helo.resolvable = self.bool_prop(at, "resolvable", farm.helo.resolvable);
                    farm.helo.stage = self.stage(at, &[Stage::Helo, Stage::Mail, Stage::Rcpt]).or(farm.helo.stage);
                }
                "sender" => self.sender(at, dir, farm),
                "recipient" => {
                    self.shape(at, &["fqdn", "local-only"], 0, false);
                    farm.recipient_fqdn = self.bool_prop(at, "fqdn", farm.recipient_fqdn);
                    if let Some(entry) = Self::prop(at, "local-only") {
                        if self.boolean(entry, at.file, "`local-only`") == Some(false) {
                            self.err(
                                "mtac::open-relay",
                                "`local-only=#false` would make this farm an open relay".to_owned(),
                                at.file,
                                entry.span(),
                                "relay control cannot be turned off",
                                "clients that may relay to any domain go in `relay-clients`; users authenticate on a submission farm",
                            );
                        }
                    }
                }
                "dnsbl" => self.dnsbl(at, farm),
                "ban" => self.ban(at, farm),
                "greylist" => self.greylist(at, dir, farm),
                "scan" => self.scan(at, farm),
                "mime" => self.mime(at, farm),
                "relay" => self.relay(at, farm),
                "deliver" => self.deliver(at, dir, farm),
                "tls" => self.tls(at, dir, farm),
                "auth" => self.auth(at, dir, farm),
                "directory" => self.directory(at, dir, farm),
                "bare-line-ends" => {
                    self.shape(at, &[], 1, false);
                    if let Some(value) = self.one_string(at, "\"reject\" or \"normalize\"") {
                        match value.as_str() {
                            "reject" => farm.bare_line_ends = BarePolicy::Reject,
                            "normalize" => farm.bare_line_ends = BarePolicy::Normalize,
                            other => self.err(
                                "mtac::bare-line-ends",
                                format!("unknown choice `{other}`"),
                                at.file,
                                at.node.span(),
                                "expected \"reject\" or \"normalize\"",
                                "reject refuses messages with bare CR, bare LF or NUL (RFC 5321 2.3.8); normalize repairs them",
                            ),
                        }
                    }
                }
                "client" => {
                    self.shape(at, &["reverse-dns", "stage"], 0, false);
                    let stage = self.stage(at, &[Stage::Connect, Stage::Helo, Stage::Mail, Stage::Rcpt]);
                    match Self::prop(at, "reverse-dns") {
                        Some(entry) => match self.string(entry, at.file, "`reverse-dns`").as_deref() {
                            Some("required") => farm.client_reverse_dns = Some((false, stage)),
                            Some("forward-confirmed") => farm.client_reverse_dns = Some((true, stage)),
                            Some(other) => self.err(
                                "mtac::client::reverse-dns",
                                format!("unknown reverse-dns requirement `{other}`"),
                                at.file,
                                entry.span(),
                                "unknown value",
                                "\"required\" (a PTR name) or \"forward-confirmed\" (a PTR name that resolves back, FCrDNS)",
                            ),
                            None => {}
                        },
                        None => self.err(
                            "mtac::client::reverse-dns",
                            "`client` needs reverse-dns=…".to_owned(),
                            at.file,
                            at.node.span(),
                            "nothing required",
                            "e.g. client reverse-dns=\"forward-confirmed\"",
                        ),
                    }
                }
                "rate-limit" => self.rate_limit(at, farm),
                "verdict-headers" => self.verdict_headers(at, farm),
                "authserv-id" => {
                    self.shape(at, &[], 1, false);
                    if let Some(id) = self.one_string(at, "an authserv-id") {
                        // RFC 8601 §2.5: a domain name, in practice the host's own.
                        let valid = !id.is_empty()
                            && id.len() <= 253
                            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
                        if valid {
                            farm.authserv_id = Some(id.to_ascii_lowercase());
                        } else {
                            self.err(
                                "mtac::authserv-id",
                                format!("`{id}` is not an authserv-id"),
                                at.file,
                                at.node.span(),
                                "not a host name",
                                "the name this farm signs its Authentication-Results with, e.g. \"mx.example.com\"",
                            );
                        }
                    }
                }
                "tarpit" => {
                    self.shape(at, &[], 1, false);
                    if let Some(entry) = Self::args(at).next() {
                        if let Some(ms) = self.duration_ms(entry, at.file, "`tarpit`") {
                            if ms > 60_000 {
                                self.err(
                                    "mtac::tarpit",
                                    format!("a tarpit of {ms} ms holds every refused client for over a minute"),
                                    at.file,
                                    entry.span(),
                                    "too long",
                                    "a few seconds slow down bots; long delays only hold our own connections open",
                                );
                            } else {
                                farm.tarpit_ms = ms;
                            }
                        }
                    }
                }
                "include" => {
                    self.shape(at, &[], 1, false);
                    if let Some((doc, file, new_dir)) = self.include(at, dir) {
                        let nodes: Vec<At<'_>> = doc.nodes().iter().map(|node| At { node, file }).collect();
                        self.farm_body(&nodes, &new_dir, farm, seen);
                        self.include_stack.pop();
                    }
                }
                _ => self.unknown_node(at, &nodes::names(Place::Farm), "a farm"),
            }
        }
    }

    fn listen(&mut self, at: At<'_>, farm: &mut DraftFarm) {
        self.shape(at, &["tls"], 1, false);
        let Some(text) = self.one_string(at, "an address:port") else { return };
        let implicit_tls = match Self::prop(at, "tls") {
            Some(entry) => match self.string(entry, at.file, "`tls`").as_deref() {
                Some("implicit") => true,
                Some("starttls") => false,
                Some(other) => {
                    self.err(
                        "mtac::listen::tls",
                        format!("unknown TLS mode `{other}`"),
                        at.file,
                        entry.span(),
                        "expected \"implicit\" or \"starttls\"",
                        "implicit TLS from the first byte is port 465 (RFC 8314); STARTTLS is offered on the others when `tls` is configured",
                    );
                    false
                }
                None => false,
            },
            None => false,
        };
        match text.parse::<SocketAddr>() {
            Ok(address) => {
                let origin = self.origin_of(at);
                if let Some((_, first)) = farm.listeners.iter().find(|(l, _)| l.address == address) {
                    let first = *first;
                    let source = self.source(at.file);
                    let first_span = self.span_of(first);
                    self.diags.push(
                        Diag::error("mtac::listen::duplicate", format!("{address} is listened on twice"))
                            .at(&source, at.node.span(), "again here")
                            .at(&source, first_span, "first here"),
                    );
                } else {
                    farm.listeners.push((Listener { address, implicit_tls }, origin));
                }
            }
            Err(_) => self.err(
                "mtac::listen::address",
                format!("`{text}` is not an address:port"),
                at.file,
                at.node.span(),
                "invalid listen address",
                "write \"0.0.0.0:25\", \"127.0.0.1:2525\" or \"[::]:587\" (IPv6 in brackets)",
            ),
        }
    }

    fn limits(&mut self, at: At<'_>, farm: &mut DraftFarm) {
        self.shape(at, &[], 0, true);
        let known = nodes::names(Place::In("limits"));
        for child in Self::children(at) {
            let name = child.node.name().value();
            if name == "timeout" {
                self.shape(child, &["command", "data", "relay", "pregreet"], 0, false);
                let l = &mut farm.limits;
                let set = |this: &mut Self, key: &str, slot: &mut u32| {
                    if let Some(entry) = Self::prop(child, key) {
                        if let Some(v) = this.duration(entry, child.file, &format!("timeout `{key}`")) {
                            *slot = v;
                        }
                    }
                };
                set(self, "command", &mut l.command_timeout);
                set(self, "data", &mut l.data_timeout);
                set(self, "relay", &mut l.relay_timeout);
                set(self, "pregreet", &mut l.pregreet);
                for (key, value) in
                    [("command", l.command_timeout), ("data", l.data_timeout), ("relay", l.relay_timeout)]
                {
                    if value == 0 {
                        if let Some(entry) = Self::prop(child, key) {
                            self.err(
                                "mtac::limits::timeout",
                                format!("timeout `{key}` of 0 would never let a session through"),
                                child.file,
                                entry.span(),
                                "zero timeout",
                                "RFC 5321 4.5.3.2 recommends 5 minutes for commands and 10 for DATA",
                            );
                        }
                    }
                }
                continue;
            }
            if !known.contains(&name) {
                self.unknown_node(child, &known, "`limits`");
                continue;
            }
            self.shape(child, &[], 1, false);
            let Some(entry) = Self::args(child).next() else {
                self.err(
                    "mtac::missing-argument",
                    format!("`{name}` needs a value"),
                    child.file,
                    child.node.span(),
                    "value missing",
                    "",
                );
                continue;
            };
            let what = format!("`{name}`");
            match name {
                "connections" => {
                    if let Some(v) = self.u32_value(entry, child.file, &what, 1) {
                        farm.limits.connections = v;
                    }
                }
                "connections-per-ip" => {
                    if let Some(v) = self.u32_value(entry, child.file, &what, 1) {
                        farm.limits.connections_per_ip = v;
                    }
                }
                "transfers-per-ip" => {
                    if let Some(v) = self.u32_value(entry, child.file, &what, 1) {
                        farm.limits.transfers_per_ip = v;
                    }
                }
                "message-size" => {
                    if let Some(v) = self.size(entry, child.file, &what) {
                        if v < 1024 {
                            self.err(
                                "mtac::limits::size",
                                format!("a message size of {v} bytes refuses nearly every message"),
                                child.file,
                                entry.span(),
                                "too small",
                                "write e.g. \"25MiB\"",
                            );
                        } else {
                            farm.limits.message_size = v;
                        }
                    }
                }
                "recipients" => {
                    if let Some(v) = self.u32_value(entry, child.file, &what, 1) {
                        if v < 100 {
                            self.warn(
                                "mtac::limits::recipients",
                                format!("{v} recipients per message is below the 100 that RFC 5321 4.5.3.1.8 requires servers to accept"),
                                child.file,
                                entry.span(),
                                "below RFC minimum",
                                "senders split larger lists after a 452, so mail still arrives, only slower",
                            );
                        }
                        farm.limits.recipients = v;
                    }
                }
                "line-length" => {
                    if let Some(v) = self.u32_value(entry, child.file, &what, 512) {
                        farm.limits.line_length = v;
                    }
                }
                "errors" => {
                    if let Some(v) = self.u32_value(entry, child.file, &what, 1) {
                        farm.limits.errors = v;
                    }
                }
                _ => {}
            }
        }
    }

    fn access(&mut self, at: At<'_>, dir: &Path, farm: &mut DraftFarm) {
        self.shape(at, &["stage"], 0, true);
        farm.access_stage = self.stage(at, &Stage::ALL).or(farm.access_stage);
        for child in Self::children(at) {
            let action = match child.node.name().value() {
                "accept" => {
                    self.shape(child, &["file"], usize::MAX, false);
                    AccessAction::Accept
                }
                "reject" | "defer" => {
                    self.shape(child, &["file", "reply"], usize::MAX, false);
                    let reject = child.node.name().value() == "reject";
                    let class = if reject { '5' } else { '4' };
                    let reply = match Self::prop(child, "reply") {
                        Some(entry) => self.reply(entry, child.file, Some(class)),
                        None if reject => Some(Reply::new(554, "5.7.1", "Client host rejected: Access denied")),
                        None => Some(Reply::new(450, "4.7.1", "Client host rejected: try again later")),
                    };
                    let Some(reply) = reply else { continue };
                    if reject {
                        AccessAction::Reject(reply)
                    } else {
                        AccessAction::Defer(reply)
                    }
                }
                _ => {
                    self.unknown_node(child, &nodes::names(Place::In("access")), "`access`");
                    continue;
                }
            };
            let mut entries = Vec::new();
            self.networks(child, dir, &action, &mut entries, &mut farm.access_sources);
            farm.access.extend(entries);
        }
    }

    fn sender(&mut self, at: At<'_>, dir: &Path, farm: &mut DraftFarm) {
        self.shape(at, &["fqdn", "resolvable", "stage"], 0, true);
        farm.sender.fqdn = self.bool_prop(at, "fqdn", farm.sender.fqdn);
        farm.sender.resolvable = self.bool_prop(at, "resolvable", farm.sender.resolvable);
        farm.sender.stage = self.stage(at, &[Stage::Mail, Stage::Rcpt]).or(farm.sender.stage);
        for child in Self::children(at) {
            if child.node.name().value() != "deny" {
                self.unknown_node(child, &nodes::names(Place::In("sender")), "`sender`");
                continue;
            }
            self.shape(child, &["file"], usize::MAX, false);
            // A deny entry is an address (user@domain) or a domain (with its subdomains).
            let mut values = Vec::new();
            self.values(child, dir, &mut values, &mut farm.sender.deny_sources);
            for (value, origin) in values {
                if value.contains('@') {
                    if syntax::is_mailbox(&value) {
                        farm.sender.deny_addresses.push(AddressEntry { address: value, origin });
                    } else {
                        self.report(
                            Diag::error("mtac::address", format!("`{value}` is not a valid address"))
                                .help("write user@example.com, or a bare domain to deny the whole domain"),
                            origin,
                            "invalid address",
                        );
                    }
                } else {
                    let domain = value.strip_prefix("*.").unwrap_or(&value);
                    if syntax::is_hostname(domain) {
                        farm.sender.deny_domains.push(DomainEntry {
                            domain: syntax::normalize_domain(domain),
                            subdomains: true,
                            origin,
                        });
                    } else {
                        self.report(
                            Diag::error("mtac::domain", format!("`{value}` is not a valid domain"))
                                .help("write a domain such as spam.example (its subdomains are denied too)"),
                            origin,
                            "invalid domain",
                        );
                    }
                }
            }
        }
    }

    fn dnsbl(&mut self, at: At<'_>, farm: &mut DraftFarm) {
        self.shape(at, &["threshold", "allow-threshold", "stage", "reply"], 0, true);
        let origin = self.origin_of(at);
        let threshold = match Self::prop(at, "threshold") {
            Some(entry) => self.integer(entry, at.file, "`threshold`", 1, 1000).and_then(|v| i32::try_from(v).ok()),
            None => Some(1),
        };
        let allow_threshold = Self::prop(at, "allow-threshold")
            .and_then(|entry| self.integer(entry, at.file, "`allow-threshold`", -1000, -1))
            .and_then(|v| i32::try_from(v).ok());
        let stage = self.stage(at, &[Stage::Connect, Stage::Helo, Stage::Mail, Stage::Rcpt]);
        let reply = Self::prop(at, "reply").and_then(|entry| self.reply(entry, at.file, Some('5')));
        let mut zones = Vec::new();
        for child in Self::children(at) {
            if child.node.name().value() != "zone" {
                self.unknown_node(child, &nodes::names(Place::In("dnsbl")), "`dnsbl`");
                continue;
            }
            self.shape(child, &["target"], 1, true);
            let Some(zone) = self.one_string(child, "a DNS zone") else { continue };
            if !syntax::is_hostname(&zone) {
                self.err(
                    "mtac::dnsbl::zone",
                    format!("`{zone}` is not a DNS zone name"),
                    child.file,
                    child.node.span(),
                    "invalid zone",
                    "e.g. \"zen.spamhaus.org\"",
                );
                continue;
            }
            let target = match Self::prop(child, "target") {
                Some(entry) => match self.string(entry, child.file, "`target`").as_deref() {
                    Some("client") => DnsblTarget::ClientIp,
                    Some("helo") => DnsblTarget::HeloName,
                    Some("sender-domain") => DnsblTarget::SenderDomain,
                    Some(other) => {
                        self.err(
                            "mtac::dnsbl::target",
                            format!("unknown target `{other}`"),
                            child.file,
                            entry.span(),
                            "unknown target",
                            "target is \"client\" (the default), \"helo\" or \"sender-domain\"",
                        );
                        continue;
                    }
                    None => continue,
                },
                None => DnsblTarget::ClientIp,
            };
            let mut answers = Vec::new();
            for answer in Self::children(child) {
                if answer.node.name().value() != "answer" {
                    self.unknown_node(answer, &nodes::names(Place::In("zone")), "`zone`");
                    continue;
                }
                self.shape(answer, &["weight"], 1, false);
                let Some(pattern) = self.one_string(answer, "an answer pattern") else { continue };
                let weight = match Self::prop(answer, "weight") {
                    Some(entry) => {
                        self.integer(entry, answer.file, "`weight`", -1000, 1000).and_then(|v| i32::try_from(v).ok())
                    }
                    None => Some(1),
                };
                match (parse_answer_pattern(&pattern), weight) {
                    (Some(octets), Some(weight)) => {
                        if octets.first().is_some_and(|o| o.0 != 127 || o.1 != 127) {
                            self.err(
                                "mtac::dnsbl::answer",
                                format!("`{pattern}` is outside 127.0.0.0/8"),
                                answer.file,
                                answer.node.span(),
                                "not a list answer",
                                "DNS lists answer in 127.0.0.0/8; anything else is a resolver or zone error",
                            );
                        } else if octets.get(1).is_some_and(|o| o.1 == 255) && octets.get(2).is_some_and(|o| o.1 == 255)
                        {
                            self.err(
                                "mtac::dnsbl::error-code",
                                format!("`{pattern}` covers 127.255.255.x, which are error codes, not listings"),
                                answer.file,
                                answer.node.span(),
                                "error answer",
                                "127.255.255.x means the query was refused (e.g. Spamhaus through a public resolver); mtac treats it as a zone error",
                            );
                        } else {
                            answers.push(DnsblAnswer { octets, weight });
                        }
                    }
                    (None, _) => self.err(
                        "mtac::dnsbl::answer",
                        format!("`{pattern}` is not an answer pattern"),
                        answer.file,
                        answer.node.span(),
                        "invalid pattern",
                        "write an IPv4 address where each octet may be a range: \"127.0.0.2\", \"127.0.0.[4..7]\"",
                    ),
                    _ => {}
                }
            }
            if answers.is_empty() {
                self.err(
                    "mtac::dnsbl::no-answers",
                    format!("zone `{zone}` lists no answers"),
                    child.file,
                    child.node.span(),
                    "no answer filters",
                    "list the answer codes the zone documents, e.g. `answer \"127.0.0.2\" weight=3`: undocumented answers are zone errors",
                );
            }
            zones.push(DraftZone { zone, target, answers, origin: self.origin_of(child) });
        }
        if let Some(threshold) = threshold {
            farm.dnsbl = Some(DraftDnsbl { threshold, allow_threshold, zones, stage, reply, origin });
        }
    }

    fn ban(&mut self, at: At<'_>, farm: &mut DraftFarm) {
        self.shape(at, &["after", "duration", "network", "network6", "response", "scope"], 0, false);
        let scope = match Self::prop(at, "scope") {
            Some(entry) => match self.string(entry, at.file, "`scope`").as_deref() {
                Some("farm") => BanScope::Farm,
                Some("all-farms") => BanScope::AllFarms,
                Some(other) => {
                    self.err(
                        "mtac::ban::scope",
                        format!("unknown ban scope `{other}`"),
                        at.file,
                        entry.span(),
                        "unknown scope",
                        "\"farm\" (the default) bans the client from this farm only; \"all-farms\" from every farm",
                    );
                    BanScope::Farm
                }
                None => BanScope::Farm,
            },
            None => BanScope::Farm,
        };
        if let Some(entry) = Self::prop(at, "response") {
            let response = match self.string(entry, at.file, "`response`").as_deref() {
                Some("521") => Some(BanResponse::Close521),
                Some("refuse-recipients") => Some(BanResponse::RefuseRecipients),
                Some(other) => {
                    self.err(
                        "mtac::ban::response",
                        format!("unknown ban response `{other}`"),
                        at.file,
                        entry.span(),
                        "unknown response",
                        "\"521\" closes at once (RFC 7504); \"refuse-recipients\" keeps a short session that refuses every RCPT",
                    );
                    None
                }
                None => None,
            };
            if let Some(response) = response {
                let origin = Origin { file: at.file, pos: Pos::Span(entry.span()) };
                match farm.ban_response {
                    Some((other, _)) if other != response => self.err(
                        "mtac::ban::response",
                        "the bans of one farm give different responses".to_owned(),
                        at.file,
                        entry.span(),
                        "conflicting response",
                        "a banned client is turned away one way: give the same response on every ban",
                    ),
                    _ => farm.ban_response = Some((response, origin)),
                }
            }
        }
        let after = match Self::prop(at, "after") {
            Some(entry) => match self.string(entry, at.file, "`after`") {
                Some(text) => text
                    .split_whitespace()
                    .map(|r| (r.to_owned(), Origin { file: at.file, pos: Pos::Span(entry.span()) }))
                    .collect::<Vec<_>>(),
                None => return,
            },
            None => {
                self.err(
                    "mtac::ban::after",
                    "`ban` needs `after`: the rules whose reject bans the client".to_owned(),
                    at.file,
                    at.node.span(),
                    "after missing",
                    "e.g. after=\"dnsbl\" (rule names, separated by spaces)",
                );
                return;
            }
        };
        let seconds = match Self::prop(at, "duration") {
            Some(entry) => self.duration(entry, at.file, "`duration`"),
            None => Some(600),
        };
        let v4_prefix = self.prefix_prop(at, "network", 32).unwrap_or(32);
        let v6_prefix = self.prefix_prop(at, "network6", 128).unwrap_or(128);
        if let Some(seconds) = seconds {
            farm.bans.push(DraftBan { after, seconds, v4_prefix, v6_prefix, scope });
        }
    }

    /// A duration in milliseconds: `500ms`, `2s`, or an integer number of milliseconds.
    fn duration_ms(&mut self, entry: &KdlEntry, file: usize, what: &str) -> Option<u32> {
        let parsed = match entry.value() {
            KdlValue::Integer(i) => u32::try_from(*i).ok(),
            KdlValue::String(s) => match s.strip_suffix("ms") {
                Some(ms) => ms.trim().parse::<u32>().ok(),
                None => parse_duration(s).and_then(|secs| secs.checked_mul(1000)),
            },
            _ => None,
        };
        let help = "write milliseconds as an integer, or a string with a unit: \"500ms\", \"2s\"";
        self.duration_or_report(parsed, entry, file, what, help)
    }

    fn dns(&mut self, at: At<'_>, dns: &mut DnsSettings) {
        self.shape(at, &["timeout", "cache-size", "probe-interval"], 0, true);
        if let Some(entry) = Self::prop(at, "timeout") {
            if let Some(ms) = self.duration_ms(entry, at.file, "`timeout`") {
                if ms == 0 || ms > 30_000 {
                    self.err(
                        "mtac::dns::timeout",
                        format!("a DNS timeout of {ms} ms"),
                        at.file,
                        entry.span(),
                        "out of range",
                        "between 1 ms and 30 s; a DNS list that does not answer in a few seconds counts as not listed",
                    );
                } else {
                    dns.timeout_ms = ms;
                }
            }
        }
        if let Some(entry) = Self::prop(at, "cache-size") {
            if let Some(n) = self.u32_value(entry, at.file, "`cache-size`", 0) {
                dns.cache_size = n;
            }
        }
        if let Some(entry) = Self::prop(at, "probe-interval") {
            if let Some(secs) = self.duration(entry, at.file, "`probe-interval`") {
                dns.probe_interval = secs.max(10);
            }
        }
        for child in Self::children(at) {
            if child.node.name().value() != "nameserver" {
                self.unknown_node(child, &nodes::names(Place::In("dns")), "`dns`");
                continue;
            }
            self.shape(child, &[], usize::MAX, false);
            for entry in Self::args(child) {
                let Some(text) = self.string(entry, child.file, "a nameserver") else { continue };
                let parsed = text.parse::<SocketAddr>().ok().or_else(|| {
                    let bare = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')).unwrap_or(&text);
                    bare.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 53))
                });
                match parsed {
                    Some(address) => dns.nameservers.push(address),
                    None => self.err(
                        "mtac::dns::nameserver",
                        format!("`{text}` is not a nameserver address"),
                        child.file,
                        entry.span(),
                        "invalid address",
                        "write an IP address, optionally with a port: \"127.0.0.1\", \"[::1]:5353\"",
                    ),
                }
            }
        }
    }

    fn rate_limit(&mut self, at: At<'_>, farm: &mut DraftFarm) {
        self.shape(at, &["connections", "messages", "per", "network", "network6", "reply"], 0, false);
        let subject = match (Self::prop(at, "connections"), Self::prop(at, "messages")) {
            (Some(entry), None) => (RateSubject::Connections, entry),
            (None, Some(entry)) => (RateSubject::Messages, entry),
            _ => {
                self.err(
                    "mtac::rate-limit",
                    "a rate limit counts either connections= or messages=".to_owned(),
                    at.file,
                    at.node.span(),
                    "what to count",
                    "e.g. rate-limit connections=30 per=\"1m\", or rate-limit messages=500 per=\"1h\" network=\"/24\"",
                );
                return;
            }
        };
        let Some(limit) = self.u32_value(subject.1, at.file, "the rate", 1) else { return };
        let window = match Self::prop(at, "per") {
            Some(entry) => match self.duration(entry, at.file, "`per`") {
                Some(0) | None => return,
                Some(secs) => secs,
            },
            None => 60,
        };
        let v4_prefix = self.prefix_prop(at, "network", 32).unwrap_or(32);
        let v6_prefix = self.prefix_prop(at, "network6", 128).unwrap_or(64);
        let reply = match Self::prop(at, "reply") {
            Some(entry) => match self.reply(entry, at.file, Some('4')) {
                Some(r) => r,
                None => return,
            },
            None => match subject.0 {
                RateSubject::Connections => {
                    Reply::new(421, "4.7.0", "Too many connections from your network, slow down")
                }
                RateSubject::Messages => Reply::new(450, "4.7.1", "Too many messages from your network, slow down"),
            },
        };
        farm.rate_limits.push(RateLimit { subject: subject.0, limit, window, v4_prefix, v6_prefix, reply });
    }

    fn prefix_prop(&mut self, at: At<'_>, key: &str, max: u8) -> Option<u8> {
        let entry = Self::prop(at, key)?;
        let text = self.string(entry, at.file, &format!("`{key}`"))?;
        match text.strip_prefix('/').and_then(|n| n.parse::<u8>().ok()).filter(|n| *n <= max && *n > 0) {
            Some(n) => Some(n),
            None => {
                self.err(
                    "mtac::prefix",
                    format!("`{text}` is not a prefix length"),
                    at.file,
                    entry.span(),
                    "invalid prefix length",
                    &format!("write a length from /1 to /{max}, e.g. \"/24\""),
                );
                None
            }
        }
    }

    /// `state "embedded" path="FILE"` or `state "redis" url="redis://…" [timeout=…] [on-failure=…]`.
    fn state(&mut self, at: At<'_>, dir: &Path, draft: &mut Draft) {
        self.shape(at, &["path", "url", "timeout", "on-failure"], 1, false);
        let kind = self.one_string(at, "\"embedded\" or \"redis\"");
        let text = |this: &mut Self, key: &str| Self::prop(at, key).and_then(|e| this.string(e, at.file, key));
        match kind.as_deref() {
            Some("embedded") => {
                let path = text(self, "path").map(|p| relative_to(dir, p));
                draft.state = Some(StateSettings::Embedded {
                    path: path.unwrap_or_else(|| mtac_ruleset::model::DEFAULT_STATE_PATH.to_owned()),
                });
            }
            Some("redis") => {
                let Some(url) = text(self, "url") else {
                    self.err(
                        "mtac::state::url",
                        "a Redis store needs its `url`".to_owned(),
                        at.file,
                        at.node.span(),
                        "no url",
                        "e.g. state \"redis\" url=\"redis://10.0.0.9:6379/0\"",
                    );
                    return;
                };
                if !(url.starts_with("redis://") || url.starts_with("redis+unix://") || url.starts_with("unix://")) {
                    self.err(
                        "mtac::state::url",
                        format!("`{url}` is not a Redis URL"),
                        at.file,
                        at.node.span(),
                        "expected redis://HOST:PORT/DB or redis+unix:///PATH",
                        "TLS (rediss://) is not supported: keep Redis on the farm's private network",
                    );
                }
                let timeout_ms = match Self::prop(at, "timeout") {
                    Some(entry) => self.duration_ms(entry, at.file, "`timeout`").unwrap_or(500),
                    None => 500,
                };
                let fail_open = match text(self, "on-failure").as_deref() {
                    None | Some("defer") => false,
                    Some("accept") => true,
                    Some(other) => {
                        self.err(
                            "mtac::state::on-failure",
                            format!("unknown failure mode `{other}`"),
                            at.file,
                            at.node.span(),
                            "expected \"defer\" or \"accept\"",
                            "\"defer\" answers 451 while Redis is unreachable; \"accept\" lets mail through ungreylisted and logs it",
                        );
                        false
                    }
                };
                draft.state = Some(StateSettings::Redis { url, timeout_ms, fail_open });
            }
            Some(other) => self.err(
                "mtac::state::kind",
                format!("unknown state store `{other}`"),
                at.file,
                at.node.span(),
                "expected \"embedded\" or \"redis\"",
                "\"embedded\" keeps state in a file on the node; \"redis\" shares it across the farm",
            ),
            None => {}
        }
    }

    fn greylist(&mut self, at: At<'_>, dir: &Path, farm: &mut DraftFarm) {
        self.shape(
            at,
            &["delay", "retry-window", "lifetime", "network", "network6", "auto-whitelist", "reply", "key"],
            0,
            true,
        );
        let get = |this: &mut Self, key: &str, default: u32| match Self::prop(at, key) {
            Some(entry) => this.duration(entry, at.file, &format!("`{key}`")).unwrap_or(default),
            None => default,
        };
        let delay = get(self, "delay", 300);
        let retry_window = get(self, "retry-window", 4 * 3600);
        let lifetime = get(self, "lifetime", 36 * 86400);
        let v4_prefix = self.prefix_prop(at, "network", 32).unwrap_or(24);
        let v6_prefix = self.prefix_prop(at, "network6", 128).unwrap_or(64);
        let auto_whitelist = Self::prop(at, "auto-whitelist")
            .and_then(|e| self.u32_value(e, at.file, "`auto-whitelist`", 0))
            .unwrap_or(5);
        let reply = Self::prop(at, "reply").and_then(|e| self.reply(e, at.file, Some('4')));
        let key = match Self::prop(at, "key").and_then(|e| self.string(e, at.file, "a greylist key")).as_deref() {
            None | Some("network") => GreylistKey::Network,
            Some("fcrdns") => GreylistKey::Fcrdns,
            Some(other) => {
                self.err(
                    "mtac::greylist::key",
                    format!("unknown greylist key `{other}`"),
                    at.file,
                    at.node.span(),
                    "expected \"network\" or \"fcrdns\"",
                    "\"fcrdns\" keys the client by its confirmed reverse-DNS domain, so a retry from any host of a sender's pool passes",
                );
                GreylistKey::Network
            }
        };
        if delay >= retry_window {
            self.err(
                "mtac::greylist::window",
                format!("the retry window ({retry_window}s) must be longer than the delay ({delay}s)"),
                at.file,
                at.node.span(),
                "no retry could ever pass",
                "e.g. delay=\"5m\" retry-window=\"4h\"",
            );
        }
        let mut clients = Vec::new();
        let mut sender_domains = Vec::new();
        let mut recipients = Vec::new();
        let mut sources = Sources::default();
        for child in Self::children(at) {
            match child.node.name().value() {
                "whitelist-client" => {
                    self.shape(child, &["file"], usize::MAX, false);
                    self.networks(child, dir, &AccessAction::Accept, &mut clients, &mut sources);
                }
                "whitelist-sender-domain" => {
                    self.shape(child, &["file", "subdomains"], usize::MAX, false);
                    let subdomains = self.bool_prop(child, "subdomains", true);
                    self.domains(child, dir, subdomains, &mut sender_domains, &mut sources);
                }
                "whitelist-recipient" => {
                    self.shape(child, &["file"], usize::MAX, false);
                    self.addresses(child, dir, &mut recipients, &mut sources);
                }
                _ => self.unknown_node(child, &nodes::names(Place::In("greylist")), "`greylist`"),
            }
        }
        farm.greylist = Some(DraftGreylist {
            key,
            delay,
            retry_window,
            lifetime,
            v4_prefix,
            v6_prefix,
            auto_whitelist,
            clients,
            sender_domains,
            recipients,
            reply,
            origin: self.origin_of(at),
        });
    }

    /// `mime { forbid-extension …; forbid-type …; require-header …; forged-local-sender BOOL }`.
    fn mime(&mut self, at: At<'_>, farm: &mut DraftFarm) {
        self.shape(at, &[], 0, true);
        let mut rules = farm.mime.take().unwrap_or_default();
        for child in Self::children(at) {
            let name = child.node.name().value().to_owned();
            match name.as_str() {
                "forbid-extension" | "forbid-type" | "require-header" => {
                    self.shape(child, &[], usize::MAX, false);
                    for entry in Self::args(child) {
                        let Some(value) = self.string(entry, child.file, "a value") else { continue };
                        let value = value.trim().to_ascii_lowercase();
                        let ok = match name.as_str() {
                            "forbid-extension" => {
                                let value = value.trim_start_matches('.');
                                !value.is_empty()
                                    && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                            }
                            "forbid-type" => value.split_once('/').is_some_and(|(t, s)| !t.is_empty() && !s.is_empty()),
                            _ => !value.is_empty() && value.bytes().all(|b| b.is_ascii_graphic() && b != b':'),
                        };
                        if !ok {
                            self.err(
                                "mtac::mime::value",
                                format!("`{value}` is not valid for `{name}`"),
                                child.file,
                                entry.span(),
                                "invalid value",
                                "forbid-extension \"exe\"; forbid-type \"application/x-msdownload\" or \"application/*\"; require-header \"Message-ID\"",
                            );
                            continue;
                        }
                        let list = match name.as_str() {
                            "forbid-extension" => &mut rules.forbid_extensions,
                            "forbid-type" => &mut rules.forbid_types,
                            _ => &mut rules.require_headers,
                        };
                        let value = value.trim_start_matches('.').to_owned();
                        if !list.contains(&value) {
                            list.push(value);
                        }
                    }
                }
                "forged-local-sender" => {
                    self.shape(child, &[], 1, false);
                    match Self::args(child).next().map(|e| e.value().clone()) {
                        Some(KdlValue::Bool(b)) => rules.forged_local_sender = b,
                        _ => self.err(
                            "mtac::mime::value",
                            "`forged-local-sender` takes #true or #false".to_owned(),
                            child.file,
                            child.node.span(),
                            "expected a boolean",
                            "",
                        ),
                    }
                }
                _ => self.unknown_node(child, &nodes::names(Place::In("mime")), "`mime`"),
            }
        }
        farm.mime = Some(rules);
    }

    /// `verdict-headers ["NAME"…] [action="remove"|"rename"]`: more header fields the sender
    /// may not hand on, and what to do with them.
    fn verdict_headers(&mut self, at: At<'_>, farm: &mut DraftFarm) {
        self.shape(at, &["action"], usize::MAX, false);
        let rename = match Self::prop(at, "action").and_then(|e| self.string(e, at.file, "`action`")).as_deref() {
            None | Some("remove") => false,
            Some("rename") => true,
            Some(other) => {
                self.err(
                    "mtac::verdict-headers::action",
                    format!("unknown action `{other}`"),
                    at.file,
                    at.node.span(),
                    "expected \"remove\" or \"rename\"",
                    "\"remove\" (the default) drops the sender's copies; \"rename\" keeps them as X-Original-NAME",
                );
                false
            }
        };
        let mut names = Vec::new();
        for entry in Self::args(at) {
            let Some(name) = self.string(entry, at.file, "a header field name") else { continue };
            // RFC 5322 §3.6.8: printable ASCII except the colon.
            if name.is_empty() || name.len() > 76 || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                self.err(
                    "mtac::verdict-headers::name",
                    format!("`{name}` is not a header field name"),
                    at.file,
                    entry.span(),
                    "invalid name",
                    "a field name without the colon, e.g. \"X-Barracuda-Spam-Status\"",
                );
                continue;
            }
            let lower = name.to_ascii_lowercase();
            if !names.contains(&lower) {
                names.push(lower);
            }
        }
        farm.verdict_headers = Some((names, rename));
    }

    fn scan(&mut self, at: At<'_>, farm: &mut DraftFarm) {
        self.shape(at, &["max-size", "oversize"], 0, true);
        let max_size = Self::prop(at, "max-size").and_then(|e| self.size(e, at.file, "`max-size`"));
        let pass = match Self::prop(at, "oversize").and_then(|e| self.string(e, at.file, "`oversize`")).as_deref() {
            None | Some("refuse") => false,
            Some("pass") => true,
            Some(other) => {
                self.err(
                    "mtac::scan::oversize",
                    format!("unknown oversize action `{other}`"),
                    at.file,
                    at.node.span(),
                    "expected \"pass\" or \"refuse\"",
                    "\"refuse\" (the default) answers 552; \"pass\" relays a message too large to scan without scanning it",
                );
                false
            }
        };
        if max_size.is_some() {
            farm.scan_max_size = max_size;
        }
        if Self::prop(at, "oversize").is_some() {
            farm.scan_oversize_pass = pass.then_some(Origin { file: at.file, pos: Pos::Span(at.node.span()) });
        }
        for child in Self::children(at) {
            let kind = match child.node.name().value() {
                "clamav" => ScannerKind::Clamav,
                "spamassassin" => ScannerKind::Spamassassin,
                "rspamd" => ScannerKind::Rspamd,
                _ => {
                    self.unknown_node(child, &nodes::names(Place::In("scan")), "`scan`");
                    continue;
                }
            };
            self.shape(child, &["timeout", "fail", "tag", "reject"], 1, false);
            let Some(address) = self.one_string(child, "the scanner's address") else { continue };
            let address_ok = match kind {
                ScannerKind::Rspamd => address.starts_with("http://") && address.len() > 7,
                _ => {
                    address.strip_prefix("unix:").is_some_and(|p| p.starts_with('/'))
                        || address.parse::<SocketAddr>().is_ok()
                }
            };
            if !address_ok {
                self.err(
                    "mtac::scan::address",
                    format!("`{address}` is not a scanner address"),
                    child.file,
                    child.node.span(),
                    "invalid address",
                    "clamd and spamd: \"unix:/run/clamav/clamd.ctl\" or \"127.0.0.1:783\"; rspamd: \"http://127.0.0.1:11333\"",
                );
                continue;
            }
            let timeout = match Self::prop(child, "timeout") {
                Some(e) => self.duration(e, child.file, "`timeout`").unwrap_or(30),
                None => 30,
            };
            let fail_open = match Self::prop(child, "fail") {
                Some(e) => match self.string(e, child.file, "`fail`").as_deref() {
                    Some("open") => true,
                    Some("closed") => false,
                    _ => {
                        self.err(
                            "mtac::scan::fail",
                            "`fail` is \"open\" (accept and log) or \"closed\" (451)".to_owned(),
                            child.file,
                            e.span(),
                            "invalid fail mode",
                            "",
                        );
                        false
                    }
                },
                None => false,
            };
            let score = |this: &mut Self, key: &str| {
                Self::prop(child, key)
                    .and_then(|e| this.integer(e, child.file, &format!("`{key}`"), -1000, 1000))
                    .and_then(|v| i32::try_from(v).ok())
            };
            let tag_score = score(self, "tag");
            let reject_score = score(self, "reject");
            if kind == ScannerKind::Clamav && (tag_score.is_some() || reject_score.is_some()) {
                self.err(
                    "mtac::scan::score",
                    "clamav finds viruses; it has no score".to_owned(),
                    child.file,
                    child.node.span(),
                    "scores on clamav",
                    "put tag= and reject= on spamassassin or rspamd",
                );
            }
            if let (Some(tag), Some(reject)) = (tag_score, reject_score) {
                if tag >= reject {
                    self.err(
                        "mtac::scan::thresholds",
                        format!("tag score {tag} is not below reject score {reject}"),
                        child.file,
                        child.node.span(),
                        "tag can never fire",
                        "mail scoring between tag and reject gets X-Spam headers; tag must be lower",
                    );
                }
            }
            farm.scanners.push(DraftScanner {
                kind,
                address,
                timeout,
                fail_open,
                tag_score,
                reject_score,
                origin: self.origin_of(child),
            });
        }
    }

    fn relay(&mut self, at: At<'_>, farm: &mut DraftFarm) {
        self.shape(at, &[], 0, true);
        let mut backends = Vec::new();
        for child in Self::children(at) {
            if child.node.name().value() != "backend" {
                self.unknown_node(child, &nodes::names(Place::In("relay")), "`relay`");
                continue;
            }
            self.shape(child, &[], 1, false);
            let Some(url) = self.one_string(child, "a back end URL") else { continue };
            let parsed = if let Some(rest) = url.strip_prefix("smtp://") {
                Some((BackendProtocol::Smtp, rest))
            } else {
                url.strip_prefix("lmtp://").map(|rest| (BackendProtocol::Lmtp, rest))
            };
            match parsed {
                Some((protocol, rest)) if valid_host_port(rest) => {
                    backends.push(Backend { protocol, address: rest.to_owned() })
                }
                _ => self.err(
                    "mtac::relay::backend",
                    format!("`{url}` is not a back end URL"),
                    child.file,
                    child.node.span(),
                    "invalid back end",
                    "write \"smtp://host:port\" or \"lmtp://host:port\", e.g. \"smtp://10.0.0.5:25\"",
                ),
            }
        }
        if backends.is_empty() {
            self.err(
                "mtac::relay::empty",
                "`relay` lists no back end".to_owned(),
                at.file,
                at.node.span(),
                "no back end",
                "add `backend \"smtp://10.0.0.5:25\"` (several for failover, tried in order)",
            );
            return;
        }
        farm.relay = Some((DraftRelay::Backends(backends), self.origin_of(at)));
    }

    fn deliver(&mut self, at: At<'_>, dir: &Path, farm: &mut DraftFarm) {
        self.shape(at, &["maildir"], 0, false);
        match Self::prop(at, "maildir") {
            Some(entry) => {
                if let Some(maildir) = self.string(entry, at.file, "`maildir`") {
                    farm.relay = Some((DraftRelay::Maildir(relative_to(dir, maildir)), self.origin_of(at)));
                }
            }
            None => self.err(
                "mtac::deliver",
                "`deliver` needs maildir=\"DIR\"".to_owned(),
                at.file,
                at.node.span(),
                "no maildir",
                "e.g. deliver maildir=\"/var/mail/quickstart\"",
            ),
        }
    }

    fn tls(&mut self, at: At<'_>, dir: &Path, farm: &mut DraftFarm) {
        self.shape(at, &["certificate", "key", "required", "name"], 0, false);
        let get = |this: &mut Self, key: &str| match Self::prop(at, key) {
            Some(e) => this.string(e, at.file, &format!("`{key}`")),
            None => {
                this.err(
                    "mtac::tls",
                    format!("`tls` needs `{key}`"),
                    at.file,
                    at.node.span(),
                    &format!("{key} missing"),
                    "tls certificate=\"/etc/mtac/cert.pem\" key=\"/etc/mtac/key.pem\"",
                );
                None
            }
        };
        let certificate = get(self, "certificate");
        let key = get(self, "key");
        let required = self.bool_prop(at, "required", farm.kind == FarmKind::Submission);
        let name = Self::prop(at, "name").and_then(|e| self.string(e, at.file, "`name`"));
        if let (Some(certificate), Some(key)) = (certificate, key) {
            // Relative paths are relative to the policy file, like every other path it names.
            let (certificate, key) = (relative_to(dir, certificate), relative_to(dir, key));
            farm.tls = Some(DraftTls { certificate, key, required, name, origin: self.origin_of(at) });
        }
    }

    fn auth(&mut self, at: At<'_>, dir: &Path, farm: &mut DraftFarm) {
        self.shape(at, &["mechanisms", "max-failures", "cache", "null-sender", "header-from"], 0, true);
        let mechanisms: Vec<String> = match Self::prop(at, "mechanisms") {
            Some(e) => self
                .string(e, at.file, "`mechanisms`")
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_ascii_uppercase)
                .collect(),
            None => vec!["PLAIN".to_owned(), "LOGIN".to_owned()],
        };
        for m in &mechanisms {
            if m != "PLAIN" && m != "LOGIN" {
                self.err(
                    "mtac::auth::mechanism",
                    format!("unsupported AUTH mechanism `{m}`"),
                    at.file,
                    at.node.span(),
                    "unsupported",
                    "mtac offers PLAIN and LOGIN, inside TLS only",
                );
            }
        }
        let max_failures =
            Self::prop(at, "max-failures").and_then(|e| self.u32_value(e, at.file, "`max-failures`", 1)).unwrap_or(5);
        let cache_ttl = Self::prop(at, "cache").and_then(|e| self.duration(e, at.file, "`cache`")).unwrap_or(0);
        // Off unless asked for, like Postfix's reject_authenticated_sender_login_mismatch: no
        // user owns `<>`, and mail without a return path cannot be traced back to the account.
        let null_sender = self.bool_prop(at, "null-sender", false);
        let mut backend = None;
        let mut users = Vec::new();
        let mut sender_aliases = Vec::new();
        for child in Self::children(at) {
            match child.node.name().value() {
                "may-send-as" => self.sender_aliases(child, dir, &mut sender_aliases),
                "ldap" => {
                    self.shape(child, &["url", "bind-dn"], 0, false);
                    let url = Self::prop(child, "url").and_then(|e| self.string(e, child.file, "`url`"));
                    let dn = Self::prop(child, "bind-dn").and_then(|e| self.string(e, child.file, "`bind-dn`"));
                    match (url, dn) {
                        (Some(url), Some(dn))
                            if (url.starts_with("ldap://") || url.starts_with("ldaps://")) && dn.contains("{user}") =>
                        {
                            backend = Some(AuthBackend::Ldap { url, bind_dn_template: dn })
                        }
                        _ => self.err(
                            "mtac::auth::ldap",
                            "`ldap` needs url=\"ldap://…\" and bind-dn containing {user}".to_owned(),
                            child.file,
                            child.node.span(),
                            "incomplete",
                            "e.g. ldap url=\"ldap://127.0.0.1:389\" bind-dn=\"uid={user},ou=people,dc=example,dc=com\"",
                        ),
                    }
                }
                "user" => {
                    self.shape(child, &["hash"], 1, false);
                    let name = self.one_string(child, "a user name");
                    let hash = Self::prop(child, "hash").and_then(|e| self.string(e, child.file, "`hash`"));
                    match (name, hash) {
                        (Some(name), Some(hash)) if hash.starts_with("$argon2") => {
                            if let Some(entry) = Self::prop(child, "hash") {
                                self.check_hash(&name, &hash, child.file, entry.span());
                            }
                            users.push((name, hash))
                        }
                        (Some(_), _) => self.err(
                            "mtac::auth::hash",
                            "a user needs hash= with a modern password hash (PHC string)".to_owned(),
                            child.file,
                            child.node.span(),
                            "missing or weak hash",
                            "Argon2 PHC strings only ($argon2id$v=19$…, as the `argon2` tool prints them); plain text, crypt(3), scrypt and pbkdf2 hashes are refused",
                        ),
                        _ => {}
                    }
                }
                _ => self.unknown_node(child, &nodes::names(Place::In("auth")), "`auth`"),
            }
        }
        let backend = match (backend, users.is_empty()) {
            (Some(_), false) => {
                self.err(
                    "mtac::auth::backend",
                    "`auth` has both `ldap` and `user` entries".to_owned(),
                    at.file,
                    at.node.span(),
                    "two credential sources",
                    "choose one: the directory (`ldap`) or compiled-in users (`user`)",
                );
                return;
            }
            (Some(b), true) => b,
            (None, false) => AuthBackend::Table(users),
            (None, true) => {
                self.err(
                    "mtac::auth::backend",
                    "`auth` has no credential source".to_owned(),
                    at.file,
                    at.node.span(),
                    "no ldap and no user",
                    "add `ldap url=… bind-dn=…` or `user \"alice\" hash=\"$argon2id$…\"` entries",
                );
                return;
            }
        };
        sender_aliases.sort_unstable();
        sender_aliases.dedup();
        let header_from_owned = match Self::prop(at, "header-from")
            .and_then(|e| self.string(e, at.file, "`header-from`"))
            .as_deref()
        {
            None | Some("any") => false,
            Some("owned") => true,
            Some(other) => {
                self.err(
                        "mtac::auth::header-from",
                        format!("unknown header-from rule `{other}`"),
                        at.file,
                        at.node.span(),
                        "expected \"owned\" or \"any\"",
                        "\"owned\": every From address must be one the user may send as (like MAIL FROM); \"any\" (the default) does not look",
                    );
                false
            }
        };
        let auth = Auth {
            mechanisms,
            backend,
            max_failures,
            cache_ttl,
            sender_aliases,
            null_sender,
            header_from_owned,
            unknown_user_cost: std::sync::OnceLock::new(),
        };
        farm.auth = Some((auth, self.origin_of(at)));
    }

    /// A user's Argon2 PHC string: it must parse as the node will parse it, and should be at
    /// least as strong as OWASP's minimum (Argon2id, m=19456 KiB, t=2), which is also what the
    /// `argon2` crate makes by default. A weak hash is a warning, not an error: it still works,
    /// but a stolen ruleset's passwords fall to a GPU quickly.
    fn check_hash(&mut self, user: &str, phc: &str, file: usize, span: SourceSpan) {
        let parsed = argon2::password_hash::PasswordHash::new(phc)
            .map_err(|e| e.to_string())
            .and_then(|hash| argon2::Params::try_from(&hash).map(|p| (hash.algorithm, p)).map_err(|e| e.to_string()));
        let (algorithm, params) = match parsed {
            Ok(parsed) => parsed,
            Err(e) => {
                self.err(
                    "mtac::auth::hash",
                    format!("the password hash of user `{user}` is not a valid Argon2 PHC string: {e}"),
                    file,
                    span,
                    "unreadable hash",
                    "paste the whole line the `argon2` tool prints after `Encoded:` (or its -e output)",
                );
                return;
            }
        };
        let mut weak = Vec::new();
        if algorithm.as_str() != "argon2id" {
            weak.push(format!("{algorithm} instead of argon2id"));
        }
        if params.m_cost() < MIN_ARGON2_M_KIB {
            weak.push(format!("m={} KiB (below {MIN_ARGON2_M_KIB})", params.m_cost()));
        }
        if params.t_cost() < MIN_ARGON2_T {
            weak.push(format!("t={} (below {MIN_ARGON2_T})", params.t_cost()));
        }
        if !weak.is_empty() {
            self.warn(
                "mtac::auth::weak-hash",
                format!("the password hash of user `{user}` is weak: {}", weak.join(", ")),
                file,
                span,
                "weak hash",
                "hash it again with Argon2id, m=19456 or more, t=2 or more: \
                 printf %s 'PASSWORD' | argon2 \"$(openssl rand -base64 12)\" -id -m 15 -t 2 -p 1 -e",
            );
        }
    }

    /// `may-send-as "USER" "ADDRESS"…`, or `may-send-as file="…"` with lines `USER ADDRESS…`.
    fn sender_aliases(&mut self, at: At<'_>, dir: &Path, out: &mut Vec<(String, String)>) {
        self.shape(at, &["file"], usize::MAX, false);
        let inline = Self::args(at).count();
        let mut values = Vec::new();
        self.values(at, dir, &mut values, &mut Sources::default());
        // The arguments are one line ("USER ADDRESS…"); each line of the file is another.
        let mut lines: Vec<(String, Origin)> = Vec::new();
        if inline > 0 {
            let joined = values.iter().take(inline).map(|(v, _)| v.as_str()).collect::<Vec<_>>().join(" ");
            lines.push((joined, self.origin_of(at)));
        }
        lines.extend(values.into_iter().skip(inline));
        for (line, origin) in lines {
            let mut words = line.split_whitespace();
            let user = words.next().unwrap_or_default().to_ascii_lowercase();
            let addresses: Vec<&str> = words.collect();
            if addresses.is_empty() {
                self.report(
                    Diag::error("mtac::auth::may-send-as", format!("`{line}` names no address"))
                        .help("write the user, then the addresses they may send as: may-send-as \"alice\" \"sales@example.com\""),
                    origin,
                    "user without addresses",
                );
            }
            for address in addresses {
                if syntax::is_mailbox(address) {
                    out.push((user.clone(), address.to_ascii_lowercase()));
                } else {
                    self.report(
                        Diag::error("mtac::address", format!("`{address}` is not a valid address"))
                            .help("write local-part@domain, e.g. sales@example.com"),
                        origin,
                        "invalid address",
                    );
                }
            }
        }
    }

    /// `directory "ldap://…" base="…" { attributes …; filter …; bind …; cache … }`: recipients
    /// of the local domains validated against LDAP at RCPT.
    fn directory(&mut self, at: At<'_>, dir: &Path, farm: &mut DraftFarm) {
        self.shape(at, &["base", "timeout", "pool", "lookups"], 1, true);
        let url = self.one_string(at, "the directory's URL");
        let url_ok = url.as_deref().is_some_and(|u| {
            (u.starts_with("ldap://") || u.starts_with("ldaps://"))
                && u.split_once("://").is_some_and(|(_, h)| !h.is_empty())
        });
        if url.is_some() && !url_ok {
            self.err(
                "mtac::directory::url",
                "the directory needs an ldap:// or ldaps:// URL".to_owned(),
                at.file,
                at.node.span(),
                "not an LDAP URL",
                "e.g. directory \"ldap://127.0.0.1:389\" base=\"ou=people,dc=example,dc=com\"",
            );
        }
        let base = Self::prop(at, "base").and_then(|e| self.string(e, at.file, "`base`"));
        if base.is_none() {
            self.err(
                "mtac::directory::base",
                "the directory needs base=, the subtree to search".to_owned(),
                at.file,
                at.node.span(),
                "no search base",
                "e.g. base=\"ou=people,dc=example,dc=com\"",
            );
        }
        let mut timeout_ms = 2000;
        if let Some(entry) = Self::prop(at, "timeout") {
            match self.duration_ms(entry, at.file, "`timeout`") {
                // Zero would defer every recipient; minutes would hold every RCPT hostage.
                Some(ms @ 1..=30_000) => timeout_ms = ms,
                Some(_) => self.err(
                    "mtac::range",
                    "the directory's `timeout` must be between 1ms and 30s".to_owned(),
                    at.file,
                    entry.span(),
                    "out of range",
                    "a directory slower than that is down, as far as a client waiting at RCPT is concerned",
                ),
                None => {}
            }
        }
        let pool = Self::prop(at, "pool")
            .and_then(|e| self.integer(e, at.file, "`pool`", 1, 256))
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(4);
        let lookups = self.bool_prop(at, "lookups", true);
        let mut attributes = Vec::new();
        let mut filter = None;
        let (mut bind_dn, mut bind_password_file) = (None, None);
        let (mut positive_ttl, mut negative_ttl, mut cache_size) = (600, 60, 100_000);
        for child in Self::children(at) {
            match child.node.name().value() {
                "attributes" => {
                    self.shape(child, &[], usize::MAX, false);
                    for entry in Self::args(child) {
                        if let Some(a) = self.string(entry, child.file, "an attribute name") {
                            if a.is_empty() || !a.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ';') {
                                self.err(
                                    "mtac::directory::attribute",
                                    format!("`{a}` is not an LDAP attribute name"),
                                    child.file,
                                    entry.span(),
                                    "invalid name",
                                    "e.g. attributes \"mail\" \"mailAlternateAddress\"",
                                );
                            } else {
                                attributes.push(a);
                            }
                        }
                    }
                }
                "filter" => {
                    self.shape(child, &[], 1, false);
                    if let Some(f) = self.one_string(child, "an LDAP filter") {
                        let balanced = f.starts_with('(') && f.ends_with(')') && parens_balance(&f);
                        if !f.contains("{address}") || !balanced {
                            self.err(
                                "mtac::directory::filter",
                                "the filter must be a parenthesised RFC 4515 filter containing {address}".to_owned(),
                                child.file,
                                child.node.span(),
                                if balanced { "no {address}" } else { "unbalanced parentheses" },
                                "e.g. filter \"(&(objectClass=inetOrgPerson)(|(mail={address})(mailAlternateAddress={address})))\"",
                            );
                        } else {
                            filter = Some(f);
                        }
                    }
                }
                "bind" => {
                    self.shape(child, &["password-file"], 1, false);
                    bind_dn = self.one_string(child, "the DN to bind as");
                    bind_password_file = Self::prop(child, "password-file")
                        .and_then(|e| self.string(e, child.file, "`password-file`"))
                        .map(|f| relative_to(dir, f));
                    if bind_password_file.is_none() {
                        self.err(
                            "mtac::directory::bind",
                            "`bind` needs password-file=, a file holding the password".to_owned(),
                            child.file,
                            child.node.span(),
                            "no password",
                            "the node reads the file when it loads the ruleset: the password never enters the ruleset",
                        );
                    }
                }
                "cache" => {
                    self.shape(child, &["positive", "negative", "size"], 0, false);
                    if let Some(e) = Self::prop(child, "positive") {
                        positive_ttl = self.duration(e, child.file, "`positive`").unwrap_or(positive_ttl);
                    }
                    if let Some(e) = Self::prop(child, "negative") {
                        negative_ttl = self.duration(e, child.file, "`negative`").unwrap_or(negative_ttl);
                    }
                    if let Some(e) = Self::prop(child, "size") {
                        cache_size = self.u32_value(e, child.file, "`size`", 0).unwrap_or(cache_size);
                    }
                }
                _ => self.unknown_node(child, &nodes::names(Place::In("directory")), "`directory`"),
            }
        }
        if attributes.is_empty() {
            attributes.push("mail".to_owned());
        }
        let filter = filter.unwrap_or_else(|| match attributes.as_slice() {
            [one] => format!("({one}={{address}})"),
            many => format!("(|{})", many.iter().map(|a| format!("({a}={{address}})")).collect::<String>()),
        });
        if let (Some(url), Some(base), true) = (url, base, url_ok) {
            let directory = Directory {
                url,
                base,
                filter,
                attributes,
                bind_dn,
                bind_password_file,
                timeout_ms,
                pool,
                positive_ttl,
                negative_ttl,
                cache_size,
                lookups,
                exported: 0,
            };
            farm.directory = Some((directory, self.origin_of(at)));
        }
    }

    // ----- lists: inline values and files --------------------------------------------------------

    /// String values of a list node: its arguments, then the lines of its `file=`.
    fn values(&mut self, at: At<'_>, dir: &Path, out: &mut Vec<(String, Origin)>, sources: &mut Sources) {
        let mut any = false;
        for entry in Self::args(at) {
            any = true;
            if let Some(value) = self.string(entry, at.file, "a list value") {
                out.push((value, Origin { file: at.file, pos: Pos::Span(entry.span()) }));
                sources.add("inline");
            }
        }
        if let Some(entry) = Self::prop(at, "file") {
            any = true;
            if let Some(name) = self.string(entry, at.file, "`file`") {
                let path = dir.join(&name);
                match self.read_list(&path) {
                    Ok(file) => {
                        sources.add(&path.display().to_string());
                        let text = self.files.get(file).map(|f| f.text.clone()).unwrap_or_default();
                        for (index, line) in text.lines().enumerate() {
                            let line = line.split('#').next().unwrap_or("").trim();
                            if line.is_empty() {
                                continue;
                            }
                            let line_no = u32::try_from(index + 1).unwrap_or(u32::MAX);
                            out.push((line.to_owned(), Origin { file, pos: Pos::Line(line_no) }));
                        }
                    }
                    Err(refusal) => self.refuse(Named::List, &path, refusal, at.file, entry.span()),
                }
            }
        }
        if !any {
            let name = at.node.name().value().to_owned();
            self.warn(
                "mtac::list::empty",
                format!("`{name}` lists nothing"),
                at.file,
                at.node.span(),
                "empty list",
                "give values as arguments, or file=\"list.txt\" with one entry per line",
            );
        }
    }

    fn read_list(&mut self, path: &Path) -> Result<usize, Refusal> {
        let key = self.trees.resolve(path)?;
        if let Some(&file) = self.list_cache.get(&key) {
            return Ok(file);
        }
        let text = files::read_regular(&key, files::LIST_FILE_LIMIT)?;
        let file = self.add_file(&path.display().to_string(), text);
        self.list_cache.insert(key, file);
        Ok(file)
    }

    fn domains(&mut self, at: At<'_>, dir: &Path, subdomains: bool, out: &mut Vec<DomainEntry>, sources: &mut Sources) {
        let mut values = Vec::new();
        self.values(at, dir, &mut values, sources);
        out.reserve(values.len());
        for (value, origin) in values {
            // In list files, `*.example.com` means the domain and all its subdomains.
            let (domain, subs) = match value.strip_prefix("*.") {
                Some(rest) => (rest, true),
                None => (value.as_str(), subdomains),
            };
            if syntax::is_hostname(domain) {
                out.push(DomainEntry { domain: syntax::normalize_domain(domain), subdomains: subs, origin });
            } else {
                self.report(
                    Diag::error("mtac::domain", format!("`{value}` is not a valid domain"))
                        .help("letters, digits and hyphens in dot-separated labels, e.g. example.com (or *.example.com in a file)"),
                    origin,
                    "invalid domain",
                );
            }
        }
    }

    fn addresses(&mut self, at: At<'_>, dir: &Path, out: &mut Vec<AddressEntry>, sources: &mut Sources) {
        let mut values = Vec::new();
        self.values(at, dir, &mut values, sources);
        out.reserve(values.len());
        for (value, origin) in values {
            if syntax::is_mailbox(&value) {
                out.push(AddressEntry { address: value, origin });
            } else {
                self.report(
                    Diag::error("mtac::address", format!("`{value}` is not a valid address"))
                        .help("write local-part@domain, e.g. john.doe@example.com"),
                    origin,
                    "invalid address",
                );
            }
        }
    }

    fn networks(
        &mut self,
        at: At<'_>,
        dir: &Path,
        action: &AccessAction,
        out: &mut Vec<NetEntry>,
        sources: &mut Sources,
    ) {
        let mut values = Vec::new();
        self.values(at, dir, &mut values, sources);
        out.reserve(values.len());
        for (value, origin) in values {
            // A line of a file may carry its own reply text after the network: `192.0.2.0/24 550 5.7.1 text`.
            let (net_text, reply_text) = match value.split_once(char::is_whitespace) {
                Some((net, rest)) if matches!(origin.pos, Pos::Line(_)) => (net, Some(rest.trim())),
                _ => (value.as_str(), None),
            };
            let Some(net) = self.parse_net(net_text, origin) else { continue };
            let action = match (action, reply_text) {
                (AccessAction::Accept, Some(_)) => {
                    self.report(
                        Diag::error("mtac::access::reply", "an accepted network takes no reply text")
                            .help("only reject and defer lists carry replies"),
                        origin,
                        "unexpected text",
                    );
                    continue;
                }
                (AccessAction::Reject(_), Some(text)) | (AccessAction::Defer(_), Some(text)) => {
                    let class = if matches!(action, AccessAction::Reject(_)) { 5 } else { 4 };
                    match parse_reply(text) {
                        Ok(reply) if reply.code / 100 == class => {
                            if class == 5 {
                                AccessAction::Reject(reply)
                            } else {
                                AccessAction::Defer(reply)
                            }
                        }
                        Ok(reply) => {
                            self.report(
                                Diag::error(
                                    "mtac::reply::class",
                                    format!("reply {} has the wrong class for this list", reply.code),
                                )
                                .help("reject lists take 5xx replies, defer lists 4xx"),
                                origin,
                                "wrong reply class",
                            );
                            continue;
                        }
                        Err(why) => {
                            self.report(
                                Diag::error("mtac::reply", format!("invalid SMTP reply: {why}")).help(
                                    "after the network, write \"CODE X.Y.Z text\", e.g. 550 5.7.1 Known spam source",
                                ),
                                origin,
                                "invalid reply",
                            );
                            continue;
                        }
                    }
                }
                (action, None) => action.clone(),
            };
            out.push(NetEntry { net, action, origin });
        }
    }

    fn parse_net(&mut self, text: &str, origin: Origin) -> Option<IpNet> {
        let parsed = match text.parse::<IpNet>() {
            Ok(net) => Some(net),
            Err(_) => text.parse::<IpAddr>().ok().map(IpNet::from),
        };
        match parsed {
            Some(net) => {
                if net.trunc() != net {
                    self.report(
                        Diag::warning("mtac::cidr::host-bits", format!("`{text}` has host bits set"))
                            .help(format!("it is read as {}; write that to say so", net.trunc())),
                        origin,
                        "host bits set",
                    );
                }
                Some(net.trunc())
            }
            None => {
                self.report(
                    Diag::error("mtac::cidr", format!("`{text}` is not an IP address or CIDR network"))
                        .help("write 192.0.2.0/24, 2001:db8::/32, or a single address"),
                    origin,
                    "invalid network",
                );
                None
            }
        }
    }
}

/// OWASP's minimum Argon2id memory cost, in KiB (19 MiB), and its time cost at that memory.
const MIN_ARGON2_M_KIB: u32 = 19_456;
const MIN_ARGON2_T: u32 = 2;

/// What kind of file a policy named, for the diagnostics of a refused one.
#[derive(Clone, Copy)]
enum Named {
    Include,
    List,
}

impl Named {
    fn code(self, include: &'static str, list: &'static str) -> &'static str {
        match self {
            Named::Include => include,
            Named::List => list,
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Named::Include => "included file",
            Named::List => "list",
        }
    }
}

/// The identity of an included file for cycle detection: its canonical path when it exists, so
/// `../sub/frag.kdl` and `frag.kdl` are the same file.
fn stack_key(name: &str) -> PathBuf {
    std::fs::canonicalize(name).unwrap_or_else(|_| PathBuf::from(name))
}

/// A path the policy names, relative to the policy file's directory unless absolute.
/// Whether every `(` of an LDAP filter is closed, and none closes early.
fn parens_balance(filter: &str) -> bool {
    let mut depth = 0i32;
    for c in filter.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ => {}
        }
        if depth < 0 {
            return false;
        }
    }
    depth == 0
}

fn relative_to(dir: &Path, path: String) -> String {
    if Path::new(&path).is_absolute() {
        path
    } else {
        dir.join(path).display().to_string()
    }
}

fn type_name(value: &KdlValue) -> &'static str {
    match value {
        KdlValue::String(_) => "a string",
        KdlValue::Integer(_) => "an integer",
        KdlValue::Float(_) => "a number",
        KdlValue::Bool(_) => "a boolean",
        KdlValue::Null => "#null",
    }
}

fn valid_host_port(text: &str) -> bool {
    if text.parse::<SocketAddr>().is_ok() {
        return true;
    }
    match text.rsplit_once(':') {
        Some((host, port)) => syntax::is_hostname(host) && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

/// `30s`, `5m`, `4h`, `36d`, or plain seconds.
pub fn parse_duration(text: &str) -> Option<u32> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u32 = number.parse().ok()?;
    let factor = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// `512KiB`, `25MiB`, `15MB`, `1GiB`, or plain bytes.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "KiB" => 1024,
        "MB" => 1_000_000,
        "MiB" => 1024 * 1024,
        "GB" => 1_000_000_000,
        "GiB" => 1024 * 1024 * 1024,
        _ => return None,
    };
    number.checked_mul(factor)
}

/// `550 5.7.1 text` → a checked reply.
pub fn parse_reply(text: &str) -> Result<Reply, String> {
    let mut parts = text.splitn(3, ' ');
    let code: u16 = parts
        .next()
        .and_then(|c| c.parse().ok())
        .filter(|c| (400..600).contains(c))
        .ok_or("the code must be 4xx or 5xx")?;
    let status = parts.next().ok_or("the enhanced status code (X.Y.Z) is missing")?;
    let fields: Vec<&str> = status.split('.').collect();
    let valid_status = fields.len() == 3
        && fields.iter().all(|f| !f.is_empty() && f.len() <= 3 && f.bytes().all(|b| b.is_ascii_digit()));
    if !valid_status {
        return Err(format!("`{status}` is not an enhanced status code like 5.7.1"));
    }
    if fields.first().copied() != Some(&code.to_string()[..1]) {
        return Err(format!("status {status} does not match the class of code {code}"));
    }
    let message = parts.next().unwrap_or("").trim();
    if message.is_empty() {
        return Err("the reply text is missing".to_owned());
    }
    if message.chars().any(|c| c.is_control()) {
        return Err("the text must be one line without control characters".to_owned());
    }
    if message.len() > 400 {
        return Err("the text is longer than 400 bytes".to_owned());
    }
    Ok(Reply { code, status: status.to_owned(), text: message.to_owned() })
}

/// `127.0.0.2`, `127.0.0.[4..7]`, `127.0.[0..255].[1..3]`.
pub fn parse_answer_pattern(text: &str) -> Option<[(u8, u8); 4]> {
    let mut octets = [(0u8, 0u8); 4];
    // Split on the dots that separate octets, not the `..` inside a `[lo..hi]` range.
    let mut parts_list = Vec::with_capacity(4);
    let mut depth = 0usize;
    let mut start = 0usize;
    for (i, c) in text.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.checked_sub(1)?,
            '.' if depth == 0 => {
                parts_list.push(text.get(start..i)?);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts_list.push(text.get(start..)?);
    let mut parts = parts_list.into_iter();
    for slot in octets.iter_mut() {
        let part = parts.next()?;
        *slot = if let Some(range) = part.strip_prefix('[').and_then(|p| p.strip_suffix(']')) {
            let (lo, hi) = range.split_once("..")?;
            let (lo, hi): (u8, u8) = (lo.parse().ok()?, hi.parse().ok()?);
            if lo > hi {
                return None;
            }
            (lo, hi)
        } else {
            let v: u8 = part.parse().ok()?;
            (v, v)
        };
    }
    if parts.next().is_some() {
        return None;
    }
    Some(octets)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("30s"), Some(30));
        assert_eq!(parse_duration("5m"), Some(300));
        assert_eq!(parse_duration("36d"), Some(36 * 86400));
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_size("25MiB"), Some(25 * 1024 * 1024));
        assert_eq!(parse_size("15MB"), Some(15_000_000));
        assert_eq!(parse_size("lots"), None);
    }

    #[test]
    fn replies() {
        let reply = parse_reply("550 5.7.1 Go away").unwrap();
        assert_eq!((reply.code, reply.status.as_str(), reply.text.as_str()), (550, "5.7.1", "Go away"));
        assert!(parse_reply("550 4.7.1 mismatch").is_err());
        assert!(parse_reply("250 2.0.0 ok").is_err());
        assert!(parse_reply("550 5.7.1").is_err());
    }

    #[test]
    fn answer_patterns() {
        assert_eq!(parse_answer_pattern("127.0.0.2"), Some([(127, 127), (0, 0), (0, 0), (2, 2)]));
        assert_eq!(parse_answer_pattern("127.0.0.[4..7]"), Some([(127, 127), (0, 0), (0, 0), (4, 7)]));
        assert_eq!(parse_answer_pattern("127.0.0.[7..4]"), None);
        assert_eq!(parse_answer_pattern("127.0.0"), None);
    }
}
