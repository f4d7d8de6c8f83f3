//! One client connection: the I/O around a [`Session`].
//!
//! The driver reads bytes with a deadline per stage, frames command lines, hands parsed
//! commands to the session and carries out its [`Action`]s: replies are collected and written in
//! one batch when the client's pipelined input is used up (RFC 2920), recipients go to the back
//! end, DATA streams to the spool and then to the back end, and only the back end's verdict is
//! returned to the client.
//!
//! Phases, as docs/session.md names them: connect → greet → helo → mail → rcpt → data → relay →
//! log. Every wait is bounded by the stage's timeout, measured from the start of the stage, so a
//! client trickling one byte at a time cannot stretch it.

use crate::lookups::{Lookups, Needs};
use crate::metrics::{
    AuthOutcome, FarmLabel, GreylistOutcome, MessageOutcome, RelayError, ScanResult, ScannerLabel, SessionEnd, Verdict,
};
use crate::received::{self, Trace};
use crate::relay::{Envelope, Relay, Transaction};
use crate::server::{Delivery, Shared, Shutdown, Snapshot};
use crate::session::{Action, AuthVerdict, Session};
use crate::smtp::{parse, BarePolicy as SmtpBare, DataReceiver, EnhancedCode, Frame, LineReader, Reply, VerdictFilter};
use crate::spool::{self, SpoolFile};
use crate::state::{GreylistVerdict, Timings, Triplet};
use crate::tls::SmtpStream;
use mtac_ruleset::eval::{DirectoryAnswer, ReverseDns};
use mtac_ruleset::model::GreylistKey;
use mtac_ruleset::model::{BackendProtocol, BarePolicy, Farm, RateSubject, Stage};
use mtac_ruleset::rules;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Spool writes are batched to this size.
const SPOOL_CHUNK: usize = 64 * 1024;
/// Input buffer growth step while reading commands.
const READ_STEP: usize = 1024;

/// How a session ended, for the closing log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Quit,
    ClientClosed,
    Timeout,
    TooManyErrors,
    Refused,
    Shutdown,
    EarlyTalker,
    Io,
}

impl End {
    pub fn as_str(self) -> &'static str {
        match self {
            End::Quit => "quit",
            End::ClientClosed => "client-closed",
            End::Timeout => "timeout",
            End::TooManyErrors => "too-many-errors",
            End::Refused => "refused",
            End::Shutdown => "shutdown",
            End::EarlyTalker => "early-talker",
            End::Io => "io-error",
        }
    }
}

enum Read {
    Data,
    Closed,
    Timeout,
    Shutdown,
    Error,
}

struct Conn<'s> {
    stream: SmtpStream,
    input: Vec<u8>,
    output: Vec<u8>,
    shared: &'s Shared,
    shutdown: tokio::sync::watch::Receiver<Shutdown>,
}

impl Conn<'_> {
    async fn flush(&mut self, deadline: Instant) -> bool {
        if self.output.is_empty() {
            return true;
        }
        let ok = matches!(tokio::time::timeout_at(deadline, self.stream.write_all(&self.output)).await, Ok(Ok(())));
        self.output.clear();
        // A big EHLO or error reply should not pin memory for an idle session.
        if self.output.capacity() > 4096 {
            self.output.shrink_to(512);
        }
        ok
    }

    /// Read more input before `deadline`. `in_transaction` lets a draining node finish a message.
    async fn read(&mut self, deadline: Instant, in_transaction: bool) -> Read {
        self.read_chunk(deadline, in_transaction, READ_STEP).await
    }

    /// Read with room for `step` more bytes (commands: a small step keeps idle sessions small;
    /// DATA: a large one keeps the number of reads low).
    async fn read_chunk(&mut self, deadline: Instant, in_transaction: bool, step: usize) -> Read {
        if self.input.capacity() - self.input.len() < step / 2 {
            self.input.reserve(step);
        }
        loop {
            let state = *self.shutdown.borrow();
            if state == Shutdown::Now || (state == Shutdown::Draining && !in_transaction) {
                return Read::Shutdown;
            }
            tokio::select! {
                read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.input)) => {
                    return match read {
                        Ok(Ok(0)) => Read::Closed,
                        Ok(Ok(_)) => Read::Data,
                        Ok(Err(_)) => Read::Error,
                        Err(_) => Read::Timeout,
                    };
                }
                changed = self.shutdown.changed() => {
                    if changed.is_err() {
                        // The server is gone: treat as an immediate stop.
                        return Read::Shutdown;
                    }
                }
            }
        }
    }

    fn reply(&mut self, reply: &Reply) {
        reply.write_to(&mut self.output);
    }

    /// Write a last reply and report how the session ended.
    async fn close(&mut self, reply: &Reply, end: End) -> End {
        self.reply(reply);
        let deadline = Instant::now() + Duration::from_secs(10);
        self.flush(deadline).await;
        let _ = self.stream.shutdown().await;
        // Lingering close: closing a socket with unread input makes the kernel send RST, which
        // can destroy the reply we just wrote before the client reads it. Drain briefly first.
        let linger = Instant::now() + Duration::from_secs(1);
        let mut sink = [0u8; 512];
        let mut drained = 0usize;
        while drained < 64 * 1024 {
            match tokio::time::timeout_at(linger, self.stream.read(&mut sink)).await {
                Ok(Ok(n)) if n > 0 => drained += n,
                _ => break,
            }
        }
        end
    }
}

