//! `vigil-bench recovery` measures crash recovery against real databases. For each backend
//! (SQLite always, as `bench-N.db` in a fresh temporary directory or `--sqlite-dir`;
//! PostgreSQL when `--postgres-url` or `VIGIL_TEST_DATABASE_URL` names an admin URL, in a
//! fresh database `vigil_bench_<pid>_<N>` created and dropped per size) and each size N, it
//! migrates, seeds N open positions over 50 instruments (one base each, the rest pyramids on
//! it, plus a portfolio row whose totals are the exact sums and one pyramiding row per
//! instrument) and prints how long seeding took. Then, best of `--runs`, it times:
//! 1. recovery: [`Store::load_recovery_rows`] plus [`recovery::recover`] (fetch, decode,
//!    rebuild, validate), failing if the receipt is not clean;
//! 2. the raw read limit: [`Store::raw_open_position_scan`], the same `SELECT` into rows
//!    with no decoding;
//!
//! and prints one line per backend and size with both times and their ratio, next to the
//! targets (recovery under 0.5 s, and under 3x the raw read).

use anyhow::{bail, Context};
use chrono::{DateTime, TimeDelta, Utc};
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vigil::domain::{Portfolio, Position, PositionStatus, Pyramiding};
use vigil::policy::Policy;
use vigil::recovery;
use vigil::store::{redact, Access, AnyStore, StateWrite, Store};
use vigil_testkit::postgres::ScratchDatabase;

/// Sizes and databases of the `recovery` benchmark.
#[derive(Debug, clap::Args)]
pub struct RecoveryArgs {
    /// Numbers of open positions to seed, one fresh database each.
    #[arg(long, value_delimiter = ',', default_values_t = [10, 10_000, 100_000])]
    sizes: Vec<usize>,
    /// Directory for the SQLite files `bench-N.db`; a fresh temporary directory, removed
    /// afterwards, when not given.
    #[arg(long, value_name = "DIR")]
    sqlite_dir: Option<PathBuf>,
    /// PostgreSQL admin URL: a fresh database is created from it, and dropped, per size.
    /// Without it (or the environment variable) PostgreSQL is skipped.
    #[arg(
        long,
        value_name = "ADMIN_URL",
        env = "VIGIL_TEST_DATABASE_URL",
        hide_env_values = true
    )]
    postgres_url: Option<String>,
    /// Measurements of each figure; the best is printed.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
}

/// Instruments the seeded positions are spread over (fewer when there are fewer positions).
const INSTRUMENTS: usize = 50;

/// The `recovery` benchmark: every size on SQLite, then on PostgreSQL when configured.
pub async fn recovery_bench(args: &RecoveryArgs) -> anyhow::Result<()> {
    let tolerance = Policy::builtin_default().recovery.tolerance;

    let (dir, temporary) = match &args.sqlite_dir {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!("vigil-bench-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the SQLite directory {}", dir.display()))?;
    let outcome = sqlite_sizes(args, &dir, tolerance).await;
    if temporary {
        if let Err(error) = std::fs::remove_dir_all(&dir) {
            eprintln!("warning: cannot remove {}: {error}", dir.display());
        }
    }
    outcome?;

    match &args.postgres_url {
        Some(admin) => {
            for &size in &args.sizes {
                postgres_size(admin, size, args.runs, tolerance).await?;
            }
        }
        None => println!(
            "postgres skipped: give --postgres-url ADMIN_URL or set VIGIL_TEST_DATABASE_URL"
        ),
    }
    Ok(())
}

/// Every size on SQLite, one file `bench-N.db` in `dir` each, removed afterwards.
async fn sqlite_sizes(args: &RecoveryArgs, dir: &Path, tolerance: Decimal) -> anyhow::Result<()> {
    for &size in &args.sizes {
        let file = dir.join(format!("bench-{size}.db"));
        if file.exists() {
            bail!(
                "{} already exists; remove it or choose another --sqlite-dir",
                file.display()
            );
        }
        let url = format!("sqlite://{}", file.display());
        let outcome = bench_database("sqlite", &url, size, args.runs, tolerance).await;
        for suffix in ["", "-wal", "-shm"] {
            let mut path = OsString::from(file.as_os_str());
            path.push(suffix);
            match std::fs::remove_file(&path) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => {
                    eprintln!(
                        "warning: cannot remove {}: {error}",
                        Path::new(&path).display()
                    );
                }
                _ => {}
            }
        }
        outcome?;
    }
    Ok(())
}

/// One size on PostgreSQL, in a fresh database created from `admin` and dropped afterwards.
async fn postgres_size(
    admin: &str,
    size: usize,
    runs: u32,
    tolerance: Decimal,
) -> anyhow::Result<()> {
    let name = format!("vigil_bench_{}_{size}", std::process::id());
    let database = ScratchDatabase::create_named(admin, &name).await?;
    let outcome = bench_database("postgres", &database.url, size, runs, tolerance).await;
    let dropped = database.drop_now().await;
    outcome?;
    dropped?;
    Ok(())
}

/// Connects to `url`, seeds `size` open positions and measures; closes the store either way.
async fn bench_database(
    backend: &str,
    url: &str,
    size: usize,
    runs: u32,
    tolerance: Decimal,
) -> anyhow::Result<()> {
    let store = AnyStore::connect(url, Access::ReadWrite)
        .await
        .with_context(|| format!("cannot connect to {}", redact(url)))?;
    let outcome = seed_and_measure(&store, backend, size, runs, tolerance).await;
    store.close().await;
    outcome.with_context(|| format!("{backend} with {size} open positions"))
}

