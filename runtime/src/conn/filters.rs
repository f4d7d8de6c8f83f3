//! The filter phase: the farm's milters and HTTP hooks (`milter`, `hook`). Milters are asked
//! alongside the dialogue ([`crate::milter::live`]): at MAIL ([`mail_stage`]) and at each RCPT
//! the policy accepted ([`rcpt_stage`]), before our reply, then about the spooled message after
//! the scanners, before the relay ([`run_filters`]), where hooks are asked too. The first
//! refusal ends each stage; each filter's answer is logged and counted; what a filter's answer
//! means is `milter::judge`'s to say.

use crate::metrics::{FilterAnswer, FilterLabel, Metrics};
use crate::milter::client::{self, Edit, Envelope, MilterError, Verdict};
use crate::milter::edits::{EditError, ReplacementBody};
use crate::milter::live::{LiveMilters, StageAnswer};
use crate::milter::{self, Judgement};
use crate::session::Session;
use crate::shared::Shared;
use crate::smtp::Reply;
use crate::spool::SpoolFile;
use mtac_ruleset::filters::FilterVerdict;
use mtac_ruleset::model::{Farm, Filter, FilterKind};
use mtac_ruleset::rules;

/// What the filters decided.
pub(super) enum Filtered {
    /// Relay, with these header lines in front (the filters' own, newest first), the milters'
    /// modifications (in the order asked) and the body a milter replaced.
    Pass {
        headers: String,
        edits: Vec<Edit>,
        body: Option<SpoolFile>,
    },
    /// Answer 250 and drop the message: a discard the policy allows.
    Discard,
    Refuse(Reply, &'static str),
}

/// What a milter is told about the session and the transaction, owned so that the session can
/// be answered once the milters have spoken.
struct Told {
    client_name: Option<String>,
    sender: String,
    recipients: Vec<String>,
}

impl Told {
    fn of(session: &Session) -> Told {
        let client_name = match mtac_ruleset::eval::DnsFacts::reverse(session.dns()) {
            Some(mtac_ruleset::eval::ReverseDns::Confirmed(name)) => Some(name),
            _ => None,
        };
        let (sender, recipients) = match session.transaction() {
            Some(t) => (t.sender.clone(), t.recipients.clone()),
            None => (String::new(), Vec::new()),
        };
        Told { client_name, sender, recipients }
    }

    fn envelope<'a>(&'a self, session: &'a Session, hostname: &'a str) -> Envelope<'a> {
        Envelope {
            hostname,
            client: session.peer(),
            client_name: self.client_name.as_deref(),
            local: None,
            helo: session.helo().unwrap_or_default(),
            sender: &self.sender,
            recipients: &self.recipients,
            queue_id: session.id(),
            user: session.authenticated(),
            tls: session.tls(),
        }
    }
}

fn count(metrics: &Metrics, filter: &Filter, action: &'static str) {
    metrics.filter_answers.get_or_create(&FilterAnswer { filter: filter.name.clone(), action }).inc();
}

/// A filter that did not answer: counted, logged, and its `fail=` decides (`None`: fail open).
fn failed(metrics: &Metrics, session: &Session, filter: &Filter, error: &MilterError) -> Option<(Reply, &'static str)> {
    let timeout = matches!(error, MilterError::Timeout(_) | MilterError::ConnectTimeout(_));
    count(metrics, filter, if timeout { "timeout" } else { "error" });
    tracing::warn!(session = %session.id(), filter = filter.name.as_str(), error = %error, fail_open = filter.fail_open, "filter failed");
    match milter::decided(filter, FilterVerdict::Unavailable, String::new()) {
        Judgement::Refuse { reply, rule } => Some((reply, rule)),
        _ => None,
    }
}

