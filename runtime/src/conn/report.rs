//! The log phase: the one place that writes the log line and the count of each decision — a
//! refusal with its rule, a recipient's verdict, a message's answer — and the session's closing
//! line. Everything an operator reads to answer "why was this refused?" comes from here.

use super::End;
use crate::metrics::{FarmLabel, MessageOutcome, RelayError, SessionEnd, Verdict};
use crate::session::{Action, Session};
use crate::shared::Shared;
use crate::smtp::Reply;
use mtac_ruleset::model::Farm;
use mtac_ruleset::replay::Change;
use mtac_ruleset::rules;

/// What the client asked, for the decision's log line and metrics.
pub(super) enum Asked {
    Connect,
    Helo(String),
    Mail(String),
    Rcpt(String),
    Data,
    Other,
}

impl Asked {
    pub(super) fn of(command: &crate::smtp::Command) -> Asked {
        use crate::smtp::{Command, ForwardPath, ReversePath};
        match command {
            Command::Helo(name) | Command::Ehlo(name) => Asked::Helo(name.clone()),
            Command::Mail(mail) => Asked::Mail(match &mail.from {
                ReversePath::Null => String::new(),
                ReversePath::Mailbox(m) => m.to_string(),
            }),
            Command::Rcpt(rcpt) => Asked::Rcpt(match &rcpt.to {
                ForwardPath::Postmaster => "postmaster".to_owned(),
                ForwardPath::Mailbox(m) => m.to_string(),
            }),
            Command::Data | Command::Bdat { .. } => Asked::Data,
            _ => Asked::Other,
        }
    }

    /// The stage name (docs/session.md) used as a metric label.
    fn stage(&self) -> &'static str {
        match self {
            Asked::Connect => "connect",
            Asked::Helo(_) => "helo",
            Asked::Mail(_) => "mail",
            Asked::Rcpt(_) => "rcpt",
            Asked::Data => "data",
            Asked::Other => "other",
        }
    }
}

/// Log and count one answer: every refusal (with the rule that gave it) and every recipient
/// verdict. One line per decision, so an operator can answer "why was this refused?" from the
/// log alone. Message bodies and AUTH payloads are never logged.
pub(super) fn decided(shared: &Shared, session: &Session, farm: &Farm, asked: &Asked, action: &Action) {
    let Some(reply) = action.sent_reply() else { return };
    let refused = reply.is_transient() || reply.is_permanent();
    let metrics = &shared.metrics;
    if let Asked::Rcpt(_) = asked {
        let verdict = match (refused, reply.is_permanent()) {
            (false, _) => "accepted",
            (true, true) => "rejected",
            (true, false) => "deferred",
        };
        metrics.recipients.get_or_create(&Verdict { farm: farm.name.clone(), verdict }).inc();
    }
    if !refused {
        if let Asked::Rcpt(recipient) = asked {
            let sender = session.transaction().map_or("", |t| t.sender.as_str());
            tracing::info!(
                session = %session.id(), client = %Client(session.peer().ip()), helo = session.helo().unwrap_or(""),
                sender, recipient = recipient.as_str(), stage = "rcpt", reply = %FirstLine(reply), "recipient accepted"
            );
        }
        return;
    }
    let rule = action.refusal().map_or(rules::PROTOCOL, |r| r.rule.as_str());
    metrics.refusal(&farm.name, asked.stage(), reply.is_permanent(), rule);
    let sender = match asked {
        Asked::Mail(sender) => sender.as_str(),
        _ => session.transaction().map_or("", |t| t.sender.as_str()),
    };
    let recipient = match asked {
        Asked::Rcpt(r) => r.as_str(),
        _ => "",
    };
    let helo = match asked {
        Asked::Helo(name) => name.as_str(),
        _ => session.helo().unwrap_or(""),
    };
    tracing::info!(
        session = %session.id(), client = %Client(session.peer().ip()), helo, sender, recipient, stage = asked.stage(),
        rule, reply = %FirstLine(reply), "refused"
    );
}

/// The final answer to a message, for the client and the log.
pub(super) struct Answer {
    pub(super) reply: Reply,
    /// Why: a [`crate::metrics::MessageOutcome`] reason.
    pub(super) reason: &'static str,
    /// The message's size as the sender sent it.
    pub(super) size: u64,
    /// The domain whose DKIM key signed it (`dkim-sign`).
    pub(super) signed: Option<String>,
    /// Its sender authentication verdicts (`spf=pass dkim=pass …`; empty when none were checked).
    pub(super) auth: String,
}

impl From<(Reply, &'static str, u64)> for Answer {
    fn from((reply, reason, size): (Reply, &'static str, u64)) -> Answer {
        Answer { reply, reason, size, signed: None, auth: String::new() }
    }
}

/// Log and count the final answer to a message.
pub(super) fn message_decided(shared: &Shared, session: &Session, farm: &Farm, answer: &Answer) {
    let Answer { reply, reason, size, signed, auth } = answer;
    let (reason, size) = (*reason, *size);
    let verdict = if reply.is_positive() {
        "accepted"
    } else if reply.is_permanent() {
        "rejected"
    } else {
        "deferred"
    };
    let metrics = &shared.metrics;
    metrics.messages.get_or_create(&MessageOutcome { farm: farm.name.clone(), verdict, reason }).inc();
    if reply.is_positive() {
        metrics.message_bytes.get_or_create(&FarmLabel { farm: farm.name.clone() }).inc_by(size);
    } else {
        metrics.refusal(&farm.name, "data", reply.is_permanent(), reason);
    }
    let (sender, recipients) = session.transaction().map_or(("", 0), |t| (t.sender.as_str(), t.recipients.len()));
    tracing::info!(
        session = %session.id(), client = %Client(session.peer().ip()), helo = session.helo().unwrap_or(""),
        sender, recipients, size, stage = "data", verdict, reason, signed = signed.as_deref().unwrap_or(""), auth = auth.as_str(),
        reply = %FirstLine(reply), "message"
    );
}

/// A reply's code, enhanced code and first line of text, for a log field (written where the
/// line is formatted, not into a string of its own first).
struct FirstLine<'a>(&'a Reply);

