//! Recipient validation against an LDAP directory, at RCPT TO.
//!
//! Seed 004 validated recipients against LDAP before accepting them, so that a sender learns of
//! a wrong address at once and no bounce is ever sent. The directory is another machine that
//! can be slow or down, so every lookup here is bounded:
//!
//! - a **pool** of at most `pool` connections, each serving one query at a time; a query that
//!   finds them all busy waits for one, within its timeout;
//! - a **positive and a negative cache** (moka, TTL and size bounded), so a recipient that
//!   receives mail all day, or a dictionary attack on addresses that do not exist, costs the
//!   directory one query per TTL;
//! - one **timeout** for the whole lookup (waiting for a connection, connecting, binding,
//!   searching). A directory that is down, slow or refusing gives
//!   [`DirectoryAnswer::Unavailable`], which the policy answers with 451: never 550, and never
//!   cached, so the first query after the directory is back sees the truth.
//!
//! A pooled connection that fails (the server restarted) or does not answer within half the
//! timeout (a firewall dropped it) is dropped and the query is tried once more on a fresh
//! connection, inside the same timeout.

use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, Scope, SearchOptions};
use moka::sync::Cache;
use mtac_ruleset::eval::DirectoryAnswer;
use mtac_ruleset::model::Directory;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cache,
    /// A round trip to the directory, and how long it took.
    Directory(Duration),
}

/// One farm's directory: its settings, connections and caches.
pub struct DirectoryClient {
    settings: Directory,
    password: Option<String>,
    idle: Mutex<Vec<Ldap>>,
    slots: Semaphore,
    known: Cache<String, ()>,
    unknown: Cache<String, ()>,
}

impl DirectoryClient {
    /// Build the client; reads the bind password file. Nothing connects until the first lookup.
    pub fn new(settings: &Directory) -> Result<DirectoryClient, String> {
        let password = match &settings.bind_password_file {
            Some(path) => Some(
                read_password(path)
                    .map_err(|e| format!("directory: cannot read the bind password file {path}: {e}"))?,
            ),
            None => None,
        };
        let cache = |ttl: u32| {
            Cache::builder()
                .max_capacity(u64::from(settings.cache_size))
                .time_to_live(Duration::from_secs(u64::from(ttl.max(1))))
                .build()
        };
        Ok(DirectoryClient {
            settings: settings.clone(),
            password,
            idle: Mutex::new(Vec::new()),
            slots: Semaphore::new(usize::try_from(settings.pool.max(1)).unwrap_or(1)),
            known: cache(settings.positive_ttl),
            unknown: cache(settings.negative_ttl),
        })
    }

    /// Whether this client serves `settings` (a reload with the same directory keeps its
    /// connections and caches).
    pub fn serves(&self, settings: &Directory) -> bool {
        self.settings == *settings && !self.password_changed()
    }

    /// The bind password file no longer holds the password this client binds with (rotated, or
    /// gone: the reload that follows then reports it).
    pub fn password_changed(&self) -> bool {
        match &self.settings.bind_password_file {
            Some(path) => read_password(path).ok() != self.password,
            None => false,
        }
    }

    /// Is `address` in the directory?
    pub async fn lookup(&self, address: &str) -> (DirectoryAnswer, Source) {
        let key = address.to_ascii_lowercase();
        // `get`, not `contains_key`: a read counts toward what the cache keeps.
        if self.known.get(&key).is_some() {
            return (DirectoryAnswer::Known, Source::Cache);
        }
        if self.unknown.get(&key).is_some() {
            return (DirectoryAnswer::Unknown, Source::Cache);
        }
        let started = Instant::now();
        let timeout = Duration::from_millis(u64::from(self.settings.timeout_ms));
        let answer = match tokio::time::timeout(timeout, self.ask(&key)).await {
            Ok(Ok(true)) => {
                self.known.insert(key, ());
                DirectoryAnswer::Known
            }
            Ok(Ok(false)) => {
                self.unknown.insert(key, ());
                DirectoryAnswer::Unknown
            }
            Ok(Err(e)) => {
                tracing::warn!(url = %self.settings.url, error = %e, "directory lookup failed");
                DirectoryAnswer::Unavailable
            }
            Err(_) => {
                tracing::warn!(url = %self.settings.url, ?timeout, "directory lookup timed out");
                DirectoryAnswer::Unavailable
            }
        };
        (answer, Source::Directory(started.elapsed()))
    }

