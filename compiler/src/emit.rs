//! Emission: a validated [`Draft`] → the [`Policy`] model, its decision programs and its tables.
//!
//! The order of steps within a stage is fixed here and documented in docs/policy.md ("How a
//! recipient is decided"): safety checks first, role accounts, then the anti-spam checks that trust
//! may skip, greylisting last so that a triplet is only recorded for mail that passed everything else.

use crate::lower::{AddressEntry, DomainEntry, Draft, DraftFarm, DraftRelay, NetEntry, Origin};
use mtac_ruleset::model::{
    AccessAction, BanResponse, BanRule, Check, DmarcSettings, Dnsbl, DnsblZone, Farm, FarmKind, Greylist, Limits,
    Policy, Program, RecipientDomainPolicy, RecipientDomains, Relay, Reply, Scanner, Screen, SenderAuth,
    SniCertificate, Stage, Step, TableId, TableInfo, TableKind, Timeouts, Tls, VerdictHeaders, VERIFIED_SENDER,
};
use mtac_ruleset::rules;
use mtac_ruleset::tables::{AddressTableBuilder, DomainTableBuilder, PrefixTableBuilder};
use mtac_ruleset::TableInput;

/// The emitted policy and its table inputs (same order as `policy.tables`).
pub struct Emitted {
    pub policy: Policy,
    pub tables: Vec<TableInput>,
    /// Each table's entries and where the policy wrote them (same order as `policy.tables`),
    /// when asked for: the stuff of [`crate::sources`].
    pub origins: Option<Vec<Vec<EntryOrigin>>>,
}

/// One table entry as the policy wrote it, its value in the table, and where it was written.
#[derive(Debug, Clone)]
pub struct EntryOrigin {
    /// `example.com`, `*.example.com` (with its subdomains), `user@example.com` or a network.
    pub key: String,
    pub value: u32,
    pub origin: Origin,
}

struct Tables {
    infos: Vec<TableInfo>,
    inputs: Vec<TableInput>,
    errors: Vec<String>,
    /// Filled only when the caller asked for entry origins.
    origins: Option<Vec<Vec<EntryOrigin>>>,
}

impl Tables {
    fn next_id(&self) -> TableId {
        u32::try_from(self.infos.len()).unwrap_or(u32::MAX)
    }

    fn domains(&mut self, name: String, entries: &[DomainEntry], sources: &[String]) -> Option<TableId> {
        self.domains_valued(name, entries.iter().map(|e| (e, 0)), sources)
    }

    /// Domains, each with its value (see the model's table for what a value means).
    fn domains_valued<'e>(
        &mut self,
        name: String,
        entries: impl Iterator<Item = (&'e DomainEntry, u32)>,
        sources: &[String],
    ) -> Option<TableId> {
        let mut builder = DomainTableBuilder::new();
        let mut origins = Vec::new();
        for (entry, value) in entries {
            if let Err(e) = builder.insert(&entry.domain, entry.subdomains, value) {
                self.errors.push(format!("{name}: {e}"));
            }
            if self.origins.is_some() {
                let key = if entry.subdomains { format!("*.{}", entry.domain) } else { entry.domain.clone() };
                origins.push(EntryOrigin { key, value, origin: entry.origin });
            }
        }
        if builder.is_empty() {
            return None;
        }
        let count = builder.len();
        self.push(name, TableKind::Domains, count, sources, TableInput::Domains(builder), origins)
    }

    fn addresses(&mut self, name: String, entries: &[AddressEntry], sources: &[String]) -> Option<TableId> {
        if entries.is_empty() {
            return None;
        }
        let mut builder = AddressTableBuilder::new();
        for entry in entries {
            if let Err(e) = builder.insert(&entry.address, 0) {
                self.errors.push(format!("{name}: {e}"));
            }
        }
        let origins = match self.origins {
            Some(_) => {
                entries.iter().map(|e| EntryOrigin { key: e.address.clone(), value: 0, origin: e.origin }).collect()
            }
            None => Vec::new(),
        };
        self.push(name, TableKind::Addresses, entries.len(), sources, TableInput::Addresses(builder), origins)
    }

