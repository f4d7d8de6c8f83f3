//! Recipient lookups in a real slapd, as the RCPT stage makes them (`directory::DirectoryClient`:
//! pool of 4 connections, positive and negative caches), 64 lookups in flight:
//!
//! - **cold**: every address is new (half exist, half do not), so each is a round trip;
//! - **warm**: the same addresses again, answered by the caches.
//!
//! Reports lookups per second and the p50/p99 latency each adds to a RCPT.
//!
//! ```text
//! cargo bench -p mtac-runtime --bench directory               # 10,000 users, 5 s per phase
//! cargo bench -p mtac-runtime --bench directory -- --quick    # 1,000 users, 1 s per phase
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

#[path = "../../tests/common/latencies.rs"]
mod latencies;
#[path = "../../tests/common/slapd.rs"]
mod slapd;

use mtac_ruleset::eval::DirectoryAnswer;
use mtac_runtime::directory::DirectoryClient;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const IN_FLIGHT: usize = 64;

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (users, seconds) = if quick { (1_000, 1) } else { (10_000, 5) };
    let mut ldif = String::new();
    for i in 0..users {
        ldif.push_str(&format!(
            "dn: uid=u{i},ou=people,dc=example,dc=test\nobjectClass: inetOrgPerson\nuid: u{i}\ncn: U\nsn: U\nmail: u{i}@example.test\n\n"
        ));
    }
    let Some(slapd) = slapd::Slapd::start_with("index mail eq", &ldif).await else {
        eprintln!("slapd is not installed: nothing measured");
        return;
    };
    let settings = mtac_ruleset::model::Directory {
        url: format!("ldap://127.0.0.1:{}", slapd.port),
        base: "ou=people,dc=example,dc=test".to_owned(),
        filter: "(mail={address})".to_owned(),
        attributes: vec!["mail".to_owned()],
        bind_dn: None,
        bind_password_file: None,
        timeout_ms: 2000,
        pool: 4,
        positive_ttl: 600,
        negative_ttl: 600,
        cache_size: 1_000_000,
        lookups: true,
        exported: 0,
    };
    let client = Arc::new(DirectoryClient::new(&settings).unwrap());
    println!("slapd with {users} users, pool of 4 connections, {IN_FLIGHT} lookups in flight, one runtime thread");
    // Cold: addresses never asked before, existing and not in turn.
    let asked = run(&client, Duration::from_secs(seconds), None, users).await;
    // Warm: only addresses the cold phase cached.
    run(&client, Duration::from_secs(seconds), Some(asked), users).await;
}

/// Look up addresses for `length`; `cached` = how many the cold phase asked (warm phase).
async fn run(client: &Arc<DirectoryClient>, length: Duration, cached: Option<usize>, users: usize) -> usize {
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + length;
    let mut tasks = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (client, next) = (client.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut unavailable = 0u64;
            while Instant::now() < deadline {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let n = match cached {
                    Some(asked) => n % asked.max(1),
                    None => n,
                };
                // Even: an existing user; odd: an address that does not exist.
                let address = if n % 2 == 0 {
                    format!("u{}@example.test", (n / 2) % users)
                } else {
                    format!("x{n}@example.test")
                };
                let started = Instant::now();
                let (answer, _) = client.lookup(&address).await;
                latencies.push(started.elapsed());
                if answer == DirectoryAnswer::Unavailable {
                    unavailable += 1;
                }
            }
            (latencies, unavailable)
        }));
    }
    let all = latencies::gather(tasks).await;
    let unavailable = all.failed;
    let (known, unknown) = client.cached();
    println!(
        "{:<5} {:>9.0} lookups/s   p50 {:>8.1?}   p99 {:>8.1?}   unavailable {unavailable}   cached {known} known / {unknown} unknown",
        if cached.is_some() { "warm" } else { "cold" },
        all.count() as f64 / length.as_secs_f64(),
        all.quantile(0.50),
        all.quantile(0.99),
    );
    next.load(Ordering::Relaxed).min(all.count())
}
