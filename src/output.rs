//! Everything the binary prints goes through here: `println!`, `print!`, `eprintln!` and
//! `eprint!` are shadowed in main.rs by macros that call [`stdout`] and [`stderr`].
//!
//! std's macros panic when a write fails, so `mtac completions zsh | head -1` or
//! `mtac check --format json … | head -c 10` used to end in a panic message and exit 101. Here a
//! stream whose reader went away (EPIPE) is simply not written to again: the command goes on and
//! exits with its own code, as if the reader had read everything (what coreutils do, by
//! signal). Any other write error (a full disk behind `>`) is said once on standard error and
//! makes the exit code 2, the code for I/O errors.

use std::fmt;
use std::io::{ErrorKind, Write};
use std::sync::atomic::{AtomicBool, Ordering};

static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);
static STDERR_CLOSED: AtomicBool = AtomicBool::new(false);
static FAILED: AtomicBool = AtomicBool::new(false);

/// Write to standard output (what the shadowed `println!` and `print!` call).
pub fn stdout(args: fmt::Arguments<'_>) {
    let failed = write(&mut std::io::stdout().lock(), args, &STDOUT_CLOSED);
    if let Some(e) = failed {
        stderr(format_args!("mtac: cannot write to standard output: {e}\n"));
    }
}

/// Write bytes to standard output (generated completions).
pub fn stdout_bytes(bytes: &[u8]) {
    stdout(format_args!("{}", String::from_utf8_lossy(bytes)));
}

/// Write to standard error (what the shadowed `eprintln!` and `eprint!` call).
pub fn stderr(args: fmt::Arguments<'_>) {
    // Nowhere is left to report a failure of standard error itself; the exit code still says it.
    let _ = write(&mut std::io::stderr().lock(), args, &STDERR_CLOSED);
}

/// Whether a write failed for another reason than a closed reader.
pub fn failed() -> bool {
    FAILED.load(Ordering::Relaxed)
}

/// Writes unless the stream is known closed; returns an error other than a closed reader.
fn write(out: &mut impl Write, args: fmt::Arguments<'_>, closed: &AtomicBool) -> Option<std::io::Error> {
    if closed.load(Ordering::Relaxed) {
        return None;
    }
    let e = out.write_fmt(args).and_then(|()| out.flush()).err()?;
    closed.store(true, Ordering::Relaxed);
    if e.kind() == ErrorKind::BrokenPipe {
        return None;
    }
    FAILED.store(true, Ordering::Relaxed);
    Some(e)
}
