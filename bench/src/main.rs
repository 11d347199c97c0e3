//! `vigil-bench`: throughput and latency figures for vigil's machinery. It prints numbers and
//! never asserts on them: timings depend on the machine, so they are for people to compare.
//!
//! Four benchmarks, one module each, whose docs say what they measure: [`machines`] (the
//! bare machines, the driver and the dry-run), [`recovery`] (crash recovery against the raw
//! read of the same rows), [`load`] (the live webhook end to end, with [`journaled`] intake
//! while PostgreSQL refuses connections) and [`ha`] (several instances on one database and
//! a private Redis). What `load` and `ha` share: the signals ([`workload`]), the fresh
//! databases ([`database`]), the started `vigil run` ([`service`]), the load generator
//! ([`generator`]) sending alerts over HTTP ([`webhook`]), the raw rates they are held
//! against ([`raw`]), and the figures ([`stats`]). Free ports, the private `redis-server`,
//! the launch of the binary and scratch PostgreSQL databases come from `vigil-testkit`,
//! which the integration tests share.
//!
//! Run it in release mode:
//!
//! ```text
//! cargo run --release --bin vigil-bench -- machines [--transitions N] [--events N]
//! cargo run --release --bin vigil-bench -- recovery [--sizes 10,10000,100000] \
//!     [--sqlite-dir DIR] [--postgres-url ADMIN_URL] [--runs 3]
//! cargo build --release && cargo run --release --bin vigil-bench -- load [--signals 1000] \
//!     [--instruments 50] [--concurrency 16] [--rate 50] [--postgres-url ADMIN_URL] \
//!     [--binary target/release/vigil]
//! cargo build --release && cargo run --release --bin vigil-bench -- ha [--instances 3] \
//!     [--lease 3s] [--heartbeat 500ms] [--rounds 3] [--signals 1000] [--instruments 50] \
//!     [--concurrency 16] [--postgres-url ADMIN_URL] [--redis-server redis-server] \
//!     [--binary target/release/vigil]
//! ```

// Rates are printed, not computed on money: dividing counts by seconds in `f64` is fine here.
#![allow(clippy::float_arithmetic)]

mod database;
mod generator;
mod ha;
mod ha_cluster;
mod journaled;
mod load;
mod machines;
mod raw;
mod recovery;
mod service;
mod stats;
mod webhook;
mod workload;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Throughput benchmarks for vigil.
#[derive(Debug, Parser)]
#[command(name = "vigil-bench", version)]
struct Cli {
    /// What to measure.
    #[command(subcommand)]
    command: Command,
}

/// The benchmarks.
#[derive(Debug, Subcommand)]
enum Command {
    /// Transitions per second through the bare machines and the driver, and events per
    /// second through a full dry-run.
    Machines(machines::MachinesArgs),
    /// Crash recovery (fetch, rebuild, validate) against the raw read of the same rows, on
    /// SQLite and PostgreSQL, for several numbers of open positions.
    Recovery(recovery::RecoveryArgs),
    /// Webhook latency and throughput through the real `vigil run` binary, against the raw
    /// rate of the same signal transactions in-process, on SQLite and PostgreSQL.
    Load(load::LoadArgs),
    /// Several `vigil run` instances on one PostgreSQL database and a private Redis: leader
    /// takeover after kill -9, Redis-loss detection, and throughput against one instance.
    Ha(ha::HaArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Machines(args) => machines::machines(&args),
        Command::Recovery(args) => tokio_runtime()?.block_on(recovery::recovery_bench(&args)),
        Command::Load(args) => tokio_runtime()?.block_on(load::load_bench(&args)),
        Command::Ha(args) => tokio_runtime()?.block_on(ha::ha_bench(&args)),
    }
}

fn tokio_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
}
