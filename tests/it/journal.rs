//! Issue 20, the decision journal and `mtac diff`: a real node records every decision of scripted
//! SMTP traffic; `mtac diff` replays the journal through the node's own ruleset (no difference
//! at all, and every replay equal to what the node decided: the evaluator is the node's) and
//! through a candidate (exactly the expected changes, and the CI gate's exit code). Rotation
//! and the size bound, privacy, unreadable journals and the structural diff too.

use crate::greylist::{send, GREYLIST};
use crate::support::{build, code, relay_policy, sample, Behaviour, Client, Sink, TestNode};
use mtac_ruleset::journal::{JournalReader, Record};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// Greylisting, HELO hygiene, a client refused at connect and a trusted network.
fn policy(journal: &str) -> String {
    let checks = format!(
        "{GREYLIST}\n    helo fqdn=#true\n    access stage=\"connect\" {{\n        accept \"127.0.41.0/24\"\n        \
         reject \"127.0.0.20\"\n    }}"
    );
    relay_policy(&checks).replace(
        "spool \"{dir}/spool\"",
        &format!("spool \"{{dir}}/spool\"\nstate \"embedded\" path=\"{{dir}}/state.redb\"\n{journal}"),
    )
}

const JOURNAL: &str = "journal \"{dir}/journal\"";

fn mtac(args: &[&str], paths: &[&Path]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mtac"));
    command.args(args);
    for p in paths {
        command.arg(p);
    }
    command.output().unwrap()
}

fn diff_json(old: &Path, new: &Path, journals: &[PathBuf], extra: &[&str]) -> (Option<i32>, serde_json::Value) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mtac"));
    command.arg("diff").arg(old).arg(new).args(["--format", "json"]).args(extra);
    for j in journals {
        command.arg("--journal").arg(j);
    }
    let out = command.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}\n{}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code(), value)
}

fn records(path: &Path) -> Vec<Record> {
    JournalReader::new(std::fs::File::open(path).unwrap()).unwrap().map(Result::unwrap).collect()
}

/// The node's policy with `{dir}` filled in, compiled to a ruleset file beside it.
fn ruleset_of(node: &TestNode, text: &str, name: &str, backend: &str) -> PathBuf {
    let dir = node.dir.path();
    let policy = dir.join(format!("{name}.kdl"));
    std::fs::write(&policy, text.replace("{dir}", dir.to_str().unwrap()).replace("{backend}", backend)).unwrap();
    let ruleset = dir.join(format!("{name}.mtac"));
    build(&policy, &ruleset);
    ruleset
}

