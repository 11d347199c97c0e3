//! The real `vigil` binary, driven as an operator would. Each case is one line: the
//! arguments, the exit code, and a snapshot of what it printed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

/// (snapshot name, arguments, expected exit code)
const CASES: &[(&str, &[&str], i32)] = &[
    (
        "dry_run_default_db_outage",
        &[
            "dry-run",
            "--policy",
            "policies/default.toml",
            "--events",
            "db_unavailable,db_unavailable,db_unavailable",
        ],
        0,
    ),
    (
        "dry_run_strict_db_outage",
        &[
            "dry-run",
            "--policy",
            "policies/strict.toml",
            "--events",
            "db_unavailable,db_unavailable,db_unavailable",
        ],
        0,
    ),
    (
        "dry_run_validation_failed_in_recovery",
        &[
            "dry-run",
            "--policy",
            "policies/default.toml",
            "--from",
            "recovering",
            "--event",
            "validation_failed",
        ],
        0,
    ),
    (
        "dry_run_story",
        &[
            "dry-run",
            "--policy",
            "policies/default.toml",
            "--events",
            "started,recovered,redis_unavailable,redis_restored,stop,drained",
        ],
        0,
    ),
    (
        "dry_run_scenario",
        &[
            "dry-run",
            "--policy",
            "policies/paper.toml",
            "--scenario",
            "tests/data/scenarios/db_outage_while_active.toml",
        ],
        0,
    ),
    (
        "dry_run_broken_scenario",
        &[
            "dry-run",
            "--policy",
            "policies/default.toml",
            "--scenario",
            "tests/data/broken_scenarios/tab_before_error.toml",
        ],
        3,
    ),
    (
        "dry_run_sub_millisecond_delay",
        &[
            "dry-run",
            "--policy",
            "tests/data/valid_policies/sub_millisecond_delay.toml",
            "--events",
            "started,db_unavailable,db_unavailable",
        ],
        0,
    ),
    (
        "dry_run_json",
        &[
            "dry-run",
            "--policy",
            "policies/default.toml",
            "--events",
            "started,recovered",
            "--format",
            "json",
        ],
        0,
    ),
    (
        "dry_run_from_degraded",
        &[
            "dry-run",
            "--policy",
            "policies/default.toml",
            "--from",
            "degraded",
            "--reason",
            "redis_unavailable",
            "--event",
            "redis_restored",
        ],
        0,
    ),
    (
        "dry_run_from_degraded_never_tolerated",
        &[
            "dry-run",
            "--policy",
            "policies/strict.toml",
            "--from",
            "degraded",
            "--reason",
            "db_unavailable",
            "--event",
            "db_restored",
        ],
        3,
    ),
    (
        "dry_run_from_crashed_takes_the_policy_code",
        &[
            "dry-run",
            "--policy",
            "tests/data/valid_policies/exit_code_9.toml",
            "--from",
            "crashed",
            "--reason",
            "data_corrupt",
            "--event",
            "stop",
        ],
        0,
    ),
    (
        "dry_run_from_crashed_never_halted",
        &[
            "dry-run",
            "--policy",
            "policies/paper.toml",
            "--from",
            "crashed",
            "--reason",
            "redis_unavailable",
            "--event",
            "stop",
        ],
        3,
    ),
    (
        "dry_run_stop_then_halting_failure",
        &[
            "dry-run",
            "--policy",
            "policies/default.toml",
            "--events",
            "started,recovered,stop,data_corrupt",
        ],
        0,
    ),
    (
        "dry_run_unknown_event",
        &[
            "dry-run",
            "--policy",
            "policies/default.toml",
            "--events",
            "started,db_unavailabel",
        ],
        3,
    ),
    (
        "dry_run_unknown_state",
        &[
            "dry-run",
            "--policy",
            "policies/default.toml",
            "--from",
            "activ",
            "--event",
            "stop",
        ],
        3,
    ),
    (
        "dry_run_invalid_policy",
        &[
            "dry-run",
            "--policy",
            "tests/data/policies/zero_attempts.toml",
            "--events",
            "started",
        ],
        3,
    ),
    (
        "dry_run_missing_policy",
        &[
            "dry-run",
            "--policy",
            "policies/none.toml",
            "--events",
            "started",
        ],
        4,
    ),
    (
        "dry_run_no_script",
        &["dry-run", "--policy", "policies/default.toml"],
        2,
    ),
    (
        "dry_run_event_needs_from",
        &[
            "dry-run",
            "--policy",
            "policies/default.toml",
            "--event",
            "stop",
        ],
        2,
    ),
    ("check_missing_file", &["check", "policies/none.toml"], 4),
    (
        "check_warns_of_a_set_not_honoured_at_start",
        &[
            "check",
            "tests/data/valid_policies/exits_after_corrupt_data.toml",
        ],
        0,
    ),
    (
        "check_shipped_and_broken",
        &[
            "check",
            "policies/default.toml",
            "tests/data/policies/bad_duration.toml",
        ],
        3,
    ),
    (
        "recover_check_database_unavailable",
        &[
            "recover",
            "--check",
            "--policy",
            "policies/strict.toml",
            "--database-url",
            "sqlite:///nonexistent-vigil-dir/vigil.db",
            "--instance",
            "vigil-cli",
        ],
        1,
    ),
    (
        "run_refuses_to_listen_beyond_loopback_without_a_passphrase",
        &["run", "--listen", "0.0.0.0:0"],
        3,
    ),
    (
        "run_refuses_operator_endpoints_beyond_loopback_without_a_token",
        &["run", "--operator-listen", "0.0.0.0:0"],
        3,
    ),
    (
        "run_refuses_one_address_for_both_listeners",
        &[
            "run",
            "--listen",
            "127.0.0.1:18080",
            "--operator-listen",
            "127.0.0.1:18080",
        ],
        3,
    ),
    ("machines_table", &["machines"], 0),
    (
        "run_refuses_redis_with_sqlite",
        &[
            "run",
            "--database-url",
            "sqlite://never-created.db",
            "--redis-url",
            "redis://127.0.0.1:6379",
        ],
        3,
    ),
    (
        "run_refuses_a_bad_redis_url",
        &[
            "run",
            "--database-url",
            "postgres://127.0.0.1:1/never",
            "--redis-url",
            "http://127.0.0.1:6379",
        ],
        3,
    ),
    (
        "machines_lifecycle_mermaid",
        &["machines", "lifecycle", "--format", "mermaid"],
        0,
    ),
    (
        "machines_failure_dot",
        &["machines", "failure", "--format", "dot"],
        0,
    ),
    ("machines_unknown", &["machines", "lifecycel"], 3),
    ("machines_mermaid", &["machines", "--format", "mermaid"], 0),
    ("machines_dot", &["machines", "--format", "dot"], 0),
];

