//! External filters' verdicts as facts: what a milter's or hook's answer means for the message
//! (`decide`), the one mapping the node (`runtime::milter::judge`), `mtac explain --milter
//! NAME=VERDICT[@STAGE]` and test files (`milter "NAME=VERDICT[@STAGE]"`) share. The node asks
//! its milters at MAIL, at each RCPT the policy accepted and after DATA (hooks after DATA
//! only); `explain` and tests are told their verdicts, in the spirit of `--spf`: at the end of
//! the message unless a stage (`@mail`, `@rcpt`) is given.

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

/// Where a filter's verdict is given: the stage whose command it answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FilterStage {
    /// MAIL FROM (a milter's answer refuses the sender).
    Mail,
    /// RCPT TO (refuses that recipient only).
    Rcpt,
    /// The end of the message (the default).
    Message,
}

/// A filter's verdict given as a fact: `NAME=VERDICT[@STAGE]`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GivenFilter {
    pub name: String,
    pub verdict: FilterVerdict,
    pub stage: FilterStage,
}

/// `NAME=VERDICT[@mail|@rcpt|@data]`, as `--milter` and test files write it. Before the message
/// only `continue`, `reject`, `tempfail`, `discard` (decided at its end, as libmilter means it)
/// and `unavailable` can be given: the others are answers to the message.
pub fn parse_given(text: &str) -> Option<GivenFilter> {
    let (name, rest) = text.split_once('=')?;
    let (verdict, stage) = match rest.split_once('@') {
        Some((verdict, stage)) => (verdict, stage.trim()),
        None => (rest, "data"),
    };
    let verdict = FilterVerdict::parse(verdict.trim())?;
    let stage = match stage {
        "mail" => FilterStage::Mail,
        "rcpt" => FilterStage::Rcpt,
        "data" | "end-of-message" => FilterStage::Message,
        _ => return None,
    };
    let early = matches!(
        verdict,
        FilterVerdict::Continue
            | FilterVerdict::Reject
            | FilterVerdict::Tempfail
            | FilterVerdict::Discard
            | FilterVerdict::Unavailable
    );
    if stage != FilterStage::Message && !early {
        return None;
    }
    Some(GivenFilter { name: name.trim().to_owned(), verdict, stage })
}

/// The milters' verdicts given at `stage` (MAIL or RCPT), then those of the hooks asked at
/// RCPT, in policy order: the trace lines, and
/// the refusal of that command. Only given verdicts are traced (a milter not given at this
/// stage is taken to continue: its verdict on the message is asked at the end). A discard is
/// kept for the end of the message.
pub fn simulate_stage(
    farm: &Farm,
    given: &[GivenFilter],
    stage: FilterStage,
) -> (Vec<TraceLine>, Option<(Reply, &'static str)>) {
    let mut trace = Vec::new();
    // Milters are asked at MAIL and RCPT, hooks with `ask-rcpt=#true` at RCPT: milters first.
    let milters = farm.filters.iter().filter(|f| f.kind == FilterKind::Milter);
    let hooks = farm.filters.iter().filter(|f| f.kind == FilterKind::Hook && f.ask_rcpt && stage == FilterStage::Rcpt);
    for filter in milters.chain(hooks) {
        let Some(g) = given.iter().find(|g| g.name == filter.name && g.stage == stage) else { continue };
        let rule = match filter.kind {
            FilterKind::Milter => rules::MILTER,
            FilterKind::Hook => rules::HOOK,
        };
        let line = |outcome| TraceLine { rule: format!("{rule} {}", filter.name), outcome };
        if g.verdict == FilterVerdict::Discard {
            trace.push(line(StepOutcome::Passed("discard: decided at the end of the message".to_owned())));
            continue;
        }
        match decide(filter, g.verdict) {
            FilterDecision::Refuse { reply, rule } => {
                trace.push(line(StepOutcome::Decided(reply.clone())));
                return (trace, Some((reply, rule)));
            }
            FilterDecision::Pass(why) => {
                trace.push(line(StepOutcome::Passed(format!("{}: {why}", g.verdict.as_str()))))
            }
            FilterDecision::Discard => {}
        }
    }
    (trace, None)
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
pub fn simulate(farm: &Farm, given: &[GivenFilter]) -> (Vec<TraceLine>, Option<(Reply, &'static str)>) {
    let mut trace = Vec::new();
    for filter in &farm.filters {
        let rule = match filter.kind {
            FilterKind::Milter => rules::MILTER,
            FilterKind::Hook => rules::HOOK,
        };
        let line = |outcome| TraceLine { rule: format!("{rule} {}", filter.name), outcome };
        // A discard given before the message is its verdict at the end (libmilter's meaning).
        let early_discard = given
            .iter()
            .find(|g| g.name == filter.name && g.stage != FilterStage::Message && g.verdict == FilterVerdict::Discard);
        let at_end = given.iter().find(|g| g.name == filter.name && g.stage == FilterStage::Message);
        let Some(verdict) = early_discard.or(at_end).map(|g| &g.verdict) else {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_verdicts_name_their_stage() {
        let given = |text| parse_given(text).map(|g| (g.name, g.verdict, g.stage));
        assert_eq!(given("m=reject"), Some(("m".into(), FilterVerdict::Reject, FilterStage::Message)));
        assert_eq!(given("m=reject@rcpt"), Some(("m".into(), FilterVerdict::Reject, FilterStage::Rcpt)));
        assert_eq!(given(" m = tempfail@mail"), Some(("m".into(), FilterVerdict::Tempfail, FilterStage::Mail)));
        assert_eq!(given("m=quarantine@data"), Some(("m".into(), FilterVerdict::Quarantine, FilterStage::Message)));
        assert_eq!(given("m=quarantine@rcpt"), None, "an answer to the message only");
        assert_eq!(given("m=unsupported@mail"), None);
        assert_eq!(given("m=reject@helo"), None);
    }
}
