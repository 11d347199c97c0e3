//! Crash recovery against real SQLite and real PostgreSQL.
//!
//! Each scenario seeds a database, damages it (or not), then (1) runs `vigil recover --check`
//! on the real binary and proves it changed nothing, and (2) runs the real start-up (live
//! loop, start-up executor, the store) with a clock that jumps straight to each retry, and
//! snapshots the final lifecycle state, the exit code, the recorded instance status, the
//! receipt and every log line.
//!
//! PostgreSQL runs when `VIGIL_TEST_DATABASE_URL` is set (each test gets a fresh database);
//! otherwise it is skipped with a notice, unless `VIGIL_REQUIRE_SERVICES=1` makes that a
//! failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use chrono::{TimeZone, Utc};
use common::{keep_call_sites_interesting, postgres_admin_url, ScratchDatabase};
use regex::Regex;
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use vigil::domain::{Portfolio, Position, PositionStatus, Pyramiding};
use vigil::driver::live::{self, InstantClock};
use vigil::driver::Driver;
use vigil::executor::ports::{RedisCheck, StoreDatabase};
use vigil::executor::{Executor, ExecutorConfig, Ports, Until};
use vigil::logging::{self, Capture, VirtualTimer};
use vigil::policy::Policy;
use vigil::store::{Access, AnyStore, InstanceRecord, StateWrite, Store};

