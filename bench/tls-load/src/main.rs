//! `tls-load`: the command line of the STARTTLS load generator (the library says what a run
//! does). Exit status: 0 when every message was sent, 1 when some failed, 2 when the run could
//! not start.

use clap::Parser;
use mtac_tls_load::{run, Report, Settings};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

/// Send SMTP messages over STARTTLS to ADDRESS and report msg/s and failures by reply.
#[derive(Parser)]
#[command(name = "tls-load", version)]
struct Args {
    /// The server, IP:PORT.
    address: SocketAddr,
    /// Sessions open at once.
    #[arg(short = 's', long, default_value_t = 1)]
    sessions: usize,
    /// Messages in the whole run.
    #[arg(short = 'm', long, default_value_t = 100)]
    messages: u64,
    /// Messages per connection (1: one STARTTLS session per message).
    #[arg(short = 'k', long, default_value_t = 1)]
    per_session: u64,
    /// Bytes of message body (about 60 bytes of headers come on top).
    #[arg(short = 'l', long, default_value_t = 4096)]
    size: usize,
    /// Seconds any one step (connect, handshake, a reply) may take.
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    #[arg(long, default_value = "tls-load.example")]
    helo: String,
    #[arg(long, default_value = "sender@example.com")]
    from: String,
    #[arg(long, default_value = "rcpt@example.net")]
    to: String,
    /// The TLS server name to send (SNI); default: none (the address).
    #[arg(long)]
    server_name: Option<String>,
    /// Plain SMTP, no STARTTLS (the ceiling against a server without TLS).
    #[arg(long)]
    plain: bool,
    /// Resume TLS sessions (default: a full handshake every session).
    #[arg(long)]
    resume: bool,
    /// Offer only TLS 1.2 or only 1.3 (default: both).
    #[arg(long, value_parser = ["1.2", "1.3"])]
    tls_version: Option<String>,
    /// Runtime worker threads (1: a single-threaded runtime, like smtp-source's one process).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !(args.timeout > 0.0 && args.timeout <= 3600.0) {
        eprintln!("tls-load: --timeout must be between 0 and 3600 seconds");
        return ExitCode::from(2);
    }
    let settings = Settings {
        sessions: args.sessions,
        per_session: args.per_session,
        size: args.size,
        timeout: Duration::from_secs_f64(args.timeout),
        helo: args.helo,
        from: args.from,
        to: args.to,
        server_name: args.server_name,
        plain: args.plain,
        resume: args.resume,
        tls_version: args.tls_version,
        ..Settings::new(args.address, args.messages)
    };
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads).enable_all().build()
    };
    let report = match runtime
        .map_err(|e| e.to_string())
        .and_then(|rt| rt.block_on(run(&settings)).map_err(|e| e.to_string()))
    {
        Ok(report) => report,
        Err(e) => {
            eprintln!("tls-load: {e}");
            return ExitCode::from(2);
        }
    };
    if args.json {
        match serde_json::to_string(&report) {
            Ok(json) => println!("{json}"),
            Err(e) => {
                eprintln!("tls-load: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        print_text(&settings, &report);
    }
    if report.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn print_text(settings: &Settings, report: &Report) {
    let mode = if settings.plain { "plain" } else { "STARTTLS" };
    println!(
        "{} messages, {} sent, {} failed; {} sessions ({mode}, {} TLS, {} resumed), {} at once, {} per session, {} bytes",
        report.messages,
        report.sent,
        report.failed,
        report.sessions,
        report.tls_sessions,
        report.resumed,
        settings.sessions,
        settings.per_session,
        settings.size
    );
    println!("{:.3} s, {:.1} msg/s", report.wall_seconds, report.messages_per_second);
    for (reason, count) in &report.failures {
        println!("failed: {count} {reason}");
    }
}