/// Migrates, seeds `size` open positions, and prints how long seeding took, then the best of
/// `runs` recovery and raw-scan times and their ratio.
async fn seed_and_measure(
    store: &AnyStore,
    backend: &str,
    size: usize,
    runs: u32,
    tolerance: Decimal,
) -> anyhow::Result<()> {
    let label = format!("N={size}");
    store.migrate().await.context("migrations failed")?;
    let state = seeded_state(size)?;
    let instruments = state.pyramiding.len();
    let started = Instant::now();
    store
        .write_state(&state)
        .await
        .context("seeding the open positions failed")?;
    let seeding = started.elapsed();
    drop(state);
    println!(
        "{backend:<8} {label:<9} seeded {size} open positions on {instruments} instruments in {:.3}s (not measured)",
        seeding.as_secs_f64()
    );

    let mut best_recovery = Duration::MAX;
    let mut best_raw = Duration::MAX;
    for _ in 0..runs {
        // Recovery: fetch, decode, rebuild, validate, and free the rows and the state, as the
        // raw scan frees its rows.
        let started = Instant::now();
        let rows = store
            .load_recovery_rows()
            .await
            .context("reading the recovery rows failed")?;
        let (state, receipt) = recovery::recover(
            rows,
            &recovery::Terms {
                tolerance,
                instruments: &BTreeMap::new(),
                initial_capital: None,
            },
        );
        let restored = state.map(|state| state.positions.len());
        let elapsed = started.elapsed();
        if receipt.failure().is_some() {
            bail!("recovery of the seeded state is not clean:\n{receipt}");
        }
        if restored != Some(size) || receipt.counts.open_positions != size {
            bail!(
                "recovery restored {restored:?} positions ({} counted), not the {size} seeded",
                receipt.counts.open_positions
            );
        }
        best_recovery = best_recovery.min(elapsed);

        let started = Instant::now();
        let scanned = store
            .raw_open_position_scan()
            .await
            .context("the raw open-position scan failed")?;
        let elapsed = started.elapsed();
        if scanned != size {
            bail!("the raw scan read {scanned} positions, not the {size} seeded");
        }
        best_raw = best_raw.min(elapsed);
    }

    let recovered = best_recovery.as_secs_f64();
    let raw = best_raw.as_secs_f64();
    let ratio = if raw > 0.0 {
        format!("{:.2}x", recovered / raw)
    } else {
        String::from("inf")
    };
    println!(
        "{backend:<8} {label:<9} recovery {recovered:.3}s  raw select {raw:.3}s  ratio {ratio}  (target: < 0.5s and < 3x)"
    );
    Ok(())
}

/// `size` open positions over up to [`INSTRUMENTS`] instruments: the first position of each
/// instrument is its base and every later one a pyramid on that base. The portfolio's totals
/// are the exact sums and every instrument has a pyramiding row, so recovery is clean.
fn seeded_state(size: usize) -> anyhow::Result<StateWrite> {
    let instruments = size.min(INSTRUMENTS);
    let opened = DateTime::<Utc>::from_timestamp(1_795_680_000, 0)
        .context("the seeding start time is out of range")?;
    let mut positions = Vec::with_capacity(size);
    let mut last_price = vec![Decimal::ZERO; instruments];
    let mut total_risk = Decimal::ZERO;
    let mut margin_used = Decimal::ZERO;
    for index in 0..size {
        let slot = index % instruments;
        let instrument = format!("INST{slot:02}");
        let base_id = format!("{instrument}-base");
        let is_base_position = index < instruments;
        let id = if is_base_position {
            base_id.clone()
        } else {
            format!("{instrument}-pyramid-{:06}", index / instruments)
        };
        let lots = Decimal::from(1 + index % 4);
        // 22000.00, 22000.05, ... in steps of 0.05.
        let entry_price =
            Decimal::new(2_200_000, 2) + Decimal::from(index % 1000) * Decimal::new(5, 2);
        let stop_price = entry_price - Decimal::new(10_000, 2);
        // 1234.50 plus up to 9.96, so the sums carry cents.
        let risk_amount =
            Decimal::new(123_450, 2) + Decimal::from(index % 997) * Decimal::new(1, 2);
        let margin = Decimal::new(15_000_000, 2) * lots;
        let seconds = u32::try_from(index % 86_400).context("seconds in a day fit in u32")?;
        let entry_time = opened
            .checked_add_signed(TimeDelta::seconds(i64::from(seconds)))
            .context("a seeded entry time is out of range")?;
        total_risk += risk_amount;
        margin_used += margin;
        if let Some(last) = last_price.get_mut(slot) {
            *last = entry_price;
        }
        positions.push(Position {
            id,
            instrument,
            label: String::from("long"),
            status: PositionStatus::Open,
            lots,
            entry_price,
            stop_price,
            risk_amount,
            margin,
            is_base_position,
            base_position_id: (!is_base_position).then_some(base_id),
            entry_time,
            version: 1,
        });
    }
    let pyramiding = last_price
        .into_iter()
        .enumerate()
        .map(|(slot, last_pyramid_price)| Pyramiding {
            instrument: format!("INST{slot:02}"),
            last_pyramid_price,
            base_position_id: Some(format!("INST{slot:02}-base")),
        })
        .collect();
    Ok(StateWrite {
        positions,
        portfolio: Some(Portfolio {
            initial_capital: Decimal::new(1_000_000_000, 2),
            // Nothing has closed: closed equity is the initial capital, as recovery checks.
            closed_equity: Decimal::new(1_000_000_000, 2),
            total_risk,
            margin_used,
            version: 1,
        }),
        pyramiding,
    })
}
