//! TLS handshakes per second on one core: the node's own acceptor (`tls::FarmTls`, rustls with
//! ring, the example farm's ECDSA P-256 certificate) on a single-threaded runtime, against
//! clients on another thread that connect, complete a TLS 1.3 handshake, read the 220 and close.
//!
//! ```text
//! cargo bench -p mtac-runtime --bench tls                # 5 s
//! cargo bench -p mtac-runtime --bench tls -- --quick     # 1 s
//! ```
//!
//! The server thread does only handshakes, so its rate is the per-core figure. The clients skip
//! certificate verification (their cost is not the node's).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use rustls::pki_types::ServerName;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use mtac_runtime::relay::AnyCertificate;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let seconds = if quick { 1 } else { 5 };
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/company/tls");
    let settings = mtac_ruleset::model::Tls {
        certificate: format!("{root}/example-cert.pem"),
        key: format!("{root}/example-key.pem"),
        required: false,
        name: None,
        sni: Vec::new(),
    };
    let tls = mtac_runtime::tls::FarmTls::load(&settings).expect("the example certificate loads");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let address = listener.local_addr().unwrap();
    let handshakes = Arc::new(AtomicU64::new(0));

    // The node's side: one thread, one core.
    let served = handshakes.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let acceptor = tls.acceptor.clone();
                let served = served.clone();
                tokio::spawn(async move {
                    if let Ok(mut stream) = acceptor.accept(tcp).await {
                        served.fetch_add(1, Ordering::Relaxed);
                        let _ = stream.write_all(b"220 mx ESMTP\r\n").await;
                        let _ = stream.shutdown().await;
                    }
                });
            }
        });
    });

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let clients = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    clients.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let connector = connector.clone();
            tasks.push(tokio::spawn(async move {
                while Instant::now() < deadline {
                    let tcp = tokio::net::TcpStream::connect(address).await.unwrap();
                    let name = ServerName::try_from("smtp.acme.example").unwrap();
                    let mut tls = connector.connect(name, tcp).await.unwrap();
                    let mut greeting = [0u8; 16];
                    let _ = tls.read(&mut greeting).await;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let done = handshakes.load(Ordering::Relaxed);
    println!(
        "TLS 1.3 handshakes (ECDSA P-256, ring): {} in {seconds} s = {:.0} per second on one server core",
        done,
        done as f64 / seconds as f64
    );
}
