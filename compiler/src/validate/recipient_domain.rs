//! `recipient-domain` blocks: what they may change, and the contradictions `mtac check` reports
//! (docs/policy.md `recipient-domain`). A block changes how the RCPT stage decides for some
//! recipients, so everything it names must be decided there, by this farm, and be an anti-spam
//! check: relay control, recipient validation and access lists are the farm's, never a domain's.

use super::Capped;
use crate::diag::{did_you_mean, Diag, Reporter};
use crate::lower::{DomainEntry, DraftFarm};
use mtac_ruleset::model::Stage;
use std::collections::HashMap;

pub(super) fn recipient_domains(reporter: &mut Reporter, farm: &DraftFarm) {
    if farm.recipient_domains.is_empty() {
        return;
    }
    let program = crate::emit::program(farm, "", None, None);
    let at_rcpt: Vec<&str> = program.rcpt.iter().filter(|s| s.check.is_antispam()).map(|s| s.rule.as_str()).collect();
    let elsewhere: Vec<(Stage, &str, bool)> = Stage::ALL
        .into_iter()
        .flat_map(|stage| program.stage(stage).iter().map(move |s| (stage, s.rule.as_str(), s.check.is_antispam())))
        .collect();
    let mut seen: HashMap<(&str, bool), ()> = HashMap::new();
    let mut not_local = Capped::default();
    for block in &farm.recipient_domains {
        for entry in &block.domains {
            if seen.insert((entry.domain.as_str(), entry.subdomains), ()).is_some() {
                reporter.report(
                    Diag::error(
                        "mtac::recipient-domain::duplicate",
                        format!("`{}` is in two recipient-domain blocks of farm `{}`", entry.domain, farm.name),
                    )
                    .help("one block decides for a domain: merge the two"),
                    entry.origin,
                    "named again here",
                );
            }
            if !is_local(&farm.local_domains, entry) && not_local.lists_next() {
                reporter.report(
                    Diag::error(
                        "mtac::recipient-domain::not-local",
                        format!("farm `{}` does not receive mail for `{}`", farm.name, entry.domain),
                    )
                    .help("a recipient-domain block applies to recipients of the farm's local-domains only"),
                    entry.origin,
                    "not a local domain",
                );
            }
        }
        super::summarise(reporter, not_local.more, "domains that are not local");
        let mut overrides = 0;
        for (rule, origin) in &block.skip {
            overrides += 1;
            if at_rcpt.contains(&rule.as_str()) {
                continue;
            }
            let (code, message, help) = match elsewhere.iter().find(|(_, name, _)| name == rule) {
                Some((_, _, false)) => (
                    "mtac::recipient-domain::never-skipped",
                    format!("`{rule}` is never skipped for a recipient domain"),
                    "relay control, recipient validation and access lists hold for every recipient".to_owned(),
                ),
                Some((stage, _, true)) => (
                    "mtac::recipient-domain::not-at-rcpt",
                    format!(
                        "`{rule}` is decided at {} in farm `{}`, before any recipient is known",
                        stage.as_str(),
                        farm.name
                    ),
                    format!(
                        "decide it at RCPT (the default: remove its `stage=\"{}\"`) to skip it per recipient domain",
                        stage.as_str()
                    ),
                ),
                None => {
                    let help = match did_you_mean(rule, &at_rcpt) {
                        Some(g) => format!("did you mean `{g}`?"),
                        None if at_rcpt.is_empty() => "this farm has no anti-spam check at RCPT".to_owned(),
                        None => format!("anti-spam rules this farm decides at RCPT: {}", at_rcpt.join(", ")),
                    };
                    (
                        "mtac::recipient-domain::unknown-rule",
                        format!("no rule `{rule}` at RCPT in farm `{}`", farm.name),
                        help,
                    )
                }
            };
            reporter.report(Diag::error(code, message).help(help), *origin, "cannot be skipped");
        }
        if let Some((threshold, origin)) = block.dnsbl_threshold {
            overrides += 1;
            let skipped = block.skip.iter().any(|(rule, _)| rule == mtac_ruleset::rules::DNSBL);
            let problem = match &farm.dnsbl {
                None => Some((
                    "mtac::recipient-domain::no-dnsbl",
                    format!("farm `{}` has no dnsbl", farm.name),
                    "add a farm-level `dnsbl { zone … }` first".to_owned(),
                )),
                Some(d) if d.stage.is_some_and(|s| s != Stage::Rcpt) => Some((
                    "mtac::recipient-domain::not-at-rcpt",
                    format!("`dnsbl` is decided before any recipient is known in farm `{}`", farm.name),
                    "decide it at RCPT (the default) to change its threshold per recipient domain".to_owned(),
                )),
                Some(_) if skipped => Some((
                    "mtac::recipient-domain::contradiction",
                    "this block both skips `dnsbl` and sets its threshold".to_owned(),
                    "keep one of the two".to_owned(),
                )),
                Some(d) if d.threshold == threshold => {
                    reporter.report(
                        Diag::warning(
                            "mtac::recipient-domain::same",
                            format!("the farm's dnsbl threshold is already {threshold}"),
                        )
                        .help("this line changes nothing: remove it"),
                        origin,
                        "the farm's own threshold",
                    );
                    None
                }
                Some(_) => None,
            };
            if let Some((code, message, help)) = problem {
                reporter.report(Diag::error(code, message).help(help), origin, "cannot apply");
            }
        }
        if overrides == 0 {
            reporter.report(
                Diag::warning("mtac::recipient-domain::empty", "this recipient-domain block changes nothing")
                    .help("write `skip \"RULE\"…` or `dnsbl threshold=N` inside it"),
                block.origin,
                "no override",
            );
        }
    }
}

/// Whether the farm receives mail for `entry` (its subdomains too, if the entry covers them).
fn is_local(local: &[DomainEntry], entry: &DomainEntry) -> bool {
    local.iter().any(|l| {
        let under = entry.domain.strip_suffix(l.domain.as_str()).is_some_and(|rest| rest.ends_with('.'));
        (l.domain == entry.domain && (l.subdomains || !entry.subdomains)) || (l.subdomains && under)
    })
}
