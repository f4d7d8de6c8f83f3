//! Gathering the latencies of benchmark workers: each task returns its latencies and a count of
//! failures; this merges them and reads percentiles.

use std::time::Duration;

/// All workers' latencies, sorted, and their failures summed.
pub async fn gather(tasks: Vec<tokio::task::JoinHandle<(Vec<Duration>, u64)>>) -> Latencies {
    let mut all = Vec::new();
    let mut failed = 0;
    for task in tasks {
        if let Ok((latencies, failures)) = task.await {
            all.extend(latencies);
            failed += failures;
        }
    }
    all.sort_unstable();
    Latencies { sorted: all, failed }
}

pub struct Latencies {
    pub sorted: Vec<Duration>,
    pub failed: u64,
}

impl Latencies {
    /// The latency at quantile `q` (0.5 = median).
    pub fn quantile(&self, q: f64) -> Duration {
        let index = ((self.sorted.len() as f64 * q) as usize).min(self.sorted.len().saturating_sub(1));
        self.sorted.get(index).copied().unwrap_or_default()
    }

    pub fn count(&self) -> usize {
        self.sorted.len()
    }
}
