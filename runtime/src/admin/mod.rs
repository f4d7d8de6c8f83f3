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
//! | `/state/list` | 404 | yes | a page of triplets or whitelist counts ([`StateReport::listed`]) |
//! | `/state/delete` | 404 | POST | a client's triplets ([`StateReport::deleted`])               |
//! | `/state/whitelist` | 404 | POST | a client passes greylisting for the lifetime           |
//! | `/log-level` | 404 | yes, POST | the log filter in force; `POST ?level=` changes it      |
//! | `/trace`   | 404 | yes    | a live stream of decision lines (`client=CIDR`, `farm=`)         |
//!
//! The TCP listener listens on loopback unless the policy says otherwise and has no
//! authentication: it reveals counts and the ruleset hash, never an address, and changes nothing.
//! What the state store knows — who wrote to whom, which networks are banned — and lifting a ban
//! are on the socket only (mode 0600: the node's user and root), so reaching the TCP port is not
//! an oracle. A greylist count scans the whole store: on the socket, one caller at a time.
//!
//! - `http`: the TCP listener and its two budgets (a full lane, and a health lane for when the
//!   full one is held);
//! - `socket`: the admin socket, with `/state` and `/unban`;
//! - `edit`: the socket's `/state/list`, `/state/delete` and `/state/whitelist`;
//! - `log_level`: the socket's `/log-level`, over the handle the binary registers;
//! - `trace`: the socket's `/trace`, fed by the binary's tracing layer;
//! - `client`: [`get`] and [`ask_socket`], the clients `mtac status` and `mtac state` use.
//!
//! **Invariant:** `/status` and `/metrics` read the same counts — the node's metrics registry —
//! so the two can never disagree.

mod client;
mod edit;
mod http;
mod log_level;
mod socket;
mod trace;

pub use client::{ask_socket, get, stream_socket};
pub use http::{spawn, HEALTH_TIMEOUT, MAX_CONNECTIONS};
pub use log_level::{register_log_filter, SetFilter};
pub use socket::{bind_socket, spawn_socket, StateReport};
pub use trace::{publish as publish_trace, tracing_wanted, TraceLine};

use crate::shared::Shared;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use serde::{Deserialize, Serialize};
use std::time::Duration;

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
        let reloads = |result| shared.metrics.reloads_counted(result);
        Status {
            hostname: snapshot.ruleset.policy().hostname.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            state: if shared.stopping() { "draining" } else { "running" }.to_owned(),
            ruleset: snapshot.ruleset.hash_hex(),
            ruleset_loaded_at: shared.metrics.ruleset_loaded.get(),
            started_at: shared.started_at(),
            connections_active: shared.connections_open(),
            connections_total: shared.connections_accepted(),
            reloads_ok: reloads("ok"),
            reloads_failed: reloads("failed"),
            last_reload_error: shared.last_reload_error(),
            bans_active: shared.bans.active() as u64,
            zones_suspended: shared
                .dns()
                .map(|dns| dns.zones().snapshot().into_iter().filter(|(_, s)| s.suspended).map(|(z, _)| z).collect())
                .unwrap_or_default(),
        }
    }
}

fn health(path: &str, shared: &Shared) -> Response<Full<Bytes>> {
    if path == "/healthz" {
        return text(StatusCode::OK, "ok\n");
    }
    if shared.ready() {
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

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    respond(status, "text/plain; charset=utf-8", body.to_owned())
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    response
}