    /// Prefixes with values from `value_of` (an index into the farm's access actions, or 0).
    fn prefixes(
        &mut self,
        name: String,
        entries: &[NetEntry],
        sources: &[String],
        mut value_of: impl FnMut(&NetEntry) -> u32,
    ) -> Option<TableId> {
        if entries.is_empty() {
            return None;
        }
        let mut builder = PrefixTableBuilder::new();
        let mut origins = Vec::new();
        for entry in entries {
            let value = value_of(entry);
            builder.insert(entry.net, value);
            if self.origins.is_some() {
                origins.push(EntryOrigin { key: entry.net.to_string(), value, origin: entry.origin });
            }
        }
        self.push(name, TableKind::Prefixes, entries.len(), sources, TableInput::Prefixes(builder), origins)
    }

    fn push(
        &mut self,
        name: String,
        kind: TableKind,
        entries: usize,
        sources: &[String],
        input: TableInput,
        origins: Vec<EntryOrigin>,
    ) -> Option<TableId> {
        let id = self.next_id();
        self.infos.push(TableInfo { kind, name, entries: entries as u64, sources: sources.to_vec() });
        self.inputs.push(input);
        if let Some(all) = &mut self.origins {
            all.push(origins);
        }
        Some(id)
    }
}

/// Build the model; with `record_origins`, also where each table entry was written (a copy of
/// every key, so only `mtac build` and `explain --policy` ask). `Err` carries internal table
/// errors (validation should have caught them).
pub fn emit(draft: &Draft, record_origins: bool) -> Result<Emitted, Vec<String>> {
    let mut tables =
        Tables { infos: Vec::new(), inputs: Vec::new(), errors: Vec::new(), origins: record_origins.then(Vec::new) };
    let hostname =
        draft.hostname.as_ref().map(|(h, _)| h.clone()).unwrap_or_else(|| "localhost.localdomain".to_owned());
    let farms = draft.farms.iter().map(|farm| emit_farm(farm, &hostname, &mut tables)).collect();
    if !tables.errors.is_empty() {
        return Err(tables.errors);
    }
    let spool = draft.spool.clone().unwrap_or_else(|| mtac_ruleset::model::DEFAULT_SPOOL.to_owned());
    let policy = Policy {
        banner: draft.banner.clone().unwrap_or_else(|| "ESMTP mtac".to_owned()),
        hostname,
        spool: spool.clone(),
        spool_max_bytes: draft.spool_max_bytes,
        farms,
        tables: tables.infos,
        dns: draft.dns.clone(),
        admin: draft.admin.unwrap_or(Some(mtac_ruleset::model::DEFAULT_ADMIN)),
        admin_socket: match &draft.admin_socket {
            Some(path) => path.clone(),
            None => Some(format!("{}/{}", spool.trim_end_matches('/'), mtac_ruleset::model::ADMIN_SOCKET_NAME)),
        },
        state: draft.state.clone().unwrap_or_default(),
        journal: draft.journal.clone(),
    };
    Ok(Emitted { policy, tables: tables.inputs, origins: tables.origins })
}

