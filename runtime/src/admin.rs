//! The admin listener: Prometheus metrics, health, readiness and the node's status for
//! `mtac status`, over plain HTTP/1.1 (hyper); and the admin socket, a local unix socket for
//! `mtac state`.
//!
//! | path       | TCP | socket | answer                                                            |
//! |------------|-----|--------|-------------------------------------------------------------------|
//! | `/metrics` | yes | yes    | OpenMetrics text (see [`crate::metrics`])                         |
//! | `/healthz` | yes | yes    | 200 while the process serves (liveness)                           |
//! | `/readyz`  | yes | yes    | 200 while it takes SMTP connections, 503 before bind and draining |
//! | `/status`  | yes | yes    | JSON [`Status`]: ruleset hash, load time, uptime, connections     |
//! | `/state`   | 404 | yes    | JSON [`StateReport`]: store counts and bans, or one client/triplet |
//! | `/unban`   | 404 | POST   | lift the bans of an address or network ([`StateReport::lifted`])  |
//!
//! The TCP listener listens on loopback unless the policy says otherwise and has no
//! authentication: it reveals counts and the ruleset hash, never an address, and changes nothing.
//! What the state store knows — who wrote to whom, which networks are banned — and lifting a ban
//! are on the socket only (mode 0600: the node's user and root), so reaching the TCP port is not
//! an oracle. A greylist count scans the whole store: on the socket, one caller at a time.
//!
//! Budgets: [`MAX_CONNECTIONS`] TCP connections are served in full; when they are all held
//! (keep-alive scrapers, or someone holding sockets open), further connections get the health
//! lane: `/healthz` and `/readyz` only, one request each, within [`HEALTH_TIMEOUT`]. A liveness
//! probe is never queued behind 32 idle connections (it waited 29 s before).

use crate::guard::{BanEntry, BanFarm};
use crate::server::Shared;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinHandle;

/// Admin connections served with every path at once; more get the health lane.
pub const MAX_CONNECTIONS: usize = 32;
/// Connections of the health lane at once; beyond both budgets a connection is closed at accept.
const HEALTH_LANE: usize = 64;
/// A health-lane connection: one request, answered or dropped within this.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// Admin socket connections at once (operators' commands, not a crowd).
const SOCKET_CONNECTIONS: usize = 4;
/// A whole admin connection (request headers, answer, keep-alive) ends after this.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// What `/status` reports, and what `mtac status` reads.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// The node's host name (from the policy).
    pub hostname: String,
    /// mtac's version.
    pub version: String,
    /// `running` or `draining`.
    pub state: String,
    /// The blake3 hash of the ruleset in use (hex).
    pub ruleset: String,
    /// When it was loaded (Unix seconds).
    pub ruleset_loaded_at: f64,
    /// When the node started (Unix seconds).
    pub started_at: f64,
    pub connections_active: u64,
    pub connections_total: u64,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// Why the last reload was refused, if the last attempt failed.
    pub last_reload_error: Option<String>,
    pub bans_active: u64,
    /// DNS list zones suspended now (they fail their test points).
    pub zones_suspended: Vec<String>,
}

impl Status {
    pub fn of(shared: &Shared) -> Status {
        let snapshot = shared.snapshot();
        let counters = &shared.counters;
        Status {
            hostname: snapshot.ruleset.policy().hostname.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            state: if shared.stopping() { "draining" } else { "running" }.to_owned(),
            ruleset: snapshot.ruleset.hash_hex(),
            ruleset_loaded_at: *shared.loaded_at.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
            started_at: shared.started_at(),
            connections_active: counters.connections_now.load(Ordering::Relaxed) as u64,
            connections_total: counters.connections_total.load(Ordering::Relaxed),
            reloads_ok: counters.reloads_ok.load(Ordering::Relaxed),
            reloads_failed: counters.reloads_failed.load(Ordering::Relaxed),
            last_reload_error: shared
                .last_reload_error
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
            bans_active: shared.bans.active() as u64,
            zones_suspended: shared
                .dns()
                .map(|dns| dns.zones().snapshot().into_iter().filter(|(_, s)| s.suspended).map(|(z, _)| z).collect())
                .unwrap_or_default(),
        }
    }
}

