//! One SMTP client connection as seen by the load generator: commands out, whole replies in,
//! over a plain or TLS stream. Every read is bounded in time and in size, so a server that
//! stalls or floods ends one session with a named failure, never the run.

use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The longest reply accepted (EHLO lists a few hundred bytes; a server sending more is broken).
const MAX_REPLY: usize = 64 * 1024;

/// Why a session stopped early. The text is the key failures are counted under, so it names
/// the step and what happened, never a changing detail (addresses, ports, queue ids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stop(pub String);

impl Stop {
    pub fn at(step: &str, what: impl std::fmt::Display) -> Stop {
        Stop(format!("{step}: {what}"))
    }
}

/// A whole reply: its code, and whether some line offers `STARTTLS` (only EHLO's is asked).
pub struct Reply {
    pub code: u16,
    pub starttls: bool,
}

pub struct Conversation<S> {
    stream: S,
    buffer: Vec<u8>,
    timeout: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conversation<S> {
    pub fn new(stream: S, timeout: Duration) -> Conversation<S> {
        Conversation { stream, buffer: Vec::with_capacity(1024), timeout }
    }

    /// The stream, for the TLS handshake after `STARTTLS`'s 220. Bytes the server sent after
    /// that reply would be read as if they came over TLS (a command-injection hole, RFC 3207
    /// §5), so they are a failure here.
    pub fn into_stream(self) -> Result<S, Stop> {
        if self.buffer.is_empty() {
            Ok(self.stream)
        } else {
            Err(Stop::at("STARTTLS", "data after the 220"))
        }
    }

    /// Send `bytes` (one command or the whole message) and read the reply.
    pub async fn command(&mut self, step: &str, bytes: &[u8]) -> Result<Reply, Stop> {
        self.send(step, bytes).await?;
        self.reply(step).await
    }

    pub async fn send(&mut self, step: &str, bytes: &[u8]) -> Result<(), Stop> {
        let write = async {
            self.stream.write_all(bytes).await?;
            // TLS streams hold records until flushed.
            self.stream.flush().await
        };
        match tokio::time::timeout(self.timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Stop::at(step, format!("write: {}", e.kind()))),
            Err(_) => Err(Stop::at(step, "timeout")),
        }
    }

    /// One whole reply (its continuation lines included).
    pub async fn reply(&mut self, step: &str) -> Result<Reply, Stop> {
        match tokio::time::timeout(self.timeout, self.read_reply(step)).await {
            Ok(reply) => reply,
            Err(_) => Err(Stop::at(step, "timeout")),
        }
    }

    async fn read_reply(&mut self, step: &str) -> Result<Reply, Stop> {
        let mut starttls = false;
        let mut scanned = 0;
        loop {
            while let Some(end) = self.buffer.get(scanned..).and_then(|rest| rest.iter().position(|&b| b == b'\n')) {
                let line = self.buffer.get(scanned..scanned + end).unwrap_or_default();
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let code = line
                    .get(..3)
                    .and_then(|digits| std::str::from_utf8(digits).ok())
                    .and_then(|digits| digits.parse::<u16>().ok())
                    .ok_or_else(|| Stop::at(step, "malformed reply"))?;
                let text = line.get(4..).unwrap_or_default();
                starttls |= text.eq_ignore_ascii_case(b"STARTTLS");
                scanned += end + 1;
                if line.get(3) != Some(&b'-') {
                    self.buffer.drain(..scanned);
                    return Ok(Reply { code, starttls });
                }
            }
            if self.buffer.len() >= MAX_REPLY {
                return Err(Stop::at(step, "reply too long"));
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk).await {
                Ok(0) => return Err(Stop::at(step, "connection closed")),
                Ok(n) => self.buffer.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                Err(e) => return Err(Stop::at(step, format!("read: {}", e.kind()))),
            }
        }
    }
}
