//! The DNS layer against a real authoritative server: hickory-server on 127.0.0.1 (UDP and TCP)
//! serving test zones built in code, plus a UDP socket that never answers (the slow server).
//!
//! Zones (all under `test.`, plus `2.0.192.in-addr.arpa.`):
//! - `bl.test`: a DNSBL. 127.0.0.2 → 127.0.0.2; 192.0.2.99 → 127.0.0.4 and 127.0.0.10;
//!   2001:db8::99 (nibbles) → 127.0.0.3; `bad.example` → 127.0.1.2 (a domain listing);
//!   `test` → 127.0.1.2 (the domain test point); 127.0.0.1 not listed.
//! - `broken.test`: 127.255.255.254 for every name, test points included (Spamhaus refusing a
//!   public resolver). `hijack.test`: 192.0.2.1 for every name (an NXDOMAIN-rewriting resolver).
//! - sender domains: `good.test` (MX), `arecord.test` (A only), `nullmx.test` (`MX 0 .` and an
//!   A), `nodata.test` (exists, no MX/A/AAAA), `nothing.test` (NXDOMAIN).
//! - PTR (`2.0.192.in-addr.arpa`; hickory answers 127/8 itself): 192.0.2.5 → `host5.good.test`
//!   (A 192.0.2.5), 192.0.2.6 → `liar.good.test` (A 192.0.2.66).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use hickory_server::proto::rr::rdata::{AAAA, MX, PTR};
use hickory_server::proto::rr::{Name, RData};
use mtac_ruleset::eval::{DomainStatus, ListAnswer};
use mtac_ruleset::model::DnsblTarget;
use mtac_runtime::dns::{reversed, Dns, DnsSettings, Reverse, ZoneHealth};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

#[path = "../../tests/common/dns_server.rs"]
mod dns_server;
use dns_server::{a, name, TestServer};

fn listed(ip: &str) -> String {
    format!("{}.bl", reversed(ip.parse().unwrap()))
}

async fn start_server() -> TestServer {
    let v6 = reversed("2001:db8::99".parse().unwrap());
    let records = vec![
        (listed("127.0.0.2"), a("127.0.0.2")),
        (listed("192.0.2.99"), a("127.0.0.4")),
        (listed("192.0.2.99"), a("127.0.0.10")),
        (format!("{v6}.bl"), a("127.0.0.3")),
        ("bad.example.bl".to_owned(), a("127.0.1.2")),
        ("test.bl".to_owned(), a("127.0.1.2")),
        ("*.broken".to_owned(), a("127.255.255.254")),
        ("*.hijack".to_owned(), a("192.0.2.1")),
        ("good".to_owned(), RData::MX(MX::new(10, name("mx.good.test.")))),
        ("mx.good".to_owned(), a("127.0.0.25")),
        ("host5.good".to_owned(), a("192.0.2.5")),
        ("liar.good".to_owned(), a("192.0.2.66")),
        ("v6.good".to_owned(), RData::AAAA(AAAA("2001:db8::5".parse().unwrap()))),
        ("arecord".to_owned(), a("127.0.0.30")),
        ("nullmx".to_owned(), RData::MX(MX::new(0, Name::root()))),
        ("nullmx".to_owned(), a("127.0.0.31")),
        ("host.nodata".to_owned(), a("127.0.0.32")),
    ];
    let arpa = vec![
        ("5".to_owned(), RData::PTR(PTR(name("host5.good.test.")))),
        ("6".to_owned(), RData::PTR(PTR(name("liar.good.test.")))),
    ];
    dns_server::serve(vec![("test.", records), ("2.0.192.in-addr.arpa.", arpa)]).await
}

fn dns_for(addr: SocketAddr, timeout: Duration) -> Dns {
    Dns::new(&DnsSettings { nameservers: vec![addr], timeout, cache_size: 1024 }).unwrap()
}

