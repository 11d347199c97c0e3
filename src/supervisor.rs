//! What the service manager sees of the process, by systemd's notify protocol (the
//! `sd-notify` crate): `READY=1` once the instance first serves (`active` or `degraded`,
//! recovery done), `STATUS=` with the lifecycle state and why at every lifecycle
//! transition, `WATCHDOG=1` from the driver loop itself (so a wedged loop stops the pings
//! and systemd kills the process, while a merely live process would not), and `STOPPING=1`
//! when the instance starts to stop. Without `NOTIFY_SOCKET` every call does nothing.

use crate::machines::{MachineName, Transition};
use sd_notify::NotifyState;
use std::time::Duration;

/// The lifecycle states in which the instance serves: the first one reached sends
/// `READY=1`.
const SERVING_STATES: [&str; 3] = ["active", "degraded", "paused"];

/// The lifecycle state whose entry sends `STOPPING=1`.
const STOPPING_STATE: &str = "stopping";

/// How many watchdog intervals fit in systemd's `WATCHDOG_USEC`: pinging at half of it
/// leaves one interval of slack for a busy machine, as `sd_watchdog_enabled(3)` advises.
const WATCHDOG_PINGS_PER_TIMEOUT: u32 = 2;

/// Tells the service manager how the instance is doing.
#[derive(Debug, Default)]
pub struct Supervisor {
    /// Whether a service manager listens (`NOTIFY_SOCKET` was set at start): without one,
    /// nothing is sent.
    listening: bool,
    /// Whether `READY=1` was sent: it is sent once, at the first serving state.
    ready: bool,
    /// Whether a failed send was logged already: the first one is, the rest are not, so a
    /// gone manager does not fill the log.
    send_failed: bool,
    /// How often the driver loop pings the watchdog, in milliseconds: `WATCHDOG_USEC` over
    /// [`WATCHDOG_PINGS_PER_TIMEOUT`], or none when systemd set no watchdog for this process.
    watchdog_interval_ms: Option<u64>,
}

impl Supervisor {
    /// A supervisor that sends nothing, for an executor no service manager watches.
    pub fn none() -> Supervisor {
        Supervisor::default()
    }

    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` as systemd sets them.
    pub fn from_environment() -> Supervisor {
        let listening = std::env::var_os("NOTIFY_SOCKET").is_some();
        let watchdog_interval_ms = sd_notify::watchdog_enabled()
            .filter(|_| listening)
            .map(|timeout| timeout / WATCHDOG_PINGS_PER_TIMEOUT)
            .map(|interval| {
                u64::try_from(interval.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1)
            });
        Supervisor {
            listening,
            ready: false,
            send_failed: false,
            watchdog_interval_ms,
        }
    }

    /// How often the driver loop pings, in milliseconds; none without a watchdog.
    pub fn watchdog_interval_ms(&self) -> Option<u64> {
        self.watchdog_interval_ms
    }

    /// The watchdog's interval, for the start-up log line.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog_interval_ms.map(Duration::from_millis)
    }

    /// Reports the lifecycle transitions of a step: `STATUS=` for each, `READY=1` at the
    /// first serving state, `STOPPING=1` on entering `stopping`.
    pub fn observe(&mut self, transitions: &[Transition]) {
        for transition in transitions {
            if transition.machine != MachineName::Lifecycle {
                continue;
            }
            let status = format!("{}: {}", transition.to, transition.message);
            let mut states = vec![NotifyState::Status(&status)];
            if !self.ready && SERVING_STATES.contains(&transition.to) {
                self.ready = true;
                states.push(NotifyState::Ready);
            }
            if transition.to == STOPPING_STATE && transition.from != STOPPING_STATE {
                states.push(NotifyState::Stopping);
            }
            self.send(&states);
        }
    }

    /// `WATCHDOG=1`: the driver loop is turning.
    pub fn alive(&mut self) {
        if self.watchdog_interval_ms.is_some() {
            self.send(&[NotifyState::Watchdog]);
        }
    }

    fn send(&mut self, states: &[NotifyState<'_>]) {
        if !self.listening {
            return;
        }
        if let Err(error) = sd_notify::notify(states) {
            if !self.send_failed {
                self.send_failed = true;
                tracing::warn!(target: "vigil::startup", "cannot notify the service manager (NOTIFY_SOCKET): {error}; later failures are not logged");
            }
        }
    }
}
