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
//! shifts a delay measured in minutes).

use crate::guard::BanFarm;
use ipnet::IpNet;
use mtac_ruleset::model::{Greylist, StateSettings};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Why the store could not answer. Never a reason for a 5xx: the caller defers or accepts.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("embedded store: {0}")]
    Embedded(String),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
}

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

    fn key(&self) -> String {
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

pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
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
                let client = redis::Client::open(url.as_str())?;
                Ok(Store::Redis(Arc::new(RedisStore::new(client, Duration::from_millis(u64::from(*timeout_ms))))))
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
                let (db, triplet) = (db.clone(), triplet.clone());
                let address = address.to_string();
                tokio::task::spawn_blocking(move || db.greylist(&triplet, &address, timings, now))
                    .await
                    .map_err(embedded)?
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
                let (db, client) = (db.clone(), client.to_owned());
                tokio::task::spawn_blocking(move || db.delivered(&client, timings.lifetime, now))
                    .await
                    .map_err(embedded)?
            }
            Store::Redis(r) => r.delivered(client, timings.lifetime).await,
        }
    }

    /// The stored state of one triplet, if any.
    pub async fn entry(&self, triplet: &Triplet) -> Result<Option<Entry>, StateError> {
        let now = unix_now();
        match self {
            Store::Embedded(db) => {
                let (db, triplet) = (db.clone(), triplet.clone());
                tokio::task::spawn_blocking(move || db.entry(&triplet, now)).await.map_err(embedded)?
            }
            Store::Redis(r) => r.entry(triplet).await,
        }
    }

    /// Messages delivered from `client` (its auto-whitelist count).
    pub async fn deliveries(&self, client: &str) -> Result<u64, StateError> {
        let now = unix_now();
        match self {
            Store::Embedded(db) => {
                let (db, client) = (db.clone(), client.to_owned());
                tokio::task::spawn_blocking(move || db.deliveries(&client, now)).await.map_err(embedded)?
            }
            Store::Redis(r) => r.deliveries(client).await,
        }
    }

    /// How many entries of each kind (Redis: a SCAN of the keyspace, O(entries)).
    pub async fn counts(&self) -> Result<Counts, StateError> {
        let now = unix_now();
        match self {
            Store::Embedded(db) => {
                let db = db.clone();
                tokio::task::spawn_blocking(move || db.counts(now)).await.map_err(embedded)?
            }
            Store::Redis(r) => r.counts().await,
        }
    }

    /// Whether failures of this store let mail through (the policy's `on-failure="accept"`).
    pub fn fail_open(settings: &StateSettings) -> bool {
        matches!(settings, StateSettings::Redis { fail_open: true, .. })
    }
}

// ----- embedded (redb) -------------------------------------------------------------------------

const TRIPLETS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("greylist");
const AWL: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("auto-whitelist");

/// The embedded store: one redb database file.
pub struct Embedded {
    db: redb::Database,
}

/// A stored triplet: first seen, passed (0/1), expires, first address.
fn encode_triplet(first: u64, passed: bool, expires: u64, address: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(17 + address.len());
    v.extend_from_slice(&first.to_le_bytes());
    v.push(u8::from(passed));
    v.extend_from_slice(&expires.to_le_bytes());
    v.extend_from_slice(address.as_bytes());
    v
}

fn decode_triplet(v: &[u8]) -> Option<(u64, bool, u64, String)> {
    let first = u64::from_le_bytes(v.get(..8)?.try_into().ok()?);
    let passed = *v.get(8)? == 1;
    let expires = u64::from_le_bytes(v.get(9..17)?.try_into().ok()?);
    let address = String::from_utf8_lossy(v.get(17..)?).into_owned();
    Some((first, passed, expires, address))
}

fn encode_count(count: u64, expires: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&count.to_le_bytes());
    v[8..].copy_from_slice(&expires.to_le_bytes());
    v
}

fn decode_count(v: &[u8]) -> Option<(u64, u64)> {
    Some((u64::from_le_bytes(v.get(..8)?.try_into().ok()?), u64::from_le_bytes(v.get(8..16)?.try_into().ok()?)))
}

