//! Checking SMTP AUTH credentials: against the PHC password hashes compiled into the ruleset, or
//! by binding to an LDAP directory as the user.
//!
//! Both run off the session's thread: a password hash costs tens of milliseconds of CPU by
//! design (Argon2id), and an LDAP bind is a network round trip bounded by a timeout. A directory
//! that cannot answer gives [`AuthVerdict::Unavailable`] (454), never 535: a user is not told
//! their password is wrong because LDAP was down.

use crate::session::AuthVerdict;
use mtac_ruleset::model::{Auth, AuthBackend};
use std::time::Duration;

/// Logins that succeeded, remembered for the farm's `auth cache=` so that a mail client that
/// reconnects for every message does not pay an Argon2 hash (or an LDAP bind) each time — like
/// Dovecot's auth_cache. Keys are a keyed BLAKE3 of user and password (the key is random per
/// node and per ruleset load), so the cache holds no password and no reusable hash; a wrong
/// password never matches and failures are never cached. A reload starts an empty cache, so a
/// password changed in the ruleset takes effect at once; one changed in LDAP, within the TTL.
pub struct LoginCache {
    key: [u8; 32],
    logins: moka::sync::Cache<[u8; 32], ()>,
}

impl LoginCache {
    /// `None` when the farm does not cache, or no random key could be drawn.
    pub fn new(auth: &Auth) -> Option<LoginCache> {
        if auth.cache_ttl == 0 {
            return None;
        }
        let mut key = [0u8; 32];
        rustls::crypto::ring::default_provider().secure_random.fill(&mut key).ok()?;
        let logins = moka::sync::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(Duration::from_secs(u64::from(auth.cache_ttl)))
            .build();
        Some(LoginCache { key, logins })
    }

    fn entry(&self, user: &str, password: &str) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        // Lengths first: ("ab", "c") and ("a", "bc") are different logins.
        h.update(&(user.len() as u64).to_le_bytes());
        h.update(user.to_ascii_lowercase().as_bytes());
        h.update(password.as_bytes());
        *h.finalize().as_bytes()
    }

    pub fn knows(&self, user: &str, password: &str) -> bool {
        self.logins.contains_key(&self.entry(user, password))
    }

    pub fn remember(&self, user: &str, password: &str) {
        self.logins.insert(self.entry(user, password), ());
    }
}

/// How long an LDAP bind may take.
const LDAP_TIMEOUT: Duration = Duration::from_secs(5);

/// Check `user`'s `password` with the farm's backend.
pub async fn verify(auth: &Auth, user: &str, password: &str) -> AuthVerdict {
    if user.is_empty() || password.is_empty() || user.len() > 256 || password.len() > 1024 {
        // An empty password would make an LDAP "unauthenticated bind" succeed (RFC 4513 5.1.2).
        return AuthVerdict::Invalid;
    }
    match &auth.backend {
        AuthBackend::Table(users) => {
            let hash = users.iter().find(|(name, _)| name.eq_ignore_ascii_case(user)).map(|(_, h)| h.clone());
            let cost = unknown_user_cost(auth);
            let password = password.to_owned();
            tokio::task::spawn_blocking(move || match hash {
                Some(hash) => {
                    if check_phc(&hash, &password) {
                        AuthVerdict::Valid
                    } else {
                        AuthVerdict::Invalid
                    }
                }
                None => {
                    // An unknown user costs as much as the dearest known one: no user
                    // enumeration by timing.
                    unknown_user_check(cost, &password);
                    AuthVerdict::Invalid
                }
            })
            .await
            .unwrap_or(AuthVerdict::Unavailable)
        }
        AuthBackend::Ldap { url, bind_dn_template } => {
            let dn = bind_dn_template.replace("{user}", &escape_dn_value(user));
            ldap_bind(url, &dn, password).await
        }
    }
}

/// The salt of an unknown user's check: any fixed value will do, the result is thrown away.
const UNKNOWN_USER_SALT: &[u8] = b"mtac-unknown-user";

/// What checking a password costs for a user the table does not have: the Argon2 parameters
/// `[m, t, p, output length]`, each the largest among the table's hashes, so that an unknown
/// user is never answered sooner than any known one (a fixed dummy cheaper than the farm's
/// dearest hash told users apart: 7 ms, 20 ms, 157 ms). Worked out once per loaded ruleset
/// ([`Auth::unknown_user_cost`] lives in the decoded policy, which a reload replaces) — by
/// [`prepare`] at load, or by the first unknown login if a caller skipped that.
fn unknown_user_cost(auth: &Auth) -> [u32; 4] {
    *auth.unknown_user_cost.get_or_init(|| match &auth.backend {
        AuthBackend::Table(users) => dearest(users.iter().map(|(_, phc)| phc.as_str())),
        AuthBackend::Ldap { .. } => dearest(std::iter::empty()),
    })
}

/// Work out the farm's unknown-user cost now, while the ruleset is being loaded, so that no
/// login pays for parsing the table.
pub fn prepare(auth: &Auth) {
    let _ = unknown_user_cost(auth);
}

/// The largest `m`, `t`, `p` and output length over `hashes` (argon2's defaults when none
/// parses). Each hash has `m >= 8 p`, so the maxima do too and always make valid parameters.
fn dearest<'a>(hashes: impl Iterator<Item = &'a str>) -> [u32; 4] {
    use argon2::password_hash::PasswordHash;
    let mut cost: Option<[u32; 4]> = None;
    for phc in hashes {
        let Ok(hash) = PasswordHash::new(phc) else { continue };
        let Ok(params) = argon2::Params::try_from(&hash) else { continue };
        let length = params.output_len().and_then(|n| u32::try_from(n).ok()).unwrap_or(32);
        let this = [params.m_cost(), params.t_cost(), params.p_cost(), length];
        cost = Some(match cost {
            None => this,
            Some(c) => [c[0].max(this[0]), c[1].max(this[1]), c[2].max(this[2]), c[3].max(this[3])],
        });
    }
    cost.unwrap_or_else(|| {
        let d = argon2::Params::default();
        [d.m_cost(), d.t_cost(), d.p_cost(), 32]
    })
}

