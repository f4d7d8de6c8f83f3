#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use super::*;
use crate::eval::{ListAnswer, SpfResult};
use crate::model::{AddressPrivacy, IpPrivacy};

fn header() -> Header {
    Header { hostname: "mx.example".into(), started: 1_700_000_000, addresses: "full".into(), client_ip: "full".into() }
}

fn record(i: u32) -> Record {
    Record {
        time: 1_700_000_000 + u64::from(i),
        farm: "inbound".into(),
        stage: Stage::Rcpt,
        facts: RecordedFacts {
            client_ip: IpAddr::from([192, 0, 2, (i % 250) as u8]),
            helo: Some("client.example".into()),
            sender: Some(format!("alice{i}@sender.example")),
            recipient: Some("bob@example.com".into()),
            authenticated: false,
            user: None,
            tls: true,
            dns: GivenDns {
                lists: vec![("zen.example".into(), ListAnswer::Listed(vec![[127, 0, 0, 2].into()]))],
                spf: Some(SpfResult::Pass),
                ..GivenDns::default()
            },
            greylist: None,
            directory: Some(DirectoryAnswer::Known),
            message: None,
            redacted: 0,
        },
        outcome: Outcome::Refused { code: 554, enhanced: "5.7.1".into(), rule: "dnsbl".into() },
    }
}

fn journal(n: u32) -> Vec<u8> {
    let mut out = encode_header(&header()).unwrap();
    for i in 0..n {
        encode_record(&record(i), &mut out).unwrap();
    }
    out
}

#[test]
fn records_read_back_as_written() {
    let bytes = journal(3);
    let reader = JournalReader::new(bytes.as_slice()).unwrap();
    assert_eq!(reader.header(), &header());
    let records: Vec<Record> = reader.map(Result::unwrap).collect();
    assert_eq!(records, vec![record(0), record(1), record(2)]);
}

#[test]
fn a_truncated_journal_names_the_offset_of_the_cut_record() {
    let whole = journal(2);
    let first_end = {
        let mut reader = JournalReader::new(whole.as_slice()).unwrap();
        reader.next().unwrap().unwrap();
        reader.offset()
    };
    for cut in [first_end + 2, first_end + 7, whole.len() as u64 - 1] {
        let bytes = &whole[..cut as usize];
        let mut reader = JournalReader::new(bytes).unwrap();
        assert!(reader.next().unwrap().is_ok());
        let error = reader.next().unwrap().unwrap_err();
        assert_eq!(error.offset, first_end, "cut at {cut}");
        assert_eq!(error.kind, JournalErrorKind::Truncated("a record"));
        assert!(reader.next().is_none(), "nothing after an error");
    }
}

#[test]
fn a_foreign_file_is_refused_at_byte_zero_and_another_layout_at_its_fingerprint() {
    let error = JournalReader::new(b"From alice@example.com Mon Jan  1".as_slice()).err().unwrap();
    assert_eq!((error.offset, error.kind), (0, JournalErrorKind::NotAJournal));
    let mut other = journal(1);
    other[10] ^= 0xff;
    let error = JournalReader::new(other.as_slice()).err().unwrap();
    assert_eq!(error.offset, 10);
    assert!(matches!(error.kind, JournalErrorKind::Layout { .. }), "{error}");
    let error = JournalReader::new(&journal(0)[..15]).err().unwrap();
    assert_eq!(error.to_string(), "at byte 15: truncated: the file ends inside the preamble");
}