/// Serve the admin endpoints on `listener` until the task is aborted.
pub fn spawn(listener: TcpListener, shared: Arc<Shared>) -> JoinHandle<()> {
    let full = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let health = Arc::new(tokio::sync::Semaphore::new(HEALTH_LANE));
    tokio::spawn(async move {
        loop {
            // Accept first, then find the connection a budget: waiting for a permit before
            // accepting left health probes in the backlog behind idle keep-alive connections.
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "admin: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (permit, lane) = match full.clone().try_acquire_owned() {
                Ok(permit) => (permit, Lane::Full),
                Err(_) => match health.clone().try_acquire_owned() {
                    Ok(permit) => (permit, Lane::Health),
                    Err(_) => continue,
                },
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let service = hyper::service::service_fn(move |request| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(answer(&request, &shared, lane).await) }
                });
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder.timer(hyper_util::rt::TokioTimer::new());
                let limit = match lane {
                    Lane::Full => {
                        builder.header_read_timeout(Duration::from_secs(5));
                        CONNECTION_TIMEOUT
                    }
                    Lane::Health => {
                        builder.header_read_timeout(Duration::from_secs(1)).keep_alive(false);
                        HEALTH_TIMEOUT
                    }
                };
                let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                let _ = tokio::time::timeout(limit, connection).await;
            });
        }
    })
}

/// Which paths a TCP connection may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    /// Every TCP path.
    Full,
    /// Every general permit is held: health and readiness only.
    Health,
}

async fn answer<B>(request: &Request<B>, shared: &Shared, lane: Lane) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match request.uri().path() {
        "/healthz" | "/readyz" => health(request.uri().path(), shared),
        _ if lane == Lane::Health => text(StatusCode::SERVICE_UNAVAILABLE, "admin listener busy: only /healthz and /readyz now\n"),
        "/metrics" => metrics(shared),
        "/status" => status(shared),
        "/state" | "/unban" => text(
            StatusCode::NOT_FOUND,
            "state queries and unbans are served on the node's admin socket only (policy: admin socket=): use `mtac state`\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found: try /metrics, /healthz, /readyz or /status\n"),
    }
}

fn health(path: &str, shared: &Shared) -> Response<Full<Bytes>> {
    if path == "/healthz" {
        return text(StatusCode::OK, "ok\n");
    }
    if shared.ready.load(Ordering::Relaxed) && !shared.stopping() {
        text(StatusCode::OK, "ready\n")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

fn metrics(shared: &Shared) -> Response<Full<Bytes>> {
    let body = shared.render_metrics();
    respond(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", body)
}

fn status(shared: &Shared) -> Response<Full<Bytes>> {
    match serde_json::to_string_pretty(&Status::of(shared)) {
        Ok(json) => respond(StatusCode::OK, "application/json", json + "\n"),
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the status\n"),
    }
}

/// Bind the admin socket at `path`, mode 0600. A stale file (no node answers on it) is replaced;
/// a socket another live node answers on is left to it (`Ok(None)`, logged): two nodes given
/// one spool directory must not take each other's socket.
pub fn bind_socket(path: &Path) -> std::io::Result<Option<UnixListener>> {
    use std::os::unix::fs::PermissionsExt;
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        tracing::error!(path = %path.display(), "admin socket: another node answers there; this node serves none");
        return Ok(None);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Bound under a temporary name, made 0600, then renamed into place: nobody can connect to
    // the path while it is still open to everyone.
    let temporary = path.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    let listener = UnixListener::bind(&temporary)?;
    std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o600))?;
    std::fs::rename(&temporary, path)?;
    Ok(Some(listener))
}

/// Serve the admin socket until the task is aborted.
pub fn spawn_socket(listener: UnixListener, shared: Arc<Shared>) -> JoinHandle<()> {
    let permits = Arc::new(tokio::sync::Semaphore::new(SOCKET_CONNECTIONS));
    // A count scans the whole store: one at a time.
    let scans = Arc::new(tokio::sync::Mutex::new(()));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else { return };
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (shared, scans) = (shared.clone(), scans.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let service = hyper::service::service_fn(move |request| {
                    let (shared, scans) = (shared.clone(), scans.clone());
                    async move { Ok::<_, Infallible>(answer_local(&request, &shared, &scans).await) }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(5))
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
            });
        }
    })
}

async fn answer_local<B>(
    request: &Request<B>,
    shared: &Shared,
    scans: &tokio::sync::Mutex<()>,
) -> Response<Full<Bytes>> {
    let query = request.uri().query().unwrap_or("");
    let (status, report) = match (request.method(), request.uri().path()) {
        (&Method::POST, "/unban") => unban(query, shared).await,
        (&Method::GET, "/state") => {
            let _one = scans.lock().await;
            state(query, shared).await
        }
        (&Method::GET, "/healthz" | "/readyz") => return health(request.uri().path(), shared),
        (&Method::GET, "/metrics") => return metrics(shared),
        (&Method::GET, "/status") => return status(shared),
        _ => return text(StatusCode::NOT_FOUND, "not found: GET /state, POST /unban, or the TCP paths\n"),
    };
    match serde_json::to_string_pretty(&report) {
        Ok(json) => respond(status, "application/json", json + "\n"),
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the state\n"),
    }
}

