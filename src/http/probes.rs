//! `GET /health`, `/ready`, `/status` and `/metrics`.

use super::metrics::{prometheus, LIFECYCLE_STATE, RECOVERY_DURATION};
use super::{ApiError, AppState};
use crate::machines::lifecycle;
use crate::recovery::Receipt;
use crate::shared::RecentTransition;
use crate::store::Store;
use crate::vocabulary::SignalSet;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use std::sync::Arc;

/// Liveness: the process serves HTTP.
pub async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// The body of `/ready`.
#[derive(Debug, Serialize)]
pub struct Readiness {
    /// Whether any signal type is accepted.
    ready: bool,
    /// The lifecycle state.
    state: &'static str,
    /// The signal types accepted.
    accepts: SignalSet,
    /// The last recovery receipt.
    receipt: Option<Receipt>,
}

/// Readiness: 200 when the lifecycle accepts some signal, 503 (with `Retry-After`) otherwise.
pub async fn ready(State(app): State<Arc<AppState>>) -> Response {
    let view = app.shared.view();
    let ready = view.accepts != SignalSet::NONE;
    let body = Json(Readiness {
        ready,
        state: view.state,
        accepts: view.accepts,
        receipt: app.shared.receipt.borrow().clone(),
    });
    if ready {
        (StatusCode::OK, body).into_response()
    } else {
        let mut response = (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, super::RETRY_AFTER_S.into());
        response
    }
}

/// The body of `/status`.
#[derive(Debug, Serialize)]
pub struct Status {
    /// The instance id.
    instance: String,
    /// The lifecycle state.
    state: &'static str,
    /// The signal types accepted.
    accepts: SignalSet,
    /// Leader election arrives with high availability; a single instance leads nothing.
    leader: bool,
    /// Open positions in the database; absent while it is unreachable.
    open_positions: Option<i64>,
    /// Closed positions in the database; absent while it is unreachable.
    closed_positions: Option<i64>,
    /// Signals being processed now.
    signals_in_flight: usize,
    /// The last recovery receipt.
    receipt: Option<Receipt>,
    /// The last transitions of both machines, oldest first.
    recent_transitions: Vec<RecentTransition>,
}

/// Everything an operator looks at first.
pub async fn status(State(app): State<Arc<AppState>>) -> Result<Json<Status>, ApiError> {
    let view = app.shared.view();
    // A database that hangs must not hang the status page with it.
    let counts = match app.shared.store() {
        Some(store) => {
            tokio::time::timeout(crate::startup::DB_PING_TIMEOUT, store.position_counts())
                .await
                .ok()
                .and_then(Result::ok)
        }
        None => None,
    };
    Ok(Json(Status {
        instance: app.shared.instance.clone(),
        state: view.state,
        accepts: view.accepts,
        leader: false,
        open_positions: counts.map(|(open, _)| open),
        closed_positions: counts.map(|(_, closed)| closed),
        signals_in_flight: app.shared.in_flight.count(),
        receipt: app.shared.receipt.borrow().clone(),
        recent_transitions: app.shared.recent_transitions(),
    }))
}

/// Prometheus text.
pub async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    let view = app.shared.view();
    for state in lifecycle::State::NAMES {
        let value = if state == view.state { 1.0 } else { 0.0 };
        metrics::gauge!(LIFECYCLE_STATE, "state" => state).set(value);
    }
    if let Some(receipt) = app.shared.receipt.borrow().as_ref() {
        metrics::gauge!(RECOVERY_DURATION)
            .set(std::time::Duration::from_millis(receipt.duration_ms).as_secs_f64());
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        prometheus().render(),
    )
        .into_response()
}
