//! The deployment file (`vigil.toml`): which instance this is, where its database lives,
//! which policy it follows and the instruments it trades. Environment variables override
//! it and command-line flags override both; the command line does that layering.

use crate::diagnostic::{Collector, Diagnostics, ReadText};
use crate::domain::Instrument;
use crate::http::source::{ForwardedHeader, SourcePolicy};
use ipnet::IpNet;
use rust_decimal::Decimal;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// The deployment file read when `--config` is not given, if it exists.
pub const DEFAULT_DEPLOYMENT_FILE: &str = "vigil.toml";

/// The environment variable holding the operator listener's bearer token; it overrides
/// `operator_token`.
pub const OPERATOR_TOKEN_ENV: &str = "VIGIL_OPERATOR_TOKEN";

/// A validated deployment file. Its `Debug` shows no secret.
#[derive(Clone, PartialEq, Default)]
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
    /// The account's capital before any trade: a new database's portfolio starts from it,
    /// and recovery holds the stored one to it.
    pub initial_capital: Option<Decimal>,
    /// The address the webhook listener binds.
    pub listen: Option<String>,
    /// The address the operator listener (`/ready`, `/status`, `/metrics`) binds.
    pub operator_listen: Option<String>,
    /// The bearer token the operator listener asks for.
    pub operator_token: Option<String>,
    /// The intake journal's directory, relative to the working directory.
    pub journal_dir: Option<PathBuf>,
    /// The state snapshots' directory, relative to the working directory.
    pub snapshot_dir: Option<PathBuf>,
    /// The webhook passphrase TradingView alerts must carry.
    pub webhook_passphrase: Option<String>,
    /// Who may send webhooks, and how signed ones are checked (`[webhook]`).
    pub webhook: WebhookSettings,
    /// Where notifications go (`[[notify]]`), secrets not yet read.
    pub notify: Vec<crate::notify::SinkSpec>,
}

impl std::fmt::Debug for Deployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |secret: &Option<String>| secret.as_ref().map(|_| "<redacted>");
        f.debug_struct("Deployment")
            .field("instance", &self.instance)
            .field(
                "database_url",
                &self.database_url.as_deref().map(crate::store::redact),
            )
            .field(
                "redis_url",
                &self.redis_url.as_deref().map(crate::store::redact),
            )
            .field("policy", &self.policy)
            .field("instruments", &self.instruments)
            .field("initial_capital", &self.initial_capital)
            .field("listen", &self.listen)
            .field("operator_listen", &self.operator_listen)
            .field("operator_token", &redacted(&self.operator_token))
            .field("journal_dir", &self.journal_dir)
            .field("snapshot_dir", &self.snapshot_dir)
            .field("webhook_passphrase", &redacted(&self.webhook_passphrase))
            .field("webhook", &self.webhook)
            .field("notify", &self.notify)
            .finish()
    }
}

/// The `[webhook]` table.
#[derive(Clone, PartialEq, Default)]
pub struct WebhookSettings {
    /// Who may send webhooks, and which proxies are believed about who sent them.
    pub sources: SourcePolicy,
    /// Keys whose HMAC signatures are valid (two while rotating); empty: none checked.
    pub signature_keys: Vec<String>,
    /// How far a signature's time may be from now.
    pub signature_tolerance: Duration,
    /// Whether unsigned webhooks are refused.
    pub require_signature: bool,
}

impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("sources", &self.sources)
            .field(
                "signature_keys",
                &format_args!("<{} redacted>", self.signature_keys.len()),
            )
            .field("signature_tolerance", &self.signature_tolerance)
            .field("require_signature", &self.require_signature)
            .finish()
    }
}

/// How far a signature's time may be from now, unless the deployment says otherwise.
pub const DEFAULT_SIGNATURE_TOLERANCE: Duration = Duration::from_secs(300);

