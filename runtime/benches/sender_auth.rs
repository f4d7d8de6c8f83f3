//! CPU per message for sender authentication with a warm DNS cache (issue 16): what a node pays
//! for `spf`, `dkim` and `dmarc` once the sender's records are cached.
//!
//! An authoritative hickory-server on 127.0.0.1 serves `good.test`: SPF (`ip4:127.0.0.0/8`) for
//! the domain and its HELO name, an RSA-2048 DKIM key, `p=reject`. The message is 4 KiB,
//! DKIM-signed (relaxed/relaxed, the usual five headers) with a key made by `openssl genrsa`.
//! Every answer is asked once before the measurement and the server is stopped, so a lookup
//! that missed the cache would take the 2 s timeout instead of microseconds.
//!
//! ```text
//! cargo bench -p mtac-runtime --bench sender_auth -- --quick
//! ```
//!
//! - `spf_mail_and_helo`: the `spf` step at MAIL FROM (both identities, at once).
//! - `dkim_arc_dmarc_4k`: after DATA: parse, every DKIM signature, ARC, DMARC, and the
//!   Authentication-Results field.
//! - `message_4k`: both, what one message costs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

#[path = "../../tests/common/dns_server.rs"]
mod dns_server;

use base64::Engine as _;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hickory_server::proto::rr::rdata::TXT;
use hickory_server::proto::rr::RData;
use mail_auth::common::crypto::{RsaKey, Sha256};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner};
use mtac_ruleset::model::{DmarcSettings, OnFail, OnQuarantine, OnTempError, SenderAuth};
use mtac_ruleset::sender_auth::{DmarcResult, SpfResult};
use mtac_runtime::dns::{Dns, DnsSettings};
use mtac_runtime::sender_auth::Verifier;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs1KeyDer};
use std::hint::black_box;
use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

const SIZE: usize = 4096;

fn txt(text: &str) -> RData {
    let chunks: Vec<String> = text.as_bytes().chunks(255).map(|c| String::from_utf8(c.to_vec()).unwrap()).collect();
    RData::TXT(TXT::new(chunks))
}

/// An RSA-2048 key from openssl: the signing key and the DKIM record.
fn rsa_key(dir: &std::path::Path) -> (RsaKey<Sha256>, String) {
    let file = dir.join("key.der");
    let mut genpkey = Command::new("openssl");
    genpkey.args(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-outform", "DER", "-out"]);
    assert!(genpkey.arg(&file).output().unwrap().status.success());
    let der = Command::new("openssl")
        .args(["pkey", "-inform", "DER", "-pubout", "-outform", "DER", "-in"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(der.status.success());
    let public = base64::engine::general_purpose::STANDARD.encode(&der.stdout);
    // openssl 3 writes a DER private key as PKCS#1 (its PEM output is PKCS#8).
    let pkcs1 = PrivatePkcs1KeyDer::from(std::fs::read(&file).unwrap());
    let key = RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs1(pkcs1)).unwrap();
    (key, format!("v=DKIM1; k=rsa; p={public}"))
}

/// A 4 KiB message from `a@good.test`, signed by good.test.
fn message(key: RsaKey<Sha256>) -> Vec<u8> {
    let mut message = b"From: A <a@good.test>\r\nTo: u@example.test\r\nSubject: bench\r\n\
Date: Mon, 01 Jan 2024 00:00:00 +0000\r\nMessage-ID: <bench@good.test>\r\n\r\n"
        .to_vec();
    let line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n";
    while message.len() + line.len() <= SIZE {
        message.extend_from_slice(line);
    }
    let signer = DkimSigner::from_key(key)
        .domain("good.test")
        .selector("s1")
        .headers(["From", "To", "Subject", "Date", "Message-ID"])
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed);
    let signature = signer.sign(&message).unwrap().to_header();
    let mut signed = signature.into_bytes();
    signed.extend_from_slice(&message);
    signed
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let (key, record) = rsa_key(dir.path());
    let message = message(key);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let records = vec![
        ("good".to_owned(), txt("v=spf1 ip4:127.0.0.0/8 -all")),
        ("mail.good".to_owned(), txt("v=spf1 ip4:127.0.0.0/8 -all")),
        ("_dmarc.good".to_owned(), txt("v=DMARC1; p=reject")),
        ("s1._domainkey.good".to_owned(), txt(&record)),
    ];
    let mut server = rt.block_on(dns_server::serve(vec![("test.", records)]));
    let settings = DnsSettings { nameservers: vec![server.addr], timeout: Duration::from_secs(2), cache_size: 1024 };
    let verifier = Verifier::new(&Dns::new(&settings).unwrap());
    let ip: IpAddr = "127.0.0.9".parse().unwrap();
    // DKIM, ARC and DMARC (whose settings do not change the work done).
    let checks = SenderAuth {
        spf: None,
        dkim: true,
        dmarc: Some(DmarcSettings {
            reject: OnFail::Refuse,
            quarantine: OnQuarantine::Header,
            temperror: OnTempError::Pass,
            never_refuse: None,
            trust_arc: None,
        }),
    };
    let one = || async {
        let spf = verifier.spf(ip, "mail.good.test", "mx.bench.test", "a@good.test", true).await;
        let verified = verifier.message(&message, ip, Some(&spf), &checks, "mx.bench.test").await;
        (spf, verified)
    };
    let (spf, verified) = rt.block_on(one());
    assert_eq!(spf.result(), SpfResult::Pass, "{spf:?}");
    assert_eq!(verified.facts.dmarc.as_ref().map(|d| d.result), Some(DmarcResult::Pass), "{}", verified.header);
    assert!(verified.header.contains("dkim=pass"), "{}", verified.header);
    // From here every answer must come from the cache: a miss would take the 2 s timeout.
    rt.block_on(server.server.shutdown_gracefully()).unwrap();

    let mut group = c.benchmark_group("sender_auth_warm_cache");
    group.throughput(Throughput::Elements(1));
    group.bench_function("spf_mail_and_helo", |b| {
        b.iter(|| rt.block_on(verifier.spf(ip, "mail.good.test", "mx.bench.test", "a@good.test", true)))
    });
    group.bench_function("dkim_arc_dmarc_4k", |b| {
        b.iter(|| rt.block_on(verifier.message(black_box(&message), ip, Some(&spf), &checks, "mx.bench.test")))
    });
    group.bench_function("message_4k", |b| b.iter(|| black_box(rt.block_on(one()))));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
