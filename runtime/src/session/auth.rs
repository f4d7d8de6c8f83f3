//! The auth phase's protocol: the SASL exchange (PLAIN and LOGIN, RFC 4954, 4616), its limits
//! and what the credential check's verdict means for the session. The check itself is the
//! driver's ([`Action::Authenticate`] → `conn/auth.rs`).
//!
//! **Invariant:** no mechanism is offered or accepted outside TLS, and a session authenticates
//! only through [`Session::auth_result`] with a [`AuthVerdict::Valid`] from the check.

use super::action::{reply, Action, Refusal};
use super::Session;
use crate::smtp::Reply;
use mtac_ruleset::model::Farm;
use mtac_ruleset::{eval, rules, Ruleset};

/// A SASL exchange waiting for the client's next line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Sasl {
    PlainResponse,
    LoginUser,
    LoginPassword { user: String },
}

/// What the credential check said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthVerdict {
    Valid,
    Invalid,
    /// The directory could not answer: 454, never 535.
    Unavailable,
}

fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text.trim()).ok()
}

impl Session {
    /// A SASL exchange is waiting for the client's next line.
    pub fn in_sasl(&self) -> bool {
        self.sasl.is_some()
    }

    /// The client's answer to a 334 challenge (a base64 line, or `*` to cancel).
    pub fn sasl_line(&mut self, line: &[u8]) -> Action {
        let Some(state) = self.sasl.take() else {
            return self.answer(Reply::bad_sequence("no AUTH in progress"), None);
        };
        let line = String::from_utf8_lossy(line).trim().to_owned();
        if line == "*" {
            return self.answer(reply(501, 5, 7, 0, "Authentication cancelled"), None);
        }
        let Some(decoded) = decode_base64(&line) else {
            return self.answer(reply(501, 5, 5, 2, "Invalid base64 data"), None);
        };
        match state {
            Sasl::PlainResponse => self.plain(&decoded),
            Sasl::LoginUser => self.login_user(decoded),
            Sasl::LoginPassword { user } => {
                Action::Authenticate { user, password: String::from_utf8_lossy(&decoded).into_owned() }
            }
        }
    }

    fn plain(&mut self, decoded: &[u8]) -> Action {
        // authzid NUL authcid NUL password (RFC 4616); a different authzid is refused.
        let mut parts = decoded.split(|b| *b == 0);
        let (Some(authzid), Some(user), Some(password), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return self.answer(reply(501, 5, 5, 2, "Malformed PLAIN response"), None);
        };
        if !authzid.is_empty() && authzid != user {
            return self.auth_failed();
        }
        Action::Authenticate {
            user: String::from_utf8_lossy(user).into_owned(),
            password: String::from_utf8_lossy(password).into_owned(),
        }
    }

    fn login_user(&mut self, decoded: Vec<u8>) -> Action {
        self.sasl = Some(Sasl::LoginPassword { user: String::from_utf8_lossy(&decoded).into_owned() });
        // "Password:"
        Action::reply(Reply::challenge("UGFzc3dvcmQ6"))
    }

    /// `AUTH mechanism [initial-response]`.
    pub(super) fn auth(&mut self, mechanism: &str, initial: Option<String>) -> Action {
        if self.auth_mechanisms.is_empty() {
            return self.answer(reply(503, 5, 5, 1, "Error: authentication not enabled"), None);
        }
        if self.tls.is_none() {
            let r = reply(538, 5, 7, 11, "Encryption required for requested authentication mechanism");
            return self.answer(r, None);
        }
        if self.authenticated.is_some() {
            return self.answer(reply(503, 5, 5, 1, "Already authenticated"), None);
        }
        if self.txn.is_some() {
            return self.answer(reply(503, 5, 5, 1, "AUTH not allowed during a mail transaction"), None);
        }
        if !self.auth_mechanisms.iter().any(|m| m.eq_ignore_ascii_case(mechanism)) {
            return self.answer(reply(504, 5, 5, 4, "Unrecognized authentication type"), None);
        }
        let initial = match initial.as_deref() {
            None => None,
            Some("=") => Some(Vec::new()),
            Some(text) => match decode_base64(text) {
                Some(bytes) => Some(bytes),
                None => return self.answer(reply(501, 5, 5, 2, "Invalid base64 data"), None),
            },
        };
        match (mechanism, initial) {
            ("PLAIN", Some(bytes)) => self.plain(&bytes),
            ("PLAIN", None) => {
                self.sasl = Some(Sasl::PlainResponse);
                Action::reply(Reply::challenge(""))
            }
            ("LOGIN", Some(user)) => self.login_user(user),
            ("LOGIN", None) => {
                self.sasl = Some(Sasl::LoginUser);
                // "Username:"
                Action::reply(Reply::challenge("VXNlcm5hbWU6"))
            }
            _ => self.answer(reply(504, 5, 5, 4, "Unrecognized authentication type"), None),
        }
    }

    /// The credential check's verdict on `user`.
    pub fn auth_result(&mut self, user: String, verdict: AuthVerdict) -> Action {
        match verdict {
            AuthVerdict::Valid => {
                self.authenticated = Some(user);
                Action::reply(reply(235, 2, 7, 0, "Authentication successful"))
            }
            AuthVerdict::Invalid => self.auth_failed(),
            AuthVerdict::Unavailable => {
                let r = reply(454, 4, 7, 0, "Temporary authentication failure");
                self.answer(r, Some(Refusal::no_ban(rules::AUTH_UNAVAILABLE)))
            }
        }
    }

    /// AUTH refused before any password was checked: the client's network is banned from this
    /// farm, or has used up its `max-failures` (counting the checks under way in its other
    /// sessions). `421 4.7.0` and close, as Postfix does for a client over its limits: honest to a
    /// user who has the right password (try later, not "wrong password"), and a guesser's
    /// connection ends at once.
    pub fn auth_locked_out(&mut self) -> Action {
        let text = format!("{} Too many failed authentications from your address, try again later", self.hostname);
        self.close_refusing(reply(421, 4, 7, 0, &text), Refusal::no_ban(rules::AUTH))
    }

    fn auth_failed(&mut self) -> Action {
        self.auth_failures = self.auth_failures.saturating_add(1);
        let refusal = Refusal::no_ban(rules::AUTH);
        if self.auth_failures >= self.max_auth_failures {
            let text = format!("{} Too many failed authentications", self.hostname);
            return self.close_refusing(reply(421, 4, 7, 0, &text), refusal);
        }
        self.answer(reply(535, 5, 7, 8, "Authentication credentials invalid"), Some(refusal))
    }

    /// May the authenticated user send as `sender` (anyone may, before AUTH)? The evaluator
    /// decides ([`eval::may_send_as`]), as it does at MAIL FROM; the driver asks for `auth
    /// header-from`.
    pub fn owns(&self, sender: &str, ruleset: &Ruleset, farm: &Farm) -> bool {
        self.authenticated.as_deref().is_none_or(|user| eval::may_send_as(ruleset, farm, user, sender))
    }
}
