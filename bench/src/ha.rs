//! `vigil-bench ha` measures several instances of the real `vigil run` sharing one PostgreSQL
//! database (fresh databases `vigil_load_<pid>_<n>` created from `--postgres-url` or
//! `VIGIL_TEST_DATABASE_URL` and dropped per run; without an admin URL it is skipped) and one
//! private `redis-server` (`--redis-server`), started on a free loopback port with no
//! persistence (`--save "" --appendonly no`). It writes a policy with only an `[ha]` table
//! (`--heartbeat`, `--lease`, instances stale after three heartbeats, `HEARTBEATS_BEFORE_STALE`;
//! the lease is renewed every min(heartbeat, lease / 3)), starts `--instances` instances
//! `ha-1`, `ha-2`, ... with it, and:
//! 1. leader takeover, `--rounds` times: finds the single leader through `GET /status`, kills
//!    it with SIGKILL, polls the survivors' `/status` every 10 ms (`HA_POLL_INTERVAL_MS`) until one
//!    reports `leader: true`, and prints the time and both fencing tokens next to the bound,
//!    the lease plus one renewal interval; the killed instance is restarted under its id and
//!    waited for before the next round; the longest takeover closes the list;
//! 2. Redis loss: kills the `redis-server` with SIGKILL, polls every instance's `GET /ready`
//!    at the same pace until each reports `redis: "down"`, and prints each detection time next
//!    to the heartbeat interval and the bound of two heartbeats
//!    (`REDIS_DETECTION_BOUND_HEARTBEATS`); then starts Redis again, empty, on the same port and prints how long after
//!    it answered `PING` each instance was `active` with Redis `up` again, against the same
//!    bound;
//! 3. throughput: the `load` signals (`--signals` over `--instruments`, bases first), unpaced
//!    at `--concurrency` in flight, through one instance and then through `--instances`
//!    instances (requests dealt round-robin), each run on a fresh database with Redis flushed
//!    first and the same policy, and the in-process raw transaction rate on another fresh
//!    database: the limit every instance shares.
//!
//! Nothing there asserts a time: each wait gives up only after its bound plus a slack of 10 s
//! (`HA_WAIT_SLACK_MS`), and then fails the command. Every instance and the `redis-server` are killed if the command
//! fails; the temporary directory `vigil-ha-<pid>`, with the logs, is kept when anything failed.

use crate::database::{Backend, Database};
use crate::ha_cluster::HaCluster;
use crate::load::http_run;
use crate::raw::raw_run;
use crate::service::launch;
use crate::stats::millis;
use crate::workload::{deployment_file, finish, Load, Workload};
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vigil::policy::{HaTimings, Policy};
use vigil_testkit::launch::Run;
use vigil_testkit::redis_server::RedisServer;

/// Instances, timings, workload and servers of the `ha` benchmark.
#[derive(Debug, clap::Args)]
pub struct HaArgs {
    /// Instances started for the takeover and Redis-loss measurements and the several-instance
    /// throughput run.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(2..=16))]
    instances: u32,
    /// The policy's `leader_lease`.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    lease: Duration,
    /// The policy's `heartbeat_interval`.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    heartbeat: Duration,
    /// Takeovers measured: the leader is killed, and restarted afterwards, once per round.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,
    /// The `redis-server` binary started, privately, on a free port.
    #[arg(long, value_name = "FILE", default_value = "redis-server")]
    redis_server: PathBuf,
    /// Signals, database and binary.
    #[command(flatten)]
    workload: Workload,
}

/// The `ha` benchmark's name: the first column of its lines, and its instances' id prefix.
pub const HA: &str = "ha";

/// How often the `ha` benchmark polls `/status` and `/ready`: with one loopback round trip,
/// the resolution of its takeover and detection times.
pub const HA_POLL_INTERVAL_MS: u64 = 10;

/// Slack on top of each bound the `ha` benchmark waits against (one leader, a takeover, Redis
/// seen lost or back) before it gives up and fails: scheduling, reconnection back-off and a
/// busy machine. Generous, because times are printed, never asserted: only a wait that would
/// otherwise never end fails.
const HA_WAIT_SLACK_MS: u64 = 10_000;

