//! The figures of one run: what became of each signal and how long it took, and from those
//! the throughput, the latency percentiles, the slowest signals and the refusals by kind.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Signals listed as the slowest of a paced run.
const SLOWEST_SHOWN: usize = 3;

/// Characters of a refused answer's body shown.
const ANSWER_SHOWN_CHARS: usize = 300;

/// What became of one signal.
#[derive(Debug)]
pub enum Answer {
    /// The answer the run expected (200 `applied`, or 202 `queued`), or applied in-process.
    Accepted,
    /// Anything else: a category (`HTTP 503`, `rejected`, ...) and what was said.
    Refused {
        /// Groups refusals in the summary.
        category: String,
        /// The body or error, for the first of each category.
        detail: String,
    },
}

/// One signal's answer and how long it took.
#[derive(Debug)]
pub struct Sample {
    /// What became of it.
    pub answer: Answer,
    /// From the send (or, in-process, the start) to the whole answer.
    pub latency: Duration,
    /// When it was sent (or, in-process, started).
    pub started: Instant,
}

/// Figures of one run.
#[derive(Debug)]
pub struct Stats {
    /// Signals sent.
    pub count: usize,
    /// From the first send to the last answer.
    pub elapsed: Duration,
    /// Latencies, sorted.
    latencies: Vec<Duration>,
    /// How far the latest send started behind its schedule (paced runs only).
    pub max_lag: Duration,
    /// Refusals per category: how many, and the first one's detail.
    refused: BTreeMap<String, (usize, String)>,
    /// The [`SLOWEST_SHOWN`] slowest: index, when sent after the first, latency.
    slowest: Vec<(usize, Duration, Duration)>,
}

impl Stats {
    /// The figures of `samples`, sent over `elapsed`, the latest send `max_lag` behind its
    /// schedule.
    pub fn new(samples: Vec<Sample>, elapsed: Duration, max_lag: Duration) -> Stats {
        let count = samples.len();
        let first = samples.iter().map(|sample| sample.started).min();
        let mut slowest: Vec<(usize, Duration, Duration)> = samples
            .iter()
            .enumerate()
            .map(|(index, sample)| {
                let after = first.map_or(Duration::ZERO, |first| {
                    sample.started.saturating_duration_since(first)
                });
                (index, after, sample.latency)
            })
            .collect();
        slowest.sort_unstable_by_key(|sample| std::cmp::Reverse(sample.2));
        slowest.truncate(SLOWEST_SHOWN);
        let mut latencies = Vec::with_capacity(count);
        let mut refused: BTreeMap<String, (usize, String)> = BTreeMap::new();
        for sample in samples {
            latencies.push(sample.latency);
            if let Answer::Refused { category, detail } = sample.answer {
                refused.entry(category).or_insert((0, detail)).0 += 1;
            }
        }
        latencies.sort_unstable();
        Stats {
            count,
            elapsed,
            latencies,
            max_lag,
            refused,
            slowest,
        }
    }

    /// `#957 at 19.14s: 34.6 ms, ...`: the slowest signals, when they were sent.
    pub fn slowest(&self) -> String {
        self.slowest
            .iter()
            .map(|(index, after, latency)| {
                format!(
                    "#{index} at {:.2}s: {:.1} ms",
                    after.as_secs_f64(),
                    millis(*latency)
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// `1000 signals in 1.32s = 756 signals/s, p50 ...`: the count of `unit` over the
    /// elapsed time, the rate in `per_second` (` signals/s`, `/s`) and the latencies.
    pub fn summary(&self, unit: &str, per_second: &str) -> String {
        format!(
            "{} {unit} in {:.2}s = {:.0}{per_second}, {}",
            self.count,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.latencies()
        )
    }

    /// Signals per second.
    pub fn rate(&self) -> f64 {
        let seconds = self.elapsed.as_secs_f64();
        if seconds > 0.0 {
            self.count as f64 / seconds
        } else {
            0.0
        }
    }

    /// The latency at `percent` (nearest rank).
    pub fn percentile(&self, percent: usize) -> Duration {
        let rank = (self.latencies.len() * percent).div_ceil(100).max(1);
        self.latencies
            .get(rank - 1)
            .copied()
            .unwrap_or(Duration::ZERO)
    }

    /// `p50 1.2 ms, p99 3.4 ms, max 9.8 ms, not accepted 0`.
    pub fn latencies(&self) -> String {
        let max = self.latencies.last().copied().unwrap_or(Duration::ZERO);
        format!(
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, not accepted {}",
            millis(self.percentile(50)),
            millis(self.percentile(99)),
            millis(max),
            self.refused.values().map(|(count, _)| count).sum::<usize>()
        )
    }

    /// `HTTP 503 x3 (first: ...); ...`, or `None` when everything was accepted.
    pub fn refusals(&self) -> Option<String> {
        if self.refused.is_empty() {
            return None;
        }
        Some(
            self.refused
                .iter()
                .map(|(category, (count, detail))| format!("{category} x{count} (first: {detail})"))
                .collect::<Vec<_>>()
                .join("; "),
        )
    }
}

/// `duration` in milliseconds, for printing.
pub fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// An error with its sources: `a: b: c`.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// At most [`ANSWER_SHOWN_CHARS`] characters of `text`, on one line.
pub fn shorten(text: &str) -> String {
    let line = text.trim().replace('\n', " ");
    if line.chars().count() > ANSWER_SHOWN_CHARS {
        let kept: String = line.chars().take(ANSWER_SHOWN_CHARS).collect();
        format!("{kept}...")
    } else {
        line
    }
}
