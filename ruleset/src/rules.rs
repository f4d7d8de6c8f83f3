//! Every rule name a refusal can carry: the one list the compiler, `mtac explain`, `mtac test`,
//! the node's log lines and metric labels, and docs/policy.md ("Rule names") all read.
//!
//! A rule name says *why* a command was refused. Two kinds exist, and the difference matters to
//! an operator:
//!
//! * [`SetBy::Policy`]: a step of a farm's decision program ([`crate::model::Step`]), decided by
//!   the evaluator. `mtac explain`, `mtac test` and the node give the same answer, and
//!   `ban after=` may name it.
//! * [`SetBy::Session`]: decided by the evaluator from the session's own facts (TLS, the user
//!   who logged in) before the program's steps: `mtac explain`, `mtac test` and the node give the
//!   same answer, but it is no step of the policy, so `ban after=` cannot name it.
//! * [`SetBy::Node`]: decided by the node while the session runs, outside the program: a limit,
//!   a content check after DATA, the back end's answer, a protocol error. Logged and counted
//!   like a policy rule, but no policy test can produce it and `ban after=` cannot name it.
//!
//! Code that gives a refusal a rule uses the constants below, never a string of its own, so a
//! name cannot drift between the log, the metrics and the docs (a compiler test checks the docs
//! against [`RULES`]).

/// Who decides a rule: see the module doc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetBy {
    Policy,
    Session,
    Node,
}

/// The class of reply a rule gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replies {
    /// 5xx only.
    Permanent,
    /// 4xx only.
    Temporary,
    /// 5xx, or 4xx when something the rule needs (DNS, a directory, a scanner) did not answer or
    /// when the policy's own reply says so.
    Either,
    /// Never refuses: the rule accepts (a role account).
    Accepts,
}

/// The phase of a session (docs/session.md) at which a rule answers. For policy rules, the
/// default stage: `access`, `dnsbl`, `client`, `helo` and `sender` rules move with `stage=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Greet,
    Auth,
    Mail,
    Rcpt,
    Data,
    /// Any command (protocol errors, too many commands that move no mail).
    Any,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Greet => "greet",
            Phase::Auth => "auth",
            Phase::Mail => "mail",
            Phase::Rcpt => "rcpt",
            Phase::Data => "data",
            Phase::Any => "any",
        }
    }
}

/// One rule name and what it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub name: &'static str,
    pub phase: Phase,
    pub replies: Replies,
    pub set_by: SetBy,
}

// Policy rules, in the order of "The order at RCPT TO" (docs/policy.md section 3).
pub const AUTH_REQUIRED: &str = "auth.required";
pub const RECIPIENT_FQDN: &str = "recipient.fqdn";
pub const RELAY: &str = "relay";
pub const RECIPIENT_ROLE_ACCOUNT: &str = "recipient.role-account";
pub const RECIPIENT_UNKNOWN: &str = "recipient.unknown";
pub const ACCESS: &str = "access";
pub const DNSBL: &str = "dnsbl";
pub const CLIENT_REVERSE_DNS: &str = "client.reverse-dns";
pub const HELO_REQUIRED: &str = "helo.required";
pub const HELO_SYNTAX: &str = "helo.syntax";
pub const HELO_FQDN: &str = "helo.fqdn";
pub const HELO_NOT_OURS: &str = "helo.not-ours";
pub const HELO_RESOLVABLE: &str = "helo.resolvable";
pub const SENDER_FQDN: &str = "sender.fqdn";
pub const SENDER_DENY: &str = "sender.deny";
pub const SENDER_RESOLVABLE: &str = "sender.resolvable";
pub const SPF: &str = "spf";
pub const DMARC: &str = "dmarc";
pub const RECIPIENT_DIRECTORY: &str = "recipient.directory";
pub const GREYLIST: &str = "greylist";

