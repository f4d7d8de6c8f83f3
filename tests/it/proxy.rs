//! A node behind a load balancer (issue 18): Debian's haproxy, started by the test on loopback
//! ports, forwards clients bound to several 127.x addresses to a `listen … proxy-from=`
//! listener with `send-proxy` (v1) and `send-proxy-v2`. The node must judge each client by its
//! own address — the access list, the per-IP connection limit, the Received header — and close
//! unanswered what does not come from the balancer with a valid header.
//!
//! On a laptop without haproxy the balancer tests say so and pass; under `CI=true` a missing
//! haproxy is a failure.

use crate::support::{code, free_port, sample, spawn_required, Behaviour, Client, Sink, TestNode};
use std::net::SocketAddr;
use std::process::{Child, Command};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// haproxy in the foreground with a generated configuration: two frontends on loopback, one
/// per PROXY protocol version, both to the node's PROXY listener. Killed on drop.
struct Haproxy {
    child: Child,
    v1: SocketAddr,
    v2: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    /// `None` (test skipped) only outside CI when haproxy is not installed.
    async fn start(node: SocketAddr) -> Option<Haproxy> {
        let dir = tempfile::tempdir().unwrap();
        let v1: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let v2: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = format!(
            "global\n    maxconn 200\n\
             defaults\n    mode tcp\n    timeout connect 5s\n    timeout client 60s\n    timeout server 60s\n\
             frontend smtp_v1\n    bind {v1}\n    default_backend node_v1\n\
             backend node_v1\n    server node {node} send-proxy\n\
             frontend smtp_v2\n    bind {v2}\n    default_backend node_v2\n\
             backend node_v2\n    server node {node} send-proxy-v2\n"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let binary = ["/usr/sbin/haproxy", "haproxy"].into_iter().find(|b| std::path::Path::new(b).exists());
        let mut command = Command::new(binary.unwrap_or("haproxy"));
        let child = spawn_required("haproxy", command.args(["-db", "-f"]).arg(&path))?;
        let haproxy = Haproxy { child, v1, v2, _dir: dir };
        for _ in 0..200 {
            let v1_up = tokio::net::TcpStream::connect(v1).await.is_ok();
            if v1_up && tokio::net::TcpStream::connect(v2).await.is_ok() {
                return Some(haproxy);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("haproxy did not listen on {v1} and {v2}");
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node whose first listener is plain (the test harness probes it) and whose second, on
/// `proxy`, takes PROXY headers from 127.0.0.1 only. It refuses 127.0.0.3 at connect and
/// allows two connections per client address; `extra` is more of the farm.
async fn node_behind_balancer(sink: &Sink, proxy: SocketAddr, extra: &str) -> TestNode {
    let policy = format!(
        r#"
hostname "mx.test.example"
spool "{{dir}}/spool"
farm "mx" kind="inbound-mx" {{
    listen "127.0.0.1:0"
    listen "{proxy}" proxy-from="127.0.0.1/32"
    local-domains "example.test"
    access stage="connect" {{
        reject "127.0.0.3" reply="554 5.7.1 Listed here"
    }}
    limits {{
        connections-per-ip 2
    }}
    relay {{
        backend "smtp://{{backend}}"
    }}
    {extra}
}}
"#
    );
    TestNode::start(&policy, Some(sink.addr)).await
}

fn refused(metrics: &str, reason: &str) -> f64 {
    sample(metrics, &format!("mtac_connections_refused_total{{farm=\"mx\",reason=\"{reason}\"}}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_haproxy_each_client_is_judged_by_its_own_address_with_v1_and_v2() {
    let sink = Sink::start(Behaviour::default()).await;
    let proxy: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let node = node_behind_balancer(&sink, proxy, "").await;
    let Some(haproxy) = Haproxy::start(proxy).await else { return };

    for (version, front) in [("v1", haproxy.v1), ("v2", haproxy.v2)] {
        // The access list refuses 127.0.0.3 — not the balancer, whose address every
        // connection comes from.
        let mut listed = Client::connect_from(front, "127.0.0.3").await;
        let greeting = listed.reply().await;
        assert_eq!(code(&greeting), 554, "{version}: {greeting}");
        assert!(greeting.contains("Listed here"), "{version}: {greeting}");

        // The per-IP limit counts real clients: two from 127.0.0.2, a third refused, while
        // 127.0.0.4 still gets in (one balancer address would have been full).
        let mut first = Client::connect_from(front, "127.0.0.2").await;
        let mut second = Client::connect_from(front, "127.0.0.2").await;
        assert_eq!(code(&first.reply().await), 220, "{version}");
        assert_eq!(code(&second.reply().await), 220, "{version}");
        let mut third = Client::connect_from(front, "127.0.0.2").await;
        let reply = third.reply().await;
        assert_eq!(code(&reply), 421, "{version}: the third connection of 127.0.0.2: {reply}");
        let mut other = Client::connect_from(front, "127.0.0.4").await;
        assert_eq!(code(&other.reply().await), 220, "{version}: another client is not affected");

        // A message from 127.0.0.2 carries its address in the Received header.
        assert_eq!(code(&first.cmd("EHLO client.example").await), 250);
        assert_eq!(code(&first.cmd("MAIL FROM:<a@example.org>").await), 250);
        assert_eq!(code(&first.cmd("RCPT TO:<user@example.test>").await), 250);
        assert_eq!(code(&first.cmd("DATA").await), 354);
        let reply = first.cmd(&format!("Subject: via {version}\r\n\r\nhello\r\n.")).await;
        assert_eq!(code(&reply), 250, "{version}: {reply}");
        let data = String::from_utf8_lossy(&sink.messages.lock().unwrap().last().unwrap().data).into_owned();
        let received = data.lines().find(|line| line.starts_with("Received:")).unwrap_or_default();
        assert!(received.contains("[127.0.0.2]"), "{version}: {received}");
        drop((first, second, third, other, listed));
        // Every slot is given back when the sessions end.
        for _ in 0..200 {
            if node.shared.connections_open() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let metrics = node.metrics().await;
    assert_eq!(refused(&metrics, "limit"), 2.0, "one per version");
    assert_eq!(sample(&metrics, "mtac_connections_active"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_listener_closes_without_a_greeting_what_does_not_come_from_its_balancer_with_a_header() {
    let sink = Sink::start(Behaviour::default()).await;
    let proxy: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let node = node_behind_balancer(&sink, proxy, "").await;

    // From the balancer's address, but no header: the node waits a moment, then closes.
    let mut silent = Client::connect_from(proxy, "127.0.0.1").await;
    assert!(silent.closed().await, "a connection without a header is closed without a greeting");

    // From the balancer's address, speaking SMTP instead of a header.
    let mut direct = Client::connect_from(proxy, "127.0.0.1").await;
    direct.send(b"EHLO client.example\r\n").await;
    assert!(direct.closed().await, "SMTP instead of a header is closed without a reply");

    // A valid header from outside proxy-from: a client posing as its own balancer.
    let mut posing = Client::connect_from(proxy, "127.0.0.9").await;
    posing.send(b"PROXY TCP4 192.0.2.7 127.0.0.1 50000 25\r\n").await;
    assert!(posing.closed().await, "a header from outside proxy-from is refused");

    // A malformed v2 header (a TLV running past the header's end).
    let mut bad = Client::connect_from(proxy, "127.0.0.1").await;
    let mut header = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x10".to_vec();
    header.extend_from_slice(&[192, 0, 2, 7, 127, 0, 0, 1, 0xC3, 0x50, 0, 25, 0x01, 0x00, 0x09, b'x']);
    bad.send(&header).await;
    assert!(bad.closed().await, "a malformed v2 header is refused");

    // A v2 LOCAL header (a balancer's health check) is served, as the balancer itself.
    let mut check = Client::connect_from(proxy, "127.0.0.1").await;
    check.send(b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00").await;
    assert_eq!(code(&check.reply().await), 220, "a health check gets the greeting");
    check.stream.get_mut().shutdown().await.unwrap();

    let metrics = node.metrics().await;
    assert_eq!(refused(&metrics, "proxy-missing"), 1.0, "{metrics}");
    assert_eq!(refused(&metrics, "proxy-header"), 2.0);
    assert_eq!(refused(&metrics, "proxy-source"), 1.0);
}

/// A ban earned behind the balancer holds the client that earned it, at accept, and nobody else
/// who comes through the same balancer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_haproxy_a_ban_holds_the_real_client_not_the_balancer() {
    let sink = Sink::start(Behaviour::default()).await;
    let proxy: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let node = node_behind_balancer(&sink, proxy, r#"ban after="access" duration="10m" network="/32""#).await;
    let Some(haproxy) = Haproxy::start(proxy).await else { return };

    let mut listed = Client::connect_from(haproxy.v2, "127.0.0.3").await;
    let greeting = listed.reply().await;
    assert_eq!(code(&greeting), 554, "{greeting}");
    drop(listed);
    let mut again = Client::connect_from(haproxy.v1, "127.0.0.3").await;
    let reply = again.reply().await;
    assert!(reply.starts_with("521 5.3.2"), "127.0.0.3 is banned, through either frontend: {reply}");
    let mut neighbour = Client::connect_from(haproxy.v2, "127.0.0.2").await;
    let reply = neighbour.reply().await;
    assert_eq!(code(&reply), 220, "another client of the same balancer is not: {reply}");
    let metrics = node.metrics().await;
    assert_eq!(sample(&metrics, "mtac_bans_total"), 1.0, "{metrics}");
    assert_eq!(refused(&metrics, "ban"), 1.0);
}
