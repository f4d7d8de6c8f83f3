//! The ruleset file format end to end: tables built, stored in a container,
//! read back, and compared with brute-force references.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

#[path = "format/fuzz_corpus.rs"]
mod fuzz_corpus;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use mtac_ruleset::container::{Bytes, Container, ContainerWriter, SectionKind};
use mtac_ruleset::tables::{
    AddressTable, AddressTableBuilder, DomainTable, DomainTableBuilder, PrefixTable, PrefixTableBuilder, TableError,
};

/// SplitMix64: small, deterministic, good enough to scatter test inputs.
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
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i as u64 + 1) as usize);
        }
    }
}

fn prefix_table(entries: &[(IpNet, u32)]) -> PrefixTable {
    let mut b = PrefixTableBuilder::new();
    for &(net, v) in entries {
        b.insert(net, v);
    }
    PrefixTable::new(Bytes::from_vec(b.build().unwrap())).unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Longest-prefix match by trying every prefix.
fn naive_lpm(entries: &[(IpNet, u32)], addr: IpAddr) -> Option<u32> {
    entries.iter().filter(|(n, _)| n.trunc().contains(&addr)).max_by_key(|(n, _)| n.prefix_len()).map(|&(_, v)| v)
}

#[test]
fn prefix_basics() {
    let t = prefix_table(&[
        (net("10.0.0.0/8"), 1),
        (net("10.1.0.0/16"), 2),
        (net("10.1.2.0/24"), 3),
        (net("10.1.3.0/24"), 4),
        (net("192.0.2.1/32"), 5),
        (net("2001:db8::/32"), 6),
        (net("2001:db8:1::/48"), 7),
        (net("::1/128"), 8),
    ]);
    assert_eq!(t.len(), 8);
    assert_eq!(t.lookup(ip("10.0.0.0")), Some(1));
    assert_eq!(t.lookup(ip("10.255.255.255")), Some(1));
    assert_eq!(t.lookup(ip("10.1.0.0")), Some(2));
    assert_eq!(t.lookup(ip("10.1.2.255")), Some(3));
    assert_eq!(t.lookup(ip("10.1.3.0")), Some(4));
    assert_eq!(t.lookup(ip("10.1.4.0")), Some(2));
    assert_eq!(t.lookup(ip("11.0.0.0")), None);
    assert_eq!(t.lookup(ip("9.255.255.255")), None);
    assert_eq!(t.lookup(ip("192.0.2.1")), Some(5));
    assert_eq!(t.lookup(ip("192.0.2.0")), None);
    assert_eq!(t.lookup(ip("192.0.2.2")), None);
    assert_eq!(t.lookup(ip("2001:db8:1:ffff::1")), Some(7));
    assert_eq!(t.lookup(ip("2001:db8:2::1")), Some(6));
    assert_eq!(t.lookup(ip("2001:db9::")), None);
    assert_eq!(t.lookup(ip("::1")), Some(8));
    assert_eq!(t.lookup(ip("::2")), None);
    // IPv4-mapped IPv6 is looked up as IPv4.
    assert_eq!(t.lookup(ip("::ffff:10.1.2.3")), Some(3));
    assert_eq!(t.lookup(ip("::ffff:11.0.0.1")), None);
}

#[test]
fn prefix_defaults_and_extremes() {
    let t = prefix_table(&[
        (net("0.0.0.0/0"), 1),
        (net("255.255.255.255/32"), 2),
        (net("0.0.0.0/32"), 3),
        (net("::/0"), 4),
        (net("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128"), 5),
        (net("::/128"), 6),
    ]);
    assert_eq!(t.lookup(ip("0.0.0.0")), Some(3));
    assert_eq!(t.lookup(ip("0.0.0.1")), Some(1));
    assert_eq!(t.lookup(ip("255.255.255.254")), Some(1));
    assert_eq!(t.lookup(ip("255.255.255.255")), Some(2));
    assert_eq!(t.lookup(ip("::")), Some(6));
    assert_eq!(t.lookup(ip("::2")), Some(4));
    assert_eq!(t.lookup(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe")), Some(4));
    assert_eq!(t.lookup(ip("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")), Some(5));
    // ::ffff:0:0/96 goes to the IPv4 side, where 0.0.0.0/0 covers it.
    assert_eq!(t.lookup(ip("::ffff:1.2.3.4")), Some(1));
}

#[test]
fn prefix_adjacent_same_value_merges() {
    let t = prefix_table(&[
        (net("10.0.0.0/24"), 1),
        (net("10.0.1.0/24"), 1),
        (net("10.0.2.0/23"), 1),
        (net("10.0.4.0/24"), 2),
    ]);
    assert_eq!(t.len(), 4);
    assert_eq!(t.v4_intervals(), 2);
    assert_eq!(t.lookup(ip("10.0.3.255")), Some(1));
    assert_eq!(t.lookup(ip("10.0.4.0")), Some(2));
    assert_eq!(t.lookup(ip("10.0.5.0")), None);
}

#[test]
fn prefix_host_bits_and_mapped_prefixes_are_normalised() {
    let t = prefix_table(&[(net("10.1.2.3/8"), 1), (net("::ffff:192.168.0.0/112"), 2)]);
    assert_eq!(t.lookup(ip("10.200.0.0")), Some(1));
    assert_eq!(t.lookup(ip("192.168.5.5")), Some(2));
    assert_eq!(t.lookup(ip("::ffff:192.168.5.5")), Some(2));
    assert_eq!(t.v6_intervals(), 0);

    // 10.1.2.3/8 and 10.0.0.0/8 are the same prefix: a conflict if values differ.
    let mut b = PrefixTableBuilder::new();
    b.insert(net("10.1.2.3/8"), 1);
    b.insert(net("10.0.0.0/8"), 2);
    b.insert(net("2001:db8::/32"), 1);
    b.insert(net("2001:db8::/32"), 1);
    b.insert(net("2001:db8::1/32"), 3);
    match b.build() {
        Err(TableError::Conflicts { conflicts, .. }) => {
            let keys: Vec<_> = conflicts.iter().map(|c| c.key.as_str()).collect();
            assert_eq!(keys, vec!["10.0.0.0/8", "2001:db8::/32"]);
        }
        other => panic!("expected conflicts, got {other:?}"),
    }
}

fn random_v4_prefix(rng: &mut Rng) -> Ipv4Net {
    // A small pool of high bits makes nesting and adjacency common.
    let base = [0x0a00_0000u32, 0xc0a8_0000, 0xac10_0000, 0x0000_0000, 0xffff_ff00];
    let addr = base[rng.below(base.len() as u64) as usize] ^ (rng.next() as u32 & 0x00ff_ffff);
    let len = match rng.below(4) {
        0 => rng.below(33) as u8,
        _ => 8 + rng.below(25) as u8,
    };
    Ipv4Net::new(Ipv4Addr::from(addr), len).unwrap()
}

fn random_v6_prefix(rng: &mut Rng) -> Ipv6Net {
    let base = [0x2001_0db8u128 << 96, 0xfe80 << 112, 0, u128::MAX << 16];
    let addr = base[rng.below(base.len() as u64) as usize]
        ^ (u128::from(rng.next()) << 32 | u128::from(rng.next() as u32)) >> rng.below(64);
    let len = match rng.below(4) {
        0 => rng.below(129) as u8,
        _ => 32 + rng.below(97) as u8,
    };
    Ipv6Net::new(Ipv6Addr::from(addr), len).unwrap()
}

#[test]
fn prefix_lpm_matches_brute_force() {
    let mut rng = Rng(0x5eed);
    for round in 0..20 {
        let count = 1 + rng.below(300) as usize;
        // Distinct prefixes only: same prefix, different value is a conflict.
        let mut seen = std::collections::HashMap::new();
        for _ in 0..count {
            let n = if rng.below(2) == 0 {
                IpNet::V4(random_v4_prefix(&mut rng))
            } else {
                IpNet::V6(random_v6_prefix(&mut rng))
            };
            seen.entry(n.trunc()).or_insert((rng.below(5)) as u32);
        }
        let entries: Vec<(IpNet, u32)> = seen.into_iter().collect();
        let t = prefix_table(&entries);
        assert_eq!(t.len(), entries.len());

        let mut probes: Vec<IpAddr> = Vec::new();
        for (n, _) in &entries {
            // Both edges of every prefix and the addresses just outside.
            match n {
                IpNet::V4(n) => {
                    let (s, e) = (u32::from(n.network()), u32::from(n.broadcast()));
                    for a in [s, e, s.wrapping_sub(1), e.wrapping_add(1)] {
                        probes.push(IpAddr::V4(a.into()));
                    }
                }
                IpNet::V6(n) => {
                    let (s, e) = (u128::from(n.network()), u128::from(n.broadcast()));
                    for a in [s, e, s.wrapping_sub(1), e.wrapping_add(1)] {
                        probes.push(IpAddr::V6(a.into()));
                    }
                }
            }
        }
        for _ in 0..2000 {
            probes.push(IpAddr::V4(random_v4_prefix(&mut rng).addr()));
            probes.push(IpAddr::V6(random_v6_prefix(&mut rng).addr()));
        }
        for p in probes {
            // Mapped addresses are IPv4 by definition; the reference does not know.
            if let IpAddr::V6(v6) = p {
                if v6.to_ipv4_mapped().is_some() {
                    continue;
                }
            }
            assert_eq!(t.lookup(p), naive_lpm(&entries, p), "round {round}, {p}");
        }
    }
}

#[test]
fn prefix_build_is_deterministic() {
    let mut rng = Rng(42);
    let mut entries: Vec<(IpNet, u32)> = (0..500).map(|i| (IpNet::V4(random_v4_prefix(&mut rng)), i)).collect();
    entries.sort_by_key(|(n, _)| n.trunc());
    entries.dedup_by_key(|(n, _)| n.trunc());
    let build = |e: &[(IpNet, u32)]| {
        let mut b = PrefixTableBuilder::new();
        for &(n, v) in e {
            b.insert(n, v);
        }
        b.build().unwrap()
    };
    let a = build(&entries);
    assert_eq!(a, build(&entries));
    rng.shuffle(&mut entries);
    assert_eq!(a, build(&entries));
}

#[test]
fn prefix_table_rejects_bad_sizes_and_survives_garbage() {
    assert!(PrefixTable::new(Bytes::from_vec(vec![])).is_err());
    let good = {
        let mut b = PrefixTableBuilder::new();
        b.insert(net("10.0.0.0/8"), 1);
        b.insert(net("2001:db8::/32"), 2);
        b.build().unwrap()
    };
    // Truncated, extended, and a boundary count of u32::MAX.
    assert!(PrefixTable::new(Bytes::from_vec(good[..good.len() - 1].to_vec())).is_err());
    let mut longer = good.clone();
    longer.push(0);
    assert!(PrefixTable::new(Bytes::from_vec(longer)).is_err());
    let mut huge = good.clone();
    huge[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(PrefixTable::new(Bytes::from_vec(huge)).is_err());

    // Real tables with random bytes overwritten, header included: the header
    // may be refused; when it is accepted, answers are meaningless but
    // nothing panics.
    let mut rng = Rng(7);
    let mut opened = 0;
    for round in 0..400 {
        let mut b = PrefixTableBuilder::new();
        for i in 0..rng.below(40) {
            let n = if rng.below(2) == 0 {
                IpNet::V4(random_v4_prefix(&mut rng))
            } else {
                IpNet::V6(random_v6_prefix(&mut rng))
            };
            // Values spread enough to need 0, 1 or 2 bytes.
            let value = match round % 3 {
                0 => 9,
                1 => (i % 7) as u32,
                _ => (i * 997) as u32,
            };
            b.insert(n, value);
        }
        let Ok(mut bytes) = b.build() else { continue };
        let header = 24 + 2 * 32;
        for _ in 0..1 + rng.below(8) {
            // Mostly the descriptors, where garbage is most dangerous.
            let at = if rng.below(2) == 0 {
                rng.below(header as u64) as usize
            } else {
                rng.below(bytes.len() as u64) as usize
            };
            bytes[at] = rng.next() as u8;
        }
        let Ok(t) = PrefixTable::new(Bytes::from_vec(bytes)) else { continue };
        opened += 1;
        for _ in 0..50 {
            let _ = t.lookup(IpAddr::V4((rng.next() as u32).into()));
            let _ = t.lookup(IpAddr::V6((u128::from(rng.next()) << 64 | u128::from(rng.next())).into()));
            let _ = t.lookup(IpAddr::V6(u128::from(rng.next()).into()));
        }
    }
    assert!(opened > 100, "only {opened} damaged tables opened: the test exercises little");
}

fn domain_table(entries: &[(&str, bool, u32)]) -> DomainTable {
    let mut b = DomainTableBuilder::new();
    for &(d, subs, v) in entries {
        b.insert(d, subs, v).unwrap();
    }
    DomainTable::new(Bytes::from_vec(b.build().unwrap())).unwrap()
}

#[test]
fn domain_matching() {
    let t = domain_table(&[
        ("example.com", true, 1),
        ("mail.example.com", false, 2),
        ("deep.a.example.com", true, 3),
        ("Example.ORG.", false, 4),
        ("com", false, 5),
    ]);
    assert_eq!(t.len(), 5);
    assert_eq!(t.lookup("example.com"), Some(1));
    assert_eq!(t.lookup("x.example.com"), Some(1));
    assert_eq!(t.lookup("mail.example.com"), Some(2));
    // mail.example.com does not include subdomains: fall back to the parent.
    assert_eq!(t.lookup("x.mail.example.com"), Some(1));
    assert_eq!(t.lookup("a.example.com"), Some(1));
    assert_eq!(t.lookup("deep.a.example.com"), Some(3));
    assert_eq!(t.lookup("z.deep.a.example.com"), Some(3));
    assert_eq!(t.lookup("EXAMPLE.COM."), Some(1));
    assert_eq!(t.lookup("example.org"), Some(4));
    assert_eq!(t.lookup("EXAMPLE.org."), Some(4));
    assert_eq!(t.lookup("x.example.org"), None);
    assert_eq!(t.lookup("com"), Some(5));
    // "com" has no subdomains; a label prefix is not a parent.
    assert_eq!(t.lookup("other.com"), None);
    assert_eq!(t.lookup("xexample.com"), None);
    assert_eq!(t.lookup("example.comx"), None);
    assert_eq!(t.lookup("ample.com"), None);
    assert_eq!(t.lookup(""), None);
    assert_eq!(t.lookup("."), None);
    assert_eq!(t.lookup("a..example.com"), None);
    assert_eq!(t.lookup(&format!("{}.example.com", "a".repeat(250))), None);
}

#[test]
fn domain_builder_rules() {
    let mut b = DomainTableBuilder::new();
    assert!(b.insert("", false, 1).is_err());
    assert!(b.insert(".", false, 1).is_err());
    assert!(b.insert("a..b", false, 1).is_err());
    assert!(b.insert(".a", false, 1).is_err());
    assert!(b.insert("a b.com", false, 1).is_err());
    assert!(b.insert("a@b.com", false, 1).is_err());
    assert!(b.insert(&"a".repeat(256), false, 1).is_err());
    assert!(b.insert(&format!("{}.", "a".repeat(255)), false, 1).is_ok());

    // Same value with and without subdomains: the union.
    let t = domain_table(&[("example.com", false, 1), ("EXAMPLE.com", true, 1)]);
    assert_eq!(t.len(), 1);
    assert_eq!(t.lookup("a.example.com"), Some(1));

    let mut b = DomainTableBuilder::new();
    b.insert("example.com", false, 1).unwrap();
    b.insert("Example.com.", true, 2).unwrap();
    b.insert("b.org", true, 3).unwrap();
    let err = b.build().unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("example.com (1 and 2)"), "{msg}");
    assert!(!msg.contains("b.org"), "{msg}");
}

#[test]
fn domain_matches_brute_force() {
    let labels = ["a", "b", "mail", "example", "com", "org", "x"];
    let mut rng = Rng(99);
    let random_domain = |rng: &mut Rng| {
        let n = 1 + rng.below(4) as usize;
        (0..n).map(|_| labels[rng.below(labels.len() as u64) as usize]).collect::<Vec<_>>().join(".")
    };
    for _ in 0..20 {
        let mut entries: std::collections::BTreeMap<String, (bool, u32)> = Default::default();
        for _ in 0..40 {
            let d = random_domain(&mut rng);
            let e = (rng.below(2) == 0, rng.below(1000) as u32);
            entries.entry(d).or_insert(e);
        }
        let list: Vec<(&str, bool, u32)> = entries.iter().map(|(d, &(s, v))| (d.as_str(), s, v)).collect();
        let t = domain_table(&list);
        for _ in 0..500 {
            let q = random_domain(&mut rng);
            let reference = entries.get(&q).map(|&(_, v)| v).or_else(|| {
                // Nearest parent with subdomains.
                let mut rest = q.as_str();
                while let Some((_, parent)) = rest.split_once('.') {
                    if let Some(&(true, v)) = entries.get(parent) {
                        return Some(v);
                    }
                    rest = parent;
                }
                None
            });
            assert_eq!(t.lookup(&q), reference, "{q}");
            assert_eq!(t.lookup(&q.to_uppercase()), reference, "{q}");
        }
    }
}

#[test]
fn domain_build_is_deterministic() {
    let mut rng = Rng(5);
    let mut entries: Vec<(String, bool, u32)> =
        (0..1000).map(|i| (format!("h{}.d{}.example", i, rng.below(50)), i % 3 == 0, i)).collect();
    let build = |e: &[(String, bool, u32)]| {
        let mut b = DomainTableBuilder::new();
        for (d, s, v) in e {
            b.insert(d, *s, *v).unwrap();
        }
        b.build().unwrap()
    };
    let a = build(&entries);
    rng.shuffle(&mut entries);
    assert_eq!(a, build(&entries));
}

fn address_table(entries: &[(&str, u32)]) -> AddressTable {
    let mut b = AddressTableBuilder::new();
    for &(a, v) in entries {
        b.insert(a, v).unwrap();
    }
    AddressTable::new(Bytes::from_vec(b.build().unwrap())).unwrap()
}

#[test]
fn address_matching_and_case() {
    let t = address_table(&[
        ("John.Doe@Example.com", 1),
        ("postmaster@example.com", 2),
        ("Jörg@example.de.", 3),
        ("\"odd@local\"@example.net", 4),
        ("john.doe@example.com", 1),
    ]);
    assert_eq!(t.len(), 4);
    assert_eq!(t.lookup("john.doe@example.com"), Some(1));
    assert_eq!(t.lookup("JOHN.DOE@EXAMPLE.COM."), Some(1));
    assert_eq!(t.lookup("postmaster@Example.Com"), Some(2));
    assert_eq!(t.lookup("jörg@EXAMPLE.de"), Some(3));
    // Non-ASCII is not case-folded.
    assert_eq!(t.lookup("JÖRG@example.de"), None);
    assert_eq!(t.lookup("\"odd@local\"@example.net"), Some(4));
    assert_eq!(t.lookup("john@example.com"), None);
    assert_eq!(t.lookup("john.doe@example.org"), None);
    assert_eq!(t.lookup("john.doe"), None);
    assert_eq!(t.lookup("@example.com"), None);
    assert_eq!(t.lookup(&format!("{}@example.com", "a".repeat(600))), None);

    assert!(t.contains_domain("example.com"));
    assert!(t.contains_domain("EXAMPLE.COM."));
    assert!(t.contains_domain("example.de"));
    assert!(t.contains_domain("example.net"));
    assert!(!t.contains_domain("example.co"));
    assert!(!t.contains_domain("xample.com"));
    assert!(!t.contains_domain("mail.example.com"));
    assert!(!t.contains_domain(""));
    assert!(!t.contains_domain(&"a".repeat(300)));
}

#[test]
fn address_builder_rules() {
    let mut b = AddressTableBuilder::new();
    assert!(b.insert("nobody", 1).is_err());
    assert!(b.insert("@example.com", 1).is_err());
    assert!(b.insert("a@", 1).is_err());
    assert!(b.insert("a@b..c", 1).is_err());
    b.insert("A@x.org", 1).unwrap();
    b.insert("a@X.org", 2).unwrap();
    let msg = b.build().unwrap_err().to_string();
    assert!(msg.contains("a@x.org (1 and 2)"), "{msg}");
}

/// Lookups agree with a map on tables that exercise every kind of fst node:
/// chains, one-transition nodes with outputs of every width, fan-outs below
/// and above 32 (the indexed nodes), final nodes with transitions.
#[test]
fn address_matches_brute_force() {
    let alphabet: Vec<char> = "abcdefghijklmnopqrstuvwxyz0123456789.-_+=ü".chars().collect();
    let mut rng = Rng(2026);
    for round in 0..12 {
        let domains: Vec<String> = (0..1 + rng.below(6)).map(|i| format!("d{i}.example")).collect();
        let mut entries: std::collections::BTreeMap<String, u32> = Default::default();
        let size = [5, 60, 700][round % 3];
        while entries.len() < size {
            let len = 1 + rng.below(if round % 2 == 0 { 3 } else { 9 }) as usize;
            let local: String = (0..len).map(|_| alphabet[rng.below(alphabet.len() as u64) as usize]).collect();
            let domain = &domains[rng.below(domains.len() as u64) as usize];
            // Values of every width, zero included.
            let value = match rng.below(4) {
                0 => 0,
                1 => rng.below(256) as u32,
                2 => rng.below(1 << 20) as u32,
                _ => rng.next() as u32,
            };
            entries.entry(format!("{local}@{domain}")).or_insert(value);
        }
        let list: Vec<(&str, u32)> = entries.iter().map(|(a, &v)| (a.as_str(), v)).collect();
        let t = address_table(&list);
        assert_eq!(t.len(), entries.len());
        for (address, &value) in &entries {
            assert_eq!(t.lookup(address), Some(value), "{address}");
            assert_eq!(t.lookup(&address.to_ascii_uppercase()), Some(value), "{address}");
            // A key's proper prefixes and extensions are other keys or nothing.
            let (local, domain) = address.rsplit_once('@').unwrap();
            let shorter = &local[..local.char_indices().last().map_or(0, |(i, _)| i)];
            for probe in [format!("{local}x@{domain}"), format!("{shorter}@{domain}")] {
                assert_eq!(t.lookup(&probe), entries.get(&probe).copied(), "{probe}");
            }
        }
        for d in &domains {
            let used = entries.keys().any(|a| a.ends_with(&format!("@{d}")));
            assert_eq!(t.contains_domain(d), used, "{d}");
        }
        assert!(!t.contains_domain("d9.example"));
    }
}

#[test]
fn address_build_is_deterministic() {
    let mut rng = Rng(11);
    let mut entries: Vec<(String, u32)> =
        (0..2000).map(|i| (format!("user{}@d{}.example", i, rng.below(30)), i)).collect();
    let build = |e: &[(String, u32)]| {
        let mut b = AddressTableBuilder::new();
        for (a, v) in e {
            b.insert(a, *v).unwrap();
        }
        b.build().unwrap()
    };
    let a = build(&entries);
    rng.shuffle(&mut entries);
    assert_eq!(a, build(&entries));
}

#[test]
fn fst_tables_reject_garbage_headers() {
    assert!(DomainTable::new(Bytes::from_vec(vec![])).is_err());
    assert!(AddressTable::new(Bytes::from_vec(vec![0; 10])).is_err());
    // Random bytes almost never pass fst's checksum.
    let mut rng = Rng(3);
    for _ in 0..200 {
        let bytes: Vec<u8> = (0..rng.below(200)).map(|_| rng.next() as u8).collect();
        if let Ok(t) = DomainTable::new(Bytes::from_vec(bytes)) {
            assert!(t.verify_checksum().is_err());
        }
    }
}

/// Found by the `ruleset_reader` fuzzer: a domain table (the quickstart's) whose fst header,
/// footer and CRC are all valid but whose root address points far outside the section. It opened,
/// passed `verify_checksum`, and panicked inside fst on the first lookup; a ruleset carrying it
/// with a recomputed container hash loaded, and every session's lookup panicked.
#[test]
fn fst_root_out_of_bounds_with_valid_checksum_is_refused_at_open() {
    const TABLE: &str = "03000000000000000000000000000000001082cfc9d0c5eac2cdc1c6c2c1010000000000\
                         00001d000000007320645a92ab44";
    let bytes: Vec<u8> =
        (0..TABLE.len()).step_by(2).map(|i| u8::from_str_radix(&TABLE[i..i + 2], 16).unwrap()).collect();
    let err = DomainTable::new(Bytes::from_vec(bytes.clone())).unwrap_err();
    assert!(matches!(err, TableError::FstStructure { .. }), "{err}");
    assert!(matches!(AddressTable::new(Bytes::from_vec(bytes)), Err(TableError::FstStructure { .. })));
}

/// The same bug, searched for on stable: every single-byte corruption of real fst tables either
/// fails to open or answers lookups without panicking (fst's CRC is not checked at open, so no
/// checksum has to be forged here).
#[test]
fn corrupted_fst_tables_refuse_to_open_or_answer() {
    // 36 top-level labels with distinct first bytes: the root has more than 32 transitions, which
    // fst stores with a 256-byte index, the node layout the walk must also get right.
    let tld = |i: u32| format!("{}tld", char::from_digit(i % 36, 36).unwrap());
    let mut d = DomainTableBuilder::new();
    let mut a = AddressTableBuilder::new();
    for i in 0..300u32 {
        d.insert(&format!("host{i}.zone{}.{}", i % 7, tld(i)), i % 3 == 0, i).unwrap();
        a.insert(&format!("user{i}@{}{}", tld(i), i % 5), i).unwrap();
    }
    let (domains, addresses) = (d.build().unwrap(), a.build().unwrap());
    let (dt, at) = (
        DomainTable::new(Bytes::from_vec(domains.clone())).unwrap(),
        AddressTable::new(Bytes::from_vec(addresses.clone())).unwrap(),
    );
    for i in 0..300u32 {
        assert_eq!(dt.lookup(&format!("host{i}.zone{}.{}", i % 7, tld(i))), Some(i));
        assert_eq!(at.lookup(&format!("USER{i}@{}{}", tld(i), i % 5)), Some(i));
    }
    let mut rng = Rng(11);
    for _ in 0..1000 {
        for (original, is_domains) in [(&domains, true), (&addresses, false)] {
            let mut bytes = original.clone();
            let at = rng.below(bytes.len() as u64) as usize;
            bytes[at] = rng.next() as u8;
            let bytes = Bytes::from_vec(bytes);
            if is_domains {
                if let Ok(t) = DomainTable::new(bytes) {
                    for i in [0, 3, 299] {
                        let _ = t.lookup(&format!("host{i}.zone{}.{}", i % 7, tld(i)));
                        let _ = t.lookup(&format!("x.host{i}.zone{}.{}", i % 7, tld(i)));
                    }
                }
            } else if let Ok(t) = AddressTable::new(bytes) {
                for i in [0, 3, 299] {
                    let _ = t.lookup(&format!("user{i}@{}{}", tld(i), i % 5));
                    let _ = t.contains_domain(&format!("{}{}", tld(i), i % 5));
                }
            }
        }
    }
}

/// A small ruleset with one of each table, as the compiler would write it.
fn small_ruleset() -> Vec<u8> {
    let mut d = DomainTableBuilder::new();
    d.insert("example.com", true, 1).unwrap();
    d.insert("spam.example", false, 2).unwrap();
    let mut a = AddressTableBuilder::new();
    a.insert("john@example.com", 1).unwrap();
    a.insert("abuse@example.org", 2).unwrap();
    let mut p = PrefixTableBuilder::new();
    p.insert(net("192.0.2.0/24"), 1);
    p.insert(net("2001:db8::/32"), 2);
    let mut w = ContainerWriter::new();
    w.add_section(SectionKind::Policy, 0, b"policy".to_vec()).unwrap();
    w.add_section(SectionKind::DomainTable, 0, d.build().unwrap()).unwrap();
    w.add_section(SectionKind::AddressTable, 0, a.build().unwrap()).unwrap();
    w.add_section(SectionKind::PrefixTable, 0, p.build().unwrap()).unwrap();
    w.to_bytes("mtac-ruleset test")
}

#[test]
fn tables_through_a_mapped_container() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.mtac");
    mtac_ruleset::container::write_atomic(&path, &small_ruleset()).unwrap();
    let c = Container::open(&path).unwrap();
    let d = DomainTable::new(c.section(SectionKind::DomainTable, 0).unwrap()).unwrap();
    let a = AddressTable::new(c.section(SectionKind::AddressTable, 0).unwrap()).unwrap();
    let p = PrefixTable::new(c.section(SectionKind::PrefixTable, 0).unwrap()).unwrap();
    drop(c);
    // The tables keep the map alive on their own.
    assert_eq!(d.lookup("www.example.com"), Some(1));
    assert_eq!(a.lookup("JOHN@example.com"), Some(1));
    assert_eq!(p.lookup(ip("192.0.2.77")), Some(1));
    assert_eq!(p.lookup(ip("2001:db8::25")), Some(2));
    d.verify_checksum().unwrap();
    a.verify_checksum().unwrap();
}

#[test]
fn ruleset_is_deterministic() {
    assert_eq!(small_ruleset(), small_ruleset());
}

/// The fuzz target's seed: a valid small container. `MTAC_REGENERATE_SEED=1`
/// rewrites it after a format change.
#[test]
fn fuzz_seed_is_current() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/ruleset_reader/small-ruleset.mtac");
    if std::env::var_os("MTAC_REGENERATE_SEED").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, small_ruleset()).unwrap();
    }
    let seed = std::fs::read(&path).expect("fuzz seed missing: run with MTAC_REGENERATE_SEED=1");
    assert_eq!(seed, small_ruleset(), "fuzz seed is stale: run with MTAC_REGENERATE_SEED=1");
    Container::from_vec(seed).unwrap();
}
