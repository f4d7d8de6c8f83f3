//! Sender authentication against real parts (issue 16): a DNS zone on loopback (hickory-server)
//! with SPF, DKIM and DMARC records, messages signed and ARC-sealed by an independent
//! implementation (Debian's python3-dkim, run as /usr/bin/python3), a real node over TCP, and
//! what the back end receives (`Sink`). Clients bind to distinct 127.x.y.z addresses.

use crate::dnsbl::dns_server;

use crate::support::{code, relay_policy, sample, Behaviour, Client, Sink, TestNode};
use base64::Engine as _;
use hickory_server::proto::rr::rdata::TXT;
use hickory_server::proto::rr::RData;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Signs (`sign`) or ARC-seals (`arc`) the message on stdin with python3-dkim.
const SIGNER: &str = r#"
import sys, dkim
mode, selector, domain, keyfile, alg = sys.argv[1:6]
message = sys.stdin.buffer.read()
key = open(keyfile, 'rb').read().strip()
headers = [b'from', b'to', b'subject', b'date', b'message-id']
if mode == 'sign':
    out = dkim.sign(message, selector.encode(), domain.encode(), key, signature_algorithm=alg.encode(),
                    include_headers=headers)
    sys.stdout.buffer.write(out + message)
else:
    out = dkim.arc_sign(message, selector.encode(), domain.encode(), key, sys.argv[6].encode(),
                        include_headers=headers)
    sys.stdout.buffer.write(b''.join(out) + message)
"#;

/// A new Ed25519 key: the private seed (base64, what dkimpy signs with) and the public key.
const ED25519_KEY: &str = r#"
import base64, nacl.signing
key = nacl.signing.SigningKey.generate()
print(base64.b64encode(bytes(key)).decode(), base64.b64encode(bytes(key.verify_key)).decode())
"#;

