//! `mtac run` over real TCP against a real (in-process) back end: every command, pipelining,
//! every limit, every back-end verdict, smuggling, spool hygiene, reload and graceful stop.

use crate::support::{code, relay_policy, sample, wait_for, Behaviour, Client, Sink, TestNode};
use std::time::Duration;

async fn node_with(extra: &str) -> (Sink, TestNode) {
    let sink = Sink::start(Behaviour::default()).await;
    let node = TestNode::start(&relay_policy(extra), Some(sink.addr)).await;
    (sink, node)
}

async fn ehlo(addr: std::net::SocketAddr) -> Client {
    let mut c = Client::connect(addr).await;
    assert_eq!(code(&c.reply().await), 220);
    assert_eq!(code(&c.cmd("EHLO client.example.org").await), 250);
    c
}

/// On a RAM disk (the production setting) a small message is never a file: it reaches the back
/// end byte for byte from memory, and a large one still goes through its file, which is gone
/// after the answer; as DATA, and as BDAT chunks (the large one in several, each read by its
/// size) to a back end that offers CHUNKING.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_ram_disk_small_messages_relay_from_memory_and_large_ones_from_their_file() {
    let mut large = b"Subject: large\r\n\r\n".to_vec();
    for n in 0..2000 {
        large.extend_from_slice(format!("{n:06} {}\r\n", "y".repeat(90)).as_bytes());
    }
    assert!(large.len() > 128 * 1024, "past the spool's in-memory mark");
    for chunking in [false, true] {
        let shm = tempfile::tempdir_in("/dev/shm").unwrap();
        let spool = shm.path().join("spool");
        let policy = relay_policy("").replace("{dir}/spool", &spool.display().to_string());
        let sink = Sink::start(Behaviour { chunking, ..Behaviour::default() }).await;
        let node = TestNode::start(&policy, Some(sink.addr)).await;
        let files = || std::fs::read_dir(&spool).map(|d| d.flatten().filter(|e| e.file_name() != "admin.sock").count());
        for body in [b"Subject: small\r\n\r\n..dot\r\nbody\r\n".to_vec(), large.clone()] {
            let mut c = ehlo(node.addr).await;
            assert_eq!(code(&c.cmd("MAIL FROM:<alice@example.org>").await), 250);
            assert_eq!(code(&c.cmd("RCPT TO:<bob@example.test>").await), 250);
            assert_eq!(code(&c.cmd("DATA").await), 354);
            c.send(&body).await;
            let reply = c.cmd(".").await;
            assert_eq!(code(&reply), 250, "{reply}");
            assert_eq!(files().unwrap(), 0, "a spool file outlived its message");
        }
        let messages = sink.messages();
        assert_eq!(messages.len(), 2);
        assert!(messages.iter().all(|m| m.bdat == chunking), "BDAT only to a back end that offers it");
        assert!(messages[0].data.ends_with(b"Subject: small\r\n\r\n.dot\r\nbody\r\n"), "chunking={chunking}");
        assert!(messages[1].data.ends_with(&large), "the large message changed on its way (chunking={chunking})");
        assert!(messages[1].data.starts_with(b"Received: "), "our trace header goes in front");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_reaches_the_back_end_byte_exact_before_the_250() {
    let (sink, node) = node_with("").await;
    let mut c = ehlo(node.addr).await;
    assert_eq!(code(&c.cmd("MAIL FROM:<alice@example.org> BODY=8BITMIME").await), 250);
    assert_eq!(code(&c.cmd("RCPT TO:<bob@example.test>").await), 250);
    assert_eq!(code(&c.cmd("DATA").await), 354);
    // Dot-stuffed lines, a lone dot inside a line, 8-bit bytes, a long line.
    let body: &[u8] =
        b"Subject: t\r\n\r\n..leading dot\r\n...two dots\r\nmid . dot\r\ncaf\xc3\xa9 \xff\xfe raw 8-bit\r\n";
    c.send(body).await;
    let final_reply = c.cmd(".").await;
    assert_eq!(code(&final_reply), 250, "{final_reply}");
    // The 250 came after the back end had it: it is there now, not eventually.
    let messages = sink.messages();
    assert_eq!(messages.len(), 1);
    let m = &messages[0];
    assert_eq!(m.from, "alice@example.org");
    assert_eq!(m.rcpts, vec!["bob@example.test".to_owned()]);
    let data = &m.data;
    let expected_body: &[u8] =
        b"Subject: t\r\n\r\n.leading dot\r\n..two dots\r\nmid . dot\r\ncaf\xc3\xa9 \xff\xfe raw 8-bit\r\n";
    assert!(
        data.starts_with(b"Received: from client.example.org ([127.0.0.1])\r\n\tby mx.test.example (mtac)"),
        "{}",
        String::from_utf8_lossy(data)
    );
    assert!(data.ends_with(expected_body), "{}", String::from_utf8_lossy(data));
    assert_eq!(code(&c.cmd("QUIT").await), 221);
    assert_eq!(node.spool_files(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_gets_its_rfc_reply() {
    let (_sink, node) = node_with("limits { errors 50; }").await;
    let mut c = Client::connect(node.addr).await;
    assert!(c.reply().await.starts_with("220 mx.test.example"));
    let ehlo = c.cmd("EHLO client.example.org").await;
    for keyword in ["PIPELINING", "SIZE 26214400", "8BITMIME", "CHUNKING", "SMTPUTF8", "ENHANCEDSTATUSCODES"] {
        assert!(ehlo.contains(keyword), "{keyword} missing from {ehlo}");
    }
    assert!(!ehlo.contains("BINARYMIME") && !ehlo.contains("AUTH"), "{ehlo}");
    assert_eq!(code(&c.cmd("HELO client.example.org").await), 250);
    assert_eq!(code(&c.cmd("NOOP").await), 250);
    assert_eq!(code(&c.cmd("HELP").await), 214);
    assert_eq!(code(&c.cmd("VRFY bob").await), 252);
    assert_eq!(code(&c.cmd("EXPN staff").await), 502);
    assert_eq!(code(&c.cmd("FROB").await), 500);
    assert_eq!(code(&c.cmd("RCPT TO:<bob@example.test>").await), 503, "RCPT before MAIL");
    assert_eq!(code(&c.cmd("DATA").await), 503, "DATA before MAIL");
    assert_eq!(code(&c.cmd("MAIL FROM:<>").await), 250, "null sender");
    assert_eq!(code(&c.cmd("MAIL FROM:<a@example.org>").await), 503, "nested MAIL");
    assert_eq!(code(&c.cmd("DATA").await), 554, "DATA without recipients");
    assert_eq!(code(&c.cmd("RCPT TO:<someone@elsewhere.example>").await), 554, "relay denied");
    assert_eq!(code(&c.cmd("RCPT TO:<postmaster>").await), 250, "RFC 5321 4.5.1: <postmaster> is always accepted");
    assert_eq!(code(&c.cmd("RSET").await), 250);
    assert_eq!(code(&c.cmd("RCPT TO:<bob@example.test>").await), 503, "RSET ended the transaction");
    assert_eq!(code(&c.cmd("MAIL FROM:<a@example.org> SIZE=99999999999").await), 552);
    assert_eq!(code(&c.cmd("MAIL FROM:<a@example.org> RET=FULL").await), 555);
    assert_eq!(code(&c.cmd("MAIL FROM:<jöse@example.org>").await), 553, "UTF-8 without SMTPUTF8");
    assert_eq!(code(&c.cmd("MAIL FROM:<jöse@example.org> SMTPUTF8").await), 250);
    assert_eq!(code(&c.cmd("QUIT").await), 221);
    assert!(c.closed().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_commands_are_answered_in_order() {
    let (sink, node) = node_with("").await;
    let mut c = Client::connect(node.addr).await;
    c.reply().await;
    // PIPELINING is offered in the reply to EHLO: a group may start only after it (issue 17).
    assert_eq!(code(&c.cmd("EHLO a.example.org").await), 250);
    c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<x@elsewhere.example>\r\nRCPT TO:<b@example.test>\r\nRCPT TO:<reject5@example.test>\r\nDATA\r\n").await;
    let codes: Vec<u16> = [(); 5].iter().map(|_| 0).collect();
    let mut got = Vec::new();
    for _ in codes {
        got.push(code(&c.reply().await));
    }
    assert_eq!(got, vec![250, 554, 250, 550, 354]);
    c.send(b"Subject: p\r\n\r\nbody\r\n.\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<c@example.test>\r\nDATA\r\n").await;
    assert_eq!(code(&c.reply().await), 250);
    assert_eq!(code(&c.reply().await), 250);
    assert_eq!(code(&c.reply().await), 250);
    assert_eq!(code(&c.reply().await), 354);
    assert_eq!(code(&c.cmd("second\r\n.").await), 250);
    assert_eq!(sink.messages().len(), 2);
    assert_eq!(*sink.connections.lock().unwrap(), 1, "the second transaction reused the pooled back-end connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggled_end_of_data_never_ends_the_message() {
    let (sink, node) = node_with("").await;
    let mut c = ehlo(node.addr).await;
    for (vector, name) in [
        (&b"\n.\n"[..], "LF.LF"),
        (&b"\r.\r"[..], "CR.CR"),
        (&b"\n.\r\n"[..], "LF.CRLF"),
        (&b"\r\n.\n"[..], "CRLF.LF"),
        (&b"\r.\r\n"[..], "CR.CRLF"),
    ] {
        assert_eq!(code(&c.cmd("MAIL FROM:<a@example.org>").await), 250);
        assert_eq!(code(&c.cmd("RCPT TO:<b@example.test>").await), 250);
        assert_eq!(code(&c.cmd("DATA").await), 354);
        let mut payload = b"Subject: smuggle\r\n\r\nhello".to_vec();
        payload.extend_from_slice(vector);
        payload
            .extend_from_slice(b"MAIL FROM:<evil@example.org>\r\nRCPT TO:<victim@example.test>\r\nDATA\r\nforged\r\n");
        c.send(&payload).await;
        // Only the real CRLF.CRLF ends it; the default policy refuses bare line ends.
        let reply = c.cmd(".").await;
        assert_eq!(code(&reply), 550, "{name}: {reply}");
        assert!(reply.contains("5.5.2"), "{name}: {reply}");
    }
    assert!(sink.messages().is_empty(), "a smuggled message reached the back end");
    // The session is intact: the smuggled commands were never executed.
    assert_eq!(code(&c.cmd("NOOP").await), 250);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn normalized_bare_line_ends_never_reach_the_back_end() {
    let (sink, node) = node_with(r#"bare-line-ends "normalize""#).await;
    let mut c = ehlo(node.addr).await;
    c.cmd("MAIL FROM:<a@example.org>").await;
    c.cmd("RCPT TO:<b@example.test>").await;
    c.cmd("DATA").await;
    c.send(b"Subject: n\r\n\r\none\n.\nMAIL FROM:<evil@example.org>\r\ntwo\rthree\x00four\r\n").await;
    assert_eq!(code(&c.cmd(".").await), 250);
    let messages = sink.messages();
    assert_eq!(messages.len(), 1);
    let data = &messages[0].data;
    for (i, &b) in data.iter().enumerate() {
        assert_ne!(b, 0, "NUL relayed");
        if b == b'\n' {
            assert_eq!(data[i - 1], b'\r', "bare LF relayed");
        }
        if b == b'\r' {
            assert_eq!(data.get(i + 1), Some(&b'\n'), "bare CR relayed");
        }
    }
    assert!(String::from_utf8_lossy(data).contains("MAIL FROM:<evil@example.org>"), "text kept as text");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_on_lines_recipients_errors_and_size() {
    let (sink, node) = node_with(
        r#"limits {
            line-length 600
            recipients 2
            errors 4
            message-size "2KiB"
        }"#,
    )
    .await;
    let mut c = ehlo(node.addr).await;
    let long = format!("NOOP {}", "x".repeat(700));
    let reply = c.cmd(&long).await;
    assert_eq!(code(&reply), 500, "{reply}");
    assert_eq!(code(&c.cmd("NOOP").await), 250, "the session goes on after a long line");
    c.cmd("MAIL FROM:<a@example.org>").await;
    assert_eq!(code(&c.cmd("RCPT TO:<r1@example.test>").await), 250);
    assert_eq!(code(&c.cmd("RCPT TO:<r2@example.test>").await), 250);
    assert_eq!(code(&c.cmd("RCPT TO:<r3@example.test>").await), 452);
    assert_eq!(code(&c.cmd("DATA").await), 354);
    c.send(&vec![b'y'; 3000]).await;
    let reply = c.cmd("\r\n.").await;
    assert_eq!(code(&reply), 552, "{reply}");
    assert!(sink.messages().is_empty());
    // Errors so far: 500 and 552 (a 452 for too many recipients is not an error). The fourth
    // error ends the session.
    assert_eq!(code(&c.cmd("FROB").await), 500);
    let last = c.cmd("FROB").await;
    assert_eq!(code(&last), 421, "{last}");
    assert!(c.closed().await);
    wait_for(|| node.spool_files() == 0).await;
    assert_eq!(node.spool_files(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_trickling_bytes_cannot_stretch_the_command_timeout() {
    let (_sink, node) = node_with(r#"limits { timeout command="2s"; }"#).await;
    let mut c = Client::connect(node.addr).await;
    c.reply().await;
    let start = std::time::Instant::now();
    let mut closed_reply = String::new();
    for _ in 0..20 {
        if c.stream.get_mut().try_write(b"N").is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        if start.elapsed() > Duration::from_millis(2500) {
            closed_reply = c.reply().await;
            break;
        }
    }
    assert_eq!(code(&closed_reply), 421, "{closed_reply}");
    assert!(start.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_connection_limit_applies_to_loopback_too() {
    let (_sink, node) = node_with(r#"limits { connections-per-ip 2; }"#).await;
    let mut a = Client::connect_from(node.addr, "127.0.0.2").await;
    let mut b = Client::connect_from(node.addr, "127.0.0.2").await;
    assert_eq!(code(&a.reply().await), 220);
    assert_eq!(code(&b.reply().await), 220);
    let mut third = Client::connect_from(node.addr, "127.0.0.2").await;
    let reply = third.reply().await;
    assert_eq!(code(&reply), 421, "{reply}");
    let mut other = Client::connect_from(node.addr, "127.0.0.3").await;
    assert_eq!(code(&other.reply().await), 220, "another address is not affected");
    drop(a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut again = Client::connect_from(node.addr, "127.0.0.2").await;
    assert_eq!(code(&again.reply().await), 220, "the slot is released when a session ends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_end_verdicts_reach_the_client() {
    let (sink, node) = node_with(r#"limits { timeout relay="2s"; }"#).await;
    let mut c = ehlo(node.addr).await;
    c.cmd("MAIL FROM:<a@example.org>").await;
    let r = c.cmd("RCPT TO:<reject5@example.test>").await;
    assert!(r.starts_with("550 5.1.1"), "{r}");
    let r = c.cmd("RCPT TO:<defer4@example.test>").await;
    assert!(r.starts_with("450 4.2.0"), "{r}");
    assert_eq!(code(&c.cmd("RCPT TO:<ok@example.test>").await), 250);
    c.cmd("DATA").await;
    sink.behaviour.lock().unwrap().data_reply = "452 4.3.1 Insufficient system storage".to_owned();
    let r = c.cmd("x\r\n.").await;
    assert!(r.starts_with("451 4.3.1"), "back-end 4xx after DATA becomes 451: {r}");
    sink.behaviour.lock().unwrap().data_reply = "554 5.6.0 Content refused".to_owned();
    c.cmd("MAIL FROM:<a@example.org>").await;
    c.cmd("RCPT TO:<ok@example.test>").await;
    c.cmd("DATA").await;
    let r = c.cmd("x\r\n.").await;
    assert!(r.starts_with("554 5.6.0"), "back-end 5xx passes through: {r}");
    assert!(sink.messages().is_empty());

    // Hang past the relay timeout → 451, and nothing acknowledged.
    sink.behaviour.lock().unwrap().data_reply = "250 2.0.0 Ok".to_owned();
    sink.behaviour.lock().unwrap().hang_after_data = true;
    let mut c = ehlo(node.addr).await;
    c.cmd("MAIL FROM:<a@example.org>").await;
    c.cmd("RCPT TO:<ok@example.test>").await;
    c.cmd("DATA").await;
    let start = std::time::Instant::now();
    let r = c.cmd("x\r\n.").await;
    assert!(r.starts_with("451 4.4.2"), "{r}");
    assert!(start.elapsed() < Duration::from_secs(6));

    // Reset mid-DATA → 451.
    {
        let mut b = sink.behaviour.lock().unwrap();
        b.hang_after_data = false;
        b.reset_mid_data = true;
    }
    let mut c = ehlo(node.addr).await;
    c.cmd("MAIL FROM:<a@example.org>").await;
    c.cmd("RCPT TO:<ok@example.test>").await;
    c.cmd("DATA").await;
    // Past the spool's in-memory mark, so the message is a file that must go.
    let mut body = b"line one\r\nline two\r\n".to_vec();
    for _ in 0..2000 {
        body.extend_from_slice(&[b'z'; 98]);
        body.extend_from_slice(b"\r\n");
    }
    c.send(&body).await;
    let r = c.cmd(".").await;
    assert!(r.starts_with("451 4.4."), "{r}");
    wait_for(|| node.spool_files() == 0).await;
    assert_eq!(node.spool_files(), 0, "spool files left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_back_end_gives_451_and_failover_uses_the_next() {
    // A port that refuses connections: bind, note the port, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let node = TestNode::start(&relay_policy("").replace("{backend}", &dead.to_string()), None).await;
    let mut c = ehlo(node.addr).await;
    c.cmd("MAIL FROM:<a@example.org>").await;
    let r = c.cmd("RCPT TO:<b@example.test>").await;
    assert!(r.starts_with("451 4.4.1"), "{r}");

    let sink = Sink::start(Behaviour::default()).await;
    let policy = relay_policy("").replace(
        "backend \"smtp://{backend}\"",
        &format!("backend \"smtp://{dead}\"\n        backend \"smtp://{}\"", sink.addr),
    );
    let node = TestNode::start(&policy, None).await;
    let mut c = ehlo(node.addr).await;
    c.cmd("MAIL FROM:<a@example.org>").await;
    assert_eq!(code(&c.cmd("RCPT TO:<b@example.test>").await), 250);
    c.cmd("DATA").await;
    assert_eq!(code(&c.cmd("failover\r\n.").await), 250);
    assert_eq!(sink.messages().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lmtp_takes_one_recipient_per_transaction() {
    let sink = Sink::start(Behaviour { lmtp: true, ..Behaviour::default() }).await;
    let policy = relay_policy("").replace("smtp://{backend}", "lmtp://{backend}");
    let node = TestNode::start(&policy, Some(sink.addr)).await;
    let mut c = ehlo(node.addr).await;
    c.cmd("MAIL FROM:<a@example.org>").await;
    assert_eq!(code(&c.cmd("RCPT TO:<one@example.test>").await), 250);
    let r = c.cmd("RCPT TO:<two@example.test>").await;
    assert!(r.starts_with("452 4.5.3"), "{r}");
    c.cmd("DATA").await;
    assert_eq!(code(&c.cmd("lmtp\r\n.").await), 250);
    let messages = sink.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].rcpts, vec!["one@example.test".to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_clients_are_answered_at_rcpt_or_at_connect_as_the_policy_says() {
    let (_sink, node) = node_with(r#"access { reject "127.0.0.0/8" reply="550 5.7.1 Listed"; }"#).await;
    let mut c = ehlo(node.addr).await;
    assert_eq!(code(&c.cmd("MAIL FROM:<a@example.org>").await), 250);
    let r = c.cmd("RCPT TO:<b@example.test>").await;
    assert!(r.starts_with("550 5.7.1 Listed"), "{r}");

    let (_sink, node) = node_with(r#"access stage="connect" { reject "127.0.0.0/8" reply="550 5.7.1 Listed"; }"#).await;
    let mut c = Client::connect(node.addr).await;
    let greeting = c.reply().await;
    assert!(greeting.starts_with("554 5.7.1"), "{greeting}");
    assert_eq!(code(&c.cmd("EHLO a.example.org").await), 503);
    assert_eq!(code(&c.cmd("QUIT").await), 221);
}

/// Issue 15: a refusal's rule comes back with the reply that refuses, the greeting included, so
/// a client the policy refuses at connect is banned by the greeting itself, even when it hangs up
/// without another word (the rule used to wait in the session for the next command).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue15_a_client_refused_at_connect_is_banned_by_the_greeting() {
    let (_sink, node) = node_with(
        r#"access stage="connect" { reject "127.0.51.1/32" reply="550 5.7.1 Listed"; }
    ban after="access" duration="10m" network="/24""#,
    )
    .await;
    let mut c = Client::connect_from(node.addr, "127.0.51.1").await;
    let greeting = c.reply().await;
    assert!(greeting.starts_with("554 5.7.1"), "{greeting}");
    drop(c);
    let mut neighbour = Client::connect_from(node.addr, "127.0.51.9").await;
    let r = neighbour.reply().await;
    assert!(r.starts_with("521 5.3.2"), "the /24 is banned: {r}");
    assert!(neighbour.closed().await);
    let m = node.metrics().await;
    assert_eq!(sample(&m, "mtac_bans_total"), 1.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_talkers_are_refused() {
    // remember=0: the test support's probe passed, and would make this client a known one.
    let (_sink, node) = node_with(
        r#"limits { timeout pregreet="1s"; }
    screen { pregreet remember=0; }"#,
    )
    .await;
    let mut c = Client::connect(node.addr).await;
    c.send(b"EHLO impatient.example.org\r\n").await;
    // The greeting's first line went out at once; the refusal is its last (issue 17).
    let r = c.reply().await;
    assert!(r.starts_with("220-") && r.lines().last().is_some_and(|l| l.starts_with("554 5.5.1")), "{r}");
    assert!(c.closed().await);
    let mut polite = Client::connect(node.addr).await;
    assert_eq!(code(&polite.reply().await), 220);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_swaps_the_policy_and_a_broken_one_is_refused() {
    let (_sink, node) = node_with("").await;
    let mut old_session = ehlo(node.addr).await;
    let policy_path = node.dir.path().join("policy.kdl");
    let original = std::fs::read_to_string(&policy_path).unwrap();

    // A broken policy: refused, the old one keeps serving.
    std::fs::write(&policy_path, "hostname \"mx.test.example\"\nfarm \"mx\" {").unwrap();
    let reloads = |result| node.shared.metrics.reloads_counted(result);
    wait_for(|| reloads("failed") > 0).await;
    assert!(reloads("failed") > 0, "no reload attempted");
    let mut c = ehlo(node.addr).await;
    c.cmd("MAIL FROM:<a@example.org>").await;
    assert_eq!(code(&c.cmd("RCPT TO:<b@example.test>").await), 250, "the old ruleset still serves");

    // A good new policy adds a domain: new sessions see it, the session in flight keeps the old.
    let updated = original.replace(r#"local-domains "example.test""#, r#"local-domains "example.test" "new.example""#);
    let tmp = node.dir.path().join("policy.kdl.tmp");
    std::fs::write(&tmp, updated).unwrap();
    std::fs::rename(&tmp, &policy_path).unwrap();
    wait_for(|| reloads("ok") > 0).await;
    assert_eq!(reloads("ok"), 1);
    let mut fresh = ehlo(node.addr).await;
    fresh.cmd("MAIL FROM:<a@example.org>").await;
    assert_eq!(code(&fresh.cmd("RCPT TO:<b@new.example>").await), 250);
    old_session.cmd("MAIL FROM:<a@example.org>").await;
    assert_eq!(code(&old_session.cmd("RCPT TO:<b@new.example>").await), 554, "in-flight sessions keep their ruleset");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_lets_a_transaction_finish_and_tells_idle_sessions_421() {
    let (sink, mut node) = node_with("").await;
    let mut idle = ehlo(node.addr).await;
    let mut busy = ehlo(node.addr).await;
    busy.cmd("MAIL FROM:<a@example.org>").await;
    busy.cmd("RCPT TO:<b@example.test>").await;
    assert_eq!(code(&busy.cmd("DATA").await), 354);
    busy.send(b"Subject: in flight\r\n\r\npart one\r\n").await;
    let stopping = tokio::spawn(async move {
        node.stop().await;
        node
    });
    let r = idle.reply().await;
    assert!(r.starts_with("421 4.3.2"), "{r}");
    busy.send(b"part two\r\n").await;
    let r = busy.cmd(".").await;
    assert_eq!(code(&r), 250, "the transaction in flight finishes: {r}");
    assert_eq!(sink.messages().len(), 1);
    let r = busy.cmd("MAIL FROM:<a@example.org>").await;
    assert!(r.is_empty() || code(&r) == 421, "{r}");
    let node = stopping.await.unwrap();
    assert_eq!(node.spool_files(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_farm_wide_connection_limit_refuses_with_421() {
    let (_sink, node) = node_with(r#"limits { connections 2; }"#).await;
    let mut a = Client::connect_from(node.addr, "127.0.0.4").await;
    let mut b = Client::connect_from(node.addr, "127.0.0.5").await;
    assert_eq!(code(&a.reply().await), 220);
    assert_eq!(code(&b.reply().await), 220);
    let mut c = Client::connect_from(node.addr, "127.0.0.6").await;
    let r = c.reply().await;
    assert!(r.starts_with("421 4.7.0"), "{r}");
    assert_eq!(code(&a.cmd("QUIT").await), 221);
    drop(a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut d = Client::connect_from(node.addr, "127.0.0.6").await;
    assert_eq!(code(&d.reply().await), 220);
}
