//! The node: listeners, connection limits, the current ruleset snapshot, hot reload and
//! graceful stop.
//!
//! **Invariant:** the ruleset in use is an immutable [`Snapshot`] behind an `ArcSwap`. A session
//! takes the snapshot current at accept and keeps it to the end; a reload builds a whole new
//! snapshot and swaps it in with one atomic store. No session ever sees half of a reload, and
//! the hot path takes no lock to read the policy.
//!
//! One reload path: the file watcher and SIGHUP both call [`Node::reload`]: load and verify,
//! check the runtime supports everything it asks for, swap — or log why not and keep serving
//! the old one.

use crate::dns::{Dns, DnsSettings};
use crate::guard::{Bans, Rates};
use crate::lookups::Needs;
use crate::metrics::{FarmLabel, Metrics, RefusedAtAccept, ReloadResult};
use crate::relay::Relay;
use crate::spool::Spool;
use arc_swap::ArcSwap;
use mtac_ruleset::model::{self, BanResponse, Farm, RateSubject, Relay as RelayModel};
use mtac_ruleset::Ruleset;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Loads a ruleset (from the ruleset file, or by compiling a policy in `mtac run --policy`).
pub type Loader = Arc<dyn Fn() -> Result<Ruleset, String> + Send + Sync>;

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot load the ruleset: {0}")]
    Load(String),
    #[error("the ruleset asks for what this build does not do yet:\n  {}", .0.join("\n  "))]
    Unsupported(Vec<String>),
    #[error("cannot listen on {address}: {source}")]
    Listen { address: SocketAddr, source: std::io::Error },
    #[error("spool directory {path}: {source}")]
    Spool { path: String, source: std::io::Error },
    #[error("maildir {path}: {source}")]
    Maildir { path: String, source: std::io::Error },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("DNS: {0}")]
    Dns(String),
    #[error("state store: {0}")]
    State(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("admin socket {path}: {source}")]
    AdminSocket { path: String, source: std::io::Error },
}

/// Node-wide stop state, watched by every session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    Running,
    /// Stop accepting; idle sessions get 421, sessions in a transaction may finish it.
    Draining,
    /// The grace period is over: every session answers 421 now.
    Now,
}

