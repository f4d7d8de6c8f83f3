//! Issue 22's operator tools, as an operator runs them: `mtac hash-password` (its hash logs a
//! user in on a real node), `mtac --version`, `mtac man-pages`, `mtac log-level` (on a running
//! `mtac run` process).

use crate::submission::{b64, certificate, policy, starttls};
use crate::support::{Behaviour, Sink, TestNode};
use std::io::Write as _;
use std::process::{Command, Output, Stdio};

/// `mtac ARGS` with `stdin` piped in (not a terminal: the password is read as one line).
fn mtac_with_stdin(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mtac"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A command refused before it reads stdin closes the pipe: that is no failure here.
    let _ = child.stdin.take().unwrap().write_all(stdin);
    child.wait_with_output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_password_makes_a_hash_that_logs_the_user_in_on_a_node() {
    let out = mtac_with_stdin(&["hash-password", "--user", "alice"], b"correct horse\n");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let line = text(&out.stdout);
    // `user "alice" hash="$argon2id$v=19$m=19456,t=2,p=1$…"`, ready to paste.
    assert!(line.starts_with("user \"alice\" hash=\"$argon2id$v=19$m=19456,t=2,p=1$"), "{line}");
    let hash = line.trim().trim_start_matches("user \"alice\" hash=\"").trim_end_matches('"').to_owned();
    // A fresh salt each time: the same password never gives the same string.
    let again = mtac_with_stdin(&["hash-password"], b"correct horse\n");
    assert!(text(&again.stdout).starts_with("$argon2id$") && text(&again.stdout).trim() != hash);

    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = certificate(dir.path());
    let sink = Sink::start(Behaviour::default()).await;
    let auth = format!("auth {{ {} }}", line.trim());
    let node = TestNode::start(&policy(&cert, &key, &auth, ""), Some(sink.addr)).await;
    let mut s = starttls(node.addr, &cert).await;
    s.cmd("EHLO laptop.example.org").await;
    let r = s.cmd(&format!("AUTH PLAIN {}", b64("\0alice\0correct horse"))).await;
    assert!(r.starts_with("235"), "{r}");
    let mut wrong = starttls(node.addr, &cert).await;
    wrong.cmd("EHLO laptop.example.org").await;
    let r = wrong.cmd(&format!("AUTH PLAIN {}", b64("\0alice\0correct horse\n"))).await;
    assert!(r.starts_with("535"), "the newline of stdin is not part of the password: {r}");
}

#[test]
fn hash_password_refuses_weak_costs_empty_passwords_and_bad_names() {
    for (args, stdin, says) in [
        (&["hash-password", "--memory", "4096"][..], &b"pw\n"[..], "weaker than Argon2id m=19456 t=2"),
        (&["hash-password", "--passes", "1"][..], b"pw\n", "weaker than"),
        (&["hash-password"][..], b"\n", "the password is empty"),
        (&["hash-password"][..], b"", "the password is empty"),
        (&["hash-password"][..], b"one\ntwo\n", "more than one line"),
        (&["hash-password", "--user", "al\"ice"][..], b"pw\n", "no quotes"),
    ] {
        let out = mtac_with_stdin(args, stdin);
        assert_eq!(out.status.code(), Some(2), "{args:?}: a usage error");
        assert!(text(&out.stderr).contains(says), "{args:?}: {}", text(&out.stderr));
        assert!(out.stdout.is_empty(), "no hash printed");
    }
}

#[test]
fn version_names_the_commit_build_date_and_target() {
    let out = Command::new(env!("CARGO_BIN_EXE_mtac")).arg("--version").output().unwrap();
    let version = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    let (commit, date) = (
        version.split("commit ").nth(1).and_then(|r| r.split(',').next()).unwrap_or(""),
        version.split("built ").nth(1).and_then(|r| r.split(',').next()).unwrap_or(""),
    );
    assert!(version.starts_with(&format!("mtac {} (", env!("CARGO_PKG_VERSION"))), "{version}");
    assert!(commit.len() == 12 && commit.bytes().all(|b| b.is_ascii_hexdigit()), "{version}");
    assert!(date.len() == 10 && date.as_bytes()[4] == b'-', "{version}");
    assert!(version.contains("x86_64-unknown-linux"), "{version}");
}

#[test]
fn man_pages_are_written_for_mtac_and_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mtac")).arg("man-pages").arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    for page in ["mtac", "mtac-check", "mtac-build", "mtac-run", "mtac-explain", "mtac-hash-password"] {
        let roff = std::fs::read_to_string(dir.path().join(format!("{page}.1"))).unwrap();
        assert!(roff.contains(&format!(".TH {page} 1")), "{page}: {roff}");
    }
    let run = std::fs::read_to_string(dir.path().join("mtac-run.1")).unwrap();
    assert!(run.contains("\\-\\-log\\-format"), "the options are there: {run}");
    // Into a path that cannot be a directory: a clear error, exit 2.
    let out = Command::new(env!("CARGO_BIN_EXE_mtac")).args(["man-pages", "/dev/null/x"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("/dev/null/x"), "{}", text(&out.stderr));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// One session that says hello and quits, then a moment for its closing log line.
async fn one_session(addr: std::net::SocketAddr) {
    let mut c = crate::support::Client::connect_from(addr, "127.0.0.1").await;
    c.reply().await;
    c.cmd("QUIT").await;
    drop(c);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
}

/// An `mtac run` process serving a relay farm (back end: nothing) with its admin socket in
/// `dir`: the node, its SMTP address and its socket.
async fn process_node(
    dir: &std::path::Path,
) -> (crate::support::ProcessNode, std::net::SocketAddr, std::path::PathBuf) {
    let (smtp, admin) = (free_port(), free_port());
    let socket = dir.join("admin.sock");
    let policy = dir.join("policy.kdl");
    std::fs::write(
        &policy,
        format!(
            r#"hostname "mx.test.example"
spool "{spool}"
admin "127.0.0.1:{admin}" socket="{socket}"
farm "mx" kind="inbound-mx" {{
    listen "127.0.0.1:{smtp}"
    local-domains "example.test"
    screen {{ pregreet #false; }}
    relay {{ backend "smtp://127.0.0.1:9"; }}
}}
"#,
            spool = dir.join("spool").display(),
            socket = socket.display()
        ),
    )
    .unwrap();
    let ruleset = dir.join("r.mtac");
    crate::support::build(&policy, &ruleset);
    let node = crate::support::ProcessNode::start(&ruleset, &[], dir.join("node.log"));
    let addr: std::net::SocketAddr = format!("127.0.0.1:{smtp}").parse().unwrap();
    for _ in 0..400 {
        if socket.exists() && tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    (node, addr, socket)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_level_changes_a_running_nodes_filter_over_its_socket() {
    let dir = tempfile::tempdir().unwrap();
    let (node, addr, socket) = process_node(dir.path()).await;
    let level = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_mtac"))
            .arg("log-level")
            .args(args)
            .arg("--socket")
            .arg(&socket)
            .output()
            .unwrap();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let closed = || node.log().matches("session closed").count();
    assert_eq!(level(&[]).1.trim(), "info", "RUST_LOG=info is in force");
    one_session(addr).await;
    let before = closed();
    assert!(before >= 1, "{}", node.log());

    let (code, out, _) = level(&["warn"]);
    assert_eq!((code, out.trim()), (Some(0), "warn"));
    // Log lines reach the file from the node's log thread, a few milliseconds later.
    crate::support::wait_for(|| node.log().contains("log level changed by an operator")).await;
    assert!(node.log().contains("log level changed by an operator"), "the change itself is logged");
    one_session(addr).await;
    assert_eq!(closed(), before, "at warn, no info line: {}", node.log());

    let (code, _, err) = level(&["no such=level=!"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("`no such=level=!`"), "{err}");
    assert_eq!(level(&[]).1.trim(), "warn", "a bad directive changes nothing");

    assert_eq!(level(&["info"]).0, Some(0));
    one_session(addr).await;
    assert_eq!(closed(), before + 1, "{}", node.log());
    let out = Command::new(env!("CARGO_BIN_EXE_mtac"))
        .args(["log-level", "debug", "--socket", "/nonexistent/admin.sock"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "no node there: a usage/I/O error");
    assert!(text(&out.stderr).contains("/nonexistent/admin.sock"), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_follows_one_clients_decisions_whatever_the_log_level() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, addr, socket) = process_node(dir.path()).await;
    // The log says nothing at info any more; the trace still sees every decision.
    let out =
        Command::new(env!("CARGO_BIN_EXE_mtac")).args(["log-level", "warn", "--socket"]).arg(&socket).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let trace = spawn_trace(&socket, &["--client", "127.0.0.5/32", "--lines", "2"]);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    for source in ["127.0.0.6", "127.0.0.5"] {
        let mut c = crate::support::Client::connect_from(addr, source).await;
        c.reply().await;
        c.cmd("EHLO client.example.org").await;
        c.cmd("MAIL FROM:<a@client.example.org>").await;
        let r = c.cmd("RCPT TO:<someone@elsewhere.example>").await;
        assert!(r.starts_with("554") || r.starts_with("550"), "not a relay: {r}");
        c.cmd("QUIT").await;
    }
    let out = tokio::task::spawn_blocking(move || trace.wait_with_output().unwrap()).await.unwrap();
    let lines = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{lines}{}", text(&out.stderr));
    assert_eq!(lines.lines().count(), 2, "{lines}");
    assert!(lines.lines().all(|l| l.contains("client=127.0.0.5")), "only the client asked for: {lines}");
    assert!(lines.contains("refused") && lines.contains("session closed"), "{lines}");
    assert!(!lines.contains("a@client.example.org\r"), "no raw protocol bytes");
    // A bad network is a clear error.
    let out = Command::new(env!("CARGO_BIN_EXE_mtac"))
        .args(["trace", "--client", "not-a-network", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("an address or a network"), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_dialogue_shows_commands_and_replies_but_never_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let (_node, addr, socket) = process_node(dir.path()).await;
    let mut trace = spawn_trace(&socket, &["--dialogue", "--client", "127.0.0.7"]);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let mut c = crate::support::Client::connect_from(addr, "127.0.0.7").await;
    c.reply().await;
    c.cmd("EHLO client.example.org").await;
    c.cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==").await;
    c.cmd("MAIL FROM:<a@client.example.org>").await;
    c.cmd("RCPT TO:<someone@elsewhere.example>").await;
    c.cmd("QUIT").await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let _ = trace.kill();
    let out = tokio::task::spawn_blocking(move || trace.wait_with_output().unwrap()).await.unwrap();
    let lines = text(&out.stdout);
    for said in [
        "> 220 ",
        "< EHLO client.example.org",
        "> 250-",
        "< AUTH PLAIN ***",
        "< MAIL FROM:<a@client.example.org>",
        "< RCPT TO:<someone@elsewhere.example>",
        "> 554 5.7.1",
        "< QUIT",
        "> 221 ",
    ] {
        assert!(lines.contains(said), "`{said}` in the dialogue:\n{lines}");
    }
    assert!(!lines.contains("AGFsaWNl"), "never a credential:\n{lines}");
    assert!(lines.contains("refused"), "the decision lines too:\n{lines}");
}

/// `mtac trace ARGS --socket SOCKET`, its output piped for the test to read.
fn spawn_trace(socket: &std::path::Path, args: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_mtac"))
        .arg("trace")
        .args(args)
        .arg("--socket")
        .arg(socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}