async fn fixture() -> (TestServer, Dns) {
    let server = start_server().await;
    let dns = dns_for(server.addr, Duration::from_secs(2));
    (server, dns)
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn codes(list: &[&str]) -> ListAnswer {
    ListAnswer::Listed(list.iter().map(|s| s.parse::<Ipv4Addr>().unwrap()).collect())
}

fn sorted(answer: ListAnswer) -> ListAnswer {
    match answer {
        ListAnswer::Listed(mut v) => {
            v.sort();
            ListAnswer::Listed(v)
        }
        other => other,
    }
}

#[tokio::test]
async fn dnsbl_answers() {
    let (_server, dns) = fixture().await;
    assert_eq!(dns.list_ip("bl.test", ip("127.0.0.2")).await, codes(&["127.0.0.2"]));
    assert_eq!(sorted(dns.list_ip("bl.test", ip("192.0.2.99")).await), codes(&["127.0.0.4", "127.0.0.10"]));
    // A dual-stack socket reports IPv4 clients as mapped IPv6: asked as IPv4.
    assert_eq!(sorted(dns.list_ip("bl.test", ip("::ffff:192.0.2.99")).await), codes(&["127.0.0.4", "127.0.0.10"]));
    assert_eq!(dns.list_ip("bl.test", ip("2001:db8::99")).await, codes(&["127.0.0.3"]));
    assert_eq!(dns.list_ip("bl.test", ip("2001:db8::98")).await, ListAnswer::NotListed);
    assert_eq!(dns.list_ip("bl.test", ip("127.0.0.1")).await, ListAnswer::NotListed);
    assert_eq!(dns.list_ip("BL.test.", ip("192.0.2.1")).await, ListAnswer::NotListed);
    // Domain lists (RHSBL/DBL): HELO names, sender domains.
    assert_eq!(dns.list_name("bl.test", "bad.example").await, codes(&["127.0.1.2"]));
    assert_eq!(dns.list_name("bl.test", "Bad.Example.").await, codes(&["127.0.1.2"]));
    assert_eq!(dns.list_name("bl.test", "good.example").await, ListAnswer::NotListed);
    assert_eq!(dns.list_name("bl.test", "").await, ListAnswer::Error);
    assert_eq!(dns.list_name("bl.test", "[192.0.2.1]").await, ListAnswer::Error);
    assert_eq!(dns.list_name("bl.test", &"x".repeat(300)).await, ListAnswer::Error);
    // The evaluator's targets.
    let client = ip("192.0.2.99");
    assert!(matches!(
        dns.list_target("bl.test", DnsblTarget::ClientIp, client, None, None).await,
        Some(ListAnswer::Listed(_))
    ));
    assert_eq!(
        dns.list_target("bl.test", DnsblTarget::HeloName, client, Some("bad.example"), None).await,
        Some(codes(&["127.0.1.2"]))
    );
    assert_eq!(dns.list_target("bl.test", DnsblTarget::SenderDomain, client, None, None).await, None);
}

#[tokio::test]
async fn zone_errors_are_never_listings() {
    let (_server, dns) = fixture().await;
    // 127.255.255.254: the list refuses our resolver. Error, and the zone is suspended.
    assert_eq!(dns.list_ip("broken.test", ip("192.0.2.99")).await, ListAnswer::Error);
    assert!(dns.zones().is_suspended("broken.test"));
    // An answer outside 127/8: a resolver rewriting NXDOMAIN.
    assert_eq!(dns.list_ip("hijack.test", ip("192.0.2.99")).await, ListAnswer::Error);
    assert!(dns.zones().is_suspended("hijack.test"));
    let states = dns.zones().snapshot();
    let hijack = states.iter().find(|(z, _)| z == "hijack.test").unwrap();
    assert_eq!(hijack.1.bad_answers, 1);
    assert!(!dns.zones().is_suspended("bl.test"));
}

#[tokio::test]
async fn probes() {
    let (_server, dns) = fixture().await;
    assert_eq!(dns.probe_zone("bl.test").await, ZoneHealth::Healthy);
    assert_eq!(dns.probe("bl.test", true).await, ZoneHealth::Healthy);
    assert_eq!(dns.probe_zone("broken.test").await, ZoneHealth::BadAnswer(vec![Ipv4Addr::new(127, 255, 255, 254)]));
    assert!(matches!(dns.probe_zone("hijack.test").await, ZoneHealth::BadAnswer(_)));
    // A zone that lists nothing (or a resolver that filters it): the test point is missing.
    assert_eq!(dns.probe_zone("good.test").await, ZoneHealth::TestPointNotListed);
    // Probing does not suspend by itself: only the monitor's record does.
    assert!(!dns.zones().is_suspended("broken.test"));
}

#[tokio::test]
async fn monitor_suspends_and_resumes() {
    let (_server, dns) = fixture().await;
    // The zones of the current ruleset: one at first, a second after a "reload".
    let zones = std::sync::Arc::new(std::sync::Mutex::new(vec![("bl.test".to_owned(), DnsblTarget::ClientIp)]));
    let current = zones.clone();
    let task = dns.spawn_probes(move || (current.lock().unwrap().clone(), Duration::from_secs(3600)));
    let probed = || dns.zones().snapshot().iter().filter(|(_, s)| s.last_probe.is_some()).count();
    let deadline = Instant::now() + Duration::from_secs(10);
    while probed() < 1 {
        assert!(Instant::now() < deadline, "the first probe did not finish");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A zone added by a reload is probed within seconds, not after the hour-long interval.
    zones.lock().unwrap().push(("broken.test".to_owned(), DnsblTarget::ClientIp));
    let deadline = Instant::now() + Duration::from_secs(10);
    while probed() < 2 {
        assert!(Instant::now() < deadline, "the zone added later was not probed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    task.abort();
    let states = dns.zones().snapshot();
    assert_eq!(states[0].0, "bl.test");
    assert_eq!(states[0].1.last_probe, Some(ZoneHealth::Healthy));
    assert!(!states[0].1.suspended);
    assert_eq!(states[1].0, "broken.test");
    assert!(states[1].1.suspended);
    assert!(dns.zones().is_suspended("Broken.Test."));
    assert_eq!(dns.list_ip("broken.test", ip("127.0.0.2")).await, ListAnswer::Error);
    assert_eq!(dns.list_ip("bl.test", ip("127.0.0.2")).await, codes(&["127.0.0.2"]));

    // A failing zone resumes on a good probe; an unreachable probe changes nothing.
    dns.zones().record_probe("bl.test", ZoneHealth::TestPointNotListed);
    assert_eq!(dns.list_ip("bl.test", ip("127.0.0.2")).await, ListAnswer::Error);
    dns.zones().record_probe("bl.test", ZoneHealth::Unreachable);
    assert!(dns.zones().is_suspended("bl.test"));
    dns.zones().record_probe("bl.test", ZoneHealth::Healthy);
    assert_eq!(dns.list_ip("bl.test", ip("127.0.0.2")).await, codes(&["127.0.0.2"]));
}

#[tokio::test]
async fn suspended_zone_is_not_queried() {
    // A server that never answers: any query would take the whole (long) timeout.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let dns = dns_for(silent.local_addr().unwrap(), Duration::from_secs(5));
    dns.zones().record_probe("bl.test", ZoneHealth::BadAnswer(vec![Ipv4Addr::new(127, 255, 255, 254)]));
    let start = Instant::now();
    assert_eq!(dns.list_ip("bl.test", ip("127.0.0.2")).await, ListAnswer::Error);
    assert_eq!(dns.list_name("bl.test", "bad.example").await, ListAnswer::Error);
    assert!(start.elapsed() < Duration::from_millis(100), "{:?}", start.elapsed());
    let mut buf = [0u8; 512];
    assert_eq!(silent.try_recv_from(&mut buf).unwrap_err().kind(), std::io::ErrorKind::WouldBlock);
}

#[tokio::test]
async fn sender_domains() {
    let (_server, dns) = fixture().await;
    assert_eq!(dns.sender_domain("good.test").await, DomainStatus::Resolves);
    assert_eq!(dns.sender_domain("GOOD.test.").await, DomainStatus::Resolves);
    assert_eq!(dns.sender_domain("arecord.test").await, DomainStatus::Resolves);
    assert_eq!(dns.sender_domain("v6.good.test").await, DomainStatus::Resolves);
    assert_eq!(dns.sender_domain("nullmx.test").await, DomainStatus::NullMx);
    assert_eq!(dns.sender_domain("nothing.test").await, DomainStatus::NoRecords);
    assert_eq!(dns.sender_domain("nodata.test").await, DomainStatus::NoRecords);
    assert_eq!(dns.sender_domain("[192.0.2.1]").await, DomainStatus::Resolves);
    assert_eq!(dns.sender_domain("").await, DomainStatus::NoRecords);
    // Outside every zone the server serves: REFUSED, a temporary failure.
    assert_eq!(dns.sender_domain("example.org").await, DomainStatus::TempFail);
    // RFC 6761 special-use names are answered NXDOMAIN by hickory itself.
    assert_eq!(dns.sender_domain("example.invalid").await, DomainStatus::NoRecords);
}

#[tokio::test]
async fn reverse_dns() {
    let (_server, dns) = fixture().await;
    assert_eq!(dns.reverse(ip("192.0.2.5")).await, Reverse::Confirmed("host5.good.test".to_owned()));
    assert_eq!(dns.reverse(ip("::ffff:192.0.2.5")).await, Reverse::Confirmed("host5.good.test".to_owned()));
    assert_eq!(dns.reverse(ip("192.0.2.6")).await, Reverse::Unconfirmed("liar.good.test".to_owned()));
    assert_eq!(dns.reverse(ip("192.0.2.7")).await, Reverse::None);
    // hickory answers loopback itself (RFC 6761): no query leaves the node.
    assert_eq!(dns.reverse(ip("127.0.0.5")).await, Reverse::Unconfirmed("localhost".to_owned()));
    // No zone for ip6.arpa on this server: REFUSED.
    assert_eq!(dns.reverse(ip("2001:db8::5")).await, Reverse::TempFail);
}

#[tokio::test]
async fn timeouts_are_errors_not_listings() {
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let timeout = Duration::from_millis(300);
    let dns = dns_for(silent.local_addr().unwrap(), timeout);
    let start = Instant::now();
    assert_eq!(dns.list_ip("bl.test", ip("127.0.0.2")).await, ListAnswer::Error);
    assert_eq!(dns.list_name("bl.test", "bad.example").await, ListAnswer::Error);
    assert_eq!(dns.sender_domain("good.test").await, DomainStatus::TempFail);
    assert_eq!(dns.reverse(ip("192.0.2.5")).await, Reverse::TempFail);
    assert_eq!(dns.probe_zone("bl.test").await, ZoneHealth::Unreachable);
    // Five lookups, each bounded by the timeout (plus scheduling slack).
    let elapsed = start.elapsed();
    assert!(elapsed < timeout * 5 + Duration::from_millis(500), "{elapsed:?}");
    // The query reached the silent server: the timeout was a real one.
    let mut buf = [0u8; 512];
    assert!(silent.try_recv_from(&mut buf).is_ok());
    // A timeout never suspends a zone.
    assert!(!dns.zones().is_suspended("bl.test"));
}

#[tokio::test]
async fn answers_are_cached() {
    let (mut server, dns) = fixture().await;
    assert_eq!(dns.list_ip("bl.test", ip("127.0.0.2")).await, codes(&["127.0.0.2"]));
    assert_eq!(dns.list_ip("bl.test", ip("127.0.0.9")).await, ListAnswer::NotListed);
    assert_eq!(dns.sender_domain("nothing.test").await, DomainStatus::NoRecords);
    server.server.shutdown_gracefully().await.unwrap();
    // The server is gone: positive and negative (NXDOMAIN, SOA minimum 60 s) answers come from
    // the cache.
    assert_eq!(dns.list_ip("bl.test", ip("127.0.0.2")).await, codes(&["127.0.0.2"]));
    assert_eq!(dns.list_ip("bl.test", ip("127.0.0.9")).await, ListAnswer::NotListed);
    assert_eq!(dns.sender_domain("nothing.test").await, DomainStatus::NoRecords);
    // Not asked before: no answer now.
    assert_eq!(dns.list_ip("bl.test", ip("127.0.0.8")).await, ListAnswer::Error);
}

#[test]
fn settings_are_checked() {
    let zero =
        DnsSettings { nameservers: vec!["127.0.0.1:53".parse().unwrap()], timeout: Duration::ZERO, cache_size: 1 };
    assert!(Dns::new(&zero).is_err());
    // Building needs no runtime.
    let ok = DnsSettings { timeout: Duration::from_secs(1), ..zero };
    assert!(Dns::new(&ok).is_ok());
}
