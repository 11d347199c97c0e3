//! RUNBOOK.md stays true. Every failure kind, the leader's alarm, every check a receipt or an
//! alarm names, every intake journal state and every exit code vigil uses has one `### `
//! heading; no `### ` heading names anything else; each section quotes what vigil writes for
//! it (the policy's final answer, taken from a dry-run of the built-in policy, and the
//! messages the library itself formats); and every `vigil` command the runbook shows parses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use clap::error::ErrorKind;
use clap::Parser;
use std::path::Path;
use vigil::cli::{Cli, EXIT_FAILURE, EXIT_INVALID, EXIT_OK};
use vigil::coordination::identity::Held;
use vigil::coordination::leader::{CONSISTENCY_ALARMS, CONSISTENCY_OK};
use vigil::dry_run::{self, Format, Start};
use vigil::intake::journal::{Corrupt, JournalError, MAX_JOURNAL_BYTES};
use vigil::intake::{JOURNAL_APPEND_TIMEOUT, JOURNAL_PENDING};
use vigil::policy::{Policy, RESERVED_EXIT_CODES};
use vigil::recovery::{self, Terms};
use vigil::shutdown::{forced_line, Left};
use vigil::store::operations::PreviousEnd;
use vigil::store::{PortfolioRow, RecoveryRows, Schema};
use vigil::vocabulary::FailureKind;

/// The leader's one alarm: the words its log line starts with (`consistency alarm: ...`).
/// The library keeps no constant for them; its metrics are constants, and are quoted.
const ALARM: &str = "consistency alarm";

/// One heading the runbook must hold once, and what its section must quote.
#[derive(Debug)]
struct Case {
    /// The heading, without `### `.
    heading: String,
    /// Text the section must contain (white space is compared collapsed).
    quotes: Vec<String>,
}

fn case(heading: String, quotes: Vec<String>) -> Case {
    Case { heading, quotes }
}

fn runbook() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("RUNBOOK.md");
    std::fs::read_to_string(&path).expect("RUNBOOK.md is readable at the package root")
}

/// Runs of white space as one space, so that prose may wrap a quote.
fn collapsed(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Every `### ` heading outside code blocks, with its section's text (up to the next
/// heading of level 3 or above).
fn sections(text: &str) -> Vec<(String, String)> {
    let mut found: Vec<(String, String)> = Vec::new();
    let mut current = None;
    let mut in_code = false;
    for line in text.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        }
        if !in_code && line.starts_with('#') && !line.starts_with("####") {
            current = line.strip_prefix("### ").map(|heading| {
                found.push((heading.trim().to_string(), String::new()));
                found.len() - 1
            });
            continue;
        }
        if let Some(index) = current {
            found[index].1.push_str(line);
            found[index].1.push('\n');
        }
    }
    found
}

/// Whether the runbook holds `case.heading` exactly once, and its section quotes every one
/// of `case.quotes`.
fn check(sections: &[(String, String)], case: &Case) -> Result<(), String> {
    let bodies: Vec<&String> = sections
        .iter()
        .filter(|(heading, _)| *heading == case.heading)
        .map(|(_, body)| body)
        .collect();
    let body = match bodies.as_slice() {
        [body] => collapsed(body),
        [] => return Err(format!("no heading \"### {}\"", case.heading)),
        _ => {
            return Err(format!(
                "heading \"### {}\" is there {} times",
                case.heading,
                bodies.len()
            ))
        }
    };
    let missing: Vec<&str> = case
        .quotes
        .iter()
        .map(String::as_str)
        .filter(|quote| !body.contains(&collapsed(quote)))
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "\"### {}\" does not quote {missing:?}",
            case.heading
        ))
    }
}

