//! Two decisions on the same facts, compared: what `mtac diff` counts when it replays a journal
//! through an old and a new ruleset, and what a node with a shadow ruleset counts when the
//! candidate disagrees with the live one. One classification, so both say "newly refused" of the
//! same thing.
//!
//! An [`Outcome`] is a [`Decision`] reduced to what the client would notice: the stage passes,
//! waits for the directory or the greylist store, or is refused with a code, an enhanced code and
//! the rule that refused (the reply's text is left out: a reworded refusal is the same decision).

use crate::eval::Decision;
use serde::{Deserialize, Serialize};
use std::fmt;

/// What a stage's decision means to the client.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// The stage passes (the node answers its usual 250 or goes on).
    Pass,
    /// Every step so far passed; the directory is asked about the recipient next.
    AskDirectory,
    /// Every step passed but greylisting, which the state store answers next.
    AskGreylist,
    /// The policy refuses.
    Refused { code: u16, enhanced: String, rule: String },
}

impl Outcome {
    /// The outcome of `decision`, in the order the node reads it (`session::facts::Verdict`):
    /// a reply first, then the directory, then greylisting.
    pub fn of(decision: &Decision) -> Outcome {
        match &decision.reply {
            Some(reply) => Outcome::Refused {
                code: reply.code,
                enhanced: reply.status.clone(),
                rule: decision.rule.clone().unwrap_or_default(),
            },
            None if decision.directory_pending => Outcome::AskDirectory,
            None if decision.greylist_pending => Outcome::AskGreylist,
            None => Outcome::Pass,
        }
    }

    pub fn is_refused(&self) -> bool {
        matches!(self, Outcome::Refused { .. })
    }

    /// The refusing rule, if refused.
    pub fn rule(&self) -> Option<&str> {
        match self {
            Outcome::Refused { rule, .. } => Some(rule),
            _ => None,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Pass => f.write_str("pass"),
            Outcome::AskDirectory => f.write_str("ask directory"),
            Outcome::AskGreylist => f.write_str("ask greylist"),
            Outcome::Refused { code, enhanced, rule } if rule.is_empty() => write!(f, "{code} {enhanced}"),
            Outcome::Refused { code, enhanced, rule } => write!(f, "{code} {enhanced} ({rule})"),
        }
    }
}

/// How a new decision differs from an old one on the same facts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Change {
    Same,
    /// Not refused before, refused now: mail that got through would not.
    NewlyRefused,
    /// Refused before, not now.
    NewlyAccepted,
    /// Refused both times, with another code, enhanced code or rule.
    ReplyChanged,
    /// Neither refused, but the stage now waits for something else (e.g. greylisting asked
    /// where it passed): not a refusal yet, and not the same.
    PendingChanged,
}

impl Change {
    pub const ALL: [Change; 5] =
        [Change::Same, Change::NewlyRefused, Change::NewlyAccepted, Change::ReplyChanged, Change::PendingChanged];

    pub fn between(old: &Outcome, new: &Outcome) -> Change {
        match (old.is_refused(), new.is_refused()) {
            _ if old == new => Change::Same,
            (false, true) => Change::NewlyRefused,
            (true, false) => Change::NewlyAccepted,
            (true, true) => Change::ReplyChanged,
            (false, false) => Change::PendingChanged,
        }
    }

    /// The name in `mtac diff`'s output and JSON (and the shadow ruleset's metric label).
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Same => "same",
            Change::NewlyRefused => "newly-refused",
            Change::NewlyAccepted => "newly-accepted",
            Change::ReplyChanged => "reply-changed",
            Change::PendingChanged => "pending-changed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(code: u16, rule: &str) -> Outcome {
        Outcome::Refused { code, enhanced: format!("{}.7.1", code / 100), rule: rule.to_owned() }
    }

    #[test]
    fn every_pair_is_classified_by_refusal() {
        assert_eq!(Change::between(&Outcome::Pass, &Outcome::Pass), Change::Same);
        assert_eq!(Change::between(&Outcome::Pass, &refused(554, "access")), Change::NewlyRefused);
        assert_eq!(Change::between(&Outcome::AskGreylist, &refused(450, "x")), Change::NewlyRefused);
        assert_eq!(Change::between(&refused(554, "access"), &Outcome::AskDirectory), Change::NewlyAccepted);
        assert_eq!(Change::between(&refused(554, "access"), &refused(550, "access")), Change::ReplyChanged);
        assert_eq!(Change::between(&refused(554, "access"), &refused(554, "dnsbl")), Change::ReplyChanged);
        assert_eq!(Change::between(&Outcome::Pass, &Outcome::AskGreylist), Change::PendingChanged);
    }
}
