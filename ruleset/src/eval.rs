//! The evaluator of the decision program: given what is known about a session, which reply does
//! the policy give at a stage, and why.
//!
//! This is the one place where policy decisions are made. The runtime calls it at each stage of a
//! live session; `mtac explain` and `mtac test` call it with facts given on the command line. Both
//! therefore decide exactly alike. It does no I/O: what DNS answered ([`DnsFacts`]), what the
//! greylist store and the directory answered, TLS and who authenticated arrive as [`Facts`],
//! gathered beforehand by the runtime (or given as flags and test lines).
//!
//! What the session itself decides on at MAIL FROM — whether the connection is encrypted where
//! the farm requires it, and whether the authenticated user owns the sender — is decided here
//! too ([`session_mail_checks`]), from the facts `tls` and `user`, so `mtac explain` and
//! `mtac test` see the 530 and the 553 a node answers.
//!
//! Sender authentication (SPF at MAIL FROM, DMARC after DATA) is decided from its verdicts by
//! `crate::sender_auth`, which this file calls: the SPF verdict is a DNS fact
//! ([`DnsFacts::spf`]); the message's DKIM, ARC and DMARC verdicts are [`MessageAuth`]
//! ([`Facts::message`]), read by the `data` stage's `dmarc` step.
//!
//! **Invariant:** relay control, recipient syntax and the known-recipient table are never skipped,
//! whatever the client's trust. HELO and sender hygiene checks count as anti-spam checks: trust and
//! role accounts skip them.

use crate::model::{
    AccessAction, Check, DkimSign, DkimSignKey, Dnsbl, DnsblTarget, Farm, FarmKind, RecipientDomainPolicy, Reply,
    Stage, Step, TableId,
};
pub use crate::sender_auth::{MessageAuth, SpfResult};
use crate::syntax;
use std::net::{IpAddr, Ipv4Addr};

/// Table lookups the evaluator needs; implemented by [`crate::Ruleset`].
pub trait Lookup {
    fn domain(&self, table: TableId, domain: &str) -> Option<u32>;
    fn address(&self, table: TableId, address: &str) -> Option<u32>;
    fn address_domain(&self, table: TableId, domain: &str) -> bool;
    fn prefix(&self, table: TableId, ip: IpAddr) -> Option<u32>;
}

/// One DNS list's answer for this session.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ListAnswer {
    NotListed,
    Listed(Vec<Ipv4Addr>),
    /// Timeout, SERVFAIL, or the zone is suspended: counts as not listed.
    Error,
}

/// Whether the sender's domain can receive mail (Postfix's reject_unknown_sender_domain).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DomainStatus {
    Resolves,
    /// Neither MX nor A/AAAA.
    NoRecords,
    /// RFC 7505 null MX: the domain says it accepts no mail, so its mail cannot be answered.
    NullMx,
    TempFail,
}

/// Greylisting state of the current triplet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum GreylistStatus {
    Pass,
    Defer,
}

/// The directory's answer for one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DirectoryAnswer {
    Known,
    Unknown,
    /// Down, slow or refusing: never a reason for a permanent refusal.
    Unavailable,
}

/// The client's reverse DNS.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ReverseDns {
    /// A PTR name that resolves back to the client's address (FCrDNS).
    Confirmed(String),
    /// A PTR name that does not resolve back.
    Unconfirmed(String),
    /// No PTR record.
    None,
    /// The lookup failed: never a reason for a permanent refusal.
    TempFail,
}

/// What DNS answered for this session; `None` where the runtime (or the operator) has no
/// answer. Only DNS: the greylist store's and the directory's answers are [`Facts`] of their own.
pub trait DnsFacts {
    fn list(&self, zone: &str, target: DnsblTarget) -> Option<ListAnswer>;
    fn sender_domain(&self, domain: &str) -> Option<DomainStatus>;
    fn reverse(&self) -> Option<ReverseDns> {
        None
    }
    /// Whether the HELO name exists in DNS (`Resolves`, `NoRecords` or `TempFail`).
    fn helo_name(&self) -> Option<DomainStatus> {
        None
    }
    /// The SPF verdict on MAIL FROM (`None`: not checked, or not given).
    fn spf(&self) -> Option<SpfResult> {
        None
    }
}

/// Facts with no DNS at all: every list "not listed", every domain unknown.
pub struct NoDns;

impl DnsFacts for NoDns {
    fn list(&self, _: &str, _: DnsblTarget) -> Option<ListAnswer> {
        None
    }
    fn sender_domain(&self, _: &str) -> Option<DomainStatus> {
        None
    }
}

