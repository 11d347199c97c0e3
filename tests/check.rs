#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `vigil check`, driven by data: every broken policy in `tests/data/policies/` must be
//! rejected with a located diagnostic, every policy in `tests/data/warning_policies/` accepted
//! with a located warning, and every shipped policy accepted without a word.
//!
//! Adding a case is adding a file: `tests/data/policies/<name>.toml`, starting with a `#`
//! comment that says what is broken. Its stderr is snapshotted as `snapshots/check__<name>.snap`.
//! A file that works but has a setting that defeats its purpose goes in
//! `tests/data/warning_policies/<name>.toml`, with a `#` comment saying what it warns of; its
//! stderr is snapshotted as `snapshots/check__warning_<name>.snap`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `.toml` files directly in `dir` (relative to the crate root), sorted, as relative
/// paths so that the output does not depend on where the crate is checked out.
fn toml_files(dir: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(root.join(dir))
        .unwrap_or_else(|error| panic!("cannot list {dir}: {error}"))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .map(|path| Path::new(dir).join(path.file_name().unwrap()))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .toml files in {dir}");
    files
}

/// Runs the real binary from the crate root.
fn vigil(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vigil"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .expect("cannot run vigil")
}

#[test]
fn broken_policies_are_rejected_with_a_location() {
    for file in toml_files("tests/data/policies") {
        let path = file.to_str().unwrap();
        let stem = file.file_stem().unwrap().to_str().unwrap();
        let output = vigil(&["check", path]);
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(
            output.status.code(),
            Some(3),
            "`vigil check {path}` should exit 3; stderr:\n{stderr}"
        );
        let location = regex::Regex::new(&format!(r"{}:\d+:\d+", regex::escape(path))).unwrap();
        assert!(
            location.is_match(&stderr),
            "`vigil check {path}` should name {path}:<line>:<column>; stderr:\n{stderr}"
        );
        insta::with_settings!({snapshot_path => "../snapshots", prepend_module_to_snapshot => false}, {
            insta::assert_snapshot!(format!("check__{stem}"), stderr);
        });
    }
}

#[test]
fn policies_that_defeat_their_purpose_are_accepted_with_a_located_warning() {
    for file in toml_files("tests/data/warning_policies") {
        let path = file.to_str().unwrap();
        let stem = file.file_stem().unwrap().to_str().unwrap();
        let output = vigil(&["check", path]);
        let stdout = String::from_utf8(output.stdout).unwrap();
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(
            output.status.code(),
            Some(0),
            "`vigil check {path}` should exit 0; stderr:\n{stderr}"
        );
        let warnings = stderr.matches("warning: ").count();
        assert!(
            warnings >= 1 && !stderr.contains("error: "),
            "`vigil check {path}` should print warnings and no error; stderr:\n{stderr}"
        );
        let location = regex::Regex::new(&format!(
            r"(?m)^warning: .*\n *--> {}:\d+:\d+$",
            regex::escape(path)
        ))
        .unwrap();
        assert_eq!(
            location.find_iter(&stderr).count(),
            warnings,
            "every warning of `vigil check {path}` should name {path}:<line>:<column>; stderr:\n{stderr}"
        );
        let noun = if warnings == 1 { "warning" } else { "warnings" };
        assert_eq!(
            stdout,
            format!("{path}: ok ({warnings} {noun})\n"),
            "`vigil check {path}` should say it is ok, with its warnings"
        );
        insta::with_settings!({snapshot_path => "../snapshots", prepend_module_to_snapshot => false}, {
            insta::assert_snapshot!(format!("check__warning_{stem}"), stderr);
        });
    }
}

#[test]
fn shipped_policies_are_valid() {
    let files = toml_files("policies");
    let paths: Vec<&str> = files.iter().map(|file| file.to_str().unwrap()).collect();
    let mut args = vec!["check"];
    args.extend(&paths);
    let output = vigil(&args);
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "`vigil check {}` should exit 0; stderr:\n{stderr}",
        paths.join(" ")
    );
    for path in &paths {
        assert!(
            stdout.lines().any(|line| line == format!("{path}: ok")),
            "`vigil check` should print `{path}: ok`, with no warning; stdout:\n{stdout}"
        );
    }
    assert_eq!(
        stderr, "",
        "`vigil check` should print nothing on stderr for the shipped policies: no warning"
    );
}

#[test]
fn the_example_deployment_file_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/vigil.toml");
    let deployment = vigil::deployment::Deployment::load(Some(&path)).unwrap();
    assert_eq!(deployment.instance.as_deref(), Some("vigil-1"));
    assert_eq!(deployment.instruments.len(), 2);
    let policy = deployment.policy.unwrap();
    assert!(
        vigil::policy::Policy::load(&policy).is_ok(),
        "{} does not load",
        policy.display()
    );
}