fn emit_farm(farm: &DraftFarm, hostname: &str, tables: &mut Tables) -> Farm {
    let n = &farm.name;
    let local_domains = tables.domains(format!("{n}.local-domains"), &farm.local_domains, &farm.local_domain_sources.0);
    let local_addresses =
        tables.addresses(format!("{n}.local-addresses"), &farm.local_addresses, &farm.local_address_sources.0);
    // Distinct actions of the access list; table values index this list.
    let mut access_actions: Vec<AccessAction> = Vec::new();
    for entry in &farm.access {
        if !access_actions.contains(&entry.action) {
            access_actions.push(entry.action.clone());
        }
    }
    let access = tables.prefixes(format!("{n}.access"), &farm.access, &farm.access_sources.0, |entry| {
        let index = access_actions.iter().position(|a| *a == entry.action).unwrap_or(0);
        u32::try_from(index).unwrap_or(0)
    });
    let relay_clients =
        tables.prefixes(format!("{n}.relay-clients"), &farm.relay_clients, &farm.relay_client_sources.0, |_| 0);
    let deny_domains =
        tables.domains(format!("{n}.sender-deny-domains"), &farm.sender.deny_domains, &farm.sender.deny_sources.0);
    let deny_addresses = tables.addresses(
        format!("{n}.sender-deny-addresses"),
        &farm.sender.deny_addresses,
        &farm.sender.deny_sources.0,
    );
    let greylist = farm.greylist.as_ref().map(|g| Greylist {
        key: g.key,
        delay: g.delay,
        retry_window: g.retry_window,
        lifetime: g.lifetime,
        v4_prefix: g.v4_prefix,
        v6_prefix: g.v6_prefix,
        auto_whitelist: g.auto_whitelist,
        whitelist_clients: tables.prefixes(format!("{n}.greylist-clients"), &g.clients, &["inline".to_owned()], |_| 0),
        whitelist_senders: tables.domains_valued(
            format!("{n}.greylist-senders"),
            g.sender_domains
                .iter()
                .map(|e| (e, 0))
                .chain(g.verified_sender_domains.iter().map(|e| (e, VERIFIED_SENDER))),
            &["inline".to_owned()],
        ),
        whitelist_recipients: tables.addresses(
            format!("{n}.greylist-recipients"),
            &g.recipients,
            &["inline".to_owned()],
        ),
        reply: g.reply.clone().unwrap_or_else(|| Reply::new(451, "4.7.1", "Greylisted, please try again later")),
    });
    let program = program(farm, hostname, deny_domains, deny_addresses);
    let sender_auth = sender_auth(farm, tables);
    let recipient_domains = recipient_domains(farm, tables);
    Farm {
        name: farm.name.clone(),
        kind: farm.kind,
        listeners: farm.listeners.iter().map(|(l, _)| l.clone()).collect(),
        limits: Limits {
            connections: farm.limits.connections,
            connections_per_ip: farm.limits.connections_per_ip,
            transfers_per_ip: farm.limits.transfers_per_ip,
            message_size: farm.limits.message_size,
            recipients: farm.limits.recipients,
            line_length: farm.limits.line_length,
            errors: farm.limits.errors,
            soft_errors: farm.limits.soft_errors,
            timeouts: Timeouts {
                command: farm.limits.command_timeout,
                data: farm.limits.data_timeout,
                relay: farm.limits.relay_timeout,
                pregreet: pregreet_wait(farm),
            },
        },
        trust_loopback: farm.trust_loopback,
        local_domains,
        local_addresses,
        role_accounts: farm.role_accounts.clone(),
        access,
        access_actions,
        relay_clients,
        program,
        dnsbl: farm.dnsbl.as_ref().map(|d| Dnsbl {
            threshold: d.threshold,
            allow_threshold: d.allow_threshold,
            zones: d
                .zones
                .iter()
                .map(|z| DnsblZone {
                    zone: z.zone.clone(),
                    target: z.target,
                    answers: z.answers.clone(),
                    verified: z.verified,
                })
                .collect(),
        }),
        bans: farm
            .bans
            .iter()
            .map(|b| BanRule {
                after: b.after.iter().map(|(r, _)| r.clone()).collect(),
                seconds: b.seconds,
                v4_prefix: b.v4_prefix,
                v6_prefix: b.v6_prefix,
                scope: b.scope,
            })
            .collect(),
        greylist,
        scanners: farm
            .scanners
            .iter()
            .map(|s| Scanner {
                kind: s.kind,
                address: s.address.clone(),
                timeout: s.timeout,
                fail_open: s.fail_open,
                tag_score: s.tag_score,
                reject_score: s.reject_score,
            })
            .collect(),
        // Compared with what the sender sent, which is never more than the message size: by
        // default no message the farm accepts escapes its scanners.
        scan_max_size: farm.scan_max_size.unwrap_or(farm.limits.message_size),
        scan_oversize_refuse: farm.scan_oversize_pass.is_none(),
        verdict_headers: verdict_headers(farm, hostname),
        mime: farm.mime.clone(),
        filters: farm.filters.clone(),
        relay: match &farm.relay {
            Some((DraftRelay::Backends(b), _)) => Relay::Backends(b.clone()),
            Some((DraftRelay::Maildir(d), _)) => Relay::Maildir(d.clone()),
            None => Relay::Backends(Vec::new()),
        },
        tls: farm.tls.as_ref().map(|t| Tls {
            certificate: t.certificate.clone(),
            key: t.key.clone(),
            required: t.required,
            name: t.name.clone(),
            sni: t
                .sni
                .iter()
                .map(|s| SniCertificate {
                    name: s.name.clone(),
                    certificate: s.certificate.clone(),
                    key: s.key.clone(),
                })
                .collect(),
        }),
        auth: farm.auth.as_ref().map(|(a, _)| a.clone()),
        dkim_sign: farm.dkim_sign.as_ref().map(|(d, _)| d.clone()),
        directory: farm.directory.as_ref().map(|(d, _)| d.clone()),
        bare_line_ends: farm.bare_line_ends,
        ban_response: farm.ban_response.map_or(BanResponse::Close521, |(r, _)| r),
        rate_limits: farm.rate_limits.clone(),
        tarpit_ms: farm.tarpit_ms,
        screen: Screen {
            pregreet_remember: farm.screen.pregreet_remember,
            pregreet_talker: farm.screen.pregreet_talker,
            pipelining: (!farm.screen.pipelining_off).then(|| {
                farm.screen
                    .pipelining_reply
                    .clone()
                    .unwrap_or_else(|| Reply::new(554, "5.5.0", "Error: improper command pipelining"))
            }),
            stress: farm.screen.stress.clone(),
        },
        sender_auth,
        recipient_domains,
    }
}