/// A scenario: a name, how to damage the seeded data per backend, and whether to seed.
struct Scenario {
    name: &'static str,
    seed: bool,
    /// SQL run after seeding: (SQLite, PostgreSQL).
    damage: (&'static str, &'static str),
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "normal_restart",
        seed: true,
        damage: ("", ""),
    },
    Scenario {
        name: "empty_database",
        seed: false,
        damage: ("", ""),
    },
    Scenario {
        name: "total_risk_tampered",
        seed: true,
        damage: (
            "UPDATE portfolio_state SET total_risk = '999999.99'",
            "UPDATE portfolio_state SET total_risk = 999999.99",
        ),
    },
    Scenario {
        name: "margin_used_tampered",
        seed: true,
        damage: (
            "UPDATE portfolio_state SET margin_used = '760100.00'",
            "UPDATE portfolio_state SET margin_used = 760100.00",
        ),
    },
    Scenario {
        name: "money_unparseable",
        seed: true,
        damage: (
            "UPDATE positions SET risk_amount = '2,500.00' WHERE id = 'nifty-pyramid-1'",
            "UPDATE positions SET risk_amount = 'NaN' WHERE id = 'nifty-pyramid-1'",
        ),
    },
    Scenario {
        name: "pyramid_base_missing",
        seed: true,
        // The base row is deleted and the totals adjusted to match, so only the missing base
        // is wrong: the pyramids' base_position_id becomes NULL.
        damage: (
            "DELETE FROM positions WHERE id = 'nifty-base'; \
             UPDATE portfolio_state SET total_risk = '9500.00', margin_used = '460000.00'",
            "DELETE FROM positions WHERE id = 'nifty-base'; \
             UPDATE portfolio_state SET total_risk = 9500.00, margin_used = 460000.00",
        ),
    },
    Scenario {
        name: "lots_not_positive",
        seed: true,
        damage: (
            "UPDATE positions SET lots = '0' WHERE id = 'banknifty-base'",
            "UPDATE positions SET lots = 0 WHERE id = 'banknifty-base'",
        ),
    },
    Scenario {
        name: "open_position_with_exit",
        seed: true,
        damage: (
            "UPDATE positions SET exit_time = '2026-11-20T10:00:00.000000Z', exit_price = '48100.00' WHERE id = 'banknifty-base'",
            "UPDATE positions SET exit_time = '2026-11-20T10:00:00Z', exit_price = 48100.00 WHERE id = 'banknifty-base'",
        ),
    },
    Scenario {
        name: "stop_at_entry",
        seed: true,
        damage: (
            "UPDATE positions SET stop_price = '48000.00' WHERE id = 'banknifty-base'",
            "UPDATE positions SET stop_price = 48000.00 WHERE id = 'banknifty-base'",
        ),
    },
    Scenario {
        name: "pyramiding_names_no_base",
        seed: true,
        damage: (
            "UPDATE pyramiding_state SET base_position_id = NULL WHERE instrument = 'NIFTY'",
            "UPDATE pyramiding_state SET base_position_id = NULL WHERE instrument = 'NIFTY'",
        ),
    },
    Scenario {
        name: "pyramiding_without_position",
        seed: true,
        damage: (
            "INSERT INTO pyramiding_state (instrument, last_pyramid_price, base_position_id) VALUES ('SENSEX', '80000', NULL)",
            "INSERT INTO pyramiding_state (instrument, last_pyramid_price, base_position_id) VALUES ('SENSEX', 80000, NULL)",
        ),
    },
    Scenario {
        name: "closed_equity_tampered",
        seed: true,
        damage: (
            "UPDATE portfolio_state SET closed_equity = '1012000.00'",
            "UPDATE portfolio_state SET closed_equity = 1012000.00",
        ),
    },
    Scenario {
        name: "closed_position_without_pnl",
        seed: true,
        damage: (
            "UPDATE positions SET realized_pnl = NULL WHERE id = 'nifty-closed'",
            "UPDATE positions SET realized_pnl = NULL WHERE id = 'nifty-closed'",
        ),
    },
    Scenario {
        name: "lots_null",
        seed: true,
        // SQLite cannot drop a NOT NULL: the column is replaced by a nullable one of its type.
        damage: (
            "ALTER TABLE positions RENAME COLUMN lots TO lots_before; ALTER TABLE positions ADD COLUMN lots TEXT; \
             UPDATE positions SET lots = lots_before WHERE id <> 'banknifty-base'",
            "ALTER TABLE positions ALTER COLUMN lots DROP NOT NULL; UPDATE positions SET lots = NULL WHERE id = 'banknifty-base'",
        ),
    },
    Scenario {
        name: "migration_changed",
        seed: true,
        damage: (
            "UPDATE _sqlx_migrations SET checksum = X'00' WHERE version = 1",
            "UPDATE _sqlx_migrations SET checksum = '\\x00'::bytea WHERE version = 1",
        ),
    },
    Scenario {
        name: "migration_history_dropped",
        seed: true,
        damage: (
            "DROP TABLE _sqlx_migrations",
            "DROP TABLE _sqlx_migrations",
        ),
    },
    Scenario {
        name: "lots_retyped",
        seed: true,
        // SQLite cannot change a column's type: the column is replaced by a REAL one.
        damage: (
            "ALTER TABLE positions RENAME COLUMN lots TO lots_before; \
             ALTER TABLE positions ADD COLUMN lots REAL; UPDATE positions SET lots = lots_before",
            "ALTER TABLE positions ALTER COLUMN lots TYPE DOUBLE PRECISION USING lots::double precision",
        ),
    },
    Scenario {
        name: "risk_amount_retyped",
        seed: true,
        damage: (
            "ALTER TABLE positions RENAME COLUMN risk_amount TO risk_before; \
             ALTER TABLE positions ADD COLUMN risk_amount INTEGER; UPDATE positions SET risk_amount = risk_before",
            "ALTER TABLE positions ALTER COLUMN risk_amount TYPE INTEGER",
        ),
    },
];

/// The exit of the seeded closed trade, which the store writes when an EXIT closes a
/// position: (SQLite, PostgreSQL). Its P&L is the seeded closed equity over the initial
/// capital.
const SEEDED_EXIT: (&str, &str) = (
    "UPDATE positions SET exit_price = '21541.15', exit_time = '2026-11-20T09:10:00.000000Z', \
     realized_pnl = '12345.67' WHERE id = 'nifty-closed'",
    "UPDATE positions SET exit_price = 21541.15, exit_time = '2026-11-20T09:10:00Z', \
     realized_pnl = 12345.67 WHERE id = 'nifty-closed'",
);

/// Policies the scenarios run under.
const POLICIES: &[&str] = &["default", "strict"];

static UNIQUE: AtomicUsize = AtomicUsize::new(0);

/// A database to test against.
struct Backend {
    name: &'static str,
    url: String,
    /// The SQLite file, whose bytes must not change under `recover --check`.
    file: Option<PathBuf>,
    /// The PostgreSQL scratch database, dropped afterwards.
    scratch: Option<ScratchDatabase>,
}

