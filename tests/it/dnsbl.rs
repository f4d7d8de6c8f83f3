//! A node with DNS checks against a real DNS server on loopback: DNSBL/DNSWL scoring, zones that
//! answer with error codes, sender domains, DNS failures (never a 5xx), bans and rate limits.
//! Clients bind to distinct 127.x.y.z addresses so each looks like its own host.

#[path = "../common/dns_server.rs"]
pub(crate) mod dns_server;

use crate::support::{code, relay_policy, sample, Behaviour, Client, Sink, TestNode};
use dns_server::{a, name};
use hickory_server::proto::rr::rdata::MX;
use hickory_server::proto::rr::RData;
use std::net::SocketAddr;

fn reversed_v4(ip: &str) -> String {
    ip.split('.').rev().collect::<Vec<_>>().join(".")
}

async fn dns() -> dns_server::TestServer {
    let mut records = vec![
        // RFC 5782 test points, so the zones' health probes pass.
        (format!("{}.bl", reversed_v4("127.0.0.2")), a("127.0.0.2")),
        (format!("{}.wl", reversed_v4("127.0.0.2")), a("127.0.10.2")),
        // A spammer on the block list, a friend on the allow list, a host on both.
        (format!("{}.bl", reversed_v4("127.0.5.2")), a("127.0.0.2")),
        (format!("{}.wl", reversed_v4("127.0.5.3")), a("127.0.10.2")),
        (format!("{}.bl", reversed_v4("127.0.5.4")), a("127.0.0.2")),
        (format!("{}.wl", reversed_v4("127.0.5.4")), a("127.0.10.2")),
        // A zone that answers with the public-resolver error code for everything.
        ("*.broken".to_owned(), a("127.255.255.254")),
        ("good".to_owned(), RData::MX(MX::new(10, name("mx.good.test.")))),
        ("mx.good".to_owned(), a("192.0.2.25")),
        ("nullmx".to_owned(), RData::MX(MX::new(0, name(".")))),
    ];
    records.push(("arecord".to_owned(), a("192.0.2.30")));
    dns_server::serve(vec![("test.", records)]).await
}

fn policy(nameserver: SocketAddr, extra: &str) -> String {
    relay_policy(&format!(
        r#"
    dnsbl threshold=3 allow-threshold=-1 {{
        zone "bl.test" {{
            answer "127.0.0.2" weight=3
        }}
        zone "wl.test" {{
            answer "127.0.[0..255].[1..3]" weight=-5
        }}
        zone "broken.test" {{
            answer "127.0.0.[2..11]" weight=3
        }}
    }}
    sender resolvable=#true
    {extra}
"#
    ))
    .replace(
        "hostname \"mx.test.example\"",
        &format!("hostname \"mx.test.example\"\ndns timeout=\"1s\" {{\n    nameserver \"{nameserver}\"\n}}"),
    )
}

