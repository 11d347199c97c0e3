//! Notifications: what an operator is told, and where. Sinks are configured in the
//! deployment file (`[[notify]]`): a generic JSON webhook, Slack- and Discord-compatible
//! incoming webhooks, and Telegram's Bot API, each with the events it is sent.
//!
//! Sending never blocks or slows trading: [`Notifier::notify`] only puts the notice on each
//! sink's bounded queue ([`NOTIFY_QUEUE_DEPTH`]; a full queue drops it, counted), and a task
//! per sink delivers it, each attempt bounded by [`NOTIFY_REQUEST_TIMEOUT`], retried
//! [`NOTIFY_ATTEMPTS`] times with backoff. A repeat of the same notice within
//! [`NOTIFY_DEDUP_WINDOW`] is not sent again. Before a halt exits, [`Notifier::flush`] waits
//! at most [`NOTIFY_FLUSH_TIMEOUT`] for the queues to empty. Secrets (a webhook URL, a bot
//! token) are never logged: a sink is named by its `name`, and a failed delivery's error is
//! logged without its URL.

use chrono::Utc;
use serde::Serialize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, Notify};

/// Notices waiting per sink; past it a notice is dropped and counted.
pub const NOTIFY_QUEUE_DEPTH: usize = 256;

/// How long one delivery attempt may take.
pub const NOTIFY_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Delivery attempts per notice and sink.
pub const NOTIFY_ATTEMPTS: u32 = 3;

/// The pause before the second attempt; it doubles before each further one.
pub const NOTIFY_BACKOFF_INITIAL: Duration = Duration::from_millis(500);

/// A notice equal to the last one sent, less than this long ago, is not sent again: a
/// flapping condition is told once, while a condition that ends and comes back is told
/// again (another notice came between).
pub const NOTIFY_DEDUP_WINDOW: Duration = Duration::from_secs(300);

/// How long a halt (or a refused start) waits for its notices before the process exits.
pub const NOTIFY_FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// Notices dropped because a sink's queue was full.
pub const NOTIFICATIONS_DROPPED: &str = "vigil_notifications_dropped_total";

/// Notices not delivered after every attempt.
pub const NOTIFICATIONS_FAILED: &str = "vigil_notifications_failed_total";

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// The instance halted; sent before the process exits.
    Halted,
    /// The instance serves degraded.
    Degraded,
    /// The instance serves every signal type again.
    Recovered,
    /// A recovery receipt failed a check.
    ReceiptFailed,
    /// The leader's consistency check found stored totals that do not match the positions.
    ConsistencyAlarm,
    /// This instance became the leader, or stopped leading.
    LeaderChange,
    /// A start was refused: the restart budget is spent.
    RestartBudgetSpent,
    /// Alerts are waiting in the intake journal (the database did not take them).
    JournalBacklog,
    /// An alert expired before it could be applied.
    AlertExpired,
    /// The operator paused trading.
    Paused,
    /// The operator lifted the pause.
    Resumed,
}

impl Event {
    /// Every event, in the order the README lists them.
    pub const ALL: [Event; 11] = [
        Event::Halted,
        Event::Degraded,
        Event::Recovered,
        Event::ReceiptFailed,
        Event::ConsistencyAlarm,
        Event::LeaderChange,
        Event::RestartBudgetSpent,
        Event::JournalBacklog,
        Event::AlertExpired,
        Event::Paused,
        Event::Resumed,
    ];

    /// The name in the deployment file and in a webhook's JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            Event::Halted => "halted",
            Event::Degraded => "degraded",
            Event::Recovered => "recovered",
            Event::ReceiptFailed => "receipt_failed",
            Event::ConsistencyAlarm => "consistency_alarm",
            Event::LeaderChange => "leader_change",
            Event::RestartBudgetSpent => "restart_budget_spent",
            Event::JournalBacklog => "journal_backlog",
            Event::AlertExpired => "alert_expired",
            Event::Paused => "paused",
            Event::Resumed => "resumed",
        }
    }

    /// The event with this name.
    pub fn parse(name: &str) -> Option<Event> {
        Event::ALL.into_iter().find(|event| event.as_str() == name)
    }

    /// How urgent it is, for the receiver: `critical`, `warning` or `info`.
    pub const fn severity(self) -> &'static str {
        match self {
            Event::Halted
            | Event::ReceiptFailed
            | Event::ConsistencyAlarm
            | Event::RestartBudgetSpent => "critical",
            Event::Degraded | Event::JournalBacklog | Event::AlertExpired | Event::Paused => {
                "warning"
            }
            Event::Recovered | Event::LeaderChange | Event::Resumed => "info",
        }
    }
}

/// One notice, as a generic webhook receives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Notice {
    /// What happened.
    pub event: Event,
    /// How urgent it is.
    pub severity: &'static str,
    /// The instance it happened on.
    pub instance: String,
    /// When, RFC 3339.
    pub at: String,
    /// What vigil logged for it.
    pub message: String,
}

