//! `mtac`: the one binary. It wires the compiler (check, build, test), the ruleset reader
//! (inspect, explain) and the runtime (run). Arguments are parsed here and turned into the
//! crates' own settings; no policy logic lives in this file.

// One module implements the global allocator, which takes unsafe code (`allocator`); the
// rest of the binary has none.
#![deny(unsafe_code)]

// std's printing macros panic on a closed pipe; these shadow them for every module declared
// below, so all output goes through `output` (its module doc says what happens there).
macro_rules! println {
    () => { $crate::output::stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::output::stdout(format_args!("{}\n", format_args!($($arg)*))) };
}
#[allow(unused_macros)] // unused today; here so that a future `print!` cannot bypass `output`
macro_rules! print {
    ($($arg:tt)*) => { $crate::output::stdout(format_args!($($arg)*)) };
}
macro_rules! eprintln {
    () => { $crate::output::stderr(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::output::stderr(format_args!("{}\n", format_args!($($arg)*))) };
}
macro_rules! eprint {
    ($($arg:tt)*) => { $crate::output::stderr(format_args!($($arg)*)) };
}

mod allocator;
mod cli;
mod diff;
mod dkim_record;
mod log_format;
mod log_writer;
mod logging;
mod lookup;
mod output;
mod status;
mod tools;

use clap::Parser;
use std::process::ExitCode;

/// mimalloc, huge pages off (the module says why).
#[global_allocator]
static ALLOCATOR: allocator::Allocator = allocator::Allocator;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let code = match cli::dispatch(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mtac: {e}");
            ExitCode::from(2)
        }
    };
    if output::failed() {
        ExitCode::from(2)
    } else {
        code
    }
}