#[test]
fn cli_cases() {
    let wall_clock = regex::Regex::new(r"(?m)^\d{4}-\d\d-\d\dT[0-9:.]+Z").unwrap();
    for (name, args, code) in CASES {
        let output = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(*args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_remove("VIGIL_INSTANCE")
            .env_remove("VIGIL_WEBHOOK_PASSPHRASE")
            .env_remove("VIGIL_OPERATOR_TOKEN")
            .env_remove("VIGIL_OPERATOR_LISTEN")
            .env_remove("VIGIL_LISTEN")
            .output()
            .unwrap();
        let stdout = String::from_utf8(output.stdout).unwrap();
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(
            output.status.code(),
            Some(*code),
            "vigil {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            args.join(" ")
        );
        // Wall-clock log times differ from run to run; nothing else may.
        let stderr = wall_clock.replace_all(&stderr, "<time>");
        let text = format!(
            "$ vigil {}\n--- exit code {code}\n--- stdout\n{stdout}--- stderr\n{stderr}",
            args.join(" ")
        );
        insta::with_settings!({ snapshot_path => "../snapshots", prepend_module_to_snapshot => false }, {
            insta::assert_snapshot!(format!("cli__{name}"), text);
        });
    }
}

#[test]
fn mermaid_is_a_state_diagram_of_every_transition() {
    let output = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["machines", "lifecycle", "--format", "mermaid"])
        .output()
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.starts_with("stateDiagram-v2\n"), "{text}");
    assert!(text.contains("[*] --> starting"), "{text}");
    let transition =
        regex::Regex::new(r"^(\[\*\]|[a-z_]+) --> (\[\*\]|[a-z_]+)( : [^:;]+)?$").unwrap();
    let description = regex::Regex::new(r"^[a-z_]+ : [^:;]+$").unwrap();
    for line in text.lines().skip(1) {
        let line = line.trim();
        // Every line is a comment, a state description or a transition with one label.
        let valid =
            line.starts_with("%%") || transition.is_match(line) || description.is_match(line);
        assert!(valid, "not valid Mermaid: {line:?}");
    }
}

