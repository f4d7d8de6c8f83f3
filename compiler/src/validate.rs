//! Validation of a lowered policy: duplicates, contradictions, rules that can never fire, and the
//! safety errors (open relay, AUTH without TLS, a farm with no back end). Runs on the whole
//! [`Draft`] and reports everything it finds.

use crate::diag::{did_you_mean, Diag, Reporter};
use crate::lower::{Draft, DraftFarm, NetEntry, Origin};
use ipnet::IpNet;
use mtac_ruleset::model::{AccessAction, FarmKind};
use std::collections::HashMap;
use std::net::IpAddr;

/// How many findings of one kind are listed before they are summarised.
const MAX_LISTED: usize = 10;

pub fn validate(reporter: &mut Reporter, draft: &Draft) {
    if draft.hostname.is_none() {
        reporter.push(
            Diag::error("mtac::hostname::missing", "the policy names no host name")
                .help("add `hostname \"mx1.example.net\"` at the top level: it is the greeting and Received name"),
        );
    }
    if draft.farms.is_empty() {
        reporter.push(
            Diag::error("mtac::farm::none", "the policy defines no farm")
                .help("add `farm \"mx\" kind=\"inbound-mx\" { … }` (see docs/policy.md)"),
        );
    }
    let mut listeners: HashMap<std::net::SocketAddr, (&str, Origin)> = HashMap::new();
    for farm in &draft.farms {
        for (listener, origin) in &farm.listeners {
            if let Some((other, _)) = listeners.get(&listener.address) {
                reporter.report(
                    Diag::error(
                        "mtac::listen::shared",
                        format!("{} is also a listener of farm `{other}`", listener.address),
                    )
                    .help("each address:port belongs to one farm"),
                    *origin,
                    "listened on twice",
                );
            } else {
                listeners.insert(listener.address, (&farm.name, *origin));
            }
        }
        validate_farm(reporter, farm);
        if let (Some(tls), Some((hostname, _))) = (&farm.tls, &draft.hostname) {
            let name = tls.name.as_deref().unwrap_or(hostname);
            certificate(reporter, farm, &tls.certificate, name, tls.origin);
        }
    }
}

/// The largest certificate file read: a PEM chain is a few KiB.
const CERTIFICATE_LIMIT: u64 = 1 << 20;

/// Days before expiry under which `mtac check` warns.
const EXPIRY_WARNING_DAYS: i64 = 14;