impl std::fmt::Display for FirstLine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = self.0.lines().first().map_or("", String::as_str);
        match self.0.enhanced() {
            Some(e) => write!(f, "{} {e} {text}", self.0.code()),
            None => write!(f, "{} {text}", self.0.code()),
        }
    }
}

/// The client's address for a log field: IPv4 written digit by digit into one string write
/// (three lines per relayed message name it; std's `Display` formats each octet through the
/// formatting machinery), IPv6 as std writes it.
struct Client(std::net::IpAddr);

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let std::net::IpAddr::V4(v4) = self.0 else {
            return self.0.fmt(f);
        };
        let mut text = [0u8; 15];
        let mut len = 0;
        {
            let mut push = |byte: u8| {
                if let Some(slot) = text.get_mut(len) {
                    *slot = byte;
                    len += 1;
                }
            };
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    push(b'.');
                }
                if octet >= 100 {
                    push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    push(b'0' + octet / 10 % 10);
                }
                push(b'0' + octet % 10);
            }
        }
        // Digits and dots only.
        f.write_str(text.get(..len).and_then(|t| std::str::from_utf8(t).ok()).unwrap_or("0.0.0.0"))
    }
}

pub(super) fn relay_error(farm: &Farm, phase: &'static str, reply: &Reply) -> RelayError {
    RelayError { farm: farm.name.clone(), phase, kind: if reply.is_permanent() { "rejected" } else { "deferred" } }
}

/// The session's one closing line, and its count by how it ended.
pub(super) fn session_closed(shared: &Shared, session: &Session, farm_name: &str, farm: &Farm, end: End) {
    shared.metrics.sessions.get_or_create(&SessionEnd { farm: farm.name.clone(), end: end.as_str() }).inc();
    tracing::info!(
        session = %session.id(),
        client = %Client(session.peer().ip()),
        farm = farm_name,
        helo = session.helo().unwrap_or(""),
        accepted = session.accepted(),
        rule = session.last_rule().unwrap_or(""),
        end = end.as_str(),
        "session closed"
    );
}

/// What `shadow` rules would have refused since the last command: one `would refuse` line each
/// (with the reply it would have given) and a count; the client saw none of it.
pub(super) fn shadowed(shared: &Shared, session: &mut Session, farm: &Farm) {
    for shadow in session.take_shadowed() {
        would_refuse(shared, session, farm, shadow.stage, &shadow.rule, &shadow.reply);
    }
}

/// How the shadow ruleset's decision on the last command differs from the live one: counted
/// (every comparison, and each difference by stage, rule and direction) and, when it differs,
/// one `shadow ruleset differs` line with both replies.
pub(super) fn ruleset_changes(shared: &Shared, session: &mut Session, farm: &Farm) {
    let Some(change) = session.take_ruleset_change() else { return };
    shared.metrics.candidate_decision(&farm.name, change.stage.as_str(), change.change.as_str(), change.rule());
    if change.change == Change::Same {
        return;
    }
    let recipient = change.recipient.as_deref().unwrap_or("");
    tracing::info!(
        session = %session.id(), client = %Client(session.peer().ip()), farm = farm.name.as_str(),
        helo = session.helo().unwrap_or(""), sender = session.transaction().map_or("", |t| t.sender.as_str()),
        recipient, stage = change.stage.as_str(), direction = change.change.as_str(), rule = change.rule(),
        live = %change.live, candidate = %change.candidate, "shadow ruleset differs"
    );
}

/// The session's journal records since the last command, stamped with the time and handed to
/// the node's journal (which never waits).
pub(super) fn journal(shared: &Shared, session: &mut Session) {
    let records = session.take_journal();
    if records.is_empty() {
        return;
    }
    let now = crate::state::since_epoch().as_secs();
    for mut record in records {
        record.time = now;
        shared.journal(record);
    }
}

/// One refusal a `shadow` rule would have given at `stage`.
pub(super) fn would_refuse(
    shared: &Shared,
    session: &Session,
    farm: &Farm,
    stage: mtac_ruleset::model::Stage,
    rule: &str,
    reply: &mtac_ruleset::model::Reply,
) {
    shared.metrics.shadow_refusal(&farm.name, stage.as_str(), reply.code >= 500, rule);
    tracing::info!(
        session = %session.id(), client = %Client(session.peer().ip()), farm = farm.name.as_str(),
        helo = session.helo().unwrap_or(""), sender = session.transaction().map_or("", |t| t.sender.as_str()),
        stage = stage.as_str(), rule, reply = %reply, "would refuse (shadow)"
    );
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn client_addresses_are_written_as_std_writes_them() {
        for ip in ["0.0.0.0", "255.255.255.255", "10.0.100.9", "192.0.2.7", "1.20.3.40", "::1", "2001:db8::25"] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(Client(ip).to_string(), ip.to_string());
        }
    }

    #[test]
    fn a_reply_is_logged_by_its_first_line() {
        let reply = Reply::multiline(550, crate::smtp::EnhancedCode::new(5, 7, 1), ["no", "really"]).unwrap();
        assert_eq!(FirstLine(&reply).to_string(), "550 5.7.1 no");
        assert_eq!(FirstLine(&Reply::start_data()).to_string(), "354 End data with <CR><LF>.<CR><LF>");
    }
}
