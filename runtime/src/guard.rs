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
use mtac_ruleset::model::{BanRule, BanScope, RateLimit, RateSubject};
use serde::{Deserialize, Serialize};
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

/// The network an AUTH failure is counted and banned on: the address for IPv4, its /64 for IPv6
/// (an IPv6 host owns a /64 and picks any address in it, as the connection limits assume).
pub fn auth_network(ip: IpAddr) -> IpNet {
    network(ip, 32, 64)
}

/// Which farms a ban holds for: one farm by name, or every farm (`ban scope="all-farms"`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum BanFarm {
    Farm(String),
    All,
}

impl BanFarm {
    /// The ban of a rule of `farm` whose scope is `scope`.
    pub fn of(farm: &str, scope: BanScope) -> BanFarm {
        match scope {
            BanScope::Farm => BanFarm::Farm(farm.to_owned()),
            BanScope::AllFarms => BanFarm::All,
        }
    }

    /// Does this ban hold for `farm`?
    pub fn covers(&self, farm: &str) -> bool {
        match self {
            BanFarm::Farm(name) => name == farm,
            BanFarm::All => true,
        }
    }

    /// The farm's name, or `*` for every farm (as `mtac state` shows it).
    pub fn name(&self) -> &str {
        match self {
            BanFarm::Farm(name) => name,
            BanFarm::All => "*",
        }
    }
}

/// One ban in force, as the admin socket lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanEntry {
    pub network: String,
    /// The farm it holds for, `*` for every farm.
    pub farm: String,
    /// Seconds until it ends.
    pub expires_in: u64,
}

/// Bans in force, by network; each network may be banned from several farms, each until its own
/// end. Keyed by network so a lookup allocates nothing.
#[derive(Debug, Default)]
pub struct Bans {
    until: Mutex<Swept<IpNet, Vec<(BanFarm, Instant)>>>,
}

impl Bans {
    /// Is `ip` banned from `farm`: by a ban of any of `rules`' network sizes, or on its AUTH
    /// network (the address, the /64 for IPv6), which AUTH failures ban whatever the ban rules.
    pub fn is_banned(&self, farm: &str, ip: IpAddr, rules: &[BanRule]) -> bool {
        let now = Instant::now();
        let table = self.until.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if table.map.is_empty() {
            return false;
        }
        let holds = |net: IpNet| {
            table.map.get(&net).is_some_and(|bans| bans.iter().any(|(f, end)| *end > now && f.covers(farm)))
        };
        holds(IpNet::from(ip))
            || holds(auth_network(ip))
            || rules.iter().any(|r| holds(network(ip, r.v4_prefix, r.v6_prefix)))
    }

    /// Ban `ip`'s network after `rule` of `farm` refused it, if a ban rule names that rule.
    /// Returns whom it holds for, the network banned and for how many seconds.
    pub fn after_refusal(
        &self,
        farm: &str,
        ip: IpAddr,
        rule: &str,
        rules: &[BanRule],
    ) -> Option<(BanFarm, IpNet, u64)> {
        let ban = rules.iter().find(|b| b.after.iter().any(|r| r == rule))?;
        let net = network(ip, ban.v4_prefix, ban.v6_prefix);
        let seconds = u64::from(ban.seconds);
        let scope = BanFarm::of(farm, ban.scope);
        self.insert(scope.clone(), net, seconds).then_some((scope, net, seconds))
    }

    /// Ban `net` from `farm` for `seconds` (a ban this node decided, or one another node of the
    /// farm announced). Returns false when the table is full.
    pub fn insert(&self, farm: BanFarm, net: IpNet, seconds: u64) -> bool {
        let now = Instant::now();
        let until = now + Duration::from_secs(seconds);
        let mut table = self.until.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !table.make_room(|bans| bans.iter().all(|(_, end)| *end <= now)) && !table.map.contains_key(&net) {
            tracing::warn!(%net, "ban table full; not banning");
            return false;
        }
        let bans = table.map.entry(net).or_default();
        bans.retain(|(_, end)| *end > now);
        // A ban announced twice (ours echoed back by Redis) keeps the later end.
        match bans.iter_mut().find(|(f, _)| *f == farm) {
            Some((_, end)) => *end = (*end).max(until),
            None => bans.push((farm, until)),
        }
        true
    }

