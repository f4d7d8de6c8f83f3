//! The SMTP session state machine, sans I/O.
//!
//! A [`Session`] is fed parsed commands and answers with [`Action`]s: a reply to send, a reply
//! and a close, "ask the back end about this recipient", or "start DATA". It owns the protocol
//! rules (command order, limits, error counting) and asks the ruleset's evaluator
//! ([`mtac_ruleset::eval`]) for every policy decision, at the stage the policy placed it.
//! Sockets, timers, the spool and the back end live in [`crate::conn`]; this file can be driven
//! by a unit test line by line.
//!
//! **Invariant:** a recipient is only ever reported to the driver as acceptable after relay
//! control passed (the evaluator never skips it), and only the driver's back-end verdict turns
//! it into an accepted recipient ([`Session::recipient_result`]).

use crate::smtp::{Command, EhloCapabilities, EnhancedCode, ForwardPath, ParseError, Reply, ReversePath};
use mtac_ruleset::eval::{self, DirectoryAnswer, Facts, GivenDns};
use mtac_ruleset::model::{self, Farm, Stage};
use mtac_ruleset::rules;
use mtac_ruleset::Ruleset;
use std::net::SocketAddr;

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this reply and read the next command.
    Reply(Reply),
    /// Send this reply and close the connection.
    Close(Reply),
    /// The policy accepts this recipient: get the back end's verdict, then call
    /// [`Session::recipient_result`].
    Recipient { address: String },
    /// Every policy step passed but greylisting, which needs the state store: ask it, then call
    /// [`Session::greylist_result`].
    Greylist { address: String },
    /// The recipient is not in the compiled table and the farm has a directory: ask it, then
    /// call [`Session::directory_result`].
    Directory { address: String },
    /// Send this reply (220), discard any input the client pipelined after STARTTLS, run the
    /// TLS handshake, then call [`Session::tls_started`].
    StartTls(Reply),
    /// Check these credentials (LDAP bind or the compiled table), then call
    /// [`Session::auth_result`]. Never logged: the password is in it.
    Authenticate { user: String, password: String },
    /// Send 354 and receive the message.
    Data,
}

/// The envelope of the transaction in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// `""` for the null sender.
    pub sender: String,
    pub size: Option<u64>,
    pub eight_bit: bool,
    pub smtputf8: bool,
    /// Recipients the back end (or the maildir) accepted.
    pub recipients: Vec<String>,
}

/// Per-session protocol state.
#[derive(Debug)]
pub struct Session {
    pub id: String,
    pub peer: SocketAddr,
    hostname: String,
    limits: model::Limits,
    /// The connect stage refused this client: every command but QUIT is refused.
    refused: Option<Reply>,
    pub helo: Option<String>,
    esmtp: bool,
    pub txn: Option<Transaction>,
    errors: u32,
    /// Messages accepted in this session (for the closing log line).
    pub accepted: u32,
    /// The rule behind the last refusal, for logs.
    pub last_rule: Option<String>,
    /// The policy rule behind the refusal of the command just answered (taken by the driver for bans).
    refused_by: Option<String>,
    /// The rule (policy or internal) behind the refusal just answered (taken by the driver for
    /// logs and metrics).
    rule_now: Option<String>,
    /// The last decision passed with greylisting still to consult.
    greylist_pending: bool,
    /// The last decision stopped at the directory step: ask the directory, then decide again.
    directory_pending: bool,
    /// The farm offers STARTTLS (it has a certificate) and this connection is not in TLS yet.
    tls_offered: bool,
    /// The connection is encrypted ("TLS1.3 TLS13_AES_256_GCM_SHA384").
    pub tls: Option<String>,
    /// The SASL mechanisms this farm accepts (inside TLS only); empty: no AUTH.
    auth_mechanisms: Vec<String>,
    /// A SASL exchange in progress: the next line is a response, not a command.
    sasl: Option<Sasl>,
    /// The user this session authenticated as.
    pub authenticated: Option<String>,
    /// Failed AUTH attempts in this session.
    pub auth_failures: u32,
    max_auth_failures: u32,
    /// The greylist client key of this session, once a recipient passed greylisting (its
    /// delivered messages count toward auto-whitelisting).
    pub greylist_client: Option<String>,
    /// DNS answers gathered so far (filled by the driver before each stage that needs them).
    pub dns: GivenDns,
    /// The client is banned and was let in to be refused at RCPT (ban response "refuse-recipients").
    pub banned: bool,
    /// Commands that moved no mail so far.
    junk: u32,
}

