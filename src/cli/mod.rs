//! The `vigil` command line. Each subcommand returns an [`Outcome`] that maps to a
//! documented exit code; errors meant for people carry file:line:column and a hint.

mod operate;
mod service;

use crate::diagnostic::Diagnostics;
use crate::dry_run::{self, Format, Start};
use crate::policy::{Policy, PolicyError};
use crate::spec::{render, MachineSpec, RenderFormat};
use anyhow::{bail, Context};
use clap::{CommandFactory, Parser, Subcommand};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Exit code: success.
pub const EXIT_OK: u8 = 0;
/// Exit code: a file given on the command line is invalid (policy, scenario).
pub const EXIT_INVALID: u8 = 3;
/// Exit code: something failed at run time (a file could not be read, output failed).
pub const EXIT_FAILURE: u8 = 4;

/// vigil keeps a webhook-driven live trading service safe across crashes, outages and
/// restarts.
#[derive(Debug, Parser)]
#[command(name = "vigil", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate policy files; every error names file:line:column and what to do.
    Check {
        /// Policy files to check.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Show what the service would do under a policy, with virtual time (no sleeping).
    #[command(name = "dry-run")]
    DryRun(DryRunArgs),
    /// Render the machine specs.
    Machines {
        /// `lifecycle` or `failure`; all machines when omitted.
        name: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: RenderFormat,
    },
    /// Start the instance: connect, migrate, recover, then serve until SIGTERM or SIGINT.
    Run(service::RunArgs),
    /// Check what recovery would find, read-only: print the receipt and exit with the code
    /// the service would (0 active, 5 degraded, the policy's code on a halt).
    Recover {
        /// Required: recovery itself only runs as part of `vigil run`.
        #[arg(long, required = true)]
        check: bool,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// Settings.
        #[command(flatten)]
        service: service::ServiceArgs,
    },
    /// List the instances the database knows: last status, host, heartbeat age.
    Status {
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// Settings.
        #[command(flatten)]
        service: service::ServiceArgs,
    },
    /// List the open positions, from the database (read-only).
    Positions {
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// Settings.
        #[command(flatten)]
        service: service::ServiceArgs,
    },
    /// Apply database migrations (idempotent).
    Migrate {
        /// Settings.
        #[command(flatten)]
        service: service::ServiceArgs,
    },
    /// Pause trading on every instance within one heartbeat: alerts are answered and recorded
    /// refused by the operator, never applied, until `vigil resume`.
    Pause {
        /// Keep applying EXIT alerts, so open positions can still be closed.
        #[arg(long)]
        exits_only: bool,
        /// Why, recorded with the switch and shown by `vigil status`.
        #[arg(long, value_name = "TEXT", default_value = "")]
        reason: String,
        /// Settings.
        #[command(flatten)]
        service: service::ServiceArgs,
    },
    /// Lift `vigil pause`: every instance applies every signal type again within one heartbeat.
    Resume {
        /// Settings.
        #[command(flatten)]
        service: service::ServiceArgs,
    },
    /// Write a snapshot of the stored state now (do it before every deployment).
    Snapshot {
        /// Settings.
        #[command(flatten)]
        service: service::ServiceArgs,
    },
    /// Load a snapshot into an empty database, after recovery's checks pass on it.
    Restore {
        /// The snapshot file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Settings.
        #[command(flatten)]
        service: service::ServiceArgs,
    },
    /// The restart budget (`vigil status` shows it).
    Restarts {
        /// What to do with it.
        #[command(subcommand)]
        command: RestartsCommand,
    },
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// What `vigil restarts` does.
#[derive(Debug, Subcommand)]
pub enum RestartsCommand {
    /// Stop counting the restarts so far: the next start after an unclean end is admitted.
    Reset {
        /// Settings.
        #[command(flatten)]
        service: service::ServiceArgs,
    },
}

/// Arguments of `vigil dry-run`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("script").required(true).args(["events", "scenario", "event"])))]
pub struct DryRunArgs {
    /// The policy file.
    #[arg(long, value_name = "FILE")]
    pub policy: PathBuf,
    /// Comma-separated events, delivered from the initial state (see the README for names).
    #[arg(long, value_name = "A,B,C")]
    pub events: Option<String>,
    /// A scenario file: `events = ["started", ...]`.
    #[arg(long, value_name = "FILE", conflicts_with = "events")]
    pub scenario: Option<PathBuf>,
    /// Start from this lifecycle state instead of the initial one.
    #[arg(long, value_name = "STATE")]
    pub from: Option<String>,
    /// With `--from degraded`: the failure kind it is degraded for (default db_unavailable;
    /// the policy must tolerate it). With `--from crashed`: the kind it halted on (default:
    /// the first the policy halts on), whose exit code the run ends with.
    #[arg(long, value_name = "KIND", requires = "from")]
    pub reason: Option<String>,
    /// One event to deliver from the `--from` state.
    #[arg(long, value_name = "EVENT", requires = "from", conflicts_with_all = ["events", "scenario"])]
    pub event: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// The instance id written in log lines.
    #[arg(long, default_value = "vigil", env = "VIGIL_INSTANCE")]
    pub instance: String,
}

/// How a command ended, for the exit code.
#[derive(Debug)]
pub enum Outcome {
    /// Everything worked.
    Ok,
    /// A file given by the user is invalid; the diagnostics were printed.
    Invalid,
    /// A file could not be read; the error was printed.
    Failed,
    /// The command decided its own exit code (the service, `recover --check`).
    Exit(u8),
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(Outcome::Ok) => ExitCode::from(EXIT_OK),
        Ok(Outcome::Invalid) => ExitCode::from(EXIT_INVALID),
        Ok(Outcome::Failed) => ExitCode::from(EXIT_FAILURE),
        Ok(Outcome::Exit(code)) => ExitCode::from(code),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Runs one parsed command.
pub fn run(cli: Cli) -> anyhow::Result<Outcome> {
    match cli.command {
        Command::Check { files } => check(&files),
        Command::DryRun(args) => dry_run_command(&args),
        Command::Machines { name, format } => machines(name.as_deref(), format),
        Command::Run(args) => service::run(&args),
        Command::Recover {
            check: _,
            format,
            service,
        } => service::recover_check(&service, format),
        Command::Migrate { service } => service::migrate(&service),
        Command::Pause {
            exits_only,
            reason,
            service,
        } => {
            let pause = match exits_only {
                true => crate::store::operations::Pause::ExitsOnly,
                false => crate::store::operations::Pause::All,
            };
            operate::set_pause(&service, pause, &reason)
        }
        Command::Resume { service } => {
            operate::set_pause(&service, crate::store::operations::Pause::None, "")
        }
        Command::Restarts {
            command: RestartsCommand::Reset { service },
        } => operate::reset_restarts(&service),
        Command::Snapshot { service } => operate::snapshot(&service),
        Command::Restore { file, service } => operate::restore(&service, &file),
        Command::Status { format, service } => service::status(&service, format),
        Command::Positions { format, service } => service::positions(&service, format),
        Command::Completions { shell } => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "vigil", &mut script);
            write_stdout(&script)?;
            Ok(Outcome::Ok)
        }
    }
}

