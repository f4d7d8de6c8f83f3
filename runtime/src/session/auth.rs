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

/// What a session keeps once it used AUTH ([`Session`]'s `auth`, boxed: most sessions never do).
#[derive(Debug)]
pub(super) struct AuthState {
    /// A SASL exchange in progress: the next line is a response, not a command.
    pub(super) sasl: Option<Sasl>,
    /// The user this session authenticated as.
    pub(super) user: Option<String>,
    /// Failed AUTH attempts in this session.
    failures: u32,
    /// The farm's `max-failures`, read at the first AUTH.
    max_failures: u32,
}

/// Failed attempts that close a session when the farm sets no `max-failures`.
const DEFAULT_MAX_FAILURES: u32 = 5;

impl AuthState {
    fn new(max_failures: u32) -> AuthState {
        AuthState { sasl: None, user: None, failures: 0, max_failures }
    }
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
        self.auth.as_ref().is_some_and(|a| a.sasl.is_some())
    }

    /// The client's answer to a 334 challenge (a base64 line, or `*` to cancel).
    pub fn sasl_line(&mut self, line: &[u8]) -> Action {
        let Some(state) = self.auth.as_mut().and_then(|a| a.sasl.take()) else {
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
        self.sasl(Sasl::LoginPassword { user: String::from_utf8_lossy(&decoded).into_owned() });
        // "Password:"
        Action::reply(Reply::challenge("UGFzc3dvcmQ6"))
    }

    /// `AUTH mechanism [initial-response]`.
    pub(super) fn auth(&mut self, mechanism: &str, initial: Option<String>, farm: &Farm) -> Action {
        let mechanisms = farm.auth.as_ref().map(|a| a.mechanisms.as_slice()).unwrap_or_default();
        if mechanisms.is_empty() {
            return self.answer(reply(503, 5, 5, 1, "Error: authentication not enabled"), None);
        }
        if self.tls.is_none() {
            let r = reply(538, 5, 7, 11, "Encryption required for requested authentication mechanism");
            return self.answer(r, None);
        }
        if self.authenticated().is_some() {
            return self.answer(reply(503, 5, 5, 1, "Already authenticated"), None);
        }
        if self.txn.is_some() {
            return self.answer(reply(503, 5, 5, 1, "AUTH not allowed during a mail transaction"), None);
        }
        if !mechanisms.iter().any(|m| m.eq_ignore_ascii_case(mechanism)) {
            return self.answer(reply(504, 5, 5, 4, "Unrecognized authentication type"), None);
        }
        if self.auth.is_none() {
            let max_failures = farm.auth.as_ref().map_or(DEFAULT_MAX_FAILURES, |a| a.max_failures.max(1));
            self.auth = Some(Box::new(AuthState::new(max_failures)));
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
                self.sasl(Sasl::PlainResponse);
                Action::reply(Reply::challenge(""))
            }
            ("LOGIN", Some(user)) => self.login_user(user),
            ("LOGIN", None) => {
                self.sasl(Sasl::LoginUser);
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
                self.auth_state().user = Some(user);
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

    /// The session's AUTH state: made by the AUTH command that started the exchange, before
    /// any response or verdict can reach here.
    fn auth_state(&mut self) -> &mut AuthState {
        self.auth.get_or_insert_with(|| Box::new(AuthState::new(DEFAULT_MAX_FAILURES)))
    }

    /// The next line is the client's answer in this SASL exchange.
    fn sasl(&mut self, state: Sasl) {
        self.auth_state().sasl = Some(state);
    }

    fn auth_failed(&mut self) -> Action {
        let state = self.auth_state();
        state.failures = state.failures.saturating_add(1);
        let exhausted = state.failures >= state.max_failures;
        let refusal = Refusal::no_ban(rules::AUTH);
        if exhausted {
            let text = format!("{} Too many failed authentications", self.hostname);
            return self.close_refusing(reply(421, 4, 7, 0, &text), refusal);
        }
        self.answer(reply(535, 5, 7, 8, "Authentication credentials invalid"), Some(refusal))
    }

    /// May the authenticated user send as `sender` (anyone may, before AUTH)? The evaluator
    /// decides ([`eval::may_send_as`]), as it does at MAIL FROM; the driver asks for `auth
    /// header-from`.
    pub fn owns(&self, sender: &str, ruleset: &Ruleset, farm: &Farm) -> bool {
        self.authenticated().is_none_or(|user| eval::may_send_as(ruleset, farm, user, sender))
    }
}
