//! What the `load` and `ha` benchmarks send: N signals over M instruments `INST00`,
//! `INST01`, ... (one `BASE_ENTRY` per instrument, then `PYRAMID`s at rising prices, each
//! with its own timestamp), their webhook bodies, and the deployment file listing the
//! instruments; the flags that size them; and the work directory the runs keep their files
//! in, removed afterwards unless something failed.

use crate::service::vigil_binary;
use anyhow::{bail, Context};
use chrono::{DateTime, TimeDelta, Utc};
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use vigil::domain::Instrument;
use vigil::trading::Signal;
use vigil::vocabulary::SignalType;

/// The signals sent, the database they go to and the binary that serves them: the part
/// `load` and `ha` share.
#[derive(Debug, clap::Args)]
pub struct Workload {
    /// Signals per run: one BASE_ENTRY per instrument first, then PYRAMIDs.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub signals: u32,
    /// Instruments the signals are spread over, INST00, INST01, ...
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub instruments: u32,
    /// Requests (or transactions) in flight at once, over all instances.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,
    /// PostgreSQL admin URL: a fresh database is created from it, and dropped, per run.
    /// Without it (or the environment variable) PostgreSQL is skipped.
    #[arg(
        long,
        value_name = "ADMIN_URL",
        env = "VIGIL_TEST_DATABASE_URL",
        hide_env_values = true
    )]
    pub postgres_url: Option<String>,
    /// The `vigil` binary to start [default: `vigil` next to this executable].
    #[arg(long, value_name = "FILE")]
    pub binary: Option<PathBuf>,
}

impl Workload {
    /// The binary to start, the signals to send, and a work directory named `prefix-PID`
    /// that must not exist yet (it is not created).
    pub fn prepare(&self, prefix: &str) -> anyhow::Result<(PathBuf, Load, PathBuf)> {
        let binary = vigil_binary(self.binary.as_deref())?;
        let load = Load::new(self.signals, self.instruments, self.concurrency)?;
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        if dir.exists() {
            bail!("{} already exists; remove it first", dir.display());
        }
        Ok((binary, load, dir))
    }
}

/// The passphrase every load signal carries.
pub const LOAD_PASSPHRASE: &str = "vigil-load-benchmark";

/// The instance id of the started services and of the in-process claims.
pub const LOAD_INSTANCE: &str = "vigil-load";

/// Price of every base entry; the k-th pyramid on an instrument is this plus k.
const BASE_PRICE: u32 = 1000;

/// How far below the price every stop is.
const STOP_DISTANCE: u32 = 10;

/// How far apart the load signals' timestamps are, so that no two share a fingerprint. The
/// first is the moment the run starts, so none is older than the policy's `[signals]` ages.
const LOAD_SPACING_MS: i64 = 1;

/// The `load` benchmark's inputs, shared by every run.
#[derive(Debug)]
pub struct Load {
    /// The signals, bases first.
    pub signals: Arc<Vec<Signal>>,
    /// The webhook body of each signal.
    pub bodies: Arc<Vec<Vec<u8>>>,
    /// How many of the signals are base entries (they come first).
    pub bases: usize,
    /// The instruments' contract terms, as the deployment file lists them.
    pub instruments: BTreeMap<String, Instrument>,
    /// Requests or transactions in flight at once.
    pub concurrency: usize,
    /// What [`Load::new`] was given, so that [`Load::restamped`] can build it again.
    sizes: (u32, u32, u32),
}

impl Load {
    /// `count` signals over `instruments` instruments (see [`load_signals`]), their webhook
    /// bodies, and the instruments' terms, sent `concurrency` at a time.
    pub fn new(count: u32, instruments: u32, concurrency: u32) -> anyhow::Result<Load> {
        let signals = load_signals(count, instruments, Utc::now())?;
        let bodies = signals
            .iter()
            .map(webhook_body)
            .collect::<anyhow::Result<Vec<_>>>()?;
        let bases = signals
            .iter()
            .take_while(|signal| signal.kind == SignalType::BaseEntry)
            .count();
        let terms = Instrument {
            lot_size: Decimal::ONE,
            point_value: Decimal::ONE,
            margin_per_lot: Decimal::from(1000),
            fractional_lots: false,
        };
        let sizes = (count, instruments, concurrency);
        let instruments = (0..instruments)
            .map(|slot| (instrument_name(slot), terms.clone()))
            .collect();
        Ok(Load {
            signals: Arc::new(signals),
            bodies: Arc::new(bodies),
            bases,
            instruments,
            concurrency: usize::try_from(concurrency).context("--concurrency is too large")?,
            sizes,
        })
    }