/// Heartbeats after which the written policy declares an instance stale: the policy requires
/// at least two, and a third keeps a busy machine from declaring a healthy instance gone.
const HEARTBEATS_BEFORE_STALE: u32 = 3;

/// Heartbeat intervals within which every instance should see Redis lost (or back): each
/// instance checks Redis once per heartbeat, and the check itself may take up to another.
const REDIS_DETECTION_BOUND_HEARTBEATS: u32 = 2;

/// The takeover and Redis-loss run: every run of the `ha` benchmark has its own fresh
/// database, `vigil_load_<pid>_<n>` with `n` one of these.
const HA_RUN_FAILOVER: usize = 1;
/// The one-instance throughput run.
const HA_RUN_ONE: usize = 2;
/// The several-instance throughput run.
const HA_RUN_SEVERAL: usize = 3;
/// The in-process raw transaction run.
const HA_RUN_RAW: usize = 4;

/// The `ha` benchmark: takeovers and Redis loss on one set of instances, then throughput.
/// Needs PostgreSQL; fails at the end if any signal was not accepted or an instance did not
/// stop cleanly.
pub async fn ha_bench(args: &HaArgs) -> anyhow::Result<()> {
    let Some(admin) = &args.workload.postgres_url else {
        println!(
            "{HA} skipped: several instances need PostgreSQL: give --postgres-url ADMIN_URL or set VIGIL_TEST_DATABASE_URL"
        );
        return Ok(());
    };
    let (binary, load, dir) = args.workload.prepare("vigil-ha")?;
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut problems = Vec::new();
    let outcome = ha_runs(args, admin, &binary, &load, &dir, &mut problems).await;
    finish(&dir, outcome, &problems)
}

/// Writes the files, starts the private Redis, and runs the three measurements in `dir`.
async fn ha_runs(
    args: &HaArgs,
    admin: &str,
    binary: &Path,
    load: &Load,
    dir: &Path,
    problems: &mut Vec<String>,
) -> anyhow::Result<()> {
    let config = dir.join("vigil.toml");
    std::fs::write(&config, deployment_file(load))
        .with_context(|| format!("cannot write {}", config.display()))?;
    let policy = dir.join("policy.toml");
    let timings = write_ha_policy(&policy, args.lease, args.heartbeat)?;
    // As `vigil::coordination::leader::tick`: every heartbeat, and at least three times a lease.
    let renewal = timings.heartbeat_interval.min(timings.leader_lease / 3);
    let instances = usize::try_from(args.instances).context("--instances is too large")?;
    println!(
        "{HA:<8} policy: heartbeat {}, lease {} renewed every {}, stale after {}; {instances} instances, private redis-server",
        humantime::format_duration(timings.heartbeat_interval),
        humantime::format_duration(timings.leader_lease),
        humantime::format_duration(renewal),
        humantime::format_duration(timings.instance_stale_after),
    );

    let mut redis = RedisServer::start(&args.redis_server, Some(&dir.join("redis.log"))).await?;
    let launch = launch(binary, dir, &config)
        .redis_url(&redis.url())
        .policy(policy);
    let backend = Backend::Postgres {
        admin: admin.to_string(),
    };

    Database::scoped(&backend, dir, HA_RUN_FAILOVER, async |database| {
        let mut cluster = HaCluster::start(&launch, &database.url, instances).await?;
        takeovers(&mut cluster, &timings, renewal, args.rounds).await?;
        redis_loss(&cluster, &mut redis, &timings).await?;
        problems.extend(cluster.stop());
        anyhow::Ok(())
    })
    .await?;

    ha_throughput(load, &backend, &launch, &redis, instances, problems).await
}

/// Writes a policy with only an `[ha]` table to `path` and loads it back as `vigil run`
/// will, so that an invalid combination fails here and the printed bounds are those in force.
/// Durations are written in whole milliseconds.
fn write_ha_policy(path: &Path, lease: Duration, heartbeat: Duration) -> anyhow::Result<HaTimings> {
    let stale = heartbeat
        .checked_mul(HEARTBEATS_BEFORE_STALE)
        .context("--heartbeat is too long")?;
    let text = format!(
        "# Written by vigil-bench ha; everything else is the built-in policy.\n\
         [ha]\n\
         heartbeat_interval = \"{}ms\"\n\
         instance_stale_after = \"{}ms\"\n\
         leader_lease = \"{}ms\"\n",
        heartbeat.as_millis(),
        stale.as_millis(),
        lease.as_millis(),
    );
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    let policy = Policy::load(path)
        .with_context(|| format!("the written policy {} is not valid", path.display()))?;
    Ok(policy.ha)
}

