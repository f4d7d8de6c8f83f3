//! Issue 16: allow-lists that cannot be forged and greylisting by verified domain, against real
//! parts: a DNS zone on loopback (hickory-server) whose SPF records name the senders' addresses,
//! a real node over TCP, clients bound to distinct 127.x.y.z addresses.
//!
//! The pool's two addresses are in different /24s (127.0.20.1, 127.0.21.1): with the default
//! `network="/24"`, two addresses of one /24 are one client already, so only a pool spread over
//! networks shows what `key="spf"` adds.

use crate::dnsbl::dns_server;
use crate::support::{code, relay_policy, Behaviour, Client, Sink, TestNode};
use std::net::SocketAddr;
use std::time::Duration;

fn txt(text: &str) -> hickory_server::proto::rr::RData {
    hickory_server::proto::rr::RData::TXT(hickory_server::proto::rr::rdata::TXT::new(vec![text.to_owned()]))
}

/// bank.test sends from 127.0.30.1 only; big.test from a pool of two networks.
async fn zone() -> dns_server::TestServer {
    dns_server::serve(vec![(
        "test.",
        vec![
            ("bank".to_owned(), txt("v=spf1 ip4:127.0.30.1 -all")),
            ("big".to_owned(), txt("v=spf1 ip4:127.0.20.1 ip4:127.0.21.1 -all")),
        ],
    )])
    .await
}

/// A farm checking SPF (recording failures: the greylist step decides) with `greylist`.
fn policy(zone: SocketAddr, greylist: &str) -> String {
    relay_policy(&format!("spf fail=\"record\"\n    {greylist}")).replace(
        "spool \"{dir}/spool\"",
        // Each node its own state store (the default is /var/lib/mtac's).
        &format!(
            "dns timeout=\"1s\" {{\n    nameserver \"{zone}\"\n}}\nspool \"{{dir}}/spool\"\nstate \"embedded\" path=\"{{dir}}/state.redb\""
        ),
    )
}

/// One transaction from `source` up to RCPT (and the message when accepted): the RCPT reply.
async fn send(addr: SocketAddr, source: &str, from: &str) -> String {
    let mut c = Client::connect_from(addr, source).await;
    assert_eq!(code(&c.reply().await), 220);
    assert_eq!(code(&c.cmd("EHLO mail.sender.example").await), 250);
    assert_eq!(code(&c.cmd(&format!("MAIL FROM:<{from}>")).await), 250);
    let rcpt = c.cmd("RCPT TO:<bob@example.test>").await;
    if code(&rcpt) == 250 {
        assert_eq!(code(&c.cmd("DATA").await), 354);
        c.send(b"Subject: greylist\r\n\r\nhello\r\n").await;
        assert_eq!(code(&c.cmd(".").await), 250);
    }
    c.cmd("QUIT").await;
    rcpt
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue16_a_verified_allow_list_entry_is_honoured_only_with_spf_pass() {
    let zone = zone().await;
    let sink = Sink::start(Behaviour::default()).await;
    let greylist = r#"greylist delay="1m" retry-window="1h" {
        whitelist-sender-domain "bank.test" verified=#true
    }"#;
    let node = TestNode::start(&policy(zone.addr, greylist), Some(sink.addr)).await;
    // Anyone can type bank.test in MAIL FROM: from an address its SPF does not name, greylisted.
    let r = send(node.addr, "127.0.31.1", "alerts@bank.test").await;
    assert!(r.starts_with("451 4.7.1"), "a forged allow-listed domain is greylisted: {r}");
    // The bank's own server (SPF pass) is exempt at once.
    let r = send(node.addr, "127.0.30.1", "alerts@bank.test").await;
    assert_eq!(code(&r), 250, "the real sender passes at once: {r}");
    assert_eq!(sink.messages().len(), 1, "only the real sender's message reached the back end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue16_greylist_key_spf_lets_a_pool_retry_from_another_address() {
    let zone = zone().await;
    let sink = Sink::start(Behaviour::default()).await;
    let grey = |key: &str| format!(r#"greylist delay="2s" retry-window="1m" {key}"#);
    let by_spf = TestNode::start(&policy(zone.addr, &grey("key=\"spf\"")), Some(sink.addr)).await;
    let by_network = TestNode::start(&policy(zone.addr, &grey("")), Some(sink.addr)).await;
    for node in [&by_spf, &by_network] {
        let r = send(node.addr, "127.0.20.1", "news@big.test").await;
        assert!(r.starts_with("451 4.7.1"), "a first attempt is greylisted: {r}");
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // The pool retries from its other address, in another network.
    let r = send(by_spf.addr, "127.0.21.1", "news@big.test").await;
    assert_eq!(code(&r), 250, "keyed by the SPF-verified domain, the retry passes: {r}");
    let r = send(by_network.addr, "127.0.21.1", "news@big.test").await;
    assert!(r.starts_with("451 4.7.1"), "keyed by the network, the retry is a new triplet: {r}");
    // A forger typing big.test (SPF fail) is keyed by its own network: the pool's pass is not his.
    let r = send(by_spf.addr, "127.0.22.1", "news@big.test").await;
    assert!(r.starts_with("451 4.7.1"), "a forged sender does not ride on the domain's triplet: {r}");
    assert_eq!(sink.messages().len(), 1);
}