/// Everything the evaluator may consult.
pub struct Facts<'a> {
    pub client_ip: IpAddr,
    pub helo: Option<&'a str>,
    /// `Some("")` is the null sender `<>`.
    pub sender: Option<&'a str>,
    pub recipient: Option<&'a str>,
    pub authenticated: bool,
    /// Who authenticated. `None` with `authenticated` set: the user is not known (an `explain`
    /// without `--user`), so sender ownership is not checked (the trace says so).
    pub user: Option<&'a str>,
    /// The connection is encrypted (STARTTLS or implicit TLS).
    pub tls: bool,
    /// The node's own host name (for the HELO "not ours" check).
    pub hostname: &'a str,
    pub dns: &'a dyn DnsFacts,
    /// The greylist store's verdict on this session's triplet (`None`: not asked; the
    /// greylist step is then [`StepOutcome::Pending`]).
    pub greylist: Option<GreylistStatus>,
    /// The directory's answer on `recipient` (`None`: not asked; the directory step is then
    /// [`StepOutcome::AskDirectory`]).
    pub directory: Option<DirectoryAnswer>,
    /// What verifying the message found (DKIM, ARC, DMARC), for the `data` stage (`None`: not
    /// verified yet, or not given).
    pub message: Option<&'a MessageAuth>,
}

/// What happened at one step, for `explain` and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    Passed(String),
    Skipped(String),
    /// The check decided: this reply ends the stage.
    Decided(Reply),
    /// Greylisting applies and its state is not known here: the runtime asks its state store
    /// once every other step has passed (`explain` and tests can give it with `greylist`).
    Pending,
    /// The directory must be asked about the recipient; evaluation stops here and the runtime
    /// evaluates the stage again with the answer (`explain` and tests give it with `directory`).
    AskDirectory,
    /// Role account: accepted, later steps skipped.
    Accepted(String),
    /// The session authenticated but the facts do not say as whom (`explain` without
    /// `--user`): the node checks that the user owns the sender here, and this evaluation could
    /// not. Passes, so that the rest of the session is still shown.
    UserNotGiven,
    /// A verdict the node finds for itself (this fact: `spf`, `dmarc`) was not given to this
    /// evaluation (`explain` without `--spf`). Passes, so the rest of the session is still shown.
    NotGiven(&'static str),
    /// A `shadow` step would have refused with this reply: reported, not enforced, and the
    /// stage goes on.
    WouldRefuse(Reply),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceLine {
    pub rule: String,
    pub outcome: StepOutcome,
}

/// The result of one stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// `None`: the stage passes (the runtime answers its usual 250).
    pub reply: Option<Reply>,
    /// The rule that decided, if any.
    pub rule: Option<String>,
    /// Why the client is trusted, if it is.
    pub trusted: Option<String>,
    pub trace: Vec<TraceLine>,
    /// The stage passed so far, and greylisting must still be consulted (see [`StepOutcome::Pending`]).
    pub greylist_pending: bool,
    /// Every step so far passed and the directory must be asked (see [`StepOutcome::AskDirectory`]).
    pub directory_pending: bool,
    /// The `shadow` steps that would have refused, and their replies: logged and counted by the
    /// node as "would refuse", never sent.
    pub shadowed: Vec<(String, Reply)>,
}