/// The longest signature tolerance a deployment may set: the replay check remembers every
/// signature for this long.
pub const MAX_SIGNATURE_TOLERANCE: Duration = Duration::from_secs(3600);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeployment {
    instance: Option<String>,
    database_url: Option<String>,
    redis_url: Option<String>,
    policy: Option<PathBuf>,
    listen: Option<String>,
    operator_listen: Option<String>,
    operator_token: Option<Spanned<String>>,
    journal_dir: Option<PathBuf>,
    snapshot_dir: Option<PathBuf>,
    webhook_passphrase: Option<String>,
    initial_capital: Option<Spanned<String>>,
    #[serde(default)]
    instruments: BTreeMap<String, RawInstrument>,
    #[serde(default)]
    webhook: RawWebhook,
    #[serde(default)]
    notify: Vec<RawNotify>,
}

/// One `[[notify]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    name: Option<String>,
    kind: Spanned<String>,
    webhook_url: Option<Spanned<String>>,
    webhook_url_env: Option<String>,
    bot_token: Option<Spanned<String>>,
    bot_token_env: Option<String>,
    chat_id: Option<String>,
    api_url: Option<String>,
    events: Option<Vec<Spanned<String>>>,
}

/// The kinds of `[[notify]]` sink.
const NOTIFY_KINDS: [&str; 4] = ["webhook", "slack", "discord", "telegram"];

