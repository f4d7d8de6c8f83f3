//! One client connection: the I/O around a [`Session`], one room per phase.
//!
//! The driver reads bytes with a deadline per stage, frames command lines, hands parsed
//! commands to the session and carries out its [`Action`]s: replies are collected and written in
//! one batch when the client's pipelined input is used up (RFC 2920), recipients go to the back
//! end, DATA streams to the spool and then to the back end, and only the back end's verdict is
//! returned to the client.
//!
//! Phases, as docs/session.md names them: connect → greet → helo → starttls → auth → mail → rcpt
//! → data → scan → relay → log. This file keeps the connection (`Conn`: read, flush, close) and
//! the read→parse→session→act loop (`run`); the I/O of each phase lives in the room named after
//! it, so "where does the greylist round trip live?" has a file name for an answer:
//!
//! - `connect`: the session's task, built when the accept loop let the connection in;
//! - `greet`: the pregreet test (early talkers, remembered clients) and the connect stage;
//! - `prepare`: the lookups and rates a command's stage waits for (HELO, MAIL, RCPT);
//! - `starttls`: the TLS handshake, STARTTLS or implicit;
//! - `auth`: the credential check, its attempt budget and the ban at `max-failures`;
//! - `rcpt`: directory, greylist and back-end round trips, and what follows a refusal (ban, tarpit);
//! - `data`: DATA into the spool, the checks after it, delivery;
//! - `content`: the scan phase (MIME rules and scanners);
//! - `filters`: the milters at MAIL, RCPT and after the scan phase, and the HTTP hooks;
//! - `edited`: the milters' modifications made on what is relayed and on the recipients;
//! - `report`: the log phase, one line and one count per decision and per session.
//!
//! Every wait is bounded by the stage's timeout, measured from the start of the stage, so a
//! client trickling one byte at a time cannot stretch it.

mod auth;
mod chunks;
mod connect;
mod content;
mod data;
mod dialogue;
mod edited;
mod filters;
mod greet;
mod prepare;
mod rcpt;
mod report;
mod starttls;
mod verify;
mod wait;

pub use connect::{serve, Admission};
pub use prepare::rate_exceeded;

use crate::lookups::Lookups;
use crate::milter::live::LiveMilters;
use crate::relay::Transaction;
use crate::session::{Action, Session};
use crate::shared::{Delivery, Shared, Shutdown, Snapshot};
use crate::smtp::{parse, Frame, LineReader, Reply};
use crate::tls::SmtpStream;
use mtac_ruleset::model::Farm;
use report::Asked;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

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
    /// How a session closed by the session's own reply ended: QUIT's 221, the error limit's
    /// 421, or a refusal.
    fn of_close(reply: &Reply) -> End {
        if reply.code() == 221 {
            End::Quit
        } else if reply.code() == 421 {
            End::TooManyErrors
        } else {
            End::Refused
        }
    }

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
    /// Set once `mtac trace --dialogue` wants this session's lines.
    speaker: Option<Box<dialogue::Speaker>>,
}

