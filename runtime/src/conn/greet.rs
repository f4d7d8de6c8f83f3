//! The greet phase: the pregreet test (postscreen's), then the `connect` stage and its 220 (or
//! refusal).
//!
//! On a farm with a pregreet wait, a client the node does not remember gets the greeting's first
//! line, `220-HOST ESMTP`, at once and its last line after the wait. A client that talks in
//! between is a bot that does not wait for replies: it is closed with `554 5.5.1`, or with
//! `talker="refuse-recipients"` let on to have every RCPT refused. A client that waited is
//! remembered for `remember=` (the state store, shared through Redis; else the node's memory,
//! `crate::screen`) and greeted at once next time. The DNS lookups of the client run during the
//! wait, so it costs a first contact the wait and nothing more.

use super::{report, Conn, Ctx, End, Read};
use crate::lookups::Lookups;
use crate::metrics::{FarmLabel, PregreetOutcome};
use crate::session::{Action, Session};
use crate::shared::Shared;
use crate::smtp::Reply;
use mtac_ruleset::model::{Stage, TalkerAction};
use report::Asked;
use std::net::IpAddr;
use std::time::Duration;
use tokio::time::Instant;

/// The greet phase. `Err`: the session is over.
pub(super) async fn greet(
    conn: &mut Conn<'_>,
    session: &mut Session,
    ctx: &Ctx<'_>,
    lookups: &mut Option<Box<Lookups>>,
) -> Result<(), End> {
    pregreet(conn, session, ctx).await?;
    if let Some(l) = lookups.as_mut() {
        session.dns_answered(l.ready_for(Stage::Connect, &conn.shared.metrics).await);
    }
    let greeting = session.greet(&ctx.snapshot.ruleset, ctx.farm);
    report::decided(conn.shared, session, ctx.farm, &Asked::Connect, &greeting);
    report::shadowed(conn.shared, session, ctx.farm);
    report::ruleset_changes(conn.shared, session, ctx.farm);
    report::journal(conn.shared, session);
    // A client the policy refuses at connect has earned its ban by the greeting, whether or not
    // it says another word.
    super::rcpt::ban_after(conn.shared, session, ctx.farm, greeting.refusal());
    match greeting {
        Action::Close { reply, .. } => return Err(Box::pin(conn.close(&reply, End::Refused)).await),
        Action::Reply { reply, .. } => conn.reply(&reply),
        _ => {}
    }
    Ok(())
}

/// The pregreet test, if the farm has one and does not remember the client. `Ok` when the
/// greeting may follow (the first line already written if the test ran).
async fn pregreet(conn: &mut Conn<'_>, session: &mut Session, ctx: &Ctx<'_>) -> Result<(), End> {
    let (farm, shared) = (ctx.farm, conn.shared);
    let wait = session.limits().timeouts.pregreet;
    if wait == 0 {
        return Ok(());
    }
    let client = session.peer().ip();
    let count = |outcome: &'static str| {
        shared.metrics.pregreet.get_or_create(&PregreetOutcome { farm: farm.name.clone(), outcome }).inc();
    };
    let remember = u64::from(farm.screen.pregreet_remember);
    // The state store's round trips and the closing replies are boxed: inlined, they sized the
    // whole wait (3.7 KB held by every connection in it, for its 2 s).
    if remember > 0 && Box::pin(known(shared, client)).await {
        count("remembered");
        return Ok(());
    }
    // The first line at once: a client that waits for a whole reply keeps waiting, one that
    // does not (a bot writing its script blind) talks now.
    conn.output.extend_from_slice(format!("220-{} ESMTP\r\n", ctx.hostname).as_bytes());
    let deadline = Instant::now() + Duration::from_secs(u64::from(wait));
    if !conn.flush(deadline).await {
        return Err(End::Io);
    }
    // The wait holds no buffer (most clients say nothing in it): one is allocated only for
    // what a talker sent, or to tell a close from data.
    let waited = match conn.between_commands(deadline, false).await {
        Read::Data => conn.read(deadline, false).await,
        other => other,
    };
    match waited {
        Read::Timeout => {
            count("passed");
            if remember > 0 {
                Box::pin(remember_passed(shared, client, remember)).await;
            }
            Ok(())
        }
        Read::Data => {
            count("early-talker");
            tracing::info!(session = %session.id(), client = %client, farm = farm.name.as_str(), "early talker: talked before the greeting's last line");
            match farm.screen.pregreet_talker {
                TalkerAction::RefuseRecipients => {
                    session.talked_early_refuse_recipients();
                    Ok(())
                }
                TalkerAction::Close => {
                    let closed = session.talked_early();
                    report::decided(shared, session, farm, &Asked::Connect, &closed);
                    let reply = closed.sent_reply().cloned().unwrap_or_else(Reply::local_error);
                    Err(Box::pin(conn.close(&reply, End::EarlyTalker)).await)
                }
            }
        }
        Read::Closed => {
            count("left");
            Err(End::ClientClosed)
        }
        Read::Shutdown => Err(Box::pin(conn.close(&Reply::shutting_down(ctx.hostname), End::Shutdown)).await),
        Read::Error => Err(End::Io),
    }
}

/// Whether `client` passed the pregreet test within its TTL. A store that cannot answer makes
/// the client wait again: that costs it seconds, never mail.
async fn known(shared: &Shared, client: IpAddr) -> bool {
    match &shared.state {
        Some(store) => match store.pregreet_known(client).await {
            Ok(known) => known,
            Err(e) => {
                tracing::warn!(error = %e, "state store: cannot read the pregreet memory; the client waits again");
                false
            }
        },
        None => shared.pregreet_passed.knows(client, crate::state::unix_now()),
    }
}

async fn remember_passed(shared: &Shared, client: IpAddr, ttl: u64) {
    match &shared.state {
        Some(store) => {
            if let Err(e) = store.pregreet_passed(client, ttl).await {
                tracing::warn!(error = %e, "state store: cannot remember a client that passed the pregreet test");
            }
        }
        None => shared.pregreet_passed.remember(client, ttl, crate::state::unix_now()),
    }
}

/// The farm's label, for the screen's counters.
pub(super) fn farm_label(ctx: &Ctx<'_>) -> FarmLabel {
    FarmLabel { farm: ctx.farm.name.clone() }
}