impl Notice {
    /// The one line chat sinks show.
    pub fn line(&self) -> String {
        format!(
            "[vigil {}] {} on {}: {}",
            self.severity,
            self.event.as_str(),
            self.instance,
            self.message
        )
    }
}

/// Where a sink delivers, and how.
#[derive(Clone, PartialEq, Eq)]
pub enum Target {
    /// `POST url` with the [`Notice`] as JSON.
    Webhook {
        /// The receiver's URL (a secret).
        url: String,
    },
    /// A Slack-compatible incoming webhook: `{"text": ...}`.
    Slack {
        /// The webhook URL (a secret: it carries the token).
        url: String,
    },
    /// A Discord-compatible webhook: `{"content": ...}`.
    Discord {
        /// The webhook URL (a secret: it carries the token).
        url: String,
    },
    /// Telegram's Bot API: `POST {api_url}/bot{token}/sendMessage`.
    Telegram {
        /// The API's base URL (`https://api.telegram.org`).
        api_url: String,
        /// The bot token (a secret).
        bot_token: String,
        /// The chat the bot writes to.
        chat_id: String,
    },
}

impl Target {
    /// The kind's name in the deployment file.
    pub const fn kind(&self) -> &'static str {
        match self {
            Target::Webhook { .. } => "webhook",
            Target::Slack { .. } => "slack",
            Target::Discord { .. } => "discord",
            Target::Telegram { .. } => "telegram",
        }
    }

    /// The request for `notice`: its URL and JSON body.
    fn request(&self, notice: &Notice) -> (String, serde_json::Value) {
        match self {
            Target::Webhook { url } => (
                url.clone(),
                serde_json::to_value(notice).unwrap_or(serde_json::Value::Null),
            ),
            Target::Slack { url } => (url.clone(), serde_json::json!({ "text": notice.line() })),
            Target::Discord { url } => {
                (url.clone(), serde_json::json!({ "content": notice.line() }))
            }
            Target::Telegram {
                api_url,
                bot_token,
                chat_id,
            } => (
                format!(
                    "{}/bot{bot_token}/sendMessage",
                    api_url.trim_end_matches('/')
                ),
                serde_json::json!({ "chat_id": chat_id, "text": notice.line() }),
            ),
        }
    }
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (<redacted>)", self.kind())
    }
}

/// One configured sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sink {
    /// What logs call it (never its URL).
    pub name: String,
    /// Where it delivers.
    pub target: Target,
    /// The events it is sent.
    pub events: Vec<Event>,
}

/// One sink's queue, and the count of notices not yet done.
#[derive(Debug)]
struct Queue {
    /// The events it is sent.
    events: Vec<Event>,
    /// Its worker's queue.
    sender: mpsc::Sender<Notice>,
}

/// Sends notices to every sink that wants them. Cheap to share: clone it.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The instance id notices carry.
    instance: String,
    /// One queue per sink.
    queues: Vec<Queue>,
    /// The last notice sent (event and message) and when, for the dedup window.
    last: Mutex<Option<(Event, String, tokio::time::Instant)>>,
    /// Notices queued and not yet delivered or given up.
    pending: AtomicUsize,
    /// Woken when `pending` drops to zero.
    idle: Notify,
}

impl Notifier {
    /// A notifier with no sink: every notice goes nowhere.
    pub fn none() -> Notifier {
        Notifier::default()
    }

    /// Starts one delivery task per sink (inside a tokio runtime).
    pub fn start(instance: &str, sinks: Vec<Sink>) -> Notifier {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(NOTIFY_REQUEST_TIMEOUT)
            .build()
            .unwrap_or_default();
        let mut queues = Vec::new();
        let mut receivers = Vec::new();
        for sink in sinks {
            let (sender, receiver) = mpsc::channel(NOTIFY_QUEUE_DEPTH);
            queues.push(Queue {
                events: sink.events.clone(),
                sender,
            });
            receivers.push((sink, receiver));
        }
        let notifier = Notifier {
            inner: Arc::new(Inner {
                instance: instance.to_string(),
                queues,
                last: Mutex::new(None),
                pending: AtomicUsize::new(0),
                idle: Notify::new(),
            }),
        };
        for (sink, receiver) in receivers {
            tokio::spawn(deliver_all(
                sink,
                receiver,
                client.clone(),
                Arc::clone(&notifier.inner),
            ));
        }
        notifier
    }

    /// Whether any sink is configured.
    pub fn is_configured(&self) -> bool {
        !self.inner.queues.is_empty()
    }

