//! The node's lifetime: load the ruleset and prepare what it needs ([`Node::new`]), bind every
//! listener ([`Node::bind`]), serve until told to stop, then drain ([`Node::run_until`]).
//!
//! - `accept`: listening sockets, the accept loops, per-farm and per-client connection limits
//!   and the `Slot` each session task holds;
//! - `reload`: the one reload path ([`Node::reload`]) and the watcher and signals that call it;
//! - `tasks`: what runs beside the sessions (DNS zone probes, the state store's task, systemd
//!   notifications) and what is prepared before serving (resolver, maildirs, open-file limit);
//! - `drain`: the completion guard the drain waits on;
//! - `threads`: the session threads, each a single-threaded runtime on which sessions run from
//!   accept to end, and the placement that gives thread 0's accepted connections to a thread:
//!   thread 0 until it is busy, then the next.
//!
//! What sessions and the admin listener share ([`Shared`], [`crate::shared::Snapshot`]) lives
//! below this module in [`crate::shared`]; nothing below imports `node`.
//!
//! **Invariant:** a stop drains in two bounded steps: `Draining` (no new connections; idle
//! sessions get 421, transactions may finish) until the last session's guard is dropped or the
//! grace period ends, then `Now` (every session answers 421) for at most 2 s more. The admin
//! listener outlives the accept loops, so `/readyz` says 503 while the node drains.

mod accept;
mod drain;
mod reload;
mod tasks;
mod threads;

pub use tasks::raise_file_limit;
pub use threads::BUSY_SHARE;

use crate::shared::{Shared, Shutdown, Snapshot};
use crate::spool::Spool;
use drain::Drain;
use mtac_ruleset::Ruleset;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::Instant;

/// Loads a ruleset (from the ruleset file, or by compiling a policy in `mtac run --policy`).
pub type Loader = Arc<dyn Fn() -> Result<Ruleset, String> + Send + Sync>;

/// How long sessions still open when the grace period ends have to answer 421 and close.
const LAST_CALL: Duration = Duration::from_secs(2);

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
    #[error("cannot start the session threads: {0}")]
    Threads(std::io::Error),
    #[error("admin socket {path}: {source}")]
    AdminSocket { path: String, source: std::io::Error },
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
    /// A shadow ruleset to compare every decision with (`mtac run LIVE --shadow CANDIDATE`).
    pub candidate: Option<CandidateConfig>,
    /// How many session threads serve the SMTP listeners (at least one; `mtac run --workers`,
    /// one per CPU by default).
    pub session_threads: usize,
    /// The share of a CPU past which a session thread is busy and new connections go to the
    /// next ([`BUSY_SHARE`] by default).
    pub busy_share: f64,
    /// What the session threads' names start with (`mtac-session`: `mtac-session-0`, …), as
    /// `top -H` and /proc show them.
    pub thread_name: String,
}

