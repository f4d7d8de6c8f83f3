//! The admin TCP listener: `/metrics`, `/healthz`, `/readyz` and `/status` over HTTP/1.1, in
//! two lanes. [`MAX_CONNECTIONS`] connections are served in full; when they are all held
//! (keep-alive scrapers, or someone holding sockets open), further connections get the health
//! lane: `/healthz` and `/readyz` only, one request each, within [`HEALTH_TIMEOUT`]. A liveness
//! probe is never queued behind 32 idle connections (it waited 29 s before).
//!
//! **Invariant:** nothing on this listener changes the node or names a client: state queries
//! and unbans are answered on the admin socket only (`super::socket`).

use super::{status, text, CONNECTION_TIMEOUT};
use crate::shared::Shared;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Admin connections served with every path at once; more get the health lane.
pub const MAX_CONNECTIONS: usize = 32;
/// Connections of the health lane at once; beyond both budgets a connection is closed at accept.
const HEALTH_LANE: usize = 64;
/// A health-lane connection: one request, answered or dropped within this.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// Serve the admin endpoints on `listener` until the task is aborted.
pub fn spawn(listener: TcpListener, shared: Arc<Shared>) -> JoinHandle<()> {
    let full = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let health = Arc::new(tokio::sync::Semaphore::new(HEALTH_LANE));
    tokio::spawn(async move {
        loop {
            // Accept first, then find the connection a budget: waiting for a permit before
            // accepting left health probes in the backlog behind idle keep-alive connections.
            let Some((stream, _)) = crate::shared::accepted(listener.accept().await, "admin: accept failed").await
            else {
                continue;
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
        "/healthz" | "/readyz" => super::health(request.uri().path(), shared),
        _ if lane == Lane::Health => text(StatusCode::SERVICE_UNAVAILABLE, "admin listener busy: only /healthz and /readyz now\n"),
        "/metrics" => super::metrics(shared),
        "/status" => status(shared),
        "/state" | "/unban" => text(
            StatusCode::NOT_FOUND,
            "state queries and unbans are served on the node's admin socket only (policy: admin socket=): use `mtac state`\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found: try /metrics, /healthz, /readyz or /status\n"),
    }
}
