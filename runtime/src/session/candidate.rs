//! The shadow ruleset (`mtac run LIVE --shadow CANDIDATE`): every decision the session asks of
//! the live ruleset is asked of the candidate too, with the same facts; the live one is
//! enforced, and how the candidate's differs is kept for the driver to log and count
//! ([`Session::take_ruleset_change`]).
//!
//! One command gives one comparison: a RCPT decided again after the directory's answer keeps
//! the last, and the greylist store's answer (asked for the live ruleset only) settles a
//! candidate that would not greylist.

use super::Session;
use mtac_ruleset::eval::{self, Decision, Facts};
use mtac_ruleset::model::Stage;
use mtac_ruleset::replay::{Change, Outcome};
use mtac_ruleset::Ruleset;
use std::sync::Arc;

/// A session's candidate ruleset and the comparison of its last decision.
#[derive(Debug)]
pub(super) struct Candidate {
    ruleset: Arc<Ruleset>,
    last: Option<RulesetChange>,
}

/// How the candidate's decision on one command compares with the live one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesetChange {
    pub stage: Stage,
    pub change: Change,
    pub live: Outcome,
    pub candidate: Outcome,
    /// The recipient decided on, at RCPT.
    pub recipient: Option<String>,
}

impl RulesetChange {
    /// The rule a change is counted under: the one that refuses (the candidate's when it
    /// newly refuses, the live one's when it no longer does), or greylisting.
    pub fn rule(&self) -> &str {
        match (self.candidate.rule(), self.live.rule()) {
            (Some(rule), _) | (None, Some(rule)) => rule,
            (None, None) if [&self.candidate, &self.live].contains(&&Outcome::AskGreylist) => {
                mtac_ruleset::rules::GREYLIST
            }
            (None, None) => "",
        }
    }
}

/// The candidate's decision on `stage` with the live decision's facts, compared with `live`.
/// `None`: no candidate, the candidate has no farm of this name, or the live decision is not an
/// outcome yet (it waits for the directory).
pub(super) fn compare(
    candidate: Option<&Candidate>,
    farm_name: &str,
    stage: Stage,
    facts: &Facts<'_>,
    live: &Decision,
) -> Option<RulesetChange> {
    let candidate = candidate?;
    let farm = candidate.ruleset.farm(farm_name)?;
    let live = match Outcome::of(live) {
        Outcome::AskDirectory => return None,
        outcome => outcome,
    };
    // A candidate that would ask the directory where the live ruleset did not: the node does
    // not ask for it, so its outcome is what it decided before the directory (it passed).
    let theirs = match Outcome::of(&eval::evaluate(&*candidate.ruleset, farm, stage, facts)) {
        Outcome::AskDirectory => Outcome::Pass,
        outcome => outcome,
    };
    let recipient = facts.recipient.map(str::to_owned);
    Some(RulesetChange { stage, change: Change::between(&live, &theirs), live, candidate: theirs, recipient })
}

/// A refusal the session gives outside the evaluator (the greylist store's), as an outcome.
pub(super) fn refused(reply: &crate::smtp::Reply, rule: &str) -> Outcome {
    Outcome::Refused {
        code: reply.code(),
        enhanced: reply.enhanced().map(|e| e.to_string()).unwrap_or_default(),
        rule: rule.to_owned(),
    }
}

impl Session {
    /// Compare every decision of this session with `ruleset`'s (the node's shadow ruleset, as
    /// it was when the session was accepted).
    pub fn with_candidate(&mut self, ruleset: Arc<Ruleset>) {
        self.candidate = Some(Box::new(Candidate { ruleset, last: None }));
    }

    pub(super) fn candidate(&self) -> Option<&Candidate> {
        self.candidate.as_deref()
    }

    /// The candidate's view of a decision the driver asked of the evaluator itself (the
    /// message's `data` stage), for [`Session::note_candidate`].
    pub fn compare_with_candidate(
        &self,
        farm_name: &str,
        stage: Stage,
        facts: &Facts<'_>,
        live: &Decision,
    ) -> Option<RulesetChange> {
        compare(self.candidate(), farm_name, stage, facts, live)
    }

    /// Keep the comparison of the command's latest decision.
    pub fn note_candidate(&mut self, change: Option<RulesetChange>) {
        if let (Some(candidate), Some(change)) = (self.candidate.as_deref_mut(), change) {
            candidate.last = Some(change);
        }
    }

    /// The store answered the live ruleset's greylisting: a candidate that would not greylist
    /// differs only if the store deferred.
    pub(super) fn candidate_greylist_answered(&mut self, live: Outcome) {
        let Some(last) = self.candidate.as_deref_mut().and_then(|c| c.last.as_mut()) else { return };
        if last.live != Outcome::AskGreylist {
            return;
        }
        if last.candidate == Outcome::AskGreylist {
            // Both greylist: the store's one answer serves both.
            last.candidate = live.clone();
        }
        last.live = live;
        last.change = Change::between(&last.live, &last.candidate);
    }

    /// The comparison of the last decision since the previous call, if a candidate is set.
    pub fn take_ruleset_change(&mut self) -> Option<RulesetChange> {
        self.candidate.as_deref_mut().and_then(|c| c.last.take())
    }
}