impl Embedded {
    pub fn open(path: &Path) -> Result<Embedded, StateError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StateError::Embedded(format!("{}: {e}", dir.display())))?;
        }
        let db = redb::Database::create(path).map_err(|e| StateError::Embedded(format!("{}: {e}", path.display())))?;
        // Create the tables so that readers find them.
        let txn = db.begin_write().map_err(embedded)?;
        txn.open_table(TRIPLETS).map_err(embedded)?;
        txn.open_table(AWL).map_err(embedded)?;
        txn.commit().map_err(embedded)?;
        Ok(Embedded { db })
    }

    fn write(&self) -> Result<redb::WriteTransaction, StateError> {
        let mut txn = self.db.begin_write().map_err(embedded)?;
        // Durable once a second by `persist`, not at every RCPT.
        txn.set_durability(redb::Durability::None).map_err(embedded)?;
        Ok(txn)
    }

    fn greylist(&self, t: &Triplet, address: &str, timings: Timings, now: u64) -> Result<GreylistVerdict, StateError> {
        use redb::ReadableTable;
        let txn = self.write()?;
        let verdict = {
            if timings.auto_whitelist > 0 {
                let awl = txn.open_table(AWL).map_err(embedded)?;
                let count = awl.get(t.client.as_str()).map_err(embedded)?.and_then(|v| decode_count(v.value()));
                if count.is_some_and(|(n, expires)| expires > now && n >= u64::from(timings.auto_whitelist)) {
                    return Ok(GreylistVerdict::AutoWhitelisted);
                }
            }
            let mut table = txn.open_table(TRIPLETS).map_err(embedded)?;
            let key = t.key();
            let current = table
                .get(key.as_str())
                .map_err(embedded)?
                .and_then(|v| decode_triplet(v.value()))
                .filter(|(_, _, expires, _)| *expires > now);
            let fresh = encode_triplet(now, false, now + timings.delay + timings.retry_window, address);
            let (verdict, value) = match current {
                None => (GreylistVerdict::New, Some(fresh)),
                Some((first, true, _, ip)) => {
                    (GreylistVerdict::Known, Some(encode_triplet(first, true, now + timings.lifetime, &ip)))
                }
                Some((first, false, _, _)) if now.saturating_sub(first) < timings.delay => {
                    (GreylistVerdict::Early { age: now.saturating_sub(first) }, None)
                }
                Some((first, false, _, ip)) => {
                    let waited = now.saturating_sub(first);
                    let passed = GreylistVerdict::Passed { waited, other_address: ip != address };
                    (passed, Some(encode_triplet(first, true, now + timings.lifetime, &ip)))
                }
            };
            if let Some(value) = value {
                table.insert(key.as_str(), value.as_slice()).map_err(embedded)?;
            }
            verdict
        };
        txn.commit().map_err(embedded)?;
        Ok(verdict)
    }

    fn delivered(&self, client: &str, lifetime: u64, now: u64) -> Result<(), StateError> {
        use redb::ReadableTable;
        let txn = self.write()?;
        {
            let mut awl = txn.open_table(AWL).map_err(embedded)?;
            let count = awl
                .get(client)
                .map_err(embedded)?
                .and_then(|v| decode_count(v.value()))
                .filter(|(_, expires)| *expires > now)
                .map_or(0, |(n, _)| n);
            awl.insert(client, encode_count(count.saturating_add(1), now + lifetime).as_slice()).map_err(embedded)?;
        }
        txn.commit().map_err(embedded)
    }

    fn entry(&self, t: &Triplet, now: u64) -> Result<Option<Entry>, StateError> {
        use redb::ReadableDatabase;
        let txn = self.db.begin_read().map_err(embedded)?;
        let table = txn.open_table(TRIPLETS).map_err(embedded)?;
        let value = table.get(t.key().as_str()).map_err(embedded)?;
        Ok(value.and_then(|v| decode_triplet(v.value())).filter(|(_, _, expires, _)| *expires > now).map(
            |(first, passed, expires, first_address)| Entry {
                first_seen: first,
                passed,
                first_address,
                expires_in: expires - now,
            },
        ))
    }

    fn deliveries(&self, client: &str, now: u64) -> Result<u64, StateError> {
        use redb::ReadableDatabase;
        let txn = self.db.begin_read().map_err(embedded)?;
        let awl = txn.open_table(AWL).map_err(embedded)?;
        let value = awl.get(client).map_err(embedded)?;
        Ok(value.and_then(|v| decode_count(v.value())).filter(|(_, e)| *e > now).map_or(0, |(n, _)| n))
    }

    fn counts(&self, now: u64) -> Result<Counts, StateError> {
        use redb::{ReadableDatabase, ReadableTable};
        let txn = self.db.begin_read().map_err(embedded)?;
        let mut counts = Counts::default();
        for row in txn.open_table(TRIPLETS).map_err(embedded)?.iter().map_err(embedded)? {
            let (_, v) = row.map_err(embedded)?;
            match decode_triplet(v.value()) {
                Some((_, true, e, _)) if e > now => counts.passed += 1,
                Some((_, false, e, _)) if e > now => counts.waiting += 1,
                _ => {}
            }
        }
        for row in txn.open_table(AWL).map_err(embedded)?.iter().map_err(embedded)? {
            let (_, v) = row.map_err(embedded)?;
            if decode_count(v.value()).is_some_and(|(_, e)| e > now) {
                counts.auto_whitelist += 1;
            }
        }
        Ok(counts)
    }

    /// Make the non-durable commits durable.
    pub fn persist(&self) -> Result<(), StateError> {
        let mut txn = self.db.begin_write().map_err(embedded)?;
        txn.set_durability(redb::Durability::Immediate).map_err(embedded)?;
        txn.commit().map_err(embedded)
    }

    /// Remove expired entries; returns how many.
    pub fn sweep(&self, now: u64) -> Result<u64, StateError> {
        let txn = self.write()?;
        let mut removed = 0u64;
        {
            let mut table = txn.open_table(TRIPLETS).map_err(embedded)?;
            table
                .retain(|_, v| {
                    let keep = decode_triplet(v).is_some_and(|(_, _, e, _)| e > now);
                    removed += u64::from(!keep);
                    keep
                })
                .map_err(embedded)?;
            let mut awl = txn.open_table(AWL).map_err(embedded)?;
            awl.retain(|_, v| {
                let keep = decode_count(v).is_some_and(|(_, e)| e > now);
                removed += u64::from(!keep);
                keep
            })
            .map_err(embedded)?;
        }
        txn.commit().map_err(embedded)?;
        Ok(removed)
    }

    /// Persist every second and sweep every five minutes, until aborted.
    pub fn spawn_maintenance(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let db = self.clone();
        tokio::spawn(async move {
            let mut tick = 0u64;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                tick += 1;
                let db = db.clone();
                let sweep = tick.is_multiple_of(300);
                let result = tokio::task::spawn_blocking(move || {
                    if sweep {
                        db.sweep(unix_now())?;
                    }
                    db.persist()
                })
                .await;
                if let Ok(Err(e)) = result {
                    tracing::error!(error = %e, "state store: cannot persist");
                }
            }
        })
    }
}