/// `rounds` times: kills the single leader with SIGKILL, times how long until a survivor
/// leads, and restarts the killed instance.
async fn takeovers(
    cluster: &mut HaCluster,
    timings: &HaTimings,
    renewal: Duration,
    rounds: u32,
) -> anyhow::Result<()> {
    let bound = timings.leader_lease + renewal;
    let timeout = bound + Duration::from_millis(HA_WAIT_SLACK_MS);
    let bound_text = format!(
        "lease {} + one renewal {} = {:.3}s",
        humantime::format_duration(timings.leader_lease),
        humantime::format_duration(renewal),
        bound.as_secs_f64()
    );
    let mut longest = Duration::ZERO;
    for round in 1..=rounds {
        let (leader, token) = cluster.single_leader(timeout).await?;
        let survivors: Vec<usize> = cluster
            .everyone()
            .into_iter()
            .filter(|&index| index != leader)
            .collect();
        let killed = cluster.id(leader).to_string();
        let killed_at = Instant::now();
        cluster.kill(leader)?;
        let deadline = killed_at + timeout;
        let (successor, successor_token, took) = loop {
            let probes = cluster.probe(&survivors, "/status").await;
            let first = probes
                .iter()
                .filter(|probe| probe.page.as_ref().is_some_and(leads))
                .min_by_key(|probe| probe.at);
            if let Some(probe) = first {
                break (
                    probe.index,
                    probe.page.as_ref().and_then(fencing_token),
                    probe.at.saturating_duration_since(killed_at),
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "takeover {round}: no survivor of {killed} led within {:.3}s of its kill",
                    timeout.as_secs_f64()
                );
            }
            tokio::time::sleep(Duration::from_millis(HA_POLL_INTERVAL_MS)).await;
        };
        longest = longest.max(took);
        println!(
            "{HA:<8} takeover {round}/{rounds}: SIGKILL to leader {killed} (token {token}), {} leads (token {}) after {:.3}s (bound: {bound_text})",
            cluster.id(successor),
            successor_token.map_or_else(|| String::from("?"), |token| token.to_string()),
            took.as_secs_f64(),
        );
        cluster
            .restart(leader)
            .await
            .with_context(|| format!("restarting {killed} after takeover {round}"))?;
    }
    println!(
        "{HA:<8} takeover max over {rounds} round(s): {:.3}s (bound: {bound_text})",
        longest.as_secs_f64()
    );
    Ok(())
}

/// Kills the private Redis with SIGKILL and times how long each instance takes to report it
/// down; then starts it again and times how long each takes to be active with it again.
async fn redis_loss(
    cluster: &HaCluster,
    redis: &mut RedisServer,
    timings: &HaTimings,
) -> anyhow::Result<()> {
    let heartbeat = timings.heartbeat_interval;
    let bound = heartbeat * REDIS_DETECTION_BOUND_HEARTBEATS;
    let timeout = bound + Duration::from_millis(HA_WAIT_SLACK_MS);
    let bound_text = format!(
        "heartbeat {}, bound {REDIS_DETECTION_BOUND_HEARTBEATS}x = {}",
        humantime::format_duration(heartbeat),
        humantime::format_duration(bound)
    );
    let everyone = cluster.everyone();
    let count = everyone.len();
    cluster
        .first_times(
            &everyone,
            Instant::now(),
            timeout,
            "state active and redis up before Redis is killed",
            active_with_redis,
        )
        .await?;

    let killed_at = Instant::now();
    redis.kill()?;
    let lost = cluster
        .first_times(&everyone, killed_at, timeout, "redis down", |page| {
            text_field(page, "redis") == Some("down")
        })
        .await?;
    for (index, took, page) in &lost {
        println!(
            "{HA:<8} redis lost: {} reports redis down after {:.0} ms, state {} ({bound_text})",
            cluster.id(*index),
            millis(*took),
            text_field(page, "state").unwrap_or("?"),
        );
    }
    let slowest = lost.iter().map(|(_, took, _)| *took).max();
    println!(
        "{HA:<8} redis lost: all {count} report it within {:.0} ms ({bound_text})",
        millis(slowest.unwrap_or_default())
    );

    let answered = redis.resume().await?;
    let answered_at = Instant::now();
    let back = cluster
        .first_times(
            &everyone,
            answered_at,
            timeout,
            "state active and redis up after Redis returned",
            active_with_redis,
        )
        .await?;
    for (index, took, _) in &back {
        println!(
            "{HA:<8} redis back: {} active with redis up {:.0} ms after redis-server answered PING ({bound_text})",
            cluster.id(*index),
            millis(*took),
        );
    }
    let slowest = back.iter().map(|(_, took, _)| *took).max();
    println!(
        "{HA:<8} redis back: all {count} active within {:.0} ms of PING; redis-server took {:.0} ms to answer (not measured) ({bound_text})",
        millis(slowest.unwrap_or_default()),
        millis(answered),
    );
    Ok(())
}

