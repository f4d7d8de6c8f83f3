//! The RAM-disk spool: one file per message in flight, written as DATA arrives, read back to
//! relay it, and removed on every path.
//!
//! A [`SpoolFile`] removes its file when dropped, so a refused message, a lost client, a back end
//! error, a panicking session task or an aborted one at shutdown all leave nothing behind. A node
//! killed outright (SIGKILL, power) leaves files; [`Spool::clean_stale`] removes those of dead
//! processes at the next start. Names carry the process id so two nodes may share a directory.
//!
//! The spool is meant to be a tmpfs: writes do not wait on a device. They still go through
//! tokio's file API (a blocking thread), so a spool mistakenly put on a slow disk stalls the
//! session, never a runtime worker.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// The spool directory and its accounting.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    counter: AtomicU64,
    /// Bytes currently spooled (all files of this process).
    in_use: Arc<AtomicU64>,
}

const PREFIX: &str = "mtac-";
const SUFFIX: &str = ".msg";

impl Spool {
    /// Use (and create) `dir`.
    pub fn new(dir: &Path) -> io::Result<Spool> {
        std::fs::create_dir_all(dir)?;
        Ok(Spool { dir: dir.to_path_buf(), counter: AtomicU64::new(0), in_use: Arc::new(AtomicU64::new(0)) })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn bytes_in_use(&self) -> u64 {
        self.in_use.load(Ordering::Relaxed)
    }

    /// Remove spool files left by processes that no longer run. Returns how many.
    pub fn clean_stale(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return 0 };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(pid) = name
                .strip_prefix(PREFIX)
                .filter(|_| name.ends_with(SUFFIX))
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            let alive = pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists();
            if !alive && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }

    /// A new, empty spool file.
    pub async fn create(&self, session: &str) -> io::Result<SpoolFile> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("{PREFIX}{}-{session}-{n}{SUFFIX}", std::process::id()));
        let file = tokio::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path).await?;
        Ok(SpoolFile { path, file, len: 0, in_use: self.in_use.clone() })
    }
}

/// One message's spool file; removed when dropped.
#[derive(Debug)]
pub struct SpoolFile {
    path: PathBuf,
    file: tokio::fs::File,
    len: u64,
    in_use: Arc<AtomicU64>,
}

impl SpoolFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append bytes. A full spool (ENOSPC) surfaces here as an error: the session answers 452.
    pub async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.file.write_all(bytes).await?;
        let n = bytes.len() as u64;
        self.len += n;
        self.in_use.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    /// Make everything written visible to readers (and to [`SpoolFile::path`]).
    pub async fn flush(&mut self) -> io::Result<()> {
        self.file.flush().await
    }

    /// Go back to the start to read the message.
    pub async fn rewind(&mut self) -> io::Result<()> {
        self.file.flush().await?;
        self.file.seek(io::SeekFrom::Start(0)).await?;
        Ok(())
    }

    pub async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf).await
    }
}

impl Drop for SpoolFile {
    fn drop(&mut self) {
        self.in_use.fetch_sub(self.len, Ordering::Relaxed);
        // Unlinking on a tmpfs is a short metadata operation; doing it here is what guarantees
        // that no path (error, panic, abort) leaves the message behind.
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), error = %e, "spool: cannot remove file");
            }
        }
    }
}

/// Whether an I/O error means the spool is full.
pub fn is_full(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}
