//! What several integration tests share: the PostgreSQL and Redis servers to test against,
//! scratch databases, the real binary, several real instances at once, and log capture that
//! cannot lose lines. What the benchmarks need too (free ports, the private `redis-server`,
//! the binary's launch and supervision, scratch databases) is `vigil-testkit`'s; this wraps
//! it for tests, failing the test where the kit answers an error.
#![allow(dead_code)] // Each test crate uses a different part of what is shared.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use vigil_testkit::launch::Run;

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

/// A fresh PostgreSQL database, dropped by [`ScratchDatabase::drop_now`]: the kit's
/// (`admin`, `name` and `url` are its fields), failing the test where it fails.
#[derive(Debug, Clone)]
pub struct ScratchDatabase(vigil_testkit::postgres::ScratchDatabase);

impl std::ops::Deref for ScratchDatabase {
    type Target = vigil_testkit::postgres::ScratchDatabase;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl ScratchDatabase {
    /// Creates `vigil_{prefix}_{pid}_{n}` on the server at `admin`.
    pub async fn create(admin: &str, prefix: &str) -> ScratchDatabase {
        ScratchDatabase(
            vigil_testkit::postgres::ScratchDatabase::create(admin, prefix)
                .await
                .expect("VIGIL_TEST_DATABASE_URL does not create a database"),
        )
    }

    /// Drops the database, cutting any connection still open.
    pub async fn drop_now(&self) {
        self.0
            .drop_now()
            .await
            .expect("a scratch database could not be dropped");
    }

    /// Makes the database refuse connections and cuts the ones it has (`refuse`), or lets
    /// it take them again.
    pub async fn refuse_connections(&self, refuse: bool) {
        self.0
            .refuse_connections(refuse)
            .await
            .expect("the database's connections could not be refused or let in");
    }
}

/// Runs one statement on the server at `admin`.
pub async fn execute(admin: &str, sql: String) {
    vigil_testkit::postgres::execute(admin, &[sql])
        .await
        .expect("an admin statement failed");
}

/// The `vigil` binary these tests were built with (with the failpoints they arm).
pub fn vigil_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vigil"))
}

/// The real binary, to be run in `dir`, with no setting from the environment.
pub fn vigil(dir: &Path) -> Command {
    vigil_testkit::launch::vigil(vigil_binary(), dir)
}

/// `vigil run` of the real binary in `dir`, with no setting from the environment, listening
/// on loopback ports the system picks.
pub fn vigil_run(dir: &Path) -> Run {
    Run::new(vigil_binary(), dir)
}
pub mod cluster;
pub mod receiver;
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
