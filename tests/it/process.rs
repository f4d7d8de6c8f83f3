//! `mtac run` as a real process: killed with SIGKILL mid-transaction (no acknowledged message may
//! be lost), stopped with SIGTERM, and fed new and corrupt rulesets while it serves.

use crate::support::{build, code, free_port, thread_connections, wait_for, Behaviour, Client, ProcessNode, Sink};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

fn write_policy(dir: &Path, port: u16, backend: SocketAddr, domains: &str) -> PathBuf {
    let text = format!(
        r#"hostname "mx.test.example"
spool "{spool}"
farm "mx" kind="inbound-mx" {{
    listen "127.0.0.1:{port}"
    trust-loopback
    // Each round is a new process, which knows no client: no pregreet wait (issue 17).
    screen {{ pregreet #false; }}
    limits {{
        connections-per-ip 200
        timeout relay="10s"
    }}
    local-domains {domains}
    relay {{
        backend "smtp://{backend}"
    }}
}}
"#,
        spool = dir.join("spool").display()
    );
    let path = dir.join("policy.kdl");
    std::fs::write(&path, text).unwrap();
    path
}

/// A node of this file: `mtac run` with a 5 s grace and no admin listener, logging beside the test's files.
fn start_node(ruleset: &Path, dir: &Path) -> ProcessNode {
    let log = dir.join(format!(
        "mtac-{}.log",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
    ));
    ProcessNode::start(ruleset, &["--grace", "5", "--admin", "off"], log)
}

/// A node relaying example.test to `backend` on a free port, built from this file's policy and
/// listening: its port, its ruleset file (to push new ones to) and the process.
async fn start_relay_node(dir: &Path, backend: SocketAddr) -> (u16, PathBuf, ProcessNode) {
    let port = free_port();
    let policy = write_policy(dir, port, backend, "\"example.test\"");
    let ruleset = dir.join("ruleset.mtac");
    build(&policy, &ruleset);
    let node = start_node(&ruleset, dir);
    wait_ready(port).await;
    (port, ruleset, node)
}

async fn wait_ready(port: u16) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("mtac did not start listening on {port}");
}

/// Sockets listening on 127.0.0.1:`port`, from /proc/net/tcp (state 0A is LISTEN).
fn listening_sockets(port: u16) -> usize {
    let local = format!("0100007F:{port:04X}");
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"0A")
        })
        .count()
}

/// One transaction; `Ok(true)` when the node answered 250 to the final dot.
async fn send_one(addr: SocketAddr, token: &str, rcpt_domain: &str) -> Result<bool, ()> {
    let stream = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| ())?
        .map_err(|_| ())?;
    let mut c = Client { stream: tokio::io::BufReader::new(stream) };
    if code(&c.reply().await) != 220 {
        return Err(());
    }
    let steps: [&str; 4] =
        ["EHLO load.example.org", "MAIL FROM:<load@example.org>", &format!("RCPT TO:<u@{rcpt_domain}>"), "DATA"];
    let expected = [250, 250, 250, 354];
    // The node may be killed at any moment: a write that fails (a broken pipe) is an
    // unacknowledged message, not a test failure.
    for (line, want) in steps.iter().zip(expected) {
        let sent = tokio::io::AsyncWriteExt::write_all(c.stream.get_mut(), format!("{line}\r\n").as_bytes()).await;
        let r = if sent.is_ok() { c.reply().await } else { String::new() };
        if r.is_empty() {
            return Err(());
        }
        if code(&r) != want {
            return Ok(false);
        }
    }
    if tokio::io::AsyncWriteExt::write_all(c.stream.get_mut(), format!("{}.\r\n", body(token)).as_bytes())
        .await
        .is_err()
    {
        return Err(());
    }
    let r = c.reply().await;
    if r.is_empty() {
        return Err(());
    }
    let _ = tokio::io::AsyncWriteExt::write_all(c.stream.get_mut(), b"QUIT\r\n").await;
    Ok(code(&r) == 250)
}