/// What `/state` answers: entry counts and every ban, or with `client=IP` (and `sender=`,
/// `recipient=`) what the store knows of that client or triplet, for the first farm that
/// greylists (or `farm=`), and the bans that cover it. `/unban` answers with `lifted`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StateReport {
    /// `embedded`, `redis`, or `none` (no farm greylists; bans are in memory only).
    pub store: String,
    pub counts: Option<crate::state::Counts>,
    /// The client key that stands for `client` in triplets (`net:…` or `dns:…`).
    pub client_key: Option<String>,
    /// Messages delivered from it (toward auto-whitelisting) and the threshold.
    pub deliveries: Option<u64>,
    pub auto_whitelist_after: Option<u32>,
    /// Some ban covers the client now (on this node; with Redis, on the farm).
    pub banned: Option<bool>,
    pub triplet: Option<crate::state::Entry>,
    /// Bans in force (all, or those covering `client`), with their farm and expiry.
    #[serde(default)]
    pub bans: Option<Vec<BanEntry>>,
    /// The bans `/unban` lifted.
    #[serde(default)]
    pub lifted: Option<Vec<BanEntry>>,
    pub error: Option<String>,
}

fn store_name(shared: &Shared) -> String {
    match shared.state.as_ref() {
        Some(crate::state::Store::Embedded(_)) => "embedded".into(),
        Some(crate::state::Store::Redis(_)) => "redis".into(),
        None => "none".into(),
    }
}

fn param(query: &str, name: &str) -> Option<String> {
    query.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| percent_decode(v))
}

/// Bans in force covering `ip` (all with `None`): this node's table, and with Redis the farm's
/// (a ban whose announcement this node missed is still shown, and can be lifted).
async fn bans_in_force(shared: &Shared, ip: Option<IpAddr>) -> (Vec<(IpNet, BanFarm, u64)>, Option<String>) {
    let mut bans = shared.bans.list(ip);
    let mut error = None;
    if let Some(crate::state::Store::Redis(redis)) = &shared.state {
        match redis.bans().await {
            Ok(farm_bans) => {
                for (farm, net, seconds) in farm_bans {
                    if ip.is_some_and(|ip| !net.contains(&ip)) {
                        continue;
                    }
                    match bans.iter_mut().find(|(n, f, _)| *n == net && *f == farm) {
                        Some(known) => known.2 = known.2.max(seconds),
                        None => bans.push((net, farm, seconds)),
                    }
                }
            }
            Err(e) => error = Some(format!("the farm's bans: {e}")),
        }
    }
    bans.sort();
    (bans, error)
}

fn entries(bans: &[(IpNet, BanFarm, u64)]) -> Vec<BanEntry> {
    bans.iter()
        .map(|(net, farm, seconds)| BanEntry {
            network: net.to_string(),
            farm: farm.name().to_owned(),
            expires_in: *seconds,
        })
        .collect()
}

async fn state(query: &str, shared: &Shared) -> (StatusCode, StateReport) {
    let mut report = StateReport { store: store_name(shared), ..Default::default() };
    let Some(client) = param(query, "client") else {
        if let Some(store) = shared.state.as_ref() {
            match store.counts().await {
                Ok(counts) => report.counts = Some(counts),
                Err(e) => report.error = Some(e.to_string()),
            }
        }
        let (bans, error) = bans_in_force(shared, None).await;
        report.bans = Some(entries(&bans));
        report.error = report.error.or(error);
        return (StatusCode::OK, report);
    };
    let Ok(ip) = client.parse::<IpAddr>() else {
        report.error = Some(format!("`{client}` is not an IP address"));
        return (StatusCode::BAD_REQUEST, report);
    };
    let (bans, error) = bans_in_force(shared, Some(ip)).await;
    report.banned = Some(!bans.is_empty());
    report.bans = Some(entries(&bans));
    report.error = error;
    let Some(store) = shared.state.as_ref() else { return (StatusCode::OK, report) };
    let snapshot = shared.snapshot();
    let farm_name = param(query, "farm");
    let farm = snapshot
        .ruleset
        .policy()
        .farms
        .iter()
        .find(|f| f.greylist.is_some() && farm_name.as_deref().is_none_or(|n| n == f.name));
    let Some(greylist) = farm.and_then(|f| f.greylist.as_ref()) else {
        return (StatusCode::OK, report);
    };
    let network = crate::guard::network(ip, greylist.v4_prefix, greylist.v6_prefix);
    let key = param(query, "key").unwrap_or_else(|| format!("net:{network}"));
    report.auto_whitelist_after = Some(greylist.auto_whitelist);
    match store.deliveries(&key).await {
        Ok(n) => report.deliveries = Some(n),
        Err(e) => report.error = Some(e.to_string()),
    }
    if let (Some(sender), Some(recipient)) = (param(query, "sender"), param(query, "recipient")) {
        match store.entry(&crate::state::Triplet::new(key.clone(), &sender, &recipient)).await {
            Ok(entry) => report.triplet = entry,
            Err(e) => report.error = Some(e.to_string()),
        }
    }
    report.client_key = Some(key);
    (StatusCode::OK, report)
}

