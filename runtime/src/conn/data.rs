//! The data phase and what follows it: DATA (or BDAT's chunks, `chunks.rs`) streams into the spool (the sender's verdict
//! headers filtered out on the way, the spool's byte budget taken as bytes arrive), the checks
//! after DATA (size, bare line ends, the budget, `auth header-from`), the scan phase
//! ([`super::content`]), then the relay phase: the DKIM signature (`dkim-sign`) put in front,
//! and the back end's (or the maildir's) verdict is the client's answer. **Invariant: the spool file is written once**, and only ever holds what the
//! back end may see.

use super::chunks::Between;
use super::content::{content_checks, SpooledMessage};
use super::filters::Filtered;
use super::report::{message_decided, relay_error, Answer};
use super::{Conn, Ctx, End, READ_STEP};
use crate::dkim_sign::{FarmSigner, SignError};
use crate::metrics::{DkimSigning, FarmLabel};
use crate::milter::live::LiveMilters;
use crate::received::{self, Trace};
use crate::relay::Transaction;
use crate::relayed::Relayed;
use crate::session::{Action, Session};
use crate::shared::{Delivery, Shared};
use crate::smtp::{BarePolicy as SmtpBare, Command, DataReceiver, EnhancedCode, LineReader, Reply, VerdictFilter};
use crate::spool;
use crate::state::Timings;
use mtac_ruleset::model::{BarePolicy, Farm};
use mtac_ruleset::rules;
use std::time::Duration;
use tokio::time::Instant;

/// Spool writes are batched to this size.
const SPOOL_CHUNK: usize = 64 * 1024;

/// How the message comes: after DATA's 354, dot-terminated, or in BDAT chunks (RFC 3030), the
/// first one's size and LAST flag given.
#[derive(Debug, Clone, Copy)]
pub(super) enum Source {
    Data,
    Chunks { size: u64, last: bool },
}

/// `Action::Data` or `Action::Chunks`: receive the message, deliver it, log and count the
/// answer, and end the transaction. `Err(end)` means the connection is over.
#[allow(clippy::too_many_arguments)]
pub(super) async fn transaction(
    conn: &mut Conn<'_>,
    session: &mut Session,
    ctx: &Ctx<'_>,
    delivery: &Delivery<'_>,
    txn: Option<Transaction<'_>>,
    spf: Option<&crate::sender_auth::SpfCheck>,
    source: Source,
    milters: &mut LiveMilters,
) -> Result<(), End> {
    let farm = ctx.farm;
    let signer = ctx.snapshot.signer(ctx.farm_index);
    let Some(answer) = receive(conn, session, ctx, signer, delivery, txn, spf, source, milters).await? else {
        // RSET between two chunks: the session forgets the transaction and answers it.
        if let Action::Reply { reply, .. } = session.command(Command::Rset, &ctx.snapshot.ruleset, farm) {
            conn.reply(&reply);
        }
        return Ok(());
    };
    message_decided(conn.shared, session, farm, &answer);
    let reply = answer.reply;
    if reply.is_positive() {
        count_delivery(conn.shared, session, farm);
    }
    match session.message_answered(reply) {
        Action::Close { reply, .. } => return Err(conn.close(&reply, End::TooManyErrors).await),
        Action::Reply { reply, .. } => conn.reply(&reply),
        _ => {}
    }
    Ok(())
}

