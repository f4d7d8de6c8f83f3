//! The session threads: one single-threaded runtime per thread, each running the sessions it
//! was given from start to end, and [`Placement`], which gives each new connection to one.
//!
//! Why not one work-stealing pool: a session's wake-ups (client, back end, timers) then land on
//! whichever worker is free, and the workers wake each other to share the work — measured on the
//! 2-CPU bench machine, 14% of the node's CPU went to parking and unparking workers, and one
//! worker relayed a message for 112–118 µs of CPU where two spent 134–150 (BENCHMARKS.md, issue
//! 21). A thread here never hands a session to another.
//!
//! Why fill the first thread before the next rather than spread every connection: a thread
//! that is not busy sleeps between its sessions' events, and each sleep costs a wake-up (tens of
//! µs on a VM); two half-busy threads sleep three times as often per message as one busy thread
//! (BENCHMARKS.md, "What each change of issue 21 bought"). Thread 0 accepts every connection
//! and keeps it while the thread used less than [`BUSY_SHARE`] of a CPU over the last sample;
//! past that the connection goes to the first thread that is not busy, and when all are, to the
//! least busy. A light load runs on one thread, a heavy one on every CPU the node is given.
//!
//! What runs beside the sessions (the admin listener, reloads, DNS zone probes, the state
//! store's task) stays on the node's own runtime; sessions reach it through channels and the
//! [`crate::shared::Shared`] tables, which are thread-safe.
//!
//! **Invariant:** a back-end connection is used by the thread that opened it (the relay pools
//! idle connections per thread, [`crate::shared::session_thread`]): its readiness is reported
//! by the runtime that registered it, so a connection taken by another thread would cost a
//! cross-thread wake-up on every read.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The share of a CPU past which a session thread is busy: new connections go to the next
/// thread. Below a whole CPU, so that a thread hands on before its sessions queue for it; well
/// above what one thread spends while the machine's other CPUs are taken by the rest of the
/// mail path (0.6 at 10 sessions on the bench machine, where the generator and the sink share
/// its two CPUs with the node): there a second thread costs wake-ups and buys nothing. With
/// 0.75, 1–2% of the connections at 10 sessions still went to thread 1 on bursts.
pub const BUSY_SHARE: f64 = 0.9;

/// How often the threads' CPU time is read (at an accept, never in between): long enough for a
/// share of a CPU to mean something beside the scheduler's time slices (with 10 ms, a thread
/// that held a CPU for one slice read as busy: 1% of the connections at 10 sessions went to
/// thread 1 while thread 0 averaged half a CPU), short enough to follow a lasting load within
/// a few tenths of a second.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// How long a stopping thread waits for blocking work of its sessions (a DKIM verification)
/// before it lets go of it.
const STOP_WAIT: Duration = Duration::from_secs(1);

/// A timer that is always due within a second, so that a session's timer (a command, relay
/// or DNS timeout: seconds to minutes away) is never the runtime's earliest. tokio's timer
/// wheel wakes its driver through the I/O driver's eventfd whenever a new timer is earlier than
/// the wake-up it planned — even from the driver's own thread, where the wake-up is needless:
/// with this floor, `write` calls per relayed message at 10 sessions went from 1.27 to 0.22
/// (BENCHMARKS.md, "What each change of issue 21 bought").
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
    /// Thread 0's runtime, which accepts every connection.
    accepting: Handle,
    placement: std::sync::Arc<Placement>,
}

struct SessionThread {
    stop: oneshot::Sender<()>,
    /// Resolves when the thread has let go of its runtime (an error: the thread panicked).
    stopped: oneshot::Receiver<()>,
}

