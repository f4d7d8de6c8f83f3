//! The connect phase on the session's side: what the accept loop let in becomes a session
//! and the future its task runs ([`serve`]).
//!
//! Everything the session keeps is built before the task exists and moved into its future
//! once (BENCHMARKS.md "Node: idle sessions").

use super::{dialogue, report, run, starttls, Conn, Ctx};
use crate::lookups::{Lookups, Needs};
use crate::metrics::FarmLabel;
use crate::session::Session;
use crate::shared::Shared;
use crate::smtp::Reply;
use crate::tls::SmtpStream;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;

/// What the accept loop learned about a connection it let in.
#[derive(Debug, Clone, Copy, Default)]
pub struct Admission {
    /// The client is banned and is let in only to have its recipients refused.
    pub banned: bool,
    /// The farm's connections passed its stress share: this session gets the stress limits.
    pub stressed: bool,
}

/// The session of one connection of `farm_name`, on the snapshot current at accept time, for
/// its caller to spawn; `held` (the accept loop's connection slot) is dropped when it ends.
/// `None`: the farm left the ruleset since the accept, and the client was told 421.
///
/// What the session keeps is built here, before the task exists, and moved into the future
/// once: an `async fn` keeps its arguments in its state beside the locals made from them, so
/// taking the connection's parts as arguments would hold each twice for the session's life.
#[allow(clippy::too_many_arguments)]
pub fn serve<H: Send + 'static>(
    stream: TcpStream,
    peer: SocketAddr,
    farm_name: &str,
    implicit_tls: bool,
    shared: Arc<Shared>,
    id: String,
    admission: Admission,
    held: H,
) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
    // Replies go out as they are made (the listener set it where accepted sockets inherit it).
    if !cfg!(target_os = "linux") {
        let _ = stream.set_nodelay(true);
    }
    // The session keeps the ruleset it started with, whatever reloads happen meanwhile.
    let snapshot = shared.snapshot();
    let Some((farm_index, farm)) = snapshot.farm(farm_name) else {
        // One non-blocking write, as the accept loop refuses.
        let reply = Reply::shutting_down(&snapshot.ruleset.policy().hostname);
        let _ = stream.try_write(&reply.to_bytes());
        tracing::warn!(session = %id, farm = farm_name, "farm no longer in the ruleset; connection refused");
        return None;
    };
    let mut session = Session::new(id, peer, &snapshot.ruleset, farm);
    if let Some(candidate) = shared.candidate() {
        session.with_candidate(candidate);
    }
    if admission.banned {
        session.banned_at_connect();
    }
    if let Some(stress) = farm.screen.stress.as_ref().filter(|_| admission.stressed) {
        // Postfix's `stress`: shorter timeouts and a lower error limit while the farm is near
        // its connection limit, so slow and erring clients give their slots back sooner.
        session.under_stress(stress);
        shared.metrics.stressed_sessions.get_or_create(&FarmLabel { farm: farm.name.clone() }).inc();
    }
    Some(async move {
        // The farm found above, in the same snapshot.
        let Some(farm) = snapshot.ruleset.policy().farms.get(farm_index) else { return };
        let mut conn = Conn {
            stream: SmtpStream::Plain(stream),
            // Allocated when first needed: the greeting's reply, the client's first bytes.
            input: Vec::new(),
            output: Vec::new(),
            shared: &shared,
            shutdown: shared.shutdown_receiver(),
            speaker: dialogue::wanted().then(|| dialogue::Speaker::new(session.id(), session.peer().ip(), &farm.name)),
        };
        if implicit_tls && !Box::pin(starttls::implicit(&mut conn, &mut session, &snapshot, farm_index, farm)).await {
            return;
        }
        // Boxed: 760 bytes that a farm without DNS checks does not need at all.
        let mut lookups = shared.dns().map(|dns| Box::new(Lookups::start(dns, Needs::of(farm), session.peer().ip())));
        let mut command_timeout = Duration::from_secs(u64::from(session.limits().timeouts.command));
        if session.is_banned() {
            // A banned client is only here to be refused: it gets little of our time.
            command_timeout = command_timeout.min(Duration::from_secs(10));
        }
        let hostname = snapshot.ruleset.policy().hostname.as_str();
        let ctx = Ctx { snapshot: &snapshot, farm_index, farm, hostname, command_timeout };
        let end = run(&mut conn, &mut session, &ctx, &mut lookups).await;
        report::session_closed(&shared, &session, &farm.name, farm, end);
        drop(held);
    })
}
