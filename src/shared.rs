//! What the start-up executor knows and the HTTP layer shows: the lifecycle view, the store,
//! the last receipt, recent transitions, and the signals in flight. Written by one side,
//! read by the other, never held across an await.

use crate::coordination::Coordination;
use crate::driver::Input;
use crate::machines::{lifecycle, Transition};
use crate::recovery::Receipt;
use crate::store::operations::Pause;
use crate::store::AnyStore;
use crate::vocabulary::SignalSet;
use serde::Serialize;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use tokio::sync::{mpsc, watch, Notify};

/// How many transitions `/status` shows.
pub const RECENT_TRANSITIONS: usize = 50;

/// The lifecycle as the HTTP layer sees it: what the machines last published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LifecycleView {
    /// The lifecycle state.
    #[serde(serialize_with = "crate::machines::serialize_state")]
    pub state: lifecycle::State,
    /// The signal types accepted now.
    pub accepts: SignalSet,
}

/// A transition as `/status` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecentTransition {
    /// When, as RFC 3339.
    pub at: String,
    /// The transition.
    #[serde(flatten)]
    pub transition: Transition,
}

/// Counts signals being processed, so shutdown can wait for them.
#[derive(Debug, Default)]
pub struct InFlight {
    /// Signals between arrival and answer.
    count: AtomicUsize,
    /// Woken when the count drops to zero.
    idle: Notify,
}

/// Holds one signal in flight until dropped.
#[derive(Debug)]
pub struct InFlightGuard<'a>(&'a InFlight);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl InFlight {
    /// Counts one more signal in flight.
    pub fn enter(&self) -> InFlightGuard<'_> {
        self.count.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(self)
    }

    /// Signals in flight now.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Waits until no signal is in flight.
    pub async fn drained(&self) {
        loop {
            let idle = self.idle.notified();
            if self.count() == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// State shared between the start-up executor and the HTTP layer.
#[derive(Debug)]
pub struct Shared {
    /// The instance id.
    pub instance: String,
    /// The lifecycle view, published on every status and accept change.
    pub lifecycle: watch::Sender<LifecycleView>,
    /// The store, once connected.
    pub store: watch::Sender<Option<AnyStore>>,
    /// The last recovery receipt.
    pub receipt: watch::Sender<Option<Receipt>>,
    /// The last transitions, newest last, at most [`RECENT_TRANSITIONS`].
    pub transitions: Mutex<VecDeque<RecentTransition>>,
    /// Signals being processed.
    pub in_flight: InFlight,
    /// Reports to the machines (a failure seen while serving, a dependency back).
    pub inputs: mpsc::Sender<Input>,
    /// Redis while it answers, the database otherwise.
    pub coordination: Coordination,
    /// The fencing token of the leader lease this instance holds, if it leads.
    pub leadership: watch::Sender<Option<i64>>,
    /// The intake journal's state: what is queued, and whether it can be read.
    pub journal: watch::Sender<crate::intake::JournalStatus>,
    /// The position counts `/status` showed last, and when they were read: read again at
    /// most every few seconds, so no rate of status calls becomes a rate of scans. Emptied
    /// when this instance applies a signal.
    pub counts: Mutex<Option<(tokio::time::Instant, (i64, i64))>>,
    /// The operator's kill switch as last read from the database (at recovery, at every
    /// heartbeat, or set through this instance's operator endpoint). The intake obeys it at
    /// once, before the lifecycle has heard.
    pub pause: watch::Sender<Pause>,
    /// Tells the operator's sinks what happened (none configured: nothing is sent).
    pub notifier: crate::notify::Notifier,
}

impl Shared {
    /// Shared state for `instance`, reporting to the machines through `inputs`, with
    /// database-only coordination under the built-in policy's timings.
    pub fn new(instance: &str, inputs: mpsc::Sender<Input>) -> Shared {
        let timings = crate::policy::Policy::builtin_default().ha;
        let coordination = Coordination::new(None, timings, instance, inputs.clone());
        Shared::with_coordination(instance, inputs, coordination)
    }

    /// Shared state for `instance` coordinating through `coordination`.
    pub fn with_coordination(
        instance: &str,
        inputs: mpsc::Sender<Input>,
        coordination: Coordination,
    ) -> Shared {
        Shared {
            instance: instance.to_string(),
            lifecycle: watch::Sender::new(LifecycleView {
                state: lifecycle::State::initial(),
                accepts: SignalSet::NONE,
            }),
            store: watch::Sender::new(None),
            receipt: watch::Sender::new(None),
            transitions: Mutex::new(VecDeque::with_capacity(RECENT_TRANSITIONS)),
            in_flight: InFlight::default(),
            inputs,
            coordination,
            leadership: watch::Sender::new(None),
            journal: watch::Sender::new(crate::intake::JournalStatus::default()),
            counts: Mutex::new(None),
            pause: watch::Sender::new(Pause::None),
            notifier: crate::notify::Notifier::none(),
        }
    }

    /// The same shared state, notifying through `notifier`.
    #[must_use]
    pub fn with_notifier(mut self, notifier: crate::notify::Notifier) -> Shared {
        self.notifier = notifier;
        self
    }

    /// The lifecycle view now.
    pub fn view(&self) -> LifecycleView {
        *self.lifecycle.borrow()
    }

    /// The fencing token this instance leads with, if it leads.
    pub fn leading(&self) -> Option<i64> {
        *self.leadership.borrow()
    }

    /// The store, if connected.
    pub fn store(&self) -> Option<AnyStore> {
        self.store.borrow().clone()
    }

    /// Takes the operator's kill switch as read (or set here): the intake obeys it from now
    /// on, and the machines hear it when it changed, or when the lifecycle does not show it
    /// yet (an input that found the queue full is sent again at the next reading).
    pub fn heard_pause(&self, pause: Pause) {
        let changed = self.pause.send_if_modified(|held| {
            let changed = *held != pause;
            *held = pause;
            changed
        });
        if changed {
            tracing::warn!(target: "vigil::operator", instance = %self.instance, "the operator's kill switch is now {}", pause.as_str());
        }
        match (changed, pause) {
            (false, _) => {}
            (true, Pause::None) => self.notifier.notify(
                crate::notify::Event::Resumed,
                "trading resumed by the operator",
            ),
            (true, pause) => self.notifier.notify(
                crate::notify::Event::Paused,
                format!("trading paused by the operator ({})", pause.as_str()),
            ),
        }
        let view = self.view();
        let shown = matches!(view.state, lifecycle::State::Paused {});
        let behind = view.state.is_serving() && shown != (pause != Pause::None);
        if changed || behind {
            // A full queue: the next reading of the switch sends it again.
            let _ = self.inputs.try_send(pause.input());
        }
    }

    /// Remembers a transition for `/status`.
    pub fn remember(&self, transition: RecentTransition) {
        let mut transitions = self
            .transitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if transitions.len() == RECENT_TRANSITIONS {
            transitions.pop_front();
        }
        transitions.push_back(transition);
    }

    /// The remembered transitions, oldest first.
    pub fn recent_transitions(&self) -> Vec<RecentTransition> {
        self.transitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }
}
