//! The embedded store: one redb file on the node, with the byte encodings of its values.
//!
//! Writes commit without fsync; [`Embedded::spawn_maintenance`] makes them durable every second
//! and sweeps expired entries every five minutes, so a crash loses at most a second of greylist
//! entries (senders are greylisted once more), never mail. redb blocks: [`Store`](super::Store)
//! runs every call through [`Embedded::off_worker`], never on a session thread.
//! **Invariant:** a value that does not decode is treated as absent (a new triplet), never a panic.

use super::{embedded, unix_now, Counts, Entry, GreylistVerdict, StateError, Timings, Triplet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

pub(super) const TRIPLETS: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("greylist");
pub(super) const AWL: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("auto-whitelist");
/// Clients that passed the pregreet test: address → (1, expires), the count encoding.
const PREGREET: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("pregreet");

/// The embedded store: one redb database file.
pub struct Embedded {
    pub(super) db: redb::Database,
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

pub(super) fn decode_triplet(v: &[u8]) -> Option<(u64, bool, u64, String)> {
    let first = u64::from_le_bytes(v.get(..8)?.try_into().ok()?);
    let passed = *v.get(8)? == 1;
    let expires = u64::from_le_bytes(v.get(9..17)?.try_into().ok()?);
    let address = String::from_utf8_lossy(v.get(17..)?).into_owned();
    Some((first, passed, expires, address))
}

pub(super) fn encode_count(count: u64, expires: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&count.to_le_bytes());
    v[8..].copy_from_slice(&expires.to_le_bytes());
    v
}

pub(super) fn decode_count(v: &[u8]) -> Option<(u64, u64)> {
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
        txn.open_table(PREGREET).map_err(embedded)?;
        txn.commit().map_err(embedded)?;
        Ok(Embedded { db })
    }

    /// Run `op` on a blocking thread: redb does file I/O and takes locks.
    pub(super) async fn off_worker<T: Send + 'static>(
        self: &Arc<Self>,
        op: impl FnOnce(&Embedded) -> Result<T, StateError> + Send + 'static,
    ) -> Result<T, StateError> {
        let db = self.clone();
        tokio::task::spawn_blocking(move || op(&db)).await.map_err(embedded)?
    }

    pub(super) fn write(&self) -> Result<redb::WriteTransaction, StateError> {
        let mut txn = self.db.begin_write().map_err(embedded)?;
        // Durable once a second by `persist`, not at every RCPT.
        txn.set_durability(redb::Durability::None).map_err(embedded)?;
        Ok(txn)
    }

    pub(super) fn greylist(
        &self,
        t: &Triplet,
        address: &str,
        timings: Timings,
        now: u64,
    ) -> Result<GreylistVerdict, StateError> {
        use redb::ReadableTable;
        let txn = self.write()?;
        let verdict = {
            // With auto-whitelisting off, only an operator's whitelist entry counts.
            let threshold = match timings.auto_whitelist {
                0 => super::OPERATOR_WHITELIST,
                n => u64::from(n),
            };
            let awl = txn.open_table(AWL).map_err(embedded)?;
            let count = awl.get(t.client.as_str()).map_err(embedded)?.and_then(|v| decode_count(v.value()));
            if count.is_some_and(|(n, expires)| expires > now && n >= threshold) {
                return Ok(GreylistVerdict::AutoWhitelisted);
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

    pub(super) fn delivered(&self, client: &str, lifetime: u64, now: u64) -> Result<(), StateError> {
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

    pub(super) fn entry(&self, t: &Triplet, now: u64) -> Result<Option<Entry>, StateError> {
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

    pub(super) fn deliveries(&self, client: &str, now: u64) -> Result<u64, StateError> {
        use redb::ReadableDatabase;
        let txn = self.db.begin_read().map_err(embedded)?;
        let awl = txn.open_table(AWL).map_err(embedded)?;
        let value = awl.get(client).map_err(embedded)?;
        Ok(value.and_then(|v| decode_count(v.value())).filter(|(_, e)| *e > now).map_or(0, |(n, _)| n))
    }

    /// `client` passed the pregreet test: remember it until `now + ttl`.
    pub(super) fn pregreet_passed(&self, client: &str, ttl: u64, now: u64) -> Result<(), StateError> {
        let txn = self.write()?;
        {
            let mut table = txn.open_table(PREGREET).map_err(embedded)?;
            table.insert(client, encode_count(1, now.saturating_add(ttl)).as_slice()).map_err(embedded)?;
        }
        txn.commit().map_err(embedded)
    }

    /// Whether `client` passed the pregreet test and is still remembered.
    pub(super) fn pregreet_known(&self, client: &str, now: u64) -> Result<bool, StateError> {
        use redb::ReadableDatabase;
        let txn = self.db.begin_read().map_err(embedded)?;
        let table = txn.open_table(PREGREET).map_err(embedded)?;
        let value = table.get(client).map_err(embedded)?;
        Ok(value.and_then(|v| decode_count(v.value())).is_some_and(|(_, expires)| expires > now))
    }

    pub(super) fn counts(&self, now: u64) -> Result<Counts, StateError> {
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
            let mut pregreet = txn.open_table(PREGREET).map_err(embedded)?;
            pregreet
                .retain(|_, v| {
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
    fn a_client_that_passed_the_pregreet_test_is_known_until_its_ttl_ends() {
        let dir = tempfile::tempdir().unwrap();
        let db = Embedded::open(&dir.path().join("s.redb")).unwrap();
        assert!(!db.pregreet_known("192.0.2.1", 1000).unwrap());
        db.pregreet_passed("192.0.2.1", 86_400, 1000).unwrap();
        assert!(db.pregreet_known("192.0.2.1", 1001).unwrap());
        assert!(!db.pregreet_known("192.0.2.2", 1001).unwrap());
        assert!(!db.pregreet_known("192.0.2.1", 1000 + 86_400).unwrap(), "expired");
        assert_eq!(db.sweep(1000 + 86_400).unwrap(), 1);
    }

    #[test]
    fn a_damaged_value_is_a_new_triplet_not_a_panic() {
        assert_eq!(decode_triplet(b"short"), None);
        assert_eq!(decode_count(b""), None);
    }
}
