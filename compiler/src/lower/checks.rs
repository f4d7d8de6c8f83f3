//! The checks of an inbound farm: docs/policy.md section 2, `helo`, `sender`, `recipient`,
//! `client`, `dnsbl`, `ban`, `rate-limit`, `tarpit` and `greylist`.

use super::ir::{
    AddressEntry, DomainEntry, DraftBan, DraftDnsbl, DraftFarm, DraftGreylist, DraftZone, Origin, Pos, Sources,
};
use super::read::parse_answer_pattern;
use super::{At, Lowerer};
use crate::diag::Diag;
use crate::nodes::{self, Place};
use mtac_ruleset::model::{
    AccessAction, BanResponse, BanScope, DnsblAnswer, DnsblTarget, GreylistKey, RateLimit, RateSubject, Reply, Stage,
};
use mtac_ruleset::syntax;
use std::path::Path;

impl Lowerer {
    pub(crate) fn helo(&mut self, at: At<'_>, _dir: &Path, farm: &mut DraftFarm) {
        self.shape(at, &["required", "fqdn", "syntax", "not-ours", "resolvable", "stage"], 0, false);
        farm.helo.required = self.bool_prop(at, "required", farm.helo.required);
        farm.helo.fqdn = self.bool_prop(at, "fqdn", farm.helo.fqdn);
        farm.helo.syntax = self.bool_prop(at, "syntax", farm.helo.syntax);
        farm.helo.not_ours = self.bool_prop(at, "not-ours", farm.helo.not_ours);
        farm.helo.resolvable = self.bool_prop(at, "resolvable", farm.helo.resolvable);
        farm.helo.stage = self.stage(at, &[Stage::Helo, Stage::Mail, Stage::Rcpt]).or(farm.helo.stage);
    }

