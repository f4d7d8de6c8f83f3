//! The verify phase, after DATA and before the scan phase: the message's DKIM signatures, ARC
//! chain and DMARC verdict (`crate::sender_auth`), the `data` stage's decision on them by the
//! evaluator (DMARC enforcement), and the `Authentication-Results` field with every verdict —
//! SPF's from MAIL FROM included — relayed in front of the spooled message.

use super::content::SpooledMessage;
use super::Ctx;
use crate::sender_auth::{summary, SpfCheck, Verifier};
use crate::session::{policy_reply, Session};
use crate::shared::Shared;
use crate::smtp::{Reply, VerdictFilter};
use crate::spool::SpoolFile;
use futures_util::FutureExt;
use mtac_ruleset::eval;
use mtac_ruleset::model::Stage;
use mtac_ruleset::rules;
use mtac_ruleset::sender_auth::DmarcResult;

/// What the verify phase hands on: the header field to relay (empty when the farm verifies
/// nothing) and the verdicts for the `message` log line.
#[derive(Debug, Default)]
pub(super) struct Checked {
    pub(super) header: String,
    pub(super) summary: String,
}

/// The message's author as the node read it (its verdict filter), to check against what the
/// verifier read: mail-auth skips what it cannot parse (`From : x@y`, a second From, several
/// domains) and calls that DMARC `none`, which would let a `p=reject` domain's forgery through.
#[derive(Debug)]
pub(super) struct Author {
    /// How many From fields the header section had.
    pub(super) fields: u32,
    /// Whether all of their text was kept (see `VerdictFilter::from_complete`).
    pub(super) complete: bool,
    /// The distinct domains of the addresses in them.
    pub(super) domains: Vec<String>,
}

impl Author {
    /// One From field, read whole, naming one domain, which the verifier found too.
    fn is_one(&self, verifier_domain: &str) -> bool {
        self.fields == 1
            && self.complete
            && matches!(self.domains.as_slice(), [one] if one.eq_ignore_ascii_case(verifier_domain))
    }
}

/// Messages up to this size are verified on the session thread (see [`light`]).
const IN_PLACE_BYTES: usize = 64 * 1024;
/// At most this many signature fields (DKIM-Signature, ARC-Seal, ARC-Message-Signature), each
/// a DNS lookup and a public-key check, for a message to be verified on the session thread.
const IN_PLACE_SIGNATURES: u32 = 3;

/// Whether verifying a message of `size` bytes with `signatures` signature fields is light
/// enough to run on the session thread, holding its other sessions for at most a few hundred
/// microseconds.
fn light(size: usize, signatures: u32) -> bool {
    size <= IN_PLACE_BYTES && signatures <= IN_PLACE_SIGNATURES
}

/// Verify the spooled message and decide on it. `Err` carries the refusal, its rule and the
/// verdicts (for the log line).
pub(super) async fn sender_auth(
    shared: &Shared,
    session: &mut Session,
    ctx: &Ctx<'_>,
    spool: &SpoolFile,
    message: SpooledMessage,
    spf: Option<&SpfCheck>,
    verdicts: &VerdictFilter<'_>,
) -> Result<Checked, (Reply, &'static str, String)> {
    let auth = &ctx.farm.sender_auth;
    // An authenticated session is the farm's own user: nothing of theirs to verify (as SPF at
    // MAIL FROM, which did not run either).
    let Some(dns) = shared.dns().filter(|_| auth.any() && session.authenticated().is_none()) else {
        return Ok(Checked::default());
    };
    // Boxed: verifying is most of this future's size, which every message's future would
    // otherwise carry (and copy), whether the farm verifies senders or not.
    Box::pin(verify(shared, session, ctx, spool, message, spf, verdicts, dns)).await
}

