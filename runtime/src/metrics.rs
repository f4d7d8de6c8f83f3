//! The node's Prometheus metrics, one registry per node (no global recorder: several nodes in
//! one test process keep their own counts).
//!
//! Names follow docs/session.md's phases and are prefixed `mtac_`. Label values come from
//! closed sets — farm names, stages, verdicts, the policy's own rule and zone names, fixed
//! internal reasons — never a client address, sender or recipient (STYLE.md 14): a label per
//! address would grow the series without bound under a spam wave.
//!
//! Counters move where the event happens; values that already live elsewhere (connections now,
//! active bans, spool bytes, zone suspension) are read when /metrics is scraped, so the hot path
//! pays nothing for them.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FarmLabel {
    pub farm: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedAtAccept {
    pub farm: String,
    /// `limit` (connection limits), `ban`, `rate`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SessionEnd {
    pub farm: String,
    /// [`crate::conn::End::as_str`].
    pub end: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Refusal {
    pub farm: String,
    /// connect, helo, mail, rcpt, data.
    pub stage: &'static str,
    /// `reject` (5xx) or `defer` (4xx).
    pub verdict: &'static str,
    /// The policy rule, or an internal reason (`protocol`, `backend`, `rate-limit`, `ban`…).
    pub rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Verdict {
    pub farm: String,
    /// `accepted`, `rejected`, `deferred`.
    pub verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MessageOutcome {
    pub farm: String,
    /// `accepted`, `rejected`, `deferred`.
    pub verdict: &'static str,
    /// `delivered`, `backend`, `size`, `bare-line-end`, `spool`, `shutdown`…
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GreylistOutcome {
    pub farm: String,
    /// [`crate::state::GreylistVerdict::as_str`], or `error-accepted` / `error-deferred`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthOutcome {
    pub farm: String,
    /// success, failure, unavailable.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScannerLabel {
    /// clamav, spamassassin, rspamd.
    pub scanner: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScanResult {
    pub scanner: &'static str,
    /// clean, virus, scored, timeout, error.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ZoneLabel {
    pub zone: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RelayError {
    pub farm: String,
    /// `rcpt` (opening the transaction or a recipient) or `data`.
    pub phase: &'static str,
    /// `rejected` (5xx) or `deferred` (4xx, which includes no back end reachable).
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RulesetLabel {
    pub hash: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadResult {
    /// `ok` or `failed`.
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectoryLookup {
    pub farm: String,
    /// `known`, `unknown` or `unavailable`.
    pub result: &'static str,
    /// `cache` (no round trip) or `directory`.
    pub source: &'static str,
}

fn relay_histogram() -> Histogram {
    // 1 ms to ~33 s: a LAN back end answers in milliseconds, a stuck one hits the relay timeout.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

fn score_histogram() -> Histogram {
    Histogram::new([-5.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 50.0])
}

/// Every metric of a node.
pub struct Metrics {
    registry: Registry,
    pub connections: Family<FarmLabel, Counter>,
    pub refused_at_accept: Family<RefusedAtAccept, Counter>,
    pub sessions: Family<SessionEnd, Counter>,
    pub refusals: Family<Refusal, Counter>,
    pub recipients: Family<Verdict, Counter>,
    pub messages: Family<MessageOutcome, Counter>,
    pub message_bytes: Family<FarmLabel, Counter>,
    pub dnsbl_hits: Family<ZoneLabel, Counter>,
    pub dnsbl_errors: Family<ZoneLabel, Counter>,
    pub relay_seconds: Family<FarmLabel, Histogram, fn() -> Histogram>,
    pub relay_errors: Family<RelayError, Counter>,
    pub bans: Counter,
    pub verdict_headers_removed: Counter,
    pub greylist: Family<GreylistOutcome, Counter>,
    pub scans: Family<ScanResult, Counter>,
    pub auth: Family<AuthOutcome, Counter>,
    pub auth_cached: Counter,
    pub tls_sessions: Family<FarmLabel, Counter>,
    pub viruses: Family<FarmLabel, Counter>,
    pub spam_score: Family<ScannerLabel, Histogram, fn() -> Histogram>,
    pub scan_seconds: Family<ScannerLabel, Histogram, fn() -> Histogram>,
    pub greylist_wait: Histogram,
    pub greylist_other_address: Counter,
    pub reloads: Family<ReloadResult, Counter>,
    pub directory: Family<DirectoryLookup, Counter>,
    pub directory_seconds: Family<FarmLabel, Histogram, fn() -> Histogram>,
    // Read at scrape time.
    pub connections_active: Gauge,
    pub bans_active: Gauge,
    pub spool_bytes: Gauge,
    pub spool_files: Gauge,
    pub spool_budget: Gauge,
    pub transfers_in_flight: Gauge,
    pub zone_suspended: Family<ZoneLabel, Gauge>,
    pub ruleset: Family<RulesetLabel, Gauge>,
    pub ruleset_loaded: Gauge<f64, AtomicU64>,
    pub start_time: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("mtac");
        let m = Metrics {
            connections: Family::default(),
            refused_at_accept: Family::default(),
            sessions: Family::default(),
            refusals: Family::default(),
            recipients: Family::default(),
            messages: Family::default(),
            message_bytes: Family::default(),
            dnsbl_hits: Family::default(),
            dnsbl_errors: Family::default(),
            relay_seconds: Family::new_with_constructor(relay_histogram),
            relay_errors: Family::default(),
            bans: Counter::default(),
            verdict_headers_removed: Counter::default(),
            greylist: Family::default(),
            scans: Family::default(),
            auth: Family::default(),
            auth_cached: Counter::default(),
            tls_sessions: Family::default(),
            viruses: Family::default(),
            spam_score: Family::new_with_constructor(score_histogram),
            scan_seconds: Family::new_with_constructor(relay_histogram),
            // 1 minute to ~2.8 days: what greylisting adds to a legitimate message.
            greylist_wait: Histogram::new(exponential_buckets(60.0, 2.0, 13)),
            greylist_other_address: Counter::default(),
            reloads: Family::default(),
            directory: Family::default(),
            directory_seconds: Family::new_with_constructor(relay_histogram),
            connections_active: Gauge::default(),
            bans_active: Gauge::default(),
            spool_bytes: Gauge::default(),
            spool_files: Gauge::default(),
            spool_budget: Gauge::default(),
            transfers_in_flight: Gauge::default(),
            zone_suspended: Family::default(),
            ruleset: Family::default(),
            ruleset_loaded: Gauge::default(),
            start_time: Gauge::default(),
            registry: Registry::default(),
        };
        // Counters get their `_total` suffix from the encoder.
        registry.register("connections", "SMTP connections accepted", m.connections.clone());
        registry.register(
            "connections_refused",
            "Connections turned away at accept (limit, ban, rate)",
            m.refused_at_accept.clone(),
        );
        registry.register("connections_active", "SMTP connections open now", m.connections_active.clone());
        registry.register("sessions", "Sessions ended, by how they ended", m.sessions.clone());
        registry.register(
            "refusals",
            "4xx and 5xx replies, by stage and by the rule that gave them",
            m.refusals.clone(),
        );
        registry.register("recipients", "RCPT TO verdicts", m.recipients.clone());
        registry.register("messages", "Messages after DATA, by verdict and reason", m.messages.clone());
        registry.register("message_bytes", "Bytes of messages relayed or delivered", m.message_bytes.clone());
        registry.register("dnsbl_hits", "DNS list answers that listed the name or address", m.dnsbl_hits.clone());
        registry.register(
            "dnsbl_errors",
            "DNS list queries without a usable answer (timeout, SERVFAIL, bad code, suspended zone)",
            m.dnsbl_errors.clone(),
        );
        registry.register(
            "dns_zone_suspended",
            "1 while a DNS list zone fails its test points and is not consulted",
            m.zone_suspended.clone(),
        );
        registry.register(
            "relay_duration_seconds",
            "Time from the end of DATA to the back end's final reply",
            m.relay_seconds.clone(),
        );
        registry.register("relay_errors", "Back end failures at relay time", m.relay_errors.clone());
        registry.register("bans", "Client networks banned", m.bans.clone());
        registry.register(
            "verdict_headers_removed",
            "Header fields a sender wrote under a name of this node's verdicts, removed or renamed",
            m.verdict_headers_removed.clone(),
        );
        registry.register("greylist", "Greylist decisions, by outcome", m.greylist.clone());
        registry.register("scans", "Scanner answers, by scanner and result", m.scans.clone());
        registry.register("auth", "SMTP AUTH attempts, by outcome", m.auth.clone());
        registry.register(
            "auth_cache_hits",
            "Successful AUTH answered from the login cache (no password hash, no LDAP bind)",
            m.auth_cached.clone(),
        );
        registry.register("tls_sessions", "Sessions that started TLS", m.tls_sessions.clone());
        registry.register("viruses", "Messages refused for a virus", m.viruses.clone());
        registry.register("spam_score", "Spam scores given by the scanners", m.spam_score.clone());
        registry.register("scan_duration_seconds", "Time each scanner took", m.scan_seconds.clone());
        registry.register(
            "greylist_wait_seconds",
            "The delay greylisting added: first attempt to the retry that passed",
            m.greylist_wait.clone(),
        );
        registry.register(
            "greylist_retry_other_address",
            "Retries that passed from another address than the first attempt (same network or pool)",
            m.greylist_other_address.clone(),
        );
        registry.register(
            "directory_lookups",
            "Recipient lookups in the directory, by result and by whether the cache answered",
            m.directory.clone(),
        );
        registry.register(
            "directory_duration_seconds",
            "Time of each directory round trip (cache hits excluded)",
            m.directory_seconds.clone(),
        );
        registry.register("bans_active", "Client networks banned now", m.bans_active.clone());
        registry.register("spool_bytes", "Bytes of messages in the spool now", m.spool_bytes.clone());
        registry.register("spool_files", "Messages in the spool now", m.spool_files.clone());
        registry.register(
            "spool_budget_bytes",
            "The most bytes messages in flight may hold in the spool (spool max-bytes=)",
            m.spool_budget.clone(),
        );
        registry.register(
            "transfers_in_flight",
            "Transactions open now (MAIL to the end of DATA), all clients together",
            m.transfers_in_flight.clone(),
        );
        registry.register("ruleset_info", "The ruleset in use (its blake3 hash as a label)", m.ruleset.clone());
        registry.register(
            "ruleset_loaded_timestamp_seconds",
            "When the ruleset in use was loaded (Unix time)",
            m.ruleset_loaded.clone(),
        );
        registry.register("reloads", "Ruleset reloads, by result", m.reloads.clone());
        registry.register("start_time_seconds", "When the node started (Unix time)", m.start_time.clone());
        // Present from the start, so an alert on their increase sees the first failure.
        for result in ["ok", "failed"] {
            m.reloads.get_or_create(&ReloadResult { result }).inc_by(0);
        }
        Metrics { registry, ..m }
    }

    /// The ruleset in use changed.
    pub fn ruleset_loaded(&self, hash: &str) {
        self.ruleset.clear();
        self.ruleset.get_or_create(&RulesetLabel { hash: hash.to_owned() }).set(1);
        self.ruleset_loaded.set(unix_now());
    }

    /// A policy or protocol refusal answered to a client.
    pub fn refusal(&self, farm: &str, stage: &'static str, permanent: bool, rule: &str) {
        let labels = Refusal {
            farm: farm.to_owned(),
            stage,
            verdict: if permanent { "reject" } else { "defer" },
            rule: rule.to_owned(),
        };
        self.refusals.get_or_create(&labels).inc();
    }

    /// The text exposition (OpenMetrics 1.0).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// [`crate::state::since_epoch`] in fractional seconds, as Prometheus timestamps are.
pub fn unix_now() -> f64 {
    crate::state::since_epoch().as_secs_f64()
}
