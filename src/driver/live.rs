//! The live loop: inputs arrive on a channel, every command is handed to an [`Executor`] that
//! carries it out for real, and retries wait on a [`Clock`]. The service uses tokio's clock
//! ([`TokioClock`]); tests that drive real storage use [`InstantClock`], which jumps straight
//! to each deadline so a 1s/2s/4s schedule runs at once and still reads t=1s, t=3s, t=7s.

use super::{Driver, Input, Step};
use crate::machines::Command;
use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How many inputs may wait for the driver. Inputs are rare (failures, recoveries, shutdown),
/// so a full queue means the driver is stuck, and senders should wait rather than pile up.
pub const INPUT_QUEUE_DEPTH: usize = 64;

/// The most follow-up inputs waiting at once. Only a command with an outcome produces one
/// (connect, recover, probe, drain, serve when it settles), a step holds at most one probe
/// per failure kind and one entry's commands, and outcome steps schedule retries rather than
/// run them, so the queue stays short; exceeding this bound means the commands loop, which
/// is a bug.
pub const MAX_PENDING_FOLLOW_UPS: usize = 16;

/// The input channel the service feeds the driver through, bounded by [`INPUT_QUEUE_DEPTH`].
pub fn channel() -> (mpsc::Sender<Input>, mpsc::Receiver<Input>) {
    mpsc::channel(INPUT_QUEUE_DEPTH)
}

/// Carries out commands in the real world.
pub trait Executor {
    /// Carries out `command`. Returns the input it produced, if any: the outcome of a
    /// [`Command::Connect`], [`Command::Recover`], [`Command::Probe`], [`Command::Drain`] or
    /// [`Command::Serve`] is the next input for the machines.
    fn execute(&mut self, command: &Command) -> impl Future<Output = Option<Input>>;

    /// Sees every step before its commands are carried out (for status pages and tests).
    fn observe(&mut self, step: &Step) {
        let _ = step;
    }

    /// How often, in milliseconds, the loop tells [`Executor::alive`] that it turns: none
    /// by default.
    fn liveness_interval_ms(&self) -> Option<u64> {
        None
    }

    /// Called by the loop itself, at least every [`Executor::liveness_interval_ms`] while
    /// it turns: a loop stuck in a command stops calling it (systemd's watchdog).
    fn alive(&mut self) {}
}

/// Where the live loop gets its time from.
pub trait Clock {
    /// Milliseconds since the loop started.
    fn now_ms(&self) -> u64;

    /// Waits until `due_ms`.
    fn sleep_until_ms(&mut self, due_ms: u64) -> impl Future<Output = ()>;
}

/// tokio's clock, for the service.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    /// When the loop started.
    started: Instant,
}

impl TokioClock {
    /// A clock whose time 0 is now.
    pub fn start() -> TokioClock {
        TokioClock {
            started: Instant::now(),
        }
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    async fn sleep_until_ms(&mut self, due_ms: u64) {
        tokio::time::sleep_until(self.started + Duration::from_millis(due_ms)).await;
    }
}

/// A clock that never waits: asked to sleep, it moves its time to the deadline at once.
#[derive(Debug, Clone, Copy, Default)]
pub struct InstantClock {
    /// The current time.
    now_ms: u64,
}

impl Clock for InstantClock {
    fn now_ms(&self) -> u64 {
        self.now_ms
    }