    /// Tells every sink that wants `event`; never waits. A repeat of the last notice within
    /// [`NOTIFY_DEDUP_WINDOW`] is not sent again.
    pub fn notify(&self, event: Event, message: impl Into<String>) {
        if self.inner.queues.is_empty() {
            return;
        }
        let message = message.into();
        let now = tokio::time::Instant::now();
        {
            let mut last = self
                .inner
                .last
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let repeat = last.as_ref().is_some_and(|(was, said, at)| {
                *was == event && *said == message && now.duration_since(*at) < NOTIFY_DEDUP_WINDOW
            });
            if repeat {
                return;
            }
            *last = Some((event, message.clone(), now));
        }
        let notice = Notice {
            event,
            severity: event.severity(),
            instance: self.inner.instance.clone(),
            at: crate::store::timestamp_text(Utc::now()),
            message,
        };
        for queue in self
            .inner
            .queues
            .iter()
            .filter(|q| q.events.contains(&event))
        {
            self.inner.pending.fetch_add(1, Ordering::AcqRel);
            if queue.sender.try_send(notice.clone()).is_err() {
                self.done();
                metrics::counter!(NOTIFICATIONS_DROPPED).increment(1);
            }
        }
    }

    /// Waits, at most `bound`, until every queued notice is delivered or given up.
    pub async fn flush(&self, bound: Duration) {
        let inner = &self.inner;
        let drained = async {
            loop {
                let idle = inner.idle.notified();
                if inner.pending.load(Ordering::Acquire) == 0 {
                    return;
                }
                idle.await;
            }
        };
        let _ = tokio::time::timeout(bound, drained).await;
    }

    fn done(&self) {
        self.inner.done();
    }
}

impl Inner {
    fn done(&self) {
        if self.pending.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }
}

/// The task of one sink: delivers its notices in order, each with its attempts.
async fn deliver_all(
    sink: Sink,
    mut receiver: mpsc::Receiver<Notice>,
    client: reqwest::Client,
    inner: Arc<Inner>,
) {
    while let Some(notice) = receiver.recv().await {
        let (url, body) = sink.target.request(&notice);
        let mut backoff = NOTIFY_BACKOFF_INITIAL;
        let mut last_error = String::new();
        let mut delivered = false;
        for attempt in 1..=NOTIFY_ATTEMPTS {
            if attempt > 1 {
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2);
            }
            let request = client
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
            match request.send().await {
                Ok(response) if response.status().is_success() => {
                    delivered = true;
                    break;
                }
                Ok(response) => last_error = format!("answered {}", response.status()),
                // The error's URL may carry the secret: it goes.
                Err(error) => last_error = error.without_url().to_string(),
            }
        }
        if !delivered {
            metrics::counter!(NOTIFICATIONS_FAILED).increment(1);
            tracing::warn!(
                target: "vigil::notify",
                "notification {} not delivered to {} ({}) after {NOTIFY_ATTEMPTS} attempts: {last_error}",
                notice.event.as_str(),
                sink.name,
                sink.target.kind()
            );
        }
        inner.done();
    }
}

/// Where a secret of a sink comes from, as the deployment file says.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// Written in the file.
    Inline(String),
    /// Read from this environment variable when the instance starts.
    Env(String),
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretSource::Inline(_) => f.write_str("<redacted>"),
            SecretSource::Env(name) => write!(f, "${name}"),
        }
    }
}

impl SecretSource {
    /// The secret, reading the environment through `env`; the error names the variable.
    fn resolve(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
        match self {
            SecretSource::Inline(secret) => Ok(secret.clone()),
            SecretSource::Env(name) => env(name)
                .filter(|value| !value.is_empty())
                .ok_or_else(|| format!("the environment variable {name} is not set")),
        }
    }
}

/// A sink as the deployment file describes it, before its secrets are read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkSpec {
    /// What logs call it.
    pub name: String,
    /// `webhook`, `slack`, `discord` or `telegram`.
    pub kind: String,
    /// The webhook URL (every kind but Telegram).
    pub webhook_url: Option<SecretSource>,
    /// Telegram's bot token.
    pub bot_token: Option<SecretSource>,
    /// Telegram's chat.
    pub chat_id: Option<String>,
    /// Telegram's API base URL.
    pub api_url: String,
    /// The events it is sent.
    pub events: Vec<Event>,
}

/// Telegram's Bot API, unless a sink's `api_url` says otherwise.
pub const TELEGRAM_API_URL: &str = "https://api.telegram.org";

impl SinkSpec {
    /// The sink, its secrets read through `env`; the error says what is missing.
    pub fn resolve(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Sink, String> {
        let missing = |what: &str| format!("notify sink {:?} has no {what}", self.name);
        let url = || {
            self.webhook_url
                .as_ref()
                .ok_or_else(|| missing("webhook_url or webhook_url_env"))?
                .resolve(env)
        };
        let target = match self.kind.as_str() {
            "webhook" => Target::Webhook { url: url()? },
            "slack" => Target::Slack { url: url()? },
            "discord" => Target::Discord { url: url()? },
            _ => Target::Telegram {
                api_url: self.api_url.clone(),
                bot_token: self
                    .bot_token
                    .as_ref()
                    .ok_or_else(|| missing("bot_token or bot_token_env"))?
                    .resolve(env)?,
                chat_id: self.chat_id.clone().ok_or_else(|| missing("chat_id"))?,
            },
        };
        Ok(Sink {
            name: self.name.clone(),
            target,
            events: self.events.clone(),
        })
    }
}
