//! The deployment file (`vigil.toml`): which instance this is, where its database lives,
//! which policy it follows and the instruments it trades. Environment variables override
//! it and command-line flags override both; the command line does that layering.

use crate::diagnostic::{Diagnostic, Diagnostics};
use crate::domain::Instrument;
use rust_decimal::Decimal;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// The deployment file read when `--config` is not given, if it exists.
pub const DEFAULT_DEPLOYMENT_FILE: &str = "vigil.toml";

/// A validated deployment file.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Deployment {
    /// The instance id written into logs and the instance table.
    pub instance: Option<String>,
    /// `sqlite://FILE` or `postgres://…`.
    pub database_url: Option<String>,
    /// `redis://HOST:PORT`, for several instances on one PostgreSQL database.
    pub redis_url: Option<String>,
    /// The policy file, relative to the deployment file.
    pub policy: Option<PathBuf>,
    /// Contract terms per instrument.
    pub instruments: BTreeMap<String, Instrument>,
    /// The address the HTTP listener binds.
    pub listen: Option<String>,
    /// The webhook passphrase TradingView alerts must carry.
    pub webhook_passphrase: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeployment {
    instance: Option<String>,
    database_url: Option<String>,
    redis_url: Option<String>,
    policy: Option<PathBuf>,
    listen: Option<String>,
    webhook_passphrase: Option<String>,
    #[serde(default)]
    instruments: BTreeMap<String, RawInstrument>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInstrument {
    lot_size: Spanned<String>,
    point_value: Spanned<String>,
    margin_per_lot: Spanned<String>,
}

/// Why a deployment file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum DeploymentError {
    /// The file could not be read.
    #[error("cannot read deployment file {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// The operating system's reason.
        reason: std::io::Error,
    },
    /// The file is not a valid deployment file.
    #[error("{0}")]
    Invalid(Diagnostics),
}

impl Deployment {
    /// Parses deployment text; `path` locates errors and anchors the relative policy path.
    pub fn parse(path: &Path, source: &str) -> Result<Deployment, Diagnostics> {
        let raw: RawDeployment = toml::from_str(source).map_err(|error| {
            let hint = error
                .message()
                .starts_with("unknown field")
                .then(|| "the README's deployment section lists every key".to_string());
            Diagnostics(vec![Diagnostic::at(
                path,
                source,
                error.span(),
                error.message().trim(),
                hint,
            )])
        })?;
        let mut diagnostics = Vec::new();
        let mut instruments = BTreeMap::new();
        for (name, raw) in raw.instruments {
            let mut field = |value: &Spanned<String>, key: &str| -> Decimal {
                match crate::domain::parse_decimal(value.get_ref().trim()) {
                    Some(number) if number > Decimal::ZERO => number,
                    Some(number) => {
                        diagnostics.push(Diagnostic::at(
                            path,
                            source,
                            Some(value.span()),
                            format!("instruments.{name}.{key} must be positive, found {number}"),
                            None,
                        ));
                        Decimal::ONE
                    }
                    None => {
                        diagnostics.push(Diagnostic::at(
                            path,
                            source,
                            Some(value.span()),
                            format!(
                                "instruments.{name}.{key} = {:?} is not a decimal number",
                                value.get_ref()
                            ),
                            Some(format!(
                                r#"decimals are quoted strings, for example {key} = "50""#
                            )),
                        ));
                        Decimal::ONE
                    }
                }
            };
            let instrument = Instrument {
                lot_size: field(&raw.lot_size, "lot_size"),
                point_value: field(&raw.point_value, "point_value"),
                margin_per_lot: field(&raw.margin_per_lot, "margin_per_lot"),
            };
            // Signals name instruments upper-cased; so does the table.
            instruments.insert(name.to_ascii_uppercase(), instrument);
        }
        if !diagnostics.is_empty() {
            return Err(Diagnostics(diagnostics));
        }
        let base = path.parent().unwrap_or(Path::new(""));
        Ok(Deployment {
            instance: raw.instance,
            database_url: raw.database_url,
            redis_url: raw.redis_url,
            policy: raw.policy.map(|policy| base.join(policy)),
            instruments,
            listen: raw.listen,
            webhook_passphrase: raw.webhook_passphrase,
        })
    }

    /// Reads `path`; with no path, reads `vigil.toml` if it exists and otherwise returns the
    /// empty deployment.
    pub fn load(path: Option<&Path>) -> Result<Deployment, DeploymentError> {
        let (path, required) = match path {
            Some(path) => (path, true),
            None => (Path::new(DEFAULT_DEPLOYMENT_FILE), false),
        };
        let source = match std::fs::read_to_string(path) {
            Ok(source) => source,
            Err(error) if !required && error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Deployment::default())
            }
            Err(reason) => {
                return Err(DeploymentError::Read {
                    path: path.display().to_string(),
                    reason,
                })
            }
        };
        Deployment::parse(path, &source).map_err(DeploymentError::Invalid)
    }
}
