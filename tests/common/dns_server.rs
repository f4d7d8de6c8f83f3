//! An authoritative DNS server on 127.0.0.1 for tests (hickory-server, UDP and TCP), serving
//! zones built in code. Shared by runtime/tests/dns.rs and tests/it (included with `#[path]`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::proto::rr::rdata::{A, NS, SOA};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use hickory_server::Server;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UdpSocket};

const TTL: u32 = 300;

pub fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

pub fn zone(origin: &str, records: &[(&str, RData)]) -> InMemoryZoneHandler<TokioRuntimeProvider> {
    let origin = name(origin);
    let mut zone = InMemoryZoneHandler::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
    let ns = name("ns.test.");
    let soa = SOA::new(ns.clone(), name("hostmaster.test."), 1, 3600, 600, 86400, 60);
    assert!(zone.upsert_mut(Record::from_rdata(origin.clone(), TTL, RData::SOA(soa)), 1));
    assert!(zone.upsert_mut(Record::from_rdata(origin.clone(), TTL, RData::NS(NS(ns))), 1));
    for (owner, data) in records {
        let owner = if owner.is_empty() { origin.clone() } else { name(owner).append_domain(&origin).unwrap() };
        assert!(zone.upsert_mut(Record::from_rdata(owner, TTL, data.clone()), 1), "{data:?}");
    }
    zone
}

pub fn a(s: &str) -> RData {
    RData::A(A(s.parse().unwrap()))
}

/// The authoritative test server; dropping it stops it.
pub struct TestServer {
    pub addr: SocketAddr,
    pub server: Server<Catalog>,
}

/// Serve `zones` (origin, records) on one UDP and TCP port of 127.0.0.1.
pub async fn serve(zones: Vec<(&str, Vec<(String, RData)>)>) -> TestServer {
    let mut catalog = Catalog::new();
    for (origin, records) in zones {
        let records: Vec<(&str, RData)> = records.iter().map(|(n, d)| (n.as_str(), d.clone())).collect();
        catalog.upsert(LowerName::from(name(origin)), vec![Arc::new(zone(origin, &records))]);
    }
    // UDP and TCP on the same port: retry if another test took the TCP port meanwhile.
    let (udp, tcp) = loop {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        if let Ok(tcp) = TcpListener::bind(udp.local_addr().unwrap()).await {
            break (udp, tcp);
        }
    };
    let addr = udp.local_addr().unwrap();
    let mut server = Server::new(catalog);
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(5), 64);
    TestServer { addr, server }
}