/// The shadow ruleset: how to load it, and the file whose changes reload it.
pub struct CandidateConfig {
    pub loader: Loader,
    pub watch: Option<PathBuf>,
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
    /// SMTP listeners, the farm each serves, and how it listens (implicit TLS, PROXY protocol):
    /// one socket per address, which session thread 0 accepts on.
    pub smtp: Vec<(std::net::TcpListener, String, mtac_ruleset::model::Listener)>,
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
    /// The shadow ruleset's loader, if the node runs one.
    candidate: Option<Loader>,
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
        tasks::prepare_maildirs(&ruleset)?;
        let dns = tasks::build_dns(&ruleset)?;
        let state = if tasks::needs_state(&ruleset) {
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
        let snapshot = Snapshot::new(ruleset, None).map_err(RunError::Tls)?;
        let shared = Arc::new(Shared::new(snapshot, dns, spool, state, started));
        Ok(Node { shared, loader, candidate: None })
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
                let socket = accept::bind(listener.address)
                    .map_err(|source| RunError::Listen { address: listener.address, source })?;
                if listener.is_proxied() {
                    let balancers: Vec<String> = listener.proxy_from.iter().map(ToString::to_string).collect();
                    tracing::info!(farm = %farm.name, address = %listener.address, proxy_from = %balancers.join(" "), "listening (PROXY protocol)");
                } else {
                    tracing::info!(farm = %farm.name, address = %listener.address, "listening");
                }
                self.shared.note_listening(&farm.name);
                bound.push((socket, farm.name.clone(), listener.clone()));
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
        let (candidate, candidate_watch) = match config.candidate {
            Some(CandidateConfig { loader, watch }) => (Some(loader), watch),
            None => (None, None),
        };
        let node = Arc::new(Node { candidate, ..self });
        let shared = node.shared.clone();
        let threads = threads::SessionThreads::start(
            config.session_threads,
            &config.thread_name,
            config.busy_share,
            &shared.metrics,
        )
        .await
        .map_err(RunError::Threads)?;
        // As an operator checks what --workers (or the CPUs the node may use) came to.
        tracing::info!(workers = threads.count(), "session threads");
        // Every socket registered before anything is spawned: after a failure here only the
        // session threads are left, and they end by themselves (their stop senders are
        // dropped). Connections wait in the backlogs until the accept loops start.
        let mut sockets = Vec::new();
        for (socket, farm, spec) in listeners.smtp {
            // Registered with thread 0's reactor, which then reports its connections.
            let listener = {
                let _runtime = threads.accepting().enter();
                TcpListener::from_std(socket)
            };
            let listener = listener.map_err(|source| RunError::Listen { address: spec.address, source })?;
            sockets.push((listener, farm, spec));
        }
        let _ = node.reload_candidate();
        let watched: Vec<&Path> = config.watch.iter().chain(candidate_watch.iter()).map(PathBuf::as_path).collect();
        let (watcher, events) = reload::watch(&watched);
        // The admin listener outlives the accept loops: while draining, /readyz says 503 and
        // /metrics shows the sessions finishing.
        let admin = listeners.admin.map(|admin| crate::admin::spawn(admin, shared.clone()));
        let (admin_socket, socket_path) = match listeners.admin_socket {
            Some((listener, path)) => (Some(crate::admin::spawn_socket(listener, shared.clone())), Some(path)),
            None => (None, None),
        };
        let (mut drain, guard) = Drain::new();
        let mut limits: HashMap<String, Arc<accept::FarmLimits>> = HashMap::new();
        let mut accept_tasks = Vec::new();
        for (listener, farm, spec) in sockets {
            let farm_limits = limits.entry(farm.clone()).or_default().clone();
            let task = accept::accept_loop(
                listener,
                farm,
                spec,
                farm_limits,
                shared.clone(),
                guard.clone(),
                threads.placement(),
            );
            accept_tasks.push(threads.accepting().spawn(task));
        }
        // From here on the accept loops and their sessions hold the only guards.
        drop(guard);
        let reload_task = tokio::spawn(reload::reload_loop(node.clone(), watcher, events));
        let probes = tasks::spawn_probes(&shared);
        let state_task = tasks::spawn_state_task(&shared);
        shared.set_ready();
        let watchdog = tasks::systemd_ready(&shared);

        stop.await;
        tracing::info!(grace = ?config.grace, "stopping: no new connections, sessions may finish");
        tasks::systemd_stopping();
        let deadline = Instant::now() + config.grace;
        shared.set_shutdown(Shutdown::Draining);
        // An aborted task is dropped on its next poll, not at once: wait for each, so that
        // nothing of this node (its state store above all) outlives `run_until` — and so that
        // the accept loops' guards are gone before the drain counts on them. An accept loop is
        // polled by its session thread: one held by a blocking call is not waited for past the
        // last call's span (its thread is left behind at the end, below).
        abort_and_wait([reload_task].into_iter().chain(probes).chain(watchdog)).await;
        let _ = tokio::time::timeout(LAST_CALL, abort_and_wait(accept_tasks.into_iter())).await;
        // Whether the sessions ended in time or not, `Now` next: the ones still open answer 421
        // and close; a node whose sessions all ended is told nothing new.
        drain.until(deadline).await;
        shared.set_shutdown(Shutdown::Now);
        if !drain.until(Instant::now() + LAST_CALL).await {
            tracing::warn!(sessions = shared.connections_open(), "stopping with sessions still open");
        }
        abort_and_wait(admin.into_iter().chain(admin_socket).chain(state_task)).await;
        // With them the sessions that outlived the last call, and what sessions left running.
        threads.stop().await;
        if let Some(path) = &socket_path {
            let _ = std::fs::remove_file(path);
        }
        if let Some(crate::state::Store::Embedded(db)) = &shared.state {
            // Deliveries counted in the background (auto-whitelisting, on blocking threads that
            // outlive their session thread's stop) finish before the last write.
            let last = Instant::now() + Duration::from_secs(5);
            while Arc::strong_count(db) > 1 && Instant::now() < last {
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

/// Abort every task, then wait until each is gone.
async fn abort_and_wait(tasks: impl Iterator<Item = tokio::task::JoinHandle<()>>) {
    let tasks: Vec<_> = tasks.collect();
    for task in &tasks {
        task.abort();
    }
    for task in tasks {
        let _ = task.await;
    }
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