    pub(crate) fn sender(&mut self, at: At<'_>, dir: &Path, farm: &mut DraftFarm) {
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
                        self.reporter.report(
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
                        self.reporter.report(
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

    pub(crate) fn recipient(&mut self, at: At<'_>, _dir: &Path, farm: &mut DraftFarm) {
        self.shape(at, &["fqdn", "local-only"], 0, false);
        farm.recipient_fqdn = self.bool_prop(at, "fqdn", farm.recipient_fqdn);
        if let Some(entry) = Self::prop(at, "local-only") {
            if self.boolean(entry, at.file, "`local-only`") == Some(false) {
                self.reporter.err(
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

    pub(crate) fn client(&mut self, at: At<'_>, _dir: &Path, farm: &mut DraftFarm) {
        self.shape(at, &["reverse-dns", "stage"], 0, false);
        let stage = self.stage(at, &[Stage::Connect, Stage::Helo, Stage::Mail, Stage::Rcpt]);
        match Self::prop(at, "reverse-dns") {
            Some(entry) => match self.string(entry, at.file, "`reverse-dns`").as_deref() {
                Some("required") => farm.client_reverse_dns = Some((false, stage)),
                Some("forward-confirmed") => farm.client_reverse_dns = Some((true, stage)),
                Some(other) => self.reporter.err(
                    "mtac::client::reverse-dns",
                    format!("unknown reverse-dns requirement `{other}`"),
                    at.file,
                    entry.span(),
                    "unknown value",
                    "\"required\" (a PTR name) or \"forward-confirmed\" (a PTR name that resolves back, FCrDNS)",
                ),
                None => {}
            },
            None => self.reporter.err(
                "mtac::client::reverse-dns",
                "`client` needs reverse-dns=…".to_owned(),
                at.file,
                at.node.span(),
                "nothing required",
                "e.g. client reverse-dns=\"forward-confirmed\"",
            ),
        }
    }

    pub(crate) fn dnsbl(&mut self, at: At<'_>, _dir: &Path, farm: &mut DraftFarm) {
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
            self.shape(child, &["target", "verified"], 1, true);
            let Some(zone) = self.one_string(child, "a DNS zone") else { continue };
            if !syntax::is_hostname(&zone) {
                self.reporter.err(
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
                        self.reporter.err(
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
                            self.reporter.err(
                                "mtac::dnsbl::answer",
                                format!("`{pattern}` is outside 127.0.0.0/8"),
                                answer.file,
                                answer.node.span(),
                                "not a list answer",
                                "DNS lists answer in 127.0.0.0/8; anything else is a resolver or zone error",
                            );
                        } else if octets.get(1).is_some_and(|o| o.1 == 255) && octets.get(2).is_some_and(|o| o.1 == 255)
                        {
                            self.reporter.err(
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
                    (None, _) => self.reporter.err(
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
                self.reporter.err(
                    "mtac::dnsbl::no-answers",
                    format!("zone `{zone}` lists no answers"),
                    child.file,
                    child.node.span(),
                    "no answer filters",
                    "list the answer codes the zone documents, e.g. `answer \"127.0.0.2\" weight=3`: undocumented answers are zone errors",
                );
            }
            let verified = self.bool_prop(child, "verified", false);
            if verified && target != DnsblTarget::SenderDomain {
                self.reporter.err(
                    "mtac::dnsbl::verified",
                    format!("`verified` on zone `{zone}`, which is not a sender-domain zone"),
                    child.file,
                    child.node.span(),
                    "nothing to verify",
                    "SPF verifies the envelope sender's domain: `verified=#true` goes with target=\"sender-domain\"",
                );
            }
            zones.push(DraftZone { zone, target, answers, verified, origin: self.origin_of(child) });
        }
        if let Some(threshold) = threshold {
            farm.dnsbl = Some(DraftDnsbl { threshold, allow_threshold, zones, stage, reply, origin });
        }
    }

    pub(crate) fn ban(&mut self, at: At<'_>, _dir: &Path, farm: &mut DraftFarm) {
        self.shape(at, &["after", "duration", "network", "network6", "response", "scope"], 0, false);
        let scope = match Self::prop(at, "scope") {
            Some(entry) => match self.string(entry, at.file, "`scope`").as_deref() {
                Some("farm") => BanScope::Farm,
                Some("all-farms") => BanScope::AllFarms,
                Some(other) => {
                    self.reporter.err(
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
                    self.reporter.err(
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
                    Some((other, _)) if other != response => self.reporter.err(
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
                self.reporter.err(
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

    pub(crate) fn rate_limit(&mut self, at: At<'_>, _dir: &Path, farm: &mut DraftFarm) {
        self.shape(at, &["connections", "messages", "per", "network", "network6", "reply"], 0, false);
        let subject = match (Self::prop(at, "connections"), Self::prop(at, "messages")) {
            (Some(entry), None) => (RateSubject::Connections, entry),
            (None, Some(entry)) => (RateSubject::Messages, entry),
            _ => {
                self.reporter.err(
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

    pub(crate) fn tarpit(&mut self, at: At<'_>, _dir: &Path, farm: &mut DraftFarm) {
        self.shape(at, &[], 1, false);
        if let Some(entry) = Self::args(at).next() {
            if let Some(ms) = self.duration_ms(entry, at.file, "`tarpit`") {
                if ms > 60_000 {
                    self.reporter.err(
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

    pub(crate) fn greylist(&mut self, at: At<'_>, dir: &Path, farm: &mut DraftFarm) {
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
            Some("spf") => GreylistKey::Spf,
            Some(other) => {
                self.reporter.err(
                    "mtac::greylist::key",
                    format!("unknown greylist key `{other}`"),
                    at.file,
                    at.node.span(),
                    "expected \"network\", \"fcrdns\" or \"spf\"",
                    "\"fcrdns\" keys the client by its confirmed reverse-DNS domain, \"spf\" by its SPF-verified sender domain, so a retry from any host of a sender's pool passes",
                );
                GreylistKey::Network
            }
        };
        if delay >= retry_window {
            self.reporter.err(
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
        let mut verified_sender_domains = Vec::new();
        let mut recipients = Vec::new();
        let mut sources = Sources::default();
        for child in Self::children(at) {
            match child.node.name().value() {
                "whitelist-client" => {
                    self.shape(child, &["file"], usize::MAX, false);
                    self.networks(child, dir, &AccessAction::Accept, &mut clients, &mut sources);
                }
                "whitelist-sender-domain" => {
                    self.shape(child, &["file", "subdomains", "verified"], usize::MAX, false);
                    let subdomains = self.bool_prop(child, "subdomains", true);
                    let into = match self.bool_prop(child, "verified", false) {
                        true => &mut verified_sender_domains,
                        false => &mut sender_domains,
                    };
                    self.domains(child, dir, subdomains, into, &mut sources);
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
            verified_sender_domains,
            recipients,
            reply,
            origin: self.origin_of(at),
        });
    }
}