/// Receive DATA or BDAT chunks into the spool and deliver it. `Ok(Some)` is the final answer,
/// `Ok(None)` a RSET between chunks; `Err(end)` means the connection is over.
#[allow(clippy::too_many_arguments)]
async fn receive(
    conn: &mut Conn<'_>,
    session: &mut Session,
    ctx: &Ctx<'_>,
    signer: Option<&FarmSigner>,
    delivery: &Delivery<'_>,
    mut txn: Option<Transaction<'_>>,
    spf: Option<&crate::sender_auth::SpfCheck>,
    source: Source,
    milters: &mut LiveMilters,
) -> Result<Option<Answer>, End> {
    let (farm, ruleset, hostname) = (ctx.farm, &ctx.snapshot.ruleset, ctx.hostname);
    let Some(envelope) = session.transaction() else {
        return Ok(Some((Reply::bad_sequence("need MAIL command"), rules::PROTOCOL, 0).into()));
    };
    let mut spool = match conn.shared.spool.create(session.id()).await {
        Ok(file) => file,
        Err(e) => {
            tracing::error!(session = %session.id(), error = %e, "spool: cannot create a file");
            if let Some(t) = txn {
                t.abort().await;
            }
            return Ok(Some((insufficient_storage(), rules::SPOOL, 0).into()));
        }
    };
    let data_deadline = Instant::now() + Duration::from_secs(u64::from(session.limits().timeouts.data));
    // BDAT: the octets left of the current chunk, and whether it is the last.
    let (mut chunk_left, mut last_chunk, chunked) = match source {
        Source::Data => (0, false, false),
        Source::Chunks { size, last } => (size, last, true),
    };
    let mut chunk_size = chunk_left;
    let mut lines = LineReader::new(usize::try_from(farm.limits.line_length).unwrap_or(usize::MAX));
    if !chunked {
        conn.reply(&Reply::start_data());
        if !conn.flush(data_deadline).await {
            return Err(End::Io);
        }
    }
    let trace = received::header(&Trace {
        helo: session.helo(),
        client: session.peer().ip(),
        hostname,
        esmtp: session.esmtp(),
        smtputf8: envelope.smtputf8,
        id: session.id(),
        recipient: match envelope.recipients.as_slice() {
            [one] => Some(one.as_str()),
            _ => None,
        },
        tls: session.tls(),
        authenticated: session.authenticated().is_some(),
    });
    let bare = match farm.bare_line_ends {
        BarePolicy::Reject => SmtpBare::Reject,
        BarePolicy::Normalize => SmtpBare::Normalize,
    };
    let mut receiver = if chunked {
        DataReceiver::chunked(farm.limits.message_size, bare)
    } else {
        DataReceiver::new(farm.limits.message_size, bare)
    };
    // The sender's copies of our verdict headers go while the message streams into the spool:
    // the file is written once, and only ever holds what the back end may see.
    let mut verdicts = VerdictFilter::new(&farm.verdict_headers);
    // The header section's bytes on their way through the filter (cleared after each read):
    // sized once for a common header section rather than grown line by line.
    let mut content = Vec::with_capacity(4096);
    let mut chunk = Vec::with_capacity(SPOOL_CHUNK.min(16 * 1024));
    chunk.extend_from_slice(trace.as_bytes());
    let sender_start = chunk.len() as u64;
    let mut spool_error: Option<std::io::Error> = None;
    loop {
        // A chunk's octets end where its size says; what follows is the next command.
        let available = if chunked {
            conn.input.len().min(usize::try_from(chunk_left).unwrap_or(usize::MAX))
        } else {
            conn.input.len()
        };
        let input = conn.input.get(..available).unwrap_or_default();
        let in_body = verdicts.in_body();
        let target = if in_body { &mut chunk } else { &mut content };
        let mut progress = receiver.feed(input, target);
        if chunked {
            chunk_left = chunk_left.saturating_sub(progress.consumed as u64);
            if chunk_left == 0 && last_chunk {
                receiver.end_chunks(target);
                progress.done = true;
            }
        }
        if !in_body {
            verdicts.feed(&content, &mut chunk);
            content.clear();
            if progress.done {
                verdicts.finish(&mut chunk);
            }
        }
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
        if chunked && chunk_left == 0 {
            // A chunk read whole, not the last: refuse the message now if it already broke a
            // rule (its later chunks then meet a session without a transaction: 503, octets
            // dropped), else acknowledge it and wait for the next.
            if let Err(e) = receiver.check() {
                let reason = match e {
                    crate::smtp::DataError::BareLineEnding { .. } => rules::BARE_LINE_END,
                    crate::smtp::DataError::TooLarge { .. } => rules::SIZE,
                };
                return Ok(Some((abandon(txn, e.reply()).await, reason, receiver.stats().size).into()));
            }
            conn.reply(&chunk_received(chunk_size));
            match super::chunks::between(conn, &mut lines, data_deadline, hostname).await? {
                Between::Chunk { size, last } => {
                    (chunk_left, last_chunk, chunk_size) = (size, last, size);
                    continue;
                }
                Between::Reset => {
                    abandon(txn, Reply::ok()).await;
                    return Ok(None);
                }
                Between::Quit => {
                    abandon(txn, Reply::ok()).await;
                    return Err(conn.close(&Reply::closing(), End::Quit).await);
                }
            }
        }
        if let Some(t) = txn.as_mut() {
            // Back ends drop idle clients (Postfix after 300 s): keep the transaction alive while
            // a slow client uploads.
            t.keepalive().await;
        }
        let read = conn.read_chunk(data_deadline, true, SPOOL_CHUNK).await;
        if let Some(end) = conn.ended_by(read, hostname).await {
            return Err(end);
        }
    }
    // The input buffer may have grown with a large message: give the memory back.
    conn.input.shrink_to(READ_STEP);
    // What the sender sent: the size every limit is about (our Received header is ours).
    let size = receiver.stats().size;
    if verdicts.removed() > 0 {
        tracing::info!(session = %session.id(), fields = verdicts.removed(), rename = farm.verdict_headers.rename, "sender's verdict headers removed");
        conn.shared.metrics.verdict_headers_removed.inc_by(u64::from(verdicts.removed()));
    }
    if let Err(e) = receiver.check() {
        let reason = match e {
            crate::smtp::DataError::BareLineEnding { .. } => rules::BARE_LINE_END,
            crate::smtp::DataError::TooLarge { .. } => rules::SIZE,
        };
        return Ok(Some((abandon(txn, e.reply()).await, reason, size).into()));
    }
    if let Some(e) = spool_error {
        let over_budget = e.kind() == std::io::ErrorKind::StorageFull;
        if over_budget {
            tracing::warn!(session = %session.id(), budget = conn.shared.spool.budget(), "spool: budget of bytes in flight used up");
        } else {
            tracing::error!(session = %session.id(), error = %e, full = spool::is_full(&e), "spool: write failed");
        }
        let reason = if over_budget { rules::SPOOL_BUDGET } else { rules::SPOOL };
        return Ok(Some((abandon(txn, insufficient_storage()).await, reason, size).into()));
    }
    if let Err(e) = spool.flush().await {
        tracing::error!(session = %session.id(), error = %e, "spool: flush failed");
        return Ok(Some((abandon(txn, insufficient_storage()).await, rules::SPOOL, size).into()));
    }
    if let Some(refusal) = header_from_refusal(session, farm, ruleset, &verdicts) {
        return Ok(Some((abandon(txn, refusal).await, rules::AUTH_HEADER_FROM, size).into()));
    }
    let message = SpooledMessage { size, sender_start };
    // Sender authentication (`spf`, `dkim`, `dmarc`): its verdicts go on the log line whatever
    // the answer.
    let checked = match super::verify::sender_auth(conn.shared, session, ctx, &spool, message, spf, &verdicts).await {
        Ok(checked) => checked,
        Err((reply, rule, auth)) => {
            let reply = abandon(txn, reply).await;
            return Ok(Some(Answer { reply, reason: rule, size, signed: None, auth }));
        }
    };
    let auth = checked.summary;
    let mut headers = match content_checks(conn.shared, session, farm, ruleset, &spool, message, hostname).await {
        // Authentication-Results first: RFC 8601 5 puts the newest trace field on top.
        Ok(headers) => checked.header + &headers,
        Err((reply, rule)) => {
            let reply = abandon(txn, reply).await;
            return Ok(Some(Answer { reply, reason: rule, size, signed: None, auth }));
        }
    };
    let (edits, body) = match super::filters::run_filters(conn.shared, session, farm, &spool, hostname, milters).await {
        Filtered::Pass { headers: added, edits, body } => {
            headers.insert_str(0, &added);
            (edits, body)
        }
        Filtered::Discard => {
            abandon(txn, Reply::ok()).await;
            let reply = Reply::new(250, EnhancedCode::new(2, 0, 0), "Ok: discarded").unwrap_or_else(|_| Reply::ok());
            return Ok(Some(Answer { reply, reason: "discarded", size, signed: None, auth }));
        }
        Filtered::Refuse(reply, rule) => {
            let reply = abandon(txn, reply).await;
            return Ok(Some(Answer { reply, reason: rule, size, signed: None, auth }));
        }
    };
    // What is relayed: the spool file, or the milters' edits over it.
    let mut relayed = match super::edited::relayed(session, farm, &spool, &edits, body) {
        Ok(relayed) => relayed,
        Err((reply, rule)) => {
            let reply = abandon(txn, reply).await;
            return Ok(Some(Answer { reply, reason: rule, size, signed: None, auth }));
        }
    };
    let txn = match super::edited::recipients(session, ctx, delivery, txn, &edits).await {
        Ok(txn) => txn,
        Err((reply, rule)) => return Ok(Some(Answer { reply, reason: rule, size, signed: None, auth })),
    };
    // Signed last, over exactly what is relayed (our header lines and the edited message).
    let signed = match dkim_sign(conn.shared, session, farm, signer, &verdicts, &relayed, &mut headers).await {
        Ok(signed) => signed,
        Err(reply) => {
            let reply = abandon(txn, reply).await;
            return Ok(Some(Answer { reply, reason: rules::DKIM_SIGN, size, signed: None, auth }));
        }
    };
    let started = std::time::Instant::now();
    let reply = deliver(session, delivery, txn, &mut relayed, hostname, headers).await;
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
    Ok(Some(Answer { reply, reason, size, signed, auth }))
}