/// A SASL exchange waiting for the client's next line.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sasl {
    PlainResponse,
    LoginUser,
    LoginPassword { user: String },
}

/// What the credential check said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthVerdict {
    Valid,
    Invalid,
    /// The directory could not answer: 454, never 535.
    Unavailable,
}

fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text.trim()).ok()
}

/// HELO, EHLO, NOOP, RSET, VRFY and HELP allowed per session (Postfix's default is 100).
pub const JUNK_COMMAND_LIMIT: u32 = 100;

/// A policy reply (from the ruleset) as an SMTP reply.
pub fn policy_reply(reply: &model::Reply) -> Reply {
    let mut parts = reply.status.split('.').map(|p| p.parse::<u16>().ok());
    let enhanced = match (parts.next().flatten(), parts.next().flatten(), parts.next().flatten()) {
        (Some(class), Some(subject), Some(detail)) => {
            u8::try_from(class).ok().and_then(|c| EnhancedCode::new(c, subject, detail))
        }
        _ => None,
    };
    Reply::new(reply.code, enhanced, &reply.text)
        .or_else(|_| Reply::new(reply.code, None, &reply.text))
        .unwrap_or_else(|_| Reply::local_error())
}

fn reply(code: u16, class: u8, subject: u16, detail: u16, text: &str) -> Reply {
    Reply::new(code, EnhancedCode::new(class, subject, detail), text).unwrap_or_else(|_| Reply::local_error())
}

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
            refused_by: None,
            rule_now: None,
            greylist_pending: false,
            directory_pending: false,
            greylist_client: None,
            tls_offered: farm.tls.is_some(),
            tls: None,
            auth_mechanisms: farm.auth.as_ref().map(|a| a.mechanisms.clone()).unwrap_or_default(),
            sasl: None,
            authenticated: None,
            auth_failures: 0,
            max_auth_failures: farm.auth.as_ref().map_or(5, |a| a.max_failures.max(1)),
            dns: GivenDns::default(),
            banned: false,
            junk: 0,
        }
    }

    /// Evaluate `stage` with what the session knows; remember the rule of a refusal for the log.
    fn decide(
        &mut self,
        ruleset: &Ruleset,
        farm: &Farm,
        stage: Stage,
        sender: Option<&str>,
        recipient: Option<&str>,
    ) -> Option<Reply> {
        let facts = Facts {
            client_ip: self.peer.ip(),
            helo: self.helo.as_deref(),
            sender,
            recipient,
            authenticated: self.authenticated.is_some(),
            user: self.authenticated.as_deref(),
            tls: self.tls.is_some(),
            hostname: &ruleset.policy().hostname,
            dns: &self.dns,
        };
        let decision = eval::evaluate(ruleset, farm, stage, &facts);
        self.greylist_pending = decision.greylist_pending;
        self.directory_pending = decision.directory_pending;
        let reply = decision.reply.as_ref().map(policy_reply);
        if let Some(r) = &reply {
            // Only a permanent refusal may ban: a 4xx from the same rule is our own trouble (the
            // directory or DNS did not answer), and banning for it would turn an outage of ours
            // into a ban of every sender.
            self.refused_by = if r.is_permanent() { decision.rule.clone() } else { None };
            if let Some(rule) = decision.rule {
                self.note_rule(rule);
            }
        }
        reply
    }

    /// The greeting, after the connect stage of the policy.
    pub fn greet(&mut self, ruleset: &Ruleset, farm: &Farm) -> Action {
        match self.decide(ruleset, farm, Stage::Connect, None, None) {
            None => Action::Reply(Reply::greeting(&self.hostname, &ruleset.policy().banner)),
            // A temporary refusal at connect closes at once: RFC 5321 4.3.2 allows only 220, 554
            // or 421 as a greeting, so a deferral becomes 421 with the policy's text.
            Some(r) if r.is_transient() => {
                Action::Close(reply(421, 4, 7, 0, &format!("{} {}", self.hostname, r.lines().join(" "))))
            }
            // RFC 5321 3.1: a 554 greeting, then 503 to everything until QUIT.
            Some(r) => {
                let greeting = reply(554, 5, 7, 1, &format!("{} {}", self.hostname, r.lines().join(" ")));
                self.refused = Some(r);
                Action::Reply(greeting)
            }
        }
    }

    /// Count negative replies; past the policy's limit the session ends with 421.
    fn answer(&mut self, reply: Reply) -> Action {
        // "Too many recipients, send the rest later" is the protocol working, not a misbehaving
        // client: counting it would end sessions that deliver to many recipients (Postfix's
        // smtpd_recipient_overshoot_limit makes the same distinction).
        let overshoot = reply.enhanced().is_some_and(|e| e.to_string() == "4.5.3");
        if (reply.is_transient() || reply.is_permanent()) && !overshoot {
            self.errors = self.errors.saturating_add(1);
            if self.errors >= self.limits.errors {
                return Action::Close(Reply::too_many_errors(&self.hostname));
            }
        }
        Action::Reply(reply)
    }

    /// A line that did not parse.
    pub fn parse_error(&mut self, error: &ParseError) -> Action {
        let r = error.reply();
        self.answer(r)
    }

    /// A command line longer than the policy allows. Inside a SASL exchange the line was the
    /// client's answer: RFC 4954 §4 ends the exchange with `500 5.5.6`, so the next line is a
    /// command again (left as it was, the exchange would read the client's next command as a
    /// base64 answer).
    pub fn line_too_long(&mut self) -> Action {
        if self.sasl.take().is_some() {
            return self.answer(Reply::auth_line_too_long());
        }
        self.answer(Reply::line_too_long())
    }

    /// The EHLO capabilities this farm offers.
    fn capabilities(&self) -> EhloCapabilities {
        EhloCapabilities {
            max_size: self.limits.message_size,
            smtputf8: true,
            starttls: self.tls_offered && self.tls.is_none(),
            // RFC 4954 and common sense: never offer a password mechanism in clear text.
            auth_mechanisms: if self.tls.is_some() && self.authenticated.is_none() {
                self.auth_mechanisms.clone()
            } else {
                Vec::new()
            },
        }
    }

    /// A SASL exchange is waiting for the client's next line.
    pub fn in_sasl(&self) -> bool {
        self.sasl.is_some()
    }

    /// The client's answer to a 334 challenge (a base64 line, or `*` to cancel).
    pub fn sasl_line(&mut self, line: &[u8]) -> Action {
        let Some(state) = self.sasl.take() else { return self.answer(Reply::bad_sequence("no AUTH in progress")) };
        let line = String::from_utf8_lossy(line).trim().to_owned();
        if line == "*" {
            return self.answer(reply(501, 5, 7, 0, "Authentication cancelled"));
        }
        let Some(decoded) = decode_base64(&line) else {
            return self.answer(reply(501, 5, 5, 2, "Invalid base64 data"));
        };
        match state {
            Sasl::PlainResponse => self.plain(&decoded),
            Sasl::LoginUser => self.login_user(decoded),
            Sasl::LoginPassword { user } => {
                Action::Authenticate { user, password: String::from_utf8_lossy(&decoded).into_owned() }
            }
        }
    }

    fn plain(&mut self, decoded: &[u8]) -> Action {
        // authzid NUL authcid NUL password (RFC 4616); a different authzid is refused.
        let mut parts = decoded.split(|b| *b == 0);
        let (Some(authzid), Some(user), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return self.answer(reply(501, 5, 5, 2, "Malformed PLAIN response"));
        };
        if !authzid.is_empty() && authzid != user {
            return self.auth_failed();
        }
        Action::Authenticate {
            user: String::from_utf8_lossy(user).into_owned(),
            password: String::from_utf8_lossy(password).into_owned(),
        }
    }

    fn login_user(&mut self, decoded: Vec<u8>) -> Action {
        self.sasl = Some(Sasl::LoginPassword { user: String::from_utf8_lossy(&decoded).into_owned() });
        // "Password:"
        Action::Reply(Reply::challenge("UGFzc3dvcmQ6"))
    }

    fn auth(&mut self, mechanism: &str, initial: Option<String>) -> Action {
        if self.auth_mechanisms.is_empty() {
            return self.answer(reply(503, 5, 5, 1, "Error: authentication not enabled"));
        }
        if self.tls.is_none() {
            return self.answer(reply(538, 5, 7, 11, "Encryption required for requested authentication mechanism"));
        }
        if self.authenticated.is_some() {
            return self.answer(reply(503, 5, 5, 1, "Already authenticated"));
        }
        if self.txn.is_some() {
            return self.answer(reply(503, 5, 5, 1, "AUTH not allowed during a mail transaction"));
        }
        if !self.auth_mechanisms.iter().any(|m| m.eq_ignore_ascii_case(mechanism)) {
            return self.answer(reply(504, 5, 5, 4, "Unrecognized authentication type"));
        }
        let initial = match initial.as_deref() {
            None => None,
            Some("=") => Some(Vec::new()),
            Some(text) => match decode_base64(text) {
                Some(bytes) => Some(bytes),
                None => return self.answer(reply(501, 5, 5, 2, "Invalid base64 data")),
            },
        };
        match (mechanism, initial) {
            ("PLAIN", Some(bytes)) => self.plain(&bytes),
            ("PLAIN", None) => {
                self.sasl = Some(Sasl::PlainResponse);
                Action::Reply(Reply::challenge(""))
            }
            ("LOGIN", Some(user)) => self.login_user(user),
            ("LOGIN", None) => {
                self.sasl = Some(Sasl::LoginUser);
                // "Username:"
                Action::Reply(Reply::challenge("VXNlcm5hbWU6"))
            }
            _ => self.answer(reply(504, 5, 5, 4, "Unrecognized authentication type")),
        }
    }

    /// The credential check's verdict.
    pub fn auth_result(&mut self, user: String, verdict: AuthVerdict) -> Action {
        match verdict {
            AuthVerdict::Valid => {
                self.authenticated = Some(user);
                Action::Reply(reply(235, 2, 7, 0, "Authentication successful"))
            }
            AuthVerdict::Invalid => self.auth_failed(),
            AuthVerdict::Unavailable => {
                self.note_rule(rules::AUTH_UNAVAILABLE.to_owned());
                self.answer(reply(454, 4, 7, 0, "Temporary authentication failure"))
            }
        }
    }

    /// AUTH refused before any password was checked: the client's network is banned from this
    /// farm, or has used up its `max-failures` (counting the checks under way in its other
    /// sessions). `421 4.7.0` and close, as Postfix does for a client over its limits: honest to a
    /// user who has the right password (try later, not "wrong password"), and a guesser's
    /// connection ends at once.
    pub fn auth_locked_out(&mut self) -> Action {
        self.note_rule(rules::AUTH.to_owned());
        let text = format!("{} Too many failed authentications from your address, try again later", self.hostname);
        Action::Close(reply(421, 4, 7, 0, &text))
    }

    fn auth_failed(&mut self) -> Action {
        self.auth_failures = self.auth_failures.saturating_add(1);
        self.note_rule(rules::AUTH.to_owned());
        if self.auth_failures >= self.max_auth_failures {
            return Action::Close(reply(421, 4, 7, 0, &format!("{} Too many failed authentications", self.hostname)));
        }
        self.answer(reply(535, 5, 7, 8, "Authentication credentials invalid"))
    }

    /// The TLS handshake succeeded: RFC 3207 4.2 — forget everything the client said before.
    pub fn tls_started(&mut self, description: String) {
        self.tls = Some(description);
        self.helo = None;
        self.esmtp = false;
        self.txn = None;
        self.sasl = None;
    }

    /// May the authenticated user send as `sender` (anyone may, before AUTH)? The evaluator
    /// decides ([`eval::may_send_as`]), as it does at MAIL FROM; the driver asks for `auth
    /// header-from`.
    pub fn owns(&self, sender: &str, ruleset: &Ruleset, farm: &Farm) -> bool {
        self.authenticated.as_deref().is_none_or(|user| eval::may_send_as(ruleset, farm, user, sender))
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
                self.note_rule(rules::JUNK_COMMANDS.to_owned());
                return Action::Close(Reply::too_many_errors(&self.hostname));
            }
        }
        if let Some(refusal) = &self.refused {
            return match command {
                Command::Quit => Action::Close(Reply::closing()),
                _ => {
                    let r = reply(503, 5, 7, 1, &refusal.lines().join(" "));
                    self.answer(r)
                }
            };
        }
        match command {
            Command::Helo(name) | Command::Ehlo(name) if name.is_empty() => {
                self.answer(reply(501, 5, 5, 4, "Syntax: EHLO hostname"))
            }
            Command::Helo(name) => self.helo(name, false, ruleset, farm),
            Command::Ehlo(name) => self.helo(name, true, ruleset, farm),
            Command::Mail(mail) => {
                if self.txn.is_some() {
                    return self.answer(Reply::bad_sequence("nested MAIL command"));
                }
                if mail.size.is_some_and(|s| s > self.limits.message_size) {
                    return self.answer(Reply::message_too_big());
                }
                let sender = match &mail.from {
                    ReversePath::Null => String::new(),
                    ReversePath::Mailbox(m) => {
                        if !m.is_ascii() && !mail.smtputf8 {
                            return self.answer(Reply::smtputf8_required());
                        }
                        m.to_string()
                    }
                };
                // TLS where the farm requires it, then sender ownership after AUTH, then the
                // program's MAIL steps: all decided by the evaluator, as `mtac explain` shows.
                if let Some(r) = self.decide(ruleset, farm, Stage::Mail, Some(&sender), None) {
                    return self.answer(r);
                }
                self.txn = Some(Transaction {
                    sender,
                    size: mail.size,
                    eight_bit: mail.body == Some(crate::smtp::Body::EightBitMime),
                    smtputf8: mail.smtputf8,
                    recipients: Vec::new(),
                });
                Action::Reply(Reply::sender_ok())
            }
            Command::Rcpt(rcpt) => {
                if self.banned {
                    self.note_rule(rules::BAN.to_owned());
                    let r = reply(550, 5, 7, 1, "Client host rejected: too many refusals, banned for a while");
                    return self.answer(r);
                }
                let Some(txn) = &self.txn else {
                    return self.answer(Reply::bad_sequence("need MAIL command"));
                };
                let smtputf8 = txn.smtputf8;
                let count = txn.recipients.len();
                let sender = txn.sender.clone();
                if count >= usize::try_from(self.limits.recipients).unwrap_or(usize::MAX) {
                    return self.answer(Reply::too_many_recipients());
                }
                let address = match &rcpt.to {
                    ForwardPath::Postmaster => "postmaster".to_owned(),
                    ForwardPath::Mailbox(m) => {
                        if !m.is_ascii() && !smtputf8 {
                            return self.answer(Reply::smtputf8_required());
                        }
                        m.to_string()
                    }
                };
                self.rcpt_decision(ruleset, farm, &sender, address)
            }
            Command::Data => match &self.txn {
                None => self.answer(Reply::bad_sequence("need MAIL command")),
                Some(txn) if txn.recipients.is_empty() => self.answer(Reply::no_valid_recipients()),
                Some(_) => Action::Data,
            },
            Command::Rset => {
                self.txn = None;
                Action::Reply(Reply::ok())
            }
            Command::Noop => Action::Reply(Reply::ok()),
            Command::Quit => Action::Close(Reply::closing()),
            Command::Help => Action::Reply(Reply::help()),
            Command::Vrfy(_) => Action::Reply(Reply::cannot_vrfy()),
            Command::Expn(_) => self.answer(Reply::expn_disabled()),
            Command::StartTls if self.tls.is_some() => self.answer(reply(503, 5, 5, 1, "TLS already active")),
            Command::StartTls if !self.tls_offered => {
                self.answer(reply(502, 5, 5, 1, "STARTTLS not available on this listener"))
            }
            Command::StartTls => Action::StartTls(reply(220, 2, 0, 0, "Ready to start TLS")),
            Command::Auth { mechanism, initial_response } => self.auth(&mechanism, initial_response),
        }
    }

    /// The policy's decision on a recipient, with what the session knows now.
    fn rcpt_decision(&mut self, ruleset: &Ruleset, farm: &Farm, sender: &str, address: String) -> Action {
        match self.decide(ruleset, farm, Stage::Rcpt, Some(sender), Some(&address)) {
            Some(r) => self.answer(r),
            None if std::mem::take(&mut self.directory_pending) => Action::Directory { address },
            None if std::mem::take(&mut self.greylist_pending) => Action::Greylist { address },
            None => Action::Recipient { address },
        }
    }

    /// The directory's answer on a recipient ([`Action::Directory`]): the recipient stage is
    /// decided again with it, so the steps after the directory (greylisting) run only for a
    /// recipient that exists.
    pub fn directory_result(
        &mut self,
        ruleset: &Ruleset,
        farm: &Farm,
        address: String,
        answer: DirectoryAnswer,
    ) -> Action {
        let Some(sender) = self.txn.as_ref().map(|t| t.sender.clone()) else {
            return self.answer(Reply::bad_sequence("need MAIL command"));
        };
        self.dns.directory = Some((address.clone(), answer));
        let action = self.rcpt_decision(ruleset, farm, &sender, address);
        // The answer served this RCPT only: a later RCPT of the same address asks again (the
        // client's caches make that cheap, and a 451 must not stick for the session).
        self.dns.directory = None;
        if let Action::Directory { address } = action {
            // The evaluator asked again although it has the answer: never loop, never accept.
            tracing::error!(recipient = %address, "the directory step asked twice; deferring");
            return self.answer(reply(451, 4, 3, 0, "Temporary local problem, please try again later"));
        }
        action
    }

    fn helo(&mut self, name: String, esmtp: bool, ruleset: &Ruleset, farm: &Farm) -> Action {
        // A new HELO/EHLO resets the transaction (RFC 5321 4.1.4).
        self.txn = None;
        let previous = self.helo.replace(name);
        if let Some(r) = self.decide(ruleset, farm, Stage::Helo, None, None) {
            self.helo = previous;
            return self.answer(r);
        }
        self.esmtp = esmtp;
        if esmtp {
            Action::Reply(Reply::ehlo(&self.hostname, &self.capabilities()))
        } else {
            Action::Reply(Reply::helo(&self.hostname))
        }
    }

    /// The back end's verdict on a recipient the policy accepted (`Ok` = accepted).
    pub fn recipient_result(&mut self, address: String, verdict: Result<(), Reply>) -> Action {
        match verdict {
            Ok(()) => {
                if let Some(txn) = &mut self.txn {
                    txn.recipients.push(address);
                }
                Action::Reply(Reply::recipient_ok())
            }
            Err(r) => self.answer(r),
        }
    }

    /// The state store's verdict on a recipient that waited for greylisting: `Ok(())` goes on to
    /// the back end ([`Action::Recipient`]); `Err(reply)` refuses it (451 from the policy, or the
    /// store's failure mode) and counts as an error like any refusal.
    pub fn greylist_result(&mut self, address: String, verdict: Result<(), Reply>) -> Action {
        match verdict {
            Ok(()) => Action::Recipient { address },
            Err(reply) => {
                self.note_rule(rules::GREYLIST.to_owned());
                self.answer(reply)
            }
        }
    }

    /// The message was answered (accepted or not): the transaction is over.
    pub fn end_transaction(&mut self, accepted: bool) {
        self.txn = None;
        if accepted {
            self.accepted = self.accepted.saturating_add(1);
        }
    }

    /// Count a negative final reply to DATA (relay refusal, size, bare line ends).
    pub fn data_refused(&mut self, reply: Reply) -> Action {
        self.answer(reply)
    }

    /// The policy rule that refused the command just answered, if one did.
    pub fn take_refusal_rule(&mut self) -> Option<String> {
        self.refused_by.take()
    }

    /// A refusal decided outside the policy program (a rate limit, a ban): counted like any other.
    pub fn refuse(&mut self, reply: Reply, rule: &str) -> Action {
        self.note_rule(rule.to_owned());
        self.answer(reply)
    }

    /// Remember the rule that refused the command being answered.
    pub fn note_rule(&mut self, rule: String) {
        self.last_rule = Some(rule.clone());
        self.rule_now = Some(rule);
    }

    /// The rule that refused the command just answered, if a rule did (for logs and metrics).
    pub fn take_rule(&mut self) -> Option<String> {
        self.rule_now.take()
    }

    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    pub fn esmtp(&self) -> bool {
        self.esmtp
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    //! Whole sessions driven line by line, with no socket: the state machine alone.
    use super::*;
    use crate::smtp::parse;
    use mtac_ruleset::model::*;
    use mtac_ruleset::tables::DomainTableBuilder;
    use mtac_ruleset::TableInput;

    fn ruleset(errors: u32) -> Ruleset {
        let relay = Step {
            rule: "relay".to_owned(),
            check: Check::RelayControl,
            reply: model::Reply::new(554, "5.7.1", "Relay access denied"),
        };
        let farm = Farm {
            name: "mx".to_owned(),
            kind: FarmKind::InboundMx,
            listeners: vec![Listener { address: "127.0.0.1:0".parse().unwrap(), implicit_tls: false }],
            limits: Limits {
                connections: 10,
                connections_per_ip: 10,
                transfers_per_ip: 5,
                message_size: 1000,
                recipients: 2,
                line_length: 512,
                errors,
                timeouts: Timeouts { command: 300, data: 600, relay: 60, pregreet: 0 },
            },
            trust_loopback: false,
            local_domains: Some(0),
            local_addresses: None,
            role_accounts: vec![],
            access: None,
            access_actions: vec![],
            relay_clients: None,
            program: Program { rcpt: vec![relay], ..Program::default() },
            dnsbl: None,
            bans: vec![],
            greylist: None,
            scanners: vec![],
            scan_max_size: 0,
            scan_oversize_refuse: false,
            verdict_headers: model::VerdictHeaders { names: vec![], authserv_ids: vec![], rename: false },
            mime: None,
            relay: model::Relay::Maildir("/nonexistent".to_owned()),
            tls: None,
            auth: None,
            directory: None,
            bare_line_ends: BarePolicy::Reject,
            ban_response: BanResponse::Close521,
            rate_limits: vec![],
            tarpit_ms: 0,
        };
        let policy = Policy {
            hostname: "mx.example.net".to_owned(),
            banner: "ESMTP".to_owned(),
            spool: "/tmp".to_owned(),
            spool_max_bytes: None,
            farms: vec![farm],
            tables: vec![TableInfo { kind: TableKind::Domains, name: "d".to_owned(), entries: 1, sources: vec![] }],
            dns: DnsSettings::default(),
            admin: None,
            admin_socket: None,
            state: Default::default(),
        };
        let mut domains = DomainTableBuilder::new();
        domains.insert("example.com", false, 0).unwrap();
        Ruleset::from_vec(mtac_ruleset::build(&policy, vec![TableInput::Domains(domains)]).unwrap()).unwrap()
    }

    fn feed(session: &mut Session, ruleset: &Ruleset, line: &str) -> Action {
        let farm = &ruleset.policy().farms[0];
        match parse(line.as_bytes()) {
            Ok(command) => session.command(command, ruleset, farm),
            Err(e) => session.parse_error(&e),
        }
    }

    fn code(action: &Action) -> u16 {
        match action {
            Action::Reply(r) | Action::Close(r) => r.code(),
            Action::Recipient { .. } => 1,
            Action::Greylist { .. } => 2,
            Action::Authenticate { .. } => 3,
            Action::Directory { .. } => 4,
            Action::StartTls(r) => r.code(),
            Action::Data => 354,
        }
    }

    #[test]
    fn a_transaction_goes_through_the_stages_in_order() {
        let rs = ruleset(10);
        let mut s = Session::new("T".into(), "192.0.2.1:1000".parse().unwrap(), &rs, &rs.policy().farms[0]);
        assert_eq!(code(&s.greet(&rs, &rs.policy().farms[0])), 220);
        assert_eq!(code(&feed(&mut s, &rs, "EHLO a.example.org")), 250);
        assert_eq!(code(&feed(&mut s, &rs, "RCPT TO:<b@example.com>")), 503);
        assert_eq!(code(&feed(&mut s, &rs, "MAIL FROM:<a@example.org> SIZE=5000")), 552);
        assert_eq!(code(&feed(&mut s, &rs, "MAIL FROM:<a@example.org>")), 250);
        assert_eq!(code(&feed(&mut s, &rs, "DATA")), 554, "no recipient yet");
        assert_eq!(feed(&mut s, &rs, "RCPT TO:<b@example.com>"), Action::Recipient { address: "b@example.com".into() });
        assert_eq!(code(&feed(&mut s, &rs, "RCPT TO:<c@elsewhere.example>")), 554);
        assert_eq!(s.last_rule.as_deref(), Some("relay"));
        assert_eq!(code(&s.recipient_result("b@example.com".into(), Ok(()))), 250);
        assert_eq!(feed(&mut s, &rs, "DATA"), Action::Data);
        s.end_transaction(true);
        assert_eq!(s.accepted, 1);
        assert_eq!(code(&feed(&mut s, &rs, "DATA")), 503, "the transaction ended");
        assert_eq!(code(&feed(&mut s, &rs, "QUIT")), 221);
    }

    #[test]
    fn the_recipient_limit_counts_accepted_recipients() {
        let rs = ruleset(10);
        let mut s = Session::new("T".into(), "192.0.2.1:1000".parse().unwrap(), &rs, &rs.policy().farms[0]);
        feed(&mut s, &rs, "EHLO a.example.org");
        feed(&mut s, &rs, "MAIL FROM:<>");
        for n in 0..2 {
            let address = format!("r{n}@example.com");
            assert_eq!(
                feed(&mut s, &rs, &format!("RCPT TO:<{address}>")),
                Action::Recipient { address: address.clone() }
            );
            s.recipient_result(address, Ok(()));
        }
        assert_eq!(code(&feed(&mut s, &rs, "RCPT TO:<r3@example.com>")), 452);
    }

    #[test]
    fn the_error_limit_closes_with_421() {
        let rs = ruleset(3);
        let mut s = Session::new("T".into(), "192.0.2.1:1000".parse().unwrap(), &rs, &rs.policy().farms[0]);
        assert_eq!(code(&feed(&mut s, &rs, "FROB")), 500);
        assert_eq!(code(&feed(&mut s, &rs, "DATA")), 503);
        let last = feed(&mut s, &rs, "VRFY x");
        assert_eq!(code(&last), 252, "VRFY's 252 is not an error");
        let last = feed(&mut s, &rs, "EXPN x");
        assert!(matches!(last, Action::Close(ref r) if r.code() == 421), "{last:?}");
    }

    #[test]
    fn junk_commands_are_limited_and_overshoot_is_not_an_error() {
        let rs = ruleset(3);
        let mut s = Session::new("T".into(), "192.0.2.1:1000".parse().unwrap(), &rs, &rs.policy().farms[0]);
        feed(&mut s, &rs, "EHLO a.example.org");
        feed(&mut s, &rs, "MAIL FROM:<>");
        for n in 0..2 {
            let address = format!("r{n}@example.com");
            feed(&mut s, &rs, &format!("RCPT TO:<{address}>"));
            s.recipient_result(address, Ok(()));
        }
        for _ in 0..10 {
            assert_eq!(code(&feed(&mut s, &rs, "RCPT TO:<more@example.com>")), 452, "452 never ends the session");
        }
        for _ in 0..(JUNK_COMMAND_LIMIT - 1) {
            assert_eq!(code(&feed(&mut s, &rs, "NOOP")), 250);
        }
        assert!(matches!(feed(&mut s, &rs, "NOOP"), Action::Close(ref r) if r.code() == 421));
    }
}
