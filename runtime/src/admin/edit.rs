//! What `mtac state` changes or pages through on the admin socket, like OpenBSD's `spamdb`:
//! `GET /state/list` (a page of greylist triplets or whitelist counts), `POST /state/delete` (a
//! client's triplets, or one), `POST /state/whitelist` (a client, for the farm's greylist
//! lifetime). Served on the socket only (`socket.rs`): the TCP port never answers these.

use super::socket::{param, store_name, StateReport};
use crate::shared::Shared;
use crate::state::{ListKind, Triplet};
use hyper::StatusCode;
use mtac_ruleset::model::Greylist;
use std::net::IpAddr;

/// The client key `client=IP` stands for in the farm's greylist (`farm=`, or the first that
/// greylists), or `key=` as given (`None`: neither given); and that farm's greylist.
fn client_key(query: &str, shared: &Shared) -> Result<(Option<String>, Option<Greylist>), String> {
    let snapshot = shared.snapshot();
    let farm_name = param(query, "farm");
    let greylist = snapshot
        .ruleset
        .policy()
        .farms
        .iter()
        .filter(|f| farm_name.as_deref().is_none_or(|n| n == f.name))
        .find_map(|f| f.greylist.clone());
    if let Some(key) = param(query, "key") {
        return Ok((Some(key), greylist));
    }
    let Some(client) = param(query, "client") else { return Ok((None, greylist)) };
    let ip: IpAddr = client.parse().map_err(|_| format!("`{client}` is not an IP address"))?;
    let greylist = greylist.ok_or_else(|| match &farm_name {
        Some(name) => format!("farm `{name}` does not greylist"),
        None => "no farm greylists".to_owned(),
    })?;
    let network = crate::guard::network(ip, greylist.v4_prefix, greylist.v6_prefix);
    Ok((Some(format!("net:{network}")), Some(greylist)))
}

fn refused(mut report: StateReport, status: StatusCode, error: String) -> (StatusCode, StateReport) {
    report.error = Some(error);
    (status, report)
}

/// `GET /state/list?[kind=whitelist][&client=IP|key=K][&after=CURSOR][&limit=N][&farm=F]`.
pub(super) async fn list(query: &str, shared: &Shared) -> (StatusCode, StateReport) {
    let report = StateReport { store: store_name(shared), ..Default::default() };
    let Some(store) = shared.state.as_ref() else {
        return refused(report, StatusCode::CONFLICT, "no state store: no farm greylists".to_owned());
    };
    let kind = match param(query, "kind").as_deref() {
        None | Some("triplets") => ListKind::Triplets,
        Some("whitelist") => ListKind::Whitelist,
        Some(other) => {
            return refused(report, StatusCode::BAD_REQUEST, format!("kind `{other}`: triplets or whitelist"))
        }
    };
    let key = match client_key(query, shared) {
        Ok((key, _)) => key,
        Err(e) => return refused(report, StatusCode::BAD_REQUEST, e),
    };
    let prefix = match (&key, kind) {
        (Some(k), ListKind::Triplets) => format!("{k}|"),
        (Some(k), ListKind::Whitelist) => k.clone(),
        (None, _) => String::new(),
    };
    let limit = param(query, "limit").and_then(|l| l.parse().ok()).unwrap_or(100);
    let mut report = report;
    match store.list(kind, &prefix, param(query, "after").as_deref(), limit).await {
        Ok((listed, next)) => {
            report.listed = Some(listed);
            report.next = next;
            (StatusCode::OK, report)
        }
        Err(e) => refused(report, StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// `POST /state/delete?client=IP|key=K[&sender=S&recipient=R][&farm=F]`: the client's triplets
/// (all, or the one given), so its next attempt is greylisted afresh.
pub(super) async fn delete(query: &str, shared: &Shared) -> (StatusCode, StateReport) {
    let report = StateReport { store: store_name(shared), ..Default::default() };
    let Some(store) = shared.state.as_ref() else {
        return refused(report, StatusCode::CONFLICT, "no state store: no farm greylists".to_owned());
    };
    let key = match client_key(query, shared) {
        Ok((Some(key), _)) => key,
        Ok((None, _)) => return refused(report, StatusCode::BAD_REQUEST, "give client=IP or key=KEY".to_owned()),
        Err(e) => return refused(report, StatusCode::BAD_REQUEST, e),
    };
    let prefix = match (param(query, "sender"), param(query, "recipient")) {
        (Some(sender), Some(recipient)) => Triplet::new(key.clone(), &sender, &recipient).key(),
        (None, None) => format!("{key}|"),
        _ => {
            return refused(report, StatusCode::BAD_REQUEST, "give both sender= and recipient=, or neither".to_owned())
        }
    };
    let mut report = report;
    match store.delete_triplets(&prefix).await {
        Ok(n) => {
            tracing::info!(client = key.as_str(), deleted = n, "greylist triplets deleted by an operator");
            report.client_key = Some(key);
            report.deleted = Some(n);
            (StatusCode::OK, report)
        }
        Err(e) => refused(report, StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// `POST /state/whitelist?client=IP|key=K[&farm=F]`: greylisting passes the client for the
/// farm's greylist `lifetime`, whatever its `auto-whitelist`.
pub(super) async fn whitelist(query: &str, shared: &Shared) -> (StatusCode, StateReport) {
    let report = StateReport { store: store_name(shared), ..Default::default() };
    let Some(store) = shared.state.as_ref() else {
        return refused(report, StatusCode::CONFLICT, "no state store: no farm greylists".to_owned());
    };
    let (key, greylist) = match client_key(query, shared) {
        Ok((Some(key), Some(greylist))) => (key, greylist),
        Ok((Some(_), None)) => return refused(report, StatusCode::BAD_REQUEST, "no farm greylists".to_owned()),
        Ok((None, _)) => return refused(report, StatusCode::BAD_REQUEST, "give client=IP or key=KEY".to_owned()),
        Err(e) => return refused(report, StatusCode::BAD_REQUEST, e),
    };
    let lifetime = u64::from(greylist.lifetime);
    let mut report = report;
    match store.whitelist(&key, lifetime).await {
        Ok(()) => {
            tracing::info!(client = key.as_str(), seconds = lifetime, "client whitelisted by an operator");
            report.client_key = Some(key);
            report.whitelisted_for = Some(lifetime);
            (StatusCode::OK, report)
        }
        Err(e) => refused(report, StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}