impl Backend {
    fn sqlite(test: &str) -> Backend {
        let dir = std::env::temp_dir().join(format!(
            "vigil-test-{}-{test}-{}",
            std::process::id(),
            UNIQUE.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("vigil.db");
        Backend {
            name: "sqlite",
            url: format!("sqlite://{}", file.display()),
            file: Some(file),
            scratch: None,
        }
    }

    async fn postgres(test: &str) -> Option<Backend> {
        let admin = postgres_admin_url(test)?;
        let scratch = ScratchDatabase::create(&admin, "test").await;
        Some(Backend {
            name: "postgres",
            url: scratch.url.clone(),
            file: None,
            scratch: Some(scratch),
        })
    }

    /// Backends for one test: SQLite always, PostgreSQL when configured.
    async fn all(test: &str) -> Vec<Backend> {
        let mut backends = vec![Backend::sqlite(test)];
        backends.extend(Backend::postgres(test).await);
        backends
    }

    /// Runs `;`-separated statements with plain sqlx, as an outside hand would.
    async fn execute(&self, sql: &str) {
        for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let statement = sqlx::AssertSqlSafe(statement.to_string());
            match self.name {
                "sqlite" => {
                    let pool = sqlx::SqlitePool::connect(&self.url).await.unwrap();
                    sqlx::query(statement).execute(&pool).await.unwrap();
                    pool.close().await;
                }
                _ => {
                    let pool = sqlx::PgPool::connect(&self.url).await.unwrap();
                    sqlx::query(statement).execute(&pool).await.unwrap();
                    pool.close().await;
                }
            }
        }
    }

    /// Everything stored: the SQLite file's hash, or every PostgreSQL row as text.
    async fn fingerprint(&self) -> String {
        if let Some(file) = &self.file {
            let mut hash = Sha256::new();
            hash.update(std::fs::read(file).unwrap());
            let wal = file.with_extension("db-wal");
            if let Ok(bytes) = std::fs::read(&wal) {
                hash.update(bytes);
            }
            return format!("{:x}", hash.finalize());
        }
        let pool = sqlx::PgPool::connect(&self.url).await.unwrap();
        let mut rows = Vec::new();
        for (table, key) in [
            ("positions", "id"),
            ("portfolio_state", "id"),
            ("pyramiding_state", "instrument"),
            ("instance_metadata", "instance_id"),
        ] {
            let query = format!("SELECT t::text FROM {table} t ORDER BY {key}");
            let found: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(query))
                .fetch_all(&pool)
                .await
                .unwrap();
            rows.push(format!("{table}: {found:?}"));
        }
        pool.close().await;
        rows.join("\n")
    }

    async fn cleanup(self) {
        if let Some(scratch) = self.scratch {
            scratch.drop_now().await;
        }
        if let Some(file) = self.file {
            let _ = std::fs::remove_dir_all(file.parent().unwrap());
        }
    }
}

fn money(text: &str) -> Decimal {
    Decimal::from_str(text).unwrap()
}

/// A base and two pyramids on NIFTY, a base on BANKNIFTY, and a closed NIFTY trade whose
/// numbers must take no part in the sums.
fn seeded_state() -> StateWrite {
    let at = |minute: u32| Utc.with_ymd_and_hms(2026, 11, 20, 9, minute, 0).unwrap();
    let position = |id: &str,
                    instrument: &str,
                    base: Option<&str>,
                    lots: &str,
                    entry: &str,
                    stop: &str,
                    risk: &str,
                    margin: &str,
                    minute: u32| Position {
        id: id.into(),
        instrument: instrument.into(),
        label: "long".into(),
        status: PositionStatus::Open,
        lots: money(lots),
        entry_price: money(entry),
        stop_price: money(stop),
        risk_amount: money(risk),
        margin: money(margin),
        is_base_position: base.is_none(),
        base_position_id: base.map(str::to_string),
        entry_time: at(minute),
        version: 1,
    };
    let mut closed = position(
        "nifty-closed",
        "NIFTY",
        None,
        "3",
        "21500.00",
        "21400.00",
        "7500.00",
        "450000.00",
        1,
    );
    closed.status = PositionStatus::Closed;
    StateWrite {
        positions: vec![
            closed,
            position(
                "nifty-base",
                "NIFTY",
                None,
                "2",
                "22000.00",
                "21900.00",
                "5000.00",
                "300000.00",
                15,
            ),
            position(
                "nifty-pyramid-1",
                "NIFTY",
                Some("nifty-base"),
                "1",
                "22100.00",
                "22000.00",
                "2500.00",
                "150000.00",
                30,
            ),
            position(
                "nifty-pyramid-2",
                "NIFTY",
                Some("nifty-base"),
                "1",
                "22200.50",
                "22100.50",
                "2500.00",
                "150000.00",
                45,
            ),
            position(
                "banknifty-base",
                "BANKNIFTY",
                None,
                "1",
                "48000.00",
                "47700.00",
                "4500.00",
                "160000.00",
                20,
            ),
        ],
        portfolio: Some(Portfolio {
            initial_capital: money("1000000.00"),
            closed_equity: money("1012345.67"),
            total_risk: money("14500.00"),
            margin_used: money("760000.00"),
            version: 7,
        }),
        pyramiding: vec![
            Pyramiding {
                instrument: "NIFTY".into(),
                last_pyramid_price: money("22200.50"),
                base_position_id: Some("nifty-base".into()),
            },
            Pyramiding {
                instrument: "BANKNIFTY".into(),
                last_pyramid_price: money("48000.00"),
                base_position_id: Some("banknifty-base".into()),
            },
        ],
    }
}