impl Conn<'_> {
    async fn flush(&mut self, deadline: Instant) -> bool {
        if self.output.is_empty() {
            return true;
        }
        if let Some(speaker) = self.speaker.as_deref().filter(|_| dialogue::wanted()) {
            dialogue::replies(speaker, &self.output);
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

    /// What a read that brought no data means for the session: `None` for data (read on).
    /// A timeout or a shutdown gets its last reply; a closed or broken socket none.
    async fn ended_by(&mut self, read: Read, hostname: &str) -> Option<End> {
        match read {
            Read::Data => None,
            Read::Closed => Some(End::ClientClosed),
            Read::Error => Some(End::Io),
            Read::Timeout => Some(self.close(&Reply::timeout(hostname), End::Timeout).await),
            Read::Shutdown => Some(self.close(&Reply::shutting_down(hostname), End::Shutdown).await),
        }
    }

    fn reply(&mut self, reply: &Reply) {
        // Given back while the session waits (`between_commands`): one allocation, not a
        // doubling per line of an EHLO reply.
        if self.output.capacity() == 0 {
            self.output.reserve(512);
        }
        reply.write_to(&mut self.output);
    }

    /// Whether a plain connection has no input left unread, in our buffer or the socket's (a
    /// close with unread input sends RST, which could destroy the last reply). Reads at most
    /// one byte, which a lingering close would have thrown away anyway. Under TLS, never: the
    /// close_notify goes out with `shutdown`.
    fn nothing_unread(&mut self) -> bool {
        let SmtpStream::Plain(tcp) = &self.stream else { return false };
        if !self.input.is_empty() {
            return false;
        }
        let mut byte = [0u8; 1];
        match tcp.try_read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        }
    }

    /// Write a last reply and report how the session ended.
    async fn close(&mut self, reply: &Reply, end: End) -> End {
        self.reply(reply);
        let deadline = Instant::now() + Duration::from_secs(10);
        self.flush(deadline).await;
        if end == End::Quit && self.nothing_unread() {
            // The client asked to end and waits for nothing but the 221, which the kernel
            // sends before its FIN when the socket is dropped: no shutdown(2) and no wait for
            // the client's own FIN (two system calls and a wake-up per session, as Postfix's
            // smtpd also just closes after QUIT).
            return end;
        }
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

/// What every phase of one session reads: the ruleset snapshot it started with and its farm.
struct Ctx<'a> {
    snapshot: &'a Snapshot,
    farm_index: usize,
    farm: &'a Farm,
    /// The policy's host name, for the replies the driver writes itself.
    hostname: &'a str,
    /// How long a command may take to arrive, and the handshake after STARTTLS.
    command_timeout: Duration,
}

/// The read→parse→session→act loop: greet, then one command (or SASL line) at a time until the
/// session ends. Each [`Action`] is handled in the room of its phase.
///
/// **Invariant: an idle session holds no read buffer and no command's state.** Between
/// commands this future is small (`wait::between_commands`, no buffer); the work of a command
/// runs in a boxed future, allocated when the client's bytes arrive and freed before the next
/// wait. A future's size is its largest await's (the message's, the milters', TLS…), so a
/// session that waited inside them would pin ~14 KB for as long as it stays idle. (An `async`
/// block, not an `async fn`, for the same reason: the fn would keep its arguments twice.)
// The async fn clippy suggests is what this avoids (see above).
#[allow(clippy::manual_async_fn)]
fn run<'a, 'c, 's>(
    conn: &'a mut Conn<'c>,
    session: &'a mut Session,
    ctx: &'a Ctx<'s>,
    lookups: &'a mut Option<Box<Lookups>>,
) -> impl std::future::Future<Output = End> + use<'a, 'c, 's> {
    async move {
        if let Err(end) = Box::pin(greet::greet(conn, session, ctx, lookups)).await {
            return end;
        }
        let mut state = Between {
            relay: ctx.snapshot.delivery(ctx.farm_index),
            lines: LineReader::new(usize::try_from(ctx.farm.limits.line_length).unwrap_or(usize::MAX)),
            txn: None,
            transfer: None,
            deadline: Instant::now() + ctx.command_timeout,
            milters: LiveMilters::new(&ctx.farm.filters),
        };
        let end = loop {
            if conn.input.is_empty() {
                let in_transaction = session.transaction().is_some();
                match conn.between_commands(state.deadline, in_transaction).await {
                    Read::Data => {}
                    read => break Box::pin(conn.ended_by(read, ctx.hostname)).await.unwrap_or(End::Io),
                }
            }
            if let Err(end) = Box::pin(commands(conn, session, ctx, lookups, &mut state)).await {
                break end;
            }
        };
        Box::pin(state.finish()).await;
        end
    }
}

/// What lives from one command to the next, beside the session.
struct Between<'r> {
    relay: Delivery<'r>,
    lines: LineReader,
    /// The back end's side of the transaction, from the first RCPT to the end of DATA (boxed:
    /// 104 bytes an idle session does not need).
    txn: Option<Box<Transaction<'r>>>,
    /// This client's place among the transfers in flight, held from MAIL to the end of DATA.
    transfer: Option<crate::transfers::TransferSlot>,
    /// When the next command must have arrived.
    deadline: Instant,
    /// The session's milter conversations, opened at its first MAIL FROM.
    milters: LiveMilters,
}

impl Between<'_> {
    /// The session is over: the back end and the milters are told.
    async fn finish(mut self) {
        if let Some(t) = self.txn.take() {
            (*t).abort().await;
        }
        self.milters.quit().await;
    }
}