/// The load signals through one instance and through `instances`, each on a fresh database
/// after `FLUSHALL` (the signals would otherwise be duplicates in Redis), and the raw
/// transaction rate on another.
async fn ha_throughput(
    load: &Load,
    backend: &Backend,
    launch: &Run,
    redis: &RedisServer,
    instances: usize,
    problems: &mut Vec<String>,
) -> anyhow::Result<()> {
    let concurrency = load.concurrency;
    let mut rates = Vec::with_capacity(2);
    for (run, count) in [(HA_RUN_ONE, 1), (HA_RUN_SEVERAL, instances)] {
        redis
            .command(&["FLUSHALL"])
            .await
            .with_context(|| format!("FLUSHALL to {} failed", redis.url()))?;
        let label = if count == 1 {
            format!("1 instance c={concurrency}")
        } else {
            format!("{count} instances c={concurrency}")
        };
        let sent = Database::scoped(backend, launch.dir(), run, async |database| {
            http_run(
                load,
                database,
                launch,
                &format!("throughput-{count}"),
                None,
                count,
            )
            .await
            .with_context(|| format!("{HA} {label}"))
        })
        .await?;
        println!(
            "{HA:<8} {label}: {}",
            sent.stats.summary("signals", " signals/s")
        );
        sent.report(&format!("{HA} {label}"), problems);
        rates.push(sent.stats.rate());
    }

    let raw = Database::scoped(backend, launch.dir(), HA_RUN_RAW, async |database| {
        raw_run(load, database).await
    })
    .await?;
    println!(
        "{HA:<8} raw c={concurrency}: {}",
        raw.summary("transactions", "/s")
    );
    if let Some(summary) = raw.refusals() {
        println!("{HA:<8} raw c={concurrency}: not applied: {summary}");
        problems.push(format!("{HA} raw transactions: not applied: {summary}"));
    }
    if let [one, several] = rates[..] {
        let share = if one > 0.0 {
            format!("{:.0}%", several / one * 100.0)
        } else {
            String::from("n/a")
        };
        println!(
            "{HA:<8} {instances} instances c={concurrency}: {several:.0} signals/s = {share} of 1 instance ({one:.0} signals/s); limit: raw transactions {:.0}/s on the one database",
            raw.rate(),
        );
    }
    Ok(())
}

/// Whether a `/status` page says the instance leads.
pub fn leads(page: &serde_json::Value) -> bool {
    page.get("leader").and_then(serde_json::Value::as_bool) == Some(true)
}

/// The fencing token on a `/status` page.
pub fn fencing_token(page: &serde_json::Value) -> Option<i64> {
    page.get("fencing_token")
        .and_then(serde_json::Value::as_i64)
}

/// A string field of a page.
fn text_field<'a>(page: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    page.get(name).and_then(serde_json::Value::as_str)
}

/// Whether a `/ready` page says `active` with Redis `up`.
fn active_with_redis(page: &serde_json::Value) -> bool {
    text_field(page, "state") == Some("active") && text_field(page, "redis") == Some("up")
}