/// Serve one connection of `farm_name` on the snapshot current at accept time.
pub async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    farm_name: &str,
    implicit_tls: bool,
    shared: Arc<Shared>,
    id: String,
    banned: bool,
) {
    let _ = stream.set_nodelay(true);
    // The session keeps the ruleset it started with, whatever reloads happen meanwhile.
    let snapshot = shared.snapshot();
    let Some((farm_index, farm)) = snapshot.farm(farm_name) else {
        let mut stream = stream;
        let reply = Reply::shutting_down(&snapshot.ruleset.policy().hostname);
        let _ = stream.write_all(&reply.to_bytes()).await;
        tracing::warn!(session = %id, farm = farm_name, "farm no longer in the ruleset; connection refused");
        return;
    };
    let mut conn = Conn {
        stream: SmtpStream::Plain(stream),
        input: Vec::with_capacity(READ_STEP),
        output: Vec::with_capacity(512),
        shared: &shared,
        shutdown: shared.shutdown_receiver(),
    };
    let mut session = Session::new(id.clone(), peer, &snapshot.ruleset, farm);
    session.banned = banned;
    if implicit_tls {
        // RFC 8314: TLS from the first byte, then the greeting inside it.
        let Some(tls) = snapshot.tls(farm_index) else { return };
        let limit = Duration::from_secs(u64::from(farm.limits.timeouts.command).min(60));
        match tokio::time::timeout(limit, conn.stream.upgrade(&tls.acceptor)).await {
            Ok(Ok(())) => {
                shared.metrics.tls_sessions.get_or_create(&FarmLabel { farm: farm.name.clone() }).inc();
                session.tls_started(conn.stream.tls_description().unwrap_or_default());
            }
            Ok(Err(e)) => {
                tracing::info!(session = %id, client = %peer.ip(), error = %e, "TLS handshake failed");
                return;
            }
            Err(_) => {
                tracing::info!(session = %id, client = %peer.ip(), "TLS handshake timed out");
                return;
            }
        }
    }
    let mut lookups = shared.dns().map(|dns| Lookups::start(dns, Needs::of(farm), peer.ip()));
    let end = run(&mut conn, &mut session, &snapshot, farm_index, farm, &mut lookups).await;
    shared.metrics.sessions.get_or_create(&SessionEnd { farm: farm.name.clone(), end: end.as_str() }).inc();
    tracing::info!(
        session = %session.id,
        client = %peer.ip(),
        farm = farm_name,
        helo = session.helo.as_deref().unwrap_or(""),
        accepted = session.accepted,
        rule = session.last_rule.as_deref().unwrap_or(""),
        end = end.as_str(),
        "session closed"
    );
}

async fn run(
    conn: &mut Conn<'_>,
    session: &mut Session,
    snapshot: &Snapshot,
    farm_index: usize,
    farm: &Farm,
    lookups: &mut Option<Lookups>,
) -> End {
    let limits = &farm.limits;
    let hostname = snapshot.ruleset.policy().hostname.clone();
    let mut command_timeout = Duration::from_secs(u64::from(limits.timeouts.command));
    if session.banned {
        // A banned client is only here to be refused: it gets little of our time.
        command_timeout = command_timeout.min(Duration::from_secs(10));
    }

    // Early talkers: a client that speaks before the greeting is a bot (postscreen's pregreet test).
    if limits.timeouts.pregreet > 0 {
        let wait = Instant::now() + Duration::from_secs(u64::from(limits.timeouts.pregreet));
        match conn.read(wait, false).await {
            Read::Timeout => {}
            Read::Data => {
                session.note_rule(rules::PREGREET.to_owned());
                let reply =
                    Reply::new(554, EnhancedCode::new(5, 5, 1), "Protocol error: you talked before the greeting")
                        .unwrap_or_else(|_| Reply::local_error());
                return conn.close(&reply, End::EarlyTalker).await;
            }
            Read::Closed => return End::ClientClosed,
            Read::Shutdown => return conn.close(&Reply::shutting_down(&hostname), End::Shutdown).await,
            Read::Error => return End::Io,
        }
    }
    if let Some(l) = lookups.as_mut() {
        l.ready_for(Stage::Connect, &mut session.dns, &conn.shared.metrics).await;
    }
    let greeting = session.greet(&snapshot.ruleset, farm);
    decided(conn.shared, session, farm, &Asked::Connect, &greeting);
    match greeting {
        Action::Close(reply) => {
            return conn.close(&reply, End::Refused).await;
        }
        Action::Reply(reply) => conn.reply(&reply),
        _ => {}
    }

    let relay = snapshot.delivery(farm_index);
    let mut lines = LineReader::new(usize::try_from(limits.line_length).unwrap_or(usize::MAX));
    let mut txn: Option<Transaction<'_>> = None;
    // This client's place among the transfers in flight, held from MAIL to the end of DATA.
    let mut transfer: Option<crate::transfers::TransferSlot> = None;
    let mut deadline = Instant::now() + command_timeout;
    let end = loop {
        let framed = lines.read(&conn.input);
        let consumed = framed.consumed;
        let action = match framed.frame {
            Frame::NeedMore => {
                conn.input.drain(..consumed);
                if !conn.flush(deadline).await {
                    break End::Io;
                }
                match conn.read(deadline, session.txn.is_some()).await {
                    Read::Data => continue,
                    Read::Closed => break End::ClientClosed,
                    Read::Error => break End::Io,
                    Read::Timeout => break conn.close(&Reply::timeout(&hostname), End::Timeout).await,
                    Read::Shutdown => break conn.close(&Reply::shutting_down(&hostname), End::Shutdown).await,
                }
            }
            Frame::TooLong => Prepared::Done(session.line_too_long()),
            // A SASL exchange: the line is the client's base64 answer, not a command.
            Frame::Line(line) if session.in_sasl() => Prepared::Done(session.sasl_line(line)),
            Frame::Line(line) => match parse(line) {
                Ok(command) => Prepared::Command(command),
                Err(e) => Prepared::Done(session.parse_error(&e)),
            },
        };
        conn.input.drain(..consumed);
        let mut asked = Asked::Other;
        let action = match action {
            Prepared::Done(action) => action,
            Prepared::Command(command) => {
                asked = Asked::of(&command);
                prepare(&command, session, farm, conn.shared, lookups, &mut transfer)
                    .await
                    .unwrap_or_else(|| session.command(command, &snapshot.ruleset, farm))
            }
        };
        let action = match action {
            Action::Authenticate { user, password } => {
                let cache = snapshot.login_cache(farm_index);
                authenticate(conn.shared, session, farm, cache, user, password).await
            }
            other => other,
        };
        let action = match action {
            Action::Directory { address } => {
                let answer = ask_directory(conn.shared, snapshot, farm_index, farm, session, &address).await;
                session.directory_result(&snapshot.ruleset, farm, address, answer)
            }
            other => other,
        };
        let action = match action {
            Action::Greylist { address } => {
                let fail_open = crate::state::Store::fail_open(&snapshot.ruleset.policy().state);
                let verdict = greylist(conn.shared, session, farm, &address, fail_open).await;
                session.greylist_result(address, verdict)
            }
            other => other,
        };
        let action = match action {
            Action::Recipient { address } => {
                let verdict = match &relay {
                    Delivery::Maildir(_) => Ok(()),
                    Delivery::Relay(relay) => recipient(relay, &mut txn, session, &address).await,
                };
                if let Err(refusal) = &verdict {
                    // The policy accepted the recipient; the back end (or the way to it) did not.
                    session.note_rule(rules::BACKEND.to_owned());
                    conn.shared.metrics.relay_errors.get_or_create(&relay_error(farm, "rcpt", refusal)).inc();
                }
                session.recipient_result(address, verdict)
            }
            other => other,
        };
        // Now that the answer is final (the directory, the greylist store and the back end have
        // spoken): a policy refusal that the farm bans for turns the network's next connections
        // away, and a refusal waits out the tarpit.
        if let Some(rule) = session.take_refusal_rule() {
            if let Some((scope, net, seconds)) =
                conn.shared.bans.after_refusal(&farm.name, session.peer.ip(), &rule, &farm.bans)
            {
                conn.shared.metrics.bans.inc();
                let active = conn.shared.bans.active();
                let from = scope.name().to_owned();
                tracing::info!(session = %session.id, client = %session.peer.ip(), %net, rule = %rule, farm = from.as_str(), active, "banned");
                share_ban(conn.shared, scope, net, seconds);
            }
        }
        if farm.tarpit_ms > 0 {
            if let Action::Reply(r) | Action::Close(r) = &action {
                if r.is_transient() || r.is_permanent() {
                    if !conn.flush(Instant::now() + command_timeout).await {
                        break End::Io;
                    }
                    tokio::time::sleep(Duration::from_millis(u64::from(farm.tarpit_ms))).await;
                }
            }
        }
        decided(conn.shared, session, farm, &asked, &action);
        match action {
            Action::Reply(reply) => conn.reply(&reply),
            Action::Close(reply) => {
                let end = if reply.code() == 221 {
                    End::Quit
                } else if reply.code() == 421 {
                    End::TooManyErrors
                } else {
                    End::Refused
                };
                break conn.close(&reply, end).await;
            }
            Action::Data => {
                let outcome = data(conn, session, farm, &snapshot.ruleset, &hostname, &relay, txn.take()).await;
                match outcome {
                    Ok((reply, reason, size)) => {
                        message_decided(conn.shared, session, farm, &reply, reason, size);
                        if reply.is_positive() {
                            count_delivery(conn.shared, session, farm);
                        }
                        let accepted = reply.is_positive();
                        let action = if accepted { Action::Reply(reply) } else { session.data_refused(reply) };
                        session.end_transaction(accepted);
                        match action {
                            Action::Close(r) => break conn.close(&r, End::TooManyErrors).await,
                            Action::Reply(r) => conn.reply(&r),
                            _ => {}
                        }
                    }
                    Err(end) => break end,
                }
            }
            Action::StartTls(reply) => {
                conn.reply(&reply);
                if !conn.flush(Instant::now() + command_timeout).await {
                    break End::Io;
                }
                // Whatever the client sent after STARTTLS was sent in clear text: it must not be
                // read as if it had come through TLS (CVE-2011-0411).
                conn.input.clear();
                let Some(tls) = snapshot.tls(farm_index) else { break End::Io };
                match tokio::time::timeout(command_timeout, conn.stream.upgrade(&tls.acceptor)).await {
                    Ok(Ok(())) => {
                        let metrics = &conn.shared.metrics;
                        metrics.tls_sessions.get_or_create(&FarmLabel { farm: farm.name.clone() }).inc();
                        session.tls_started(conn.stream.tls_description().unwrap_or_default());
                    }
                    Ok(Err(e)) => {
                        tracing::info!(session = %session.id, error = %e, "STARTTLS handshake failed");
                        break End::Io;
                    }
                    Err(_) => break End::Timeout,
                }
            }
            Action::Recipient { .. }
            | Action::Greylist { .. }
            | Action::Directory { .. }
            | Action::Authenticate { .. } => {}
        }
        // RSET, a new EHLO, or a refused transaction: release the back end connection and the
        // client's place among the transfers in flight.
        if session.txn.is_none() {
            transfer = None;
            if let Some(t) = txn.take() {
                t.abort().await;
            }
        }
        // The next command's time starts now, not before we waited on the back end.
        deadline = Instant::now() + command_timeout;
    };
    if let Some(t) = txn.take() {
        t.abort().await;
    }
    end
}