#[test]
fn a_corrupt_length_is_refused_without_allocating_it() {
    let mut bytes = journal(1);
    let at = JournalReader::new(bytes.as_slice()).unwrap().offset() as usize;
    bytes[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut reader = JournalReader::new(bytes.as_slice()).unwrap();
    let error = reader.next().unwrap().unwrap_err();
    assert_eq!((error.offset, error.kind), (at as u64, JournalErrorKind::TooLong(u32::MAX)));
}

#[test]
fn pseudonymised_records_keep_no_local_part_and_one_pseudonym_per_address() {
    let privacy = Privacy::new(AddressPrivacy::Pseudonymous, IpPrivacy::Network, [7; 32]);
    let mut a = record(1).facts;
    a.user = Some("alice".into());
    let mut b = a.clone();
    privacy.apply(&mut a);
    privacy.apply(&mut b);
    assert_eq!(a, b, "one pseudonym per address under one key");
    let text = format!("{a:?}");
    assert!(!text.contains("alice") && !text.contains("bob@"), "{text}");
    assert!(a.recipient.as_deref().unwrap().ends_with("@example.com"));
    assert_eq!(a.client_ip, IpAddr::from([192, 0, 2, 0]));
    assert_eq!(a.redacted, REDACTED_LOCAL_PARTS | REDACTED_CLIENT_IP);
    let other = Privacy::new(AddressPrivacy::Pseudonymous, IpPrivacy::Full, [8; 32]);
    let mut c = record(1).facts;
    other.apply(&mut c);
    assert_ne!(a.recipient, c.recipient, "another key, another pseudonym");

    let mut null = record(1).facts;
    null.sender = Some(String::new());
    null.recipient = Some("postmaster".into());
    Privacy::new(AddressPrivacy::Domain, IpPrivacy::Full, [0; 32]).apply(&mut null);
    assert_eq!((null.sender.as_deref(), null.redacted), (Some(""), 0), "nothing personal, nothing replaced");
}

#[test]
fn rotation_keeps_the_files_under_the_bound_and_each_file_readable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    let (max, files) = (3 * 9 * 1024, 3);
    let mut file = JournalFile::open(&path, max, files, &header()).unwrap();
    let mut frame = Vec::new();
    let mut written = 0;
    for i in 0..2000 {
        frame.clear();
        encode_record(&record(i), &mut frame).unwrap();
        file.write(&frame).unwrap();
        written += 1;
    }
    file.flush().unwrap();
    let paths = JournalFile::files(&path, files);
    assert_eq!(paths.len(), 3);
    assert!(!dir.path().join("journal.3").exists());
    let total: u64 = paths.iter().map(|p| std::fs::metadata(p).unwrap().len()).sum();
    assert!(total <= max, "{total} > {max}");
    let mut newest_first = Vec::new();
    for p in &paths {
        let records: Vec<Record> =
            JournalReader::new(std::fs::File::open(p).unwrap()).unwrap().map(Result::unwrap).collect();
        assert!(!records.is_empty());
        newest_first.push(records);
    }
    // The current file holds the last records written; the files follow each other.
    assert_eq!(newest_first[0].last().unwrap(), &record(written - 1));
    assert_eq!(newest_first[1].last().unwrap().time + 1, newest_first[0][0].time);
    assert_eq!(newest_first[2].last().unwrap().time + 1, newest_first[1][0].time);

    // A new run rotates the last run's file away rather than append under another header.
    drop(file);
    let _again = JournalFile::open(&path, max, files, &header()).unwrap();
    let first: Vec<_> =
        JournalReader::new(std::fs::File::open(dir.path().join("journal.1")).unwrap()).unwrap().collect();
    assert_eq!(first.last().unwrap().as_ref().unwrap(), &record(written - 1));
}

#[test]
fn fuzz_corpus() {
    crate::fuzz::replay_corpus("journal_reader", fuzz_reader);
}

/// Writes the `journal_reader` seed corpus: a whole journal, one cut inside a record, one with a
/// corrupt length (`cargo test -p mtac-ruleset -- --ignored write_seed_corpus`).
#[test]
#[ignore = "writes fuzz/corpus/journal_reader"]
fn write_seed_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/journal_reader");
    std::fs::create_dir_all(&dir).unwrap();
    let whole = journal(3);
    let mut corrupt = whole.clone();
    let at = JournalReader::new(whole.as_slice()).unwrap().offset() as usize;
    corrupt[at + 4] = 0xff;
    std::fs::write(dir.join("whole"), &whole).unwrap();
    std::fs::write(dir.join("truncated"), &whole[..whole.len() - 5]).unwrap();
    std::fs::write(dir.join("corrupt-record"), &corrupt).unwrap();
    std::fs::write(dir.join("header-only"), journal(0)).unwrap();
}
