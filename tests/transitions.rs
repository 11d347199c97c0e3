//! Every transition of both machines, under every policy in `policies/`, with the exact log
//! lines it writes, under insta snapshots in `snapshots/`.
//!
//! Nothing here names a policy or a scenario: a new file in `policies/` or in
//! `tests/data/scenarios/` gets its snapshots with no new test code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use vigil::driver::Input;
use vigil::dry_run::{self, Format, Start};
use vigil::machines::lifecycle;
use vigil::policy::Policy;
use vigil::spec::MachineSpec;
use vigil::vocabulary::FailureKind;

/// Files in `dir` ending in `.toml`, sorted so snapshots are stable.
fn toml_files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    files
}

fn stem(path: &Path) -> String {
    path.file_stem().unwrap().to_string_lossy().into_owned()
}

/// Loads a shipped policy under its repository-relative name, as the CLI would show it.
fn policy(path: &Path) -> Policy {
    let relative = Path::new("policies").join(path.file_name().unwrap());
    Policy::parse(&relative, &std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Every start the dry-run offers under `policy`: each lifecycle state, `degraded` once per
/// reason the policy tolerates, and `crashed` once per reason it halts on.
fn starts(policy: &Policy) -> Vec<(String, Start)> {
    let mut starts = Vec::new();
    for state in lifecycle::State::NAMES {
        match state {
            "degraded" | "crashed" => {
                for kind in FailureKind::ALL {
                    if let Ok(start) = Start::parse(state, Some(kind.as_str()), policy) {
                        starts.push((format!("{state}_{kind}"), start));
                    }
                }
            }
            _ => starts.push((
                state.to_string(),
                Start::parse(state, None, policy).unwrap(),
            )),
        }
    }
    starts
}

/// The accept set a step's JSON publishes last, rendered as log lines render it.
fn published(step: &serde_json::Value) -> Option<String> {
    let publish = step["commands"]
        .as_array()
        .unwrap()
        .iter()
        .rfind(|command| command["command"] == "publish")?;
    let names: Vec<&str> = publish["signals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|name| name.as_str().unwrap())
        .collect();
    Some(match names.is_empty() {
        true => "none".to_string(),
        false => names.join("+"),
    })
}

/// Runs one dry-run and returns its text transcript and the transitions it took.
fn dry_run(
    policy: &Policy,
    start: Start,
    script: &[Input],
) -> (String, Vec<(String, String, String, String)>) {
    let mut text = Vec::new();
    dry_run::run(policy, "vigil", start, script, Format::Text, &mut text).unwrap();
    let mut json = Vec::new();
    dry_run::run(policy, "vigil", start, script, Format::Json, &mut json).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let mut taken = Vec::new();
    for step in json["steps"].as_array().unwrap() {
        for transition in step["transitions"].as_array().unwrap() {
            let field = |name: &str| transition[name].as_str().unwrap().to_string();
            if field("event") != "init" {
                taken.push((field("machine"), field("from"), field("event"), field("to")));
            }
            // A log line never names an accept set other than the one in effect.
            if field("machine") == "lifecycle" {
                if let Some(named) = vigil::machines::named_accept_set(&field("message")) {
                    assert_eq!(
                        Some(named),
                        published(step),
                        "{}: {:?} names an accept set the step does not publish",
                        policy.name,
                        field("message")
                    );
                }
            }
        }
    }
    (String::from_utf8(text).unwrap(), taken)
}

fn snapshot(name: &str, text: &str) {
    insta::with_settings!({ snapshot_path => "../snapshots", prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!(name, text);
    });
}

#[test]
fn every_transition_under_every_policy() {
    let specs = MachineSpec::shipped().unwrap();
    let mut listed: BTreeSet<(String, String, String, String)> = BTreeSet::new();
    for spec in &specs {
        for transition in &spec.transitions {
            for from in transition.from.iter() {
                listed.insert((
                    spec.machine.clone(),
                    from.to_string(),
                    transition.event.clone(),
                    transition.to.clone(),
                ));
            }
        }
    }
    let mut covered: BTreeMap<String, BTreeSet<(String, String, String, String)>> = BTreeMap::new();
    let mut snapshots = 0;
    for path in toml_files("policies") {
        let policy = policy(&path);
        let name = stem(&path);
        // One event from every start state.
        for (label, start) in starts(&policy) {
            let mut transcript = String::new();
            for input in Input::all() {
                let (text, taken) = dry_run(&policy, start, &[input]);
                transcript.push_str(&format!("==== --from {label} --event {input}\n{text}\n"));
                covered.entry(name.clone()).or_default().extend(taken);
            }
            snapshot(&format!("transitions__{name}__{label}"), &transcript);
            snapshots += 1;
        }
        // Stories of several events from the initial state.
        for scenario in toml_files("tests/data/scenarios") {
            let source = std::fs::read_to_string(&scenario).unwrap();
            let script = dry_run::load_scenario(&scenario, &source).unwrap();
            let (text, taken) = dry_run(&policy, Start::default(), &script);
            snapshot(&format!("scenario__{name}__{}", stem(&scenario)), &text);
            covered.entry(name.clone()).or_default().extend(taken);
            snapshots += 1;
        }
    }

    // Every transition the specs list is taken under at least one policy, and nothing is
    // taken that the specs do not list.
    let union: BTreeSet<_> = covered.values().flatten().cloned().collect();
    let missing: Vec<_> = listed.difference(&union).collect();
    assert!(
        missing.is_empty(),
        "transitions no snapshot covers: {missing:?}"
    );
    let unlisted: Vec<_> = union.difference(&listed).collect();
    assert!(
        unlisted.is_empty(),
        "transitions taken but not in machines/*.toml: {unlisted:?}"
    );

    let mut summary = format!(
        "{} snapshots; {} listed (machine, transition) pairs; covered per policy:\n",
        snapshots + 1,
        listed.len()
    );
    let mut triples = 0;
    for (policy, taken) in &covered {
        triples += taken.len();
        summary.push_str(&format!(
            "  {policy}: {} of {}\n",
            taken.len(),
            listed.len()
        ));
        for transition in listed.difference(taken) {
            summary.push_str(&format!(
                "    not reachable: {} {} --{}--> {}\n",
                transition.0, transition.1, transition.2, transition.3
            ));
        }
    }
    summary.push_str(&format!(
        "(machine, transition, policy) triples covered: {triples}\n"
    ));
    snapshot("transitions__coverage", &summary);
}
