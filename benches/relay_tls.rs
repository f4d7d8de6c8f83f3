//! CPU per relayed message with STARTTLS to the back end (`backend … tls="required"`, verified
//! against a CA file) against the same relay in clear text (`tls="off"`), measured in one run:
//! the node's threads' CPU time (user + system, from /proc/self/task) over a batch of 4 KiB
//! messages from 4 concurrent clients, one message per session. The back end is the test sink
//! (tests/it/sink.rs) offering STARTTLS with a certificate signed by a throwaway CA.
//!
//!     cargo bench --bench relay_tls              # 2,000 messages per mode
//!     cargo bench --bench relay_tls -- --quick   # 300

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing, dead_code)]

#[path = "../tests/it/sink.rs"]
mod sink;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
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

/// CPU seconds (user + system) of this process's threads whose name starts with `prefix`.
fn thread_cpu(prefix: &str) -> f64 {
    let ticks = 100.0; // USER_HZ on Linux
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        if !stat[open + 1..close].starts_with(prefix) {
            continue;
        }
        let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
        // utime and stime are fields 14 and 15 of stat; here, after "pid (comm) ", 12 and 13.
        total += fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    }
    total as f64 / ticks
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

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let messages: usize = if quick { 300 } else { 2000 };
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
    let clients = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("client")
        .enable_all()
        .build()
        .unwrap();
    println!("{messages} messages of 4 KiB per mode, 4 clients, one message per session; node on one runtime thread");
    let mut figures = Vec::new();
    for (mode, attributes) in [
        ("clear text", r#"tls="off""#.to_owned()),
        ("STARTTLS, verified", format!(r#"tls="required" ca="{ca}" name="mx.test.example""#)),
    ] {
        let policy = format!(
            r#"hostname "mx.bench.example"
spool "{d}/spool-{n}"
farm "mx" kind="inbound-mx" {{
    listen "127.0.0.1:0"
    local-domains "example.test"
    limits {{ connections-per-ip 1000; }}
    screen {{ pregreet #false; }}
    relay {{ backend "smtp://{sink}" {attributes}; }}
}}
"#,
            d = dir.path().display(),
            n = figures.len(),
            sink = sink.addr
        );
        let path = dir.path().join(format!("policy-{}.kdl", figures.len()));
        std::fs::write(&path, policy).unwrap();
        let compiled = mtac_compiler::compile_path(&path);
        let Some(output) = compiled.output else {
            panic!("{:?}", compiled.diagnostics.list.iter().map(|d| &d.message).collect::<Vec<_>>());
        };
        let bytes = output.bytes;
        let name = format!("front{}", figures.len());
        let server = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(&name)
            .enable_all()
            .build()
            .unwrap();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        server.spawn(async move {
            let loader: mtac_runtime::Loader =
                Arc::new(move || mtac_ruleset::Ruleset::from_vec(bytes.clone()).map_err(|e| e.to_string()));
            let node = mtac_runtime::Node::new(loader.clone()).unwrap();
            let listeners = node.bind(mtac_runtime::AdminAddress::Off).await.unwrap();
            addr_tx.send(listeners.smtp[0].0.local_addr().unwrap()).unwrap();
            let config = mtac_runtime::RunConfig {
                loader,
                watch: None,
                grace: Duration::from_secs(1),
                admin: mtac_runtime::AdminAddress::Off,
            };
            node.run_until(listeners, config, std::future::pending()).await.unwrap();
        });
        let node = addr_rx.recv().unwrap();
        let body = Arc::new(body.clone());
        // Warm up (the back end's connection, the resolver of nothing, the allocator).
        clients.block_on(one_message(node, &body));
        let before = thread_cpu(&name);
        let started = std::time::Instant::now();
        let sent = clients.block_on(async {
            let mut tasks = Vec::new();
            for _ in 0..4 {
                let body = body.clone();
                tasks.push(tokio::spawn(async move {
                    let mut ok = 0usize;
                    for _ in 0..messages / 4 {
                        ok += usize::from(one_message(node, &body).await);
                    }
                    ok
                }));
            }
            let mut ok = 0;
            for t in tasks {
                ok += t.await.unwrap();
            }
            ok
        });
        let elapsed = started.elapsed();
        let cpu = thread_cpu(&name) - before;
        assert_eq!(sent, messages / 4 * 4, "every message was relayed");
        let per_message = cpu / sent as f64 * 1e6;
        println!(
            "{mode:20} {per_message:7.0} µs CPU/message at the node   {:6.0} msg/s   ({sent} messages, {cpu:.2} s CPU)",
            sent as f64 / elapsed.as_secs_f64()
        );
        figures.push(per_message);
        drop(server);
    }
    let tls_share = sink.messages.lock().unwrap().iter().filter(|m| m.tls).count();
    println!(
        "STARTTLS costs {:+.0} µs per message ({:+.0}%); {tls_share} messages crossed encrypted",
        figures[1] - figures[0],
        (figures[1] / figures[0] - 1.0) * 100.0
    );
}
