//! `vigil-bench load` measures the live webhook end to end. For each backend (SQLite always,
//! in a fresh temporary directory; PostgreSQL when `--postgres-url` or
//! `VIGIL_TEST_DATABASE_URL` names an admin URL, in fresh databases `vigil_load_<pid>_<n>`
//! created and dropped per run) it builds N signals over M instruments `INST00`, `INST01`,
//! ... (one `BASE_ENTRY` per instrument, then `PYRAMID`s at rising prices, each with its own
//! timestamp), writes a deployment file listing the instruments, and:
//! 1. starts the real `vigil run` binary (`--binary`, by default the `vigil` next to this
//!    executable) on a free loopback port with a fresh database, waits for `GET /ready`, and
//!    sends the signals to `POST /webhook` paced at `--rate` per second on a schedule fixed up
//!    front (at most `--concurrency` in flight), printing p50, p99 and max latency;
//! 2. does the same on another fresh instance and database, unpaced at `--concurrency` in
//!    flight, printing the throughput and latencies;
//! 3. applies the same signals in-process with `Store::apply_signal` and the same plan the
//!    webhook uses, at the same concurrency, on another fresh database: the raw transaction
//!    rate, which the unpaced HTTP throughput is printed as a percentage of.
//!
//! 4. on PostgreSQL only, the journaled run: starts another instance on another fresh
//!    database, makes the database refuse connections (`ALLOW_CONNECTIONS false`, its
//!    sessions ended) and waits for the instance to say `degraded`, sends the signals paced
//!    at `--rate`, each to be answered 202 `queued` from the intake journal, and prints the
//!    intake's p50, p99 and max; then lets the database back in, waits until no alert is
//!    `queued` in the signal log, and prints the drain rate (alerts applied over the time
//!    from the first to the last `processed_at`) as a percentage of the raw transaction
//!    rate of step 3.
//!
//! Before the runs it appends the same alerts, as the intake journal keeps them, to a fresh
//! journal file in the work directory, each fsynced, one after another: the raw append+fsync
//! rate and latencies, printed next to the journaled intake. Every run's alerts carry
//! timestamps from the moment it starts, so none is older than the policy's `[signals]`
//! ages, and the paced runs name their slowest signals with the time they were sent.
//!
//! Base entries all finish before the first pyramid is sent, so no pyramid races its base.
//! Every answer must be the one expected (200 `applied`, or 202 `queued` in the journaled
//! run) and every journaled alert must end `applied`: the command prints what did not, with
//! the service's warnings, and then fails. Each instance is stopped with SIGTERM (and killed if the command
//! fails first); the temporary directory, with the service logs, is kept when anything failed.

use crate::database::{Backend, Database};
use crate::generator::drive;
use crate::journaled::journaled_run;
use crate::raw::{fsync_run, raw_run};
use crate::service::{launch, log_findings, Service};
use crate::stats::{millis, Stats};
use crate::webhook::{post, webhook_client, Expect};
use crate::workload::{deployment_file, finish, Load, Workload, LOAD_INSTANCE};
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vigil_testkit::free_port;
use vigil_testkit::launch::Run;

/// Warning and error lines of the service log shown after each run.
const LOG_FINDINGS_SHOWN: usize = 5;

/// Pace and workload of the `load` benchmark.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// Signals per second in the paced run.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    rate: u32,
    /// Signals, database and binary.
    #[command(flatten)]
    workload: Workload,
}

/// The `load` benchmark: SQLite, then PostgreSQL when configured. Fails at the end if any
/// signal was not accepted or a service did not stop cleanly.
pub async fn load_bench(args: &LoadArgs) -> anyhow::Result<()> {
    let (binary, load, dir) = args.workload.prepare("vigil-load")?;
    let mut problems = Vec::new();
    let outcome = async {
        let mut backends = vec![Backend::Sqlite];
        match &args.workload.postgres_url {
            Some(admin) => backends.push(Backend::Postgres {
                admin: admin.clone(),
            }),
            None => println!(
                "postgres skipped: give --postgres-url ADMIN_URL or set VIGIL_TEST_DATABASE_URL"
            ),
        }
        for backend in &backends {
            let work = dir.join(backend.name());
            std::fs::create_dir_all(&work)
                .with_context(|| format!("cannot create {}", work.display()))?;
            load_backend(&load, &binary, backend, &work, args.rate, &mut problems)
                .await
                .with_context(|| format!("{} load benchmark", backend.name()))?;
        }
        anyhow::Ok(())
    }
    .await;
    finish(&dir, outcome, &problems)
}

