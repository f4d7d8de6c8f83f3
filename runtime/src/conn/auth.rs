//! The auth phase's I/O: the credential check behind `Action::Authenticate`, the attempt
//! budget every session of a network shares, and the ban at `max-failures` (shared with the
//! farm's other nodes through Redis). The SASL exchange itself is the session's (no I/O).

use crate::auth::LoginCache;
use crate::guard::AttemptRefused;
use crate::metrics::AuthOutcome;
use crate::session::{Action, AuthVerdict, Session};
use crate::shared::Shared;
use mtac_ruleset::model::Farm;
use std::time::Duration;

/// Check AUTH credentials. Before any password is checked, a client banned from this farm or
/// whose network (the address, an IPv6 /64) has used up the farm's `max-failures` is refused
/// (421, [`Session::auth_locked_out`]); otherwise one check is reserved against that budget, so
/// concurrent sessions cannot check more passwords than it allows: a session whose place is
/// taken by checks under way waits for one to end (at most [`AUTH_QUEUE_WAIT`], then 454, try
/// again later), and is refused only if those checks failed. A failure costs the client a
/// second (brute force gets slow); the one that reaches `max-failures` bans the network from
/// this farm (and through Redis, from the farm's other nodes).
pub(super) async fn authenticate(
    shared: &Shared,
    session: &mut Session,
    farm: &Farm,
    cache: Option<&LoginCache>,
    user: String,
    password: String,
) -> Action {
    let ip = session.peer().ip();
    let max = farm.auth.as_ref().map_or(5, |a| a.max_failures.max(1));
    let attempt = match reserve(shared, farm, ip, max).await {
        Ok(attempt) if !shared.bans.is_banned(&farm.name, ip, &farm.bans) => Some(attempt),
        Err(AttemptRefused::Busy) => {
            drop(password);
            auth_counted(shared, farm, "unavailable");
            tracing::info!(session = %session.id(), client = %ip, "authentication deferred: the address's other checks took too long");
            return session.auth_result(user, AuthVerdict::Unavailable);
        }
        _ => None,
    };
    let Some(attempt) = attempt else {
        drop(password);
        auth_counted(shared, farm, "refused");
        tracing::info!(session = %session.id(), client = %ip, "authentication refused: banned or too many failures");
        return session.auth_locked_out();
    };
    let verdict = match &farm.auth {
        Some(_) if cache.is_some_and(|c| c.knows(&user, &password)) => {
            shared.metrics.auth_cached.inc();
            AuthVerdict::Valid
        }
        Some(auth) => {
            let verdict = crate::auth::verify(auth, &user, &password).await;
            if let (AuthVerdict::Valid, Some(cache)) = (&verdict, cache) {
                cache.remember(&user, &password);
            }
            verdict
        }
        None => AuthVerdict::Invalid,
    };
    drop(password);
    let failures = attempt.settle(verdict == AuthVerdict::Invalid);
    let user_shown: String = user.chars().filter(|c| !c.is_control()).take(64).collect();
    match verdict {
        // Another session may have earned the ban while this one was checking.
        AuthVerdict::Valid if shared.bans.is_banned(&farm.name, ip, &farm.bans) => {
            auth_counted(shared, farm, "refused");
            tracing::info!(session = %session.id(), client = %ip, "authentication refused: banned meanwhile");
            return session.auth_locked_out();
        }
        AuthVerdict::Valid => {
            auth_counted(shared, farm, "success");
            tracing::info!(session = %session.id(), client = %ip, user = user_shown.as_str(), "authenticated");
        }
        AuthVerdict::Invalid => {
            auth_counted(shared, farm, "failure");
            tracing::info!(session = %session.id(), client = %ip, user = user_shown.as_str(), "authentication failed");
            if failures >= max {
                ban_for_auth(shared, farm, ip, max);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        AuthVerdict::Unavailable => auth_counted(shared, farm, "unavailable"),
    }
    session.auth_result(user, verdict)
}

/// How long a session waits for a place in its network's budget of checks (other sessions of
/// the address are checking passwords): a password check takes tens of milliseconds, so this
/// is only reached when the checks themselves hang (an LDAP bind timing out).
const AUTH_QUEUE_WAIT: Duration = Duration::from_secs(30);

/// A place in the network's budget of password checks, waiting while other sessions' checks
/// fill it. `Busy` only once [`AUTH_QUEUE_WAIT`] has passed.
async fn reserve<'s>(
    shared: &'s Shared,
    farm: &Farm,
    ip: std::net::IpAddr,
    max: u32,
) -> Result<crate::guard::Attempt<'s>, AttemptRefused> {
    let deadline = tokio::time::Instant::now() + AUTH_QUEUE_WAIT;
    // This session's place in line once it has to wait (first come, first served).
    let mut turn = None;
    loop {
        // Registered before asking, so a check that ends in between still wakes this one.
        let released = shared.auth_failures.released();
        tokio::pin!(released);
        released.as_mut().enable();
        match shared.auth_failures.reserve(&farm.name, ip, max, &mut turn) {
            Err(AttemptRefused::Busy) => {
                if tokio::time::timeout_at(deadline, released).await.is_err() {
                    return Err(AttemptRefused::Busy);
                }
            }
            answer => return answer,
        }
    }
}

fn auth_counted(shared: &Shared, farm: &Farm, outcome: &'static str) {
    shared.metrics.auth.get_or_create(&AuthOutcome { farm: farm.name.clone(), outcome }).inc();
}

/// Ban `ip`'s AUTH network from `farm` (only: the farm where the guessing happened) and announce
/// it to the farm's other nodes.
fn ban_for_auth(shared: &Shared, farm: &Farm, ip: std::net::IpAddr, max: u32) {
    let net = crate::guard::auth_network(ip);
    let scope = crate::guard::BanFarm::Farm(farm.name.clone());
    if !shared.bans.insert(scope.clone(), net, AUTH_BAN.as_secs()) {
        return;
    }
    shared.metrics.bans.inc();
    tracing::warn!(client = %ip, %net, farm = farm.name.as_str(), failures = max, "too many failed authentications: banned");
    share_ban(shared, scope, net, AUTH_BAN.as_secs());
}

/// Tell the farm's other nodes of a ban through Redis (they mirror it: node::tasks::mirror_bans).
pub(super) fn share_ban(shared: &Shared, scope: crate::guard::BanFarm, net: ipnet::IpNet, seconds: u64) {
    if let Some(crate::state::Store::Redis(redis)) = shared.state.clone() {
        tokio::spawn(async move {
            if let Err(e) = redis.ban(&scope, net, seconds).await {
                tracing::warn!(%net, error = %e, "cannot share a ban through Redis; it holds on this node");
            }
        });
    }
}

/// How long an address that failed AUTH `max-failures` times is banned.
const AUTH_BAN: Duration = Duration::from_secs(3600);
