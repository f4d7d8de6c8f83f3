//! Hot reload: the one reload path, [`Node::reload`], and what calls it — the watch on the
//! ruleset's directory, SIGHUP, and a look every 30 s at the certificates and bind passwords a
//! snapshot read.
//!
//! **Invariant:** a reload loads and verifies the new ruleset, checks that this node can serve
//! everything it asks for, and swaps a whole new snapshot in with one store — or logs why not,
//! counts it, shows it in `/status`, and keeps serving the old one.

use super::tasks::{needs_dns, needs_state, prepare_maildirs};
use super::{unsupported, Node};
use crate::metrics::ReloadResult;
use crate::shared::Snapshot;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

impl Node {
    /// The one reload path (file watcher and SIGHUP): `Ok(true)` swapped, `Ok(false)` nothing
    /// changed, `Err` refused (logged, counted, shown in /status; the old snapshot keeps serving).
    pub fn reload(&self) -> Result<bool, String> {
        match self.swap() {
            Ok(None) => Ok(false),
            Ok(Some((old_hash, new_hash))) => {
                self.shared.metrics.reloads.get_or_create(&ReloadResult { result: "ok" }).inc();
                self.shared.set_reload_error(None);
                if old_hash == new_hash {
                    tracing::info!("TLS certificate or key changed on disk: loaded for new sessions");
                } else {
                    tracing::info!(old = %old_hash, new = %new_hash, "ruleset reloaded");
                }
                Ok(true)
            }
            Err(e) => {
                self.shared.metrics.reloads.get_or_create(&ReloadResult { result: "failed" }).inc();
                tracing::error!(error = %e, "ruleset reload refused; the running ruleset keeps serving");
                self.shared.set_reload_error(Some(e.clone()));
                Err(e)
            }
        }
    }

    /// Load the shadow ruleset again, if the node runs one: `Ok(true)` swapped in, `Ok(false)`
    /// unchanged (or none), `Err` refused — logged and counted, and the candidate it had keeps
    /// being compared (a node without one compares nothing). The live ruleset is never touched.
    pub fn reload_candidate(&self) -> Result<bool, String> {
        let Some(loader) = &self.candidate else { return Ok(false) };
        let counted = |result: &'static str| {
            self.shared.metrics.shadow_ruleset_reloads.get_or_create(&ReloadResult { result }).inc();
        };
        match loader() {
            Ok(candidate) => {
                let hash = candidate.hash_hex();
                if self.shared.candidate().is_some_and(|c| c.hash_hex() == hash) {
                    return Ok(false);
                }
                let live = self.shared.snapshot();
                let unmatched: Vec<&str> = live
                    .ruleset
                    .policy()
                    .farms
                    .iter()
                    .map(|f| f.name.as_str())
                    .filter(|name| candidate.farm(name).is_none())
                    .collect();
                if !unmatched.is_empty() {
                    tracing::warn!(farms = ?unmatched, "the shadow ruleset lacks these farms: their decisions are not compared");
                }
                self.shared.replace_candidate(Some(candidate));
                counted("ok");
                tracing::info!(hash = %hash, "shadow ruleset loaded: every decision is compared with it");
                Ok(true)
            }
            Err(e) => {
                counted("failed");
                tracing::error!(error = %e, "shadow ruleset refused; decisions are compared with the one loaded before, if any");
                Err(e)
            }
        }
    }

    /// Load, check and swap in a new snapshot when the ruleset or a certificate changed.
    /// Returns the old and new ruleset hashes when it swapped.
    fn swap(&self) -> Result<Option<(String, String)>, String> {
        let ruleset = (self.loader)()?;
        let missing = unsupported(&ruleset);
        if needs_dns(&ruleset) && !self.shared.has_dns() {
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
        self.shared.replace_snapshot(snapshot);
        Ok(Some((old_hash, new_hash)))
    }
}

/// Start watching the directories of `paths` (the ruleset, and the shadow ruleset if any);
/// events arrive on the returned channel. Set up before the node accepts, so that a file pushed
/// right after start is never missed. The watch is on the directory, not the file's inode, so
/// it survives the atomic rename a push ends with.
pub(super) fn watch(paths: &[&Path]) -> (Option<notify::RecommendedWatcher>, mpsc::Receiver<()>) {
    use notify::Watcher;
    let (tx, rx) = mpsc::channel::<()>(16);
    let dir_of =
        |path: &Path| path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
    let names: Vec<std::ffi::OsString> = paths.iter().filter_map(|p| p.file_name()).map(ToOwned::to_owned).collect();
    let mut dirs: Vec<std::path::PathBuf> = paths.iter().map(|p| dir_of(p)).collect();
    dirs.dedup();
    let watcher = (!names.is_empty()).then_some(()).and_then(|()| {
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
                let ours = |p: &std::path::PathBuf| p.file_name().is_some_and(|n| names.iter().any(|m| m == n));
                if changes && event.paths.iter().any(ours) {
                    let _ = tx.try_send(());
                }
            }
        })
        .map_err(|e| tracing::error!(error = %e, "cannot watch the ruleset; SIGHUP still reloads"))
        .ok()?;
        for dir in &dirs {
            watcher
                .watch(dir, notify::RecursiveMode::NonRecursive)
                .map_err(|e| tracing::error!(error = %e, dir = %dir.display(), "cannot watch the ruleset directory"))
                .ok()?;
        }
        Some(watcher)
    });
    (watcher, rx)
}

/// Reload on SIGHUP, when the watched file changes (debounced) and when a file the snapshot
/// read besides the ruleset changed; until the task is aborted. Holds the watcher: dropping it
/// ends the watch.
pub(super) async fn reload_loop(
    node: Arc<Node>,
    _watcher: Option<notify::RecommendedWatcher>,
    mut rx: mpsc::Receiver<()>,
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
        let _ = tokio::task::spawn_blocking(move || {
            let _ = node.reload();
            let _ = node.reload_candidate();
        })
        .await;
    }
}
