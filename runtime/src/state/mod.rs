//! The state store: greylist triplets, auto-whitelist counts, and (with Redis) bans shared by a
//! farm.
//!
//! Two implementations behind one type, chosen in the policy (`state`):
//! - **embedded** (the default): a redb file on the node. It survives restarts; one node's view.
//!   Writes commit without fsync and a background task makes them durable every second — a
//!   crash loses at most a second of greylist entries (senders are greylisted once more), never
//!   mail — and sweeps expired entries.
//! - **redis**: one Redis shared by the farm, so a sender's retry passes on whichever node the
//!   load balancer picks (seed 004). The triplet update is one Lua script (atomic, one round
//!   trip); entries expire by Redis TTLs. Bans are `SET … EX` plus a `PUBLISH`; every node mirrors
//!   them into its in-memory table, so the accept path never waits on Redis. The connection is a
//!   `ConnectionManager` (reconnects by itself); while Redis is unreachable each call fails fast
//!   (the policy's timeout) and the policy's `on-failure` decides: 451 or accept.
//!
//! Times are Unix seconds from the node's clock (farm nodes keep NTP time; a skew of seconds only
//! shifts a delay measured in minutes); [`since_epoch`] is the runtime's one reading of it.
//!
//! This file is the public face: the verdict and entry types and [`Store`], which hands each call
//! to `embedded.rs` (the redb file and its value encodings, off the async workers) or `redis.rs`
//! (scripts, pipelines, key scans); `bans.rs` holds the ban keys and announcements both sides of
//! Redis read. **Invariant:** a store error is never a refusal of its own: the caller defers or
//! accepts as the policy's `on-failure` says.

mod bans;
mod embedded;
mod listing;
mod redis;

pub use self::redis::RedisStore;
pub use bans::{ban_key, ban_message, parse_ban_key, parse_ban_message, BAN_CHANNEL};
pub use embedded::Embedded;
pub use listing::{ListKind, Listed, Page, MAX_PAGE};

use mtac_ruleset::model::{Greylist, StateSettings};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The delivery count `mtac state --whitelist` gives a client (and the Redis script's threshold
/// when auto-whitelisting is off): more than any sender delivers within an entry's lifetime.
pub const OPERATOR_WHITELIST: u64 = 1_000_000_000;

/// Why the store could not answer. Never a reason for a 5xx: the caller defers or accepts.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("embedded store: {0}")]
    Embedded(String),
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
}

/// An error of redb (or of the blocking task that ran it), as a [`StateError`].
fn embedded<E: std::fmt::Display>(e: E) -> StateError {
    StateError::Embedded(e.to_string())
}

/// One greylist triplet: who (a network or a sender pool's domain), from whom, to whom.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Triplet {
    /// `net:192.0.2.0/24` or `dns:example.com`.
    pub client: String,
    /// Lower-cased; empty for the null sender.
    pub sender: String,
    pub recipient: String,
}

impl Triplet {
    pub fn new(client: String, sender: &str, recipient: &str) -> Triplet {
        Triplet { client, sender: sender.to_ascii_lowercase(), recipient: recipient.to_ascii_lowercase() }
    }

    /// `CLIENT|SENDER|RECIPIENT`: the embedded table's key, and Redis's after `mtac:g:`.
    pub fn key(&self) -> String {
        format!("{}|{}|{}", self.client, self.sender, self.recipient)
    }
}

/// What the store said about a triplet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GreylistVerdict {
    /// Never seen (or its retry window had closed): recorded now, deferred.
    New,
    /// Seen `age` seconds ago, before the delay ended: deferred again.
    Early { age: u64 },
    /// Retried `waited` seconds after the first attempt, within the window: passes from now on.
    /// `other_address`: the retry came from another address than the first attempt.
    Passed { waited: u64, other_address: bool },
    /// Passed before and still remembered.
    Known,
    /// The client has had enough messages delivered: not greylisted any more.
    AutoWhitelisted,
}

impl GreylistVerdict {
    pub fn passes(self) -> bool {
        matches!(self, GreylistVerdict::Passed { .. } | GreylistVerdict::Known | GreylistVerdict::AutoWhitelisted)
    }

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            GreylistVerdict::New => "new",
            GreylistVerdict::Early { .. } => "early",
            GreylistVerdict::Passed { .. } => "passed",
            GreylistVerdict::Known => "known",
            GreylistVerdict::AutoWhitelisted => "auto-whitelisted",
        }
    }
}

/// A triplet as stored, for `mtac state`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    /// Unix seconds of the first attempt (of the current window).
    pub first_seen: u64,
    pub passed: bool,
    /// The address of the first attempt.
    pub first_address: String,
    /// Seconds until the entry is forgotten.
    pub expires_in: u64,
}

/// Entry counts, for `mtac state` and the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    pub waiting: u64,
    pub passed: u64,
    pub auto_whitelist: u64,
    pub bans: u64,
}

/// The greylist timings of a farm, in seconds.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    pub delay: u64,
    pub retry_window: u64,
    pub lifetime: u64,
    pub auto_whitelist: u32,
}

