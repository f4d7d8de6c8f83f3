//! Writing a journal to disk: buffered, rotated by size so that all its files together never hold
//! more than the policy's `max-size`. Blocking std I/O: the node runs it on a thread of its own
//! (`runtime/src/journal.rs`), never on its async workers.
//!
//! `files=N` files share the bound: the current one (`PATH`) and `PATH.1` … `PATH.(N-1)`, each at
//! most `max-size / N` bytes, header included. When the next record does not fit, the current
//! file is closed, each older one moves one place down (the oldest is removed) and a new current
//! file starts with its own header, so every file reads alone.

use super::{encode_header, Header};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("a record of {0} bytes is larger than a journal record may be")]
    TooLong(usize),
    #[error("cannot encode a record: {0}")]
    Encode(String),
    #[error("max-size / files = {per_file} bytes per file holds no record (at least {need} bytes)")]
    TooSmall { per_file: u64, need: u64 },
}

/// The most a file is buffered before it is written: a few hundred records.
const BUFFER: usize = 64 * 1024;

/// The least room a file must leave after its header: a few dozen records.
pub const MIN_ROOM: u64 = 8 * 1024;

/// A journal's files on disk.
#[derive(Debug)]
pub struct JournalFile {
    path: PathBuf,
    per_file: u64,
    files: u32,
    header: Vec<u8>,
    out: BufWriter<File>,
    /// Bytes in the current file, header included (written or buffered).
    size: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> WriteError + '_ {
    move |error| WriteError::Io { path: path.display().to_string(), error }
}

impl JournalFile {
    /// Start a journal at `path`: a current file left by an earlier run is rotated away first,
    /// so each run's records follow their own header.
    pub fn open(path: &Path, max_size: u64, files: u32, header: &Header) -> Result<JournalFile, WriteError> {
        let files = files.max(1);
        let header = encode_header(header)?;
        let per_file = max_size / u64::from(files);
        let need = header.len() as u64 + MIN_ROOM;
        if per_file < need {
            return Err(WriteError::TooSmall { per_file, need });
        }
        if std::fs::metadata(path).is_ok_and(|m| m.len() > 0) {
            rotate(path, files)?;
        }
        let out = create(path, &header)?;
        Ok(JournalFile { path: path.to_owned(), per_file, files, size: header.len() as u64, header, out })
    }

    /// Append one framed record (from [`super::encode_record`]), rotating first when it does not
    /// fit in the current file.
    pub fn write(&mut self, frame: &[u8]) -> Result<(), WriteError> {
        let len = frame.len() as u64;
        if self.header.len() as u64 + len > self.per_file {
            return Err(WriteError::TooLong(frame.len()));
        }
        if self.size + len > self.per_file {
            self.out.flush().map_err(io(&self.path))?;
            rotate(&self.path, self.files)?;
            self.out = create(&self.path, &self.header)?;
            self.size = self.header.len() as u64;
        }
        self.out.write_all(frame).map_err(io(&self.path))?;
        self.size += len;
        Ok(())
    }

    /// Hand the buffered records to the kernel (not fsync: a journal is a sample of traffic, and
    /// a crash losing its last second is acceptable).
    pub fn flush(&mut self) -> Result<(), WriteError> {
        self.out.flush().map_err(io(&self.path))
    }

    /// Every file of the journal at `path` (current first, then oldest last), those that exist.
    pub fn files(path: &Path, files: u32) -> Vec<PathBuf> {
        (0..files.max(1)).map(|i| numbered(path, i)).filter(|p| p.exists()).collect()
    }
}

fn numbered(path: &Path, i: u32) -> PathBuf {
    if i == 0 {
        return path.to_owned();
    }
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{i}"));
    PathBuf::from(name)
}

fn create(path: &Path, header: &[u8]) -> Result<BufWriter<File>, WriteError> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(path).map_err(io(path))?;
    let mut out = BufWriter::with_capacity(BUFFER, file);
    out.write_all(header).map_err(io(path))?;
    Ok(out)
}

/// `PATH` → `PATH.1` → … → `PATH.(files-1)`, the last one removed.
fn rotate(path: &Path, files: u32) -> Result<(), WriteError> {
    let oldest = numbered(path, files - 1);
    match std::fs::remove_file(&oldest) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&oldest)(e)),
        _ => {}
    }
    for i in (0..files - 1).rev() {
        let from = numbered(path, i);
        match std::fs::rename(&from, numbered(path, i + 1)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(&from)(e)),
            _ => {}
        }
    }
    Ok(())
}
