//! Durable intake: an alert answered 2xx is never lost.
//!
//! A checked alert is applied at once when it can be (the lifecycle applies its type now,
//! its instrument has nothing queued, the database answers within [`DIRECT_STORE_DEADLINE`]),
//! and answered `applied`, a recorded refusal, or `duplicate`. Otherwise it is appended to
//! the local [`journal`] and fsynced before it is answered `queued`; the drainer then applies
//! queued alerts per instrument in alert-timestamp order, before any newer alert of that
//! instrument, each ending `applied`, `rejected`, `expired` or `superseded` in the signal
//! log. Only an alert that cannot be made durable at all is refused (503).
//!
//! The await points of an alert's path, in order (each named by a failpoint in tests):
//! `after_redis_claim`, `after_broker`, `inside_transaction` (the store's), `after_commit`
//! (before the answer), `journal_append` (between the write and the answer), and on the
//! drainer `after_drain_commit` (between the commit and the settle mark).

pub mod journal;

use crate::broker::{Broker, Order};
use crate::coordination::Gate;
use crate::domain::Instrument;
use crate::driver::Input;
use crate::policy::SignalAges;
use crate::shared::Shared;
use crate::store::operations::Pause;
use crate::store::{AnyStore, Applied, ApplyError, QueuedRow, SignalClaim, Store, StoreError};
use crate::trading::plan::{decide, expired, Refusal};
use crate::trading::Signal;
use crate::vocabulary::FailureKind;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use journal::{Journal, JournalError};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;

/// How long an alert's transaction may take when applied within its request. Past it the
/// alert is journaled instead: the answer stays inside TradingView's 3 s, and well inside
/// [`ANSWER_BOUND`].
pub const DIRECT_STORE_DEADLINE: Duration = Duration::from_millis(450);

/// How long a queued alert's transaction may take when drained.
pub const DRAIN_STORE_DEADLINE: Duration = Duration::from_millis(1500);

/// How long confirming a fast-layer duplicate against the signal log may take; past it the
/// alert's own transaction decides.
pub const DUPLICATE_CHECK_TIMEOUT: Duration = Duration::from_millis(100);

/// How long a journal append (write and fsync) may take before the alert is refused with a
/// 503. A disk that slow is an emergency; the record may still land, and then a resend is
/// answered `queued`.
pub const JOURNAL_APPEND_TIMEOUT: Duration = Duration::from_millis(200);

/// How long an alert waits in the signal log as `queued` before it is applied: longer than
/// it takes instances that meet a returning database at about the same moment to move their
/// journals there, so the oldest alert of an instrument is applied first whichever instance
/// took it.
pub const QUEUE_SETTLE: Duration = Duration::from_secs(2);

/// Queued alerts read per look at the signal log.
pub const DRAIN_BATCH: i64 = 256;

/// Journaled alerts moved into the signal log per transaction.
pub const MOVE_BATCH: usize = 100;

/// How often the drainer looks at the queue when nothing wakes it: the database may have
/// come back, or a degraded set widened, without an alert arriving.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(500);

/// After the database failed to take an alert, how long further alerts go straight to the
/// journal, so that an outage (or a database that hangs) costs one attempt per backoff, not
/// one per alert. The drainer tries the database meanwhile, every [`DRAIN_INTERVAL`], and
/// ends the backoff as soon as the database answers.
pub const STORE_BACKOFF: Duration = Duration::from_secs(1);

/// Queued alerts of different instruments applied at once while draining; the alerts of one
/// instrument are always applied one after another, in alert order. Below the PostgreSQL
/// signal pool's connections, so that live alerts still find one while a backlog drains.
pub const DRAIN_CONCURRENCY: usize = 8;

/// The longest an alert's answer takes in any state: the Redis work, a duplicate check, the
/// transaction and a journal append, each bounded.
pub const ANSWER_BOUND: Duration = Duration::from_millis(1000);

const _: () = assert!(
    crate::coordination::SIGNAL_REDIS_BUDGET.as_millis()
        + DUPLICATE_CHECK_TIMEOUT.as_millis()
        + DIRECT_STORE_DEADLINE.as_millis()
        + JOURNAL_APPEND_TIMEOUT.as_millis()
        <= ANSWER_BOUND.as_millis()
);

/// An alert as the journal keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuedAlert {
    /// Its fingerprint: the signal log's key.
    pub fingerprint: String,
    /// The checked signal.
    pub signal: Signal,
    /// When this instance received it.
    pub received_at: DateTime<Utc>,
    /// The operator's pause that held it back when it arrived: it is recorded refused by
    /// the operator, whatever the switch says by the time the database takes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_back_by: Option<Pause>,
}

