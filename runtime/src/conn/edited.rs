//! The milters' modifications made, between the filter phase and the relay phase: the message
//! relayed (the spool file, or the header edits and replaced body over it:
//! `milter::edits`), and the back end's recipients changed where the policy lets a milter
//! change them (`recipients="change"`). **Invariant: an added recipient passes the farm's
//! relay control** — it must be in the farm's local domains, so no milter can make the node an
//! open relay.

use super::Ctx;
use crate::milter::client::Edit;
use crate::milter::edits;
use crate::relay::Transaction;
use crate::relayed::Relayed;
use crate::session::Session;
use crate::shared::Delivery;
use crate::smtp::{EnhancedCode, Reply};
use crate::spool::SpoolFile;
use mtac_ruleset::model::{BackendProtocol, Farm};
use mtac_ruleset::rules;

type Refused = (Reply, &'static str);

fn cannot_change(what: &str) -> Refused {
    let text = format!("Message could not be changed as a filter asks ({what}), please try again later");
    (Reply::new(451, EnhancedCode::new(4, 7, 1), &text).unwrap_or_else(|_| Reply::local_error()), rules::MILTER_ACTION)
}

/// What is relayed after mtac's header lines: the spool file as written, or the milters'
/// header edits and replaced body over it.
pub(super) fn relayed(
    session: &Session,
    farm: &Farm,
    spool: &SpoolFile,
    asked: &[Edit],
    body: Option<SpoolFile>,
) -> Result<Relayed, Refused> {
    let result = if body.is_none() && !edits::changes_message(asked) {
        Relayed::whole(spool).map_err(edits::EditError::Spool)
    } else {
        edits::edited(spool, asked, body)
    };
    result.map_err(|e| {
        tracing::warn!(session = %session.id(), farm = farm.name.as_str(), error = %e, "the milters' modifications could not be made");
        if e.is_storage() {
            (super::data::insufficient_storage(), rules::SPOOL_BUDGET)
        } else {
            cannot_change("header fields or body")
        }
    })
}

/// An address as a milter gives it (`<a@b>`, maybe followed by ESMTP parameters).
fn address(raw: &str) -> String {
    let first = raw.split_whitespace().next().unwrap_or_default();
    first.trim_start_matches('<').trim_end_matches('>').to_owned()
}

/// The recipients the milters added and deleted, made on the back end's transaction: added ones
/// (local only) get their RCPT; a deletion starts the transaction again with the recipients
/// left. `Err` answers the message (the transaction given up).
pub(super) async fn recipients<'r>(
    session: &Session,
    ctx: &Ctx<'_>,
    delivery: &Delivery<'r>,
    txn: Option<Transaction<'r>>,
    asked: &[Edit],
) -> Result<Option<Transaction<'r>>, Refused> {
    let added: Vec<String> =
        asked.iter().filter_map(|e| if let Edit::AddRecipient(a) = e { Some(address(a)) } else { None }).collect();
    let deleted: Vec<String> =
        asked.iter().filter_map(|e| if let Edit::DeleteRecipient(a) = e { Some(address(a)) } else { None }).collect();
    if added.is_empty() && deleted.is_empty() {
        return Ok(txn);
    }
    let give_up = |txn: Option<Transaction<'r>>, refused: Refused| async move {
        if let Some(t) = txn {
            t.abort().await;
        }
        Err(refused)
    };
    let farm = ctx.farm;
    if let Some(foreign) =
        added.iter().find(|a| !mtac_ruleset::eval::is_local_recipient(&ctx.snapshot.ruleset, farm, a))
    {
        let shown: String = foreign.chars().filter(|c| !c.is_control()).take(100).collect();
        tracing::warn!(session = %session.id(), recipient = shown.as_str(), "a milter added a recipient outside the farm's local domains: refused");
        return give_up(txn, cannot_change("a recipient added outside the local domains")).await;
    }
    let Delivery::Relay(relay) = *delivery else {
        // The maildir has no recipients: one copy is delivered whatever the list says.
        return Ok(txn);
    };
    let Some(original) = session.transaction() else { return give_up(txn, cannot_change("no transaction")).await };
    let mut list: Vec<String> =
        original.recipients.iter().filter(|r| !deleted.iter().any(|d| d.eq_ignore_ascii_case(r))).cloned().collect();
    for a in &added {
        if !list.iter().any(|r| r.eq_ignore_ascii_case(a)) {
            list.push(a.clone());
        }
    }
    tracing::info!(session = %session.id(), added = added.len(), deleted = deleted.len(), recipients = list.len(), "a milter changed the recipients");
    if list.is_empty() {
        return give_up(txn, cannot_change("every recipient deleted")).await;
    }
    let restart = !deleted.is_empty();
    let (mut txn, to_send) = match txn {
        Some(t) if !restart => (t, added),
        previous => {
            if let Some(t) = previous {
                t.abort().await;
            }
            match relay.begin(&super::rcpt::envelope(original)).await {
                Ok(t) => (t, list),
                Err(reply) => return Err((reply, rules::BACKEND)),
            }
        }
    };
    if txn.protocol() == BackendProtocol::Lmtp {
        return give_up(Some(txn), cannot_change("one recipient per message on this path")).await;
    }
    for rcpt in &to_send {
        if let Err(reply) = txn.rcpt(rcpt).await {
            tracing::warn!(session = %session.id(), reply = %String::from_utf8_lossy(&reply.to_bytes()).trim_end(), "the back end refused a recipient a milter added");
            return give_up(Some(txn), (reply, rules::BACKEND)).await;
        }
    }
    Ok(Some(txn))
}
