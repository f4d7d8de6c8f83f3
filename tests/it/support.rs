//! Test support: a raw SMTP client and an mtac node started in-process on 127.0.0.1:0 (the
//! back end they relay to is `sink.rs`'s, re-exported here).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

pub use super::sink::{Behaviour, Sink};

/// A raw SMTP client.
pub struct Client {
    pub stream: BufReader<TcpStream>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        Client { stream: BufReader::new(TcpStream::connect(addr).await.unwrap()) }
    }

    /// Connect from a given loopback source address (per-IP limits).
    pub async fn connect_from(addr: SocketAddr, source: &str) -> Client {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
        Client { stream: BufReader::new(socket.connect(addr).await.unwrap()) }
    }

    /// One whole reply, lines joined with `\n`; empty on EOF.
    pub async fn reply(&mut self) -> String {
        read_reply(&mut self.stream).await
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.get_mut().write_all(bytes).await.unwrap();
    }

    pub async fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// Is the connection closed by the server (EOF within a second)?
    pub async fn closed(&mut self) -> bool {
        let mut buf = [0u8; 64];
        matches!(tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut buf)).await, Ok(Ok(0)) | Ok(Err(_)))
    }
}

/// One whole SMTP reply from any buffered stream (plain or TLS), lines joined with `\n`; empty
/// on EOF.
pub async fn read_reply<R: tokio::io::AsyncBufRead + Unpin>(stream: &mut R) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        match tokio::time::timeout(Duration::from_secs(20), stream.read_line(&mut line)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return all,
            Ok(Ok(_)) => {}
            Err(_) => panic!("no reply within 20 s; so far: {all:?}"),
        }
        let done = line.as_bytes().get(3) != Some(&b'-');
        all.push_str(line.trim_end());
        if done {
            return all;
        }
        all.push('\n');
    }
}

