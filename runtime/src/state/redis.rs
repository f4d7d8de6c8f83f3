//! The Redis store, shared by a farm: greylist triplets and auto-whitelist counts with Redis TTLs,
//! farm-wide rate windows, and bans (`SET … EX` plus an announcement on [`BAN_CHANNEL`]).
//!
//! The connection is a `ConnectionManager`, made on first use (a node starts while Redis is down)
//! and reconnecting by itself; every call is bounded by the policy's timeout. **Invariant:** the
//! triplet update is one Lua script, so two nodes seeing the same retry cannot both record it.
//!
//! With Redis Sentinel (`state "redis-sentinel"`), the primary's address is asked of the
//! sentinels (the redis crate's `SentinelClient`, which also checks that the answer calls itself
//! primary) when the connection is made, and the connection is dropped at the first failed call:
//! a manager would otherwise reconnect to the old primary forever, or to it demoted to a replica
//! (whose writes fail READONLY). During a failover calls fail within the timeout, so greylisting
//! and bans follow the policy's `on-failure`, never a 5xx; the first call after the sentinels
//! promoted a replica finds it.

use super::bans::{ban_key, ban_message, parse_ban_key, BAN_CHANNEL};
use super::{unix_now, Counts, Entry, GreylistVerdict, StateError, Timings, Triplet};
use crate::guard::BanFarm;
use ipnet::IpNet;
use std::net::IpAddr;
use std::time::Duration;

/// Keys: `mtac:g:CLIENT|SENDER|RCPT` (hash: first, passed, ip), `mtac:awl:CLIENT` (counter),
/// `mtac:pg:ADDRESS` (passed the pregreet test, with its TTL),
/// `mtac:ban:NETWORK[@FARM]` (see [`ban_key`]); bans are announced on [`BAN_CHANNEL`].
const GREYLIST_SCRIPT: &str = r"
local now = tonumber(ARGV[1])
local delay = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local lifetime = tonumber(ARGV[4])
local awl = tonumber(ARGV[5])
if awl <= 0 then awl = 1000000000 end
local n = tonumber(redis.call('GET', KEYS[2]) or '0')
if n >= awl then return {4, 0, 0} end
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

/// Where the primary is: one address, or whatever the sentinels say now.
enum Primary {
    Fixed(redis::Client),
    Sentinel(tokio::sync::Mutex<redis::sentinel::SentinelClient>),
}

/// The Redis store: a lazily (re)connected multiplexed connection.
pub struct RedisStore {
    primary: Primary,
    timeout: Duration,
    connection: tokio::sync::Mutex<Option<redis::aio::ConnectionManager>>,
    script: redis::Script,
    /// The runtime the store was opened on (the node's own): the manager is made there, so
    /// its connection is driven there and not by the session thread that happened to need it
    /// first — one that is busy, or blocked, would hold every other thread's calls.
    home: Option<tokio::runtime::Handle>,
}

impl RedisStore {
    pub(super) fn new(client: redis::Client, timeout: Duration) -> RedisStore {
        RedisStore {
            primary: Primary::Fixed(client),
            timeout,
            connection: tokio::sync::Mutex::new(None),
            script: redis::Script::new(GREYLIST_SCRIPT),
            home: tokio::runtime::Handle::try_current().ok(),
        }
    }

    /// The store on the primary the sentinels (`host:port` each) monitor as `service`.
    pub(super) fn sentinel(
        sentinels: &[String],
        service: &str,
        db: i64,
        timeout: Duration,
    ) -> Result<RedisStore, StateError> {
        use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
        let urls: Vec<String> = sentinels.iter().map(|s| format!("redis://{s}")).collect();
        let node = SentinelNodeConnectionInfo::default()
            .set_redis_connection_info(redis::RedisConnectionInfo::default().set_db(db));
        let client = SentinelClient::build(urls, service.to_owned(), Some(node), SentinelServerType::Master)?;
        Ok(RedisStore {
            primary: Primary::Sentinel(tokio::sync::Mutex::new(client)),
            timeout,
            connection: tokio::sync::Mutex::new(None),
            script: redis::Script::new(GREYLIST_SCRIPT),
            home: tokio::runtime::Handle::try_current().ok(),
        })
    }

    /// A client of the primary: the fixed one, or the one the sentinels name now.
    pub async fn client(&self) -> Result<redis::Client, StateError> {
        match &self.primary {
            Primary::Fixed(client) => Ok(client.clone()),
            Primary::Sentinel(sentinels) => {
                let ask = async { sentinels.lock().await.async_get_client().await };
                tokio::time::timeout(self.timeout * 2, ask)
                    .await
                    .map_err(|_| StateError::Timeout(self.timeout))?
                    .map_err(Into::into)
            }
        }
    }

    /// The connection, made on first use. The manager reconnects by itself afterwards; the
    /// mutex is held only to clone the handle (the manager multiplexes every session's commands).
    pub(super) async fn connection(&self) -> Result<redis::aio::ConnectionManager, StateError> {
        let mut slot = self.connection.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let client = self.client().await?;
        let connect = redis::aio::ConnectionManager::new_with_config(client, config);
        let connected = match &self.home {
            Some(home) => tokio::time::timeout(self.timeout * 2, home.spawn(connect))
                .await
                .map(|joined| joined.unwrap_or_else(|e| Err(std::io::Error::other(e).into()))),
            None => tokio::time::timeout(self.timeout * 2, connect).await,
        };
        let manager = connected.map_err(|_| StateError::Timeout(self.timeout))??;
        *slot = Some(manager.clone());
        Ok(manager)
    }

