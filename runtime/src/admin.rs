//! The admin listener: Prometheus metrics, health, readiness and the node's status for
//! `mtac status`, over plain HTTP/1.1 (hyper).
//!
//! | path       | answer                                                                   |
//! |------------|--------------------------------------------------------------------------|
//! | `/metrics` | OpenMetrics text (see [`crate::metrics`])                                |
//! | `/healthz` | 200 while the process serves (liveness)                                  |
//! | `/readyz`  | 200 while it takes SMTP connections, 503 before bind and while draining  |
//! | `/status`  | JSON [`Status`]: ruleset hash, load time, uptime, connections, last error |
//!
//! It listens on loopback unless the policy says otherwise (`admin "ADDR:PORT"`) and has no
//! authentication: it reveals counts and the ruleset hash, never addresses or messages, and
//! changes nothing. A few connections at a time with short timeouts: a scraper cannot starve the
//! node.

use crate::server::Shared;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Admin connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 32;
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
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else { return };
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "admin: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let service = hyper::service::service_fn(move |request| {
                    let shared = shared.clone();
                    async move { Ok::<_, Infallible>(answer(&request, &shared).await) }
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

async fn answer<B>(request: &Request<B>, shared: &Shared) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match request.uri().path() {
        "/metrics" => {
            let body = shared.render_metrics();
            respond(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", body)
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" => {
            if shared.ready.load(Ordering::Relaxed) && !shared.stopping() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        "/state" => {
            let (status, report) = state(request.uri().query().unwrap_or(""), shared).await;
            match serde_json::to_string_pretty(&report) {
                Ok(json) => respond(status, "application/json", json + "\n"),
                Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the state\n"),
            }
        }
        "/status" => match serde_json::to_string_pretty(&Status::of(shared)) {
            Ok(json) => respond(StatusCode::OK, "application/json", json + "\n"),
            Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode the status\n"),
        },
        _ => text(StatusCode::NOT_FOUND, "not found: try /metrics, /healthz, /readyz, /status or /state\n"),
    }
}

/// What `/state` answers: entry counts, or with `client=IP` (and `sender=`, `recipient=`) what
/// the store knows of that client or triplet, for the first farm that greylists (or `farm=`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StateReport {
    /// `embedded` or `redis`.
    pub store: String,
    pub counts: Option<crate::state::Counts>,
    /// The client key that stands for `client` in triplets (`net:…` or `dns:…`).
    pub client_key: Option<String>,
    /// Messages delivered from it (toward auto-whitelisting) and the threshold.
    pub deliveries: Option<u64>,
    pub auto_whitelist_after: Option<u32>,
    /// The client's network is banned on this node now.
    pub banned: Option<bool>,
    pub triplet: Option<crate::state::Entry>,
    pub error: Option<String>,
}

async fn state(query: &str, shared: &Shared) -> (StatusCode, StateReport) {
    let Some(store) = shared.state.as_ref() else {
        return (
            StatusCode::NOT_FOUND,
            StateReport { error: Some("no state store on this node".into()), ..Default::default() },
        );
    };
    let mut report = StateReport {
        store: match store {
            crate::state::Store::Embedded(_) => "embedded".into(),
            crate::state::Store::Redis(_) => "redis".into(),
        },
        ..Default::default()
    };
    let param = |name: &str| {
        query.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| percent_decode(v))
    };
    let Some(client) = param("client") else {
        match store.counts().await {
            Ok(counts) => report.counts = Some(counts),
            Err(e) => report.error = Some(e.to_string()),
        }
        return (StatusCode::OK, report);
    };
    let Ok(ip) = client.parse::<std::net::IpAddr>() else {
        report.error = Some(format!("`{client}` is not an IP address"));
        return (StatusCode::BAD_REQUEST, report);
    };
    let snapshot = shared.snapshot();
    let farm_name = param("farm");
    let farm = snapshot
        .ruleset
        .policy()
        .farms
        .iter()
        .find(|f| f.greylist.is_some() && farm_name.as_deref().is_none_or(|n| n == f.name));
    let Some((farm, greylist)) = farm.and_then(|f| f.greylist.as_ref().map(|g| (f, g))) else {
        report.error = Some("no farm greylists".into());
        return (StatusCode::NOT_FOUND, report);
    };
    let network = crate::guard::network(ip, greylist.v4_prefix, greylist.v6_prefix);
    let key = param("key").unwrap_or_else(|| format!("net:{network}"));
    report.banned = Some(shared.bans.is_banned(ip, &farm.bans));
    report.auto_whitelist_after = Some(greylist.auto_whitelist);
    match store.deliveries(&key).await {
        Ok(n) => report.deliveries = Some(n),
        Err(e) => report.error = Some(e.to_string()),
    }
    if let (Some(sender), Some(recipient)) = (param("sender"), param("recipient")) {
        match store.entry(&crate::state::Triplet::new(key.clone(), &sender, &recipient)).await {
            Ok(entry) => report.triplet = entry,
            Err(e) => report.error = Some(e.to_string()),
        }
    }
    report.client_key = Some(key);
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

/// GET `path` from an admin listener at `address` (used by `mtac status` and the tests).
/// Returns the status code and the body.
pub async fn get(address: &str, path: &str, timeout: Duration) -> Result<(u16, String), String> {
    use http_body_util::BodyExt;
    let work = async {
        let stream = tokio::net::TcpStream::connect(address).await.map_err(|e| format!("cannot connect: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let driver = tokio::spawn(connection);
        let request = Request::get(path)
            .header(hyper::header::HOST, address)
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| format!("HTTP: {e}"))?;
        let response = sender.send_request(request).await.map_err(|e| format!("HTTP: {e}"))?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.map_err(|e| format!("HTTP: {e}"))?.to_bytes();
        driver.abort();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| "no answer in time".to_owned())?
}