/// A delivered message counts toward its client's auto-whitelisting (in the background: the
/// client has its answer already).
fn count_delivery(shared: &Shared, session: &Session, farm: &Farm) {
    let (Some(settings), Some(store), Some(client)) =
        (&farm.greylist, shared.state.clone(), session.greylist_client().map(str::to_owned))
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
    if session.authenticated().is_none() || !farm.auth.as_ref().is_some_and(|a| a.header_from_owned) {
        return None;
    }
    let (addresses, fields) = from_addresses(verdicts);
    let owned = fields > 0
        && verdicts.from_complete()
        && !addresses.is_empty()
        && addresses.iter().all(|a| session.owns(a, ruleset, farm));
    if owned {
        return None;
    }
    let shown: String = addresses.join(", ").chars().filter(|c| !c.is_control()).take(100).collect();
    tracing::info!(session = %session.id(), user = session.authenticated().unwrap_or(""), from = shown.as_str(), fields, "header From not owned by the user");
    Some(
        Reply::new(
            550,
            EnhancedCode::new(5, 7, 1),
            "Message rejected: From header not owned by the authenticated user",
        )
        .unwrap_or_else(|_| Reply::local_error()),
    )
}

/// What the node itself read of the message's author, for DMARC (`super::verify`): how many
/// From fields, whether all their text was kept, and the distinct domains of their addresses.
pub(super) fn author(verdicts: &VerdictFilter<'_>) -> super::verify::Author {
    let (addresses, fields) = from_addresses(verdicts);
    let mut domains: Vec<String> =
        addresses.iter().filter_map(|a| a.rsplit_once('@')).map(|(_, d)| d.to_ascii_lowercase()).collect();
    domains.sort();
    domains.dedup();
    super::verify::Author { fields, complete: verdicts.from_complete(), domains }
}

