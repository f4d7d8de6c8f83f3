//! Lookup throughput of the three tables and the cost of verifying a ruleset
//! that holds them.
//!
//! Full size (the default) builds 1,000,000 IPv4 and 1,000,000 IPv6 prefixes,
//! 1,000,000 addresses and 100,000 domains, which takes a while to set up.
//! `MTAC_BENCH_SMALL=1` divides every size by 100 for a quick check, and
//! criterion's own `--quick` shortens the measurements:
//!
//! ```text
//! MTAC_BENCH_SMALL=1 cargo bench -p mtac-ruleset -- --quick
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use mtac_ruleset::container::{write_atomic, Container, ContainerWriter, SectionKind};
use mtac_ruleset::tables::{
    AddressTable, AddressTableBuilder, DomainTable, DomainTableBuilder, PrefixTable, PrefixTableBuilder,
};

/// SplitMix64, so every run measures the same tables.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Keys probed per measured iteration: enough to defeat the branch predictor
/// and most of the cache, few enough to keep iterations short.
const PROBES: usize = 4096;

struct Sizes {
    prefixes_per_family: usize,
    addresses: usize,
    domains: usize,
}

fn sizes() -> Sizes {
    let div = if std::env::var_os("MTAC_BENCH_SMALL").is_some() { 100 } else { 1 };
    Sizes { prefixes_per_family: 1_000_000 / div, addresses: 1_000_000 / div, domains: 100_000 / div }
}

fn label(rng: &mut Rng, len: usize) -> String {
    (0..len).map(|_| char::from(b'a' + rng.below(26) as u8)).collect()
}

