//! `GET /health`, `/ready`, `/status`, `/positions`, `/metrics` and `/signals/{fingerprint}`.

use super::metrics::{prometheus, LEADER, LIFECYCLE_STATE, RECOVERY_DURATION, REDIS_UP};
use super::{ApiError, AppState};
use crate::coordination::{instance_views, InstanceView, Mode, RedisHealth};
use crate::executor::DB_PING_TIMEOUT;
use crate::machines::lifecycle;
use crate::recovery::Receipt;
use crate::shared::RecentTransition;
use crate::store::Store;
use crate::vocabulary::SignalSet;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
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
    #[serde(serialize_with = "crate::machines::serialize_state")]
    state: lifecycle::State,
    /// The signal types accepted.
    accepts: SignalSet,
    /// Which coordination serves now: `redis`, or `database` (none configured, or lost).
    coordination: Mode,
    /// Redis as last seen: `up`, `down` or `not_configured`.
    redis: RedisHealth,
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
        coordination: app.shared.coordination.mode(),
        redis: app.shared.coordination.redis_health(),
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
    #[serde(serialize_with = "crate::machines::serialize_state")]
    state: lifecycle::State,
    /// The signal types accepted.
    accepts: SignalSet,
    /// Whether this instance holds the leader lease for background tasks.
    leader: bool,
    /// The fencing token it leads with.
    fencing_token: Option<i64>,
    /// Which coordination serves now.
    coordination: Mode,
    /// Redis as last seen.
    redis: RedisHealth,
    /// Every instance the database knows, with its status, leader flag and heartbeat age;
    /// absent while the database is unreachable.
    instances: Option<Vec<InstanceView>>,
    /// Open positions in the database; absent while it is unreachable.
    open_positions: Option<i64>,
    /// Closed positions in the database; absent while it is unreachable.
    closed_positions: Option<i64>,
    /// Signals being processed now.
    signals_in_flight: usize,
    /// The intake journal: alerts queued and not yet applied, and whether it can be read.
    journal: crate::intake::JournalStatus,
    /// The operator's kill switch as this instance last read it: `none`, `all` or
    /// `exits_only`.
    pause: crate::store::operations::Pause,
    /// The last recovery receipt.
    receipt: Option<Receipt>,
    /// The last transitions of both machines, oldest first.
    recent_transitions: Vec<RecentTransition>,
}

/// How old the position counts on `/status` may be.
pub const COUNTS_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(5);

/// The position counts, from the cache when fresh enough, else from the store (bounded).
async fn position_counts(app: &AppState, store: &crate::store::AnyStore) -> Option<(i64, i64)> {
    let now = tokio::time::Instant::now();
    let cached = *app
        .shared
        .counts
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((at, counts)) = cached {
        if now.duration_since(at) < COUNTS_MAX_AGE {
            return Some(counts);
        }
    }
    let counts = tokio::time::timeout(DB_PING_TIMEOUT, store.position_counts())
        .await
        .ok()
        .and_then(Result::ok)?;
    *app.shared
        .counts
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((now, counts));
    Some(counts)
}

/// Everything an operator looks at first.
pub async fn status(State(app): State<Arc<AppState>>) -> Result<Json<Status>, ApiError> {
    let view = app.shared.view();
    // A database that hangs must not hang the status page with it.
    let (counts, instances) = match app.shared.store() {
        Some(store) => {
            let now = Utc::now();
            let (counts, instances) = tokio::join!(
                position_counts(&app, &store),
                tokio::time::timeout(DB_PING_TIMEOUT, store.instances(now)),
            );
            let stale_after = app.shared.coordination.timings().instance_stale_after;
            (
                counts,
                instances
                    .ok()
                    .and_then(Result::ok)
                    .map(|rows| instance_views(rows, now, stale_after)),
            )
        }
        None => (None, None),
    };
    let mut instances = instances;
    if let Some(views) = instances.as_mut() {
        app.shared.coordination.add_redis_heartbeats(views).await;
    }
    let fencing_token = app.shared.leading();
    Ok(Json(Status {
        instance: app.shared.instance.clone(),
        state: view.state,
        accepts: view.accepts,
        leader: fencing_token.is_some(),
        fencing_token,
        coordination: app.shared.coordination.mode(),
        redis: app.shared.coordination.redis_health(),
        instances,
        open_positions: counts.map(|(open, _)| open),
        closed_positions: counts.map(|(_, closed)| closed),
        signals_in_flight: app.shared.in_flight.count(),
        journal: app.intake.status(),
        pause: *app.shared.pause.borrow(),
        receipt: app.shared.receipt.borrow().clone(),
        recent_transitions: app.shared.recent_transitions(),
    }))
}