impl SessionThreads {
    /// Start `count` threads (at least one) named `name-0`, `name-1`…, each running a runtime of
    /// its own until told to stop; a thread past `busy_share` of a CPU gets no new connection
    /// while another is not; each counts the connections given to it in `metrics`.
    pub(super) async fn start(
        count: usize,
        name: &str,
        busy_share: f64,
        metrics: &crate::metrics::Metrics,
    ) -> std::io::Result<SessionThreads> {
        let mut threads = Vec::with_capacity(count.max(1));
        let mut placed = Vec::with_capacity(count.max(1));
        for index in 0..count.max(1) {
            let (stop, told_to_stop) = oneshot::channel::<()>();
            let (done, stopped) = oneshot::channel::<()>();
            let (started, handle) = oneshot::channel::<std::io::Result<(Handle, Option<File>)>>();
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
                // This thread's own file, whoever reads it later: /proc/thread-self resolves to
                // the opening thread's entry.
                let schedstat = File::open("/proc/thread-self/schedstat").ok();
                let _ = started.send(Ok((runtime.handle().clone(), schedstat)));
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
            let (handle, schedstat) = handle.await.map_err(std::io::Error::other)??;
            let label = crate::metrics::ThreadLabel { thread: index.to_string() };
            placed.push(PlacedThread {
                handle,
                schedstat,
                cpu_at_sample: AtomicU64::new(0),
                load: AtomicU32::new(0),
                connections: metrics.thread_connections.get_or_create_owned(&label),
            });
            threads.push(SessionThread { stop, stopped });
        }
        let placement = Placement::new(placed, busy_share);
        if placement.round_robin {
            tracing::warn!("cannot read the session threads' CPU time (/proc/thread-self/schedstat): connections go to each thread in turn");
        }
        let accepting = placement.handle(0).cloned().ok_or_else(|| std::io::Error::other("no session thread"))?;
        Ok(SessionThreads { threads, accepting, placement: std::sync::Arc::new(placement) })
    }

    pub(super) fn count(&self) -> usize {
        self.threads.len()
    }

    /// Thread 0's runtime, which accepts every connection.
    pub(super) fn accepting(&self) -> &Handle {
        &self.accepting
    }

    pub(super) fn placement(&self) -> std::sync::Arc<Placement> {
        self.placement.clone()
    }

