//! The real `vigil` binary as a trader meets it: signals over HTTP, a kill -9, a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const PASSPHRASE: &str = "e2e-passphrase";

/// Readiness polls before giving up on an instance that does not come up.
const READY_POLLS: usize = 200;
/// The pause between readiness polls.
const READY_POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long a test waits for an instance to exit, or for a line in its log.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("vigil-service-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn free_port() -> u16 {
    vigil_testkit::free_port().unwrap()
}

/// The two ports of one instance: webhooks, and the operator endpoints.
#[derive(Debug, Clone, Copy)]
struct Ports {
    webhook: u16,
    operator: u16,
}

impl Ports {
    fn free() -> Ports {
        Ports {
            webhook: free_port(),
            operator: free_port(),
        }
    }
}

/// A running instance; killed when dropped, so a failing test leaves nothing behind.
struct Instance {
    child: Child,
    /// The webhook listener.
    url: String,
    /// The operator listener.
    operator_url: String,
    /// The bearer token the operator listener asks for, if any.
    token: Option<String>,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Instance {
    async fn start(dir: &Path, ports: Ports) -> Instance {
        Instance::start_with(dir, ports, None).await
    }

    /// Starts an instance whose operator listener asks for `token`.
    async fn start_with(dir: &Path, ports: Ports, token: Option<&str>) -> Instance {
        Instance::spawn(dir, ports, token, &[]).await
    }

    /// Starts an instance that stops the thread reaching `failpoint` (src/failpoint.rs) for
    /// good.
    async fn start_at_failpoint(dir: &Path, ports: Ports, failpoint: &str) -> Instance {
        Instance::spawn(dir, ports, None, &[("VIGIL_FAILPOINT", failpoint)]).await
    }

    /// Starts the process with `env` set on top of the test's own settings, without waiting.
    fn launch(dir: &Path, ports: Ports, token: Option<&str>, env: &[(&str, &str)]) -> Instance {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("vigil.log"))
            .unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_vigil"));
        command
            .args([
                "run",
                "--listen",
                &format!("127.0.0.1:{}", ports.webhook),
                "--operator-listen",
                &format!("127.0.0.1:{}", ports.operator),
                "--instance",
                "vigil-e2e",
            ])
            .current_dir(dir)
            .env("VIGIL_OPERATOR_TOKEN", token.unwrap_or(""))
            .env("VIGIL_WEBHOOK_PASSPHRASE", PASSPHRASE)
            .env_remove("VIGIL_DATABASE_URL")
            .env_remove("VIGIL_CONFIG")
            .env_remove("VIGIL_POLICY")
            .env_remove("VIGIL_FAILPOINT")
            .env_remove("VIGIL_LOG_LEVEL")
            .env_remove("VIGIL_LOG_FORMAT")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log);
        let child = command.spawn().unwrap();
        Instance {
            child,
            url: format!("http://127.0.0.1:{}", ports.webhook),
            operator_url: format!("http://127.0.0.1:{}", ports.operator),
            token: token.map(str::to_string),
        }
    }

    /// Starts an instance with `env` set on top of the test's own settings, and waits until
    /// it is ready.
    async fn spawn(
        dir: &Path,
        ports: Ports,
        token: Option<&str>,
        env: &[(&str, &str)],
    ) -> Instance {
        let instance = Instance::launch(dir, ports, token, env);
        for _ in 0..READY_POLLS {
            if let Ok(response) = instance.operator("/ready", instance.token.as_deref()).await {
                if response.status() == 200 {
                    return instance;
                }
            }
            tokio::time::sleep(READY_POLL_INTERVAL).await;
        }
        panic!(
            "the instance never became ready:\n{}",
            std::fs::read_to_string(dir.join("vigil.log")).unwrap_or_default()
        );
    }

    /// Sends the signal `name` (`INT`, `TERM`) to the process, as `kill -NAME` does.
    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} {} failed", self.child.id());
    }

    /// Waits, at most [`EXIT_TIMEOUT`], for the process to end by itself; its exit code.
    async fn exit_code(&mut self, dir: &Path) -> Option<i32> {
        let deadline = tokio::time::Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the instance did not exit; its log:\n{}",
                log_of(dir)
            );
            tokio::time::sleep(READY_POLL_INTERVAL).await;
        }
    }

    async fn post(&self, body: String) -> (u16, serde_json::Value) {
        let response = reqwest::Client::new()
            .post(format!("{}/webhook", self.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (
            status,
            serde_json::from_slice(&response.bytes().await.unwrap()).unwrap(),
        )
    }

    /// GETs an operator page with the instance's token.
    async fn get(&self, path: &str) -> serde_json::Value {
        let response = self.operator(path, self.token.as_deref()).await.unwrap();
        serde_json::from_slice(&response.bytes().await.unwrap()).unwrap()
    }

    /// GETs `path` on the operator listener, sending `token` as the bearer token.
    async fn operator(
        &self,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::Result<reqwest::Response> {
        let mut request = reqwest::Client::new().get(format!("{}{path}", self.operator_url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await
    }
}

/// The log of the instance started in `dir`, so far.
fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("vigil.log")).unwrap_or_default()
}

/// Waits, at most [`EXIT_TIMEOUT`], for the log of the instance in `dir` to hold `needle`.
async fn wait_for_log(dir: &Path, needle: &str) {
    let deadline = tokio::time::Instant::now() + EXIT_TIMEOUT;
    while !log_of(dir).contains(needle) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the log never showed {needle:?}:\n{}",
            log_of(dir)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn signal(kind: &str, price: &str, stop: &str, timestamp: &str) -> String {
    format!(
        r#"{{"passphrase":"{PASSPHRASE}","signal":"{kind}","instrument":"NIFTY","position":"long","price":"{price}","stop":"{stop}","lots":"1","timestamp":"{}"}}"#,
        common::at(timestamp)
    )
}

#[tokio::test]
async fn a_crash_loses_and_doubles_nothing() {
    let dir = scratch("crash");
    let ports = Ports::free();
    let first = Instance::start(&dir, ports).await;
    for (body, outcome) in [
        (signal("BASE_ENTRY", "22000", "21900", "09:15"), "applied"),
        (signal("PYRAMID", "22100", "22000", "09:30"), "applied"),
    ] {
        let (status, json) = first.post(body).await;
        assert_eq!(
            (status, json["status"].as_str()),
            (200, Some(outcome)),
            "{json}"
        );
    }
    // kill -9: no shutdown, no last words.
    drop(first);

    let second = Instance::start(&dir, ports).await;
    let ready = second.get("/ready").await;
    assert_eq!(ready["receipt"]["verdict"], "clean", "{ready}");
    assert_eq!(ready["receipt"]["counts"]["open_positions"], 2, "{ready}");
    // TradingView resends the last alert: it changes nothing.
    let (status, json) = second
        .post(signal("PYRAMID", "22100", "22000", "09:30"))
        .await;
    assert_eq!(
        (status, json["duplicate"].as_bool()),
        (200, Some(true)),
        "{json}"
    );
    // A new pyramid builds on the recovered base.
    let (status, json) = second
        .post(signal("PYRAMID", "22200", "22100", "09:45"))
        .await;
    assert_eq!(
        (status, json["status"].as_str()),
        (200, Some("applied")),
        "{json}"
    );
    let status = second.get("/status").await;
    assert_eq!(
        (
            status["open_positions"].as_i64(),
            status["closed_positions"].as_i64()
        ),
        (Some(3), Some(0)),
        "{status}"
    );
    assert_eq!(status["state"], "active");
    drop(second);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The README's curl examples, run exactly as written against the README's main command.
#[tokio::test]
async fn the_readme_curl_examples_work_as_written() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let examples: Vec<&str> = readme
        .split("<!-- curl-example -->")
        .skip(1)
        .map(|rest| {
            rest.split("```")
                .nth(1)
                .unwrap()
                .trim_start_matches("sh")
                .trim()
        })
        .collect();
    assert_eq!(
        examples.len(),
        3,
        "the README shows BASE_ENTRY, PYRAMID and EXIT"
    );
    let dir = scratch("readme");
    // The README's main command, `vigil run` with no flags, in a fresh directory.
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .arg("run")
        .current_dir(&dir)
        .env_remove("VIGIL_WEBHOOK_PASSPHRASE")
        .env_remove("VIGIL_DATABASE_URL")
        .env_remove("VIGIL_LISTEN")
        .env_remove("VIGIL_OPERATOR_LISTEN")
        .env_remove("VIGIL_OPERATOR_TOKEN")
        .env_remove("VIGIL_CONFIG")
        .env_remove("VIGIL_POLICY")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let mut ready = false;
    for _ in 0..READY_POLLS {
        // Another process on the port would answer in our place: say so plainly.
        if let Ok(Some(status)) = child.try_wait() {
            panic!("vigil run exited ({status}) before serving; is 127.0.0.1:8080 or 8081 already in use?");
        }
        if client
            .get("http://127.0.0.1:8081/ready")
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            ready = true;
            break;
        }
        tokio::time::sleep(READY_POLL_INTERVAL).await;
    }
    let mut answers = Vec::new();
    if ready {
        for example in &examples {
            let output = Command::new("sh")
                .arg("-c")
                .arg(example)
                .current_dir(&dir)
                .output()
                .unwrap();
            answers.push(String::from_utf8(output.stdout).unwrap());
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        ready,
        "vigil run did not become ready (/ready on 127.0.0.1:8081)"
    );
    for (example, answer) in examples.iter().zip(&answers) {
        assert!(
            answer.contains(r#""status":"applied""#),
            "{example}\nanswered: {answer}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The real listener knows each peer's address: a `[webhook] allow` list that holds
/// loopback admits this test's alerts, and one that does not refuses them with 403 and
/// changes nothing.
#[tokio::test]
async fn the_allowlist_decides_on_the_real_listener() {
    for (name, allow, expected) in [
        ("allowed", "127.0.0.1", 200),
        ("refused", "10.0.0.0/8", 403),
    ] {
        let dir = scratch(&format!("allow-{name}"));
        std::fs::write(
            dir.join("vigil.toml"),
            format!("[webhook]\nallow = [\"{allow}\"]\n"),
        )
        .unwrap();
        let instance = Instance::start(&dir, Ports::free()).await;
        let (status, json) = instance
            .post(signal("BASE_ENTRY", "22000", "21900", "09:15"))
            .await;
        assert_eq!(status, expected, "allow = [{allow:?}]: {json}");
        let page = instance.get("/status").await;
        let opened = if expected == 200 { 1 } else { 0 };
        assert_eq!(
            page["open_positions"], opened,
            "allow = [{allow:?}]: {page}"
        );
        drop(instance);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The operator endpoints live on their own listener: unauthenticated load on the webhook
/// listener meets 404 for every one of them and never reaches a status query, while
/// `/status` on the operator listener, with the bearer token, stays correct throughout.
#[tokio::test]
async fn status_queries_are_out_of_the_public_listeners_reach() {
    const TOKEN: &str = "operator-token-0123456789abcdef";
    /// Concurrent unauthenticated clients, and the requests each sends.
    const CLIENTS: usize = 8;
    const REQUESTS_PER_CLIENT: usize = 100;
    let dir = scratch("operator");
    let instance = Instance::start_with(&dir, Ports::free(), Some(TOKEN)).await;
    let public = instance.url.clone();
    let load: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let public = public.clone();
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut answers = std::collections::BTreeMap::<(&str, u16), usize>::new();
                for n in 0..REQUESTS_PER_CLIENT {
                    let path = ["/status", "/ready", "/metrics"][(client + n) % 3];
                    let status = http
                        .get(format!("{public}{path}"))
                        .bearer_auth(TOKEN)
                        .send()
                        .await
                        .unwrap()
                        .status()
                        .as_u16();
                    *answers.entry((path, status)).or_default() += 1;
                }
                answers
            })
        })
        .collect();
    // Meanwhile the trade goes on, and the operator listener follows it.
    let steps = [
        (signal("BASE_ENTRY", "22000", "21900", "09:15"), (1, 0)),
        (signal("PYRAMID", "22100", "22000", "09:30"), (2, 0)),
        (signal("EXIT", "22300", "0", "09:45"), (0, 2)),
    ];
    for (body, (open, closed)) in steps {
        let (status, json) = instance.post(body).await;
        assert_eq!(status, 200, "{json}");
        let page = instance.get("/status").await;
        assert_eq!(
            (
                page["open_positions"].as_i64(),
                page["closed_positions"].as_i64()
            ),
            (Some(open), Some(closed)),
            "{page}"
        );
    }
    let mut answers = std::collections::BTreeMap::new();
    for client in load {
        for (key, count) in client.await.unwrap() {
            *answers.entry(key).or_insert(0) += count;
        }
    }
    let total: usize = answers.values().sum();
    assert_eq!(total, CLIENTS * REQUESTS_PER_CLIENT);
    assert!(
        answers.keys().all(|(_, status)| *status == 404),
        "the webhook listener served an operator page: {answers:?}"
    );
    // The operator listener: the token decides, /health stays open for liveness probes.
    for (path, token, expected) in [
        ("/status", None, 401),
        ("/status", Some("wrong-token-0123456789abcdef"), 401),
        ("/metrics", None, 401),
        ("/ready", None, 401),
        ("/ready", Some(TOKEN), 200),
        ("/metrics", Some(TOKEN), 200),
        ("/health", None, 200),
        ("/webhook", Some(TOKEN), 404),
    ] {
        let response = instance.operator(path, token).await.unwrap();
        let status = response.status().as_u16();
        let challenge = response.headers().get("www-authenticate").cloned();
        let body = response.text().await.unwrap();
        assert_eq!(status, expected, "{path} with {token:?}: {body}");
        if expected == 401 {
            assert_eq!(
                challenge.as_ref().map(|v| v.to_str().unwrap()),
                Some("Bearer")
            );
            assert!(body.contains("VIGIL_OPERATOR_TOKEN"), "{body}");
            assert!(!body.contains(TOKEN), "{body}");
        }
    }
    drop(instance);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A journal written by the library as `vigil run` would have left it, holding one
/// BASE_ENTRY per instrument named; the encoded length of each record, in order.
fn write_journal(dir: &Path, instruments: &[&str]) -> Vec<usize> {
    use vigil::intake::journal::{Journal, Mode};
    let opened = Journal::open(&dir.join("vigil-e2e.journal"), Mode::ReadWrite).unwrap();
    let mut lengths = Vec::new();
    for (n, instrument) in instruments.iter().enumerate() {
        let body = signal("BASE_ENTRY", "22000", "21900", &format!("09:{:02}", 15 + n))
            .replace("NIFTY", instrument);
        let signal = vigil::trading::parse(body.as_bytes()).unwrap().signal;
        let alert = vigil::intake::QueuedAlert {
            fingerprint: signal.fingerprint(),
            signal,
            received_at: chrono::Utc::now(),
            held_back_by: None,
        };
        let before = opened.journal.bytes();
        opened
            .journal
            .append(&serde_json::to_vec(&alert).unwrap())
            .unwrap();
        lengths.push(usize::try_from(opened.journal.bytes() - before).unwrap());
    }
    lengths
}

/// A journal whose last record was torn by a crash (never acknowledged) gives up that record
/// and keeps the others, which are applied; one with a flipped byte in a record that others
/// follow is damaged acknowledged data: recovery reports it as corrupt, and the built-in
/// policy halts with exit code 1, leaving the file as it was.
#[tokio::test]
async fn a_torn_journal_recovers_its_good_records_and_a_damaged_one_halts() {
    // Torn: the third record lost its last 10 bytes.
    let dir = scratch("torn-journal");
    let lengths = write_journal(&dir, &["NIFTY", "BANKNIFTY", "NIFTY"]);
    let path = dir.join("vigil-e2e.journal");
    let total: usize = lengths.iter().sum();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(u64::try_from(total - 10).unwrap()).unwrap();
    drop(file);
    let instance = Instance::start(&dir, Ports::free()).await;
    let mut page = instance.get("/status").await;
    for _ in 0..READY_POLLS {
        if page["open_positions"] == 2 && page["journal"]["pending"] == 0 {
            break;
        }
        tokio::time::sleep(READY_POLL_INTERVAL).await;
        page = instance.get("/status").await;
    }
    assert_eq!(page["open_positions"], 2, "{page}");
    assert_eq!(page["journal"]["pending"], 0, "{page}");
    drop(instance);
    let log = std::fs::read_to_string(dir.join("vigil.log")).unwrap();
    assert!(log.contains("ended in a torn record of"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);

    // Damaged: a byte of the second record's payload flipped.
    let dir = scratch("damaged-journal");
    let lengths = write_journal(&dir, &["NIFTY", "BANKNIFTY", "NIFTY"]);
    let path = dir.join("vigil-e2e.journal");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[lengths[0] + 8 + 9 + 5] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args([
            "run",
            "--listen",
            "127.0.0.1:0",
            "--operator-listen",
            "127.0.0.1:0",
            "--instance",
            "vigil-e2e",
        ])
        .current_dir(&dir)
        .env("VIGIL_WEBHOOK_PASSPHRASE", PASSPHRASE)
        .env_remove("VIGIL_DATABASE_URL")
        .env_remove("VIGIL_CONFIG")
        .env_remove("VIGIL_POLICY")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{log}");
    assert!(log.contains("intake journal readable"), "{log}");
    assert!(log.contains("is damaged"), "{log}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "the damaged journal was changed"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `vigil positions` lists what `GET /positions` lists, from the database, while the
/// instance runs.
#[tokio::test]
async fn vigil_positions_lists_the_open_positions() {
    let dir = scratch("positions");
    let instance = Instance::start(&dir, Ports::free()).await;
    let positions = |format: &str| {
        let output = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["positions", "--format", format])
            .current_dir(&dir)
            .env_remove("VIGIL_DATABASE_URL")
            .env_remove("VIGIL_CONFIG")
            .env_remove("VIGIL_POLICY")
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    assert!(positions("text").ends_with("(no open positions)\n"));
    let (status, json) = instance
        .post(signal("BASE_ENTRY", "22000", "21900", "09:15"))
        .await;
    assert_eq!(status, 200, "{json}");
    let table = positions("text");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    let columns: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        columns[..9],
        [
            "NIFTY",
            "long",
            "long",
            "base",
            "1",
            "22000",
            "21900",
            "7500.00",
            "150000.00"
        ],
        "{table}"
    );
    assert_eq!(lines[2], "1 position open", "{table}");
    let listed: serde_json::Value = serde_json::from_str(&positions("json")).unwrap();
    assert_eq!(listed, instance.get("/positions").await);
    drop(instance);
    let _ = std::fs::remove_dir_all(&dir);
}

/// One case of [`the_log_level_and_format_settings_shape_the_log`].
struct LogCase {
    /// The settings, as environment variables.
    env: &'static [(&'static str, &'static str)],
    /// Whether every line is JSON.
    json: bool,
    /// What the log holds.
    holds: &'static [&'static str],
    /// What it must not.
    lacks: &'static [&'static str],
}

/// The log level and format settings, on the real binary: what each writes for an applied
/// alert, a refused one and a stop.
#[tokio::test]
async fn the_log_level_and_format_settings_shape_the_log() {
    let cases = [
        LogCase {
            env: &[],
            json: false,
            holds: &[" INFO ", "alert refused", "from=stopping to=stopped"],
            lacks: &["{\""],
        },
        LogCase {
            env: &[("VIGIL_LOG_FORMAT", "json")],
            json: true,
            holds: &["\"level\":\"INFO\"", "\"request_id\":", "alert refused"],
            lacks: &[],
        },
        LogCase {
            env: &[("VIGIL_LOG_LEVEL", "warn"), ("VIGIL_LOG_FORMAT", "text")],
            json: false,
            holds: &[" WARN ", "alert refused", "request_id="],
            lacks: &[" INFO ", "from=stopping"],
        },
    ];
    for (
        n,
        LogCase {
            env,
            json,
            holds,
            lacks,
        },
    ) in cases.into_iter().enumerate()
    {
        let dir = scratch(&format!("log-settings-{n}"));
        let mut instance = Instance::spawn(&dir, Ports::free(), None, env).await;
        let (status, answer) = instance
            .post(signal("BASE_ENTRY", "22000", "21900", "09:15"))
            .await;
        assert_eq!(status, 200, "{env:?}: {answer}");
        let (status, answer) = instance
            .post(
                signal("BASE_ENTRY", "22000", "21900", "09:16")
                    .replace(PASSPHRASE, "not-the-passphrase-7f3a"),
            )
            .await;
        assert_eq!(status, 401, "{env:?}: {answer}");
        instance.signal("INT");
        assert_eq!(instance.exit_code(&dir).await, Some(0), "{env:?}");
        let log = log_of(&dir);
        for line in log.lines() {
            let parsed = serde_json::from_str::<serde_json::Value>(line);
            assert_eq!(parsed.is_ok(), json, "{env:?}: {line}");
        }
        for needle in holds {
            assert!(log.contains(needle), "{env:?}: no {needle:?} in\n{log}");
        }
        for needle in lacks {
            assert!(!log.contains(needle), "{env:?}: {needle:?} in\n{log}");
        }
        assert!(
            !log.contains("not-the-passphrase-7f3a"),
            "{env:?}: the passphrase sent is logged:\n{log}"
        );
        drop(instance);
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// A second process under a live instance's id is refused before it listens (exit 6) and
/// leaves the first serving; once the first has stopped, the id is free again.
#[tokio::test]
async fn a_second_process_under_a_live_id_is_refused() {
    let dir = scratch("twin");
    let mut first = Instance::start(&dir, Ports::free()).await;
    let ports = Ports::free();
    let mut second = Instance::launch(&dir, ports, None, &[]);
    let code = second.exit_code(&dir).await;
    let log = log_of(&dir);
    assert_eq!(code, Some(6), "{log}");
    assert!(
        log.contains(r#"error: instance id "vigil-e2e" is held by a live process on this host"#),
        "{log}"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", ports.webhook)).is_err(),
        "the refused process must not have listened"
    );
    // From another directory, naming the same database file: the same id and database.
    let elsewhere = scratch("twin-elsewhere");
    let same_database = format!("sqlite://{}/vigil.db", dir.display());
    let mut third = Instance::launch(
        &elsewhere,
        ports,
        None,
        &[("VIGIL_DATABASE_URL", same_database.as_str())],
    );
    assert_eq!(
        third.exit_code(&elsewhere).await,
        Some(6),
        "{}",
        log_of(&elsewhere)
    );
    drop(third);
    let _ = std::fs::remove_dir_all(&elsewhere);
    let (status, json) = first
        .post(signal("BASE_ENTRY", "22000", "21900", "09:15"))
        .await;
    assert_eq!(
        (status, json["status"].as_str()),
        (200, Some("applied")),
        "{json}"
    );
    first.signal("TERM");
    assert_eq!(first.exit_code(&dir).await, Some(0), "{}", log_of(&dir));
    let again = Instance::start(&dir, ports).await;
    assert_eq!(again.get("/status").await["open_positions"], 1);
    drop(again);
    let _ = std::fs::remove_dir_all(&dir);
}

/// One SIGINT stops the instance gracefully: `stopping`, then `stopped`, exit 0, and no
/// forced stop.
#[tokio::test]
async fn one_sigint_stops_gracefully() {
    let dir = scratch("sigint");
    let mut instance = Instance::start(&dir, Ports::free()).await;
    let (status, json) = instance
        .post(signal("BASE_ENTRY", "22000", "21900", "09:15"))
        .await;
    assert_eq!(status, 200, "{json}");
    instance.signal("INT");
    let code = instance.exit_code(&dir).await;
    let log = log_of(&dir);
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("from=stopping to=stopped"), "{log}");
    assert!(!log.contains("stop forced"), "{log}");
    drop(instance);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends a BASE_ENTRY to an instance started at the `after_broker` failpoint and returns,
/// its answer still pending, once the failpoint holds it.
async fn hold_alert(
    instance: &Instance,
    dir: &Path,
) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
    let url = format!("{}/webhook", instance.url);
    let body = signal("BASE_ENTRY", "22000", "21900", "09:15");
    let held = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
    });
    wait_for_log(dir, "failpoint after_broker reached").await;
    held
}

/// One SIGINT ends the instance even while an alert is held in flight for good: the stop
/// waits its bound for signals in flight, then the listeners theirs, and the process exits.
#[tokio::test]
async fn one_sigint_ends_even_with_an_alert_stuck_in_flight() {
    let dir = scratch("stuck");
    let mut instance = Instance::start_at_failpoint(&dir, Ports::free(), "after_broker").await;
    let held = hold_alert(&instance, &dir).await;
    instance.signal("INT");
    let code = instance.exit_code(&dir).await;
    let log = log_of(&dir);
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("from=stopping to=stopped"), "{log}");
    assert!(log.contains("a listener did not close within 2s"), "{log}");
    assert!(held.await.unwrap().is_err(), "the held alert was answered");
    drop(instance);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A graceful stop that cannot finish (an alert held for good in flight, at the
/// `after_broker` failpoint: the stop waits for it) ends at once on a second SIGINT, with
/// exit code 130 and one line saying what stays behind; the next start recovers clean, and
/// the alert that never got an answer changed nothing.
#[tokio::test]
async fn a_second_sigint_forces_a_stuck_stop() {
    let dir = scratch("forced");
    let ports = Ports::free();
    let mut instance = Instance::start_at_failpoint(&dir, ports, "after_broker").await;
    let held = hold_alert(&instance, &dir).await;
    instance.signal("INT");
    // The stop has begun, and cannot end while the alert is held.
    wait_for_log(&dir, "to=stopping").await;
    assert!(
        instance.child.try_wait().unwrap().is_none(),
        "{}",
        log_of(&dir)
    );
    instance.signal("INT");
    let code = instance.exit_code(&dir).await;
    let log = log_of(&dir);
    assert_eq!(code, Some(130), "{log}");
    let forced: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("stop forced"))
        .collect();
    assert_eq!(forced.len(), 1, "{log}");
    assert!(
        forced[0].contains(" WARN vigil::startup: stop forced by a second stop signal (SIGINT): exiting now with code 130; signals in flight left unanswered: 1; alerts kept in the intake journal and applied at the next start: 0 instance=vigil-e2e"),
        "{log}"
    );
    assert!(!log.contains("to=stopped"), "{log}");
    assert!(held.await.unwrap().is_err(), "the held alert was answered");
    drop(instance);

    let restarted = Instance::start(&dir, ports).await;
    let ready = restarted.get("/ready").await;
    assert_eq!(ready["receipt"]["verdict"], "clean", "{ready}");
    let page = restarted.get("/status").await;
    assert_eq!(page["open_positions"], 0, "{page}");
    drop(restarted);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The watchdog timeout the supervision tests give the process, in microseconds, as
/// systemd's `WatchdogSec` would: the loop pings every half of it.
const WATCHDOG_TIMEOUT_US: &str = "200000";

/// How long a supervision test waits for a message from the process.
const NOTIFY_WAIT: Duration = Duration::from_secs(20);

/// How long a wedged loop must stay silent: ten of its ping intervals.
const WEDGED_SILENCE: Duration = Duration::from_secs(1);

/// A socket standing in for systemd's `NOTIFY_SOCKET`, read all the time as systemd reads
/// it (a datagram socket nobody reads fills and blocks its sender); removed when dropped.
struct NotifySocket {
    messages: tokio::sync::mpsc::UnboundedReceiver<Vec<String>>,
    reader: tokio::task::JoinHandle<()>,
    path: PathBuf,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = tokio::net::UnixDatagram::bind(&path).expect("bind the notify socket");
        let (sender, messages) = tokio::sync::mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            let mut buffer = vec![0_u8; 4096];
            while let Ok(length) = socket.recv(&mut buffer).await {
                let text = String::from_utf8_lossy(&buffer[..length]).into_owned();
                if sender
                    .send(text.lines().map(str::to_string).collect())
                    .is_err()
                {
                    return;
                }
            }
        });
        NotifySocket {
            messages,
            reader,
            path,
        }
    }

    fn path(&self) -> String {
        self.path
            .to_str()
            .expect("the scratch path is UTF-8")
            .to_string()
    }

    /// The next message, split into its `NAME=value` lines; none within `wait`.
    async fn next(&mut self, wait: Duration) -> Option<Vec<String>> {
        tokio::time::timeout(wait, self.messages.recv())
            .await
            .ok()?
    }

    /// Reads messages until one holds `line`; every line read so far, `line`'s included.
    async fn until(&mut self, line: &str, seen: &mut Vec<String>, dir: &Path) {
        loop {
            let Some(message) = self.next(NOTIFY_WAIT).await else {
                panic!(
                    "no {line} within {NOTIFY_WAIT:?}; seen {seen:?}; log:\n{}",
                    log_of(dir)
                );
            };
            let found = message.iter().any(|got| got == line);
            seen.extend(message);
            if found {
                return;
            }
        }
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        self.reader.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

#[tokio::test]
async fn systemd_hears_ready_status_watchdog_and_stopping_in_order() {
    let dir = scratch("notify");
    let mut socket = NotifySocket::bind(&dir);
    let path = socket.path();
    let env = [
        ("NOTIFY_SOCKET", path.as_str()),
        ("WATCHDOG_USEC", WATCHDOG_TIMEOUT_US),
    ];
    let mut instance = Instance::launch(&dir, Ports::free(), None, &env);
    let mut seen = Vec::new();
    socket.until("READY=1", &mut seen, &dir).await;
    let statuses: Vec<&String> = seen
        .iter()
        .filter(|line| line.starts_with("STATUS="))
        .collect();
    assert!(
        statuses
            .first()
            .is_some_and(|status| status.starts_with("STATUS=starting: ")),
        "{seen:?}"
    );
    assert!(
        statuses
            .iter()
            .any(|status| status.starts_with("STATUS=recovering: ")),
        "{seen:?}"
    );
    assert!(
        statuses
            .last()
            .is_some_and(|status| status.starts_with("STATUS=active: ")),
        "READY comes with the first serving state: {seen:?}"
    );
    let before_ready = seen.len();
    socket.until("WATCHDOG=1", &mut seen, &dir).await;
    socket.until("WATCHDOG=1", &mut seen, &dir).await;
    instance.signal("TERM");
    socket.until("STOPPING=1", &mut seen, &dir).await;
    assert!(
        seen.iter()
            .any(|line| line.starts_with("STATUS=stopping: ")),
        "{seen:?}"
    );
    assert_eq!(
        seen.iter().filter(|line| *line == "READY=1").count(),
        1,
        "READY is sent once: {seen:?}"
    );
    assert!(
        seen[before_ready..].iter().all(|line| line != "READY=1"),
        "{seen:?}"
    );
    assert_eq!(instance.exit_code(&dir).await, Some(0), "{}", log_of(&dir));
    drop(instance);
    drop(socket);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_wedged_driver_loop_stops_the_watchdog_pings_while_the_process_lives() {
    let dir = scratch("wedged");
    let mut socket = NotifySocket::bind(&dir);
    let path = socket.path();
    // The loop's 30th pass never ends: by then it has pinged and served for a while.
    let env = [
        ("NOTIFY_SOCKET", path.as_str()),
        ("WATCHDOG_USEC", WATCHDOG_TIMEOUT_US),
        ("VIGIL_FAILPOINT", "driver_loop:30"),
    ];
    let instance = Instance::launch(&dir, Ports::free(), None, &env);
    let mut seen = Vec::new();
    socket.until("READY=1", &mut seen, &dir).await;
    socket.until("WATCHDOG=1", &mut seen, &dir).await;
    wait_for_log(&dir, "failpoint driver_loop reached").await;
    // Whatever was sent before the loop stopped is read first.
    while socket.next(Duration::from_millis(50)).await.is_some() {}
    assert_eq!(
        socket.next(WEDGED_SILENCE).await,
        None,
        "a wedged loop must not ping the watchdog"
    );
    let health = instance
        .operator("/health", None)
        .await
        .expect("the process still answers");
    assert_eq!(
        health.status(),
        200,
        "the process lives; only its loop is stuck"
    );
    drop(instance);
    drop(socket);
    let _ = std::fs::remove_dir_all(&dir);
}