// Decided by the node.
pub const PREGREET: &str = "pregreet";
pub const PIPELINING: &str = "pipelining";
pub const RATE_LIMIT: &str = "rate-limit";
pub const SPOOL_BUDGET: &str = "spool-budget";
pub const TRANSFERS_PER_IP: &str = "transfers-per-ip";
pub const BAN: &str = "ban";
pub const AUTH: &str = "auth";
pub const AUTH_UNAVAILABLE: &str = "auth.unavailable";
pub const AUTH_SENDER: &str = "auth.sender";
pub const TLS_REQUIRED: &str = "tls.required";
pub const AUTH_HEADER_FROM: &str = "auth.header-from";
pub const BACKEND: &str = "backend";
pub const LOCAL_DELIVERY: &str = "local-delivery";
pub const DKIM_SIGN: &str = "dkim-sign";
pub const SPOOL: &str = "spool";
pub const BARE_LINE_END: &str = "bare-line-end";
pub const SIZE: &str = "size";
pub const SCAN_OVERSIZE: &str = "scan.oversize";
pub const SCAN_VIRUS: &str = "scan.virus";
pub const SCAN_SPAM: &str = "scan.spam";
pub const SCAN_UNAVAILABLE: &str = "scan.unavailable";
pub const MILTER: &str = "milter";
pub const MILTER_UNAVAILABLE: &str = "milter.unavailable";
pub const MILTER_ACTION: &str = "milter.action";
pub const HOOK: &str = "hook";
pub const HOOK_UNAVAILABLE: &str = "hook.unavailable";
pub const MIME_SYNTAX: &str = "mime.syntax";
pub const MIME_HEADER: &str = "mime.header";
pub const MIME_FORGED_SENDER: &str = "mime.forged-sender";
pub const MIME_EXTENSION: &str = "mime.extension";
pub const MIME_TYPE: &str = "mime.type";
pub const JUNK_COMMANDS: &str = "junk-commands";
pub const PROTOCOL: &str = "protocol";

const fn policy(name: &'static str, phase: Phase, replies: Replies) -> Rule {
    Rule { name, phase, replies, set_by: SetBy::Policy }
}

const fn session(name: &'static str, phase: Phase, replies: Replies) -> Rule {
    Rule { name, phase, replies, set_by: SetBy::Session }
}

const fn node(name: &'static str, phase: Phase, replies: Replies) -> Rule {
    Rule { name, phase, replies, set_by: SetBy::Node }
}

