//! Issue 18: STARTTLS toward back ends, against the test sink offering STARTTLS with a
//! certificate the test makes (`submission::certificate`: a test CA and a leaf for
//! mx.test.example). Required means verified or not relayed at all; opportunistic encrypts
//! when offered and relays in clear otherwise.

use super::submission::certificate;
use super::support::{code, relay_policy_with, Behaviour, Client, Sink, TestNode};

/// An inbound farm relaying to the sink with `attributes` on its `backend` line.
fn policy(attributes: &str) -> String {
    relay_policy_with(attributes, "")
}

/// One message through the node; the replies to RCPT TO and to the end of DATA (empty when
/// RCPT was refused).
async fn send(node: &TestNode) -> (String, String) {
    let mut c = Client::connect(node.addr).await;
    c.reply().await;
    c.cmd("EHLO client.example").await;
    assert_eq!(code(&c.cmd("MAIL FROM:<a@sender.example>").await), 250);
    let rcpt = c.cmd("RCPT TO:<bob@example.test>").await;
    if code(&rcpt) != 250 {
        return (rcpt, String::new());
    }
    assert_eq!(code(&c.cmd("DATA").await), 354);
    c.send(b"Subject: over TLS\r\n\r\nsecret body\r\n.\r\n").await;
    let verdict = c.reply().await;
    c.cmd("QUIT").await;
    (rcpt, verdict)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue18_required_tls_relays_encrypted_and_verified() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    let ca = dir.path().join("ca.pem");
    let sink = Sink::start(Behaviour { starttls: Some((cert, key)), ..Behaviour::default() }).await;
    let attributes = format!(r#"tls="required" ca="{}" name="mx.test.example""#, ca.display());
    let node = TestNode::start(&policy(&attributes), Some(sink.addr)).await;
    let (rcpt, verdict) = send(&node).await;
    assert_eq!(code(&rcpt), 250, "{rcpt}");
    assert_eq!(code(&verdict), 250, "{verdict}");
    let messages = sink.messages();
    assert_eq!(messages.len(), 1);
    assert!(messages[0].tls, "the message crossed in clear text");
    assert!(String::from_utf8_lossy(&messages[0].data).contains("secret body"));
    let verbs = sink.verbs();
    let starttls = verbs.iter().position(|v| v == "STARTTLS").expect("STARTTLS was sent");
    let mail = verbs.iter().position(|v| v == "MAIL").unwrap();
    assert!(starttls < mail, "MAIL FROM before STARTTLS: {verbs:?}");
    assert_eq!(verbs.iter().filter(|v| *v == "EHLO").count(), 2, "EHLO again after TLS: {verbs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue18_a_wrong_name_is_refused_with_451_and_nothing_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    let ca = dir.path().join("ca.pem");
    let sink = Sink::start(Behaviour { starttls: Some((cert, key)), ..Behaviour::default() }).await;
    let attributes = format!(r#"tls="required" ca="{}" name="store.test.example""#, ca.display());
    let node = TestNode::start(&policy(&attributes), Some(sink.addr)).await;
    let (rcpt, _) = send(&node).await;
    assert_eq!(code(&rcpt), 451, "{rcpt}");
    assert!(rcpt.contains("4.4.0") && rcpt.contains("TLS"), "{rcpt}");
    assert!(sink.messages().is_empty());
    let verbs = sink.verbs();
    assert!(!verbs.iter().any(|v| v == "MAIL" || v == "RCPT"), "the envelope crossed after a failed check: {verbs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue18_an_untrusted_authority_is_refused_with_451() {
    // The sink's certificate is signed by a CA the node was not given: its own system roots
    // would not know it either, so a CA file naming another authority must fail the same way.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    let other = tempfile::tempdir().unwrap();
    certificate(other.path());
    let sink = Sink::start(Behaviour { starttls: Some((cert, key)), ..Behaviour::default() }).await;
    let attributes = format!(r#"tls="required" ca="{}" name="mx.test.example""#, other.path().join("ca.pem").display());
    let node = TestNode::start(&policy(&attributes), Some(sink.addr)).await;
    let (rcpt, _) = send(&node).await;
    assert_eq!(code(&rcpt), 451, "{rcpt}");
    assert!(sink.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue18_required_tls_to_a_back_end_without_starttls_is_451_never_clear_text() {
    let dir = tempfile::tempdir().unwrap();
    certificate(dir.path());
    let sink = Sink::start(Behaviour::default()).await;
    let attributes = format!(r#"tls="required" ca="{}" name="mx.test.example""#, dir.path().join("ca.pem").display());
    let node = TestNode::start(&policy(&attributes), Some(sink.addr)).await;
    let (rcpt, _) = send(&node).await;
    assert_eq!(code(&rcpt), 451, "{rcpt}");
    assert!(rcpt.contains("4.4.0"), "{rcpt}");
    let verbs = sink.verbs();
    assert!(!verbs.iter().any(|v| v == "MAIL"), "MAIL FROM in clear text: {verbs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue18_opportunistic_is_clear_text_without_starttls_and_encrypted_with_it() {
    // The default: no `tls=` written.
    let plain = Sink::start(Behaviour::default()).await;
    let node = TestNode::start(&policy(""), Some(plain.addr)).await;
    let (_, verdict) = send(&node).await;
    assert_eq!(code(&verdict), 250, "{verdict}");
    assert!(!plain.messages()[0].tls);

    // A certificate from an authority nobody configured: opportunistic does not verify.
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    let encrypted = Sink::start(Behaviour { starttls: Some((cert, key)), ..Behaviour::default() }).await;
    let node = TestNode::start(&policy(r#"tls="opportunistic""#), Some(encrypted.addr)).await;
    let (_, verdict) = send(&node).await;
    assert_eq!(code(&verdict), 250, "{verdict}");
    assert!(encrypted.messages()[0].tls, "STARTTLS was offered but not used");

    // `off` never asks.
    let (cert, key) = certificate(dir.path());
    let offered = Sink::start(Behaviour { starttls: Some((cert, key)), ..Behaviour::default() }).await;
    let node = TestNode::start(&policy(r#"tls="off""#), Some(offered.addr)).await;
    let (_, verdict) = send(&node).await;
    assert_eq!(code(&verdict), 250, "{verdict}");
    assert!(!offered.messages()[0].tls);
    assert!(!offered.verbs().iter().any(|v| v == "STARTTLS"));
}
