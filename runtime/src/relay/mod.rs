//! The no-queue relay: mtac as an SMTP/LMTP client of its back ends, while its own client waits.
//!
//! A transaction opens (or takes from a small pool) a connection at the first recipient the
//! policy accepts, replays MAIL FROM, forwards each RCPT so the back end's own verdict reaches
//! the client (MAIL FROM and the first RCPT in one write to a back end that offers PIPELINING,
//! RFC 2920: one round trip fewer per message), and after DATA streams the spooled message, dot-stuffed, in large writes with
//! TCP_NODELAY set (Haraka loses ~40 ms per message to Nagle on exactly this socket).
//!
//! Back ends are tried in the policy's order: a connection that fails to open or greet moves on
//! to the next one (failover). A pooled connection that turns out dead is replaced once by a fresh
//! one; a reply is never retried, so a recipient is never offered twice in one transaction.
//!
//! Each back end's `tls=` is carried out right after its EHLO/LHLO (`tls.rs`): STARTTLS, a new
//! EHLO/LHLO on the encrypted channel, and only then MAIL FROM.
//!
//! **Invariant:** mtac answers 250 to DATA only after the back end answered 250 (SMTP) or every
//! recipient got 250 (LMTP). Everything else becomes a 4xx or the back end's own 5xx.
//!
//! **Invariant:** a back end with `tls="required"` is never sent a command after EHLO/LHLO in
//! clear text: no STARTTLS offered, a refused STARTTLS, a failed handshake or verification all
//! skip it, and with no back end left the client gets `451 4.4.0`.

mod send;
mod tls;

use crate::relayed::Relayed;
use crate::smtp::{EnhancedCode, Reply};
use mtac_ruleset::model::{Backend, BackendProtocol};
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};
pub use tls::AnyCertificate;
use tls::{BackendStream, Starttls};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Pooled connections older than this are closed rather than reused (back ends time idle
/// clients out; Postfix after 300 s).
const POOL_IDLE: Duration = Duration::from_secs(30);
/// Idle connections kept per back end (all session threads together) once they have waited
/// [`POOL_SPARE`]: beyond it, a returned connection closes the pool's stale ones, or itself.
const POOL_SIZE: usize = 64;
/// A connection back in the pool this recently counts as in use for [`POOL_SIZE`]: at 200
/// sessions about 100 back-end connections are busy at once, and a cap on all idle ones closed
/// a connection that the next session reopened moments later (9% of the messages paid a new
/// connection and EHLO at 200 sessions, none at 50; BENCHMARKS.md, "What each change of issue
/// 21 bought").
const POOL_SPARE: Duration = Duration::from_secs(1);
/// Idle connections per back end however recently used: a bound when the farm's connection
/// limit is large.
const POOL_MAX: usize = 1024;
/// A back-end reply longer than this is a protocol error.
const MAX_REPLY: usize = 16 * 1024;
/// An open transaction idle for this long gets a NOOP (while the client uploads its message).
const KEEPALIVE: Duration = Duration::from_secs(30);

/// Why a back-end exchange failed before a reply could be relayed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("no back end reachable: {0}")]
    Unreachable(String),
    #[error("back end timed out")]
    Timeout,
    #[error("back end connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("back end protocol error: {0}")]
    Protocol(String),
    /// `tls="required"` could not be met (no STARTTLS, a failed handshake or verification), on
    /// every back end tried.
    #[error("TLS to the back end failed: {0}")]
    Tls(String),
}

impl RelayError {
    /// The reply the client gets: always temporary, so the sender keeps the message and retries.
    pub fn reply(&self) -> Reply {
        let (detail, text) = match self {
            RelayError::Unreachable(_) => (1, "Back end unavailable, try again later"),
            RelayError::Timeout => (2, "Back end timed out, try again later"),
            RelayError::Io(_) => (2, "Back end connection lost, try again later"),
            RelayError::Protocol(_) => (0, "Back end protocol error, try again later"),
            RelayError::Tls(_) => (0, "Back end unavailable: TLS to it failed, try again later"),
        };
        Reply::new(451, EnhancedCode::new(4, 4, detail), text).unwrap_or_else(|_| Reply::local_error())
    }
}