/// A stage's answer (MAIL or RCPT): `Some` refuses the command.
fn stage_refusal(
    metrics: &Metrics,
    session: &Session,
    farm: &Farm,
    live: &mut LiveMilters,
    answer: StageAnswer,
    stage: &'static str,
) -> Option<(Reply, &'static str)> {
    for (index, error) in live.take_failed_open() {
        if let Some(filter) = farm.filters.get(index) {
            failed(metrics, session, filter, &error);
        }
    }
    let (index, verdict) = match answer {
        StageAnswer::Pass => return None,
        StageAnswer::Failed(index, error) => {
            let filter = farm.filters.get(index)?;
            return failed(metrics, session, filter, &error);
        }
        StageAnswer::Verdict(index, verdict) => (index, verdict),
    };
    let filter = farm.filters.get(index)?;
    count(metrics, filter, client::verdict_name(&verdict));
    let answer = client::Answer { verdict, edits: Vec::new() };
    let judgement = milter::judge(filter, &answer);
    tracing::info!(session = %session.id(), filter = filter.name.as_str(), verdict = client::verdict_name(&answer.verdict), stage, "filter refused");
    match judgement {
        Judgement::Refuse { reply, rule } => Some((reply, rule)),
        // A discard before DATA is kept for the end of the message (`live`); a pass is no refusal.
        Judgement::Pass { .. } | Judgement::Discard => None,
    }
}

/// MAIL FROM the policy accepted: the milters are told (opened first at the session's first
/// MAIL). `Some`: the refusal that answers MAIL instead.
pub(super) async fn mail_stage(
    shared: &Shared,
    session: &Session,
    farm: &Farm,
    hostname: &str,
    live: &mut LiveMilters,
) -> Option<(Reply, &'static str)> {
    if live.is_empty() {
        return None;
    }
    let told = Told::of(session);
    let answer = live.mail(&farm.filters, &told.envelope(session, hostname)).await;
    stage_refusal(&shared.metrics, session, farm, live, answer, "mail")
}

/// A recipient the policy accepted, before the back end is asked: `Some` refuses this
/// recipient only, with the milter's reply where it gave a valid one.
pub(super) async fn rcpt_stage(
    shared: &Shared,
    session: &Session,
    farm: &Farm,
    hostname: &str,
    live: &mut LiveMilters,
    address: &str,
) -> Option<(Reply, &'static str)> {
    if farm.filters.is_empty() {
        return None;
    }
    // Boxed: the conversations are most of this future's size, which every recipient's future
    // would otherwise carry (and copy), milters or not.
    Box::pin(ask_rcpt(shared, session, farm, hostname, live, address)).await
}

/// [`rcpt_stage`] for a farm with filters.
async fn ask_rcpt(
    shared: &Shared,
    session: &Session,
    farm: &Farm,
    hostname: &str,
    live: &mut LiveMilters,
    address: &str,
) -> Option<(Reply, &'static str)> {
    let told = Told::of(session);
    let envelope = told.envelope(session, hostname);
    let answer = live.rcpt(&farm.filters, &envelope, address).await;
    if let Some(refusal) = stage_refusal(&shared.metrics, session, farm, live, answer, "rcpt") {
        return Some(refusal);
    }
    // Then the hooks that asked to hear of recipients, in policy order.
    for (index, filter) in farm.filters.iter().enumerate().filter(|(_, f)| f.kind == FilterKind::Hook && f.ask_rcpt) {
        let answer = match crate::hook::ask_rcpt(filter, &envelope, address).await {
            Ok(Verdict::Pass) => StageAnswer::Pass,
            Ok(verdict) => StageAnswer::Verdict(index, verdict),
            Err(error) => StageAnswer::Failed(index, error),
        };
        if let Some(refusal) = stage_refusal(&shared.metrics, session, farm, live, answer, "rcpt") {
            return Some(refusal);
        }
    }
    None
}

/// The spooled message: each filter in policy order (milters on their open conversation,
/// hooks with one request each).
pub(super) async fn run_filters(
    shared: &Shared,
    session: &Session,
    farm: &Farm,
    spool: &SpoolFile,
    hostname: &str,
    live: &mut LiveMilters,
) -> Filtered {
    if farm.filters.is_empty() {
        return Filtered::Pass { headers: String::new(), edits: Vec::new(), body: None };
    }
    // Boxed: the conversations are most of this future's size, which every message's future
    // would otherwise carry (and copy), milters or not.
    Box::pin(filter_message(shared, session, farm, spool, hostname, live)).await
}

