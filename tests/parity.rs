//! `vigil recover --check` predicts `vigil run`: on the same inputs, the real binary run
//! both ways reaches the same verdict with the same exit code.
//!
//! Each case is a line in [`CASES`]: a database URL (a file in a scratch directory, or a
//! setting that cannot work) and the SQL that prepares it. `vigil run` counts as `active` or
//! `degraded` once its lifecycle settles there (it is then stopped), as `crashed` when it
//! halts, and as `refused` when it exits before starting at all.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};
use vigil::store::{Access, AnyStore, Store};

/// How long `vigil run` may take to settle or end; the built-in policy's longest retry
/// schedule is well inside it.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The instance id both ways run as.
const INSTANCE: &str = "vigil-parity";

/// A case: its name, the database URL (`{dir}` is the scratch directory), whether the
/// schema is migrated first, and the SQL run on it then.
type Case = (&'static str, &'static str, bool, &'static str);

const CASES: &[Case] = &[
    ("empty database", "sqlite://{dir}/vigil.db", true, ""),
    ("missing file", "sqlite://{dir}/missing.db", false, ""),
    ("missing directory", "sqlite://{dir}/missing/vigil.db", false, ""),
    ("unparseable URL", "notaurl", false, ""),
    ("another database", "mysql://db/vigil", false, ""),
    ("bad port", "postgres://db:99999/vigil", false, ""),
    (
        "no schema yet",
        "sqlite://{dir}/vigil.db",
        false,
        "CREATE TABLE unrelated (id INTEGER)",
    ),
    (
        "a changed migration",
        "sqlite://{dir}/vigil.db",
        true,
        "UPDATE _sqlx_migrations SET checksum = X'00' WHERE version = 1",
    ),
    (
        "a dropped migration history",
        "sqlite://{dir}/vigil.db",
        true,
        "DROP TABLE _sqlx_migrations",
    ),
    (
        "lots retyped",
        "sqlite://{dir}/vigil.db",
        true,
        "ALTER TABLE positions RENAME COLUMN lots TO lots_before; ALTER TABLE positions ADD COLUMN lots REAL",
    ),
    (
        "totals without positions",
        "sqlite://{dir}/vigil.db",
        true,
        PORTFOLIO_WITH_RISK,
    ),
    (
        "open position with an exit",
        "sqlite://{dir}/vigil.db",
        true,
        "INSERT INTO portfolio_state VALUES (1, '0', '0', '10', '100', 1, '2026-11-20T09:00:00Z'); \
         INSERT INTO positions (id, instrument, label, status, lots, entry_price, stop_price, risk_amount, margin, \
         is_base_position, entry_time, exit_time, version) VALUES ('p1', 'NIFTY', 'long', 'open', '1', '100', '90', \
         '10', '100', 1, '2026-11-20T09:00:00Z', '2026-11-20T10:00:00Z', 1)",
    ),
    (
        "closed equity without its P&L",
        "sqlite://{dir}/vigil.db",
        true,
        "INSERT INTO portfolio_state VALUES (1, '0', '0', '0', '0', 1, '2026-11-20T09:00:00Z'); \
         INSERT INTO positions (id, instrument, label, status, lots, entry_price, stop_price, risk_amount, margin, \
         is_base_position, entry_time, exit_time, exit_price, realized_pnl, version) VALUES ('p1', 'NIFTY', 'long', \
         'closed', '1', '100', '90', '10', '100', 1, '2026-11-20T09:00:00Z', '2026-11-20T10:00:00Z', '110', '10', 2)",
    ),
    (
        "a stop at its entry",
        "sqlite://{dir}/vigil.db",
        true,
        "INSERT INTO portfolio_state VALUES (1, '0', '0', '0', '100', 1, '2026-11-20T09:00:00Z'); \
         INSERT INTO positions (id, instrument, label, status, lots, entry_price, stop_price, risk_amount, margin, \
         is_base_position, entry_time, version) VALUES ('p1', 'NIFTY', 'long', 'open', '1', '100', '100', \
         '0', '100', 1, '2026-11-20T09:00:00Z', 1)",
    ),
    (
        "pyramiding with nothing open",
        "sqlite://{dir}/vigil.db",
        true,
        "INSERT INTO portfolio_state VALUES (1, '0', '0', '0', '0', 1, '2026-11-20T09:00:00Z'); \
         INSERT INTO pyramiding_state VALUES ('NIFTY', '100', NULL)",
    ),
];

/// Stored risk with nothing open.
const PORTFOLIO_WITH_RISK: &str =
    "INSERT INTO portfolio_state VALUES (1, '0', '0', '5', '0', 1, '2026-11-20T09:00:00Z')";

#[tokio::test]
async fn recover_check_predicts_run() {
    for (index, (name, url, migrate, sql)) in CASES.iter().enumerate() {
        let dir = scratch(index);
        let url = url.replace("{dir}", &dir.display().to_string());
        prepare(&url, *migrate, sql).await;
        let check = recover_check(&dir, &url);
        let run = run(&dir, &url);
        assert_eq!(
            check, run,
            "{name}: recover --check predicted {check:?}, vigil run did {run:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A PostgreSQL URL naming a database the server lacks: both ways halt, and the check says
/// what to do, in the server's words and without the driver's internals.
#[tokio::test]
async fn a_missing_postgres_database_says_what_to_do() {
    let Some(admin) = common::postgres_admin_url("a_missing_postgres_database_says_what_to_do")
    else {
        return;
    };
    let (server, _) = admin.rsplit_once('/').unwrap();
    let url = format!("{server}/vigil_no_such_database");
    let dir = scratch(CASES.len());
    let output = recover_check_output(&dir, &url);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("database \"vigil_no_such_database\" does not exist: create it"),
        "{stdout}"
    );
    assert!(!stdout.contains(" at line "), "{stdout}");
    assert_eq!(recover_check(&dir, &url), run(&dir, &url));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Migrates and runs `sql` on a SQLite `url`; other URLs are left as they are.
async fn prepare(url: &str, migrate: bool, sql: &str) {
    if !url.starts_with("sqlite:") || (!migrate && sql.is_empty()) {
        return;
    }
    if migrate {
        let store = AnyStore::connect(url, Access::ReadWrite).await.unwrap();
        store.migrate().await.unwrap();
        store.close().await;
    }
    let pool = sqlx::SqlitePool::connect(&format!("{url}?mode=rwc"))
        .await
        .unwrap();
    for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        sqlx::query(sqlx::AssertSqlSafe(statement.to_string()))
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.close().await;
}

/// What `vigil recover --check` prints and its exit status.
fn recover_check_output(dir: &Path, url: &str) -> Output {
    common::vigil(dir)
        .args([
            "recover",
            "--check",
            "--database-url",
            url,
            "--instance",
            INSTANCE,
        ])
        .output()
        .unwrap()
}

/// What `vigil recover --check` says: the state it predicts and its exit code.
fn recover_check(dir: &Path, url: &str) -> (String, i32) {
    let output = recover_check_output(dir, url);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let code = output.status.code().unwrap_or(-1);
    let state = stdout
        .lines()
        .find_map(|line| line.strip_prefix("recovery would end "))
        .and_then(|rest| rest.split(';').next())
        .map_or("refused", |state| state);
    (state.to_string(), code)
}

/// What `vigil run` does: the state it settles on (then stopped) or ends in, and the exit
/// code `recover --check` gives that state: 0 active, 5 degraded, else the process's own.
fn run(dir: &Path, url: &str) -> (String, i32) {
    let mut child = common::vigil_run(dir)
        .database_url(url)
        .instance(INSTANCE)
        .command()
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines, settled) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let state = ["active", "degraded"].into_iter().find(|state| {
                line.contains("machine=lifecycle") && line.contains(&format!(" to={state} "))
            });
            if let Some(state) = state {
                let _ = lines.send(state);
            }
        }
    });
    let started = Instant::now();
    loop {
        if let Ok(state) = settled.try_recv() {
            // Stopped as a supervisor stops it: SIGTERM, by pid.
            let _ = vigil_testkit::process::send_signal(child.id(), "TERM");
            let status = child.wait().unwrap();
            assert_eq!(status.code(), Some(0), "a settled instance stops cleanly");
            let code = if state == "active" { 0 } else { 5 };
            return (state.to_string(), code);
        }
        if let Some(status) = child.try_wait().unwrap() {
            let code = status.code().unwrap_or(-1);
            let state = if code == 3 { "refused" } else { "crashed" };
            return (state.to_string(), code);
        }
        assert!(
            started.elapsed() < SETTLE_TIMEOUT,
            "vigil run on {url} neither settled nor ended within {SETTLE_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn scratch(index: usize) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vigil-parity-{}-{index}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