/// The node's metrics once `zone` shows as suspended, or after 5 s (the caller asserts).
async fn metrics_once_suspended(node: &TestNode, zone: &str) -> String {
    let series = format!(r#"mtac_dns_zone_suspended{{zone="{zone}"}}"#);
    let mut m = node.metrics().await;
    for _ in 0..250 {
        if sample(&m, &series) == 1.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        m = node.metrics().await;
    }
    m
}

async fn attempt(addr: SocketAddr, source: &str, from: &str) -> String {
    attempt_helo(addr, source, "mail.example.org", from).await
}

async fn attempt_helo(addr: SocketAddr, source: &str, helo: &str, from: &str) -> String {
    let mut c = Client::connect_from(addr, source).await;
    let greeting = c.reply().await;
    if code(&greeting) != 220 {
        return greeting;
    }
    c.cmd(&format!("EHLO {helo}")).await;
    let r = c.cmd(&format!("MAIL FROM:<{from}>")).await;
    if code(&r) != 250 {
        return r;
    }
    c.cmd("RCPT TO:<u@example.test>").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_lists_and_sender_domains_decide_at_rcpt() {
    let server = dns().await;
    let sink = Sink::start(Behaviour::default()).await;
    let node = TestNode::start(&policy(server.addr, ""), Some(sink.addr)).await;
    let r = attempt(node.addr, "127.0.5.2", "a@good.test").await;
    assert!(r.starts_with("554 5.7.1"), "a listed client is refused at RCPT: {r}");
    let r = attempt(node.addr, "127.0.5.9", "a@good.test").await;
    assert_eq!(code(&r), 250, "an unlisted client passes: {r}");
    let r = attempt(node.addr, "127.0.5.4", "a@good.test").await;
    assert_eq!(code(&r), 250, "the allow list outweighs the block list: {r}");
    let r = attempt(node.addr, "127.0.5.3", "a@nothing.test").await;
    assert_eq!(code(&r), 250, "an allow-listed client skips the sender check: {r}");
    let r = attempt(node.addr, "127.0.5.9", "a@nothing.test").await;
    assert!(r.starts_with("550 5.1.8"), "a sender domain that does not exist: {r}");
    let r = attempt(node.addr, "127.0.5.9", "a@nullmx.test").await;
    assert!(r.starts_with("550 5.1.8"), "a null-MX sender domain: {r}");
    let r = attempt(node.addr, "127.0.5.9", "a@arecord.test").await;
    assert_eq!(code(&r), 250, "an A record is enough: {r}");
    let r = attempt(node.addr, "127.0.5.9", "").await;
    assert_eq!(code(&r), 250, "the null sender is not looked up: {r}");

    // The admin listener shows the hits per zone, and the zone that answers 127.255.255.254
    // to everything as suspended.
    // The probes run at start, in the background.
    let m = metrics_once_suspended(&node, "broken.test").await;
    assert_eq!(sample(&m, r#"mtac_dnsbl_hits_total{zone="bl.test"}"#), 2.0, "{m}");
    assert_eq!(sample(&m, r#"mtac_dnsbl_hits_total{zone="wl.test"}"#), 2.0, "{m}");
    assert_eq!(sample(&m, r#"mtac_dns_zone_suspended{zone="bl.test"}"#), 0.0, "{m}");
    assert_eq!(sample(&m, r#"mtac_dns_zone_suspended{zone="broken.test"}"#), 1.0, "{m}");
    assert_eq!(sample(&m, r#"mtac_refusals_total{farm="mx",stage="rcpt",verdict="reject",rule="dnsbl"}"#), 1.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_added_by_a_reload_is_probed_at_once() {
    let server = dns().await;
    let sink = Sink::start(Behaviour::default()).await;
    let full = policy(server.addr, "");
    let broken_zone = "        zone \"broken.test\" {\n            answer \"127.0.0.[2..11]\" weight=3\n        }\n";
    assert!(full.contains(broken_zone));
    let node = TestNode::start(&full.replace(broken_zone, ""), Some(sink.addr)).await;
    let m = node.metrics().await;
    assert!(!m.contains(r#"mtac_dns_zone_suspended{zone="broken.test"}"#), "{m}");

    // The new policy names the zone that answers 127.255.255.254 to everything; its probe
    // suspends it within seconds, not after the 5-minute probe interval.
    let path = node.dir.path().join("policy.kdl");
    let text = full.replace("{backend}", &sink.addr.to_string()).replace("{dir}", node.dir.path().to_str().unwrap());
    let tmp = node.dir.path().join("policy.kdl.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    let m = metrics_once_suspended(&node, "broken.test").await;
    assert_eq!(node.shared.metrics.reloads_counted("ok"), 1);
    assert_eq!(sample(&m, r#"mtac_dns_zone_suspended{zone="broken.test"}"#), 1.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_failures_never_give_a_5xx() {
    // A nameserver that never answers: every lookup times out.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let sink = Sink::start(Behaviour::default()).await;
    let node = TestNode::start(&policy(silent.local_addr().unwrap(), ""), Some(sink.addr)).await;
    let start = std::time::Instant::now();
    let r = attempt(node.addr, "127.0.6.2", "a@good.test").await;
    assert!(r.starts_with("450 4.1.8"), "a sender lookup that times out defers: {r}");
    assert!(start.elapsed() < std::time::Duration::from_secs(8));
    let r = attempt(node.addr, "127.0.6.3", "").await;
    assert_eq!(code(&r), 250, "DNS lists that time out count as not listed: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dnsbl_refusal_bans_the_network_and_rates_are_limited() {
    let server = dns().await;
    let sink = Sink::start(Behaviour::default()).await;
    let extra = r#"ban after="dnsbl" duration="10m" network="/24"
    rate-limit connections=3 per="1m" network="/32""#;
    let node = TestNode::start(&policy(server.addr, extra), Some(sink.addr)).await;
    let r = attempt(node.addr, "127.0.7.2", "a@good.test").await;
    assert_eq!(code(&r), 250, "{r}");
    // The listed host is refused once, then its whole /24 is turned away at connect.
    let listed_policy_host = "127.0.5.2";
    let r = attempt(node.addr, listed_policy_host, "a@good.test").await;
    assert!(r.starts_with("554"), "{r}");
    let mut c = Client::connect_from(node.addr, "127.0.5.77").await;
    let r = c.reply().await;
    assert!(r.starts_with("521 5.3.2"), "the /24 is banned: {r}");
    assert!(c.closed().await);
    // Connection rate: the fourth connection within a minute from one address is refused.
    for _ in 0..2 {
        let mut c = Client::connect_from(node.addr, "127.0.8.8").await;
        assert_eq!(code(&c.reply().await), 220);
    }
    let mut c = Client::connect_from(node.addr, "127.0.8.8").await;
    assert_eq!(code(&c.reply().await), 220);
    let mut c = Client::connect_from(node.addr, "127.0.8.8").await;
    let r = c.reply().await;
    assert!(r.starts_with("421 4.7.0"), "{r}");

    let m = node.metrics().await;
    assert_eq!(sample(&m, "mtac_bans_total"), 1.0, "{m}");
    assert_eq!(sample(&m, "mtac_bans_active"), 1.0, "{m}");
    assert_eq!(sample(&m, r#"mtac_connections_refused_total{farm="mx",reason="ban"}"#), 1.0, "{m}");
    assert_eq!(sample(&m, r#"mtac_connections_refused_total{farm="mx",reason="rate"}"#), 1.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_helo_name_is_refused_and_a_dns_failure_only_defers() {
    let server = dns().await;
    let sink = Sink::start(Behaviour::default()).await;
    let node = TestNode::start(&policy(server.addr, "helo resolvable=#true"), Some(sink.addr)).await;
    let r = attempt_helo(node.addr, "127.0.5.9", "mx.good.test", "a@good.test").await;
    assert_eq!(code(&r), 250, "a HELO name with an A record: {r}");
    let r = attempt_helo(node.addr, "127.0.5.9", "good.test", "a@good.test").await;
    assert_eq!(code(&r), 250, "an MX record is enough: {r}");
    let r = attempt_helo(node.addr, "127.0.5.9", "[127.0.5.9]", "a@good.test").await;
    assert_eq!(code(&r), 250, "an address literal is not looked up: {r}");
    let r = attempt_helo(node.addr, "127.0.5.9", "ghost.test", "a@good.test").await;
    assert!(r.starts_with("550 5.7.1 Helo command rejected: Host not found"), "NXDOMAIN: {r}");
    let r = attempt_helo(node.addr, "127.0.5.3", "ghost.test", "a@good.test").await;
    assert_eq!(code(&r), 250, "an allow-listed client skips the check: {r}");
    let m = node.metrics().await;
    assert_eq!(
        sample(&m, r#"mtac_refusals_total{farm="mx",stage="rcpt",verdict="reject",rule="helo.resolvable"}"#),
        1.0,
        "{m}"
    );

    // A nameserver that never answers: a deferral, never a 5xx.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let node = TestNode::start(&policy(silent.local_addr().unwrap(), "helo resolvable=#true"), Some(sink.addr)).await;
    let r = attempt_helo(node.addr, "127.0.6.9", "mx.good.test", "").await;
    assert!(r.starts_with("450 4.7.1"), "a HELO lookup that times out defers: {r}");
}
