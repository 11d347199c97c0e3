//! How `vigil run` hears SIGTERM and SIGINT: the one place in the crate that listens for
//! them. The first asks the machines for a graceful stop (`stop`); a second one, while that
//! stop is under way, ends the process at once with [`EXIT_FORCED`], for an operator who
//! presses Ctrl-C again, or a supervisor that signals again, because the stop is stuck (a
//! database that hangs, a signal in flight that does not finish).
//!
//! The signals are heard on a thread of their own, with its own single-threaded runtime
//! ([`listen`]), so that a wedged service runtime (the kind of stuck a forced stop is for)
//! cannot keep the second signal from ending the process: a worker blocked for good can
//! leave the runtime's I/O driver, which is what hears signals, polled by nobody.
//!
//! What a forced stop leaves behind is what a crash leaves, and recovery is built for it:
//! every acknowledged alert was committed, queued in the signal log or fsynced into the
//! intake journal before its answer, and the journal is read again at the next start and
//! applied once the database answers. A signal still in flight gets no answer, and its
//! transaction, unless it committed, is rolled back. The leader lease and any Redis claims
//! and locks lapse by themselves; the recorded status is not `stopped`.

use crate::driver::Input;
use std::future::Future;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;

/// Exit code of `vigil run` when a second SIGTERM or SIGINT forces a stop already under way:
/// 128 + 2 (SIGINT), what a shell reports for a command interrupted by Ctrl-C.
pub const EXIT_FORCED: u8 = 130;

/// Where stop signals come from: the process's SIGTERM and SIGINT ([`StopSignals`]), or a
/// test's script.
pub trait Source {
    /// Waits for the next stop signal; its name (`SIGTERM`, `SIGINT`).
    fn next(&mut self) -> impl Future<Output = &'static str> + Send;
}

/// SIGTERM and SIGINT, each heard from when [`StopSignals::listen`] ran until the process
/// ends; one that arrives while nobody waits is kept for the next [`Source::next`].
#[derive(Debug)]
pub struct StopSignals {
    /// SIGTERM, if it can be listened for.
    terminate: Option<Signal>,
    /// SIGINT, if it can be listened for.
    interrupt: Option<Signal>,
}

impl StopSignals {
    /// Starts listening; must run inside a Tokio runtime, whose driver then hears them. A
    /// signal that cannot be listened for is logged, and then never heard.
    pub fn listen() -> StopSignals {
        let listen = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(signal) => Some(signal),
            Err(error) => {
                tracing::error!(target: crate::executor::STARTUP_TARGET, "cannot listen for {name}: {error}");
                None
            }
        };
        StopSignals {
            terminate: listen(SignalKind::terminate(), "SIGTERM"),
            interrupt: listen(SignalKind::interrupt(), "SIGINT"),
        }
    }
}

/// Returns when `signal` arrives; never, when it cannot be heard.
async fn heard(signal: Option<&mut Signal>) {
    if let Some(signal) = signal {
        if signal.recv().await.is_some() {
            return;
        }
    }
    std::future::pending::<()>().await;
}

impl Source for StopSignals {
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            () = heard(self.terminate.as_mut()) => "SIGTERM",
            () = heard(self.interrupt.as_mut()) => "SIGINT",
        }
    }
}

/// What a forced stop leaves behind, for its log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Left {
    /// Signals between arrival and answer.
    pub in_flight: usize,
    /// Alerts in the intake journal not yet moved into the database.
    pub journaled: usize,
}

/// The line a forced stop logs, `second` being the signal that forced it.
pub fn forced_line(second: &str, left: Left) -> String {
    format!(
        "stop forced by a second stop signal ({second}): exiting now with code {EXIT_FORCED}; signals in flight left unanswered: {}; alerts kept in the intake journal and applied at the next start: {}",
        left.in_flight, left.journaled
    )
}

/// Waits for two stop signals from `signals`. On the first, asks for a graceful stop through
/// `stop`, without waiting for the loop to take it (a stuck loop must not keep the second
/// from being heard); returns the second's name.
pub async fn until_second(signals: &mut impl Source, stop: &mpsc::Sender<Input>) -> &'static str {
    signals.next().await;
    let tell = async {
        // The loop may already have ended; then there is nobody left to tell.
        let _ = stop.send(Input::Stop).await;
        std::future::pending::<&'static str>().await
    };
    tokio::select! {
        second = signals.next() => second,
        never = tell => never,
    }
}