    /// Lift the ban of `net` from `farm` (`None`: from every farm). Returns the bans lifted.
    pub fn remove(&self, net: IpNet, farm: Option<&BanFarm>) -> Vec<BanFarm> {
        let now = Instant::now();
        let mut table = self.until.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(bans) = table.map.get_mut(&net) else { return Vec::new() };
        let mut lifted = Vec::new();
        bans.retain(|(f, end)| {
            let lift = farm.is_none_or(|want| want == f);
            if lift && *end > now {
                lifted.push(f.clone());
            }
            !lift
        });
        if bans.is_empty() {
            table.map.remove(&net);
        }
        lifted
    }

    /// Every ban in force (networks in order), or only those covering `ip`.
    pub fn list(&self, ip: Option<IpAddr>) -> Vec<(IpNet, BanFarm, u64)> {
        let now = Instant::now();
        let table = self.until.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out: Vec<(IpNet, BanFarm, u64)> = table
            .map
            .iter()
            .filter(|(net, _)| ip.is_none_or(|ip| net.contains(&ip)))
            .flat_map(|(net, bans)| {
                bans.iter()
                    .filter(|(_, end)| *end > now)
                    .map(|(f, end)| (*net, f.clone(), end.saturating_duration_since(now).as_secs()))
            })
            .collect();
        out.sort();
        out
    }

    /// Bans in force now.
    pub fn active(&self) -> usize {
        let now = Instant::now();
        let table = self.until.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        table.map.values().flat_map(|bans| bans.iter()).filter(|(_, end)| *end > now).count()
    }
}

/// Why an AUTH attempt is refused before any password is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptRefused {
    /// The network already failed `max-failures` times this hour.
    TooManyFailures,
    /// Its failures leave room, but checks under way in its other sessions fill the rest of the
    /// budget: wait for one to end ([`Failures::released`]) and ask again. A webmail server or
    /// an office behind one address logs many users in at once; they wait their turn, they are
    /// not told of failures that never happened.
    Busy,
}

/// One client network's AUTH attempts on one farm.
#[derive(Debug)]
struct Attempts {
    /// The end of the hour its failures count in.
    window_end: Instant,
    failures: u32,
    /// Checks under way.
    pending: u32,
    /// Sessions waiting for a place ([`Turn`]), first come first served.
    waiting: std::collections::VecDeque<u64>,
}

/// Failed AUTH attempts per (farm, client network) over the last hour, across its sessions.
///
/// An attempt is reserved before the password is checked and settled after: concurrent sessions
/// share one budget of `max-failures` checks, so twenty sessions opened at once get five checks
/// in total, not one hundred; the others wait for a check to end, and are refused only once
/// the failures themselves reach the budget.
#[derive(Debug, Default)]
pub struct Failures {
    table: Mutex<Swept<(String, IpNet), Attempts>>,
    /// Woken whenever a check ends or a waiter leaves: sessions waiting on
    /// [`AttemptRefused::Busy`] ask again, and the first in line gets the place.
    released: tokio::sync::Notify,
    /// Numbers for [`Turn`]s.
    turns: std::sync::atomic::AtomicU64,
}

