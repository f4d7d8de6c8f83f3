//! The SMTP session state machine, sans I/O.
//!
//! A [`Session`] is fed parsed commands (and what the driver learned meanwhile: DNS answers,
//! the TLS handshake, a ban at accept) and answers each input with an [`Action`]: a reply to
//! send, a reply and a close, or a round trip to make ("ask the back end about this
//! recipient", "check these credentials", "start DATA"), whose answer comes back through the
//! method the action names. A reply that refuses carries its [`Refusal`] (the rule, and whether
//! `ban after=` counts it), so the driver logs and bans from the value it was handed.
//!
//! It owns the protocol rules (command order, limits, error counting) and asks the ruleset's
//! evaluator ([`mtac_ruleset::eval`]) for every policy decision, at the stage the policy placed
//! it. Its fields are private: the driver reads through accessors and changes the session only
//! by telling it what happened. Sockets, timers, the spool and the back end live in
//! [`crate::conn`]; a unit test drives a whole session line by line.
//!
//! The rooms: `action.rs` (what comes out), `facts.rs` (what the evaluator is told), `auth.rs`
//! (the SASL exchange), `mail.rs` (MAIL, RCPT, DATA and the answers they wait for); this file
//! keeps the state, the greeting, HELO and the dispatch of commands.
//!
//! **Invariant:** the session does no I/O; a refusal's rule travels with the action that
//! refuses (see [`action`]), and a recipient is accepted only after relay control and the
//! back end (see [`mail`]).

mod action;
mod auth;
mod candidate;
mod facts;
mod mail;
#[cfg(test)]
pub(crate) mod tests;

pub use action::{policy_reply, Action, Refusal};
pub use auth::AuthVerdict;
pub use candidate::RulesetChange;
pub use facts::DnsUpdate;
pub use mail::{GreylistAnswer, Transaction};

use crate::smtp::{Command, EhloCapabilities, ParseError, Reply};
use action::reply;
use facts::{decide, Verdict};
use mtac_ruleset::eval::{self, GivenDns};
use mtac_ruleset::model::{self, Farm, Stage};
use mtac_ruleset::rules;
use mtac_ruleset::Ruleset;
use std::net::SocketAddr;

/// Per-session protocol state.
/// A refusal a `shadow` step would have given: reported, never sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shadowed {
    pub stage: Stage,
    pub rule: String,
    pub reply: mtac_ruleset::model::Reply,
}

#[derive(Debug)]
pub struct Session {
    id: String,
    /// `shadow` steps' refusals not yet reported ([`Session::take_shadowed`]).
    shadowed: Vec<Shadowed>,
    /// The node's shadow ruleset, if it runs one (boxed: most sessions have none).
    candidate: Option<Box<candidate::Candidate>>,
    peer: SocketAddr,
    hostname: String,
    limits: model::Limits,
    /// The connect stage refused this client: every command but QUIT is refused.
    refused: Option<Box<Reply>>,
    helo: Option<String>,
    esmtp: bool,
    /// Boxed: created at MAIL and dropped at the end of DATA, so an idle session holds 8 bytes,
    /// not the transaction's 72.
    txn: Option<Box<Transaction>>,
    errors: u32,
    /// Messages accepted in this session (for the closing log line).
    accepted: u32,
    /// The rule behind the last refusal, for the closing log line.
    last_rule: Option<String>,
    /// The farm offers STARTTLS (it has a certificate) and this connection is not in TLS yet.
    tls_offered: bool,
    /// The connection is encrypted ("TLS1.3 TLS13_AES_256_GCM_SHA384").
    tls: Option<String>,
    /// What AUTH left: the SASL exchange in progress, the user, the failures. Created by the
    /// first AUTH command (the mechanisms and the failure limit are read from the farm), so
    /// the sessions that never authenticate, most of them, hold 8 bytes for it.
    auth: Option<Box<auth::AuthState>>,
    /// The greylist client key of this session, once a recipient passed greylisting (its
    /// delivered messages count toward auto-whitelisting).
    greylist_client: Option<String>,
    /// DNS answers gathered so far ([`Session::dns_answered`]); created by the first one, so a
    /// farm without DNS checks holds 8 bytes for it, not 64.
    dns: Option<Box<GivenDns>>,
    /// The client is banned and was let in to be refused at RCPT (ban response "refuse-recipients").
    banned: bool,
    /// Commands that moved no mail so far.
    junk: u32,
    /// The client talked before the greeting's last line and the farm refuses its recipients
    /// (`screen { pregreet talker="refuse-recipients" }`).
    talked_early: bool,
    /// Journal records not yet taken by the driver ([`Session::take_journal`]); `None`: the
    /// ruleset has no journal, and nothing is recorded.
    journal: Option<Vec<mtac_ruleset::journal::Record>>,
}