/// The farm's certificate: it must parse, be valid now, not expire within two weeks (warning),
/// and name the node's host name — an error on a submission farm, whose clients verify it, a
/// warning on an inbound one, where SMTP clients seldom do.
fn certificate(reporter: &mut Reporter, farm: &DraftFarm, path: &str, hostname: &str, origin: Origin) {
    // Certificates live outside the policy's tree (/etc/…), so only the file checks of
    // `files` apply: a policy naming /dev/zero must not hang `mtac check`.
    let bytes = match crate::files::read_regular(std::path::Path::new(path), CERTIFICATE_LIMIT) {
        Ok(text) => text.into_bytes(),
        Err(crate::files::Refusal::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => return, // reported above
        Err(_) => {
            reporter.report(
                Diag::error(
                    "mtac::tls::certificate",
                    format!("TLS certificate {path}: not a PEM file of at most 1 MiB"),
                )
                .help("the file holds the PEM chain, the server's certificate first"),
                origin,
                "unreadable certificate",
            );
            return;
        }
    };
    let problem = |message: String| Diag::error("mtac::tls::certificate", message);
    let pem = match x509_parser::pem::Pem::iter_from_buffer(&bytes).next() {
        Some(Ok(pem)) => pem,
        _ => {
            reporter.report(
                problem(format!("TLS certificate {path}: no PEM certificate in it"))
                    .help("the file holds the PEM chain, the server's certificate first"),
                origin,
                "unreadable certificate",
            );
            return;
        }
    };
    let cert = match pem.parse_x509() {
        Ok(cert) => cert,
        Err(e) => {
            reporter.report(problem(format!("TLS certificate {path}: {e}")), origin, "unreadable certificate");
            return;
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let validity = cert.validity();
    let (not_before, not_after) = (validity.not_before.timestamp(), validity.not_after.timestamp());
    if not_after < now {
        reporter.report(
            problem(format!("TLS certificate {path} expired on {}", validity.not_after))
                .help("renew it; clients that verify certificates refuse an expired one"),
            origin,
            "expired certificate",
        );
    } else if not_before > now {
        reporter.report(
            problem(format!("TLS certificate {path} is not valid before {}", validity.not_before)),
            origin,
            "certificate not yet valid",
        );
    } else if not_after - now < EXPIRY_WARNING_DAYS * 86_400 {
        reporter.report(
            Diag::warning(
                "mtac::tls::expiring",
                format!(
                    "TLS certificate {path} expires on {} (in {} days)",
                    validity.not_after,
                    (not_after - now) / 86_400
                ),
            )
            .help("renew it; a node reloads renewed certificate files by itself"),
            origin,
            "expires soon",
        );
    }
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        // Only without subjectAltName do clients fall back to the common name (RFC 6125 6.4.4).
        names =
            cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).map(str::to_ascii_lowercase).collect();
    }
    let host = hostname.to_ascii_lowercase();
    let matches = |name: &str| match name.strip_prefix("*.") {
        Some(parent) => host.split_once('.').is_some_and(|(_, rest)| rest == parent),
        None => name == host,
    };
    if !names.iter().any(|n| matches(n)) {
        let message = format!("TLS certificate {path} does not name {hostname} (it names: {})", names.join(", "));
        let help = "the certificate must name the host clients connect to: the policy's `hostname`, or the \
                    farm's `tls name=\"…\"` when clients use another name for it";
        let diag = if farm.kind == FarmKind::Submission {
            Diag::error("mtac::tls::name", message)
        } else {
            Diag::warning("mtac::tls::name", message)
        };
        reporter.report(diag.help(help), origin, "certificate for another name");
    }
}

fn validate_farm(reporter: &mut Reporter, farm: &DraftFarm) {
    let name = &farm.name;
    if farm.listeners.is_empty() {
        reporter.report(
            Diag::error("mtac::listen::none", format!("farm `{name}` listens nowhere"))
                .help("add e.g. `listen \"0.0.0.0:25\"`"),
            farm.origin,
            "no listen",
        );
    }
    if farm.relay.is_none() {
        reporter.report(
            Diag::error("mtac::relay::none", format!("farm `{name}` has no back end"))
                .help("mtac keeps no queue: add `relay { backend \"smtp://10.0.0.5:25\" }`, or `deliver maildir=\"DIR\"` on one machine"),
            farm.origin,
            "mail would have nowhere to go",
        );
    }
    match farm.kind {
        FarmKind::InboundMx => {
            if farm.local_domains.is_empty() {
                reporter.report(
                    Diag::error("mtac::local-domains::none", format!("inbound farm `{name}` has no local domains"))
                        .help("list the domains it receives mail for: `local-domains \"example.com\"`; without them every recipient is refused"),
                    farm.origin,
                    "accepts no mail",
                );
            }
        }
        FarmKind::Submission => {
            if farm.auth.is_none() {
                reporter.report(
                    Diag::error("mtac::submission::no-auth", format!("submission farm `{name}` has no `auth`")).help(
                        "a submission farm relays for its users only: add `auth { ldap … }` or `auth { user … }`",
                    ),
                    farm.origin,
                    "anyone could relay",
                );
            }
            if farm.greylist.is_some() {
                reporter.report(
                    Diag::warning("mtac::greylist::submission", "greylisting never applies on a submission farm")
                        .help("authenticated clients skip greylisting; remove it"),
                    farm.greylist.as_ref().map_or(farm.origin, |g| g.origin),
                    "can never fire",
                );
            }
        }
    }
    if let Some(origin) = farm.scan_oversize_pass {
        let max = farm.scan_max_size.unwrap_or(farm.limits.message_size);
        let virus_scanner = farm.scanners.iter().any(|s| s.kind == mtac_ruleset::model::ScannerKind::Clamav);
        if virus_scanner && max < farm.limits.message_size {
            reporter.report(
                Diag::warning(
                    "mtac::scan::unscanned",
                    format!(
                        "messages of {max} to {} bytes reach the back end without a virus scan",
                        farm.limits.message_size
                    ),
                )
                .help(
                    "without oversize=\"pass\" they are refused with 552 5.3.4; or raise max-size to the message size",
                ),
                origin,
                "relays unscanned mail",
            );
        }
    }
    if let Some((_, origin)) = &farm.auth {
        if farm.tls.is_none() {
            reporter.report(
                Diag::error("mtac::auth::no-tls", format!("farm `{name}` offers AUTH without TLS"))
                    .help("passwords must never cross the network in clear: add `tls certificate=\"…\" key=\"…\"`"),
                *origin,
                "AUTH without TLS",
            );
        }
    }
    for (listener, origin) in &farm.listeners {
        if listener.implicit_tls && farm.tls.is_none() {
            reporter.report(
                Diag::error(
                    "mtac::listen::no-certificate",
                    format!("{} wants implicit TLS but the farm has no `tls`", listener.address),
                )
                .help("add `tls certificate=\"…\" key=\"…\"` to the farm"),
                *origin,
                "implicit TLS without a certificate",
            );
        }
        let port = listener.address.port();
        if farm.kind == FarmKind::Submission && port == 25 {
            reporter.report(
                Diag::warning("mtac::listen::port", "a submission farm on port 25")
                    .help("submission is ports 587 and 465 (RFC 6409, RFC 8314); MX traffic on 25 would be refused for want of AUTH"),
                *origin,
                "port 25",
            );
        }
        if farm.kind == FarmKind::InboundMx && (port == 587 || port == 465) {
            reporter.report(
                Diag::warning("mtac::listen::port", format!("an inbound-mx farm on submission port {port}"))
                    .help("users submitting here would be treated as strangers; use a submission farm"),
                *origin,
                "submission port",
            );
        }
    }
    if let Some(tls) = &farm.tls {
        for (what, path) in [("certificate", &tls.certificate), ("key", &tls.key)] {
            if let Err(e) = std::fs::metadata(path) {
                reporter.report(
                    Diag::error("mtac::tls::file", format!("TLS {what} {path}: {e}"))
                        .help("the node reads it at start and on reload; deploy it with the ruleset"),
                    tls.origin,
                    "file missing",
                );
            }
        }
    }
    for entry in farm.local_domains.iter().filter(|d| d.subdomains && !d.domain.contains('.')) {
        reporter.report(
            Diag::error(
                "mtac::open-relay",
                format!("farm `{}` would accept mail for every domain under `.{}`", farm.name, entry.domain),
            )
            .help(format!(
                "counter-example: client 198.51.100.77, MAIL FROM:<spammer@example.org>, RCPT TO:<someone@victim.{}> \
                     would be accepted and relayed. List the exact domains you receive mail for",
                entry.domain
            )),
            entry.origin,
            "a whole top-level domain",
        );
    }
    check_ban_rules(reporter, farm, &crate::emit::rule_names(&crate::emit::program(farm, "", None, None)));
    duplicate_domains(reporter, farm);
    addresses_outside_domains(reporter, farm);
    access_conflicts(reporter, &farm.access, "access");
    relay_clients(reporter, farm);
    dnsbl(reporter, farm);
}

fn duplicate_domains(reporter: &mut Reporter, farm: &DraftFarm) {
    let mut seen: HashMap<(&str, bool), Origin> = HashMap::with_capacity(farm.local_domains.len());
    let mut reported = 0usize;
    let mut more = 0usize;
    for entry in &farm.local_domains {
        if let Some(first) = seen.insert((&entry.domain, entry.subdomains), entry.origin) {
            if reported < MAX_LISTED {
                reported += 1;
                let first_at = reporter.describe(first);
                reporter.report(
                    Diag::warning(
                        "mtac::local-domains::duplicate",
                        format!("local domain `{}` is listed twice", entry.domain),
                    )
                    .help(format!("first listed at {first_at}; remove one")),
                    entry.origin,
                    "duplicate",
                );
            } else {
                more += 1;
            }
        }
    }
    summarise(reporter, more, "duplicate local domains");
}

/// Addresses whose domain is not local can never be accepted: relay control refuses them first.
fn addresses_outside_domains(reporter: &mut Reporter, farm: &DraftFarm) {
    if farm.local_addresses.is_empty() {
        return;
    }
    let exact: HashMap<&str, ()> = farm.local_domains.iter().map(|d| (d.domain.as_str(), ())).collect();
    let wildcard: Vec<&str> = farm.local_domains.iter().filter(|d| d.subdomains).map(|d| d.domain.as_str()).collect();
    let is_local = |domain: &str| {
        exact.contains_key(domain)
            || wildcard.iter().any(|w| {
                domain.len() > w.len()
                    && domain.ends_with(w)
                    && domain.as_bytes().get(domain.len() - w.len() - 1) == Some(&b'.')
            })
    };
    let mut sorted: Vec<(String, usize)> = Vec::with_capacity(farm.local_addresses.len());
    let mut outside = 0usize;
    let mut listed = 0usize;
    for (index, entry) in farm.local_addresses.iter().enumerate() {
        let key = entry.address.to_ascii_lowercase();
        let domain = key.rsplit_once('@').map_or("", |(_, d)| d).trim_end_matches('.');
        if !is_local(domain) {
            if listed < MAX_LISTED {
                listed += 1;
                reporter.report(
                    Diag::warning(
                        "mtac::local-addresses::not-local",
                        format!("`{}` is not in a local domain: it can never match", entry.address),
                    )
                    .help("add its domain to `local-domains`, or remove the address"),
                    entry.origin,
                    "never matches",
                );
            } else {
                outside += 1;
            }
        }
        sorted.push((key, index));
    }
    summarise(reporter, outside, "addresses outside the local domains");
    sorted.sort_unstable();
    let mut dup_more = 0usize;
    let mut dup_listed = 0usize;
    for pair in sorted.windows(2) {
        if let [(a, first), (b, second)] = pair {
            if a == b {
                if dup_listed < MAX_LISTED {
                    dup_listed += 1;
                    let (Some(f), Some(s)) = (farm.local_addresses.get(*first), farm.local_addresses.get(*second))
                    else {
                        continue;
                    };
                    let first_at = reporter.describe(f.origin);
                    reporter.report(
                        Diag::warning(
                            "mtac::local-addresses::duplicate",
                            format!("address `{}` is listed twice", s.address),
                        )
                        .help(format!("first listed at {first_at} (addresses compare case-insensitively)")),
                        s.origin,
                        "duplicate",
                    );
                } else {
                    dup_more += 1;
                }
            }
        }
    }
    summarise(reporter, dup_more, "duplicate addresses");
}

fn action_name(action: &AccessAction) -> &'static str {
    match action {
        AccessAction::Accept => "accept",
        AccessAction::Reject(_) => "reject",
        AccessAction::Defer(_) => "defer",
    }
}

