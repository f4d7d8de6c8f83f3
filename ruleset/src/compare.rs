//! Two decisions on the same facts, compared: what a candidate ruleset would change. The node's
//! shadow ruleset (`mtac run LIVE --shadow CANDIDATE`) compares each decision of the live
//! ruleset with the candidate's, and counts the [`Change`]s by farm, stage, rule and direction.
//!
//! A decision that waits for the directory is not an outcome: its stage is decided again with
//! the answer, and that decision is the one compared. A decision that waits for the greylist
//! store is one ([`Outcome::Greylist`]): the store is asked only for the live ruleset, so a
//! candidate that greylists where the live ruleset does not is a change of its own
//! ([`Change::NewlyGreylisted`]), whatever the store would have said.

use crate::eval::Decision;
use crate::model::Reply;

/// What a decision comes to, for comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The stage passes.
    Accept,
    /// Every step passed but greylisting, which the state store answers.
    Greylist,
    /// Refused with this reply by this rule.
    Refuse { reply: Reply, rule: String },
}

impl Outcome {
    /// `None`: the decision waits for the directory's answer (not an outcome yet).
    pub fn of(decision: &Decision) -> Option<Outcome> {
        match (&decision.reply, &decision.rule) {
            (Some(reply), rule) => {
                Some(Outcome::Refuse { reply: reply.clone(), rule: rule.clone().unwrap_or_default() })
            }
            (None, _) if decision.directory_pending => None,
            (None, _) if decision.greylist_pending => Some(Outcome::Greylist),
            (None, _) => Some(Outcome::Accept),
        }
    }

    fn refusal(&self) -> Option<(&Reply, &str)> {
        match self {
            Outcome::Refuse { reply, rule } => Some((reply, rule)),
            _ => None,
        }
    }
}

/// How the candidate's outcome differs from the live one's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Same,
    /// The candidate refuses what the live ruleset accepts (or greylists).
    NewlyRefused,
    /// The candidate accepts (or greylists) what the live ruleset refuses.
    NewlyAccepted,
    /// Both refuse, with another reply or rule.
    ReplyChanged,
    /// The candidate greylists what the live ruleset accepts.
    NewlyGreylisted,
    /// The candidate accepts what the live ruleset greylists (a difference only when the store
    /// defers: the node decides which after asking it).
    NoLongerGreylisted,
}

impl Change {
    pub fn between(live: &Outcome, candidate: &Outcome) -> Change {
        match (live.refusal(), candidate.refusal()) {
            (Some((a, rule_a)), Some((b, rule_b))) if a == b && rule_a == rule_b => Change::Same,
            (Some(_), Some(_)) => Change::ReplyChanged,
            (None, Some(_)) => Change::NewlyRefused,
            (Some(_), None) => Change::NewlyAccepted,
            (None, None) => match (live, candidate) {
                (Outcome::Accept, Outcome::Greylist) => Change::NewlyGreylisted,
                (Outcome::Greylist, Outcome::Accept) => Change::NoLongerGreylisted,
                _ => Change::Same,
            },
        }
    }

    /// The label of metrics and logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            Change::Same => "same",
            Change::NewlyRefused => "newly-refused",
            Change::NewlyAccepted => "newly-accepted",
            Change::ReplyChanged => "reply-changed",
            Change::NewlyGreylisted => "newly-greylisted",
            Change::NoLongerGreylisted => "no-longer-greylisted",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refuse(code: u16, rule: &str) -> Outcome {
        Outcome::Refuse { reply: Reply::new(code, "5.7.1", "no"), rule: rule.to_owned() }
    }

    #[test]
    fn each_direction_is_named_from_the_live_rulesets_side() {
        assert_eq!(Change::between(&Outcome::Accept, &refuse(554, "dnsbl")), Change::NewlyRefused);
        assert_eq!(Change::between(&Outcome::Greylist, &refuse(554, "dnsbl")), Change::NewlyRefused);
        assert_eq!(Change::between(&refuse(554, "dnsbl"), &Outcome::Accept), Change::NewlyAccepted);
        assert_eq!(Change::between(&refuse(554, "dnsbl"), &refuse(550, "dnsbl")), Change::ReplyChanged);
        assert_eq!(Change::between(&refuse(554, "dnsbl"), &refuse(554, "access")), Change::ReplyChanged);
        assert_eq!(Change::between(&refuse(554, "dnsbl"), &refuse(554, "dnsbl")), Change::Same);
        assert_eq!(Change::between(&Outcome::Accept, &Outcome::Greylist), Change::NewlyGreylisted);
        assert_eq!(Change::between(&Outcome::Greylist, &Outcome::Accept), Change::NoLongerGreylisted);
        assert_eq!(Change::between(&Outcome::Greylist, &Outcome::Greylist), Change::Same);
    }
}