fn check(files: &[PathBuf]) -> anyhow::Result<Outcome> {
    let mut outcome = Outcome::Ok;
    for file in files {
        match Policy::load(file) {
            Ok(policy) => {
                for warning in &policy.warnings {
                    eprintln!("{warning}\n");
                }
                let verdict = match policy.warnings.len() {
                    0 => "ok".to_string(),
                    1 => "ok (1 warning)".to_string(),
                    count => format!("ok ({count} warnings)"),
                };
                write_stdout(format!("{}: {verdict}\n", file.display()).as_bytes())?;
            }
            Err(PolicyError::Invalid(diagnostics)) => {
                eprintln!("{diagnostics}\n");
                let count = diagnostics.0.len();
                let noun = if count == 1 { "problem" } else { "problems" };
                eprintln!("{}: invalid ({count} {noun})", file.display());
                if !matches!(outcome, Outcome::Failed) {
                    outcome = Outcome::Invalid;
                }
            }
            Err(error @ PolicyError::Read { .. }) => {
                eprintln!("error: {error}");
                outcome = Outcome::Failed;
            }
        }
    }
    Ok(outcome)
}

/// Loads a policy, printing its diagnostics when it is invalid.
fn load_policy(path: &Path) -> anyhow::Result<Option<Policy>> {
    match Policy::load(path) {
        Ok(policy) => Ok(Some(policy)),
        Err(PolicyError::Invalid(diagnostics)) => {
            eprintln!("{diagnostics}");
            Ok(None)
        }
        Err(error) => Err(error.into()),
    }
}

