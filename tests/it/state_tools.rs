//! `mtac state` as spamdb's users expect it (issue 22): list the greylist a page at a time,
//! delete a client's triplets, whitelist a client — on the embedded store and on a real
//! redis-server — and clear errors for what does not exist.

use crate::greylist::RedisServer;
use crate::support::{code, relay_policy, Behaviour, Client, Sink, TestNode};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};

/// Greylisting with auto-whitelisting off: only an operator's whitelist lets a client skip it.
const GREYLIST: &str = r#"greylist delay="1h" retry-window="2h" lifetime="2d" network="/24" auto-whitelist=0"#;

/// One attempt of `from` → `to` from `source`: the reply to RCPT TO.
async fn attempt(addr: SocketAddr, source: &str, from: &str, to: &str) -> String {
    let mut c = Client::connect_from(addr, source).await;
    assert_eq!(code(&c.reply().await), 220);
    c.cmd("EHLO mail.sender.example").await;
    assert_eq!(code(&c.cmd(&format!("MAIL FROM:<{from}>")).await), 250);
    let rcpt = c.cmd(&format!("RCPT TO:<{to}>")).await;
    c.cmd("QUIT").await;
    rcpt
}

fn state(socket: &Path, args: &[&str]) -> (i32, String) {
    let out: Output = Command::new(env!("CARGO_BIN_EXE_mtac")).arg("state").arg(socket).args(args).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// The scenario, on whichever store `policy` names.
async fn list_delete_and_whitelist(policy: &str, store: &str) {
    let sink = Sink::start(Behaviour::default()).await;
    let node = TestNode::start(policy, Some(sink.addr)).await;
    let socket = node.dir.path().join("spool/admin.sock");
    for (from, to) in [("a*1@sender.example", "bob@example.test"), ("b@sender.example", "carol@example.test")] {
        let r = attempt(node.addr, "127.0.60.7", from, to).await;
        assert!(r.starts_with("451"), "greylisted: {r}");
    }
    assert!(attempt(node.addr, "127.0.61.7", "c@other.example", "bob@example.test").await.starts_with("451"));

    let (status, text) = state(&socket, &["--list"]);
    assert_eq!(status, 0, "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("waiting  net:")).count(), 3, "{text}");
    assert!(text.contains("waiting  net:127.0.60.0/24|a*1@sender.example|bob@example.test  first seen"), "{text}");
    // One client's entries only; the glob character in the sender matches itself.
    let (_, text) = state(&socket, &["--list", "--client", "127.0.60.9"]);
    assert_eq!(text.lines().filter(|l| l.starts_with("waiting")).count(), 2, "{text}");
    assert!(!text.contains("127.0.61.0/24"), "{text}");
    let (status, text) = state(&socket, &["--list", "--client", "127.0.99.1"]);
    assert_eq!((status, text.trim()), (0, "no entries"));
    if store == "embedded" {
        // Pages: the cursor the first page prints gives the rest, none twice.
        let (_, first) = state(&socket, &["--list", "--limit", "2"]);
        let cursor = first.lines().find_map(|l| l.strip_prefix("more: mtac state --list --after ")).unwrap();
        let (_, second) = state(&socket, &["--list", "--limit", "2", "--after", cursor]);
        assert_eq!(first.lines().filter(|l| l.starts_with("waiting")).count(), 2, "{first}");
        assert_eq!(second.lines().filter(|l| l.starts_with("waiting")).count(), 1, "{second}");
        assert!(!second.contains("more:"), "{second}");
    }

    // Delete one triplet, then the client's other; a client with none is an error (exit 1).
    let (status, text) = state(
        &socket,
        &["--delete", "--client", "127.0.60.7", "--sender", "a*1@sender.example", "--recipient", "bob@example.test"],
    );
    assert_eq!(status, 0, "{text}");
    assert!(text.contains("deleted          1 triplet(s) of net:127.0.60.0/24"), "{text}");
    let (_, text) = state(&socket, &["--delete", "--client", "127.0.60.7"]);
    assert!(text.contains("deleted          1 triplet(s)"), "{text}");
    let (status, text) = state(&socket, &["--delete", "--client", "127.0.60.7"]);
    assert_eq!(status, 1, "{text}");
    assert!(text.contains("no triplet of net:127.0.60.0/24 to delete"), "{text}");
    let (_, text) = state(&socket, &["--list"]);
    assert_eq!(text.lines().filter(|l| l.starts_with("waiting")).count(), 1, "{text}");

    // Whitelisted by hand: its mail passes greylisting at once, though auto-whitelisting is off.
    let (status, text) = state(&socket, &["--whitelist", "--client", "127.0.62.5"]);
    assert_eq!(status, 0, "{text}");
    assert!(text.contains("whitelisted      net:127.0.62.0/24: passes greylisting for 2d00h"), "{text}");
    let r = attempt(node.addr, "127.0.62.9", "new@sender.example", "bob@example.test").await;
    assert_eq!(code(&r), 250, "whitelisted: {r}");
    let (_, text) = state(&socket, &["--list", "--whitelisted"]);
    assert!(text.contains("net:127.0.62.0/24  whitelisted by an operator  forgotten in "), "{text}");

    // Usage errors exit 2 with what is wrong.
    let (status, text) = state(&socket, &["--whitelist"]);
    assert_eq!(status, 2, "{text}");
    assert!(text.contains("--client"), "{text}");
    let (status, text) = state(&socket, &["--list", "--client", "not-an-ip"]);
    assert_eq!(status, 1, "{text}");
    assert!(text.contains("`not-an-ip` is not an IP address"), "{text}");
    let (status, text) = state(Path::new("/nonexistent/admin.sock"), &["--list"]);
    assert_eq!(status, 2, "{text}");
    assert!(text.contains("/nonexistent/admin.sock"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_lists_deletes_and_whitelists_on_the_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let policy = relay_policy(GREYLIST).replace(
        "spool \"{dir}/spool\"",
        &format!("spool \"{{dir}}/spool\"\nstate \"embedded\" path=\"{}\"", dir.path().join("s.redb").display()),
    );
    list_delete_and_whitelist(&policy, "embedded").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_lists_deletes_and_whitelists_on_redis() {
    let Some(redis) = RedisServer::start().await else { return };
    let policy = relay_policy(GREYLIST).replace(
        "spool \"{dir}/spool\"",
        &format!("spool \"{{dir}}/spool\"\nstate \"redis\" url=\"{}\" timeout=\"1s\"", redis.url()),
    );
    list_delete_and_whitelist(&policy, "redis").await;
}
