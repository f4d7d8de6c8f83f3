//! What an operator does to the store by hand, like OpenBSD's `spamdb`: list its entries a page
//! at a time, delete a client's triplets, whitelist a client. On the embedded file (a range of
//! its sorted keys) and on Redis (a `SCAN` whose pattern escapes the glob characters a sender
//! address may hold), over the node's admin socket only (`admin::socket`).

use super::embedded::{decode_count, decode_triplet, encode_count, Embedded, AWL, TRIPLETS};
use super::redis::RedisStore;
use super::{embedded, unix_now, StateError, Store, OPERATOR_WHITELIST};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The most entries one page lists.
pub const MAX_PAGE: usize = 1000;

/// Which entries to list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    /// Greylist triplets (`CLIENT|SENDER|RECIPIENT`).
    Triplets,
    /// Auto-whitelist counts (`CLIENT`).
    Whitelist,
}

/// One listed entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    /// `CLIENT|SENDER|RECIPIENT` for a triplet, `CLIENT` for a whitelist count.
    pub key: String,
    /// A triplet: whether it retried and passes.
    pub passed: Option<bool>,
    /// A triplet: Unix seconds of its first attempt.
    pub first_seen: Option<u64>,
    /// A whitelist count: messages delivered.
    pub deliveries: Option<u64>,
    /// Seconds until the entry is forgotten.
    pub expires_in: u64,
}

/// One page, and the cursor of the next (`None`: the last page).
pub type Page = (Vec<Listed>, Option<String>);

