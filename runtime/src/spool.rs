//! The RAM-disk spool: one file per message in flight, written as DATA arrives, read back to
//! relay it, and removed on every path.
//!
//! On a tmpfs, a message that stays small ([`IN_MEMORY_UP_TO`], most mail) never becomes a
//! file: its bytes stay in the session's memory, counted against the same budget of bytes in
//! flight (a share of the same RAM), and read the same way. A file there would be the same RAM
//! at the cost of five system calls per message (open, write, read, unlink, close) and the
//! tmpfs's page work: about a tenth of the node's CPU per relayed 4 KiB message. A message that
//! grows past the mark moves to its file then, once, and streams on as before. A spool on a disk
//! keeps every message in its file: its budget is a share of the disk, not of memory.
//!
//! A [`SpoolFile`] removes its file when dropped, so a refused message, a lost client, a back end
//! error, a panicking session task or an aborted one at shutdown all leave nothing behind. A node
//! killed outright (SIGKILL, power) leaves files; [`Spool::clean_stale`] removes those of dead
//! processes at the next start. Names carry the process id so two nodes may share a directory.
//!
//! The spool is meant to be a tmpfs (a RAM disk). [`Spool::new`] checks: on a tmpfs every file
//! operation is a memory operation that never waits on a device, so it is done in place, on the
//! session's thread, without the hop to a blocking thread that would cost more than the operation
//! itself (measured: ~25% of the node's CPU per 4 KiB message). A spool on any other file system
//! is still served, with a warning at start: each operation then waits for the device on the
//! session thread, holding that thread's other sessions meanwhile (on a work-stealing runtime
//! the worker's other tasks are handed over first, with `block_in_place`).
//!
//! Messages are private: the directory is the node user's own, mode 0700, and every file is
//! 0600. [`Spool::new`] makes the directory with `mkdir` (which, like `O_EXCL`, never adopts a
//! name someone else made first and never follows a symbolic link), or checks the one it finds:
//! a symbolic link, a directory of another user, one writable by group or others, or one whose
//! parent anyone may write without the sticky bit is refused, and the node does not start. The
//! default, `/dev/shm/mtac`, sits in a directory every local user can write: another user could
//! make it first, to read the messages or plant files, and is refused there.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A copy of a spooled message in memory ([`Spool::copy_to_memory`]), its bytes counted
/// against the spool's budget until it drops.
#[derive(Debug)]
pub struct InMemory {
    pub bytes: Vec<u8>,
    _reservation: Reservation,
}

/// Why a message could not be copied into memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyError {
    /// The budget of bytes in flight has no room for the copy (a 452).
    OverBudget,
    /// The spool file could not be read (a 451).
    Read,
}

/// Bytes of the spool's budget taken, given back when this drops.
#[derive(Debug)]
struct Reservation {
    in_use: Arc<InUse>,
    bytes: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.in_use.bytes.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// The spool directory and its accounting.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    counter: AtomicU64,
    /// Bytes and files currently spooled (all files of this process).
    in_use: Arc<InUse>,
    /// The directory is a tmpfs: file operations never wait on a device.
    in_memory: bool,
    /// This process's id, in every file name (`tidy` tells a dead node's files by it); read
    /// once, not a getpid(2) per message.
    pid: u32,
}

#[derive(Debug)]
struct InUse {
    bytes: AtomicU64,
    files: AtomicU64,
    /// The budget: the most bytes all messages in flight may hold at once.
    max_bytes: AtomicU64,
}

/// The share of the spool's file system that messages in flight may use when the policy sets no
/// budget: the rest is headroom, so the budget's clean 452 comes before the file system's ENOSPC.
const DEFAULT_SHARE_PERCENT: u64 = 75;

/// Messages up to this size stay in memory (module doc). Most mail is smaller; beyond it, a
/// file's fixed cost is small beside the bytes.
pub const IN_MEMORY_UP_TO: u64 = 128 * 1024;

const PREFIX: &str = "mtac-";
const SUFFIX: &str = ".msg";

impl Spool {
    /// Use (and create) `dir`, refusing one that is not private to this node's user (module
    /// doc); the error says what to do.
    pub fn new(dir: &Path) -> io::Result<Spool> {
        private_dir(dir)?;
        let in_memory = is_tmpfs(dir);
        if !in_memory {
            tracing::warn!(dir = %dir.display(), "the spool is not a tmpfs: each file operation waits for the device, holding its session thread; mount a RAM disk there");
        }
        let in_use = Arc::new(InUse {
            bytes: AtomicU64::new(0),
            files: AtomicU64::new(0),
            max_bytes: AtomicU64::new(default_budget(dir)),
        });
        Ok(Spool { dir: dir.to_path_buf(), counter: AtomicU64::new(0), in_use, in_memory, pid: std::process::id() })
    }