/// The three runs on one backend, each on a fresh database, and their lines; the paced run
/// sends `rate` signals per second.
async fn load_backend(
    load: &Load,
    binary: &Path,
    backend: &Backend,
    work: &Path,
    rate: u32,
    problems: &mut Vec<String>,
) -> anyhow::Result<()> {
    let name = backend.name();
    let config = work.join("vigil.toml");
    std::fs::write(&config, deployment_file(load))
        .with_context(|| format!("cannot write {}", config.display()))?;
    let launch = launch(binary, work, &config);

    let fsync = fsync_run(load, work).await?;
    println!(
        "{name:<8} raw journal append+fsync: {}",
        fsync.summary("records", "/s")
    );

    let paced_label = format!("paced {rate}/s");
    let paced = Database::scoped(backend, work, 1, async |database| {
        http_run(load, database, &launch, "paced", Some(rate), 1).await
    })
    .await?;
    println!(
        "{name:<8} {paced_label}: {}, sent up to {:.1} ms behind schedule",
        paced.stats.summary("signals", " signals/s"),
        millis(paced.stats.max_lag),
    );
    println!(
        "{name:<8} {paced_label}: intake p99 {:.1} ms with the database up (target < 5 ms); slowest {}",
        millis(paced.stats.percentile(99)),
        paced.stats.slowest(),
    );
    paced.report(&format!("{name} {paced_label}"), problems);

    let unpaced_label = format!("unpaced c={}", load.concurrency);
    let unpaced = Database::scoped(backend, work, 2, async |database| {
        http_run(load, database, &launch, "unpaced", None, 1).await
    })
    .await?;
    println!(
        "{name:<8} {unpaced_label}: {}",
        unpaced.stats.summary("signals", " signals/s")
    );
    unpaced.report(&format!("{name} {unpaced_label}"), problems);

    let raw = Database::scoped(backend, work, 3, async |database| {
        raw_run(load, database).await
    })
    .await?;
    println!(
        "{name:<8} raw c={}: {}",
        load.concurrency,
        raw.summary("transactions", "/s")
    );
    let share = if raw.rate() > 0.0 {
        format!("{:.0}%", unpaced.stats.rate() / raw.rate() * 100.0)
    } else {
        String::from("n/a")
    };
    println!(
        "{name:<8} {unpaced_label}: {:.0} signals/s; raw transactions {:.0}/s; HTTP reaches {share} (target >= 50%)",
        unpaced.stats.rate(),
        raw.rate(),
    );
    if let Some(summary) = raw.refusals() {
        println!(
            "{name:<8} raw c={}: not applied: {summary}",
            load.concurrency
        );
        problems.push(format!("{name} raw transactions: not applied: {summary}"));
    }
    if matches!(backend, Backend::Sqlite) {
        println!("{name:<8} journaled: skipped (it needs a database whose connections can be refused: PostgreSQL)");
        return Ok(());
    }
    let journaled = Database::scoped(backend, work, 4, async |database| {
        journaled_run(load, database, &launch, rate).await
    })
    .await?;
    let intake = &journaled.intake.stats;
    println!(
        "{name:<8} journaled {paced_label}, database refusing connections: {} alerts in {:.2}s, {}; intake p99 {:.1} ms (target < 5 ms) against raw append+fsync p99 {:.1} ms",
        intake.count,
        intake.elapsed.as_secs_f64(),
        intake.latencies(),
        millis(intake.percentile(99)),
        millis(fsync.percentile(99)),
    );
    journaled
        .intake
        .report(&format!("{name} journaled {paced_label}"), problems);
    let (applied, span) = journaled.applied;
    let drain_rate = if span.is_zero() {
        0.0
    } else {
        applied as f64 / span.as_secs_f64()
    };
    let drain_share = if raw.rate() > 0.0 {
        format!("{:.0}%", drain_rate / raw.rate() * 100.0)
    } else {
        String::from("n/a")
    };
    println!(
        "{name:<8} journaled drain: {applied} applied in {:.2}s = {drain_rate:.0}/s, all settled {:.2}s after the database returned; raw transactions {:.0}/s; the drain reaches {drain_share} (target >= 80%)",
        span.as_secs_f64(),
        journaled.settled_after.as_secs_f64(),
        raw.rate(),
    );
    if !journaled.others.is_empty() {
        let summary = journaled
            .others
            .iter()
            .map(|(status, count)| format!("{status} x{count}"))
            .collect::<Vec<_>>()
            .join(", ");
        println!("  not applied: {summary}");
        problems.push(format!("{name} journaled drain: not applied: {summary}"));
    }
    Ok(())
}

