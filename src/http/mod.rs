//! The HTTP API (axum): `POST /webhook` for TradingView alerts, and `GET /health`, `/ready`,
//! `/status`, `/metrics`. Only this module knows HTTP.

mod error;
mod metrics;
mod probes;
pub mod signature;
pub mod source;
pub mod throttle;
mod webhook;

pub use error::{ApiError, RETRY_AFTER_S};
pub use metrics::prometheus;

use crate::broker::Broker;
use crate::domain::Instrument;
use crate::shared::Shared;
use axum::extract::DefaultBodyLimit;
use axum::http::{Request, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
// A 503 while recovering is the API working, not a failure: handlers log what matters.
use tower_http::trace::{DefaultOnFailure, TraceLayer};

/// The largest webhook body accepted. TradingView alerts are a few hundred bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// How long a request may take. TradingView gives up after 3 seconds and resends on a 5xx,
/// so a slow request answers 503 well before that.
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(2500);

/// How many fingerprints the in-memory duplicate check remembers. It only saves work: the
/// database claim decides.
pub const RECENT_FINGERPRINTS: usize = 10_000;

/// The webhook passphrase. Its `Debug` never shows it.
#[derive(Clone)]
pub struct Passphrase(Arc<str>);

impl Passphrase {
    /// Wraps a passphrase.
    pub fn new(text: &str) -> Passphrase {
        Passphrase(Arc::from(text))
    }

    /// Compares in constant time: both sides are hashed first, so neither the content nor
    /// the length of the secret leaks through timing.
    pub fn matches(&self, given: &str) -> bool {
        let expected = Sha256::digest(self.0.as_bytes());
        let given = Sha256::digest(given.as_bytes());
        expected.ct_eq(&given).into()
    }
}

impl fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Passphrase(<redacted>)")
    }
}

/// Fingerprints seen recently, oldest dropped first.
#[derive(Debug, Default)]
pub struct RecentFingerprints {
    /// For lookups.
    seen: HashSet<String>,
    /// For eviction, oldest first.
    order: VecDeque<String>,
}

impl RecentFingerprints {
    /// Whether `fingerprint` was seen.
    pub fn contains(&self, fingerprint: &str) -> bool {
        self.seen.contains(fingerprint)
    }

    /// Remembers `fingerprint`, forgetting the oldest beyond [`RECENT_FINGERPRINTS`].
    pub fn insert(&mut self, fingerprint: &str) {
        if !self.seen.insert(fingerprint.to_string()) {
            return;
        }
        self.order.push_back(fingerprint.to_string());
        if self.order.len() > RECENT_FINGERPRINTS {
            if let Some(oldest) = self.order.pop_front() {
                self.seen.remove(&oldest);
            }
        }
    }
}

/// What the handlers share.
#[derive(Debug)]
pub struct AppState {
    /// Lifecycle, store, receipt, in-flight signals.
    pub shared: Arc<Shared>,
    /// The webhook passphrase.
    pub passphrase: Passphrase,
    /// Contract terms per instrument; a signal for another instrument is refused.
    pub instruments: BTreeMap<String, Instrument>,
    /// Executes orders.
    pub broker: Arc<dyn Broker>,
    /// Which sources may send webhooks, and which proxies are believed about the source.
    pub sources: source::SourcePolicy,
    /// Verifies signed webhooks; `None` when no signing key is configured.
    pub signatures: Option<signature::Signatures>,
    /// Slows, then refuses, sources that keep failing authentication.
    pub throttle: throttle::Throttle,
    /// The in-memory duplicate check.
    pub recent: Mutex<RecentFingerprints>,
}

/// Serves the API on `listener` until `shutdown` completes, then lets requests in flight
/// finish. A listener failure is logged: the lifecycle, not the socket, decides when the
/// instance ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let service = app(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    if let Err(error) = axum::serve(listener, service)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(target: "vigil::http", "the HTTP listener failed: {error}");
    }
}

/// The router, with body limit, timeout, request ids and a tracing span per request.
pub fn app(state: Arc<AppState>) -> Router {
    // Installed before the first signal, so that no count is lost.
    let _ = prometheus();
    Router::new()
        .route("/webhook", post(webhook::receive))
        .route("/health", get(probes::health))
        .route("/ready", get(probes::ready))
        .route("/status", get(probes::status))
        .route("/metrics", get(probes::metrics))
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .with_state(state)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(TimeoutLayer::with_status_code(StatusCode::SERVICE_UNAVAILABLE, REQUEST_TIMEOUT))
        .layer(PropagateRequestIdLayer::x_request_id())
                .layer(TraceLayer::new_for_http().on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)).make_span_with(|request: &Request<_>| {
            // The path only: a query string could carry a secret.
            let id = request.headers().get("x-request-id").and_then(|id| id.to_str().ok()).unwrap_or("-");
            tracing::info_span!("request", method = %request.method(), path = request.uri().path(), request_id = id)
        }))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}