fn body(token: &str) -> String {
    format!(
        "Subject: {token}\r\nMessage-ID: <{token}@test>\r\n\r\n{token}\r\n..dotted {token}\r\n{}\r\n",
        "x".repeat(600)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_never_loses_an_acknowledged_message() {
    let sink = Sink::start(Behaviour::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let counter = Arc::new(AtomicU64::new(0));
    let mut attempted = 0u64;
    // A pseudo-random kill schedule that differs per run but is printed for reproduction.
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    eprintln!("kill schedule seed {seed}");
    let mut rng = seed | 1;
    for round in 0..6 {
        let (port, _, node) = start_relay_node(dir.path(), sink.addr).await;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for _ in 0..8 {
            let (stop, acknowledged, counter) = (stop.clone(), acknowledged.clone(), counter.clone());
            clients.push(tokio::spawn(async move {
                let mut tried = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let token = format!("tok{}", counter.fetch_add(1, Ordering::Relaxed));
                    tried += 1;
                    if let Ok(true) = send_one(addr, &token, "example.test").await {
                        acknowledged.lock().unwrap().push(token);
                    }
                }
                tried
            }));
        }
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let delay = 150 + rng % 600;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        node.signal("-KILL");
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            attempted += c.await.unwrap();
        }
        eprintln!("round {round}: killed after {delay} ms");
        drop(node);
    }
    let received: std::collections::HashMap<String, Vec<u8>> = sink
        .messages()
        .into_iter()
        .map(|m| {
            let text = String::from_utf8_lossy(&m.data).into_owned();
            let token = text.split("Subject: ").nth(1).and_then(|s| s.split("\r\n").next()).unwrap_or("").to_owned();
            (token, m.data)
        })
        .collect();
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= 100, "too few transactions to mean anything: {} of {attempted}", acknowledged.len());
    for token in &acknowledged {
        let data = received
            .get(token)
            .unwrap_or_else(|| panic!("{token} was acknowledged with 250 but never reached the back end"));
        assert!(data.ends_with(body(token).replace("\r\n..", "\r\n.").as_bytes()), "{token} arrived altered");
    }
    eprintln!(
        "{} attempted, {} acknowledged, {} at the back end, 0 lost",
        attempted,
        acknowledged.len(),
        received.len()
    );
    // The next start removes what the killed nodes left in the spool.
    let (_, _, node) = start_relay_node(dir.path(), sink.addr).await;
    let left = std::fs::read_dir(dir.path().join("spool"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name() != "admin.sock")
        .count();
    assert_eq!(left, 0, "stale spool files survived a restart");
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ruleset_pushes_reload_under_load_and_a_corrupt_push_is_refused() {
    let sink = Sink::start(Behaviour::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (port, ruleset, mut node) = start_relay_node(dir.path(), sink.addr).await;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // Load during the pushes: every session must succeed.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let successes = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for i in 0..4 {
        let (stop, failures, successes) = (stop.clone(), failures.clone(), successes.clone());
        clients.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                match send_one(addr, &format!("load{i}-{n}"), "example.test").await {
                    Ok(true) => successes.fetch_add(1, Ordering::Relaxed),
                    _ => failures.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    // Five good pushes, each adding a domain, written atomically by `mtac build`.
    for i in 0..5 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let domains = format!("\"example.test\" \"push{i}.example\"");
        let policy = write_policy(dir.path(), port, sink.addr, &domains);
        build(&policy, &ruleset);
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(send_one(addr, "after-push", "push4.example").await, Ok(true), "the last push is live");

    // A corrupt push (a truncated copy written in place) is refused; the node keeps serving.
    let bytes = std::fs::read(&ruleset).unwrap();
    std::fs::write(&ruleset, &bytes[..bytes.len() / 2]).unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(send_one(addr, "after-corrupt", "push4.example").await, Ok(true), "the old ruleset keeps serving");
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let log = node.log();
    assert!(log.contains("ruleset reload refused"), "{log}");
    assert_eq!(failures.load(Ordering::Relaxed), 0, "sessions failed during reloads; log:\n{log}");
    assert!(successes.load(Ordering::Relaxed) > 20);
    assert!(log.matches("ruleset reloaded").count() >= 1, "{log}");

    // SIGTERM: a session in DATA finishes, the process exits cleanly.
    let mut busy = Client::connect(addr).await;
    busy.reply().await;
    busy.cmd("EHLO a.example.org").await;
    busy.cmd("MAIL FROM:<a@example.org>").await;
    busy.cmd("RCPT TO:<b@example.test>").await;
    assert_eq!(code(&busy.cmd("DATA").await), 354);
    busy.send(b"Subject: sigterm\r\n\r\nhalf").await;
    node.signal("-TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(code(&busy.cmd(" and the rest\r\n.").await), 250);
    let status = tokio::task::spawn_blocking(move || {
        let status = node.child.wait().unwrap();
        (status, node)
    })
    .await
    .unwrap()
    .0;
    assert!(status.success(), "{status:?}");
}

/// mimalloc (the allocator of every build, src/allocator.rs) carves its heaps out of 2 MiB-aligned
/// regions and asked for huge pages on them: on a host whose THP setting is `madvise` (this
/// machine's, Debian's) or `always` (RHEL's) a node at rest held 19.6 MiB instead of 12. The node
/// turns THP off for itself before its first allocation, so after relaying mail it holds none
/// (the `AnonHugePages` check bites only where THP is not `never`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_relayed_mail_holds_no_transparent_huge_pages() {
    let sink = Sink::start(Behaviour::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let (port, _, node) = start_relay_node(dir.path(), sink.addr).await;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for i in 0..20 {
        assert_eq!(send_one(addr, &format!("thp{i}"), "example.test").await, Ok(true), "{}", node.log());
    }
    let pid = node.child.id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    assert!(
        status.lines().any(|l| l.split_whitespace().eq(["THP_enabled:", "0"])),
        "THP still on for the node:\n{status}"
    );
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
    let huge: Vec<&str> = rollup.lines().filter(|l| l.starts_with("AnonHugePages:")).collect();
    assert_eq!(huge, ["AnonHugePages:         0 kB"], "{rollup}");
}

/// `mtac run --workers N` sets the threads serving sessions (for a node whose other CPUs are
/// busy with scanners or the back end), says how many it runs, and serves with one as with
/// several; without it the node runs one per CPU it may use. With several, one socket listens
/// and a light load stays on the first thread (each thread that served light load would cost
/// wake-ups; node.rs tests how a load that keeps it busy spreads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_sets_the_session_threads_and_the_log_says_how_many() {
    let sink = Sink::start(Behaviour::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let policy = write_policy(dir.path(), port, sink.addr, "\"example.test\"");
    let ruleset = dir.path().join("ruleset.mtac");
    build(&policy, &ruleset);
    let one = ProcessNode::start(&ruleset, &["--workers", "1", "--admin", "off"], dir.path().join("one.log"));
    wait_ready(port).await;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for i in 0..5 {
        assert_eq!(send_one(addr, &format!("w{i}"), "example.test").await, Ok(true), "{}", one.log());
    }
    // Whole lines: "workers=1" is also the start of "workers=12".
    let says =
        |log: String, workers: usize| log.lines().any(|l| l.ends_with(&format!("session threads workers={workers}")));
    wait_for(|| says(one.log(), 1)).await;
    assert!(says(one.log(), 1), "{}", one.log());
    drop(one);

    // Three threads, one listening socket (as `ss -ltn` shows).
    let admin = format!("127.0.0.1:{}", free_port());
    let three = ProcessNode::start(&ruleset, &["--workers", "3", "--admin", &admin], dir.path().join("three.log"));
    wait_ready(port).await;
    assert_eq!(listening_sockets(port), 1, "one listening socket, whatever the threads");
    let given = || async {
        let (_, metrics) = mtac_runtime::admin::get(&admin, "/metrics", Duration::from_secs(5)).await.unwrap();
        thread_connections(&metrics, 3)
    };
    // Light load, one session at a time: every one on thread 0.
    for i in 0..30 {
        assert_eq!(send_one(addr, &format!("t{i}"), "example.test").await, Ok(true), "{}", three.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let light = given().await;
    assert!(light[0] >= 30.0 && light[1] == 0.0 && light[2] == 0.0, "light load: {light:?}");
    drop(three);
    let cpus = std::thread::available_parallelism().unwrap().get();
    let default = ProcessNode::start(&ruleset, &["--admin", "off"], dir.path().join("default.log"));
    wait_ready(port).await;
    wait_for(|| says(default.log(), cpus)).await;
    assert!(says(default.log(), cpus), "{}", default.log());
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_mtac"))
        .args(["run", "--workers", "0"])
        .arg(&ruleset)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
}
