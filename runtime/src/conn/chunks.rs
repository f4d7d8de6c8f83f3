//! BDAT's I/O around the data phase (RFC 3030): the octets of a refused BDAT read and dropped,
//! and the commands a client may send between two chunks of one message.
//!
//! A BDAT line is followed at once by its octets, whatever the answer will be, so a refused
//! BDAT (no MAIL, no recipient, a message already refused for its size) still has its octets
//! read: taken for commands, they would be a way to smuggle commands in message content.
//!
//! Between chunks only `BDAT`, `NOOP`, `RSET` and `QUIT` are served; anything else (`DATA`
//! among them: a transaction is DATA or BDAT, never both) is `503 5.5.1`, and the client's
//! next chunk is still awaited. Past [`MAX_WRONG_COMMANDS`] such commands the session closes
//! with 421, as the error limit would.

use super::{Conn, End, READ_STEP};
use crate::smtp::{parse, Command, Frame, LineReader, Reply};
use tokio::time::Instant;

/// Commands other than BDAT, NOOP, RSET and QUIT tolerated between two chunks.
const MAX_WRONG_COMMANDS: u32 = 10;

/// Read and drop the `size` octets of a refused BDAT.
pub(super) async fn discard(conn: &mut Conn<'_>, mut size: u64, deadline: Instant, hostname: &str) -> Result<(), End> {
    loop {
        let take = usize::try_from(size).unwrap_or(usize::MAX).min(conn.input.len());
        conn.input.drain(..take);
        size = size.saturating_sub(take as u64);
        if size == 0 {
            return Ok(());
        }
        let read = conn.read_chunk(deadline, true, READ_STEP * 64).await;
        if let Some(end) = conn.ended_by(read, hostname).await {
            return Err(end);
        }
    }
}

/// What the client sent after a chunk that was not the last.
pub(super) enum Between {
    /// The next chunk: its size and whether it ends the message.
    Chunk { size: u64, last: bool },
    /// `RSET`: the transaction is abandoned (the session answers it).
    Reset,
    /// `QUIT`.
    Quit,
}

/// Serve the commands after a chunk until the next BDAT, RSET or QUIT. Replies written here
/// (NOOP's 250, the 503s) are flushed before each read, so a client waiting for them gets them.
pub(super) async fn between(
    conn: &mut Conn<'_>,
    lines: &mut LineReader,
    deadline: Instant,
    hostname: &str,
) -> Result<Between, End> {
    let mut wrong = 0u32;
    loop {
        let framed = lines.read(&conn.input);
        let consumed = framed.consumed;
        let command = match framed.frame {
            Frame::NeedMore => {
                conn.input.drain(..consumed);
                if !conn.flush(deadline).await {
                    return Err(End::Io);
                }
                let read = conn.read(deadline, true).await;
                if let Some(end) = conn.ended_by(read, hostname).await {
                    return Err(end);
                }
                continue;
            }
            Frame::TooLong => None,
            Frame::Line(line) => parse(line).ok(),
        };
        conn.input.drain(..consumed);
        match command {
            Some(Command::Bdat { size, last }) => return Ok(Between::Chunk { size, last }),
            Some(Command::Rset) => return Ok(Between::Reset),
            Some(Command::Quit) => return Ok(Between::Quit),
            Some(Command::Noop) => conn.reply(&Reply::ok()),
            _ => {
                wrong += 1;
                if wrong > MAX_WRONG_COMMANDS {
                    return Err(conn.close(&Reply::too_many_errors(hostname), End::TooManyErrors).await);
                }
                conn.reply(&Reply::bad_sequence("BDAT expected: this message is sent in chunks"));
            }
        }
    }
}
