//! A start refuses an instance id another live process holds, and only then: each case is
//! the row the id's earlier holder left, whether that holder still beats, and the verdict.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::Utc;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use vigil::coordination::identity::{self, Held};
use vigil::store::{Access, AnyStore, InstanceRecord, Store};

static UNIQUE: AtomicUsize = AtomicUsize::new(0);

/// The heartbeat interval the cases run with: short, so a watch takes 100 ms.
const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(50);

const ID: &str = "vigil-twin";
const HOST: &str = "host-a";

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "vigil-identity-{}-{}",
        std::process::id(),
        UNIQUE.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// What the earlier holder of the id left.
struct Case {
    name: &'static str,
    /// The status and host its row records; `None`: there is no row.
    row: Option<(&'static str, &'static str)>,
    /// How long ago its last heartbeat was written, in heartbeat intervals.
    beat_intervals_ago: u32,
    /// Whether it keeps beating while the start watches.
    beating: bool,
    /// What the start decides: `None` free, `Some("here" | "elsewhere")` held.
    held: Option<&'static str>,
    /// Whether the database has vigil's tables (a database with a row always has).
    migrated: bool,
}

fn cases() -> Vec<Case> {
    let case = |name, row, beat_intervals_ago, beating, held| Case {
        name,
        row,
        beat_intervals_ago,
        beating,
        held,
        migrated: true,
    };
    #[rustfmt::skip]
    let cases = vec![
        Case { migrated: false, ..case("a blank database, not migrated yet", None, 0, false, None) },
        case("no row: a first start", None, 0, false, None),
        case("stopped cleanly", Some(("stopped", "host-b")), 0, false, None),
        case("halted", Some(("crashed", "host-b")), 0, false, None),
        // This host's processes are the host lock's to tell: the row is not watched.
        case("last ran on this host", Some(("active", HOST)), 0, true, None),
        case("live on another host", Some(("active", "host-b")), 0, true, Some("elsewhere")),
        case("degraded but live on another host", Some(("degraded", "host-b")), 1, true, Some("elsewhere")),
        case("killed on another host a moment ago", Some(("active", "host-b")), 0, false, None),
        case("gone from another host long ago", Some(("active", "host-b")), 20, false, None),
    ];
    cases
}

async fn check(case: &Case) {
    let dir = scratch();
    let url = format!("sqlite://{}/vigil.db", dir.display());
    let store = AnyStore::connect(&url, Access::ReadWrite).await.unwrap();
    if case.row.is_some() || case.migrated {
        store.migrate().await.unwrap();
    }
    if let Some((status, hostname)) = case.row {
        let record = InstanceRecord {
            instance_id: ID.into(),
            hostname: hostname.into(),
            started_at: Utc::now(),
        };
        let beat = Utc::now() - HEARTBEAT_INTERVAL * case.beat_intervals_ago;
        store.record_status(&record, status, beat).await.unwrap();
    }
    let beater = case.beating.then(|| {
        let store = store.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT_INTERVAL / 2).await;
                let _ = store.heartbeat(ID, Utc::now()).await;
            }
        })
    });
    let verdict = identity::check(&store, ID, HOST, HEARTBEAT_INTERVAL, Utc::now())
        .await
        .unwrap();
    if let Some(beater) = beater {
        beater.abort();
    }
    let held = match &verdict {
        None => None,
        Some(Held::Here { .. }) => Some("here"),
        Some(Held::Elsewhere { .. }) => Some("elsewhere"),
    };
    assert_eq!(held, case.held, "{}: {verdict:?}", case.name);
    if let Some(why) = &verdict {
        let message = why.to_string();
        assert!(
            message.contains(&format!("{ID:?}")) && message.contains("--instance"),
            "{}: the refusal names the id and what to do: {message}",
            case.name
        );
    }
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_start_refuses_only_an_id_a_live_process_holds() {
    for case in cases() {
        check(&case).await;
    }
}

/// On one host the lock tells: one holder per id and database, free again once the holder
/// is gone; another database, or another id, has a lock of its own.
#[test]
fn one_process_per_id_and_database_holds_the_host_lock() {
    let dir = scratch();
    let lock = |id: &str, database: &str| {
        identity::lock_on_this_host(id, &identity::host_lock_path(&dir, id, database))
    };
    let first = lock(ID, "postgres://db/vigil")
        .unwrap()
        .expect("locks work here");
    match lock(ID, "postgres://db/vigil") {
        Err(Held::Here { id, lock }) => {
            assert_eq!((id.as_str(), &lock), (ID, &first.path));
        }
        other => panic!("a second holder must be refused: {other:?}"),
    }
    let other_database = lock(ID, "postgres://db/other").unwrap();
    let other_id = lock("vigil-other", "postgres://db/vigil").unwrap();
    assert!(other_database.is_some() && other_id.is_some());
    drop(first);
    assert!(lock(ID, "postgres://db/vigil").unwrap().is_some());
    let _ = std::fs::remove_dir_all(&dir);
}