/// A framed line: a command still to decide, or an answer already known.
enum Prepared {
    Command(crate::smtp::Command),
    Done(Action),
}

/// Before the session decides a command: start the lookups it brings (HELO name, sender domain),
/// wait for those its stage needs, and apply the message rate limit. `Some` answers the command.
async fn prepare(
    command: &crate::smtp::Command,
    session: &mut Session,
    farm: &Farm,
    shared: &Shared,
    lookups: &mut Option<Lookups>,
    transfer: &mut Option<crate::transfers::TransferSlot>,
) -> Option<Action> {
    use crate::smtp::{Command, ReversePath};
    let stage = match command {
        Command::Helo(name) | Command::Ehlo(name) => {
            if let Some(l) = lookups.as_mut() {
                l.helo(name, &mut session.dns);
            }
            Stage::Helo
        }
        Command::Mail(mail) => {
            if session.txn.is_none() {
                if let Some(reply) = rate_exceeded(shared, farm, RateSubject::Messages, session.peer.ip()).await {
                    return Some(session.refuse(reply, rules::RATE_LIMIT));
                }
                // Room for the message, before a byte of it is sent (RFC 1870: 452 for a
                // temporary lack of storage), and this client's share of the transfers.
                if !shared.spool.has_room_for(mail.size.unwrap_or(0)) {
                    return Some(session.refuse(insufficient_storage(), rules::SPOOL_BUDGET));
                }
                if transfer.is_none() {
                    match shared.transfers.open(session.peer.ip(), farm.limits.transfers_per_ip) {
                        Some(slot) => *transfer = Some(slot),
                        None => {
                            let reply = Reply::new(
                                452,
                                EnhancedCode::new(4, 3, 1),
                                "Too many messages in flight from your address, try again later",
                            )
                            .unwrap_or_else(|_| insufficient_storage());
                            return Some(session.refuse(reply, rules::TRANSFERS_PER_IP));
                        }
                    }
                }
                if let Some(l) = lookups.as_mut() {
                    let domain = match &mail.from {
                        ReversePath::Null => None,
                        ReversePath::Mailbox(m) => Some(m.domain()),
                    };
                    l.sender(domain, &mut session.dns);
                }
            }
            Stage::Mail
        }
        Command::Rcpt(_) => Stage::Rcpt,
        _ => return None,
    };
    if let Some(l) = lookups.as_mut() {
        l.ready_for(stage, &mut session.dns, &shared.metrics).await;
    }
    None
}

