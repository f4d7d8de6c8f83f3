//! A spam wave like seed 002's, replayed against `mtac run` (a separate process):
//! from 5 to 5,000 concurrent connections within 30 s, 95% of them from DNSBL-listed addresses
//! that keep trying, while one legitimate sender sends a message every second.
//!
//!     cargo bench --bench wave                 # the full wave (about 50 s)
//!     MTAC_WAVE_QUICK=1 cargo bench --bench wave  # a small one (CI smoke)
//!
//! Reports: legitimate messages accepted (must be all) and their latency (p50/p99), the node's
//! peak RSS and peak open connections, refusals seen by the zombies (554 at RCPT, then 521 once
//! banned), and how long after the wave the node is back to its baseline connection count.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "../tests/common/dns_server.rs"]
mod dns_server;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket};

async fn reply(stream: &mut BufReader<tokio::net::TcpStream>) -> Option<u16> {
    loop {
        let mut line = String::new();
        match tokio::time::timeout(Duration::from_secs(30), stream.read_line(&mut line)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return line.get(..3).and_then(|c| c.parse().ok());
        }
    }
}

async fn cmd(stream: &mut BufReader<tokio::net::TcpStream>, line: &str) -> Option<u16> {
    stream.get_mut().write_all(format!("{line}\r\n").as_bytes()).await.ok()?;
    reply(stream).await
}

async fn connect(node: SocketAddr, source: std::net::Ipv4Addr) -> Option<BufReader<tokio::net::TcpStream>> {
    let socket = TcpSocket::new_v4().ok()?;
    socket.bind(SocketAddr::new(source.into(), 0)).ok()?;
    let stream = tokio::time::timeout(Duration::from_secs(10), socket.connect(node)).await.ok()?.ok()?;
    Some(BufReader::new(stream))
}

/// One attempt to send; returns the code that ended it.
async fn send(node: SocketAddr, source: std::net::Ipv4Addr, data: bool) -> Option<u16> {
    let mut s = connect(node, source).await?;
    let greeting = reply(&mut s).await?;
    if greeting != 220 {
        return Some(greeting);
    }
    for (line, want) in
        [("EHLO host.example.org", 250), ("MAIL FROM:<a@example.org>", 250), ("RCPT TO:<u@example.net>", 250)]
    {
        let code = cmd(&mut s, line).await?;
        if code != want {
            let _ = cmd(&mut s, "QUIT").await;
            return Some(code);
        }
    }
    if !data {
        return Some(250);
    }
    if cmd(&mut s, "DATA").await? != 354 {
        return None;
    }
    let code = cmd(&mut s, "Subject: legit\r\n\r\nhello\r\n.").await?;
    let _ = cmd(&mut s, "QUIT").await;
    Some(code)
}

