//! Issue 14, AUTH guessing and bans: AUTH guessed from parallel sessions, a banned client that
//! kept guessing (and got 235), a submission ban that refused the MX farm, a plain-text 521 on
//! an implicit-TLS port, bans listed and lifted with `mtac state`; and the admin listener's
//! state oracle and its health probes starved by idle connections.

use crate::submission::{b64, certificate, connector, starttls, Smtp};
use crate::support::{code, free_port, sample, Behaviour, Client, Sink, TestNode};
use rustls_pki_types::ServerName;
use std::process::Command;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};

/// An Argon2 hash with the smallest parameters: the tests count checks, not measure them.
fn cheap_phc(password: &str) -> String {
    use argon2::password_hash::{PasswordHasher, SaltString};
    let params = argon2::Params::new(8, 1, 1, None).unwrap();
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let salt = SaltString::encode_b64(b"mtac-test-salt!!").unwrap();
    argon.hash_password(password.as_bytes(), &salt).unwrap().to_string()
}

/// A submission farm `users` (STARTTLS on the first listener, implicit TLS on `implicit_port`)
/// and an MX farm `mx` on `mx_port`.
fn two_farms(cert: &str, key: &str, users_extra: &str, implicit_port: u16, mx_port: u16) -> String {
    format!(
        r#"hostname "mx.test.example"
spool "{{dir}}/spool"
farm "users" kind="submission" {{
    listen "127.0.0.1:0"
    listen "127.0.0.1:{implicit_port}" tls="implicit"
    local-domains "example.test"
    tls certificate="{cert}" key="{key}"
    limits {{
        connections-per-ip 50
    }}
    auth max-failures=5 {{
        user "alice" hash="{hash}"
    }}
    {users_extra}
    relay {{
        backend "smtp://{{backend}}"
    }}
}}
farm "mx" kind="inbound-mx" {{
    listen "127.0.0.1:{mx_port}"
    local-domains "example.test"
    relay {{
        backend "smtp://{{backend}}"
    }}
}}
"#,
        hash = cheap_phc("correct horse")
    )
}

