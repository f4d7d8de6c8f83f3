//! The node's lifetime as a client sees it: the drain waits for the sessions themselves (a
//! completion guard, not a polled counter), bounded by the grace period; and `/status` and
//! `/metrics` read one set of counts; a load that keeps the first session thread busy spreads
//! to the others.

use crate::scan::send;
use crate::support::{code, relay_policy, sample, thread_connections, Behaviour, Client, Sink, TestNode};
use std::time::{Duration, Instant};

/// A session of `node` inside DATA: a transaction the drain lets finish.
async fn in_data(node: &TestNode) -> Client {
    let mut c = Client::connect(node.addr).await;
    assert_eq!(code(&c.reply().await), 220);
    assert_eq!(code(&c.cmd("EHLO client.example.org").await), 250);
    assert_eq!(code(&c.cmd("MAIL FROM:<a@example.org>").await), 250);
    assert_eq!(code(&c.cmd("RCPT TO:<b@example.test>").await), 250);
    assert_eq!(code(&c.cmd("DATA").await), 354);
    c.send(b"Subject: in flight\r\n\r\npart one\r\n").await;
    c
}

/// Wait until the node drains (it answers `/status` with `draining`).
async fn until_draining(node: &mtac_runtime::shared::Shared) {
    for _ in 0..200 {
        if node.stopping() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the node never began to drain");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_node_finishes_as_soon_as_its_last_session_ends_not_at_the_deadline() {
    let sink = Sink::start(Behaviour::default()).await;
    let grace = Duration::from_secs(30);
    let mut node = TestNode::start_with_grace(&relay_policy(""), Some(sink.addr), grace).await;
    let mut busy = in_data(&node).await;
    let shared = node.shared.clone();
    let stopping = tokio::spawn(async move {
        node.stop().await;
        Instant::now()
    });
    until_draining(&shared).await;
    drop(shared);
    let r = busy.cmd(".").await;
    assert_eq!(code(&r), 250, "the transaction in flight finishes: {r}");
    let ended = Instant::now();
    // The session ends by itself (421 at its next command, the node drains); the node follows.
    let stopped = tokio::time::timeout(Duration::from_secs(10), stopping).await.expect("the node stopped").unwrap();
    let after = stopped.saturating_duration_since(ended);
    assert!(after < Duration::from_secs(3), "stopped {after:?} after its last session ended (grace {grace:?})");
    assert_eq!(sink.messages().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_hangs_holds_the_drain_only_until_the_grace_period_ends() {
    let sink = Sink::start(Behaviour::default()).await;
    let grace = Duration::from_secs(1);
    let mut node = TestNode::start_with_grace(&relay_policy(""), Some(sink.addr), grace).await;
    let mut hanging = in_data(&node).await;
    let started = Instant::now();
    let stopping = tokio::spawn(async move {
        node.stop().await;
        Instant::now()
    });
    // The client never ends its DATA: at the deadline it is told 421 and the node stops.
    let r = hanging.reply().await;
    assert!(r.starts_with("421 4.3.2"), "{r}");
    let told = started.elapsed();
    assert!(told >= grace, "told to go after {told:?}, before the grace period of {grace:?} ended");
    let stopped = tokio::time::timeout(Duration::from_secs(10), stopping).await.expect("the node stopped").unwrap();
    let took = stopped.saturating_duration_since(started);
    assert!(took < grace + Duration::from_secs(3), "stopped {took:?} after the stop (grace {grace:?})");
    assert!(sink.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_metrics_read_the_same_counts() {
    let sink = Sink::start(Behaviour::default()).await;
    let mut node = TestNode::start(&relay_policy(""), Some(sink.addr)).await;
    let mut open = Client::connect(node.addr).await;
    assert_eq!(code(&open.reply().await), 220);
    let mut closed = Client::connect(node.addr).await;
    assert_eq!(code(&closed.reply().await), 220);
    assert_eq!(code(&closed.cmd("QUIT").await), 221);
    drop(closed);
    for _ in 0..200 {
        if node.shared.connections_open() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let metrics = node.metrics().await;
    let status = mtac_runtime::admin::Status::of(&node.shared);
    // The readiness probe of TestNode::start is one more connection.
    assert_eq!(sample(&metrics, r#"mtac_connections_total{farm="mx"}"#), 3.0, "{metrics}");
    assert_eq!(status.connections_total, 3);
    assert_eq!(sample(&metrics, "mtac_connections_active"), 1.0);
    assert_eq!(status.connections_active, 1);
    assert_eq!(sample(&metrics, r#"mtac_reloads_total{result="ok"}"#), 0.0);
    assert_eq!((status.reloads_ok, status.reloads_failed), (0, 0));
    assert_eq!(sample(&metrics, "mtac_ruleset_loaded_timestamp_seconds"), status.ruleset_loaded_at);
    assert_eq!(code(&open.cmd("QUIT").await), 221);
    node.stop().await;
}

/// A second node (or a farm whose listener overlaps another's) cannot share a listening address
/// without a word: its bind fails, and the first node keeps every connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_does_not_start_on_an_address_another_node_listens_on() {
    let sink = Sink::start(Behaviour::default()).await;
    let first = TestNode::start(&relay_policy(""), Some(sink.addr)).await;
    let dir = tempfile::tempdir().unwrap();
    let policy = relay_policy("")
        .replace("127.0.0.1:0", &first.addr.to_string())
        .replace("{backend}", &sink.addr.to_string())
        .replace("{dir}", dir.path().to_str().unwrap());
    let path = dir.path().join("policy.kdl");
    std::fs::write(&path, policy).unwrap();
    let loader: mtac_runtime::Loader = std::sync::Arc::new(move || {
        mtac_compiler::compile_path(&path).output.map(|o| o.ruleset).ok_or_else(|| "does not compile".to_owned())
    });
    let second = mtac_runtime::Node::new(loader).unwrap();
    let Err(error) = second.bind(mtac_runtime::AdminAddress::Off).await else {
        panic!("a second node bound {} beside the first", first.addr);
    };
    assert!(error.to_string().starts_with(&format!("cannot listen on {}", first.addr)), "{error}");
    let mut c = Client::connect(first.addr).await;
    assert_eq!(code(&c.reply().await), 220, "the first node still serves");
}

/// After QUIT's 221 the node lets go of the connection at once, without waiting for the client
/// to close its side (a lingering close would hold the session for up to a second per client);
/// a client that pipelined more after QUIT still reads the whole 221 and a clean end of the
/// stream, never a reset (the node drains before closing then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quit_ends_the_session_at_once_and_its_221_is_never_reset() {
    use tokio::io::AsyncReadExt;
    let sink = Sink::start(Behaviour::default()).await;
    let mut node = TestNode::start(&relay_policy(""), Some(sink.addr)).await;
    let wait_for_connections = |open: u64| {
        let shared = node.shared.clone();
        async move {
            for _ in 0..400 {
                if shared.connections_open() == open {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            false
        }
    };
    assert!(wait_for_connections(0).await, "the readiness probe's connection never ended");

    // QUIT alone: 221, the end of the stream, and the session is over while the client still
    // holds its socket open.
    let mut client = Client::connect(node.addr).await;
    assert_eq!(code(&client.reply().await), 220);
    assert_eq!(code(&client.cmd("EHLO client.example.org").await), 250);
    let started = Instant::now();
    assert_eq!(code(&client.cmd("QUIT").await), 221);
    assert!(client.closed().await);
    assert!(wait_for_connections(0).await, "the session outlived its QUIT");
    assert!(started.elapsed() < Duration::from_millis(900), "the node waited for the client to close first");

    // Commands after QUIT in the same write: the 221 arrives whole, then a clean end.
    let mut client = Client::connect(node.addr).await;
    assert_eq!(code(&client.reply().await), 220);
    assert_eq!(code(&client.cmd("EHLO client.example.org").await), 250);
    client.send(b"QUIT\r\nNOOP\r\nNOOP\r\n").await;
    assert_eq!(code(&client.reply().await), 221);
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), client.stream.read_to_end(&mut rest)).await;
    assert!(matches!(read, Ok(Ok(_))), "{read:?}");
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    node.stop().await;
}

/// A load that keeps session thread 0 busy (past a share of a CPU set low here, so that the
/// test's own load reaches it on a machine busy with other tests) spreads: thread 0 gives new
/// connections to the other threads, which serve and relay them as it would. Before the flood,
/// one session at a time, every connection stayed on thread 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_first_session_thread_hands_new_connections_to_the_others() {
    let sink = Sink::start(Behaviour::default()).await;
    let policy = relay_policy("limits { connections-per-ip 100; }");
    let mut node = TestNode::start_with_threads(&policy, Some(sink.addr), 3, 0.05).await;
    let per_thread = |metrics: &str| thread_connections(metrics, 3);
    let relayed = |addr, token: String| async move {
        let reply = send(addr, &format!("Subject: {token}\n\nbody\n")).await;
        assert_eq!(code(&reply), 250, "{token}: {reply}");
    };
    relayed(node.addr, "alone".to_owned()).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let before = per_thread(&node.metrics().await);
    assert_eq!(before[1..], [0.0, 0.0], "one session at a time stays on thread 0: {before:?}");

    let flood: Vec<_> = (0..24)
        .map(|client| {
            let addr = node.addr;
            tokio::spawn(async move {
                for i in 0..15 {
                    relayed(addr, format!("flood-{client}-{i}")).await;
                }
            })
        })
        .collect();
    for client in flood {
        client.await.unwrap();
    }
    let after = per_thread(&node.metrics().await);
    assert!(after[1] + after[2] > 0.0, "a flood of 360 messages stayed on thread 0: {after:?}");
    // Every connection went to one thread and every message reached the back end, whichever
    // thread served it (each thread relays over back-end connections of its own).
    assert_eq!(after.iter().sum::<f64>(), 1.0 + 1.0 + 360.0, "the readiness probe, one, the flood: {after:?}");
    assert_eq!(sink.messages().len(), 361);
    node.stop().await;
}
