//! Checking SMTP AUTH credentials: against the PHC password hashes compiled into the ruleset, or
//! by binding to an LDAP directory as the user.
//!
//! Both run off the session's worker: a password hash costs tens of milliseconds of CPU by
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
                    // An unknown user costs as much as a known one: no user enumeration by timing.
                    let _ = check_phc(DUMMY_HASH, &password);
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

/// An Argon2id hash of a random password, verified for unknown users.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$bXRhYy1kdW1teS1zYWx0$9Ee8uLRMl2c2JjUwWtH3AQa3gZEYSbLXRAGmUVY6tSk";

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
mod tests {
    use super::*;

    #[test]
    fn dn_values_are_escaped() {
        assert_eq!(escape_dn_value("alice"), "alice");
        assert_eq!(escape_dn_value("x,ou=admins"), "x\\,ou\\=admins");
        assert_eq!(escape_dn_value("#lead "), "\\#lead\\ ");
    }

    #[test]
    fn the_dummy_hash_is_a_valid_phc_string() {
        assert!(argon2::password_hash::PasswordHash::new(DUMMY_HASH).is_ok());
        assert!(!check_phc(DUMMY_HASH, "anything"));
    }
}
