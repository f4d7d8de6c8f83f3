//! The session threads: one single-threaded runtime per thread, each accepting on a listening
//! socket of its own for every address (`SO_REUSEPORT`, so the kernel spreads the connections)
//! and running the sessions it accepted from start to end.
//!
//! Why not one work-stealing pool: a session's wake-ups (client, back end, timers) then land on
//! whichever worker is free, and the workers wake each other to share the work — measured on the
//! 2-CPU bench machine, 14% of the node's CPU went to parking and unparking workers, and one
//! worker relayed a message for 112–118 µs of CPU where two spent 134–150 (BENCHMARKS.md, issue
//! 21). A thread here never hands a session to another, so it sleeps only when it has nothing
//! to do, as a single worker does, and a node still uses every CPU it is given.
//!
//! What runs beside the sessions (the admin listener, reloads, DNS zone probes, the state
//! store's task) stays on the node's own runtime; sessions reach it through channels and the
//! [`crate::shared::Shared`] tables, which are thread-safe.
//!
//! **Invariant:** a back-end connection is used by the thread that opened it (the relay pools
//! idle connections per thread, [`crate::shared::session_thread`]): its readiness is reported
//! by the runtime that registered it, so a connection taken by another thread would cost a
//! cross-thread wake-up on every read.

use std::time::Duration;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// How long a stopping thread waits for blocking work of its sessions (a DKIM verification)
/// before it lets go of it.
const STOP_WAIT: Duration = Duration::from_secs(1);

/// A timer that is always due within a second, so that a session's timer (a command, relay
/// or DNS timeout: seconds to minutes away) is never the runtime's earliest. tokio's timer
/// wheel wakes its driver through the I/O driver's eventfd whenever a new timer is earlier than
/// the wake-up it planned — even from the driver's own thread, where the wake-up is needless:
/// with this floor, `write` calls per relayed message at 10 sessions went from 1.27 to 0.22
/// (BENCHMARKS.md, issue 21 round eight).
async fn timer_floor() {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

/// The running session threads.
pub(super) struct SessionThreads {
    threads: Vec<SessionThread>,
}

struct SessionThread {
    handle: Handle,
    stop: oneshot::Sender<()>,
    /// Resolves when the thread has let go of its runtime (an error: the thread panicked).
    stopped: oneshot::Receiver<()>,
}

impl SessionThreads {
    /// Start `count` threads (at least one) named `name-0`, `name-1`…, each running a runtime of
    /// its own until told to stop.
    pub(super) async fn start(count: usize, name: &str) -> std::io::Result<SessionThreads> {
        let mut threads = Vec::with_capacity(count.max(1));
        for index in 0..count.max(1) {
            let (stop, told_to_stop) = oneshot::channel::<()>();
            let (done, stopped) = oneshot::channel::<()>();
            let (started, handle) = oneshot::channel::<std::io::Result<Handle>>();
            let blocking_name = format!("{name}-blocking");
            // The runtime is made and dropped inside its thread: dropped here, in the node's
            // async context (a failed spawn would), it would panic.
            std::thread::Builder::new().name(format!("{name}-{index}")).spawn(move || {
                let runtime =
                    match tokio::runtime::Builder::new_current_thread().enable_all().thread_name(blocking_name).build()
                    {
                        Ok(runtime) => runtime,
                        Err(e) => {
                            let _ = started.send(Err(e));
                            return;
                        }
                    };
                crate::shared::set_session_thread(index);
                let _ = started.send(Ok(runtime.handle().clone()));
                // The runtime drives its tasks while this waits; a dropped sender stops it too.
                runtime.block_on(async {
                    tokio::select! {
                        _ = told_to_stop => {}
                        () = timer_floor() => {}
                    }
                });
                // The tasks still on it (sessions past the drain's last call) end with it.
                runtime.shutdown_timeout(STOP_WAIT);
                let _ = done.send(());
            })?;
            let handle = handle.await.map_err(std::io::Error::other)??;
            threads.push(SessionThread { handle, stop, stopped });
        }
        Ok(SessionThreads { threads })
    }

    pub(super) fn count(&self) -> usize {
        self.threads.len()
    }

    /// Each thread's runtime, to spawn its accept loops on.
    pub(super) fn handles(&self) -> impl Iterator<Item = &Handle> {
        self.threads.iter().map(|t| &t.handle)
    }

    /// Stop every thread and wait until each has let go of its runtime, with whatever still ran
    /// on it — for a few seconds at most: a thread held by a blocking call (a spool on a hung
    /// disk) is left behind (the threads are never joined), said in the log, rather than
    /// holding the node's exit.
    pub(super) async fn stop(self) {
        let mut stopping = Vec::with_capacity(self.threads.len());
        for SessionThread { stop, stopped, .. } in self.threads {
            let _ = stop.send(());
            stopping.push(stopped);
        }
        let all_stopped = async {
            for stopped in stopping {
                if stopped.await.is_err() {
                    tracing::error!("a session thread panicked while stopping");
                }
            }
        };
        if tokio::time::timeout(STOP_WAIT * 3, all_stopped).await.is_err() {
            tracing::error!("a session thread did not stop in time (blocked in a system call?): leaving it behind");
        }
    }
}
