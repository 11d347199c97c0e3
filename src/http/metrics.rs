//! Prometheus metrics: signals by outcome, signal latency, lifecycle state, recovery time,
//! leadership and Redis. The leader's consistency alarms and statistics snapshots are
//! counted where they happen (`coordination::leader`).

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// Signals answered, by outcome.
pub const SIGNALS_TOTAL: &str = "vigil_signals_total";
/// Time from arrival to answer of a webhook, in seconds.
pub const SIGNAL_LATENCY: &str = "vigil_signal_latency_seconds";
/// 1 for the lifecycle's current state, 0 for the others.
pub const LIFECYCLE_STATE: &str = "vigil_lifecycle_state";
/// The last recovery's fetch, rebuild and validate time, in seconds.
pub const RECOVERY_DURATION: &str = "vigil_recovery_duration_seconds";

/// 1 while this instance holds the leader lease, 0 otherwise.
pub const LEADER: &str = "vigil_leader";
/// 1 while the configured Redis answers, 0 while it does not; absent with no Redis.
pub const REDIS_UP: &str = "vigil_redis_up";

/// Latency buckets, in seconds: fine below 10 ms, where a healthy instance answers.
const LATENCY_BUCKETS_S: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5,
];

/// The process-wide recorder, installed on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(SIGNAL_LATENCY.to_string()),
                &LATENCY_BUCKETS_S,
            )
            .map(PrometheusBuilder::build_recorder);
        match recorder {
            Ok(recorder) => {
                let handle = recorder.handle();
                // Another recorder may be installed already (a test process building several
                // apps); then this one renders its own, empty, metrics.
                let _ = metrics::set_global_recorder(recorder);
                describe();
                handle
            }
            Err(error) => panic!("the latency buckets are a valid constant: {error}"),
        }
    })
}

/// Gives every metric its `# HELP` line.
fn describe() {
    use crate::coordination::leader::{CONSISTENCY_ALARMS, CONSISTENCY_OK, STATISTICS_SNAPSHOTS};
    use crate::intake::{JOURNAL_PENDING, SIGNAL_OUTCOMES};
    metrics::describe_counter!(SIGNALS_TOTAL, "Webhooks answered, by outcome.");
    metrics::describe_histogram!(
        SIGNAL_LATENCY,
        metrics::Unit::Seconds,
        "Time from arrival to answer of a webhook."
    );
    metrics::describe_gauge!(
        LIFECYCLE_STATE,
        "1 for the lifecycle's current state, 0 for the others."
    );
    metrics::describe_gauge!(
        RECOVERY_DURATION,
        metrics::Unit::Seconds,
        "The last recovery's fetch, rebuild and validate time."
    );
    metrics::describe_gauge!(LEADER, "1 while this instance holds the leader lease.");
    metrics::describe_gauge!(REDIS_UP, "1 while the configured Redis answers.");
    metrics::describe_counter!(SIGNAL_OUTCOMES, "Alerts settled or journaled, by outcome.");
    metrics::describe_gauge!(
        JOURNAL_PENDING,
        "Alerts in the intake journal not yet settled."
    );
    metrics::describe_counter!(
        CONSISTENCY_ALARMS,
        "Consistency checks that raised an alarm."
    );
    metrics::describe_gauge!(
        CONSISTENCY_OK,
        "1 when the leader's last consistency check passed."
    );
    metrics::describe_counter!(
        STATISTICS_SNAPSHOTS,
        "Statistics snapshots written as leader."
    );
    metrics::describe_counter!(
        crate::notify::NOTIFICATIONS_DROPPED,
        "Notifications dropped because a sink's queue was full."
    );
    metrics::describe_counter!(
        crate::notify::NOTIFICATIONS_FAILED,
        "Notifications not delivered after every attempt."
    );
}
