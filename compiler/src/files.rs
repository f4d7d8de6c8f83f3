//! What the compiler may read: the files a policy names (`include`, list `file=`).
//!
//! A policy is input, and in CI it often comes from a merge request. Reading every path it
//! names would let it print the runner's secrets (`include "/proc/self/environ"` does not parse,
//! and the diagnostic shows the bytes it did not parse), hang the compiler on `/dev/zero`, or
//! grow without end through a chain of files each including the next twice. So:
//!
//! * a named path is canonicalised (symlinks resolved) and must lie under the policy's own
//!   directory or under a directory the operator allowed (`--allow-dir`); a refused file is
//!   never opened, so no diagnostic can show its bytes;
//! * only regular files are read, and no more than a size cap;
//! * includes are counted across the whole compilation ([`MAX_INCLUDES`]).
//!
//! The allowance is a command-line flag and deliberately not a policy node: a policy that could
//! widen its own tree would defeat the check.

use std::io::Read;
use std::path::{Path, PathBuf};

/// The largest policy file (the policy itself or an include) read: policies are hand-written,
/// and the biggest real ones are far below this.
pub const POLICY_FILE_LIMIT: u64 = 16 << 20;
/// The largest list file read: the 1M-address list of BENCHMARKS.md (`bench/gen-large-policy.py`)
/// is 31 MB; this leaves room for eight times that.
pub const LIST_FILE_LIMIT: u64 = 256 << 20;
/// Includes in one compilation, counting a file each time it is included (a fragment shared by
/// two farms counts twice): far above what a real policy needs, and it stops a chain of files
/// that each include the next twice after a few hundred files, not 2^N.
pub const MAX_INCLUDES: usize = 256;

/// Why a named file was not read.
#[derive(Debug)]
pub enum Refusal {
    /// It does not exist or cannot be read.
    Io(std::io::Error),
    /// It resolves (symlinks followed) to this path, outside every allowed tree.
    Outside(PathBuf),
    /// Not a regular file (a device, a FIFO, a directory): reading it could block or never end.
    NotRegular,
    /// Larger than the cap (in bytes) for its kind.
    TooLarge(u64),
}

impl std::fmt::Display for Refusal {
    /// Why, in a few words, for a file given on the command line (a named file's diagnostics
    /// are more specific: `lower/include.rs`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Io(e) => write!(f, "{e}"),
            Refusal::Outside(canonical) => write!(f, "{} is outside the allowed directories", canonical.display()),
            Refusal::NotRegular => f.write_str("not a regular file"),
            Refusal::TooLarge(limit) => write!(f, "larger than {}", mib(*limit)),
        }
    }
}

impl From<std::io::Error> for Refusal {
    fn from(e: std::io::Error) -> Refusal {
        Refusal::Io(e)
    }
}

/// The directories whose files a policy may name: the policy's own, and those the operator
/// allowed. All canonical.
#[derive(Debug, Clone, Default)]
pub struct Trees {
    policy_dir: Option<PathBuf>,
    roots: Vec<PathBuf>,
}

impl Trees {
    /// Allow the files under `dir` (which must exist).
    pub fn allow(&mut self, dir: &Path) -> std::io::Result<PathBuf> {
        // `Path::parent` of a bare file name is "", which canonicalize refuses: that is `.`.
        let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
        let canonical = std::fs::canonicalize(dir)?;
        if !self.roots.contains(&canonical) {
            self.roots.push(canonical.clone());
        }
        Ok(canonical)
    }

    /// Allow the policy's own directory, and name it in refusals.
    pub fn allow_policy_dir(&mut self, dir: &Path) -> std::io::Result<()> {
        self.policy_dir = Some(self.allow(dir)?);
        Ok(())
    }

    /// The policy's own directory, canonical.
    pub fn policy_dir(&self) -> Option<&Path> {
        self.policy_dir.as_deref()
    }

    /// The canonical path (the file's identity) of `path`, if it lies inside an allowed tree.
    pub fn resolve(&self, path: &Path) -> Result<PathBuf, Refusal> {
        let canonical = std::fs::canonicalize(path)?;
        if self.roots.iter().any(|root| canonical.starts_with(root)) {
            Ok(canonical)
        } else {
            Err(Refusal::Outside(canonical))
        }
    }
}

/// Read a regular file of at most `limit` bytes as UTF-8 text.
pub fn read_regular(path: &Path, limit: u64) -> Result<String, Refusal> {
    // Checked before opening: opening a FIFO blocks until someone writes to it.
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(Refusal::NotRegular);
    }
    if meta.len() > limit {
        return Err(Refusal::TooLarge(limit));
    }
    let file = std::fs::File::open(path)?;
    // The path may have been replaced since; what was opened is what counts.
    if !file.metadata()?.is_file() {
        return Err(Refusal::NotRegular);
    }
    // Files in /proc say their size is 0: the read itself is bounded.
    let mut text = String::new();
    file.take(limit.saturating_add(1)).read_to_string(&mut text)?;
    if u64::try_from(text.len()).unwrap_or(u64::MAX) > limit {
        return Err(Refusal::TooLarge(limit));
    }
    Ok(text)
}

/// A size in the units the diagnostics use.
pub fn mib(bytes: u64) -> String {
    format!("{} MiB", bytes >> 20)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn a_device_is_refused_before_it_is_read() {
        assert!(matches!(read_regular(Path::new("/dev/zero"), 1024), Err(Refusal::NotRegular)));
    }

    #[test]
    fn a_file_whose_size_lies_is_still_capped() {
        // /proc files report a size of 0 and then give their bytes.
        let Ok(real) = std::fs::read("/proc/self/maps") else { return };
        assert!(real.len() > 16);
        assert!(matches!(read_regular(Path::new("/proc/self/maps"), 16), Err(Refusal::TooLarge(16))));
    }

    #[test]
    fn a_symlink_out_of_the_tree_is_refused_by_where_it_leads() {
        let dir = tempfile::tempdir().unwrap();
        let inner = dir.path().join("policy");
        std::fs::create_dir(&inner).unwrap();
        std::fs::write(dir.path().join("secret.txt"), "s3cret").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret.txt"), inner.join("list.txt")).unwrap();
        let mut trees = Trees::default();
        trees.allow(&inner).unwrap();
        match trees.resolve(&inner.join("list.txt")) {
            Err(Refusal::Outside(to)) => assert!(to.ends_with("secret.txt")),
            other => panic!("resolved through the link: {other:?}"),
        }
        trees.allow(dir.path()).unwrap();
        let canonical = trees.resolve(&inner.join("list.txt")).unwrap();
        assert_eq!(read_regular(&canonical, 1024).unwrap(), "s3cret");
    }
}
