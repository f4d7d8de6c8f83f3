//! The node's Prometheus metrics, one registry per node (no global recorder: several nodes in
//! one test process keep their own counts).
//!
//! Names follow docs/session.md's phases and are prefixed `mtac_`. Label values come from
//! closed sets — farm names, stages, verdicts, the policy's own rule and zone names, fixed
//! internal reasons — never a client address, sender or recipient (STYLE.md 14): a label per
//! address would grow the series without bound under a spam wave.
//!
//! Counters and the connections gauge move where the event happens, with one relaxed atomic
//! operation; values that already live elsewhere (active bans, spool bytes, zone suspension)
//! are read when /metrics is scraped, so the hot path pays nothing for them.
//!
//! **Invariant:** this registry is the one home of the node's counts: `/status`
//! (`crate::admin::Status`) and the tests read these counters, never a copy kept beside them.
//! Every metric is one entry of the `metrics!` table, so a name, its help and its labels are
//! written once.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

/// Label sets: each entry is a struct of `pub` fields with the derives a metric family needs;
/// a field's name is its label's name.
macro_rules! label_sets {
    ($($set:ident { $($(#[$doc:meta])* $field:ident: $type:ty),* $(,)? })*) => {
        $(
            #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
            pub struct $set {
                $($(#[$doc])* pub $field: $type,)*
            }
        )*
    };
}

label_sets! {
    FarmLabel { farm: String }
    ThreadLabel {
        /// A session thread's index (`mtac-session-N`).
        thread: String,
    }
    RefusedAtAccept {
        farm: String,
        /// `limit` (connection limits), `ban`, `rate`; on PROXY listeners `proxy-source` (not
        /// from a `proxy-from` network), `proxy-missing` (no header in time), `proxy-header`
        /// (not a valid header).
        reason: &'static str,
    }
    SessionEnd {
        farm: String,
        /// [`crate::conn::End::as_str`].
        end: &'static str,
    }
    Refusal {
        farm: String,
        /// connect, helo, mail, rcpt, data.
        stage: &'static str,
        /// `reject` (5xx) or `defer` (4xx).
        verdict: &'static str,
        /// The policy rule, or an internal reason (`protocol`, `backend`, `rate-limit`, `ban`…).
        rule: String,
    }
    Verdict {
        farm: String,
        /// `accepted`, `rejected`, `deferred`.
        verdict: &'static str,
    }
    MessageOutcome {
        farm: String,
        /// `accepted`, `rejected`, `deferred`.
        verdict: &'static str,
        /// `delivered`, `backend`, `size`, `bare-line-end`, `spool`, `shutdown`…
        reason: &'static str,
    }
    GreylistOutcome {
        farm: String,
        /// [`crate::state::GreylistVerdict::as_str`], or `error-accepted` / `error-deferred`.
        outcome: &'static str,
    }
    AuthOutcome {
        farm: String,
        /// success, failure, unavailable.
        outcome: &'static str,
    }
    ScannerLabel {
        /// clamav, spamassassin, rspamd.
        scanner: &'static str,
    }
    ScanResult {
        scanner: &'static str,
        /// clean, virus, scored, timeout, error.
        result: &'static str,
    }
    FilterLabel {
        /// The milter's or hook's `name=` in the policy.
        filter: String,
    }
    FilterAnswer {
        filter: String,
        /// continue, reject, tempfail, discard, add-header, insert-header, change-header,
        /// delete-header, replace-body, add-recipient, delete-recipient, quarantine,
        /// refused-action, timeout, error.
        action: &'static str,
    }
    ZoneLabel { zone: String }
    DkimSigning {
        farm: String,
        /// `signed`, `no-key` (no key for the From domain, or not one From address), `failed`.
        result: &'static str,
    }
    SenderAuthVerdict {
        farm: String,
        /// `spf` (MAIL FROM), `spf-helo`, `dkim` (one per signature), `arc`, `dmarc`.
        check: &'static str,
        /// RFC 8601's words: pass, fail, softfail, neutral, none, temperror, permerror.
        result: &'static str,
    }
    RelayError {
        farm: String,
        /// `rcpt` (opening the transaction or a recipient) or `data`.
        phase: &'static str,
        /// `rejected` (5xx) or `deferred` (4xx, which includes no back end reachable).
        kind: &'static str,
    }
    RulesetLabel { hash: String }
    CandidateDecision {
        farm: String,
        stage: &'static str,
        /// same, newly-refused, newly-accepted, reply-changed, pending-changed
        /// (`mtac_ruleset::replay::Change`).
        direction: &'static str,
        /// The rule that refuses on either side (empty when both accept).
        rule: String,
    }
    PregreetOutcome {
        farm: String,
        /// `passed` (waited for the whole greeting), `remembered` (greeted at once),
        /// `early-talker`, `left` (closed during the wait).
        outcome: &'static str,
    }
    ReloadResult {
        /// `ok` or `failed`.
        result: &'static str,
    }
    DirectoryLookup {
        farm: String,
        /// `known`, `unknown` or `unavailable`.
        result: &'static str,
        /// `cache` (no round trip) or `directory`.
        source: &'static str,
    }
}

/// A family of histograms, each made by its constructor (its buckets).
type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn relay_histogram() -> Histogram {
    // 1 ms to ~33 s: a LAN back end answers in milliseconds, a stuck one hits the relay timeout.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

fn score_histogram() -> Histogram {
    Histogram::new([-5.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 50.0])
}

/// The one table of metrics: each entry makes a field of [`Metrics`] and registers it, in this
/// order (the exposition's order), as `mtac_NAME` with its help. An entry without `= init` is
/// made by `Default`. Counters get their `_total` suffix from the encoder.
macro_rules! metrics {
    ($($field:ident: $type:ty $(= $init:expr)?, $name:literal, $help:literal;)*) => {
        /// Every metric of a node.
        pub struct Metrics {
            registry: Registry,
            $(pub $field: $type,)*
        }

        impl Metrics {
            pub fn new() -> Metrics {
                let mut registry = Registry::with_prefix("mtac");
                $(
                    let $field: $type = metrics!(@init $($init)?);
                    registry.register($name, $help, $field.clone());
                )*
                let metrics = Metrics { registry, $($field),* };
                // Present from the start, so an alert on their increase sees the first failure.
                for result in ["ok", "failed"] {
                    metrics.reloads.get_or_create(&ReloadResult { result }).inc_by(0);
                }
                metrics
            }
        }
    };
    (@init $init:expr) => { $init };
    (@init) => { Default::default() };
}

metrics! {
    connections: Family<FarmLabel, Counter>, "connections", "SMTP connections accepted";
    refused_at_accept: Family<RefusedAtAccept, Counter>, "connections_refused", "Connections turned away at accept (limit, ban, rate, PROXY header)";
    connections_active: Gauge, "connections_active", "SMTP connections open now";
    thread_connections: Family<ThreadLabel, Counter>, "session_thread_connections",
        "Connections given to each session thread (thread 0 keeps them until it is busy)";
    sessions: Family<SessionEnd, Counter>, "sessions", "Sessions ended, by how they ended";
    refusals: Family<Refusal, Counter>, "refusals", "4xx and 5xx replies, by stage and by the rule that gave them";
    shadow_refusals: Family<Refusal, Counter>, "shadow_refusals",
        "Refusals a shadow rule would have given (never sent), by stage and rule";
    shadow_ruleset_decisions: Family<CandidateDecision, Counter>, "shadow_ruleset_decisions",
        "Decisions compared with the shadow ruleset's, by stage, direction of the difference and rule";
    shadow_ruleset_reloads: Family<ReloadResult, Counter>, "shadow_ruleset_reloads", "Shadow ruleset loads, by result";
    recipients: Family<Verdict, Counter>, "recipients", "RCPT TO verdicts";
    messages: Family<MessageOutcome, Counter>, "messages", "Messages after DATA, by verdict and reason";
    message_bytes: Family<FarmLabel, Counter>, "message_bytes", "Bytes of messages relayed or delivered";
    dnsbl_hits: Family<ZoneLabel, Counter>, "dnsbl_hits", "DNS list answers that listed the name or address";
    dnsbl_errors: Family<ZoneLabel, Counter>, "dnsbl_errors",
        "DNS list queries without a usable answer (timeout, SERVFAIL, bad code, suspended zone)";
    zone_suspended: Family<ZoneLabel, Gauge>, "dns_zone_suspended",
        "1 while a DNS list zone fails its test points and is not consulted";
    relay_seconds: Histograms<FarmLabel> = Family::new_with_constructor(relay_histogram), "relay_duration_seconds",
        "Time from the end of DATA to the back end's final reply";
    relay_errors: Family<RelayError, Counter>, "relay_errors", "Back end failures at relay time";
    bans: Counter, "bans", "Client networks banned";
    verdict_headers_removed: Counter, "verdict_headers_removed",
        "Header fields a sender wrote under a name of this node's verdicts, removed or renamed";
    greylist: Family<GreylistOutcome, Counter>, "greylist", "Greylist decisions, by outcome";
    scans: Family<ScanResult, Counter>, "scans", "Scanner answers, by scanner and result";
    filter_answers: Family<FilterAnswer, Counter>, "filter_answers",
        "Milter and hook answers about messages, by filter and action";
    filter_seconds: Histograms<FilterLabel> = Family::new_with_constructor(relay_histogram), "filter_duration_seconds",
        "Time each milter or hook took about a message";
    sender_auth: Family<SenderAuthVerdict, Counter>, "sender_auth",
        "Sender authentication verdicts (SPF, each DKIM signature, ARC, DMARC), by check and result";
    auth: Family<AuthOutcome, Counter>, "auth", "SMTP AUTH attempts, by outcome";
    auth_cached: Counter, "auth_cache_hits",
        "Successful AUTH answered from the login cache (no password hash, no LDAP bind)";
    dkim_signatures: Family<DkimSigning, Counter>, "dkim_signatures",
        "Authenticated users' messages on farms with dkim-sign, by whether they were signed";
    pregreet: Family<PregreetOutcome, Counter>, "pregreet", "Pregreet test outcomes on first contact, and remembered clients";
    pipelining_refused: Family<FarmLabel, Counter>, "pipelining_refused",
        "Sessions closed for input sent before a reply it had to wait for (RFC 2920)";
    under_stress: Family<FarmLabel, Gauge>, "farm_under_stress",
        "1 while the farm's connections pass its stress share (screen { stress at= })";
    stressed_sessions: Family<FarmLabel, Counter>, "stress_sessions",
        "Sessions started under stress, with shorter timeouts and a lower error limit";
    error_delays: Family<FarmLabel, Counter>, "error_delays",
        "Negative replies held back past the soft error limit (limits { soft-errors })";
    tls_sessions: Family<FarmLabel, Counter>, "tls_sessions", "Sessions that started TLS";
    viruses: Family<FarmLabel, Counter>, "viruses", "Messages refused for a virus";
    spam_score: Histograms<ScannerLabel> = Family::new_with_constructor(score_histogram), "spam_score",
        "Spam scores given by the scanners";
    scan_seconds: Histograms<ScannerLabel> = Family::new_with_constructor(relay_histogram), "scan_duration_seconds",
        "Time each scanner took";
    // 1 minute to ~2.8 days: what greylisting adds to a legitimate message.
    greylist_wait: Histogram = Histogram::new(exponential_buckets(60.0, 2.0, 13)), "greylist_wait_seconds",
        "The delay greylisting added: first attempt to the retry that passed";
    greylist_other_address: Counter, "greylist_retry_other_address",
        "Retries that passed from another address than the first attempt (same network or pool)";
    directory: Family<DirectoryLookup, Counter>, "directory_lookups",
        "Recipient lookups in the directory, by result and by whether the cache answered";
    directory_seconds: Histograms<FarmLabel> = Family::new_with_constructor(relay_histogram),
        "directory_duration_seconds", "Time of each directory round trip (cache hits excluded)";
    journal_records: Counter, "journal_records", "Decision journal records written";
    journal_bytes: Counter, "journal_bytes", "Bytes of decision journal records written (length prefixes included)";
    journal_dropped: Counter, "journal_dropped",
        "Decision journal records dropped: the writer's queue was full, or the file could not be written";
    // Set at scrape time from where the value lives (Shared::render_metrics).
    bans_active: Gauge, "bans_active", "Client networks banned now";
    spool_bytes: Gauge, "spool_bytes", "Bytes of messages in the spool now";
    spool_files: Gauge, "spool_files", "Messages in the spool now";
    spool_budget: Gauge, "spool_budget_bytes",
        "The most bytes messages in flight may hold in the spool (spool max-bytes=)";
    transfers_in_flight: Gauge, "transfers_in_flight",
        "Transactions open now (MAIL to the end of DATA), all clients together";
    ruleset: Family<RulesetLabel, Gauge>, "ruleset_info", "The ruleset in use (its blake3 hash as a label)";
    ruleset_loaded: Gauge<f64, AtomicU64>, "ruleset_loaded_timestamp_seconds",
        "When the ruleset in use was loaded (Unix time)";
    reloads: Family<ReloadResult, Counter>, "reloads", "Ruleset reloads, by result";
    start_time: Gauge, "start_time_seconds", "When the node started (Unix time)";
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// The ruleset in use changed.
    pub fn ruleset_loaded(&self, hash: &str) {
        self.ruleset.clear();
        self.ruleset.get_or_create(&RulesetLabel { hash: hash.to_owned() }).set(1);
        self.ruleset_loaded.set(unix_now());
    }

    /// Reloads counted with `result` (`ok` or `failed`) since start.
    pub fn reloads_counted(&self, result: &'static str) -> u64 {
        self.reloads.get(&ReloadResult { result }).map_or(0, |c| c.get())
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

    /// One refusal a `shadow` rule would have given.
    pub fn shadow_refusal(&self, farm: &str, stage: &'static str, permanent: bool, rule: &str) {
        let labels = Refusal {
            farm: farm.to_owned(),
            stage,
            verdict: if permanent { "reject" } else { "defer" },
            rule: rule.to_owned(),
        };
        self.shadow_refusals.get_or_create(&labels).inc();
    }

    /// One decision compared with the shadow ruleset's.
    pub fn candidate_decision(&self, farm: &str, stage: &'static str, direction: &'static str, rule: &str) {
        let labels = CandidateDecision { farm: farm.to_owned(), stage, direction, rule: rule.to_owned() };
        self.shadow_ruleset_decisions.get_or_create(&labels).inc();
    }

    /// One sender authentication verdict.
    pub fn sender_auth_verdict(&self, farm: &str, check: &'static str, result: &'static str) {
        self.sender_auth.get_or_create(&SenderAuthVerdict { farm: farm.to_owned(), check, result }).inc();
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
