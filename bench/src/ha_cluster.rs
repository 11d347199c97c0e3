//! The instances of the `ha` benchmark's takeover and Redis-loss measurements, `ha-1`,
//! `ha-2`, ..., on one database and one Redis, and their polls: every instance's `/status`
//! or `/ready` at once, each answer stamped with when it was known.

use crate::ha::{fencing_token, leads, HA, HA_POLL_INTERVAL_MS};
use crate::service::Service;
use anyhow::{bail, Context};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use vigil_testkit::free_port;
use vigil_testkit::launch::Run;

/// How long one `/status` or `/ready` poll may take before it counts as no answer.
const HA_PROBE_TIMEOUT_MS: u64 = 1000;

/// One poll's answer from one instance.
#[derive(Debug)]
pub struct Probe {
    /// The instance's index in its cluster.
    pub index: usize,
    /// The JSON page, or `None` when it did not answer with JSON in time.
    pub page: Option<serde_json::Value>,
    /// When the answer (or its absence) was known.
    pub at: Instant,
}

/// The instances of the takeover and Redis-loss measurements, `ha-1`, `ha-2`, ..., on one
/// database and one Redis; dropping it stops them all.
#[derive(Debug)]
pub struct HaCluster {
    /// How each is started.
    launch: Run,
    /// The database they share.
    database_url: String,
    /// The instances, in id order.
    services: Vec<Service>,
    /// For the polls, with [`HA_PROBE_TIMEOUT_MS`].
    client: reqwest::Client,
}