// ----- Redis -----------------------------------------------------------------------------------

/// Keys: `mtac:g:CLIENT|SENDER|RCPT` (hash: first, passed, ip), `mtac:awl:CLIENT` (counter),
/// `mtac:ban:NETWORK`; bans are announced on the channel `mtac:bans`.
const GREYLIST_SCRIPT: &str = r"
local now = tonumber(ARGV[1])
local delay = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local lifetime = tonumber(ARGV[4])
local awl = tonumber(ARGV[5])
if awl > 0 then
  local n = tonumber(redis.call('GET', KEYS[2]) or '0')
  if n >= awl then return {4, 0, 0} end
end
local e = redis.call('HMGET', KEYS[1], 'first', 'passed', 'ip')
if not e[1] then
  redis.call('HSET', KEYS[1], 'first', now, 'passed', 0, 'ip', ARGV[6])
  redis.call('EXPIRE', KEYS[1], delay + window)
  return {0, 0, 0}
end
local first = tonumber(e[1])
if e[2] == '1' then
  redis.call('EXPIRE', KEYS[1], lifetime)
  return {3, 0, 0}
end
local age = now - first
if age < delay then return {1, age, 0} end
redis.call('HSET', KEYS[1], 'passed', 1)
redis.call('EXPIRE', KEYS[1], lifetime)
local other = 0
if e[3] ~= ARGV[6] then other = 1 end
return {2, age, other}
";

pub const BAN_CHANNEL: &str = "mtac:bans";

/// The Redis store: a lazily (re)connected multiplexed connection.
pub struct RedisStore {
    client: redis::Client,
    timeout: Duration,
    connection: tokio::sync::Mutex<Option<redis::aio::ConnectionManager>>,
    script: redis::Script,
}