/// The farm's `spf`, `dkim` and `dmarc`. DMARC needs the DKIM verdicts, so it verifies DKIM
/// unless the policy says `dkim #false` (then DMARC decides from SPF alone).
fn sender_auth(farm: &DraftFarm, tables: &mut Tables) -> SenderAuth {
    let n = &farm.name;
    let dmarc = farm.dmarc.as_ref().map(|d| DmarcSettings {
        reject: d.reject,
        quarantine: d.quarantine,
        temperror: d.temperror,
        never_refuse: tables.domains(format!("{n}.dmarc-never-refuse"), &d.never_refuse, &d.sources.0),
        trust_arc: tables.domains(format!("{n}.dmarc-trust-arc"), &d.trust_arc, &d.sources.0),
    });
    SenderAuth { spf: farm.spf.clone(), dkim: farm.dkim.unwrap_or(dmarc.is_some()), dmarc }
}

fn step(rule: &str, check: Check, reply: Reply) -> Step {
    Step { rule: rule.to_owned(), check, reply, shadow: false }
}

/// The decision program of a farm. Client-level rejects wait for RCPT TO by default (as Postfix's
/// smtpd_delay_reject): a listed client is answered there, not dropped (seed 002).
/// How long the greeting's last line waits: as written, else 2 s on an inbound MX (postscreen's
/// `postscreen_greet_wait` is 6 s; remembered clients skip it) and never on submission, whose
/// users' programs must not wait. `screen { pregreet #false }` turns it off.
fn pregreet_wait(farm: &DraftFarm) -> u32 {
    if farm.screen.pregreet_off {
        return 0;
    }
    farm.limits.pregreet.unwrap_or(match farm.kind {
        FarmKind::InboundMx => 2,
        FarmKind::Submission => 0,
    })
}