/// Evaluate `stage` of `farm` for `facts`.
pub fn evaluate(tables: &dyn Lookup, farm: &Farm, stage: Stage, facts: &Facts<'_>) -> Decision {
    let trusted = trust(tables, farm, facts);
    let mut trace = Vec::new();
    // A role account (abuse@, postmaster@) must be reachable even by a client the access list
    // refuses: that client may be the one trying to report a problem.
    let mut role_account: Option<String> = None;
    let mut shadowed = Vec::new();
    if stage == Stage::Mail {
        for (rule, outcome) in session_mail_checks(tables, farm, facts) {
            let refusal = match &outcome {
                StepOutcome::Decided(reply) => Some(reply.clone()),
                _ => None,
            };
            trace.push(TraceLine { rule: rule.to_owned(), outcome });
            if let Some(reply) = refusal {
                return Decision {
                    reply: Some(reply),
                    rule: Some(rule.to_owned()),
                    trusted,
                    trace,
                    greylist_pending: false,
                    directory_pending: false,
                    shadowed: Vec::new(),
                };
            }
        }
    }
    // A recipient domain's own block (`recipient-domain`) weighs on the RCPT stage only: before
    // it there is no recipient, and the message's stage is decided for all recipients at once.
    let domain_policy = match (stage, facts.recipient) {
        (Stage::Rcpt, Some(recipient)) => recipient_domain_policy(tables, farm, recipient),
        _ => None,
    };
    for step in farm.program.stage(stage) {
        let skip = match (&trusted, &role_account) {
            (_, Some(why)) if step.check.is_antispam() || step.check == Check::Access => Some(why.clone()),
            (Some(why), _) if step.check.is_antispam() => Some(why.clone()),
            _ => domain_policy
                .filter(|p| p.skip.contains(&step.rule))
                .map(|p| format!("recipient-domain {} skips it", p.domains.first().map_or("", String::as_str))),
        };
        if let Some(why) = skip {
            trace.push(TraceLine { rule: step.rule.clone(), outcome: StepOutcome::Skipped(why) });
            continue;
        }
        let outcome = match run_step(tables, farm, step, facts, domain_policy) {
            StepOutcome::Decided(reply) if step.shadow => {
                shadowed.push((step.rule.clone(), reply.clone()));
                StepOutcome::WouldRefuse(reply)
            }
            outcome => outcome,
        };
        let decided = match &outcome {
            StepOutcome::Decided(reply) => Some(reply.clone()),
            StepOutcome::Accepted(why) => {
                role_account = Some(why.clone());
                None
            }
            _ => None,
        };
        trace.push(TraceLine { rule: step.rule.clone(), outcome });
        if let Some(reply) = decided {
            return Decision {
                reply: Some(reply),
                rule: Some(step.rule.clone()),
                trusted,
                trace,
                greylist_pending: false,
                directory_pending: false,
                shadowed,
            };
        }
        if trace.last().is_some_and(|line| line.outcome == StepOutcome::AskDirectory) {
            // The steps after this one (greylisting above all) wait for the directory's answer.
            return Decision {
                reply: None,
                rule: None,
                trusted,
                trace,
                greylist_pending: false,
                directory_pending: true,
                shadowed,
            };
        }
    }
    let greylist_pending = trace.iter().any(|line| line.outcome == StepOutcome::Pending);
    Decision { reply: None, rule: None, trusted, trace, greylist_pending, directory_pending: false, shadowed }
}

/// The rule name of the TLS requirement at MAIL FROM (`tls required=#true`, every submission farm).
pub const RULE_TLS_REQUIRED: &str = crate::rules::TLS_REQUIRED;
/// The rule name of sender ownership after AUTH (and of `auth null-sender=`).
pub const RULE_AUTH_SENDER: &str = crate::rules::AUTH_SENDER;

/// The checks of MAIL FROM that come from the farm's TLS and AUTH settings rather than from its
/// program, in the order the node answers them: no mail before TLS where TLS is required (530),
/// then an authenticated user only sends as an address they own (553). They run before the
/// program's MAIL steps, whatever the client's trust (trust comes from the very AUTH they check).
pub fn session_mail_checks(tables: &dyn Lookup, farm: &Farm, facts: &Facts<'_>) -> Vec<(&'static str, StepOutcome)> {
    let mut out = Vec::new();
    let Some(sender) = facts.sender else { return out };
    let tls_required = farm.tls.as_ref().is_some_and(|t| t.required) || farm.kind == FarmKind::Submission;
    if tls_required {
        let outcome = if facts.tls {
            StepOutcome::Passed("TLS active".to_owned())
        } else {
            StepOutcome::Decided(Reply::new(530, "5.7.0", "Must issue a STARTTLS command first"))
        };
        let refused = matches!(outcome, StepOutcome::Decided(_));
        out.push((RULE_TLS_REQUIRED, outcome));
        if refused {
            return out;
        }
    }
    // Only a farm with `auth` can have an authenticated session.
    if !facts.authenticated || farm.auth.is_none() {
        return out;
    }
    let outcome = match facts.user {
        None => StepOutcome::UserNotGiven,
        Some(user) if may_send_as(tables, farm, user, sender) => StepOutcome::Passed(if sender.is_empty() {
            "null sender allowed".to_owned()
        } else {
            format!("{user} may send as {sender}")
        }),
        Some(_) if sender.is_empty() => StepOutcome::Decided(Reply::new(
            553,
            "5.7.1",
            "Sender address rejected: the null sender is not allowed after AUTH",
        )),
        Some(_) => StepOutcome::Decided(Reply::new(
            553,
            "5.7.1",
            "Sender address rejected: not owned by the authenticated user",
        )),
    };
    out.push((RULE_AUTH_SENDER, outcome));
    out
}