/// What a session that DNS has not answered knows of it.
static NO_DNS_ANSWERS: GivenDns =
    GivenDns { lists: Vec::new(), sender_domain: None, reverse: None, helo_name: None, spf: None };

/// The longest delay a negative reply past the soft error limit waits.
pub const MAX_ERROR_DELAY_SECONDS: u32 = 3;

/// HELO, EHLO, NOOP, RSET, VRFY and HELP allowed per session (Postfix's default is 100).
pub const JUNK_COMMAND_LIMIT: u32 = 100;

impl Session {
    pub fn new(id: String, peer: SocketAddr, ruleset: &Ruleset, farm: &Farm) -> Session {
        Session {
            id,
            peer,
            hostname: ruleset.policy().hostname.clone(),
            limits: farm.limits.clone(),
            refused: None,
            helo: None,
            esmtp: false,
            txn: None,
            errors: 0,
            accepted: 0,
            last_rule: None,
            shadowed: Vec::new(),
            candidate: None,
            greylist_client: None,
            tls_offered: farm.tls.is_some(),
            tls: None,
            auth: None,
            dns: None,
            journal: ruleset.policy().journal.as_ref().map(|_| Vec::new()),
            banned: false,
            junk: 0,
            talked_early: false,
        }
    }

    // ----- what the driver reads -----

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// The client greeted with EHLO.
    pub fn esmtp(&self) -> bool {
        self.esmtp
    }

    /// The HELO/EHLO name the policy accepted.
    pub fn helo(&self) -> Option<&str> {
        self.helo.as_deref()
    }

    /// The mail transaction in progress.
    pub fn transaction(&self) -> Option<&Transaction> {
        self.txn.as_deref()
    }

    /// What protects the connection ("TLS1.3 TLS13_AES_256_GCM_SHA384"), if it is encrypted.
    pub fn tls(&self) -> Option<&str> {
        self.tls.as_deref()
    }

    /// The user this session authenticated as.
    pub fn authenticated(&self) -> Option<&str> {
        self.auth.as_ref().and_then(|a| a.user.as_deref())
    }

    /// Messages accepted in this session.
    pub fn accepted(&self) -> u32 {
        self.accepted
    }

    /// The rule behind the session's last refusal.
    pub fn last_rule(&self) -> Option<&str> {
        self.last_rule.as_deref()
    }

    /// The greylist client key whose triplet passed, if one did.
    pub fn greylist_client(&self) -> Option<&str> {
        self.greylist_client.as_deref()
    }

    /// What DNS answered so far.
    pub fn dns(&self) -> &GivenDns {
        self.dns.as_deref().unwrap_or(&NO_DNS_ANSWERS)
    }

    // ----- what happened, told by the driver -----

    /// The client is banned and was let in only to be refused at RCPT (ban response
    /// "refuse-recipients").
    pub fn banned_at_connect(&mut self) {
        self.banned = true;
    }

    /// Whether the client was let in banned ([`Session::banned_at_connect`]).
    pub fn is_banned(&self) -> bool {
        self.banned
    }