fn dry_run_command(args: &DryRunArgs) -> anyhow::Result<Outcome> {
    let Some(policy) = load_policy(&args.policy)? else {
        return Ok(Outcome::Invalid);
    };
    let start = match &args.from {
        Some(state) => match Start::parse(state, args.reason.as_deref(), &policy) {
            Ok(start) => start,
            Err(problem) => {
                eprintln!("error: {problem}");
                return Ok(Outcome::Invalid);
            }
        },
        None => Start::default(),
    };
    let parsed = match (&args.events, &args.scenario, &args.event) {
        // Every refusal reads `error: ...`; a scenario's diagnostics say so themselves.
        (Some(list), _, _) => {
            dry_run::parse_events(list).map_err(|problem| format!("error: {problem}"))
        }
        (_, Some(path), _) => {
            let source = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read scenario {}", path.display()))?;
            dry_run::load_scenario(path, &source)
                .map_err(|diagnostics: Diagnostics| diagnostics.to_string())
        }
        (_, _, Some(event)) => dry_run::parse_event(event)
            .map(|input| vec![input])
            .map_err(|problem| format!("error: {problem}")),
        (None, None, None) => bail!("give --events, --scenario or --event"),
    };
    let script = match parsed {
        Ok(script) => script,
        Err(problem) => {
            eprintln!("{problem}");
            return Ok(Outcome::Invalid);
        }
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    // A reader that went away (`| head`) has seen all it wanted: that is not a failure.
    let written = dry_run::run(
        &policy,
        &args.instance,
        start,
        &script,
        args.format,
        &mut out,
    )
    .and_then(|_| out.flush());
    ignore_broken_pipe(written).context("cannot write the dry-run")?;
    Ok(Outcome::Ok)
}

fn machines(name: Option<&str>, format: RenderFormat) -> anyhow::Result<Outcome> {
    let specs = MachineSpec::shipped()?;
    let chosen: Vec<&MachineSpec> = specs
        .iter()
        .filter(|spec| name.is_none_or(|name| spec.machine == name))
        .collect();
    if chosen.is_empty() {
        let known: Vec<&str> = specs.iter().map(|spec| spec.machine.as_str()).collect();
        eprintln!(
            "error: unknown machine `{}`; expected one of: {}",
            name.unwrap_or(""),
            known.join(", ")
        );
        return Ok(Outcome::Invalid);
    }
    // With no machine named, every machine goes into one document: two diagrams back to
    // back are not valid Mermaid, and Graphviz stops at the second.
    write_stdout(render(&chosen, format).as_bytes())?;
    Ok(Outcome::Ok)
}

/// Writes `bytes` to standard output. A reader that went away (`| head`) has seen all it
/// wanted, so a broken pipe is not an error.
fn write_stdout(bytes: &[u8]) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    let written = stdout.write_all(bytes).and_then(|()| stdout.flush());
    ignore_broken_pipe(written).context("cannot write to standard output")
}

fn ignore_broken_pipe<T>(result: std::io::Result<T>) -> std::io::Result<()> {
    match result {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(error) => Err(error),
    }
}
