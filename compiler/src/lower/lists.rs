//! List nodes and list files: docs/policy.md section 2, `local-domains`, `local-addresses`,
//! `role-accounts`, `relay-clients`, `access`, and section 4, "List files and case rules".

use super::include::Named;
use super::ir::{AddressEntry, DomainEntry, DraftFarm, NetEntry, Origin, Pos, Sources};
use super::read::parse_reply;
use super::{At, Lowerer};
use crate::diag::Diag;
use crate::files::{self, Refusal};
use crate::nodes::{self, Place};
use ipnet::IpNet;
use mtac_ruleset::model::{AccessAction, Reply, Stage};
use mtac_ruleset::syntax;
use std::net::IpAddr;
use std::path::Path;

impl Lowerer {
    pub(crate) fn local_domains(&mut self, at: At<'_>, dir: &Path, farm: &mut DraftFarm) {
        self.shape(at, &["file", "subdomains"], usize::MAX, false);
        let subdomains = self.bool_prop(at, "subdomains", false);
        let mut entries = Vec::new();
        self.domains(at, dir, subdomains, &mut entries, &mut farm.local_domain_sources);
        farm.local_domains.extend(entries);
    }

    pub(crate) fn local_addresses(&mut self, at: At<'_>, dir: &Path, farm: &mut DraftFarm) {
        self.shape(at, &["file"], usize::MAX, false);
        let mut entries = Vec::new();
        self.addresses(at, dir, &mut entries, &mut farm.local_address_sources);
        farm.local_addresses.extend(entries);
    }

    pub(crate) fn role_accounts(&mut self, at: At<'_>, _dir: &Path, farm: &mut DraftFarm) {
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
                    self.reporter.err(
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

    pub(crate) fn relay_clients(&mut self, at: At<'_>, dir: &Path, farm: &mut DraftFarm) {
        self.shape(at, &["file"], usize::MAX, false);
        let mut entries = Vec::new();
        self.networks(at, dir, &AccessAction::Accept, &mut entries, &mut farm.relay_client_sources);
        farm.relay_clients.extend(entries);
    }

    pub(crate) fn access(&mut self, at: At<'_>, dir: &Path, farm: &mut DraftFarm) {
        self.shape(at, &["stage"], 0, true);
        farm.access_stage = self.stage(at, &Stage::COMMANDS).or(farm.access_stage);
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

    // ----- lists: inline values and files --------------------------------------------------------

    /// String values of a list node: its arguments, then the lines of its `file=`.
    pub(super) fn values(&mut self, at: At<'_>, dir: &Path, out: &mut Vec<(String, Origin)>, sources: &mut Sources) {
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
                        let text = self.reporter.files.get(file).map(|f| f.text.clone()).unwrap_or_default();
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
            self.reporter.warn(
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
        let file = self.reporter.add_file(&path.display().to_string(), text);
        self.list_cache.insert(key, file);
        Ok(file)
    }

    pub(super) fn domains(
        &mut self,
        at: At<'_>,
        dir: &Path,
        subdomains: bool,
        out: &mut Vec<DomainEntry>,
        sources: &mut Sources,
    ) {
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
                self.reporter.report(
                    Diag::error("mtac::domain", format!("`{value}` is not a valid domain"))
                        .help("letters, digits and hyphens in dot-separated labels, e.g. example.com (or *.example.com in a file)"),
                    origin,
                    "invalid domain",
                );
            }
        }
    }

    pub(super) fn addresses(&mut self, at: At<'_>, dir: &Path, out: &mut Vec<AddressEntry>, sources: &mut Sources) {
        let mut values = Vec::new();
        self.values(at, dir, &mut values, sources);
        out.reserve(values.len());
        for (value, origin) in values {
            if syntax::is_mailbox(&value) {
                out.push(AddressEntry { address: value, origin });
            } else {
                self.reporter.report(
                    Diag::error("mtac::address", format!("`{value}` is not a valid address"))
                        .help("write local-part@domain, e.g. john.doe@example.com"),
                    origin,
                    "invalid address",
                );
            }
        }
    }

    pub(super) fn networks(
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
                    self.reporter.report(
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
                            self.reporter.report(
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
                            self.reporter.report(
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

    pub(super) fn parse_net(&mut self, text: &str, origin: Origin) -> Option<IpNet> {
        let parsed = match text.parse::<IpNet>() {
            Ok(net) => Some(net),
            Err(_) => text.parse::<IpAddr>().ok().map(IpNet::from),
        };
        match parsed {
            Some(net) => {
                if net.trunc() != net {
                    self.reporter.report(
                        Diag::warning("mtac::cidr::host-bits", format!("`{text}` has host bits set"))
                            .help(format!("it is read as {}; write that to say so", net.trunc())),
                        origin,
                        "host bits set",
                    );
                }
                Some(net.trunc())
            }
            None => {
                self.reporter.report(
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