/// Where a farm's accepted mail goes.
pub enum Delivery<'a> {
    Relay(&'a Relay),
    Maildir(&'a Path),
}

/// An immutable view of one ruleset and the relays built for it.
pub struct Snapshot {
    pub ruleset: Ruleset,
    /// Per farm (same index as the policy's farms): its relay, or a maildir.
    relays: Vec<Option<Arc<Relay>>>,
    maildirs: Vec<Option<PathBuf>>,
    /// Per farm: its TLS configuration, if it has `tls`.
    tls: Vec<Option<crate::tls::FarmTls>>,
    /// Per farm: its recipient directory, if it validates recipients against LDAP at run time.
    directories: Vec<Option<Arc<crate::directory::DirectoryClient>>>,
    /// Per farm: logins remembered (`auth cache=`); new, and empty, at every reload.
    login_caches: Vec<Option<crate::auth::LoginCache>>,
}

impl Snapshot {
    /// Build the snapshot; fails when a farm's certificate or key cannot be loaded.
    fn new(ruleset: Ruleset, previous: Option<&Snapshot>) -> Result<Snapshot, String> {
        let hostname = ruleset.policy().hostname.clone();
        let mut relays = Vec::new();
        let mut maildirs = Vec::new();
        let mut tls = Vec::new();
        let mut directories = Vec::new();
        for farm in &ruleset.policy().farms {
            directories.push(match farm.directory.as_ref().filter(|d| d.lookups) {
                Some(settings) => {
                    // Keep the connections and caches when the directory did not change.
                    let reused = previous.and_then(|p| {
                        let (index, _) = p.farm(&farm.name)?;
                        p.directories.get(index)?.as_ref().filter(|d| d.serves(settings)).cloned()
                    });
                    match reused {
                        Some(client) => Some(client),
                        None => Some(Arc::new(
                            crate::directory::DirectoryClient::new(settings)
                                .map_err(|e| format!("farm `{}`: {e}", farm.name))?,
                        )),
                    }
                }
                None => None,
            });
            tls.push(match &farm.tls {
                Some(t) => Some(
                    crate::tls::FarmTls::load(&t.certificate, &t.key)
                        .map_err(|e| format!("farm `{}`: {e}", farm.name))?,
                ),
                None => None,
            });
            match &farm.relay {
                RelayModel::Backends(backends) => {
                    let timeout = Duration::from_secs(u64::from(farm.limits.timeouts.relay));
                    // Keep the old relay (and its pooled connections) when nothing changed.
                    let reused = previous.and_then(|p| {
                        let (index, _) = p.farm(&farm.name)?;
                        p.relays.get(index)?.as_ref().filter(|r| r.same_settings(backends, &hostname, timeout)).cloned()
                    });
                    relays.push(Some(
                        reused.unwrap_or_else(|| Arc::new(Relay::new(backends.clone(), hostname.clone(), timeout))),
                    ));
                    maildirs.push(None);
                }
                RelayModel::Maildir(dir) => {
                    relays.push(None);
                    maildirs.push(Some(PathBuf::from(dir)));
                }
            }
        }
        let login_caches =
            ruleset.policy().farms.iter().map(|f| f.auth.as_ref().and_then(crate::auth::LoginCache::new)).collect();
        for auth in ruleset.policy().farms.iter().filter_map(|f| f.auth.as_ref()) {
            crate::auth::prepare(auth);
        }
        Ok(Snapshot { ruleset, relays, maildirs, tls, directories, login_caches })
    }

    /// The login cache of the farm at `index`, if it caches.
    pub fn login_cache(&self, farm: usize) -> Option<&crate::auth::LoginCache> {
        self.login_caches.get(farm).and_then(Option::as_ref)
    }

    /// The recipient directory of the farm at `index`.
    pub fn directory(&self, farm: usize) -> Option<&Arc<crate::directory::DirectoryClient>> {
        self.directories.get(farm).and_then(Option::as_ref)
    }

    /// The TLS configuration of the farm at `index`.
    pub fn tls(&self, farm: usize) -> Option<&crate::tls::FarmTls> {
        self.tls.get(farm).and_then(Option::as_ref)
    }

    /// A file the snapshot read besides the ruleset changed on disk since: a certificate or key
    /// (a renewal), or a directory's bind password (a rotation).
    pub fn files_changed(&self) -> bool {
        self.tls.iter().flatten().any(crate::tls::FarmTls::changed_on_disk)
            || self.directories.iter().flatten().any(|d| d.password_changed())
    }

    /// The farm called `name` and its index.
    pub fn farm(&self, name: &str) -> Option<(usize, &Farm)> {
        self.ruleset.policy().farms.iter().enumerate().find(|(_, f)| f.name == name)
    }

    pub fn delivery(&self, farm: usize) -> Delivery<'_> {
        match (self.relays.get(farm).and_then(Option::as_ref), self.maildirs.get(farm).and_then(Option::as_ref)) {
            (Some(relay), _) => Delivery::Relay(relay),
            (None, Some(dir)) => Delivery::Maildir(dir),
            // Every farm has one or the other (Snapshot::new); an empty maildir path fails safely with 451.
            (None, None) => Delivery::Maildir(Path::new("")),
        }
    }
}

/// Counters the admin listener and tests read.
#[derive(Debug, Default)]
pub struct Counters {
    pub connections_total: AtomicU64,
    pub connections_now: AtomicUsize,
    pub refused_limit: AtomicU64,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
}

/// What every session shares.
pub struct Shared {
    snapshot: ArcSwap<Snapshot>,
    /// The node's resolver, when some farm's policy needs DNS.
    dns: Option<Dns>,
    /// Temporary bans, by network.
    pub bans: Bans,
    /// Connection and message rate counters.
    pub rates: Rates,
    /// Failed AUTH attempts per farm and client network.
    pub auth_failures: crate::guard::Failures,
    /// Refusals of banned clients, for the rate-limited log line.
    pub ban_refusals: crate::guard::RefusalLog,
    pub spool: Spool,
    /// Message transfers open per client (the farm's `transfers-per-ip`).
    pub transfers: Arc<crate::transfers::Transfers>,
    /// Greylist entries (and with Redis, the farm's bans), when some farm needs them.
    pub state: Option<crate::state::Store>,
    pub counters: Counters,
    pub metrics: Metrics,
    shutdown: watch::Sender<Shutdown>,
    sessions: AtomicU64,
    started: u64,
    pub last_reload_error: Mutex<Option<String>>,
    /// When the ruleset in use was loaded (Unix seconds).
    pub loaded_at: Mutex<f64>,
    /// The listeners are bound and the node takes connections (readiness).
    pub ready: std::sync::atomic::AtomicBool,
}

