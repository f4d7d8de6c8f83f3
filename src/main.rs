//! `mtac`: the one binary. It wires the compiler (check, build, test), the ruleset reader
//! (inspect, explain) and the runtime (run). Arguments are parsed here and turned into the
//! crates' own settings; no policy logic lives in this file.

#![forbid(unsafe_code)]

mod cli;
mod logging;
mod status;

use clap::Parser;
use std::process::ExitCode;

/// musl's allocator is slow under a server's churn of small allocations; the static build uses
/// mimalloc instead (the glibc build keeps glibc's, which is as fast).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::dispatch(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mtac: {e}");
            ExitCode::from(2)
        }
    }
}
