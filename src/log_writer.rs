//! The node's log lines leave through one writer thread, not from the session threads.
//!
//! A session thread formats its event and appends it to a queue (a memcpy under a short lock); the
//! thread `mtac-log` writes everything queued in one `write(2)`. Under load that is one system
//! call for many lines instead of one per line on the session's thread (three per relayed
//! message), and a stalled reader of stderr (a journald that cannot keep up, a full pipe) stalls
//! the log thread only, never the sessions. The queue is bounded ([`MAX_QUEUED`]): beyond it a
//! line is dropped and counted, and the thread writes how many before the next lines, so the
//! gap is in the log itself. Losing a line is better than delaying every session on the node
//! (the decision journal, runtime/src/journal.rs, makes the same choice for its records).

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

/// Bytes of log lines that may wait for the writer: seconds of the busiest node's lines.
const MAX_QUEUED: usize = 8 * 1024 * 1024;

/// How long the writer lets lines gather once the first has come: one wake-up and one write
/// per this span at most, however busy the node (a wake-up per line cost the session threads
/// more than the writes did). Lines are that much later in the log; an exit writes them out,
/// but a process killed outright (SIGKILL, the OOM killer, an abort) loses what was queued.
const GATHER: std::time::Duration = std::time::Duration::from_millis(5);

/// A batch's buffer kept between writes is given back above this size.
const KEEP_CAPACITY: usize = 256 * 1024;

/// Log lines on their way to one output (stderr), written by a thread of their own.
pub struct LogWriter {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct Shared {
    queue: Mutex<Queue>,
    /// Signalled when the queue gets its first line while the writer sleeps, and at close.
    wake: Condvar,
}

#[derive(Default)]
struct Queue {
    bytes: Vec<u8>,
    /// Lines dropped since the last write (the queue was full).
    dropped_unsaid: u64,
    /// Lines dropped in all.
    dropped: u64,
    /// The writer waits for lines: the next line must wake it.
    sleeping: bool,
    closed: bool,
}

impl LogWriter {
    /// Start the writer thread over `output`.
    pub fn start(output: Box<dyn Write + Send>) -> io::Result<LogWriter> {
        let shared = Arc::new(Shared { queue: Mutex::new(Queue::default()), wake: Condvar::new() });
        let for_thread = Arc::clone(&shared);
        let thread =
            std::thread::Builder::new().name("mtac-log".to_owned()).spawn(move || write_out(&for_thread, output))?;
        Ok(LogWriter { shared, thread: Mutex::new(Some(thread)) })
    }

    /// Queue one formatted event (or part of one: the formatter writes a line in one call).
    fn queue(&self, line: &[u8]) {
        let mut queue = self.shared.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if queue.closed {
            drop(queue);
            // After `finish` (the node is exiting): straight out, as before the thread.
            let _ = io::stderr().write_all(line);
            return;
        }
        if queue.bytes.len().saturating_add(line.len()) > MAX_QUEUED {
            queue.dropped_unsaid += 1;
            queue.dropped += 1;
            return;
        }
        queue.bytes.extend_from_slice(line);
        if queue.sleeping {
            queue.sleeping = false;
            drop(queue);
            self.shared.wake.notify_one();
        }
    }

    /// Lines dropped so far because the output could not keep up.
    pub fn dropped(&self) -> u64 {
        self.shared.queue.lock().unwrap_or_else(PoisonError::into_inner).dropped
    }

