//! The one log format, shared by the service and the dry-run so that a dry-run prints
//! exactly the lines the service writes. Only the clock differs.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::MakeWriter;

/// Builds the subscriber every vigil log line goes through.
pub fn subscriber<W, T>(writer: W, timer: T) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
    T: FormatTime + Send + Sync + 'static,
{
    use tracing_subscriber::layer::SubscriberExt;
    // vigil's own lines at info; libraries only when something is wrong, so that a
    // dependency's chatter never changes what operators (or snapshots) see.
    let targets = tracing_subscriber::filter::Targets::new()
        .with_target("vigil", tracing::Level::INFO)
        .with_default(tracing::Level::WARN);
    tracing_subscriber::fmt()
        .with_writer(writer)
        .with_timer(timer)
        .with_ansi(false)
        .with_target(true)
        .with_max_level(tracing::Level::INFO)
        .finish()
        .with(targets)
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
