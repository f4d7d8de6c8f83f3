//! The admin socket: a local unix socket (mode 0600) for `mtac state`. Besides the TCP paths
//! it answers `GET /state` (store counts and bans, or what the store knows of one client or
//! triplet), `POST /unban` (lift the bans of an address or network, on the farm with Redis), and
//! `edit.rs`'s list, delete and whitelist.
//!
//! **Invariant:** who wrote to whom and which networks are banned, and lifting a ban, are
//! served here only — to the node's user and root — so reaching the TCP port is not an oracle.
//! A greylist count scans the whole store: one caller at a time.

use super::{health, metrics, respond, status, text, CONNECTION_TIMEOUT};
use crate::guard::{BanEntry, BanFarm};
use crate::shared::Shared;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UnixListener;
use tokio::task::JoinHandle;

/// Admin socket connections at once (operators' commands, not a crowd).
const SOCKET_CONNECTIONS: usize = 4;

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
            let Some((stream, _)) =
                crate::shared::accepted(listener.accept().await, "admin socket: accept failed").await
            else {
                continue;
            };
            let (shared, scans) = (shared.clone(), scans.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let streaming = Arc::new(AtomicBool::new(false));
                let traced = streaming.clone();
                let service = hyper::service::service_fn(move |request| {
                    let (shared, scans, traced) = (shared.clone(), scans.clone(), traced.clone());
                    async move {
                        if request.uri().path() == "/trace" && request.method() == Method::GET {
                            traced.store(true, Ordering::Relaxed);
                            return Ok::<_, Infallible>(trace(request.uri().query().unwrap_or("")));
                        }
                        Ok(answer_local(&request, &shared, &scans).await.map(BodyExt::boxed))
                    }
                });
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(5))
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                let mut connection = std::pin::pin!(connection);
                if tokio::time::timeout(CONNECTION_TIMEOUT, connection.as_mut()).await.is_err()
                    && streaming.load(Ordering::Relaxed)
                {
                    // A trace streams until its reader hangs up (it holds one of the socket's
                    // few connections meanwhile).
                    let _ = connection.await;
                }
            });
        }
    })
}

/// `GET /trace?[client=CIDR][&farm=F][&dialogue=1]`: the decision lines of those clients (and
/// their dialogue), as they happen.
fn trace(query: &str) -> Response<BoxBody<Bytes, Infallible>> {
    let clients =
        match param(query, "client").map(|c| c.parse::<IpNet>().or_else(|_| c.parse::<IpAddr>().map(IpNet::from))) {
            Some(Err(_)) => {
                return text(StatusCode::BAD_REQUEST, "client=: an address or a network (CIDR)\n").map(BodyExt::boxed)
            }
            Some(Ok(net)) => Some(net.trunc()),
            None => None,
        };
    let dialogue = param(query, "dialogue").is_some_and(|v| v == "1" || v == "true");
    let filter = super::trace::TraceFilter { clients, farm: param(query, "farm"), dialogue };
    let mut response = Response::new(super::trace::stream(filter));
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain"));
    response
}

async fn answer_local<B>(
    request: &Request<B>,
    shared: &Shared,
    scans: &tokio::sync::Mutex<()>,
) -> Response<Full<Bytes>> {
    let query = request.uri().query().unwrap_or("");
    let (status, report) = match (request.method(), request.uri().path()) {
        (&Method::POST, "/unban") => unban(query, shared).await,
        (&Method::POST, "/state/delete") => super::edit::delete(query, shared).await,
        (&Method::POST, "/state/whitelist") => super::edit::whitelist(query, shared).await,
        (&Method::GET, "/state/list") => {
            let _one = scans.lock().await;
            super::edit::list(query, shared).await
        }
        (&Method::GET, "/state") => {
            let _one = scans.lock().await;
            state(query, shared).await
        }
        (method, "/log-level") => return super::log_level::answer(method, param(query, "level")),
        (&Method::GET, "/healthz" | "/readyz") => return health(request.uri().path(), shared),
        (&Method::GET, "/metrics") => return metrics(shared),
        (&Method::GET, "/status") => return status(shared),
        _ => {
            return text(
                StatusCode::NOT_FOUND,
                "not found: GET /state, GET /state/list, POST /state/delete, POST /state/whitelist, POST /unban, /log-level, or the TCP paths\n",
            )
        }
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
    /// `/state/list`: one page of entries, and the cursor of the next (`None`: the last page).
    #[serde(default)]
    pub listed: Option<Vec<crate::state::Listed>>,
    #[serde(default)]
    pub next: Option<String>,
    /// `/state/delete`: how many triplets were deleted.
    #[serde(default)]
    pub deleted: Option<u64>,
    /// `/state/whitelist`: for how many seconds the client now passes greylisting.
    #[serde(default)]
    pub whitelisted_for: Option<u64>,
    pub error: Option<String>,
}

pub(super) fn store_name(shared: &Shared) -> String {
    match shared.state.as_ref() {
        Some(crate::state::Store::Embedded(_)) => "embedded".into(),
        Some(crate::state::Store::Redis(_)) => "redis".into(),
        None => "none".into(),
    }
}

pub(super) fn param(query: &str, name: &str) -> Option<String> {
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
