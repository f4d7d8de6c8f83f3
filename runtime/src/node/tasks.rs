//! What the node prepares before it serves and the tasks that run beside the sessions: the
//! resolver and its zone probes, maildirs, the state store's needs, the mirror of the farm's
//! bans from Redis, systemd's readiness and watchdog, and the open-file limit.
//!
//! Each task is a `JoinHandle` the node aborts and awaits when it stops, so nothing of a node
//! outlives `Node::run_until`.

use super::RunError;
use crate::dns::{Dns, DnsSettings};
use crate::lookups::Needs;
use crate::shared::Shared;
use mtac_ruleset::model::{self, Relay as RelayModel};
use mtac_ruleset::Ruleset;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// The resolver, if any farm needs DNS (a node without DNS checks needs no resolv.conf).
pub(super) fn build_dns(ruleset: &Ruleset) -> Result<Option<Dns>, RunError> {
    if !needs_dns(ruleset) {
        return Ok(None);
    }
    let settings = &ruleset.policy().dns;
    let dns = Dns::new(&DnsSettings {
        nameservers: settings.nameservers.clone(),
        timeout: Duration::from_millis(u64::from(settings.timeout_ms)),
        cache_size: usize::try_from(settings.cache_size).unwrap_or(usize::MAX),
    })
    .map_err(|e| RunError::Dns(e.to_string()))?;
    Ok(Some(dns))
}

/// Whether some farm's program asks DNS anything.
pub(super) fn needs_dns(ruleset: &Ruleset) -> bool {
    ruleset.policy().farms.iter().any(|f| Needs::of(f).any())
}

/// Probe the DNS list zones of whatever ruleset is current (a reload may add or drop some).
pub(super) fn spawn_probes(shared: &Arc<Shared>) -> Option<JoinHandle<()>> {
    let dns = shared.dns()?;
    let shared = shared.clone();
    Some(dns.spawn_probes(move || {
        let snapshot = shared.snapshot();
        let every = Duration::from_secs(u64::from(snapshot.ruleset.policy().dns.probe_interval));
        (list_zones(&snapshot.ruleset), every)
    }))
}

/// Every DNS list zone of the ruleset, for health probes.
fn list_zones(ruleset: &Ruleset) -> Vec<(String, model::DnsblTarget)> {
    let mut zones: Vec<(String, model::DnsblTarget)> = Vec::new();
    for zone in ruleset.policy().farms.iter().filter_map(|f| f.dnsbl.as_ref()).flat_map(|d| &d.zones) {
        if !zones.iter().any(|(z, _)| *z == zone.zone) {
            zones.push((zone.zone.clone(), zone.target));
        }
    }
    zones
}

/// Whether the node needs its state store: some farm greylists, or, through Redis, shares bans
/// or the clients that passed its pregreet test (the balancer may send a client's next
/// connection to any node). Without Redis, the pregreet memory is the node's own either way.
pub(super) fn needs_state(ruleset: &Ruleset) -> bool {
    let policy = ruleset.policy();
    let redis = matches!(policy.state, model::StateSettings::Redis { .. } | model::StateSettings::RedisSentinel { .. });
    let remembers = |f: &model::Farm| f.limits.timeouts.pregreet > 0 && f.screen.pregreet_remember > 0;
    policy.farms.iter().any(|f| f.greylist.is_some() || (redis && (!f.bans.is_empty() || remembers(f))))
}

/// The state store's own task: the embedded store's flush and sweep, or the mirror of the
/// farm's bans from Redis.
pub(super) fn spawn_state_task(shared: &Arc<Shared>) -> Option<JoinHandle<()>> {
    match &shared.state {
        Some(crate::state::Store::Embedded(db)) => Some(db.spawn_maintenance()),
        Some(crate::state::Store::Redis(redis)) => Some(mirror_bans(redis.clone(), shared.clone())),
        None => None,
    }
}

/// Mirror the farm's bans from Redis into this node's table: the ones in force when (re)connected,
/// then each one another node announces. The accept path reads only the local table.
fn mirror_bans(redis: Arc<crate::state::RedisStore>, shared: Arc<Shared>) -> JoinHandle<()> {
    use futures_util::StreamExt;
    tokio::spawn(async move {
        let mut failures = 0u32;
        loop {
            let subscribed = async {
                // With Sentinel, the primary of the moment: after a failover the lost channel
                // is subscribed again on the promoted replica.
                let mut pubsub = redis.client().await?.get_async_pubsub().await?;
                pubsub.subscribe(crate::state::BAN_CHANNEL).await?;
                Ok::<_, crate::state::StateError>(pubsub)
            };
            match tokio::time::timeout(Duration::from_secs(5), subscribed).await {
                Ok(Ok(mut pubsub)) => {
                    if failures > 0 {
                        tracing::info!("redis: ban channel subscribed again");
                    }
                    failures = 0;
                    // Subscribed first, then read what is in force: no ban falls in between.
                    match redis.bans().await {
                        Ok(bans) => {
                            for (farm, net, seconds) in bans {
                                shared.bans.insert(farm, net, seconds);
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "redis: cannot read the farm's bans"),
                    }
                    let mut messages = pubsub.on_message();
                    while let Some(message) = messages.next().await {
                        let Ok(payload) = message.get_payload::<String>() else { continue };
                        match crate::state::parse_ban_message(&payload) {
                            // 0 seconds: an operator lifted it (`mtac state --unban`) at some node.
                            Some((farm, net, 0)) => {
                                shared.bans.remove(net, Some(&farm));
                                shared.auth_failures.forget(net);
                            }
                            Some((farm, net, seconds)) => {
                                shared.bans.insert(farm, net, seconds);
                            }
                            None => {}
                        }
                    }
                    tracing::warn!("redis: ban channel lost; bans are this node's own until it is back");
                }
                Ok(Err(e)) => {
                    if failures == 0 {
                        tracing::warn!(error = %e, "redis: cannot subscribe to the farm's bans; retrying");
                    }
                    failures = failures.saturating_add(1);
                }
                Err(_) => failures = failures.saturating_add(1),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

/// Make (or check) every maildir a farm delivers to.
pub(super) fn prepare_maildirs(ruleset: &Ruleset) -> Result<(), RunError> {
    for farm in &ruleset.policy().farms {
        if let RelayModel::Maildir(dir) = &farm.relay {
            crate::maildir::prepare(Path::new(dir))
                .map_err(|source| RunError::Maildir { path: dir.clone(), source })?;
        }
    }
    Ok(())
}

/// Tell systemd the node is ready (Type=notify) and, when the unit sets WatchdogSec, keep
/// pinging its watchdog from a runtime task: a node whose scheduler is stuck stops pinging and
/// is restarted. Outside systemd (no NOTIFY_SOCKET) this does nothing.
pub(super) fn systemd_ready(shared: &Shared) -> Option<JoinHandle<()>> {
    let status = format!("serving ruleset {}", shared.snapshot().ruleset.hash_hex());
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&status)]) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
    let every = sd_notify::watchdog_enabled()? / 2;
    Some(tokio::spawn(async move {
        loop {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            tokio::time::sleep(every).await;
        }
    }))
}

/// Tell systemd the node is stopping (STOPPING=1), before it drains.
pub(super) fn systemd_stopping() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
}

/// Raise the open-file limit to the hard limit: every session is a descriptor, and mtac must not
/// cap a node below what the system allows. Returns the limit in force.
pub fn raise_file_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            return getrlimit(Resource::Nofile).current;
        }
    }
    limit.current
}
