//! The operator's commands: the kill switch (`vigil pause`, `vigil resume`) and the restart
//! budget (`vigil restarts reset`). Each writes to the deployment's database, which every
//! instance reads: a pause is obeyed by every instance within one heartbeat.

use super::service::{runtime, settings, ServiceArgs, Settings};
use super::Outcome;
use crate::store::operations::{Operations, Pause};
use crate::store::{self, Access, AnyStore, Store};
use anyhow::Context;
use chrono::Utc;

/// Opens the deployment's database read-write, with its schema up to date (the switch and
/// the start record live in it), and runs `work` against it.
pub(super) fn with_store<T>(
    settings: &Settings,
    work: impl AsyncFnOnce(&AnyStore, &str) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let shown = store::redact(&settings.database_url);
    runtime()?.block_on(async {
        let store = AnyStore::connect(&settings.database_url, Access::ReadWrite)
            .await
            .with_context(|| format!("cannot open {shown}"))?;
        store
            .migrate()
            .await
            .with_context(|| format!("cannot migrate {shown}"))?;
        let done = work(&store, &shown).await;
        store.close().await;
        done
    })
}

/// Who changed the switch, as the switch records it: this command, on this host.
fn changed_by(settings: &Settings) -> String {
    format!("cli@{}", settings.hostname)
}

/// `vigil pause [--exits-only] [--reason TEXT]` and `vigil resume`.
pub fn set_pause(args: &ServiceArgs, pause: Pause, reason: &str) -> anyhow::Result<Outcome> {
    let Some(settings) = settings(args)? else {
        return Ok(Outcome::Invalid);
    };
    let by = changed_by(&settings);
    let heartbeat = humantime::format_duration(settings.policy.ha.heartbeat_interval);
    with_store(&settings, async |store, shown| {
        store
            .set_pause_switch(pause, reason, &by, Utc::now())
            .await
            .with_context(|| format!("cannot set the kill switch in {shown}"))?;
        let what = match pause {
            Pause::None => "trading resumed: every signal type is applied again".to_string(),
            Pause::All => "trading paused: no alert is applied; each is answered and recorded refused by the operator".to_string(),
            Pause::ExitsOnly => "trading paused except exits: only EXIT alerts are applied; the others are answered and recorded refused by the operator".to_string(),
        };
        super::write_stdout(
            format!("{shown}: {what}; every instance obeys within one heartbeat ({heartbeat})\n")
                .as_bytes(),
        )?;
        Ok(Outcome::Ok)
    })
}

/// `vigil restarts reset`: stops counting the starts so far against the restart budget.
pub fn reset_restarts(args: &ServiceArgs) -> anyhow::Result<Outcome> {
    let Some(settings) = settings(args)? else {
        return Ok(Outcome::Invalid);
    };
    with_store(&settings, async |store, shown| {
        let cleared = store
            .reset_starts()
            .await
            .with_context(|| format!("cannot reset the restart budget in {shown}"))?;
        super::write_stdout(
            format!("{shown}: restart budget reset; {cleared} counted restarts cleared\n")
                .as_bytes(),
        )?;
        Ok(Outcome::Ok)
    })
}

/// `vigil snapshot`: writes a snapshot of the stored state now (before every deployment).
pub fn snapshot(args: &ServiceArgs) -> anyhow::Result<Outcome> {
    let Some(settings) = settings(args)? else {
        return Ok(Outcome::Invalid);
    };
    let shown = store::redact(&settings.database_url);
    runtime()?.block_on(async {
        let store = AnyStore::connect(&settings.database_url, Access::ReadOnly)
            .await
            .with_context(|| format!("cannot open {shown}"))?;
        let taken = crate::snapshot::take(&store, &settings.snapshot_dir, &settings.instance).await;
        store.close().await;
        match taken {
            Ok((path, snapshot)) => {
                super::write_stdout(
                    format!(
                        "{}: snapshot of {shown}: portfolio version {}, {} positions\n",
                        path.display(),
                        snapshot.portfolio_version,
                        snapshot.positions.len()
                    )
                    .as_bytes(),
                )?;
                Ok(Outcome::Ok)
            }
            Err(problem) => {
                eprintln!("error: {problem}");
                Ok(Outcome::Failed)
            }
        }
    })
}

/// `vigil restore FILE`: loads a snapshot into an empty database, after recovery's checks
/// pass on it, and checks what was written.
pub fn restore(args: &ServiceArgs, file: &std::path::Path) -> anyhow::Result<Outcome> {
    let Some(settings) = settings(args)? else {
        return Ok(Outcome::Invalid);
    };
    let snapshot = match crate::snapshot::read(file) {
        Ok(snapshot) => snapshot,
        Err(error @ crate::snapshot::SnapshotError::Invalid { .. }) => {
            eprintln!("error: {error}");
            return Ok(Outcome::Invalid);
        }
        Err(error) => return Err(error.into()),
    };
    let terms = crate::recovery::Terms {
        tolerance: settings.policy.recovery.tolerance,
        instruments: &settings.instruments,
        initial_capital: settings.initial_capital,
    };
    let (_, receipt) = crate::recovery::recover(snapshot.rows(), &terms);
    if receipt.failure().is_some() {
        eprintln!(
            "{receipt}\nerror: {} does not pass recovery's checks; nothing was written",
            file.display()
        );
        return Ok(Outcome::Failed);
    }
    with_store(&settings, async |store, shown| {
        match store.restore_rows(&snapshot.rows(), Utc::now()).await {
            Ok(()) => {}
            Err(store::StoreError::Conflict(why)) => {
                eprintln!(
                    "error: {shown}: {why}: vigil restore writes only into an empty database; \
                     point --database-url at a new one"
                );
                return Ok(Outcome::Failed);
            }
            Err(error) => {
                return Err(error).with_context(|| format!("cannot restore into {shown}"))
            }
        }
        let rows = store
            .load_recovery_rows()
            .await
            .with_context(|| format!("cannot read back {shown}"))?;
        let (_, receipt) = crate::recovery::recover(rows, &terms);
        if receipt.failure().is_some() {
            eprintln!(
                "{receipt}\nerror: what was written to {shown} does not pass recovery's checks"
            );
            return Ok(Outcome::Failed);
        }
        super::write_stdout(
            format!(
                "{}: restored into {shown}, written {} by {}: portfolio version {}, last applied alert {}; {}\n\
                 The signal log starts empty: an alert older than the policy's [signals] max \
                 age is refused as expired, and a newer one sent again would be applied again.\n",
                file.display(),
                snapshot.written_at,
                snapshot.instance,
                snapshot.portfolio_version,
                snapshot
                    .last_applied_fingerprint
                    .as_deref()
                    .map_or("none", crate::intake::short),
                receipt.summary()
            )
            .as_bytes(),
        )?;
        Ok(Outcome::Ok)
    })
}
