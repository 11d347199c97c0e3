//! The monitoring files in deploy/ hold to the service: the Prometheus alerting rules pass
//! `promtool check rules` and their unit tests, which see every alert firing and quiet; the
//! Grafana dashboard's queries parse; a live `/metrics` page passes `promtool check metrics`;
//! and every metric the rules and the dashboard name is one that page exposes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;
use vigil_testkit::process::Process;

/// The alerting rules.
const RULES: &str = "deploy/prometheus/vigil-rules.yml";
/// Their unit tests.
const RULE_TESTS: &str = "deploy/prometheus/vigil-rules.test.yml";
/// The Grafana dashboard.
const DASHBOARD: &str = "deploy/grafana/vigil-dashboard.json";

/// Prometheus' command-line tool (Debian's `prometheus` package; `.ci/services` installs it).
const PROMTOOL: &str = "promtool";

/// What promtool is asked about the files in deploy/: (what it proves, its arguments).
const PROMTOOL_CASES: &[(&str, &[&str])] = &[
    ("the rules are valid", &["check", "rules", RULES]),
    (
        "the rules pass their unit tests",
        &["test", "rules", RULE_TESTS],
    ),
];

/// The metrics the rules or the dashboard use that the page of one healthy instance on
/// SQLite, after one applied alert, does not show: (name, why it may be absent).
const ABSENT: &[(&str, &str)] = &[
    (
        "vigil_redis_up",
        "exported only with a Redis configured, and a SQLite instance has none",
    ),
    (
        "vigil_consistency_alarms_total",
        "counted from the first consistency alarm on, and this instance's data is consistent",
    ),
];

/// What the dashboard's queries get for Grafana's variables, so that promtool can parse
/// them: (variable, a value it could take).
const DASHBOARD_VARIABLES: &[(&str, &str)] = &[("$__rate_interval", "5m"), ("$instance", ".*")];

/// The webhook passphrase the instance is given.
const PASSPHRASE: &str = "monitoring-passphrase";
/// The instance id.
const INSTANCE: &str = "vigil-monitoring";
/// How long the instance may take to become ready, and its page to show every metric in
/// use (the leader's arrive after its first background tasks).
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// The pause between polls of the instance.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long a graceful stop may take: the service's own bounds add up to under 15 s.
const STOP_GRACE: Duration = Duration::from_secs(20);

/// The text of `file`, relative to the package.
fn read(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("cannot read {file}: {error}"))
}

/// Whether promtool is installed. Without it `check` is skipped with a notice, or fails
/// under `VIGIL_REQUIRE_SERVICES=1`, as the tests that need PostgreSQL and Redis do.
fn promtool_installed(check: &str) -> bool {
    let found = Command::new(PROMTOOL)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if found {
        return true;
    }
    assert!(
        std::env::var("VIGIL_REQUIRE_SERVICES").as_deref() != Ok("1"),
        "VIGIL_REQUIRE_SERVICES=1 but {PROMTOOL} is not installed (.ci/services installs \
         Debian's prometheus package)"
    );
    // Written past the test harness's capture, so a plain `cargo test` shows it.
    let notice = format!("notice: {PROMTOOL} is not installed; skipping {check}\n");
    let _ = std::io::Write::write_all(&mut std::io::stderr(), notice.as_bytes());
    false
}

/// Runs promtool with `args` in the package's directory, feeding it `stdin`.
fn promtool(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(PROMTOOL)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed but does not start");
    let mut input = child.stdin.take().expect("promtool's stdin is piped");
    std::io::Write::write_all(&mut input, stdin.as_bytes()).expect("promtool reads its stdin");
    drop(input);
    child.wait_with_output().expect("promtool ends")
}

/// promtool's exit status and everything it printed, for a failure message.
fn told(output: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn promtool_accepts_the_rules_and_their_unit_tests() {
    if !promtool_installed("the checks of the alerting rules") {
        return;
    }
    for (proves, args) in PROMTOOL_CASES {
        let output = promtool(args, "");
        assert!(
            output.status.success(),
            "{proves}: {PROMTOOL} {} failed: {}",
            args.join(" "),
            told(&output)
        );
    }
}

/// The alert names of the rules file (`- alert: NAME`).
fn alerts(rules: &str) -> BTreeSet<String> {
    rules
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert:"))
        .map(|name| name.trim().to_string())
        .collect()
}

/// For each alert the unit tests evaluate, how many cases expect it firing and how many
/// expect it quiet (`exp_alerts: []`): each `alertname:` line counts once, by the
/// `exp_alerts:` line that follows it.
fn cases(tests: &str) -> BTreeMap<String, (usize, usize)> {
    let mut cases = BTreeMap::<String, (usize, usize)>::new();
    let mut alert = None;
    for line in tests.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("alertname:") {
            alert = Some(name.trim().to_string());
        } else if let Some(expected) = line.strip_prefix("exp_alerts:") {
            let name = alert
                .take()
                .expect("every exp_alerts follows its alertname");
            let (firing, quiet) = cases.entry(name).or_default();
            if expected.trim() == "[]" {
                *quiet += 1;
            } else {
                *firing += 1;
            }
        }
    }
    cases
}