/// One reply from a back end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendReply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl BackendReply {
    fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// The back end's reply, passed on to the client (text sanitised, enhanced code kept). A 421
    /// closes the back end's channel, not the client's: it becomes a 451.
    pub fn to_client(&self) -> Reply {
        let joined = self.lines.join(" ");
        let (enhanced, text) = split_enhanced(&joined);
        let code = if self.code == 421 { 451 } else { self.code };
        Reply::new(code, enhanced, text)
            .or_else(|_| Reply::new(code, None, text))
            .unwrap_or_else(|_| Reply::local_error())
    }

    /// After DATA, a temporary failure of the back end is a 451 (RFC 5321's "local error"), with
    /// the back end's text so the sender's logs say why.
    pub fn to_client_after_data(&self) -> Reply {
        if (400..500).contains(&self.code) {
            let joined = self.lines.join(" ");
            let (enhanced, text) = split_enhanced(&joined);
            let enhanced = enhanced.filter(|e| e.class() == 4).or(EnhancedCode::new(4, 4, 0));
            return Reply::new(451, enhanced, &format!("Back end: {text}")).unwrap_or_else(|_| Reply::local_error());
        }
        self.to_client()
    }
}

fn split_enhanced(text: &str) -> (Option<EnhancedCode>, &str) {
    let (first, rest) = text.split_once(' ').unwrap_or((text, ""));
    let mut parts = first.split('.').map(|p| p.parse::<u16>().ok());
    match (parts.next().flatten(), parts.next().flatten(), parts.next().flatten(), parts.next()) {
        (Some(c), Some(s), Some(d), None) => match u8::try_from(c).ok().and_then(|c| EnhancedCode::new(c, s, d)) {
            Some(e) => (Some(e), rest),
            None => (None, text),
        },
        _ => (None, text),
    }
}

/// What the back end said it supports (EHLO/LHLO keywords).
#[derive(Debug, Clone, Copy, Default)]
struct Capabilities {
    smtputf8: bool,
    eight_bit: bool,
    size: bool,
    starttls: bool,
    chunking: bool,
    pipelining: bool,
}

impl Capabilities {
    /// The keywords of an EHLO/LHLO reply (its first line is the greeting).
    fn of(reply: &BackendReply) -> Capabilities {
        let mut caps = Capabilities::default();
        for line in reply.lines.iter().skip(1) {
            let keyword = line.split_whitespace().next().unwrap_or("").to_ascii_uppercase();
            match keyword.as_str() {
                "SMTPUTF8" => caps.smtputf8 = true,
                "8BITMIME" => caps.eight_bit = true,
                "SIZE" => caps.size = true,
                "STARTTLS" => caps.starttls = true,
                "CHUNKING" => caps.chunking = true,
                "PIPELINING" => caps.pipelining = true,
                _ => {}
            }
        }
        caps
    }
}

/// An open, greeted back-end connection.
pub struct Connection {
    stream: BackendStream,
    buf: Vec<u8>,
    backend: usize,
    /// The session thread that opened it, whose runtime reports its readiness.
    home: usize,
    protocol: BackendProtocol,
    caps: Capabilities,
    last_used: Instant,
}

impl Connection {
    async fn write(&mut self, bytes: &[u8], timeout: Duration) -> Result<(), RelayError> {
        // The flush pushes rustls' buffered records out (a no-op on plain TCP).
        let write = async {
            self.stream.write_all(bytes).await?;
            self.stream.flush().await
        };
        tokio::time::timeout(timeout, write).await.map_err(|_| RelayError::Timeout)??;
        Ok(())
    }