/// What `vigil machines --format FORMAT` prints, with no machine named.
fn all_machines(format: &str) -> Result<String, Box<dyn std::error::Error>> {
    let output = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["machines", "--format", format])
        .output()?;
    assert!(output.status.success(), "vigil machines --format {format}");
    Ok(String::from_utf8(output.stdout)?)
}

/// The machines every all-machines document draws.
const MACHINES: [&str; 2] = ["lifecycle", "failure"];

/// What the all-machines document of one `--format` must look like.
struct Document {
    /// The `--format`.
    format: &'static str,
    /// How the document starts.
    starts: &'static str,
    /// What marks the document's header: exactly one line holds it.
    header: &'static str,
    /// The block each machine is drawn in, `{machine}` standing for its name.
    block: &'static str,
    /// What draws a machine's start: once per machine.
    start: &'static str,
    /// Further text the document holds.
    holds: &'static [&'static str],
    /// How its braces nest.
    braces: Braces,
    /// Patterns every line after the first matches, trimmed (none: not checked here).
    lines: &'static [&'static str],
    /// A program that reads the format, run where it is installed: its name and arguments,
    /// and what its output holds exactly once (it stops at a second graph in its input).
    reader: Option<(&'static str, &'static [&'static str], &'static str)>,
}

/// How the braces of a document nest.
enum Braces {
    /// Composite states: a line ending `{` opens one, a line `}` closes it.
    Composites,
    /// One block: outside double-quoted strings the braces balance, and the outermost closes
    /// only on the last line, with nothing after it.
    OneBlock,
}

const DOCUMENTS: &[Document] = &[
    Document {
        format: "mermaid",
        starts: "stateDiagram-v2\n",
        header: "stateDiagram",
        block: "\n    state {machine} {\n",
        start: "[*] --> ",
        // `idle` of the failure machine is an id of its own.
        holds: &["state \"idle\" as failure_idle\n"],
        braces: Braces::Composites,
        lines: &[
            r"^%%",
            r"^\}$",
            // A composite state, a state declaration, a transition with one label, a
            // state description.
            r"^state [a-z_]+ \{$",
            r#"^state "[a-z_]+" as [a-z_]+$"#,
            r"^(\[\*\]|[a-z_]+) --> (\[\*\]|[a-z_]+)( : [^:;{}]+)?$",
            r"^[a-z_]+ : [^:;{}]+$",
        ],
        reader: None,
    },
    Document {
        format: "dot",
        starts: "digraph ",
        header: "digraph ",
        block: "    subgraph \"cluster_{machine}\" {\n        label=\"{machine}\";\n",
        start: "[shape=point];",
        holds: &[],
        braces: Braces::OneBlock,
        lines: &[],
        reader: Some(("dot", &["-Tsvg"], "<svg")),
    },
];

