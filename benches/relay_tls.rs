//! CPU per relayed message with STARTTLS to the back end (`backend … tls="required"`, verified
//! against a CA file) against the same relay in clear text (`tls="off"`), measured in one run:
//! the node's threads' CPU time (user + system, from /proc/self/task) over a batch of 4 KiB
//! messages from 4 concurrent clients, one message per session. The back end is the test sink
//! (tests/it/sink.rs) offering STARTTLS with a certificate signed by a throwaway CA.
//!
//!     cargo bench --bench relay_tls              # 2,000 messages per mode
//!     cargo bench --bench relay_tls -- --quick   # 300

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, dead_code)]

#[path = "../tests/common/bench_node.rs"]
mod bench_node;
#[path = "../tests/it/sink.rs"]
mod sink;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// A throwaway CA and a leaf for mx.test.example signed by it, in `dir`: (ca, cert, key).
fn certificates(dir: &Path) -> (String, String, String) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir).output().expect("the openssl command");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    run(&[&["req", "-x509"][..], &ec, &["-days", "2", "-subj", "/CN=bench CA", "-keyout", "ca.key", "-out", "ca.pem"]]
        .concat());
    run(&[&["req"][..], &ec, &["-subj", "/CN=mx.test.example", "-keyout", "key.pem", "-out", "leaf.csr"]].concat());
    std::fs::write(dir.join("leaf.ext"), "subjectAltName=DNS:mx.test.example\nbasicConstraints=CA:FALSE\n").unwrap();
    run(&["x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "2"]
        .into_iter()
        .chain(["-extfile", "leaf.ext", "-out", "cert.pem"])
        .collect::<Vec<_>>());
    let path = |name: &str| dir.join(name).display().to_string();
    (path("ca.pem"), path("cert.pem"), path("key.pem"))
}

/// CPU seconds of this process's threads whose name starts with `prefix`: the scheduler's
/// `se.sum_exec_runtime` (milliseconds with nanosecond precision), not stat's 10 ms ticks, which
/// round a round's few hundred milliseconds by several percent.
fn thread_cpu(prefix: &str) -> f64 {
    let mut total_ms = 0.0;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(comm) = std::fs::read_to_string(task.path().join("comm")) else { continue };
        if !comm.starts_with(prefix) {
            continue;
        }
        let Ok(sched) = std::fs::read_to_string(task.path().join("sched")) else { continue };
        let runtime = sched.lines().find_map(|l| l.strip_prefix("se.sum_exec_runtime"));
        total_ms += runtime.and_then(|r| r.trim_start_matches([' ', ':']).trim().parse::<f64>().ok()).unwrap();
    }
    total_ms / 1e3
}

async fn reply(s: &mut BufReader<tokio::net::TcpStream>) -> u16 {
    loop {
        let mut line = String::new();
        if s.read_line(&mut line).await.unwrap_or(0) == 0 {
            return 0;
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
        }
    }
}

async fn one_message(node: SocketAddr, body: &[u8]) -> bool {
    let mut s = BufReader::new(tokio::net::TcpStream::connect(node).await.unwrap());
    if reply(&mut s).await != 220 {
        return false;
    }
    for (line, want) in [
        ("EHLO bench.example", 250),
        ("MAIL FROM:<a@bench.example>", 250),
        ("RCPT TO:<u@example.test>", 250),
        ("DATA", 354),
    ] {
        s.get_mut().write_all(format!("{line}\r\n").as_bytes()).await.unwrap();
        if reply(&mut s).await != want {
            return false;
        }
    }
    s.get_mut().write_all(body).await.unwrap();
    let ok = reply(&mut s).await == 250;
    let _ = s.get_mut().write_all(b"QUIT\r\n").await;
    ok
}