/// Same network twice with different actions is an error; nested networks with different actions
/// are legal (the longer prefix wins) and explained; nested ones with the same action never fire.
pub fn access_conflicts(reporter: &mut Reporter, entries: &[NetEntry], list: &str) {
    // Sort by family, network start, then prefix length: an enclosing prefix comes before what it contains.
    // Equal keys keep list order (the index is the last key). The keys are computed once, beside the
    // index, so that sorting a large list does not chase every entry on each comparison.
    let mut keyed: Vec<(u8, u128, u8, usize)> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| match e.net {
            IpNet::V4(n) => (0u8, u128::from(u32::from(n.network())), n.prefix_len(), i),
            IpNet::V6(n) => (1u8, u128::from(n.network()), n.prefix_len(), i),
        })
        .collect();
    keyed.sort_unstable();
    let order: Vec<usize> = keyed.into_iter().map(|(_, _, _, i)| i).collect();
    let mut stack: Vec<usize> = Vec::new();
    let (mut contradictions, mut overlaps, mut redundant, mut dups) = (0usize, 0usize, 0usize, 0usize);
    let mut hidden = 0usize;
    for &index in &order {
        let Some(entry) = entries.get(index) else { continue };
        while let Some(&top) = stack.last() {
            if entries.get(top).is_some_and(|t| t.net.contains(&entry.net)) {
                break;
            }
            stack.pop();
        }
        if let Some(parent) = stack.last().and_then(|&t| entries.get(t)) {
            let (this, that) = (action_name(&entry.action), action_name(&parent.action));
            // `describe` scans the list file up to the parent's line: call it only for a
            // diagnostic that is listed, not for every nested entry of a large list.
            if parent.net == entry.net {
                if this != that {
                    contradictions += 1;
                    let parent_at = reporter.describe(parent.origin);
                    reporter.report(
                        Diag::error(
                            "mtac::access::contradiction",
                            format!("{} is both {that}ed and {this}ed in {list}", entry.net),
                        )
                        .help(format!("the other entry is at {parent_at}; keep one of them")),
                        entry.origin,
                        "contradicts an earlier entry",
                    );
                } else if parent.action == entry.action {
                    if dups < MAX_LISTED {
                        let parent_at = reporter.describe(parent.origin);
                        reporter.report(
                            Diag::warning(
                                "mtac::access::duplicate",
                                format!("{} is listed twice in {list}", entry.net),
                            )
                            .help(format!("first at {parent_at}")),
                            entry.origin,
                            "duplicate",
                        );
                    } else {
                        hidden += 1;
                    }
                    dups += 1;
                } else {
                    contradictions += 1;
                    let parent_at = reporter.describe(parent.origin);
                    reporter.report(
                        Diag::error(
                            "mtac::access::contradiction",
                            format!("{} is listed twice in {list} with different replies", entry.net),
                        )
                        .help(format!("the other entry is at {parent_at}; keep one reply")),
                        entry.origin,
                        "contradicts an earlier entry",
                    );
                }
            } else if this != that {
                if overlaps < MAX_LISTED {
                    let parent_at = reporter.describe(parent.origin);
                    reporter.report(
                        Diag::warning(
                            "mtac::access::overlap",
                            format!("{} ({this}) lies inside {} ({that})", entry.net, parent.net),
                        )
                        .help(format!(
                            "the longest prefix wins: {this} for {}, {that} for the rest of {} (at {parent_at})",
                            entry.net, parent.net
                        )),
                        entry.origin,
                        "overrides a wider entry",
                    );
                } else {
                    hidden += 1;
                }
                overlaps += 1;
            } else if parent.action == entry.action {
                if redundant < MAX_LISTED {
                    let parent_at = reporter.describe(parent.origin);
                    reporter.report(
                        Diag::warning(
                            "mtac::access::never-fires",
                            format!("{} can never change a decision", entry.net),
                        )
                        .help(format!(
                            "{} (at {parent_at}) already {that}s it with the same reply; remove the narrower entry",
                            parent.net
                        )),
                        entry.origin,
                        "redundant",
                    );
                } else {
                    hidden += 1;
                }
                redundant += 1;
            }
        }
        stack.push(index);
    }
    summarise(reporter, hidden, &format!("further overlapping or duplicate entries in {list}"));
    let _ = contradictions;
}

