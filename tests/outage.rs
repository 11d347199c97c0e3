//! A real `vigil run` on PostgreSQL whose database starts refusing connections while the
//! instance is active: what the machines decide is published at once, the retries keep the
//! policy's times, and a stop is not held up by the dead database.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use chrono::{DateTime, Utc};
use common::cluster::{clean, wait_ready, Cluster, Instance};
use common::{execute, postgres_admin_url, ScratchDatabase};
use std::time::Duration;

/// How often the test asks `/ready` and reads the log.
const POLL: Duration = Duration::from_millis(10);

/// How long after the machines' decision `/ready` may still say 200.
const PUBLISH_BOUND: Duration = Duration::from_millis(200);

/// How long a SIGTERM may take to end the process with the database gone.
const STOP_BOUND: Duration = Duration::from_secs(2);

/// The scheduling slack allowed on top of the policy's first retry delay (1 s).
const RETRY_SLACK: Duration = Duration::from_millis(300);

/// How much earlier than the delay the retry may seem to run: a log line is stamped when it
/// is written, a little after the step that scheduled the retry read the clock.
const STAMP_SLACK: Duration = Duration::from_millis(50);

/// How long the test waits for anything before it fails.
const PHASE_TIMEOUT: Duration = Duration::from_secs(20);

/// The wall-clock time a log line carries, with the line, for the first line containing
/// `needle`.
fn logged(instance: &Instance, needle: &str) -> Option<(DateTime<Utc>, String)> {
    let log = instance.log_text();
    let line = log.lines().find(|line| line.contains(needle))?;
    let stamp = line.split_whitespace().next()?;
    let at = DateTime::parse_from_rfc3339(stamp)
        .ok()?
        .with_timezone(&Utc);
    Some((at, line.to_string()))
}

/// Polls the log until a line contains `needle`.
async fn wait_logged(instance: &Instance, needle: &str) -> (DateTime<Utc>, String) {
    let deadline = tokio::time::Instant::now() + PHASE_TIMEOUT;
    loop {
        if let Some(found) = logged(instance, needle) {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{needle:?} never logged:\n{}",
            instance.log_text()
        );
        tokio::time::sleep(POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_refusing_connections_is_published_at_once_and_stops_nothing() {
    let Some(admin) = postgres_admin_url("outage") else {
        return;
    };
    let database = ScratchDatabase::create(&admin, "outage").await;
    let mut cluster = Cluster::new("outage", &database.url).await;
    cluster.use_redis = false;
    let mut instance = cluster.spawn("outage-1").await;
    wait_ready(&instance).await;

    // Ask /ready as fast as the test can, noting when it first says 503.
    let ready_url = format!("{}/ready", instance.operator_url);
    let poller = tokio::spawn(async move {
        let client = reqwest::Client::new();
        loop {
            let answer = client
                .get(&ready_url)
                .timeout(Duration::from_secs(1))
                .send()
                .await;
            if answer.is_ok_and(|response| response.status().as_u16() == 503) {
                return Utc::now();
            }
            tokio::time::sleep(POLL).await;
        }
    });

    // The database stops taking connections and cuts the instance's.
    let name = &database.name;
    execute(
        &admin,
        format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"),
    )
    .await;
    execute(
        &admin,
        format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"),
    )
    .await;

    let (decided, line) = wait_logged(&instance, "serving degraded db_unavailable").await;
    let first_503 = tokio::time::timeout(PHASE_TIMEOUT, poller)
        .await
        .expect("/ready never answered 503")
        .unwrap();
    let published = (first_503 - decided).to_std().unwrap_or(Duration::ZERO);
    assert!(
        published < PUBLISH_BOUND,
        "/ready answered 503 {published:?} after the machines decided ({line})"
    );

    // The first retry runs at the policy's delay (1 s under the built-in policy).
    let (scheduled, _) = wait_logged(&instance, "db_unavailable: retry 1/3 in 1s").await;
    let (ran, _) = wait_logged(&instance, "db_unavailable: retry 1/3 now").await;
    let waited = (ran - scheduled).to_std().unwrap();
    assert!(
        waited + STAMP_SLACK >= Duration::from_secs(1)
            && waited < Duration::from_secs(1) + RETRY_SLACK,
        "the first retry ran {waited:?} after it was scheduled for 1s"
    );

    // A stop with the database gone ends cleanly and soon.
    let asked = tokio::time::Instant::now();
    instance.terminate();
    let code = instance.exit_code().await;
    let took = asked.elapsed();
    assert_eq!(code, Some(0), "{}", instance.log_text());
    assert!(
        took < STOP_BOUND,
        "SIGTERM took {took:?} to end the process:\n{}",
        instance.log_text()
    );
    println!(
        "published 503 {published:?} after the decision; first retry after {waited:?}; stopped in {took:?}"
    );

    execute(
        &admin,
        format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"),
    )
    .await;
    database.drop_now().await;
    clean(&cluster.dir);
}