    /// Read one complete (possibly multi-line) reply.
    async fn reply(&mut self, timeout: Duration) -> Result<BackendReply, RelayError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut lines = Vec::new();
        loop {
            while let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                // Parsed in place: one allocation per line, its text.
                let mut raw = self.buf.get(..end).unwrap_or(&[]);
                while let Some(trimmed) = raw.strip_suffix(b"\r") {
                    raw = trimmed;
                }
                let code = raw
                    .get(..3)
                    .and_then(|c| std::str::from_utf8(c).ok())
                    .and_then(|c| c.parse::<u16>().ok())
                    .filter(|c| (200..600).contains(c));
                let Some(code) = code else {
                    return Err(RelayError::Protocol(format!(
                        "malformed reply line {:?}",
                        String::from_utf8_lossy(raw)
                    )));
                };
                let last = raw.get(3) != Some(&b'-');
                lines.push(String::from_utf8_lossy(raw.get(4..).unwrap_or(&[])).into_owned());
                self.buf.drain(..=end);
                if last {
                    return Ok(BackendReply { code, lines });
                }
                if lines.len() > 100 {
                    return Err(RelayError::Protocol("reply too long".to_owned()));
                }
            }
            if self.buf.len() > MAX_REPLY {
                return Err(RelayError::Protocol("reply line too long".to_owned()));
            }
            if !lines.is_empty() {
                // The rest of a reply whose lines come in separate writes (see `mail_and_rcpt`).
                self.stream.ack_now();
            }
            self.buf.reserve(1024);
            let n = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.buf))
                .await
                .map_err(|_| RelayError::Timeout)??;
            if n == 0 {
                return Err(RelayError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// Send MAIL FROM and RCPT TO in one write and read both replies (RFC 2920: the back end
    /// offered PIPELINING). Each reply is read even when the first refuses, so the
    /// connection stays in step.
    async fn mail_and_rcpt(
        &mut self,
        mail: &str,
        rcpt: &str,
        timeout: Duration,
    ) -> Result<(BackendReply, Result<BackendReply, RelayError>), RelayError> {
        let bytes = format!("{mail}\r\nRCPT TO:<{rcpt}>\r\n");
        self.write(bytes.as_bytes(), timeout).await?;
        let mail = self.reply(timeout).await?;
        if !self.buf.contains(&b'\n') {
            // The RCPT's reply did not come with MAIL's: the back end writes each reply of a
            // group on its own, and with Nagle on its side the second waits for our ACK of the
            // first, which Linux would delay by 40 ms on a pooled connection (the test sink
            // does this: 92 messages/s in benches/relay_tls.rs). Postfix and smtp-sink answer
            // a group in one write and never get here.
            self.stream.ack_now();
        }
        let rcpt = self.reply(timeout).await;
        self.last_used = Instant::now();
        Ok((mail, rcpt))
    }

    async fn command(&mut self, line: &str, timeout: Duration) -> Result<BackendReply, RelayError> {
        let mut bytes = Vec::with_capacity(line.len() + 2);
        bytes.extend_from_slice(line.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        self.write(&bytes, timeout).await?;
        let reply = self.reply(timeout).await;
        self.last_used = Instant::now();
        reply
    }

    /// EHLO/LHLO, and the capabilities it announces.
    async fn hello(&mut self, hostname: &str, timeout: Duration) -> Result<(), RelayError> {
        let hello = match self.protocol {
            BackendProtocol::Smtp => "EHLO",
            BackendProtocol::Lmtp => "LHLO",
        };
        let reply = self.command(&format!("{hello} {hostname}"), timeout).await?;
        if reply.code != 250 {
            return Err(RelayError::Protocol(format!("{hello} answered {}", reply.code)));
        }
        self.caps = Capabilities::of(&reply);
        Ok(())
    }

    /// Carry out the back end's `tls=` after the first EHLO/LHLO: STARTTLS, the handshake and
    /// a new EHLO/LHLO whose capabilities replace the clear-text ones (RFC 3207 §4.2).
    async fn secure(&mut self, starttls: &Starttls, hostname: &str, timeout: Duration) -> Result<(), RelayError> {
        let (connector, name, required) = match starttls {
            Starttls::Off => return Ok(()),
            Starttls::Opportunistic { .. } if !self.caps.starttls => return Ok(()),
            Starttls::Required { .. } if !self.caps.starttls => {
                return Err(RelayError::Tls("the back end does not offer STARTTLS".to_owned()))
            }
            Starttls::Opportunistic { connector, name } => (connector, name, false),
            Starttls::Required { connector, name } => (connector, name, true),
        };
        let tls_error = |why: String| if required { RelayError::Tls(why) } else { RelayError::Protocol(why) };
        let reply = self.command("STARTTLS", timeout).await?;
        if reply.code != 220 {
            return Err(tls_error(format!("STARTTLS answered {}", reply.code)));
        }
        // Bytes after the 220 came before the handshake: they cannot be trusted as coming
        // from the encrypted peer (the CVE-2011-0411 class, client side).
        if !self.buf.is_empty() {
            return Err(tls_error("data pipelined behind the 220 to STARTTLS".to_owned()));
        }
        tokio::time::timeout(timeout, self.stream.upgrade(connector, name.clone()))
            .await
            .map_err(|_| RelayError::Timeout)?
            .map_err(|e| tls_error(format!("handshake: {e}")))?;
        self.hello(hostname, timeout).await
    }
}

/// The envelope replayed to the back end (borrowed from the session's transaction).
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    pub sender: &'a str,
    pub size: Option<u64>,
    pub eight_bit: bool,
    pub smtputf8: bool,
}

/// Whether one more connection may wait in `pools` (one back end's, per thread) at `now`: below
/// [`POOL_SIZE`] it may; at or above, connections idle longer than [`POOL_SPARE`] are closed,
/// and those left were in use a moment ago (the back end served that many at once), so it may
/// wait beside them up to [`POOL_MAX`].
fn make_room<T>(pools: &mut [VecDeque<T>], now: Instant, last_used: impl Fn(&T) -> Instant) -> bool {
    let waiting: usize = pools.iter().map(VecDeque::len).sum();
    if waiting < POOL_SIZE {
        return true;
    }
    let mut closed = 0;
    for pool in pools.iter_mut() {
        while pool.front().is_some_and(|oldest| now.saturating_duration_since(last_used(oldest)) > POOL_SPARE) {
            pool.pop_front();
            closed += 1;
        }
    }
    waiting - closed < POOL_MAX
}

/// The back ends of one farm and their idle connections.
pub struct Relay {
    backends: Vec<Backend>,
    /// Per back end: its `tls=`, ready to connect with.
    starttls: Vec<Starttls>,
    /// The CA files read, with a hash of what was read, to notice a renewed CA.
    ca_stamps: Vec<(String, blake3::Hash)>,
    /// Per back end, per session thread ([`crate::shared::session_thread`]): idle connections,
    /// the most recently used last (taken first), the longest idle first (closed first).
    /// A thread takes only its own, registered with its own runtime (ARCHITECTURE.md, the
    /// session threads' invariant).
    pools: Vec<Mutex<Vec<VecDeque<Connection>>>>,
    hostname: String,
    timeout: Duration,
}

impl Relay {
    /// The relay to `backends`; reads their CA files (or the system's roots): called when a
    /// ruleset is loaded. Fails when a back end's `tls="required"` has nothing to verify with.
    pub fn new(backends: Vec<Backend>, hostname: String, timeout: Duration) -> Result<Relay, String> {
        let pools = backends.iter().map(|_| Mutex::new(Vec::new())).collect();
        let mut starttls = Vec::with_capacity(backends.len());
        let mut ca_stamps = Vec::new();
        for backend in &backends {
            let (config, stamp) = Starttls::load(&backend.tls, &backend.address)
                .map_err(|e| format!("back end {}: {e}", backend.address))?;
            starttls.push(config);
            ca_stamps.extend(stamp);
        }
        Ok(Relay { backends, starttls, ca_stamps, pools, hostname, timeout })
    }

    /// Whether a CA file holds something else than what was loaded (a renewed authority).
    pub fn changed_on_disk(&self) -> bool {
        self.ca_stamps.iter().any(|(path, hash)| std::fs::read(path).ok().map(|b| blake3::hash(&b)) != Some(*hash))
    }

    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// Whether this relay can serve a reloaded ruleset as is (same back ends, name and timeout),
    /// keeping its pooled connections.
    pub fn same_settings(&self, backends: &[Backend], hostname: &str, timeout: Duration) -> bool {
        self.backends == backends && self.hostname == hostname && self.timeout == timeout && !self.changed_on_disk()
    }

    fn take_pooled(&self) -> Option<Connection> {
        let thread = crate::shared::session_thread();
        for pools in &self.pools {
            let mut pools = pools.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let Some(pool) = pools.get_mut(thread) else { continue };
            while let Some(conn) = pool.pop_back() {
                if conn.last_used.elapsed() < POOL_IDLE {
                    return Some(conn);
                }
            }
        }
        None
    }

    fn give_back(&self, mut conn: Connection) {
        conn.last_used = Instant::now();
        conn.buf.clear();
        if let Some(pools) = self.pools.get(conn.backend) {
            let mut pools = pools.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            // The cap is the back end's, whatever the number of threads: each idle connection
            // may hold a process of the back end (a Postfix smtpd).
            if !make_room(&mut pools, conn.last_used, |idle| idle.last_used) {
                return;
            }
            if pools.len() <= conn.home {
                pools.resize_with(conn.home + 1, VecDeque::new);
            }
            if let Some(pool) = pools.get_mut(conn.home) {
                pool.push_back(conn);
            }
        }
    }

    async fn connect(&self) -> Result<Connection, RelayError> {
        let mut failures = Vec::new();
        let mut all_tls = true;
        for (index, backend) in self.backends.iter().enumerate() {
            match self.connect_one(index, backend).await {
                Ok(conn) => return Ok(conn),
                Err(e) => {
                    tracing::warn!(backend = %backend.address, error = %e, "back end failed, trying the next");
                    all_tls &= matches!(e, RelayError::Tls(_));
                    failures.push(format!("{}: {e}", backend.address));
                }
            }
        }
        if all_tls && !failures.is_empty() {
            return Err(RelayError::Tls(failures.join("; ")));
        }
        Err(RelayError::Unreachable(failures.join("; ")))
    }

    async fn connect_one(&self, index: usize, backend: &Backend) -> Result<Connection, RelayError> {
        let stream = tokio::time::timeout(self.timeout, TcpStream::connect(backend.address.as_str()))
            .await
            .map_err(|_| RelayError::Timeout)??;
        stream.set_nodelay(true)?;
        let mut conn = Connection {
            stream: BackendStream::Plain(stream),
            buf: Vec::with_capacity(1024),
            backend: index,
            home: crate::shared::session_thread(),
            protocol: backend.protocol,
            caps: Capabilities::default(),
            last_used: Instant::now(),
        };
        let greeting = conn.reply(self.timeout).await?;
        if greeting.code != 220 {
            return Err(RelayError::Protocol(format!("greeting {}", greeting.code)));
        }
        conn.hello(&self.hostname, self.timeout).await?;
        if let Some(starttls) = self.starttls.get(index) {
            conn.secure(starttls, &self.hostname, self.timeout).await?;
        }
        tracing::debug!(backend = %backend.address, tls = conn.stream.is_tls(), "back end connected");
        Ok(conn)
    }

    /// Open a transaction: a connection (pooled or new) that accepted MAIL FROM.
    /// `Err(reply)` is what the client must get for the recipient that triggered it.
    pub async fn begin(&self, envelope: &Envelope<'_>) -> Result<Transaction<'_>, Reply> {
        self.open(envelope, None).await.map(|(txn, _)| txn)
    }

    /// Open a transaction with its first recipient: MAIL FROM and RCPT TO pipelined where the
    /// back end allows it. `Err(reply)`: the transaction did not open (the client's reply for
    /// this recipient); else the open transaction and the back end's verdict on `first`.
    pub async fn begin_with(
        &self,
        envelope: &Envelope<'_>,
        first: &str,
    ) -> Result<(Transaction<'_>, Result<(), Reply>), Reply> {
        let (mut txn, verdict) = self.open(envelope, Some(first)).await?;
        let verdict = match verdict {
            Some(verdict) => verdict,
            None => txn.rcpt(first).await,
        };
        Ok((txn, verdict))
    }

    /// [`Relay::begin`], with the first recipient's verdict when it went in the same write.
    async fn open(&self, envelope: &Envelope<'_>, first: Option<&str>) -> Result<Opened<'_>, Reply> {
        // A pooled connection may have been closed by the back end while idle: one fresh retry.
        if let Some(conn) = self.take_pooled() {
            if let Ok(result) = self.mail_from(conn, envelope, first).await {
                return result;
            }
        }
        let conn = self.connect().await.map_err(|e| {
            tracing::warn!(error = %e, "relay: no back end");
            e.reply()
        })?;
        match self.mail_from(conn, envelope, first).await {
            Ok(result) => result,
            Err(e) => {
                tracing::warn!(error = %e, "relay: MAIL FROM failed");
                Err(e.reply())
            }
        }
    }

    /// MAIL FROM, and `first`'s RCPT in the same write when the back end offers PIPELINING
    /// (then its verdict is returned; `None`: it was not sent). `Err`: the connection failed
    /// before MAIL FROM was answered, or answered 421 (retried on a fresh one, never a verdict).
    async fn mail_from(
        &self,
        mut conn: Connection,
        envelope: &Envelope<'_>,
        first: Option<&str>,
    ) -> Result<Result<Opened<'_>, Reply>, RelayError> {
        if envelope.smtputf8 && !conn.caps.smtputf8 {
            self.give_back(conn);
            return Ok(Err(Reply::new(553, EnhancedCode::new(5, 6, 7), "The back end does not accept SMTPUTF8 mail")
                .unwrap_or_else(|_| Reply::local_error())));
        }
        let mut line = format!("MAIL FROM:<{}>", envelope.sender);
        if envelope.eight_bit && conn.caps.eight_bit {
            line.push_str(" BODY=8BITMIME");
        }
        if envelope.smtputf8 {
            line.push_str(" SMTPUTF8");
        }
        if let (Some(size), true) = (envelope.size, conn.caps.size) {
            line.push_str(&format!(" SIZE={size}"));
        }
        let (reply, rcpt) = match first.filter(|_| conn.caps.pipelining) {
            Some(first) => {
                let (mail, rcpt) = conn.mail_and_rcpt(&line, first, self.timeout).await?;
                (mail, Some(rcpt))
            }
            None => (conn.command(&line, self.timeout).await?, None),
        };
        if reply.code == 421 {
            // The back end is closing this connection (an idle pooled one, or it is shutting
            // down): a connection problem, retried on a fresh connection, never a verdict.
            return Err(RelayError::Protocol("the back end closed the connection (421)".to_owned()));
        }
        if !reply.is_positive() {
            let client = reply.to_client();
            // A pipelined RCPT after a refused MAIL was answered too (503): the connection is
            // in step only if that answer arrived.
            if rcpt.as_ref().is_none_or(Result::is_ok) {
                self.reset_and_pool(conn).await;
            }
            return Ok(Err(client));
        }
        let mut txn = Transaction { relay: self, conn: Some(conn), recipients: 0 };
        let verdict = rcpt.map(|rcpt| txn.rcpt_answered(rcpt));
        Ok(Ok((txn, verdict)))
    }

    /// RSET a connection whose transaction was abandoned and pool it if it still answers.
    async fn reset_and_pool(&self, mut conn: Connection) {
        if let Ok(reply) = conn.command("RSET", self.timeout).await {
            if reply.code == 250 {
                self.give_back(conn);
            }
        }
    }
}

/// An opened transaction, and the verdict on its first recipient when it was pipelined.
type Opened<'r> = (Transaction<'r>, Option<Result<(), Reply>>);

/// A back-end transaction in progress.
pub struct Transaction<'r> {
    relay: &'r Relay,
    conn: Option<Connection>,
    recipients: usize,
}

