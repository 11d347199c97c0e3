//! `POST /webhook`: a TradingView alert is recorded durably before it is answered, and
//! becomes exactly one change to the portfolio.
//!
//! Order of checks: the source may send webhooks (403), a signature, when one is present or
//! required, holds (401), the body is JSON (400), the passphrase matches (401), the fields
//! make a signal for a configured instrument (422), it was not seen recently (200
//! duplicate); then the [`crate::intake`] applies it at once (200 `applied`, 422 when the
//! positions do not allow it, 200 `expired` or `superseded`, 200 `duplicate`) or journals
//! it (202 `queued`). Only an alert that cannot be made durable is answered 503.

use super::metrics::{SIGNALS_TOTAL, SIGNAL_LATENCY};
use super::signature::SIGNATURE_HEADER;
use super::throttle::Gate as Admission;
use super::{ApiError, AppState};
use crate::intake::{Answer, NotDurable};
use crate::trading::plan::Refusal;
use crate::trading::{Body, SignalError};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::Utc;
use serde::Serialize;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, PoisonError};
use std::time::Instant;

// Every answer of the intake comes before the timeout layer would cut it off.
const _: () = assert!(crate::intake::ANSWER_BOUND.as_millis() < super::REQUEST_TIMEOUT.as_millis());

/// The answer to an alert that was recorded.
#[derive(Debug, Serialize)]
pub struct Accepted {
    /// `applied`, `queued`, `duplicate`, `expired` or `superseded`.
    status: &'static str,
    /// Whether the alert had been seen before (and changed nothing now).
    duplicate: bool,
    /// The alert's fingerprint: `GET /signals/{fingerprint}` on the operator listener tells
    /// its outcome.
    fingerprint: String,
    /// Positions opened or closed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    positions: Vec<String>,
    /// Why an expired or superseded alert traded nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

impl Accepted {
    fn new(
        status: &'static str,
        fingerprint: String,
        positions: Vec<String>,
        reason: Option<String>,
    ) -> Accepted {
        Accepted {
            status,
            duplicate: false,
            fingerprint,
            positions,
            reason,
        }
    }