    /// The same load with timestamps starting now: every run sends alerts that are fresh
    /// when it starts, however long the runs before it took.
    pub fn restamped(&self) -> anyhow::Result<Load> {
        let (count, instruments, concurrency) = self.sizes;
        Load::new(count, instruments, concurrency)
    }
}

/// Removes the work directory `dir` when `outcome` is fine and there are no problems, and
/// keeps it (saying so) otherwise; then fails with the outcome's error, or the problems.
pub fn finish(dir: &Path, outcome: anyhow::Result<()>, problems: &[String]) -> anyhow::Result<()> {
    if outcome.is_ok() && problems.is_empty() {
        if let Err(error) = std::fs::remove_dir_all(dir) {
            eprintln!("warning: cannot remove {}: {error}", dir.display());
        }
    } else {
        eprintln!("kept the databases and service logs in {}", dir.display());
    }
    outcome?;
    if !problems.is_empty() {
        bail!(
            "{} problem(s):\n  {}",
            problems.len(),
            problems.join("\n  ")
        );
    }
    Ok(())
}

/// `INST00`, `INST01`, ...
fn instrument_name(slot: u32) -> String {
    format!("INST{slot:02}")
}

/// `count` signals over `instruments` instruments: a base entry on each first (at
/// [`BASE_PRICE`]), then round after round of pyramids one point higher each round, the
/// first at `epoch` and every later one [`LOAD_SPACING_MS`] after the one before.
fn load_signals(count: u32, instruments: u32, epoch: DateTime<Utc>) -> anyhow::Result<Vec<Signal>> {
    (0..count)
        .map(|index| {
            let round = index / instruments;
            let price = Decimal::from(BASE_PRICE) + Decimal::from(round);
            let timestamp = epoch
                .checked_add_signed(TimeDelta::milliseconds(i64::from(index) * LOAD_SPACING_MS))
                .context("a load signal's timestamp is out of range")?;
            Ok(Signal {
                kind: if round == 0 {
                    SignalType::BaseEntry
                } else {
                    SignalType::Pyramid
                },
                instrument: instrument_name(index % instruments),
                position: Some(String::from("long")),
                price,
                stop: Some(price - Decimal::from(STOP_DISTANCE)),
                lots: Some(Decimal::ONE),
                timestamp,
                alert_id: None,
            })
        })
        .collect()
}

/// The alert TradingView would send for `signal`, numbers as strings.
fn webhook_body(signal: &Signal) -> anyhow::Result<Vec<u8>> {
    let number = |value: Option<Decimal>| value.map(|value| value.to_string());
    serde_json::to_vec(&serde_json::json!({
        "passphrase": LOAD_PASSPHRASE,
        "signal": signal.kind.as_str(),
        "instrument": signal.instrument,
        "position": signal.position,
        "price": signal.price.to_string(),
        "stop": number(signal.stop),
        "lots": number(signal.lots),
        "timestamp": signal.timestamp,
    }))
    .context("cannot encode a webhook body")
}

/// The deployment file listing the load instruments.
pub fn deployment_file(load: &Load) -> String {
    let mut text = format!("instance = \"{LOAD_INSTANCE}\"\n");
    for (name, terms) in &load.instruments {
        text.push_str(&format!(
            "\n[instruments.{name}]\nlot_size = \"{}\"\npoint_value = \"{}\"\nmargin_per_lot = \"{}\"\n",
            terms.lot_size, terms.point_value, terms.margin_per_lot
        ));
    }
    text
}
