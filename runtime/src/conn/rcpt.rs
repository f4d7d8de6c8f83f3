//! The rcpt phase's round trips, in the order the session asks for them: the farm's directory
//! (does the recipient exist?), the greylist store (has this triplet waited?), and the back end
//! (whose verdict is the client's answer). Also what follows every final answer that refuses:
//! the ban a policy rule asks for and the tarpit, which wait until the directory, the store and
//! the back end have spoken.

use super::report::relay_error;
use super::{Conn, Ctx, End};
use crate::metrics::GreylistOutcome;
use crate::relay::{Envelope, Relay, Transaction};
use crate::session::{Action, GreylistAnswer, Refusal, Session};
use crate::shared::{Delivery, Shared, Snapshot};
use crate::smtp::{EnhancedCode, Reply};
use crate::state::{GreylistVerdict, Timings, Triplet};
use mtac_ruleset::eval::{DirectoryAnswer, ReverseDns};
use mtac_ruleset::model::{BackendProtocol, Farm, GreylistKey};
use mtac_ruleset::sender_auth::spf_verified_domain;
use std::time::Duration;
use tokio::time::Instant;

/// Ask the farm's directory whether a recipient exists (the cache first), and count it.
pub(super) async fn ask_directory(
    shared: &Shared,
    snapshot: &Snapshot,
    farm_index: usize,
    farm: &Farm,
    session: &Session,
    recipient: &str,
) -> DirectoryAnswer {
    let Some(directory) = snapshot.directory(farm_index) else {
        // A ruleset with a directory always gets its client (shared::Snapshot::new).
        return DirectoryAnswer::Unavailable;
    };
    let (answer, source) = directory.lookup(recipient).await;
    let result = match answer {
        DirectoryAnswer::Known => "known",
        DirectoryAnswer::Unknown => "unknown",
        DirectoryAnswer::Unavailable => "unavailable",
    };
    let source = match source {
        crate::directory::Source::Cache => "cache",
        crate::directory::Source::Directory(took) => {
            let labels = crate::metrics::FarmLabel { farm: farm.name.clone() };
            shared.metrics.directory_seconds.get_or_create(&labels).observe(took.as_secs_f64());
            "directory"
        }
    };
    let labels = crate::metrics::DirectoryLookup { farm: farm.name.clone(), result, source };
    shared.metrics.directory.get_or_create(&labels).inc();
    tracing::debug!(session = %session.id(), recipient, result, source, "directory lookup");
    answer
}

/// Consult the state store for a recipient that passed every other step: a pass goes on to the
/// back end; a refusal carries the reply: the policy's 451, or the store's failure mode.
pub(super) async fn greylist(
    shared: &Shared,
    session: &Session,
    farm: &Farm,
    recipient: &str,
    fail_open: bool,
) -> GreylistAnswer {
    let (Some(settings), Some(store)) = (&farm.greylist, shared.state.as_ref()) else {
        // The node opens its store whenever a farm greylists (node::Node::new).
        return GreylistAnswer::Pass { client: None };
    };
    let client = greylist_client(settings, session);
    let sender = session.transaction().map_or("", |t| t.sender.as_str());
    let triplet = Triplet::new(client.clone(), sender, recipient);
    let metrics = &shared.metrics;
    let outcome = |outcome: &'static str| {
        metrics.greylist.get_or_create(&GreylistOutcome { farm: farm.name.clone(), outcome }).inc();
    };
    match store.greylist(&triplet, session.peer().ip(), Timings::from(settings)).await {
        Ok(verdict) => {
            outcome(verdict.as_str());
            if let GreylistVerdict::Passed { waited, other_address } = verdict {
                metrics.greylist_wait.observe(waited as f64);
                if other_address {
                    metrics.greylist_other_address.inc();
                }
                tracing::info!(
                    session = %session.id(), client = %session.peer().ip(), key = client.as_str(), sender,
                    recipient, waited, other_address, "greylist passed"
                );
            }
            if verdict.passes() {
                GreylistAnswer::Pass { client: Some(client) }
            } else {
                GreylistAnswer::Refuse(crate::session::policy_reply(&settings.reply))
            }
        }
        Err(e) => {
            outcome(if fail_open { "error-accepted" } else { "error-deferred" });
            tracing::warn!(session = %session.id(), error = %e, fail_open, "greylist: the state store did not answer");
            if fail_open {
                GreylistAnswer::Pass { client: None }
            } else {
                GreylistAnswer::Refuse(
                    Reply::new(451, EnhancedCode::new(4, 3, 0), "Temporary local problem, please try again later")
                        .unwrap_or_else(|_| Reply::local_error()),
                )
            }
        }
    }
}

/// What stands for the client in its triplets: its network; with `key="fcrdns"` the
/// registrable domain of its forward-confirmed reverse name; with `key="spf"` the registrable
/// domain of MAIL FROM when SPF passed for it (the evaluator's own test,
/// `sender_auth::spf_verified_domain`). Either way every host of a sender's pool is one client.
fn greylist_client(settings: &mtac_ruleset::model::Greylist, session: &Session) -> String {
    let registrable = |name: &str| psl::domain_str(&name.trim_end_matches('.').to_ascii_lowercase()).map(str::to_owned);
    match settings.key {
        GreylistKey::Fcrdns => {
            if let Some(ReverseDns::Confirmed(name)) = &session.dns().reverse {
                if let Some(domain) = registrable(name) {
                    return format!("dns:{domain}");
                }
            }
        }
        GreylistKey::Spf => {
            let sender = session.transaction().map(|t| t.sender.as_str());
            if let Some(domain) = spf_verified_domain(session.dns().spf, sender).and_then(registrable) {
                return format!("spf:{domain}");
            }
        }
        GreylistKey::Network => {}
    }
    format!("net:{}", crate::guard::network(session.peer().ip(), settings.v4_prefix, settings.v6_prefix))
}