/// Every rule name, policy rules first.
pub const RULES: &[Rule] = &[
    policy(AUTH_REQUIRED, Phase::Rcpt, Replies::Permanent),
    policy(RECIPIENT_FQDN, Phase::Rcpt, Replies::Permanent),
    policy(RELAY, Phase::Rcpt, Replies::Permanent),
    policy(RECIPIENT_ROLE_ACCOUNT, Phase::Rcpt, Replies::Accepts),
    policy(RECIPIENT_UNKNOWN, Phase::Rcpt, Replies::Permanent),
    policy(ACCESS, Phase::Rcpt, Replies::Either),
    policy(DNSBL, Phase::Rcpt, Replies::Permanent),
    policy(CLIENT_REVERSE_DNS, Phase::Rcpt, Replies::Either),
    policy(HELO_REQUIRED, Phase::Mail, Replies::Permanent),
    policy(HELO_SYNTAX, Phase::Rcpt, Replies::Permanent),
    policy(HELO_FQDN, Phase::Rcpt, Replies::Permanent),
    policy(HELO_NOT_OURS, Phase::Rcpt, Replies::Permanent),
    policy(HELO_RESOLVABLE, Phase::Rcpt, Replies::Either),
    policy(SENDER_FQDN, Phase::Rcpt, Replies::Permanent),
    policy(SENDER_DENY, Phase::Rcpt, Replies::Permanent),
    policy(SENDER_RESOLVABLE, Phase::Rcpt, Replies::Either),
    policy(SPF, Phase::Mail, Replies::Either),
    policy(DMARC, Phase::Data, Replies::Either),
    policy(RECIPIENT_DIRECTORY, Phase::Rcpt, Replies::Either),
    policy(GREYLIST, Phase::Rcpt, Replies::Temporary),
    session(TLS_REQUIRED, Phase::Mail, Replies::Permanent),
    session(AUTH_SENDER, Phase::Mail, Replies::Permanent),
    node(PREGREET, Phase::Greet, Replies::Permanent),
    node(PIPELINING, Phase::Any, Replies::Permanent),
    node(RATE_LIMIT, Phase::Mail, Replies::Either),
    node(SPOOL_BUDGET, Phase::Mail, Replies::Temporary),
    node(TRANSFERS_PER_IP, Phase::Mail, Replies::Temporary),
    node(BAN, Phase::Rcpt, Replies::Permanent),
    node(AUTH, Phase::Auth, Replies::Either),
    node(AUTH_UNAVAILABLE, Phase::Auth, Replies::Temporary),
    node(AUTH_HEADER_FROM, Phase::Data, Replies::Permanent),
    node(BACKEND, Phase::Rcpt, Replies::Either),
    node(LOCAL_DELIVERY, Phase::Data, Replies::Temporary),
    node(DKIM_SIGN, Phase::Data, Replies::Temporary),
    node(SPOOL, Phase::Data, Replies::Temporary),
    node(BARE_LINE_END, Phase::Data, Replies::Permanent),
    node(SIZE, Phase::Data, Replies::Permanent),
    node(SCAN_OVERSIZE, Phase::Data, Replies::Permanent),
    node(SCAN_VIRUS, Phase::Data, Replies::Permanent),
    node(SCAN_SPAM, Phase::Data, Replies::Permanent),
    node(SCAN_UNAVAILABLE, Phase::Data, Replies::Temporary),
    node(MILTER, Phase::Data, Replies::Either),
    node(MILTER_UNAVAILABLE, Phase::Data, Replies::Temporary),
    node(MILTER_ACTION, Phase::Data, Replies::Either),
    node(HOOK, Phase::Data, Replies::Either),
    node(HOOK_UNAVAILABLE, Phase::Data, Replies::Temporary),
    node(MIME_SYNTAX, Phase::Data, Replies::Permanent),
    node(MIME_HEADER, Phase::Data, Replies::Permanent),
    node(MIME_FORGED_SENDER, Phase::Data, Replies::Permanent),
    node(MIME_EXTENSION, Phase::Data, Replies::Permanent),
    node(MIME_TYPE, Phase::Data, Replies::Permanent),
    node(JUNK_COMMANDS, Phase::Any, Replies::Temporary),
    node(PROTOCOL, Phase::Any, Replies::Either),
];

/// The rule of this name.
pub fn find(name: &str) -> Option<&'static Rule> {
    RULES.iter().find(|rule| rule.name == name)
}

/// The names of the rules the evaluator gives, and so `mtac test` and `explain` can answer with:
/// the program's and the session's.
pub fn evaluated_rule_names() -> Vec<&'static str> {
    RULES.iter().filter(|rule| rule.set_by != SetBy::Node).map(|rule| rule.name).collect()
}

/// The names of the rules a decision program can hold: what `mtac test` and `explain` can
/// answer with, and what `ban after=` may name.
pub fn policy_rule_names() -> Vec<&'static str> {
    RULES.iter().filter(|rule| rule.set_by == SetBy::Policy).map(|rule| rule.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_well_formed() {
        for (i, rule) in RULES.iter().enumerate() {
            assert!(RULES.iter().skip(i + 1).all(|other| other.name != rule.name), "{} is listed twice", rule.name);
            // Metric label values and log fields: lower case, no spaces.
            assert!(
                rule.name.bytes().all(|b| b.is_ascii_lowercase() || b == b'.' || b == b'-'),
                "{} is not a label value",
                rule.name
            );
        }
        assert_eq!(find(GREYLIST).map(|r| r.set_by), Some(SetBy::Policy));
        assert_eq!(find(PREGREET).map(|r| r.set_by), Some(SetBy::Node));
        assert!(find("helo-fqdn").is_none());
    }
}