/// Count one `subject` event from `ip` against the farm's rate limits: in Redis when the node
/// shares state through it (every node of the farm counts in the same windows), else in this
/// node's memory. Returns the reply of the first limit exceeded. Redis failing falls back to
/// the node's own count: a limit is never lifted because the store is down.
pub async fn rate_exceeded(shared: &Shared, farm: &Farm, subject: RateSubject, ip: std::net::IpAddr) -> Option<Reply> {
    if farm.rate_limits.iter().all(|l| l.subject != subject) {
        return None;
    }
    if let Some(crate::state::Store::Redis(redis)) = &shared.state {
        let mut exceeded = None;
        for (index, limit) in farm.rate_limits.iter().enumerate().filter(|(_, l)| l.subject == subject) {
            let key = crate::guard::rate_key(&farm.name, index, ip, limit);
            match redis.count_rate(&key, u64::from(limit.window)).await {
                Ok(count) if count > u64::from(limit.limit) => {
                    exceeded.get_or_insert(limit);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "redis: rate counter unavailable; counting on this node");
                    return shared
                        .rates
                        .count(&farm.name, subject, ip, &farm.rate_limits)
                        .map(|l| crate::session::policy_reply(&l.reply));
                }
            }
        }
        return exceeded.map(|l| crate::session::policy_reply(&l.reply));
    }
    shared.rates.count(&farm.name, subject, ip, &farm.rate_limits).map(|l| crate::session::policy_reply(&l.reply))
}

/// Ask the back end about one recipient, opening the transaction at the first.
async fn recipient<'r>(
    relay: &'r Relay,
    txn: &mut Option<Transaction<'r>>,
    session: &Session,
    address: &str,
) -> Result<(), Reply> {
    if txn.is_none() {
        let Some(envelope) = session.txn.as_ref().map(|t| Envelope {
            sender: t.sender.clone(),
            size: t.size,
            eight_bit: t.eight_bit,
            smtputf8: t.smtputf8,
        }) else {
            return Err(Reply::bad_sequence("need MAIL command"));
        };
        *txn = Some(relay.begin(&envelope).await?);
    }
    let Some(t) = txn.as_mut() else { return Err(Reply::local_error()) };
    // LMTP answers per recipient after DATA while our client expects one reply: one recipient
    // per transaction keeps every answer exact (ARCHITECTURE.md, "LMTP").
    if t.protocol() == BackendProtocol::Lmtp && session.txn.as_ref().is_some_and(|s| !s.recipients.is_empty()) {
        return Err(Reply::new(
            452,
            EnhancedCode::new(4, 5, 3),
            "One recipient per message on this path; send the others again",
        )
        .unwrap_or_else(|_| Reply::too_many_recipients()));
    }
    t.rcpt(address).await
}

/// Receive DATA into the spool and deliver it. `Ok((reply, reason, size))` is the final answer
/// for the client, why (a [`MessageOutcome`] reason) and the message's size; `Err(end)` means
/// the connection is over.
async fn data(
    conn: &mut Conn<'_>,
    session: &Session,
    farm: &Farm,
    ruleset: &mtac_ruleset::Ruleset,
    hostname: &str,
    delivery: &Delivery<'_>,
    mut txn: Option<Transaction<'_>>,
) -> Result<(Reply, &'static str, u64), End> {
    let Some(envelope) = session.txn.as_ref() else {
        return Ok((Reply::bad_sequence("need MAIL command"), rules::PROTOCOL, 0));
    };
    let mut spool = match conn.shared.spool.create(&session.id).await {
        Ok(file) => file,
        Err(e) => {
            tracing::error!(session = %session.id, error = %e, "spool: cannot create a file");
            if let Some(t) = txn {
                t.abort().await;
            }
            return Ok((insufficient_storage(), rules::SPOOL, 0));
        }
    };
    conn.reply(&Reply::start_data());
    let data_deadline = Instant::now() + Duration::from_secs(u64::from(farm.limits.timeouts.data));
    if !conn.flush(data_deadline).await {
        return Err(End::Io);
    }
    let trace = received::header(&Trace {
        helo: session.helo.as_deref(),
        client: session.peer.ip(),
        hostname,
        esmtp: session.esmtp(),
        smtputf8: envelope.smtputf8,
        id: &session.id,
        recipient: match envelope.recipients.as_slice() {
            [one] => Some(one.as_str()),
            _ => None,
        },
        tls: session.tls.as_deref(),
        authenticated: session.authenticated.is_some(),
    });
    let bare = match farm.bare_line_ends {
        BarePolicy::Reject => SmtpBare::Reject,
        BarePolicy::Normalize => SmtpBare::Normalize,
    };
    let mut receiver = DataReceiver::new(farm.limits.message_size, bare);
    // The sender's copies of our verdict headers go while the message streams into the spool:
    // the file is written once, and only ever holds what the back end may see.
    let mut verdicts = VerdictFilter::new(&farm.verdict_headers);
    let mut content = Vec::new();
    let mut chunk = Vec::with_capacity(SPOOL_CHUNK.min(16 * 1024));
    chunk.extend_from_slice(trace.as_bytes());
    let sender_start = chunk.len() as u64;
    let mut spool_error: Option<std::io::Error> = None;
    loop {
        let progress = if verdicts.in_body() {
            receiver.feed(&conn.input, &mut chunk)
        } else {
            let progress = receiver.feed(&conn.input, &mut content);
            verdicts.feed(&content, &mut chunk);
            content.clear();
            if progress.done {
                verdicts.finish(&mut chunk);
            }
            progress
        };
        conn.input.drain(..progress.consumed);
        if chunk.len() >= SPOOL_CHUNK || (progress.done && !chunk.is_empty()) {
            if spool_error.is_none() {
                if let Err(e) = spool.write(&chunk).await {
                    spool_error = Some(e);
                }
            }
            chunk.clear();
        }
        if progress.done {
            break;
        }
        if let Some(t) = txn.as_mut() {
            // Back ends drop idle clients (Postfix after 300 s): keep the transaction alive while
            // a slow client uploads.
            t.keepalive().await;
        }
        match conn.read_chunk(data_deadline, true, SPOOL_CHUNK).await {
            Read::Data => {}
            Read::Closed => return Err(End::ClientClosed),
            Read::Error => return Err(End::Io),
            Read::Timeout => return Err(conn.close(&Reply::timeout(hostname), End::Timeout).await),
            Read::Shutdown => return Err(conn.close(&Reply::shutting_down(hostname), End::Shutdown).await),
        }
    }
    // The input buffer may have grown with a large message: give the memory back.
    conn.input.shrink_to(READ_STEP);
    // What the sender sent: the size every limit is about (our Received header is ours).
    let size = receiver.stats().size;
    if verdicts.removed() > 0 {
        tracing::info!(session = %session.id, fields = verdicts.removed(), rename = farm.verdict_headers.rename, "sender's verdict headers removed");
        conn.shared.metrics.verdict_headers_removed.inc_by(u64::from(verdicts.removed()));
    }
    if let Err(e) = receiver.check() {
        let reason = match e {
            crate::smtp::DataError::BareLineEnding { .. } => rules::BARE_LINE_END,
            crate::smtp::DataError::TooLarge { .. } => rules::SIZE,
        };
        return Ok((abandon(txn, e.reply()).await, reason, size));
    }
    if let Some(e) = spool_error {
        let over_budget = e.kind() == std::io::ErrorKind::StorageFull;
        if over_budget {
            tracing::warn!(session = %session.id, budget = conn.shared.spool.budget(), "spool: budget of bytes in flight used up");
        } else {
            tracing::error!(session = %session.id, error = %e, full = spool::is_full(&e), "spool: write failed");
        }
        let reason = if over_budget { rules::SPOOL_BUDGET } else { rules::SPOOL };
        return Ok((abandon(txn, insufficient_storage()).await, reason, size));
    }
    if let Err(e) = spool.flush().await {
        tracing::error!(session = %session.id, error = %e, "spool: flush failed");
        return Ok((abandon(txn, insufficient_storage()).await, rules::SPOOL, size));
    }
    if let Some(refusal) = header_from_refusal(session, farm, ruleset, &verdicts) {
        return Ok((abandon(txn, refusal).await, rules::AUTH_HEADER_FROM, size));
    }
    let message = SpooledMessage { size, sender_start };
    let headers = match content_checks(conn.shared, session, farm, ruleset, &spool, message, hostname).await {
        Ok(headers) => headers,
        Err((reply, rule)) => return Ok((abandon(txn, reply).await, rule, size)),
    };
    let started = std::time::Instant::now();
    let reply = deliver(session, delivery, txn, &mut spool, hostname, headers).await;
    let metrics = &conn.shared.metrics;
    if let Delivery::Relay(_) = delivery {
        let farm_label = FarmLabel { farm: farm.name.clone() };
        metrics.relay_seconds.get_or_create(&farm_label).observe(started.elapsed().as_secs_f64());
        if !reply.is_positive() {
            metrics.relay_errors.get_or_create(&relay_error(farm, "data", &reply)).inc();
        }
    }
    let reason = match (reply.is_positive(), delivery) {
        (true, _) => "delivered",
        (false, Delivery::Relay(_)) => rules::BACKEND,
        (false, Delivery::Maildir(_)) => rules::LOCAL_DELIVERY,
    };
    Ok((reply, reason, size))
}