/// Every machine is in one document, in every format that draws them all.
#[test]
fn every_machine_is_in_one_document() -> Result<(), Box<dyn std::error::Error>> {
    for document in DOCUMENTS {
        check(document, &all_machines(document.format)?)?;
    }
    Ok(())
}

/// Holds `text` to `document`.
fn check(document: &Document, text: &str) -> Result<(), Box<dyn std::error::Error>> {
    let format = document.format;
    let headers = text.lines().filter(|line| line.contains(document.header));
    assert_eq!(headers.count(), 1, "{format}:\n{text}");
    assert!(text.starts_with(document.starts), "{format}:\n{text}");
    assert!(text.ends_with("}\n"), "{format}:\n{text}");
    match document.braces {
        Braces::Composites => assert_composites_nest(text),
        Braces::OneBlock => assert_one_block_of_braces(text),
    }
    for machine in MACHINES {
        let block = document.block.replace("{machine}", machine);
        assert!(text.contains(&block), "{format} lacks {block:?}:\n{text}");
    }
    assert_eq!(
        text.matches(document.start).count(),
        MACHINES.len(),
        "{format}: one start per machine:\n{text}"
    );
    for held in document.holds {
        assert!(text.contains(held), "{format} lacks {held:?}:\n{text}");
    }
    if !document.lines.is_empty() {
        let patterns = document
            .lines
            .iter()
            .map(|pattern| regex::Regex::new(pattern))
            .collect::<Result<Vec<_>, _>>()?;
        for line in text.lines().skip(1) {
            let line = line.trim();
            let valid = patterns.iter().any(|pattern| pattern.is_match(line));
            assert!(valid, "not valid {format}: {line:?}");
        }
    }
    if let Some((program, args, once)) = document.reader {
        assert_read_once(program, args, once, text)?;
    }
    Ok(())
}

/// Checks that the composite states of `text` nest: a line ending `{` opens one, a line
/// `}` closes one, never more than are open, and all are closed at the end; and that no
/// other brace stands anywhere.
fn assert_composites_nest(text: &str) {
    let mut braces = 0_i32;
    for line in text.lines() {
        braces += i32::from(line.ends_with('{')) - i32::from(line.trim() == "}");
        assert!(braces >= 0, "{text}");
    }
    assert_eq!(braces, 0, "unbalanced composite states:\n{text}");
    assert_eq!(
        text.matches('{').count(),
        text.matches('}').count(),
        "{text}"
    );
}

/// Checks that the braces of `text` outside double-quoted strings balance, and that the
/// outermost one closes only on the last line: one document, nothing after it.
fn assert_one_block_of_braces(text: &str) {
    let lines: Vec<&str> = text.lines().collect();
    let mut depth = 0_i32;
    for (number, line) in lines.iter().enumerate() {
        let (mut quoted, mut escaped) = (false, false);
        for c in line.chars() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                '{' if !quoted => depth += 1,
                '}' if !quoted => depth -= 1,
                _ => {}
            }
            assert!(
                depth >= 0,
                "a brace closes what is not open: {line:?}\n{text}"
            );
        }
        assert!(!quoted, "a string is not closed: {line:?}");
        let last = number + 1 == lines.len();
        assert!(
            last || depth > 0 || !line.contains('}'),
            "the document ends before its last line: {line:?}\n{text}"
        );
    }
    assert_eq!(depth, 0, "unbalanced braces:\n{text}");
}

/// Feeds `text` to `program args` where it is installed: it must accept it, and its output
/// hold `once` exactly once.
fn assert_read_once(
    program: &str,
    args: &[&str],
    once: &str,
    text: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let reader = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut reader) = reader else {
        return Ok(());
    };
    if let Some(mut stdin) = reader.stdin.take() {
        std::io::Write::write_all(&mut stdin, text.as_bytes())?;
    }
    let output = reader.wait_with_output()?;
    assert!(
        output.status.success(),
        "{program} {} refused the output:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    let read = String::from_utf8(output.stdout)?;
    assert_eq!(read.matches(once).count(), 1, "{read}");
    Ok(())
}