impl Transaction<'_> {
    pub fn protocol(&self) -> BackendProtocol {
        self.conn.as_ref().map_or(BackendProtocol::Smtp, |c| c.protocol)
    }

    /// Forward one recipient; `Err` carries the reply for the client.
    pub async fn rcpt(&mut self, address: &str) -> Result<(), Reply> {
        let timeout = self.relay.timeout;
        let Some(conn) = self.conn.as_mut() else { return Err(RelayError::Protocol("closed".into()).reply()) };
        let answer = conn.command(&format!("RCPT TO:<{address}>"), timeout).await;
        self.rcpt_answered(answer)
    }

    /// The back end's answer to one RCPT, counted and turned into the client's verdict; a
    /// failed exchange ends the transaction (DATA then answers 451).
    fn rcpt_answered(&mut self, answer: Result<BackendReply, RelayError>) -> Result<(), Reply> {
        match answer {
            Ok(reply) if reply.is_positive() => {
                self.recipients += 1;
                Ok(())
            }
            Ok(reply) => Err(reply.to_client()),
            Err(e) => {
                self.conn = None;
                tracing::warn!(error = %e, "relay: RCPT failed");
                Err(e.reply())
            }
        }
    }

    /// Keep an idle transaction alive: a NOOP when the last exchange is older than
    /// [`KEEPALIVE`]. A connection that does not answer is dropped; DATA then answers 451.
    pub async fn keepalive(&mut self) {
        let timeout = self.relay.timeout;
        let Some(conn) = self.conn.as_mut() else { return };
        if conn.last_used.elapsed() < KEEPALIVE {
            return;
        }
        match conn.command("NOOP", timeout).await {
            Ok(reply) if reply.code == 250 => conn.last_used = Instant::now(),
            _ => {
                tracing::warn!("relay: the back end dropped an idle transaction");
                self.conn = None;
            }
        }
    }

    /// Send the spooled message and return the reply for the client.
    /// Send the message: `headers` (complete CRLF-terminated lines, e.g. the scanners' X-Spam-*)
    /// first, then the spooled message.
    pub async fn data(mut self, headers: &[u8], spool: &mut Relayed) -> Reply {
        let relay = self.relay;
        let Some(mut conn) = self.conn.take() else { return RelayError::Protocol("closed".into()).reply() };
        match send::message(&mut conn, headers, spool, self.recipients, relay.timeout).await {
            Ok(reply) => {
                if reply.code < 400 {
                    relay.give_back(conn);
                } else {
                    relay.reset_and_pool(conn).await;
                }
                reply.to_client_after_data()
            }
            Err(e) => {
                tracing::warn!(error = %e, "relay: DATA failed");
                e.reply()
            }
        }
    }

    /// Abandon the transaction (client RSET, QUIT, refused DATA): RSET and pool the connection.
    pub async fn abort(mut self) {
        if let Some(conn) = self.conn.take() {
            self.relay.reset_and_pool(conn).await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::{make_room, POOL_MAX, POOL_SIZE, POOL_SPARE};
    use std::collections::VecDeque;
    use std::time::{Duration, Instant};

    /// Pools of idle connections (their last use), one per thread, `counts[i]` used at `ages[i]`
    /// before `now`, the longest idle first.
    fn pools(now: Instant, threads: &[(usize, Duration)]) -> Vec<VecDeque<Instant>> {
        threads.iter().map(|&(count, age)| std::iter::repeat_n(now - age, count).collect()).collect()
    }

    #[test]
    fn idle_connections_past_the_pool_size_close_only_once_they_have_waited() {
        let now = Instant::now();
        let fresh = Duration::from_millis(5);
        let stale = POOL_SPARE + Duration::from_millis(1);
        let used = |at: &Instant| *at;
        // Below the size: always room, nothing closed.
        let mut below = pools(now, &[(POOL_SIZE - 1, stale)]);
        assert!(make_room(&mut below, now, used));
        assert_eq!(below[0].len(), POOL_SIZE - 1);
        // At the size, every one in use a moment ago (a busy back end): one more waits.
        let mut busy = pools(now, &[(POOL_SIZE / 2, fresh), (POOL_SIZE / 2, fresh)]);
        assert!(make_room(&mut busy, now, used));
        assert_eq!(busy.iter().map(VecDeque::len).sum::<usize>(), POOL_SIZE);
        // At the size, the stale ones (oldest first, on any thread) close and make room.
        let mut mixed = pools(now, &[(POOL_SIZE / 2, stale), (POOL_SIZE / 2, fresh)]);
        mixed[1].push_front(now - stale);
        assert!(make_room(&mut mixed, now, used));
        assert_eq!((mixed[0].len(), mixed[1].len()), (0, POOL_SIZE / 2));
        // However recent, never past the maximum.
        let mut full = pools(now, &[(POOL_MAX, fresh)]);
        assert!(!make_room(&mut full, now, used));
        assert_eq!(full[0].len(), POOL_MAX);
    }
}
