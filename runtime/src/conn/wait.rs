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

impl<'s> Conn<'s> {
    /// Write what waits for the client, free the empty buffers and wait until the client says
    /// something, closes, the deadline passes or the node stops (`in_transaction` lets a
    /// draining node finish a message). `Read::Data` means bytes are ready, not that they
    /// were read.
    ///
    /// An `async` block, not an `async fn`: the fn would keep its arguments twice in the future
    /// (as arguments and as the locals made of them), for as long as the session waits.
    // The async fn clippy suggests is what this avoids (see above).
    #[allow(clippy::manual_async_fn)]
    pub(super) fn between_commands(
        &mut self,
        deadline: Instant,
        in_transaction: bool,
    ) -> impl std::future::Future<Output = Read> + Send + use<'_, 's> {
        async move {
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
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::conn::{serve, Admission};
    use crate::shared::{Shared, Snapshot};
    use crate::spool::Spool;
    use std::sync::Arc;
    use tokio::net::{TcpListener, TcpStream};

    /// Issue 21: an idle session costs what its task holds, times the thousands a node keeps.
    /// With the big awaits inlined, the session future was 12-14 KB (release); boxed, ~2 KB;
    /// with the session's parts held once and its rare state created when first needed, it is
    /// 1,120 bytes in this debug build with the accept loop's 48-byte slot (1,104 in release,
    /// where tokio's task cell is 1,280 bytes: a multiple of 128, so 24 bytes more cost every
    /// idle session 128; BENCHMARKS.md "Node: idle sessions"). The bound leaves 32 bytes: state
    /// added between commands must be paid for elsewhere, and inlining a boxed await again
    /// (the smallest, greet, is 3.7 KB) fails here instead of costing every idle session.
    #[tokio::test]
    async fn idle_session_stays_small() {
        const MAX_SESSION_FUTURE: usize = 1152;
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(&dir.path().join("spool")).unwrap();
        let snapshot = Snapshot::new(crate::session::tests::ruleset(3), None).unwrap();
        let shared = Arc::new(Shared::new(snapshot, None, spool, None, 0));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (stream, peer) = listener.accept().await.unwrap();
        // What the accept loop's `Slot` is: two `Arc`s, the client's address and a drain guard.
        let slot = [0u64; 6];
        let session = serve(stream, peer, "mx", false, shared, "T".to_owned(), Admission::default(), slot).unwrap();
        let size = std::mem::size_of_val(&session);
        assert!(size <= MAX_SESSION_FUTURE, "the session future is {size} bytes (at most {MAX_SESSION_FUTURE})");
    }
}