/// May the authenticated `user` send as `sender`? The user's own address (a user name that is
/// an address), USER@ one of the farm's local domains, an address the policy gave the user
/// (`may-send-as`), or the null sender `""` when the farm allows it (`auth null-sender=`). The
/// node's MAIL FROM and its `auth header-from` check both ask this.
pub fn may_send_as(tables: &dyn Lookup, farm: &Farm, user: &str, sender: &str) -> bool {
    if sender.is_empty() {
        return farm.auth.as_ref().is_some_and(|a| a.null_sender);
    }
    if sender.eq_ignore_ascii_case(user) {
        return true;
    }
    if farm.auth.as_ref().is_some_and(|a| a.may_send_as(user, sender)) {
        return true;
    }
    let Some((local, domain)) = sender.rsplit_once('@') else { return false };
    local.eq_ignore_ascii_case(user)
        && farm.local_domains.is_some_and(|t| tables.domain(t, &domain.to_ascii_lowercase()).is_some())
}

/// Whether, and with which key, a message is DKIM-signed (`dkim-sign`), from who sent it and the
/// addresses of its header From.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signing<'k> {
    /// The farm does not sign, or the sender did not authenticate: nothing to count.
    Off,
    /// Not signed: no key for the From domain, or not exactly one From address (RFC 5322 allows
    /// several; DMARC cannot align such a message, so a signature would not help it).
    NoKey,
    Key(&'k DkimSignKey),
}

/// The signing decision: only authenticated users' mail is signed (what the farm relays for
/// anyone else is not its users' to vouch for), with the key of the From domain or of its
/// closest parent (`d=example.org` is aligned with `From: …@mail.example.org` under DMARC's
/// default relaxed alignment). The envelope sender's domain is never used: a signature that does
/// not align with the From domain does nothing for DMARC, and signing mail for a domain the
/// author did not write would vouch for another domain's name.
pub fn dkim_signing<'k>(sign: Option<&'k DkimSign>, authenticated: bool, from: &[String]) -> Signing<'k> {
    let Some(sign) = sign.filter(|_| authenticated) else { return Signing::Off };
    let [address] = from else { return Signing::NoKey };
    let Some((_, domain)) = address.rsplit_once('@') else { return Signing::NoKey };
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    sign.keys
        .iter()
        .filter(|key| {
            domain == key.domain || domain.strip_suffix(key.domain.as_str()).is_some_and(|head| head.ends_with('.'))
        })
        .max_by_key(|key| key.domain.len())
        .map_or(Signing::NoKey, Signing::Key)
}

/// Why the client is trusted (anti-spam checks skipped), if it is.
pub fn trust(tables: &dyn Lookup, farm: &Farm, facts: &Facts<'_>) -> Option<String> {
    if facts.authenticated {
        return Some("authenticated".to_owned());
    }
    if let Some(table) = farm.access {
        if let Some(AccessAction::Accept) = access_action(tables, farm, table, facts.client_ip) {
            return Some(format!("client {} accepted by the access list", facts.client_ip));
        }
    }
    if let Some(dnsbl) = &farm.dnsbl {
        if let Some(allow) = dnsbl.allow_threshold {
            let (score, _) = dnsbl_score(dnsbl, facts);
            if score <= allow {
                return Some(format!("DNS allow-list score {score} <= {allow}"));
            }
        }
    }
    None
}

fn access_action<'f>(tables: &dyn Lookup, farm: &'f Farm, table: TableId, ip: IpAddr) -> Option<&'f AccessAction> {
    let index = tables.prefix(table, ip)?;
    farm.access_actions.get(usize::try_from(index).ok()?)
}

