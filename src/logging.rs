//! The one log format, shared by the service and the dry-run so that a dry-run prints
//! exactly the lines the service writes. Only the clock differs.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::MakeWriter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// One line of text per event: time, level, target, span fields, message and fields.
    #[default]
    Text,
    /// One JSON object per line (`timestamp`, `level`, `target`, `fields` with `message`,
    /// and `span`/`spans` with the request's id), for log collectors.
    Json,
}

/// The most verbose level of vigil's lines, as the command line and the environment name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogLevel {
    /// Only what stopped something.
    Error,
    /// Also what went wrong and was handled.
    Warn,
    /// Also every transition, alert and outcome: what an operator reads.
    #[default]
    Info,
    /// Also the steps in between, for a diagnosis.
    Debug,
    /// Everything.
    Trace,
}

impl From<LogLevel> for tracing::Level {
    fn from(level: LogLevel) -> tracing::Level {
        match level {
            LogLevel::Error => tracing::Level::ERROR,
            LogLevel::Warn => tracing::Level::WARN,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Trace => tracing::Level::TRACE,
        }
    }
}

/// How much is logged, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOptions {
    /// The most verbose level of vigil's own lines. Libraries log at `WARN` or above, or
    /// at this level when it is less verbose.
    pub level: tracing::Level,
    /// The line format.
    pub format: LogFormat,
}

impl Default for LogOptions {
    /// vigil's lines at `INFO`, as text: what the dry-run and the snapshots show.
    fn default() -> LogOptions {
        LogOptions {
            level: tracing::Level::INFO,
            format: LogFormat::Text,
        }
    }
}

/// Builds the subscriber every vigil log line goes through, with the default options.
pub fn subscriber<W, T>(writer: W, timer: T) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
    T: FormatTime + Send + Sync + 'static,
{
    subscriber_with(writer, timer, LogOptions::default())
}

/// Builds the subscriber every vigil log line goes through, with `options`.
pub fn subscriber_with<W, T>(
    writer: W,
    timer: T,
    options: LogOptions,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
    T: FormatTime + Send + Sync + 'static,
{
    use tracing_subscriber::layer::SubscriberExt;
    // vigil's own lines at the chosen level; libraries only when something is wrong, so
    // that a dependency's chatter never changes what operators (or snapshots) see.
    let targets = tracing_subscriber::filter::Targets::new()
        .with_target("vigil", options.level)
        // It names an unknown URL parameter with its value, which may be a secret; vigil
        // names the parameter itself at start-up.
        .with_target("sqlx_postgres::options::parse", tracing::Level::ERROR)
        .with_default(options.level.min(tracing::Level::WARN));
    let builder = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_timer(timer)
        .with_ansi(false)
        .with_target(true)
        .with_max_level(options.level);
    match options.format {
        LogFormat::Text => Box::new(builder.finish().with(targets)),
        LogFormat::Json => Box::new(
            builder
                .json()
                .with_current_span(true)
                .with_span_list(false)
                .finish()
                .with(targets),
        ),
    }
}

/// Virtual time for dry-runs: `t=` followed by seconds since the start.
#[derive(Debug, Clone, Default)]
pub struct VirtualTimer {
    /// Milliseconds since the start; the driver moves it (see `Driver::publish_time`).
    now_ms: Arc<AtomicU64>,
}

impl VirtualTimer {
    /// A timer that shows the time held by `now_ms`.
    pub fn new(now_ms: Arc<AtomicU64>) -> VirtualTimer {
        VirtualTimer { now_ms }
    }
}

impl FormatTime for VirtualTimer {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        let ms = self.now_ms.load(Ordering::Relaxed);
        write!(w, "t={}", crate::machines::format_seconds(u128::from(ms)))
    }
}

/// Collects log output in memory, for dry-runs and tests.
#[derive(Debug, Clone, Default)]
pub struct Capture {
    /// Everything written so far and not yet taken.
    buffer: Arc<Mutex<Vec<u8>>>,
}

impl Capture {
    /// Takes the complete lines written so far.
    pub fn take_lines(&self) -> Vec<String> {
        let mut buffer = self.buffer.lock().unwrap_or_else(PoisonError::into_inner);
        let text = String::from_utf8_lossy(&buffer).into_owned();
        buffer.clear();
        text.lines().map(str::to_string).collect()
    }
}

impl Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buffer
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'w> MakeWriter<'w> for Capture {
    type Writer = Capture;

    fn make_writer(&'w self) -> Self::Writer {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::{subscriber_with, Capture, LogFormat, LogOptions, VirtualTimer};
    use tracing::Level;

    /// Logs the same events under `options` and returns the lines written.
    fn lines(options: LogOptions) -> Vec<String> {
        let capture = Capture::default();
        let subscriber = subscriber_with(capture.clone(), VirtualTimer::default(), options);
        tracing::subscriber::with_default(subscriber, || {
            // As the HTTP layer opens it: at ERROR, so that it exists at every level.
            let span = tracing::error_span!(target: "vigil::http", "request", request_id = "r-1");
            let _entered = span.enter();
            tracing::debug!(target: "vigil::intake", "looked at the journal");
            tracing::info!(target: "vigil::intake", status = 202, "alert queued");
            tracing::warn!(target: "vigil::http", "alert refused: bad passphrase");
            tracing::info!(target: "sqlx::query", "a library's chatter");
            tracing::warn!(target: "sqlx::pool", "a library's warning");
        });
        capture.take_lines()
    }

    #[test]
    fn the_level_and_the_format_choose_the_lines() {
        // (level, format, the messages expected, in order)
        let cases: &[(Level, LogFormat, &[&str])] = &[
            (
                Level::INFO,
                LogFormat::Text,
                &["alert queued", "alert refused", "a library's warning"],
            ),
            (
                Level::DEBUG,
                LogFormat::Text,
                &[
                    "looked at the journal",
                    "alert queued",
                    "alert refused",
                    "a library's warning",
                ],
            ),
            (
                Level::WARN,
                LogFormat::Json,
                &["alert refused", "a library's warning"],
            ),
            (Level::ERROR, LogFormat::Text, &[]),
        ];
        for &(level, format, expected) in cases {
            let written = lines(LogOptions { level, format });
            assert_eq!(
                written.len(),
                expected.len(),
                "{level} {format:?}: {written:#?}"
            );
            for (line, message) in written.iter().zip(expected) {
                assert!(line.contains(message), "{level} {format:?}: {line}");
                if format == LogFormat::Json {
                    let value: serde_json::Value = serde_json::from_str(line)
                        .unwrap_or_else(|error| panic!("{line} is not JSON: {error}"));
                    assert!(value["fields"]["message"]
                        .as_str()
                        .is_some_and(|text| text.contains(message)));
                    assert!(value["level"].is_string() && value["target"].is_string());
                    if value["target"] == "vigil::http" {
                        assert_eq!(value["span"]["request_id"], "r-1", "{line}");
                    }
                }
            }
        }
    }
}