impl Failures {
    /// Reserve one check for `ip` on `farm`, unless its failures and the checks under way
    /// already reach `max`.
    /// The reservation is given back when the returned [`Attempt`] is dropped unsettled (a
    /// session that ends mid-check), so no path leaks a place in the budget.
    ///
    /// Places go in order of asking: a session told `Busy` is put in line in `turn` (keep it
    /// and ask again with it after [`Failures::released`]), and while anyone is in line a
    /// newcomer gets in line behind them rather than the place that just came free. Without
    /// the line, every end of a check woke all the waiters and the quickest took the place,
    /// so some logins of a busy webmail waited for seconds while later ones went through.
    pub fn reserve<'f>(
        &'f self,
        farm: &str,
        ip: IpAddr,
        max: u32,
        turn: &mut Option<Turn<'f>>,
    ) -> Result<Attempt<'f>, AttemptRefused> {
        let now = Instant::now();
        let key = (farm.to_owned(), auth_network(ip));
        let mut table = self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let idle = |a: &Attempts| a.window_end <= now && a.pending == 0 && a.waiting.is_empty();
        if !table.make_room(idle) && !table.map.contains_key(&key) {
            // Full of live entries (a very wide guessing wave): refuse rather than forget.
            return Err(AttemptRefused::TooManyFailures);
        }
        let fresh = || Attempts {
            window_end: now + Duration::from_secs(3600),
            failures: 0,
            pending: 0,
            waiting: std::collections::VecDeque::new(),
        };
        let entry = table.map.entry(key.clone()).or_insert_with(fresh);
        // Places that come free other than by a check's end (a new window, the one before us
        // served with room to spare) must wake the line too: only its first may take them.
        let mut wake_line = false;
        if entry.window_end <= now {
            (entry.window_end, entry.failures) = (now + Duration::from_secs(3600), 0);
            wake_line = !entry.waiting.is_empty();
        }
        if entry.failures >= max {
            return Err(AttemptRefused::TooManyFailures);
        }
        let mine = turn.as_ref().map(|t| t.number);
        let first_in_line = entry.waiting.front().copied() == mine;
        if first_in_line && entry.failures.saturating_add(entry.pending) < max {
            entry.pending = entry.pending.saturating_add(1);
            if mine.is_some() {
                entry.waiting.pop_front();
            }
            wake_line |= !entry.waiting.is_empty() && entry.failures.saturating_add(entry.pending) < max;
            drop(table);
            if let Some(mut served) = turn.take() {
                served.in_line = false;
            }
            if wake_line {
                self.released.notify_waiters();
            }
            return Ok(Attempt { failures: self, key: Some(key) });
        }
        if turn.is_none() {
            let number = self.turns.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            entry.waiting.push_back(number);
            *turn = Some(Turn { failures: self, key, number, in_line: true });
        }
        drop(table);
        if wake_line {
            self.released.notify_waiters();
        }
        Err(AttemptRefused::Busy)
    }

    /// Resolves at the next end of a check. Create it before [`Failures::reserve`] answers
    /// `Busy` (and `enable` it), so a check that ends in between is not missed.
    pub fn released(&self) -> tokio::sync::futures::Notified<'_> {
        self.released.notified()
    }

    /// End a reserved check; `failed` counts it toward the window. The failures in the window.
    fn release(&self, key: &(String, IpNet), failed: bool) -> u32 {
        let failures = {
            let mut table = self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let Some(entry) = table.map.get_mut(key) else { return 0 };
            entry.pending = entry.pending.saturating_sub(1);
            if failed {
                entry.failures = entry.failures.saturating_add(1);
            }
            entry.failures
        };
        self.released.notify_waiters();
        failures
    }

    /// Forget `net`'s failures (an operator lifted its ban).
    pub fn forget(&self, net: IpNet) {
        let mut table = self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        for ((_, key), entry) in table.map.iter_mut() {
            if net.contains(key) || key.contains(&net) {
                entry.failures = 0;
            }
        }
        drop(table);
        // Places came free: the sessions in line ask again.
        self.released.notify_waiters();
    }
}

/// A session's place in line for a check ([`Failures::reserve`]); leaving the line (a session
/// that gives up or ends) lets the next one on.
#[derive(Debug)]
pub struct Turn<'f> {
    failures: &'f Failures,
    key: (String, IpNet),
    number: u64,
    in_line: bool,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        if !self.in_line {
            return;
        }
        {
            let mut table = self.failures.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(entry) = table.map.get_mut(&self.key) {
                entry.waiting.retain(|n| *n != self.number);
            }
        }
        self.failures.released.notify_waiters();
    }
}

/// One AUTH check under way, reserved in [`Failures`]: settled with its outcome, or given back
/// when dropped.
#[derive(Debug)]
pub struct Attempt<'f> {
    failures: &'f Failures,
    key: Option<(String, IpNet)>,
}

impl Attempt<'_> {
    /// The check is over: `failed` counts it toward the window. Returns the failures in the window.
    pub fn settle(mut self, failed: bool) -> u32 {
        match self.key.take() {
            Some(key) => self.failures.release(&key, failed),
            None => 0,
        }
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.failures.release(&key, false);
        }
    }
}

/// Refusals of banned clients, logged at most once per period and farm with how many there were:
/// a wave of banned clients must not turn into a wave of log lines, yet an operator sees that a
/// ban is refusing someone (perhaps a partner).
#[derive(Debug, Default)]
pub struct RefusalLog {
    farms: Mutex<HashMap<String, (Instant, u64)>>,
}

/// How often the refusals of banned clients are logged, per farm.
pub const REFUSAL_LOG_PERIOD: Duration = Duration::from_secs(10);

