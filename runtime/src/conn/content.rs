//! The scan phase: the MIME rules and the content scanners on the spooled message, after DATA
//! and before the relay. The message stays in the spool: the scanners stream it from there, and
//! only the MIME rules (mail-parser) hold it in memory, a copy counted against the spool's
//! budget of bytes in flight (`Spool::copy_to_memory`).

use crate::metrics::{FarmLabel, ScanResult, ScannerLabel};
use crate::session::Session;
use crate::shared::Shared;
use crate::smtp::{EnhancedCode, Reply};
use crate::spool::{CopyError, SpoolFile};
use mtac_ruleset::model::Farm;
use mtac_ruleset::rules;

/// Where the sender's message lies in the spool file, and how big it was as sent.
#[derive(Debug, Clone, Copy)]
pub(super) struct SpooledMessage {
    /// The sender's bytes (unstuffed), before verdict headers were removed: what limits are about.
    pub(super) size: u64,
    /// The offset of the sender's message, after mtac's Received header.
    pub(super) sender_start: u64,
}

/// MIME rules and scanners on the spooled message. `Ok` carries the header lines to relay in
/// front of it; `Err` the refusal and its rule.
pub(super) async fn content_checks(
    shared: &Shared,
    session: &Session,
    farm: &Farm,
    ruleset: &mtac_ruleset::Ruleset,
    spool: &SpoolFile,
    message: SpooledMessage,
    hostname: &str,
) -> Result<String, (Reply, &'static str)> {
    if farm.scanners.is_empty() && farm.mime.is_none() {
        return Ok(String::new());
    }
    let refuse = |code: u16, (c, s, d): (u8, u16, u16), text: &str, rule: &'static str| {
        (Reply::new(code, EnhancedCode::new(c, s, d), text).unwrap_or_else(|_| Reply::local_error()), rule)
    };
    // The size the sender sent, never the spool's (which holds our own header too): with the
    // default max-size (the message size) no message the farm accepts escapes the scanners.
    if message.size > farm.scan_max_size {
        if farm.scan_oversize_refuse {
            return Err(refuse(552, (5, 3, 4), "Message too large to be scanned", rules::SCAN_OVERSIZE));
        }
        tracing::info!(session = %session.id(), size = message.size, max = farm.scan_max_size, "message too large to scan: relayed unscanned");
        return Ok("X-Spam-Status: unscanned, message too large\r\n".to_owned());
    }
    let storage = || refuse(451, (4, 3, 0), "Temporary local problem, please try again later", rules::SPOOL);
    let reader = spool.reader().map_err(|_| storage())?;
    if let Some(rules) = &farm.mime {
        // mail-parser needs the message in one piece: the MIME rules are the one check that
        // holds it in memory (the scanners stream it from the spool).
        let copy =
            shared.spool.copy_to_memory(&reader, message.sender_start).map_err(|e| copy_refusal(shared, session, e))?;
        // What vouches for the client at RCPT vouches for it here: an authenticated user
        // sending From: their own local address is not forging it.
        let facts = session.facts(ruleset, session.transaction().map(|t| t.sender.as_str()), None);
        let trusted = mtac_ruleset::eval::trust(ruleset, farm, &facts).is_some()
            || (farm.trust_loopback && mtac_ruleset::model::is_loopback(session.peer().ip()));
        let local = |domain: &str| {
            use mtac_ruleset::eval::Lookup;
            farm.local_domains.is_some_and(|t| ruleset.domain(t, domain).is_some())
        };
        let violation = crate::scan::mime(rules, &copy.bytes, trusted, &local);
        drop(copy);
        if let Some(v) = violation {
            return Err(refuse(v.code, v.enhanced, &v.text, v.rule));
        }
    }
    if farm.scanners.is_empty() {
        return Ok(String::new());
    }
    let envelope = crate::scan::Envelope {
        client: session.peer().ip().to_string(),
        hostname: match mtac_ruleset::eval::DnsFacts::reverse(session.dns()) {
            Some(mtac_ruleset::eval::ReverseDns::Confirmed(name)) => Some(name),
            _ => None,
        },
        helo: session.helo().map(str::to_owned).unwrap_or_default(),
        sender: session.transaction().map(|t| t.sender.clone()).unwrap_or_default(),
        recipients: session.transaction().map(|t| t.recipients.clone()).unwrap_or_default(),
        user: session.authenticated().map(str::to_owned),
        queue_id: session.id().to_owned(),
    };
    let asks = farm.scanners.iter().map(|scanner| {
        let (reader, envelope) = (&reader, &envelope);
        async move {
            let started = std::time::Instant::now();
            let result = crate::scan::ask(scanner, reader, message.sender_start, envelope).await;
            crate::scan::Outcome { scanner, result, elapsed: started.elapsed() }
        }
    });
    let outcomes = futures_util::future::join_all(asks).await;
    let metrics = &shared.metrics;
    for o in &outcomes {
        let scanner = crate::scan::kind_name(o.scanner.kind);
        let result = match &o.result {
            Ok(crate::scan::Finding::Clean) => "clean",
            Ok(crate::scan::Finding::Virus(name)) => {
                tracing::info!(session = %session.id(), scanner, virus = name.as_str(), "virus found");
                metrics.viruses.get_or_create(&FarmLabel { farm: farm.name.clone() }).inc();
                "virus"
            }
            Ok(crate::scan::Finding::Score { score, .. }) => {
                metrics.spam_score.get_or_create(&ScannerLabel { scanner }).observe(*score);
                "scored"
            }
            Err(crate::scan::ScanError::Timeout(_)) => "timeout",
            Err(_) => "error",
        };
        if let Err(e) = &o.result {
            tracing::warn!(session = %session.id(), scanner, error = %e, fail_open = o.scanner.fail_open, "scanner failed");
        }
        metrics.scans.get_or_create(&ScanResult { scanner, result }).inc();
        metrics.scan_seconds.get_or_create(&ScannerLabel { scanner }).observe(o.elapsed.as_secs_f64());
    }
    match crate::scan::combine(&outcomes, hostname) {
        crate::scan::Verdict::Pass { headers } => Ok(headers),
        crate::scan::Verdict::Refuse { code, enhanced, text, rule } => Err(refuse(code, enhanced, &text, rule)),
    }
}

/// The answer when a message could not be copied into memory for a check: 452 when the spool's
/// budget of bytes in flight has no room for the copy, 451 when the spool could not be read.
pub(super) fn copy_refusal(shared: &Shared, session: &Session, error: CopyError) -> (Reply, &'static str) {
    match error {
        CopyError::OverBudget => {
            tracing::warn!(session = %session.id(), budget = shared.spool.budget(), "no room in the spool's budget of bytes in flight for a copy of the message to check");
            (super::data::insufficient_storage(), rules::SPOOL_BUDGET)
        }
        CopyError::Read => (Reply::local_error(), rules::SPOOL),
    }
}
