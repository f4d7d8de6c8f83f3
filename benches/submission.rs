//! Authenticated submissions per second through one node (in-process, one runtime thread), as
//! a mail client sends: connect, EHLO, STARTTLS (TLS 1.3, the example farm's ECDSA P-256
//! certificate), EHLO, AUTH PLAIN against the compiled credential table (Argon2id, the
//! `argon2` crate's defaults: m=19 MiB, t=2), MAIL, RCPT, a 2 KiB message into a maildir, QUIT.
//!
//!     cargo bench --bench submission                # 10 s, 16 clients
//!     cargo bench --bench submission -- --cached    # with `auth cache="10m"`: one hash per user
//!     cargo bench --bench submission -- --quick     # 2 s
//!
//! Reports submissions per second and the p50/p99 of a whole submission, and separately how
//! long the password check takes: Argon2 is slow by design, and it dominates.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

#[path = "../tests/common/bench_node.rs"]
mod bench_node;
#[path = "../tests/common/latencies.rs"]
mod latencies;

use base64::Engine;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};

const CLIENTS: usize = 16;

async fn reply<S: AsyncBufRead + Unpin>(s: &mut S) -> u16 {
    let mut code = 0;
    loop {
        let mut line = String::new();
        if s.read_line(&mut line).await.unwrap_or(0) == 0 {
            return 0;
        }
        code = line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(code);
        if line.as_bytes().get(3) != Some(&b'-') {
            return code;
        }
    }
}

async fn cmd<S: AsyncBufRead + AsyncWrite + Unpin>(s: &mut S, line: &str) -> u16 {
    s.write_all(format!("{line}\r\n").as_bytes()).await.unwrap();
    s.flush().await.unwrap();
    reply(s).await
}

async fn submit(node: SocketAddr, tls: &tokio_rustls::TlsConnector, auth: &str, body: &str) -> bool {
    let mut plain = BufReader::new(tokio::net::TcpStream::connect(node).await.unwrap());
    if reply(&mut plain).await != 220 || cmd(&mut plain, "EHLO laptop.acme.example").await != 250 {
        return false;
    }
    if cmd(&mut plain, "STARTTLS").await != 220 {
        return false;
    }
    let name = rustls::pki_types::ServerName::try_from("smtp.acme.example").unwrap();
    let Ok(stream) = tls.connect(name, plain.into_inner()).await else { return false };
    let mut s = BufReader::new(stream);
    for (line, want) in [
        ("EHLO laptop.acme.example", 250),
        (auth, 235),
        ("MAIL FROM:<alice@acme.example>", 250),
        ("RCPT TO:<bob@partner.example>", 250),
        ("DATA", 354),
        (body, 250),
    ] {
        if cmd(&mut s, line).await != want {
            return false;
        }
    }
    let _ = cmd(&mut s, "QUIT").await;
    true
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let seconds = if quick { 2 } else { 10 };
    let cached = std::env::args().any(|a| a == "--cached");
    let cache = if cached { r#"cache="10m""# } else { "" };
    let dir = tempfile::tempdir().unwrap();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/company/tls");
    let hash: String = {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let salt = SaltString::encode_b64(b"bench-salt-16byt").unwrap();
        argon2::Argon2::default().hash_password(b"correct horse", &salt).unwrap().to_string()
    };
    let policy = format!(
        r#"hostname "smtp.acme.example"
spool "{d}/spool"
farm "users" kind="submission" {{
    listen "127.0.0.1:0"
    local-domains "acme.example"
    limits {{
        connections-per-ip 1000
    }}
    tls certificate="{root}/example-cert.pem" key="{root}/example-key.pem" name="smtp.acme.example"
    auth {cache} {{
        user "alice" hash="{hash}"
    }}
    deliver maildir="{d}/Maildir"
}}
"#,
        d = dir.path().display(),
        hash = hash,
        cache = cache
    );
    let path = dir.path().join("policy.kdl");
    std::fs::write(&path, policy).unwrap();
    // The node on a runtime of its own with one thread: the per-core figure.
    let (node, server) = bench_node::start(&path, "front");

    let clients = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    clients.block_on(async move {
        let hash = hash;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(mtac_runtime::relay::AnyCertificate(provider)))
            .with_no_client_auth();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config));
        let credentials = base64::engine::general_purpose::STANDARD.encode(b"\0alice\0correct horse");
        let auth = format!("AUTH PLAIN {credentials}");
        let body = format!("Subject: report\r\n\r\n{}\r\n.", "x".repeat(76).repeat(27).as_str());

        // The password check alone, on this machine.
        let parsed = argon2::password_hash::PasswordHash::new(&hash).unwrap();
        let checks = 20;
        let timer = Instant::now();
        for _ in 0..checks {
            use argon2::password_hash::PasswordVerifier;
            argon2::Argon2::default().verify_password(b"correct horse", &parsed).unwrap();
        }
        let per_check = timer.elapsed() / checks;

        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for _ in 0..CLIENTS {
            let (tls, auth, body) = (tls.clone(), auth.clone(), body.clone());
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut failed = 0u64;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    if submit(node, &tls, &auth, &body).await {
                        latencies.push(t.elapsed());
                    } else {
                        failed += 1;
                    }
                }
                (latencies, failed)
            }));
        }
        let all = latencies::gather(tasks).await;
        let failed = all.failed;
        println!(
            "{CLIENTS} clients, node on one runtime thread (Argon2 runs on its blocking pool), {seconds} s{}",
            if cached { ", login cache on" } else { "" }
        );
        println!(
            "submissions/s {:.1}   p50 {:.1?}   p99 {:.1?}   failed {failed}   (one Argon2id check here: {per_check:.1?})",
            all.count() as f64 / seconds as f64,
            all.quantile(0.50),
            all.quantile(0.99),
        );
    });
    drop(server);
}
