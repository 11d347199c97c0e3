//! The kill switch over HTTP, on the operator listener (behind its bearer token):
//! `POST /pause` (body `{"exits_only": true, "reason": "..."}`, both optional) and
//! `POST /resume`. Each writes the switch every instance reads at its heartbeat, and this
//! instance obeys it at once. They answer only where an operator token is configured: the
//! switch stops trading, so it is never open to whoever reaches the listener.

use super::error::ApiError;
use super::AppState;
use crate::executor::DB_PING_TIMEOUT;
use crate::store::operations::{Operations, Pause};
use axum::extract::State;
use axum::Json;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The longest reason kept with the switch, in characters.
pub const MAX_REASON_CHARS: usize = 500;

/// What `POST /pause` may say.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PauseRequest {
    /// Keep applying exits.
    #[serde(default)]
    pub exits_only: bool,
    /// Why, kept with the switch.
    #[serde(default)]
    pub reason: String,
}

/// The switch as set.
#[derive(Debug, Serialize)]
pub struct Switched {
    /// What it holds back now: `all`, `exits_only` or `none`.
    pub pause: Pause,
    /// Who set it.
    pub changed_by: String,
}

/// `POST /pause`.
pub async fn pause(
    State(app): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> Result<Json<Switched>, ApiError> {
    let request: PauseRequest = match body.iter().all(u8::is_ascii_whitespace) {
        true => PauseRequest::default(),
        false => serde_json::from_slice(&body).map_err(|error| {
            ApiError::malformed(format!(
                "the body is not {{\"exits_only\": BOOL, \"reason\": TEXT}}: {error}"
            ))
        })?,
    };
    if request.reason.chars().count() > MAX_REASON_CHARS {
        return Err(ApiError::invalid(
            "reason",
            format!("reason: at most {MAX_REASON_CHARS} characters"),
        ));
    }
    let pause = match request.exits_only {
        true => Pause::ExitsOnly,
        false => Pause::All,
    };
    switch(&app, pause, &request.reason).await
}

/// `POST /resume`.
pub async fn resume(State(app): State<Arc<AppState>>) -> Result<Json<Switched>, ApiError> {
    switch(&app, Pause::None, "").await
}

/// Writes the switch, then obeys it here at once; the other instances read it at their
/// next heartbeat.
async fn switch(app: &AppState, pause: Pause, reason: &str) -> Result<Json<Switched>, ApiError> {
    if app.operator_token.is_none() {
        return Err(ApiError::forbidden_without_token());
    }
    let Some(store) = app.shared.store() else {
        return Err(ApiError::unavailable(
            "the database is not connected yet; ask again, or run vigil pause where it answers",
        ));
    };
    let changed_by = format!("http@{}", app.shared.instance);
    let write = store.set_pause_switch(pause, reason, &changed_by, Utc::now());
    match tokio::time::timeout(DB_PING_TIMEOUT, write).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => {
            tracing::error!(target: "vigil::operator", "the kill switch was not written: {error}");
            return Err(ApiError::unavailable(
                "the kill switch was not written: the database refused it; ask again",
            ));
        }
        Err(_) => {
            return Err(ApiError::unavailable(
                "the kill switch was not written: the database did not answer; ask again",
            ))
        }
    }
    app.shared.heard_pause(pause);
    Ok(Json(Switched { pause, changed_by }))
}
