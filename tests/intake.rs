//! Durable intake against real `vigil run` processes, with a sender that keeps TradingView's
//! delivery contract exactly (one send, at most 3 resends 5 s apart on a 5xx, cancelled at
//! 3 s, a 4xx never resent): a database refusing connections for a minute under load over two
//! instances, `kill -9` at every await point of the alert's path, an instance paused inside
//! a signal transaction, and Redis killed, flushed and restarted under load.
//!
//! `VIGIL_CRASH_RUNS` sets the kills per await point (10 by default).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use chrono::Utc;
use common::cluster::{clean, instrument, wait_for, Cluster, Instance, PASSPHRASE};
use common::tradingview::{self, Delivery};
use common::{execute, postgres_admin_url, ScratchDatabase};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long the database refuses connections in the outage test.
const OUTAGE: Duration = Duration::from_secs(60);
/// Load before the outage and after it.
const LEAD: Duration = Duration::from_secs(3);
const TAIL: Duration = Duration::from_secs(5);
/// Instruments the outage load trades, each its own sender.
const LOAD_INSTRUMENTS: usize = 4;
/// The pause between two alerts of one instrument: 2 alerts per second per instrument.
const ALERT_PAUSE: Duration = Duration::from_millis(500);
/// How long everything may take to settle once the database is back.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often settling is checked.
const POLL: Duration = Duration::from_millis(100);
/// Kills per await point, unless `VIGIL_CRASH_RUNS` says otherwise.
const DEFAULT_CRASH_RUNS: usize = 10;
/// How long an armed instance may take to reach its failpoint.
const FAILPOINT_TIMEOUT: Duration = Duration::from_secs(20);

/// Step `step` of an instrument's cycle (BASE_ENTRY, PYRAMID, EXIT, again), stamped now.
fn cycle_alert(slot: usize, step: usize) -> String {
    let at = Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let ins = instrument(slot);
    let price = 1000 + step;
    match step % 3 {
        0 => format!(
            r#"{{"passphrase":"{PASSPHRASE}","signal":"BASE_ENTRY","instrument":"{ins}","position":"long","price":"{price}","stop":"{}","lots":"1","timestamp":"{at}"}}"#,
            price - 10
        ),
        1 => format!(
            r#"{{"passphrase":"{PASSPHRASE}","signal":"PYRAMID","instrument":"{ins}","position":"p{step}","price":"{price}","stop":"{}","lots":"1","timestamp":"{at}"}}"#,
            price - 5
        ),
        _ => format!(
            r#"{{"passphrase":"{PASSPHRASE}","signal":"EXIT","instrument":"{ins}","price":"{price}","timestamp":"{at}"}}"#
        ),
    }
}

/// Makes the database refuse connections and cuts the ones it has, or lets it take them.
async fn refuse_connections(database: &ScratchDatabase, refuse: bool) {
    let name = &database.name;
    execute(
        &database.admin,
        format!("ALTER DATABASE {name} ALLOW_CONNECTIONS {}", !refuse),
    )
    .await;
    if refuse {
        execute(
            &database.admin,
            format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
            ),
        )
        .await;
    }
}