/// [`run_filters`] for a farm with filters.
async fn filter_message(
    shared: &Shared,
    session: &Session,
    farm: &Farm,
    spool: &SpoolFile,
    hostname: &str,
    live: &mut LiveMilters,
) -> Filtered {
    let mut headers = String::new();
    let mut edits = Vec::new();
    let mut body: Option<SpoolFile> = None;
    let Ok(reader) = spool.reader() else {
        return Filtered::Refuse(Reply::local_error(), rules::SPOOL);
    };
    let told = Told::of(session);
    let envelope = told.envelope(session, hostname);
    let metrics = &shared.metrics;
    for (index, filter) in farm.filters.iter().enumerate() {
        let started = std::time::Instant::now();
        // A milter's replacement body may be as large as the message may be, and takes the
        // spool's budget like the message did.
        let mut replacement = ReplacementBody::new(&shared.spool, session.id(), farm.limits.message_size);
        let answer = match filter.kind {
            FilterKind::Milter => match live.message(index, filter, &envelope, &reader, &mut replacement).await {
                Some(answer) => answer,
                None => continue,
            },
            FilterKind::Hook => crate::hook::ask(filter, &envelope, &reader).await,
        };
        metrics
            .filter_seconds
            .get_or_create(&FilterLabel { filter: filter.name.clone() })
            .observe(started.elapsed().as_secs_f64());
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => match failed(metrics, session, filter, &e) {
                Some((reply, rule)) => return Filtered::Refuse(reply, rule),
                None => {
                    live.give_up(index);
                    continue;
                }
            },
        };
        count(metrics, filter, client::verdict_name(&answer.verdict));
        for edit in &answer.edits {
            count(metrics, filter, edit_name(edit, filter));
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
            Judgement::Pass { headers: added, edits: asked } => {
                headers.insert_str(0, &added);
                if asked.contains(&Edit::ReplaceBody) {
                    match replacement.finish().await {
                        Ok(Some(file)) => body = Some(file),
                        Ok(None) => {}
                        Err(e) => return refused_edit(session, filter, &e),
                    }
                }
                edits.extend(asked.into_iter().filter(|e| *e != Edit::ReplaceBody));
            }
            Judgement::Discard => return Filtered::Discard,
            Judgement::Refuse { reply, rule } => return Filtered::Refuse(reply, rule),
        }
    }
    Filtered::Pass { headers, edits, body }
}

/// The modification a filter asked for, for metrics: those the policy refuses are
/// `refused-action` (counted where `judge` defers the message).
fn edit_name(edit: &Edit, filter: &Filter) -> &'static str {
    match edit {
        Edit::AddHeader { .. } => "add-header",
        Edit::InsertHeader { .. } => "insert-header",
        Edit::ChangeHeader { value, .. } if value.trim().is_empty() => "delete-header",
        Edit::ChangeHeader { .. } => "change-header",
        Edit::ReplaceBody => "replace-body",
        Edit::Quarantine(_) => "quarantine",
        Edit::AddRecipient(_) if filter.change_recipients => "add-recipient",
        Edit::DeleteRecipient(_) if filter.change_recipients => "delete-recipient",
        Edit::AddRecipient(_) | Edit::DeleteRecipient(_) | Edit::ChangeSender => "refused-action",
    }
}

/// A modification that could not be made: 452 when the spool is full, else 451 (never relayed
/// without it).
pub(super) fn refused_edit(session: &Session, filter: &Filter, error: &EditError) -> Filtered {
    tracing::warn!(session = %session.id(), filter = filter.name.as_str(), error = %error, "a milter's modification could not be made");
    if error.is_storage() {
        return Filtered::Refuse(super::data::insufficient_storage(), rules::SPOOL_BUDGET);
    }
    match milter::decided(filter, FilterVerdict::Unsupported, String::new()) {
        Judgement::Refuse { reply, rule } => Filtered::Refuse(reply, rule),
        _ => Filtered::Refuse(Reply::local_error(), rules::MILTER_ACTION),
    }
}
