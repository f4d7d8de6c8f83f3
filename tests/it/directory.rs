//! Recipient validation against a real slapd at RCPT TO (issue 6): known and unknown
//! recipients, the compiled table and role accounts as fast paths that never ask LDAP, filter
//! injection, the caches answering while the directory is down, 451 (never 550) for a
//! directory that is down or hangs, recovery after a restart, and `mtac build
//! --export-directory` copying the directory into the ruleset.

use crate::support::{code, sample, Behaviour, Client, Sink, Slapd, TestNode};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A read-only account for mtac, allowed to page through the whole directory (the export).
const READER: &str =
    "dn: cn=reader,dc=example,dc=test\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n\
                      cn: reader\nuserPassword: reader-secret\n\n";
const READER_LIMITS: &str = "limits dn.exact=\"cn=reader,dc=example,dc=test\" size.prtotal=unlimited";

fn people(extra: &str) -> String {
    format!(
        "{READER}dn: uid=dave,ou=people,dc=example,dc=test\nobjectClass: inetOrgPerson\nuid: dave\ncn: Dave\nsn: D\n\
         mail: dave@example.test\nmail: d.d@example.test\n\n\
         dn: uid=erin,ou=people,dc=example,dc=test\nobjectClass: inetOrgPerson\nuid: erin\ncn: Erin\nsn: E\n\
         mail: erin@example.test\n\n{extra}"
    )
}

fn directory_policy(port: u16, secret: &Path, extra: &str) -> String {
    crate::support::relay_policy(&format!(
        r#"role-accounts "postmaster" "abuse"
    local-addresses "listed@example.test"
    directory "ldap://127.0.0.1:{port}" base="ou=people,dc=example,dc=test" timeout="1s" pool=2 {extra} {{
        attributes "mail"
        bind "cn=reader,dc=example,dc=test" password-file="{}"
        cache positive="10m" negative="10m"
    }}"#,
        secret.display()
    ))
}

/// One session: MAIL, then each RCPT; the replies in order.
async fn rcpts(addr: SocketAddr, recipients: &[&str]) -> Vec<String> {
    let mut c = Client::connect(addr).await;
    assert_eq!(code(&c.reply().await), 220);
    assert_eq!(code(&c.cmd("EHLO client.example.org").await), 250);
    assert_eq!(code(&c.cmd("MAIL FROM:<alice@sender.example>").await), 250);
    let mut replies = Vec::new();
    for r in recipients {
        replies.push(c.cmd(&format!("RCPT TO:<{r}>")).await);
    }
    let _ = c.cmd("QUIT").await;
    replies
}