/// Every signal log row: (fingerprint, status, reason).
async fn signal_log(url: &str) -> Vec<(String, String, Option<String>)> {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let rows = sqlx::query_as("SELECT fingerprint, status, reason FROM signal_log ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    rows
}

/// Open positions per instrument, straight from the database.
async fn open_positions(url: &str) -> Vec<(String, i64)> {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let rows = sqlx::query_as(
        "SELECT instrument, COUNT(*) FROM positions WHERE status = 'open' GROUP BY instrument ORDER BY instrument",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    rows
}

/// Waits until no alert waits anywhere: nothing `queued` in the signal log, nothing in the
/// instances' journals.
async fn wait_settled(url: &str, instances: &[&Instance]) {
    let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
    loop {
        let queued = signal_log(url)
            .await
            .iter()
            .filter(|(_, status, _)| status == "queued")
            .count();
        let mut journaled = 0;
        for instance in instances {
            let status = wait_for(instance, "/status", |_| true).await;
            journaled += status["journal"]["pending"].as_u64().unwrap_or(u64::MAX);
        }
        if queued == 0 && journaled == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{queued} alerts still queued and {journaled} journaled after {SETTLE_TIMEOUT:?}; logs:\n{}",
            instances.iter().map(|i| i.log_text()).collect::<Vec<_>>().join("\n")
        );
        tokio::time::sleep(POLL).await;
    }
}

/// `vigil recover --check` on `url`: its JSON report.
fn recover_check(cluster: &Cluster) -> serde_json::Value {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args([
            "recover",
            "--check",
            "--config",
            "vigil.toml",
            "--database-url",
            &cluster.database_url,
            "--instance",
            "checker",
            "--format",
            "json",
        ])
        .current_dir(&cluster.dir)
        .env_remove("VIGIL_POLICY")
        .env_remove("VIGIL_REDIS_URL")
        .output()
        .unwrap();
    serde_json::from_slice(&output.stdout).unwrap_or_else(|_| {
        panic!(
            "recover --check printed no JSON: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_refusing_connections_for_a_minute_loses_no_alert() {
    let Some(admin) =
        postgres_admin_url("a_database_refusing_connections_for_a_minute_loses_no_alert")
    else {
        return;
    };
    let database = ScratchDatabase::create(&admin, "intake_outage").await;
    let cluster = Cluster::new("intake-outage", &database.url).await;
    let instances = cluster.start_all(2).await;
    let urls: Vec<String> = instances
        .iter()
        .map(|instance| format!("{}/webhook", instance.url))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let senders: Vec<_> = (0..LOAD_INSTRUMENTS)
        .map(|slot| {
            let (urls, stop) = (urls.clone(), Arc::clone(&stop));
            tokio::spawn(async move {
                let client = tradingview::client();
                let mut deliveries: Vec<Delivery> = Vec::new();
                let mut step = 0;
                while !stop.load(Ordering::Acquire) {
                    let url = &urls[(slot + step) % urls.len()];
                    deliveries
                        .push(tradingview::deliver(&client, url, &cycle_alert(slot, step)).await);
                    step += 1;
                    tokio::time::sleep(ALERT_PAUSE).await;
                }
                deliveries
            })
        })
        .collect();
    tokio::time::sleep(LEAD).await;
    refuse_connections(&database, true).await;
    tokio::time::sleep(OUTAGE).await;
    refuse_connections(&database, false).await;
    tokio::time::sleep(TAIL).await;
    stop.store(true, Ordering::Release);
    let mut deliveries = Vec::new();
    let mut steps = Vec::new();
    for sender in senders {
        let sent = sender.await.unwrap();
        steps.push(sent.len());
        deliveries.extend(sent);
    }
    let resends: usize = deliveries.iter().map(|d| d.sends.len() - 1).sum();
    let unacknowledged: Vec<&Delivery> = deliveries.iter().filter(|d| !d.acknowledged()).collect();
    assert!(
        unacknowledged.is_empty(),
        "{} of {} alerts were not acknowledged: {unacknowledged:?}",
        unacknowledged.len(),
        deliveries.len()
    );
    let queued = deliveries
        .iter()
        .filter(|d| d.outcome() == Some("queued"))
        .count();
    let refs: Vec<&Instance> = instances.iter().collect();
    wait_settled(&database.url, &refs).await;
    let log = signal_log(&database.url).await;
    let not_applied: Vec<_> = log
        .iter()
        .filter(|(_, status, _)| status != "applied")
        .collect();
    assert_eq!(log.len(), deliveries.len(), "one signal log row per alert");
    assert!(
        not_applied.is_empty(),
        "applied out of order or not at all: {not_applied:?}"
    );
    for delivery in &deliveries {
        let fingerprint = delivery.last_body["fingerprint"].as_str().unwrap();
        assert!(
            log.iter().any(|(f, _, _)| f == fingerprint),
            "{fingerprint} is not in the signal log"
        );
    }
    // Each instrument ends where its cycle ended: a base and a pyramid open after steps
    // 1 and 2 of a cycle, nothing after an exit.
    let expected: Vec<(String, i64)> = steps
        .iter()
        .enumerate()
        .filter_map(|(slot, &sent)| {
            let open = [0, 1, 2][sent % 3];
            (open > 0).then(|| (instrument(slot), open))
        })
        .collect();
    assert_eq!(open_positions(&database.url).await, expected);
    let check = recover_check(&cluster);
    assert_eq!(check["state"], "active", "{check}");
    println!(
        "{} alerts over {LOAD_INSTRUMENTS} instruments and 2 instances, a {OUTAGE:?} outage: all acknowledged, {queued} queued, {resends} resends, all applied once in order",
        deliveries.len()
    );
    drop(instances);
    database.drop_now().await;
    clean(&cluster.dir);
}

/// Where on the alert's path a run is killed, whether the database refuses connections
/// while its alerts arrive (so that they go through the journal), and how often a run passes
/// that point (the kill comes at one of those passes).
const AWAIT_POINTS: &[(&str, bool, usize)] = &[
    ("after_redis_claim", false, ALERTS_PER_RUN),
    ("after_broker", false, ALERTS_PER_RUN),
    ("inside_transaction", false, ALERTS_PER_RUN),
    ("after_commit", false, ALERTS_PER_RUN),
    ("journal_append", true, ALERTS_PER_RUN),
    // The journal moves into the signal log in one batch.
    ("after_journal_move", true, 1),
    ("after_drain_commit", true, ALERTS_PER_RUN),
];

/// Alerts sent in each run.
const ALERTS_PER_RUN: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_at_every_await_point_loses_and_doubles_nothing() {
    let Some(admin) = postgres_admin_url("kill_9_at_every_await_point_loses_and_doubles_nothing")
    else {
        return;
    };
    let runs = std::env::var("VIGIL_CRASH_RUNS")
        .ok()
        .and_then(|runs| runs.parse().ok())
        .unwrap_or(DEFAULT_CRASH_RUNS);
    let mut report = Vec::new();
    for (point, through_journal, passes) in AWAIT_POINTS {
        let database = ScratchDatabase::create(&admin, "intake_crash").await;
        let cluster = Cluster::new(&format!("intake-crash-{point}"), &database.url).await;
        let client = tradingview::client();
        let mut acknowledged: Vec<String> = Vec::new();
        let mut sent = 0;
        for run in 0..runs {
            // The failpoint fires on the 1st, 2nd or 3rd pass of the run.
            let armed = format!("{point}:{}", 1 + run % passes);
            let mut instance = cluster
                .spawn_with("crash-1", &[("VIGIL_FAILPOINT", &armed)])
                .await;
            common::cluster::wait_ready(&instance).await;
            if *through_journal {
                refuse_connections(&database, true).await;
            }
            let url = format!("{}/webhook", instance.url);
            let deliveries: Vec<_> = (0..ALERTS_PER_RUN)
                .map(|k| {
                    let (client, url) = (client.clone(), url.clone());
                    // Every alert its own instrument: each is a BASE_ENTRY that must open
                    // exactly one position.
                    let body =
                        cycle_alert((run * ALERTS_PER_RUN + k) % common::cluster::INSTRUMENTS, 0);
                    tokio::spawn(async move { tradingview::deliver(&client, &url, &body).await })
                })
                .collect();
            sent += ALERTS_PER_RUN;
            if *through_journal {
                tokio::time::sleep(Duration::from_millis(500)).await;
                refuse_connections(&database, false).await;
            }
            let reached = format!("failpoint {point} reached");
            let deadline = tokio::time::Instant::now() + FAILPOINT_TIMEOUT;
            while !instance.log_text().contains(&reached) {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "run {run}: {point} never reached:\n{}",
                    instance.log_text()
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            instance.kill();
            for delivery in deliveries {
                let delivery = delivery.await.unwrap();
                if delivery.acknowledged() {
                    acknowledged.push(
                        delivery.last_body["fingerprint"]
                            .as_str()
                            .unwrap()
                            .to_string(),
                    );
                }
            }
            // The restarted instance takes new alerts at once, and settles what it holds.
            let restarted = cluster.start("crash-1").await;
            wait_settled(&database.url, &[&restarted]).await;
            restarted.terminate();
            drop(restarted);
            // A log line of the killed process must not satisfy the next run's wait.
            let log = cluster.dir.join("crash-1.log");
            let _ = std::fs::rename(&log, cluster.dir.join(format!("crash-1-{run}.log")));
        }
        let log = signal_log(&database.url).await;
        for fingerprint in &acknowledged {
            assert!(
                log.iter()
                    .any(|(f, status, _)| f == fingerprint && status == "applied"),
                "{point}: acknowledged alert {fingerprint} was lost"
            );
        }
        let applied = log
            .iter()
            .filter(|(_, status, _)| status == "applied")
            .count();
        let open: i64 = open_positions(&database.url)
            .await
            .iter()
            .map(|(_, n)| n)
            .sum();
        assert_eq!(
            open, applied as i64,
            "{point}: a position per applied alert, none doubled"
        );
        assert!(
            log.iter().all(|(_, status, _)| status == "applied"),
            "{point}: {log:?}"
        );
        report.push(format!(
            "{point}: {runs} kills, {sent} alerts sent, {} acknowledged, {applied} applied, none lost or doubled",
            acknowledged.len()
        ));
        database.drop_now().await;
        clean(&cluster.dir);
    }
    println!("{}", report.join("\n"));
}

/// Sends `alerts_per_instrument` cycle alerts per instrument over `instruments`, spread over
/// `urls`, as TradingView would, [`ALERT_PAUSE`] apart per instrument, calling `during`
/// once the load runs; the deliveries, and how many each instrument sent.
async fn load_with<F>(
    urls: &[String],
    instruments: usize,
    alerts_per_instrument: usize,
    during: F,
) -> (Vec<Delivery>, Vec<usize>)
where
    F: std::future::Future<Output = ()>,
{
    let senders: Vec<_> = (0..instruments)
        .map(|slot| {
            let urls = urls.to_vec();
            tokio::spawn(async move {
                let client = tradingview::client();
                let mut deliveries = Vec::new();
                for step in 0..alerts_per_instrument {
                    let url = &urls[(slot + step) % urls.len()];
                    deliveries
                        .push(tradingview::deliver(&client, url, &cycle_alert(slot, step)).await);
                    tokio::time::sleep(ALERT_PAUSE).await;
                }
                deliveries
            })
        })
        .collect();
    during.await;
    let mut deliveries = Vec::new();
    let mut steps = Vec::new();
    for sender in senders {
        let sent = sender.await.unwrap();
        steps.push(sent.len());
        deliveries.extend(sent);
    }
    (deliveries, steps)
}

/// Every delivery acknowledged, every alert applied once, each instrument where its cycle
/// ended, and recovery clean.
async fn assert_all_applied_once(
    what: &str,
    cluster: &Cluster,
    deliveries: &[Delivery],
    steps: &[usize],
    instances: &[&Instance],
) {
    let unacknowledged: Vec<&Delivery> = deliveries.iter().filter(|d| !d.acknowledged()).collect();
    assert!(
        unacknowledged.is_empty(),
        "{what}: not acknowledged: {unacknowledged:?}"
    );
    wait_settled(&cluster.database_url, instances).await;
    let log = signal_log(&cluster.database_url).await;
    assert_eq!(
        log.len(),
        deliveries.len(),
        "{what}: one signal log row per alert"
    );
    let not_applied: Vec<_> = log
        .iter()
        .filter(|(_, status, _)| status != "applied")
        .collect();
    assert!(not_applied.is_empty(), "{what}: {not_applied:?}");
    let expected: Vec<(String, i64)> = steps
        .iter()
        .enumerate()
        .filter_map(|(slot, &sent)| {
            let open = [0, 1, 2][sent % 3];
            (open > 0).then(|| (instrument(slot), open))
        })
        .collect();
    assert_eq!(
        open_positions(&cluster.database_url).await,
        expected,
        "{what}"
    );
    let check = recover_check(cluster);
    assert_eq!(check["state"], "active", "{what}: {check}");
}

/// How long the paused instance stays stopped.
const PAUSE: Duration = Duration::from_secs(20);

/// A paused instance holds a signal transaction's locks only until the server's
/// idle-in-transaction bound cuts it off: the other instance keeps answering 2xx and applies
/// every alert it takes while the first is still stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_paused_inside_a_transaction_holds_up_nobody() {
    let Some(admin) = postgres_admin_url("an_instance_paused_inside_a_transaction_holds_up_nobody")
    else {
        return;
    };
    let database = ScratchDatabase::create(&admin, "intake_pause").await;
    let cluster = Cluster::new("intake-pause", &database.url).await;
    let paused = cluster
        .spawn_with("pause-1", &[("VIGIL_FAILPOINT", "inside_transaction")])
        .await;
    common::cluster::wait_ready(&paused).await;
    let healthy = cluster.start("pause-2").await;
    // The first alert stops inside its transaction, holding the portfolio row; then the
    // whole process stops.
    let client = tradingview::client();
    let held = {
        let (client, url) = (client.clone(), format!("{}/webhook", paused.url));
        tokio::spawn(async move { tradingview::deliver(&client, &url, &cycle_alert(59, 0)).await })
    };
    let deadline = tokio::time::Instant::now() + FAILPOINT_TIMEOUT;
    while !paused
        .log_text()
        .contains("failpoint inside_transaction reached")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            paused.log_text()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    paused.signal("STOP");
    let started = tokio::time::Instant::now();
    let urls = vec![format!("{}/webhook", healthy.url)];
    let (deliveries, steps) = load_with(&urls, LOAD_INSTRUMENTS, 9, async {}).await;
    let unacknowledged = deliveries.iter().filter(|d| !d.acknowledged()).count();
    assert_eq!(unacknowledged, 0, "{deliveries:?}");
    // Applied while the first instance is still stopped.
    wait_settled(&database.url, &[&healthy]).await;
    let settled_after = started.elapsed();
    assert!(
        settled_after < PAUSE,
        "the healthy instance settled its alerts only after {settled_after:?}"
    );
    let log = signal_log(&database.url).await;
    let applied = log
        .iter()
        .filter(|(_, status, _)| status == "applied")
        .count();
    assert_eq!(applied, deliveries.len(), "{log:?}\n{}", healthy.log_text());
    tokio::time::sleep(PAUSE.saturating_sub(started.elapsed())).await;
    paused.signal("CONT");
    // TradingView gave up on the held alert at 3 s, while the instance was stopped; had it
    // been acknowledged, it would have to be applied.
    let held = held.await.unwrap();
    assert!(!held.acknowledged(), "{held:?}");
    let _ = steps;
    let all = deliveries;
    println!(
        "{} alerts on the healthy instance while the other was stopped inside a transaction: all acknowledged and applied within {settled_after:?}",
        all.len()
    );
    drop(paused);
    drop(healthy);
    database.drop_now().await;
    clean(&cluster.dir);
}

/// Redis flushed, killed and restarted under load over two instances: every alert is
/// acknowledged and applied once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_killed_flushed_and_restarted_under_load_loses_nothing() {
    let Some(admin) =
        postgres_admin_url("redis_killed_flushed_and_restarted_under_load_loses_nothing")
    else {
        return;
    };
    let database = ScratchDatabase::create(&admin, "intake_redis").await;
    let mut cluster = Cluster::new("intake-redis", &database.url).await;
    let instances = cluster.start_all(2).await;
    let urls: Vec<String> = instances
        .iter()
        .map(|instance| format!("{}/webhook", instance.url))
        .collect();
    let redis = &mut cluster.redis;
    let (deliveries, steps) = load_with(&urls, LOAD_INSTRUMENTS, 30, async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        redis.command(&["FLUSHALL"]).await.unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
        redis.stop();
        tokio::time::sleep(Duration::from_secs(5)).await;
        redis.resume().await;
    })
    .await;
    let refs: Vec<&Instance> = instances.iter().collect();
    assert_all_applied_once("redis", &cluster, &deliveries, &steps, &refs).await;
    println!(
        "{} alerts over two instances with Redis flushed, killed and restarted: all acknowledged and applied once",
        deliveries.len()
    );
    drop(instances);
    database.drop_now().await;
    clean(&cluster.dir);
}