/// Reads the `[[notify]]` tables, adding a diagnostic for each that cannot be used; a
/// diagnostic never shows a webhook URL or a bot token.
fn notify_sinks(file: &mut Collector<'_>, raw: Vec<RawNotify>) -> Vec<crate::notify::SinkSpec> {
    use crate::notify::{Event, SecretSource, SinkSpec, TELEGRAM_API_URL};
    let mut sinks = Vec::new();
    for (index, raw) in raw.into_iter().enumerate() {
        let kind = raw.kind.get_ref().trim().to_string();
        if !NOTIFY_KINDS.contains(&kind.as_str()) {
            let hint = crate::diagnostic::did_you_mean(&kind, &NOTIFY_KINDS, "the kinds");
            file.report(
                Some(raw.kind.span()),
                format!("notify.kind = {kind:?} is not a kind of sink vigil sends to"),
                Some(hint),
            );
            continue;
        }
        let name = raw.name.unwrap_or_else(|| format!("{kind} {}", index + 1));
        let secret = |inline: Option<Spanned<String>>, env: Option<String>| match (inline, env) {
            (_, Some(env)) => Some(SecretSource::Env(env)),
            (Some(inline), None) => Some(SecretSource::Inline(inline.into_inner())),
            (None, None) => None,
        };
        let webhook_url = secret(raw.webhook_url, raw.webhook_url_env);
        let bot_token = secret(raw.bot_token, raw.bot_token_env);
        let needs = match kind.as_str() {
            "telegram" => [
                (bot_token.is_none(), "bot_token_env (or bot_token)"),
                (raw.chat_id.is_none(), "chat_id"),
            ],
            _ => [
                (webhook_url.is_none(), "webhook_url_env (or webhook_url)"),
                (false, ""),
            ],
        };
        for (missing, key) in needs {
            if missing {
                file.report(
                    Some(raw.kind.span()),
                    format!("the {kind} sink {name:?} needs {key}"),
                    Some("secrets are best read from the environment: name the variable with the _env key".into()),
                );
            }
        }
        let events = match raw.events {
            None => Event::ALL.to_vec(),
            Some(names) => {
                let known = Event::ALL.map(Event::as_str);
                names
                    .iter()
                    .filter_map(|name| {
                        let parsed = Event::parse(name.get_ref().trim());
                        if parsed.is_none() {
                            let hint = crate::diagnostic::did_you_mean(
                                name.get_ref(),
                                &known,
                                "the events",
                            );
                            file.report(
                                Some(name.span()),
                                format!(
                                    "notify.events: {:?} is not an event vigil notifies",
                                    name.get_ref()
                                ),
                                Some(hint),
                            );
                        }
                        parsed
                    })
                    .collect()
            }
        };
        sinks.push(SinkSpec {
            name,
            kind,
            webhook_url,
            bot_token,
            chat_id: raw.chat_id,
            api_url: raw.api_url.unwrap_or_else(|| TELEGRAM_API_URL.to_string()),
            events,
        });
    }
    sinks
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    allow: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    trusted_proxies: Vec<Spanned<String>>,
    forwarded_header: Option<Spanned<String>>,
    #[serde(default)]
    signature_keys: Vec<Spanned<String>>,
    signature_tolerance: Option<Spanned<String>>,
    #[serde(default)]
    require_signature: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInstrument {
    lot_size: Spanned<String>,
    point_value: Spanned<String>,
    margin_per_lot: Spanned<String>,
    #[serde(default)]
    fractional_lots: bool,
}

/// Reads the `[webhook]` table, adding a diagnostic for each entry that cannot be used. A
/// diagnostic about a key never shows the key.
fn webhook_settings(file: &mut Collector<'_>, raw: RawWebhook) -> WebhookSettings {
    let mut networks = |entries: &[Spanned<String>], key: &str, preset: bool| -> Vec<IpNet> {
        let mut found = Vec::new();
        for entry in entries {
            match SourcePolicy::entry(entry.get_ref(), preset) {
                Ok(networks) => found.extend(networks),
                Err(problem) => {
                    file.report(
                        Some(entry.span()),
                        format!("webhook.{key}: {problem}"),
                        None,
                    );
                }
            }
        }
        found
    };
    let allow = raw
        .allow
        .as_deref()
        .map(|entries| networks(entries, "allow", true));
    let trusted_proxies = networks(&raw.trusted_proxies, "trusted_proxies", false);
    let header = match &raw.forwarded_header {
        None => ForwardedHeader::default(),
        Some(text) => ForwardedHeader::parse(text.get_ref()).unwrap_or_else(|| {
            file.report(
                Some(text.span()),
                format!(
                    "webhook.forwarded_header = {:?} is not a header vigil reads",
                    text.get_ref()
                ),
                Some(r#"write "x-forwarded-for" (nginx, most load balancers) or "forwarded" (RFC 7239)"#.into()),
            );
            ForwardedHeader::default()
        }),
    };
    let signature_tolerance = match raw.signature_tolerance {
        None => DEFAULT_SIGNATURE_TOLERANCE,
        Some(text) => {
            match humantime::parse_duration(text.get_ref().trim()) {
                Ok(tolerance)
                    if tolerance >= Duration::from_secs(1)
                        && tolerance <= MAX_SIGNATURE_TOLERANCE =>
                {
                    tolerance
                }
                _ => {
                    file.report(
                        Some(text.span()),
                        format!(
                            "webhook.signature_tolerance = {:?} is not a duration between 1s and 1h",
                            text.get_ref()
                        ),
                        Some(r#"write a duration with its unit, for example signature_tolerance = "5m""#.into()),
                    );
                    DEFAULT_SIGNATURE_TOLERANCE
                }
            }
        }
    };
    let mut signature_keys = Vec::new();
    for key in &raw.signature_keys {
        if !secret_is_long_enough(key.get_ref()) {
            let problem = file.report(
                Some(key.span()),
                format!("webhook.signature_keys: a key is shorter than {MIN_SECRET_BYTES} bytes"),
                Some(
                    "use a random key of 32 bytes or more, for example `openssl rand -hex 32`"
                        .into(),
                ),
            );
            hide_secret(problem, key.get_ref());
        }
        signature_keys.push(key.get_ref().clone());
    }
    WebhookSettings {
        sources: SourcePolicy {
            allow,
            trusted_proxies,
            header,
        },
        signature_keys,
        signature_tolerance,
        require_signature: raw.require_signature,
    }
}

/// The shortest signing key or operator token accepted: shorter ones can be guessed.
pub const MIN_SECRET_BYTES: usize = 16;

/// Whether a signing key or operator token is at least [`MIN_SECRET_BYTES`] long.
pub fn secret_is_long_enough(secret: &str) -> bool {
    secret.len() >= MIN_SECRET_BYTES
}

/// The line of `problem` holds `secret`: show where it is, never what it is. A secret
/// written with escapes does not appear as is, so then the whole line goes.
fn hide_secret(problem: &mut crate::diagnostic::Diagnostic, secret: &str) {
    problem.source_line = match problem.source_line.contains(secret) {
        true => problem.source_line.replace(secret, "<redacted>"),
        false => "<a line holding a secret>".to_string(),
    };
}

/// Reads `operator_token`, reporting one too short to be safe.
fn operator_token(file: &mut Collector<'_>, raw: Option<Spanned<String>>) -> Option<String> {
    let token = raw?;
    if !secret_is_long_enough(token.get_ref()) {
        let problem = file.report(
            Some(token.span()),
            format!("operator_token is shorter than {MIN_SECRET_BYTES} bytes"),
            Some(format!(
                "use a random token of 32 bytes or more, for example `openssl rand -hex 32`, preferably in {OPERATOR_TOKEN_ENV}"
            )),
        );
        hide_secret(problem, token.get_ref());
    }
    Some(token.into_inner())
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
        let mut file = Collector::new(path, source);
        let raw: RawDeployment = match toml::from_str(source) {
            Ok(raw) => raw,
            Err(error) => {
                let hint = error
                    .message()
                    .starts_with("unknown field")
                    .then(|| "the README's deployment section lists every key".to_string());
                file.report(error.span(), error.message().trim(), hint);
                return file.finish(None);
            }
        };
        let mut instruments = BTreeMap::new();
        for (name, raw) in raw.instruments {
            let mut field = |value: &Spanned<String>, key: &str| -> Decimal {
                match crate::domain::parse_decimal(value.get_ref().trim()) {
                    Some(number) if number > Decimal::ZERO => number,
                    Some(number) => {
                        file.report(
                            Some(value.span()),
                            format!("instruments.{name}.{key} must be positive, found {number}"),
                            None,
                        );
                        Decimal::ONE
                    }
                    None => {
                        file.report(
                            Some(value.span()),
                            format!(
                                "instruments.{name}.{key} = {:?} is not a decimal number",
                                value.get_ref()
                            ),
                            Some(format!(
                                r#"decimals are quoted strings, for example {key} = "50""#
                            )),
                        );
                        Decimal::ONE
                    }
                }
            };
            let instrument = Instrument {
                lot_size: field(&raw.lot_size, "lot_size"),
                point_value: field(&raw.point_value, "point_value"),
                margin_per_lot: field(&raw.margin_per_lot, "margin_per_lot"),
                fractional_lots: raw.fractional_lots,
            };
            // Signals name instruments upper-cased; so does the table.
            instruments.insert(name.to_ascii_uppercase(), instrument);
        }
        let initial_capital = raw.initial_capital.as_ref().and_then(|value| {
            match crate::domain::parse_decimal(value.get_ref().trim()) {
                Some(capital) if capital >= Decimal::ZERO => Some(capital),
                Some(capital) => {
                    file.report(
                        Some(value.span()),
                        format!("initial_capital must not be negative, found {capital}"),
                        None,
                    );
                    None
                }
                None => {
                    file.report(
                        Some(value.span()),
                        format!("initial_capital = {:?} is not a decimal number", value.get_ref()),
                        Some(r#"decimals are quoted strings, for example initial_capital = "1000000""#.into()),
                    );
                    None
                }
            }
        });
        let webhook = webhook_settings(&mut file, raw.webhook);
        let notify = notify_sinks(&mut file, raw.notify);
        let operator_token = operator_token(&mut file, raw.operator_token);
        let base = path.parent().unwrap_or(Path::new(""));
        file.finish(Some(Deployment {
            instance: raw.instance,
            database_url: raw.database_url,
            redis_url: raw.redis_url,
            policy: raw.policy.map(|policy| base.join(policy)),
            instruments,
            initial_capital,
            listen: raw.listen,
            operator_listen: raw.operator_listen,
            operator_token,
            journal_dir: raw.journal_dir,
            snapshot_dir: raw.snapshot_dir,
            webhook_passphrase: raw.webhook_passphrase,
            webhook,
            notify,
        }))
    }

    /// Reads `path`; with no path, reads `vigil.toml` if it exists and otherwise returns the
    /// empty deployment.
    pub fn load(path: Option<&Path>) -> Result<Deployment, DeploymentError> {
        let (path, required) = match path {
            Some(path) => (path, true),
            None => (Path::new(DEFAULT_DEPLOYMENT_FILE), false),
        };
        let source = match crate::diagnostic::read_text(path) {
            Ok(source) => source,
            Err(ReadText::Io(error))
                if !required && error.kind() == std::io::ErrorKind::NotFound =>
            {
                return Ok(Deployment::default())
            }
            Err(ReadText::Io(reason)) => {
                return Err(DeploymentError::Read {
                    path: path.display().to_string(),
                    reason,
                })
            }
            Err(ReadText::NotText(diagnostics)) => {
                return Err(DeploymentError::Invalid(diagnostics))
            }
        };
        Deployment::parse(path, &source).map_err(DeploymentError::Invalid)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// (what, the [webhook] table, the problems it reports, each a piece of its message)
    /// Parses `source`: with `problems`, it must be refused with exactly those (each a piece
    /// of one message), never showing `secret`; without, it must be accepted, and is
    /// returned.
    fn check(what: &str, source: &str, problems: &[&str], secret: &str) -> Option<Deployment> {
        match Deployment::parse(Path::new("vigil.toml"), source) {
            Ok(deployment) => {
                assert!(problems.is_empty(), "{what}: accepted");
                Some(deployment)
            }
            Err(diagnostics) => {
                let shown = diagnostics.to_string();
                assert_eq!(diagnostics.0.len(), problems.len(), "{what}: {shown}");
                for problem in problems {
                    assert!(shown.contains(problem), "{what}: {shown}");
                }
                assert!(
                    !shown.contains(secret),
                    "{what}: a secret was shown: {shown}"
                );
                None
            }
        }
    }

    #[test]
    fn notify_tables() {
        let secret = "https://hooks.example/T000/B000/XXXXsecret";
        #[rustfmt::skip]
        let cases: &[(&str, String, &[&str])] = &[
            ("a webhook with every event", format!("kind = \"webhook\"\nwebhook_url = \"{secret}\""), &[]),
            ("a slack hook from the environment", "kind = \"slack\"\nwebhook_url_env = \"VIGIL_SLACK_URL\"\nevents = [\"halted\"]".into(), &[]),
            ("telegram", "kind = \"telegram\"\nbot_token_env = \"VIGIL_BOT\"\nchat_id = \"-1001\"".into(), &[]),
            ("an unknown kind", "kind = \"pager\"".into(), &["is not a kind of sink vigil sends to"]),
            ("a hook with no URL", "kind = \"discord\"".into(), &["needs webhook_url_env (or webhook_url)"]),
            ("telegram with no chat", "kind = \"telegram\"\nbot_token_env = \"VIGIL_BOT\"".into(), &["needs chat_id"]),
            ("an unknown event", format!("kind = \"webhook\"\nwebhook_url = \"{secret}\"\nevents = [\"halt\"]"), &["\"halt\" is not an event vigil notifies"]),
            ("an unknown key", format!("kind = \"webhook\"\nurl = \"{secret}\""), &["unknown field `url`"]),
        ];
        for (what, table, problems) in cases {
            let source = format!("[[notify]]\n{table}\n");
            if let Some(deployment) = check(what, &source, problems, "XXXXsecret") {
                assert_eq!(deployment.notify.len(), 1, "{what}");
                assert!(!format!("{deployment:?}").contains("XXXXsecret"), "{what}");
            }
        }
        let env = |name: &str| (name == "VIGIL_BOT").then(|| "123:abc".to_string());
        let parsed = Deployment::parse(
            Path::new("vigil.toml"),
            "[[notify]]\nkind = \"telegram\"\nbot_token_env = \"VIGIL_BOT\"\nchat_id = \"7\"\n\n[[notify]]\nkind = \"slack\"\nwebhook_url_env = \"VIGIL_UNSET\"\n",
        )
        .unwrap();
        let telegram = parsed.notify[0].resolve(&env).unwrap();
        assert_eq!(telegram.name, "telegram 1");
        assert_eq!(telegram.events.len(), crate::notify::Event::ALL.len());
        let unset = parsed.notify[1].resolve(&env).unwrap_err();
        assert_eq!(unset, "the environment variable VIGIL_UNSET is not set");
    }

    #[test]
    fn webhook_tables() {
        #[rustfmt::skip]
        let cases: &[(&str, &str, &[&str])] = &[
            ("the preset and a network", "allow = [\"tradingview\", \"10.0.0.0/8\"]\ntrusted_proxies = [\"127.0.0.1\"]", &[]),
            ("an address that is not one", "allow = [\"tradingview.com\"]", &["webhook.allow: \"tradingview.com\" is not an address"]),
            ("the preset is no proxy", "trusted_proxies = [\"tradingview\"]", &["webhook.trusted_proxies: \"tradingview\" is not an address"]),
            ("a tolerance out of range", "signature_tolerance = \"2h\"", &["between 1s and 1h"]),
            ("a short key", "signature_keys = [\"short-secret\"]", &["shorter than 16 bytes"]),
            ("an unknown key", "allowed = []", &["unknown field `allowed`"]),
            ("a header vigil does not read", "forwarded_header = \"x-real-ip\"", &["is not a header vigil reads"]),
            ("the preset with the standard header", "allow = [\"tradingview\", \"10.0.0.0/8\"]\ntrusted_proxies = [\"127.0.0.1\"]\nforwarded_header = \"forwarded\"", &[]),
        ];
        for (what, table, problems) in cases {
            let source = format!("[webhook]\n{table}\n");
            if let Some(deployment) = check(what, &source, problems, "short-secret") {
                let sources = deployment.webhook.sources;
                assert_eq!(sources.allow.map(|allow| allow.len()), Some(5), "{what}");
                assert_eq!(sources.trusted_proxies.len(), 1, "{what}");
            }
        }
    }

    /// (the line, the initial capital it gives, or a piece of the problem it reports)
    #[test]
    fn initial_capital() {
        #[rustfmt::skip]
        let cases: &[(&str, Result<Option<&str>, &str>)] = &[
            ("", Ok(None)),
            ("initial_capital = \"1000000\"", Ok(Some("1000000"))),
            ("initial_capital = \"0\"", Ok(Some("0"))),
            ("initial_capital = \"2500000.50\"", Ok(Some("2500000.50"))),
            ("initial_capital = \"-1\"", Err("initial_capital must not be negative, found -1")),
            ("initial_capital = \"1,000,000\"", Err("initial_capital = \"1,000,000\" is not a decimal number")),
            ("initial_capital = 1000000", Err("invalid type: integer `1000000`, expected a string")),
        ];
        for (line, expected) in cases {
            let parsed = Deployment::parse(Path::new("vigil.toml"), &format!("{line}\n"));
            match (parsed, expected) {
                (Ok(deployment), Ok(capital)) => assert_eq!(
                    deployment.initial_capital,
                    capital.map(|text| text.parse::<Decimal>().unwrap()),
                    "{line}"
                ),
                (Err(diagnostics), Err(problem)) => {
                    let shown = diagnostics.to_string();
                    assert!(shown.contains(problem), "{line}: {shown}");
                    assert!(shown.contains("vigil.toml:1:"), "{line}: {shown}");
                }
                (parsed, expected) => panic!("{line}: {parsed:?}, expected {expected:?}"),
            }
        }
    }

    /// (the instrument's extra lines, whether it trades fractional lots, or the problem)
    #[test]
    fn fractional_lots() {
        #[rustfmt::skip]
        let cases: &[(&str, Result<bool, &str>)] = &[
            ("", Ok(false)),
            ("fractional_lots = true", Ok(true)),
            ("fractional_lots = false", Ok(false)),
            ("fractional_lots = \"yes\"", Err("invalid type: string \"yes\", expected a boolean")),
        ];
        for (line, expected) in cases {
            let text = format!(
                "[instruments.gold]\nlot_size = \"1\"\npoint_value = \"1\"\nmargin_per_lot = \"1\"\n{line}\n"
            );
            match (Deployment::parse(Path::new("vigil.toml"), &text), expected) {
                (Ok(deployment), Ok(fractional)) => assert_eq!(
                    deployment.instruments["GOLD"].fractional_lots, *fractional,
                    "{line}"
                ),
                (Err(diagnostics), Err(problem)) => {
                    let shown = diagnostics.to_string();
                    assert!(shown.contains(problem), "{line}: {shown}");
                    assert!(shown.contains("vigil.toml:5:"), "{line}: {shown}");
                }
                (parsed, expected) => panic!("{line}: {parsed:?}, expected {expected:?}"),
            }
        }
    }

    /// A line that sets a secret is never shown as written, whatever is wrong with it: the
    /// value of a secret key is redacted, and a URL's password masked.
    #[test]
    fn secrets_never_reach_a_diagnostic() {
        #[rustfmt::skip]
        let cases: &[(&str, &str)] = &[
            ("webhook_passphrase = \"hunter2-hunter2-secret\" trailing\n", "webhook_passphrase = <redacted>"),
            ("operator_token = 12345678901234567890secret\n", "operator_token = <redacted>"),
            ("database_url = \"postgres://vigil:secret@db/vigil\" x\n", "postgres://vigil:***@db/vigil"),
            ("database_url = \"postgres://db/vigil?password=secret\" x\n", "password=***"),
            ("redis_url = 7 # redis://:secret@cache\n", "redis://:***@cache"),
            ("[webhook]\nsignature_keys = \"secret-secret-secret\"\n", "signature_keys = <redacted>"),
            ("webhook = { signature_keys = [\"secret-secret-secret\"], bogus = 1 }\n", "webhook = <redacted>"),
            ("[webhook]\nsignature_keys = [\n  \"secret-secret-secret\" x,\n]\n", "<redacted>"),
            ("webhook_passphrase = \"\"\"\nsecret-secret = secret\"\"\" x\n", "<redacted>"),
            ("instance = \"a\" ; webhook_passphrase = \"hunter2-hunter2-secret\"\n", "instance = <redacted>"),
        ];
        for (source, shown_instead) in cases {
            let shown = Deployment::parse(Path::new("vigil.toml"), source)
                .unwrap_err()
                .to_string();
            assert!(!shown.contains("secret"), "{source}: shown: {shown}");
            assert!(shown.contains(shown_instead), "{source}: shown: {shown}");
        }
    }

    /// A short operator token is refused, and neither the message nor the shown line holds it.
    #[test]
    fn operator_tokens() {
        let short = Deployment::parse(
            Path::new("vigil.toml"),
            "operator_token = \"short-secret\"\n",
        );
        let shown = short.unwrap_err().to_string();
        assert!(
            shown.contains("operator_token is shorter than 16 bytes"),
            "{shown}"
        );
        assert!(shown.contains("vigil.toml:1:18"), "{shown}");
        assert!(
            !shown.contains("short-secret"),
            "the token was shown: {shown}"
        );
        let long =
            "operator_token = \"0123456789abcdef0123\"\noperator_listen = \"127.0.0.1:9000\"\n";
        let deployment = Deployment::parse(Path::new("vigil.toml"), long).unwrap();
        assert_eq!(
            deployment.operator_token.as_deref(),
            Some("0123456789abcdef0123")
        );
        assert_eq!(
            deployment.operator_listen.as_deref(),
            Some("127.0.0.1:9000")
        );
        assert!(!format!("{deployment:?}").contains("0123456789abcdef"));
    }
}