impl QueuedAlert {
    /// Decodes a journal payload; the error says what is wrong with it.
    pub fn decode(payload: &[u8]) -> Result<QueuedAlert, String> {
        serde_json::from_slice(payload).map_err(|error| format!("not a queued alert: {error}"))
    }
}

/// What became of an alert.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Applied now; the positions opened or closed.
    Applied(Vec<String>),
    /// Recorded now with this outcome; it traded nothing.
    Refused(Refusal),
    /// Seen before: the signal log (or the queue) holds it.
    Duplicate,
    /// Recorded in the journal; it will be applied, refused or expire.
    Queued,
}

/// Why an alert could not be made durable: the only case answered 503.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotDurable(pub String);

/// Why an alert could not be settled now; it stays (or goes) in the queue.
#[derive(Debug, thiserror::Error)]
enum NotNow {
    /// Another caller holds the instrument, or applies a copy of the alert.
    #[error("another caller holds the instrument")]
    Busy,
    /// The broker did not execute.
    #[error("the broker did not execute: {0}")]
    Broker(String),
    /// The database failed or did not answer in time.
    #[error("{0}")]
    Store(String),
    /// The database answered, but a lock a peer holds (or a concurrent writer) stood in
    /// the way: contention, not an outage.
    #[error("{0}")]
    Contended(String),
}

/// The journal's state, as `/status` and recovery see it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct JournalStatus {
    /// The journal file.
    pub path: String,
    /// Alerts recorded and not yet settled.
    pub pending: usize,
    /// The file's size.
    pub bytes: u64,
    /// Why the journal cannot be used (a damaged record); recovery reports it as corrupt
    /// data under the policy.
    pub problem: Option<String>,
}

/// One queued alert, with its journal sequence number.
#[derive(Debug, Clone)]
struct Waiting {
    /// Its record in the journal.
    seq: u64,
    /// The alert.
    alert: QueuedAlert,
}

/// Queued alerts by instrument, each instrument's in alert-timestamp order.
#[derive(Debug, Default)]
struct Queue {
    /// Per instrument, keyed by (alert time, journal seq).
    by_instrument: BTreeMap<String, BTreeMap<(DateTime<Utc>, u64), Waiting>>,
    /// Every queued fingerprint, so a copy is not queued twice.
    fingerprints: HashSet<String>,
}

impl Queue {
    fn push(&mut self, waiting: Waiting) {
        self.fingerprints.insert(waiting.alert.fingerprint.clone());
        self.by_instrument
            .entry(waiting.alert.signal.instrument.clone())
            .or_default()
            .insert((waiting.alert.signal.timestamp, waiting.seq), waiting);
    }

    fn remove(&mut self, waiting: &Waiting) {
        let instrument = &waiting.alert.signal.instrument;
        if let Some(queued) = self.by_instrument.get_mut(instrument) {
            queued.remove(&(waiting.alert.signal.timestamp, waiting.seq));
            if queued.is_empty() {
                self.by_instrument.remove(instrument);
            }
        }
        self.fingerprints.remove(&waiting.alert.fingerprint);
    }

    fn len(&self) -> usize {
        self.fingerprints.len()
    }
}

/// The intake: where every checked alert goes.
#[derive(Debug)]
pub struct Intake {
    /// Lifecycle view, store, coordination, reports to the machines.
    shared: Arc<Shared>,
    /// Executes orders.
    broker: Arc<dyn Broker>,
    /// Contract terms per instrument.
    instruments: BTreeMap<String, Instrument>,
    /// How old an alert may be when applied.
    ages: SignalAges,
    /// The journal; `Err` says why there is none (it is damaged), and then an alert that
    /// cannot be applied at once is refused.
    journal: Result<Arc<Journal>, String>,
    /// Queued alerts, mirroring the journal's unsettled records.
    queue: Mutex<Queue>,
    /// Wakes the drainer.
    wake: Notify,
    /// One drain pass at a time.
    draining: tokio::sync::Mutex<()>,
    /// Until when alerts skip the database and go straight to the journal
    /// ([`STORE_BACKOFF`] after a failure); `None` while the database answers.
    store_backoff_until: Mutex<Option<tokio::time::Instant>>,
}

