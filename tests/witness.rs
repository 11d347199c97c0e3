//! State snapshots with the real binary: a graceful stop leaves one, a database restored
//! from an old backup is refused by the newest one (the witness), a flipped byte in the
//! newest falls back to the one before, and `vigil restore` loads one into an empty
//! database only.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cluster::{clean, entry, Cluster};
use common::tradingview;
use std::path::{Path, PathBuf};

/// The snapshot files in `dir`, oldest first.
fn snapshots(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "snapshot"))
        .collect();
    found.sort();
    found
}

/// Copies the SQLite database `from` (stopped: no WAL to lose) to `to`.
fn copy_database(from: &Path, to: &Path) {
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", to.display()));
    }
    std::fs::copy(from, to).unwrap();
}

/// Starts `id`, delivers `entries` (instrument slots), and stops it gracefully.
async fn trade_and_stop(cluster: &Cluster, id: &str, entries: &[usize]) {
    let mut instance = cluster.start(id).await;
    for slot in entries {
        let url = format!("{}/webhook", instance.url);
        let delivery = tradingview::deliver(&tradingview::client(), &url, &entry(*slot)).await;
        assert_eq!(
            delivery.outcome(),
            Some("applied"),
            "{}",
            delivery.last_body
        );
    }
    instance.stop_gracefully().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_snapshot_refuses_a_database_that_lost_history() {
    let dir = std::env::temp_dir().join(format!("vigil-witness-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let database = dir.join("vigil.db");
    let url = format!("sqlite://{}", database.display());
    let mut cluster = Cluster::new("witness", &url).await;
    cluster.use_redis = false;
    let database = cluster.dir.join("vigil.db");
    let url = format!("sqlite://{}", database.display());
    cluster.database_url = url.clone();

    // One signal, a stop (its snapshot), a backup; two more signals, a stop.
    trade_and_stop(&cluster, "w-1", &[0]).await;
    assert_eq!(snapshots(&cluster.dir).len(), 1);
    let backup = cluster.dir.join("backup.db");
    copy_database(&database, &backup);
    trade_and_stop(&cluster, "w-1", &[1, 2]).await;
    let written = snapshots(&cluster.dir);
    assert_eq!(written.len(), 2, "{written:?}");

    // The old backup restored by mistake: the witness halts the start.
    copy_database(&backup, &database);
    let (code, said) = cluster
        .vigil(&[
            "recover",
            "--check",
            "--database-url",
            &url,
            "--instance",
            "w-1",
        ])
        .await;
    assert_eq!(code, 1, "{said}");
    assert!(
        said.contains("not behind the newest snapshot") && said.contains("behind"),
        "{said}"
    );
    let mut halted = cluster.spawn_until_exit("w-1").await;
    assert_eq!(halted.exit_code().await, Some(1), "{}", halted.log_text());
    let log = halted.log_text();
    assert!(
        log.contains("DATA_CORRUPT (not behind the newest snapshot)"),
        "{log}"
    );
    assert!(log.contains("the database lost history"), "{log}");

    // A flipped byte in the newest snapshot: it is passed over for the one before, which the
    // backup is not behind, and the instance serves.
    let newest = written.last().unwrap();
    let mut bytes = std::fs::read(newest).unwrap();
    bytes[40] ^= 0x01;
    std::fs::write(newest, bytes).unwrap();
    let mut serving = cluster.start("w-1").await;
    let log = serving.log_text();
    assert!(log.contains("snapshot passed over"), "{log}");
    assert!(log.contains("its checksum does not hold"), "{log}");
    serving.stop_gracefully().await;

    // `vigil snapshot` now, and `vigil restore` of it: only into an empty database.
    let (code, said) = cluster
        .vigil(&["snapshot", "--database-url", &url, "--instance", "w-1"])
        .await;
    assert_eq!(code, 0, "{said}");
    let file = said
        .split(": snapshot of")
        .next()
        .unwrap()
        .trim()
        .to_string();
    let (code, said) = cluster
        .vigil(&["restore", &file, "--database-url", &url])
        .await;
    assert_eq!(code, 4, "{said}");
    assert!(said.contains("is not empty"), "{said}");
    let fresh = format!("sqlite://{}", cluster.dir.join("restored.db").display());
    let (code, said) = cluster
        .vigil(&["restore", &file, "--database-url", &fresh])
        .await;
    assert_eq!(code, 0, "{said}");
    assert!(
        said.contains("restored into") && said.contains("clean"),
        "{said}"
    );
    assert!(
        said.contains("last applied alert ") && !said.contains("last applied alert none"),
        "the snapshot names the alert applied last: {said}"
    );
    let (code, said) = cluster
        .vigil(&[
            "recover",
            "--check",
            "--database-url",
            &fresh,
            "--instance",
            "w-2",
        ])
        .await;
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("1 open position"), "{said}");

    // A damaged file is refused as invalid, with nothing written.
    let damaged = cluster.dir.join("damaged.snapshot");
    std::fs::write(&damaged, format!("{{}}\nsha256 {}\n", "0".repeat(64))).unwrap();
    let empty = format!("sqlite://{}", cluster.dir.join("empty.db").display());
    let (code, said) = cluster
        .vigil(&[
            "restore",
            damaged.to_str().unwrap(),
            "--database-url",
            &empty,
        ])
        .await;
    assert_eq!(code, 3, "{said}");
    assert!(said.contains("its checksum does not hold"), "{said}");
    clean(&cluster.dir);
    let _ = std::fs::remove_dir_all(&dir);
}
