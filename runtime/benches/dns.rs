//! DNSBL decisions per second with a warm cache: what a node pays per connection once a wave's
//! addresses have been asked once (seed 002: thousands of listed zombies reconnecting).
//!
//! An authoritative hickory-server on 127.0.0.1 serves `bl.test`, listing every other address
//! of 10.0.0.0/22; every answer (positive, and NXDOMAIN for the rest) is asked once before the
//! measurement and the server is stopped, so the measured lookups never leave the process.
//!
//! ```text
//! cargo bench -p mtac-runtime --bench dns -- --quick
//! ```
//!
//! - `list_ip`: one zone, one address: a listing or a cached NXDOMAIN.
//! - `decision_3_zones`: one client against three zones asked concurrently (`bl.test`,
//!   `bl2.test`, `wl.test`; the last two answer NXDOMAIN), as a DNSBL score needs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::proto::rr::rdata::{A, NS, SOA};
use hickory_server::proto::rr::{LowerName, Name, RData, Record};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneType};
use hickory_server::Server;
use mtac_runtime::dns::{reversed, Dns, DnsSettings};
use tokio::net::UdpSocket;

const CLIENTS: u32 = 1024;

fn clients() -> Vec<IpAddr> {
    (0..CLIENTS).map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))).collect()
}

async fn server() -> (Server<Catalog>, std::net::SocketAddr) {
    let origin = Name::from_ascii("test.").unwrap();
    let mut zone =
        InMemoryZoneHandler::<TokioRuntimeProvider>::empty(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny);
    let ns = Name::from_ascii("ns.test.").unwrap();
    let soa = SOA::new(ns.clone(), Name::from_ascii("hostmaster.test.").unwrap(), 1, 3600, 600, 86400, 3600);
    zone.upsert_mut(Record::from_rdata(origin.clone(), 3600, RData::SOA(soa)), 1);
    zone.upsert_mut(Record::from_rdata(origin.clone(), 3600, RData::NS(NS(ns))), 1);
    for ip in clients().into_iter().step_by(2) {
        let owner = Name::from_ascii(format!("{}.bl.test.", reversed(ip))).unwrap();
        zone.upsert_mut(Record::from_rdata(owner, 3600, RData::A(A::new(127, 0, 0, 2))), 1);
    }
    let mut catalog = Catalog::new();
    catalog.upsert(LowerName::from(origin), vec![Arc::new(zone)]);
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = udp.local_addr().unwrap();
    let mut server = Server::new(catalog);
    server.register_socket(udp);
    (server, addr)
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (mut server, addr) = rt.block_on(server());
    let dns = Dns::new(&DnsSettings { nameservers: vec![addr], timeout: Duration::from_secs(2), cache_size: 16_384 })
        .unwrap();
    let ips = clients();
    let zones = ["bl.test", "bl2.test", "wl.test"];
    rt.block_on(async {
        for ip in &ips {
            for zone in zones {
                dns.list_ip(zone, *ip).await;
            }
        }
    });
    // From here every answer must come from the cache: a miss would take the 2 s timeout.
    rt.block_on(server.shutdown_gracefully()).unwrap();

    let mut group = c.benchmark_group("dnsbl_warm_cache");
    group.throughput(Throughput::Elements(u64::from(CLIENTS)));
    group.bench_function("list_ip", |b| {
        b.iter(|| {
            rt.block_on(async {
                for ip in &ips {
                    black_box(dns.list_ip("bl.test", *ip).await);
                }
            })
        })
    });
    group.bench_function("decision_3_zones", |b| {
        b.iter(|| {
            rt.block_on(async {
                for ip in &ips {
                    black_box(tokio::join!(
                        dns.list_ip(zones[0], *ip),
                        dns.list_ip(zones[1], *ip),
                        dns.list_ip(zones[2], *ip)
                    ));
                }
            })
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
