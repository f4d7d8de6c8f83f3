//! The embedded one-machine back end: deliver into a maildir, durably, before answering 250.
//!
//! The message is copied from the spool into `tmp/`, fsynced, renamed into `new/` and the
//! directory fsynced (the maildir protocol), all on a blocking thread. Only then does the
//! session answer 250, so the quickstart keeps mtac's promise without any back end.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// Create `dir/{tmp,new,cur}` if missing.
pub fn prepare(dir: &Path) -> io::Result<()> {
    for sub in ["tmp", "new", "cur"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    Ok(())
}

/// Deliver the message (`headers`, then `content`: the spool file, or the milters' edits over
/// it) with `return_path` prepended; returns the file name. Blocking: call it from
/// `spawn_blocking`.
pub fn deliver(
    dir: &Path,
    mut content: crate::relayed::Relayed,
    headers: &[u8],
    return_path: &str,
    hostname: &str,
) -> io::Result<PathBuf> {
    prepare(dir)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let name = format!("{}.M{}P{}Q{n}.{hostname}", now.as_secs(), now.subsec_micros(), std::process::id());
    let tmp = dir.join("tmp").join(&name);
    let result = (|| {
        let mut out = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        writeln!(out, "Return-Path: <{return_path}>\r")?;
        out.write_all(headers)?;
        // Bytes in memory are lent; only a spool file's are read, into `scratch`.
        let mut scratch = Vec::new();
        loop {
            let chunk = content.next_chunk(64 * 1024, &mut scratch)?;
            if chunk.is_empty() {
                break;
            }
            out.write_all(chunk)?;
        }
        out.sync_all()?;
        let new = dir.join("new").join(&name);
        fs::rename(&tmp, &new)?;
        File::open(dir.join("new"))?.sync_all()?;
        Ok(new)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::relayed::Relayed;
    use crate::spool::{Spool, IN_MEMORY_UP_TO};

    /// The delivered file is the return path, our header lines, then the message byte for byte,
    /// whether the message was held in memory or grew into its spool file.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_delivered_file_is_the_return_path_the_headers_and_the_message() {
        let shm = tempfile::tempdir_in("/dev/shm").unwrap();
        let spool = Spool::new(&shm.path().join("spool")).unwrap();
        let maildir = tempfile::tempdir().unwrap();
        let small = b"Subject: hi\r\n\r\nbody\r\n".to_vec();
        let large: Vec<u8> = (0..IN_MEMORY_UP_TO + 70_000).map(|i| if i % 80 == 79 { b'\n' } else { b'x' }).collect();
        for (index, message) in [small, large].into_iter().enumerate() {
            let mut file = spool.create(&format!("M{index}")).await.unwrap();
            file.write(&message).await.unwrap();
            file.flush().await.unwrap();
            assert_eq!(file.is_file(), index == 1);
            let content = Relayed::whole(&file).unwrap();
            let path = deliver(maildir.path(), content, b"X-Spam: no\r\n", "a@b.example", "mx.test").unwrap();
            assert!(path.starts_with(maildir.path().join("new")));
            let mut expected = b"Return-Path: <a@b.example>\r\nX-Spam: no\r\n".to_vec();
            expected.extend_from_slice(&message);
            assert_eq!(fs::read(&path).unwrap(), expected, "message {index}");
        }
    }
}
