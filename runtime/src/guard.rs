//! Spam-wave defences kept on the node: temporary bans and rate limits.
//!
//! Seed 002: a wave of listed zombies took a server down although each was refused, because every
//! refusal cost a process and broken senders reconnected at once. A ban turns a client (or its
//! /24 or /64) away at accept for a while, at the lowest cost the policy allows; rate limits cap
//! connections and messages per client network.
//!
//! Both live in memory here, behind short mutex sections on the accept path (one hash lookup per
//! configured prefix length). Sharing them across a farm comes with the greylisting issue's
//! state store.

use ipnet::IpNet;
use mtac_ruleset::model::{BanRule, RateLimit, RateSubject};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A table is swept of expired entries when it reaches this size, and then again only once it
/// has doubled: the sweep's cost is spread over as many inserts as it walks (amortised O(1)).
const SWEEP_AT: usize = 100_000;
/// The most entries a table keeps, whatever a wave throws at it (about 100 MB at worst).
const MAX_ENTRIES: usize = 1_000_000;

/// A map with an amortised sweep of expired entries.
#[derive(Debug)]
struct Swept<K, V> {
    map: HashMap<K, V>,
    next_sweep: usize,
}

impl<K, V> Default for Swept<K, V> {
    fn default() -> Self {
        Swept { map: HashMap::new(), next_sweep: SWEEP_AT }
    }
}

impl<K: std::hash::Hash + Eq, V> Swept<K, V> {
    /// Before an insert: sweep if due. Returns false when the table is full even after sweeping.
    fn make_room(&mut self, expired: impl FnMut(&V) -> bool) -> bool {
        if self.map.len() >= self.next_sweep {
            let mut expired = expired;
            self.map.retain(|_, v| !expired(v));
            self.next_sweep = (self.map.len() * 2).max(SWEEP_AT);
        }
        self.map.len() < MAX_ENTRIES
    }
}

/// `ip`'s network of the given prefix lengths (the address alone when a prefix is invalid).
pub fn network(ip: IpAddr, v4_prefix: u8, v6_prefix: u8) -> IpNet {
    let prefix = if ip.is_ipv4() { v4_prefix } else { v6_prefix };
    IpNet::new(ip, prefix).map(|n| n.trunc()).unwrap_or_else(|_| IpNet::from(ip))
}

/// Bans in force, by network.
#[derive(Debug, Default)]
pub struct Bans {
    until: Mutex<Swept<IpNet, Instant>>,
}

impl Bans {
    /// Is `ip` covered by a ban of any of `rules`' network sizes?
    /// The address alone is always looked up: AUTH failures ban it whatever the ban rules.
    pub fn is_banned(&self, ip: IpAddr, rules: &[BanRule]) -> bool {
        let now = Instant::now();
        let table = self.until.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if table.map.is_empty() {
            return false;
        }
        table.map.get(&IpNet::from(ip)).is_some_and(|t| *t > now)
            || rules.iter().any(|r| table.map.get(&network(ip, r.v4_prefix, r.v6_prefix)).is_some_and(|t| *t > now))
    }

    /// Ban `ip`'s network after `rule` refused it, if a ban rule names that rule.
    /// Returns the network banned and for how many seconds.
    pub fn after_refusal(&self, ip: IpAddr, rule: &str, rules: &[BanRule]) -> Option<(IpNet, u64)> {
        let ban = rules.iter().find(|b| b.after.iter().any(|r| r == rule))?;
        let net = network(ip, ban.v4_prefix, ban.v6_prefix);
        let seconds = u64::from(ban.seconds);
        self.insert(net, seconds).then_some((net, seconds))
    }

    /// Ban `net` for `seconds` (a ban this node decided, or one another node of the farm
    /// announced). Returns false when the table is full.
    pub fn insert(&self, net: IpNet, seconds: u64) -> bool {
        let now = Instant::now();
        let until = now + Duration::from_secs(seconds);
        let mut table = self.until.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !table.make_room(|t| *t <= now) && !table.map.contains_key(&net) {
            tracing::warn!(%net, "ban table full; not banning");
            return false;
        }
        // A ban announced twice (ours echoed back by Redis) keeps the later end.
        let end = table.map.get(&net).map_or(until, |t| (*t).max(until));
        table.map.insert(net, end);
        true
    }

    /// Bans in force now.
    pub fn active(&self) -> usize {
        let now = Instant::now();
        self.until.lock().unwrap_or_else(std::sync::PoisonError::into_inner).map.values().filter(|t| **t > now).count()
    }
}