#[test]
fn the_unit_tests_see_every_alert_firing_and_quiet() {
    let alerts = alerts(&read(RULES));
    let cases = cases(&read(RULE_TESTS));
    assert!(!alerts.is_empty(), "{RULES} holds no alert");
    for alert in &alerts {
        let (firing, quiet) = cases.get(alert).copied().unwrap_or_default();
        assert!(
            firing > 0 && quiet > 0,
            "{RULE_TESTS} must expect {alert} firing at least once and quiet at least once; \
             it does {firing} and {quiet} times"
        );
    }
    // promtool passes a quiet case of an alert that does not exist: a misspelt name would
    // test nothing.
    for tested in cases.keys() {
        assert!(
            alerts.contains(tested),
            "{RULE_TESTS} tests {tested}, which {RULES} does not define"
        );
    }
}

/// Every string in `value` with where it is (`panels[3].targets[0].expr`), and whether it is
/// a query (an `expr`).
fn strings(value: &serde_json::Value, at: &str, found: &mut Vec<(String, bool, String)>) {
    match value {
        serde_json::Value::String(text) => {
            found.push((at.to_string(), at.ends_with(".expr"), text.clone()));
        }
        serde_json::Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                strings(item, &format!("{at}[{index}]"), found);
            }
        }
        serde_json::Value::Object(fields) => {
            for (key, field) in fields {
                strings(field, &format!("{at}.{key}"), found);
            }
        }
        _ => {}
    }
}

/// The dashboard.
fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON")
}

/// The strings of `dashboard`: (where, whether it is a query, the text).
fn dashboard_strings(dashboard: &serde_json::Value) -> Vec<(String, bool, String)> {
    let mut found = Vec::new();
    strings(dashboard, "dashboard", &mut found);
    found
}

/// The vigil metric names in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let name = regex::Regex::new(r"\bvigil_[a-z0-9_]+\b").expect("the pattern is valid");
    name.find_iter(text)
        .map(|found| found.as_str().to_string())
        .collect()
}

/// Every vigil metric the rules and the dashboard name (in queries, descriptions and
/// variables alike), each with the first place that names it.
fn names_in_use() -> BTreeMap<String, String> {
    let mut used = BTreeMap::new();
    for name in metric_names(&read(RULES)) {
        used.entry(name).or_insert_with(|| RULES.to_string());
    }
    for (at, _, text) in dashboard_strings(&dashboard()) {
        for name in metric_names(&text) {
            used.entry(name)
                .or_insert_with(|| format!("{DASHBOARD} {at}"));
        }
    }
    used
}

#[test]
fn every_dashboard_panel_queries_and_its_queries_parse() {
    let dashboard = dashboard();
    let strings = dashboard_strings(&dashboard);
    let queries: Vec<(&String, &String)> = strings
        .iter()
        .filter(|(_, query, _)| *query)
        .map(|(at, _, text)| (at, text))
        .collect();
    let panels = dashboard["panels"]
        .as_array()
        .expect("the dashboard has panels");
    for panel in panels.iter().filter(|panel| panel["type"] != "row") {
        let targets = panel["targets"].as_array().map_or(0, Vec::len);
        assert!(targets > 0, "the panel {} has no query", panel["title"]);
    }
    if !promtool_installed("the parse of the dashboard's queries") {
        return;
    }
    // promtool parses PromQL in a rules file: each query becomes a recording rule.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (index, (_, query)) in queries.iter().enumerate() {
        let mut query = query.to_string();
        for (variable, value) in DASHBOARD_VARIABLES {
            query = query.replace(variable, value);
        }
        let quoted = serde_json::to_string(&query).expect("a string serialises");
        rules.push_str(&format!(
            "      - record: dashboard:query_{index}\n        expr: {quoted}\n"
        ));
    }
    let file = std::env::temp_dir().join(format!(
        "vigil-monitoring-{}-dashboard-rules.yml",
        std::process::id()
    ));
    std::fs::write(&file, &rules).expect("the temporary directory is writable");
    let path = file.to_string_lossy().to_string();
    let output = promtool(&["check", "rules", &path], "");
    let _ = std::fs::remove_file(&file);
    assert!(
        output.status.success(),
        "a dashboard query does not parse: {}\nqueries, in order: {queries:#?}",
        told(&output)
    );
}

/// One `vigil run` on SQLite in a fresh directory, on free ports; killed when dropped.
struct Instance {
    /// The process.
    process: Process,
    /// The base URL of its webhook listener.
    url: String,
    /// The base URL of its operator listener.
    operator_url: String,
    /// Its directory, with the database, the journal and the log.
    dir: PathBuf,
}

