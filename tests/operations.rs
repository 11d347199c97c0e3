//! Operating real `vigil run` processes: the kill switch (`vigil pause`, `vigil resume`) over
//! two instances under load, and the restart budget counted across instances and restarts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cluster::{clean, instrument, Cluster, Instance, HEARTBEAT, PASSPHRASE, POLICY};
use common::tradingview::{self, Delivery};
use common::{postgres_admin_url, ScratchDatabase};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Slack on top of one heartbeat for every instance to obey a switch: the CLI's own exit,
/// the beat's database round trips, the driver's step and a busy two-core machine.
const SWITCH_SLACK: Duration = Duration::from_millis(1500);

/// The pause between alerts of the load.
const LOAD_PACE: Duration = Duration::from_millis(20);

/// The exit code of a start refused by the restart budget (README, "Exit codes").
const EXIT_RESTARTS_SPENT: i32 = 7;

/// The restart budget the tests run under: the shipped default's.
const RESTARTS_MAX: usize = 10;

/// A BASE_ENTRY on instrument `slot` at a time of its own, so every alert of the load is a
/// new one.
fn entry(slot: usize, n: usize) -> String {
    format!(
        r#"{{"passphrase":"{PASSPHRASE}","signal":"BASE_ENTRY","instrument":"{}","position":"long","price":"1000","stop":"990","lots":"1","timestamp":"{}"}}"#,
        instrument(slot),
        common::at(&format!("09:{:02}:{:02}", 10 + n / 60, n % 60))
    )
}

/// An EXIT on instrument `slot`.
fn exit(slot: usize, n: usize) -> String {
    format!(
        r#"{{"passphrase":"{PASSPHRASE}","signal":"EXIT","instrument":"{}","price":"1010","timestamp":"{}"}}"#,
        instrument(slot),
        common::at(&format!("09:{:02}:{:02}", 30 + n / 60, n % 60))
    )
}

/// Runs a `vigil` command against the cluster's database and deployment file.
async fn vigil_command(cluster: &Cluster, args: &[&str]) -> (i32, String) {
    let mut args = args.to_vec();
    args.extend(["--database-url", &cluster.database_url]);
    cluster.vigil(&args).await
}

/// The lifecycle state an instance's `/status` shows.
async fn state_of(instance: &Instance) -> Option<String> {
    let status = instance.get("/status").await?;
    Some(status["state"].as_str()?.to_string())
}

