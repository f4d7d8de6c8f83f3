//! `mtac trace`: a live stream of a running node's decision lines — every `mtac_runtime` event
//! at info or above that names a client (`refused`, `session closed`, `message`…) — for the
//! clients in a network or one farm, over the admin socket (KumoMTA's `kcli trace-smtp-server`);
//! with `--dialogue`, the commands and replies too (`conn::dialogue`, published only while
//! someone traces).
//!
//! The binary's tracing layer hands each such line to [`publish`]; it costs one atomic load when
//! nobody traces. Lines go through a bounded broadcast channel: a reader too slow for the node
//! is told how many lines it missed, and never slows a session down. Message bodies and AUTH
//! payloads are never logged, so never traced.

use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Bytes, Frame};
use ipnet::IpNet;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::broadcast;

/// Lines buffered for readers before the slowest misses some.
const CAPACITY: usize = 4096;

/// One decision line (or one line of a session's dialogue), with what readers filter on.
#[derive(Debug)]
pub struct TraceLine {
    pub client: Option<IpAddr>,
    pub farm: Option<String>,
    pub text: String,
    /// A command the client sent or a reply the node wrote (`mtac trace --dialogue`), not a
    /// decision line.
    pub dialogue: bool,
}

struct Hub {
    lines: broadcast::Sender<Arc<TraceLine>>,
    readers: AtomicUsize,
}

fn hub() -> &'static Hub {
    static HUB: OnceLock<Hub> = OnceLock::new();
    HUB.get_or_init(|| Hub { lines: broadcast::channel(CAPACITY).0, readers: AtomicUsize::new(0) })
}

/// Whether someone traces now: the layer skips formatting otherwise.
pub fn tracing_wanted() -> bool {
    hub().readers.load(Ordering::Relaxed) > 0
}

/// Hand one decision line to the readers (none: dropped).
pub fn publish(line: TraceLine) {
    let _ = hub().lines.send(Arc::new(line));
}

/// What one reader asked for.
#[derive(Debug, Clone, Default)]
pub struct TraceFilter {
    pub clients: Option<IpNet>,
    pub farm: Option<String>,
    /// The sessions' dialogue too (commands and replies; never a message or AUTH payload).
    pub dialogue: bool,
}

impl TraceFilter {
    fn wants(&self, line: &TraceLine) -> bool {
        (self.dialogue || !line.dialogue)
            && self.clients.is_none_or(|net| line.client.is_some_and(|ip| net.contains(&ip)))
            && self.farm.as_ref().is_none_or(|farm| line.farm.as_ref() == Some(farm))
    }
}

/// Counts a reader while it lives.
struct Reader(broadcast::Receiver<Arc<TraceLine>>);

impl Drop for Reader {
    fn drop(&mut self) {
        hub().readers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The stream of lines `filter` wants, one per chunk, until the reader hangs up.
pub(super) fn stream(filter: TraceFilter) -> http_body_util::combinators::BoxBody<Bytes, Infallible> {
    hub().readers.fetch_add(1, Ordering::Relaxed);
    let reader = Reader(hub().lines.subscribe());
    let lines = futures_util::stream::unfold((reader, filter), |(mut reader, filter)| async move {
        loop {
            match reader.0.recv().await {
                Ok(line) if filter.wants(&line) => {
                    let text = Bytes::from(format!("{}\n", line.text));
                    return Some((Ok::<_, Infallible>(Frame::data(text)), (reader, filter)));
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    let text = Bytes::from(format!("mtac trace: {missed} line(s) missed (the reader was too slow)\n"));
                    return Some((Ok(Frame::data(text)), (reader, filter)));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    StreamBody::new(lines).boxed()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_takes_its_network_and_farm_only() {
        let line = |client: &str, farm: &str| TraceLine {
            client: client.parse().ok(),
            farm: Some(farm.to_owned()),
            text: String::new(),
            dialogue: false,
        };
        let filter = TraceFilter { clients: "192.0.2.0/24".parse().ok(), farm: Some("mx".to_owned()), dialogue: false };
        assert!(filter.wants(&line("192.0.2.7", "mx")));
        assert!(!filter.wants(&line("192.0.3.7", "mx")));
        assert!(!filter.wants(&line("192.0.2.7", "users")));
        assert!(!filter.wants(&line("", "mx")), "a line without a client is not one of them");
        assert!(TraceFilter::default().wants(&line("", "mx")));
        let said = TraceLine { dialogue: true, ..line("192.0.2.7", "mx") };
        assert!(!filter.wants(&said), "the dialogue only when asked for");
        assert!(TraceFilter { dialogue: true, ..filter }.wants(&said));
    }
}