/// Sum of the weights of every zone's answers; the text lists what contributed.
pub fn dnsbl_score(dnsbl: &Dnsbl, facts: &Facts<'_>) -> (i32, Vec<String>) {
    let mut score = 0i32;
    let mut notes = Vec::new();
    for zone in &dnsbl.zones {
        match facts.dns.list(&zone.zone, zone.target) {
            Some(ListAnswer::Listed(answers)) => {
                for answer in answers {
                    // Only the zone's documented answers count; anything else (127.255.255.x from a
                    // public resolver, say) is a zone error, never a listing.
                    match zone.answers.iter().find(|a| a.matches(answer)) {
                        // A domain allow-list listing trusts whoever typed the domain, unless the
                        // zone asks for SPF to have verified it (`verified=#true`).
                        Some(filter) if filter.weight < 0 && zone.verified && !sender_verified(facts) => {
                            notes.push(format!(
                                "{} {} {:+} ignored (sender domain not verified by SPF)",
                                zone.zone, answer, filter.weight
                            ));
                        }
                        Some(filter) => {
                            score = score.saturating_add(filter.weight);
                            notes.push(format!("{} {} {:+}", zone.zone, answer, filter.weight));
                        }
                        None => notes.push(format!("{} {} ignored (undocumented answer)", zone.zone, answer)),
                    }
                }
            }
            Some(ListAnswer::Error) => notes.push(format!("{} error (not listed)", zone.zone)),
            Some(ListAnswer::NotListed) | None => {}
        }
    }
    (score, notes)
}

/// SPF passed for MAIL FROM's domain (`sender_auth::spf_verified_domain`).
fn sender_verified(facts: &Facts<'_>) -> bool {
    crate::sender_auth::spf_verified_domain(facts.dns.spf(), facts.sender).is_some()
}

fn sender_domain<'a>(facts: &Facts<'a>) -> Option<&'a str> {
    facts.sender.and_then(|s| syntax::split_address(s)).map(|(_, d)| d)
}