/// [`sender_auth`] for a message there is something to verify of.
#[allow(clippy::too_many_arguments)]
async fn verify(
    shared: &Shared,
    session: &mut Session,
    ctx: &Ctx<'_>,
    spool: &SpoolFile,
    message: SpooledMessage,
    spf: Option<&SpfCheck>,
    verdicts: &VerdictFilter<'_>,
    dns: crate::dns::Dns,
) -> Result<Checked, (Reply, &'static str, String)> {
    let (farm, ruleset, hostname) = (ctx.farm, &ctx.snapshot.ruleset, ctx.hostname);
    let auth = &farm.sender_auth;
    let authserv_id = farm.verdict_headers.authserv_ids.first().map_or(hostname, String::as_str);
    let metrics = &shared.metrics;
    let ip = session.peer().ip();
    let verifier = Verifier::new(&dns);
    let verified = if auth.after_data() {
        // mail-auth verifies a message in one buffer: bounded by the message size, which DATA
        // enforced before a byte of this was kept, and counted against the spool's budget of
        // bytes in flight (this copy is RAM too), so many large messages verified at once are a
        // 452, not a node out of memory.
        let reader = spool.reader().map_err(|_| (Reply::local_error(), rules::SPOOL, String::new()))?;
        let copy = shared.spool.copy_to_memory(&reader, message.sender_start).map_err(|e| {
            let (reply, rule) = super::content::copy_refusal(shared, session, e);
            (reply, rule, String::new())
        })?;
        // mail-auth parses what the sender wrote, and has `unwrap`s and `unimplemented!`s of its
        // own: if one of them fires on a hostile message, the sender gets a 451 (and may try
        // again), not a dropped connection.
        let verifying = if light(copy.bytes.len(), verdicts.signature_fields()) {
            // Little to hash and few signatures: cheaper here than the two thread hand-offs of
            // the blocking pool (an unsigned 4 KiB message cost ~90 µs of CPU that way, most of
            // it waking threads; BENCHMARKS.md, sender authentication).
            let work = verifier.message(&copy.bytes, ip, spf, auth, authserv_id);
            std::panic::AssertUnwindSafe(work).catch_unwind().await.map_err(drop)
        } else {
            // Hashing a large body and checking many signatures is CPU work that would hold
            // every other session of this thread: it runs on a blocking thread, whose DNS
            // lookups the session thread's runtime drives (through its handle) meanwhile.
            let spf = spf.cloned();
            let authserv_id = authserv_id.to_owned();
            let checks = auth.clone();
            let runtime = tokio::runtime::Handle::current();
            tokio::task::spawn_blocking(move || {
                runtime.block_on(verifier.message(&copy.bytes, ip, spf.as_ref(), &checks, &authserv_id))
            })
            .await
            .map_err(drop)
        };
        match verifying {
            Ok(verified) => verified,
            Err(()) => {
                tracing::error!(session = %session.id(), "sender authentication: the verifier panicked on this message");
                return Err((Reply::local_error(), rules::DMARC, "verifier-panic".to_owned()));
            }
        }
    } else {
        verifier.message(&[], ip, spf, auth, authserv_id).await
    };
    let mut verified = verified;
    if let Some(dmarc) = verified.facts.dmarc.as_mut() {
        // A verdict about no one author (mail-auth's `none` with no domain, or a domain other
        // than the one From the node read) is no verdict: the message's author is unclear.
        let known = matches!(dmarc.result, DmarcResult::TempError);
        // What the node read of From is parsed only here, for a DMARC verdict to check.
        let author = super::data::author(verdicts);
        if !known && !author.is_one(&dmarc.domain) {
            tracing::info!(session = %session.id(), fields = author.fields, domains = ?author.domains, verifier = dmarc.domain.as_str(), "DMARC: no one author domain");
            dmarc.result = DmarcResult::BadFrom;
        }
    }
    let facts = &verified.facts;
    if let Some(helo) = spf.and_then(|s| s.helo.as_ref()) {
        let result = crate::sender_auth::SpfCheck::helo_result(helo);
        metrics.sender_auth_verdict(&farm.name, "spf-helo", result.as_str());
    }
    for dkim in &facts.dkim {
        metrics.sender_auth_verdict(&farm.name, "dkim", dkim.result.as_str());
    }
    if let Some(arc) = &facts.arc {
        metrics.sender_auth_verdict(&farm.name, "arc", arc.result.as_str());
    }
    if let Some(dmarc) = &facts.dmarc {
        metrics.sender_auth_verdict(&farm.name, "dmarc", dmarc.result.as_str());
    }
    let text = summary(spf.map(SpfCheck::result), facts);
    // The data stage: DMARC enforcement, decided by the evaluator from these verdicts.
    let sender = session.transaction().map(|t| t.sender.as_str());
    let mut evaluated = session.facts(ruleset, sender, None);
    evaluated.message = Some(facts);
    let decision = eval::evaluate(ruleset, farm, Stage::Data, &evaluated);
    if let Some(mut record) = session.journal_record(farm, Stage::Data, &evaluated, &decision) {
        record.time = crate::state::since_epoch().as_secs();
        shared.journal(record);
    }
    let change = session.compare_with_candidate(&farm.name, Stage::Data, &evaluated, &decision);
    session.note_candidate(change);
    super::report::ruleset_changes(shared, session, farm);
    for (rule, reply) in &decision.shadowed {
        super::report::would_refuse(shared, session, farm, Stage::Data, rule, reply);
    }
    if let (Some(reply), Some(rule)) = (&decision.reply, decision.rule.as_deref()) {
        let rule = rules::find(rule).map_or(rules::DMARC, |r| r.name);
        tracing::info!(session = %session.id(), rule, verdicts = text.as_str(), "message refused by sender authentication");
        return Err((policy_reply(reply), rule, text));
    }
    Ok(Checked { header: verified.header, summary: text })
}

#[cfg(test)]
mod tests {
    use super::{light, IN_PLACE_BYTES, IN_PLACE_SIGNATURES};

    #[test]
    fn small_messages_with_few_signatures_are_verified_in_place() {
        assert!(light(4096, 0));
        assert!(light(IN_PLACE_BYTES, IN_PLACE_SIGNATURES));
        assert!(!light(4096, IN_PLACE_SIGNATURES + 1), "one more signature goes to the blocking pool");
        assert!(!light(IN_PLACE_BYTES + 1, 1), "a larger message goes to the blocking pool");
    }
}
