//! The HTTP API (axum), on two listeners. The webhook listener faces the internet and serves
//! only `POST /webhook` (TradingView's alerts) and `GET /health`; the operator listener
//! (loopback by default, a bearer token when configured) serves `GET /health`, `/ready`,
//! `/status` and `/metrics`, so that no unauthenticated load reaches a status query. Only this
//! module knows HTTP.

mod error;
mod metrics;
mod operator;
mod probes;
pub mod signature;
pub mod source;
pub mod throttle;
mod webhook;

pub use error::{ApiError, RETRY_AFTER_S};
pub use metrics::prometheus;

use crate::domain::Instrument;
use crate::shared::Shared;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderValue, Request};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
// A 503 while recovering is the API working, not a failure: handlers log what matters.
use tower_http::trace::{DefaultOnFailure, TraceLayer};

/// The largest webhook body accepted. TradingView alerts are a few hundred bytes.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// How long a request may take. TradingView gives up after 3 seconds and resends on a 5xx,
/// so a slow request answers 503 (with `Retry-After` and the JSON error body) well before
/// that.
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(2500);

/// How many fingerprints the in-memory duplicate check remembers. It only saves work: the
/// database claim decides.
pub const RECENT_FINGERPRINTS: usize = 10_000;

/// A secret a request must carry: the webhook passphrase, or the operator token. Its `Debug`
/// never shows it.
#[derive(Clone)]
pub struct Secret(Arc<str>);

/// The webhook passphrase TradingView alerts carry in their body.
pub type Passphrase = Secret;

impl Secret {
    /// Wraps a secret.
    pub fn new(text: &str) -> Secret {
        Secret(Arc::from(text))
    }

    /// Compares in constant time: both sides are hashed first, so neither the content nor
    /// the length of the secret leaks through timing.
    pub fn matches(&self, given: &str) -> bool {
        let expected = Sha256::digest(self.0.as_bytes());
        let given = Sha256::digest(given.as_bytes());
        expected.ct_eq(&given).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
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
    /// Applies or journals every checked alert.
    pub intake: Arc<crate::intake::Intake>,
    /// Which sources may send webhooks, and which proxies are believed about the source.
    pub sources: source::SourcePolicy,
    /// Verifies signed webhooks; `None` when no signing key is configured.
    pub signatures: Option<signature::Signatures>,
    /// Slows, then refuses, sources that keep failing authentication.
    pub throttle: throttle::Throttle,
    /// The in-memory duplicate check.
    pub recent: Mutex<RecentFingerprints>,
    /// The bearer token the operator listener asks for; `None`: that listener is open to
    /// whoever can reach it (loopback by default).
    pub operator_token: Option<Secret>,
}

/// Serves `router` on `listener` until `shutdown` completes, then lets requests in flight
/// finish. A listener failure is logged: the lifecycle, not the socket, decides when the
/// instance ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let service = router.into_make_service_with_connect_info::<std::net::SocketAddr>();
    if let Err(error) = axum::serve(listener, service)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(target: "vigil::http", "the HTTP listener failed: {error}");
    }
}

/// The webhook listener's router: `POST /webhook` and `GET /health`, nothing that reads the
/// database outside a signal.
pub fn webhook_app(state: Arc<AppState>) -> Router {
    // Installed before the first signal, so that no count is lost.
    let _ = prometheus();
    layered(
        Router::new()
            .route("/webhook", post(webhook::receive))
            .route("/health", get(probes::health))
            .with_state(state),
    )
}

/// The operator listener's router: `GET /health` (open, for liveness probes), and `/ready`,
/// `/status`, `/positions`, `/metrics`, `/signals/{fingerprint}` and the kill switch
/// (`POST /pause`, `POST /resume`) behind the bearer token when one is configured.
pub fn operator_app(state: Arc<AppState>) -> Router {
    let _ = prometheus();
    let guarded = Router::new()
        .route("/ready", get(probes::ready))
        .route("/status", get(probes::status))
        .route("/positions", get(probes::positions))
        .route("/metrics", get(probes::metrics))
        .route("/signals/{fingerprint}", get(probes::signal))
        .route("/pause", post(operator::pause))
        .route("/resume", post(operator::resume))
        .route_layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            bearer_token,
        ));
    layered(
        guarded
            .route("/health", get(probes::health))
            .with_state(state),
    )
}

/// Refuses an operator request without the configured bearer token (401, with
/// `WWW-Authenticate: Bearer`), comparing in constant time.
async fn bearer_token(
    State(app): State<Arc<AppState>>,
    request: Request<axum::body::Body>,
    next: Next,
) -> Response {
    let Some(token) = &app.operator_token else {
        return next.run(request).await;
    };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if given.is_some_and(|given| token.matches(given.trim())) {
        return next.run(request).await;
    }
    let mut refused = ApiError::unauthorized_operator().into_response();
    refused
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    refused
}

/// Answers 503 with `Retry-After` and the JSON error body when a request takes longer than
/// [`REQUEST_TIMEOUT`]; the request's future is dropped.
async fn time_limit(request: Request<axum::body::Body>, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::unavailable(format!(
            "the request took longer than {} ms; resend it",
            REQUEST_TIMEOUT.as_millis()
        ))
        .into_response(),
    }
}

/// Both listeners' layers: a JSON 404 and 405, the body limit, the timeout, request ids and
/// a tracing span per request.
fn layered(router: Router) -> Router {
    router
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(time_limit))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(
            TraceLayer::new_for_http()
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG))
                .make_span_with(|request: &Request<_>| {
                    // The path only: a query string could carry a secret. At the ERROR
                    // level so that the span, and the request id on every line written in
                    // it, exists whatever the log level.
                    let id = request
                        .headers()
                        .get("x-request-id")
                        .and_then(|id| id.to_str().ok())
                        .unwrap_or("-");
                    tracing::error_span!("request", method = %request.method(), path = request.uri().path(), request_id = id)
                }),
        )
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    /// A request slower than [`REQUEST_TIMEOUT`] gets the API's 503: `Retry-After` and the
    /// JSON error body, as TradingView's resend needs.
    #[tokio::test(start_paused = true)]
    async fn a_slow_request_answers_503_with_retry_after_and_a_json_body() {
        let slow = layered(Router::new().route(
            "/slow",
            get(|| async {
                tokio::time::sleep(REQUEST_TIMEOUT * 2).await;
                "late"
            }),
        ));
        let request = Request::builder()
            .uri("/slow")
            .body(axum::body::Body::empty())
            .unwrap();
        let response = slow.oneshot(request).await.unwrap();
        assert_eq!(
            response.status(),
            axum::http::StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            response.headers().get(header::RETRY_AFTER).unwrap(),
            &RETRY_AFTER_S.to_string()
        );
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["error"]["code"], "unavailable", "{json}");
        assert!(
            json["error"]["message"]
                .as_str()
                .unwrap()
                .contains("2500 ms"),
            "{json}"
        );
    }
}