    pub(super) async fn run<T>(
        &self,
        op: impl AsyncFnOnce(redis::aio::ConnectionManager) -> redis::RedisResult<T>,
    ) -> Result<T, StateError> {
        let connection = self.connection().await?;
        let result = tokio::time::timeout(self.timeout, op(connection))
            .await
            .map_err(|_| StateError::Timeout(self.timeout))?
            .map_err(Into::into);
        if result.is_err() {
            self.forget_primary().await;
        }
        result
    }

    /// After a failed call on a sentinel-found primary: ask the sentinels again next time (it may
    /// be gone, or demoted). A fixed address keeps its self-reconnecting manager.
    async fn forget_primary(&self) {
        if let Primary::Sentinel(_) = self.primary {
            *self.connection.lock().await = None;
        }
    }

    pub(super) async fn greylist(
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

    pub(super) async fn delivered(&self, client: &str, lifetime: u64) -> Result<(), StateError> {
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

    pub(super) async fn entry(&self, t: &Triplet) -> Result<Option<Entry>, StateError> {
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

    /// `client` passed the pregreet test: every node of the farm greets it at once for `ttl`.
    pub(super) async fn pregreet_passed(&self, client: &str, ttl: u64) -> Result<(), StateError> {
        let key = format!("mtac:pg:{client}");
        self.run(async |mut c| redis::cmd("SET").arg(&key).arg(1).arg("EX").arg(ttl.max(1)).query_async(&mut c).await)
            .await
    }

    /// Whether `client` passed the pregreet test on any node of the farm, within its TTL.
    pub(super) async fn pregreet_known(&self, client: &str) -> Result<bool, StateError> {
        let key = format!("mtac:pg:{client}");
        let n: u32 = self.run(async |mut c| redis::cmd("EXISTS").arg(&key).query_async(&mut c).await).await?;
        Ok(n > 0)
    }

    pub(super) async fn deliveries(&self, client: &str) -> Result<u64, StateError> {
        let key = format!("mtac:awl:{client}");
        let n: Option<u64> = self.run(async |mut c| redis::cmd("GET").arg(&key).query_async(&mut c).await).await?;
        Ok(n.unwrap_or(0))
    }

    pub(super) async fn counts(&self) -> Result<Counts, StateError> {
        let mut counts = Counts::default();
        let mut c = self.connection().await?;
        let mut triplets = KeyScan::new("mtac:g:*");
        while let Some(keys) = triplets.next(&mut c, self.timeout).await? {
            for key in &keys {
                let passed: Option<u8> = redis::cmd("HGET").arg(key).arg("passed").query_async(&mut c).await?;
                if passed == Some(1) {
                    counts.passed += 1;
                } else {
                    counts.waiting += 1;
                }
            }
        }
        let mut whitelisted = KeyScan::new("mtac:awl:*");
        while let Some(keys) = whitelisted.next(&mut c, self.timeout).await? {
            counts.auto_whitelist += keys.len() as u64;
        }
        let mut bans = KeyScan::new("mtac:ban:*");
        while let Some(keys) = bans.next(&mut c, self.timeout).await? {
            counts.bans += keys.len() as u64;
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
        let mut c = self.connection().await?;
        let mut scan = KeyScan::new("mtac:ban:*");
        let mut bans = Vec::new();
        while let Some(keys) = scan.next(&mut c, self.timeout).await? {
            for key in keys {
                let ttl: i64 = redis::cmd("TTL").arg(&key).query_async(&mut c).await?;
                if let (Some((farm, net)), Ok(ttl)) = (parse_ban_key(&key), u64::try_from(ttl)) {
                    bans.push((farm, net, ttl));
                }
            }
        }
        Ok(bans)
    }
}

/// One `SCAN` over the keys that match a pattern, a batch at a time (a batch may be empty; Redis
/// may return a key twice across batches, which counts tolerate as the old loops did).
struct KeyScan {
    pattern: &'static str,
    /// The cursor of the next batch; `None` once Redis has answered cursor 0.
    cursor: Option<u64>,
}

impl KeyScan {
    fn new(pattern: &'static str) -> KeyScan {
        KeyScan { pattern, cursor: Some(0) }
    }

    /// The next batch of keys, or `None` when the scan is done. Each round trip is bounded by `timeout`.
    async fn next(
        &mut self,
        c: &mut redis::aio::ConnectionManager,
        timeout: Duration,
    ) -> Result<Option<Vec<String>>, StateError> {
        let Some(cursor) = self.cursor else { return Ok(None) };
        let (next, keys): (u64, Vec<String>) = tokio::time::timeout(
            timeout,
            redis::cmd("SCAN").arg(cursor).arg("MATCH").arg(self.pattern).arg("COUNT").arg(1000).query_async(c),
        )
        .await
        .map_err(|_| StateError::Timeout(timeout))??;
        self.cursor = (next != 0).then_some(next);
        Ok(Some(keys))
    }
}