/// The commands the client's input holds (at least one; reading on for a command's rest),
/// until the input is used up. `Err`: the session is over.
async fn commands(
    conn: &mut Conn<'_>,
    session: &mut Session,
    ctx: &Ctx<'_>,
    lookups: &mut Option<Box<Lookups>>,
    state: &mut Between<'_>,
) -> Result<(), End> {
    let Between { relay, lines, txn, transfer, deadline, milters } = state;
    loop {
        let (asked, action) = next_action(conn, session, ctx, lines, lookups, transfer, *deadline).await?;
        // Each command's rarer or bigger work is boxed where it happens, so this future (boxed
        // for every batch of commands, `run`) stays a few KB: inlined, the relay,
        // DATA and STARTTLS made it tens of KB, allocated and copied for every command.
        let action = if action.needs_round_trip() {
            Box::pin(round_trips(conn.shared, session, ctx, relay, txn, action, milters)).await
        } else {
            action
        };
        // Before anything can end the session: its last decisions are journaled too.
        report::journal(conn.shared, session);
        let action = mail_filtered(conn.shared, session, ctx, &asked, action, milters).await;
        rcpt::after_answer(conn, session, ctx, &action).await?;
        report::decided(conn.shared, session, ctx.farm, &asked, &action);
        report::shadowed(conn.shared, session, ctx.farm);
        report::ruleset_changes(conn.shared, session, ctx.farm);
        act(conn, session, ctx, relay, txn, action, lookups, milters).await?;
        // RSET, a new EHLO, or a refused transaction: release the back end connection and the
        // client's place among the transfers in flight.
        if session.transaction().is_none() {
            *transfer = None;
            if let Some(t) = txn.take() {
                Box::pin((*t).abort()).await;
            }
            if milters.in_transaction() {
                Box::pin(milters.end_transaction()).await;
            }
        }
        // The next command's time starts now, not before we waited on the back end.
        *deadline = Instant::now() + ctx.command_timeout;
        if conn.input.is_empty() {
            return Ok(());
        }
    }
}

/// MAIL FROM the policy accepted goes to the milters before the client hears 250: a milter's
/// refusal answers MAIL instead (and the transaction does not open).
async fn mail_filtered(
    shared: &Shared,
    session: &mut Session,
    ctx: &Ctx<'_>,
    asked: &Asked,
    action: Action,
    milters: &mut LiveMilters,
) -> Action {
    let accepted = matches!(&action, Action::Reply { reply, .. } if reply.is_positive());
    if !matches!(asked, Asked::Mail(_)) || !accepted || session.transaction().is_none() || milters.is_empty() {
        return action;
    }
    match Box::pin(filters::mail_stage(shared, session, ctx.farm, ctx.hostname, milters)).await {
        Some((reply, rule)) => session.sender_filtered(reply, rule),
        None => action,
    }
}

/// Carry out the session's answer, each in the room of its phase. `Err`: the session is over.
#[allow(clippy::too_many_arguments)]
async fn act<'r>(
    conn: &mut Conn<'_>,
    session: &mut Session,
    ctx: &Ctx<'_>,
    relay: &Delivery<'r>,
    txn: &mut Option<Box<Transaction<'r>>>,
    action: Action,
    lookups: &mut Option<Box<Lookups>>,
    milters: &mut LiveMilters,
) -> Result<(), End> {
    match action {
        Action::Reply { reply, .. } => {
            conn.reply(&reply);
            Ok(())
        }
        Action::Close { reply, .. } => Err(Box::pin(conn.close(&reply, End::of_close(&reply))).await),
        Action::Data | Action::Chunks { .. } => {
            // MAIL FROM's SPF check, for Authentication-Results and DMARC (awaited if it is
            // still running: it started at MAIL FROM).
            let spf = match lookups.as_mut() {
                Some(l) => l.spf_check().await.cloned(),
                None => None,
            };
            let source = match action {
                Action::Chunks { size, last } => data::Source::Chunks { size, last },
                _ => data::Source::Data,
            };
            Box::pin(data::transaction(
                conn,
                session,
                ctx,
                relay,
                txn.take().map(|t| *t),
                spf.as_ref(),
                source,
                milters,
            ))
            .await
        }
        Action::StartTls(reply) => Box::pin(starttls::upgrade(conn, session, ctx, &reply)).await,
        // Made by `round_trips` before we get here.
        Action::Recipient { .. } | Action::Greylist { .. } | Action::Directory { .. } | Action::Authenticate { .. } => {
            Ok(())
        }
    }
}

/// A framed line: a command still to decide, or an answer already known.
enum Prepared {
    Command(crate::smtp::Command),
    Done(Action),
}

