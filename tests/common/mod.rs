//! What several integration tests share: the PostgreSQL and Redis servers to test against,
//! scratch databases, several real instances at once, and log capture that cannot lose lines.
#![allow(dead_code)] // Each test crate uses a different part of what is shared.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Makes every scratch database name unique within the test process.
static UNIQUE: AtomicUsize = AtomicUsize::new(0);

/// Installs, once per test process, a global subscriber that wants every INFO event. Tests
/// capture logs with thread-local subscribers; `tracing` caches each call site's interest,
/// and a call site first reached on a thread with no subscriber could otherwise be cached as
/// uninteresting while another test's capture is being set up, and its lines lost.
pub fn keep_call_sites_interesting() {
    static INSTALLED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    INSTALLED.get_or_init(|| {
        let subscriber =
            vigil::logging::subscriber(std::io::sink, vigil::logging::VirtualTimer::default());
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}

/// The PostgreSQL server to test against, if configured. Without one the PostgreSQL half of
/// `test` is skipped with a notice, or fails under `VIGIL_REQUIRE_SERVICES=1`.
pub fn postgres_admin_url(test: &str) -> Option<String> {
    if let Ok(url) = std::env::var("VIGIL_TEST_DATABASE_URL") {
        return Some(url);
    }
    assert!(
        std::env::var("VIGIL_REQUIRE_SERVICES").as_deref() != Ok("1"),
        "VIGIL_REQUIRE_SERVICES=1 but VIGIL_TEST_DATABASE_URL is not set"
    );
    // Written past the test harness's capture, so a plain `cargo test` shows it.
    let notice = format!(
        "notice: VIGIL_TEST_DATABASE_URL is not set; skipping the PostgreSQL half of {test}\n"
    );
    let _ = std::io::Write::write_all(&mut std::io::stderr(), notice.as_bytes());
    None
}

/// The Redis server to test against, if configured; like [`postgres_admin_url`].
pub fn redis_url(test: &str) -> Option<String> {
    if let Ok(url) = std::env::var("VIGIL_TEST_REDIS_URL") {
        return Some(url);
    }
    assert!(
        std::env::var("VIGIL_REQUIRE_SERVICES").as_deref() != Ok("1"),
        "VIGIL_REQUIRE_SERVICES=1 but VIGIL_TEST_REDIS_URL is not set"
    );
    let notice =
        format!("notice: VIGIL_TEST_REDIS_URL is not set; skipping the Redis half of {test}\n");
    let _ = std::io::Write::write_all(&mut std::io::stderr(), notice.as_bytes());
    None
}

/// A fresh PostgreSQL database, dropped by [`ScratchDatabase::drop_now`].
#[derive(Debug, Clone)]
pub struct ScratchDatabase {
    /// The server's admin URL.
    pub admin: String,
    /// The database's name.
    pub name: String,
    /// Its URL.
    pub url: String,
}

impl ScratchDatabase {
    /// Creates `vigil_{prefix}_{pid}_{n}` on the server at `admin`.
    pub async fn create(admin: &str, prefix: &str) -> ScratchDatabase {
        let name = format!(
            "vigil_{prefix}_{}_{}",
            std::process::id(),
            UNIQUE.fetch_add(1, Ordering::Relaxed)
        );
        execute(admin, format!("CREATE DATABASE {name}")).await;
        let base = admin.rsplit_once('/').map_or(admin, |(base, _)| base);
        ScratchDatabase {
            admin: admin.to_string(),
            url: format!("{base}/{name}"),
            name,
        }
    }

    /// Drops the database, cutting any connection still open.
    pub async fn drop_now(&self) {
        execute(
            &self.admin,
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        )
        .await;
    }
}

/// Runs one statement on the server at `admin`.
pub async fn execute(admin: &str, sql: String) {
    let pool = sqlx::PgPool::connect(admin)
        .await
        .expect("VIGIL_TEST_DATABASE_URL does not accept connections");
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&pool)
        .await
        .expect("an admin statement failed");
    pool.close().await;
}
pub mod cluster;
pub mod tradingview;

/// Journals made by [`intake`] in this process, so each gets its own file.
static JOURNALS: AtomicUsize = AtomicUsize::new(0);

/// An intake for `shared` with the paper broker, the built-in instruments and policy, and
/// a fresh journal in the temporary directory.
#[allow(dead_code)]
pub fn intake(
    shared: &std::sync::Arc<vigil::shared::Shared>,
) -> std::sync::Arc<vigil::intake::Intake> {
    let path = std::env::temp_dir().join(format!(
        "vigil-test-{}-{}.journal",
        std::process::id(),
        JOURNALS.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_file(&path);
    std::sync::Arc::new(vigil::intake::Intake::new(
        std::sync::Arc::clone(shared),
        std::sync::Arc::new(vigil::broker::PaperBroker),
        vigil::domain::default_instruments(),
        vigil::policy::Policy::builtin_default().signals,
        vigil::intake::journal::Journal::open(&path, vigil::intake::journal::Mode::ReadWrite),
    ))
}

/// A recent alert time for the time-of-day `tag` ("09:15" or "09:15:02"), in RFC 3339: the
/// same tag is the same time for the whole test process (so a resend keeps its
/// fingerprint), later tags are later times, and every one is a little before the process
/// started, well inside the policy's `[signals]` max ages. A minute of tag after 09:00 is a
/// second of time.
pub fn at(tag: &str) -> String {
    static BASE: std::sync::OnceLock<chrono::DateTime<chrono::Utc>> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(|| chrono::Utc::now() - chrono::Duration::seconds(90));
    let mut parts = tag.split(':').map(|part| part.parse::<i64>().unwrap());
    let (hours, minutes) = (parts.next().unwrap(), parts.next().unwrap());
    let seconds = parts.next().unwrap_or(0);
    let since_nine_s = (hours - 9) * 3600 + minutes * 60 + seconds;
    let time = base + chrono::Duration::milliseconds(since_nine_s * 1000 / 60);
    time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
