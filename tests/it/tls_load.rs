//! Issue 21: the STARTTLS load generator (bench/tls-load, what bench/tls-peers.py measures
//! with) against a node: what it counts as sent reached the back end, and what the node refused
//! is reported by reply, never hidden.

use crate::sni::certificate;
use crate::support::{relay_policy, Behaviour, Sink, TestNode};
use mtac_tls_load::{run, Settings};

async fn tls_node(sink: &Sink, dir: &std::path::Path) -> TestNode {
    let (cert, key) = certificate(dir, "mx", "mx.test.example");
    TestNode::start(&relay_policy(&format!(r#"tls certificate="{cert}" key="{key}""#)), Some(sink.addr)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_sent_over_starttls_reaches_the_back_end() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(Behaviour::default()).await;
    let node = tls_node(&sink, dir.path()).await;
    let mut settings = Settings::new(node.addr, 12);
    settings.sessions = 3;
    settings.size = 1000;
    settings.to = "rcpt@example.test".to_owned();

    let one_per_session = run(&settings).await.unwrap();
    assert_eq!(one_per_session.failures, Default::default());
    assert_eq!((one_per_session.sent, one_per_session.sessions, one_per_session.tls_sessions), (12, 12, 12));
    assert_eq!(one_per_session.resumed, 0, "every session a full handshake");

    settings.per_session = 5;
    let five_per_session = run(&settings).await.unwrap();
    assert_eq!(five_per_session.failures, Default::default());
    assert_eq!((five_per_session.sent, five_per_session.sessions), (12, 3), "5 + 5 + 2 messages");

    let received = sink.messages();
    assert_eq!(received.len(), 24);
    assert!(received.iter().all(|m| m.data.len() > 1000), "the whole body arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_missing_starttls_are_counted_by_reply() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(Behaviour::default()).await;
    let node = tls_node(&sink, dir.path()).await;
    // Not one of the farm's domains: every RCPT is refused, and the session goes on after RSET.
    let mut settings = Settings::new(node.addr, 4);
    settings.per_session = 2;
    let refused = run(&settings).await.unwrap();
    assert_eq!((refused.sent, refused.failed, refused.sessions), (0, 4, 2));
    let reasons: Vec<_> = refused.failures.keys().collect();
    assert!(reasons.len() == 1 && reasons[0].starts_with("RCPT 5"), "{reasons:?}");

    let plain_node = TestNode::start(&relay_policy(""), Some(sink.addr)).await;
    let no_tls = run(&Settings::new(plain_node.addr, 3)).await.unwrap();
    assert_eq!(no_tls.failures.get("EHLO: no STARTTLS offered"), Some(&3));
    assert!(sink.messages().is_empty());
}