impl RefusalLog {
    /// Count one refusal on `farm`; `Some(n)` when a line is due, `n` the refusals since the last.
    pub fn note(&self, farm: &str) -> Option<u64> {
        let now = Instant::now();
        let mut farms = self.farms.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match farms.get_mut(farm) {
            Some((last, count)) => {
                *count = count.saturating_add(1);
                if now.duration_since(*last) < REFUSAL_LOG_PERIOD {
                    return None;
                }
                let n = *count;
                *last = now;
                *count = 0;
                Some(n)
            }
            None => {
                farms.insert(farm.to_owned(), (now, 0));
                Some(1)
            }
        }
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
        let rules = vec![BanRule {
            after: vec!["dnsbl".into()],
            seconds: 1,
            v4_prefix: 24,
            v6_prefix: 64,
            scope: BanScope::Farm,
        }];
        let ip: IpAddr = "192.0.2.77".parse().unwrap();
        assert!(!bans.is_banned("mx", ip, &rules));
        assert_eq!(bans.after_refusal("mx", ip, "helo.fqdn", &rules), None, "not a banning rule");
        assert_eq!(
            bans.after_refusal("mx", ip, "dnsbl", &rules),
            Some((BanFarm::Farm("mx".into()), "192.0.2.0/24".parse().unwrap(), 1))
        );
        assert!(bans.is_banned("mx", "192.0.2.1".parse().unwrap(), &rules));
        assert!(!bans.is_banned("mx", "192.0.3.1".parse().unwrap(), &rules));
        assert_eq!(bans.active(), 1);
        std::thread::sleep(Duration::from_millis(1100));
        assert!(!bans.is_banned("mx", ip, &rules));
        assert_eq!(bans.active(), 0);
    }

    /// Issue 14: a ban earned on one farm (five failed logins on submission) must not refuse
    /// the client on another (its MTA's mail on port 25), unless the rule says `all-farms`.
    #[test]
    fn issue_14_a_ban_holds_for_the_farm_that_earned_it_unless_shared() {
        let bans = Bans::default();
        let ip: IpAddr = "198.51.100.9".parse().unwrap();
        assert!(bans.insert(BanFarm::Farm("submission".into()), auth_network(ip), 60));
        assert!(bans.is_banned("submission", ip, &[]));
        assert!(!bans.is_banned("mx", ip, &[]), "the MX farm still takes its mail");
        let shared = vec![BanRule {
            after: vec!["access".into()],
            seconds: 60,
            v4_prefix: 32,
            v6_prefix: 128,
            scope: BanScope::AllFarms,
        }];
        let other: IpAddr = "198.51.100.10".parse().unwrap();
        assert_eq!(bans.after_refusal("mx", other, "access", &shared).map(|b| b.0), Some(BanFarm::All));
        assert!(bans.is_banned("submission", other, &[]) && bans.is_banned("mx", other, &[]));
        assert_eq!(bans.list(None).len(), 2);
        assert_eq!(bans.remove(auth_network(ip), None), vec![BanFarm::Farm("submission".into())]);
        assert!(!bans.is_banned("submission", ip, &[]));
    }

