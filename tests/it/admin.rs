//! The admin listener and farm operations (issue 8): scripted sessions against a running node,
//! then /metrics must show what they did; health and readiness; `mtac status` across two
//! `mtac run` processes before and after a push; the decision log lines and syslog output.

use crate::support::{build, code, relay_policy, sample, Behaviour, Client, ProcessNode, Sink, TestNode};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

async fn get(address: std::net::SocketAddr, path: &str) -> (u16, String) {
    mtac_runtime::admin::get(&address.to_string(), path, Duration::from_secs(5)).await.unwrap()
}

async fn deliver(node: &TestNode, from: &str, rcpt: &str) -> u16 {
    let mut c = Client::connect_from(node.addr, from).await;
    assert_eq!(code(&c.reply().await), 220);
    assert_eq!(code(&c.cmd("EHLO client.example.org").await), 250);
    assert_eq!(code(&c.cmd("MAIL FROM:<alice@example.org>").await), 250);
    let r = c.cmd(&format!("RCPT TO:<{rcpt}>")).await;
    if code(&r) != 250 {
        c.cmd("QUIT").await;
        return code(&r);
    }
    assert_eq!(code(&c.cmd("DATA").await), 354);
    c.send(b"Subject: metrics\r\n\r\nhello\r\n").await;
    let r = c.cmd(".").await;
    c.cmd("QUIT").await;
    code(&r)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_the_sessions_did() {
    let sink = Sink::start(Behaviour::default()).await;
    let policy = relay_policy(
        r#"access stage="rcpt" {
        reject "127.0.0.66/32" reply="554 5.7.1 Go away"
    }"#,
    );
    let mut node = TestNode::start(&policy, Some(sink.addr)).await;

    let (status, before) = get(node.admin, "/metrics").await;
    assert_eq!(status, 200);
    assert!(before.contains("# TYPE mtac_connections counter"), "{before}");
    assert!(before.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF");

    assert_eq!(deliver(&node, "127.0.0.1", "bob@example.test").await, 250);
    assert_eq!(deliver(&node, "127.0.0.1", "bob@example.test").await, 250);
    assert_eq!(deliver(&node, "127.0.0.1", "someone@elsewhere.example").await, 554);
    assert_eq!(deliver(&node, "127.0.0.66", "bob@example.test").await, 554);

    // The closing lines are counted when each session task ends.
    let mut after = String::new();
    for _ in 0..100 {
        after = get(node.admin, "/metrics").await.1;
        if sample(&after, r#"mtac_sessions_total{farm="mx",end="quit"}"#) >= 4.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m = |series: &str| sample(&after, series) - sample(&before, series);
    assert_eq!(m(r#"mtac_messages_total{farm="mx",verdict="accepted",reason="delivered"}"#), 2.0, "{after}");
    assert_eq!(m(r#"mtac_recipients_total{farm="mx",verdict="accepted"}"#), 2.0);
    assert_eq!(m(r#"mtac_recipients_total{farm="mx",verdict="rejected"}"#), 2.0);
    assert_eq!(m(r#"mtac_refusals_total{farm="mx",stage="rcpt",verdict="reject",rule="relay"}"#), 1.0, "{after}");
    assert_eq!(m(r#"mtac_refusals_total{farm="mx",stage="rcpt",verdict="reject",rule="access"}"#), 1.0);
    assert_eq!(m(r#"mtac_sessions_total{farm="mx",end="quit"}"#), 4.0);
    // The readiness probe of TestNode::start is one more connection.
    assert_eq!(m(r#"mtac_connections_total{farm="mx"}"#), 4.0);
    assert_eq!(m(r#"mtac_relay_duration_seconds_count{farm="mx"}"#), 2.0);
    assert!(m(r#"mtac_message_bytes_total{farm="mx"}"#) > 40.0);
    assert_eq!(sample(&after, "mtac_spool_files"), 0.0, "every spool file is gone");
    let hash = node.shared.snapshot().ruleset.hash_hex();
    assert_eq!(sample(&after, &format!(r#"mtac_ruleset_info{{hash="{hash}"}}"#)), 1.0);
    assert_eq!(sink.messages().len(), 2);

    // Health, readiness, status.
    assert_eq!(get(node.admin, "/healthz").await.0, 200);
    assert_eq!(get(node.admin, "/readyz").await.0, 200);
    assert_eq!(get(node.admin, "/nothing").await.0, 404);
    let (status, body) = get(node.admin, "/status").await;
    assert_eq!(status, 200);
    let s: mtac_runtime::admin::Status = serde_json::from_str(&body).unwrap();
    assert_eq!(s.ruleset, hash);
    assert_eq!(s.hostname, "mx.test.example");
    assert_eq!(s.state, "running");

    // While draining (a session still open keeps the node up), the node is not ready.
    let mut open = Client::connect(node.addr).await;
    assert_eq!(code(&open.reply().await), 220);
    let admin = node.admin;
    let stopping = tokio::spawn(async move { node.stop().await });
    let mut drained = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if get(admin, "/readyz").await.0 == 503 {
            drained = true;
            break;
        }
    }
    assert!(drained, "/readyz must answer 503 while draining");
    open.cmd("QUIT").await;
    stopping.await.unwrap();
}

// ----- two `mtac run` processes and `mtac status` ---------------------------------------------

fn write_policy(dir: &Path, smtp: &str, domains: &str) -> PathBuf {
    let text = format!(
        r#"hostname "mx.test.example"
spool "{spool}"
farm "mx" kind="inbound-mx" {{
    listen "{smtp}"
    local-domains {domains}
    access stage="rcpt" {{
        reject "127.0.0.66/32" reply="554 5.7.1 Go away"
    }}
    relay {{
        backend "smtp://127.0.0.1:9"
    }}
}}
"#,
        spool = dir.join("spool").display()
    );
    let path = dir.join("policy.kdl");
    std::fs::write(&path, text).unwrap();
    path
}

fn mtac(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_mtac")).args(args).output().unwrap()
}

async fn ruleset_of(admin: &str) -> Option<String> {
    let (code, body) = mtac_runtime::admin::get(admin, "/status", Duration::from_secs(2)).await.ok()?;
    (code == 200).then(|| serde_json::from_str::<mtac_runtime::admin::Status>(&body).ok().map(|s| s.ruleset))?
}

async fn wait_for_ruleset(admin: &str, hash: &str) {
    for _ in 0..400 {
        if ruleset_of(admin).await.as_deref() == Some(hash) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{admin} never ran ruleset {hash}");
}

fn hash_of(ruleset: &Path) -> String {
    mtac_ruleset::Ruleset::open(ruleset).unwrap().hash_hex()
}

/// Atomic push, like rsync's temp file and rename.
fn push(from: &Path, to: &Path) {
    let tmp = to.with_extension("part");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_divergence_after_a_partial_push_and_convergence_after_both() {
    let work = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (work.path().join("a"), work.path().join("b"));
    std::fs::create_dir_all(&a_dir).unwrap();
    std::fs::create_dir_all(&b_dir).unwrap();
    // The build: version 1, then version 2 with one more domain.
    let v1 = work.path().join("v1.mtac");
    let v2 = work.path().join("v2.mtac");
    build(&write_policy(work.path(), "127.0.93.1:2525", r#""example.test""#), &v1);
    build(&write_policy(work.path(), "127.0.93.1:2525", r#""example.test" "example.net""#), &v2);
    // Real farm nodes are separate hosts serving one policy; here both share a machine, so each
    // starts on a ruleset with its own listen address. Listeners are bound at start, so the
    // pushed rulesets (which name A's address) change everything but the sockets.
    let a_rules = a_dir.join("current.mtac");
    let b_rules = b_dir.join("current.mtac");
    build(&write_policy(&a_dir, "127.0.93.1:2525", r#""example.test""#), &a_rules);
    build(&write_policy(&b_dir, "127.0.93.2:2525", r#""example.test""#), &b_rules);
    let (a_admin, b_admin) = ("127.0.93.1:9325", "127.0.93.2:9325");
    let a = ProcessNode::start(&a_rules, &["--grace", "1", "--admin", a_admin], work.path().join("a.log"));
    let b = ProcessNode::start(&b_rules, &["--grace", "1", "--admin", b_admin], work.path().join("b.log"));
    wait_for_ruleset(a_admin, &hash_of(&a_rules)).await;
    wait_for_ruleset(b_admin, &hash_of(&b_rules)).await;

    // Push v1 to both: converged.
    push(&v1, &a_rules);
    push(&v1, &b_rules);
    wait_for_ruleset(a_admin, &hash_of(&v1)).await;
    wait_for_ruleset(b_admin, &hash_of(&v1)).await;
    let out = mtac(&["status", a_admin, b_admin, "--ruleset", v1.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("converged: all 2 node(s) run ruleset"), "{text}");

    // Push v2 to A only: diverged, and not on the expected ruleset.
    push(&v2, &a_rules);
    wait_for_ruleset(a_admin, &hash_of(&v2)).await;
    let out = mtac(&["status", a_admin, b_admin, "--ruleset", v2.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("NOT converged: 2 ruleset(s) in use"), "{text}");
    assert!(text.contains(&hash_of(&v2)[..12]) && text.contains(&hash_of(&v1)[..12]), "{text}");

    // A corrupt push to B is refused; status shows the reload error and B keeps v1.
    std::fs::write(b_dir.join("current.part"), b"not a ruleset").unwrap();
    std::fs::rename(b_dir.join("current.part"), &b_rules).unwrap();
    let mut shown = String::new();
    for _ in 0..200 {
        let out = mtac(&["status", "--format", "json", a_admin, b_admin]);
        shown = String::from_utf8_lossy(&out.stdout).into_owned();
        if shown.contains("last_reload_error\": \"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(shown.contains("last_reload_error\": \""), "{shown}");
    assert_eq!(ruleset_of(b_admin).await.unwrap(), hash_of(&v1));
    // One bad push is one failed reload: the node's own reading of the file must not trigger
    // another (it once did, five times a second).
    let failed = || async {
        let (_, body) = mtac_runtime::admin::get(b_admin, "/status", Duration::from_secs(2)).await.unwrap();
        serde_json::from_str::<mtac_runtime::admin::Status>(&body).unwrap().reloads_failed
    };
    let first = failed().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(first <= 2 && failed().await == first, "reloads keep failing: {first} then {}", failed().await);

    // Push v2 to B as well: converged on v2.
    push(&v2, &b_rules);
    wait_for_ruleset(b_admin, &hash_of(&v2)).await;
    let out = mtac(&["status", a_admin, b_admin, "--ruleset", v2.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("converged") && text.contains("every node that answered runs the expected"), "{text}");

    // A node that does not answer is never "converged".
    drop(b);
    let out = mtac(&["status", "--timeout", "2", a_admin, b_admin]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("DOWN"), "{text}");
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_is_logged_with_its_rule_to_stderr_and_to_syslog() {
    let work = tempfile::tempdir().unwrap();
    let rules = work.path().join("r.mtac");
    build(&write_policy(work.path(), "127.0.93.3:2525", r#""example.test""#), &rules);
    let syslog = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    syslog.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let target = format!("udp://{}", syslog.local_addr().unwrap());
    let node =
        ProcessNode::start(&rules, &["--grace", "1", "--admin", "off", "--syslog", &target], work.path().join("n.log"));
    let addr: std::net::SocketAddr = "127.0.93.3:2525".parse().unwrap();
    let mut connected = None;
    for _ in 0..200 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.66:0".parse().unwrap()).unwrap();
        if let Ok(stream) = socket.connect(addr).await {
            connected = Some(Client { stream: tokio::io::BufReader::new(stream) });
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut c = connected.expect("the node listens");
    assert_eq!(code(&c.reply().await), 220);
    c.cmd("EHLO zombie.example.org").await;
    c.cmd("MAIL FROM:<spam@example.org>").await;
    assert_eq!(code(&c.cmd("RCPT TO:<bob@example.test>").await), 554);
    c.cmd("QUIT").await;

    // stderr: one line for the decision, with the rule and everything needed to answer a user.
    let mut line = String::new();
    for _ in 0..200 {
        if let Some(l) = node.log().lines().find(|l| l.contains("refused")) {
            line = l.to_owned();
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    for field in [
        "rule=\"access\"",
        "stage=\"rcpt\"",
        "client=127.0.0.66",
        "helo=\"zombie.example.org\"",
        "sender=\"spam@example.org\"",
        "recipient=\"bob@example.test\"",
        "reply=554 5.7.1 Go away",
        "session=",
    ] {
        assert!(line.contains(field), "`{field}` missing from: {line}");
    }

    // Syslog: RFC 5424, facility mail, severity info → PRI 22; one record per datagram.
    let mut buf = [0u8; 4096];
    let mut found = None;
    for _ in 0..50 {
        let n = syslog.recv(&mut buf).expect("a syslog datagram");
        let record = String::from_utf8_lossy(&buf[..n]).into_owned();
        if record.contains("refused") {
            found = Some(record);
            break;
        }
    }
    let record = found.expect("the refusal reached syslog");
    assert!(record.starts_with("<22>1 "), "{record}");
    assert!(record.contains(" mtac ") && record.contains("rule=\"access\""), "{record}");
    assert!(!record.contains('\n'), "{record}");
    drop(node);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn systemd_hears_ready_watchdog_and_stopping() {
    let work = tempfile::tempdir().unwrap();
    let rules = work.path().join("r.mtac");
    build(&write_policy(work.path(), "127.0.93.4:2525", r#""example.test""#), &rules);
    let socket_path = work.path().join("notify.sock");
    let systemd = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    systemd.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_mtac"))
        .args(["run", "--grace", "1", "--admin", "off"])
        .arg(&rules)
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "200000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut node = ProcessNode::adopt(child);
    let mut heard = Vec::new();
    let mut buf = [0u8; 1024];
    while !(heard.iter().any(|m: &String| m.contains("READY=1"))
        && heard.iter().filter(|m| m.contains("WATCHDOG=1")).count() >= 2)
    {
        let n = systemd.recv(&mut buf).expect("a notification");
        heard.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let ready = heard.iter().find(|m| m.contains("READY=1")).unwrap();
    assert!(ready.contains("STATUS=serving ruleset "), "{ready}");
    // The SMTP listener is up by the time systemd hears READY.
    assert!(tokio::net::TcpStream::connect("127.0.93.4:2525").await.is_ok(), "listening once READY is sent");
    Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    let mut stopping = false;
    for _ in 0..50 {
        let Ok(n) = systemd.recv(&mut buf) else { break };
        if String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1") {
            stopping = true;
            break;
        }
    }
    assert!(stopping, "systemd hears STOPPING=1 on SIGTERM; heard {heard:?}");
    let _ = node.child.wait();
}
