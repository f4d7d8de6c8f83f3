//! What the session knows of its client and how it asks the evaluator: the DNS answers the
//! driver hands in ([`DnsUpdate`], [`super::Session::dns_answered`]), the [`Facts`] built from
//! them and from the session's own state, and the evaluator's [`Decision`] turned into the
//! session's terms ([`Verdict`]).
//!
//! **Invariant:** every policy decision of the session is one call of
//! [`mtac_ruleset::eval::evaluate`] with facts built here, so `mtac explain` (which builds its
//! facts from flags) decides alike.

use super::action::{policy_reply, Refusal};
use super::Session;
use crate::smtp::Reply;
use mtac_ruleset::eval::{self, Decision, DomainStatus, Facts, GivenDns, ListAnswer, ReverseDns, SpfResult};
use mtac_ruleset::journal::{Record, RecordedFacts};
use mtac_ruleset::model::{Farm, Stage};
use mtac_ruleset::replay::Outcome;
use mtac_ruleset::Ruleset;

/// One thing DNS answered (or made stale) since the session last heard, handed to
/// [`super::Session::dns_answered`] by the driver's lookups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsUpdate {
    /// A DNS list answered for `zone`; the answer replaces the zone's earlier one.
    Listed { zone: String, answer: ListAnswer },
    /// The client gave a new HELO name: the answers about the old one (these zones', and its
    /// status) no longer hold.
    HeloChanged { zones: Vec<String> },
    /// A new MAIL FROM: the answers about the old sender's domain no longer hold.
    SenderChanged { zones: Vec<String> },
    /// The client's reverse DNS.
    Reverse(ReverseDns),
    /// What DNS knows of the HELO name (`None`: it was not looked up).
    HeloName(Option<DomainStatus>),
    /// What DNS knows of the sender's domain (`None`: it was not looked up).
    SenderDomain(Option<DomainStatus>),
    /// The SPF verdict on MAIL FROM (`None`: the check could not run).
    Spf(Option<SpfResult>),
}

/// The evaluator's decision on a stage, in the session's terms.
#[derive(Debug)]
pub(super) enum Verdict {
    Pass,
    /// Every step so far passed and the directory must be asked about the recipient; the steps
    /// after it wait for its answer.
    AskDirectory,
    /// Every step passed but greylisting, which the state store answers.
    AskGreylist,
    /// The policy refuses with this reply (and names its rule, as it always does).
    Refuse(Reply, Option<Refusal>),
}

impl Verdict {
    pub(super) fn of(decision: Decision) -> Verdict {
        match decision.reply {
            Some(r) => {
                let reply = policy_reply(&r);
                let may_ban = reply.is_permanent();
                Verdict::Refuse(reply, decision.rule.map(|rule| Refusal { rule, may_ban }))
            }
            None if decision.directory_pending => Verdict::AskDirectory,
            None if decision.greylist_pending => Verdict::AskGreylist,
            None => Verdict::Pass,
        }
    }
}

fn forget(dns: &mut GivenDns, zones: &[String]) {
    dns.lists.retain(|(z, _)| !zones.contains(z));
}

impl Session {
    /// DNS answered (or the name asked about changed): merge it into what the evaluator reads.
    pub fn dns_answered(&mut self, updates: impl IntoIterator<Item = DnsUpdate>) {
        for update in updates {
            let dns = self.dns.get_or_insert_with(Box::default);
            match update {
                DnsUpdate::Listed { zone, answer } => match dns.lists.iter_mut().find(|(z, _)| *z == zone) {
                    Some(slot) => slot.1 = answer,
                    None => dns.lists.push((zone, answer)),
                },
                DnsUpdate::HeloChanged { zones } => {
                    forget(dns, &zones);
                    dns.helo_name = None;
                }
                DnsUpdate::SenderChanged { zones } => {
                    forget(dns, &zones);
                    dns.sender_domain = None;
                    dns.spf = None;
                }
                DnsUpdate::Reverse(reverse) => dns.reverse = Some(reverse),
                DnsUpdate::HeloName(status) => dns.helo_name = status,
                DnsUpdate::SenderDomain(status) => dns.sender_domain = status,
                DnsUpdate::Spf(result) => dns.spf = result,
            }
        }
    }