impl RedisStore {
    fn new(client: redis::Client, timeout: Duration) -> RedisStore {
        RedisStore {
            client,
            timeout,
            connection: tokio::sync::Mutex::new(None),
            script: redis::Script::new(GREYLIST_SCRIPT),
        }
    }

    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// The connection, made on first use. The manager reconnects by itself afterwards; the
    /// mutex is held only to clone the handle (the manager multiplexes every session's commands).
    async fn connection(&self) -> Result<redis::aio::ConnectionManager, StateError> {
        let mut slot = self.connection.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let manager = tokio::time::timeout(
            self.timeout * 2,
            redis::aio::ConnectionManager::new_with_config(self.client.clone(), config),
        )
        .await
        .map_err(|_| StateError::Timeout(self.timeout))??;
        *slot = Some(manager.clone());
        Ok(manager)
    }

    async fn run<T>(
        &self,
        op: impl AsyncFnOnce(redis::aio::ConnectionManager) -> redis::RedisResult<T>,
    ) -> Result<T, StateError> {
        let connection = self.connection().await?;
        tokio::time::timeout(self.timeout, op(connection))
            .await
            .map_err(|_| StateError::Timeout(self.timeout))?
            .map_err(Into::into)
    }

    async fn greylist(
        &self,
        t: &Triplet,
        address: IpAddr,
        timings: Timings,
        now: u64,
    ) -> Result<GreylistVerdict, StateError> {
        let key = format!("mtac:g:{}", t.key());
        let awl = format!("mtac:awl:{}", t.client);
        let address = address.to_string();
        let answer: (u8, u64, u8) = self
            .run(async |mut c| {
                self.script
                    .key(&key)
                    .key(&awl)
                    .arg(now)
                    .arg(timings.delay)
                    .arg(timings.retry_window)
                    .arg(timings.lifetime)
                    .arg(timings.auto_whitelist)
                    .arg(&address)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(match answer {
            (0, _, _) => GreylistVerdict::New,
            (1, age, _) => GreylistVerdict::Early { age },
            (2, waited, other) => GreylistVerdict::Passed { waited, other_address: other == 1 },
            (3, _, _) => GreylistVerdict::Known,
            _ => GreylistVerdict::AutoWhitelisted,
        })
    }

    async fn delivered(&self, client: &str, lifetime: u64) -> Result<(), StateError> {
        let key = format!("mtac:awl:{client}");
        self.run(async |mut c| {
            redis::pipe()
                .atomic()
                .incr(&key, 1)
                .ignore()
                .expire(&key, lifetime as i64)
                .ignore()
                .query_async(&mut c)
                .await
        })
        .await
    }

    async fn entry(&self, t: &Triplet) -> Result<Option<Entry>, StateError> {
        let key = format!("mtac:g:{}", t.key());
        let (first, passed, ip, ttl): (Option<u64>, Option<u8>, Option<String>, i64) = self
            .run(async |mut c| {
                redis::pipe()
                    .hget(&key, "first")
                    .hget(&key, "passed")
                    .hget(&key, "ip")
                    .ttl(&key)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(first.map(|first| Entry {
            first_seen: first,
            passed: passed == Some(1),
            first_address: ip.unwrap_or_default(),
            expires_in: u64::try_from(ttl).unwrap_or(0),
        }))
    }

    async fn deliveries(&self, client: &str) -> Result<u64, StateError> {
        let key = format!("mtac:awl:{client}");
        let n: Option<u64> = self.run(async |mut c| redis::cmd("GET").arg(&key).query_async(&mut c).await).await?;
        Ok(n.unwrap_or(0))
    }

    async fn counts(&self) -> Result<Counts, StateError> {
        let mut counts = Counts::default();
        let connection = self.connection().await?;
        for (pattern, slot) in [("mtac:g:*", 0usize), ("mtac:awl:*", 1), ("mtac:ban:*", 2)] {
            let mut c = connection.clone();
            let mut cursor = 0u64;
            loop {
                let (next, keys): (u64, Vec<String>) = tokio::time::timeout(
                    self.timeout,
                    redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(1000).query_async(&mut c),
                )
                .await
                .map_err(|_| StateError::Timeout(self.timeout))??;
                if slot == 0 {
                    for key in &keys {
                        let passed: Option<u8> = redis::cmd("HGET").arg(key).arg("passed").query_async(&mut c).await?;
                        if passed == Some(1) {
                            counts.passed += 1;
                        } else {
                            counts.waiting += 1;
                        }
                    }
                } else if slot == 1 {
                    counts.auto_whitelist += keys.len() as u64;
                } else {
                    counts.bans += keys.len() as u64;
                }
                cursor = next;
                if cursor == 0 {
                    break;
                }
            }
        }
        Ok(counts)
    }

    /// Count one event in a fixed window shared by the farm; returns the count so far in the
    /// window. The key carries the window's start, so every node counts in the same window.
    pub async fn count_rate(&self, key: &str, window: u64) -> Result<u64, StateError> {
        let window = window.max(1);
        let start = unix_now() / window * window;
        let key = format!("mtac:rate:{key}:{start}");
        let (count,): (u64,) = self
            .run(async |mut c| {
                redis::pipe().incr(&key, 1).expire(&key, window as i64 + 1).ignore().query_async(&mut c).await
            })
            .await?;
        Ok(count)
    }

    /// Record a ban and tell every node. The key and the announcement carry the farm the ban
    /// holds for (see [`ban_key`]).
    pub async fn ban(&self, farm: &BanFarm, network: IpNet, seconds: u64) -> Result<(), StateError> {
        let key = ban_key(farm, network);
        let message = ban_message(farm, network, seconds);
        self.run(async |mut c| {
            redis::pipe()
                .set_ex(&key, 1, seconds)
                .ignore()
                .publish(BAN_CHANNEL, &message)
                .ignore()
                .query_async(&mut c)
                .await
        })
        .await
    }

    /// Lift a ban on the farm: delete its key and tell every node (an announcement of 0 seconds).
    pub async fn unban(&self, farm: &BanFarm, network: IpNet) -> Result<(), StateError> {
        let key = ban_key(farm, network);
        let message = ban_message(farm, network, 0);
        self.run(async |mut c| {
            redis::pipe().del(&key).ignore().publish(BAN_CHANNEL, &message).ignore().query_async(&mut c).await
        })
        .await
    }

    /// Bans in force on the farm: whom each holds for, the network, its remaining seconds.
    pub async fn bans(&self) -> Result<Vec<(BanFarm, IpNet, u64)>, StateError> {
        let connection = self.connection().await?;
        let mut c = connection.clone();
        let mut cursor = 0u64;
        let mut bans = Vec::new();
        loop {
            let (next, keys): (u64, Vec<String>) = tokio::time::timeout(
                self.timeout,
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg("mtac:ban:*")
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut c),
            )
            .await
            .map_err(|_| StateError::Timeout(self.timeout))??;
            for key in keys {
                let ttl: i64 = redis::cmd("TTL").arg(&key).query_async(&mut c).await?;
                if let (Some((farm, net)), Ok(ttl)) = (parse_ban_key(&key), u64::try_from(ttl)) {
                    bans.push((farm, net, ttl));
                }
            }
            cursor = next;
            if cursor == 0 {
                return Ok(bans);
            }
        }
    }
}

/// `mtac:ban:NETWORK@FARM` for a farm's ban, `mtac:ban:NETWORK` for one that holds for every
/// farm (what every ban was before bans carried their farm: a node of the older version still
/// reads them right). A network never contains `@`, a farm name may contain anything.
pub fn ban_key(farm: &BanFarm, network: IpNet) -> String {
    match farm {
        BanFarm::Farm(name) => format!("mtac:ban:{network}@{name}"),
        BanFarm::All => format!("mtac:ban:{network}"),
    }
}

/// The farm and network of a ban key; `None` for a key that is not one.
pub fn parse_ban_key(key: &str) -> Option<(BanFarm, IpNet)> {
    let rest = key.strip_prefix("mtac:ban:")?;
    match rest.split_once('@') {
        Some((net, farm)) => Some((BanFarm::Farm(farm.to_owned()), net.parse().ok()?)),
        None => Some((BanFarm::All, rest.parse().ok()?)),
    }
}

/// The announcement on [`BAN_CHANNEL`]: `NETWORK SECONDS [FARM]` (no farm: every farm, as older
/// nodes announce). 0 seconds lifts the ban.
pub fn ban_message(farm: &BanFarm, network: IpNet, seconds: u64) -> String {
    match farm {
        BanFarm::Farm(name) => format!("{network} {seconds} {name}"),
        BanFarm::All => format!("{network} {seconds}"),
    }
}

/// Read an announcement; `None` for one that is not.
pub fn parse_ban_message(message: &str) -> Option<(BanFarm, IpNet, u64)> {
    let mut parts = message.splitn(3, ' ');
    let net = parts.next()?.parse().ok()?;
    let seconds = parts.next()?.parse().ok()?;
    let farm = parts.next().map_or(BanFarm::All, |name| BanFarm::Farm(name.to_owned()));
    Some((farm, net, seconds))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const T: Timings = Timings { delay: 300, retry_window: 3600, lifetime: 86_400, auto_whitelist: 2 };

    fn triplet(sender: &str) -> Triplet {
        Triplet::new("net:192.0.2.0/24".to_owned(), sender, "Bob@Example.test")
    }

    #[test]
    fn a_triplet_goes_new_early_passed_known_and_starts_over_after_its_window() {
        let dir = tempfile::tempdir().unwrap();
        let db = Embedded::open(&dir.path().join("s.redb")).unwrap();
        let t = triplet("a@x.example");
        assert_eq!(db.greylist(&t, "192.0.2.1", T, 1000).unwrap(), GreylistVerdict::New);
        assert_eq!(db.greylist(&t, "192.0.2.1", T, 1299).unwrap(), GreylistVerdict::Early { age: 299 });
        assert_eq!(
            db.greylist(&t, "192.0.2.9", T, 1300).unwrap(),
            GreylistVerdict::Passed { waited: 300, other_address: true }
        );
        assert_eq!(db.greylist(&t, "192.0.2.1", T, 5000).unwrap(), GreylistVerdict::Known);
        // The case of the recipient does not make a new triplet.
        let upper = Triplet::new("net:192.0.2.0/24".to_owned(), "A@X.example", "bob@example.test");
        assert_eq!(db.greylist(&upper, "192.0.2.1", T, 5001).unwrap(), GreylistVerdict::Known);
        // A triplet that never retried within delay + window is forgotten: new again.
        let late = triplet("late@x.example");
        assert_eq!(db.greylist(&late, "192.0.2.1", T, 1000).unwrap(), GreylistVerdict::New);
        assert_eq!(db.greylist(&late, "192.0.2.1", T, 1000 + 300 + 3600 + 1).unwrap(), GreylistVerdict::New);
        // A passed triplet is forgotten after its lifetime without mail.
        assert_eq!(db.greylist(&t, "192.0.2.1", T, 5001 + 86_400 + 1).unwrap(), GreylistVerdict::New);
        let counts = db.counts(5001 + 86_400 + 1).unwrap();
        // `t` waits again; `late` expired unswept.
        assert_eq!((counts.waiting, counts.passed), (1, 0), "{counts:?}");
        assert_eq!(db.sweep(10_000_000).unwrap(), 2);
    }

    #[test]
    fn deliveries_auto_whitelist_the_client_until_their_lifetime_ends() {
        let dir = tempfile::tempdir().unwrap();
        let db = Embedded::open(&dir.path().join("s.redb")).unwrap();
        let client = "net:192.0.2.0/24";
        db.delivered(client, T.lifetime, 1000).unwrap();
        assert_eq!(db.greylist(&triplet("n@x.example"), "192.0.2.1", T, 1001).unwrap(), GreylistVerdict::New);
        db.delivered(client, T.lifetime, 1002).unwrap();
        assert_eq!(db.deliveries(client, 1003).unwrap(), 2);
        assert_eq!(
            db.greylist(&triplet("m@x.example"), "192.0.2.1", T, 1003).unwrap(),
            GreylistVerdict::AutoWhitelisted
        );
        assert_eq!(db.deliveries(client, 1002 + 86_400 + 1).unwrap(), 0, "expired");
    }

    #[test]
    fn ban_keys_and_announcements_carry_the_farm_and_read_back() {
        let net: IpNet = "2001:db8:1:2::/64".parse().unwrap();
        for farm in [BanFarm::Farm("sub mission@x".into()), BanFarm::All] {
            assert_eq!(parse_ban_key(&ban_key(&farm, net)), Some((farm.clone(), net)));
            assert_eq!(parse_ban_message(&ban_message(&farm, net, 60)), Some((farm.clone(), net, 60)));
        }
        assert_eq!(ban_key(&BanFarm::Farm("users".into()), net), "mtac:ban:2001:db8:1:2::/64@users");
        // An announcement of an older node: every farm.
        assert_eq!(parse_ban_message("192.0.2.0/24 600"), Some((BanFarm::All, "192.0.2.0/24".parse().unwrap(), 600)));
        assert_eq!(parse_ban_message("nonsense"), None);
        assert_eq!(parse_ban_key("mtac:ban:garbage@mx"), None);
    }

    #[test]
    fn a_damaged_value_is_a_new_triplet_not_a_panic() {
        assert_eq!(decode_triplet(b"short"), None);
        assert_eq!(decode_count(b""), None);
    }
}