impl Store {
    /// Up to `limit` live entries whose key starts with `prefix` (a client key such as
    /// `net:192.0.2.0/24`, optionally `|sender`), from `cursor` (a previous page's).
    pub async fn list(
        &self,
        kind: ListKind,
        prefix: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Page, StateError> {
        let limit = limit.clamp(1, MAX_PAGE);
        match self {
            Store::Embedded(db) => {
                let (prefix, cursor) = (prefix.to_owned(), cursor.map(str::to_owned));
                db.off_worker(move |db| list_embedded(db, kind, &prefix, cursor.as_deref(), limit, unix_now())).await
            }
            Store::Redis(r) => list_redis(r, kind, prefix, cursor, limit).await,
        }
    }

    /// Delete every triplet whose key starts with `prefix` (which must name a client: `net:…|`
    /// or `dns:…|`, optionally with the sender and recipient). Returns how many were deleted.
    pub async fn delete_triplets(&self, prefix: &str) -> Result<u64, StateError> {
        match self {
            Store::Embedded(db) => {
                let prefix = prefix.to_owned();
                db.off_worker(move |db| delete_embedded(db, &prefix)).await
            }
            Store::Redis(r) => delete_redis(r, prefix).await,
        }
    }

    /// Whitelist `client` (a client key) for `lifetime` seconds: its delivery count is set to
    /// [`OPERATOR_WHITELIST`], so greylisting passes it whatever the farm's `auto-whitelist`.
    pub async fn whitelist(&self, client: &str, lifetime: u64) -> Result<(), StateError> {
        let deliveries = OPERATOR_WHITELIST;
        match self {
            Store::Embedded(db) => {
                let client = client.to_owned();
                let expires = unix_now().saturating_add(lifetime);
                db.off_worker(move |db| {
                    let txn = db.write()?;
                    {
                        let mut awl = txn.open_table(AWL).map_err(embedded)?;
                        awl.insert(client.as_str(), encode_count(deliveries, expires).as_slice()).map_err(embedded)?;
                    }
                    txn.commit().map_err(embedded)
                })
                .await
            }
            Store::Redis(r) => {
                let key = format!("mtac:awl:{client}");
                let seconds = lifetime.max(1);
                r.run(async |mut c| {
                    redis::cmd("SET").arg(&key).arg(deliveries).arg("EX").arg(seconds).query_async(&mut c).await
                })
                .await
            }
        }
    }
}

fn list_embedded(
    db: &Embedded,
    kind: ListKind,
    prefix: &str,
    cursor: Option<&str>,
    limit: usize,
    now: u64,
) -> Result<Page, StateError> {
    use redb::ReadableDatabase;
    let txn = db.db.begin_read().map_err(embedded)?;
    let table = txn.open_table(if kind == ListKind::Triplets { TRIPLETS } else { AWL }).map_err(embedded)?;
    let start = cursor.filter(|c| c.starts_with(prefix)).unwrap_or(prefix);
    let mut page = Vec::new();
    let mut last_seen: Option<String> = None;
    for row in table.range::<&str>(start..).map_err(embedded)? {
        let (key, value) = row.map_err(embedded)?;
        let key = key.value();
        if !key.starts_with(prefix) {
            break;
        }
        if Some(key) == cursor {
            continue;
        }
        if page.len() == limit {
            return Ok((page, last_seen));
        }
        last_seen = Some(key.to_owned());
        let listed = match kind {
            ListKind::Triplets => {
                decode_triplet(value.value()).filter(|t| t.2 > now).map(|(first, passed, e, _)| Listed {
                    key: key.to_owned(),
                    passed: Some(passed),
                    first_seen: Some(first),
                    deliveries: None,
                    expires_in: e - now,
                })
            }
            ListKind::Whitelist => decode_count(value.value()).filter(|c| c.1 > now).map(|(n, e)| Listed {
                key: key.to_owned(),
                passed: None,
                first_seen: None,
                deliveries: Some(n),
                expires_in: e - now,
            }),
        };
        page.extend(listed);
    }
    Ok((page, None))
}

fn delete_embedded(db: &Embedded, prefix: &str) -> Result<u64, StateError> {
    use redb::ReadableTable;
    let txn = db.write()?;
    let mut deleted = 0;
    {
        let mut table = txn.open_table(TRIPLETS).map_err(embedded)?;
        let mut keys = Vec::new();
        for row in table.range::<&str>(prefix..).map_err(embedded)? {
            let (key, _) = row.map_err(embedded)?;
            if !key.value().starts_with(prefix) {
                break;
            }
            keys.push(key.value().to_owned());
        }
        for key in keys {
            if table.remove(key.as_str()).map_err(embedded)?.is_some() {
                deleted += 1;
            }
        }
    }
    txn.commit().map_err(embedded)?;
    Ok(deleted)
}

/// `text` with Redis glob's special characters escaped, so a sender address such as
/// `a*b@example.com` matches itself only.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\' | '^') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

async fn list_redis(
    r: &Arc<RedisStore>,
    kind: ListKind,
    prefix: &str,
    cursor: Option<&str>,
    limit: usize,
) -> Result<Page, StateError> {
    let namespace = if kind == ListKind::Triplets { "mtac:g:" } else { "mtac:awl:" };
    let pattern = format!("{namespace}{}*", glob_escape(prefix));
    let mut scan: u64 = match cursor {
        Some(c) => c.parse().map_err(|_| StateError::Embedded(format!("`{c}` is not a cursor of this store")))?,
        None => 0,
    };
    let mut page = Vec::new();
    loop {
        let (next, keys): (u64, Vec<String>) = r
            .run(async |mut c| {
                redis::cmd("SCAN")
                    .arg(scan)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(limit.max(100))
                    .query_async(&mut c)
                    .await
            })
            .await?;
        for key in keys {
            let Some(short) = key.strip_prefix(namespace) else { continue };
            let listed = match kind {
                ListKind::Triplets => {
                    let (first, passed, ttl): (Option<u64>, Option<u8>, i64) = r
                        .run(async |mut c| {
                            redis::pipe().hget(&key, "first").hget(&key, "passed").ttl(&key).query_async(&mut c).await
                        })
                        .await?;
                    first.map(|first| Listed {
                        key: short.to_owned(),
                        passed: Some(passed == Some(1)),
                        first_seen: Some(first),
                        deliveries: None,
                        expires_in: u64::try_from(ttl).unwrap_or(0),
                    })
                }
                ListKind::Whitelist => {
                    let (count, ttl): (Option<u64>, i64) =
                        r.run(async |mut c| redis::pipe().get(&key).ttl(&key).query_async(&mut c).await).await?;
                    count.map(|n| Listed {
                        key: short.to_owned(),
                        passed: None,
                        first_seen: None,
                        deliveries: Some(n),
                        expires_in: u64::try_from(ttl).unwrap_or(0),
                    })
                }
            };
            page.extend(listed);
        }
        // SCAN may give a page more than `limit` or fewer: it stops at a batch boundary, so the
        // cursor it answered resumes exactly after what was listed.
        if next == 0 {
            return Ok((page, None));
        }
        if page.len() >= limit {
            return Ok((page, Some(next.to_string())));
        }
        scan = next;
    }
}

async fn delete_redis(r: &Arc<RedisStore>, prefix: &str) -> Result<u64, StateError> {
    let pattern = format!("mtac:g:{}*", glob_escape(prefix));
    let mut scan: u64 = 0;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = r
            .run(async |mut c| {
                redis::cmd("SCAN").arg(scan).arg("MATCH").arg(&pattern).arg("COUNT").arg(1000).query_async(&mut c).await
            })
            .await?;
        if !keys.is_empty() {
            let n: u64 = r.run(async |mut c| redis::cmd("DEL").arg(&keys).query_async(&mut c).await).await?;
            deleted += n;
        }
        if next == 0 {
            return Ok(deleted);
        }
        scan = next;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn glob_characters_of_an_address_match_themselves() {
        assert_eq!(glob_escape("net:192.0.2.0/24|a*b@x.example|[u]@y"), "net:192.0.2.0/24|a\\*b@x.example|\\[u\\]@y");
    }
}
