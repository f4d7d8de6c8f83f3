//! Milters and HTTP hooks (issue 19) against real filters started here: Debian's opendkim
//! (verifying, so every message gets its Authentication-Results), clamav-milter in front of the
//! test clamd (EICAR refused with clamav-milter's own reply) and spamass-milter in front of
//! spamd (GTUBE). Then filters that misbehave: one that never answers (timeouts, both fail
//! modes), one that answers garbage, one scripted to ask for what the policy does not allow;
//! and an HTTP hook written here (reject, tempfail, add a header, hang).
//!
//! On a laptop without the daemons these tests say so and pass; under `CI=true` they fail.

use crate::scan::{clamd, missing, send, spamd, Daemon, EICAR, GTUBE};
use crate::support::{code, free_port, relay_policy, sample, Behaviour, Client, Sink, TestNode};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Wait until something accepts connections on `port`.
async fn listening(port: u16, what: &str) {
    for _ in 0..600 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not start on port {port}");
}

/// Spawn a milter (output discarded) and wait until it listens on `port`.
async fn started(what: &str, command: &mut Command, dir: tempfile::TempDir, port: u16) -> Option<Daemon> {
    let child = match command.stdout(Stdio::null()).stderr(Stdio::null()).spawn() {
        Ok(c) => c,
        Err(e) => return missing(what, e),
    };
    let daemon = Daemon { child, _dir: dir, port };
    listening(port, what).await;
    Some(daemon)
}

/// Write the configuration file `name` (its text made from a fresh directory and a free port),
/// start `program ARGS… FILE`, and wait until it listens on that port.
async fn configured(
    program: &str,
    args: &[&str],
    name: &str,
    text: impl FnOnce(&std::path::Path, u16) -> String,
) -> Option<Daemon> {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join(name);
    std::fs::write(&config, text(dir.path(), port)).unwrap();
    started(program, Command::new(program).args(args).arg(&config), dir, port).await
}

async fn opendkim() -> Option<Daemon> {
    configured("opendkim", &["-f", "-x"], "opendkim.conf", |dir, port| {
        format!(
            "Mode v\nAlwaysAddARHeader yes\nAuthservID opendkim-test\nSocket inet:{port}@127.0.0.1\nBackground no\nSyslog no\nPidFile {}\n",
            dir.join("pid").display()
        )
    })
    .await
}

async fn clamav_milter(clamd_port: u16) -> Option<Daemon> {
    configured("clamav-milter", &["-c"], "clamav-milter.conf", |dir, port| {
        format!(
            "MilterSocket inet:{port}@127.0.0.1\nClamdSocket tcp:127.0.0.1:{clamd_port}\nForeground yes\nOnInfected Reject\nRejectMsg Virus found: %v\nOnClean Accept\nAddHeader No\nLogFile {}\nPidFile {}\nTemporaryDirectory {}\n",
            dir.join("log").display(),
            dir.join("pid").display(),
            dir.display(),
        )
    })
    .await
}

async fn spamass_milter(spamd_port: u16) -> Option<Daemon> {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // -r 5: refuse at a score of 5 or more (GTUBE scores 1000); -- passes the rest to spamc.
    let mut command = Command::new("spamass-milter");
    command.arg("-p").arg(format!("inet:{port}@127.0.0.1"));
    command.args(["-r", "5", "-i", "127.0.0.2", "--", "-d", "127.0.0.1", "-p"]).arg(spamd_port.to_string());
    started("spamass-milter", &mut command, dir, port).await
}

