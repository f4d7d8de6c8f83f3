//! The checks of the `ruleset_reader` fuzz target, kept here so that the target (in `fuzz/`,
//! nightly and libFuzzer) and the corpus replay test (`tests/format/fuzz_corpus.rs`, stable, in
//! every `cargo test`) run exactly the same code. Not part of the API.
//!
//! Arbitrary bytes as a ruleset file: the reader must answer with an error or a container, never
//! panic, and tables inside a verified container must answer lookups.
//!
//! Random bytes almost never carry a valid BLAKE3 hash, so each input is also tried with its hash
//! recomputed: that lets the fuzzer reach the section table, the policy decoding and the reference
//! checks behind the integrity check. The same input is also fed to the table readers directly.
//! Every table that opens is queried, and a loaded ruleset's decision program is run: opening a
//! table checks its structure (see "Trust" in [`crate::tables`]), so neither a hash nor a
//! checksum is needed for lookups to be safe.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::container::{self, Bytes, Container, SectionKind};
use crate::eval::{self, Facts, NoDns};
use crate::model::Stage;
use crate::tables::{AddressTable, DomainTable, PrefixTable};
use crate::Ruleset;

const DOMAINS: [&str; 4] = ["example.com", "www.example.com", "EXAMPLE.org.", ""];
const ADDRESSES: [&str; 3] = ["john@example.com", "JOHN@EXAMPLE.COM.", "no-at-sign"];
const IPS: [IpAddr; 4] = [
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
    IpAddr::V4(Ipv4Addr::new(255, 255, 255, 255)),
    IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
    IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0xc000, 0x0201)),
];

/// Runs every check on one input; panics (the fuzzer's signal) only on a bug.
#[doc(hidden)]
pub fn ruleset_reader(data: &[u8]) {
    check_file(data.to_vec());
    let mut rehashed = data.to_vec();
    if container::rehash(&mut rehashed) && rehashed != data {
        check_file(rehashed);
    }

    let bytes = Bytes::from_vec(data.to_vec());
    if let Ok(t) = PrefixTable::new(bytes.clone()) {
        query_prefixes(&t);
    }
    if let Ok(t) = DomainTable::new(bytes.clone()) {
        let _ = t.verify_checksum();
        query_domains(&t);
    }
    if let Ok(t) = AddressTable::new(bytes) {
        let _ = t.verify_checksum();
        query_addresses(&t);
    }
}

fn check_file(file: Vec<u8>) {
    let Ok(container) = Container::from_vec(file.clone()) else {
        assert!(Ruleset::from_vec(file).is_err(), "a ruleset loaded from a file that is no container");
        return;
    };
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
            SectionKind::Policy | SectionKind::Model => {}
        }
    }

    let Ok(ruleset) = Ruleset::from_vec(file) else {
        return;
    };
    // A loaded ruleset is one the runtime would serve: run its decision program.
    let [v4, _, v6, mapped] = IPS;
    for farm in &ruleset.policy().farms {
        for (client_ip, sender, recipient) in [
            (v4, Some("john@example.com"), Some("JOHN@EXAMPLE.COM.")),
            (v6, Some(""), Some("postmaster@www.example.com")),
            (mapped, None, Some("no-at-sign")),
        ] {
            let facts = Facts {
                client_ip,
                helo: Some("mail.example.org"),
                sender,
                recipient,
                authenticated: false,
                user: None,
                tls: false,
                hostname: &ruleset.policy().hostname,
                dns: &NoDns,
                greylist: None,
                directory: None,
                message: None,
            };
            for stage in Stage::ALL {
                let _ = eval::evaluate(&ruleset, farm, stage, &facts);
            }
        }
    }
}

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

/// Replay every committed input of the workspace's `fuzz/corpus/TARGET/` through `check`, the
/// target's own checks, on stable: what every crate's corpus test calls. Panics naming the input
/// that fails, and when the corpus is empty (a replay of nothing proves nothing).
#[doc(hidden)]
#[allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]
pub fn replay_corpus(target: &str, check: impl Fn(&[u8]) + std::panic::RefUnwindSafe) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target);
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the {target} corpus is empty");
    for path in files {
        let bytes = std::fs::read(&path).unwrap();
        if std::panic::catch_unwind(|| check(&bytes)).is_err() {
            panic!("fuzz input {} fails its checks", path.display());
        }
    }
}