impl Intake {
    /// The intake over a journal as opened (`Err`: it could not be), with what the journal
    /// still holds queued again.
    pub fn new(
        shared: Arc<Shared>,
        broker: Arc<dyn Broker>,
        instruments: BTreeMap<String, Instrument>,
        ages: SignalAges,
        opened: Result<journal::Opened, JournalError>,
    ) -> Intake {
        let mut queue = Queue::default();
        let journal = match opened {
            Ok(opened) => {
                if opened.torn_tail_bytes > 0 {
                    tracing::warn!(
                        target: "vigil::intake",
                        "the intake journal {} ended in a torn record of {} bytes, never acknowledged; it was cut off",
                        opened.journal.path().display(),
                        opened.torn_tail_bytes
                    );
                }
                let mut problem = None;
                for (seq, payload) in opened.pending {
                    match QueuedAlert::decode(&payload) {
                        Ok(alert) => queue.push(Waiting { seq, alert }),
                        Err(error) => {
                            problem = Some(format!(
                                "the intake journal {} holds record {seq} that cannot be read ({error}); \
                                 move the file aside once its records are dealt with",
                                opened.journal.path().display()
                            ));
                            break;
                        }
                    }
                }
                match problem {
                    None => Ok(Arc::new(opened.journal)),
                    Some(problem) => Err(problem),
                }
            }
            Err(error) => Err(error.to_string()),
        };
        let intake = Intake {
            shared,
            broker,
            instruments,
            ages,
            journal,
            queue: Mutex::new(queue),
            wake: Notify::new(),
            draining: tokio::sync::Mutex::new(()),
            store_backoff_until: Mutex::new(None),
        };
        intake.publish();
        intake
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether alerts should skip the database for now: it failed less than
    /// [`STORE_BACKOFF`] ago and has not answered since.
    fn store_backing_off(&self) -> bool {
        let until = *self
            .store_backoff_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        until.is_some_and(|until| tokio::time::Instant::now() < until)
    }

    /// Starts the backoff (`failed`) or ends it (the database answered).
    fn store_answered(&self, answered: bool) {
        let mut until = self
            .store_backoff_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *until = (!answered).then(|| tokio::time::Instant::now() + STORE_BACKOFF);
    }

    /// Alerts queued and not yet settled.
    pub fn pending(&self) -> usize {
        self.queue().len()
    }

    /// Whether `fingerprint` is queued here.
    pub fn is_queued(&self, fingerprint: &str) -> bool {
        self.queue().fingerprints.contains(fingerprint)
    }

    /// The journal's state.
    pub fn status(&self) -> JournalStatus {
        let pending = self.pending();
        match &self.journal {
            Ok(journal) => JournalStatus {
                path: journal.path().display().to_string(),
                pending,
                bytes: journal.bytes(),
                problem: None,
            },
            Err(problem) => JournalStatus {
                path: String::new(),
                pending,
                bytes: 0,
                problem: Some(problem.clone()),
            },
        }
    }

    /// Publishes the journal's state for recovery and `/status`.
    fn publish(&self) {
        let status = self.status();
        metrics::gauge!(JOURNAL_PENDING).set(status.pending as f64);
        self.shared.journal.send_replace(status);
    }

    /// Takes one checked alert: applies it now when it can, else journals it.
    pub async fn accept(&self, signal: Signal, fingerprint: String) -> Result<Answer, NotDurable> {
        if self.is_queued(&fingerprint) {
            return Ok(Answer::Queued);
        }
        let pause = *self.shared.pause.borrow();
        let alert = QueuedAlert {
            fingerprint,
            held_back_by: pause.holds_back(signal.kind).then_some(pause),
            signal,
            received_at: Utc::now(),
        };
        // Held back by the operator: recorded refused at once, or journaled to be.
        if let Some(pause) = alert.held_back_by {
            if let (Some(store), false) = (self.shared.store(), self.store_backing_off()) {
                match self
                    .refuse(&store, &alert, pause, DIRECT_STORE_DEADLINE)
                    .await
                {
                    Ok(answer) => return Ok(answer),
                    Err(not_now) => {
                        if matches!(not_now, NotNow::Store(_)) {
                            self.store_answered(false);
                        }
                        tracing::info!(target: "vigil::signal", fingerprint = %short(&alert.fingerprint), "journaling: {not_now}");
                    }
                }
            }
            return self.enqueue(alert).await;
        }
        let view = self.shared.view();
        let instrument_waits = self
            .queue()
            .by_instrument
            .contains_key(&alert.signal.instrument);
        // Behind alerts of its instrument still in the journal, it goes there too; so does
        // every alert while the database is backing off.
        if !instrument_waits && !self.store_backing_off() {
            if let Some(store) = self.shared.store() {
                let settled = if view.accepts.contains(alert.signal.kind) {
                    self.apply(&store, &alert, DIRECT_STORE_DEADLINE).await
                } else {
                    self.queue_in_log(&store, &alert).await
                };
                match settled {
                    Ok(answer) => return Ok(answer),
                    Err(not_now) => {
                        if matches!(not_now, NotNow::Store(_)) {
                            self.store_answered(false);
                        }
                        tracing::info!(target: "vigil::signal", fingerprint = %short(&alert.fingerprint), "journaling: {not_now}");
                    }
                }
            }
        }
        self.enqueue(alert).await
    }

    /// Records `alert` as `queued` in the signal log, for whichever instance applies it once
    /// the lifecycle allows.
    async fn queue_in_log(&self, store: &AnyStore, alert: &QueuedAlert) -> Result<Answer, NotNow> {
        let claim = claim_of(alert, &self.shared.instance);
        let queued = store.queue_signals(std::slice::from_ref(&claim));
        match tokio::time::timeout(DIRECT_STORE_DEADLINE, queued).await {
            // Known already: still waiting (a resend while queued), or settled.
            Ok(Ok(0)) => match store.signal_claimed(&alert.fingerprint).await {
                Ok(true) => Ok(Answer::Duplicate),
                Ok(false) => Ok(Answer::Queued),
                Err(error) => Err(self.store_failure(error)),
            },
            Ok(Ok(_)) => {
                tracing::info!(target: "vigil::signal", signal = %alert.signal.kind, instrument = %alert.signal.instrument, fingerprint = %short(&alert.fingerprint), "queued in the signal log");
                metrics::counter!(SIGNAL_OUTCOMES, "outcome" => "queued").increment(1);
                Ok(Answer::Queued)
            }
            Ok(Err(error)) => Err(self.store_failure(error)),
            Err(_) => Err(NotNow::Store("no answer in time".into())),
        }
    }

    /// Appends `alert` to the journal (fsynced) and queues it.
    async fn enqueue(&self, alert: QueuedAlert) -> Result<Answer, NotDurable> {
        let journal = match &self.journal {
            Ok(journal) => Arc::clone(journal),
            Err(problem) => {
                return Err(NotDurable(format!(
                "the alert could not be applied now and the intake journal is unusable: {problem}"
            )))
            }
        };
        let payload = serde_json::to_vec(&alert)
            .map_err(|error| NotDurable(format!("the alert cannot be encoded: {error}")))?;
        let append = tokio::task::spawn_blocking(move || {
            let appended = journal.append(&payload);
            crate::failpoint::hit("journal_append");
            appended
        });
        let seq = match tokio::time::timeout(JOURNAL_APPEND_TIMEOUT, append).await {
            Ok(Ok(Ok(seq))) => seq,
            Ok(Ok(Err(error))) => return Err(NotDurable(error.to_string())),
            Ok(Err(join)) => return Err(NotDurable(format!("the journal append failed: {join}"))),
            Err(_) => {
                return Err(NotDurable(format!(
                    "the intake journal did not fsync within {} ms",
                    JOURNAL_APPEND_TIMEOUT.as_millis()
                )))
            }
        };
        tracing::info!(
            target: "vigil::signal",
            signal = %alert.signal.kind,
            instrument = %alert.signal.instrument,
            fingerprint = %short(&alert.fingerprint),
            "queued in the intake journal (record {seq})"
        );
        metrics::counter!(SIGNAL_OUTCOMES, "outcome" => "queued").increment(1);
        let first = {
            let mut queue = self.queue();
            queue.push(Waiting { seq, alert });
            queue.len() == 1
        };
        if first {
            self.shared.notifier.notify(
                crate::notify::Event::JournalBacklog,
                "alerts are waiting in the intake journal: the database did not take them in time; \
                 they are applied once it answers",
            );
        }
        self.publish();
        self.wake.notify_one();
        Ok(Answer::Queued)
    }

    /// Applies `alert` once: the Redis gate, the broker, one transaction bounded by
    /// `deadline`. Every outcome that is settled is returned; anything else is [`NotNow`].
    async fn apply(
        &self,
        store: &AnyStore,
        alert: &QueuedAlert,
        deadline: Duration,
    ) -> Result<Answer, NotNow> {
        let signal = &alert.signal;
        let fingerprint = &alert.fingerprint;
        let Some(instrument) = self.instruments.get(&signal.instrument) else {
            // Checked at the door; a journal from another deployment may still hold one.
            return self
                .record_refusal(store, alert, unknown_instrument(signal), deadline)
                .await;
        };
        let ticket = match self
            .shared
            .coordination
            .before_signal(&signal.instrument, fingerprint)
            .await
        {
            // Redis may remember a fingerprint the database lost (a restored database) or
            // never held (another deployment on the same Redis): only the signal log says
            // duplicate.
            Gate::Duplicate => {
                let check = store.signal_claimed(fingerprint);
                match tokio::time::timeout(DUPLICATE_CHECK_TIMEOUT, check).await {
                    Ok(Ok(true)) => return Ok(Answer::Duplicate),
                    Ok(Ok(false)) | Err(_) => None,
                    Ok(Err(error)) => return Err(self.store_failure(error)),
                }
            }
            Gate::Busy => return Err(NotNow::Busy),
            Gate::Proceed(ticket) => Some(ticket),
        };
        crate::failpoint::hit("after_redis_claim");
        let now = Utc::now();
        let max_age = self.ages.max_age(signal.kind);
        // A stale alert is recorded expired without an order.
        let fill_price = if expired(signal, now, max_age).is_some() {
            signal.price
        } else {
            let order = Order {
                client_order_id: format!("vigil-{}", fingerprint.get(..24).unwrap_or(fingerprint)),
                kind: signal.kind,
                instrument: signal.instrument.clone(),
                lots: signal.lots,
                price: signal.price,
            };
            match self.broker.execute(&order).await {
                Ok(fill) => fill.price,
                Err(error) => {
                    drop(ticket);
                    self.report(FailureKind::BrokerUnavailable);
                    return Err(NotNow::Broker(error.to_string()));
                }
            }
        };
        crate::failpoint::hit("after_broker");
        let claim = claim_of(alert, &self.shared.instance);
        let applying = store.apply_signal(&claim, |book| {
            decide(
                signal,
                fingerprint,
                instrument,
                fill_price,
                now,
                max_age,
                book,
            )
        });
        // Dropping the transaction on the deadline rolls it back unless COMMIT was already
        // sent; either way the alert is journaled and its drain finds out which (a committed
        // one is then a duplicate). A slow answer is not reported: the heartbeat tells a
        // database that stopped answering from a busy one.
        let applied = match tokio::time::timeout(deadline, applying).await {
            Ok(applied) => applied,
            Err(_) => Err(ApplyError::Store(StoreError::Unavailable(format!(
                "no answer within {} ms",
                deadline.as_millis()
            )))),
        };
        crate::failpoint::hit("after_commit");
        if let Some(ticket) = ticket {
            // Only a settled outcome is remembered by the fast layer; a queued one is not.
            ticket.settle(matches!(
                applied,
                Ok(Applied::Done(_) | Applied::Refused(_) | Applied::Duplicate)
            ));
        }
        match applied {
            Ok(applied) => Ok(self.settled(alert, applied)),
            Err(ApplyError::Store(StoreError::Unavailable(why)))
                if why.starts_with("no answer") =>
            {
                Err(NotNow::Store(why))
            }
            Err(ApplyError::Store(error)) => Err(self.store_failure(error)),
        }
    }

    /// Records `alert` refused by the operator's `pause`, at once, whatever waits on its
    /// instrument.
    async fn refuse(
        &self,
        store: &AnyStore,
        alert: &QueuedAlert,
        pause: Pause,
        deadline: Duration,
    ) -> Result<Answer, NotNow> {
        let claim = claim_of(alert, &self.shared.instance);
        let refusing = store.refuse_signal(&claim, pause.refusal());
        match tokio::time::timeout(deadline, refusing).await {
            Ok(Ok(applied)) => Ok(self.settled(alert, applied)),
            Ok(Err(ApplyError::Store(error))) => Err(self.store_failure(error)),
            Err(_) => Err(NotNow::Store("no answer in time".into())),
        }
    }

    /// Records `refusal` as the outcome of `alert` without trading.
    async fn record_refusal(
        &self,
        store: &AnyStore,
        alert: &QueuedAlert,
        refusal: Refusal,
        deadline: Duration,
    ) -> Result<Answer, NotNow> {
        let claim = claim_of(alert, &self.shared.instance);
        let recording = store.apply_signal(&claim, |_| Err(refusal));
        match tokio::time::timeout(deadline, recording).await {
            Ok(Ok(applied)) => Ok(self.settled(alert, applied)),
            Ok(Err(ApplyError::Store(error))) => Err(self.store_failure(error)),
            Err(_) => Err(NotNow::Store("no answer in time".into())),
        }
    }

    /// Logs and counts a settled outcome.
    fn settled(&self, alert: &QueuedAlert, applied: Applied) -> Answer {
        let signal = &alert.signal;
        let fingerprint = short(&alert.fingerprint);
        let (outcome, answer) = match applied {
            Applied::Done(plan) => {
                *self
                    .shared
                    .counts
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = None;
                let positions = plan.position_ids();
                tracing::info!(target: "vigil::signal", signal = %signal.kind, instrument = %signal.instrument, fingerprint = %fingerprint, "applied: {}", positions.join(", "));
                ("applied", Answer::Applied(positions))
            }
            Applied::Refused(refusal) => {
                tracing::warn!(target: "vigil::signal", signal = %signal.kind, instrument = %signal.instrument, fingerprint = %fingerprint, "{}: {refusal}", refusal.status());
                if matches!(refusal, Refusal::Expired { .. }) {
                    self.shared.notifier.notify(
                        crate::notify::Event::AlertExpired,
                        format!(
                            "{} on {} ({fingerprint}) traded nothing: {refusal}",
                            signal.kind, signal.instrument
                        ),
                    );
                }
                (refusal.status(), Answer::Refused(refusal))
            }
            Applied::Duplicate => ("duplicate", Answer::Duplicate),
            Applied::Queued => {
                tracing::info!(target: "vigil::signal", signal = %signal.kind, instrument = %signal.instrument, fingerprint = %fingerprint, "queued behind an older alert of its instrument");
                ("queued", Answer::Queued)
            }
        };
        metrics::counter!(SIGNAL_OUTCOMES, "outcome" => outcome).increment(1);
        answer
    }

    /// Tells the machines about a store failure the policy answers, and keeps the alert.
    fn store_failure(&self, error: StoreError) -> NotNow {
        match &error {
            StoreError::Unavailable(_) => self.report(FailureKind::DbUnavailable),
            StoreError::Corrupt(_) => self.report(FailureKind::DataCorrupt),
            // Contention (a lock held by a peer, a concurrent writer) is not an outage.
            StoreError::Conflict(_) => return NotNow::Contended(error.to_string()),
            StoreError::NoSchema(_)
            | StoreError::BadUrl(_)
            | StoreError::Fenced(_)
            | StoreError::Other(_) => {
                tracing::error!(target: "vigil::signal", "signal not applied: {error}");
            }
        }
        NotNow::Store(error.to_string())
    }

    /// Tells the machines about a failure seen while serving. A full queue means the driver
    /// already has news to process; dropping this report loses nothing it would not learn.
    fn report(&self, kind: FailureKind) {
        let _ = self.shared.inputs.try_send(Input::Failure(kind));
    }

    /// One drain pass. First the journal's alerts move into the signal log as `queued`, as
    /// soon as the database answers, whatever the lifecycle. Then, while the lifecycle
    /// applies their types (or the instance is `stopping`), the oldest queued alert of each
    /// instrument is applied, up to [`DRAIN_CONCURRENCY`] at once, again and again, once no other live instance still holds
    /// alerts in its journal and once it has waited [`QUEUE_SETTLE`], so that alerts that
    /// reached different instances during an outage are applied in alert order. Returns how
    /// many were settled.
    pub async fn drain(&self, stopping: bool) -> usize {
        let _one_pass = self.draining.lock().await;
        let Some(store) = self.shared.store() else {
            return 0;
        };
        if !self.move_journal(&store).await {
            return 0;
        }
        if !(self.shared.view().state.is_serving() || stopping) {
            return 0;
        }
        let stale_after = self.shared.coordination.timings().instance_stale_after;
        let fresh_since = Utc::now() - chrono::Duration::from_std(stale_after).unwrap_or_default();
        let elsewhere = store.journal_backlog_elsewhere(&self.shared.instance, fresh_since);
        match tokio::time::timeout(DRAIN_STORE_DEADLINE, elsewhere).await {
            Ok(Ok(0)) => {}
            Ok(Ok(pending)) => {
                tracing::debug!(target: "vigil::intake", "waiting for {pending} alerts other instances hold in their journals");
                return 0;
            }
            Ok(Err(_)) | Err(_) => return 0,
        }
        let mut settled = 0;
        loop {
            let heads =
                match tokio::time::timeout(DRAIN_STORE_DEADLINE, store.queued_heads(DRAIN_BATCH))
                    .await
                {
                    Ok(Ok(heads)) => heads,
                    Ok(Err(_)) | Err(_) => return settled,
                };
            let view = self.shared.view();
            let now = Utc::now();
            // The oldest alert of each instrument that can go now; an instrument's next alert
            // is read afresh after this one settled, so that an older alert another instance
            // queued meanwhile goes first.
            let mut due: Vec<(QueuedAlert, Option<Refusal>)> = Vec::new();
            for row in heads {
                let alert = match queued_alert(&row) {
                    Ok(alert) => alert,
                    Err(problem) => {
                        tracing::error!(target: "vigil::intake", "queued alert {} cannot be read: {problem}", short(&row.fingerprint));
                        self.report(FailureKind::DataCorrupt);
                        return settled;
                    }
                };
                let settling = row.queued_at.parse::<DateTime<Utc>>().is_ok_and(|at| {
                    now.signed_duration_since(at).to_std().unwrap_or_default() >= QUEUE_SETTLE
                });
                // Never while the operator's pause holds it back, not even at a stop.
                let allowed = (view.accepts.contains(alert.signal.kind) || stopping)
                    && !self.shared.pause.borrow().holds_back(alert.signal.kind);
                let stale = expired(&alert.signal, now, self.ages.max_age(alert.signal.kind));
                match (settling || stopping, allowed, stale) {
                    (true, true, _) => due.push((alert, None)),
                    // Not applied while degraded, but it may expire meanwhile.
                    (true, false, Some(refusal)) => due.push((alert, Some(refusal))),
                    (false, _, _) | (true, false, None) => {}
                }
            }
            let store = &store;
            // Instruments at once: each head is another instrument's.
            let passes: Vec<Result<bool, NotNow>> =
                futures_util::stream::iter(due.into_iter().map(|(alert, refusal)| async move {
                    let outcome = match refusal {
                        None => self.apply(store, &alert, DRAIN_STORE_DEADLINE).await,
                        Some(refusal) => {
                            self.record_refusal(store, &alert, refusal, DRAIN_STORE_DEADLINE)
                                .await
                        }
                    };
                    match outcome {
                        Ok(Answer::Queued) | Err(NotNow::Busy | NotNow::Contended(_)) => Ok(false),
                        Ok(_) => {
                            crate::failpoint::hit("after_drain_commit");
                            Ok(true)
                        }
                        Err(not_now) => Err(not_now),
                    }
                }))
                .buffer_unordered(DRAIN_CONCURRENCY)
                .collect()
                .await;
            let mut progress = false;
            let mut paused = None;
            for pass in passes {
                match pass {
                    Ok(applied) => {
                        settled += usize::from(applied);
                        progress |= applied;
                    }
                    Err(not_now) => paused = paused.or(Some(not_now)),
                }
            }
            if let Some(not_now) = paused {
                tracing::debug!(target: "vigil::intake", "drain paused: {not_now}");
                return settled;
            }
            if !progress {
                return settled;
            }
        }
    }

    /// Moves every journaled alert into the signal log as `queued` and marks it settled in
    /// the journal; records this instance's journal backlog for the others. Whether the
    /// journal is empty now.
    async fn move_journal(&self, store: &AnyStore) -> bool {
        let waiting: Vec<Waiting> = {
            let queue = self.queue();
            queue
                .by_instrument
                .values()
                .flat_map(|queued| queued.values().cloned())
                .collect()
        };
        if waiting.is_empty() {
            return true;
        }
        // Alerts the operator held back are recorded refused: they take no turn.
        let (held, waiting): (Vec<Waiting>, Vec<Waiting>) = waiting
            .into_iter()
            .partition(|waiting| waiting.alert.held_back_by.is_some());
        for waiting in &held {
            let Some(pause) = waiting.alert.held_back_by else {
                continue;
            };
            match self
                .refuse(store, &waiting.alert, pause, DRAIN_STORE_DEADLINE)
                .await
            {
                Ok(_) => self.settle(waiting).await,
                Err(not_now) => {
                    tracing::debug!(target: "vigil::intake", "journal not moved: {not_now}");
                    return false;
                }
            }
        }
        if waiting.is_empty() {
            return true;
        }
        // Tell the others first, so they wait for these before applying anything.
        let pending = i64::try_from(waiting.len()).unwrap_or(i64::MAX);
        let told = store.record_journal_backlog(&self.shared.instance, pending);
        let answered = matches!(
            tokio::time::timeout(DRAIN_STORE_DEADLINE, told).await,
            Ok(Ok(()))
        );
        self.store_answered(answered);
        if !answered {
            return false;
        }
        for chunk in waiting.chunks(MOVE_BATCH) {
            let claims: Vec<SignalClaim<'_>> = chunk
                .iter()
                .map(|waiting| claim_of(&waiting.alert, &self.shared.instance))
                .collect();
            let moved = store.queue_signals(&claims);
            match tokio::time::timeout(DRAIN_STORE_DEADLINE, moved).await {
                Ok(Ok(_)) => {}
                Ok(Err(error)) => {
                    tracing::debug!(target: "vigil::intake", "journal not moved: {error}");
                    return false;
                }
                Err(_) => return false,
            }
            crate::failpoint::hit("after_journal_move");
            for waiting in chunk {
                self.settle(waiting).await;
            }
        }
        tracing::info!(target: "vigil::intake", "moved {} journaled alerts into the signal log", waiting.len());
        let told = store.record_journal_backlog(&self.shared.instance, 0);
        let _ = tokio::time::timeout(DRAIN_STORE_DEADLINE, told).await;
        true
    }

    /// Marks `waiting` settled in the journal and drops it from the queue. A mark that is
    /// lost (a crash, a failed write) only means the alert is drained again, and then found
    /// a duplicate.
    async fn settle(&self, waiting: &Waiting) {
        if let Ok(journal) = &self.journal {
            let journal = Arc::clone(journal);
            let seq = waiting.seq;
            match tokio::task::spawn_blocking(move || journal.settle(seq)).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::warn!(target: "vigil::intake", "cannot mark record {seq} settled: {error}")
                }
                Err(error) => {
                    tracing::warn!(target: "vigil::intake", "cannot mark record {seq} settled: {error}")
                }
            }
        }
        self.queue().remove(waiting);
        self.publish();
    }

    /// Drains whenever woken or every [`DRAIN_INTERVAL`], while the instance serves; while
    /// the database is backing off, only every [`DRAIN_INTERVAL`], so that an outage costs
    /// one attempt per interval rather than one per alert journaled. Runs until the process
    /// ends.
    pub async fn run_drainer(self: Arc<Self>) {
        let mut lifecycle = self.shared.lifecycle.subscribe();
        loop {
            let backing_off = self.store_backing_off();
            tokio::select! {
                () = self.wake.notified(), if !backing_off => {}
                _ = lifecycle.changed() => {}
                () = tokio::time::sleep(DRAIN_INTERVAL) => {}
            }
            self.drain(false).await;
        }
    }

    /// At a graceful stop: drains what the database takes within `deadline`, and says how
    /// many alerts stay in the journal for the next start.
    pub async fn flush(&self, deadline: Duration) -> usize {
        let _ = tokio::time::timeout(deadline, self.drain(true)).await;
        let left = self.pending();
        if left > 0 {
            tracing::warn!(target: "vigil::intake", "{left} queued alerts stay in the intake journal; they are applied at the next start");
        }
        left
    }
}