fn python(script: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut child = Command::new("/usr/bin/python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("/usr/bin/python3 (with python3-dkim) is needed: .ci/run installs it");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python3-dkim: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// A DKIM key: its file (what the signer reads) and the TXT record to publish.
struct Key {
    file: PathBuf,
    alg: &'static str,
    record: String,
}

fn rsa_key(dir: &Path, name: &str) -> Key {
    let file = dir.join(format!("{name}.pem"));
    let status = Command::new("openssl").args(["genrsa", "-out"]).arg(&file).arg("2048").stderr(Stdio::null()).status();
    assert!(status.unwrap().success());
    let der = Command::new("openssl").args(["rsa", "-pubout", "-outform", "DER", "-in"]).arg(&file).output().unwrap();
    assert!(der.status.success());
    let public = base64::engine::general_purpose::STANDARD.encode(&der.stdout);
    Key { file, alg: "rsa-sha256", record: format!("v=DKIM1; k=rsa; p={public}") }
}

fn ed25519_key(dir: &Path, name: &str) -> Key {
    let out = String::from_utf8(python(ED25519_KEY, &[], b"")).unwrap();
    let (private, public) = out.trim().split_once(' ').unwrap();
    let file = dir.join(format!("{name}.ed25519"));
    std::fs::write(&file, private).unwrap();
    Key { file, alg: "ed25519-sha256", record: format!("v=DKIM1; k=ed25519; p={public}") }
}

fn sign(message: &[u8], selector: &str, domain: &str, key: &Key) -> Vec<u8> {
    python(SIGNER, &["sign", selector, domain, key.file.to_str().unwrap(), key.alg], message)
}

fn arc_seal(message: &[u8], selector: &str, domain: &str, key: &Key) -> Vec<u8> {
    python(SIGNER, &["arc", selector, domain, key.file.to_str().unwrap(), key.alg, domain], message)
}

/// A TXT record, split in 255-byte strings as DNS requires.
fn txt(text: &str) -> RData {
    let chunks: Vec<String> = text.as_bytes().chunks(255).map(|c| String::from_utf8(c.to_vec()).unwrap()).collect();
    RData::TXT(TXT::new(chunks))
}

struct Keys {
    _dir: tempfile::TempDir,
    good_rsa: Key,
    good_ed: Key,
    bank: Key,
    fwd: Key,
}

/// The zone: good.test (SPF for loopback, DKIM RSA and Ed25519, p=reject), bank.test (SPF for
/// 192.0.2.0/24 only, DKIM, p=reject), fwd.test (a forwarder: SPF for loopback, its ARC key).
async fn zone() -> (dns_server::TestServer, Keys) {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys {
        good_rsa: rsa_key(dir.path(), "good"),
        good_ed: ed25519_key(dir.path(), "good-ed"),
        bank: rsa_key(dir.path(), "bank"),
        fwd: rsa_key(dir.path(), "fwd"),
        _dir: dir,
    };
    let records = vec![
        ("good".to_owned(), txt("v=spf1 ip4:127.0.0.0/8 -all")),
        ("_dmarc.good".to_owned(), txt("v=DMARC1; p=reject")),
        ("rsa._domainkey.good".to_owned(), txt(&keys.good_rsa.record)),
        ("ed._domainkey.good".to_owned(), txt(&keys.good_ed.record)),
        ("bank".to_owned(), txt("v=spf1 ip4:192.0.2.0/24 -all")),
        ("_dmarc.bank".to_owned(), txt("v=DMARC1; p=reject")),
        ("s1._domainkey.bank".to_owned(), txt(&keys.bank.record)),
        ("fwd".to_owned(), txt("v=spf1 ip4:127.0.0.0/8 -all")),
        ("arc._domainkey.fwd".to_owned(), txt(&keys.fwd.record)),
        ("mail.fwd".to_owned(), dns_server::a("127.0.9.4")),
    ];
    (dns_server::serve(vec![("test.", records)]).await, keys)
}

fn policy(nameserver: SocketAddr, extra: &str) -> String {
    relay_policy(extra).replace(
        "hostname \"mx.test.example\"",
        &format!("hostname \"mx.test.example\"\ndns timeout=\"1s\" {{\n    nameserver \"{nameserver}\"\n}}"),
    )
}

fn message(from: &str, subject: &str) -> Vec<u8> {
    format!(
        "From: {from}\r\nTo: u@example.test\r\nSubject: {subject}\r\nDate: Mon, 01 Jan 2024 00:00:00 +0000\r\n\
         Message-ID: <{subject}@test>\r\n\r\nHello.\r\n"
    )
    .into_bytes()
}

/// One transaction from `source`; the replies to MAIL FROM and (when MAIL passed) to the data.
async fn deliver(addr: SocketAddr, source: &str, helo: &str, sender: &str, data: &[u8]) -> (String, String) {
    let mut c = Client::connect_from(addr, source).await;
    assert_eq!(code(&c.reply().await), 220);
    c.cmd(&format!("EHLO {helo}")).await;
    let mail = c.cmd(&format!("MAIL FROM:<{sender}>")).await;
    if code(&mail) != 250 {
        return (mail, String::new());
    }
    assert_eq!(code(&c.cmd("RCPT TO:<u@example.test>").await), 250);
    assert_eq!(code(&c.cmd("DATA").await), 354);
    c.send(data).await;
    (mail, c.cmd(".").await)
}

/// The node's Authentication-Results fields in what the back end got (unfolded).
fn our_results(data: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(data);
    let head = text.split("\r\n\r\n").next().unwrap_or("").replace("\r\n\t", " ").replace("\r\n ", " ");
    head.lines()
        .filter(|l| l.to_ascii_lowercase().starts_with("authentication-results: mx.test.example"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aligned_mail_passes_with_one_authentication_results_and_the_forged_one_gone() {
    let (server, keys) = zone().await;
    let sink = Sink::start(Behaviour::default()).await;
    let node = TestNode::start(&policy(server.addr, "spf\n    dmarc"), Some(sink.addr)).await;
    let signed = sign(
        &sign(&message("a@good.test", "hello"), "rsa", "good.test", &keys.good_rsa),
        "ed",
        "good.test",
        &keys.good_ed,
    );
    // The sender's own "verdict", under our authserv-id, on top of a genuinely signed message.
    let mut data = b"Authentication-Results: mx.test.example; spf=pass; dkim=pass; dmarc=pass (forged)\r\n".to_vec();
    data.extend_from_slice(&signed);
    let (mail, end) = deliver(node.addr, "127.0.9.1", "mail.good.test", "a@good.test", &data).await;
    assert_eq!(code(&mail), 250, "{mail}");
    assert_eq!(code(&end), 250, "{end}");
    let got = sink.messages();
    let results = our_results(&got[0].data);
    assert_eq!(results.len(), 1, "one field of ours, the forged one gone: {results:?}");
    let ar = &results[0];
    assert!(!ar.contains("forged"), "{ar}");
    assert!(ar.contains("spf=pass") && ar.contains("smtp.mailfrom=a@good.test"), "{ar}");
    assert!(ar.contains("dkim=pass header.i=@good.test header.s=rsa"), "RSA: {ar}");
    assert!(ar.contains("dkim=pass header.i=@good.test header.s=ed"), "Ed25519: {ar}");
    assert!(ar.contains("dmarc=pass header.from=good.test"), "{ar}");
    let m = node.metrics().await;
    assert_eq!(sample(&m, r#"mtac_sender_auth_total{farm="mx",check="dkim",result="pass"}"#), 2.0, "{m}");
    assert_eq!(sample(&m, r#"mtac_sender_auth_total{farm="mx",check="dmarc",result="pass"}"#), 1.0, "{m}");
    assert_eq!(sample(&m, r#"mtac_sender_auth_total{farm="mx",check="spf",result="pass"}"#), 1.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_p_reject_sender_is_refused_after_data_or_at_mail_with_spf_refuse() {
    let (server, _keys) = zone().await;
    let sink = Sink::start(Behaviour::default()).await;
    // SPF fails (bank.test sends from 192.0.2.0/24 only), no signature: DMARC fails, p=reject.
    let node = TestNode::start(&policy(server.addr, "spf\n    dmarc"), Some(sink.addr)).await;
    let data = message("ceo@bank.test", "wire");
    let (mail, end) = deliver(node.addr, "127.0.9.2", "mail.forger.test", "ceo@bank.test", &data).await;
    assert_eq!(code(&mail), 250, "SPF fail is recorded by default: {mail}");
    assert!(end.starts_with("550 5.7.1"), "DMARC p=reject refuses after DATA: {end}");
    assert!(end.contains("bank.test"), "{end}");
    assert!(sink.messages().is_empty());
    // Issue 16 review: a second From field, or a second domain in it, was DMARC `none` (no one
    // author for mail-auth) and relayed; `From :` (old syntax mail clients show) is read.
    for (how, forged) in [
        ("a blank before the colon", "From : ceo@bank.test\r\n"),
        ("two From fields", "From: a@forger.test\r\nFrom: ceo@bank.test\r\n"),
        ("two domains in one", "From: a@forger.test, ceo@bank.test\r\n"),
    ] {
        let data =
            String::from_utf8(message("ceo@bank.test", "wire")).unwrap().replace("From: ceo@bank.test\r\n", forged);
        let (_, end) = deliver(node.addr, "127.0.9.2", "mail.forger.test", "a@forger.test", data.as_bytes()).await;
        assert!(end.starts_with("550 5.7.1"), "{how}: {end}");
    }
    assert!(sink.messages().is_empty());
    // The operator's word: refuse SPF fail at MAIL FROM (RFC 7372).
    let node = TestNode::start(&policy(server.addr, "spf fail=\"refuse\""), Some(sink.addr)).await;
    let (mail, _) = deliver(node.addr, "127.0.9.2", "mail.forger.test", "ceo@bank.test", &data).await;
    assert!(mail.starts_with("550 5.7.23"), "{mail}");
    // A never-refuse domain is relayed, its verdict recorded.
    let extra = "dmarc { never-refuse \"bank.test\"; }";
    let node = TestNode::start(&policy(server.addr, extra), Some(sink.addr)).await;
    let (_, end) = deliver(node.addr, "127.0.9.2", "mail.forger.test", "ceo@bank.test", &data).await;
    assert_eq!(code(&end), 250, "{end}");
    let ar = our_results(&sink.messages()[0].data).join("\n");
    assert!(ar.contains("dmarc=fail") && ar.contains("policy.dmarc=reject"), "{ar}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_body_fails_dkim() {
    let (server, keys) = zone().await;
    let sink = Sink::start(Behaviour::default()).await;
    let node = TestNode::start(&policy(server.addr, "dkim"), Some(sink.addr)).await;
    let signed = sign(&message("a@good.test", "tampered"), "rsa", "good.test", &keys.good_rsa);
    let tampered = String::from_utf8(signed).unwrap().replace("Hello.", "Pay me.").into_bytes();
    let (_, end) = deliver(node.addr, "127.0.9.3", "mail.good.test", "a@good.test", &tampered).await;
    assert_eq!(code(&end), 250, "DKIM alone records: {end}");
    let ar = our_results(&sink.messages()[0].data).join("\n");
    assert!(ar.contains("dkim=fail"), "{ar}");
    assert!(!ar.contains("spf="), "no spf node, no SPF verdict: {ar}");
}

/// What the list at fwd.test does: records what it verified when it got `message` (its
/// Authentication-Results, which python3-dkim copies into the ARC-Authentication-Results),
/// changes the subject (the author's signature breaks) and seals it.
fn forward_through_list(message: &[u8], results: &str, keys: &Keys) -> Vec<u8> {
    let listed = String::from_utf8(message.to_vec()).unwrap().replace("Subject: news", "Subject: [list] news");
    let with_results = format!("Authentication-Results: fwd.test; {results}\r\n{listed}");
    arc_seal(with_results.as_bytes(), "arc", "fwd.test", &keys.fwd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_with_a_valid_arc_chain_from_a_trusted_sealer_is_not_refused() {
    let (server, keys) = zone().await;
    let sink = Sink::start(Behaviour::default()).await;
    // bank.test signs; the list verified it (dmarc=pass for bank.test), broke the signature
    // and sealed; then relays it from its own address.
    let original = sign(&message("ceo@bank.test", "news"), "s1", "bank.test", &keys.bank);
    let sealed = forward_through_list(
        &original,
        "dkim=pass header.d=bank.test; dmarc=pass (p=reject) header.from=bank.test",
        &keys,
    );
    let extra = "spf\n    dmarc { trust-arc \"fwd.test\"; }";
    let node = TestNode::start(&policy(server.addr, extra), Some(sink.addr)).await;
    let (_, end) = deliver(node.addr, "127.0.9.4", "mail.fwd.test", "bounces@fwd.test", &sealed).await;
    assert_eq!(code(&end), 250, "a trusted sealer vouches for the forward: {end}");
    let ar = our_results(&sink.messages()[0].data).join("\n");
    assert!(ar.contains("arc=pass"), "{ar}");
    assert!(ar.contains("dmarc=fail"), "DMARC still fails, and says so: {ar}");
    // Without trust in the sealer, the bank's p=reject holds.
    let node = TestNode::start(&policy(server.addr, "spf\n    dmarc"), Some(sink.addr)).await;
    let (_, end) = deliver(node.addr, "127.0.9.4", "mail.fwd.test", "bounces@fwd.test", &sealed).await;
    assert!(end.starts_with("550 5.7.1"), "{end}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgery_sealed_by_a_trusted_sealer_is_still_refused() {
    let (server, keys) = zone().await;
    let sink = Sink::start(Behaviour::default()).await;
    // Anyone who can send through the list can have it seal a forgery: the list saw the forged
    // bank.test message fail, said so in its results, and sealed it all the same. The seal is
    // valid; what it vouches for is a failure.
    let forged = message("ceo@bank.test", "news");
    let extra = "spf\n    dmarc { trust-arc \"fwd.test\"; }";
    let node = TestNode::start(&policy(server.addr, extra), Some(sink.addr)).await;
    for results in [
        "spf=fail smtp.mailfrom=bank.test; dkim=none; dmarc=fail (p=reject) header.from=bank.test",
        // No DMARC verdict at all, or a pass for another domain (the list's own), is no pass.
        "spf=pass smtp.mailfrom=fwd.test",
        "dmarc=pass header.from=fwd.test",
        // A pass only inside a comment.
        "dmarc=fail (dmarc=pass header.from=bank.test) header.from=bank.test",
    ] {
        let sealed = forward_through_list(&forged, results, &keys);
        let (_, end) = deliver(node.addr, "127.0.9.4", "mail.fwd.test", "bounces@fwd.test", &sealed).await;
        assert!(end.starts_with("550 5.7.1"), "sealed with `{results}`: {end}");
    }
    assert!(sink.messages().is_empty(), "no forgery reached the store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_timeout_is_a_temperror_that_defers_or_passes_never_a_5xx() {
    // A nameserver that never answers.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let ns = silent.local_addr().unwrap();
    let sink = Sink::start(Behaviour::default()).await;
    let node = TestNode::start(&policy(ns, "spf temperror=\"defer\""), Some(sink.addr)).await;
    let mut c = Client::connect_from(node.addr, "127.0.9.5").await;
    assert_eq!(code(&c.reply().await), 220);
    c.cmd("EHLO mail.good.test").await;
    let asked = std::time::Instant::now();
    let mail = c.cmd("MAIL FROM:<a@good.test>").await;
    let waited = asked.elapsed();
    assert!(mail.starts_with("451 4.7.24"), "{mail}");
    // HELO's and MAIL FROM's SPF checks (`helo` is on by default) run at once: a dead resolver
    // holds MAIL for one DNS timeout (1s), not one per identity.
    assert!(waited < std::time::Duration::from_millis(1700), "MAIL answered after {waited:?}");
    drop(c);
    // Defaults: SPF and DMARC record temperror and the message goes through.
    let node = TestNode::start(&policy(ns, "spf\n    dmarc"), Some(sink.addr)).await;
    let (mail, end) =
        deliver(node.addr, "127.0.9.5", "mail.good.test", "a@good.test", &message("a@good.test", "t")).await;
    assert_eq!(code(&mail), 250, "{mail}");
    assert_eq!(code(&end), 250, "{end}");
    let ar = our_results(&sink.messages()[0].data).join("\n");
    assert!(ar.contains("spf=temperror"), "{ar}");
    // DMARC told to defer on a DNS failure: 451, never 550.
    let node = TestNode::start(&policy(ns, "dmarc temperror=\"defer\""), Some(sink.addr)).await;
    let (_, end) = deliver(node.addr, "127.0.9.5", "mail.good.test", "a@good.test", &message("a@good.test", "t")).await;
    assert!(end.starts_with("451 4.7.1"), "{end}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_first_five_signatures_are_checked() {
    let (server, keys) = zone().await;
    let sink = Sink::start(Behaviour::default()).await;
    let node = TestNode::start(&policy(server.addr, "dkim"), Some(sink.addr)).await;
    // Each signature costs a DNS lookup and an RSA check: a sender cannot make the node do
    // eight of them for one message.
    let mut signed = message("a@good.test", "many");
    for _ in 0..8 {
        signed = sign(&signed, "rsa", "good.test", &keys.good_rsa);
    }
    let (_, end) = deliver(node.addr, "127.0.9.3", "mail.good.test", "a@good.test", &signed).await;
    assert_eq!(code(&end), 250, "{end}");
    let ar = our_results(&sink.messages()[0].data).join("\n");
    assert_eq!(ar.matches("dkim=pass").count(), 5, "{ar}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_copy_verified_in_memory_counts_against_the_spool_budget() {
    let (server, _keys) = zone().await;
    let sink = Sink::start(Behaviour::default()).await;
    // 700 KB: it fits a 1 MiB budget once (in the spool), not twice (spool and verifier).
    let mut big = String::from_utf8(message("a@good.test", "big")).unwrap();
    let line = format!("{}\r\n", "x".repeat(68));
    big.push_str(&line.repeat(700_000 / line.len()));
    let budget = |extra: &str| policy(server.addr, extra).replace("/spool\"", "/spool\" max-bytes=\"1MiB\"");
    let node = TestNode::start(&budget("dkim"), Some(sink.addr)).await;
    let (_, end) = deliver(node.addr, "127.0.9.3", "mail.good.test", "a@good.test", big.as_bytes()).await;
    assert!(end.starts_with("452 4.3.1"), "verifying would double the bytes in flight: {end}");
    assert!(sink.messages().is_empty());
    // The budget alone holds it: without verification the message goes through.
    let node = TestNode::start(&budget(""), Some(sink.addr)).await;
    let (_, end) = deliver(node.addr, "127.0.9.3", "mail.good.test", "a@good.test", big.as_bytes()).await;
    assert_eq!(code(&end), 250, "{end}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dkim_false_beside_dmarc_leaves_dmarc_to_spf_alone() {
    let (server, keys) = zone().await;
    let sink = Sink::start(Behaviour::default()).await;
    // bank.test signs its mail, but this client is not in bank.test's SPF record.
    let signed = sign(&message("ceo@bank.test", "signed"), "s1", "bank.test", &keys.bank);
    let node = TestNode::start(&policy(server.addr, "spf\n    dmarc"), Some(sink.addr)).await;
    let (_, end) = deliver(node.addr, "127.0.9.6", "mail.bank.test", "ceo@bank.test", &signed).await;
    assert_eq!(code(&end), 250, "the aligned DKIM pass carries DMARC: {end}");
    // The operator said not to check signatures: DMARC has SPF's fail alone, and p=reject holds.
    let node = TestNode::start(&policy(server.addr, "spf\n    dkim #false\n    dmarc"), Some(sink.addr)).await;
    let (_, end) = deliver(node.addr, "127.0.9.6", "mail.bank.test", "ceo@bank.test", &signed).await;
    assert!(end.starts_with("550 5.7.1"), "{end}");
    assert_eq!(sink.messages().len(), 1);
    let ar = our_results(&sink.messages()[0].data).join("\n");
    assert!(ar.contains("dkim=pass"), "the first node checked it: {ar}");
}

/// A nameserver in front of `upstream` that never answers DKIM key queries (`_domainkey`):
/// a key server that is down while SPF and DMARC records still resolve.
async fn keyless_nameserver(upstream: SocketAddr) -> SocketAddr {
    let socket = std::sync::Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, client)) = socket.recv_from(&mut buf).await else { return };
            let query = buf[..n].to_vec();
            if query.windows(10).any(|w| w.eq_ignore_ascii_case(b"_domainkey")) {
                continue;
            }
            let socket = socket.clone();
            tokio::spawn(async move {
                let forward = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                forward.send_to(&query, upstream).await.unwrap();
                let mut answer = vec![0u8; 4096];
                if let Ok(Ok(n)) =
                    tokio::time::timeout(std::time::Duration::from_secs(2), forward.recv(&mut answer)).await
                {
                    let _ = socket.send_to(&answer[..n], client).await;
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dkim_check_cut_short_makes_dmarc_a_temperror_in_the_field_too() {
    let (server, keys) = zone().await;
    let sink = Sink::start(Behaviour::default()).await;
    let ns = keyless_nameserver(server.addr).await;
    // bank.test's signature would have carried DMARC (SPF fails from here): its key never comes.
    let signed = sign(&message("ceo@bank.test", "slow"), "s1", "bank.test", &keys.bank);
    let node = TestNode::start(&policy(ns, "spf\n    dmarc"), Some(sink.addr)).await;
    let (_, end) = deliver(node.addr, "127.0.9.7", "mail.bank.test", "ceo@bank.test", &signed).await;
    assert_eq!(code(&end), 250, "a slow key server is never a 550: {end}");
    let ar = our_results(&sink.messages()[0].data).join("\n");
    assert!(ar.contains("spf=fail"), "{ar}");
    assert!(ar.contains("dmarc=temperror"), "the field says what the node decided: {ar}");
    assert!(!ar.contains("dmarc=fail"), "{ar}");
}