/// Ask the farm's directory whether a recipient exists (the cache first), and count it.
async fn ask_directory(
    shared: &Shared,
    snapshot: &crate::server::Snapshot,
    farm_index: usize,
    farm: &Farm,
    session: &Session,
    recipient: &str,
) -> DirectoryAnswer {
    let Some(directory) = snapshot.directory(farm_index) else {
        // A ruleset with a directory always gets its client (server::Snapshot::new).
        return DirectoryAnswer::Unavailable;
    };
    let (answer, source) = directory.lookup(recipient).await;
    let result = match answer {
        DirectoryAnswer::Known => "known",
        DirectoryAnswer::Unknown => "unknown",
        DirectoryAnswer::Unavailable => "unavailable",
    };
    let source = match source {
        crate::directory::Source::Cache => "cache",
        crate::directory::Source::Directory(took) => {
            let labels = crate::metrics::FarmLabel { farm: farm.name.clone() };
            shared.metrics.directory_seconds.get_or_create(&labels).observe(took.as_secs_f64());
            "directory"
        }
    };
    let labels = crate::metrics::DirectoryLookup { farm: farm.name.clone(), result, source };
    shared.metrics.directory.get_or_create(&labels).inc();
    tracing::debug!(session = %session.id, recipient, result, source, "directory lookup");
    answer
}

/// Consult the state store for a recipient that passed every other step. `Ok` goes on to the
/// back end; `Err` is the reply: the policy's 451, or the store's failure mode.
async fn greylist(
    shared: &Shared,
    session: &mut Session,
    farm: &Farm,
    recipient: &str,
    fail_open: bool,
) -> Result<(), Reply> {
    let (Some(settings), Some(store)) = (&farm.greylist, shared.state.as_ref()) else {
        // The node opens its store whenever a farm greylists (server::Node::new).
        return Ok(());
    };
    let client = greylist_client(settings, session);
    let sender = session.txn.as_ref().map_or("", |t| t.sender.as_str());
    let triplet = Triplet::new(client.clone(), sender, recipient);
    let metrics = &shared.metrics;
    let outcome = |outcome: &'static str| {
        metrics.greylist.get_or_create(&GreylistOutcome { farm: farm.name.clone(), outcome }).inc();
    };
    match store.greylist(&triplet, session.peer.ip(), Timings::from(settings)).await {
        Ok(verdict) => {
            outcome(verdict.as_str());
            if let GreylistVerdict::Passed { waited, other_address } = verdict {
                metrics.greylist_wait.observe(waited as f64);
                if other_address {
                    metrics.greylist_other_address.inc();
                }
                tracing::info!(
                    session = %session.id, client = %session.peer.ip(), key = client.as_str(), sender,
                    recipient, waited, other_address, "greylist passed"
                );
            }
            if verdict.passes() {
                session.greylist_client = Some(client);
                Ok(())
            } else {
                Err(crate::session::policy_reply(&settings.reply))
            }
        }
        Err(e) => {
            outcome(if fail_open { "error-accepted" } else { "error-deferred" });
            tracing::warn!(session = %session.id, error = %e, fail_open, "greylist: the state store did not answer");
            if fail_open {
                Ok(())
            } else {
                Err(Reply::new(451, EnhancedCode::new(4, 3, 0), "Temporary local problem, please try again later")
                    .unwrap_or_else(|_| Reply::local_error()))
            }
        }
    }
}

