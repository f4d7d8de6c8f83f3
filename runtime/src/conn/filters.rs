//! The filter phase: the farm's milters and HTTP hooks (`milter`, `hook`), asked in policy
//! order about the spooled message after the scanners, before the relay. The first refusal
//! ends it; each filter's answer is logged and counted; what a filter's answer means is
//! `milter::judge`'s to say.

use crate::metrics::{FilterAnswer, FilterLabel};
use crate::milter::client::{self, Edit, Envelope, MilterError, Verdict};
use crate::milter::{self, Judgement};
use crate::session::Session;
use crate::shared::Shared;
use crate::smtp::Reply;
use crate::spool::SpoolFile;
use mtac_ruleset::model::{Farm, FilterKind};
use mtac_ruleset::rules;

/// What the filters decided.
pub(super) enum Filtered {
    /// Relay, with these header lines in front (the filters' own, newest first).
    Pass(String),
    /// Answer 250 and drop the message: a discard the policy allows.
    Discard,
    Refuse(Reply, &'static str),
}

pub(super) async fn run_filters(
    shared: &Shared,
    session: &Session,
    farm: &Farm,
    spool: &SpoolFile,
    hostname: &str,
) -> Filtered {
    if farm.filters.is_empty() {
        return Filtered::Pass(String::new());
    }
    let Ok(reader) = spool.reader() else {
        return Filtered::Refuse(Reply::local_error(), rules::SPOOL);
    };
    let client_name = match mtac_ruleset::eval::DnsFacts::reverse(session.dns()) {
        Some(mtac_ruleset::eval::ReverseDns::Confirmed(name)) => Some(name),
        _ => None,
    };
    let (sender, recipients) = match session.transaction() {
        Some(t) => (t.sender.clone(), t.recipients.clone()),
        None => (String::new(), Vec::new()),
    };
    let envelope = Envelope {
        hostname,
        client: session.peer(),
        client_name: client_name.as_deref(),
        local: None,
        helo: session.helo().unwrap_or_default(),
        sender: &sender,
        recipients: &recipients,
        queue_id: session.id(),
        user: session.authenticated(),
        tls: session.tls(),
    };
    let mut headers = String::new();
    for filter in &farm.filters {
        let started = std::time::Instant::now();
        let answer = match filter.kind {
            FilterKind::Milter => milter::ask(filter, &envelope, &reader).await,
            FilterKind::Hook => crate::hook::ask(filter, &envelope, &reader).await,
        };
        let metrics = &shared.metrics;
        metrics
            .filter_seconds
            .get_or_create(&FilterLabel { filter: filter.name.clone() })
            .observe(started.elapsed().as_secs_f64());
        let count = |action: &'static str| {
            metrics.filter_answers.get_or_create(&FilterAnswer { filter: filter.name.clone(), action }).inc();
        };
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => {
                count(if matches!(e, MilterError::Timeout(_) | MilterError::ConnectTimeout(_)) {
                    "timeout"
                } else {
                    "error"
                });
                tracing::warn!(session = %session.id(), filter = filter.name.as_str(), error = %e, fail_open = filter.fail_open, "filter failed");
                let unavailable = mtac_ruleset::filters::FilterVerdict::Unavailable;
                match milter::decided(filter, unavailable, String::new()) {
                    Judgement::Refuse { reply, rule } => return Filtered::Refuse(reply, rule),
                    _ => continue,
                }
            }
        };
        count(client::verdict_name(&answer.verdict));
        for edit in &answer.edits {
            count(match edit {
                Edit::AddHeader { .. } => "add-header",
                Edit::Quarantine(_) => "quarantine",
                _ => "refused-action",
            });
        }
        let stage = match &answer.verdict {
            Verdict::Pass => "end-of-message",
            Verdict::Reject { stage, .. } | Verdict::Tempfail { stage, .. } | Verdict::Discard { stage } => stage,
        };
        let judgement = milter::judge(filter, &answer);
        let decision = match &judgement {
            Judgement::Pass { .. } => "pass",
            Judgement::Discard => "discard",
            Judgement::Refuse { .. } => "refuse",
        };
        tracing::info!(
            session = %session.id(),
            filter = filter.name.as_str(),
            verdict = client::verdict_name(&answer.verdict),
            stage,
            edits = answer.edits.len(),
            decision,
            "filter answered"
        );
        match judgement {
            Judgement::Pass { headers: added } => headers.insert_str(0, &added),
            Judgement::Discard => return Filtered::Discard,
            Judgement::Refuse { reply, rule } => return Filtered::Refuse(reply, rule),
        }
    }
    Filtered::Pass(headers)
}
