//! The mail transaction's commands: MAIL FROM opens it, each RCPT TO is decided by the policy
//! and then by whoever the policy defers to (the directory, the greylist store, the back end),
//! DATA hands it to the driver, and the message's answer ends it.
//!
//! **Invariant:** a recipient is only ever reported to the driver as acceptable after relay
//! control passed (the evaluator never skips it), and only the driver's back-end verdict turns
//! it into an accepted recipient ([`Session::recipient_result`]).

use super::action::{reply, Action, Refusal};
use super::facts::{decide, Verdict};
use super::Session;
use crate::smtp::{Body, ForwardPath, MailFrom, RcptTo, Reply, ReversePath};
use mtac_ruleset::eval::DirectoryAnswer;
use mtac_ruleset::model::{Farm, Stage};
use mtac_ruleset::replay::Outcome;
use mtac_ruleset::{rules, Ruleset};

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

/// The greylist store's answer on a recipient ([`Action::Greylist`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GreylistAnswer {
    /// The recipient goes on to the back end. `client`: the key that stood for the client in
    /// the triplet that passed, whose delivered messages count toward auto-whitelisting (`None`:
    /// passed without the store, which did not answer where the policy fails open).
    Pass { client: Option<String> },
    /// Refused with this reply: the policy's 451, or the store's failure mode.
    Refuse(Reply),
}

impl Session {
    /// `MAIL FROM`: TLS where the farm requires it, then sender ownership after AUTH, then the
    /// program's MAIL steps — all decided by the evaluator, as `mtac explain` shows.
    pub(super) fn mail(&mut self, mail: MailFrom, ruleset: &Ruleset, farm: &Farm) -> Action {
        if self.txn.is_some() {
            return self.answer(Reply::bad_sequence("nested MAIL command"), None);
        }
        if mail.size.is_some_and(|s| s > self.limits.message_size) {
            return self.answer(Reply::message_too_big(), None);
        }
        let sender = match &mail.from {
            ReversePath::Null => String::new(),
            ReversePath::Mailbox(m) => {
                if !m.is_ascii() && !mail.smtputf8 {
                    return self.answer(Reply::smtputf8_required(), None);
                }
                m.to_string()
            }
        };
        let facts = self.facts(ruleset, Some(&sender), None);
        let decided = decide(ruleset, farm, Stage::Mail, &facts, self.candidate(), self.journaled());
        if let Verdict::Refuse(r, refusal) = self.settle(Stage::Mail, decided) {
            return self.answer(r, refusal);
        }
        self.txn = Some(Box::new(Transaction {
            sender,
            size: mail.size,
            eight_bit: mail.body == Some(Body::EightBitMime),
            smtputf8: mail.smtputf8,
            recipients: Vec::new(),
        }));
        Action::reply(Reply::sender_ok())
    }

    /// `RCPT TO`: the session's limits, then the policy's decision.
    pub(super) fn rcpt(&mut self, rcpt: RcptTo, ruleset: &Ruleset, farm: &Farm) -> Action {
        if self.banned {
            let r = reply(550, 5, 7, 1, "Client host rejected: too many refusals, banned for a while");
            return self.answer(r, Some(Refusal::no_ban(rules::BAN)));
        }
        if self.talked_early {
            // postscreen's `postscreen_greet_action = enforce`: refused at RCPT, so the log
            // shows whom it wanted to reach.
            let r = reply(550, 5, 5, 1, "Protocol error: you talked before the greeting");
            return self.answer(r, Some(Refusal::no_ban(rules::PREGREET)));
        }
        let Some(txn) = &self.txn else {
            return self.answer(Reply::bad_sequence("need MAIL command"), None);
        };
        let smtputf8 = txn.smtputf8;
        if txn.recipients.len() >= usize::try_from(self.limits.recipients).unwrap_or(usize::MAX) {
            return self.answer(Reply::too_many_recipients(), None);
        }
        let address = match &rcpt.to {
            ForwardPath::Postmaster => "postmaster".to_owned(),
            ForwardPath::Mailbox(m) => {
                if !m.is_ascii() && !smtputf8 {
                    return self.answer(Reply::smtputf8_required(), None);
                }
                m.to_string()
            }
        };
        self.rcpt_decision(ruleset, farm, address, None)
    }

