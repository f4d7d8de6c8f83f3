//! The node's decision journal (`journal` in the policy): sessions hand their records to one
//! writer thread per node through a bounded queue, and the thread applies the privacy settings,
//! encodes, buffers, writes and rotates (`mtac_ruleset::journal::JournalFile`).
//!
//! **Invariant: a session never waits on the journal.** [`Journal::record`] is one `try_send`:
//! a full queue (a disk slower than the traffic) drops the record and counts it
//! (`mtac_journal_dropped_total`), as does a file that cannot be written. The thread is a plain
//! OS thread, so the blocking file I/O never holds a session thread. It flushes whenever the
//! queue runs empty and ends when the last [`Journal`] handle is dropped (a reload that changes
//! the setting, or the node's end), flushing first.

use crate::metrics::Metrics;
use mtac_ruleset::journal::{encode_record, Header, JournalFile, Privacy, Record};
use mtac_ruleset::model::JournalSettings;
use prometheus_client::metrics::counter::Counter;
use std::path::Path;
use tokio::sync::mpsc;

/// Records waiting for the writer: some seconds of a busy node's decisions.
const QUEUE: usize = 16 * 1024;

/// How long the writer lets records gather after the first one wakes it; the queue holds
/// 800,000 decisions a second for that long before one is dropped.
const BATCH_WAIT: std::time::Duration = std::time::Duration::from_millis(20);

/// A running journal: the settings it was started with and the writer's queue.
#[derive(Debug)]
pub struct Journal {
    settings: JournalSettings,
    queue: mpsc::Sender<Record>,
    dropped: Counter,
}

/// The counters the writer thread moves (clones of the node's registry's).
#[derive(Clone)]
struct Counts {
    records: Counter,
    bytes: Counter,
    dropped: Counter,
}

impl Journal {
    /// Start the writer thread for `settings`. The file is opened on the thread; a file that
    /// cannot be opened is logged there and every record counted as dropped.
    pub fn start(
        settings: &JournalSettings,
        hostname: &str,
        started: u64,
        metrics: &Metrics,
    ) -> std::io::Result<Journal> {
        let (queue, receiver) = mpsc::channel(QUEUE);
        let counts = Counts {
            records: metrics.journal_records.clone(),
            bytes: metrics.journal_bytes.clone(),
            dropped: metrics.journal_dropped.clone(),
        };
        let header = Header {
            hostname: hostname.to_owned(),
            started,
            addresses: settings.addresses.as_str().to_owned(),
            client_ip: settings.client_ip.as_str().to_owned(),
        };
        let owned = settings.clone();
        std::thread::Builder::new()
            .name("mtac-journal".to_owned())
            .spawn(move || write_loop(&owned, &header, receiver, &counts))?;
        Ok(Journal { settings: settings.clone(), queue, dropped: metrics.journal_dropped.clone() })
    }

    pub fn settings(&self) -> &JournalSettings {
        &self.settings
    }

    /// Hand `record` to the writer, or drop and count it when the queue is full.
    pub fn record(&self, record: Record) {
        if self.queue.try_send(record).is_err() {
            self.dropped.inc();
        }
    }
}

fn write_loop(settings: &JournalSettings, header: &Header, mut receiver: mpsc::Receiver<Record>, counts: &Counts) {
    let path = Path::new(&settings.path);
    let privacy = match Privacy::generate(settings.addresses, settings.client_ip) {
        Ok(privacy) => privacy,
        Err(_) => {
            tracing::error!("journal: no random key for pseudonyms; nothing is written");
            return drain(&mut receiver, counts);
        }
    };
    let mut file = match JournalFile::open(path, settings.max_size, settings.files, header) {
        Ok(file) => {
            tracing::info!(path = settings.path.as_str(), "journal started");
            file
        }
        Err(e) => {
            tracing::error!(error = %e, "journal: cannot start; its records are dropped and counted");
            return drain(&mut receiver, counts);
        }
    };
    let mut frame = Vec::with_capacity(512);
    loop {
        let mut record = match receiver.try_recv() {
            Ok(record) => record,
            Err(mpsc::error::TryRecvError::Empty) => {
                // Idle: hand what is buffered to the kernel, then wait.
                flush(&mut file, counts);
                match receiver.blocking_recv() {
                    Some(record) => {
                        // Woken by the first record after a quiet spell: let a batch gather, so
                        // a busy node wakes this thread (and writes) about 50 times a second,
                        // not once per decision — a wake-up and a write(2) per decision cost
                        // the sessions more than the records themselves.
                        std::thread::sleep(BATCH_WAIT);
                        record
                    }
                    None => break,
                }
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break,
        };
        privacy.apply(&mut record.facts);
        frame.clear();
        let written = encode_record(&record, &mut frame).and_then(|n| file.write(&frame).map(|()| n));
        match written {
            Ok(n) => {
                counts.records.inc();
                counts.bytes.inc_by(n as u64);
            }
            Err(e) => {
                counts.dropped.inc();
                tracing::warn!(error = %e, "journal: a record could not be written");
            }
        }
    }
    flush(&mut file, counts);
    tracing::info!(path = settings.path.as_str(), "journal closed");
}

fn flush(file: &mut JournalFile, counts: &Counts) {
    if let Err(e) = file.flush() {
        counts.dropped.inc();
        tracing::warn!(error = %e, "journal: cannot write");
    }
}

/// No file: count every record until the journal is replaced or the node ends.
fn drain(receiver: &mut mpsc::Receiver<Record>, counts: &Counts) {
    while receiver.blocking_recv().is_some() {
        counts.dropped.inc();
    }
}
