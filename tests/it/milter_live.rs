//! Milters asked live (issue 19, second part): at MAIL and at each RCPT before our reply, one
//! conversation per session reused across transactions, and their modifications honoured in
//! what reaches the back end — header fields inserted, added, changed and deleted with
//! libmilter's indexes, the body replaced, recipients added and deleted where the policy lets
//! them. The milters are scripted stage by stage (`milter::Staged`); the back end is the test
//! sink, so the bytes relayed are checked exactly.

use crate::milter::{explain, message, packet, policy_file, policy_tests, scripted_milter, Script, Staged};
use crate::support::{code, relay_policy, sample, Behaviour, Client, Sink, TestNode};
use std::sync::Arc;
use std::time::Duration;

async fn node_with(script: &Arc<Staged>, options: &str, sink: &Sink) -> TestNode {
    let port = scripted_milter(Script::Staged(script.clone())).await;
    TestNode::start(&relay_policy(&format!(r#"milter "inet:127.0.0.1:{port}" name="m" {options}"#)), Some(sink.addr))
        .await
}

/// EHLO, then a session's commands from MAIL on.
async fn session(node: &TestNode) -> Client {
    let mut c = Client::connect(node.addr).await;
    assert_eq!(code(&c.reply().await), 220);
    assert_eq!(code(&c.cmd("EHLO mail.sender.example").await), 250);
    c
}

/// DATA with `text` (LF line ends); the final reply.
async fn data(c: &mut Client, text: &str) -> String {
    assert_eq!(code(&c.cmd("DATA").await), 354);
    c.send(text.replace('\n', "\r\n").as_bytes()).await;
    c.cmd(".").await
}

fn eom(packets: &[Vec<u8>]) -> Vec<u8> {
    let mut out: Vec<u8> = packets.concat();
    out.extend(packet(b'c', b""));
    out
}

fn refuse_eve(command: u8, data: &[u8]) -> Option<Vec<u8>> {
    (command == b'R' && data.starts_with(b"<eve@")).then(|| packet(b'y', b"550 5.7.1 No mail for eve\0"))
}

/// A milter refusing a recipient at RCPT refuses that recipient only, with its own reply, and
/// the back end never hears of it; a recipient the policy refuses is never sent to the milter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_milter_refuses_one_recipient_at_rcpt_and_the_others_get_the_message() {
    let sink = Sink::start(Behaviour::default()).await;
    let script = Staged::new(refuse_eve);
    let node = node_with(&script, "", &sink).await;
    let mut c = session(&node).await;
    assert_eq!(code(&c.cmd("MAIL FROM:<alice@sender.example>").await), 250);
    assert_eq!(code(&c.cmd("RCPT TO:<bob@example.test>").await), 250);
    assert_eq!(c.cmd("RCPT TO:<eve@example.test>").await, "550 5.7.1 No mail for eve");
    assert!(c.cmd("RCPT TO:<someone@elsewhere.example>").await.starts_with("554"), "relay denied by the policy");
    assert_eq!(code(&c.cmd("RCPT TO:<carol@example.test>").await), 250);
    assert_eq!(code(&data(&mut c, &message("s", "b")).await), 250);
    c.cmd("QUIT").await;
    let got = sink.messages();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcpts, ["bob@example.test", "carol@example.test"]);
    let commands = script.commands();
    assert_eq!(commands.matches('R').count(), 3, "bob, eve and carol; never the refused one: {commands}");
    assert_eq!(sink.verbs().iter().filter(|v| *v == "RCPT").count(), 2, "eve never reached the back end");
    let m = node.metrics().await;
    assert_eq!(sample(&m, r#"mtac_filter_answers_total{filter="m",action="reject"}"#), 1.0, "{m}");
    assert_eq!(node.spool_files(), 0);
}

fn tempfail_mail(command: u8, _: &[u8]) -> Option<Vec<u8>> {
    (command == b'M').then(|| packet(b't', b""))
}

/// A milter's tempfail at MAIL answers MAIL (the transaction does not open).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_milter_that_tempfails_at_mail_defers_the_sender() {
    let sink = Sink::start(Behaviour::default()).await;
    let script = Staged::new(tempfail_mail);
    let node = node_with(&script, "", &sink).await;
    let mut c = session(&node).await;
    let r = c.cmd("MAIL FROM:<alice@sender.example>").await;
    assert!(r.starts_with("451 4.7.1 Message deferred by m"), "{r}");
    assert_eq!(code(&c.cmd("RCPT TO:<bob@example.test>").await), 503, "no transaction");
    c.cmd("QUIT").await;
    assert!(sink.messages().is_empty() && sink.verbs().is_empty(), "the back end was never asked");
    assert_eq!(&script.commands()[..4], "OCHM", "negotiated, told connect and HELO at the first MAIL");
    let m = node.metrics().await;
    assert_eq!(sample(&m, r#"mtac_filter_answers_total{filter="m",action="tempfail"}"#), 1.0, "{m}");
}

/// One conversation per session: two messages and an RSET between them go over the same
/// connection to the milter (ABORT after the RSET, QUIT at the end); a session that never
/// sends MAIL opens none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_reuses_its_milter_conversation_across_transactions() {
    let sink = Sink::start(Behaviour::default()).await;
    let script = Staged::new(|_, _| None);
    let node = node_with(&script, "", &sink).await;
    let mut idle = session(&node).await;
    idle.cmd("NOOP").await;
    idle.cmd("QUIT").await;
    assert_eq!(script.connections(), 0, "no MAIL, no milter connection");

    let mut c = session(&node).await;
    for step in ["first", "reset", "second"] {
        assert_eq!(code(&c.cmd("MAIL FROM:<alice@sender.example>").await), 250);
        assert_eq!(code(&c.cmd("RCPT TO:<bob@example.test>").await), 250);
        if step == "reset" {
            assert_eq!(code(&c.cmd("RSET").await), 250);
        } else {
            assert_eq!(code(&data(&mut c, &message(step, "b")).await), 250);
        }
    }
    c.cmd("QUIT").await;
    for _ in 0..50 {
        if script.commands().ends_with('Q') {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let commands = script.commands();
    assert_eq!(script.connections(), 1, "{commands}");
    assert_eq!((commands.matches('O').count(), commands.matches('M').count()), (1, 3), "{commands}");
    assert_eq!(commands.matches('A').count(), 1, "ABORT after the RSET only: {commands}");
    assert!(commands.ends_with('Q'), "QUIT at the end: {commands}");
    assert_eq!(sink.messages().len(), 2);
}

fn header_edits(command: u8, _: &[u8]) -> Option<Vec<u8>> {
    (command == b'E').then(|| {
        eom(&[
            packet(b'i', b"\0\0\0\0X-Top\0first\0"),
            packet(b'h', b"X-End\0last\0"),
            packet(b'm', b"\0\0\0\x01subject\0changed\0"),
            packet(b'm', b"\0\0\0\x01Message-ID\0\0"),
        ])
    })
}

/// Header fields inserted at the top, added at the end, changed and deleted arrive at the back
/// end byte for byte (the spool file untouched: the edits are an overlay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_edits_arrive_byte_exact() {
    let sink = Sink::start(Behaviour::default()).await;
    let script = Staged::new(header_edits);
    let node = node_with(&script, "", &sink).await;
    let mut c = session(&node).await;
    assert_eq!(code(&c.cmd("MAIL FROM:<alice@sender.example>").await), 250);
    assert_eq!(code(&c.cmd("RCPT TO:<bob@example.test>").await), 250);
    assert_eq!(code(&data(&mut c, &message("s", "body\n")).await), 250);
    c.cmd("QUIT").await;
    let relayed = String::from_utf8(sink.messages()[0].data.clone()).unwrap();
    assert!(relayed.starts_with("X-Top: first\r\nReceived: from mail.sender.example"), "{relayed}");
    let from = relayed.find("From: ").unwrap();
    assert_eq!(
        &relayed[from..],
        "From: alice@sender.example\r\nTo: bob@example.test\r\nsubject: changed\r\nX-End: last\r\n\r\nbody\r\n\r\n",
        "{relayed}"
    );
    let m = node.metrics().await;
    for action in ["insert-header", "add-header", "change-header", "delete-header"] {
        let series = format!(r#"mtac_filter_answers_total{{filter="m",action="{action}"}}"#);
        assert_eq!(sample(&m, &series), 1.0, "{action}: {m}");
    }
    assert_eq!(node.spool_files(), 0);
}

fn body_replaced(command: u8, _: &[u8]) -> Option<Vec<u8>> {
    (command == b'E').then(|| {
        eom(&[
            packet(b'm', b"\0\0\0\x01Subject\0[scanned] lunch\0"),
            packet(b'b', b"A new body\nin two pack"),
            packet(b'b', b"ets\r\n.a line with a dot"),
        ])
    })
}

/// A replaced body (in two packets, LF line ends) is relayed instead of the original, its
/// lines made CRLF and its last line ended; the second spool file is removed with the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_body_is_relayed_instead_of_the_original() {
    let sink = Sink::start(Behaviour::default()).await;
    let script = Staged::new(body_replaced);
    let node = node_with(&script, "", &sink).await;
    let mut c = session(&node).await;
    assert_eq!(code(&c.cmd("MAIL FROM:<alice@sender.example>").await), 250);
    assert_eq!(code(&c.cmd("RCPT TO:<bob@example.test>").await), 250);
    assert_eq!(code(&data(&mut c, &message("lunch", "the original body\n")).await), 250);
    c.cmd("QUIT").await;
    let relayed = String::from_utf8(sink.messages()[0].data.clone()).unwrap();
    let (head, body) = relayed.split_once("\r\n\r\n").unwrap();
    assert!(head.ends_with("Subject: [scanned] lunch\r\nMessage-ID: <m1@sender.example>"), "{head}");
    assert_eq!(body, "A new body\r\nin two packets\r\n.a line with a dot\r\n");
    assert_eq!(node.spool_files(), 0);
}

fn recipient_edits(command: u8, _: &[u8]) -> Option<Vec<u8>> {
    (command == b'E').then(|| eom(&[packet(b'+', b"<carol@example.test>\0")]))
}

fn recipient_swap(command: u8, _: &[u8]) -> Option<Vec<u8>> {
    (command == b'E').then(|| eom(&[packet(b'-', b"<bob@example.test>\0"), packet(b'+', b"<dave@example.test>\0")]))
}

fn foreign_recipient(command: u8, _: &[u8]) -> Option<Vec<u8>> {
    (command == b'E').then(|| eom(&[packet(b'+', b"<mallory@elsewhere.example>\0")]))
}

async fn one_message(node: &TestNode) -> String {
    let mut c = session(node).await;
    assert_eq!(code(&c.cmd("MAIL FROM:<alice@sender.example>").await), 250);
    assert_eq!(code(&c.cmd("RCPT TO:<bob@example.test>").await), 250);
    let reply = data(&mut c, &message("s", "b")).await;
    c.cmd("QUIT").await;
    reply
}

/// Recipients added or deleted by a milter: refused (451) unless the policy says
/// `recipients="change"`; then made on the back end's transaction — and an added recipient
/// outside the farm's local domains is refused all the same (never an open relay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipient_changes_need_the_policy_and_stay_local() {
    let sink = Sink::start(Behaviour::default()).await;
    let refused = node_with(&Staged::new(recipient_edits), "", &sink).await;
    let r = one_message(&refused).await;
    assert!(r.starts_with("451 4.7.1"), "by default: {r}");
    assert!(sink.messages().is_empty());

    let allowed = node_with(&Staged::new(recipient_edits), r#"recipients="change""#, &sink).await;
    assert_eq!(code(&one_message(&allowed).await), 250);
    assert_eq!(sink.messages()[0].rcpts, ["bob@example.test", "carol@example.test"]);

    let swapped = node_with(&Staged::new(recipient_swap), r#"recipients="change""#, &sink).await;
    assert_eq!(code(&one_message(&swapped).await), 250);
    assert_eq!(sink.messages()[1].rcpts, ["dave@example.test"], "bob deleted, dave added");

    let foreign = node_with(&Staged::new(foreign_recipient), r#"recipients="change""#, &sink).await;
    let r = one_message(&foreign).await;
    assert!(r.starts_with("451 4.7.1"), "a recipient outside the local domains: {r}");
    assert_eq!(sink.messages().len(), 2, "nothing more relayed");
    let m = allowed.metrics().await;
    assert_eq!(sample(&m, r#"mtac_filter_answers_total{filter="m",action="add-recipient"}"#), 1.0, "{m}");
    let m = refused.metrics().await;
    assert_eq!(sample(&m, r#"mtac_messages_total{farm="mx",verdict="deferred",reason="milter.action"}"#), 1.0, "{m}");
}

/// A signing farm signs what is relayed after the milters' edits: a replaced body and a
/// changed Subject verify with an independent verifier (python3-dkim).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_body_on_a_signing_farm_verifies() {
    use crate::dkim_sign::{python_verifies, record, rsa, signing_policy};
    use crate::submission::{b64, certificate, starttls};
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let (cert, tls_key) = certificate(dir.path());
    let keys = tempfile::tempdir().unwrap();
    let key = rsa(keys.path(), "example.test.pem", 2048);
    let port = scripted_milter(Script::Staged(Staged::new(body_replaced))).await;
    let extra = format!(
        r#"dkim-sign {{
        key "example.test" selector="s2026" file="{key}"
    }}
    milter "inet:127.0.0.1:{port}" name="m""#
    );
    let sink = Sink::start(Behaviour::default()).await;
    let options = mtac_compiler::Options { allowed_dirs: vec![keys.path().to_path_buf()], ..Default::default() };
    let node = TestNode::start_with(&signing_policy(&cert, &tls_key, &extra), Some(sink.addr), options).await;
    let mut s = starttls(node.addr, &cert).await;
    s.cmd("EHLO laptop.example.org").await;
    assert!(s.cmd(&format!("AUTH PLAIN {}", b64("\0alice\0correct horse"))).await.starts_with("235"));
    assert_eq!(code(&s.cmd("MAIL FROM:<alice@example.test>").await), 250);
    assert_eq!(code(&s.cmd("RCPT TO:<friend@elsewhere.example>").await), 250);
    assert_eq!(code(&s.cmd("DATA").await), 354);
    let text = "From: Alice <alice@example.test>\r\nTo: friend@elsewhere.example\r\nSubject: lunch\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <1@example.test>\r\n\r\nthe original body\r\n.\r\n";
    s.stream.get_mut().write_all(text.as_bytes()).await.unwrap();
    assert_eq!(code(&s.reply().await), 250);
    let relayed = sink.messages()[0].data.clone();
    let shown = String::from_utf8_lossy(&relayed).into_owned();
    assert!(
        shown.starts_with("DKIM-Signature:")
            && shown.ends_with("\r\n\r\nA new body\r\nin two packets\r\n.a line with a dot\r\n"),
        "{shown}"
    );
    assert!(shown.contains("Subject: [scanned] lunch\r\n"), "{shown}");
    if let Some(verified) = python_verifies(&relayed, &[record(&key, "s2026", "example.test")]) {
        assert!(verified, "python3-dkim does not verify the edited message:\n{shown}");
    }
}

/// `explain --milter NAME=VERDICT@rcpt` answers as the node whose milter refuses at RCPT, and a
/// test file takes the same fact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_takes_a_verdict_at_rcpt_and_answers_as_the_node() {
    fn reject_rcpt(command: u8, _: &[u8]) -> Option<Vec<u8>> {
        (command == b'R').then(|| packet(b'r', b""))
    }
    let sink = Sink::start(Behaviour::default()).await;
    let script = Staged::new(reject_rcpt);
    let node = node_with(&script, "", &sink).await;
    let mut c = session(&node).await;
    assert_eq!(code(&c.cmd("MAIL FROM:<alice@sender.example>").await), 250);
    let from_node = c.cmd("RCPT TO:<bob@example.test>").await;
    c.cmd("QUIT").await;
    assert!(from_node.starts_with("550 5.7.1 Message rejected by m"), "{from_node}");

    let dir = tempfile::tempdir().unwrap();
    let policy = policy_file(dir.path(), "policy.kdl", r#"milter "inet:127.0.0.1:9" name="m""#);
    let said = explain(&policy, &["--milter", "m=reject@rcpt"]);
    assert!(said.contains(from_node.trim_end()), "the node said {from_node:?}, explain:\n{said}");
    let (passed, said) = policy_tests(
        &policy,
        "test \"refused at rcpt\" { SESSION; milter \"m=reject@rcpt\"; expect \"550 5.7.1 Message rejected by m\" stage=\"rcpt\" rule=\"milter\" }",
    );
    assert!(passed, "{said}");
}

/// An HTTP hook with `ask-rcpt=#true` is asked about each recipient the policy accepted (stage
/// `rcpt`) and refuses that recipient only; without it a hook hears of the message only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_asked_at_rcpt_refuses_one_recipient() {
    let sink = Sink::start(Behaviour::default()).await;
    let (hook, seen) = crate::milter::hook_server().await;
    let node = TestNode::start(
        &relay_policy(&format!(r#"hook "http://{hook}/check" name="inhouse" ask-rcpt=#true"#)),
        Some(sink.addr),
    )
    .await;
    let mut c = session(&node).await;
    assert_eq!(code(&c.cmd("MAIL FROM:<alice@sender.example>").await), 250);
    assert_eq!(code(&c.cmd("RCPT TO:<bob@example.test>").await), 250);
    assert_eq!(c.cmd("RCPT TO:<eve@example.test>").await, "550 5.7.1 The hook says no to eve");
    assert_eq!(code(&data(&mut c, &message("s", "b")).await), 250);
    c.cmd("QUIT").await;
    assert_eq!(sink.messages()[0].rcpts, ["bob@example.test"]);
    let requests = seen.lock().unwrap().clone();
    let stages: Vec<&str> = requests.iter().map(|r| r["stage"].as_str().unwrap()).collect();
    assert_eq!(stages, ["rcpt", "rcpt", "end-of-message"]);
    assert_eq!(requests[1]["envelope"]["rcpt"], "eve@example.test");
    assert_eq!(requests[1]["envelope"]["to"][0], "bob@example.test", "the recipients accepted before");
    let m = node.metrics().await;
    assert_eq!(sample(&m, r#"mtac_filter_answers_total{filter="inhouse",action="reject"}"#), 1.0, "{m}");
}

/// A milter that fails at RCPT with `fail="closed"` defers that recipient only; the next stage
/// connects again and tells the new conversation the transaction so far (MAIL and the
/// recipients accepted), so the message is judged whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_milter_that_fails_at_rcpt_is_connected_again_and_told_the_transaction() {
    let failed = std::sync::atomic::AtomicBool::new(false);
    let script = Staged::new(move |command, data| {
        let first_failure =
            command == b'R' && data.starts_with(b"<flaky@") && !failed.swap(true, std::sync::atomic::Ordering::SeqCst);
        first_failure.then(|| b"\0\0\0\x05Zjunk".to_vec())
    });
    let sink = Sink::start(Behaviour::default()).await;
    let node = node_with(&script, r#"fail="closed""#, &sink).await;
    let mut c = session(&node).await;
    assert_eq!(code(&c.cmd("MAIL FROM:<alice@sender.example>").await), 250);
    assert_eq!(code(&c.cmd("RCPT TO:<bob@example.test>").await), 250);
    let r = c.cmd("RCPT TO:<flaky@example.test>").await;
    assert!(r.starts_with("451 4.7.1 Message could not be checked (m unavailable)"), "{r}");
    assert_eq!(code(&c.cmd("RCPT TO:<carol@example.test>").await), 250);
    assert_eq!(code(&data(&mut c, &message("s", "b")).await), 250);
    c.cmd("QUIT").await;
    assert_eq!(sink.messages()[0].rcpts, ["bob@example.test", "carol@example.test"]);
    let commands = script.commands();
    assert_eq!(script.connections(), 2, "{commands}");
    let second = &commands[commands.rfind('O').unwrap()..];
    assert!(second.starts_with("OCHMRRT"), "MAIL and bob replayed before carol: {commands}");
    let m = node.metrics().await;
    assert_eq!(sample(&m, r#"mtac_filter_answers_total{filter="m",action="error"}"#), 1.0, "{m}");
}

fn discard_at_rcpt(command: u8, _: &[u8]) -> Option<Vec<u8>> {
    (command == b'R').then(|| packet(b'd', b""))
}

/// A discard at RCPT is about the whole message (libmilter's meaning): the recipient is
/// accepted, and the end of DATA is answered as the policy's `discard=` says — never a silent
/// 250 unless it allows one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discard_at_rcpt_is_decided_at_the_end_of_the_message() {
    let sink = Sink::start(Behaviour::default()).await;
    for (options, expected) in
        [("", "550 5.7.1 Message rejected by m (discard)"), (r#"discard="accept""#, "250 2.0.0 Ok: discarded")]
    {
        let script = Staged::new(discard_at_rcpt);
        let node = node_with(&script, options, &sink).await;
        let mut c = session(&node).await;
        assert_eq!(code(&c.cmd("MAIL FROM:<alice@sender.example>").await), 250);
        assert_eq!(code(&c.cmd("RCPT TO:<bob@example.test>").await), 250);
        let r = data(&mut c, &message("s", "b")).await;
        assert!(r.starts_with(expected), "{options}: {r}");
        c.cmd("QUIT").await;
        assert!(!script.commands().contains('T'), "not asked about the message: {}", script.commands());
    }
    assert!(sink.messages().is_empty());
}