    /// The TLS handshake succeeded: RFC 3207 4.2 — forget everything the client said before.
    pub fn tls_started(&mut self, description: String) {
        self.tls = Some(description);
        self.helo = None;
        self.esmtp = false;
        self.txn = None;
        if let Some(auth) = &mut self.auth {
            auth.sasl = None;
        }
    }

    /// The client talked before the greeting (postscreen's pregreet test): a bot. Closed with
    /// `554 5.5.1`.
    pub fn talked_early(&mut self) -> Action {
        let r = reply(554, 5, 5, 1, "Protocol error: you talked before the greeting");
        self.close_refusing(r, Refusal::no_ban(rules::PREGREET))
    }

    /// The client talked before the greeting, and the farm lets it go on to have its recipients
    /// refused (`talker="refuse-recipients"`).
    pub fn talked_early_refuse_recipients(&mut self) {
        self.talked_early = true;
        self.last_rule = Some(rules::PREGREET.to_owned());
    }

    /// The farm is under stress: this session gets the stress limits (Postfix's `stress`).
    pub fn under_stress(&mut self, stress: &model::Stress) {
        self.limits.errors = self.limits.errors.min(stress.errors.max(1));
        self.limits.soft_errors = self.limits.soft_errors.min(self.limits.errors);
        self.limits.timeouts.command = stress.command_timeout;
        self.limits.timeouts.data = stress.data_timeout;
    }

    /// The limits this session runs under (the farm's, or its stress limits).
    pub fn limits(&self) -> &model::Limits {
        &self.limits
    }

    /// The client sent input before a reply it had to wait for (RFC 2920: after DATA, or any
    /// command when PIPELINING was not offered): closed with the farm's `reply`, like
    /// Postfix 3.9's `smtpd_forbid_unauth_pipelining`.
    pub fn improper_pipelining(&mut self, reply: &model::Reply) -> Action {
        self.close_refusing(policy_reply(reply), Refusal::no_ban(rules::PIPELINING))
    }

    /// Whether the reply to `command` must reach the client before it sends anything more:
    /// every command when PIPELINING was not offered (no EHLO yet, or HELO), else the commands
    /// RFC 2920 3.1 allows only last in a group (EHLO, DATA, VRFY, EXPN, NOOP; HELO as Postfix
    /// does). RSET, MAIL and RCPT may be followed. STARTTLS is left to its own rule: what follows
    /// it in clear text is dropped (CVE-2011-0411, `conn/starttls.rs`); AUTH to the SASL exchange.
    pub fn must_end_group(&self, command: &Command) -> bool {
        if matches!(command, Command::Quit) {
            // Nothing after QUIT is read.
            return false;
        }
        !self.esmtp
            || matches!(
                command,
                Command::Helo(_)
                    | Command::Ehlo(_)
                    | Command::Data
                    | Command::Vrfy(_)
                    | Command::Expn(_)
                    | Command::Noop
            )
    }

    /// How long the last negative reply waits: past the soft error limit, one second more per
    /// error, at most [`MAX_ERROR_DELAY_SECONDS`] (Postfix sleeps `smtpd_error_sleep_time`,
    /// 1 s, each time). Zero below the limit.
    pub fn error_delay_seconds(&self) -> u32 {
        self.errors.saturating_sub(self.limits.soft_errors).min(MAX_ERROR_DELAY_SECONDS)
    }

    // ----- answers -----

    /// Remember the rule of a refusal for the closing line, and hand the refusal on.
    fn noted(&mut self, refusal: Option<Refusal>) -> Option<Refusal> {
        if let Some(r) = &refusal {
            self.last_rule = Some(r.rule.clone());
        }
        refusal
    }