fn policy(name: &str) -> Policy {
    let path = PathBuf::from(format!("policies/{name}.toml"));
    let source =
        std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(&path)).unwrap();
    Policy::parse(&path, &source).unwrap()
}

/// Durations and paths differ from run to run; everything else must not.
fn normalise(text: &str, backend: &Backend) -> String {
    let duration = Regex::new(r"\d+ ms").unwrap();
    let mut text = duration.replace_all(text, "<n> ms").into_owned();
    if let Some(file) = &backend.file {
        text = text.replace(&file.display().to_string(), "<file>");
    }
    text.replace(&backend.url, "<url>")
}

fn snapshot(name: &str, text: &str) {
    insta::with_settings!({ snapshot_path => "../snapshots", prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!(name, text);
    });
}

/// The executor settings every test here uses: no instruments, until stopped, a heartbeat
/// every 5 s.
fn config(tolerance: Decimal, initial_capital: Option<Decimal>) -> ExecutorConfig {
    ExecutorConfig {
        instance: "vigil-test".into(),
        tolerance,
        instruments: BTreeMap::new(),
        initial_capital,
        until: Until::Stopped,
        heartbeat_interval: std::time::Duration::from_secs(5),
        snapshots: None,
    }
}

/// The real executor against the database at `url`, read-write, with the paper broker.
fn executor(
    url: &str,
    tolerance: Decimal,
    initial_capital: Option<Decimal>,
    shared: &Arc<vigil::shared::Shared>,
) -> Executor {
    let instance = InstanceRecord {
        instance_id: "vigil-test".into(),
        hostname: "test-host".into(),
        started_at: Utc.with_ymd_and_hms(2026, 11, 21, 8, 0, 0).unwrap(),
    };
    let ports = Ports {
        database: Arc::new(StoreDatabase::new(
            url,
            Access::ReadWrite,
            instance,
            Arc::clone(shared),
        )),
        redis: Arc::new(RedisCheck(Arc::clone(shared))),
        broker: Arc::new(vigil::broker::PaperBroker),
        shared: Arc::clone(shared),
    };
    Executor::new(config(tolerance, initial_capital), ports)
}

/// Runs the real start-up against `url` until it settles (active or degraded) or ends
/// (crashed), and reports what happened.
async fn start_up(url: &str, policy: &Policy) -> (String, Executor) {
    start_up_with(url, policy, None).await
}