/// The outcome of one HTTP run.
#[derive(Debug)]
pub struct HttpRun {
    /// Figures.
    pub stats: Stats,
    /// Each service's log and its warning and error lines.
    pub logs: Vec<(PathBuf, Vec<String>)>,
    /// Why services did not stop cleanly, if any did not.
    pub stop_problems: Vec<String>,
}

impl HttpRun {
    /// Prints refusals, the services' warnings and bad stops, and records problems.
    pub fn report(&self, label: &str, problems: &mut Vec<String>) {
        if let Some(summary) = self.stats.refusals() {
            println!("  not accepted: {summary}");
            problems.push(format!("{label}: not accepted: {summary}"));
        }
        for (log, findings) in &self.logs {
            if findings.is_empty() {
                continue;
            }
            println!(
                "  service log {}: {} WARN/ERROR line(s), first {}:",
                log.display(),
                findings.len(),
                findings.len().min(LOG_FINDINGS_SHOWN)
            );
            for line in findings.iter().take(LOG_FINDINGS_SHOWN) {
                println!("    {line}");
            }
        }
        for problem in &self.stop_problems {
            println!("  {problem}");
            problems.push(format!("{label}: {problem}"));
        }
    }
}

/// Starts `instances` services on `database` (one is [`LOAD_INSTANCE`] and logs to
/// `<label>.log`; several are `vigil-load-1`, ... logging to `<label>-1.log`, ...), sends
/// every signal (paced at `rate` per second, or unpaced), dealing them round-robin over the
/// services, and stops them.
pub async fn http_run(
    load: &Load,
    database: &Database,
    launch: &Run,
    label: &str,
    rate: Option<u32>,
    instances: usize,
) -> anyhow::Result<HttpRun> {
    if instances == 0 {
        bail!("an HTTP run needs at least one instance");
    }
    let load = &load.restamped()?;
    let mut services = Vec::with_capacity(instances);
    for n in 1..=instances {
        let (instance, log) = if instances == 1 {
            (LOAD_INSTANCE.to_string(), format!("{label}.log"))
        } else {
            (format!("{LOAD_INSTANCE}-{n}"), format!("{label}-{n}.log"))
        };
        let address = format!("127.0.0.1:{}", free_port()?);
        let log = launch.dir().join(log);
        services.push(Service::start(
            launch,
            &database.url,
            &instance,
            &address,
            &log,
        )?);
    }
    for service in &mut services {
        service.wait_ready().await?;
    }

    let client = webhook_client(load)?;
    let urls: Arc<Vec<String>> = Arc::new(
        services
            .iter()
            .map(|service| format!("{}/webhook", service.base))
            .collect(),
    );
    let bodies = Arc::clone(&load.bodies);
    let sent = drive(load, rate, |index| {
        let client = client.clone();
        let url = urls.get(index % urls.len()).cloned().unwrap_or_default();
        let body = bodies.get(index).cloned().unwrap_or_default();
        async move { post(&client, &url, body, Expect::Applied).await }
    })
    .await;
    let mut stop_problems = Vec::new();
    let mut logs = Vec::with_capacity(services.len());
    for service in &mut services {
        stop_problems.extend(service.stop_problem());
        logs.push((service.log.clone(), log_findings(&service.log)));
    }
    let (samples, elapsed, max_lag) = sent?;
    Ok(HttpRun {
        stats: Stats::new(samples, elapsed, max_lag),
        logs,
        stop_problems,
    })
}