/// Wait until the writer thread has written every record the node counted (it flushes whenever
/// its queue runs empty), and read them.
async fn written(node: &TestNode, files: &[PathBuf]) -> Vec<Record> {
    // The writer lets records gather for 20 ms after a quiet spell: a count that held still for
    // 100 ms, all of it in the files, is the whole traffic.
    let mut last = (0, 0);
    for _ in 0..250 {
        let m = node.metrics().await;
        let counted = sample(&m, "mtac_journal_records_total") as usize;
        let read: Vec<Record> = files.iter().filter(|f| f.exists()).flat_map(|f| records(f)).collect();
        last = if counted > 0 && read.len() == counted && last.0 == counted {
            (counted, last.1 + 1)
        } else {
            (counted, 0)
        };
        if last.1 == 5 {
            return read;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the journal's records never all reached the file: {}", node.metrics().await);
}

/// The scripted traffic: accepted, refused at connect, refused at RCPT (relay, HELO), greylisted.
async fn traffic(node: &TestNode) {
    let (r, done) = send(node.addr, "127.0.41.7", "alice@sender.example", "bob@example.test").await;
    assert_eq!((code(&r), done.as_deref().map(code)), (250, Some(250)), "trusted and delivered: {r}");
    let mut c = Client::connect_from(node.addr, "127.0.0.20").await;
    assert_eq!(code(&c.reply().await), 554, "refused at connect");
    c.cmd("QUIT").await;
    let (r, _) = send(node.addr, "127.0.0.30", "carol@sender.example", "bob@example.test").await;
    assert!(r.starts_with("451 4.7.1"), "greylisted: {r}");
    let (r, _) = send(node.addr, "127.0.0.31", "dave@sender.example", "eve@elsewhere.example").await;
    assert_eq!(code(&r), 554, "relaying denied: {r}");
    let mut c = Client::connect_from(node.addr, "127.0.0.32").await;
    c.reply().await;
    c.cmd("EHLO workstation").await;
    c.cmd("MAIL FROM:<frank@sender.example>").await;
    let r = c.cmd("RCPT TO:<bob@example.test>").await;
    assert_eq!(code(&r), 504, "a bare HELO name: {r}");
    c.cmd("QUIT").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journal_replayed_through_its_own_ruleset_reproduces_every_decision_and_a_candidate_shows_its_blast_radius() {
    let sink = Sink::start(Behaviour::default()).await;
    let text = policy(JOURNAL);
    let node = TestNode::start(&text, Some(sink.addr)).await;
    traffic(&node).await;
    let journal = node.dir.path().join("journal");
    let recorded = written(&node, std::slice::from_ref(&journal)).await;
    let m = node.metrics().await;
    assert_eq!(sample(&m, "mtac_journal_dropped_total"), 0.0, "{m}");
    assert_eq!(sample(&m, "mtac_journal_bytes_total") as u64, {
        let header = JournalReader::new(std::fs::File::open(&journal).unwrap()).unwrap().offset();
        std::fs::metadata(&journal).unwrap().len() - header
    });
    // Every stage of the script is there, with what the node answered.
    let outcome = |ip: &str, stage: &str| -> Vec<String> {
        recorded
            .iter()
            .filter(|r| r.facts.client_ip.to_string() == ip && r.stage.as_str() == stage)
            .map(|r| r.outcome.to_string())
            .collect()
    };
    assert_eq!(outcome("127.0.41.7", "rcpt"), ["pass"]);
    assert_eq!(outcome("127.0.0.20", "connect"), ["554 5.7.1 (access)"]);
    assert_eq!(outcome("127.0.0.30", "rcpt"), ["ask greylist"]);
    assert_eq!(outcome("127.0.0.31", "rcpt"), ["554 5.7.1 (relay)"]);
    assert_eq!(outcome("127.0.0.32", "rcpt"), ["504 5.5.2 (helo.fqdn)"]);
    assert_eq!(outcome("127.0.0.32", "helo"), ["pass"], "HELO checks answer at RCPT");
    let trusted = recorded.iter().find(|r| r.facts.client_ip.to_string() == "127.0.41.7" && r.stage.as_str() == "rcpt");
    let facts = &trusted.unwrap().facts;
    assert_eq!(
        (facts.helo.as_deref(), facts.sender.as_deref(), facts.recipient.as_deref()),
        (Some("mail.sender.example"), Some("alice@sender.example"), Some("bob@example.test"))
    );

    let backend = sink.addr.to_string();
    let r = ruleset_of(&node, &text, "r", &backend);
    let (status, same) = diff_json(&r, &r, std::slice::from_ref(&journal), &["--fail-if-refused", "0"]);
    assert_eq!(status, Some(0), "{same}");
    assert_eq!(same["decisions"], recorded.len() as u64, "{same}");
    assert_eq!(same["changed"], 0, "{same}");
    assert_eq!(same["live_mismatch"]["decisions"], 0, "every replay is what the node decided: {same}");
    assert_eq!(same["redacted"]["decisions"], 0);

    // The candidate refuses the trusted client at connect: its connect decision is newly
    // refused, and its recipient, no longer trusted, would now wait for greylisting.
    let stricter = text.replace("reject \"127.0.0.20\"", "reject \"127.0.0.20\" \"127.0.41.7\"");
    let r2 = ruleset_of(&node, &stricter, "r2", &backend);
    let (status, blast) = diff_json(&r, &r2, std::slice::from_ref(&journal), &["--fail-if-refused", "0"]);
    assert_eq!(status, Some(1), "over the gate: {blast}");
    assert_eq!(blast["changed"], 2, "{blast}");
    assert_eq!(blast["by_change"]["newly-refused"], 1, "{blast}");
    assert_eq!(blast["by_change"]["pending-changed"], 1, "{blast}");
    let pending = &blast["groups"][1];
    assert_eq!((pending["stage"].as_str(), pending["change"].as_str()), (Some("rcpt"), Some("pending-changed")));
    assert_eq!(
        (pending["examples"][0]["old"].as_str(), pending["examples"][0]["new"].as_str()),
        (Some("pass"), Some("ask greylist"))
    );
    let group = &blast["groups"][0];
    assert_eq!((group["farm"].as_str(), group["stage"].as_str()), (Some("mx"), Some("connect")), "{blast}");
    assert_eq!((group["change"].as_str(), group["rule"].as_str()), (Some("newly-refused"), Some("access")));
    assert_eq!(group["examples"][0]["client"], "127.0.41.7");
    assert_eq!(group["examples"][0]["new"], "554 5.7.1 (access)");
    let (status, _) = diff_json(&r, &r2, std::slice::from_ref(&journal), &["--fail-if-refused", "1"]);
    assert_eq!(status, Some(0), "one newly refused decision is within a gate of 1");
    let (status, within) = diff_json(&r, &r2, std::slice::from_ref(&journal), &["--fail-if-refused", "50%"]);
    assert_eq!(status, Some(0), "{within}");

    // Backwards, the journal no longer matches OLD's decisions: reported, not hidden.
    let (_, reversed) = diff_json(&r2, &r, std::slice::from_ref(&journal), &[]);
    assert_eq!(reversed["live_mismatch"]["decisions"], 2, "{reversed}");
    assert_eq!(reversed["by_change"]["newly-accepted"], 1, "{reversed}");

    let human = mtac(&["diff"], &[&r, &r2, Path::new("--journal"), &journal]);
    let shown = String::from_utf8_lossy(&human.stdout);
    assert!(shown.contains("newly refused: 1"), "{shown}");
    assert!(shown.contains("mx connect newly-refused access: 1"), "{shown}");
    assert!(shown.contains("client 127.0.41.7: pass → 554 5.7.1 (access)"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_journal_rotates_within_its_bound_and_a_pseudonymous_one_keeps_no_local_part() {
    let sink = Sink::start(Behaviour::default()).await;
    let text = policy("journal \"{dir}/journal\" max-size=\"64KiB\" files=4 addresses=\"pseudonymous\"");
    let node = TestNode::start(&text, Some(sink.addr)).await;
    for _ in 0..4 {
        let mut c = Client::connect_from(node.addr, "127.0.41.9").await;
        c.reply().await;
        c.cmd("EHLO mail.sender.example").await;
        for round in 0..5 {
            assert_eq!(code(&c.cmd("MAIL FROM:<alice@sender.example>").await), 250);
            for i in 0..40 {
                let r = c.cmd(&format!("RCPT TO:<bob{round}x{i}@example.test>")).await;
                assert_eq!(code(&r), 250, "{r}");
            }
            c.cmd("RSET").await;
        }
        c.cmd("QUIT").await;
    }
    let dir = node.dir.path();
    let files: Vec<PathBuf> = ["journal", "journal.1", "journal.2", "journal.3"].iter().map(|f| dir.join(f)).collect();
    // Wait for the writer to settle: the counted records have all been written somewhere.
    for _ in 0..250 {
        let m = node.metrics().await;
        if sample(&m, "mtac_journal_records_total") >= 800.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(files.iter().all(|f| f.exists()), "rotated into four files");
    assert!(!dir.join("journal.4").exists(), "the oldest is removed");
    let total: u64 = files.iter().map(|f| std::fs::metadata(f).unwrap().len()).sum();
    assert!(total <= 64 * 1024, "{total} bytes");
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("alice") && !text.contains("bob"), "a local part in {}", f.display());
        assert!(text.contains("example.test"), "domains are kept");
        for r in records(f) {
            let personal = r.facts.sender.is_some() || r.facts.recipient.is_some();
            assert_eq!(r.facts.redacted != 0, personal, "only records with addresses are marked: {r:?}");
        }
    }
    // Pseudonymised decisions are replayed apart, never counted as changes or mismatches.
    let r = ruleset_of(&node, &text, "r", &sink.addr.to_string());
    let (status, value) = diff_json(&r, &r, &files, &[]);
    assert_eq!(status, Some(0));
    assert_eq!(value["changed"], 0, "connect and HELO decisions replay as ever: {value}");
    assert_eq!(value["live_mismatch"]["decisions"], 0, "{value}");
    assert!(value["redacted"]["decisions"].as_u64().unwrap() > 100, "{value}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_turns_the_journal_on() {
    let sink = Sink::start(Behaviour::default()).await;
    let node = TestNode::start(&policy(""), Some(sink.addr)).await;
    let journal = node.dir.path().join("journal");
    let (r, _) = send(node.addr, "127.0.41.7", "alice@sender.example", "bob@example.test").await;
    assert_eq!(code(&r), 250);
    assert!(!journal.exists(), "off by default");
    let text = policy(JOURNAL)
        .replace("{backend}", &sink.addr.to_string())
        .replace("{dir}", node.dir.path().to_str().unwrap());
    let tmp = node.dir.path().join("policy.kdl.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, node.dir.path().join("policy.kdl")).unwrap();
    for _ in 0..250 {
        if node.shared.metrics.reloads_counted("ok") == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (r, _) = send(node.addr, "127.0.41.8", "alice@sender.example", "bob@example.test").await;
    assert_eq!(code(&r), 250);
    let recorded = written(&node, std::slice::from_ref(&journal)).await;
    assert!(recorded.iter().all(|r| r.facts.client_ip.to_string() == "127.0.41.8"), "{recorded:?}");
}

#[test]
fn a_truncated_or_foreign_journal_is_an_error_naming_the_offset() {
    let dir = tempfile::tempdir().unwrap();
    let text = policy(JOURNAL).replace("{dir}", dir.path().to_str().unwrap()).replace("{backend}", "127.0.0.1:9");
    let policy = dir.path().join("p.kdl");
    std::fs::write(&policy, text).unwrap();
    let r = dir.path().join("r.mtac");
    build(&policy, &r);
    let foreign = dir.path().join("mbox");
    std::fs::write(&foreign, "From alice@example.com Mon Jan  1 00:00:00 2024\n").unwrap();
    let out = mtac(&["diff"], &[&r, &r, Path::new("--journal"), &foreign]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("mbox: at byte 0: not an mtac journal"), "{said}");

    // A whole journal with its last record cut short: the fuzz seed, which a change to the record
    // types makes foreign ("record layout …"): write the seeds again with
    // `cargo test -p mtac-ruleset -- --ignored write_seed_corpus`.
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/journal_reader/truncated");
    let out = mtac(&["diff"], &[&r, &r, Path::new("--journal"), &seed]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("truncated: at byte ") && said.contains("the file ends inside a record"), "{said}");
}

#[test]
fn the_structural_diff_names_an_added_entry_a_removed_step_and_a_changed_reply() {
    let dir = tempfile::tempdir().unwrap();
    let text = policy("").replace("{dir}", dir.path().to_str().unwrap()).replace("{backend}", "127.0.0.1:9");
    let old = dir.path().join("old.kdl");
    std::fs::write(&old, &text).unwrap();
    let candidate = text
        .replace("reject \"127.0.0.20\"", "reject \"127.0.0.20\"\n        accept \"198.51.100.0/24\"")
        .replace("    helo fqdn=#true\n", "")
        .replace("Greylisted, come back later", "Greylisted, please retry");
    let candidate =
        candidate.replace("local-domains \"example.test\"", "local-domains \"example.test\" \"example.org\"");
    let new = dir.path().join("new.kdl");
    std::fs::write(&new, &candidate).unwrap();
    let out = mtac(&["diff"], &[&old, &new]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{shown}{}", String::from_utf8_lossy(&out.stderr));
    assert!(shown.contains("mx rcpt: step removed: helo.fqdn"), "{shown}");
    assert!(
        shown.contains(
            "mx rcpt: greylist: reply 451 4.7.1 Greylisted, come back later → 451 4.7.1 Greylisted, please retry"
        ),
        "{shown}"
    );
    assert!(shown.contains("table mx.local-domains: 1 added, 0 removed\n  + example.org"), "{shown}");
    assert!(shown.contains("table mx.access: 1 → 2 entries") || shown.contains("mx.access"), "{shown}");
    assert!(shown.contains("settings (mtac inspect --settings):"), "{shown}");
}

#[test]
fn check_refuses_a_journal_too_small_or_of_an_unknown_mode_and_inspect_prints_it() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, journal: &str| -> PathBuf {
        let text = policy(journal).replace("{dir}", dir.path().to_str().unwrap()).replace("{backend}", "127.0.0.1:9");
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let bad = write("bad.kdl", "journal \"j\" max-size=\"32KiB\" files=4 addresses=\"hashed\"");
    let out = mtac(&["check"], &[&bad]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("mtac::journal::max-size") && said.contains("mtac::journal::mode"), "{said}");
    let good = write("good.kdl", "journal \"j\" files=2 addresses=\"domain\" client-ip=\"network\"");
    let ruleset = dir.path().join("good.mtac");
    build(&good, &ruleset);
    let out = mtac(&["inspect", "--settings"], &[&ruleset]);
    let shown = String::from_utf8_lossy(&out.stdout);
    let expected = format!(
        "journal \"{}\" max-size=\"256MiB\" files=2 addresses=\"domain\" client-ip=\"network\"",
        dir.path().join("j").display()
    );
    assert!(shown.contains(&expected), "{shown}");
}