pub(crate) fn message(subject: &str, body: &str) -> String {
    format!("From: alice@sender.example\nTo: bob@example.test\nSubject: {subject}\nMessage-ID: <m1@sender.example>\n\n{body}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opendkim_and_clamav_milter_in_order_add_their_header_and_refuse_eicar() {
    let Some(clam) = clamd().await else { return };
    let (Some(dkim), Some(clam_milter)) = (opendkim().await, clamav_milter(clam.port).await) else { return };
    let sink = Sink::start(Behaviour::default()).await;
    let node = TestNode::start(
        &relay_policy(&format!(
            r#"milter "inet:127.0.0.1:{}" name="opendkim" timeout="20s"
    milter "inet:{}@127.0.0.1" name="clamav" timeout="20s""#,
            dkim.port, clam_milter.port
        )),
        Some(sink.addr),
    )
    .await;
    let big = "a line of a larger body that spans several 64 KiB chunks to the milters\n".repeat(3000);
    let r = send(node.addr, &message("clean", &big)).await;
    assert_eq!(code(&r), 250, "{r}");
    let relayed = String::from_utf8_lossy(&sink.messages()[0].data).into_owned();
    assert!(relayed.starts_with("Authentication-Results: opendkim-test; dkim=none"), "{}", &relayed[..300]);
    assert!(relayed.contains(&big.replace('\n', "\r\n")), "the body is relayed whole and unchanged");

    let r = send(node.addr, &message("virus", EICAR)).await;
    assert!(r.starts_with("5"), "clamav-milter refuses EICAR: {r}");
    assert!(r.contains("Virus found: Mtac.Test.Eicar"), "with its own reply (RejectMsg): {r}");
    assert_eq!(sink.messages().len(), 1, "nothing more reached the back end");
    let m = node.metrics().await;
    // opendkim puts its Authentication-Results on top (smfi_insheader at 0).
    assert_eq!(sample(&m, r#"mtac_filter_answers_total{filter="opendkim",action="insert-header"}"#), 2.0, "{m}");
    assert_eq!(sample(&m, r#"mtac_filter_answers_total{filter="clamav",action="reject"}"#), 1.0, "{m}");
    assert_eq!(sample(&m, r#"mtac_messages_total{farm="mx",verdict="rejected",reason="milter"}"#), 1.0, "{m}");
    assert_eq!(node.spool_files(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spamass_milter_refuses_gtube() {
    let Some(spam) = spamd().await else { return };
    let Some(milter) = spamass_milter(spam.port).await else { return };
    let sink = Sink::start(Behaviour::default()).await;
    let node = TestNode::start(
        &relay_policy(&format!(r#"milter "inet:127.0.0.1:{}" name="spamass" timeout="60s""#, milter.port)),
        Some(sink.addr),
    )
    .await;
    let r = send(node.addr, &message("spam", GTUBE)).await;
    assert!(r.starts_with("5"), "GTUBE is refused: {r}");
    assert!(sink.messages().is_empty());
    let r = send(node.addr, &message("hello", "just a friendly note")).await;
    assert_eq!(code(&r), 250, "{r}");
    let relayed = String::from_utf8_lossy(&sink.messages()[0].data).into_owned();
    assert!(relayed.contains("X-Spam-Checker-Version: SpamAssassin"), "{relayed}");
}

/// Raw reply packets: command byte and data.
type Packets = &'static [(u8, &'static [u8])];

/// A milter that negotiates, answers `continue` to every stage, and at the end of the message
/// sends `eom` (raw reply packets) then a final `c` (unless one of them is final).
fn eom_script(eom: Packets) -> Script {
    Script::Staged(Staged::new(move |command, _| {
        (command == b'E').then(|| {
            let mut out: Vec<u8> = eom.iter().flat_map(|(c, d)| packet(*c, d)).collect();
            if !eom.iter().any(|(c, _)| b"rtdyac".contains(c)) {
                out.extend(packet(b'c', b""));
            }
            out
        })
    }))
}

#[derive(Clone)]
pub(crate) enum Script {
    Hang,
    Garbage,
    /// Answers each command as [`Staged::answer`] says, counting connections and commands.
    Staged(std::sync::Arc<Staged>),
}

/// The reply packets a scripted milter gives to a command (its byte and data); `None`: continue.
type Answerer = dyn Fn(u8, &[u8]) -> Option<Vec<u8>> + Send + Sync;

/// A milter scripted stage by stage (`milter_live.rs`).
pub(crate) struct Staged {
    /// The reply packets to a command (its byte and data); `None`: continue.
    pub answer: Box<Answerer>,
    /// Connections accepted.
    pub connections: std::sync::atomic::AtomicUsize,
    /// Every command byte received but macros, in order.
    pub commands: std::sync::Mutex<Vec<u8>>,
}

impl Staged {
    pub(crate) fn new(answer: impl Fn(u8, &[u8]) -> Option<Vec<u8>> + Send + Sync + 'static) -> std::sync::Arc<Staged> {
        let answer = Box::new(answer);
        std::sync::Arc::new(Staged { answer, connections: Default::default(), commands: Default::default() })
    }

    pub(crate) fn connections(&self) -> usize {
        self.connections.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The command bytes received, as a string (`"OCHMRRTLLNBE"`…).
    pub(crate) fn commands(&self) -> String {
        String::from_utf8(self.commands.lock().unwrap().clone()).unwrap()
    }
}

/// One staged conversation: negotiate with every action, answer each command as scripted.
async fn staged(mut stream: tokio::net::TcpStream, script: std::sync::Arc<Staged>) {
    script.connections.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let mut input = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        while input.len() >= 5 {
            let len = u32::from_be_bytes(input[..4].try_into().unwrap()) as usize;
            if input.len() < 4 + len {
                break;
            }
            let command = input[4];
            let data = input[5..4 + len].to_vec();
            input.drain(..4 + len);
            if command != b'D' {
                script.commands.lock().unwrap().push(command);
            }
            let answer = match command {
                b'O' => packet(b'O', &[0, 0, 0, 6, 0, 0, 1, 0xff, 0, 0, 0, 0]),
                b'D' | b'A' => continue,
                b'Q' => return,
                _ => (script.answer)(command, &data).unwrap_or_else(|| packet(b'c', b"")),
            };
            if stream.write_all(&answer).await.is_err() {
                return;
            }
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => input.extend_from_slice(&buf[..n]),
        }
    }
}

pub(crate) fn packet(code: u8, data: &[u8]) -> Vec<u8> {
    let mut p = ((data.len() + 1) as u32).to_be_bytes().to_vec();
    p.push(code);
    p.extend_from_slice(data);
    p
}

pub(crate) async fn scripted_milter(script: Script) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((mut stream, _)) = listener.accept().await {
            match script.clone() {
                Script::Hang => held.push(stream),
                Script::Staged(script) => {
                    tokio::spawn(staged(stream, script));
                }
                Script::Garbage => {
                    tokio::spawn(async move {
                        let mut buf = [0u8; 64];
                        let _ = stream.read(&mut buf).await;
                        let _ = stream.write_all(b"\x00\x00\x00\x05Zjunk and more junk").await;
                    });
                }
            }
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_milter_that_hangs_or_answers_garbage_gives_its_failure_mode() {
    let sink = Sink::start(Behaviour::default()).await;
    let hang = scripted_milter(Script::Hang).await;
    let garbage = scripted_milter(Script::Garbage).await;
    let down = free_port();
    let node = |address: String, fail: &str| {
        relay_policy(&format!(r#"milter "{address}" name="m" timeout="3s" command-timeout="1s" fail="{fail}""#))
    };
    let closed = TestNode::start(&node(format!("inet:127.0.0.1:{hang}"), "closed"), Some(sink.addr)).await;
    let open = TestNode::start(&node(format!("inet:127.0.0.1:{hang}"), "open"), Some(sink.addr)).await;
    let junk = TestNode::start(&node(format!("inet:127.0.0.1:{garbage}"), "closed"), Some(sink.addr)).await;
    let absent = TestNode::start(&node(format!("inet:127.0.0.1:{down}"), "closed"), Some(sink.addr)).await;

    // The milters are first asked at MAIL FROM: their failure mode answers it.
    let mail = |addr| async move {
        let mut c = Client::connect(addr).await;
        c.reply().await;
        c.cmd("EHLO mail.sender.example").await;
        let reply = c.cmd("MAIL FROM:<alice@sender.example>").await;
        c.cmd("QUIT").await;
        reply
    };
    let started = std::time::Instant::now();
    let r = mail(closed.addr).await;
    assert!(r.starts_with("451 4.7.1 Message could not be checked (m unavailable)"), "fail closed: {r}");
    assert!(started.elapsed() < Duration::from_secs(3), "the command timeout: {:?}", started.elapsed());
    let r = send(open.addr, &message("hello", "hi")).await;
    assert_eq!(code(&r), 250, "fail open: {r}");
    assert_eq!(sink.messages().len(), 1);
    let r = mail(junk.addr).await;
    assert!(r.starts_with("451 4.7.1"), "garbage: {r}");
    let r = mail(absent.addr).await;
    assert!(r.starts_with("451 4.7.1"), "nobody listening: {r}");
    assert_eq!(sink.messages().len(), 1);
    let m = closed.metrics().await;
    assert_eq!(sample(&m, r#"mtac_filter_answers_total{filter="m",action="timeout"}"#), 1.0, "{m}");
    let m = junk.metrics().await;
    assert_eq!(sample(&m, r#"mtac_filter_answers_total{filter="m",action="error"}"#), 1.0, "{m}");
    for node in [&closed, &open, &junk, &absent] {
        assert_eq!(node.spool_files(), 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn milter_actions_the_policy_does_not_allow_are_never_a_silent_250() {
    let sink = Sink::start(Behaviour::default()).await;
    let start = |script, extra: &'static str| async move {
        let port = scripted_milter(eom_script(script)).await;
        TestNode::start(&relay_policy(&format!(r#"milter "inet:127.0.0.1:{port}" name="m" {extra}"#)), Some(sink.addr))
            .await
    };
    let custom = start(&[(b'y', b"554 5.7.1 Go away\x07 now\0")], "").await;
    let bad_custom = start(&[(b'y', b"250 2.0.0 fine\0")], "").await;
    let discard = start(&[(b'd', b"")], "").await;
    let discard_allowed = start(&[(b'd', b"")], r#"discard="accept""#).await;
    let quarantine = start(&[(b'q', b"looks odd\0")], "").await;
    let quarantine_header = start(&[(b'q', b"looks odd\0")], r#"quarantine="header""#).await;
    let change = start(&[(b'e', b"<other@sender.example>\0")], "").await;
    let add_rcpt = start(&[(b'+', b"<eve@example.test>\0")], "").await;
    let headers = start(&[(b'h', b"X-Filtered\0yes\0"), (b'i', b"\0\0\0\0X-First\0one\n\ttwo\0")], "").await;

    let r = send(custom.addr, &message("s", "b")).await;
    assert_eq!(r, "554 5.7.1 Go away now", "the milter's own reply, cleaned");
    let r = send(bad_custom.addr, &message("s", "b")).await;
    assert!(r.starts_with("550 5.7.1 Message rejected by m"), "a 2xx custom reply is no reply: {r}");
    let r = send(discard.addr, &message("s", "b")).await;
    assert!(r.starts_with("550 5.7.1 Message rejected by m (discard)"), "{r}");
    let r = send(discard_allowed.addr, &message("s", "b")).await;
    assert!(r.starts_with("250 2.0.0 Ok: discarded"), "{r}");
    let r = send(quarantine.addr, &message("s", "b")).await;
    assert!(r.starts_with("550 5.7.1 Message rejected by m (quarantine)"), "{r}");
    let r = send(change.addr, &message("s", "b")).await;
    assert!(r.starts_with("451 4.7.1"), "a sender change mtac does not make: {r}");
    let r = send(add_rcpt.addr, &message("s", "b")).await;
    assert!(r.starts_with("451 4.7.1"), "a recipient added: {r}");
    assert!(sink.messages().is_empty(), "nothing relayed so far");
    let r = send(quarantine_header.addr, &message("s", "b")).await;
    assert_eq!(code(&r), 250, "{r}");
    let r = send(headers.addr, &message("s", "b")).await;
    assert_eq!(code(&r), 250, "{r}");
    let relayed: Vec<String> = sink.messages().iter().map(|m| String::from_utf8_lossy(&m.data).into_owned()).collect();
    assert!(relayed[0].starts_with("X-Quarantine: m: looks odd\r\n"), "{}", relayed[0]);
    // libmilter's places: an insert at index 0 on top, an added field at the end of the section.
    assert!(relayed[1].starts_with("X-First: one\r\n\ttwo\r\nReceived:"), "{}", relayed[1]);
    assert!(relayed[1].ends_with("Message-ID: <m1@sender.example>\r\nX-Filtered: yes\r\n\r\nb\r\n"), "{}", relayed[1]);
    let m = change.metrics().await;
    assert_eq!(sample(&m, r#"mtac_messages_total{farm="mx",verdict="deferred",reason="milter.action"}"#), 1.0, "{m}");
}

/// An HTTP hook stand-in: the answer follows the message's Subject (`reject`, `tempfail`,
/// `header`, `hang`), and at RCPT it refuses eve; it keeps each request's JSON.
pub(crate) async fn hook_server() -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 8192];
                let (head_len, length) = loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                    let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
                    if let Some((head, _)) = text.split_once("\r\n\r\n") {
                        let length = head.split("\r\n").find_map(|l| l.strip_prefix("content-length: "));
                        break (head.len() + 4, length.unwrap().trim().parse::<usize>().unwrap());
                    }
                };
                while request.len() < head_len + length {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let json: serde_json::Value = serde_json::from_slice(&request[head_len..]).unwrap();
                let refused_rcpt = json["envelope"]["rcpt"].as_str().is_some_and(|r| r.starts_with("eve@"));
                let subject = json["headers"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                    .iter()
                    .find(|h| h[0] == "Subject")
                    .map(|h| h[1].as_str().unwrap().to_owned())
                    .unwrap_or_default();
                record.lock().unwrap().push(json);
                let body = match subject.as_str() {
                    _ if refused_rcpt => r#"{"action":"reject","reply":"550 5.7.1 The hook says no to eve"}"#,
                    "reject" => r#"{"action":"reject","reply":"550 5.7.1 The hook says no"}"#,
                    "tempfail" => r#"{"action":"tempfail"}"#,
                    "header" => r#"{"action":"modify","add-headers":[{"name":"X-Hook","value":"seen"}]}"#,
                    "hang" => {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        return;
                    }
                    _ => r#"{"action":"accept"}"#,
                };
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_hook_rejects_defers_adds_a_header_and_times_out() {
    let sink = Sink::start(Behaviour::default()).await;
    let (hook, seen) = hook_server().await;
    let node = TestNode::start(
        &relay_policy(&format!(r#"hook "http://{hook}/check" name="inhouse" timeout="2s" fail="closed""#)),
        Some(sink.addr),
    )
    .await;
    let r = send(node.addr, &message("reject", "b")).await;
    assert_eq!(r, "550 5.7.1 The hook says no");
    let r = send(node.addr, &message("tempfail", "b")).await;
    assert!(r.starts_with("451 4.7.1 Message deferred by inhouse"), "{r}");
    let started = std::time::Instant::now();
    let r = send(node.addr, &message("hang", "b")).await;
    assert!(r.starts_with("451 4.7.1 Message could not be checked (inhouse unavailable)"), "{r}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert!(sink.messages().is_empty());
    let r = send(node.addr, &message("header", "b")).await;
    assert_eq!(code(&r), 250, "{r}");
    let relayed = String::from_utf8_lossy(&sink.messages()[0].data).into_owned();
    assert!(relayed.starts_with("X-Hook: seen\r\nReceived:"), "{relayed}");
    let request = seen.lock().unwrap()[0].clone();
    assert_eq!(request["stage"], "end-of-message");
    assert_eq!(request["envelope"]["from"], "alice@sender.example");
    assert_eq!(request["envelope"]["to"][0], "bob@example.test");
    assert_eq!(request["client"]["helo"], "mail.sender.example");
    assert_eq!(request["client"]["ip"], "127.0.0.1");
    let m = node.metrics().await;
    assert_eq!(sample(&m, r#"mtac_filter_answers_total{filter="inhouse",action="reject"}"#), 1.0, "{m}");
    assert_eq!(sample(&m, r#"mtac_filter_answers_total{filter="inhouse",action="timeout"}"#), 1.0, "{m}");
    assert_eq!(node.spool_files(), 0);
}

/// A policy file `name` in `dir`: the relay farm with `fragment` (its back end never asked).
pub(crate) fn policy_file(dir: &std::path::Path, name: &str, fragment: &str) -> std::path::PathBuf {
    let policy = dir.join(name);
    let text =
        relay_policy(fragment).replace("{dir}", &dir.display().to_string()).replace("{backend}", "127.0.0.1:2525");
    std::fs::write(&policy, text).unwrap();
    policy
}

/// `mtac explain` of alice's message to bob from 192.0.2.1 through `policy`, with `more`
/// arguments: what it prints.
pub(crate) fn explain(policy: &std::path::Path, more: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_mtac"))
        .args(["explain", "--policy"])
        .arg(policy)
        .args(["--client-ip", "192.0.2.1", "--helo", "mail.sender.example", "--from", "alice@sender.example"])
        .args(["--rcpt", "bob@example.test"])
        .args(more)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    said
}

/// `mtac test` of a file with `tests` (one per line, `SESSION` standing for alice's message to
/// bob) against `policy`: whether it passed, and what it said.
pub(crate) fn policy_tests(policy: &std::path::Path, tests: &str) -> (bool, String) {
    let session =
        r#"client "192.0.2.1"; helo "mail.sender.example"; from "alice@sender.example"; rcpt "bob@example.test""#;
    let file = policy.with_extension("test.kdl");
    let text = format!("policy {:?}\n{}\n", policy.display().to_string(), tests.replace("SESSION", session));
    std::fs::write(&file, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mtac")).arg("test").arg(&file).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), said)
}

/// Explain and the node answer alike: the same milter verdict gives the same reply through
/// `mtac explain --milter` and through a node whose (scripted) milter gives it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_takes_a_milter_verdict_as_a_fact_and_answers_as_the_node() {
    let sink = Sink::start(Behaviour::default()).await;
    let cases: [(&str, Packets, &str); 3] = [
        ("reject", &[(b'r', b"")], ""),
        ("tempfail", &[(b't', b"")], ""),
        ("discard", &[(b'd', b"")], r#"discard="accept""#),
    ];
    let dir = tempfile::tempdir().unwrap();
    for (verdict, script, extra) in cases {
        let port = scripted_milter(eom_script(script)).await;
        let fragment = format!(r#"milter "inet:127.0.0.1:{port}" name="m" {extra}"#);
        let node = TestNode::start(&relay_policy(&fragment), Some(sink.addr)).await;
        let from_node = send(node.addr, &message("s", "b")).await;
        let policy = policy_file(dir.path(), &format!("{verdict}.kdl"), &fragment);
        let said = explain(&policy, &["--milter", &format!("m={verdict}")]);
        let reply = from_node.trim_end();
        assert!(said.contains(reply), "{verdict}: the node said {reply:?}, explain:\n{said}");
    }
    let policy = policy_file(dir.path(), "pending.kdl", r#"milter "inet:127.0.0.1:9" name="m""#);
    let said = explain(&policy, &[]);
    assert!(said.contains("pending  the node asks this filter here"), "{said}");

    // Test files take the verdict too, and without it no outcome is one the node vouches for.
    let (passed, said) = policy_tests(
        &policy,
        "test \"rejected\" { SESSION; milter \"m=reject\"; expect \"550 5.7.1 Message rejected by m\" stage=\"data\" rule=\"milter\" }\ntest \"unavailable\" { SESSION; milter \"m=unavailable\"; expect \"451 4.7.1\" rule=\"milter.unavailable\" }\ntest \"passed\" { SESSION; milter \"m=continue\"; expect \"accept\" }",
    );
    assert!(passed, "{said}");
    let (passed, said) = policy_tests(&policy, "test \"not given\" { SESSION; expect \"accept\" }");
    assert!(!passed && said.contains("milter \"NAME=continue\""), "{said}");
}

/// opendkim signing (the submission farm's use of it): what it signed is what mtac relays, so
/// an independent verifier (python3-dkim) accepts the relayed copy — every header field and the
/// body reached opendkim exactly as they are relayed, with simple/simple canonicalization.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opendkim_signs_and_the_relayed_message_verifies() {
    let keys = tempfile::tempdir().unwrap();
    let key = crate::dkim_sign::rsa(keys.path(), "milter.pem", 2048);
    let record = crate::dkim_sign::record(&key, "milter", "sender.example");
    let signer = configured("opendkim", &["-f", "-x"], "opendkim.conf", |dir, port| {
        format!(
            "Mode s\nRequireSafeKeys no\nDomain sender.example\nSelector milter\nKeyFile {key}\nCanonicalization simple/simple\nSocket inet:{port}@127.0.0.1\nBackground no\nSyslog no\nPidFile {}\n",
            dir.join("pid").display()
        )
    })
    .await;
    let Some(signer) = signer else { return };
    let port = signer.port;
    let sink = Sink::start(Behaviour::default()).await;
    let node = TestNode::start(
        &relay_policy(&format!(r#"milter "inet:127.0.0.1:{port}" name="opendkim-sign""#)),
        Some(sink.addr),
    )
    .await;
    let folded = "From: alice@sender.example\nTo: bob@example.test\nSubject: a subject\n  folded  over\tlines\nMessage-ID: <s1@sender.example>\n\nbody line\n\n  trailing space line  \n";
    let r = send(node.addr, folded).await;
    assert_eq!(code(&r), 250, "{r}");
    let relayed = sink.messages()[0].data.clone();
    let text = String::from_utf8_lossy(&relayed).into_owned();
    assert!(text.starts_with("DKIM-Signature: v=1; a=rsa-sha256; c=simple/simple; d=sender.example;"), "{text}");
    if let Some(verified) = crate::dkim_sign::python_verifies(&relayed, &[record]) {
        assert!(verified, "python3-dkim does not verify what opendkim signed:\n{text}");
    }
}