    /// Issue 14: an IPv6 host picks any address of its /64; its failures and its ban are one.
    #[test]
    fn issue_14_auth_failures_and_bans_key_ipv6_on_the_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::7".parse().unwrap();
        let elsewhere: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(auth_network(a), "2001:db8:1:2::/64".parse::<IpNet>().unwrap());
        assert_eq!(auth_network("192.0.2.7".parse().unwrap()), "192.0.2.7/32".parse::<IpNet>().unwrap());
        let failures = Failures::default();
        for ip in [a, b, a] {
            failures.reserve("users", ip, 3, &mut None).unwrap().settle(true);
        }
        assert_eq!(failures.reserve("users", b, 3, &mut None).err(), Some(AttemptRefused::TooManyFailures), "same /64");
        assert!(failures.reserve("users", elsewhere, 3, &mut None).is_ok());
        let bans = Bans::default();
        bans.insert(BanFarm::Farm("users".into()), auth_network(a), 60);
        assert!(bans.is_banned("users", b, &[]) && !bans.is_banned("users", elsewhere, &[]));
    }

    /// Issue 14: checks under way count against the budget, so parallel sessions share it; a
    /// success gives its reservation back.
    #[test]
    fn issue_14_parallel_attempts_share_one_budget() {
        let failures = Failures::default();
        let ip: IpAddr = "192.0.2.50".parse().unwrap();
        let mut reserved: Vec<Attempt<'_>> =
            (0..20).filter_map(|_| failures.reserve("users", ip, 5, &mut None).ok()).collect();
        assert_eq!(reserved.len(), 5, "twenty at once, five checks");
        assert_eq!(
            failures.reserve("users", ip, 5, &mut None).err(),
            Some(AttemptRefused::Busy),
            "the sixth waits: no check has failed yet"
        );
        assert_eq!(reserved.pop().unwrap().settle(false), 0, "a success counts no failure");
        assert!(failures.reserve("users", ip, 5, &mut None).is_ok(), "and frees its place");
        drop(reserved.pop());
        assert!(
            failures.reserve("users", ip, 5, &mut None).is_ok(),
            "an attempt dropped unsettled (its session ended) frees its place too"
        );
        assert!(failures.reserve("other-farm", ip, 5, &mut None).is_ok(), "another farm has its own budget");
        failures.forget(auth_network(ip));
    }

    /// `ip`'s budget of 2 checks on "users" taken, and `N` sessions in line behind them, in order.
    fn full_with_a_line<const N: usize>(failures: &Failures, ip: IpAddr) -> (Vec<Attempt<'_>>, [Option<Turn<'_>>; N]) {
        let checks = (0..2).map(|_| failures.reserve("users", ip, 2, &mut None).unwrap()).collect();
        let line = std::array::from_fn(|_| {
            let mut turn = None;
            assert_eq!(failures.reserve("users", ip, 2, &mut turn).err(), Some(AttemptRefused::Busy));
            turn
        });
        (checks, line)
    }

    /// Sessions told to wait get the places in the order they asked; a newcomer queues behind
    /// them even when it asks just as a place comes free; one that leaves the line lets the
    /// next one on.
    #[test]
    fn places_in_the_budget_go_first_come_first_served() {
        let failures = Failures::default();
        let ip: IpAddr = "192.0.2.60".parse().unwrap();
        let (mut checks, [mut first, mut second, mut third]) = full_with_a_line(&failures, ip);
        checks.pop().unwrap().settle(false);
        assert_eq!(failures.reserve("users", ip, 2, &mut None).err(), Some(AttemptRefused::Busy), "no cutting in");
        assert_eq!(failures.reserve("users", ip, 2, &mut second).err(), Some(AttemptRefused::Busy), "not its turn");
        checks.push(failures.reserve("users", ip, 2, &mut first).unwrap());
        assert!(first.is_none(), "out of the line once served");
        checks.pop().unwrap().settle(false);
        drop(second.take());
        // The second left the line: the third's turn.
        checks.push(failures.reserve("users", ip, 2, &mut third).unwrap());
        assert_eq!(failures.reserve("users", ip, 2, &mut None).err(), Some(AttemptRefused::Busy), "both places taken");
        drop(checks);
        assert!(failures.reserve("users", ip, 2, &mut None).is_ok(), "an empty line: straight in");
    }

    /// Two checks end before either waiter asks again (one wake-up for both): when the first
    /// in line is served and a place is left, the next in line is woken for it, not left
    /// asleep until another check ends.
    #[tokio::test]
    async fn a_place_left_after_the_first_in_line_is_served_wakes_the_next() {
        let failures = Failures::default();
        let ip: IpAddr = "192.0.2.61".parse().unwrap();
        let (checks, [mut first, mut second]) = full_with_a_line(&failures, ip);
        for check in checks {
            check.settle(false);
        }
        // The second asks first (not its turn) and goes back to waiting, registered anew.
        let released = failures.released();
        tokio::pin!(released);
        released.as_mut().enable();
        assert_eq!(failures.reserve("users", ip, 2, &mut second).err(), Some(AttemptRefused::Busy));
        let _served = failures.reserve("users", ip, 2, &mut first).unwrap();
        let woken = tokio::time::timeout(Duration::ZERO, released).await;
        assert!(woken.is_ok(), "the second in line sleeps beside a free place");
        assert!(failures.reserve("users", ip, 2, &mut second).is_ok());
    }

    #[test]
    fn refusals_of_banned_clients_are_logged_once_per_period_with_a_count() {
        let log = RefusalLog::default();
        assert_eq!(log.note("mx"), Some(1), "the first one at once");
        assert_eq!((0..50).filter_map(|_| log.note("mx")).count(), 0, "then quiet");
        assert_eq!(log.note("users"), Some(1), "per farm");
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
