//! Issue 18: the farm's Redis behind Redis Sentinel. A primary, two replicas and three
//! sentinels of Debian's redis-server and redis-sentinel, on loopback ports of their own; the
//! primary is killed while clients keep coming. Every reply meanwhile is a 250 or a 4xx (the
//! policy's `on-failure="defer"`), never a 5xx; once a replica is promoted, the triplets that
//! had passed before the kill still pass (nothing lost) and new ones are greylisted again.
//!
//! Outside CI, a machine without redis-sentinel skips this test and says so; under `CI=true` a
//! missing one is a failure.

use super::greylist::{send, GREYLIST};
use super::support::{code, free_port, relay_policy, Behaviour, Sink, TestNode};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A daemon of ours, killed when dropped.
struct Daemon(Option<Child>);

impl Daemon {
    fn spawn(program: &str, args: &[String]) -> Option<Daemon> {
        match Command::new(program).args(args).stdout(Stdio::null()).stderr(Stdio::null()).spawn() {
            Ok(child) => Some(Daemon(Some(child))),
            Err(e) if std::env::var_os("CI").is_none() => {
                eprintln!("{program} not available ({e}): the Sentinel test is skipped (it runs in CI)");
                None
            }
            Err(e) => panic!("CI=true and {program} cannot start: {e}"),
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `redis-cli -p PORT ARGS…`'s output.
fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli").arg("-p").arg(port.to_string()).args(args).output().expect("redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Poll `check` for up to `seconds`.
async fn eventually(seconds: u64, what: &str, mut check: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(seconds);
    while !check() {
        assert!(Instant::now() < until, "{what} within {seconds} s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A redis-server's arguments: no persistence, and its directory `dir` (a full resync writes
/// an RDB file there even without `save`, and a server loads one it finds at start).
fn server(port: u16, primary: Option<u16>, dir: &std::path::Path) -> Vec<String> {
    let dir = dir.join(port.to_string());
    std::fs::create_dir_all(&dir).unwrap();
    let mut args: Vec<String> =
        ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
            .map(String::from)
            .into();
    args.extend(["--dir".to_owned(), dir.display().to_string()]);
    if let Some(primary) = primary {
        args.extend(["--replicaof".to_owned(), "127.0.0.1".to_owned(), primary.to_string()]);
    }
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue18_a_primary_failover_under_sentinel_loses_nothing_and_gives_no_5xx() {
    let dir = tempfile::tempdir().unwrap();
    let (primary_port, replica_ports) = (free_port(), [free_port(), free_port()]);
    let Some(mut primary) = Daemon::spawn("redis-server", &server(primary_port, None, dir.path())) else { return };
    let mut daemons = Vec::new();
    for port in replica_ports {
        daemons.push(Daemon::spawn("redis-server", &server(port, Some(primary_port), dir.path())).unwrap());
    }
    let sentinel_ports = [free_port(), free_port(), free_port()];
    for port in sentinel_ports {
        let conf = dir.path().join(format!("sentinel-{port}.conf"));
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndaemonize no\n\
                 sentinel monitor mtac 127.0.0.1 {primary_port} 2\n\
                 sentinel down-after-milliseconds mtac 1000\n\
                 sentinel failover-timeout mtac 5000\n\
                 sentinel parallel-syncs mtac 1\n"
            ),
        )
        .unwrap();
        let Some(sentinel) = Daemon::spawn("redis-sentinel", &[conf.display().to_string()]) else { return };
        daemons.push(sentinel);
    }
    eventually(20, "both replicas attached", || {
        cli(primary_port, &["INFO", "replication"]).contains("connected_slaves:2")
    })
    .await;
    // Each sentinel must know the two others (their hello messages come every 2 s) to agree on
    // a failover, and both replicas to promote one.
    for port in sentinel_ports {
        eventually(30, "the sentinels know each other and the replicas", || {
            cli(port, &["SENTINEL", "sentinels", "mtac"]).matches("127.0.0.1").count() >= 2
                && cli(port, &["SENTINEL", "replicas", "mtac"]).matches("127.0.0.1").count() >= 2
        })
        .await;
    }

    let sink = Sink::start(Behaviour::default()).await;
    let sentinels: Vec<String> = sentinel_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let policy = relay_policy(GREYLIST).replace(
        "spool \"{dir}/spool\"",
        &format!(
            "spool \"{{dir}}/spool\"\nstate \"redis-sentinel\" sentinels=\"{}\" service=\"mtac\" timeout=\"300ms\" on-failure=\"defer\"",
            sentinels.join(" ")
        ),
    );
    let node = TestNode::start(&policy, Some(sink.addr)).await;
    let senders: Vec<String> = (0..4).map(|i| format!("s{i}@sender.example")).collect();
    for sender in &senders {
        let (r, _) = send(node.addr, "127.0.70.1", sender, "bob@example.test").await;
        assert!(r.starts_with("451 4.7.1"), "greylisted through the sentinel-found primary: {r}");
    }
    tokio::time::sleep(Duration::from_millis(2100)).await;
    for sender in &senders {
        let (r, done) = send(node.addr, "127.0.70.1", sender, "bob@example.test").await;
        assert_eq!(code(&r), 250, "passed after the delay: {r}");
        assert_eq!(code(done.as_deref().unwrap_or("")), 250);
    }
    // What the primary acknowledged has reached both replicas before it dies.
    assert_eq!(cli(primary_port, &["WAIT", "2", "2000"]).trim(), "2");

    primary.kill();
    let killed = Instant::now();
    let (mut deferred, mut passed_again) = (0, false);
    for round in 0.. {
        assert!(killed.elapsed() < Duration::from_secs(40), "no failover within 40 s ({deferred} deferred)");
        let sender = &senders[round % senders.len()];
        let (r, done) = send(node.addr, "127.0.70.2", sender, "bob@example.test").await;
        assert!(code(&r) < 500, "a 5xx during the failover: {r}");
        if code(&r) == 250 {
            assert_eq!(code(done.as_deref().unwrap_or("")), 250);
            passed_again = true;
            break;
        }
        assert!(r.starts_with("451 4.3.0"), "the policy's on-failure=defer: {r}");
        deferred += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(passed_again);
    let promoted = cli(sentinel_ports[0], &["SENTINEL", "get-master-addr-by-name", "mtac"]);
    assert!(!promoted.contains(&primary_port.to_string()), "the sentinels promoted a replica: {promoted}");
    // Nothing lost: every triplet that had passed before the kill passes on the new primary.
    for sender in &senders {
        let (r, _) = send(node.addr, "127.0.70.3", sender, "bob@example.test").await;
        assert_eq!(code(&r), 250, "{sender}'s passed triplet survived the failover: {r}");
    }
    // And the new primary takes writes: a new triplet (from a network not auto-whitelisted by
    // the deliveries above) is greylisted, not deferred for trouble.
    let (r, _) = send(node.addr, "127.0.71.1", "new@sender.example", "bob@example.test").await;
    assert!(r.starts_with("451 4.7.1"), "{r}");
    eprintln!("failover: {deferred} deferred replies, {:?} until the first pass", killed.elapsed());
    drop(daemons);
}