impl Shared {
    pub fn dns(&self) -> Option<Dns> {
        self.dns.clone()
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    pub fn shutdown_receiver(&self) -> watch::Receiver<Shutdown> {
        self.shutdown.subscribe()
    }

    /// When the node started (Unix seconds).
    pub fn started_at(&self) -> f64 {
        self.started as f64
    }

    /// Draining or stopped: not ready for new connections.
    pub fn stopping(&self) -> bool {
        *self.shutdown.borrow() != Shutdown::Running
    }

    /// Update the metrics read at scrape time and encode them all.
    pub fn render_metrics(&self) -> String {
        let m = &self.metrics;
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        m.connections_active.set(gauge(self.counters.connections_now.load(Ordering::Relaxed) as u64));
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
    fn next_id(&self) -> String {
        let n = self.sessions.fetch_add(1, Ordering::Relaxed);
        format!("{:08X}{:06X}", self.started, n & 0xFF_FFFF)
    }
}

/// What `mtac run` was asked to do.
pub struct RunConfig {
    pub loader: Loader,
    /// The file to watch for changes (the ruleset, or the policy with `--policy`).
    pub watch: Option<PathBuf>,
    /// How long sessions may finish after SIGTERM before they are told 421.
    pub grace: Duration,
    /// Where the admin listener listens.
    pub admin: AdminAddress,
}

/// The admin listener's address: the policy's (`admin`, loopback by default), or one given on
/// the command line (two nodes on one host for a test, a container's published port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminAddress {
    Policy,
    At(SocketAddr),
    Off,
}

/// Everything a node listens on.
pub struct Listeners {
    /// SMTP listeners, the farm each serves, and whether TLS starts at once (port 465).
    pub smtp: Vec<(TcpListener, String, bool)>,
    pub admin: Option<TcpListener>,
    /// The admin socket (state queries, bans) and its path, removed at stop.
    pub admin_socket: Option<(tokio::net::UnixListener, PathBuf)>,
}

/// Features the ruleset may ask for that this build does not enforce yet. Serving them
/// half-way would be worse than refusing: a configured DNSBL that silently never fires.
pub fn unsupported(ruleset: &Ruleset) -> Vec<String> {
    let mut missing = Vec::new();
    for farm in &ruleset.policy().farms {
        let mut need = |what: &str| missing.push(format!("farm `{}`: {what}", farm.name));
        if farm.listeners.iter().any(|l| l.implicit_tls) && farm.tls.is_none() {
            need("an implicit-TLS listener without `tls` (a certificate)");
        }
    }
    missing
}

/// The running node.
pub struct Node {
    pub shared: Arc<Shared>,
    loader: Loader,
}

impl Node {
    /// Load the ruleset, prepare the spool, and build the node (nothing listens yet).
    pub fn new(loader: Loader) -> Result<Node, RunError> {
        let ruleset = loader().map_err(RunError::Load)?;
        let missing = unsupported(&ruleset);
        if !missing.is_empty() {
            return Err(RunError::Unsupported(missing));
        }
        let spool_dir = ruleset.policy().spool.clone();
        let spool = Spool::new(Path::new(&spool_dir)).map_err(|source| RunError::Spool { path: spool_dir, source })?;
        spool.set_budget(ruleset.policy().spool_max_bytes);
        let stale = spool.clean_stale();
        if stale > 0 {
            tracing::warn!(files = stale, "spool: removed files left by a node that did not stop cleanly");
        }
        prepare_maildirs(&ruleset)?;
        let dns = build_dns(&ruleset)?;
        let state = if needs_state(&ruleset) {
            let store =
                crate::state::Store::open(&ruleset.policy().state).map_err(|e| RunError::State(e.to_string()))?;
            tracing::info!(store = ?ruleset.policy().state, "state store opened");
            Some(store)
        } else {
            None
        };
        let started =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as u32).unwrap_or(0);
        tracing::info!(hash = %ruleset.hash_hex(), "ruleset loaded");
        let (shutdown, _) = watch::channel(Shutdown::Running);
        let shared = Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(Snapshot::new(ruleset, None).map_err(RunError::Tls)?),
            dns,
            bans: Bans::default(),
            rates: Rates::default(),
            auth_failures: crate::guard::Failures::default(),
            ban_refusals: crate::guard::RefusalLog::default(),
            spool,
            transfers: Arc::default(),
            state,
            counters: Counters::default(),
            metrics: Metrics::new(),
            shutdown,
            sessions: AtomicU64::new(0),
            started: u64::from(started),
            last_reload_error: Mutex::new(None),
            loaded_at: Mutex::new(crate::metrics::unix_now()),
            ready: std::sync::atomic::AtomicBool::new(false),
        });
        shared.metrics.ruleset_loaded(&shared.snapshot().ruleset.hash_hex());
        shared.metrics.start_time.set(i64::from(started));
        Ok(Node { shared, loader })
    }

    /// The one reload path (file watcher and SIGHUP): `Ok(true)` swapped, `Ok(false)` nothing
    /// changed, `Err` refused (logged, counted, shown in /status; the old snapshot keeps serving).
    pub fn reload(&self) -> Result<bool, String> {
        let last_error = || self.shared.last_reload_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match self.swap() {
            Ok(None) => Ok(false),
            Ok(Some((old_hash, new_hash))) => {
                self.shared.counters.reloads_ok.fetch_add(1, Ordering::Relaxed);
                self.shared.metrics.reloads.get_or_create(&ReloadResult { result: "ok" }).inc();
                self.shared.metrics.ruleset_loaded(&new_hash);
                *self.shared.loaded_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                    crate::metrics::unix_now();
                *last_error() = None;
                if old_hash == new_hash {
                    tracing::info!("TLS certificate or key changed on disk: loaded for new sessions");
                } else {
                    tracing::info!(old = %old_hash, new = %new_hash, "ruleset reloaded");
                }
                Ok(true)
            }
            Err(e) => {
                self.shared.counters.reloads_failed.fetch_add(1, Ordering::Relaxed);
                self.shared.metrics.reloads.get_or_create(&ReloadResult { result: "failed" }).inc();
                tracing::error!(error = %e, "ruleset reload refused; the running ruleset keeps serving");
                *last_error() = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Load, check and swap in a new snapshot when the ruleset or a certificate changed.
    /// Returns the old and new ruleset hashes when it swapped.
    fn swap(&self) -> Result<Option<(String, String)>, String> {
        let ruleset = (self.loader)()?;
        let missing = unsupported(&ruleset);
        let needs_dns = ruleset.policy().farms.iter().any(|f| Needs::of(f).any());
        if needs_dns && self.shared.dns.is_none() {
            return Err("the new ruleset needs DNS, which this node started without: restart it to load this ruleset"
                .to_owned());
        }
        if needs_state(&ruleset) && self.shared.state.is_none() {
            return Err("the new ruleset needs a state store (greylisting), which this node started without: restart \
                        it to load this ruleset"
                .to_owned());
        }
        if !missing.is_empty() {
            return Err(format!("the new ruleset asks for unsupported features: {}", missing.join("; ")));
        }
        prepare_maildirs(&ruleset).map_err(|e| e.to_string())?;
        let old = self.shared.snapshot();
        let (old_hash, new_hash) = (old.ruleset.hash_hex(), ruleset.hash_hex());
        if old_hash == new_hash && !old.files_changed() {
            return Ok(None);
        }
        let old_listeners: Vec<_> = old.ruleset.policy().farms.iter().map(|f| &f.listeners).collect();
        let new_listeners: Vec<_> = ruleset.policy().farms.iter().map(|f| &f.listeners).collect();
        if old_listeners != new_listeners {
            tracing::warn!("the new ruleset changes listeners: they take effect at the next restart");
        }
        let snapshot = Snapshot::new(ruleset, Some(&old))?;
        self.shared.spool.set_budget(snapshot.ruleset.policy().spool_max_bytes);
        self.shared.snapshot.store(Arc::new(snapshot));
        Ok(Some((old_hash, new_hash)))
    }

    /// Bind every listener of every farm, and the admin listener.
    pub async fn bind(&self, admin: AdminAddress) -> Result<Listeners, RunError> {
        let snapshot = self.shared.snapshot();
        let admin = match admin {
            AdminAddress::Policy => snapshot.ruleset.policy().admin,
            AdminAddress::At(address) => Some(address),
            AdminAddress::Off => None,
        };
        let admin = match admin {
            Some(address) => {
                let listener =
                    TcpListener::bind(address).await.map_err(|source| RunError::Listen { address, source })?;
                tracing::info!(address = %listener.local_addr().unwrap_or(address), "admin listener (metrics, health, status)");
                Some(listener)
            }
            None => None,
        };
        let mut bound = Vec::new();
        for farm in &snapshot.ruleset.policy().farms {
            for listener in &farm.listeners {
                let socket =
                    bind(listener.address).map_err(|source| RunError::Listen { address: listener.address, source })?;
                tracing::info!(farm = %farm.name, address = %listener.address, "listening");
                bound.push((socket, farm.name.clone(), listener.implicit_tls));
            }
        }
        let admin_socket = match &snapshot.ruleset.policy().admin_socket {
            Some(path) => crate::admin::bind_socket(Path::new(path))
                .map_err(|source| RunError::AdminSocket { path: path.clone(), source })?
                .map(|listener| {
                    tracing::info!(path = %path, "admin socket (state, bans)");
                    (listener, PathBuf::from(path))
                }),
            None => None,
        };
        Ok(Listeners { smtp: bound, admin, admin_socket })
    }

    /// Serve until SIGTERM/SIGINT, hot-reloading on file change and SIGHUP.
    pub async fn run(self, listeners: Listeners, config: RunConfig) -> Result<(), RunError> {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).map_err(RunError::Signals)?;
        let mut int = signal(SignalKind::interrupt()).map_err(RunError::Signals)?;
        let stop = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        };
        self.run_until(listeners, config, stop).await
    }

    /// Serve until `stop` completes, then drain gracefully (tests stop a node this way).
    pub async fn run_until(
        self,
        listeners: Listeners,
        config: RunConfig,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<(), RunError> {
        let node = Arc::new(self);
        let (watcher, events) = watch(config.watch.as_deref());
        let mut limits: HashMap<String, Arc<FarmLimits>> = HashMap::new();
        let mut accept_tasks = Vec::new();
        // The admin listener outlives the accept loops: while draining, /readyz says 503 and
        // /metrics shows the sessions finishing.
        let admin = listeners.admin.map(|admin| crate::admin::spawn(admin, node.shared.clone()));
        let (admin_socket, socket_path) = match listeners.admin_socket {
            Some((listener, path)) => (Some(crate::admin::spawn_socket(listener, node.shared.clone())), Some(path)),
            None => (None, None),
        };
        for (listener, farm, implicit_tls) in listeners.smtp {
            let farm_limits = limits.entry(farm.clone()).or_default().clone();
            let shared = node.shared.clone();
            accept_tasks.push(tokio::spawn(accept_loop(listener, farm, implicit_tls, farm_limits, shared)));
        }
        let reload_task = tokio::spawn(reload_loop(node.clone(), watcher, events));
        let probes = node.shared.dns.as_ref().map(|dns| {
            // The zones of whatever ruleset is current: a reload may add or drop some.
            let shared = node.shared.clone();
            dns.spawn_probes(move || {
                let snapshot = shared.snapshot();
                let every = Duration::from_secs(u64::from(snapshot.ruleset.policy().dns.probe_interval));
                (list_zones(&snapshot.ruleset), every)
            })
        });
        let state_tasks = match &node.shared.state {
            Some(crate::state::Store::Embedded(db)) => Some(db.spawn_maintenance()),
            Some(crate::state::Store::Redis(redis)) => Some(mirror_bans(redis.clone(), node.shared.clone())),
            None => None,
        };
        node.shared.ready.store(true, Ordering::Relaxed);
        let watchdog = systemd_ready(&node.shared);

        stop.await;
        tracing::info!(grace = ?config.grace, "stopping: no new connections, sessions may finish");
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
        if let Some(w) = watchdog {
            w.abort();
        }
        let _ = node.shared.shutdown.send(Shutdown::Draining);
        for task in &accept_tasks {
            task.abort();
        }
        reload_task.abort();
        if let Some(p) = &probes {
            p.abort();
        }
        let deadline = tokio::time::Instant::now() + config.grace;
        while node.shared.counters.connections_now.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = node.shared.shutdown.send(Shutdown::Now);
        let last = tokio::time::Instant::now() + Duration::from_secs(2);
        while node.shared.counters.connections_now.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < last {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Some(admin) = &admin {
            admin.abort();
        }
        if let Some(task) = &admin_socket {
            task.abort();
        }
        if let Some(path) = &socket_path {
            let _ = std::fs::remove_file(path);
        }
        if let Some(task) = &state_tasks {
            task.abort();
        }
        // An aborted task is dropped on its next poll, not at once: wait for each, so that
        // nothing of this node (its state store above all) outlives `run_until`.
        for task in accept_tasks
            .into_iter()
            .chain([reload_task])
            .chain(probes)
            .chain(admin)
            .chain(admin_socket)
            .chain(state_tasks)
        {
            let _ = task.await;
        }
        if let Some(crate::state::Store::Embedded(db)) = &node.shared.state {
            // Deliveries counted in the background (auto-whitelisting) finish before the last
            // write; a session that outlived the grace period may still hold the store.
            let last = tokio::time::Instant::now() + Duration::from_secs(5);
            while Arc::strong_count(db) > 1 && tokio::time::Instant::now() < last {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if let Err(e) = db.persist() {
                tracing::error!(error = %e, "state store: cannot persist at stop");
            }
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// The resolver, if any farm needs DNS (a node without DNS checks needs no resolv.conf).
fn build_dns(ruleset: &Ruleset) -> Result<Option<Dns>, RunError> {
    if !ruleset.policy().farms.iter().any(|f| Needs::of(f).any()) {
        return Ok(None);
    }
    let settings = &ruleset.policy().dns;
    let dns = Dns::new(&DnsSettings {
        nameservers: settings.nameservers.clone(),
        timeout: Duration::from_millis(u64::from(settings.timeout_ms)),
        cache_size: usize::try_from(settings.cache_size).unwrap_or(usize::MAX),
    })
    .map_err(|e| RunError::Dns(e.to_string()))?;
    Ok(Some(dns))
}

/// Mirror the farm's bans from Redis into this node's table: the ones in force when (re)connected,
/// then each one another node announces. The accept path reads only the local table.
fn mirror_bans(redis: Arc<crate::state::RedisStore>, shared: Arc<Shared>) -> tokio::task::JoinHandle<()> {
    use futures_util::StreamExt;
    tokio::spawn(async move {
        let mut failures = 0u32;
        loop {
            let subscribed = async {
                let mut pubsub = redis.client().get_async_pubsub().await?;
                pubsub.subscribe(crate::state::BAN_CHANNEL).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            match tokio::time::timeout(Duration::from_secs(5), subscribed).await {
                Ok(Ok(mut pubsub)) => {
                    if failures > 0 {
                        tracing::info!("redis: ban channel subscribed again");
                    }
                    failures = 0;
                    // Subscribed first, then read what is in force: no ban falls in between.
                    match redis.bans().await {
                        Ok(bans) => {
                            for (farm, net, seconds) in bans {
                                shared.bans.insert(farm, net, seconds);
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "redis: cannot read the farm's bans"),
                    }
                    let mut messages = pubsub.on_message();
                    while let Some(message) = messages.next().await {
                        let Ok(payload) = message.get_payload::<String>() else { continue };
                        match crate::state::parse_ban_message(&payload) {
                            // 0 seconds: an operator lifted it (`mtac state --unban`) at some node.
                            Some((farm, net, 0)) => {
                                shared.bans.remove(net, Some(&farm));
                                shared.auth_failures.forget(net);
                            }
                            Some((farm, net, seconds)) => {
                                shared.bans.insert(farm, net, seconds);
                            }
                            None => {}
                        }
                    }
                    tracing::warn!("redis: ban channel lost; bans are this node's own until it is back");
                }
                Ok(Err(e)) => {
                    if failures == 0 {
                        tracing::warn!(error = %e, "redis: cannot subscribe to the farm's bans; retrying");
                    }
                    failures = failures.saturating_add(1);
                }
                Err(_) => failures = failures.saturating_add(1),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

/// Whether the node needs its state store: some farm greylists, or bans are shared through Redis.
fn needs_state(ruleset: &Ruleset) -> bool {
    let policy = ruleset.policy();
    let redis = matches!(policy.state, model::StateSettings::Redis { .. });
    policy.farms.iter().any(|f| f.greylist.is_some() || (redis && !f.bans.is_empty()))
}

/// Every DNS list zone of the ruleset, for health probes.
fn list_zones(ruleset: &Ruleset) -> Vec<(String, model::DnsblTarget)> {
    let mut zones: Vec<(String, model::DnsblTarget)> = Vec::new();
    for zone in ruleset.policy().farms.iter().filter_map(|f| f.dnsbl.as_ref()).flat_map(|d| &d.zones) {
        if !zones.iter().any(|(z, _)| *z == zone.zone) {
            zones.push((zone.zone.clone(), zone.target));
        }
    }
    zones
}

fn prepare_maildirs(ruleset: &Ruleset) -> Result<(), RunError> {
    for farm in &ruleset.policy().farms {
        if let RelayModel::Maildir(dir) = &farm.relay {
            crate::maildir::prepare(Path::new(dir))
                .map_err(|source| RunError::Maildir { path: dir.clone(), source })?;
        }
    }
    Ok(())
}

/// A listening socket with a deep backlog: a spam wave arrives as a burst of connects.
fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let domain = if address.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

/// Connection counts of one farm, shared by its listeners.
#[derive(Default)]
struct FarmLimits {
    total: AtomicU32,
    per_ip: Mutex<HashMap<IpAddr, u32>>,
}

/// Holds a farm connection slot and the client's per-IP slot; both are released on drop.
struct Slot {
    limits: Arc<FarmLimits>,
    ip: Option<IpAddr>,
    shared: Arc<Shared>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.limits.total.fetch_sub(1, Ordering::Relaxed);
        self.shared.counters.connections_now.fetch_sub(1, Ordering::Relaxed);
        if let Some(ip) = self.ip {
            let mut map = self.limits.per_ip.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(count) = map.get_mut(&ip) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    map.remove(&ip);
                }
            }
        }
    }
}

/// Refuse a connection cheaply: one non-blocking write and close, no task.
fn refuse(stream: TcpStream, text: &str) {
    let _ = stream.try_write(text.as_bytes());
}

async fn accept_loop(
    listener: TcpListener,
    farm: String,
    implicit_tls: bool,
    limits: Arc<FarmLimits>,
    shared: Arc<Shared>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(pair) => pair,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        shared.counters.connections_total.fetch_add(1, Ordering::Relaxed);
        shared.metrics.connections.get_or_create(&FarmLabel { farm: farm.clone() }).inc();
        let refused = |reason: &'static str| {
            shared.metrics.refused_at_accept.get_or_create(&RefusedAtAccept { farm: farm.clone(), reason }).inc();
        };
        let snapshot = shared.snapshot();
        let Some((_, farm_model)) = snapshot.farm(&farm) else {
            refuse(stream, "421 4.3.2 Service not available\r\n");
            continue;
        };
        let peer = normalize(peer);
        let ip = peer.ip();
        let mut banned = false;
        if shared.bans.is_banned(&farm, ip, &farm_model.bans) {
            if let Some(count) = shared.ban_refusals.note(&farm) {
                tracing::info!(farm = farm.as_str(), client = %ip, refused = count, "banned clients turned away (one line per farm every 10 s at most)");
            }
            match farm_model.ban_response {
                // On an implicit-TLS listener the client's first bytes are a TLS ClientHello: a
                // plain-text 521 is noise to it, and a handshake to say 521 inside TLS would spend
                // the CPU a ban is meant to save. Closing says "not now" as well.
                BanResponse::Close521 if implicit_tls => {
                    refused("ban");
                    drop(stream);
                    continue;
                }
                BanResponse::Close521 => {
                    refused("ban");
                    refuse(stream, "521 5.3.2 Client host rejected: banned for a while, do not retry now\r\n");
                    continue;
                }
                BanResponse::RefuseRecipients => banned = true,
            }
        }
        // With Redis the connection rate is the farm's, counted in the session's task (below) so
        // the accept loop never waits on the network.
        let farm_rates = matches!(shared.state, Some(crate::state::Store::Redis(_)));
        if !farm_rates {
            if let Some(limit) = shared.rates.count(&farm, RateSubject::Connections, ip, &farm_model.rate_limits) {
                shared.counters.refused_limit.fetch_add(1, Ordering::Relaxed);
                refused("rate");
                let reply = crate::session::policy_reply(&limit.reply);
                refuse(stream, &String::from_utf8_lossy(&reply.to_bytes()));
                continue;
            }
        }
        let check_farm_rate =
            farm_rates && farm_model.rate_limits.iter().any(|l| l.subject == RateSubject::Connections);
        let max_total = farm_model.limits.connections;
        let max_per_ip = farm_model.limits.connections_per_ip;
        let exempt = farm_model.trust_loopback && model::is_loopback(peer.ip());
        drop(snapshot);
        if limits.total.fetch_add(1, Ordering::Relaxed) >= max_total {
            limits.total.fetch_sub(1, Ordering::Relaxed);
            shared.counters.refused_limit.fetch_add(1, Ordering::Relaxed);
            refused("limit");
            refuse(stream, "421 4.7.0 Too many connections, try again later\r\n");
            continue;
        }
        // An IPv6 host owns a /64: count it as one client, as bans and rate limits do.
        let ip = if exempt { None } else { Some(per_ip_key(peer.ip())) };
        if let Some(ip) = ip {
            let mut map = limits.per_ip.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let count = map.entry(ip).or_insert(0);
            if *count >= max_per_ip {
                drop(map);
                limits.total.fetch_sub(1, Ordering::Relaxed);
                shared.counters.refused_limit.fetch_add(1, Ordering::Relaxed);
                refused("limit");
                refuse(stream, "421 4.7.0 Too many connections from your address, try again later\r\n");
                continue;
            }
            *count += 1;
        }
        shared.counters.connections_now.fetch_add(1, Ordering::Relaxed);
        let slot = Slot { limits: limits.clone(), ip, shared: shared.clone() };
        let id = shared.next_id();
        let shared = shared.clone();
        let farm = farm.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if check_farm_rate {
                let snapshot = shared.snapshot();
                let limit = match snapshot.farm(&farm) {
                    Some((_, model)) => {
                        crate::conn::rate_exceeded(&shared, model, RateSubject::Connections, peer.ip()).await
                    }
                    None => None,
                };
                if let Some(reply) = limit {
                    shared.counters.refused_limit.fetch_add(1, Ordering::Relaxed);
                    let labels = RefusedAtAccept { farm: farm.clone(), reason: "rate" };
                    shared.metrics.refused_at_accept.get_or_create(&labels).inc();
                    let mut stream = stream;
                    let _ = tokio::io::AsyncWriteExt::write_all(&mut stream, &reply.to_bytes()).await;
                    return;
                }
            }
            crate::conn::serve(stream, peer, &farm, implicit_tls, shared, id, banned).await;
        });
    }
}

/// The key of the per-IP connection count: the address, or its /64 for IPv6.
fn per_ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

/// IPv4-mapped IPv6 peers (dual-stack sockets) are IPv4 clients for every check and limit.
fn normalize(peer: SocketAddr) -> SocketAddr {
    match peer {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => peer,
        },
        v4 => v4,
    }
}

/// Reload on SIGHUP and when the watched file changes (debounced; re-armed after atomic renames
/// because the watch is on the directory, not the file's inode).
/// Start watching `watch_path`'s directory; events arrive on the returned channel. Set up before
/// the node accepts, so that a file pushed right after start is never missed.
fn watch(watch_path: Option<&Path>) -> (Option<notify::RecommendedWatcher>, tokio::sync::mpsc::Receiver<()>) {
    use notify::Watcher;
    let (tx, rx) = tokio::sync::mpsc::channel::<()>(16);
    let watcher = watch_path.and_then(|path| {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        let name = path.file_name()?.to_owned();
        let tx = tx.clone();
        let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event {
                // The reload's own open and read of the file are events too (inotify IN_OPEN,
                // IN_ACCESS): reacting to them would reload forever. A writer closing the file
                // (IN_CLOSE_WRITE) is the end of an in-place copy, so that one counts.
                use notify::event::{AccessKind, AccessMode, EventKind};
                let changes = match event.kind {
                    EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
                    EventKind::Access(_) => false,
                    _ => true,
                };
                if changes && event.paths.iter().any(|p| p.file_name() == Some(name.as_os_str())) {
                    let _ = tx.try_send(());
                }
            }
        })
        .map_err(|e| tracing::error!(error = %e, "cannot watch the ruleset; SIGHUP still reloads"))
        .ok()?;
        watcher
            .watch(&dir, notify::RecursiveMode::NonRecursive)
            .map_err(|e| tracing::error!(error = %e, dir = %dir.display(), "cannot watch the ruleset directory"))
            .ok()?;
        Some(watcher)
    });
    (watcher, rx)
}

async fn reload_loop(
    node: Arc<Node>,
    _watcher: Option<notify::RecommendedWatcher>,
    mut rx: tokio::sync::mpsc::Receiver<()>,
) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!(error = %e, "cannot handle SIGHUP");
            None
        }
    };
    // Certificates are renewed on disk (ACME clients, a push) and bind passwords rotated: look
    // at them now and then.
    let mut certificates = tokio::time::interval(Duration::from_secs(30));
    certificates.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = certificates.tick() => {
                if !node.shared.snapshot().files_changed() {
                    continue;
                }
            }
            Some(()) = rx.recv() => {
                // Let a burst of events (write, rename, chmod) settle, then reload once.
                tokio::time::sleep(Duration::from_millis(200)).await;
                while rx.try_recv().is_ok() {}
            }
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                tracing::info!("SIGHUP: reloading");
            }
        }
        let node = node.clone();
        // Loading maps and hashes the file (and `--policy` compiles): keep it off the workers.
        let _ = tokio::task::spawn_blocking(move || node.reload()).await;
    }
}