fn node_stats(pid: u32) -> (u64, usize) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
    (rss, fds)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::var_os("MTAC_WAVE_QUICK").is_some();
    let (peak_zombies, ramp) = if quick { (200usize, 5u64) } else { (5000, 30) };
    // The generator holds thousands of sockets, like the node.
    let _ = mtac_runtime::node::raise_file_limit();

    // Zombies come from 127.10.0.0/16, listed by a wildcard; the legitimate sender from 127.20.0.1.
    let dns = dns_server::serve(vec![(
        "test.",
        vec![
            ("*.10.127.bl".to_owned(), dns_server::a("127.0.0.2")),
            ("2.0.0.127.bl".to_owned(), dns_server::a("127.0.0.2")),
        ],
    )])
    .await;
    // The back end: count deliveries.
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = backend.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = backend.accept().await else { return };
            tokio::spawn(async move {
                let mut s = BufReader::new(stream);
                let _ = s.get_mut().write_all(b"220 sink\r\n").await;
                let mut in_data = false;
                loop {
                    let mut line = String::new();
                    if s.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    let out: &[u8] = if in_data {
                        if line == ".\r\n" {
                            in_data = false;
                            b"250 2.0.0 Ok\r\n"
                        } else {
                            continue;
                        }
                    } else if line.starts_with("DATA") {
                        in_data = true;
                        b"354 go\r\n"
                    } else if line.starts_with("EHLO") {
                        b"250-sink\r\n250 8BITMIME\r\n"
                    } else {
                        b"250 2.0.0 Ok\r\n"
                    };
                    if s.get_mut().write_all(out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.kdl");
    std::fs::write(
        &policy,
        format!(
            r#"hostname "mx.wave.example"
spool "{spool}"
dns timeout="2s" {{
    nameserver "{dns}"
}}
farm "mx" kind="inbound-mx" {{
    listen "127.0.0.1:{port}"
    limits {{
        connections 50000
        connections-per-ip 20
        timeout command="30s"
    }}
    local-domains "example.net"
    dnsbl threshold=1 {{
        zone "bl.test" {{
            answer "127.0.0.2" weight=1
        }}
    }}
    ban after="dnsbl" duration="10m"
    relay {{
        backend "smtp://{backend_addr}"
    }}
}}
"#,
            spool = dir.path().join("spool").display(),
            dns = dns.addr
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mtac"))
        .args(["run", "--policy"])
        .arg(&policy)
        .env("RUST_LOG", "warn")
        .stderr(std::fs::File::create(dir.path().join("log")).unwrap())
        .spawn()
        .unwrap();
    let node: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(node).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = child.id();
    let (base_rss, base_fds) = node_stats(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let refusals = Arc::new(Mutex::new(std::collections::BTreeMap::<u16, u64>::new()));
    let attempts = Arc::new(AtomicU64::new(0));
    let wave_start = Instant::now();
    // Ramp the zombies up linearly to the peak over `ramp` seconds; each retries at once.
    let ramp_task = {
        let (stop, refusals, attempts) = (stop.clone(), refusals.clone(), attempts.clone());
        tokio::spawn(async move {
            let per_step = (peak_zombies / (ramp as usize * 10)).max(1);
            let mut started = 5usize;
            let mut spawned = 0usize;
            while spawned < peak_zombies && !stop.load(Ordering::Relaxed) {
                let target = started.min(peak_zombies);
                while spawned < target {
                    let n = spawned;
                    spawned += 1;
                    let source = std::net::Ipv4Addr::new(127, 10, (n / 250) as u8, (n % 250 + 1) as u8);
                    let (stop, refusals, attempts) = (stop.clone(), refusals.clone(), attempts.clone());
                    tokio::spawn(async move {
                        while !stop.load(Ordering::Relaxed) {
                            attempts.fetch_add(1, Ordering::Relaxed);
                            let code = send(node, source, false).await.unwrap_or(0);
                            *refusals.lock().unwrap().entry(code).or_default() += 1;
                            // A broken sender reconnects at once; a tiny pause keeps the generator fair.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    });
                }
                started += per_step;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // The legitimate sender: one message a second during the wave and 10 s after.
    let legit = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0u32;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let until = Duration::from_secs(ramp + 10);
            let begin = Instant::now();
            while begin.elapsed() < until {
                tick.tick().await;
                let t = Instant::now();
                match send(node, std::net::Ipv4Addr::new(127, 20, 0, 1), true).await {
                    Some(250) => latencies.push(t.elapsed()),
                    _ => failures += 1,
                }
            }
            let _ = stop;
            (latencies, failures)
        })
    };
    let mut peak_rss = base_rss;
    let mut peak_fds = base_fds;
    while wave_start.elapsed() < Duration::from_secs(ramp + 5) {
        let (rss, fds) = node_stats(pid);
        peak_rss = peak_rss.max(rss);
        peak_fds = peak_fds.max(fds);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let wave_end = Instant::now();
    let _ = ramp_task.await;
    let mut recovered = None;
    while wave_end.elapsed() < Duration::from_secs(120) {
        let (_, fds) = node_stats(pid);
        if fds <= base_fds + 2 {
            recovered = Some(wave_end.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut latencies, failures) = legit.await.unwrap();
    latencies.sort();
    let pct =
        |p: f64| latencies.get(((latencies.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    println!("wave: {} zombies peak (ramp {ramp} s), {} attempts", peak_zombies, attempts.load(Ordering::Relaxed));
    println!("zombie outcomes by reply code: {:?}", refusals.lock().unwrap());
    println!(
        "legitimate: {} accepted, {failures} failed; latency p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        pct(0.5),
        pct(0.99),
        latencies.last().copied().unwrap_or_default()
    );
    println!(
        "node: baseline RSS {:.1} MiB, peak RSS {:.1} MiB; peak open descriptors {peak_fds} (baseline {base_fds})",
        base_rss as f64 / 1024.0,
        peak_rss as f64 / 1024.0
    );
    match recovered {
        Some(t) => println!("back to the baseline connection count {:?} after the wave ended", t),
        None => println!("NOT back to the baseline 120 s after the wave"),
    }
}