/// Read until a whole line is framed (writing the replies waiting for it first: pipelining) and
/// hand it to the session: what the client asked, and the session's answer or the round trip it
/// needs first.
async fn next_action(
    conn: &mut Conn<'_>,
    session: &mut Session,
    ctx: &Ctx<'_>,
    lines: &mut LineReader,
    lookups: &mut Option<Box<Lookups>>,
    transfer: &mut Option<crate::transfers::TransferSlot>,
    deadline: Instant,
) -> Result<(Asked, Action), End> {
    loop {
        let framed = lines.read(&conn.input);
        let consumed = framed.consumed;
        if let (Frame::Line(line), true) = (&framed.frame, dialogue::wanted()) {
            let speaker = conn
                .speaker
                .get_or_insert_with(|| dialogue::Speaker::new(session.id(), session.peer().ip(), &ctx.farm.name));
            dialogue::command(speaker, line, session.in_sasl());
        }
        let prepared = match framed.frame {
            Frame::NeedMore => {
                conn.input.drain(..consumed);
                if !conn.flush(deadline).await {
                    return Err(End::Io);
                }
                let read = conn.read(deadline, session.transaction().is_some()).await;
                match conn.ended_by(read, ctx.hostname).await {
                    None => continue,
                    Some(end) => return Err(end),
                }
            }
            Frame::TooLong => Prepared::Done(session.line_too_long()),
            // A SASL exchange: the line is the client's base64 answer, not a command.
            Frame::Line(line) if session.in_sasl() => Prepared::Done(session.sasl_line(line)),
            Frame::Line(line) => match (parse(line), ctx.farm.screen.pipelining.as_ref()) {
                // Input behind a command whose reply it had to wait for (RFC 2920 3.1; no
                // PIPELINING offered: behind any command) was written without reading us: the
                // message behind a DATA before its 354 is how smuggling attempts look.
                (Ok(command), Some(refusal)) if conn.input.len() > consumed && session.must_end_group(&command) => {
                    conn.shared.metrics.pipelining_refused.get_or_create(&greet::farm_label(ctx)).inc();
                    Prepared::Done(session.improper_pipelining(refusal))
                }
                (Ok(command), _) => Prepared::Command(command),
                (Err(e), _) => Prepared::Done(session.parse_error(&e)),
            },
        };
        conn.input.drain(..consumed);
        return Ok(match prepared {
            Prepared::Done(action) => (Asked::Other, action),
            Prepared::Command(command) => {
                let asked = Asked::of(&command);
                let chunk = match command {
                    crate::smtp::Command::Bdat { size, .. } => Some(size),
                    _ => None,
                };
                let action =
                    prepare::prepare(&command, session, ctx.farm, conn.shared, lookups, transfer, ctx.hostname)
                        .await
                        .unwrap_or_else(|| session.command(command, &ctx.snapshot.ruleset, ctx.farm));
                if let (Some(size), false) = (chunk, matches!(action, Action::Chunks { .. } | Action::Close { .. })) {
                    // A refused BDAT's octets follow it all the same: read and drop them (unless
                    // the session closes anyway).
                    let deadline = Instant::now() + Duration::from_secs(u64::from(session.limits().timeouts.data));
                    chunks::discard(conn, size, deadline, ctx.hostname).await?;
                }
                (asked, action)
            }
        });
    }
}

/// Make the round trips the session asked for — credentials, directory, greylist store, back
/// end — each answer handed back to it, until it has a reply for the client.
async fn round_trips<'r>(
    shared: &Shared,
    session: &mut Session,
    ctx: &Ctx<'_>,
    relay: &Delivery<'r>,
    txn: &mut Option<Box<Transaction<'r>>>,
    mut action: Action,
    milters: &mut LiveMilters,
) -> Action {
    loop {
        action = match action {
            Action::Authenticate { user, password } => {
                let cache = ctx.snapshot.login_cache(ctx.farm_index);
                Box::pin(auth::authenticate(shared, session, ctx.farm, cache, user, password)).await
            }
            Action::Directory { address } => {
                let answer =
                    Box::pin(rcpt::ask_directory(shared, ctx.snapshot, ctx.farm_index, ctx.farm, session, &address))
                        .await;
                session.directory_result(&ctx.snapshot.ruleset, ctx.farm, address, answer)
            }
            Action::Greylist { address } => {
                let fail_open = crate::state::Store::fail_open(&ctx.snapshot.ruleset.policy().state);
                let answer = Box::pin(rcpt::greylist(shared, session, ctx.farm, &address, fail_open)).await;
                session.greylist_result(address, answer)
            }
            // The milters hear of a recipient the policy accepted before the back end does: one
            // they refuse is never given to it.
            Action::Recipient { address } => {
                match filters::rcpt_stage(shared, session, ctx.farm, ctx.hostname, milters, &address).await {
                    Some((reply, rule)) => session.refuse(reply, rule),
                    None => rcpt::recipient(shared, session, ctx.farm, relay, txn, address).await,
                }
            }
            answer => return answer,
        };
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    /// Issue 15: the connection's I/O is one room per phase, none of them a hub again. A file
    /// growing past this size is the sign that a phase hides another one.
    #[test]
    fn issue15_conn_rooms_stay_small() {
        const MAX_LINES: usize = 600;
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/conn");
        let mut rooms = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let lines = std::fs::read_to_string(&path).unwrap().lines().count();
            assert!(lines <= MAX_LINES, "{} has {lines} lines (at most {MAX_LINES})", path.display());
            rooms += 1;
        }
        assert!(rooms >= 8, "expected mod.rs and one file per phase in {}, found {rooms}", dir.display());
        assert!(!dir.with_extension("rs").exists(), "conn.rs is back beside conn/");
    }
}