/// The `recipient-domain` blocks: one domain table whose values index the blocks (validation
/// made each domain appear in one block only).
fn recipient_domains(farm: &DraftFarm, tables: &mut Tables) -> RecipientDomains {
    if farm.recipient_domains.is_empty() {
        return RecipientDomains::default();
    }
    let mut sources = Vec::new();
    for block in &farm.recipient_domains {
        for source in &block.sources.0 {
            if !sources.contains(source) {
                sources.push(source.clone());
            }
        }
    }
    let entries = farm.recipient_domains.iter().enumerate().flat_map(|(i, block)| {
        let index = u32::try_from(i).unwrap_or(u32::MAX);
        block.domains.iter().map(move |entry| (entry, index))
    });
    let table = tables.domains_valued(format!("{}.recipient-domains", farm.name), entries, &sources);
    let policies = farm
        .recipient_domains
        .iter()
        .map(|block| RecipientDomainPolicy {
            domains: block
                .domains
                .iter()
                .map(|e| if e.subdomains { format!("*.{}", e.domain) } else { e.domain.clone() })
                .collect(),
            skip: block.skip.iter().map(|(rule, _)| rule.clone()).collect(),
            dnsbl_threshold: block.dnsbl_threshold.map(|(t, _)| t),
        })
        .collect();
    RecipientDomains { table, policies }
}