/// `vigil run`'s handling of SIGTERM and SIGINT, from when this returns until the process
/// ends, on a thread of its own: the first stops gracefully through `stop`; a second logs
/// what `left` says stays behind, and ends the process with [`EXIT_FORCED`]. `left` must not
/// wait on the service (it runs when the service may be stuck). When the thread cannot
/// start, that is logged, and the signals keep their default action (the process ends).
pub async fn listen(
    stop: mpsc::Sender<Input>,
    instance: String,
    left: impl Fn() -> Left + Send + 'static,
) {
    let (ready, listening) = tokio::sync::oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("vigil-signals".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    tracing::error!(target: crate::executor::STARTUP_TARGET, instance = %instance, "cannot listen for SIGTERM and SIGINT: {error}");
                    return;
                }
            };
            runtime.block_on(async move {
                let signals = StopSignals::listen();
                let _ = ready.send(());
                stop_on_signals(signals, stop, instance, left).await;
            });
        });
    match thread {
        // Returns once the signals are listened for (or the thread gave up, and said why).
        Ok(_) => {
            let _ = listening.await;
        }
        Err(error) => {
            tracing::error!(target: crate::executor::STARTUP_TARGET, "cannot listen for SIGTERM and SIGINT: {error}");
        }
    }
}

/// The first stop signal stops gracefully through `stop`; a second logs what `left` says
/// stays behind, and ends the process with [`EXIT_FORCED`].
async fn stop_on_signals(
    mut signals: StopSignals,
    stop: mpsc::Sender<Input>,
    instance: String,
    left: impl Fn() -> Left,
) {
    let second = until_second(&mut signals, &stop).await;
    // Standard error is unbuffered: the line is written before the process ends.
    tracing::warn!(
        target: crate::executor::STARTUP_TARGET,
        instance = %instance,
        "{}",
        forced_line(second, left())
    );
    std::process::exit(i32::from(EXIT_FORCED));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Stop signals a test sends.
    struct Script(mpsc::UnboundedReceiver<&'static str>);

    impl Source for Script {
        async fn next(&mut self) -> &'static str {
            match self.0.recv().await {
                Some(name) => name,
                None => std::future::pending().await,
            }
        }
    }

    #[tokio::test]
    async fn the_first_signal_asks_for_a_stop_and_the_second_forces_it() {
        let (send, script) = mpsc::unbounded_channel();
        let (stop, mut inputs) = mpsc::channel(4);
        let mut script = Script(script);
        let waiting = tokio::spawn(async move { until_second(&mut script, &stop).await });
        send.send("SIGTERM").ok();
        assert_eq!(inputs.recv().await, Some(Input::Stop));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "one signal forced the stop");
        send.send("SIGINT").ok();
        let second = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert!(matches!(second, Ok(Ok("SIGINT"))), "{second:?}");
        assert_eq!(inputs.try_recv().ok(), None, "a second stop was sent");
    }

    /// A loop that takes no input (its queue full) does not keep the second signal from
    /// forcing the stop.
    #[tokio::test]
    async fn a_stuck_loop_does_not_hold_up_the_second_signal() {
        let (send, script) = mpsc::unbounded_channel();
        let (stop, _inputs) = mpsc::channel(1);
        stop.try_send(Input::Started).ok();
        let mut script = Script(script);
        let waiting = tokio::spawn(async move { until_second(&mut script, &stop).await });
        send.send("SIGINT").ok();
        send.send("SIGINT").ok();
        let second = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert!(matches!(second, Ok(Ok("SIGINT"))), "{second:?}");
    }

    #[test]
    fn the_forced_line_says_what_stays_behind() {
        let line = forced_line(
            "SIGINT",
            Left {
                in_flight: 1,
                journaled: 3,
            },
        );
        assert_eq!(
            line,
            "stop forced by a second stop signal (SIGINT): exiting now with code 130; signals in flight left unanswered: 1; alerts kept in the intake journal and applied at the next start: 3"
        );
    }
}