impl From<&Greylist> for Timings {
    fn from(g: &Greylist) -> Timings {
        Timings {
            delay: u64::from(g.delay),
            retry_window: u64::from(g.retry_window),
            lifetime: u64::from(g.lifetime),
            auto_whitelist: g.auto_whitelist,
        }
    }
}

/// Time since the Unix epoch by the node's clock (zero for a clock set before 1970): the one
/// reading of the clock behind the store's times, the metrics' timestamps and `mtac status`.
pub fn since_epoch() -> Duration {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default()
}

/// Whole seconds of [`since_epoch`]: the unit of every time the store keeps.
pub fn unix_now() -> u64 {
    since_epoch().as_secs()
}

/// The node's state store.
#[derive(Clone)]
pub enum Store {
    Embedded(Arc<Embedded>),
    Redis(Arc<RedisStore>),
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Store::Embedded(_) => f.write_str("Store::Embedded"),
            Store::Redis(_) => f.write_str("Store::Redis"),
        }
    }
}

impl Store {
    /// Open the store the policy names. The embedded file is created (with its directory) if
    /// missing; Redis is connected lazily, so a node starts even while Redis is down.
    pub fn open(settings: &StateSettings) -> Result<Store, StateError> {
        match settings {
            StateSettings::Embedded { path } => Ok(Store::Embedded(Arc::new(Embedded::open(Path::new(path))?))),
            StateSettings::Redis { url, timeout_ms, fail_open: _ } => {
                let client = ::redis::Client::open(url.as_str())?;
                Ok(Store::Redis(Arc::new(RedisStore::new(client, Duration::from_millis(u64::from(*timeout_ms))))))
            }
            StateSettings::RedisSentinel { sentinels, service, db, timeout_ms, fail_open: _ } => {
                let timeout = Duration::from_millis(u64::from(*timeout_ms));
                Ok(Store::Redis(Arc::new(RedisStore::sentinel(sentinels, service, *db, timeout)?)))
            }
        }
    }

    /// Greylist one attempt of `triplet` from `address`.
    pub async fn greylist(
        &self,
        triplet: &Triplet,
        address: IpAddr,
        timings: Timings,
    ) -> Result<GreylistVerdict, StateError> {
        let now = unix_now();
        match self {
            Store::Embedded(db) => {
                let (triplet, address) = (triplet.clone(), address.to_string());
                db.off_worker(move |db| db.greylist(&triplet, &address, timings, now)).await
            }
            Store::Redis(r) => r.greylist(triplet, address, timings, now).await,
        }
    }

    /// A message from `client` was delivered: count it toward auto-whitelisting.
    pub async fn delivered(&self, client: &str, timings: Timings) -> Result<(), StateError> {
        if timings.auto_whitelist == 0 {
            return Ok(());
        }
        let now = unix_now();
        match self {
            Store::Embedded(db) => {
                let client = client.to_owned();
                db.off_worker(move |db| db.delivered(&client, timings.lifetime, now)).await
            }
            Store::Redis(r) => r.delivered(client, timings.lifetime).await,
        }
    }

    /// The stored state of one triplet, if any.
    pub async fn entry(&self, triplet: &Triplet) -> Result<Option<Entry>, StateError> {
        let now = unix_now();
        match self {
            Store::Embedded(db) => {
                let triplet = triplet.clone();
                db.off_worker(move |db| db.entry(&triplet, now)).await
            }
            Store::Redis(r) => r.entry(triplet).await,
        }
    }

    /// Messages delivered from `client` (its auto-whitelist count).
    pub async fn deliveries(&self, client: &str) -> Result<u64, StateError> {
        let now = unix_now();
        match self {
            Store::Embedded(db) => {
                let client = client.to_owned();
                db.off_worker(move |db| db.deliveries(&client, now)).await
            }
            Store::Redis(r) => r.deliveries(client).await,
        }
    }

    /// `client` (an address) passed the pregreet test: remember it for `ttl` seconds.
    pub async fn pregreet_passed(&self, client: IpAddr, ttl: u64) -> Result<(), StateError> {
        let now = unix_now();
        let client = client.to_string();
        match self {
            Store::Embedded(db) => db.off_worker(move |db| db.pregreet_passed(&client, ttl, now)).await,
            Store::Redis(r) => r.pregreet_passed(&client, ttl).await,
        }
    }

    /// Whether `client` passed the pregreet test within its TTL.
    pub async fn pregreet_known(&self, client: IpAddr) -> Result<bool, StateError> {
        let now = unix_now();
        let client = client.to_string();
        match self {
            Store::Embedded(db) => db.off_worker(move |db| db.pregreet_known(&client, now)).await,
            Store::Redis(r) => r.pregreet_known(&client).await,
        }
    }

    /// How many entries of each kind (Redis: a SCAN of the keyspace, O(entries)).
    pub async fn counts(&self) -> Result<Counts, StateError> {
        let now = unix_now();
        match self {
            Store::Embedded(db) => db.off_worker(move |db| db.counts(now)).await,
            Store::Redis(r) => r.counts().await,
        }
    }

    /// Whether failures of this store let mail through (the policy's `on-failure="accept"`).
    pub fn fail_open(settings: &StateSettings) -> bool {
        matches!(
            settings,
            StateSettings::Redis { fail_open: true, .. } | StateSettings::RedisSentinel { fail_open: true, .. }
        )
    }
}
