//! Issue 21: MAIL FROM and the first RCPT go to the back end in one write when it offers
//! PIPELINING (RFC 2920), one round trip fewer per message; each reply still reaches the
//! client as the back end gave it, and a back end that does not offer PIPELINING gets one
//! command at a time.

use super::support::{code, relay_policy, thread_connections, Behaviour, Client, Sink, TestNode};

async fn message(c: &mut Client, rcpts: &[&str]) -> Vec<u16> {
    let mut codes = vec![code(&c.cmd("MAIL FROM:<a@sender.example>").await)];
    for rcpt in rcpts {
        codes.push(code(&c.cmd(&format!("RCPT TO:<{rcpt}>")).await));
    }
    if codes.iter().skip(1).any(|&c| c == 250) {
        codes.push(code(&c.cmd("DATA").await));
        codes.push(code(&c.cmd("Subject: t\r\n\r\nbody\r\n.").await));
    } else {
        codes.push(code(&c.cmd("RSET").await));
    }
    codes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue21_mail_and_the_first_rcpt_share_a_write_only_where_pipelining_is_offered() {
    for pipelining in [true, false] {
        let sink = Sink::start(Behaviour { pipelining, ..Behaviour::default() }).await;
        let node = TestNode::start(&relay_policy(""), Some(sink.addr)).await;
        let mut c = Client::connect(node.addr).await;
        c.reply().await;
        c.cmd("EHLO client.example").await;
        // Two recipients, the second refused by the back end; then a refused first recipient.
        assert_eq!(message(&mut c, &["bob@example.test", "reject5@example.test"]).await, [250, 250, 550, 354, 250]);
        assert_eq!(message(&mut c, &["defer4@example.test", "bob@example.test"]).await, [250, 450, 250, 354, 250]);
        let messages = sink.messages();
        assert_eq!(messages.len(), 2, "pipelining={pipelining}");
        assert_eq!(messages[0].rcpts, ["bob@example.test"]);
        assert_eq!(messages[1].rcpts, ["bob@example.test"]);
        let pipelined = *sink.pipelined_mail.lock().unwrap();
        assert_eq!(pipelined, if pipelining { 2 } else { 0 }, "MAIL commands sent with their RCPT");
        assert_eq!(*sink.connections.lock().unwrap(), 1, "one pooled connection throughout");
    }
}

/// A refused MAIL FROM is the client's answer for the recipient, and the pipelined RCPT's 503
/// is read too: the pooled connection stays in step for the next message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue21_a_refused_pipelined_mail_keeps_the_connection_in_step() {
    let sink = Sink::start(Behaviour {
        mail_reply: Some("550 5.7.1 Sender refused by the back end".to_owned()),
        ..Behaviour::default()
    })
    .await;
    let node = TestNode::start(&relay_policy(""), Some(sink.addr)).await;
    let mut c = Client::connect(node.addr).await;
    c.reply().await;
    c.cmd("EHLO client.example").await;
    assert_eq!(code(&c.cmd("MAIL FROM:<a@sender.example>").await), 250);
    let refused = c.cmd("RCPT TO:<bob@example.test>").await;
    assert!(refused.starts_with("550 5.7.1 Sender refused by the back end"), "{refused}");
    assert_eq!(code(&c.cmd("RSET").await), 250);
    sink.behaviour.lock().unwrap().mail_reply = None;
    assert_eq!(message(&mut c, &["bob@example.test"]).await, [250, 250, 354, 250]);
    assert_eq!(sink.messages().len(), 1);
    assert_eq!(*sink.connections.lock().unwrap(), 1, "the connection was pooled in step, not replaced");
    assert_eq!(*sink.pipelined_mail.lock().unwrap(), 2);
}

/// Each session thread keeps the back-end connections it opened: the test node's two threads
/// share 40 sessions (every thread counts as busy here, so each new connection goes to the one
/// that was less busy) and each reuses its own pooled connection, so the back end sees one per
/// thread that served a session. With one pool shared by the threads, every read on a
/// connection another thread opened would wake that thread first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue21_each_session_thread_reuses_its_own_back_end_connection() {
    let sink = Sink::start(Behaviour::default()).await;
    let node = TestNode::start_with_threads(&relay_policy(""), Some(sink.addr), 2, 0.0).await;
    let per_thread = |metrics: &str| thread_connections(metrics, 2);
    let before = per_thread(&node.metrics().await);
    for _ in 0..40 {
        let mut c = Client::connect(node.addr).await;
        c.reply().await;
        c.cmd("EHLO client.example").await;
        assert_eq!(message(&mut c, &["bob@example.test"]).await, [250, 250, 354, 250]);
        c.cmd("QUIT").await;
    }
    let after = per_thread(&node.metrics().await);
    let served: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert!(served.iter().all(|&n| n > 0.0), "both threads served sessions: {served:?}");
    assert_eq!(sink.messages().len(), 40);
    assert_eq!(*sink.connections.lock().unwrap(), 2, "one back-end connection per session thread: {served:?}");
}