/// Failed AUTH attempts per client address over the last hour, across its sessions.
#[derive(Debug, Default)]
pub struct Failures {
    table: Mutex<Swept<IpAddr, (Instant, u32)>>,
}

impl Failures {
    /// Count one failure from `ip`; returns its failures in the current hour.
    pub fn count(&self, ip: IpAddr) -> u32 {
        let now = Instant::now();
        let mut table = self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !table.make_room(|(end, _)| *end <= now) && !table.map.contains_key(&ip) {
            return u32::MAX;
        }
        let entry = table.map.entry(ip).or_insert((now + Duration::from_secs(3600), 0));
        if entry.0 <= now {
            *entry = (now + Duration::from_secs(3600), 0);
        }
        entry.1 = entry.1.saturating_add(1);
        entry.1
    }
}

/// The farm-wide key of a rate counter: farm, rule index, client network.
pub fn rate_key(farm: &str, index: usize, ip: IpAddr, limit: &RateLimit) -> String {
    format!("{farm}:{index}:{}", network(ip, limit.v4_prefix, limit.v6_prefix))
}

/// A counter's key: farm name, index of the rate limit in the farm, client network.
type RateKey = (String, usize, IpNet);

/// Fixed-window counters per (farm, rule, network): window end and count.
#[derive(Debug, Default)]
pub struct Rates {
    windows: Mutex<Swept<RateKey, (Instant, u32)>>,
}

impl Rates {
    /// Count one `subject` event from `ip`; the reply of the first limit it exceeds, if any.
    pub fn count<'r>(
        &self,
        farm: &str,
        subject: RateSubject,
        ip: IpAddr,
        limits: &'r [RateLimit],
    ) -> Option<&'r RateLimit> {
        if limits.iter().all(|l| l.subject != subject) {
            return None;
        }
        let now = Instant::now();
        let mut table = self.windows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !table.make_room(|(end, _)| *end <= now) {
            // Full of live windows (a very wide wave): start counting afresh rather than grow.
            tracing::warn!("rate table full; counters restarted");
            table.map.clear();
        }
        let mut exceeded = None;
        for (index, limit) in limits.iter().enumerate().filter(|(_, l)| l.subject == subject) {
            let key = (farm.to_owned(), index, network(ip, limit.v4_prefix, limit.v6_prefix));
            let window = Duration::from_secs(u64::from(limit.window));
            let entry = table.map.entry(key).or_insert((now + window, 0));
            if now >= entry.0 {
                *entry = (now + window, 0);
            }
            entry.1 = entry.1.saturating_add(1);
            if entry.1 > limit.limit && exceeded.is_none() {
                exceeded = Some(limit);
            }
        }
        exceeded
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use mtac_ruleset::model::Reply;

    #[test]
    fn a_ban_covers_the_network_and_expires() {
        let bans = Bans::default();
        let rules = vec![BanRule { after: vec!["dnsbl".into()], seconds: 1, v4_prefix: 24, v6_prefix: 64 }];
        let ip: IpAddr = "192.0.2.77".parse().unwrap();
        assert!(!bans.is_banned(ip, &rules));
        assert_eq!(bans.after_refusal(ip, "helo.fqdn", &rules), None, "not a banning rule");
        assert_eq!(bans.after_refusal(ip, "dnsbl", &rules), Some(("192.0.2.0/24".parse().unwrap(), 1)));
        assert!(bans.is_banned("192.0.2.1".parse().unwrap(), &rules));
        assert!(!bans.is_banned("192.0.3.1".parse().unwrap(), &rules));
        assert_eq!(bans.active(), 1);
        std::thread::sleep(Duration::from_millis(1100));
        assert!(!bans.is_banned(ip, &rules));
        assert_eq!(bans.active(), 0);
    }

    #[test]
    fn rates_count_per_network_within_the_window() {
        let rates = Rates::default();
        let limits = vec![RateLimit {
            subject: RateSubject::Connections,
            limit: 2,
            window: 60,
            v4_prefix: 24,
            v6_prefix: 64,
            reply: Reply::new(421, "4.7.0", "slow down"),
        }];
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        let b: IpAddr = "198.51.100.2".parse().unwrap();
        assert!(rates.count("mx", RateSubject::Connections, a, &limits).is_none());
        assert!(rates.count("mx", RateSubject::Connections, b, &limits).is_none());
        assert!(rates.count("mx", RateSubject::Connections, a, &limits).is_some(), "third from the /24");
        assert!(rates.count("mx", RateSubject::Messages, a, &limits).is_none(), "messages are not limited");
        assert!(rates.count("mx", RateSubject::Connections, "203.0.113.1".parse().unwrap(), &limits).is_none());
    }
}