    /// Write what is queued and stop the thread; later lines go straight to stderr.
    pub fn finish(&self) {
        self.shared.queue.lock().unwrap_or_else(PoisonError::into_inner).closed = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.lock().unwrap_or_else(PoisonError::into_inner).take() {
            let _ = thread.join();
        }
    }
}

/// The writer thread: take everything queued, write it in one call, repeat; sleep when empty.
fn write_out(shared: &Shared, mut output: Box<dyn Write + Send>) {
    let mut batch = Vec::new();
    loop {
        {
            let mut queue = shared.queue.lock().unwrap_or_else(PoisonError::into_inner);
            while queue.bytes.is_empty() && queue.dropped_unsaid == 0 && !queue.closed {
                queue.sleeping = true;
                queue = shared.wake.wait(queue).unwrap_or_else(PoisonError::into_inner);
            }
            queue.sleeping = false;
            if !queue.closed {
                drop(queue);
                std::thread::sleep(GATHER);
            }
        }
        let (dropped, closed) = {
            let mut queue = shared.queue.lock().unwrap_or_else(PoisonError::into_inner);
            std::mem::swap(&mut batch, &mut queue.bytes);
            (std::mem::take(&mut queue.dropped_unsaid), queue.closed)
        };
        // A failed write (stderr closed) drops the batch: nothing else could be done with it.
        let _ = output.write_all(&batch);
        // The lines of this batch were queued before the ones dropped: the gap is after them.
        if dropped > 0 {
            let _ = writeln!(output, "mtac: {dropped} log line(s) dropped: the log output did not keep up");
        }
        let _ = output.flush();
        batch.clear();
        if batch.capacity() > KEEP_CAPACITY {
            batch = Vec::new();
        }
        if closed && shared.queue.lock().unwrap_or_else(PoisonError::into_inner).bytes.is_empty() {
            return;
        }
    }
}

/// The `MakeWriter` of the stderr layer: each event's bytes go to the queue.
#[derive(Clone)]
pub struct MakeQueued(pub Arc<LogWriter>);

/// One event's writer (the formatter hands it the whole line in one `write`).
pub struct QueuedLine<'a>(&'a LogWriter);

impl Write for QueuedLine<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.queue(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for MakeQueued {
    type Writer = QueuedLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        QueuedLine(&self.0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// An output that records what it was given, and can be held shut to stand for a stalled
    /// reader.
    #[derive(Clone, Default)]
    struct Recorded {
        written: Arc<Mutex<Vec<u8>>>,
        writes: Arc<Mutex<usize>>,
        gate: Arc<Mutex<()>>,
    }

    impl Write for Recorded {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let _open = self.gate.lock().unwrap();
            self.written.lock().unwrap().extend_from_slice(bytes);
            *self.writes.lock().unwrap() += 1;
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_is_written_in_order_by_finish() {
        let out = Recorded::default();
        let log = LogWriter::start(Box::new(out.clone())).unwrap();
        let mut expected = Vec::new();
        for n in 0..10_000 {
            let line = format!("line {n}\n");
            QueuedLine(&log).write_all(line.as_bytes()).unwrap();
            expected.extend_from_slice(line.as_bytes());
        }
        log.finish();
        assert_eq!(*out.written.lock().unwrap(), expected);
        assert_eq!(log.dropped(), 0);
    }

    #[test]
    fn a_stalled_output_drops_and_counts_lines_instead_of_blocking_the_caller() {
        let out = Recorded::default();
        let shut = out.gate.lock().unwrap();
        let log = LogWriter::start(Box::new(out.clone())).unwrap();
        // The first line gets the thread stuck in its write; the queue then fills up.
        let line = vec![b'x'; 1023].into_iter().chain([b'\n']).collect::<Vec<u8>>();
        // Three queues' worth: whatever the thread took before it stuck, a queue's worth is over.
        let fit = MAX_QUEUED / line.len();
        let lines = 3 * fit;
        for _ in 0..lines {
            QueuedLine(&log).write_all(&line).unwrap();
        }
        assert!(log.dropped() >= fit as u64, "dropped {}", log.dropped());
        drop(shut);
        log.finish();
        let written = out.written.lock().unwrap();
        let text = String::from_utf8_lossy(&written);
        assert!(text.contains("log line(s) dropped: the log output did not keep up"), "the gap is not in the log");
        let kept = text.lines().filter(|l| l.starts_with('x')).count() as u64;
        assert_eq!(kept + log.dropped(), lines as u64);
    }

    #[test]
    fn lines_queued_while_writing_go_out_together() {
        let out = Recorded::default();
        let shut = out.gate.lock().unwrap();
        let log = LogWriter::start(Box::new(out.clone())).unwrap();
        for n in 0..1000 {
            QueuedLine(&log).write_all(format!("line {n}\n").as_bytes()).unwrap();
        }
        drop(shut);
        log.finish();
        // The thread held the first line (or none) when the output stalled; the rest waited
        // and left in one write.
        assert!(*out.writes.lock().unwrap() <= 3, "{} writes for 1000 lines", out.writes.lock().unwrap());
    }
}