/// The message of the last line the failure machine writes when `kind` strikes a serving
/// instance under `policy`: its final answer (a halt, or continuing degraded once retries
/// are spent), as the service logs it.
fn final_answer(policy: &Policy, kind: FailureKind) -> String {
    let script = dry_run::parse_events(&format!("started,recovered,{kind}"))
        .expect("every failure kind is a dry-run event");
    let mut out = Vec::new();
    dry_run::run(
        policy,
        "vigil",
        Start::default(),
        &script,
        Format::Text,
        &mut out,
    )
    .expect("a dry-run writes into memory");
    let transcript = String::from_utf8(out).expect("a dry-run writes UTF-8");
    transcript
        .lines()
        .filter(|line| line.contains(" machine=failure "))
        .filter_map(|line| line.split_once("vigil::transition: "))
        .filter_map(|(_, rest)| rest.split_once(" instance="))
        .map(|(message, _)| message.to_string())
        .next_back()
        .unwrap_or_else(|| panic!("the dry-run of {kind} logs no failure line:\n{transcript}"))
}

/// The name of every check a receipt can list (and so a consistency alarm can name), in the
/// library's own order: a clean recovery of nothing runs every check, and rows that do not
/// decode add the one that says so.
fn check_names() -> Vec<&'static str> {
    let instruments = vigil::domain::default_instruments();
    let terms = Terms {
        tolerance: Policy::builtin_default().recovery.tolerance,
        instruments: &instruments,
        initial_capital: None,
    };
    let everything = RecoveryRows {
        schema: Some(Schema::default()),
        ..RecoveryRows::default()
    };
    let undecodable = RecoveryRows {
        portfolio: Some(PortfolioRow {
            initial_capital: Some("not a number".into()),
            closed_equity: None,
            total_risk: None,
            margin_used: None,
            version: 1,
        }),
        ..RecoveryRows::default()
    };
    let mut names = Vec::new();
    for rows in [everything, undecodable] {
        let (_, receipt) = recovery::recover(rows, &terms);
        let witness = recovery::Witness {
            file: "FILE".into(),
            written_at: "AT".into(),
            portfolio_version: 1,
            skipped: 0,
            stale: None,
        };
        let receipt = receipt
            .with_journal(0, None)
            .with_witness(Some(1), Some(&witness));
        for check in receipt.checks {
            if !names.contains(&check.name) {
                names.push(check.name);
            }
        }
    }
    names
}

/// Every exit code a vigil process ends with: its own and the halts of the shipped policies.
fn exit_codes() -> Vec<u8> {
    let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let mut codes = vec![EXIT_OK, EXIT_INVALID, EXIT_FAILURE];
    codes.extend(RESERVED_EXIT_CODES);
    for entry in std::fs::read_dir(&policies).expect("policies/ is readable") {
        let path = entry.expect("policies/ lists its files").path();
        let policy = Policy::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        codes.extend(
            FailureKind::ALL
                .map(|kind| policy.halt_code(kind))
                .into_iter()
                .flatten(),
        );
    }
    codes.sort_unstable();
    codes.dedup();
    codes
}

/// What the runbook quotes for exit code `code`, where the library formats the words.
fn exit_quotes(code: u8) -> Vec<String> {
    let held = Held::Here {
        id: "ID".into(),
        lock: "LOCK".into(),
    }
    .to_string();
    let (_, what_to_do) = held
        .split_once("LOCK; ")
        .expect("the refusal names the lock, then what to do");
    match code {
        6 => vec![what_to_do.to_string()],
        7 => {
            let usage = vigil::restarts::Usage {
                counted: 10,
                max: 10,
                window_s: 3600,
                by_instance: Vec::new(),
            };
            let refusal = vigil::restarts::refusal(PreviousEnd::Killed, &usage);
            let (_, what_to_do) = refusal
                .split_once("within 1h; ")
                .expect("the refusal names the budget, then what to do");
            vec![what_to_do.to_string()]
        }
        130 => vec![forced_line(
            "SIGTERM",
            Left {
                in_flight: 0,
                journaled: 0,
            },
        )],
        _ => Vec::new(),
    }
}