/// Hash `password` with the given cost and throw the result away.
fn unknown_user_check(cost: [u32; 4], password: &str) {
    let [m, t, p, length] = cost;
    let length = usize::try_from(length).unwrap_or(32);
    let params = argon2::Params::new(m, t, p, Some(length)).unwrap_or_default();
    let length = params.output_len().unwrap_or(32);
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = vec![0u8; length];
    let _ = argon.hash_password_into(password.as_bytes(), UNKNOWN_USER_SALT, &mut out);
}

/// Verify a PHC string (`$argon2id$…`, `$argon2i$…`, `$argon2d$…`).
fn check_phc(phc: &str, password: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    let Ok(hash) = PasswordHash::new(phc) else { return false };
    argon2::Argon2::default().verify_password(password.as_bytes(), &hash).is_ok()
}

/// Escape a user name for use as an attribute value in a DN (RFC 4514 2.4), so that a name
/// like `x,ou=admins` cannot change which entry is bound.
fn escape_dn_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for (i, c) in value.chars().enumerate() {
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=' => {
                out.push('\\');
                out.push(c);
            }
            '#' | ' ' if i == 0 => {
                out.push('\\');
                out.push(c);
            }
            ' ' if i + 1 == value.chars().count() => out.push_str("\\ "),
            '\0' => out.push_str("\\00"),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

async fn ldap_bind(url: &str, dn: &str, password: &str) -> AuthVerdict {
    let settings = ldap3::LdapConnSettings::new().set_conn_timeout(LDAP_TIMEOUT);
    let work = async {
        let (connection, mut ldap) = ldap3::LdapConnAsync::with_settings(settings, url).await?;
        ldap3::drive!(connection);
        let result = ldap.simple_bind(dn, password).await?;
        let _ = ldap.unbind().await;
        Ok::<_, ldap3::LdapError>(result.rc)
    };
    match tokio::time::timeout(LDAP_TIMEOUT, work).await {
        Ok(Ok(0)) => AuthVerdict::Valid,
        // invalidCredentials (49), or no such entry behind the DN (32).
        Ok(Ok(49 | 32)) => AuthVerdict::Invalid,
        Ok(Ok(rc)) => {
            tracing::warn!(rc, "LDAP bind: unexpected result code");
            AuthVerdict::Unavailable
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "LDAP bind failed: directory unavailable");
            AuthVerdict::Unavailable
        }
        Err(_) => {
            tracing::warn!("LDAP bind timed out");
            AuthVerdict::Unavailable
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn dn_values_are_escaped() {
        assert_eq!(escape_dn_value("alice"), "alice");
        assert_eq!(escape_dn_value("x,ou=admins"), "x\\,ou\\=admins");
        assert_eq!(escape_dn_value("#lead "), "\\#lead\\ ");
    }

    fn phc(m: u32, t: u32, p: u32) -> String {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let salt = SaltString::encode_b64(b"mtac-test-salt!!").unwrap();
        let params = argon2::Params::new(m, t, p, None).unwrap();
        let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        argon.hash_password(b"pw", &salt).unwrap().to_string()
    }

    fn table(hashes: &[String]) -> Auth {
        Auth {
            mechanisms: vec!["PLAIN".into()],
            backend: AuthBackend::Table(hashes.iter().enumerate().map(|(i, h)| (format!("u{i}"), h.clone())).collect()),
            max_failures: 5,
            cache_ttl: 0,
            sender_aliases: Vec::new(),
            null_sender: false,
            header_from_owned: false,
            unknown_user_cost: std::sync::OnceLock::new(),
        }
    }

    /// Issue 14: a fixed dummy (m=19456, t=2) was cheaper than a farm's stronger hashes, so an
    /// unknown user was answered sooner than a known one. The dummy now costs at least as much
    /// as every hash in the table, parameter by parameter.
    #[test]
    fn the_unknown_user_check_costs_at_least_the_dearest_hash_of_the_table() {
        let hashes = [phc(1024, 2, 1), phc(4096, 1, 4), phc(512, 5, 1), "not a PHC string".to_owned()];
        let auth = table(&hashes);
        prepare(&auth);
        let cost = unknown_user_cost(&auth);
        for h in &hashes[..3] {
            let params = argon2::Params::try_from(&argon2::password_hash::PasswordHash::new(h).unwrap()).unwrap();
            assert!(cost[0] >= params.m_cost() && cost[1] >= params.t_cost() && cost[2] >= params.p_cost(), "{h}");
        }
        assert_eq!(cost, [4096, 5, 4, 32]);
        // Worked out once: the memo is what every later login reads.
        assert_eq!(auth.unknown_user_cost.get(), Some(&[4096, 5, 4, 32]));
        // A table of cheap hashes gets a cheap check (no slower than its users either), and the
        // check runs with those parameters.
        let cheap = table(&[phc(64, 1, 1)]);
        assert_eq!(unknown_user_cost(&cheap), [64, 1, 1, 32]);
        unknown_user_check(unknown_user_cost(&cheap), "anything");
        // Nothing parsable: argon2's defaults.
        assert_eq!(dearest(std::iter::empty()), [19456, 2, 1, 32]);
    }
}
