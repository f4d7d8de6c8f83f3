//! Arbitrary bytes as a ruleset file: the reader must answer with an error or
//! a container, never panic, and tables inside a verified container must
//! answer lookups.
//!
//! Random bytes almost never carry a valid BLAKE3 hash, so the same input is
//! also fed to the table readers directly. The prefix table is bounds-checked
//! on every read and gets garbage as is; the fst tables trust their bytes
//! once a container hash vouches for them, so here they are only queried when
//! fst's own checksum holds.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use mtac_ruleset::container::{Bytes, Container, SectionKind};
use mtac_ruleset::tables::{AddressTable, DomainTable, PrefixTable};

const DOMAINS: [&str; 4] = ["example.com", "www.example.com", "EXAMPLE.org.", ""];
const ADDRESSES: [&str; 3] = ["john@example.com", "JOHN@EXAMPLE.COM.", "no-at-sign"];
const IPS: [IpAddr; 4] = [
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
    IpAddr::V4(Ipv4Addr::new(255, 255, 255, 255)),
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
    IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0xc000, 0x0201)),
];

fn query_domains(t: &DomainTable) {
    for d in DOMAINS {
        let _ = t.lookup(d);
    }
}

fn query_addresses(t: &AddressTable) {
    for a in ADDRESSES {
        let _ = t.lookup(a);
    }
    for d in DOMAINS {
        let _ = t.contains_domain(d);
    }
}

fn query_prefixes(t: &PrefixTable) {
    for ip in IPS {
        let _ = t.lookup(ip);
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(container) = Container::from_vec(data.to_vec()) {
        let _ = container.hash_hex();
        for info in container.sections() {
            let Some(bytes) = container.section(info.kind, info.id) else {
                continue;
            };
            match info.kind {
                SectionKind::DomainTable => {
                    if let Ok(t) = DomainTable::new(bytes) {
                        query_domains(&t);
                    }
                }
                SectionKind::AddressTable => {
                    if let Ok(t) = AddressTable::new(bytes) {
                        query_addresses(&t);
                    }
                }
                SectionKind::PrefixTable => {
                    if let Ok(t) = PrefixTable::new(bytes) {
                        query_prefixes(&t);
                    }
                }
                SectionKind::Policy => {}
            }
        }
    }

    let bytes = Bytes::from_vec(data.to_vec());
    if let Ok(t) = PrefixTable::new(bytes.clone()) {
        query_prefixes(&t);
    }
    if let Ok(t) = DomainTable::new(bytes.clone()) {
        if t.verify_checksum().is_ok() {
            query_domains(&t);
        }
    }
    if let Ok(t) = AddressTable::new(bytes) {
        if t.verify_checksum().is_ok() {
            query_addresses(&t);
        }
    }
});
