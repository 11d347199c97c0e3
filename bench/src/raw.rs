//! The raw rates HTTP is held against, measured on the same signals without HTTP: the
//! signal transaction applied in-process with the webhook's plan ([`raw_run`]), and the
//! intake journal's append+fsync ([`fsync_run`]).

use crate::database::Database;
use crate::generator::drive;
use crate::stats::{shorten, Answer, Sample, Stats};
use crate::workload::{Load, LOAD_INSTANCE};
use anyhow::Context;
use chrono::Utc;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use vigil::domain::Instrument;
use vigil::intake::journal::{Journal, Mode as JournalMode};
use vigil::intake::QueuedAlert;
use vigil::store::{redact, Access, AnyStore, Applied, ApplyError, SignalClaim, Store};
use vigil::trading::plan::{plan, Refusal};
use vigil::trading::Signal;

/// Applies every signal in-process with the webhook's plan, at the load's concurrency.
pub async fn raw_run(load: &Load, database: &Database) -> anyhow::Result<Stats> {
    let load = &load.restamped()?;
    let store = AnyStore::connect(&database.url, Access::ReadWrite)
        .await
        .with_context(|| format!("cannot connect to {}", redact(&database.url)))?;
    let outcome = async {
        store.migrate().await.context("migrations failed")?;
        let signals = Arc::clone(&load.signals);
        let instruments = Arc::new(load.instruments.clone());
        let (samples, elapsed, max_lag) = drive(load, None, |index| {
            let store = store.clone();
            let signals = Arc::clone(&signals);
            let instruments = Arc::clone(&instruments);
            async move { apply(&store, signals.get(index), &instruments).await }
        })
        .await?;
        anyhow::Ok(Stats::new(samples, elapsed, max_lag))
    }
    .await;
    store.close().await;
    outcome
}

/// Appends every load alert, encoded as the intake journal keeps it, to a fresh journal
/// file in `dir` one after another, each fsynced: the raw rate the journal's disk allows.
pub async fn fsync_run(load: &Load, dir: &Path) -> anyhow::Result<Stats> {
    let load = load.restamped()?;
    let path = dir.join("raw-fsync.journal");
    let payloads = load
        .signals
        .iter()
        .map(|signal| {
            serde_json::to_vec(&QueuedAlert {
                fingerprint: signal.fingerprint(),
                signal: signal.clone(),
                received_at: Utc::now(),
                held_back_by: None,
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .context("cannot encode a journal record")?;
    tokio::task::spawn_blocking(move || {
        let journal = Journal::open(&path, JournalMode::ReadWrite)
            .with_context(|| format!("cannot open {}", path.display()))?
            .journal;
        let mut samples = Vec::with_capacity(payloads.len());
        let started = Instant::now();
        for payload in &payloads {
            let appended = Instant::now();
            let answer = match journal.append(payload) {
                Ok(_) => Answer::Accepted,
                Err(error) => Answer::Refused {
                    category: String::from("append failed"),
                    detail: shorten(&error.to_string()),
                },
            };
            samples.push(Sample {
                answer,
                latency: appended.elapsed(),
                started: appended,
            });
        }
        let elapsed = started.elapsed();
        drop(journal);
        std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        anyhow::Ok(Stats::new(samples, elapsed, Duration::ZERO))
    })
    .await
    .context("the fsync run panicked")?
}

/// Claims and applies one signal as the webhook does, minus HTTP and the broker.
async fn apply(
    store: &AnyStore,
    signal: Option<&Signal>,
    instruments: &BTreeMap<String, Instrument>,
) -> Sample {
    let started = Instant::now();
    let refused = |category: &str, detail: String| Answer::Refused {
        category: category.to_string(),
        detail: shorten(&detail),
    };
    let Some(signal) = signal else {
        return Sample {
            answer: refused("missing", String::from("no signal at this index")),
            latency: started.elapsed(),
            started,
        };
    };
    let Some(instrument) = instruments.get(&signal.instrument) else {
        return Sample {
            answer: refused("unknown instrument", signal.instrument.clone()),
            latency: started.elapsed(),
            started,
        };
    };
    let fingerprint = signal.fingerprint();
    let claim = SignalClaim {
        signal,
        fingerprint: &fingerprint,
        instance_id: LOAD_INSTANCE,
        received_at: Utc::now(),
    };
    let now = Utc::now();
    let applied = store
        .apply_signal(&claim, |book| {
            plan(signal, &fingerprint, instrument, signal.price, now, book)
                .map_err(Refusal::Rejected)
        })
        .await;
    let answer = match applied {
        Ok(Applied::Done(_)) => Answer::Accepted,
        Ok(Applied::Duplicate) => refused("duplicate", fingerprint.clone()),
        Ok(Applied::Refused(refusal)) => refused(refusal.status(), refusal.to_string()),
        Ok(Applied::Queued) => refused("queued", fingerprint.clone()),
        Err(ApplyError::Store(error)) => refused("store error", error.to_string()),
    };
    Sample {
        answer,
        latency: started.elapsed(),
        started,
    }
}
