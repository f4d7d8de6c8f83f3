//! Validation of a lowered policy: duplicates, contradictions, rules that can never fire, and the
//! safety errors (open relay, AUTH without TLS, a farm with no back end). Runs on the whole
//! [`Draft`] and reports everything it finds, through the [`Reporter`] lowering filled.
//! `access.rs` analyses access lists, `certificate.rs` reads the TLS certificate.

mod access;
mod certificate;
mod recipient_domain;

use crate::diag::{did_you_mean, Diag, Reporter};
use crate::lower::{Draft, DraftFarm, DraftGreylist, Origin};
use mtac_ruleset::model::FarmKind;
use mtac_ruleset::rules;
use std::collections::HashMap;

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
            certificate::certificate(reporter, farm, &tls.certificate, name, tls.origin);
            for sni in &tls.sni {
                // `*.customer.example` is checked with a name it covers.
                let asked =
                    sni.name.strip_prefix("*.").map_or_else(|| sni.name.clone(), |parent| format!("mail.{parent}"));
                certificate::certificate(reporter, farm, &sni.certificate, &asked, sni.origin);
            }
        }
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
    if let Some((_, origin)) = &farm.dkim_sign {
        dkim_sign(reporter, farm, *origin);
    }
    sender_domain_trust(reporter, farm, farm.greylist.as_ref());
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
        let files = [("certificate", &tls.certificate, tls.origin), ("key", &tls.key, tls.origin)]
            .into_iter()
            .chain(tls.sni.iter().flat_map(|s| [("certificate", &s.certificate, s.origin), ("key", &s.key, s.origin)]));
        for (what, path, origin) in files {
            if let Err(e) = std::fs::metadata(path) {
                reporter.report(
                    Diag::error("mtac::tls::file", format!("TLS {what} {path}: {e}"))
                        .help("the node reads it at start and on reload; deploy it with the ruleset"),
                    origin,
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
    ban_rules(reporter, farm);
    shadow_rules(reporter, farm);
    recipient_domain::recipient_domains(reporter, farm);
    duplicate_domains(reporter, farm);
    addresses_outside_domains(reporter, farm);
    access::access_conflicts(reporter, &farm.access, "access");
    access::relay_clients(reporter, farm);
    dnsbl(reporter, farm);
}

fn duplicate_domains(reporter: &mut Reporter, farm: &DraftFarm) {
    let mut seen: HashMap<(&str, bool), Origin> = HashMap::with_capacity(farm.local_domains.len());
    let mut duplicates = Capped::default();
    for entry in &farm.local_domains {
        if let Some(first) = seen.insert((&entry.domain, entry.subdomains), entry.origin) {
            if duplicates.lists_next() {
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
            }
        }
    }
    summarise(reporter, duplicates.more, "duplicate local domains");
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
    let mut outside = Capped::default();
    for (index, entry) in farm.local_addresses.iter().enumerate() {
        let key = entry.address.to_ascii_lowercase();
        let domain = key.rsplit_once('@').map_or("", |(_, d)| d).trim_end_matches('.');
        if !is_local(domain) && outside.lists_next() {
            reporter.report(
                Diag::warning(
                    "mtac::local-addresses::not-local",
                    format!("`{}` is not in a local domain: it can never match", entry.address),
                )
                .help("add its domain to `local-domains`, or remove the address"),
                entry.origin,
                "never matches",
            );
        }
        sorted.push((key, index));
    }
    summarise(reporter, outside.more, "addresses outside the local domains");
    sorted.sort_unstable();
    let mut duplicates = Capped::default();
    for pair in sorted.windows(2) {
        if let [(a, first), (b, second)] = pair {
            if a == b && duplicates.lists_next() {
                let (Some(f), Some(s)) = (farm.local_addresses.get(*first), farm.local_addresses.get(*second)) else {
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
            }
        }
    }
    summarise(reporter, duplicates.more, "duplicate addresses");
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

/// `ban after=` may name only the policy rules this farm's program holds: any other name can
/// never fire. The help suggests among the farm's own rules.
fn ban_rules(reporter: &mut Reporter, farm: &DraftFarm) {
    if farm.bans.is_empty() {
        return;
    }
    let known = crate::emit::rules_of(farm);
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

/// Rules a `shadow` may never name: relay control and required authentication keep a farm from
/// being an open relay, and a role account's acceptance is no refusal to watch; greylisting
/// and the directory are answered by stores after the program, so they have no "would refuse".
const NEVER_SHADOWED: &[(&str, &str)] = &[
    (rules::RELAY, "relay control is never shadowed: an open relay is not an experiment"),
    (rules::AUTH_REQUIRED, "authentication is never shadowed: an open relay is not an experiment"),
    (rules::RECIPIENT_ROLE_ACCOUNT, "a role account is accepted, never refused: nothing to shadow"),
    (rules::GREYLIST, "greylisting is answered by the state store after the program: it cannot be shadowed"),
    (rules::RECIPIENT_DIRECTORY, "the directory is asked after the program: it cannot be shadowed"),
];

/// `shadow` may name only the policy rules this farm's program holds, and none of
/// [`NEVER_SHADOWED`]; the node's own decisions (rate limits, the spool) are not the program's.
fn shadow_rules(reporter: &mut Reporter, farm: &DraftFarm) {
    if farm.shadow.is_empty() {
        return;
    }
    let known = crate::emit::rules_of(farm);
    for (rule, origin) in &farm.shadow {
        let (code, message, help) = if let Some((_, why)) = NEVER_SHADOWED.iter().find(|(name, _)| name == rule) {
            ("mtac::shadow::forbidden", format!("`{rule}` cannot be shadowed"), (*why).to_owned())
        } else if known.contains(&rule.as_str()) {
            continue;
        } else if rules::find(rule).is_some_and(|r| r.set_by != rules::SetBy::Policy) {
            let help = "shadow names the policy program's rules (docs/policy.md, \"Rule names\")".to_owned();
            ("mtac::shadow::not-policy", format!("`{rule}` is decided by the node, not the policy program"), help)
        } else {
            let help = match did_you_mean(rule, &known) {
                Some(g) => format!("did you mean `{g}`?"),
                None => format!("rules of this farm: {}", known.join(", ")),
            };
            ("mtac::shadow::unknown-rule", format!("no rule `{rule}` in farm `{}`", farm.name), help)
        };
        reporter.report(Diag::error(code, message).help(help), *origin, "cannot be shadowed");
    }
}

/// Findings of one kind: the first [`MAX_LISTED`] are reported, the rest only counted, for one
/// "… and N more" line ([`summarise`]): a list of a million networks must not give a million
/// diagnostics.
#[derive(Default)]
struct Capped {
    listed: usize,
    more: usize,
}

impl Capped {
    /// Whether the next finding is reported; if not, it is counted in `more`.
    fn lists_next(&mut self) -> bool {
        if self.listed < MAX_LISTED {
            self.listed += 1;
            true
        } else {
            self.more += 1;
            false
        }
    }
}

pub(super) fn summarise(reporter: &mut Reporter, more: usize, what: &str) {
    if more > 0 {
        reporter.push(Diag::warning("mtac::more", format!("… and {more} more {what}")));
    }
}

/// What trusts a sender domain only once SPF verified it — `whitelist-sender-domain
/// verified=#true`, `greylist key="spf"`, a `verified=#true` DNS allow-list zone — needs the
/// farm to check SPF: without `spf` it would silently never be honoured. A domain whitelisted
/// both ways would be trusted unverified after all, so it is an error too.
fn sender_domain_trust(reporter: &mut Reporter, farm: &DraftFarm, greylist: Option<&DraftGreylist>) {
    if farm.spf.is_none() {
        let mut needs: Vec<(Origin, &str, &str)> = Vec::new();
        if let Some(g) = greylist {
            needs.extend(
                g.verified_sender_domains
                    .first()
                    .map(|e| (e.origin, "`whitelist-sender-domain … verified=#true`", "never honoured")),
            );
            if g.key == mtac_ruleset::model::GreylistKey::Spf {
                needs.push((g.origin, "greylist `key=\"spf\"`", "never keys on a domain"));
            }
        }
        for zone in farm.dnsbl.iter().flat_map(|d| &d.zones).filter(|z| z.verified) {
            needs.push((zone.origin, "DNS list zone `verified=#true`", "its allow listings would never count"));
        }
        for (origin, what, label) in needs {
            reporter.report(
                Diag::error(
                    "mtac::spf::needed",
                    format!("{what} in farm `{}` needs SPF, and the farm does not check it", farm.name),
                )
                .help("add `spf` to the farm (it checks MAIL FROM's domain; `fail=\"record\"` refuses nothing)"),
                origin,
                label,
            );
        }
    }
    let Some(greylist) = greylist else { return };
    let plain: HashMap<&str, Origin> = greylist.sender_domains.iter().map(|e| (e.domain.as_str(), e.origin)).collect();
    for verified in &greylist.verified_sender_domains {
        if let Some(origin) = plain.get(verified.domain.as_str()) {
            reporter.report(
                Diag::error(
                    "mtac::greylist::verified-conflict",
                    format!("`{}` is whitelisted both with and without `verified=#true`", verified.domain),
                )
                .help("keep one: without `verified=#true` anyone who types the domain in MAIL FROM is exempt"),
                *origin,
                "listed here unverified",
            );
        }
    }
}

/// `dkim-sign` signs authenticated users' mail only: on a farm without `auth` it would never
/// sign (an error, not a silent no-op); with `auth header-from="any"` every user can have any
/// address of a signing domain signed, which a verifier then takes as the domain's word.
fn dkim_sign(reporter: &mut Reporter, farm: &DraftFarm, origin: Origin) {
    let name = &farm.name;
    match &farm.auth {
        None => reporter.report(
            Diag::error("mtac::dkim::no-auth", format!("farm `{name}` signs with DKIM but has no `auth`"))
                .help("dkim-sign signs the mail of authenticated users only: add `auth`, or remove dkim-sign"),
            origin,
            "would never sign",
        ),
        Some((auth, _)) if !auth.header_from_owned => reporter.report(
            Diag::warning("mtac::dkim::header-from", format!("farm `{name}` signs any From address its users write"))
                .help(
                "add `auth header-from=\"owned\"`, so a user's mail is signed only for the addresses they may send as",
            ),
            origin,
            "any user can sign as anyone at the domain",
        ),
        Some(_) => {}
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    /// The `mtac::ban::unknown-rule` errors (message, help) of a farm with a DNS list whose
    /// `ban` names `after`.
    fn unknown_ban_rules(after: &str) -> Vec<(String, String)> {
        let text = format!(
            r#"hostname "mx.example.net"
farm "mx" kind="inbound-mx" {{
    listen "127.0.0.1:2525"
    local-domains "example.com"
    dnsbl {{ zone "zen.example" {{ answer "127.0.0.2"; }}; }}
    ban after="{after}"
    relay {{ backend "smtp://127.0.0.1:10025"; }}
}}
"#
        );
        let compilation = crate::compile_text("policy.kdl", &text, None);
        compilation
            .diagnostics
            .list
            .iter()
            .filter(|d| d.code == "mtac::ban::unknown-rule" && d.is_error())
            .map(|d| (d.message.clone(), d.help.clone().unwrap_or_default()))
            .collect()
    }

    /// `ban after=` may name only the rules this farm's program holds (the names of
    /// `mtac_ruleset::rules`, the steps decided by `emit::program`): a misspelt name, a rule of
    /// the list this farm does not have, and rules the session or the node decide are each an
    /// error with the farm's own rules as help.
    #[test]
    fn ban_after_names_only_rules_of_this_farm() {
        assert_eq!(unknown_ban_rules("dnsbl relay"), Vec::<(String, String)>::new());
        assert_eq!(
            unknown_ban_rules("dnsbll"),
            [("no rule `dnsbll` in farm `mx`".to_owned(), "did you mean `dnsbl`?".to_owned())]
        );
        for elsewhere in ["greylist", "tls.required", "ban", "no-such-rule"] {
            let errors = unknown_ban_rules(elsewhere);
            assert_eq!(errors.len(), 1, "{elsewhere}: {errors:?}");
            assert_eq!(errors[0].0, format!("no rule `{elsewhere}` in farm `mx`"));
            assert!(errors[0].1.contains("dnsbl"), "{elsewhere}: the help names the farm's rules: {errors:?}");
        }
    }
}
