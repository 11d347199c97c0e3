//! Runs the driver against a virtual clock: time jumps straight to the next timer, so a
//! 1s/2s/4s retry schedule finishes at once and still reads t=1s, t=3s, t=7s.
//!
//! A scripted run follows two rules, which make a script read like a story:
//! 1. a failure or `recovered` is what a step found, so it happens once every pending retry
//!    has come due: it is that retry's outcome. So is the database's or the broker's
//!    return (`db_restored`, `broker_restored`) while its retry is pending: only its probe
//!    can find it, as in the service. Any other input (`stop`, `redis_restored`, which the
//!    Redis heartbeat may hear first, a return with no retry pending) is news from outside
//!    and happens at once, before pending retries;
//! 2. after the last input nothing changes: a retry that runs finds the same failure, until
//!    the policy's answer is final (tolerated, halted) or the process ends.

use super::{Driver, Input, Step};
use crate::policy::MAX_RETRY_ATTEMPTS;
use crate::vocabulary::FailureKind;

/// The most steps the settling phase may take: every kind can run every retry, each retry
/// being one timer step and one outcome step. Reaching it means a machine loops.
pub const MAX_SETTLE_STEPS: usize = 2 * FailureKind::ALL.len() * (MAX_RETRY_ATTEMPTS as usize + 1);

/// How a scripted run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ending {
    /// Scripted inputs not delivered because the process had already ended.
    pub undelivered: usize,
}

/// Delivers `script` to `driver` under the two rules above, handing every step to `on_step`.
pub fn run_script(
    driver: &mut Driver,
    script: impl IntoIterator<Item = Input>,
    mut on_step: impl FnMut(&Driver, &Step),
) -> Ending {
    let mut undelivered = 0;
    for input in script {
        if driver.is_terminal() {
            undelivered += 1;
            continue;
        }
        if driver.is_outcome(input) {
            fire_pending_timers(driver, &mut on_step);
        }
        let step = driver.deliver(driver.now_ms(), input);
        on_step(driver, &step);
    }
    settle(driver, &mut on_step);
    Ending { undelivered }
}

/// Fires every pending retry, earliest first, advancing virtual time to each. At most one
/// retry per kind is pending, so this takes at most one step per kind.
fn fire_pending_timers(driver: &mut Driver, on_step: &mut impl FnMut(&Driver, &Step)) {
    for _ in 0..FailureKind::ALL.len() {
        let Some(due_ms) = driver.next_due_ms() else {
            return;
        };
        if let Some(step) = driver.fire_due(due_ms.max(driver.now_ms())) {
            on_step(driver, &step);
        }
    }
}

/// Lets time run with nothing changing until no retry is pending or running.
fn settle(driver: &mut Driver, on_step: &mut impl FnMut(&Driver, &Step)) {
    for _ in 0..MAX_SETTLE_STEPS {
        if driver.is_terminal() {
            return;
        }
        let waiting: Vec<FailureKind> = driver.awaiting_outcome().collect();
        if let Some(kind) = waiting.first() {
            let step = driver.still_failing(driver.now_ms(), *kind);
            on_step(driver, &step);
            continue;
        }
        let Some(due_ms) = driver.next_due_ms() else {
            return;
        };
        if let Some(step) = driver.fire_due(due_ms.max(driver.now_ms())) {
            on_step(driver, &step);
        }
    }
    panic!("the machines did not settle within {MAX_SETTLE_STEPS} steps");
}
