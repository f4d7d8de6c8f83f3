//! What every session, the admin listener and the node share: the current [`Snapshot`], the
//! node-wide tables (bans, rates, AUTH failures, transfers), the spool, the state store, the
//! metrics and the stop state.
//!
//! This module sits below `node/`, `conn/` and `admin/`: they all read it, it reads none of
//! them, so the import graph is node → {conn, admin} → shared and never back (a test in
//! `crate::tidy` keeps it so).
//!
//! **Invariant:** the ruleset in use is an immutable [`Snapshot`] behind an `ArcSwap`. A session
//! takes the snapshot current at accept and keeps it to the end; a reload swaps a whole new one
//! in with one atomic store, so no session ever sees half of a reload and the hot path takes no
//! lock to read the policy.
//!
//! **Invariant:** each count has one home, the metrics registry: `/status`, `/metrics` and the
//! tests read the same counters and gauges, which the hot path moves with one relaxed atomic
//! operation.

mod snapshot;

pub use snapshot::{Delivery, Snapshot};

use crate::dns::Dns;
use crate::guard::{Bans, Failures, Rates, RefusalLog};
use crate::metrics::{FarmLabel, Metrics};
use crate::spool::Spool;
use crate::state::Store;
use crate::transfers::Transfers;
use arc_swap::{ArcSwap, ArcSwapOption};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::watch;

/// Node-wide stop state, watched by every session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    Running,
    /// Stop accepting; idle sessions get 421, sessions in a transaction may finish it.
    Draining,
    /// The grace period is over: every session answers 421 now.
    Now,
}

/// What every session shares.
pub struct Shared {
    snapshot: ArcSwap<Snapshot>,
    /// The shadow ruleset (`mtac run --shadow`): every decision is compared with its.
    candidate: ArcSwapOption<mtac_ruleset::Ruleset>,
    /// The node's resolver, when some farm's policy needs DNS.
    dns: Option<Dns>,
    /// Temporary bans, by network.
    pub bans: Bans,
    /// Connection and message rate counters.
    pub rates: Rates,
    /// Failed AUTH attempts per farm and client network.
    pub auth_failures: Failures,
    /// Refusals of banned clients, for the rate-limited log line.
    pub ban_refusals: RefusalLog,
    /// Connections closed on PROXY listeners (no header, a bad one, or not from a balancer).
    pub proxy_refusals: RefusalLog,
    pub spool: Spool,
    /// Message transfers open per client (the farm's `transfers-per-ip`).
    pub transfers: Arc<Transfers>,
    /// Greylist entries (and with Redis, the farm's bans), when some farm needs them.
    pub state: Option<Store>,
    /// Clients that passed the pregreet test, when there is no `state` to remember them in.
    pub pregreet_passed: crate::screen::PassedClients,
    pub metrics: Metrics,
    shutdown: watch::Sender<Shutdown>,
    /// Sessions started, for their ids.
    sessions: AtomicU64,
    /// When the node started (Unix seconds).
    started: u32,
    /// The farms the node listens for, whose accepted connections `/status` adds up.
    listening: Mutex<Vec<String>>,
    last_reload_error: Mutex<Option<String>>,
    /// The listeners are bound and the node takes connections (readiness).
    ready: AtomicBool,
    /// The decision journal, while the ruleset asks for one ([`Shared::configure_journal`]).
    journal: arc_swap::ArcSwapOption<crate::journal::Journal>,
}