    /// Set the budget of bytes in flight (the policy's `spool max-bytes=`, or `None` for a share
    /// of the file system). Called at start and at every reload.
    pub fn set_budget(&self, max_bytes: Option<u64>) {
        let max = max_bytes.unwrap_or_else(|| default_budget(&self.dir));
        self.in_use.max_bytes.store(max, Ordering::Relaxed);
    }

    /// The budget of bytes in flight.
    pub fn budget(&self) -> u64 {
        self.in_use.max_bytes.load(Ordering::Relaxed)
    }

    /// Whether messages in flight hold more than half the budget: from then on each client is
    /// held to its share of the transfers (`limits { transfers-per-ip }`).
    pub fn under_pressure(&self) -> bool {
        self.bytes_in_use() > self.budget() / 2
    }

    /// Whether `size` more bytes fit in the budget now (the check of `MAIL … SIZE=`; nothing is
    /// reserved: the bytes are taken as they arrive).
    pub fn has_room_for(&self, size: u64) -> bool {
        self.bytes_in_use().saturating_add(size) <= self.budget()
    }

    /// The spooled message from `offset` on, copied into memory for a check that needs it in
    /// one buffer (sender authentication, the MIME rules). The copy is RAM too: its bytes are
    /// taken from the budget of bytes in flight while it lives, and when they do not fit the
    /// caller answers 4xx rather than hold more memory than the operator gave messages in flight.
    pub fn copy_to_memory(&self, reader: &SpoolReader, offset: u64) -> Result<InMemory, CopyError> {
        let len = reader.len().saturating_sub(offset);
        let before = self.in_use.bytes.fetch_add(len, Ordering::Relaxed);
        let reservation = Reservation { in_use: Arc::clone(&self.in_use), bytes: len };
        if before.saturating_add(len) > self.in_use.max_bytes.load(Ordering::Relaxed) {
            return Err(CopyError::OverBudget);
        }
        let mut bytes = vec![0u8; usize::try_from(len).map_err(|_| CopyError::Read)?];
        reader.read_at(offset, &mut bytes).map_err(|_| CopyError::Read)?;
        Ok(InMemory { bytes, _reservation: reservation })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn bytes_in_use(&self) -> u64 {
        self.in_use.bytes.load(Ordering::Relaxed)
    }

    /// Messages in the spool now.
    pub fn files_in_use(&self) -> u64 {
        self.in_use.files.load(Ordering::Relaxed)
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

    /// A new, empty spooled message: on a tmpfs in memory until it grows past
    /// [`IN_MEMORY_UP_TO`], elsewhere its file from the start.
    pub async fn create(&self, session: &str) -> io::Result<SpoolFile> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!("{PREFIX}{}-{session}-{n}{SUFFIX}", self.pid));
        let store = if self.in_memory {
            Store::Memory(Arc::new(Vec::new()))
        } else {
            Store::File(Arc::new(create_file(&path, false)?))
        };
        self.in_use.files.fetch_add(1, Ordering::Relaxed);
        Ok(SpoolFile { path, store, len: 0, in_use: self.in_use.clone(), in_memory: self.in_memory })
    }
}

/// Create the spool file at `path`: 0600, a message is for this node's user only. create_new
/// (O_EXCL) never follows a symbolic link; O_NOFOLLOW says so twice.
fn create_file(path: &Path, in_memory: bool) -> io::Result<File> {
    off_worker(in_memory, || {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
    })
}