    fn duplicate(fingerprint: String) -> Accepted {
        Accepted {
            duplicate: true,
            ..Accepted::new("duplicate", fingerprint, Vec::new(), None)
        }
    }
}

impl IntoResponse for Accepted {
    fn into_response(self) -> Response {
        let status = match self.status {
            "queued" => StatusCode::ACCEPTED,
            _ => StatusCode::OK,
        };
        (status, Json(self)).into_response()
    }
}

/// Handles one alert and records its outcome and latency.
pub async fn receive(
    State(app): State<Arc<AppState>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Accepted, ApiError> {
    let started = Instant::now();
    let _in_flight = app.shared.in_flight.enter();
    let peer = peer.map(|Extension(ConnectInfo(peer))| peer.ip());
    // Who to count failures against: the source as trusted proxies forward it. An unknown
    // source (a proxy forwarding something that is not an address) is not counted: its
    // failures would land on the proxy, which stands for everyone behind it.
    let source = peer.and_then(|peer| app.sources.client(peer, &headers));
    let admission = source.map_or(Admission::Open, |source| {
        app.throttle.check(source, tokio::time::Instant::now())
    });
    let answer = match (admission, admit(&app, source), body) {
        (Admission::Locked { retry_after }, _, _) => Err(ApiError::locked_out(retry_after)),
        (Admission::Open, Err(refused), _) => Err(refused),
        (Admission::Open, Ok(()), Ok(body)) => match signed(&app, &headers, &body) {
            Ok(()) => handle(&app, &body).await,
            Err(refused) => Err(refused),
        },
        (Admission::Open, Ok(()), Err(rejection))
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE =>
        {
            Err(ApiError::too_large())
        }
        (Admission::Open, Ok(()), Err(rejection)) => {
            Err(ApiError::malformed(rejection.body_text()))
        }
    };
    if let Some(source) = source {
        match &answer {
            Err(error) if error.status == StatusCode::UNAUTHORIZED => {
                let delay = app.throttle.failed(source, tokio::time::Instant::now());
                tokio::time::sleep(delay).await;
            }
            Ok(_) => app.throttle.succeeded(source),
            Err(_) => {}
        }
    }
    // Every refusal and every duplicate leaves one line with its reason, in the request's
    // span (which carries the request id the answer carries); never the body or the
    // passphrase.
    let shown = source.map_or("unknown".to_string(), |source| source.to_string());
    match &answer {
        Err(error) => {
            tracing::warn!(target: "vigil::signal", source = %shown, status = error.status.as_u16(), code = error.code, "alert refused: {}", error.message);
        }
        Ok(accepted) if accepted.duplicate => {
            tracing::info!(target: "vigil::signal", source = %shown, fingerprint = %crate::intake::short(&accepted.fingerprint), "alert answered duplicate: it was received before");
        }
        Ok(_) => {}
    }
    let outcome = match &answer {
        Ok(accepted) => accepted.status,
        Err(error) => error.code,
    };
    metrics::counter!(SIGNALS_TOTAL, "outcome" => outcome).increment(1);
    metrics::histogram!(SIGNAL_LATENCY).record(started.elapsed().as_secs_f64());
    answer
}

/// The source check: with an allowlist, only its sources (`client`, as trusted proxies
/// forward it) may send; an unknown source is refused.
fn admit(app: &AppState, client: Option<IpAddr>) -> Result<(), ApiError> {
    if app.sources.allow.is_none() {
        return Ok(());
    }
    match client {
        Some(client) if app.sources.allows(client) => Ok(()),
        _ => Err(ApiError::forbidden()),
    }
}

/// The signature check, over the raw body, before it is read.
fn signed(app: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<(), ApiError> {
    let Some(signatures) = &app.signatures else {
        return Ok(());
    };
    let header = headers
        .get(SIGNATURE_HEADER)
        .map(|value| value.to_str().unwrap_or(""));
    signatures
        .verify(header, body, Utc::now().timestamp())
        .map_err(ApiError::bad_signature)
}

async fn handle(app: &AppState, bytes: &[u8]) -> Result<Accepted, ApiError> {
    let body = Body::parse(bytes).map_err(|error| ApiError::malformed(error.to_string()))?;
    match body.passphrase() {
        Some(given) if app.passphrase.matches(given) => {}
        _ => return Err(ApiError::unauthorized()),
    }
    let signal = body.signal().map_err(|error| match error {
        SignalError::Malformed(message) => ApiError::malformed(message),
        SignalError::Invalid { field, message } => {
            ApiError::invalid(field, format!("{field}: {message}"))
        }
    })?;
    let Some(terms) = app.instruments.get(&signal.instrument) else {
        let known: Vec<&str> = app.instruments.keys().map(String::as_str).collect();
        return Err(ApiError::invalid(
            "instrument",
            format!(
                "instrument: {} is not configured; configured: {}",
                signal.instrument,
                known.join(", ")
            ),
        ));
    };
    if let Some(lots) = signal.lots.filter(|lots| !lots.fract().is_zero()) {
        if !terms.fractional_lots {
            return Err(ApiError::invalid(
                "lots",
                format!(
                    "lots: {lots} is not a whole number of lots, and {} trades whole lots; \
                     if it does trade fractions, set fractional_lots = true in its \
                     [instruments.{}] table",
                    signal.instrument, signal.instrument
                ),
            ));
        }
    }
    let fingerprint = signal.fingerprint();
    if app
        .recent
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .contains(&fingerprint)
    {
        return Ok(Accepted::duplicate(fingerprint));
    }
    let answer = app
        .intake
        .accept(signal, fingerprint.clone())
        .await
        .map_err(|NotDurable(why)| {
            tracing::error!(target: "vigil::signal", "alert refused, it could not be made durable: {why}");
            ApiError::unavailable(format!("the alert could not be recorded: {why}; resend it"))
        })?;
    let remember = || {
        app.recent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(&fingerprint);
    };
    match answer {
        Answer::Applied(positions) => {
            remember();
            Ok(Accepted::new("applied", fingerprint, positions, None))
        }
        Answer::Refused(Refusal::Rejected(rejection)) => {
            remember();
            Err(ApiError::invalid(rejection.field, rejection.to_string()))
        }
        Answer::Refused(refusal) => {
            remember();
            let reason = refusal.to_string();
            Ok(Accepted::new(
                refusal.status(),
                fingerprint,
                Vec::new(),
                Some(reason),
            ))
        }
        Answer::Duplicate => {
            remember();
            Ok(Accepted::duplicate(fingerprint))
        }
        Answer::Queued => Ok(Accepted::new("queued", fingerprint, Vec::new(), None)),
    }
}
