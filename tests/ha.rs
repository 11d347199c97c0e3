//! Several real `vigil` instances on one PostgreSQL database and one Redis: duplicates
//! spread over instances, a leader killed with -9, Redis lost under load, an instance
//! restarted while the others serve.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cluster::{
    clean, entry, lines_of, post, wait_for, wait_ready, Cluster, Instance, HEARTBEAT, INSTRUMENTS,
    LEASE, LOCK_TTL, POLL_INTERVAL, RENEWAL,
};
use common::{postgres_admin_url, ScratchDatabase};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How often a client resends a signal answered 503 before the test fails: TradingView
/// resends on a 5xx, and "nothing lost" means every signal is applied once in the end.
const MAX_RESENDS: usize = 40;

/// The pause before a resend.
const RESEND_PAUSE: Duration = Duration::from_millis(50);

/// Scheduling and polling slack on top of the protocol's own bound for a takeover: process
/// start-up of the poll, HTTP round trips, and a busy CI machine.
const TAKEOVER_SLACK: Duration = Duration::from_millis(1500);

/// How long queued alerts may take to be settled, and the sender to reach a mark.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The pause between signals of the mid-load test.
const LOAD_PACE: Duration = Duration::from_millis(30);

async fn setup(test: &str) -> Option<(ScratchDatabase, Cluster)> {
    let admin = postgres_admin_url(test)?;
    let database = ScratchDatabase::create(&admin, "ha").await;
    let cluster = Cluster::new(test, &database.url).await;
    Some((database, cluster))
}

/// Sends `body` to `url` until it is answered 200 or 202, as TradingView resends on a 5xx;
/// the final answer's `status` field (`applied`, `duplicate`, or `queued`: a copy that
/// waited for its instrument, recorded durably and applied, or found a duplicate, later).
async fn deliver(url: String, body: String) -> String {
    for _ in 0..MAX_RESENDS {
        let (status, json) = post(url.clone(), body.clone()).await;
        if status == 200 || status == 202 {
            return json["status"].as_str().unwrap().to_string();
        }
        assert_eq!(status, 503, "only 503 may be resent: {json}");
        tokio::time::sleep(RESEND_PAUSE).await;
    }
    panic!("{url} did not accept a signal after {MAX_RESENDS} resends");
}

/// Rows in the signal log and open positions, straight from the database.
async fn database_counts(url: &str) -> (i64, i64) {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let signals: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM signal_log")
        .fetch_one(&pool)
        .await
        .unwrap();
    let open: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM positions WHERE status = 'open'")
        .fetch_one(&pool)
        .await
        .unwrap();
    pool.close().await;
    (signals.0, open.0)
}