/// The addresses of the message's From fields (collected by the verdict filter while the
/// message streamed in), and how many From fields it had.
fn from_addresses(verdicts: &VerdictFilter<'_>) -> (Vec<String>, u32) {
    let (values, fields) = verdicts.from();
    let mut field = b"From:".to_vec();
    field.extend_from_slice(values);
    field.extend_from_slice(b"\r\n\r\n");
    let parsed = mail_parser::MessageParser::default().parse_headers(&field);
    let addresses = parsed
        .as_ref()
        .and_then(|m| m.from())
        .map(|from| from.iter().filter_map(|a| a.address().map(str::to_owned)).collect())
        .unwrap_or_default();
    (addresses, fields)
}

/// The relay phase's DKIM signature (`dkim-sign`; the decision is `eval::dkim_signing`'s): the
/// `DKIM-Signature` field goes in front of `headers`, over exactly what is relayed. `Ok(Some)`
/// names the signing domain; `Err` is the 451 for a signature that should have been made and
/// could not (the message is never relayed unsigned then).
async fn dkim_sign(
    shared: &Shared,
    session: &Session,
    farm: &Farm,
    signer: Option<&FarmSigner>,
    verdicts: &VerdictFilter<'_>,
    relayed: &Relayed,
    headers: &mut String,
) -> Result<Option<String>, Reply> {
    use mtac_ruleset::eval::{dkim_signing, Signing};
    if farm.dkim_sign.is_none() || session.authenticated().is_none() {
        return Ok(None);
    }
    let (from, _) = from_addresses(verdicts);
    // A From header longer than the filter keeps may name more than it shows: never sign it.
    let from = if verdicts.from_complete() { from } else { Vec::new() };
    let count = |result: &'static str| {
        shared.metrics.dkim_signatures.get_or_create(&DkimSigning { farm: farm.name.clone(), result }).inc();
    };
    let key = match dkim_signing(farm.dkim_sign.as_ref(), session.authenticated().is_some(), &from) {
        Signing::Off => return Ok(None),
        Signing::NoKey => {
            count("no-key");
            return Ok(None);
        }
        Signing::Key(key) => key,
    };
    let signature = match (signer, relayed.reading_copy()) {
        (Some(signer), Ok(message)) => signer.sign(&key.domain, headers.as_bytes(), message).await,
        (None, _) => Err(SignError::Sign("the farm's keys are not loaded".into())),
        (_, Err(e)) => Err(e.into()),
    };
    match signature {
        Ok(field) => {
            count("signed");
            headers.insert_str(0, &field);
            Ok(Some(key.domain.clone()))
        }
        Err(e) => {
            count("failed");
            tracing::error!(session = %session.id(), domain = key.domain.as_str(), error = %e, "DKIM signing failed");
            Err(Reply::new(451, EnhancedCode::new(4, 3, 0), "Cannot sign the message, try again later")
                .unwrap_or_else(|_| Reply::local_error()))
        }
    }
}