pub fn program(
    farm: &DraftFarm,
    hostname: &str,
    deny_domains: Option<TableId>,
    deny_addresses: Option<TableId>,
) -> Program {
    let mut p = Program::default();
    let access_stage = farm.access_stage.unwrap_or(Stage::Rcpt);
    let dnsbl_stage = farm.dnsbl.as_ref().and_then(|d| d.stage).unwrap_or(Stage::Rcpt);
    let helo_stage = farm.helo.stage.unwrap_or(Stage::Rcpt);
    let sender_stage = farm.sender.stage.unwrap_or(Stage::Rcpt);

    if farm.helo.required {
        p.mail.push(step(
            rules::HELO_REQUIRED,
            Check::HeloRequired,
            Reply::new(503, "5.5.1", "Error: send HELO/EHLO first"),
        ));
    }
    if farm.kind == FarmKind::Submission {
        p.rcpt.push(step(
            rules::AUTH_REQUIRED,
            Check::AuthRequired,
            Reply::new(530, "5.7.0", "Authentication required"),
        ));
    }
    if farm.recipient_fqdn {
        p.rcpt.push(step(
            rules::RECIPIENT_FQDN,
            Check::RecipientFqdn,
            Reply::new(504, "5.5.2", "Recipient address rejected: need fully-qualified address"),
        ));
    }
    // Relay control is in every farm and is never skipped: this is what makes an open relay impossible.
    p.rcpt.push(step(rules::RELAY, Check::RelayControl, Reply::new(554, "5.7.1", "Relay access denied")));
    if !farm.role_accounts.is_empty() {
        p.rcpt.push(step(rules::RECIPIENT_ROLE_ACCOUNT, Check::RoleAccount, Reply::new(250, "2.1.5", "OK")));
    }
    if !farm.local_addresses.is_empty() {
        p.rcpt.push(step(
            rules::RECIPIENT_UNKNOWN,
            Check::RecipientKnown,
            Reply::new(550, "5.1.1", "Recipient address rejected: User unknown in local recipient table"),
        ));
    }

    if !farm.access.is_empty() {
        p.stage_mut(access_stage).push(step(
            rules::ACCESS,
            Check::Access,
            Reply::new(554, "5.7.1", "Client host rejected: Access denied"),
        ));
    }
    if let Some(d) = &farm.dnsbl {
        let reply = d.reply.clone().unwrap_or_else(|| {
            Reply::new(554, "5.7.1", "Service unavailable; client host blocked using DNS block lists")
        });
        p.stage_mut(dnsbl_stage).push(step(rules::DNSBL, Check::Dnsbl, reply));
    }
    if let Some((confirmed, stage)) = farm.client_reverse_dns {
        p.stage_mut(stage.unwrap_or(Stage::Rcpt)).push(step(
            rules::CLIENT_REVERSE_DNS,
            Check::ClientReverseDns { confirmed },
            Reply::new(550, "5.7.25", "Client host rejected: cannot find your hostname"),
        ));
    }
    let helo_steps = [
        (
            farm.helo.syntax,
            rules::HELO_SYNTAX,
            Check::HeloSyntax,
            Reply::new(501, "5.5.2", "Helo command rejected: Invalid name"),
        ),
        (
            farm.helo.fqdn,
            rules::HELO_FQDN,
            Check::HeloFqdn,
            Reply::new(504, "5.5.2", "Helo command rejected: need fully-qualified hostname"),
        ),
        (
            farm.helo.not_ours,
            rules::HELO_NOT_OURS,
            Check::HeloNotOurs { names: vec![hostname.to_ascii_lowercase()] },
            Reply::new(550, "5.7.1", "Helo command rejected: You are not me"),
        ),
        (
            farm.helo.resolvable,
            rules::HELO_RESOLVABLE,
            Check::HeloResolvable,
            Reply::new(550, "5.7.1", "Helo command rejected: Host not found"),
        ),
    ];
    for (on, rule, check, reply) in helo_steps {
        if on {
            p.stage_mut(helo_stage).push(step(rule, check, reply));
        }
    }
    if farm.sender.fqdn {
        p.stage_mut(sender_stage).push(step(
            rules::SENDER_FQDN,
            Check::SenderFqdn,
            Reply::new(504, "5.5.2", "Sender address rejected: need fully-qualified address"),
        ));
    }
    if !farm.sender.deny_domains.is_empty() || !farm.sender.deny_addresses.is_empty() {
        p.stage_mut(sender_stage).push(step(
            rules::SENDER_DENY,
            Check::SenderDeny { domains: deny_domains, addresses: deny_addresses },
            Reply::new(550, "5.7.1", "Sender address rejected: Access denied"),
        ));
    }
    if farm.sender.resolvable {
        p.stage_mut(sender_stage).push(step(
            rules::SENDER_RESOLVABLE,
            Check::SenderResolvable,
            Reply::new(550, "5.1.8", "Sender address rejected: Domain not found"),
        ));
    }
    // SPF answers at MAIL FROM, where RFC 7208 checks it: last of that stage's steps, so a
    // sender the cheaper checks refuse costs no SPF lookups (the lookups start with MAIL and run
    // while those steps are decided).
    if farm.spf.is_some() {
        // The text names the domain when it refuses (`sender_auth::spf_step`).
        p.mail.push(step(rules::SPF, Check::Spf, Reply::new(550, "5.7.23", "SPF validation failed")));
    }
    // After the anti-spam steps: a refused client costs the directory nothing. Before greylisting:
    // an unknown recipient hears 550 at once, not after a retry.
    if farm.directory.as_ref().is_some_and(|(d, _)| d.lookups) {
        p.rcpt.push(step(
            rules::RECIPIENT_DIRECTORY,
            Check::RecipientDirectory,
            Reply::new(550, "5.1.1", "Recipient address rejected: User unknown in directory"),
        ));
    }
    if farm.dmarc.is_some() {
        // The text names the domain and its policy when it refuses (`sender_auth::dmarc_step`).
        p.data.push(step(rules::DMARC, Check::Dmarc, Reply::new(550, "5.7.1", "Message rejected: DMARC policy")));
    }
    if let Some(g) = &farm.greylist {
        let reply = g.reply.clone().unwrap_or_else(|| Reply::new(451, "4.7.1", "Greylisted, please try again later"));
        p.rcpt.push(step(rules::GREYLIST, Check::Greylist, reply));
    }
    // `shadow`: validation kept the names to rules this program holds and may report only.
    for stage in Stage::ALL {
        for step in p.stage_mut(stage).iter_mut() {
            step.shadow = farm.shadow.iter().any(|(rule, _)| *rule == step.rule);
        }
    }
    p
}

