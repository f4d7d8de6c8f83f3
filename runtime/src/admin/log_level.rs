//! `mtac log-level`: the running node's log filter (`RUST_LOG`'s syntax: `debug`,
//! `info,mtac_runtime::conn=debug`…), read and changed over the admin socket without a restart.
//! The tracing subscriber is the process's — the binary installs it once, before the node
//! starts — so its reload handle is process-wide too: the binary registers it here, and a node
//! in a process without one (a test) answers 409.

use super::respond;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Response, StatusCode};
use std::sync::{Mutex, OnceLock};

/// Installs a new filter, or says why the directive is not one.
pub type SetFilter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// The longest directive taken.
const MAX_DIRECTIVE: usize = 512;

struct Control {
    set: SetFilter,
    current: Mutex<String>,
}

static CONTROL: OnceLock<Control> = OnceLock::new();

/// Register the process's log filter, now `current`, and how to change it. Once per process
/// (a second call is ignored: there is one subscriber).
pub fn register_log_filter(current: String, set: SetFilter) {
    let _ = CONTROL.set(Control { set, current: Mutex::new(current) });
}

/// `GET /log-level` (the filter in force) and `POST /log-level?level=DIRECTIVE`.
pub(super) fn answer(method: &Method, level: Option<String>) -> Response<Full<Bytes>> {
    let Some(control) = CONTROL.get() else {
        return respond(StatusCode::CONFLICT, "text/plain", "this process has no log filter to change\n".into());
    };
    let current = || control.current.lock().map(|c| c.clone()).unwrap_or_default();
    match (method, level) {
        (&Method::GET, _) => respond(StatusCode::OK, "text/plain", format!("{}\n", current())),
        (&Method::POST, Some(level)) => {
            let level = level.trim();
            if level.is_empty() || level.len() > MAX_DIRECTIVE {
                return respond(StatusCode::BAD_REQUEST, "text/plain", "give level=DIRECTIVE (e.g. debug)\n".into());
            }
            match (control.set)(level) {
                Ok(()) => {
                    let before = current();
                    if let Ok(mut c) = control.current.lock() {
                        level.clone_into(&mut c);
                    }
                    tracing::warn!(before = before.as_str(), now = level, "log level changed by an operator");
                    respond(StatusCode::OK, "text/plain", format!("{level}\n"))
                }
                Err(e) => respond(StatusCode::BAD_REQUEST, "text/plain", format!("`{level}`: {e}\n")),
            }
        }
        _ => respond(StatusCode::BAD_REQUEST, "text/plain", "POST /log-level?level=DIRECTIVE or GET\n".into()),
    }
}