impl Instance {
    /// Starts it and waits until `/ready` answers 200.
    async fn start() -> Instance {
        let dir = std::env::temp_dir().join(format!("vigil-monitoring-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("the temporary directory is writable");
        let webhook = vigil_testkit::free_port().expect("a free port for webhooks");
        let operator = vigil_testkit::free_port().expect("a free port for the operator");
        let run = common::vigil_run(&dir)
            .listen(
                &format!("127.0.0.1:{webhook}"),
                &format!("127.0.0.1:{operator}"),
            )
            .instance(INSTANCE)
            .passphrase(PASSPHRASE);
        let log = dir.join("vigil.log");
        let process =
            Process::spawn(run.command(), INSTANCE, Some(&log)).expect("vigil run starts");
        let mut instance = Instance {
            process,
            url: format!("http://127.0.0.1:{webhook}"),
            operator_url: format!("http://127.0.0.1:{operator}"),
            dir,
        };
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if instance
                .get("/ready")
                .await
                .is_some_and(|(status, _)| status == 200)
            {
                return instance;
            }
            if let Ok(Some(exit)) = instance.process.try_exit() {
                panic!(
                    "vigil run exited ({exit}) before it was ready:\n{}",
                    instance.process.log_tail()
                );
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "vigil run was not ready within {START_TIMEOUT:?}:\n{}",
                instance.process.log_tail()
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// GETs `path` on the operator listener: its status and body, or `None` when it does not
    /// answer.
    async fn get(&self, path: &str) -> Option<(u16, String)> {
        let response = reqwest::get(format!("{}{path}", self.operator_url))
            .await
            .ok()?;
        let status = response.status().as_u16();
        Some((status, response.text().await.ok()?))
    }

    /// Posts a webhook body: the status and the JSON answer.
    async fn post(&self, body: String) -> (u16, serde_json::Value) {
        let response = reqwest::Client::new()
            .post(format!("{}/webhook", self.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("the webhook listener answers");
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .expect("the webhook answer has a body");
        let json = serde_json::from_slice(&bytes).expect("the webhook answers JSON");
        (status, json)
    }
}

/// The metric names on a Prometheus text page: each family a `# TYPE` line names (a
/// histogram's own name) and each name with samples (its `_bucket`, `_sum` and `_count`).
fn exposed(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter_map(|line| match line.strip_prefix("# TYPE ") {
            Some(family) => family.split(' ').next(),
            None if line.starts_with('#') => None,
            None => line.split(['{', ' ']).next(),
        })
        .filter(|name| !name.is_empty())
        .map(str::to_string)
        .collect()
}

/// The names in use that `page` does not expose and [`ABSENT`] does not excuse, each with
/// where it is used.
fn missing(page: &str, used: &BTreeMap<String, String>) -> Vec<String> {
    let exposed = exposed(page);
    used.iter()
        .filter(|(name, _)| !exposed.contains(*name))
        .filter(|(name, _)| !ABSENT.iter().any(|(absent, _)| absent == name))
        .map(|(name, at)| format!("{name} (used in {at}) is not on the page"))
        .collect()
}

#[tokio::test]
async fn a_live_metrics_page_passes_promtool_and_exposes_every_metric_in_use() {
    let used = names_in_use();
    for (name, why) in ABSENT {
        assert!(
            used.contains_key(*name),
            "{name} is excused as absent ({why}) but neither the rules nor the dashboard use it"
        );
    }
    let mut instance = Instance::start().await;
    let signal = format!(
        r#"{{"passphrase":"{PASSPHRASE}","signal":"BASE_ENTRY","instrument":"NIFTY","position":"long","price":"22000","stop":"21900","lots":"1","timestamp":"{}"}}"#,
        common::at("09:15")
    );
    let (status, answer) = instance.post(signal).await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("applied")),
        "{answer}"
    );
    // The leader's metrics appear once it has run its first background tasks: poll until
    // the page shows everything in use, or the time is up and the check below says what
    // is missing.
    let deadline = tokio::time::Instant::now() + START_TIMEOUT;
    let page = loop {
        let (status, page) = instance
            .get("/metrics")
            .await
            .expect("the operator listener answers /metrics");
        assert_eq!(status, 200, "/metrics: {page}");
        if missing(&page, &used).is_empty() || tokio::time::Instant::now() >= deadline {
            break page;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    };
    let stopped = instance.process.stop(STOP_GRACE);
    let log = instance.process.log_tail();
    let _ = std::fs::remove_dir_all(&instance.dir);

    let mut problems = missing(&page, &used);
    if promtool_installed("the lint of a live /metrics page") {
        let output = promtool(&["check", "metrics"], &page);
        if !output.status.success() {
            problems.push(format!("{PROMTOOL} check metrics: {}", told(&output)));
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n\nthe page:\n{page}\nthe instance's log tail:\n{log}",
        problems.join("\n")
    );
    let stopped = stopped.expect("vigil run stops on SIGTERM");
    assert!(
        stopped.success(),
        "vigil run stopped with {stopped}:\n{log}"
    );
}
