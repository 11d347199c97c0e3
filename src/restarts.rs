//! The restart budget: vigil's own limit on restarts after an unclean end, whatever
//! supervisor restarts it. Every `vigil run` start is recorded with how the previous run of
//! its instance ended; a start after an unclean end (`halted`, or `killed`: it never recorded
//! `stopped` or `crashed`) is refused once the deployment's instances have made
//! `[restarts] max` of them within `window`. Clean stops and starts never count; a refused
//! start is not recorded, so a supervisor that keeps trying does not keep the budget spent.
//! `vigil restarts reset` stops counting the starts so far.

use crate::policy::RestartBudget;
use crate::store::operations::{CountedStarts, Operations, PreviousEnd};
use crate::store::StoreError;
use chrono::{DateTime, Utc};
use serde::Serialize;

/// The budget as it stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Starts after an unclean end within the window, across every instance.
    pub counted: i64,
    /// The policy's `[restarts] max`.
    pub max: u32,
    /// The policy's `[restarts] window`, in seconds.
    pub window_s: u64,
    /// The counted starts per instance id.
    pub by_instance: Vec<CountedStarts>,
}

impl Usage {
    /// Whether a start after an unclean end would be refused now.
    pub fn spent(&self) -> bool {
        self.counted >= i64::from(self.max)
    }
}

/// What became of a start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// The start goes on; it was recorded.
    Admitted {
        /// How the previous run of this instance ended.
        previous: PreviousEnd,
        /// The budget, this start included.
        usage: Usage,
    },
    /// The budget is spent and this start follows an unclean end: it does not go on.
    Refused {
        /// How the previous run of this instance ended.
        previous: PreviousEnd,
        /// The budget, without this start.
        usage: Usage,
    },
}

/// The budget at `now`.
pub async fn usage(
    store: &impl Operations,
    budget: &RestartBudget,
    now: DateTime<Utc>,
) -> Result<Usage, StoreError> {
    let by_instance = store.counted_starts(window_start(budget, now)).await?;
    Ok(usage_of(by_instance, budget))
}

/// When the budget's window began, at `now`.
fn window_start(budget: &RestartBudget, now: DateTime<Utc>) -> DateTime<Utc> {
    let window = chrono::Duration::from_std(budget.window).unwrap_or(chrono::Duration::MAX);
    now.checked_sub_signed(window)
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// The budget, given the counted starts within its window.
fn usage_of(by_instance: Vec<CountedStarts>, budget: &RestartBudget) -> Usage {
    Usage {
        counted: by_instance.iter().map(|counted| counted.starts).sum(),
        max: budget.max_restarts,
        window_s: budget.window.as_secs(),
        by_instance,
    }
}

/// Admits or refuses a start of `instance_id` at `now`, recording it when admitted; the
/// count and the record are one transaction under the start lock.
pub async fn admit(
    store: &impl Operations,
    instance_id: &str,
    hostname: &str,
    budget: &RestartBudget,
    now: DateTime<Utc>,
) -> Result<Admission, StoreError> {
    let since = window_start(budget, now);
    let decided = store
        .admit_start(instance_id, hostname, since, now, |previous, counted| {
            !(previous.is_unclean() && usage_of(counted.to_vec(), budget).spent())
        })
        .await?;
    let mut usage = usage_of(decided.counted, budget);
    let previous = decided.previous;
    if !decided.admitted {
        return Ok(Admission::Refused { previous, usage });
    }
    if previous.is_unclean() {
        usage.counted += 1;
        match usage
            .by_instance
            .iter_mut()
            .find(|counted| counted.instance_id == instance_id)
        {
            Some(counted) => counted.starts += 1,
            None => usage.by_instance.push(CountedStarts {
                instance_id: instance_id.to_string(),
                starts: 1,
            }),
        }
    }
    Ok(Admission::Admitted { previous, usage })
}

/// How the budget reads in a log line or `vigil status`.
pub fn describe(usage: &Usage) -> String {
    let per_instance: Vec<String> = usage
        .by_instance
        .iter()
        .map(|counted| format!("{} {}", counted.instance_id, counted.starts))
        .collect();
    let detail = match per_instance.is_empty() {
        true => String::new(),
        false => format!(" ({})", per_instance.join(", ")),
    };
    format!(
        "{} of {} restarts after an unclean end within {}{detail}",
        usage.counted,
        usage.max,
        humantime::format_duration(std::time::Duration::from_secs(usage.window_s))
    )
}

/// The exit code of a start the budget refuses (documented in the README and the runbook).
pub const EXIT_RESTARTS_SPENT: u8 = 7;

/// What a refused start says, with what to do.
pub fn refusal(previous: PreviousEnd, usage: &Usage) -> String {
    format!(
        "refusing to start: the previous run {} and the restart budget is spent: {}; \
         find out why the instances keep ending (RUNBOOK.md, exit code {EXIT_RESTARTS_SPENT}), \
         then run `vigil restarts reset`",
        previous.as_str(),
        describe(usage)
    )
}
