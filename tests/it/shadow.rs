//! Issue 20, shadow rules: a rule named in `shadow` is evaluated, logged and counted as "would
//! refuse" with the reply it would give, and never enforced — at the node, in `mtac explain`
//! and in `mtac test`, which all run the one evaluator.

use crate::support::{code, relay_policy, sample, Behaviour, Client, Sink, TestNode};
use std::process::Command;

const SHADOWED: &str = "helo fqdn=#true\n    sender fqdn=#true\n    shadow \"helo.fqdn\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_rule_reports_what_it_would_refuse_and_the_mail_goes_through() {
    let sink = Sink::start(Behaviour::default()).await;
    let node = TestNode::start(&relay_policy(SHADOWED), Some(sink.addr)).await;
    let mut c = Client::connect_from(node.addr, "127.0.0.9").await;
    assert_eq!(code(&c.reply().await), 220);
    c.cmd("EHLO workstation").await;
    assert_eq!(code(&c.cmd("MAIL FROM:<a@sender.example>").await), 250);
    let rcpt = c.cmd("RCPT TO:<bob@example.test>").await;
    assert_eq!(code(&rcpt), 250, "a shadow rule decides nothing: {rcpt}");
    assert_eq!(code(&c.cmd("RCPT TO:<carol@example.test>").await), 250);
    assert_eq!(code(&c.cmd("DATA").await), 354);
    c.send(b"Subject: shadow\r\n\r\nhello\r\n").await;
    assert_eq!(code(&c.cmd(".").await), 250);
    // The rule that is not shadowed still refuses.
    let refused = c.cmd("MAIL FROM:<a@localhost>").await;
    assert_eq!(code(&refused), 250);
    let refused = c.cmd("RCPT TO:<bob@example.test>").await;
    assert!(refused.starts_with("504"), "sender.fqdn is enforced: {refused}");
    c.cmd("QUIT").await;
    assert_eq!(sink.messages().len(), 1);
    let m = node.metrics().await;
    // One per recipient it would have refused (the third RCPT was refused by sender.fqdn first).
    let series = r#"mtac_shadow_refusals_total{farm="mx",stage="rcpt",verdict="reject",rule="helo.fqdn"}"#;
    assert_eq!(sample(&m, series), 3.0, "{m}");
    assert_eq!(
        sample(&m, r#"mtac_refusals_total{farm="mx",stage="rcpt",verdict="reject",rule="helo.fqdn"}"#),
        0.0,
        "never counted as a refusal: {m}"
    );
}

