//! External filters' verdicts as facts: what a milter's or hook's answer means for the message
//! (`decide`), the one mapping the node (`runtime::milter::judge`), `mtac explain --milter
//! NAME=VERDICT` and test files (`milter "NAME=VERDICT"`) share. The node asks the filters
//! after DATA; `explain` and tests are told their verdicts, in the spirit of `--spf`.

use crate::eval::{StepOutcome, TraceLine};
use crate::model::{Farm, Filter, FilterKind, Reply};
use crate::rules;

/// A filter's verdict on the message, at the end of it (the node's answer at any stage is its
/// answer at the end of DATA).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FilterVerdict {
    /// Continue or accept, no modification that refuses.
    Continue,
    Reject,
    Tempfail,
    Discard,
    Quarantine,
    /// Not reached, timed out or answered garbage: `fail=` decides.
    Unavailable,
    /// Asked for a change mtac does not make (headers changed or deleted, body, recipients,
    /// sender).
    Unsupported,
}

impl FilterVerdict {
    pub const NAMES: &'static str = "continue, reject, tempfail, discard, quarantine, unavailable or unsupported";

    pub fn parse(text: &str) -> Option<FilterVerdict> {
        Some(match text {
            "continue" | "accept" => FilterVerdict::Continue,
            "reject" => FilterVerdict::Reject,
            "tempfail" => FilterVerdict::Tempfail,
            "discard" => FilterVerdict::Discard,
            "quarantine" => FilterVerdict::Quarantine,
            "unavailable" => FilterVerdict::Unavailable,
            "unsupported" => FilterVerdict::Unsupported,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FilterVerdict::Continue => "continue",
            FilterVerdict::Reject => "reject",
            FilterVerdict::Tempfail => "tempfail",
            FilterVerdict::Discard => "discard",
            FilterVerdict::Quarantine => "quarantine",
            FilterVerdict::Unavailable => "unavailable",
            FilterVerdict::Unsupported => "unsupported",
        }
    }
}

/// `NAME=VERDICT`, as `--milter` and test files write it.
pub fn parse_given(text: &str) -> Option<(String, FilterVerdict)> {
    let (name, verdict) = text.split_once('=')?;
    Some((name.trim().to_owned(), FilterVerdict::parse(verdict.trim())?))
}

/// What the farm does with a filter's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterDecision {
    /// On to the next filter, then the relay (a quarantine with `quarantine="header"` and a
    /// failing filter with `fail="open"` among them: `why` says).
    Pass(&'static str),
    /// `250 2.0.0 Ok: discarded`, the message dropped (`discard="accept"`).
    Discard,
    Refuse {
        reply: Reply,
        rule: &'static str,
    },
}

/// The farm's decision on `filter`'s `verdict` (a milter's own reply, when it gave a valid one,
/// replaces the reject or tempfail reply here: the node knows it, `explain` cannot).
pub fn decide(filter: &Filter, verdict: FilterVerdict) -> FilterDecision {
    let name = filter.name.as_str();
    let (refused, unavailable) = match filter.kind {
        FilterKind::Milter => (rules::MILTER, rules::MILTER_UNAVAILABLE),
        FilterKind::Hook => (rules::HOOK, rules::HOOK_UNAVAILABLE),
    };
    let refuse =
        |code, status, text: String, rule| FilterDecision::Refuse { reply: Reply::new(code, status, &text), rule };
    match verdict {
        FilterVerdict::Continue => FilterDecision::Pass("continue"),
        FilterVerdict::Reject => refuse(550, "5.7.1", format!("Message rejected by {name}"), refused),
        FilterVerdict::Tempfail => {
            refuse(451, "4.7.1", format!("Message deferred by {name}, please try again later"), refused)
        }
        FilterVerdict::Discard if filter.discard_accepts => FilterDecision::Discard,
        // Never a silent 250 for a message nobody will read, unless the policy says so.
        FilterVerdict::Discard => refuse(550, "5.7.1", format!("Message rejected by {name} (discard)"), refused),
        FilterVerdict::Quarantine if filter.quarantine_header => {
            FilterDecision::Pass("quarantine: X-Quarantine header")
        }
        FilterVerdict::Quarantine => refuse(550, "5.7.1", format!("Message rejected by {name} (quarantine)"), refused),
        FilterVerdict::Unavailable if filter.fail_open => FilterDecision::Pass("unavailable, fail=\"open\""),
        FilterVerdict::Unavailable => refuse(
            451,
            "4.7.1",
            format!("Message could not be checked ({name} unavailable), please try again later"),
            unavailable,
        ),
        FilterVerdict::Unsupported => refuse(
            451,
            "4.7.1",
            format!("Message could not be changed as {name} asks, please try again later"),
            rules::MILTER_ACTION,
        ),
    }
}

/// The filters of `farm` in policy order with the verdicts given: the trace lines, and the
/// first refusal (or discard, a 250). A filter whose verdict is not given is `NotGiven`: the
/// node would ask it.
pub fn simulate(farm: &Farm, given: &[(String, FilterVerdict)]) -> (Vec<TraceLine>, Option<(Reply, &'static str)>) {
    let mut trace = Vec::new();
    for filter in &farm.filters {
        let rule = match filter.kind {
            FilterKind::Milter => rules::MILTER,
            FilterKind::Hook => rules::HOOK,
        };
        let line = |outcome| TraceLine { rule: format!("{rule} {}", filter.name), outcome };
        let Some((_, verdict)) = given.iter().find(|(name, _)| *name == filter.name) else {
            trace.push(line(StepOutcome::NotGiven("milter")));
            return (trace, None);
        };
        match decide(filter, *verdict) {
            FilterDecision::Pass(why) => trace.push(line(StepOutcome::Passed(format!("{}: {why}", verdict.as_str())))),
            FilterDecision::Discard => {
                let reply = Reply::new(250, "2.0.0", "Ok: discarded");
                trace.push(line(StepOutcome::Decided(reply.clone())));
                return (trace, Some((reply, rule)));
            }
            FilterDecision::Refuse { reply, rule } => {
                trace.push(line(StepOutcome::Decided(reply.clone())));
                return (trace, Some((reply, rule)));
            }
        }
    }
    (trace, None)
}
