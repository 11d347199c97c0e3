//! The load generator: every signal of a [`Load`] through one task (an HTTP send or an
//! in-process apply), at most `--concurrency` at once, paced on a schedule fixed up front or
//! unpaced, the base entries all finished before the first pyramid, so no pyramid races
//! its base.

use crate::stats::Sample;
use crate::workload::Load;
use anyhow::Context;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Runs `task(index)` for every signal, at most `load.concurrency` at once, base entries all
/// finished before the first pyramid starts. With `rate`, signal `i` starts no earlier than
/// `i / rate` seconds after the first (a schedule fixed up front). Returns the samples in
/// signal order, the time from the first start to the last answer, and how far the latest
/// start was behind its schedule.
pub async fn drive<F, Fut>(
    load: &Load,
    rate: Option<u32>,
    task: F,
) -> anyhow::Result<(Vec<Sample>, Duration, Duration)>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Sample> + Send + 'static,
{
    let count = load.signals.len();
    let permits = Arc::new(Semaphore::new(load.concurrency));
    let mut samples = Vec::with_capacity(count);
    let mut pending: Vec<tokio::task::JoinHandle<Sample>> = Vec::with_capacity(count);
    let mut max_lag = Duration::ZERO;
    let started = Instant::now();
    for index in 0..count {
        if index == load.bases {
            for handle in pending.drain(..) {
                samples.push(handle.await.context("a load task panicked")?);
            }
        }
        let due = match rate {
            Some(rate) => {
                let offset = u32::try_from(index)
                    .ok()
                    .and_then(|index| Duration::from_secs(1).checked_mul(index))
                    .and_then(|offset| offset.checked_div(rate))
                    .context("the paced schedule is too long")?;
                let due = started + offset;
                tokio::time::sleep_until(due.into()).await;
                Some(due)
            }
            None => None,
        };
        let permit = Arc::clone(&permits)
            .acquire_owned()
            .await
            .context("the concurrency limit closed")?;
        if let Some(due) = due {
            max_lag = max_lag.max(Instant::now().saturating_duration_since(due));
        }
        let future = task(index);
        pending.push(tokio::spawn(async move {
            let sample = future.await;
            drop(permit);
            sample
        }));
    }
    for handle in pending {
        samples.push(handle.await.context("a load task panicked")?);
    }
    Ok((samples, started.elapsed(), max_lag))
}