/// Make `dir` (mode 0700) or check the one there: this user's, a real directory, writable by
/// no one else, in a parent where no one else can swap it for their own. A directory readable
/// by others but otherwise sound is tightened to 0700.
fn private_dir(dir: &Path) -> io::Result<()> {
    use rustix::fs::{Mode, OFlags};
    use std::os::unix::fs::DirBuilderExt;
    let refuse = |why: String| io::Error::new(io::ErrorKind::PermissionDenied, why);
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
        let meta = std::fs::metadata(parent)?;
        let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions());
        if mode & 0o002 != 0 && mode & 0o1000 == 0 {
            return Err(refuse(format!(
                "its parent {} is writable by everyone without the sticky bit, so anyone could put a directory of \
                 their own in the spool's place: `chmod +t` the parent, or put the spool elsewhere (/run/mtac/spool)",
                parent.display()
            )));
        }
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::open(dir, flags, Mode::empty()).map_err(|e| {
        if e == rustix::io::Errno::LOOP || e == rustix::io::Errno::NOTDIR {
            refuse(
                "is a symbolic link or not a directory: the spool must be a directory of the node's own \
                 (remove it and let the node make it, or point `spool` at a real directory)"
                    .to_owned(),
            )
        } else {
            io::Error::from(e)
        }
    })?;
    // From here on the checks are on the open directory itself, not on a name that could change.
    let stat = rustix::fs::fstat(&fd)?;
    let me = rustix::process::geteuid().as_raw();
    if stat.st_uid != me {
        return Err(refuse(format!(
            "belongs to uid {}, not to this node's user (uid {me}), who may read and plant messages there: \
             remove it (the node makes it again, mode 0700) or point `spool` at a directory of the node's user",
            stat.st_uid
        )));
    }
    let mode = stat.st_mode & 0o7777;
    if mode & 0o022 != 0 {
        return Err(refuse(format!(
            "is writable by group or others (mode {mode:04o}): `chmod 0700` it after checking that nothing \
             unexpected is in it, or remove it and let the node make it"
        )));
    }
    if mode & 0o077 != 0 {
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700))?;
        tracing::warn!(dir = %dir.display(), mode = format!("{mode:04o}"), "spool: directory was readable by others, made 0700");
    }
    Ok(())
}

/// Run a file operation: in place on a tmpfs; else, on a work-stealing runtime, with the
/// worker's other tasks handed over first. A session thread's runtime has no other worker to
/// hand them to (`block_in_place` panics there): the operation waits in place.
fn off_worker<T>(in_memory: bool, op: impl FnOnce() -> T) -> T {
    if in_memory {
        return op();
    }
    let work_stealing = tokio::runtime::Handle::try_current()
        .is_ok_and(|runtime| runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if work_stealing {
        tokio::task::block_in_place(op)
    } else {
        op()
    }
}

/// Whether `dir` is on a tmpfs (or ramfs).
fn is_tmpfs(dir: &Path) -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    match rustix::fs::statfs(dir) {
        Ok(stat) => {
            // f_type's width differs between libcs and architectures (i64 here, u32/i32 elsewhere).
            #[allow(clippy::unnecessary_cast)]
            let kind = stat.f_type as i64;
            kind == TMPFS_MAGIC || kind == RAMFS_MAGIC
        }
        Err(_) => false,
    }
}

/// One spooled message: its bytes in memory, or its file (removed when dropped).
#[derive(Debug)]
pub struct SpoolFile {
    /// Where its file is, or will be should it grow past [`IN_MEMORY_UP_TO`].
    path: PathBuf,
    store: Store,
    len: u64,
    in_use: Arc<InUse>,
    /// The spool is a tmpfs (file operations in place, not off the worker).
    in_memory: bool,
}

/// Where a spooled message's bytes are. Both are shared with the message's readers, which
/// read at offsets: a reader costs no copy, and no dup(2) and close(2).
#[derive(Debug, Clone)]
enum Store {
    Memory(Arc<Vec<u8>>),
    File(Arc<File>),
}

impl SpoolFile {
    /// Where its file is, when it has one ([`SpoolFile::is_file`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the message grew past [`IN_MEMORY_UP_TO`] into its file.
    pub fn is_file(&self) -> bool {
        matches!(self.store, Store::File(_))
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append bytes. The budget of bytes in flight is taken first; beyond it, or with the file
    /// system full (ENOSPC), the write fails and the session answers 452 ([`is_full`]).
    pub async fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let n = bytes.len() as u64;
        let before = self.in_use.bytes.fetch_add(n, Ordering::Relaxed);
        if before.saturating_add(n) > self.in_use.max_bytes.load(Ordering::Relaxed) {
            self.in_use.bytes.fetch_sub(n, Ordering::Relaxed);
            return Err(io::Error::new(io::ErrorKind::StorageFull, "the spool's budget of bytes in flight is used up"));
        }
        if let Err(e) = self.append(bytes) {
            self.in_use.bytes.fetch_sub(n, Ordering::Relaxed);
            return Err(e);
        }
        self.len += n;
        Ok(())
    }