    async fn sleep_until_ms(&mut self, due_ms: u64) {
        self.now_ms = self.now_ms.max(due_ms);
    }
}

/// Carries out the initial step, then runs until the lifecycle reaches a terminal state and
/// returns the process exit code. Inputs already waiting are taken before a retry that is
/// due. When every sender is dropped, nobody is left to report signals in flight, so the
/// instance stops and drains at once.
pub async fn run<E: Executor, C: Clock>(
    driver: &mut Driver,
    init: &Step,
    inputs: &mut mpsc::Receiver<Input>,
    executor: &mut E,
    clock: &mut C,
) -> u8 {
    let liveness_interval_ms = executor.liveness_interval_ms();
    let mut alive_due_ms = liveness_interval_ms.map(|_| clock.now_ms());
    let mut follow_ups = VecDeque::new();
    carry_out(executor, init, &mut follow_ups).await;
    drain_follow_ups(driver, executor, clock, &mut follow_ups).await;
    let mut closed = false;
    loop {
        crate::failpoint::hit("driver_loop");
        if let Some(code) = driver.exit_code() {
            return code;
        }
        if let (Some(interval_ms), Some(due_ms)) = (liveness_interval_ms, alive_due_ms) {
            let now_ms = clock.now_ms();
            if now_ms >= due_ms {
                executor.alive();
                alive_due_ms = Some(now_ms.saturating_add(interval_ms));
            }
        }
        let retry_due_ms = driver.next_due_ms();
        let deadline = match (retry_due_ms, alive_due_ms) {
            (Some(due_ms), Some(alive_ms)) => Some(due_ms.min(alive_ms)),
            (due_ms, alive_ms) => due_ms.or(alive_ms),
        };
        let step = tokio::select! {
            biased;
            input = inputs.recv(), if !closed => match input {
                Some(input) => driver.deliver(clock.now_ms().max(driver.now_ms()), input),
                None => {
                    closed = true;
                    let stop = driver.deliver(clock.now_ms().max(driver.now_ms()), Input::Stop);
                    carry_out(executor, &stop, &mut VecDeque::new()).await;
                    driver.deliver(driver.now_ms(), Input::Drained)
                }
            },
            // Neither an input nor a retry can arrive any more (the watchdog's pings aside).
            () = std::future::ready(()), if closed && retry_due_ms.is_none() => {
                driver.deliver(driver.now_ms(), Input::Drained)
            }
            () = sleep_until(clock, deadline), if deadline.is_some() => {
                match driver.fire_due(clock.now_ms().max(driver.now_ms())) {
                    Some(step) => step,
                    None => continue,
                }
            }
            else => driver.deliver(driver.now_ms(), Input::Drained),
        };
        carry_out(executor, &step, &mut follow_ups).await;
        drain_follow_ups(driver, executor, clock, &mut follow_ups).await;
    }
}

async fn drain_follow_ups<E: Executor, C: Clock>(
    driver: &mut Driver,
    executor: &mut E,
    clock: &C,
    follow_ups: &mut VecDeque<Input>,
) {
    while let Some(input) = follow_ups.pop_front() {
        let step = driver.deliver(clock.now_ms().max(driver.now_ms()), input);
        carry_out(executor, &step, follow_ups).await;
    }
}

async fn carry_out<E: Executor>(executor: &mut E, step: &Step, follow_ups: &mut VecDeque<Input>) {
    // Observed first, so commands are carried out knowing the transitions that caused them.
    executor.observe(step);
    for command in &step.commands {
        if let Some(input) = executor.execute(command).await {
            assert!(
                follow_ups.len() < MAX_PENDING_FOLLOW_UPS,
                "commands produced too many follow-up inputs"
            );
            follow_ups.push_back(input);
        }
    }
}

async fn sleep_until<C: Clock>(clock: &mut C, deadline: Option<u64>) {
    match deadline {
        Some(due_ms) => clock.sleep_until_ms(due_ms).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::driver::virtual_time::run_script;
    use crate::policy::Policy;
    use crate::vocabulary::FailureKind;

    /// Each transition of `step` as (time, "machine from -> to").
    fn summary(step: &Step) -> Vec<(u64, String)> {
        let describe = |t: &crate::machines::Transition| {
            format!("{} {} -> {}", t.machine.as_str(), t.from, t.to)
        };
        step.transitions
            .iter()
            .map(|t| (step.at_ms, describe(t)))
            .collect()
    }

    /// Answers every reattempt as the virtual clock's settling rule does: nothing changed,
    /// so the failure persists. Records every step.
    struct Persisting {
        steps: Vec<(u64, String)>,
    }

    impl Executor for Persisting {
        async fn execute(&mut self, command: &Command) -> Option<Input> {
            match command {
                Command::Probe { kind, .. } => Some(Input::Failure(*kind)),
                Command::Connect => Some(Input::Started),
                Command::Drain => Some(Input::Drained),
                _ => None,
            }
        }

        fn observe(&mut self, step: &Step) {
            self.steps.extend(summary(step));
        }
    }

    /// The service's clock and the dry-run's clock take the same transitions at the same
    /// times: a 1s/2s/4s schedule under tokio's paused clock matches the virtual one.
    #[tokio::test(start_paused = true)]
    async fn live_loop_matches_virtual_time() {
        let policy = Policy::builtin_default();
        let script = [Input::Started, Input::Failure(FailureKind::DbUnavailable)];

        let (mut virtual_driver, init) = Driver::new(&policy, "vigil", fastrand::Rng::with_seed(1));
        let mut expected = Vec::new();
        let mut record = |step: &Step| expected.extend(summary(step));
        record(&init);
        run_script(&mut virtual_driver, script, |_, step| record(step));

        let (mut driver, init) = Driver::new(&policy, "vigil", fastrand::Rng::with_seed(1));
        let mut executor = Persisting { steps: Vec::new() };
        let (sender, mut receiver) = channel();
        for input in script {
            sender.send(input).await.unwrap();
        }
        let runner = async {
            // Stop once the outage is tolerated, as an operator would.
            tokio::time::sleep(Duration::from_secs(60)).await;
            sender.send(Input::Stop).await.unwrap();
            sender.send(Input::Drained).await.unwrap();
        };
        let mut clock = TokioClock::start();
        let (code, ()) = tokio::join!(
            run(&mut driver, &init, &mut receiver, &mut executor, &mut clock),
            runner
        );

        assert_eq!(code, 0);
        let until_stop: Vec<_> = executor
            .steps
            .iter()
            .filter(|(at_ms, _)| *at_ms < 60_000)
            .cloned()
            .collect();
        assert_eq!(until_stop, expected);
        let times: Vec<u64> = expected.iter().map(|(at_ms, _)| *at_ms).collect();
        assert!(
            times.contains(&1000) && times.contains(&3000) && times.contains(&7000),
            "{times:?}"
        );
    }

    /// Dropping every sender stops the instance gracefully, even with a retry pending.
    #[tokio::test(start_paused = true)]
    async fn closing_the_channel_stops_the_instance() {
        let policy = Policy::builtin_default();
        let (mut driver, init) = Driver::new(&policy, "vigil", fastrand::Rng::with_seed(1));
        let mut executor = Persisting { steps: Vec::new() };
        let (sender, mut receiver) = channel();
        for input in [
            Input::Started,
            Input::Recovered,
            Input::Failure(FailureKind::BrokerUnavailable),
        ] {
            sender.send(input).await.unwrap();
        }
        drop(sender);
        let code = run(
            &mut driver,
            &init,
            &mut receiver,
            &mut executor,
            &mut InstantClock::default(),
        )
        .await;
        assert_eq!(code, 0);
        assert_eq!(driver.state().name(), "stopped");
        assert_eq!(driver.next_due_ms(), None);
    }
}