/// Poll `check` every 50 ms for up to 5 s (the caller asserts afterwards, with its context).
pub async fn wait_for(mut check: impl FnMut() -> bool) {
    for _ in 0..100 {
        if check() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

pub fn code(reply: &str) -> u16 {
    reply.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// Compile `policy` (`{backend}` and `{dir}` filled in) into `dir/candidate.ruleset`, written
/// whole and renamed into place as a push does; its path.
fn write_candidate(dir: &std::path::Path, policy: &str, backend: Option<SocketAddr>) -> std::path::PathBuf {
    let text = policy
        .replace("{backend}", &backend.map(|b| b.to_string()).unwrap_or_default())
        .replace("{dir}", dir.to_str().unwrap());
    let source = dir.join("candidate.kdl");
    std::fs::write(&source, greet_at_once(&text)).unwrap();
    let compiled = mtac_compiler::compile_path(&source);
    let bytes = compiled.output.unwrap_or_else(|| panic!("candidate: {:?}", compiled.diagnostics.list)).bytes;
    let (temp, file) = (dir.join("candidate.ruleset.tmp"), dir.join("candidate.ruleset"));
    std::fs::write(&temp, bytes).unwrap();
    std::fs::rename(temp, &file).unwrap();
    file
}

/// Two session threads, as on a 2-CPU node, busy past the node's default share of a CPU: a
/// test's light load stays on the first.
const TWO_THREADS: (usize, f64) = (2, mtac_runtime::BUSY_SHARE);

/// An mtac node running in-process.
pub struct TestNode {
    pub addr: SocketAddr,
    /// The admin listener (metrics, health, status).
    pub admin: SocketAddr,
    pub shared: Arc<mtac_runtime::shared::Shared>,
    pub dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestNode {
    /// Start a node for `policy`, where `{backend}` is replaced by the sink's address, `{dir}` by
    /// a temporary directory (spool, maildir). The first listener should be "127.0.0.1:0".
    pub async fn start(policy: &str, backend: Option<SocketAddr>) -> TestNode {
        TestNode::start_with(policy, backend, mtac_compiler::Options::default()).await
    }

    /// [`TestNode::start`], compiling (and reloading) with `options`.
    pub async fn start_with(policy: &str, backend: Option<SocketAddr>, options: mtac_compiler::Options) -> TestNode {
        TestNode::start_configured(policy, backend, options, Duration::from_secs(5), None, TWO_THREADS).await
    }

    /// [`TestNode::start`] with a shadow ruleset compiled from `candidate` (same placeholders),
    /// written to `{dir}/candidate.ruleset` and watched there (`mtac run --shadow`).
    pub async fn start_with_candidate(policy: &str, candidate: &str, backend: Option<SocketAddr>) -> TestNode {
        let options = mtac_compiler::Options::default();
        TestNode::start_configured(policy, backend, options, Duration::from_secs(5), Some(candidate), TWO_THREADS).await
    }

    /// Compile `policy` (placeholders filled as at start) and push it as this node's shadow
    /// ruleset: the node's watcher loads it.
    pub fn push_candidate(&self, policy: &str, backend: Option<SocketAddr>) {
        write_candidate(self.dir.path(), policy, backend);
    }

    /// [`TestNode::start`] with a grace period of its own for the drain at stop (5 s otherwise).
    pub async fn start_with_grace(policy: &str, backend: Option<SocketAddr>, grace: Duration) -> TestNode {
        TestNode::start_configured(policy, backend, mtac_compiler::Options::default(), grace, None, TWO_THREADS).await
    }

    /// [`TestNode::start`] with `threads` session threads, each busy past `busy_share` of a CPU
    /// (0.9 otherwise): a low share lets a test's load make the first thread busy even on a
    /// machine whose other tests hold the CPUs.
    pub async fn start_with_threads(
        policy: &str,
        backend: Option<SocketAddr>,
        threads: usize,
        busy_share: f64,
    ) -> TestNode {
        let options = mtac_compiler::Options::default();
        TestNode::start_configured(policy, backend, options, Duration::from_secs(5), None, (threads, busy_share)).await
    }

    async fn start_configured(
        policy: &str,
        backend: Option<SocketAddr>,
        options: mtac_compiler::Options,
        grace: Duration,
        candidate_policy: Option<&str>,
        (session_threads, busy_share): (usize, f64),
    ) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let text = policy
            .replace("{backend}", &backend.map(|b| b.to_string()).unwrap_or_default())
            .replace("{dir}", dir.path().to_str().unwrap());
        let text = greet_at_once(&text);
        let path = dir.path().join("policy.kdl");
        std::fs::write(&path, &text).unwrap();
        let p = path.clone();
        let loader: mtac_runtime::Loader = Arc::new(move || {
            let c = mtac_compiler::compile_path_with(&p, &options);
            c.output
                .map(|o| o.ruleset)
                .ok_or_else(|| c.diagnostics.list.iter().map(|d| d.message.clone()).collect::<Vec<_>>().join("; "))
        });
        let node = mtac_runtime::Node::new(loader.clone()).unwrap_or_else(|e| panic!("node: {e}\n{text}"));
        // Every test node has an admin listener, on a port of its own.
        let admin = mtac_runtime::AdminAddress::At("127.0.0.1:0".parse().unwrap());
        let listeners = node.bind(admin).await.unwrap();
        let addr = listeners.smtp[0].0.local_addr().unwrap();
        let admin_addr = listeners.admin.as_ref().unwrap().local_addr().unwrap();
        let shared = node.shared.clone();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let candidate = candidate_policy.map(|candidate| {
            let file = write_candidate(dir.path(), candidate, backend);
            let f = file.clone();
            let loader: mtac_runtime::Loader =
                Arc::new(move || mtac_ruleset::Ruleset::open_sealed(&f).map_err(|e| e.to_string()));
            mtac_runtime::CandidateConfig { loader, watch: Some(file) }
        });
        let config = mtac_runtime::RunConfig {
            loader,
            watch: Some(path),
            grace,
            admin,
            candidate,
            session_threads,
            busy_share,
            thread_name: "test-session".to_owned(),
        };
        let task = tokio::spawn(async move {
            let _ = node
                .run_until(listeners, config, async move {
                    let _ = stop_rx.await;
                })
                .await;
        });
        // Once it greets, its accept loops run, and its file watcher was set up before them.
        let mut probe = Client::connect(addr).await;
        let _ = probe.reply().await;
        drop(probe);
        // …and wait until the probe's session has ended, so it holds no connection slot.
        for _ in 0..200 {
            if shared.connections_open() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        TestNode { addr, admin: admin_addr, shared, dir, stop: Some(stop_tx), task: Some(task) }
    }

    pub fn spool_files(&self) -> usize {
        // The admin socket lives there too; it is no spool file.
        std::fs::read_dir(self.dir.path().join("spool"))
            .map(|d| d.flatten().filter(|e| e.file_name() != "admin.sock").count())
            .unwrap_or(0)
    }

    /// Stop gracefully and wait until the node has finished.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
        }
        // Connection tasks of the admin listener end a moment after their client hung up; once
        // they have, this handle is the last one and dropping it closes the state store.
        for _ in 0..250 {
            if Arc::strong_count(&self.shared) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Test nodes greet at once: an inbound farm of a policy that writes no `screen` gets
/// `screen { pregreet #false }` (unless it names `pregreet` itself), so the tests of other things do not wait out the pregreet test
/// (2 s on first contact by default). tests/it/screening.rs writes its own `screen` and tests
/// the default.
fn greet_at_once(policy: &str) -> String {
    if policy.contains("screen") || policy.contains("pregreet") {
        return policy.to_owned();
    }
    policy.replace("kind=\"inbound-mx\" {", "kind=\"inbound-mx\" {\n    screen { pregreet #false; }")
}

/// A relay policy for tests: `{backend}` and `{dir}` are filled in by [`TestNode::start`].
pub fn relay_policy(extra: &str) -> String {
    relay_policy_with("", extra)
}

/// [`relay_policy`] with `attributes` on the `backend` line (`tls="required" ca="…"`).
pub fn relay_policy_with(attributes: &str, extra: &str) -> String {
    format!(
        r#"
hostname "mx.test.example"
spool "{{dir}}/spool"
farm "mx" kind="inbound-mx" {{
    listen "127.0.0.1:0"
    local-domains "example.test"
    relay {{
        backend "smtp://{{backend}}" {attributes}
    }}
    {extra}
}}
"#
    )
}

/// The value of one sample in an OpenMetrics exposition (0 when the series is absent).
pub fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// `mtac_session_thread_connections_total` of threads 0 to `threads - 1`, from a scrape.
pub fn thread_connections(metrics: &str, threads: usize) -> Vec<f64> {
    (0..threads).map(|t| sample(metrics, &format!("mtac_session_thread_connections_total{{thread=\"{t}\"}}"))).collect()
}

impl TestNode {
    /// A scrape of the node's /metrics.
    pub async fn metrics(&self) -> String {
        let (status, body) =
            mtac_runtime::admin::get(&self.admin.to_string(), "/metrics", Duration::from_secs(5)).await.unwrap();
        assert_eq!(status, 200);
        body
    }
}

/// A loopback port free a moment ago (for policies that must name their port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `mtac build POLICY -o OUT` with the binary under test; panics with its diagnostics on failure.
pub fn build(policy: &std::path::Path, out: &std::path::Path) {
    let built = std::process::Command::new(env!("CARGO_BIN_EXE_mtac"))
        .arg("build")
        .arg(policy)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
}

/// `mtac run` as a child process (the binary under test), its log in a file; killed when dropped.
pub struct ProcessNode {
    pub child: std::process::Child,
    log: std::path::PathBuf,
}

impl ProcessNode {
    /// `mtac run ARGS… RULESET` with RUST_LOG=info, stderr to `log`.
    pub fn start(ruleset: &std::path::Path, args: &[&str], log: std::path::PathBuf) -> ProcessNode {
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_mtac"))
            .arg("run")
            .args(args)
            .arg(ruleset)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        ProcessNode { child, log }
    }

    /// A node started by the test itself (its own environment, no log file), killed when dropped.
    pub fn adopt(child: std::process::Child) -> ProcessNode {
        ProcessNode { child, log: std::path::PathBuf::new() }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Send a signal (`-TERM`, `-HUP`, `-KILL`) with kill(1).
    pub fn signal(&self, sig: &str) {
        std::process::Command::new("kill").args([sig, &self.child.id().to_string()]).status().unwrap();
    }
}

impl Drop for ProcessNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[path = "../common/slapd.rs"]
mod slapd;
pub use slapd::Slapd;

/// Start a daemon a test needs (`command`, output discarded). `None` — the test is skipped — only
/// outside CI when `what` is not installed; under `CI=true` a missing tool is a failure.
pub fn spawn_required(what: &str, command: &mut std::process::Command) -> Option<std::process::Child> {
    use std::process::Stdio;
    match command.stdout(Stdio::null()).stderr(Stdio::null()).spawn() {
        Ok(child) => Some(child),
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("{what} not available ({e}): the tests that need it are skipped (they run in CI)");
            None
        }
        Err(e) => panic!("CI=true and {what} cannot start: {e}"),
    }
}