    /// Append to the memory or the file, moving the message to its file when it grows past
    /// [`IN_MEMORY_UP_TO`].
    fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        if let Store::Memory(memory) = &mut self.store {
            if self.len.saturating_add(bytes.len() as u64) <= IN_MEMORY_UP_TO {
                // Written before any reader exists: no copy is made here. Exact: the budget
                // counts the bytes, and a small message is mostly written once.
                let memory = Arc::make_mut(memory);
                memory.reserve_exact(bytes.len());
                memory.extend_from_slice(bytes);
                return Ok(());
            }
            let file = create_file(&self.path, self.in_memory)?;
            let mut writer = &file;
            let written = off_worker(self.in_memory, || writer.write_all(memory));
            let file = Arc::new(file);
            // From here on the file exists and is removed when this drops, written or not.
            self.store = Store::File(Arc::clone(&file));
            written?;
        }
        let Store::File(file) = &self.store else { return Ok(()) };
        let mut file = &**file;
        off_worker(self.in_memory, || file.write_all(bytes))
    }

    /// A reader of the spooled bytes for one consumer (a scanner): its own handle, reading at
    /// offsets, so several read at once while the file stays as it was written.
    pub fn reader(&self) -> io::Result<SpoolReader> {
        Ok(SpoolReader { store: self.store.clone(), len: self.len, in_memory: self.in_memory })
    }

    /// Make everything written visible to readers (and to [`SpoolFile::path`]).
    pub async fn flush(&mut self) -> io::Result<()> {
        match &self.store {
            Store::Memory(_) => Ok(()),
            Store::File(file) => {
                let mut file = &**file;
                off_worker(self.in_memory, || file.flush())
            }
        }
    }
}

/// Reads a spool file at offsets (see [`SpoolFile::reader`]).
#[derive(Debug)]
pub struct SpoolReader {
    store: Store,
    len: u64,
    in_memory: bool,
}

impl SpoolReader {
    /// Another reader of the same file (for a consumer that must own its reader).
    pub fn try_clone(&self) -> io::Result<SpoolReader> {
        Ok(SpoolReader { store: self.store.clone(), len: self.len, in_memory: self.in_memory })
    }

    /// The file's length when the reader was made.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `len` bytes from `offset` (fewer past the end), lent without a copy, when the message
    /// never grew into its file; `None` for a message in its file ([`Self::read_at`] reads it).
    pub fn in_memory_at(&self, offset: u64, len: usize) -> Option<&[u8]> {
        let Store::Memory(memory) = &self.store else { return None };
        let end = usize::try_from(self.len).unwrap_or(usize::MAX).min(memory.len());
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(end);
        memory.get(start..end.min(start.saturating_add(len)))
    }

    /// Fill `buf` from `offset`, short only at the end of the file. Returns the bytes read.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let want = usize::try_from(self.len.saturating_sub(offset)).unwrap_or(usize::MAX).min(buf.len());
        let buf = buf.get_mut(..want).unwrap_or_default();
        if buf.is_empty() {
            return Ok(0);
        }
        let file = match &self.store {
            Store::File(file) => file,
            Store::Memory(memory) => {
                let start = usize::try_from(offset).unwrap_or(usize::MAX);
                let bytes = memory.get(start..).and_then(|rest| rest.get(..buf.len()));
                let Some(bytes) = bytes else {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "spooled message shorter than written"));
                };
                buf.copy_from_slice(bytes);
                return Ok(buf.len());
            }
        };
        off_worker(self.in_memory, || {
            let mut filled = 0;
            while filled < buf.len() {
                match file.read_at(buf.get_mut(filled..).unwrap_or_default(), offset + filled as u64) {
                    Ok(0) => {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "spool file shorter than written"))
                    }
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(filled)
        })
    }
}

impl Drop for SpoolFile {
    fn drop(&mut self) {
        self.in_use.bytes.fetch_sub(self.len, Ordering::Relaxed);
        self.in_use.files.fetch_sub(1, Ordering::Relaxed);
        if !self.is_file() {
            return;
        }
        // Unlinking on a tmpfs is a short metadata operation; doing it here is what guarantees
        // that no path (error, panic, abort) leaves the message behind.
        if let Err(e) = std::fs::remove_file(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(path = %self.path.display(), error = %e, "spool: cannot remove file");
            }
        }
    }
}

