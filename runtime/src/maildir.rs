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
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let n = content.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            out.write_all(chunk.get(..n).unwrap_or_default())?;
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