/// The open positions (503 while the database cannot say; 500, with the details in the
/// log, when a stored row does not decode).
pub async fn positions(
    State(app): State<Arc<AppState>>,
) -> Result<Json<crate::positions::PositionsPage>, ApiError> {
    let Some(store) = app.shared.store() else {
        return Err(ApiError::unavailable("the database is not connected yet"));
    };
    match tokio::time::timeout(DB_PING_TIMEOUT, crate::store::open_positions(&store)).await {
        Ok(Ok((positions, truncated))) => Ok(Json(crate::positions::PositionsPage::new(
            positions, truncated,
        ))),
        Ok(Err(crate::store::StoreError::Corrupt(problem))) => {
            tracing::error!(target: "vigil::http", "GET /positions: a stored position does not decode: {problem}; run `vigil recover --check`");
            Err(ApiError::internal())
        }
        Ok(Err(_)) | Err(_) => Err(ApiError::unavailable(
            "the database did not answer; ask again",
        )),
    }
}

/// Prometheus text.
pub async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    let view = app.shared.view();
    for state in lifecycle::State::NAMES {
        let value = if state == view.state.name() { 1.0 } else { 0.0 };
        metrics::gauge!(LIFECYCLE_STATE, "state" => state).set(value);
    }
    let leader = if app.shared.leading().is_some() {
        1.0
    } else {
        0.0
    };
    metrics::gauge!(LEADER).set(leader);
    match app.shared.coordination.redis_health() {
        RedisHealth::Up => metrics::gauge!(REDIS_UP).set(1.0),
        RedisHealth::Down => metrics::gauge!(REDIS_UP).set(0.0),
        RedisHealth::NotConfigured => {}
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

/// The body of `GET /signals/{fingerprint}`.
#[derive(Debug, Serialize)]
pub struct SignalPage {
    /// The fingerprint asked about.
    fingerprint: String,
    /// `queued` while it waits in this instance's journal, else the signal log's outcome:
    /// `applied`, `rejected`, `expired` or `superseded`.
    status: String,
    /// The signal log's row, once the alert is recorded there.
    #[serde(skip_serializing_if = "Option::is_none")]
    recorded: Option<crate::store::SignalOutcome>,
}

/// What became of one alert: queued here, or its outcome in the signal log (404 when
/// neither knows it; 503 while the database cannot say).
pub async fn signal(
    State(app): State<Arc<AppState>>,
    axum::extract::Path(fingerprint): axum::extract::Path<String>,
) -> Result<Json<SignalPage>, ApiError> {
    if app.intake.is_queued(&fingerprint) {
        return Ok(Json(SignalPage {
            fingerprint,
            status: "queued".into(),
            recorded: None,
        }));
    }
    let Some(store) = app.shared.store() else {
        return Err(ApiError::unavailable("the database is not connected yet"));
    };
    match tokio::time::timeout(DB_PING_TIMEOUT, store.signal_outcome(&fingerprint)).await {
        Ok(Ok(Some(row))) => Ok(Json(SignalPage {
            fingerprint,
            status: row.status.clone(),
            recorded: Some(row),
        })),
        Ok(Ok(None)) => Err(ApiError::not_found_signal()),
        Ok(Err(_)) | Err(_) => Err(ApiError::unavailable(
            "the database did not answer; ask again",
        )),
    }
}