/// Start a node relaying to the sink with `attributes` on its back end, on a runtime of one
/// thread named `name`: its address, and the runtime (dropping it stops the node).
fn start_node(dir: &Path, name: &str, sink: SocketAddr, attributes: &str) -> (SocketAddr, tokio::runtime::Runtime) {
    let policy = format!(
        r#"hostname "mx.bench.example"
spool "{d}/spool-{name}"
farm "mx" kind="inbound-mx" {{
    listen "127.0.0.1:0"
    local-domains "example.test"
    limits {{ connections-per-ip 1000; }}
    screen {{ pregreet #false; }}
    relay {{ backend "smtp://{sink}" {attributes}; }}
}}
"#,
        d = dir.display(),
    );
    let path = dir.join(format!("policy-{name}.kdl"));
    std::fs::write(&path, policy).unwrap();
    bench_node::start(&path, name)
}

/// What one mode cost over all its rounds.
#[derive(Default)]
struct Tally {
    messages: usize,
    cpu: f64,
    seconds: f64,
    backend_connections: u32,
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    // Rounds alternate the two modes, so a machine that speeds up or slows down during the run
    // (frequency, another process, the allocator warming) weighs on both alike.
    let (rounds, per_round) = if quick { (3, 100) } else { (10, 400) };
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = certificates(dir.path());
    let backend =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).thread_name("sink").enable_all().build().unwrap();
    let sink =
        backend.block_on(sink::Sink::start(sink::Behaviour { starttls: Some((cert, key)), ..Default::default() }));
    let mut body = b"Subject: bench\r\n\r\n".to_vec();
    while body.len() < 4096 {
        body.extend_from_slice(b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n");
    }
    body.extend_from_slice(b".\r\n");
    let body = Arc::new(body);
    let clients = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("client")
        .enable_all()
        .build()
        .unwrap();
    let modes = [
        ("clear text", "plain", r#"tls="off""#.to_owned()),
        ("STARTTLS, verified", "tls", format!(r#"tls="required" ca="{ca}" name="mx.test.example""#)),
    ];
    let nodes: Vec<_> =
        modes.iter().map(|(_, name, attributes)| start_node(dir.path(), name, sink.addr, attributes)).collect();
    for (node, _) in &nodes {
        // Warm up: the back end's first connection (and handshake), the allocator.
        assert!(clients.block_on(one_message(*node, &body)));
    }
    println!(
        "{rounds} rounds of {per_round} messages of 4 KiB per mode, modes alternating; 4 clients, one message per \
         session; each node on one runtime thread"
    );
    let mut tallies: Vec<Tally> = modes.iter().map(|_| Tally::default()).collect();
    for _ in 0..rounds {
        for (i, (node, _)) in nodes.iter().enumerate() {
            let node = *node;
            let connections_before = *sink.connections.lock().unwrap();
            let before = thread_cpu(modes[i].1);
            let started = std::time::Instant::now();
            let sent = clients.block_on(async {
                let tasks: Vec<_> = (0..4)
                    .map(|_| {
                        let body = body.clone();
                        tokio::spawn(async move {
                            let mut ok = 0usize;
                            for _ in 0..per_round / 4 {
                                ok += usize::from(one_message(node, &body).await);
                            }
                            ok
                        })
                    })
                    .collect();
                let mut ok = 0;
                for t in tasks {
                    ok += t.await.unwrap();
                }
                ok
            });
            let tally = &mut tallies[i];
            tally.seconds += started.elapsed().as_secs_f64();
            tally.cpu += thread_cpu(modes[i].1) - before;
            tally.messages += sent;
            tally.backend_connections += *sink.connections.lock().unwrap() - connections_before;
            assert_eq!(sent, per_round / 4 * 4, "every message was relayed");
        }
    }
    let mut figures = Vec::new();
    for ((mode, _, _), t) in modes.iter().zip(&tallies) {
        let per_message = t.cpu / t.messages as f64 * 1e6;
        println!(
            "{mode:20} {per_message:7.1} µs CPU/message at the node  {:6.0} msg/s  ({} messages, {:.3} s CPU, \
             {} back-end connections)",
            t.messages as f64 / t.seconds,
            t.messages,
            t.cpu,
            t.backend_connections
        );
        figures.push(per_message);
    }
    let tls_share = sink.messages.lock().unwrap().iter().filter(|m| m.tls).count();
    println!(
        "STARTTLS costs {:+.1} µs per message ({:+.1}%); {tls_share} messages crossed encrypted",
        figures[1] - figures[0],
        (figures[1] / figures[0] - 1.0) * 100.0
    );
    drop(nodes);
}