/// A node that had 80 transactions open with the back end at once keeps their 80 connections
/// when they end together, and the next 80 reuse them: connections in use a moment ago are not
/// idle spares to close at the pool's size (64), which made a node at 200 sessions reopen a
/// connection (and EHLO) for 9% of its messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue21_connections_used_a_moment_ago_stay_pooled_past_the_pool_size() {
    const AT_ONCE: usize = 80;
    let sink = Sink::start(Behaviour::default()).await;
    let policy = relay_policy("limits { connections-per-ip 200; }");
    // One session thread: each thread pools its own connections.
    let node = TestNode::start_with_threads(&policy, Some(sink.addr), 1, mtac_runtime::BUSY_SHARE).await;
    for round in 0..2 {
        let in_transaction = std::sync::Arc::new(tokio::sync::Barrier::new(AT_ONCE));
        let clients: Vec<_> = (0..AT_ONCE)
            .map(|_| {
                let in_transaction = in_transaction.clone();
                let addr = node.addr;
                tokio::spawn(async move {
                    let mut c = Client::connect(addr).await;
                    c.reply().await;
                    c.cmd("EHLO client.example").await;
                    assert_eq!(code(&c.cmd("MAIL FROM:<a@sender.example>").await), 250);
                    // Accepted at RCPT: the back end's connection is this session's now.
                    assert_eq!(code(&c.cmd("RCPT TO:<bob@example.test>").await), 250);
                    in_transaction.wait().await;
                    assert_eq!(code(&c.cmd("DATA").await), 354);
                    assert_eq!(code(&c.cmd("Subject: t\r\n\r\nbody\r\n.").await), 250);
                    c.cmd("QUIT").await;
                })
            })
            .collect();
        for client in clients {
            client.await.unwrap();
        }
        assert_eq!(sink.messages().len(), AT_ONCE * (round + 1));
        assert_eq!(
            *sink.connections.lock().unwrap() as usize,
            AT_ONCE,
            "round {round}: one connection per transaction open at once"
        );
    }
}

/// The test sink answers a pipelined MAIL and RCPT with one write each, Nagle on (as a server
/// that does not gather a group's replies does), so its RCPT reply waits for the node's ACK of
/// the MAIL reply. On a pooled connection Linux delays that ACK by at least 40 ms unless the
/// node asks for it at once: before it did, every message over a pooled connection took 40 ms
/// or more (benches/relay_tls.rs: 92 messages/s from 4 clients). Ten messages in a row; the
/// fastest shows whether the wait is there, whatever else slows a loaded machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue21_replies_written_one_at_a_time_are_not_held_by_a_delayed_ack() {
    let sink = Sink::start(Behaviour::default()).await;
    let node = TestNode::start(&relay_policy(""), Some(sink.addr)).await;
    let mut c = Client::connect(node.addr).await;
    c.reply().await;
    c.cmd("EHLO client.example").await;
    // The pooled connection's first exchanges run in the kernel's quick-ACK start.
    for _ in 0..3 {
        assert_eq!(message(&mut c, &["bob@example.test"]).await, [250, 250, 354, 250]);
    }
    let mut fastest = std::time::Duration::MAX;
    for _ in 0..10 {
        let started = std::time::Instant::now();
        assert_eq!(message(&mut c, &["bob@example.test"]).await, [250, 250, 354, 250]);
        fastest = fastest.min(started.elapsed());
    }
    assert!(
        fastest < std::time::Duration::from_millis(30),
        "the fastest of ten messages took {fastest:?}: the RCPT reply waited for a delayed ACK"
    );
    assert_eq!(*sink.connections.lock().unwrap(), 1, "one pooled connection throughout");
    assert_eq!(*sink.pipelined_mail.lock().unwrap(), 13);
}