/// Check AUTH credentials. Before any password is checked, a client banned from this farm or
/// whose network (the address, an IPv6 /64) has used up the farm's `max-failures` is refused
/// (421, [`Session::auth_locked_out`]); otherwise one check is reserved against that budget, so
/// concurrent sessions cannot check more passwords than it allows. A failure costs the client a
/// second (brute force gets slow); the one that reaches `max-failures` bans the network from
/// this farm (and through Redis, from the farm's other nodes).
async fn authenticate(
    shared: &Shared,
    session: &mut Session,
    farm: &Farm,
    cache: Option<&crate::auth::LoginCache>,
    user: String,
    password: String,
) -> Action {
    let ip = session.peer.ip();
    let max = farm.auth.as_ref().map_or(5, |a| a.max_failures.max(1));
    let attempt = match shared.auth_failures.reserve(&farm.name, ip, max) {
        Ok(attempt) if !shared.bans.is_banned(&farm.name, ip, &farm.bans) => Some(attempt),
        _ => None,
    };
    let Some(attempt) = attempt else {
        drop(password);
        auth_counted(shared, farm, "refused");
        tracing::info!(session = %session.id, client = %ip, "authentication refused: banned or too many failures");
        return session.auth_locked_out();
    };
    let verdict = match &farm.auth {
        Some(_) if cache.is_some_and(|c| c.knows(&user, &password)) => {
            shared.metrics.auth_cached.inc();
            AuthVerdict::Valid
        }
        Some(auth) => {
            let verdict = crate::auth::verify(auth, &user, &password).await;
            if let (AuthVerdict::Valid, Some(cache)) = (&verdict, cache) {
                cache.remember(&user, &password);
            }
            verdict
        }
        None => AuthVerdict::Invalid,
    };
    drop(password);
    let failures = attempt.settle(verdict == AuthVerdict::Invalid);
    let user_shown: String = user.chars().filter(|c| !c.is_control()).take(64).collect();
    match verdict {
        // Another session may have earned the ban while this one was checking.
        AuthVerdict::Valid if shared.bans.is_banned(&farm.name, ip, &farm.bans) => {
            auth_counted(shared, farm, "refused");
            tracing::info!(session = %session.id, client = %ip, "authentication refused: banned meanwhile");
            return session.auth_locked_out();
        }
        AuthVerdict::Valid => {
            auth_counted(shared, farm, "success");
            tracing::info!(session = %session.id, client = %ip, user = user_shown.as_str(), "authenticated");
        }
        AuthVerdict::Invalid => {
            auth_counted(shared, farm, "failure");
            tracing::info!(session = %session.id, client = %ip, user = user_shown.as_str(), "authentication failed");
            if failures >= max {
                ban_for_auth(shared, farm, ip, max);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        AuthVerdict::Unavailable => auth_counted(shared, farm, "unavailable"),
    }
    session.auth_result(user, verdict)
}

fn auth_counted(shared: &Shared, farm: &Farm, outcome: &'static str) {
    shared.metrics.auth.get_or_create(&AuthOutcome { farm: farm.name.clone(), outcome }).inc();
}

/// Ban `ip`'s AUTH network from `farm` (only: the farm where the guessing happened) and announce
/// it to the farm's other nodes.
fn ban_for_auth(shared: &Shared, farm: &Farm, ip: std::net::IpAddr, max: u32) {
    let net = crate::guard::auth_network(ip);
    let scope = crate::guard::BanFarm::Farm(farm.name.clone());
    if !shared.bans.insert(scope.clone(), net, AUTH_BAN.as_secs()) {
        return;
    }
    shared.metrics.bans.inc();
    tracing::warn!(client = %ip, %net, farm = farm.name.as_str(), failures = max, "too many failed authentications: banned");
    share_ban(shared, scope, net, AUTH_BAN.as_secs());
}

/// Tell the farm's other nodes of a ban through Redis (they mirror it: server::mirror_bans).
fn share_ban(shared: &Shared, scope: crate::guard::BanFarm, net: ipnet::IpNet, seconds: u64) {
    if let Some(crate::state::Store::Redis(redis)) = shared.state.clone() {
        tokio::spawn(async move {
            if let Err(e) = redis.ban(&scope, net, seconds).await {
                tracing::warn!(%net, error = %e, "cannot share a ban through Redis; it holds on this node");
            }
        });
    }
}

/// How long an address that failed AUTH `max-failures` times is banned.
const AUTH_BAN: Duration = Duration::from_secs(3600);

/// What stands for the client in its triplets: its network, or with `key="fcrdns"` the
/// registrable domain of its forward-confirmed reverse name (so every host of a sender's pool is
/// one client).
fn greylist_client(settings: &mtac_ruleset::model::Greylist, session: &Session) -> String {
    if settings.key == GreylistKey::Fcrdns {
        if let Some(ReverseDns::Confirmed(name)) = &session.dns.reverse {
            if let Some(domain) = psl::domain_str(&name.trim_end_matches('.').to_ascii_lowercase()) {
                return format!("dns:{domain}");
            }
        }
    }
    format!("net:{}", crate::guard::network(session.peer.ip(), settings.v4_prefix, settings.v6_prefix))
}

/// A delivered message counts toward its client's auto-whitelisting (in the background: the
/// client has its answer already).
fn count_delivery(shared: &Shared, session: &Session, farm: &Farm) {
    let (Some(settings), Some(store), Some(client)) =
        (&farm.greylist, shared.state.clone(), session.greylist_client.clone())
    else {
        return;
    };
    let timings = Timings::from(settings);
    tokio::spawn(async move {
        if let Err(e) = store.delivered(&client, timings).await {
            tracing::warn!(error = %e, "greylist: cannot count a delivery for auto-whitelisting");
        }
    });
}

/// With `auth header-from="owned"`: the refusal of an authenticated user's message whose From
/// header names an address the user may not send as (or none at all). The From fields were
/// collected by the verdict filter while the message streamed in.
fn header_from_refusal(
    session: &Session,
    farm: &Farm,
    ruleset: &mtac_ruleset::Ruleset,
    verdicts: &VerdictFilter<'_>,
) -> Option<Reply> {
    if session.authenticated.is_none() || !farm.auth.as_ref().is_some_and(|a| a.header_from_owned) {
        return None;
    }
    let (values, fields) = verdicts.from();
    let mut field = b"From:".to_vec();
    field.extend_from_slice(values);
    field.extend_from_slice(b"\r\n\r\n");
    let parsed = mail_parser::MessageParser::default().parse_headers(&field);
    let addresses: Vec<String> = parsed
        .as_ref()
        .and_then(|m| m.from())
        .map(|from| from.iter().filter_map(|a| a.address().map(str::to_owned)).collect())
        .unwrap_or_default();
    let owned = fields > 0 && !addresses.is_empty() && addresses.iter().all(|a| session.owns(a, ruleset, farm));
    if owned {
        return None;
    }
    let shown: String = addresses.join(", ").chars().filter(|c| !c.is_control()).take(100).collect();
    tracing::info!(session = %session.id, user = session.authenticated.as_deref().unwrap_or(""), from = shown.as_str(), fields, "header From not owned by the user");
    Some(
        Reply::new(
            550,
            EnhancedCode::new(5, 7, 1),
            "Message rejected: From header not owned by the authenticated user",
        )
        .unwrap_or_else(|_| Reply::local_error()),
    )
}

/// Where the sender's message lies in the spool file, and how big it was as sent.
#[derive(Debug, Clone, Copy)]
struct SpooledMessage {
    /// The sender's bytes (unstuffed), before verdict headers were removed: what limits are about.
    size: u64,
    /// The offset of the sender's message, after mtac's Received header.
    sender_start: u64,
}

/// MIME rules and scanners on the spooled message. `Ok` carries the header lines to relay in
/// front of it; `Err` the refusal and its rule.
async fn content_checks(
    shared: &Shared,
    session: &Session,
    farm: &Farm,
    ruleset: &mtac_ruleset::Ruleset,
    spool: &SpoolFile,
    message: SpooledMessage,
    hostname: &str,
) -> Result<String, (Reply, &'static str)> {
    if farm.scanners.is_empty() && farm.mime.is_none() {
        return Ok(String::new());
    }
    let refuse = |code: u16, (c, s, d): (u8, u16, u16), text: &str, rule: &'static str| {
        (Reply::new(code, EnhancedCode::new(c, s, d), text).unwrap_or_else(|_| Reply::local_error()), rule)
    };
    // The size the sender sent, never the spool's (which holds our own header too): with the
    // default max-size (the message size) no message the farm accepts escapes the scanners.
    if message.size > farm.scan_max_size {
        if farm.scan_oversize_refuse {
            return Err(refuse(552, (5, 3, 4), "Message too large to be scanned", rules::SCAN_OVERSIZE));
        }
        tracing::info!(session = %session.id, size = message.size, max = farm.scan_max_size, "message too large to scan: relayed unscanned");
        return Ok("X-Spam-Status: unscanned, message too large\r\n".to_owned());
    }
    let storage = || refuse(451, (4, 3, 0), "Temporary local problem, please try again later", rules::SPOOL);
    let reader = spool.reader().map_err(|_| storage())?;
    if let Some(rules) = &farm.mime {
        // mail-parser needs the message in one piece: the MIME rules are the one check that
        // holds it in memory (the scanners stream it from the spool).
        let mut bytes =
            vec![0u8; usize::try_from(reader.len().saturating_sub(message.sender_start)).map_err(|_| storage())?];
        reader.read_at(message.sender_start, &mut bytes).map_err(|_| storage())?;
        let facts = mtac_ruleset::eval::Facts {
            client_ip: session.peer.ip(),
            helo: session.helo.as_deref(),
            sender: session.txn.as_ref().map(|t| t.sender.as_str()),
            recipient: None,
            // What vouches for the client at RCPT vouches for it here: an authenticated user
            // sending From: their own local address is not forging it.
            authenticated: session.authenticated.is_some(),
            user: session.authenticated.as_deref(),
            tls: session.tls.is_some(),
            hostname,
            dns: &session.dns,
        };
        let trusted = mtac_ruleset::eval::trust(ruleset, farm, &facts).is_some()
            || (farm.trust_loopback && mtac_ruleset::model::is_loopback(session.peer.ip()));
        let local = |domain: &str| {
            use mtac_ruleset::eval::Lookup;
            farm.local_domains.is_some_and(|t| ruleset.domain(t, domain).is_some())
        };
        let violation = crate::scan::mime(rules, &bytes, trusted, &local);
        drop(bytes);
        if let Some(v) = violation {
            return Err(refuse(v.code, v.enhanced, &v.text, v.rule));
        }
    }
    if farm.scanners.is_empty() {
        return Ok(String::new());
    }
    let envelope = crate::scan::Envelope {
        client: session.peer.ip().to_string(),
        helo: session.helo.clone().unwrap_or_default(),
        sender: session.txn.as_ref().map(|t| t.sender.clone()).unwrap_or_default(),
        recipients: session.txn.as_ref().map(|t| t.recipients.clone()).unwrap_or_default(),
        queue_id: session.id.clone(),
    };
    let asks = farm.scanners.iter().map(|scanner| {
        let (reader, envelope) = (&reader, &envelope);
        async move {
            let started = std::time::Instant::now();
            let result = crate::scan::ask(scanner, reader, message.sender_start, envelope).await;
            crate::scan::Outcome { scanner, result, elapsed: started.elapsed() }
        }
    });
    let outcomes = futures_util::future::join_all(asks).await;
    let metrics = &shared.metrics;
    for o in &outcomes {
        let scanner = crate::scan::kind_name(o.scanner.kind);
        let result = match &o.result {
            Ok(crate::scan::Finding::Clean) => "clean",
            Ok(crate::scan::Finding::Virus(name)) => {
                tracing::info!(session = %session.id, scanner, virus = name.as_str(), "virus found");
                metrics.viruses.get_or_create(&FarmLabel { farm: farm.name.clone() }).inc();
                "virus"
            }
            Ok(crate::scan::Finding::Score { score, .. }) => {
                metrics.spam_score.get_or_create(&ScannerLabel { scanner }).observe(*score);
                "scored"
            }
            Err(crate::scan::ScanError::Timeout(_)) => "timeout",
            Err(_) => "error",
        };
        if let Err(e) = &o.result {
            tracing::warn!(session = %session.id, scanner, error = %e, fail_open = o.scanner.fail_open, "scanner failed");
        }
        metrics.scans.get_or_create(&ScanResult { scanner, result }).inc();
        metrics.scan_seconds.get_or_create(&ScannerLabel { scanner }).observe(o.elapsed.as_secs_f64());
    }
    match crate::scan::combine(&outcomes, hostname) {
        crate::scan::Verdict::Pass { headers } => Ok(headers),
        crate::scan::Verdict::Refuse { code, enhanced, text, rule } => Err(refuse(code, enhanced, &text, rule)),
    }
}

/// What the client asked, for the decision's log line and metrics.
enum Asked {
    Connect,
    Helo(String),
    Mail(String),
    Rcpt(String),
    Data,
    Other,
}

impl Asked {
    fn of(command: &crate::smtp::Command) -> Asked {
        use crate::smtp::{Command, ForwardPath, ReversePath};
        match command {
            Command::Helo(name) | Command::Ehlo(name) => Asked::Helo(name.clone()),
            Command::Mail(mail) => Asked::Mail(match &mail.from {
                ReversePath::Null => String::new(),
                ReversePath::Mailbox(m) => m.to_string(),
            }),
            Command::Rcpt(rcpt) => Asked::Rcpt(match &rcpt.to {
                ForwardPath::Postmaster => "postmaster".to_owned(),
                ForwardPath::Mailbox(m) => m.to_string(),
            }),
            Command::Data => Asked::Data,
            _ => Asked::Other,
        }
    }

    /// The stage name (docs/session.md) used as a metric label.
    fn stage(&self) -> &'static str {
        match self {
            Asked::Connect => "connect",
            Asked::Helo(_) => "helo",
            Asked::Mail(_) => "mail",
            Asked::Rcpt(_) => "rcpt",
            Asked::Data => "data",
            Asked::Other => "other",
        }
    }
}