/// The policy rules this farm's program holds, in program order: what its `ban after=` may name.
/// Which steps a farm has is decided by [`program`] alone; their names are
/// [`mtac_ruleset::rules`]' constants (a test proves every step's rule is one of them).
pub fn rules_of(farm: &DraftFarm) -> Vec<&'static str> {
    let program = program(farm, "", None, None);
    let mut names: Vec<&'static str> = Vec::new();
    for stage in Stage::ALL {
        for rule in program.stage(stage).iter().filter_map(|step| rules::find(&step.rule)) {
            if !names.contains(&rule.name) {
                names.push(rule.name);
            }
        }
    }
    names
}

/// Header fields that carry a verdict of mtac or of the scanners it asks (SpamAssassin's and
/// rspamd's own names too: back ends filter on them). A sender's copies never reach the back end.
pub const VERDICT_HEADERS: &[&str] = &[
    "x-spam-flag",
    "x-spam-status",
    "x-spam-score",
    "x-spam-level",
    "x-spam-report",
    "x-spam-checker-version",
    "x-spam",
    "x-spamd-result",
    "x-spamd-bar",
    "x-rspamd-action",
    "x-rspamd-score",
    "x-virus-scanned",
    "x-virus-status",
    // A milter's quarantine with `quarantine="header"` (runtime/src/milter).
    "x-quarantine",
];

/// The farm's verdict headers: the built-in names and the policy's, and the authserv-ids whose
/// Authentication-Results are this farm's own (its `authserv-id`, else the host name).
fn verdict_headers(farm: &DraftFarm, hostname: &str) -> VerdictHeaders {
    let (extra, rename) = farm.verdict_headers.clone().unwrap_or_default();
    let mut names: Vec<String> = VERDICT_HEADERS.iter().map(|n| (*n).to_owned()).collect();
    for name in extra {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let mut authserv_ids = vec![hostname.to_ascii_lowercase()];
    if let Some(id) = &farm.authserv_id {
        if !authserv_ids.contains(id) {
            authserv_ids.insert(0, id.clone());
        }
    }
    VerdictHeaders { names, authserv_ids, rename }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::lower::Lowerer;

    /// Every check on, in two farms: the programs' rule names are exactly the policy rules of
    /// [`mtac_ruleset::rules`], so the list can neither miss a step nor keep a stale name.
    #[test]
    fn the_programs_name_exactly_the_policy_rules_of_the_list() {
        let text = r#"hostname "mx.example.net"
farm "mx" kind="inbound-mx" {
    listen "127.0.0.1:2525"
    local-domains "example.com"
    local-addresses "a@example.com"
    role-accounts "abuse"
    access { reject "192.0.2.0/24"; }
    include "mtac:rfc-hygiene"
    helo resolvable=#true
    sender resolvable=#true { deny "spam.example"; }
    client reverse-dns="required"
    dnsbl { zone "zen.example" { answer "127.0.0.2"; } }
    spf
    dmarc
    directory "ldap://127.0.0.1:389" base="dc=example,dc=com"
    greylist
    relay { backend "smtp://127.0.0.1:10025"; }
}
farm "users" kind="submission" {
    listen "127.0.0.1:2587"
    relay { backend "smtp://127.0.0.1:10025"; }
}
"#;
        let mut lw = Lowerer::new();
        let draft = lw.lower_text("policy.kdl", text.to_owned(), None).unwrap();
        let mut names: Vec<String> = Vec::new();
        let mut named_by_the_list: Vec<&str> = Vec::new();
        for farm in &draft.farms {
            let program = program(farm, "mx.example.net", None, None);
            for stage in Stage::ALL {
                names.extend(program.stage(stage).iter().map(|step| step.rule.clone()));
            }
            named_by_the_list.extend(rules_of(farm));
        }
        names.sort();
        names.dedup();
        named_by_the_list.sort_unstable();
        named_by_the_list.dedup();
        let mut listed: Vec<&str> = rules::policy_rule_names();
        listed.sort_unstable();
        assert_eq!(names, listed);
        // What `ban after=` may name loses no step of the programs.
        assert_eq!(named_by_the_list, listed);
    }
}