impl HaCluster {
    /// Starts `count` instances and waits until each is ready.
    pub async fn start(
        launch: &Run,
        database_url: &str,
        count: usize,
    ) -> anyhow::Result<HaCluster> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_millis(HA_PROBE_TIMEOUT_MS))
            .build()
            .context("cannot build the HTTP client")?;
        let mut cluster = HaCluster {
            launch: launch.clone(),
            database_url: database_url.to_string(),
            services: Vec::with_capacity(count),
            client,
        };
        for n in 1..=count {
            let service = cluster.spawn(&format!("{HA}-{n}"))?;
            cluster.services.push(service);
        }
        for service in &mut cluster.services {
            service.wait_ready().await?;
        }
        Ok(cluster)
    }

    /// Starts `instance` on a free port, appending to its log.
    fn spawn(&self, instance: &str) -> anyhow::Result<Service> {
        let address = format!("127.0.0.1:{}", free_port()?);
        let log = self.launch.dir().join(format!("{instance}.log"));
        Service::start(&self.launch, &self.database_url, instance, &address, &log)
    }

    /// Every instance's index.
    pub fn everyone(&self) -> Vec<usize> {
        (0..self.services.len()).collect()
    }

    /// The id of the instance at `index`.
    pub fn id(&self, index: usize) -> &str {
        self.services.get(index).map_or("?", Service::instance)
    }

    /// kill -9 to the instance at `index`.
    pub fn kill(&mut self, index: usize) -> anyhow::Result<()> {
        self.services
            .get_mut(index)
            .with_context(|| format!("there is no instance {index}"))?
            .kill()
    }

    /// Starts the (killed) instance at `index` again under its id and waits until it is ready.
    pub async fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        let instance = self.id(index).to_string();
        let mut service = self.spawn(&instance)?;
        service.wait_ready().await?;
        let slot = self
            .services
            .get_mut(index)
            .with_context(|| format!("there is no instance {index}"))?;
        // The old process is reaped already; dropping it finds it gone.
        *slot = service;
        Ok(())
    }

    /// `GET path` on the instances `indices`, all at once; answers in index order.
    pub async fn probe(&self, indices: &[usize], path: &str) -> Vec<Probe> {
        let mut polls = tokio::task::JoinSet::new();
        for &index in indices {
            let Some(service) = self.services.get(index) else {
                continue;
            };
            let client = self.client.clone();
            let url = format!("{}{path}", service.operator);
            polls.spawn(async move {
                let page = match client.get(&url).send().await {
                    Ok(response) => response
                        .bytes()
                        .await
                        .ok()
                        .and_then(|bytes| serde_json::from_slice(&bytes).ok()),
                    Err(_) => None,
                };
                Probe {
                    index,
                    page,
                    at: Instant::now(),
                }
            });
        }
        let mut probes = Vec::with_capacity(indices.len());
        while let Some(joined) = polls.join_next().await {
            // A poll that panicked is a poll without an answer.
            if let Ok(probe) = joined {
                probes.push(probe);
            }
        }
        probes.sort_by_key(|probe| probe.index);
        probes
    }

    /// The instance that leads and its fencing token, once exactly one reports
    /// `leader: true` on `/status`; fails after `timeout`.
    pub async fn single_leader(&self, timeout: Duration) -> anyhow::Result<(usize, i64)> {
        let everyone = self.everyone();
        let deadline = Instant::now() + timeout;
        loop {
            let leaders: Vec<(usize, Option<i64>)> = self
                .probe(&everyone, "/status")
                .await
                .into_iter()
                .filter_map(|probe| {
                    let page = probe.page?;
                    leads(&page).then(|| (probe.index, fencing_token(&page)))
                })
                .collect();
            if let [(index, Some(token))] = leaders[..] {
                return Ok((index, token));
            }
            if Instant::now() >= deadline {
                let names: Vec<&str> = leaders.iter().map(|&(index, _)| self.id(index)).collect();
                bail!(
                    "no single leader with a fencing token within {:.3}s (leading: [{}])",
                    timeout.as_secs_f64(),
                    names.join(", ")
                );
            }
            tokio::time::sleep(Duration::from_millis(HA_POLL_INTERVAL_MS)).await;
        }
    }

    /// Polls `/ready` on the instances `indices` every [`HA_POLL_INTERVAL_MS`] until
    /// `condition` has held on each; returns, in index order, when it first held (counted from
    /// `since`) and the page it held on. Fails `timeout` after `since`, naming `what`.
    pub async fn first_times(
        &self,
        indices: &[usize],
        since: Instant,
        timeout: Duration,
        what: &str,
        condition: impl Fn(&serde_json::Value) -> bool,
    ) -> anyhow::Result<Vec<(usize, Duration, serde_json::Value)>> {
        let deadline = since + timeout;
        let mut seen: BTreeMap<usize, (Duration, serde_json::Value)> = BTreeMap::new();
        loop {
            let pending: Vec<usize> = indices
                .iter()
                .copied()
                .filter(|index| !seen.contains_key(index))
                .collect();
            if pending.is_empty() {
                break;
            }
            for probe in self.probe(&pending, "/ready").await {
                if let Some(page) = probe.page.filter(|page| condition(page)) {
                    seen.insert(
                        probe.index,
                        (probe.at.saturating_duration_since(since), page),
                    );
                }
            }
            if seen.len() < indices.len() {
                if Instant::now() >= deadline {
                    let names: Vec<&str> = pending
                        .iter()
                        .filter(|index| !seen.contains_key(index))
                        .map(|&index| self.id(index))
                        .collect();
                    bail!(
                        "{} did not report {what} within {:.3}s",
                        names.join(", "),
                        timeout.as_secs_f64()
                    );
                }
                tokio::time::sleep(Duration::from_millis(HA_POLL_INTERVAL_MS)).await;
            }
        }
        Ok(seen
            .into_iter()
            .map(|(index, (took, page))| (index, took, page))
            .collect())
    }

    /// Stops every instance with SIGTERM; what went wrong, if anything did.
    pub fn stop(&mut self) -> Vec<String> {
        self.services
            .iter_mut()
            .filter_map(Service::stop_problem)
            .map(|problem| format!("{HA}: {problem}"))
            .collect()
    }
}