impl Shared {
    /// The shared state of a node starting at `started` (Unix seconds) with `snapshot`.
    pub(crate) fn new(
        snapshot: Snapshot,
        dns: Option<Dns>,
        spool: Spool,
        state: Option<Store>,
        started: u32,
    ) -> Shared {
        let (shutdown, _) = watch::channel(Shutdown::Running);
        let metrics = Metrics::new();
        metrics.ruleset_loaded(&snapshot.ruleset.hash_hex());
        metrics.start_time.set(i64::from(started));
        let shared = Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            candidate: ArcSwapOption::empty(),
            dns,
            bans: Bans::default(),
            rates: Rates::default(),
            auth_failures: Failures::default(),
            ban_refusals: RefusalLog::default(),
            proxy_refusals: RefusalLog::default(),
            spool,
            transfers: Arc::default(),
            state,
            pregreet_passed: Default::default(),
            metrics,
            shutdown,
            sessions: AtomicU64::new(0),
            started,
            listening: Mutex::new(Vec::new()),
            last_reload_error: Mutex::new(None),
            ready: AtomicBool::new(false),
            journal: arc_swap::ArcSwapOption::empty(),
        };
        shared.configure_journal();
        shared
    }

    /// Start, replace or stop the decision journal as the ruleset in use says: at start and
    /// after every reload. An unchanged setting keeps the running journal (and its pseudonym
    /// key); a changed one closes the old file when its last record is written.
    pub(crate) fn configure_journal(&self) {
        let snapshot = self.snapshot();
        let policy = snapshot.ruleset.policy();
        let wanted = policy.journal.as_ref();
        if self.journal.load().as_ref().map(|j| j.settings()) == wanted {
            return;
        }
        let started = crate::state::since_epoch().as_secs();
        let next = wanted.and_then(|settings| {
            match crate::journal::Journal::start(settings, &policy.hostname, started, &self.metrics) {
                Ok(journal) => Some(Arc::new(journal)),
                Err(e) => {
                    tracing::error!(error = %e, "journal: cannot start its writer thread");
                    None
                }
            }
        });
        self.journal.store(next);
    }

    /// Hand a decision's record to the journal, if one runs (never waits).
    pub fn journal(&self, record: mtac_ruleset::journal::Record) {
        if let Some(journal) = self.journal.load().as_ref() {
            journal.record(record);
        }
    }

    pub fn dns(&self) -> Option<Dns> {
        self.dns.clone()
    }

    pub fn has_dns(&self) -> bool {
        self.dns.is_some()
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The shadow ruleset, if the node runs one; a session keeps the one of its accept.
    pub fn candidate(&self) -> Option<Arc<mtac_ruleset::Ruleset>> {
        self.candidate.load_full()
    }

    /// Swap in a new shadow ruleset (or none).
    pub(crate) fn replace_candidate(&self, candidate: Option<mtac_ruleset::Ruleset>) {
        self.candidate.store(candidate.map(Arc::new));
    }

    /// Swap in a new snapshot (the reload path): one atomic store, counted and timed in the
    /// metrics; sessions in flight keep theirs.
    pub(crate) fn replace_snapshot(&self, snapshot: Snapshot) {
        let hash = snapshot.ruleset.hash_hex();
        self.snapshot.store(Arc::new(snapshot));
        self.metrics.ruleset_loaded(&hash);
        self.configure_journal();
    }

    pub fn shutdown_receiver(&self) -> watch::Receiver<Shutdown> {
        self.shutdown.subscribe()
    }

    /// Tell every session the node drains, or stops now.
    pub(crate) fn set_shutdown(&self, state: Shutdown) {
        // Sessions hold receivers; with none left there is nobody to tell.
        let _ = self.shutdown.send(state);
    }

    /// Draining or stopped: not ready for new connections.
    pub fn stopping(&self) -> bool {
        *self.shutdown.borrow() != Shutdown::Running
    }

    /// The listeners are bound and accept.
    pub(crate) fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    /// Ready for SMTP connections: bound, and not stopping (`/readyz`).
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && !self.stopping()
    }

    /// When the node started (Unix seconds).
    pub fn started_at(&self) -> f64 {
        f64::from(self.started)
    }

    /// Why the last reload was refused, if the last attempt failed.
    pub fn last_reload_error(&self) -> Option<String> {
        self.last_reload_error.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub(crate) fn set_reload_error(&self, error: Option<String>) {
        *self.last_reload_error.lock().unwrap_or_else(PoisonError::into_inner) = error;
    }

    /// The node listens for `farm` (its accepted connections count in [`Shared::connections_accepted`]).
    pub(crate) fn note_listening(&self, farm: &str) {
        let mut farms = self.listening.lock().unwrap_or_else(PoisonError::into_inner);
        if !farms.iter().any(|f| f == farm) {
            farms.push(farm.to_owned());
        }
    }

    /// SMTP connections accepted since start, every farm together (`mtac_connections_total`).
    pub fn connections_accepted(&self) -> u64 {
        let farms = self.listening.lock().unwrap_or_else(PoisonError::into_inner);
        farms
            .iter()
            .filter_map(|farm| self.metrics.connections.get(&FarmLabel { farm: farm.clone() }).map(|c| c.get()))
            .sum()
    }

    /// SMTP connections open now (`mtac_connections_active`).
    pub fn connections_open(&self) -> u64 {
        u64::try_from(self.metrics.connections_active.get()).unwrap_or(0)
    }

    /// Update the metrics read at scrape time and encode them all.
    pub fn render_metrics(&self) -> String {
        let m = &self.metrics;
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        m.bans_active.set(gauge(self.bans.active() as u64));
        m.spool_bytes.set(gauge(self.spool.bytes_in_use()));
        m.spool_files.set(gauge(self.spool.files_in_use()));
        m.spool_budget.set(gauge(self.spool.budget()));
        m.transfers_in_flight.set(gauge(self.transfers.in_flight()));
        if let Some(dns) = &self.dns {
            for (zone, state) in dns.zones().snapshot() {
                m.zone_suspended.get_or_create(&crate::metrics::ZoneLabel { zone }).set(i64::from(state.suspended));
            }
        }
        m.encode()
    }

    /// A session id unique on this node: start time and a counter, in hex.
    pub(crate) fn next_id(&self) -> String {
        let n = self.sessions.fetch_add(1, Ordering::Relaxed);
        format!("{:08X}{:06X}", self.started, n & 0xFF_FFFF)
    }
}

thread_local! {
    /// Which session thread this is; 0 on every other thread.
    static SESSION_THREAD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The index of the session thread running the caller (0 outside the session threads, as on a
/// test's runtime): what keeps each thread's pooled back-end connections its own.
pub fn session_thread() -> usize {
    SESSION_THREAD.with(std::cell::Cell::get)
}

/// Mark the calling thread as session thread `index`, once, when it starts.
pub(crate) fn set_session_thread(index: usize) {
    SESSION_THREAD.with(|cell| cell.set(index));
}

/// What an accept loop (SMTP, admin TCP, admin socket) got: the connection, or `None` after
/// logging `what` and backing off for 100 ms, so that EMFILE and friends do not make it spin.
pub(crate) async fn accepted<T>(result: std::io::Result<T>, what: &str) -> Option<T> {
    match result {
        Ok(connection) => Some(connection),
        Err(e) => {
            tracing::warn!(error = %e, "{what}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            None
        }
    }
}