fn bench(c: &mut Criterion) {
    let sizes = sizes();
    let mut rng = Rng(0x6d74_6163);

    // Prefixes: lengths weighted towards the /16–/32 and /32–/64 that real
    // block and allow lists hold; duplicates get the same value so they merge.
    let mut prefixes = PrefixTableBuilder::new();
    let mut v4_probes = Vec::with_capacity(PROBES);
    let mut v6_probes = Vec::with_capacity(PROBES);
    for i in 0..sizes.prefixes_per_family {
        let a = rng.next() as u32;
        let len = 12 + rng.below(21) as u8;
        let net = Ipv4Net::new(Ipv4Addr::from(a), len).unwrap().trunc();
        prefixes.insert(IpNet::V4(net), u32::from(len));
        let a6 = (0x2000u128 << 112) | (u128::from(rng.next()) << 64) | u128::from(rng.next());
        let len6 = 24 + rng.below(41) as u8;
        let net6 = Ipv6Net::new(Ipv6Addr::from(a6), len6).unwrap().trunc();
        prefixes.insert(IpNet::V6(net6), u32::from(len6));
        if i < PROBES / 2 {
            // Half the probes inside a prefix, half anywhere.
            v4_probes.push(IpAddr::V4(Ipv4Addr::from(a)));
            v6_probes.push(IpAddr::V6(Ipv6Addr::from(a6)));
        }
    }
    while v4_probes.len() < PROBES {
        v4_probes.push(IpAddr::V4(Ipv4Addr::from(rng.next() as u32)));
        v6_probes.push(IpAddr::V6(Ipv6Addr::from((0x2000u128 << 112) | (u128::from(rng.next()) << 64))));
    }
    let prefix_bytes = prefixes.build().unwrap();

    let domain_count = (sizes.addresses / 20).max(1);
    let mail_domains: Vec<String> = (0..domain_count)
        .map(|_| format!("{}.{}", label(&mut rng, 8), ["com", "net", "org", "de"][rng.below(4) as usize]))
        .collect();
    let mut addresses = AddressTableBuilder::new();
    let mut address_probes = Vec::with_capacity(PROBES);
    for i in 0..sizes.addresses {
        let local = format!("{}.{}", label(&mut rng, 5), label(&mut rng, 7));
        let domain = &mail_domains[rng.below(domain_count as u64) as usize];
        let address = format!("{local}@{domain}");
        addresses.insert(&address, i as u32).unwrap();
        if i < PROBES / 2 {
            address_probes.push(address.to_uppercase());
            address_probes.push(format!("{}@{domain}", label(&mut rng, 9)));
        }
    }
    let address_bytes = addresses.build().unwrap();

    let mut domains = DomainTableBuilder::new();
    let mut domain_probes = Vec::with_capacity(PROBES);
    for i in 0..sizes.domains {
        let domain = format!("{}.{}.example", label(&mut rng, 6), label(&mut rng, 3));
        domains.insert(&domain, i % 2 == 0, i as u32).unwrap();
        if i < PROBES / 2 {
            domain_probes.push(format!("mx1.{domain}"));
            domain_probes.push(format!("{}.{}.example", label(&mut rng, 6), label(&mut rng, 3)));
        }
    }
    let domain_bytes = domains.build().unwrap();

    let mut writer = ContainerWriter::new();
    writer.add_section(SectionKind::PrefixTable, 0, prefix_bytes).unwrap();
    writer.add_section(SectionKind::AddressTable, 0, address_bytes).unwrap();
    writer.add_section(SectionKind::DomainTable, 0, domain_bytes).unwrap();
    let file = writer.to_bytes("bench");
    let container = Container::from_vec(file.clone()).unwrap();
    let prefix = PrefixTable::new(container.section(SectionKind::PrefixTable, 0).unwrap()).unwrap();
    let address = AddressTable::new(container.section(SectionKind::AddressTable, 0).unwrap()).unwrap();
    let domain = DomainTable::new(container.section(SectionKind::DomainTable, 0).unwrap()).unwrap();
    eprintln!(
        "ruleset {} bytes; prefixes: {} ({} v4 + {} v6 intervals, {} bytes); \
         addresses: {} ({} bytes); domains: {} ({} bytes)",
        file.len(),
        prefix.len(),
        prefix.v4_intervals(),
        prefix.v6_intervals(),
        prefix.byte_len(),
        address.len(),
        address.byte_len(),
        domain.len(),
        domain.byte_len(),
    );

    let mut group = c.benchmark_group("lookup");
    group.throughput(Throughput::Elements(PROBES as u64));
    group.bench_function("prefix_v4", |b| {
        b.iter(|| v4_probes.iter().filter_map(|&ip| prefix.lookup(black_box(ip))).count())
    });
    group.bench_function("prefix_v6", |b| {
        b.iter(|| v6_probes.iter().filter_map(|&ip| prefix.lookup(black_box(ip))).count())
    });
    group.bench_function("address", |b| {
        b.iter(|| address_probes.iter().filter_map(|a| address.lookup(black_box(a))).count())
    });
    group.bench_function("address_contains_domain", |b| {
        b.iter(|| mail_domains.iter().take(PROBES).filter(|d| address.contains_domain(black_box(d))).count())
    });
    group.bench_function("domain", |b| {
        b.iter(|| domain_probes.iter().filter_map(|d| domain.lookup(black_box(d))).count())
    });
    group.finish();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.mtac");
    write_atomic(&path, &file).unwrap();
    let mut group = c.benchmark_group("verify");
    group.throughput(Throughput::Bytes(file.len() as u64));
    group.sample_size(20);
    group.bench_function("from_vec", |b| {
        b.iter_batched(|| file.clone(), |bytes| Container::from_vec(bytes).unwrap(), BatchSize::LargeInput)
    });
    group.bench_function("open", |b| b.iter(|| Container::open(&path).unwrap()));
    group.finish();

    // What opening the tables adds to the hash check: the prefix table's
    // sizes, and one pass over every fst node (the structure check).
    let mut group = c.benchmark_group("open_tables");
    group.sample_size(20);
    let section = |kind| container.section(kind, 0).unwrap();
    group.throughput(Throughput::Bytes(address.byte_len() as u64));
    group.bench_function("address", |b| b.iter(|| AddressTable::new(section(SectionKind::AddressTable)).unwrap()));
    group.throughput(Throughput::Bytes(domain.byte_len() as u64));
    group.bench_function("domain", |b| b.iter(|| DomainTable::new(section(SectionKind::DomainTable)).unwrap()));
    group.throughput(Throughput::Bytes(prefix.byte_len() as u64));
    group.bench_function("prefix", |b| b.iter(|| PrefixTable::new(section(SectionKind::PrefixTable)).unwrap()));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