/// `POST /unban?target=ADDRESS|NETWORK[&farm=NAME]`: an address lifts every ban covering it, a
/// network the ban of exactly that network; `farm` limits it to one farm's bans (`*`: those of
/// every farm). On this node, and with Redis on the farm (every node hears of it). The lifted
/// networks' AUTH failures are forgotten too, or the next AUTH would be refused all the same.
async fn unban(query: &str, shared: &Shared) -> (StatusCode, StateReport) {
    let mut report = StateReport { store: store_name(shared), ..Default::default() };
    let Some(target) = param(query, "target") else {
        report.error = Some("give target=ADDRESS or NETWORK".into());
        return (StatusCode::BAD_REQUEST, report);
    };
    let farm = param(query, "farm").map(|f| if f == "*" { BanFarm::All } else { BanFarm::Farm(f) });
    let (candidates, error) = if let Ok(ip) = target.parse::<IpAddr>() {
        bans_in_force(shared, Some(ip)).await
    } else if let Ok(net) = target.parse::<IpNet>() {
        let (all, error) = bans_in_force(shared, None).await;
        (all.into_iter().filter(|(n, _, _)| *n == net.trunc()).collect(), error)
    } else {
        report.error = Some(format!("`{target}` is neither an address nor a network"));
        return (StatusCode::BAD_REQUEST, report);
    };
    report.error = error;
    let mut lifted = Vec::new();
    for (net, ban_farm, seconds) in candidates {
        if farm.as_ref().is_some_and(|want| *want != ban_farm) {
            continue;
        }
        shared.bans.remove(net, Some(&ban_farm));
        shared.auth_failures.forget(net);
        if let Some(crate::state::Store::Redis(redis)) = &shared.state {
            if let Err(e) = redis.unban(&ban_farm, net).await {
                report.error = Some(format!("lifted here, but not on the farm: {e}"));
            }
        }
        tracing::info!(%net, farm = ban_farm.name(), "ban lifted by an operator");
        lifted.push((net, ban_farm, seconds));
    }
    report.lifted = Some(entries(&lifted));
    (StatusCode::OK, report)
}

/// Decode `%XX` escapes and `+` in a query value.
fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => match bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(decoded) => {
                    out.push(decoded);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    respond(status, "text/plain; charset=utf-8", body.to_owned())
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    response
}

/// Ask the admin socket at `socket`: `method` `path` (used by `mtac state` and the tests).
/// Returns the status code and the body.
pub async fn ask_socket(socket: &Path, method: Method, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    let work = async {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", socket.display()))?;
        exchange(stream, method, path, "localhost").await
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| "no answer in time".to_owned())?
}

/// GET `path` from an admin listener at `address` (used by `mtac status` and the tests).
/// Returns the status code and the body.
pub async fn get(address: &str, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    let work = async {
        let stream = tokio::net::TcpStream::connect(address).await.map_err(|e| format!("cannot connect: {e}"))?;
        exchange(stream, Method::GET, path, address).await
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| "no answer in time".to_owned())?
}

/// One HTTP/1.1 request without a body on `stream`: the status code and the body.
async fn exchange<S>(stream: S, method: Method, path: &str, host: &str) -> Result<(u16, String), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::BodyExt;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    let driver = tokio::spawn(connection);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, host)
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| format!("HTTP: {e}"))?;
    let response = sender.send_request(request).await.map_err(|e| format!("HTTP: {e}"))?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.map_err(|e| format!("HTTP: {e}"))?.to_bytes();
    driver.abort();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