    /// Entries cached now (known, unknown).
    pub fn cached(&self) -> (u64, u64) {
        (self.known.entry_count(), self.unknown.entry_count())
    }

    async fn ask(&self, address: &str) -> Result<bool, String> {
        let _slot = self.slots.acquire().await.map_err(|e| e.to_string())?;
        let pooled = self.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
        if let Some(mut ldap) = pooled {
            // Half the time for the pooled connection: one that a firewall silently dropped
            // hangs rather than fails, and the fresh connection needs the other half.
            let half = Duration::from_millis(u64::from(self.settings.timeout_ms / 2).max(1));
            match tokio::time::timeout(half, self.search(&mut ldap, address)).await {
                Ok(Ok(found)) => {
                    self.release(ldap);
                    return Ok(found);
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "directory: a pooled connection failed; reconnecting"),
                Err(_) => tracing::debug!("directory: a pooled connection did not answer; reconnecting"),
            }
        }
        let mut ldap = self.connect().await?;
        let found = self.search(&mut ldap, address).await?;
        self.release(ldap);
        Ok(found)
    }

    fn release(&self, ldap: Ldap) {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner).push(ldap);
    }

    async fn connect(&self) -> Result<Ldap, String> {
        let timeout = Duration::from_millis(u64::from(self.settings.timeout_ms));
        let settings = LdapConnSettings::new().set_conn_timeout(timeout);
        let (connection, mut ldap) =
            LdapConnAsync::with_settings(settings, &self.settings.url).await.map_err(|e| e.to_string())?;
        ldap3::drive!(connection);
        if let (Some(dn), Some(password)) = (&self.settings.bind_dn, &self.password) {
            ldap.simple_bind(dn, password)
                .await
                .and_then(ldap3::LdapResult::success)
                .map_err(|e| format!("bind as {dn}: {e}"))?;
        }
        Ok(ldap)
    }

    async fn search(&self, ldap: &mut Ldap, address: &str) -> Result<bool, String> {
        let filter = self.settings.filter.replace("{address}", &escape_filter_value(address));
        // One entry is enough to know; "1.1" asks for no attributes at all (RFC 4511 4.5.1.8).
        let result = ldap
            .with_search_options(SearchOptions::new().sizelimit(1))
            .search(&self.settings.base, Scope::Subtree, &filter, vec!["1.1"])
            .await
            .map_err(|e| e.to_string())?;
        let ldap3::SearchResult(entries, status) = result;
        match status.rc {
            0 => Ok(!entries.is_empty()),
            // sizeLimitExceeded: more than one entry matched, so the address exists.
            4 if !entries.is_empty() => Ok(true),
            rc => Err(format!("search under {} answered {rc}: {}", self.settings.base, status.text)),
        }
    }
}

/// The password in a bind password file; a trailing newline is an editor's, not the password's.
fn read_password(path: &str) -> std::io::Result<String> {
    Ok(std::fs::read_to_string(path)?.trim_end_matches(['\r', '\n']).to_owned())
}

/// Escape a value for an LDAP filter (RFC 4515 3): an address like `*)(uid=*` must match
/// itself, not every entry.
pub fn escape_filter_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '*' => out.push_str("\\2a"),
            '(' => out.push_str("\\28"),
            ')' => out.push_str("\\29"),
            '\\' => out.push_str("\\5c"),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_values_are_escaped() {
        assert_eq!(escape_filter_value("alice@example.com"), "alice@example.com");
        assert_eq!(escape_filter_value("*)(uid=*"), "\\2a\\29\\28uid=\\2a");
        assert_eq!(escape_filter_value("a\\b\0"), "a\\5cb\\00");
    }
}