    /// Answer `reply`, counting a negative one; past the policy's limit the session ends with
    /// 421, which carries the refusal that reached the limit.
    fn answer(&mut self, reply: Reply, refusal: Option<Refusal>) -> Action {
        let refusal = self.noted(refusal);
        // "Too many recipients, send the rest later" is the protocol working, not a misbehaving
        // client: counting it would end sessions that deliver to many recipients (Postfix's
        // smtpd_recipient_overshoot_limit makes the same distinction).
        let overshoot = reply.enhanced().is_some_and(|e| e.to_string() == "4.5.3");
        if (reply.is_transient() || reply.is_permanent()) && !overshoot {
            self.errors = self.errors.saturating_add(1);
            if self.errors >= self.limits.errors {
                return Action::Close { reply: Reply::too_many_errors(&self.hostname), refusal };
            }
        }
        Action::Reply { reply, refusal }
    }

    /// Close with `reply`, refused by `refusal`'s rule.
    fn close_refusing(&mut self, reply: Reply, refusal: Refusal) -> Action {
        let refusal = self.noted(Some(refusal));
        Action::Close { reply, refusal }
    }

    /// Keep what `stage`'s `shadow` steps would have refused, once per rule and stage until the
    /// driver takes them ([`Session::take_shadowed`]): a stage evaluated again (after the
    /// directory's answer) does not report twice.
    pub(super) fn note_shadowed(&mut self, stage: Stage, shadowed: Vec<(String, mtac_ruleset::model::Reply)>) {
        for (rule, reply) in shadowed {
            if !self.shadowed.iter().any(|s| s.stage == stage && s.rule == rule) {
                self.shadowed.push(Shadowed { stage, rule, reply });
            }
        }
    }

    /// What `shadow` steps would have refused since the last call: the driver logs and counts
    /// them as "would refuse".
    pub fn take_shadowed(&mut self) -> Vec<Shadowed> {
        std::mem::take(&mut self.shadowed)
    }

    /// A refusal decided outside the policy program (a rate limit, the spool's room): counted
    /// like any other.
    pub fn refuse(&mut self, reply: Reply, rule: &str) -> Action {
        self.answer(reply, Some(Refusal::no_ban(rule)))
    }

    // ----- the protocol -----

    /// The greeting, after the connect stage of the policy.
    pub fn greet(&mut self, ruleset: &Ruleset, farm: &Farm) -> Action {
        let facts = self.facts(ruleset, None, None);
        let mut decision = eval::evaluate(ruleset, farm, Stage::Connect, &facts);
        let change = candidate::compare(self.candidate(), &farm.name, Stage::Connect, &facts, &decision);
        let record = self.journal_record(farm, Stage::Connect, &facts, &decision);
        self.note_candidate(change);
        self.keep_record(record);
        self.note_shadowed(Stage::Connect, std::mem::take(&mut decision.shadowed));
        let Some(policy) = &decision.reply else {
            return Action::reply(Reply::greeting(&self.hostname, &ruleset.policy().banner));
        };
        let greeting = policy_reply(&policy.as_greeting(&self.hostname));
        let closes = !policy.is_permanent();
        let Verdict::Refuse(r, refusal) = Verdict::of(decision) else {
            return Action::reply(Reply::greeting(&self.hostname, &ruleset.policy().banner));
        };
        let refusal = self.noted(refusal);
        if closes {
            return Action::Close { reply: greeting, refusal };
        }
        self.refused = Some(Box::new(r));
        Action::Reply { reply: greeting, refusal }
    }

    /// A line that did not parse.
    pub fn parse_error(&mut self, error: &ParseError) -> Action {
        self.answer(error.reply(), None)
    }

    /// A command line longer than the policy allows. Inside a SASL exchange the line was the
    /// client's answer: RFC 4954 §4 ends the exchange with `500 5.5.6`, so the next line is a
    /// command again (left as it was, the exchange would read the client's next command as a
    /// base64 answer).
    pub fn line_too_long(&mut self) -> Action {
        if self.auth.as_mut().and_then(|a| a.sasl.take()).is_some() {
            return self.answer(Reply::auth_line_too_long(), None);
        }
        self.answer(Reply::line_too_long(), None)
    }