    /// `DATA`: the driver receives the message once a recipient was accepted.
    pub(super) fn data(&mut self) -> Action {
        match &self.txn {
            None => self.answer(Reply::bad_sequence("need MAIL command"), None),
            Some(txn) if txn.recipients.is_empty() => self.answer(Reply::no_valid_recipients(), None),
            Some(_) => Action::Data,
        }
    }

    /// `BDAT` (RFC 3030): like DATA, the driver receives the message once a recipient was
    /// accepted. A refused BDAT's octets are still the client's: the driver reads and drops
    /// them, so they are never taken for commands.
    pub(super) fn bdat(&mut self, size: u64, last: bool) -> Action {
        match self.data() {
            Action::Data => Action::Chunks { size, last },
            refused => refused,
        }
    }

    /// The policy's decision on a recipient, with what the session knows now and, once asked,
    /// the directory's answer on it.
    fn rcpt_decision(
        &mut self,
        ruleset: &Ruleset,
        farm: &Farm,
        address: String,
        directory: Option<DirectoryAnswer>,
    ) -> Action {
        let Some(sender) = self.txn.as_ref().map(|t| t.sender.as_str()) else {
            return self.answer(Reply::bad_sequence("need MAIL command"), None);
        };
        let mut facts = self.facts(ruleset, Some(sender), Some(&address));
        // The answer serves this RCPT only: a later RCPT of the same address asks again (the
        // directory's cache makes that cheap, and a 451 must not stick for the session).
        facts.directory = directory;
        let decided = decide(ruleset, farm, Stage::Rcpt, &facts, self.candidate(), self.journaled());
        match self.settle(Stage::Rcpt, decided) {
            Verdict::Refuse(r, refusal) => self.answer(r, refusal),
            Verdict::AskDirectory => Action::Directory { address },
            Verdict::AskGreylist => Action::Greylist { address },
            Verdict::Pass => Action::Recipient { address },
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
        let action = self.rcpt_decision(ruleset, farm, address, Some(answer));
        if let Action::Directory { address } = action {
            // The evaluator asked again although it has the answer: never loop, never accept.
            tracing::error!(recipient = %address, "the directory step asked twice; deferring");
            return self.answer(reply(451, 4, 3, 0, "Temporary local problem, please try again later"), None);
        }
        action
    }

    /// The state store's answer on a recipient that waited for greylisting: a pass goes on to
    /// the back end ([`Action::Recipient`]); a refusal counts as an error like any refusal.
    pub fn greylist_result(&mut self, address: String, answer: GreylistAnswer) -> Action {
        match answer {
            GreylistAnswer::Pass { client } => {
                self.candidate_greylist_answered(Outcome::Pass);
                if client.is_some() {
                    self.greylist_client = client;
                }
                Action::Recipient { address }
            }
            GreylistAnswer::Refuse(r) => {
                self.candidate_greylist_answered(super::candidate::refused(&r, rules::GREYLIST));
                self.answer(r, Some(Refusal::no_ban(rules::GREYLIST)))
            }
        }
    }

    /// The back end's verdict on a recipient the policy accepted (`Ok` = accepted). A refusal
    /// is the back end's (rule `backend`), whatever its reply.
    pub fn recipient_result(&mut self, address: String, verdict: Result<(), Reply>) -> Action {
        match verdict {
            Ok(()) => {
                if let Some(txn) = &mut self.txn {
                    txn.recipients.push(address);
                }
                Action::reply(Reply::recipient_ok())
            }
            Err(r) => self.answer(r, Some(Refusal::no_ban(rules::BACKEND))),
        }
    }

    /// A milter refused the sender the policy accepted (`conn::filters`): the transaction does
    /// not open, and the refusal counts as an error like any other.
    pub fn sender_filtered(&mut self, reply: Reply, rule: &str) -> Action {
        self.txn = None;
        self.refuse(reply, rule)
    }

    /// The message was answered with `reply` (the back end's verdict, or a refusal after DATA):
    /// the transaction is over. A refusal counts as an error like any other; its rule is the
    /// driver's to log (`report::message_decided`).
    pub fn message_answered(&mut self, reply: Reply) -> Action {
        self.txn = None;
        if reply.is_positive() {
            self.accepted = self.accepted.saturating_add(1);
            // Postfix's error limits count "errors without delivering mail": a client that
            // delivered starts again from zero, so a list's departed recipients spread over
            // several messages never add up to a 421.
            self.errors = 0;
            return Action::reply(reply);
        }
        self.answer(reply, None)
    }
}