/// `Action::Recipient`: the policy accepted the recipient; the back end's verdict (or, with a
/// maildir, none needed) is the client's answer.
pub(super) async fn recipient<'r>(
    shared: &Shared,
    session: &mut Session,
    farm: &Farm,
    delivery: &Delivery<'r>,
    txn: &mut Option<Box<Transaction<'r>>>,
    address: String,
) -> Action {
    let verdict = match *delivery {
        Delivery::Maildir(_) => Ok(()),
        Delivery::Relay(relay) => forward(relay, txn, session, &address).await,
    };
    if let Err(refusal) = &verdict {
        // The policy accepted the recipient; the back end (or the way to it) did not.
        shared.metrics.relay_errors.get_or_create(&relay_error(farm, "rcpt", refusal)).inc();
    }
    session.recipient_result(address, verdict)
}

/// The client's envelope as the back end is given it.
pub(super) fn envelope(t: &crate::session::Transaction) -> Envelope<'_> {
    Envelope { sender: &t.sender, size: t.size, eight_bit: t.eight_bit, smtputf8: t.smtputf8 }
}

/// Ask the back end about one recipient, opening the transaction at the first.
async fn forward<'r>(
    relay: &'r Relay,
    txn: &mut Option<Box<Transaction<'r>>>,
    session: &Session,
    address: &str,
) -> Result<(), Reply> {
    if txn.is_none() {
        let Some(envelope) = session.transaction().map(envelope) else {
            return Err(Reply::bad_sequence("need MAIL command"));
        };
        // The first recipient goes with MAIL FROM (pipelined where the back end allows).
        let (opened, verdict) = relay.begin_with(&envelope, address).await?;
        *txn = Some(Box::new(opened));
        return verdict;
    }
    let Some(t) = txn.as_mut() else { return Err(Reply::local_error()) };
    // LMTP answers per recipient after DATA while our client expects one reply: one recipient
    // per transaction keeps every answer exact (ARCHITECTURE.md, "LMTP").
    if t.protocol() == BackendProtocol::Lmtp && session.transaction().is_some_and(|s| !s.recipients.is_empty()) {
        return Err(Reply::new(
            452,
            EnhancedCode::new(4, 5, 3),
            "One recipient per message on this path; send the others again",
        )
        .unwrap_or_else(|_| Reply::too_many_recipients()));
    }
    t.rcpt(address).await
}

/// Now that the answer is final (the directory, the greylist store and the back end have
/// spoken): a policy refusal that the farm bans for turns the network's next connections away,
/// and a refusal waits out the tarpit. `Err`: writing the replies before the wait failed.
pub(super) async fn after_answer(
    conn: &mut Conn<'_>,
    session: &Session,
    ctx: &Ctx<'_>,
    action: &Action,
) -> Result<(), End> {
    let farm = ctx.farm;
    ban_after(conn.shared, session, farm, action.refusal());
    if farm.tarpit_ms > 0 {
        if let Action::Reply { reply: r, .. } | Action::Close { reply: r, .. } = action {
            if r.is_transient() || r.is_permanent() {
                if !conn.flush(Instant::now() + ctx.command_timeout).await {
                    return Err(End::Io);
                }
                tokio::time::sleep(Duration::from_millis(u64::from(farm.tarpit_ms))).await;
            }
        }
    }
    // Past the soft error limit each refusal waits a little longer (Postfix's
    // smtpd_error_sleep_time), so a harvester's next guess costs it seconds while an audit or
    // a list sender with a few bad addresses still finishes before the hard limit.
    let delay = session.error_delay_seconds();
    if let (Action::Reply { reply: r, .. }, true) = (action, delay > 0) {
        if r.is_transient() || r.is_permanent() {
            if !conn.flush(Instant::now() + ctx.command_timeout).await {
                return Err(End::Io);
            }
            conn.shared.metrics.error_delays.get_or_create(&super::greet::farm_label(ctx)).inc();
            tokio::time::sleep(Duration::from_secs(u64::from(delay))).await;
        }
    }
    Ok(())
}

/// The ban `refusal` earns, if the farm bans after its rule (`ban after=`; only a permanent
/// refusal by the policy counts): the network's next connections are turned away, on this node
/// and, through Redis, on the farm's others.
pub(super) fn ban_after(shared: &Shared, session: &Session, farm: &Farm, refusal: Option<&Refusal>) {
    let Some(rule) = refusal.filter(|r| r.may_ban).map(|r| r.rule.as_str()) else { return };
    let Some((scope, net, seconds)) = shared.bans.after_refusal(&farm.name, session.peer().ip(), rule, &farm.bans)
    else {
        return;
    };
    shared.metrics.bans.inc();
    let active = shared.bans.active();
    let from = scope.name().to_owned();
    tracing::info!(session = %session.id(), client = %session.peer().ip(), %net, rule, farm = from.as_str(), active, "banned");
    super::auth::share_ban(shared, scope, net, seconds);
}
