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