/// Log and count one answer: every refusal (with the rule that gave it) and every recipient
/// verdict. One line per decision, so an operator can answer "why was this refused?" from the
/// log alone. Message bodies and AUTH payloads are never logged.
fn decided(shared: &Shared, session: &mut Session, farm: &Farm, asked: &Asked, action: &Action) {
    let rule = session.take_rule();
    let reply = match action {
        Action::Reply(r) | Action::Close(r) => r,
        Action::StartTls(r) => r,
        Action::Recipient { .. }
        | Action::Greylist { .. }
        | Action::Directory { .. }
        | Action::Authenticate { .. }
        | Action::Data => return,
    };
    let refused = reply.is_transient() || reply.is_permanent();
    let metrics = &shared.metrics;
    if let Asked::Rcpt(_) = asked {
        let verdict = match (refused, reply.is_permanent()) {
            (false, _) => "accepted",
            (true, true) => "rejected",
            (true, false) => "deferred",
        };
        metrics.recipients.get_or_create(&Verdict { farm: farm.name.clone(), verdict }).inc();
    }
    if !refused {
        if let Asked::Rcpt(recipient) = asked {
            let sender = session.txn.as_ref().map_or("", |t| t.sender.as_str());
            tracing::info!(
                session = %session.id, client = %session.peer.ip(), helo = session.helo.as_deref().unwrap_or(""),
                sender, recipient = recipient.as_str(), stage = "rcpt", reply = %first_line(reply), "recipient accepted"
            );
        }
        return;
    }
    let rule = rule.unwrap_or_else(|| rules::PROTOCOL.to_owned());
    metrics.refusal(&farm.name, asked.stage(), reply.is_permanent(), &rule);
    let sender = match asked {
        Asked::Mail(sender) => sender.as_str(),
        _ => session.txn.as_ref().map_or("", |t| t.sender.as_str()),
    };
    let recipient = match asked {
        Asked::Rcpt(r) => r.as_str(),
        _ => "",
    };
    let helo = match asked {
        Asked::Helo(name) => name.as_str(),
        _ => session.helo.as_deref().unwrap_or(""),
    };
    tracing::info!(
        session = %session.id, client = %session.peer.ip(), helo, sender, recipient, stage = asked.stage(),
        rule = rule.as_str(), reply = %first_line(reply), "refused"
    );
}

