//! The starttls phase: the TLS handshake, after STARTTLS or, on an implicit-TLS listener
//! (RFC 8314, port 465), before the greeting. `Session::tls_started` then forgets what the
//! client said in clear text (RFC 3207).

use super::{Conn, Ctx, End};
use crate::metrics::FarmLabel;
use crate::session::Session;
use crate::shared::Snapshot;
use crate::smtp::Reply;
use mtac_ruleset::model::Farm;
use std::time::Duration;
use tokio::time::Instant;

/// RFC 8314: TLS from the first byte, then the greeting inside it. `false`: the handshake
/// failed and the connection is over, without a session line (no session took place).
pub(super) async fn implicit(
    conn: &mut Conn<'_>,
    session: &mut Session,
    snapshot: &Snapshot,
    farm_index: usize,
    farm: &Farm,
) -> bool {
    let Some(tls) = snapshot.tls(farm_index) else { return false };
    let limit = Duration::from_secs(u64::from(farm.limits.timeouts.command).min(60));
    match tokio::time::timeout(limit, conn.stream.upgrade(&tls.acceptor)).await {
        Ok(Ok(())) => {
            started(conn, session, farm);
            true
        }
        Ok(Err(e)) => {
            tracing::info!(session = %session.id(), client = %session.peer().ip(), error = %e, "TLS handshake failed");
            false
        }
        Err(_) => {
            tracing::info!(session = %session.id(), client = %session.peer().ip(), "TLS handshake timed out");
            false
        }
    }
}

/// `Action::StartTls`: write the 220, then run the handshake under the command timeout.
pub(super) async fn upgrade(
    conn: &mut Conn<'_>,
    session: &mut Session,
    ctx: &Ctx<'_>,
    reply: &Reply,
) -> Result<(), End> {
    conn.reply(reply);
    if !conn.flush(Instant::now() + ctx.command_timeout).await {
        return Err(End::Io);
    }
    // Whatever the client sent after STARTTLS was sent in clear text: it must not be
    // read as if it had come through TLS (CVE-2011-0411).
    conn.input.clear();
    let Some(tls) = ctx.snapshot.tls(ctx.farm_index) else { return Err(End::Io) };
    match tokio::time::timeout(ctx.command_timeout, conn.stream.upgrade(&tls.acceptor)).await {
        Ok(Ok(())) => {
            started(conn, session, ctx.farm);
            Ok(())
        }
        Ok(Err(e)) => {
            tracing::info!(session = %session.id(), error = %e, "STARTTLS handshake failed");
            Err(End::Io)
        }
        Err(_) => Err(End::Timeout),
    }
}

/// Count the encrypted session and tell the session what protects it now.
fn started(conn: &Conn<'_>, session: &mut Session, farm: &Farm) {
    conn.shared.metrics.tls_sessions.get_or_create(&FarmLabel { farm: farm.name.clone() }).inc();
    session.tls_started(conn.stream.tls_description().unwrap_or_default());
}
