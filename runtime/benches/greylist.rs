//! Greylist decisions per second, the latency they add to RCPT TO, and what a million entries
//! cost, for the embedded store (redb) and for Redis.
//!
//! ```text
//! cargo bench -p mtac-runtime --bench greylist                # full run (1,000,000 entries)
//! cargo bench -p mtac-runtime --bench greylist -- --quick     # smoke run (CI)
//! ```
//!
//! Redis: a redis-server is started on a free loopback port when the binary is installed
//! (`REDIS_URL` uses another one). Each decision goes through the node's own code path
//! (`Store::greylist`: spawn_blocking for redb, one Lua script round trip for Redis).
//! Latency is measured per call for one session alone (what greylisting adds to a RCPT) and
//! with 32 concurrent sessions (throughput, and the queueing a loaded node sees).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use mtac_ruleset::model::StateSettings;
use mtac_runtime::state::{Store, Timings, Triplet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const TIMINGS: Timings = Timings { delay: 300, retry_window: 14_400, lifetime: 36 * 86_400, auto_whitelist: 5 };

fn triplet(i: u64) -> Triplet {
    let net = format!("net:10.{}.{}.0/24", (i >> 8) & 0xff, i & 0xff);
    Triplet::new(net, &format!("sender{i}@example.org"), &format!("user{}@example.test", i % 5000))
}

/// Run `n` decisions with `concurrency` tasks; returns (decisions per second, p50 µs, p99 µs).
async fn run(store: &Store, n: u64, offset: u64, concurrency: u64) -> (f64, f64, f64) {
    let store = Arc::new(store.clone());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = worker;
            while i < n {
                let t = triplet(offset + i);
                let ip: IpAddr = "10.0.0.1".parse().unwrap();
                let one = Instant::now();
                store.greylist(&t, ip, TIMINGS).await.expect("store answers");
                latencies.push(one.elapsed().as_secs_f64() * 1e6);
                i += concurrency;
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    (n as f64 / elapsed, pct(0.50), pct(0.99))
}

fn rss_of(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

async fn redis_used_memory(url: &str) -> u64 {
    let client = redis::Client::open(url).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let info: String = redis::cmd("INFO").arg("memory").query_async(&mut c).await.unwrap();
    info.lines().find_map(|l| l.strip_prefix("used_memory:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

async fn bench(name: &str, store: Store, n: u64, entries: u64, size: impl AsyncFn() -> u64) {
    let before = size().await;
    // One session alone: the latency greylisting adds to its RCPT. Then 32 at once: throughput.
    let solo = n / 10;
    let (rate, p50, p99) = run(&store, solo, 0, 1).await;
    println!("{name:9} new,   1 session   {rate:>9.0} decisions/s   p50 {p50:>7.1} µs   p99 {p99:>7.1} µs");
    let (rate, p50, p99) = run(&store, solo, 0, 1).await;
    println!("{name:9} known, 1 session   {rate:>9.0} decisions/s   p50 {p50:>7.1} µs   p99 {p99:>7.1} µs");
    let (rate, p50, p99) = run(&store, n, solo, 32).await;
    println!("{name:9} new,  32 sessions  {rate:>9.0} decisions/s   p50 {p50:>7.1} µs   p99 {p99:>7.1} µs");
    let (rate, p50, p99) = run(&store, n, solo, 32).await;
    println!("{name:9} known,32 sessions  {rate:>9.0} decisions/s   p50 {p50:>7.1} µs   p99 {p99:>7.1} µs");
    if entries > n + solo {
        run(&store, entries - n - solo, n + solo, 32).await;
    }
    let after = size().await;
    let stored = entries.max(n + solo);
    let per_million = (after.saturating_sub(before)) as f64 * 1_000_000.0 / stored as f64;
    println!("{name:9} {stored} entries: {:.0} MiB per million entries", per_million / 1048576.0);
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (n, entries) = if quick { (5_000, 5_000) } else { (100_000, 1_000_000) };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.redb");
        let store = Store::open(&StateSettings::Embedded { path: path.to_string_lossy().into_owned() }).unwrap();
        if let Store::Embedded(db) = &store {
            // As on a node: commits become durable once a second.
            db.spawn_maintenance();
        }
        let file = path.clone();
        bench("embedded", store, n, entries, async || std::fs::metadata(&file).map(|m| m.len()).unwrap_or(0)).await;

        let mut server = None;
        let url = match std::env::var("REDIS_URL") {
            Ok(url) => url,
            Err(_) => {
                let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
                match std::process::Command::new("redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                    .stdout(std::process::Stdio::null())
                    .spawn()
                {
                    Ok(child) => {
                        server = Some(child);
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        format!("redis://127.0.0.1:{port}/0")
                    }
                    Err(e) => {
                        println!("redis     skipped: no redis-server ({e})");
                        return;
                    }
                }
            }
        };
        let store =
            Store::open(&StateSettings::Redis { url: url.clone(), timeout_ms: 2000, fail_open: false }).unwrap();
        bench("redis", store, n, entries, async || redis_used_memory(&url).await).await;
        if let Some(mut child) = server {
            println!("redis     server RSS {:.0} MiB", rss_of(child.id()) as f64 / 1048576.0);
            let _ = child.kill();
            let _ = child.wait();
        }
    });
}