/// The claim of `alert` by `instance`.
fn claim_of<'a>(alert: &'a QueuedAlert, instance: &'a str) -> SignalClaim<'a> {
    SignalClaim {
        signal: &alert.signal,
        fingerprint: &alert.fingerprint,
        instance_id: instance,
        received_at: alert.received_at,
    }
}

/// A queued row of the signal log as an alert.
fn queued_alert(row: &QueuedRow) -> Result<QueuedAlert, String> {
    let signal: Signal = serde_json::from_str(&row.payload)
        .map_err(|error| format!("its payload is not a signal: {error}"))?;
    let received_at = row
        .received_at
        .parse::<DateTime<Utc>>()
        .map_err(|error| format!("received_at {:?} is not a time: {error}", row.received_at))?;
    Ok(QueuedAlert {
        fingerprint: row.fingerprint.clone(),
        signal,
        received_at,
        held_back_by: None,
    })
}

/// The refusal of an alert whose instrument this deployment does not configure.
fn unknown_instrument(signal: &Signal) -> Refusal {
    Refusal::Rejected(crate::trading::plan::Rejection {
        field: "instrument",
        message: format!("{} is not configured", signal.instrument),
    })
}

/// The first 16 characters of a fingerprint, as logs show it.
pub fn short(fingerprint: &str) -> &str {
    fingerprint.get(..16).unwrap_or(fingerprint)
}

/// Alerts settled, by outcome (`applied`, `rejected`, `expired`, `superseded`, `refused` by
/// the operator's pause, `duplicate`), and journaled (`queued`).
pub const SIGNAL_OUTCOMES: &str = "vigil_signal_outcomes_total";

/// Alerts in the intake journal not yet settled.
pub const JOURNAL_PENDING: &str = "vigil_journal_pending";
