//! What the session hands back for each input: an [`Action`] for the driver, and with every
//! reply that refuses, the [`Refusal`] behind it (its rule, and whether `ban after=` may count
//! it). The driver logs, counts and bans from the value it was given, never from state read
//! back later.
//!
//! **Invariant:** a refusal's rule travels with the action that carries the refusing reply,
//! including the `421` that closes a session at its error limit: the rule is the one of the
//! command that reached it.

use crate::smtp::{EnhancedCode, Reply};
use mtac_ruleset::model;

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this reply and read the next command.
    Reply { reply: Reply, refusal: Option<Refusal> },
    /// Send this reply and close the connection.
    Close { reply: Reply, refusal: Option<Refusal> },
    /// The policy accepts this recipient: get the back end's verdict, then call
    /// [`super::Session::recipient_result`].
    Recipient { address: String },
    /// Every policy step passed but greylisting, which needs the state store: ask it, then call
    /// [`super::Session::greylist_result`].
    Greylist { address: String },
    /// The recipient is not in the compiled table and the farm has a directory: ask it, then
    /// call [`super::Session::directory_result`].
    Directory { address: String },
    /// Send this reply (220), discard any input the client pipelined after STARTTLS, run the
    /// TLS handshake, then call [`super::Session::tls_started`].
    StartTls(Reply),
    /// Check these credentials (LDAP bind or the compiled table), then call
    /// [`super::Session::auth_result`]. Never logged: the password is in it.
    Authenticate { user: String, password: String },
    /// Send 354 and receive the message.
    Data,
    /// Receive the message in BDAT chunks (RFC 3030), this command's `size` octets first.
    Chunks { size: u64, last: bool },
}

/// Why a reply refuses: the rule (a step of the policy's program or one of the node's own,
/// `mtac_ruleset::rules`), for the decision's log line, its metric and `ban after=`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub rule: String,
    /// A permanent refusal by the policy's program: the only kind `ban after=` counts. A 4xx
    /// from the same rule is our own trouble (the directory or DNS did not answer), and banning
    /// for it would turn an outage of ours into a ban of every sender; the node's own rules
    /// (rates, the spool, the back end) are no step of the policy.
    pub may_ban: bool,
}

impl Refusal {
    /// A refusal `ban after=` does not count: by one of the node's own rules (rates, the
    /// spool, AUTH, the back end), or by the greylist store, which only says "later".
    pub fn no_ban(rule: &str) -> Refusal {
        Refusal { rule: rule.to_owned(), may_ban: false }
    }
}

impl Action {
    /// Send `reply`, which refuses nothing.
    pub fn reply(reply: Reply) -> Action {
        Action::Reply { reply, refusal: None }
    }

    /// Send `reply` and close, refusing nothing (QUIT's 221).
    pub fn close(reply: Reply) -> Action {
        Action::Close { reply, refusal: None }
    }

    /// Whether the driver must ask something outside the session (the back end, the
    /// greylist store, the directory, the password check) before there is an answer.
    pub fn needs_round_trip(&self) -> bool {
        matches!(
            self,
            Action::Recipient { .. } | Action::Greylist { .. } | Action::Directory { .. } | Action::Authenticate { .. }
        )
    }

    /// The reply this action sends, if it sends one.
    pub fn sent_reply(&self) -> Option<&Reply> {
        match self {
            Action::Reply { reply, .. } | Action::Close { reply, .. } | Action::StartTls(reply) => Some(reply),
            Action::Recipient { .. }
            | Action::Greylist { .. }
            | Action::Directory { .. }
            | Action::Authenticate { .. }
            | Action::Data
            | Action::Chunks { .. } => None,
        }
    }

    /// The refusal behind this action's reply, if it refuses.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            Action::Reply { refusal, .. } | Action::Close { refusal, .. } => refusal.as_ref(),
            _ => None,
        }
    }
}

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

/// A reply the session writes itself (texts and codes are constants: the fallback never shows).
pub(super) fn reply(code: u16, class: u8, subject: u16, detail: u16, text: &str) -> Reply {
    Reply::new(code, EnhancedCode::new(class, subject, detail), text).unwrap_or_else(|_| Reply::local_error())
}
