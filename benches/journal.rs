//! The decision journal's cost and `mtac diff`'s speed (issue 20).
//!
//!     cargo bench --bench journal               # 1,000,000 records
//!     cargo bench --bench journal -- --quick    # 100,000
//!
//! 1. Journal cost per decision: synthetic records (a spam-wave mix of connect, HELO, MAIL and
//!    RCPT decisions with DNS list answers, facts as a node records them) encoded and written
//!    through `JournalFile` as the node's writer thread does (buffered, rotated): bytes per
//!    record and CPU time per record of encode + write (the session's own part is an owned copy
//!    of the facts and one `try_send`).
//! 2. `mtac diff OLD NEW --journal FILE`, the real binary, over those records: every record
//!    replayed through two compiled rulesets (an inbound farm with an access list, HELO and
//!    sender hygiene, two DNS lists, greylisting; the candidate refuses one more network and
//!    asks for FQDN senders). Target: 1,000,000 decisions in at most 10 s on 2 cores.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::indexing_slicing)]

use mtac_ruleset::eval::{GivenDns, ListAnswer};
use mtac_ruleset::journal::{encode_record, Header, JournalFile, Record, RecordedFacts};
use mtac_ruleset::model::Stage;
use mtac_ruleset::replay::Outcome;
use mtac_ruleset::Ruleset;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Instant;

const POLICY: &str = r#"
hostname "mx.bench.example"
spool "/tmp"
farm "mx" kind="inbound-mx" {
    listen "127.0.0.1:2525"
    local-domains "example.com" "example.net" "example.org"
    relay {
        backend "smtp://127.0.0.1:10025"
    }
    helo fqdn=#true
    sender fqdn=SENDER_FQDN
    access {
        accept "10.0.0.0/8"
        reject "198.51.100.0/24" EXTRA
    }
    dnsbl threshold=3 {
        zone "zen.example" {
            answer "127.0.0.[2..3]" weight=3
            answer "127.0.0.[10..11]" weight=1
        }
        zone "bl.example" {
            answer "127.0.0.2" weight=2
        }
    }
    greylist delay="5m"
}
"#;

fn compile(dir: &Path, name: &str, text: &str) -> Ruleset {
    let path = dir.join(format!("{name}.kdl"));
    std::fs::write(&path, text).unwrap();
    let compiled = mtac_compiler::compile_path_with(&path, &mtac_compiler::Options::default());
    let output = compiled.output.unwrap_or_else(|| panic!("{name} does not compile"));
    std::fs::write(dir.join(format!("{name}.mtac")), &output.bytes).unwrap();
    output.ruleset
}

/// A small deterministic generator (xorshift), so every run replays the same traffic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn record(rng: &mut Rng, i: u64, old: &Ruleset) -> Record {
    let r = rng.next();
    let client = match r % 10 {
        0 => Ipv4Addr::new(10, 1, (r >> 8) as u8, (r >> 16) as u8),
        1 => Ipv4Addr::new(198, 51, 100, (r >> 8) as u8),
        2 => Ipv4Addr::new(203, 0, 113, (r >> 8) as u8),
        _ => Ipv4Addr::new(192, 0, (r >> 8) as u8 % 64, (r >> 16) as u8),
    };
    let stage = match (r >> 24) % 6 {
        0 => Stage::Connect,
        1 => Stage::Helo,
        2 => Stage::Mail,
        _ => Stage::Rcpt,
    };
    let listed = match (r >> 32) % 8 {
        0 => ListAnswer::Listed(vec![Ipv4Addr::new(127, 0, 0, 2)]),
        1 => ListAnswer::Listed(vec![Ipv4Addr::new(127, 0, 0, 10)]),
        _ => ListAnswer::NotListed,
    };
    let helo = if (r >> 40).is_multiple_of(5) {
        "workstation".to_owned()
    } else {
        format!("mail{}.sender{}.example", r % 97, r % 1013)
    };
    let sender = if (r >> 44).is_multiple_of(7) {
        format!("user{}@localhost", r % 50)
    } else {
        format!("user{}@sender{}.example", r % 5003, r % 1013)
    };
    let recipient = match (r >> 48) % 10 {
        0 => format!("someone{}@elsewhere.example", r % 31),
        _ => format!("user{}@example.{}", r % 20011, ["com", "net", "org"][(r % 3) as usize]),
    };
    let mut facts = RecordedFacts {
        client_ip: IpAddr::V4(client),
        helo: (stage != Stage::Connect).then_some(helo),
        sender: matches!(stage, Stage::Mail | Stage::Rcpt).then_some(sender),
        recipient: (stage == Stage::Rcpt).then_some(recipient),
        authenticated: false,
        user: None,
        tls: r.is_multiple_of(2),
        dns: GivenDns {
            lists: vec![("zen.example".to_owned(), listed), ("bl.example".to_owned(), ListAnswer::NotListed)],
            ..GivenDns::default()
        },
        greylist: None,
        directory: None,
        message: None,
        redacted: 0,
    };
    facts.redacted = 0;
    let mut record =
        Record { time: 1_800_000_000 + i / 1000, farm: "mx".to_owned(), stage, facts, outcome: Outcome::Pass };
    record.outcome = record.replay(old).unwrap();
    record
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n: u64 = if quick { 100_000 } else { 1_000_000 };
    let dir = tempfile::tempdir().unwrap();
    let old_text = POLICY.replace("SENDER_FQDN", "#false").replace(" EXTRA", "");
    let new_text = POLICY.replace("SENDER_FQDN", "#true").replace(" EXTRA", " \"203.0.113.0/24\"");
    let old = compile(dir.path(), "old", &old_text);
    compile(dir.path(), "new", &new_text);

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let records: Vec<Record> = (0..n).map(|i| record(&mut rng, i, &old)).collect();

    // 1. Encode and write, as the node's writer thread does.
    let path = dir.path().join("journal");
    let header =
        Header { hostname: "mx.bench.example".into(), started: 0, addresses: "full".into(), client_ip: "full".into() };
    let mut file = JournalFile::open(&path, 4 << 30, 1, &header).unwrap();
    let mut frame = Vec::with_capacity(512);
    let mut bytes = 0u64;
    let started = Instant::now();
    for record in &records {
        frame.clear();
        bytes += encode_record(record, &mut frame).unwrap() as u64;
        file.write(&frame).unwrap();
    }
    file.flush().unwrap();
    let write = started.elapsed();
    drop(file);
    println!(
        "journal: {n} records, {:.1} bytes/record, encode+write {:.0} ns/record ({:.2} s)",
        bytes as f64 / n as f64,
        write.as_nanos() as f64 / n as f64,
        write.as_secs_f64()
    );

    // 2. mtac diff over them, the real command.
    let started = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mtac"))
        .arg("diff")
        .arg(dir.path().join("old.mtac"))
        .arg(dir.path().join("new.mtac"))
        .arg("--journal")
        .arg(&path)
        .args(["--format", "json"])
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(value["decisions"], n);
    assert_eq!(value["live_mismatch"]["decisions"], 0);
    println!(
        "mtac diff: {n} decisions in {:.2} s ({:.0} ns/decision, two evaluations each); changed {} (newly refused {})",
        took.as_secs_f64(),
        took.as_nanos() as f64 / n as f64,
        value["changed"],
        value["by_change"]["newly-refused"]
    );
}