    /// The EHLO capabilities this farm offers.
    fn capabilities(&self, farm: &Farm) -> EhloCapabilities {
        EhloCapabilities {
            max_size: self.limits.message_size,
            smtputf8: true,
            starttls: self.tls_offered && self.tls.is_none(),
            // RFC 4954 and common sense: never offer a password mechanism in clear text.
            auth_mechanisms: if self.tls.is_some() && self.authenticated().is_none() {
                farm.auth.as_ref().map(|a| a.mechanisms.clone()).unwrap_or_default()
            } else {
                Vec::new()
            },
        }
    }

    pub fn command(&mut self, command: Command, ruleset: &Ruleset, farm: &Farm) -> Action {
        // Commands that move no mail (and HELO/EHLO, which start DNS lookups) are limited per
        // session, like Postfix's smtpd_junk_command_limit: a client cannot keep a slot or make
        // the node look names up forever.
        if matches!(
            command,
            Command::Helo(_) | Command::Ehlo(_) | Command::Noop | Command::Rset | Command::Vrfy(_) | Command::Help
        ) {
            self.junk = self.junk.saturating_add(1);
            if self.junk > JUNK_COMMAND_LIMIT {
                let r = Reply::too_many_errors(&self.hostname);
                return self.close_refusing(r, Refusal::no_ban(rules::JUNK_COMMANDS));
            }
        }
        if let Some(refusal) = &self.refused {
            return match command {
                Command::Quit => Action::close(Reply::closing()),
                _ => {
                    let r = reply(503, 5, 7, 1, &refusal.lines().join(" "));
                    self.answer(r, None)
                }
            };
        }
        match command {
            Command::Helo(name) | Command::Ehlo(name) if name.is_empty() => {
                self.answer(reply(501, 5, 5, 4, "Syntax: EHLO hostname"), None)
            }
            Command::Helo(name) => self.helo_command(name, false, ruleset, farm),
            Command::Ehlo(name) => self.helo_command(name, true, ruleset, farm),
            Command::Mail(mail) => self.mail(mail, ruleset, farm),
            Command::Rcpt(rcpt) => self.rcpt(rcpt, ruleset, farm),
            Command::Data => self.data(),
            Command::Bdat { size, last } => self.bdat(size, last),
            Command::Rset => {
                self.txn = None;
                Action::reply(Reply::ok())
            }
            Command::Noop => Action::reply(Reply::ok()),
            Command::Quit => Action::close(Reply::closing()),
            Command::Help => Action::reply(Reply::help()),
            Command::Vrfy(_) => Action::reply(Reply::cannot_vrfy()),
            Command::Expn(_) => self.answer(Reply::expn_disabled(), None),
            Command::StartTls if self.tls.is_some() => self.answer(reply(503, 5, 5, 1, "TLS already active"), None),
            Command::StartTls if !self.tls_offered => {
                self.answer(reply(502, 5, 5, 1, "STARTTLS not available on this listener"), None)
            }
            Command::StartTls => Action::StartTls(reply(220, 2, 0, 0, "Ready to start TLS")),
            Command::Auth { mechanism, initial_response } => self.auth(&mechanism, initial_response, farm),
        }
    }

    fn helo_command(&mut self, name: String, esmtp: bool, ruleset: &Ruleset, farm: &Farm) -> Action {
        // A new HELO/EHLO resets the transaction (RFC 5321 4.1.4).
        self.txn = None;
        let previous = self.helo.replace(name);
        let facts = self.facts(ruleset, None, None);
        let decided = decide(ruleset, farm, Stage::Helo, &facts, self.candidate(), self.journaled());
        if let Verdict::Refuse(r, refusal) = self.settle(Stage::Helo, decided) {
            self.helo = previous;
            return self.answer(r, refusal);
        }
        self.esmtp = esmtp;
        if esmtp {
            Action::reply(Reply::ehlo(&self.hostname, &self.capabilities(farm)))
        } else {
            Action::reply(Reply::helo(&self.hostname))
        }
    }
}