/// The journal states, each with the words the library gives it.
fn journal_cases() -> Vec<Case> {
    let damaged = JournalError::Corrupt {
        path: "JOURNAL".into(),
        corrupt: Corrupt {
            offset: 0,
            reason: "REASON".into(),
        },
    }
    .to_string();
    let (_, left_as_it_is) = damaged
        .split_once("REASON; ")
        .expect("the damage names the record, then what was done");
    let full = JournalError::Full {
        limit_bytes: MAX_JOURNAL_BYTES,
    }
    .to_string();
    let slow = format!(
        "the intake journal did not fsync within {} ms",
        JOURNAL_APPEND_TIMEOUT.as_millis()
    );
    [
        ("backlog", vec![JOURNAL_PENDING.to_string()]),
        ("full", vec![full]),
        ("corrupt record", vec![left_as_it_is.to_string()]),
        ("torn record", Vec::new()),
        ("slow disk", vec![slow]),
    ]
    .into_iter()
    .map(|(state, quotes)| case(format!("Journal `{state}`"), quotes))
    .collect()
}

/// Every heading the runbook must hold, with what each section quotes.
fn cases() -> Vec<Case> {
    let policy = Policy::builtin_default();
    let mut cases: Vec<Case> = FailureKind::ALL
        .into_iter()
        .map(|kind| {
            let quotes = vec![
                kind.code().to_string(),
                format!("reason={kind}"),
                final_answer(&policy, kind),
            ];
            case(format!("`{kind}`"), quotes)
        })
        .collect();
    cases.push(case(
        format!("Alarm `{ALARM}`"),
        vec![
            format!("{ALARM}: recovery receipt: "),
            CONSISTENCY_OK.to_string(),
            CONSISTENCY_ALARMS.to_string(),
        ],
    ));
    cases.extend(
        check_names()
            .into_iter()
            .map(|name| case(format!("Check `{name}`"), Vec::new())),
    );
    cases.extend(journal_cases());
    cases.extend(
        exit_codes()
            .into_iter()
            .map(|code| case(format!("Exit code {code}"), exit_quotes(code))),
    );
    cases
}

#[test]
fn every_code_has_its_heading_and_quotes_what_vigil_says() {
    let sections = sections(&runbook());
    let problems: Vec<String> = cases()
        .iter()
        .filter_map(|case| check(&sections, case).err())
        .collect();
    assert!(problems.is_empty(), "RUNBOOK.md:\n{}", problems.join("\n"));
}

#[test]
fn no_heading_names_a_code_that_no_longer_exists() {
    let known: Vec<String> = cases().into_iter().map(|case| case.heading).collect();
    let unknown: Vec<String> = sections(&runbook())
        .into_iter()
        .map(|(heading, _)| heading)
        .filter(|heading| !known.contains(heading))
        .collect();
    assert!(
        unknown.is_empty(),
        "RUNBOOK.md has headings for what vigil no longer has (or in another form): {unknown:?}; \
         the known headings are {known:?}"
    );
}

/// A `vigil` command as the runbook shows it in a code block, cut before any pipe,
/// redirection, `;`, `&&` or comment.
fn vigil_command(line: &str) -> Option<Vec<&str>> {
    let line = line.trim();
    let line = line.strip_prefix("$ ").unwrap_or(line);
    if !line.starts_with("vigil ") {
        return None;
    }
    let end = ["|", ">", ";", "&&", "#"]
        .iter()
        .filter_map(|stop| line.find(stop))
        .min()
        .unwrap_or(line.len());
    let words: Vec<&str> = line[..end].split_whitespace().collect();
    // `2>` leaves its `2` behind.
    Some(match words.last() {
        Some(&"2") if line[end..].starts_with('>') => words[..words.len() - 1].to_vec(),
        _ => words,
    })
}

#[test]
fn every_vigil_command_in_the_runbook_parses() {
    let text = runbook();
    let mut in_code = false;
    let mut commands = 0;
    let mut refused = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        let Some(words) = vigil_command(line).filter(|_| in_code) else {
            continue;
        };
        commands += 1;
        let parsed = Cli::try_parse_from(&words).map(|_| ()).or_else(|error| {
            // `--help` and `--version` are answers, not refusals.
            match error.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => Ok(()),
                _ => Err(error),
            }
        });
        if let Err(error) = parsed {
            refused.push(format!(
                "RUNBOOK.md:{}: {}\n{}",
                number + 1,
                words.join(" "),
                error.render()
            ));
        }
    }
    assert!(
        commands >= 10,
        "the runbook shows {commands} vigil commands"
    );
    assert!(refused.is_empty(), "{}", refused.join("\n"));
}