/// Whether an I/O error means the spool is full: its budget used up, or its file system.
pub fn is_full(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::StorageFull
        || matches!(error.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// The default budget: a share of the spool's file system (a tmpfs is sized by its mount).
fn default_budget(dir: &Path) -> u64 {
    match rustix::fs::statvfs(dir) {
        Ok(stat) => {
            let total = stat.f_blocks.saturating_mul(stat.f_frsize);
            if total == 0 {
                u64::MAX
            } else {
                total / 100 * DEFAULT_SHARE_PERCENT
            }
        }
        Err(_) => u64::MAX,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A spool on a tmpfs (/dev/shm), where small messages stay in memory.
    fn spool() -> (tempfile::TempDir, Spool) {
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let spool = Spool::new(&dir.path().join("spool")).unwrap();
        assert!(spool.in_memory, "/dev/shm is a tmpfs");
        (dir, spool)
    }

    fn files(spool: &Spool) -> Vec<PathBuf> {
        std::fs::read_dir(spool.dir()).unwrap().map(|e| e.unwrap().path()).collect()
    }

    fn read_all(reader: &SpoolReader) -> Vec<u8> {
        let mut bytes = vec![0u8; usize::try_from(reader.len()).unwrap()];
        reader.read_at(0, &mut bytes).unwrap();
        bytes
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_small_message_is_never_a_file_and_is_counted_while_it_lives() {
        let (_dir, spool) = spool();
        let mut message = spool.create("S1").await.unwrap();
        message.write(b"Subject: small\r\n\r\n").await.unwrap();
        message.write(b"body\r\n").await.unwrap();
        message.flush().await.unwrap();
        assert!(!message.is_file());
        assert!(files(&spool).is_empty(), "{:?}", files(&spool));
        assert_eq!((spool.files_in_use(), spool.bytes_in_use()), (1, 24));
        let reader = message.reader().unwrap();
        assert_eq!(read_all(&reader), b"Subject: small\r\n\r\nbody\r\n");
        let mut tail = [0u8; 4];
        assert_eq!(reader.read_at(18, &mut tail).unwrap(), 4);
        assert_eq!(&tail, b"body");
        drop(reader);
        drop(message);
        assert_eq!((spool.files_in_use(), spool.bytes_in_use()), (0, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_message_that_grows_past_the_mark_moves_to_a_private_file_whole() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, spool) = spool();
        let mut message = spool.create("S2").await.unwrap();
        let piece: Vec<u8> = (0..=255u8).cycle().take(50_000).collect();
        let mut expected = Vec::new();
        for _ in 0..3 {
            message.write(&piece).await.unwrap();
            expected.extend_from_slice(&piece);
        }
        assert!(expected.len() as u64 > IN_MEMORY_UP_TO);
        assert!(message.is_file());
        let on_disk = files(&spool);
        assert_eq!(on_disk, vec![message.path().to_path_buf()]);
        assert_eq!(std::fs::metadata(message.path()).unwrap().permissions().mode() & 0o777, 0o600);
        message.flush().await.unwrap();
        // Every byte, the ones written while in memory first, in order.
        assert_eq!(read_all(&message.reader().unwrap()), expected);
        assert_eq!(spool.bytes_in_use(), expected.len() as u64);
        drop(message);
        assert!(files(&spool).is_empty(), "the file outlived its message");
        assert_eq!((spool.files_in_use(), spool.bytes_in_use()), (0, 0));
    }

    /// On a disk the budget is a share of the disk: a message there is never held in memory.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_spool_on_a_disk_keeps_every_message_in_its_file() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let spool = Spool::new(&dir.path().join("spool")).unwrap();
        assert!(!spool.in_memory, "the crate's directory is on a disk");
        let mut message = spool.create("S5").await.unwrap();
        message.write(b"Subject: small\r\n\r\nbody\r\n").await.unwrap();
        assert!(message.is_file());
        assert_eq!(files(&spool), vec![message.path().to_path_buf()]);
        assert_eq!(read_all(&message.reader().unwrap()), b"Subject: small\r\n\r\nbody\r\n");
        drop(message);
        assert!(files(&spool).is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn the_budget_holds_for_messages_in_memory_too() {
        let (_dir, spool) = spool();
        spool.set_budget(Some(1000));
        let mut first = spool.create("S3").await.unwrap();
        first.write(&[b'a'; 800]).await.unwrap();
        let mut second = spool.create("S4").await.unwrap();
        let e = second.write(&[b'b'; 300]).await.unwrap_err();
        assert!(is_full(&e), "{e}");
        drop(first);
        second.write(&[b'b'; 300]).await.unwrap();
    }
}
