//! Issue 22's operator tools, as an operator runs them: `mtac hash-password` (its hash logs a
//! user in on a real node), `mtac --version`, `mtac man-pages`.

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
