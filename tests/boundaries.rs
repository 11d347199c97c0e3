//! The pure core stays pure: the machines, the driver, the policy, the planner and recovery
//! name no database, Redis, HTTP or async runtime, and never read the clock. The executor
//! (`src/executor/`) and the edges do that, carrying out what the core decides.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

/// Files and folders of the pure core, relative to `src/`.
const CORE: &[&str] = &[
    "machines",
    "policy",
    "trading",
    "recovery",
    "spec",
    "vocabulary.rs",
    "domain.rs",
    "driver/mod.rs",
    "driver/virtual_time.rs",
];

/// What the core must not name, and why.
const FORBIDDEN: &[(&str, &str)] = &[
    ("sqlx::", "the database"),
    ("redis::", "Redis"),
    ("axum::", "HTTP"),
    ("reqwest::", "HTTP"),
    ("tokio::", "the async runtime and its clock"),
    ("Utc::now", "the wall clock"),
    ("Instant::now", "the clock"),
    ("SystemTime", "the wall clock"),
];

fn rust_files(path: &Path, found: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            rust_files(&entry.unwrap().path(), found);
        }
    } else if path.extension().is_some_and(|ext| ext == "rs") {
        found.push(path.to_path_buf());
    }
}

#[test]
fn the_pure_core_does_no_io_and_reads_no_clock() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    for part in CORE {
        let path = src.join(part);
        assert!(path.exists(), "{} is gone; update CORE", path.display());
        rust_files(&path, &mut files);
    }
    let mut offences = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (number, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for (name, what) in FORBIDDEN {
                if code.contains(name) {
                    offences.push(format!(
                        "{}:{}: names {what} ({name}): {}",
                        file.strip_prefix(&src).unwrap().display(),
                        number + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        offences.is_empty(),
        "the pure core does I/O:\n{}",
        offences.join("\n")
    );
}

/// The store holds rows and their codec; recovery judges them. Recovery may read the store's
/// types, never the other way round, so a change to recovery's checks cannot reach the SQL.
#[test]
fn the_store_never_names_recovery() {
    let store = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store");
    let mut files = Vec::new();
    rust_files(&store, &mut files);
    assert!(!files.is_empty(), "{} holds no Rust files", store.display());
    let offences: Vec<String> = files
        .iter()
        .flat_map(|file| {
            let text = std::fs::read_to_string(file).unwrap();
            text.lines()
                .enumerate()
                .filter(|(_, line)| {
                    let code = line.split("//").next().unwrap_or_default();
                    code.contains("recovery::")
                })
                .map(|(number, line)| format!("{}:{}: {}", file.display(), number + 1, line.trim()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        offences.is_empty(),
        "the store names recovery:\n{}",
        offences.join("\n")
    );
}