/// The fencing tokens every statistics snapshot was written with, in write order.
async fn statistics_tokens(url: &str) -> Vec<i64> {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let tokens: Vec<(i64,)> = sqlx::query_as("SELECT fencing_token FROM statistics ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    pool.close().await;
    tokens.into_iter().map(|(token,)| token).collect()
}

/// The instance that leads now, by index, once exactly one does.
async fn leader(instances: &[&Instance]) -> usize {
    let deadline = Instant::now() + common::cluster::START_TIMEOUT;
    loop {
        let mut leaders = Vec::new();
        for (index, instance) in instances.iter().enumerate() {
            if let Some(status) = instance.get("/status").await {
                if status["leader"] == true {
                    leaders.push(index);
                }
            }
        }
        if let [only] = leaders[..] {
            return only;
        }
        assert!(Instant::now() < deadline, "no single leader: {leaders:?}");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Every "leading ... with fencing token N" line of `logs`, as (time, instance, token),
/// in time order.
fn leadership_grants(logs: &[(String, String)]) -> Vec<(String, String, i64)> {
    let mut grants = Vec::new();
    for (id, log) in logs {
        for line in log.lines() {
            if let Some((_, rest)) = line.split_once("leading background tasks with fencing token ")
            {
                let token = rest.split_whitespace().next().unwrap().parse().unwrap();
                let at = line.split_whitespace().next().unwrap().to_string();
                grants.push((at, id.clone(), token));
            }
        }
    }
    grants.sort();
    grants
}

/// Sends `body` 10 times at once, spread over the instances at `urls`; every answer must be
/// 200 or 202. The counts of `applied` and `queued` answers (the rest are duplicates).
async fn storm(urls: &[String], body: &str) -> (usize, usize) {
    let sends: Vec<_> = (0..10)
        .map(|n| tokio::spawn(post(urls[n % urls.len()].clone(), body.to_string())))
        .collect();
    let mut outcomes = Vec::new();
    for send in sends {
        let (status, json) = send.await.unwrap();
        assert!(status == 200 || status == 202, "{json}");
        outcomes.push(json["status"].as_str().unwrap().to_string());
    }
    // A copy that waited too long for its instrument is queued (202), and settled later.
    let count = |what: &str| outcomes.iter().filter(|o| *o == what).count();
    assert_eq!(
        count("applied") + count("duplicate") + count("queued"),
        10,
        "{outcomes:?}"
    );
    (count("applied"), count("queued"))
}

/// Waits (at most [`SETTLE_TIMEOUT`]) until nothing is `queued` in the signal log.
async fn wait_settled(url: &str) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        let queued: (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM signal_log WHERE status = 'queued'")
                .fetch_one(&pool)
                .await
                .unwrap();
        pool.close().await;
        if queued.0 == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} alerts still queued",
            queued.0
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Waits until `sent` reaches `count`, failing if the sender stopped first or it takes
/// longer than [`SETTLE_TIMEOUT`].
async fn wait_sent(
    sent: &AtomicUsize,
    count: usize,
    sender: &tokio::task::JoinHandle<Vec<(String, String)>>,
) {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while sent.load(Ordering::Acquire) < count {
        assert!(
            !sender.is_finished(),
            "the sender stopped after {} signals",
            sent.load(Ordering::Acquire)
        );
        assert!(
            Instant::now() < deadline,
            "only {} of {count} signals sent",
            sent.load(Ordering::Acquire)
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Kills the leader `instances[first]` with -9 and waits until one of the others leads,
/// within the lease plus one renewal interval (and [`TAKEOVER_SLACK`]); the survivors and
/// the index of the new leader among them.
async fn kill_the_leader(instances: &mut [Instance], first: usize) -> (Vec<&Instance>, usize) {
    let killed_at = Instant::now();
    instances[first].kill();
    let survivors: Vec<&Instance> = instances
        .iter()
        .enumerate()
        .filter(|(index, _)| *index != first)
        .map(|(_, instance)| instance)
        .collect();
    let second = leader(&survivors).await;
    let took = killed_at.elapsed();
    eprintln!(
        "takeover after {took:?} (lease {LEASE:?}, renewal every {RENEWAL:?}); new leader {}",
        survivors[second].id
    );
    assert!(
        took <= LEASE + RENEWAL + TAKEOVER_SLACK,
        "took {took:?}, beyond the lease plus one renewal interval (and {TAKEOVER_SLACK:?} of slack)"
    );
    (survivors, second)
}

/// Asserts that fencing tokens were granted in increasing order over time.
fn assert_tokens_increase(grants: &[(String, String, i64)]) {
    assert!(
        grants.windows(2).all(|pair| pair[0].2 < pair[1].2),
        "fencing tokens must only increase: {grants:?}"
    );
}

/// A transition log with the instance id made generic, so instances can be compared.
fn transitions(instance: &Instance, log: &str) -> String {
    lines_of(log, "vigil::transition")
        .join("\n")
        .replace(&format!("instance={}", instance.id), "instance=ha-N")
}

fn snapshot(name: &str, text: &str) {
    insta::with_settings!({ snapshot_path => "../snapshots", prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!(name, text);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_duplicate_storm_over_three_instances_opens_one_position() {
    let Some((database, cluster)) = setup("storm").await else {
        return;
    };
    let mut instances = cluster.start_all(3).await;
    let body = entry(0);
    for round in ["at once", "after the lock TTL", "after FLUSHALL"] {
        if round != "at once" {
            // Restarted, the instances forget the fingerprints they saw, so these rounds
            // reach Redis and the database rather than each instance's memory.
            for instance in &mut instances {
                instance.kill();
            }
            let mut restarted = Vec::new();
            for instance in &instances {
                restarted.push(cluster.spawn(&instance.id).await);
            }
            instances = restarted;
            for instance in &instances {
                wait_ready(instance).await;
            }
        }
        let urls: Vec<String> = instances.iter().map(|i| i.url.clone()).collect();
        match round {
            "after the lock TTL" => tokio::time::sleep(LOCK_TTL + HEARTBEAT).await,
            "after FLUSHALL" => {
                cluster.redis.command(&["FLUSHALL"]).await.unwrap();
            }
            _ => {}
        }
        let expected = if round == "at once" { 1 } else { 0 };
        // Applied at most `expected` times at once; any shortfall is a copy still queued.
        let (applied, queued) = storm(&urls, &body).await;
        assert!(
            applied <= expected && applied + queued >= expected,
            "{round}: {applied} applied, {queued} queued"
        );
    }
    wait_settled(&database.url).await;
    assert_eq!(database_counts(&database.url).await, (1, 1));
    for instance in &instances {
        let status = instance.get("/status").await.unwrap();
        assert_eq!(status["open_positions"], 1, "{status}");
    }
    drop(instances);
    database.drop_now().await;
    clean(&cluster.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_instance_leads_after_the_leader_is_killed() {
    let Some((database, cluster)) = setup("failover").await else {
        return;
    };
    let mut instances = cluster.start_all(3).await;
    let first = leader(&instances.iter().collect::<Vec<_>>()).await;
    // Let the leader write a few statistics snapshots under its token.
    tokio::time::sleep(RENEWAL * 2).await;
    let killed_id = instances[first].id.clone();
    let (survivors, second) = kill_the_leader(&mut instances, first).await;
    let killed_log = std::fs::read_to_string(cluster.dir.join(format!("{killed_id}.log"))).unwrap();
    // The new leader writes under its token too.
    tokio::time::sleep(RENEWAL * 2).await;

    let mut logs = vec![(killed_id.clone(), killed_log)];
    for instance in &survivors {
        logs.push((instance.id.clone(), instance.log_text()));
    }
    let grants = leadership_grants(&logs);
    eprintln!("leadership grants (time, instance, fencing token): {grants:#?}");
    assert!(grants.len() >= 2, "{grants:?}");
    let killed_grant = grants
        .iter()
        .rposition(|grant| grant.1 == killed_id)
        .expect("the killed leader logged its grant");
    assert!(
        killed_grant < grants.len() - 1,
        "the new leader's grant comes after the killed leader's: {grants:?}"
    );
    assert_tokens_increase(&grants);
    assert_eq!(grants.last().unwrap().1, survivors[second].id, "{grants:?}");
    // Every background write carried the token current when it was written.
    let tokens = statistics_tokens(&database.url).await;
    assert!(
        tokens.windows(2).all(|pair| pair[0] <= pair[1]),
        "{tokens:?}"
    );
    assert!(tokens.contains(&grants[killed_grant].2) && tokens.contains(&grants.last().unwrap().2));
    drop(survivors);
    drop(instances);
    database.drop_now().await;
    clean(&cluster.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn losing_redis_under_load_loses_and_doubles_nothing() {
    let Some((database, mut cluster)) = setup("redis-lost").await else {
        return;
    };
    let instances = cluster.start_all(3).await;
    let urls: Vec<String> = instances.iter().map(|i| i.url.clone()).collect();
    let sent = Arc::new(AtomicUsize::new(0));
    let (degraded_tx, degraded_rx) = tokio::sync::watch::channel(false);
    let (resumed_tx, resumed_rx) = tokio::sync::watch::channel(false);
    let sender = {
        let (sent, urls) = (Arc::clone(&sent), urls.clone());
        let (mut degraded, mut resumed) = (degraded_rx, resumed_rx);
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for slot in 0..INSTRUMENTS {
                // Some signals flow once every instance is degraded, and some while Redis
                // comes back.
                if slot == INSTRUMENTS / 3 {
                    degraded.wait_for(|done| *done).await.unwrap();
                }
                if slot == 2 * INSTRUMENTS / 3 {
                    resumed.wait_for(|done| *done).await.unwrap();
                }
                // Each signal twice at once, on two instances: a resend racing the original.
                let first = tokio::spawn(deliver(urls[slot % 3].clone(), entry(slot)));
                let second = tokio::spawn(deliver(urls[(slot + 1) % 3].clone(), entry(slot)));
                outcomes.push((first.await.unwrap(), second.await.unwrap()));
                sent.fetch_add(1, Ordering::AcqRel);
                tokio::time::sleep(LOAD_PACE).await;
            }
            outcomes
        })
    };
    wait_sent(&sent, INSTRUMENTS / 6, &sender).await;
    let stopped_at = Instant::now();
    cluster.redis.stop();
    for instance in &instances {
        wait_for(instance, "/ready", |ready| {
            ready["state"] == "degraded" && ready["redis"] == "down"
        })
        .await;
    }
    eprintln!(
        "all three degraded {:?} after Redis stopped (heartbeat every {HEARTBEAT:?})",
        stopped_at.elapsed()
    );
    for instance in &instances {
        let status = instance.get("/status").await.unwrap();
        assert_eq!(status["coordination"], "database", "{status}");
    }
    degraded_tx.send_replace(true);
    wait_sent(&sent, INSTRUMENTS / 2, &sender).await;
    cluster.redis.resume().await;
    resumed_tx.send_replace(true);
    for instance in &instances {
        wait_for(instance, "/ready", |ready| {
            ready["state"] == "active" && ready["redis"] == "up"
        })
        .await;
    }
    let outcomes = sender.await.unwrap();
    for (slot, (first, second)) in outcomes.iter().enumerate() {
        // One applies, the other is its duplicate; either may instead have been queued
        // (waiting for the instrument), to be settled by the drain.
        let pair = [first.as_str(), second.as_str()];
        let applied = pair.iter().filter(|o| **o == "applied").count();
        assert!(applied <= 1, "signal {slot}: {pair:?}");
        assert!(
            applied == 1 || pair.contains(&"queued"),
            "signal {slot}: {pair:?}"
        );
    }
    wait_settled(&database.url).await;
    assert_eq!(
        database_counts(&database.url).await,
        (INSTRUMENTS as i64, INSTRUMENTS as i64)
    );
    let metrics = reqwest::get(format!("{}/metrics", instances[0].operator_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("vigil_redis_up 1"), "{metrics}");

    let logs: Vec<String> = instances
        .iter()
        .map(|instance| transitions(instance, &instance.log_text()))
        .collect();
    assert!(
        logs.iter().all(|log| log == &logs[0]),
        "every instance degrades and returns the same way: {logs:#?}"
    );
    snapshot("ha__redis_lost_and_back", &logs[0]);
    drop(instances);
    database.drop_now().await;
    clean(&cluster.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_instance_recovers_while_the_others_serve() {
    let Some((database, cluster)) = setup("restart").await else {
        return;
    };
    let mut instances = cluster.start_all(3).await;
    // The leader is the one restarted: its lease row still names it when it comes back.
    let index = leader(&instances.iter().collect::<Vec<_>>()).await;
    let mut restarted = instances.remove(index);
    restarted.kill();
    let earlier = restarted.log_text().len();
    let id = restarted.id.clone();
    drop(restarted);

    let urls: Vec<String> = instances.iter().map(|i| i.url.clone()).collect();
    let load = tokio::spawn(async move {
        let mut outcomes = Vec::new();
        for slot in 0..INSTRUMENTS / 3 {
            outcomes.push(deliver(urls[slot % 2].clone(), entry(slot)).await);
        }
        outcomes
    });
    let restarted = cluster.spawn(&id).await;
    wait_ready(&restarted).await;
    let outcomes = load.await.unwrap();
    assert!(outcomes.iter().all(|o| o == "applied"), "{outcomes:?}");
    // Give it time to take the lease, which is free only once the old one lapses.
    tokio::time::sleep(LEASE + RENEWAL).await;

    let log = restarted.log_text()[earlier..].to_string();
    let lines: Vec<&str> = log.lines().collect();
    let active = lines
        .iter()
        .position(|line| line.contains("from=recovering to=active"))
        .expect("the restarted instance became active");
    let recovering = lines
        .iter()
        .position(|line| line.contains("to=recovering"))
        .expect("the restarted instance recovered");
    assert!(recovering < active);
    for (at, line) in lines.iter().enumerate() {
        if line.contains("leading background tasks") {
            assert!(at > active, "led before it was active:\n{log}");
        }
    }
    snapshot("ha__restarted_instance", &transitions(&restarted, &log));
    let status = restarted.get("/status").await.unwrap();
    assert_eq!(
        status["open_positions"],
        INSTRUMENTS / 3,
        "the others' signals are all there: {status}"
    );
    let listed = status["instances"].as_array().unwrap();
    assert_eq!(listed.len(), 3, "{status}");
    assert!(
        listed.iter().all(|i| i["redis_heartbeat"] == true),
        "every instance beats in Redis: {status}"
    );
    assert_eq!(
        listed.iter().filter(|i| i["leader"] == true).count(),
        1,
        "{status}"
    );
    // `vigil status` reads the same from the database alone.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args([
            "status",
            "--format",
            "json",
            "--database-url",
            &database.url,
        ])
        .args(["--policy", "policy.toml"])
        .current_dir(&cluster.dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(status["journal"]["pending"], 0, "{status}");
    let summary: Vec<(String, String, bool, bool)> = status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            (
                row["instance_id"].as_str().unwrap().to_string(),
                row["status"].as_str().unwrap().to_string(),
                row["leader"].as_bool().unwrap(),
                row["stale"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(summary.len(), 3, "{summary:?}");
    assert!(
        summary
            .iter()
            .all(|(_, state, _, stale)| state == "active" && !stale),
        "{summary:?}"
    );
    assert_eq!(summary.iter().filter(|row| row.2).count(), 1, "{summary:?}");
    drop(restarted);
    drop(instances);
    database.drop_now().await;
    clean(&cluster.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_raises_an_alarm_when_totals_disagree_and_changes_nothing() {
    let Some((database, cluster)) = setup("alarm").await else {
        return;
    };
    let instance = cluster.start("ha-1").await;
    assert_eq!(deliver(instance.url.clone(), entry(0)).await, "applied");
    wait_for(&instance, "/status", |status| status["leader"] == true).await;
    let pool = sqlx::PgPool::connect(&database.url).await.unwrap();
    sqlx::query("UPDATE portfolio_state SET total_risk = 999999.99")
        .execute(&pool)
        .await
        .unwrap();
    let deadline = Instant::now() + common::cluster::START_TIMEOUT;
    while !instance.log_text().contains("consistency alarm") {
        assert!(Instant::now() < deadline, "{}", instance.log_text());
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let alarm = lines_of(&instance.log_text(), "vigil::coordination")
        .into_iter()
        .filter(|line| line.starts_with("ERROR"))
        .take(2)
        .collect::<Vec<_>>()
        .join("\n");
    // How long the check took differs from run to run; nothing else may.
    let took = regex::Regex::new(r"; \d+ ms ").unwrap();
    snapshot("ha__consistency_alarm", &took.replace(&alarm, "; <n> ms "));
    let metrics = reqwest::get(format!("{}/metrics", instance.operator_url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("vigil_consistency_ok 0"), "{metrics}");
    assert!(
        metrics.contains("vigil_consistency_alarms_total"),
        "{metrics}"
    );
    // The check only reads: the tampered total is still there for an operator to see.
    let (total,): (String,) = sqlx::query_as("SELECT total_risk::text FROM portfolio_state")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(total, "999999.99");
    pool.close().await;
    drop(instance);
    database.drop_now().await;
    clean(&cluster.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_no_redis_the_database_alone_coordinates() {
    let Some((database, mut cluster)) = setup("database-only").await else {
        return;
    };
    cluster.use_redis = false;
    let mut instances = cluster.start_all(3).await;
    let urls: Vec<String> = instances.iter().map(|i| i.url.clone()).collect();
    let (applied, queued) = storm(&urls, &entry(0)).await;
    assert!(
        applied <= 1 && applied + queued >= 1,
        "{applied} applied, {queued} queued"
    );
    wait_settled(&database.url).await;
    assert_eq!(database_counts(&database.url).await, (1, 1));

    let first = leader(&instances.iter().collect::<Vec<_>>()).await;
    let status = instances[first].get("/status").await.unwrap();
    assert_eq!(
        (&status["coordination"], &status["redis"]),
        (
            &serde_json::json!("database"),
            &serde_json::json!("not_configured")
        ),
        "{status}"
    );
    let (survivors, _) = kill_the_leader(&mut instances, first).await;
    drop(survivors);
    let logs: Vec<(String, String)> = instances
        .iter()
        .map(|instance| (instance.id.clone(), instance.log_text()))
        .collect();
    assert_tokens_increase(&leadership_grants(&logs));
    drop(instances);
    database.drop_now().await;
    clean(&cluster.dir);
}

/// Under the strict policy a lost Redis is retried twice, then the instance halts with exit
/// code 1: losing Redis follows the policy, whichever it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_the_strict_policy_a_lost_redis_halts_the_instance() {
    let Some((database, mut cluster)) = setup("strict").await else {
        return;
    };
    let strict = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("policies/strict.toml"),
    )
    .unwrap();
    // The strict policy with the tests' HA timings.
    let (failures, _) = strict.split_once("[ha]").unwrap();
    let (_, timings) = common::cluster::POLICY.split_once("[ha]").unwrap();
    std::fs::write(
        cluster.dir.join("policy.toml"),
        format!("{failures}[ha]{timings}"),
    )
    .unwrap();
    let mut instance = cluster.start("ha-1").await;
    cluster.redis.stop();
    assert_eq!(instance.exit_code().await, Some(1));
    snapshot(
        "ha__strict_redis_lost",
        &transitions(&instance, &instance.log_text()),
    );
    database.drop_now().await;
    clean(&cluster.dir);
}