fn checks(m: &str) -> f64 {
    sample(m, r#"mtac_auth_total{farm="users",outcome="failure"}"#)
        + sample(m, r#"mtac_auth_total{farm="users",outcome="success"}"#)
}

fn mtac_state(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mtac")).arg("state").args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_14_twenty_parallel_sessions_get_at_most_max_failures_password_checks() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    let sink = Sink::start(Behaviour::default()).await;
    let node = TestNode::start(&two_farms(&cert, &key, "", free_port(), free_port()), Some(sink.addr)).await;

    // Twenty TLS sessions from one address, ready to authenticate…
    let mut sessions = Vec::new();
    for _ in 0..20 {
        let mut s = starttls(node.addr, &cert).await;
        assert_eq!(code(&s.cmd("EHLO laptop.example.org").await), 250);
        sessions.push(s);
    }
    // …then each guesses until the node stops answering 535.
    let guessing = sessions.into_iter().enumerate().map(|(n, mut s)| {
        tokio::spawn(async move {
            let mut last = String::new();
            for guess in 0..5 {
                last = s.cmd(&format!("AUTH PLAIN {}", b64(&format!("\0alice\0guess-{n}-{guess}")))).await;
                if !last.starts_with("535") {
                    break;
                }
            }
            last
        })
    });
    let mut refused = 0;
    for task in guessing.collect::<Vec<_>>() {
        let last = task.await.unwrap();
        assert!(!last.starts_with("235"), "{last}");
        if last.starts_with("421 4.7.0") {
            refused += 1;
        }
    }
    let m = node.metrics().await;
    assert!(checks(&m) <= 5.0, "max-failures=5 bounds the checks of all sessions together: {} checked", checks(&m));
    assert_eq!(refused, 20, "every session ends with 421 4.7.0");

    // The address is banned from the submission farm now: the right password gets no 235.
    let mut s = Client::connect(node.addr).await;
    let r = s.reply().await;
    assert!(r.starts_with("521 5.3.2"), "{r}");
}

/// Many users behind one address (a webmail server, an office's NAT) logging in at once with the
/// right passwords: each waits for a place among the checks under way and gets 235. The budget
/// of checks bounds guessing; it must not refuse logins for failures that never happened (it
/// answered 421 "too many failed authentications" to all but five of them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_14_parallel_logins_with_the_right_password_wait_their_turn() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    let sink = Sink::start(Behaviour::default()).await;
    // The real cost of a check (Argon2id at the `argon2` crate's defaults, tens of
    // milliseconds), so the twenty checks overlap.
    let real = {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let salt = SaltString::encode_b64(b"mtac-test-salt!!").unwrap();
        argon2::Argon2::default().hash_password(b"correct horse", &salt).unwrap().to_string()
    };
    let policy = two_farms(&cert, &key, "", free_port(), free_port()).replace(&cheap_phc("correct horse"), &real);
    let node = TestNode::start(&policy, Some(sink.addr)).await;
    let mut sessions = Vec::new();
    for _ in 0..20 {
        let mut s = starttls(node.addr, &cert).await;
        assert_eq!(code(&s.cmd("EHLO laptop.example.org").await), 250);
        sessions.push(s);
    }
    let logins = sessions.into_iter().map(|mut s| {
        tokio::spawn(async move { s.cmd(&format!("AUTH PLAIN {}", b64("\0alice\0correct horse"))).await })
    });
    for login in logins.collect::<Vec<_>>() {
        let reply = login.await.unwrap();
        assert!(reply.starts_with("235"), "{reply}");
    }
    let m = node.metrics().await;
    assert_eq!(sample(&m, r#"mtac_auth_total{farm="users",outcome="success"}"#), 20.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_14_a_banned_client_let_in_to_refuse_recipients_never_gets_235() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    let sink = Sink::start(Behaviour::default()).await;
    let ban = r#"ban after="relay" response="refuse-recipients""#;
    let node = TestNode::start(&two_farms(&cert, &key, ban, free_port(), free_port()), Some(sink.addr)).await;

    for guess in 0..5 {
        let mut s = starttls(node.addr, &cert).await;
        s.cmd("EHLO laptop.example.org").await;
        let r = s.cmd(&format!("AUTH PLAIN {}", b64(&format!("\0alice\0guess{guess}")))).await;
        assert!(r.starts_with("535"), "{r}");
    }
    // Banned now, but let in (the farm's bans refuse recipients): it keeps guessing, and has
    // the right password this time.
    for attempt in ["\0alice\0guess5", "\0alice\0correct horse"] {
        let mut s = starttls(node.addr, &cert).await;
        s.cmd("EHLO laptop.example.org").await;
        let r = s.cmd(&format!("AUTH PLAIN {}", b64(attempt))).await;
        assert!(r.starts_with("421 4.7.0"), "a banned client's AUTH is refused unchecked: {r}");
    }
    let m = node.metrics().await;
    assert_eq!(checks(&m), 5.0, "no password checked once banned: {m}");
    assert_eq!(sample(&m, r#"mtac_auth_total{farm="users",outcome="refused"}"#), 2.0);
}

/// A node with both farms, and the client (127.0.0.1) banned from `users` by five failed logins.
/// Returns the node, the certificate, the implicit-TLS port and the MX port.
async fn banned_from_submission(dir: &std::path::Path, sink: &Sink) -> (TestNode, String, u16, u16) {
    let (cert, key) = certificate(dir);
    let (implicit, mx) = (free_port(), free_port());
    let node = TestNode::start(&two_farms(&cert, &key, "", implicit, mx), Some(sink.addr)).await;
    let mut s = starttls(node.addr, &cert).await;
    s.cmd("EHLO laptop.example.org").await;
    let mut last = String::new();
    for guess in 0..5 {
        last = s.cmd(&format!("AUTH PLAIN {}", b64(&format!("\0alice\0guess{guess}")))).await;
    }
    assert!(last.starts_with("421"), "{last}");
    let mut c = Client::connect(node.addr).await;
    let r = c.reply().await;
    assert!(r.starts_with("521 5.3.2"), "banned from the submission farm: {r}");
    (node, cert, implicit, mx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_14_a_submission_ban_does_not_refuse_the_mx_farm() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(Behaviour::default()).await;
    let (_node, _, _, mx) = banned_from_submission(dir.path(), &sink).await;
    // The MX farm still takes the same address's mail (a partner's MTA behind the same NAT).
    let mut m = Client::connect(format!("127.0.0.1:{mx}").parse().unwrap()).await;
    let r = m.reply().await;
    assert!(r.starts_with("220"), "a submission ban does not refuse port 25: {r}");
    assert_eq!(code(&m.cmd("EHLO partner.example").await), 250);
    assert_eq!(code(&m.cmd("MAIL FROM:<a@partner.example>").await), 250);
    assert_eq!(code(&m.cmd("RCPT TO:<bob@example.test>").await), 250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_14_a_banned_client_on_an_implicit_tls_port_gets_no_plain_text() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(Behaviour::default()).await;
    let (_node, _, implicit, _) = banned_from_submission(dir.path(), &sink).await;
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", implicit)).await.unwrap();
    let mut first = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut first)).await;
    assert!(read.is_ok(), "closed at once");
    assert!(first.is_empty(), "no plain-text reply where TLS is expected: {:?}", String::from_utf8_lossy(&first));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_14_mtac_state_lists_a_ban_with_its_expiry_and_unban_lifts_it() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(Behaviour::default()).await;
    let (node, cert, implicit, _) = banned_from_submission(dir.path(), &sink).await;
    let socket = node.dir.path().join("spool/admin.sock");
    let socket = socket.to_str().unwrap();
    let (ok, text) = mtac_state(&[socket]);
    assert!(ok, "{text}");
    assert!(text.contains("ban              127.0.0.1/32  farm users  ends in 59m"), "{text}");
    let (ok, text) = mtac_state(&[socket, "--unban", "127.0.0.1"]);
    assert!(ok, "{text}");
    assert!(text.contains("lifted           127.0.0.1/32  farm users"), "{text}");
    let (ok, text) = mtac_state(&[socket, "--unban", "127.0.0.1"]);
    assert!(!ok && text.contains("no ban covers 127.0.0.1"), "{text}");
    let mut s = starttls(node.addr, &cert).await;
    s.cmd("EHLO laptop.example.org").await;
    let r = s.cmd(&format!("AUTH PLAIN {}", b64("\0alice\0correct horse"))).await;
    assert!(r.starts_with("235"), "unbanned, and its failures forgotten: {r}");
    // Lifted, the implicit-TLS port greets it inside TLS again.
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", implicit)).await.unwrap();
    let tls = connector(&cert).connect(ServerName::try_from("mx.test.example").unwrap(), tcp).await.unwrap();
    let mut t = Smtp { stream: BufReader::new(tls) };
    assert!(t.reply().await.starts_with("220 mx.test.example"));
}

async fn greylisting_node(sink: &Sink) -> TestNode {
    let greylist = r#"greylist delay="1s" retry-window="1h""#;
    TestNode::start(&crate::support::relay_policy(greylist), Some(sink.addr)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_14_the_admin_tcp_listener_is_no_state_oracle() {
    let sink = Sink::start(Behaviour::default()).await;
    let node = greylisting_node(&sink).await;
    let admin = node.admin.to_string();
    for path in ["/state", "/state?client=127.0.0.1&sender=a@x.example&recipient=bob@example.test"] {
        let (status, body) = mtac_runtime::admin::get(&admin, path, Duration::from_secs(5)).await.unwrap();
        assert_eq!(status, 404, "{path}: {body}");
        assert!(!body.contains("triplet") && body.contains("mtac state"), "{body}");
    }
    // The state is on the admin socket, the node's user's only.
    let socket = node.dir.path().join("spool/admin.sock");
    let (ok, text) = mtac_state(&[socket.to_str().unwrap()]);
    assert!(ok && text.contains("store            embedded"), "{text}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o600);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_14_health_answers_within_2s_behind_40_held_admin_connections() {
    let sink = Sink::start(Behaviour::default()).await;
    let node = greylisting_node(&sink).await;
    let admin = node.admin.to_string();
    // Forty idle keep-alive connections (each asked once, then holds on)…
    let mut held = Vec::new();
    for _ in 0..40 {
        let mut c = tokio::net::TcpStream::connect(node.admin).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        held.push(c);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // …and the probes still answer at once.
    for path in ["/healthz", "/readyz"] {
        let started = Instant::now();
        let answer = mtac_runtime::admin::get(&admin, path, Duration::from_secs(10)).await;
        let took = started.elapsed();
        assert_eq!(answer.map(|a| a.0), Ok(200), "{path}");
        assert!(took < Duration::from_secs(2), "{path} took {took:?} behind 40 held connections");
        eprintln!("{path}: {took:?} behind 40 held connections");
    }
    drop(held);
}