#[test]
fn completions_are_generated_for_every_shell() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let output = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(output.status.success(), "{shell}");
        let script = String::from_utf8(output.stdout).unwrap();
        assert!(
            script.contains("dry-run"),
            "{shell} completions do not mention dry-run"
        );
    }
}

/// A fresh directory for one test's SQLite file.
fn scratch_dir(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("vigil-cli-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn migrate_is_idempotent() {
    let dir = scratch_dir("migrate");
    for _ in 0..2 {
        let output = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["migrate"])
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(
            String::from_utf8(output.stdout).unwrap(),
            "sqlite://vigil.db: schema up to date\n"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `vigil run` with no flags starts on a SQLite file in the working directory, recovers,
/// and stops gracefully on SIGTERM: exit 0, status `stopped`.
#[test]
fn run_starts_recovers_and_stops_on_sigterm() {
    use std::io::{BufRead, BufReader};
    /// Log lines to read before giving up on seeing the instance become active.
    const MAX_START_UP_LINES: usize = 100;
    let dir = scratch_dir("run");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["run", "--instance", "vigil-cli"])
        .current_dir(&dir)
        .env_remove("VIGIL_DATABASE_URL")
        .env_remove("VIGIL_POLICY")
        .env_remove("VIGIL_CONFIG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = Vec::new();
    while log.len() < MAX_START_UP_LINES {
        let Some(Ok(line)) = lines.next() else { break };
        let active = line.contains("to=active");
        log.push(line);
        if active {
            break;
        }
    }
    assert!(
        log.iter().any(|line| line.contains("to=active")),
        "never became active:\n{}",
        log.join("\n")
    );
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    log.extend(lines.map_while(Result::ok));
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "log:\n{}", log.join("\n"));
    assert!(
        log.iter()
            .any(|line| line.contains("from=stopping to=stopped")),
        "log:\n{}",
        log.join("\n")
    );

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let recorded: Option<String> = runtime.block_on(async {
        let pool =
            sqlx::SqlitePool::connect(&format!("sqlite://{}", dir.join("vigil.db").display()))
                .await
                .unwrap();
        let status = sqlx::query_scalar(
            "SELECT status FROM instance_metadata WHERE instance_id = 'vigil-cli'",
        )
        .fetch_optional(&pool)
        .await
        .unwrap();
        pool.close().await;
        status
    });
    assert_eq!(recorded.as_deref(), Some("stopped"));
    let status = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .arg("status")
        .current_dir(&dir)
        .output()
        .unwrap();
    let listing = String::from_utf8(status.stdout).unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let line = listing
        .lines()
        .find(|line| line.starts_with("vigil-cli"))
        .unwrap_or_default();
    // Stopping gave the leader lease up.
    assert_eq!(
        line.split_whitespace().take(3).collect::<Vec<_>>(),
        ["vigil-cli", "stopped", "no"],
        "vigil status:\n{listing}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The README's console examples marked `readme-example` print exactly what the README shows.
#[test]
fn the_readme_examples_print_what_the_readme_shows() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let mut examples = 0;
    for after in readme.split("<!-- readme-example").skip(1) {
        let block = after
            .split_once("```console\n")
            .and_then(|(_, rest)| rest.split_once("\n```"))
            .map(|(block, _)| block)
            .expect("a readme-example marker is followed by a console block");
        let (command, shown) = block.split_once('\n').unwrap();
        let args: Vec<&str> = command
            .strip_prefix("$ vigil ")
            .expect("a readme-example starts with `$ vigil`")
            .split_whitespace()
            .collect();
        let output = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(&args)
            .current_dir(root)
            .output()
            .unwrap();
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert_eq!(
            printed.trim_end(),
            shown.trim_end(),
            "README example `{command}`"
        );
        examples += 1;
    }
    assert!(examples >= 2, "the README's examples are marked");
}
