//! The drain's completion guard (mini-redis's shutdown): every connection task holds a
//! [`Guard`], and the drain waits until the last one is dropped, bounded by a deadline.
//!
//! **Invariant:** a connection task holds a guard from its accept to its end (inside its
//! connection `Slot`, so a panicking session drops it too), and the accept loops hold the only
//! other ones. Once the accept loops are gone, "every guard dropped" means "no session is
//! left": the drain wakes at that moment, with no counter to poll.

use tokio::sync::mpsc;
use tokio::time::Instant;

/// Held by whatever the drain waits for; it never sends: being dropped is its whole message.
#[derive(Clone)]
pub struct Guard {
    _sender: mpsc::Sender<()>,
}

/// The waiting side: learns when every [`Guard`] has been dropped.
pub struct Drain {
    done: mpsc::Receiver<()>,
}

impl Drain {
    /// A drain and the first guard, to be cloned into each task the drain waits for (and then
    /// dropped, or the drain waits for it too).
    pub fn new() -> (Drain, Guard) {
        let (guard, done) = mpsc::channel(1);
        (Drain { done }, Guard { _sender: guard })
    }

    /// Wait until every guard is dropped (`true`) or `deadline` passes (`false`). May be asked
    /// again with a later deadline.
    pub async fn until(&mut self, deadline: Instant) -> bool {
        // No guard ever sends, so `recv` returns only `None`: the last sender is gone.
        tokio::time::timeout_at(deadline, self.done.recv()).await.is_ok()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::Drain;
    use std::time::Duration;
    use tokio::time::Instant;

    #[tokio::test]
    async fn the_drain_ends_when_the_last_guard_is_dropped_not_at_the_deadline() {
        let (mut drain, guard) = Drain::new();
        let held = guard.clone();
        drop(guard);
        let task = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            drop(held);
        });
        let started = Instant::now();
        assert!(drain.until(started + Duration::from_secs(30)).await);
        assert!(started.elapsed() < Duration::from_secs(5), "woke {:?} after the start", started.elapsed());
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_guard_still_held_makes_the_drain_stop_at_the_deadline() {
        let (mut drain, guard) = Drain::new();
        let started = Instant::now();
        assert!(!drain.until(started + Duration::from_millis(100)).await);
        assert!(started.elapsed() >= Duration::from_millis(100));
        // Asked again once the guard is gone, it answers at once.
        drop(guard);
        assert!(drain.until(Instant::now() + Duration::from_secs(30)).await);
    }
}
