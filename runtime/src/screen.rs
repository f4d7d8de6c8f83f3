//! The pregreet test's memory on a node without a state store: the clients that waited for the
//! whole greeting, greeted at once until their TTL ends.
//!
//! A node with a state store (greylisting, or `state "redis"`) remembers them there instead —
//! with Redis, for every node of the farm (`Store::pregreet_passed`). Here the table is the
//! node's own and is lost at restart; it holds [`MAX_REMEMBERED`] clients at most, so a wave of
//! new addresses cannot grow it without bound (a client that does not fit waits again next
//! time, which costs it seconds, not mail).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};

/// The most clients remembered in memory.
pub const MAX_REMEMBERED: usize = 100_000;

/// Clients that passed the pregreet test, and when each is forgotten (Unix seconds).
#[derive(Default)]
pub struct PassedClients {
    expires: Mutex<HashMap<IpAddr, u64>>,
}

impl PassedClients {
    /// Whether `client` passed within its TTL.
    pub fn knows(&self, client: IpAddr, now: u64) -> bool {
        let map = self.expires.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(&client).is_some_and(|&expires| expires > now)
    }

    /// `client` passed: greet it at once until `now + ttl`.
    pub fn remember(&self, client: IpAddr, ttl: u64, now: u64) {
        let mut map = self.expires.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX_REMEMBERED && !map.contains_key(&client) {
            map.retain(|_, &mut expires| expires > now);
            if map.len() >= MAX_REMEMBERED {
                return;
            }
        }
        map.insert(client, now.saturating_add(ttl));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::PassedClients;

    #[test]
    fn a_passed_client_is_known_until_its_ttl_ends() {
        let passed = PassedClients::default();
        let ip = "192.0.2.7".parse().unwrap();
        assert!(!passed.knows(ip, 1000));
        passed.remember(ip, 60, 1000);
        assert!(passed.knows(ip, 1059));
        assert!(!passed.knows(ip, 1060));
        assert!(!passed.knows("192.0.2.8".parse().unwrap(), 1001));
    }
}