#[test]
fn explain_and_policy_tests_show_the_shadow_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.kdl");
    let text =
        relay_policy(SHADOWED).replace("{dir}", &dir.path().display().to_string()).replace("{backend}", "127.0.0.1:9");
    std::fs::write(&policy, text).unwrap();
    let ruleset = dir.path().join("r.mtac");
    crate::support::build(&policy, &ruleset);
    let out = Command::new(env!("CARGO_BIN_EXE_mtac"))
        .args(["explain"])
        .arg(&ruleset)
        .args(["--client-ip", "192.0.2.1", "--helo", "workstation", "--from", "a@sender.example"])
        .args(["--rcpt", "bob@example.test"])
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("helo.fqdn") && shown.contains("shadow   would refuse: 504 5.5.2"), "{shown}");
    assert!(shown.contains("=> accepted"), "{shown}");

    let tests = dir.path().join("shadow.test.kdl");
    std::fs::write(
        &tests,
        format!(
            r#"policy "{}"
test "a bare HELO is only reported" {{
    client "192.0.2.1"
    helo "workstation"
    from "a@sender.example"
    rcpt "bob@example.test"
    expect "accept" shadow="helo.fqdn"
}}
test "a good HELO reports nothing" {{
    client "192.0.2.1"
    helo "mail.sender.example"
    from "a@sender.example"
    rcpt "bob@example.test"
    expect "accept" shadow="helo.fqdn"
}}
"#,
            policy.display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mtac")).arg("test").arg(&tests).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("ok    ") && said.contains("a bare HELO is only reported"), "{said}");
    assert!(said.contains("FAIL") && said.contains("shadow refusals: none"), "{said}");
}

/// One message from `client` (HELO `helo`) to bob@example.test: the RCPT reply.
async fn one_recipient(node: &TestNode, client: &str, helo: &str) -> String {
    let mut c = Client::connect_from(node.addr, client).await;
    assert_eq!(code(&c.reply().await), 220);
    c.cmd(&format!("EHLO {helo}")).await;
    assert_eq!(code(&c.cmd("MAIL FROM:<a@sender.example>").await), 250);
    let rcpt = c.cmd("RCPT TO:<bob@example.test>").await;
    if code(&rcpt) == 250 {
        assert_eq!(code(&c.cmd("DATA").await), 354);
        c.send(b"Subject: shadow ruleset\r\n\r\nhello\r\n").await;
        assert_eq!(code(&c.cmd(".").await), 250);
    }
    c.cmd("QUIT").await;
    rcpt
}

fn compared(metrics: &str, stage: &str, direction: &str, rule: &str) -> f64 {
    let series = format!(
        r#"mtac_shadow_ruleset_decisions_total{{farm="mx",stage="{stage}",direction="{direction}",rule="{rule}"}}"#
    );
    sample(metrics, &series)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_ruleset_counts_each_difference_and_the_live_one_decides() {
    let sink = Sink::start(Behaviour::default()).await;
    let live = relay_policy("helo fqdn=#true");
    // The candidate drops the HELO check and refuses one client by its address.
    let candidate = relay_policy("access {\n        reject \"127.0.0.66/32\"\n    }");
    let node = TestNode::start_with_candidate(&live, &candidate, Some(sink.addr)).await;
    let sessions = [
        ("127.0.0.9", "mail.example.org", 250),  // both accept
        ("127.0.0.66", "mail.example.org", 250), // the candidate would refuse (access)
        ("127.0.0.9", "workstation", 504),       // the candidate would accept
        ("127.0.0.66", "workstation", 504),      // both refuse, the candidate with another reply
    ];
    for (client, helo, expected) in sessions {
        let rcpt = one_recipient(&node, client, helo).await;
        assert_eq!(code(&rcpt), expected, "the live ruleset decides: {client} {helo}: {rcpt}");
    }
    assert_eq!(sink.messages().len(), 2, "mail the candidate would refuse is relayed");
    let m = node.metrics().await;
    assert_eq!(compared(&m, "rcpt", "same", ""), 1.0, "{m}");
    assert_eq!(compared(&m, "rcpt", "newly-refused", "access"), 1.0, "{m}");
    assert_eq!(compared(&m, "rcpt", "newly-accepted", "helo.fqdn"), 1.0, "{m}");
    assert_eq!(compared(&m, "rcpt", "reply-changed", "access"), 1.0, "{m}");
    // Every other decision was compared and is the same: 4 HELOs, 4 MAILs, and 5 greetings
    // (the test's first connection, which waits for the node's greeting, is one).
    for (stage, decisions) in [("connect", 5.0), ("helo", 4.0), ("mail", 4.0)] {
        assert_eq!(compared(&m, stage, "same", ""), decisions, "{stage}: {m}");
    }
    assert_eq!(sample(&m, r#"mtac_refusals_total{farm="mx",stage="rcpt",verdict="reject",rule="access"}"#), 0.0);

    // A candidate pushed like a ruleset is loaded, and from then on it is what is compared: the
    // live policy itself differs from the live policy in nothing.
    node.push_candidate(&live, Some(sink.addr));
    let mut reloaded = false;
    for _ in 0..100 {
        if sample(&node.metrics().await, r#"mtac_shadow_ruleset_reloads_total{result="ok"}"#) == 2.0 {
            reloaded = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(reloaded, "the pushed candidate was loaded");
    for (client, helo, _) in sessions {
        one_recipient(&node, client, helo).await;
    }
    let m = node.metrics().await;
    assert_eq!(compared(&m, "rcpt", "same", ""), 3.0, "{m}");
    assert_eq!(compared(&m, "rcpt", "same", "helo.fqdn"), 2.0, "{m}");
    assert_eq!(compared(&m, "rcpt", "newly-refused", "access"), 1.0, "no new difference: {m}");
    assert_eq!(compared(&m, "rcpt", "newly-accepted", "helo.fqdn"), 1.0, "{m}");
}
