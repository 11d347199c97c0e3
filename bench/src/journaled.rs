//! The `load` benchmark's journaled run, on PostgreSQL only: an instance whose database
//! refuses connections (`ALLOW_CONNECTIONS false`, its sessions ended) answers every alert
//! 202 `queued` from the intake journal; once the database is let back in, the drain is
//! timed from the signal log's `processed_at`.

use crate::database::Database;
use crate::generator::drive;
use crate::load::HttpRun;
use crate::service::{log_findings, Service};
use crate::stats::Stats;
use crate::webhook::{post, webhook_client, Expect};
use crate::workload::{Load, LOAD_INSTANCE};
use anyhow::{bail, Context};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vigil_testkit::free_port;
use vigil_testkit::launch::Run;

/// How long the journaled run waits, after the database returns, for every alert to be
/// settled in the signal log.
const SETTLE_WAIT: Duration = Duration::from_secs(120);

/// Pause between the journaled run's reads of the signal log.
const SETTLE_POLL: Duration = Duration::from_millis(200);

/// What the journaled run measured.
#[derive(Debug)]
pub struct JournaledRun {
    /// Intake while the database refused connections: every answer should be 202 `queued`.
    pub intake: HttpRun,
    /// From the database's return to the last alert settled (out of `queued`).
    pub settled_after: Duration,
    /// How many were applied, and the time from the first apply to the last (the signal
    /// log's `processed_at`): the drain itself.
    pub applied: (i64, Duration),
    /// Outcomes other than `applied`, with their counts.
    pub others: Vec<(String, i64)>,
}

/// The journaled run on PostgreSQL: starts `vigil run` on `database`, makes the database
/// refuse connections (and ends its sessions) and waits for the instance to be `degraded`;
/// sends every alert paced at `rate`, each to be answered 202 `queued` from the intake
/// journal; lets the database back in and waits until every alert is settled in the signal
/// log, then reads how fast they were applied.
pub async fn journaled_run(
    load: &Load,
    database: &Database,
    launch: &Run,
    rate: u32,
) -> anyhow::Result<JournaledRun> {
    let load = &load.restamped()?;
    let Some(scratch) = &database.scratch else {
        bail!("the journaled run needs PostgreSQL, whose connections can be refused");
    };
    let address = format!("127.0.0.1:{}", free_port()?);
    let log = launch.dir().join("journaled.log");
    let mut service = Service::start(launch, &database.url, LOAD_INSTANCE, &address, &log)?;
    service.wait_ready().await?;
    let sent = async {
        scratch.refuse_connections(true).await?;
        service.wait_state("degraded").await?;
        let client = webhook_client(load)?;
        let url = format!("{}/webhook", service.base);
        let bodies = Arc::clone(&load.bodies);
        let sent = drive(load, Some(rate), |index| {
            let (client, url) = (client.clone(), url.clone());
            let body = bodies.get(index).cloned().unwrap_or_default();
            async move { post(&client, &url, body, Expect::Queued).await }
        })
        .await;
        scratch.refuse_connections(false).await?;
        sent
    }
    .await;
    let restored = Instant::now();
    let settled = match &sent {
        Ok(_) => wait_settled(&database.url, load.signals.len(), &service).await,
        Err(_) => Ok(()),
    };
    let settled_after = restored.elapsed();
    let stop_problems: Vec<String> = service.stop_problem().into_iter().collect();
    let (samples, elapsed, max_lag) = sent?;
    settled?;
    let (applied, others) = drain_figures(&database.url).await?;
    Ok(JournaledRun {
        intake: HttpRun {
            stats: Stats::new(samples, elapsed, max_lag),
            logs: vec![(log.clone(), log_findings(&log))],
            stop_problems,
        },
        settled_after,
        applied,
        others,
    })
}

/// Polls the signal log every [`SETTLE_POLL`] until `count` alerts are recorded and none is
/// `queued`, for at most [`SETTLE_WAIT`].
async fn wait_settled(url: &str, count: usize, service: &Service) -> anyhow::Result<()> {
    let expected = i64::try_from(count).context("too many alerts")?;
    let deadline = Instant::now() + SETTLE_WAIT;
    let mut last = String::from("the database did not answer");
    while Instant::now() < deadline {
        if let Ok(pool) = sqlx::PgPool::connect(url).await {
            let counted: Result<(i64, i64), _> = sqlx::query_as(
                "SELECT COUNT(*), COUNT(*) FILTER (WHERE status = 'queued') FROM signal_log",
            )
            .fetch_one(&pool)
            .await;
            pool.close().await;
            match counted {
                Ok((recorded, 0)) if recorded == expected => return Ok(()),
                Ok((recorded, queued)) => {
                    last = format!("{recorded} of {expected} recorded, {queued} still queued");
                }
                Err(error) => last = error.to_string(),
            }
        }
        tokio::time::sleep(SETTLE_POLL).await;
    }
    bail!(
        "the alerts were not all settled {} s after the database returned ({last}); log tail:\n{}",
        SETTLE_WAIT.as_secs(),
        service.log_tail()
    )
}

/// How many alerts were applied and over how long (first to last `processed_at`), and the
/// count of every other outcome.
async fn drain_figures(url: &str) -> anyhow::Result<((i64, Duration), Vec<(String, i64)>)> {
    let pool = sqlx::PgPool::connect(url)
        .await
        .context("cannot connect to the benchmark database")?;
    let read = async {
        let (applied, span): (i64, f64) = sqlx::query_as(
            "SELECT COUNT(*), COALESCE(EXTRACT(EPOCH FROM MAX(processed_at) - MIN(processed_at)), 0)::float8 \
             FROM signal_log WHERE status = 'applied'",
        )
        .fetch_one(&pool)
        .await?;
        let others: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, COUNT(*) FROM signal_log WHERE status <> 'applied' GROUP BY status ORDER BY status",
        )
        .fetch_all(&pool)
        .await?;
        Ok::<_, sqlx::Error>(((applied, Duration::from_secs_f64(span.max(0.0))), others))
    }
    .await;
    pool.close().await;
    read.context("cannot read the signal log")
}