/// Waits until every instance shows `state`; how long that took.
async fn all_reach(instances: &[Instance], state: &str, since: Instant) -> Duration {
    let deadline = since + HEARTBEAT + SWITCH_SLACK;
    loop {
        let mut reached = true;
        for instance in instances {
            reached &= state_of(instance).await.as_deref() == Some(state);
        }
        if reached {
            return since.elapsed();
        }
        assert!(
            Instant::now() < deadline,
            "not every instance reached {state} within one heartbeat ({HEARTBEAT:?}) and {SWITCH_SLACK:?} of slack; logs:\n{}",
            instances.iter().map(Instance::log_text).collect::<Vec<_>>().join("\n----\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One alert of the load: when it was sent, and what TradingView was told.
struct Sent {
    at: Instant,
    /// The instrument slot of its entry.
    slot: usize,
    delivery: Delivery,
}

/// Sends a new entry every [`LOAD_PACE`], alternating between the instances, until `stop`.
fn start_load(
    instances: &[Instance],
    stop: Arc<AtomicBool>,
) -> (Arc<Mutex<Vec<Sent>>>, tokio::task::JoinHandle<()>) {
    let urls: Vec<String> = instances
        .iter()
        .map(|instance| format!("{}/webhook", instance.url))
        .collect();
    let sent = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&sent);
    let next = Arc::new(AtomicUsize::new(0));
    let load = tokio::spawn(async move {
        let client = tradingview::client();
        while !stop.load(Ordering::Acquire) {
            let n = next.fetch_add(1, Ordering::AcqRel);
            let slot = n % 50;
            let (url, body) = (urls[n % urls.len()].clone(), entry(slot, n));
            let at = Instant::now();
            let delivery = tradingview::deliver(&client, &url, &body).await;
            log.lock().unwrap().push(Sent { at, slot, delivery });
            tokio::time::sleep(LOAD_PACE).await;
        }
    });
    (sent, load)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pause_stops_every_instance_within_a_heartbeat_and_outlives_a_restart() {
    let Some(admin) = postgres_admin_url("a_pause_stops_every_instance") else {
        return;
    };
    let database = ScratchDatabase::create(&admin, "pause").await;
    let cluster = Cluster::new("pause", &database.url).await;
    let mut instances = cluster.start_all(2).await;

    // Load before the pause is applied.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, load) = start_load(&instances, Arc::clone(&stop));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (code, said) = vigil_command(&cluster, &["pause", "--reason", "test"]).await;
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("trading paused"), "{said}");
    let paused_at = Instant::now();
    let took = all_reach(&instances, "paused", paused_at).await;
    println!(
        "both instances paused {} ms after vigil pause returned (heartbeat {} ms)",
        took.as_millis(),
        HEARTBEAT.as_millis()
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::Release);
    load.await.unwrap();

    // Every alert sent once both had heard was answered 2xx and recorded refused; none was
    // applied while paused.
    let obeyed_by = paused_at + took;
    let sent = std::mem::take(&mut *sent.lock().unwrap());
    let before: Vec<&Sent> = sent.iter().filter(|s| s.at < paused_at).collect();
    let during: Vec<&Sent> = sent.iter().filter(|s| s.at >= obeyed_by).collect();
    assert!(
        !before.is_empty() && during.len() >= 10,
        "load too thin: {} before, {} during",
        before.len(),
        during.len()
    );
    for s in &sent {
        assert!(s.delivery.acknowledged(), "{:?}", s.delivery.sends);
    }
    assert!(before
        .iter()
        .any(|s| s.delivery.outcome() == Some("applied")));
    for s in &during {
        assert_eq!(
            s.delivery.outcome(),
            Some("refused"),
            "{}",
            s.delivery.last_body
        );
        let reason = s.delivery.last_body["reason"].as_str().unwrap();
        assert!(reason.contains("refused by the operator"), "{reason}");
        let fingerprint = s.delivery.last_body["fingerprint"].as_str().unwrap();
        let recorded = instances[0]
            .get(&format!("/signals/{fingerprint}"))
            .await
            .unwrap();
        assert_eq!(recorded["status"], "refused", "{recorded}");
    }
    let applied = applied_count(&database.url).await;

    // An exit is refused too under a full pause; `--exits-only` lets exits through.
    let delivery = deliver_to(&instances[1], &exit(0, 0)).await;
    assert_eq!(
        delivery.outcome(),
        Some("refused"),
        "{}",
        delivery.last_body
    );

    // A restart comes back paused, and refuses.
    instances[0].terminate();
    assert_eq!(instances[0].exit_code().await, Some(0));
    instances[0] = cluster.spawn("ha-1").await;
    let back = Instant::now();
    all_reach(&instances[..1], "paused", back).await;
    // Straight from recovery to paused: never active in between.
    let log = instances[0].log_text();
    let last_recovery = log
        .lines()
        .rfind(|line| line.contains("recovery complete"))
        .unwrap();
    assert!(
        last_recovery.contains("recovery complete; paused by the operator"),
        "{last_recovery}"
    );
    let delivery = deliver_to(&instances[0], &entry(55, 500)).await;
    assert_eq!(
        delivery.outcome(),
        Some("refused"),
        "{}",
        delivery.last_body
    );
    let status = instances[0].get("/status").await.unwrap();
    assert_eq!(status["pause"], "all", "{status}");
    assert_eq!(
        applied_count(&database.url).await,
        applied,
        "nothing is applied while paused"
    );

    // Exits only: an exit is applied, an entry refused.
    let (code, said) = vigil_command(&cluster, &["pause", "--exits-only"]).await;
    assert_eq!(code, 0, "{said}");
    let switched = Instant::now();
    wait_until(&instances, switched, |status| {
        status["pause"] == "exits_only"
    })
    .await;
    let slot = before
        .iter()
        .find(|s| s.delivery.outcome() == Some("applied"))
        .map(|s| s.slot)
        .unwrap();
    let delivery = deliver_to(&instances[1], &exit(slot, 1)).await;
    assert_eq!(
        delivery.outcome(),
        Some("applied"),
        "{}",
        delivery.last_body
    );
    let delivery = deliver_to(&instances[1], &entry(56, 501)).await;
    assert_eq!(
        delivery.outcome(),
        Some("refused"),
        "{}",
        delivery.last_body
    );

    // Over HTTP the switch needs an operator token; these instances have none.
    let refused = reqwest::Client::new()
        .post(format!("{}/pause", instances[0].operator_url))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status().as_u16(), 403);
    let body: serde_json::Value = serde_json::from_slice(&refused.bytes().await.unwrap()).unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("need an operator token"),
        "{body}"
    );

    // Resume: both apply again within a heartbeat.
    let (code, said) = vigil_command(&cluster, &["resume"]).await;
    assert_eq!(code, 0, "{said}");
    let resumed = Instant::now();
    let took = all_reach(&instances, "active", resumed).await;
    println!(
        "both instances active {} ms after vigil resume",
        took.as_millis()
    );
    for (n, instance) in instances.iter().enumerate() {
        let delivery = deliver_to(instance, &entry(57 + n, 502 + n)).await;
        assert_eq!(
            delivery.outcome(),
            Some("applied"),
            "{}",
            delivery.last_body
        );
    }
    for instance in &instances {
        instance.terminate();
    }
    for instance in &mut instances {
        assert_eq!(instance.exit_code().await, Some(0));
    }
    clean(&cluster.dir);
    database.drop_now().await;
}

/// Delivers `body` to `instance` as TradingView does.
async fn deliver_to(instance: &Instance, body: &str) -> Delivery {
    let url = format!("{}/webhook", instance.url);
    tradingview::deliver(&tradingview::client(), &url, body).await
}

/// Waits until every instance's `/status` satisfies `condition`.
async fn wait_until(
    instances: &[Instance],
    since: Instant,
    condition: impl Fn(&serde_json::Value) -> bool,
) {
    let deadline = since + HEARTBEAT + SWITCH_SLACK;
    loop {
        let mut all = true;
        for instance in instances {
            all &= instance
                .get("/status")
                .await
                .is_some_and(|status| condition(&status));
        }
        if all {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the switch was not obeyed in time"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Alerts applied, straight from the database.
async fn applied_count(url: &str) -> i64 {
    let pool = sqlx::PgPool::connect(url).await.unwrap();
    let (applied,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM signal_log WHERE status = 'applied'")
            .fetch_one(&pool)
            .await
            .unwrap();
    pool.close().await;
    applied
}

/// How a start of the restart test ends its run.
#[derive(Debug, Clone, Copy)]
enum End {
    /// kill -9 once it serves.
    Killed,
    /// SIGTERM once it serves: a graceful stop.
    Stopped,
}

/// The database a restart case runs on.
#[derive(Debug, Clone, Copy)]
enum Backend {
    Sqlite,
    Postgres,
}

/// One restart case: every id of `ids` starts once (a first start), then `restarts` more
/// starts over `ids` in turn follow runs that each ended by `end`, on `backend`; with
/// `refused`, the budget refuses the last of them.
struct Case {
    name: &'static str,
    backend: Backend,
    ids: &'static [&'static str],
    end: End,
    restarts: usize,
    refused: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_restart_budget_refuses_the_eleventh_unclean_restart() {
    let cases = [
        Case {
            name: "one instance killed again and again",
            backend: Backend::Sqlite,
            ids: &["r-1"],
            end: End::Killed,
            restarts: RESTARTS_MAX + 1,
            refused: true,
        },
        Case {
            name: "two instances killed in turn",
            backend: Backend::Postgres,
            ids: &["r-1", "r-2"],
            end: End::Killed,
            restarts: RESTARTS_MAX + 1,
            refused: true,
        },
        Case {
            name: "clean stops and starts",
            backend: Backend::Sqlite,
            ids: &["r-1"],
            end: End::Stopped,
            restarts: RESTARTS_MAX + 1,
            refused: false,
        },
    ];
    for case in &cases {
        check_restarts(case).await;
    }
}

/// Runs one restart case: the first start of an id is no restart, so with one id the
/// eleventh restart is start 12, and with two, start 13.
async fn check_restarts(case: &Case) {
    let tag = format!("restarts-{}", case.name.replace(' ', "-"));
    let database = match case.backend {
        Backend::Sqlite => None,
        Backend::Postgres => {
            let Some(admin) = postgres_admin_url("the_restart_budget") else {
                return;
            };
            Some(ScratchDatabase::create(&admin, "restarts").await)
        }
    };
    let sqlite_dir = std::env::temp_dir().join(format!("vigil-{}-{tag}", std::process::id()));
    let url = match &database {
        Some(database) => database.url.clone(),
        None => {
            let _ = std::fs::remove_dir_all(&sqlite_dir);
            std::fs::create_dir_all(&sqlite_dir).unwrap();
            format!("sqlite://{}", sqlite_dir.join("vigil.db").display())
        }
    };
    let mut cluster = Cluster::new(&tag, &url).await;
    cluster.use_redis = false;
    // A refused start notifies, before it exits.
    let (receiver_url, received) = common::receiver::start().await;
    let mut deployment = std::fs::read_to_string(cluster.dir.join("vigil.toml")).unwrap();
    deployment.push_str(&format!(
        "\n[[notify]]\nkind = \"webhook\"\nwebhook_url = \"{receiver_url}/hook\"\nevents = [\"restart_budget_spent\"]\n"
    ));
    std::fs::write(cluster.dir.join("vigil.toml"), deployment).unwrap();
    std::fs::write(
        cluster.dir.join("policy.toml"),
        POLICY.replace(
            "max = 1000",
            &format!("max = {RESTARTS_MAX}\nwindow = \"1h\""),
        ),
    )
    .unwrap();
    let starts = case.ids.len() + case.restarts;
    for start in 1..=starts {
        let id = case.ids[(start - 1) % case.ids.len()];
        if case.refused && start == starts {
            let mut refused = cluster.spawn_until_exit(id).await;
            let code = refused.exit_code().await;
            let said = refused.log_text();
            assert_eq!(
                code,
                Some(EXIT_RESTARTS_SPENT),
                "{}: start {start} must be refused:\n{said}",
                case.name
            );
            assert!(
                said.contains("restart budget is spent")
                    && said.contains(&format!("{RESTARTS_MAX} of {RESTARTS_MAX} restarts"))
                    && said.contains("vigil restarts reset"),
                "{}: {said}",
                case.name
            );
            let (_, status) = vigil_command(&cluster, &["status"]).await;
            assert!(status.contains("restart budget: spent"), "{status}");
            assert_eq!(
                common::receiver::webhook_events(&received),
                ["restart_budget_spent"],
                "{}: the refusal is notified once, before the process exits",
                case.name
            );
            let notice = received.lock().unwrap()[0].1.clone();
            assert!(
                notice["message"]
                    .as_str()
                    .unwrap()
                    .contains("the restart budget is spent"),
                "{notice}"
            );
            // Reset: the next start is admitted.
            let (code, said) = vigil_command(&cluster, &["restarts", "reset"]).await;
            assert_eq!(code, 0, "{said}");
            assert!(
                said.contains(&format!("{RESTARTS_MAX} counted restarts cleared")),
                "{said}"
            );
            let mut again = cluster.start(id).await;
            again.terminate();
            assert_eq!(again.exit_code().await, Some(0));
            break;
        }
        let mut instance = cluster.start(id).await;
        match case.end {
            End::Killed => {
                instance.kill();
                let _ = instance.exit_code().await;
            }
            End::Stopped => instance.stop_gracefully().await,
        }
    }
    if !case.refused {
        assert!(
            common::receiver::webhook_events(&received).is_empty(),
            "{}: nothing refused, nothing notified",
            case.name
        );
        let (_, status) = vigil_command(&cluster, &["status"]).await;
        assert!(
            status.contains(&format!("restart budget: 0 of {RESTARTS_MAX} restarts")),
            "{}: {status}",
            case.name
        );
    }
    clean(&cluster.dir);
    let _ = std::fs::remove_dir_all(&sqlite_dir);
    if let Some(database) = database {
        database.drop_now().await;
    }
}

/// Instances that start at the same moment with one restart left in the budget: the
/// decisions are taken one after the other, so exactly one is admitted, on both backends.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn starts_at_once_share_the_last_restart_between_them() {
    use vigil::store::{Access, AnyStore, InstanceRecord, Store};
    let sqlite_dir = std::env::temp_dir().join(format!("vigil-budget-race-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&sqlite_dir);
    std::fs::create_dir_all(&sqlite_dir).unwrap();
    let mut urls = vec![format!(
        "sqlite://{}",
        sqlite_dir.join("vigil.db").display()
    )];
    let database = match postgres_admin_url("two_starts_at_once") {
        Some(admin) => Some(ScratchDatabase::create(&admin, "budget").await),
        None => None,
    };
    urls.extend(database.as_ref().map(|database| database.url.clone()));
    let budget = vigil::policy::RestartBudget {
        max_restarts: 3,
        window: Duration::from_secs(3600),
    };
    for url in urls {
        let store = AnyStore::connect(&url, Access::ReadWrite).await.unwrap();
        store.migrate().await.unwrap();
        let now = chrono::Utc::now();
        for id in ["a", "b"] {
            // A run that never recorded its end: every start after it counts.
            let record = InstanceRecord {
                instance_id: id.into(),
                hostname: "host".into(),
                started_at: now,
            };
            store.record_status(&record, "active", now).await.unwrap();
        }
        for _ in 0..2 {
            let admitted = vigil::restarts::admit(&store, "a", "host", &budget, now).await;
            assert!(matches!(
                admitted.unwrap(),
                vigil::restarts::Admission::Admitted { .. }
            ));
        }
        // Eight at once, so that without the lock their reads would overlap.
        let racing = futures_util::future::join_all((0..8).map(|n| {
            let id = if n % 2 == 0 { "a" } else { "b" };
            vigil::restarts::admit(&store, id, "host", &budget, now)
        }))
        .await;
        let admitted = racing
            .into_iter()
            .filter(|admission| {
                matches!(
                    admission.as_ref().unwrap(),
                    vigil::restarts::Admission::Admitted { .. }
                )
            })
            .count();
        assert_eq!(
            admitted, 1,
            "{url}: exactly one of the racing starts gets the last restart"
        );
        let usage = vigil::restarts::usage(&store, &budget, now).await.unwrap();
        assert_eq!(usage.counted, 3, "{url}");
        store.close().await;
    }
    let _ = std::fs::remove_dir_all(&sqlite_dir);
    if let Some(database) = database {
        database.drop_now().await;
    }
}