fn run_step(
    tables: &dyn Lookup,
    farm: &Farm,
    step: &Step,
    facts: &Facts<'_>,
    domain_policy: Option<&RecipientDomainPolicy>,
) -> StepOutcome {
    let fail = || StepOutcome::Decided(step.reply.clone());
    let pass = |why: &str| StepOutcome::Passed(why.to_owned());
    match &step.check {
        Check::Access => {
            let Some(table) = farm.access else { return pass("no access list") };
            match access_action(tables, farm, table, facts.client_ip) {
                Some(AccessAction::Reject(reply)) | Some(AccessAction::Defer(reply)) => {
                    StepOutcome::Decided(reply.clone())
                }
                Some(AccessAction::Accept) => pass("client accepted"),
                None => pass("client not listed"),
            }
        }
        Check::Dnsbl => {
            let Some(dnsbl) = &farm.dnsbl else { return pass("no DNS lists") };
            let (score, notes) = dnsbl_score(dnsbl, facts);
            let detail = if notes.is_empty() { "no listing".to_owned() } else { notes.join(", ") };
            let (threshold, whose) = match domain_policy.and_then(|p| Some((p.dnsbl_threshold?, p))) {
                Some((threshold, p)) => {
                    (threshold, format!(", recipient-domain {}", p.domains.first().map_or("", String::as_str)))
                }
                None => (dnsbl.threshold, String::new()),
            };
            if score >= threshold {
                StepOutcome::Decided(step.reply.clone())
            } else {
                pass(&format!("score {score} < {threshold}{whose} ({detail})"))
            }
        }
        Check::HeloRequired => match facts.helo {
            Some(_) => pass("HELO given"),
            None => fail(),
        },
        Check::HeloSyntax => match facts.helo {
            Some(h) if syntax::is_hostname(h) || syntax::parse_address_literal(h).is_some() => pass("valid"),
            Some(_) => fail(),
            None => pass("no HELO yet"),
        },
        Check::HeloFqdn => match facts.helo {
            Some(h) if syntax::is_fqdn(h) || syntax::parse_address_literal(h).is_some() => pass("fully qualified"),
            Some(_) => fail(),
            None => pass("no HELO yet"),
        },
        Check::HeloNotOurs { names } => match facts.helo {
            Some(h) => {
                let h = syntax::normalize_domain(h);
                let ours = h == syntax::normalize_domain(facts.hostname)
                    || names.contains(&h)
                    || farm.local_domains.is_some_and(|t| tables.domain(t, &h).is_some())
                    || syntax::parse_address_literal(&h).is_some_and(|ip| {
                        farm.listeners.iter().any(|l| l.address.ip() == ip && !l.address.ip().is_unspecified())
                    });
                if ours {
                    fail()
                } else {
                    pass("not one of our names")
                }
            }
            None => pass("no HELO yet"),
        },
        Check::SenderFqdn => match facts.sender {
            Some("") => pass("null sender"),
            Some(s) => match syntax::split_address(s) {
                Some((_, d)) if syntax::is_fqdn(d) || syntax::parse_address_literal(d).is_some() => {
                    pass("fully qualified")
                }
                _ => fail(),
            },
            None => pass("no sender yet"),
        },
        Check::SenderDeny { domains, addresses } => {
            let Some(sender) = facts.sender.filter(|s| !s.is_empty()) else {
                return pass("null or no sender");
            };
            let by_address = addresses.is_some_and(|t| tables.address(t, sender).is_some());
            let by_domain =
                domains.is_some_and(|t| sender_domain(facts).is_some_and(|d| tables.domain(t, d).is_some()));
            if by_address || by_domain {
                fail()
            } else {
                pass("not denied")
            }
        }
        Check::SenderResolvable => {
            let Some(domain) = sender_domain(facts) else { return pass("null or no sender") };
            match facts.dns.sender_domain(domain) {
                Some(DomainStatus::Resolves) => pass("domain resolves"),
                Some(DomainStatus::NoRecords) | Some(DomainStatus::NullMx) => fail(),
                Some(DomainStatus::TempFail) => StepOutcome::Decided(Reply::new(
                    450,
                    "4.1.8",
                    "Sender address rejected: Domain not found (temporary DNS failure)",
                )),
                None => pass("not looked up (assumed to resolve)"),
            }
        }
        Check::HeloResolvable => match facts.helo {
            None => pass("no HELO yet"),
            Some(name) if syntax::parse_address_literal(name).is_some() => pass("address literal"),
            Some(_) => match facts.dns.helo_name() {
                // A null MX still proves the name exists; only a name DNS does not know is refused.
                Some(DomainStatus::Resolves) | Some(DomainStatus::NullMx) => pass("host name resolves"),
                Some(DomainStatus::NoRecords) => fail(),
                Some(DomainStatus::TempFail) => StepOutcome::Decided(Reply::new(
                    450,
                    "4.7.1",
                    "Helo command rejected: Host not found (temporary DNS failure)",
                )),
                None => pass("not looked up (assumed to resolve)"),
            },
        },
        Check::RecipientFqdn => match facts.recipient.and_then(syntax::split_address) {
            Some((_, d)) if syntax::is_fqdn(d) || syntax::parse_address_literal(d).is_some() => pass("fully qualified"),
            Some(_) => fail(),
            None => match facts.recipient {
                // `<postmaster>` without a domain is always allowed (RFC 5321 4.5.1).
                Some(r) if r.eq_ignore_ascii_case("postmaster") => pass("postmaster"),
                Some(_) => fail(),
                None => pass("no recipient yet"),
            },
        },
        Check::RelayControl => {
            let local = match facts.recipient {
                Some(r) if r.eq_ignore_ascii_case("postmaster") => true,
                Some(r) => is_local_recipient(tables, farm, r),
                None => return pass("no recipient yet"),
            };
            if local {
                pass("local domain")
            } else if facts.authenticated {
                pass("authenticated client may relay")
            } else if farm.relay_clients.is_some_and(|t| tables.prefix(t, facts.client_ip).is_some()) {
                pass("client may relay")
            } else {
                fail()
            }
        }
        Check::RecipientKnown => {
            let Some(recipient) = facts.recipient else { return pass("no recipient yet") };
            let Some((local, domain)) = syntax::split_address(recipient) else {
                return pass("postmaster");
            };
            if !is_local_recipient(tables, farm, recipient) {
                return pass("not a local domain");
            }
            // RFC 5321 4.5.1: every domain must accept postmaster, listed or not.
            if is_role_account(farm, local) || local.eq_ignore_ascii_case("postmaster") {
                return pass("role account");
            }
            match farm.local_addresses {
                Some(t) if tables.address(t, recipient).is_some() => pass("listed address"),
                // The compiled table is the fast path; the directory has the last word.
                _ if farm.directory.as_ref().is_some_and(|d| d.lookups) => pass("not listed: the directory decides"),
                Some(t) if tables.address_domain(t, domain) => fail(),
                _ => pass("domain accepts any address (the back end decides)"),
            }
        }
        Check::RecipientDirectory => {
            if !farm.directory.as_ref().is_some_and(|d| d.lookups) {
                return pass("no run-time directory lookups (lookups=#false)");
            }
            let Some(recipient) = facts.recipient else { return pass("no recipient yet") };
            let Some((local, _)) = syntax::split_address(recipient) else { return pass("postmaster") };
            if !is_local_recipient(tables, farm, recipient) {
                return pass("not a local domain");
            }
            if is_role_account(farm, local) || local.eq_ignore_ascii_case("postmaster") {
                return pass("role account");
            }
            if farm.local_addresses.is_some_and(|t| tables.address(t, recipient).is_some()) {
                return pass("listed in the compiled table (no directory lookup)");
            }
            match facts.directory {
                Some(DirectoryAnswer::Known) => pass("found in the directory"),
                Some(DirectoryAnswer::Unknown) => fail(),
                Some(DirectoryAnswer::Unavailable) => StepOutcome::Decided(Reply::new(
                    451,
                    "4.4.3",
                    "Recipient address rejected: directory unavailable, please try again later",
                )),
                None => StepOutcome::AskDirectory,
            }
        }
        Check::RoleAccount => match facts.recipient {
            Some(r) if r.eq_ignore_ascii_case("postmaster") => StepOutcome::Accepted("postmaster".to_owned()),
            Some(r) => match syntax::split_address(r) {
                Some((local, _)) if is_role_account(farm, local) && is_local_recipient(tables, farm, r) => {
                    StepOutcome::Accepted(format!("role account {}", local.to_ascii_lowercase()))
                }
                _ => pass("not a role account"),
            },
            None => pass("no recipient yet"),
        },
        Check::Greylist => {
            if let Some(why) = greylist_whitelisted(tables, farm, facts) {
                return pass(&why);
            }
            match facts.greylist {
                Some(GreylistStatus::Defer) => fail(),
                Some(GreylistStatus::Pass) => pass("triplet passed"),
                None => StepOutcome::Pending,
            }
        }
        Check::ClientReverseDns { confirmed } => match facts.dns.reverse() {
            Some(ReverseDns::Confirmed(name)) => pass(&format!("{} resolves to {name} and back", facts.client_ip)),
            Some(ReverseDns::Unconfirmed(name)) if !confirmed => {
                pass(&format!("{} has the name {name}", facts.client_ip))
            }
            Some(ReverseDns::Unconfirmed(_)) | Some(ReverseDns::None) => fail(),
            // Postfix's reject_unknown_client_hostname answers 450 on a DNS failure: never 5xx for it.
            Some(ReverseDns::TempFail) => StepOutcome::Decided(Reply::new(
                450,
                "4.7.25",
                "Client host rejected: cannot find your hostname (temporary DNS failure)",
            )),
            None => pass("not looked up"),
        },
        Check::Spf => crate::sender_auth::spf_step(farm.sender_auth.spf.as_ref(), facts.dns.spf(), facts.sender, step),
        Check::Dmarc => crate::sender_auth::dmarc_step(tables, farm, facts.message),
        Check::AuthRequired => {
            if facts.authenticated {
                pass("authenticated")
            } else {
                fail()
            }
        }
    }
}