/// Give up the back-end transaction and answer `reply`.
async fn abandon(txn: Option<Transaction<'_>>, reply: Reply) -> Reply {
    if let Some(t) = txn {
        t.abort().await;
    }
    reply
}

/// `250 2.0.0 N octets received`: a BDAT chunk that was not the last (RFC 3030 §4.2).
fn chunk_received(size: u64) -> Reply {
    Reply::new(250, EnhancedCode::new(2, 0, 0), &format!("{size} octets received")).unwrap_or_else(|_| Reply::ok())
}

pub(super) fn insufficient_storage() -> Reply {
    Reply::new(452, EnhancedCode::new(4, 3, 1), "Insufficient system storage, try again later")
        .unwrap_or_else(|_| Reply::local_error())
}

/// Hand the spooled message to the back end (or the maildir) and return its verdict.
async fn deliver(
    session: &Session,
    delivery: &Delivery<'_>,
    txn: Option<Transaction<'_>>,
    relayed: &mut Relayed,
    hostname: &str,
    headers: String,
) -> Reply {
    match delivery {
        Delivery::Relay(_) => match txn {
            Some(t) => t.data(headers.as_bytes(), relayed).await,
            None => Reply::new(451, EnhancedCode::new(4, 4, 0), "Back end transaction lost, try again later")
                .unwrap_or_else(|_| Reply::local_error()),
        },
        Delivery::Maildir(dir) => {
            let dir = dir.to_path_buf();
            let content = match relayed.reading_copy() {
                Ok(content) => content,
                Err(_) => return Reply::local_error(),
            };
            let sender = session.transaction().map(|t| t.sender.clone()).unwrap_or_default();
            let host = hostname.to_owned();
            let result = tokio::task::spawn_blocking(move || {
                crate::maildir::deliver(&dir, content, headers.as_bytes(), &sender, &host)
            })
            .await;
            match result {
                Ok(Ok(_)) => Reply::new(250, EnhancedCode::new(2, 0, 0), &format!("Ok: delivered as {}", session.id()))
                    .unwrap_or_else(|_| Reply::ok()),
                Ok(Err(e)) => {
                    tracing::error!(session = %session.id(), error = %e, "maildir delivery failed");
                    Reply::new(451, EnhancedCode::new(4, 3, 0), "Local delivery failed, try again later")
                        .unwrap_or_else(|_| Reply::local_error())
                }
                Err(_) => Reply::local_error(),
            }
        }
    }
}