fn lookups(metrics: &str, result: &str, source: &str) -> f64 {
    sample(metrics, &format!(r#"mtac_directory_lookups_total{{farm="mx",result="{result}",source="{source}"}}"#))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipients_are_checked_in_ldap_cached_and_deferred_while_it_is_down() {
    let Some(mut slapd) = Slapd::start_with("", &people("")).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("ldap.secret");
    std::fs::write(&secret, "reader-secret\n").unwrap();
    let sink = Sink::start(Behaviour::default()).await;
    let node = TestNode::start(&directory_policy(slapd.port, &secret, ""), Some(sink.addr)).await;

    let r = rcpts(
        node.addr,
        &[
            "dave@example.test",
            "D.D@example.test",
            "nobody@example.test",
            "*@example.test",
            "listed@example.test",
            "abuse@example.test",
            "someone@elsewhere.example",
        ],
    )
    .await;
    assert_eq!(code(&r[0]), 250, "a directory user: {r:?}");
    assert_eq!(code(&r[1]), 250, "a second address of the same entry, any case: {r:?}");
    assert!(r[2].starts_with("550 5.1.1"), "an unknown address is refused at once: {r:?}");
    // Unescaped, `(mail=*@example.test)` would match every user: the address must match itself.
    assert!(r[3].starts_with("550 5.1.1"), "a filter injection finds nobody: {r:?}");
    assert_eq!(code(&r[4]), 250, "the compiled table: {r:?}");
    assert_eq!(code(&r[5]), 250, "a role account: {r:?}");
    assert!(r[6].starts_with("554 5.7.1"), "relay control comes first: {r:?}");
    let m = node.metrics().await;
    assert_eq!(lookups(&m, "known", "directory"), 2.0, "{m}");
    assert_eq!(lookups(&m, "unknown", "directory"), 2.0, "{m}");
    assert_eq!(
        lookups(&m, "known", "cache") + lookups(&m, "unknown", "cache"),
        0.0,
        "the table, role accounts and foreign domains never reach the directory"
    );

    // A message to a directory user goes through.
    let mut c = Client::connect(node.addr).await;
    c.reply().await;
    c.cmd("EHLO client.example.org").await;
    c.cmd("MAIL FROM:<alice@sender.example>").await;
    assert_eq!(code(&c.cmd("RCPT TO:<erin@example.test>").await), 250);
    assert_eq!(code(&c.cmd("DATA").await), 354);
    assert_eq!(code(&c.cmd("Subject: hi\r\n\r\nhello\r\n.").await), 250);
    assert_eq!(sink.messages().len(), 1);

    // The directory goes away: what is cached is still answered, the rest is deferred.
    slapd.stop();
    let started = Instant::now();
    let r = rcpts(node.addr, &["dave@example.test", "nobody@example.test", "erin@example.test", "frank@example.test"])
        .await;
    assert_eq!(code(&r[0]), 250, "known, from the cache: {r:?}");
    assert!(r[1].starts_with("550 5.1.1"), "unknown, from the negative cache: {r:?}");
    assert_eq!(code(&r[2]), 250, "{r:?}");
    assert!(r[3].starts_with("451 4.4.3"), "an address never seen: deferred, not refused: {r:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "a dead directory is noticed within the timeout");
    let m = node.metrics().await;
    assert_eq!(lookups(&m, "known", "cache"), 2.0, "{m}");
    assert_eq!(lookups(&m, "unknown", "cache"), 1.0, "{m}");
    assert_eq!(lookups(&m, "unavailable", "directory"), 1.0, "{m}");
    assert_eq!(
        lookups(&m, "known", "directory") + lookups(&m, "unknown", "directory"),
        5.0,
        "dave, d.d, erin, nobody, *: no new round trip succeeded while slapd was down"
    );

    // Back: the pooled connections are dead, new ones are made, and the truth comes through.
    slapd.run().await;
    let r = rcpts(node.addr, &["frank@example.test", "d.d@example.test"]).await;
    assert!(r[0].starts_with("550 5.1.1"), "frank does not exist: now a 550: {r:?}");
    assert_eq!(code(&r[1]), 250, "{r:?}");

    // A directory that hangs (SIGSTOP): the timeout (1 s) gives 451.
    let pid = slapd.pid().unwrap().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    let started = Instant::now();
    let r = rcpts(node.addr, &["grace@example.test"]).await;
    let waited = started.elapsed();
    assert!(Command::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    assert!(r[0].starts_with("451 4.4.3"), "{r:?}");
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(4), "{waited:?}");
    let r = rcpts(node.addr, &["grace@example.test"]).await;
    assert!(r[0].starts_with("550 5.1.1"), "an answer after the timeout was not cached as one: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_build_exports_the_directory_so_nodes_need_no_ldap() {
    // More users than slapd's default size limit (500): the export pages through them.
    let mut many = String::new();
    for i in 0..1200 {
        many.push_str(&format!(
            "dn: uid=user{i},ou=people,dc=example,dc=test\nobjectClass: inetOrgPerson\nuid: user{i}\ncn: U\nsn: U\n\
             mail: user{i}@example.test\n\n"
        ));
    }
    let Some(mut slapd) = Slapd::start_with(READER_LIMITS, &people(&many)).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("ldap.secret");
    std::fs::write(&secret, "reader-secret").unwrap();
    let text = directory_policy(slapd.port, &secret, "lookups=#false")
        .replace("{dir}", dir.path().to_str().unwrap())
        .replace("{backend}", "127.0.0.1:25");
    let policy = dir.path().join("policy.kdl");
    std::fs::write(&policy, &text).unwrap();
    let mtac = |args: &[&str]| Command::new(env!("CARGO_BIN_EXE_mtac")).args(args).output().unwrap();
    let out_path = dir.path().join("ruleset.mtac");
    let out = out_path.to_str().unwrap();

    // `mtac check` passes (CI has no LDAP); a build that trusts an export it did not make fails.
    let check = mtac(&["check", policy.to_str().unwrap()]);
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let build = mtac(&["build", policy.to_str().unwrap(), "-o", out]);
    assert_eq!(build.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&build.stderr).contains("--export-directory"));
    assert!(!out_path.exists());

    // Without run-time lookups the program has no directory step (a domain the table does not
    // cover is the back end's to decide, never a 451 from a client that does not exist).
    let checked = mtac_compiler::compile_path(&policy).output.unwrap().ruleset;
    assert!(checked.policy().farms[0].program.rcpt.iter().all(|s| s.rule != "recipient.directory"));

    let build = mtac(&["build", "--export-directory", policy.to_str().unwrap(), "-o", out]);
    assert!(build.status.success(), "{}", String::from_utf8_lossy(&build.stderr));
    let ruleset = mtac_ruleset::Ruleset::open(&out_path).unwrap();
    let farm = &ruleset.policy().farms[0];
    // 1,200 users, dave's two addresses, erin, carol (no reader: it has no mail) + the inline one.
    assert_eq!(farm.directory.as_ref().unwrap().exported, 1204);
    let table = ruleset.policy().tables.iter().find(|t| t.name == "mx.local-addresses").unwrap();
    assert_eq!(table.entries, 1205);

    // A node on the exported table answers with the directory gone.
    slapd.stop();
    let sink = Sink::start(Behaviour::default()).await;
    let options = mtac_compiler::Options { export_directory: true, ..Default::default() };
    slapd.run().await;
    let node =
        TestNode::start_with(&directory_policy(slapd.port, &secret, "lookups=#false"), Some(sink.addr), options).await;
    slapd.stop();
    let r =
        rcpts(node.addr, &["user1199@example.test", "d.d@example.test", "nobody@example.test", "abuse@example.test"])
            .await;
    assert_eq!(code(&r[0]), 250, "{r:?}");
    assert_eq!(code(&r[1]), 250, "{r:?}");
    assert!(r[2].starts_with("550 5.1.1"), "{r:?}");
    assert_eq!(code(&r[3]), 250, "{r:?}");
    let m = node.metrics().await;
    assert!(!m.contains("mtac_directory_lookups_total{"), "no lookup at run time: {m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_recipient_may_ban_but_a_directory_outage_never_does() {
    let Some(mut slapd) = Slapd::start_with("", &people("")).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("ldap.secret");
    std::fs::write(&secret, "reader-secret").unwrap();
    let sink = Sink::start(Behaviour::default()).await;
    let policy = directory_policy(slapd.port, &secret, "")
        .replace("    local-addresses", "    ban after=\"recipient.directory\" duration=\"10m\"\n    local-addresses");
    let node = TestNode::start(&policy, Some(sink.addr)).await;

    // The directory is down: 451 for the recipient, and no ban for its sender.
    slapd.stop();
    let r = rcpts(node.addr, &["someone@example.test"]).await;
    assert!(r[0].starts_with("451 4.4.3"), "{r:?}");
    let r = rcpts(node.addr, &["dave@example.test"]).await;
    assert!(r[0].starts_with("451 4.4.3"), "still served, not banned: {r:?}");
    assert_eq!(sample(&node.metrics().await, "mtac_bans_total"), 0.0);

    // Back up: an address that does not exist is a 550, and that bans.
    slapd.run().await;
    let r = rcpts(node.addr, &["nobody@example.test"]).await;
    assert!(r[0].starts_with("550 5.1.1"), "{r:?}");
    let mut c = Client::connect(node.addr).await;
    let greeting = c.reply().await;
    assert!(greeting.starts_with("521"), "banned after the 550: {greeting}");
    assert_eq!(sample(&node.metrics().await, "mtac_bans_total"), 1.0);
}