/// The static greylist whitelists compiled into the ruleset (clients, sender domains, recipients).
fn greylist_whitelisted(tables: &dyn Lookup, farm: &Farm, facts: &Facts<'_>) -> Option<String> {
    let greylist = farm.greylist.as_ref()?;
    if greylist.whitelist_clients.is_some_and(|t| tables.prefix(t, facts.client_ip).is_some()) {
        return Some("client whitelisted for greylisting".to_owned());
    }
    if let (Some(t), Some(domain)) = (greylist.whitelist_senders, sender_domain(facts)) {
        match tables.domain(t, &syntax::normalize_domain(domain)) {
            // `verified=#true`: typing the domain is not enough, SPF must have passed for it.
            Some(crate::model::VERIFIED_SENDER) if sender_verified(facts) => {
                return Some(format!("sender domain {domain} whitelisted for greylisting (SPF pass)"));
            }
            Some(crate::model::VERIFIED_SENDER) => {}
            Some(_) => return Some(format!("sender domain {domain} whitelisted for greylisting")),
            None => {}
        }
    }
    if let (Some(t), Some(rcpt)) = (greylist.whitelist_recipients, facts.recipient) {
        if tables.address(t, rcpt).is_some() {
            return Some("recipient opted out of greylisting".to_owned());
        }
    }
    None
}

fn is_role_account(farm: &Farm, local: &str) -> bool {
    farm.role_accounts.iter().any(|r| r.eq_ignore_ascii_case(local))
}

/// The `recipient-domain` block that decides for this recipient (most specific domain wins), if
/// any.
pub fn recipient_domain_policy<'f>(
    tables: &dyn Lookup,
    farm: &'f Farm,
    recipient: &str,
) -> Option<&'f RecipientDomainPolicy> {
    let table = farm.recipient_domains.table?;
    let (_, domain) = syntax::split_address(recipient)?;
    let index = tables.domain(table, &syntax::normalize_domain(domain))?;
    farm.recipient_domains.policies.get(usize::try_from(index).ok()?)
}