/// [`start_up`], with the deployment's initial capital.
async fn start_up_with(
    url: &str,
    policy: &Policy,
    initial_capital: Option<Decimal>,
) -> (String, Executor) {
    let now_ms = Arc::new(AtomicU64::new(0));
    let capture = Capture::default();
    let subscriber = logging::subscriber(capture.clone(), VirtualTimer::new(Arc::clone(&now_ms)));
    let _guard = tracing::subscriber::set_default(subscriber);
    let (sender, mut inputs) = live::channel();
    let shared = Arc::new(vigil::shared::Shared::new("vigil-test", sender));
    let mut startup = executor(url, policy.recovery.tolerance, initial_capital, &shared);
    let mut lifecycle = startup.watch_lifecycle();
    let (mut driver, init) = Driver::new(policy, "vigil-test", fastrand::Rng::with_seed(1));
    driver.publish_time(now_ms);

    let mut clock = InstantClock::default();
    let ending = {
        let run = live::run(&mut driver, &init, &mut inputs, &mut startup, &mut clock);
        tokio::select! {
            code = run => format!("exit code {code}"),
            _ = lifecycle.wait_for(|view| view.state.is_serving()) => "still running".to_string(),
        }
    };
    let state = driver.state().name();
    startup.flush_status().await;
    let recorded = match shared.store() {
        Some(store) => store
            .instance_status("vigil-test")
            .await
            .unwrap()
            .unwrap_or_else(|| "none".into()),
        None => "none (no database)".into(),
    };
    let receipt = startup
        .receipt()
        .as_ref()
        .map_or("none".to_string(), ToString::to_string);
    // Leadership, which starts once the instance serves, is covered by tests/ha.rs; whether
    // its first line lands before the lifecycle settles is a race these snapshots ignore.
    let log: Vec<String> = capture
        .take_lines()
        .into_iter()
        .filter(|line| !line.contains(" vigil::coordination: "))
        .collect();
    let report = format!(
        "final state: {state}\n{ending}\nrecorded status: {recorded}\nreceipt:\n{receipt}\nlog:\n{}\n",
        log.join("\n")
    );
    if let Some(store) = shared.store() {
        store.close().await;
    }
    (report, startup)
}

