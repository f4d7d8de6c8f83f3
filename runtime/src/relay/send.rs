//! The message itself: the spooled content sent as BDAT chunks (RFC 3030) to a back end that
//! offers CHUNKING, else as dot-stuffed DATA, and the back end's verdict read (one reply per
//! recipient on LMTP).
//!
//! The spool holds normalised content (no bare CR or LF, `smtp::data`), so both forms carry
//! the same bytes: BDAT sends them as they are, DATA dot-stuffs them and adds the end marker.

use super::{BackendReply, Connection, RelayError};
use crate::relayed::Relayed;
use crate::smtp::DotStuffer;
use mtac_ruleset::model::BackendProtocol;
use std::io::Write;
use std::time::Duration;

/// Chunk size when streaming the spool file (one BDAT chunk each).
const CHUNK: usize = 64 * 1024;

/// Send `headers` then the message (the spool file, or the milters' edits over it); the back end's verdict (a refusal of DATA or of a
/// chunk stands in for it).
pub(super) async fn message(
    conn: &mut Connection,
    headers: &[u8],
    spool: &mut Relayed,
    recipients: usize,
    timeout: Duration,
) -> Result<BackendReply, RelayError> {
    let sent = if conn.caps.chunking {
        chunks(conn, headers, spool, timeout).await?
    } else {
        data(conn, headers, spool, timeout).await?
    };
    if let Some(refusal) = sent {
        return Ok(refusal);
    }
    let verdict = match conn.protocol {
        BackendProtocol::Smtp => conn.reply(timeout).await,
        BackendProtocol::Lmtp => {
            // One reply per recipient. mtac sends one recipient per LMTP transaction (see
            // ARCHITECTURE.md), so this is one reply; should there be more, the worst one counts.
            let mut worst: Option<BackendReply> = None;
            for _ in 0..recipients.max(1) {
                let reply = conn.reply(timeout).await?;
                if worst.as_ref().is_none_or(|w| reply.code > w.code) {
                    worst = Some(reply);
                }
            }
            worst.ok_or_else(|| RelayError::Protocol("no LMTP reply".to_owned()))
        }
    }?;
    if !(verdict.code == 250 || verdict.code >= 400) {
        return Err(RelayError::Protocol(format!("the message was answered {}", verdict.code)));
    }
    Ok(verdict)
}

/// DATA, dot-stuffed. `Ok(Some)`: DATA itself was refused.
async fn data(
    conn: &mut Connection,
    headers: &[u8],
    spool: &mut Relayed,
    timeout: Duration,
) -> Result<Option<BackendReply>, RelayError> {
    let go = conn.command("DATA", timeout).await?;
    if go.code != 354 {
        // Only a refusal may stand in for the verdict: a 2xx here would be a 250 for a body
        // the back end never received.
        if go.code >= 400 {
            return Ok(Some(go));
        }
        return Err(RelayError::Protocol(format!("DATA answered {}", go.code)));
    }
    spool.rewind();
    let mut stuffer = DotStuffer::new();
    let mut scratch = Vec::new();
    let first = usize::try_from(spool.len()).map_or(CHUNK, |len| len.min(CHUNK));
    let mut out = Vec::with_capacity(headers.len() + first + first / 8 + 8);
    stuffer.encode(headers, &mut out);
    loop {
        let content = spool.next_chunk(CHUNK, &mut scratch)?;
        if content.is_empty() {
            break;
        }
        stuffer.encode(content, &mut out);
        if out.len() >= CHUNK {
            conn.write(&out, timeout).await?;
            out.clear();
        }
    }
    stuffer.finish(&mut out);
    conn.write(&out, timeout).await?;
    Ok(None)
}

/// BDAT chunks of [`CHUNK`] octets (the last one shorter and marked LAST), each written with
/// its command in one buffer; each earlier one's 250 is awaited (no PIPELINING assumed).
/// `Ok(Some)`: a chunk was refused; the verdict of the LAST one is left for [`message`] to read.
async fn chunks(
    conn: &mut Connection,
    headers: &[u8],
    spool: &mut Relayed,
    timeout: Duration,
) -> Result<Option<BackendReply>, RelayError> {
    spool.rewind();
    let total = (headers.len() as u64).saturating_add(spool.len());
    let (mut sent, mut headers_left, mut scratch) = (0u64, headers, Vec::new());
    // One buffer for every chunk: a command line and at most CHUNK octets.
    let first = usize::try_from(total).map_or(CHUNK, |total| total.min(CHUNK));
    let mut wire = Vec::with_capacity(first + 32);
    loop {
        let size = usize::try_from(total - sent).map_or(CHUNK, |left| left.min(CHUNK));
        let last = sent + size as u64 == total;
        wire.clear();
        let _ = write!(wire, "BDAT {size}{}\r\n", if last { " LAST" } else { "" });
        let (from_headers, rest) = headers_left.split_at(headers_left.len().min(size));
        wire.extend_from_slice(from_headers);
        headers_left = rest;
        let mut left = size - from_headers.len();
        while left > 0 {
            let content = spool.next_chunk(left, &mut scratch)?;
            if content.is_empty() {
                return Err(
                    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "message shorter than its length").into()
                );
            }
            wire.extend_from_slice(content);
            left -= content.len();
        }
        conn.write(&wire, timeout).await?;
        sent += size as u64;
        if last {
            return Ok(None);
        }
        let reply = conn.reply(timeout).await?;
        conn.last_used = std::time::Instant::now();
        if reply.code >= 400 {
            return Ok(Some(reply));
        }
        if reply.code != 250 {
            return Err(RelayError::Protocol(format!("BDAT answered {}", reply.code)));
        }
    }
}