/// Is the recipient's domain one of the farm's local domains?
pub fn is_local_recipient(tables: &dyn Lookup, farm: &Farm, recipient: &str) -> bool {
    let Some((_, domain)) = syntax::split_address(recipient) else { return false };
    let domain = syntax::normalize_domain(domain);
    farm.local_domains.is_some_and(|t| tables.domain(t, &domain).is_some())
}

/// DNS answers known up front (`mtac explain` flags, a policy test) or gathered so far (a
/// node's session): DNS only.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GivenDns {
    /// Zone → the answers it gave (empty = not listed).
    pub lists: Vec<(String, ListAnswer)>,
    pub sender_domain: Option<DomainStatus>,
    pub reverse: Option<ReverseDns>,
    /// The HELO name's DNS status.
    pub helo_name: Option<DomainStatus>,
    /// The SPF verdict on MAIL FROM.
    pub spf: Option<SpfResult>,
}

impl DnsFacts for GivenDns {
    fn list(&self, zone: &str, _: DnsblTarget) -> Option<ListAnswer> {
        self.lists.iter().find(|(z, _)| z.eq_ignore_ascii_case(zone)).map(|(_, a)| a.clone())
    }
    fn sender_domain(&self, _: &str) -> Option<DomainStatus> {
        self.sender_domain
    }
    fn reverse(&self) -> Option<ReverseDns> {
        self.reverse.clone()
    }
    fn helo_name(&self) -> Option<DomainStatus> {
        self.helo_name
    }
    fn spf(&self) -> Option<SpfResult> {
        self.spf
    }
}

/// The outcome of a whole simulated session up to its last given command.
#[derive(Debug, Clone)]
pub struct Simulation {
    /// Each evaluated stage and its decision, in order.
    pub stages: Vec<(Stage, Decision)>,
}

impl Simulation {
    /// The stage and decision that refused the session, if any.
    pub fn refusal(&self) -> Option<(Stage, &Decision)> {
        self.stages.iter().find(|(_, d)| d.reply.is_some()).map(|(s, d)| (*s, d))
    }
}

/// Evaluate the stages a session reaches with these facts, stopping at the first refusal: connect
/// always, HELO when given, MAIL when a sender is given, RCPT when a recipient is given, and the
/// message's (`data`) when a recipient is given and the farm decides on the message.
pub fn simulate(tables: &dyn Lookup, farm: &Farm, facts: &Facts<'_>) -> Simulation {
    let mut stages = Vec::new();
    let reached = [
        (Stage::Connect, true),
        (Stage::Helo, facts.helo.is_some()),
        (Stage::Mail, facts.sender.is_some()),
        (Stage::Rcpt, facts.recipient.is_some()),
        (Stage::Data, facts.recipient.is_some() && (!farm.program.data.is_empty() || !farm.filters.is_empty())),
    ];
    for (stage, reached) in reached {
        if !reached {
            continue;
        }
        let mut decision = evaluate(tables, farm, stage, facts);
        // The milters answer MAIL and RCPT after the policy accepted them.
        let early = match stage {
            Stage::Mail => Some(crate::filters::FilterStage::Mail),
            Stage::Rcpt => Some(crate::filters::FilterStage::Rcpt),
            _ => None,
        };
        if let (Some(early), None) = (early, &decision.reply) {
            let given = facts.message.map(|m| m.filters.as_slice()).unwrap_or_default();
            let (trace, refusal) = crate::filters::simulate_stage(farm, given, early);
            decision.trace.extend(trace);
            if let Some((reply, rule)) = refusal {
                decision.reply = Some(reply);
                decision.rule = Some(rule.to_owned());
            }
        }
        // The filters (`milter`, `hook`) answer after the message's own checks passed.
        if stage == Stage::Data && decision.reply.is_none() && !farm.filters.is_empty() {
            let given = facts.message.map(|m| m.filters.as_slice()).unwrap_or_default();
            let (trace, refusal) = crate::filters::simulate(farm, given);
            decision.trace.extend(trace);
            if let Some((reply, rule)) = refusal {
                decision.reply = Some(reply);
                decision.rule = Some(rule.to_owned());
            }
        }
        let refused = decision.reply.is_some();
        stages.push((stage, decision));
        if refused {
            break;
        }
    }
    Simulation { stages }
}