    /// What the evaluator may consult now, for a command naming `sender` and `recipient`. The
    /// greylist store and the directory have not been asked (their steps say so).
    pub fn facts<'a>(&'a self, ruleset: &'a Ruleset, sender: Option<&'a str>, recipient: Option<&'a str>) -> Facts<'a> {
        Facts {
            client_ip: self.peer.ip(),
            helo: self.helo.as_deref(),
            sender,
            recipient,
            authenticated: self.authenticated().is_some(),
            user: self.authenticated(),
            tls: self.tls.is_some(),
            hostname: &ruleset.policy().hostname,
            dns: self.dns(),
            greylist: None,
            directory: None,
            message: None,
        }
    }
}

/// One evaluation's results for the session ([`Session::settle`]).
pub(super) struct Decided {
    verdict: Verdict,
    /// What its `shadow` steps would have refused.
    shadowed: Vec<(String, mtac_ruleset::model::Reply)>,
    /// How the shadow ruleset's decision differs, when the node runs one.
    candidate: Option<super::candidate::RulesetChange>,
    /// Its journal record, when the journal is on.
    record: Option<Record>,
}

/// Evaluate `stage` with `facts` — with the same facts in the candidate ruleset too, if the
/// session has one — recording it when `journal` (what `facts.dns` reads) is given.
pub(super) fn decide(
    ruleset: &Ruleset,
    farm: &Farm,
    stage: Stage,
    facts: &Facts<'_>,
    candidate: Option<&super::candidate::Candidate>,
    journal: Option<&GivenDns>,
) -> Decided {
    let mut decision = eval::evaluate(ruleset, farm, stage, facts);
    let candidate = super::candidate::compare(candidate, &farm.name, stage, facts, &decision);
    let record = journal.map(|dns| record(farm, stage, facts, dns, &decision));
    let shadowed = std::mem::take(&mut decision.shadowed);
    Decided { verdict: Verdict::of(decision), shadowed, candidate, record }
}

/// The journal's record of one evaluation: the facts it read and its outcome. The time is the
/// driver's to stamp (the session has no clock).
fn record(farm: &Farm, stage: Stage, facts: &Facts<'_>, dns: &GivenDns, decision: &Decision) -> Record {
    Record {
        time: 0,
        farm: farm.name.clone(),
        stage,
        facts: RecordedFacts::of(facts, dns),
        outcome: Outcome::of(decision),
    }
}

impl Session {
    /// What a journal record must hold of the DNS answers, when the journal is on.
    pub(super) fn journaled(&self) -> Option<&GivenDns> {
        self.journal.is_some().then(|| self.dns())
    }

    /// Keep what an evaluation leaves for the driver (shadow refusals, the journal record) and
    /// return its verdict.
    pub(super) fn settle(&mut self, stage: Stage, decided: Decided) -> Verdict {
        self.note_shadowed(stage, decided.shadowed);
        self.note_candidate(decided.candidate);
        self.keep_record(decided.record);
        decided.verdict
    }

    pub(super) fn keep_record(&mut self, record: Option<Record>) {
        if let (Some(journal), Some(record)) = (self.journal.as_mut(), record) {
            journal.push(record);
        }
    }

    /// The record of an evaluation the driver made with [`Session::facts`] (the `data` stage,
    /// after the message's verdicts), when the journal is on.
    pub fn journal_record(&self, farm: &Farm, stage: Stage, facts: &Facts<'_>, decision: &Decision) -> Option<Record> {
        self.journaled().map(|dns| record(farm, stage, facts, dns, decision))
    }

    /// The journal records of the evaluations since the last call, for the driver to stamp and
    /// hand to the node's journal.
    pub fn take_journal(&mut self) -> Vec<Record> {
        self.journal.as_mut().map(std::mem::take).unwrap_or_default()
    }
}