/// Public networks wider than a /16 (v4) or /32 (v6) in relay-clients make an open relay.
fn relay_clients(reporter: &mut Reporter, farm: &DraftFarm) {
    for entry in &farm.relay_clients {
        let too_wide = match entry.net {
            IpNet::V4(n) => n.prefix_len() < 16,
            IpNet::V6(n) => n.prefix_len() < 32,
        };
        if !too_wide {
            continue;
        }
        if let Some(client) = public_address_in(&entry.net) {
            let rcpt = "someone@relay-probe.example";
            reporter.report(
                Diag::error("mtac::open-relay", format!("farm `{}` would relay for anyone in {}", farm.name, entry.net))
                    .help(format!(
                        "counter-example: client {client}, MAIL FROM:<spammer@example.org>, RCPT TO:<{rcpt}> would be relayed. \
                         List only your own networks in relay-clients; users authenticate on a submission farm"
                    )),
                entry.origin,
                "open relay",
            );
        }
    }
    access_conflicts(reporter, &farm.relay_clients, "relay-clients");
}

/// A globally routable address inside `net`, if there is one (for counter-examples).
pub fn public_address_in(net: &IpNet) -> Option<IpAddr> {
    let candidates: [IpAddr; 8] = [
        net.network(),
        IpAddr::from([8, 8, 8, 8]),
        IpAddr::from([1, 1, 1, 1]),
        IpAddr::from([45, 1, 2, 3]),
        IpAddr::from([100, 1, 2, 3]),
        IpAddr::from([200, 1, 2, 3]),
        "2001:4860:4860::8888".parse().unwrap_or(IpAddr::from([0u8; 16])),
        "2a00:1450::1".parse().unwrap_or(IpAddr::from([0u8; 16])),
    ];
    candidates.into_iter().find(|ip| net.contains(ip) && is_global(*ip))
}

fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || a >= 224)
        }
        IpAddr::V6(v6) => {
            let first = v6.segments().first().copied().unwrap_or(0);
            (0x2000..0x4000).contains(&first) && !(first == 0x2001 && v6.segments().get(1) == Some(&0x0db8))
        }
    }
}

fn dnsbl(reporter: &mut Reporter, farm: &DraftFarm) {
    let Some(dnsbl) = &farm.dnsbl else { return };
    // A zone may return several addresses, each matching its own answer: every positive weight counts.
    let reachable: i64 = dnsbl.zones.iter().flat_map(|z| &z.answers).map(|a| i64::from(a.weight.max(0))).sum();
    if reachable < i64::from(dnsbl.threshold) {
        reporter.report(
            Diag::error(
                "mtac::dnsbl::never-fires",
                format!("the DNS lists can score at most {reachable}, below the threshold {}", dnsbl.threshold),
            )
            .help("raise the answer weights or lower the threshold: as written, no client is ever rejected"),
            dnsbl.origin,
            "can never fire",
        );
    }
    if let Some(allow) = dnsbl.allow_threshold {
        let lowest: i64 =
            dnsbl.zones.iter().map(|z| i64::from(z.answers.iter().map(|a| a.weight).min().unwrap_or(0).min(0))).sum();
        if lowest > i64::from(allow) {
            reporter.report(
                Diag::warning(
                    "mtac::dnsbl::allow-never-fires",
                    format!("no answer has a negative weight, so allow-threshold {allow} is never reached"),
                )
                .help("give an allow list (DNSWL) negative weights, e.g. `answer \"127.0.[0..255].[1..3]\" weight=-2`"),
                dnsbl.origin,
                "can never fire",
            );
        }
    }
    let mut zones: HashMap<&str, Origin> = HashMap::new();
    for zone in &dnsbl.zones {
        if zones.insert(zone.zone.as_str(), zone.origin).is_some() {
            reporter.report(
                Diag::warning("mtac::dnsbl::duplicate", format!("zone `{}` is listed twice", zone.zone))
                    .help("its answers would count twice; merge them into one `zone`"),
                zone.origin,
                "duplicate",
            );
        }
    }
}

/// Rule names a ban may name, checked once the program is known.
pub fn check_ban_rules(reporter: &mut Reporter, farm: &DraftFarm, rules: &[String]) {
    let known: Vec<&str> = rules.iter().map(String::as_str).collect();
    for ban in &farm.bans {
        for (rule, origin) in &ban.after {
            if !known.contains(&rule.as_str()) {
                let help = match did_you_mean(rule, &known) {
                    Some(g) => format!("did you mean `{g}`?"),
                    None if known.is_empty() => "this farm has no rule that rejects".to_owned(),
                    None => format!("rules of this farm: {}", known.join(", ")),
                };
                reporter.report(
                    Diag::error("mtac::ban::unknown-rule", format!("no rule `{rule}` in farm `{}`", farm.name))
                        .help(help),
                    *origin,
                    "can never fire",
                );
            }
        }
    }
}

fn summarise(reporter: &mut Reporter, more: usize, what: &str) {
    if more > 0 {
        reporter.push(Diag::warning("mtac::more", format!("… and {more} more {what}")));
    }
}
