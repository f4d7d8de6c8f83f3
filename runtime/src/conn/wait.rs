//! The wait between commands, where an idle session spends its life: the replies waiting for
//! it are written, the buffers given back, and the socket watched with no buffer lent to it.
//!
//! A connection that waits costs what this wait holds, times the thousands of them a node
//! keeps (BENCHMARKS.md "Idle sessions"). Bytes are read only once they are there, into a
//! buffer allocated then (`Conn::read_chunk`); pipelined input never comes here, since the
//! driver waits only when its input is used up.

use super::{Conn, Read};
use crate::shared::Shutdown;
use tokio::time::Instant;

impl Conn<'_> {
    /// Write what waits for the client, free the empty buffers and wait until the client says
    /// something, closes, the deadline passes or the node stops (`in_transaction` lets a
    /// draining node finish a message). `Read::Data` means bytes are ready, not that they
    /// were read.
    pub(super) async fn between_commands(&mut self, deadline: Instant, in_transaction: bool) -> Read {
        if !self.flush(deadline).await {
            return Read::Error;
        }
        if self.input.is_empty() {
            self.input = Vec::new();
        }
        self.output = Vec::new();
        loop {
            let state = *self.shutdown.borrow();
            if state == Shutdown::Now || (state == Shutdown::Draining && !in_transaction) {
                return Read::Shutdown;
            }
            tokio::select! {
                ready = tokio::time::timeout_at(deadline, std::future::poll_fn(|cx| self.stream.poll_readable(cx))) => {
                    return match ready {
                        Ok(Ok(())) => Read::Data,
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
}