/// Log and count the final answer to a message.
fn message_decided(shared: &Shared, session: &Session, farm: &Farm, reply: &Reply, reason: &'static str, size: u64) {
    let verdict = if reply.is_positive() {
        "accepted"
    } else if reply.is_permanent() {
        "rejected"
    } else {
        "deferred"
    };
    let metrics = &shared.metrics;
    metrics.messages.get_or_create(&MessageOutcome { farm: farm.name.clone(), verdict, reason }).inc();
    if reply.is_positive() {
        metrics.message_bytes.get_or_create(&FarmLabel { farm: farm.name.clone() }).inc_by(size);
    } else {
        metrics.refusal(&farm.name, "data", reply.is_permanent(), reason);
    }
    let (sender, recipients) = session.txn.as_ref().map_or(("", 0), |t| (t.sender.as_str(), t.recipients.len()));
    tracing::info!(
        session = %session.id, client = %session.peer.ip(), helo = session.helo.as_deref().unwrap_or(""),
        sender, recipients, size, stage = "data", verdict, reason, reply = %first_line(reply), "message"
    );
}

fn first_line(reply: &Reply) -> String {
    let text = reply.lines().first().map_or("", String::as_str);
    match reply.enhanced() {
        Some(e) => format!("{} {e} {text}", reply.code()),
        None => format!("{} {text}", reply.code()),
    }
}

fn relay_error(farm: &Farm, phase: &'static str, reply: &Reply) -> RelayError {
    RelayError { farm: farm.name.clone(), phase, kind: if reply.is_permanent() { "rejected" } else { "deferred" } }
}

/// Give up the back-end transaction and answer `reply`.
async fn abandon(txn: Option<Transaction<'_>>, reply: Reply) -> Reply {
    if let Some(t) = txn {
        t.abort().await;
    }
    reply
}

fn insufficient_storage() -> Reply {
    Reply::new(452, EnhancedCode::new(4, 3, 1), "Insufficient system storage, try again later")
        .unwrap_or_else(|_| Reply::local_error())
}

/// Hand the spooled message to the back end (or the maildir) and return its verdict.
async fn deliver(
    session: &Session,
    delivery: &Delivery<'_>,
    txn: Option<Transaction<'_>>,
    spool: &mut SpoolFile,
    hostname: &str,
    headers: String,
) -> Reply {
    match delivery {
        Delivery::Relay(_) => match txn {
            Some(t) => t.data(headers.as_bytes(), spool).await,
            None => Reply::new(451, EnhancedCode::new(4, 4, 0), "Back end transaction lost, try again later")
                .unwrap_or_else(|_| Reply::local_error()),
        },
        Delivery::Maildir(dir) => {
            let dir = dir.to_path_buf();
            let path = spool.path().to_path_buf();
            let sender = session.txn.as_ref().map(|t| t.sender.clone()).unwrap_or_default();
            let host = hostname.to_owned();
            let result = tokio::task::spawn_blocking(move || {
                crate::maildir::deliver(&dir, &path, headers.as_bytes(), &sender, &host)
            })
            .await;
            match result {
                Ok(Ok(_)) => Reply::new(250, EnhancedCode::new(2, 0, 0), &format!("Ok: delivered as {}", session.id))
                    .unwrap_or_else(|_| Reply::ok()),
                Ok(Err(e)) => {
                    tracing::error!(session = %session.id, error = %e, "maildir delivery failed");
                    Reply::new(451, EnhancedCode::new(4, 3, 0), "Local delivery failed, try again later")
                        .unwrap_or_else(|_| Reply::local_error())
                }
                Err(_) => Reply::local_error(),
            }
        }
    }
}