/// Tell systemd the node is ready (Type=notify) and, when the unit sets WatchdogSec, keep
/// pinging its watchdog from a runtime task: a node whose scheduler is stuck stops pinging and
/// is restarted. Outside systemd (no NOTIFY_SOCKET) this does nothing.
fn systemd_ready(shared: &Shared) -> Option<tokio::task::JoinHandle<()>> {
    let status = format!("serving ruleset {}", shared.snapshot().ruleset.hash_hex());
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&status)]) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
    let every = sd_notify::watchdog_enabled()? / 2;
    Some(tokio::spawn(async move {
        loop {
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            tokio::time::sleep(every).await;
        }
    }))
}

/// Raise the open-file limit to the hard limit: every session is a descriptor, and mtac must not
/// cap a node below what the system allows. Returns the limit in force.
pub fn raise_file_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            return getrlimit(Resource::Nofile).current;
        }
    }
    limit.current
}

/// `mtac run`: load, bind, serve.
pub async fn run(config: RunConfig) -> Result<(), RunError> {
    match raise_file_limit() {
        Some(n) => tracing::info!(max_connections_by_files = n, "open-file limit"),
        None => tracing::info!("open-file limit: unlimited"),
    }
    let node = Node::new(config.loader.clone())?;
    let listeners = node.bind(config.admin).await?;
    node.run(listeners, config).await
}