/// `vigil recover --check` on the real binary; returns its report and exit code.
fn recover_check(url: &str, policy: &str) -> (String, i32) {
    let output = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args([
            "recover",
            "--check",
            "--database-url",
            url,
            "--policy",
            &format!("policies/{policy}.toml"),
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_remove("VIGIL_CONFIG")
        .env("VIGIL_INSTANCE", "vigil-check")
        .output()
        .unwrap();
    (
        String::from_utf8(output.stdout).unwrap(),
        output.status.code().unwrap_or(-1),
    )
}

#[tokio::test]
async fn recovery_scenarios() {
    keep_call_sites_interesting();
    for scenario in SCENARIOS {
        for backend in Backend::all(scenario.name).await {
            // Seed through the store, as the service writes.
            let store = AnyStore::connect(&backend.url, Access::ReadWrite)
                .await
                .unwrap();
            store.migrate().await.unwrap();
            if scenario.seed {
                store.write_state(&seeded_state()).await.unwrap();
            }
            store.close().await;
            let sqlite = backend.name == "sqlite";
            let pick = |(sqlite_sql, postgres_sql): (&'static str, &'static str)| {
                if sqlite {
                    sqlite_sql
                } else {
                    postgres_sql
                }
            };
            if scenario.seed {
                backend.execute(pick(SEEDED_EXIT)).await;
            }
            backend.execute(pick(scenario.damage)).await;

            for policy_name in POLICIES {
                // recover --check is read-only: the data is the same before and after.
                let before = backend.fingerprint().await;
                let (check, code) = recover_check(&backend.url, policy_name);
                assert_eq!(
                    backend.fingerprint().await,
                    before,
                    "{} {}: recover --check changed the data",
                    backend.name,
                    scenario.name
                );
                let check = format!("exit code {code}\n{}", normalise(&check, &backend));
                snapshot(
                    &format!(
                        "recovery__{}__{}__{policy_name}__check",
                        scenario.name, backend.name
                    ),
                    &check,
                );
            }
            for policy_name in POLICIES {
                let (report, startup) = start_up(&backend.url, &policy(policy_name)).await;
                snapshot(
                    &format!(
                        "recovery__{}__{}__{policy_name}",
                        scenario.name, backend.name
                    ),
                    &normalise(&report, &backend),
                );
                if scenario.name == "normal_restart" {
                    assert_restored(startup);
                }
            }
            backend.cleanup().await;
        }
    }
}

/// A write the database refuses says which table refused it, in the database's words and
/// without the driver's internals.
#[tokio::test]
async fn a_refused_write_names_its_table() {
    for backend in Backend::all("refused_write").await {
        let store = AnyStore::connect(&backend.url, Access::ReadWrite)
            .await
            .unwrap();
        store.migrate().await.unwrap();
        store.write_state(&seeded_state()).await.unwrap();
        let error = store
            .write_state(&seeded_state())
            .await
            .unwrap_err()
            .to_string();
        store.close().await;
        assert!(error.contains("positions"), "{}: {error}", backend.name);
        assert!(!error.contains(" at line "), "{}: {error}", backend.name);
        if backend.name == "postgres" {
            assert!(
                error.contains("in table positions (SQLSTATE 23505)"),
                "{error}"
            );
        }
        backend.cleanup().await;
    }
}

/// A new database's portfolio starts from the deployment's initial capital, and a later
/// start under another capital halts on it.
#[tokio::test]
async fn the_initial_capital_comes_from_the_deployment() {
    for backend in Backend::all("initial_capital").await {
        let default = policy("default");
        let (report, _) = start_up_with(&backend.url, &default, Some(money("1000000"))).await;
        assert!(report.contains("final state: active"), "{report}");
        let store = AnyStore::connect(&backend.url, Access::ReadOnly)
            .await
            .unwrap();
        let portfolio = store.load_recovery_rows().await.unwrap().portfolio.unwrap();
        store.close().await;
        assert_eq!(
            (
                money(portfolio.initial_capital.as_deref().unwrap()),
                money(portfolio.closed_equity.as_deref().unwrap())
            ),
            (money("1000000"), money("1000000")),
            "{}",
            backend.name
        );
        let (report, _) = start_up_with(&backend.url, &default, Some(money("1000000"))).await;
        assert!(report.contains("final state: active"), "{report}");
        let (report, _) = start_up_with(&backend.url, &default, Some(money("2000000"))).await;
        assert!(report.contains("final state: crashed"), "{report}");
        assert!(
            report.contains(
                "[FAIL] initial capital: stored 1000000 but the deployment file sets initial_capital = \"2000000\""
            ),
            "{report}"
        );
        backend.cleanup().await;
    }
}

/// Recovery restored every open position, the closed equity, and each instrument's last
/// pyramid price and base.
fn assert_restored(startup: Executor) {
    let state = startup
        .recovered_state()
        .expect("a clean recovery keeps its state");
    let seeded = seeded_state();
    let open: Vec<&Position> = seeded
        .positions
        .iter()
        .filter(|p| p.status == PositionStatus::Open)
        .collect();
    assert_eq!(state.positions.len(), open.len());
    for position in open {
        assert!(
            state.positions.contains(position),
            "position {} was not restored exactly",
            position.id
        );
    }
    assert_eq!(
        state.portfolio.as_ref().map(|p| p.closed_equity),
        Some(money("1012345.67"))
    );
    for pyramiding in &seeded.pyramiding {
        assert!(
            state.pyramiding.contains(pyramiding),
            "pyramiding of {} was not restored",
            pyramiding.instrument
        );
    }
}

#[tokio::test]
async fn database_unavailable_at_start() {
    keep_call_sites_interesting();
    let sqlite_dir =
        std::env::temp_dir().join(format!("vigil-test-missing-{}", std::process::id()));
    let mut urls = vec![(
        "sqlite",
        format!("sqlite://{}/no-such-dir/vigil.db", sqlite_dir.display()),
    )];
    if postgres_admin_url("database_unavailable_at_start").is_some() {
        // Port 1 on loopback: nothing listens there, so the connection is refused.
        urls.push((
            "postgres",
            "postgres://postgres@127.0.0.1:1/vigil".to_string(),
        ));
    }
    for (backend, url) in urls {
        for policy_name in POLICIES {
            let (report, _) = start_up(&url, &policy(policy_name)).await;
            let report = report.replace(&sqlite_dir.display().to_string(), "<dir>");
            snapshot(
                &format!("recovery__database_unavailable__{backend}__{policy_name}"),
                &report,
            );
        }
    }
}

/// A database that is missing at start and appears later: the instance degrades, notices the
/// database's return by itself, recovers and becomes active, with no restart.
#[tokio::test]
async fn a_returning_database_is_noticed_and_recovered() {
    keep_call_sites_interesting();
    /// How long to wait for the probe (every 5 s) to notice the database.
    const RETURN_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
    let dir = std::env::temp_dir().join(format!("vigil-test-return-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let url = format!("sqlite://{}/later/vigil.db", dir.display());
    let (sender, mut inputs) = live::channel();
    let shared = Arc::new(vigil::shared::Shared::new("vigil-test", sender));
    let mut startup = executor(&url, Decimal::new(1, 2), None, &shared);
    let mut lifecycle = startup.watch_lifecycle();
    let (mut driver, init) = Driver::new(
        &policy("default"),
        "vigil-test",
        fastrand::Rng::with_seed(1),
    );
    let mut clock = InstantClock::default();
    let run = live::run(&mut driver, &init, &mut inputs, &mut startup, &mut clock);
    let story = async {
        lifecycle
            .wait_for(|view| view.state.name() == "degraded")
            .await
            .unwrap();
        std::fs::create_dir_all(dir.join("later")).unwrap();
        tokio::time::timeout(
            RETURN_WAIT,
            lifecycle.wait_for(|view| view.state.name() == "active"),
        )
        .await
        .is_ok()
    };
    let recovered = tokio::select! {
        code = run => panic!("the instance ended with exit code {code}"),
        recovered = story => recovered,
    };
    assert!(
        recovered,
        "the instance did not notice the database's return"
    );
    let states: Vec<String> = shared
        .recent_transitions()
        .iter()
        .filter(|t| t.transition.machine.as_str() == "lifecycle")
        .map(|t| format!("{} -> {}", t.transition.from, t.transition.to))
        .collect();
    assert_eq!(
        states,
        [
            "none -> starting",
            "starting -> degraded",
            "degraded -> recovering",
            "recovering -> active"
        ]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A database lost while the instance is active and idle: the watch notices it, the
/// instance degrades per the policy, and recovers by itself once the database is back.
#[tokio::test]
async fn a_database_lost_while_active_is_noticed_and_recovered() {
    keep_call_sites_interesting();
    /// How long each phase may take: the watch and the probe each check every 5 s.
    const PHASE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);
    let Some(backend) = Backend::postgres("lost_while_active").await else {
        return;
    };
    let scratch = backend.scratch.clone().unwrap();
    let (admin, name) = (scratch.admin.clone(), scratch.name.clone());
    let (sender, mut inputs) = live::channel();
    let shared = Arc::new(vigil::shared::Shared::new("vigil-test", sender));
    let mut startup = executor(&backend.url, Decimal::new(1, 2), None, &shared);
    let mut lifecycle = startup.watch_lifecycle();
    let (mut driver, init) = Driver::new(
        &policy("default"),
        "vigil-test",
        fastrand::Rng::with_seed(1),
    );
    let mut clock = InstantClock::default();
    let run = live::run(&mut driver, &init, &mut inputs, &mut startup, &mut clock);
    let admin_sql = |sql: String| common::execute(&admin, sql);
    let story = async {
        lifecycle
            .wait_for(|view| view.state.name() == "active")
            .await
            .unwrap();
        // Take the database away: no new connections, existing ones cut.
        admin_sql(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false")).await;
        admin_sql(format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
        ))
        .await;
        let degraded = tokio::time::timeout(
            PHASE_WAIT,
            lifecycle.wait_for(|view| view.state.name() == "degraded"),
        )
        .await
        .is_ok();
        // Wait until the policy has spent its retries and tolerates the loss: from then on
        // only the background check can notice the database's return.
        let tolerated = || {
            shared.recent_transitions().iter().any(|t| {
                t.transition.machine.as_str() == "failure" && t.transition.to == "tolerating"
            })
        };
        for _ in 0..300 {
            if tolerated() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(tolerated(), "the policy never tolerated the lost database");
        admin_sql(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true")).await;
        let active = tokio::time::timeout(
            PHASE_WAIT,
            lifecycle.wait_for(|view| view.state.name() == "active"),
        )
        .await
        .is_ok();
        (degraded, active)
    };
    let (degraded, active) = tokio::select! {
        code = run => panic!("the instance ended with exit code {code}"),
        outcome = story => outcome,
    };
    assert!(degraded, "the lost database was not noticed");
    assert!(active, "the returning database was not noticed");
    let states: Vec<String> = shared
        .recent_transitions()
        .iter()
        .filter(|t| t.transition.machine.as_str() == "lifecycle")
        .map(|t| format!("{} -> {}", t.transition.from, t.transition.to))
        .collect();
    assert_eq!(
        states,
        [
            "none -> starting",
            "starting -> recovering",
            "recovering -> active",
            "active -> degraded",
            "degraded -> recovering",
            "recovering -> active"
        ]
    );
    backend.cleanup().await;
}
