//! A STARTTLS SMTP load generator: what `smtp-source` is for plain SMTP, with TLS.
//!
//! Each session connects, reads the greeting, says EHLO, STARTTLS, completes a TLS handshake
//! (any certificate is accepted, but the handshake's signatures are checked: loopback
//! benchmarks have no CA, and a real sender's opportunistic TLS does the same), says EHLO
//! again, then sends up to `per_session` messages (MAIL, RCPT, DATA, the message; no
//! pipelining, like smtp-source) and QUITs. `per_session = 1` is one STARTTLS session per
//! message, the worst case a front meets; larger values are a busy sender reusing its
//! connection. TLS session resumption is off unless asked for, so every session pays a full
//! handshake, as a first contact does.
//!
//! `sessions` tasks run at once and take their messages from one shared count, so a run sends
//! exactly `messages` messages. Only a message the server answered with 250 after its data is
//! counted as sent; every other outcome is a failure counted under the step and reply that
//! ended it ("RCPT 550", "TLS handshake: …", "connect: ConnectionRefused"), and
//! `sent + failed == messages` always.
//!
//! `bench/tls-peers.py` runs it against mtac and Postfix side by side (BENCHMARKS.md,
//! "STARTTLS inbound"); `tests/it/tls_load.rs` runs it against a node.

mod conversation;
mod session;

use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What one run does.
#[derive(Debug, Clone)]
pub struct Settings {
    pub target: SocketAddr,
    /// Sessions open at once.
    pub sessions: usize,
    /// Messages in the whole run.
    pub messages: u64,
    /// Messages per connection (1: one STARTTLS session per message).
    pub per_session: u64,
    /// Bytes of message body (headers come on top, about 150 bytes).
    pub size: usize,
    /// The most any one step (connect, a reply, a write, the handshake) may take.
    pub timeout: Duration,
    pub helo: String,
    pub from: String,
    pub to: String,
    /// The TLS server name sent (SNI); none: the target's address, no SNI.
    pub server_name: Option<String>,
    /// Plain SMTP, no STARTTLS: the ceiling a TLS run is compared with.
    pub plain: bool,
    /// Keep TLS sessions for resumption (off: every session is a full handshake).
    pub resume: bool,
    /// Offer only this TLS version ("1.2" or "1.3"); none: both, which negotiates 1.3.
    pub tls_version: Option<String>,
}

impl Settings {
    /// A run of `messages` messages to `target` with smtp-source's addresses and 4 KiB bodies.
    pub fn new(target: SocketAddr, messages: u64) -> Settings {
        Settings {
            target,
            sessions: 1,
            messages,
            per_session: 1,
            size: 4096,
            timeout: Duration::from_secs(30),
            helo: "tls-load.example".to_owned(),
            from: "sender@example.com".to_owned(),
            to: "rcpt@example.net".to_owned(),
            server_name: None,
            plain: false,
            resume: false,
            tls_version: None,
        }
    }
}

/// What one run did.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub messages: u64,
    /// Messages the server answered 250 after their data.
    pub sent: u64,
    pub failed: u64,
    /// Failed messages by the step and reply (or error) that ended them.
    pub failures: BTreeMap<String, u64>,
    /// Connections opened.
    pub sessions: u64,
    /// Sessions that completed a TLS handshake.
    pub tls_sessions: u64,
    /// Sessions whose handshake resumed an earlier TLS session.
    pub resumed: u64,
    pub wall_seconds: f64,
    /// Sent messages per second of wall time.
    pub messages_per_second: f64,
}

/// Why a run could not start.
#[derive(Debug)]
pub enum SetupError {
    /// `tls_version` is neither "1.2" nor "1.3".
    TlsVersion(String),
    /// The TLS client configuration was refused by rustls.
    Tls(rustls::Error),
    /// `server_name` is neither a host name nor an IP address.
    ServerName(String),
    /// `sessions` or `per_session` is 0.
    Zero(&'static str),
}

impl std::fmt::Display for SetupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SetupError::TlsVersion(v) => write!(f, "--tls-version {v}: give 1.2 or 1.3"),
            SetupError::Tls(e) => write!(f, "TLS client configuration: {e}"),
            SetupError::ServerName(n) => write!(f, "--server-name {n}: not a host name or IP address"),
            SetupError::Zero(what) => write!(f, "{what} must be at least 1"),
        }
    }
}

impl std::error::Error for SetupError {}

/// Counts kept by one task, merged at the end (no shared counters on the hot path).
#[derive(Default)]
struct Tally {
    sent: u64,
    failures: BTreeMap<String, u64>,
    sessions: u64,
    tls_sessions: u64,
    resumed: u64,
}

impl Tally {
    fn fail(&mut self, reason: &str, messages: u64) {
        if messages > 0 {
            *self.failures.entry(reason.to_owned()).or_default() += messages;
        }
    }

    fn merge(&mut self, other: Tally) {
        self.sent += other.sent;
        self.sessions += other.sessions;
        self.tls_sessions += other.tls_sessions;
        self.resumed += other.resumed;
        for (reason, n) in other.failures {
            *self.failures.entry(reason).or_default() += n;
        }
    }
}

/// Run on the current tokio runtime until every message is sent or failed.
pub async fn run(settings: &Settings) -> Result<Report, SetupError> {
    if settings.sessions == 0 {
        return Err(SetupError::Zero("--sessions"));
    }
    if settings.per_session == 0 {
        return Err(SetupError::Zero("--per-session"));
    }
    let plan = Arc::new(session::Plan::new(settings)?);
    let remaining = Arc::new(AtomicU64::new(settings.messages));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(settings.sessions);
    for _ in 0..settings.sessions {
        let (plan, remaining) = (Arc::clone(&plan), Arc::clone(&remaining));
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            loop {
                let take = |left: u64| (left > 0).then(|| left - left.min(plan.per_session));
                let Ok(left) = remaining.fetch_update(Ordering::Relaxed, Ordering::Relaxed, take) else {
                    return tally;
                };
                plan.session(left.min(plan.per_session), &mut tally).await;
            }
        }));
    }
    let mut total = Tally::default();
    let mut lost = 0;
    for task in tasks {
        match task.await {
            Ok(tally) => total.merge(tally),
            // A panicking task is a bug here, not the server's failure; its messages are
            // counted as lost rather than hidden.
            Err(_) => lost += 1,
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let failed_counted: u64 = total.failures.values().sum();
    let unaccounted = settings.messages.saturating_sub(total.sent + failed_counted);
    if unaccounted > 0 || lost > 0 {
        total.fail("generator task lost", unaccounted);
    }
    let failed = total.failures.values().sum();
    Ok(Report {
        messages: settings.messages,
        sent: total.sent,
        failed,
        failures: total.failures,
        sessions: total.sessions,
        tls_sessions: total.tls_sessions,
        resumed: total.resumed,
        wall_seconds: wall,
        messages_per_second: if wall > 0.0 { total.sent as f64 / wall } else { 0.0 },
    })
}