    /// Stop every thread and wait until each has let go of its runtime, with whatever still ran
    /// on it — for a few seconds at most: a thread held by a blocking call (a spool on a hung
    /// disk) is left behind (the threads are never joined), said in the log, rather than
    /// holding the node's exit.
    pub(super) async fn stop(self) {
        let mut stopping = Vec::with_capacity(self.threads.len());
        for SessionThread { stop, stopped } in self.threads {
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

/// Which session thread a new connection goes to. Used by the accept loops, all on thread 0:
/// the atomics are for `Sync`, never contended.
pub(super) struct Placement {
    threads: Vec<PlacedThread>,
    started: Instant,
    /// When the loads were last sampled, in ns since `started`.
    sampled_at: AtomicU64,
    /// Thousandths of a CPU past which a thread is busy.
    busy: u32,
    /// A thread's CPU time cannot be read (no schedstat in this kernel): each thread in turn.
    round_robin: bool,
    next: AtomicUsize,
}

struct PlacedThread {
    handle: Handle,
    /// The thread's /proc/.../schedstat, whose first field is the CPU time it has used (ns),
    /// read by thread 0 without disturbing it.
    schedstat: Option<File>,
    cpu_at_sample: AtomicU64,
    /// Thousandths of a CPU the thread used, over the last samples (each weighing half as much
    /// as the next).
    load: AtomicU32,
    /// `mtac_session_thread_connections_total{thread}`.
    connections: prometheus_client::metrics::counter::Counter,
}

impl Placement {
    fn new(threads: Vec<PlacedThread>, busy_share: f64) -> Placement {
        let round_robin = threads.iter().any(|t| t.schedstat.is_none());
        // An `as` cast saturates: a share past any u32 is never busy, a negative one always.
        let busy = (busy_share * 1000.0) as u32;
        let placement = Placement {
            threads,
            started: Instant::now(),
            sampled_at: AtomicU64::new(0),
            busy,
            round_robin,
            next: AtomicUsize::new(0),
        };
        for thread in &placement.threads {
            thread.cpu_at_sample.store(thread.cpu_ns().unwrap_or(0), Ordering::Relaxed);
        }
        placement
    }

    /// The thread a new connection goes to (counted as given to it).
    pub(super) fn place(&self) -> usize {
        let index = if self.threads.len() == 1 {
            0
        } else if self.round_robin {
            self.next.fetch_add(1, Ordering::Relaxed) % self.threads.len()
        } else {
            self.sample();
            least_busy(self.threads.iter().map(|t| t.load.load(Ordering::Relaxed)), self.busy)
        };
        if let Some(thread) = self.threads.get(index) {
            thread.connections.inc();
        }
        index
    }

    /// The runtime of thread `index`, to start a connection's work on.
    pub(super) fn handle(&self, index: usize) -> Option<&Handle> {
        self.threads.get(index).map(|t| &t.handle)
    }

    /// Read every thread's CPU time again if the last sample is [`SAMPLE_EVERY`] old: the
    /// CPU time it used since, over the time since, makes its load.
    fn sample(&self) {
        let now = u64::try_from(self.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let last = self.sampled_at.load(Ordering::Relaxed);
        let span = now.saturating_sub(last);
        if u128::from(span) < SAMPLE_EVERY.as_nanos() {
            return;
        }
        self.sampled_at.store(now, Ordering::Relaxed);
        for thread in &self.threads {
            let Some(cpu) = thread.cpu_ns() else { continue };
            let used = cpu.saturating_sub(thread.cpu_at_sample.swap(cpu, Ordering::Relaxed));
            let lately = u32::try_from(u128::from(used) * 1000 / u128::from(span.max(1))).unwrap_or(u32::MAX);
            // Half the last sample's weight: one burst alone does not make a thread busy, a
            // lasting load shows within two or three samples.
            let before = thread.load.load(Ordering::Relaxed);
            thread.load.store(before / 2 + lately / 2, Ordering::Relaxed);
        }
    }
}

impl PlacedThread {
    /// The CPU time the thread has used, in ns: one `pread` of a /proc file.
    fn cpu_ns(&self) -> Option<u64> {
        let mut text = [0u8; 64];
        let read = self.schedstat.as_ref()?.read_at(&mut text, 0).ok()?;
        let text = text.get(..read)?;
        let first = text.split(|&b| b == b' ').next()?;
        std::str::from_utf8(first).ok()?.trim().parse().ok()
    }
}

/// The first thread whose load is under `busy`; when every one is busy, the least busy.
fn least_busy(loads: impl Iterator<Item = u32>, busy: u32) -> usize {
    let mut least = (0, u32::MAX);
    for (index, load) in loads.enumerate() {
        if load < busy {
            return index;
        }
        if load < least.1 {
            least = (index, load);
        }
    }
    least.0
}

#[cfg(test)]
mod tests {
    use super::least_busy;

    #[test]
    fn a_connection_goes_to_the_first_thread_not_busy_or_else_the_least_busy() {
        const BUSY: u32 = 900;
        let pick = |loads: &[u32]| least_busy(loads.iter().copied(), BUSY);
        // Light load stays on thread 0, even when another thread is idle.
        assert_eq!(pick(&[BUSY - 1, 0, 0]), 0);
        assert_eq!(pick(&[0, 0]), 0);
        // Thread 0 busy: the next one that is not, in order.
        assert_eq!(pick(&[BUSY, 300, 0]), 1);
        assert_eq!(pick(&[BUSY, BUSY + 100, 0]), 2);
        // All busy: the least busy.
        assert_eq!(pick(&[990, 920, 950]), 1);
        assert_eq!(pick(&[BUSY, BUSY]), 0);
        assert_eq!(pick(&[]), 0);
    }
}
